#include "replay_svc/postgres_replay_store.h"

#include <algorithm>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "replay_svc/records.h"
#include "replay_svc/store_rules.h"

namespace ess::replay {
namespace {

using ess::v1::MessageRecord;

// kMigrations[v] takes a database from schema version v to v + 1. Times are Unix
// microseconds; enums are their proto numbers (as in the SQLite store).
constexpr const char* kMigrations[] = {
    // 0 -> 1
    R"sql(
CREATE TABLE ess_replay_records (
  id                 BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  direction          SMALLINT NOT NULL CHECK (direction IN (1, 2)),
  partner            TEXT     NOT NULL CHECK (partner <> ''),
  message_id         TEXT     NOT NULL CHECK (message_id <> ''),
  correlation_id     TEXT     NOT NULL,
  event_type         TEXT     NOT NULL,
  status             SMALLINT NOT NULL CHECK (status BETWEEN 1 AND 6),
  payload            BYTEA    NOT NULL,
  rendered           BYTEA    NOT NULL,
  error              TEXT     NOT NULL,
  attempts           BIGINT   NOT NULL,
  dry_run            BOOLEAN  NOT NULL,
  source             TEXT     NOT NULL,
  received_at        BIGINT   NOT NULL,
  updated_at         BIGINT   NOT NULL,
  maybe_delivered_as TEXT     NOT NULL DEFAULT '',
  UNIQUE (direction, partner, message_id)
);
CREATE INDEX ess_replay_records_by_correlation ON ess_replay_records (correlation_id);
CREATE INDEX ess_replay_records_by_updated ON ess_replay_records (updated_at, id);
CREATE INDEX ess_replay_records_by_partner_status_updated
  ON ess_replay_records (partner, status, updated_at, id);
CREATE INDEX ess_replay_records_by_partner_updated ON ess_replay_records (partner, updated_at, id);
)sql",
};
static_assert(std::size(kMigrations) == PostgresReplayStore::kSchemaVersion);

// Any 64-bit number, the same for every replica: the advisory lock of the schema's creation.
constexpr int64_t kMigrationLock = 0x455353'5245504C;  // "ESSREPL"

// Column order of every SELECT that RowToRecord reads.
constexpr absl::string_view kColumns =
    "id, direction, partner, message_id, correlation_id, event_type, status, payload, rendered, "
    "error, attempts, dry_run, source, received_at, updated_at, maybe_delivered_as";

#define ESS_INSERT_INTO                                                                    \
  "INSERT INTO ess_replay_records AS r (direction, partner, message_id, correlation_id, "  \
  "event_type, status, payload, rendered, error, attempts, dry_run, source, received_at, " \
  "updated_at, maybe_delivered_as) "
// One row.
constexpr absl::string_view kInsertColumns =
    ESS_INSERT_INTO "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ";
// Many rows: each parameter an array of one column (see ManyParams).
constexpr absl::string_view kInsertMany = ESS_INSERT_INTO
    "SELECT * FROM unnest($1::SMALLINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], "
    "$6::SMALLINT[], $7::BYTEA[], $8::BYTEA[], $9::TEXT[], $10::BIGINT[], $11::BOOLEAN[], "
    "$12::TEXT[], $13::BIGINT[], $14::BIGINT[], $15::TEXT[]) ";
#undef ESS_INSERT_INTO

// An inbound event once PUBLISHED is never marked FAILED (2: DIRECTION_INBOUND, 6: PUBLISHED,
// 4: FAILED); see the SQLite store's kUpsertSql for why.
constexpr absl::string_view kUpsertSql =
    "ON CONFLICT (direction, partner, message_id) DO UPDATE SET "
    "status = excluded.status, attempts = excluded.attempts, error = excluded.error, "
    "dry_run = excluded.dry_run, "
    "payload = CASE WHEN length(excluded.payload) > 0 THEN excluded.payload ELSE r.payload END, "
    "rendered = CASE WHEN length(excluded.rendered) > 0 THEN excluded.rendered "
    "ELSE r.rendered END, "
    "updated_at = excluded.updated_at, maybe_delivered_as = excluded.maybe_delivered_as "
    "WHERE NOT (r.direction = 2 AND r.status = 6 AND excluded.status = 4)";

// An imported record (Import) replaces a stored one only if it was updated later.
constexpr absl::string_view kImportSql =
    "ON CONFLICT (direction, partner, message_id) DO UPDATE SET "
    "correlation_id = excluded.correlation_id, event_type = excluded.event_type, "
    "status = excluded.status, payload = excluded.payload, rendered = excluded.rendered, "
    "error = excluded.error, attempts = excluded.attempts, dry_run = excluded.dry_run, "
    "source = excluded.source, received_at = excluded.received_at, "
    "updated_at = excluded.updated_at, maybe_delivered_as = excluded.maybe_delivered_as "
    "WHERE excluded.updated_at > r.updated_at RETURNING 1";

// Returns the status of `expr` from the enclosing function unless it is OK (#undef at the end).
#define STORE_RETURN_IF_ERROR(expr)           \
  do {                                        \
    if (absl::Status _s = (expr); !_s.ok()) { \
      return _s;                              \
    }                                         \
  } while (0)

MessageRecord RowToRecord(const pg::Result& rows, int r) {
  MessageRecord record;
  record.set_direction(static_cast<ess::v1::Direction>(rows.Int64(r, 1)));
  record.set_partner(std::string(rows.Text(r, 2)));
  record.set_message_id(std::string(rows.Text(r, 3)));
  record.set_correlation_id(std::string(rows.Text(r, 4)));
  record.set_event_type(std::string(rows.Text(r, 5)));
  record.set_status(static_cast<ess::v1::MessageStatus>(rows.Int64(r, 6)));
  record.set_payload(rows.Bytes(r, 7));
  record.set_rendered(rows.Bytes(r, 8));
  record.set_error(std::string(rows.Text(r, 9)));
  record.set_attempts(static_cast<uint32_t>(rows.Int64(r, 10)));
  record.set_dry_run(rows.Bool(r, 11));
  record.set_source(std::string(rows.Text(r, 12)));
  *record.mutable_received_at() = FromUnixMicros(rows.Int64(r, 13));
  *record.mutable_updated_at() = FromUnixMicros(rows.Int64(r, 14));
  record.set_maybe_delivered_as(std::string(rows.Text(r, 15)));
  return record;
}

// The indexes 0..n-1 ordered by the key that `key_of(i)` gives, equal keys in their given order.
// Every transaction writes its rows in this one order, so two replicas' batches over the same
// keys queue behind each other instead of deadlocking (which the server breaks only after
// deadlock_timeout, a second by default).
template <typename KeyOf>
std::vector<int> InKeyOrder(int n, KeyOf key_of) {
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    const auto& ka = key_of(a);
    const auto& kb = key_of(b);
    return std::forward_as_tuple(ka.direction(), ka.partner(), ka.message_id()) <
           std::forward_as_tuple(kb.direction(), kb.partner(), kb.message_id());
  });
  return order;
}

