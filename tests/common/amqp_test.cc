// Integration tests of common/amqp against a real RabbitMQ.
//
// Needs ESS_AMQP_HOST / ESS_AMQP_PORT (and, for the connection-loss test, ESS_RABBITMQCTL,
// ESS_RABBITMQ_NODE and the Erlang env), as written by scripts/rabbitmq.sh:
//   scripts/rabbitmq.sh start .stack/amqp-dev && . .stack/amqp-dev/env && ctest -L integration
#include "common/amqp.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"

namespace ess::amqp {
namespace {

using ::testing::HasSubstr;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

// Upper bound of every wait; the broker normally answers within milliseconds.
constexpr absl::Duration kWait = absl::Seconds(60);

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

std::string Str(absl::string_view s) { return std::string(s.data(), s.size()); }

// Deliveries handed over by a consumer's thread.
class Inbox {
 public:
  void Push(Delivery d) {
    absl::MutexLock lock(&mu_);
    items_.push_back(std::move(d));
    ++total_;
  }
  std::optional<Delivery> Pop(absl::Duration timeout = kWait) {
    absl::MutexLock lock(&mu_);
    auto ready = [this] { return !items_.empty(); };
    if (!mu_.AwaitWithTimeout(absl::Condition(&ready), timeout)) return std::nullopt;
    Delivery d = std::move(items_.front());
    items_.pop_front();
    return d;
  }
  int total() {
    absl::MutexLock lock(&mu_);
    return total_;
  }

 private:
  absl::Mutex mu_;
  std::deque<Delivery> items_ ABSL_GUARDED_BY(mu_);
  int total_ ABSL_GUARDED_BY(mu_) = 0;
};

// Statuses of Publisher dones.
class Outcomes {
 public:
  Publisher::Done Track(std::string id) {
    return [this, id = std::move(id)](absl::Status s) {
      absl::MutexLock lock(&mu_);
      statuses_[id] = std::move(s);
    };
  }
  // Waits until `n` dones ran; false on timeout.
  bool WaitFor(size_t n, absl::Duration timeout = kWait) {
    absl::MutexLock lock(&mu_);
    auto done = [this, n] { return statuses_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  }
  std::map<std::string, absl::Status> statuses() {
    absl::MutexLock lock(&mu_);
    return statuses_;
  }
  size_t CountOk() {
    absl::MutexLock lock(&mu_);
    size_t n = 0;
    for (const auto& [id, s] : statuses_) n += s.ok() ? 1 : 0;
    return n;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, absl::Status> statuses_ ABSL_GUARDED_BY(mu_);
};

// A Consumer whose deliveries queue up in an Inbox.
struct Consuming {
  explicit Consuming(Consumer::Options options)
      : consumer(std::move(options), [this](Delivery d) { inbox.Push(std::move(d)); }) {}
  Inbox inbox;
  Consumer consumer;
};

Message Event(std::string id) {
  Message m;
  m.body = absl::StrCat(R"({"type":"VisitScheduleUpdated","id":")", id, R"("})");
  m.correlation_id = id;
  m.message_id = id;
  m.type = "VisitScheduleUpdated";
  return m;
}

// Polls `predicate` (a broker-side condition without a notification) until it holds.
template <typename Fn>
bool Eventually(Fn predicate, absl::Duration timeout = kWait) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (predicate()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return predicate();
}

class AmqpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(Env("ESS_AMQP_HOST").empty() || Env("ESS_AMQP_PORT").empty())
        << "ESS_AMQP_HOST / ESS_AMQP_PORT not set: run scripts/rabbitmq.sh start DIR and source "
           "DIR/env";
    prefix_ =
        absl::StrCat("amqp_test.", ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                     ".", getpid(), ".", absl::ToUnixMicros(absl::Now()));
    admin_ = OpenConnection("admin");
    ASSERT_NE(admin_, nullptr);
  }

  void TearDown() override {
    // A fresh connection: the test may have had the broker close admin_.
    std::unique_ptr<Connection> c = OpenConnection("cleanup");
    if (c == nullptr) return;
    for (const std::string& q : queues_) EXPECT_TRUE(c->DeleteQueue(q).ok()) << q;
  }

