// ReplayRecorder (common/replay_client.h) against the real service and against a fake one that
// shows how records and lookups were batched.
#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/metrics.h"
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
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

constexpr absl::Duration kWait = absl::Seconds(60);

absl::Status StatusOf(const absl::Status& result) { return result; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& result) {
  return result.status();
}

// Hands out `done` callbacks and records how each one completed.
template <typename Result>
class Tracker {
 public:
  explicit Tracker(size_t n) : calls_(n, 0), results_(n) {}

  absl::AnyInvocable<void(Result) &&> Make(size_t index) {
    return [this, index](Result result) {
      absl::MutexLock lock(&mu_);
      ++calls_[index];
      ++total_;
      ++codes_[StatusOf(result).code()];
      results_[index] = std::move(result);
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

  // What callback `index` was given (nullopt if it did not run).
  std::optional<Result> result(size_t index) {
    absl::MutexLock lock(&mu_);
    return results_[index];
  }

 private:
  absl::Mutex mu_;
  std::vector<int> calls_ ABSL_GUARDED_BY(mu_);
  std::vector<std::optional<Result>> results_ ABSL_GUARDED_BY(mu_);
  size_t total_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<absl::StatusCode, size_t> codes_ ABSL_GUARDED_BY(mu_);
};

using DoneTracker = Tracker<absl::Status>;
using LookupTracker = Tracker<absl::StatusOr<ess::v1::MessageRecord>>;

ess::v1::RecordKey OutboundKey(const std::string& partner, const std::string& message_id) {
  return testing::Key(ess::v1::DIRECTION_OUTBOUND, partner, message_id);
}

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

// The real store, counting the keyed reads that reach it (what the server was asked).
class CountingStore final : public ReplayStore {
 public:
  explicit CountingStore(ReplayStore& store) : store_(store) {}

  absl::StatusOr<uint32_t> Record(
      const google::protobuf::RepeatedPtrField<ess::v1::MessageRecord>& records) override {
    return store_.Record(records);
  }
  absl::StatusOr<uint32_t> Import(
      const google::protobuf::RepeatedPtrField<ess::v1::MessageRecord>& records) override {
    return store_.Import(records);
  }
  absl::StatusOr<ess::v1::MessageRecord> UpdateStatus(
      const ess::v1::UpdateStatusRequest& request) override {
    return store_.UpdateStatus(request);
  }
  absl::StatusOr<std::vector<ess::v1::ClaimOutcome>> Claim(
      const google::protobuf::RepeatedPtrField<ess::v1::Claim>& claims) override {
    return store_.Claim(claims);
  }
  absl::StatusOr<ess::v1::MessageRecord> GetByKey(const ess::v1::RecordKey& key) override {
    get_by_key_calls_.fetch_add(1);
    return store_.GetByKey(key);
  }
  absl::StatusOr<std::vector<std::optional<ess::v1::MessageRecord>>> GetByKeys(
      const google::protobuf::RepeatedPtrField<ess::v1::RecordKey>& keys) override {
    get_by_keys_calls_.fetch_add(1);
    keys_read_.fetch_add(keys.size());
    return store_.GetByKeys(keys);
  }
  absl::StatusOr<std::vector<ess::v1::MessageRecord>> GetByCorrelation(
      absl::string_view correlation_id) override {
    return store_.GetByCorrelation(correlation_id);
  }
  absl::StatusOr<ListPage> List(const ListQuery& query) override { return store_.List(query); }
  absl::StatusOr<MarkedReplays> MarkReplayed(const std::vector<ReplayMark>& marks) override {
    return store_.MarkReplayed(marks);
  }
  absl::StatusOr<uint64_t> Purge(const RetentionPolicy& policy) override {
    return store_.Purge(policy);
  }
  absl::StatusOr<std::vector<ess::v1::PartnerStats>> Stats(absl::string_view partner) override {
    return store_.Stats(partner);
  }
  absl::StatusOr<UnconfirmedDeliveries> CountUnconfirmed(absl::string_view partner,
                                                         int64_t since_micros,
                                                         int64_t until_micros) override {
    return store_.CountUnconfirmed(partner, since_micros, until_micros);
  }

  int get_by_key_calls() const { return get_by_key_calls_.load(); }
  int get_by_keys_calls() const { return get_by_keys_calls_.load(); }
  int keys_read() const { return keys_read_.load(); }

 private:
  ReplayStore& store_;
  std::atomic<int> get_by_key_calls_{0};
  std::atomic<int> get_by_keys_calls_{0};
  std::atomic<int> keys_read_{0};
};

TEST(ReplayRecorderTest, ConcurrentLookupsAreBatchedAndEachGetsItsOwnAnswer) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<SqliteReplayStore>> sqlite =
      SqliteReplayStore::Open(dir.File("replay.db"));
  ASSERT_TRUE(sqlite.ok()) << sqlite.status();
  CountingStore store(**sqlite);
  // No health probe: its lookups of the store would count too.
  absl::StatusOr<std::unique_ptr<ReplayServer>> server = ReplayServer::Start(
      store, {.listen = "127.0.0.1:0", .health_probe_interval = absl::ZeroDuration()});
  ASSERT_TRUE(server.ok()) << server.status();

  // Even ids are stored, each with its own status and payload.
  constexpr int kThreads = 4;
  constexpr int kPerThread = 500;
  constexpr int kTotal = kThreads * kPerThread;
  google::protobuf::RepeatedPtrField<ess::v1::MessageRecord> stored;
  for (int i = 0; i < kTotal; i += 2) {
    ess::v1::MessageRecord r =
        Outbound("prison", absl::StrCat("m-", i),
                 i % 4 == 0 ? ess::v1::MESSAGE_STATUS_DELIVERED : ess::v1::MESSAGE_STATUS_FAILED);
    r.set_payload(absl::StrCat("payload of ", i));
    *stored.Add() = std::move(r);
  }
  ASSERT_TRUE((*sqlite)->Record(stored).ok());

  // Full batches only (the delay never runs out), so the number of calls is exact.
  constexpr size_t kBatchMax = 100;
  LookupTracker tracker(kTotal);
  ReplayRecorder recorder(
      {.address = (*server)->address(), .batch_max = kBatchMax, .batch_delay = absl::Hours(1)});
  std::vector<std::thread> callers;
  for (int t = 0; t < kThreads; ++t) {
    callers.emplace_back([&, t] {
      for (int i = t; i < kTotal; i += kThreads) {
        recorder.Lookup(OutboundKey("prison", absl::StrCat("m-", i)), tracker.Make(i));
      }
    });
  }
  for (std::thread& c : callers) c.join();
  ASSERT_TRUE(tracker.WaitForTotal(kTotal, kWait));
  EXPECT_TRUE(tracker.EachExactlyOnce());
  EXPECT_THAT(tracker.codes(),
              UnorderedElementsAre(std::pair(absl::StatusCode::kOk, kTotal / 2),
                                   std::pair(absl::StatusCode::kNotFound, kTotal / 2)));
  for (int i = 0; i < kTotal; ++i) {
    std::optional<absl::StatusOr<ess::v1::MessageRecord>> got = tracker.result(i);
    ASSERT_TRUE(got.has_value()) << i;
    if (i % 2 == 1) {
      EXPECT_EQ(got->status().message(),
                absl::StrCat("no record direction=outbound partner=prison message_id=m-", i));
      continue;
    }
    ASSERT_TRUE(got->ok()) << i << ": " << got->status();
    EXPECT_EQ((*got)->message_id(), absl::StrCat("m-", i));
    EXPECT_EQ((*got)->payload(), absl::StrCat("payload of ", i));
    EXPECT_EQ((*got)->status(),
              i % 4 == 0 ? ess::v1::MESSAGE_STATUS_DELIVERED : ess::v1::MESSAGE_STATUS_FAILED);
  }
  EXPECT_EQ(store.keys_read(), kTotal);
  EXPECT_EQ(store.get_by_keys_calls(), static_cast<int>(kTotal / kBatchMax));
  EXPECT_EQ(store.get_by_key_calls(), 0);
  (*server)->Shutdown(absl::Seconds(5));
}

TEST(ReplayRecorderTest, ConcurrentClaimsOfOneIdGrantItOnce) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<SqliteReplayStore>> store =
      SqliteReplayStore::Open(dir.File("replay.db"));
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<std::unique_ptr<ReplayServer>> server =
      ReplayServer::Start(**store, {.listen = "127.0.0.1:0"});
  ASSERT_TRUE(server.ok()) << server.status();
  ReplayRecorder recorder({.address = (*server)->address(), .flush_when_idle = true});

