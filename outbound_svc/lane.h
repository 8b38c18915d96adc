// The outbound lane: bus -> partner.
//
// For each partner with an outbound route the lane consumes its durable queue (manual ack,
// bounded prefetch), maps each event through the partner's declarative mapping, pushes it
// through the partner's adapter, records the outcome in the replay store, and only then settles
// the delivery. Delivery contract, per message:
//
//   delivered (or dry-run)   record DELIVERED (DRY_RUN) -> ack
//   retryable failure        record FAILED -> moved to the delay queue "<queue>.retry.<ms>ms"
//                            (TTL, dead-lettered back to the queue), waiting a full-jitter
//                            backoff or the partner's Retry-After -> ack; once max_attempts or
//                            max_age is spent: parked as below. Where the adapter says the push
//                            may have landed all the same (an SFTP upload whose answer was
//                            lost), the message carries that ("x-ess-maybe-delivered-as") to
//                            the adapter with its retry, which looks there first; so does one
//                            that fails so while the lane stops (not requeued as it came). The
//                            FAILED or DEAD record keeps it too, for an ops replay, and for a
//                            redelivery of a message whose move to the delay queue failed
//   permanent failure,       record DEAD -> moved to "<queue>.parked" with the reason
//   not JSON, not mappable   ("x-ess-reason", cut to 2 KiB on a character boundary and marked
//                            "... [cut: N bytes more]") and the attempt history ("x-ess-history",
//                            its last 2 KiB, each attempt's error cut to 512 bytes) -> ack
//   record not stored        reject with requeue, and consumption pauses until the store
//                            answers again and takes this lane's records (its token's role):
//                            no ack without its record (and no move to a delay or parked
//                            queue). Only a record the store refused for good, alone
//                            (INVALID_ARGUMENT: never with the checks the lane makes first),
//                            does not hold anything back: a delivery is acked and counted
//                            unrecorded, a retry or park moves on
//   event over               parked before any push, recorded DEAD without its payload (the
//   max_event_bytes          parked message keeps it)
//   redelivered, and the     ack without a second push (unless it carries "x-ess-replay")
//   store shows it delivered
//   with the same payload
//   redelivered, and the     parked again without a second push (same exception)
//   store shows it DEAD
//   with the same payload
//   sent later in a unit     before the send, the adapter notes where it goes (SendNote): the
//   (a CSV file)             lane records it RECEIVED with that place as maybe_delivered_as,
//                            and the adapter sends once every note is stored (a note not stored
//                            fails the push, retryably). Redelivered with such a record (the
//                            lane died during the send), it carries the place to the adapter as
//                            a retry does
//   move not published       reject with requeue, and the partner's queue pauses (250 ms,
//   (publisher down, queue   doubling to 5 s while moves keep failing; and until the publisher
//   gone, broker nack)       is connected again) rather than taking it back in a loop
//   move too large for a     checked before the publish (amqp::CheckPublishable, with the frame
//   frame (the event's own   the publisher negotiated), since it concerns that message alone:
//   headers nearly fill it)  the lane's own headers give way (x-ess-history dropped, x-ess-reason
//                            cut to 256 bytes, then dropped: the record keeps the reason) and the
//                            move goes on as decided, confirmed before the ack. Only an event
//                            whose own headers leave no room even then is requeued and held as a
//                            failed move (never acked without its move)
//   delivered, and the       each confirmation (e.g. the SlotConfirmed a SOAP answer maps to)
//   answer confirms events   is published to the events exchange with confirm, then recorded
//                            (inbound, PUBLISHED) in the same Record call as the delivery,
//                            after it, before the ack; if that publish fails (unroutable, the
//                            publisher down) the delivery is a retryable failure as above
//                            (FAILED "the partner accepted it but its confirmation was not
//                            published", the delay queue, parked once its attempts are spent)
//
// Moves to another queue are publish-with-confirm first, ack second, so a crash in between
// duplicates a message and never loses one; a duplicate carries the same Idempotency-Key. The
// lane has two broker connections: its consumer, which only consumes and settles, and its
// publisher, for moves and confirmations. During a broker resource alarm (memory, disk) the
// broker stops reading connections that publish: deliveries go on being pushed and acked, and
// moves and confirmations wait, their deliveries unacked, until the alarm clears.
//
// Many pushes are in flight at once: up to prefetch per queue and at most max_in_flight per
// partner (the rest wait in the lane, in order). A partner whose recent pushes mostly failed
// (circuit_breaker) has its queue paused (basic.cancel: its messages wait in RabbitMQ), then
// gets single probe pushes until one succeeds; other partners are unaffected. A probe is
// consumed with a prefetch of 1, so a failed one returns no other delivery to the queue: with
// quorum queues, whose x-delivery-limit counts every return, a long outage costs each waiting
// message one return (when the breaker opened), not one per probe.
#ifndef ESS_OUTBOUND_SVC_LANE_H_
#define ESS_OUTBOUND_SVC_LANE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "adapters/adapter.h"
#include "common/amqp.h"
#include "common/audit.h"
#include "common/bus_headers.h"
#include "common/mapping.h"
#include "common/ops_endpoints.h"
#include "common/queue_names.h"
#include "common/replay_client.h"
#include "ess/v1/config.pb.h"
#include "prometheus/metric_family.h"

