#include "replay_svc/replayer.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <thread>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/sv.h"
#include "common/thread_name.h"
#include "replay_svc/records.h"

namespace ess::replay {
namespace {

using ess::v1::MessageRecord;
using ess::v1::ReplayedRecord;

}  // namespace

class Replayer::LateMarks {
 public:
  explicit LateMarks(Replayer* replayer) : replayer_(replayer) {
    thread_ = std::thread([this] {
      NameThisThread("replay-late");
      Run();
    });
  }

  // Any thread. False once stopped.
  bool Push(Settlement c) {
    absl::MutexLock lock(&mu_);
    if (stopping_) return false;
    queue_.push_back(std::move(c));
    return true;
  }

  // Around each publish: Sent before it, Answered once its confirm (or failure) was handled.
  void Sent() {
    absl::MutexLock lock(&mu_);
    ++unanswered_;
  }
  void Answered() {
    absl::MutexLock lock(&mu_);
    --unanswered_;
  }

  // Waits up to `timeout` for every publish to be answered; false (and logged) if some are not.
  bool Drain(absl::Duration timeout) {
    size_t left;
    {
      absl::MutexLock lock(&mu_);
      auto answered = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return unanswered_ == 0; };
      if (mu_.AwaitWithTimeout(absl::Condition(&answered), timeout)) return true;
      left = unanswered_;
    }
    ess::log::Warn("",
                   "replays still unconfirmed; their records keep their claims until the claim "
                   "lease passes",
                   {{"publishes", absl::StrCat(left)}, {"waited", absl::FormatDuration(timeout)}});
    return false;
  }

  // Settles what is queued, then joins. Idempotent.
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Run() {
    for (;;) {
      std::vector<Settlement> batch;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]()
                         ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_ || !queue_.empty(); };
        mu_.Await(absl::Condition(&ready));
        if (queue_.empty()) return;  // stopping
        batch.assign(std::make_move_iterator(queue_.begin()),
                     std::make_move_iterator(queue_.end()));
        queue_.clear();
      }
      replayer_->Settle(std::move(batch), /*late=*/true);
    }
  }

  Replayer* const replayer_;
  absl::Mutex mu_;
  std::deque<Settlement> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  size_t unanswered_ ABSL_GUARDED_BY(mu_) = 0;  // publishes of every call
  std::thread thread_;
};

// The confirms of one call. Shared with the publish callbacks, which may outlive the call when
// it gave up waiting: from then on (`closed`) a confirm goes to the late marks with what
// `late` holds for it.
struct Replayer::Confirms {
  absl::Mutex mu;
  std::vector<std::optional<absl::Status>> results ABSL_GUARDED_BY(mu);
  size_t pending ABSL_GUARDED_BY(mu) = 0;
  bool closed ABSL_GUARDED_BY(mu) = false;
  std::vector<std::optional<Settlement>> late ABSL_GUARDED_BY(mu);
};

Replayer::Options Replayer::FromConfig(const ess::v1::HubConfig& config) {
  Options options;
  if (!config.bus().events_exchange().empty()) {
    options.events_exchange = config.bus().events_exchange();
  }
  if (config.replay().claim_lease_ms() > 0) {
    options.claim_lease = absl::Milliseconds(config.replay().claim_lease_ms());
  }
  if (config.inbound().claim_lease_ms() > 0) {
    options.inbound_claim_lease = absl::Milliseconds(config.inbound().claim_lease_ms());
  }
  for (const ess::v1::PartnerConfig& partner : config.partners()) {
    if (partner.has_outbound() && !partner.outbound().queue().empty()) {
      options.outbound_queues[partner.name()] = partner.outbound().queue();
    }
    if (partner.has_inbound() &&
        (!partner.inbound().webhook_path().empty() || partner.inbound().has_poll())) {
      options.inbound_partners.insert(partner.name());
    }
  }
  return options;
}

Replayer::Replayer(Options options, PublishFn publish, AuditSink* audit)
    : options_(std::move(options)),
      publish_(std::move(publish)),
      audit_(audit),
      late_(std::make_shared<LateMarks>(this)) {}

Replayer::~Replayer() { Stop(); }

bool Replayer::Drain(absl::Duration timeout) { return late_->Drain(timeout); }

void Replayer::Stop() { late_->Stop(); }

