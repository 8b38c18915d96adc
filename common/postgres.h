// A small RAII layer over libpq: a connection, results, and statements with parameters, with
// every failure reported as an absl::Status that names the server's error.
//
// Not thread-safe: a Connection belongs to one thread at a time (keep a pool of them).
//
//   absl::StatusOr<ess::pg::Connection> db =
//       ess::pg::Connection::Open("host=127.0.0.1 port=5432 dbname=ess user=ess");
//   if (!db.ok()) return db.status();
//   absl::StatusOr<ess::pg::Result> rows = db->Query(
//       "SELECT id, payload FROM t WHERE partner = $1 AND id > $2", {"prison", int64_t{7}});
//   for (int r = 0; r < rows->rows(); ++r) use(rows->Int64(r, 0), rows->Bytes(r, 1));
//
// Parameters are sent as text, but for Bytes (bytea, sent binary); results come back as text,
// bytea unescaped by Bytes(). Error codes, from the SQLSTATE: connection failures (08...) and a
// connection that is gone -> UNAVAILABLE (IsBroken() then says so); serialization failures and
// deadlocks (40001, 40P01) -> ABORTED (run the transaction again); unique violations (23505) ->
// ALREADY_EXISTS, other integrity violations (23...) -> FAILED_PRECONDITION; too many
// connections, disk full (53...) -> RESOURCE_EXHAUSTED; a value the column cannot hold (22...,
// e.g. a NUL character in text) -> INVALID_ARGUMENT; a cancelled statement (57014) -> CANCELLED;
// anything else -> INTERNAL. The message reads "postgres: SQLSTATE: message [in: SQL]".
#ifndef ESS_COMMON_POSTGRES_H_
#define ESS_COMMON_POSTGRES_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct pg_conn;
struct pg_result;

namespace ess::pg {

// A bytea parameter (sent in binary, so any bytes go through unchanged).
struct Bytes {
  absl::string_view bytes;
};

// A parameter of a statement: text, a number (sent as its decimal text), a bool or bytes.
using Param = std::variant<absl::string_view, int64_t, bool, Bytes>;

// An array parameter in PostgreSQL's text form ("{...}"), built element by element, for
// statements that take a whole batch at once (e.g. INSERT ... SELECT * FROM unnest($1::TEXT[],
// $2::BYTEA[], ...)).
class Array {
 public:
  // INVALID_ARGUMENT for text holding a NUL character (text cannot).
  absl::Status AddText(absl::string_view text);
  void AddBytes(absl::string_view bytes);
  void AddInt(int64_t n);
  void AddBool(bool b);
  // The literal, e.g. {"a","b\"c"}; pass it as a text parameter cast to the array type.
  std::string Literal() const { return literal_ + "}"; }

 private:
  void Next() {
    if (literal_.size() > 1) literal_.push_back(',');
  }
  std::string literal_ = "{";
};

// The rows of one statement, or what it changed.
class Result {
 public:
  int rows() const;
  // Rows an INSERT, UPDATE or DELETE changed.
  int64_t affected() const;
  bool IsNull(int row, int column) const;
  absl::string_view Text(int row, int column) const;
  int64_t Int64(int row, int column) const;
  bool Bool(int row, int column) const;
  // A bytea column, unescaped.
  std::string Bytes(int row, int column) const;

 private:
  friend class Connection;
  struct Free {
    void operator()(pg_result* r) const;
  };
  explicit Result(pg_result* r) : result_(r) {}
  std::unique_ptr<pg_result, Free> result_;
};

class Connection {
 public:
  // Connects with a libpq connection string ("host=... port=... dbname=... user=..." or a
  // postgresql:// URI). Unless the string says otherwise, a connect gives up after 10 s and TCP
  // keepalives find a silent server within a minute. UNAVAILABLE if the server cannot be reached
  // or refuses; the message names what libpq said, never the password.
  static absl::StatusOr<Connection> Open(const std::string& conninfo);

  Connection(Connection&& other) noexcept = default;
  Connection& operator=(Connection&& other) noexcept = default;
  ~Connection() = default;

  // Runs one or more statements without parameters (DDL, BEGIN, COMMIT).
  absl::Status Exec(absl::string_view sql);
  // Runs one statement with $1, $2... bound to `params`. INVALID_ARGUMENT, before anything is
  // sent, for a text parameter holding a NUL character (PostgreSQL's text cannot).
  absl::StatusOr<Result> Query(absl::string_view sql, const std::vector<Param>& params);
  absl::StatusOr<Result> Query(absl::string_view sql, std::initializer_list<Param> params = {}) {
    return Query(sql, std::vector<Param>(params));
  }

  // Runs `sql` once per element of `params`, in order, in pipelines of up to 64 statements:
  // one round trip per pipeline instead of one per statement. The server runs them one after
  // another as usual; inside a transaction (BEGIN) they belong to it. The first failure is
  // returned, and the statements after it do not run; `failed_at` (if given) is then set to its
  // index, else the message starts "statement i: ".
  absl::StatusOr<std::vector<Result>> Pipeline(absl::string_view sql,
                                               const std::vector<std::vector<Param>>& params,
                                               size_t* failed_at = nullptr);

  // True once the connection is gone (the server ended it, or the network did): drop it.
  bool IsBroken() const;
  // True inside a transaction block (BEGIN without COMMIT or ROLLBACK yet), or in a failed one.
  bool InTransaction() const;

 private:
  struct Free {
    void operator()(pg_conn* c) const;
  };
  explicit Connection(pg_conn* c) : conn_(c) {}
  absl::StatusOr<Result> Check(pg_result* result, absl::string_view sql);
  // The strings, lengths and formats of `params`, for PQexecParams or PQsendQueryParams.
  struct Bound {
    std::vector<std::string> storage;
    std::vector<const char*> values;
    std::vector<int> lengths, formats;
  };
  static absl::StatusOr<Bound> Bind(absl::string_view sql, const std::vector<Param>& params);
  std::unique_ptr<pg_conn, Free> conn_;
};

}  // namespace ess::pg

#endif  // ESS_COMMON_POSTGRES_H_