  ConnectionOptions Options(std::string_view role) const {
    ConnectionOptions o;
    o.host = Env("ESS_AMQP_HOST");
    o.port = std::atoi(Env("ESS_AMQP_PORT").c_str());
    o.connection_name =
        absl::StrCat(prefix_, "-", Str(absl::string_view(role.data(), role.size())));
    o.rpc_timeout = absl::Seconds(20);
    return o;
  }

  std::unique_ptr<Connection> OpenConnection(std::string_view role) const {
    absl::StatusOr<std::unique_ptr<Connection>> c = Connection::Open(Options(role));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  // A queue name unique to this test run; deleted in TearDown.
  std::string Queue(std::string_view suffix) {
    queues_.push_back(absl::StrCat(prefix_, ".", absl::string_view(suffix.data(), suffix.size())));
    return queues_.back();
  }

  // Publishes `n` persistent messages "<queue>-<i>" to `queue` with confirms.
  void PublishMany(const std::string& queue, int n) {
    Publisher publisher({.connection = Options("bulk-publisher"),
                         .topology = {.queues = {{.name = queue}}},
                         .max_in_flight = static_cast<size_t>(n)});
    ASSERT_TRUE(publisher.Start().ok());
    Outcomes outcomes;
    for (int i = 0; i < n; ++i) {
      std::string id = absl::StrCat("m-", i);
      publisher.Publish("", queue, Event(id), outcomes.Track(id));
    }
    ASSERT_TRUE(outcomes.WaitFor(n));
    ASSERT_EQ(outcomes.CountOk(), static_cast<size_t>(n));
  }

  // Declares `queue` and publishes one event per id to it.
  void Seed(const std::string& queue, const std::vector<std::string>& ids) {
    ASSERT_TRUE(admin_->Apply({.queues = {{.name = queue}}}).ok());
    for (const std::string& id : ids) ASSERT_TRUE(admin_->Publish("", queue, Event(id)).ok()) << id;
  }

  Consumer::Options ConsumerOptions(std::vector<std::string> queues, uint16_t prefetch,
                                    Topology topology = {}) const {
    return {.connection = Options("consumer"),
            .topology = std::move(topology),
            .queues = std::move(queues),
            .prefetch = prefetch};
  }

  // A started consumer (null if Start failed).
  std::unique_ptr<Consuming> Consume(Consumer::Options options) {
    auto c = std::make_unique<Consuming>(std::move(options));
    absl::Status s = c->consumer.Start();
    EXPECT_TRUE(s.ok()) << s;
    return s.ok() ? std::move(c) : nullptr;
  }

  uint32_t Depth(const std::string& queue) {
    absl::StatusOr<uint32_t> n = admin_->MessageCount(queue);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.value_or(0xffffffff);
  }

  std::string prefix_;
  std::unique_ptr<Connection> admin_;
  std::vector<std::string> queues_;
};

TEST_F(AmqpTest, PublisherConfirmsTenThousandPersistentPublishes) {
  constexpr int kMessages = 10000;
  constexpr int kThreads = 4;
  const std::string q = Queue("bulk");
  Publisher publisher({.connection = Options("publisher"),
                       .topology = {.queues = {{.name = q}}},
                       .max_in_flight = kMessages});
  ASSERT_TRUE(publisher.Start().ok());
  ASSERT_TRUE(publisher.connected());

  Outcomes outcomes;
  const absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < kMessages; i += kThreads) {
        std::string id = absl::StrCat("m-", i);
        publisher.Publish("", q, Event(id), outcomes.Track(id));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(outcomes.WaitFor(kMessages));
  const absl::Duration took = absl::Now() - start;
  std::printf("%d confirmed persistent publishes in %s (%.0f/s)\n", kMessages,
              absl::FormatDuration(took).c_str(), kMessages / absl::ToDoubleSeconds(took));

  std::map<std::string, absl::Status> statuses = outcomes.statuses();
  ASSERT_EQ(statuses.size(), static_cast<size_t>(kMessages));
  for (const auto& [id, s] : statuses) ASSERT_TRUE(s.ok()) << id << ": " << s;
  EXPECT_EQ(Depth(q), static_cast<uint32_t>(kMessages));

  absl::StatusOr<Delivery> first = admin_->Get(q);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->queue, q);
  EXPECT_TRUE(first->message.persistent);
  EXPECT_EQ(first->message.type, "VisitScheduleUpdated");
  EXPECT_EQ(first->message.correlation_id, first->message.message_id);
  EXPECT_EQ(first->message.content_type, "application/json");
  EXPECT_GT(first->message.timestamp, 0);
}

TEST_F(AmqpTest, ConsumerHandlesEveryMessageExactlyOnceAndAcksThemAll) {
  constexpr int kMessages = 10000;
  const std::string q = Queue("work");
  PublishMany(q, kMessages);
  ASSERT_EQ(Depth(q), static_cast<uint32_t>(kMessages));

  std::unique_ptr<Consuming> c = Consume(ConsumerOptions({q}, 100, {.queues = {{.name = q}}}));
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->consumer.connected());

