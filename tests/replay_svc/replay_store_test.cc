// Tests of the ReplayStore backends on real parts (a SQLite file; a PostgreSQL schema of the
// server ./test.sh starts), with a fake clock for updated_at. What replay_store.h promises runs
// on both; the SQLite file's schema versions on SQLite alone.
#include <algorithm>
#include <atomic>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/sqlite.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "replay_svc/postgres_replay_store.h"
#include "replay_svc/sqlite_replay_store.h"
#include "tests/replay_svc/test_store.h"
#include "tests/replay_svc/test_util.h"

namespace ess::replay {
namespace {

using ::ess::replay::testing::Backend;
using ::ess::replay::testing::BackendName;
using ::ess::replay::testing::FakeClock;
using ::ess::replay::testing::InvalidKeyCase;
using ::ess::replay::testing::kBackends;
using ::ess::replay::testing::Key;
using ::ess::replay::testing::MakeRecord;
using ::ess::replay::testing::MessageIds;
using ::ess::replay::testing::Outbound;
using ::ess::replay::testing::TestStore;
using ::ess::replay::testing::Ts;
using ::ess::v1::MessageRecord;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr auto kOut = ess::v1::DIRECTION_OUTBOUND;
constexpr auto kIn = ess::v1::DIRECTION_INBOUND;

google::protobuf::RepeatedPtrField<MessageRecord> Batch(std::vector<MessageRecord> records) {
  google::protobuf::RepeatedPtrField<MessageRecord> batch;
  for (MessageRecord& r : records) *batch.Add() = std::move(r);
  return batch;
}

// A store on one backend, with a fake clock for updated_at.
class StoreTest : public ::testing::Test {
 protected:
  explicit StoreTest(Backend backend) : db_(backend) {}

  void SetUp() override { Reopen(); }

  void Reopen() {
    store_.reset();
    absl::StatusOr<std::unique_ptr<ReplayStore>> store = db_.Open([this] { return clock_.Now(); });
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  // Records one batch and expects it stored whole.
  void Store(std::vector<MessageRecord> records) {
    const size_t n = records.size();
    absl::StatusOr<uint32_t> stored = store_->Record(Batch(std::move(records)));
    ASSERT_TRUE(stored.ok()) << stored.status();
    ASSERT_EQ(*stored, n);
  }

  std::vector<MessageRecord> ListAll(ListQuery query = {}) {
    query.limit = 100'000;
    absl::StatusOr<ListPage> page = store_->List(query);
    EXPECT_TRUE(page.ok()) << page.status();
    return page.ok() ? page->records : std::vector<MessageRecord>();
  }

  // The message ids of every page of `query`, page by page (at most 10 pages).
  std::vector<std::vector<std::string>> Pages(ListQuery query) {
    std::vector<std::vector<std::string>> pages;
    for (int guard = 0; guard < 10; ++guard) {
      absl::StatusOr<ListPage> page = store_->List(query);
      EXPECT_TRUE(page.ok()) << page.status();
      if (!page.ok()) break;
      pages.push_back(MessageIds(page->records));
      if (!page->next.has_value()) break;
      query.after = page->next;
    }
    return pages;
  }

  TestStore db_;
  FakeClock clock_;
  std::unique_ptr<ReplayStore> store_;
};

// What every backend must do alike (replay_store.h): each test runs on SQLite and on PostgreSQL.
class ReplayStoreTest : public StoreTest, public ::testing::WithParamInterface<Backend> {
 protected:
  ReplayStoreTest() : StoreTest(GetParam()) {}
};

INSTANTIATE_TEST_SUITE_P(Backends, ReplayStoreTest, ::testing::ValuesIn(kBackends), BackendName);

// What only the SQLite file shows: its schema versions and migrations.
class SqliteReplayStoreTest : public StoreTest {
 protected:
  SqliteReplayStoreTest() : StoreTest(Backend::kSqlite) {}

  std::string path() const { return db_.location(); }

  // Closes the store and runs `sql` on its file directly: what an older version left.
  void CloseAndRun(const std::vector<std::string>& sql) {
    store_.reset();
    for (const std::string& statement : sql) {
      ASSERT_TRUE(db_.Exec(statement).ok()) << statement;
    }
  }

