// Ops replay (ReplayService.Replay): sends recorded messages through the hub again.
//
//   outbound record  its bus event (the recorded payload) -> the partner's queue, with
//                    "x-ess-replay" so that the outbound lane pushes it even if it was delivered
//                    before; the record becomes RECEIVED, and the lane records what follows
//   inbound record   its internal event (the recorded rendering) -> the events exchange, with
//                    "x-ess-partner" and "x-ess-replay"; the record becomes PUBLISHED
//
// Publishes are persistent, mandatory and confirmed, all in flight at once. A record's status
// changes only after its confirm, and only if nothing wrote the record since it was read
// (ReplayStore::MarkReplayed): a lane that already recorded the outcome of the replayed push
// keeps it. A crash between the confirm and the mark leaves the record as it was and the
// message on its way; the lane's record follows. A confirm that comes after the call answered
// (UNCONFIRMED) is marked, audited and logged then, by the Replayer's own thread.
//
//   Replayer replayer(Replayer::FromConfig(config), publish, &audit);
//   ess::v1::ReplayResponse r = replayer.Replay(candidates, {.requested_by = "alice"}, store);
#ifndef ESS_REPLAY_SVC_REPLAYER_H_
#define ESS_REPLAY_SVC_REPLAYER_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "common/amqp.h"
#include "common/audit.h"
#include "common/bus_headers.h"
#include "ess/v1/config.pb.h"
#include "ess/v1/replay.pb.h"
#include "replay_svc/replay_store.h"

namespace ess::replay {

class Replayer {
 public:
  // Publishes persistent and mandatory, and calls `done` exactly once with the broker's answer:
  // amqp::Publisher::Publish's contract.
  using PublishFn = absl::AnyInvocable<void(std::string exchange, std::string routing_key,
                                            amqp::Message message, amqp::Publisher::Done done)>;

  struct Options {
    // Where inbound records' events go (bus.events_exchange).
    std::string events_exchange = "events";
    // Partner name -> the queue its outbound lane consumes (partners[].outbound.queue).
    absl::flat_hash_map<std::string, std::string> outbound_queues;
    // Partners with an inbound route (partners[].inbound: a webhook_path or an SFTP poll); an
    // inbound record of any other partner is skipped.
    absl::flat_hash_set<std::string> inbound_partners;
    // How long one call waits for its confirms; a publish unanswered by then is FAILED.
    absl::Duration confirm_timeout = absl::Seconds(30);
    // The inbound lane's claim lease (inbound.claim_lease_ms): an inbound RECEIVED record
    // updated within it is a claim being published.
    absl::Duration inbound_claim_lease = absl::Seconds(35);
    // The clock that records' updated_at came from (the store's); absl::Now when unset.
    std::function<absl::Time()> clock;
  };

  // A selected record: its key, and the record as read (nullopt when the key has none).
  struct Candidate {
    ess::v1::RecordKey key;
    std::optional<ess::v1::MessageRecord> record;
  };

  // What one call asks for.
  struct Request {
    // Say what would be done; publish and change nothing.
    bool dry_run = false;
    // Who asks, and why: in the audit events, the log and the x-ess-replay header (who).
    std::string requested_by;
    std::string reason;
    // Replay records in flight too (see InFlight); by default they are skipped.
    bool include_in_flight = false;
    // Confirms are waited for until this time or confirm_timeout, whichever comes first (the
    // caller's deadline, less a margin to answer in).
    absl::Time deadline = absl::InfiniteFuture();
  };

  // The events exchange, every partner's outbound queue and the partners with an inbound route
  // from the hub config.
  static Options FromConfig(const ess::v1::HubConfig& config);

  // `audit` may be null (no audit events). Both must outlive the Replayer.
  Replayer(Options options, PublishFn publish, AuditSink* audit);
  ~Replayer();  // Stop()
  Replayer(const Replayer&) = delete;
  Replayer& operator=(const Replayer&) = delete;

  // Waits up to `timeout` for the confirms of every publish of past calls, those a call gave up
  // waiting for included (they are marked at Stop()); false, and logged, if some are still out.
  // For a clean stop: a replay confirmed after it is published but never marked.
  bool Drain(absl::Duration timeout);
  // Marks the late confirms already in, then stops marking: a confirm after it is only logged.
  // Call it before the stores of past calls go away. Idempotent.
  void Stop();

  // Replays `candidates` in order (only says what it would do when request.dry_run), marks
  // the replayed records in `store`, and returns one ReplayedRecord per candidate with the
  // counts; next_page_token is left to the caller. Blocks until every publish is answered or
  // confirm_timeout has passed. One call at a time. `store` must outlive Stop() (late marks).
  ess::v1::ReplayResponse Replay(const std::vector<Candidate>& candidates, const Request& request,
                                 ReplayStore& store);

 private:
  struct Target {
    std::string exchange;
    std::string routing_key;
    std::string description;  // "queue visit_updates", "exchange events"
  };
  // Where `record` goes, or why it cannot be replayed (the error of a SKIPPED outcome).
  absl::StatusOr<Target> TargetOf(const ess::v1::MessageRecord& record) const;
  // Why `record` is in flight (a replay would send it a second time), or nullopt:
  //   outbound RECEIVED  the lane, or an earlier replay, has it on its way
  //   outbound FAILED    its next attempt waits in a retry queue
  //   inbound RECEIVED   updated within the claim lease: the inbound lane is publishing it (past
  //                      the lease nobody holds the claim: its publish may never have happened)
  // An inbound FAILED record was given back unpublished: never in flight.
  std::optional<std::string> InFlight(const ess::v1::MessageRecord& record) const;

  // A confirmed replay: its mark, and what its audit event and log line say.
  struct Confirmed {
    ess::v1::MessageRecord record;
    ReplayMark mark;
    std::string target;
    std::string requested_by;
    std::string reason;
    absl::Time started;
    ReplayStore* store = nullptr;
  };
  // The thread that settles confirms which came after their call answered.
  class LateMarks;
  struct Confirms;

  // Marks `confirmed` in their store, then audits and logs each.
  void Settle(std::vector<Confirmed> confirmed, bool late);

  const Options options_;
  PublishFn publish_;
  AuditSink* const audit_;
  std::shared_ptr<LateMarks> late_;
};

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_REPLAYER_H_
