#include "adapters/sftp_csv/sftp_csv_adapter.h"

#include <openssl/evp.h>
#include <rapidjson/document.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "adapters/csv/csv.h"
#include "adapters/json_pull.h"
#include "common/json.h"
#include "common/log.h"
#include "common/sv.h"
#include "common/utf8.h"

namespace ess::adapters::sftp_csv {
namespace {

constexpr std::string_view kDefaultPattern = "{partner}_{date}_{batch}.csv";
constexpr std::string_view kPiiMask = "***";

bool Readable(const std::string& path) { return access(path.c_str(), R_OK) == 0; }

bool HasControl(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

std::string JoinPath(std::string_view dir, std::string_view name) {
  std::string out(dir);
  if (out.back() != '/') out.push_back('/');
  out.append(name);
  return out;
}

// True if `path` names a file directly in `dir` (as JoinPath makes them), not a dot file.
bool FileOf(std::string_view dir, std::string_view path) {
  const std::string prefix = JoinPath(dir, "");
  if (!path.starts_with(prefix)) return false;
  const std::string_view name = path.substr(prefix.size());
  return !name.empty() && name.front() != '.' && name.find('/') == std::string_view::npos &&
         !HasControl(name);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SftpCsvAdapter>> SftpCsvAdapter::Create(
    const ess::v1::PartnerConfig& partner) {
  std::unique_ptr<SftpCsvAdapter> a(new SftpCsvAdapter());
  a->partner_ = partner.name();
  ess::v1::SftpCsvAdapterConfig& s = a->settings_;
  if (!partner.settings().UnpackTo(&s)) {
    return absl::InvalidArgumentError(
        absl::StrCat("partners[", partner.name(), "].settings: not a ", s.GetTypeName()));
  }
  auto bad = [&](std::string_view field, std::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("partners[", partner.name(), "].settings.",
                                                   ToAbsl(field), ": ", ToAbsl(what)));
  };
  if (s.host().empty() || s.host().find_first_of("/@ ") != std::string::npos ||
      HasControl(s.host())) {
    return bad("host", "must be a host name or address");
  }
  if (s.port() > 65535) return bad("port", "must be at most 65535");
  if (s.user().empty() || s.user().find_first_of(":@ ") != std::string::npos ||
      HasControl(s.user())) {
    return bad("user", "must be a user name");
  }
  if (s.private_key_file().empty()) return bad("private_key_file", "is required");
  if (!Readable(s.private_key_file())) return bad("private_key_file", "cannot be read");
  if (!s.public_key_file().empty() && !Readable(s.public_key_file())) {
    return bad("public_key_file", "cannot be read");
  }
  std::string passphrase;
  if (!s.passphrase_env().empty()) {
    const char* p = std::getenv(s.passphrase_env().c_str());
    if (p == nullptr) {
      return bad("passphrase_env",
                 absl::StrCat("environment variable ", s.passphrase_env(), " is not set"));
    }
    passphrase = p;
  }
  if (s.known_hosts_file().empty()) return bad("known_hosts_file", "is required");
  if (!Readable(s.known_hosts_file())) return bad("known_hosts_file", "cannot be read");
  // Only pushed files need the upload folder: a partner that only drops files for the inbound
  // poll (InboundRoute.poll) may leave it out.
  std::string dir = s.remote_dir();
  if (dir.empty() ? partner.has_outbound() : dir[0] != '/' || HasControl(dir)) {
    return bad("remote_dir", "must be an absolute path");
  }
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  s.set_remote_dir(dir);

  // The file name pattern: literal text and {partner}, {date}, {batch}.
  std::string_view pattern =
      s.file_name_pattern().empty() ? kDefaultPattern : std::string_view(s.file_name_pattern());
  for (size_t i = 0; i < pattern.size();) {
    size_t open = pattern.find('{', i);
    if (open == std::string_view::npos) {
      a->name_pattern_.push_back({std::string(pattern.substr(i)), false});
      break;
    }
    if (open > i) a->name_pattern_.push_back({std::string(pattern.substr(i, open - i)), false});
    size_t close = pattern.find('}', open);
    std::string_view name =
        close == std::string_view::npos ? "" : pattern.substr(open + 1, close - open - 1);
    if (name != "partner" && name != "date" && name != "batch") {
      return bad("file_name_pattern", "placeholders are {partner}, {date} and {batch}");
    }
    a->name_pattern_.push_back({std::string(name), true});
    i = close + 1;
  }
  // The name is the batch's identity: a file of that name on the server means "this batch was
  // delivered" (step 2 above), so two batches must never share one.
  if (std::none_of(a->name_pattern_.begin(), a->name_pattern_.end(),
                   [](const auto& part) { return part.placeholder && part.text == "batch"; })) {
    return bad("file_name_pattern",
               "needs {batch}: without it two batches of a day get one name, and the second is "
               "taken as delivered without being uploaded");
  }
  std::string sample = a->FileName({}, absl::UnixEpoch());
  if (sample.empty() || sample[0] == '.' || sample.find('/') != std::string::npos ||
      HasControl(sample)) {
    return bad(
        "file_name_pattern",
        absl::StrCat("gives \"", sample, "\", not a plain file name (no '/', no leading '.')"));
  }

  const std::string correlation =
      s.correlation_column().empty() ? "correlation_id" : s.correlation_column();
  s.set_correlation_column(correlation);
  if (partner.has_outbound()) {
    for (const auto& f : partner.outbound().mapping()) {
      if (f.target() == correlation) {
        return bad("correlation_column",
                   absl::StrCat("\"", correlation, "\" is also a target of outbound.mapping"));
      }
      a->columns_.push_back(f.target());
    }
    absl::StatusOr<Mapper> m = Mapper::Compile(partner.outbound().mapping());
    if (!m.ok()) return m.status();
    a->outbound_ = *std::move(m);
  }
  std::vector<std::string_view> header = {correlation};
  header.insert(header.end(), a->columns_.begin(), a->columns_.end());
  csv::AppendRecord(header, &a->header_);

  a->max_rows_ = s.max_rows() ? s.max_rows() : 500;
  a->max_age_ = absl::Milliseconds(s.max_age_ms() ? s.max_age_ms() : 5000);
  if (partner.has_inbound()) {
    absl::StatusOr<Mapper> m = Mapper::Compile(partner.inbound().mapping());
    if (!m.ok()) return m.status();
    a->inbound_ = *std::move(m);
  }
  a->client_options_ = SftpClient::Options{
      .host = s.host(),
      .port = s.port() ? s.port() : 22,
      .user = s.user(),
      .private_key_file = s.private_key_file(),
      .public_key_file = s.public_key_file(),
      .passphrase = std::move(passphrase),
      .known_hosts_file = s.known_hosts_file(),
      .timeout = absl::Milliseconds(s.timeout_ms() ? s.timeout_ms() : 600000),
      .stall_timeout = absl::Milliseconds(s.stall_timeout_ms() ? s.stall_timeout_ms() : 30000),
      .connect_timeout = absl::Milliseconds(s.connect_timeout_ms() ? s.connect_timeout_ms() : 5000),
  };
  return a;
}

SftpCsvAdapter::~SftpCsvAdapter() { Stop(); }

void SftpCsvAdapter::Stop() {
  std::thread worker;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    cv_.Signal();
    worker = std::move(worker_);
  }
  if (worker.joinable()) worker.join();
}

std::string SftpCsvAdapter::BatchId(std::span<const BatchRow> rows) {
  std::vector<BatchRow> sorted(rows.begin(), rows.end());
  std::sort(sorted.begin(), sorted.end(), [](const BatchRow& a, const BatchRow& b) {
    return std::tie(a.message_id, a.line) < std::tie(b.message_id, b.line);
  });
  std::string joined;
  for (const BatchRow& row : sorted) {
    absl::StrAppend(&joined, ToAbsl(row.message_id), "\n", ToAbsl(row.line));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(joined.data(), joined.size(), digest, &len, EVP_sha256(), nullptr);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), std::min(len, 8u)));
}

