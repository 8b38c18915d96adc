// inbound_svc: serves partner webhooks and polls partners' SFTP drop folders, and publishes
// what they bring as internal events. Wiring only; the behaviour lives in lane.h and
// sftp_poller.h.
#include <sys/resource.h>

#include <iostream>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "adapters/registry.h"
#include "adapters/sftp_csv/sftp_csv_adapter.h"
#include "common/amqp.h"
#include "common/cli.h"
#include "common/config.h"
#include "common/log.h"
#include "common/wiring.h"
#include "inbound_svc/lane.h"
#include "inbound_svc/sftp_poller.h"

int main(int argc, char** argv) {
  ess::cli::BlockTerminationSignals();
  ess::cli::Parse(argc, argv,
                  "inbound_svc --config PATH\n"
                  "Serves each partner's webhook path and polls each partner's SFTP drop "
                  "folder, and publishes callbacks and file rows as internal events to the "
                  "events exchange, confirmed and recorded before the answer (or the move).");
  const std::string path = ess::cli::RequiredConfigPath();
  const auto& registry = ess::adapters::BuiltinRegistry();
  // Each partner this lane serves gets its adapter built once while loading, so that a bad
  // setting is reported at its line.
  auto config = ess::config::LoadFile(
      path, registry.SettingsResolver(), [&registry](const ess::v1::PartnerConfig& p) {
        if (!p.has_inbound()) return absl::OkStatus();
        if (!p.inbound().webhook_path().empty()) {
          if (absl::Status s = registry.Create(p, {}).status(); !s.ok()) return s;
        }
        if (p.inbound().has_poll()) {
          return ess::adapters::sftp_csv::SftpCsvAdapter::Create(p).status();
        }
        return absl::OkStatus();
      });
  if (!config.ok()) {
    std::cerr << "error: " << config.status().message() << "\n";
    return 2;
  }
  ess::log::Init("inbound_svc", config->logging());
  if (config->inbound().listen().empty()) {
    std::cerr << "error: " << path << ": inbound.listen is required by inbound_svc\n";
    return 2;
  }
  if (config->replay().address().empty()) {
    std::cerr << "error: " << path
              << ": replay.address (or replay.listen) is required by inbound_svc\n";
    return 2;
  }
  const std::string& exchange = config->bus().events_exchange();
  ess::amqp::Topology topology{.exchanges = {{.name = exchange, .type = "fanout"}}};
  std::vector<ess::inbound::Lane::Route> routes;
  // What each poller needs besides the publisher and the recorder, built before them.
  struct Poll {
    ess::inbound::SftpPoller::Options options;
    ess::adapters::sftp_csv::SftpClient::Options sftp;
    std::unique_ptr<ess::adapters::Adapter> adapter;
  };
  std::vector<Poll> polls;
  for (int index = 0; index < config->partners_size(); ++index) {
    const ess::v1::PartnerConfig& p = config->partners(index);
    if (!p.has_inbound()) continue;
    if (!p.inbound().webhook_path().empty()) {
      auto adapter = registry.Create(p, {});
      if (!adapter.ok()) {
        std::cerr << "error: " << path << ": " << adapter.status().message() << "\n";
        return 2;
      }
      std::optional<ess::webhook::SignatureVerifier> verifier;
      if (p.inbound().has_auth()) {
        auto v = ess::config::WebhookVerifier(p.inbound().auth());
        if (!v.ok()) {
          std::cerr << "error: " << path << ": partners[" << index
                    << "].inbound.auth.secrets_env: " << v.status().message() << "\n";
          return 2;
        }
        verifier = *std::move(v);
      }
      routes.push_back({.partner = p.name(),
                        .path = p.inbound().webhook_path(),
                        .adapter = *std::move(adapter),
                        .verifier = std::move(verifier),
                        .id_header = absl::AsciiStrToLower(p.inbound().id_header())});
    }
    if (p.inbound().has_poll()) {
      // The config loader admits polls of sftp_csv partners only.
      auto adapter = ess::adapters::sftp_csv::SftpCsvAdapter::Create(p);
      if (!adapter.ok()) {
        std::cerr << "error: " << path << ": " << adapter.status().message() << "\n";
        return 2;
      }
      const ess::v1::SftpPoll& poll = p.inbound().poll();
      ess::amqp::QueueSpec parked{.name = ess::inbound::SftpPoller::ParkedQueue(p.name())};
      if (config->bus().quorum_queues()) parked.string_args = {{"x-queue-type", "quorum"}};
      topology.queues.push_back(std::move(parked));
      ess::adapters::sftp_csv::SftpClient::Options sftp = (*adapter)->client_options();
      polls.push_back(
          {.options = {.partner = p.name(),
                       .remote_dir = poll.remote_dir(),
                       .processed_dir = poll.processed_dir(),
                       .suffix = poll.suffix(),
                       .interval = absl::Milliseconds(poll.interval_ms()),
                       .settle = absl::Milliseconds(poll.settle_ms()),
                       .events_exchange = exchange,
                       .max_file_bytes = static_cast<size_t>(poll.max_file_bytes()),
                       .claim_lease = absl::Milliseconds(config->inbound().claim_lease_ms())},
           .sftp = std::move(sftp),
           .adapter = *std::move(adapter)});
    }
  }
  if (routes.empty() && polls.empty()) {
    std::cerr << "error: " << path << ": partners: no partner has an inbound route\n";
    return 2;
  }

  const std::string& audit_exchange = config->bus().audit_exchange();
  if (!audit_exchange.empty()) {
    topology.exchanges.push_back({.name = audit_exchange, .type = "fanout"});
  }
  ess::amqp::Publisher publisher({.connection = ess::BusOptions(config->bus(), "inbound_svc"),
                                  .topology = std::move(topology)});
  ess::AuditSink audit(&publisher, audit_exchange, config->bus().audit_batch_max());
  absl::StatusOr<std::unique_ptr<ess::ReplayRecorder>> started =
      ess::StartRecorder(config->replay(), "inbound_svc");
  if (!started.ok()) {
    std::cerr << "error: " << ess::cli::RequiredConfigPath() << ": " << started.status().message()
              << "\n";
    return 2;
  }
  ess::ReplayRecorder& recorder = **started;
  std::vector<std::unique_ptr<ess::inbound::SftpPoller>> pollers;
  for (Poll& poll : polls) {
    pollers.push_back(std::make_unique<ess::inbound::SftpPoller>(
        std::move(poll.options), std::move(poll.sftp), std::move(poll.adapter), &publisher,
        &recorder, &audit));
  }
  // Each webhook connection takes a file descriptor: the soft limit is raised to the hard one,
  // and the connection cap kept below it, with room for the broker, the store and SFTP.
  size_t max_connections = config->inbound().max_connections();
  if (rlimit nofile{}; getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
    if (nofile.rlim_cur < nofile.rlim_max) {
      nofile.rlim_cur = nofile.rlim_max;
      if (setrlimit(RLIMIT_NOFILE, &nofile) != 0) getrlimit(RLIMIT_NOFILE, &nofile);
    }
    constexpr rlim_t kReserved = 256;
    const rlim_t room = nofile.rlim_cur > 2 * kReserved ? nofile.rlim_cur - kReserved : kReserved;
    if (nofile.rlim_cur != RLIM_INFINITY && max_connections > room) {
      ess::log::Warn("", "inbound.max_connections lowered to fit the file descriptor limit",
                     {{"max_connections", absl::StrCat(max_connections)},
                      {"limit", absl::StrCat(nofile.rlim_cur)},
                      {"now", absl::StrCat(room)}});
      max_connections = room;
    }
  }
  ess::inbound::Lane lane(
      {.server = {.listen = config->inbound().listen(),
                  .max_body_bytes = config->inbound().max_body_bytes(),
                  .max_connections = max_connections},
       .events_exchange = exchange,
       .dedupe_window = absl::Seconds(config->inbound().dedupe_window_seconds()),
       .dedupe_memory_ids = config->inbound().dedupe_memory_ids(),
       .claim_lease = absl::Milliseconds(config->inbound().claim_lease_ms()),
       .more_metrics = [&pollers] { return ess::inbound::SftpPoller::Metrics(pollers); }},
      std::move(routes), &publisher, &recorder, &audit);
  if (absl::Status s = publisher.Start(); !s.ok()) {
    // The publisher keeps reconnecting; webhooks get 503 meanwhile.
    ess::log::Warn("", "event bus not reachable yet", {{"error", std::string(s.message())}});
  }
  if (absl::Status s = lane.Start(); !s.ok()) {
    ess::log::Error("", "cannot start", {{"error", std::string(s.message())}});
    return 1;
  }
  for (auto& poller : pollers) poller->Start();
  ess::log::Info("", "inbound lane running",
                 {{"listen", config->inbound().listen()},
                  {"port", std::to_string(lane.port())},
                  {"exchange", exchange},
                  {"pollers", std::to_string(pollers.size())},
                  {"malloc", ess::cli::MallocLibrary()}});
  int sig = ess::cli::WaitForTerminationSignal();
  ess::log::Info("", "stopping", {{"signal", ess::cli::SignalName(sig)}});
  // Pollers stop meanwhile, all at once: a file they abandon stays in its folder; the publisher
  // is still up for them.
  for (auto& poller : pollers) poller->RequestStop();
  // Webhooks in progress get their answer (the bus and the store are still up) before the
  // server goes; new connections are refused meanwhile.
  if (!lane.Drain(absl::Milliseconds(config->inbound().shutdown_deadline_ms()))) {
    ess::log::Warn("",
                   "shutdown deadline passed; unanswered webhooks are cut off (partners retry)");
  }
  for (auto& poller : pollers) poller->Stop();
  lane.Stop();
  audit.Drain(absl::Seconds(5));  // logs what is left unconfirmed
  publisher.Stop();
  recorder.Stop();
  const auto& c = lane.counters();
  ess::log::Info("", "stopped",
                 {{"requests", std::to_string(c.requests.load())},
                  {"published", std::to_string(c.published.load())},
                  {"rejected", std::to_string(c.rejected.load())},
                  {"unavailable", std::to_string(c.unavailable.load())},
                  {"duplicates", std::to_string(c.duplicates.load())},
                  {"unauthenticated", std::to_string(c.unauthenticated.load())},
                  {"unrecorded", std::to_string(c.unrecorded.load())}});
  for (const auto& poller : pollers) {
    const auto& pc = poller->counters();
    ess::log::Info("", "poller stopped",
                   {{"partner", poller->partner()},
                    {"files", std::to_string(pc.files.load())},
                    {"events", std::to_string(pc.events.load())},
                    {"parked", std::to_string(pc.parked.load())},
                    {"repeated", std::to_string(pc.repeated.load())},
                    {"too_large", std::to_string(pc.too_large.load())},
                    {"failures", std::to_string(pc.failures.load())}});
  }
  return 0;
}
