#include "outbound_svc/lane.h"

#include <rapidjson/document.h>

#include <algorithm>
#include <deque>
#include <optional>
#include <string>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "adapters/http_status.h"
#include "common/ids.h"
#include "common/json.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/sv.h"
#include "common/thread_name.h"
#include "common/utf8.h"
#include "google/protobuf/util/time_util.h"

namespace ess::outbound {
namespace {

using ess::v1::MessageStatus;

// The history header keeps the last few attempts; older ones are dropped. Each attempt's
// error is cut to kMaxHistoryEntryBytes first, so that one long error leaves room for others.
constexpr size_t kMaxHistoryBytes = 2048;
constexpr size_t kMaxHistoryEntryBytes = 512;
// A partner's or adapter's error text in x-ess-reason is cut (on a character boundary, marked)
// to this; to kShortReasonBytes, with the history dropped, when the event's own headers leave
// no room for them in a frame (FitForMove).
constexpr size_t kMaxReasonBytes = 2048;
constexpr size_t kShortReasonBytes = 256;
// A failed push's error text (in the log, the record, the audit event) is cut to this, after
// its personal values are masked: masked first, no value is split by the cut and left half
// visible.
constexpr size_t kMaxErrorBytes = 4096;
// A half-open breaker's probe takes one message at a time (lane.h).
constexpr uint16_t kProbePrefetch = 1;
// How long a partner's queue stays paused after a move failed: doubling from the first to the
// last while moves keep failing, back to the first once one goes out.
constexpr absl::Duration kFirstMoveHold = absl::Milliseconds(250);
constexpr absl::Duration kLastMoveHold = absl::Seconds(5);

void SetHeader(amqp::Headers& headers, std::string_view key, std::string value) {
  for (auto& [k, v] : headers) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  headers.emplace_back(std::string(key), std::move(value));
}

void EraseHeader(amqp::Headers& headers, std::string_view key) {
  std::erase_if(headers, [&](const auto& kv) { return kv.first == key; });
}

std::string_view FindHeader(const amqp::Headers& headers, std::string_view key) {
  for (const auto& [k, v] : headers) {
    if (k == key) return v;
  }
  return {};
}

template <typename T>
bool HeaderNumber(const amqp::Headers& headers, std::string_view key, T* out) {
  std::string_view v = FindHeader(headers, key);
  return !v.empty() && absl::SimpleAtoi(ToAbsl(v), out);
}

google::protobuf::Timestamp ToProto(absl::Time t) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

// "attempt 2 at 2026-11-27T21:14:48Z: UNAVAILABLE: partner answered HTTP 503"
std::string HistoryEntry(uint32_t attempt, const absl::Status& status) {
  return absl::StrCat("attempt ", attempt, " at ",
                      absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone()),
                      ": ", utf8::Cut(status.ToString(), kMaxHistoryEntryBytes));
}

void AppendHistory(amqp::Headers& headers, uint32_t attempt, const absl::Status& status) {
  std::string history(FindHeader(headers, kHistoryHeader));
  if (!history.empty()) history.append("; ");
  history.append(HistoryEntry(attempt, status));
  SetHeader(headers, kHistoryHeader, utf8::KeepTail(std::move(history), kMaxHistoryBytes));
}

// x-ess-reason: the error's text, cut to kMaxReasonBytes.
void SetReason(amqp::Headers& headers, const absl::Status& reason) {
  SetHeader(headers, kReasonHeader, utf8::Cut(std::string(reason.message()), kMaxReasonBytes));
}

// Makes `msg` fit a frame of `frame_max` bytes for its move to `queue` (amqp::CheckPublishable):
// as it is; else with x-ess-history dropped and x-ess-reason cut to kShortReasonBytes; else
// without x-ess-reason. The event's own headers are never touched. OK if it fits now, with
// `*trimmed` set if the lane's headers were cut; else the refusal (the event's own headers
// leave no room for the lane's).
absl::Status FitForMove(amqp::Message& msg, std::string_view queue, size_t frame_max,
                        bool* trimmed) {
  *trimmed = false;
  absl::Status fits = amqp::CheckPublishable("", queue, msg, frame_max);
  if (!absl::IsInvalidArgument(fits)) return fits;
  *trimmed = true;
  EraseHeader(msg.headers, kHistoryHeader);
  for (auto& [k, v] : msg.headers) {
    if (k == kReasonHeader) v = utf8::Cut(std::move(v), kShortReasonBytes);
  }
  fits = amqp::CheckPublishable("", queue, msg, frame_max);
  if (!absl::IsInvalidArgument(fits)) return fits;
  EraseHeader(msg.headers, kReasonHeader);
  return amqp::CheckPublishable("", queue, msg, frame_max);
}

// The message id of a confirmation a delivery's answer carried: the delivery's own message id
// and the event type, so that each update of a visit has its own, and a redelivery of the same
// delivery keeps it; through ids::Fit, since an AMQP message id holds 255 bytes.
std::string ConfirmationId(std::string_view delivery_message_id, std::string_view event_type) {
  return ids::Fit(absl::StrCat(ToAbsl(delivery_message_id), ":", ToAbsl(event_type)));
}

// Whether a failed record call says the store cannot take this lane's records now, whichever
// they are (it is down, overloaded or failing, or refuses this lane's token): the lane pauses
// until a probe passes. The rest (INVALID_ARGUMENT) is about the record itself.
bool StoreUnusable(const absl::Status& s) {
  return !s.ok() && s.code() != absl::StatusCode::kInvalidArgument;
}

}  // namespace

absl::Status ExplainStartError(absl::Status start, const ess::v1::BusConfig& bus) {
  if (start.ok() || !absl::StrContains(start.message(), "PRECONDITION_FAILED - inequivalent arg")) {
    return start;
  }
  const std::string settings =
      bus.quorum_queues()
          ? absl::StrCat("bus.quorum_queues: true, bus.delivery_limit: ", bus.delivery_limit())
          : std::string("bus.quorum_queues: false");
  return absl::Status(
      start.code(),
      absl::StrCat(start.message(),
                   " -- the queue was declared with other arguments than this config gives it (",
                   settings,
                   "), and a queue's arguments cannot change: let the lane drain the partner's "
                   "work and parked queues with the old settings, delete them, then start it "
                   "with the new ones (README, Delivery guarantees)"));
}

