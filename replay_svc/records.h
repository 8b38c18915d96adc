// Helpers over MessageRecord shared by the store backends and the service: request validation
// (errors name the field path, e.g. "records[3].message_id: must not be empty"), timestamp
// conversion, and the short names of directions and statuses ("outbound", "delivered").
#ifndef ESS_REPLAY_SVC_RECORDS_H_
#define ESS_REPLAY_SVC_RECORDS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "ess/v1/event.pb.h"
#include "ess/v1/replay.pb.h"
#include "google/protobuf/timestamp.pb.h"

namespace ess::replay {

// OK if `record` can be stored: a known direction and status, and non-empty partner,
// message_id and correlation_id; a valid received_at if set. Otherwise INVALID_ARGUMENT whose
// message starts with `path` (e.g. "records[3]") and names the field.
absl::Status ValidateRecord(const ess::v1::MessageRecord& record, absl::string_view path);
// The same without the status: a claim's record is stored RECEIVED whatever it says.
absl::Status ValidateClaimedRecord(const ess::v1::MessageRecord& record, absl::string_view path);

// Same for the fields of a key (direction, partner, message_id); `path` may be empty.
absl::Status ValidateKey(ess::v1::Direction direction, absl::string_view partner,
                         absl::string_view message_id, absl::string_view path);

// INVALID_ARGUMENT unless `status` is a known, specified MessageStatus.
absl::Status ValidateStatus(ess::v1::MessageStatus status, absl::string_view path);

// Microseconds since the Unix epoch (what the stores keep; finer parts are truncated).
// nullopt if `ts` is out of the range google.protobuf.Timestamp allows.
std::optional<int64_t> ToUnixMicros(const google::protobuf::Timestamp& ts);
google::protobuf::Timestamp FromUnixMicros(int64_t micros);
// True when `ts` is the default (unset) value.
bool IsUnset(const google::protobuf::Timestamp& ts);

// The error a record holds while an ops replay has claimed it (Replayer: from before its publish
// until the confirm is marked): "replaying: claimed by WHO", then, if the record had an error,
// "; error before: ERROR".
std::string ReplayClaimError(absl::string_view who, absl::string_view previous_error);
// True when `record` holds an ops replay's claim (its error is a ReplayClaimError).
bool IsReplayClaim(const ess::v1::MessageRecord& record);

// "outbound", "inbound"; "unspecified" for anything else.
std::string DirectionName(ess::v1::Direction direction);
// "received", "delivered", "dry_run", "failed", "dead", "published"; "unspecified" otherwise.
std::string StatusName(ess::v1::MessageStatus status);
// Inverses of the above (case-insensitive); nullopt for an unknown name.
std::optional<ess::v1::Direction> ParseDirection(absl::string_view name);
std::optional<ess::v1::MessageStatus> ParseStatus(absl::string_view name);

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_RECORDS_H_
