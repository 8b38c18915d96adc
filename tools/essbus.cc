// essbus: publish to, subscribe to and inspect the RabbitMQ bus from a shell.
//
//   essbus --amqp 127.0.0.1:5672 publish --queue visit_updates
//       '{"type":"VisitScheduleUpdated","id":"VIS-77"}'
//   essbus publish --exchange events --routing_key rk '{"type":"SlotConfirmed","id":"VIS-77"}'
//   essbus subscribe --exchange events --count 1 --timeout_s 30
//   essbus depth --queue visit_updates
//
// publish: the body is a JSON event; its "id" becomes the correlation_id and its "type" the AMQP
// type; the message_id is --message_id, or none (an event's id names the visit, not one message
// about it: two updates of VIS-77 are two messages, which the outbound lane then knows by
// "ID:HASH" of their content). Persistent, mandatory, and exits 0 only once the broker confirmed
// it. A missing --queue is declared durable first (an existing one is used as it is).
//
// subscribe: binds a private (exclusive, auto-delete) queue to the fanout exchange (declared if
// missing), prints "subscribed ..." on stderr once bound, then one line per message on stdout:
// `type=SlotConfirmed cid=VIS-77 body={...}`. A SyncAuditBatch (audit events in batches,
// bus.audit_batch_max) prints one line per event it carries, as a SyncAudit message of its own
// would, with the batch's message id: `type=SyncAudit cid=VIS-77 batch=batch:... body={...}`.
// Exits 0 after --count lines, 1 if --timeout_s passes first (with --count 0 it runs until the
// timeout, then exits 0).
//
// depth: prints the number of ready messages of a queue.
//
// Without --amqp the broker is $ESS_AMQP_HOST:$ESS_AMQP_PORT (as written by
// scripts/rabbitmq.sh), else 127.0.0.1:5672. Exit codes: 0 ok, 1 failure, 2 usage.
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <iterator>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/amqp.h"
#include "common/cli.h"
#include "common/log.h"
#include "rapidjson/document.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"

ABSL_FLAG(std::string, amqp, "",
          "Broker as HOST:PORT (default: $ESS_AMQP_HOST:$ESS_AMQP_PORT, else 127.0.0.1:5672).");
ABSL_FLAG(std::string, vhost, "/", "RabbitMQ virtual host.");
ABSL_FLAG(std::string, user, "guest", "RabbitMQ user.");
ABSL_FLAG(std::string, password, "guest", "RabbitMQ password.");
ABSL_FLAG(std::string, queue, "", "publish, depth: the queue.");
ABSL_FLAG(std::string, exchange, "", "publish: the exchange; subscribe: the fanout exchange.");
ABSL_FLAG(std::string, routing_key, "", "publish --exchange: the routing key.");
ABSL_FLAG(std::string, message_id, "",
          "publish: the AMQP message_id (none when empty: the outbound lane then derives one from "
          "the event's id and content).");
ABSL_FLAG(int, count, 0,
          "subscribe: exit 0 after this many lines, one per message or per audit event of a "
          "SyncAuditBatch (0: until --timeout_s).");
ABSL_FLAG(int, timeout_s, 0, "subscribe: give up after this many seconds (0: never).");

namespace {

constexpr char kUsage[] =
    "essbus [--amqp HOST:PORT] COMMAND\n"
    "  publish --queue Q BODY               declare Q if missing, publish BODY (JSON event; - "
    "reads stdin)\n"
    "  publish --exchange E [--routing_key K] BODY\n"
    "  subscribe --exchange E [--count N] [--timeout_s S]\n"
    "  depth --queue Q";

int Usage(const std::string& error) {
  std::cerr << "essbus: " << error << "\nusage: " << kUsage << "\n";
  return 2;
}

int Fail(const absl::Status& status) {
  std::cerr << "essbus: " << status << "\n";
  return 1;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// The broker address from --amqp or the environment; false if --amqp is malformed.
bool BrokerOptions(ess::amqp::ConnectionOptions* o) {
  std::string address = absl::GetFlag(FLAGS_amqp);
  if (address.empty()) {
    const std::string host = Env("ESS_AMQP_HOST");
    const std::string port = Env("ESS_AMQP_PORT");
    address = absl::StrCat(host.empty() ? "127.0.0.1" : host, ":", port.empty() ? "5672" : port);
  }
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(address).substr(colon + 1), &o->port) || o->port <= 0 ||
      o->port > 65535) {
    return false;
  }
  o->host = address.substr(0, colon);
  o->vhost = absl::GetFlag(FLAGS_vhost);
  o->user = absl::GetFlag(FLAGS_user);
  o->password = absl::GetFlag(FLAGS_password);
  o->connection_name = absl::StrCat("essbus:", getpid());
  return true;
}

