// Tests of ess::http::Server on loopback, driven by ess::http::Client and raw sockets.
#include "common/http_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/http_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ess::http {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Pair;

std::string Url(const Server& server, absl::string_view path) {
  return absl::StrCat("http://127.0.0.1:", server.port(), path);
}

// A connected loopback socket for hand-written HTTP.
class RawConnection {
 public:
  explicit RawConnection(int port) : fd_(socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = fd_ >= 0 && connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawConnection() { Close(); }

  bool connected() const { return connected_; }
  bool Write(std::string_view data) {
    return write(fd_, data.data(), data.size()) == static_cast<ssize_t>(data.size());
  }
  // Reads until `marker` appears, the peer closes, or the deadline passes.
  std::string ReadUntil(absl::string_view marker, absl::Duration timeout) {
    std::string out;
    const absl::Time deadline = absl::Now() + timeout;
    while (!absl::StrContains(out, marker) && absl::Now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buf[4096];
      const ssize_t n = read(fd_, buf, sizeof(buf));
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    return out;
  }
  // True once the server closed the connection (a read sees its end), within `timeout`.
  bool ClosedByPeer(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buf[4096];
      const ssize_t n = read(fd_, buf, sizeof(buf));
      if (n <= 0) return true;
    }
    return false;
  }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
  bool connected_ = false;
};

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

TEST(ServerTest, StartPicksAPortAndParsesTheRequest) {
  absl::Mutex mu;
  ServerRequest seen;
  Server server({.listen = "127.0.0.1:0"}, [&](ServerRequest req, Responder r) {
    {
      absl::MutexLock lock(&mu);
      seen = req;
    }
    std::move(r).Send({.status = 201,
                       .headers = {{"X-Correlation-ID", "VIS-77"}},
                       .body = R"({"accepted":true})"});
  });
  ASSERT_TRUE(server.Start().ok());
  ASSERT_GT(server.port(), 0);

  Client client({});
  absl::StatusOr<Response> r = client.SendAndWait(
      {.url = Url(server, "/webhook/prison?a=1&b=2"),
       .headers = {{"Content-Type", "application/json"}, {"Webhook-Id", "msg_1"}},
       .body = R"({"id":"VIS-77"})"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 201);
  EXPECT_EQ(r->body, R"({"accepted":true})");
  EXPECT_EQ(r->Header("content-type"), "application/json");
  EXPECT_EQ(r->Header("x-correlation-id"), "VIS-77");

  absl::MutexLock lock(&mu);
  EXPECT_EQ(seen.method, "POST");
  EXPECT_EQ(seen.path, "/webhook/prison");
  EXPECT_EQ(seen.query, "a=1&b=2");
  EXPECT_EQ(seen.body, R"({"id":"VIS-77"})");
  EXPECT_THAT(seen.headers, Contains(Pair("webhook-id", "msg_1")));
  EXPECT_EQ(seen.Header("content-type"), "application/json");
  EXPECT_TRUE(absl::StartsWith(seen.peer, "127.0.0.1:")) << seen.peer;
  EXPECT_NE(seen.peer, "127.0.0.1:0");
}

TEST(ServerTest, BadListenAddressesAreRejected) {
  auto handler = [](ServerRequest, Responder r) { std::move(r).Send({}); };
  for (const char* listen : {"nonsense", "127.0.0.1:99999", "127.0.0.1:http", ":80"}) {
    Server server({.listen = listen}, handler);
    EXPECT_EQ(server.Start().code(), absl::StatusCode::kInvalidArgument) << listen;
  }
}

TEST(ServerTest, PortInUseIsUnavailable) {
  auto handler = [](ServerRequest, Responder r) { std::move(r).Send({}); };
  Server first({.listen = "127.0.0.1:0"}, handler);
  ASSERT_TRUE(first.Start().ok());
  Server second({.listen = absl::StrCat("127.0.0.1:", first.port())}, handler);
  EXPECT_EQ(second.Start().code(), absl::StatusCode::kUnavailable);
}

TEST(ServerTest, TooLargeBodyGets413) {
  Server server({.listen = "127.0.0.1:0", .max_body_bytes = 1024},
                [](ServerRequest req, Responder r) {
                  std::move(r).Send({.status = 200, .body = std::to_string(req.body.size())});
                });
  ASSERT_TRUE(server.Start().ok());
  Client client({});
  absl::StatusOr<Response> r =
      client.SendAndWait({.url = Url(server, "/x"), .body = std::string(1024, 'a')});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "1024");

  r = client.SendAndWait({.url = Url(server, "/x"), .body = std::string(64 * 1024, 'a')});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 413);

