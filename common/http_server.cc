#include "common/http_server.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "common/thread_name.h"

namespace ess::http {

std::string_view ServerRequest::Header(std::string_view lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return value;
  }
  return {};
}

namespace {

// libevent must know about threads before the first event_base exists, so that
// event_active() may be called from other threads.
// Also: a peer that closed its end must not kill the process when libevent writes to it
// with write(2), so SIGPIPE is ignored unless the program chose a handler of its own.
void InitLibeventOnce() {
  static const bool initialized = [] {
    struct sigaction current {};
    if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
      signal(SIGPIPE, SIG_IGN);
    }
    return evthread_use_pthreads() == 0;
  }();
  (void)initialized;
}

const char* MethodName(evhttp_cmd_type type) {
  switch (type) {
    case EVHTTP_REQ_GET:
      return "GET";
    case EVHTTP_REQ_POST:
      return "POST";
    case EVHTTP_REQ_HEAD:
      return "HEAD";
    case EVHTTP_REQ_PUT:
      return "PUT";
    case EVHTTP_REQ_DELETE:
      return "DELETE";
    case EVHTTP_REQ_OPTIONS:
      return "OPTIONS";
    case EVHTTP_REQ_TRACE:
      return "TRACE";
    case EVHTTP_REQ_CONNECT:
      return "CONNECT";
    case EVHTTP_REQ_PATCH:
      return "PATCH";
  }
  return "UNKNOWN";
}

// What a Responder dropped without Send answers.
ServerResponse Unanswered() {
  return {.status = 500, .body = R"({"error":"the handler did not answer"})"};
}

// Splits "host:port" or "[v6]:port".
absl::Status ParseListen(const std::string& listen, std::string* host, uint16_t* port) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen address '", listen, "' is not host:port"));
  }
  absl::string_view h(listen.data(), colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  uint32_t p = 0;
  if (!absl::SimpleAtoi(absl::string_view(listen).substr(colon + 1), &p) || p > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen address '", listen, "' has no valid port"));
  }
  *host = std::string(h);
  *port = static_cast<uint16_t>(p);
  return absl::OkStatus();
}

}  // namespace

class Dispatcher;

struct Responder::State {
  std::shared_ptr<Dispatcher> dispatcher;
  std::atomic<bool> answered{false};
  // Written by the answering thread before Deliver, read on the loop thread after it.
  ServerResponse response;
  // Loop thread only. `request` is null once libevent freed it (connection gone).
  evhttp_request* request = nullptr;
  evhttp_connection* connection = nullptr;
  absl::Time deadline = absl::InfiniteFuture();
};

// The server's reply path: the only part a Responder may reach, from any thread. It
// outlives the server (Responders keep it) and drops replies once the server stopped.
class Dispatcher {
 public:
  // Replies may be delivered from other threads from now on.
  void Open(event* wake) {
    absl::MutexLock lock(&mu_);
    wake_ = wake;
  }
  // Late replies are dropped from now on, without touching libevent.
  void Close() {
    std::vector<std::shared_ptr<Responder::State>> dropped;
    absl::MutexLock lock(&mu_);
    wake_ = nullptr;
    dropped.swap(queue_);
  }

  // Any thread: hands an answered request to the loop thread (replies at once when
  // already on it).
  void Deliver(std::shared_ptr<Responder::State> state) {
    if (current == this) {
      Reply(*state);
      return;
    }
    absl::MutexLock lock(&mu_);
    if (wake_ == nullptr) return;  // stopped
    const bool idle = queue_.empty();
    queue_.push_back(std::move(state));
    // One activation per batch: Drain takes the whole queue.
    if (idle) event_active(wake_, EV_READ, 0);
  }

  // Loop thread: replies to everything delivered so far.
  void Drain() {
    {
      absl::MutexLock lock(&mu_);
      batch_.swap(queue_);
    }
    for (auto& state : batch_) Reply(*state);
    batch_.clear();
  }

  // Loop thread: remembers the unanswered request of `conn`. libevent frees a connection's
  // pending request when the connection goes away; the server's close callback
  // (OnConnectionClosed) makes the state forget it first.
  void Track(evhttp_connection* conn, std::shared_ptr<Responder::State> state) {
    inflight_.insert_or_assign(conn, std::move(state));
    unanswered_.store(inflight_.size(), std::memory_order_release);
  }

