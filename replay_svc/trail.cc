#include "replay_svc/trail.h"

#include <optional>

#include "replay_svc/records.h"

namespace ess::replay {
namespace {

// Keeps the earliest of the times offered.
class Earliest {
 public:
  void Offer(const google::protobuf::Timestamp& ts) {
    std::optional<int64_t> micros = ToUnixMicros(ts);
    if (micros.has_value() && (!micros_.has_value() || *micros < *micros_)) micros_ = micros;
  }
  bool has_value() const { return micros_.has_value(); }
  // Only when has_value().
  google::protobuf::Timestamp Get() const { return FromUnixMicros(*micros_); }

 private:
  std::optional<int64_t> micros_;
};

}  // namespace

ess::v1::CorrelationTrail ComputeTrail(absl::string_view correlation_id,
                                       const std::vector<ess::v1::MessageRecord>& records) {
  Earliest pushed, delivered, confirmed;
  bool dead = false, failed = false, dry_run = false;
  for (const ess::v1::MessageRecord& r : records) {
    const bool outbound = r.direction() == ess::v1::DIRECTION_OUTBOUND;
    if (outbound) pushed.Offer(r.received_at());
    switch (r.status()) {
      case ess::v1::MESSAGE_STATUS_DELIVERED:
        if (outbound) delivered.Offer(r.updated_at());
        break;
      case ess::v1::MESSAGE_STATUS_PUBLISHED:
        if (!outbound) confirmed.Offer(r.updated_at());
        break;
      case ess::v1::MESSAGE_STATUS_DEAD:
        dead = true;
        break;
      case ess::v1::MESSAGE_STATUS_FAILED:
        failed = true;
        break;
      case ess::v1::MESSAGE_STATUS_DRY_RUN:
        dry_run = true;
        break;
      default:
        break;
    }
  }

  ess::v1::CorrelationTrail trail;
  trail.set_correlation_id(std::string(correlation_id));
  if (pushed.has_value()) *trail.mutable_pushed_at() = pushed.Get();
  if (delivered.has_value()) *trail.mutable_delivered_at() = delivered.Get();
  if (confirmed.has_value()) *trail.mutable_confirmed_at() = confirmed.Get();

  if (confirmed.has_value()) {
    trail.set_stage("confirmed");
  } else if (delivered.has_value()) {
    trail.set_stage("delivered");
  } else if (dead) {
    trail.set_stage("dead");
  } else if (failed) {
    trail.set_stage("failed");
  } else if (dry_run) {
    trail.set_stage("dry_run");
  } else if (pushed.has_value()) {
    trail.set_stage("pushed");
  }
  return trail;
}

}  // namespace ess::replay