std::string SftpCsvAdapter::FileName(std::span<const BatchRow> rows, absl::Time now) const {
  std::string out;
  for (const NamePart& p : name_pattern_) {
    if (!p.placeholder) {
      out.append(p.text);
    } else if (p.text == "partner") {
      out.append(partner_);
    } else if (p.text == "date") {
      out.append(absl::FormatTime("%Y%m%d", now, absl::UTCTimeZone()));
    } else {
      out.append(BatchId(rows));
    }
  }
  return out;
}

std::string SftpCsvAdapter::WaitingKey(bool dry_run, std::string_view message_id,
                                       std::string_view line) {
  return absl::StrCat(dry_run ? "d" : "r", ToAbsl(message_id), "\n", ToAbsl(line));
}

void SftpCsvAdapter::Complete(bool dry_run, Row& row, PushResult result) {
  std::vector<PushDone> copies;
  {
    absl::MutexLock lock(&mu_);
    auto it = waiting_.find(WaitingKey(dry_run, row.message_id, row.line));
    if (it != waiting_.end()) {
      copies = std::move(it->second);
      waiting_.erase(it);
    }
  }
  for (PushDone& copy : copies) std::move(copy)(result);
  std::move(row.done)(std::move(result));
}

std::string SftpCsvAdapter::RenderRow(const PushRequest& request, bool mask_pii) const {
  std::vector<std::string> cells;
  cells.reserve(columns_.size() + 1);
  cells.emplace_back(request.correlation_id);
  for (const std::string& column : columns_) {
    const MappedField* hit = nullptr;
    for (const MappedField& f : request.fields) {
      if (f.name == column) {
        hit = &f;
        break;
      }
    }
    if (hit == nullptr) {
      cells.emplace_back();
    } else if (mask_pii && outbound_->IsPersonal(column)) {
      cells.emplace_back(kPiiMask);
    } else {
      cells.push_back(Mapper::Text(*hit));
    }
  }
  std::vector<std::string_view> views(cells.begin(), cells.end());
  std::string line;
  csv::AppendRecord(views, &line);
  return line;
}

