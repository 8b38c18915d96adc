// The names of the queues an outbound route is given besides its work queue: its delay queues,
// one per backoff level of its retry policy, and its parked queue. The outbound lane declares
// and uses them; the config loader checks that no partner's work queue is another's of these.
#ifndef ESS_COMMON_QUEUE_NAMES_H_
#define ESS_COMMON_QUEUE_NAMES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "ess/v1/config.pb.h"

namespace ess::queues {

// The delay queues of a retry policy, shortest first: initial, 2*initial, ..., max.
std::vector<uint32_t> RetryDelaysMs(const ess::v1::RetryPolicy& policy);
// "<queue>.retry.<ms>ms"
std::string RetryQueueName(const std::string& queue, uint32_t delay_ms);
// "<queue>.parked"
std::string ParkedQueueName(const std::string& queue);

}  // namespace ess::queues

#endif  // ESS_COMMON_QUEUE_NAMES_H_
