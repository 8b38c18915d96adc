// Tests of CopyStore (replay_svc --import_from) between real stores: a SQLite file and a
// PostgreSQL schema of the server ./test.sh starts, each way.
#include "replay_svc/store_copy.h"

#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/replay_svc/test_store.h"
#include "tests/replay_svc/test_util.h"

namespace ess::replay {
namespace {

using ::ess::replay::testing::Backend;
using ::ess::replay::testing::FakeClock;
using ::ess::replay::testing::Key;
using ::ess::replay::testing::MakeRecord;
using ::ess::replay::testing::TestStore;
using ::ess::v1::MessageRecord;
using ::testing::HasSubstr;

using Records = google::protobuf::RepeatedPtrField<MessageRecord>;

// Every record of `store`, oldest first, each as its bytes.
std::vector<std::string> Everything(ReplayStore& store) {
  std::vector<std::string> all;
  ListQuery query{.limit = 1000, .oldest_first = true};
  for (int guard = 0; guard < 100; ++guard) {
    absl::StatusOr<ListPage> page = store.List(query);
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) break;
    for (const MessageRecord& r : page->records) all.push_back(r.SerializeAsString());
    if (!page->next.has_value()) break;
    query.after = page->next;
  }
  return all;
}

class StoreCopyTest : public ::testing::TestWithParam<std::tuple<Backend, Backend>> {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<ReplayStore>> from =
        from_db_.Open([this] { return from_clock_.Now(); });
    ASSERT_TRUE(from.ok()) << from.status();
    from_ = *std::move(from);
    absl::StatusOr<std::unique_ptr<ReplayStore>> to =
        to_db_.Open([this] { return to_clock_.Now(); });
    ASSERT_TRUE(to.ok()) << to.status();
    to_ = *std::move(to);
  }

  // The source as a hub leaves it: `n` records of two partners, both directions and every
  // status, in batches of 7 (a batch's records share updated_at), some updated again later.
  void Fill(int n) {
    constexpr ess::v1::MessageStatus kStatuses[] = {
        ess::v1::MESSAGE_STATUS_RECEIVED, ess::v1::MESSAGE_STATUS_DELIVERED,
        ess::v1::MESSAGE_STATUS_DRY_RUN,  ess::v1::MESSAGE_STATUS_FAILED,
        ess::v1::MESSAGE_STATUS_DEAD,     ess::v1::MESSAGE_STATUS_PUBLISHED};
    Records batch;
    for (int i = 0; i < n; ++i) {
      MessageRecord r =
          MakeRecord(i % 3 == 0 ? ess::v1::DIRECTION_INBOUND : ess::v1::DIRECTION_OUTBOUND,
                     i % 2 == 0 ? "prison" : "probation", absl::StrCat("m-", i),
                     absl::StrCat("VIS-", i / 2), kStatuses[i % 6]);
      r.set_rendered(absl::StrCat("rendered ", i, std::string("\0\xff", 2)));
      r.set_attempts(i % 4);
      r.set_error(i % 5 == 0 ? "HTTP 503" : "");
      r.set_maybe_delivered_as(i % 11 == 0 ? absl::StrCat("/upload/", i, ".csv") : "");
      *batch.Add() = std::move(r);
      if (batch.size() == 7 || i == n - 1) {
        ASSERT_TRUE(from_->Record(batch).ok());
        batch.Clear();
      }
    }
    // Updated again: these move to the end of the oldest-first order.
    for (int i = 0; i < n; i += 10) {
      MessageRecord r =
          MakeRecord(i % 3 == 0 ? ess::v1::DIRECTION_INBOUND : ess::v1::DIRECTION_OUTBOUND,
                     i % 2 == 0 ? "prison" : "probation", absl::StrCat("m-", i),
                     absl::StrCat("VIS-", i / 2), ess::v1::MESSAGE_STATUS_DELIVERED);
      r.clear_payload();  // a status mark
      *batch.Add() = std::move(r);
    }
    ASSERT_TRUE(from_->Record(batch).ok());
  }

