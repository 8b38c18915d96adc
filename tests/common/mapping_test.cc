#include "common/mapping.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/log.h"

namespace ess {
namespace {

using ::testing::HasSubstr;

google::protobuf::RepeatedPtrField<ess::v1::FieldMapping> Fields(
    std::initializer_list<std::tuple<const char*, const char*, const char*>> spec) {
  google::protobuf::RepeatedPtrField<ess::v1::FieldMapping> out;
  for (auto [target, source, constant] : spec) {
    auto* f = out.Add();
    f->set_target(target);
    if (source) f->set_source(source);
    if (constant) f->set_constant(constant);
  }
  return out;
}

TEST(MappingTest, MapsTheVisitEvent) {
  auto m = Mapper::Compile(Fields(
      {{"id", "id", nullptr}, {"inmate", "inmateId", nullptr}, {"slot", "slotUtc", nullptr}}));
  ASSERT_TRUE(m.ok()) << m.status();
  rapidjson::Document doc;
  ASSERT_TRUE(json::Parse(R"({"type":"VisitScheduleUpdated","id":"VIS-77","inmateId":"A123",)"
                          R"("slotUtc":"2026-12-01T15:00:00Z"})",
                          doc)
                  .ok());
  std::vector<MappedField> out;
  ASSERT_TRUE(m->Apply(doc, &out).ok());
  EXPECT_EQ(Mapper::ToJson(out),
            R"({"id":"VIS-77","inmate":"A123","slot":"2026-12-01T15:00:00Z"})");
}

TEST(MappingTest, NestedPathsArraysConstantsAndTypes) {
  auto fields = Fields({{"who", "visitors[1].name", nullptr},
                        {"room", "slot.room", nullptr},
                        {"kind", nullptr, "visit"},
                        {"count", "n", nullptr}});
  auto* opt = fields.Add();
  opt->set_target("note");
  opt->set_source("note");
  opt->set_default_value("none");
  auto m = Mapper::Compile(fields);
  ASSERT_TRUE(m.ok()) << m.status();
  rapidjson::Document doc;
  ASSERT_TRUE(json::Parse(R"({"visitors":[{"name":"Ann"},{"name":"Bo \"B\""}],)"
                          R"("slot":{"room":7},"n":2.5})",
                          doc)
                  .ok());
  std::vector<MappedField> out;
  ASSERT_TRUE(m->Apply(doc, &out).ok());
  EXPECT_EQ(Mapper::ToJson(out),
            R"({"who":"Bo \"B\"","room":7,"kind":"visit","count":2.5,"note":"none"})");
  EXPECT_EQ(Mapper::Text(out[1]), "7");
}

TEST(MappingTest, OptionalWithoutDefaultIsLeftOut) {
  auto fields = Fields({{"id", "id", nullptr}});
  auto* opt = fields.Add();
  opt->set_target("extra");
  opt->set_source("extra");
  opt->set_required(false);
  auto m = Mapper::Compile(fields);
  ASSERT_TRUE(m.ok());
  rapidjson::Document doc;
  ASSERT_TRUE(json::Parse(R"({"id":"X","extra":null})", doc).ok());
  std::vector<MappedField> out;
  ASSERT_TRUE(m->Apply(doc, &out).ok());
  EXPECT_EQ(Mapper::ToJson(out), R"({"id":"X"})");
}

TEST(MappingTest, MissingRequiredFieldIsNamed) {
  auto m = Mapper::Compile(Fields({{"id", "id", nullptr}, {"inmate", "inmateId", nullptr}}));
  ASSERT_TRUE(m.ok());
  rapidjson::Document doc;
  ASSERT_TRUE(json::Parse(R"({"id":"VIS-1"})", doc).ok());
  std::vector<MappedField> out;
  absl::Status s = m->Apply(doc, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "missing required field \"inmateId\" (for \"inmate\")");
  ASSERT_TRUE(json::Parse(R"([1,2])", doc).ok());
  EXPECT_EQ(m->Apply(doc, &out).message(), "payload is not a JSON object");
}

TEST(MappingTest, CompileErrorsNameTheEntry) {
  struct Case {
    google::protobuf::RepeatedPtrField<ess::v1::FieldMapping> fields;
    std::string error;
  };
  std::vector<Case> cases = {
      {Fields({{"", "id", nullptr}}), "[0].target: must not be empty"},
      {Fields({{"a", "id", nullptr}, {"a", "x", nullptr}}), "[1].target: duplicate target \"a\""},
      {Fields({{"a", nullptr, nullptr}}), "[0].source: exactly one of source and constant"},
      {Fields({{"a", "x", "c"}}), "[0].source: exactly one of source and constant"},
      {Fields({{"a", "x[", nullptr}}), "[0].source: bad path \"x[\": missing ]"},
      {Fields({{"a", "x[-1]", nullptr}}), "[0].source: bad path \"x[-1]\": index must be"},
      {Fields({{"a", "x.", nullptr}}), "[0].source: bad path \"x.\": ends with ."},
      {Fields({{"a", ".x", nullptr}}), "[0].source: bad path \".x\": empty member name"},
  };
  for (const auto& c : cases) {
    auto m = Mapper::Compile(c.fields);
    ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << c.error;
    EXPECT_THAT(std::string(m.status().message()), HasSubstr(c.error));
  }
}

