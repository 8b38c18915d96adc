// A small blocking SFTP client (libssh2) for one server: checks whether a file exists, uploads
// a file atomically, lists a folder, downloads, renames and removes files.
//
//   SftpClient client({.host = "127.0.0.1", .port = 2222, .user = "ess",
//                      .private_key_file = "/keys/id_ed25519",
//                      .known_hosts_file = "/keys/known_hosts"});
//   absl::StatusOr<bool> there = client.Exists("/inbound/visits.csv");
//   absl::Status s = client.UploadAtomically("/inbound", "visits.csv", bytes);
//   absl::StatusOr<std::vector<std::string>> names = client.List("/outbound");
//   absl::StatusOr<std::string> data = client.Download("/outbound/a.csv", 64 << 20);
//   s = client.Rename("/outbound/a.csv", "/outbound/done/a.csv");
//
// Guarantees:
//  * the server's host key must be in known_hosts: unknown and mismatched keys are rejected
//    before anything is sent (no trust on first use);
//  * public-key authentication only;
//  * every call is bounded in time: it fails when no byte moved for `stall_timeout` (a server
//    or link that stopped answering, at any step of the call) and, however slowly bytes still
//    move, after `timeout` in all (connecting included);
//  * UploadAtomically writes DIR/.NAME.part and renames it to DIR/NAME in the same session, so a
//    reader of DIR never sees a partial NAME; an existing NAME is never overwritten. When the
//    connection fails after the whole file was sent, the rename may have happened unheard: the
//    client looks again on a new connection, and NAME there with the part file gone is success.
//
// Status codes (what they mean for a caller that retries):
//   UNAVAILABLE         the server cannot be reached or failed the transfer, the remote folder is
//                       missing, the rename failed (retryable)
//   DEADLINE_EXCEEDED   the call stalled for stall_timeout, or ran out of timeout (retryable)
//   PERMISSION_DENIED   the host key is unknown or does not match known_hosts, or the server
//                       refused access to the path (permanent: configuration)
//   UNAUTHENTICATED     the server refused the key (permanent: configuration)
//   ALREADY_EXISTS      UploadAtomically: DIR/NAME appeared meanwhile; Rename: the target exists
//                       (nothing overwritten either way)
//   NOT_FOUND           Download, Rename, Remove: the file is not there
//   FAILED_PRECONDITION Download: the file is larger than the limit (nothing returned)
//   RESOURCE_EXHAUSTED  List: the listing is larger than its limit
//   INVALID_ARGUMENT    a bad file name
//
// Not thread-safe: one thread uses a client. Its SSH connection is kept and reused between
// calls; after a call failed at the transport (or stalled, or was stopped) the next one starts
// on a new connection.
//
// libssh2 directly, not through libcurl: Debian 12's libcurl (7.88) leaks the SSH session of
// every SFTP call that fails mid-transfer (curl/curl#16656, fixed in 8.13), and it keeps a
// connection a callback stopped for the next call, in the middle of an exchange.
#ifndef ESS_ADAPTERS_SFTP_CSV_SFTP_CLIENT_H_
#define ESS_ADAPTERS_SFTP_CSV_SFTP_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

struct _LIBSSH2_SFTP_HANDLE;

namespace ess::adapters::sftp_csv {

class SftpClient {
 public:
  struct Options {
    std::string host;
    uint32_t port = 22;
    std::string user;
    std::string private_key_file;
    // Derived from the private key by libssh2 when empty.
    std::string public_key_file;
    // Passphrase of the private key; none when empty.
    std::string passphrase;
    std::string known_hosts_file;
    // The longest a call may take in all, and the longest it may wait for the server without
    // anything moving (an answer, a packet of the file). A file's bytes count as a whole SFTP
    // data packet (~30 KB) arrives, so on a link slower than 30 KB per stall_timeout a moving
    // transfer looks stalled.
    absl::Duration timeout = absl::Minutes(10);
    absl::Duration stall_timeout = absl::Seconds(30);
    // The longest setting up a connection may take: TCP, the SSH handshake, the login and the
    // SFTP channel (the stall timeout applies after it).
    absl::Duration connect_timeout = absl::Seconds(5);
  };

  // `cancel`, if given, must outlive the client: once it is notified, a call under way stops
  // within about 200 ms with CANCELLED, and so does every later call.
  explicit SftpClient(Options options, const absl::Notification* cancel = nullptr);
  ~SftpClient();
  SftpClient(const SftpClient&) = delete;
  SftpClient& operator=(const SftpClient&) = delete;

  // True if the absolute `path` exists on the server, false if it does not.
  absl::StatusOr<bool> Exists(std::string_view path);

  struct FileStat {
    uint64_t size = 0;
    int64_t mtime = 0;  // Unix seconds, by the server's clock
    bool operator==(const FileStat&) const = default;
  };
  // The size and modification time of the absolute `path` (one SFTP stat). NOT_FOUND if it is
  // not there.
  absl::StatusOr<FileStat> Stat(std::string_view path);

  // Uploads `data` as DIR/NAME through DIR/.NAME.part (see the file comment). `dir` is absolute;
  // `name` has no '/'. On a failed rename the part file is removed (best effort), and so it is
  // when the connection failed and NAME is not there.
  absl::Status UploadAtomically(std::string_view dir, std::string_view name, std::string_view data);

  // The names in the absolute folder `dir`, in the server's order, without "." and "..";
  // folders and links are listed too (a name alone does not tell them apart). UNAVAILABLE if
  // the folder is missing; RESOURCE_EXHAUSTED if the listing exceeds `max_bytes`.
  absl::StatusOr<std::vector<std::string>> List(std::string_view dir,
                                                size_t max_bytes = size_t{16} << 20);

  // The bytes of the absolute `path`. FAILED_PRECONDITION, after at most about `max_bytes` were
  // read, if the file is larger; NOT_FOUND if it is not there.
  absl::StatusOr<std::string> Download(std::string_view path, size_t max_bytes);

  // Renames the absolute `from` to the absolute `to` (any folder of the same file system).
  // ALREADY_EXISTS if `to` exists: SFTP version 3 (what libssh2 speaks; OpenSSH follows it)
  // never overwrites.
  // NOT_FOUND if `from` is not there.
  absl::Status Rename(std::string_view from, std::string_view to);

  // Removes the absolute `path` (a file). NOT_FOUND if it is not there.
  absl::Status Remove(std::string_view path);

 private:
  struct Session;
  class Call;

  // (Re)connects unless the session is sound: TCP, SSH handshake, host key, key, SFTP.
  absl::Status Connect(Call& call);
  template <typename Step>
  absl::StatusOr<long> Run(Call& call, Step step);
  absl::Status Failure(Call& call, long rc);
  _LIBSSH2_SFTP_HANDLE* Open(Call& call, std::string_view path, unsigned long flags, long mode,
                             int type, absl::Status* status);
  absl::Status CloseHandle(Call& call, _LIBSSH2_SFTP_HANDLE* handle);
  absl::StatusOr<FileStat> StatPath(Call& call, std::string_view path);

  Options options_;
  const absl::Notification* const cancel_;
  std::unique_ptr<Session> session_;  // made by the first call
};

}  // namespace ess::adapters::sftp_csv

#endif  // ESS_ADAPTERS_SFTP_CSV_SFTP_CLIENT_H_
