// What every adapter that speaks HTTP shares: how a partner's answer is classified, how a
// Retry-After is read, the transport settings, and the send path of a push.
//
//   2xx (or a configured success code)  OK
//   408                                 DEADLINE_EXCEEDED   (retryable)
//   429                                 RESOURCE_EXHAUSTED  (retryable)
//   425 (Too Early)                     UNAVAILABLE         (retryable)
//   5xx                                 UNAVAILABLE         (retryable)
//   3xx                                 FAILED_PRECONDITION (permanent; never followed)
//   401 / 403                           UNAUTHENTICATED / PERMISSION_DENIED (permanent)
//   other 4xx                           INVALID_ARGUMENT    (permanent)
#ifndef ESS_ADAPTERS_HTTP_STATUS_H_
#define ESS_ADAPTERS_HTTP_STATUS_H_

#include <cstdint>
#include <span>
#include <string_view>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "adapters/adapter.h"
#include "common/http_client.h"

namespace ess::adapters {

absl::Status ClassifyHttpStatus(long status, std::span<const uint32_t> success_codes,
                                std::string_view body_excerpt);

// True for the codes the lanes retry.
bool IsRetryable(const absl::Status& status);

// The transport settings every HTTP adapter's settings message has (timeout_ms,
// connect_timeout_ms, ca_file, max_response_bytes), with their defaults, applied to a request.
template <typename Settings>
void ApplyTransport(const Settings& s, http::Request& req) {
  req.timeout = absl::Milliseconds(s.timeout_ms() ? s.timeout_ms() : 5000);
  req.connect_timeout = absl::Milliseconds(s.connect_timeout_ms() ? s.connect_timeout_ms() : 2000);
  req.ca_file = s.ca_file();
  req.max_response_bytes = s.max_response_bytes() ? s.max_response_bytes() : 65536;
}

// Checks the transport settings' files when the adapter is built: a `ca_file` must be readable
// and hold at least one PEM certificate. INVALID_ARGUMENT "partners[NAME].settings.ca_file: ..."
// (the service exits 2 naming it), rather than every push failing at its TLS handshake.
absl::Status CheckTransportFiles(std::string_view partner, std::string_view ca_file);

template <typename Settings>
absl::Status CheckTransport(std::string_view partner, const Settings& s) {
  return CheckTransportFiles(partner, s.ca_file());
}

// The wait a Retry-After header asks for: delta-seconds ("120") or an HTTP-date
// ("Wed, 21 Oct 2026 07:28:00 GMT"), relative to `now`. Zero when absent, malformed or past.
absl::Duration ParseRetryAfter(std::string_view value, absl::Time now);

// Judges a partner's HTTP answer into `result` (status and detail); the adapter's own rules.
using JudgeResponse = absl::AnyInvocable<void(const http::Response&, PushResult*)>;

// The send path of every HTTP adapter's Push: sends `request` on `client` and completes `done`
// with `rendered`, the elapsed time and either the transport failure as it is or `judge`'s
// verdict on the answer; a failed answer's Retry-After is read. `kind` names the adapter in the
// error given when it was built without a client.
void SendAndJudge(http::Client* client, std::string_view kind, http::Request request,
                  std::string rendered, JudgeResponse judge, Adapter::PushDone done);

}  // namespace ess::adapters

#endif  // ESS_ADAPTERS_HTTP_STATUS_H_