amqp::Topology OutboundTopology(const ess::v1::HubConfig& config) {
  amqp::Topology t;
  const auto& bus = config.bus();
  for (const auto& p : config.partners()) {
    if (!p.has_outbound()) continue;
    const std::string& q = p.outbound().queue();
    amqp::QueueSpec work{.name = q};
    amqp::QueueSpec parked{.name = ParkedQueueName(q)};
    if (bus.quorum_queues()) {
      // A message redelivered delivery_limit times (a lane crashing on it) is parked by the
      // broker instead of looping.
      work.string_args = {{"x-queue-type", "quorum"},
                          {"x-dead-letter-exchange", ""},
                          {"x-dead-letter-routing-key", ParkedQueueName(q)}};
      work.int_args = {{"x-delivery-limit", bus.delivery_limit()}};
      parked.string_args = {{"x-queue-type", "quorum"}};
    }
    t.queues.push_back(std::move(work));
    t.queues.push_back(std::move(parked));
    for (uint32_t delay : RetryDelaysMs(p.outbound().retry())) {
      t.queues.push_back(
          {.name = RetryQueueName(q, delay),
           .string_args = {{"x-dead-letter-exchange", ""}, {"x-dead-letter-routing-key", q}},
           .int_args = {{"x-message-ttl", delay}}});
    }
  }
  return t;
}

struct Lane::Job final : adapters::SendNote {
  // An adapter that sends the event later, in a unit with others, notes where it goes first.
  void BeforeSend(std::string where, ReplayRecorder::Done done) override {
    lane->NoteBeforeSend(*partner, *this, std::move(where), std::move(done));
  }

  Lane* lane = nullptr;  // set with `partner` by Dispatch, for BeforeSend
  PartnerState* partner = nullptr;
  amqp::Delivery delivery;
  // Small chunks: events are small, and hundreds of jobs are alive at once.
  rapidjson::MemoryPoolAllocator<> pool{1024};
  rapidjson::Document event{&pool};
  std::vector<MappedField> fields;
  std::string_view correlation_id;  // into `event` or `delivery`
  std::string_view event_type;
  std::string_view message_id;  // into `delivery`, or `own_message_id`
  // The message id the lane makes when the publisher set none: the event's id and a hash of
  // the body, so that a redelivery keeps its id and a different update of the same id does not
  // share it.
  std::string own_message_id;
  // Stand-ins for ids the hub cannot carry (see UsableIds).
  std::string own_correlation_id;
  std::string own_event_type;
  uint32_t attempt = 1;
  absl::Time received_at;
};

struct Lane::PartnerState {
  enum class Breaker { kClosed, kOpen, kHalfOpen };

  Partner partner;
  std::vector<uint32_t> delays_ms;
  absl::Mutex mu;
  uint32_t in_flight ABSL_GUARDED_BY(mu) = 0;
  std::deque<std::unique_ptr<Job>> waiting ABSL_GUARDED_BY(mu);
  Breaker breaker ABSL_GUARDED_BY(mu) = Breaker::kClosed;
  std::deque<bool> outcomes ABSL_GUARDED_BY(mu);  // true = failed, newest last
  uint32_t failures ABSL_GUARDED_BY(mu) = 0;      // in `outcomes`
  absl::Duration open_for ABSL_GUARDED_BY(mu);
  absl::Time probe_at ABSL_GUARDED_BY(mu) = absl::InfiniteFuture();
  bool probing ABSL_GUARDED_BY(mu) = false;
  // A move of one of its messages failed (HoldForMoves): the queue stays paused until
  // `moves_retry_at` and the publisher is connected.
  bool moves_held ABSL_GUARDED_BY(mu) = false;
  absl::Time moves_retry_at ABSL_GUARDED_BY(mu) = absl::InfiniteFuture();
  absl::Duration move_hold ABSL_GUARDED_BY(mu) = kFirstMoveHold;  // the next hold's length
  // Outcomes settled, for the metrics.
  std::atomic<uint64_t> delivered{0}, dry_run{0}, retried{0}, parked{0};
};

Lane::Lane(Options options, amqp::Topology topology, std::vector<Partner> partners,
           ReplayRecorder* recorder, AuditSink* audit)
    : options_(std::move(options)), recorder_(recorder), audit_(audit) {
  amqp::ConnectionOptions publishing = options_.connection;
  publishing.connection_name = absl::StrCat(options_.connection.connection_name, "-publisher");
  publisher_ = std::make_unique<amqp::Publisher>(amqp::Publisher::Options{
      .connection = std::move(publishing),
      .topology = {.exchanges = {{.name = options_.events_exchange, .type = "fanout"}}},
      .hold_while_blocked = true});
  amqp::Consumer::Options copts{.connection = options_.connection,
                                .topology = std::move(topology),
                                .prefetch = options_.prefetch};
  for (auto& p : partners) {
    auto state = std::make_unique<PartnerState>();
    state->delays_ms = RetryDelaysMs(p.route.retry());
    copts.queues.push_back(p.route.queue());
    by_queue_[p.route.queue()] = state.get();
    {
      absl::MutexLock lock(&state->mu);
      state->open_for = absl::Milliseconds(p.route.circuit_breaker().open_ms());
    }
    state->partner = std::move(p);
    partners_.push_back(std::move(state));
  }
  consumer_ = std::make_unique<amqp::Consumer>(std::move(copts),
                                               [this](amqp::Delivery d) { Handle(std::move(d)); });
}

Lane::~Lane() { Shutdown(absl::ZeroDuration()); }

absl::Status Lane::Start() {
  // Both keep connecting in the background: the consumer's answer is the one that matters.
  if (absl::Status s = publisher_->Start(); !s.ok()) {
    log::Warn("", "event bus not reachable yet", {{"error", ToStd(s.message())}});
  }
  absl::Status s = consumer_->Start();
  supervisor_ = std::thread([this] {
    NameThisThread("ess-supervisor");
    Supervise();
  });
  return s;
}

void Lane::Shutdown(absl::Duration deadline) {
  if (draining_.exchange(true)) return;
  for (const auto& p : partners_) {
    absl::MutexLock lock(&p->mu);  // after any breaker's wish of consumption (NoteOutcome)
    consumer_->Pause(p->partner.route.queue());
  }
  const absl::Time until = absl::Now() + deadline;
  while (live_.load() > 0 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(5));
  if (live_.load() > 0) {
    log::Warn("", "shutdown deadline passed; unfinished messages return to their queues",
              {{"unfinished", absl::StrCat(live_.load())}});
  }
  // What an adapter still holds (a batch not yet due) comes back now, while the consumer can
  // still settle it: after the consumer stops, the broker requeues the rest.
  for (const auto& p : partners_) p->partner.adapter->Stop();
  {
    absl::MutexLock lock(&supervisor_mu_);
    stop_supervisor_ = true;
  }
  if (supervisor_.joinable()) supervisor_.join();
  // Moves and confirmations not yet confirmed fail now, and their deliveries are requeued.
  publisher_->Stop();
  consumer_->Stop();  // sends the acks settled so far; the broker requeues the rest
}

