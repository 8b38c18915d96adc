// AuditSink against a real RabbitMQ: one SyncAudit message per event, or, with batch_max,
// SyncAuditBatch messages that carry every event exactly once without making any wait for
// company.
//
// Needs ESS_AMQP_HOST / ESS_AMQP_PORT, as written by scripts/rabbitmq.sh:
//   scripts/rabbitmq.sh start .stack/amqp-dev && . .stack/amqp-dev/env && ctest -L integration
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/amqp.h"
#include "common/audit.h"
#include "common/metrics.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"

namespace ess {
namespace {

using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(60);

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// The outcomes of Emit's dones.
class Outcomes {
 public:
  amqp::Publisher::Done Track() {
    return [this](absl::Status s) {
      absl::MutexLock lock(&mu_);
      ++(s.ok() ? ok_ : failed_);
      if (!s.ok()) last_error_ = std::move(s);
    };
  }
  // Waits until `n` dones ran; false after kWait.
  bool WaitFor(int n) {
    absl::MutexLock lock(&mu_);
    auto all = [&] { return ok_ + failed_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&all), kWait);
  }
  int ok() {
    absl::MutexLock lock(&mu_);
    return ok_;
  }
  int failed() {
    absl::MutexLock lock(&mu_);
    return failed_;
  }
  absl::Status last_error() {
    absl::MutexLock lock(&mu_);
    return last_error_;
  }

 private:
  absl::Mutex mu_;
  int ok_ ABSL_GUARDED_BY(mu_) = 0;
  int failed_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status last_error_ ABSL_GUARDED_BY(mu_);
};

ess::v1::SyncAudit Event(int i) {
  return AuditSink::Make(ess::v1::DIRECTION_OUTBOUND, "prison", absl::StrCat("corr-", i),
                         absl::StrCat("VIS-", i), "VisitScheduleUpdated",
                         ess::v1::MESSAGE_STATUS_DELIVERED, "", 1, absl::Now(), false);
}

class AuditSinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(Env("ESS_AMQP_HOST").empty() || Env("ESS_AMQP_PORT").empty())
        << "ESS_AMQP_HOST / ESS_AMQP_PORT not set: run scripts/rabbitmq.sh start DIR and source "
           "DIR/env";
    prefix_ = absl::StrCat("audit_sink_test.",
                           ::testing::UnitTest::GetInstance()->current_test_info()->name(), ".",
                           getpid(), ".", absl::ToUnixMicros(absl::Now()));
    exchange_ = prefix_ + ".audit";
    queue_ = prefix_ + ".sink";
    absl::StatusOr<std::unique_ptr<amqp::Connection>> c = amqp::Connection::Open(Options("admin"));
    ASSERT_TRUE(c.ok()) << c.status();
    admin_ = *std::move(c);
  }

  void TearDown() override {
    if (publisher_) publisher_->Stop();
    sinks_.clear();  // after the publisher's thread, which runs their callbacks, has stopped
    if (bound_) {
      EXPECT_TRUE(admin_->DeleteQueue(queue_).ok());
    }
  }

  amqp::ConnectionOptions Options(std::string_view role) const {
    amqp::ConnectionOptions o;
    o.host = Env("ESS_AMQP_HOST");
    o.port = std::atoi(Env("ESS_AMQP_PORT").c_str());
    o.connection_name = absl::StrCat(prefix_, "-", std::string(role));
    o.rpc_timeout = absl::Seconds(20);
    return o;
  }

  // A publisher that declares the audit exchange; with `bind`, a queue bound to it.
  void StartPublisher(bool bind) {
    if (bind) {
      ASSERT_TRUE(admin_
                      ->Apply({.exchanges = {{.name = exchange_}},
                               .queues = {{.name = queue_}},
                               .bindings = {{.queue = queue_, .exchange = exchange_}}})
                      .ok());
      bound_ = true;
    }
    publisher_ = std::make_unique<amqp::Publisher>(amqp::Publisher::Options{
        .connection = Options("publisher"), .topology = {.exchanges = {{.name = exchange_}}}});
    ASSERT_TRUE(publisher_->Start().ok());
  }

  // A sink on the publisher, alive until TearDown has stopped the publisher: its publishes'
  // callbacks use it, the last of them possibly still running when a done or Drain returned.
  AuditSink& NewSink(uint32_t batch_max, int64_t max_unsettled = AuditSink::kMaxUnsettled) {
    sinks_.push_back(
        std::make_unique<AuditSink>(publisher_.get(), exchange_, batch_max, max_unsettled));
    return *sinks_.back();
  }

  // Every message in the queue, got one by one.
  std::vector<amqp::Delivery> ReadQueue() {
    std::vector<amqp::Delivery> out;
    for (auto d = admin_->Get(queue_); d.ok(); d = admin_->Get(queue_)) out.push_back(*d);
    return out;
  }

  std::string prefix_, exchange_, queue_;
  std::unique_ptr<amqp::Connection> admin_;
  std::unique_ptr<amqp::Publisher> publisher_;
  std::vector<std::unique_ptr<AuditSink>> sinks_;
  bool bound_ = false;
};

