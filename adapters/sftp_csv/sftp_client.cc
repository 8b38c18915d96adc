#include "adapters/sftp_csv/sftp_client.h"

#include <libssh2.h>
#include <libssh2_sftp.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/sv.h"

namespace ess::adapters::sftp_csv {
namespace {

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { libssh2_init(0); });
}

std::string JoinPath(std::string_view dir, std::string_view name) {
  std::string out(dir);
  if (out.empty() || out.back() != '/') out.push_back('/');
  out.append(name);
  return out;
}

// The SFTP status codes a server answers with, in words.
const char* FxName(unsigned long code) {
  switch (code) {
    case LIBSSH2_FX_NO_SUCH_FILE:
      return "no such file";
    case LIBSSH2_FX_PERMISSION_DENIED:
      return "permission denied";
    case LIBSSH2_FX_FAILURE:
      return "failure";
    case LIBSSH2_FX_NO_SUCH_PATH:
      return "no such path";
    case LIBSSH2_FX_FILE_ALREADY_EXISTS:
      return "file already exists";
    case LIBSSH2_FX_NO_SPACE_ON_FILESYSTEM:
      return "no space left";
    case LIBSSH2_FX_QUOTA_EXCEEDED:
      return "quota exceeded";
    case LIBSSH2_FX_OP_UNSUPPORTED:
      return "operation unsupported";
    default:
      return "error";
  }
}

int KnownHostKeyType(int hostkey_type) {
  switch (hostkey_type) {
    case LIBSSH2_HOSTKEY_TYPE_RSA:
      return LIBSSH2_KNOWNHOST_KEY_SSHRSA;
    case LIBSSH2_HOSTKEY_TYPE_DSS:
      return LIBSSH2_KNOWNHOST_KEY_SSHDSS;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_256:
      return LIBSSH2_KNOWNHOST_KEY_ECDSA_256;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_384:
      return LIBSSH2_KNOWNHOST_KEY_ECDSA_384;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_521:
      return LIBSSH2_KNOWNHOST_KEY_ECDSA_521;
    case LIBSSH2_HOSTKEY_TYPE_ED25519:
      return LIBSSH2_KNOWNHOST_KEY_ED25519;
    default:
      return LIBSSH2_KNOWNHOST_KEY_UNKNOWN;
  }
}

constexpr size_t kChunk = 64 * 1024;
// An idle connection older than this is not reused: servers and firewalls drop idle
// connections, some without a word, and a new one costs a handshake (tens of ms).
constexpr absl::Duration kMaxIdle = absl::Seconds(50);
// One idle longer than this is asked whether it still answers before it is reused, and one
// that does not answer within kProbeStall is replaced.
constexpr absl::Duration kProbeAfterIdle = absl::Seconds(1);
constexpr absl::Duration kProbeStall = absl::Seconds(2);

}  // namespace

// One SSH connection with its SFTP channel, non-blocking: every libssh2 call that would block
// returns EAGAIN, and Call::Wait waits on the socket, watching the stop, the stall timeout and
// the deadline.
struct SftpClient::Session {
  int fd = -1;
  LIBSSH2_SESSION* ssh = nullptr;
  LIBSSH2_SFTP* sftp = nullptr;
  // Set when a call failed at the transport (or stalled, or was stopped): the session may be
  // in the middle of an exchange and is never used again.
  bool broken = false;
  absl::Time last_used;

  // Whether the server may still be there: an end of stream or an error waiting on the socket
  // says it closed the connection (an idle timeout of its own, a restart).
  bool Alive() const {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 0) == 0) return true;
    if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) return false;
    char c;
    const ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
  }

  ~Session() {
    // The socket goes first: libssh2's teardown then fails at once instead of waiting for
    // answers (a polite close of a healthy session is not worth waiting for either).
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
    if (sftp != nullptr) libssh2_sftp_shutdown(sftp);
    if (ssh != nullptr) libssh2_session_free(ssh);
    if (fd >= 0) close(fd);
  }
};