absl::StatusOr<Replayer::Target> Replayer::TargetOf(const MessageRecord& record) const {
  if (record.direction() == ess::v1::DIRECTION_OUTBOUND) {
    auto it = options_.outbound_queues.find(record.partner());
    if (it == options_.outbound_queues.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("partner ", record.partner(), " has no outbound route in the hub config"));
    }
    if (record.payload().empty()) {
      return absl::FailedPreconditionError("no bus event recorded (empty payload)");
    }
    return Target{.exchange = "",
                  .routing_key = it->second,
                  .description = absl::StrCat("queue ", it->second)};
  }
  if (!options_.inbound_partners.contains(record.partner())) {
    return absl::FailedPreconditionError(
        absl::StrCat("partner ", record.partner(), " has no inbound route in the hub config"));
  }
  if (record.event_type().empty()) {
    return absl::FailedPreconditionError("not an event (a pulled file's marker has no type)");
  }
  if (record.rendered().empty()) {
    return absl::FailedPreconditionError("no internal event recorded (empty rendering)");
  }
  return Target{.exchange = options_.events_exchange,
                .routing_key = "",
                .description = absl::StrCat("exchange ", options_.events_exchange)};
}

std::optional<std::string> Replayer::InFlight(const MessageRecord& record) const {
  constexpr absl::string_view kOverride = "; include_in_flight to replay it all the same";
  const absl::Time now = options_.clock ? options_.clock() : absl::Now();
  const absl::Time updated = absl::FromUnixMicros(ToUnixMicros(record.updated_at()).value_or(0));
  if (IsReplayClaim(record) && now - updated < options_.claim_lease) {
    return absl::StrCat("in flight: claimed ", absl::FormatDuration(now - updated),
                        " ago by a replay (of this replica or another) that publishes it (lease ",
                        absl::FormatDuration(options_.claim_lease), ")", kOverride);
  }
  if (record.direction() == ess::v1::DIRECTION_OUTBOUND) {
    if (record.status() == ess::v1::MESSAGE_STATUS_RECEIVED) {
      return absl::StrCat("in flight: RECEIVED, the outbound lane or an earlier replay has it",
                          kOverride);
    }
    if (record.status() == ess::v1::MESSAGE_STATUS_FAILED) {
      return absl::StrCat("in flight: FAILED, its next attempt waits in a retry queue", kOverride);
    }
    return std::nullopt;
  }
  if (record.status() != ess::v1::MESSAGE_STATUS_RECEIVED) return std::nullopt;
  if (now - updated >= options_.inbound_claim_lease) return std::nullopt;
  return absl::StrCat("in flight: RECEIVED ", absl::FormatDuration(now - updated),
                      " ago, the inbound lane's claim is being published (lease ",
                      absl::FormatDuration(options_.inbound_claim_lease), ")", kOverride);
}

