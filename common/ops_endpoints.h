// The operations endpoints of a service, over HTTP: GET /metrics (Prometheus' text format),
// GET /healthz (liveness) and GET /readyz (readiness). The inbound lane answers them on its
// webhook server (Answer); a service without an HTTP server of its own (outbound_svc,
// replay_svc) serves them alone on its metrics port (Server).
//
//   ess::ops::Endpoints endpoints{
//       .metrics = [&lane] { return lane.Metrics(); },
//       .readiness = [&lane] { return lane.NotReady(); }};   // cached state only
//   auto server = ess::ops::Server::Start("127.0.0.1:9464", std::move(endpoints));
//
//   GET /healthz  200 {"ok":true} while the process serves HTTP
//   GET /readyz   200 {"ready":true}, or 503 {"ready":false,"bus":"not connected"} naming each
//                 part that is not ready, in the order the readiness callback gave them
//   GET /metrics  200, the families the metrics callback collected
#ifndef ESS_COMMON_OPS_ENDPOINTS_H_
#define ESS_COMMON_OPS_ENDPOINTS_H_

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/http_server.h"
#include "prometheus/metric_family.h"

namespace ess::ops {

// The parts that are not ready, as (part, what is wrong) pairs, e.g. {"bus", "not connected"};
// empty when ready.
using NotReady = std::vector<std::pair<std::string, std::string>>;

struct Endpoints {
  // Called at each scrape, on the server's thread. Unset: no /metrics (404).
  std::function<std::vector<prometheus::MetricFamily>()> metrics;
  // Called at each GET /readyz, on the server's thread: it must answer from state the service
  // keeps up to date on its own (a probe thread, a connection's flags), never wait on the
  // network. Unset: no /readyz (404).
  std::function<NotReady()> readiness;
};

// 200 {"ok":true}.
http::ServerResponse Liveness();
// 200 {"ready":true}, or 503 {"ready":false,"<part>":"<what>",...} (JSON-escaped).
http::ServerResponse Readiness(const NotReady& not_ready);
// 200 with the families in the text exposition format.
http::ServerResponse MetricsPage(const std::vector<prometheus::MetricFamily>& families);

// Answers `request` if its path is /healthz, /readyz or /metrics (whatever its method, as the
// probes and scrapers send GET) and the endpoint is served; false, with `responder` untouched,
// for any other path (the caller's own routes).
bool Answer(const Endpoints& endpoints, const http::ServerRequest& request,
            http::Responder& responder);

// An HTTP server of the endpoints alone (404 for any other path), on a thread of its own.
class Server {
 public:
  // `listen` is "host:port" (port 0 picks one). UNAVAILABLE when it cannot be bound,
  // INVALID_ARGUMENT for a bad address.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const std::string& listen,
                                                       Endpoints endpoints);
  ~Server();  // stops serving
  int port() const { return server_.port(); }

 private:
  Server(const std::string& listen, Endpoints endpoints);

  const Endpoints endpoints_;
  http::Server server_;
};

}  // namespace ess::ops

#endif  // ESS_COMMON_OPS_ENDPOINTS_H_
