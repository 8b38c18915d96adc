#include "common/http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <list>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/node_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/sv.h"
#include "common/thread_name.h"

namespace ess::http {

std::string_view Response::Header(std::string_view lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return value;
  }
  return {};
}

namespace {

// curl_global_init is not guaranteed thread-safe on every build: run it once, before the
// first client exists.
void GlobalInitOnce() {
  static const bool initialized = [] {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return true;
  }();
  (void)initialized;
}

absl::StatusCode CodeFor(CURLcode code) {
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
      return absl::StatusCode::kDeadlineExceeded;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_FUNCTION_ARGUMENT:
      return absl::StatusCode::kInvalidArgument;
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
    case CURLE_QUIC_CONNECT_ERROR:
    case CURLE_PROXY:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_AGAIN:
    // A TLS file that the adapters checked when they were built and that went bad since (a CA
    // bundle being replaced, a rotation gap): retried, not parked, as it will likely be back.
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
      return absl::StatusCode::kUnavailable;
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
      return absl::StatusCode::kFailedPrecondition;
    case CURLE_OUT_OF_MEMORY:
      return absl::StatusCode::kResourceExhausted;
    case CURLE_ABORTED_BY_CALLBACK:
      return absl::StatusCode::kCancelled;
    default:
      return absl::StatusCode::kUnknown;
  }
}

bool IsHttpUrl(const std::string& url) {
  return absl::StartsWithIgnoreCase(url, "http://") || absl::StartsWithIgnoreCase(url, "https://");
}

long ClampMillis(absl::Duration d, long floor_ms) {
  const int64_t ms = absl::ToInt64Milliseconds(d);
  // curl reads 0 as "no timeout": a deadline never becomes that.
  return static_cast<long>(std::clamp<int64_t>(ms, floor_ms, INT32_MAX));
}

// "scheme://host:port" of a URL: the requests that may share connections.
std::string OriginOf(const std::string& url) {
  const size_t scheme = url.find("://");
  const size_t from = scheme == std::string::npos ? 0 : scheme + 3;
  return url.substr(0, url.find_first_of("/?#", from));
}

// What error messages name of a URL: its origin, "scheme://host:port", without any
// user:password. Never the path or query, which carry event data (a path placeholder's value,
// maybe personal, escaped past the masking of logs) or tokens a partner API may expect there.
std::string OriginForMessage(const std::string& url) {
  std::string origin = OriginOf(url);
  const size_t scheme = origin.find("://");
  const size_t from = scheme == std::string::npos ? 0 : scheme + 3;
  if (const size_t at = origin.rfind('@'); at != std::string::npos && at >= from) {
    origin.erase(from, at + 1 - from);
  }
  return origin;
}

struct Origin;

// One request while it is owned by the client thread. Transfers (and their curl easy
// handles) are recycled, so a steady stream of requests allocates no new handles.
struct Transfer {
  CURL* easy = nullptr;
  curl_slist* header_list = nullptr;
  Request request;
  Client::Callback done;
  Response response;
  absl::Time start;
  Origin* origin = nullptr;
  bool reused = false;
  std::list<Transfer>::iterator self;
  char error[CURL_ERROR_SIZE];

  ~Transfer() {
    if (header_list != nullptr) curl_slist_free_all(header_list);
    if (easy != nullptr) curl_easy_cleanup(easy);
  }
};

struct Pending {
  Request request;
  Client::Callback done;
  absl::Time deadline;  // Send + request.timeout
};

// Requests to one origin. Those beyond max_connections_per_host wait here, in order, rather
// than inside curl, which re-examines every transfer waiting for a connection whenever one
// frees up (a cost that grows with the number waiting, paid on every request).
struct Origin {
  long active = 0;  // handed to curl
  std::deque<Pending> waiting;
};

}  // namespace

