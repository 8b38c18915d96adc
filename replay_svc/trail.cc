#include "replay_svc/trail.h"

#include <algorithm>
#include <limits>
#include <optional>

#include "absl/container/flat_hash_map.h"
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

// A record's time as the store holds it; records without one come first.
int64_t Micros(const google::protobuf::Timestamp& ts) {
  return ToUnixMicros(ts).value_or(std::numeric_limits<int64_t>::min());
}

// Whether outbound record `a` is a later update than `b`: taken by the lane later, or, taken
// at the same time (one batch), written later.
bool Later(const ess::v1::MessageRecord& a, const ess::v1::MessageRecord& b) {
  const int64_t ta = Micros(a.received_at()), tb = Micros(b.received_at());
  return ta != tb ? ta > tb : Micros(a.updated_at()) > Micros(b.updated_at());
}

}  // namespace

ess::v1::CorrelationTrail ComputeTrail(absl::string_view correlation_id,
                                       const std::vector<ess::v1::MessageRecord>& records) {
  Earliest pushed, delivered, confirmed;
  // Each partner's newest outbound record: its latest update of this correlation id.
  absl::flat_hash_map<absl::string_view, const ess::v1::MessageRecord*> newest;
  int64_t last_taken = std::numeric_limits<int64_t>::min();  // the last update the lane took
  for (const ess::v1::MessageRecord& r : records) {
    if (r.direction() != ess::v1::DIRECTION_OUTBOUND) continue;
    pushed.Offer(r.received_at());
    if (r.status() == ess::v1::MESSAGE_STATUS_DELIVERED) delivered.Offer(r.updated_at());
    const ess::v1::MessageRecord*& n = newest[r.partner()];
    if (n == nullptr || Later(r, *n)) n = &r;
    last_taken = std::max(last_taken, Micros(r.received_at()));
  }
  // The stage comes from the records that are current: each partner's newest outbound record,
  // and the inbound records written since the lane took the last update (a confirmation of an
  // older update does not confirm a newer one).
  std::vector<const ess::v1::MessageRecord*> current;
  current.reserve(records.size());
  for (const auto& [partner, r] : newest) current.push_back(r);
  for (const ess::v1::MessageRecord& r : records) {
    if (r.direction() == ess::v1::DIRECTION_OUTBOUND) continue;
    if (r.status() == ess::v1::MESSAGE_STATUS_PUBLISHED) confirmed.Offer(r.updated_at());
    if (Micros(r.updated_at()) >= last_taken) current.push_back(&r);
  }
  bool is_confirmed = false, is_delivered = false, dead = false, failed = false, dry_run = false;
  for (const ess::v1::MessageRecord* r : current) {
    const bool outbound = r->direction() == ess::v1::DIRECTION_OUTBOUND;
    switch (r->status()) {
      case ess::v1::MESSAGE_STATUS_DELIVERED:
        is_delivered = is_delivered || outbound;
        break;
      case ess::v1::MESSAGE_STATUS_PUBLISHED:
        is_confirmed = is_confirmed || !outbound;
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

  if (is_confirmed) {
    trail.set_stage("confirmed");
  } else if (is_delivered) {
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
