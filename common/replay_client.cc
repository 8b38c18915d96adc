#include "common/replay_client.h"

#include <algorithm>
#include <deque>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/metrics.h"
#include "common/thread_name.h"
#include "common/utf8.h"
#include "grpcpp/grpcpp.h"

namespace ess {
namespace {

// Room for a full Record batch with its payloads, and for large List pages.
constexpr int kMaxMessageBytes = 64 << 20;
// A batch closes before an item would take it past this many bytes (serialized), so that a
// batch of large records stays well under kMaxMessageBytes.
constexpr size_t kMaxBatchBytes = 16 << 20;
// The largest item (or items that belong together) one call carries: a larger one is refused
// alone, at once, rather than failing its batch again on every try.
constexpr size_t kMaxItemBytes = 32 << 20;

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

using Stub = ess::v1::ReplayService::Stub;

// ---- Kinds of batched calls -----------------------------------------------------------------
// Batcher<Calls> batches one kind of call. Calls names the call's Request and Response, the
// Item one caller adds and its Done, and provides:
//   Items(Request&)            the repeated field of the request an item joins;
//   Start(Stub&, context, request, response, on_done)   starts the async call;
//   Complete(request, response, status, dones)          gives each item's done its outcome
//                              (`status` is the call's).

struct RecordCalls {
  using Request = ess::v1::RecordRequest;
  using Response = ess::v1::RecordResponse;
  using Item = ess::v1::MessageRecord;
  using Done = ReplayRecorder::Done;

  static google::protobuf::RepeatedPtrField<Item>* Items(Request& request) {
    return request.mutable_records();
  }
  static void Start(Stub& stub, grpc::ClientContext* context, const Request* request,
                    Response* response, std::function<void(grpc::Status)> on_done) {
    stub.async()->Record(context, request, response, std::move(on_done));
  }
  // Every record of the batch shares the call's outcome (Record is all or none).
  static void Complete(const Request& /*request*/, Response& response, absl::Status status,
                       std::vector<Done>& dones) {
    if (status.ok() && response.stored() != dones.size()) {
      status = absl::InternalError(absl::StrCat("replay store stored ", response.stored(), " of ",
                                                dones.size(), " records"));
    }
    for (Done& done : dones) std::move(done)(status);
  }
};

struct LookupCalls {
  using Request = ess::v1::LookupRequest;
  using Response = ess::v1::LookupResponse;
  using Item = ess::v1::RecordKey;
  using Done = ReplayRecorder::LookupDone;

  static google::protobuf::RepeatedPtrField<Item>* Items(Request& request) {
    return request.mutable_keys();
  }
  static void Start(Stub& stub, grpc::ClientContext* context, const Request* request,
                    Response* response, std::function<void(grpc::Status)> on_done) {
    stub.async()->Lookup(context, request, response, std::move(on_done));
  }
  // results[i] answers keys[i]: its record, or NOT_FOUND.
  static void Complete(const Request& request, Response& response, absl::Status status,
                       std::vector<Done>& dones) {
    if (status.ok() && static_cast<size_t>(response.results_size()) != dones.size()) {
      status = absl::InternalError(absl::StrCat("replay store answered ", response.results_size(),
                                                " of ", dones.size(), " lookups"));
    }
    for (size_t i = 0; i < dones.size(); ++i) {
      const int at = static_cast<int>(i);
      if (!status.ok()) {
        std::move(dones[i])(status);
      } else if (ess::v1::LookupResult& result = *response.mutable_results(at); result.found()) {
        std::move(dones[i])(std::move(*result.mutable_record()));
      } else {
        const ess::v1::RecordKey& key = request.keys(at);
        std::move(dones[i])(absl::NotFoundError(
            absl::StrCat("no record direction=",
                         key.direction() == ess::v1::DIRECTION_INBOUND ? "inbound" : "outbound",
                         " partner=", key.partner(), " message_id=", key.message_id())));
      }
    }
  }
};

struct ClaimCalls {
  using Request = ess::v1::ClaimRequest;
  using Response = ess::v1::ClaimResponse;
  using Item = ess::v1::Claim;
  using Done = ReplayRecorder::ClaimDone;

