// What every ReplayStore backend (SQLite, PostgreSQL) decides alike: the checks of each
// method's input, whose errors name the element and field ("records[3].message_id: must not be
// empty"), and the rules that a claim and the stats follow (replay_store.h).
#ifndef ESS_REPLAY_SVC_STORE_RULES_H_
#define ESS_REPLAY_SVC_STORE_RULES_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "ess/v1/event.pb.h"
#include "ess/v1/replay.pb.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "replay_svc/replay_store.h"

namespace ess::replay::rules {

absl::Status ValidateRecords(
    const google::protobuf::RepeatedPtrField<ess::v1::MessageRecord>& records);
// ValidateRecords, and each record's received_at and updated_at set (an import keeps them).
absl::Status ValidateImport(
    const google::protobuf::RepeatedPtrField<ess::v1::MessageRecord>& records);
absl::Status ValidateClaims(const google::protobuf::RepeatedPtrField<ess::v1::Claim>& claims);
absl::Status ValidateKeys(const google::protobuf::RepeatedPtrField<ess::v1::RecordKey>& keys);
absl::Status ValidateMarks(const std::vector<ReplayMark>& marks);
absl::Status ValidateUpdate(const ess::v1::UpdateStatusRequest& request);

// NOT_FOUND naming the key.
absl::Status NoRecord(ess::v1::Direction direction, absl::string_view partner,
                      absl::string_view message_id);
// `status` with `prefix` before its message.
absl::Status WithPrefix(absl::string_view prefix, const absl::Status& status);

// The record's received_at in Unix microseconds, or `now` when it has none.
int64_t ReceivedAtOr(const ess::v1::MessageRecord& record, int64_t now);

// What a claim of a key that is already stored gets: PUBLISHED if the stored record was
// published within the claim's window_seconds (a repeat), IN_PROGRESS if it was received within
// its lease_ms (another call is publishing it), else CLAIMED (the store then records it
// RECEIVED). Times are Unix microseconds.
ess::v1::ClaimOutcome ClaimOfStored(const ess::v1::Claim& claim,
                                    ess::v1::MessageStatus stored_status, int64_t stored_updated_at,
                                    int64_t now);

// delivered / (delivered + failed + dead) for an outbound partner with any attempt.
void SetSuccessRate(ess::v1::PartnerStats& stats);

}  // namespace ess::replay::rules

#endif  // ESS_REPLAY_SVC_STORE_RULES_H_