void SftpCsvAdapter::Push(const PushRequest& request, PushDone done) {
  if (columns_.empty()) {
    std::move(done)(PushResult{.status = absl::FailedPreconditionError(absl::StrCat(
                                   "partner \"", partner_, "\" has no outbound mapping"))});
    return;
  }
  const bool dry = request.dry_run;
  Row row{.line = RenderRow(request, /*mask_pii=*/false),
          .masked = dry ? RenderRow(request, /*mask_pii=*/true) : std::string(),
          .message_id =
              std::string(request.message_id.empty() ? request.correlation_id : request.message_id),
          .note = dry ? nullptr : request.note,
          .done = std::move(done)};
  if (!request.maybe_delivered_as.empty() && !dry) {
    if (FileOf(settings_.remote_dir(), request.maybe_delivered_as)) {
      row.maybe_delivered_as = std::string(request.maybe_delivered_as);
    } else {
      log::Warn(request.correlation_id, "ignored where an earlier push may have landed",
                {{"partner", partner_},
                 {"path", std::string(request.maybe_delivered_as)},
                 {"why", "not a file of remote_dir"}});
    }
  }
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      // The same event, waiting already (a redelivery): no second row; done with the first's.
      auto [it, first] = waiting_.try_emplace(WaitingKey(dry, row.message_id, row.line));
      if (!first) {
        it->second.push_back(std::move(row.done));
        log::Info(request.correlation_id, "CSV row already waiting; not added again",
                  {{"partner", partner_}, {"message_id", row.message_id}});
        return;
      }
      std::optional<Batch>& open = open_[dry ? 1 : 0];
      if (!open) {
        open = Batch{.dry_run = dry, .opened = absl::Now()};
        open->rows.reserve(std::min<size_t>(max_rows_, 1024));
        cv_.Signal();  // a new deadline for the worker
      }
      open->rows.push_back(std::move(row));
      if (open->rows.size() >= max_rows_) {
        closed_.push_back(*std::move(open));
        open.reset();
        cv_.Signal();
      }
      if (!worker_.joinable()) worker_ = std::thread([this] { Work(); });
      return;
    }
  }
  std::move(row.done)(PushResult{.status = absl::UnavailableError(absl::StrCat(
                                     "sftp_csv adapter of \"", partner_, "\" is stopping"))});
}