  // The server is still healthy afterwards.
  r = client.SendAndWait({.url = Url(server, "/x"), .body = "ok"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

// Ambiguous framing is refused before the handler sees it, and the connection closed: what
// follows the first body could be a request smuggled past a proxy that read it differently.
// (Several Content-Length headers are the server's to refuse; libevent took the first.)
TEST(ServerTest, AmbiguousBodyLengthsGet400AndTheConnectionCloses) {
  std::atomic<int> handled{0};
  Server server({.listen = "127.0.0.1:0"}, [&](ServerRequest, Responder r) {
    handled.fetch_add(1);
    std::move(r).Send({.status = 200, .body = "ok"});
  });
  ASSERT_TRUE(server.Start().ok());
  const std::string smuggled = "GET /admin HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::pair<std::string, std::string> cases[] = {
      {absl::StrCat("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: ",
                    2 + smuggled.size(), "\r\n\r\nab", smuggled),
       "more than one Content-Length header"},
      {"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
       "2\r\nab\r\n0\r\n\r\n",
       "HTML"},  // libevent's own 400 page
  };
  for (const auto& [request, reason] : cases) {
    RawConnection raw(server.port());
    ASSERT_TRUE(raw.connected());
    ASSERT_TRUE(raw.Write(request));
    const std::string answer = raw.ReadUntil(reason, absl::Seconds(5));
    EXPECT_TRUE(absl::StartsWith(answer, "HTTP/1.1 400")) << answer;
    EXPECT_THAT(answer, HasSubstr(reason));
    EXPECT_TRUE(raw.ClosedByPeer(absl::Seconds(5)));
  }
  EXPECT_EQ(handled.load(), 0);
  // One Content-Length is fine.
  RawConnection raw(server.port());
  ASSERT_TRUE(raw.Write("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"));
  EXPECT_THAT(raw.ReadUntil("ok", absl::Seconds(5)), HasSubstr("HTTP/1.1 200"));
  EXPECT_EQ(handled.load(), 1);
}

TEST(ServerTest, ResponderCompletedFromAnotherThreadLater) {
  std::vector<std::thread> workers;
  absl::Mutex mu;
  Server server({.listen = "127.0.0.1:0"}, [&](ServerRequest req, Responder r) {
    absl::MutexLock lock(&mu);
    workers.emplace_back([r = std::move(r), body = std::move(req.body)]() mutable {
      absl::SleepFor(absl::Milliseconds(100));  // e.g. waiting for a broker confirm
      std::move(r).Send({.status = 202, .body = absl::StrCat("confirmed:", body)});
    });
  });
  ASSERT_TRUE(server.Start().ok());
  Client client({});
  absl::StatusOr<Response> r = client.SendAndWait({.url = Url(server, "/x"), .body = "VIS-1"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 202);
  EXPECT_EQ(r->body, "confirmed:VIS-1");
  absl::MutexLock lock(&mu);
  for (std::thread& t : workers) t.join();
}

TEST(ServerTest, DroppedResponderAnswers500) {
  Server server({.listen = "127.0.0.1:0"}, [](ServerRequest, Responder) {});
  ASSERT_TRUE(server.Start().ok());
  Client client({});
  absl::StatusOr<Response> r = client.SendAndWait({.url = Url(server, "/x"), .body = "x"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 500);
}

TEST(ServerTest, ResponderDroppedOnAnotherThreadAnswers500) {
  std::vector<std::thread> workers;
  absl::Mutex mu;
  Server server({.listen = "127.0.0.1:0"}, [&](ServerRequest, Responder r) {
    absl::MutexLock lock(&mu);
    workers.emplace_back([r = std::move(r)]() mutable { Responder dropped = std::move(r); });
  });
  ASSERT_TRUE(server.Start().ok());
  Client client({});
  absl::StatusOr<Response> r = client.SendAndWait({.url = Url(server, "/x"), .body = "x"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 500);
  absl::MutexLock lock(&mu);
  for (std::thread& t : workers) t.join();
}

TEST(ServerTest, UnansweredRequestTimesOutWith503) {
  absl::Mutex mu;
  std::vector<Responder> held;
  Server server({.listen = "127.0.0.1:0", .request_timeout_seconds = 1},
                [&](ServerRequest, Responder r) {
                  absl::MutexLock lock(&mu);
                  held.push_back(std::move(r));
                });
  ASSERT_TRUE(server.Start().ok());
  Client client({});
  absl::StatusOr<Response> r =
      client.SendAndWait({.url = Url(server, "/x"), .body = "x", .timeout = absl::Seconds(10)});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->Header("retry-after"), "1");

  // The handler's late answer is ignored: written, it would be read on the keep-alive
  // connection as the answer to the next request, which times out too.
  {
    absl::MutexLock lock(&mu);
    ASSERT_EQ(held.size(), 1u);
    std::move(held[0]).Send({.status = 200, .body = "late"});
  }
  absl::SleepFor(absl::Milliseconds(100));
  r = client.SendAndWait({.url = Url(server, "/y"), .body = "y", .timeout = absl::Seconds(10)});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 503);
  EXPECT_NE(r->body, "late");
  absl::MutexLock lock(&mu);
  EXPECT_EQ(held.size(), 2u);
  held.clear();
}

// A server whose handler keeps every request unanswered, with one request of a raw
// connection in progress: the state a graceful stop finds.
class DrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(server_.Start().ok());
    conn_ = std::make_unique<RawConnection>(server_.port());
    ASSERT_TRUE(conn_->connected());
    ASSERT_TRUE(conn_->Write("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"));
    absl::MutexLock lock(&mu_);
    auto one = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return held_.size() == 1; };
    ASSERT_TRUE(mu_.AwaitWithTimeout(absl::Condition(&one), absl::Seconds(5)));
  }
  void TearDown() override {
    server_.Stop();
    absl::MutexLock lock(&mu_);
    held_.clear();  // answered after the stop, if at all: dropped
  }

