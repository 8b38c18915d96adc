// A thread that does one piece of work at once and then again every `interval`, until it is
// stopped: the store's retention sweeper and drift watch.
//
//   PeriodicThread thread("replay-retain", absl::Minutes(1), [this] { Sweep(); });
//   ...
//   thread.Stop();   // or let it go out of scope
//
// Stop() wakes the thread from its wait, waits for a piece of work in progress, and joins it.
// Later calls do nothing. Declare it last in its owner, so that it starts once everything
// `work` uses exists and stops before any of it goes.
#ifndef ESS_REPLAY_SVC_PERIODIC_THREAD_H_
#define ESS_REPLAY_SVC_PERIODIC_THREAD_H_

#include <functional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace ess::replay {

class PeriodicThread {
 public:
  // `name` is the thread's (at most 15 characters are kept).
  PeriodicThread(std::string name, absl::Duration interval, std::function<void()> work);
  ~PeriodicThread();  // Stop()
  PeriodicThread(const PeriodicThread&) = delete;
  PeriodicThread& operator=(const PeriodicThread&) = delete;

  void Stop();

 private:
  const absl::Duration interval_;
  const std::function<void()> work_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex join_mu_;
  std::thread thread_;  // last
};

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_PERIODIC_THREAD_H_
