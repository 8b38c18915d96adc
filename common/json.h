// Small helpers over RapidJSON, the JSON library of the hub's data path.
#ifndef ESS_COMMON_JSON_H_
#define ESS_COMMON_JSON_H_

#include <rapidjson/document.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace ess::json {

// Parses `text` into `doc`. INVALID_ARGUMENT "invalid JSON at offset N: REASON" on error.
absl::Status Parse(std::string_view text, rapidjson::Document& doc);

// Compact serialization.
std::string Serialize(const rapidjson::Value& value);

// The string member `key` of `object`, or empty when absent or not a string.
std::string_view GetString(const rapidjson::Value& object, std::string_view key);

// A view of a string value (no copy).
inline std::string_view View(const rapidjson::Value& v) {
  return std::string_view(v.GetString(), v.GetStringLength());
}

}  // namespace ess::json

#endif  // ESS_COMMON_JSON_H_