  static google::protobuf::RepeatedPtrField<Item>* Items(Request& request) {
    return request.mutable_claims();
  }
  static void Start(Stub& stub, grpc::ClientContext* context, const Request* request,
                    Response* response, std::function<void(grpc::Status)> on_done) {
    stub.async()->Claim(context, request, response, std::move(on_done));
  }
  // results[i] answers claims[i].
  static void Complete(const Request& /*request*/, Response& response, absl::Status status,
                       std::vector<Done>& dones) {
    if (status.ok() && static_cast<size_t>(response.results_size()) != dones.size()) {
      status = absl::InternalError(absl::StrCat("replay store answered ", response.results_size(),
                                                " of ", dones.size(), " claims"));
    }
    for (size_t i = 0; i < dones.size(); ++i) {
      if (status.ok()) {
        std::move(dones[i])(
            static_cast<ess::v1::ClaimOutcome>(response.results(static_cast<int>(i))));
      } else {
        std::move(dones[i])(status);
      }
    }
  }
};

// What the store would reject: a bad key in a batch fails the whole Lookup call, so it is
// refused before it joins one. Messages as the service's.
absl::Status CheckKey(ess::v1::Direction direction, const std::string& partner,
                      const std::string& message_id) {
  if (direction != ess::v1::DIRECTION_OUTBOUND && direction != ess::v1::DIRECTION_INBOUND) {
    return absl::InvalidArgumentError("direction: must be DIRECTION_OUTBOUND or DIRECTION_INBOUND");
  }
  if (partner.empty()) return absl::InvalidArgumentError("partner: must not be empty");
  if (message_id.empty()) return absl::InvalidArgumentError("message_id: must not be empty");
  // The store's strings are UTF-8, and the server refuses a whole call over one that is not.
  if (!utf8::Valid(partner)) return absl::InvalidArgumentError("partner: not UTF-8");
  if (!utf8::Valid(message_id)) return absl::InvalidArgumentError("message_id: not UTF-8");
  return absl::OkStatus();
}

absl::Status CheckKey(const ess::v1::RecordKey& key) {
  return CheckKey(key.direction(), key.partner(), key.message_id());
}

// The same for a claim's record, which the store validates whole.
absl::Status CheckClaim(const ess::v1::MessageRecord& record) {
  if (absl::Status s = CheckKey(record.direction(), record.partner(), record.message_id());
      !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("record.", s.message()));
  }
  if (record.correlation_id().empty()) {
    return absl::InvalidArgumentError("record.correlation_id: must not be empty");
  }
  if (!utf8::Valid(record.correlation_id())) {
    return absl::InvalidArgumentError("record.correlation_id: not UTF-8");
  }
  if (!utf8::Valid(record.event_type())) {
    return absl::InvalidArgumentError("record.event_type: not UTF-8");
  }
  return absl::OkStatus();
}

// A record's free text (why it failed, where it came from) may quote what a partner sent in
// any encoding: made UTF-8 rather than refused, as an id would be.
void RepairText(ess::v1::MessageRecord& record) {
  if (!utf8::Valid(record.error())) record.set_error(utf8::Repair(record.error()));
  if (!utf8::Valid(record.source())) record.set_source(utf8::Repair(record.source()));
  if (!utf8::Valid(record.maybe_delivered_as())) {
    record.set_maybe_delivered_as(utf8::Repair(record.maybe_delivered_as()));
  }
}

// The same for a record to store, which the store also wants with a status: one bad record
// would fail every record of its batch.
absl::Status CheckRecord(const ess::v1::MessageRecord& record) {
  if (absl::Status s = CheckClaim(record); !s.ok()) return s;
  if (record.status() == ess::v1::MESSAGE_STATUS_UNSPECIFIED ||
      !ess::v1::MessageStatus_IsValid(record.status())) {
    return absl::InvalidArgumentError("record.status: must be a specified MessageStatus");
  }
  return absl::OkStatus();
}

// ---- Batcher ------------------------------------------------------------------------------

// Items collect in `open_` until it is full (then it moves to `full_`) or its delay ran out; one
// sender thread turns batches into async calls while fewer than max_in_flight_batches of this
// batcher are in flight. Each batch's `done`s run when its call completes. Thread-safe.
// The "authorization" metadata value for `token`; empty without a token.
std::string Authorization(const std::string& token) {
  return token.empty() ? std::string() : absl::StrCat("Bearer ", token);
}

// The done of a record whose outcome another record's done reports.
void Ignore(absl::Status /*status*/) {}

template <typename Calls>
class Batcher {
 public:
  using Item = typename Calls::Item;
  using Done = typename Calls::Done;

