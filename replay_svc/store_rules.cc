#include "replay_svc/store_rules.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "replay_svc/records.h"

namespace ess::replay::rules {

absl::Status ValidateRecords(
    const google::protobuf::RepeatedPtrField<ess::v1::MessageRecord>& records) {
  for (int i = 0; i < records.size(); ++i) {
    if (absl::Status s = ValidateRecord(records[i], ""); !s.ok()) {
      return WithPrefix(absl::StrCat("records[", i, "]."), s);
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateImport(
    const google::protobuf::RepeatedPtrField<ess::v1::MessageRecord>& records) {
  if (absl::Status s = ValidateRecords(records); !s.ok()) return s;
  for (int i = 0; i < records.size(); ++i) {
    const ess::v1::MessageRecord& r = records[i];
    if (!r.has_received_at() || !ToUnixMicros(r.received_at()).has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("records[", i, "].received_at: must be set (an import keeps it)"));
    }
    if (!r.has_updated_at() || !ToUnixMicros(r.updated_at()).has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("records[", i, "].updated_at: must be set (an import keeps it)"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateClaims(const google::protobuf::RepeatedPtrField<ess::v1::Claim>& claims) {
  for (int i = 0; i < claims.size(); ++i) {
    if (absl::Status s = ValidateClaimedRecord(claims[i].record(), "record"); !s.ok()) {
      return WithPrefix(absl::StrCat("claims[", i, "]."), s);
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateKeys(const google::protobuf::RepeatedPtrField<ess::v1::RecordKey>& keys) {
  for (int i = 0; i < keys.size(); ++i) {
    const ess::v1::RecordKey& key = keys[i];
    if (absl::Status s = ValidateKey(key.direction(), key.partner(), key.message_id(), "");
        !s.ok()) {
      return WithPrefix(absl::StrCat("keys[", i, "]."), s);
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateMarks(const std::vector<ReplayMark>& marks) {
  for (size_t i = 0; i < marks.size(); ++i) {
    const ess::v1::RecordKey& key = marks[i].key;
    const std::string path = absl::StrCat("marks[", i, "]");
    if (absl::Status s = ValidateKey(key.direction(), key.partner(), key.message_id(), path);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = ValidateStatus(marks[i].status, absl::StrCat(path, ".status")); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateUpdate(const ess::v1::UpdateStatusRequest& request) {
  if (absl::Status s =
          ValidateKey(request.direction(), request.partner(), request.message_id(), "");
      !s.ok()) {
    return s;
  }
  return ValidateStatus(request.status(), "");
}

absl::Status NoRecord(ess::v1::Direction direction, absl::string_view partner,
                      absl::string_view message_id) {
  return absl::NotFoundError(absl::StrCat("no record direction=", DirectionName(direction),
                                          " partner=", partner, " message_id=", message_id));
}

absl::Status WithPrefix(absl::string_view prefix, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

int64_t ReceivedAtOr(const ess::v1::MessageRecord& record, int64_t now) {
  return record.has_received_at() && !IsUnset(record.received_at())
             ? ToUnixMicros(record.received_at()).value_or(now)
             : now;
}

ess::v1::ClaimOutcome ClaimOfStored(const ess::v1::Claim& claim,
                                    ess::v1::MessageStatus stored_status, int64_t stored_updated_at,
                                    int64_t now) {
  const int64_t age = now - stored_updated_at;
  if (stored_status == ess::v1::MESSAGE_STATUS_PUBLISHED &&
      age <= int64_t{claim.window_seconds()} * 1'000'000) {
    return ess::v1::CLAIM_OUTCOME_PUBLISHED;
  }
  if (stored_status == ess::v1::MESSAGE_STATUS_RECEIVED && claim.lease_ms() > 0 &&
      age <= int64_t{claim.lease_ms()} * 1'000) {
    return ess::v1::CLAIM_OUTCOME_IN_PROGRESS;
  }
  return ess::v1::CLAIM_OUTCOME_CLAIMED;
}

void SetSuccessRate(ess::v1::PartnerStats& stats) {
  const uint64_t attempted = stats.delivered() + stats.failed() + stats.dead();
  if (stats.direction() == ess::v1::DIRECTION_OUTBOUND && attempted > 0) {
    stats.set_success_rate(static_cast<double>(stats.delivered()) / static_cast<double>(attempted));
  }
}

}  // namespace ess::replay::rules
