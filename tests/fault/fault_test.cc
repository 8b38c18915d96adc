// Fault injection: the hub's delivery guarantees under crashes, outages and failing partners,
// on the real binaries, the real broker and real HTTP. Each test prints what a Jepsen-style
// checker would (lost / duplicated / reconciled) and asserts that nothing was lost.
//
//   lost        ids accepted upstream (published with confirm, or answered 2xx) that never
//               reached the other side
//   duplicated  extra copies that reached the other side (each with the same idempotency key)
//   reconciled  redeliveries the hub itself recognised as done and did not pass on again
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <map>
#include <optional>
#include <regex>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/amqp.h"
#include "common/http_client.h"
#include "common/replay_client.h"
#include "ess/v1/event.pb.h"
#include "google/protobuf/util/json_util.h"
#include "tests/integration/capture_partner.h"
#include "tests/integration/harness.h"

namespace ess {
namespace {

using testing::BinaryPath;
using testing::CapturePartner;
using testing::CountOccurrences;
using ::testing::HasSubstr;
using testing::Process;
using testing::WaitFor;

struct Tally {
  size_t lost = 0, duplicated = 0, reconciled = 0;
};

void Report(const std::string& scenario, const Tally& t) {
  std::cout << "FAULT " << scenario << ": lost=" << t.lost << " duplicated=" << t.duplicated
            << " reconciled=" << t.reconciled << std::endl;
  ::testing::Test::RecordProperty("lost", static_cast<int>(t.lost));
  ::testing::Test::RecordProperty("duplicated", static_cast<int>(t.duplicated));
  ::testing::Test::RecordProperty("reconciled", static_cast<int>(t.reconciled));
}

std::string VisitEvent(const std::string& id) {
  return absl::StrCat(R"({"type":"VisitScheduleUpdated","id":")", id,
                      R"(","inmateId":"A123","slotUtc":"2026-12-01T15:00:00Z"})");
}

struct PartnerSpec {
  std::string name;
  std::string queue;
  std::string url;
  int max_attempts = 5;
  int initial_backoff_ms = 100;
  int max_backoff_ms = 400;
  int timeout_ms = 2000;
  bool breaker = false;
  std::string webhook_path;  // empty: no inbound route
};

class FaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker_ = testing::BrokerOptions();
    exchange_ = testing::UniqueName("events");
    replay_port_ = testing::FreePort();
    inbound_port_ = testing::FreePort();
  }

  void TearDown() override {
    for (auto* p : {&outbound_, &inbound_}) {
      if (*p && (*p)->Running()) {
        EXPECT_EQ((*p)->Stop(), 0) << Tail((*p)->Log());
      }
    }
    stub_.reset();
    if (replay_ && replay_->Running()) {
      EXPECT_EQ(replay_->Stop(), 0) << Tail(replay_->Log());
    }
    if (HasFailure()) {
      for (auto* p : {&replay_, &outbound_, &inbound_}) {
        if (*p) std::cerr << "---- log (last 4000 bytes) ----\n" << Tail((*p)->Log());
      }
    }
  }

  static std::string Tail(const std::string& s) {
    return s.size() > 4000 ? s.substr(s.size() - 4000) : s;
  }

  // The inbound lane's claim lease is 3 s rather than 35: the ids a killed lane held are free
  // for the partner's retries sooner, and the suite runs faster (the behaviour is the same).
  void WriteConfig(const std::vector<PartnerSpec>& partners) {
    std::string yaml = absl::StrCat(R"(
bus: {host: 127.0.0.1, port: )",
                                    broker_.port, R"(, events_exchange: )", exchange_,
                                    R"(, heartbeat_seconds: 5)", bus_extra_, R"(}
replay: {listen: "127.0.0.1:)",
                                    replay_port_, R"(", database_path: replay.db, deadline_ms: 2000}
outbound: {prefetch: 64, shutdown_deadline_ms: 5000)",
                                    outbound_extra_, R"(}
inbound: {listen: "127.0.0.1:)",
                                    inbound_port_, R"(", claim_lease_ms: 3000}
logging: {level: info}
partners:
)");
    for (const PartnerSpec& p : partners) {
      absl::StrAppend(&yaml, "  - name: ", p.name, R"(
    adapter: rest
    settings: {base_url: ")",
                      p.url, R"(", path: /api/slots, timeout_ms: )", p.timeout_ms,
                      R"(, connect_timeout_ms: 500}
)");
      if (!p.queue.empty()) {
        absl::StrAppend(&yaml, "    outbound:\n      queue: ", p.queue, R"(
      max_in_flight: 32
      retry: {max_attempts: )",
                        p.max_attempts, ", initial_backoff_ms: ", p.initial_backoff_ms,
                        ", max_backoff_ms: ", p.max_backoff_ms, R"(}
      circuit_breaker: {disabled: )",
                        p.breaker ? "false" : "true",
                        R"(, window: 10, open_ms: 300, max_open_ms: 1000}
      mapping: [{target: id, source: id}, {target: inmate, source: inmateId}, {target: slot, source: slotUtc}]
)");
      }
      if (!p.webhook_path.empty()) {
        absl::StrAppend(&yaml, "    inbound:\n      webhook_path: ", p.webhook_path, R"(
      mapping: [{target: type, constant: SlotConfirmed}, {target: id, source: id}, {target: status, source: status}]
)");
      }
    }
    dir_.Write("hub.yaml", yaml);
  }

  void StartReplay() {
    replay_ = std::make_unique<Process>(
        std::vector<std::string>{BinaryPath("replay_svc"), "--config", dir_.File("hub.yaml")},
        dir_.File("replay.log"));
    if (!stub_) stub_ = MakeReplayStub(absl::StrCat("127.0.0.1:", replay_port_));
    ASSERT_TRUE(testing::WaitForReplay(*stub_, absl::Seconds(20))) << replay_->Log();
  }

  void StartOutbound() {
    outbound_ = std::make_unique<Process>(
        std::vector<std::string>{BinaryPath("outbound_svc"), "--config", dir_.File("hub.yaml")},
        dir_.File("outbound.log"));
  }

  void StartInbound() {
    inbound_ = std::make_unique<Process>(
        std::vector<std::string>{BinaryPath("inbound_svc"), "--config", dir_.File("hub.yaml")},
        dir_.File("inbound.log"));
    ASSERT_TRUE(WaitFor(
        [&] {
          auto r = http_.SendAndWait(
              {.method = "GET",
               .url = absl::StrCat("http://127.0.0.1:", inbound_port_, "/healthz"),
               .timeout = absl::Seconds(1)});
          return r.ok() && r->status == 200;
        },
        absl::Seconds(20)));
  }

  // Publishes every event (confirmed) to `queue`, declared first (classic) unless `declare` is
  // false (the lane declared it).
  void Publish(const std::string& queue, const std::vector<std::string>& ids, bool declare = true) {
    auto conn = amqp::Connection::Open(broker_);
    ASSERT_TRUE(conn.ok()) << conn.status();
    if (declare) {
      ASSERT_TRUE((*conn)->Apply({.queues = {{.name = queue}}}).ok());
    }
    amqp::Publisher pub({.connection = broker_});
    ASSERT_TRUE(pub.Start().ok());
    std::atomic<size_t> ok{0}, failed{0};
    size_t sent = 0;
    for (const std::string& id : ids) {
      // Stay well under the publisher's in-flight bound.
      ASSERT_TRUE(WaitFor([&] { return sent - ok - failed < 4096; }, absl::Seconds(30)));
      ++sent;
      pub.Publish("", queue, {.body = VisitEvent(id), .correlation_id = id, .message_id = id},
                  [&](absl::Status s) { (s.ok() ? ok : failed).fetch_add(1); });
    }
    ASSERT_TRUE(WaitFor([&] { return ok + failed == ids.size(); }, absl::Seconds(60)));
    ASSERT_EQ(failed.load(), 0u);
    pub.Stop();
  }

  // A queue bound to the events exchange, to see what the inbound lane published.
  std::string Subscribe() {
    auto conn = amqp::Connection::Open(broker_);
    EXPECT_TRUE(conn.ok());
    return conn.ok() ? testing::BindSubscriber(**conn, exchange_) : "";
  }

  // Every message in `queue` (drained), by correlation id.
  std::map<std::string, int> Drain(const std::string& queue) {
    std::map<std::string, int> seen;
    auto conn = amqp::Connection::Open(broker_);
    EXPECT_TRUE(conn.ok());
    while (true) {
      auto d = (*conn)->Get(queue);
      if (!d.ok()) break;
      ++seen[d->message.correlation_id];
    }
    return seen;
  }

  void WebhooksAuditedAcrossAnAlarm(bool stop_during_it);

  // essctl's command line that replays every DEAD record of the partner "calendar", each
  // call waiting up to `timeout`.
  std::vector<std::string> ReplayDeadCommand(const std::string& timeout) const {
    return {BinaryPath("essctl"),
            "--addr",
            absl::StrCat("127.0.0.1:", replay_port_),
            "--timeout",
            timeout,
            "replay",
            "--partner",
            "calendar",
            "--status",
            "dead",
            "--reason",
            "fault test"};
  }

  // The partner's call to the inbound lane's /webhook/prison route for `id`, with its
  // webhook-id.
  http::Request Webhook(const std::string& id, absl::Duration timeout) const {
    return {.url = absl::StrCat("http://127.0.0.1:", inbound_port_, "/webhook/prison"),
            .headers = {{"Content-Type", "application/json"}, {"webhook-id", "wh-" + id}},
            .body = absl::StrCat(R"({"id":")", id, R"(","status":"confirmed"})"),
            .timeout = timeout};
  }

  // Every audit event in `queue` (drained), whether each came alone (SyncAudit) or in a
  // SyncAuditBatch.
  std::vector<ess::v1::SyncAudit> AuditEvents(const std::string& queue) {
    std::vector<ess::v1::SyncAudit> events;
    auto conn = amqp::Connection::Open(broker_);
    EXPECT_TRUE(conn.ok());
    if (!conn.ok()) return events;
    for (auto d = (*conn)->Get(queue); d.ok(); d = (*conn)->Get(queue)) {
      ess::v1::SyncAuditBatch batch;
      const bool alone = d->message.type == "SyncAudit";
      EXPECT_TRUE(alone || d->message.type == "SyncAuditBatch") << d->message.type;
      google::protobuf::Message* into = &batch;
      if (alone) into = batch.add_events();
      const auto parsed = google::protobuf::util::JsonStringToMessage(d->message.body, into);
      EXPECT_TRUE(parsed.ok()) << parsed.ToString() << ": " << d->message.body;
      for (ess::v1::SyncAudit& e : *batch.mutable_events()) events.push_back(std::move(e));
    }
    return events;
  }

  ess::v1::MessageRecord Record(const std::string& partner, const std::string& id) {
    grpc::ClientContext ctx;
    ess::v1::GetRequest req;
    req.mutable_record()->set_direction(ess::v1::DIRECTION_OUTBOUND);
    req.mutable_record()->set_partner(partner);
    req.mutable_record()->set_message_id(id);
    ess::v1::GetResponse resp;
    if (!stub_->Get(&ctx, req, &resp).ok() || resp.records_size() == 0) return {};
    return resp.records(0);
  }

  // The store's outbound counts of `partner`; all zero when it cannot answer.
  ess::v1::PartnerStats OutboundStats(const std::string& partner) {
    grpc::ClientContext ctx;
    ess::v1::StatsRequest req;
    req.set_partner(partner);
    ess::v1::StatsResponse resp;
    if (!stub_->Stats(&ctx, req, &resp).ok()) return {};
    for (const auto& p : resp.partners()) {
      if (p.direction() == ess::v1::DIRECTION_OUTBOUND) return p;
    }
    return {};
  }

  uint64_t Delivered(const std::string& partner) { return OutboundStats(partner).delivered(); }

  uint32_t Depth(const std::string& queue) {
    auto conn = amqp::Connection::Open(broker_);
    if (!conn.ok()) return 0;
    auto n = (*conn)->MessageCount(queue);
    return n.ok() ? *n : 0;
  }

  // Runs the broker's own control tool against the test node (stop_app / start_app).
  void BrokerCtl(const std::string& command) {
    const std::string cmd =
        absl::StrCat(testing::RequiredEnv("ESS_SOURCE_DIR"), "/scripts/rabbitmq.sh ctl ",
                     testing::RequiredEnv("ESS_RABBITMQ_DIR"), " ", command, " >/dev/null 2>&1");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }

  // A memory alarm on the broker, raised and cleared by the test; whatever happens, it is
  // cleared at the end of the scope: the broker is shared with the other tests.
  class MemoryAlarm {
   public:
    explicit MemoryAlarm(FaultTest* test) : test_(test) {}
    ~MemoryAlarm() {
      if (on_) Set(false);
    }
    void Set(bool raise) {
      test_->BrokerCtl(absl::StrCat("set_vm_memory_high_watermark ", raise ? "0" : "0.4"));
      on_ = raise;
    }

   private:
    FaultTest* test_;
    bool on_ = false;
  };

  // Runs the broker's control tool and returns what it printed; "" if it failed.
  std::string BrokerQuery(const std::string& command) {
    const std::string cmd =
        absl::StrCat(testing::RequiredEnv("ESS_SOURCE_DIR"), "/scripts/rabbitmq.sh ctl ",
                     testing::RequiredEnv("ESS_RABBITMQ_DIR"), " ", command, " 2>/dev/null");
    std::string out;
    FILE* f = popen(cmd.c_str(), "r");
    if (f == nullptr) return out;
    char buf[4096];
    for (size_t n; (n = fread(buf, 1, sizeof(buf), f)) > 0;) out.append(buf, n);
    return pclose(f) == 0 ? out : "";
  }

  // Deliveries of `queue` the broker has sent and not yet seen settled; -1 if it cannot tell.
  int Unacked(const std::string& queue) {
    const std::string out =
        BrokerQuery("list_queues -q --no-table-headers name messages_unacknowledged");
    for (absl::string_view line : absl::StrSplit(out, '\n')) {
      std::vector<absl::string_view> cols = absl::StrSplit(line, '\t');
      int n = 0;
      if (cols.size() == 2 && cols[0] == queue && absl::SimpleAtoi(cols[1], &n)) return n;
    }
    return -1;
  }

  // Sends webhooks for `ids` with `concurrency` in flight, retrying each on anything but a 2xx
  // (as a partner would) until it gets one or `budget` runs out; returns the ids answered 2xx.
  // `answered`, if given, counts them as they come; each sender waits `gap` before it takes the
  // next id (pacing the webhooks over a span of time).
  std::set<std::string> SendWebhooks(const std::vector<std::string>& ids, size_t concurrency,
                                     absl::Duration budget, std::atomic<size_t>* answered = nullptr,
                                     absl::Duration gap = absl::ZeroDuration()) {
    absl::Mutex mu;
    std::set<std::string> acked;
    size_t next = 0;
    const absl::Time deadline = absl::Now() + budget;
    http::Client client({});
    std::vector<std::thread> workers;
    for (size_t w = 0; w < concurrency; ++w) {
      workers.emplace_back([&] {
        while (true) {
          if (gap > absl::ZeroDuration()) absl::SleepFor(gap);
          std::string id;
          {
            absl::MutexLock lock(&mu);
            if (next == ids.size()) return;
            id = ids[next++];
          }
          while (absl::Now() < deadline) {
            http::Request request = Webhook(id, absl::Seconds(5));
            request.connect_timeout = absl::Milliseconds(500);
            auto r = client.SendAndWait(std::move(request));
            if (r.ok() && r->status / 100 == 2) {
              absl::MutexLock lock(&mu);
              acked.insert(id);
              if (answered != nullptr) answered->fetch_add(1);
              break;
            }
            absl::SleepFor(absl::Milliseconds(20));
          }
        }
      });
    }
    for (auto& t : workers) t.join();
    return acked;
  }

  amqp::ConnectionOptions broker_;
  std::string exchange_;
  std::string bus_extra_;  // more settings of the bus section, e.g. ", quorum_queues: true"
  // More settings of the outbound section, e.g. ", metrics_listen: \"127.0.0.1:9464\"".
  std::string outbound_extra_;
  int replay_port_ = 0, inbound_port_ = 0;
  testing::TempDir dir_;
  http::Client http_{{}};
  std::unique_ptr<ess::v1::ReplayService::Stub> stub_;
  std::unique_ptr<Process> replay_, outbound_, inbound_;
};

// A partner behind a circuit breaker, with retries that outlast the tests' outages.
PartnerSpec BreakerPartner(const std::string& queue, const std::string& url) {
  return {.name = "calendar",
          .queue = queue,
          .url = url,
          .max_attempts = 50,
          .initial_backoff_ms = 50,
          .max_backoff_ms = 100,
          .breaker = true};
}