// --- settlement ------------------------------------------------------------------------------

void Lane::Ack(Job& job) {
  consumer_->Ack(job.delivery.delivery_tag);
  live_.fetch_sub(1);
}

void Lane::Requeue(Job& job) {
  counters_.requeued.fetch_add(1, std::memory_order_relaxed);
  consumer_->Reject(job.delivery.delivery_tag, /*requeue=*/true);
  live_.fetch_sub(1);
}

void Lane::MoveAndAck(PartnerState& p, Job& job, std::string queue, amqp::Message message) {
  // The job's own ids may point into the message, which has moved: log with the message's.
  std::string correlation_id =
      message.correlation_id.empty() ? message.message_id : message.correlation_id;
  // A message the publisher would refuse for its size is particular to itself: it must not hold
  // the partner's queue (HoldForMoves) in a loop. The lane's own headers give way first.
  bool trimmed = false;
  if (absl::Status fits = FitForMove(message, queue, publisher_->frame_max(), &trimmed);
      !fits.ok()) {
    // The event's own headers leave no room for the lane's (they nearly fill a frame): it
    // cannot be moved, and must not be acked without its move. Back to its queue, held as a
    // failed move is (README, Known limits).
    log::Error(correlation_id, "move refused: the event's own headers leave no room; requeued",
               {{"queue", queue}, {"error", ToStd(fits.message())}});
    counters_.requeued.fetch_add(1, std::memory_order_relaxed);
    consumer_->Reject(job.delivery.delivery_tag, /*requeue=*/true);
    HoldForMoves(p, fits);
    live_.fetch_sub(1);
    return;
  }
  if (trimmed) {
    log::Warn(correlation_id,
              "the event's own headers leave little room: x-ess-history dropped and "
              "x-ess-reason cut for its move",
              {{"queue", queue}});
  }
  publisher_->Publish(
      "", queue, std::move(message),
      [this, &p, tag = job.delivery.delivery_tag, queue, correlation_id](absl::Status s) {
        if (s.ok()) {
          consumer_->Ack(tag);
          absl::MutexLock lock(&p.mu);
          p.move_hold = kFirstMoveHold;
        } else {
          log::Warn(correlation_id, "move not published; delivery requeued",
                    {{"queue", queue}, {"error", ToStd(s.message())}});
          counters_.requeued.fetch_add(1, std::memory_order_relaxed);
          consumer_->Reject(tag, /*requeue=*/true);
          HoldForMoves(p, s);
        }
        live_.fetch_sub(1);
      });
}

void Lane::HoldForMoves(PartnerState& p, const absl::Status& why) {
  absl::Duration hold;
  {
    absl::MutexLock lock(&p.mu);
    if (p.moves_held) return;
    p.moves_held = true;
    hold = p.move_hold;
    p.moves_retry_at = absl::Now() + hold;
    p.move_hold = std::min(2 * hold, kLastMoveHold);
    consumer_->Pause(p.partner.route.queue());
  }
  log::Warn("", "a move to a delay or parked queue failed: the partner's queue is paused",
            {{"partner", p.partner.name},
             {"retry_in_ms", absl::StrCat(absl::ToInt64Milliseconds(hold))},
             {"publisher_connected", publisher_->connected() ? "true" : "false"},
             {"error", ToStd(why.message())}});
}

bool Lane::ResumeLocked(PartnerState& p) {
  if (store_paused_.load() || draining_.load() || p.moves_held) return false;
  if (p.breaker == PartnerState::Breaker::kClosed) {
    consumer_->Resume(p.partner.route.queue());
  } else if (p.breaker == PartnerState::Breaker::kHalfOpen) {
    consumer_->Resume(p.partner.route.queue(), kProbePrefetch);
  } else {
    return false;
  }
  return true;
}

// --- intake ----------------------------------------------------------------------------------