// The time limits and the description of one public call.
class SftpClient::Call {
 public:
  Call(const SftpClient& client, std::string what)
      : client_(client),
        what_(std::move(what)),
        start_(absl::Now()),
        deadline_(start_ + client.options_.timeout),
        stall_timeout_(client.options_.stall_timeout),
        progress_(start_) {}

  // A shorter stall timeout from here on (at most the client's).
  void LimitStall(absl::Duration d) { stall_timeout_ = std::min(stall_timeout_, d); }
  // Until SetupDone(), the connection is being set up: it must be done by `by`
  // (connect_timeout), however long a step of it takes.
  void SetupUntil(absl::Time by) { setup_by_ = by; }
  // What the setup waits for now, for the message when it runs out of time: "the SSH
  // handshake did not finish".
  void SetupStep(std::string_view what_failed) { setup_step_ = what_failed; }
  void SetupDone() {
    setup_by_.reset();
    Progress();
  }

  const std::string& what() const { return what_; }
  // Something moved: a request answered, bytes read or written.
  void Progress() { progress_ = absl::Now(); }

  std::string Message(std::string_view detail) const {
    return absl::StrCat("sftp ", what_, " on ", client_.options_.host, ":", client_.options_.port,
                        ": ", ToAbsl(detail));
  }

  // Waits for the socket as libssh2 asks (at most 200 ms at a time). CANCELLED once stopping,
  // DEADLINE_EXCEEDED when nothing moved for stall_timeout or the call ran out of timeout.
  absl::Status Wait(Session& s) const {
    if (client_.cancel_ != nullptr && client_.cancel_->HasBeenNotified()) {
      return absl::CancelledError(absl::StrCat("sftp ", what_, ": stopping"));
    }
    const absl::Time now = absl::Now();
    if (setup_by_.has_value() && now >= *setup_by_) {
      return absl::DeadlineExceededError(Message(absl::StrCat(
          "no SFTP session within ", absl::FormatDuration(client_.options_.connect_timeout), ": ",
          ToAbsl(setup_step_))));
    }
    if (!setup_by_.has_value() && now - progress_ >= stall_timeout_) {
      return absl::DeadlineExceededError(Message(
          absl::StrCat("stalled, no byte moved for ", absl::FormatDuration(stall_timeout_))));
    }
    if (now >= deadline_) {
      return absl::DeadlineExceededError(Message(
          absl::StrCat("timed out after ", absl::FormatDuration(client_.options_.timeout))));
    }
    const int dir = libssh2_session_block_directions(s.ssh);
    pollfd p{s.fd, 0, 0};
    if (dir & LIBSSH2_SESSION_BLOCK_INBOUND) p.events |= POLLIN;
    if (dir & LIBSSH2_SESSION_BLOCK_OUTBOUND) p.events |= POLLOUT;
    if (p.events == 0) p.events = POLLIN;
    const absl::Duration left =
        std::min({absl::Milliseconds(200), deadline_ - now,
                  setup_by_.has_value() ? *setup_by_ - now : stall_timeout_ - (now - progress_)});
    poll(&p, 1, static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(left))));
    return absl::OkStatus();
  }

  absl::Time deadline() const { return deadline_; }

 private:
  const SftpClient& client_;
  std::string what_;
  absl::Time start_, deadline_;
  absl::Duration stall_timeout_;
  absl::Time progress_;
  std::optional<absl::Time> setup_by_;
  std::string_view setup_step_ = "the connection was not set up";
};

SftpClient::SftpClient(Options options, const absl::Notification* cancel)
    : options_(std::move(options)), cancel_(cancel) {
  GlobalInit();
}

SftpClient::~SftpClient() = default;

// A failed libssh2 call: the server's SFTP refusal (the session stays usable) or a transport
// failure (it does not).
absl::Status SftpClient::Failure(Call& call, long rc) {
  if (rc == LIBSSH2_ERROR_SFTP_PROTOCOL && session_ != nullptr) {
    const unsigned long fx = libssh2_sftp_last_error(session_->sftp);
    const std::string msg = call.Message(absl::StrCat("the server answered: ", FxName(fx)));
    switch (fx) {
      case LIBSSH2_FX_NO_SUCH_FILE:
      case LIBSSH2_FX_NO_SUCH_PATH:
        return absl::NotFoundError(msg);
      case LIBSSH2_FX_PERMISSION_DENIED:
        return absl::PermissionDeniedError(msg);
      default:
        return absl::UnavailableError(msg);
    }
  }
  std::string detail = "connection failed";
  if (session_ != nullptr && session_->ssh != nullptr) {
    char* text = nullptr;
    libssh2_session_last_error(session_->ssh, &text, nullptr, 0);
    if (text != nullptr && *text != '\0') detail = text;
    session_->broken = true;
  }
  return absl::UnavailableError(call.Message(detail));
}

