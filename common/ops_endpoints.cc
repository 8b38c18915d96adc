#include "common/ops_endpoints.h"

#include <rapidjson/document.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/metrics.h"

namespace ess::ops {

http::ServerResponse Liveness() { return {.status = 200, .body = R"({"ok":true})"}; }

http::ServerResponse Readiness(const NotReady& not_ready) {
  if (not_ready.empty()) return {.status = 200, .body = R"({"ready":true})"};
  rapidjson::Document body(rapidjson::kObjectType);
  auto& alloc = body.GetAllocator();
  body.AddMember("ready", false, alloc);
  for (const auto& [part, what] : not_ready) {
    body.AddMember(rapidjson::Value(part.data(), part.size(), alloc),
                   rapidjson::Value(what.data(), what.size(), alloc), alloc);
  }
  return {.status = 503, .body = json::Serialize(body)};
}

http::ServerResponse MetricsPage(const std::vector<prometheus::MetricFamily>& families) {
  return {.status = 200,
          .content_type = std::string(metrics::kContentType),
          .body = metrics::Render(families)};
}

bool Answer(const Endpoints& endpoints, const http::ServerRequest& request,
            http::Responder& responder) {
  if (request.path == "/healthz") {
    std::move(responder).Send(Liveness());
    return true;
  }
  if (request.path == "/readyz" && endpoints.readiness) {
    std::move(responder).Send(Readiness(endpoints.readiness()));
    return true;
  }
  if (request.path == "/metrics" && endpoints.metrics) {
    std::move(responder).Send(MetricsPage(endpoints.metrics()));
    return true;
  }
  return false;
}

Server::Server(const std::string& listen, Endpoints endpoints)
    : endpoints_(std::move(endpoints)),
      // Probes and a scraper: a few connections, answered at once.
      server_({.listen = listen, .max_body_bytes = 4096, .max_connections = 64},
              [this](http::ServerRequest request, http::Responder responder) {
                if (Answer(endpoints_, request, responder)) return;
                std::move(responder).Send(
                    {.status = 404, .body = R"({"error":"not an operations endpoint"})"});
              }) {}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const std::string& listen,
                                                      Endpoints endpoints) {
  std::unique_ptr<Server> server(new Server(listen, std::move(endpoints)));
  if (absl::Status s = server->server_.Start(); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("ops endpoints: ", s.message()));
  }
  return server;
}

Server::~Server() { server_.Stop(); }

}  // namespace ess::ops
