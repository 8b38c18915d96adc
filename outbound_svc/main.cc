// outbound_svc: consumes internal events and delivers them to partners. Wiring only; the
// behaviour lives in lane.h.
#include <iostream>

#include "absl/flags/flag.h"
#include "adapters/registry.h"
#include "common/cli.h"
#include "common/config.h"
#include "common/http_client.h"
#include "common/log.h"
#include "common/ops_endpoints.h"
#include "common/wiring.h"
#include "outbound_svc/lane.h"

ABSL_FLAG(bool, dry_run, false,
          "Render and log every partner request, send nothing, record each as dry-run "
          "(overrides outbound.dry_run in the config).");

int main(int argc, char** argv) {
  ess::cli::BlockTerminationSignals();
  ess::cli::Parse(argc, argv,
                  "outbound_svc --config PATH [--dry_run]\n"
                  "Consumes each partner's queue, maps and pushes events, records them in the "
                  "replay store, then acks.");
  const auto& registry = ess::adapters::BuiltinRegistry();
  // Each partner this lane serves gets its adapter built once while loading, so that a bad
  // setting is reported at its line.
  auto config = ess::config::LoadFile(ess::cli::RequiredConfigPath(), registry.SettingsResolver(),
                                      [&registry](const ess::v1::PartnerConfig& p) {
                                        return p.has_outbound() ? registry.Create(p, {}).status()
                                                                : absl::OkStatus();
                                      });
  if (!config.ok()) {
    std::cerr << "error: " << config.status().message() << "\n";
    return 2;
  }
  ess::log::Init("outbound_svc", config->logging());
  if (config->replay().address().empty()) {
    std::cerr << "error: " << ess::cli::RequiredConfigPath()
              << ": replay.address (or replay.listen) is required by outbound_svc\n";
    return 2;
  }
  const bool dry_run = absl::GetFlag(FLAGS_dry_run) || config->outbound().dry_run();

  ess::http::Client http({});
  absl::StatusOr<std::unique_ptr<ess::ReplayRecorder>> started =
      ess::StartRecorder(config->replay(), "outbound_svc");
  if (!started.ok()) {
    std::cerr << "error: " << ess::cli::RequiredConfigPath() << ": " << started.status().message()
              << "\n";
    return 2;
  }
  ess::ReplayRecorder& recorder = **started;
  std::vector<ess::outbound::Lane::Partner> partners;
  for (const auto& p : config->partners()) {
    if (!p.has_outbound()) continue;
    auto adapter = registry.Create(p, {.http = &http});
    auto mapper = ess::Mapper::Compile(p.outbound().mapping());
    if (!adapter.ok() || !mapper.ok()) {
      std::cerr << "error: " << ess::cli::RequiredConfigPath() << ": "
                << (adapter.ok() ? mapper.status() : adapter.status()).message() << "\n";
      return 2;
    }
    partners.push_back({.name = p.name(),
                        .route = p.outbound(),
                        .mapper = *std::move(mapper),
                        .adapter = *std::move(adapter)});
  }
  if (partners.empty()) {
    std::cerr << "error: " << ess::cli::RequiredConfigPath()
              << ": partners: no partner has an outbound route\n";
    return 2;
  }
  // The lane publishes moves and the confirmations that partners' answers carry (SOAP) on a
  // connection of its own; the audit events, when an audit exchange is configured, on another.
  // The deliveries go on during a broker's resource alarm (the consumer's connection does not
  // publish); their audit events wait for it to clear (AuditSink holds its publishes), and the
  // lane's acks wait for them once too many are unsettled (AuditSink::EmitOrWait).
  const std::string& audit_exchange = config->bus().audit_exchange();
  std::unique_ptr<ess::amqp::Publisher> audit_publisher;
  if (!audit_exchange.empty()) {
    audit_publisher = std::make_unique<ess::amqp::Publisher>(ess::amqp::Publisher::Options{
        .connection = ess::BusOptions(config->bus(), "outbound_svc-audit"),
        .topology = {.exchanges = {{.name = audit_exchange, .type = "fanout"}}}});
    if (absl::Status s = audit_publisher->Start(); !s.ok()) {
      ess::log::Warn("", "event bus not reachable yet", {{"error", std::string(s.message())}});
    }
  }
  ess::AuditSink audit(audit_publisher.get(), audit_exchange, config->bus().audit_batch_max());
  ess::outbound::Lane lane({.connection = ess::BusOptions(config->bus(), "outbound_svc"),
                            .prefetch = static_cast<uint16_t>(config->outbound().prefetch()),
                            .dry_run = dry_run,
                            .events_exchange = config->bus().events_exchange(),
                            .max_event_bytes = config->outbound().max_event_bytes()},
                           ess::outbound::OutboundTopology(*config), std::move(partners), &recorder,
                           &audit);
  if (absl::Status s = ess::outbound::ExplainStartError(lane.Start(), config->bus()); !s.ok()) {
    ess::log::Error("", "cannot start", {{"error", std::string(s.message())}});
    return 1;
  }
  // GET /metrics, /healthz and /readyz (the lane's cached state) on the metrics port.
  std::unique_ptr<ess::ops::Server> metrics;
  if (const std::string& listen = config->outbound().metrics_listen(); !listen.empty()) {
    absl::StatusOr<std::unique_ptr<ess::ops::Server>> server =
        ess::ops::Server::Start(listen, {.metrics = [&lane] { return lane.Metrics(); },
                                         .readiness = [&lane] { return lane.NotReady(); }});
    if (!server.ok()) {
      ess::log::Error("", "cannot start", {{"error", std::string(server.status().message())}});
      lane.Shutdown(absl::ZeroDuration());
      return 1;
    }
    metrics = *std::move(server);
  }
  ess::log::Info("", "outbound lane running",
                 {{"partners", std::to_string(config->partners_size())},
                  {"dry_run", dry_run ? "true" : "false"},
                  {"metrics_port", metrics ? std::to_string(metrics->port()) : "off"},
                  {"malloc", ess::cli::MallocLibrary()}});
  int sig = ess::cli::WaitForTerminationSignal();
  ess::log::Info("", "stopping", {{"signal", ess::cli::SignalName(sig)}});
  lane.Shutdown(absl::Milliseconds(config->outbound().shutdown_deadline_ms()));
  metrics.reset();
  audit.Drain(absl::Seconds(5));  // logs what is left unconfirmed
  if (audit_publisher) audit_publisher->Stop();
  recorder.Stop();
  http.Stop();
  const auto& c = lane.counters();
  const ess::outbound::Lane::Settled settled = lane.settled();
  ess::log::Info("", "stopped",
                 {{"received", std::to_string(c.received.load())},
                  {"delivered", std::to_string(settled.delivered)},
                  {"dry_run", std::to_string(settled.dry_run)},
                  {"retried", std::to_string(settled.retried)},
                  {"parked", std::to_string(settled.parked)},
                  {"duplicates", std::to_string(c.duplicates.load())},
                  {"requeued", std::to_string(c.requeued.load())}});
  return 0;
}
