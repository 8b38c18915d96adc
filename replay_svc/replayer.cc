#include "replay_svc/replayer.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/sv.h"
#include "replay_svc/records.h"

namespace ess::replay {
namespace {

using ess::v1::MessageRecord;
using ess::v1::ReplayedRecord;

// The confirms of one call. Shared with the publish callbacks, which may outlive the call when
// it gave up waiting.
struct Confirms {
  absl::Mutex mu;
  std::vector<std::optional<absl::Status>> results ABSL_GUARDED_BY(mu);
  size_t pending ABSL_GUARDED_BY(mu) = 0;
};

}  // namespace

Replayer::Options Replayer::FromConfig(const ess::v1::HubConfig& config) {
  Options options;
  if (!config.bus().events_exchange().empty()) {
    options.events_exchange = config.bus().events_exchange();
  }
  for (const ess::v1::PartnerConfig& partner : config.partners()) {
    if (partner.has_outbound() && !partner.outbound().queue().empty()) {
      options.outbound_queues[partner.name()] = partner.outbound().queue();
    }
  }
  return options;
}

Replayer::Replayer(Options options, PublishFn publish, AuditSink* audit)
    : options_(std::move(options)), publish_(std::move(publish)), audit_(audit) {}

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
    {
      absl::MutexLock lock(&confirms->mu);
      ++confirms->pending;
    }
    published.push_back(i);
    publish_(std::move(target->exchange), std::move(target->routing_key), std::move(msg),
             [confirms, i](absl::Status s) {
               absl::MutexLock lock(&confirms->mu);
               confirms->results[i] = std::move(s);
               --confirms->pending;
             });
  }

  // Wait for the confirms.
  std::vector<std::optional<absl::Status>> results;
  {
    absl::MutexLock lock(&confirms->mu);
    auto answered = [&confirms]()
                        ABSL_SHARED_LOCKS_REQUIRED(confirms->mu) { return confirms->pending == 0; };
    confirms->mu.AwaitWithDeadline(absl::Condition(&answered),
                                   std::min(request.deadline, started + options_.confirm_timeout));
    results = confirms->results;
  }

  // Mark what the broker confirmed, then audit and log it.
  std::vector<ReplayMark> marks;
  std::vector<size_t> marked;
  for (size_t i : published) {
    ReplayedRecord* out = response.mutable_records(static_cast<int>(i));
    if (!results[i].has_value()) {
      out->set_outcome(ReplayedRecord::OUTCOME_FAILED);
      out->set_error(absl::StrCat("no confirm from the broker within ",
                                  absl::FormatDuration(absl::Now() - started)));
      continue;
    }
    if (!results[i]->ok()) {
      out->set_outcome(ReplayedRecord::OUTCOME_FAILED);
      out->set_error(absl::StrCat("publish failed: ", results[i]->ToString()));
      continue;
    }
    out->set_outcome(ReplayedRecord::OUTCOME_REPLAYED);
    const MessageRecord& r = *candidates[i].record;
    const bool outbound = r.direction() == ess::v1::DIRECTION_OUTBOUND;
    marks.push_back({.key = candidates[i].key,
                     .expected_status = r.status(),
                     .expected_updated_at_micros = ToUnixMicros(r.updated_at()).value_or(0),
                     .status = outbound ? ess::v1::MESSAGE_STATUS_RECEIVED
                                        : ess::v1::MESSAGE_STATUS_PUBLISHED});
    marked.push_back(i);
  }
  if (absl::StatusOr<std::vector<bool>> changed = store.MarkReplayed(marks); !changed.ok()) {
    // The messages are on their way; the lanes' records will follow them.
    ess::log::Error(
        "", "replayed records not marked",
        {{"records", absl::StrCat(marks.size())}, {"error", ToStd(changed.status().message())}});
  }
  for (size_t n = 0; n < marked.size(); ++n) {
    const MessageRecord& r = *candidates[marked[n]].record;
    const ess::v1::MessageStatus status = marks[n].status;
    if (audit_ != nullptr) {
      ess::v1::SyncAudit event =
          AuditSink::Make(r.direction(), r.partner(), r.correlation_id(), r.message_id(),
                          r.event_type(), status, "", r.attempts(), started, r.dry_run());
      event.set_replayed_by(who);
      event.set_replay_reason(request.reason);
      audit_->Emit(event);
    }
    ess::log::Info(r.correlation_id(), "replayed",
                   {{"direction", DirectionName(r.direction())},
                    {"partner", r.partner()},
                    {"message_id", r.message_id()},
                    {"was", StatusName(r.status())},
                    {"to", response.records(static_cast<int>(marked[n])).target()},
                    {"by", who},
                    {"reason", request.reason}});
  }

  for (const ReplayedRecord& out : response.records()) {
    switch (out.outcome()) {
      case ReplayedRecord::OUTCOME_REPLAYED:
        response.set_replayed(response.replayed() + 1);
        break;
      case ReplayedRecord::OUTCOME_SKIPPED:
        response.set_skipped(response.skipped() + 1);
        break;
      default:
        response.set_failed(response.failed() + 1);
        break;
    }
  }
  return response;
}

}  // namespace ess::replay
