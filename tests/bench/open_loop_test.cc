// The benchmark's open-loop webhook generator against a real ess::http::Server on loopback:
// every request leaves once, with its headers and body, and each answer is counted as it was.
#include "bench/open_loop.h"

#include <map>
#include <mutex>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/procs.h"
#include "common/http_server.h"
#include "common/sv.h"
#include "gtest/gtest.h"

namespace ess::bench {
namespace {

TEST(OpenLoopTest, SendsEveryRequestOnceAndCountsEachAnswer) {
  std::mutex mu;
  std::map<int, std::string> bodies;  // request index -> body
  std::map<int, std::string> signatures;
  int posts = 0;
  http::Server server(
      {.listen = "127.0.0.1:0"}, [&](http::ServerRequest req, http::Responder responder) {
        int i = -1;
        EXPECT_TRUE(absl::SimpleAtoi(ToAbsl(req.Header("x-index")), &i)) << req.body;
        {
          std::lock_guard lock(mu);
          posts += req.method == "POST" && req.path == "/hook" ? 1 : 0;
          bodies[i] = req.body;
          signatures[i] = std::string(req.Header("webhook-signature"));
        }
        // Request 7 is refused; every other one accepted.
        std::move(responder).Send({.status = i == 7 ? 503 : 201});
      });
  ASSERT_TRUE(server.Start().ok());

  constexpr uint64_t kCount = 200;
  constexpr double kRate = 2000;
  const OpenLoopResult r =
      PostOpenLoop({.port = server.port(),
                    .path = "/hook",
                    .rate = kRate,
                    .count = kCount,
                    .max_connections = 4},
                   [](uint64_t i, OpenLoopRequest* req) {
                     req->headers = {{"x-index", absl::StrCat(i)},
                                     {"webhook-signature", absl::StrCat("v1,", i)}};
                     req->body = absl::StrCat(R"({"id":"w-)", i, R"("})");
                   });
  server.Stop();

  EXPECT_EQ(r.sent, kCount);
  EXPECT_EQ(r.answered, kCount);
  EXPECT_EQ(r.ok, kCount - 1);
  EXPECT_EQ(r.ok_latencies.size(), kCount - 1);
  EXPECT_EQ(r.first_error, "request 7: HTTP 503");
  for (const auto& [due_ns, latency_ns] : r.ok_latencies) {
    EXPECT_GE(due_ns, r.start_ns);
    EXPECT_GT(latency_ns, 0);
  }
  // Open loop on a schedule: the last request is not sent before it is due.
  EXPECT_GE(r.send_seconds, (kCount - 1) / kRate * 0.99);
  std::lock_guard lock(mu);
  EXPECT_EQ(posts, static_cast<int>(kCount));
  ASSERT_EQ(bodies.size(), kCount);
  for (int i = 0; i < static_cast<int>(kCount); ++i) {
    EXPECT_EQ(bodies[i], absl::StrCat(R"({"id":"w-)", i, R"("})"));
    EXPECT_EQ(signatures[i], absl::StrCat("v1,", i));
  }
}

TEST(OpenLoopTest, RequestsToAClosedPortFailAndTheRunEnds) {
  // A loopback port that nobody listens on: bound, then closed.
  const int port = FreePort();
  ASSERT_GT(port, 0);

  const OpenLoopResult r =
      PostOpenLoop({.port = port, .rate = 1000, .count = 20, .max_connections = 2},
                   [](uint64_t, OpenLoopRequest* req) { req->body = "{}"; });
  EXPECT_EQ(r.sent, 20u);
  EXPECT_EQ(r.answered, 20u);
  EXPECT_EQ(r.ok, 0u);
  EXPECT_TRUE(r.ok_latencies.empty());
  EXPECT_EQ(r.first_error, "request 0: no answer");
}

}  // namespace
}  // namespace ess::bench
