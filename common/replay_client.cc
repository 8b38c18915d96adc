#include "common/replay_client.h"

#include <algorithm>
#include <deque>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"

namespace ess {
namespace {

// Room for a full Record batch with its payloads, and for large List pages.
constexpr int kMaxMessageBytes = 64 << 20;

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace

std::unique_ptr<ess::v1::ReplayService::Stub> MakeReplayStub(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // Reconnect quickly after a store restart: the lanes pause while it is away.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  return ess::v1::ReplayService::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

// Records collect in `open` until it is full (then it moves to `full`) or its delay ran out;
// one sender thread turns batches into async Record calls while fewer than
// max_in_flight_batches are in flight. Each batch's `done`s run when its call completes.
struct ReplayRecorder::Impl {
  struct Batch {
    ess::v1::RecordRequest request;
    std::vector<Done> dones;
    absl::Time opened_at;
  };
  // One Record call; deleted when it completes.
  struct Call {
    std::unique_ptr<Batch> batch;
    grpc::ClientContext context;
    ess::v1::RecordResponse response;
  };

  explicit Impl(Options opts)
      : options(std::move(opts)),
        batch_max(std::max<size_t>(options.batch_max, 1)),
        max_in_flight(std::max<size_t>(options.max_in_flight_batches, 1)),
        stub(MakeReplayStub(options.address)),
        sender([this] { RunSender(); }) {}

  void Record(ess::v1::MessageRecord record, Done done) {
    {
      absl::MutexLock lock(&mu);
      if (!stopping) {
        if (open == nullptr) {
          open = std::make_unique<Batch>();
          open->opened_at = absl::Now();
          open->request.mutable_records()->Reserve(static_cast<int>(batch_max));
          open->dones.reserve(batch_max);
        }
        *open->request.add_records() = std::move(record);
        open->dones.push_back(std::move(done));
        if (open->dones.size() >= batch_max) full.push_back(std::move(open));
        return;
      }
    }
    std::move(done)(absl::CancelledError("replay recorder is stopped"));
  }

  void Stop() {
    absl::MutexLock stop_lock(&stop_mu);
    {
      absl::MutexLock lock(&mu);
      if (!stopping) {
        stopping = true;
        stop_deadline = absl::Now() + options.deadline;
      }
    }
    if (sender.joinable()) sender.join();
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(this, &Impl::NothingInFlight));
  }

  // Sender: sends full batches at once and the open one when its delay ran out. After Stop()
  // it sends what is queued; what still has no call slot when the stop deadline passes is
  // completed with CANCELLED.
  void RunSender() {
    std::vector<std::unique_ptr<Batch>> abandoned;
    mu.Lock();
    for (;;) {
      if (stopping) {
        mu.AwaitWithDeadline(absl::Condition(this, &Impl::SenderHasWork), stop_deadline);
      } else {
        mu.Await(absl::Condition(this, &Impl::SenderHasWork));
      }
      if (full.empty() && open == nullptr) break;  // Stopping, and everything was sent.
      if (in_flight >= max_in_flight) {            // Stopping, and out of time.
        while (!full.empty()) {
          abandoned.push_back(std::move(full.front()));
          full.pop_front();
        }
        if (open != nullptr) abandoned.push_back(std::move(open));
        break;
      }
      std::unique_ptr<Batch> batch;
      if (!full.empty()) {
        batch = std::move(full.front());
        full.pop_front();
      } else {
        const absl::Time due = open->opened_at + options.batch_delay;
        if (!stopping && absl::Now() < due && !IdleFlush()) {
          mu.AwaitWithDeadline(absl::Condition(this, &Impl::FlushEarly), due);
          continue;
        }
        batch = std::move(open);
      }
      ++in_flight;
      mu.Unlock();
      Send(std::move(batch));
      mu.Lock();
    }
    mu.Unlock();
    for (std::unique_ptr<Batch>& batch : abandoned) {
      Complete(*batch, absl::CancelledError("replay recorder stopped before the batch was sent"));
    }
  }

  void Send(std::unique_ptr<Batch> batch) {
    auto* call = new Call{.batch = std::move(batch)};
    call->context.set_deadline(absl::ToChronoTime(absl::Now() + options.deadline));
    stub->async()->Record(&call->context, &call->batch->request, &call->response,
                          [this, call](grpc::Status status) { OnCallDone(call, status); });
  }

  void OnCallDone(Call* call, const grpc::Status& status) {
    absl::Status result = FromGrpc(status);
    const size_t sent = call->batch->dones.size();
    if (result.ok() && call->response.stored() != sent) {
      result = absl::InternalError(
          absl::StrCat("replay store stored ", call->response.stored(), " of ", sent, " records"));
    }
    Complete(*call->batch, result);
    delete call;
    absl::MutexLock lock(&mu);
    --in_flight;
  }

  static void Complete(Batch& batch, const absl::Status& status) {
    for (Done& done : batch.dones) std::move(done)(status);
  }

  bool SenderHasWork() const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    const bool queued = !full.empty() || open != nullptr;
    return (queued && in_flight < max_in_flight) || (stopping && !queued);
  }
  bool IdleFlush() const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    return options.flush_when_idle && in_flight == 0;
  }
  bool FlushEarly() const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    return stopping || !full.empty() || IdleFlush();
  }
  bool NothingInFlight() const ABSL_SHARED_LOCKS_REQUIRED(mu) { return in_flight == 0; }

  const Options options;
  const size_t batch_max;
  const size_t max_in_flight;
  const std::unique_ptr<ess::v1::ReplayService::Stub> stub;

  absl::Mutex mu;
  std::unique_ptr<Batch> open ABSL_GUARDED_BY(mu);
  std::deque<std::unique_ptr<Batch>> full ABSL_GUARDED_BY(mu);
  size_t in_flight ABSL_GUARDED_BY(mu) = 0;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  absl::Time stop_deadline ABSL_GUARDED_BY(mu) = absl::InfiniteFuture();

  // Serialises Stop() calls (the sender is joined once).
  absl::Mutex stop_mu;
  // Last member: starts after everything it uses exists.
  std::thread sender;
};