struct Client::Impl {
  explicit Impl(Options opts) : options(opts) {
    GlobalInitOnce();
    multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, options.max_connections_per_host);
    curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, options.max_total_connections);
    // Keep as many idle connections as may be open, so bursts do not churn connections.
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, options.max_total_connections);
    thread = std::thread([this] {
      NameThisThread("ess-http-client");
      Run();
    });
    thread_id = thread.get_id();
  }

  ~Impl() {
    Stop();
    active.clear();
    idle.clear();
    curl_multi_cleanup(multi);
  }

  void Send(Request request, Callback done) {
    {
      absl::MutexLock lock(&mu);
      if (!stopping) {
        const bool first = incoming.empty();
        const absl::Time deadline = absl::Now() + request.timeout;
        incoming.push_back(Pending{std::move(request), std::move(done), deadline});
        if (std::this_thread::get_id() == thread_id) {
          // From a completion callback: the loop looks at the queue before it polls again.
          sent_from_callback = true;
        } else if (first) {
          // One wakeup per batch: the thread takes the whole queue when it wakes.
          curl_multi_wakeup(multi);
        }
        return;
      }
    }
    std::move(done)(absl::CancelledError("http client stopped"));
  }

  void Stop() {
    {
      absl::MutexLock lock(&mu);
      stopping = true;
    }
    curl_multi_wakeup(multi);
    // Called from a completion callback: the thread finishes after the callback returns.
    if (std::this_thread::get_id() == thread_id) return;
    absl::MutexLock lock(&join_mu);
    if (thread.joinable()) thread.join();
  }

  // The client thread.
  void Run() {
    std::vector<Pending> batch;
    for (;;) {
      {
        absl::MutexLock lock(&mu);
        if (stopping) break;
        batch.swap(incoming);
      }
      for (Pending& p : batch) Admit(std::move(p));
      batch.clear();
      StartReady();

      int running = 0;
      curl_multi_perform(multi, &running);
      DrainCompleted();
      if (sent_from_callback || !ready.empty()) {
        sent_from_callback = false;
        continue;
      }
      // Returns early on socket activity, curl's own timers, or curl_multi_wakeup().
      curl_multi_poll(multi, nullptr, 0, 1000, nullptr);
    }
    CancelAll();
  }

  // Starts the request, or queues it behind its origin's connection cap.
  void Admit(Pending&& pending) {
    Origin& origin = origins[OriginOf(pending.request.url)];
    if (origin.active >= host_cap) {
      origin.waiting.push_back(std::move(pending));
      return;
    }
    ++origin.active;
    Start(origin, std::move(pending));
  }

  // Starts the requests that a finished one let through (a failed start may add more).
  void StartReady() {
    while (!ready.empty()) {
      auto [origin, pending] = std::move(ready.front());
      ready.pop_front();
      Start(*origin, std::move(pending));
    }
  }

  // `origin.active` already counts this request.
  void Start(Origin& origin, Pending&& pending) {
    Transfer& t = Acquire();
    t.origin = &origin;
    t.request = std::move(pending.request);
    t.done = std::move(pending.done);
    t.start = absl::Now();
    // The timeout counts from Send: what the request waited for its slot is spent.
    const absl::Duration left = pending.deadline - t.start;
    if (left <= absl::ZeroDuration()) {
      Complete(t, absl::DeadlineExceededError(
                      absl::StrCat(t.request.method, " ", OriginForMessage(t.request.url),
                                   ": waited ", absl::FormatDuration(t.request.timeout),
                                   " for a free connection to the host and never started")));
      return;
    }
    t.request.timeout = left;
    // Whatever the caller put in a header (event data included) never becomes a header line of
    // its own, nor a header cut short at a NUL.
    for (const auto& [name, value] : t.request.headers) {
      if (absl::Status s = CheckHeader(name, value); !s.ok()) {
        Complete(t, absl::Status(s.code(), absl::StrCat(t.request.method, " ",
                                                        OriginForMessage(t.request.url), ": ",
                                                        s.message(), "; request not sent")));
        return;
      }
    }
    if (CURLcode rc = Configure(t); rc != CURLE_OK) {
      Finish(t, rc);
      return;
    }
    if (CURLMcode mrc = curl_multi_add_handle(multi, t.easy); mrc != CURLM_OK) {
      Complete(t, absl::InternalError(
                      absl::StrCat("curl_multi_add_handle: ", curl_multi_strerror(mrc))));
    }
  }

  Transfer& Acquire() {
    if (idle.empty()) {
      idle.emplace_front();
      Transfer& t = idle.front();
      t.self = idle.begin();
      t.easy = curl_easy_init();
    }
    active.splice(active.begin(), idle, idle.begin());
    return active.front();
  }

  void Release(Transfer& t) {
    if (t.header_list != nullptr) {
      curl_slist_free_all(t.header_list);
      t.header_list = nullptr;
    }
    t.request = Request{};
    t.response = Response{};
    t.done = nullptr;
    t.origin = nullptr;
    t.reused = true;
    idle.splice(idle.begin(), active, t.self);
    // Do not hoard handles after a burst beyond what the connection caps allow in flight.
    if (idle.size() > static_cast<size_t>(std::max(options.max_total_connections, 16L))) {
      idle.pop_back();
    }
  }

  CURLcode Configure(Transfer& t) {
    CURL* e = t.easy;
    if (t.reused) curl_easy_reset(e);
    const Request& r = t.request;
    t.error[0] = '\0';
    CURLcode rc = CURLE_OK;
    auto set = [&](CURLoption opt, auto value) {
      if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, value);
    };
    set(CURLOPT_PRIVATE, static_cast<void*>(&t));
    set(CURLOPT_ERRORBUFFER, t.error);
    set(CURLOPT_URL, r.url.c_str());
    // The path goes as the caller built it: curl would otherwise resolve "." and ".." segments
    // and send the request to another endpoint than the one the adapter rendered.
    set(CURLOPT_PATH_AS_IS, 1L);
    set(CURLOPT_PROTOCOLS_STR, "http,https");
    set(CURLOPT_NOSIGNAL, 1L);
    set(CURLOPT_FOLLOWLOCATION, 0L);
    set(CURLOPT_SSL_VERIFYPEER, 1L);
    set(CURLOPT_SSL_VERIFYHOST, 2L);
    if (!r.ca_file.empty()) set(CURLOPT_CAINFO, r.ca_file.c_str());
    const long timeout_ms = ClampMillis(r.timeout, 1);
    set(CURLOPT_TIMEOUT_MS, timeout_ms);
    set(CURLOPT_CONNECTTIMEOUT_MS, std::min(ClampMillis(r.connect_timeout, 1), timeout_ms));
    set(CURLOPT_WRITEFUNCTION, &OnBody);
    set(CURLOPT_WRITEDATA, static_cast<void*>(&t));
    set(CURLOPT_HEADERFUNCTION, &OnHeader);
    set(CURLOPT_HEADERDATA, static_cast<void*>(&t));

    const std::string& m = r.method;
    if (m == "HEAD") {
      set(CURLOPT_NOBODY, 1L);
    } else if (!r.body.empty() || m == "POST" || m == "PUT" || m == "PATCH") {
      // POSTFIELDS does not copy: the body lives in the transfer until it completes.
      set(CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
      set(CURLOPT_POSTFIELDS, r.body.data());
      if (m != "POST") set(CURLOPT_CUSTOMREQUEST, m.c_str());
    } else if (m != "GET") {
      set(CURLOPT_CUSTOMREQUEST, m.c_str());  // DELETE, OPTIONS, ... without a body
    }

    for (const auto& [name, value] : r.headers) {
      line_buffer.clear();
      absl::StrAppend(&line_buffer, name, ": ", value);
      t.header_list = curl_slist_append(t.header_list, line_buffer.c_str());
    }
    // A bare "Expect:" removes curl's 100-continue handshake (one round trip per body).
    t.header_list = curl_slist_append(t.header_list, "Expect:");
    if (t.header_list == nullptr) return CURLE_OUT_OF_MEMORY;
    set(CURLOPT_HTTPHEADER, t.header_list);
    return rc;
  }

  static size_t OnBody(char* data, size_t size, size_t count, void* arg) {
    auto* t = static_cast<Transfer*>(arg);
    const size_t n = size * count;
    std::string& body = t->response.body;
    const size_t cap = t->request.max_response_bytes;
    const size_t room = body.size() < cap ? cap - body.size() : 0;
    if (n > room) {
      body.append(data, room);
      t->response.truncated = true;
    } else {
      body.append(data, n);
    }
    // Always consume everything, so the connection stays reusable.
    return n;
  }

  static size_t OnHeader(char* data, size_t size, size_t count, void* arg) {
    auto* t = static_cast<Transfer*>(arg);
    const size_t n = size * count;
    absl::string_view line(data, n);
    if (absl::StartsWith(line, "HTTP/")) {
      // A new header block (after a 1xx interim response): keep only the final one.
      t->response.headers.clear();
      return n;
    }
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos || colon == 0) return n;
    std::string name(absl::StripAsciiWhitespace(line.substr(0, colon)));
    absl::AsciiStrToLower(&name);
    absl::string_view value = absl::StripAsciiWhitespace(line.substr(colon + 1));
    t->response.headers.emplace_back(std::move(name), std::string(value));
    return n;
  }

  void DrainCompleted() {
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      void* priv = nullptr;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
      const CURLcode result = msg->data.result;
      auto* t = static_cast<Transfer*>(priv);
      curl_multi_remove_handle(multi, t->easy);
      Finish(*t, result);
    }
  }

  void Finish(Transfer& t, CURLcode result) {
    if (result == CURLE_OK) {
      curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &t.response.status);
      t.response.elapsed = absl::Now() - t.start;
      Complete(t, std::move(t.response));
      return;
    }
    // curl's error buffer is the more specific text when it has one.
    const absl::string_view detail =
        t.error[0] != '\0' ? absl::string_view(t.error) : curl_easy_strerror(result);
    const std::string message =
        absl::StrCat(t.request.method, " ", OriginForMessage(t.request.url), ": ", detail);
    absl::StatusCode code = CodeFor(result);
    if (result == CURLE_UNSUPPORTED_PROTOCOL && IsHttpUrl(t.request.url)) {
      code = absl::StatusCode::kUnavailable;  // the peer answered something that is not HTTP
    }
    Complete(t, absl::Status(code, message));
  }

  // Recycles the transfer, lets the next request to its origin through, then runs the callback
  // (which may Send again).
  void Complete(Transfer& t, absl::StatusOr<Response> result) {
    Callback done = std::move(t.done);
    Origin* origin = t.origin;
    Release(t);
    if (origin != nullptr) {
      if (origin->waiting.empty()) {
        --origin->active;
      } else {  // the slot passes straight to the next request
        ready.emplace_back(origin, std::move(origin->waiting.front()));
        origin->waiting.pop_front();
      }
    }
    if (done) std::move(done)(std::move(result));
  }

  void CancelAll() {
    while (!active.empty()) {
      Transfer& t = active.front();
      curl_multi_remove_handle(multi, t.easy);
      Complete(t, absl::CancelledError("http client stopped"));
    }
    std::vector<Pending> rest;
    for (auto& [origin, pending] : ready) rest.push_back(std::move(pending));
    ready.clear();
    for (auto& [key, origin] : origins) {
      for (Pending& p : origin.waiting) rest.push_back(std::move(p));
      origin.waiting.clear();
    }
    {
      absl::MutexLock lock(&mu);
      for (Pending& p : incoming) rest.push_back(std::move(p));
      incoming.clear();
    }
    for (Pending& p : rest) {
      if (p.done) std::move(p.done)(absl::CancelledError("http client stopped"));
    }
  }

  const Options options;
  // Requests in flight per origin; the rest wait in `origins`.
  const long host_cap = options.max_connections_per_host > 0 ? options.max_connections_per_host
                                                             : std::numeric_limits<long>::max();
  CURLM* multi = nullptr;
  std::thread thread;
  std::thread::id thread_id;  // set before any Send, never changed
  absl::Mutex join_mu;

  absl::Mutex mu;
  std::vector<Pending> incoming ABSL_GUARDED_BY(mu);
  bool stopping ABSL_GUARDED_BY(mu) = false;

  // Client thread only.
  std::list<Transfer> active;
  std::list<Transfer> idle;
  absl::node_hash_map<std::string, Origin> origins;  // stable addresses: transfers point in
  std::deque<std::pair<Origin*, Pending>> ready;     // let through, not yet started
  std::string line_buffer;
  bool sent_from_callback = false;
};

