// RabbitMQ client: librabbitmq-c (0.11) behind a small interface of ours.
//
// Three pieces, each owning its own AMQP connection (librabbitmq-c connections are not
// thread-safe, so each is used from exactly one thread):
//
//  * Connection: a blocking client for set-up, tools and tests (declare, publish with confirm,
//    get, purge, queue depth). One thread at a time.
//  * Consumer: the outbound lane's intake. A thread of its own consumes one or more queues with
//    manual ack and a bounded prefetch and hands each delivery to a handler. Delivery contract:
//    at-least-once. A delivery stays unacked until Ack/Reject is called for its tag (from any
//    thread); on connection loss every unsettled delivery is redelivered by the broker, and the
//    consumer reconnects with backoff, re-applies the topology and consumes again. It never
//    publishes, so a broker resource alarm (which stops the broker reading every connection that
//    publishes) never holds up its acks: a message moved elsewhere (retry, park) is published
//    through a Publisher, then acked here.
//  * Publisher: the inbound lane's output. Thread-safe Publish() with a completion callback that
//    runs once the broker confirmed (publisher confirms, persistent, mandatory), so many publishes
//    are in flight at once and one confirm wait is never paid per message. The publishes queued
//    while the thread was busy leave together, corked into as few TCP segments as they fill, so
//    the broker reads a batch per wake-up rather than a message.
//
//   ess::amqp::Consumer consumer(opts, [&](ess::amqp::Delivery d) { ...; consumer.Ack(tag); });
//   consumer.Start();
#ifndef ESS_COMMON_AMQP_H_
#define ESS_COMMON_AMQP_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ess::amqp {

// The frame size the hub asks the broker for (RabbitMQ's default frame_max); the broker may
// negotiate a smaller one. A message's properties, headers included, travel in one frame.
inline constexpr size_t kFrameMax = 131072;

struct ConnectionOptions {
  std::string host = "127.0.0.1";
  int port = 5672;
  std::string vhost = "/";
  std::string user = "guest";
  std::string password = "guest";
  int heartbeat_seconds = 30;
  absl::Duration connect_timeout = absl::Seconds(5);
  // Shown in the broker's connection list (client property "connection_name").
  std::string connection_name;
  // Bound on every broker round trip (declarations, get, the confirm of Connection::Publish).
  absl::Duration rpc_timeout = absl::Seconds(30);
};

// String-valued application headers, in order.
using Headers = std::vector<std::pair<std::string, std::string>>;

struct Message {
  std::string body;
  std::string correlation_id;
  std::string message_id;
  std::string type;  // AMQP "type" property: the event type.
  std::string content_type = "application/json";
  Headers headers;
  bool persistent = true;
  // AMQP "timestamp" property, Unix seconds. 0 on publish means "now"; 0 on receive means the
  // publisher did not set it.
  int64_t timestamp = 0;
  // AMQP "expiration" property: per-message TTL in milliseconds, as decimal text; empty for
  // none. (RabbitMQ drops it when it dead-letters the message.)
  std::string expiration;
};

// On receive, header values that are not strings are rendered as text (integers, booleans,
// floats, timestamps); nested tables and arrays (e.g. x-death) are left out.
struct Delivery {
  // Opaque. A Consumer's tags are unique across its reconnects: settling a delivery of an
  // earlier connection is a no-op (the broker has already requeued it).
  uint64_t delivery_tag = 0;
  std::string queue;  // the queue it was consumed from
  bool redelivered = false;
  std::string exchange;
  std::string routing_key;
  Message message;
};

// OK if the message can be published on a connection whose frames hold `frame_max` bytes:
// every short string (exchange, routing key, the properties, header names) of at most 255
// bytes, and the properties with the headers table fitting the content header frame. Else
// INVALID_ARGUMENT naming what does not fit, e.g. "amqp: headers of 140123 bytes do not fit the
// frame (max 131052)". Connection and Publisher refuse such a message so, for that publish alone
// and before anything is sent (librabbitmq-c would write the method frame first and leave the
// connection broken); a caller that must not lose the message checks first (the outbound lane's
// moves, with Publisher::frame_max).
absl::Status CheckPublishable(std::string_view exchange, std::string_view routing_key,
                              const Message& message, size_t frame_max = kFrameMax);

