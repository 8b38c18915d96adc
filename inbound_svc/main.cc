// inbound_svc: serves partner webhooks and publishes them as internal events. Wiring only; the
// behaviour lives in lane.h.
#include <iostream>

#include "adapters/registry.h"
#include "common/amqp.h"
#include "common/cli.h"
#include "common/config.h"
#include "common/log.h"
#include "common/wiring.h"
#include "inbound_svc/lane.h"

int main(int argc, char** argv) {
  ess::cli::BlockTerminationSignals();
  ess::cli::Parse(argc, argv,
                  "inbound_svc --config PATH\n"
                  "Serves each partner's webhook path and publishes its callbacks as internal "
                  "events to the events exchange, confirmed and recorded before the answer.");
  const std::string path = ess::cli::RequiredConfigPath();
  const auto& registry = ess::adapters::BuiltinRegistry();
  auto config = ess::config::LoadFile(path, registry.SettingsResolver());
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
  std::vector<ess::inbound::Lane::Route> routes;
  for (const auto& p : config->partners()) {
    if (!p.has_inbound()) continue;
    auto adapter = registry.Create(p, {});
    if (!adapter.ok()) {
      std::cerr << "error: " << path << ": " << adapter.status().message() << "\n";
      return 2;
    }
    routes.push_back(
        {.partner = p.name(), .path = p.inbound().webhook_path(), .adapter = *std::move(adapter)});
  }
  if (routes.empty()) {
    std::cerr << "error: " << path << ": partners: no partner has an inbound route\n";
    return 2;
  }

  const std::string& exchange = config->bus().events_exchange();
  ess::amqp::Publisher publisher(
      {.connection = ess::BusOptions(config->bus(), "inbound_svc"),
       .topology = {.exchanges = {{.name = exchange, .type = "fanout"}}}});
  ess::ReplayRecorder recorder(ess::RecorderOptions(config->replay()));
  ess::inbound::Lane lane(
      {.server = {.listen = config->inbound().listen(),
                  .max_body_bytes = config->inbound().max_body_bytes()},
       .events_exchange = exchange,
       .dedupe_window = absl::Seconds(config->inbound().dedupe_window_seconds())},
      std::move(routes), &publisher, &recorder);
  if (absl::Status s = publisher.Start(); !s.ok()) {
    // The publisher keeps reconnecting; webhooks get 503 meanwhile.
    ess::log::Warn("", "event bus not reachable yet", {{"error", std::string(s.message())}});
  }
  if (absl::Status s = lane.Start(); !s.ok()) {
    ess::log::Error("", "cannot start", {{"error", std::string(s.message())}});
    return 1;
  }
  ess::log::Info("", "inbound lane running",
                 {{"listen", config->inbound().listen()},
                  {"port", std::to_string(lane.port())},
                  {"exchange", exchange}});
  int sig = ess::cli::WaitForTerminationSignal();
  ess::log::Info("", "stopping", {{"signal", std::to_string(sig)}});
  lane.Stop();
  publisher.Stop();
  recorder.Stop();
  const auto& c = lane.counters();
  ess::log::Info("", "stopped",
                 {{"requests", std::to_string(c.requests.load())},
                  {"published", std::to_string(c.published.load())},
                  {"rejected", std::to_string(c.rejected.load())},
                  {"unavailable", std::to_string(c.unavailable.load())},
                  {"duplicates", std::to_string(c.duplicates.load())}});
  return 0;
}
