#include "replay_svc/replay_service.h"

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "common/metrics.h"
#include "replay_svc/records.h"
#include "replay_svc/trail.h"

namespace ess::replay {
namespace {

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

// ---- Page tokens -------------------------------------------------------------------------
// Web-safe base64 of: version byte, filter fingerprint, updated_at, row id (little-endian 64-bit
// each). The fingerprint ties a token to the filter it was issued for.

constexpr uint8_t kTokenVersion = 1;
constexpr size_t kTokenBytes = 1 + 3 * sizeof(uint64_t);

void Store64(char* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint64_t Load64(const char* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<unsigned char>(in[i])} << (8 * i);
  return v;
}

// FNV-1a over the filter fields (stable across processes, unlike absl::Hash).
uint64_t FilterFingerprint(const ess::v1::ListRequest& request) {
  uint64_t hash = 14695981039346656037ull;
  auto mix = [&hash](absl::string_view bytes) {
    for (unsigned char c : bytes) {
      hash ^= c;
      hash *= 1099511628211ull;
    }
    hash ^= 0xff;  // Field separator: ("ab","c") and ("a","bc") differ.
    hash *= 1099511628211ull;
  };
  mix(request.partner());
  mix(absl::StrCat(request.direction(), "/", request.status()));
  mix(request.event_type());
  mix(request.correlation_id());
  mix(absl::StrCat(request.since().seconds(), ".", request.since().nanos(), "/",
                   request.until().seconds(), ".", request.until().nanos()));
  // Only when set, so that the tokens of filters without it are what they were before it.
  if (request.has_received_since() || request.has_received_until()) {
    mix(absl::StrCat("received ", request.received_since().seconds(), ".",
                     request.received_since().nanos(), "/", request.received_until().seconds(), ".",
                     request.received_until().nanos()));
  }
  if (request.unconfirmed()) mix("unconfirmed");
  return hash;
}

std::string EncodePageToken(uint64_t fingerprint, const ListCursor& cursor) {
  char raw[kTokenBytes];
  raw[0] = static_cast<char>(kTokenVersion);
  Store64(raw + 1, fingerprint);
  Store64(raw + 9, static_cast<uint64_t>(cursor.updated_at_micros));
  Store64(raw + 17, static_cast<uint64_t>(cursor.id));
  std::string token;
  absl::WebSafeBase64Escape(absl::string_view(raw, sizeof(raw)), &token);
  return token;
}

absl::StatusOr<ListCursor> DecodePageToken(const std::string& token, uint64_t fingerprint) {
  std::string raw;
  if (!absl::WebSafeBase64Unescape(token, &raw) || raw.size() != kTokenBytes ||
      static_cast<uint8_t>(raw[0]) != kTokenVersion) {
    return absl::InvalidArgumentError("page_token: malformed");
  }
  if (Load64(raw.data() + 1) != fingerprint) {
    return absl::InvalidArgumentError("page_token: issued for a different filter");
  }
  return ListCursor{
      .updated_at_micros = static_cast<int64_t>(Load64(raw.data() + 9)),
      .id = static_cast<int64_t>(Load64(raw.data() + 17)),
  };
}

// ---- Request validation ------------------------------------------------------------------

absl::Status ValidateRecordRequest(const ess::v1::RecordRequest& request) {
  for (int i = 0; i < request.records_size(); ++i) {
    if (absl::Status s = ValidateRecord(request.records(i), ""); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("records[", i, "].", s.message()));
    }
  }
  return absl::OkStatus();
}

// The guard rails essctl keeps, kept for every other client too (grpcurl, through reflection).
absl::Status ValidateReplayIntent(const ess::v1::ReplayRequest& request) {
  if (!request.dry_run() && absl::StripAsciiWhitespace(request.reason()).empty()) {
    return absl::InvalidArgumentError(
        "reason: required (it goes into the audit trail), or set dry_run");
  }
  if (request.has_filter() && request.filter().partner().empty() &&
      request.filter().correlation_id().empty()) {
    return absl::InvalidArgumentError(
        "filter: name a partner or a correlation_id; a replay never republishes the whole store "
        "by accident");
  }
  return absl::OkStatus();
}

// At most `max` keys, each valid; INVALID_ARGUMENT "keys...." naming the first bad one.
absl::Status ValidateKeys(const google::protobuf::RepeatedPtrField<ess::v1::RecordKey>& keys,
                          int max) {
  if (keys.size() > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("keys: ", keys.size(), " given, at most ", max, " per call"));
  }
  for (int i = 0; i < keys.size(); ++i) {
    const ess::v1::RecordKey& key = keys[i];
    if (absl::Status s = ValidateKey(key.direction(), key.partner(), key.message_id(), "");
        !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("keys[", i, "].", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateLookupRequest(const ess::v1::LookupRequest& request) {
  return ValidateKeys(request.keys(), ReplayServiceImpl::kMaxLookupKeys);
}

absl::Status ValidateClaimRequest(const ess::v1::ClaimRequest& request) {
  if (request.claims_size() > ReplayServiceImpl::kMaxLookupKeys) {
    return absl::InvalidArgumentError(absl::StrCat("claims: ", request.claims_size(),
                                                   " given, at most ",
                                                   ReplayServiceImpl::kMaxLookupKeys, " per call"));
  }
  for (int i = 0; i < request.claims_size(); ++i) {
    if (absl::Status s = ValidateClaimedRecord(request.claims(i).record(), "record"); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("claims[", i, "].", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ListQuery> MakeListQuery(const ess::v1::ListRequest& request) {
  ListQuery query;
  query.partner = request.partner();
  query.event_type = request.event_type();
  query.correlation_id = request.correlation_id();
  if (!ess::v1::Direction_IsValid(request.direction())) {
    return absl::InvalidArgumentError(
        absl::StrCat("direction: unknown value ", request.direction()));
  }
  query.direction = request.direction();
  if (!ess::v1::MessageStatus_IsValid(request.status())) {
    return absl::InvalidArgumentError(absl::StrCat("status: unknown value ", request.status()));
  }
  query.status = request.status();
  query.unconfirmed = request.unconfirmed();
  // A time bound, when set, in Unix microseconds.
  auto bound = [](bool set, const google::protobuf::Timestamp& t, absl::string_view field,
                  std::optional<int64_t>* out) {
    if (!set) return absl::OkStatus();
    *out = ToUnixMicros(t);
    return out->has_value()
               ? absl::OkStatus()
               : absl::InvalidArgumentError(absl::StrCat(field, ": is not a valid timestamp"));
  };
  for (absl::Status s : {bound(request.has_since(), request.since(), "since", &query.since_micros),
                         bound(request.has_until(), request.until(), "until", &query.until_micros),
                         bound(request.has_received_since(), request.received_since(),
                               "received_since", &query.received_since_micros),
                         bound(request.has_received_until(), request.received_until(),
                               "received_until", &query.received_until_micros)}) {
    if (!s.ok()) return s;
  }
  query.limit = request.page_size() == 0
                    ? ReplayServiceImpl::kDefaultPageSize
                    : std::min(request.page_size(), ReplayServiceImpl::kMaxPageSize);
  query.max_bytes = ReplayServiceImpl::kMaxPageBytes;
  if (!request.page_token().empty()) {
    absl::StatusOr<ListCursor> cursor =
        DecodePageToken(request.page_token(), FilterFingerprint(request));
    if (!cursor.ok()) return cursor.status();
    query.after = *cursor;
  }
  return query;
}

absl::Status ValidateReplayRequest(const ess::v1::ReplayRequest& request) {
  if (request.keys().empty() == !request.has_filter()) {
    return absl::InvalidArgumentError("set keys or filter, not both and not neither");
  }

  if (absl::Status s =
          ValidateKeys(request.keys(), static_cast<int>(ReplayServiceImpl::kMaxPageSize));
      !s.ok()) {
    return s;
  }
  // A key given twice would be published twice (a replay skips the lanes' duplicate checks).
  absl::flat_hash_map<std::tuple<int, std::string_view, std::string_view>, int> first;
  for (int i = 0; i < request.keys_size(); ++i) {
    const ess::v1::RecordKey& key = request.keys(i);
    auto [it, inserted] = first.try_emplace(
        std::make_tuple(static_cast<int>(key.direction()), std::string_view(key.partner()),
                        std::string_view(key.message_id())),
        i);
    if (!inserted) {
      return absl::InvalidArgumentError(
          absl::StrCat("keys[", i, "]: repeats keys[", it->second, "]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

ReplayServiceImpl::ReplayServiceImpl(ReplayStore& store, Options options)
    : store_(store),
      replayer_(options.replayer),
      authorizer_(options.authorizer),
      reads_("replay-read", std::max<size_t>(options.reader_threads, 1)),
      writes_("replay-write", 1),
      replays_("replay-ops", 1) {}

ReplayServiceImpl::~ReplayServiceImpl() = default;

namespace {

// The call's "authorization" metadata value, or empty.
std::string_view AuthorizationOf(grpc::CallbackServerContext* context) {
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  return it == metadata.end() ? std::string_view()
                              : std::string_view(it->second.data(), it->second.size());
}

// A record as a viewer gets it: without the partner's message and what the hub made of it.
void StripBodies(ess::v1::MessageRecord& record) {
  record.clear_payload();
  record.clear_rendered();
}

}  // namespace

bool ReplayServiceImpl::SeesBodies(grpc::CallbackServerContext* context) const {
  return authorizer_ == nullptr || authorizer_->SeesBodies(AuthorizationOf(context));
}

absl::StatusOr<std::string> ReplayServiceImpl::Authorize(grpc::CallbackServerContext* context,
                                                         Authorizer::Method method) {
  if (authorizer_ == nullptr || !authorizer_->enabled()) return std::string();
  const std::string_view value = AuthorizationOf(context);
  absl::StatusOr<std::string> caller = authorizer_->Check(value, method);
  if (!caller.ok() && refused_.fetch_add(1, std::memory_order_relaxed) % 1000 == 0) {
    // The first refusal and every 1000th: a misconfigured client must not flood the log.
    ess::log::Warn("", "call refused",
                   {{"method", Authorizer::MethodName(method)},
                    {"peer", context->peer()},
                    {"error", caller.status().ToString()},
                    {"refused", absl::StrCat(refused_.load(std::memory_order_relaxed))}});
  }
  return caller;
}

void ReplayServiceImpl::Finish(grpc::ServerUnaryReactor* reactor, Authorizer::Method method,
                               const grpc::Status& status) {
  const size_t m = static_cast<size_t>(method);
  (status.ok() ? ok_ : errors_)[m].fetch_add(1, std::memory_order_relaxed);
  reactor->Finish(status);
}

metrics::Latency* ReplayServiceImpl::Runs(Authorizer::Method method) {
  return &runs_[static_cast<size_t>(method)];
}

// ---- The writer --------------------------------------------------------------------------

// Most records, or claims, in one batch of calls (a call with more runs alone).
constexpr int kMaxBatchItems = 4096;

struct ReplayServiceImpl::WriteBatch {
  struct Call {
    const google::protobuf::Message* request;
    google::protobuf::Message* response;
    grpc::ServerUnaryReactor* reactor;
  };
  bool claim = false;  // Claim calls; else Record calls
  std::vector<Call> calls;
  int items = 0;
  bool started = false;  // guarded by the service's write_mu_
};

void ReplayServiceImpl::Write(bool claim, const google::protobuf::Message* request,
                              google::protobuf::Message* response,
                              grpc::ServerUnaryReactor* reactor, int items) {
  absl::MutexLock lock(&write_mu_);
  queued_writes_.fetch_add(1, std::memory_order_relaxed);
  if (open_batch_ != nullptr && open_batch_->claim == claim && !open_batch_->started &&
      open_batch_->items + items <= kMaxBatchItems) {
    open_batch_->calls.push_back({request, response, reactor});
    open_batch_->items += items;
    return;
  }
  auto batch = std::make_shared<WriteBatch>();
  batch->claim = claim;
  batch->calls.push_back({request, response, reactor});
  batch->items = items;
  open_batch_ = batch;
  writes_.Post(Runs(claim ? Authorizer::Method::kClaim : Authorizer::Method::kRecord), [this,
                                                                                        batch] {
    {
      absl::MutexLock taken(&write_mu_);
      batch->started = true;
      if (open_batch_ == batch) open_batch_ = nullptr;
    }
    queued_writes_.fetch_sub(static_cast<int64_t>(batch->calls.size()), std::memory_order_relaxed);
    merged_.fetch_add(batch->calls.size() - 1, std::memory_order_relaxed);
    if (batch->claim) {
      RunClaims(*batch);
    } else {
      RunRecords(*batch);
    }
  });
}

namespace {

// The items of a batch's calls in one field for one store call, borrowed from the calls'
// messages (no copies) and given back when it goes: a temporary lends them for the
// full-expression that makes it.
template <typename T>
class Borrowed {
 public:
  template <typename Calls, typename ItemsOf>
  Borrowed(const Calls& calls, int items, ItemsOf items_of) {
    all_.Reserve(items);
    for (const auto& call : calls) {
      for (const T& item : items_of(call)) all_.UnsafeArenaAddAllocated(const_cast<T*>(&item));
    }
  }
  ~Borrowed() { all_.UnsafeArenaExtractSubrange(0, all_.size(), nullptr); }
  Borrowed(const Borrowed&) = delete;
  Borrowed& operator=(const Borrowed&) = delete;

  const google::protobuf::RepeatedPtrField<T>& all() const { return all_; }

 private:
  google::protobuf::RepeatedPtrField<T> all_;
};

}  // namespace

void ReplayServiceImpl::RunRecords(const WriteBatch& batch) {
  auto record = [&](const WriteBatch::Call& call, absl::StatusOr<uint32_t> stored) {
    if (stored.ok()) {
      static_cast<ess::v1::RecordResponse*>(call.response)->set_stored(*stored);
      stored_.fetch_add(*stored, std::memory_order_relaxed);
    }
    Finish(call.reactor, Authorizer::Method::kRecord, ToGrpc(stored.status()));
  };
  auto request = [](const WriteBatch::Call& call) -> const ess::v1::RecordRequest& {
    return *static_cast<const ess::v1::RecordRequest*>(call.request);
  };
  if (batch.calls.size() == 1) {
    record(batch.calls[0], store_.Record(request(batch.calls[0]).records()));
    return;
  }
  absl::StatusOr<uint32_t> stored = store_.Record(
      Borrowed<ess::v1::MessageRecord>(
          batch.calls, batch.items,
          [&](const WriteBatch::Call& c) -> const auto& { return request(c).records(); })
          .all());
  if (stored.ok() || absl::IsUnavailable(stored.status())) {
    for (const WriteBatch::Call& call : batch.calls) {
      record(call, stored.ok() ? absl::StatusOr<uint32_t>(request(call).records_size())
                               : stored.status());
    }
    return;
  }
  for (const WriteBatch::Call& call : batch.calls) {
    record(call, store_.Record(request(call).records()));
  }
}

void ReplayServiceImpl::RunClaims(const WriteBatch& batch) {
  auto answer = [&](const WriteBatch::Call& call, const absl::Status& status,
                    const ess::v1::ClaimOutcome* outcomes, int n) {
    if (status.ok()) {
      auto* response = static_cast<ess::v1::ClaimResponse*>(call.response);
      response->mutable_results()->Reserve(n);
      for (int i = 0; i < n; ++i) response->add_results(outcomes[i]);
    }
    Finish(call.reactor, Authorizer::Method::kClaim, ToGrpc(status));
  };
  auto request = [](const WriteBatch::Call& call) -> const ess::v1::ClaimRequest& {
    return *static_cast<const ess::v1::ClaimRequest*>(call.request);
  };
  auto alone = [&](const WriteBatch::Call& call) {
    absl::StatusOr<std::vector<ess::v1::ClaimOutcome>> outcomes =
        store_.Claim(request(call).claims());
    answer(call, outcomes.status(), outcomes.ok() ? outcomes->data() : nullptr,
           outcomes.ok() ? static_cast<int>(outcomes->size()) : 0);
  };
  if (batch.calls.size() == 1) {
    alone(batch.calls[0]);
    return;
  }
  absl::StatusOr<std::vector<ess::v1::ClaimOutcome>> outcomes = store_.Claim(
      Borrowed<ess::v1::Claim>(
          batch.calls, batch.items,
          [&](const WriteBatch::Call& c) -> const auto& { return request(c).claims(); })
          .all());
  if (outcomes.ok() && outcomes->size() == static_cast<size_t>(batch.items)) {
    int from = 0;
    for (const WriteBatch::Call& call : batch.calls) {
      const int n = request(call).claims_size();
      answer(call, absl::OkStatus(), outcomes->data() + from, n);
      from += n;
    }
    return;
  }
  if (!outcomes.ok() && absl::IsUnavailable(outcomes.status())) {
    for (const WriteBatch::Call& call : batch.calls) answer(call, outcomes.status(), nullptr, 0);
    return;
  }
  for (const WriteBatch::Call& call : batch.calls) alone(call);
}

std::vector<prometheus::MetricFamily> ReplayServiceImpl::Metrics() const {
  prometheus::MetricFamily calls = metrics::Family(
      "ess_replay_calls_total",
      "ReplayService calls answered, by method and result (ok, or error: any other status, "
      "refusals by access control included).",
      prometheus::MetricType::Counter);
  for (size_t m = 0; m < kMethods; ++m) {
    const std::string name = Authorizer::MethodName(static_cast<Authorizer::Method>(m));
    metrics::AddSample(calls, {{"method", name}, {"result", "ok"}}, ok_[m].load());
    metrics::AddSample(calls, {{"method", name}, {"result", "error"}}, errors_[m].load());
  }
  prometheus::MetricFamily replays = metrics::Family(
      "ess_replay_replayed_records_total",
      "Records handled by ops replays, by outcome (replayed, skipped, failed, unconfirmed: "
      "published, its confirm after the call answered); dry runs excluded.",
      prometheus::MetricType::Counter);
  metrics::AddSample(replays, {{"outcome", "replayed"}}, replayed_.load());
  metrics::AddSample(replays, {{"outcome", "skipped"}}, replay_skipped_.load());
  metrics::AddSample(replays, {{"outcome", "failed"}}, replay_failed_.load());
  metrics::AddSample(replays, {{"outcome", "unconfirmed"}}, replay_unconfirmed_.load());
  prometheus::MetricFamily runs = metrics::Family(
      "ess_replay_store_seconds",
      "Time a call's work took on a store thread (the store's reads or transaction), by method; "
      "Record or Claim calls run as one batch count once.",
      prometheus::MetricType::Histogram);
  for (size_t m = 0; m < kMethods; ++m) {
    runs_[m].AddTo(runs, {{"method", Authorizer::MethodName(static_cast<Authorizer::Method>(m))}});
  }
  prometheus::MetricFamily waits = metrics::Family(
      "ess_replay_queue_wait_seconds",
      "Time a call's work waited for a store thread: read (one per reader connection), write "
      "(the one writer: Record, Claim, UpdateStatus; a batch of calls from its first call's "
      "arrival) or replay.",
      prometheus::MetricType::Histogram);
  reads_.waits().AddTo(waits, {{"queue", "read"}});
  writes_.waits().AddTo(waits, {{"queue", "write"}});
  replays_.waits().AddTo(waits, {{"queue", "replay"}});
  std::vector<prometheus::MetricFamily> families;
  families.push_back(std::move(calls));
  families.push_back(std::move(runs));
  families.push_back(std::move(waits));
  families.push_back(metrics::Single("ess_replay_records_stored_total",
                                     "Records stored by Record calls.",
                                     prometheus::MetricType::Counter, stored_.load()));
  families.push_back(metrics::Single(
      "ess_replay_writes_batched_total",
      "Record and Claim calls that went to the store in the batch of an earlier call (one "
      "transaction for consecutive calls queued while the writer was busy).",
      prometheus::MetricType::Counter, merged_.load()));
  families.push_back(
      metrics::Single("ess_replay_writes_queued",
                      "Write calls (Record, Claim, UpdateStatus) waiting for the writer.",
                      prometheus::MetricType::Gauge, static_cast<double>(queued_writes_.load())));
  families.push_back(std::move(replays));
  return families;
}

grpc::ServerUnaryReactor* ReplayServiceImpl::Record(grpc::CallbackServerContext* context,
                                                    const ess::v1::RecordRequest* request,
                                                    ess::v1::RecordResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> auth = Authorize(context, Authorizer::Method::kRecord);
  if (!auth.ok()) {
    Finish(reactor, Authorizer::Method::kRecord, ToGrpc(auth.status()));
    return reactor;
  }
  if (absl::Status s = ValidateRecordRequest(*request); !s.ok()) {
    Finish(reactor, Authorizer::Method::kRecord, ToGrpc(s));
  } else if (request->records().empty()) {
    Finish(reactor, Authorizer::Method::kRecord, grpc::Status::OK);
  } else {
    Write(/*claim=*/false, request, response, reactor, request->records_size());
  }
  return reactor;
}

grpc::ServerUnaryReactor* ReplayServiceImpl::UpdateStatus(
    grpc::CallbackServerContext* context, const ess::v1::UpdateStatusRequest* request,
    ess::v1::MessageRecord* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> auth = Authorize(context, Authorizer::Method::kUpdateStatus);
  if (!auth.ok()) {
    Finish(reactor, Authorizer::Method::kUpdateStatus, ToGrpc(auth.status()));
    return reactor;
  }
  absl::Status valid =
      ValidateKey(request->direction(), request->partner(), request->message_id(), "");
  if (valid.ok()) valid = ValidateStatus(request->status(), "");
  if (!valid.ok()) {
    Finish(reactor, Authorizer::Method::kUpdateStatus, ToGrpc(valid));
    return reactor;
  }
  // An ops action on the history: logged with who did it.
  std::string who = auth->empty() ? context->peer() : *std::move(auth);
  absl::MutexLock lock(&write_mu_);
  open_batch_ = nullptr;  // calls after this one do not join a batch queued before it
  queued_writes_.fetch_add(1, std::memory_order_relaxed);
  writes_.Post(Runs(Authorizer::Method::kUpdateStatus),
               [this, request, response, reactor, who = std::move(who)] {
                 queued_writes_.fetch_sub(1, std::memory_order_relaxed);
                 absl::StatusOr<ess::v1::MessageRecord> record = store_.UpdateStatus(*request);
                 if (record.ok()) {
                   *response = *std::move(record);
                   ess::log::Info(response->correlation_id(), "record status changed",
                                  {{"by", who},
                                   {"direction", ess::v1::Direction_Name(request->direction())},
                                   {"partner", request->partner()},
                                   {"message_id", request->message_id()},
                                   {"status", ess::v1::MessageStatus_Name(request->status())}});
                 }
                 Finish(reactor, Authorizer::Method::kUpdateStatus, ToGrpc(record.status()));
               });
  return reactor;
}

grpc::ServerUnaryReactor* ReplayServiceImpl::Get(grpc::CallbackServerContext* context,
                                                 const ess::v1::GetRequest* request,
                                                 ess::v1::GetResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> auth = Authorize(context, Authorizer::Method::kGet);
  if (!auth.ok()) {
    Finish(reactor, Authorizer::Method::kGet, ToGrpc(auth.status()));
    return reactor;
  }
  const bool bodies = SeesBodies(context);
  switch (request->key_case()) {
    case ess::v1::GetRequest::kCorrelationId:
      if (request->correlation_id().empty()) {
        Finish(reactor, Authorizer::Method::kGet,
               ToGrpc(absl::InvalidArgumentError("correlation_id: must not be empty")));
        return reactor;
      }
      reads_.Post(Runs(Authorizer::Method::kGet), [this, request, response, reactor, bodies] {
        absl::StatusOr<std::vector<ess::v1::MessageRecord>> records =
            store_.GetByCorrelation(request->correlation_id());
        if (!records.ok()) {
          Finish(reactor, Authorizer::Method::kGet, ToGrpc(records.status()));
          return;
        }
        if (records->empty()) {
          Finish(reactor, Authorizer::Method::kGet,
                 ToGrpc(absl::NotFoundError(
                     absl::StrCat("no records for correlation_id=", request->correlation_id()))));
          return;
        }
        *response->mutable_trail() = ComputeTrail(request->correlation_id(), *records);
        for (ess::v1::MessageRecord& r : *records) {
          if (!bodies) StripBodies(r);
          *response->add_records() = std::move(r);
        }
        Finish(reactor, Authorizer::Method::kGet, grpc::Status::OK);
      });
      return reactor;
    case ess::v1::GetRequest::kRecord: {
      const ess::v1::RecordKey& key = request->record();
      if (absl::Status s = ValidateKey(key.direction(), key.partner(), key.message_id(), "record");
          !s.ok()) {
        Finish(reactor, Authorizer::Method::kGet, ToGrpc(s));
        return reactor;
      }
      reads_.Post(Runs(Authorizer::Method::kGet), [this, request, response, reactor, bodies] {
        absl::StatusOr<ess::v1::MessageRecord> record = store_.GetByKey(request->record());
        if (record.ok()) {
          if (!bodies) StripBodies(*record);
          *response->add_records() = *std::move(record);
        }
        Finish(reactor, Authorizer::Method::kGet, ToGrpc(record.status()));
      });
      return reactor;
    }
    case ess::v1::GetRequest::KEY_NOT_SET:
      break;
  }
  Finish(reactor, Authorizer::Method::kGet,
         ToGrpc(absl::InvalidArgumentError("key: set correlation_id or record")));
  return reactor;
}

grpc::ServerUnaryReactor* ReplayServiceImpl::Lookup(grpc::CallbackServerContext* context,
                                                    const ess::v1::LookupRequest* request,
                                                    ess::v1::LookupResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> auth = Authorize(context, Authorizer::Method::kLookup);
  if (!auth.ok()) {
    Finish(reactor, Authorizer::Method::kLookup, ToGrpc(auth.status()));
    return reactor;
  }
  const bool bodies = SeesBodies(context);
  if (absl::Status s = ValidateLookupRequest(*request); !s.ok()) {
    Finish(reactor, Authorizer::Method::kLookup, ToGrpc(s));
  } else if (request->keys().empty()) {
    Finish(reactor, Authorizer::Method::kLookup, grpc::Status::OK);
  } else {
    reads_.Post(Runs(Authorizer::Method::kLookup), [this, request, response, reactor, bodies] {
      absl::StatusOr<std::vector<std::optional<ess::v1::MessageRecord>>> records =
          store_.GetByKeys(request->keys());
      if (records.ok()) {
        response->mutable_results()->Reserve(static_cast<int>(records->size()));
        for (std::optional<ess::v1::MessageRecord>& record : *records) {
          ess::v1::LookupResult* result = response->add_results();
          if (!record.has_value()) continue;
          result->set_found(true);
          if (!bodies) StripBodies(*record);
          *result->mutable_record() = *std::move(record);
        }
      }
      Finish(reactor, Authorizer::Method::kLookup, ToGrpc(records.status()));
    });
  }
  return reactor;
}

grpc::ServerUnaryReactor* ReplayServiceImpl::Claim(grpc::CallbackServerContext* context,
                                                   const ess::v1::ClaimRequest* request,
                                                   ess::v1::ClaimResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> auth = Authorize(context, Authorizer::Method::kClaim);
  if (!auth.ok()) {
    Finish(reactor, Authorizer::Method::kClaim, ToGrpc(auth.status()));
    return reactor;
  }
  if (absl::Status s = ValidateClaimRequest(*request); !s.ok()) {
    Finish(reactor, Authorizer::Method::kClaim, ToGrpc(s));
  } else if (request->claims().empty()) {
    Finish(reactor, Authorizer::Method::kClaim, grpc::Status::OK);
  } else {
    Write(/*claim=*/true, request, response, reactor, request->claims_size());
  }
  return reactor;
}

grpc::ServerUnaryReactor* ReplayServiceImpl::List(grpc::CallbackServerContext* context,
                                                  const ess::v1::ListRequest* request,
                                                  ess::v1::ListResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> auth = Authorize(context, Authorizer::Method::kList);
  if (!auth.ok()) {
    Finish(reactor, Authorizer::Method::kList, ToGrpc(auth.status()));
    return reactor;
  }
  const bool bodies = SeesBodies(context);
  absl::StatusOr<ListQuery> query = MakeListQuery(*request);
  if (!query.ok()) {
    Finish(reactor, Authorizer::Method::kList, ToGrpc(query.status()));
    return reactor;
  }
  reads_.Post(Runs(Authorizer::Method::kList), [this, request, response, reactor, bodies,
                                                q = *std::move(query)] {
    absl::StatusOr<ListPage> page = store_.List(q);
    if (!page.ok()) {
      Finish(reactor, Authorizer::Method::kList, ToGrpc(page.status()));
      return;
    }
    response->mutable_records()->Reserve(static_cast<int>(page->records.size()));
    for (ess::v1::MessageRecord& r : page->records) {
      if (!bodies) StripBodies(r);
      *response->add_records() = std::move(r);
    }
    if (page->next.has_value()) {
      response->set_next_page_token(EncodePageToken(FilterFingerprint(*request), *page->next));
    }
    Finish(reactor, Authorizer::Method::kList, grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* ReplayServiceImpl::Stats(grpc::CallbackServerContext* context,
                                                   const ess::v1::StatsRequest* request,
                                                   ess::v1::StatsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> auth = Authorize(context, Authorizer::Method::kStats);
  if (!auth.ok()) {
    Finish(reactor, Authorizer::Method::kStats, ToGrpc(auth.status()));
    return reactor;
  }
  reads_.Post(Runs(Authorizer::Method::kStats), [this, request, response, reactor] {
    absl::StatusOr<std::vector<ess::v1::PartnerStats>> stats = store_.Stats(request->partner());
    if (stats.ok()) {
      for (ess::v1::PartnerStats& p : *stats) *response->add_partners() = std::move(p);
    }
    Finish(reactor, Authorizer::Method::kStats, ToGrpc(stats.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* ReplayServiceImpl::Replay(grpc::CallbackServerContext* context,
                                                    const ess::v1::ReplayRequest* request,
                                                    ess::v1::ReplayResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> caller = Authorize(context, Authorizer::Method::kReplay);
  if (!caller.ok()) {
    Finish(reactor, Authorizer::Method::kReplay, ToGrpc(caller.status()));
    return reactor;
  }
  if (replayer_ == nullptr) {
    Finish(reactor, Authorizer::Method::kReplay,
           ToGrpc(absl::FailedPreconditionError(
               "replay is off: this replay_svc was started without a bus to publish to")));
    return reactor;
  }
  if (absl::Status s = ValidateReplayRequest(*request); !s.ok()) {
    Finish(reactor, Authorizer::Method::kReplay, ToGrpc(s));
    return reactor;
  }
  std::optional<ListQuery> query;
  if (request->has_filter()) {
    absl::StatusOr<ListQuery> q = MakeListQuery(request->filter());
    if (!q.ok()) {
      Finish(
          reactor, Authorizer::Method::kReplay,
          ToGrpc(absl::Status(q.status().code(), absl::StrCat("filter.", q.status().message()))));
      return reactor;
    }
    query = *std::move(q);
  }
  if (absl::Status s = ValidateReplayIntent(*request); !s.ok()) {
    Finish(reactor, Authorizer::Method::kReplay, ToGrpc(s));
    return reactor;
  }
  // The authenticated caller, with the name it gives; without either, its address.
  std::string who = request->requested_by();
  if (!caller->empty()) {
    who = who.empty() ? *caller : absl::StrCat(*caller, " (", who, ")");
  } else if (who.empty()) {
    who = context->peer();
  }
  // Leave the answer time to get back before the caller's deadline. A deadline closer than
  // that leaves no time to replay anything: said so, rather than "waited past its deadline".
  constexpr absl::Duration kAnswerMargin = absl::Milliseconds(500);
  const absl::Duration left = absl::FromChrono(context->deadline()) - absl::Now();
  if (left <= kAnswerMargin) {
    Finish(reactor, Authorizer::Method::kReplay,
           ToGrpc(absl::InvalidArgumentError(absl::StrCat(
               "deadline: ", absl::FormatDuration(absl::Trunc(left, absl::Milliseconds(1))),
               " left; a replay needs more than ", absl::FormatDuration(kAnswerMargin),
               " (it answers that long before the deadline): call with a longer one (essctl "
               "--timeout)"))));
    return reactor;
  }
  const absl::Time deadline = absl::FromChrono(context->deadline()) - kAnswerMargin;
  replays_.Post(Runs(Authorizer::Method::kReplay), [this, request, response, reactor,
                                                    query = std::move(query), who = std::move(who),
                                                    deadline, context] {
    // Queued behind another replay, the call may have run out of time or been given up: then
    // it publishes nothing (its caller would not learn what went, and would run it again).
    if (context->IsCancelled() || absl::Now() >= deadline) {
      Finish(reactor, Authorizer::Method::kReplay,
             grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "the replay waited for an earlier one past its deadline; nothing was "
                          "published"));
      return;
    }
    std::vector<Replayer::Candidate> candidates;
    std::optional<ListCursor> next;
    if (query.has_value()) {
      absl::StatusOr<ListPage> page = store_.List(*query);
      if (!page.ok()) {
        Finish(reactor, Authorizer::Method::kReplay, ToGrpc(page.status()));
        return;
      }
      candidates.reserve(page->records.size());
      for (ess::v1::MessageRecord& r : page->records) {
        Replayer::Candidate& c = candidates.emplace_back();
        c.key.set_direction(r.direction());
        c.key.set_partner(r.partner());
        c.key.set_message_id(r.message_id());
        c.record = std::move(r);
      }
      next = page->next;
    } else {
      absl::StatusOr<std::vector<std::optional<ess::v1::MessageRecord>>> records =
          store_.GetByKeys(request->keys());
      if (!records.ok()) {
        Finish(reactor, Authorizer::Method::kReplay, ToGrpc(records.status()));
        return;
      }
      candidates.reserve(records->size());
      for (size_t i = 0; i < records->size(); ++i) {
        candidates.push_back(
            {.key = request->keys(static_cast<int>(i)), .record = std::move((*records)[i])});
      }
    }
    *response = replayer_->Replay(candidates,
                                  {.dry_run = request->dry_run(),
                                   .requested_by = who,
                                   .reason = request->reason(),
                                   .include_in_flight = request->include_in_flight(),
                                   .deadline = deadline},
                                  store_);
    if (!request->dry_run()) {
      replayed_.fetch_add(response->replayed(), std::memory_order_relaxed);
      replay_skipped_.fetch_add(response->skipped(), std::memory_order_relaxed);
      replay_failed_.fetch_add(response->failed(), std::memory_order_relaxed);
      replay_unconfirmed_.fetch_add(response->unconfirmed(), std::memory_order_relaxed);
    }
    if (next.has_value()) {
      response->set_next_page_token(EncodePageToken(FilterFingerprint(request->filter()), *next));
    }
    Finish(reactor, Authorizer::Method::kReplay, grpc::Status::OK);
  });
  return reactor;
}

}  // namespace ess::replay
