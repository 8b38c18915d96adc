#include "adapters/sftp_csv/sftp_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/sv.h"

namespace ess::adapters::sftp_csv {
namespace {

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// Host key verdict, remembered for the error message.
struct HostKeyCheck {
  curl_khmatch match = CURLKHMATCH_LAST;  // not called yet
};

int CheckHostKey(CURL*, const curl_khkey*, const curl_khkey*, curl_khmatch match, void* arg) {
  static_cast<HostKeyCheck*>(arg)->match = match;
  // Only a key that known_hosts holds for this host passes; nothing is ever added to the file.
  return match == CURLKHMATCH_OK ? CURLKHSTAT_FINE : CURLKHSTAT_REJECT;
}

// A path inside a libcurl QUOTE command, quoted the way libcurl's SFTP quote parser reads it.
std::string QuotePath(std::string_view path) {
  std::string out = "\"";
  for (char c : path) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

std::string JoinPath(std::string_view dir, std::string_view name) {
  std::string out(dir);
  if (out.empty() || out.back() != '/') out.push_back('/');
  out.append(name);
  return out;
}

struct SlistFree {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using Slist = std::unique_ptr<curl_slist, SlistFree>;

Slist MakeSlist(const std::vector<std::string>& items) {
  curl_slist* l = nullptr;
  for (const std::string& s : items) l = curl_slist_append(l, s.c_str());
  return Slist(l);
}

}  // namespace

struct SftpClient::Transfer {
  std::string what;  // "upload of /dir/.x.part", for messages
  std::string url;
  bool nobody = false;
  bool upload = false;
  std::string_view data;
  size_t offset = 0;
  std::vector<std::string> quote;      // before the transfer
  std::vector<std::string> postquote;  // after it, in the same session
  CURLcode code = CURLE_OK;
  bool dirlistonly = false;
  // Stat: ask for the file's time, and read its size and time back.
  bool filetime = false;
  curl_off_t size = -1, mtime = -1;
  // Downloads and listings: where the bytes go, and how many at most.
  std::string* sink = nullptr;
  size_t max_bytes = 0;
  bool too_large = false;  // set when the transfer was cut at max_bytes
  bool sent_all = false;   // uploads: every byte was handed to libcurl
};

SftpClient::SftpClient(Options options, const absl::Notification* cancel)
    : options_(std::move(options)), cancel_(cancel) {
  GlobalInit();
}

SftpClient::~SftpClient() {
  if (curl_ != nullptr) curl_easy_cleanup(static_cast<CURL*>(curl_));
}

std::string SftpClient::Url(std::string_view path) const {
  std::string url = absl::StrCat("sftp://", options_.host, ":", options_.port);
  // Each segment percent-encoded; the slashes kept. A trailing '/' stays (a folder URL).
  for (absl::string_view seg : absl::StrSplit(ToAbsl(path), '/')) {
    if (seg.empty()) continue;
    char* e = curl_easy_escape(nullptr, seg.data(), static_cast<int>(seg.size()));
    absl::StrAppend(&url, "/", e ? e : "");
    curl_free(e);
  }
  if (!path.empty() && path.back() == '/') url.push_back('/');
  return url;
}

absl::Status SftpClient::Perform(Transfer& t) {
  if (cancel_ != nullptr && cancel_->HasBeenNotified()) {
    return absl::CancelledError(absl::StrCat("sftp ", t.what, ": stopping"));
  }
  if (curl_ == nullptr) {
    curl_ = curl_easy_init();
    if (curl_ == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
  }
  CURL* c = static_cast<CURL*>(curl_);
  // Reset drops the options of the previous call but keeps the SSH connection for reuse.
  curl_easy_reset(c);
  char error[CURL_ERROR_SIZE] = {0};
  HostKeyCheck host_key;
  Slist quote = MakeSlist(t.quote);
  Slist postquote = MakeSlist(t.postquote);
  curl_easy_setopt(c, CURLOPT_URL, t.url.c_str());
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "sftp");
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(c, CURLOPT_USERNAME, options_.user.c_str());
  curl_easy_setopt(c, CURLOPT_SSH_AUTH_TYPES, static_cast<long>(CURLSSH_AUTH_PUBLICKEY));
  curl_easy_setopt(c, CURLOPT_SSH_PRIVATE_KEYFILE, options_.private_key_file.c_str());
  // An empty string makes libssh2 derive the public key from the private one.
  curl_easy_setopt(c, CURLOPT_SSH_PUBLIC_KEYFILE, options_.public_key_file.c_str());
  if (!options_.passphrase.empty()) {
    curl_easy_setopt(c, CURLOPT_KEYPASSWD, options_.passphrase.c_str());
  }
  curl_easy_setopt(c, CURLOPT_SSH_KNOWNHOSTS, options_.known_hosts_file.c_str());
  curl_easy_setopt(c, CURLOPT_SSH_KEYFUNCTION, CheckHostKey);
  curl_easy_setopt(c, CURLOPT_SSH_KEYDATA, &host_key);
  curl_easy_setopt(
      c, CURLOPT_TIMEOUT_MS,
      static_cast<long>(std::max<int64_t>(1, absl::ToInt64Milliseconds(options_.timeout))));
  curl_easy_setopt(
      c, CURLOPT_CONNECTTIMEOUT_MS,
      static_cast<long>(std::max<int64_t>(1, absl::ToInt64Milliseconds(options_.connect_timeout))));
  if (quote) curl_easy_setopt(c, CURLOPT_QUOTE, quote.get());
  if (postquote) curl_easy_setopt(c, CURLOPT_POSTQUOTE, postquote.get());
  if (t.nobody) curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  if (t.upload) {
    t.offset = 0;
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_read_callback read = [](char* buf, size_t size, size_t n, void* arg) -> size_t {
      auto* tr = static_cast<Transfer*>(arg);
      size_t len = std::min(size * n, tr->data.size() - tr->offset);
      std::memcpy(buf, tr->data.data() + tr->offset, len);
      tr->offset += len;
      return len;
    };
    curl_easy_setopt(c, CURLOPT_READFUNCTION, read);
    curl_easy_setopt(c, CURLOPT_READDATA, &t);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(t.data.size()));
  }
  if (t.sink != nullptr) {
    t.too_large = false;
    curl_write_callback write = [](char* buf, size_t size, size_t n, void* arg) -> size_t {
      auto* tr = static_cast<Transfer*>(arg);
      const size_t len = size * n;
      if (len > tr->max_bytes - tr->sink->size()) {
        tr->too_large = true;
        return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
      }
      tr->sink->append(buf, len);
      return len;
    };
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
    if (!t.dirlistonly) {
      // Lets libcurl refuse a file whose size it learns up front, before any byte moves.
      curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(t.max_bytes));
    }
  }
  if (t.dirlistonly) curl_easy_setopt(c, CURLOPT_DIRLISTONLY, 1L);
  if (t.filetime) curl_easy_setopt(c, CURLOPT_FILETIME, 1L);
  // libcurl calls this at least about once a second in every step of the call (connecting,
  // SFTP requests, the transfer, the rename after it): it stops the call when asked to, and when
  // no byte moved for stall_timeout. libcurl's own low-speed limit only watches the transfer.
  struct Progress {
    const absl::Notification* cancel;
    absl::Duration stall_timeout;
    curl_off_t moved = 0;
    absl::Time since = absl::Now();
    bool stalled = false;
  } progress{.cancel = cancel_, .stall_timeout = options_.stall_timeout};
  curl_xferinfo_callback watch = [](void* arg, curl_off_t, curl_off_t dlnow, curl_off_t,
                                    curl_off_t ulnow) -> int {
    auto* p = static_cast<Progress*>(arg);
    if (p->cancel != nullptr && p->cancel->HasBeenNotified()) return 1;
    const absl::Time now = absl::Now();
    if (dlnow + ulnow != p->moved) {
      p->moved = dlnow + ulnow;
      p->since = now;
    } else if (now - p->since >= p->stall_timeout) {
      p->stalled = true;
      return 1;
    }
    return 0;
  };
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, watch);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, &progress);
  t.code = curl_easy_perform(c);
  t.sent_all = t.upload && t.offset == t.data.size();
  if (t.code == CURLE_OK && t.filetime) {
    curl_easy_getinfo(c, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &t.size);
    curl_easy_getinfo(c, CURLINFO_FILETIME_T, &t.mtime);
  }
  // The lists and the error buffer die with this frame: unhook them from the handle.
  curl_easy_setopt(c, CURLOPT_QUOTE, nullptr);
  curl_easy_setopt(c, CURLOPT_POSTQUOTE, nullptr);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, nullptr);
  curl_easy_setopt(c, CURLOPT_SSH_KEYDATA, nullptr);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, nullptr);
  if (t.code == CURLE_OK) return absl::OkStatus();
  // A refusal of the server's leaves a sound connection; anything else may leave one in the
  // middle of an exchange (libcurl keeps a connection a callback stopped), so the next call
  // starts on a new one.
  if (t.code != CURLE_QUOTE_ERROR && t.code != CURLE_REMOTE_FILE_NOT_FOUND) {
    curl_easy_cleanup(c);
    curl_ = nullptr;
  }
  if (progress.stalled) {
    return absl::DeadlineExceededError(absl::StrCat("sftp ", t.what, " on ", options_.host, ":",
                                                    options_.port, ": stalled, no byte moved for ",
                                                    absl::FormatDuration(options_.stall_timeout)));
  }

  std::string msg = absl::StrCat("sftp ", t.what, " on ", options_.host, ":", options_.port, ": ",
                                 error[0] != '\0' ? error : curl_easy_strerror(t.code));
  switch (t.code) {
    case CURLE_OPERATION_TIMEDOUT:
      return absl::DeadlineExceededError(msg);
    case CURLE_ABORTED_BY_CALLBACK:
      return absl::CancelledError(absl::StrCat("sftp ", t.what, ": stopping"));
    case CURLE_PEER_FAILED_VERIFICATION:
      if (host_key.match == CURLKHMATCH_MISSING) {
        absl::StrAppend(&msg, " (host key not in ", options_.known_hosts_file, ")");
      } else if (host_key.match == CURLKHMATCH_MISMATCH) {
        absl::StrAppend(&msg, " (host key does not match ", options_.known_hosts_file, ")");
      }
      return absl::PermissionDeniedError(msg);
    case CURLE_LOGIN_DENIED:
      return absl::UnauthenticatedError(msg);
    case CURLE_REMOTE_ACCESS_DENIED:
      return absl::PermissionDeniedError(msg);
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
      return absl::InvalidArgumentError(msg);
    case CURLE_OUT_OF_MEMORY:
      return absl::ResourceExhaustedError(msg);
    default:
      // Connection refused or reset, SSH or SFTP errors, a missing folder, a failed rename.
      return absl::UnavailableError(msg);
  }
}