// Runs `step` (a libssh2 call) until it stops answering EAGAIN. Its result when it succeeded
// (zero or more); else Failure's status, or the wait's (the session is then broken).
template <typename Step>
absl::StatusOr<long> SftpClient::Run(Call& call, Step step) {
  for (;;) {
    const long rc = step();
    if (rc != LIBSSH2_ERROR_EAGAIN) {
      session_->last_used = absl::Now();
      if (rc < 0) return Failure(call, rc);
      call.Progress();
      return rc;
    }
    if (absl::Status s = call.Wait(*session_); !s.ok()) {
      session_->broken = true;
      return s;
    }
  }
}

absl::Status SftpClient::Connect(Call& call) {
  if (cancel_ != nullptr && cancel_->HasBeenNotified()) {
    return absl::CancelledError(absl::StrCat("sftp ", call.what(), ": stopping"));
  }
  // A connection is reused while it was used recently and still answers: one that sat idle
  // for a while is asked first (a stat of "."), since a server may have closed its SFTP
  // channel, or the whole connection, meanwhile.
  if (session_ != nullptr && !session_->broken && session_->Alive()) {
    const absl::Duration idle = absl::Now() - session_->last_used;
    if (idle < kProbeAfterIdle) return absl::OkStatus();
    if (idle < kMaxIdle) {
      // libssh2 learns that the server closed the channel only by waiting for an answer that
      // never comes: a short wait decides.
      Call probe(*this, call.what());
      probe.LimitStall(kProbeStall);
      LIBSSH2_SFTP_ATTRIBUTES attrs{};
      absl::StatusOr<long> rc = Run(probe, [&] {
        return libssh2_sftp_stat_ex(session_->sftp, ".", 1, LIBSSH2_SFTP_STAT, &attrs);
      });
      // Any answer, a refusal included, says the session works.
      if (rc.ok() || !session_->broken) return absl::OkStatus();
      if (absl::IsCancelled(rc.status())) return rc.status();
    }
  }
  session_.reset();
  auto s = std::make_unique<Session>();

  // TCP, bounded by connect_timeout.
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* addrs = nullptr;
  const std::string port = absl::StrCat(options_.port);
  if (int rc = getaddrinfo(options_.host.c_str(), port.c_str(), &hints, &addrs); rc != 0) {
    return absl::UnavailableError(call.Message(gai_strerror(rc)));
  }
  const absl::Time connect_by = std::min(absl::Now() + options_.connect_timeout, call.deadline());
  call.SetupUntil(connect_by);
  std::string error = "no address";
  bool timed_out = false;
  for (addrinfo* a = addrs; a != nullptr && s->fd < 0; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      error = std::strerror(errno);
      continue;
    }
    int err = connect(fd, a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
    while (err == EINPROGRESS) {
      if (cancel_ != nullptr && cancel_->HasBeenNotified()) break;
      const absl::Duration left = connect_by - absl::Now();
      if (left <= absl::ZeroDuration()) {
        timed_out = true;
        break;
      }
      pollfd p{fd, POLLOUT, 0};
      const int ms = static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(left), 1, 200));
      if (poll(&p, 1, ms) > 0) {
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      }
    }
    if (err == 0) {
      s->fd = fd;
    } else {
      if (err != EINPROGRESS) error = std::strerror(err);
      close(fd);
    }
  }
  freeaddrinfo(addrs);
  if (cancel_ != nullptr && cancel_->HasBeenNotified()) {
    return absl::CancelledError(absl::StrCat("sftp ", call.what(), ": stopping"));
  }
  if (s->fd < 0) {
    if (timed_out) {
      return absl::DeadlineExceededError(call.Message(
          absl::StrCat("no connection within ", absl::FormatDuration(options_.connect_timeout))));
    }
    return absl::UnavailableError(call.Message(absl::StrCat("cannot connect: ", error)));
  }
  call.Progress();

  s->ssh = libssh2_session_init();
  if (s->ssh == nullptr) return absl::ResourceExhaustedError("libssh2_session_init failed");
  libssh2_session_set_blocking(s->ssh, 0);
  session_ = std::move(s);
  Session& ss = *session_;
  auto run = [&](auto step) { return Run(call, step); };

  call.SetupStep("the SSH handshake did not finish");
  absl::StatusOr<long> rc = run([&] { return libssh2_session_handshake(ss.ssh, ss.fd); });
  if (!rc.ok()) return rc.status();

  // The host key must be in known_hosts: nothing is sent before it is checked.
  size_t key_len = 0;
  int key_type = 0;
  const char* key = libssh2_session_hostkey(ss.ssh, &key_len, &key_type);
  LIBSSH2_KNOWNHOSTS* known = libssh2_knownhost_init(ss.ssh);
  int check = LIBSSH2_KNOWNHOST_CHECK_FAILURE;
  if (key != nullptr && known != nullptr &&
      libssh2_knownhost_readfile(known, options_.known_hosts_file.c_str(),
                                 LIBSSH2_KNOWNHOST_FILE_OPENSSH) >= 0) {
    check = libssh2_knownhost_checkp(
        known, options_.host.c_str(), static_cast<int>(options_.port), key, key_len,
        LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW | KnownHostKeyType(key_type),
        nullptr);
  }
  if (known != nullptr) libssh2_knownhost_free(known);
  if (check != LIBSSH2_KNOWNHOST_CHECK_MATCH) {
    ss.broken = true;
    const std::string why = check == LIBSSH2_KNOWNHOST_CHECK_MISMATCH ? "host key does not match "
                            : check == LIBSSH2_KNOWNHOST_CHECK_NOTFOUND
                                ? "host key not in "
                                : "host key not checked against ";
    return absl::PermissionDeniedError(call.Message(absl::StrCat(why, options_.known_hosts_file)));
  }

  call.SetupStep("the login did not finish");
  rc = run([&] {
    return libssh2_userauth_publickey_fromfile_ex(
        ss.ssh, options_.user.c_str(), static_cast<unsigned>(options_.user.size()),
        options_.public_key_file.empty() ? nullptr : options_.public_key_file.c_str(),
        options_.private_key_file.c_str(),
        options_.passphrase.empty() ? nullptr : options_.passphrase.c_str());
  });
  if (!rc.ok()) {
    // A refused key (or one that cannot be read) is permanent; a dropped connection is not.
    const int err = libssh2_session_last_errno(ss.ssh);
    if (err != LIBSSH2_ERROR_AUTHENTICATION_FAILED && err != LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED &&
        err != LIBSSH2_ERROR_FILE) {
      return rc.status();
    }
    char* text = nullptr;
    libssh2_session_last_error(ss.ssh, &text, nullptr, 0);
    return absl::UnauthenticatedError(call.Message(
        absl::StrCat("public key of ", options_.user, " refused: ", text != nullptr ? text : "")));
  }

  // A server whose SFTP subsystem is missing or exits at once closes the channel, which
  // libssh2 1.10 does not notice: it waits for the version packet until connect_timeout.
  call.SetupStep(
      "logged in, but the server's SFTP subsystem did not start (is it enabled, and does it "
      "run?)");
  for (;;) {
    ss.sftp = libssh2_sftp_init(ss.ssh);
    if (ss.sftp != nullptr) break;
    if (libssh2_session_last_errno(ss.ssh) != LIBSSH2_ERROR_EAGAIN) {
      return Failure(call, libssh2_session_last_errno(ss.ssh));
    }
    if (absl::Status w = call.Wait(ss); !w.ok()) {
      ss.broken = true;
      return w;
    }
  }
  call.SetupDone();
  ss.last_used = absl::Now();
  return absl::OkStatus();
}