  absl::Mutex mu_;
  std::vector<Responder> held_ ABSL_GUARDED_BY(mu_);
  Server server_{{.listen = "127.0.0.1:0"}, [this](ServerRequest, Responder r) {
                   absl::MutexLock lock(&mu_);
                   held_.push_back(std::move(r));
                 }};
  std::unique_ptr<RawConnection> conn_;
};

// A graceful stop: no new connections, but the request in progress gets its answer (with
// "Connection: close") before Drain returns.
TEST_F(DrainTest, RefusesNewConnectionsAndWaitsForTheAnswersInProgress) {
  std::thread answer([&] {
    absl::SleepFor(absl::Milliseconds(300));  // e.g. the broker's confirm
    absl::MutexLock lock(&mu_);
    std::move(held_[0]).Send({.status = 200, .body = "confirmed"});
  });
  const absl::Time started = absl::Now();
  bool drained = false;
  std::thread drain_in_background([&] { drained = server_.Drain(absl::Seconds(10)); });
  // Meanwhile a new connection is refused (the listener is gone)...
  bool refused = false;
  for (absl::Time until = absl::Now() + absl::Seconds(2); !refused && absl::Now() < until;) {
    RawConnection late(server_.port());
    refused = !late.connected();
    if (!refused) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(refused);
  drain_in_background.join();
  answer.join();
  EXPECT_TRUE(drained);
  EXPECT_GE(absl::Now() - started, absl::Milliseconds(250));  // it waited for the answer
  // ... and the one in progress got its answer, asking the client to close.
  const std::string reply = conn_->ReadUntil("confirmed", absl::Seconds(5));
  EXPECT_THAT(reply, ::testing::StartsWith("HTTP/1.1 200"));
  EXPECT_THAT(reply, ::testing::HasSubstr("Connection: close"));
  EXPECT_THAT(reply, ::testing::HasSubstr("confirmed"));
}

TEST_F(DrainTest, GivesUpAfterItsTimeout) { EXPECT_FALSE(server_.Drain(absl::Milliseconds(200))); }

// Send on a moved-from Responder does nothing (the answer that counts is the first, through
// the Responder that holds the request; a late one after the server's 503 is tested above).
TEST(ServerTest, MovedFromRespondersAreInert) {
  Server server({.listen = "127.0.0.1:0"}, [](ServerRequest, Responder r) {
    Responder moved = std::move(r);
    std::move(moved).Send({.status = 204});
    std::move(moved).Send({.status = 500});  // moved-from: no effect
    std::move(r).Send({.status = 500});      // moved-from: no effect
  });
  ASSERT_TRUE(server.Start().ok());
  Client client({});
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<Response> r = client.SendAndWait({.url = Url(server, "/x"), .body = "x"});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 204);
  }
}