Client::Client(Options options) : impl_(std::make_unique<Impl>(options)) {}

Client::~Client() = default;

void Client::Send(Request request, Callback done) {
  impl_->Send(std::move(request), std::move(done));
}

absl::StatusOr<Response> Client::SendAndWait(Request request) {
  absl::Notification finished;
  absl::StatusOr<Response> out;
  impl_->Send(std::move(request), [&](absl::StatusOr<Response> r) {
    out = std::move(r);
    finished.Notify();
  });
  finished.WaitForNotification();
  return out;
}

void Client::Stop() { impl_->Stop(); }

absl::Status CheckHeader(std::string_view name, std::string_view value) {
  constexpr std::string_view kLineBreaks("\r\n\0", 3);
  if (name.empty()) return absl::InvalidArgumentError("a header has an empty name");
  if (name.find_first_of(kLineBreaks) != std::string_view::npos || name.find(':') != name.npos) {
    return absl::InvalidArgumentError(absl::StrCat("header name \"", absl::CHexEscape(ToAbsl(name)),
                                                   "\" holds a CR, LF, NUL or ':'"));
  }
  if (value.find_first_of(kLineBreaks) != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("header ", ToAbsl(name), ": value holds a CR, LF or NUL"));
  }
  return absl::OkStatus();
}

}  // namespace ess::http
