#include "common/postgres.h"

#include <libpq-fe.h>

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ess::pg {
namespace {

absl::StatusCode CodeOf(absl::string_view sqlstate) {
  if (absl::StartsWith(sqlstate, "08")) return absl::StatusCode::kUnavailable;
  if (sqlstate == "40001" || sqlstate == "40P01") return absl::StatusCode::kAborted;
  if (sqlstate == "23505") return absl::StatusCode::kAlreadyExists;
  if (absl::StartsWith(sqlstate, "23")) return absl::StatusCode::kFailedPrecondition;
  if (absl::StartsWith(sqlstate, "53")) return absl::StatusCode::kResourceExhausted;
  // Data exceptions: a value the column cannot hold (e.g. a NUL character in text).
  if (absl::StartsWith(sqlstate, "22")) return absl::StatusCode::kInvalidArgument;
  if (sqlstate == "57014") return absl::StatusCode::kCancelled;
  // 57P01-57P03: the server is shutting down or starting.
  if (absl::StartsWith(sqlstate, "57P")) return absl::StatusCode::kUnavailable;
  return absl::StatusCode::kInternal;
}

}  // namespace

absl::Status Array::AddText(absl::string_view text) {
  if (text.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("postgres: a NUL character, which text cannot hold");
  }
  Next();
  // Quoted, with the two characters that end or escape a quoted element escaped.
  literal_.push_back('"');
  for (char c : text) {
    if (c == '"' || c == '\\') literal_.push_back('\\');
    literal_.push_back(c);
  }
  literal_.push_back('"');
  return absl::OkStatus();
}

void Array::AddBytes(absl::string_view bytes) {
  // bytea's hex form, \x..., whose backslash the quoted element escapes.
  static constexpr char kHex[] = "0123456789abcdef";
  Next();
  literal_.append("\"\\\\x");
  for (unsigned char c : bytes) {
    literal_.push_back(kHex[c >> 4]);
    literal_.push_back(kHex[c & 15]);
  }
  literal_.push_back('"');
}

void Array::AddInt(int64_t n) {
  Next();
  absl::StrAppend(&literal_, n);
}

void Array::AddBool(bool b) {
  Next();
  literal_.push_back(b ? 't' : 'f');
}

void Result::Free::operator()(pg_result* r) const { PQclear(r); }

int Result::rows() const { return PQntuples(result_.get()); }

int64_t Result::affected() const {
  int64_t n = 0;
  return absl::SimpleAtoi(PQcmdTuples(result_.get()), &n) ? n : 0;
}

bool Result::IsNull(int row, int column) const {
  return PQgetisnull(result_.get(), row, column) != 0;
}

absl::string_view Result::Text(int row, int column) const {
  return absl::string_view(PQgetvalue(result_.get(), row, column),
                           static_cast<size_t>(PQgetlength(result_.get(), row, column)));
}

int64_t Result::Int64(int row, int column) const {
  int64_t n = 0;
  return absl::SimpleAtoi(Text(row, column), &n) ? n : 0;
}

bool Result::Bool(int row, int column) const { return Text(row, column) == "t"; }

std::string Result::Bytes(int row, int column) const {
  size_t length = 0;
  unsigned char* bytes = PQunescapeBytea(
      reinterpret_cast<const unsigned char*>(PQgetvalue(result_.get(), row, column)), &length);
  if (bytes == nullptr) return std::string();
  std::string out(reinterpret_cast<const char*>(bytes), length);
  PQfreemem(bytes);
  return out;
}

void Connection::Free::operator()(pg_conn* c) const { PQfinish(c); }

absl::StatusOr<Connection> Connection::Open(const std::string& conninfo) {
  // Defaults that the caller's string overrides (it is expanded after them): a bounded connect,
  // and TCP keepalives that find a server gone silent (a network partition) within a minute
  // rather than the kernel's two hours.
  const char* const keywords[] = {"connect_timeout",  "keepalives_idle", "keepalives_interval",
                                  "keepalives_count", "dbname",          nullptr};
  const char* const values[] = {"10", "30", "10", "3", conninfo.c_str(), nullptr};
  Connection connection(PQconnectdbParams(keywords, values, /*expand_dbname=*/1));
  if (connection.conn_ == nullptr) {
    return absl::ResourceExhaustedError("postgres: out of memory for a connection");
  }
  if (PQstatus(connection.conn_.get()) != CONNECTION_OK) {
    return absl::UnavailableError(
        absl::StrCat("postgres: cannot connect: ",
                     absl::StripTrailingAsciiWhitespace(PQerrorMessage(connection.conn_.get()))));
  }
  // NOTICEs (e.g. "relation already exists, skipping") are not errors; keep them off stderr.
  PQsetNoticeProcessor(
      connection.conn_.get(), [](void*, const char*) {}, nullptr);
  return connection;
}

absl::StatusOr<Result> Connection::Check(pg_result* raw, absl::string_view sql) {
  Result result(raw);
  if (raw == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("postgres: ", absl::StripTrailingAsciiWhitespace(PQerrorMessage(conn_.get())),
                     " [in: ", sql, "]"));
  }
  const ExecStatusType status = PQresultStatus(raw);
  if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return result;
  const char* sqlstate = PQresultErrorField(raw, PG_DIAG_SQLSTATE);
  absl::string_view state = sqlstate != nullptr ? sqlstate : "";
  // No SQLSTATE: libpq's own failure, which for a statement means the connection went.
  const absl::StatusCode code =
      state.empty() || IsBroken() ? absl::StatusCode::kUnavailable : CodeOf(state);
  return absl::Status(code,
                      absl::StrCat("postgres: ", state.empty() ? "" : absl::StrCat(state, ": "),
                                   absl::StripTrailingAsciiWhitespace(PQresultErrorMessage(raw)),
                                   " [in: ", absl::StripAsciiWhitespace(sql), "]"));
}

