#include "inbound_svc/lane.h"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/bus_headers.h"
#include "common/ids.h"
#include "common/json.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/sv.h"
#include "common/thread_name.h"
#include "google/protobuf/util/time_util.h"

namespace ess::inbound {
namespace {

std::string ErrorBody(std::string_view message) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.StartObject();
  w.Key("error");
  w.String(message.data(), static_cast<rapidjson::SizeType>(message.size()));
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

std::string OkBody(size_t events, size_t duplicates) {
  if (duplicates == 0) return absl::StrCat(R"({"ok":true,"events":)", events, "}");
  return absl::StrCat(R"({"ok":true,"events":)", events, R"(,"duplicates":)", duplicates, "}");
}

// The 503 bodies of a failed store or bus: they tell the partner to retry and nothing of the
// hub's insides (hosts, ports, driver messages), which go to the log instead.
constexpr std::string_view kStoreUnavailable = "replay store unavailable";
constexpr std::string_view kBusUnavailable = "event bus unavailable";
// The same for an adapter that failed a webhook for another reason than its payload.
constexpr std::string_view kAdapterUnavailable = "webhook adapter unavailable";

// `error` (an adapter's text, which may quote the payload) with the values that the payload's
// PII fields hold masked when the payload is JSON, and any `"field": value` of a PII field.
std::string MaskedError(std::string_view error, std::string_view payload) {
  std::string masked = log::MaskJson(error);
  rapidjson::Document doc;
  if (json::Parse(payload, doc).ok()) masked = log::MaskPiiValues(masked, doc);
  return masked;
}

google::protobuf::Timestamp ToProto(absl::Time t) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

}  // namespace

// --- RecentIds -------------------------------------------------------------------------------

namespace {
std::string MemoryKey(std::string_view partner, std::string_view id) {
  std::string key;
  key.reserve(partner.size() + 1 + id.size());
  key.append(partner).push_back('\0');
  key.append(id);
  return key;
}
}  // namespace

Lane::RecentIds::Claim Lane::RecentIds::Take(std::string_view partner, std::string_view id,
                                             absl::Time now) {
  std::string key = MemoryKey(partner, id);
  absl::MutexLock lock(&mu_);
  while (!order_.empty() && order_.front().first + window_ < now) {
    auto it = ids_.find(order_.front().second);
    if (it != ids_.end() && it->second.published && it->second.at + window_ < now) {
      ids_.erase(it);
    }
    order_.pop_front();
  }
  auto [it, inserted] = ids_.try_emplace(std::move(key), Entry{.published = false, .at = now});
  if (inserted) return Claim::kClaimed;
  if (!it->second.published) return Claim::kInProgress;
  if (it->second.at + window_ >= now) return Claim::kPublished;
  it->second = Entry{.published = false, .at = now};  // expired: a new delivery
  return Claim::kClaimed;
}

void Lane::RecentIds::Published(std::string_view partner, std::string_view id, absl::Time at) {
  std::string key = MemoryKey(partner, id);
  absl::MutexLock lock(&mu_);
  ids_[key] = Entry{.published = true, .at = at};
  order_.emplace_back(at, std::move(key));
  // Past the cap the oldest published ids are forgotten here; the store still knows them.
  while (order_.size() > max_published_) {
    auto it = ids_.find(order_.front().second);
    if (it != ids_.end() && it->second.published && it->second.at <= order_.front().first) {
      ids_.erase(it);
    }
    order_.pop_front();
  }
}

void Lane::RecentIds::Release(std::string_view partner, std::string_view id) {
  const std::string key = MemoryKey(partner, id);
  absl::MutexLock lock(&mu_);
  auto it = ids_.find(key);
  if (it != ids_.end() && !it->second.published) ids_.erase(it);
}

// --- Call ------------------------------------------------------------------------------------

// One webhook call in flight. Its events go through two rounds, each of which ends when its
// last answer arrives: claims in the store (idempotency; each recorded RECEIVED), then
// publishes (confirms).
struct Lane::Call {
  std::string partner;
  std::string path;
  std::string payload;
  absl::Time received_at;
  http::Responder responder;
  std::vector<adapters::InboundEvent> events;   // the events this call owns (not duplicates)
  std::vector<std::string> ids;                 // their message ids
  std::vector<ess::v1::ClaimOutcome> outcomes;  // round 1's answers
  absl::Time round_started;                     // when the current round's first request went
  size_t duplicates = 0;
  bool finished = false;

