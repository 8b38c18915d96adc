// Test harness for integration tests: real service binaries as child processes, free loopback
// ports, temporary folders, bounded waits, and the broker address that ./test.sh exports.
#ifndef ESS_TESTS_INTEGRATION_HARNESS_H_
#define ESS_TESTS_INTEGRATION_HARNESS_H_

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "common/amqp.h"
#include "ess/v1/replay.grpc.pb.h"

namespace ess::testing {

// The value of an environment variable; the test fails (not skips) when it is missing.
std::string RequiredEnv(const char* name);

// The broker ./test.sh started (ESS_AMQP_HOST, ESS_AMQP_PORT).
amqp::ConnectionOptions BrokerOptions();

// A path of a built binary (ESS_BIN_DIR/NAME).
std::string BinaryPath(const std::string& name);

// A TCP port free on 127.0.0.1 right now, below the ephemeral range (see harness.cc).
int FreePort();

// A TCP relay on 127.0.0.1: each connection to its port is relayed byte for byte to
// 127.0.0.1:`target_port` while it is up. Down() closes its port and every connection it
// relays, so that to its clients the server behind it is gone (connections lost, new ones
// refused); Up() opens the same port again. A test's outage of a server that other tests share,
// seen by the test's own services only.
class TcpRelay {
 public:
  // Up on a FreePort().
  explicit TcpRelay(int target_port);
  ~TcpRelay();  // Down()
  TcpRelay(const TcpRelay&) = delete;
  TcpRelay& operator=(const TcpRelay&) = delete;

  int port() const { return port_; }
  // False (with a test failure) if the port cannot be bound.
  bool Up();
  void Down();

 private:
  void Run(int listen_fd);

  const int target_port_;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// A fresh folder under /tmp, removed with its contents at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  void Write(const std::string& name, const std::string& text) const;

 private:
  std::string path_;
};

// A child process whose stdout and stderr go to a log file. Destruction kills it (SIGKILL) if it
// still runs; only this process is ever signalled, by its PID.
class Process {
 public:
  Process(std::vector<std::string> argv, std::string log_path);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  bool Running();
  // Sends `sig` and waits up to `timeout` for the exit; returns the exit code (128+signal if
  // killed by one), or -1 if it is still running after the timeout (then it gets SIGKILL).
  int Stop(int sig = 15, absl::Duration timeout = absl::Seconds(20));
  // Waits up to `timeout` for the process to exit on its own; returns as Stop() does (after
  // the timeout it gets SIGKILL and -1 is returned).
  int Wait(absl::Duration timeout);
  std::string Log() const;
  // Waits until the log holds `text` (a service's "running" line), or the process exited, or
  // `timeout` passed.
  bool WaitForLog(const std::string& text, absl::Duration timeout = absl::Seconds(20));
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int status_ = 0;
  bool exited_ = false;
  std::string log_path_;
};

// What a command-line tool run printed (stdout and stderr together) and its exit code.
struct ToolRun {
  int exit_code = -1;
  std::string output;
};
// Runs `argv` to its end (killed after `timeout`: exit_code -1), its output going to `log_path`.
ToolRun RunTool(std::vector<std::string> argv, const std::string& log_path,
                absl::Duration timeout = absl::Seconds(60));

// Polls `condition` every 10 ms until it holds or `timeout` passed.
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout);

// A name unique to this test process and call, for queues and exchanges.
std::string UniqueName(const std::string& prefix);

// Waits until the replay store behind `stub` answers (a Stats call gets any answer but
// UNAVAILABLE or DEADLINE_EXCEEDED).
bool WaitForReplay(ess::v1::ReplayService::Stub& stub, absl::Duration timeout);

// Has the broker close every client connection whose properties hold `name_part` (a part of
// its connection name), through rabbitmqctl (ESS_RABBITMQCTL and ESS_RABBITMQ_NODE, written by
// scripts/rabbitmq.sh); returns how many it closed.
int CloseBrokerConnections(const std::string& name_part);

// How many times `needle` occurs in `text` (a service's log).
size_t CountOccurrences(const std::string& text, const std::string& needle);

// Declares a fresh queue bound to the fanout `exchange` (declared too) and returns its name: a
// subscriber that sees what the hub publishes there.
std::string BindSubscriber(amqp::Connection& conn, const std::string& exchange);

}  // namespace ess::testing

#endif  // ESS_TESTS_INTEGRATION_HARNESS_H_