  // `stub` must outlive the batcher.
  Batcher(const ReplayRecorder::Options& options, size_t batch_max, absl::Duration batch_delay,
          bool flush_when_idle, Stub& stub)
      : batch_delay_(batch_delay),
        deadline_(options.deadline),
        flush_when_idle_(flush_when_idle),
        authorization_(Authorization(options.token)),
        batch_max_(std::max<size_t>(batch_max, 1)),
        max_in_flight_(std::max<size_t>(options.max_in_flight_batches, 1)),
        stub_(stub),
        sender_([this] {
          NameThisThread("ess-recorder");
          RunSender();
        }) {}

  ~Batcher() {
    BeginStop(absl::Now() + deadline_);
    AwaitStopped();
  }

  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues `item`; after BeginStop(), completes `done` with CANCELLED at once instead, and one
  // over kMaxItemBytes with INVALID_ARGUMENT.
  void Add(Item item, Done done) {
    const size_t bytes = item.ByteSizeLong();
    if (bytes > kMaxItemBytes) {
      std::move(done)(TooLarge(bytes));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      if (!stopping_) {
        AddLocked(std::move(item), bytes, std::move(done));
        return;
      }
    }
    std::move(done)(absl::CancelledError("replay recorder is stopped"));
  }

  // Queues `items` into one batch, in this order (a batch may then hold more than batch_max):
  // `done` runs once, with that batch's outcome. Only for calls whose batch succeeds or fails
  // whole (Record). After BeginStop(), completes `done` with CANCELLED at once instead.
  void AddTogether(std::vector<Item> items, Done done) {
    size_t bytes = 0;
    for (const Item& item : items) bytes += item.ByteSizeLong();
    if (bytes > kMaxItemBytes) {
      std::move(done)(TooLarge(bytes));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      if (!stopping_) {
        if (open_ != nullptr && (open_->dones.size() + items.size() > batch_max_ ||
                                 open_->bytes + bytes > kMaxBatchBytes)) {
          full_.push_back(std::move(open_));
        }
        OpenLocked();
        for (size_t i = 0; i + 1 < items.size(); ++i) {
          *Calls::Items(open_->request)->Add() = std::move(items[i]);
          open_->dones.emplace_back(&Ignore);  // the last item's done speaks for all
        }
        AppendLocked(std::move(items.back()), bytes, std::move(done));
        return;
      }
    }
    std::move(done)(absl::CancelledError("replay recorder is stopped"));
  }

  // From now on queued batches go without waiting out batch_delay; what still has no call slot
  // at `deadline` completes with CANCELLED. Later calls do nothing.
  void BeginStop(absl::Time deadline) {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      stopping_ = true;
      stop_deadline_ = deadline;
    }
  }

