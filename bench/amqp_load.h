// The benchmark's own RabbitMQ clients, written straight on librabbitmq-c (not common/amqp), so
// that they measure what the broker itself can do on this machine, and so that they can load a
// lane's queue faster than the lane drains it.
//
//  * PublishConfirmed: persistent publishes to a durable queue on one connection, publisher
//    confirms pipelined up to a window, optionally paced at a fixed rate (the latency runs).
//  * ConsumeAcked: consumes a queue with manual acks (basic.ack multiple, as a real consumer
//    coalesces them) and a bounded prefetch.
//  * QueueInfo: ready messages and consumers of a queue (passive declare).
//
//   ess::bench::PublishResult r = ess::bench::PublishConfirmed(broker, {.routing_key = "q",
//       .count = 100000, .make = [](uint64_t i, std::string* body, std::string* id) {...}});
//
// Every call opens its own connection and closes it before returning; each is bounded by its
// count and its max_duration.
#ifndef ESS_BENCH_AMQP_LOAD_H_
#define ESS_BENCH_AMQP_LOAD_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ess::bench {

struct BrokerAddress {
  std::string host = "127.0.0.1";
  int port = 5672;
};

struct PublishOptions {
  std::string exchange;     // "" is the default exchange
  std::string routing_key;  // the queue, with the default exchange
  std::string type;         // AMQP "type" property; not sent when empty
  uint64_t count = 0;       // publishes at most
  absl::Duration max_duration = absl::Seconds(10);
  uint32_t window = 1024;  // unconfirmed publishes at most
  double rate = 0;         // publishes per second; 0: as fast as the window allows
  // Body and message id (also the correlation id) of publish number i (from 0), called on the
  // publishing thread right before the publish.
  std::function<void(uint64_t i, std::string* body, std::string* id)> make;
  // Optional: publishing stops early once it reads true.
  const std::atomic<bool>* stop = nullptr;
  // Keep each publish's publish-to-confirm latency (PublishResult::confirm_latency_ns).
  bool confirm_latency = false;
  // Shaped as the inbound lane publishes: a header table (x-ess-partner), a timestamp and the
  // mandatory flag, besides the properties every publish carries.
  bool lane_shaped = false;
};

struct PublishResult {
  absl::Status status;
  uint64_t published = 0;
  uint64_t confirmed = 0;  // acked by the broker
  uint64_t nacked = 0;
  // From the first publish until the last confirm arrived.
  absl::Duration elapsed;
  // With confirm_latency: one per confirmed publish, in confirm order.
  std::vector<int64_t> confirm_latency_ns;
  double ConfirmedPerSecond() const;
};

PublishResult PublishConfirmed(const BrokerAddress& broker, const PublishOptions& options);

struct ConsumeOptions {
  std::string queue;
  uint64_t count = 0;  // stops after this many deliveries
  absl::Duration max_duration = absl::Seconds(10);
  uint16_t prefetch = 256;
  // An ack(multiple) goes out at least every `ack_every` deliveries, and whenever nothing more
  // is buffered to read.
  uint32_t ack_every = 64;
  // Optional: sees each body, on the consuming thread, before its ack.
  std::function<void(std::string_view body)> on_message;
};

struct ConsumeResult {
  absl::Status status;
  uint64_t consumed = 0;  // delivered and acked
  // From basic.consume-ok until the last ack was sent.
  absl::Duration elapsed;
  double PerSecond() const;
};

ConsumeResult ConsumeAcked(const BrokerAddress& broker, const ConsumeOptions& options);

struct QueueState {
  uint32_t messages = 0;  // ready (not counting unacked deliveries)
  uint32_t consumers = 0;
};
// NOT_FOUND when there is no such queue.
absl::StatusOr<QueueState> QueueInfo(const BrokerAddress& broker, const std::string& queue);

}  // namespace ess::bench

#endif  // ESS_BENCH_AMQP_LOAD_H_
