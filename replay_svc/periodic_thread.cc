#include "replay_svc/periodic_thread.h"

#include <utility>

#include "common/thread_name.h"

namespace ess::replay {

PeriodicThread::PeriodicThread(std::string name, absl::Duration interval,
                               std::function<void()> work)
    : interval_(interval), work_(std::move(work)), thread_([this, name = std::move(name)] {
        NameThisThread(name);
        for (;;) {
          work_();
          absl::MutexLock lock(&mu_);
          auto stopping = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
          if (mu_.AwaitWithTimeout(absl::Condition(&stopping), interval_)) return;
        }
      }) {}

PeriodicThread::~PeriodicThread() { Stop(); }

void PeriodicThread::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  absl::MutexLock lock(&join_mu_);
  if (thread_.joinable()) thread_.join();
}

}  // namespace ess::replay