  // 100 ids, each claimed 3 times from 3 threads: however the claims fall into batches, each
  // id is granted once and held against the other two (a lease of a minute).
  constexpr int kIds = 100, kCopies = 3, kTotal = kIds * kCopies;
  Tracker<absl::StatusOr<ess::v1::ClaimOutcome>> tracker(kTotal + 1);
  std::vector<std::thread> threads;
  for (int t = 0; t < kCopies; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIds; ++i) {
        ess::v1::Claim claim;
        *claim.mutable_record() = testing::MakeRecord(
            ess::v1::DIRECTION_INBOUND, "prison", absl::StrCat("wh-", i), absl::StrCat("VIS-", i));
        claim.set_window_seconds(600);
        claim.set_lease_ms(60'000);
        recorder.Claim(std::move(claim), tracker.Make(t * kIds + i));
      }
    });
  }
  for (auto& t : threads) t.join();
  // A claim the store would refuse fails alone, at once.
  ess::v1::Claim bad;
  *bad.mutable_record() = testing::MakeRecord(ess::v1::DIRECTION_INBOUND, "prison", "wh-x", "");
  recorder.Claim(std::move(bad), tracker.Make(kTotal));
  ASSERT_TRUE(tracker.WaitForTotal(kTotal + 1, kWait));
  EXPECT_TRUE(tracker.EachExactlyOnce());

  std::vector<int> granted(kIds, 0), held(kIds, 0);
  for (int t = 0; t < kCopies; ++t) {
    for (int i = 0; i < kIds; ++i) {
      auto r = tracker.result(t * kIds + i);
      ASSERT_TRUE(r.has_value() && r->ok()) << (r.has_value() ? r->status().ToString() : "none");
      if (**r == ess::v1::CLAIM_OUTCOME_CLAIMED) ++granted[i];
      if (**r == ess::v1::CLAIM_OUTCOME_IN_PROGRESS) ++held[i];
    }
  }
  EXPECT_THAT(granted, ::testing::Each(1));
  EXPECT_THAT(held, ::testing::Each(kCopies - 1));
  auto refused = tracker.result(kTotal);
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refused->status().message(), "record.correlation_id: must not be empty");

  absl::StatusOr<std::vector<ess::v1::PartnerStats>> stats = (*store)->Stats("prison");
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_EQ(stats->size(), 1u);
  EXPECT_EQ((*stats)[0].received(), static_cast<uint64_t>(kIds));
  recorder.Stop();
  (*server)->Shutdown(absl::Seconds(5));
}

