// Ops replay: the Replayer over a real store (SQLite and PostgreSQL) with a fake bus (the one piece
// replaced: it records each publish and answers as the test says), then ReplayService.Replay
// through a real in-process gRPC server. The real broker path is
// tests/integration/ops_replay_test.cc.
#include "replay_svc/replayer.h"

#include <atomic>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/replay_client.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "replay_svc/records.h"
#include "replay_svc/replay_server.h"
#include "replay_svc/sqlite_replay_store.h"
#include "tests/replay_svc/test_store.h"
#include "tests/replay_svc/test_util.h"

namespace ess::replay {
namespace {

using ::ess::replay::testing::FakeClock;
using ::ess::replay::testing::Key;
using ::ess::replay::testing::MakeRecord;
using ::ess::replay::testing::Outbound;
using ::ess::replay::testing::TempDir;
using ::ess::v1::MessageRecord;
using ::ess::v1::ReplayedRecord;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

constexpr auto kOut = ess::v1::DIRECTION_OUTBOUND;
constexpr auto kIn = ess::v1::DIRECTION_INBOUND;
constexpr auto kDead = ess::v1::MESSAGE_STATUS_DEAD;

// The bus, faked: keeps every publish and answers it with `answer` (OK by default); a
// message id in `held` gets no answer until Release().
class FakeBus {
 public:
  struct Published {
    std::string exchange, routing_key;
    amqp::Message message;
  };

  Replayer::PublishFn Fn() {
    return [this](std::string exchange, std::string routing_key, amqp::Message message,
                  amqp::Publisher::Done done) {
      absl::Status answer = absl::OkStatus();
      {
        absl::MutexLock lock(&mu_);
        published_.push_back({exchange, routing_key, message});
        if (held_ids_.contains(message.message_id)) {
          held_.push_back(std::move(done));
          return;
        }
        if (auto it = failing_ids_.find(message.message_id); it != failing_ids_.end()) {
          answer = it->second;
        }
      }
      if (before_answer_) before_answer_(message);
      std::move(done)(answer);
    };
  }

  void Fail(const std::string& message_id, absl::Status status) {
    absl::MutexLock lock(&mu_);
    failing_ids_[message_id] = std::move(status);
  }
  void Hold(const std::string& message_id) {
    absl::MutexLock lock(&mu_);
    held_ids_.insert(message_id);
  }
  // Answers the held publishes (late: after their call gave up) with `answer`.
  void Release(absl::Status answer = absl::OkStatus()) {
    std::vector<amqp::Publisher::Done> held;
    {
      absl::MutexLock lock(&mu_);
      held.swap(held_);
    }
    for (auto& done : held) std::move(done)(answer);
  }
  // Runs before each answer (to write the store as a lane would in the meantime).
  void BeforeAnswer(std::function<void(const amqp::Message&)> f) { before_answer_ = std::move(f); }

  std::vector<Published> published() {
    absl::MutexLock lock(&mu_);
    return published_;
  }

