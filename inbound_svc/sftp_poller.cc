#include "inbound_svc/sftp_poller.h"

#include <openssl/evp.h>

#include <algorithm>
#include <limits>
#include <span>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "adapters/csv/csv.h"
#include "common/bus_headers.h"
#include "common/ids.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/sv.h"
#include "common/thread_name.h"
#include "common/utf8.h"
#include "google/protobuf/util/time_util.h"

namespace ess::inbound {
namespace {

using adapters::sftp_csv::SftpClient;

// A wait is cut in slices this long so that Stop() is noticed.
constexpr absl::Duration kStopCheck = absl::Milliseconds(50);
// Parked rows of one file that get a log line of their own; the file's summary counts them all.
constexpr size_t kLoggedRowsPerFile = 20;

std::string Sha256Hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), len));
}

std::string TrimSlashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

std::string JoinPath(std::string_view dir, std::string_view name) {
  std::string out(dir);
  if (out.empty() || out.back() != '/') out.push_back('/');
  out.append(name);
  return out;
}

bool HasControl(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

google::protobuf::Timestamp ToProto(absl::Time t) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

// The records of a CSV file: the line each starts on and its text, with lines counted the way
// csv::Read counts them (CRLF, LF or a lone CR ends a line; a UTF-8 byte order mark is skipped),
// so that the lines Pull reports can be matched.
class CsvRows {
 public:
  explicit CsvRows(std::string_view data) {
    if (data.starts_with("\xEF\xBB\xBF")) data.remove_prefix(3);
    data_ = data;
    line_offsets_.push_back(0);
    for (size_t i = 0; i < data.size(); ++i) {
      if (data[i] == '\n' || (data[i] == '\r' && (i + 1 == data.size() || data[i + 1] != '\n'))) {
        line_offsets_.push_back(i + 1);
      }
    }
    // Well-formed or not, every record is reported once, in order, with the line it starts on.
    // A failure here (a field outgrowing memory) fails Pull as well, which reads the same bytes.
    (void)adapters::csv::Read(
        data, [&](uint64_t line, std::span<const std::string>) { starts_.push_back(line); },
        [&](uint64_t line, std::string_view) { starts_.push_back(line); });
  }

  // The first line of every record, the header's included, in file order.
  const std::vector<uint64_t>& starts() const { return starts_; }

  // The text of the record starting on `line`: up to the next record, line breaks at its end
  // left out.
  std::string_view Text(uint64_t line) const {
    auto it = std::upper_bound(starts_.begin(), starts_.end(), line);
    const size_t begin = Offset(line);
    const size_t end = it == starts_.end() ? data_.size() : Offset(*it);
    std::string_view text = data_.substr(begin, end - begin);
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
    return text;
  }

 private:
  size_t Offset(uint64_t line) const {
    return line >= 1 && line <= line_offsets_.size() ? line_offsets_[line - 1] : data_.size();
  }

  std::string_view data_;
  std::vector<size_t> line_offsets_;  // [n]: where line n+1 starts
  std::vector<uint64_t> starts_;
};

}  // namespace

// Answers (confirms, records, a lookup) still to come for one file, and the first failure among
// them. Shared with the callbacks, which may outlive a wait that gave up.
class SftpPoller::Pending {
 public:
  void Add() {
    absl::MutexLock lock(&mu_);
    ++count_;
  }
  void Done(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    if (!status.ok() && error_.ok()) error_ = status;
    --count_;
  }
  // Waits up to `timeout` for a failure or for `limit` answers or fewer to be missing; true if
  // one of these happened, with `*error` set to the first failure.
  bool WaitFor(size_t limit, absl::Duration timeout, absl::Status* error) {
    absl::MutexLock lock(&mu_);
    auto settled = [&]()
                       ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !error_.ok() || count_ <= limit; };
    mu_.AwaitWithTimeout(absl::Condition(&settled), timeout);
    *error = error_;
    return settled();
  }

 private:
  absl::Mutex mu_;
  size_t count_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
};

