// ReplayRecorder (common/replay_client.h) against the real service and against a fake one that
// shows how records were batched.
#include <algorithm>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/replay_client.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "replay_svc/replay_server.h"
#include "replay_svc/sqlite_replay_store.h"
#include "tests/replay_svc/test_util.h"

namespace ess::replay {
namespace {

using ::ess::replay::testing::Outbound;
using ::ess::replay::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::UnorderedElementsAre;

constexpr absl::Duration kWait = absl::Seconds(60);

// Hands out `done` callbacks and counts how each one completed.
class DoneTracker {
 public:
  explicit DoneTracker(size_t n) : calls_(n, 0) {}

  ReplayRecorder::Done Make(size_t index) {
    return [this, index](absl::Status status) {
      absl::MutexLock lock(&mu_);
      ++calls_[index];
      ++total_;
      ++codes_[status.code()];
    };
  }

  // True once `n` callbacks ran, false if `timeout` passed first.
  bool WaitForTotal(size_t n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, n]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return total_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }

  // Every callback ran exactly once.
  bool EachExactlyOnce() {
    absl::MutexLock lock(&mu_);
    return std::all_of(calls_.begin(), calls_.end(), [](int c) { return c == 1; });
  }

  absl::flat_hash_map<absl::StatusCode, size_t> codes() {
    absl::MutexLock lock(&mu_);
    return codes_;
  }

 private:
  absl::Mutex mu_;
  std::vector<int> calls_ ABSL_GUARDED_BY(mu_);
  size_t total_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<absl::StatusCode, size_t> codes_ ABSL_GUARDED_BY(mu_);
};

TEST(ReplayRecorderTest, FiveThousandRecordsAreStoredAndEachDoneRunsOnce) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<SqliteReplayStore>> store =
      SqliteReplayStore::Open(dir.File("replay.db"));
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<std::unique_ptr<ReplayServer>> server =
      ReplayServer::Start(**store, {.listen = "127.0.0.1:0"});
  ASSERT_TRUE(server.ok()) << server.status();

  constexpr int kThreads = 4;
  constexpr int kPerThread = 1250;
  constexpr int kTotal = kThreads * kPerThread;
  DoneTracker tracker(kTotal);
  {
    ReplayRecorder recorder({.address = (*server)->address()});
    std::vector<std::thread> producers;
    for (int t = 0; t < kThreads; ++t) {
      producers.emplace_back([&, t] {
        for (int i = 0; i < kPerThread; ++i) {
          const int index = t * kPerThread + i;
          recorder.Record(Outbound("prison", absl::StrCat("m-", index)), tracker.Make(index));
        }
      });
    }
    for (std::thread& p : producers) p.join();
    ASSERT_TRUE(tracker.WaitForTotal(kTotal, kWait));
  }  // ~ReplayRecorder: Stop() with nothing left.
  EXPECT_TRUE(tracker.EachExactlyOnce());
  EXPECT_THAT(tracker.codes(), UnorderedElementsAre(std::pair(absl::StatusCode::kOk, kTotal)));

  absl::StatusOr<std::vector<ess::v1::PartnerStats>> stats = (*store)->Stats("prison");
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_EQ(stats->size(), 1u);
  EXPECT_EQ((*stats)[0].received(), static_cast<uint64_t>(kTotal));
  (*server)->Shutdown(absl::Seconds(5));
}

TEST(ReplayRecorderTest, ServerDownCompletesEveryRecordWithUnavailable) {
  const int port = testing::PickFreePort();
  ASSERT_GT(port, 0);
  constexpr int kTotal = 20;
  DoneTracker tracker(kTotal);
  ReplayRecorder recorder(
      {.address = absl::StrCat("127.0.0.1:", port), .batch_max = 8, .deadline = absl::Seconds(5)});
  for (int i = 0; i < kTotal; ++i) {
    recorder.Record(Outbound("prison", absl::StrCat("m-", i)), tracker.Make(i));
  }
  ASSERT_TRUE(tracker.WaitForTotal(kTotal, kWait));
  EXPECT_TRUE(tracker.EachExactlyOnce());
  EXPECT_THAT(tracker.codes(),
              UnorderedElementsAre(std::pair(absl::StatusCode::kUnavailable, kTotal)));
}

// Accepts Record calls, remembering each batch's size; while holding, it answers none until
// released.
class FakeReplayService final : public ess::v1::ReplayService::CallbackService {
 public:
  grpc::ServerUnaryReactor* Record(grpc::CallbackServerContext* context,
                                   const ess::v1::RecordRequest* request,
                                   ess::v1::RecordResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    response->set_stored(static_cast<uint32_t>(request->records_size()));
    absl::MutexLock lock(&mu_);
    batch_sizes_.push_back(request->records_size());
    if (holding_) {
      held_.push_back(reactor);
      max_held_ = std::max(max_held_, held_.size());
    } else {
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }

  void Hold() {
    absl::MutexLock lock(&mu_);
    holding_ = true;
  }

  // Stops holding and answers every held call (so that the server can shut down).
  void ReleaseAll() {
    std::vector<grpc::ServerUnaryReactor*> held;
    {
      absl::MutexLock lock(&mu_);
      holding_ = false;
      held.swap(held_);
    }
    for (grpc::ServerUnaryReactor* r : held) r->Finish(grpc::Status::OK);
  }

  // Waits until `n` calls are held, then answers them all. False on timeout.
  bool ReleaseWhenHeld(size_t n, absl::Duration timeout) {
    std::vector<grpc::ServerUnaryReactor*> held;
    {
      absl::MutexLock lock(&mu_);
      auto enough = [this, n]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return held_.size() >= n; };
      if (!mu_.AwaitWithTimeout(absl::Condition(&enough), timeout)) return false;
      held.swap(held_);
    }
    for (grpc::ServerUnaryReactor* r : held) r->Finish(grpc::Status::OK);
    return true;
  }