void SftpCsvAdapter::Work() {
  while (true) {
    Batch batch;
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && closed_.empty()) {
        const absl::Time now = absl::Now();
        absl::Time deadline = absl::InfiniteFuture();
        for (std::optional<Batch>& open : open_) {
          if (!open) continue;
          const absl::Time due = open->opened + max_age_;
          if (due <= now) {
            closed_.push_back(*std::move(open));
            open.reset();
          } else {
            deadline = std::min(deadline, due);
          }
        }
        if (closed_.empty()) cv_.WaitWithDeadline(&mu_, deadline);
      }
      if (stopping_) break;
      batch = std::move(closed_.front());
      closed_.pop_front();
    }
    Deliver(batch);
  }
  // Stopping: whatever was not uploaded goes back to the lane as retryable.
  std::vector<Batch> left;
  {
    absl::MutexLock lock(&mu_);
    for (Batch& b : closed_) left.push_back(std::move(b));
    closed_.clear();
    for (std::optional<Batch>& open : open_) {
      if (open) left.push_back(*std::move(open));
      open.reset();
    }
  }
  const absl::Status stopped = absl::UnavailableError(
      absl::StrCat("sftp_csv adapter of \"", partner_, "\" stopped before the upload"));
  for (Batch& b : left) Fail(b, stopped);
}

void SftpCsvAdapter::Fail(Batch& batch, const absl::Status& status) {
  for (Row& row : batch.rows) {
    // Still unsettled: the next retry looks again.
    Complete(batch.dry_run, row,
             PushResult{.status = status,
                        .detail = std::string(status.message()),
                        .maybe_delivered_as = std::move(row.maybe_delivered_as)});
  }
}

absl::Status SftpCsvAdapter::SettleEarlierUploads(Batch& batch) {
  struct Earlier {
    bool there = false;  // the file is on the server
    size_t rows = 0;     // rows of this batch found in it
  };
  absl::flat_hash_map<std::string, Earlier> earlier;  // by path
  for (const Row& row : batch.rows) {
    if (!row.maybe_delivered_as.empty()) earlier.try_emplace(row.maybe_delivered_as);
  }
  if (earlier.empty()) return absl::OkStatus();
  if (client_ == nullptr) client_ = std::make_unique<SftpClient>(client_options_);
  for (auto& [path, e] : earlier) {
    absl::StatusOr<bool> found = client_->Exists(path);
    if (!found.ok()) return found.status();
    e.there = *found;
  }
  std::vector<Row> left;
  left.reserve(batch.rows.size());
  for (Row& row : batch.rows) {
    auto it = earlier.find(row.maybe_delivered_as);
    if (it == earlier.end() || !it->second.there) {
      row.maybe_delivered_as.clear();  // not there: the row goes in this batch's file
      left.push_back(std::move(row));
      continue;
    }
    ++it->second.rows;
    Complete(batch.dry_run, row,
             PushResult{.status = absl::OkStatus(),
                        .rendered = absl::StrCat(header_, row.line),
                        .detail = absl::StrCat("delivered as ", row.maybe_delivered_as,
                                               " (the answer to its upload was lost)")});
  }
  for (const auto& [path, e] : earlier) {
    if (e.rows == 0) continue;
    log::Info("", "CSV rows found delivered by an earlier upload",
              {{"partner", partner_}, {"file", path}, {"rows", absl::StrCat(e.rows)}});
  }
  batch.rows = std::move(left);
  return absl::OkStatus();
}

absl::Status SftpCsvAdapter::NoteBeforeUpload(const Batch& batch, const std::string& path) {
  struct Notes {
    absl::Mutex mu;
    size_t left ABSL_GUARDED_BY(mu) = 0;
    absl::Status error ABSL_GUARDED_BY(mu);  // the first
  };
  // Shared with the callbacks: one may come after this gave up waiting.
  auto notes = std::make_shared<Notes>();
  size_t count = 0;
  for (const Row& row : batch.rows) count += row.note != nullptr ? 1 : 0;
  if (count == 0) return absl::OkStatus();
  {
    absl::MutexLock lock(&notes->mu);
    notes->left = count;
  }
  for (const Row& row : batch.rows) {
    if (row.note == nullptr) continue;
    row.note->BeforeSend(path, [notes](absl::Status s) {
      absl::MutexLock lock(&notes->mu);
      if (!s.ok() && notes->error.ok()) notes->error = std::move(s);
      --notes->left;
    });
  }
  absl::MutexLock lock(&notes->mu);
  auto all_in = [&notes]() ABSL_SHARED_LOCKS_REQUIRED(notes->mu) { return notes->left == 0; };
  if (!notes->mu.AwaitWithTimeout(absl::Condition(&all_in), kNoteTimeout)) {
    return absl::UnavailableError(
        absl::StrCat("the replay store did not take the note of the upload of ", path, " within ",
                     absl::FormatDuration(kNoteTimeout), "; not uploaded"));
  }
  if (!notes->error.ok()) {
    return absl::UnavailableError(
        absl::StrCat("the replay store did not take the note of the upload of ", path,
                     "; not uploaded: ", notes->error.message()));
  }
  return absl::OkStatus();
}