// One downloaded file.
struct SftpPoller::File {
  std::string name;
  // The name as UTF-8 (a byte that is not becomes U+FFFD), for ids, records and headers: SFTP
  // names are bytes, the store's text and ids are UTF-8.
  std::string text_name;
  std::string data;
  std::string sha16;  // first 16 hex digits of its SHA-256
  // "file:NAME:SHA16", through ids::Fit; each row's message id is "NAME:SHA16:LINE" so too.
  std::string marker;
  std::string source;  // "sftp://HOST/REMOTE_DIR/NAME"
  absl::Time received_at;
  SftpClient::FileStat stat;  // as it settled
};

// What one row's audit event says.
struct SftpPoller::RowOutcome {
  std::string message_id;
  std::string correlation_id;
  std::string event_type;
  ess::v1::MessageStatus status = ess::v1::MESSAGE_STATUS_UNSPECIFIED;
  std::string error;
};

SftpPoller::SftpPoller(Options options, SftpClient::Options sftp,
                       std::unique_ptr<adapters::Adapter> adapter, amqp::Publisher* publisher,
                       ReplayRecorder* recorder, AuditSink* audit)
    : options_(std::move(options)),
      sftp_(std::move(sftp)),
      adapter_(std::move(adapter)),
      publisher_(publisher),
      recorder_(recorder),
      audit_(audit != nullptr && audit->enabled() ? audit : nullptr) {
  options_.remote_dir = TrimSlashes(std::move(options_.remote_dir));
  options_.processed_dir = TrimSlashes(std::move(options_.processed_dir));
  options_.window = std::max<size_t>(options_.window, 1);
  options_.max_files_per_tick = std::max<size_t>(options_.max_files_per_tick, 1);
  source_prefix_ = absl::StrCat("sftp://", sftp_.host, JoinPath(options_.remote_dir, ""));
}

SftpPoller::~SftpPoller() { Stop(); }

std::string SftpPoller::ParkedQueue(std::string_view partner) {
  return absl::StrCat(ToAbsl(partner), ".inbound.parked");
}

void SftpPoller::Start() {
  log::Info("", "polling drop folder",
            {{"partner", options_.partner},
             {"dir", options_.remote_dir},
             {"processed_dir", options_.processed_dir},
             {"interval_ms", absl::StrCat(absl::ToInt64Milliseconds(options_.interval))}});
  thread_ = std::thread([this] {
    NameThisThread("ess-sftp-poller");
    Run();
  });
}

void SftpPoller::RequestStop() {
  absl::MutexLock lock(&stop_mu_);
  if (!stop_.HasBeenNotified()) stop_.Notify();
}

void SftpPoller::Stop() {
  RequestStop();
  if (thread_.joinable()) thread_.join();
}

void SftpPoller::Run() {
  SftpClient client(sftp_, &stop_);
  while (!stop_.HasBeenNotified()) {
    if (Tick(client)) continue;  // files left behind: go on at once
    stop_.WaitForNotificationWithTimeout(settling_ ? std::min(options_.interval, options_.settle)
                                                   : options_.interval);
  }
}

bool SftpPoller::Tick(SftpClient& client) {
  absl::StatusOr<std::vector<std::string>> listed = client.List(options_.remote_dir);
  if (!listed.ok()) {
    log::Warn("", "drop folder not listed",
              {{"partner", options_.partner},
               {"dir", options_.remote_dir},
               {"error", ToStd(listed.status().message())}});
    return false;
  }
  std::vector<std::string> names;
  absl::flat_hash_set<std::string> present;
  for (std::string& name : *listed) {
    if (name.empty() || name[0] == '.' || !name.ends_with(options_.suffix) ||
        name.find('/') != std::string::npos || HasControl(name)) {
      continue;
    }
    present.insert(name);
    if (!deferred_.contains(name)) names.push_back(std::move(name));
  }
  absl::erase_if(watched_, [&](const auto& entry) { return !present.contains(entry.first); });
  std::sort(names.begin(), names.end());
  const size_t take = std::min(names.size(), options_.max_files_per_tick);
  bool progressed = false;
  settling_ = false;
  for (size_t i = 0; i < take; ++i) {
    if (stop_.HasBeenNotified()) return false;
    absl::StatusOr<SftpClient::FileStat> stat =
        client.Stat(JoinPath(options_.remote_dir, names[i]));
    absl::Status s = stat.status();
    if (absl::IsNotFound(s)) continue;  // gone since the listing
    if (s.ok() && !Settled(names[i], *stat)) {
      settling_ = true;
      continue;
    }
    bool held = false;
    if (s.ok()) {
      progressed = true;
      s = stat->size > options_.max_file_bytes ? SetAside(client, names[i], *stat)
                                               : Process(client, names[i], *stat, &held);
    }
    if (held) deferred_.insert(names[i]);  // its turn comes again with the folder's next round
    if (!s.ok()) {
      counters_.failures.fetch_add(1, std::memory_order_relaxed);
      deferred_.insert(names[i]);
      log::Warn("", "file left for the next poll",
                {{"partner", options_.partner}, {"file", names[i]}, {"error", ToStd(s.message())}});
    }
  }
  // Files left behind: at once, unless this tick only found files still settling.
  if (names.size() > take) return progressed;
  // Every file of the folder had its turn: the ones that failed get another at the next tick.
  deferred_.clear();
  return false;
}