absl::StatusOr<bool> SftpClient::Exists(std::string_view path) {
  Transfer t{.what = absl::StrCat("check of ", ToAbsl(path)), .url = Url(path), .nobody = true};
  absl::Status s = Perform(t);
  if (s.ok()) return true;
  if (t.code == CURLE_REMOTE_FILE_NOT_FOUND) return false;
  return s;
}

absl::StatusOr<SftpClient::FileStat> SftpClient::Stat(std::string_view path) {
  Transfer t{.what = absl::StrCat("stat of ", ToAbsl(path)),
             .url = Url(path),
             .nobody = true,
             .filetime = true};
  absl::Status s = Perform(t);
  if (t.code == CURLE_REMOTE_FILE_NOT_FOUND) return absl::NotFoundError(s.message());
  if (!s.ok()) return s;
  if (t.size < 0 || t.mtime < 0) {
    return absl::UnavailableError(absl::StrCat("sftp stat of ", ToAbsl(path), " on ", options_.host,
                                               ":", options_.port,
                                               ": the server did not give its size and time"));
  }
  return FileStat{.size = static_cast<uint64_t>(t.size), .mtime = static_cast<int64_t>(t.mtime)};
}

absl::Status SftpClient::UploadAtomically(std::string_view dir, std::string_view name,
                                          std::string_view data) {
  if (name.empty() || name.find('/') != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("bad file name \"", ToAbsl(name), "\""));
  }
  const std::string part = JoinPath(dir, absl::StrCat(".", ToAbsl(name), ".part"));
  const std::string final_path = JoinPath(dir, name);
  Transfer t{.what = absl::StrCat("upload of ", part),
             .url = Url(part),
             .upload = true,
             .data = data,
             .postquote = {absl::StrCat("rename ", QuotePath(part), " ", QuotePath(final_path))}};
  absl::Status s = Perform(t);
  if (s.ok()) return s;
  auto remove_part = [&] {
    Transfer cleanup{.what = absl::StrCat("removal of ", part),
                     .url = Url(JoinPath(dir, "")),
                     .nobody = true,
                     .quote = {absl::StrCat("*rm ", QuotePath(part))}};
    (void)Perform(cleanup);
  };
  if (t.code == CURLE_QUOTE_ERROR) {
    // The upload went through but the server refused the rename. Either the file appeared
    // meanwhile (the rename never overwrites), or the server failed; either way the part goes.
    absl::StatusOr<bool> there = Exists(final_path);
    remove_part();
    if (there.ok() && *there) {
      return absl::AlreadyExistsError(absl::StrCat(final_path, " already exists"));
    }
    return absl::UnavailableError(absl::StrCat(s.message(), " (renaming ", part, ")"));
  }
  if (!t.sent_all || absl::IsCancelled(s) || absl::IsPermissionDenied(s) ||
      absl::IsUnauthenticated(s) || absl::IsInvalidArgument(s)) {
    return s;
  }
  // Every byte was sent and then the connection failed or stalled: the server may have renamed
  // the part file without the answer reaching us. Look again, on a new connection (libcurl drops
  // a failed one): NAME there and the part file gone is that rename, so the upload is done.
  // Without this the caller would retry, and a batch retried under another name would reach the
  // partner twice.
  absl::StatusOr<bool> there = Exists(final_path);
  if (!there.ok()) return s;
  absl::StatusOr<bool> part_there = *there ? Exists(part) : absl::StatusOr<bool>(true);
  if (!part_there.ok()) return s;
  if (*there && !*part_there) return absl::OkStatus();
  remove_part();
  if (*there) return absl::AlreadyExistsError(absl::StrCat(final_path, " already exists"));
  return s;
}