const std::string& SelectByKeySql() {
  static const std::string* const kSql = new std::string(
      absl::StrCat("SELECT ", kColumns,
                   " FROM ess_replay_records WHERE direction = $1 AND partner = $2 AND "
                   "message_id = $3"));
  return *kSql;
}

absl::StatusOr<std::optional<MessageRecord>> SelectByKey(pg::Connection& db,
                                                         const ess::v1::RecordKey& key) {
  absl::StatusOr<pg::Result> rows =
      db.Query(SelectByKeySql(), {int64_t{key.direction()}, absl::string_view(key.partner()),
                                  absl::string_view(key.message_id())});
  if (!rows.ok()) return rows.status();
  if (rows->rows() == 0) return std::nullopt;
  return RowToRecord(*rows, 0);
}

// The parameters of kInsertColumns for `r` stored with `status` at `now`.
std::vector<pg::Param> InsertParams(const MessageRecord& r, ess::v1::MessageStatus status,
                                    int64_t now) {
  return {int64_t{r.direction()},
          absl::string_view(r.partner()),
          absl::string_view(r.message_id()),
          absl::string_view(r.correlation_id()),
          absl::string_view(r.event_type()),
          int64_t{status},
          pg::Bytes{r.payload()},
          pg::Bytes{r.rendered()},
          absl::string_view(r.error()),
          int64_t{r.attempts()},
          r.dry_run(),
          absl::string_view(r.source()),
          rules::ReceivedAtOr(r, now),
          now,
          absl::string_view(r.maybe_delivered_as())};
}

// kInsertMany's parameters for the record `record_of(i)` for each i of `rows`, each stored
// with `status` (or its own) at `now` (or with its own received_at and updated_at): one array
// per column. INVALID_ARGUMENT "<name(i)>: ..." for text that an array cannot carry.
template <typename RecordOf, typename NameOf>
absl::StatusOr<std::vector<std::string>> ManyParams(const std::vector<int>& rows,
                                                    RecordOf record_of,
                                                    std::optional<ess::v1::MessageStatus> status_of,
                                                    std::optional<int64_t> now, NameOf name) {
  pg::Array direction, partner, message_id, correlation_id, event_type, status, payload, rendered,
      error, attempts, dry_run, source, received_at, updated_at, maybe_delivered_as;
  for (int i : rows) {
    const MessageRecord& r = record_of(i);
    direction.AddInt(r.direction());
    status.AddInt(status_of.value_or(r.status()));
    payload.AddBytes(r.payload());
    rendered.AddBytes(r.rendered());
    attempts.AddInt(r.attempts());
    dry_run.AddBool(r.dry_run());
    const int64_t at = now.has_value() ? *now : *ToUnixMicros(r.updated_at());
    received_at.AddInt(rules::ReceivedAtOr(r, at));
    updated_at.AddInt(at);
    const std::pair<pg::Array*, const std::string*> texts[] = {
        {&partner, &r.partner()},
        {&message_id, &r.message_id()},
        {&correlation_id, &r.correlation_id()},
        {&event_type, &r.event_type()},
        {&error, &r.error()},
        {&source, &r.source()},
        {&maybe_delivered_as, &r.maybe_delivered_as()}};
    for (const auto& [array, text] : texts) {
      if (absl::Status s = array->AddText(*text); !s.ok()) {
        return rules::WithPrefix(absl::StrCat(name(i), ": "), s);
      }
    }
  }
  std::vector<std::string> params;
  for (const pg::Array* a : {&direction, &partner, &message_id, &correlation_id, &event_type,
                             &status, &payload, &rendered, &error, &attempts, &dry_run, &source,
                             &received_at, &updated_at, &maybe_delivered_as}) {
    params.push_back(a->Literal());
  }
  return params;
}

// `order` (indexes sorted by the key that `key_of(i)` gives, equal keys adjacent) cut into
// rounds of distinct keys: the n-th index of a key goes into round n. Run one after another,
// the rounds apply each key's writes in their order, and a round can be one statement (an
// upsert or a joined update may not touch a row twice).
template <typename KeyOf>
std::vector<std::vector<int>> Rounds(const std::vector<int>& order, KeyOf key_of) {
  std::vector<std::vector<int>> rounds;
  size_t n = 0;  // this index's place among its key's
  for (size_t k = 0; k < order.size(); ++k) {
    if (k > 0) {
      const auto& a = key_of(order[k]);
      const auto& b = key_of(order[k - 1]);
      const bool same = a.direction() == b.direction() && a.partner() == b.partner() &&
                        a.message_id() == b.message_id();
      n = same ? n + 1 : 0;
    }
    if (rounds.size() <= n) rounds.emplace_back();
    rounds[n].push_back(order[k]);
  }
  return rounds;
}

