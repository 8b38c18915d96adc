// The benchmark's partner: an in-process ess::http::Server that accepts every request (201) and
// records what the outbound lane delivered: how many, when the first and last arrived, which ids
// (duplicates are counted), and the end-to-end latency of events that carry "sentNs" (the
// publisher's CLOCK_MONOTONIC nanoseconds, forwarded by the lane's mapping).
#ifndef ESS_BENCH_PARTNER_H_
#define ESS_BENCH_PARTNER_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/http_server.h"

namespace ess::bench {

// CLOCK_MONOTONIC in nanoseconds: comparable across the processes of this machine.
int64_t MonoNs();

class Partner {
 public:
  Partner();
  absl::Status Start() { return server_.Start(); }
  void Stop() { server_.Stop(); }
  int port() const { return server_.port(); }

  // Forgets everything seen. `track_ids`: remember ids to count duplicates. Latency samples
  // are kept for events published at or after `latency_from_ns` (0: none kept).
  void Reset(bool track_ids, int64_t latency_from_ns);

  uint64_t count() const { return count_.load(); }
  int64_t first_ns() const { return first_ns_.load(); }
  int64_t last_ns() const { return last_ns_.load(); }
  uint64_t duplicates();
  // Latency samples kept so far: when each event was published and its publish-to-receipt
  // latency (ns), in receipt order.
  std::vector<std::pair<int64_t, int64_t>> latencies();

 private:
  void Handle(http::ServerRequest request, http::Responder responder);

  std::atomic<uint64_t> count_{0};
  std::atomic<int64_t> first_ns_{0};
  std::atomic<int64_t> last_ns_{0};
  absl::Mutex mu_;
  bool track_ids_ ABSL_GUARDED_BY(mu_) = false;
  int64_t latency_from_ns_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_set<std::string> ids_ ABSL_GUARDED_BY(mu_);
  uint64_t duplicates_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::pair<int64_t, int64_t>> latencies_ ABSL_GUARDED_BY(mu_);
  http::Server server_;  // last: its thread uses the members above
};

}  // namespace ess::bench

#endif  // ESS_BENCH_PARTNER_H_