bool SftpPoller::Settled(const std::string& name, const SftpClient::FileStat& stat) {
  const absl::Time now = absl::Now();
  auto [it, first] = watched_.try_emplace(name, Watched{.stat = stat, .since = now});
  if (!first && it->second.stat != stat) it->second = Watched{.stat = stat, .since = now};
  return now - it->second.since >= options_.settle;
}

absl::Status SftpPoller::Process(SftpClient& client, const std::string& name,
                                 const SftpClient::FileStat& stat, bool* held) {
  absl::StatusOr<std::string> data =
      client.Download(JoinPath(options_.remote_dir, name), options_.max_file_bytes);
  if (!data.ok()) return data.status();
  if (data->size() != stat.size) {  // the next stat differs, so it must settle again
    return absl::UnavailableError(absl::StrCat(name, " changed while it was read (", stat.size,
                                               " bytes settled, ", data->size(), " read)"));
  }
  File file{.name = name,
            .text_name = utf8::Repair(name),
            .data = *std::move(data),
            .received_at = absl::Now(),
            .stat = stat};
  const std::string sha256 = Sha256Hex(file.data);
  file.sha16 = sha256.substr(0, 16);
  file.marker = ids::Fit(absl::StrCat("file:", file.text_name, ":", file.sha16));
  file.source = absl::StrCat(source_prefix_, file.text_name);
  log::Info("", "file received",
            {{"partner", options_.partner},
             {"file", name},
             {"bytes", absl::StrCat(file.data.size())},
             {"sha256", sha256}});

  const absl::Time claim_started = absl::Now();
  absl::StatusOr<ess::v1::ClaimOutcome> claim = ClaimMarker(file);
  if (!claim.ok()) {
    // Unanswered, the claim may or may not be stored; if it is, its lease runs out.
    return absl::Status(claim.status().code(),
                        absl::StrCat("replay store: ", claim.status().message()));
  }
  if (*claim == ess::v1::CLAIM_OUTCOME_IN_PROGRESS) {
    *held = true;
    counters_.held.fetch_add(1, std::memory_order_relaxed);
    log::Info("", "file held by another poller; left for the next poll",
              {{"partner", options_.partner}, {"file", name}});
    return absl::OkStatus();
  }
  if (*claim == ess::v1::CLAIM_OUTCOME_PUBLISHED) {
    absl::StatusOr<std::string> moved = MoveToProcessed(client, file);
    if (!moved.ok()) {
      // The file stays, so its marker must too: recorded again, it is as new as the last look
      // at the file, and retention (by age or by count) takes it only after the file is gone.
      // Its summary, left empty, stays as stored.
      if (absl::Status s = RecordMarker(file, ""); !s.ok()) {
        log::Warn("", "file marker not refreshed",
                  {{"partner", options_.partner}, {"file", name}, {"error", s.ToString()}});
      }
      return moved.status();
    }
    counters_.repeated.fetch_add(1, std::memory_order_relaxed);
    log::Info("", "file already processed; moved",
              {{"partner", options_.partner}, {"file", name}, {"to", *moved}});
    return absl::OkStatus();
  }

  // Claimed: this poller alone publishes the file's rows, until the marker is settled or given
  // back.
  auto give_back = [&](absl::Status s) {
    // FAILED holds nothing: the next tick (of any poller) claims the file again at once. Best
    // effort: unrecorded, the claim's lease runs out.
    recorder_->Record(MarkerRecord(file, ess::v1::MESSAGE_STATUS_FAILED, ""), [](absl::Status) {});
    return s;
  };
  if (const absl::Duration took = absl::Now() - claim_started; took > options_.claim_lease / 2) {
    // Too little of the lease is left: past it, another poller could take the file too.
    return give_back(absl::UnavailableError(absl::StrCat(
        "replay store answered the claim after ", absl::FormatDuration(took), "; try again")));
  }
  size_t events = 0, parked = 0;
  std::vector<RowOutcome> outcomes;
  if (absl::Status s = PublishRows(file, &events, &parked, audit_ ? &outcomes : nullptr); !s.ok()) {
    return give_back(s);
  }
  if (absl::Status s = RecordMarker(file, absl::StrCat(events, " events, ", parked, " parked"));
      !s.ok()) {
    return give_back(absl::Status(s.code(), absl::StrCat("replay store: ", s.message())));
  }
  // The marker settles the file: from here on it is never published again, so its rows are
  // audited now and only now.
  if (audit_) Audit(file, outcomes);
  absl::StatusOr<std::string> moved = MoveToProcessed(client, file);
  if (!moved.ok()) return moved.status();
  counters_.files.fetch_add(1, std::memory_order_relaxed);
  counters_.events.fetch_add(events, std::memory_order_relaxed);
  counters_.parked.fetch_add(parked, std::memory_order_relaxed);
  log::Info("", "file processed",
            {{"partner", options_.partner},
             {"file", name},
             {"events", absl::StrCat(events)},
             {"parked", absl::StrCat(parked)},
             {"to", *moved}});
  return absl::OkStatus();
}