void SftpCsvAdapter::Deliver(Batch& batch) {
  if (!batch.dry_run) {
    if (absl::Status s = SettleEarlierUploads(batch); !s.ok()) {
      log::Warn("", "CSV batch not delivered",
                {{"partner", partner_},
                 {"rows", absl::StrCat(batch.rows.size())},
                 {"error", std::string(s.message())}});
      Fail(batch, s);
      return;
    }
    if (batch.rows.empty()) return;
  }
  const absl::Time start = absl::Now();
  std::vector<BatchRow> named;
  named.reserve(batch.rows.size());
  size_t bytes = header_.size();
  for (const Row& row : batch.rows) {
    named.push_back({.message_id = row.message_id, .line = row.line});
    bytes += row.line.size();
  }
  const std::string name = FileName(named, start);
  const std::string path = JoinPath(settings_.remote_dir(), name);
  const std::string rows = absl::StrCat(batch.rows.size());

  absl::Status status;
  std::string detail;
  bool unsure = false;  // the upload failed, but the file may have been made all the same
  if (batch.dry_run) {
    std::string masked = header_;
    for (const Row& row : batch.rows) masked.append(row.masked);
    log::Info("", "dry-run: CSV file not uploaded",
              {{"partner", partner_},
               {"file", path},
               {"rows", rows},
               {"content", absl::StrReplaceAll(masked, {{"\r\n", "\n"}})}});
    detail = absl::StrCat("dry-run: would upload ", path, " (", rows, " rows)");
  } else {
    std::string file;
    file.reserve(bytes);
    file.append(header_);
    for (const Row& row : batch.rows) file.append(row.line);
    if (client_ == nullptr) client_ = std::make_unique<SftpClient>(client_options_);
    absl::StatusOr<bool> there = client_->Exists(path);
    if (!there.ok()) {
      status = there.status();
    } else if (*there) {
      detail = absl::StrCat("already delivered as ", path);
    } else if (absl::Status noted = NoteBeforeUpload(batch, path); !noted.ok()) {
      status = std::move(noted);
    } else {
      status = client_->UploadAtomically(settings_.remote_dir(), name, file);
      if (absl::IsAlreadyExists(status)) {
        status = absl::OkStatus();
        detail = absl::StrCat("already delivered as ", path);
      } else if (status.ok()) {
        detail = absl::StrCat("uploaded ", path, " (", rows, " rows)");
      } else if (absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status)) {
        // The server was there a moment ago: the file may have been made all the same.
        unsure = true;
        status = absl::Status(status.code(),
                              absl::StrCat(status.message(), "; ", path,
                                           " may have been made all the same: the retry looks "
                                           "for it before it sends these rows again"));
      }
    }
    if (!status.ok()) detail = std::string(status.message());
    const std::string ms = absl::StrCat(absl::ToInt64Milliseconds(absl::Now() - start));
    if (status.ok()) {
      log::Info(
          "", "CSV batch delivered",
          {{"partner", partner_}, {"file", path}, {"rows", rows}, {"ms", ms}, {"detail", detail}});
    } else {
      log::Warn(
          "", "CSV batch not delivered",
          {{"partner", partner_}, {"file", path}, {"rows", rows}, {"ms", ms}, {"error", detail}});
    }
  }
  const absl::Duration elapsed = absl::Now() - start;
  for (Row& row : batch.rows) {
    Complete(batch.dry_run, row,
             PushResult{.status = status,
                        .rendered = absl::StrCat(header_, row.line),
                        .detail = detail,
                        .dry_run = batch.dry_run,
                        .elapsed = elapsed,
                        .maybe_delivered_as = unsure ? path : std::string()});
  }
}

