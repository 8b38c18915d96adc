#include "common/log.h"

#include <gtest/gtest.h>
#include <rapidjson/document.h>

namespace ess::log {
namespace {

TEST(LogTest, MasksPiiFieldsAtAnyDepth) {
  Init("test", Level::kInfo, {"inmateId", "name"});
  EXPECT_EQ(MaskJson(R"({"id":"VIS-1","inmateId":"A123","visitors":[{"name":"Ann","age":3}]})"),
            R"({"id":"VIS-1","inmateId":"***","visitors":[{"name":"***","age":3}]})");
  EXPECT_EQ(MaskJson(R"({"inmateId":12345})"), R"({"inmateId":"***"})");
  // A PII field's whole value, when it is a list or an object.
  EXPECT_EQ(
      MaskJson(R"({"inmateId":["A123","B456"],"name":{"first":"Ann","last":"Smith"},"id":1})"),
      R"({"inmateId":"***","name":"***","id":1})");
  EXPECT_EQ(MaskJson(R"({"inmateId":null})"), R"({"inmateId":null})");
}

TEST(LogTest, MasksTextThatIsNotJson) {
  Init("test", Level::kInfo, {"inmateId"});
  EXPECT_EQ(MaskJson(R"(garbage {"inmateId": "A1\"23", "x":1)"),
            R"(garbage {"inmateId": "***", "x":1)");
  // Lists and objects up to their closing bracket, or to the end of a text cut short.
  EXPECT_EQ(MaskJson(R"(x {"inmateId": ["A1", "]B2"], "x":1)"), R"(x {"inmateId": "***", "x":1)");
  EXPECT_EQ(MaskJson(R"(x {"inmateId": {"a": {"b": "A1"}}, "x":1)"),
            R"(x {"inmateId": "***", "x":1)");
  EXPECT_EQ(MaskJson(R"(x {"inmateId": ["A1", "B2)"), R"(x {"inmateId": "***")");
}

// A partner's error text often echoes a PII value in plain words: each value the event's PII
// fields hold (at any depth, strings and numbers, longer first) is masked in it.
TEST(LogTest, MasksTheEventsPiiValuesInFreeText) {
  Init("test", Level::kInfo, {"inmateId", "inmate", "name"});
  rapidjson::Document event;
  event.Parse(R"({"id":"VIS-1","inmateId":"B4242","slot":"A1",)"
              R"("visitors":[{"name":"Ann Smith","age":31}],"inmate":{"no":12345,"alias":"B42"}})");
  ASSERT_FALSE(event.HasParseError());
  EXPECT_EQ(MaskPiiValues("Patient B4242 unknown", event), "Patient *** unknown");
  EXPECT_EQ(
      MaskPiiValues("B4242 (alias B42) and visitor Ann Smith, no 12345; slot A1; VIS-1", event),
      "*** (alias ***) and visitor ***, no ***; slot A1; VIS-1");
  EXPECT_EQ(MaskPiiValues("inmate B4242B4242 twice", event), "inmate ****** twice");
  EXPECT_EQ(MaskPiiValues("nothing to mask: 31", event), "nothing to mask: 31");
  // Escaped as in a URL's path, as a partner echoes the request's path (upper or lower hex).
  rapidjson::Document named;
  named.Parse(R"({"id":"VIS-3","inmateId":"Jane Doe-O'Brien"})");
  ASSERT_FALSE(named.HasParseError());
  EXPECT_EQ(MaskPiiValues("no inmate /api/inmates/Jane%20Doe-O%27Brien/slots", named),
            "no inmate /api/inmates/***/slots");
  named.Parse(R"({"id":"VIS-4","inmateId":"Doe/1"})");
  EXPECT_EQ(MaskPiiValues("/api/inmates/Doe%2F1 and Doe%2f1 and Doe/1", named),
            "/api/inmates/*** and *** and ***");
  rapidjson::Document none;
  none.Parse(R"({"id":"VIS-2","inmateId":null,"inmate":""})");
  EXPECT_EQ(MaskPiiValues("Patient B4242 unknown", none), "Patient B4242 unknown");
  Init("test", Level::kInfo, {});
  EXPECT_EQ(MaskPiiValues("Patient B4242 unknown", event), "Patient B4242 unknown");
}

TEST(LogTest, NoPiiConfiguredLeavesTextAlone) {
  Init("test", Level::kInfo, {});
  EXPECT_EQ(MaskJson(R"({"inmateId":"A123"})"), R"({"inmateId":"A123"})");
  EXPECT_FALSE(IsPii("inmateId"));
}

TEST(LogTest, WritesOneLogfmtLineWithCidAndMaskedFields) {
  Init("outbound_svc", Level::kInfo, {"inmate"});
  testing::internal::CaptureStderr();
  Info("VIS-77", "pushed to partner", {{"partner", "prison"}, {"inmate", "A123"}});
  Debug("VIS-77", "not shown");
  std::string out = testing::internal::GetCapturedStderr();
  EXPECT_NE(out.find(" level=info svc=outbound_svc cid=VIS-77 msg=\"pushed to partner\" "
                     "partner=prison inmate=***\n"),
            std::string::npos)
      << out;
  EXPECT_EQ(out.find("not shown"), std::string::npos);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);
}

// A value from outside (an id in a partner's payload) cannot forge a line, rewrite a terminal or
// turn the file binary: every control character is escaped.
TEST(LogTest, EscapesControlCharactersInValues) {
  Init("inbound_svc", Level::kInfo, {});
  testing::internal::CaptureStderr();
  const char cid[] = "CR\r level=error msg=forged\x1b[2J\0!";
  Warn(std::string_view(cid, sizeof(cid) - 1), "webhook rejected", {{"error", "tab\there\x7f"}});
  std::string out = testing::internal::GetCapturedStderr();
  EXPECT_NE(out.find(R"( cid="CR\r level=error msg=forged\u001b[2J\u0000!" msg="webhook rejected")"
                     R"( error="tab\there\u007f")"
                     "\n"),
            std::string::npos)
      << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);
  for (char c : out.substr(0, out.size() - 1)) {
    EXPECT_FALSE(static_cast<unsigned char>(c) < 0x20 || c == 0x7f) << static_cast<int>(c);
  }
}

// Masking parses what it is given: a hostile nesting depth is masked as text, not a crash.
TEST(LogTest, MasksDeeplyNestedTextWithoutParsingItAsJson) {
  Init("test", Level::kInfo, {"inmateId"});
  const std::string deep = std::string(100000, '[') + R"({"inmateId":"A123"})";
  const std::string masked = MaskJson(deep);
  EXPECT_EQ(masked.find("A123"), std::string::npos);
  EXPECT_NE(masked.find(R"({"inmateId":"***"})"), std::string::npos) << masked.substr(99990);
  Init("test", Level::kInfo, {});
}

// A line repeated by every failed request of an outage is written once, then at most once per
// interval, with the count of the ones held back meanwhile.
TEST(LogTest, ThrottleWritesTheFirstLineThenOnePerIntervalWithTheCountHeldBack) {
  Throttle throttle(absl::Seconds(1));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  uint64_t held = 99;
  ASSERT_TRUE(throttle.Allow(t0, &held));
  EXPECT_EQ(held, 0u);
  for (int i = 1; i <= 500; ++i) {
    EXPECT_FALSE(throttle.Allow(t0 + absl::Milliseconds(i), &held));
  }
  EXPECT_FALSE(throttle.Allow(t0 + absl::Milliseconds(999), &held));
  ASSERT_TRUE(throttle.Allow(t0 + absl::Seconds(1), &held));
  EXPECT_EQ(held, 501u);
  EXPECT_FALSE(throttle.Allow(t0 + absl::Milliseconds(1500), &held));
  ASSERT_TRUE(throttle.Allow(t0 + absl::Seconds(5), &held));
  EXPECT_EQ(held, 1u);
}

}  // namespace
}  // namespace ess::log
