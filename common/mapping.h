// Declarative field mapping: a list of FieldMapping (config.proto) turned into a compiled
// Mapper that picks values out of a JSON object by path, without copying them.
//
//   mapping: [{target: id, source: id}, {target: inmate, source: inmateId},
//             {target: slot, source: slotUtc}, {target: kind, constant: visit}]
//
//   Mapper m = *Mapper::Compile(route.mapping());
//   std::vector<MappedField> fields;
//   absl::Status s = m.Apply(event, &fields);      // INVALID_ARGUMENT names the missing field
//   std::string body = Mapper::ToJson(fields);    // {"id":"VIS-77","inmate":"A123",...}
//
// Paths: dot-separated member names, each optionally followed by [N] array indexes:
// "inmateId", "slot.start", "visitors[0].name". Values keep their JSON type, unless a transform
// (timestamp_format, letter_case, width) makes them strings, e.g.
//   {target: slot, source: slotUtc, timestamp_format: "%Y%m%d%H%M"}  gives "202612011500",
//   {target: inmate, source: inmateId, width: 8, pad: "0", align_right: true}  gives "0000A123".
#ifndef ESS_COMMON_MAPPING_H_
#define ESS_COMMON_MAPPING_H_

#include <rapidjson/document.h>

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ess/v1/config.pb.h"

namespace ess {

// One produced field. `value` points into the source document or into the Mapper (constants,
// defaults): it lives as long as both do. A transformed field has no `value`; its string is
// `text`.
struct MappedField {
  std::string_view name;
  const rapidjson::Value* value = nullptr;
  std::string text;
};

class Mapper {
 public:
  // Longest fixed width of a field (FieldMapping.width).
  static constexpr uint32_t kMaxWidth = 4096;
  // INVALID_ARGUMENT "[i].FIELD: what" for a bad entry (empty or duplicate target, neither or both
  // of source and constant, a malformed path).
  static absl::StatusOr<Mapper> Compile(
      const google::protobuf::RepeatedPtrField<ess::v1::FieldMapping>& fields);

  // Fills `out` (cleared first) in mapping order. INVALID_ARGUMENT if `source` is not an object
  // or a required path is absent: "missing required field \"inmateId\" (for \"inmate\")".
  absl::Status Apply(const rapidjson::Value& source, std::vector<MappedField>* out) const;

  size_t size() const { return fields_.size(); }

  // Whether the field this mapping produces as `target` carries personal data: its target or
  // any member of its source path is a PII field (log::IsPii), so its value must not reach
  // logs. A name it does not produce is personal when it is a PII field itself.
  bool IsPersonal(std::string_view target) const;

  // Appends the fields as one JSON object.
  static void AppendJson(std::span<const MappedField> fields, std::string* out);
  static std::string ToJson(std::span<const MappedField> fields);
  // A field's value as text: strings as they are, other JSON values serialized.
  static std::string Text(const MappedField& field);
  // The string value of the field called `name`, or empty when there is none or it is not a
  // string. The view lives as long as `fields` and what they point to.
  static std::string_view StringOf(std::span<const MappedField> fields, std::string_view name);

 private:
  struct Step {
    std::string key;  // member name; empty for an index step
    int index = -1;
  };
  struct Field {
    std::string target;
    std::vector<Step> path;
    std::string source;  // as written, for messages
    const rapidjson::Value* constant = nullptr;
    const rapidjson::Value* fallback = nullptr;
    bool required = true;
    // Transforms (see FieldMapping).
    std::string timestamp_format;
    enum class Case { kAsIs, kUpper, kLower } letter_case = Case::kAsIs;
    uint32_t width = 0;
    std::string pad = " ";
    bool align_right = false;
    bool truncate = false;

    bool transforms() const {
      return !timestamp_format.empty() || letter_case != Case::kAsIs || width > 0;
    }
  };

  // The field's text after its transforms; INVALID_ARGUMENT for a bad timestamp, or a value
  // wider than its width without truncate.
  static absl::StatusOr<std::string> Transform(const Field& f, std::string text);
  // IsPersonal of one field.
  static bool Personal(const Field& f);

  static absl::StatusOr<std::vector<Step>> ParsePath(std::string_view path);
  static const rapidjson::Value* Lookup(const rapidjson::Value& root,
                                        const std::vector<Step>& path);

  // Owns constants and defaults; shared so that copies keep the pointers in fields_ valid.
  std::shared_ptr<rapidjson::Document> values_;
  std::vector<Field> fields_;
};

}  // namespace ess

#endif  // ESS_COMMON_MAPPING_H_
