// Tests of ess::http::Client against an in-process ess::http::Server on loopback.
#include "common/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/http_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ess::http {
namespace {

using ::testing::Contains;
using ::testing::Pair;

// A TCP socket bound to a free loopback port (not listening yet), or -1.
int BindLoopback(int* port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  *port = ntohs(addr.sin_port);
  return fd;
}

// A partner stand-in. Paths:
//   /echo          200, the request body back, plus X-Method and X-Reply headers
//   /status?N      status N
//   /redirect      302 to /echo
//   /big           200 with a 10,000-byte body
//   /hang          keeps the Responder until ReleaseHung()
class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<Server>(
        Server::Options{.listen = "127.0.0.1:0"},
        [this](ServerRequest req, Responder r) { Handle(std::move(req), std::move(r)); });
    ASSERT_TRUE(server_->Start().ok());
  }

  void TearDown() override {
    ReleaseHung();
    server_->Stop();
  }

  std::string Url(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", server_->port(), path);
  }

  void Handle(ServerRequest req, Responder r) {
    {
      absl::MutexLock lock(&mu_);
      peers_.insert(req.peer);
      last_ = req;
      ++requests_;
    }
    if (req.path == "/echo") {
      std::move(r).Send({.status = 200,
                         .content_type = "text/plain",
                         .headers = {{"X-Method", req.method}, {"X-Reply", "Yes"}},
                         .body = std::move(req.body)});
    } else if (req.path == "/status") {
      int code = 500;
      EXPECT_TRUE(absl::SimpleAtoi(req.query, &code));
      std::move(r).Send({.status = code, .body = R"({"status":"given"})"});
    } else if (req.path == "/redirect") {
      std::move(r).Send({.status = 302, .headers = {{"Location", "/echo"}}, .body = ""});
    } else if (req.path == "/big") {
      std::move(r).Send({.status = 200, .body = std::string(10000, 'x')});
    } else if (req.path == "/hang") {
      absl::MutexLock lock(&mu_);
      hung_.push_back(std::move(r));
    } else {
      std::move(r).Send({.status = 404, .body = ""});
    }
  }

  // Answers the held requests (the clients have usually given up by then).
  void ReleaseHung() {
    std::vector<Responder> hung;
    {
      absl::MutexLock lock(&mu_);
      hung.swap(hung_);
    }
    for (Responder& r : hung) std::move(r).Send({.status = 200, .body = "late"});
  }

  bool WaitForHung(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return hung_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
  }

  absl::Mutex mu_;
  absl::flat_hash_set<std::string> peers_ ABSL_GUARDED_BY(mu_);
  ServerRequest last_ ABSL_GUARDED_BY(mu_);
  int requests_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Responder> hung_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Server> server_;
};

