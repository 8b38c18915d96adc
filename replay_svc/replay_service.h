// ReplayService (proto/ess/v1/replay.proto) over a ReplayStore, on gRPC's callback API.
//
// Requests are validated before they reach the store: INVALID_ARGUMENT names the field, e.g.
// "records[3].message_id: must not be empty"; UpdateStatus and Get answer NOT_FOUND for an
// unknown key or correlation id (Lookup answers found = false instead). Store calls block, so
// they run on the service's own threads rather than gRPC's: writes on one thread, in arrival
// order (Record, UpdateStatus, Claim); reads (Get, Lookup, List, Stats) on `reader_threads`, so
// they never queue behind writes. Record calls that arrive one after another while the writer
// is busy go to the store as one batch, one transaction, and so do Claim calls: as if each ran
// whole before the next (a store applies a batch's items in order), each answered with its own
// part. If such a batch fails for another reason than an unreachable store, its calls run again
// one by one, so that each gets its own answer and error.
// With an Authorizer, every call is checked first: UNAUTHENTICATED or PERMISSION_DENIED before
// anything is read or written.
// Replay runs on a thread of its own, one call at a time (see replayer.h); without a Replayer it
// answers FAILED_PRECONDITION.
// List page tokens are opaque and bound to the filter they were issued for; page_size is 100
// when 0 and at most 1000 (larger values are lowered to 1000).
//
// The store must outlive the service, and the server must be shut down (every call finished)
// before the service is destroyed. See replay_server.h for a server that does both.
#ifndef ESS_REPLAY_SVC_REPLAY_SERVICE_H_
#define ESS_REPLAY_SVC_REPLAY_SERVICE_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/metrics.h"
#include "ess/v1/replay.grpc.pb.h"
#include "prometheus/metric_family.h"
#include "replay_svc/authorizer.h"
#include "replay_svc/replay_store.h"
#include "replay_svc/replayer.h"
#include "replay_svc/work_queue.h"

namespace ess::replay {

class ReplayServiceImpl final : public ess::v1::ReplayService::CallbackService {
 public:
  static constexpr uint32_t kDefaultPageSize = 100;
  static constexpr uint32_t kMaxPageSize = 1000;
  // A page also ends before its bodies (payload and rendered) pass this, so that it fits the
  // clients' 64 MiB messages (fewer records then, and a next_page_token).
  static constexpr size_t kMaxPageBytes = 16 << 20;
  // Most keys in one Lookup call, and claims in one Claim call (more is INVALID_ARGUMENT).
  static constexpr int kMaxLookupKeys = 10'000;

  struct Options {
    // Threads serving Get, Lookup, List and Stats.
    size_t reader_threads = 2;
    // Publishes for Replay; null: Replay is off (this replay_svc has no bus). Must outlive the
    // service.
    Replayer* replayer = nullptr;
    // Who may call what (see authorizer.h); null: every caller may call everything. Must
    // outlive the service.
    const Authorizer* authorizer = nullptr;
  };

  ReplayServiceImpl(ReplayStore& store, Options options);
  explicit ReplayServiceImpl(ReplayStore& store) : ReplayServiceImpl(store, Options()) {}
  // Runs the store calls already queued.
  ~ReplayServiceImpl() override;

  grpc::ServerUnaryReactor* Record(grpc::CallbackServerContext* context,
                                   const ess::v1::RecordRequest* request,
                                   ess::v1::RecordResponse* response) override;
  grpc::ServerUnaryReactor* UpdateStatus(grpc::CallbackServerContext* context,
                                         const ess::v1::UpdateStatusRequest* request,
                                         ess::v1::MessageRecord* response) override;
  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* context,
                                const ess::v1::GetRequest* request,
                                ess::v1::GetResponse* response) override;
  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* context,
                                   const ess::v1::LookupRequest* request,
                                   ess::v1::LookupResponse* response) override;
  grpc::ServerUnaryReactor* Claim(grpc::CallbackServerContext* context,
                                  const ess::v1::ClaimRequest* request,
                                  ess::v1::ClaimResponse* response) override;
  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* context,
                                 const ess::v1::ListRequest* request,
                                 ess::v1::ListResponse* response) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* context,
                                  const ess::v1::StatsRequest* request,
                                  ess::v1::StatsResponse* response) override;
  grpc::ServerUnaryReactor* Replay(grpc::CallbackServerContext* context,
                                   const ess::v1::ReplayRequest* request,
                                   ess::v1::ReplayResponse* response) override;

  // Prometheus metrics: calls by method and result, records stored, replay outcomes.
  // Thread-safe.
  std::vector<prometheus::MetricFamily> Metrics() const;

 private:
  static constexpr size_t kMethods = static_cast<size_t>(Authorizer::Method::kReplay) + 1;

  // Counts the call's result, then finishes it.
  void Finish(grpc::ServerUnaryReactor* reactor, Authorizer::Method method,
              const grpc::Status& status);
  // Whether the call's caller gets records' bodies (Authorizer::SeesBodies).
  bool SeesBodies(grpc::CallbackServerContext* context) const;
  // The caller's name ("" without an Authorizer), or the status to finish the call with.
  absl::StatusOr<std::string> Authorize(grpc::CallbackServerContext* context,
                                        Authorizer::Method method);

  // The run-time histogram of `method`'s store work, for WorkQueue::Post.
  metrics::Latency* Runs(Authorizer::Method method);

  // Record and Claim calls queued for the writer as one store call (see the top).
  struct WriteBatch;
  // Adds the call to the last write queued if it is a batch of its kind not yet started and
  // with room, or queues a new batch.
  void Write(bool claim, const google::protobuf::Message* request,
             google::protobuf::Message* response, grpc::ServerUnaryReactor* reactor, int items);
  void RunRecords(const WriteBatch& batch);
  void RunClaims(const WriteBatch& batch);

  ReplayStore& store_;
  Replayer* const replayer_;
  const Authorizer* const authorizer_;
  std::atomic<uint64_t> refused_{0};
  std::array<std::atomic<uint64_t>, kMethods> ok_{}, errors_{};
  std::atomic<uint64_t> stored_{0}, replayed_{0}, replay_skipped_{0}, replay_failed_{0},
      replay_unconfirmed_{0};
  std::atomic<uint64_t> merged_{0};
  std::atomic<int64_t> queued_writes_{0};        // write calls not yet taken by the writer
  std::array<metrics::Latency, kMethods> runs_;  // before the queues, which use them
  WorkQueue reads_;
  // Held while posting a write, so that the queue's order is the calls' order.
  absl::Mutex write_mu_;
  std::shared_ptr<WriteBatch> open_batch_ ABSL_GUARDED_BY(write_mu_);
  WorkQueue writes_;
  WorkQueue replays_;
};

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_REPLAY_SERVICE_H_
