// The storage behind ReplayService, as one small interface so that backends can be swapped:
// embedded SQLite (sqlite_replay_store.h) by default; a shared PostgreSQL one where several
// replicas must see the same records.
//
// Records are keyed by (direction, partner, message_id). Every backend guarantees:
//   - Record() is all-or-none: either every record of the batch is stored or none is.
//   - Upsert: recording an existing key updates status, attempts, error, dry_run, payload and
//     rendered (an empty payload/rendered keeps the stored bytes), and keeps the first
//     received_at, correlation_id, event_type and source. An unset received_at is taken as now.
//   - updated_at is set by the store on every write, from its clock.
//   - Every method is safe to call from several threads at once.
// Inputs are validated again (see records.h), so a bad record is INVALID_ARGUMENT naming it,
// whichever layer calls the store.
#ifndef ESS_REPLAY_SVC_REPLAY_STORE_H_
#define ESS_REPLAY_SVC_REPLAY_STORE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ess/v1/event.pb.h"
#include "ess/v1/replay.pb.h"
#include "google/protobuf/repeated_ptr_field.h"

namespace ess::replay {

// Position in the order of List (newest first, or oldest first): the last row of a page. `id`
// is the store's own row id, which breaks ties between equal updated_at values.
struct ListCursor {
  int64_t updated_at_micros = 0;
  int64_t id = 0;
  friend bool operator==(const ListCursor&, const ListCursor&) = default;
};

// Each set field narrows the result (empty strings and UNSPECIFIED enums are not set).
struct ListQuery {
  std::string partner;
  ess::v1::Direction direction = ess::v1::DIRECTION_UNSPECIFIED;
  ess::v1::MessageStatus status = ess::v1::MESSAGE_STATUS_UNSPECIFIED;
  std::string event_type;
  std::string correlation_id;
  // updated_at within [since, until), in Unix microseconds.
  std::optional<int64_t> since_micros;
  std::optional<int64_t> until_micros;
  // received_at within [received_since, received_until), in Unix microseconds.
  std::optional<int64_t> received_since_micros;
  std::optional<int64_t> received_until_micros;
  // Only records whose correlation id has no inbound record PUBLISHED.
  bool unconfirmed = false;
  // Most records returned; at least 1.
  size_t limit = 100;
  // Most bytes of payload and rendered bodies in a page (0: no cap): a page ends before the
  // record that would pass it, though it always holds at least one record.
  size_t max_bytes = 0;
  // Continue strictly after this position.
  std::optional<ListCursor> after;
  // Oldest first (updated_at, then row id, ascending): the order they were written in, for a
  // copy into another store (replay_svc --import_from).
  bool oldest_first = false;
};

struct ListPage {
  // Newest first: updated_at descending, then row id descending; or the reverse (oldest_first).
  std::vector<ess::v1::MessageRecord> records;
  // Set when more records match after the last one returned.
  std::optional<ListCursor> next;
};

// A compare-and-set of ReplayService.Replay on one record (its claim before the publish, its mark
// after the confirm, or the claim given back after a failed publish): its key, what the record
// held when it was read (or claimed), and the status and error it takes now.
struct ReplayMark {
  ess::v1::RecordKey key;
  ess::v1::MessageStatus expected_status = ess::v1::MESSAGE_STATUS_UNSPECIFIED;
  int64_t expected_updated_at_micros = 0;
  ess::v1::MessageStatus status = ess::v1::MESSAGE_STATUS_UNSPECIFIED;
  // Empty clears the record's error.
  std::string error;
};

// What MarkReplayed did: per mark, whether it changed its record; and the updated_at (the
// store's clock, in Unix microseconds) that every changed record got.
struct MarkedReplays {
  std::vector<bool> changed;
  int64_t updated_at_micros = 0;
};

// What Purge evicts: settled records (DELIVERED, DRY_RUN, PUBLISHED) only, never one updated
// within min_age.
struct RetentionPolicy {
  // Settled records updated longer ago than this go; zero: no age limit.
  absl::Duration max_age = absl::ZeroDuration();
  // Settled records beyond the newest this many of a (partner, direction) go; 0: no limit.
  uint64_t max_per_partner = 0;
  // Nothing updated more recently than this goes, whatever the limits say.
  absl::Duration min_age = absl::ZeroDuration();
  // Rows deleted per write transaction, so that the lanes' writes wait little.
  size_t batch = 5000;
};

// What CountUnconfirmed found: how many deliveries, and the earliest updated_at among them.
struct UnconfirmedDeliveries {
  uint64_t count = 0;
  std::optional<int64_t> oldest_micros;
};

class ReplayStore {
 public:
  virtual ~ReplayStore() = default;

