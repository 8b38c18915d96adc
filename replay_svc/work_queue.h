// A fixed set of threads running posted tasks in FIFO order. ReplayService uses it to keep
// blocking store calls off gRPC's callback threads.
//
//   WorkQueue writes("replay-write", 1);
//   writes.Post([&] { store.Record(...); reactor->Finish(...); });
//
// Thread-safe. The destructor runs every task already posted, then joins the threads; Post()
// after destruction has begun is a bug.
#ifndef ESS_REPLAY_SVC_WORK_QUEUE_H_
#define ESS_REPLAY_SVC_WORK_QUEUE_H_

#include <cstddef>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace ess::replay {

class WorkQueue {
 public:
  using Task = absl::AnyInvocable<void() &&>;

  // `name` (at most 15 characters are kept) names the threads for debuggers and top.
  WorkQueue(const std::string& name, size_t threads);
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  void Post(Task task);

 private:
  void Loop();
  bool HasTaskOrStopping() const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  std::deque<Task> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_WORK_QUEUE_H_