TEST(MappingTest, UnicodeAndEscapesSurvive) {
  auto m = Mapper::Compile(Fields({{"name", "name", nullptr}}));
  ASSERT_TRUE(m.ok());
  rapidjson::Document doc;
  ASSERT_TRUE(json::Parse(R"({"name":"Zo\u00eb \u5f20 \n"})", doc).ok());
  std::vector<MappedField> out;
  ASSERT_TRUE(m->Apply(doc, &out).ok());
  EXPECT_EQ(Mapper::Text(out[0]), "Zo\xc3\xab \xe5\xbc\xa0 \n");
  EXPECT_EQ(Mapper::ToJson(out), "{\"name\":\"Zo\xc3\xab \xe5\xbc\xa0 \\n\"}");
}

TEST(MappingTest, TransformsTimestampsCaseAndWidth) {
  google::protobuf::RepeatedPtrField<ess::v1::FieldMapping> fields;
  auto add = [&](const char* target, const char* source) {
    auto* f = fields.Add();
    f->set_target(target);
    f->set_source(source);
    return f;
  };
  add("slot", "slotUtc")->set_timestamp_format("%Y%m%d %H%M");
  add("local", "slotLocal")->set_timestamp_format("%Y-%m-%dT%H:%M:%SZ");
  add("inmate", "inmateId")->set_letter_case("lower");
  auto* padded = add("inmate_no", "inmateId");
  padded->set_width(8);
  padded->set_pad("0");
  padded->set_align_right(true);
  auto* name = add("name", "name");
  name->set_width(4);
  name->set_truncate(true);  // cut at a code point, not a byte
  auto* wide = add("room", "room");
  wide->set_width(5);
  wide->set_letter_case("upper");
  auto m = Mapper::Compile(fields);
  ASSERT_TRUE(m.ok()) << m.status();
  rapidjson::Document doc;
  ASSERT_TRUE(
      json::Parse(R"({"slotUtc":"2026-12-01T15:00:00Z","slotLocal":"2026-12-01T10:00:00-05:00",)"
                  R"("inmateId":"A123","name":"Zoëbe","room":7})",
                  doc)
          .ok());
  std::vector<MappedField> out;
  ASSERT_TRUE(m->Apply(doc, &out).ok());
  EXPECT_EQ(Mapper::ToJson(out),
            "{\"slot\":\"20261201 1500\",\"local\":\"2026-12-01T15:00:00Z\",\"inmate\":\"a123\","
            "\"inmate_no\":\"0000A123\",\"name\":\"Zo\xc3\xab"
            "b\",\"room\":\"7    \"}");
  EXPECT_EQ(Mapper::StringOf(out, "inmate_no"), "0000A123");
  EXPECT_EQ(Mapper::StringOf(out, "nope"), "");

  ASSERT_TRUE(json::Parse(R"({"slotUtc":"tomorrow","slotLocal":"2026-12-01T10:00:00Z",)"
                          R"("inmateId":"A1","name":"x","room":1})",
                          doc)
                  .ok());
  absl::Status s = m->Apply(doc, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "field \"slotUtc\": \"tomorrow\" is not an RFC 3339 timestamp");
}

// A value wider than its column parks the message unless the field may be cut: a cut id
// ("A12345" in a column of 4 became "A123") names someone else at the partner. The error gives
// the length, never the value.
TEST(MappingTest, AValueWiderThanItsColumnIsRefusedUnlessItMayBeCut) {
  google::protobuf::RepeatedPtrField<ess::v1::FieldMapping> fields;
  auto* id = fields.Add();
  id->set_target("inmate");
  id->set_source("inmateId");
  id->set_width(4);
  id->set_pad("0");
  id->set_align_right(true);
  auto m = Mapper::Compile(fields);
  ASSERT_TRUE(m.ok()) << m.status();
  rapidjson::Document doc;
  std::vector<MappedField> out;
  ASSERT_TRUE(json::Parse(R"({"inmateId":"A12345"})", doc).ok());
  absl::Status s = m->Apply(doc, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "field \"inmateId\": its value has 6 characters, wider than its column (width 4); set "
            "truncate: true where a cut value is acceptable");
  // Exactly its width, and shorter: as before.
  for (const auto& [value, sent] :
       std::vector<std::pair<std::string, std::string>>{{"A123", "A123"}, {"A1", "00A1"}}) {
    ASSERT_TRUE(json::Parse(absl::StrCat(R"({"inmateId":")", value, R"("})"), doc).ok());
    ASSERT_TRUE(m->Apply(doc, &out).ok()) << value;
    EXPECT_EQ(Mapper::StringOf(out, "inmate"), sent);
  }

  id->set_truncate(true);
  m = Mapper::Compile(fields);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_TRUE(json::Parse(R"({"inmateId":"A12345"})", doc).ok());
  ASSERT_TRUE(m->Apply(doc, &out).ok());
  EXPECT_EQ(Mapper::StringOf(out, "inmate"), "A123");

  id->set_width(0);
  EXPECT_EQ(Mapper::Compile(fields).status().message(), "[0].truncate: needs a width");
}

