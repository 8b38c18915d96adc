// The `sftp_csv` adapter: events out as CSV files dropped on the partner's SFTP server, and the
// partner's CSV files in as events.
//
// Push (outbound). Each event becomes one row of a batch; the file has a header row (the
// correlation id column, then the targets of the partner's outbound mapping in mapping order)
// and is written per RFC 4180 (adapters/csv/csv.h: CRLF, quoting as needed, UTF-8). Absent
// optional fields are empty cells. A batch closes at `max_rows` rows or `max_age_ms` after its
// first row, whichever comes first; the adapter's own worker thread closes batches and uploads
// them, one at a time, so Push never blocks on the network. Then, for each closed batch:
//  1. its name is the configured pattern with {partner}, {date} (UTC yyyymmdd) and {batch}
//     (SHA-256 of the batch's rows, each as its message id and its CSV record, first 16 hex
//     digits: the same events with the same content give the same name, and an event changed
//     under the same message id, or replayed changed, gives another);
//  2. if that file already exists on the server the batch counts as delivered (a crash after the
//     rename, then a redelivery of the same events, produces no second file);
//  3. otherwise each row's PushRequest::note is told the file's path, and the upload waits until
//     the lane has stored every note (a row in flight, with the path as its maybe_delivered_as):
//     a lane killed during the upload leaves the path where its redeliveries find it, however
//     they are batched then (with other events, or by another replica: another name). A note
//     not stored fails the batch (UNAVAILABLE), and nothing is uploaded;
//  4. then it is uploaded as ".NAME.part" and renamed to NAME in the same SFTP session
//     (adapters/sftp_csv/sftp_client.h), so the partner never reads a partial file;
//  5. then, and only then, every event's PushDone runs with the batch's outcome.
// An upload that failed after the server was reached may still have made its file (the answer
// to the rename lost, and the server gone before SftpClient could look again): each of its
// events fails retryably with the file's path as PushResult::maybe_delivered_as, and the path
// in the status message. The lane carries that path with the event's retry, so whichever
// replica or process retries it hands it back in PushRequest::maybe_delivered_as. Before it
// uploads a batch, the adapter looks for each such file once (only files directly in
// `remote_dir`; another path is ignored): there, those rows are done ("delivered as"); not
// there, they go in the new file. So a batch retried in other company, after a restart or by
// another replica, does not reach the partner twice. When the server cannot say, the batch
// fails and each row keeps its path for the next retry.
// The outcome's status is SftpClient's (UNAVAILABLE / DEADLINE_EXCEEDED retryable; host key or
// access problems PERMISSION_DENIED and a refused key UNAUTHENTICATED, which are permanent:
// they are configuration errors that no retry fixes). Each event's PushResult carries its own
// row under the header as `rendered` (not the whole file, which would be stored once per row)
// and "uploaded DIR/NAME (N rows)" as `detail`.
// A Push of an event already waiting (the same message id and the same row, in a batch open or
// closed, or in the upload in progress; e.g. redelivered by the broker after a connection drop)
// adds no second row: its PushDone runs with the first row's outcome, when that one's does.
// Caveat: the lane's max_in_flight for the partner bounds how many rows can wait in a batch;
// set it to at least max_rows, or batches close by age only.
//
// Dry-run events are batched the same way, apart from the real ones; a closed dry-run batch is
// rendered exactly, logged with the personal columns masked (a column whose target, or any
// member of its source path, is a PII field: Mapper::IsPersonal), and completed as dry-run
// without any connection.
//
// Pull (inbound): the bytes of one CSV file. Its first record is the header; every other record
// becomes a JSON object keyed by the header names (an empty cell is absent, so a mapping
// default applies and a required field rejects the row), goes through the partner's inbound
// mapping and must yield a string "id" and "type". A row that fails (bad quoting, a wrong
// number of cells, a mapping error) is reported through PullRequest::errors with the line it
// starts on, and the other rows still become events. INVALID_ARGUMENT only when the header
// itself is unusable (malformed, an empty or repeated column name).
//
// Settings: ess.v1.SftpCsvAdapterConfig (proto/ess/v1/adapters.proto). `remote_dir` is required
// only for a partner with an outbound route.
#ifndef ESS_ADAPTERS_SFTP_CSV_SFTP_CSV_ADAPTER_H_
#define ESS_ADAPTERS_SFTP_CSV_SFTP_CSV_ADAPTER_H_

#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters/adapter.h"
#include "adapters/sftp_csv/sftp_client.h"
#include "common/mapping.h"
#include "ess/v1/adapters.pb.h"

namespace ess::adapters::sftp_csv {

class SftpCsvAdapter : public Adapter {
 public:
  // Validates the partner's settings (key and known_hosts files must be readable, a
  // passphrase_env must be set). INVALID_ARGUMENT "partners[NAME].settings.FIELD: what".
  static absl::StatusOr<std::unique_ptr<SftpCsvAdapter>> Create(
      const ess::v1::PartnerConfig& partner);

