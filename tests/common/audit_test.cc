// AuditSink::Json writes the JSON document protobuf's own JSON mapping writes for a SyncAudit
// (what audit consumers have been reading), without its cost: compared here, document against
// document, over events with every field, none, escapes, non-ASCII text, each precision of a
// timestamp and an enum value with no name.
#include "common/audit.h"

#include <rapidjson/document.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"

namespace ess {
namespace {

using google::protobuf::util::TimeUtil;

std::vector<ess::v1::SyncAudit> Events() {
  std::vector<ess::v1::SyncAudit> events;
  events.push_back(AuditSink::Make(ess::v1::DIRECTION_OUTBOUND, "prison", "corr-1", "VIS-1",
                                   "VisitScheduleUpdated", ess::v1::MESSAGE_STATUS_DELIVERED, "", 1,
                                   absl::FromUnixMillis(1764600000123), false));
  events.push_back(AuditSink::Make(ess::v1::DIRECTION_INBOUND, "clinic", "c", "m", "SlotConfirmed",
                                   ess::v1::MESSAGE_STATUS_FAILED,
                                   "HTTP 503: \"busy\"\\ back\nslash\ttab \x01 <&> é 中 \u2028 😀",
                                   7, absl::FromUnixNanos(1764600000123456789), true));
  ess::v1::SyncAudit replayed = events[0];
  replayed.set_replayed_by("oncall (carol)");
  replayed.set_replay_reason("SFTP down overnight");
  *replayed.mutable_started_at() = TimeUtil::NanosecondsToTimestamp(1764600000000000000);
  *replayed.mutable_finished_at() = TimeUtil::NanosecondsToTimestamp(1764600000123456000);
  events.push_back(replayed);
  events.push_back(ess::v1::SyncAudit());  // every field at its default
  ess::v1::SyncAudit newer;                // enum values this build has no names for
  newer.set_direction(static_cast<ess::v1::Direction>(42));
  newer.set_status(static_cast<ess::v1::MessageStatus>(99));
  newer.set_attempt(4294967295u);
  events.push_back(newer);
  return events;
}

TEST(AuditJsonTest, IsTheDocumentProtobufsJsonMappingWrites) {
  for (const ess::v1::SyncAudit& event : Events()) {
    std::string expected;
    ASSERT_TRUE(google::protobuf::util::MessageToJsonString(event, &expected).ok());
    absl::StatusOr<std::string> json = AuditSink::Json(event);
    ASSERT_TRUE(json.ok()) << json.status();
    rapidjson::Document want, got;
    want.Parse(expected.c_str(), expected.size());
    got.Parse(json->c_str(), json->size());
    ASSERT_FALSE(got.HasParseError()) << *json;
    EXPECT_TRUE(got == want) << "ours:     " << *json << "\nprotobuf: " << expected;
    // And back: protobuf's parser reads ours into the same event.
    ess::v1::SyncAudit parsed;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(*json, &parsed).ok()) << *json;
    EXPECT_EQ(parsed.SerializeAsString(), event.SerializeAsString()) << *json;
  }
}

TEST(AuditJsonTest, KeepsProtobufsFieldOrder) {
  const std::string json = AuditSink::Json(Events()[2]).value();
  size_t at = 0;
  for (const char* key :
       {"correlationId", "messageId", "partner", "direction", "eventType", "status", "attempt",
        "startedAt", "finishedAt", "replayedBy", "replayReason"}) {
    const size_t found = json.find(absl::StrCat("\"", key, "\":"));
    ASSERT_NE(found, std::string::npos) << key << " in " << json;
    EXPECT_GT(found, at) << key << " out of order in " << json;
    at = found;
  }
}

// A batch (bus.audit_batch_max) is protobuf's JSON of a SyncAuditBatch of the same events.
TEST(AuditJsonTest, ABatchIsTheDocumentOfASyncAuditBatch) {
  ess::v1::SyncAuditBatch batch;
  std::vector<std::string> documents;
  for (const ess::v1::SyncAudit& event : Events()) {
    *batch.add_events() = event;
    documents.push_back(AuditSink::Json(event).value());
    std::string expected;
    ASSERT_TRUE(google::protobuf::util::MessageToJsonString(batch, &expected).ok());
    const std::string json = AuditSink::BatchJson(documents);
    rapidjson::Document want, got;
    want.Parse(expected.c_str(), expected.size());
    got.Parse(json.c_str(), json.size());
    ASSERT_FALSE(got.HasParseError()) << json;
    EXPECT_TRUE(got == want) << "ours:     " << json << "\nprotobuf: " << expected;
    ess::v1::SyncAuditBatch parsed;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &parsed).ok()) << json;
    EXPECT_EQ(parsed.SerializeAsString(), batch.SerializeAsString()) << json;
  }
}

TEST(AuditJsonTest, TextThatIsNotUtf8IsAnError) {
  ess::v1::SyncAudit event = Events()[0];
  event.set_error("bad \xff\xfe bytes");
  absl::StatusOr<std::string> json = AuditSink::Json(event);
  ASSERT_FALSE(json.ok());
  EXPECT_EQ(json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(json.status().message(), "audit event has a field that is not UTF-8 text");
}

}  // namespace
}  // namespace ess