// The error of a personal field names the field, not its value: it reaches logs and records.
TEST(MappingTest, ABadPersonalValueIsNotInTheError) {
  log::Init("test", log::Level::kInfo, {"dob"});
  google::protobuf::RepeatedPtrField<ess::v1::FieldMapping> fields;
  auto* f = fields.Add();
  f->set_target("birth");
  f->set_source("dob");
  f->set_timestamp_format("%Y%m%d");
  auto m = Mapper::Compile(fields);
  ASSERT_TRUE(m.ok()) << m.status();
  rapidjson::Document doc;
  ASSERT_TRUE(json::Parse(R"({"dob":"1990-05-01"})", doc).ok());
  std::vector<MappedField> out;
  absl::Status s = m->Apply(doc, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "field \"dob\": its value is not an RFC 3339 timestamp");

  // Deeper in the payload: a personal member anywhere on the path (the logs mask a personal
  // member's whole value, so a member under one is personal too).
  log::Init("test", log::Level::kInfo, {"dateOfBirth", "visitor"});
  struct Case {
    const char* source;
    const char* payload;
  } cases[] = {
      {"guest.dateOfBirth", R"({"guest":{"dateOfBirth":"12/31/1980 Jane Doe"}})"},
      {"visitor.born", R"({"visitor":{"born":"12/31/1980 Jane Doe"}})"},
      {"visitors[0].dateOfBirth", R"({"visitors":[{"dateOfBirth":"12/31/1980 Jane Doe"}]})"},
  };
  for (const Case& c : cases) {
    f->set_source(c.source);
    auto deep = Mapper::Compile(fields);
    ASSERT_TRUE(deep.ok()) << deep.status();
    ASSERT_TRUE(json::Parse(c.payload, doc).ok());
    out.clear();
    s = deep->Apply(doc, &out);
    EXPECT_EQ(s.message(),
              absl::StrCat("field \"", c.source, "\": its value is not an RFC 3339 timestamp"));
  }
  // A path with no personal member still shows the value, which helps the partner fix it.
  f->set_source("slot.start");
  auto plain = Mapper::Compile(fields);
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_TRUE(json::Parse(R"({"slot":{"start":"noon"}})", doc).ok());
  out.clear();
  EXPECT_EQ(plain->Apply(doc, &out).message(),
            "field \"slot.start\": \"noon\" is not an RFC 3339 timestamp");
  log::Init("test", log::Level::kInfo, {});
}

// Whether a produced field is personal: its target, or any member of its source path, is a
// PII field. The adapters' dry-run logs mask by it, so a renamed field stays masked.
TEST(MappingTest, AFieldIsPersonalByItsTargetOrAnyMemberOfItsSource) {
  log::Init("test", log::Level::kInfo, {"inmateId", "visitor", "dob"});
  google::protobuf::RepeatedPtrField<ess::v1::FieldMapping> fields;
  auto add = [&](const char* target, const char* source) {
    auto* f = fields.Add();
    f->set_target(target);
    f->set_source(source);
  };
  add("offender", "inmateId");   // renamed
  add("guest", "visitor.name");  // under a PII member
  add("dob", "birth");           // a PII target
  add("slot", "slot.start");     // nothing personal
  auto m = Mapper::Compile(fields);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(m->IsPersonal("offender"));
  EXPECT_TRUE(m->IsPersonal("guest"));
  EXPECT_TRUE(m->IsPersonal("dob"));
  EXPECT_FALSE(m->IsPersonal("slot"));
  // A name it does not produce: by the name itself.
  EXPECT_TRUE(m->IsPersonal("inmateId"));
  EXPECT_FALSE(m->IsPersonal("other"));
  log::Init("test", log::Level::kInfo, {});
}

TEST(MappingTest, BadTransformsAreRejectedAtCompile) {
  google::protobuf::RepeatedPtrField<ess::v1::FieldMapping> fields;
  auto* f = fields.Add();
  f->set_target("a");
  f->set_source("a");
  f->set_letter_case("title");
  EXPECT_EQ(Mapper::Compile(fields).status().message(), "[0].letter_case: must be upper or lower");
  f->clear_letter_case();
  f->set_pad("ab");
  EXPECT_EQ(Mapper::Compile(fields).status().message(), "[0].pad: must be one ASCII character");
}

}  // namespace
}  // namespace ess