  // Stops the worker after the upload in progress; events of batches not yet uploaded complete
  // with UNAVAILABLE (the lane retries them). Idempotent.
  void Stop() override;
  ~SftpCsvAdapter() override;  // Stop()

  void Push(const PushRequest& request, PushDone done) override;
  absl::StatusOr<std::vector<InboundEvent>> Pull(const PullRequest& request) override;

  // How this partner's server is reached (host, port, user, keys, known_hosts, deadlines), for
  // another client of the same server, e.g. the inbound lane's poller.
  const SftpClient::Options& client_options() const { return client_options_; }
  // The header row of every file, CRLF included.
  const std::string& header() const { return header_; }
  // A row of a batch as its name sees it: the event's message id and its CSV record (CRLF
  // included, as in the file).
  struct BatchRow {
    std::string_view message_id;
    std::string_view line;
  };
  // The file name of a batch of these rows, closed at `now`.
  std::string FileName(std::span<const BatchRow> rows, absl::Time now) const;
  // First 16 hex digits of the SHA-256 of the rows sorted by message id, then record: each row
  // as its message id, '\n', then its record. (Message ids carry no control character and a
  // record ends at its first unquoted CRLF, so the bytes hashed name exactly one set of rows.)
  static std::string BatchId(std::span<const BatchRow> rows);

 private:
  struct Row {
    std::string line;    // the CSV record, CRLF included
    std::string masked;  // the same with PII cells masked (dry-run only)
    std::string message_id;
    // PushRequest::maybe_delivered_as, when it names a file of remote_dir.
    std::string maybe_delivered_as;
    SendNote* note = nullptr;  // PushRequest::note; null for a dry run
    PushDone done;
  };
  struct Batch {
    bool dry_run = false;
    absl::Time opened;
    std::vector<Row> rows;
  };
  struct NamePart {
    std::string text;  // literal, or the placeholder name
    bool placeholder = false;
  };

  SftpCsvAdapter() = default;

  // The key of a waiting row in waiting_.
  static std::string WaitingKey(bool dry_run, std::string_view message_id, std::string_view line);
  // Runs `row.done` with `result`, and the PushDone of each copy of the row pushed while it
  // waited, with the same result.
  void Complete(bool dry_run, Row& row, PushResult result);
  std::string RenderRow(const PushRequest& request, bool mask_pii) const;
  void Work();
  void Deliver(Batch& batch);
  void Fail(Batch& batch, const absl::Status& status);

  std::string partner_;
  ess::v1::SftpCsvAdapterConfig settings_;
  std::vector<std::string> columns_;  // mapped fields, after the correlation column
  std::string header_;
  std::vector<NamePart> name_pattern_;
  size_t max_rows_ = 500;
  absl::Duration max_age_;
  std::optional<Mapper> inbound_;
  // The outbound mapping: which columns are personal (Mapper::IsPersonal), for dry-run logs.
  std::optional<Mapper> outbound_;
  SftpClient::Options client_options_;
  std::unique_ptr<SftpClient> client_;  // the worker's only
  // Settles the rows of `batch` that an earlier upload may have delivered (their
  // maybe_delivered_as; see the file comment): those found delivered are done and removed from
  // the batch. Fails when the server cannot say; the batch is then not uploaded.
  absl::Status SettleEarlierUploads(Batch& batch);
  // Tells each row's SendNote that the batch is about to be uploaded as `path`, and waits until
  // every note is stored: UNAVAILABLE if one is not, or not within kNoteTimeout (the batch is
  // then not uploaded).
  absl::Status NoteBeforeUpload(const Batch& batch, const std::string& path);
  static constexpr absl::Duration kNoteTimeout = absl::Seconds(30);

  absl::Mutex mu_;
  absl::CondVar cv_;
  // The batches filling up: [0] real events, [1] dry-run events.
  std::optional<Batch> open_[2] ABSL_GUARDED_BY(mu_);
  std::deque<Batch> closed_ ABSL_GUARDED_BY(mu_);  // in closing order
  // Every row pushed and not yet done (open, closed or being uploaded), by WaitingKey: the
  // PushDone of each copy of it pushed since, to run with its outcome.
  absl::flat_hash_map<std::string, std::vector<PushDone>> waiting_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread worker_ ABSL_GUARDED_BY(mu_);  // started by the first Push
};

class SftpCsvAdapterFactory : public AdapterFactory {
 public:
  std::string_view name() const override { return "sftp_csv"; }
  const google::protobuf::Descriptor* settings_type() const override {
    return ess::v1::SftpCsvAdapterConfig::descriptor();
  }
  absl::StatusOr<std::unique_ptr<Adapter>> Create(const ess::v1::PartnerConfig& partner,
                                                  const AdapterContext& context) const override;
};

}  // namespace ess::adapters::sftp_csv

#endif  // ESS_ADAPTERS_SFTP_CSV_SFTP_CSV_ADAPTER_H_
