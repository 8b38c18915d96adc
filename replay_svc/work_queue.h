// A fixed set of threads running posted tasks in FIFO order. ReplayService uses it to keep
// blocking store calls off gRPC's callback threads.
//
//   WorkQueue writes("replay-write", 1);
//   writes.Post([&] { store.Record(...); reactor->Finish(...); });
//
// Thread-safe. The destructor runs every task already posted, then joins the threads; Post()
// after destruction has begun is a bug. Each task's wait for a thread goes into waits(), and
// its run time into the histogram given with it, if any.
#ifndef ESS_REPLAY_SVC_WORK_QUEUE_H_
#define ESS_REPLAY_SVC_WORK_QUEUE_H_

#include <cstddef>
#include <deque>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/metrics.h"

namespace ess::replay {

class WorkQueue {
 public:
  using Task = absl::AnyInvocable<void() &&>;

  // `name` (at most 15 characters are kept) names the threads for debuggers and top.
  WorkQueue(const std::string& name, size_t threads);
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  void Post(Task task) { Post(nullptr, std::move(task)); }
  // Also observes the task's run time in `run` (if not null), which must outlive the queue.
  void Post(metrics::Latency* run, Task task);

  // How long tasks waited from Post() to a thread taking them.
  const metrics::Latency& waits() const { return waits_; }

 private:
  struct Posted {
    Task task;
    metrics::Latency* run = nullptr;
    absl::Time at;
  };
  void Loop();
  bool HasTaskOrStopping() const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  metrics::Latency waits_;
  absl::Mutex mu_;
  std::deque<Posted> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_WORK_QUEUE_H_
