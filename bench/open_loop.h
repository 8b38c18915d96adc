// An open-loop HTTP load generator for the benchmark's latency runs: requests leave on
// schedule (request i at start + i / rate) whatever the answers do, each on a keep-alive
// connection of its own at that moment, and each is timed from its send to its answer.
//
// It runs one libevent loop on the calling thread (libevent's HTTP client, as lean as the
// server it drives), so that on a 2-core machine the load costs the system under test as
// little CPU as it can: ess::http::Client (libcurl, one thread, made for the lanes' partner
// requests) took ~115 us per request at 3,300 requests/s, 45% of a core taken from the lanes.
//
//   OpenLoopResult r = PostOpenLoop({.port = 8080, .path = "/hook", .rate = 1000, .count = 10000},
//                                   [](uint64_t i, OpenLoopRequest* req) { req->body = "{}"; });
#ifndef ESS_BENCH_OPEN_LOOP_H_
#define ESS_BENCH_OPEN_LOOP_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/time/time.h"

namespace ess::bench {

struct OpenLoopOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string path = "/";
  // Requests per second, and how many in all.
  double rate = 1000;
  uint64_t count = 0;
  // Keep-alive connections at most. A request due while all are busy waits for the first one
  // free; its time still starts when it was due, so the generator's own queue is not hidden.
  int max_connections = 256;
  // Per request (connect, send, answer): past it the request counts as failed.
  absl::Duration request_timeout = absl::Seconds(10);
  // After the last send: answers still missing then are counted as not answered.
  absl::Duration drain = absl::Seconds(30);
};

struct OpenLoopRequest {
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

struct OpenLoopResult {
  uint64_t sent = 0;
  uint64_t answered = 0;  // with any HTTP status
  uint64_t ok = 0;        // 2xx
  // Per 2xx: when it was due (CLOCK_MONOTONIC ns) and its latency (ns), in answer order.
  std::vector<std::pair<int64_t, int64_t>> ok_latencies;
  // When request 0 was due (CLOCK_MONOTONIC ns), and from then to the last send.
  int64_t start_ns = 0;
  double send_seconds = 0;
  // The first failure seen (e.g. "request 12: HTTP 503", "request 7: no answer"), if any.
  std::string first_error;
};

// POSTs `count` requests at `rate`; `make(i, &request)` fills request i just before it is sent
// (the caller's work, e.g. signing, is part of the send as it is for a real client). Blocks
// until every request was answered or `drain` passed after the last send.
OpenLoopResult PostOpenLoop(const OpenLoopOptions& options,
                            absl::FunctionRef<void(uint64_t, OpenLoopRequest*)> make);

}  // namespace ess::bench

#endif  // ESS_BENCH_OPEN_LOOP_H_