  // Loop thread: `conn` is about to be freed.
  void OnConnectionClosed(evhttp_connection* conn) {
    auto it = inflight_.find(conn);
    if (it == inflight_.end()) return;
    Responder::State& s = *it->second;
    // A request still attached to the connection is freed right after this callback. One
    // already detached (libevent does that on EOF/timeout) stays ours until we reply,
    // which frees it without writing.
    if (s.request != nullptr && evhttp_request_get_connection(s.request) != nullptr) {
      s.request = nullptr;
    }
    s.connection = nullptr;
    inflight_.erase(it);
    unanswered_.store(inflight_.size(), std::memory_order_release);
  }

  // Any thread: requests handed to the handler and not answered yet (written or gone).
  size_t Unanswered() const { return unanswered_.load(std::memory_order_acquire); }
  // Loop thread: from now on every answer asks the client to close its connection.
  void CloseAfterAnswers() { close_after_answers_ = true; }

  // Loop thread: answers 503 for every request whose handler did not answer in time.
  void ExpireOverdue(absl::Time now) {
    overdue_.clear();
    for (const auto& [conn, state] : inflight_) {
      if (state->deadline <= now) overdue_.push_back(state);
    }
    for (auto& state : overdue_) {
      // Whoever flips `answered` first owns `response`; a later Send is ignored.
      if (state->answered.exchange(true)) continue;
      state->response = {.status = 503,
                         .headers = {{"Retry-After", "1"}},
                         .body = R"({"error":"the request timed out in the server"})"};
      Reply(*state);
    }
    overdue_.clear();
  }

  // After the loop thread ended, before evhttp_free.
  void ForgetAll() {
    for (auto& [conn, state] : inflight_) {
      state->request = nullptr;
      state->connection = nullptr;
    }
    inflight_.clear();
  }

  // Set on the loop thread to its dispatcher.
  static thread_local const Dispatcher* current;

 private:
  void Reply(Responder::State& s) {
    evhttp_request* req = s.request;
    if (req == nullptr) return;  // the client went away
    s.request = nullptr;
    if (s.connection != nullptr) {
      auto it = inflight_.find(s.connection);
      if (it != inflight_.end() && it->second.get() == &s) inflight_.erase(it);
      unanswered_.store(inflight_.size(), std::memory_order_release);
      s.connection = nullptr;
    }
    const ServerResponse& resp = s.response;
    evkeyvalq* out = evhttp_request_get_output_headers(req);
    if (close_after_answers_) evhttp_add_header(out, "Connection", "close");
    if (!resp.content_type.empty()) {
      evhttp_add_header(out, "Content-Type", resp.content_type.c_str());
    }
    for (const auto& [name, value] : resp.headers) {
      // libevent drops names or values with CR/LF (no header injection).
      evhttp_add_header(out, name.c_str(), value.c_str());
    }
    if (!resp.body.empty()) {
      evbuffer_add(evhttp_request_get_output_buffer(req), resp.body.data(), resp.body.size());
    }
    const int status = (resp.status >= 100 && resp.status <= 599) ? resp.status : 500;
    evhttp_send_reply(req, status, nullptr, nullptr);
  }

  absl::Mutex mu_;
  std::vector<std::shared_ptr<Responder::State>> queue_ ABSL_GUARDED_BY(mu_);
  event* wake_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::atomic<size_t> unanswered_{0};
  // Loop thread only.
  bool close_after_answers_ = false;
  std::vector<std::shared_ptr<Responder::State>> batch_;
  std::vector<std::shared_ptr<Responder::State>> overdue_;
  absl::flat_hash_map<evhttp_connection*, std::shared_ptr<Responder::State>> inflight_;
};

thread_local const Dispatcher* Dispatcher::current = nullptr;

struct Server::Impl {
  Impl(Options opts, Handler h)
      : options(std::move(opts)),
        handler(std::move(h)),
        dispatcher(std::make_shared<Dispatcher>()) {}

  ~Impl() { Stop(); }

