// A small RAII layer over SQLite3: connections, prepared statements and transactions, with
// every failure reported as an absl::Status that names the SQLite error.
//
// Not thread-safe: a Database and its Statements belong to one thread at a time (the
// connection is opened with SQLITE_OPEN_NOMUTEX). Use one connection per thread; WAL mode
// lets readers on other connections run while one writer writes.
//
//   absl::StatusOr<ess::sqlite::Database> db = ess::sqlite::Database::Open("/var/lib/ess/x.db");
//   if (!db.ok()) return db.status();
//   absl::StatusOr<ess::sqlite::Statement> insert = db->Prepare("INSERT INTO t(a, b) VALUES(?,
//   ?)"); absl::StatusOr<ess::sqlite::Transaction> tx = ess::sqlite::Transaction::Begin(*db);
//   insert->Bind(1, int64_t{7});
//   insert->Bind(2, "text");
//   absl::Status s = insert->Run();   // steps to completion, then resets for the next use
//   if (s.ok()) s = tx->Commit();     // otherwise ~Transaction rolls back
//
// Error codes: SQLITE_BUSY/LOCKED -> UNAVAILABLE (retry), SQLITE_CONSTRAINT_UNIQUE/PRIMARYKEY
// -> ALREADY_EXISTS, other constraints -> FAILED_PRECONDITION, SQLITE_CANTOPEN -> NOT_FOUND,
// SQLITE_READONLY/PERM/AUTH -> PERMISSION_DENIED, SQLITE_FULL/TOOBIG/NOMEM ->
// RESOURCE_EXHAUSTED, SQLITE_CORRUPT/NOTADB -> DATA_LOSS, SQLITE_INTERRUPT -> CANCELLED, anything
// else -> INTERNAL. The message reads "sqlite: <error name>: <sqlite message> [in: <sql>]".
#ifndef ESS_COMMON_SQLITE_H_
#define ESS_COMMON_SQLITE_H_

#include <concepts>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct sqlite3;
struct sqlite3_stmt;

namespace ess::sqlite {

class Statement;

// Database: one open connection.
class Database {
 public:
  struct Options {
    // How long a statement waits for a lock held by another connection before SQLITE_BUSY.
    int busy_timeout_ms = 5000;
    // Create the file if it does not exist.
    bool create = true;
    // Reject every write on this connection (PRAGMA query_only); for reader connections.
    bool query_only = false;
    // synchronous=FULL: each commit waits for the disk, and survives power loss.
    bool full_sync = false;
    // Open the file read-only and change nothing of it, not even its journal mode (no WAL
    // switch, no pragmas): for a look at a file that may not be this program's. Implies no
    // `create`.
    bool read_only = false;
  };

  // Opens `path` in WAL mode with synchronous=NORMAL (FULL with full_sync) and the busy timeout;
  // with read_only, as it is.
  // NOT_FOUND if the file cannot be opened (missing folder, or missing file without `create`); the
  // other codes as in the file comment.
  static absl::StatusOr<Database> Open(const std::string& path, const Options& options);
  static absl::StatusOr<Database> Open(const std::string& path) { return Open(path, Options()); }

  Database(Database&& other) noexcept;
  Database& operator=(Database&& other) noexcept;
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  ~Database();  // Closes the connection; every Statement of it must be gone by then.

  // Runs one or more statements that return no rows of interest (DDL, pragmas).
  absl::Status Exec(absl::string_view sql);
  // Compiles one statement. INVALID_ARGUMENT if `sql` holds more than one.
  absl::StatusOr<Statement> Prepare(absl::string_view sql);

  int64_t LastInsertRowId() const;
  // Rows changed by the last INSERT, UPDATE or DELETE on this connection.
  int64_t Changes() const;
  // False only inside an explicit transaction.
  bool AutoCommit() const;

 private:
  explicit Database(sqlite3* db) : db_(db) {}
  sqlite3* db_ = nullptr;
};

// Statement: a prepared statement. Parameters are 1-based, columns 0-based (as in SQLite).
// Bound text and blobs are copied, so the arguments need not outlive the call.
class Statement {
 public:
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&& other) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement();

  // Any integer (and bool) binds as INTEGER. uint64_t values above INT64_MAX wrap.
  template <std::integral T>
  absl::Status Bind(int index, T value) {
    return BindInt64(index, static_cast<int64_t>(value));
  }
  absl::Status Bind(int index, double value);
  // Binds TEXT (empty text stays '' rather than NULL).
  absl::Status Bind(int index, absl::string_view text);
  absl::Status Bind(int index, const char* text) { return Bind(index, absl::string_view(text)); }
  absl::Status Bind(int index, const std::string& text) {
    return Bind(index, absl::string_view(text));
  }
  // Binds a BLOB (an empty blob stays a zero-length blob rather than NULL).
  absl::Status BindBlob(int index, absl::string_view bytes);
  absl::Status BindNull(int index);

  // Advances: true when a row is available, false when the statement is done. After false or
  // an error, call Reset() before running the statement again.
  absl::StatusOr<bool> Step();
  // Steps to completion (rows are ignored), then Reset()s. For INSERT/UPDATE/DELETE.
  absl::Status Run();
  // Makes the statement runnable again and clears every binding. Never fails: an error of the
  // previous run was already returned by Step().
  void Reset();

  // Column accessors for the current row. Views stay valid until the next Step() or Reset().
  int ColumnCount() const;
  bool ColumnIsNull(int column) const;
  int64_t ColumnInt64(int column) const;
  double ColumnDouble(int column) const;
  absl::string_view ColumnText(int column) const;
  absl::string_view ColumnBlob(int column) const;

  // The statement's SQL text, for messages.
  absl::string_view Sql() const;

 private:
  friend class Database;
  Statement(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  absl::Status BindInt64(int index, int64_t value);
  absl::Status CheckBind(int rc, int index);

  sqlite3* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
};

// Transaction: BEGIN on creation; ROLLBACK on destruction unless Commit() succeeded.
class Transaction {
 public:
  enum class Mode {
    // Takes the write lock at the first write (fine for read-only transactions).
    kDeferred,
    // Takes the write lock at BEGIN, so a writer never fails half-way with SQLITE_BUSY.
    kImmediate,
  };

  static absl::StatusOr<Transaction> Begin(Database& db, Mode mode = Mode::kImmediate);

  Transaction(Transaction&& other) noexcept;
  Transaction& operator=(Transaction&&) = delete;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction();

  // COMMIT. On failure the transaction is rolled back (by the destructor, if SQLite did not
  // already), and nothing it wrote is kept.
  absl::Status Commit();

 private:
  explicit Transaction(Database* db) : db_(db) {}
  Database* db_;  // Null once committed or moved from.
};

}  // namespace ess::sqlite

#endif  // ESS_COMMON_SQLITE_H_