  // Upserts every record in one transaction, all or none; returns how many were stored.
  // INVALID_ARGUMENT "records[i].field: ..." for the first bad record.
  virtual absl::StatusOr<uint32_t> Record(
      const google::protobuf::RepeatedPtrField<ess::v1::MessageRecord>& records) = 0;

  // Sets status and error of one record and returns it as stored. NOT_FOUND if there is none.
  // Stores `records` as they are, their received_at and updated_at too: a copy from another
  // store (replay_svc --import_from). A key not stored is inserted; a stored one is replaced
  // only by a record updated later, so a copy run again, or into a store the lanes write
  // already, never replaces anything newer. Returns how many records were written.
  // INVALID_ARGUMENT as Record, and for a record without received_at or updated_at.
  virtual absl::StatusOr<uint32_t> Import(
      const google::protobuf::RepeatedPtrField<ess::v1::MessageRecord>& records) = 0;

  // Brings what the database's planner knows of the records up to date after a bulk change (a
  // copy from another store), so that it walks the indexes it should from the first read on
  // rather than after its own next sampling. OK, doing nothing, where there is no such thing.
  virtual absl::Status RefreshStatistics() { return absl::OkStatus(); }

  virtual absl::StatusOr<ess::v1::MessageRecord> UpdateStatus(
      const ess::v1::UpdateStatusRequest& request) = 0;

  // NOT_FOUND if there is no such record.
  virtual absl::StatusOr<ess::v1::MessageRecord> GetByKey(const ess::v1::RecordKey& key) = 0;

  // The record of each key, in the order of `keys` (nullopt where there is none), all read
  // from the same committed state. INVALID_ARGUMENT "keys[i].field: ..." for the first bad
  // key, and nothing is read.
  virtual absl::StatusOr<std::vector<std::optional<ess::v1::MessageRecord>>> GetByKeys(
      const google::protobuf::RepeatedPtrField<ess::v1::RecordKey>& keys) = 0;

  // In one transaction, per claim in order: stores its record with status RECEIVED unless the
  // key's stored record takes the id (PUBLISHED within window_seconds, or RECEIVED within
  // lease_ms; see ReplayService.Claim), and says which. INVALID_ARGUMENT
  // "claims[i].record.field: ..." for the first bad claim, and nothing is stored.
  virtual absl::StatusOr<std::vector<ess::v1::ClaimOutcome>> Claim(
      const google::protobuf::RepeatedPtrField<ess::v1::Claim>& claims) = 0;

  // Every record of the correlation id, both directions, oldest received_at first; empty if
  // there is none.
  virtual absl::StatusOr<std::vector<ess::v1::MessageRecord>> GetByCorrelation(
      absl::string_view correlation_id) = 0;

  virtual absl::StatusOr<ListPage> List(const ListQuery& query) = 0;

  // In one transaction, per mark: sets the record's status and error if it still holds
  // expected_status and expected_updated_at_micros, i.e. nothing wrote it since it was read (a
  // lane that already recorded the replay's outcome keeps it; of two replays that read the same
  // record, on one replica or on two, only the first to mark it changes it). Returns, per mark,
  // whether it was changed, and the updated_at the changed records got. INVALID_ARGUMENT
  // "marks[i]...." for the first bad mark.
  virtual absl::StatusOr<MarkedReplays> MarkReplayed(const std::vector<ReplayMark>& marks) = 0;

  // Evicts what `policy` says, in transactions of policy.batch rows; returns how many records
  // went.
  virtual absl::StatusOr<uint64_t> Purge(const RetentionPolicy& policy) = 0;

  // One entry per (partner, direction) with records, ordered by partner then direction; only
  // `partner` when it is not empty. Counts are of records currently in each status;
  // oldest_pending is the earliest received_at among records received, failed or dead.
  virtual absl::StatusOr<std::vector<ess::v1::PartnerStats>> Stats(absl::string_view partner) = 0;

  // The outbound records of `partner` DELIVERED with updated_at within [since, until) whose
  // correlation id no inbound record PUBLISHED confirms (the drift of ListQuery.unconfirmed).
  virtual absl::StatusOr<UnconfirmedDeliveries> CountUnconfirmed(absl::string_view partner,
                                                                 int64_t since_micros,
                                                                 int64_t until_micros) = 0;
};

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_REPLAY_STORE_H_
