// ReplayStore on an embedded SQLite file (WAL mode): the default backend of replay_svc.
//
// One writer connection, serialised by a mutex, does every write; each batch is one
// transaction through statements prepared once. Reads run on a small pool of separate
// connections, so they do not wait for writes (WAL readers see the last committed state).
// The schema is created on open and versioned with PRAGMA user_version; a file written by a
// newer schema is refused.
//
//   absl::StatusOr<std::unique_ptr<SqliteReplayStore>> store =
//       SqliteReplayStore::Open("/var/lib/ess/replay.db");
#ifndef ESS_REPLAY_SVC_SQLITE_REPLAY_STORE_H_
#define ESS_REPLAY_SVC_SQLITE_REPLAY_STORE_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/sqlite.h"
#include "replay_svc/replay_store.h"

namespace ess::replay {

class SqliteReplayStore final : public ReplayStore {
 public:
  // The schema this binary writes (PRAGMA user_version).
  static constexpr int kSchemaVersion = 4;

  struct Options {
    // The time written as updated_at (and as received_at when a record has none); absl::Now
    // when empty. Tests pass a fake clock.
    std::function<absl::Time()> clock;
    // How long a connection waits for another process holding the file's lock.
    int busy_timeout_ms = 5000;
    // Reader connections kept open between reads.
    size_t max_idle_readers = 4;
    // Commits wait for the disk (replay.full_sync).
    bool full_sync = false;
  };

  // Opens (creating if needed) the database file at `path`, whose folder must exist.
  // INVALID_ARGUMENT for an empty path, NOT_FOUND if the file cannot be opened,
  // FAILED_PRECONDITION if it holds a newer schema or cannot use WAL (e.g. ":memory:").
  static absl::StatusOr<std::unique_ptr<SqliteReplayStore>> Open(const std::string& path,
                                                                 Options options);
  static absl::StatusOr<std::unique_ptr<SqliteReplayStore>> Open(const std::string& path) {
    return Open(path, Options());
  }

  ~SqliteReplayStore() override;

  absl::StatusOr<uint32_t> Record(
      const google::protobuf::RepeatedPtrField<ess::v1::MessageRecord>& records) override;
  absl::StatusOr<uint32_t> Import(
      const google::protobuf::RepeatedPtrField<ess::v1::MessageRecord>& records) override;
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
  struct Writer;
  struct Reader;
  class ReaderLease;

  SqliteReplayStore(std::string path, Options options, std::unique_ptr<Writer> writer);

  int64_t NowMicros() const;
  // Inserts or updates one record with `status`, inside the caller's write transaction.
  absl::Status Upsert(const ess::v1::MessageRecord& record, ess::v1::MessageStatus status,
                      int64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // Upsert's update of an existing row for a record without bytes; false if there is no row.
  absl::StatusOr<bool> Mark(const ess::v1::MessageRecord& record, ess::v1::MessageStatus status,
                            int64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // Binds `record` with `status` to `insert` (kUpsertSql or kInsertNewSql) and runs it.
  absl::Status Insert(sqlite::Statement& insert, const ess::v1::MessageRecord& record,
                      ess::v1::MessageStatus status, int64_t now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  absl::StatusOr<ReaderLease> AcquireReader();
  void ReleaseReader(std::unique_ptr<Reader> reader);

  const std::string path_;
  const Options options_;

  absl::Mutex write_mu_;
  const std::unique_ptr<Writer> writer_ ABSL_PT_GUARDED_BY(write_mu_);

  absl::Mutex readers_mu_;
  std::vector<std::unique_ptr<Reader>> idle_readers_ ABSL_GUARDED_BY(readers_mu_);
};

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_SQLITE_REPLAY_STORE_H_
