// common/postgres on the PostgreSQL server that ./test.sh starts (ESS_POSTGRES_DSN): parameters
// and results, bytes that text cannot carry, errors by SQLSTATE, and a connection the server
// ends.
#include "common/postgres.h"

#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ess::pg {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class PostgresTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* dsn = std::getenv("ESS_POSTGRES_DSN");
    ASSERT_NE(dsn, nullptr) << "ESS_POSTGRES_DSN is not set: run the tests through ./test.sh, "
                               "which starts the PostgreSQL they need";
    std::random_device random;
    schema_ = absl::StrFormat("ess_pg_test_%08x", random());
    dsn_ =
        absl::StrCat(dsn, " application_name=", schema_, " options='-c search_path=", schema_, "'");
    absl::StatusOr<Connection> db = Connection::Open(dsn);
    ASSERT_TRUE(db.ok()) << db.status();
    ASSERT_TRUE(db->Exec(absl::StrCat("CREATE SCHEMA ", schema_)).ok());
    absl::StatusOr<Connection> c = Connection::Open(dsn_);
    ASSERT_TRUE(c.ok()) << c.status();
    db_.emplace(*std::move(c));
    ASSERT_TRUE(db_->Exec("CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT NOT NULL, "
                          "body BYTEA NOT NULL, ok BOOLEAN NOT NULL)")
                    .ok());
  }
  void TearDown() override {
    db_.reset();
    absl::StatusOr<Connection> db = Connection::Open(std::getenv("ESS_POSTGRES_DSN"));
    if (db.ok()) db->Exec(absl::StrCat("DROP SCHEMA ", schema_, " CASCADE")).IgnoreError();
  }

  std::string schema_, dsn_;
  std::optional<Connection> db_;
};

TEST_F(PostgresTest, ParametersAndResultsKeepEveryByteAndType) {
  std::string every_byte;
  for (int b = 0; b < 256; ++b) every_byte.push_back(static_cast<char>(b));
  absl::StatusOr<Result> inserted =
      db_->Query("INSERT INTO t (id, name, body, ok) VALUES ($1, $2, $3, $4), ($5, $6, $7, $8)",
                 {int64_t{-9'000'000'000}, absl::string_view("Ünïcode 'quoted' $1"),
                  Bytes{every_byte}, true, int64_t{7}, absl::string_view(""), Bytes{""}, false});
  ASSERT_TRUE(inserted.ok()) << inserted.status();
  EXPECT_EQ(inserted->affected(), 2);
  absl::StatusOr<Result> rows = db_->Query("SELECT id, name, body, ok FROM t ORDER BY id");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->rows(), 2);
  EXPECT_EQ(rows->Int64(0, 0), -9'000'000'000);
  EXPECT_EQ(rows->Text(0, 1), "Ünïcode 'quoted' $1");
  EXPECT_EQ(rows->Bytes(0, 2), every_byte);
  EXPECT_TRUE(rows->Bool(0, 3));
  EXPECT_EQ(rows->Int64(1, 0), 7);
  EXPECT_EQ(rows->Text(1, 1), "");
  EXPECT_EQ(rows->Bytes(1, 2), "");
  EXPECT_FALSE(rows->Bool(1, 3));
  absl::StatusOr<Result> none = db_->Query("SELECT max(id) FROM t WHERE id > $1", {int64_t{100}});
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->IsNull(0, 0));
}