  // Acks from another thread, in arrival order.
  std::map<std::string, int> seen;
  int redelivered = 0;
  int wrong_queue = 0;
  std::thread acker([&] {
    for (int i = 0; i < kMessages; ++i) {
      std::optional<Delivery> d = c->inbox.Pop();
      if (!d.has_value()) return;
      ++seen[d->message.message_id];
      redelivered += d->redelivered ? 1 : 0;
      wrong_queue += d->queue == q ? 0 : 1;
      c->consumer.Ack(d->delivery_tag);
    }
  });
  acker.join();
  ASSERT_EQ(seen.size(), static_cast<size_t>(kMessages));
  for (const auto& [id, n] : seen) ASSERT_EQ(n, 1) << id;
  EXPECT_EQ(redelivered, 0);
  EXPECT_EQ(wrong_queue, 0);

  // Closing the connection returns unacked deliveries to the queue: none may be left. (Before
  // the close the depth says nothing: it counts ready messages, not unacked ones.)
  c->consumer.Stop();
  EXPECT_FALSE(c->consumer.connected());
  EXPECT_EQ(Depth(q), 0u);
  EXPECT_EQ(c->inbox.total(), kMessages);
}

TEST_F(AmqpTest, RejectWithRequeueRedelivers) {
  const std::string q = Queue("partner");
  Seed(q, {"VIS-2"});
  std::unique_ptr<Consuming> c = Consume(ConsumerOptions({q}, 10));
  ASSERT_NE(c, nullptr);
  std::optional<Delivery> first = c->inbox.Pop();
  ASSERT_TRUE(first.has_value());
  EXPECT_FALSE(first->redelivered);
  c->consumer.Reject(first->delivery_tag, /*requeue=*/true);

  std::optional<Delivery> second = c->inbox.Pop();
  ASSERT_TRUE(second.has_value());
  EXPECT_TRUE(second->redelivered);
  EXPECT_EQ(second->message.message_id, "VIS-2");
  EXPECT_NE(second->delivery_tag, first->delivery_tag);
  // Settling the first tag again is ignored; the second is acked.
  c->consumer.Ack(first->delivery_tag);
  c->consumer.Ack(second->delivery_tag);
  c->consumer.Stop();
  EXPECT_EQ(Depth(q), 0u);
  EXPECT_EQ(c->inbox.total(), 2);
}

TEST_F(AmqpTest, OneUnsettledDeliveryDoesNotHoldThePrefetchWindow) {
  constexpr int kMessages = 12;
  const std::string q = Queue("partner");
  std::vector<std::string> ids;
  for (int i = 0; i < kMessages; ++i) ids.push_back(absl::StrCat("m-", i));
  Seed(q, ids);
  std::unique_ptr<Consuming> c = Consume(ConsumerOptions({q}, 3));
  ASSERT_NE(c, nullptr);
  // The first delivery stays unsettled; with a window of 3 the broker only sends the rest if the
  // acks behind it are not held back.
  std::optional<Delivery> slow = c->inbox.Pop();
  ASSERT_TRUE(slow.has_value());
  for (int i = 1; i < kMessages; ++i) {
    std::optional<Delivery> d = c->inbox.Pop();
    ASSERT_TRUE(d.has_value()) << "stalled after " << i << " deliveries";
    c->consumer.Ack(d->delivery_tag);
  }
  c->consumer.Ack(slow->delivery_tag);
  c->consumer.Stop();
  EXPECT_EQ(Depth(q), 0u);
  EXPECT_EQ(c->inbox.total(), kMessages);
}

TEST_F(AmqpTest, ConsumerResumesAfterItsQueueIsDeleted) {
  const std::string q = Queue("partner");
  std::unique_ptr<Consuming> c = Consume(ConsumerOptions({q}, 10, {.queues = {{.name = q}}}));
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(admin_->DeleteQueue(q).ok());
  // The broker cancels the consumer; it reconnects and declares the queue again.
  ASSERT_TRUE(Eventually([&] { return admin_->MessageCount(q).ok(); }));
  ASSERT_TRUE(Eventually([&] { return c->consumer.connected(); }));
  ASSERT_TRUE(admin_->Publish("", q, Event("after-delete")).ok());
  std::optional<Delivery> d = c->inbox.Pop();
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->message.message_id, "after-delete");
  EXPECT_EQ(d->queue, q);
  c->consumer.Ack(d->delivery_tag);
  c->consumer.Stop();
  EXPECT_EQ(Depth(q), 0u);
}

