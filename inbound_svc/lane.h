// The inbound lane: partner -> bus.
//
// Serves each partner's webhook path. A callback is authenticated (later: signatures, RBAC),
// turned into internal events by the partner's adapter (Pull, through its inbound mapping),
// published persistent and mandatory to the events fanout exchange with publisher confirms,
// and recorded in the replay store. The partner gets its answer only after that:
//
//   200  every event was confirmed by the broker and recorded
//   400  the payload is not what the partner's mapping expects (the reason is in the body)
//   404  no partner serves this path          405  not a POST
//   503  broker or replay store unreachable (Retry-After: 1): the partner should retry
//
// Publishes and records of concurrent requests are pipelined: no request waits for another's
// confirm.
#ifndef ESS_INBOUND_SVC_LANE_H_
#define ESS_INBOUND_SVC_LANE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "adapters/adapter.h"
#include "common/amqp.h"
#include "common/http_server.h"
#include "common/replay_client.h"

namespace ess::inbound {

class Lane {
 public:
  struct Route {
    std::string partner;
    std::string path;
    std::unique_ptr<adapters::Adapter> adapter;
  };
  struct Options {
    http::Server::Options server;
    std::string events_exchange = "events";
  };
  struct Counters {
    std::atomic<uint64_t> requests{0}, published{0}, rejected{0}, unavailable{0};
  };

  // `publisher` and `recorder` must outlive the lane.
  Lane(Options options, std::vector<Route> routes, amqp::Publisher* publisher,
       ReplayRecorder* recorder);
  ~Lane();

  absl::Status Start();
  void Stop();
  int port() const { return server_.port(); }
  const Counters& counters() const { return counters_; }

 private:
  struct Call;

  void Handle(http::ServerRequest request, http::Responder responder);
  void OnPublished(std::shared_ptr<Call> call, absl::Status status);
  void Finish(Call& call, int status, std::string body);

  Options options_;
  absl::flat_hash_map<std::string, Route> routes_;
  amqp::Publisher* publisher_;
  ReplayRecorder* recorder_;
  http::Server server_;
  Counters counters_;
};

}  // namespace ess::inbound

#endif  // ESS_INBOUND_SVC_LANE_H_