const std::string& UpsertSql() {
  static const std::string* const kSql = new std::string(absl::StrCat(kInsertColumns, kUpsertSql));
  return *kSql;
}

absl::Status Migrate(pg::Connection& db) {
  STORE_RETURN_IF_ERROR(db.Exec("BEGIN"));
  absl::Status s = [&]() -> absl::Status {
    // Replicas that start together wait here for the first one's migration.
    STORE_RETURN_IF_ERROR(
        db.Query("SELECT pg_advisory_xact_lock($1)", {int64_t{kMigrationLock}}).status());
    STORE_RETURN_IF_ERROR(
        db.Exec("CREATE TABLE IF NOT EXISTS ess_replay_schema (version INTEGER NOT NULL)"));
    absl::StatusOr<pg::Result> row = db.Query("SELECT max(version) FROM ess_replay_schema");
    if (!row.ok()) return row.status();
    const int64_t version = row->IsNull(0, 0) ? 0 : row->Int64(0, 0);
    if (version > PostgresReplayStore::kSchemaVersion) {
      return absl::FailedPreconditionError(absl::StrCat("postgres: schema version ", version,
                                                        " is newer than this binary's (",
                                                        PostgresReplayStore::kSchemaVersion, ")"));
    }
    for (int64_t v = version; v < PostgresReplayStore::kSchemaVersion; ++v) {
      if (absl::Status m = db.Exec(kMigrations[v]); !m.ok()) {
        return rules::WithPrefix(absl::StrCat("migrating to schema ", v + 1, ": "), m);
      }
    }
    STORE_RETURN_IF_ERROR(db.Exec("DELETE FROM ess_replay_schema"));
    STORE_RETURN_IF_ERROR(db.Query("INSERT INTO ess_replay_schema (version) VALUES ($1)",
                                   {int64_t{PostgresReplayStore::kSchemaVersion}})
                              .status());
    return db.Exec("COMMIT");
  }();
  if (!s.ok() && !db.IsBroken()) db.Exec("ROLLBACK").IgnoreError();
  return s;
}

}  // namespace

// ---- Connections -------------------------------------------------------------------------

// A pooled connection, given back when it goes out of scope (dropped if the server ended it).
class PostgresReplayStore::Lease {
 public:
  Lease(PostgresReplayStore* store, std::unique_ptr<pg::Connection> c)
      : store_(store), c_(std::move(c)) {}
  Lease(Lease&& other) noexcept = default;
  Lease& operator=(Lease&&) = delete;
  ~Lease() {
    if (c_ != nullptr) store_->Release(std::move(c_));
  }
  pg::Connection& operator*() { return *c_; }
  pg::Connection* operator->() { return c_.get(); }

 private:
  PostgresReplayStore* store_;
  std::unique_ptr<pg::Connection> c_;
};

absl::StatusOr<std::unique_ptr<PostgresReplayStore>> PostgresReplayStore::Open(
    const std::string& conninfo, Options options) {
  if (conninfo.empty()) return absl::InvalidArgumentError("postgres: conninfo must not be empty");
  absl::StatusOr<pg::Connection> db = pg::Connection::Open(conninfo);
  if (!db.ok()) return db.status();
  STORE_RETURN_IF_ERROR(Migrate(*db));
  std::unique_ptr<PostgresReplayStore> store(new PostgresReplayStore(conninfo, std::move(options)));
  {
    absl::MutexLock lock(&store->mu_);
    store->open_ = 1;  // counted before Release, which uncounts it if the server ended it
  }
  store->Release(std::make_unique<pg::Connection>(*std::move(db)));
  return store;
}

PostgresReplayStore::PostgresReplayStore(std::string conninfo, Options options)
    : conninfo_(std::move(conninfo)), options_(std::move(options)) {}

PostgresReplayStore::~PostgresReplayStore() = default;

int64_t PostgresReplayStore::NowMicros() const {
  return absl::ToUnixMicros(options_.clock ? options_.clock() : absl::Now());
}

absl::StatusOr<PostgresReplayStore::Lease> PostgresReplayStore::Acquire() {
  const size_t max = std::max<size_t>(options_.max_connections, 1);
  {
    absl::MutexLock lock(&mu_);
    auto available = [&]()
                         ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !idle_.empty() || open_ < max; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&available), options_.acquire_timeout)) {
      return absl::UnavailableError(absl::StrCat("postgres: all ", max, " connections busy for ",
                                                 absl::FormatDuration(options_.acquire_timeout)));
    }
    if (!idle_.empty()) {
      std::unique_ptr<pg::Connection> c = std::move(idle_.back());
      idle_.pop_back();
      return Lease(this, std::move(c));
    }
    ++open_;  // this call's, opened below outside the lock
  }
  absl::StatusOr<pg::Connection> db = pg::Connection::Open(conninfo_);
  if (!db.ok()) {
    absl::MutexLock lock(&mu_);
    --open_;
    return db.status();
  }
  return Lease(this, std::make_unique<pg::Connection>(*std::move(db)));
}

void PostgresReplayStore::Release(std::unique_ptr<pg::Connection> c) {
  // A call that failed inside a transaction has rolled it back; this is the last guard.
  if (!c->IsBroken() && c->InTransaction()) c->Exec("ROLLBACK").IgnoreError();
  absl::MutexLock lock(&mu_);
  if (c->IsBroken()) {
    // Dropped, and so are the idle ones: a server that ended one connection (a restart, a
    // failover) most likely ended them all, and each would cost a call to find out.
    open_ -= 1 + idle_.size();
    idle_.clear();
    return;
  }
  idle_.push_back(std::move(c));
}

