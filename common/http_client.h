// Asynchronous HTTP client: libcurl's multi interface driven by one thread of its own.
//
// Many requests are in flight at once; connections are reused (keep-alive) per host; every
// request carries a deadline; TLS peers are verified; redirects are never followed.
//
//   ess::http::Client client({});
//   client.Send(std::move(req), [](absl::StatusOr<ess::http::Response> r) { ... });
//
// Completion callbacks run on the client's thread and must not block.
#ifndef ESS_COMMON_HTTP_CLIENT_H_
#define ESS_COMMON_HTTP_CLIENT_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ess::http {

using HeaderList = std::vector<std::pair<std::string, std::string>>;

struct Request {
  std::string method = "POST";
  std::string url;
  HeaderList headers;
  std::string body;
  // From Send to the answer, time spent waiting for a connection slot included.
  absl::Duration timeout = absl::Seconds(5);
  absl::Duration connect_timeout = absl::Seconds(2);
  // CA bundle for TLS verification; the system store when empty.
  std::string ca_file;
  // Body bytes kept; the rest is discarded and `truncated` set.
  size_t max_response_bytes = 64 * 1024;
};

struct Response {
  long status = 0;
  HeaderList headers;  // names lower-cased
  std::string body;
  bool truncated = false;
  absl::Duration elapsed;

  // First header with this (lower-case) name, or empty.
  std::string_view Header(std::string_view lower_name) const;
};

// OK if `name: value` is one header line: a name that is not empty and holds no ':', and
// neither holding a CR, LF or NUL (which would end the line early and let the rest be read as
// another header). Otherwise INVALID_ARGUMENT naming the header (never its value, which may be
// event data). The client refuses any request with such a header (below); adapters check their
// configured headers with it when they are built.
absl::Status CheckHeader(std::string_view name, std::string_view value);

// Transport failures (no HTTP status at all) come back as a status:
//   DEADLINE_EXCEEDED  the timeout or connect timeout passed
//   UNAVAILABLE        connection refused/reset, DNS failure, TLS handshake failure, a reply
//                      that is not HTTP, a CA (or CRL, certificate) file that cannot be read
//                      now (a rotation gap: callers check such files when they start)
//   INVALID_ARGUMENT   malformed URL or unsupported scheme, or a header CheckHeader refuses
//                      (nothing is sent)
//   FAILED_PRECONDITION the local TLS engine is unusable
//   CANCELLED          the client was stopped first
//   UNKNOWN            any other transport failure (the message has curl's text)
// Any HTTP status, 2xx or not, is an OK StatusOr holding the Response.
class Client {
 public:
  struct Options {
    // Requests in flight to one origin (scheme://host:port) at most; more wait in the client,
    // in order, and start as earlier ones finish.
    long max_connections_per_host = 64;
    long max_total_connections = 256;
  };
  using Callback = absl::AnyInvocable<void(absl::StatusOr<Response>) &&>;

  explicit Client(Options options);
  ~Client();  // Stop(); not from a completion callback
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Thread-safe.
  void Send(Request request, Callback done);
  // Blocking convenience for tools and tests. Not from a completion callback.
  absl::StatusOr<Response> SendAndWait(Request request);
  // Completes every pending request with CANCELLED and joins the thread. Later Sends
  // complete at once, on the caller's thread, with CANCELLED. From a completion callback
  // it does not wait for the thread (the destructor does).
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ess::http

#endif  // ESS_COMMON_HTTP_CLIENT_H_
