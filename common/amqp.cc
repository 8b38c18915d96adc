#include "common/amqp.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <deque>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/thread_name.h"

namespace ess::amqp {
namespace {

// Channel of the consumer, of the publisher and of Connection's calls.
constexpr amqp_channel_t kChannel = 1;
// A content header frame around the properties: the frame's header (type, channel, size: 7
// bytes) and end (1), and the content header's class, weight and body size (12).
constexpr size_t kContentHeaderOverhead = 20;
constexpr absl::Duration kMinBackoff = absl::Milliseconds(100);
constexpr absl::Duration kMaxBackoff = absl::Seconds(5);
// How long an ack held back by an older unsettled delivery waits to be coalesced.
constexpr absl::Duration kStrandedAckDelay = absl::Milliseconds(5);
// Graceful close of a connection being shut down.
constexpr absl::Duration kCloseTimeout = absl::Seconds(2);
constexpr char kBlocked[] = "the amqp broker blocks publishing (memory or disk alarm)";
// Frames handled per event-loop turn before looking at the command queue again.
constexpr int kMaxFramesPerTurn = 512;
// Consumer delivery tags: connection epoch in the high bits, the broker's tag in the low bits.
constexpr int kEpochShift = 40;
constexpr uint64_t kBrokerTagMask = (uint64_t{1} << kEpochShift) - 1;

absl::string_view View(std::string_view s) { return absl::string_view(s.data(), s.size()); }

amqp_bytes_t Bytes(std::string_view s) {
  amqp_bytes_t b;
  b.len = s.size();
  b.bytes = const_cast<char*>(s.data());
  return b;
}

// AMQP "short strings" (exchange, routing key, the properties below, header names) hold at most
// 255 bytes; librabbitmq-c cannot encode a longer one, and its error would look like a broken
// connection. INVALID_ARGUMENT naming the field, for that publish alone.
absl::Status CheckShortStrings(std::string_view exchange, std::string_view routing_key,
                               const Message& m) {
  constexpr size_t kMax = 255;
  const std::pair<std::string_view, std::string_view> fields[] = {
      {"exchange", exchange},
      {"routing key", routing_key},
      {"message_id", m.message_id},
      {"correlation_id", m.correlation_id},
      {"type", m.type},
      {"content_type", m.content_type},
      {"expiration", m.expiration}};
  for (const auto& [name, value] : fields) {
    if (value.size() > kMax) {
      return absl::InvalidArgumentError(absl::StrCat("amqp: the message's ", View(name), " has ",
                                                     value.size(), " bytes; at most ", kMax));
    }
  }
  for (const auto& [name, value] : m.headers) {
    if (name.size() > kMax) {
      return absl::InvalidArgumentError(
          absl::StrCat("amqp: a header name has ", name.size(), " bytes; at most ", kMax));
    }
  }
  return absl::OkStatus();
}

// The size of the message's basic properties (its headers included: "headers" in errors) as
// librabbitmq-c encodes them into the content header frame (class Properties below sets them):
// the flags, each short string set (a length byte and its bytes), delivery mode, timestamp, and
// the headers table (its length, then per entry the name as a short string, a type byte and a
// long string: a 4-byte length and its bytes). AmqpTest.HeadersTooLargeForTheFrameFailThat-
// PublishAlone publishes a message of exactly the largest size this allows.
size_t PropertiesSize(const Message& m) {
  size_t n = 2 + 1 + 8;  // flags, delivery_mode, timestamp
  for (const std::string* s :
       {&m.content_type, &m.correlation_id, &m.message_id, &m.type, &m.expiration}) {
    if (!s->empty()) n += 1 + s->size();
  }
  if (!m.headers.empty()) {
    n += 4;
    for (const auto& [k, v] : m.headers) n += 1 + k.size() + 1 + 4 + v.size();
  }
  return n;
}

// Whether the message's properties fit the content header frame of a connection whose frames
// hold `frame_max` bytes. librabbitmq-c sends basic.publish's method frame before it finds that
// they do not, which leaves the connection broken: so this is checked first.
absl::Status CheckFitsFrame(const Message& m, size_t frame_max) {
  const size_t size = PropertiesSize(m);
  const size_t max = frame_max > kContentHeaderOverhead ? frame_max - kContentHeaderOverhead : 0;
  if (size <= max) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("amqp: headers of ", size, " bytes do not fit the frame (max ", max, ")"));
}

std::string_view ViewOf(amqp_bytes_t b) {
  return b.len == 0 ? std::string_view()
                    : std::string_view(static_cast<const char*>(b.bytes), b.len);
}

std::string StringOf(amqp_bytes_t b) { return std::string(ViewOf(b)); }

amqp_table_entry_t Utf8Entry(std::string_view key, std::string_view value) {
  amqp_table_entry_t e;
  e.key = Bytes(key);
  e.value.kind = AMQP_FIELD_KIND_UTF8;
  e.value.value.bytes = Bytes(value);
  return e;
}

amqp_table_entry_t BoolEntry(std::string_view key, bool value) {
  amqp_table_entry_t e;
  e.key = Bytes(key);
  e.value.kind = AMQP_FIELD_KIND_BOOLEAN;
  e.value.value.boolean = value ? 1 : 0;
  return e;
}

amqp_table_t Table(std::vector<amqp_table_entry_t>& entries) {
  amqp_table_t t;
  t.num_entries = static_cast<int>(entries.size());
  t.entries = entries.empty() ? nullptr : entries.data();
  return t;
}

absl::Status LibraryError(int code, std::string_view what) {
  return absl::UnavailableError(absl::StrCat(View(what), ": ", amqp_error_string2(code)));
}

// The status for a channel.close or connection.close sent by the broker.
absl::Status BrokerError(uint16_t code, amqp_bytes_t text, std::string_view what, bool connection) {
  std::string msg =
      absl::StrCat(View(what), ": broker closed the ", connection ? "connection" : "channel", ": ",
                   code, " ", View(ViewOf(text)));
  switch (code) {
    case AMQP_NOT_FOUND:
      return absl::NotFoundError(msg);
    case AMQP_ACCESS_REFUSED:
      return absl::PermissionDeniedError(msg);
    case AMQP_CONNECTION_FORCED:
      return absl::UnavailableError(msg);
    default:
      return absl::FailedPreconditionError(msg);
  }
}

// Renders a received header value as text; false for tables, arrays and other structures.
bool HeaderText(const amqp_field_value_t& v, std::string* out) {
  switch (v.kind) {
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
      *out = StringOf(v.value.bytes);
      return true;
    case AMQP_FIELD_KIND_BOOLEAN:
      *out = v.value.boolean ? "true" : "false";
      return true;
    case AMQP_FIELD_KIND_I8:
      *out = absl::StrCat(v.value.i8);
      return true;
    case AMQP_FIELD_KIND_U8:
      *out = absl::StrCat(v.value.u8);
      return true;
    case AMQP_FIELD_KIND_I16:
      *out = absl::StrCat(v.value.i16);
      return true;
    case AMQP_FIELD_KIND_U16:
      *out = absl::StrCat(v.value.u16);
      return true;
    case AMQP_FIELD_KIND_I32:
      *out = absl::StrCat(v.value.i32);
      return true;
    case AMQP_FIELD_KIND_U32:
      *out = absl::StrCat(v.value.u32);
      return true;
    case AMQP_FIELD_KIND_I64:
      *out = absl::StrCat(v.value.i64);
      return true;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP:
      *out = absl::StrCat(v.value.u64);
      return true;
    case AMQP_FIELD_KIND_F32:
      *out = absl::StrCat(v.value.f32);
      return true;
    case AMQP_FIELD_KIND_F64:
      *out = absl::StrCat(v.value.f64);
      return true;
    default:
      return false;
  }
}

Message ToMessage(const amqp_basic_properties_t& p, amqp_bytes_t body) {
  Message m;
  m.body = StringOf(body);
  const amqp_flags_t f = p._flags;
  m.content_type = (f & AMQP_BASIC_CONTENT_TYPE_FLAG) ? StringOf(p.content_type) : std::string();
  if (f & AMQP_BASIC_CORRELATION_ID_FLAG) m.correlation_id = StringOf(p.correlation_id);
  if (f & AMQP_BASIC_MESSAGE_ID_FLAG) m.message_id = StringOf(p.message_id);
  if (f & AMQP_BASIC_TYPE_FLAG) m.type = StringOf(p.type);
  m.persistent = (f & AMQP_BASIC_DELIVERY_MODE_FLAG) && p.delivery_mode == 2;
  if (f & AMQP_BASIC_TIMESTAMP_FLAG) m.timestamp = static_cast<int64_t>(p.timestamp);
  if (f & AMQP_BASIC_HEADERS_FLAG) {
    m.headers.reserve(p.headers.num_entries);
    for (int i = 0; i < p.headers.num_entries; ++i) {
      const amqp_table_entry_t& e = p.headers.entries[i];
      std::string value;
      if (HeaderText(e.value, &value)) m.headers.emplace_back(StringOf(e.key), std::move(value));
    }
  }
  return m;
}

// basic.publish properties of a Message; points into the Message, which must outlive it.
class Properties {
 public:
  explicit Properties(const Message& m) {
    props_._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
    props_.delivery_mode = m.persistent ? 2 : 1;
    props_.timestamp =
        static_cast<uint64_t>(m.timestamp != 0 ? m.timestamp : absl::ToUnixSeconds(absl::Now()));
    auto set = [this](const std::string& value, amqp_flags_t flag, amqp_bytes_t& field) {
      if (value.empty()) return;
      props_._flags |= flag;
      field = Bytes(value);
    };
    set(m.content_type, AMQP_BASIC_CONTENT_TYPE_FLAG, props_.content_type);
    set(m.correlation_id, AMQP_BASIC_CORRELATION_ID_FLAG, props_.correlation_id);
    set(m.message_id, AMQP_BASIC_MESSAGE_ID_FLAG, props_.message_id);
    set(m.type, AMQP_BASIC_TYPE_FLAG, props_.type);
    set(m.expiration, AMQP_BASIC_EXPIRATION_FLAG, props_.expiration);
    if (!m.headers.empty()) {
      headers_.reserve(m.headers.size());
      for (const auto& [k, v] : m.headers) headers_.push_back(Utf8Entry(k, v));
      props_._flags |= AMQP_BASIC_HEADERS_FLAG;
      props_.headers = Table(headers_);
    }
  }
  Properties(const Properties&) = delete;
  Properties& operator=(const Properties&) = delete;