ess::v1::ReplayResponse Replayer::Replay(const std::vector<Candidate>& candidates,
                                         const Request& request, ReplayStore& store) {
  const absl::Time started = absl::Now();
  const std::string& who = request.requested_by;
  ess::v1::ReplayResponse response;
  response.mutable_records()->Reserve(static_cast<int>(candidates.size()));

  // Plan every candidate: what is replayable, where it goes.
  struct Planned {
    size_t i;
    Target target;
  };
  std::vector<Planned> planned;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const Candidate& c = candidates[i];
    ReplayedRecord* out = response.add_records();
    *out->mutable_key() = c.key;
    if (!c.record.has_value()) {
      out->set_outcome(ReplayedRecord::OUTCOME_SKIPPED);
      out->set_error("no such record");
      continue;
    }
    const MessageRecord& r = *c.record;
    out->set_correlation_id(r.correlation_id());
    out->set_event_type(r.event_type());
    out->set_previous_status(r.status());
    *out->mutable_previous_updated_at() = r.updated_at();
    if (!request.include_in_flight) {
      if (std::optional<std::string> in_flight = InFlight(r); in_flight.has_value()) {
        out->set_outcome(ReplayedRecord::OUTCOME_SKIPPED);
        out->set_error(*std::move(in_flight));
        continue;
      }
    }
    absl::StatusOr<Target> target = TargetOf(r);
    if (!target.ok()) {
      out->set_outcome(ReplayedRecord::OUTCOME_SKIPPED);
      out->set_error(std::string(target.status().message()));
      continue;
    }
    out->set_target(target->description);
    if (request.dry_run) {
      out->set_outcome(ReplayedRecord::OUTCOME_REPLAYED);
      continue;
    }
    planned.push_back({.i = i, .target = *std::move(target)});
  }

  // Claim the planned records, all in one compare-and-set: each keeps its status and takes the
  // claim as its error, if it still holds what was read. One that does not was taken by another
  // replay (of this replica or another) or written by a lane since: it is not published.
  std::vector<int64_t> claimed_at(candidates.size(), 0);
  std::vector<Planned> claimed;
  if (!planned.empty()) {
    std::vector<ReplayMark> claims;
    claims.reserve(planned.size());
    for (const Planned& p : planned) {
      const MessageRecord& r = *candidates[p.i].record;
      claims.push_back({.key = candidates[p.i].key,
                        .expected_status = r.status(),
                        .expected_updated_at_micros = ToUnixMicros(r.updated_at()).value_or(0),
                        .status = r.status(),
                        .error = ReplayClaimError(who, r.error())});
    }
    absl::StatusOr<MarkedReplays> marked = store.MarkReplayed(claims);
    for (size_t k = 0; k < planned.size(); ++k) {
      ReplayedRecord* out = response.mutable_records(static_cast<int>(planned[k].i));
      if (!marked.ok()) {
        out->set_outcome(ReplayedRecord::OUTCOME_FAILED);
        out->set_error(absl::StrCat("not claimed, not published: ", marked.status().ToString()));
        continue;
      }
      if (!marked->changed[k]) {
        out->set_outcome(ReplayedRecord::OUTCOME_SKIPPED);
        out->set_error(
            "changed since it was read: another replay (of this replica or another) or a lane "
            "has it; not published");
        continue;
      }
      claimed_at[planned[k].i] = marked->updated_at_micros;
      claimed.push_back(std::move(planned[k]));
    }
    if (!marked.ok()) {
      ess::log::Error(
          "", "replay not claimed; nothing published",
          {{"records", absl::StrCat(claims.size())}, {"error", ToStd(marked.status().message())}});
    }
  }

  // What settling record i says once its publish is answered.
  auto answered = [&](size_t i, bool confirmed) {
    return Settlement{.record = *candidates[i].record,
                      .key = candidates[i].key,
                      .claimed_at_micros = claimed_at[i],
                      .confirmed = confirmed,
                      .target = response.records(static_cast<int>(i)).target(),
                      .requested_by = who,
                      .reason = request.reason,
                      .started = started,
                      .store = &store};
  };

  // Publish the claimed records, all in flight at once.
  auto confirms = std::make_shared<Confirms>();
  {
    absl::MutexLock lock(&confirms->mu);
    confirms->results.resize(candidates.size());
    confirms->late.resize(candidates.size());
  }
  for (Planned& p : claimed) {
    const size_t i = p.i;
    const MessageRecord& r = *candidates[i].record;
    const bool outbound = r.direction() == ess::v1::DIRECTION_OUTBOUND;
    amqp::Message msg;
    msg.body = outbound ? r.payload() : r.rendered();
    msg.correlation_id = r.correlation_id();
    msg.message_id = r.message_id();
    msg.type = r.event_type();
    if (!outbound) msg.headers.emplace_back(bus::kPartnerHeader, r.partner());
    msg.headers.emplace_back(bus::kReplayHeader, who.empty() ? "ops" : who);
    // The adapter looks there first: rows an upload of unknown outcome made are not sent again.
    if (outbound && !r.maybe_delivered_as().empty()) {
      msg.headers.emplace_back(bus::kMaybeDeliveredAsHeader, r.maybe_delivered_as());
    }
    {
      absl::MutexLock lock(&confirms->mu);
      ++confirms->pending;
    }
    late_->Sent();
    publish_(std::move(p.target.exchange), std::move(p.target.routing_key), std::move(msg),
             [confirms, i, late = late_](absl::Status s) {
               absl::Cleanup done = [&late] { late->Answered(); };
               std::optional<Settlement> late_one;
               {
                 absl::MutexLock lock(&confirms->mu);
                 --confirms->pending;
                 if (!confirms->closed) {
                   confirms->results[i] = std::move(s);
                   return;
                 }
                 late_one = std::move(confirms->late[i]);
               }
               if (!late_one.has_value()) return;
               late_one->confirmed = s.ok();
               if (!s.ok()) late_one->failure = s.ToString();
               const std::string message_id = late_one->record.message_id();
               if (!late->Push(*std::move(late_one))) {
                 ess::log::Warn("",
                                "replay answered while stopping; the record keeps its claim "
                                "until the claim lease passes",
                                {{"message_id", message_id}, {"confirmed", s.ok() ? "yes" : "no"}});
               }
             });
  }

  // Wait for the confirms; those still out are settled when they come.
  std::vector<std::optional<absl::Status>> results;
  {
    absl::MutexLock lock(&confirms->mu);
    auto all_answered = [&confirms]() ABSL_SHARED_LOCKS_REQUIRED(confirms->mu) {
      return confirms->pending == 0;
    };
    confirms->mu.AwaitWithDeadline(absl::Condition(&all_answered),
                                   std::min(request.deadline, started + options_.confirm_timeout));
    results = confirms->results;
    confirms->closed = true;
    for (const Planned& p : claimed) {
      if (!results[p.i].has_value()) confirms->late[p.i] = answered(p.i, true);
    }
  }

  // Mark what the broker confirmed and give back the claims of what it refused, then audit and
  // log the replayed ones.
  std::vector<Settlement> now;
  for (const Planned& p : claimed) {
    const size_t i = p.i;
    ReplayedRecord* out = response.mutable_records(static_cast<int>(i));
    if (!results[i].has_value()) {
      out->set_outcome(ReplayedRecord::OUTCOME_UNCONFIRMED);
      out->set_error(absl::StrCat("published; no confirm from the broker within ",
                                  absl::FormatDuration(absl::Now() - started),
                                  ": marked when it comes"));
      continue;
    }
    if (!results[i]->ok()) {
      out->set_outcome(ReplayedRecord::OUTCOME_FAILED);
      out->set_error(absl::StrCat("publish failed: ", results[i]->ToString()));
      now.push_back(answered(i, false));
      now.back().failure = results[i]->ToString();
      continue;
    }
    out->set_outcome(ReplayedRecord::OUTCOME_REPLAYED);
    now.push_back(answered(i, true));
  }
  Settle(std::move(now), /*late=*/false);

  for (const ReplayedRecord& out : response.records()) {
    switch (out.outcome()) {
      case ReplayedRecord::OUTCOME_REPLAYED:
        response.set_replayed(response.replayed() + 1);
        break;
      case ReplayedRecord::OUTCOME_SKIPPED:
        response.set_skipped(response.skipped() + 1);
        break;
      case ReplayedRecord::OUTCOME_UNCONFIRMED:
        response.set_unconfirmed(response.unconfirmed() + 1);
        break;
      default:
        response.set_failed(response.failed() + 1);
        break;
    }
  }
  return response;
}

