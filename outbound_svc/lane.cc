#include "outbound_svc/lane.h"

#include <rapidjson/document.h>

#include <algorithm>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "adapters/http_status.h"
#include "common/json.h"
#include "common/log.h"
#include "common/sv.h"
#include "google/protobuf/util/time_util.h"

namespace ess::outbound {
namespace {

using ess::v1::MessageStatus;

void SetHeader(amqp::Headers& headers, std::string_view key, std::string value) {
  for (auto& [k, v] : headers) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  headers.emplace_back(std::string(key), std::move(value));
}

std::string_view FindHeader(const amqp::Headers& headers, std::string_view key) {
  for (const auto& [k, v] : headers) {
    if (k == key) return v;
  }
  return {};
}

google::protobuf::Timestamp ToProto(absl::Time t) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

}  // namespace

std::vector<uint32_t> RetryDelaysMs(const ess::v1::RetryPolicy& policy) {
  std::vector<uint32_t> delays;
  uint64_t d = std::max<uint32_t>(policy.initial_backoff_ms(), 1);
  const uint64_t cap = std::max<uint64_t>(policy.max_backoff_ms(), d);
  // One level per attempt that can wait, capped: attempts beyond the last level reuse it.
  for (uint32_t i = 1; i < std::max<uint32_t>(policy.max_attempts(), 2); ++i) {
    delays.push_back(static_cast<uint32_t>(std::min(d, cap)));
    if (d >= cap) break;
    d *= 2;
  }
  return delays;
}

std::string RetryQueueName(const std::string& queue, uint32_t delay_ms) {
  return absl::StrCat(queue, ".retry.", delay_ms, "ms");
}

std::string ParkedQueueName(const std::string& queue) { return absl::StrCat(queue, ".parked"); }

amqp::Topology OutboundTopology(const ess::v1::HubConfig& config) {
  amqp::Topology t;
  for (const auto& p : config.partners()) {
    if (!p.has_outbound()) continue;
    const std::string& q = p.outbound().queue();
    t.queues.push_back({.name = q});
    t.queues.push_back({.name = ParkedQueueName(q)});
    for (uint32_t delay : RetryDelaysMs(p.outbound().retry())) {
      t.queues.push_back(
          {.name = RetryQueueName(q, delay),
           .string_args = {{"x-dead-letter-exchange", ""}, {"x-dead-letter-routing-key", q}},
           .int_args = {{"x-message-ttl", delay}}});
    }
  }
  return t;
}

struct Lane::Job {
  amqp::Delivery delivery;
  // Small chunks: events are small, and hundreds of jobs are alive at once.
  rapidjson::MemoryPoolAllocator<> pool{1024};
  rapidjson::Document event{&pool};
  std::vector<MappedField> fields;
  std::string_view correlation_id;  // into `event` or `delivery`
  std::string_view event_type;
  uint32_t attempt = 1;
  absl::Time received_at;
};

struct Lane::PartnerState {
  Partner partner;
  std::vector<uint32_t> delays_ms;
  absl::Mutex mu;
  uint32_t in_flight ABSL_GUARDED_BY(mu) = 0;
  std::deque<std::unique_ptr<Job>> waiting ABSL_GUARDED_BY(mu);
};

Lane::Lane(Options options, amqp::Topology topology, std::vector<Partner> partners,
           ReplayRecorder* recorder)
    : options_(std::move(options)), dry_run_(options_.dry_run), recorder_(recorder) {
  amqp::Consumer::Options copts{.connection = options_.connection,
                                .topology = std::move(topology),
                                .prefetch = options_.prefetch};
  for (auto& p : partners) {
    auto state = std::make_unique<PartnerState>();
    state->delays_ms = RetryDelaysMs(p.route.retry());
    copts.queues.push_back(p.route.queue());
    by_queue_[p.route.queue()] = state.get();
    state->partner = std::move(p);
    partners_.push_back(std::move(state));
  }
  consumer_ = std::make_unique<amqp::Consumer>(std::move(copts),
                                               [this](amqp::Delivery d) { Handle(std::move(d)); });
}

Lane::~Lane() { Stop(); }

absl::Status Lane::Start() { return consumer_->Start(); }

void Lane::Stop() { consumer_->Stop(); }

void Lane::Handle(amqp::Delivery delivery) {
  counters_.received.fetch_add(1, std::memory_order_relaxed);
  auto it = by_queue_.find(delivery.queue);
  if (it == by_queue_.end()) {  // cannot happen: we consume only our partners' queues
    log::Error(delivery.message.correlation_id, "delivery from an unknown queue, requeued",
               {{"queue", delivery.queue}});
    consumer_->Reject(delivery.delivery_tag, /*requeue=*/true);
    return;
  }
  PartnerState& p = *it->second;
  auto job = std::make_unique<Job>();
  job->received_at = absl::Now();
  job->delivery = std::move(delivery);
  const amqp::Message& msg = job->delivery.message;
  uint32_t attempt = 1;
  std::string_view header = FindHeader(msg.headers, kAttemptHeader);
  if (!header.empty() && absl::SimpleAtoi(ToAbsl(header), &attempt)) {
    job->attempt = std::max<uint32_t>(attempt, 1);
  }
  // The correlation id: the event's "id"; the AMQP properties when the body cannot tell.
  job->correlation_id = !msg.correlation_id.empty() ? std::string_view(msg.correlation_id)
                                                    : std::string_view(msg.message_id);
  job->event_type = msg.type;

  absl::Status s = json::Parse(msg.body, job->event);
  if (s.ok()) {
    std::string_view id = json::GetString(job->event, "id");
    if (!id.empty()) job->correlation_id = id;
    std::string_view type = json::GetString(job->event, "type");
    if (!type.empty()) job->event_type = type;
    s = p.partner.mapper.Apply(job->event, &job->fields);
  }
  if (!s.ok()) {
    Park(p, std::move(job), s);
    return;
  }
  {
    absl::MutexLock lock(&p.mu);
    if (p.in_flight >= p.partner.route.max_in_flight()) {
      p.waiting.push_back(std::move(job));
      return;
    }
    ++p.in_flight;
  }
  Dispatch(p, std::move(job));
}

void Lane::Dispatch(PartnerState& p, std::unique_ptr<Job> job) {
  adapters::PushRequest req{.correlation_id = job->correlation_id,
                            .message_id = job->delivery.message.message_id,
                            .event_type = job->event_type,
                            .fields = job->fields,
                            .dry_run = dry_run_};
  Job* raw = job.release();  // owned by the callback from here on
  p.partner.adapter->Push(req, [this, &p, raw](adapters::PushResult result) {
    OnPushed(p, std::unique_ptr<Job>(raw), std::move(result));
  });
}

void Lane::ReleaseSlot(PartnerState& p) {
  std::unique_ptr<Job> next;
  {
    absl::MutexLock lock(&p.mu);
    if (p.waiting.empty()) {
      --p.in_flight;
      return;
    }
    next = std::move(p.waiting.front());  // the slot passes straight to the next job
    p.waiting.pop_front();
  }
  Dispatch(p, std::move(next));
}

void Lane::OnPushed(PartnerState& p, std::unique_ptr<Job> job, adapters::PushResult result) {
  ReleaseSlot(p);
  const std::string& partner = p.partner.name;
  if (result.status.ok()) {
    const bool dry = result.dry_run;
    if (!dry) {
      log::Info(job->correlation_id, "delivered",
                {{"partner", partner},
                 {"status", result.detail},
                 {"ms", absl::StrCat(absl::ToInt64Milliseconds(result.elapsed))}});
    }
    Job* raw = job.release();
    Record(p, *raw, dry ? ess::v1::MESSAGE_STATUS_DRY_RUN : ess::v1::MESSAGE_STATUS_DELIVERED,
           std::move(result.rendered), absl::OkStatus(), [this, raw, dry](absl::Status s) {
             std::unique_ptr<Job> owned(raw);
             if (s.ok()) {
               (dry ? counters_.dry_run : counters_.delivered).fetch_add(1);
               consumer_->Ack(owned->delivery.delivery_tag);
               return;
             }
             // No ack without its record: the broker redelivers it.
             counters_.record_failures.fetch_add(1);
             log::Warn(owned->correlation_id, "replay store did not take the record; requeued",
                       {{"error", ToStd(s.message())}});
             consumer_->Reject(owned->delivery.delivery_tag, /*requeue=*/true);
           });
    return;
  }
  log::Warn(job->correlation_id, "push failed",
            {{"partner", partner},
             {"attempt", absl::StrCat(job->attempt)},
             {"error", ToStd(result.status.message())}});
  if (adapters::IsRetryable(result.status)) {
    Retry(p, std::move(job), result.status);
  } else {
    Park(p, std::move(job), result.status);
  }
}

void Lane::Retry(PartnerState& p, std::unique_ptr<Job> job, const absl::Status& status) {
  const uint32_t max_attempts = p.partner.route.retry().max_attempts();
  if (job->attempt >= max_attempts) {
    Park(p, std::move(job),
         absl::Status(status.code(), absl::StrCat("gave up after ", job->attempt,
                                                  " attempts: ", status.message())));
    return;
  }
  const size_t level = std::min<size_t>(job->attempt - 1, p.delays_ms.size() - 1);
  std::string queue = RetryQueueName(p.partner.route.queue(), p.delays_ms[level]);
  Job* raw = job.release();
  Record(p, *raw, ess::v1::MESSAGE_STATUS_FAILED, "", status,
         [this, raw, queue = std::move(queue), status](absl::Status) mutable {
           // The message is safe in the retry queue whether or not the record was stored.
           std::unique_ptr<Job> owned(raw);
           amqp::Message msg = std::move(owned->delivery.message);
           SetHeader(msg.headers, kAttemptHeader, absl::StrCat(owned->attempt + 1));
           SetHeader(msg.headers, kReasonHeader, std::string(status.message()));
           counters_.retried.fetch_add(1);
           consumer_->ParkAndAck(owned->delivery.delivery_tag, std::move(queue), std::move(msg));
         });
}

void Lane::Park(PartnerState& p, std::unique_ptr<Job> job, const absl::Status& reason) {
  log::Warn(job->correlation_id, "parked",
            {{"partner", p.partner.name},
             {"queue", ParkedQueueName(p.partner.route.queue())},
             {"reason", ToStd(reason.message())}});
  Job* raw = job.release();
  Record(p, *raw, ess::v1::MESSAGE_STATUS_DEAD, "", reason, [this, raw, &p, reason](absl::Status) {
    std::unique_ptr<Job> owned(raw);
    amqp::Message msg = std::move(owned->delivery.message);
    SetHeader(msg.headers, kReasonHeader, std::string(reason.message()));
    SetHeader(msg.headers, kPartnerHeader, p.partner.name);
    SetHeader(msg.headers, kAttemptHeader, absl::StrCat(owned->attempt));
    counters_.parked.fetch_add(1);
    consumer_->ParkAndAck(owned->delivery.delivery_tag, ParkedQueueName(p.partner.route.queue()),
                          std::move(msg));
  });
}

void Lane::Record(PartnerState& p, Job& job, MessageStatus status, std::string rendered,
                  const absl::Status& error, ReplayRecorder::Done done) {
  ess::v1::MessageRecord rec;
  rec.set_direction(ess::v1::DIRECTION_OUTBOUND);
  rec.set_partner(p.partner.name);
  rec.set_correlation_id(std::string(job.correlation_id));
  const amqp::Message& msg = job.delivery.message;
  rec.set_message_id(!msg.message_id.empty() ? msg.message_id : std::string(job.correlation_id));
  rec.set_event_type(std::string(job.event_type));
  rec.set_status(status);
  rec.set_payload(msg.body);
  rec.set_rendered(std::move(rendered));
  if (!error.ok()) rec.set_error(std::string(error.message()));
  rec.set_attempts(job.attempt);
  rec.set_dry_run(status == ess::v1::MESSAGE_STATUS_DRY_RUN);
  rec.set_source(job.delivery.queue);
  *rec.mutable_received_at() = ToProto(job.received_at);
  recorder_->Record(std::move(rec), std::move(done));
}

}  // namespace ess::outbound