absl::Status PostgresReplayStore::InTransaction(
    absl::string_view begin, const std::function<absl::Status(pg::Connection&)>& body) {
  absl::StatusOr<Lease> db = Acquire();
  if (!db.ok()) return db.status();
  absl::Status s;
  for (int attempt = 1; attempt <= 3; ++attempt) {
    s = (*db)->Exec(begin);
    if (s.ok()) s = body(**db);
    if (s.ok()) s = (*db)->Exec("COMMIT");
    if (s.ok()) return s;
    if (!(*db)->IsBroken() && (*db)->InTransaction()) (*db)->Exec("ROLLBACK").IgnoreError();
    if (!absl::IsAborted(s)) return s;  // deadlock or serialization failure: again
  }
  return s;
}

// ---- Writes ------------------------------------------------------------------------------

absl::StatusOr<uint32_t> PostgresReplayStore::Record(
    const google::protobuf::RepeatedPtrField<MessageRecord>& records) {
  STORE_RETURN_IF_ERROR(rules::ValidateRecords(records));
  return Write(records, /*import=*/false);
}

absl::StatusOr<uint32_t> PostgresReplayStore::Import(
    const google::protobuf::RepeatedPtrField<MessageRecord>& records) {
  STORE_RETURN_IF_ERROR(rules::ValidateImport(records));
  return Write(records, /*import=*/true);
}

absl::StatusOr<uint32_t> PostgresReplayStore::Write(
    const google::protobuf::RepeatedPtrField<MessageRecord>& records, bool import) {
  if (records.empty()) return 0u;
  // Every record is an upsert (a status mark too: the upsert keeps the stored bytes), the whole
  // batch one statement per round of distinct keys (usually one), its columns as arrays.
  auto record_of = [&](int i) -> const MessageRecord& { return records[i]; };
  auto name_of = [](int i) { return absl::StrCat("records[", i, "]"); };
  std::vector<int> order = InKeyOrder(records.size(), record_of);
  std::vector<std::vector<int>> rounds = Rounds(order, record_of);
  if (import) {
    // In the given order instead: the rows' ids, which break ties of updated_at in List, keep
    // the source's order. Such a batch may deadlock with a lane's over the same keys (old ones,
    // for an import: rare); the server breaks it, and InTransaction runs the batch again.
    for (std::vector<int>& round : rounds) std::sort(round.begin(), round.end());
    std::sort(order.begin(), order.end());
  }
  const absl::string_view conflict = import ? kImportSql : kUpsertSql;
  static const std::string* const kUpsertManySql =
      new std::string(absl::StrCat(kInsertMany, kUpsertSql));
  static const std::string* const kImportManySql =
      new std::string(absl::StrCat(kInsertMany, kImportSql));
  uint32_t written = 0;
  absl::Status s = InTransaction("BEGIN", [&](pg::Connection& db) -> absl::Status {
    const int64_t now = NowMicros();
    written = 0;
    for (const std::vector<int>& round : rounds) {
      absl::StatusOr<std::vector<std::string>> columns =
          ManyParams(round, record_of, std::nullopt,
                     import ? std::nullopt : std::optional<int64_t>(now), name_of);
      if (!columns.ok()) return columns.status();
      absl::StatusOr<pg::Result> done =
          db.Query(import ? *kImportManySql : *kUpsertManySql,
                   std::vector<pg::Param>(columns->begin(), columns->end()));
      if (!done.ok()) return done.status();
      written += import ? static_cast<uint32_t>(done->rows()) : round.size();
    }
    return absl::OkStatus();
  });
  if (s.ok() || absl::IsInvalidArgument(s) || absl::IsUnavailable(s) || absl::IsAborted(s)) {
    STORE_RETURN_IF_ERROR(s);
    return written;
  }
  // The database refused a row (a constraint, a trigger): nothing was stored. The same batch
  // again, a statement per record in pipelines, says which one.
  const std::string one_sql = absl::StrCat(kInsertColumns, conflict);
  STORE_RETURN_IF_ERROR(InTransaction("BEGIN", [&](pg::Connection& db) -> absl::Status {
    const int64_t now = NowMicros();
    std::vector<std::vector<pg::Param>> params;
    params.reserve(order.size());
    for (int i : order) {
      const MessageRecord& r = records[i];
      params.push_back(InsertParams(r, r.status(), import ? *ToUnixMicros(r.updated_at()) : now));
    }
    size_t failed = 0;
    absl::StatusOr<std::vector<pg::Result>> done = db.Pipeline(one_sql, params, &failed);
    if (!done.ok()) {
      return rules::WithPrefix(absl::StrCat(name_of(order[failed]), ": "), done.status());
    }
    written = 0;
    for (const pg::Result& row : *done) written += import ? row.rows() : 1;
    return absl::OkStatus();
  }));
  return written;
}