// Opens `path`; null with the failure in `status`.
LIBSSH2_SFTP_HANDLE* SftpClient::Open(Call& call, std::string_view path, unsigned long flags,
                                      long mode, int type, absl::Status* status) {
  for (;;) {
    LIBSSH2_SFTP_HANDLE* h = libssh2_sftp_open_ex(
        session_->sftp, path.data(), static_cast<unsigned>(path.size()), flags, mode, type);
    if (h != nullptr) {
      call.Progress();
      return h;
    }
    const int err = libssh2_session_last_errno(session_->ssh);
    if (err != LIBSSH2_ERROR_EAGAIN) {
      *status = Failure(call, err);
      return nullptr;
    }
    if (absl::Status w = call.Wait(*session_); !w.ok()) {
      session_->broken = true;
      *status = w;
      return nullptr;
    }
  }
}

// Closes `h`; on a broken session only its memory is let go of.
absl::Status SftpClient::CloseHandle(Call& call, LIBSSH2_SFTP_HANDLE* h) {
  if (session_->broken) {
    // Nothing more can be said to the server; libssh2 frees the handle when the close
    // cannot be sent, which the dead socket makes immediate.
    shutdown(session_->fd, SHUT_RDWR);
    libssh2_sftp_close_handle(h);
    return absl::OkStatus();
  }
  absl::StatusOr<long> rc = Run(call, [&] { return libssh2_sftp_close_handle(h); });
  if (!rc.ok() && session_->broken) {  // a server's refusal frees the handle; nothing else does
    shutdown(session_->fd, SHUT_RDWR);
    libssh2_sftp_close_handle(h);
  }
  return rc.status();
}

