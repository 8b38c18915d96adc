#include "replay_svc/records.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ess::replay {
namespace {

// The range google.protobuf.Timestamp allows: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
constexpr int64_t kMinSeconds = -62135596800;
constexpr int64_t kMaxSeconds = 253402300799;

constexpr absl::string_view kReplayClaim = "replaying: claimed by ";

std::string FieldPath(absl::string_view path, absl::string_view field) {
  return path.empty() ? std::string(field) : absl::StrCat(path, ".", field);
}

absl::Status Invalid(absl::string_view path, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(FieldPath(path, field), ": ", what));
}

}  // namespace

absl::Status ValidateKey(ess::v1::Direction direction, absl::string_view partner,
                         absl::string_view message_id, absl::string_view path) {
  if (direction != ess::v1::DIRECTION_OUTBOUND && direction != ess::v1::DIRECTION_INBOUND) {
    return Invalid(path, "direction", "must be DIRECTION_OUTBOUND or DIRECTION_INBOUND");
  }
  if (partner.empty()) return Invalid(path, "partner", "must not be empty");
  if (message_id.empty()) return Invalid(path, "message_id", "must not be empty");
  return absl::OkStatus();
}

absl::Status ValidateStatus(ess::v1::MessageStatus status, absl::string_view path) {
  if (status == ess::v1::MESSAGE_STATUS_UNSPECIFIED || !ess::v1::MessageStatus_IsValid(status)) {
    return Invalid(path, "status", "must be a specified MessageStatus");
  }
  return absl::OkStatus();
}

absl::Status ValidateRecord(const ess::v1::MessageRecord& record, absl::string_view path) {
  if (absl::Status s = ValidateClaimedRecord(record, path); !s.ok()) return s;
  return ValidateStatus(record.status(), path);
}

absl::Status ValidateClaimedRecord(const ess::v1::MessageRecord& record, absl::string_view path) {
  if (absl::Status s = ValidateKey(record.direction(), record.partner(), record.message_id(), path);
      !s.ok()) {
    return s;
  }
  if (record.correlation_id().empty()) return Invalid(path, "correlation_id", "must not be empty");
  if (record.has_received_at() && !ToUnixMicros(record.received_at()).has_value()) {
    return Invalid(path, "received_at", "is not a valid timestamp");
  }
  return absl::OkStatus();
}

std::optional<int64_t> ToUnixMicros(const google::protobuf::Timestamp& ts) {
  if (ts.seconds() < kMinSeconds || ts.seconds() > kMaxSeconds || ts.nanos() < 0 ||
      ts.nanos() > 999'999'999) {
    return std::nullopt;
  }
  return ts.seconds() * 1'000'000 + ts.nanos() / 1'000;
}

google::protobuf::Timestamp FromUnixMicros(int64_t micros) {
  google::protobuf::Timestamp ts;
  int64_t seconds = micros / 1'000'000;
  int64_t rest = micros % 1'000'000;
  if (rest < 0) {  // Timestamp nanos are never negative.
    seconds -= 1;
    rest += 1'000'000;
  }
  ts.set_seconds(seconds);
  ts.set_nanos(static_cast<int32_t>(rest * 1'000));
  return ts;
}

bool IsUnset(const google::protobuf::Timestamp& ts) { return ts.seconds() == 0 && ts.nanos() == 0; }

std::string DirectionName(ess::v1::Direction direction) {
  switch (direction) {
    case ess::v1::DIRECTION_OUTBOUND:
      return "outbound";
    case ess::v1::DIRECTION_INBOUND:
      return "inbound";
    default:
      return "unspecified";
  }
}

std::string ReplayClaimError(absl::string_view who, absl::string_view previous_error) {
  return absl::StrCat(kReplayClaim, who.empty() ? "ops" : who,
                      previous_error.empty() ? "" : "; error before: ", previous_error);
}

bool IsReplayClaim(const ess::v1::MessageRecord& record) {
  return absl::StartsWith(record.error(), kReplayClaim);
}

std::string StatusName(ess::v1::MessageStatus status) {
  switch (status) {
    case ess::v1::MESSAGE_STATUS_RECEIVED:
      return "received";
    case ess::v1::MESSAGE_STATUS_DELIVERED:
      return "delivered";
    case ess::v1::MESSAGE_STATUS_DRY_RUN:
      return "dry_run";
    case ess::v1::MESSAGE_STATUS_FAILED:
      return "failed";
    case ess::v1::MESSAGE_STATUS_DEAD:
      return "dead";
    case ess::v1::MESSAGE_STATUS_PUBLISHED:
      return "published";
    default:
      return "unspecified";
  }
}

std::optional<ess::v1::Direction> ParseDirection(absl::string_view name) {
  std::string lower = absl::AsciiStrToLower(name);
  for (ess::v1::Direction d : {ess::v1::DIRECTION_OUTBOUND, ess::v1::DIRECTION_INBOUND}) {
    if (lower == DirectionName(d)) return d;
  }
  return std::nullopt;
}

std::optional<ess::v1::MessageStatus> ParseStatus(absl::string_view name) {
  std::string lower = absl::AsciiStrToLower(name);
  if (lower == "dry-run") lower = "dry_run";
  for (int i = ess::v1::MessageStatus_MIN; i <= ess::v1::MessageStatus_MAX; ++i) {
    auto status = static_cast<ess::v1::MessageStatus>(i);
    if (status != ess::v1::MESSAGE_STATUS_UNSPECIFIED && ess::v1::MessageStatus_IsValid(i) &&
        lower == StatusName(status)) {
      return status;
    }
  }
  return std::nullopt;
}

}  // namespace ess::replay