absl::StatusOr<std::vector<ess::v1::ClaimOutcome>> PostgresReplayStore::Claim(
    const google::protobuf::RepeatedPtrField<ess::v1::Claim>& claims) {
  STORE_RETURN_IF_ERROR(rules::ValidateClaims(claims));
  std::vector<ess::v1::ClaimOutcome> outcomes;
  if (claims.empty()) return outcomes;
  static const std::string* const kInsertNewSql = new std::string(
      absl::StrCat(kInsertColumns, "ON CONFLICT (direction, partner, message_id) DO NOTHING"));
  static const std::string* const kInsertManyNewSql =
      new std::string(absl::StrCat(kInsertMany,
                                   "ON CONFLICT (direction, partner, message_id) DO NOTHING "
                                   "RETURNING direction, partner, message_id"));
  auto record_of = [&](int i) -> const MessageRecord& { return claims[i].record(); };
  auto name_of = [](int i) { return absl::StrCat("claims[", i, "].record"); };
  const std::vector<int> order = InKeyOrder(claims.size(), record_of);
  // A new key is claimed by its insert (which waits for a replica inserting it meanwhile):
  // every claim's insert goes first, as one statement (`batched`) or as one per claim, which
  // names the claim a refused insert was. The claims whose key was there already are then
  // decided one by one, in the same order, so a claim of a key that an earlier claim of this
  // call stored sees that record, as if each claim ran whole before the next.
  auto claim = [&](bool batched) {
    return [&, batched](pg::Connection& db) -> absl::Status {
      outcomes.assign(claims.size(), ess::v1::CLAIM_OUTCOME_UNSPECIFIED);
      const int64_t now = NowMicros();
      std::vector<bool> inserted(order.size(), false);  // by place in `order`
      if (batched) {
        absl::StatusOr<std::vector<std::string>> columns =
            ManyParams(order, record_of, ess::v1::MESSAGE_STATUS_RECEIVED, now, name_of);
        if (!columns.ok()) return columns.status();
        absl::StatusOr<pg::Result> rows =
            db.Query(*kInsertManyNewSql, std::vector<pg::Param>(columns->begin(), columns->end()));
        if (!rows.ok()) return rows.status();
        // Each inserted key is its first claim's (equal keys are adjacent in `order`).
        for (int r = 0; r < rows->rows(); ++r) {
          const auto key = std::make_tuple(rows->Int64(r, 0), rows->Text(r, 1), rows->Text(r, 2));
          auto first = std::lower_bound(order.begin(), order.end(), key, [&](int i, const auto& k) {
            const MessageRecord& a = record_of(i);
            return std::make_tuple(int64_t{a.direction()}, absl::string_view(a.partner()),
                                   absl::string_view(a.message_id())) < k;
          });
          if (first == order.end() || record_of(*first).message_id() != std::get<2>(key)) {
            return absl::InternalError("claim: the database inserted a key no claim has");
          }
          inserted[first - order.begin()] = true;
        }
      } else {
        std::vector<std::vector<pg::Param>> params;
        params.reserve(order.size());
        for (int i : order) {
          params.push_back(InsertParams(record_of(i), ess::v1::MESSAGE_STATUS_RECEIVED, now));
        }
        size_t failed = 0;
        absl::StatusOr<std::vector<pg::Result>> done = db.Pipeline(*kInsertNewSql, params, &failed);
        if (!done.ok()) {
          return rules::WithPrefix(absl::StrCat(name_of(order[failed]), ": "), done.status());
        }
        for (size_t k = 0; k < order.size(); ++k) inserted[k] = (*done)[k].affected() > 0;
      }
      for (size_t k = 0; k < order.size(); ++k) {
        const int i = order[k];
        if (inserted[k]) {
          outcomes[i] = ess::v1::CLAIM_OUTCOME_CLAIMED;
          continue;
        }
        // The key is stored: what it holds now decides, with its row locked until the commit.
        const MessageRecord& r = record_of(i);
        const std::string prefix = absl::StrCat(name_of(i), ": ");
        absl::StatusOr<pg::Result> state = db.Query(
            "SELECT status, updated_at FROM ess_replay_records "
            "WHERE direction = $1 AND partner = $2 AND message_id = $3 FOR UPDATE",
            {int64_t{r.direction()}, absl::string_view(r.partner()),
             absl::string_view(r.message_id())});
        if (!state.ok()) return rules::WithPrefix(prefix, state.status());
        ess::v1::ClaimOutcome outcome = ess::v1::CLAIM_OUTCOME_CLAIMED;
        if (state->rows() > 0) {
          outcome = rules::ClaimOfStored(claims[i],
                                         static_cast<ess::v1::MessageStatus>(state->Int64(0, 0)),
                                         state->Int64(0, 1), now);
        }
        if (outcome == ess::v1::CLAIM_OUTCOME_CLAIMED) {
          absl::StatusOr<pg::Result> upserted =
              db.Query(UpsertSql(), InsertParams(r, ess::v1::MESSAGE_STATUS_RECEIVED, now));
          if (!upserted.ok()) return rules::WithPrefix(prefix, upserted.status());
        }
        outcomes[i] = outcome;
      }
      return absl::OkStatus();
    };
  };
  absl::Status s = InTransaction("BEGIN", claim(/*batched=*/true));
  if (s.ok() || absl::IsInvalidArgument(s) || absl::IsUnavailable(s) || absl::IsAborted(s)) {
    STORE_RETURN_IF_ERROR(s);
    return outcomes;
  }
  // The database refused an insert (a constraint, a trigger): nothing was stored. The same
  // claims again, an insert per claim, say which one.
  STORE_RETURN_IF_ERROR(InTransaction("BEGIN", claim(/*batched=*/false)));
  return outcomes;
}

absl::Status PostgresReplayStore::RefreshStatistics() {
  absl::StatusOr<Lease> db = Acquire();
  if (!db.ok()) return db.status();
  return (*db)->Exec("ANALYZE ess_replay_records");
}

absl::StatusOr<MessageRecord> PostgresReplayStore::UpdateStatus(
    const ess::v1::UpdateStatusRequest& request) {
  STORE_RETURN_IF_ERROR(rules::ValidateUpdate(request));
  absl::StatusOr<Lease> db = Acquire();
  if (!db.ok()) return db.status();
  static const std::string* const kSql = new std::string(
      absl::StrCat("UPDATE ess_replay_records SET status = $1, error = $2, updated_at = $3 "
                   "WHERE direction = $4 AND partner = $5 AND message_id = $6 RETURNING ",
                   kColumns));
  absl::StatusOr<pg::Result> row = (*db)->Query(
      *kSql, {int64_t{request.status()}, absl::string_view(request.error()), NowMicros(),
              int64_t{request.direction()}, absl::string_view(request.partner()),
              absl::string_view(request.message_id())});
  if (!row.ok()) return row.status();
  if (row->rows() == 0) {
    return rules::NoRecord(request.direction(), request.partner(), request.message_id());
  }
  return RowToRecord(*row, 0);
}

