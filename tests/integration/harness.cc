#include "tests/integration/harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace ess::testing {

std::string RequiredEnv(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') {
    ADD_FAILURE() << "environment variable " << name
                  << " is not set: run integration tests through ./test.sh, which starts the "
                     "servers they need";
    return "";
  }
  return v;
}

amqp::ConnectionOptions BrokerOptions() {
  amqp::ConnectionOptions o;
  o.host = RequiredEnv("ESS_AMQP_HOST");
  int port = 0;
  if (!absl::SimpleAtoi(RequiredEnv("ESS_AMQP_PORT"), &port)) ADD_FAILURE() << "bad ESS_AMQP_PORT";
  o.port = port;
  o.connection_name = "ess-test";
  return o;
}

std::string BinaryPath(const std::string& name) { return RequiredEnv("ESS_BIN_DIR") + "/" + name; }

namespace {

bool CanBind(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// The low end of the kernel's ephemeral port range (the ports outgoing connections take).
int EphemeralLow() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  int low = 0, high = 0;
  if (in >> low >> high && low > 0) return low;
  return 32768;
}

}  // namespace

// A random port below the ephemeral range: no outgoing connection (of this or any process,
// e.g. a parallel test's broker or gRPC clients) can be holding it when the service binds it,
// which an ephemeral port handed out by bind(0) does not promise.
int FreePort() {
  static std::mutex mu;
  static std::mt19937 rng{std::random_device{}()};
  const int high = EphemeralLow() - 1;
  const int low = std::max(1024, high - 12000);
  std::lock_guard lock(mu);
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const int port = std::uniform_int_distribution<int>(low, high)(rng);
    if (CanBind(port)) return port;
  }
  ADD_FAILURE() << "no free port in " << low << "-" << high;
  return 0;
}

namespace {

// A socket connected to 127.0.0.1:`port`; -1 if it cannot connect.
int ConnectLoopback(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Writes all of `data` to `fd`; false if the connection failed.
bool WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

TcpRelay::TcpRelay(int target_port) : target_port_(target_port), port_(FreePort()) { Up(); }

TcpRelay::~TcpRelay() { Down(); }

bool TcpRelay::Up() {
  if (thread_.joinable()) return true;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port_));
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(fd, 64) != 0) {
    ADD_FAILURE() << "relay: cannot listen on 127.0.0.1:" << port_ << ": " << strerror(errno);
    if (fd >= 0) close(fd);
    return false;
  }
  stopping_ = false;
  thread_ = std::thread([this, fd] { Run(fd); });
  return true;
}

void TcpRelay::Down() {
  if (!thread_.joinable()) return;
  stopping_ = true;
  thread_.join();
}

void TcpRelay::Run(int listen_fd) {
  // Each relayed connection is a pair of sockets: [client, server].
  std::vector<std::pair<int, int>> pairs;
  std::vector<char> buf(64 * 1024);
  while (!stopping_) {
    std::vector<pollfd> fds = {{.fd = listen_fd, .events = POLLIN, .revents = 0}};
    for (const auto& [a, b] : pairs) {
      fds.push_back({.fd = a, .events = POLLIN, .revents = 0});
      fds.push_back({.fd = b, .events = POLLIN, .revents = 0});
    }
    if (poll(fds.data(), fds.size(), 20) <= 0) continue;
    if (fds[0].revents & POLLIN) {
      const int client = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (client >= 0) {
        const int server = ConnectLoopback(target_port_);
        if (server < 0) {
          close(client);
        } else {
          pairs.emplace_back(client, server);
        }
      }
    }
    // The pairs polled this round are the first fds.size() / 2 of them.
    std::vector<bool> closed(pairs.size(), false);
    for (size_t i = 1; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      const size_t pair = (i - 1) / 2;
      if (closed[pair]) continue;
      const bool from_client = (i - 1) % 2 == 0;
      const int from = from_client ? pairs[pair].first : pairs[pair].second;
      const int to = from_client ? pairs[pair].second : pairs[pair].first;
      const ssize_t n = recv(from, buf.data(), buf.size(), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0 || !WriteAll(to, buf.data(), static_cast<size_t>(n))) closed[pair] = true;
    }
    for (size_t k = closed.size(); k-- > 0;) {
      if (!closed[k]) continue;
      close(pairs[k].first);
      close(pairs[k].second);
      pairs.erase(pairs.begin() + static_cast<std::ptrdiff_t>(k));
    }
  }
  for (const auto& [a, b] : pairs) {
    close(a);
    close(b);
  }
  close(listen_fd);
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "ess-test-XXXXXX").string();
  path_ = mkdtemp(tmpl.data());
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void TempDir::Write(const std::string& name, const std::string& text) const {
  std::ofstream(File(name)) << text;
}

