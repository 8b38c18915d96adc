// Audit events: one SyncAudit (proto/ess/v1/event.proto) per sync outcome, published as JSON to
// the audit exchange (bus.audit_exchange; off when empty). They carry ids, outcome and timing,
// never payloads, so they hold no PII.
//
// Publishing uses the lane's Publisher: persistent, mandatory, confirmed. An audit event that
// cannot be published is logged and counted; it never fails the sync it describes. A caller
// that must not outrun the broker's confirms uses EmitOrWait (the outbound lane's acks).
//
// With batch_max > 1 (bus.audit_batch_max) the events go out as SyncAuditBatch messages of up
// to batch_max events each. A batch never waits for company: an event is published at once
// when no batch is unconfirmed, and the events that come while one is go out together when its
// confirm (or failure) arrives, or as soon as batch_max of them are waiting. At a low rate every
// batch holds one event; at a high rate one publish and confirm carries many, which is what
// the broker charges for (bench/README, Profiling 53).
//
//   AuditSink audit(&publisher, "audit", /*batch_max=*/0);
//   audit.Emit(record);  // from any thread
#ifndef ESS_COMMON_AUDIT_H_
#define ESS_COMMON_AUDIT_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/amqp.h"
#include "ess/v1/event.pb.h"
#include "prometheus/metric_family.h"

namespace ess {

class AuditSink {
 public:
  // Unsettled events beyond which EmitOrWait's callers wait: half the publisher's default
  // max_in_flight, past which it refuses publishes.
  static constexpr int64_t kMaxUnsettled = 4096;

  // `publisher` may be null or `exchange` empty: then Emit does nothing. `batch_max` 0 or 1:
  // one SyncAudit message per event; more: SyncAuditBatch messages of up to that many. The
  // publisher's callbacks use the sink: stop the publisher (Drain first) before the sink goes.
  AuditSink(amqp::Publisher* publisher, std::string exchange, uint32_t batch_max = 0,
            int64_t max_unsettled = kMaxUnsettled)
      : publisher_(publisher),
        exchange_(std::move(exchange)),
        batch_max_(std::max<uint32_t>(batch_max, 1)),
        max_unsettled_(max_unsettled) {}

  bool enabled() const { return publisher_ != nullptr && !exchange_.empty(); }

  // Thread-safe.
  void Emit(const ess::v1::SyncAudit& event);
  // As Emit(event), and `done` runs exactly once: with the outcome of the publish that carried
  // the event (see Publisher::Done), or OK at once when the sink is off. Lets a caller that
  // emits many events at a time bound how many are unconfirmed.
  void Emit(const ess::v1::SyncAudit& event, amqp::Publisher::Done done);
  // As Emit(event), for a caller that holds what the event describes until it may go on (the
  // outbound lane holds the delivery's ack): `proceed` runs at once, on this thread, while
  // fewer than max_unsettled events are unsettled, else once this event is settled. A caller
  // that outruns the broker's confirms is so held back by its own window (the lane's prefetch)
  // instead of its events being refused by a publisher with no room left.
  void EmitOrWait(const ess::v1::SyncAudit& event, absl::AnyInvocable<void() &&> proceed);

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
  // The JSON of a SyncAuditBatch of these events' documents (each one Json's), as protobuf's
  // JSON mapping writes it: {"events":[...]}.
  static std::string BatchJson(const std::vector<std::string>& documents);

  // Waits until every event emitted so far is settled (its done ran: confirmed or failed), at
  // most `timeout`; true when all are, else logs how many are not. For a clean stop, after the last
  // Emit and before the publisher stops: a stopping publisher fails what is unconfirmed, and a
  // batch that has not gone out yet would never go.
  bool Drain(absl::Duration timeout);

  // Events that could not be published (each event of a failed batch counts).
  uint64_t failures() const { return failures_.load(); }
  // ess_audit_events_total{outcome="published"|"failed"} and ess_audit_messages_total (the
  // publishes that carried them); none when the sink is off.
  std::vector<prometheus::MetricFamily> Metrics() const;

 private:
  struct Pending {
    std::string json;
    std::string message_id;
    std::string correlation_id;
    amqp::Publisher::Done done;
  };

  // The first batch_max_ of queued_ (all when fewer); mu_ held.
  std::vector<Pending> TakeBatch() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Publishes `batch` as one SyncAuditBatch, or, without batches, its one event as a SyncAudit.
  void Publish(std::vector<Pending> batch);
  // A publish settled: each of its events' done, then what queued meanwhile goes out.
  void PublishSettled(std::vector<Pending> batch, const absl::Status& status);
  // Runs an event's done with its publish's outcome, counting and logging a failure.
  void Settle(const std::string& correlation_id, const absl::Status& status,
              amqp::Publisher::Done done);

  amqp::Publisher* publisher_;
  std::string exchange_;
  const uint32_t batch_max_;  // at least 1; above 1, SyncAuditBatch messages
  const int64_t max_unsettled_;
  std::atomic<uint64_t> failures_{0};
  std::atomic<uint64_t> published_{0};  // events confirmed
  std::atomic<uint64_t> messages_{0};   // publishes, settled or not
  absl::Mutex mu_;
  std::vector<Pending> queued_ ABSL_GUARDED_BY(mu_);  // waiting for the publishes in flight
  int publishes_in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // when 0, queued_ is empty
  int64_t unsettled_ ABSL_GUARDED_BY(mu_) = 0;        // emitted, done not yet run
};

}  // namespace ess

#endif  // ESS_COMMON_AUDIT_H_
