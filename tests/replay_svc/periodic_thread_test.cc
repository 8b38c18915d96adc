// PeriodicThread: work at once, again every interval, and a stop that does not wait out the
// interval.
#include "replay_svc/periodic_thread.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace ess::replay {
namespace {

std::set<std::string> ThreadNames() {
  std::set<std::string> names;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::string name;
    std::getline(std::ifstream(task.path() / "comm"), name);
    names.insert(name);
  }
  return names;
}

// The work of the tests: counts its runs.
class Runs {
 public:
  void Add() {
    absl::MutexLock lock(&mu_);
    ++runs_;
  }
  int Get() {
    absl::MutexLock lock(&mu_);
    return runs_;
  }
  // True once there were `n` runs, false after 10 s without.
  bool AwaitAtLeast(int n) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return runs_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
  }

 private:
  absl::Mutex mu_;
  int runs_ ABSL_GUARDED_BY(mu_) = 0;
};

TEST(PeriodicThreadTest, WorksAtOnceThenEveryIntervalUntilStopped) {
  Runs runs;
  PeriodicThread thread("periodic-test", absl::Milliseconds(10), [&] { runs.Add(); });
  ASSERT_TRUE(runs.AwaitAtLeast(3)) << runs.Get();
  EXPECT_TRUE(ThreadNames().contains("periodic-test"));
  thread.Stop();
  const int after_stop = runs.Get();
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(runs.Get(), after_stop) << "work ran after Stop() returned";
  EXPECT_FALSE(ThreadNames().contains("periodic-test"));
}

TEST(PeriodicThreadTest, StopDoesNotWaitOutTheInterval) {
  Runs runs;
  PeriodicThread thread("periodic-long", absl::Hours(1), [&] { runs.Add(); });
  ASSERT_TRUE(runs.AwaitAtLeast(1));
  const absl::Time stop = absl::Now();
  // Two callers at once, and the destructor after them: one join, no wait for the hour.
  std::thread other([&] { thread.Stop(); });
  thread.Stop();
  other.join();
  EXPECT_LT(absl::Now() - stop, absl::Seconds(5));
  EXPECT_EQ(runs.Get(), 1);
}

TEST(PeriodicThreadTest, ANameIsCutAtTheKernelsFifteenCharacters) {
  Runs runs;
  PeriodicThread thread("periodic-name-too-long", absl::Hours(1), [&] { runs.Add(); });
  ASSERT_TRUE(runs.AwaitAtLeast(1));
  EXPECT_TRUE(ThreadNames().contains("periodic-name-t"));  // 15 characters
}

}  // namespace
}  // namespace ess::replay
