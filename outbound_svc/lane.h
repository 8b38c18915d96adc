// The outbound lane: bus -> partner.
//
// For each partner with an outbound route the lane consumes its durable queue (manual ack,
// bounded prefetch), maps each event through the partner's declarative mapping, pushes it
// through the partner's adapter, records the outcome in the replay store, and only then settles
// the delivery. Delivery contract, per message:
//
//   delivered (or dry-run)   record DELIVERED (DRY_RUN) -> ack
//   retryable failure        record FAILED -> moved to "<queue>.retry.<ms>ms" (TTL, dead-lettered
//                            back to the queue) -> ack; after max_attempts: parked as below
//   permanent failure,       record DEAD -> moved to "<queue>.parked" with the reason in the
//   not JSON, not mappable   "x-ess-reason" header -> ack
//   record failed            reject with requeue: the broker redelivers it (at-least-once)
//
// Moves to another queue are publish-with-confirm first, ack second, so a crash in between
// duplicates a message and never loses one. Many pushes are in flight at once: up to prefetch
// per queue, and at most max_in_flight per partner (the rest wait in the lane, in order).
#ifndef ESS_OUTBOUND_SVC_LANE_H_
#define ESS_OUTBOUND_SVC_LANE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "adapters/adapter.h"
#include "common/amqp.h"
#include "common/mapping.h"
#include "common/replay_client.h"
#include "ess/v1/config.pb.h"

namespace ess::outbound {

// Header names the lane reads and writes on bus messages.
inline constexpr char kAttemptHeader[] = "x-ess-attempt";
inline constexpr char kReasonHeader[] = "x-ess-reason";
inline constexpr char kPartnerHeader[] = "x-ess-partner";

// The delay queues of a retry policy, shortest first: initial, 2*initial, ... capped at max.
std::vector<uint32_t> RetryDelaysMs(const ess::v1::RetryPolicy& policy);
std::string RetryQueueName(const std::string& queue, uint32_t delay_ms);
std::string ParkedQueueName(const std::string& queue);

// Queues (work, retry levels, parked) the lane needs for these partners.
amqp::Topology OutboundTopology(const ess::v1::HubConfig& config);

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
  };
  struct Counters {
    std::atomic<uint64_t> received{0}, delivered{0}, dry_run{0}, retried{0}, parked{0},
        record_failures{0};
  };

  // `recorder` must outlive the lane.
  Lane(Options options, amqp::Topology topology, std::vector<Partner> partners,
       ReplayRecorder* recorder);
  ~Lane();

  // Connects and starts consuming every partner's queue.
  absl::Status Start();
  // Stops consuming; unsettled deliveries return to their queues.
  void Stop();

  const Counters& counters() const { return counters_; }

 private:
  struct PartnerState;
  struct Job;

  void Handle(amqp::Delivery delivery);
  void Dispatch(PartnerState& p, std::unique_ptr<Job> job);
  void OnPushed(PartnerState& p, std::unique_ptr<Job> job, adapters::PushResult result);
  void Retry(PartnerState& p, std::unique_ptr<Job> job, const absl::Status& status);
  // Records the job as DEAD and moves it to the parked queue.
  void Park(PartnerState& p, std::unique_ptr<Job> job, const absl::Status& reason);
  void Record(PartnerState& p, Job& job, ess::v1::MessageStatus status, std::string rendered,
              const absl::Status& error, ReplayRecorder::Done done);
  void ReleaseSlot(PartnerState& p);

  Options options_;
  bool dry_run_;
  ReplayRecorder* recorder_;
  std::vector<std::unique_ptr<PartnerState>> partners_;
  absl::flat_hash_map<std::string, PartnerState*> by_queue_;
  std::unique_ptr<amqp::Consumer> consumer_;
  Counters counters_;
};

}  // namespace ess::outbound

#endif  // ESS_OUTBOUND_SVC_LANE_H_