TEST_F(AmqpTest, IdleConsumerKeepsItsConnectionWithHeartbeats) {
  const std::string q = Queue("partner");
  Seed(q, {"idle"});
  Consumer::Options options = ConsumerOptions({q}, 10);
  options.connection.heartbeat_seconds = 1;  // the broker drops a peer silent for ~2 intervals
  std::unique_ptr<Consuming> c = Consume(std::move(options));
  ASSERT_NE(c, nullptr);
  std::optional<Delivery> d = c->inbox.Pop();
  ASSERT_TRUE(d.has_value());
  // Idle for four heartbeat intervals while holding the delivery: a dropped connection would
  // redeliver it.
  absl::SleepFor(absl::Seconds(4));
  EXPECT_TRUE(c->consumer.connected());
  c->consumer.Ack(d->delivery_tag);
  c->consumer.Stop();
  EXPECT_EQ(c->inbox.total(), 1);
  admin_ = OpenConnection("admin2");  // admin_ itself was idle without heartbeats
  ASSERT_NE(admin_, nullptr);
  EXPECT_EQ(Depth(q), 0u);
}

TEST_F(AmqpTest, UnroutablePublishIsFailedPrecondition) {
  const std::string exchange = absl::StrCat(prefix_, ".unbound");
  const std::string q = Queue("routable");
  Publisher publisher(
      {.connection = Options("publisher"),
       .topology = {.exchanges = {{.name = exchange, .durable = false}}, .queues = {{.name = q}}}});
  ASSERT_TRUE(publisher.Start().ok());
  Outcomes outcomes;
  publisher.Publish("", q, Event("a"), outcomes.Track("a"));
  publisher.Publish(exchange, "rk", Event("b"), outcomes.Track("b"));
  publisher.Publish("", q, Event("c"), outcomes.Track("c"));
  ASSERT_TRUE(outcomes.WaitFor(3));
  std::map<std::string, absl::Status> s = outcomes.statuses();
  EXPECT_TRUE(s["a"].ok()) << s["a"];
  EXPECT_EQ(s["b"].code(), absl::StatusCode::kFailedPrecondition) << s["b"];
  EXPECT_THAT(Str(s["b"].message()),
              HasSubstr(absl::StrCat("unroutable: exchange=", exchange, " routing_key=rk")));
  EXPECT_TRUE(s["c"].ok()) << s["c"];
  EXPECT_EQ(Depth(q), 2u);

  absl::Status blocking = admin_->Publish(exchange, "rk", Event("d"));
  EXPECT_EQ(blocking.code(), absl::StatusCode::kFailedPrecondition) << blocking;
  EXPECT_THAT(Str(blocking.message()), HasSubstr("unroutable"));
  // The connection stays usable.
  EXPECT_TRUE(admin_->Publish("", q, Event("e")).ok());
}

