// Audit events: one SyncAudit (proto/ess/v1/event.proto) per sync outcome, published as JSON to
// the audit exchange (bus.audit_exchange; off when empty). They carry ids, outcome and timing,
// never payloads, so they hold no PII.
//
// Publishing uses the lane's Publisher: persistent, mandatory, confirmed. An audit event that
// cannot be published is logged and counted; it never holds up or fails the sync it describes.
//
//   AuditSink audit(&publisher, "audit");
//   audit.Emit(record);  // from any thread
#ifndef ESS_COMMON_AUDIT_H_
#define ESS_COMMON_AUDIT_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/amqp.h"
#include "ess/v1/event.pb.h"

namespace ess {

class AuditSink {
 public:
  // `publisher` may be null or `exchange` empty: then Emit does nothing.
  AuditSink(amqp::Publisher* publisher, std::string exchange)
      : publisher_(publisher), exchange_(std::move(exchange)) {}

  bool enabled() const { return publisher_ != nullptr && !exchange_.empty(); }

  // Thread-safe.
  void Emit(const ess::v1::SyncAudit& event);
  // As Emit(event), and `done` runs exactly once: with the publish's outcome (see
  // Publisher::Done), or OK at once when the sink is off. Lets a caller that emits many events
  // at a time bound how many are unconfirmed.
  void Emit(const ess::v1::SyncAudit& event, amqp::Publisher::Done done);

  // The SyncAudit of one outcome.
  static ess::v1::SyncAudit Make(ess::v1::Direction direction, std::string_view partner,
                                 std::string_view correlation_id, std::string_view message_id,
                                 std::string_view event_type, ess::v1::MessageStatus status,
                                 std::string_view error, uint32_t attempt, absl::Time started,
                                 bool dry_run);

  // The event's JSON, as protobuf's JSON mapping writes it (lowerCamelCase names in field
  // order, enums by name, timestamps in RFC 3339, fields at their defaults left out), written
  // directly: protobuf 3.21's MessageToJsonString goes through the binary form and a type
  // resolver and cost ~10 us an event (bench/README, Profiling 52). INVALID_ARGUMENT for a
  // string that is not UTF-8.
  static absl::StatusOr<std::string> Json(const ess::v1::SyncAudit& event);

  uint64_t failures() const { return failures_.load(); }

 private:
  amqp::Publisher* publisher_;
  std::string exchange_;
  std::atomic<uint64_t> failures_{0};
};

}  // namespace ess

#endif  // ESS_COMMON_AUDIT_H_