TEST_F(AuditSinkTest, WithoutBatchingEachEventIsASyncAuditMessage) {
  StartPublisher(/*bind=*/true);
  AuditSink& sink = NewSink(/*batch_max=*/0);
  Outcomes outcomes;
  for (int i = 0; i < 3; ++i) sink.Emit(Event(i), outcomes.Track());
  ASSERT_TRUE(outcomes.WaitFor(3));
  EXPECT_EQ(outcomes.ok(), 3);
  std::vector<amqp::Delivery> got = ReadQueue();
  ASSERT_EQ(got.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(got[i].message.type, "SyncAudit");
    EXPECT_EQ(got[i].message.message_id, absl::StrCat("VIS-", i, ":MESSAGE_STATUS_DELIVERED:1"));
    EXPECT_EQ(got[i].message.correlation_id, absl::StrCat("corr-", i));
    ess::v1::SyncAudit event;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(got[i].message.body, &event).ok());
    EXPECT_EQ(event.message_id(), absl::StrCat("VIS-", i));
  }
}

// Two threads emit 2,000 events as fast as they can: every event reaches the queue exactly
// once, in SyncAuditBatch messages of at most batch_max, far fewer messages than events.
TEST_F(AuditSinkTest, EventsThatComeWhileABatchIsUnconfirmedGoTogether) {
  StartPublisher(/*bind=*/true);
  constexpr int kBatchMax = 64;
  constexpr int kPerThread = 1000;
  AuditSink& sink = NewSink(kBatchMax);
  Outcomes outcomes;
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) sink.Emit(Event(t * kPerThread + i), outcomes.Track());
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(outcomes.WaitFor(2 * kPerThread));
  EXPECT_EQ(outcomes.ok(), 2 * kPerThread);
  EXPECT_EQ(sink.failures(), 0u);

  std::vector<amqp::Delivery> got = ReadQueue();
  std::set<std::string> ids;
  size_t events = 0;
  for (const amqp::Delivery& d : got) {
    EXPECT_EQ(d.message.type, "SyncAuditBatch");
    ess::v1::SyncAuditBatch batch;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(d.message.body, &batch).ok())
        << d.message.body.substr(0, 200);
    ASSERT_GE(batch.events_size(), 1);
    EXPECT_LE(batch.events_size(), kBatchMax);
    EXPECT_EQ(d.message.message_id,
              absl::StrCat("batch:", batch.events(0).message_id(), ":MESSAGE_STATUS_DELIVERED:1+",
                           batch.events_size() - 1));
    for (const ess::v1::SyncAudit& e : batch.events()) {
      EXPECT_EQ(e.correlation_id(), "corr-" + e.message_id().substr(4));
      EXPECT_EQ(e.status(), ess::v1::MESSAGE_STATUS_DELIVERED);
      ids.insert(e.message_id());
      ++events;
    }
  }
  EXPECT_EQ(events, 2u * kPerThread);      // none lost...
  EXPECT_EQ(ids.size(), 2u * kPerThread);  // ...and none twice
  EXPECT_GE(got.size(), 2u * kPerThread / kBatchMax);
  EXPECT_LT(got.size(), 2u * kPerThread / 4) << "the events were hardly batched";
  const std::string text = metrics::Render(sink.Metrics());
  EXPECT_THAT(text, HasSubstr("ess_audit_events_total{outcome=\"published\"} 2000\n"));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("ess_audit_messages_total ", got.size(), "\n")));
}

