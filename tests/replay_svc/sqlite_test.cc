// Tests of common/sqlite.h on real files.
#include "common/sqlite.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/replay_svc/test_util.h"

namespace ess::sqlite {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

class SqliteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<Database> db = Database::Open(dir_.File("t.db"));
    ASSERT_TRUE(db.ok()) << db.status();
    db_.emplace(*std::move(db));
    ASSERT_TRUE(db_->Exec("CREATE TABLE t (k INTEGER PRIMARY KEY, s TEXT NOT NULL, b BLOB "
                          "NOT NULL, d REAL)")
                    .ok());
  }

  int64_t Count() {
    absl::StatusOr<Statement> count = db_->Prepare("SELECT COUNT(*) FROM t");
    EXPECT_TRUE(count.ok()) << count.status();
    absl::StatusOr<bool> row = count->Step();
    EXPECT_TRUE(row.ok() && *row);
    return count->ColumnInt64(0);
  }

  replay::testing::TempDir dir_;
  std::optional<Database> db_;
};

TEST_F(SqliteTest, OpensInWalMode) {
  absl::StatusOr<Statement> mode = db_->Prepare("PRAGMA journal_mode");
  ASSERT_TRUE(mode.ok()) << mode.status();
  ASSERT_EQ(mode->Step().value(), true);
  EXPECT_EQ(mode->ColumnText(0), "wal");
  absl::StatusOr<Statement> sync = db_->Prepare("PRAGMA synchronous");
  ASSERT_TRUE(sync.ok());
  ASSERT_EQ(sync->Step().value(), true);
  EXPECT_EQ(sync->ColumnInt64(0), 1);  // NORMAL
}

TEST_F(SqliteTest, FullSyncMakesEveryCommitWaitForTheDisk) {
  absl::StatusOr<Database> full = Database::Open(dir_.File("full.db"), {.full_sync = true});
  ASSERT_TRUE(full.ok()) << full.status();
  absl::StatusOr<Statement> sync = full->Prepare("PRAGMA synchronous");
  ASSERT_TRUE(sync.ok());
  ASSERT_EQ(sync->Step().value(), true);
  EXPECT_EQ(sync->ColumnInt64(0), 2);  // FULL
}

TEST_F(SqliteTest, BindsAndReadsEveryType) {
  absl::StatusOr<Statement> insert = db_->Prepare("INSERT INTO t (k, s, b, d) VALUES (?, ?, ?, ?)");
  ASSERT_TRUE(insert.ok()) << insert.status();
  const std::string blob("a\0b", 3);
  ASSERT_TRUE(insert->Bind(1, 7).ok());
  ASSERT_TRUE(insert->Bind(2, std::string("text")).ok());
  ASSERT_TRUE(insert->BindBlob(3, blob).ok());
  ASSERT_TRUE(insert->Bind(4, 2.5).ok());
  ASSERT_TRUE(insert->Run().ok());
  EXPECT_EQ(db_->LastInsertRowId(), 7);
  EXPECT_EQ(db_->Changes(), 1);

  // Empty text and blob stay '' and x'' (the columns are NOT NULL); NULL is explicit.
  ASSERT_TRUE(insert->Bind(1, int64_t{8}).ok());
  ASSERT_TRUE(insert->Bind(2, "").ok());
  ASSERT_TRUE(insert->BindBlob(3, "").ok());
  ASSERT_TRUE(insert->BindNull(4).ok());
  ASSERT_TRUE(insert->Run().ok());

  absl::StatusOr<Statement> select = db_->Prepare("SELECT k, s, b, d FROM t ORDER BY k");
  ASSERT_TRUE(select.ok());
  ASSERT_EQ(select->Step().value(), true);
  EXPECT_EQ(select->ColumnCount(), 4);
  EXPECT_EQ(select->ColumnInt64(0), 7);
  EXPECT_EQ(select->ColumnText(1), "text");
  EXPECT_EQ(select->ColumnBlob(2), blob);
  EXPECT_EQ(select->ColumnDouble(3), 2.5);
  ASSERT_EQ(select->Step().value(), true);
  EXPECT_EQ(select->ColumnText(1), "");
  EXPECT_FALSE(select->ColumnIsNull(1));
  EXPECT_EQ(select->ColumnBlob(2), "");
  EXPECT_FALSE(select->ColumnIsNull(2));
  EXPECT_TRUE(select->ColumnIsNull(3));
  EXPECT_EQ(select->Step().value(), false);
}