absl::StatusOr<SftpClient::FileStat> SftpClient::StatPath(Call& call, std::string_view path) {
  if (absl::Status s = Connect(call); !s.ok()) return s;
  LIBSSH2_SFTP_ATTRIBUTES attrs{};
  absl::StatusOr<long> rc = Run(call, [&] {
    return libssh2_sftp_stat_ex(session_->sftp, path.data(), static_cast<unsigned>(path.size()),
                                LIBSSH2_SFTP_STAT, &attrs);
  });
  if (!rc.ok()) return rc.status();
  if (!(attrs.flags & LIBSSH2_SFTP_ATTR_SIZE) || !(attrs.flags & LIBSSH2_SFTP_ATTR_ACMODTIME)) {
    return absl::UnavailableError(call.Message("the server did not give its size and time"));
  }
  return FileStat{.size = attrs.filesize, .mtime = static_cast<int64_t>(attrs.mtime)};
}

absl::StatusOr<bool> SftpClient::Exists(std::string_view path) {
  Call call(*this, absl::StrCat("check of ", ToAbsl(path)));
  absl::StatusOr<FileStat> st = StatPath(call, path);
  if (st.ok()) return true;
  if (absl::IsNotFound(st.status())) return false;
  return st.status();
}

absl::StatusOr<SftpClient::FileStat> SftpClient::Stat(std::string_view path) {
  Call call(*this, absl::StrCat("stat of ", ToAbsl(path)));
  return StatPath(call, path);
}

