// PeriodicThread: work at once, again every interval, and a stop that does not wait out the
// interval.
#include "replay_svc/periodic_thread.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
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

TEST(PeriodicThreadTest, WorksAtOnceThenEveryIntervalUntilStopped) {
  absl::Mutex mu;
  int runs = 0;
  PeriodicThread thread("periodic-test", absl::Milliseconds(10), [&] {
    absl::MutexLock lock(&mu);
    ++runs;
  });
  {
    absl::MutexLock lock(&mu);
    auto three = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return runs >= 3; };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&three), absl::Seconds(10))) << runs;
  }
  EXPECT_TRUE(ThreadNames().contains("periodic-test"));
  thread.Stop();
  int after_stop = 0;
  {
    absl::MutexLock lock(&mu);
    after_stop = runs;
  }
  absl::SleepFor(absl::Milliseconds(50));
  absl::MutexLock lock(&mu);
  EXPECT_EQ(runs, after_stop) << "work ran after Stop() returned";
  EXPECT_FALSE(ThreadNames().contains("periodic-test"));
}

TEST(PeriodicThreadTest, StopDoesNotWaitOutTheInterval) {
  absl::Mutex mu;
  int runs = 0;
  PeriodicThread thread("periodic-long", absl::Hours(1), [&] {
    absl::MutexLock lock(&mu);
    ++runs;
  });
  {
    absl::MutexLock lock(&mu);
    auto ran = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return runs >= 1; };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&ran), absl::Seconds(10)));
  }
  const absl::Time stop = absl::Now();
  // Two callers at once, and the destructor after them: one join, no wait for the hour.
  std::thread other([&] { thread.Stop(); });
  thread.Stop();
  other.join();
  EXPECT_LT(absl::Now() - stop, absl::Seconds(5));
  absl::MutexLock lock(&mu);
  EXPECT_EQ(runs, 1);
}

TEST(PeriodicThreadTest, ANameIsCutAtTheKernelsFifteenCharacters) {
  absl::Notification ran;
  PeriodicThread thread("periodic-name-too-long", absl::Hours(1), [&] {
    if (!ran.HasBeenNotified()) ran.Notify();
  });
  ASSERT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(ThreadNames().contains("periodic-name-t"));  // 15 characters
}

}  // namespace
}  // namespace ess::replay