void Lane::Handle(amqp::Delivery delivery) {
  live_.fetch_add(1);
  counters_.received.fetch_add(1, std::memory_order_relaxed);
  auto job = std::make_unique<Job>();
  job->received_at = absl::Now();
  job->delivery = std::move(delivery);
  auto it = by_queue_.find(job->delivery.queue);
  if (it == by_queue_.end() || draining_.load() || store_paused_.load()) {
    // Stragglers sent before a pause (or a queue we do not serve): back to the broker.
    Requeue(*job);
    return;
  }
  PartnerState& p = *it->second;
  const amqp::Message& msg = job->delivery.message;
  uint32_t attempt = 1;
  if (HeaderNumber(msg.headers, kAttemptHeader, &attempt)) job->attempt = std::max(attempt, 1u);
  // The correlation id: the event's "id"; the AMQP properties when the body cannot tell.
  job->correlation_id = !msg.correlation_id.empty() ? std::string_view(msg.correlation_id)
                                                    : std::string_view(msg.message_id);
  job->event_type = msg.type;

  absl::Status s =
      msg.body.size() > options_.max_event_bytes
          ? absl::InvalidArgumentError(absl::StrCat("event of ", msg.body.size(),
                                                    " bytes, over outbound.max_event_bytes (",
                                                    options_.max_event_bytes, ")"))
          : json::Parse(msg.body, job->event);
  if (s.ok()) {
    std::string_view id = json::GetString(job->event, "id");
    if (!id.empty()) job->correlation_id = id;
    std::string_view type = json::GetString(job->event, "type");
    if (!type.empty()) job->event_type = type;
    s = p.partner.mapper.Apply(job->event, &job->fields);
  }
  if (!msg.message_id.empty()) {
    job->message_id = msg.message_id;
  } else {
    job->own_message_id = ids::ContentId(job->correlation_id, msg.body);
    job->message_id = job->own_message_id;
  }
  // An event that tells nothing about itself is known by that id in the logs and the store.
  if (job->correlation_id.empty()) job->correlation_id = job->message_id;
  if (absl::Status usable = UsableIds(*job); s.ok()) s = std::move(usable);
  if (!s.ok()) {
    Park(p, std::move(job), s);
    return;
  }
  if (!job->delivery.redelivered || !FindHeader(msg.headers, kReplayHeader).empty()) {
    Enqueue(p, std::move(job));
    return;
  }
  // Redelivered: the lane may have delivered it before a crash. Ask the store.
  ess::v1::RecordKey key;
  key.set_direction(ess::v1::DIRECTION_OUTBOUND);
  key.set_partner(p.partner.name);
  key.set_message_id(std::string(job->message_id));
  Job* raw = job.release();
  recorder_->Lookup(key, [this, &p, raw](absl::StatusOr<ess::v1::MessageRecord> rec) {
    std::unique_ptr<Job> owned(raw);
    if (rec.ok() && rec->status() == ess::v1::MESSAGE_STATUS_DELIVERED &&
        rec->payload() == owned->delivery.message.body) {
      counters_.duplicates.fetch_add(1, std::memory_order_relaxed);
      log::Info(owned->correlation_id, "redelivered but already delivered; acked without a push",
                {{"partner", p.partner.name}});
      Ack(*owned);
      return;
    }
    if (!rec.ok() && rec.status().code() != absl::StatusCode::kNotFound) {
      PauseForStore(rec.status());
      Requeue(*owned);
      return;
    }
    amqp::Headers& headers = owned->delivery.message.headers;
    if (rec.ok() && !rec->maybe_delivered_as().empty() &&
        (rec->status() == ess::v1::MESSAGE_STATUS_RECEIVED ||
         rec->status() == ess::v1::MESSAGE_STATUS_FAILED ||
         rec->status() == ess::v1::MESSAGE_STATUS_DEAD) &&
        rec->payload() == owned->delivery.message.body &&
        FindHeader(headers, kMaybeDeliveredAsHeader).empty()) {
      // A push that may have landed: a lane that died while it sent the event in a file
      // (RECEIVED, noted before the upload), or whose move to the delay (or parked) queue
      // failed after a push of unknown outcome. The message came back as it was, and only its
      // record says where to look first.
      SetHeader(headers, kMaybeDeliveredAsHeader, rec->maybe_delivered_as());
    }
    if (rec.ok() && rec->status() == ess::v1::MESSAGE_STATUS_DEAD &&
        rec->payload() == owned->delivery.message.body) {
      // Given up on already (its move to the parked queue failed, or its ack was lost): parked
      // again as decided, without pushing it to the partner once more.
      log::Info(owned->correlation_id, "redelivered after it was given up on; parked again",
                {{"partner", p.partner.name}});
      Park(p, std::move(owned), absl::AbortedError(rec->error()));
      return;
    }
    Enqueue(p, std::move(owned));
  });
}

void Lane::Enqueue(PartnerState& p, std::unique_ptr<Job> job) {
  {
    absl::MutexLock lock(&p.mu);
    p.waiting.push_back(std::move(job));
  }
  Pump(p);
}

void Lane::Pump(PartnerState& p) {
  std::vector<std::unique_ptr<Job>> send, back;
  {
    absl::MutexLock lock(&p.mu);
    using B = PartnerState::Breaker;
    if (store_paused_.load() || draining_.load() || p.moves_held || p.breaker == B::kOpen) {
      while (!p.waiting.empty()) {
        back.push_back(std::move(p.waiting.front()));
        p.waiting.pop_front();
      }
    } else if (p.breaker == B::kHalfOpen) {
      // One probe at a time; the rest wait for its outcome.
      if (!p.probing && p.in_flight == 0 && !p.waiting.empty()) {
        p.probing = true;
        ++p.in_flight;
        send.push_back(std::move(p.waiting.front()));
        p.waiting.pop_front();
      }
    } else {
      while (!p.waiting.empty() && p.in_flight < p.partner.route.max_in_flight()) {
        ++p.in_flight;
        send.push_back(std::move(p.waiting.front()));
        p.waiting.pop_front();
      }
    }
  }
  for (auto& job : back) Requeue(*job);
  for (auto& job : send) Dispatch(p, std::move(job));
}

void Lane::Dispatch(PartnerState& p, std::unique_ptr<Job> job) {
  adapters::PushRequest req{
      .correlation_id = job->correlation_id,
      .message_id = job->message_id,
      .event_type = job->event_type,
      .fields = job->fields,
      .attempt = job->attempt,
      .dry_run = options_.dry_run,
      .maybe_delivered_as = FindHeader(job->delivery.message.headers, kMaybeDeliveredAsHeader),
      .note = options_.dry_run ? nullptr : job.get()};
  job->lane = this;
  job->partner = &p;
  Job* raw = job.release();  // owned by the callback from here on
  p.partner.adapter->Push(req, [this, &p, raw](adapters::PushResult result) {
    OnPushed(p, std::unique_ptr<Job>(raw), std::move(result));
  });
}

// --- outcomes --------------------------------------------------------------------------------

bool Lane::NoteOutcome(PartnerState& p, bool failed, bool counts) {
  const auto& cfg = p.partner.route.circuit_breaker();
  absl::MutexLock lock(&p.mu);
  --p.in_flight;
  if (!counts) return false;
  using B = PartnerState::Breaker;
  if (p.breaker == B::kHalfOpen && p.probing) {
    p.probing = false;
    if (failed) {
      p.open_for = std::min(2 * p.open_for, absl::Milliseconds(cfg.max_open_ms()));
      p.breaker = B::kOpen;
      p.probe_at = absl::Now() + p.open_for;
      consumer_->Pause(p.partner.route.queue());
      return true;
    }
    p.breaker = B::kClosed;
    p.open_for = absl::Milliseconds(cfg.open_ms());
    p.outcomes.clear();
    p.failures = 0;
    // The probe's prefetch of 1 gives way to the full one. (Under p.mu, as every change of the
    // breaker's consumption, so that the consumer's last wish is the breaker's last state.)
    ResumeLocked(p);
    log::Info("", "circuit closed: partner recovered", {{"partner", p.partner.name}});
    return false;
  }
  if (cfg.disabled() || p.breaker != B::kClosed) return false;
  p.outcomes.push_back(failed);
  p.failures += failed ? 1 : 0;
  if (p.outcomes.size() > cfg.window()) {
    p.failures -= p.outcomes.front() ? 1 : 0;
    p.outcomes.pop_front();
  }
  if (p.outcomes.size() < cfg.window() ||
      p.failures * 100 < cfg.failure_rate_percent() * p.outcomes.size()) {
    return false;
  }
  p.breaker = B::kOpen;
  p.probe_at = absl::Now() + p.open_for;
  consumer_->Pause(p.partner.route.queue());
  return true;
}

