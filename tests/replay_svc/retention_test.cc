// Retention: the SQLite store's Purge on a fake clock (what goes, what always stays), and the
// sweeper that runs it.
#include "replay_svc/retention.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "replay_svc/sqlite_replay_store.h"
#include "tests/replay_svc/test_store.h"
#include "tests/replay_svc/test_util.h"

namespace ess::replay {
namespace {

using ::ess::replay::testing::Backend;
using ::ess::replay::testing::BackendName;
using ::ess::replay::testing::FakeClock;
using ::ess::replay::testing::kBackends;
using ::ess::replay::testing::MakeRecord;
using ::ess::replay::testing::MessageIds;
using ::ess::replay::testing::TestStore;
using ::ess::v1::MessageRecord;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr auto kOut = ess::v1::DIRECTION_OUTBOUND;
constexpr auto kIn = ess::v1::DIRECTION_INBOUND;
constexpr auto kDelivered = ess::v1::MESSAGE_STATUS_DELIVERED;
const absl::Time kStart = absl::FromUnixSeconds(1'700'000'000);

// Each test runs on SQLite and on PostgreSQL (tests/replay_svc/test_store.h).
class RetentionTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    auto store = db_.Open([this] { return clock_.Now(); });
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  // One Record call per record: each is written one (fake) second after the previous one.
  void Write(ess::v1::Direction direction, const std::string& partner, const std::string& id,
             ess::v1::MessageStatus status) {
    Write(direction, partner, id, id, status);
  }
  void Write(ess::v1::Direction direction, const std::string& partner, const std::string& id,
             const std::string& correlation_id, ess::v1::MessageStatus status) {
    google::protobuf::RepeatedPtrField<MessageRecord> batch;
    *batch.Add() = MakeRecord(direction, partner, id, correlation_id, status);
    ASSERT_TRUE(store_->Record(batch).ok());
  }

  // Message ids of (partner, direction, status), oldest first.
  std::vector<std::string> Ids(const std::string& partner, ess::v1::Direction direction,
                               ess::v1::MessageStatus status) {
    absl::StatusOr<ListPage> page =
        store_->List({.partner = partner, .direction = direction, .status = status, .limit = 1000});
    EXPECT_TRUE(page.ok()) << page.status();
    std::vector<std::string> ids = MessageIds(page->records);
    std::reverse(ids.begin(), ids.end());
    return ids;
  }

  TestStore db_{GetParam()};
  FakeClock clock_{kStart, absl::Seconds(1)};
  std::unique_ptr<ReplayStore> store_;
};

INSTANTIATE_TEST_SUITE_P(Backends, RetentionTest, ::testing::ValuesIn(kBackends), BackendName);

TEST_P(RetentionTest, ByAgeOnlySettledRecordsGoAndRecordsInPlayStay) {
  for (int i = 0; i < 10; ++i) Write(kOut, "prison", absl::StrCat("d-", i), kDelivered);  // 0..9 s
  Write(kOut, "prison", "dead", ess::v1::MESSAGE_STATUS_DEAD);                            // 10 s
  Write(kOut, "prison", "received", ess::v1::MESSAGE_STATUS_RECEIVED);                    // 11 s
  Write(kOut, "prison", "failed", ess::v1::MESSAGE_STATUS_FAILED);                        // 12 s
  Write(kIn, "prison", "published", ess::v1::MESSAGE_STATUS_PUBLISHED);                   // 13 s
  Write(kOut, "prison", "dry", ess::v1::MESSAGE_STATUS_DRY_RUN);                          // 14 s
  // Purge runs at 15 s: settled records updated before 15 - 8 = 7 s go.
  absl::StatusOr<uint64_t> purged = store_->Purge({.max_age = absl::Seconds(8), .batch = 3});
  ASSERT_TRUE(purged.ok()) << purged.status();
  EXPECT_EQ(*purged, 7u);
  EXPECT_THAT(Ids("prison", kOut, kDelivered), ElementsAre("d-7", "d-8", "d-9"));
  EXPECT_THAT(Ids("prison", kOut, ess::v1::MESSAGE_STATUS_DEAD), ElementsAre("dead"));
  EXPECT_THAT(Ids("prison", kOut, ess::v1::MESSAGE_STATUS_RECEIVED), ElementsAre("received"));
  EXPECT_THAT(Ids("prison", kOut, ess::v1::MESSAGE_STATUS_FAILED), ElementsAre("failed"));
  EXPECT_THAT(Ids("prison", kIn, ess::v1::MESSAGE_STATUS_PUBLISHED), ElementsAre("published"));
  EXPECT_THAT(Ids("prison", kOut, ess::v1::MESSAGE_STATUS_DRY_RUN), ElementsAre("dry"));

  // A DEAD record old enough still stays, however old it gets.
  EXPECT_EQ(store_->Purge({.max_age = absl::Seconds(1)}).value(), 5u);  // at 16 s: 7..9, 13, 14
  EXPECT_THAT(Ids("prison", kOut, ess::v1::MESSAGE_STATUS_DEAD), ElementsAre("dead"));
}

TEST_P(RetentionTest, NothingUpdatedWithinMinAgeGoes) {
  for (int i = 0; i < 10; ++i) Write(kOut, "prison", absl::StrCat("d-", i), kDelivered);  // 0..9 s
  // At 10 s: max_age 1 s would take 0..8 s, min_age 6 s keeps everything from 4 s on.
  EXPECT_EQ(store_->Purge({.max_age = absl::Seconds(1), .min_age = absl::Seconds(6)}).value(), 4u);
  EXPECT_THAT(Ids("prison", kOut, kDelivered),
              ElementsAre("d-4", "d-5", "d-6", "d-7", "d-8", "d-9"));
  // The count limit honours it too: at 11 s, keep 1, but nothing from 5 s on goes.
  EXPECT_EQ(store_->Purge({.max_per_partner = 1, .min_age = absl::Seconds(6)}).value(), 1u);
  EXPECT_THAT(Ids("prison", kOut, kDelivered), ElementsAre("d-5", "d-6", "d-7", "d-8", "d-9"));
}

TEST_P(RetentionTest, ByCountEachPartnerAndDirectionKeepsItsNewest) {
  for (int i = 0; i < 6; ++i) Write(kOut, "a", absl::StrCat("a-", i), kDelivered);
  Write(kOut, "a", "a-dead", ess::v1::MESSAGE_STATUS_DEAD);
  for (int i = 0; i < 2; ++i) Write(kOut, "b", absl::StrCat("b-", i), kDelivered);
  for (int i = 0; i < 4; ++i) {
    Write(kIn, "a", absl::StrCat("in-", i), ess::v1::MESSAGE_STATUS_PUBLISHED);
  }
  absl::StatusOr<uint64_t> purged = store_->Purge({.max_per_partner = 3, .batch = 2});
  ASSERT_TRUE(purged.ok()) << purged.status();
  EXPECT_EQ(*purged, 4u);
  EXPECT_THAT(Ids("a", kOut, kDelivered), ElementsAre("a-3", "a-4", "a-5"));
  EXPECT_THAT(Ids("a", kOut, ess::v1::MESSAGE_STATUS_DEAD), ElementsAre("a-dead"));
  EXPECT_THAT(Ids("b", kOut, kDelivered), ElementsAre("b-0", "b-1"));
  EXPECT_THAT(Ids("a", kIn, ess::v1::MESSAGE_STATUS_PUBLISHED),
              ElementsAre("in-1", "in-2", "in-3"));
  EXPECT_EQ(store_->Purge({.max_per_partner = 3}).value(), 0u);  // nothing more to do
}

// A partner's confirmations are inbound records of their visits' correlation ids. Counted apart
// from the deliveries, newer inbound events would push out the confirmations of deliveries that
// stay, and those would look unconfirmed (drift alerts, --unconfirmed, a replay pushing them
// again). A confirmation stays while its delivery does, and goes in the sweep that takes it.
TEST_P(RetentionTest, ByCountAConfirmationStaysWhileItsCorrelationIdHasAnOutboundRecord) {
  for (int i = 1; i <= 5; ++i) {
    const std::string visit = absl::StrCat("VIS-", i);
    Write(kOut, "prison", visit, kDelivered);
    Write(kIn, "prison", absl::StrCat("wh-", i), visit, ess::v1::MESSAGE_STATUS_PUBLISHED);
  }
  for (int i = 1; i <= 3; ++i) {  // newer inbound events of the partner's own
    Write(kIn, "prison", absl::StrCat("own-", i), ess::v1::MESSAGE_STATUS_PUBLISHED);
  }
  absl::StatusOr<uint64_t> purged = store_->Purge({.max_per_partner = 3, .batch = 2});
  ASSERT_TRUE(purged.ok()) << purged.status();
  EXPECT_EQ(*purged, 4u);
  EXPECT_THAT(Ids("prison", kOut, kDelivered), ElementsAre("VIS-3", "VIS-4", "VIS-5"));
  EXPECT_THAT(Ids("prison", kIn, ess::v1::MESSAGE_STATUS_PUBLISHED),
              ElementsAre("wh-3", "wh-4", "wh-5", "own-1", "own-2", "own-3"));
  absl::StatusOr<ListPage> unconfirmed = store_->List({.partner = "prison",
                                                       .direction = kOut,
                                                       .status = kDelivered,
                                                       .unconfirmed = true,
                                                       .limit = 1000});
  ASSERT_TRUE(unconfirmed.ok()) << unconfirmed.status();
  EXPECT_THAT(MessageIds(unconfirmed->records), IsEmpty());
  EXPECT_EQ(store_->Purge({.max_per_partner = 3}).value(), 0u);  // nothing more to do
}

TEST_P(RetentionTest, TheSweeperSweepsAtOnceThenEveryIntervalAndStopsPromptly) {
  for (int i = 0; i < 5; ++i) Write(kOut, "prison", absl::StrCat("d-", i), kDelivered);
  RetentionSweeper sweeper(*store_, {.max_per_partner = 2}, absl::Hours(1));
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (sweeper.sweeps() == 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(sweeper.sweeps(), 1u);
  EXPECT_EQ(sweeper.evicted(), 3u);
  EXPECT_THAT(Ids("prison", kOut, kDelivered), ElementsAre("d-3", "d-4"));
  const absl::Time stop = absl::Now();
  sweeper.Stop();
  EXPECT_LT(absl::Now() - stop, absl::Seconds(5));  // not an hour
  EXPECT_EQ(sweeper.sweeps(), 1u);
}

TEST(RetentionConfigTest, PolicyComesFromTheConfigWithTheDedupeWindowProtected) {
  ess::v1::HubConfig config;
  EXPECT_FALSE(RetentionSweeper::Enabled(config));
  config.mutable_replay()->mutable_retention()->set_max_age_seconds(86400);
  config.mutable_replay()->mutable_retention()->set_max_records_per_partner(1000);
  config.mutable_inbound()->set_dedupe_window_seconds(600);
  EXPECT_TRUE(RetentionSweeper::Enabled(config));
  RetentionPolicy policy = RetentionSweeper::PolicyFromConfig(config);
  EXPECT_EQ(policy.max_age, absl::Hours(24));
  EXPECT_EQ(policy.max_per_partner, 1000u);
  EXPECT_EQ(policy.min_age, absl::Minutes(10));
}

}  // namespace
}  // namespace ess::replay