TEST(ServerTest, LateReplyAfterClientClosedIsHarmless) {
  absl::Mutex mu;
  std::deque<Responder> held;
  Server server({.listen = "127.0.0.1:0"}, [&](ServerRequest req, Responder r) {
    if (req.path == "/hold") {
      absl::MutexLock lock(&mu);
      held.push_back(std::move(r));
      return;
    }
    std::move(r).Send({.status = 200, .body = "fine"});
  });
  ASSERT_TRUE(server.Start().ok());
  auto wait_held = [&](size_t n) {
    absl::MutexLock lock(&mu);
    auto enough = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return held.size() >= n; };
    return mu.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
  };

  for (int i = 0; i < 20; ++i) {
    RawConnection conn(server.port());
    ASSERT_TRUE(conn.connected());
    ASSERT_TRUE(conn.Write("POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"));
    ASSERT_TRUE(wait_held(static_cast<size_t>(i + 1)));
    conn.Close();
  }
  // Half answered from another thread, half dropped.
  std::thread late([&] {
    absl::MutexLock lock(&mu);
    for (size_t i = 0; i < held.size(); i += 2) {
      std::move(held[i]).Send({.status = 200, .body = "too late"});
    }
    held.clear();
  });
  late.join();

  Client client({});
  absl::StatusOr<Response> r = client.SendAndWait({.url = Url(server, "/ok"), .body = "x"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, "fine");
}

TEST(ServerTest, ReplyAfterStopIsDropped) {
  absl::Mutex mu;
  std::vector<Responder> held;
  auto server = std::make_unique<Server>(Server::Options{.listen = "127.0.0.1:0"},
                                         [&](ServerRequest, Responder r) {
                                           absl::MutexLock lock(&mu);
                                           held.push_back(std::move(r));
                                         });
  ASSERT_TRUE(server->Start().ok());
  RawConnection conn(server->port());
  ASSERT_TRUE(conn.Write("GET /x HTTP/1.1\r\nHost: x\r\n\r\n"));
  {
    absl::MutexLock lock(&mu);
    auto one = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return !held.empty(); };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&one), absl::Seconds(10)));
  }
  server->Stop();
  server.reset();
  absl::MutexLock lock(&mu);
  std::move(held[0]).Send({.status = 200});  // the server is gone: nothing happens
  held.clear();
}