void Lane::OpenBreaker(PartnerState& p) {
  counters_.breaker_opened.fetch_add(1, std::memory_order_relaxed);
  absl::Duration wait;
  {
    absl::MutexLock lock(&p.mu);
    wait = p.open_for;
  }
  log::Warn("", "circuit open: partner is failing; its queue is paused",
            {{"partner", p.partner.name},
             {"probe_in_ms", absl::StrCat(absl::ToInt64Milliseconds(wait))}});
}

void Lane::OnPushed(PartnerState& p, std::unique_ptr<Job> job, adapters::PushResult result) {
  const bool retryable = !result.status.ok() && adapters::IsRetryable(result.status);
  // A dry run frees its slot too, but says nothing about the partner's health.
  if (NoteOutcome(p, retryable, /*counts=*/!result.dry_run)) OpenBreaker(p);
  Pump(p);  // the slot this push held is free

  const std::string& partner = p.partner.name;
  if (result.status.ok()) {
    if (!result.dry_run) {
      log::Info(job->correlation_id, "delivered",
                {{"partner", partner},
                 {"status", result.detail},
                 {"ms", absl::StrCat(absl::ToInt64Milliseconds(result.elapsed))}});
    }
    if (result.confirmations.empty()) {
      Complete(p, std::move(job), std::move(result));
    } else {
      Confirm(p, std::move(job), std::move(result));
    }
    return;
  }
  // The partner's error text may echo the event (a SOAP faultstring, a plain-text 400): its PII
  // values are masked here, before the text reaches the log, the record, the retried or parked
  // message's headers and the audit event; then it is cut (kMaxErrorBytes).
  result.status = absl::Status(
      result.status.code(),
      utf8::Cut(log::MaskPiiValues(ToStd(result.status.message()), job->event), kMaxErrorBytes));
  log::Warn(job->correlation_id, "push failed",
            {{"partner", partner},
             {"attempt", absl::StrCat(job->attempt)},
             {"error", ToStd(result.status.message())}});
  amqp::Headers& headers = job->delivery.message.headers;
  if (draining_.load() &&
      (result.maybe_delivered_as.empty() ||
       result.maybe_delivered_as == FindHeader(headers, kMaybeDeliveredAsHeader))) {
    // Shutting down: the adapter or the HTTP client stopped under it. Not the partner's
    // failure: back to the queue as it came, for the next lane. Unless the push may have
    // landed somewhere the message does not say yet: then it goes the way of a retry, which
    // carries that along.
    Requeue(*job);
    return;
  }
  // The retry or the parked message takes it along (the job's ids point into the message's
  // other fields, never into its headers).
  if (result.maybe_delivered_as.empty()) {
    EraseHeader(headers, kMaybeDeliveredAsHeader);
  } else {
    SetHeader(headers, kMaybeDeliveredAsHeader, std::move(result.maybe_delivered_as));
  }
  if (retryable) {
    Retry(p, std::move(job), result.status, result.retry_after);
  } else {
    Park(p, std::move(job), result.status);
  }
}

void Lane::Confirm(PartnerState& p, std::unique_ptr<Job> job, adapters::PushResult result) {
  struct Round {
    std::unique_ptr<Job> job;
    adapters::PushResult result;
    absl::Mutex mu;
    size_t pending ABSL_GUARDED_BY(mu) = 0;
    absl::Status error ABSL_GUARDED_BY(mu);
  };
  auto round = std::make_shared<Round>();
  round->job = std::move(job);
  round->result = std::move(result);
  const auto& confirmations = round->result.confirmations;
  {
    absl::MutexLock lock(&round->mu);
    round->pending = confirmations.size();
  }
  // The last answer of the round decides: all confirmed -> record them, then complete the job.
  auto settle = [this, &p, round](absl::Status s) {
    absl::Status error;
    {
      absl::MutexLock lock(&round->mu);
      if (!s.ok() && round->error.ok()) round->error = s;
      if (--round->pending > 0) return;
      error = round->error;
    }
    if (!error.ok()) {
      // A failure of this delivery like any other: recorded FAILED, through the delay queue
      // with backoff, parked once its attempts are spent. (Requeued at once, it came straight
      // back, the store knew nothing of it, and the partner got it again and again.)
      log::Warn(round->job->correlation_id, "confirmation not published; delivery retried",
                {{"partner", p.partner.name}, {"error", ToStd(error.message())}});
      Retry(
          p, std::move(round->job),
          absl::UnavailableError(absl::StrCat(
              "the partner accepted it but its confirmation was not published: ", error.message())),
          absl::ZeroDuration());
      return;
    }
    Complete(p, std::move(round->job), std::move(round->result));
  };
  std::vector<amqp::Message> messages(confirmations.size());
  for (size_t i = 0; i < confirmations.size(); ++i) {
    const adapters::InboundEvent& ev = confirmations[i];
    amqp::Message& msg = messages[i];
    msg.body = ev.body;
    msg.correlation_id = ev.correlation_id;
    msg.message_id = ConfirmationId(round->job->message_id, ev.event_type);
    msg.type = ev.event_type;
    msg.headers.emplace_back(kPartnerHeader, p.partner.name);
  }
  // Once the first publish is out, the last confirm may settle the round on the publisher's
  // thread and move `round->result` away: nothing below reads `round`.
  for (amqp::Message& msg : messages) {
    publisher_->Publish(options_.events_exchange, "", std::move(msg), settle);
  }
}

