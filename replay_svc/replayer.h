// Ops replay (ReplayService.Replay): sends recorded messages through the hub again.
//
//   outbound record  its bus event (the recorded payload) -> the partner's queue, with
//                    "x-ess-replay" so that the outbound lane pushes it even if it was delivered
//                    before; the record becomes RECEIVED, and the lane records what follows
//   inbound record   its internal event (the recorded rendering) -> the events exchange, with
//                    "x-ess-partner" and "x-ess-replay"; the record becomes PUBLISHED
//
// Each record is claimed in the store before it is published: one compare-and-set for the call
// (ReplayStore::MarkReplayed) keeps its status and sets its error to a claim
// (ReplayClaimError), if nothing wrote the record since it was read. Of two replays of the same
// record at once, on one replica or on two over one database, only the one whose claim changed
// the record publishes it; the other skips it. While the claim holds (Options::claim_lease since
// it was written) every other replay skips the record as in flight. Publishes are persistent,
// mandatory and confirmed, all in flight at once. A confirmed record takes its replay's status,
// and a refused one gets back its error, each only if it still holds the claim: a lane that
// already recorded the outcome of the replayed push keeps it. A confirm that comes after the call
// answered (UNCONFIRMED) is marked, audited and logged then, by the Replayer's own thread.
//
// Crashes: killed between the claim and the publish, the record keeps the claim though nothing
// was published; past the lease a replay takes it again (or, sooner, one with
// include_in_flight). Killed between the confirm and the mark (or the confirm never came while
// the Replayer ran), the message is on its way and the record keeps the claim: a replay within
// the lease skips it, one after the lease sends it a second time (the lane's record, when it
// follows the message, ends the claim first). Before claims, a replay run in that window, or
// at the same time on another replica, sent the records twice.
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
    // How long a replay's claim on a record holds it (replay.claim_lease_ms): longer than
    // confirm_timeout, so that a claim outlives the wait for its confirm.
    absl::Duration claim_lease = absl::Seconds(60);
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

  // Replays `candidates` in order (only says what it would do when request.dry_run, and writes
  // nothing), claims them in `store` before it publishes them and marks them once confirmed,
  // and returns one ReplayedRecord per candidate with the counts (a candidate whose claim found
  // the record changed since it was read is SKIPPED); next_page_token is left to the caller. Blocks
  // until every publish is answered or confirm_timeout has passed. One call at a time. `store` must
  // outlive Stop() (late marks).
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
  //   a replay's claim   written within claim_lease: a replay publishes it (past the lease the
  //                      record is judged by its status, as if it had no claim)
  //   outbound RECEIVED  the lane, or an earlier replay, has it on its way
  //   outbound FAILED    its next attempt waits in a retry queue
  //   inbound RECEIVED   updated within the claim lease: the inbound lane is publishing it (past
  //                      the lease nobody holds the claim: its publish may never have happened)
  // An inbound FAILED record was given back unpublished: never in flight.
  std::optional<std::string> InFlight(const ess::v1::MessageRecord& record) const;

  // A claimed record whose publish was answered: what settles it, and what its audit event and
  // log line say.
  struct Settlement {
    ess::v1::MessageRecord record;  // as read
    ess::v1::RecordKey key;
    int64_t claimed_at_micros = 0;  // the updated_at its claim wrote
    bool confirmed = false;         // false: refused, its claim is given back
    std::string failure;            // why it was refused
    std::string target;
    std::string requested_by;
    std::string reason;
    absl::Time started;
    ReplayStore* store = nullptr;
  };
  // The thread that settles confirms which came after their call answered.
  class LateMarks;
  struct Confirms;

  // Marks the confirmed of `answered` in their store and gives back the claims of the others,
  // then audits and logs the confirmed ones.
  void Settle(std::vector<Settlement> answered, bool late);

  const Options options_;
  PublishFn publish_;
  AuditSink* const audit_;
  std::shared_ptr<LateMarks> late_;
};

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_REPLAYER_H_
