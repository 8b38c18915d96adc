#include "bench/amqp_load.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <poll.h>
#include <time.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace ess::bench {
namespace {

constexpr amqp_channel_t kChannel = 1;

amqp_bytes_t Bytes(const std::string& s) {
  amqp_bytes_t b;
  b.len = s.size();
  b.bytes = const_cast<char*>(s.data());
  return b;
}

absl::Status ReplyStatus(amqp_rpc_reply_t reply, const std::string& what) {
  switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL:
      return absl::OkStatus();
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
      return absl::UnavailableError(
          absl::StrCat(what, ": ", amqp_error_string2(reply.library_error)));
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        const auto* m = static_cast<const amqp_channel_close_t*>(reply.reply.decoded);
        const std::string text(static_cast<const char*>(m->reply_text.bytes), m->reply_text.len);
        if (m->reply_code == AMQP_NOT_FOUND)
          return absl::NotFoundError(absl::StrCat(what, ": ", text));
        return absl::FailedPreconditionError(absl::StrCat(what, ": ", m->reply_code, " ", text));
      }
      return absl::UnavailableError(absl::StrCat(what, ": the broker closed the connection"));
    default:
      return absl::InternalError(absl::StrCat(what, ": no reply"));
  }
}

// One logged-in connection with channel 1 open; closed on destruction.
class RawConnection {
 public:
  static absl::StatusOr<std::unique_ptr<RawConnection>> Open(const BrokerAddress& broker) {
    std::unique_ptr<RawConnection> c(new RawConnection(amqp_new_connection()));
    amqp_socket_t* socket = amqp_tcp_socket_new(c->state_);
    if (socket == nullptr) return absl::ResourceExhaustedError("amqp_tcp_socket_new failed");
    timeval tv = absl::ToTimeval(absl::Seconds(5));
    if (int rc = amqp_socket_open_noblock(socket, broker.host.c_str(), broker.port, &tv);
        rc != AMQP_STATUS_OK) {
      return absl::UnavailableError(
          absl::StrCat("connect to ", broker.host, ":", broker.port, ": ", amqp_error_string2(rc)));
    }
    // No heartbeats: every call is bounded in time and the connection is short-lived.
    if (absl::Status s = ReplyStatus(amqp_login(c->state_, "/", 0, 131072, /*heartbeat=*/0,
                                                AMQP_SASL_METHOD_PLAIN, "guest", "guest"),
                                     "login");
        !s.ok()) {
      return s;
    }
    c->logged_in_ = true;
    amqp_channel_open(c->state_, kChannel);
    if (absl::Status s = c->Last("channel.open"); !s.ok()) return s;
    return c;
  }