absl::Status SftpPoller::SetAside(SftpClient& client, const std::string& name,
                                  const SftpClient::FileStat& stat) {
  // Only what the stat says goes into the record, so that every poller that looks at the file
  // writes the same one.
  File file{.name = name, .text_name = utf8::Repair(name), .received_at = absl::Now()};
  const std::string id = ids::Fit(absl::StrCat("file:", file.text_name, ":too-large:", stat.size));
  const std::string error =
      absl::StrCat(file.text_name, ": ", stat.size, " bytes, more than max_file_bytes (",
                   options_.max_file_bytes, "); not read, moved to ", options_.processed_dir,
                   " with the suffix .too-large");
  ess::v1::MessageRecord rec;
  rec.set_direction(ess::v1::DIRECTION_INBOUND);
  rec.set_partner(options_.partner);
  rec.set_correlation_id(id);
  rec.set_message_id(id);
  rec.set_status(ess::v1::MESSAGE_STATUS_DEAD);
  rec.set_error(error);
  rec.set_source(absl::StrCat(source_prefix_, file.text_name));
  rec.set_attempts(1);
  *rec.mutable_received_at() = ToProto(file.received_at);
  auto pending = std::make_shared<Pending>();
  pending->Add();
  recorder_->Record(std::move(rec), [pending](absl::Status s) { pending->Done(s); });
  if (absl::Status s = Wait(*pending, 0); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("replay store: ", s.message()));
  }

  // Recorded: the file may leave the folder. One rename of it succeeds, whichever poller tries.
  const std::string from = JoinPath(options_.remote_dir, name);
  std::string to = absl::StrCat(JoinPath(options_.processed_dir, name), ".too-large");
  absl::Status s = client.Rename(from, to);
  if (absl::IsAlreadyExists(s)) {
    to = absl::StrCat(JoinPath(options_.processed_dir, name), ".",
                      absl::FormatTime("%Y%m%dT%H%M%E3SZ", absl::Now(), absl::UTCTimeZone()),
                      ".too-large");
    s = client.Rename(from, to);
  }
  if (absl::IsAlreadyExists(s)) {
    // A server that looks at the target first: the file may be gone all the same.
    if (absl::IsNotFound(client.Stat(from).status())) s = absl::NotFoundError(from);
  }
  if (absl::IsNotFound(s)) {
    // Moved by another poller of the folder (which counts and audits it), or removed.
    log::Info("", "file too large; gone from the folder before the move",
              {{"partner", options_.partner}, {"file", name}});
    return absl::OkStatus();
  }
  if (!s.ok()) return MoveFailure(client, std::move(s));
  counters_.too_large.fetch_add(1, std::memory_order_relaxed);
  log::Warn("", "file too large; moved aside unread",
            {{"partner", options_.partner},
             {"file", name},
             {"bytes", absl::StrCat(stat.size)},
             {"max_file_bytes", absl::StrCat(options_.max_file_bytes)},
             {"to", to},
             {"record", id}});
  if (audit_) {
    Audit(file, {{.message_id = id,
                  .correlation_id = id,
                  .status = ess::v1::MESSAGE_STATUS_DEAD,
                  .error = error}});
  }
  return absl::OkStatus();
}