TEST(ReplayRecorderTest, LookupsWithTheLanesOptionsAreAnswered) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<SqliteReplayStore>> sqlite =
      SqliteReplayStore::Open(dir.File("replay.db"));
  ASSERT_TRUE(sqlite.ok()) << sqlite.status();
  CountingStore store(**sqlite);
  // No health probe: its lookups of the store would count too.
  absl::StatusOr<std::unique_ptr<ReplayServer>> server = ReplayServer::Start(
      store, {.listen = "127.0.0.1:0", .health_probe_interval = absl::ZeroDuration()});
  ASSERT_TRUE(server.ok()) << server.status();
  google::protobuf::RepeatedPtrField<ess::v1::MessageRecord> stored;
  *stored.Add() = Outbound("prison", "m-1");
  ASSERT_TRUE((*sqlite)->Record(stored).ok());

  // As common/wiring.cc builds it: a lookup goes at once while none is in flight.
  ReplayRecorder recorder({.address = (*server)->address(), .flush_when_idle = true});
  constexpr int kTotal = 300;
  LookupTracker tracker(kTotal);
  for (int i = 0; i < kTotal; ++i) {
    recorder.Lookup(OutboundKey("prison", i % 3 == 0 ? "m-1" : "m-2"), tracker.Make(i));
  }
  ASSERT_TRUE(tracker.WaitForTotal(kTotal, kWait));
  EXPECT_TRUE(tracker.EachExactlyOnce());
  EXPECT_THAT(tracker.codes(),
              UnorderedElementsAre(std::pair(absl::StatusCode::kOk, kTotal / 3),
                                   std::pair(absl::StatusCode::kNotFound, kTotal * 2 / 3)));
  EXPECT_EQ(store.keys_read(), kTotal);
  (*server)->Shutdown(absl::Seconds(5));
}

TEST(ReplayRecorderTest, ServerDownCompletesEveryRecordAndLookupWithUnavailable) {
  const int port = testing::PickFreePort();
  ASSERT_GT(port, 0);
  constexpr int kTotal = 20;
  DoneTracker records(kTotal);
  LookupTracker lookups(kTotal);
  ReplayRecorder recorder(
      {.address = absl::StrCat("127.0.0.1:", port), .batch_max = 8, .deadline = absl::Seconds(5)});
  for (int i = 0; i < kTotal; ++i) {
    recorder.Record(Outbound("prison", absl::StrCat("m-", i)), records.Make(i));
    recorder.Lookup(OutboundKey("prison", absl::StrCat("m-", i)), lookups.Make(i));
  }
  ASSERT_TRUE(records.WaitForTotal(kTotal, kWait));
  ASSERT_TRUE(lookups.WaitForTotal(kTotal, kWait));
  EXPECT_TRUE(records.EachExactlyOnce());
  EXPECT_TRUE(lookups.EachExactlyOnce());
  EXPECT_THAT(records.codes(),
              UnorderedElementsAre(std::pair(absl::StatusCode::kUnavailable, kTotal)));
  EXPECT_THAT(lookups.codes(),
              UnorderedElementsAre(std::pair(absl::StatusCode::kUnavailable, kTotal)));
}

