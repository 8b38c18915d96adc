// ReplayStore on PostgreSQL (replay.postgres): the shared backend, for several replay_svc
// replicas over one database. Every guarantee of replay_store.h holds across replicas:
// batches are transactions, a claim locks its key's row (SELECT ... FOR UPDATE) so two replicas
// never both claim one id, and a transaction the server aborts for a deadlock or a
// serialization failure is run again (up to 3 times).
//
// Connections come from a small pool, opened on demand and dropped when the server ends them
// (the next call opens a new one), so a restart of PostgreSQL costs the calls in flight, not
// the process. The schema lives in the connection's search_path (tables ess_replay_records and
// ess_replay_schema), created on open and versioned; a database written by a newer schema is
// refused. Concurrent opens of an empty database take an advisory lock, so exactly one
// creates it.
//
//   absl::StatusOr<std::unique_ptr<PostgresReplayStore>> store =
//       PostgresReplayStore::Open("host=db port=5432 dbname=ess user=ess");
#ifndef ESS_REPLAY_SVC_POSTGRES_REPLAY_STORE_H_
#define ESS_REPLAY_SVC_POSTGRES_REPLAY_STORE_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/postgres.h"
#include "replay_svc/replay_store.h"

namespace ess::replay {

class PostgresReplayStore final : public ReplayStore {
 public:
  // The schema this binary writes (ess_replay_schema.version).
  static constexpr int kSchemaVersion = 1;

  struct Options {
    // The time written as updated_at (and as received_at when a record has none); absl::Now
    // when empty. Tests pass a fake clock. Replicas should keep their clocks in step (NTP):
    // updated_at orders List pages and the retention's age.
    std::function<absl::Time()> clock;
    // Connections open at once, at most.
    size_t max_connections = 8;
    // How long a call waits for a connection when all are busy before UNAVAILABLE.
    absl::Duration acquire_timeout = absl::Seconds(5);
  };

  // Connects with `conninfo` (a libpq connection string or postgresql:// URI), then creates or
  // checks the schema. INVALID_ARGUMENT for an empty conninfo, UNAVAILABLE if the server cannot
  // be reached, FAILED_PRECONDITION if the database holds a newer schema.
  static absl::StatusOr<std::unique_ptr<PostgresReplayStore>> Open(const std::string& conninfo,
                                                                   Options options);
  static absl::StatusOr<std::unique_ptr<PostgresReplayStore>> Open(const std::string& conninfo) {
    return Open(conninfo, Options());
  }

  ~PostgresReplayStore() override;

  absl::StatusOr<uint32_t> Record(
      const google::protobuf::RepeatedPtrField<ess::v1::MessageRecord>& records) override;
  absl::StatusOr<uint32_t> Import(
      const google::protobuf::RepeatedPtrField<ess::v1::MessageRecord>& records) override;
  // ANALYZE: a table filled seconds ago has no statistics until autovacuum's, and the planner
  // then takes a partner's records for a handful (bench/README.md, Profiling 49).
  absl::Status RefreshStatistics() override;
  absl::StatusOr<ess::v1::MessageRecord> UpdateStatus(
      const ess::v1::UpdateStatusRequest& request) override;
  absl::StatusOr<std::vector<ess::v1::ClaimOutcome>> Claim(
      const google::protobuf::RepeatedPtrField<ess::v1::Claim>& claims) override;
  absl::StatusOr<ess::v1::MessageRecord> GetByKey(const ess::v1::RecordKey& key) override;
  absl::StatusOr<std::vector<std::optional<ess::v1::MessageRecord>>> GetByKeys(
      const google::protobuf::RepeatedPtrField<ess::v1::RecordKey>& keys) override;
  absl::StatusOr<std::vector<ess::v1::MessageRecord>> GetByCorrelation(
      absl::string_view correlation_id) override;
  absl::StatusOr<ListPage> List(const ListQuery& query) override;
  absl::StatusOr<MarkedReplays> MarkReplayed(const std::vector<ReplayMark>& marks) override;
  absl::StatusOr<uint64_t> Purge(const RetentionPolicy& policy) override;
  absl::StatusOr<std::vector<ess::v1::PartnerStats>> Stats(absl::string_view partner) override;
  absl::StatusOr<UnconfirmedDeliveries> CountUnconfirmed(absl::string_view partner,
                                                         int64_t since_micros,
                                                         int64_t until_micros) override;

 private:
  class Lease;

  PostgresReplayStore(std::string conninfo, Options options);

  int64_t NowMicros() const;
  // Record's writes, or (`import`) Import's; the records are valid.
  absl::StatusOr<uint32_t> Write(
      const google::protobuf::RepeatedPtrField<ess::v1::MessageRecord>& records, bool import);
  absl::StatusOr<Lease> Acquire();
  void Release(std::unique_ptr<pg::Connection> connection);
  // Runs `body` between BEGIN (`begin`, e.g. "BEGIN" or a read-only snapshot) and COMMIT on one
  // connection; ROLLBACK if it fails. A deadlock or serialization failure runs it again, up to
  // three times in all, so `body` must start from scratch each time.
  absl::Status InTransaction(absl::string_view begin,
                             const std::function<absl::Status(pg::Connection&)>& body);

  const std::string conninfo_;
  const Options options_;

  absl::Mutex mu_;
  std::vector<std::unique_ptr<pg::Connection>> idle_ ABSL_GUARDED_BY(mu_);
  size_t open_ ABSL_GUARDED_BY(mu_) = 0;  // idle and leased
};

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_POSTGRES_REPLAY_STORE_H_
