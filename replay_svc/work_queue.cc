#include "replay_svc/work_queue.h"

#include <pthread.h>

#include <utility>

namespace ess::replay {

WorkQueue::WorkQueue(const std::string& name, size_t threads) {
  const std::string thread_name = name.substr(0, 15);  // The kernel's limit.
  threads_.reserve(threads);
  for (size_t i = 0; i < threads; ++i) {
    threads_.emplace_back([this] { Loop(); });
    pthread_setname_np(threads_.back().native_handle(), thread_name.c_str());
  }
}

WorkQueue::~WorkQueue() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void WorkQueue::Post(Task task) {
  absl::MutexLock lock(&mu_);
  tasks_.push_back(std::move(task));
}

bool WorkQueue::HasTaskOrStopping() const { return stopping_ || !tasks_.empty(); }

void WorkQueue::Loop() {
  for (;;) {
    Task task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &WorkQueue::HasTaskOrStopping));
      if (tasks_.empty()) return;  // Stopping, and nothing is left to run.
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    std::move(task)();
  }
}

}  // namespace ess::replay