absl::StatusOr<ess::v1::ClaimOutcome> SftpPoller::ClaimMarker(const File& file) {
  ess::v1::Claim claim;
  *claim.mutable_record() = MarkerRecord(file, ess::v1::MESSAGE_STATUS_RECEIVED, "");
  // A PUBLISHED marker, however old, means these bytes were processed (retention keeps it as
  // long as the file stays: see step 6).
  claim.set_window_seconds(std::numeric_limits<uint32_t>::max());
  claim.set_lease_ms(static_cast<uint32_t>(std::clamp<int64_t>(
      absl::ToInt64Milliseconds(options_.claim_lease), 1, std::numeric_limits<uint32_t>::max())));
  auto pending = std::make_shared<Pending>();
  // Written by the callback before it counts itself in; read only after the wait saw that.
  auto answer =
      std::make_shared<absl::StatusOr<ess::v1::ClaimOutcome>>(absl::UnknownError("no answer"));
  pending->Add();
  recorder_->Claim(std::move(claim),
                   [pending, answer](absl::StatusOr<ess::v1::ClaimOutcome> outcome) {
                     *answer = std::move(outcome);
                     pending->Done(absl::OkStatus());
                   });
  if (absl::Status s = Wait(*pending, 0); !s.ok()) return s;
  return *answer;
}

ess::v1::MessageRecord SftpPoller::MarkerRecord(const File& file, ess::v1::MessageStatus status,
                                                std::string summary) const {
  ess::v1::MessageRecord rec;
  rec.set_direction(ess::v1::DIRECTION_INBOUND);
  rec.set_partner(options_.partner);
  rec.set_correlation_id(file.marker);
  rec.set_message_id(file.marker);
  rec.set_status(status);
  rec.set_rendered(std::move(summary));
  rec.set_source(file.source);
  rec.set_attempts(1);
  *rec.mutable_received_at() = ToProto(file.received_at);
  return rec;
}

void SftpPoller::RenewClaim(const File& file, std::shared_ptr<Pending> pending) {
  pending->Add();
  recorder_->Record(
      MarkerRecord(file, ess::v1::MESSAGE_STATUS_RECEIVED, ""), [pending](absl::Status s) {
        if (s.ok()) {
          pending->Done(s);
        } else {
          pending->Done(
              absl::Status(s.code(), absl::StrCat("replay store (lease renewal): ", s.message())));
        }
      });
}

void SftpPoller::PublishThenRecord(std::string exchange, std::string routing_key,
                                   amqp::Message message, ess::v1::MessageRecord record,
                                   std::shared_ptr<Pending> pending) {
  pending->Add();
  ReplayRecorder* recorder = recorder_;
  publisher_->Publish(
      std::move(exchange), std::move(routing_key), std::move(message),
      [recorder, pending, rec = std::move(record)](absl::Status s) mutable {
        if (!s.ok()) {
          pending->Done(absl::Status(s.code(), absl::StrCat("event bus: ", s.message())));
          return;
        }
        recorder->Record(std::move(rec), [pending](absl::Status r) {
          if (r.ok()) {
            pending->Done(r);
          } else {
            pending->Done(absl::Status(r.code(), absl::StrCat("replay store: ", r.message())));
          }
        });
      });
}