struct QueueSpec {
  std::string name;
  bool durable = true;
  // Optional x-arguments with string values (e.g. {"x-queue-type","quorum"},
  // {"x-dead-letter-exchange",""}).
  Headers string_args;
  // Optional x-arguments with integer values (e.g. {"x-message-ttl", 5000}).
  std::vector<std::pair<std::string, int64_t>> int_args;
  // Owned by the declaring connection and deleted when it closes (e.g. a subscription queue).
  bool exclusive = false;
  bool auto_delete = false;
};

struct ExchangeSpec {
  std::string name;
  std::string type = "fanout";
  bool durable = true;
};

struct BindingSpec {
  std::string queue;
  std::string exchange;
  std::string routing_key;
};

// What a component declares on every (re)connect. Declarations are idempotent.
struct Topology {
  std::vector<ExchangeSpec> exchanges;
  std::vector<QueueSpec> queues;
  std::vector<BindingSpec> bindings;
};

// Blocking client. Errors: UNAVAILABLE when the broker cannot be reached or the connection
// broke (a broken Connection stays UNAVAILABLE: open a new one); DEADLINE_EXCEEDED when the
// broker did not answer within rpc_timeout; FAILED_PRECONDITION when the broker refused an
// operation (channel closed, e.g. a queue declared with other arguments), with the broker's
// reply text, except NOT_FOUND for its 404 (no such queue/exchange) and PERMISSION_DENIED for its
// 403. The channel is reopened after a refusal, so the Connection stays usable. Heartbeats are
// only sent during calls: a Connection left idle for two heartbeat intervals may be closed by the
// broker (then UNAVAILABLE).
class Connection {
 public:
  static absl::StatusOr<std::unique_ptr<Connection>> Open(const ConnectionOptions& options);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  absl::Status Apply(const Topology& topology);
  // Publishes and waits for the broker's confirm (mandatory: an unroutable message is an
  // error, FAILED_PRECONDITION "unroutable"; a message CheckPublishable refuses with the frame
  // the connection negotiated, INVALID_ARGUMENT before anything is sent, the connection usable).
  absl::Status Publish(std::string_view exchange, std::string_view routing_key,
                       const Message& message);
  // basic.get with auto-ack; std::nullopt-like empty StatusOr value when the queue is empty is
  // signalled by NOT_FOUND.
  absl::StatusOr<Delivery> Get(std::string_view queue);
  // Messages ready in the queue (passive declare). NOT_FOUND if there is no such queue.
  absl::StatusOr<uint32_t> MessageCount(std::string_view queue);
  absl::Status Purge(std::string_view queue);
  absl::Status DeleteQueue(std::string_view queue);
  absl::Status DeleteExchange(std::string_view exchange);