  // After BeginStop(): returns once everything queued was sent or cancelled and every call
  // completed. Must not run on a `done` (it waits for the call that runs it).
  void AwaitStopped() {
    absl::MutexLock stop_lock(&stop_mu_);
    if (sender_.joinable()) sender_.join();
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &Batcher::NothingInFlight));
  }

  // Appends this batcher's histograms, labelled call=`kind`.
  void AddMetrics(prometheus::MetricFamily& waits, prometheus::MetricFamily& calls,
                  const std::string& kind) const {
    batch_waits_.AddTo(waits, {{"call", kind}});
    call_times_.AddTo(calls, {{"call", kind}});
  }

 private:
  void OpenLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (open_ != nullptr) return;
    open_ = std::make_unique<Batch>();
    open_->opened_at = absl::Now();
    Calls::Items(open_->request)->Reserve(static_cast<int>(batch_max_));
    open_->dones.reserve(batch_max_);
  }

  // `bytes`: the item's serialized size. The open batch closes first if the item would take it
  // past kMaxBatchBytes.
  void AddLocked(Item item, size_t bytes, Done done) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (open_ != nullptr && open_->bytes + bytes > kMaxBatchBytes) {
      full_.push_back(std::move(open_));
    }
    AppendLocked(std::move(item), bytes, std::move(done));
  }

  // Adds to the open batch (opened if need be) whatever its size; `bytes` counts the items added
  // just before it that belong with it too.
  void AppendLocked(Item item, size_t bytes, Done done) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    OpenLocked();
    *Calls::Items(open_->request)->Add() = std::move(item);
    open_->dones.push_back(std::move(done));
    open_->bytes += bytes;
    if (open_->dones.size() >= batch_max_ || open_->bytes >= kMaxBatchBytes) {
      full_.push_back(std::move(open_));
    }
  }

  static absl::Status TooLarge(size_t bytes) {
    return absl::InvalidArgumentError(absl::StrCat("record: ", bytes, " bytes, over the ",
                                                   kMaxItemBytes,
                                                   " one call to the replay store carries"));
  }

  struct Batch {
    typename Calls::Request request;
    std::vector<Done> dones;
    size_t bytes = 0;  // of the items, serialized
    absl::Time opened_at;
  };
  // One call; deleted when it completes.
  struct Call {
    std::unique_ptr<Batch> batch;
    absl::Time sent_at;
    grpc::ClientContext context;
    typename Calls::Response response;
  };

  // Sender: sends full batches at once and the open one when its delay ran out. After
  // BeginStop() it sends what is queued; what still has no call slot when the stop deadline
  // passes is completed with CANCELLED.
  void RunSender() {
    std::vector<std::unique_ptr<Batch>> abandoned;
    mu_.Lock();
    for (;;) {
      if (stopping_) {
        mu_.AwaitWithDeadline(absl::Condition(this, &Batcher::SenderHasWork), stop_deadline_);
      } else {
        mu_.Await(absl::Condition(this, &Batcher::SenderHasWork));
      }
      if (full_.empty() && open_ == nullptr) break;  // Stopping, and everything was sent.
      if (in_flight_ >= max_in_flight_) {            // Stopping, and out of time.
        while (!full_.empty()) {
          abandoned.push_back(std::move(full_.front()));
          full_.pop_front();
        }
        if (open_ != nullptr) abandoned.push_back(std::move(open_));
        break;
      }
      std::unique_ptr<Batch> batch;
      if (!full_.empty()) {
        batch = std::move(full_.front());
        full_.pop_front();
      } else {
        const absl::Time due = open_->opened_at + batch_delay_;
        if (!stopping_ && absl::Now() < due && !IdleFlush()) {
          mu_.AwaitWithDeadline(absl::Condition(this, &Batcher::FlushEarly), due);
          continue;
        }
        batch = std::move(open_);
      }
      ++in_flight_;
      mu_.Unlock();
      Send(std::move(batch));
      mu_.Lock();
    }
    mu_.Unlock();
    for (std::unique_ptr<Batch>& batch : abandoned) {
      for (Done& done : batch->dones) {
        std::move(done)(absl::CancelledError("replay recorder stopped before the batch was sent"));
      }
    }
  }

  void Send(std::unique_ptr<Batch> batch) {
    const absl::Time now = absl::Now();
    batch_waits_.Observe(now - batch->opened_at);
    auto* call = new Call{.batch = std::move(batch), .sent_at = now};
    call->context.set_deadline(absl::ToChronoTime(now + deadline_));
    if (!authorization_.empty()) call->context.AddMetadata("authorization", authorization_);
    Calls::Start(stub_, &call->context, &call->batch->request, &call->response,
                 [this, call](grpc::Status status) { OnCallDone(call, status); });
  }

  void OnCallDone(Call* call, const grpc::Status& status) {
    call_times_.Observe(absl::Now() - call->sent_at);
    Calls::Complete(call->batch->request, call->response, FromGrpc(status), call->batch->dones);
    delete call;
    absl::MutexLock lock(&mu_);
    --in_flight_;
  }

  bool SenderHasWork() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    const bool queued = !full_.empty() || open_ != nullptr;
    return (queued && in_flight_ < max_in_flight_) || (stopping_ && !queued);
  }
  bool IdleFlush() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return flush_when_idle_ && in_flight_ == 0;
  }
  bool FlushEarly() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return stopping_ || !full_.empty() || IdleFlush();
  }
  bool NothingInFlight() const ABSL_SHARED_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; }

  const absl::Duration batch_delay_;
  const absl::Duration deadline_;
  const bool flush_when_idle_;
  const std::string authorization_;  // the metadata value; empty: none
  const size_t batch_max_;
  const size_t max_in_flight_;
  Stub& stub_;
  metrics::Latency batch_waits_, call_times_;

  absl::Mutex mu_;
  std::unique_ptr<Batch> open_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Batch>> full_ ABSL_GUARDED_BY(mu_);
  size_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time stop_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();

  // Serialises AwaitStopped() calls (the sender is joined once).
  absl::Mutex stop_mu_;
  // Last member: starts after everything it uses exists.
  std::thread sender_;
};

}  // namespace