TEST_F(SqliteTest, ResetClearsBindingsForReuse) {
  absl::StatusOr<Statement> insert = db_->Prepare("INSERT INTO t (k, s, b) VALUES (?, ?, ?)");
  ASSERT_TRUE(insert.ok());
  for (int i = 1; i <= 3; ++i) {
    ASSERT_TRUE(insert->Bind(1, i).ok());
    ASSERT_TRUE(insert->Bind(2, "x").ok());
    ASSERT_TRUE(insert->BindBlob(3, "y").ok());
    ASSERT_TRUE(insert->Run().ok());
  }
  EXPECT_EQ(Count(), 3);
  // Nothing bound after Run(): s is NULL, which the NOT NULL constraint rejects.
  ASSERT_TRUE(insert->Bind(1, 4).ok());
  absl::Status s = insert->Run();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("SQLITE_CONSTRAINT"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("NOT NULL constraint failed: t.s"));
}

TEST_F(SqliteTest, ErrorsNameTheSqliteErrorWithSpecificCodes) {
  absl::StatusOr<Statement> bad = db_->Prepare("SELEC 1");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(bad.status().message()), StartsWith("sqlite: SQLITE_ERROR (1): "));
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("[in: SELEC 1]"));

  ASSERT_TRUE(db_->Exec("INSERT INTO t (k, s, b) VALUES (1, 'a', x'')").ok());
  absl::Status duplicate = db_->Exec("INSERT INTO t (k, s, b) VALUES (1, 'a', x'')");
  EXPECT_EQ(duplicate.code(), absl::StatusCode::kAlreadyExists) << duplicate;
  EXPECT_THAT(std::string(duplicate.message()), HasSubstr("SQLITE_CONSTRAINT (1555)"));

  absl::StatusOr<Statement> two = db_->Prepare("SELECT 1; SELECT 2");
  EXPECT_EQ(two.status().code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<Statement> one = db_->Prepare("SELECT ?");
  ASSERT_TRUE(one.ok());
  absl::Status range = one->Bind(2, 1);
  EXPECT_EQ(range.code(), absl::StatusCode::kOutOfRange) << range;
  EXPECT_THAT(std::string(range.message()), StartsWith("parameter 2: sqlite: SQLITE_RANGE"));
}

TEST(SqliteOpenTest, MissingFolderIsNotFound) {
  replay::testing::TempDir dir;
  absl::StatusOr<Database> db = Database::Open(dir.File("no/such/dir/x.db"));
  EXPECT_EQ(db.status().code(), absl::StatusCode::kNotFound) << db.status();
  EXPECT_THAT(std::string(db.status().message()), HasSubstr("SQLITE_CANTOPEN"));
  EXPECT_THAT(std::string(db.status().message()), HasSubstr("no/such/dir/x.db"));
}

TEST(SqliteOpenTest, WithoutCreateAMissingFileIsNotFound) {
  replay::testing::TempDir dir;
  absl::StatusOr<Database> db = Database::Open(dir.File("x.db"), {.create = false});
  EXPECT_EQ(db.status().code(), absl::StatusCode::kNotFound) << db.status();
}

