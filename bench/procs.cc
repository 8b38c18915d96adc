#include "bench/procs.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace ess::bench {
namespace {

// PIDs of running children, for KillAllChildren() from the interrupt handler thread.
constexpr int kMaxChildren = 64;
std::atomic<pid_t> g_children[kMaxChildren];

void Register(pid_t pid) {
  for (auto& slot : g_children) {
    pid_t empty = 0;
    if (slot.compare_exchange_strong(empty, pid)) return;
  }
}

void Unregister(pid_t pid) {
  for (auto& slot : g_children) {
    pid_t expected = pid;
    if (slot.compare_exchange_strong(expected, 0)) return;
  }
}

pid_t Spawn(const std::vector<std::string>& argv, const std::string& log_path) {
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  // The child runs in its log's folder, so that a core dump lands beside the log.
  const size_t slash = log_path.rfind('/');
  const std::string dir = slash == std::string::npos ? std::string() : log_path.substr(0, slash);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the benchmark died before prctl
    if (log_fd >= 0) {
      dup2(log_fd, 1);
      dup2(log_fd, 2);
    }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    if (!dir.empty() && chdir(dir.c_str()) != 0) {
      constexpr char kMessage[] = "ess_bench: cannot enter the log's folder\n";
      (void)!write(2, kMessage, sizeof(kMessage) - 1);
      _exit(126);
    }
    rlimit core{};
    if (getrlimit(RLIMIT_CORE, &core) == 0) {
      core.rlim_cur = core.rlim_max;
      setrlimit(RLIMIT_CORE, &core);
    }
    // The benchmark blocks the stop signals; the child starts with a clean mask.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  if (log_fd >= 0) close(log_fd);
  return pid;
}

}  // namespace

Child::Child(std::string name, std::vector<std::string> argv, std::string log_path)
    : name_(std::move(name)), log_path_(std::move(log_path)) {
  pid_ = Spawn(argv, log_path_);
  if (pid_ > 0) Register(pid_);
}

Child::~Child() {
  if (Running()) Stop(SIGKILL, absl::Seconds(10));
}

bool Child::Running() {
  if (exited_ || pid_ <= 0) return false;
  if (waitpid(pid_, &status_, WNOHANG) == pid_) {
    exited_ = true;
    Unregister(pid_);
  }
  return !exited_;
}

int Child::Stop(int sig, absl::Duration timeout) {
  if (Running()) {
    kill(pid_, sig);
    const absl::Time deadline = absl::Now() + timeout;
    while (Running() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
    if (Running()) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status_, 0);
      exited_ = true;
      Unregister(pid_);
      return -1;
    }
  }
  if (WIFEXITED(status_)) return WEXITSTATUS(status_);
  if (WIFSIGNALED(status_)) return 128 + WTERMSIG(status_);
  return -1;
}

std::string Child::LogTail(size_t bytes) const {
  std::ifstream in(log_path_);
  std::stringstream s;
  s << in.rdbuf();
  std::string all = s.str();
  return all.size() > bytes ? all.substr(all.size() - bytes) : all;
}

void KillAllChildren() {
  for (auto& slot : g_children) {
    const pid_t pid = slot.load();
    if (pid > 0) kill(pid, SIGKILL);
  }
}

namespace {

// utime + stime of a /proc stat file (a process's or a thread's), in clock ticks.
std::optional<uint64_t> CpuTicks(const std::string& stat_path) {
  std::ifstream in(stat_path);
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  // The command name (field 2) may hold spaces: fields are counted after its ')'.
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::vector<absl::string_view> f =
      absl::StrSplit(absl::string_view(line).substr(close + 2), ' ', absl::SkipEmpty());
  // f[0] is field 3 (state); utime is field 14, stime field 15.
  uint64_t utime = 0, stime = 0;
  if (f.size() < 13 || !absl::SimpleAtoi(f[11], &utime) || !absl::SimpleAtoi(f[12], &stime)) {
    return std::nullopt;
  }
  return utime + stime;
}

}  // namespace

ProcSample Sample(pid_t pid) {
  ProcSample s;
  const std::string base = "/proc/" + std::to_string(pid);
  const std::optional<uint64_t> ticks = CpuTicks(base + "/stat");
  if (!ticks) return s;
  s.cpu_ticks = *ticks;
  std::ifstream in(base + "/status");
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view v(line);
    uint64_t* out = nullptr;
    if (absl::ConsumePrefix(&v, "VmHWM:")) out = &s.hwm_kib;
    if (absl::ConsumePrefix(&v, "VmRSS:")) out = &s.rss_kib;
    if (out == nullptr) continue;
    v = absl::StripAsciiWhitespace(v);
    absl::ConsumeSuffix(&v, "kB");
    (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(v), out);
  }
  s.ok = true;
  return s;
}

std::vector<ThreadSample> SampleThreads(pid_t pid) {
  std::vector<ThreadSample> threads;
  const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
  std::error_code error;
  for (const auto& task : std::filesystem::directory_iterator(tasks, error)) {
    ThreadSample t;
    if (!absl::SimpleAtoi(task.path().filename().string(), &t.tid)) continue;
    const std::optional<uint64_t> ticks = CpuTicks(task.path() / "stat");
    if (!ticks) continue;  // ended meanwhile
    t.cpu_ticks = *ticks;
    std::getline(std::ifstream(task.path() / "comm"), t.name);
    threads.push_back(std::move(t));
  }
  return threads;
}

double TicksPerSecond() {
  static const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  return ticks;
}

int RunToCompletion(const std::vector<std::string>& argv, const std::string& log_path,
                    double* cpu_seconds) {
  const pid_t pid = Spawn(argv, log_path);
  if (pid <= 0) return -1;
  Register(pid);
  int status = 0;
  rusage usage{};
  const pid_t reaped = wait4(pid, &status, 0, &usage);
  Unregister(pid);
  if (reaped != pid) return -1;
  if (cpu_seconds != nullptr) {
    *cpu_seconds = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                   static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace ess::bench