// Accepts Record and Lookup calls, remembering each batch's size. A Lookup finds the keys whose
// message id starts with "found". While holding a kind of call, it answers none of that kind
// until released.
class FakeReplayService final : public ess::v1::ReplayService::CallbackService {
 public:
  enum Kind { kRecord, kLookup };

  grpc::ServerUnaryReactor* Record(grpc::CallbackServerContext* context,
                                   const ess::v1::RecordRequest* request,
                                   ess::v1::RecordResponse* response) override {
    response->set_stored(static_cast<uint32_t>(request->records_size()));
    {
      absl::MutexLock lock(&mu_);
      std::vector<std::string>& ids = record_ids_.emplace_back();
      for (const ess::v1::MessageRecord& r : request->records()) ids.push_back(r.message_id());
    }
    return Arrive(kRecord, context->DefaultReactor(), request->records_size());
  }

  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* context,
                                   const ess::v1::LookupRequest* request,
                                   ess::v1::LookupResponse* response) override {
    for (const ess::v1::RecordKey& key : request->keys()) {
      ess::v1::LookupResult* result = response->add_results();
      if (!absl::StartsWith(key.message_id(), "found")) continue;
      result->set_found(true);
      ess::v1::MessageRecord* record = result->mutable_record();
      record->set_direction(key.direction());
      record->set_partner(key.partner());
      record->set_message_id(key.message_id());
      record->set_status(ess::v1::MESSAGE_STATUS_PUBLISHED);
    }
    if (short_answers_.load()) response->mutable_results()->RemoveLast();
    return Arrive(kLookup, context->DefaultReactor(), request->keys_size());
  }

  void Hold(Kind kind = kRecord) {
    absl::MutexLock lock(&mu_);
    holding_[kind] = true;
  }

  // Lookups answer one result fewer than they were asked.
  void AnswerShort() { short_answers_.store(true); }

  // Stops holding and answers every held call (so that the server can shut down).
  void ReleaseAll() {
    std::vector<grpc::ServerUnaryReactor*> held;
    {
      absl::MutexLock lock(&mu_);
      for (Kind kind : {kRecord, kLookup}) {
        holding_[kind] = false;
        held.insert(held.end(), held_[kind].begin(), held_[kind].end());
        held_[kind].clear();
      }
    }
    for (grpc::ServerUnaryReactor* r : held) r->Finish(grpc::Status::OK);
  }

  // Waits until `n` Record calls are held, then answers them all. False on timeout.
  bool ReleaseWhenHeld(size_t n, absl::Duration timeout) {
    std::vector<grpc::ServerUnaryReactor*> held;
    {
      absl::MutexLock lock(&mu_);
      auto enough = [this, n]()
                        ABSL_SHARED_LOCKS_REQUIRED(mu_) { return held_[kRecord].size() >= n; };
      if (!mu_.AwaitWithTimeout(absl::Condition(&enough), timeout)) return false;
      held.swap(held_[kRecord]);
    }
    for (grpc::ServerUnaryReactor* r : held) r->Finish(grpc::Status::OK);
    return true;
  }

  // Waits until `n` calls of `kind` arrived. False on timeout.
  bool WaitForCalls(size_t n, absl::Duration timeout, Kind kind = kRecord) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n, kind]()
                      ABSL_SHARED_LOCKS_REQUIRED(mu_) { return batch_sizes_[kind].size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
  }

  std::vector<int> batch_sizes(Kind kind = kRecord) {
    absl::MutexLock lock(&mu_);
    return batch_sizes_[kind];
  }
  // The message ids of each Record call, in the order they were sent.
  std::vector<std::vector<std::string>> record_ids() {
    absl::MutexLock lock(&mu_);
    return record_ids_;
  }
  size_t max_held() {
    absl::MutexLock lock(&mu_);
    return max_held_;
  }

 private:
  grpc::ServerUnaryReactor* Arrive(Kind kind, grpc::ServerUnaryReactor* reactor, int batch_size) {
    absl::MutexLock lock(&mu_);
    batch_sizes_[kind].push_back(batch_size);
    if (holding_[kind]) {
      held_[kind].push_back(reactor);
      max_held_ = std::max(max_held_, held_[kind].size());
    } else {
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }

  absl::Mutex mu_;
  std::vector<int> batch_sizes_[2] ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<std::string>> record_ids_ ABSL_GUARDED_BY(mu_);
  bool holding_[2] ABSL_GUARDED_BY(mu_) = {false, false};
  std::vector<grpc::ServerUnaryReactor*> held_[2] ABSL_GUARDED_BY(mu_);
  size_t max_held_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<bool> short_answers_{false};
};

class ReplayRecorderBatchingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.SetMaxReceiveMessageSize(64 << 20);  // as replay_svc's
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

  // Each item its own batch, sent at once, one call of each kind at a time.
  ReplayRecorder::Options OneCallAtATime() const {
    return {.address = address(),
            .batch_max = 1,
            .batch_delay = absl::ZeroDuration(),
            .max_in_flight_batches = 1};
  }

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

TEST_F(ReplayRecorderBatchingTest, RecordsTogetherShareOneCallInTheirOrderAndOneDone) {
  DoneTracker tracker(6);
  ReplayRecorder recorder({.address = address(), .batch_max = 4, .batch_delay = absl::Hours(1)});
  auto group = [](std::initializer_list<const char*> ids) {
    std::vector<ess::v1::MessageRecord> records;
    for (const char* id : ids) records.push_back(Outbound("prison", id));
    return records;
  };
  recorder.Record(Outbound("prison", "a"), tracker.Make(0));
  recorder.Record(Outbound("prison", "b"), tracker.Make(1));
  // Does not fit beside a and b: the open batch goes as it is, and the group opens the next.
  recorder.RecordTogether(group({"c1", "c2", "c3"}), tracker.Make(2));
  recorder.Record(Outbound("prison", "d"), tracker.Make(3));  // fills c's batch to 4
  // Larger than batch_max: one call all the same.
  recorder.RecordTogether(group({"e1", "e2", "e3", "e4", "e5", "e6"}), tracker.Make(4));
  recorder.RecordTogether({}, tracker.Make(5));  // nothing to store: OK at once
  ASSERT_TRUE(tracker.WaitForTotal(4, kWait));
  recorder.Stop();
  ASSERT_TRUE(tracker.WaitForTotal(6, absl::ZeroDuration()));
  EXPECT_TRUE(tracker.EachExactlyOnce());
  EXPECT_THAT(tracker.codes(), UnorderedElementsAre(std::pair(absl::StatusCode::kOk, 6)));
  using Ids = std::vector<std::string>;
  // Calls in flight together may arrive in any order; each keeps its records' order.
  EXPECT_THAT(service_.record_ids(), UnorderedElementsAre(Ids{"a", "b"}, Ids{"c1", "c2", "c3", "d"},
                                                          Ids{"e1", "e2", "e3", "e4", "e5", "e6"}));
}

TEST(ReplayRecorderTest, RecordsTogetherFailTogetherWhenTheStoreIsDown) {
  const int port = testing::PickFreePort();
  ASSERT_GT(port, 0);
  DoneTracker tracker(1);
  ReplayRecorder recorder({.address = absl::StrCat("127.0.0.1:", port)});
  recorder.RecordTogether({Outbound("prison", "m-1"), Outbound("prison", "m-2")}, tracker.Make(0));
  ASSERT_TRUE(tracker.WaitForTotal(1, kWait));
  EXPECT_TRUE(tracker.EachExactlyOnce());
  EXPECT_THAT(tracker.codes(), UnorderedElementsAre(std::pair(absl::StatusCode::kUnavailable, 1)));
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

// flush_when_idle (the lanes' setting): a record goes at once when nothing is in flight; the
// records that arrive while a call is in flight go together as soon as it completes (group
// commit), not when the (hour-long) delay runs out.
TEST_F(ReplayRecorderBatchingTest, IdleFlushSendsAtOnceAndGroupsWhatArrivesMeanwhile) {
  service_.Hold();
  constexpr int kTotal = 6;
  DoneTracker tracker(kTotal);
  ReplayRecorder recorder({.address = address(),
                           .batch_max = 100,
                           .batch_delay = absl::Hours(1),
                           .max_in_flight_batches = 4,
                           .flush_when_idle = true});
  recorder.Record(Outbound("prison", "m-0"), tracker.Make(0));
  ASSERT_TRUE(service_.WaitForCalls(1, kWait));
  for (int i = 1; i < kTotal; ++i) {
    recorder.Record(Outbound("prison", absl::StrCat("m-", i)), tracker.Make(i));
  }
  // A call is in flight, so the five wait for it, though three call slots are free.
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_THAT(service_.batch_sizes(), ElementsAre(1));
  ASSERT_TRUE(service_.ReleaseWhenHeld(1, kWait));
  ASSERT_TRUE(service_.ReleaseWhenHeld(1, kWait));
  ASSERT_TRUE(tracker.WaitForTotal(kTotal, kWait));
  EXPECT_THAT(service_.batch_sizes(), ElementsAre(1, 5));
  EXPECT_TRUE(tracker.EachExactlyOnce());
  EXPECT_THAT(tracker.codes(), UnorderedElementsAre(std::pair(absl::StatusCode::kOk, kTotal)));
}

// record_delay (the lanes' setting): records wait for company even when the store is idle,
// while lookups still go at once.
TEST_F(ReplayRecorderBatchingTest, RecordDelayHoldsRecordsButNotLookups) {
  DoneTracker records(3);
  LookupTracker lookups(1);
  ReplayRecorder recorder({.address = address(),
                           .batch_max = 100,
                           .batch_delay = absl::Hours(1),
                           .flush_when_idle = true,
                           .record_delay = absl::Hours(1)});
  for (int i = 0; i < 3; ++i) {
    recorder.Record(Outbound("prison", absl::StrCat("m-", i)), records.Make(i));
  }
  recorder.Lookup(OutboundKey("prison", "found-1"), lookups.Make(0));
  ASSERT_TRUE(lookups.WaitForTotal(1, kWait));  // the store was idle: the lookup went at once
  EXPECT_THAT(service_.batch_sizes(FakeReplayService::kLookup), ElementsAre(1));
  EXPECT_THAT(service_.batch_sizes(), IsEmpty());  // the records still wait for company
  recorder.Stop();
  EXPECT_THAT(service_.batch_sizes(), ElementsAre(3));
  ASSERT_TRUE(records.WaitForTotal(3, absl::ZeroDuration()));
  EXPECT_THAT(records.codes(), UnorderedElementsAre(std::pair(absl::StatusCode::kOk, 3)));
  // Each call is timed: one of records, one of lookups, none of claims.
  const std::string text = metrics::Render(recorder.Metrics());
  for (const char* family :
       {"ess_replay_client_batch_wait_seconds", "ess_replay_client_call_seconds"}) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat(family, R"(_count{call="record"} 1)")));
    EXPECT_THAT(text, HasSubstr(absl::StrCat(family, R"(_count{call="lookup"} 1)")));
    EXPECT_THAT(text, HasSubstr(absl::StrCat(family, R"(_count{call="claim"} 0)")));
  }
  // The records' batch waited for Stop(), the lookup for nothing.
  EXPECT_THAT(
      text, HasSubstr(R"(ess_replay_client_batch_wait_seconds_bucket{call="lookup",le="0.1"} 1)"));
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