  TestStore from_db_{std::get<0>(GetParam())};
  TestStore to_db_{std::get<1>(GetParam())};
  FakeClock from_clock_;
  FakeClock to_clock_{absl::FromUnixSeconds(1'800'000'000)};
  std::unique_ptr<ReplayStore> from_;
  std::unique_ptr<ReplayStore> to_;
};

INSTANTIATE_TEST_SUITE_P(Backends, StoreCopyTest,
                         ::testing::Values(std::make_tuple(Backend::kSqlite, Backend::kPostgres),
                                           std::make_tuple(Backend::kPostgres, Backend::kSqlite),
                                           std::make_tuple(Backend::kSqlite, Backend::kSqlite)),
                         [](const ::testing::TestParamInfo<std::tuple<Backend, Backend>>& param) {
                           auto name = [](Backend b) {
                             return b == Backend::kSqlite ? "Sqlite" : "Postgres";
                           };
                           return absl::StrCat(name(std::get<0>(param.param)), "To",
                                               name(std::get<1>(param.param)));
                         });

TEST_P(StoreCopyTest, CopiesEveryRecordWithItsTimesInOrder) {
  ASSERT_NO_FATAL_FAILURE(Fill(1234));
  std::vector<uint64_t> pages_read;
  absl::StatusOr<CopyCount> copied = CopyStore(
      *from_, *to_,
      {.page_size = 100, .progress = [&](const CopyCount& c) { pages_read.push_back(c.read); }});
  ASSERT_TRUE(copied.ok()) << copied.status();
  EXPECT_EQ(copied->read, 1234u);
  EXPECT_EQ(copied->written, 1234u);
  ASSERT_EQ(pages_read.size(), 13u);
  EXPECT_EQ(pages_read.front(), 100u);
  EXPECT_EQ(pages_read.back(), 1234u);

  // The same records, field for field (times included), in the same order: ties of one
  // batch's updated_at too.
  const std::vector<std::string> source = Everything(*from_);
  ASSERT_EQ(source.size(), 1234u);
  EXPECT_TRUE(Everything(*to_) == source);

  // What the target tells of them is what the source told.
  absl::StatusOr<std::vector<ess::v1::PartnerStats>> from_stats = from_->Stats("");
  absl::StatusOr<std::vector<ess::v1::PartnerStats>> to_stats = to_->Stats("");
  ASSERT_TRUE(from_stats.ok() && to_stats.ok());
  ASSERT_EQ(from_stats->size(), 4u);
  ASSERT_EQ(to_stats->size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ((*to_stats)[i].SerializeAsString(), (*from_stats)[i].SerializeAsString())
        << (*to_stats)[i].ShortDebugString();
  }
  absl::StatusOr<std::vector<MessageRecord>> trail = to_->GetByCorrelation("VIS-3");
  ASSERT_TRUE(trail.ok());
  EXPECT_EQ(trail->size(), 2u);  // m-6 and m-7
  if (std::get<1>(GetParam()) == Backend::kPostgres) {
    // The planner knows the table's size from the copy on (a table never analyzed: -1).
    absl::StatusOr<pg::Connection> db = pg::Connection::Open(to_db_.location());
    ASSERT_TRUE(db.ok()) << db.status();
    absl::StatusOr<pg::Result> rows = db->Query(
        "SELECT reltuples::BIGINT FROM pg_class WHERE oid = 'ess_replay_records'::regclass");
    ASSERT_TRUE(rows.ok()) << rows.status();
    EXPECT_EQ(rows->Int64(0, 0), 1234);
  }

  // Run again, it writes nothing.
  copied = CopyStore(*from_, *to_, {.page_size = 100});
  ASSERT_TRUE(copied.ok()) << copied.status();
  EXPECT_EQ(copied->read, 1234u);
  EXPECT_EQ(copied->written, 0u);
  EXPECT_TRUE(Everything(*to_) == source);
}

TEST_P(StoreCopyTest, WhatTheLanesWroteToTheTargetSinceIsKept) {
  ASSERT_NO_FATAL_FAILURE(Fill(20));
  // The target's clock is later than the source's: what the lanes write to it is newer.
  Records later;
  *later.Add() = MakeRecord(ess::v1::DIRECTION_OUTBOUND, "probation", "m-1", "VIS-0",
                            ess::v1::MESSAGE_STATUS_DEAD);
  *later.Add() = MakeRecord(ess::v1::DIRECTION_OUTBOUND, "prison", "new", "VIS-new",
                            ess::v1::MESSAGE_STATUS_DELIVERED);
  ASSERT_TRUE(to_->Record(later).ok());

  absl::StatusOr<CopyCount> copied = CopyStore(*from_, *to_, {.page_size = 8});
  ASSERT_TRUE(copied.ok()) << copied.status();
  EXPECT_EQ(copied->read, 20u);
  EXPECT_EQ(copied->written, 19u);
  absl::StatusOr<MessageRecord> kept =
      to_->GetByKey(Key(ess::v1::DIRECTION_OUTBOUND, "probation", "m-1"));
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(kept->status(), ess::v1::MESSAGE_STATUS_DEAD);
  EXPECT_TRUE(to_->GetByKey(Key(ess::v1::DIRECTION_OUTBOUND, "prison", "new")).ok());
  EXPECT_EQ(Everything(*to_).size(), 21u);
}

TEST_P(StoreCopyTest, AnEmptySourceCopiesNothing) {
  absl::StatusOr<CopyCount> copied = CopyStore(*from_, *to_, {});
  ASSERT_TRUE(copied.ok()) << copied.status();
  EXPECT_EQ(copied->read, 0u);
  EXPECT_EQ(copied->written, 0u);
}

TEST_P(StoreCopyTest, ARecordTheTargetRefusesIsNamedAndTheEarlierPagesStay) {
  if (std::get<1>(GetParam()) == Backend::kSqlite) {
    ASSERT_TRUE(to_db_
                    .Exec("CREATE TRIGGER poison BEFORE INSERT ON records "
                          "WHEN NEW.message_id = 'm-13' BEGIN SELECT RAISE(ABORT, 'poisoned'); "
                          "END")
                    .ok());
  } else {
    ASSERT_TRUE(to_db_
                    .Exec(R"sql(
CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.message_id = 'm-13' THEN RAISE EXCEPTION 'poisoned' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER poison BEFORE INSERT ON ess_replay_records
  FOR EACH ROW EXECUTE FUNCTION poison();
)sql")
                    .ok());
  }
  ASSERT_NO_FATAL_FAILURE(Fill(20));
  // Where m-13 comes in the source's order (oldest first; ties of a batch by row id).
  size_t before = 0;
  absl::StatusOr<ListPage> source = from_->List({.limit = 100, .oldest_first = true});
  ASSERT_TRUE(source.ok());
  while (before < source->records.size() && source->records[before].message_id() != "m-13") {
    ++before;
  }
  ASSERT_GE(before, 5u);  // in the second page of 5, or later
  absl::StatusOr<CopyCount> copied = CopyStore(*from_, *to_, {.page_size = 5});
  EXPECT_EQ(copied.status().code(), absl::StatusCode::kFailedPrecondition) << copied.status();
  EXPECT_THAT(std::string(copied.status().message()),
              HasSubstr("writing direction=outbound partner=probation message_id=m-13: "));
  EXPECT_THAT(std::string(copied.status().message()), HasSubstr("poisoned"));
  // The pages before m-13's, and the records of its page before it, stay.
  EXPECT_EQ(Everything(*to_).size(), before);
}

}  // namespace
}  // namespace ess::replay
