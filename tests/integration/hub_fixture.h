// The fixture of the hub's end-to-end tests: the replay_svc, outbound_svc and inbound_svc
// binaries on one hub config, the RabbitMQ that ./test.sh started, and helpers to publish events,
// post webhooks and read the replay store.
#ifndef ESS_TESTS_INTEGRATION_HUB_FIXTURE_H_
#define ESS_TESTS_INTEGRATION_HUB_FIXTURE_H_

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <future>
#include <map>
#include <random>
#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/mutex.h"
#include "common/amqp.h"
#include "common/http_client.h"
#include "common/http_server.h"
#include "common/replay_client.h"
#include "common/webhook_signature.h"
#include "tests/integration/capture_partner.h"
#include "tests/integration/harness.h"

namespace ess {

class HubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker_ = testing::BrokerOptions();
    queue_ = testing::UniqueName("visit_updates");
    exchange_ = testing::UniqueName("events");
    replay_port_ = testing::FreePort();
    inbound_port_ = testing::FreePort();
  }

  void TearDown() override {
    for (auto* p : {&outbound_, &inbound_, &partner_proc_, &replay_}) {
      // An idle gRPC client would hold replay_svc's graceful shutdown for a few seconds.
      if (p == &replay_) stub_.reset();
      if (*p) {
        EXPECT_EQ((*p)->Stop(), 0) << (*p)->Log();
      }
    }
    if (HasFailure()) {
      for (auto* p : {&replay_, &outbound_, &inbound_, &partner_proc_}) {
        if (*p) std::cerr << "---- log ----\n" << (*p)->Log();
      }
    }
  }

  // The hub config, with the partner at `partner_url`.
  std::string Config(const std::string& partner_url, int bus_port = 0, int replay_port = 0) const {
    std::string yaml = absl::StrReplaceAll(
        R"(
bus:
  host: 127.0.0.1
  port: BUS_PORT
  events_exchange: EXCHANGE
  quorum_queues: QUORUM
  audit_exchange: AUDIT
  audit_batch_max: AUDIT_BATCH_MAX
replay:
  listen: 127.0.0.1:REPLAY_LISTEN
  address: 127.0.0.1:REPLAY_PORT
REPLAY_STORE
REPLAY_EXTRA
outbound:
  prefetch: 128
OUTBOUND_EXTRA
inbound:
  listen: 127.0.0.1:INBOUND_PORT
  dedupe_memory_ids: 2  # the store answers for older ids
  claim_lease_ms: 2000  # short, for the test of a lease that runs out
logging:
  level: info
  pii_fields: [inmateId, inmate]
partners:
  - name: prison_calendar
    adapter: rest
    settings:
      base_url: PARTNER_URL
      path: /api/slots
      timeout_ms: 3000
    outbound:
      queue: QUEUE
      max_in_flight: 32
      retry: {max_attempts: 2, initial_backoff_ms: 200, max_backoff_ms: 3000}
ROUTE_EXTRA
      mapping:
        - {target: id, source: id}
        - {target: inmate, source: inmateId}
        - {target: slot, source: slotUtc}
    inbound:
      webhook_path: /webhook/prison
      WEBHOOK_AUTH
      mapping:
        - {target: type, constant: SlotConfirmed}
        - {target: id, source: id}
        - {target: status, source: status}
  - name: clinic  # a second partner, inbound only: its ids are its own
    adapter: rest
    settings: {base_url: PARTNER_URL}
    inbound:
      webhook_path: /webhook/clinic
      mapping:
        - {target: type, constant: SlotConfirmed}
        - {target: id, source: id}
        - {target: status, source: status}
)",
        {{"BUS_PORT", absl::StrCat(bus_port ? bus_port : broker_.port)},
         {"EXCHANGE", exchange_},
         {"REPLAY_LISTEN", absl::StrCat(replay_port_)},
         {"REPLAY_PORT", absl::StrCat(replay_port ? replay_port : replay_port_)},
         {"INBOUND_PORT", absl::StrCat(inbound_port_)},
         {"PARTNER_URL", partner_url},
         {"QUEUE", queue_},
         {"QUORUM", quorum_ ? "true" : "false"},
         {"AUDIT", exchange_ + ".audit"},
         {"AUDIT_BATCH_MAX", absl::StrCat(audit_batch_max_)},
         {"REPLAY_STORE", replay_store_},
         {"REPLAY_EXTRA", replay_extra_},
         {"OUTBOUND_EXTRA", outbound_extra_},
         {"ROUTE_EXTRA", route_extra_},
         {"WEBHOOK_AUTH",
          webhook_auth_.empty() ? std::string("# no auth") : "auth: " + webhook_auth_}});
    return yaml;
  }

  void StartHub(const std::string& partner_url, std::vector<std::string> outbound_flags = {}) {
    dir_.Write("hub.yaml", Config(partner_url));
    StartReplay();
    std::vector<std::string> args = {testing::BinaryPath("outbound_svc"), "--config",
                                     dir_.File("hub.yaml")};
    args.insert(args.end(), outbound_flags.begin(), outbound_flags.end());
    outbound_ = std::make_unique<testing::Process>(args, dir_.File("outbound.log"));
    ASSERT_TRUE(outbound_->WaitForLog("outbound lane running")) << outbound_->Log();
    StartInbound("hub.yaml");
  }

  // A second replay_svc on the hub's store (its config's postgres), listening on `port` (its
  // config: hub-b.yaml); null, with the test failed, if it does not answer.
  std::unique_ptr<testing::Process> StartReplicaB(const std::string& partner_url, int port) {
    dir_.Write("hub-b.yaml", absl::StrReplaceAll(Config(partner_url, 0, port),
                                                 {{absl::StrCat("listen: 127.0.0.1:", replay_port_),
                                                   absl::StrCat("listen: 127.0.0.1:", port)}}));
    auto replica = std::make_unique<testing::Process>(
        std::vector<std::string>{testing::BinaryPath("replay_svc"), "--config",
                                 dir_.File("hub-b.yaml")},
        dir_.File("replay-b.log"));
    auto stub = MakeReplayStub(absl::StrCat("127.0.0.1:", port), replay_tls_);
    if (!testing::WaitForReplay(*stub, absl::Seconds(20))) {
      ADD_FAILURE() << "replica B does not answer\n" << replica->Log();
      return nullptr;
    }
    return replica;
  }

  void StartReplay() {
    replay_ = std::make_unique<testing::Process>(
        std::vector<std::string>{testing::BinaryPath("replay_svc"), "--config",
                                 dir_.File("hub.yaml")},
        dir_.File("replay.log"));
    stub_ = MakeReplayStub(absl::StrCat("127.0.0.1:", replay_port_), replay_tls_);
    ASSERT_TRUE(testing::WaitForReplay(*stub_, absl::Seconds(20))) << replay_->Log();
  }

  void StartInbound(const std::string& config_name) {
    inbound_ = std::make_unique<testing::Process>(
        std::vector<std::string>{testing::BinaryPath("inbound_svc"), "--config",
                                 dir_.File(config_name)},
        dir_.File("inbound.log"));
    ASSERT_TRUE(testing::WaitFor(
        [&] {
          auto r = http_.SendAndWait(
              {.method = "GET", .url = Url("/healthz"), .timeout = absl::Seconds(1)});
          return r.ok() && r->status == 200;
        },
        absl::Seconds(20)))
        << inbound_->Log();
  }

  std::string Url(const std::string& path) const {
    return absl::StrCat("http://127.0.0.1:", inbound_port_, path);
  }

  absl::StatusOr<http::Response> PostWebhook(const std::string& body,
                                             const std::string& path = "/webhook/prison",
                                             const http::HeaderList& more_headers = {}) {
    http::HeaderList headers = {{"Content-Type", "application/json"}};
    headers.insert(headers.end(), more_headers.begin(), more_headers.end());
    return http_.SendAndWait({.url = Url(path), .headers = std::move(headers), .body = body});
  }

  static std::string VisitEvent(const std::string& id) {
    return absl::StrCat(R"({"type":"VisitScheduleUpdated","id":")", id,
                        R"(","inmateId":"A123","slotUtc":"2026-12-01T15:00:00Z"})");
  }

  // Publishes each body to the lane's queue with the event id as correlation id; declares the
  // queue (classic) first unless the lane already did.
  void Publish(const std::vector<std::pair<std::string, std::string>>& id_and_body,
               bool declare = true) {
    if (declare) {
      auto conn = amqp::Connection::Open(broker_);
      ASSERT_TRUE(conn.ok()) << conn.status();
      ASSERT_TRUE((*conn)->Apply({.queues = {{.name = queue_}}}).ok());
    }
    amqp::Publisher pub({.connection = broker_});
    ASSERT_TRUE(pub.Start().ok());
    std::atomic<int> ok{0}, failed{0};
    for (const auto& [id, body] : id_and_body) {
      pub.Publish("", queue_, {.body = body, .correlation_id = id, .message_id = id},
                  [&](absl::Status s) { (s.ok() ? ok : failed).fetch_add(1); });
    }
    ASSERT_TRUE(testing::WaitFor(
        [&] { return ok + failed == static_cast<int>(id_and_body.size()); }, absl::Seconds(30)));
    EXPECT_EQ(failed.load(), 0);
    pub.Stop();
  }

  // Publishes the visits VIS-1..VIS-n and waits (up to 30 s) until the store has each of them
  // delivered.
  void DeliverVisits(int n) {
    std::vector<std::pair<std::string, std::string>> events;
    for (int i = 1; i <= n; ++i) {
      const std::string id = absl::StrCat("VIS-", i);
      events.emplace_back(id, VisitEvent(id));
    }
    ASSERT_NO_FATAL_FAILURE(Publish(events));
    ASSERT_TRUE(testing::WaitFor(
        [&] { return Stats(ess::v1::DIRECTION_OUTBOUND).delivered() == static_cast<uint64_t>(n); },
        absl::Seconds(30)))
        << outbound_->Log();
  }

  // The partner's callback confirming visit `id`, answered 200, and its trail confirmed (up to
  // 10 s).
  void ConfirmVisit(const std::string& id) {
    auto resp = PostWebhook(absl::StrCat(R"({"id":")", id, R"(","status":"confirmed"})"));
    ASSERT_TRUE(resp.ok()) << resp.status();
    ASSERT_EQ(resp->status, 200) << resp->body;
    ASSERT_TRUE(testing::WaitFor([&] { return Trail(id).trail().stage() == "confirmed"; },
                                 absl::Seconds(10)));
  }

  // A context for a call of the test's own to the store, with replay_token_ when set.
  std::unique_ptr<grpc::ClientContext> Call() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    if (!replay_token_.empty()) ctx->AddMetadata("authorization", "Bearer " + replay_token_);
    return ctx;
  }

  ess::v1::PartnerStats Stats(ess::v1::Direction direction) {
    ess::v1::StatsResponse resp;
    EXPECT_TRUE(stub_->Stats(Call().get(), {}, &resp).ok());
    for (const auto& p : resp.partners()) {
      if (p.partner() == "prison_calendar" && p.direction() == direction) return p;
    }
    return {};
  }

  ess::v1::GetResponse Trail(const std::string& cid) {
    ess::v1::GetRequest req;
    req.set_correlation_id(cid);
    ess::v1::GetResponse resp;
    EXPECT_TRUE(stub_->Get(Call().get(), req, &resp).ok());
    return resp;
  }

  // Ready messages in `queue`; 0 while it does not exist yet (the lane declares it at start).
  uint32_t DepthOrZero(const std::string& queue) {
    auto conn = amqp::Connection::Open(broker_);
    if (!conn.ok()) return 0;
    auto n = (*conn)->MessageCount(queue);
    return n.ok() ? *n : 0;
  }

  uint32_t Depth(const std::string& queue) {
    auto conn = amqp::Connection::Open(broker_);
    EXPECT_TRUE(conn.ok());
    auto n = (*conn)->MessageCount(queue);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? *n : 0;
  }

  amqp::ConnectionOptions broker_;
  bool quorum_ = false;
  uint32_t audit_batch_max_ = 0;  // bus.audit_batch_max
  // Where the store keeps its records (a line of the `replay` section).
  std::string replay_store_ = "  database_path: replay.db";
  // More lines of the `replay` section (indented two spaces), e.g. its `auth`.
  std::string replay_extra_;
  // More lines of the `outbound` section (indented two spaces).
  std::string outbound_extra_;
  // More lines of prison_calendar's outbound route (indented six spaces).
  std::string route_extra_;
  // The token of the test's own calls to the store (with an `auth` in replay_extra_).
  std::string replay_token_;
  // How the test's own calls reach the store (with a `tls` in replay_extra_); plaintext
  // without a CA.
  ReplayTls replay_tls_;
  // Set (a YAML map, e.g. "{secrets_env: NAME}"): the webhook route's `auth`.
  std::string webhook_auth_;

  // A signing secret made for this run, put in the environment variable `env` (which
  // inbound_svc and demo_partner inherit); never written to a file.
  static std::string NewSecretInEnvironment(const char* env) {
    std::random_device seed;
    std::mt19937_64 bits(seed());
    std::string key(32, '\0');
    for (char& c : key) c = static_cast<char>(bits());
    std::string secret = "whsec_" + absl::Base64Escape(key);
    EXPECT_EQ(setenv(env, secret.c_str(), 1), 0);
    return secret;
  }
  std::string queue_, exchange_;
  int replay_port_ = 0, inbound_port_ = 0;
  testing::TempDir dir_;
  http::Client http_{{}};
  std::unique_ptr<ess::v1::ReplayService::Stub> stub_;
  std::unique_ptr<testing::Process> replay_, outbound_, inbound_, partner_proc_;
};

}  // namespace ess

#endif  // ESS_TESTS_INTEGRATION_HUB_FIXTURE_H_