absl::Status SftpClient::UploadAtomically(std::string_view dir, std::string_view name,
                                          std::string_view data) {
  if (name.empty() || name.find('/') != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("bad file name \"", ToAbsl(name), "\""));
  }
  const std::string part = JoinPath(dir, absl::StrCat(".", ToAbsl(name), ".part"));
  const std::string final_path = JoinPath(dir, name);
  Call call(*this, absl::StrCat("upload of ", part));
  if (absl::Status s = Connect(call); !s.ok()) return s;

  // Writes the part file, then renames it; `sent_all` once the server took every byte.
  bool sent_all = false;
  absl::Status s = [&]() -> absl::Status {
    absl::Status open_failed;
    LIBSSH2_SFTP_HANDLE* h =
        Open(call, part, LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT | LIBSSH2_FXF_TRUNC, 0644,
             LIBSSH2_SFTP_OPENFILE, &open_failed);
    if (h == nullptr) {
      // A missing folder is the partner's to fix, and may be fixed: retryable.
      if (absl::IsNotFound(open_failed)) {
        return absl::UnavailableError(
            absl::StrCat(open_failed.message(), " (is ", ToAbsl(dir), " there?)"));
      }
      return open_failed;
    }
    size_t off = 0;
    while (off < data.size()) {
      absl::StatusOr<long> n = Run(call, [&] {
        return static_cast<long>(
            libssh2_sftp_write(h, data.data() + off, std::min(kChunk, data.size() - off)));
      });
      if (!n.ok()) {
        (void)CloseHandle(call, h);
        return n.status();
      }
      off += static_cast<size_t>(*n);
    }
    // The close answers once the server wrote everything.
    if (absl::Status c = CloseHandle(call, h); !c.ok()) return c;
    sent_all = true;
    absl::StatusOr<long> rc = Run(call, [&] {
      return libssh2_sftp_rename_ex(session_->sftp, part.data(), static_cast<unsigned>(part.size()),
                                    final_path.data(), static_cast<unsigned>(final_path.size()),
                                    LIBSSH2_SFTP_RENAME_ATOMIC | LIBSSH2_SFTP_RENAME_NATIVE);
    });
    return rc.status();
  }();
  if (s.ok()) return s;
  auto remove_part = [&] {
    Call cleanup(*this, absl::StrCat("removal of ", part));
    if (Connect(cleanup).ok()) {
      (void)Run(cleanup, [&] {
        return libssh2_sftp_unlink_ex(session_->sftp, part.data(),
                                      static_cast<unsigned>(part.size()));
      });
    }
  };
  const bool broken = session_ == nullptr || session_->broken;
  if (!broken && sent_all) {
    // The server refused the rename. Either the file appeared meanwhile (a rename never
    // overwrites), or the server failed; either way the part file goes.
    absl::StatusOr<bool> there = Exists(final_path);
    remove_part();
    if (there.ok() && *there) {
      return absl::AlreadyExistsError(absl::StrCat(final_path, " already exists"));
    }
    return absl::UnavailableError(absl::StrCat(s.message(), " (renaming ", part, ")"));
  }
  if (absl::IsCancelled(s) || absl::IsPermissionDenied(s) || absl::IsUnauthenticated(s)) return s;
  if (!sent_all) {
    remove_part();  // best effort, on a new connection if this one failed
    return s;
  }
  // Every byte was taken and then the connection failed or stalled: the server may have
  // renamed the part file without the answer reaching us. Look again, on a new connection:
  // NAME there and the part file gone is that rename, so the upload is done. Without this the
  // caller would retry, and a batch retried under another name would reach the partner twice.
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
  Call call(*this, absl::StrCat("listing of ", ToAbsl(dir)));
  if (absl::Status s = Connect(call); !s.ok()) return s;
  absl::Status open_failed;
  LIBSSH2_SFTP_HANDLE* h = Open(call, dir, 0, 0, LIBSSH2_SFTP_OPENDIR, &open_failed);
  if (h == nullptr) {
    // A missing folder is retryable: the partner may create it.
    if (absl::IsNotFound(open_failed)) return absl::UnavailableError(open_failed.message());
    return open_failed;
  }
  std::vector<std::string> names;
  size_t bytes = 0;
  char name[4096];
  for (;;) {
    LIBSSH2_SFTP_ATTRIBUTES attrs{};
    absl::StatusOr<long> n = Run(call, [&] {
      return static_cast<long>(
          libssh2_sftp_readdir_ex(h, name, sizeof(name) - 1, nullptr, 0, &attrs));
    });
    if (!n.ok()) {
      (void)CloseHandle(call, h);
      return n.status();
    }
    if (*n == 0) break;  // the end
    const std::string_view entry(name, static_cast<size_t>(*n));
    if (entry == "." || entry == "..") continue;
    bytes += entry.size() + 1;
    if (bytes > max_bytes) {
      (void)CloseHandle(call, h);
      return absl::ResourceExhaustedError(
          absl::StrCat("sftp listing of ", ToAbsl(dir), " is larger than ", max_bytes, " bytes"));
    }
    names.emplace_back(entry);
  }
  if (absl::Status c = CloseHandle(call, h); !c.ok()) return c;
  return names;
}

