// An SFTP subsystem for fault tests: it runs OpenSSH's real sftp-server as its child and relays
// the SFTP stream between it and the SSH channel (its own stdin and stdout), injecting the fault
// that a mode file names. sshd starts it for every SFTP session, as
//
//   Subsystem sftp /path/to/sftp_fault_relay /path/to/mode_file
//
// (scripts/sshd.sh: ESS_SSHD_SFTP_SUBSYSTEM), and it reads the mode file once, at the start of
// the session, so a test changes the fault of the next connection by rewriting the file. Modes
// (one line; a missing or empty file is "pass"):
//
//   pass              relay everything
//   stall_at TYPE     once the client sends a request of SFTP packet type TYPE (3 OPEN, 5 READ,
//                     6 WRITE, 17 STAT, 18 RENAME, ...), relay nothing more either way: that
//                     request never reaches the server, and the client waits for an answer that
//                     never comes (until it gives up and the channel closes)
//   drop_reply TYPE   relay the request of type TYPE, wait for the server's answer to it (so the
//                     server has acted), then end the session without relaying that answer: a
//                     connection lost after the server did the work
//   drop_reply_then_refuse TYPE
//                     the same, and then every new session ends at once until MODE_FILE.refuse
//                     is removed: the server gone right after the lost answer
//   throttle BYTES    relay the server's bytes at BYTES per second at most (in slices of a
//                     tenth of a second): a slow link that still moves
//   idle_close MS     end the session once the client sent nothing for MS milliseconds: a
//                     server that closes idle SFTP sessions
//
// An SFTP packet is a uint32 length (big-endian) and that many bytes: a type byte, then (in all
// but INIT and VERSION) a uint32 request id. Only this framing is read; the rest is relayed as is.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

namespace {

constexpr const char* kSftpServer = "/usr/lib/openssh/sftp-server";

struct Mode {
  enum Kind { kPass, kStallAt, kDropReply, kThrottle, kIdleClose } kind = kPass;
  long value = 0;
  bool then_refuse = false;
};

Mode ReadMode(const char* path) {
  Mode m;
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word == "pass") return m;
  in >> m.value;
  if (word == "stall_at") {
    m.kind = Mode::kStallAt;
  } else if (word == "drop_reply") {
    m.kind = Mode::kDropReply;
  } else if (word == "drop_reply_then_refuse") {
    m.kind = Mode::kDropReply;
    m.then_refuse = true;
  } else if (word == "throttle" && m.value > 0) {
    m.kind = Mode::kThrottle;
  } else if (word == "idle_close" && m.value > 0) {
    m.kind = Mode::kIdleClose;
  } else {
    std::fprintf(stderr, "sftp_fault_relay: unknown mode \"%s\" in %s\n", word.c_str(), path);
    std::exit(2);
  }
  return m;
}

bool WriteAll(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

uint32_t Be32(const std::string& b, size_t at) {
  return (uint32_t{static_cast<unsigned char>(b[at])} << 24) |
         (uint32_t{static_cast<unsigned char>(b[at + 1])} << 16) |
         (uint32_t{static_cast<unsigned char>(b[at + 2])} << 8) |
         uint32_t{static_cast<unsigned char>(b[at + 3])};
}

// Takes one whole packet off the front of `buf` into `packet`; false if none is complete yet.
bool NextPacket(std::string& buf, std::string& packet) {
  if (buf.size() < 4) return false;
  const size_t len = Be32(buf, 0);
  if (buf.size() < 4 + len) return false;
  packet = buf.substr(0, 4 + len);
  buf.erase(0, 4 + len);
  return true;
}

int PacketType(const std::string& p) {
  return p.size() > 4 ? static_cast<unsigned char>(p[4]) : -1;
}
int64_t PacketId(const std::string& p) { return p.size() >= 9 ? Be32(p, 5) : -1; }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: sftp_fault_relay MODE_FILE\n");
    return 2;
  }
  const std::string refuse = std::string(argv[1]) + ".refuse";
  if (access(refuse.c_str(), F_OK) == 0) return 0;  // the server is "gone"
  const Mode mode = ReadMode(argv[1]);
  signal(SIGPIPE, SIG_IGN);

  int to_server[2], from_server[2];
  if (pipe(to_server) != 0 || pipe(from_server) != 0) return 1;
  const pid_t child = fork();
  if (child < 0) return 1;
  if (child == 0) {
    dup2(to_server[0], 0);
    dup2(from_server[1], 1);
    close(to_server[0]);
    close(to_server[1]);
    close(from_server[0]);
    close(from_server[1]);
    execl(kSftpServer, kSftpServer, static_cast<char*>(nullptr));
    _exit(127);
  }
  close(to_server[0]);
  close(from_server[1]);
  const int server_in = to_server[1], server_out = from_server[0];

  std::string client_buf, server_buf, packet;
  bool stalled = false;
  int64_t dropped_id = -1;  // drop_reply: the request whose answer ends the session
  bool client_open = true;
  char chunk[64 * 1024];
  while (true) {
    pollfd fds[2] = {{client_open ? 0 : -1, POLLIN, 0}, {server_out, POLLIN, 0}};
    const int ready =
        poll(fds, 2, mode.kind == Mode::kIdleClose ? static_cast<int>(mode.value) : -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (ready == 0) break;  // idle_close: quiet for long enough
    if (fds[0].revents != 0) {
      ssize_t n = read(0, chunk, sizeof chunk);
      if (n <= 0) break;      // the client is gone: the session ends
      if (stalled) continue;  // read and dropped, so the channel's close is still seen
      client_buf.append(chunk, static_cast<size_t>(n));
      while (!stalled && NextPacket(client_buf, packet)) {
        const int type = PacketType(packet);
        if (mode.kind == Mode::kStallAt && type == mode.value) {
          stalled = true;
          break;
        }
        if (mode.kind == Mode::kDropReply && type == mode.value && dropped_id < 0) {
          dropped_id = PacketId(packet);
        }
        if (!WriteAll(server_in, packet.data(), packet.size())) goto done;
      }
    }
    if (fds[1].revents != 0) {
      const size_t want = mode.kind == Mode::kThrottle
                              ? std::min<size_t>(sizeof chunk, std::max<long>(1, mode.value / 10))
                              : sizeof chunk;
      ssize_t n = read(server_out, chunk, want);
      if (n <= 0) break;
      if (stalled) continue;
      if (mode.kind == Mode::kDropReply) {
        server_buf.append(chunk, static_cast<size_t>(n));
        while (NextPacket(server_buf, packet)) {
          if (dropped_id >= 0 && PacketId(packet) == dropped_id) {  // acted, not told
            if (mode.then_refuse) std::ofstream(refuse) << "gone\n";
            goto done;
          }
          if (!WriteAll(1, packet.data(), packet.size())) goto done;
        }
        continue;
      }
      if (!WriteAll(1, chunk, static_cast<size_t>(n))) break;
      if (mode.kind == Mode::kThrottle) {
        std::this_thread::sleep_for(std::chrono::microseconds(1'000'000 * n / mode.value));
      }
    }
  }
done:
  close(server_in);
  close(server_out);
  kill(child, SIGTERM);
  waitpid(child, nullptr, 0);
  return 0;
}
