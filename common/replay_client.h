// Client side of ReplayService for the lanes: records are batched into Record calls, lookups
// into Lookup calls.
//
// Record() is thread-safe and returns at once; `done` runs (on a gRPC or batching thread) when
// the batch holding the record was stored (OK) or failed (the call's status, e.g. UNAVAILABLE
// when the store is down). A batch is sent when it holds batch_max records or when its oldest
// record waited batch_delay, whichever comes first (with flush_when_idle, also as soon as no
// call is in flight); several batches may be in flight.
//
// Lookup() and Claim() batch the same way (same options), each kind into batches of its own with
// their own max_in_flight_batches call slots, so no kind waits behind queued batches of
// another. Each lookup's or claim's `done` gets its own answer from the batch's call.
//
//   ess::ReplayRecorder recorder({.address = "127.0.0.1:50051"});
//   recorder.Record(std::move(rec), [](absl::Status s) { if (s.ok()) ack(); });
//   recorder.Lookup(key, [](absl::StatusOr<ess::v1::MessageRecord> r) { ... });
#ifndef ESS_COMMON_REPLAY_CLIENT_H_
#define ESS_COMMON_REPLAY_CLIENT_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ess/v1/replay.grpc.pb.h"
#include "prometheus/metric_family.h"

namespace ess {

// The most keys ReplayService takes in one Lookup (or claims in one Claim) call (replay.proto).
inline constexpr size_t kMaxLookupKeys = 10'000;
// The most keys ReplayService takes in one Replay call, and its largest filter page
// (replay.proto).
inline constexpr size_t kMaxReplayKeys = 1'000;

// How a client dials ReplayService (PEM text). Without a CA: plaintext.
struct ReplayTls {
  // The store's certificate is checked against these CA certificates.
  std::string ca_pem;
  // Presented to the store when it asks for a client certificate (mutual TLS).
  std::string cert_pem;
  std::string key_pem;
};

// What makes `token` unfit to be sent as "authorization: Bearer TOKEN", or empty when it is
// fit: a bearer token may hold only visible ASCII characters (0x21-0x7E). gRPC aborts the
// process on a metadata value with any other (a newline, say), printing the value. The answer
// names the first such character and where it is, never the token.
std::string BearerTokenProblem(std::string_view token);

// A channel + stub to ReplayService: TLS when `tls.ca_pem` is not empty, plaintext otherwise.
std::unique_ptr<ess::v1::ReplayService::Stub> MakeReplayStub(const std::string& address,
                                                             const ReplayTls& tls = {});

class ReplayRecorder {
 public:
  struct Options {
    std::string address;
    size_t batch_max = 256;
    absl::Duration batch_delay = absl::Milliseconds(2);
    absl::Duration deadline = absl::Seconds(5);
    // Batches in flight at once, of records, of lookups and of claims each.
    size_t max_in_flight_batches = 4;
    // Also send the open batch at once whenever no call is in flight, instead of waiting out
    // batch_delay: records then wait only while the store is busy with earlier ones (group
    // commit), so a lightly loaded lane does not pay the delay, and batches still grow with
    // the load.
    bool flush_when_idle = false;
    // When set, records wait up to this long for company instead, and never go early for an
    // idle store (batch_delay and flush_when_idle are then for lookups and claims). For callers
    // whose records no message waits for on its way (they gate an ack or a trail): fuller
    // batches cost the caller and the store fewer calls and transactions per record.
    std::optional<absl::Duration> record_delay;
    // Sent as "authorization: Bearer TOKEN" on every call when not empty (replay.auth).
    std::string token;
    // TLS (see ReplayTls); plaintext without a CA.
    ReplayTls tls;
  };
  using Done = absl::AnyInvocable<void(absl::Status) &&>;

  explicit ReplayRecorder(Options options);
  ~ReplayRecorder();  // Stop()
  ReplayRecorder(const ReplayRecorder&) = delete;
  ReplayRecorder& operator=(const ReplayRecorder&) = delete;

  // A record the store would reject (unspecified direction or status, empty partner,
  // message_id or correlation_id), or one over 32 MiB serialized, completes at once with
  // INVALID_ARGUMENT, so it never fails the other records of a batch. Batches close at 16 MiB
  // too, so that large records do not take a call past gRPC's 64 MiB.
  void Record(ess::v1::MessageRecord record, Done done);
  // Like Record, for records that belong together: they go in one Record call, in this order,
  // so the store keeps all or none of them, and `done` runs once with that outcome (OK at once
  // for none; INVALID_ARGUMENT at once, none sent, if one of them would be rejected).
  void RecordTogether(std::vector<ess::v1::MessageRecord> records, Done done);

  using LookupDone = absl::AnyInvocable<void(absl::StatusOr<ess::v1::MessageRecord>) &&>;
  // Thread-safe, asynchronous: `done` gets the stored record of `key`, NOT_FOUND if there is
  // none, or the failed call's status (e.g. UNAVAILABLE when the store is down). A key the
  // store would reject (unspecified direction, empty partner or message_id) completes at once
  // with INVALID_ARGUMENT, so it never fails the other lookups of a batch.
  void Lookup(const ess::v1::RecordKey& key, LookupDone done);

  using ClaimDone = absl::AnyInvocable<void(absl::StatusOr<ess::v1::ClaimOutcome>) &&>;
  // Thread-safe, asynchronous (ReplayService.Claim): `done` gets the claim's outcome, or the
  // failed call's status. A record whose key the store would reject completes at once with
  // INVALID_ARGUMENT, as in Lookup.
  void Claim(ess::v1::Claim claim, ClaimDone done);

  // Prometheus histograms of this recorder's calls, by kind (record, lookup, claim):
  // ess_replay_client_batch_wait_seconds (a batch's first item from its arrival to the call
  // going out: the batch delay, or a wait for a call slot) and ess_replay_client_call_seconds
  // (the call from going out to its answer: the network and the store). Thread-safe.
  std::vector<prometheus::MetricFamily> Metrics() const;

  // Blocking: OK if the store answers at all within `deadline` (any answer but UNAVAILABLE,
  // DEADLINE_EXCEEDED or CANCELLED means it is up), unless it refuses this recorder's token or
  // the token's role may not Record (a viewer's or an ops token, given to a lane): then
  // UNAUTHENTICATED or PERMISSION_DENIED, as the store said.
  absl::Status Ping(absl::Duration deadline);
  // Sends what is queued (records and lookups), waits for calls in flight, then completes
  // anything left with CANCELLED. Records and lookups given after Stop() began complete with
  // CANCELLED at once. Must not be called from a `done` (it waits for the call that runs it).
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ess

#endif  // ESS_COMMON_REPLAY_CLIENT_H_