// AMQP short strings (message-id, correlation-id, type, header names) hold 255 bytes. A longer
// one fails its own publish, named; librabbitmq-c's encoding error used to pass for a broken
// socket, and the connection went down with every publish in flight on it.
TEST_F(AmqpTest, APropertyTooLongForAmqpFailsThatPublishAlone) {
  const std::string q = Queue("long");
  Publisher publisher({.connection = Options("publisher"), .topology = {.queues = {{.name = q}}}});
  ASSERT_TRUE(publisher.Start().ok());
  Outcomes outcomes;
  std::map<std::string, std::string> want;  // id of a bad publish -> the error it must get
  for (int i = 0; i < 200; ++i) {
    const std::string id = absl::StrCat("ok-", i);
    publisher.Publish("", q, Event(id), outcomes.Track(id));
    if (i % 50 != 25) continue;
    const std::string key = absl::StrCat("bad-", i);
    Message bad = Event(key);
    switch (i / 50) {
      case 0:
        bad.message_id = std::string(256, 'm');
        want[key] = "amqp: the message's message_id has 256 bytes; at most 255";
        break;
      case 1:
        bad.correlation_id = std::string(300, 'c');
        want[key] = "amqp: the message's correlation_id has 300 bytes; at most 255";
        break;
      case 2:
        bad.type = std::string(256, 't');
        want[key] = "amqp: the message's type has 256 bytes; at most 255";
        break;
      default:
        bad.headers.emplace_back(std::string(256, 'h'), "v");
        want[key] = "amqp: a header name has 256 bytes; at most 255";
    }
    publisher.Publish("", q, std::move(bad), outcomes.Track(key));
  }
  ASSERT_TRUE(outcomes.WaitFor(204));
  std::map<std::string, absl::Status> s = outcomes.statuses();
  int ok = 0;
  for (const auto& [id, status] : s) {
    if (auto it = want.find(id); it != want.end()) {
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << id;
      EXPECT_EQ(Str(status.message()), it->second);
    } else {
      EXPECT_TRUE(status.ok()) << id << ": " << status;  // none lost with a dropped connection
      ok += status.ok() ? 1 : 0;
    }
  }
  EXPECT_EQ(ok, 200);
  EXPECT_EQ(Depth(q), 200u);

  // Connection::Publish refuses it before sending, and stays usable.
  Message bad = Event("bad-blocking");
  bad.message_id = std::string(256, 'm');
  absl::Status blocking = admin_->Publish("", q, bad);
  EXPECT_EQ(blocking.code(), absl::StatusCode::kInvalidArgument) << blocking;
  EXPECT_TRUE(admin_->Publish("", q, Event("after")).ok());
  EXPECT_EQ(Depth(q), 201u);
}

