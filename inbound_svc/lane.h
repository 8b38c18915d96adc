// The inbound lane: partner -> bus.
//
// Serves each partner's webhook path. A callback is authenticated (a route with secrets takes
// only calls signed with one of them: Standard Webhooks, common/webhook_signature.h),
// turned into internal events by the partner's adapter (Pull, through its inbound mapping),
// claimed in the replay store (ReplayService.Claim: recorded RECEIVED, unless a repeat), then
// published persistent and mandatory to the events fanout exchange with publisher confirms.
// The partner gets its answer only after that; the record then says PUBLISHED:
//
//   200  every event is recorded and was confirmed by the broker (or is a repeat)
//   400  the payload is not what the partner's mapping expects (the reason is in the body)
//   401  the route takes signed calls and this one is not validly signed, or too old
//   404  no partner serves this path          405  not a POST
//   503  broker or replay store unreachable, the adapter failed for another reason than the
//        payload, or the id is being published by another call (Retry-After: 1): the partner
//        should retry; claims already stored are given back (recorded FAILED). The body says
//        only which part failed ({"error":"event bus unavailable"}, {"error":"replay store
//        unavailable"} or {"error":"webhook adapter unavailable"}); what went wrong is logged
//        (at most once a second, with the count of the failures not logged; an adapter's text
//        with the payload's PII values masked) and carried by the FAILED record and the audit
//        event, which are internal (an adapter's failure comes before any claim: neither).
//
// Besides the webhook paths it serves the operations endpoints (common/ops_endpoints.h):
// GET /metrics, GET /healthz (liveness: 200 {"ok":true} while the process serves HTTP) and
// GET /readyz (readiness: 200 {"ready":true} while the publisher is connected to the broker,
// the broker does not block it with a resource alarm, and the replay store answered the lane's
// last probe; else 503 naming what is not, e.g.
// {"ready":false,"bus":"not connected","store":"unreachable"} or
// {"ready":false,"broker_alarm":"low on memory"}: during an alarm every webhook would be
// answered 503 at once). The store is probed by a thread of the lane's own, once per
// store_probe_interval, and the alarm is the publisher's cached state: a readiness request never
// waits on the network.
//
// Claims, publishes and records of concurrent requests are batched and pipelined: no request
// waits for another's confirm.
//
// Idempotency: each event's message id is the partner's `webhook-id` header (":N" appended per
// event when one call carries several), or else its correlation id and a hash of the event.
// An id published within the dedupe window (the newest dedupe_memory_ids of them remembered in
// memory, every one known to the replay store, which keeps them across restarts and replicas)
// is answered 200 with "duplicates" and not published again. An id being published by another
// request, of this replica (in memory) or another (its claim in the store, for at most
// claim_lease), gets 503. A crash between the confirm and the PUBLISHED record leaves RECEIVED:
// a repeat after the lease publishes again, a duplicate with the same message id, never a loss.
#ifndef ESS_INBOUND_SVC_LANE_H_
#define ESS_INBOUND_SVC_LANE_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/adapter.h"
#include "common/amqp.h"
#include "common/audit.h"
#include "common/http_server.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/ops_endpoints.h"
#include "common/replay_client.h"
#include "common/webhook_signature.h"
#include "prometheus/metric_family.h"

namespace ess::inbound {

class Lane {
 public:
  struct Route {
    std::string partner;
    std::string path;
    std::unique_ptr<adapters::Adapter> adapter;
    // Set: every call must carry a valid Standard Webhooks signature (401 otherwise).
    std::optional<webhook::SignatureVerifier> verifier;
    // Lower-case; set: the header whose value is a call's id, instead of its webhook-id
    // (InboundRoute.id_header).
    std::string id_header;
  };
  struct Options {
    http::Server::Options server;
    std::string events_exchange = "events";
    absl::Duration dedupe_window = absl::Minutes(10);
    // Published ids remembered in memory, newest first; older ones within the window are
    // answered from the replay store (a batched lookup per webhook either way). Bounds the
    // lane's memory: ~180 bytes per id.
    size_t dedupe_memory_ids = 16384;
    // How long a claimed id holds off repeats while it is published (ReplayService.Claim):
    // longer than a publish may wait for its confirm, or a retry through another replica may
    // publish it a second time. A claim answered after half of it is not published (503).
    absl::Duration claim_lease = absl::Seconds(35);
    // Set: more metrics served with the lane's own (the SFTP pollers'); called at each scrape,
    // on a server thread.
    std::function<std::vector<prometheus::MetricFamily>()> more_metrics;
    // How often the lane asks the replay store whether it answers (for GET /readyz); each
    // probe waits this long for its answer at most.
    absl::Duration store_probe_interval = absl::Seconds(1);
  };
  struct Counters {
    std::atomic<uint64_t> requests{0}, published{0}, rejected{0}, unavailable{0}, duplicates{0},
        unauthenticated{0};
    // Published and answered 200, but the PUBLISHED record failed: the store says RECEIVED.
    std::atomic<uint64_t> unrecorded{0};
  };

