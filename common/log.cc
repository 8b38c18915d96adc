#include "common/log.h"

#include <rapidjson/document.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/json.h"
#include "ess/v1/config.pb.h"

namespace ess::log {
namespace {

struct State {
  std::string service = "ess";
  std::atomic<int> level{static_cast<int>(Level::kInfo)};
  absl::flat_hash_set<std::string> pii;
};

State& GetState() {
  static State* state = new State();
  return *state;
}

constexpr std::string_view kMask = "***";

std::string_view LevelName(Level level) {
  switch (level) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarn:
      return "warn";
    case Level::kError:
      return "error";
  }
  return "info";
}

// Whether `c` must be escaped in a log line: control characters could forge a line or a
// terminal's display (a CR, an ESC sequence) and a NUL makes tools take the file for binary.
bool IsControl(char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }

// Appends `v` as a logfmt value: bare when it has no space, quote, '=', backslash or control
// character; else quoted, with '"' and '\\' escaped, "\n", "\r" and "\t" as such and any other
// control character as "\u00XX".
void AppendValue(std::string& out, std::string_view v) {
  bool bare = !v.empty();
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || IsControl(c)) {
      bare = false;
      break;
    }
  }
  if (bare) {
    out.append(v);
    return;
  }
  out.push_back('"');
  for (char c : v) {
    switch (c) {
      case '"':
        out.append("\\\"");
        break;
      case '\\':
        out.append("\\\\");
        break;
      case '\n':
        out.append("\\n");
        break;
      case '\r':
        out.append("\\r");
        break;
      case '\t':
        out.append("\\t");
        break;
      default:
        if (IsControl(c)) {
          constexpr char kHex[] = "0123456789abcdef";
          const auto b = static_cast<unsigned char>(c);
          out.append("\\u00");
          out.push_back(kHex[b >> 4]);
          out.push_back(kHex[b & 0xf]);
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
}

void MaskValue(rapidjson::Value& v, rapidjson::Document::AllocatorType& alloc) {
  if (v.IsObject()) {
    for (auto& m : v.GetObject()) {
      std::string_view name(m.name.GetString(), m.name.GetStringLength());
      // The whole value of a PII field, whatever it holds: a list of names is names too.
      if (IsPii(name) && !m.value.IsNull()) {
        m.value.SetString(kMask.data(), kMask.size(), alloc);
      } else {
        MaskValue(m.value, alloc);
      }
    }
  } else if (v.IsArray()) {
    for (auto& e : v.GetArray()) MaskValue(e, alloc);
  }
}

// Fallback for text that is not valid JSON: masks `"field": value` by scanning.
std::string MaskText(std::string_view text) {
  std::string out(text);
  for (const auto& field : GetState().pii) {
    std::string key = "\"" + field + "\"";
    size_t pos = 0;
    while ((pos = out.find(key, pos)) != std::string::npos) {
      size_t i = pos + key.size();
      while (i < out.size() && (out[i] == ' ' || out[i] == ':')) ++i;
      size_t start = i, end = i;
      if (i < out.size() && out[i] == '"') {
        end = i + 1;
        while (end < out.size() && out[end] != '"') end += (out[end] == '\\') ? 2 : 1;
        end = std::min(end + 1, out.size());
      } else if (i < out.size() && (out[i] == '{' || out[i] == '[')) {
        // An object or a list: up to its matching bracket (or the end of a cut text), strings
        // skipped whole so that brackets inside them do not count.
        int depth = 0;
        end = i;
        while (end < out.size()) {
          const char c = out[end];
          if (c == '"') {
            ++end;
            while (end < out.size() && out[end] != '"') end += (out[end] == '\\') ? 2 : 1;
          } else if (c == '{' || c == '[') {
            ++depth;
          } else if ((c == '}' || c == ']') && --depth == 0) {
            ++end;
            break;
          }
          ++end;
        }
        end = std::min(end, out.size());
      } else {
        while (end < out.size() && out[end] != ',' && out[end] != '}' && out[end] != ']') ++end;
      }
      out.replace(start, end - start, "\"***\"");
      pos = start + 5;
    }
  }
  return out;
}

// Appends to `out` the leaves (strings, numbers as JSON writes them) of `v`, at any depth.
void CollectLeaves(const rapidjson::Value& v, std::vector<std::string>& out) {
  if (v.IsString()) {
    if (v.GetStringLength() > 0) out.emplace_back(v.GetString(), v.GetStringLength());
  } else if (v.IsNumber()) {
    out.push_back(json::Serialize(v));
  } else if (v.IsArray()) {
    for (const auto& e : v.GetArray()) CollectLeaves(e, out);
  } else if (v.IsObject()) {
    for (const auto& m : v.GetObject()) CollectLeaves(m.value, out);
  }
}

// Appends the leaves of every PII field's value in `v`, at any depth.
void CollectPiiValues(const rapidjson::Value& v, std::vector<std::string>& out) {
  if (v.IsObject()) {
    for (const auto& m : v.GetObject()) {
      if (IsPii(std::string_view(m.name.GetString(), m.name.GetStringLength()))) {
        CollectLeaves(m.value, out);
      } else {
        CollectPiiValues(m.value, out);
      }
    }
  } else if (v.IsArray()) {
    for (const auto& e : v.GetArray()) CollectPiiValues(e, out);
  }
}

// `value` percent-encoded as in a URL's path segment (RFC 3986: all but the unreserved
// characters), with upper- or lower-case hex digits.
std::string PercentEncoded(std::string_view value, bool upper) {
  const char* hex = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  std::string out;
  out.reserve(value.size() * 3);
  for (const char ch : value) {
    const auto c = static_cast<unsigned char>(ch);
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 0xF]);
    }
  }
  return out;
}

}  // namespace

