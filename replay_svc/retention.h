// Retention (replay.retention): a thread that evicts settled records now and then.
//
//   RetentionSweeper sweeper(store, RetentionSweeper::PolicyFromConfig(config), interval);
//   ...
//   sweeper.Stop();   // or let it go out of scope
//
// The first sweep runs at once, then one every `interval`; each logs what it evicted. A failed
// sweep is logged and tried again at the next interval.
#ifndef ESS_REPLAY_SVC_RETENTION_H_
#define ESS_REPLAY_SVC_RETENTION_H_

#include <atomic>
#include <cstdint>

#include "absl/time/time.h"
#include "ess/v1/config.pb.h"
#include "replay_svc/periodic_thread.h"
#include "replay_svc/replay_store.h"

namespace ess::replay {

class RetentionSweeper {
 public:
  // replay.retention, with nothing updated within inbound.dedupe_window_seconds evicted.
  static RetentionPolicy PolicyFromConfig(const ess::v1::HubConfig& config);
  // True when the config asks for any eviction at all.
  static bool Enabled(const ess::v1::HubConfig& config);

  // `store` must outlive the sweeper. Destroying it stops it.
  RetentionSweeper(ReplayStore& store, RetentionPolicy policy, absl::Duration interval);
  RetentionSweeper(const RetentionSweeper&) = delete;
  RetentionSweeper& operator=(const RetentionSweeper&) = delete;

  // Waits for a sweep in progress, then stops. Later calls do nothing.
  void Stop() { thread_.Stop(); }
  // Sweeps done so far, and records evicted by them.
  uint64_t sweeps() const { return sweeps_.load(); }
  uint64_t evicted() const { return evicted_.load(); }

 private:
  void Sweep();

  ReplayStore& store_;
  const RetentionPolicy policy_;
  std::atomic<uint64_t> sweeps_{0}, evicted_{0};
  PeriodicThread thread_;  // last: starts once everything it uses exists
};

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_RETENTION_H_
