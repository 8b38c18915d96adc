#include "replay_svc/retention.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/sv.h"

namespace ess::replay {

RetentionPolicy RetentionSweeper::PolicyFromConfig(const ess::v1::HubConfig& config) {
  const ess::v1::ReplayRetention& r = config.replay().retention();
  return RetentionPolicy{
      .max_age = absl::Seconds(r.max_age_seconds()),
      .max_per_partner = r.max_records_per_partner(),
      .min_age = absl::Seconds(config.inbound().dedupe_window_seconds()),
  };
}

bool RetentionSweeper::Enabled(const ess::v1::HubConfig& config) {
  const ess::v1::ReplayRetention& r = config.replay().retention();
  return r.max_age_seconds() > 0 || r.max_records_per_partner() > 0;
}

RetentionSweeper::RetentionSweeper(ReplayStore& store, RetentionPolicy policy,
                                   absl::Duration interval)
    : store_(store), policy_(policy), thread_("replay-retain", interval, [this] { Sweep(); }) {}

void RetentionSweeper::Sweep() {
  const absl::Time started = absl::Now();
  absl::StatusOr<uint64_t> evicted = store_.Purge(policy_);
  // The count of evictions first: whoever sees a sweep counted sees what it evicted.
  if (evicted.ok()) evicted_.fetch_add(*evicted);
  sweeps_.fetch_add(1);
  if (!evicted.ok()) {
    log::Error("", "retention sweep failed", {{"error", ToStd(evicted.status().message())}});
  } else if (*evicted > 0) {
    log::Info("", "retention sweep",
              {{"evicted", absl::StrCat(*evicted)},
               {"ms", absl::StrCat(absl::ToInt64Milliseconds(absl::Now() - started))}});
  }
}

}  // namespace ess::replay
