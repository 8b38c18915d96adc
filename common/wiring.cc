#include "common/wiring.h"

#include <unistd.h>

#include <cstdlib>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/sv.h"

namespace ess {

amqp::ConnectionOptions BusOptions(const ess::v1::BusConfig& bus, std::string connection_name) {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return amqp::ConnectionOptions{
      .host = bus.host(),
      .port = static_cast<int>(bus.port()),
      .vhost = bus.vhost(),
      .user = bus.user(),
      .password = bus.password(),
      .heartbeat_seconds = static_cast<int>(bus.heartbeat_seconds()),
      .connection_name = absl::StrCat(connection_name, "@", host, ":", getpid()),
  };
}

absl::StatusOr<ReplayRecorder::Options> RecorderOptions(const ess::v1::ReplayConfig& replay) {
  std::string token;
  if (!replay.token_env().empty()) {
    const char* value = std::getenv(replay.token_env().c_str());
    if (value == nullptr || *value == '\0') {
      return absl::FailedPreconditionError(absl::StrCat("replay.token_env: environment variable ",
                                                        replay.token_env(), " is not set"));
    }
    token = value;
    if (const std::string problem = BearerTokenProblem(token); !problem.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("replay.token_env: the token in ", replay.token_env(), " ", problem));
    }
  }
  // Without a CA the lanes dial in plaintext: to a store that serves TLS only they would
  // never get through (pausing for ever), and their client certificate would go unused.
  if (const ess::v1::ReplayTls& t = replay.tls(); t.ca_file().empty()) {
    if (!t.cert_file().empty()) {
      return absl::FailedPreconditionError(
          "replay.tls.ca_file: not set, but replay_svc serves TLS only (replay.tls.cert_file): "
          "the lanes need the CA to check its certificate against, or they would dial in "
          "plaintext and never get through");
    }
    if (!t.client_cert_file().empty()) {
      return absl::FailedPreconditionError(
          "replay.tls.ca_file: not set, but replay.tls.client_cert_file is: the lanes dial with "
          "TLS only with a CA to check replay_svc's certificate against");
    }
  }
  ReplayTls tls;
  for (auto [path, field, out] :
       {std::tuple{&replay.tls().ca_file(), "replay.tls.ca_file", &tls.ca_pem},
        std::tuple{&replay.tls().client_cert_file(), "replay.tls.client_cert_file", &tls.cert_pem},
        std::tuple{&replay.tls().client_key_file(), "replay.tls.client_key_file", &tls.key_pem}}) {
    if (path->empty()) continue;
    absl::StatusOr<std::string> pem = ReadPemFile(*path, field);
    if (!pem.ok()) return pem.status();
    *out = *std::move(pem);
  }
  return ReplayRecorder::Options{
      .address = replay.address(),
      .batch_max = replay.batch_max(),
      .batch_delay = absl::Milliseconds(replay.batch_delay_ms()),
      .deadline = absl::Milliseconds(replay.deadline_ms()),
      // Lookups and claims, which a message waits for, group-commit: a batch goes as soon as
      // the store is idle, so light load pays no delay. Records (they gate acks and trails)
      // wait for fuller batches, which costs both sides fewer calls (bench/README.md,
      // Profiling 32).
      .flush_when_idle = true,
      .record_delay = absl::Milliseconds(replay.record_delay_ms()),
      .token = std::move(token),
      .tls = std::move(tls),
  };
}

absl::StatusOr<std::unique_ptr<ReplayRecorder>> StartRecorder(const ess::v1::ReplayConfig& replay,
                                                              std::string_view service) {
  absl::StatusOr<ReplayRecorder::Options> options = RecorderOptions(replay);
  if (!options.ok()) return options.status();
  auto recorder = std::make_unique<ReplayRecorder>(*std::move(options));
  if (absl::Status s = recorder->Ping(absl::Seconds(2));
      absl::IsUnauthenticated(s) || absl::IsPermissionDenied(s)) {
    return absl::FailedPreconditionError(
        absl::StrCat("the replay store refuses ", ToAbsl(service), ": ", s.message()));
  }
  return recorder;
}

}  // namespace ess