  const amqp_basic_properties_t* get() const { return &props_; }

 private:
  amqp_basic_properties_t props_{};
  std::vector<amqp_table_entry_t> headers_;
};

// An eventfd that wakes a thread blocked in poll().
class Wakeup {
 public:
  Wakeup() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (fd_ < 0) {
      ESS_LOG(kError, "") << "amqp: eventfd failed: errno " << errno;
      std::abort();
    }
  }
  ~Wakeup() { close(fd_); }
  Wakeup(const Wakeup&) = delete;
  Wakeup& operator=(const Wakeup&) = delete;

  void Signal() {
    const uint64_t one = 1;
    // Only fails when the counter would overflow, in which case it is readable anyway.
    [[maybe_unused]] ssize_t n = write(fd_, &one, sizeof(one));
  }
  void Drain() {
    uint64_t value;
    [[maybe_unused]] ssize_t n = read(fd_, &value, sizeof(value));
  }
  int fd() const { return fd_; }

 private:
  const int fd_;
};

// Blocks until `socket_fd` (if >= 0) is readable, `wakeup` fired (then drained) or `timeout`
// passed. Returns true if woken.
bool WaitFor(int socket_fd, Wakeup& wakeup, absl::Duration timeout) {
  pollfd fds[2];
  fds[0] = {.fd = wakeup.fd(), .events = POLLIN, .revents = 0};
  fds[1] = {.fd = socket_fd, .events = POLLIN, .revents = 0};
  const int n = socket_fd >= 0 ? 2 : 1;
  int ms = -1;
  if (timeout != absl::InfiniteDuration()) {
    ms = static_cast<int>(std::clamp<int64_t>(
        absl::ToInt64Milliseconds(absl::Ceil(timeout, absl::Milliseconds(1))), 0, 1 << 30));
  }
  if (poll(fds, n, ms) <= 0) return false;  // timeout or EINTR
  if (fds[0].revents != 0) {
    wakeup.Drain();
    return true;
  }
  return false;
}

// While it lives, the socket holds back partial segments (TCP_CORK), so that the frames of
// several messages written in one turn leave together. librabbitmq-c ends every basic.publish
// with a send that flushes; without this, each publish is a TCP segment of its own and the broker
// wakes once per message instead of once per batch.
class Cork {
 public:
  Cork(int fd, bool on) : fd_(on ? fd : -1) { Set(1); }
  ~Cork() { Set(0); }  // uncorking sends what is held at once
  Cork(const Cork&) = delete;
  Cork& operator=(const Cork&) = delete;

 private:
  void Set(int value) {
    if (fd_ >= 0) setsockopt(fd_, IPPROTO_TCP, TCP_CORK, &value, sizeof(value));
  }
  const int fd_;
};

class Backoff {
 public:
  absl::Duration Next() {
    absl::Duration d = next_;
    next_ = std::min(next_ * 2, kMaxBackoff);
    return d;
  }
  void Reset() { next_ = kMinBackoff; }

 private:
  absl::Duration next_ = kMinBackoff;
};

// One AMQP connection (librabbitmq-c state), used by one thread at a time. Tracks whether the
// connection is still usable and which channels the broker has closed.
class Session {
 public:
  static absl::StatusOr<std::unique_ptr<Session>> Open(const ConnectionOptions& options);

