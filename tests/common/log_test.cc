#include "common/log.h"

#include <gtest/gtest.h>

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

// Masking parses what it is given: a hostile nesting depth is masked as text, not a crash.
TEST(LogTest, MasksDeeplyNestedTextWithoutParsingItAsJson) {
  Init("test", Level::kInfo, {"inmateId"});
  const std::string deep = std::string(100000, '[') + R"({"inmateId":"A123"})";
  const std::string masked = MaskJson(deep);
  EXPECT_EQ(masked.find("A123"), std::string::npos);
  EXPECT_NE(masked.find(R"({"inmateId":"***"})"), std::string::npos) << masked.substr(99990);
  Init("test", Level::kInfo, {});
}

}  // namespace
}  // namespace ess::log