TEST(ServerTest, KeepAliveServesManyRequestsOnOneConnection) {
  Server server({.listen = "127.0.0.1:0"}, [](ServerRequest req, Responder r) {
    std::move(r).Send({.status = 200, .content_type = "text/plain", .body = req.path});
  });
  ASSERT_TRUE(server.Start().ok());
  RawConnection conn(server.port());
  ASSERT_TRUE(conn.connected());
  for (int i = 0; i < 50; ++i) {
    const std::string path = absl::StrCat("/n", i);
    ASSERT_TRUE(conn.Write(absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: x\r\n\r\n")));
    const std::string reply = conn.ReadUntil(absl::StrCat("\r\n\r\n", path), absl::Seconds(5));
    ASSERT_TRUE(absl::StartsWith(reply, "HTTP/1.1 200")) << reply;
    ASSERT_TRUE(absl::StrContains(reply, "Content-Type: text/plain")) << reply;
  }
}

TEST(ServerTest, ManyConcurrentRequestsAnsweredFromWorkerThreads) {
  constexpr int kRequests = 2000;
  absl::Mutex mu;
  std::deque<std::pair<std::string, Responder>> queue;
  bool done = false;
  Server server({.listen = "127.0.0.1:0"}, [&](ServerRequest req, Responder r) {
    absl::MutexLock lock(&mu);
    queue.emplace_back(std::move(req.body), std::move(r));
  });
  ASSERT_TRUE(server.Start().ok());
  std::vector<std::thread> workers;
  for (int w = 0; w < 2; ++w) {
    workers.emplace_back([&] {
      for (;;) {
        std::pair<std::string, Responder> item;
        {
          absl::MutexLock lock(&mu);
          auto ready = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return done || !queue.empty(); };
          mu.Await(absl::Condition(&ready));
          if (queue.empty()) return;
          item = std::move(queue.front());
          queue.pop_front();
        }
        std::move(item.second).Send({.status = 200, .body = "re:" + item.first});
      }
    });
  }

  Client client({});
  absl::Mutex results_mu;
  int answered = 0;
  int matching = 0;
  for (int i = 0; i < kRequests; ++i) {
    std::string body = absl::StrCat("b", i);
    client.Send({.url = Url(server, "/x"), .body = body},
                [&, expected = "re:" + body](absl::StatusOr<Response> r) {
                  absl::MutexLock lock(&results_mu);
                  ++answered;
                  if (r.ok() && r->status == 200 && r->body == expected) ++matching;
                });
  }
  {
    absl::MutexLock lock(&results_mu);
    auto all = [&]() ABSL_SHARED_LOCKS_REQUIRED(results_mu) { return answered == kRequests; };
    EXPECT_TRUE(results_mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(60)));
    EXPECT_EQ(matching, kRequests);
  }
  {
    absl::MutexLock lock(&mu);
    done = true;
  }
  for (std::thread& t : workers) t.join();
}

}  // namespace
}  // namespace ess::http