  absl::Mutex mu;
  size_t pending ABSL_GUARDED_BY(mu) = 0;
  absl::Status error ABSL_GUARDED_BY(mu);
  std::vector<bool> confirmed ABSL_GUARDED_BY(mu);  // round 2's answers, per event

  void StartRound(size_t n, bool publishes = false) {
    absl::MutexLock lock(&mu);
    pending = n;
    if (publishes) confirmed.assign(n, false);
  }
  // Counts one answer in (event `confirm`'s publish, when given: OK marks it confirmed); true
  // for the last one of the round, with `*first_error` set to the round's first failure.
  bool Settle(const absl::Status& status, absl::Status* first_error,
              std::optional<size_t> confirm = std::nullopt) {
    absl::MutexLock lock(&mu);
    if (confirm.has_value() && status.ok()) confirmed[*confirm] = true;
    if (!status.ok() && error.ok()) error = status;
    if (--pending > 0) return false;
    *first_error = error;
    return true;
  }

  // Event i's record, without the payload and rendered bytes: only the claim carries them,
  // and later writes of the same key keep them.
  ess::v1::MessageRecord MakeRecord(size_t i, ess::v1::MessageStatus status,
                                    std::string_view error_text) const {
    const adapters::InboundEvent& ev = events[i];
    ess::v1::MessageRecord rec;
    rec.set_direction(ess::v1::DIRECTION_INBOUND);
    rec.set_partner(partner);
    rec.set_correlation_id(ev.correlation_id);
    rec.set_message_id(ids[i]);
    rec.set_event_type(ev.event_type);
    rec.set_status(status);
    rec.set_source(path);
    rec.set_attempts(1);
    rec.set_error(std::string(error_text));
    *rec.mutable_received_at() = ToProto(received_at);
    return rec;
  }
};

Lane::Lane(Options options, std::vector<Route> routes, amqp::Publisher* publisher,
           ReplayRecorder* recorder, AuditSink* audit)
    : options_(std::move(options)),
      publisher_(publisher),
      recorder_(recorder),
      audit_(audit),
      ops_{.metrics = [this] { return Metrics(); }, .readiness = [this] { return NotReady(); }},
      server_(options_.server, [this](http::ServerRequest req,
                                      http::Responder r) { Handle(std::move(req), std::move(r)); }),
      recent_(options_.dedupe_window, options_.dedupe_memory_ids) {
  for (auto& r : routes) {
    std::string path = r.path;
    routes_.emplace(std::move(path), std::move(r));
  }
}

Lane::~Lane() { Stop(); }

absl::Status Lane::Start() {
  if (recorder_ != nullptr && !probe_thread_.joinable()) {
    probe_thread_ = std::thread([this] {
      NameThisThread("ess-store-probe");
      ProbeStore();
    });
  }
  return server_.Start();
}

bool Lane::Drain(absl::Duration timeout) { return server_.Drain(timeout); }

void Lane::Stop() {
  {
    absl::MutexLock lock(&probe_mu_);
    probe_stopping_ = true;
  }
  if (probe_thread_.joinable()) probe_thread_.join();
  server_.Stop();
}

void Lane::ProbeStore() {
  for (;;) {
    // One probe at a time, each bounded by the interval: readiness requests never wait on it.
    const absl::Status s = recorder_->Ping(options_.store_probe_interval);
    store_state_ = s.ok() ? StoreState::kAnswers
                   : absl::IsUnauthenticated(s) || absl::IsPermissionDenied(s)
                       ? StoreState::kRefusesLane
                       : StoreState::kUnreachable;
    absl::MutexLock lock(&probe_mu_);
    auto stopping = [this]() ABSL_SHARED_LOCKS_REQUIRED(probe_mu_) { return probe_stopping_; };
    if (probe_mu_.AwaitWithTimeout(absl::Condition(&stopping), options_.store_probe_interval)) {
      return;
    }
  }
}

ops::NotReady Lane::NotReady() const {
  ops::NotReady not_ready;
  if (publisher_ == nullptr || !publisher_->connected()) {
    not_ready.emplace_back("bus", "not connected");
  } else if (std::optional<std::string> alarm = publisher_->blocked_by(); alarm.has_value()) {
    not_ready.emplace_back("broker_alarm", alarm->empty() ? "blocked" : *std::move(alarm));
  }
  switch (recorder_ == nullptr ? StoreState::kAnswers : store_state_.load()) {
    case StoreState::kAnswers:
      break;
    case StoreState::kUnknown:
      not_ready.emplace_back("store", "not probed yet");
      break;
    case StoreState::kUnreachable:
      not_ready.emplace_back("store", "unreachable");
      break;
    case StoreState::kRefusesLane:
      not_ready.emplace_back("store", "refuses the lane's token");
      break;
  }
  return not_ready;
}

void Lane::LogUnavailable(log::Throttle& throttle, std::string_view cid, std::string_view msg,
                          std::string_view partner, std::string_view error) {
  uint64_t suppressed = 0;
  if (!throttle.Allow(absl::Now(), &suppressed)) return;
  const std::string held = absl::StrCat(suppressed);
  log::Warn(cid, msg, {{"partner", partner}, {"error", error}, {"suppressed_since_last", held}});
}

void Lane::Handle(http::ServerRequest request, http::Responder responder) {
  counters_.requests.fetch_add(1, std::memory_order_relaxed);
  auto reply = [&](int status, std::string_view message) {
    counters_.rejected.fetch_add(1, std::memory_order_relaxed);
    http::ServerResponse resp{.status = status, .body = ErrorBody(message)};
    if (status == 503) resp.headers.emplace_back("Retry-After", "1");
    std::move(responder).Send(std::move(resp));
  };
  auto it = routes_.find(request.path);
  if (it == routes_.end()) {
    if (ops::Answer(ops_, request, responder)) return;
    reply(404, absl::StrCat("no partner serves ", request.path));
    return;
  }
  if (request.method != "POST") {
    counters_.rejected.fetch_add(1, std::memory_order_relaxed);
    std::move(responder).Send(
        {.status = 405, .headers = {{"Allow", "POST"}}, .body = ErrorBody("webhooks take POST")});
    return;
  }
  const Route& route = it->second;
  std::string_view header_cid = request.Header("x-correlation-id");
  if (route.verifier.has_value()) {
    absl::Status auth = route.verifier->Verify(
        request.Header(webhook::kIdHeader), request.Header(webhook::kTimestampHeader),
        request.Header(webhook::kSignatureHeader), request.body, absl::Now());
    if (!auth.ok()) {
      counters_.unauthenticated.fetch_add(1, std::memory_order_relaxed);
      log::Warn(header_cid, "webhook refused: not signed by the partner",
                {{"partner", route.partner}, {"error", ToStd(auth.message())}});
      reply(401, absl::StrCat(route.partner, ": ", auth.message()));
      return;
    }
  }
  absl::StatusOr<std::vector<adapters::InboundEvent>> events =
      route.adapter->Pull({.body = request.body,
                           .content_type = request.Header("content-type"),
                           .correlation_id = header_cid});
  if (!events.ok()) {
    // Only a payload the adapter found wrong is the partner's to fix (400, not retried), and the
    // body says what is wrong with it (a field, a line). Any other failure is ours: the partner
    // keeps the event and retries (503), told nothing more, since the adapter's text can hold
    // its settings or the payload's personal data; that goes to the log, masked and throttled.
    if (events.status().code() == absl::StatusCode::kInvalidArgument) {
      log::Warn(header_cid, "webhook rejected",
                {{"partner", route.partner}, {"error", ToStd(events.status().message())}});
      reply(400, absl::StrCat(route.partner, ": ", events.status().message()));
      return;
    }
    LogUnavailable(adapter_log_, header_cid, "adapter failed the webhook; partner told to retry",
                   route.partner, MaskedError(ToStd(events.status().ToString()), request.body));
    reply(503, kAdapterUnavailable);
    return;
  }

  // The call's own id: the partner's id header where its route names one, else its webhook-id;
  // none: its content. A route with an id header is unsigned (the config's rule), and a
  // webhook-id on its calls is neither what it was configured with nor vouched for.
  const std::string_view id_header =
      route.id_header.empty() ? std::string_view(webhook::kIdHeader) : route.id_header;
  const std::string_view own_id = request.Header(id_header);
  if (!own_id.empty()) {
    if (absl::Status bad = ids::Check(own_id, id_header); !bad.ok()) {
      const std::string error = absl::StrCat("header ", bad.message());
      log::Warn(header_cid, "webhook rejected", {{"partner", route.partner}, {"error", error}});
      reply(400, absl::StrCat(route.partner, ": ", error));
      return;
    }
  }
  const std::string call_id(own_id);

  // Claim each event's id; drop the ones published lately.
  const absl::Time now = absl::Now();
  auto call = std::make_shared<Call>();
  bool in_progress = false;
  for (size_t i = 0; i < events->size(); ++i) {
    adapters::InboundEvent& ev = (*events)[i];
    std::string id = call_id.empty()       ? ids::ContentId(ev.correlation_id, ev.body)
                     : events->size() == 1 ? call_id
                                           : ids::Fit(absl::StrCat(call_id, ":", i));
    switch (recent_.Take(route.partner, id, now)) {
      case RecentIds::Claim::kPublished:
        ++call->duplicates;
        break;
      case RecentIds::Claim::kInProgress:
        in_progress = true;
        break;
      case RecentIds::Claim::kClaimed:
        call->events.push_back(std::move(ev));
        call->ids.push_back(std::move(id));
        break;
    }
  }
  call->partner = route.partner;
  call->path = route.path;
  call->payload = std::move(request.body);
  call->received_at = now;
  call->responder = std::move(responder);
  counters_.duplicates.fetch_add(call->duplicates, std::memory_order_relaxed);
  if (in_progress) {
    counters_.rejected.fetch_add(1, std::memory_order_relaxed);
    Finish(*call, 503, ErrorBody("a delivery with the same id is in progress"));
    return;
  }
  if (call->events.empty()) {
    Finish(*call, 200, OkBody(0, call->duplicates));
    return;
  }
  // Round 1: claim the ids in the store, which records each event RECEIVED unless it was
  // published lately (another replica, or before a restart) or is being published right now.
  const size_t n = call->events.size();
  call->outcomes.assign(n, ess::v1::CLAIM_OUTCOME_UNSPECIFIED);
  call->StartRound(n);
  const uint32_t window_seconds =
      static_cast<uint32_t>(absl::ToInt64Seconds(options_.dedupe_window));
  const uint32_t lease_ms = static_cast<uint32_t>(absl::ToInt64Milliseconds(options_.claim_lease));
  std::vector<ess::v1::Claim> claims(n);
  for (size_t i = 0; i < n; ++i) {
    *claims[i].mutable_record() = call->MakeRecord(i, ess::v1::MESSAGE_STATUS_RECEIVED, "");
    claims[i].mutable_record()->set_payload(call->payload);
    claims[i].mutable_record()->set_rendered(call->events[i].body);
    claims[i].set_window_seconds(window_seconds);
    claims[i].set_lease_ms(lease_ms);
  }
  // From the first claim on, the answers run on the recorder's threads, and the last one moves
  // on to OnClaimed, which rewrites `call->events`: nothing below may read `call`'s fields.
  call->round_started = absl::Now();
  for (size_t i = 0; i < n; ++i) {
    recorder_->Claim(
        std::move(claims[i]), [this, call, i](absl::StatusOr<ess::v1::ClaimOutcome> outcome) {
          absl::Status status;
          if (outcome.ok()) {
            call->outcomes[i] = *outcome;
          } else {
            status = absl::Status(outcome.status().code(),
                                  absl::StrCat("replay store: ", outcome.status().message()));
          }
          absl::Status error;
          if (call->Settle(status, &error)) OnClaimed(call, error);
        });
  }
}

void Lane::OnClaimed(std::shared_ptr<Call> call, const absl::Status& error) {
  const absl::Duration claim_took = absl::Now() - call->round_started;
  claim_seconds_.Observe(claim_took);
  if (error.ok()) {
    // What the store holds for someone else is not this call's to publish.
    bool in_progress = false;
    std::vector<adapters::InboundEvent> claimed;
    std::vector<std::string> claimed_ids;
    for (size_t i = 0; i < call->events.size(); ++i) {
      switch (call->outcomes[i]) {
        case ess::v1::CLAIM_OUTCOME_CLAIMED:
          claimed.push_back(std::move(call->events[i]));
          claimed_ids.push_back(std::move(call->ids[i]));
          break;
        case ess::v1::CLAIM_OUTCOME_PUBLISHED:
          ++call->duplicates;
          counters_.duplicates.fetch_add(1, std::memory_order_relaxed);
          recent_.Published(call->partner, call->ids[i], call->received_at);
          break;
        default:  // another call holds the id's lease
          in_progress = true;
          recent_.Release(call->partner, call->ids[i]);
          break;
      }
    }
    call->events = std::move(claimed);
    call->ids = std::move(claimed_ids);
    if (in_progress) {
      counters_.rejected.fetch_add(1, std::memory_order_relaxed);
      Release(*call, "a delivery with the same id is in progress");
      Finish(*call, 503, ErrorBody("a delivery with the same id is in progress"));
      return;
    }
  } else {
    // The claims may or may not be stored; unreleased, their lease runs out.
    counters_.unavailable.fetch_add(1, std::memory_order_relaxed);
    LogUnavailable(store_log_, call->events.front().correlation_id,
                   "replay store failed the claim; partner told to retry", call->partner,
                   ToStd(error.message()));
    Finish(*call, 503, ErrorBody(kStoreUnavailable), nullptr, ErrorBody(ToStd(error.message())));
    return;
  }
  if (call->events.empty()) {
    Finish(*call, 200, OkBody(0, call->duplicates));
    return;
  }
  if (claim_took > options_.claim_lease / 2) {
    // Too little of the lease is left for the publish and its confirm: past it, a retry through
    // another replica could publish the same id too. The partner retries; the claims go back.
    counters_.unavailable.fetch_add(1, std::memory_order_relaxed);
    const std::string reason = absl::StrCat("replay store answered the claim after ",
                                            absl::FormatDuration(claim_took), "; try again");
    log::Warn(call->events.front().correlation_id, "claim answered too late; not published",
              {{"partner", call->partner}, {"error", reason}});
    Release(*call, reason);
    Finish(*call, 503, ErrorBody(reason));
    return;
  }
  // Round 2: publish the claimed events; the 200 waits for every confirm.
  const size_t n = call->events.size();
  call->StartRound(n, /*publishes=*/true);
  std::vector<amqp::Message> messages(n);
  for (size_t i = 0; i < n; ++i) {
    const adapters::InboundEvent& ev = call->events[i];
    amqp::Message& msg = messages[i];
    msg.body = ev.body;
    msg.correlation_id = ev.correlation_id;
    msg.message_id = call->ids[i];
    msg.type = ev.event_type;
    msg.headers.emplace_back(bus::kPartnerHeader, call->partner);
  }
  // As with the claims: once the first publish is out, `call` belongs to the confirms.
  call->round_started = absl::Now();
  for (size_t i = 0; i < n; ++i) {
    publisher_->Publish(options_.events_exchange, "", std::move(messages[i]),
                        [this, call, i](absl::Status s) { OnPublished(call, i, s); });
  }
}

void Lane::OnPublished(std::shared_ptr<Call> call, size_t i, const absl::Status& status) {
  absl::Status error;
  if (!call->Settle(status, &error, i)) return;
  const absl::Time now = absl::Now();
  publish_seconds_.Observe(now - call->round_started);
  if (!error.ok()) {
    counters_.unavailable.fetch_add(1, std::memory_order_relaxed);
    LogUnavailable(bus_log_, call->events.front().correlation_id,
                   "publish failed; partner told to retry", call->partner, ToStd(error.message()));
    const std::string reason = absl::StrCat("event bus: ", error.message());
    std::vector<bool> confirmed;
    {
      absl::MutexLock lock(&call->mu);  // every answer is in: nobody writes it any more
      confirmed = std::move(call->confirmed);
    }
    // The events the broker did confirm are on the bus: recorded PUBLISHED, so that the
    // partner's retry publishes only the others. Those go back, FAILED.
    for (size_t k = 0; k < confirmed.size(); ++k) {
      if (!confirmed[k]) continue;
      counters_.published.fetch_add(1, std::memory_order_relaxed);
      recent_.Published(call->partner, call->ids[k], now);
      RecordPublished(*call, k);
    }
    Release(*call, reason, &confirmed);
    Finish(*call, 503, ErrorBody(kBusUnavailable), &confirmed, ErrorBody(reason));
    return;
  }
  for (const std::string& id : call->ids) recent_.Published(call->partner, id, now);
  counters_.published.fetch_add(call->events.size(), std::memory_order_relaxed);
  log::Info(call->events.front().correlation_id, "published",
            {{"partner", call->partner},
             {"type", call->events.front().event_type},
             {"events", absl::StrCat(call->events.size())}});
  Finish(*call, 200, OkBody(call->events.size(), call->duplicates));
  for (size_t k = 0; k < call->events.size(); ++k) RecordPublished(*call, k);
}

void Lane::RecordPublished(const Call& call, size_t i) {
  // The claim (RECEIVED) was stored before the publish, so this write always lands after it.
  recorder_->Record(
      call.MakeRecord(i, ess::v1::MESSAGE_STATUS_PUBLISHED, ""),
      [this, cid = call.events[i].correlation_id, partner = call.partner](absl::Status s) {
        if (s.ok()) return;
        counters_.unrecorded.fetch_add(1, std::memory_order_relaxed);
        log::Warn(cid, "published event stays RECEIVED in the replay store",
                  {{"partner", partner}, {"error", ToStd(s.message())}});
      });
}

void Lane::Release(const Call& call, std::string_view reason, const std::vector<bool>* published) {
  for (size_t i = 0; i < call.events.size(); ++i) {
    if (published != nullptr && (*published)[i]) continue;
    recorder_->Record(call.MakeRecord(i, ess::v1::MESSAGE_STATUS_FAILED, reason),
                      [](absl::Status) {});
  }
}

void Lane::Finish(Call& call, int status, std::string body, const std::vector<bool>* published,
                  std::string_view audit_error) {
  if (status != 200) {
    // Release leaves published ids alone: those a partial failure published stay remembered.
    for (const std::string& id : call.ids) recent_.Release(call.partner, id);
  }
  // One audit event per event of the call: published (all of a 200, or those `published` says),
  // or failed with the answer's reason.
  if (audit_ != nullptr && audit_->enabled()) {
    for (size_t i = 0; i < call.events.size() && i < call.ids.size(); ++i) {
      const adapters::InboundEvent& ev = call.events[i];
      const bool ok = status == 200 || (published != nullptr && (*published)[i]);
      audit_->Emit(AuditSink::Make(
          ess::v1::DIRECTION_INBOUND, call.partner, ev.correlation_id, call.ids[i], ev.event_type,
          ok ? ess::v1::MESSAGE_STATUS_PUBLISHED : ess::v1::MESSAGE_STATUS_FAILED,
          ok                    ? std::string_view()
          : audit_error.empty() ? std::string_view(body)
                                : audit_error,
          1, call.received_at, false));
    }
  }
  http::ServerResponse resp{.status = status, .body = std::move(body)};
  if (status == 503) resp.headers.emplace_back("Retry-After", "1");
  // Observed before the answer goes: a client that reads /metrics right after its answer must
  // find the call counted (the server may write the answer before this thread runs on).
  call_seconds_.Observe(absl::Now() - call.received_at);
  std::move(call.responder).Send(std::move(resp));
}

std::vector<prometheus::MetricFamily> Lane::Metrics() const {
  prometheus::MetricFamily events = metrics::Family(
      "ess_inbound_events_total",
      "Internal events from webhooks, by outcome: published (confirmed on the bus, answered "
      "200) or duplicate (a repeat within the dedupe window: answered 200, not published).",
      prometheus::MetricType::Counter);
  metrics::AddSample(events, {{"outcome", "published"}}, counters_.published.load());
  metrics::AddSample(events, {{"outcome", "duplicate"}}, counters_.duplicates.load());
  prometheus::MetricFamily refused = metrics::Family(
      "ess_inbound_refused_total",
      "Calls not taken, by reason: rejected (answered 4xx: 400, 401, 404 or 405; or 503 while "
      "the same id is being published), of which unauthenticated (401: not signed by the "
      "partner), and unavailable (503: the bus or the store is down; the partner retries).",
      prometheus::MetricType::Counter);
  metrics::AddSample(refused, {{"reason", "rejected"}}, counters_.rejected.load());
  metrics::AddSample(refused, {{"reason", "unauthenticated"}}, counters_.unauthenticated.load());
  metrics::AddSample(refused, {{"reason", "unavailable"}}, counters_.unavailable.load());
  prometheus::MetricFamily stages = metrics::Family(
      "ess_inbound_stage_seconds",
      "Time of a webhook's rounds: claim (its ids claimed in the replay store, first request to "
      "last answer) and publish (its events published, first publish to last broker confirm).",
      prometheus::MetricType::Histogram);
  claim_seconds_.AddTo(stages, {{"stage", "claim"}});
  publish_seconds_.AddTo(stages, {{"stage", "publish"}});
  prometheus::MetricFamily calls = metrics::Family(
      "ess_inbound_webhook_seconds",
      "Time from a webhook's events being taken (the request read, verified and mapped) to its "
      "answer (200, or 503 when the store or the bus failed it).",
      prometheus::MetricType::Histogram);
  call_seconds_.AddTo(calls, {});
  std::vector<prometheus::MetricFamily> families;
  families.push_back(std::move(events));
  families.push_back(std::move(refused));
  families.push_back(std::move(stages));
  families.push_back(std::move(calls));
  if (recorder_ != nullptr) {
    for (prometheus::MetricFamily& f : recorder_->Metrics()) families.push_back(std::move(f));
  }
  if (audit_ != nullptr) {
    for (prometheus::MetricFamily& f : audit_->Metrics()) families.push_back(std::move(f));
  }
  if (options_.more_metrics) {
    for (prometheus::MetricFamily& f : options_.more_metrics()) families.push_back(std::move(f));
  }
  families.push_back(metrics::Single("ess_inbound_requests_total",
                                     "HTTP requests received (health checks and scrapes included).",
                                     prometheus::MetricType::Counter, counters_.requests.load()));
  families.push_back(metrics::Single(
      "ess_inbound_http_connections",
      "HTTP connections open now (inbound.max_connections at most: at the cap new ones wait).",
      prometheus::MetricType::Gauge, static_cast<double>(server_.connections())));
  families.push_back(metrics::Single(
      "ess_inbound_broker_blocked",
      "1 while the broker blocks the lane's publisher with a resource alarm (memory or disk): "
      "webhooks are answered 503 and /readyz names the alarm until it clears.",
      prometheus::MetricType::Gauge,
      publisher_ != nullptr && publisher_->blocked_by().has_value() ? 1 : 0));
  families.push_back(metrics::Single(
      "ess_inbound_unrecorded_total",
      "Webhooks published and answered 200 whose PUBLISHED record failed (the store still says "
      "RECEIVED).",
      prometheus::MetricType::Counter, counters_.unrecorded.load()));
  return families;
}

}  // namespace ess::inbound