Process::Process(std::vector<std::string> argv, std::string log_path)
    : log_path_(std::move(log_path)) {
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  int log_fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  pid_ = fork();
  if (pid_ == 0) {
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    // The test runner may block signals in its threads; the child starts clean.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(log_fd);
}

Process::~Process() {
  if (Running()) Stop(SIGKILL, absl::Seconds(10));
}

bool Process::Running() {
  if (exited_ || pid_ <= 0) return false;
  if (waitpid(pid_, &status_, WNOHANG) == pid_) exited_ = true;
  return !exited_;
}

int Process::Stop(int sig, absl::Duration timeout) {
  if (Running()) {
    kill(pid_, sig);
    if (!WaitFor([&] { return !Running(); }, timeout)) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status_, 0);
      exited_ = true;
      return -1;
    }
  }
  if (WIFEXITED(status_)) return WEXITSTATUS(status_);
  if (WIFSIGNALED(status_)) return 128 + WTERMSIG(status_);
  return -1;
}

int Process::Wait(absl::Duration timeout) {
  if (!WaitFor([&] { return !Running(); }, timeout)) {
    Stop(SIGKILL, absl::Seconds(10));
    return -1;
  }
  if (WIFEXITED(status_)) return WEXITSTATUS(status_);
  if (WIFSIGNALED(status_)) return 128 + WTERMSIG(status_);
  return -1;
}

ToolRun RunTool(std::vector<std::string> argv, const std::string& log_path,
                absl::Duration timeout) {
  std::remove(log_path.c_str());
  Process tool(std::move(argv), log_path);
  ToolRun run;
  run.exit_code = tool.Wait(timeout);
  run.output = tool.Log();
  return run;
}

std::string Process::Log() const {
  std::ifstream in(log_path_);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool Process::WaitForLog(const std::string& text, absl::Duration timeout) {
  return WaitFor([&] { return Log().find(text) != std::string::npos || !Running(); }, timeout) &&
         Running();
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (condition()) return true;
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

std::string UniqueName(const std::string& prefix) {
  static std::atomic<int> counter{0};
  return absl::StrCat(prefix, "-", getpid(), "-", counter.fetch_add(1));
}

bool WaitForReplay(ess::v1::ReplayService::Stub& stub, absl::Duration timeout) {
  return WaitFor(
      [&] {
        grpc::ClientContext ctx;
        ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(500)));
        ess::v1::StatsResponse resp;
        // Any answer but these means it is up (a store with callers refuses a call without
        // a token, and is up all the same).
        const grpc::StatusCode code = stub.Stats(&ctx, {}, &resp).error_code();
        return code != grpc::StatusCode::UNAVAILABLE && code != grpc::StatusCode::DEADLINE_EXCEEDED;
      },
      timeout);
}

std::string BindSubscriber(amqp::Connection& conn, const std::string& exchange) {
  std::string sub = UniqueName("subscriber");
  absl::Status s = conn.Apply({.exchanges = {{.name = exchange, .type = "fanout"}},
                               .queues = {{.name = sub}},
                               .bindings = {{.queue = sub, .exchange = exchange}}});
  EXPECT_TRUE(s.ok()) << s;
  return sub;
}

int CloseBrokerConnections(const std::string& name_part) {
  const std::string ctl = RequiredEnv("ESS_RABBITMQCTL");
  const std::string node = RequiredEnv("ESS_RABBITMQ_NODE");
  if (ctl.empty() || node.empty()) return 0;
  const std::string base = absl::StrCat(ctl, " -n ", node, " -q ");
  const std::string list = absl::StrCat(base, "list_connections pid client_properties | grep -F '",
                                        name_part, "' | cut -f1");
  std::vector<std::string> pids;
  if (FILE* f = popen(list.c_str(), "r")) {
    char line[512];
    while (fgets(line, sizeof(line), f) != nullptr) {
      std::string pid(line);
      while (!pid.empty() && (pid.back() == '\n' || pid.back() == '\r')) pid.pop_back();
      if (!pid.empty()) pids.push_back(pid);
    }
    pclose(f);
  }
  int closed = 0;
  for (const std::string& pid : pids) {
    const std::string close = absl::StrCat(base, "close_connection '", pid, "' ess-test");
    if (std::system(close.c_str()) == 0) ++closed;
  }
  return closed;
}

size_t CountOccurrences(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1)) {
    ++n;
  }
  return n;
}

}  // namespace ess::testing
