// The store backends that the ReplayStore tests run on, each on real parts: a SQLite file in a
// private temp folder, or a schema of its own in the PostgreSQL server that ./test.sh starts
// (scripts/postgres.sh; its connection string in ESS_POSTGRES_DSN), dropped at the end.
//
//   class MyTest : public ::testing::TestWithParam<Backend> { TestStore db_{GetParam()}; };
//   absl::StatusOr<std::unique_ptr<ReplayStore>> store = db_.Open(clock);
//   INSTANTIATE_TEST_SUITE_P(Backends, MyTest, ::testing::ValuesIn(kBackends), BackendName);
#ifndef ESS_TESTS_REPLAY_SVC_TEST_STORE_H_
#define ESS_TESTS_REPLAY_SVC_TEST_STORE_H_

#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "common/postgres.h"
#include "common/sqlite.h"
#include "gtest/gtest.h"
#include "replay_svc/postgres_replay_store.h"
#include "replay_svc/sqlite_replay_store.h"
#include "tests/replay_svc/test_util.h"

namespace ess::replay::testing {

enum class Backend { kSqlite, kPostgres };
inline constexpr Backend kBackends[] = {Backend::kSqlite, Backend::kPostgres};

inline std::string BackendName(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::kSqlite ? "Sqlite" : "Postgres";
}

class TestStore {
 public:
  explicit TestStore(Backend backend) : backend_(backend) {
    if (backend_ == Backend::kSqlite) return;
    const char* dsn = std::getenv("ESS_POSTGRES_DSN");
    if (dsn == nullptr || *dsn == '\0') {
      ADD_FAILURE() << "environment variable ESS_POSTGRES_DSN is not set: run the tests through "
                       "./test.sh, which starts the PostgreSQL they need";
      return;
    }
    std::random_device random;
    schema_ = absl::StrFormat("ess_test_%08x%08x", random(), random());
    // The schema names the connections too, so a test can end its own store's and no other's.
    conninfo_ =
        absl::StrCat(dsn, " application_name=", schema_, " options='-c search_path=", schema_, "'");
    absl::StatusOr<pg::Connection> db = pg::Connection::Open(dsn);
    absl::Status created =
        db.ok() ? db->Exec(absl::StrCat("CREATE SCHEMA ", schema_)) : db.status();
    if (!created.ok()) ADD_FAILURE() << "cannot make a schema for the test: " << created;
  }
  ~TestStore() {
    if (schema_.empty()) return;
    absl::StatusOr<pg::Connection> db = pg::Connection::Open(std::getenv("ESS_POSTGRES_DSN"));
    if (db.ok()) db->Exec(absl::StrCat("DROP SCHEMA ", schema_, " CASCADE")).IgnoreError();
  }
  TestStore(const TestStore&) = delete;
  TestStore& operator=(const TestStore&) = delete;

  Backend backend() const { return backend_; }
  // The SQLite file, or the PostgreSQL connection string (its search_path is the test's schema).
  std::string location() const {
    return backend_ == Backend::kSqlite ? dir_.File("replay.db") : conninfo_;
  }

  // A store on this backend's database; a second Open sees what the first one wrote.
  absl::StatusOr<std::unique_ptr<ReplayStore>> Open(std::function<absl::Time()> clock) const {
    if (backend_ == Backend::kSqlite) {
      SqliteReplayStore::Options options;
      options.clock = std::move(clock);
      absl::StatusOr<std::unique_ptr<SqliteReplayStore>> s =
          SqliteReplayStore::Open(location(), std::move(options));
      if (!s.ok()) return s.status();
      return std::unique_ptr<ReplayStore>(*std::move(s));
    }
    PostgresReplayStore::Options options;
    options.clock = std::move(clock);
    absl::StatusOr<std::unique_ptr<PostgresReplayStore>> s =
        PostgresReplayStore::Open(location(), std::move(options));
    if (!s.ok()) return s.status();
    return std::unique_ptr<ReplayStore>(*std::move(s));
  }

  // Runs `sql` (in the backend's own dialect) on the database directly, as another process
  // would.
  absl::Status Exec(const std::string& sql) const {
    if (backend_ == Backend::kSqlite) {
      absl::StatusOr<sqlite::Database> db = sqlite::Database::Open(location());
      if (!db.ok()) return db.status();
      return db->Exec(sql);
    }
    absl::StatusOr<pg::Connection> db = pg::Connection::Open(conninfo_);
    if (!db.ok()) return db.status();
    return db->Exec(sql);
  }

 private:
  const Backend backend_;
  TempDir dir_;
  std::string schema_;    // PostgreSQL only
  std::string conninfo_;  // PostgreSQL only
};

}  // namespace ess::replay::testing

#endif  // ESS_TESTS_REPLAY_SVC_TEST_STORE_H_