TEST_F(ClientTest, PostEchoesBodyAndRoundTripsHeaders) {
  Client client({});
  absl::StatusOr<Response> r = client.SendAndWait(
      {.method = "POST",
       .url = Url("/echo?x=1"),
       .headers = {{"Content-Type", "application/json"}, {"X-Correlation-ID", "VIS-77"}},
       .body = R"({"id":"VIS-77"})"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, R"({"id":"VIS-77"})");
  EXPECT_FALSE(r->truncated);
  EXPECT_EQ(r->Header("x-reply"), "Yes");
  EXPECT_EQ(r->Header("x-method"), "POST");
  EXPECT_EQ(r->Header("content-type"), "text/plain");
  EXPECT_EQ(r->Header("no-such-header"), "");
  EXPECT_GT(r->elapsed, absl::ZeroDuration());

  absl::MutexLock lock(&mu_);
  EXPECT_EQ(last_.method, "POST");
  EXPECT_EQ(last_.path, "/echo");
  EXPECT_EQ(last_.query, "x=1");
  EXPECT_THAT(last_.headers, Contains(Pair("x-correlation-id", "VIS-77")));
  EXPECT_THAT(last_.headers, Contains(Pair("content-type", "application/json")));
  // No 100-continue handshake on bodies.
  EXPECT_EQ(last_.Header("expect"), "");
}

TEST_F(ClientTest, OtherMethodsReachTheServer) {
  Client client({});
  for (const char* method : {"GET", "PUT", "DELETE", "PATCH"}) {
    const std::string body = std::string(method) == "PUT" ? "put-body" : "";
    absl::StatusOr<Response> r =
        client.SendAndWait({.method = method, .url = Url("/echo"), .body = body});
    ASSERT_TRUE(r.ok()) << method << ": " << r.status();
    EXPECT_EQ(r->status, 200) << method;
    EXPECT_EQ(r->Header("x-method"), method);
    EXPECT_EQ(r->body, body) << method;
  }
}

TEST_F(ClientTest, TwoThousandConcurrentRequestsAllAnswered) {
  constexpr int kRequests = 2000;
  Client client({});
  absl::Mutex mu;
  std::vector<absl::StatusOr<Response>> results(kRequests, absl::UnknownError("pending"));
  int done = 0;
  for (int i = 0; i < kRequests; ++i) {
    client.Send({.url = Url("/echo"), .body = absl::StrCat("request-", i)},
                [&, i](absl::StatusOr<Response> r) {
                  absl::MutexLock lock(&mu);
                  results[i] = std::move(r);
                  ++done;
                });
  }
  {
    absl::MutexLock lock(&mu);
    auto all = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return done == kRequests; };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(60)))
        << "only " << done << " answered";
  }
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(results[i].ok()) << i << ": " << results[i].status();
    EXPECT_EQ(results[i]->status, 200);
    EXPECT_EQ(results[i]->body, absl::StrCat("request-", i));
  }
  // The per-host cap (64) bounds the connections used (curl enforces it too; the client's own
  // queue is what keeps curl from re-examining 1,900 waiting transfers on every completion).
  absl::MutexLock lock(&mu_);
  EXPECT_LE(peers_.size(), 64u);
}

TEST_F(ClientTest, SequentialRequestsReuseTheConnection) {
  Client client({});
  for (int i = 0; i < 1000; ++i) {
    absl::StatusOr<Response> r = client.SendAndWait({.url = Url("/echo"), .body = "k"});
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->status, 200);
  }
  absl::MutexLock lock(&mu_);
  EXPECT_LE(peers_.size(), 2u);
}

// The path goes as the caller built it: curl resolves "." and ".." segments unless told not
// to, which sent "/a/b/../../echo" to "/echo", another endpoint.
TEST_F(ClientTest, ThePathIsSentAsItIsGivenDotSegmentsIncluded) {
  Client client({});
  for (const char* path : {"/a/b/../../echo", "/api/./x/../cancel", "/api/%2E%2E/cancel"}) {
    absl::StatusOr<Response> r = client.SendAndWait({.url = Url(path), .body = "x"});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 404) << path;
    absl::MutexLock lock(&mu_);
    EXPECT_EQ(last_.path, path);
  }
}

TEST_F(ClientTest, NonSuccessStatusesAreOkResults) {
  Client client({});
  for (int code : {400, 404, 409, 429, 500, 503}) {
    absl::StatusOr<Response> r =
        client.SendAndWait({.method = "GET", .url = Url(absl::StrCat("/status?", code))});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, code);
    EXPECT_EQ(r->body, R"({"status":"given"})");
  }
}

