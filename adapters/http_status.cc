#include "adapters/http_status.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/pem.h"
#include "common/sv.h"

namespace ess::adapters {

absl::Status ClassifyHttpStatus(long status, std::span<const uint32_t> success_codes,
                                std::string_view body_excerpt) {
  const bool ok = success_codes.empty()
                      ? (status >= 200 && status < 300)
                      : std::find(success_codes.begin(), success_codes.end(),
                                  static_cast<uint32_t>(status)) != success_codes.end();
  if (ok) return absl::OkStatus();
  std::string msg = absl::StrCat("partner answered HTTP ", status);
  if (!body_excerpt.empty()) {
    // Masked before it is cut: the message goes to logs, records and the parked message's
    // x-ess-reason, and a partner's error often echoes the request.
    std::string masked = log::MaskJson(body_excerpt.substr(0, 4096));
    if (masked.size() > 200) masked.resize(200);
    absl::StrAppend(&msg, ": ", masked);
  }
  if (status == 408) return absl::DeadlineExceededError(msg);
  if (status == 429) return absl::ResourceExhaustedError(msg);
  // Too Early (RFC 8470): the partner would not take the request yet, and asks for it again.
  if (status == 425) return absl::UnavailableError(msg);
  if (status >= 500) return absl::UnavailableError(msg);
  if (status >= 300 && status < 400) {
    return absl::FailedPreconditionError(absl::StrCat(msg, " (redirects are not followed)"));
  }
  if (status == 401) return absl::UnauthenticatedError(msg);
  if (status == 403) return absl::PermissionDeniedError(msg);
  return absl::InvalidArgumentError(msg);
}

bool IsRetryable(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAborted:
      return true;
    default:
      return false;
  }
}

absl::Status CheckTransportFiles(std::string_view partner, std::string_view ca_file) {
  if (ca_file.empty()) return absl::OkStatus();
  absl::Status s = CheckCertificateFile(
      std::string(ca_file), absl::StrCat("partners[", ToAbsl(partner), "].settings.ca_file"));
  if (!s.ok()) return absl::InvalidArgumentError(s.message());
  return absl::OkStatus();
}

absl::Duration ParseRetryAfter(std::string_view value, absl::Time now) {
  if (value.empty()) return absl::ZeroDuration();
  int64_t seconds = 0;
  if (absl::SimpleAtoi(ToAbsl(value), &seconds)) {
    return seconds > 0 ? absl::Seconds(seconds) : absl::ZeroDuration();
  }
  absl::Time at;
  std::string err;
  if (absl::ParseTime("%a, %d %b %Y %H:%M:%S GMT", ToAbsl(value), absl::UTCTimeZone(), &at, &err) &&
      at > now) {
    return at - now;
  }
  return absl::ZeroDuration();
}

void SendAndJudge(http::Client* client, std::string_view kind, http::Request request,
                  std::string rendered, JudgeResponse judge, Adapter::PushDone done) {
  if (client == nullptr) {
    std::move(done)(PushResult{.status = absl::FailedPreconditionError(absl::StrCat(
                                   ToAbsl(kind), " adapter built without an HTTP client"))});
    return;
  }
  client->Send(std::move(request),
               [rendered = std::move(rendered), judge = std::move(judge),
                done = std::move(done)](absl::StatusOr<http::Response> resp) mutable {
                 PushResult result;
                 result.rendered = std::move(rendered);
                 if (!resp.ok()) {
                   result.status = resp.status();
                   result.detail = std::string(resp.status().message());
                 } else {
                   result.elapsed = resp->elapsed;
                   judge(*resp, &result);
                   if (!result.status.ok()) {
                     result.retry_after = ParseRetryAfter(resp->Header("retry-after"), absl::Now());
                   }
                 }
                 std::move(done)(std::move(result));
               });
}

}  // namespace ess::adapters