 private:
  absl::Mutex mu_;
  std::vector<Published> published_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, absl::Status> failing_ids_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> held_ids_ ABSL_GUARDED_BY(mu_);
  std::vector<amqp::Publisher::Done> held_ ABSL_GUARDED_BY(mu_);
  std::function<void(const amqp::Message&)> before_answer_;
};

// Each test runs on a SQLite file and on a PostgreSQL schema (test_store.h).
class ReplayerTest : public ::testing::TestWithParam<testing::Backend> {
 protected:
  void SetUp() override {
    auto store = db_.Open([this] { return clock_.Now(); });
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  Replayer::Options ReplayerOptions() {
    Replayer::Options options;
    options.events_exchange = "events";
    options.outbound_queues["prison"] = "visit_updates";
    options.inbound_partners.insert("prison");
    options.clock = [this] { return clock_.Peek(); };  // the store's clock, not moved
    options.confirm_timeout = absl::Seconds(5);
    return options;
  }
  // The same, with calls that wait 200 ms for their confirms.
  Replayer::Options ImpatientOptions() {
    Replayer::Options options = ReplayerOptions();
    options.confirm_timeout = absl::Milliseconds(200);
    return options;
  }

  void Store(std::vector<MessageRecord> records) {
    google::protobuf::RepeatedPtrField<MessageRecord> batch(records.begin(), records.end());
    absl::StatusOr<uint32_t> stored = store_->Record(batch);
    ASSERT_TRUE(stored.ok()) << stored.status();
  }

  MessageRecord Read(ess::v1::Direction direction, const std::string& partner,
                     const std::string& id) {
    absl::StatusOr<MessageRecord> r = store_->GetByKey(Key(direction, partner, id));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : MessageRecord();
  }

  std::vector<Replayer::Candidate> Candidates(
      const std::vector<std::tuple<ess::v1::Direction, std::string, std::string>>& keys) {
    std::vector<Replayer::Candidate> out;
    for (const auto& [direction, partner, id] : keys) {
      Replayer::Candidate c{.key = Key(direction, partner, id)};
      absl::StatusOr<MessageRecord> r = store_->GetByKey(c.key);
      if (r.ok()) c.record = *r;
      out.push_back(std::move(c));
    }
    return out;
  }

  static MessageRecord Inbound(const std::string& id, ess::v1::MessageStatus status) {
    MessageRecord r = MakeRecord(kIn, "prison", id, "VIS-" + id, status);
    r.set_payload(R"({"id":"raw partner body"})");
    r.set_rendered(R"({"type":"SlotConfirmed","id":"VIS-)" + id + R"("})");
    return r;
  }

  testing::TestStore db_{GetParam()};
  FakeClock clock_;
  std::unique_ptr<ReplayStore> store_;
  FakeBus bus_;
};

INSTANTIATE_TEST_SUITE_P(Backends, ReplayerTest, ::testing::ValuesIn(testing::kBackends),
                         testing::BackendName);

TEST_P(ReplayerTest, OutboundGoesToItsPartnersQueueAndInboundToTheEventsExchange) {
  MessageRecord dead = Outbound("prison", "m-1", kDead);
  dead.set_error("partner answered HTTP 422");
  Store({dead, Inbound("w-1", ess::v1::MESSAGE_STATUS_FAILED)});
  const MessageRecord as_read = Read(kOut, "prison", "m-1");
  Replayer replayer(ReplayerOptions(), bus_.Fn(), nullptr);

  ess::v1::ReplayResponse r =
      replayer.Replay(Candidates({{kOut, "prison", "m-1"}, {kIn, "prison", "w-1"}}),
                      {.requested_by = "alice", .reason = "partner was down"}, *store_);

  EXPECT_EQ(r.replayed(), 2u);
  EXPECT_EQ(r.skipped(), 0u);
  EXPECT_EQ(r.failed(), 0u);
  ASSERT_EQ(r.records_size(), 2);
  EXPECT_EQ(r.records(0).outcome(), ReplayedRecord::OUTCOME_REPLAYED);
  EXPECT_EQ(r.records(0).target(), "queue visit_updates");
  EXPECT_EQ(r.records(0).previous_status(), kDead);
  // What essctl --wait compares with: the lane's outcome is a later write.
  EXPECT_EQ(r.records(0).previous_updated_at().seconds(), as_read.updated_at().seconds());
  EXPECT_EQ(r.records(0).previous_updated_at().nanos(), as_read.updated_at().nanos());
  EXPECT_TRUE(r.records(0).has_previous_updated_at());
  EXPECT_EQ(r.records(0).correlation_id(), "m-1");
  EXPECT_EQ(r.records(1).target(), "exchange events");
  EXPECT_EQ(r.records(1).previous_status(), ess::v1::MESSAGE_STATUS_FAILED);

  std::vector<FakeBus::Published> published = bus_.published();
  ASSERT_EQ(published.size(), 2u);
  EXPECT_EQ(published[0].exchange, "");
  EXPECT_EQ(published[0].routing_key, "visit_updates");
  EXPECT_EQ(published[0].message.body, dead.payload());  // the bus event as it came in
  EXPECT_EQ(published[0].message.correlation_id, "m-1");
  EXPECT_EQ(published[0].message.message_id, "m-1");
  EXPECT_EQ(published[0].message.type, "VisitScheduleUpdated");
  EXPECT_THAT(published[0].message.headers, ElementsAre(Pair("x-ess-replay", "alice")));
  EXPECT_EQ(published[1].exchange, "events");
  EXPECT_EQ(published[1].routing_key, "");
  EXPECT_EQ(published[1].message.body, R"({"type":"SlotConfirmed","id":"VIS-w-1"})");
  EXPECT_EQ(published[1].message.correlation_id, "VIS-w-1");
  EXPECT_EQ(published[1].message.message_id, "w-1");
  EXPECT_THAT(published[1].message.headers,
              ElementsAre(Pair("x-ess-partner", "prison"), Pair("x-ess-replay", "alice")));

  // Outbound: RECEIVED (the lane records what follows), its old error gone; inbound: PUBLISHED.
  MessageRecord out = Read(kOut, "prison", "m-1");
  EXPECT_EQ(out.status(), ess::v1::MESSAGE_STATUS_RECEIVED);
  EXPECT_EQ(out.error(), "");
  EXPECT_EQ(out.payload(), dead.payload());
  EXPECT_EQ(Read(kIn, "prison", "w-1").status(), ess::v1::MESSAGE_STATUS_PUBLISHED);
}

// A push that failed after its CSV upload's outcome became unknown: the replay hands the file's
// path back to the lane as the retry did, so the adapter looks there before sending the row.
TEST_P(ReplayerTest, WhereAFailedPushMayHaveLandedGoesWithItsReplay) {
  MessageRecord dead = Outbound("prison", "m-1", kDead);
  dead.set_maybe_delivered_as("/upload/visits-20261201-0900-1.csv");
  Store({dead, Outbound("prison", "m-2", kDead)});
  Replayer replayer(ReplayerOptions(), bus_.Fn(), nullptr);

  ess::v1::ReplayResponse r =
      replayer.Replay(Candidates({{kOut, "prison", "m-1"}, {kOut, "prison", "m-2"}}),
                      {.requested_by = "alice"}, *store_);

  EXPECT_EQ(r.replayed(), 2u);
  std::vector<FakeBus::Published> published = bus_.published();
  ASSERT_EQ(published.size(), 2u);
  EXPECT_THAT(published[0].message.headers,
              ElementsAre(Pair("x-ess-replay", "alice"),
                          Pair("x-ess-maybe-delivered-as", "/upload/visits-20261201-0900-1.csv")));
  EXPECT_THAT(published[1].message.headers, ElementsAre(Pair("x-ess-replay", "alice")));
  // Kept by the replay's mark, for a replay run again before the lane writes what followed.
  MessageRecord out = Read(kOut, "prison", "m-1");
  EXPECT_EQ(out.status(), ess::v1::MESSAGE_STATUS_RECEIVED);
  EXPECT_EQ(out.maybe_delivered_as(), "/upload/visits-20261201-0900-1.csv");
}

TEST_P(ReplayerTest, WhatCannotBeReplayedIsSkippedWithTheReasonAndNothingIsPublished) {
  MessageRecord no_payload = Outbound("prison", "m-empty", kDead);
  no_payload.clear_payload();
  MessageRecord marker = Inbound("file-marker", ess::v1::MESSAGE_STATUS_PUBLISHED);
  marker.clear_event_type();
  MessageRecord unrendered = Inbound("w-unrendered", ess::v1::MESSAGE_STATUS_FAILED);
  unrendered.clear_rendered();
  Store({Outbound("court", "m-court", kDead), no_payload, marker, unrendered});
  Replayer replayer(ReplayerOptions(), bus_.Fn(), nullptr);

  ess::v1::ReplayResponse r = replayer.Replay(Candidates({{kOut, "prison", "m-missing"},
                                                          {kOut, "court", "m-court"},
                                                          {kOut, "prison", "m-empty"},
                                                          {kIn, "prison", "file-marker"},
                                                          {kIn, "prison", "w-unrendered"}}),
                                              {.requested_by = "alice", .reason = "test"}, *store_);

  EXPECT_EQ(r.replayed(), 0u);
  EXPECT_EQ(r.skipped(), 5u);
  ASSERT_EQ(r.records_size(), 5);
  EXPECT_EQ(r.records(0).error(), "no such record");
  EXPECT_EQ(r.records(0).key().message_id(), "m-missing");
  EXPECT_EQ(r.records(1).error(), "partner court has no outbound route in the hub config");
  EXPECT_EQ(r.records(2).error(), "no bus event recorded (empty payload)");
  EXPECT_THAT(r.records(3).error(), HasSubstr("not an event"));
  EXPECT_EQ(r.records(4).error(), "no internal event recorded (empty rendering)");
  for (const ReplayedRecord& record : r.records()) {
    EXPECT_EQ(record.outcome(), ReplayedRecord::OUTCOME_SKIPPED);
    EXPECT_EQ(record.target(), "");
  }
  EXPECT_TRUE(bus_.published().empty());
  EXPECT_EQ(Read(kOut, "court", "m-court").status(), kDead);
}

// A partner renamed or removed from the config: its inbound records are skipped as its outbound
// ones are, not published as events of a partner the hub no longer knows.
TEST_P(ReplayerTest, AnInboundRecordOfAPartnerWithoutAnInboundRouteIsSkipped) {
  MessageRecord gone = Inbound("w-gone", ess::v1::MESSAGE_STATUS_PUBLISHED);
  gone.set_partner("court");
  Store({gone, Inbound("w-1", ess::v1::MESSAGE_STATUS_PUBLISHED)});
  Replayer replayer(ReplayerOptions(), bus_.Fn(), nullptr);

  ess::v1::ReplayResponse r =
      replayer.Replay(Candidates({{kIn, "court", "w-gone"}, {kIn, "prison", "w-1"}}),
                      {.requested_by = "alice", .reason = "test"}, *store_);

  EXPECT_EQ(r.replayed(), 1u);
  EXPECT_EQ(r.skipped(), 1u);
  ASSERT_EQ(r.records_size(), 2);
  EXPECT_EQ(r.records(0).outcome(), ReplayedRecord::OUTCOME_SKIPPED);
  EXPECT_EQ(r.records(0).error(), "partner court has no inbound route in the hub config");
  EXPECT_EQ(r.records(0).target(), "");
  EXPECT_EQ(r.records(1).outcome(), ReplayedRecord::OUTCOME_REPLAYED);
  std::vector<FakeBus::Published> published = bus_.published();
  ASSERT_EQ(published.size(), 1u);
  EXPECT_EQ(published[0].message.message_id, "w-1");
}

// What the hub has on its way is not sent a second time unless ops insist: an outbound record
// the lane (or an earlier replay) holds, or one waiting in a retry queue, and an inbound claim
// being published. An inbound record given back (FAILED) was never published: replayed.
TEST_P(ReplayerTest, RecordsInFlightAreSkippedUnlessIncludedExplicitly) {
  Store({Outbound("prison", "m-received"),
         Outbound("prison", "m-failed", ess::v1::MESSAGE_STATUS_FAILED),
         Outbound("prison", "m-dead", kDead),
         Inbound("w-claimed", ess::v1::MESSAGE_STATUS_RECEIVED),
         Inbound("w-failed", ess::v1::MESSAGE_STATUS_FAILED)});
  Replayer replayer(ReplayerOptions(), bus_.Fn(), nullptr);
  const std::vector<std::tuple<ess::v1::Direction, std::string, std::string>> keys = {
      {kOut, "prison", "m-received"},
      {kOut, "prison", "m-failed"},
      {kOut, "prison", "m-dead"},
      {kIn, "prison", "w-claimed"},
      {kIn, "prison", "w-failed"}};

  ess::v1::ReplayResponse dry = replayer.Replay(Candidates(keys), {.dry_run = true}, *store_);
  EXPECT_EQ(dry.replayed(), 2u);
  EXPECT_EQ(dry.skipped(), 3u);

  ess::v1::ReplayResponse r =
      replayer.Replay(Candidates(keys), {.requested_by = "alice", .reason = "x"}, *store_);
  EXPECT_EQ(r.replayed(), 2u);
  EXPECT_EQ(r.skipped(), 3u);
  ASSERT_EQ(r.records_size(), 5);
  EXPECT_EQ(r.records(0).outcome(), ReplayedRecord::OUTCOME_SKIPPED);
  EXPECT_EQ(r.records(0).error(),
            "in flight: RECEIVED, the outbound lane or an earlier replay has it; "
            "include_in_flight to replay it all the same");
  EXPECT_EQ(r.records(1).outcome(), ReplayedRecord::OUTCOME_SKIPPED);
  EXPECT_EQ(r.records(1).error(),
            "in flight: FAILED, its next attempt waits in a retry queue; include_in_flight to "
            "replay it all the same");
  EXPECT_EQ(r.records(2).outcome(), ReplayedRecord::OUTCOME_REPLAYED);
  EXPECT_EQ(r.records(3).outcome(), ReplayedRecord::OUTCOME_SKIPPED);
  EXPECT_THAT(r.records(3).error(), HasSubstr("in flight: RECEIVED "));
  EXPECT_THAT(r.records(3).error(),
              HasSubstr(" ago, the inbound lane's claim is being published (lease 35s)"));
  EXPECT_EQ(r.records(4).outcome(), ReplayedRecord::OUTCOME_REPLAYED);
  for (int i : {0, 1, 3}) EXPECT_EQ(r.records(i).target(), "") << i;
  std::vector<FakeBus::Published> published = bus_.published();
  ASSERT_EQ(published.size(), 2u);
  EXPECT_EQ(published[0].message.message_id, "m-dead");
  EXPECT_EQ(published[1].message.message_id, "w-failed");
  EXPECT_EQ(Read(kOut, "prison", "m-failed").status(), ess::v1::MESSAGE_STATUS_FAILED);

  // The same again: m-dead is RECEIVED now (the lane has the replay), so it is skipped too,
  // where a second operator's replay would have sent the partner a second copy.
  r = replayer.Replay(Candidates({{kOut, "prison", "m-dead"}}), {.reason = "again"}, *store_);
  EXPECT_EQ(r.skipped(), 1u);
  EXPECT_EQ(r.records(0).previous_status(), ess::v1::MESSAGE_STATUS_RECEIVED);
  EXPECT_EQ(bus_.published().size(), 2u);

  // Asked explicitly, each goes.
  r = replayer.Replay(Candidates(keys),
                      {.requested_by = "alice", .reason = "stuck", .include_in_flight = true},
                      *store_);
  EXPECT_EQ(r.replayed(), 5u);
  EXPECT_EQ(r.skipped(), 0u);
  EXPECT_EQ(bus_.published().size(), 7u);
}

// Past the claim lease nobody holds an inbound claim (a lane that died before its publish, or
// after it but before recording PUBLISHED): the replay publishes it.
TEST_P(ReplayerTest, AnInboundClaimPastItsLeaseIsReplayed) {
  Store({Inbound("w-stale", ess::v1::MESSAGE_STATUS_RECEIVED)});
  Replayer::Options options = ReplayerOptions();
  options.inbound_claim_lease = absl::Milliseconds(500);  // the fake clock moved 1 s since
  Replayer replayer(std::move(options), bus_.Fn(), nullptr);
  ess::v1::ReplayResponse r =
      replayer.Replay(Candidates({{kIn, "prison", "w-stale"}}), {.reason = "x"}, *store_);
  EXPECT_EQ(r.replayed(), 1u);
  EXPECT_EQ(bus_.published().size(), 1u);
  EXPECT_EQ(Read(kIn, "prison", "w-stale").status(), ess::v1::MESSAGE_STATUS_PUBLISHED);
}

TEST_P(ReplayerTest, FromConfigTakesTheClaimLease) {
  ess::v1::HubConfig config;
  EXPECT_EQ(Replayer::FromConfig(config).inbound_claim_lease, absl::Seconds(35));
  config.mutable_inbound()->set_claim_lease_ms(2000);
  EXPECT_EQ(Replayer::FromConfig(config).inbound_claim_lease, absl::Seconds(2));
}

TEST_P(ReplayerTest, APublishTheBrokerRefusesFailsAndLeavesItsRecordAsItWas) {
  MessageRecord refused = Outbound("prison", "m-2", kDead);
  refused.set_error("HTTP 422");
  Store({Outbound("prison", "m-1", kDead), refused});
  bus_.Fail("m-2",
            absl::FailedPreconditionError("unroutable: exchange= routing_key=visit_updates"));
  Replayer replayer(ReplayerOptions(), bus_.Fn(), nullptr);

  ess::v1::ReplayResponse r = replayer.Replay(
      Candidates({{kOut, "prison", "m-1"}, {kOut, "prison", "m-2"}}), {.reason = "x"}, *store_);

  EXPECT_EQ(r.replayed(), 1u);
  EXPECT_EQ(r.failed(), 1u);
  EXPECT_EQ(r.records(1).outcome(), ReplayedRecord::OUTCOME_FAILED);
  EXPECT_EQ(r.records(1).error(),
            "publish failed: FAILED_PRECONDITION: unroutable: exchange= routing_key=visit_updates");
  EXPECT_EQ(Read(kOut, "prison", "m-1").status(), ess::v1::MESSAGE_STATUS_RECEIVED);
  EXPECT_EQ(Read(kOut, "prison", "m-2").status(), kDead);
  EXPECT_EQ(Read(kOut, "prison", "m-2").error(), "HTTP 422");  // its claim given back
  // So a replay again takes it.
  r = replayer.Replay(Candidates({{kOut, "prison", "m-2"}}), {.reason = "x"}, *store_);
  EXPECT_EQ(r.failed(), 1u);
  EXPECT_EQ(bus_.published().size(), 3u);
}

TEST_P(ReplayerTest, ARecordTheLaneWroteMeanwhileKeepsWhatTheLaneWrote) {
  Store({Outbound("prison", "m-1", kDead), Outbound("prison", "m-2", kDead),
         Outbound("prison", "m-3", kDead)});
  // The lane takes m-1's replay and records it delivered before the broker's confirm arrives;
  // it takes m-3's and parks it again, the status the replay read (only its time differs).
  bus_.BeforeAnswer([this](const amqp::Message& m) {
    if (m.message_id == "m-1")
      Store({Outbound("prison", "m-1", ess::v1::MESSAGE_STATUS_DELIVERED)});
    if (m.message_id == "m-3") {
      MessageRecord again = Outbound("prison", "m-3", kDead);
      again.set_error("partner refused it again");
      Store({again});
    }
  });
  Replayer replayer(ReplayerOptions(), bus_.Fn(), nullptr);

  ess::v1::ReplayResponse r = replayer.Replay(
      Candidates({{kOut, "prison", "m-1"}, {kOut, "prison", "m-2"}, {kOut, "prison", "m-3"}}),
      {.reason = "x"}, *store_);

  EXPECT_EQ(r.replayed(), 3u);
  EXPECT_EQ(Read(kOut, "prison", "m-1").status(), ess::v1::MESSAGE_STATUS_DELIVERED);
  EXPECT_EQ(Read(kOut, "prison", "m-2").status(), ess::v1::MESSAGE_STATUS_RECEIVED);
  EXPECT_EQ(Read(kOut, "prison", "m-3").status(), kDead);
  EXPECT_EQ(Read(kOut, "prison", "m-3").error(), "partner refused it again");
}

// The call answers at its deadline; a confirm after that marks the record all the same, so that
// running the replay again does not publish it a second time.
TEST_P(ReplayerTest, APublishConfirmedAfterTheCallAnsweredIsMarkedThen) {
  Store({Outbound("prison", "m-1", kDead), Outbound("prison", "m-slow", kDead)});
  bus_.Hold("m-slow");
  Replayer replayer(ImpatientOptions(), bus_.Fn(), nullptr);

  ess::v1::ReplayResponse r = replayer.Replay(
      Candidates({{kOut, "prison", "m-1"}, {kOut, "prison", "m-slow"}}), {.reason = "x"}, *store_);

  EXPECT_EQ(r.replayed(), 1u);
  EXPECT_EQ(r.unconfirmed(), 1u);
  EXPECT_EQ(r.failed(), 0u);
  EXPECT_EQ(r.records(1).outcome(), ess::v1::ReplayedRecord::OUTCOME_UNCONFIRMED);
  EXPECT_THAT(r.records(1).error(), HasSubstr("marked when it comes"));
  EXPECT_EQ(Read(kOut, "prison", "m-slow").status(), kDead);

  bus_.Release();
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (Read(kOut, "prison", "m-slow").status() == kDead && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(Read(kOut, "prison", "m-slow").status(), ess::v1::MESSAGE_STATUS_RECEIVED);
}

TEST_P(ReplayerTest, APublishRefusedAfterTheCallAnsweredLeavesItsRecord) {
  Store({Outbound("prison", "m-slow", kDead)});
  bus_.Hold("m-slow");
  Replayer replayer(ImpatientOptions(), bus_.Fn(), nullptr);
  ess::v1::ReplayResponse r =
      replayer.Replay(Candidates({{kOut, "prison", "m-slow"}}), {.reason = "x"}, *store_);
  EXPECT_EQ(r.unconfirmed(), 1u);
  bus_.Release(absl::UnavailableError("the broker refused it"));
  replayer.Stop();  // whatever was queued is marked by now
  EXPECT_EQ(Read(kOut, "prison", "m-slow").status(), kDead);
}

// Drain waits for the confirms a call gave up waiting for, and Stop then marks them: what
// replay_svc does on SIGTERM.
TEST_P(ReplayerTest, DrainWaitsForTheConfirmsOfPastCallsAndStopMarksThem) {
  Store({Outbound("prison", "m-1", kDead), Outbound("prison", "m-slow", kDead)});
  bus_.Hold("m-slow");
  Replayer replayer(ImpatientOptions(), bus_.Fn(), nullptr);
  ess::v1::ReplayResponse r = replayer.Replay(
      Candidates({{kOut, "prison", "m-1"}, {kOut, "prison", "m-slow"}}), {.reason = "x"}, *store_);
  EXPECT_EQ(r.unconfirmed(), 1u);
  EXPECT_FALSE(replayer.Drain(absl::Milliseconds(50)));  // m-slow is still out
  std::thread confirm([this] {
    absl::SleepFor(absl::Milliseconds(100));
    bus_.Release();
  });
  EXPECT_TRUE(replayer.Drain(absl::Seconds(10)));
  confirm.join();
  replayer.Stop();
  EXPECT_EQ(Read(kOut, "prison", "m-slow").status(), ess::v1::MESSAGE_STATUS_RECEIVED);
  EXPECT_TRUE(replayer.Drain(absl::ZeroDuration()));  // nothing out
}

// A confirm after Stop (replay_svc shutting down) changes nothing and breaks nothing.
TEST_P(ReplayerTest, AConfirmAfterStopIsOnlyLogged) {
  Store({Outbound("prison", "m-slow", kDead)});
  bus_.Hold("m-slow");
  {
    Replayer replayer(ImpatientOptions(), bus_.Fn(), nullptr);
    EXPECT_EQ(replayer.Replay(Candidates({{kOut, "prison", "m-slow"}}), {.reason = "x"}, *store_)
                  .unconfirmed(),
              1u);
  }
  bus_.Release();  // the Replayer is gone
  EXPECT_EQ(Read(kOut, "prison", "m-slow").status(), kDead);
}

// Two replicas on one store run the same replay at once (an operator's retry that reached the
// other replica): both read every record before either publishes, and still each record is
// published once, by the replica whose claim took it; the other skips it.
TEST_P(ReplayerTest, TwoReplaysOfTheSameRecordsAtOnceOnTwoReplicasPublishEachOnce) {
  constexpr int kOutbound = 300, kInbound = 50;
  std::vector<MessageRecord> records;
  std::vector<std::tuple<ess::v1::Direction, std::string, std::string>> keys;
  for (int i = 0; i < kOutbound; ++i) {
    records.push_back(Outbound("prison", absl::StrCat("m-", i), ess::v1::MESSAGE_STATUS_DELIVERED));
    keys.emplace_back(kOut, "prison", absl::StrCat("m-", i));
  }
  for (int i = 0; i < kInbound; ++i) {
    records.push_back(Inbound(absl::StrCat("w-", i), ess::v1::MESSAGE_STATUS_FAILED));
    keys.emplace_back(kIn, "prison", absl::StrCat("w-", i));
  }
  Store(records);
  absl::StatusOr<std::unique_ptr<ReplayStore>> other_store =
      db_.Open([this] { return clock_.Now(); });
  ASSERT_TRUE(other_store.ok()) << other_store.status();
  FakeBus other_bus;
  Replayer replayer(ReplayerOptions(), bus_.Fn(), nullptr);
  Replayer other(ReplayerOptions(), other_bus.Fn(), nullptr);
  // Each replica's replay read its page before either publishes.
  const std::vector<Replayer::Candidate> candidates = Candidates(keys);

  std::atomic<int> ready = 0;
  auto replay = [&](Replayer& r, ReplayStore& store, const std::string& who) {
    ready.fetch_add(1);
    while (ready.load() < 2) std::this_thread::yield();  // both start together
    return r.Replay(candidates, {.requested_by = who, .reason = "race"}, store);
  };
  ess::v1::ReplayResponse b;
  std::thread on_b([&] { b = replay(other, **other_store, "bob"); });
  ess::v1::ReplayResponse a = replay(replayer, *store_, "alice");
  on_b.join();

  constexpr int kRecords = kOutbound + kInbound;
  EXPECT_EQ(a.replayed() + b.replayed(), static_cast<uint32_t>(kRecords));
  EXPECT_EQ(a.skipped() + b.skipped(), static_cast<uint32_t>(kRecords));
  EXPECT_EQ(a.failed() + b.failed() + a.unconfirmed() + b.unconfirmed(), 0u);
  for (const ess::v1::ReplayResponse* r : {&a, &b}) {
    ASSERT_EQ(r->records_size(), kRecords);
    for (const ReplayedRecord& out : r->records()) {
      if (out.outcome() != ReplayedRecord::OUTCOME_SKIPPED) continue;
      EXPECT_THAT(out.error(), HasSubstr("changed since it was read")) << out.key().message_id();
    }
  }
  std::map<std::string, int> published;
  for (FakeBus* bus : {&bus_, &other_bus}) {
    for (const FakeBus::Published& p : bus->published()) ++published[p.message.message_id];
  }
  EXPECT_EQ(published.size(), static_cast<size_t>(kRecords));
  for (const auto& [id, times] : published) EXPECT_EQ(times, 1) << id;
  for (int i = 0; i < kOutbound; ++i) {
    MessageRecord r = Read(kOut, "prison", absl::StrCat("m-", i));
    EXPECT_EQ(r.status(), ess::v1::MESSAGE_STATUS_RECEIVED) << r.message_id();
    EXPECT_EQ(r.error(), "") << r.message_id();
  }
  for (int i = 0; i < kInbound; ++i) {
    EXPECT_EQ(Read(kIn, "prison", absl::StrCat("w-", i)).status(),
              ess::v1::MESSAGE_STATUS_PUBLISHED);
  }
}

// A replica killed after its claim, before its publish, leaves the record claimed: other replays
// skip it until the claim lease has passed, then replay it.
TEST_P(ReplayerTest, AClaimLeftByADeadReplayHoldsTheRecordUntilItsLeasePasses) {
  MessageRecord dead = Outbound("prison", "m-1", kDead);
  dead.set_error("HTTP 422");
  Store({dead});
  const MessageRecord read = Read(kOut, "prison", "m-1");
  absl::StatusOr<MarkedReplays> claimed = store_->MarkReplayed(
      {{.key = Key(kOut, "prison", "m-1"),
        .expected_status = kDead,
        .expected_updated_at_micros = ToUnixMicros(read.updated_at()).value_or(0),
        .status = kDead,
        .error = ReplayClaimError("carol", "HTTP 422")}});
  ASSERT_TRUE(claimed.ok()) << claimed.status();
  ASSERT_THAT(claimed->changed, ElementsAre(true));
  EXPECT_EQ(Read(kOut, "prison", "m-1").error(),
            "replaying: claimed by carol; error before: HTTP 422");

  Replayer::Options options = ReplayerOptions();
  options.claim_lease = absl::Seconds(30);  // the fake clock moved 1 s since the claim
  {
    Replayer replayer(options, bus_.Fn(), nullptr);
    ess::v1::ReplayResponse r =
        replayer.Replay(Candidates({{kOut, "prison", "m-1"}}), {.reason = "retry"}, *store_);
    EXPECT_EQ(r.skipped(), 1u);
    EXPECT_THAT(r.records(0).error(),
                HasSubstr(" ago by a replay (of this replica or another) that publishes it "
                          "(lease 30s); include_in_flight to replay it all the same"));
    EXPECT_TRUE(bus_.published().empty());
  }
  options.claim_lease = absl::Milliseconds(500);
  Replayer replayer(options, bus_.Fn(), nullptr);
  ess::v1::ReplayResponse r =
      replayer.Replay(Candidates({{kOut, "prison", "m-1"}}), {.reason = "retry"}, *store_);
  EXPECT_EQ(r.replayed(), 1u);
  EXPECT_EQ(bus_.published().size(), 1u);
  EXPECT_EQ(Read(kOut, "prison", "m-1").status(), ess::v1::MESSAGE_STATUS_RECEIVED);
  EXPECT_EQ(Read(kOut, "prison", "m-1").error(), "");
}

TEST_P(ReplayerTest, FromConfigTakesTheReplayClaimLease) {
  ess::v1::HubConfig config;
  EXPECT_EQ(Replayer::FromConfig(config).claim_lease, absl::Seconds(60));
  config.mutable_replay()->set_claim_lease_ms(5000);
  EXPECT_EQ(Replayer::FromConfig(config).claim_lease, absl::Seconds(5));
}

TEST_P(ReplayerTest, ADryRunSaysWhereEachWouldGoAndChangesNothing) {
  Store({Outbound("prison", "m-1", kDead), Inbound("w-1", ess::v1::MESSAGE_STATUS_PUBLISHED)});
  const MessageRecord before = Read(kOut, "prison", "m-1");
  Replayer replayer(ReplayerOptions(), bus_.Fn(), nullptr);

  ess::v1::ReplayResponse r = replayer.Replay(
      Candidates({{kOut, "prison", "m-1"}, {kIn, "prison", "w-1"}}), {.dry_run = true}, *store_);

  EXPECT_EQ(r.replayed(), 2u);
  EXPECT_EQ(r.records(0).target(), "queue visit_updates");
  EXPECT_EQ(r.records(1).target(), "exchange events");
  EXPECT_TRUE(bus_.published().empty());
  EXPECT_EQ(Read(kOut, "prison", "m-1").status(), kDead);
  // Not even claimed: the record is as it was written.
  EXPECT_EQ(Read(kOut, "prison", "m-1").DebugString(), before.DebugString());
}

TEST_P(ReplayerTest, FromConfigTakesTheEventsExchangeEveryOutboundQueueAndInboundPartner) {
  ess::v1::HubConfig config;
  config.mutable_bus()->set_events_exchange("ess.events");
  ess::v1::PartnerConfig* prison = config.add_partners();
  prison->set_name("prison");
  prison->mutable_outbound()->set_queue("visit_updates");
  ess::v1::PartnerConfig* webhook_only = config.add_partners();
  webhook_only->set_name("webhook_only");
  webhook_only->mutable_inbound()->set_webhook_path("/webhook/clinic");
  ess::v1::PartnerConfig* sftp = config.add_partners();
  sftp->set_name("sftp_poll");
  sftp->mutable_inbound()->mutable_poll()->set_remote_dir("/outbound/ess");
  config.add_partners()->set_name("neither");
  Replayer::Options options = Replayer::FromConfig(config);
  EXPECT_EQ(options.events_exchange, "ess.events");
  ASSERT_EQ(options.outbound_queues.size(), 1u);
  EXPECT_EQ(options.outbound_queues.at("prison"), "visit_updates");
  EXPECT_THAT(options.inbound_partners,
              ::testing::UnorderedElementsAre("webhook_only", "sftp_poll"));
}

TEST(MarkReplayedTest, ValidatesEveryMarkAndNamesTheFirstBadOne) {
  TempDir dir;
  auto store = SqliteReplayStore::Open(dir.File("replay.db"));
  ASSERT_TRUE(store.ok());
  std::vector<ReplayMark> marks(2);
  marks[0] = {.key = Key(kOut, "prison", "m-1"), .status = ess::v1::MESSAGE_STATUS_RECEIVED};
  marks[1] = {.key = Key(kOut, "", "m-2"), .status = ess::v1::MESSAGE_STATUS_RECEIVED};
  absl::StatusOr<MarkedReplays> changed = (*store)->MarkReplayed(marks);
  EXPECT_EQ(changed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(changed.status().message(), "marks[1].partner: must not be empty");
  marks.pop_back();  // a valid mark of a key that has no record changes nothing
  changed = (*store)->MarkReplayed(marks);
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_THAT(changed->changed, ElementsAre(false));
}

// ---- ReplayService.Replay through gRPC ----------------------------------------------------

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  return context;
}

class ReplayRpcTest : public ReplayerTest {
 protected:
  void SetUp() override {
    ReplayerTest::SetUp();
    replayer_ = std::make_unique<Replayer>(ReplayerOptions(), bus_.Fn(), nullptr);
    auto server =
        ReplayServer::Start(*store_, {.listen = "127.0.0.1:0", .replayer = replayer_.get()});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = MakeReplayStub(server_->address());
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::Seconds(5));
  }

  std::unique_ptr<Replayer> replayer_;
  std::unique_ptr<ReplayServer> server_;
  std::unique_ptr<ess::v1::ReplayService::Stub> stub_;
};

INSTANTIATE_TEST_SUITE_P(Backends, ReplayRpcTest, ::testing::ValuesIn(testing::kBackends),
                         testing::BackendName);

TEST_P(ReplayRpcTest, AFilterIsReplayedPageByPageUntilNothingMatches) {
  std::vector<MessageRecord> records;
  for (int i = 0; i < 250; ++i) records.push_back(Outbound("prison", absl::StrCat("m-", i), kDead));
  records.push_back(Outbound("prison", "m-delivered", ess::v1::MESSAGE_STATUS_DELIVERED));
  Store(records);

  ess::v1::ReplayRequest request;
  request.mutable_filter()->set_partner("prison");
  request.mutable_filter()->set_status(kDead);
  request.mutable_filter()->set_page_size(100);
  request.set_reason("partner SFTP down overnight");
  request.set_requested_by("ops-test");
  int calls = 0;
  std::set<std::string> replayed;
  for (;;) {
    ess::v1::ReplayResponse response;
    grpc::Status status = stub_->Replay(Context().get(), request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ++calls;
    EXPECT_EQ(response.failed() + response.skipped(), 0u);
    for (const ReplayedRecord& r : response.records()) replayed.insert(r.key().message_id());
    if (response.next_page_token().empty()) break;
    request.mutable_filter()->set_page_token(response.next_page_token());
    ASSERT_LT(calls, 10);
  }
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(replayed.size(), 250u);
  EXPECT_FALSE(replayed.contains("m-delivered"));
  EXPECT_EQ(bus_.published().size(), 250u);
  ListQuery dead{.partner = "prison", .status = kDead, .limit = 1000};
  EXPECT_TRUE(store_->List(dead).value().records.empty());
}

TEST_P(ReplayRpcTest, KeysAreReplayedInTheirOrderAndTheCallerIsNamedWhenItGaveNoName) {
  Store({Outbound("prison", "m-1", kDead), Outbound("prison", "m-2", kDead)});
  ess::v1::ReplayRequest request;
  *request.add_keys() = Key(kOut, "prison", "m-2");
  *request.add_keys() = Key(kOut, "prison", "m-1");
  request.set_reason("x");
  ess::v1::ReplayResponse response;
  grpc::Status status = stub_->Replay(Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.records_size(), 2);
  EXPECT_EQ(response.records(0).key().message_id(), "m-2");
  EXPECT_EQ(response.records(1).key().message_id(), "m-1");
  EXPECT_EQ(response.next_page_token(), "");
  std::vector<FakeBus::Published> published = bus_.published();
  ASSERT_EQ(published.size(), 2u);
  ASSERT_EQ(published[0].message.headers.size(), 1u);
  EXPECT_THAT(published[0].message.headers[0].second, HasSubstr("127.0.0.1:"));  // its address
}

TEST_P(ReplayRpcTest, ARecordInFlightIsSkippedUnlessTheRequestIncludesIt) {
  Store({Outbound("prison", "m-1", ess::v1::MESSAGE_STATUS_FAILED)});
  ess::v1::ReplayRequest request;
  *request.add_keys() = Key(kOut, "prison", "m-1");
  request.set_reason("x");
  ess::v1::ReplayResponse response;
  grpc::Status status = stub_->Replay(Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.skipped(), 1u);
  EXPECT_THAT(response.records(0).error(), HasSubstr("in flight: FAILED"));
  EXPECT_TRUE(bus_.published().empty());

  request.set_include_in_flight(true);
  response.Clear();
  status = stub_->Replay(Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.replayed(), 1u);
  EXPECT_EQ(bus_.published().size(), 1u);
}

TEST_P(ReplayRpcTest, BadRequestsAreInvalidArgumentNamingTheField) {
  struct Case {
    std::function<void(ess::v1::ReplayRequest&)> build;
    std::string message;
  };
  std::vector<Case> cases = {
      {[](ess::v1::ReplayRequest&) {}, "set keys or filter, not both and not neither"},
      {[](ess::v1::ReplayRequest& r) {
         *r.add_keys() = Key(kOut, "prison", "m-1");
         r.mutable_filter()->set_partner("prison");
       },
       "set keys or filter, not both and not neither"},
      {[](ess::v1::ReplayRequest& r) {
         *r.add_keys() = Key(kOut, "prison", "m-1");
         *r.add_keys() = Key(kOut, "prison", "");
       },
       "keys[1].message_id: must not be empty"},
      {[](ess::v1::ReplayRequest& r) {
         r.mutable_filter()->set_status(static_cast<ess::v1::MessageStatus>(42));
       },
       "filter.status: unknown value 42"},
      {[](ess::v1::ReplayRequest& r) {
         r.mutable_filter()->set_partner("prison");
         r.mutable_filter()->set_page_token("not-a-token");
       },
       "filter.page_token: malformed"},
      {[](ess::v1::ReplayRequest& r) {
         for (int i = 0; i < 1001; ++i) *r.add_keys() = Key(kOut, "prison", absl::StrCat(i));
       },
       "keys: 1001 given, at most 1000 per call"},
      {[](ess::v1::ReplayRequest& r) {
         *r.add_keys() = Key(kOut, "prison", "m-1");
         *r.add_keys() = Key(kIn, "prison", "m-1");  // another key: the direction differs
         *r.add_keys() = Key(kOut, "prison", "m-1");
       },
       "keys[2]: repeats keys[0]"},
      {[](ess::v1::ReplayRequest& r) { r.mutable_filter()->set_partner("prison"); },
       "reason: required (it goes into the audit trail), or set dry_run"},
      {[](ess::v1::ReplayRequest& r) {
         r.mutable_filter()->set_partner("prison");
         r.set_reason(" \t\n ");  // blank: no reason
       },
       "reason: required (it goes into the audit trail), or set dry_run"},
      {[](ess::v1::ReplayRequest& r) {
         r.mutable_filter()->set_status(kDead);
         r.set_reason("partner SFTP down overnight");
       },
       "filter: name a partner or a correlation_id; a replay never republishes the whole store "
       "by accident"},
  };
  for (const Case& c : cases) {
    ess::v1::ReplayRequest request;
    c.build(request);
    ess::v1::ReplayResponse response;
    grpc::Status status = stub_->Replay(Context().get(), request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.message;
    EXPECT_EQ(status.error_message(), c.message);
  }
  EXPECT_TRUE(bus_.published().empty());
}

// A deadline within the 500 ms a replay keeps to answer in leaves it no time at all: refused at
// once, saying so, not "waited for an earlier one past its deadline".
TEST_P(ReplayRpcTest, ADeadlineTooShortToReplayIsInvalidArgumentNamingIt) {
  Store({Outbound("prison", "m-1", kDead)});
  ess::v1::ReplayRequest request;
  *request.add_keys() = Key(kOut, "prison", "m-1");
  request.set_dry_run(true);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(400)));
  ess::v1::ReplayResponse response;
  grpc::Status status = stub_->Replay(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("deadline: "));
  EXPECT_THAT(status.error_message(),
              HasSubstr(" left; a replay needs more than 500ms (it answers that long before the "
                        "deadline): call with a longer one (essctl --timeout)"));
  EXPECT_TRUE(bus_.published().empty());
}

// Replays run one at a time. One that waited for an earlier one past its caller's deadline
// publishes nothing: its caller has already given up, and would run it again.
TEST_P(ReplayRpcTest, AReplayQueuedPastItsDeadlinePublishesNothing) {
  Store({Outbound("prison", "m-1", kDead), Outbound("prison", "m-2", kDead)});
  bus_.Hold("m-1");  // the first replay waits for its confirm until its own deadline
  auto replay = [&](const char* id, absl::Duration timeout) {
    ess::v1::ReplayRequest request;
    *request.add_keys() = Key(kOut, "prison", id);
    request.set_reason("x");
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    ess::v1::ReplayResponse response;
    return stub_->Replay(&context, request, &response);
  };
  auto first = std::async(std::launch::async, [&] { return replay("m-1", absl::Seconds(3)); });
  for (absl::Time give_up = absl::Now() + absl::Seconds(5);
       bus_.published().empty() && absl::Now() < give_up;) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(bus_.published().size(), 1u);
  grpc::Status second = replay("m-2", absl::Seconds(1));
  EXPECT_EQ(second.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  grpc::Status status = first.get();
  ASSERT_TRUE(status.ok()) << status.error_message();  // answered, m-1 unconfirmed: failed
  // The second call ran after the first and found its deadline gone: m-2 never went out.
  absl::SleepFor(absl::Milliseconds(200));
  std::vector<FakeBus::Published> published = bus_.published();
  ASSERT_EQ(published.size(), 1u);
  EXPECT_EQ(published[0].message.message_id, "m-1");
  EXPECT_EQ(store_->GetByKey(Key(kOut, "prison", "m-2"))->status(), kDead);
  bus_.Release();
}

TEST(ReplayRpcWithoutBusTest, IsFailedPrecondition) {
  TempDir dir;
  auto store = SqliteReplayStore::Open(dir.File("replay.db"));
  ASSERT_TRUE(store.ok());
  auto server = ReplayServer::Start(**store, {.listen = "127.0.0.1:0"});
  ASSERT_TRUE(server.ok());
  auto stub = MakeReplayStub((*server)->address());
  ess::v1::ReplayRequest request;
  *request.add_keys() = Key(kOut, "prison", "m-1");
  ess::v1::ReplayResponse response;
  grpc::Status status = stub->Replay(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("replay is off"));
  (*server)->Shutdown(absl::Seconds(5));
}

}  // namespace
}  // namespace ess::replay
