#include "common/audit.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
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

void AuditSink::Emit(const ess::v1::SyncAudit& event) { Emit(event, nullptr); }

void AuditSink::Emit(const ess::v1::SyncAudit& event, amqp::Publisher::Done done) {
  if (!enabled()) {
    if (done) std::move(done)(absl::OkStatus());
    return;
  }
  amqp::Message msg;
  absl::StatusOr<std::string> json = Json(event);
  if (!json.ok()) {
    if (done) std::move(done)(json.status());
    return;
  }
  msg.body = *std::move(json);
  msg.correlation_id = event.correlation_id();
  msg.message_id = absl::StrCat(event.message_id(), ":",
                                ess::v1::MessageStatus_Name(event.status()), ":", event.attempt());
  if (!event.replayed_by().empty()) {
    // A replay repeats an outcome's status and attempt: its own id, so that a consumer that
    // drops repeated ids keeps it.
    absl::StrAppend(&msg.message_id, ":replay-", event.started_at().seconds(), ".",
                    event.started_at().nanos());
  }
  msg.type = "SyncAudit";
  std::string cid = event.correlation_id();
  publisher_->Publish(
      exchange_, "", std::move(msg), [this, cid, done = std::move(done)](absl::Status s) mutable {
        if (!s.ok() && failures_.fetch_add(1, std::memory_order_relaxed) % 1000 == 0) {
          // Logged on the first failure and every 1000th after: an audit exchange nobody is
          // bound to must not flood the log.
          log::Warn(cid, "audit event not published",
                    {{"error", ToStd(s.message())}, {"failures", absl::StrCat(failures_.load())}});
        }
        if (done) std::move(done)(std::move(s));
      });
}

}  // namespace ess