  bool WaitForCalls(size_t n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return batch_sizes_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
  }

  std::vector<int> batch_sizes() {
    absl::MutexLock lock(&mu_);
    return batch_sizes_;
  }
  size_t max_held() {
    absl::MutexLock lock(&mu_);
    return max_held_;
  }

 private:
  absl::Mutex mu_;
  std::vector<int> batch_sizes_ ABSL_GUARDED_BY(mu_);
  bool holding_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<grpc::ServerUnaryReactor*> held_ ABSL_GUARDED_BY(mu_);
  size_t max_held_ ABSL_GUARDED_BY(mu_) = 0;
};

class ReplayRecorderBatchingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }
  void TearDown() override {
    service_.ReleaseAll();
    if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

  FakeReplayService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(ReplayRecorderBatchingTest, FullBatchesGoAtOnceAndStopFlushesTheRest) {
  constexpr int kTotal = 35;
  DoneTracker tracker(kTotal);
  ReplayRecorder recorder({.address = address(), .batch_max = 10, .batch_delay = absl::Hours(1)});
  for (int i = 0; i < kTotal; ++i) {
    recorder.Record(Outbound("prison", absl::StrCat("m-", i)), tracker.Make(i));
  }
  // Three full batches go without waiting for the (hour-long) delay.
  ASSERT_TRUE(tracker.WaitForTotal(30, kWait));
  EXPECT_THAT(service_.batch_sizes(), ElementsAre(10, 10, 10));
  recorder.Stop();
  EXPECT_THAT(service_.batch_sizes(), ElementsAre(10, 10, 10, 5));
  ASSERT_TRUE(tracker.WaitForTotal(kTotal, absl::ZeroDuration()));
  EXPECT_TRUE(tracker.EachExactlyOnce());
  EXPECT_THAT(tracker.codes(), UnorderedElementsAre(std::pair(absl::StatusCode::kOk, kTotal)));
}

TEST_F(ReplayRecorderBatchingTest, PartialBatchGoesWhenItsDelayRunsOut) {
  DoneTracker tracker(3);
  ReplayRecorder recorder(
      {.address = address(), .batch_max = 100, .batch_delay = absl::Milliseconds(5)});
  for (int i = 0; i < 3; ++i) {
    recorder.Record(Outbound("prison", absl::StrCat("m-", i)), tracker.Make(i));
  }
  ASSERT_TRUE(tracker.WaitForTotal(3, kWait));  // Without Stop().
  EXPECT_THAT(service_.batch_sizes(), ElementsAre(3));
}

TEST_F(ReplayRecorderBatchingTest, NoMoreThanMaxInFlightBatchesAtOnce) {
  service_.Hold();
  constexpr int kTotal = 6;
  DoneTracker tracker(kTotal);
  ReplayRecorder recorder({.address = address(),
                           .batch_max = 1,
                           .batch_delay = absl::ZeroDuration(),
                           .max_in_flight_batches = 2});
  for (int i = 0; i < kTotal; ++i) {
    recorder.Record(Outbound("prison", absl::StrCat("m-", i)), tracker.Make(i));
  }
  // Each round: two calls arrive and are held; answering them lets the next two go.
  for (int round = 0; round < kTotal / 2; ++round) {
    ASSERT_TRUE(service_.ReleaseWhenHeld(2, kWait)) << "round " << round;
  }
  ASSERT_TRUE(tracker.WaitForTotal(kTotal, kWait));
  EXPECT_EQ(service_.max_held(), 2u);
  EXPECT_EQ(service_.batch_sizes().size(), static_cast<size_t>(kTotal));
  EXPECT_TRUE(tracker.EachExactlyOnce());
}

TEST_F(ReplayRecorderBatchingTest, RecordAfterStopIsCancelledAtOnce) {
  DoneTracker tracker(1);
  ReplayRecorder recorder({.address = address()});
  recorder.Stop();
  recorder.Record(Outbound("prison", "late"), tracker.Make(0));
  ASSERT_TRUE(tracker.WaitForTotal(1, absl::ZeroDuration()));
  EXPECT_THAT(tracker.codes(), UnorderedElementsAre(std::pair(absl::StatusCode::kCancelled, 1)));
  EXPECT_TRUE(service_.batch_sizes().empty());
}

}  // namespace
}  // namespace ess::replay