TEST_F(ReplayRecorderBatchingTest, LookupsOfOneBatchEachGetTheirOwnAnswer) {
  const std::vector<std::string> ids = {"found-1", "missing-2", "found-3", "found-1"};
  LookupTracker tracker(ids.size());
  ReplayRecorder recorder({.address = address(), .batch_max = 4, .batch_delay = absl::Hours(1)});
  for (size_t i = 0; i < ids.size(); ++i) {
    recorder.Lookup(OutboundKey("prison", ids[i]), tracker.Make(i));
  }
  ASSERT_TRUE(tracker.WaitForTotal(ids.size(), kWait));
  EXPECT_THAT(service_.batch_sizes(FakeReplayService::kLookup), ElementsAre(4));
  EXPECT_TRUE(tracker.EachExactlyOnce());
  for (size_t i : {0u, 2u, 3u}) {
    std::optional<absl::StatusOr<ess::v1::MessageRecord>> got = tracker.result(i);
    ASSERT_TRUE(got.has_value() && got->ok()) << i;
    EXPECT_EQ((*got)->message_id(), ids[i]);
    EXPECT_EQ((*got)->partner(), "prison");
  }
  std::optional<absl::StatusOr<ess::v1::MessageRecord>> missing = tracker.result(1);
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(missing->status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing->status().message(),
            "no record direction=outbound partner=prison message_id=missing-2");
}

TEST_F(ReplayRecorderBatchingTest, LookupsDoNotWaitBehindHeldRecordBatches) {
  service_.Hold(FakeReplayService::kRecord);
  DoneTracker records(3);
  LookupTracker lookups(2);
  ReplayRecorder recorder(OneCallAtATime());
  // One record batch in flight (held), two queued behind it.
  for (int i = 0; i < 3; ++i) {
    recorder.Record(Outbound("prison", absl::StrCat("m-", i)), records.Make(i));
  }
  ASSERT_TRUE(service_.WaitForCalls(1, kWait, FakeReplayService::kRecord));
  recorder.Lookup(OutboundKey("prison", "found-1"), lookups.Make(0));
  recorder.Lookup(OutboundKey("prison", "missing-2"), lookups.Make(1));
  ASSERT_TRUE(lookups.WaitForTotal(2, kWait));
  EXPECT_THAT(lookups.codes(), UnorderedElementsAre(std::pair(absl::StatusCode::kOk, 1),
                                                    std::pair(absl::StatusCode::kNotFound, 1)));
  EXPECT_THAT(service_.batch_sizes(FakeReplayService::kRecord), ElementsAre(1));

  service_.ReleaseAll();
  ASSERT_TRUE(records.WaitForTotal(3, kWait));
  EXPECT_THAT(records.codes(), UnorderedElementsAre(std::pair(absl::StatusCode::kOk, 3)));
}