void Lane::Complete(PartnerState& p, std::unique_ptr<Job> job, adapters::PushResult result) {
  const bool dry = result.dry_run;
  // The delivery first, then what the partner answered to it (published by Confirm): one Record
  // call, so a trail never reads "confirmed" without "delivered", and no ack goes out unless
  // all of them are stored.
  std::vector<ess::v1::MessageRecord> records;
  records.reserve(1 + result.confirmations.size());
  records.push_back(
      MakeRecord(p, *job, dry ? ess::v1::MESSAGE_STATUS_DRY_RUN : ess::v1::MESSAGE_STATUS_DELIVERED,
                 std::move(result.rendered), absl::OkStatus()));
  for (const adapters::InboundEvent& ev : result.confirmations) {
    ess::v1::MessageRecord& rec = records.emplace_back();
    rec.set_direction(ess::v1::DIRECTION_INBOUND);
    rec.set_partner(p.partner.name);
    rec.set_correlation_id(ev.correlation_id);
    rec.set_message_id(ConfirmationId(job->message_id, ev.event_type));
    rec.set_event_type(ev.event_type);
    rec.set_status(ess::v1::MESSAGE_STATUS_PUBLISHED);
    rec.set_rendered(ev.body);
    rec.set_source(absl::StrCat("response to ", job->delivery.queue));
    rec.set_attempts(1);
    *rec.mutable_received_at() = ToProto(absl::Now());
  }
  Job* raw = job.release();
  auto recorded = [this, &p, raw, dry](absl::Status s) {
    std::unique_ptr<Job> owned(raw);
    if (s.ok()) {
      (dry ? p.dry_run : p.delivered).fetch_add(1, std::memory_order_relaxed);
      AuditAndAck(p, std::move(owned),
                  dry ? ess::v1::MESSAGE_STATUS_DRY_RUN : ess::v1::MESSAGE_STATUS_DELIVERED);
      return;
    }
    // No ack without its record: the broker redelivers it; the lane pauses until the
    // store answers again.
    if (RequeuedForStore(*owned, s)) return;
    // The store refused this record for good: requeued, it would come back, be pushed again
    // and be refused again, in a loop. The partner has it: acked, and counted.
    counters_.unrecorded.fetch_add(1, std::memory_order_relaxed);
    log::Error(owned->correlation_id, "delivered, but the replay store refused its record; acked",
               {{"partner", p.partner.name}, {"error", ToStd(s.message())}});
    AuditAndAck(p, std::move(owned),
                dry ? ess::v1::MESSAGE_STATUS_DRY_RUN : ess::v1::MESSAGE_STATUS_DELIVERED);
  };
  recorder_->RecordTogether(std::move(records), std::move(recorded));
}

absl::Status Lane::UsableIds(Job& job) {
  absl::Status first;
  auto check = [&first](std::string_view& id, std::string& own, std::string_view what) {
    if (id.empty()) return;
    absl::Status s = ids::Check(id, what);
    if (s.ok()) return;
    if (first.ok()) first = std::move(s);
    own = ids::Fit(utf8::Repair(id));  // may read `own` itself (a derived message id)
    id = own;
  };
  check(job.correlation_id, job.own_correlation_id, "the event's id");
  check(job.event_type, job.own_event_type, "the event's type");
  check(job.message_id, job.own_message_id, "the message's message_id");
  return first;
}

void Lane::Retry(PartnerState& p, std::unique_ptr<Job> job, const absl::Status& status,
                 absl::Duration retry_after) {
  const auto& policy = p.partner.route.retry();
  const absl::Time now = absl::Now();
  int64_t first_ms = absl::ToUnixMillis(job->received_at);
  HeaderNumber(job->delivery.message.headers, kFirstAttemptHeader, &first_ms);
  const absl::Duration age = now - absl::FromUnixMillis(first_ms);
  // Each reason is built before the call: the order of a call's arguments is unspecified, and
  // the job may be moved into Park before the reason would read it.
  if (job->attempt >= policy.max_attempts()) {
    absl::Status reason(status.code(), absl::StrCat("gave up after ", job->attempt,
                                                    " attempts: ", status.message()));
    Park(p, std::move(job), reason);
    return;
  }
  if (age >= absl::Milliseconds(policy.max_age_ms())) {
    absl::Status reason(status.code(), absl::StrCat("gave up after ", absl::FormatDuration(age),
                                                    " (max_age): ", status.message()));
    Park(p, std::move(job), reason);
    return;
  }
  // Full jitter: uniform in [0, min(max, initial * 2^(attempt-1))]; a partner's Retry-After
  // wins, clamped to the policy's maximum.
  const uint64_t bound =
      std::min<uint64_t>(policy.max_backoff_ms(), uint64_t{policy.initial_backoff_ms()}
                                                      << std::min<uint32_t>(job->attempt - 1, 30));
  uint64_t delay_ms;
  if (retry_after > absl::ZeroDuration()) {
    delay_ms = std::min<uint64_t>(absl::ToInt64Milliseconds(retry_after), policy.max_backoff_ms());
  } else {
    thread_local absl::InsecureBitGen gen;
    delay_ms = absl::Uniform<uint64_t>(absl::IntervalClosedClosed, gen, 0, bound);
  }
  // The shortest delay queue that holds the wait; the message's own expiration ends it sooner.
  uint32_t level = p.delays_ms.back();
  for (uint32_t d : p.delays_ms) {
    if (d >= delay_ms) {
      level = d;
      break;
    }
  }
  std::string queue = RetryQueueName(p.partner.route.queue(), level);
  Job* raw = job.release();
  Record(p, *raw, ess::v1::MESSAGE_STATUS_FAILED, "", status,
         [this, &p, raw, queue = std::move(queue), status, first_ms,
          delay_ms](absl::Status recorded) mutable {
           std::unique_ptr<Job> owned(raw);
           if (RequeuedForStore(*owned, recorded)) return;
           // Moved also when the store refused the record for good: the retry queue holds it.
           p.retried.fetch_add(1, std::memory_order_relaxed);
           // Before the message moves: the job's ids may point into it.
           Audit(p, *owned, ess::v1::MESSAGE_STATUS_FAILED, status);
           amqp::Message msg = std::move(owned->delivery.message);
           SetHeader(msg.headers, kAttemptHeader, absl::StrCat(owned->attempt + 1));
           SetHeader(msg.headers, kFirstAttemptHeader, absl::StrCat(first_ms));
           SetReason(msg.headers, status);
           AppendHistory(msg.headers, owned->attempt, status);
           msg.expiration = absl::StrCat(delay_ms);
           MoveAndAck(p, *owned, std::move(queue), std::move(msg));
         });
}