std::vector<std::string> Ids(const std::string& prefix, int n) {
  std::vector<std::string> ids;
  for (int i = 0; i < n; ++i) ids.push_back(absl::StrCat(prefix, i));
  return ids;
}

// A partner that takes about `us` microseconds per request, so a flow lasts long enough to be
// interrupted.
void SlowDown(CapturePartner& partner, int us) {
  partner.set_behaviour([us](const CapturePartner::Seen&, http::Responder r) {
    absl::SleepFor(absl::Microseconds(us));
    std::move(r).Send({.status = 201, .body = "{}"});
  });
}

TEST_F(FaultTest, OutboundKilledEveryTwoSecondsLosesNothing) {
  CapturePartner partner;
  SlowDown(partner, 700);
  const std::string queue = testing::UniqueName("kill9");
  WriteConfig({{.name = "calendar", .queue = queue, .url = partner.url()}});
  StartReplay();
  constexpr int kEvents = 10000;
  const auto ids = Ids("K-", kEvents);
  Publish(queue, ids);

  StartOutbound();
  int kills = 0;
  auto all_seen = [&] {
    std::set<std::string> unique;
    for (const auto& s : partner.seen()) unique.insert(s.correlation);
    return unique.size() == static_cast<size_t>(kEvents);
  };
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (!all_seen() && absl::Now() < deadline) {
    if (WaitFor(all_seen, absl::Seconds(2))) break;
    outbound_->Stop(SIGKILL);
    ++kills;
    StartOutbound();
  }
  ASSERT_TRUE(WaitFor([&] { return Delivered("calendar") == kEvents && Depth(queue) == 0; },
                      absl::Seconds(60)));
  EXPECT_EQ(outbound_->Stop(), 0);

  std::map<std::string, int> copies;
  for (const auto& s : partner.seen()) {
    ++copies[s.correlation];
    EXPECT_EQ(s.idempotency_key, s.correlation);  // every copy carries the same key
  }
  Tally t;
  for (const auto& id : ids) {
    if (copies[id] == 0) ++t.lost;
    if (copies[id] > 1) t.duplicated += copies[id] - 1;
  }
  t.reconciled = CountOccurrences(outbound_->Log(), "already delivered; acked without a push");
  std::cout << "kills=" << kills << " requests=" << partner.count() << std::endl;
  Report("outbound kill -9 every 2s, 10000 events", t);
  EXPECT_GE(kills, 1);
  EXPECT_EQ(t.lost, 0u);
  // Only what was in flight at a kill can be pushed twice: prefetch (64) per kill at most.
  EXPECT_LE(t.duplicated, static_cast<size_t>(kills) * 64);
}

TEST_F(FaultTest, BrokerRestartMidFlowLosesNothingConfirmedInEitherLane) {
  CapturePartner partner;
  SlowDown(partner, 1000);
  const std::string queue = testing::UniqueName("restart");
  WriteConfig({{.name = "calendar",
                .queue = queue,
                .url = partner.url(),
                .webhook_path = "/webhook/prison"}});
  StartReplay();
  const std::string sub = Subscribe();
  constexpr int kEvents = 3000, kWebhooks = 600;
  const auto ids = Ids("B-", kEvents);
  Publish(queue, ids);
  StartOutbound();
  StartInbound();
  const pid_t outbound_pid = outbound_->pid(), inbound_pid = inbound_->pid();

  ASSERT_TRUE(WaitFor([&] { return partner.count() > 500; }, absl::Seconds(30)));
  // The webhooks, paced over ~8 s, start as the broker goes down, so that they span the outage
  // (the lane answers 503 meanwhile and the sender retries, as a partner would). At ~4 s a
  // slow `stop_app` on a busy machine let them all finish before the broker was down.
  std::set<std::string> acked;
  std::atomic<size_t> answered{0};
  std::thread client([&] {
    acked = SendWebhooks(Ids("W-", kWebhooks), 8, absl::Seconds(90), &answered,
                         absl::Milliseconds(100));
  });
  BrokerCtl("stop_app");
  absl::SleepFor(absl::Seconds(2));
  const size_t answered_in_outage = answered.load();
  BrokerCtl("start_app");
  client.join();
  // The outage met webhooks: some were still unanswered when the broker came back.
  EXPECT_LT(answered_in_outage, static_cast<size_t>(kWebhooks));

  ASSERT_TRUE(WaitFor([&] { return Delivered("calendar") >= kEvents && Depth(queue) == 0; },
                      absl::Seconds(90)))
      << "delivered " << Delivered("calendar");
  EXPECT_TRUE(outbound_->Running());
  EXPECT_TRUE(inbound_->Running());
  EXPECT_EQ(outbound_->pid(), outbound_pid);  // neither lane was restarted
  EXPECT_EQ(inbound_->pid(), inbound_pid);

  std::map<std::string, int> pushed;
  for (const auto& s : partner.seen()) ++pushed[s.correlation];
  std::map<std::string, int> events = Drain(sub);
  Tally t;
  for (const auto& id : ids) {
    if (pushed[id] == 0) ++t.lost;
    if (pushed[id] > 1) t.duplicated += pushed[id] - 1;
  }
  for (const auto& id : acked) {
    if (events[id] == 0) ++t.lost;
    if (events[id] > 1) t.duplicated += events[id] - 1;
  }
  t.reconciled = CountOccurrences(outbound_->Log(), "already delivered; acked without a push");
  std::cout << "webhooks answered 2xx=" << acked.size() << "/" << kWebhooks
            << " (by the end of the outage: " << answered_in_outage << ")" << std::endl;
  Report("broker stop_app/start_app mid-flow, both lanes", t);
  EXPECT_EQ(acked.size(), static_cast<size_t>(kWebhooks));
  EXPECT_EQ(t.lost, 0u);
}

TEST_F(FaultTest, PartnerFailsEveryWayThenRecoversWhileAnotherKeepsItsPace) {
  // Partner A: attempt 1 answers 500, attempt 2 never answers (times out), then its port is
  // closed (refused) until the store shows a refused attempt, then it accepts.
  const int port_a = testing::FreePort();
  CapturePartner a(absl::StrCat("127.0.0.1:", port_a));
  std::vector<http::Responder> held;
  absl::Mutex held_mu;
  std::atomic<int> requests_a{0};
  a.set_behaviour([&](const CapturePartner::Seen&, http::Responder r) {
    const int n = ++requests_a;
    if (n == 1) {
      std::move(r).Send({.status = 500, .body = "{}"});
    } else if (n == 2) {
      absl::MutexLock lock(&held_mu);
      held.push_back(std::move(r));  // never answered: the lane's 600 ms timeout fires
    } else {
      std::move(r).Send({.status = 201, .body = "{}"});
    }
  });
  CapturePartner b;
  const std::string qa = testing::UniqueName("flaky"), qb = testing::UniqueName("healthy");
  WriteConfig({{.name = "flaky",
                .queue = qa,
                .url = a.url(),
                .max_attempts = 8,
                .initial_backoff_ms = 300,
                .max_backoff_ms = 600,
                .timeout_ms = 600},
               {.name = "healthy", .queue = qb, .url = b.url()}});
  StartReplay();
  Publish(qa, {"F-1"});
  StartOutbound();
  ASSERT_TRUE(WaitFor([&] { return requests_a.load() == 2; }, absl::Seconds(20)));
  a.Stop();  // attempt 3 on is refused
  const absl::Time b_start = absl::Now();
  Publish(qb, Ids("H-", 2000));
  ASSERT_TRUE(WaitFor(
      [&] {
        auto r = Record("flaky", "F-1");
        return r.attempts() >= 3 && absl::StrContains(r.error(), "onnect");
      },
      absl::Seconds(20)))
      << Record("flaky", "F-1").DebugString();
  a.Start();
  ASSERT_TRUE(
      WaitFor([&] { return Record("flaky", "F-1").status() == ess::v1::MESSAGE_STATUS_DELIVERED; },
              absl::Seconds(20)));
  const absl::Time a_delivered = absl::Now();
  ASSERT_TRUE(WaitFor([&] { return Delivered("healthy") == 2000; }, absl::Seconds(30)));
  const absl::Duration b_took = absl::Now() - b_start;

  const auto rec = Record("flaky", "F-1");
  std::cout << "flaky: attempts=" << rec.attempts() << " requests reaching it=" << requests_a
            << "; healthy: 2000 delivered in " << b_took << std::endl;
  EXPECT_EQ(requests_a.load(), 3);  // the 500, the timeout, the success; refusals never arrive
  EXPECT_GE(rec.attempts(), 4u);
  EXPECT_LE(rec.attempts(), 8u);
  EXPECT_EQ(b.count(), 2000u);
  std::set<std::string> healthy;
  for (const auto& seen : b.seen()) healthy.insert(seen.correlation);
  Tally t;
  t.lost = 2000 - healthy.size() + (rec.status() == ess::v1::MESSAGE_STATUS_DELIVERED ? 0 : 1);
  t.duplicated = b.count() - healthy.size();
  Report("partner 500 / timeout / refused / recovered", t);
  EXPECT_EQ(t.lost, 0u);
  EXPECT_EQ(t.duplicated, 0u);
  // The healthy partner was not held back by the failing one's waits.
  EXPECT_LT(b_took, a_delivered - b_start + absl::Seconds(2));
  absl::MutexLock lock(&held_mu);
  held.clear();
}

