#include "replay_svc/work_queue.h"

#include <utility>

#include "common/thread_name.h"

namespace ess::replay {

WorkQueue::WorkQueue(const std::string& name, size_t threads) {
  threads_.reserve(threads);
  for (size_t i = 0; i < threads; ++i) {
    threads_.emplace_back([this, name] {
      NameThisThread(name);
      Loop();
    });
  }
}

WorkQueue::~WorkQueue() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void WorkQueue::Post(metrics::Latency* run, Task task) {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  tasks_.push_back({.task = std::move(task), .run = run, .at = now});
}

bool WorkQueue::HasTaskOrStopping() const { return stopping_ || !tasks_.empty(); }

void WorkQueue::Loop() {
  for (;;) {
    Posted posted;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &WorkQueue::HasTaskOrStopping));
      if (tasks_.empty()) return;  // Stopping, and nothing is left to run.
      posted = std::move(tasks_.front());
      tasks_.pop_front();
    }
    const absl::Time start = absl::Now();
    waits_.Observe(start - posted.at);
    std::move(posted.task)();
    if (posted.run != nullptr) posted.run->Observe(absl::Now() - start);
  }
}

}  // namespace ess::replay