  ~Session() {
    if (logged_in_ && !broken_) {
      timeval tv = absl::ToTimeval(kCloseTimeout);
      amqp_set_rpc_timeout(state_, &tv);
      amqp_connection_close(state_, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(state_);
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  amqp_connection_state_t state() const { return state_; }
  int fd() const { return amqp_get_sockfd(state_); }
  bool broken() const { return broken_; }
  bool channel_open(amqp_channel_t ch) const { return ch < kChannels && open_[ch]; }
  // How long the owner may sleep and still send heartbeats in time.
  absl::Duration tick() const {
    const int hb = amqp_get_heartbeat(state_);
    return hb > 0 ? absl::Seconds(hb) / 3 : absl::InfiniteDuration();
  }

  // The outcome of an RPC on `channel`. A broker close is acknowledged (close-ok): a closed
  // channel can be reopened, a closed connection is broken.
  absl::Status Check(amqp_rpc_reply_t reply, amqp_channel_t channel, std::string_view what) {
    switch (reply.reply_type) {
      case AMQP_RESPONSE_NORMAL:
        return absl::OkStatus();
      case AMQP_RESPONSE_SERVER_EXCEPTION:
        return OnClose(reply.reply, channel, what);
      case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        broken_ = true;
        if (reply.library_error == AMQP_STATUS_TIMEOUT) {
          return absl::DeadlineExceededError(
              absl::StrCat(View(what), ": no answer from the broker in time"));
        }
        return LibraryError(reply.library_error, what);
      default:
        broken_ = true;
        return absl::InternalError(absl::StrCat(View(what), ": no RPC reply"));
    }
  }
  absl::Status CheckLast(amqp_channel_t channel, std::string_view what) {
    absl::Status s = Check(amqp_get_rpc_reply(state_), channel, what);
    amqp_maybe_release_buffers_on_channel(state_, channel);
    return s;
  }
  // A send that failed leaves the connection in an unknown state.
  absl::Status CheckSend(int rc, std::string_view what) {
    if (rc == AMQP_STATUS_OK) return absl::OkStatus();
    broken_ = true;
    return LibraryError(rc, what);
  }

  // Handles an unsolicited channel.close / connection.close frame.
  absl::Status OnCloseFrame(const amqp_frame_t& frame, std::string_view what) {
    return OnClose(frame.payload.method, frame.channel, what);
  }

  absl::Status OpenChannel(amqp_channel_t ch) {
    if (ch >= kChannels) return absl::InvalidArgumentError("channel number out of range");
    amqp_channel_open(state_, ch);
    absl::Status s = CheckLast(ch, "channel.open");
    if (s.ok()) open_[ch] = true;
    return s;
  }

  absl::Status SelectConfirms(amqp_channel_t ch) {
    amqp_confirm_select(state_, ch);
    return CheckLast(ch, "confirm.select");
  }

  absl::Status Apply(amqp_channel_t ch, const Topology& topology) {
    for (const ExchangeSpec& e : topology.exchanges) {
      if (e.name.empty()) continue;  // the default exchange always exists
      amqp_exchange_declare(state_, ch, Bytes(e.name), Bytes(e.type), /*passive=*/0, e.durable,
                            /*auto_delete=*/0, /*internal=*/0, amqp_empty_table);
      if (absl::Status s = CheckLast(ch, absl::StrCat("exchange.declare ", e.name)); !s.ok()) {
        return s;
      }
    }
    for (const QueueSpec& q : topology.queues) {
      std::vector<amqp_table_entry_t> args;
      args.reserve(q.string_args.size() + q.int_args.size());
      for (const auto& [k, v] : q.string_args) args.push_back(Utf8Entry(k, v));
      for (const auto& [k, v] : q.int_args) {
        amqp_table_entry_t e;
        e.key = Bytes(k);
        e.value.kind = AMQP_FIELD_KIND_I64;
        e.value.value.i64 = v;
        args.push_back(e);
      }
      amqp_queue_declare(state_, ch, Bytes(q.name), /*passive=*/0, q.durable, q.exclusive,
                         q.auto_delete, Table(args));
      if (absl::Status s = CheckLast(ch, absl::StrCat("queue.declare ", q.name)); !s.ok()) {
        return s;
      }
    }
    for (const BindingSpec& b : topology.bindings) {
      amqp_queue_bind(state_, ch, Bytes(b.queue), Bytes(b.exchange), Bytes(b.routing_key),
                      amqp_empty_table);
      if (absl::Status s = CheckLast(ch, absl::StrCat("queue.bind ", b.queue, " to ", b.exchange));
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  // The frame size negotiated with the broker.
  size_t frame_max() const { return static_cast<size_t>(amqp_get_frame_max(state_)); }

  // Sends a mandatory basic.publish; the confirm, if any, is the caller's to wait for. A message
  // whose properties do not fit a frame is refused (INVALID_ARGUMENT) before anything is sent:
  // the connection stays usable.
  absl::Status Publish(amqp_channel_t ch, std::string_view exchange, std::string_view routing_key,
                       const Message& message) {
    if (absl::Status s = CheckFitsFrame(message, frame_max()); !s.ok()) return s;
    Properties props(message);
    return CheckSend(
        amqp_basic_publish(state_, ch, Bytes(exchange), Bytes(routing_key),
                           /*mandatory=*/1, /*immediate=*/0, props.get(), Bytes(message.body)),
        "basic.publish");
  }

  // Reads the content (header and body frames) following basic.deliver, basic.return or
  // basic.get-ok on `ch`.
  absl::StatusOr<Message> ReadContent(amqp_channel_t ch) {
    amqp_message_t raw;
    amqp_rpc_reply_t reply = amqp_read_message(state_, ch, &raw, 0);
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) return Check(reply, ch, "read content");
    Message m = ToMessage(raw.properties, raw.body);
    amqp_destroy_message(&raw);
    return m;
  }

  // Next frame if one arrives within `timeout` (zero: only what is already buffered or
  // readable now); false if none. Frame memory stays valid until the next call. Sends
  // heartbeats when due and fails with UNAVAILABLE when the broker's heartbeats stopped.
  absl::StatusOr<bool> NextFrame(amqp_frame_t* frame, absl::Duration timeout) {
    if (last_channel_ >= 0) {
      amqp_maybe_release_buffers_on_channel(state_, static_cast<amqp_channel_t>(last_channel_));
      last_channel_ = -1;
    }
    timeval tv = absl::ToTimeval(std::max(timeout, absl::ZeroDuration()));
    const int rc = amqp_simple_wait_frame_noblock(
        state_, frame, timeout == absl::InfiniteDuration() ? nullptr : &tv);
    if (rc == AMQP_STATUS_TIMEOUT) return false;
    if (rc != AMQP_STATUS_OK) {
      broken_ = true;
      return LibraryError(rc, "connection lost");
    }
    last_channel_ = frame->channel;
    return true;
  }

 private:
  static constexpr amqp_channel_t kChannels = 3;

  explicit Session(amqp_connection_state_t state) : state_(state) {}

  absl::Status OnClose(const amqp_method_t& method, amqp_channel_t channel, std::string_view what) {
    if (method.id == AMQP_CHANNEL_CLOSE_METHOD) {
      const auto* m = static_cast<const amqp_channel_close_t*>(method.decoded);
      absl::Status s = BrokerError(m->reply_code, m->reply_text, what, /*connection=*/false);
      if (channel < kChannels) open_[channel] = false;
      amqp_channel_close_ok_t ok{};
      if (amqp_send_method(state_, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) != AMQP_STATUS_OK) {
        broken_ = true;
      }
      return s;
    }
    broken_ = true;
    if (method.id == AMQP_CONNECTION_CLOSE_METHOD) {
      const auto* m = static_cast<const amqp_connection_close_t*>(method.decoded);
      absl::Status s = BrokerError(m->reply_code, m->reply_text, what, /*connection=*/true);
      amqp_connection_close_ok_t ok{};
      amqp_send_method(state_, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
      // A close the broker initiated (forced, shutdown) is transient from our side.
      if (m->reply_code == AMQP_CONNECTION_FORCED || m->reply_code == AMQP_REPLY_SUCCESS) {
        return absl::UnavailableError(s.message());
      }
      return s;
    }
    return absl::InternalError(
        absl::StrCat(View(what), ": unexpected method ", amqp_method_name(method.id)));
  }

  amqp_connection_state_t state_;
  bool logged_in_ = false;
  bool broken_ = false;
  bool open_[kChannels] = {false, false, false};
  int last_channel_ = -1;
};

absl::StatusOr<std::unique_ptr<Session>> Session::Open(const ConnectionOptions& options) {
  amqp_connection_state_t state = amqp_new_connection();
  if (state == nullptr) return absl::ResourceExhaustedError("amqp_new_connection failed");
  std::unique_ptr<Session> session(new Session(state));

  const std::string where = absl::StrCat(options.host, ":", options.port);
  amqp_socket_t* socket = amqp_tcp_socket_new(state);
  if (socket == nullptr) return absl::ResourceExhaustedError("amqp_tcp_socket_new failed");
  timeval connect_tv = absl::ToTimeval(options.connect_timeout);
  if (int rc = amqp_socket_open_noblock(socket, options.host.c_str(), options.port, &connect_tv);
      rc != AMQP_STATUS_OK) {
    return LibraryError(rc, absl::StrCat("connect to ", where));
  }
  amqp_set_handshake_timeout(state, &connect_tv);
  timeval rpc_tv = absl::ToTimeval(options.rpc_timeout);
  amqp_set_rpc_timeout(state, &rpc_tv);

  std::vector<amqp_table_entry_t> capabilities = {
      BoolEntry("publisher_confirms", true),
      BoolEntry("basic.nack", true),
      BoolEntry("consumer_cancel_notify", true),
      BoolEntry("connection.blocked", true),
  };
  std::vector<amqp_table_entry_t> properties;
  if (!options.connection_name.empty()) {
    properties.push_back(Utf8Entry("connection_name", options.connection_name));
  }
  amqp_table_entry_t caps;
  caps.key = Bytes("capabilities");
  caps.value.kind = AMQP_FIELD_KIND_TABLE;
  caps.value.value.table = Table(capabilities);
  properties.push_back(caps);
  amqp_table_t properties_table = Table(properties);

  amqp_rpc_reply_t reply = amqp_login_with_properties(
      state, options.vhost.c_str(), /*channel_max=*/0, kFrameMax, options.heartbeat_seconds,
      &properties_table, AMQP_SASL_METHOD_PLAIN, options.user.c_str(), options.password.c_str());
  if (reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
      reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
    const auto* m = static_cast<const amqp_connection_close_t*>(reply.reply.decoded);
    return BrokerError(m->reply_code, m->reply_text, absl::StrCat("login to ", where),
                       /*connection=*/true);
  }
  if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
    return absl::UnavailableError(
        absl::StrCat("login to ", where, ": ",
                     reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                         ? amqp_error_string2(reply.library_error)
                         : "unexpected reply (wrong credentials or vhost?)"));
  }
  session->logged_in_ = true;
  return session;
}

// Publisher confirms bookkeeping for one confirm-mode channel. Publishes are numbered from 1
// in send order; the broker acks or nacks them (`multiple` covers every earlier number) and
// sends basic.return, before the ack, for a mandatory message it could not route. A return
// names no number, so it is matched to the oldest unconfirmed publish with the same exchange,
// routing key and message id (identical messages are interchangeable).
template <typename T>
class ConfirmTracker {
 public:
  enum class Outcome { kAcked, kReturned, kNacked };

  void Reset() {
    entries_.clear();
    next_seq_ = 1;
  }

  void Add(std::string exchange, std::string routing_key, std::string message_id, T payload) {
    entries_.push_back(Entry{.seq = next_seq_++,
                             .exchange = std::move(exchange),
                             .routing_key = std::move(routing_key),
                             .message_id = std::move(message_id),
                             .payload = std::move(payload)});
  }

  void MarkReturned(std::string_view exchange, std::string_view routing_key,
                    std::string_view message_id) {
    for (Entry& e : entries_) {
      if (!e.settled && !e.returned && e.exchange == exchange && e.routing_key == routing_key &&
          e.message_id == message_id) {
        e.returned = true;
        return;
      }
    }
  }

  // Calls fn(T&&, Outcome, const std::string& exchange, const std::string& routing_key) for
  // each publish settled by this ack/nack.
  template <typename Fn>
  void Settle(uint64_t tag, bool multiple, bool acked, Fn&& fn) {
    if (entries_.empty() || tag < entries_.front().seq) return;
    auto finish = [&](Entry& e) {
      if (e.settled) return;
      e.settled = true;
      const Outcome o =
          !acked ? Outcome::kNacked : (e.returned ? Outcome::kReturned : Outcome::kAcked);
      fn(std::move(e.payload), o, e.exchange, e.routing_key);
    };
    const uint64_t index = tag - entries_.front().seq;
    if (multiple) {
      const size_t end = std::min<uint64_t>(index + 1, entries_.size());
      for (size_t i = 0; i < end; ++i) finish(entries_[i]);
    } else if (index < entries_.size()) {
      finish(entries_[index]);
    }
    while (!entries_.empty() && entries_.front().settled) entries_.pop_front();
  }

  bool empty() const { return entries_.empty(); }

  // Hands out every unsettled publish (connection lost) and resets numbering.
  template <typename Fn>
  void FailAll(Fn&& fn) {
    std::deque<Entry> entries;
    entries.swap(entries_);
    Reset();
    for (Entry& e : entries) {
      if (!e.settled) fn(std::move(e.payload));
    }
  }

 private:
  struct Entry {
    uint64_t seq = 0;
    bool settled = false;
    bool returned = false;
    std::string exchange;
    std::string routing_key;
    std::string message_id;
    T payload;
  };
  std::deque<Entry> entries_;
  uint64_t next_seq_ = 1;
};

// The thread behind a Consumer or a Publisher. It keeps one Session up, reconnecting with
// backoff (100 ms doubling to 5 s), and between turns of work sleeps in poll() on the socket and
// a Wakeup, waking at least every third of the heartbeat interval so that heartbeats go out on
// an idle connection. Other threads queue work under their own lock and call Wake().
class SessionLoop {
 public:
  SessionLoop(std::string role, ConnectionOptions options)
      : role_(std::move(role)), options_(std::move(options)) {}
  virtual ~SessionLoop() = default;

  // Connects once on the caller's thread, then runs the loop on a thread of its own, which keeps
  // (re)connecting until Stop(). Returns the result of that first attempt.
  absl::Status Start() {
    absl::MutexLock lifecycle(&lifecycle_mu_);
    if (thread_.joinable()) return absl::FailedPreconditionError(role_ + " already started");
    {
      absl::MutexLock lock(&mu_);
      accepting_ = true;
    }
    stop_ = false;
    absl::Status first = Connect();
    thread_ = std::thread([this, retry = !first.ok()] {
      NameThisThread(absl::StrCat("amqp-", role_));
      Run(retry);
    });
    return first;
  }
  // From its call on no more work is accepted; the loop finishes and the thread is joined.
  void Stop() {
    absl::MutexLock lifecycle(&lifecycle_mu_);
    {
      absl::MutexLock lock(&mu_);
      accepting_ = false;
    }
    if (!thread_.joinable()) return;
    stop_ = true;
    wakeup_.Signal();
    thread_.join();
    DropQueued();
  }
  bool connected() const { return connected_; }
  void Wake() { wakeup_.Signal(); }

 protected:
  // Opens a session and prepares it (channels, topology, consumers); the loop then owns it.
  virtual absl::StatusOr<std::unique_ptr<Session>> Open() = 0;
  // One turn of work on the connected session_; true if more frames may be waiting.
  virtual absl::StatusOr<bool> Turn() = 0;
  // session_ is gone (after `why`): settle or forget the work that depended on it.
  virtual void Lost(const absl::Status& why) = 0;
  // Woken while disconnected: the work queued meanwhile cannot be done.
  virtual void DropQueued() = 0;
  // Stopping: the last work, on session_ if it is still usable; then session_ is closed.
  virtual void Finish() = 0;
  // The loop wakes by then even if nothing happens.
  virtual absl::Time Deadline() const { return absl::InfiniteFuture(); }

  // Frame handlers called by ReadFrames().
  virtual absl::Status OnConfirm(uint64_t tag, bool multiple, bool ack) = 0;
  virtual void OnReturn(const std::string& exchange, const std::string& routing_key,
                        const Message& message) = 0;
  // connection.blocked (`blocked`, with the broker's `reason`, e.g. "low on memory") or
  // connection.unblocked.
  virtual void OnBlocked(bool blocked, std::string reason) {}
  // Any other method (deliveries, consumer cancellations).
  virtual absl::Status OnMethod(const amqp_frame_t& frame) { return absl::OkStatus(); }

  // Handles up to kMaxFramesPerTurn frames; true if more may be waiting.
  absl::StatusOr<bool> ReadFrames() {
    for (int n = 0; n < kMaxFramesPerTurn; ++n) {
      amqp_frame_t frame;
      absl::StatusOr<bool> got = session_->NextFrame(&frame, absl::ZeroDuration());
      if (!got.ok()) return got.status();
      if (!*got) return false;
      if (frame.frame_type != AMQP_FRAME_METHOD) continue;
      const amqp_method_t& method = frame.payload.method;
      absl::Status s;
      switch (method.id) {
        case AMQP_BASIC_ACK_METHOD: {
          const auto* a = static_cast<const amqp_basic_ack_t*>(method.decoded);
          s = OnConfirm(a->delivery_tag, a->multiple, /*ack=*/true);
          break;
        }
        case AMQP_BASIC_NACK_METHOD: {
          const auto* a = static_cast<const amqp_basic_nack_t*>(method.decoded);
          s = OnConfirm(a->delivery_tag, a->multiple, /*ack=*/false);
          break;
        }
        case AMQP_BASIC_RETURN_METHOD: {
          const auto* r = static_cast<const amqp_basic_return_t*>(method.decoded);
          const std::string exchange = StringOf(r->exchange);
          const std::string routing_key = StringOf(r->routing_key);
          absl::StatusOr<Message> content = session_->ReadContent(frame.channel);
          if (!content.ok()) return content.status();
          OnReturn(exchange, routing_key, *content);
          break;
        }
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD:
          return session_->OnCloseFrame(frame, role_);
        case AMQP_CONNECTION_BLOCKED_METHOD:
        case AMQP_CONNECTION_UNBLOCKED_METHOD: {
          const bool blocked = method.id == AMQP_CONNECTION_BLOCKED_METHOD;
          std::string reason;
          if (blocked) {
            reason =
                StringOf(static_cast<const amqp_connection_blocked_t*>(method.decoded)->reason);
            Log(ess::log::Level::kWarn, "amqp broker blocks the connection (resource alarm)",
                reason.empty() ? absl::OkStatus() : absl::ResourceExhaustedError(reason));
          } else {
            Log(ess::log::Level::kInfo, "amqp broker unblocked the connection");
          }
          OnBlocked(blocked, std::move(reason));
          break;
        }
        default:
          s = OnMethod(frame);
          break;
      }
      if (!s.ok()) return s;
    }
    return true;
  }

  void Log(ess::log::Level level, std::string_view msg, const absl::Status& error = {}) {
    if (!ess::log::Enabled(level)) return;
    const std::string_view role = role_;
    const std::string_view connection = options_.connection_name;
    if (error.ok()) {
      ess::log::Write(level, "", msg, {{"role", role}, {"connection", connection}});
    } else {
      ess::log::Write(
          level, "", msg,
          {{"role", role},
           {"connection", connection},
           {"error", std::string_view(error.message().data(), error.message().size())}});
    }
  }

  const std::string role_;
  const ConnectionOptions options_;
  // Guards the derived class's queue of work from other threads, and accepting_.
  absl::Mutex mu_;
  bool accepting_ ABSL_GUARDED_BY(mu_) = false;  // between Start() and Stop()
  std::unique_ptr<Session> session_;
  std::atomic<bool> stop_{false};

 private:
  absl::Status Connect() {
    absl::StatusOr<std::unique_ptr<Session>> s = Open();
    if (!s.ok()) return s.status();
    session_ = *std::move(s);
    connected_ = true;
    return absl::OkStatus();
  }

  void SleepDisconnected(absl::Duration d) {
    const absl::Time until = absl::Now() + d;
    while (!stop_ && absl::Now() < until) {
      WaitFor(-1, wakeup_, until - absl::Now());
      DropQueued();
    }
  }

  // `retry_first`: the attempt Start() made failed, so begin with a backoff.
  void Run(bool retry_first) {
    Backoff backoff;
    if (retry_first) SleepDisconnected(backoff.Next());
    while (!stop_) {
      if (session_ == nullptr) {
        if (absl::Status s = Connect(); !s.ok()) {
          Log(ess::log::Level::kWarn, "amqp cannot connect; retrying", s);
          SleepDisconnected(backoff.Next());
          continue;
        }
        Log(ess::log::Level::kInfo, "amqp connected");
      }
      absl::StatusOr<bool> more = Turn();
      if (!more.ok()) {
        Log(ess::log::Level::kWarn, "amqp connection lost; reconnecting", more.status());
        connected_ = false;
        session_.reset();
        Lost(more.status());
        SleepDisconnected(backoff.Next());
        continue;
      }
      backoff.Reset();
      absl::Duration wait = *more ? absl::ZeroDuration() : session_->tick();
      if (const absl::Time deadline = Deadline(); deadline != absl::InfiniteFuture()) {
        wait = std::min(wait, std::max(absl::ZeroDuration(), deadline - absl::Now()));
      }
      WaitFor(session_->fd(), wakeup_, wait);
    }
    connected_ = false;
    Finish();
    session_.reset();
  }

  absl::Mutex lifecycle_mu_;  // serialises Start and Stop
  Wakeup wakeup_;
  std::thread thread_;
  std::atomic<bool> connected_{false};
};

}  // namespace

absl::Status CheckPublishable(std::string_view exchange, std::string_view routing_key,
                              const Message& message, size_t frame_max) {
  if (absl::Status s = CheckShortStrings(exchange, routing_key, message); !s.ok()) return s;
  return CheckFitsFrame(message, frame_max);
}

// ---------------------------------------------------------------------------------------------
// Connection

struct Connection::Impl {
  ConnectionOptions options;
  std::unique_ptr<Session> session;
  bool confirms = false;   // kChannel is in confirm mode
  uint64_t published = 0;  // publishes on kChannel since confirm.select

  absl::Status Usable() {
    if (session->broken()) {
      return absl::UnavailableError("amqp connection is closed; open a new Connection");
    }
    if (!session->channel_open(kChannel)) {
      confirms = false;
      published = 0;
      return session->OpenChannel(kChannel);
    }
    return absl::OkStatus();
  }

  absl::Status Publish(std::string_view exchange, std::string_view routing_key,
                       const Message& message) {
    if (!confirms) {
      if (absl::Status s = session->SelectConfirms(kChannel); !s.ok()) return s;
      confirms = true;
      published = 0;
    }
    if (absl::Status s = session->Publish(kChannel, exchange, routing_key, message); !s.ok()) {
      return s;
    }
    const uint64_t seq = ++published;
    bool returned = false;
    const absl::Time deadline = absl::Now() + options.rpc_timeout;
    for (;;) {
      amqp_frame_t frame;
      absl::StatusOr<bool> got = session->NextFrame(&frame, deadline - absl::Now());
      if (!got.ok()) return got.status();
      if (!*got) {
        return absl::DeadlineExceededError(
            absl::StrCat("publish to exchange=", View(exchange), " routing_key=", View(routing_key),
                         ": no confirm within ", absl::FormatDuration(options.rpc_timeout)));
      }
      if (frame.frame_type != AMQP_FRAME_METHOD) continue;
      const amqp_method_number_t id = frame.payload.method.id;
      if (id == AMQP_CHANNEL_CLOSE_METHOD || id == AMQP_CONNECTION_CLOSE_METHOD) {
        return session->OnCloseFrame(frame, "basic.publish");
      }
      if (frame.channel != kChannel) continue;
      if (id == AMQP_BASIC_RETURN_METHOD) {
        // Only one publish is outstanding, so the return is ours.
        absl::StatusOr<Message> content = session->ReadContent(kChannel);
        if (!content.ok()) return content.status();
        returned = true;
      } else if (id == AMQP_BASIC_ACK_METHOD || id == AMQP_BASIC_NACK_METHOD) {
        uint64_t tag;
        bool multiple;
        if (id == AMQP_BASIC_ACK_METHOD) {
          const auto* a = static_cast<const amqp_basic_ack_t*>(frame.payload.method.decoded);
          tag = a->delivery_tag;
          multiple = a->multiple;
        } else {
          const auto* n = static_cast<const amqp_basic_nack_t*>(frame.payload.method.decoded);
          tag = n->delivery_tag;
          multiple = n->multiple;
        }
        if (tag != seq && !(multiple && tag > seq)) continue;  // a late confirm of an earlier one
        if (id == AMQP_BASIC_NACK_METHOD) {
          return absl::UnavailableError("publish nacked by the broker");
        }
        if (returned) {
          return absl::FailedPreconditionError(absl::StrCat("unroutable: exchange=", View(exchange),
                                                            " routing_key=", View(routing_key)));
        }
        return absl::OkStatus();
      }
    }
  }
};

Connection::Connection(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Connection::~Connection() = default;

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(const ConnectionOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  absl::StatusOr<std::unique_ptr<Session>> session = Session::Open(options);
  if (!session.ok()) return session.status();
  impl->session = *std::move(session);
  if (absl::Status s = impl->session->OpenChannel(kChannel); !s.ok()) return s;
  return std::unique_ptr<Connection>(new Connection(std::move(impl)));
}

absl::Status Connection::Apply(const Topology& topology) {
  if (absl::Status s = impl_->Usable(); !s.ok()) return s;
  return impl_->session->Apply(kChannel, topology);
}

absl::Status Connection::Publish(std::string_view exchange, std::string_view routing_key,
                                 const Message& message) {
  if (absl::Status s = CheckShortStrings(exchange, routing_key, message); !s.ok()) return s;
  if (absl::Status s = impl_->Usable(); !s.ok()) return s;
  return impl_->Publish(exchange, routing_key, message);
}

absl::StatusOr<Delivery> Connection::Get(std::string_view queue) {
  if (absl::Status s = impl_->Usable(); !s.ok()) return s;
  Session& session = *impl_->session;
  amqp_rpc_reply_t reply = amqp_basic_get(session.state(), kChannel, Bytes(queue), /*no_ack=*/1);
  if (absl::Status s = session.Check(reply, kChannel, absl::StrCat("basic.get ", View(queue)));
      !s.ok()) {
    return s;
  }
  if (reply.reply.id == AMQP_BASIC_GET_EMPTY_METHOD) {
    amqp_maybe_release_buffers_on_channel(session.state(), kChannel);
    return absl::NotFoundError(absl::StrCat("queue ", View(queue), " is empty"));
  }
  const auto* ok = static_cast<const amqp_basic_get_ok_t*>(reply.reply.decoded);
  Delivery d;
  d.delivery_tag = ok->delivery_tag;
  d.queue = std::string(queue);
  d.redelivered = ok->redelivered;
  d.exchange = StringOf(ok->exchange);
  d.routing_key = StringOf(ok->routing_key);
  absl::StatusOr<Message> content = session.ReadContent(kChannel);
  amqp_maybe_release_buffers_on_channel(session.state(), kChannel);
  if (!content.ok()) return content.status();
  d.message = *std::move(content);
  return d;
}

absl::StatusOr<uint32_t> Connection::MessageCount(std::string_view queue) {
  if (absl::Status s = impl_->Usable(); !s.ok()) return s;
  Session& session = *impl_->session;
  const amqp_queue_declare_ok_t* ok = amqp_queue_declare(session.state(), kChannel, Bytes(queue),
                                                         /*passive=*/1, 0, 0, 0, amqp_empty_table);
  const uint32_t count = ok != nullptr ? ok->message_count : 0;
  // A failed passive declare closes the channel; Usable() reopens it on the next call.
  if (absl::Status s = session.CheckLast(kChannel, absl::StrCat("queue ", View(queue))); !s.ok()) {
    return s;
  }
  return count;
}

absl::Status Connection::Purge(std::string_view queue) {
  if (absl::Status s = impl_->Usable(); !s.ok()) return s;
  amqp_queue_purge(impl_->session->state(), kChannel, Bytes(queue));
  return impl_->session->CheckLast(kChannel, absl::StrCat("queue.purge ", View(queue)));
}

absl::Status Connection::DeleteQueue(std::string_view queue) {
  if (absl::Status s = impl_->Usable(); !s.ok()) return s;
  amqp_queue_delete(impl_->session->state(), kChannel, Bytes(queue), /*if_unused=*/0,
                    /*if_empty=*/0);
  return impl_->session->CheckLast(kChannel, absl::StrCat("queue.delete ", View(queue)));
}

absl::Status Connection::DeleteExchange(std::string_view exchange) {
  if (absl::Status s = impl_->Usable(); !s.ok()) return s;
  amqp_exchange_delete(impl_->session->state(), kChannel, Bytes(exchange), /*if_unused=*/0);
  return impl_->session->CheckLast(kChannel, absl::StrCat("exchange.delete ", View(exchange)));
}

// ---------------------------------------------------------------------------------------------
// Consumer

struct Consumer::Impl : public SessionLoop {
  struct Settlement {
    enum class Kind { kAck, kReject };
    Kind kind;
    uint64_t tag;
    bool requeue = false;
  };
  // State of one delivery of the current connection, by broker tag.
  enum class Slot : uint8_t { kPending, kAcked, kDone };

  Impl(Options o, Handler h)
      : SessionLoop("consumer", o.connection), options(std::move(o)), handler(std::move(h)) {
    absl::MutexLock lock(&mu_);
    want.assign(options.queues.size(), options.prefetch);
  }

  // Thread-safe: records the wish (0: paused; else the prefetch to consume with); the loop
  // applies it on its next turn.
  void Want(std::string_view queue, uint16_t prefetch) {
    {
      absl::MutexLock lock(&mu_);
      for (size_t i = 0; i < options.queues.size(); ++i) {
        if (options.queues[i] == queue) want[i] = prefetch;
      }
      want_changed = true;
    }
    Wake();
  }

  static std::string ConsumerTag(size_t i) { return absl::StrCat("ess-", i); }

  // basic.qos (per consumer) applies to the consumers the channel starts after it.
  absl::Status StartConsuming(Session& s, size_t i, uint16_t prefetch) {
    amqp_basic_qos(s.state(), kChannel, 0, prefetch, /*global=*/0);
    absl::Status st = s.CheckLast(kChannel, "basic.qos");
    if (!st.ok()) return st;
    amqp_basic_consume(s.state(), kChannel, Bytes(options.queues[i]), Bytes(ConsumerTag(i)),
                       /*no_local=*/0, /*no_ack=*/0, /*exclusive=*/0, amqp_empty_table);
    st = s.CheckLast(kChannel, absl::StrCat("basic.consume ", options.queues[i]));
    if (st.ok()) consuming[i] = prefetch;
    return st;
  }

  absl::Status StopConsuming(Session& s, size_t i) {
    // Deliveries already on the wire still arrive (librabbitmq queues them meanwhile) and are
    // handed out as usual.
    amqp_basic_cancel(s.state(), kChannel, Bytes(ConsumerTag(i)));
    absl::Status st = s.CheckLast(kChannel, absl::StrCat("basic.cancel ", options.queues[i]));
    if (st.ok()) consuming[i] = 0;
    return st;
  }

  // Brings the consumers of the current connection in line with `want`.
  absl::Status ApplyPauses(bool force) {
    std::vector<uint16_t> wanted;
    {
      absl::MutexLock lock(&mu_);
      if (!want_changed && !force) return absl::OkStatus();
      want_changed = false;
      wanted = want;
    }
    for (size_t i = 0; i < wanted.size(); ++i) {
      if (consuming[i] == wanted[i]) continue;
      if (consuming[i] != 0) {
        if (absl::Status st = StopConsuming(*session_, i); !st.ok()) return st;
      }
      if (wanted[i] != 0) {
        if (absl::Status st = StartConsuming(*session_, i, wanted[i]); !st.ok()) return st;
      }
    }
    return absl::OkStatus();
  }
  ~Impl() override { Stop(); }

  const Options options;
  const Handler handler;
  std::vector<Settlement> settlements ABSL_GUARDED_BY(mu_);
  // Per queue (index of options.queues): the prefetch the owner wants it consumed with (0:
  // paused), and whether that changed since the loop last looked.
  std::vector<uint16_t> want ABSL_GUARDED_BY(mu_);
  bool want_changed ABSL_GUARDED_BY(mu_) = false;
  // Per queue: the prefetch it is consumed with on the current connection, 0 if it is not
  // (loop-owned).
  std::vector<uint16_t> consuming;

  // Owned by the loop (or by Start before the thread exists).
  uint64_t epoch = 0;
  uint64_t base_tag = 1;   // broker tag of slots.front()
  std::deque<Slot> slots;  // deliveries not yet covered by a basic.ack(multiple)
  size_t acked = 0;        // kAcked entries in `slots`
  absl::Time stranded_since = absl::InfiniteFuture();
  std::vector<Settlement> batch;

  void Settle(Settlement s) {
    {
      absl::MutexLock lock(&mu_);
      if (!accepting_) return;
      const bool was_empty = settlements.empty();
      settlements.push_back(std::move(s));
      if (!was_empty) return;
    }
    Wake();
  }

  absl::StatusOr<std::unique_ptr<Session>> Open() override {
    absl::StatusOr<std::unique_ptr<Session>> opened = Session::Open(options.connection);
    if (!opened.ok()) return opened.status();
    Session& s = **opened;
    absl::Status st = s.OpenChannel(kChannel);
    if (st.ok()) st = s.Apply(kChannel, options.topology);
    consuming.assign(options.queues.size(), 0);
    std::vector<uint16_t> wanted;
    {
      absl::MutexLock lock(&mu_);
      wanted = want;
      want_changed = false;
    }
    for (size_t i = 0; st.ok() && i < options.queues.size(); ++i) {
      if (wanted[i] != 0) st = StartConsuming(s, i, wanted[i]);
    }
    if (!st.ok()) return st;
    ++epoch;
    Forget();
    return opened;
  }

  // Drops the delivery bookkeeping of a connection that is gone.
  void Forget() {
    base_tag = 1;
    slots.clear();
    acked = 0;
    stranded_since = absl::InfiniteFuture();
  }

  absl::StatusOr<bool> Turn() override {
    absl::Status s = ApplyPauses(/*force=*/false);
    if (s.ok()) s = ApplySettlements();
    if (s.ok()) s = FlushAcks(/*force=*/false);
    if (!s.ok()) return s;
    return ReadFrames();
  }

  // The broker requeues every unacked delivery of the lost connection.
  void Lost(const absl::Status&) override { Forget(); }

  // Settlements made while disconnected are for deliveries the broker already requeued.
  void DropQueued() override {
    absl::MutexLock lock(&mu_);
    settlements.clear();
  }

  // Sends what was settled; the broker requeues the rest when the connection closes.
  void Finish() override {
    if (session_ == nullptr || session_->broken()) return;
    absl::Status s = ApplySettlements();
    if (s.ok()) s = FlushAcks(/*force=*/true);
  }

  absl::Time Deadline() const override {
    return stranded_since == absl::InfiniteFuture() ? stranded_since
                                                    : stranded_since + kStrandedAckDelay;
  }

  const std::string& QueueOf(std::string_view consumer_tag) const {
    static const std::string kUnknown;
    size_t i;
    if (consumer_tag.substr(0, 4) == "ess-" && absl::SimpleAtoi(View(consumer_tag.substr(4)), &i) &&
        i < options.queues.size()) {
      return options.queues[i];
    }
    return kUnknown;
  }

  Slot* Find(uint64_t broker_tag) {
    if (broker_tag < base_tag || broker_tag - base_tag >= slots.size()) return nullptr;
    return &slots[broker_tag - base_tag];
  }

  void MarkAcked(Slot* slot) {
    *slot = Slot::kAcked;
    ++acked;
  }

  absl::Status RejectNow(uint64_t broker_tag, bool requeue, Slot* slot) {
    *slot = Slot::kDone;
    return session_->CheckSend(
        amqp_basic_reject(session_->state(), kChannel, broker_tag, requeue ? 1 : 0),
        "basic.reject");
  }

  absl::Status Ack(uint64_t broker_tag, bool multiple) {
    return session_->CheckSend(
        amqp_basic_ack(session_->state(), kChannel, broker_tag, multiple ? 1 : 0), "basic.ack");
  }

  absl::Status ApplySettlements() {
    batch.clear();
    {
      absl::MutexLock lock(&mu_);
      batch.swap(settlements);
    }
    for (Settlement& s : batch) {
      if ((s.tag >> kEpochShift) != epoch) continue;  // its connection is gone: redelivered
      const uint64_t broker_tag = s.tag & kBrokerTagMask;
      Slot* slot = Find(broker_tag);
      if (slot == nullptr || *slot != Slot::kPending) {
        ess::log::Warn("", "amqp consumer: delivery settled twice or unknown; ignored",
                       {{"tag", absl::StrCat(s.tag)}});
        continue;
      }
      absl::Status st;
      switch (s.kind) {
        case Settlement::Kind::kAck:
          MarkAcked(slot);
          break;
        case Settlement::Kind::kReject:
          st = RejectNow(broker_tag, s.requeue, slot);
          break;
      }
      if (!st.ok()) return st;
    }
    return absl::OkStatus();
  }

  // Acks the settled prefix with one basic.ack(multiple); acks held back behind an unsettled
  // delivery go one by one once they waited kStrandedAckDelay (or at once when `force`).
  absl::Status FlushAcks(bool force) {
    uint64_t last_acked = 0;
    while (!slots.empty() && (slots.front() == Slot::kAcked || slots.front() == Slot::kDone)) {
      if (slots.front() == Slot::kAcked) {
        last_acked = base_tag;
        --acked;
      }
      slots.pop_front();
      ++base_tag;
    }
    if (last_acked != 0) {
      if (absl::Status s = Ack(last_acked, /*multiple=*/true); !s.ok()) return s;
    }
    if (acked == 0) {
      stranded_since = absl::InfiniteFuture();
      return absl::OkStatus();
    }
    const absl::Time now = absl::Now();
    if (stranded_since == absl::InfiniteFuture()) stranded_since = now;
    if (!force && now - stranded_since < kStrandedAckDelay) return absl::OkStatus();
    for (size_t i = 0; i < slots.size() && acked > 0; ++i) {
      if (slots[i] != Slot::kAcked) continue;
      slots[i] = Slot::kDone;
      --acked;
      if (absl::Status s = Ack(base_tag + i, /*multiple=*/false); !s.ok()) return s;
    }
    stranded_since = absl::InfiniteFuture();
    return absl::OkStatus();
  }

  // The consumer never publishes: no confirms nor returns come back to it.
  absl::Status OnConfirm(uint64_t, bool, bool) override { return absl::OkStatus(); }
  void OnReturn(const std::string&, const std::string&, const Message&) override {}

  absl::Status OnMethod(const amqp_frame_t& frame) override {
    const amqp_method_t& method = frame.payload.method;
    if (method.id == AMQP_BASIC_CANCEL_METHOD) {
      const auto* c = static_cast<const amqp_basic_cancel_t*>(method.decoded);
      return absl::UnavailableError(absl::StrCat("the broker cancelled the consumer of queue ",
                                                 QueueOf(ViewOf(c->consumer_tag)),
                                                 " (queue deleted?)"));
    }
    if (method.id != AMQP_BASIC_DELIVER_METHOD) return absl::OkStatus();
    const auto* d = static_cast<const amqp_basic_deliver_t*>(method.decoded);
    const uint64_t broker_tag = d->delivery_tag;
    if (broker_tag < base_tag + slots.size() || broker_tag > kBrokerTagMask) {
      return absl::InternalError(absl::StrCat("unexpected delivery tag ", broker_tag));
    }
    Delivery delivery;
    delivery.delivery_tag = (epoch << kEpochShift) | broker_tag;
    delivery.queue = QueueOf(ViewOf(d->consumer_tag));
    delivery.redelivered = d->redelivered;
    delivery.exchange = StringOf(d->exchange);
    delivery.routing_key = StringOf(d->routing_key);
    absl::StatusOr<Message> content = session_->ReadContent(frame.channel);
    if (!content.ok()) return content.status();
    delivery.message = *std::move(content);
    // Tags on a channel are consecutive; a gap would only be tags we never saw.
    while (base_tag + slots.size() < broker_tag) slots.push_back(Slot::kDone);
    slots.push_back(Slot::kPending);
    // After Stop() a delivery is not handed out; the broker requeues it on close.
    if (!stop_.load(std::memory_order_relaxed)) handler(std::move(delivery));
    return absl::OkStatus();
  }
};

Consumer::Consumer(Options options, Handler handler)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler))) {}

Consumer::~Consumer() { Stop(); }

absl::Status Consumer::Start() { return impl_->Start(); }

void Consumer::Stop() { impl_->Stop(); }

void Consumer::Ack(uint64_t delivery_tag) {
  impl_->Settle({.kind = Impl::Settlement::Kind::kAck, .tag = delivery_tag});
}

void Consumer::Reject(uint64_t delivery_tag, bool requeue) {
  impl_->Settle({.kind = Impl::Settlement::Kind::kReject, .tag = delivery_tag, .requeue = requeue});
}

void Consumer::Pause(std::string_view queue) { impl_->Want(queue, 0); }

void Consumer::Resume(std::string_view queue, uint16_t prefetch) {
  impl_->Want(queue, prefetch != 0 ? prefetch : impl_->options.prefetch);
}

bool Consumer::connected() const { return impl_->connected(); }

// ---------------------------------------------------------------------------------------------
// Publisher

struct Publisher::Impl : public SessionLoop {
  struct Request {
    std::string exchange;
    std::string routing_key;
    Message message;
    Done done;
    bool hold_while_blocked = false;
  };
  using Tracker = ConfirmTracker<Done>;

  explicit Impl(Options o) : SessionLoop("publisher", o.connection), options(std::move(o)) {}
  ~Impl() override { Stop(); }

  const Options options;
  std::vector<Request> requests ABSL_GUARDED_BY(mu_);
  // The broker blocked this connection (memory or disk alarm): it stops reading from the socket,
  // so publishes fail fast, or wait in `requests` (hold_while_blocked), instead of piling up
  // behind it.
  std::atomic<bool> blocked{false};
  std::atomic<size_t> in_flight{0};  // accepted and not yet completed
  // What the broker gave as the reason of its block, for blocked_by() (readiness, metrics).
  mutable absl::Mutex blocked_mu;
  std::string blocked_reason ABSL_GUARDED_BY(blocked_mu);
  // The frame size the last connection negotiated.
  std::atomic<size_t> frame_max{kFrameMax};

  // Owned by the loop (or by Start before the thread exists).
  Tracker tracker;
  std::vector<Request> batch;
  // Publishes that came while the broker blocked the connection and wait for it to clear, in
  // their order (those of Publish(..., kHold) on a publisher that fails the others fast).
  std::vector<Request> held;

  void Complete(Done done, absl::Status status) {
    in_flight.fetch_sub(1, std::memory_order_relaxed);
    std::move(done)(std::move(status));
  }

  // Queues a publish for the loop, or fails it at once (inline) when it cannot be sent.
  void Enqueue(Request r) {
    absl::Status fail;
    {
      absl::MutexLock lock(&mu_);
      if (!accepting_) {
        fail = absl::UnavailableError("amqp publisher not running");
      } else if (!connected()) {
        fail = absl::UnavailableError("not connected to the amqp broker");
      } else if (blocked.load(std::memory_order_relaxed) && !r.hold_while_blocked) {
        fail = absl::UnavailableError(kBlocked);
      } else if (in_flight.load(std::memory_order_relaxed) >= options.max_in_flight) {
        fail = absl::ResourceExhaustedError(
            absl::StrCat("amqp publisher: ", options.max_in_flight, " publishes in flight"));
      } else {
        in_flight.fetch_add(1, std::memory_order_relaxed);
        const bool was_empty = requests.empty();
        requests.push_back(std::move(r));
        if (!was_empty) return;  // the loop was already woken for the first one
      }
    }
    if (!fail.ok()) {
      std::move(r.done)(std::move(fail));
      return;
    }
    Wake();
  }

  void FailRequests(const absl::Status& why) {
    for (Request& r : held) Complete(std::move(r.done), why);
    held.clear();
    batch.clear();
    {
      absl::MutexLock lock(&mu_);
      batch.swap(requests);
    }
    for (Request& r : batch) Complete(std::move(r.done), why);
    batch.clear();
  }

  absl::StatusOr<std::unique_ptr<Session>> Open() override {
    absl::StatusOr<std::unique_ptr<Session>> opened = Session::Open(options.connection);
    if (!opened.ok()) return opened.status();
    Session& s = **opened;
    absl::Status st = s.OpenChannel(kChannel);
    if (st.ok()) st = s.Apply(kChannel, options.topology);
    if (st.ok()) st = s.SelectConfirms(kChannel);
    if (!st.ok()) return st;
    tracker.Reset();
    SetBlocked(false, "");  // a new connection starts unblocked; the broker says if it is not
    frame_max = s.frame_max();
    return opened;
  }

  absl::StatusOr<bool> Turn() override {
    if (absl::Status s = SendRequests(); !s.ok()) return s;
    return ReadFrames();
  }

  void Lost(const absl::Status& why) override {
    const absl::Status lost = absl::UnavailableError(
        absl::StrCat("amqp connection lost before the broker confirmed: ", why.message()));
    tracker.FailAll([&](Done done) { Complete(std::move(done), lost); });
    FailRequests(lost);
  }

  // Publishes that raced with the disconnect.
  void DropQueued() override {
    FailRequests(absl::UnavailableError("not connected to the amqp broker"));
  }

  void Finish() override {
    const absl::Status stopped = absl::UnavailableError("amqp publisher stopped");
    tracker.FailAll([&](Done done) { Complete(std::move(done), stopped); });
    FailRequests(stopped);
  }

  void OnBlocked(bool b, std::string reason) override {
    SetBlocked(b, std::move(reason));
    if (!b) Wake();  // what waited for the alarm to clear leaves on the next turn
  }

  void SetBlocked(bool b, std::string reason) {
    absl::MutexLock lock(&blocked_mu);
    blocked = b;
    blocked_reason = std::move(reason);
  }

  std::optional<std::string> BlockedBy() const {
    absl::MutexLock lock(&blocked_mu);
    if (!blocked.load(std::memory_order_relaxed)) return std::nullopt;
    return blocked_reason;
  }

  absl::Status SendRequests() {
    if (blocked && options.hold_while_blocked) return absl::OkStatus();
    batch.clear();
    if (!blocked && !held.empty()) batch.swap(held);  // the alarm cleared: they go first
    {
      absl::MutexLock lock(&mu_);
      if (batch.empty()) {
        batch.swap(requests);
      } else {
        std::move(requests.begin(), requests.end(), std::back_inserter(batch));
        requests.clear();
      }
    }
    absl::Status status;
    Cork cork(session_->fd(), batch.size() > 1);
    for (Request& r : batch) {
      if (blocked) {
        if (r.hold_while_blocked) {
          held.push_back(std::move(r));
        } else {
          Complete(std::move(r.done), absl::UnavailableError(kBlocked));
        }
        continue;
      }
      if (!status.ok()) {
        Complete(std::move(r.done), absl::UnavailableError(status.message()));
        continue;
      }
      status = session_->Publish(kChannel, r.exchange, r.routing_key, r.message);
      if (absl::IsInvalidArgument(status)) {
        // Refused before anything was sent (it does not fit a frame): that publish alone fails.
        Complete(std::move(r.done), std::move(status));
        status = absl::OkStatus();
        continue;
      }
      // Tracked even if the send failed: Lost() completes it.
      tracker.Add(std::move(r.exchange), std::move(r.routing_key), std::move(r.message.message_id),
                  std::move(r.done));
    }
    batch.clear();
    return status;
  }

  absl::Status OnConfirm(uint64_t tag, bool multiple, bool ack) override {
    tracker.Settle(
        tag, multiple, ack,
        [&](Done done, Tracker::Outcome outcome, const std::string& exchange,
            const std::string& routing_key) {
          switch (outcome) {
            case Tracker::Outcome::kAcked:
              Complete(std::move(done), absl::OkStatus());
              break;
            case Tracker::Outcome::kReturned:
              Complete(std::move(done),
                       absl::FailedPreconditionError(absl::StrCat("unroutable: exchange=", exchange,
                                                                  " routing_key=", routing_key)));
              break;
            case Tracker::Outcome::kNacked:
              Complete(std::move(done), absl::UnavailableError("publish nacked by the broker"));
              break;
          }
        });
    return absl::OkStatus();
  }

  void OnReturn(const std::string& exchange, const std::string& routing_key,
                const Message& message) override {
    tracker.MarkReturned(exchange, routing_key, message.message_id);
  }
};

Publisher::Publisher(Options options) : impl_(std::make_unique<Impl>(std::move(options))) {}

Publisher::~Publisher() { Stop(); }

absl::Status Publisher::Start() { return impl_->Start(); }

// Publish() fails inline from here on, so the loop's final sweep completes every request.
void Publisher::Stop() { impl_->Stop(); }

void Publisher::Publish(std::string exchange, std::string routing_key, Message message, Done done,
                        WhileBlocked while_blocked) {
  if (absl::Status s = CheckShortStrings(exchange, routing_key, message); !s.ok()) {
    std::move(done)(std::move(s));
    return;
  }
  impl_->Enqueue(Impl::Request{.exchange = std::move(exchange),
                               .routing_key = std::move(routing_key),
                               .message = std::move(message),
                               .done = std::move(done),
                               .hold_while_blocked = impl_->options.hold_while_blocked ||
                                                     while_blocked == WhileBlocked::kHold});
}

bool Publisher::connected() const { return impl_->connected(); }

std::optional<std::string> Publisher::blocked_by() const {
  if (!impl_->connected()) return std::nullopt;
  return impl_->BlockedBy();
}

size_t Publisher::frame_max() const { return impl_->frame_max.load(); }

}  // namespace ess::amqp