TEST_F(PostgresTest, ErrorsCarryTheirSqlstateAndCode) {
  ASSERT_TRUE(db_->Query("INSERT INTO t VALUES (1, 'a', '', true)").ok());
  absl::StatusOr<Result> again = db_->Query("INSERT INTO t VALUES (1, 'b', '', true)");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(again.status().message(), HasSubstr("postgres: 23505: ERROR:  duplicate key"));
  EXPECT_THAT(again.status().message(), HasSubstr("[in: INSERT INTO t VALUES (1, 'b', '', true)]"));
  absl::StatusOr<Result> null = db_->Query("INSERT INTO t VALUES (2, NULL, '', true)");
  EXPECT_EQ(null.status().code(), absl::StatusCode::kFailedPrecondition);  // 23502
  absl::StatusOr<Result> nul =
      db_->Query("INSERT INTO t VALUES (3, $1, '', true)", {absl::string_view("a\0b", 3)});
  EXPECT_EQ(nul.status().code(), absl::StatusCode::kInvalidArgument) << nul.status();
  EXPECT_THAT(nul.status().message(), HasSubstr("parameter $1 holds a NUL character"));
  // Not valid UTF-8: the server refuses it (22021).
  absl::StatusOr<Result> latin1 =
      db_->Query("INSERT INTO t VALUES (3, $1, '', true)", {absl::string_view("caf\xe9")});
  EXPECT_EQ(latin1.status().code(), absl::StatusCode::kInvalidArgument) << latin1.status();
  absl::StatusOr<Result> typo = db_->Query("SELEC 1");
  EXPECT_EQ(typo.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(typo.status().message(), HasSubstr("42601"));
  EXPECT_FALSE(db_->IsBroken());
}

// More statements than one pipeline holds (64): every one runs, in order, with its own result.
TEST_F(PostgresTest, APipelineRunsEveryStatementInOrder) {
  // Parameters are views: what they view outlives the call.
  const std::string zeros(7, '\0');
  std::vector<std::vector<Param>> params;
  for (int64_t i = 0; i < 150; ++i) {
    params.push_back(
        {i, absl::string_view("n"), Bytes{absl::string_view(zeros).substr(0, i % 7)}, i % 2 == 0});
  }
  absl::StatusOr<std::vector<Result>> done = db_->Pipeline(
      "INSERT INTO t (id, name, body, ok) VALUES ($1, $2, $3, $4) RETURNING id", params);
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(done->size(), 150u);
  for (int i = 0; i < 150; ++i) EXPECT_EQ((*done)[i].Int64(0, 0), i);
  absl::StatusOr<Result> rows = db_->Query("SELECT count(*), sum(length(body)) FROM t");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->Int64(0, 0), 150);
  EXPECT_EQ(rows->Int64(0, 1), 444);  // the sum of i % 7 over 0..149: every zero byte arrived
  absl::StatusOr<std::vector<Result>> reads = db_->Pipeline(
      "SELECT name FROM t WHERE id = $1", {{int64_t{3}}, {int64_t{1000}}, {int64_t{149}}});
  ASSERT_TRUE(reads.ok()) << reads.status();
  EXPECT_EQ((*reads)[0].rows(), 1);
  EXPECT_EQ((*reads)[1].rows(), 0);
  EXPECT_EQ((*reads)[2].rows(), 1);
}

// A statement that fails stops the pipeline there: the index is told, the statements after it
// do not run, the transaction rolls back whole, and the connection serves the next call.
TEST_F(PostgresTest, APipelineStopsAtItsFirstFailure) {
  std::vector<std::vector<Param>> params;
  for (int64_t i = 0; i < 100; ++i) params.push_back({i == 70 ? int64_t{5} : i});
  ASSERT_TRUE(db_->Exec("BEGIN").ok());
  size_t failed = 0;
  absl::StatusOr<std::vector<Result>> done = db_->Pipeline(
      "INSERT INTO t (id, name, body, ok) VALUES ($1, 'n', '', true)", params, &failed);
  EXPECT_EQ(done.status().code(), absl::StatusCode::kAlreadyExists) << done.status();
  EXPECT_EQ(failed, 70u);
  EXPECT_THAT(done.status().message(), Not(HasSubstr("statement")));
  EXPECT_TRUE(db_->InTransaction());
  ASSERT_TRUE(db_->Exec("ROLLBACK").ok());
  absl::StatusOr<Result> count = db_->Query("SELECT count(*) FROM t");
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(count->Int64(0, 0), 0);
  // Without an index to fill in, the message says which statement.
  done = db_->Pipeline("SELECT 1 / $1::INT", {{int64_t{1}}, {int64_t{0}}, {int64_t{2}}});
  EXPECT_THAT(done.status().message(), HasSubstr("statement 1: postgres: 22012: "));
  // A text parameter that cannot be sent fails before anything is.
  done =
      db_->Pipeline("SELECT $1::TEXT", {{absl::string_view("ok")}, {absl::string_view("a\0b", 3)}});
  EXPECT_THAT(done.status().message(),
              HasSubstr("statement 1: postgres: parameter $1 holds a NUL"));
  absl::StatusOr<Result> after = db_->Query("SELECT 41 + 1");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->Int64(0, 0), 42);
}

