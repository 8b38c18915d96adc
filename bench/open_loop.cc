#include "bench/open_loop.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <sys/time.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <memory>

#include "absl/strings/str_cat.h"
#include "bench/partner.h"

namespace ess::bench {
namespace {

timeval ToTimeval(int64_t ns) {
  ns = std::max<int64_t>(ns, 0);
  return timeval{.tv_sec = static_cast<time_t>(ns / 1'000'000'000),
                 .tv_usec = static_cast<suseconds_t>(ns % 1'000'000'000 / 1000)};
}

class Generator {
 public:
  Generator(const OpenLoopOptions& options,
            absl::FunctionRef<void(uint64_t, OpenLoopRequest*)> make)
      : o_(options), make_(make) {
    event_config* config = event_config_new();
    // Microsecond timers (timerfd), so that requests leave when they are due, not in
    // millisecond bursts.
    event_config_set_flag(config, EVENT_BASE_FLAG_PRECISE_TIMER);
    base_ = event_base_new_with_config(config);
    event_config_free(config);
    tick_ = evtimer_new(base_, &Generator::OnTick, this);
    drained_ = evtimer_new(base_, &Generator::OnDrained, this);
    host_header_ = absl::StrCat(o_.host, ":", o_.port);
  }

  ~Generator() {
    finished_ = true;  // evhttp_connection_free runs no callbacks, but be sure
    for (std::unique_ptr<Conn>& c : conns_) evhttp_connection_free(c->evcon);
    event_free(tick_);
    event_free(drained_);
    event_base_free(base_);
  }

  OpenLoopResult Run() {
    if (o_.count == 0 || o_.rate <= 0) return std::move(r_);
    r_.ok_latencies.reserve(o_.count);
    start_ns_ = MonoNs();
    r_.start_ns = start_ns_;
    OnTick(-1, 0, this);
    event_base_dispatch(base_);
    return std::move(r_);
  }

 private:
  struct Conn {
    Generator* gen;
    evhttp_connection* evcon;
    uint64_t index = 0;
    int64_t sent_ns = 0;  // when the request on it was dispatched
  };
  struct Waiting {
    uint64_t index;
    int64_t dispatched_ns;
    OpenLoopRequest request;
  };

  int64_t DueNs(uint64_t i) const {
    return start_ns_ + static_cast<int64_t>(std::llround(static_cast<double>(i) * 1e9 / o_.rate));
  }

  static void OnTick(evutil_socket_t, short, void* arg) {
    auto* g = static_cast<Generator*>(arg);
    int64_t now = MonoNs();
    while (g->next_ < g->o_.count && g->DueNs(g->next_) <= now) {
      g->Dispatch(g->next_++, now);
      now = MonoNs();
    }
    if (g->next_ < g->o_.count) {
      const timeval wait = ToTimeval(g->DueNs(g->next_) - now);
      evtimer_add(g->tick_, &wait);
    } else {
      g->r_.send_seconds = static_cast<double>(now - g->start_ns_) / 1e9;
      const timeval drain = ToTimeval(absl::ToInt64Nanoseconds(g->o_.drain));
      evtimer_add(g->drained_, &drain);
      g->MaybeDone();
    }
  }

  static void OnDrained(evutil_socket_t, short, void* arg) {
    auto* g = static_cast<Generator*>(arg);
    if (g->r_.first_error.empty()) {
      g->r_.first_error =
          absl::StrCat(g->r_.sent - g->r_.answered, " of ", g->r_.sent, " requests not answered ",
                       absl::FormatDuration(g->o_.drain), " after the last send");
    }
    event_base_loopbreak(g->base_);
  }

  // Request i, built now, goes on an idle connection, a new one, or waits for one.
  void Dispatch(uint64_t i, int64_t now) {
    OpenLoopRequest request;
    make_(i, &request);
    ++r_.sent;
    Conn* conn = nullptr;
    if (!idle_.empty()) {
      conn = idle_.back();
      idle_.pop_back();
    } else if (conns_.size() < static_cast<size_t>(std::max(o_.max_connections, 1))) {
      conn = NewConn();
    }
    if (conn == nullptr) {
      waiting_.push_back({.index = i, .dispatched_ns = now, .request = std::move(request)});
      return;
    }
    Send(conn, i, now, request);
  }

  Conn* NewConn() {
    auto conn = std::make_unique<Conn>();
    conn->gen = this;
    conn->evcon =
        evhttp_connection_base_new(base_, nullptr, o_.host.c_str(), static_cast<uint16_t>(o_.port));
    const timeval timeout = ToTimeval(absl::ToInt64Nanoseconds(o_.request_timeout));
    evhttp_connection_set_timeout_tv(conn->evcon, &timeout);
    evhttp_connection_set_retries(conn->evcon, 0);
    conns_.push_back(std::move(conn));
    return conns_.back().get();
  }

  void Send(Conn* conn, uint64_t i, int64_t dispatched_ns, const OpenLoopRequest& request) {
    conn->index = i;
    conn->sent_ns = dispatched_ns;
    evhttp_request* req = evhttp_request_new(&Generator::OnAnswer, conn);
    evkeyvalq* headers = evhttp_request_get_output_headers(req);
    evhttp_add_header(headers, "Host", host_header_.c_str());
    for (const auto& [name, value] : request.headers) {
      evhttp_add_header(headers, name.c_str(), value.c_str());
    }
    evhttp_add_header(headers, "Content-Length", absl::StrCat(request.body.size()).c_str());
    evbuffer_add(evhttp_request_get_output_buffer(req), request.body.data(), request.body.size());
    // On failure libevent frees the request without calling back.
    if (evhttp_make_request(conn->evcon, req, EVHTTP_REQ_POST, o_.path.c_str()) != 0) {
      Answered(conn, 0);
    }
  }

  static void OnAnswer(evhttp_request* req, void* arg) {
    auto* conn = static_cast<Conn*>(arg);
    if (conn->gen->finished_) return;
    conn->gen->Answered(conn, req == nullptr ? 0 : evhttp_request_get_response_code(req));
  }

  void Answered(Conn* conn, int status) {
    const int64_t now = MonoNs();
    ++r_.answered;
    if (status / 100 == 2) {
      ++r_.ok;
      r_.ok_latencies.emplace_back(conn->sent_ns, now - conn->sent_ns);
    } else if (r_.first_error.empty()) {
      r_.first_error = status == 0 ? absl::StrCat("request ", conn->index, ": no answer")
                                   : absl::StrCat("request ", conn->index, ": HTTP ", status);
    }
    if (!waiting_.empty()) {
      Waiting w = std::move(waiting_.front());
      waiting_.pop_front();
      Send(conn, w.index, w.dispatched_ns, w.request);
    } else {
      idle_.push_back(conn);
    }
    MaybeDone();
  }

  void MaybeDone() {
    if (next_ == o_.count && r_.answered == r_.sent) {
      finished_ = true;
      event_base_loopbreak(base_);
    }
  }

  const OpenLoopOptions& o_;
  absl::FunctionRef<void(uint64_t, OpenLoopRequest*)> make_;
  std::string host_header_;
  event_base* base_ = nullptr;
  event* tick_ = nullptr;
  event* drained_ = nullptr;
  int64_t start_ns_ = 0;
  uint64_t next_ = 0;
  bool finished_ = false;
  std::vector<std::unique_ptr<Conn>> conns_;
  std::vector<Conn*> idle_;
  std::deque<Waiting> waiting_;
  OpenLoopResult r_;
};

}  // namespace

OpenLoopResult PostOpenLoop(const OpenLoopOptions& options,
                            absl::FunctionRef<void(uint64_t, OpenLoopRequest*)> make) {
  Generator generator(options, make);
  return generator.Run();
}

}  // namespace ess::bench
