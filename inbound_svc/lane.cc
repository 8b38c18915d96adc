#include "inbound_svc/lane.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/sv.h"
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

}  // namespace

// One webhook call in flight: its events, how many confirms are outstanding, its responder.
struct Lane::Call {
  std::string partner;
  std::string path;
  std::string webhook_id;
  std::string payload;
  std::vector<adapters::InboundEvent> events;
  std::vector<std::string> message_ids;  // one per event
  absl::Time received_at;
  http::Responder responder;
  absl::Mutex mu;
  size_t pending ABSL_GUARDED_BY(mu) = 0;
  absl::Status error ABSL_GUARDED_BY(mu);

  // Counts one answer (publish confirm or record) in; true for the last one, with `*first_error`
  // set to the first failure of the round.
  bool Settle(const absl::Status& status, absl::Status* first_error) {
    absl::MutexLock lock(&mu);
    if (!status.ok() && error.ok()) error = status;
    if (--pending > 0) return false;
    *first_error = error;
    pending = events.size();  // the next round (records) counts the same events
    return true;
  }
};

Lane::Lane(Options options, std::vector<Route> routes, amqp::Publisher* publisher,
           ReplayRecorder* recorder)
    : options_(std::move(options)),
      publisher_(publisher),
      recorder_(recorder),
      server_(options_.server, [this](http::ServerRequest req, http::Responder r) {
        Handle(std::move(req), std::move(r));
      }) {
  for (auto& r : routes) {
    std::string path = r.path;
    routes_.emplace(std::move(path), std::move(r));
  }
}

Lane::~Lane() { Stop(); }

absl::Status Lane::Start() { return server_.Start(); }

void Lane::Stop() { server_.Stop(); }

void Lane::Handle(http::ServerRequest request, http::Responder responder) {
  counters_.requests.fetch_add(1, std::memory_order_relaxed);
  auto reply = [&](int status, std::string_view message) {
    counters_.rejected.fetch_add(1, std::memory_order_relaxed);
    std::move(responder).Send({.status = status, .body = ErrorBody(message)});
  };
  auto it = routes_.find(request.path);
  if (it == routes_.end()) {
    if (request.path == "/healthz") {
      std::move(responder).Send({.status = 200, .body = R"({"ok":true})"});
      return;
    }
    reply(404, absl::StrCat("no partner serves ", request.path));
    return;
  }
  if (request.method != "POST") {
    reply(405, "webhooks take POST");
    return;
  }
  const Route& route = it->second;
  std::string_view header_cid = request.Header("x-correlation-id");
  absl::StatusOr<std::vector<adapters::InboundEvent>> events =
      route.adapter->Pull({.body = request.body,
                           .content_type = request.Header("content-type"),
                           .correlation_id = header_cid});
  if (!events.ok()) {
    log::Warn(header_cid, "webhook rejected",
              {{"partner", route.partner}, {"error", ToStd(events.status().message())}});
    reply(400, absl::StrCat(route.partner, ": ", events.status().message()));
    return;
  }
  if (events->empty()) {
    std::move(responder).Send({.status = 200, .body = R"({"ok":true,"events":0})"});
    return;
  }
  auto call = std::make_shared<Call>();
  call->partner = route.partner;
  call->path = route.path;
  call->webhook_id = std::string(request.Header("webhook-id"));
  call->payload = std::move(request.body);
  call->events = *std::move(events);
  call->received_at = absl::Now();
  call->responder = std::move(responder);
  {
    absl::MutexLock lock(&call->mu);
    call->pending = call->events.size();
  }
  // The message id: the partner's webhook-id when it sends one, else correlation id and type.
  for (size_t i = 0; i < call->events.size(); ++i) {
    const adapters::InboundEvent& ev = call->events[i];
    call->message_ids.push_back(
        call->webhook_id.empty()   ? absl::StrCat(ev.correlation_id, ":", ev.event_type)
        : call->events.size() == 1 ? call->webhook_id
                                   : absl::StrCat(call->webhook_id, ":", i));
  }
  for (size_t i = 0; i < call->events.size(); ++i) {
    const adapters::InboundEvent& ev = call->events[i];
    amqp::Message msg;
    msg.body = ev.body;
    msg.correlation_id = ev.correlation_id;
    msg.message_id = call->message_ids[i];
    msg.type = ev.event_type;
    msg.headers.emplace_back("x-ess-partner", call->partner);
    publisher_->Publish(options_.events_exchange, "", std::move(msg),
                        [this, call](absl::Status s) mutable { OnPublished(call, std::move(s)); });
  }
}

void Lane::OnPublished(std::shared_ptr<Call> call, absl::Status status) {
  absl::Status error;
  if (!call->Settle(status, &error)) return;
  // Every publish of the call has been answered (this thread is the last one).
  if (!error.ok()) {
    counters_.unavailable.fetch_add(1, std::memory_order_relaxed);
    log::Warn(call->events.front().correlation_id, "publish failed; partner told to retry",
              {{"partner", call->partner}, {"error", ToStd(error.message())}});
    Finish(*call, 503, ErrorBody(absl::StrCat("event bus: ", error.message())));
    return;
  }
  // Record every event; answer 200 when the last record is stored.
  const auto now = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      absl::ToUnixNanos(call->received_at));
  for (size_t i = 0; i < call->events.size(); ++i) {
    const adapters::InboundEvent& ev = call->events[i];
    ess::v1::MessageRecord rec;
    rec.set_direction(ess::v1::DIRECTION_INBOUND);
    rec.set_partner(call->partner);
    rec.set_correlation_id(ev.correlation_id);
    rec.set_message_id(call->message_ids[i]);
    rec.set_event_type(ev.event_type);
    rec.set_status(ess::v1::MESSAGE_STATUS_PUBLISHED);
    rec.set_payload(call->payload);
    rec.set_rendered(ev.body);
    rec.set_source(call->path);
    rec.set_attempts(1);
    *rec.mutable_received_at() = now;
    recorder_->Record(std::move(rec), [this, call](absl::Status s) {
      absl::Status err;
      if (!call->Settle(s, &err)) return;
      const std::string& cid = call->events.front().correlation_id;
      if (!err.ok()) {
        counters_.unavailable.fetch_add(1, std::memory_order_relaxed);
        log::Warn(cid, "replay store did not take the record; partner told to retry",
                  {{"partner", call->partner}, {"error", ToStd(err.message())}});
        Finish(*call, 503, ErrorBody(absl::StrCat("replay store: ", err.message())));
        return;
      }
      counters_.published.fetch_add(call->events.size(), std::memory_order_relaxed);
      log::Info(cid, "published",
                {{"partner", call->partner},
                 {"type", call->events.front().event_type},
                 {"events", absl::StrCat(call->events.size())}});
      Finish(*call, 200, absl::StrCat(R"({"ok":true,"events":)", call->events.size(), "}"));
    });
  }
}

void Lane::Finish(Call& call, int status, std::string body) {
  http::ServerResponse resp{.status = status, .body = std::move(body)};
  if (status == 503) resp.headers.emplace_back("Retry-After", "1");
  std::move(call.responder).Send(std::move(resp));
}

}  // namespace ess::inbound
