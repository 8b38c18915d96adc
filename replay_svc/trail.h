// Where one correlation id stands, computed from its records (any backend, any order):
//   pushed_at    = the earliest received_at of its outbound records;
//   delivered_at = the earliest updated_at of its outbound DELIVERED records;
//   confirmed_at = the earliest updated_at of its inbound PUBLISHED records;
//   stage        = the furthest stage reached, by precedence
//                  confirmed > delivered > dead > failed > dry_run > pushed,
//                  where dead/failed/dry_run come from any record in that status; empty when
//                  none applies (e.g. only inbound records not yet published).
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