  absl::Status Start() {
    if (base != nullptr) return absl::FailedPreconditionError("server already started");
    std::string host;
    uint16_t requested_port = 0;
    if (absl::Status s = ParseListen(options.listen, &host, &requested_port); !s.ok()) return s;
    InitLibeventOnce();
    // With the change list, libevent folds the event changes of one loop turn into one
    // epoll_ctl per socket: a keep-alive request took four epoll_ctl calls (strace), now two,
    // and the server's CPU per request fell to 0.88x (bench/README.md, Profiling 40). Not safe
    // with dup()ed descriptors; this server hands libevent only sockets it accepted itself.
    event_config* config = event_config_new();
    if (config != nullptr) {
      event_config_set_flag(config, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
      base = event_base_new_with_config(config);
      event_config_free(config);
    }
    http = base != nullptr ? evhttp_new(base) : nullptr;
    if (http == nullptr) {
      Cleanup();
      return absl::ResourceExhaustedError("cannot create the libevent http server");
    }
    evhttp_set_max_body_size(http, static_cast<ev_ssize_t>(options.max_body_bytes));
    evhttp_set_max_headers_size(http, kMaxHeaderBytes);
    if (options.request_timeout_seconds > 0) {
      evhttp_set_timeout(http, options.request_timeout_seconds);
    }
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                         EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                         EVHTTP_REQ_PATCH);
    // Read an oversized body to its end before answering 413, so the client sees the 413
    // instead of a connection reset.
    evhttp_set_flags(http, EVHTTP_SERVER_LINGERING_CLOSE);
    evhttp_set_gencb(http, &Impl::OnRequest, this);
    evhttp_set_bevcb(http, &Impl::OnAccept, this);

    evhttp_bound_socket* bound = evhttp_bind_socket_with_handle(http, host.c_str(), requested_port);
    if (bound == nullptr) {
      const int err = errno;
      Cleanup();
      return absl::UnavailableError(
          absl::StrCat("cannot listen on ", options.listen, ": ", std::strerror(err)));
    }
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    const evutil_socket_t fd = evhttp_bound_socket_get_fd(bound);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      const auto* v4 = reinterpret_cast<const sockaddr_in*>(&addr);
      const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&addr);
      bound_port = ntohs(addr.ss_family == AF_INET6 ? v6->sin6_port : v4->sin_port);
    }
    wake = event_new(base, -1, 0, &Impl::OnWake, dispatcher.get());
    stop = event_new(base, -1, 0, &Impl::OnStop, base);
    quiesce = event_new(base, -1, 0, &Impl::OnQuiesce, this);
    listener = bound;
    sweep = event_new(base, -1, EV_PERSIST, &Impl::OnSweep, this);
    adopt = event_new(base, -1, 0, &Impl::OnAdopt, this);
    resume = evtimer_new(base, &Impl::OnResume, this);
    if (wake == nullptr || stop == nullptr || sweep == nullptr || quiesce == nullptr ||
        adopt == nullptr || resume == nullptr) {
      Cleanup();
      return absl::ResourceExhaustedError("cannot create libevent events");
    }
    const timeval every = {kSweepSeconds, 0};
    event_add(sweep, &every);
    // libevent's listener retries a failed accept() at once, so a process out of file
    // descriptors would spin on it: OnAcceptError pauses accepting for a second instead.
    evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(bound), &Impl::OnAcceptError);
    dispatcher->Open(wake);
    thread = std::thread([this] {
      NameThisThread("ess-http-server");
      Dispatcher::current = dispatcher.get();
      current = this;
      event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
      current = nullptr;
      Dispatcher::current = nullptr;
    });
    return absl::OkStatus();
  }

  bool Drain(absl::Duration timeout) {
    if (base == nullptr) return true;
    const absl::Time until = absl::Now() + timeout;
    event_active(quiesce, EV_READ, 0);
    while (dispatcher->Unanswered() > 0 && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    // The last answers were handed to their sockets' buffers; give the loop a moment to
    // write them out before Stop frees the connections.
    absl::SleepFor(absl::Milliseconds(50));
    return dispatcher->Unanswered() == 0;
  }

  void Stop() {
    if (base == nullptr) return;
    dispatcher->Close();
    // Not event_base_loopbreak() from here: a break requested before the loop started
    // would be forgotten. An active event is kept until the loop runs it.
    if (stop != nullptr) event_active(stop, EV_READ, 0);
    if (thread.joinable()) thread.join();
    Cleanup();
  }

  // Frees libevent state; the loop thread is not running.
  void Cleanup() {
    // evhttp_free frees every connection and its pending request, without our callbacks.
    dispatcher->ForgetAll();
    for (auto& [evcon, conn] : connections) {
      evhttp_connection_set_closecb(evcon, nullptr, nullptr);
      Release(*conn);
    }
    connections.clear();
    for (bufferevent* bev : unadopted) bufferevent_decref(bev);
    unadopted.clear();
    open_connections.store(0, std::memory_order_relaxed);
    listener = nullptr;  // evhttp_free frees it
    if (http != nullptr) evhttp_free(http);
    http = nullptr;
    if (wake != nullptr) event_free(wake);
    wake = nullptr;
    if (stop != nullptr) event_free(stop);
    stop = nullptr;
    if (quiesce != nullptr) event_free(quiesce);
    quiesce = nullptr;
    if (sweep != nullptr) event_free(sweep);
    sweep = nullptr;
    if (adopt != nullptr) event_free(adopt);
    adopt = nullptr;
    if (resume != nullptr) event_free(resume);
    resume = nullptr;
    if (base != nullptr) event_base_free(base);
    base = nullptr;
  }

  // --- Connections -----------------------------------------------------------------------
  // libevent 2.1's evhttp has no hook for a new or a closed connection, nor for a request that
  // is still arriving. It does let us make each connection's bufferevent (OnAccept), so we
  // hold a reference to it and, once evhttp set it up (OnAdopt, later in the same turn of
  // the loop), read its evhttp_connection back from its callback argument: then a close
  // callback counts the connection out, and a callback on its input buffer sees a request's
  // first byte arrive. The reference keeps the bufferevent, and with BEV_OPT_CLOSE_ON_FREE its
  // socket, until we let go, so nothing we hold can be freed or reused under us.
  struct Connection {
    bufferevent* bev = nullptr;
    evbuffer_cb_entry* watch = nullptr;
    // When the first byte of a request evhttp has not handed over yet arrived.
    absl::Time request_since = absl::InfiniteFuture();
  };

  // Loop thread (evhttp's bevcb, for each accepted socket).
  static bufferevent* OnAccept(event_base* base, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    bufferevent* bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (bev == nullptr) return nullptr;  // evhttp then tries one of its own
    bufferevent_incref(bev);
    self->unadopted.push_back(bev);
    if (self->unadopted.size() == 1) event_active(self->adopt, EV_READ, 0);
    self->CountConnections();
    if (self->AtCap()) self->PauseAccepting("at its connection cap");
    return bev;
  }

  static void OnAdopt(evutil_socket_t, short, void* arg) { static_cast<Impl*>(arg)->Adopt(); }

  void Adopt() {
    for (bufferevent* bev : unadopted) {
      bufferevent_data_cb read_cb = nullptr;
      void* evcon = nullptr;
      bufferevent_getcb(bev, &read_cb, nullptr, nullptr, &evcon);
      if (read_cb == nullptr || evcon == nullptr) {  // evhttp already let it go
        bufferevent_decref(bev);
        continue;
      }
      auto conn = std::make_unique<Connection>();
      conn->bev = bev;
      conn->watch = evbuffer_add_cb(bufferevent_get_input(bev), &Impl::OnInput, conn.get());
      evhttp_connection_set_closecb(static_cast<evhttp_connection*>(evcon), &Impl::OnClosed, this);
      connections.emplace(static_cast<evhttp_connection*>(evcon), std::move(conn));
    }
    unadopted.clear();
    CountConnections();
  }

  static void OnInput(evbuffer*, const evbuffer_cb_info* info, void* arg) {
    auto* conn = static_cast<Connection*>(arg);
    if (info->n_added > 0 && conn->request_since == absl::InfiniteFuture()) {
      conn->request_since = absl::Now();
    }
  }

  // Loop thread: evhttp is about to free `evcon` (and then its bufferevent).
  static void OnClosed(evhttp_connection* evcon, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    self->dispatcher->OnConnectionClosed(evcon);
    if (auto it = self->connections.find(evcon); it != self->connections.end()) {
      self->Release(*it->second);
      self->connections.erase(it);
      self->CountConnections();
    }
    if (self->paused && !self->backing_off && !self->AtCap()) self->ResumeAccepting();
  }

  void Release(Connection& conn) {
    if (conn.watch != nullptr)
      evbuffer_remove_cb_entry(bufferevent_get_input(conn.bev), conn.watch);
    conn.watch = nullptr;
    bufferevent_decref(conn.bev);  // evhttp's bufferevent_free is the last
  }

  void CountConnections() {
    open_connections.store(connections.size() + unadopted.size(), std::memory_order_relaxed);
  }

  bool AtCap() const {
    return options.max_connections > 0 &&
           connections.size() + unadopted.size() >= options.max_connections;
  }

  void PauseAccepting(std::string_view why) {
    if (listener == nullptr || paused) return;
    evconnlistener_disable(evhttp_bound_socket_get_listener(listener));
    paused = true;
    // One line a minute at most: a server held at its cap pauses and resumes all the time.
    const absl::Time now = absl::Now();
    if (now - last_pause_log >= absl::Minutes(1)) {
      last_pause_log = now;
      log::Warn("", "HTTP server not accepting connections for now",
                {{"listen", options.listen},
                 {"why", std::string(why)},
                 {"open_connections", absl::StrCat(connections.size() + unadopted.size())}});
    }
  }

  void ResumeAccepting() {
    paused = false;
    if (listener != nullptr) evconnlistener_enable(evhttp_bound_socket_get_listener(listener));
  }

  // Loop thread: accept() failed with an error libevent does not retry (EMFILE, ENFILE,
  // ENOBUFS...). The listener's own argument is evhttp's, hence `current`.
  static void OnAcceptError(evconnlistener*, void*) {
    const int err = EVUTIL_SOCKET_ERROR();
    Impl* self = current;
    if (self == nullptr || self->backing_off) return;
    self->PauseAccepting(
        absl::StrCat("accept() failed: ", evutil_socket_error_to_string(err), "; again in 1 s"));
    self->backing_off = true;
    const timeval one_second = {1, 0};
    evtimer_add(self->resume, &one_second);
  }

  static void OnResume(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    self->backing_off = false;
    if (self->paused && !self->AtCap()) self->ResumeAccepting();
  }

  // Loop thread, once a second: closes each connection whose request began arriving longer
  // than the request timeout ago, the way evhttp closes one that its own timeout struck; and
  // lets go of any connection evhttp freed without its close callback.
  void SweepConnections(absl::Time now) {
    const absl::Time too_old = options.request_timeout_seconds > 0
                                   ? now - absl::Seconds(options.request_timeout_seconds)
                                   : absl::InfinitePast();
    swept.clear();
    slow.clear();
    for (const auto& [evcon, conn] : connections) {
      bufferevent_data_cb read_cb = nullptr;
      bufferevent_getcb(conn->bev, &read_cb, nullptr, nullptr, nullptr);
      if (read_cb == nullptr) {
        swept.push_back(evcon);
      } else if (conn->request_since <= too_old) {
        slow.push_back(evcon);
      }
    }
    for (evhttp_connection* evcon : swept) {
      auto it = connections.find(evcon);
      Release(*it->second);
      connections.erase(it);
    }
    for (evhttp_connection* evcon : slow) {
      // Runs evhttp's error callback at once: it frees this connection (OnClosed), no other.
      auto it = connections.find(evcon);
      if (it == connections.end()) continue;
      bufferevent_trigger_event(it->second->bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, 0);
    }
    CountConnections();
    if (paused && !backing_off && !AtCap()) ResumeAccepting();
  }

  static void OnRequest(evhttp_request* req, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    evhttp_connection* conn = evhttp_request_get_connection(req);
    if (!self->unadopted.empty()) self->Adopt();
    // Arrived whole: from here the request's deadline is the dispatcher's.
    if (auto it = self->connections.find(conn); it != self->connections.end()) {
      it->second->request_since = absl::InfiniteFuture();
    }
    ServerRequest r;
    r.method = MethodName(evhttp_request_get_command(req));
    if (const evhttp_uri* uri = evhttp_request_get_evhttp_uri(req); uri != nullptr) {
      const char* path = evhttp_uri_get_path(uri);
      r.path = (path != nullptr && *path != '\0') ? path : "/";
      if (const char* query = evhttp_uri_get_query(uri); query != nullptr) r.query = query;
    }
    const evkeyvalq* in = evhttp_request_get_input_headers(req);
    int lengths = 0;
    for (const evkeyval* h = in->tqh_first; h != nullptr; h = h->next.tqe_next) {
      std::string name(h->key);
      absl::AsciiStrToLower(&name);
      lengths += name == "content-length" ? 1 : 0;
      r.headers.emplace_back(std::move(name), h->value);
    }
    evbuffer* body = evhttp_request_get_input_buffer(req);
    if (const size_t n = evbuffer_get_length(body); n > 0) {
      r.body.resize(n);
      evbuffer_remove(body, r.body.data(), n);
    }
    char* address = nullptr;
    ev_uint16_t port = 0;
    evhttp_connection_get_peer(conn, &address, &port);
    const absl::string_view host = address != nullptr ? address : "";
    r.peer = absl::StrContains(host, ':') ? absl::StrCat("[", host, "]:", port)
                                          : absl::StrCat(host, ":", port);

    auto state = std::make_shared<Responder::State>();
    state->dispatcher = self->dispatcher;
    state->request = req;
    state->connection = conn;
    if (self->options.request_timeout_seconds > 0) {
      state->deadline = absl::Now() + absl::Seconds(self->options.request_timeout_seconds);
    }
    self->dispatcher->Track(conn, state);
    // A body whose length two parsers could read differently lets a request hide in another's
    // body behind a proxy that reads it the other way: refused, and the connection closed (RFC
    // 9112, 6.3). libevent takes the first of several Content-Length headers (and refuses one
    // beside Transfer-Encoding itself).
    if (lengths > 1) {
      Responder(std::move(state))
          .Send({.status = 400,
                 .headers = {{"Connection", "close"}},
                 .body = R"({"error":"more than one Content-Length header"})"});
      return;
    }
    self->handler(std::move(r), Responder(std::move(state)));
  }

  static void OnSweep(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    const absl::Time now = absl::Now();
    if (self->options.request_timeout_seconds > 0) self->dispatcher->ExpireOverdue(now);
    self->SweepConnections(now);
  }

  // Loop thread (Drain): no new connections; open ones close after their next answer.
  static void OnQuiesce(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    if (self->listener != nullptr) evhttp_del_accept_socket(self->http, self->listener);
    self->listener = nullptr;
    self->dispatcher->CloseAfterAnswers();
  }

  static void OnStop(evutil_socket_t, short, void* arg) {
    event_base_loopbreak(static_cast<event_base*>(arg));
  }

  static void OnWake(evutil_socket_t, short, void* arg) { static_cast<Dispatcher*>(arg)->Drain(); }

  static constexpr ev_ssize_t kMaxHeaderBytes = 64 * 1024;
  // How often unanswered requests are checked against their deadline.
  static constexpr time_t kSweepSeconds = 1;

  const Options options;
  const Handler handler;
  const std::shared_ptr<Dispatcher> dispatcher;
  event_base* base = nullptr;
  evhttp* http = nullptr;
  event* wake = nullptr;
  event* stop = nullptr;
  event* sweep = nullptr;
  event* quiesce = nullptr;
  evhttp_bound_socket* listener = nullptr;
  int bound_port = 0;
  std::thread thread;
  // Loop thread only (and Cleanup, after it):
  absl::flat_hash_map<evhttp_connection*, std::unique_ptr<Connection>> connections;
  std::vector<bufferevent*> unadopted;  // accepted in this turn of the loop
  // SweepConnections' lists: connections evhttp freed without its close callback, and those
  // whose request is too slow.
  std::vector<evhttp_connection*> swept, slow;
  event* adopt = nullptr;
  event* resume = nullptr;
  bool paused = false;       // not accepting: at the cap, or backing off
  bool backing_off = false;  // after a failed accept(), until `resume` fires
  absl::Time last_pause_log = absl::InfinitePast();
  std::atomic<size_t> open_connections{0};
  // Set on the loop thread to its server.
  static thread_local Impl* current;
};

