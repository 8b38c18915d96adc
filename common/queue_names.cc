#include "common/queue_names.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ess::queues {

std::vector<uint32_t> RetryDelaysMs(const ess::v1::RetryPolicy& policy) {
  // Levels double from the initial backoff up to the maximum, whatever max_attempts is: a
  // partner's Retry-After may ask for any wait up to the maximum.
  std::vector<uint32_t> delays;
  uint64_t d = std::max<uint32_t>(policy.initial_backoff_ms(), 1);
  const uint64_t cap = std::max<uint64_t>(policy.max_backoff_ms(), d);
  while (true) {
    delays.push_back(static_cast<uint32_t>(std::min(d, cap)));
    if (d >= cap) break;
    d *= 2;
  }
  return delays;
}

std::string RetryQueueName(const std::string& queue, uint32_t delay_ms) {
  return absl::StrCat(queue, ".retry.", delay_ms, "ms");
}

std::string ParkedQueueName(const std::string& queue) { return absl::StrCat(queue, ".parked"); }

}  // namespace ess::queues
