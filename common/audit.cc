#include "common/audit.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/ids.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/sv.h"
#include "google/protobuf/util/time_util.h"

namespace ess {
namespace {

google::protobuf::Timestamp ToProto(absl::Time t) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

}  // namespace

ess::v1::SyncAudit AuditSink::Make(ess::v1::Direction direction, std::string_view partner,
                                   std::string_view correlation_id, std::string_view message_id,
                                   std::string_view event_type, ess::v1::MessageStatus status,
                                   std::string_view error, uint32_t attempt, absl::Time started,
                                   bool dry_run) {
  ess::v1::SyncAudit a;
  a.set_direction(direction);
  a.set_partner(std::string(partner));
  a.set_correlation_id(std::string(correlation_id));
  a.set_message_id(std::string(message_id));
  a.set_event_type(std::string(event_type));
  a.set_status(status);
  a.set_error(std::string(error));
  a.set_attempt(attempt);
  *a.mutable_started_at() = ToProto(started);
  *a.mutable_finished_at() = ToProto(absl::Now());
  a.set_dry_run(dry_run);
  return a;
}

absl::StatusOr<std::string> AuditSink::Json(const ess::v1::SyncAudit& event) {
  rapidjson::StringBuffer out;
  rapidjson::Writer<rapidjson::StringBuffer, rapidjson::UTF8<>, rapidjson::UTF8<>,
                    rapidjson::CrtAllocator, rapidjson::kWriteValidateEncodingFlag>
      w(out);
  bool ok = w.StartObject();
  auto text = [&](const char* key, const std::string& value) {
    if (value.empty()) return;
    ok = ok && w.Key(key) && w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
  };
  // An enum by its name; a value with no name (from a newer writer) by its number.
  auto enumerated = [&](const char* key, int value, const std::string& name) {
    if (value == 0) return;
    ok = ok && w.Key(key) && (name.empty() ? w.Int(value) : w.String(name.c_str()));
  };
  auto time = [&](const char* key, bool has, const google::protobuf::Timestamp& t) {
    if (!has) return;
    const std::string rfc3339 = google::protobuf::util::TimeUtil::ToString(t);
    ok = ok && w.Key(key) && w.String(rfc3339.c_str());
  };
  text("correlationId", event.correlation_id());
  text("messageId", event.message_id());
  text("partner", event.partner());
  enumerated("direction", event.direction(), ess::v1::Direction_Name(event.direction()));
  text("eventType", event.event_type());
  enumerated("status", event.status(), ess::v1::MessageStatus_Name(event.status()));
  text("error", event.error());
  if (event.attempt() != 0) ok = ok && w.Key("attempt") && w.Uint(event.attempt());
  time("startedAt", event.has_started_at(), event.started_at());
  time("finishedAt", event.has_finished_at(), event.finished_at());
  if (event.dry_run()) ok = ok && w.Key("dryRun") && w.Bool(true);
  text("replayedBy", event.replayed_by());
  text("replayReason", event.replay_reason());
  ok = ok && w.EndObject();
  if (!ok) {
    return absl::InvalidArgumentError("audit event has a field that is not UTF-8 text");
  }
  return std::string(out.GetString(), out.GetSize());
}

std::string AuditSink::BatchJson(const std::vector<std::string>& documents) {
  size_t size = 13;
  for (const std::string& d : documents) size += d.size() + 1;
  std::string out;
  out.reserve(size);
  out += "{\"events\":[";
  for (size_t i = 0; i < documents.size(); ++i) {
    if (i > 0) out += ',';
    out += documents[i];
  }
  out += "]}";
  return out;
}

void AuditSink::Emit(const ess::v1::SyncAudit& event) { Emit(event, nullptr); }

void AuditSink::Emit(const ess::v1::SyncAudit& event, amqp::Publisher::Done done) {
  if (!enabled()) {
    if (done) std::move(done)(absl::OkStatus());
    return;
  }
  absl::StatusOr<std::string> json = Json(event);
  if (!json.ok()) {
    if (done) std::move(done)(json.status());
    return;
  }
  std::string message_id = absl::StrCat(
      event.message_id(), ":", ess::v1::MessageStatus_Name(event.status()), ":", event.attempt());
  if (!event.replayed_by().empty()) {
    // A replay repeats an outcome's status and attempt: its own id, so that a consumer that
    // drops repeated ids keeps it.
    absl::StrAppend(&message_id, ":replay-", event.started_at().seconds(), ".",
                    event.started_at().nanos());
  }
  // The AMQP properties hold 255 bytes; the event's JSON keeps the ids whole.
  Pending p{.json = *std::move(json),
            .message_id = ids::Fit(message_id),
            .correlation_id = ids::Fit(event.correlation_id()),
            .done = std::move(done)};
  std::vector<Pending> batch;
  {
    absl::MutexLock lock(&mu_);
    ++unsettled_;
    queued_.push_back(std::move(p));
    // Without batches (batch_max_ 1) this is always true: every event goes at once.
    if (publishes_in_flight_ == 0 || queued_.size() >= batch_max_) {
      batch = TakeBatch();
      ++publishes_in_flight_;
    }
  }
  if (!batch.empty()) Publish(std::move(batch));
}

void AuditSink::EmitOrWait(const ess::v1::SyncAudit& event, absl::AnyInvocable<void() &&> proceed) {
  bool room = true;
  if (enabled()) {
    absl::MutexLock lock(&mu_);
    room = unsettled_ < max_unsettled_;
  }
  if (room) {
    Emit(event);
    std::move(proceed)();
    return;
  }
  Emit(event, [proceed = std::move(proceed)](absl::Status) mutable { std::move(proceed)(); });
}

std::vector<AuditSink::Pending> AuditSink::TakeBatch() {
  std::vector<Pending> batch;
  if (queued_.size() <= batch_max_) {
    batch.swap(queued_);
    return batch;
  }
  auto end = queued_.begin() + batch_max_;
  batch.assign(std::make_move_iterator(queued_.begin()), std::make_move_iterator(end));
  queued_.erase(queued_.begin(), end);
  return batch;
}

void AuditSink::Publish(std::vector<Pending> batch) {
  amqp::Message msg;
  if (batch_max_ == 1) {  // a batch of one, as the event's own message
    Pending& p = batch.front();
    msg.body = std::move(p.json);
    msg.correlation_id = p.correlation_id;
    msg.message_id = p.message_id;
    msg.type = "SyncAudit";
  } else {
    std::vector<std::string> documents;
    documents.reserve(batch.size());
    for (Pending& p : batch) documents.push_back(std::move(p.json));
    msg.body = BatchJson(documents);
    // The first event's id and how many follow it: an event is in one batch only, so no two
    // batches share an id.
    msg.message_id =
        ids::Fit(absl::StrCat("batch:", batch.front().message_id, "+", batch.size() - 1));
    msg.type = "SyncAuditBatch";
  }
  messages_.fetch_add(1, std::memory_order_relaxed);
  // `done` may run inline (Publish failed fast), so no lock is held here. During a broker's
  // resource alarm the publish waits for it to clear, even on a publisher whose other
  // publishes fail fast (the inbound lane's webhooks): the sync it tells of happened.
  publisher_->Publish(
      exchange_, "", std::move(msg),
      [this, batch = std::move(batch)](absl::Status s) mutable {
        PublishSettled(std::move(batch), s);
      },
      amqp::Publisher::WhileBlocked::kHold);
}

void AuditSink::PublishSettled(std::vector<Pending> batch, const absl::Status& status) {
  for (Pending& p : batch) Settle(p.correlation_id, status, std::move(p.done));
  std::vector<Pending> next;
  {
    absl::MutexLock lock(&mu_);
    unsettled_ -= static_cast<int64_t>(batch.size());
    --publishes_in_flight_;
    if (publishes_in_flight_ == 0 && !queued_.empty()) {
      next = TakeBatch();
      ++publishes_in_flight_;
    }
  }
  if (!next.empty()) Publish(std::move(next));
}

bool AuditSink::Drain(absl::Duration timeout) {
  int64_t left;
  {
    absl::MutexLock lock(&mu_);
    auto settled = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return unsettled_ == 0; };
    if (mu_.AwaitWithTimeout(absl::Condition(&settled), timeout)) return true;
    left = unsettled_;
  }
  log::Warn("", "audit events still unconfirmed; a stop now counts them as failed",
            {{"events", absl::StrCat(left)}, {"waited", absl::FormatDuration(timeout)}});
  return false;
}