  // The first column of the first row of `sql`, run on the closed store's file.
  int64_t CloseAndQuery(const std::string& sql) {
    store_.reset();
    absl::StatusOr<sqlite::Database> db = sqlite::Database::Open(path());
    EXPECT_TRUE(db.ok()) << db.status();
    if (!db.ok()) return -1;
    absl::StatusOr<sqlite::Statement> row = db->Prepare(sql);
    EXPECT_TRUE(row.ok()) << row.status();
    if (!row.ok() || !row->Step().value_or(false)) return -1;
    return row->ColumnInt64(0);
  }
};

TEST_P(ReplayStoreTest, RecordsAndReadsBackEveryField) {
  MessageRecord r = MakeRecord(kOut, "prison", "m-1", "VIS-77");
  r.set_rendered(std::string("{\"x\":1}\0\xff", 9));
  r.set_error("none yet");
  r.set_attempts(3);
  r.set_dry_run(true);
  r.set_source("outbound.prison");
  *r.mutable_received_at() = Ts(absl::FromUnixMillis(1'600'000'000'123));
  r.set_maybe_delivered_as("/upload/visits-1.csv");
  const absl::Time write_time = clock_.Peek();
  Store({r});

  absl::StatusOr<MessageRecord> got = store_->GetByKey(Key(kOut, "prison", "m-1"));
  ASSERT_TRUE(got.ok()) << got.status();
  MessageRecord expected = r;
  *expected.mutable_updated_at() = Ts(write_time);
  EXPECT_EQ(got->SerializeAsString(), expected.SerializeAsString()) << got->DebugString();
}

TEST_P(ReplayStoreTest, UnsetReceivedAtIsTheWriteTime) {
  const absl::Time write_time = clock_.Peek();
  Store({Outbound("prison", "m-1")});
  absl::StatusOr<MessageRecord> got = store_->GetByKey(Key(kOut, "prison", "m-1"));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->received_at().seconds(), absl::ToUnixSeconds(write_time));
  EXPECT_EQ(got->updated_at().seconds(), absl::ToUnixSeconds(write_time));
}

TEST_P(ReplayStoreTest, UpsertUpdatesStateAndKeepsFirstReceivedAt) {
  MessageRecord first = MakeRecord(kOut, "prison", "m-1", "VIS-77");
  first.set_payload("original payload");
  first.set_rendered("first render");
  first.set_error("timeout");
  first.set_attempts(1);
  first.set_source("q1");
  *first.mutable_received_at() = Ts(absl::FromUnixSeconds(1'000));
  first.set_maybe_delivered_as("/upload/visits-1.csv");
  Store({first});

  MessageRecord second =
      MakeRecord(kOut, "prison", "m-1", "VIS-77", ess::v1::MESSAGE_STATUS_DELIVERED);
  second.clear_payload();  // Empty: the stored payload stays.
  second.set_rendered("second render");
  second.set_attempts(2);
  second.set_source("q2");
  second.set_event_type("Other");
  *second.mutable_received_at() = Ts(absl::FromUnixSeconds(2'000));
  const absl::Time second_write = clock_.Peek();
  Store({second});

  std::vector<MessageRecord> all = ListAll();
  ASSERT_EQ(all.size(), 1u);
  const MessageRecord& got = all[0];
  EXPECT_EQ(got.status(), ess::v1::MESSAGE_STATUS_DELIVERED);
  EXPECT_EQ(got.attempts(), 2u);
  EXPECT_EQ(got.error(), "");
  EXPECT_EQ(got.payload(), "original payload");
  EXPECT_EQ(got.rendered(), "second render");
  EXPECT_EQ(got.received_at().seconds(), 1'000);
  EXPECT_EQ(got.updated_at().seconds(), absl::ToUnixSeconds(second_write));
  EXPECT_EQ(got.source(), "q1");
  EXPECT_EQ(got.event_type(), "VisitScheduleUpdated");
  EXPECT_EQ(got.maybe_delivered_as(), "");  // each write says where the push may have landed

  MessageRecord third = second;
  third.set_payload("new payload");
  Store({third});
  EXPECT_EQ(store_->GetByKey(Key(kOut, "prison", "m-1"))->payload(), "new payload");
}

// One batch that holds a key several times is applied as if its records came one after
// another (the PostgreSQL store writes such a batch in rounds of distinct keys), and text and
// bytes of any content come back as they went in.
TEST_P(ReplayStoreTest, ABatchThatRepeatsAKeyAppliesItsRecordsInOrder) {
  MessageRecord received = Outbound("prison", "m-1");
  constexpr char kPayload[] = "payload \0 with \xff bytes";
  received.set_payload(std::string(kPayload, sizeof(kPayload) - 1));
  received.set_rendered("render 1");
  *received.mutable_received_at() = Ts(absl::FromUnixSeconds(1'000));
  MessageRecord failed = Outbound("prison", "m-1", ess::v1::MESSAGE_STATUS_FAILED);
  failed.clear_payload();
  failed.set_error(R"(HTTP 503: "busy" \ {retry}, later)");
  failed.set_attempts(1);
  failed.set_maybe_delivered_as("/upload/a b,\"c\".csv");
  MessageRecord delivered = Outbound("prison", "m-1", ess::v1::MESSAGE_STATUS_DELIVERED);
  delivered.clear_payload();
  delivered.set_rendered("render 2 – ünïcode");
  delivered.set_attempts(2);
  // An inbound event once PUBLISHED is not marked FAILED, within one batch too.
  MessageRecord published =
      MakeRecord(kIn, "prison", "wh-1", "VIS-1", ess::v1::MESSAGE_STATUS_PUBLISHED);
  MessageRecord publish_failed =
      MakeRecord(kIn, "prison", "wh-1", "VIS-1", ess::v1::MESSAGE_STATUS_FAILED);
  publish_failed.clear_payload();
  Store({received, Outbound("prison", "m-0"), failed, published, Outbound("prison", "m-2"),
         delivered, publish_failed});

  absl::StatusOr<MessageRecord> m1 = store_->GetByKey(Key(kOut, "prison", "m-1"));
  ASSERT_TRUE(m1.ok()) << m1.status();
  EXPECT_EQ(m1->status(), ess::v1::MESSAGE_STATUS_DELIVERED);
  EXPECT_EQ(m1->payload(), received.payload());
  EXPECT_EQ(m1->rendered(), "render 2 – ünïcode");
  EXPECT_EQ(m1->attempts(), 2u);
  EXPECT_EQ(m1->error(), "");
  EXPECT_EQ(m1->maybe_delivered_as(), "");
  EXPECT_EQ(m1->received_at().seconds(), 1'000);
  absl::StatusOr<MessageRecord> wh1 = store_->GetByKey(Key(kIn, "prison", "wh-1"));
  ASSERT_TRUE(wh1.ok()) << wh1.status();
  EXPECT_EQ(wh1->status(), ess::v1::MESSAGE_STATUS_PUBLISHED);
  EXPECT_THAT(MessageIds(ListAll()), ::testing::UnorderedElementsAre("m-0", "m-1", "m-2", "wh-1"));

  // The failed attempt alone, in a batch of its own: its text comes back whole.
  Store({failed});
  m1 = store_->GetByKey(Key(kOut, "prison", "m-1"));
  ASSERT_TRUE(m1.ok()) << m1.status();
  EXPECT_EQ(m1->error(), R"(HTTP 503: "busy" \ {retry}, later)");
  EXPECT_EQ(m1->maybe_delivered_as(), "/upload/a b,\"c\".csv");
  EXPECT_EQ(m1->payload(), received.payload());
}

// A record without payload and rendered bytes (a status mark, such as the inbound lane's
// PUBLISHED) takes the store's plain UPDATE when its key is stored, and must change what the
// upsert would, nothing more; with no row yet it is inserted as any record is.
TEST_P(ReplayStoreTest, ARecordWithoutBytesMarksTheStoredRowOrIsInserted) {
  MessageRecord claimed = MakeRecord(kIn, "prison", "wh-1", "VIS-1");
  claimed.set_status(ess::v1::MESSAGE_STATUS_RECEIVED);
  claimed.set_rendered("rendered event");
  claimed.set_source("/webhooks/prison");
  claimed.set_attempts(1);
  *claimed.mutable_received_at() = Ts(absl::FromUnixSeconds(1'000));
  claimed.set_maybe_delivered_as("/upload/visits-1.csv");
  Store({claimed});

  MessageRecord mark =
      MakeRecord(kIn, "prison", "wh-1", "VIS-other", ess::v1::MESSAGE_STATUS_FAILED);
  mark.clear_payload();
  mark.set_error("event bus: nacked");
  mark.set_attempts(2);
  mark.set_dry_run(true);
  mark.set_event_type("Other");
  mark.set_source("elsewhere");
  *mark.mutable_received_at() = Ts(absl::FromUnixSeconds(2'000));
  mark.set_maybe_delivered_as("/upload/visits-2.csv");
  const absl::Time mark_write = clock_.Peek();
  Store({mark});

  absl::StatusOr<MessageRecord> got = store_->GetByKey(Key(kIn, "prison", "wh-1"));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->status(), ess::v1::MESSAGE_STATUS_FAILED);
  EXPECT_EQ(got->error(), "event bus: nacked");
  EXPECT_EQ(got->attempts(), 2u);
  EXPECT_TRUE(got->dry_run());
  EXPECT_EQ(got->updated_at().seconds(), absl::ToUnixSeconds(mark_write));
  EXPECT_EQ(got->maybe_delivered_as(), "/upload/visits-2.csv");
  // What only the first write sets stays.
  EXPECT_EQ(got->payload(), claimed.payload());
  EXPECT_EQ(got->rendered(), "rendered event");
  EXPECT_EQ(got->correlation_id(), "VIS-1");
  EXPECT_EQ(got->event_type(), claimed.event_type());
  EXPECT_EQ(got->source(), "/webhooks/prison");
  EXPECT_EQ(got->received_at().seconds(), 1'000);

  MessageRecord unknown =
      MakeRecord(kIn, "prison", "wh-2", "VIS-2", ess::v1::MESSAGE_STATUS_PUBLISHED);
  unknown.clear_payload();
  Store({unknown});
  got = store_->GetByKey(Key(kIn, "prison", "wh-2"));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->status(), ess::v1::MESSAGE_STATUS_PUBLISHED);
  EXPECT_EQ(got->correlation_id(), "VIS-2");
  EXPECT_EQ(got->payload(), "");
  EXPECT_EQ(ListAll().size(), 2u);
}

// A lane whose publish failed marks its claim FAILED; if a partner's retry has published the id
// meanwhile (through another replica, after the first call's lease), the mark must not undo it.
TEST_P(ReplayStoreTest, APublishedInboundEventIsNeverMarkedFailed) {
  for (bool with_bytes : {false, true}) {
    const std::string id = with_bytes ? "wh-bytes" : "wh-mark";
    Store({MakeRecord(kIn, "prison", id, "VIS-1", ess::v1::MESSAGE_STATUS_PUBLISHED)});
    MessageRecord failed = MakeRecord(kIn, "prison", id, "VIS-1", ess::v1::MESSAGE_STATUS_FAILED);
    if (!with_bytes) failed.clear_payload();  // the lane's mark (kMarkSql), else the upsert
    failed.set_error("event bus: nacked");
    Store({failed});
    absl::StatusOr<MessageRecord> got = store_->GetByKey(Key(kIn, "prison", id));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->status(), ess::v1::MESSAGE_STATUS_PUBLISHED) << id;
    EXPECT_EQ(got->error(), "") << id;
  }
  // Outbound, a failure after a delivery is a later attempt's (an ops replay): it is stored.
  Store({MakeRecord(kOut, "prison", "m-1", "VIS-1", ess::v1::MESSAGE_STATUS_DELIVERED)});
  MessageRecord failed = MakeRecord(kOut, "prison", "m-1", "VIS-1", ess::v1::MESSAGE_STATUS_FAILED);
  failed.clear_payload();
  Store({failed});
  EXPECT_EQ(store_->GetByKey(Key(kOut, "prison", "m-1"))->status(), ess::v1::MESSAGE_STATUS_FAILED);
}

TEST_P(ReplayStoreTest, KeyIsDirectionPartnerAndMessageId) {
  Store({MakeRecord(kOut, "prison", "m-1", "C"), MakeRecord(kIn, "prison", "m-1", "C"),
         MakeRecord(kOut, "clinic", "m-1", "C"), MakeRecord(kOut, "prison", "m-2", "C"),
         MakeRecord(kOut, "prison", "m-1", "C", ess::v1::MESSAGE_STATUS_FAILED)});
  EXPECT_EQ(ListAll().size(), 4u);
  EXPECT_EQ(store_->GetByKey(Key(kOut, "prison", "m-1"))->status(), ess::v1::MESSAGE_STATUS_FAILED);
}

TEST_P(ReplayStoreTest, InvalidRecordRejectsTheWholeBatch) {
  MessageRecord bad = Outbound("prison", "m-2");
  bad.clear_message_id();
  absl::StatusOr<uint32_t> stored =
      store_->Record(Batch({Outbound("prison", "m-1"), bad, Outbound("prison", "m-3")}));
  EXPECT_EQ(stored.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(stored.status().message(), "records[1].message_id: must not be empty");
  EXPECT_THAT(MessageIds(ListAll()), IsEmpty());
}

// ---- Claim (the inbound lane's idempotency) -------------------------------------------------

ess::v1::Claim MakeClaim(const std::string& message_id, uint32_t window_seconds,
                         uint32_t lease_ms) {
  ess::v1::Claim claim;
  *claim.mutable_record() = MakeRecord(kIn, "prison", message_id, "VIS-" + message_id);
  claim.set_window_seconds(window_seconds);
  claim.set_lease_ms(lease_ms);
  return claim;
}

google::protobuf::RepeatedPtrField<ess::v1::Claim> Claims(std::vector<ess::v1::Claim> claims) {
  google::protobuf::RepeatedPtrField<ess::v1::Claim> batch;
  for (ess::v1::Claim& c : claims) *batch.Add() = std::move(c);
  return batch;
}

TEST_P(ReplayStoreTest, ClaimStoresReceivedUnlessTheIdIsPublishedOrLeased) {
  // The fake clock steps 1 s per call.
  auto claim = [&](uint32_t window_seconds, uint32_t lease_ms) {
    absl::StatusOr<std::vector<ess::v1::ClaimOutcome>> out =
        store_->Claim(Claims({MakeClaim("wh-1", window_seconds, lease_ms)}));
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() && out->size() == 1 ? (*out)[0] : ess::v1::CLAIM_OUTCOME_UNSPECIFIED;
  };
  const absl::Time first = clock_.Peek();
  EXPECT_EQ(claim(600, 2000), ess::v1::CLAIM_OUTCOME_CLAIMED);
  absl::StatusOr<MessageRecord> stored = store_->GetByKey(Key(kIn, "prison", "wh-1"));
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->status(), ess::v1::MESSAGE_STATUS_RECEIVED);
  EXPECT_EQ(stored->correlation_id(), "VIS-wh-1");
  EXPECT_EQ(stored->payload(), R"({"type":"VisitScheduleUpdated","id":"VIS-wh-1"})");
  EXPECT_EQ(stored->updated_at().seconds(), absl::ToUnixSeconds(first));

  // 1 s later, within a 2 s lease: someone is publishing it.
  EXPECT_EQ(claim(600, 2000), ess::v1::CLAIM_OUTCOME_IN_PROGRESS);
  // 2 s after the claim, past a 1.5 s lease: a crashed publisher's id is free again.
  EXPECT_EQ(claim(600, 1500), ess::v1::CLAIM_OUTCOME_CLAIMED);
  // A lease of 0 never holds an id.
  EXPECT_EQ(claim(600, 0), ess::v1::CLAIM_OUTCOME_CLAIMED);

  Store({MakeRecord(kIn, "prison", "wh-1", "VIS-wh-1", ess::v1::MESSAGE_STATUS_PUBLISHED)});
  EXPECT_EQ(claim(600, 2000), ess::v1::CLAIM_OUTCOME_PUBLISHED);
  stored = store_->GetByKey(Key(kIn, "prison", "wh-1"));
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->status(), ess::v1::MESSAGE_STATUS_PUBLISHED);  // a repeat changes nothing
  // Published more than window_seconds ago: a new delivery.
  EXPECT_EQ(claim(1, 2000), ess::v1::CLAIM_OUTCOME_CLAIMED);

  // A failed publish gives the id back at once.
  Store({MakeRecord(kIn, "prison", "wh-1", "VIS-wh-1", ess::v1::MESSAGE_STATUS_FAILED)});
  EXPECT_EQ(claim(600, 60'000), ess::v1::CLAIM_OUTCOME_CLAIMED);
}

TEST_P(ReplayStoreTest, ClaimsOfOneCallAreDecidedInOrder) {
  absl::StatusOr<std::vector<ess::v1::ClaimOutcome>> out = store_->Claim(
      Claims({MakeClaim("a", 600, 2000), MakeClaim("a", 600, 2000), MakeClaim("b", 600, 2000),
              MakeClaim("c", 600, 0), MakeClaim("c", 600, 0)}));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT(*out, ElementsAre(ess::v1::CLAIM_OUTCOME_CLAIMED, ess::v1::CLAIM_OUTCOME_IN_PROGRESS,
                                ess::v1::CLAIM_OUTCOME_CLAIMED, ess::v1::CLAIM_OUTCOME_CLAIMED,
                                ess::v1::CLAIM_OUTCOME_CLAIMED));
  EXPECT_THAT(MessageIds(ListAll()), ::testing::UnorderedElementsAre("a", "b", "c"));

  out = store_->Claim(Claims({}));
  ASSERT_TRUE(out.ok());
  EXPECT_THAT(*out, IsEmpty());
}

TEST_P(ReplayStoreTest, AClaimedRecordIsStoredReceivedWhateverItsStatusSays) {
  ess::v1::Claim unset = MakeClaim("no-status", 600, 2000);
  unset.mutable_record()->clear_status();
  ess::v1::Claim other = MakeClaim("says-published", 600, 2000);
  other.mutable_record()->set_status(ess::v1::MESSAGE_STATUS_PUBLISHED);
  absl::StatusOr<std::vector<ess::v1::ClaimOutcome>> out = store_->Claim(Claims({unset, other}));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT(*out, ElementsAre(ess::v1::CLAIM_OUTCOME_CLAIMED, ess::v1::CLAIM_OUTCOME_CLAIMED));
  for (const char* id : {"no-status", "says-published"}) {
    absl::StatusOr<MessageRecord> stored = store_->GetByKey(Key(kIn, "prison", id));
    ASSERT_TRUE(stored.ok()) << stored.status();
    EXPECT_EQ(stored->status(), ess::v1::MESSAGE_STATUS_RECEIVED) << id;
  }
}

TEST_P(ReplayStoreTest, InvalidClaimRejectsTheWholeCall) {
  ess::v1::Claim bad = MakeClaim("m-2", 600, 2000);
  bad.mutable_record()->clear_message_id();
  absl::StatusOr<std::vector<ess::v1::ClaimOutcome>> out =
      store_->Claim(Claims({MakeClaim("m-1", 600, 2000), bad}));
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(out.status().message(), "claims[1].record.message_id: must not be empty");
  EXPECT_THAT(MessageIds(ListAll()), IsEmpty());
}

TEST_P(ReplayStoreTest, FailureHalfwayThroughABatchRollsBackTheEarlierRecords) {
  // A trigger makes the database itself fail on the second record, after the first was written
  // inside the transaction.
  if (GetParam() == Backend::kSqlite) {
    ASSERT_TRUE(db_.Exec("CREATE TRIGGER poison BEFORE INSERT ON records "
                         "WHEN NEW.message_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); "
                         "END")
                    .ok());
  } else {
    ASSERT_TRUE(db_.Exec(R"sql(
CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.message_id = 'poison' THEN
    RAISE EXCEPTION 'poisoned' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER poison BEFORE INSERT ON ess_replay_records
  FOR EACH ROW EXECUTE FUNCTION poison();
)sql")
                    .ok());
  }
  absl::StatusOr<uint32_t> stored = store_->Record(
      Batch({Outbound("prison", "m-1"), Outbound("prison", "poison"), Outbound("prison", "m-3")}));
  EXPECT_EQ(stored.status().code(), absl::StatusCode::kFailedPrecondition) << stored.status();
  EXPECT_THAT(std::string(stored.status().message()),
              HasSubstr(GetParam() == Backend::kSqlite ? "records[1]: sqlite: SQLITE_CONSTRAINT"
                                                       : "records[1]: postgres: 23514: "));
  EXPECT_THAT(std::string(stored.status().message()), HasSubstr("poisoned"));
  EXPECT_THAT(MessageIds(ListAll()), IsEmpty());

  // A claim the database refuses is named too, and the call claims nothing.
  absl::StatusOr<std::vector<ess::v1::ClaimOutcome>> claimed = store_->Claim(
      Claims({MakeClaim("c-1", 600, 0), MakeClaim("z", 600, 0), MakeClaim("poison", 600, 0)}));
  EXPECT_EQ(claimed.status().code(), absl::StatusCode::kFailedPrecondition) << claimed.status();
  EXPECT_THAT(
      std::string(claimed.status().message()),
      HasSubstr(GetParam() == Backend::kSqlite ? "claims[2].record: sqlite: SQLITE_CONSTRAINT"
                                               : "claims[2].record: postgres: 23514: "));
  EXPECT_THAT(MessageIds(ListAll()), IsEmpty());

  // The writer is usable afterwards.
  Store({Outbound("prison", "m-1")});
  EXPECT_THAT(MessageIds(ListAll()), ElementsAre("m-1"));
}

TEST_P(ReplayStoreTest, EmptyBatchStoresNothing) {
  absl::StatusOr<uint32_t> stored = store_->Record({});
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(*stored, 0u);
}

TEST_P(ReplayStoreTest, UpdateStatusChangesStatusAndError) {
  MessageRecord failed = Outbound("prison", "m-1", ess::v1::MESSAGE_STATUS_FAILED);
  failed.set_maybe_delivered_as("/upload/visits-1.csv");
  Store({failed});
  ess::v1::UpdateStatusRequest request;
  request.set_direction(kOut);
  request.set_partner("prison");
  request.set_message_id("m-1");
  request.set_status(ess::v1::MESSAGE_STATUS_DEAD);
  request.set_error("HTTP 400: bad slot");
  const absl::Time update_time = clock_.Peek();
  absl::StatusOr<MessageRecord> updated = store_->UpdateStatus(request);
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_EQ(updated->status(), ess::v1::MESSAGE_STATUS_DEAD);
  EXPECT_EQ(updated->error(), "HTTP 400: bad slot");
  EXPECT_EQ(updated->updated_at().seconds(), absl::ToUnixSeconds(update_time));
  EXPECT_EQ(updated->payload(), Outbound("prison", "m-1").payload());
  EXPECT_EQ(updated->maybe_delivered_as(), "/upload/visits-1.csv");  // an ops mark keeps it

  absl::StatusOr<MessageRecord> stored = store_->GetByKey(Key(kOut, "prison", "m-1"));
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->SerializeAsString(), updated->SerializeAsString());
}

int64_t Micros(const google::protobuf::Timestamp& t) {
  return t.seconds() * 1'000'000 + t.nanos() / 1000;
}

// A replay's marks: each changes its row only if the row still holds the status and updated_at
// the replay read, as if the marks ran one after another in their order.
TEST_P(ReplayStoreTest, MarkReplayedChangesOnlyRowsThatStillHoldWhatTheMarkRead) {
  MessageRecord failed = Outbound("prison", "a", ess::v1::MESSAGE_STATUS_FAILED);
  failed.set_error("HTTP 503");
  Store({failed, Outbound("prison", "b", ess::v1::MESSAGE_STATUS_FAILED),
         Outbound("prison", "c", ess::v1::MESSAGE_STATUS_DEAD),
         Outbound("prison", "d", ess::v1::MESSAGE_STATUS_FAILED),
         MakeRecord(kIn, "prison", "a", "a", ess::v1::MESSAGE_STATUS_FAILED)});
  absl::StatusOr<MessageRecord> stored = store_->GetByKey(Key(kOut, "prison", "a"));
  ASSERT_TRUE(stored.ok()) << stored.status();
  const int64_t read_at = Micros(stored->updated_at());
  const int64_t mark_at = absl::ToUnixMicros(clock_.Peek());
  auto mark = [](ess::v1::Direction direction, const std::string& id,
                 ess::v1::MessageStatus expected, int64_t expected_at,
                 ess::v1::MessageStatus status) {
    return ReplayMark{.key = Key(direction, "prison", id),
                      .expected_status = expected,
                      .expected_updated_at_micros = expected_at,
                      .status = status};
  };
  constexpr auto kFailed = ess::v1::MESSAGE_STATUS_FAILED;
  constexpr auto kReceived = ess::v1::MESSAGE_STATUS_RECEIVED;
  constexpr auto kDelivered = ess::v1::MESSAGE_STATUS_DELIVERED;
  absl::StatusOr<MarkedReplays> changed = store_->MarkReplayed({
      mark(kOut, "d", kFailed, read_at, kReceived),      // 0: holds what was read
      mark(kOut, "a", kFailed, read_at, kReceived),      // 1: holds what was read
      mark(kOut, "b", kFailed, read_at - 1, kReceived),  // 2: updated since
      mark(kOut, "c", kFailed, read_at, kReceived),      // 3: another status
      mark(kOut, "zz", kFailed, read_at, kReceived),     // 4: no such record
      mark(kOut, "a", kFailed, read_at, kReceived),      // 5: mark 1 changed it
      mark(kOut, "d", kReceived, mark_at, kDelivered),   // 6: holds what mark 0 wrote
      mark(kIn, "a", ess::v1::MESSAGE_STATUS_PUBLISHED, read_at, kReceived),  // 7: another status
  });
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_THAT(changed->changed, ElementsAre(true, true, false, false, false, false, true, false));
  EXPECT_EQ(changed->updated_at_micros, mark_at);

  auto status_of = [&](ess::v1::Direction direction, const std::string& id) {
    absl::StatusOr<MessageRecord> r = store_->GetByKey(Key(direction, "prison", id));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? absl::StrCat(ess::v1::MessageStatus_Name(r->status()), " ", r->error(), "@",
                                 Micros(r->updated_at()) == mark_at ? "mark" : "read")
                  : "";
  };
  EXPECT_EQ(status_of(kOut, "a"), "MESSAGE_STATUS_RECEIVED @mark");  // the error is cleared
  EXPECT_EQ(status_of(kOut, "b"), "MESSAGE_STATUS_FAILED @read");
  EXPECT_EQ(status_of(kOut, "c"), "MESSAGE_STATUS_DEAD @read");
  EXPECT_EQ(status_of(kOut, "d"), "MESSAGE_STATUS_DELIVERED @mark");
  EXPECT_EQ(status_of(kIn, "a"), "MESSAGE_STATUS_FAILED @read");

  // Many marks at once: a replay's page of 1000.
  std::vector<MessageRecord> page;
  for (int i = 0; i < 1000; ++i) {
    page.push_back(Outbound("prison", absl::StrCat("p-", i), ess::v1::MESSAGE_STATUS_FAILED));
  }
  const int64_t page_at = absl::ToUnixMicros(clock_.Peek());
  Store(page);
  std::vector<ReplayMark> marks;
  for (int i = 999; i >= 0; --i) {  // not in key order
    marks.push_back(
        mark(kOut, absl::StrCat("p-", i), kFailed, i % 3 == 0 ? page_at - 1 : page_at, kReceived));
  }
  changed = store_->MarkReplayed(marks);
  ASSERT_TRUE(changed.ok()) << changed.status();
  ASSERT_EQ(changed->changed.size(), 1000u);
  for (int k = 0; k < 1000; ++k)
    EXPECT_EQ(changed->changed[k], (999 - k) % 3 != 0) << "marks[" << k << "]";
  ListQuery received{.partner = "prison", .status = kReceived};
  EXPECT_EQ(ListAll(received).size(), 666u + 1u);  // and "a"
}

// A mark sets the error it carries: a replay's claim, and the error given back with the claim.
TEST_P(ReplayStoreTest, MarkReplayedSetsTheErrorOfTheMark) {
  MessageRecord dead = Outbound("prison", "a", ess::v1::MESSAGE_STATUS_DEAD);
  dead.set_error("HTTP 422");
  Store({dead});
  absl::StatusOr<MessageRecord> stored = store_->GetByKey(Key(kOut, "prison", "a"));
  ASSERT_TRUE(stored.ok()) << stored.status();
  absl::StatusOr<MarkedReplays> claimed =
      store_->MarkReplayed({{.key = Key(kOut, "prison", "a"),
                             .expected_status = ess::v1::MESSAGE_STATUS_DEAD,
                             .expected_updated_at_micros = Micros(stored->updated_at()),
                             .status = ess::v1::MESSAGE_STATUS_DEAD,
                             .error = "replaying: claimed by alice; error before: HTTP 422"}});
  ASSERT_TRUE(claimed.ok()) << claimed.status();
  EXPECT_THAT(claimed->changed, ElementsAre(true));
  stored = store_->GetByKey(Key(kOut, "prison", "a"));
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->status(), ess::v1::MESSAGE_STATUS_DEAD);
  EXPECT_EQ(stored->error(), "replaying: claimed by alice; error before: HTTP 422");
  EXPECT_EQ(Micros(stored->updated_at()), claimed->updated_at_micros);
}

// Two replicas on one database mark the same records at once, each as if it alone had read them:
// every record is changed by exactly one of them.
TEST_P(ReplayStoreTest, OfTwoStoresMarkingTheSameRecordsAtOnceEachRecordGoesToOne) {
  constexpr int kRecords = 500;
  std::vector<MessageRecord> records;
  for (int i = 0; i < kRecords; ++i) {
    records.push_back(Outbound("prison", absl::StrCat("r-", i), ess::v1::MESSAGE_STATUS_DEAD));
  }
  const int64_t written_at = absl::ToUnixMicros(clock_.Peek());
  Store(records);
  absl::StatusOr<std::unique_ptr<ReplayStore>> other = db_.Open([this] { return clock_.Now(); });
  ASSERT_TRUE(other.ok()) << other.status();
  std::vector<ReplayMark> marks;
  for (int i = 0; i < kRecords; ++i) {
    marks.push_back({.key = Key(kOut, "prison", absl::StrCat("r-", i)),
                     .expected_status = ess::v1::MESSAGE_STATUS_DEAD,
                     .expected_updated_at_micros = written_at,
                     .status = ess::v1::MESSAGE_STATUS_DEAD,
                     .error = "replaying: claimed by test"});
  }
  for (int round = 0; round < 3; ++round) {
    std::vector<ReplayMark> these = marks;
    if (round == 1) std::reverse(these.begin(), these.end());
    std::atomic<int> ready = 0;
    auto mark = [&](ReplayStore* store) {
      ready.fetch_add(1);
      while (ready.load() < 2) std::this_thread::yield();  // both start together
      return store->MarkReplayed(these);
    };
    absl::StatusOr<MarkedReplays> a, b;
    std::thread other_replica([&] { b = mark(other->get()); });
    a = mark(store_.get());
    other_replica.join();
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    int changed = 0;
    for (int i = 0; i < kRecords; ++i) {
      EXPECT_NE(a->changed[i], b->changed[i]) << "round " << round << ", mark " << i;
      changed += a->changed[i] ? 1 : 0;
      changed += b->changed[i] ? 1 : 0;
    }
    EXPECT_EQ(changed, kRecords) << "round " << round;
    // Both changed every record they got: the next round expects what this one wrote.
    for (int i = 0; i < kRecords; ++i) {
      const int k = round == 1 ? kRecords - 1 - i : i;
      marks[k].expected_updated_at_micros =
          a->changed[i] ? a->updated_at_micros : b->updated_at_micros;
    }
  }
}

// A copy from another store: records keep their own times, and a stored record is replaced
// only by one updated later.
TEST_P(ReplayStoreTest, ImportKeepsTheRecordsTimesAndNeverReplacesANewerRecord) {
  MessageRecord newer = Outbound("prison", "kept", ess::v1::MESSAGE_STATUS_DELIVERED);
  Store({newer, Outbound("prison", "replaced", ess::v1::MESSAGE_STATUS_RECEIVED)});
  absl::StatusOr<MessageRecord> stored = store_->GetByKey(Key(kOut, "prison", "kept"));
  ASSERT_TRUE(stored.ok()) << stored.status();
  const absl::Time stored_at = absl::FromUnixMicros(Micros(stored->updated_at()));

  auto imported = [&](const std::string& id, ess::v1::MessageStatus status, absl::Time received,
                      absl::Time updated) {
    MessageRecord r = MakeRecord(kOut, "prison", id, "VIS-" + id, status);
    r.set_rendered("rendered " + id);
    r.set_error("HTTP 503");
    r.set_attempts(3);
    r.set_source("visits");
    r.set_maybe_delivered_as("/upload/" + id + ".csv");
    *r.mutable_received_at() = Ts(received);
    *r.mutable_updated_at() = Ts(updated);
    return r;
  };
  const absl::Time t = absl::FromUnixSeconds(1'600'000'000);
  const std::vector<MessageRecord> batch = {
      imported("new", ess::v1::MESSAGE_STATUS_FAILED, t, t + absl::Seconds(5)),
      imported("kept", ess::v1::MESSAGE_STATUS_FAILED, t, stored_at),  // not later: kept
      imported("replaced", ess::v1::MESSAGE_STATUS_DEAD, t, stored_at + absl::Seconds(1)),
      imported("twice", ess::v1::MESSAGE_STATUS_FAILED, t, t + absl::Seconds(1)),
      imported("twice", ess::v1::MESSAGE_STATUS_DEAD, t, t + absl::Seconds(2)),
      imported("twice", ess::v1::MESSAGE_STATUS_FAILED, t, t),  // older than the one before
  };
  absl::StatusOr<uint32_t> written = store_->Import(Batch(batch));
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written, 4u);

  for (const auto& [id, want] : std::vector<std::pair<std::string, MessageRecord>>{
           {"new", batch[0]}, {"replaced", batch[2]}, {"twice", batch[4]}}) {
    absl::StatusOr<MessageRecord> got = store_->GetByKey(Key(kOut, "prison", id));
    ASSERT_TRUE(got.ok()) << id << ": " << got.status();
    EXPECT_EQ(got->SerializeAsString(), want.SerializeAsString())
        << id << ": " << got->ShortDebugString();
  }
  stored = store_->GetByKey(Key(kOut, "prison", "kept"));
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->status(), ess::v1::MESSAGE_STATUS_DELIVERED);

  // The same copy again writes nothing.
  written = store_->Import(Batch(batch));
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written, 0u);

  // Listed by their own times: "new" is the oldest record of the store.
  std::vector<std::vector<std::string>> oldest = Pages({.limit = 2, .oldest_first = true});
  ASSERT_FALSE(oldest.empty());
  EXPECT_THAT(oldest[0], ElementsAre("twice", "new"));

  // A record without its times is refused by name, and nothing of the batch is written.
  std::vector<MessageRecord> bad = {imported("a", ess::v1::MESSAGE_STATUS_FAILED, t, t),
                                    imported("b", ess::v1::MESSAGE_STATUS_FAILED, t, t)};
  bad[1].clear_updated_at();
  written = store_->Import(Batch(bad));
  EXPECT_EQ(written.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(written.status().message(), "records[1].updated_at: must be set (an import keeps it)");
  bad[1] = imported("b", ess::v1::MESSAGE_STATUS_FAILED, t, t);
  bad[0].clear_received_at();
  written = store_->Import(Batch(bad));
  EXPECT_EQ(written.status().message(), "records[0].received_at: must be set (an import keeps it)");
  bad[0].set_partner("");
  written = store_->Import(Batch(bad));
  EXPECT_EQ(written.status().message(), "records[0].partner: must not be empty");
  EXPECT_EQ(store_->GetByKey(Key(kOut, "prison", "b")).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_P(ReplayStoreTest, UnknownKeysAreNotFound) {
  Store({Outbound("prison", "m-1")});
  ess::v1::UpdateStatusRequest request;
  request.set_direction(kIn);  // Same partner and id, other direction.
  request.set_partner("prison");
  request.set_message_id("m-1");
  request.set_status(ess::v1::MESSAGE_STATUS_PUBLISHED);
  absl::StatusOr<MessageRecord> updated = store_->UpdateStatus(request);
  EXPECT_EQ(updated.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(updated.status().message(),
            "no record direction=inbound partner=prison message_id=m-1");

  absl::StatusOr<MessageRecord> got = store_->GetByKey(Key(kOut, "prison", "m-9"));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<std::vector<MessageRecord>> none = store_->GetByCorrelation("nope");
  ASSERT_TRUE(none.ok());
  EXPECT_THAT(MessageIds(*none), IsEmpty());
}

google::protobuf::RepeatedPtrField<ess::v1::RecordKey> Keys(std::vector<ess::v1::RecordKey> keys) {
  google::protobuf::RepeatedPtrField<ess::v1::RecordKey> out;
  for (ess::v1::RecordKey& k : keys) *out.Add() = std::move(k);
  return out;
}

// The message id of each result, "-" where there is none.
std::vector<std::string> FoundIds(const std::vector<std::optional<MessageRecord>>& results) {
  std::vector<std::string> ids;
  for (const std::optional<MessageRecord>& r : results) ids.push_back(r ? r->message_id() : "-");
  return ids;
}

TEST_P(ReplayStoreTest, GetByKeysAnswersEachKeyInOrder) {
  MessageRecord delivered =
      MakeRecord(kOut, "prison", "m-1", "VIS-1", ess::v1::MESSAGE_STATUS_DELIVERED);
  delivered.set_rendered("rendered");
  const absl::Time write_time = clock_.Peek();
  Store({delivered, MakeRecord(kIn, "prison", "wh-2", "VIS-2", ess::v1::MESSAGE_STATUS_PUBLISHED),
         MakeRecord(kOut, "clinic", "m-3", "VIS-3")});

  absl::StatusOr<std::vector<std::optional<MessageRecord>>> got = store_->GetByKeys(Keys({
      Key(kIn, "prison", "wh-2"),
      Key(kOut, "prison", "m-404"),
      Key(kOut, "prison", "m-1"),
      Key(kIn, "prison", "m-1"),   // Same partner and id, other direction.
      Key(kOut, "prison", "m-3"),  // Same id, other partner.
      Key(kOut, "prison", "m-1"),  // Asked twice: answered twice.
      Key(kOut, "clinic", "m-3"),
  }));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(FoundIds(*got), ElementsAre("wh-2", "-", "m-1", "-", "-", "m-1", "m-3"));
  MessageRecord expected = delivered;
  *expected.mutable_received_at() = Ts(write_time);
  *expected.mutable_updated_at() = Ts(write_time);
  EXPECT_EQ((*got)[2]->SerializeAsString(), expected.SerializeAsString())
      << (*got)[2]->DebugString();
  EXPECT_EQ((*got)[0]->status(), ess::v1::MESSAGE_STATUS_PUBLISHED);
  EXPECT_EQ((*got)[0]->direction(), kIn);
}

TEST_P(ReplayStoreTest, GetByKeysOfNothingFoundAndOfNoKeys) {
  absl::StatusOr<std::vector<std::optional<MessageRecord>>> got =
      store_->GetByKeys(Keys({Key(kOut, "prison", "m-1"), Key(kIn, "prison", "m-1")}));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(FoundIds(*got), ElementsAre("-", "-"));

  got = store_->GetByKeys({});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->empty());
}

// Readers go back to the pool between calls: a read transaction left open would pin the old
// snapshot (or make the next BEGIN fail).
TEST_P(ReplayStoreTest, EachGetByKeysSeesTheLatestCommit) {
  for (int i = 0; i < 10; ++i) {
    const std::string id = absl::StrCat("m-", i);
    absl::StatusOr<std::vector<std::optional<MessageRecord>>> before =
        store_->GetByKeys(Keys({Key(kOut, "prison", id), Key(kOut, "prison", "m-0")}));
    ASSERT_TRUE(before.ok()) << before.status();
    EXPECT_THAT(FoundIds(*before), ElementsAre("-", i == 0 ? "-" : "m-0")) << i;
    Store({Outbound("prison", id)});
    absl::StatusOr<std::vector<std::optional<MessageRecord>>> after =
        store_->GetByKeys(Keys({Key(kOut, "prison", id)}));
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_THAT(FoundIds(*after), ElementsAre(id));
  }
}

class GetByKeysInvalidKeyTest : public SqliteReplayStoreTest,
                                public ::testing::WithParamInterface<InvalidKeyCase> {};

TEST_P(GetByKeysInvalidKeyTest, IsInvalidArgumentNamingIndexAndField) {
  Store({Outbound("prison", "m-0")});
  std::vector<ess::v1::RecordKey> keys;
  for (int i = 0; i < 5; ++i) keys.push_back(Key(kOut, "prison", absl::StrCat("m-", i)));
  GetParam().corrupt(&keys[3]);
  absl::StatusOr<std::vector<std::optional<MessageRecord>>> got =
      store_->GetByKeys(Keys(std::move(keys)));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(got.status().message(), GetParam().message);
}

INSTANTIATE_TEST_SUITE_P(Fields, GetByKeysInvalidKeyTest,
                         ::testing::ValuesIn(testing::InvalidKeyCases()),
                         testing::InvalidKeyCaseName);

TEST_P(ReplayStoreTest, GetByCorrelationReturnsBothDirectionsInReceivedOrder) {
  MessageRecord in = MakeRecord(kIn, "prison", "wh-1", "VIS-77", ess::v1::MESSAGE_STATUS_PUBLISHED);
  *in.mutable_received_at() = Ts(absl::FromUnixSeconds(300));
  MessageRecord out =
      MakeRecord(kOut, "prison", "m-1", "VIS-77", ess::v1::MESSAGE_STATUS_DELIVERED);
  *out.mutable_received_at() = Ts(absl::FromUnixSeconds(100));
  MessageRecord other = MakeRecord(kOut, "prison", "m-2", "VIS-78");
  Store({in, other, out});
  absl::StatusOr<std::vector<MessageRecord>> trail = store_->GetByCorrelation("VIS-77");
  ASSERT_TRUE(trail.ok()) << trail.status();
  EXPECT_THAT(MessageIds(*trail), ElementsAre("m-1", "wh-1"));
}

TEST_P(ReplayStoreTest, ListFiltersNarrowTheResultNewestFirst) {
  // One batch per record, so each has its own updated_at (the clock steps 1 s per write).
  const absl::Time t0 = clock_.Peek();
  Store({MakeRecord(kOut, "prison", "o1", "C1")});                                     // t0
  Store({MakeRecord(kOut, "prison", "o2", "C2", ess::v1::MESSAGE_STATUS_DELIVERED)});  // t0+1
  Store({MakeRecord(kOut, "clinic", "o3", "C3", ess::v1::MESSAGE_STATUS_DELIVERED)});  // t0+2
  Store({MakeRecord(kIn, "prison", "i1", "C1", ess::v1::MESSAGE_STATUS_PUBLISHED)});   // t0+3
  MessageRecord typed = MakeRecord(kOut, "prison", "o4", "C4", ess::v1::MESSAGE_STATUS_FAILED);
  typed.set_event_type("VisitCancelled");
  Store({typed});  // t0+4

  EXPECT_THAT(MessageIds(ListAll()), ElementsAre("o4", "i1", "o3", "o2", "o1"));
  EXPECT_THAT(MessageIds(ListAll({.partner = "prison"})), ElementsAre("o4", "i1", "o2", "o1"));
  EXPECT_THAT(MessageIds(ListAll({.direction = kIn})), ElementsAre("i1"));
  EXPECT_THAT(MessageIds(ListAll({.status = ess::v1::MESSAGE_STATUS_DELIVERED})),
              ElementsAre("o3", "o2"));
  EXPECT_THAT(
      MessageIds(ListAll({.partner = "prison", .status = ess::v1::MESSAGE_STATUS_DELIVERED})),
      ElementsAre("o2"));
  EXPECT_THAT(MessageIds(ListAll({.event_type = "VisitCancelled"})), ElementsAre("o4"));
  EXPECT_THAT(MessageIds(ListAll({.correlation_id = "C1"})), ElementsAre("i1", "o1"));
  // updated_at within [t0+1, t0+3).
  EXPECT_THAT(MessageIds(ListAll({.since_micros = absl::ToUnixMicros(t0 + absl::Seconds(1)),
                                  .until_micros = absl::ToUnixMicros(t0 + absl::Seconds(3))})),
              ElementsAre("o3", "o2"));
  EXPECT_THAT(MessageIds(ListAll({.partner = "nobody"})), IsEmpty());
}

// received_at is when the message entered the hub. A later write (a retry, the lane's DEAD
// after the last one, a replay's mark) moves updated_at only, so a received window finds an
// outage's messages whenever they last changed, and an updated_at window does not.
TEST_P(ReplayStoreTest, AReceivedWindowFindsMessagesByWhenTheyEnteredTheHub) {
  const absl::Time night = absl::FromUnixSeconds(1'700'000'000);
  auto entered = [](const char* id, absl::Time at,
                    ess::v1::MessageStatus status = ess::v1::MESSAGE_STATUS_FAILED) {
    MessageRecord r = MakeRecord(kOut, "probation", id, id, status);
    *r.mutable_received_at() = Ts(at);
    return r;
  };
  const absl::Time t0 = clock_.Peek();
  Store({entered("before", night - absl::Hours(1))});  // updated t0
  Store({entered("in-1", night + absl::Hours(1))});    // t0+1
  Store({entered("in-2", night + absl::Hours(2))});    // t0+2
  Store({entered("after", night + absl::Hours(9))});   // t0+3
  // in-1 given up on later: DEAD at t0+4. The write's own received_at (its last attempt) does
  // not replace the first one.
  Store({entered("in-1", night + absl::Hours(10), ess::v1::MESSAGE_STATUS_DEAD)});

  const ListQuery outage{
      .partner = "probation",
      .received_since_micros = absl::ToUnixMicros(night),
      .received_until_micros = absl::ToUnixMicros(night + absl::Hours(8)),
  };
  EXPECT_THAT(MessageIds(ListAll(outage)), ElementsAre("in-1", "in-2"));  // newest change first
  ListQuery one_per_page = outage;
  one_per_page.limit = 1;
  EXPECT_THAT(Pages(one_per_page), ElementsAre(ElementsAre("in-1"), ElementsAre("in-2")));
  ListQuery dead = outage;
  dead.status = ess::v1::MESSAGE_STATUS_DEAD;
  EXPECT_THAT(MessageIds(ListAll(dead)), ElementsAre("in-1"));
  EXPECT_THAT(MessageIds(ListAll({.received_since_micros = absl::ToUnixMicros(night)})),
              ElementsAre("in-1", "after", "in-2"));
  // The same outage by last change misses in-1, which changed after it.
  EXPECT_THAT(MessageIds(ListAll({.partner = "probation",
                                  .since_micros = absl::ToUnixMicros(t0 + absl::Seconds(1)),
                                  .until_micros = absl::ToUnixMicros(t0 + absl::Seconds(3))})),
              ElementsAre("in-2"));
  absl::StatusOr<MessageRecord> in1 = store_->GetByKey(Key(kOut, "probation", "in-1"));
  ASSERT_TRUE(in1.ok()) << in1.status();
  EXPECT_EQ(in1->received_at().seconds(), absl::ToUnixSeconds(night + absl::Hours(1)));
  EXPECT_EQ(in1->status(), ess::v1::MESSAGE_STATUS_DEAD);
}

// Where the two sides may have drifted apart: deliveries whose correlation id no inbound event
// confirmed (the trail's confirmed stage: an inbound record PUBLISHED, from any partner).
TEST_P(ReplayStoreTest, UnconfirmedFindsDeliveriesNoInboundEventConfirmed) {
  constexpr auto kDelivered = ess::v1::MESSAGE_STATUS_DELIVERED;
  const absl::Time t0 = clock_.Peek();
  Store({MakeRecord(kOut, "prison", "m-1", "VIS-1", kDelivered)});  // t0, confirmed below
  Store({MakeRecord(kOut, "prison", "m-2", "VIS-2", kDelivered)});  // t0+1
  Store({MakeRecord(kOut, "prison", "m-3", "VIS-3", kDelivered)});  // t0+2, its callback failed
  Store({MakeRecord(kOut, "clinic", "m-4", "VIS-4", kDelivered)});  // t0+3
  Store({MakeRecord(kOut, "prison", "m-5", "VIS-5", kDelivered)});  // t0+4: too recent
  Store({MakeRecord(kIn, "prison", "wh-1", "VIS-1", ess::v1::MESSAGE_STATUS_PUBLISHED),
         MakeRecord(kIn, "prison", "wh-3", "VIS-3", ess::v1::MESSAGE_STATUS_FAILED)});

  ListQuery drift{.direction = kOut,
                  .status = kDelivered,
                  .until_micros = absl::ToUnixMicros(t0 + absl::Seconds(4)),
                  .unconfirmed = true};
  EXPECT_THAT(MessageIds(ListAll(drift)), ElementsAre("m-4", "m-3", "m-2"));
  drift.partner = "prison";
  EXPECT_THAT(MessageIds(ListAll(drift)), ElementsAre("m-3", "m-2"));
  ListQuery one_per_page = drift;
  one_per_page.limit = 1;
  EXPECT_THAT(Pages(one_per_page), ElementsAre(ElementsAre("m-3"), ElementsAre("m-2")));
  // Any status, any direction: an inbound record is its own confirmation or not one at all.
  EXPECT_THAT(MessageIds(ListAll({.partner = "prison", .unconfirmed = true})),
              ElementsAre("wh-3", "m-5", "m-3", "m-2"));

  // VIS-2's confirmation comes, from another partner: the trail counts it, and so does this.
  Store({MakeRecord(kIn, "clinic", "wh-2", "VIS-2", ess::v1::MESSAGE_STATUS_PUBLISHED)});
  EXPECT_THAT(MessageIds(ListAll(drift)), ElementsAre("m-3"));
  drift.unconfirmed = false;
  EXPECT_THAT(MessageIds(ListAll(drift)), ElementsAre("m-3", "m-2", "m-1"));
}

// A visit rescheduled after its confirmation: the partner took the new slot (delivered) and has
// not confirmed it; the confirmation there is of the old slot. Unconfirmed again, in the list
// and in the drift watch's count, until a confirmation written after the lane took the update.
TEST_P(ReplayStoreTest, AConfirmationOfAnOlderUpdateDoesNotConfirmANewerOne) {
  constexpr auto kDelivered = ess::v1::MESSAGE_STATUS_DELIVERED;
  constexpr auto kPublished = ess::v1::MESSAGE_STATUS_PUBLISHED;
  const absl::Time t0 = clock_.Peek();
  Store({MakeRecord(kOut, "prison", "m-1", "VIS-1", kDelivered)});  // taken at t0
  Store({MakeRecord(kIn, "prison", "wh-1", "VIS-1", kPublished)});  // t0+1
  const ListQuery drift{.direction = kOut, .status = kDelivered, .unconfirmed = true};
  auto count = [&] {
    absl::StatusOr<UnconfirmedDeliveries> found = store_->CountUnconfirmed(
        "prison", absl::ToUnixMicros(t0), absl::ToUnixMicros(t0 + absl::Seconds(100)));
    EXPECT_TRUE(found.ok()) << found.status();
    return found.ok() ? found->count : 999;
  };
  EXPECT_THAT(MessageIds(ListAll(drift)), IsEmpty());
  EXPECT_EQ(count(), 0u);

  Store({MakeRecord(kOut, "prison", "m-2", "VIS-1", kDelivered)});  // the new slot, t0+2
  EXPECT_THAT(MessageIds(ListAll(drift)), ElementsAre("m-2"));
  EXPECT_EQ(count(), 1u);

  Store({MakeRecord(kIn, "prison", "wh-2", "VIS-1", kPublished)});  // its confirmation, t0+3
  EXPECT_THAT(MessageIds(ListAll(drift)), IsEmpty());
  EXPECT_EQ(count(), 0u);
}

// The drift watch's count: a partner's deliveries updated within [since, until) that no inbound
// event confirmed, the same rows as the list above, and the oldest of them.
TEST_P(ReplayStoreTest, CountUnconfirmedCountsAPartnersDeliveriesInARange) {
  constexpr auto kDelivered = ess::v1::MESSAGE_STATUS_DELIVERED;
  constexpr auto kPublished = ess::v1::MESSAGE_STATUS_PUBLISHED;
  const absl::Time t0 = clock_.Peek();
  Store({MakeRecord(kOut, "prison", "m-1", "VIS-1", kDelivered)});  // t0
  Store({MakeRecord(kOut, "prison", "m-2", "VIS-2", kDelivered)});  // t0+1
  Store({MakeRecord(kOut, "prison", "m-3", "VIS-3", kDelivered)});  // t0+2, confirmed below
  Store({MakeRecord(kOut, "prison", "m-4", "VIS-4", ess::v1::MESSAGE_STATUS_FAILED)});   // t0+3
  Store({MakeRecord(kOut, "prison", "m-5", "VIS-5", ess::v1::MESSAGE_STATUS_DRY_RUN)});  // t0+4
  Store({MakeRecord(kOut, "clinic", "m-6", "VIS-6", kDelivered)});                       // t0+5
  Store({MakeRecord(kIn, "prison", "wh-7", "VIS-7", kPublished)});  // t0+6: not a delivery
  Store({MakeRecord(kOut, "prison", "m-8", "VIS-8", kDelivered)});  // t0+7
  Store({MakeRecord(kIn, "clinic", "wh-3", "VIS-3", kPublished),
         MakeRecord(kIn, "prison", "wh-2", "VIS-2", ess::v1::MESSAGE_STATUS_FAILED)});  // t0+8
  auto count = [&](const std::string& partner, int since, int until) {
    absl::StatusOr<UnconfirmedDeliveries> found =
        store_->CountUnconfirmed(partner, absl::ToUnixMicros(t0 + absl::Seconds(since)),
                                 absl::ToUnixMicros(t0 + absl::Seconds(until)));
    EXPECT_TRUE(found.ok()) << found.status();
    return found.ok() ? *found : UnconfirmedDeliveries{.count = 999};
  };
  auto seconds_after_t0 = [&](const UnconfirmedDeliveries& found) {
    return found.oldest_micros.has_value()
               ? absl::ToInt64Seconds(absl::FromUnixMicros(*found.oldest_micros) - t0)
               : -1;
  };

  // [t0+1, t0+7): m-2 (m-3 is confirmed, m-1 and m-8 are outside).
  UnconfirmedDeliveries found = count("prison", 1, 7);
  EXPECT_EQ(found.count, 1u);
  EXPECT_EQ(seconds_after_t0(found), 1);
  found = count("prison", 0, 8);  // and m-1, m-8
  EXPECT_EQ(found.count, 3u);
  EXPECT_EQ(seconds_after_t0(found), 0);
  EXPECT_THAT(MessageIds(ListAll({.partner = "prison",
                                  .direction = kOut,
                                  .status = kDelivered,
                                  .since_micros = absl::ToUnixMicros(t0),
                                  .until_micros = absl::ToUnixMicros(t0 + absl::Seconds(8)),
                                  .unconfirmed = true})),
              ElementsAre("m-8", "m-2", "m-1"));
  found = count("clinic", 0, 100);
  EXPECT_EQ(found.count, 1u);
  EXPECT_EQ(seconds_after_t0(found), 5);
  found = count("nobody", 0, 100);
  EXPECT_EQ(found.count, 0u);
  EXPECT_EQ(seconds_after_t0(found), -1);

  Store({MakeRecord(kIn, "prison", "wh-2b", "VIS-2", kPublished)});
  found = count("prison", 1, 7);
  EXPECT_EQ(found.count, 0u);
  EXPECT_FALSE(found.oldest_micros.has_value());
}

// Large bodies end a page early (it always holds one record), and the pages still cover every
// record once.
TEST_P(ReplayStoreTest, APageEndsBeforeItsBodiesPassMaxBytes) {
  std::vector<MessageRecord> batch;
  for (int i = 0; i < 7; ++i) {
    MessageRecord r = Outbound("prison", absl::StrCat("m-", i));
    r.set_payload(std::string(600, 'p'));
    r.set_rendered(std::string(i == 3 ? 5000 : 400, 'r'));  // m-3 alone passes the cap
    batch.push_back(std::move(r));
  }
  Store(std::move(batch));
  std::vector<std::vector<std::string>> pages =
      Pages({.partner = "prison", .limit = 100, .max_bytes = 2500});
  // 1,000 bytes a record: two fit in 2,500; m-3 (5,600) goes alone.
  EXPECT_THAT(pages, ElementsAre(ElementsAre("m-6", "m-5"), ElementsAre("m-4"), ElementsAre("m-3"),
                                 ElementsAre("m-2", "m-1"), ElementsAre("m-0")));
}

TEST_P(ReplayStoreTest, ListPagesThroughEveryRecordExactlyOnce) {
  // 3 batches of 5 (records in a batch share updated_at: the row id breaks the tie).
  std::vector<std::string> expected;  // Newest first.
  for (int b = 0; b < 3; ++b) {
    std::vector<MessageRecord> batch;
    for (int i = 0; i < 5; ++i) batch.push_back(Outbound("prison", absl::StrCat("m", b, "-", i)));
    Store(std::move(batch));
  }
  for (int b = 2; b >= 0; --b) {
    for (int i = 4; i >= 0; --i) expected.push_back(absl::StrCat("m", b, "-", i));
  }

  std::vector<std::vector<std::string>> pages = Pages({.partner = "prison", .limit = 4});
  ASSERT_EQ(pages.size(), 4u);
  EXPECT_THAT(pages[0], ElementsAre("m2-4", "m2-3", "m2-2", "m2-1"));
  EXPECT_THAT(pages[1], ElementsAre("m2-0", "m1-4", "m1-3", "m1-2"));
  EXPECT_THAT(pages[2], ElementsAre("m1-1", "m1-0", "m0-4", "m0-3"));
  EXPECT_THAT(pages[3], ElementsAre("m0-2", "m0-1", "m0-0"));
  std::vector<std::string> all;
  for (const auto& p : pages) all.insert(all.end(), p.begin(), p.end());
  EXPECT_THAT(all, ElementsAreArray(expected));

  // A page that ends exactly at the last record has no next cursor.
  absl::StatusOr<ListPage> exact = store_->List({.limit = 15});
  ASSERT_TRUE(exact.ok());
  EXPECT_EQ(exact->records.size(), 15u);
  EXPECT_FALSE(exact->next.has_value());

  // Oldest first: the same records in the reverse order, in the order they were written.
  pages = Pages({.partner = "prison", .limit = 4, .oldest_first = true});
  ASSERT_EQ(pages.size(), 4u);
  EXPECT_THAT(pages[0], ElementsAre("m0-0", "m0-1", "m0-2", "m0-3"));
  EXPECT_THAT(pages[3], ElementsAre("m2-2", "m2-3", "m2-4"));
  all.clear();
  for (const auto& p : pages) all.insert(all.end(), p.begin(), p.end());
  EXPECT_THAT(all, ElementsAreArray(expected.rbegin(), expected.rend()));
}

TEST_P(ReplayStoreTest, APartnersPagesMergeEveryStatusInOrder) {
  // A partner's List without a status reads each status apart and merges them: pages must
  // still be newest first across statuses, with ties (one batch, one updated_at) broken by
  // row id, and other partners and directions left out.
  constexpr ess::v1::MessageStatus kStatuses[] = {
      ess::v1::MESSAGE_STATUS_RECEIVED, ess::v1::MESSAGE_STATUS_DELIVERED,
      ess::v1::MESSAGE_STATUS_DRY_RUN,  ess::v1::MESSAGE_STATUS_FAILED,
      ess::v1::MESSAGE_STATUS_DEAD,     ess::v1::MESSAGE_STATUS_PUBLISHED};
  std::vector<std::string> expected;  // Newest first.
  const absl::Time t0 = clock_.Peek();
  for (int b = 0; b < 4; ++b) {
    std::vector<MessageRecord> batch;
    for (int i = 0; i < 6; ++i) {
      const std::string id = absl::StrCat("m", b, "-", i);
      batch.push_back(MakeRecord(kOut, "prison", id, "C", kStatuses[(b + i) % 6]));
      batch.push_back(MakeRecord(kOut, "clinic", id, "C", kStatuses[i]));
      batch.push_back(MakeRecord(kIn, "prison", id, "C", ess::v1::MESSAGE_STATUS_PUBLISHED));
    }
    Store(std::move(batch));  // updated_at t0 + b seconds
  }
  for (int b = 3; b >= 0; --b) {
    for (int i = 5; i >= 0; --i) expected.push_back(absl::StrCat("m", b, "-", i));
  }

  std::vector<std::string> paged;
  ListQuery query{.partner = "prison", .direction = kOut, .limit = 5};
  int pages = 0;
  while (pages < 10) {
    ++pages;
    absl::StatusOr<ListPage> page = store_->List(query);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const MessageRecord& r : page->records) {
      EXPECT_EQ(r.partner(), "prison");
      EXPECT_EQ(r.direction(), kOut);
      paged.push_back(r.message_id());
    }
    if (!page->next.has_value()) break;
    query.after = page->next;
  }
  EXPECT_EQ(pages, 5);  // 24 records in pages of 5.
  EXPECT_THAT(paged, ElementsAreArray(expected));

  // Oldest first through the same merge.
  std::vector<std::vector<std::string>> oldest_first =
      Pages({.partner = "prison", .direction = kOut, .limit = 5, .oldest_first = true});
  ASSERT_EQ(oldest_first.size(), 5u);
  paged.clear();
  for (const auto& p : oldest_first) paged.insert(paged.end(), p.begin(), p.end());
  EXPECT_THAT(paged, ElementsAreArray(expected.rbegin(), expected.rend()));

  // Both directions of the partner, and a time window, through the same merge.
  EXPECT_EQ(ListAll({.partner = "prison"}).size(), 48u);
  EXPECT_THAT(MessageIds(ListAll({.partner = "prison",
                                  .direction = kOut,
                                  .since_micros = absl::ToUnixMicros(t0 + absl::Seconds(1)),
                                  .until_micros = absl::ToUnixMicros(t0 + absl::Seconds(2))})),
              ElementsAre("m1-5", "m1-4", "m1-3", "m1-2", "m1-1", "m1-0"));
}

TEST_P(ReplayStoreTest, StatsCountsPerPartnerDirectionAndStatus) {
  auto with_received = [](MessageRecord r, int64_t seconds) {
    *r.mutable_received_at() = Ts(absl::FromUnixSeconds(seconds));
    return r;
  };
  Store({
      with_received(Outbound("prison", "d1", ess::v1::MESSAGE_STATUS_DELIVERED), 10),
      with_received(Outbound("prison", "d2", ess::v1::MESSAGE_STATUS_DELIVERED), 11),
      with_received(Outbound("prison", "d3", ess::v1::MESSAGE_STATUS_DELIVERED), 12),
      with_received(Outbound("prison", "f1", ess::v1::MESSAGE_STATUS_FAILED), 40),
      with_received(Outbound("prison", "x1", ess::v1::MESSAGE_STATUS_DEAD), 30),
      with_received(Outbound("prison", "r1", ess::v1::MESSAGE_STATUS_RECEIVED), 50),
      with_received(Outbound("prison", "y1", ess::v1::MESSAGE_STATUS_DRY_RUN), 5),
      with_received(MakeRecord(kIn, "prison", "i1", "C", ess::v1::MESSAGE_STATUS_PUBLISHED), 60),
      with_received(MakeRecord(kIn, "prison", "i2", "C", ess::v1::MESSAGE_STATUS_PUBLISHED), 61),
      with_received(Outbound("clinic", "y2", ess::v1::MESSAGE_STATUS_DRY_RUN), 70),
  });

  absl::StatusOr<std::vector<ess::v1::PartnerStats>> stats = store_->Stats("");
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_EQ(stats->size(), 3u);

  const ess::v1::PartnerStats& clinic = (*stats)[0];
  EXPECT_EQ(clinic.partner(), "clinic");
  EXPECT_EQ(clinic.direction(), kOut);
  EXPECT_EQ(clinic.dry_run(), 1u);
  EXPECT_FALSE(clinic.has_oldest_pending());  // Dry runs are not pending.
  EXPECT_EQ(clinic.success_rate(), 0.0);      // Nothing was attempted.

  const ess::v1::PartnerStats& out = (*stats)[1];
  EXPECT_EQ(out.partner(), "prison");
  EXPECT_EQ(out.direction(), kOut);
  EXPECT_EQ(out.received(), 1u);
  EXPECT_EQ(out.delivered(), 3u);
  EXPECT_EQ(out.dry_run(), 1u);
  EXPECT_EQ(out.failed(), 1u);
  EXPECT_EQ(out.dead(), 1u);
  EXPECT_EQ(out.published(), 0u);
  EXPECT_EQ(out.oldest_pending().seconds(), 30);  // The dead one; delivered/dry-run excluded.
  EXPECT_DOUBLE_EQ(out.success_rate(), 3.0 / 5.0);

  const ess::v1::PartnerStats& in = (*stats)[2];
  EXPECT_EQ(in.partner(), "prison");
  EXPECT_EQ(in.direction(), kIn);
  EXPECT_EQ(in.published(), 2u);
  EXPECT_FALSE(in.has_oldest_pending());
  EXPECT_EQ(in.success_rate(), 0.0);  // Outbound only.

  absl::StatusOr<std::vector<ess::v1::PartnerStats>> clinic_only = store_->Stats("clinic");
  ASSERT_TRUE(clinic_only.ok());
  ASSERT_EQ(clinic_only->size(), 1u);
  EXPECT_EQ((*clinic_only)[0].partner(), "clinic");
}

TEST_P(ReplayStoreTest, RecordsSurviveReopen) {
  Store({Outbound("prison", "m-1"), Outbound("prison", "m-2")});
  Reopen();
  EXPECT_THAT(MessageIds(ListAll()), ElementsAre("m-2", "m-1"));
}

TEST_F(SqliteReplayStoreTest, TheSchemaIsVersioned) {
  EXPECT_EQ(CloseAndQuery("PRAGMA user_version"), SqliteReplayStore::kSchemaVersion);
}

TEST_F(SqliteReplayStoreTest, AVersion2DatabaseLosesThePartnerUpdatedIndexAndKeepsItsRecords) {
  Store({Outbound("prison", "m-1")});
  // What schema version 2 left: its (partner, updated_at) index, no maybe_delivered_as.
  ASSERT_NO_FATAL_FAILURE(CloseAndRun(
      {"CREATE INDEX records_by_partner_updated ON records (partner, updated_at)",
       "ALTER TABLE records DROP COLUMN maybe_delivered_as", "PRAGMA user_version = 2"}));
  Reopen();
  EXPECT_THAT(MessageIds(ListAll({.partner = "prison"})), ElementsAre("m-1"));
  EXPECT_EQ(
      CloseAndQuery("SELECT count(*) FROM sqlite_master WHERE name = 'records_by_partner_updated'"),
      0);
  EXPECT_EQ(CloseAndQuery("PRAGMA user_version"), SqliteReplayStore::kSchemaVersion);
}

TEST_F(SqliteReplayStoreTest, AVersion3DatabaseKeepsItsRecordsAndStoresWhereAPushMayHaveLanded) {
  Store({Outbound("prison", "m-1", ess::v1::MESSAGE_STATUS_DEAD)});
  // What schema version 3 left: no maybe_delivered_as.
  ASSERT_NO_FATAL_FAILURE(CloseAndRun(
      {"ALTER TABLE records DROP COLUMN maybe_delivered_as", "PRAGMA user_version = 3"}));
  Reopen();
  absl::StatusOr<MessageRecord> old = store_->GetByKey(Key(kOut, "prison", "m-1"));
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->status(), ess::v1::MESSAGE_STATUS_DEAD);
  EXPECT_EQ(old->maybe_delivered_as(), "");

  MessageRecord failed = Outbound("prison", "m-2", ess::v1::MESSAGE_STATUS_FAILED);
  failed.set_maybe_delivered_as("/upload/visits-1.csv");
  Store({failed});
  EXPECT_EQ(store_->GetByKey(Key(kOut, "prison", "m-2"))->maybe_delivered_as(),
            "/upload/visits-1.csv");
  EXPECT_EQ(CloseAndQuery("PRAGMA user_version"), 4);
}

TEST_F(SqliteReplayStoreTest, NewerSchemaIsRefused) {
  ASSERT_NO_FATAL_FAILURE(CloseAndRun({"PRAGMA user_version = 99"}));
  absl::StatusOr<std::unique_ptr<SqliteReplayStore>> store = SqliteReplayStore::Open(path());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("schema version 99 is newer"));
}

TEST(SqliteReplayStoreOpenTest, EmptyPathIsInvalid) {
  EXPECT_EQ(SqliteReplayStore::Open("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(ReplayStoreTest, ConcurrentWritersAndReadersSeeEveryRecord) {
  constexpr int kThreads = 4;
  constexpr int kBatches = 25;
  constexpr int kPerBatch = 20;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int b = 0; b < kBatches; ++b) {
        google::protobuf::RepeatedPtrField<MessageRecord> batch;
        for (int i = 0; i < kPerBatch; ++i) {
          *batch.Add() = Outbound(absl::StrCat("p", t), absl::StrCat("m", b, "-", i));
        }
        if (!store_->Record(batch).ok()) ++failures;
        if (!store_->Stats("").ok()) ++failures;
        if (!store_->List({.partner = absl::StrCat("p", t), .limit = 10}).ok()) ++failures;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  absl::StatusOr<std::vector<ess::v1::PartnerStats>> stats = store_->Stats("");
  ASSERT_TRUE(stats.ok());
  ASSERT_EQ(stats->size(), static_cast<size_t>(kThreads));
  for (const ess::v1::PartnerStats& p : *stats) EXPECT_EQ(p.received(), kBatches * kPerBatch);
}

// What only PostgreSQL shows: its schema's version, a server that ends connections, and
// several replay_svc replicas on one database.
class PostgresReplayStoreTest : public StoreTest {
 protected:
  PostgresReplayStoreTest() : StoreTest(Backend::kPostgres) {}
};

TEST_F(PostgresReplayStoreTest, NewerSchemaIsRefused) {
  store_.reset();
  ASSERT_TRUE(db_.Exec("UPDATE ess_replay_schema SET version = 99").ok());
  absl::StatusOr<std::unique_ptr<PostgresReplayStore>> store =
      PostgresReplayStore::Open(db_.location());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("schema version 99 is newer"));
}

// PostgreSQL's text cannot hold a NUL character: such a record is refused, named, and nothing
// of its batch is stored (SQLite would store it).
TEST_F(PostgresReplayStoreTest, TextWithANulCharacterIsRefusedByName) {
  MessageRecord bad = Outbound("prison", "m-2", ess::v1::MESSAGE_STATUS_FAILED);
  bad.set_error(std::string("HTTP 500: a\0b", 13));
  absl::StatusOr<uint32_t> stored = store_->Record(Batch({Outbound("prison", "m-1"), bad}));
  EXPECT_EQ(stored.status().code(), absl::StatusCode::kInvalidArgument) << stored.status();
  EXPECT_THAT(std::string(stored.status().message()), HasSubstr("records[1]: postgres: a NUL"));
  EXPECT_THAT(MessageIds(ListAll()), IsEmpty());
}

TEST(PostgresReplayStoreOpenTest, AnEmptyConninfoIsInvalidAndAServerNotThereUnavailable) {
  EXPECT_EQ(PostgresReplayStore::Open("").status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::unique_ptr<PostgresReplayStore>> store =
      PostgresReplayStore::Open(absl::StrCat("host=127.0.0.1 port=", testing::PickFreePort(),
                                             " dbname=ess connect_timeout=5"));
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("postgres: cannot connect"));
}

// Two replicas, two threads each, claim the same ids in different orders at once: every id is
// claimed exactly once, the others are told it is in progress. Half the ids are new (the
// replicas race to insert them); half were received an hour ago by a publisher that crashed, so
// their lease ran out (the replicas race to take the stored row over).
TEST_F(PostgresReplayStoreTest, ReplicasClaimEachIdOnce) {
  const absl::Time t0 = clock_.Peek();
  std::atomic<bool> an_hour_later{false};
  auto clock = [&] { return an_hour_later ? t0 + absl::Hours(1) : t0; };
  absl::StatusOr<std::unique_ptr<ReplayStore>> a = db_.Open(clock);
  absl::StatusOr<std::unique_ptr<ReplayStore>> b = db_.Open(clock);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  constexpr int kIds = 100;
  constexpr int kBatch = 10;
  std::vector<std::string> ids;
  std::vector<MessageRecord> crashed;
  for (int i = 0; i < kIds / 2; ++i) {
    ids.push_back(absl::StrCat("new-", i));
    ids.push_back(absl::StrCat("old-", i));
    crashed.push_back(MakeRecord(kIn, "prison", absl::StrCat("old-", i), "VIS-1",
                                 ess::v1::MESSAGE_STATUS_RECEIVED));
  }
  ASSERT_TRUE((*a)->Record(Batch(crashed)).ok());
  an_hour_later = true;

  absl::Mutex mu;
  std::map<std::string, int> claimed;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      ReplayStore& store = t < 2 ? **a : **b;
      std::vector<std::string> order = ids;
      std::shuffle(order.begin(), order.end(), std::mt19937(t));
      for (int first = 0; first < kIds; first += kBatch) {
        std::vector<ess::v1::Claim> batch;
        for (int i = first; i < first + kBatch; ++i) {
          batch.push_back(MakeClaim(order[i], 600, 600'000));  // a 10-minute lease
        }
        absl::StatusOr<std::vector<ess::v1::ClaimOutcome>> out = store.Claim(Claims(batch));
        ASSERT_TRUE(out.ok()) << out.status();
        absl::MutexLock lock(&mu);
        for (int i = 0; i < kBatch; ++i) {
          if ((*out)[i] == ess::v1::CLAIM_OUTCOME_CLAIMED) ++claimed[order[first + i]];
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(claimed.size(), static_cast<size_t>(kIds));
  for (const auto& [id, n] : claimed) EXPECT_EQ(n, 1) << id;
  absl::StatusOr<std::vector<ess::v1::PartnerStats>> stats = (*a)->Stats("");
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_EQ(stats->size(), 1u);
  EXPECT_EQ((*stats)[0].received(), static_cast<uint64_t>(kIds));
}

// The server ends the store's connections (a restart, a failover): at most the next call fails,
// UNAVAILABLE, and the calls after it run on new connections.
TEST_F(PostgresReplayStoreTest, ConnectionsTheServerEndedAreReplaced) {
  Store({Outbound("prison", "m-1")});
  // Several connections in the pool: reads from threads at once.
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&] { EXPECT_TRUE(store_->Stats("").ok()); });
  }
  for (std::thread& t : readers) t.join();
  absl::StatusOr<pg::Connection> admin = pg::Connection::Open(db_.location());
  ASSERT_TRUE(admin.ok()) << admin.status();
  absl::StatusOr<pg::Result> ended = admin->Query(
      "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM "
      "pg_stat_activity WHERE application_name = current_setting('application_name') "
      "AND pid <> pg_backend_pid()");
  ASSERT_TRUE(ended.ok()) << ended.status();
  ASSERT_GE(ended->Int64(0, 0), 1) << "the store's pooled connections were ended";
  int failed = 0;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<MessageRecord> got = store_->GetByKey(Key(kOut, "prison", "m-1"));
    if (got.ok()) continue;
    ++failed;
    EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  }
  EXPECT_LE(failed, 1);
  Store({Outbound("prison", "m-2")});
  EXPECT_THAT(MessageIds(ListAll()), ElementsAre("m-2", "m-1"));
}

}  // namespace
}  // namespace ess::replay
