// Structured one-line logging with correlation ids and PII masking.
//
// Every line is logfmt: `ts=... level=info svc=outbound_svc cid=VIS-77 msg="pushed" k=v ...`.
// Values of the fields named in LoggingConfig.pii_fields are masked wherever they appear as
// key=value pairs or inside JSON text handed to MaskJson(), so a payload can be logged safely;
// MaskPiiValues() masks the values an event's PII fields hold in free text (a partner's error).
//
//   ess::log::Init("outbound_svc", config.logging());
//   ESS_LOG(kInfo, cid) << "pushed partner=" << partner << " status=" << code;
//   ess::log::Info(cid, "delivered", {{"partner", "prison"}, {"status", "200"}});
#ifndef ESS_COMMON_LOG_H_
#define ESS_COMMON_LOG_H_

#include <rapidjson/fwd.h>

#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/time/time.h"

namespace ess::v1 {
class LoggingConfig;
}

namespace ess::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// Sets the service name, the threshold and the PII field names. Call once from main().
void Init(std::string_view service, const ess::v1::LoggingConfig& config);
// Same, without a config (tools, tests).
void Init(std::string_view service, Level level = Level::kInfo,
          std::vector<std::string> pii_fields = {});

bool Enabled(Level level);

using Fields = std::initializer_list<std::pair<std::string_view, std::string_view>>;

// Writes one line to stderr. `cid` may be empty. Field values named as PII are masked.
void Write(Level level, std::string_view cid, std::string_view msg, Fields fields = {});

inline void Debug(std::string_view cid, std::string_view msg, Fields f = {}) {
  if (Enabled(Level::kDebug)) Write(Level::kDebug, cid, msg, f);
}
inline void Info(std::string_view cid, std::string_view msg, Fields f = {}) {
  if (Enabled(Level::kInfo)) Write(Level::kInfo, cid, msg, f);
}
inline void Warn(std::string_view cid, std::string_view msg, Fields f = {}) {
  if (Enabled(Level::kWarn)) Write(Level::kWarn, cid, msg, f);
}
inline void Error(std::string_view cid, std::string_view msg, Fields f = {}) {
  if (Enabled(Level::kError)) Write(Level::kError, cid, msg, f);
}

// Bounds a line that could repeat at the rate of requests (one per call failed during an
// outage): the first one is written, then at most one per `interval`, each with the count of
// those held back since the last one written. Thread-safe.
//
//   uint64_t held = 0;
//   if (throttle_.Allow(absl::Now(), &held)) {
//     log::Warn(cid, "store failed", {{"error", msg}, {"suppressed", absl::StrCat(held)}});
//   }
class Throttle {
 public:
  explicit Throttle(absl::Duration interval = absl::Seconds(1)) : interval_(interval) {}
  // True: write the line now; `*suppressed` is the number of lines held back before it.
  bool Allow(absl::Time now, uint64_t* suppressed);

 private:
  const absl::Duration interval_;
  std::mutex mu_;
  absl::Time last_ = absl::InfinitePast();
  uint64_t held_ = 0;
};

// Returns `json` with the string/number values of PII fields (at any depth) replaced by "***".
// Text that is not JSON is returned with every `"field":value` occurrence masked all the same.
std::string MaskJson(std::string_view json);

// True if `field` is configured as PII.
bool IsPii(std::string_view field);

// Returns `text` (e.g. a partner's error message, which often echoes the request) with every
// value that a PII field holds anywhere in `event` replaced by "***": each string, and each
// number as JSON writes it, inside such a field's value at any depth, as it is and
// percent-encoded as in a URL's path (upper- or lower-case hex: "Jane%20Doe"). Longer values
// first, so one that holds another is masked whole. `text` as it is when no PII field is configured
// or none is in `event`.
std::string MaskPiiValues(std::string_view text, const rapidjson::Value& event);

// Streaming form: ESS_LOG(kInfo, cid) << "text";  The text is the msg of the line.
class LineBuilder {
 public:
  LineBuilder(Level level, std::string_view cid) : level_(level), cid_(cid) {}
  ~LineBuilder() { Write(level_, cid_, out_.str()); }
  template <typename T>
  LineBuilder& operator<<(const T& v) {
    out_ << v;
    return *this;
  }

 private:
  Level level_;
  std::string cid_;
  std::ostringstream out_;
};

}  // namespace ess::log

#define ESS_LOG(level, cid)                             \
  if (!::ess::log::Enabled(::ess::log::Level::level)) { \
  } else                                                \
    ::ess::log::LineBuilder(::ess::log::Level::level, cid)

#endif  // ESS_COMMON_LOG_H_