void AuditSink::Settle(const std::string& correlation_id, const absl::Status& status,
                       amqp::Publisher::Done done) {
  if (status.ok()) published_.fetch_add(1, std::memory_order_relaxed);
  if (!status.ok() && failures_.fetch_add(1, std::memory_order_relaxed) % 1000 == 0) {
    // Logged on the first failure and every 1000th after: an audit exchange nobody is bound to
    // must not flood the log.
    log::Warn(correlation_id, "audit event not published",
              {{"error", ToStd(status.message())}, {"failures", absl::StrCat(failures_.load())}});
  }
  if (done) std::move(done)(status);
}

std::vector<prometheus::MetricFamily> AuditSink::Metrics() const {
  std::vector<prometheus::MetricFamily> families;
  if (!enabled()) return families;
  prometheus::MetricFamily events = metrics::Family(
      "ess_audit_events_total",
      "Audit events by outcome: published (confirmed by the broker) or failed (refused, "
      "unroutable or lost with the connection; logged).",
      prometheus::MetricType::Counter);
  metrics::AddSample(events, {{"outcome", "published"}},
                     static_cast<double>(published_.load(std::memory_order_relaxed)));
  metrics::AddSample(events, {{"outcome", "failed"}},
                     static_cast<double>(failures_.load(std::memory_order_relaxed)));
  families.push_back(std::move(events));
  families.push_back(metrics::Single(
      "ess_audit_messages_total",
      "Messages that carried audit events: one per event, or one per SyncAuditBatch with "
      "bus.audit_batch_max.",
      prometheus::MetricType::Counter,
      static_cast<double>(messages_.load(std::memory_order_relaxed))));
  return families;
}

}  // namespace ess
