// Tests of ComputeTrail: times and the furthest stage of one correlation id.
#include "replay_svc/trail.h"

#include <vector>

#include "gtest/gtest.h"
#include "tests/replay_svc/test_util.h"

namespace ess::replay {
namespace {

using ::ess::replay::testing::MakeRecord;
using ::ess::replay::testing::Ts;
using ::ess::v1::MessageRecord;

constexpr auto kOut = ess::v1::DIRECTION_OUTBOUND;
constexpr auto kIn = ess::v1::DIRECTION_INBOUND;

MessageRecord At(MessageRecord r, int64_t received, int64_t updated) {
  *r.mutable_received_at() = Ts(absl::FromUnixSeconds(received));
  *r.mutable_updated_at() = Ts(absl::FromUnixSeconds(updated));
  return r;
}

TEST(TrailTest, FullRoundTripIsConfirmedWithEveryTime) {
  std::vector<MessageRecord> records = {
      At(MakeRecord(kIn, "prison", "wh-1", "VIS-77", ess::v1::MESSAGE_STATUS_PUBLISHED), 200, 210),
      At(MakeRecord(kOut, "prison", "m-1", "VIS-77", ess::v1::MESSAGE_STATUS_DELIVERED), 100, 150),
  };
  ess::v1::CorrelationTrail trail = ComputeTrail("VIS-77", records);
  EXPECT_EQ(trail.correlation_id(), "VIS-77");
  EXPECT_EQ(trail.stage(), "confirmed");
  EXPECT_EQ(trail.pushed_at().seconds(), 100);
  EXPECT_EQ(trail.delivered_at().seconds(), 150);
  EXPECT_EQ(trail.confirmed_at().seconds(), 210);
}

TEST(TrailTest, EarliestTimesWinAcrossPartners) {
  std::vector<MessageRecord> records = {
      At(MakeRecord(kOut, "a", "m-1", "C", ess::v1::MESSAGE_STATUS_DELIVERED), 120, 300),
      At(MakeRecord(kOut, "b", "m-1", "C", ess::v1::MESSAGE_STATUS_DELIVERED), 110, 200),
      At(MakeRecord(kOut, "c", "m-1", "C", ess::v1::MESSAGE_STATUS_FAILED), 100, 400),
  };
  ess::v1::CorrelationTrail trail = ComputeTrail("C", records);
  EXPECT_EQ(trail.stage(), "delivered");
  EXPECT_EQ(trail.pushed_at().seconds(), 100);
  EXPECT_EQ(trail.delivered_at().seconds(), 200);
  EXPECT_FALSE(trail.has_confirmed_at());
}

struct StageCase {
  ess::v1::Direction direction;
  ess::v1::MessageStatus status;
  const char* stage;
  bool pushed;
};

class TrailStageTest : public ::testing::TestWithParam<StageCase> {};

TEST_P(TrailStageTest, SingleRecord) {
  const StageCase& c = GetParam();
  ess::v1::CorrelationTrail trail =
      ComputeTrail("C", {At(MakeRecord(c.direction, "p", "m", "C", c.status), 100, 150)});
  EXPECT_EQ(trail.stage(), c.stage);
  EXPECT_EQ(trail.has_pushed_at(), c.pushed);
  EXPECT_FALSE(trail.has_delivered_at() && c.status != ess::v1::MESSAGE_STATUS_DELIVERED);
}

INSTANTIATE_TEST_SUITE_P(
    Stages, TrailStageTest,
    ::testing::Values(StageCase{kOut, ess::v1::MESSAGE_STATUS_RECEIVED, "pushed", true},
                      StageCase{kOut, ess::v1::MESSAGE_STATUS_DELIVERED, "delivered", true},
                      StageCase{kOut, ess::v1::MESSAGE_STATUS_FAILED, "failed", true},
                      StageCase{kOut, ess::v1::MESSAGE_STATUS_DEAD, "dead", true},
                      StageCase{kOut, ess::v1::MESSAGE_STATUS_DRY_RUN, "dry_run", true},
                      StageCase{kIn, ess::v1::MESSAGE_STATUS_PUBLISHED, "confirmed", false},
                      StageCase{kIn, ess::v1::MESSAGE_STATUS_FAILED, "failed", false},
                      StageCase{kIn, ess::v1::MESSAGE_STATUS_RECEIVED, "", false}));

TEST(TrailTest, DeadOutranksFailedAndDeliveredOutranksBoth) {
  std::vector<MessageRecord> records = {
      At(MakeRecord(kOut, "a", "m", "C", ess::v1::MESSAGE_STATUS_FAILED), 100, 110),
      At(MakeRecord(kOut, "b", "m", "C", ess::v1::MESSAGE_STATUS_DEAD), 100, 120),
  };
  EXPECT_EQ(ComputeTrail("C", records).stage(), "dead");
  records.push_back(
      At(MakeRecord(kOut, "c", "m", "C", ess::v1::MESSAGE_STATUS_DELIVERED), 100, 130));
  EXPECT_EQ(ComputeTrail("C", records).stage(), "delivered");
}

// The stage tells where the latest update stands: an older update's delivery and confirmation
// do not hide a newer update that was parked, and a confirmation of the older one does not
// confirm the newer; the times keep the history.
TEST(TrailTest, TheStageIsTheLatestUpdatesNotTheFurthestEver) {
  std::vector<MessageRecord> records = {
      At(MakeRecord(kOut, "prison", "m-1", "VIS-7", ess::v1::MESSAGE_STATUS_DELIVERED), 100, 110),
      At(MakeRecord(kIn, "prison", "wh-1", "VIS-7", ess::v1::MESSAGE_STATUS_PUBLISHED), 120, 130),
  };
  EXPECT_EQ(ComputeTrail("VIS-7", records).stage(), "confirmed");

  records.push_back(
      At(MakeRecord(kOut, "prison", "m-2", "VIS-7", ess::v1::MESSAGE_STATUS_DEAD), 200, 210));
  ess::v1::CorrelationTrail trail = ComputeTrail("VIS-7", records);
  EXPECT_EQ(trail.stage(), "dead");
  EXPECT_EQ(trail.pushed_at().seconds(), 100);
  EXPECT_EQ(trail.delivered_at().seconds(), 110);
  EXPECT_EQ(trail.confirmed_at().seconds(), 130);

  // Replayed and delivered (the same record, updated): delivered, not yet confirmed.
  records.back() =
      At(MakeRecord(kOut, "prison", "m-2", "VIS-7", ess::v1::MESSAGE_STATUS_DELIVERED), 300, 310);
  EXPECT_EQ(ComputeTrail("VIS-7", records).stage(), "delivered");
  // The partner's confirmation of it, written after the lane took it.
  records.push_back(
      At(MakeRecord(kIn, "prison", "wh-2", "VIS-7", ess::v1::MESSAGE_STATUS_PUBLISHED), 305, 305));
  EXPECT_EQ(ComputeTrail("VIS-7", records).stage(), "confirmed");
}

// A newer update still being retried reads "failed" over an older one's delivery.
TEST(TrailTest, ANewerUpdateBeingRetriedIsFailed) {
  std::vector<MessageRecord> records = {
      At(MakeRecord(kOut, "p", "m-1", "C", ess::v1::MESSAGE_STATUS_DELIVERED), 100, 110),
      At(MakeRecord(kOut, "p", "m-2", "C", ess::v1::MESSAGE_STATUS_FAILED), 200, 205),
  };
  EXPECT_EQ(ComputeTrail("C", records).stage(), "failed");
  // In either order from the store.
  std::swap(records[0], records[1]);
  EXPECT_EQ(ComputeTrail("C", records).stage(), "failed");
}

// Each partner's latest update counts; across partners the furthest stage wins, as before.
TEST(TrailTest, EachPartnersLatestUpdateCounts) {
  std::vector<MessageRecord> records = {
      At(MakeRecord(kOut, "a", "m-1", "C", ess::v1::MESSAGE_STATUS_DELIVERED), 100, 110),
      At(MakeRecord(kOut, "a", "m-2", "C", ess::v1::MESSAGE_STATUS_DEAD), 200, 210),
      At(MakeRecord(kOut, "b", "m-1", "C", ess::v1::MESSAGE_STATUS_DELIVERED), 100, 120),
  };
  EXPECT_EQ(ComputeTrail("C", records).stage(), "delivered");
  records[2] = At(MakeRecord(kOut, "b", "m-2", "C", ess::v1::MESSAGE_STATUS_FAILED), 200, 220);
  EXPECT_EQ(ComputeTrail("C", records).stage(), "dead");
}

// A confirmation that arrived before the lane recorded the delivery (a partner that confirms
// fast) still confirms it: it came after the lane took the update.
TEST(TrailTest, AConfirmationWrittenBeforeTheDeliveryRecordStillConfirmsIt) {
  std::vector<MessageRecord> records = {
      At(MakeRecord(kIn, "p", "wh-1", "C", ess::v1::MESSAGE_STATUS_PUBLISHED), 104, 105),
      At(MakeRecord(kOut, "p", "m-1", "C", ess::v1::MESSAGE_STATUS_DELIVERED), 100, 107),
  };
  EXPECT_EQ(ComputeTrail("C", records).stage(), "confirmed");
}

TEST(TrailTest, NoRecordsHasNoStage) {
  ess::v1::CorrelationTrail trail = ComputeTrail("C", {});
  EXPECT_EQ(trail.stage(), "");
  EXPECT_FALSE(trail.has_pushed_at());
}

}  // namespace
}  // namespace ess::replay
