// The inbound lane's file intake: polls one partner's SFTP drop folder and publishes the rows of
// each new file as internal events.
//
//   SftpPoller poller({.partner = "prison_files", .remote_dir = "/out", .processed_dir = "/done"},
//                     adapter->client_options(), std::move(adapter), &publisher, &recorder,
//                     &audit);
//   poller.Start();  ...  poller.Stop();
//
// Every `interval` the poller lists `remote_dir` and takes, in name order, up to
// `max_files_per_tick` names that end with `suffix` and do not start with "." (uploads in
// progress, by convention). A file is read only once it has settled: its size and modification
// time (an SFTP stat) stayed the same for `settle`, by this poller's clock across listings, so a
// partner still writing a file under its final name is not read half-written (while one waits,
// the next listing comes after `settle` rather than `interval`). A settled file larger than
// `max_file_bytes` is set aside unread (see "Too large" below). For each other settled file:
//  1. it is downloaded (at most `max_file_bytes`; a size other than the stat's leaves it for the
//     next tick) and hashed: SHA-256, whose first 16 hex digits are SHA16 below;
//  2. its marker (INBOUND, partner, "file:NAME:SHA16") is claimed in the replay store
//     (ReplayRecorder::Claim, as the inbound lane claims webhook ids) with a lease of
//     `claim_lease`: if it is PUBLISHED, these bytes were processed before (a crash before the
//     move, the same file dropped again, or another replica's poll) and the poller goes straight
//     to step 6; if another poller holds it (another replica, or another partner polling the
//     same folder), the file is left for the next tick, logged at info and not as a failure;
//     else the marker is stored RECEIVED, and this poller alone goes on. It renews the lease
//     every third of it while it publishes, and gives the marker back (FAILED) when it fails
//     before step 5, so the next tick, of any poller, can take the file at once;
//  3. the adapter's Pull turns it into events and row errors (PullRequest::errors);
//  4. each event is published (persistent, mandatory, confirmed) to the events exchange with
//     message id "NAME:SHA16:LINE" (the line its row starts on), correlation id and type from
//     the event, headers x-ess-partner and x-ess-file, then recorded PUBLISHED (payload: the
//     row's text, source: "sftp://HOST/REMOTE_DIR/NAME"); each bad row is published to the
//     durable queue ParkedQueue(partner) (body: the row's text; headers x-ess-reason,
//     x-ess-file, x-ess-line, x-ess-partner), then recorded DEAD with message id
//     "NAME:SHA16:LLINE" and error "NAME:LINE: reason";
//  5. once every confirm and record is in, the marker is recorded PUBLISHED (rendered:
//     "N events, M parked"), which settles the file's outcome; then its rows are audited (below);
//  6. the file is stat'ed again: if it changed since it settled (the partner wrote more), it
//     stays for the next tick, to be read again whole; else it is renamed to
//     PROCESSED_DIR/NAME, or PROCESSED_DIR/NAME.SHA16 when that name is taken; when that is
//     taken too, the same bytes are already there and the file is removed. A file whose marker
//     was already there (step 2) and that still cannot be moved has its marker recorded again,
//     so that retention keeps the marker as long as the file stays.
// A file whose header row is unusable yields no event: its header row is parked (the reason from
// Pull), and so is each data row (the reason: "the header row (line 1) is unusable: ..."), each
// recorded DEAD as any bad row; then the file is moved like any other.
//
// Too large: a settled file whose stat says more than `max_file_bytes` (SftpPoll.max_file_bytes)
// is never downloaded, since a file is read whole into memory. Its outcome is decided from the
// stat alone, so it is neither retried at every tick nor lost:
//  a. it is recorded DEAD in the replay store: message id and correlation id
//     "file:NAME:too-large:SIZE", error "NAME: SIZE bytes, more than max_file_bytes (LIMIT); not
//     read, moved to PROCESSED_DIR with the suffix .too-large", source as above;
//  b. it is renamed to PROCESSED_DIR/NAME.too-large, or PROCESSED_DIR/NAME.TIME.too-large (TIME:
//     the move's UTC time, e.g. 20261202T041000.123Z) when that name is taken;
//  c. the poller whose rename moved it counts it (too_large), logs it once at warn (name, size,
//     limit, new path) and, with an audit sink, emits one SyncAudit: MESSAGE_STATUS_DEAD with
//     that message id, correlation id and error.
// A failure (the store, the rename) leaves it for the next tick, which decides again: the record
// is written again at every look, the same, so retention keeps it while the file stays. Several
// pollers of the folder need no claim for it: the record is the same whoever writes it (its
// received_at aside), and one rename alone moves the file (the others find it gone, NOT_FOUND,
// and do nothing more), so it is counted, logged and audited once; a crash between the rename
// and the audit event loses the event (best effort, as below). A file that grows past the limit
// between its stat and its download fails the download (step 1) and stays; changed, it must settle
// again, and is then set aside.
//
// Audit (when an enabled AuditSink is given): one SyncAudit per row of a file, emitted in step 5
// once the marker is recorded: INBOUND, the partner, attempt 1, started_at when the file was
// downloaded; each event MESSAGE_STATUS_PUBLISHED with its message id "NAME:SHA16:LINE", its
// correlation id and type; each parked row MESSAGE_STATUS_DEAD with its message id (also its
// correlation id) "NAME:SHA16:LLINE" and error "NAME:LINE: reason". A file left for the next
// tick before its marker was recorded has emitted nothing (its rows are audited by the tick that
// records it); a file whose marker was already there (step 2) emits nothing again. At most
// `window` audit events are unconfirmed at a time, and the file is moved once each is confirmed
// or failed (or after answer_timeout). Audit events are best effort as AuditSink says: one the
// broker refuses is logged and counted, not retried, and a crash between the marker and their
// emission loses them.
//
// Guarantees:
//  * a file leaves remote_dir only after every row of it was confirmed by the broker and
//    recorded, or after its marker showed exactly these bytes processed, or, too large to be
//    read, after its DEAD record was stored (its bytes are kept in processed_dir);
//  * any failure (SFTP, broker, store, a deadline) leaves the file where it is, logged with its
//    name, for the next tick; publishing it again gives every message the same message id, so
//    duplicates (only ever after such a failure) can be recognised downstream;
//  * work per tick is bounded: `max_files_per_tick` files, `window` publishes and records in
//    flight; a tick that left files behind is followed by the next one at once.
//
// Threads: one thread of its own runs the ticks and owns the SFTP connection (blocking calls,
// each bounded by the client's deadlines); confirms and records complete on the publisher's and
// the recorder's threads.
//
// Several replicas (or partners) polling the same folder each publish a file's rows once in all:
// the marker's claim (step 2) lets one of them at a time process it. Config validation refuses
// two polls of the same host, port and remote_dir.
//
// Not covered: a poller stalled past its lease between two renewals (a store or broker answer
// slower than claim_lease / 3) may let another take the file and publish its rows too (same
// message ids); a partner that pauses longer than `settle` in the middle of writing a file
// under its final name, or rewrites it within the same second and size between the last stat
// and the move, is not detected (partners should upload under a "." name and rename).
#ifndef ESS_INBOUND_SVC_SFTP_POLLER_H_
#define ESS_INBOUND_SVC_SFTP_POLLER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "adapters/adapter.h"
#include "adapters/sftp_csv/sftp_client.h"
#include "common/amqp.h"
#include "common/audit.h"
#include "common/replay_client.h"
#include "ess/v1/replay.pb.h"
#include "prometheus/metric_family.h"