void Replayer::Settle(std::vector<Settlement> answered, bool late) {
  if (answered.empty()) return;
  // A confirmed record takes its replay's status; a refused one gets back the status and error
  // it had. Either only if it still holds the claim (a lane that wrote it since keeps what it
  // wrote).
  auto mark_of = [](const Settlement& a) {
    const MessageRecord& r = a.record;
    ReplayMark mark{.key = a.key,
                    .expected_status = r.status(),
                    .expected_updated_at_micros = a.claimed_at_micros,
                    .status = r.status(),
                    .error = r.error()};
    if (a.confirmed) {
      mark.status = r.direction() == ess::v1::DIRECTION_OUTBOUND
                        ? ess::v1::MESSAGE_STATUS_RECEIVED
                        : ess::v1::MESSAGE_STATUS_PUBLISHED;
      mark.error.clear();
    }
    return mark;
  };
  // One MarkReplayed per store (a call has one; late ones may come from several calls).
  std::vector<ReplayMark> marks;
  for (size_t from = 0; from < answered.size();) {
    ReplayStore* store = answered[from].store;
    size_t to = from;
    marks.clear();
    while (to < answered.size() && answered[to].store == store) {
      marks.push_back(mark_of(answered[to]));
      ++to;
    }
    if (absl::StatusOr<MarkedReplays> changed = store->MarkReplayed(marks); !changed.ok()) {
      // The messages are on their way; the lanes' records will follow them. The records keep
      // their claims until the claim lease passes.
      ess::log::Error(
          "", "replayed records not marked; they keep their claims until the claim lease passes",
          {{"records", absl::StrCat(marks.size())}, {"error", ToStd(changed.status().message())}});
    }
    from = to;
  }
  for (const Settlement& a : answered) {
    const MessageRecord& r = a.record;
    if (!a.confirmed) {
      if (late) {
        ess::log::Warn(
            r.correlation_id(), "replay not confirmed after all; its claim is given back",
            {{"partner", r.partner()}, {"message_id", r.message_id()}, {"error", a.failure}});
      }
      continue;
    }
    const ess::v1::MessageStatus status = mark_of(a).status;
    if (audit_ != nullptr) {
      ess::v1::SyncAudit event =
          AuditSink::Make(r.direction(), r.partner(), r.correlation_id(), r.message_id(),
                          r.event_type(), status, "", r.attempts(), a.started, r.dry_run());
      event.set_replayed_by(a.requested_by);
      event.set_replay_reason(a.reason);
      audit_->Emit(event);
    }
    ess::log::Info(r.correlation_id(),
                   late ? "replayed (confirmed after the call answered)" : "replayed",
                   {{"direction", DirectionName(r.direction())},
                    {"partner", r.partner()},
                    {"message_id", r.message_id()},
                    {"was", StatusName(r.status())},
                    {"to", a.target},
                    {"by", a.requested_by},
                    {"reason", a.reason}});
  }
}

}  // namespace ess::replay