namespace ess::outbound {

// Header names the lane reads and writes on bus messages.
inline constexpr char kAttemptHeader[] = "x-ess-attempt";
inline constexpr char kFirstAttemptHeader[] = "x-ess-first-attempt-ms";  // Unix ms
inline constexpr char kReasonHeader[] = "x-ess-reason";
inline constexpr char kHistoryHeader[] = "x-ess-history";
using bus::kMaybeDeliveredAsHeader;
using bus::kPartnerHeader;
using bus::kReplayHeader;  // an explicit replay: push again

// The delay queues of a retry policy and the queue names (common/queue_names.h).
using queues::ParkedQueueName;
using queues::RetryDelaysMs;
using queues::RetryQueueName;

// Queues (work, retry levels, parked) the lane needs for these partners.
amqp::Topology OutboundTopology(const ess::v1::HubConfig& config);

// The lane's start error, with what to do when the broker refused a queue for its arguments: a
// queue declared classic cannot be declared quorum (nor the other way round), nor with another
// delivery limit, so a change of bus.quorum_queues or bus.delivery_limit needs the old work and
// parked queues drained and deleted first. Any other error comes back as it is.
absl::Status ExplainStartError(absl::Status start, const ess::v1::BusConfig& bus);

class Lane {
 public:
  struct Partner {
    std::string name;
    ess::v1::OutboundRoute route;
    Mapper mapper;
    std::unique_ptr<adapters::Adapter> adapter;
  };
  struct Options {
    amqp::ConnectionOptions connection;
    uint16_t prefetch = 256;
    bool dry_run = false;
    // While the replay store is unreachable, how often it is probed.
    absl::Duration store_probe_interval = absl::Milliseconds(500);
    // Where synchronous confirmations are published.
    std::string events_exchange = "events";
    // A larger event is parked before any push, recorded without its payload
    // (outbound.max_event_bytes).
    size_t max_event_bytes = 1 << 20;
  };
  struct Counters {
    std::atomic<uint64_t> received{0}, duplicates{0}, requeued{0}, breaker_opened{0},
        store_pauses{0};
    // Deliveries acked without their record: the store refused the record itself for good
    // (INVALID_ARGUMENT), so that requeueing it would only push it to the partner again.
    std::atomic<uint64_t> unrecorded{0};
  };
  // Messages settled, all partners together (each partner counts its own, for the metrics).
  struct Settled {
    uint64_t delivered = 0, dry_run = 0, retried = 0, parked = 0;
  };

  // `recorder` and `audit` (may be null) must outlive the lane.
  Lane(Options options, amqp::Topology topology, std::vector<Partner> partners,
       ReplayRecorder* recorder, AuditSink* audit = nullptr);
  ~Lane();

  // Connects (publisher, then consumer) and starts consuming every partner's queue.
  absl::Status Start();
  // Graceful stop: stops consuming, lets what is in flight finish (pushed, recorded, acked) for
  // up to `deadline`, then closes; anything unfinished returns to its queue.
  void Shutdown(absl::Duration deadline);

  const Counters& counters() const { return counters_; }
  Settled settled() const;
  // Messages taken from the bus and not yet settled.
  int64_t in_flight() const { return live_.load(); }
  bool paused_for_store() const { return store_paused_.load(); }
  // What keeps the lane from doing its job now, for GET /readyz (common/ops_endpoints.h): the
  // consumer's connection down ("consumer"), consumption paused because the replay store does
  // not take the lane's records ("store"), the publisher of moves and confirmations down
  // ("publisher"), or the broker blocking that publisher with a resource alarm ("broker_alarm",
  // the broker's reason). Empty when ready. From cached state only, never the network.
  // Thread-safe.
  ops::NotReady NotReady() const;
  // The lane's Prometheus metrics now (per partner: outcomes, success ratio, breaker; the
  // lane's intake; its replay recorder's calls). Thread-safe.
  std::vector<prometheus::MetricFamily> Metrics() const;

 private:
  struct PartnerState;
  struct Job;