absl::StatusOr<MarkedReplays> PostgresReplayStore::MarkReplayed(
    const std::vector<ReplayMark>& marks) {
  STORE_RETURN_IF_ERROR(rules::ValidateMarks(marks));
  MarkedReplays marked;
  std::vector<bool>& changed = marked.changed;
  if (marks.empty()) return marked;
  // One statement per round of distinct keys (usually one): the rows that still hold what each
  // mark expects are locked in key order, as every transaction of the store locks them, and
  // marked; it returns the marks that changed a row.
  static const std::string* const kMarkSql = new std::string(
      "WITH m AS (SELECT * FROM unnest($2::SMALLINT[], $3::TEXT[], $4::TEXT[], $5::SMALLINT[], "
      "$6::BIGINT[], $7::SMALLINT[], $8::INTEGER[], $9::TEXT[]) "
      "AS m(direction, partner, message_id, expected_status, expected_updated_at, status, i, "
      "error)), "
      "locked AS (SELECT r.id, m.status, m.i, m.error FROM ess_replay_records AS r JOIN m ON "
      "r.direction = m.direction AND r.partner = m.partner AND r.message_id = m.message_id AND "
      "r.status = m.expected_status AND r.updated_at = m.expected_updated_at "
      "ORDER BY r.direction, r.partner COLLATE \"C\", r.message_id COLLATE \"C\" FOR UPDATE OF r) "
      "UPDATE ess_replay_records AS r SET status = locked.status, error = locked.error, "
      "updated_at = $1 "
      "FROM locked WHERE r.id = locked.id RETURNING locked.i");
  const std::vector<int> order =
      InKeyOrder(static_cast<int>(marks.size()),
                 [&](int i) -> const ess::v1::RecordKey& { return marks[i].key; });
  const std::vector<std::vector<int>> rounds =
      Rounds(order, [&](int i) -> const ess::v1::RecordKey& { return marks[i].key; });
  STORE_RETURN_IF_ERROR(InTransaction("BEGIN", [&](pg::Connection& db) -> absl::Status {
    const int64_t now = NowMicros();
    marked.updated_at_micros = now;
    changed.assign(marks.size(), false);
    for (const std::vector<int>& round : rounds) {
      pg::Array direction, partner, message_id, expected_status, expected_updated_at, status, index,
          error;
      for (int i : round) {
        const ReplayMark& mark = marks[i];
        direction.AddInt(mark.key.direction());
        expected_status.AddInt(mark.expected_status);
        expected_updated_at.AddInt(mark.expected_updated_at_micros);
        status.AddInt(mark.status);
        index.AddInt(i);
        for (const auto& [array, text] :
             {std::pair{&partner, &mark.key.partner()},
              std::pair{&message_id, &mark.key.message_id()}, std::pair{&error, &mark.error}}) {
          if (absl::Status s = array->AddText(*text); !s.ok()) {
            return rules::WithPrefix(absl::StrCat("marks[", i, "]: "), s);
          }
        }
      }
      absl::StatusOr<pg::Result> updated =
          db.Query(*kMarkSql, {now, direction.Literal(), partner.Literal(), message_id.Literal(),
                               expected_status.Literal(), expected_updated_at.Literal(),
                               status.Literal(), index.Literal(), error.Literal()});
      if (!updated.ok()) return updated.status();
      for (int r = 0; r < updated->rows(); ++r) changed[updated->Int64(r, 0)] = true;
    }
    return absl::OkStatus();
  }));
  return marked;
}

absl::StatusOr<uint64_t> PostgresReplayStore::Purge(const RetentionPolicy& policy) {
  // Settled: DELIVERED (2), DRY_RUN (3), PUBLISHED (6).
  static_assert(ess::v1::MESSAGE_STATUS_DELIVERED == 2 && ess::v1::MESSAGE_STATUS_DRY_RUN == 3 &&
                ess::v1::MESSAGE_STATUS_PUBLISHED == 6);
  const int64_t batch = static_cast<int64_t>(std::max<size_t>(policy.batch, 1));
  uint64_t purged = 0;
  absl::StatusOr<Lease> db = Acquire();
  if (!db.ok()) return db.status();
  // Runs `sql` (a DELETE of at most $2 rows) until it deletes fewer than that; each run is a
  // transaction of its own, so the lanes' writes wait little.
  auto drain = [&](absl::string_view sql, const std::vector<pg::Param>& params) -> absl::Status {
    for (;;) {
      absl::StatusOr<pg::Result> deleted = (*db)->Query(sql, params);
      if (!deleted.ok()) return deleted.status();
      purged += static_cast<uint64_t>(deleted->affected());
      if (deleted->affected() < batch) return absl::OkStatus();
    }
  };
  const int64_t now = NowMicros();
  const int64_t protect_before = now - absl::ToInt64Microseconds(policy.min_age);
  if (policy.max_age > absl::ZeroDuration()) {
    const int64_t before =
        std::min(protect_before, now - absl::ToInt64Microseconds(policy.max_age));
    STORE_RETURN_IF_ERROR(
        drain("DELETE FROM ess_replay_records WHERE id IN (SELECT id FROM ess_replay_records "
              "WHERE updated_at < $1 AND status IN (2, 3, 6) LIMIT $2)",
              {before, batch}));
  }
  if (policy.max_per_partner > 0) {
    // Per (partner, direction): the position of its max_per_partner-th newest settled record,
    // read once; then everything settled older than that position goes. Outbound first: a
    // confirmation (inbound PUBLISHED, 2 and 6) stays while its correlation id has an outbound
    // record (1), or the delivery it confirms would look unconfirmed (drift alerts,
    // --unconfirmed); the same sweep then takes those whose delivery it evicted.
    absl::StatusOr<pg::Result> groups = (*db)->Query(
        "SELECT DISTINCT partner, direction FROM ess_replay_records ORDER BY direction");
    if (!groups.ok()) return groups.status();
    for (int g = 0; g < groups->rows(); ++g) {
      const std::string partner(groups->Text(g, 0));
      const int64_t direction = groups->Int64(g, 1);
      absl::StatusOr<pg::Result> nth = (*db)->Query(
          "SELECT updated_at, id FROM ess_replay_records WHERE partner = $1 AND direction = $2 "
          "AND status IN (2, 3, 6) ORDER BY updated_at DESC, id DESC LIMIT 1 OFFSET $3",
          {absl::string_view(partner), direction,
           static_cast<int64_t>(policy.max_per_partner - 1)});
      if (!nth.ok()) return nth.status();
      if (nth->rows() == 0) continue;
      STORE_RETURN_IF_ERROR(
          drain("DELETE FROM ess_replay_records WHERE id IN (SELECT id FROM ess_replay_records "
                "WHERE partner = $3 AND direction = $4 AND status IN (2, 3, 6) "
                "AND (updated_at, id) < ($5::BIGINT, $6::BIGINT) AND updated_at < $1 AND NOT "
                "(direction = 2 AND status = 6 AND EXISTS (SELECT 1 FROM ess_replay_records AS o "
                "WHERE o.correlation_id = ess_replay_records.correlation_id AND o.direction = 1)) "
                "LIMIT $2)",
                {protect_before, batch, absl::string_view(partner), direction, nth->Int64(0, 0),
                 nth->Int64(0, 1)}));
    }
  }
  return purged;
}