// A message whose headers do not fit the frame (a partner's 140 KB error text in x-ess-reason)
// is refused before anything of it is sent: librabbitmq-c wrote basic.publish's method frame,
// then failed on the content header ("table too large for buffer"), and the connection went
// down with every publish in flight on it. The largest message that fits is published; one byte
// more fails that publish alone, with the sizes, and the same connection publishes the next.
TEST_F(AmqpTest, HeadersTooLargeForTheFrameFailThatPublishAlone) {
  const std::string q = Queue("frame");
  ASSERT_TRUE(admin_->Apply({.queues = {{.name = q}}}).ok());
  auto with_reason = [](std::string id, size_t bytes) {
    Message m = Event(std::move(id));
    m.headers = {{"x-ess-attempt", "2"}, {"x-ess-reason", std::string(bytes, 'r')}};
    return m;
  };
  // The longest reason CheckPublishable takes, found without the broker (ids of 5 bytes, as
  // those published below).
  size_t lo = 0, hi = kFrameMax;
  while (lo + 1 < hi) {
    const size_t mid = (lo + hi) / 2;
    (CheckPublishable("", q, with_reason("probe", mid)).ok() ? lo : hi) = mid;
  }
  ASSERT_GT(lo, kFrameMax - 200);
  const absl::Status refused = CheckPublishable("", q, with_reason("probe", lo + 1));
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Str(refused.message()),
            absl::StrCat("amqp: headers of ", kFrameMax - 19, " bytes do not fit the frame (max ",
                         kFrameMax - 20, ")"));

  // Connection: the largest is published and read back whole; one byte more is refused with
  // that status, and the connection publishes the next message.
  ASSERT_TRUE(admin_->Publish("", q, with_reason("m-fit", lo)).ok());
  absl::Status blocking = admin_->Publish("", q, with_reason("m-big", lo + 1));
  EXPECT_EQ(blocking.code(), absl::StatusCode::kInvalidArgument) << blocking;
  EXPECT_EQ(Str(blocking.message()), Str(refused.message()));
  ASSERT_TRUE(admin_->Publish("", q, Event("after")).ok());
  absl::StatusOr<Delivery> fits = admin_->Get(q);
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ(fits->message.message_id, "m-fit");
  ASSERT_EQ(fits->message.headers.size(), 2u);
  EXPECT_EQ(fits->message.headers[1].second.size(), lo);
  absl::StatusOr<Delivery> after = admin_->Get(q);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->message.message_id, "after");

  // Publisher: among 100 publishes in flight, the one too large fails alone (on the publisher's
  // thread, the frame the connection negotiated), and the connection stays up for the rest.
  Publisher publisher({.connection = Options("publisher"), .topology = {.queues = {{.name = q}}}});
  ASSERT_TRUE(publisher.Start().ok());
  EXPECT_EQ(publisher.frame_max(), kFrameMax);
  Outcomes outcomes;
  for (int i = 0; i < 100; ++i) {
    const std::string id = absl::StrCat("ok-", i);
    publisher.Publish("", q, Event(id), outcomes.Track(id));
    if (i == 50) publisher.Publish("", q, with_reason("too-big", 140'000), outcomes.Track("bad"));
  }
  ASSERT_TRUE(outcomes.WaitFor(101));
  std::map<std::string, absl::Status> s = outcomes.statuses();
  EXPECT_EQ(s["bad"].code(), absl::StatusCode::kInvalidArgument) << s["bad"];
  EXPECT_THAT(Str(s["bad"].message()),
              HasSubstr(absl::StrCat("bytes do not fit the frame (max ", kFrameMax - 20, ")")));
  EXPECT_EQ(outcomes.CountOk(), 100u);
  publisher.Publish("", q, Event("next"), outcomes.Track("next"));
  ASSERT_TRUE(outcomes.WaitFor(102));
  EXPECT_TRUE(outcomes.statuses()["next"].ok()) << outcomes.statuses()["next"];
  EXPECT_TRUE(publisher.connected());
  EXPECT_EQ(Depth(q), 101u);
}

TEST_F(AmqpTest, ConnectionErrorsHaveSpecificCodes) {
  const std::string missing = absl::StrCat(prefix_, ".missing");
  EXPECT_EQ(admin_->MessageCount(missing).status().code(), absl::StatusCode::kNotFound);
  // The failed passive declare closed the channel; the next call reopens it.
  const std::string q = Queue("q");
  ASSERT_TRUE(admin_->Apply({.queues = {{.name = q}}}).ok());
  EXPECT_EQ(admin_->Get(q).status().code(), absl::StatusCode::kNotFound);  // empty
  ASSERT_TRUE(admin_->Publish("", q, Event("x")).ok());
  EXPECT_EQ(Depth(q), 1u);
  ASSERT_TRUE(admin_->Purge(q).ok());
  EXPECT_EQ(Depth(q), 0u);

  // Redeclaring with other arguments is refused by the broker.
  absl::Status refused =
      admin_->Apply({.queues = {{.name = q, .int_args = {{"x-message-ttl", 1000}}}}});
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_THAT(Str(refused.message()), HasSubstr("PRECONDITION_FAILED"));
  EXPECT_EQ(admin_->Publish("no-such-exchange", "rk", Event("y")).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Depth(q), 0u);
}

TEST_F(AmqpTest, WithoutBrokerPublisherAndConsumerFailFast) {
  // A port nobody listens on: bind one, then close it.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  close(fd);
  ConnectionOptions dead = Options("dead");
  dead.host = "127.0.0.1";
  dead.port = ntohs(addr.sin_port);

  EXPECT_EQ(Connection::Open(dead).status().code(), absl::StatusCode::kUnavailable);

  Publisher publisher({.connection = dead});
  EXPECT_EQ(publisher.Start().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(publisher.connected());
  std::optional<absl::Status> inline_status;
  publisher.Publish("", "q", Event("x"), [&](absl::Status s) { inline_status = s; });
  ASSERT_TRUE(inline_status.has_value()) << "done must run before Publish returns";
  EXPECT_EQ(inline_status->code(), absl::StatusCode::kUnavailable);
  publisher.Stop();

  Consumer consumer({.connection = dead, .queues = {"q"}}, [](Delivery) {});
  EXPECT_EQ(consumer.Start().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(consumer.connected());
  consumer.Stop();
}

TEST_F(AmqpTest, PublisherFailsOutstandingAndConsumerResumesAfterTheBrokerClosesConnections) {
  const std::string in = Queue("in");    // consumed
  const std::string out = Queue("out");  // published to

  // Consumer: one delivery stays unacked across the connection loss.
  std::unique_ptr<Consuming> c = Consume(ConsumerOptions({in}, 10, {.queues = {{.name = in}}}));
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(admin_->Publish("", in, Event("held")).ok());
  std::optional<Delivery> held = c->inbox.Pop();
  ASSERT_TRUE(held.has_value());
  EXPECT_FALSE(held->redelivered);

  // Publisher: its thread is held inside the done of a first publish, so the next ones queue up
  // and only reach the socket after the broker has closed the connection.
  Publisher publisher(
      {.connection = Options("publisher"), .topology = {.queues = {{.name = out}}}});
  ASSERT_TRUE(publisher.Start().ok());
  absl::Notification entered, release;
  absl::Status first_status;
  publisher.Publish("", out, Event("p-0"), [&](absl::Status s) {
    first_status = s;
    entered.Notify();
    release.WaitForNotificationWithTimeout(kWait);
  });
  ASSERT_TRUE(entered.WaitForNotificationWithTimeout(kWait));
  EXPECT_TRUE(first_status.ok()) << first_status;
  Outcomes outstanding;
  constexpr int kOutstanding = 10;
  for (int i = 1; i <= kOutstanding; ++i) {
    std::string id = absl::StrCat("p-", i);
    publisher.Publish("", out, Event(id), outstanding.Track(id));
  }

  // consumer, publisher and admin connections.
  EXPECT_EQ(ess::testing::CloseBrokerConnections(prefix_), 3);
  release.Notify();

  ASSERT_TRUE(outstanding.WaitFor(kOutstanding));
  for (const auto& [id, s] : outstanding.statuses()) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << id << ": " << s;
  }
  ASSERT_TRUE(Eventually([&] { return publisher.connected(); }));
  Outcomes after;
  publisher.Publish("", out, Event("p-after"), after.Track("p-after"));
  ASSERT_TRUE(after.WaitFor(1));
  EXPECT_TRUE(after.statuses()["p-after"].ok()) << after.statuses()["p-after"];

  // The unacked delivery comes back on the new connection; its old tag is stale.
  std::optional<Delivery> again = c->inbox.Pop();
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE(again->redelivered);
  EXPECT_EQ(again->message.message_id, "held");
  EXPECT_NE(again->delivery_tag, held->delivery_tag);
  EXPECT_TRUE(c->consumer.connected());
  c->consumer.Ack(held->delivery_tag);  // ignored: it belongs to the closed connection
  c->consumer.Ack(again->delivery_tag);

  admin_ = OpenConnection("admin2");
  ASSERT_NE(admin_, nullptr);
  constexpr int kMore = 5;
  for (int i = 0; i < kMore; ++i) {
    ASSERT_TRUE(admin_->Publish("", in, Event(absl::StrCat("more-", i))).ok());
  }
  for (int i = 0; i < kMore; ++i) {
    std::optional<Delivery> d = c->inbox.Pop();
    ASSERT_TRUE(d.has_value()) << i;
    EXPECT_FALSE(d->redelivered);
    EXPECT_EQ(d->message.message_id, absl::StrCat("more-", i));
    c->consumer.Ack(d->delivery_tag);
  }
  c->consumer.Stop();
  EXPECT_EQ(Depth(in), 0u);
  EXPECT_EQ(c->inbox.total(), 2 + kMore);
  publisher.Stop();
  EXPECT_EQ(Depth(out), 2u);  // p-0 and p-after
}

}  // namespace
}  // namespace ess::amqp