void Lane::Park(PartnerState& p, std::unique_ptr<Job> job, const absl::Status& reason) {
  log::Warn(job->correlation_id, "parked",
            {{"partner", p.partner.name},
             {"queue", ParkedQueueName(p.partner.route.queue())},
             {"reason", ToStd(reason.message())}});
  Job* raw = job.release();
  Record(p, *raw, ess::v1::MESSAGE_STATUS_DEAD, "", reason,
         [this, raw, &p, reason](absl::Status recorded) {
           std::unique_ptr<Job> owned(raw);
           if (RequeuedForStore(*owned, recorded)) return;
           // Parked also when the store refused the record for good: the parked queue holds it.
           p.parked.fetch_add(1, std::memory_order_relaxed);
           // Before the message moves: the job's ids may point into it.
           Audit(p, *owned, ess::v1::MESSAGE_STATUS_DEAD, reason);
           amqp::Message msg = std::move(owned->delivery.message);
           SetReason(msg.headers, reason);
           SetHeader(msg.headers, kPartnerHeader, p.partner.name);
           SetHeader(msg.headers, kAttemptHeader, absl::StrCat(owned->attempt));
           AppendHistory(msg.headers, owned->attempt, reason);
           msg.expiration.clear();
           MoveAndAck(p, *owned, ParkedQueueName(p.partner.route.queue()), std::move(msg));
         });
}

void Lane::NoteBeforeSend(PartnerState& p, Job& job, std::string where, ReplayRecorder::Done done) {
  ess::v1::MessageRecord rec =
      MakeRecord(p, job, ess::v1::MESSAGE_STATUS_RECEIVED, "", absl::OkStatus());
  rec.set_maybe_delivered_as(std::move(where));
  // The adapter may give up waiting and complete the push, ending the job, before the store
  // answers: the callback keeps what it logs.
  recorder_->Record(std::move(rec), [correlation_id = std::string(job.correlation_id),
                                     done = std::move(done)](absl::Status s) mutable {
    if (absl::IsInvalidArgument(s)) {
      // Refused for good, as every record of this event would be (see Complete): no reason to
      // hold the upload back. Only a crash during it would send the row again.
      log::Error(correlation_id, "the replay store refused the note of an upload; sent without",
                 {{"error", ToStd(s.message())}});
      s = absl::OkStatus();
    }
    std::move(done)(std::move(s));
  });
}

void Lane::Record(PartnerState& p, Job& job, MessageStatus status, std::string rendered,
                  const absl::Status& error, ReplayRecorder::Done done) {
  recorder_->Record(MakeRecord(p, job, status, std::move(rendered), error), std::move(done));
}

ess::v1::MessageRecord Lane::MakeRecord(PartnerState& p, Job& job, MessageStatus status,
                                        std::string rendered, const absl::Status& error) {
  ess::v1::MessageRecord rec;
  rec.set_direction(ess::v1::DIRECTION_OUTBOUND);
  rec.set_partner(p.partner.name);
  rec.set_correlation_id(std::string(job.correlation_id));
  rec.set_message_id(std::string(job.message_id));
  rec.set_event_type(std::string(job.event_type));
  rec.set_status(status);
  // An event over max_event_bytes is parked for its size: its record goes without it.
  if (job.delivery.message.body.size() <= options_.max_event_bytes) {
    rec.set_payload(job.delivery.message.body);
  }
  rec.set_rendered(std::move(rendered));
  if (!error.ok()) rec.set_error(std::string(error.message()));
  rec.set_attempts(job.attempt);
  rec.set_dry_run(status == ess::v1::MESSAGE_STATUS_DRY_RUN);
  rec.set_source(job.delivery.queue);
  *rec.mutable_received_at() = ToProto(job.received_at);
  // A failure's record keeps where the push may have landed (OnPushed set the header first), so
  // that an ops replay of it takes that along as the retry does.
  if (status == ess::v1::MESSAGE_STATUS_FAILED || status == ess::v1::MESSAGE_STATUS_DEAD) {
    rec.set_maybe_delivered_as(
        std::string(FindHeader(job.delivery.message.headers, kMaybeDeliveredAsHeader)));
  }
  return rec;
}

ess::v1::SyncAudit Lane::AuditEvent(PartnerState& p, const Job& job, ess::v1::MessageStatus status,
                                    const absl::Status& error) const {
  return AuditSink::Make(ess::v1::DIRECTION_OUTBOUND, p.partner.name, job.correlation_id,
                         job.message_id, job.event_type, status, ToStd(error.message()),
                         job.attempt, job.received_at, status == ess::v1::MESSAGE_STATUS_DRY_RUN);
}

void Lane::Audit(PartnerState& p, const Job& job, ess::v1::MessageStatus status,
                 const absl::Status& error) {
  if (audit_ == nullptr || !audit_->enabled()) return;
  audit_->Emit(AuditEvent(p, job, status, error));
}

void Lane::AuditAndAck(PartnerState& p, std::unique_ptr<Job> job, ess::v1::MessageStatus status) {
  if (audit_ == nullptr || !audit_->enabled()) {
    Ack(*job);
    return;
  }
  const ess::v1::SyncAudit event = AuditEvent(p, *job, status, absl::OkStatus());
  Job* raw = job.release();
  audit_->EmitOrWait(event, [this, raw] {
    std::unique_ptr<Job> owned(raw);
    Ack(*owned);
  });
}

// --- the supervisor: breaker probes and store outages -----------------------------------------

bool Lane::RequeuedForStore(Job& job, const absl::Status& recorded) {
  if (!StoreUnusable(recorded)) return false;
  log::Warn(job.correlation_id, "replay store did not take the record; requeued",
            {{"error", ToStd(recorded.message())}});
  PauseForStore(recorded);
  Requeue(job);
  return true;
}

void Lane::PauseForStore(const absl::Status& why) {
  if (store_paused_.exchange(true)) return;
  counters_.store_pauses.fetch_add(1, std::memory_order_relaxed);
  log::Warn("", "replay store does not take the lane's records: consumption paused until it does",
            {{"error", ToStd(why.message())}});
  for (const auto& p : partners_) {
    absl::MutexLock lock(&p->mu);  // after any breaker's wish of consumption (NoteOutcome)
    consumer_->Pause(p->partner.route.queue());
  }
}