ReplayRecorder::ReplayRecorder(Options options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

ReplayRecorder::~ReplayRecorder() { Stop(); }

void ReplayRecorder::Record(ess::v1::MessageRecord record, Done done) {
  impl_->Record(std::move(record), std::move(done));
}

void ReplayRecorder::Stop() { impl_->Stop(); }

void ReplayRecorder::Lookup(const ess::v1::RecordKey& key, LookupDone done) {
  struct Call {
    grpc::ClientContext context;
    ess::v1::GetRequest request;
    ess::v1::GetResponse response;
    LookupDone done;
  };
  auto* call = new Call();
  call->context.set_deadline(absl::ToChronoTime(absl::Now() + impl_->options.deadline));
  *call->request.mutable_record() = key;
  call->done = std::move(done);
  impl_->stub->async()->Get(
      &call->context, &call->request, &call->response, [call](grpc::Status s) {
        std::unique_ptr<Call> owned(call);
        if (!s.ok()) {
          std::move(owned->done)(
              absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message()));
        } else if (owned->response.records_size() == 0) {
          std::move(owned->done)(absl::NotFoundError("no such record"));
        } else {
          std::move(owned->done)(std::move(*owned->response.mutable_records(0)));
        }
      });
}

absl::Status ReplayRecorder::Ping(absl::Duration deadline) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  ess::v1::GetRequest request;
  request.mutable_record()->set_direction(ess::v1::DIRECTION_OUTBOUND);
  request.mutable_record()->set_partner("ess-ping");
  request.mutable_record()->set_message_id("ess-ping");
  ess::v1::GetResponse response;
  grpc::Status s = impl_->stub->Get(&context, request, &response);
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
      return absl::UnavailableError(absl::StrCat("replay store: ", s.error_message()));
    default:
      return absl::OkStatus();
  }
}

}  // namespace ess
