// Child processes of the benchmark and what /proc says about any process.
//
//   ess::bench::Child replay("replay_svc", {bin + "/replay_svc", "--config", cfg}, log);
//   ess::bench::ProcSample s = ess::bench::Sample(replay.pid());   // CPU ticks, VmHWM
//   replay.Stop();                                                // SIGTERM, waits, exit code
//
// A Child is signalled only by its own PID. Children die with the benchmark (PR_SET_PDEATHSIG),
// and KillAllChildren() (for the interrupt handler) SIGKILLs every child still running.
#ifndef ESS_BENCH_PROCS_H_
#define ESS_BENCH_PROCS_H_

#include <sys/types.h>
#include <sys/wait.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace ess::bench {

class Child {
 public:
  // Starts argv[0] with stdout and stderr appended to `log_path`, in the log's folder and with
  // core dumps allowed up to the hard limit (where they go is the kernel's core_pattern; with
  // its default, "core" in that folder). Paths in argv must be absolute. Call from the main
  // thread: the death signal follows the thread that forked.
  Child(std::string name, std::vector<std::string> argv, std::string log_path);
  ~Child();  // SIGKILL if still running
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }
  bool Running();
  // Sends `sig`, waits up to `timeout` for the exit and returns the exit code (128+signal if
  // killed by one); -1 if it had to be SIGKILLed after the timeout.
  int Stop(int sig = 15, absl::Duration timeout = absl::Seconds(20));
  // The last `bytes` of the log.
  std::string LogTail(size_t bytes = 2000) const;
  // After the child ended: true if it died by a signal and the kernel wrote a core dump.
  bool DumpedCore() const { return exited_ && WIFSIGNALED(status_) && WCOREDUMP(status_); }

 private:
  std::string name_;
  std::string log_path_;
  pid_t pid_ = -1;
  int status_ = 0;
  bool exited_ = false;
};

// SIGKILLs every Child still running (async-signal-unsafe parts avoided: PIDs only).
void KillAllChildren();

struct ProcSample {
  bool ok = false;
  uint64_t cpu_ticks = 0;  // utime + stime, in clock ticks
  uint64_t hwm_kib = 0;    // VmHWM: peak resident set
  uint64_t rss_kib = 0;    // VmRSS
};
ProcSample Sample(pid_t pid);

// One thread of a process: its name (what the process named it, else the program's) and its
// CPU so far. A thread that ends while it is read is left out.
struct ThreadSample {
  pid_t tid = 0;
  std::string name;
  uint64_t cpu_ticks = 0;  // utime + stime, in clock ticks
};
std::vector<ThreadSample> SampleThreads(pid_t pid);
// Clock ticks per second (sysconf(_SC_CLK_TCK)).
double TicksPerSecond();

// Runs `argv` to completion with output appended to `log_path`; returns its exit code.
// `cpu_seconds` (optional) gets the CPU time (user + system) the process used.
int RunToCompletion(const std::vector<std::string>& argv, const std::string& log_path,
                    double* cpu_seconds = nullptr);

// A TCP port free on 127.0.0.1 right now.
int FreePort();

}  // namespace ess::bench

#endif  // ESS_BENCH_PROCS_H_