absl::Status SftpPoller::PublishRows(const File& file, size_t* event_count, size_t* parked_count,
                                     std::vector<RowOutcome>* outcomes) {
  std::vector<adapters::PullError> errors;
  absl::StatusOr<std::vector<adapters::InboundEvent>> events =
      adapter_->Pull({.body = file.data, .content_type = "text/csv", .errors = &errors});
  const CsvRows rows(file.data);
  if (!events.ok()) {
    if (!absl::IsInvalidArgument(events.status())) return events.status();
    // The header row is unusable, so no row can be read: every row is parked, the header row
    // with the reason, each data row with the header's, so that none is only in the moved file.
    const uint64_t header = rows.starts().empty() ? 1 : rows.starts().front();
    errors = {{.line = header, .message = std::string(events.status().message())}};
    for (size_t i = 1; i < rows.starts().size(); ++i) {
      errors.push_back({.line = rows.starts()[i],
                        .message = absl::StrCat("the header row (line ", header,
                                                ") is unusable: ", events.status().message())});
    }
    events = std::vector<adapters::InboundEvent>();
  }
  // Pull keeps the rows' order: the events come from the records after the header that it did
  // not report as errors.
  absl::flat_hash_set<uint64_t> bad;
  for (const adapters::PullError& e : errors) bad.insert(e.line);
  std::vector<uint64_t> lines;
  for (size_t i = 1; i < rows.starts().size(); ++i) {
    if (!bad.contains(rows.starts()[i])) lines.push_back(rows.starts()[i]);
  }
  const bool by_line = lines.size() == events->size();
  if (!by_line) {
    // Cannot happen with the sftp_csv adapter; message ids stay unique and stable anyway.
    log::Warn("", "rows and events do not match; events numbered by position",
              {{"partner", options_.partner},
               {"file", file.name},
               {"rows", absl::StrCat(lines.size())},
               {"events", absl::StrCat(events->size())}});
  }

  if (outcomes != nullptr) outcomes->reserve(events->size() + errors.size());
  auto pending = std::make_shared<Pending>();
  const google::protobuf::Timestamp received = ToProto(file.received_at);
  auto base_record = [&](const std::string& id, ess::v1::MessageStatus status) {
    ess::v1::MessageRecord rec;
    rec.set_direction(ess::v1::DIRECTION_INBOUND);
    rec.set_partner(options_.partner);
    rec.set_message_id(id);
    rec.set_status(status);
    rec.set_source(file.source);
    rec.set_attempts(1);
    *rec.mutable_received_at() = received;
    return rec;
  };

  // The claim is renewed every third of its lease while the rows go out.
  absl::Time renewed = absl::Now();
  auto renew = [&] {
    if (absl::Now() - renewed < options_.claim_lease / 3) return;
    renewed = absl::Now();
    RenewClaim(file, pending);
  };
  for (size_t i = 0; i < events->size(); ++i) {
    if (absl::Status s = Wait(*pending, options_.window - 1); !s.ok()) return s;
    renew();
    adapters::InboundEvent& ev = (*events)[i];
    const std::string id =
        ids::Fit(by_line ? absl::StrCat(file.text_name, ":", file.sha16, ":", lines[i])
                         : absl::StrCat(file.text_name, ":", file.sha16, ":#", i + 1));
    ess::v1::MessageRecord rec = base_record(id, ess::v1::MESSAGE_STATUS_PUBLISHED);
    rec.set_correlation_id(ev.correlation_id);
    rec.set_event_type(ev.event_type);
    if (by_line) rec.set_payload(std::string(rows.Text(lines[i])));
    rec.set_rendered(ev.body);
    if (outcomes != nullptr) {
      outcomes->push_back({.message_id = id,
                           .correlation_id = ev.correlation_id,
                           .event_type = ev.event_type,
                           .status = ess::v1::MESSAGE_STATUS_PUBLISHED});
    }
    amqp::Message msg{
        .body = std::move(ev.body),
        .correlation_id = std::move(ev.correlation_id),
        .message_id = id,
        .type = std::move(ev.event_type),
        .headers = {{bus::kPartnerHeader, options_.partner}, {"x-ess-file", file.text_name}}};
    PublishThenRecord(options_.events_exchange, "", std::move(msg), std::move(rec), pending);
  }

  const std::string parked_queue = ParkedQueue(options_.partner);
  for (const adapters::PullError& e : errors) {
    if (absl::Status s = Wait(*pending, options_.window - 1); !s.ok()) return s;
    renew();
    const std::string line = absl::StrCat(e.line);
    const std::string id = ids::Fit(absl::StrCat(file.text_name, ":", file.sha16, ":L", line));
    const std::string text(rows.Text(e.line));
    ess::v1::MessageRecord rec = base_record(id, ess::v1::MESSAGE_STATUS_DEAD);
    rec.set_correlation_id(id);
    rec.set_payload(text);
    rec.set_error(absl::StrCat(file.text_name, ":", line, ": ", e.message));
    if (outcomes != nullptr) {
      outcomes->push_back({.message_id = id,
                           .correlation_id = id,
                           .status = ess::v1::MESSAGE_STATUS_DEAD,
                           .error = rec.error()});
    }
    amqp::Message msg{.body = text,
                      .correlation_id = id,
                      .message_id = id,
                      .content_type = "text/csv",
                      .headers = {{bus::kPartnerHeader, options_.partner},
                                  {"x-ess-file", file.text_name},
                                  {"x-ess-line", line},
                                  {"x-ess-reason", e.message}}};
    PublishThenRecord("", parked_queue, std::move(msg), std::move(rec), pending);
  }
  if (absl::Status s = Wait(*pending, 0); !s.ok()) return s;
  for (size_t i = 0; i < std::min(errors.size(), kLoggedRowsPerFile); ++i) {
    log::Warn("", "row parked",
              {{"partner", options_.partner},
               {"file", file.name},
               {"line", absl::StrCat(errors[i].line)},
               {"reason", errors[i].message},
               {"queue", parked_queue}});
  }
  *event_count = events->size();
  *parked_count = errors.size();
  return absl::OkStatus();
}