void Lane::Supervise() {
  absl::Time next_store_probe = absl::InfinitePast();
  while (true) {
    {
      absl::MutexLock lock(&supervisor_mu_);
      auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(supervisor_mu_) { return stop_supervisor_; };
      if (supervisor_mu_.AwaitWithTimeout(absl::Condition(&stop), absl::Milliseconds(50))) return;
    }
    const absl::Time now = absl::Now();
    if (store_paused_.load() && now >= next_store_probe) {
      next_store_probe = now + options_.store_probe_interval;
      if (recorder_->Ping(options_.store_probe_interval).ok()) {
        store_paused_ = false;
        log::Info("", "replay store answers again: consumption resumed");
        for (const auto& p : partners_) {
          absl::MutexLock lock(&p->mu);
          ResumeLocked(*p);
        }
      }
    }
    const bool can_move = publisher_->connected();
    for (const auto& p : partners_) {
      absl::MutexLock lock(&p->mu);
      if (p->moves_held && now >= p->moves_retry_at && can_move) {
        p->moves_held = false;
        p->moves_retry_at = absl::InfiniteFuture();
        log::Info("", "moves can be published again: the partner's queue is resumed",
                  {{"partner", p->partner.name}});
        ResumeLocked(*p);
      }
      if (p->breaker == PartnerState::Breaker::kOpen && now >= p->probe_at) {
        p->breaker = PartnerState::Breaker::kHalfOpen;
        p->probe_at = absl::InfiniteFuture();
        if (ResumeLocked(*p)) {
          log::Info("", "circuit half-open: probing the partner with one message",
                    {{"partner", p->partner.name}});
        }
      }
    }
  }
}

Lane::Settled Lane::settled() const {
  Settled all;
  for (const auto& p : partners_) {
    all.delivered += p->delivered.load(std::memory_order_relaxed);
    all.dry_run += p->dry_run.load(std::memory_order_relaxed);
    all.retried += p->retried.load(std::memory_order_relaxed);
    all.parked += p->parked.load(std::memory_order_relaxed);
  }
  return all;
}

ops::NotReady Lane::NotReady() const {
  ops::NotReady not_ready;
  if (!consumer_->connected()) not_ready.emplace_back("consumer", "not connected");
  if (store_paused_.load()) {
    not_ready.emplace_back("store", "does not take the lane's records: consumption paused");
  }
  if (!publisher_->connected()) {
    not_ready.emplace_back("publisher", "not connected");
  } else if (std::optional<std::string> alarm = publisher_->blocked_by(); alarm.has_value()) {
    not_ready.emplace_back("broker_alarm", alarm->empty() ? "blocked" : *std::move(alarm));
  }
  return not_ready;
}

std::vector<prometheus::MetricFamily> Lane::Metrics() const {
  using prometheus::MetricType;
  prometheus::MetricFamily settled = metrics::Family(
      "ess_outbound_messages_total",
      "Messages settled by the outbound lane, by partner and outcome (delivered, dry_run, "
      "retried: a failed attempt sent to a delay queue, parked: given up).",
      MetricType::Counter);
  prometheus::MetricFamily success = metrics::Family(
      "ess_outbound_success_ratio",
      "delivered / (delivered + retried + parked) since the lane started: the share of the "
      "partner's outcomes that were deliveries; absent before the first. Over a window: the "
      "same ratio of rate(ess_outbound_messages_total[5m]).",
      MetricType::Gauge);
  prometheus::MetricFamily open = metrics::Family(
      "ess_outbound_breaker_open", "1 while the partner's circuit breaker holds its queue paused.",
      MetricType::Gauge);
  prometheus::MetricFamily held = metrics::Family(
      "ess_outbound_moves_held",
      "1 while the partner's queue is paused because a move to its delay or parked queue failed "
      "(the lane's publisher is down, or the broker refused the move).",
      MetricType::Gauge);
  for (const auto& p : partners_) {
    const std::string& name = p->partner.name;
    const double delivered = p->delivered.load(std::memory_order_relaxed);
    const double retried = p->retried.load(std::memory_order_relaxed);
    const double parked = p->parked.load(std::memory_order_relaxed);
    metrics::AddSample(settled, {{"partner", name}, {"outcome", "delivered"}}, delivered);
    metrics::AddSample(settled, {{"partner", name}, {"outcome", "dry_run"}},
                       p->dry_run.load(std::memory_order_relaxed));
    metrics::AddSample(settled, {{"partner", name}, {"outcome", "retried"}}, retried);
    metrics::AddSample(settled, {{"partner", name}, {"outcome", "parked"}}, parked);
    if (delivered + retried + parked > 0) {
      metrics::AddSample(success, {{"partner", name}}, delivered / (delivered + retried + parked));
    }
    absl::MutexLock lock(&p->mu);
    metrics::AddSample(open, {{"partner", name}},
                       p->breaker == PartnerState::Breaker::kClosed ? 0 : 1);
    metrics::AddSample(held, {{"partner", name}}, p->moves_held ? 1 : 0);
  }
  std::vector<prometheus::MetricFamily> families;
  families.push_back(std::move(settled));
  families.push_back(std::move(success));
  families.push_back(std::move(open));
  families.push_back(std::move(held));
  families.push_back(metrics::Single("ess_outbound_received_total",
                                     "Deliveries taken from the bus.", MetricType::Counter,
                                     counters_.received.load()));
  families.push_back(
      metrics::Single("ess_outbound_duplicates_total",
                      "Redeliveries the store showed delivered: acked without a second push.",
                      MetricType::Counter, counters_.duplicates.load()));
  families.push_back(
      metrics::Single("ess_outbound_requeued_total",
                      "Deliveries handed back to the broker (store down, shutting down).",
                      MetricType::Counter, counters_.requeued.load()));
  families.push_back(metrics::Single(
      "ess_outbound_unrecorded_total",
      "Deliveries acked without their record: the replay store refused the record itself.",
      MetricType::Counter, counters_.unrecorded.load()));
  families.push_back(metrics::Single("ess_outbound_in_flight",
                                     "Deliveries taken and not yet settled.", MetricType::Gauge,
                                     static_cast<double>(live_.load())));
  families.push_back(
      metrics::Single("ess_outbound_store_paused",
                      "1 while consumption is paused because the replay store is unreachable.",
                      MetricType::Gauge, store_paused_.load() ? 1 : 0));
  families.push_back(metrics::Single(
      "ess_outbound_broker_blocked",
      "1 while the broker blocks the lane's publisher with a resource alarm (memory or disk): "
      "moves to delay and parked queues and confirmations wait, their deliveries unacked, until "
      "it clears; /readyz names the alarm meanwhile.",
      MetricType::Gauge, publisher_->blocked_by().has_value() ? 1 : 0));
  for (prometheus::MetricFamily& f : recorder_->Metrics()) families.push_back(std::move(f));
  if (audit_ != nullptr) {
    for (prometheus::MetricFamily& f : audit_->Metrics()) families.push_back(std::move(f));
  }
  return families;
}

}  // namespace ess::outbound