absl::Status Connection::Exec(absl::string_view sql) {
  const std::string text(sql);
  return Check(PQexec(conn_.get(), text.c_str()), sql).status();
}

absl::StatusOr<Connection::Bound> Connection::Bind(absl::string_view sql,
                                                   const std::vector<Param>& params) {
  Bound b;
  b.storage.resize(params.size());
  b.values.resize(params.size());
  b.lengths.resize(params.size());
  b.formats.resize(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    if (const auto* s = std::get_if<absl::string_view>(&params[i])) {
      // Text goes as a C string: a NUL would end it there, and the rest would be lost unseen.
      if (s->find('\0') != absl::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrCat(
            "postgres: parameter $", i + 1, " holds a NUL character, which text cannot [in: ",
            absl::StripAsciiWhitespace(sql), "]"));
      }
      b.storage[i] = std::string(*s);
    } else if (const auto* n = std::get_if<int64_t>(&params[i])) {
      b.storage[i] = absl::StrCat(*n);
    } else if (const auto* f = std::get_if<bool>(&params[i])) {
      b.storage[i].assign(1, *f ? 't' : 'f');
    } else {
      b.storage[i] = std::string(std::get<pg::Bytes>(params[i]).bytes);
      b.formats[i] = 1;  // binary: the bytes as they are
    }
    b.values[i] = b.storage[i].c_str();
    b.lengths[i] = static_cast<int>(b.storage[i].size());
  }
  return b;
}

absl::StatusOr<Result> Connection::Query(absl::string_view sql, const std::vector<Param>& params) {
  absl::StatusOr<Bound> b = Bind(sql, params);
  if (!b.ok()) return b.status();
  const std::string text(sql);
  return Check(PQexecParams(conn_.get(), text.c_str(), static_cast<int>(params.size()), nullptr,
                            b->values.data(), b->lengths.data(), b->formats.data(), 0),
               sql);
}

absl::StatusOr<std::vector<Result>> Connection::Pipeline(
    absl::string_view sql, const std::vector<std::vector<Param>>& params, size_t* failed_at) {
  auto with_index = [failed_at](size_t i, const absl::Status& s) {
    if (failed_at != nullptr) {
      *failed_at = i;
      return s;
    }
    return absl::Status(s.code(), absl::StrCat("statement ", i, ": ", s.message()));
  };
  // A pipeline's statements go out before any answer is read: a bounded number of them, so
  // that neither side's socket buffer fills while the other waits (libpq blocks on writes).
  constexpr size_t kDepth = 64;
  const std::string text(sql);
  std::vector<Result> results;
  results.reserve(params.size());
  for (size_t first = 0; first < params.size(); first += kDepth) {
    const size_t last = std::min(params.size(), first + kDepth);
    std::vector<Bound> bound;
    bound.reserve(last - first);
    for (size_t i = first; i < last; ++i) {
      absl::StatusOr<Bound> b = Bind(sql, params[i]);
      if (!b.ok()) return with_index(i, b.status());
      bound.push_back(*std::move(b));
    }
    if (PQenterPipelineMode(conn_.get()) != 1) {
      return Check(nullptr, sql).status();
    }
    absl::Status failed;
    size_t sent = 0;
    for (size_t i = first; i < last; ++i, ++sent) {
      const Bound& b = bound[i - first];
      if (PQsendQueryParams(conn_.get(), text.c_str(), static_cast<int>(params[i].size()), nullptr,
                            b.values.data(), b.lengths.data(), b.formats.data(), 0) != 1) {
        failed = with_index(i, Check(nullptr, sql).status());
        break;
      }
    }
    if (PQpipelineSync(conn_.get()) != 1 && failed.ok()) {
      failed = Check(nullptr, sql).status();
    }
    // Every statement sent has a result (PIPELINE_ABORTED after a failure), then a NULL; the
    // sync point ends the pipeline.
    for (size_t i = first; i < first + sent && !IsBroken(); ++i) {
      absl::StatusOr<Result> r = Check(PQgetResult(conn_.get()), sql);
      while (pg_result* more = PQgetResult(conn_.get())) PQclear(more);
      if (r.ok()) {
        if (failed.ok()) results.push_back(*std::move(r));
      } else if (failed.ok()) {
        failed = with_index(i, r.status());
      }
    }
    for (int nulls = 0; nulls < 2 && !IsBroken();) {
      pg_result* r = PQgetResult(conn_.get());
      if (r == nullptr) {  // the end of a statement's results, before the sync point's
        ++nulls;
        continue;
      }
      nulls = 0;
      const bool sync = PQresultStatus(r) == PGRES_PIPELINE_SYNC;
      PQclear(r);
      if (sync) break;
    }
    if (PQexitPipelineMode(conn_.get()) != 1 && failed.ok()) {
      failed = Check(nullptr, sql).status();
    }
    if (!failed.ok()) return failed;
  }
  return results;
}

bool Connection::IsBroken() const { return PQstatus(conn_.get()) == CONNECTION_BAD; }

bool Connection::InTransaction() const {
  const PGTransactionStatusType t = PQtransactionStatus(conn_.get());
  return t == PQTRANS_INTRANS || t == PQTRANS_INERROR || t == PQTRANS_ACTIVE;
}

}  // namespace ess::pg