namespace ess::inbound {

class SftpPoller {
 public:
  struct Options {
    std::string partner;
    // Absolute folders on the partner's server.
    std::string remote_dir;
    std::string processed_dir;
    std::string suffix = ".csv";
    absl::Duration interval = absl::Seconds(60);
    // How long a file's size and modification time must stay the same before it is read.
    absl::Duration settle = absl::Seconds(2);
    std::string events_exchange = "events";
    // A settled file larger than this is not read: it is moved aside (see "Too large" above).
    // Also the most a download reads, for a file that grew since its stat.
    size_t max_file_bytes = size_t{64} << 20;
    size_t max_files_per_tick = 64;
    // Publishes and records of one file in flight at most.
    size_t window = 1024;
    // Longest wait for one answer of the broker or the store (a confirm, a record, a claim).
    absl::Duration answer_timeout = absl::Seconds(60);
    // How long a file's claim (step 2) holds it for this poller without a renewal.
    absl::Duration claim_lease = absl::Seconds(35);
  };
  struct Counters {
    std::atomic<uint64_t> files{0};      // processed and moved
    std::atomic<uint64_t> events{0};     // published and recorded
    std::atomic<uint64_t> parked{0};     // rows parked and recorded
    std::atomic<uint64_t> repeated{0};   // files moved because their marker was there
    std::atomic<uint64_t> failures{0};   // files left in place by a failure
    std::atomic<uint64_t> held{0};       // files left in place: another poller held them
    std::atomic<uint64_t> too_large{0};  // files moved aside unread: over max_file_bytes
  };

  // `adapter` turns a file's bytes into events (its Pull); `publisher`, `recorder` and `audit`
  // (may be null: no audit events) must outlive the poller, and the publisher's topology must
  // declare ParkedQueue(partner).
  SftpPoller(Options options, adapters::sftp_csv::SftpClient::Options sftp,
             std::unique_ptr<adapters::Adapter> adapter, amqp::Publisher* publisher,
             ReplayRecorder* recorder, AuditSink* audit = nullptr);
  ~SftpPoller();  // Stop()
  SftpPoller(const SftpPoller&) = delete;
  SftpPoller& operator=(const SftpPoller&) = delete;

  // Starts the thread; the first tick runs at once.
  void Start();
  // Abandons the file in progress at its next step (it stays in remote_dir) and joins the
  // thread; an SFTP call under way is cut off within about 200 ms. Idempotent.
  void Stop();
  // As Stop, without waiting: lets a process stop many pollers at once (thread-safe).
  void RequestStop();