 private:
  struct Impl;
  explicit Connection(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Consumer {
 public:
  struct Options {
    ConnectionOptions connection;
    Topology topology;                // declared before consuming, again after each reconnect
    std::vector<std::string> queues;  // consumed, each with its own consumer tag
    uint16_t prefetch = 256;          // basic.qos per consumer
  };
  // Called on the consumer's thread, one delivery at a time; must not block (hand the work
  // off) nor call Stop(). Every delivery must be settled exactly once with Ack or Reject.
  using Handler = std::function<void(Delivery)>;

  Consumer(Options options, Handler handler);
  ~Consumer();  // Stop()
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;

  // Connects, applies the topology, starts consuming on a thread of its own. Returns the first
  // connection attempt's error; either way the thread keeps (re)connecting in the background
  // with backoff (100 ms doubling to 5 s) until Stop().
  absl::Status Start();
  // Sends the settlements already made, closes the connection (which cancels the consumers)
  // and stops the thread. Deliveries not yet settled are returned to their queue by the broker;
  // settlements made from now on are ignored.
  void Stop();

  // Thread-safe settlement. Contiguous acks are coalesced into one basic.ack(multiple); an ack
  // held back by an older unsettled delivery is sent on its own within milliseconds, so one slow
  // delivery never holds the prefetch window. Settling a tag twice, or a tag of an earlier
  // connection, is ignored.
  void Ack(uint64_t delivery_tag);
  void Reject(uint64_t delivery_tag, bool requeue);

  // Thread-safe. Stops consuming `queue` (basic.cancel): messages wait in RabbitMQ. Deliveries
  // already sent by the broker still reach the handler. Holds across reconnects until Resume.
  void Pause(std::string_view queue);
  // Thread-safe. Consumes `queue` again (basic.consume), with `prefetch` unacked deliveries at
  // most (0: Options::prefetch). Resuming a queue consumed with another prefetch restarts its
  // consumer (basic.cancel, basic.qos, basic.consume). Holds across reconnects.
  void Resume(std::string_view queue, uint16_t prefetch = 0);

  // True while a connection is up and consuming.
  bool connected() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class Publisher {
 public:
  struct Options {
    ConnectionOptions connection;
    Topology topology;  // declared on every (re)connect
    // Publishes waiting for a confirm at most; Publish() fails fast with RESOURCE_EXHAUSTED
    // beyond it.
    size_t max_in_flight = 8192;
    // While the broker blocks publishing (memory or disk alarm), publishes wait here (up to
    // max_in_flight) and leave when the alarm clears, rather than failing fast. For a caller
    // that holds the message meanwhile (the outbound lane's moves), not for one with a client
    // waiting on the answer (the inbound lane's webhooks).
    bool hold_while_blocked = false;
  };
  // Called exactly once per Publish, on the publisher's thread: OK once confirmed; UNAVAILABLE
  // if the broker nacked or the connection was lost before the confirm; FAILED_PRECONDITION
  // "unroutable: exchange=... routing_key=..." if the message was returned (mandatory).
  // When Publish fails fast (not started or stopped, not connected, or the broker blocks
  // publishing during a resource alarm and the publish is not held: UNAVAILABLE;
  // max_in_flight reached: RESOURCE_EXHAUSTED; a property, the exchange or the routing key
  // longer than AMQP's 255 bytes: INVALID_ARGUMENT, and the connection is left alone) `done`
  // runs inline, on the caller's thread. A message whose properties and headers do not fit the
  // frame the connection negotiated (CheckPublishable) fails alone with INVALID_ARGUMENT, on the
  // publisher's thread, before anything of it is sent: the connection and the other publishes
  // go on.
  using Done = absl::AnyInvocable<void(absl::Status) &&>;
  // What one publish does while the broker blocks publishing: what Options::hold_while_blocked
  // says, or wait for the alarm to clear whatever it says (a publisher's audit events, which
  // share it with publishes that must fail fast).
  enum class WhileBlocked { kAsConfigured, kHold };

  explicit Publisher(Options options);
  ~Publisher();  // Stop()
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  // Connects and applies the topology; same retry contract as Consumer::Start().
  absl::Status Start();
  void Stop();  // fails every pending publish with UNAVAILABLE
  // Thread-safe. Persistent, mandatory.
  void Publish(std::string exchange, std::string routing_key, Message message, Done done,
               WhileBlocked while_blocked = WhileBlocked::kAsConfigured);
  bool connected() const;
  // Set while the broker blocks this publisher's connection (connection.blocked: a memory or
  // disk alarm, told to a connection once it publishes during one): the reason the broker gave,
  // e.g. "low on memory" (empty if it gave none). Thread-safe and cached: it never asks the
  // broker, so a readiness check or a scrape may call it at will.
  std::optional<std::string> blocked_by() const;
  // The frame size the last connection negotiated (kFrameMax before the first): what a message
  // must fit (CheckPublishable) to be published.
  size_t frame_max() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ess::amqp

#endif  // ESS_COMMON_AMQP_H_