TEST_F(FaultTest, PoisonEventIsParkedAfterTheConfiguredAttemptsWhileTheRestFlow) {
  CapturePartner partner;
  std::atomic<int> poison_requests{0};
  partner.set_behaviour([&](const CapturePartner::Seen& s, http::Responder r) {
    if (s.correlation == "POISON") {
      ++poison_requests;
      std::move(r).Send({.status = 500, .body = R"({"error":"cannot book"})"});
      return;
    }
    std::move(r).Send({.status = 201, .body = "{}"});
  });
  const std::string queue = testing::UniqueName("poison");
  WriteConfig({{.name = "calendar",
                .queue = queue,
                .url = partner.url(),
                .max_attempts = 3,
                .initial_backoff_ms = 50,
                .max_backoff_ms = 100}});
  StartReplay();
  auto ids = Ids("P-", 500);
  ids.insert(ids.begin() + 250, "POISON");
  Publish(queue, ids);
  StartOutbound();
  ASSERT_TRUE(WaitFor([&] { return Depth(queue + ".parked") == 1; }, absl::Seconds(30)));
  ASSERT_TRUE(WaitFor([&] { return Delivered("calendar") == 500; }, absl::Seconds(30)));
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  auto parked = (*conn)->Get(queue + ".parked");
  ASSERT_TRUE(parked.ok());
  EXPECT_EQ(parked->message.correlation_id, "POISON");
  std::map<std::string, std::string> headers(parked->message.headers.begin(),
                                             parked->message.headers.end());
  EXPECT_EQ(headers["x-ess-attempt"], "3");
  EXPECT_THAT(headers["x-ess-reason"],
              HasSubstr("gave up after 3 attempts: partner answered HTTP 500"));
  EXPECT_THAT(headers["x-ess-history"], HasSubstr("attempt 1 at "));
  EXPECT_THAT(headers["x-ess-history"], HasSubstr("attempt 2 at "));
  EXPECT_THAT(headers["x-ess-history"], HasSubstr("attempt 3 at "));
  EXPECT_EQ(poison_requests.load(), 3);
  EXPECT_EQ(Record("calendar", "POISON").status(), ess::v1::MESSAGE_STATUS_DEAD);
  std::set<std::string> unique;
  for (const auto& s : partner.seen()) unique.insert(s.correlation);
  Tally t;
  t.lost = 501 - unique.size();
  t.duplicated = partner.count() - unique.size() - 2;  // the poison's two retries are by design
  Report("poison event among 500", t);
  EXPECT_EQ(t.lost, 0u);
  EXPECT_EQ(t.duplicated, 0u);
}

TEST_F(FaultTest, InboundKilledWhileWebhooksArriveLosesNoAcknowledgedWebhook) {
  WriteConfig(
      {{.name = "calendar", .url = "http://127.0.0.1:9", .webhook_path = "/webhook/prison"}});
  StartReplay();
  const std::string sub = Subscribe();
  StartInbound();
  constexpr int kWebhooks = 5000;
  std::atomic<bool> done{false};
  std::atomic<size_t> answered{0};
  int kills = 0;
  // Kills by progress, not by the clock: a fast lane must not finish between two kills.
  std::thread killer([&] {
    for (size_t at : {1000, 2500, 4000}) {
      while (!done && answered.load() < at) absl::SleepFor(absl::Milliseconds(2));
      if (done) break;
      inbound_->Stop(SIGKILL);
      ++kills;
      inbound_ = std::make_unique<Process>(
          std::vector<std::string>{BinaryPath("inbound_svc"), "--config", dir_.File("hub.yaml")},
          dir_.File("inbound.log"));
    }
  });
  std::set<std::string> acked =
      SendWebhooks(Ids("WK-", kWebhooks), 16, absl::Seconds(120), &answered);
  done = true;
  killer.join();
  std::map<std::string, int> events;
  ASSERT_TRUE(WaitFor(
      [&] {
        for (auto& [id, n] : Drain(sub)) events[id] += n;
        return events.size() >= acked.size();
      },
      absl::Seconds(10)));
  Tally t;
  for (const auto& id : acked) {
    if (events[id] == 0) ++t.lost;
  }
  for (const auto& [id, n] : events) t.duplicated += n - 1;
  std::cout << "kills=" << kills << " answered 2xx=" << acked.size() << "/" << kWebhooks
            << std::endl;
  Report("inbound kill -9 after 1000, 2500 and 4000 of 5000 webhooks", t);
  EXPECT_EQ(kills, 3);
  EXPECT_EQ(acked.size(), static_cast<size_t>(kWebhooks));
  EXPECT_EQ(t.lost, 0u);
}