  // `publisher`, `recorder` and `audit` (may be null) must outlive the lane.
  Lane(Options options, std::vector<Route> routes, amqp::Publisher* publisher,
       ReplayRecorder* recorder, AuditSink* audit = nullptr);
  ~Lane();

  // Starts serving and probing the store.
  absl::Status Start();
  // Stops taking connections and waits (at most `timeout`) for the webhooks in progress to be
  // answered; true if all were. Stop() follows.
  bool Drain(absl::Duration timeout);
  void Stop();
  int port() const { return server_.port(); }
  const Counters& counters() const { return counters_; }
  // The lane's Prometheus metrics now (also served at GET /metrics). Thread-safe.
  std::vector<prometheus::MetricFamily> Metrics() const;

 private:
  struct Call;

  // Message ids published (or being published) lately, for idempotency, by partner: as in the
  // store, two partners' ids never collide.
  class RecentIds {
   public:
    enum class Claim { kClaimed, kInProgress, kPublished };
    RecentIds(absl::Duration window, size_t max_published)
        : window_(window), max_published_(std::max<size_t>(max_published, 1)) {}
    // kClaimed: the caller now owns the partner's `id` until Published or Release.
    Claim Take(std::string_view partner, std::string_view id, absl::Time now);
    void Published(std::string_view partner, std::string_view id, absl::Time at);
    void Release(std::string_view partner, std::string_view id);

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

  // What the lane knows of the replay store from its probes.
  enum class StoreState { kUnknown, kAnswers, kUnreachable, kRefusesLane };

  void Handle(http::ServerRequest request, http::Responder responder);
  // What GET /readyz reports not ready, from cached state.
  ops::NotReady NotReady() const;
  // The probe thread's loop: asks the store every store_probe_interval until Stop().
  void ProbeStore();
  // Logs a failed call's detail at warn, at most once a second (`throttle`).
  void LogUnavailable(log::Throttle& throttle, std::string_view cid, std::string_view msg,
                      std::string_view partner, std::string_view error);
  // Round 1 ended: `error` if a claim call failed.
  void OnClaimed(std::shared_ptr<Call> call, const absl::Status& error);
  // Event `i`'s confirm (or failure); the last one of the call answers it.
  void OnPublished(std::shared_ptr<Call> call, size_t i, const absl::Status& status);
  // Records event `i` of the call PUBLISHED (after its claim's RECEIVED).
  void RecordPublished(const Call& call, size_t i);
  // Gives the call's claims back (records them FAILED with `reason`), so a retry can claim
  // them at once rather than after the lease; all of them, or those `published` does not mark.
  void Release(const Call& call, std::string_view reason,
               const std::vector<bool>* published = nullptr);
  // Answers the call; a failed call gives its ids back so the partner's retry is not a duplicate.
  // With `published`, the events it marks were published all the same (a partial failure).
  // The failed events' audit events carry `audit_error` when given (the failure's detail, which
  // the partner's `body` does not tell), else `body`.
  void Finish(Call& call, int status, std::string body,
              const std::vector<bool>* published = nullptr, std::string_view audit_error = {});

  Options options_;
  absl::flat_hash_map<std::string, Route> routes_;
  amqp::Publisher* publisher_;
  ReplayRecorder* recorder_;
  AuditSink* audit_;
  // /healthz, /readyz and /metrics, answered on the webhook server.
  ops::Endpoints ops_;
  http::Server server_;
  RecentIds recent_;
  Counters counters_;
  // Where a webhook's time goes: its claims in the store (first sent to last answered), its
  // publishes (first sent to last confirmed), and the whole call (taken to answered).
  metrics::Latency claim_seconds_, publish_seconds_, call_seconds_;
  // The store's failures, the bus's and the adapters' (but a bad payload), each logged at most
  // once a second.
  log::Throttle store_log_, bus_log_, adapter_log_;
  std::atomic<StoreState> store_state_{StoreState::kUnknown};
  absl::Mutex probe_mu_;
  bool probe_stopping_ ABSL_GUARDED_BY(probe_mu_) = false;
  std::thread probe_thread_;
};

}  // namespace ess::inbound

#endif  // ESS_INBOUND_SVC_LANE_H_