std::string BearerTokenProblem(std::string_view token) {
  constexpr char kRule[] = ": a bearer token may hold only visible ASCII characters (0x21-0x7E)";
  for (size_t i = 0; i < token.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(token[i]);
    if (c >= 0x21 && c <= 0x7E) continue;
    // The usual case: a token read from a file that ends with a line break.
    if (token.find_first_not_of("\r\n", i) == std::string_view::npos) {
      return absl::StrCat(
          "ends with a line break (the last line of the file it came from? store the token "
          "without it)",
          kRule);
    }
    const std::string what = c == ' '    ? "a space"
                             : c == '\t' ? "a tab"
                             : c == '\n' ? "a line break"
                             : c < 0x80  ? absl::StrFormat("a control character (0x%02X)", c)
                                         : absl::StrFormat("a non-ASCII byte (0x%02X)", c);
    return absl::StrCat(i + 1 == token.size() ? absl::StrCat("ends with ", what)
                        : i == 0              ? absl::StrCat("starts with ", what)
                                 : absl::StrCat("holds ", what, " at character ", i + 1),
                        kRule);
  }
  return "";
}

std::unique_ptr<ess::v1::ReplayService::Stub> MakeReplayStub(const std::string& address,
                                                             const ReplayTls& tls) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // Reconnect quickly after a store restart: the lanes pause while it is away.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      tls.ca_pem.empty()
          ? grpc::InsecureChannelCredentials()
          : grpc::SslCredentials(grpc::SslCredentialsOptions{.pem_root_certs = tls.ca_pem,
                                                             .pem_private_key = tls.key_pem,
                                                             .pem_cert_chain = tls.cert_pem});
  return ess::v1::ReplayService::NewStub(grpc::CreateCustomChannel(address, credentials, args));
}

// Records and lookups are batched apart, each with its own call slots, so neither waits
// behind a queue of the other.
struct ReplayRecorder::Impl {
  explicit Impl(Options opts)
      : options(std::move(opts)),
        stub(MakeReplayStub(options.address, options.tls)),
        records(options, options.batch_max, options.record_delay.value_or(options.batch_delay),
                !options.record_delay.has_value() && options.flush_when_idle, *stub),
        lookups(options, std::min(options.batch_max, kMaxLookupKeys), options.batch_delay,
                options.flush_when_idle, *stub),
        claims(options, std::min(options.batch_max, kMaxLookupKeys), options.batch_delay,
               options.flush_when_idle, *stub) {}

  void Stop() {
    const absl::Time deadline = absl::Now() + options.deadline;
    records.BeginStop(deadline);
    lookups.BeginStop(deadline);
    claims.BeginStop(deadline);
    records.AwaitStopped();
    lookups.AwaitStopped();
    claims.AwaitStopped();
  }

