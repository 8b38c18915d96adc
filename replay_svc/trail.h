// Where one correlation id stands, computed from its records (any backend, any order):
//   pushed_at    = the earliest received_at of its outbound records;
//   delivered_at = the earliest updated_at of its outbound DELIVERED records;
//   confirmed_at = the earliest updated_at of its inbound PUBLISHED records;
//   stage        = where its latest update stands: the furthest stage, by precedence
//                  confirmed > delivered > dead > failed > dry_run > pushed, reached by its
//                  current records; empty when none applies (e.g. only inbound records not yet
//                  published).
// The current records are each partner's newest outbound record (the one the lane took last,
// by received_at; a visit updated twice has the second update's record) and the inbound
// records written (updated_at) since the lane took the last update. So a visit whose older
// update was delivered and confirmed and whose newer one was parked reads "dead", not
// "confirmed": the partner does not have what the agency has. The times keep the history.
// (received_at is the lane's clock and updated_at the store's: a skew between them larger than
// a push takes could hide a confirmation that came right after it.)
#ifndef ESS_REPLAY_SVC_TRAIL_H_
#define ESS_REPLAY_SVC_TRAIL_H_

#include <vector>

#include "absl/strings/string_view.h"
#include "ess/v1/replay.pb.h"

namespace ess::replay {

ess::v1::CorrelationTrail ComputeTrail(absl::string_view correlation_id,
                                       const std::vector<ess::v1::MessageRecord>& records);

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_TRAIL_H_
