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
  bool Push(Confirmed c) {
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
    ess::log::Warn("", "replays still unconfirmed; their records stay as they were",
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
      std::vector<Confirmed> batch;
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
  std::deque<Confirmed> queue_ ABSL_GUARDED_BY(mu_);
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
  std::vector<std::optional<Confirmed>> late ABSL_GUARDED_BY(mu);
};

Replayer::Options Replayer::FromConfig(const ess::v1::HubConfig& config) {
  Options options;
  if (!config.bus().events_exchange().empty()) {
    options.events_exchange = config.bus().events_exchange();
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
  const absl::Time now = options_.clock ? options_.clock() : absl::Now();
  const absl::Time updated = absl::FromUnixMicros(ToUnixMicros(record.updated_at()).value_or(0));
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
  auto confirms = std::make_shared<Confirms>();
  {
    absl::MutexLock lock(&confirms->mu);
    confirms->results.resize(candidates.size());
    confirms->late.resize(candidates.size());
  }

  // Plan every candidate, and publish the replayable ones (all in flight at once).
  std::vector<size_t> published;
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
    published.push_back(i);
    late_->Sent();
    publish_(std::move(target->exchange), std::move(target->routing_key), std::move(msg),
             [confirms, i, late = late_](absl::Status s) {
               absl::Cleanup answered = [&late] { late->Answered(); };
               std::optional<Confirmed> late_one;
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
               if (!s.ok()) {
                 ess::log::Warn(late_one->record.correlation_id(),
                                "replay not confirmed after all; the record stays as it was",
                                {{"partner", late_one->record.partner()},
                                 {"message_id", late_one->record.message_id()},
                                 {"error", s.ToString()}});
               } else {
                 const std::string message_id = late_one->record.message_id();
                 if (!late->Push(*std::move(late_one))) {
                   ess::log::Warn("", "replay confirmed while stopping; the record is not marked",
                                  {{"message_id", message_id}});
                 }
               }
             });
  }

  // What marking record i says once it is confirmed.
  auto confirmed = [&](size_t i) {
    const MessageRecord& r = *candidates[i].record;
    const bool outbound = r.direction() == ess::v1::DIRECTION_OUTBOUND;
    return Confirmed{
        .record = r,
        .mark = {.key = candidates[i].key,
                 .expected_status = r.status(),
                 .expected_updated_at_micros = ToUnixMicros(r.updated_at()).value_or(0),
                 .status = outbound ? ess::v1::MESSAGE_STATUS_RECEIVED
                                    : ess::v1::MESSAGE_STATUS_PUBLISHED},
        .target = response.records(static_cast<int>(i)).target(),
        .requested_by = who,
        .reason = request.reason,
        .started = started,
        .store = &store};
  };

  // Wait for the confirms; those still out are settled when they come.
  std::vector<std::optional<absl::Status>> results;
  {
    absl::MutexLock lock(&confirms->mu);
    auto answered = [&confirms]()
                        ABSL_SHARED_LOCKS_REQUIRED(confirms->mu) { return confirms->pending == 0; };
    confirms->mu.AwaitWithDeadline(absl::Condition(&answered),
                                   std::min(request.deadline, started + options_.confirm_timeout));
    results = confirms->results;
    confirms->closed = true;
    for (size_t i : published) {
      if (!results[i].has_value()) confirms->late[i] = confirmed(i);
    }
  }

  // Mark what the broker confirmed, then audit and log it.
  std::vector<Confirmed> now;
  for (size_t i : published) {
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
      continue;
    }
    out->set_outcome(ReplayedRecord::OUTCOME_REPLAYED);
    now.push_back(confirmed(i));
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

void Replayer::Settle(std::vector<Confirmed> confirmed, bool late) {
  if (confirmed.empty()) return;
  // One MarkReplayed per store (a call has one; late ones may come from several calls).
  std::vector<ReplayMark> marks;
  for (size_t from = 0; from < confirmed.size();) {
    ReplayStore* store = confirmed[from].store;
    size_t to = from;
    marks.clear();
    while (to < confirmed.size() && confirmed[to].store == store) {
      marks.push_back(confirmed[to].mark);
      ++to;
    }
    if (absl::StatusOr<std::vector<bool>> changed = store->MarkReplayed(marks); !changed.ok()) {
      // The messages are on their way; the lanes' records will follow them.
      ess::log::Error(
          "", "replayed records not marked",
          {{"records", absl::StrCat(marks.size())}, {"error", ToStd(changed.status().message())}});
    }
    from = to;
  }
  for (const Confirmed& c : confirmed) {
    const MessageRecord& r = c.record;
    if (audit_ != nullptr) {
      ess::v1::SyncAudit event =
          AuditSink::Make(r.direction(), r.partner(), r.correlation_id(), r.message_id(),
                          r.event_type(), c.mark.status, "", r.attempts(), c.started, r.dry_run());
      event.set_replayed_by(c.requested_by);
      event.set_replay_reason(c.reason);
      audit_->Emit(event);
    }
    ess::log::Info(r.correlation_id(),
                   late ? "replayed (confirmed after the call answered)" : "replayed",
                   {{"direction", DirectionName(r.direction())},
                    {"partner", r.partner()},
                    {"message_id", r.message_id()},
                    {"was", StatusName(r.status())},
                    {"to", c.target},
                    {"by", c.requested_by},
                    {"reason", c.reason}});
  }
}

}  // namespace ess::replay
