#include "replay_svc/replay_server.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/sv.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"

namespace ess::replay {
namespace {

// Splits "host:port" (the host may be "[::1]").
absl::Status SplitHostPort(const std::string& listen, std::string* host, int* port) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(listen).substr(colon + 1), port) || *port < 0 ||
      *port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen: \"", listen, "\" is not HOST:PORT (e.g. 127.0.0.1:50051)"));
  }
  *host = listen.substr(0, colon);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ReplayServer>> ReplayServer::Start(ReplayStore& store,
                                                                  Options options) {
  std::string host;
  int requested_port = 0;
  if (absl::Status s = SplitHostPort(options.listen, &host, &requested_port); !s.ok()) return s;

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  auto service = std::make_unique<ReplayServiceImpl>(
      store, ReplayServiceImpl::Options{.reader_threads = options.reader_threads,
                                        .replayer = options.replayer,
                                        .authorizer = options.authorizer});
  grpc::ServerBuilder builder;
  int port = 0;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options.tls_cert_pem.empty()) {
    grpc::SslServerCredentialsOptions tls;
    tls.pem_key_cert_pairs.push_back({options.tls_key_pem, options.tls_cert_pem});
    if (!options.tls_client_ca_pem.empty()) {
      tls.pem_root_certs = options.tls_client_ca_pem;
      tls.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    credentials = grpc::SslServerCredentials(tls);
  }
  builder.AddListeningPort(options.listen, credentials, &port);
  // gRPC sets SO_REUSEPORT by default; a second server on the same port must fail instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  builder.RegisterService(service.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    if (server != nullptr) server->Shutdown();
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", options.listen,
        options.tls_cert_pem.empty()
            ? ""
            : " (with TLS: are the certificate and the key a matching pair of PEM blocks?)"));
  }
  std::unique_ptr<ReplayServer> started(
      new ReplayServer(std::move(service), std::move(server), absl::StrCat(host, ":", port), port));
  if (options.health_probe_interval > absl::ZeroDuration()) {
    ReplayServer* self = started.get();
    started->health_probe_ =
        std::make_unique<PeriodicThread>("replay-health", options.health_probe_interval,
                                         [self, &store] { self->ProbeStore(store); });
  }
  return started;
}

void ReplayServer::ProbeStore(ReplayStore& store) {
  // A key no record has: the store answers NOT_FOUND when it is up, UNAVAILABLE when its
  // database does not answer.
  ess::v1::RecordKey key;
  key.set_direction(ess::v1::DIRECTION_OUTBOUND);
  key.set_partner("ess-health");
  key.set_message_id("ess-health");
  const absl::Status s = store.GetByKey(key).status();
  const bool answers = !absl::IsUnavailable(s) && !absl::IsDeadlineExceeded(s);
  if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(answers);  // "" and every registered service
    health->SetServingStatus(std::string(ess::v1::ReplayService::service_full_name()), answers);
  }
  // A change is logged, and a store that does not answer from the start.
  const bool changed = store_answers_.value_or(true) != answers;
  store_answers_ = answers;
  if (!changed) return;
  if (answers) {
    ess::log::Info("", "replay store answers; health SERVING");
  } else {
    ess::log::Warn("", "replay store does not answer; health NOT_SERVING",
                   {{"error", ToStd(s.message())}});
  }
}

ReplayServer::ReplayServer(std::unique_ptr<ReplayServiceImpl> service,
                           std::unique_ptr<grpc::Server> server, std::string address, int port)
    : service_(std::move(service)),
      server_(std::move(server)),
      address_(std::move(address)),
      port_(port) {}

ReplayServer::~ReplayServer() { Shutdown(absl::ZeroDuration()); }

void ReplayServer::Shutdown(absl::Duration grace) {
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  if (health_probe_) health_probe_->Stop();
  if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
    health->Shutdown();
  }
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  server_->Wait();
}

}  // namespace ess::replay