TEST(SqliteOpenTest, ReadOnlyChangesNothingOfTheFile) {
  replay::testing::TempDir dir;
  {
    absl::StatusOr<Database> db = Database::Open(dir.File("x.db"));
    ASSERT_TRUE(db.ok()) << db.status();
    ASSERT_TRUE(db->Exec("PRAGMA journal_mode=DELETE; CREATE TABLE t (k INTEGER)").ok());
  }
  absl::StatusOr<Database> db = Database::Open(dir.File("x.db"), {.read_only = true});
  ASSERT_TRUE(db.ok()) << db.status();
  absl::StatusOr<Statement> mode = db->Prepare("PRAGMA journal_mode");
  ASSERT_TRUE(mode.ok() && mode->Step().value_or(false));
  EXPECT_EQ(mode->ColumnText(0), "delete");  // not switched to WAL
  EXPECT_EQ(db->Exec("INSERT INTO t (k) VALUES (1)").code(), absl::StatusCode::kPermissionDenied)
      << "a write on a read-only connection";
  EXPECT_EQ(Database::Open(dir.File("y.db"), {.read_only = true}).status().code(),
            absl::StatusCode::kNotFound)
      << "a read-only open creates nothing";
}

TEST(SqliteOpenTest, InMemoryDatabaseIsRefusedForWantOfWal) {
  absl::StatusOr<Database> db = Database::Open(":memory:");
  EXPECT_EQ(db.status().code(), absl::StatusCode::kFailedPrecondition) << db.status();
  EXPECT_THAT(std::string(db.status().message()), HasSubstr("WAL"));
}

TEST_F(SqliteTest, TransactionRollsBackUnlessCommitted) {
  {
    absl::StatusOr<Transaction> tx = Transaction::Begin(*db_);
    ASSERT_TRUE(tx.ok()) << tx.status();
    EXPECT_FALSE(db_->AutoCommit());
    ASSERT_TRUE(db_->Exec("INSERT INTO t (k, s, b) VALUES (1, 'a', x'')").ok());
  }
  EXPECT_TRUE(db_->AutoCommit());
  EXPECT_EQ(Count(), 0);
  {
    absl::StatusOr<Transaction> tx = Transaction::Begin(*db_, Transaction::Mode::kDeferred);
    ASSERT_TRUE(tx.ok());
    ASSERT_TRUE(db_->Exec("INSERT INTO t (k, s, b) VALUES (1, 'a', x'')").ok());
    ASSERT_TRUE(tx->Commit().ok());
    EXPECT_EQ(tx->Commit().code(), absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_EQ(Count(), 1);
}

TEST_F(SqliteTest, QueryOnlyConnectionSeesCommittedWritesAndRejectsWrites) {
  absl::StatusOr<Database> reader = Database::Open(dir_.File("t.db"), {.query_only = true});
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE(db_->Exec("INSERT INTO t (k, s, b) VALUES (1, 'a', x'')").ok());
  absl::StatusOr<Statement> count = reader->Prepare("SELECT COUNT(*) FROM t");
  ASSERT_TRUE(count.ok());
  ASSERT_EQ(count->Step().value(), true);
  EXPECT_EQ(count->ColumnInt64(0), 1);
  count->Reset();
  absl::Status write = reader->Exec("DELETE FROM t");
  EXPECT_EQ(write.code(), absl::StatusCode::kPermissionDenied) << write;
}

TEST_F(SqliteTest, WriterBlockedPastTheBusyTimeoutIsUnavailable) {
  absl::StatusOr<Database> other = Database::Open(dir_.File("t.db"), {.busy_timeout_ms = 1});
  ASSERT_TRUE(other.ok());
  absl::StatusOr<Transaction> holding = Transaction::Begin(*db_);
  ASSERT_TRUE(holding.ok());
  absl::StatusOr<Transaction> blocked = Transaction::Begin(*other);
  EXPECT_EQ(blocked.status().code(), absl::StatusCode::kUnavailable) << blocked.status();
  EXPECT_THAT(std::string(blocked.status().message()), HasSubstr("SQLITE_BUSY"));
}

}  // namespace
}  // namespace ess::sqlite