TEST_F(ReplayRecorderBatchingTest, RecordsDoNotWaitBehindHeldLookupBatches) {
  service_.Hold(FakeReplayService::kLookup);
  DoneTracker records(2);
  LookupTracker lookups(3);
  ReplayRecorder recorder(OneCallAtATime());
  for (int i = 0; i < 3; ++i) {
    recorder.Lookup(OutboundKey("prison", absl::StrCat("found-", i)), lookups.Make(i));
  }
  ASSERT_TRUE(service_.WaitForCalls(1, kWait, FakeReplayService::kLookup));
  recorder.Record(Outbound("prison", "m-1"), records.Make(0));
  recorder.Record(Outbound("prison", "m-2"), records.Make(1));
  ASSERT_TRUE(records.WaitForTotal(2, kWait));
  EXPECT_THAT(records.codes(), UnorderedElementsAre(std::pair(absl::StatusCode::kOk, 2)));
  EXPECT_THAT(service_.batch_sizes(FakeReplayService::kLookup), ElementsAre(1));

  service_.ReleaseAll();
  ASSERT_TRUE(lookups.WaitForTotal(3, kWait));
  EXPECT_THAT(lookups.codes(), UnorderedElementsAre(std::pair(absl::StatusCode::kOk, 3)));
}

TEST_F(ReplayRecorderBatchingTest, InvalidRecordIsRefusedAtOnceAndFailsNoOtherRecord) {
  DoneTracker tracker(7);
  ReplayRecorder recorder({.address = address(), .batch_max = 4, .batch_delay = absl::Hours(1)});
  ess::v1::MessageRecord no_id = Outbound("prison", "");
  ess::v1::MessageRecord no_status = Outbound("prison", "m-9");
  no_status.clear_status();
  // Text that is not UTF-8 in a string field makes the server refuse the whole call, and so
  // every record batched with it: an id so is refused here, alone; free text is repaired.
  ess::v1::MessageRecord latin1_id = Outbound("prison", "m-8");
  latin1_id.set_correlation_id("caf\xe9");
  ess::v1::MessageRecord latin1_error = Outbound("prison", "m-4");
  latin1_error.set_error("partner said: caf\xe9 ferm\xe9");
  recorder.Record(Outbound("prison", "m-1"), tracker.Make(0));
  recorder.Record(no_id, tracker.Make(1));
  recorder.Record(Outbound("prison", "m-2"), tracker.Make(2));
  recorder.Record(no_status, tracker.Make(3));
  // A group with one bad record is refused whole, before any of it is sent.
  recorder.RecordTogether({Outbound("prison", "m-3"), no_id}, tracker.Make(4));
  recorder.Record(latin1_id, tracker.Make(5));
  recorder.Record(latin1_error, tracker.Make(6));
  ASSERT_TRUE(tracker.WaitForTotal(4, absl::ZeroDuration()));  // Already, synchronously.
  EXPECT_EQ(tracker.result(1)->message(), "record.message_id: must not be empty");
  EXPECT_EQ(tracker.result(3)->message(), "record.status: must be a specified MessageStatus");
  EXPECT_EQ(tracker.result(4)->message(), "record.message_id: must not be empty");
  EXPECT_EQ(tracker.result(5)->message(), "record.correlation_id: not UTF-8");
  recorder.Stop();
  ASSERT_TRUE(tracker.WaitForTotal(7, kWait));
  EXPECT_TRUE(tracker.EachExactlyOnce());
  EXPECT_EQ(*tracker.result(0), absl::OkStatus());
  EXPECT_EQ(*tracker.result(2), absl::OkStatus());
  EXPECT_EQ(*tracker.result(6), absl::OkStatus());
  using Ids = std::vector<std::string>;
  EXPECT_THAT(service_.record_ids(), ElementsAre(Ids{"m-1", "m-2", "m-4"}));
}

