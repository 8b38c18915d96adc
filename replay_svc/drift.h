// Drift (replay.drift): a thread that counts, now and then, what each watched partner took and
// never confirmed, the two sides drifting apart before a family drives to a double-booked visit.
//
// A partner is watched when its outbound route sets confirm_within_seconds. Each check counts
// its deliveries (outbound records DELIVERED) updated within [now - window, now -
// confirm_within) whose correlation id no inbound record PUBLISHED confirms, from any partner;
// the same rows `essctl list --unconfirmed` lists. The figures go to the metrics, and a change
// to the log (a warning while any is unconfirmed).
//
//   DriftWatch watch(store, DriftWatch::PartnersFromConfig(config),
//                    DriftWatch::OptionsFromConfig(config));
//   std::vector<prometheus::MetricFamily> families = watch.Metrics();
//   watch.Stop();   // or let it go out of scope
#ifndef ESS_REPLAY_SVC_DRIFT_H_
#define ESS_REPLAY_SVC_DRIFT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ess/v1/config.pb.h"
#include "prometheus/metric_family.h"
#include "replay_svc/periodic_thread.h"
#include "replay_svc/replay_store.h"

namespace ess::replay {

class DriftWatch {
 public:
  struct Partner {
    std::string name;
    absl::Duration confirm_within;
  };
  struct Options {
    // How far back deliveries are counted.
    absl::Duration window = absl::Hours(24);
    // Between two checks; the first runs at once. absl::InfiniteDuration(): only that one.
    absl::Duration interval = absl::Seconds(60);
    // absl::Now when empty. Tests pass a fake clock.
    std::function<absl::Time()> clock;
  };

  // The partners whose outbound route sets confirm_within_seconds, in config order.
  static std::vector<Partner> PartnersFromConfig(const ess::v1::HubConfig& config);
  static Options OptionsFromConfig(const ess::v1::HubConfig& config);

  // Starts the thread. `store` must outlive the watch. Destroying it stops it.
  DriftWatch(ReplayStore& store, std::vector<Partner> partners, Options options);
  DriftWatch(const DriftWatch&) = delete;
  DriftWatch& operator=(const DriftWatch&) = delete;

  // Waits for a check in progress, then stops. Later calls do nothing.
  void Stop() { thread_.Stop(); }

  // Counts every partner now, as the thread does at each interval. A partner whose count fails
  // keeps its last figures; the first failure is returned once every partner was tried.
  absl::Status Check();

  // ess_replay_unconfirmed_deliveries{partner} and ess_replay_unconfirmed_oldest_seconds{partner}
  // from the last check that counted the partner (no sample before one did), and
  // ess_replay_drift_checks_total{result}.
  std::vector<prometheus::MetricFamily> Metrics() const;

 private:
  struct Figures {
    bool counted = false;
    uint64_t unconfirmed = 0;
    absl::Duration oldest_age;
  };

  // The thread's work: Check(), its failure logged.
  void CheckAndLog();
  absl::Time Now() const { return options_.clock ? options_.clock() : absl::Now(); }

  ReplayStore& store_;
  const std::vector<Partner> partners_;
  const Options options_;

  // Held through a whole check: a check's figures are never older than those they replace.
  absl::Mutex check_mu_ ABSL_ACQUIRED_BEFORE(figures_mu_);
  mutable absl::Mutex figures_mu_;
  std::vector<Figures> figures_ ABSL_GUARDED_BY(figures_mu_);  // one per partner
  std::atomic<uint64_t> checks_ok_{0}, checks_failed_{0};

  PeriodicThread thread_;  // last: starts once everything it uses exists
};

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_DRIFT_H_