// An event emitted while nothing is unconfirmed goes out at once, alone: no batch waits to fill.
TEST_F(AuditSinkTest, AnEventAloneIsPublishedAtOnce) {
  StartPublisher(/*bind=*/true);
  AuditSink& sink = NewSink(/*batch_max=*/64);
  Outcomes outcomes;
  for (int i = 0; i < 3; ++i) {
    sink.Emit(Event(i), outcomes.Track());
    ASSERT_TRUE(outcomes.WaitFor(i + 1)) << "event " << i << " waits for company";
  }
  std::vector<amqp::Delivery> got = ReadQueue();
  ASSERT_EQ(got.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    ess::v1::SyncAuditBatch batch;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(got[i].message.body, &batch).ok());
    ASSERT_EQ(batch.events_size(), 1);
    EXPECT_EQ(batch.events(0).message_id(), absl::StrCat("VIS-", i));
  }
}

// Drain waits for every event emitted so far, those still queued behind an unconfirmed batch
// included: after it, stopping the publisher fails none of them.
TEST_F(AuditSinkTest, DrainWaitsUntilEveryEventIsSettled) {
  StartPublisher(/*bind=*/true);
  for (uint32_t batch_max : {0u, 64u}) {
    AuditSink& sink = NewSink(batch_max);
    Outcomes outcomes;
    for (int i = 0; i < 500; ++i) sink.Emit(Event(i), outcomes.Track());
    ASSERT_TRUE(sink.Drain(kWait)) << "batch_max " << batch_max;
    EXPECT_EQ(outcomes.ok(), 500) << "batch_max " << batch_max;  // no waiting on the dones
    EXPECT_TRUE(sink.Drain(absl::ZeroDuration()));               // nothing left
  }
  publisher_->Stop();
  size_t events = 0;
  for (const amqp::Delivery& d : ReadQueue()) {
    if (d.message.type == "SyncAudit") {
      ++events;
    } else {
      ess::v1::SyncAuditBatch batch;
      ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(d.message.body, &batch).ok());
      events += batch.events_size();
    }
  }
  EXPECT_EQ(events, 1000u);
}

// EmitOrWait lets its caller go on at once while the publisher keeps up, and only once the
// event is settled when too many are unsettled (the outbound lane's acks wait then).
TEST_F(AuditSinkTest, EmitOrWaitHoldsTheCallerOnlyWhileTooManyAreUnsettled) {
  StartPublisher(/*bind=*/true);
  {
    AuditSink& sink = NewSink(/*batch_max=*/0);
    std::thread::id ran_on;
    sink.EmitOrWait(Event(0), [&] { ran_on = std::this_thread::get_id(); });
    EXPECT_EQ(ran_on, std::this_thread::get_id()) << "room: proceed runs at once, here";
    ASSERT_TRUE(sink.Drain(kWait));
  }
  for (uint32_t batch_max : {0u, 64u}) {
    AuditSink& sink = NewSink(batch_max, /*max_unsettled=*/0);
    absl::Notification proceeded;
    std::string metrics_then;
    sink.EmitOrWait(Event(1), [&] {
      metrics_then = metrics::Render(sink.Metrics());
      proceeded.Notify();
    });
    ASSERT_TRUE(proceeded.WaitForNotificationWithTimeout(kWait)) << "batch_max " << batch_max;
    // No room: proceed waited until the broker confirmed the event.
    EXPECT_THAT(metrics_then, HasSubstr("ess_audit_events_total{outcome=\"published\"} 1\n"))
        << "batch_max " << batch_max;
    ASSERT_TRUE(sink.Drain(kWait));
  }
  EXPECT_EQ(ReadQueue().size(), 3u);
}

// A batch the broker returns (nobody bound to the exchange) fails each of its events: each done
// hears why, and each counts as a failure.
TEST_F(AuditSinkTest, ARefusedBatchFailsEachOfItsEvents) {
  StartPublisher(/*bind=*/false);
  AuditSink& sink = NewSink(/*batch_max=*/8);
  Outcomes outcomes;
  for (int i = 0; i < 50; ++i) sink.Emit(Event(i), outcomes.Track());
  ASSERT_TRUE(outcomes.WaitFor(50));
  EXPECT_EQ(outcomes.failed(), 50);
  EXPECT_EQ(sink.failures(), 50u);
  EXPECT_EQ(outcomes.last_error().code(), absl::StatusCode::kFailedPrecondition)
      << outcomes.last_error();
  EXPECT_THAT(metrics::Render(sink.Metrics()),
              HasSubstr("ess_audit_events_total{outcome=\"failed\"} 50\n"));
}

}  // namespace
}  // namespace ess