// A message for a JSON event: ids and type from its "id" and "type" fields.
absl::StatusOr<ess::amqp::Message> EventMessage(std::string body) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    return absl::InvalidArgumentError("the body is not a JSON object");
  }
  ess::amqp::Message m;
  if (auto id = doc.FindMember("id"); id != doc.MemberEnd() && id->value.IsString()) {
    m.correlation_id = std::string(id->value.GetString(), id->value.GetStringLength());
  } else {
    std::cerr << "essbus: warning: the event has no string \"id\"; no correlation id set\n";
  }
  if (auto type = doc.FindMember("type"); type != doc.MemberEnd() && type->value.IsString()) {
    m.type = std::string(type->value.GetString(), type->value.GetStringLength());
  }
  m.message_id = absl::GetFlag(FLAGS_message_id);
  m.body = std::move(body);
  return m;
}

int Publish(const ess::amqp::ConnectionOptions& options, std::string body) {
  const std::string queue = absl::GetFlag(FLAGS_queue);
  const std::string exchange = absl::GetFlag(FLAGS_exchange);
  if (queue.empty() == exchange.empty()) {
    return Usage("publish needs exactly one of --queue and --exchange");
  }
  if (body == "-") {
    body.assign(std::istreambuf_iterator<char>(std::cin), {});
    absl::StripTrailingAsciiWhitespace(&body);
  }
  absl::StatusOr<ess::amqp::Message> message = EventMessage(std::move(body));
  if (!message.ok()) return Usage(std::string(message.status().message()));

  absl::StatusOr<std::unique_ptr<ess::amqp::Connection>> bus = ess::amqp::Connection::Open(options);
  if (!bus.ok()) return Fail(bus.status());
  absl::Status s;
  if (!queue.empty()) {
    if (absl::StatusOr<uint32_t> depth = (*bus)->MessageCount(queue);
        depth.status().code() == absl::StatusCode::kNotFound) {
      s = (*bus)->Apply({.queues = {{.name = queue}}});
    } else {
      s = depth.status();
    }
    if (s.ok()) s = (*bus)->Publish("", queue, *message);
  } else {
    s = (*bus)->Publish(exchange, absl::GetFlag(FLAGS_routing_key), *message);
  }
  if (!s.ok()) return Fail(s);
  std::cerr << "published cid=" << message->correlation_id << " to "
            << (queue.empty() ? "exchange " + exchange : "queue " + queue) << "\n";
  return 0;
}

std::string OneLine(const std::string& text) {
  return absl::StrReplaceAll(text, {{"\\", "\\\\"}, {"\n", "\\n"}, {"\r", "\\r"}});
}

// The events of a SyncAuditBatch's body as {correlation id, the event's JSON}; false when the
// body is no such batch.
bool AuditBatchEvents(const std::string& body,
                      std::vector<std::pair<std::string, std::string>>* events) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject() || !doc.HasMember("events") ||
      !doc["events"].IsArray()) {
    return false;
  }
  for (const rapidjson::Value& e : doc["events"].GetArray()) {
    rapidjson::StringBuffer json;
    rapidjson::Writer<rapidjson::StringBuffer> w(json);
    e.Accept(w);
    const bool has_cid =
        e.IsObject() && e.HasMember("correlationId") && e["correlationId"].IsString();
    events->emplace_back(has_cid ? e["correlationId"].GetString() : "", json.GetString());
  }
  return true;
}