absl::Status SftpPoller::RecordMarker(const File& file, std::string summary) {
  auto pending = std::make_shared<Pending>();
  pending->Add();
  recorder_->Record(MarkerRecord(file, ess::v1::MESSAGE_STATUS_PUBLISHED, std::move(summary)),
                    [pending](absl::Status s) { pending->Done(s); });
  return Wait(*pending, 0);
}

void SftpPoller::Audit(const File& file, const std::vector<RowOutcome>& outcomes) {
  // Every answer counts, refused or not: an audit event the broker refused is the sink's to log
  // and count, and never fails the file.
  auto pending = std::make_shared<Pending>();
  absl::Status paced;
  for (const RowOutcome& o : outcomes) {
    // Past a wait that gave up (no confirms, or stopping) the rest go out unpaced rather than
    // not at all: the marker is recorded, so no later tick would audit them.
    if (paced.ok()) paced = Wait(*pending, options_.window - 1);
    pending->Add();
    audit_->Emit(AuditSink::Make(ess::v1::DIRECTION_INBOUND, options_.partner, o.correlation_id,
                                 o.message_id, o.event_type, o.status, o.error, 1, file.received_at,
                                 /*dry_run=*/false),
                 [pending](absl::Status) { pending->Done(absl::OkStatus()); });
  }
  if (paced.ok()) paced = Wait(*pending, 0);
  if (!paced.ok()) {
    log::Warn(
        "", "audit events of the file not all confirmed",
        {{"partner", options_.partner}, {"file", file.name}, {"error", ToStd(paced.message())}});
  }
}