// Large records close a batch at 16 MiB, so that no call goes past the 64 MiB gRPC carries
// (40 records of 1 MiB went as one call of 40 MiB, 80 as a call the store refused whole); a
// record over 32 MiB is refused alone, at once, and fails no other.
TEST_F(ReplayRecorderBatchingTest, LargeRecordsMakeSmallerBatchesAndAnOversizedOneIsRefusedAlone) {
  constexpr int kLarge = 40;
  DoneTracker tracker(kLarge + 1);
  ReplayRecorder recorder({.address = address(), .batch_max = 256, .batch_delay = absl::Hours(1)});
  const std::string mib(1 << 20, 'x');
  for (int i = 0; i < kLarge; ++i) {
    ess::v1::MessageRecord r = Outbound("prison", absl::StrCat("m-", i));
    r.set_payload(mib);
    recorder.Record(std::move(r), tracker.Make(i));
  }
  ess::v1::MessageRecord huge = Outbound("prison", "m-huge");
  huge.set_payload(std::string(33 << 20, 'x'));
  recorder.Record(std::move(huge), tracker.Make(kLarge));
  ASSERT_TRUE(tracker.WaitForTotal(1, absl::ZeroDuration()));  // Already, synchronously.
  EXPECT_EQ(tracker.result(kLarge)->code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(tracker.result(kLarge)->message()),
              ::testing::MatchesRegex("record: 346[0-9]{5} bytes, over the 33554432 one call to "
                                      "the replay store carries"));
  recorder.Stop();
  ASSERT_TRUE(tracker.WaitForTotal(kLarge + 1, kWait));
  EXPECT_TRUE(tracker.EachExactlyOnce());
  for (int i = 0; i < kLarge; ++i) EXPECT_EQ(*tracker.result(i), absl::OkStatus()) << i;
  // 15 records of a little over 1 MiB each fill a batch; the last takes the rest. (The calls
  // go out together, so they may arrive in any order.)
  EXPECT_THAT(service_.batch_sizes(), UnorderedElementsAre(15, 15, 10));
}

TEST_F(ReplayRecorderBatchingTest, InvalidKeyIsRefusedAtOnceAndSentNowhere) {
  LookupTracker tracker(3);
  ReplayRecorder recorder({.address = address()});
  ess::v1::RecordKey no_partner = OutboundKey("", "found-1");
  ess::v1::RecordKey no_id = OutboundKey("prison", "");
  ess::v1::RecordKey no_direction = OutboundKey("prison", "found-1");
  no_direction.clear_direction();
  recorder.Lookup(no_partner, tracker.Make(0));
  recorder.Lookup(no_id, tracker.Make(1));
  recorder.Lookup(no_direction, tracker.Make(2));
  ASSERT_TRUE(tracker.WaitForTotal(3, absl::ZeroDuration()));  // Already, synchronously.
  EXPECT_EQ(tracker.result(0)->status().message(), "partner: must not be empty");
  EXPECT_EQ(tracker.result(1)->status().message(), "message_id: must not be empty");
  EXPECT_EQ(tracker.result(2)->status().message(),
            "direction: must be DIRECTION_OUTBOUND or DIRECTION_INBOUND");
  EXPECT_THAT(tracker.codes(),
              UnorderedElementsAre(std::pair(absl::StatusCode::kInvalidArgument, 3)));
  recorder.Stop();
  EXPECT_TRUE(service_.batch_sizes(FakeReplayService::kLookup).empty());
}

TEST_F(ReplayRecorderBatchingTest, ShortAnswerFailsEveryLookupOfTheBatch) {
  service_.AnswerShort();
  LookupTracker tracker(3);
  ReplayRecorder recorder({.address = address(), .batch_max = 3, .batch_delay = absl::Hours(1)});
  for (int i = 0; i < 3; ++i) {
    recorder.Lookup(OutboundKey("prison", absl::StrCat("found-", i)), tracker.Make(i));
  }
  ASSERT_TRUE(tracker.WaitForTotal(3, kWait));
  EXPECT_THAT(tracker.codes(), UnorderedElementsAre(std::pair(absl::StatusCode::kInternal, 3)));
  EXPECT_EQ(tracker.result(0)->status().message(), "replay store answered 2 of 3 lookups");
}

TEST_F(ReplayRecorderBatchingTest, StopSendsQueuedLookupsAndCancelsLaterOnes) {
  LookupTracker tracker(6);
  ReplayRecorder recorder({.address = address(), .batch_max = 100, .batch_delay = absl::Hours(1)});
  for (int i = 0; i < 5; ++i) {
    recorder.Lookup(OutboundKey("prison", absl::StrCat("found-", i)), tracker.Make(i));
  }
  recorder.Stop();
  ASSERT_TRUE(tracker.WaitForTotal(5, absl::ZeroDuration()));
  EXPECT_THAT(service_.batch_sizes(FakeReplayService::kLookup), ElementsAre(5));
  EXPECT_THAT(tracker.codes(), UnorderedElementsAre(std::pair(absl::StatusCode::kOk, 5)));

  recorder.Lookup(OutboundKey("prison", "found-late"), tracker.Make(5));
  ASSERT_TRUE(tracker.WaitForTotal(6, absl::ZeroDuration()));
  EXPECT_EQ(tracker.result(5)->status().code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(service_.batch_sizes(FakeReplayService::kLookup), ElementsAre(5));
}

}  // namespace
}  // namespace ess::replay