absl::StatusOr<std::string> SftpClient::Download(std::string_view path, size_t max_bytes) {
  Call call(*this, absl::StrCat("download of ", ToAbsl(path)));
  if (absl::Status s = Connect(call); !s.ok()) return s;
  absl::Status open_failed;
  LIBSSH2_SFTP_HANDLE* h =
      Open(call, path, LIBSSH2_FXF_READ, 0, LIBSSH2_SFTP_OPENFILE, &open_failed);
  if (h == nullptr) return open_failed;
  auto too_large = [&] {
    return absl::FailedPreconditionError(
        call.Message(absl::StrCat("the file is larger than ", max_bytes, " bytes")));
  };
  // The size up front, so that a file too large is refused before any byte moves.
  LIBSSH2_SFTP_ATTRIBUTES attrs{};
  absl::StatusOr<long> rc = Run(call, [&] { return libssh2_sftp_fstat_ex(h, &attrs, 0); });
  if (!rc.ok()) {
    (void)CloseHandle(call, h);
    return rc.status();
  }
  if ((attrs.flags & LIBSSH2_SFTP_ATTR_SIZE) && attrs.filesize > max_bytes) {
    (void)CloseHandle(call, h);
    return too_large();
  }
  std::string data;
  if (attrs.flags & LIBSSH2_SFTP_ATTR_SIZE) data.reserve(attrs.filesize);
  char buf[kChunk];
  for (;;) {
    absl::StatusOr<long> n =
        Run(call, [&] { return static_cast<long>(libssh2_sftp_read(h, buf, sizeof(buf))); });
    if (!n.ok()) {
      (void)CloseHandle(call, h);
      return n.status();
    }
    if (*n == 0) break;
    if (static_cast<size_t>(*n) > max_bytes - data.size()) {
      // It grew past the limit while being read.
      session_->broken = true;  // reads still in flight: start over on a new connection
      (void)CloseHandle(call, h);
      return too_large();
    }
    data.append(buf, static_cast<size_t>(*n));
  }
  if (absl::Status c = CloseHandle(call, h); !c.ok()) return c;
  return data;
}

absl::Status SftpClient::Rename(std::string_view from, std::string_view to) {
  Call call(*this, absl::StrCat("rename of ", ToAbsl(from), " to ", ToAbsl(to)));
  if (absl::Status s = Connect(call); !s.ok()) return s;
  absl::StatusOr<long> rc = Run(call, [&] {
    return libssh2_sftp_rename_ex(session_->sftp, from.data(), static_cast<unsigned>(from.size()),
                                  to.data(), static_cast<unsigned>(to.size()),
                                  LIBSSH2_SFTP_RENAME_ATOMIC | LIBSSH2_SFTP_RENAME_NATIVE);
  });
  if (rc.ok()) return absl::OkStatus();
  const absl::Status s = rc.status();
  if (session_->broken) return s;
  // The server refused: say why when it is one of the two expected reasons.
  if (absl::StatusOr<bool> there = Exists(to); there.ok() && *there) {
    return absl::AlreadyExistsError(absl::StrCat(ToAbsl(to), " already exists"));
  }
  if (absl::StatusOr<bool> there = Exists(from); there.ok() && !*there) {
    return absl::NotFoundError(absl::StrCat(ToAbsl(from), " is not there"));
  }
  // `from` is there: "no such file" is the target's folder, which may yet be made.
  if (absl::IsNotFound(s)) return absl::UnavailableError(s.message());
  return s;
}

absl::Status SftpClient::Remove(std::string_view path) {
  Call call(*this, absl::StrCat("removal of ", ToAbsl(path)));
  if (absl::Status s = Connect(call); !s.ok()) return s;
  absl::StatusOr<long> rc = Run(call, [&] {
    return libssh2_sftp_unlink_ex(session_->sftp, path.data(), static_cast<unsigned>(path.size()));
  });
  if (absl::IsNotFound(rc.status())) {
    return absl::NotFoundError(absl::StrCat(ToAbsl(path), " is not there"));
  }
  return rc.status();
}

}  // namespace ess::adapters::sftp_csv