// ---- Reads -------------------------------------------------------------------------------

absl::StatusOr<MessageRecord> PostgresReplayStore::GetByKey(const ess::v1::RecordKey& key) {
  STORE_RETURN_IF_ERROR(ValidateKey(key.direction(), key.partner(), key.message_id(), ""));
  absl::StatusOr<Lease> db = Acquire();
  if (!db.ok()) return db.status();
  absl::StatusOr<std::optional<MessageRecord>> record = SelectByKey(**db, key);
  if (!record.ok()) return record.status();
  if (!record->has_value()) {
    return rules::NoRecord(key.direction(), key.partner(), key.message_id());
  }
  return **std::move(record);
}

absl::StatusOr<std::vector<std::optional<MessageRecord>>> PostgresReplayStore::GetByKeys(
    const google::protobuf::RepeatedPtrField<ess::v1::RecordKey>& keys) {
  STORE_RETURN_IF_ERROR(rules::ValidateKeys(keys));
  std::vector<std::optional<MessageRecord>> records;
  if (keys.empty()) return records;
  // One snapshot for every key.
  STORE_RETURN_IF_ERROR(InTransaction(
      "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", [&](pg::Connection& db) -> absl::Status {
        std::vector<std::vector<pg::Param>> params;
        params.reserve(keys.size());
        for (const ess::v1::RecordKey& key : keys) {
          params.push_back({int64_t{key.direction()}, absl::string_view(key.partner()),
                            absl::string_view(key.message_id())});
        }
        size_t failed = 0;
        absl::StatusOr<std::vector<pg::Result>> rows =
            db.Pipeline(SelectByKeySql(), params, &failed);
        if (!rows.ok()) {
          return rules::WithPrefix(absl::StrCat("keys[", failed, "]: "), rows.status());
        }
        records.clear();
        for (const pg::Result& row : *rows) {
          if (row.rows() == 0) {
            records.push_back(std::nullopt);
          } else {
            records.push_back(RowToRecord(row, 0));
          }
        }
        return absl::OkStatus();
      }));
  return records;
}

absl::StatusOr<std::vector<MessageRecord>> PostgresReplayStore::GetByCorrelation(
    absl::string_view correlation_id) {
  absl::StatusOr<Lease> db = Acquire();
  if (!db.ok()) return db.status();
  static const std::string* const kSql = new std::string(
      absl::StrCat("SELECT ", kColumns,
                   " FROM ess_replay_records WHERE correlation_id = $1 ORDER BY received_at, id"));
  absl::StatusOr<pg::Result> rows = (*db)->Query(*kSql, {correlation_id});
  if (!rows.ok()) return rows.status();
  std::vector<MessageRecord> records;
  records.reserve(rows->rows());
  for (int r = 0; r < rows->rows(); ++r) records.push_back(RowToRecord(*rows, r));
  return records;
}

absl::StatusOr<ListPage> PostgresReplayStore::List(const ListQuery& query) {
  std::string where = "TRUE";
  std::vector<pg::Param> params;
  auto condition = [&](absl::string_view clause, pg::Param value) {
    params.push_back(std::move(value));
    absl::StrAppend(&where, " AND ", clause, " $", params.size());
  };
  if (!query.partner.empty()) condition("partner =", absl::string_view(query.partner));
  if (query.direction != ess::v1::DIRECTION_UNSPECIFIED) {
    condition("direction =", int64_t{query.direction});
  }
  if (query.status != ess::v1::MESSAGE_STATUS_UNSPECIFIED) {
    condition("status =", int64_t{query.status});
  }
  if (!query.event_type.empty()) condition("event_type =", absl::string_view(query.event_type));
  if (!query.correlation_id.empty()) {
    condition("correlation_id =", absl::string_view(query.correlation_id));
  }
  if (query.since_micros.has_value()) condition("updated_at >=", *query.since_micros);
  if (query.until_micros.has_value()) condition("updated_at <", *query.until_micros);
  if (query.received_since_micros.has_value()) {
    condition("received_at >=", *query.received_since_micros);
  }
  if (query.received_until_micros.has_value()) {
    condition("received_at <", *query.received_until_micros);
  }
  if (query.unconfirmed) {
    absl::StrAppend(&where,
                    " AND NOT EXISTS (SELECT 1 FROM ess_replay_records AS c WHERE "
                    "c.correlation_id = ess_replay_records.correlation_id AND c.direction = 2 AND "
                    "c.status = 6 AND c.updated_at >= "
                    "ess_replay_records.received_at)");
  }
  if (query.after.has_value()) {
    params.push_back(query.after->updated_at_micros);
    params.push_back(query.after->id);
    absl::StrAppend(&where, " AND (updated_at, id) ", query.oldest_first ? ">" : "<", " ($",
                    params.size() - 1, "::BIGINT, $", params.size(), "::BIGINT)");
  }
  const size_t limit = query.limit > 0 ? query.limit : 1;
  params.push_back(static_cast<int64_t>(limit) + 1);  // one more tells whether a page follows
  const std::string sql = absl::StrCat(
      "SELECT ", kColumns, " FROM ess_replay_records WHERE ", where,
      query.oldest_first ? " ORDER BY updated_at, id" : " ORDER BY updated_at DESC, id DESC",
      " LIMIT $", params.size());

  absl::StatusOr<Lease> db = Acquire();
  if (!db.ok()) return db.status();
  absl::StatusOr<pg::Result> rows = (*db)->Query(sql, params);
  if (!rows.ok()) return rows.status();
  ListPage page;
  page.records.reserve(std::min<size_t>(limit, static_cast<size_t>(rows->rows())));
  ListCursor last;
  size_t bytes = 0;
  for (int r = 0; r < rows->rows(); ++r) {
    if (page.records.size() == limit) {
      page.next = last;
      break;
    }
    MessageRecord record = RowToRecord(*rows, r);
    const size_t row_bytes = record.payload().size() + record.rendered().size();
    if (query.max_bytes > 0 && !page.records.empty() && bytes + row_bytes > query.max_bytes) {
      page.next = last;
      break;
    }
    bytes += row_bytes;
    last = {.updated_at_micros = rows->Int64(r, 14), .id = rows->Int64(r, 0)};
    page.records.push_back(std::move(record));
  }
  return page;
}