namespace ess::http {
namespace {

constexpr std::string_view kGet = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n";

Server::Handler Echo() {
  return [](ServerRequest req, Responder r) {
    std::move(r).Send({.status = 200, .content_type = "text/plain", .body = req.path});
  };
}

TEST(ServerConnectionsTest, AreCountedFromAcceptToClose) {
  Server server({.listen = "127.0.0.1:0"}, Echo());
  ASSERT_TRUE(server.Start().ok());
  std::vector<std::unique_ptr<RawConnection>> conns;
  for (int i = 0; i < 3; ++i) {
    conns.push_back(std::make_unique<RawConnection>(server.port()));
    ASSERT_TRUE(conns.back()->connected());
  }
  ASSERT_TRUE(WaitFor([&] { return server.connections() == 3; }, absl::Seconds(10)))
      << server.connections();
  ASSERT_TRUE(conns[0]->Write(kGet));
  EXPECT_TRUE(absl::StartsWith(conns[0]->ReadUntil("/x", absl::Seconds(5)), "HTTP/1.1 200"));
  conns[0]->Close();
  conns[1]->Close();
  ASSERT_TRUE(WaitFor([&] { return server.connections() == 1; }, absl::Seconds(10)))
      << server.connections();
  conns[2]->Close();
  ASSERT_TRUE(WaitFor([&] { return server.connections() == 0; }, absl::Seconds(10)))
      << server.connections();
}

TEST(ServerConnectionsTest, AtTheCapNewConnectionsWaitUntilOneCloses) {
  Server server({.listen = "127.0.0.1:0", .max_connections = 2}, Echo());
  ASSERT_TRUE(server.Start().ok());
  RawConnection first(server.port()), second(server.port());
  ASSERT_TRUE(first.connected() && second.connected());
  ASSERT_TRUE(WaitFor([&] { return server.connections() == 2; }, absl::Seconds(10)));

  // The kernel completes the third connection, but the server does not take it.
  RawConnection third(server.port());
  ASSERT_TRUE(third.connected());
  ASSERT_TRUE(third.Write(kGet));
  EXPECT_EQ(third.ReadUntil("/x", absl::Seconds(1)), "");
  EXPECT_EQ(server.connections(), 2u);
  // The two it holds are served as ever.
  ASSERT_TRUE(second.Write(kGet));
  EXPECT_TRUE(absl::StartsWith(second.ReadUntil("/x", absl::Seconds(5)), "HTTP/1.1 200"));

  first.Close();
  EXPECT_TRUE(absl::StartsWith(third.ReadUntil("/x", absl::Seconds(10)), "HTTP/1.1 200"));
  EXPECT_EQ(server.connections(), 2u);
}

// A client that sends a request a byte at a time, each byte well within the idle timeout,
// is closed once the request has been arriving for the request timeout.
TEST(ServerConnectionsTest, ARequestTrickledByteByByteIsCutOffAtTheRequestTimeout) {
  int requests = 0;
  Server server({.listen = "127.0.0.1:0", .request_timeout_seconds = 2},
                [&](ServerRequest, Responder r) {
                  ++requests;  // the loop thread's only
                  std::move(r).Send({.status = 200});
                });
  ASSERT_TRUE(server.Start().ok());
  RawConnection conn(server.port());
  ASSERT_TRUE(conn.connected());
  ASSERT_TRUE(conn.Write("POST /x HTTP/1.1\r\nHost: a\r\n"));
  // An endless header, one byte per half second: 40 bytes, 20 s, unless the server cuts it.
  bool closed = false;
  int sent = 0;
  for (; sent < 40 && !closed; ++sent) {
    closed = !conn.Write("a") || conn.ClosedByPeer(absl::Milliseconds(500));
  }
  EXPECT_TRUE(closed) << "still open after " << sent << " bytes";
  EXPECT_LT(sent, 40);
  EXPECT_EQ(requests, 0);
  EXPECT_TRUE(WaitFor([&] { return server.connections() == 0; }, absl::Seconds(10)));
}

// A keep-alive connection between requests is not a request in progress: only the idle
// timeout ends it.
TEST(ServerConnectionsTest, AnIdleKeepAliveConnectionOutlivesNoRequestOfItsOwn) {
  Server server({.listen = "127.0.0.1:0", .request_timeout_seconds = 3}, Echo());
  ASSERT_TRUE(server.Start().ok());
  RawConnection conn(server.port());
  ASSERT_TRUE(conn.connected());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(conn.Write(kGet));
    ASSERT_TRUE(absl::StartsWith(conn.ReadUntil("/x", absl::Seconds(5)), "HTTP/1.1 200")) << i;
    absl::SleepFor(absl::Seconds(1));  // idle, within the timeout
  }
}

// Out of file descriptors, the server stops accepting for a second at a time (one log line)
// instead of retrying accept() at once, and takes the waiting connection once it can.
TEST(ServerConnectionsTest, OutOfFileDescriptorsItBacksOffAndRecovers) {
  Server server({.listen = "127.0.0.1:0"}, Echo());
  ASSERT_TRUE(server.Start().ok());
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  ::testing::internal::CaptureStderr();
  // Room for five more descriptors (the five lowest free numbers): three clients and two of
  // the server's accepts.
  std::set<int> open_fds;
  if (DIR* d = opendir("/proc/self/fd"); d != nullptr) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') open_fds.insert(std::atoi(e->d_name));
    }
    open_fds.erase(dirfd(d));
    closedir(d);
  }
  int fifth_free = -1;
  for (int fd = 0, free = 0; free < 5; ++fd) {
    if (!open_fds.contains(fd) && ++free == 5) fifth_free = fd;
  }
  rlimit tight = saved;
  tight.rlim_cur = static_cast<rlim_t>(fifth_free + 1);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &tight), 0);
  std::string third_reply;
  {
    RawConnection first(server.port()), second(server.port()), third(server.port());
    const bool connected = first.connected() && second.connected() && third.connected();
    const bool two = WaitFor([&] { return server.connections() == 2; }, absl::Seconds(10));
    if (connected && two) {
      third.Write(kGet);
      absl::SleepFor(absl::Milliseconds(1500));  // at least one failed accept() and a retry
      first.Close();
      third_reply = third.ReadUntil("/x", absl::Seconds(10));
    }
    setrlimit(RLIMIT_NOFILE, &saved);
    EXPECT_TRUE(connected);
    EXPECT_TRUE(two) << server.connections();
  }
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(absl::StartsWith(third_reply, "HTTP/1.1 200")) << third_reply;
  EXPECT_TRUE(absl::StrContains(log, "accept() failed: Too many open files; again in 1 s")) << log;
  // libevent's own line for each immediate retry.
  EXPECT_FALSE(absl::StrContains(log, "Error from accept() call")) << log;
}

}  // namespace
}  // namespace ess::http