int Subscribe(const ess::amqp::ConnectionOptions& options) {
  const std::string exchange = absl::GetFlag(FLAGS_exchange);
  const int count = absl::GetFlag(FLAGS_count);
  const int timeout_s = absl::GetFlag(FLAGS_timeout_s);
  if (exchange.empty()) return Usage("subscribe needs --exchange");
  if (count < 0 || timeout_s < 0) return Usage("--count and --timeout_s must not be negative");

  char host[64] = {0};
  gethostname(host, sizeof(host) - 1);
  const std::string queue =
      absl::StrCat("essbus.", host, ".", getpid(), ".", std::random_device{}() % 1000000);

  absl::Mutex mu;
  int printed = 0;  // guarded by mu
  ess::amqp::Consumer* consumer_ptr = nullptr;
  ess::amqp::Consumer consumer(
      {.connection = options,
       .topology =
           {.exchanges = {{.name = exchange, .type = "fanout"}},
            .queues = {{.name = queue, .durable = false, .exclusive = true, .auto_delete = true}},
            .bindings = {{.queue = queue, .exchange = exchange}}},
       .queues = {queue},
       .prefetch = 64},
      [&](ess::amqp::Delivery d) {
        absl::MutexLock lock(&mu);
        if (count > 0 && printed >= count) return;  // dropped with the queue on exit
        const ess::amqp::Message& m = d.message;
        std::vector<std::pair<std::string, std::string>> events;
        if (m.type == "SyncAuditBatch" && AuditBatchEvents(m.body, &events)) {
          for (const auto& [cid, json] : events) {
            if (count > 0 && printed >= count) break;
            std::cout << "type=SyncAudit cid=" << cid << " batch=" << m.message_id
                      << " body=" << json << std::endl;
            ++printed;
          }
        } else {
          std::cout << "type=" << m.type
                    << " cid=" << (m.correlation_id.empty() ? m.message_id : m.correlation_id)
                    << " body=" << OneLine(m.body) << std::endl;
          ++printed;
        }
        consumer_ptr->Ack(d.delivery_tag);
      });
  consumer_ptr = &consumer;
  if (absl::Status s = consumer.Start(); !s.ok()) {
    consumer.Stop();
    return Fail(s);
  }
  std::cerr << "subscribed exchange=" << exchange << " queue=" << queue << std::endl;

  const absl::Duration timeout =
      timeout_s > 0 ? absl::Seconds(timeout_s) : absl::InfiniteDuration();
  bool reached;
  int got;
  {
    absl::MutexLock lock(&mu);
    auto enough = [&] { return count > 0 && printed >= count; };
    reached = mu.AwaitWithTimeout(absl::Condition(&enough), timeout);
    got = printed;
  }
  consumer.Stop();
  if (count > 0 && !reached) {
    std::cerr << "essbus: timeout after " << timeout_s << "s: " << got << " of " << count
              << " messages\n";
    return 1;
  }
  return 0;
}

int Depth(const ess::amqp::ConnectionOptions& options) {
  const std::string queue = absl::GetFlag(FLAGS_queue);
  if (queue.empty()) return Usage("depth needs --queue");
  absl::StatusOr<std::unique_ptr<ess::amqp::Connection>> bus = ess::amqp::Connection::Open(options);
  if (!bus.ok()) return Fail(bus.status());
  absl::StatusOr<uint32_t> depth = (*bus)->MessageCount(queue);
  if (!depth.ok()) return Fail(depth.status());
  std::cout << *depth << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args = ess::cli::Parse(argc, argv, kUsage);
  ess::log::Init("essbus", ess::log::Level::kWarn);
  if (args.empty()) return Usage("missing command");
  ess::amqp::ConnectionOptions options;
  if (!BrokerOptions(&options)) return Usage("--amqp must be HOST:PORT");
  const std::string& command = args[0];
  if (command == "publish") {
    if (args.size() != 2) return Usage("publish takes one BODY argument");
    return Publish(options, args[1]);
  }
  if (args.size() != 1) return Usage(absl::StrCat("unexpected argument ", args[1]));
  if (command == "subscribe") return Subscribe(options);
  if (command == "depth") return Depth(options);
  return Usage(absl::StrCat("unknown command ", command));
}