  void Handle(amqp::Delivery delivery);
  // Whether the job's correlation id, event type and message id pass ids::Check (they go into
  // AMQP properties, partner requests' headers, the store and the logs): the first failure.
  // Each failing id is replaced by a stand-in the store and the logs can hold (made UTF-8, then
  // ids::Fit), under which the event is parked.
  static absl::Status UsableIds(Job& job);
  void Enqueue(PartnerState& p, std::unique_ptr<Job> job);
  // Dispatches waiting jobs as far as the partner's limit and breaker allow, or returns them
  // to the broker while the partner or the store is paused.
  void Pump(PartnerState& p);
  void Dispatch(PartnerState& p, std::unique_ptr<Job> job);
  void OnPushed(PartnerState& p, std::unique_ptr<Job> job, adapters::PushResult result);
  // Records a delivered (or dry-run) job, with the confirmations it published after it in the
  // same Record call, then acks it.
  void Complete(PartnerState& p, std::unique_ptr<Job> job, adapters::PushResult result);
  // Publishes the confirmations of a delivered job, then completes it.
  void Confirm(PartnerState& p, std::unique_ptr<Job> job, adapters::PushResult result);
  void Retry(PartnerState& p, std::unique_ptr<Job> job, const absl::Status& status,
             absl::Duration retry_after);
  // Records the job as DEAD and moves it to the parked queue.
  void Park(PartnerState& p, std::unique_ptr<Job> job, const absl::Status& reason);
  void Record(PartnerState& p, Job& job, ess::v1::MessageStatus status, std::string rendered,
              const absl::Status& error, ReplayRecorder::Done done);
  // adapters::SendNote for the job: records it RECEIVED with `where` as its maybe_delivered_as,
  // then runs `done` with the store's answer.
  void NoteBeforeSend(PartnerState& p, Job& job, std::string where, ReplayRecorder::Done done);
  ess::v1::MessageRecord MakeRecord(PartnerState& p, Job& job, ess::v1::MessageStatus status,
                                    std::string rendered, const absl::Status& error);
  ess::v1::SyncAudit AuditEvent(PartnerState& p, const Job& job, ess::v1::MessageStatus status,
                                const absl::Status& error) const;
  void Audit(PartnerState& p, const Job& job, ess::v1::MessageStatus status,
             const absl::Status& error);
  // Audits a delivery and acks it: at once while the audit publisher keeps up, else once its
  // audit event is settled (AuditSink::EmitOrWait), so that the prefetch window holds the lane
  // back rather than audit events being refused.
  void AuditAndAck(PartnerState& p, std::unique_ptr<Job> job, ess::v1::MessageStatus status);
  // Frees the push's slot and, when the outcome `counts` (not a dry run), keeps the breaker's
  // books; true if the breaker just opened.
  bool NoteOutcome(PartnerState& p, bool failed, bool counts);
  void OpenBreaker(PartnerState& p);
  void PauseForStore(const absl::Status& why);
  // No ack without its record: when `recorded` says the store is unreachable, requeues the job
  // and pauses consumption until the store answers (true); otherwise does nothing (false).
  bool RequeuedForStore(Job& job, const absl::Status& recorded);
  void Supervise();

  // Settlement; each ends the job's life in the lane.
  void Ack(Job& job);
  void Requeue(Job& job);
  // Publishes `message` to `queue` with confirm, then acks the job's delivery; requeues it if
  // the publish fails, and holds the partner's moves (HoldForMoves).
  void MoveAndAck(PartnerState& p, Job& job, std::string queue, amqp::Message message);
  // A move failed (the publisher is down, the broker refused it, the queue is gone): its
  // delivery is back in the queue, where it comes straight back. So the partner's queue pauses
  // for a while (doubling while moves keep failing) and until the publisher is connected, rather
  // than pushing, recording and requeueing the same messages in a loop.
  void HoldForMoves(PartnerState& p, const absl::Status& why);
  // Resumes consuming the partner's queue as its breaker says (the full prefetch when closed,
  // one probe when half-open), unless the lane is draining, paused for the store, or holding
  // the partner's moves; true if it resumed. Called with p.mu held.
  bool ResumeLocked(PartnerState& p);

  Options options_;
  ReplayRecorder* recorder_;
  // Moves (retry, park) and confirmations; holds them while the broker blocks publishing.
  std::unique_ptr<amqp::Publisher> publisher_;
  AuditSink* audit_;
  std::vector<std::unique_ptr<PartnerState>> partners_;
  absl::flat_hash_map<std::string, PartnerState*> by_queue_;
  std::unique_ptr<amqp::Consumer> consumer_;
  Counters counters_;
  std::atomic<int64_t> live_{0};
  std::atomic<bool> store_paused_{false};
  std::atomic<bool> draining_{false};

  absl::Mutex supervisor_mu_;
  bool stop_supervisor_ ABSL_GUARDED_BY(supervisor_mu_) = false;
  std::thread supervisor_;
};

}  // namespace ess::outbound

#endif  // ESS_OUTBOUND_SVC_LANE_H_
