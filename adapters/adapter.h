// The adapter extension point: one interface for every partner kind, and its factory.
//
// An adapter moves mapped events to a partner (Push) and turns a partner's raw payload into
// internal events (Pull). It is selected by name in the hub config and built by its factory
// from the partner's typed settings. The lanes own mapping, recording, acking and retry policy;
// an adapter owns only the partner's wire format and transport.
//
// Result classification (absl::Status codes, which the lanes act on):
//   OK                                    the partner accepted it
//   UNAVAILABLE, DEADLINE_EXCEEDED,
//   RESOURCE_EXHAUSTED                    retryable (5xx, 408, 425, 429, timeouts, connection
//                                         errors; REST: a retry's 409, see rest_adapter.h)
//   INVALID_ARGUMENT, FAILED_PRECONDITION,
//   PERMISSION_DENIED, UNAUTHENTICATED    permanent (other 4xx, 3xx, bad payload)
#ifndef ESS_ADAPTERS_ADAPTER_H_
#define ESS_ADAPTERS_ADAPTER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mapping.h"
#include "ess/v1/config.pb.h"
#include "google/protobuf/descriptor.h"

namespace ess::http {
class Client;
}

namespace ess::adapters {

// What an adapter that sends events later, many in one unit (sftp_csv's files), tells the lane
// just before it sends them: where each one is going. The lane records the event in flight
// (RECEIVED) with that place as its maybe_delivered_as, so that if the lane dies during the
// send, the event's redelivery looks there before it is sent again, however it is batched then.
class SendNote {
 public:
  // `where` is the unit's name (the file's path). `done` runs exactly once, on any thread: OK
  // once the note is stored; otherwise the adapter must not send the event, and fails its push
  // retryably (UNAVAILABLE).
  virtual void BeforeSend(std::string where, absl::AnyInvocable<void(absl::Status) &&> done) = 0;

 protected:
  ~SendNote() = default;
};

// One event on its way out, already mapped. Everything it points to lives until Push returns;
// an adapter that works asynchronously copies what it needs (the rendered request).
struct PushRequest {
  std::string_view correlation_id;
  std::string_view message_id;
  std::string_view event_type;
  std::span<const MappedField> fields;
  // Which attempt of this event this push is: 1 for the first, more for the lane's retries (and
  // the pushes that follow them). An adapter may judge a partner's answer by it: a REST
  // partner's 409 to a retry with the same Idempotency-Key says the first attempt is still
  // being processed, not that the event conflicts.
  uint32_t attempt = 1;
  // Render and log, send nothing; the result is OK with `dry_run` set.
  bool dry_run = false;
  // Where an earlier push of this event may have landed after all (PushResult's field of the
  // same name, carried by the lane with the retry): the adapter looks there before sending it
  // again. Empty for a first push, and for adapters that never set it.
  std::string_view maybe_delivered_as;
  // Set by the lane (not for a dry run); valid until `done` runs. Adapters that send each push
  // at once, in its own request, never use it.
  SendNote* note = nullptr;
};

// One internal event produced by Pull: the JSON to publish and its ids.
struct InboundEvent {
  std::string body;            // {"type":"SlotConfirmed","id":"VIS-77",...}
  std::string correlation_id;  // the event's "id"
  std::string event_type;      // the event's "type"
};

struct PushResult {
  absl::Status status;
  // The exact request (or file, or envelope) rendered for the partner.
  std::string rendered;
  // What the partner answered, for logs and records ("201", "SOAP fault ...").
  std::string detail;
  bool dry_run = false;
  absl::Duration elapsed;
  // How long the partner asked us to wait before retrying (HTTP Retry-After); zero if it did
  // not say. The lane clamps it to the retry policy.
  absl::Duration retry_after;
  // Events the partner's answer itself confirms, to be published by the lane (e.g. the
  // SlotConfirmed a SOAP partner's synchronous response maps to). Only ever set with an OK
  // status; empty for partners that confirm later (webhooks, files) or not at all.
  std::vector<InboundEvent> confirmations;
  // With a retryable failure whose outcome the partner alone knows (an SFTP upload whose
  // answer was lost with the connection): where the event may have landed all the same, e.g.
  // the file's path. The lane keeps it on the message (header "x-ess-maybe-delivered-as") and
  // hands it back with the retry, in whichever replica or process takes it.
  std::string maybe_delivered_as;
};

// A record of a multi-record payload (a CSV row) that Pull could not turn into an event.
struct PullError {
  // 1-based line of the payload where the record starts.
  uint64_t line = 0;
  // What is wrong, e.g. "3 fields, the header has 4" or "missing required field ...".
  std::string message;
};

struct PullRequest {
  std::string_view body;
  std::string_view content_type;
  std::string_view correlation_id;  // from the partner's headers, if any
  // Where an adapter whose payload holds many records (sftp_csv) reports the records it could
  // not turn into events; the good records still become events and Pull still returns OK.
  // Null: such records are logged (warn) and skipped. Adapters with one record per payload
  // never use it (a bad payload fails Pull). An out-parameter rather than a new return type so
  // that no existing caller changes, and a caller that ignores it can never publish a bad row.
  std::vector<PullError>* errors = nullptr;
};

class Adapter {
 public:
  using PushDone = absl::AnyInvocable<void(PushResult) &&>;

  virtual ~Adapter() = default;

  // Delivers one event. `done` runs exactly once, on any thread, possibly before Push returns.
  virtual void Push(const PushRequest& request, PushDone done) = 0;

  // For adapters that hold events (batches): completes every push it holds, by delivering it or
  // with UNAVAILABLE, before it returns; pushes after it complete with UNAVAILABLE. The lane
  // calls it while shutting down, while it can still settle what the callbacks tell it.
  // Idempotent. Adapters that hold nothing (each push its own request) need not override it.
  virtual void Stop() {}

  // Turns a partner payload into internal events, through the partner's inbound mapping.
  // INVALID_ARGUMENT naming what is wrong with the payload. For payloads of many records, a bad
  // record is reported through `request.errors` instead (see PullRequest).
  virtual absl::StatusOr<std::vector<InboundEvent>> Pull(const PullRequest& request) = 0;
};

// Shared resources an adapter may use; owned by the lane and outliving every adapter.
struct AdapterContext {
  http::Client* http = nullptr;
};

class AdapterFactory {
 public:
  virtual ~AdapterFactory() = default;
  // The name partners select it by: "rest".
  virtual std::string_view name() const = 0;
  // The typed settings message this kind reads from a partner's `settings`.
  virtual const google::protobuf::Descriptor* settings_type() const = 0;
  // Builds the adapter of one partner. INVALID_ARGUMENT "partners[NAME].settings.FIELD: what"
  // for settings the config loader could not judge (e.g. a malformed URL).
  virtual absl::StatusOr<std::unique_ptr<Adapter>> Create(const ess::v1::PartnerConfig& partner,
                                                          const AdapterContext& context) const = 0;
};

}  // namespace ess::adapters

#endif  // ESS_ADAPTERS_ADAPTER_H_