TEST_F(ClientTest, RedirectsAreNotFollowed) {
  Client client({});
  absl::StatusOr<Response> r = client.SendAndWait({.url = Url("/redirect"), .body = "b"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 302);
  EXPECT_EQ(r->Header("location"), "/echo");
  absl::MutexLock lock(&mu_);
  EXPECT_EQ(last_.path, "/redirect");
}

TEST_F(ClientTest, ResponseBodyIsTruncatedAtTheCap) {
  Client client({});
  absl::StatusOr<Response> r =
      client.SendAndWait({.method = "GET", .url = Url("/big"), .max_response_bytes = 100});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(r->truncated);
  EXPECT_EQ(r->body, std::string(100, 'x'));

  // Under the cap nothing is cut, and the connection is still usable.
  r = client.SendAndWait({.method = "GET", .url = Url("/big")});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->truncated);
  EXPECT_EQ(r->body.size(), 10000u);
}

TEST_F(ClientTest, SlowServerGivesDeadlineExceeded) {
  Client client({});
  absl::StatusOr<Response> r =
      client.SendAndWait({.url = Url("/hang"), .body = "x", .timeout = absl::Milliseconds(300)});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_TRUE(WaitForHung(1));
}

// A request's timeout counts from Send: one that waited for a slot behind the per-host cap
// does not get a fresh timeout when it starts.
TEST_F(ClientTest, TheTimeoutIncludesTheWaitForAConnectionSlot) {
  Client client({.max_connections_per_host = 2});
  constexpr int kRequests = 6;
  absl::Mutex mu;
  std::vector<absl::Status> results;
  std::vector<absl::Duration> took;
  const absl::Time sent = absl::Now();
  for (int i = 0; i < kRequests; ++i) {
    client.Send({.url = Url("/hang"), .body = "x", .timeout = absl::Milliseconds(500)},
                [&](absl::StatusOr<Response> r) {
                  absl::MutexLock lock(&mu);
                  results.push_back(r.status());
                  took.push_back(absl::Now() - sent);
                });
  }
  {
    absl::MutexLock lock(&mu);
    auto all = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return results.size() == kRequests; };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(10)));
  }
  EXPECT_TRUE(WaitForHung(2));
  absl::MutexLock lock(&mu);
  for (int i = 0; i < kRequests; ++i) {
    EXPECT_EQ(results[i].code(), absl::StatusCode::kDeadlineExceeded) << results[i];
    // All end with the first two: before, each pair waited out a timeout of its own (0.5, 1.0,
    // 1.5 s).
    // (Those whose time ran out in the queue say so: "... never started".)
    EXPECT_LT(took[i], absl::Milliseconds(900)) << i << ": " << results[i];
  }
}