absl::StatusOr<std::string> SftpPoller::MoveToProcessed(SftpClient& client, const File& file) {
  const std::string from = JoinPath(options_.remote_dir, file.name);
  // Written to since it settled: what was read is settled (its marker is stored), and the file
  // stays, to be read again whole once it settles anew (its new bytes get a marker of their own).
  if (absl::StatusOr<SftpClient::FileStat> now = client.Stat(from); now.ok() && *now != file.stat) {
    return absl::UnavailableError(absl::StrCat(file.name, " changed after it was read (",
                                               file.stat.size, " bytes then, ", now->size,
                                               " now); left in place to be read again"));
  }
  std::string to = JoinPath(options_.processed_dir, file.name);
  absl::Status s = client.Rename(from, to);
  if (absl::IsAlreadyExists(s)) {
    to = absl::StrCat(to, ".", file.sha16);
    s = client.Rename(from, to);
    if (absl::IsAlreadyExists(s)) {
      // The same name with the same hash: these very bytes are kept there already.
      s = client.Remove(from);
      to = absl::StrCat("removed; ", to, " holds the same bytes");
    }
  }
  if (absl::IsNotFound(s)) {
    // Moved or removed by someone else meanwhile; its rows were published either way.
    return absl::StrCat("gone from ", options_.remote_dir, " before the move");
  }
  if (!s.ok()) return MoveFailure(client, std::move(s));
  return to;
}

absl::Status SftpPoller::MoveFailure(SftpClient& client, absl::Status s) {
  if (!absl::IsAlreadyExists(s)) {
    // The likeliest configuration error gets a message of its own.
    absl::StatusOr<bool> there = client.Exists(options_.processed_dir);
    if (there.ok() && !*there) {
      return absl::FailedPreconditionError(absl::StrCat("processed_dir ", options_.processed_dir,
                                                        " does not exist on ", sftp_.host));
    }
  }
  return s;
}

std::vector<prometheus::MetricFamily> SftpPoller::Metrics(
    const std::vector<std::unique_ptr<SftpPoller>>& pollers) {
  if (pollers.empty()) return {};  // a lane of webhooks only
  prometheus::MetricFamily files = metrics::Family(
      "ess_inbound_poll_files_total",
      "Polled files that left the drop folder, by outcome: processed (its rows published or "
      "parked, then moved), repeated (moved: its marker showed these bytes processed before), "
      "too_large (over max_file_bytes: recorded dead and moved aside unread).",
      prometheus::MetricType::Counter);
  prometheus::MetricFamily rows = metrics::Family(
      "ess_inbound_poll_rows_total",
      "Rows of polled files, by outcome: published (an event, confirmed and recorded) or parked "
      "(unreadable: on the partner's parked queue, recorded dead).",
      prometheus::MetricType::Counter);
  prometheus::MetricFamily left = metrics::Family(
      "ess_inbound_poll_left_total",
      "Times a settled file was left in the drop folder for the next poll, by reason: failure "
      "(SFTP, bus, store; logged) or held (another poller was processing it).",
      prometheus::MetricType::Counter);
  for (const std::unique_ptr<SftpPoller>& p : pollers) {
    const Counters& c = p->counters();
    const std::string& partner = p->partner();
    metrics::AddSample(files, {{"partner", partner}, {"outcome", "processed"}}, c.files.load());
    metrics::AddSample(files, {{"partner", partner}, {"outcome", "repeated"}}, c.repeated.load());
    metrics::AddSample(files, {{"partner", partner}, {"outcome", "too_large"}}, c.too_large.load());
    metrics::AddSample(rows, {{"partner", partner}, {"outcome", "published"}}, c.events.load());
    metrics::AddSample(rows, {{"partner", partner}, {"outcome", "parked"}}, c.parked.load());
    metrics::AddSample(left, {{"partner", partner}, {"reason", "failure"}}, c.failures.load());
    metrics::AddSample(left, {{"partner", partner}, {"reason", "held"}}, c.held.load());
  }
  std::vector<prometheus::MetricFamily> out;
  out.push_back(std::move(files));
  out.push_back(std::move(rows));
  out.push_back(std::move(left));
  return out;
}

absl::Status SftpPoller::Wait(Pending& pending, size_t limit) {
  const absl::Time deadline = absl::Now() + options_.answer_timeout;
  while (true) {
    absl::Status error;
    if (pending.WaitFor(limit, std::min(kStopCheck, deadline - absl::Now()), &error)) {
      return error;
    }
    if (stop_.HasBeenNotified()) return absl::CancelledError("the poller is stopping");
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("no answer from the event bus or the replay store within ",
                       absl::FormatDuration(options_.answer_timeout)));
    }
  }
}

}  // namespace ess::inbound