  const std::string& partner() const { return options_.partner; }
  const Counters& counters() const { return counters_; }

  // The durable queue a partner's unreadable rows are parked in: "<partner>.inbound.parked".
  static std::string ParkedQueue(std::string_view partner);

  // The pollers' counters as Prometheus metrics, by partner (served on inbound_svc's /metrics):
  // ess_inbound_poll_files_total{partner,outcome} (processed, repeated, too_large),
  // ess_inbound_poll_rows_total{partner,outcome} (published, parked) and
  // ess_inbound_poll_left_total{partner,reason} (failure, held); none without pollers.
  // Thread-safe.
  static std::vector<prometheus::MetricFamily> Metrics(
      const std::vector<std::unique_ptr<SftpPoller>>& pollers);

 private:
  class Pending;
  struct File;
  struct RowOutcome;

  void Run();
  // Lists and processes up to max_files_per_tick files; true if more were waiting.
  bool Tick(adapters::sftp_csv::SftpClient& client);
  // Whether `name`, as `stat` says it is now, has stayed so for options_.settle.
  bool Settled(const std::string& name, const adapters::sftp_csv::SftpClient::FileStat& stat);
  // `*held` set when another poller held the file (left for the next tick, not a failure).
  absl::Status Process(adapters::sftp_csv::SftpClient& client, const std::string& name,
                       const adapters::sftp_csv::SftpClient::FileStat& stat, bool* held);
  // A settled file over max_file_bytes, never downloaded: recorded DEAD, moved aside, audited.
  absl::Status SetAside(adapters::sftp_csv::SftpClient& client, const std::string& name,
                        const adapters::sftp_csv::SftpClient::FileStat& stat);
  // Claims the file's marker (step 2): CLAIMED, PUBLISHED or IN_PROGRESS.
  absl::StatusOr<ess::v1::ClaimOutcome> ClaimMarker(const File& file);
  // The file's marker record with `status`.
  ess::v1::MessageRecord MarkerRecord(const File& file, ess::v1::MessageStatus status,
                                      std::string summary) const;
  // Pulls the file; publishes and records each event and parks and records each bad row; OK
  // once every answer is in. `outcomes` (may be null) gets each row's outcome, for the audit.
  absl::Status PublishRows(const File& file, size_t* event_count, size_t* parked_count,
                           std::vector<RowOutcome>* outcomes);
  // Counts one answer in `pending`: the store's record of the claimed marker, stored again
  // RECEIVED, which renews the claim's lease.
  void RenewClaim(const File& file, std::shared_ptr<Pending> pending);
  // Counts one answer in `pending`: the broker's confirm, then the store's record.
  void PublishThenRecord(std::string exchange, std::string routing_key, amqp::Message message,
                         ess::v1::MessageRecord record, std::shared_ptr<Pending> pending);
  absl::Status RecordMarker(const File& file, std::string summary);
  // Emits one SyncAudit per outcome, `window` unconfirmed at most; returns once each was
  // confirmed or failed, or after answer_timeout, or when stopping. Never fails the file.
  void Audit(const File& file, const std::vector<RowOutcome>& outcomes);
  // Where the file went (for the log).
  absl::StatusOr<std::string> MoveToProcessed(adapters::sftp_csv::SftpClient& client,
                                              const File& file);
  // A failed rename's status, or the likelier cause (processed_dir missing) when it is that.
  absl::Status MoveFailure(adapters::sftp_csv::SftpClient& client, absl::Status s);
  // Waits for `pending` to drop to `limit` answers or fewer: its first failure, or
  // DEADLINE_EXCEEDED (no answer within answer_timeout), or CANCELLED (stopping).
  absl::Status Wait(Pending& pending, size_t limit);

  Options options_;  // folders without a trailing '/'
  const adapters::sftp_csv::SftpClient::Options sftp_;
  std::string source_prefix_;  // "sftp://HOST/REMOTE_DIR/"
  std::unique_ptr<adapters::Adapter> adapter_;
  amqp::Publisher* const publisher_;
  ReplayRecorder* const recorder_;
  AuditSink* const audit_;  // null when no audit sink is enabled
  Counters counters_;
  absl::Mutex stop_mu_;  // RequestStop may race with itself from two threads
  absl::Notification stop_;
  std::thread thread_;
  // The poller thread's only:
  // files that failed, or another poller held, since the folder was last gone through;
  absl::flat_hash_set<std::string> deferred_;
  // each listed file's size and time as last seen, and since when they were so;
  struct Watched {
    adapters::sftp_csv::SftpClient::FileStat stat;
    absl::Time since;
  };
  absl::flat_hash_map<std::string, Watched> watched_;
  // whether the last tick left a file waiting to settle.
  bool settling_ = false;
};

}  // namespace ess::inbound

#endif  // ESS_INBOUND_SVC_SFTP_POLLER_H_