  ~RawConnection() {
    if (logged_in_) amqp_connection_close(state_, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(state_);
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  amqp_connection_state_t state() const { return state_; }
  absl::Status Last(const std::string& what) {
    return ReplyStatus(amqp_get_rpc_reply(state_), what);
  }

 private:
  explicit RawConnection(amqp_connection_state_t state) : state_(state) {}
  amqp_connection_state_t state_;
  bool logged_in_ = false;
};

// Which publish numbers the broker has confirmed (acks and nacks, `multiple` or not).
class Confirms {
 public:
  explicit Confirms(uint64_t count) : settled_(count + 2, 0) {}

  // Returns how many publishes this ack/nack settled; calls on_settled(number) for each.
  template <typename Fn>
  uint64_t Settle(uint64_t tag, bool multiple, Fn&& on_settled) {
    uint64_t n = 0;
    tag = std::min<uint64_t>(tag, settled_.size() - 1);
    const uint64_t from = multiple ? low_ : tag;
    for (uint64_t s = from; s <= tag; ++s) {
      if (settled_[s] == 0) {
        settled_[s] = 1;
        on_settled(s);
        ++n;
      }
    }
    while (low_ < settled_.size() && settled_[low_] != 0) ++low_;
    return n;
  }

 private:
  std::vector<uint8_t> settled_;
  uint64_t low_ = 1;  // lowest unsettled publish number
};

// Blocks until the connection has something to read or `timeout` passed. librabbitmq's own
// waits count whole milliseconds, rounded down, so a shorter wait would spin.
void WaitReadable(amqp_connection_state_t st, absl::Duration timeout) {
  if (amqp_data_in_buffer(st) || amqp_frames_enqueued(st)) return;
  pollfd p{.fd = amqp_get_sockfd(st), .events = POLLIN, .revents = 0};
  const timespec ts = absl::ToTimespec(std::max(timeout, absl::ZeroDuration()));
  ppoll(&p, 1, &ts, nullptr);
}

}  // namespace

double PublishResult::ConfirmedPerSecond() const {
  const double s = absl::ToDoubleSeconds(elapsed);
  return s > 0 ? static_cast<double>(confirmed) / s : 0;
}

double ConsumeResult::PerSecond() const {
  const double s = absl::ToDoubleSeconds(elapsed);
  return s > 0 ? static_cast<double>(consumed) / s : 0;
}

PublishResult PublishConfirmed(const BrokerAddress& broker, const PublishOptions& options) {
  PublishResult result;
  absl::StatusOr<std::unique_ptr<RawConnection>> conn = RawConnection::Open(broker);
  if (!conn.ok()) {
    result.status = conn.status();
    return result;
  }
  amqp_connection_state_t st = (*conn)->state();
  amqp_confirm_select(st, kChannel);
  if (absl::Status s = (*conn)->Last("confirm.select"); !s.ok()) {
    result.status = s;
    return result;
  }
  Confirms confirms(options.count);
  // Publish number (from 1) -> CLOCK_MONOTONIC ns of its publish, with confirm_latency.
  std::vector<int64_t> sent_ns(options.confirm_latency ? options.count + 2 : 0);
  auto on_acked = [&](uint64_t seq) {
    if (!options.confirm_latency || seq >= sent_ns.size()) return;
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    result.confirm_latency_ns.push_back(int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec -
                                        sent_ns[seq]);
  };
  std::string body, id;
  const std::string content_type = "application/json";
  const absl::Time start = absl::Now();
  const absl::Time stop_publishing = start + options.max_duration;
  // Confirms are still awaited this long after the last publish.
  const absl::Time drain_deadline = stop_publishing + absl::Seconds(15);
  const absl::Duration interval =
      options.rate > 0 ? absl::Seconds(1) / options.rate : absl::ZeroDuration();
  absl::Time last_confirm = start;
  bool publishing = true;

  // Reads the frames that arrive within `timeout` (at least those already buffered).
  auto read_frames = [&](absl::Duration timeout) -> absl::Status {
    WaitReadable(st, timeout);
    for (int n = 0; n < 4096; ++n) {
      amqp_frame_t frame;
      timeval tv{0, 0};  // only what is ready now
      const int rc = amqp_simple_wait_frame_noblock(st, &frame, &tv);
      if (rc == AMQP_STATUS_TIMEOUT) break;
      if (rc != AMQP_STATUS_OK) {
        return absl::UnavailableError(absl::StrCat("reading confirms: ", amqp_error_string2(rc)));
      }
      if (frame.frame_type != AMQP_FRAME_METHOD) continue;
      const amqp_method_t& m = frame.payload.method;
      if (m.id == AMQP_BASIC_ACK_METHOD) {
        const auto* a = static_cast<const amqp_basic_ack_t*>(m.decoded);
        result.confirmed += confirms.Settle(a->delivery_tag, a->multiple, on_acked);
        last_confirm = absl::Now();
      } else if (m.id == AMQP_BASIC_NACK_METHOD) {
        const auto* a = static_cast<const amqp_basic_nack_t*>(m.decoded);
        result.nacked += confirms.Settle(a->delivery_tag, a->multiple, [](uint64_t) {});
        last_confirm = absl::Now();
      } else if (m.id == AMQP_CHANNEL_CLOSE_METHOD || m.id == AMQP_CONNECTION_CLOSE_METHOD) {
        return absl::FailedPreconditionError("the broker closed the channel while publishing");
      }
    }
    amqp_maybe_release_buffers(st);
    return absl::OkStatus();
  };

  for (;;) {
    const uint64_t settled = result.confirmed + result.nacked;
    const absl::Time now = absl::Now();
    if (publishing && (result.published >= options.count || now >= stop_publishing ||
                       (options.stop != nullptr && options.stop->load()))) {
      publishing = false;
    }
    if (!publishing && settled >= result.published) break;
    if (!publishing && now >= drain_deadline) {
      result.status = absl::DeadlineExceededError(
          absl::StrCat(result.published - settled, " publishes never confirmed"));
      break;
    }
    const bool window_open = result.published - settled < options.window;
    absl::Duration wait = absl::Milliseconds(100);
    if (publishing && window_open) {
      const absl::Time due = start + interval * static_cast<double>(result.published);
      if (interval == absl::ZeroDuration() || due <= now) {
        options.make(result.published, &body, &id);
        amqp_basic_properties_t props{};
        props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
                       AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG;
        props.delivery_mode = 2;
        props.content_type = Bytes(content_type);
        props.message_id = Bytes(id);
        props.correlation_id = Bytes(id);
        if (!options.type.empty()) {
          props._flags |= AMQP_BASIC_TYPE_FLAG;
          props.type = Bytes(options.type);
        }
        amqp_table_entry_t partner_header;
        if (options.lane_shaped) {
          partner_header.key = amqp_cstring_bytes("x-ess-partner");
          partner_header.value.kind = AMQP_FIELD_KIND_UTF8;
          partner_header.value.value.bytes = amqp_cstring_bytes("bench_partner");
          props._flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
          props.headers = {.num_entries = 1, .entries = &partner_header};
          props.timestamp = static_cast<uint64_t>(absl::ToUnixSeconds(absl::Now()));
        }
        const int rc =
            amqp_basic_publish(st, kChannel, Bytes(options.exchange), Bytes(options.routing_key),
                               /*mandatory=*/options.lane_shaped ? 1 : 0,
                               /*immediate=*/0, &props, Bytes(body));
        if (rc != AMQP_STATUS_OK) {
          result.status = absl::UnavailableError(absl::StrCat("publish: ", amqp_error_string2(rc)));
          break;
        }
        ++result.published;
        if (options.confirm_latency) {
          timespec ts;
          clock_gettime(CLOCK_MONOTONIC, &ts);
          sent_ns[result.published] = int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
        }
        // Look at the confirms now and then without blocking (paced: the wait for the next
        // publish reads them).
        if (interval != absl::ZeroDuration() || result.published % 64 != 0) continue;
        wait = absl::ZeroDuration();
      } else {
        wait = std::min(wait, due - now);  // reading confirms until the next publish is due
      }
    }
    if (absl::Status s = read_frames(wait); !s.ok()) {
      result.status = s;
      break;
    }
  }
  result.elapsed = last_confirm - start;
  return result;
}

ConsumeResult ConsumeAcked(const BrokerAddress& broker, const ConsumeOptions& options) {
  ConsumeResult result;
  absl::StatusOr<std::unique_ptr<RawConnection>> conn = RawConnection::Open(broker);
  if (!conn.ok()) {
    result.status = conn.status();
    return result;
  }
  amqp_connection_state_t st = (*conn)->state();
  amqp_basic_qos(st, kChannel, 0, options.prefetch, 0);
  if (absl::Status s = (*conn)->Last("basic.qos"); !s.ok()) {
    result.status = s;
    return result;
  }
  amqp_basic_consume(st, kChannel, Bytes(options.queue), amqp_empty_bytes, 0, /*no_ack=*/0, 0,
                     amqp_empty_table);
  if (absl::Status s = (*conn)->Last("basic.consume"); !s.ok()) {
    result.status = s;
    return result;
  }
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + options.max_duration;
  uint64_t last_tag = 0, acked_tag = 0;
  auto ack = [&]() -> absl::Status {
    if (last_tag == acked_tag) return absl::OkStatus();
    if (int rc = amqp_basic_ack(st, kChannel, last_tag, /*multiple=*/1); rc != AMQP_STATUS_OK) {
      return absl::UnavailableError(absl::StrCat("basic.ack: ", amqp_error_string2(rc)));
    }
    acked_tag = last_tag;
    return absl::OkStatus();
  };
  absl::Time last_ack = start;
  while (result.consumed < options.count && absl::Now() < deadline) {
    // Nothing buffered: the ack goes out before blocking, so the prefetch window refills.
    if (!amqp_data_in_buffer(st) && !amqp_frames_enqueued(st)) {
      if (absl::Status s = ack(); !s.ok()) {
        result.status = s;
        break;
      }
      last_ack = absl::Now();
    }
    amqp_maybe_release_buffers(st);
    amqp_envelope_t envelope;
    timeval tv = absl::ToTimeval(absl::Milliseconds(200));
    amqp_rpc_reply_t reply = amqp_consume_message(st, &envelope, &tv, 0);
    if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        reply.library_error == AMQP_STATUS_TIMEOUT) {
      continue;
    }
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
      result.status = ReplyStatus(reply, "consume");
      break;
    }
    last_tag = envelope.delivery_tag;
    ++result.consumed;
    if (options.on_message) {
      options.on_message(std::string_view(static_cast<const char*>(envelope.message.body.bytes),
                                          envelope.message.body.len));
    }
    amqp_destroy_envelope(&envelope);
    if (last_tag - acked_tag >= options.ack_every) {
      if (absl::Status s = ack(); !s.ok()) {
        result.status = s;
        break;
      }
      last_ack = absl::Now();
    }
  }
  if (result.status.ok()) {
    result.status = ack();
    last_ack = absl::Now();
  }
  result.elapsed = last_ack - start;
  return result;
}

absl::StatusOr<QueueState> QueueInfo(const BrokerAddress& broker, const std::string& queue) {
  absl::StatusOr<std::unique_ptr<RawConnection>> conn = RawConnection::Open(broker);
  if (!conn.ok()) return conn.status();
  const amqp_queue_declare_ok_t* ok = amqp_queue_declare((*conn)->state(), kChannel, Bytes(queue),
                                                         /*passive=*/1, 0, 0, 0, amqp_empty_table);
  if (absl::Status s = (*conn)->Last(absl::StrCat("queue ", queue)); !s.ok()) return s;
  return QueueState{.messages = ok->message_count, .consumers = ok->consumer_count};
}

}  // namespace ess::bench
