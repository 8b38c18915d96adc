// wakeup_cost: what waking a sleeping thread costs on this machine, in CPU. Two threads
// ping-pong one byte through pipes, back to back and then paced (the pacer sleeps between
// round trips, so every wake-up finds the other thread, and often the CPU, idle). On a VM an
// idle virtual CPU halts, and waking it goes through the hypervisor: the paced figure is what
// each hand-off between threads costs a lane at a low message rate (bench/README.md,
// Profiling 29).
//
//   build/bin/wakeup_cost [--rates 0,5000,1000,200] [--seconds 2]
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/cli.h"

ABSL_FLAG(std::string, rates, "0,5000,1000,200",
          "Round trips per second to pace at, comma-separated; 0: back to back.");
ABSL_FLAG(double, seconds, 2, "Seconds per rate (at most 200,000 round trips).");

namespace {

double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// CPU microseconds per round trip (two wake-ups of the echo thread's pipe reads, plus the
// pacer's own sleep and wake-up when paced).
double RoundTripCpuUs(int rate, int count) {
  int ping[2], pong[2];
  if (pipe(ping) != 0 || pipe(pong) != 0) return -1;
  std::thread echo([&] {
    char c;
    for (int i = 0; i < count; ++i) {
      if (read(ping[0], &c, 1) != 1 || write(pong[1], &c, 1) != 1) return;
    }
  });
  const double before = CpuSeconds();
  for (int i = 0; i < count; ++i) {
    if (rate > 0) {
      const timespec gap{0, 1'000'000'000L / rate};
      clock_nanosleep(CLOCK_MONOTONIC, 0, &gap, nullptr);
    }
    char c = 1;
    if (write(ping[1], &c, 1) != 1 || read(pong[0], &c, 1) != 1) break;
  }
  echo.join();
  const double cpu = CpuSeconds() - before;
  for (int fd : {ping[0], ping[1], pong[0], pong[1]}) close(fd);
  return cpu / count * 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  ess::cli::Parse(argc, argv, "wakeup_cost [--rates 0,5000,1000,200] [--seconds 2]");
  double back_to_back = 0;
  for (const std::string& item :
       std::vector<std::string>(absl::StrSplit(absl::GetFlag(FLAGS_rates), ','))) {
    int rate = 0;
    if (!absl::SimpleAtoi(item, &rate) || rate < 0) {
      std::fprintf(stderr, "wakeup_cost: --rates: not a rate: %s\n", item.c_str());
      return 2;
    }
    const double seconds = absl::GetFlag(FLAGS_seconds);
    const int count = rate == 0 ? 200'000 : std::max(100, static_cast<int>(rate * seconds));
    const double us = RoundTripCpuUs(rate, std::min(count, 200'000));
    if (rate == 0) back_to_back = us;
    std::string line = absl::StrFormat("%-14s %6.1f us of CPU per round trip",
                                       rate == 0 ? "back to back" : absl::StrCat(rate, "/s"), us);
    if (rate > 0 && back_to_back > 0) {
      absl::StrAppendFormat(&line, " (%.1fx back to back)", us / back_to_back);
    }
    std::puts(line.c_str());
  }
  return 0;
}
