#include "common/json.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

namespace ess {
namespace {

std::string Nested(size_t levels) {
  return std::string(levels, '[') + "1" + std::string(levels, ']');
}

TEST(JsonTest, ParsesWhatEventsLookLike) {
  rapidjson::Document doc;
  ASSERT_TRUE(
      json::Parse(R"({"id":"VIS-77","slot":{"rooms":[{"name":"Zo\u00eb"}]},"n":12})", doc).ok());
  EXPECT_EQ(json::GetString(doc, "id"), "VIS-77");
  EXPECT_EQ(doc["n"].GetInt(), 12);
  EXPECT_EQ(json::Serialize(doc["slot"]), R"({"rooms":[{"name":"Zoë"}]})");
}

TEST(JsonTest, RefusesNestingDeeperThanTheLimitWithoutExhaustingTheStack) {
  rapidjson::Document doc;
  EXPECT_TRUE(json::Parse(Nested(json::kMaxDepth), doc).ok());
  absl::Status s = json::Parse(Nested(json::kMaxDepth + 1), doc);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "invalid JSON at offset 64: nested deeper than 64 levels");
  // A body of 150,000 '[' (150 KB) crashed the recursive parser of the inbound lane's HTTP
  // thread; objects count too.
  EXPECT_EQ(json::Parse(std::string(150000, '['), doc).code(), absl::StatusCode::kInvalidArgument);
  std::string objects;
  for (int i = 0; i < 100000; ++i) objects += R"({"a":)";
  EXPECT_EQ(json::Parse(objects, doc).message(),
            "invalid JSON at offset 320: nested deeper than 64 levels");
}

TEST(JsonTest, RefusesTextThatIsNotUtf8) {
  rapidjson::Document doc;
  absl::Status s = json::Parse("{\"id\":\"U8-\xff\"}", doc);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "invalid JSON at offset 10: Invalid encoding in string.");
  EXPECT_TRUE(json::Parse("{\"id\":\"Zo\xC3\xAB\"}", doc).ok());
}

// A whole number beyond 64-bit integers is refused: read as a double, 12345678901234567890123
// would go on as 1.2345678901234568e+22, another number. Everything that fits stays exact, and
// numbers written with a fraction or an exponent are doubles as before.
TEST(JsonTest, RefusesAWholeNumberBeyond64BitsRatherThanChangeIt) {
  rapidjson::Document doc;
  for (const char* wide : {R"({"inmate":12345678901234567890123})", R"([18446744073709551616])",
                           R"([-9223372036854775809])"}) {
    absl::Status s = json::Parse(wide, doc);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << wide;
    EXPECT_THAT(std::string(s.message()),
                ::testing::HasSubstr("a whole number beyond 64-bit integers, which would lose "
                                     "digits (send it as a string)"))
        << wide;
    EXPECT_THAT(std::string(s.message()), ::testing::Not(::testing::HasSubstr("1234567")));
  }
  ASSERT_TRUE(
      json::Parse(R"([18446744073709551615,-9223372036854775808,-0,0.5,1e22,-2.5E-3])", doc).ok());
  EXPECT_EQ(doc[0].GetUint64(), 18446744073709551615u);
  EXPECT_EQ(doc[1].GetInt64(), INT64_MIN);
  EXPECT_EQ(json::Serialize(doc), "[18446744073709551615,-9223372036854775808,0,0.5,1e22,-0.0025]");
}

TEST(JsonTest, NamesTheOffsetOfOtherErrors) {
  rapidjson::Document doc;
  EXPECT_EQ(json::Parse(R"({"id":"A"} trailing)", doc).message(),
            "invalid JSON at offset 11: The document root must not be followed by other values.");
  EXPECT_EQ(json::Parse("", doc).message(), "invalid JSON at offset 0: The document is empty.");
  EXPECT_EQ(json::Parse("{\"id\": nope}", doc).message(),
            "invalid JSON at offset 8: Invalid value.");
}

}  // namespace
}  // namespace ess