absl::StatusOr<std::vector<InboundEvent>> SftpCsvAdapter::Pull(const PullRequest& request) {
  if (!inbound_) {
    return absl::FailedPreconditionError(
        absl::StrCat("partner \"", partner_, "\" has no inbound route"));
  }
  std::vector<std::string> header;
  bool have_header = false;
  absl::Status fatal;
  std::vector<InboundEvent> events;
  std::vector<PullError> errors;
  std::vector<MappedField> mapped;

  auto on_record = [&](uint64_t line, std::span<const std::string> fields) {
    if (!fatal.ok()) return;
    if (!have_header) {
      // Columns are named by position: a file without a header row has data here, and the
      // reason goes to logs and records, where a value (a name, a date of birth) must not.
      absl::flat_hash_map<std::string_view, size_t> seen;  // name -> column, from 1
      for (size_t i = 0; i < fields.size(); ++i) {
        if (fields[i].empty()) {
          fatal = absl::InvalidArgumentError(
              absl::StrCat("line ", line, ": the header has an empty column name"));
          return;
        }
        if (const size_t at = utf8::FirstInvalid(fields[i]); at != std::string_view::npos) {
          fatal = absl::InvalidArgumentError(absl::StrCat(
              "line ", line, ": the header's column ", i + 1, " is not UTF-8 (byte ", at + 1, ")"));
          return;
        }
        if (auto [it, inserted] = seen.try_emplace(fields[i], i + 1); !inserted) {
          fatal = absl::InvalidArgumentError(absl::StrCat("line ", line, ": the header's column ",
                                                          i + 1, " repeats column ", it->second));
          return;
        }
      }
      header.assign(fields.begin(), fields.end());
      have_header = true;
      return;
    }
    if (fields.size() != header.size()) {
      errors.push_back(
          {line, absl::StrCat(fields.size(), " fields, the header has ", header.size())});
      return;
    }
    // Events are JSON, which is UTF-8: a cell in another encoding (a partner exporting Latin-1)
    // fails its row. The column's name, not the value, which may be personal.
    for (size_t i = 0; i < fields.size(); ++i) {
      if (const size_t at = utf8::FirstInvalid(fields[i]); at != std::string_view::npos) {
        errors.push_back({line, absl::StrCat("column \"", header[i], "\" is not UTF-8 (byte ",
                                             at + 1, " of the cell)")});
        return;
      }
    }
    // Names and values are referenced, not copied: both outlive the mapping of this row.
    rapidjson::Document row(rapidjson::kObjectType);
    for (size_t i = 0; i < fields.size(); ++i) {
      if (fields[i].empty()) continue;  // an empty cell is absent
      row.AddMember(rapidjson::StringRef(header[i].data(), header[i].size()),
                    rapidjson::StringRef(fields[i].data(), fields[i].size()), row.GetAllocator());
    }
    absl::Status s = inbound_->Apply(row, &mapped);
    if (!s.ok()) {
      errors.push_back({line, std::string(s.message())});
      return;
    }
    absl::StatusOr<InboundEvent> event = EventFromFields(mapped);
    if (!event.ok()) {
      errors.push_back({line, std::string(event.status().message())});
      return;
    }
    events.push_back(*std::move(event));
  };
  auto on_error = [&](uint64_t line, std::string_view message) {
    if (!fatal.ok()) return;
    if (!have_header) {
      fatal = absl::InvalidArgumentError(
          absl::StrCat("line ", line, ": malformed header: ", ToAbsl(message)));
      return;
    }
    errors.push_back({line, std::string(message)});
  };
  absl::Status read = csv::Read(request.body, on_record, on_error);
  if (!read.ok()) return read;
  if (!fatal.ok()) return fatal;
  if (request.errors != nullptr) {
    request.errors->insert(request.errors->end(), std::make_move_iterator(errors.begin()),
                           std::make_move_iterator(errors.end()));
  } else {
    for (const PullError& e : errors) {
      log::Warn(request.correlation_id, "CSV row rejected",
                {{"partner", partner_}, {"line", absl::StrCat(e.line)}, {"error", e.message}});
    }
  }
  return events;
}

absl::StatusOr<std::unique_ptr<Adapter>> SftpCsvAdapterFactory::Create(
    const ess::v1::PartnerConfig& partner, const AdapterContext&) const {
  absl::StatusOr<std::unique_ptr<SftpCsvAdapter>> a = SftpCsvAdapter::Create(partner);
  if (!a.ok()) return a.status();
  return std::unique_ptr<Adapter>(*std::move(a));
}

}  // namespace ess::adapters::sftp_csv
