#include "common/sqlite.h"

#include <sqlite3.h>

#include <iterator>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace ess::sqlite {
namespace {

absl::StatusCode CodeFor(int extended_rc) {
  switch (extended_rc) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
      return absl::StatusCode::kAlreadyExists;
    default:
      break;
  }
  switch (extended_rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::StatusCode::kUnavailable;
    case SQLITE_CONSTRAINT:
      return absl::StatusCode::kFailedPrecondition;
    case SQLITE_CANTOPEN:
      return absl::StatusCode::kNotFound;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
      return absl::StatusCode::kPermissionDenied;
    case SQLITE_FULL:
    case SQLITE_TOOBIG:
    case SQLITE_NOMEM:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::StatusCode::kDataLoss;
    case SQLITE_INTERRUPT:
      return absl::StatusCode::kCancelled;
    case SQLITE_RANGE:
      return absl::StatusCode::kOutOfRange;
    default:
      return absl::StatusCode::kInternal;
  }
}

// The names of the primary result codes, indexed by code (SQLITE_OK = 0 .. SQLITE_WARNING = 28).
constexpr const char* kPrimaryNames[] = {
    "SQLITE_OK",       "SQLITE_ERROR",   "SQLITE_INTERNAL", "SQLITE_PERM",     "SQLITE_ABORT",
    "SQLITE_BUSY",     "SQLITE_LOCKED",  "SQLITE_NOMEM",    "SQLITE_READONLY", "SQLITE_INTERRUPT",
    "SQLITE_IOERR",    "SQLITE_CORRUPT", "SQLITE_NOTFOUND", "SQLITE_FULL",     "SQLITE_CANTOPEN",
    "SQLITE_PROTOCOL", "SQLITE_EMPTY",   "SQLITE_SCHEMA",   "SQLITE_TOOBIG",   "SQLITE_CONSTRAINT",
    "SQLITE_MISMATCH", "SQLITE_MISUSE",  "SQLITE_NOLFS",    "SQLITE_AUTH",     "SQLITE_FORMAT",
    "SQLITE_RANGE",    "SQLITE_NOTADB",  "SQLITE_NOTICE",   "SQLITE_WARNING",
};
static_assert(SQLITE_CONSTRAINT == 19 && SQLITE_NOTADB == 26 && SQLITE_WARNING == 28);

const char* PrimaryName(int rc) {
  const size_t primary = static_cast<size_t>(rc & 0xff);
  return primary < std::size(kPrimaryNames) ? kPrimaryNames[primary] : "SQLITE_UNKNOWN";
}

// "sqlite: SQLITE_CONSTRAINT (275): CHECK constraint failed: partner [in: INSERT ...]".
// `rc` is the code a call returned; the connection's message is used when it describes the
// same error (calls such as bind do not always set it).
absl::Status Error(sqlite3* db, int rc, absl::string_view sql = {}) {
  int code = rc;
  const char* detail = sqlite3_errstr(rc);
  if (db != nullptr && (sqlite3_extended_errcode(db) & 0xff) == (rc & 0xff)) {
    code = sqlite3_extended_errcode(db);
    detail = sqlite3_errmsg(db);
  }
  std::string message = absl::StrCat("sqlite: ", PrimaryName(code), " (", code, "): ", detail);
  if (!sql.empty()) absl::StrAppend(&message, " [in: ", sql, "]");
  return absl::Status(CodeFor(code), message);
}

}  // namespace

// ---- Database ----------------------------------------------------------------------------

absl::StatusOr<Database> Database::Open(const std::string& path, const Options& options) {
  int flags = SQLITE_OPEN_NOMUTEX;
  if (options.read_only) {
    flags |= SQLITE_OPEN_READONLY;
  } else {
    flags |= SQLITE_OPEN_READWRITE;
    if (options.create) flags |= SQLITE_OPEN_CREATE;
  }
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  // Owned from here on, even on failure (sqlite3_open_v2 allocates a handle for the message).
  Database db(raw);
  if (rc != SQLITE_OK) {
    absl::Status error = Error(raw, rc);
    return absl::Status(error.code(), absl::StrCat(error.message(), ": ", path));
  }
  sqlite3_extended_result_codes(raw, 1);
  sqlite3_busy_timeout(raw, options.busy_timeout_ms);
  if (options.read_only) return db;

  // journal_mode answers with the mode in effect; anything but "wal" means WAL is unavailable
  // (e.g. an in-memory database), which the callers of this layer do not expect.
  {
    absl::StatusOr<Statement> pragma = db.Prepare("PRAGMA journal_mode=WAL");
    if (!pragma.ok()) return pragma.status();
    absl::StatusOr<bool> row = pragma->Step();
    if (!row.ok()) return row.status();
    std::string mode = *row ? absl::AsciiStrToLower(pragma->ColumnText(0)) : "?";
    if (mode != "wal") {
      return absl::FailedPreconditionError(
          absl::StrCat("sqlite: cannot switch ", path, " to WAL mode (journal_mode=", mode, ")"));
    }
  }
  std::string pragmas =
      options.full_sync ? "PRAGMA synchronous=FULL;" : "PRAGMA synchronous=NORMAL;";
  if (options.query_only) pragmas += "PRAGMA query_only=ON;";
  if (absl::Status s = db.Exec(pragmas); !s.ok()) return s;
  return db;
}

Database::Database(Database&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}

Database& Database::operator=(Database&& other) noexcept {
  if (this != &other) {
    if (db_ != nullptr) sqlite3_close_v2(db_);
    db_ = std::exchange(other.db_, nullptr);
  }
  return *this;
}

Database::~Database() {
  if (db_ != nullptr) sqlite3_close_v2(db_);
}