absl::StatusOr<std::vector<ess::v1::PartnerStats>> PostgresReplayStore::Stats(
    absl::string_view partner) {
  absl::StatusOr<Lease> db = Acquire();
  if (!db.ok()) return db.status();
  auto count = [](ess::v1::MessageStatus status) {
    return absl::StrCat("COUNT(*) FILTER (WHERE status = ", status, ")");
  };
  static const std::string* const kSql = new std::string(absl::StrCat(
      "SELECT partner, direction, ", count(ess::v1::MESSAGE_STATUS_RECEIVED), ", ",
      count(ess::v1::MESSAGE_STATUS_DELIVERED), ", ", count(ess::v1::MESSAGE_STATUS_DRY_RUN), ", ",
      count(ess::v1::MESSAGE_STATUS_FAILED), ", ", count(ess::v1::MESSAGE_STATUS_DEAD), ", ",
      count(ess::v1::MESSAGE_STATUS_PUBLISHED), ", MIN(received_at) FILTER (WHERE status IN (",
      ess::v1::MESSAGE_STATUS_RECEIVED, ", ", ess::v1::MESSAGE_STATUS_FAILED, ", ",
      ess::v1::MESSAGE_STATUS_DEAD,
      ")) FROM ess_replay_records WHERE $1::TEXT = '' OR partner = $1::TEXT "
      "GROUP BY partner, direction ORDER BY partner COLLATE \"C\", direction"));
  absl::StatusOr<pg::Result> rows = (*db)->Query(*kSql, {partner});
  if (!rows.ok()) return rows.status();
  std::vector<ess::v1::PartnerStats> stats;
  for (int r = 0; r < rows->rows(); ++r) {
    ess::v1::PartnerStats& p = stats.emplace_back();
    p.set_partner(std::string(rows->Text(r, 0)));
    p.set_direction(static_cast<ess::v1::Direction>(rows->Int64(r, 1)));
    p.set_received(static_cast<uint64_t>(rows->Int64(r, 2)));
    p.set_delivered(static_cast<uint64_t>(rows->Int64(r, 3)));
    p.set_dry_run(static_cast<uint64_t>(rows->Int64(r, 4)));
    p.set_failed(static_cast<uint64_t>(rows->Int64(r, 5)));
    p.set_dead(static_cast<uint64_t>(rows->Int64(r, 6)));
    p.set_published(static_cast<uint64_t>(rows->Int64(r, 7)));
    if (!rows->IsNull(r, 8)) *p.mutable_oldest_pending() = FromUnixMicros(rows->Int64(r, 8));
    rules::SetSuccessRate(p);
  }
  return stats;
}

absl::StatusOr<UnconfirmedDeliveries> PostgresReplayStore::CountUnconfirmed(
    absl::string_view partner, int64_t since_micros, int64_t until_micros) {
  absl::StatusOr<Lease> db = Acquire();
  if (!db.ok()) return db.status();
  static const std::string* const kSql = new std::string(absl::StrCat(
      "SELECT COUNT(*), MIN(updated_at) FROM ess_replay_records WHERE partner = $1 AND status = ",
      ess::v1::MESSAGE_STATUS_DELIVERED, " AND updated_at >= $2 AND updated_at < $3",
      " AND direction = ", ess::v1::DIRECTION_OUTBOUND,
      " AND NOT EXISTS (SELECT 1 FROM ess_replay_records AS c WHERE c.correlation_id = "
      "ess_replay_records.correlation_id AND c.direction = ",
      ess::v1::DIRECTION_INBOUND, " AND c.status = ", ess::v1::MESSAGE_STATUS_PUBLISHED,
      " AND c.updated_at >= ess_replay_records.received_at)"));
  absl::StatusOr<pg::Result> row = (*db)->Query(*kSql, {partner, since_micros, until_micros});
  if (!row.ok()) return row.status();
  if (row->rows() == 0) return absl::InternalError("counting unconfirmed deliveries gave no row");
  UnconfirmedDeliveries found;
  found.count = static_cast<uint64_t>(row->Int64(0, 0));
  if (!row->IsNull(0, 1)) found.oldest_micros = row->Int64(0, 1);
  return found;
}

}  // namespace ess::replay

#undef STORE_RETURN_IF_ERROR