void Init(std::string_view service, const ess::v1::LoggingConfig& config) {
  Level level = Level::kInfo;
  std::string name = absl::AsciiStrToLower(config.level());
  if (name == "debug") level = Level::kDebug;
  if (name == "warn") level = Level::kWarn;
  if (name == "error") level = Level::kError;
  Init(service, level, {config.pii_fields().begin(), config.pii_fields().end()});
}

void Init(std::string_view service, Level level, std::vector<std::string> pii_fields) {
  State& s = GetState();
  s.service = std::string(service);
  s.level = static_cast<int>(level);
  s.pii.clear();
  for (auto& f : pii_fields) s.pii.insert(std::move(f));
}

bool Enabled(Level level) { return static_cast<int>(level) >= GetState().level.load(); }

bool Throttle::Allow(absl::Time now, uint64_t* suppressed) {
  std::lock_guard<std::mutex> lock(mu_);
  if (now - last_ < interval_) {
    ++held_;
    return false;
  }
  last_ = now;
  *suppressed = held_;
  held_ = 0;
  return true;
}

bool IsPii(std::string_view field) {
  // Debian's Abseil has its own string_view type: convert for the heterogeneous lookup.
  return GetState().pii.contains(absl::string_view(field.data(), field.size()));
}

std::string MaskJson(std::string_view json) {
  if (GetState().pii.empty()) return std::string(json);
  rapidjson::Document doc;
  if (!json::Parse(json, doc).ok()) return MaskText(json);
  MaskValue(doc, doc.GetAllocator());
  return json::Serialize(doc);
}

std::string MaskPiiValues(std::string_view text, const rapidjson::Value& event) {
  if (GetState().pii.empty()) return std::string(text);
  std::vector<std::string> values;
  CollectPiiValues(event, values);
  // A value that went into a URL (a REST path placeholder) comes back escaped when a partner
  // echoes the path in its answer.
  const size_t raw = values.size();
  for (size_t i = 0; i < raw; ++i) {
    for (const bool upper : {true, false}) {
      std::string escaped = PercentEncoded(values[i], upper);
      if (escaped != values[i]) values.push_back(std::move(escaped));
    }
  }
  std::sort(values.begin(), values.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  std::string out(text);
  for (const std::string& value : values) {
    size_t pos = 0;
    while ((pos = out.find(value, pos)) != std::string::npos) {
      out.replace(pos, value.size(), kMask);
      pos += kMask.size();
    }
  }
  return out;
}

void Write(Level level, std::string_view cid, std::string_view msg, Fields fields) {
  State& s = GetState();
  std::string line;
  line.reserve(160 + msg.size());
  line.append("ts=");
  line.append(absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()));
  line.append(" level=");
  line.append(LevelName(level));
  line.append(" svc=");
  line.append(s.service);
  if (!cid.empty()) {
    line.append(" cid=");
    AppendValue(line, cid);
  }
  line.append(" msg=");
  AppendValue(line, msg);
  for (const auto& [k, v] : fields) {
    line.push_back(' ');
    line.append(k);
    line.push_back('=');
    if (IsPii(k)) {
      line.append(kMask);
    } else {
      AppendValue(line, v);
    }
  }
  line.push_back('\n');
  // One fwrite per line: stdio locks the stream, so lines from threads never interleave.
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace ess::log
