#include "common/json.h"

#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "absl/strings/str_cat.h"

namespace ess::json {

absl::Status Parse(std::string_view text, rapidjson::Document& doc) {
  doc.Parse(text.data(), text.size());
  if (doc.HasParseError()) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid JSON at offset ", doc.GetErrorOffset(), ": ",
                     rapidjson::GetParseError_En(doc.GetParseError())));
  }
  return absl::OkStatus();
}

std::string Serialize(const rapidjson::Value& value) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buf);
  value.Accept(writer);
  return std::string(buf.GetString(), buf.GetSize());
}

std::string_view GetString(const rapidjson::Value& object, std::string_view key) {
  if (!object.IsObject()) return {};
  auto it = object.FindMember(rapidjson::Value(rapidjson::StringRef(key.data(), key.size())));
  if (it == object.MemberEnd() || !it->value.IsString()) return {};
  return View(it->value);
}

}  // namespace ess::json