absl::StatusOr<std::vector<std::string>> SftpClient::List(std::string_view dir, size_t max_bytes) {
  std::string listing;
  Transfer t{.what = absl::StrCat("listing of ", ToAbsl(dir)),
             .url = Url(JoinPath(dir, "")),
             .dirlistonly = true,
             .sink = &listing,
             .max_bytes = max_bytes};
  absl::Status s = Perform(t);
  if (t.too_large) {
    return absl::ResourceExhaustedError(
        absl::StrCat("sftp listing of ", ToAbsl(dir), " is larger than ", max_bytes, " bytes"));
  }
  if (!s.ok()) return s;
  std::vector<std::string> names;
  // libcurl writes one name per line.
  for (absl::string_view name : absl::StrSplit(listing, '\n', absl::SkipEmpty())) {
    if (name == "." || name == "..") continue;
    names.emplace_back(name);
  }
  return names;
}

absl::StatusOr<std::string> SftpClient::Download(std::string_view path, size_t max_bytes) {
  std::string data;
  Transfer t{.what = absl::StrCat("download of ", ToAbsl(path)),
             .url = Url(path),
             .sink = &data,
             .max_bytes = max_bytes};
  absl::Status s = Perform(t);
  if (t.too_large || t.code == CURLE_FILESIZE_EXCEEDED) {
    return absl::FailedPreconditionError(
        absl::StrCat("sftp download of ", ToAbsl(path), " on ", options_.host, ":", options_.port,
                     ": the file is larger than ", max_bytes, " bytes"));
  }
  if (t.code == CURLE_REMOTE_FILE_NOT_FOUND) return absl::NotFoundError(s.message());
  if (!s.ok()) return s;
  return data;
}

