// Small helpers over RapidJSON, the JSON library of the hub's data path.
#ifndef ESS_COMMON_JSON_H_
#define ESS_COMMON_JSON_H_

#include <rapidjson/document.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace ess::json {

// The deepest nesting of objects and arrays Parse takes. Real events use a few levels; the limit
// keeps a hostile body from exhausting a thread's stack in any code that walks the document.
inline constexpr size_t kMaxDepth = 64;

// Parses `text` into `doc`: strict JSON (RFC 8259) in well-formed UTF-8, nested at most
// kMaxDepth levels, whole numbers within 64-bit integers (a wider one would lose digits as a
// double). INVALID_ARGUMENT "invalid JSON at offset N: REASON" on error.
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