// Array literals carry any text but NUL, and any bytes, through to the server and back.
TEST_F(PostgresTest, ArraysCarryTextAndBytesOfAnyContent) {
  const std::vector<std::string> texts = {"",         "plain",       "a,b",
                                          "{braces}", R"("quoted")", R"(back\slash)",
                                          "NULL",     "ünïcode – ✓", " spaces "};
  std::string every_byte;
  for (int b = 0; b < 256; ++b) every_byte.push_back(static_cast<char>(b));
  Array names, bodies, ids;
  for (size_t i = 0; i < texts.size(); ++i) {
    ASSERT_TRUE(names.AddText(texts[i]).ok());
    bodies.AddBytes(i == 0 ? every_byte : texts[i]);
    ids.AddInt(static_cast<int64_t>(i) - 3);
  }
  const std::string names_literal = names.Literal(), bodies_literal = bodies.Literal(),
                    ids_literal = ids.Literal();
  absl::StatusOr<Result> rows =
      db_->Query("SELECT * FROM unnest($1::TEXT[], $2::BYTEA[], $3::BIGINT[])",
                 {absl::string_view(names_literal), absl::string_view(bodies_literal),
                  absl::string_view(ids_literal)});
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->rows(), static_cast<int>(texts.size()));
  for (int i = 0; i < rows->rows(); ++i) {
    EXPECT_FALSE(rows->IsNull(i, 0)) << i;  // the text NULL is not SQL's NULL
    EXPECT_EQ(rows->Text(i, 0), texts[i]);
    EXPECT_EQ(rows->Bytes(i, 1), i == 0 ? every_byte : texts[i]);
    EXPECT_EQ(rows->Int64(i, 2), i - 3);
  }
  Array empty;
  EXPECT_EQ(empty.Literal(), "{}");
  Array flags;
  flags.AddBool(true);
  flags.AddBool(false);
  EXPECT_EQ(flags.Literal(), "{t,f}");
  EXPECT_EQ(Array().AddText(absl::string_view("a\0b", 3)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(PostgresTest, ATransactionIsSeenUntilItEnds) {
  EXPECT_FALSE(db_->InTransaction());
  ASSERT_TRUE(db_->Exec("BEGIN").ok());
  EXPECT_TRUE(db_->InTransaction());
  EXPECT_FALSE(db_->Query("SELEC 1").ok());
  EXPECT_TRUE(db_->InTransaction());  // failed, until ROLLBACK
  ASSERT_TRUE(db_->Exec("ROLLBACK").ok());
  EXPECT_FALSE(db_->InTransaction());
}

TEST_F(PostgresTest, AConnectionTheServerEndedIsBrokenAndUnavailable) {
  absl::StatusOr<Connection> other = Connection::Open(dsn_);
  ASSERT_TRUE(other.ok()) << other.status();
  ASSERT_TRUE(other
                  ->Query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = $1 AND pid <> pg_backend_pid()",
                          {absl::string_view(schema_)})
                  .ok());
  absl::StatusOr<Result> after = db_->Query("SELECT 1");
  EXPECT_EQ(after.status().code(), absl::StatusCode::kUnavailable) << after.status();
  EXPECT_TRUE(db_->IsBroken());
}

TEST(PostgresOpenTest, NoServerIsUnavailableAndNamesWhy) {
  absl::StatusOr<Connection> db =
      Connection::Open("host=127.0.0.1 port=1 dbname=ess user=nobody connect_timeout=5");
  EXPECT_EQ(db.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(db.status().message(), HasSubstr("postgres: cannot connect: "));
  EXPECT_THAT(db.status().message(), HasSubstr("127.0.0.1"));
}

}  // namespace
}  // namespace ess::pg