absl::Status SftpClient::Rename(std::string_view from, std::string_view to) {
  const std::string_view dir = from.substr(0, from.rfind('/') + 1);
  Transfer t{.what = absl::StrCat("rename of ", ToAbsl(from), " to ", ToAbsl(to)),
             .url = Url(dir.empty() ? "/" : dir),
             .nobody = true,
             .quote = {absl::StrCat("rename ", QuotePath(from), " ", QuotePath(to))}};
  absl::Status s = Perform(t);
  if (s.ok() || t.code != CURLE_QUOTE_ERROR) return s;
  // The server refused: say why when it is one of the two expected reasons.
  if (absl::StatusOr<bool> there = Exists(to); there.ok() && *there) {
    return absl::AlreadyExistsError(absl::StrCat(ToAbsl(to), " already exists"));
  }
  if (absl::StatusOr<bool> there = Exists(from); there.ok() && !*there) {
    return absl::NotFoundError(absl::StrCat(ToAbsl(from), " is not there"));
  }
  return s;
}

absl::Status SftpClient::Remove(std::string_view path) {
  const std::string_view dir = path.substr(0, path.rfind('/') + 1);
  Transfer t{.what = absl::StrCat("removal of ", ToAbsl(path)),
             .url = Url(dir.empty() ? "/" : dir),
             .nobody = true,
             .quote = {absl::StrCat("rm ", QuotePath(path))}};
  absl::Status s = Perform(t);
  if (s.ok() || t.code != CURLE_QUOTE_ERROR) return s;
  if (absl::StatusOr<bool> there = Exists(path); there.ok() && !*there) {
    return absl::NotFoundError(absl::StrCat(ToAbsl(path), " is not there"));
  }
  return s;
}

}  // namespace ess::adapters::sftp_csv