absl::Status Database::Exec(absl::string_view sql) {
  std::string text(sql);
  char* message = nullptr;
  int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &message);
  sqlite3_free(message);  // The same text is available from sqlite3_errmsg.
  if (rc != SQLITE_OK) return Error(db_, rc, sql);
  return absl::OkStatus();
}

absl::StatusOr<Statement> Database::Prepare(absl::string_view sql) {
  sqlite3_stmt* stmt = nullptr;
  const char* tail = nullptr;
  int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()),
                              SQLITE_PREPARE_PERSISTENT, &stmt, &tail);
  if (rc != SQLITE_OK) return Error(db_, rc, sql);
  Statement statement(db_, stmt);
  if (stmt == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("sqlite: no statement in: ", sql));
  }
  absl::string_view rest = absl::StripAsciiWhitespace(
      absl::string_view(tail, static_cast<size_t>(sql.data() + sql.size() - tail)));
  if (!rest.empty() && rest != ";") {
    return absl::InvalidArgumentError(absl::StrCat("sqlite: more than one statement in: ", sql));
  }
  return statement;
}

int64_t Database::LastInsertRowId() const { return sqlite3_last_insert_rowid(db_); }

int64_t Database::Changes() const { return sqlite3_changes64(db_); }

bool Database::AutoCommit() const { return sqlite3_get_autocommit(db_) != 0; }

// ---- Statement ---------------------------------------------------------------------------

Statement::Statement(Statement&& other) noexcept
    : db_(std::exchange(other.db_, nullptr)), stmt_(std::exchange(other.stmt_, nullptr)) {}

Statement& Statement::operator=(Statement&& other) noexcept {
  if (this != &other) {
    sqlite3_finalize(stmt_);
    db_ = std::exchange(other.db_, nullptr);
    stmt_ = std::exchange(other.stmt_, nullptr);
  }
  return *this;
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

absl::Status Statement::CheckBind(int rc, int index) {
  if (rc == SQLITE_OK) return absl::OkStatus();
  absl::Status error = Error(db_, rc, Sql());
  return absl::Status(error.code(), absl::StrCat("parameter ", index, ": ", error.message()));
}

absl::Status Statement::BindInt64(int index, int64_t value) {
  return CheckBind(sqlite3_bind_int64(stmt_, index, value), index);
}

absl::Status Statement::Bind(int index, double value) {
  return CheckBind(sqlite3_bind_double(stmt_, index, value), index);
}

absl::Status Statement::Bind(int index, absl::string_view text) {
  // A null pointer would bind NULL; "" keeps empty text distinct from NULL.
  const char* data = text.data() != nullptr ? text.data() : "";
  return CheckBind(
      sqlite3_bind_text64(stmt_, index, data, text.size(), SQLITE_TRANSIENT, SQLITE_UTF8), index);
}

absl::Status Statement::BindBlob(int index, absl::string_view bytes) {
  if (bytes.empty()) return CheckBind(sqlite3_bind_zeroblob(stmt_, index, 0), index);
  return CheckBind(sqlite3_bind_blob64(stmt_, index, bytes.data(), bytes.size(), SQLITE_TRANSIENT),
                   index);
}

absl::Status Statement::BindNull(int index) {
  return CheckBind(sqlite3_bind_null(stmt_, index), index);
}

absl::StatusOr<bool> Statement::Step() {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return Error(db_, rc, Sql());
}

absl::Status Statement::Run() {
  absl::Status status;
  for (;;) {
    absl::StatusOr<bool> row = Step();
    if (!row.ok()) {
      status = row.status();
      break;
    }
    if (!*row) break;
  }
  Reset();
  return status;
}

void Statement::Reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

int Statement::ColumnCount() const { return sqlite3_column_count(stmt_); }

bool Statement::ColumnIsNull(int column) const {
  return sqlite3_column_type(stmt_, column) == SQLITE_NULL;
}

int64_t Statement::ColumnInt64(int column) const { return sqlite3_column_int64(stmt_, column); }

double Statement::ColumnDouble(int column) const { return sqlite3_column_double(stmt_, column); }

absl::string_view Statement::ColumnText(int column) const {
  const unsigned char* text = sqlite3_column_text(stmt_, column);
  if (text == nullptr) return {};
  return absl::string_view(reinterpret_cast<const char*>(text),
                           static_cast<size_t>(sqlite3_column_bytes(stmt_, column)));
}

absl::string_view Statement::ColumnBlob(int column) const {
  const void* blob = sqlite3_column_blob(stmt_, column);
  if (blob == nullptr) return {};
  return absl::string_view(static_cast<const char*>(blob),
                           static_cast<size_t>(sqlite3_column_bytes(stmt_, column)));
}

absl::string_view Statement::Sql() const {
  const char* sql = stmt_ != nullptr ? sqlite3_sql(stmt_) : nullptr;
  return sql != nullptr ? absl::string_view(sql) : absl::string_view();
}

// ---- Transaction -------------------------------------------------------------------------

absl::StatusOr<Transaction> Transaction::Begin(Database& db, Mode mode) {
  absl::Status s = db.Exec(mode == Mode::kImmediate ? "BEGIN IMMEDIATE" : "BEGIN DEFERRED");
  if (!s.ok()) return s;
  return Transaction(&db);
}

Transaction::Transaction(Transaction&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}

Transaction::~Transaction() {
  // After a failed COMMIT, SQLite may already have rolled back (then AutoCommit() is true).
  if (db_ != nullptr && !db_->AutoCommit()) db_->Exec("ROLLBACK").IgnoreError();
}

absl::Status Transaction::Commit() {
  if (db_ == nullptr) return absl::FailedPreconditionError("sqlite: transaction already ended");
  absl::Status s = db_->Exec("COMMIT");
  if (s.ok()) db_ = nullptr;
  return s;
}

}  // namespace ess::sqlite