  const Options options;
  // Declared before the batchers, which use it until they are destroyed.
  const std::unique_ptr<Stub> stub;
  Batcher<RecordCalls> records;
  Batcher<LookupCalls> lookups;
  Batcher<ClaimCalls> claims;
};

ReplayRecorder::ReplayRecorder(Options options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

ReplayRecorder::~ReplayRecorder() { Stop(); }

void ReplayRecorder::Record(ess::v1::MessageRecord record, Done done) {
  RepairText(record);
  if (absl::Status s = CheckRecord(record); !s.ok()) {
    std::move(done)(std::move(s));
    return;
  }
  impl_->records.Add(std::move(record), std::move(done));
}

void ReplayRecorder::RecordTogether(std::vector<ess::v1::MessageRecord> records, Done done) {
  if (records.empty()) {
    std::move(done)(absl::OkStatus());
    return;
  }
  for (ess::v1::MessageRecord& record : records) {
    RepairText(record);
    if (absl::Status s = CheckRecord(record); !s.ok()) {
      std::move(done)(std::move(s));
      return;
    }
  }
  impl_->records.AddTogether(std::move(records), std::move(done));
}

void ReplayRecorder::Lookup(const ess::v1::RecordKey& key, LookupDone done) {
  if (absl::Status s = CheckKey(key); !s.ok()) {
    std::move(done)(std::move(s));
    return;
  }
  impl_->lookups.Add(key, std::move(done));
}

void ReplayRecorder::Claim(ess::v1::Claim claim, ClaimDone done) {
  RepairText(*claim.mutable_record());
  if (absl::Status s = CheckClaim(claim.record()); !s.ok()) {
    std::move(done)(std::move(s));
    return;
  }
  impl_->claims.Add(std::move(claim), std::move(done));
}

void ReplayRecorder::Stop() { impl_->Stop(); }

std::vector<prometheus::MetricFamily> ReplayRecorder::Metrics() const {
  prometheus::MetricFamily waits = metrics::Family(
      "ess_replay_client_batch_wait_seconds",
      "Calls to the replay store by kind: how long a batch's first item waited for the call "
      "to go out (the batch delay, or a free call slot).",
      prometheus::MetricType::Histogram);
  prometheus::MetricFamily calls = metrics::Family(
      "ess_replay_client_call_seconds",
      "Calls to the replay store by kind: from going out to the answer (network and store).",
      prometheus::MetricType::Histogram);
  impl_->records.AddMetrics(waits, calls, "record");
  impl_->lookups.AddMetrics(waits, calls, "lookup");
  impl_->claims.AddMetrics(waits, calls, "claim");
  std::vector<prometheus::MetricFamily> families;
  families.push_back(std::move(waits));
  families.push_back(std::move(calls));
  return families;
}

absl::Status ReplayRecorder::Ping(absl::Duration deadline) {
  auto context = [&] {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    if (!impl_->options.token.empty()) {
      c->AddMetadata("authorization", Authorization(impl_->options.token));
    }
    return c;
  };
  // An empty Record call: the store checks that this caller may record (a lane's token; a
  // viewer's or an ops token may Get but not Record) and writes nothing.
  ess::v1::RecordResponse recorded;
  grpc::Status s = impl_->stub->Record(context().get(), ess::v1::RecordRequest(), &recorded);
  if (s.ok()) {
    // Then a read, which the store itself answers.
    ess::v1::GetRequest request;
    request.mutable_record()->set_direction(ess::v1::DIRECTION_OUTBOUND);
    request.mutable_record()->set_partner("ess-ping");
    request.mutable_record()->set_message_id("ess-ping");
    ess::v1::GetResponse response;
    s = impl_->stub->Get(context().get(), request, &response);
  }
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
      return absl::UnavailableError(absl::StrCat("replay store: ", s.error_message()));
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED:
      return FromGrpc(s);
    default:
      return absl::OkStatus();
  }
}

}  // namespace ess
