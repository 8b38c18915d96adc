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
//
// Idempotency: each event's message id is the partner's `webhook-id` header (":N" appended per
// event when one call carries several), or else its correlation id and a hash of the event.
// An id published within the dedupe window (the newest dedupe_memory_ids of them remembered in
// memory, every one found in the replay store, which keeps them across restarts and replicas)
// is answered 200 with "duplicates" and not published again; an id still being published by
// another request gets 503.
#ifndef ESS_INBOUND_SVC_LANE_H_
#define ESS_INBOUND_SVC_LANE_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/adapter.h"
#include "common/amqp.h"
#include "common/audit.h"
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
    absl::Duration dedupe_window = absl::Minutes(10);
    // Published ids remembered in memory, newest first; older ones within the window are
    // answered from the replay store (a batched lookup per webhook either way). Bounds the
    // lane's memory: ~180 bytes per id.
    size_t dedupe_memory_ids = 16384;
  };
  struct Counters {
    std::atomic<uint64_t> requests{0}, published{0}, rejected{0}, unavailable{0}, duplicates{0};
  };

  // `publisher`, `recorder` and `audit` (may be null) must outlive the lane.
  Lane(Options options, std::vector<Route> routes, amqp::Publisher* publisher,
       ReplayRecorder* recorder, AuditSink* audit = nullptr);
  ~Lane();

  absl::Status Start();
  void Stop();
  int port() const { return server_.port(); }
  const Counters& counters() const { return counters_; }

 private:
  struct Call;

  // Message ids published (or being published) lately, for idempotency.
  class RecentIds {
   public:
    enum class Claim { kClaimed, kInProgress, kPublished };
    RecentIds(absl::Duration window, size_t max_published)
        : window_(window), max_published_(std::max<size_t>(max_published, 1)) {}
    // kClaimed: the caller now owns `id` until Published or Release.
    Claim Take(const std::string& id, absl::Time now);
    void Published(const std::string& id, absl::Time at);
    void Release(const std::string& id);

   private:
    struct Entry {
      bool published = false;
      absl::Time at;
    };
    const absl::Duration window_;
    const size_t max_published_;
    absl::Mutex mu_;
    absl::flat_hash_map<std::string, Entry> ids_ ABSL_GUARDED_BY(mu_);
    std::deque<std::pair<absl::Time, std::string>> order_ ABSL_GUARDED_BY(mu_);
  };

  void Handle(http::ServerRequest request, http::Responder responder);
  void OnLookedUp(std::shared_ptr<Call> call);
  void OnPublished(std::shared_ptr<Call> call, absl::Status status);
  void OnRecorded(std::shared_ptr<Call> call);
  // Answers the call; a failed call gives its ids back so the partner's retry is not a duplicate.
  void Finish(Call& call, int status, std::string body);

  Options options_;
  absl::flat_hash_map<std::string, Route> routes_;
  amqp::Publisher* publisher_;
  ReplayRecorder* recorder_;
  AuditSink* audit_;
  http::Server server_;
  RecentIds recent_;
  Counters counters_;
};

}  // namespace ess::inbound

#endif  // ESS_INBOUND_SVC_LANE_H_