TEST_F(ClientTest, ClosedPortGivesUnavailable) {
  // A bound socket that does not listen refuses connections, and holds the port.
  int port = 0;
  const int fd = BindLoopback(&port);
  ASSERT_GE(fd, 0);

  Client client({});
  absl::StatusOr<Response> r =
      client.SendAndWait({.url = absl::StrCat("http://127.0.0.1:", port, "/x"), .body = "x"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  // The error names the method and the origin only: the path and query carry event data (a
  // personal value, escaped past the masking of logs) and tokens, the userinfo a password.
  r = client.SendAndWait(
      {.url = absl::StrCat("http://ops:s3cret@127.0.0.1:", port,
                           "/api/inmates/Jane%20Doe-O%27Brien/slots?token=t0k#frag"),
       .body = "x"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              ::testing::StartsWith(absl::StrCat("POST http://127.0.0.1:", port, ": ")));
  for (const char* secret : {"Jane", "/api", "token", "t0k", "s3cret", "ops", "frag"}) {
    EXPECT_THAT(std::string(r.status().message()), ::testing::Not(::testing::HasSubstr(secret)))
        << r.status();
  }
  close(fd);
}

TEST_F(ClientTest, NonHttpReplyGivesUnavailable) {
  int port = 0;
  const int fd = BindLoopback(&port);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(listen(fd, 1), 0);
  std::thread peer([fd] {
    const int conn = accept(fd, nullptr, nullptr);
    if (conn < 0) return;
    char buf[1024];
    (void)read(conn, buf, sizeof(buf));
    constexpr std::string_view kGarbage = "SSH-2.0-OpenSSH\r\n\r\n";
    (void)write(conn, kGarbage.data(), kGarbage.size());
    close(conn);
  });

  Client client({});
  absl::StatusOr<Response> r =
      client.SendAndWait({.url = absl::StrCat("http://127.0.0.1:", port, "/x"), .body = "x"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  peer.join();
  close(fd);
}

TEST_F(ClientTest, BadUrlsGiveInvalidArgument) {
  Client client({});
  for (const char* url : {"ftp://127.0.0.1/x", "file:///etc/passwd", "http://[::1"}) {
    absl::StatusOr<Response> r = client.SendAndWait({.url = url, .body = "x"});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << url << ": " << r.status();
  }
}

// A header whose name or value holds a CR, LF or NUL (e.g. from event data) would add header
// lines of its own or be cut short: the request is refused, naming the header, and never sent.
TEST_F(ClientTest, HeadersThatWouldBreakTheirLineAreRefusedAndNothingIsSent) {
  Client client({});
  const HeaderList bad[] = {
      {{"Idempotency-Key", "VIS-2\r\nX-Injected: yes"}},
      {{"X-Correlation-ID", "VIS-2\nX-Injected: yes"}},
      {{"X-Correlation-ID", "VIS-2\rX-Injected: yes"}},
      {{"Idempotency-Key", std::string("VIS-2\0tail", 10)}},
      {{"X-Injected\r\nX-Api-Key", "k"}},
      {{"X-A:B", "k"}},
      {{"", "k"}},
  };
  for (const HeaderList& headers : bad) {
    absl::StatusOr<Response> r =
        client.SendAndWait({.url = Url("/echo"), .headers = headers, .body = "x"});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    const std::string message(r.status().message());
    EXPECT_THAT(message, ::testing::HasSubstr("request not sent"));
    EXPECT_THAT(message, ::testing::Not(::testing::HasSubstr("yes")));  // never the value
  }
  absl::StatusOr<Response> r = client.SendAndWait(
      {.url = Url("/echo"), .headers = {{"Idempotency-Key", "VIS-2\r\nX-Injected: yes"}}});
  EXPECT_EQ(
      r.status().message(),
      absl::StrCat("POST ", Url(""),
                   ": header Idempotency-Key: value holds a CR, LF or NUL; request not sent"));
  {
    absl::MutexLock lock(&mu_);
    EXPECT_EQ(requests_, 0);
  }
  // The client goes on: a good request after them is sent.
  r = client.SendAndWait({.url = Url("/echo"), .headers = {{"Idempotency-Key", "VIS-2"}}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

TEST_F(ClientTest, StopCancelsPendingAndLaterRequests) {
  Client client({});
  absl::Notification cancelled;
  absl::Status status;
  client.Send({.url = Url("/hang"), .body = "x", .timeout = absl::Seconds(30)},
              [&](absl::StatusOr<Response> r) {
                status = r.status();
                cancelled.Notify();
              });
  ASSERT_TRUE(WaitForHung(1));
  client.Stop();
  ASSERT_TRUE(cancelled.HasBeenNotified());
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;

  absl::StatusOr<Response> r = client.SendAndWait({.url = Url("/echo"), .body = "x"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
}

TEST_F(ClientTest, CallbackMaySendAgain) {
  Client client({});
  absl::Notification second_done;
  long second_status = 0;
  client.Send({.url = Url("/echo"), .body = "first"}, [&](absl::StatusOr<Response> r) {
    ASSERT_TRUE(r.ok()) << r.status();
    client.Send({.url = Url("/status?201"), .body = "second"}, [&](absl::StatusOr<Response> r2) {
      second_status = r2.ok() ? r2->status : -1;
      second_done.Notify();
    });
  });
  ASSERT_TRUE(second_done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(second_status, 201);
}

}  // namespace
}  // namespace ess::http