thread_local Server::Impl* Server::Impl::current = nullptr;

Responder::Responder(std::shared_ptr<State> state) : state_(std::move(state)) {}

Responder::Responder(Responder&&) noexcept = default;

Responder& Responder::operator=(Responder&& other) noexcept {
  if (this != &other) {
    if (state_ != nullptr) std::move(*this).Send(Unanswered());
    state_ = std::move(other.state_);
  }
  return *this;
}

Responder::~Responder() {
  if (state_ != nullptr) std::move(*this).Send(Unanswered());
}

void Responder::Send(ServerResponse response) && {
  std::shared_ptr<State> state = std::move(state_);
  if (state == nullptr || state->answered.exchange(true)) return;
  state->response = std::move(response);
  Dispatcher* dispatcher = state->dispatcher.get();
  dispatcher->Deliver(std::move(state));
}

Server::Server(Options options, Handler handler)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler))) {}

Server::~Server() = default;

absl::Status Server::Start() { return impl_->Start(); }

int Server::port() const { return impl_->bound_port; }

size_t Server::connections() const {
  return impl_->open_connections.load(std::memory_order_relaxed);
}

bool Server::Drain(absl::Duration timeout) { return impl_->Drain(timeout); }

void Server::Stop() { impl_->Stop(); }

}  // namespace ess::http