TEST_F(FaultTest, ReplayStoreKilledMidFlowLanesPauseAndResume) {
  CapturePartner partner;
  SlowDown(partner, 500);
  const std::string queue = testing::UniqueName("storedown");
  WriteConfig({{.name = "calendar",
                .queue = queue,
                .url = partner.url(),
                .webhook_path = "/webhook/prison"}});
  StartReplay();
  const std::string sub = Subscribe();
  constexpr int kEvents = 5000;
  const auto ids = Ids("S-", kEvents);
  Publish(queue, ids);
  StartOutbound();
  StartInbound();
  ASSERT_TRUE(WaitFor([&] { return partner.count() > 1000; }, absl::Seconds(30)));
  replay_->Stop(SIGKILL);
  // While the store is away: webhooks get 503, the outbound lane stops taking events.
  auto r =
      http_.SendAndWait({.url = absl::StrCat("http://127.0.0.1:", inbound_port_, "/webhook/prison"),
                         .body = R"({"id":"DOWN-1","status":"confirmed"})"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 503);
  ASSERT_TRUE(WaitFor([&] { return absl::StrContains(outbound_->Log(), "consumption paused"); },
                      absl::Seconds(10)));
  const size_t during = partner.count();
  absl::SleepFor(absl::Seconds(1));
  EXPECT_LE(partner.count(), during + 64);  // at most what was already in flight
  StartReplay();                            // same database, same port
  std::set<std::string> acked = SendWebhooks({"UP-1"}, 1, absl::Seconds(20));
  ASSERT_TRUE(WaitFor([&] { return Delivered("calendar") == kEvents && Depth(queue) == 0; },
                      absl::Seconds(60)))
      << "delivered " << Delivered("calendar");
  EXPECT_THAT(outbound_->Log(), HasSubstr("replay store answers again: consumption resumed"));
  std::map<std::string, int> pushed;
  for (const auto& s : partner.seen()) ++pushed[s.correlation];
  Tally t;
  for (const auto& id : ids) {
    if (pushed[id] == 0) ++t.lost;
    if (pushed[id] > 1) t.duplicated += pushed[id] - 1;
  }
  auto events = Drain(sub);
  if (events["UP-1"] != 1) ++t.lost;
  t.reconciled = CountOccurrences(outbound_->Log(), "already delivered; acked without a push");
  Report("replay_svc kill -9 and restart mid-flow", t);
  EXPECT_EQ(acked.size(), 1u);
  EXPECT_EQ(t.lost, 0u);
}

TEST_F(FaultTest, ReplayStoreKilledMidReplayLosesNothingAndASecondReplayFinishesIt) {
  CapturePartner partner;
  partner.set_status(422);  // refused: every event parked and recorded DEAD
  const std::string queue = testing::UniqueName("replaykill");
  WriteConfig({{.name = "calendar", .queue = queue, .url = partner.url()}});
  StartReplay();
  constexpr int kEvents = 4000;
  const auto ids = Ids("R-", kEvents);
  Publish(queue, ids);
  StartOutbound();
  auto dead = [&] { return OutboundStats("calendar").dead(); };
  ASSERT_TRUE(WaitFor([&] { return dead() == kEvents; }, absl::Seconds(120))) << dead();
  partner.set_status(201);
  const size_t refused = partner.count();

  // Ops replay them all; the store is killed as soon as the first replayed ones are settled.
  const std::vector<std::string> replay = ReplayDeadCommand("30s");
  auto essctl = std::make_unique<Process>(replay, dir_.File("essctl1.log"));
  uint64_t left = kEvents;
  ASSERT_TRUE(
      WaitFor([&] { return (left = dead()) < kEvents || !essctl->Running(); }, absl::Seconds(60)));
  replay_->Stop(SIGKILL);
  // Killed mid-replay: pages are marked one after another, so some were still DEAD, and
  // essctl saw the store go.
  EXPECT_GT(left, 0u) << "the store was killed only after the replay had ended";
  EXPECT_EQ(essctl->Wait(absl::Seconds(60)), 1) << essctl->Log();
  EXPECT_THAT(essctl->Log(), HasSubstr("UNAVAILABLE"));
  StartReplay();  // same database
  // The page the store was publishing when it died keeps its claims (replay.claim_lease_ms,
  // 60 s): the operator, who knows the store died, replays them all the same at once.
  std::vector<std::string> again = replay;
  again.push_back("--include_in_flight");
  testing::ToolRun second = testing::RunTool(again, dir_.File("essctl2.log"));
  EXPECT_EQ(second.exit_code, 0) << second.output;

  ASSERT_TRUE(WaitFor([&] { return Delivered("calendar") == kEvents; }, absl::Seconds(120)))
      << "delivered " << Delivered("calendar");
  EXPECT_EQ(dead(), 0u);
  std::map<std::string, int> pushed;
  const std::vector<CapturePartner::Seen> seen = partner.seen();
  for (size_t i = refused; i < seen.size(); ++i) ++pushed[seen[i].correlation];
  Tally t;
  for (const auto& id : ids) {
    if (pushed[id] == 0) ++t.lost;
    if (pushed[id] > 1) t.duplicated += pushed[id] - 1;
  }
  std::cout << "FAULT replay: killed with " << left << " of " << kEvents << " records still DEAD"
            << std::endl;
  Report("replay_svc kill -9 mid-replay of 4,000 parked events", t);
  EXPECT_EQ(t.lost, 0u);
}

TEST_F(FaultTest, CircuitBreakerPausesAFailingPartnerAndProbesUntilItRecovers) {
  CapturePartner partner;
  std::atomic<bool> healthy{false};
  absl::Mutex mu;
  std::map<std::string, int> accepted;  // 201s per id
  partner.set_behaviour([&](const CapturePartner::Seen& seen, http::Responder r) {
    if (!healthy) {
      std::move(r).Send({.status = 503, .body = "{}"});
      return;
    }
    {
      absl::MutexLock lock(&mu);
      ++accepted[seen.correlation];
    }
    std::move(r).Send({.status = 201, .body = "{}"});
  });
  const std::string queue = testing::UniqueName("breaker");
  WriteConfig({BreakerPartner(queue, partner.url())});
  StartReplay();
  Publish(queue, Ids("CB-", 200));
  StartOutbound();
  ASSERT_TRUE(WaitFor([&] { return absl::StrContains(outbound_->Log(), "circuit open"); },
                      absl::Seconds(20)));
  // Open: the partner sees only the occasional single probe while messages wait in RabbitMQ.
  absl::SleepFor(absl::Milliseconds(300));
  const size_t at_open = partner.count();
  absl::SleepFor(absl::Seconds(2));
  const size_t probes = partner.count() - at_open;
  EXPECT_LE(probes, 6u) << "requests while open";
  EXPECT_GT(Depth(queue), 100u);
  healthy = true;
  ASSERT_TRUE(WaitFor([&] { return Delivered("calendar") == 200; }, absl::Seconds(30)));
  EXPECT_THAT(outbound_->Log(), HasSubstr("circuit closed: partner recovered"));
  Tally t;
  {
    absl::MutexLock lock(&mu);
    for (const auto& id : Ids("CB-", 200)) {
      if (accepted[id] == 0) ++t.lost;
      if (accepted[id] > 1) t.duplicated += accepted[id] - 1;
    }
  }
  Report("circuit breaker: partner 503 then recovered", t);
  EXPECT_EQ(t.lost, 0u);
  EXPECT_EQ(t.duplicated, 0u);
}

// A memory or disk alarm on the broker: RabbitMQ stops reading every connection that
// publishes until it clears. The outbound lane's consumer connection never publishes (its parks
// and retries leave on the lane's publishing connection), so deliveries go on being pushed and
// acked; a park waits, unacked, until the alarm clears. The inbound lane answers 503 and each
// webhook the partner retries after the alarm is published once.
TEST_F(FaultTest, BrokerResourceAlarmHoldsParksWhileDeliveriesFlowAndWebhooksAreRetried) {
  CapturePartner partner;
  partner.set_behaviour([](const CapturePartner::Seen& s, http::Responder r) {
    const bool poison = s.correlation == "POISON";
    std::move(r).Send({.status = poison ? 422 : 201, .body = poison ? R"({"error":"no"})" : "{}"});
  });
  const std::string queue = testing::UniqueName("alarm");
  WriteConfig({{.name = "calendar",
                .queue = queue,
                .url = partner.url(),
                .webhook_path = "/webhook/prison"}});
  StartReplay();
  // The poison first: its park is the lane's first publish, ahead of the 200 acks.
  auto ids = Ids("M-", 200);
  ids.insert(ids.begin(), "POISON");
  Publish(queue, ids);
  const std::string sub = Subscribe();
  StartInbound();
  MemoryAlarm alarm(this);
  alarm.Set(true);
  ASSERT_THAT(BrokerQuery("eval 'rabbit_alarm:get_alarms().'"), HasSubstr("memory"));
  StartOutbound();
  // The outbound prefetch is 64: a lane whose acks were stuck behind the blocked park would
  // stop there.
  ASSERT_TRUE(WaitFor([&] { return Delivered("calendar") == 200; }, absl::Seconds(30)))
      << "delivered during the alarm: " << Delivered("calendar");
  ASSERT_TRUE(WaitFor([&] { return Unacked(queue) == 1; }, absl::Seconds(10)))
      << "unacked: " << Unacked(queue);
  EXPECT_EQ(Depth(queue + ".parked"), 0u);
  EXPECT_EQ(Record("calendar", "POISON").status(), ess::v1::MESSAGE_STATUS_DEAD);

  // The broker tells a connection it is blocked only once it publishes: the first webhook's
  // publish waits for the alarm to clear (the partner's client gives up); from then on the lane
  // knows, and answers 503 at once.
  auto webhook = [&](const std::string& id, absl::Duration timeout) {
    return http_.SendAndWait(Webhook(id, timeout));
  };
  auto first = webhook("ALARM-1", absl::Seconds(1));
  EXPECT_EQ(first.status().code(), absl::StatusCode::kDeadlineExceeded) << first.status();
  ASSERT_TRUE(WaitFor([&] { return absl::StrContains(inbound_->Log(), "blocks the connection"); },
                      absl::Seconds(10)));
  auto second = webhook("ALARM-2", absl::Seconds(10));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->status, 503) << second->body;

  alarm.Set(false);
  ASSERT_TRUE(WaitFor([&] { return Depth(queue + ".parked") == 1; }, absl::Seconds(10)));
  ASSERT_TRUE(WaitFor([&] { return Unacked(queue) == 0; }, absl::Seconds(10)))
      << "unacked: " << Unacked(queue);
  EXPECT_EQ(Depth(queue), 0u);
  // The partner retries both: each is on the bus once.
  for (const std::string id : {"ALARM-1", "ALARM-2"}) {
    auto retry = webhook(id, absl::Seconds(10));
    ASSERT_TRUE(retry.ok()) << retry.status();
    EXPECT_EQ(retry->status, 200) << id << ": " << retry->body;
  }
  std::map<std::string, int> events;
  ASSERT_TRUE(WaitFor(
      [&] {
        for (auto& [id, n] : Drain(sub)) events[id] += n;
        return events.size() == 2;
      },
      absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(200));  // a second copy would be there by now
  for (auto& [id, n] : Drain(sub)) events[id] += n;
  EXPECT_EQ(events, (std::map<std::string, int>{{"ALARM-1", 1}, {"ALARM-2", 1}}));
  std::set<std::string> unique;
  for (const auto& s : partner.seen()) unique.insert(s.correlation);
  Tally t;
  t.lost = ids.size() - unique.size();
  t.duplicated = partner.count() - unique.size();
  Report("broker memory alarm: outbound flows, parks wait, webhooks retried", t);
  EXPECT_EQ(t.lost, 0u);
  EXPECT_EQ(t.duplicated, 0u);
}

// During a broker resource alarm both lanes read not ready, naming it, and their
// ess_*_broker_blocked gauges are 1: the inbound lane would answer every webhook 503, the outbound
// lane's moves wait. The broker blocks a connection once it publishes during the alarm: the
// inbound lane's with a webhook (whose publish waits; its client gives up), the outbound lane's
// with a park (a push the partner holds until the alarm is on, then refuses). Once the alarm
// clears both are ready again, the gauges 0, and the park is done.
TEST_F(FaultTest, BothLanesReadNotReadyNamingABrokerAlarmUntilItClears) {
  CapturePartner partner;
  absl::Mutex held_mu;
  std::optional<http::Responder> held;  // the answer to "HELD", sent once the alarm is on
  partner.set_behaviour([&](const CapturePartner::Seen& s, http::Responder r) {
    if (s.correlation != "HELD") {
      std::move(r).Send({.status = 201, .body = "{}"});
      return;
    }
    absl::MutexLock lock(&held_mu);
    held = std::move(r);
  });
  const std::string queue = testing::UniqueName("alarmready");
  const int metrics_port = testing::FreePort();
  outbound_extra_ = absl::StrCat(R"(, metrics_listen: "127.0.0.1:)", metrics_port, R"(")");
  WriteConfig({{.name = "calendar",
                .queue = queue,
                .url = partner.url(),
                .timeout_ms = 60000,  // the held push waits for the test, not for the client
                .webhook_path = "/webhook/prison"}});
  StartReplay();
  StartInbound();
  StartOutbound();
  auto get = [&](int port, const std::string& path) {
    auto r = http_.SendAndWait({.method = "GET",
                                .url = absl::StrCat("http://127.0.0.1:", port, path),
                                .timeout = absl::Seconds(2)});
    return r.ok() ? absl::StrCat(r->status, " ", r->body) : std::string(r.status().message());
  };
  // The gauge's sample line, e.g. "ess_inbound_broker_blocked 1"; empty if absent.
  auto gauge = [&](int port, const std::string& name) {
    const std::string page = get(port, "/metrics");
    for (absl::string_view line : absl::StrSplit(page, '\n')) {
      if (absl::StartsWith(line, name + " ")) return std::string(line);
    }
    return std::string();
  };
  auto becomes = [&](int port, const std::string& path, const std::string& want) {
    return WaitFor([&] { return get(port, path) == want; }, absl::Seconds(20));
  };
  const std::string ready = R"(200 {"ready":true})";
  const std::string blocked = R"(503 {"ready":false,"broker_alarm":"low on memory"})";
  ASSERT_TRUE(becomes(inbound_port_, "/readyz", ready)) << get(inbound_port_, "/readyz");
  ASSERT_TRUE(becomes(metrics_port, "/readyz", ready)) << get(metrics_port, "/readyz");
  EXPECT_EQ(get(metrics_port, "/healthz"), R"(200 {"ok":true})");
  EXPECT_EQ(gauge(inbound_port_, "ess_inbound_broker_blocked"), "ess_inbound_broker_blocked 0");
  EXPECT_EQ(gauge(metrics_port, "ess_outbound_broker_blocked"), "ess_outbound_broker_blocked 0");
  ASSERT_NO_FATAL_FAILURE(Publish(queue, {"HELD"}, /*declare=*/false));
  ASSERT_TRUE(WaitFor(
      [&] {
        absl::MutexLock lock(&held_mu);
        return held.has_value();
      },
      absl::Seconds(20)))
      << "the lane did not push HELD";

  MemoryAlarm alarm(this);
  alarm.Set(true);
  ASSERT_THAT(BrokerQuery("eval 'rabbit_alarm:get_alarms().'"), HasSubstr("memory"));
  auto first = http_.SendAndWait(Webhook("ALARM-READY-1", absl::Seconds(1)));
  EXPECT_EQ(first.status().code(), absl::StatusCode::kDeadlineExceeded) << first.status();
  ASSERT_TRUE(becomes(inbound_port_, "/readyz", blocked)) << get(inbound_port_, "/readyz");
  EXPECT_EQ(gauge(inbound_port_, "ess_inbound_broker_blocked"), "ess_inbound_broker_blocked 1");
  EXPECT_EQ(get(inbound_port_, "/healthz"), R"(200 {"ok":true})");
  // The outbound lane has not published during the alarm yet: it is still ready.
  EXPECT_EQ(get(metrics_port, "/readyz"), ready);
  {
    absl::MutexLock lock(&held_mu);
    std::move(*held).Send({.status = 422, .body = R"({"error":"no"})"});
    held.reset();
  }
  ASSERT_TRUE(becomes(metrics_port, "/readyz", blocked)) << get(metrics_port, "/readyz");
  EXPECT_EQ(gauge(metrics_port, "ess_outbound_broker_blocked"), "ess_outbound_broker_blocked 1");
  EXPECT_EQ(get(metrics_port, "/healthz"), R"(200 {"ok":true})");
  EXPECT_EQ(Depth(queue + ".parked"), 0u);

  alarm.Set(false);
  EXPECT_TRUE(becomes(inbound_port_, "/readyz", ready)) << get(inbound_port_, "/readyz");
  EXPECT_TRUE(becomes(metrics_port, "/readyz", ready)) << get(metrics_port, "/readyz");
  EXPECT_EQ(gauge(inbound_port_, "ess_inbound_broker_blocked"), "ess_inbound_broker_blocked 0");
  EXPECT_EQ(gauge(metrics_port, "ess_outbound_broker_blocked"), "ess_outbound_broker_blocked 0");
  EXPECT_TRUE(WaitFor([&] { return Depth(queue + ".parked") == 1; }, absl::Seconds(10)));
}

// With quorum queues the broker counts every return of a delivery towards x-delivery-limit and
// dead-letters a message over it (into the parked queue, without a DEAD record). A half-open
// breaker takes its probe one message at a time, so a partner down for many probe cycles costs
// each waiting message one return (when the breaker opened), not one per cycle.
TEST_F(FaultTest, ALongPartnerOutageOnQuorumQueuesCostsEachMessageOneReturnNotOnePerProbe) {
  CapturePartner partner;
  std::atomic<bool> healthy{false};
  partner.set_behaviour([&](const CapturePartner::Seen&, http::Responder r) {
    std::move(r).Send({.status = healthy ? 201 : 503, .body = "{}"});
  });
  const std::string queue = testing::UniqueName("quorumbreaker");
  bus_extra_ = ", quorum_queues: true, delivery_limit: 3";
  WriteConfig({BreakerPartner(queue, partner.url())});
  StartReplay();
  StartOutbound();
  ASSERT_TRUE(WaitFor(
      [&] {
        auto conn = amqp::Connection::Open(broker_);
        return conn.ok() && (*conn)->MessageCount(queue).ok();
      },
      absl::Seconds(20)))
      << "the lane did not declare its queue";
  const std::vector<std::string> ids = Ids("QB-", 200);
  Publish(queue, ids, /*declare=*/false);
  // Six failed probe cycles (open 300 ms, doubling to 1 s), twice the delivery limit.
  ASSERT_TRUE(WaitFor([&] { return CountOccurrences(outbound_->Log(), "circuit open") >= 6; },
                      absl::Seconds(30)));
  EXPECT_EQ(Depth(queue + ".parked"), 0u) << "messages the broker dead-lettered";
  healthy = true;
  ASSERT_TRUE(WaitFor([&] { return Delivered("calendar") == ids.size(); }, absl::Seconds(30)))
      << "delivered " << Delivered("calendar") << ", parked by the broker "
      << Depth(queue + ".parked");
  EXPECT_EQ(Depth(queue + ".parked"), 0u);
  std::set<std::string> unique;
  for (const auto& s : partner.seen()) unique.insert(s.correlation);
  Tally t;
  t.lost = ids.size() - unique.size();
  Report("quorum queues, delivery limit 3: partner 503 for six probe cycles, then recovered", t);
  EXPECT_EQ(t.lost, 0u);
}

TEST_F(FaultTest, GracefulShutdownFinishesInFlightWorkAndAcksIt) {
  CapturePartner partner;
  SlowDown(partner, 2000);
  const std::string queue = testing::UniqueName("drain");
  WriteConfig({{.name = "calendar", .queue = queue, .url = partner.url()}});
  StartReplay();
  Publish(queue, Ids("G-", 2000));
  StartOutbound();
  ASSERT_TRUE(WaitFor([&] { return partner.count() > 200; }, absl::Seconds(30)));
  const absl::Time t0 = absl::Now();
  EXPECT_EQ(outbound_->Stop(SIGTERM), 0);
  const absl::Duration took = absl::Now() - t0;
  const size_t pushed = partner.count();
  // Everything pushed was recorded and acked: a second lane pushes none of it again.
  ASSERT_TRUE(WaitFor([&] { return Delivered("calendar") == pushed; }, absl::Seconds(5)))
      << Delivered("calendar") << " of " << pushed;
  EXPECT_EQ(Depth(queue), 2000 - pushed);
  StartOutbound();
  ASSERT_TRUE(WaitFor([&] { return Delivered("calendar") == 2000; }, absl::Seconds(60)));
  Tally t;
  t.duplicated = partner.count() - 2000;
  std::cout << "shutdown took " << took << " with " << pushed << " pushed" << std::endl;
  Report("SIGTERM mid-flow, then a new lane", t);
  EXPECT_EQ(t.duplicated, 0u);
  EXPECT_LT(took, absl::Seconds(6));
}

// A lane stopped with SIGTERM still publishes the audit event of every delivery it finishes,
// even while a memory alarm keeps the broker from reading its audit connection. The partner
// holds 32 answers. Under the alarm it lets one go, whose audit event blocks the connection;
// then the lane gets SIGTERM, and the 32 it holds then go at once, more than a batch of 8. The lane
// holds their audit events instead of failing them, and waits for them before it stops its
// publisher (`AuditSink::Drain`), until the alarm clears.
TEST_F(FaultTest, GracefulShutdownPublishesTheAuditEventOfEveryDeliveryItFinished) {
  const std::string audit_exchange = exchange_ + ".audit";
  bus_extra_ = absl::StrCat(", audit_exchange: ", audit_exchange, ", audit_batch_max: 8");
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok()) << conn.status();
  const std::string audit = testing::BindSubscriber(**conn, audit_exchange);
  constexpr size_t kAnswered = 200, kInFlight = 32;  // the partner's max_in_flight
  CapturePartner partner;
  absl::Mutex held_mu;
  std::vector<http::Responder> held;
  size_t answered = 0;
  partner.set_behaviour([&](const CapturePartner::Seen&, http::Responder r) {
    absl::MutexLock lock(&held_mu);
    if (answered < kAnswered) {
      ++answered;
      std::move(r).Send({.status = 201, .body = "{}"});
    } else {
      held.push_back(std::move(r));
    }
  });
  const std::string queue = testing::UniqueName("drain-audit");
  WriteConfig({{.name = "calendar", .queue = queue, .url = partner.url()}});
  StartReplay();
  Publish(queue, Ids("GA-", 1000));
  StartOutbound();
  auto held_count = [&] {
    absl::MutexLock lock(&held_mu);
    return held.size();
  };
  ASSERT_TRUE(WaitFor([&] { return held_count() == kInFlight; }, absl::Seconds(30)))
      << held_count() << " requests held";
  ASSERT_TRUE(WaitFor([&] { return Delivered("calendar") == kAnswered; }, absl::Seconds(10)));
  MemoryAlarm alarm(this);
  alarm.Set(true);
  auto release = [&](size_t n) {
    absl::MutexLock lock(&held_mu);
    for (size_t i = 0; i < n; ++i) std::move(held[i]).Send({.status = 201, .body = "{}"});
    held.erase(held.begin(), held.begin() + n);
  };
  release(1);
  ASSERT_TRUE(outbound_->WaitForLog(
      "blocks the connection (resource alarm)\" role=publisher connection=outbound_svc-audit"))
      << outbound_->Log();
  // The lane fills the slot again before it stops taking deliveries: 32 are held at SIGTERM.
  ASSERT_TRUE(WaitFor([&] { return held_count() == kInFlight; }, absl::Seconds(10)));
  ASSERT_EQ(kill(outbound_->pid(), SIGTERM), 0);
  ASSERT_TRUE(outbound_->WaitForLog("msg=stopping", absl::Seconds(10))) << outbound_->Log();
  release(kInFlight);
  constexpr size_t kDelivered = kAnswered + 1 + kInFlight;
  // The replay store is no broker client: the deliveries finish and are recorded.
  ASSERT_TRUE(WaitFor([&] { return Delivered("calendar") == kDelivered; }, absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(500));  // the lane waits in Drain meanwhile
  alarm.Set(false);
  ASSERT_EQ(outbound_->Wait(absl::Seconds(20)), 0);
  EXPECT_EQ(Depth(queue), 1000 - kDelivered);
  // The lane has exited: every audit event it had confirmed is on the queue by now.
  std::map<std::string, int> audited;  // correlation id -> DELIVERED audit events
  const std::vector<ess::v1::SyncAudit> events = AuditEvents(audit);
  for (const ess::v1::SyncAudit& e : events) {
    if (e.status() == ess::v1::MESSAGE_STATUS_DELIVERED) ++audited[e.correlation_id()];
  }
  Tally t;  // of audit events
  t.lost = kDelivered - std::min(audited.size(), kDelivered);
  t.duplicated = events.size() - audited.size();
  Report("SIGTERM under a memory alarm, audit events", t);
  EXPECT_EQ(events.size(), kDelivered);
  EXPECT_EQ(audited.size(), kDelivered);
  for (const auto& [id, n] : audited) EXPECT_EQ(n, 1) << id;
  EXPECT_THAT(outbound_->Log(), ::testing::Not(HasSubstr("audit event")));  // none failed
  ASSERT_TRUE((*conn)->DeleteQueue(audit).ok());
}

// Webhooks before and during a memory alarm (the first one then waits, the next is refused
// with 503), the alarm cleared, optionally with SIGTERM to the lane meanwhile: each webhook is
// audited once, with its outcome.
void FaultTest::WebhooksAuditedAcrossAnAlarm(bool stop_during_it) {
  const std::string audit_exchange = exchange_ + ".audit";
  bus_extra_ = absl::StrCat(", audit_exchange: ", audit_exchange);
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok()) << conn.status();
  const std::string audit = testing::BindSubscriber(**conn, audit_exchange);
  CapturePartner partner;
  WriteConfig({{.name = "calendar", .url = partner.url(), .webhook_path = "/webhook/prison"}});
  StartReplay();
  const std::string sub = Subscribe();
  StartInbound();
  auto webhook = [&](const std::string& id, absl::Duration timeout) {
    return http_.SendAndWait(Webhook(id, timeout));
  };
  auto before = webhook("AUD-1", absl::Seconds(10));
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_EQ(before->status, 200);
  std::vector<ess::v1::SyncAudit> events;
  ASSERT_TRUE(WaitFor(
      [&] {
        for (auto& e : AuditEvents(audit)) events.push_back(std::move(e));
        return !events.empty();
      },
      absl::Seconds(10)));
  MemoryAlarm alarm(this);
  alarm.Set(true);
  // The first publish under the alarm waits for it (the partner's client gives up); from then
  // on the lane knows, and answers 503 at once.
  auto first = webhook("AUD-2", absl::Seconds(1));
  EXPECT_EQ(first.status().code(), absl::StatusCode::kDeadlineExceeded) << first.status();
  ASSERT_TRUE(inbound_->WaitForLog("blocks the connection", absl::Seconds(10))) << inbound_->Log();
  auto refused = webhook("AUD-3", absl::Seconds(10));
  ASSERT_TRUE(refused.ok()) << refused.status();
  ASSERT_EQ(refused->status, 503) << refused->body;
  absl::SleepFor(absl::Milliseconds(300));  // the refusal's audit event waits meanwhile
  for (auto& e : AuditEvents(audit)) events.push_back(std::move(e));
  EXPECT_EQ(events.size(), 1u) << "published during the alarm";
  if (stop_during_it) {
    ASSERT_EQ(kill(inbound_->pid(), SIGTERM), 0);
    ASSERT_TRUE(inbound_->WaitForLog("msg=stopping", absl::Seconds(10))) << inbound_->Log();
    absl::SleepFor(absl::Milliseconds(300));
    ASSERT_TRUE(inbound_->Running()) << "stopped with AUD-2 unanswered\n" << inbound_->Log();
  }
  alarm.Set(false);
  if (stop_during_it) {
    ASSERT_EQ(inbound_->Wait(absl::Seconds(20)), 0) << inbound_->Log();
  }
  ASSERT_TRUE(WaitFor(
      [&] {
        for (auto& e : AuditEvents(audit)) events.push_back(std::move(e));
        return events.size() >= 3;
      },
      absl::Seconds(10)))
      << events.size() << " audit events\n"
      << inbound_->Log();
  absl::SleepFor(absl::Milliseconds(200));  // a fourth would be there by now
  for (auto& e : AuditEvents(audit)) events.push_back(std::move(e));
  std::map<std::string, std::string> outcome;  // correlation id -> status
  for (const ess::v1::SyncAudit& e : events) {
    EXPECT_EQ(e.direction(), ess::v1::DIRECTION_INBOUND);
    outcome[e.correlation_id()] += ess::v1::MessageStatus_Name(e.status());
  }
  EXPECT_EQ(outcome, (std::map<std::string, std::string>{
                         {"AUD-1", "MESSAGE_STATUS_PUBLISHED"},
                         {"AUD-2", "MESSAGE_STATUS_PUBLISHED"},  // once the alarm cleared
                         {"AUD-3", "MESSAGE_STATUS_FAILED"},
                     }));
  for (const ess::v1::SyncAudit& e : events) {
    if (e.correlation_id() == "AUD-3") {
      EXPECT_THAT(e.error(), HasSubstr("alarm")) << e.ShortDebugString();
    }
  }
  EXPECT_THAT(inbound_->Log(), ::testing::Not(HasSubstr("audit event not published")));
  ASSERT_TRUE((*conn)->DeleteQueue(audit).ok());
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// The inbound lane's audit events share its publisher with the webhooks' events, which fail
// fast during a broker's resource alarm (the partner gets 503 and retries). Its audit events wait
// for the alarm to clear instead, so the refusal of a webhook during the alarm is audited too.
TEST_F(FaultTest, AuditEventsOfWebhooksDuringAnAlarmArePublishedOnceItClears) {
  WebhooksAuditedAcrossAnAlarm(/*stop_during_it=*/false);
}

// The same with SIGTERM during the alarm: the lane stays up until the webhook whose publish
// waits for the alarm is answered, once it clears, and no audit event is lost to the stop.
TEST_F(FaultTest, AnInboundLaneStoppedDuringAnAlarmStillPublishesItsAuditEvents) {
  WebhooksAuditedAcrossAnAlarm(/*stop_during_it=*/true);
}

// A replay the broker confirms only after its call answered (a memory alarm holds the store's
// publishes) is marked when the confirm comes. replay_svc stopped meanwhile waits for it, so the
// records are marked before it exits, and a second replay publishes none of them again. (The
// broker tells the store's connection it is blocked once it reads its first publish: the ones
// the store sends before it knows stay unconfirmed, the later ones fail at once and stay DEAD.)
TEST_F(FaultTest, AStoreStoppedBeforeItsReplaysAreConfirmedStillMarksThem) {
  constexpr int kEvents = 20;
  CapturePartner partner;
  partner.set_status(422);  // refused: every event parked and recorded DEAD
  const std::string queue = testing::UniqueName("replayalarm");
  WriteConfig({{.name = "calendar", .queue = queue, .url = partner.url()}});
  StartReplay();
  Publish(queue, Ids("RA-", kEvents));
  StartOutbound();
  auto dead = [&] { return OutboundStats("calendar").dead(); };
  ASSERT_TRUE(WaitFor([&] { return dead() == kEvents; }, absl::Seconds(60))) << dead();
  ASSERT_EQ(outbound_->Stop(), 0);  // the replayed events stay in the queue, to be counted
  ASSERT_EQ(Depth(queue), 0u);

  MemoryAlarm alarm(this);
  alarm.Set(true);
  const std::vector<std::string> replay = ReplayDeadCommand("3s");
  testing::ToolRun first = testing::RunTool(replay, dir_.File("essctl1.log"));
  EXPECT_EQ(first.exit_code, 1) << first.output;
  std::smatch counts;
  ASSERT_TRUE(std::regex_search(first.output, counts,
                                std::regex(R"(failed (\d+), unconfirmed (\d+) \(published;)")))
      << first.output;
  const int failed = std::stoi(counts[1]), unconfirmed = std::stoi(counts[2]);
  EXPECT_EQ(failed + unconfirmed, kEvents);
  EXPECT_GE(unconfirmed, 1);
  EXPECT_EQ(dead(), kEvents);  // none marked before its confirm
  ASSERT_EQ(kill(replay_->pid(), SIGTERM), 0);
  ASSERT_TRUE(replay_->WaitForLog("msg=stopping", absl::Seconds(10))) << replay_->Log();
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_TRUE(replay_->Running()) << "stopped with its replays unconfirmed\n" << replay_->Log();
  alarm.Set(false);
  ASSERT_EQ(replay_->Wait(absl::Seconds(20)), 0) << replay_->Log();
  EXPECT_THAT(replay_->Log(), HasSubstr("replayed (confirmed after the call answered)"));
  EXPECT_THAT(replay_->Log(), ::testing::Not(HasSubstr("keep their claims")));

  StartReplay();                                     // same database
  EXPECT_EQ(dead(), static_cast<uint64_t>(failed));  // the unconfirmed ones were marked
  testing::ToolRun second = testing::RunTool(replay, dir_.File("essctl2.log"));
  EXPECT_EQ(second.exit_code, 0) << second.output;
  EXPECT_THAT(second.output, HasSubstr(absl::StrCat("(replayed ", failed, ",")));
  Tally t;
  const uint32_t queued = Depth(queue);
  t.lost = kEvents - std::min<uint32_t>(queued, kEvents);
  t.duplicated = queued - std::min<uint32_t>(queued, kEvents);
  Report("replay_svc stopped before its replays were confirmed (memory alarm)", t);
  EXPECT_EQ(queued, static_cast<uint32_t>(kEvents));  // each once
}

// `essctl replay --wait` of a replay the broker confirms late: until the confirm is marked, the
// record keeps the DEAD it had, which is not the outcome of the replay. essctl waits for the
// record to be written after the replay read it, and reports the delivery that follows.
TEST_F(FaultTest, ReplayWaitFollowsARecordWhoseConfirmCameLateToItsDelivery) {
  CapturePartner partner;
  partner.set_status(422);  // refused: parked and recorded DEAD
  const std::string queue = testing::UniqueName("replaywait");
  WriteConfig({{.name = "calendar", .queue = queue, .url = partner.url()}});
  StartReplay();
  Publish(queue, Ids("RW-", 1));
  StartOutbound();
  auto dead = [&] { return OutboundStats("calendar").dead(); };
  ASSERT_TRUE(WaitFor([&] { return dead() == 1; }, absl::Seconds(60))) << dead();
  partner.set_status(201);

  MemoryAlarm alarm(this);
  alarm.Set(true);  // the store's publish waits: the call answers it unconfirmed
  std::vector<std::string> replay = ReplayDeadCommand("3s");
  replay.insert(replay.end(), {"--wait", "60s"});
  Process essctl(replay, dir_.File("essctl.log"));
  ASSERT_TRUE(
      WaitFor([&] { return absl::StrContains(essctl.Log(), "unconfirmed 1") || !essctl.Running(); },
              absl::Seconds(30)))
      << essctl.Log();
  alarm.Set(false);
  EXPECT_EQ(essctl.Wait(absl::Seconds(90)), 1) << essctl.Log();  // 1: a publish was unconfirmed
  EXPECT_THAT(essctl.Log(), HasSubstr("unconfirmed 1 (published; marked when the broker "
                                      "confirms)"));
  EXPECT_THAT(essctl.Log(), HasSubstr("(then: delivered 1, parked again 0, still pending 0)"));
  EXPECT_EQ(partner.count(), 2u);
}

}  // namespace
}  // namespace ess
