// The hub end to end on real parts: the replay_svc, outbound_svc and inbound_svc binaries, the
// RabbitMQ that ./test.sh started, and partners served over real HTTP on loopback.
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/amqp.h"
#include "common/http_client.h"
#include "common/http_server.h"
#include "common/replay_client.h"
#include "common/webhook_signature.h"
#include "ess/v1/event.pb.h"
#include "google/protobuf/util/json_util.h"
#include "tests/integration/capture_partner.h"
#include "tests/integration/harness.h"
#include "tests/integration/hub_fixture.h"
#include "tests/replay_svc/test_store.h"

namespace ess {
namespace {

using testing::BinaryPath;
using ::testing::HasSubstr;
using testing::Process;
using testing::WaitFor;

using testing::CapturePartner;

TEST_F(HubTest, ThousandEventsAreEachDeliveredOnceRecordedAndAcked) {
  CapturePartner partner;
  StartHub(absl::StrCat("http://127.0.0.1:", partner.port()));
  constexpr int kEvents = 1000;
  std::vector<std::pair<std::string, std::string>> events;
  for (int i = 0; i < kEvents; ++i) {
    std::string id = absl::StrCat("VIS-", i);
    events.emplace_back(id, VisitEvent(id));
  }
  Publish(events);

  ASSERT_TRUE(WaitFor([&] { return partner.count() >= kEvents; }, absl::Seconds(60)))
      << "partner got " << partner.count();
  ASSERT_TRUE(WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).delivered() >= kEvents; },
                      absl::Seconds(30)));
  // Stop the lane: anything it had not acked would go back to the queue now.
  EXPECT_EQ(outbound_->Stop(), 0) << outbound_->Log();
  outbound_.reset();

  std::vector<CapturePartner::Seen> seen = partner.seen();
  EXPECT_EQ(seen.size(), static_cast<size_t>(kEvents));
  std::set<std::string> ids;
  for (const auto& s : seen) {
    EXPECT_EQ(s.path, "/api/slots");
    ASSERT_EQ(s.idempotency_key, s.correlation);
    EXPECT_EQ(s.body, absl::StrCat(R"({"id":")", s.correlation,
                                   R"(","inmate":"A123","slot":"2026-12-01T15:00:00Z"})"));
    ids.insert(s.correlation);
  }
  EXPECT_EQ(ids.size(), static_cast<size_t>(kEvents));
  EXPECT_EQ(*ids.begin(), "VIS-0");
  auto stats = Stats(ess::v1::DIRECTION_OUTBOUND);
  EXPECT_EQ(stats.delivered(), static_cast<uint64_t>(kEvents));
  EXPECT_EQ(stats.dead(), 0u);
  EXPECT_EQ(Depth(queue_), 0u);
  EXPECT_EQ(Depth(queue_ + ".parked"), 0u);

  auto trail = Trail("VIS-500");
  ASSERT_EQ(trail.records_size(), 1);
  EXPECT_EQ(trail.records(0).status(), ess::v1::MESSAGE_STATUS_DELIVERED);
  EXPECT_EQ(trail.records(0).payload(), VisitEvent("VIS-500"));
  EXPECT_EQ(trail.records(0).source(), queue_);
  EXPECT_EQ(trail.trail().stage(), "delivered");
}

// The services are linked with the malloc CMake chose (ESS_MALLOC), and the dynamic linker
// resolves every library's malloc to it: each service says which one it runs on when it starts.
TEST_F(HubTest, EachServiceRunsOnTheMallocItWasBuiltWith) {
  CapturePartner partner;
  StartHub(absl::StrCat("http://127.0.0.1:", partner.port()));
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer's runtime takes malloc over, whatever ESS_MALLOC chose.
  const std::string expected = " malloc=libasan.so";
#else
  const std::string expected = absl::StrCat(" malloc=", ESS_EXPECTED_MALLOC);
#endif
  EXPECT_TRUE(replay_->WaitForLog(expected)) << replay_->Log();
  EXPECT_TRUE(outbound_->WaitForLog(expected)) << outbound_->Log();
  EXPECT_TRUE(inbound_->WaitForLog(expected)) << inbound_->Log();
}

// The names of a process's threads, as `top -H` and `perf` show them.
std::set<std::string> ThreadNames(pid_t pid) {
  std::set<std::string> names;
  const std::string tasks = absl::StrCat("/proc/", pid, "/task");
  for (const auto& task : std::filesystem::directory_iterator(tasks)) {
    std::string name;
    std::getline(std::ifstream(task.path() / "comm"), name);
    names.insert(name);
  }
  return names;
}

// Each busy thread of a lane carries the name of its work, so that an operator's `top -H` says
// which side of the lane is saturated.
TEST_F(HubTest, ServiceThreadsAreNamedForTheirWork) {
  CapturePartner partner;
  StartHub(absl::StrCat("http://127.0.0.1:", partner.port()));
  const std::set<std::string> outbound = ThreadNames(outbound_->pid());
  for (const char* name : {"ess-http-client", "amqp-consumer", "amqp-publisher", "ess-recorder"}) {
    EXPECT_TRUE(outbound.contains(name)) << name << " in " << absl::StrJoin(outbound, ", ");
  }
  const std::set<std::string> inbound = ThreadNames(inbound_->pid());
  for (const char* name : {"ess-http-server", "amqp-publisher", "ess-recorder"}) {
    EXPECT_TRUE(inbound.contains(name)) << name << " in " << absl::StrJoin(inbound, ", ");
  }
  const std::set<std::string> replay = ThreadNames(replay_->pid());
  for (const char* name : {"replay-write", "replay-read"}) {
    EXPECT_TRUE(replay.contains(name)) << name << " in " << absl::StrJoin(replay, ", ");
  }
}

// A queue's type and arguments are fixed when it is first declared: a lane configured for
// quorum queues, started against the classic work queue an earlier setting declared, exits 1
// and says what to do about it.
TEST_F(HubTest, ALaneStartedAgainstQueuesOfTheOtherTypeSaysWhatToDo) {
  CapturePartner partner;
  {
    auto conn = amqp::Connection::Open(broker_);
    ASSERT_TRUE(conn.ok()) << conn.status();
    ASSERT_TRUE((*conn)->Apply({.queues = {{.name = queue_}}}).ok());  // classic
  }
  quorum_ = true;
  dir_.Write("hub.yaml", Config(absl::StrCat("http://127.0.0.1:", partner.port())));
  testing::Process outbound(
      {testing::BinaryPath("outbound_svc"), "--config", dir_.File("hub.yaml")},
      dir_.File("outbound.log"));
  EXPECT_EQ(outbound.Wait(absl::Seconds(30)), 1) << outbound.Log();
  // The broker names the first argument that differs, here the dead-lettering quorum queues
  // get; the lane names the settings behind them and what to do.
  EXPECT_THAT(outbound.Log(), HasSubstr(absl::StrCat("406 PRECONDITION_FAILED - inequivalent "
                                                     "arg 'x-dead-letter-exchange' for queue '",
                                                     queue_, "'")));
  EXPECT_THAT(outbound.Log(), HasSubstr("declared with other arguments than this config gives it "
                                        "(bus.quorum_queues: true, bus.delivery_limit: 20)"));
  EXPECT_THAT(outbound.Log(), HasSubstr("drain the partner's work and parked queues"));
  EXPECT_EQ(partner.count(), 0u);
}

// A partner's ca_file that cannot be read stops outbound_svc at start with exit 2, naming the
// field at its line; before, the lane started and parked every event DEAD ("error setting
// certificate file").
TEST_F(HubTest, APartnersCaFileThatCannotBeReadStopsTheLaneAtStartNamingIt) {
  std::string yaml = Config("https://127.0.0.1:9");
  const std::string path = "      path: /api/slots\n";
  ASSERT_NE(yaml.find(path), std::string::npos);
  yaml.replace(yaml.find(path), path.size(), path + "      ca_file: partner-ca.pem\n");
  dir_.Write("hub.yaml", yaml);
  Process outbound({BinaryPath("outbound_svc"), "--config", dir_.File("hub.yaml")},
                   dir_.File("outbound.log"));
  EXPECT_EQ(outbound.Wait(absl::Seconds(20)), 2) << outbound.Log();
  EXPECT_THAT(outbound.Log(), HasSubstr(absl::StrCat("partners[0].settings.ca_file: cannot read ",
                                                     dir_.File("partner-ca.pem"))));
}

TEST_F(HubTest, WebhookBecomesSlotConfirmedOnTheEventsExchange) {
  CapturePartner partner;
  StartHub(absl::StrCat("http://127.0.0.1:", partner.port()));
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);

  auto resp = PostWebhook(R"({"id":"VIS-77","status":"confirmed"})");
  ASSERT_TRUE(resp.ok()) << resp.status();
  EXPECT_EQ(resp->status, 200) << resp->body;
  EXPECT_EQ(resp->body, R"({"ok":true,"events":1})");

  auto d = (*conn)->Get(sub);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->message.body, R"({"type":"SlotConfirmed","id":"VIS-77","status":"confirmed"})");
  EXPECT_EQ(d->message.correlation_id, "VIS-77");
  EXPECT_EQ(d->message.type, "SlotConfirmed");
  EXPECT_EQ(d->exchange, exchange_);
  EXPECT_EQ((*conn)->Get(sub).status().code(), absl::StatusCode::kNotFound);

  // By the 200 the store holds the event (RECEIVED, written while the broker confirmed); the
  // record says PUBLISHED right after.
  auto trail = Trail("VIS-77");
  ASSERT_EQ(trail.records_size(), 1);
  EXPECT_EQ(trail.records(0).direction(), ess::v1::DIRECTION_INBOUND);
  EXPECT_THAT(trail.records(0).status(), ::testing::AnyOf(ess::v1::MESSAGE_STATUS_RECEIVED,
                                                          ess::v1::MESSAGE_STATUS_PUBLISHED));
  ASSERT_TRUE(WaitFor(
      [&] {
        trail = Trail("VIS-77");
        return trail.records_size() == 1 &&
               trail.records(0).status() == ess::v1::MESSAGE_STATUS_PUBLISHED;
      },
      absl::Seconds(10)));
  EXPECT_EQ(trail.records(0).source(), "/webhook/prison");
  EXPECT_EQ(trail.records(0).rendered(),
            R"({"type":"SlotConfirmed","id":"VIS-77","status":"confirmed"})");
  EXPECT_TRUE(trail.trail().has_confirmed_at());
  EXPECT_EQ(trail.trail().stage(), "confirmed");
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// The two sides' drift: the partner took three visits and confirmed one. The store lists the
// other two as delivered and unconfirmed, and the list follows when the next confirmation comes,
// and when a confirmed visit is rescheduled.
TEST_F(HubTest, VisitsThePartnerTookButNeverConfirmedAreListed) {
  CapturePartner partner;
  StartHub(absl::StrCat("http://127.0.0.1:", partner.port()));
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);  // events are routable
  ASSERT_NO_FATAL_FAILURE(DeliverVisits(3));
  auto unconfirmed = [&] {
    ess::v1::ListRequest request;
    request.set_partner("prison_calendar");
    request.set_direction(ess::v1::DIRECTION_OUTBOUND);
    request.set_status(ess::v1::MESSAGE_STATUS_DELIVERED);
    request.set_unconfirmed(true);
    ess::v1::ListResponse response;
    EXPECT_TRUE(stub_->List(Call().get(), request, &response).ok());
    std::vector<std::string> ids;
    for (const auto& r : response.records()) ids.push_back(r.correlation_id());
    std::sort(ids.begin(), ids.end());
    return ids;
  };
  ASSERT_NO_FATAL_FAILURE(ConfirmVisit("VIS-2"));
  EXPECT_THAT(unconfirmed(), ::testing::ElementsAre("VIS-1", "VIS-3"));
  ASSERT_NO_FATAL_FAILURE(ConfirmVisit("VIS-3"));
  EXPECT_THAT(unconfirmed(), ::testing::ElementsAre("VIS-1"));

  // VIS-2 rescheduled after its confirmation: the partner takes the new slot, and until it
  // confirms that one too the visit is unconfirmed again and its trail reads delivered.
  Publish({{"VIS-2-moved", R"({"type":"VisitScheduleUpdated","id":"VIS-2","inmateId":"A123",)"
                           R"("slotUtc":"2026-12-08T09:00:00Z"})"}});
  ASSERT_TRUE(WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).delivered() == 4; },
                      absl::Seconds(10)));
  EXPECT_EQ(Trail("VIS-2").trail().stage(), "delivered");
  EXPECT_THAT(unconfirmed(), ::testing::ElementsAre("VIS-1", "VIS-2"));
  auto resp = PostWebhook(R"({"id":"VIS-2","status":"confirmed"})", "/webhook/prison",
                          {{"webhook-id", "msg_vis2_moved"}});
  ASSERT_TRUE(resp.ok()) << resp.status();
  ASSERT_EQ(resp->status, 200) << resp->body;
  ASSERT_TRUE(
      WaitFor([&] { return Trail("VIS-2").trail().stage() == "confirmed"; }, absl::Seconds(10)));
  EXPECT_THAT(unconfirmed(), ::testing::ElementsAre("VIS-1"));
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// The drift, watched: the partner says it confirms within a second (its route's
// confirm_within_seconds), and replay_svc counts the visits it took and has not confirmed, in its
// metrics and its log, as the confirmations come.
TEST_F(HubTest, ReplaySvcCountsTheVisitsThePartnerDidNotConfirmInTime) {
  const int metrics_port = testing::FreePort();
  replay_extra_ = absl::StrCat("  metrics_listen: 127.0.0.1:", metrics_port,
                               "\n  drift: {check_interval_seconds: 1}");
  route_extra_ = "      confirm_within_seconds: 1";
  CapturePartner partner;
  StartHub(partner.url());
  EXPECT_THAT(replay_->Log(), HasSubstr("drift_watched=1"));
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);  // events are routable
  ASSERT_NO_FATAL_FAILURE(DeliverVisits(3));
  // Waits (up to 15 s) until replay_svc serves `sample`.
  auto serves = [&](const std::string& sample) {
    std::string body;
    const bool seen = WaitFor(
        [&] {
          auto r = http_.SendAndWait(
              {.method = "GET",
               .url = absl::StrCat("http://127.0.0.1:", metrics_port, "/metrics")});
          body = r.ok() ? r->body : r.status().ToString();
          return absl::StrContains(body, sample);
        },
        absl::Seconds(15));
    EXPECT_TRUE(seen) << sample << " not in:\n" << body;
    return seen;
  };
  const std::string gauge = R"(ess_replay_unconfirmed_deliveries{partner="prison_calendar"} )";
  ASSERT_NO_FATAL_FAILURE(ConfirmVisit("VIS-2"));
  ASSERT_TRUE(serves(gauge + "2"));
  EXPECT_TRUE(replay_->WaitForLog("partner=prison_calendar unconfirmed=2 confirm_within_s=1 "))
      << replay_->Log();
  ASSERT_NO_FATAL_FAILURE(ConfirmVisit("VIS-3"));
  ASSERT_TRUE(serves(gauge + "1"));
  EXPECT_TRUE(replay_->WaitForLog("partner=prison_calendar unconfirmed=1 "));
  ASSERT_NO_FATAL_FAILURE(ConfirmVisit("VIS-1"));
  ASSERT_TRUE(serves(gauge + "0"));
  EXPECT_TRUE(replay_->WaitForLog(R"(msg="no unconfirmed deliveries" partner=prison_calendar)"));
  EXPECT_TRUE(serves(R"(ess_replay_drift_checks_total{result="error"} 0)"));
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// The store on PostgreSQL, in two replay_svc replicas: the outbound lane records through one,
// the inbound lane through the other. A visit's trail joins both lanes' records, and a
// partner's repeated callback is a duplicate however the replicas share the work.
TEST_F(HubTest, TheLanesShareAStoreOfTwoReplicasOnPostgres) {
  replay::testing::TestStore db(replay::testing::Backend::kPostgres);
  ASSERT_FALSE(HasFailure());
  ASSERT_EQ(setenv("ESS_TEST_HUB_DSN", db.location().c_str(), 1), 0);
  replay_store_ = "  postgres: {dsn_env: ESS_TEST_HUB_DSN}";
  CapturePartner partner;
  StartHub(partner.url());  // replay_svc A; both lanes record through it
  ASSERT_FALSE(HasFailure());
  EXPECT_THAT(replay_->Log(), HasSubstr("store=\"postgres (ESS_TEST_HUB_DSN)\""));
  // Replica B, and the inbound lane moved over to it.
  const int port_b = testing::FreePort();
  std::unique_ptr<Process> replica_b = StartReplicaB(partner.url(), port_b);
  ASSERT_NE(replica_b, nullptr);
  EXPECT_EQ(inbound_->Stop(), 0);
  ASSERT_NO_FATAL_FAILURE(StartInbound("hub-b.yaml"));

  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  std::vector<std::pair<std::string, std::string>> events;
  for (int i = 0; i < 20; ++i) {
    const std::string id = absl::StrCat("VIS-", i);
    events.emplace_back(id, VisitEvent(id));
  }
  Publish(events);
  ASSERT_TRUE(WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).delivered() == 20; },
                      absl::Seconds(30)))
      << outbound_->Log();
  EXPECT_EQ(partner.count(), 20);

  auto confirm = [&](const std::string& webhook_id) {
    auto r = PostWebhook(R"({"id":"VIS-5","status":"confirmed"})", "/webhook/prison",
                         {{"webhook-id", webhook_id}});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->body : std::string();
  };
  EXPECT_EQ(confirm("msg-5"), R"({"ok":true,"events":1})");
  // Through replica A, the visit's trail holds the outbound delivery and B's confirmation.
  ASSERT_TRUE(
      WaitFor([&] { return Trail("VIS-5").trail().stage() == "confirmed"; }, absl::Seconds(10)))
      << Trail("VIS-5").DebugString();
  EXPECT_EQ(Trail("VIS-5").records_size(), 2);
  // The partner's retry of the same call: a duplicate, not a second SlotConfirmed.
  EXPECT_EQ(confirm("msg-5"), R"({"ok":true,"events":0,"duplicates":1})");
  // An inbound lane without memory of it, on replica A: the store still knows msg-5.
  EXPECT_EQ(inbound_->Stop(), 0);
  ASSERT_NO_FATAL_FAILURE(StartInbound("hub.yaml"));
  EXPECT_EQ(confirm("msg-5"), R"({"ok":true,"events":0,"duplicates":1})");
  auto d = (*conn)->Get(sub);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->message.correlation_id, "VIS-5");
  EXPECT_EQ((*conn)->Get(sub).status().code(), absl::StatusCode::kNotFound);  // only one

  EXPECT_EQ(replica_b->Stop(), 0) << replica_b->Log();
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
  unsetenv("ESS_TEST_HUB_DSN");
}

// grpc.health.v1.Health/Check of `service` at the store: "SERVING", "NOT_SERVING", or the
// call's failure (e.g. "NOT_FOUND" for a service the server does not know).
std::string HealthOf(const std::string& address, const std::string& service) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(channel);
  // HealthCheckRequest{service}: field 1, a string.
  std::string request_bytes;
  if (!service.empty()) {
    request_bytes =
        absl::StrCat("\x0a", std::string(1, static_cast<char>(service.size())), service);
  }
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  std::promise<grpc::Status> done;
  generic.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                    &response, [&](grpc::Status s) { done.set_value(std::move(s)); });
  const grpc::Status status = done.get_future().get();
  if (!status.ok()) {
    return status.error_code() == grpc::StatusCode::NOT_FOUND
               ? "NOT_FOUND"
               : absl::StrCat("code ", status.error_code(), ": ", status.error_message());
  }
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return "unreadable answer";
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  // HealthCheckResponse{status}: field 1, a varint (1 SERVING, 2 NOT_SERVING).
  if (bytes == std::string("\x08\x01", 2)) return "SERVING";
  if (bytes == std::string("\x08\x02", 2)) return "NOT_SERVING";
  return absl::StrCat("answer ", absl::CEscape(bytes));
}

// replay_svc's gRPC health follows its store: with PostgreSQL unreachable (the test's relay to
// it taken down) the server and ReplayService are NOT_SERVING, and the inbound lane is not
// ready; once PostgreSQL answers again, SERVING and ready.
TEST_F(HubTest, ReplaySvcHealthFollowsItsPostgresStore) {
  replay::testing::TestStore db(replay::testing::Backend::kPostgres);
  ASSERT_FALSE(HasFailure());
  // The store's connections go through a relay to the test's PostgreSQL (a later port= wins).
  int pg_port = 0;
  for (absl::string_view word : absl::StrSplit(testing::RequiredEnv("ESS_POSTGRES_DSN"), ' ')) {
    if (absl::ConsumePrefix(&word, "port=")) {
      ASSERT_TRUE(absl::SimpleAtoi(word, &pg_port));
    }
  }
  ASSERT_GT(pg_port, 0);
  testing::TcpRelay relay(pg_port);
  const std::string dsn = absl::StrCat(db.location(), " port=", relay.port());
  ASSERT_EQ(setenv("ESS_TEST_HUB_DSN", dsn.c_str(), 1), 0);
  replay_store_ = "  postgres: {dsn_env: ESS_TEST_HUB_DSN}";
  dir_.Write("hub.yaml", Config("http://127.0.0.1:9"));
  ASSERT_NO_FATAL_FAILURE(StartReplay());
  ASSERT_NO_FATAL_FAILURE(StartInbound("hub.yaml"));
  const std::string address = absl::StrCat("127.0.0.1:", replay_port_);
  auto health = [&] {
    return absl::StrCat(HealthOf(address, ""), " ", HealthOf(address, "ess.v1.ReplayService"));
  };
  auto ready = [&] {
    auto r = http_.SendAndWait({.method = "GET", .url = Url("/readyz")});
    return r.ok() ? absl::StrCat(r->status, " ", r->body) : std::string(r.status().message());
  };
  ASSERT_TRUE(WaitFor([&] { return health() == "SERVING SERVING"; }, absl::Seconds(10)))
      << health();
  ASSERT_TRUE(WaitFor([&] { return ready() == R"(200 {"ready":true})"; }, absl::Seconds(10)))
      << ready();
  EXPECT_EQ(HealthOf(address, "no.such.Service"), "NOT_FOUND");

  relay.Down();
  ASSERT_TRUE(WaitFor([&] { return health() == "NOT_SERVING NOT_SERVING"; }, absl::Seconds(20)))
      << health() << "\n"
      << replay_->Log();
  ASSERT_TRUE(WaitFor([&] { return ready() == R"(503 {"ready":false,"store":"unreachable"})"; },
                      absl::Seconds(20)))
      << ready();
  EXPECT_THAT(replay_->Log(),
              HasSubstr("msg=\"replay store does not answer; health NOT_SERVING\""));

  ASSERT_TRUE(relay.Up());
  ASSERT_TRUE(WaitFor([&] { return health() == "SERVING SERVING"; }, absl::Seconds(30)))
      << health() << "\n"
      << replay_->Log();
  ASSERT_TRUE(WaitFor([&] { return ready() == R"(200 {"ready":true})"; }, absl::Seconds(20)))
      << ready();
  EXPECT_THAT(replay_->Log(), HasSubstr("msg=\"replay store answers; health SERVING\""));
  unsetenv("ESS_TEST_HUB_DSN");
}

// Two replicas on one PostgreSQL store, the same replay sent to each at once (an operator's retry
// that the Service took to the other replica): each record is published once, by the replica
// whose claim took it, and the other skips it. By keys, then by a filter.
TEST_F(HubTest, TheSameReplayOnTwoReplicasAtOnceSendsEachRecordOnce) {
  replay::testing::TestStore db(replay::testing::Backend::kPostgres);
  ASSERT_FALSE(HasFailure());
  ASSERT_EQ(setenv("ESS_TEST_HUB_DSN", db.location().c_str(), 1), 0);
  replay_store_ = "  postgres: {dsn_env: ESS_TEST_HUB_DSN}";
  CapturePartner partner;
  StartHub(partner.url());  // replay_svc A
  ASSERT_FALSE(HasFailure());
  const int port_b = testing::FreePort();
  std::unique_ptr<Process> replica_b = StartReplicaB(partner.url(), port_b);
  ASSERT_NE(replica_b, nullptr);

  constexpr int kRecords = 100;
  ASSERT_NO_FATAL_FAILURE(DeliverVisits(kRecords));
  EXPECT_EQ(outbound_->Stop(), 0);  // the replayed events stay in the queue, to be counted
  ASSERT_EQ(Depth(queue_), 0u);

  // Runs `args` of essctl replay on replica A and on replica B at once; returns the sums of
  // what each printed it replayed and skipped.
  int round = 0;
  auto replay_on_both = [&](const std::vector<std::string>& args) {
    ++round;
    std::vector<std::unique_ptr<Process>> runs;
    for (int port : {replay_port_, port_b}) {
      std::vector<std::string> argv = {BinaryPath("essctl"), "--addr",
                                       absl::StrCat("127.0.0.1:", port), "replay"};
      argv.insert(argv.end(), args.begin(), args.end());
      argv.insert(argv.end(), {"--reason", absl::StrCat("race on ", port)});
      runs.push_back(std::make_unique<Process>(
          argv, dir_.File(absl::StrCat("essctl-", round, "-", port, ".log"))));
    }
    std::pair<int, int> sums = {0, 0};
    for (auto& run : runs) {
      EXPECT_NE(run->Wait(absl::Seconds(60)), -1) << run->Log();
      std::smatch counts;
      const std::string log = run->Log();
      if (!std::regex_search(log, counts,
                             std::regex(R"(\(replayed (\d+), skipped (\d+), failed 0\))"))) {
        ADD_FAILURE() << log;
        continue;
      }
      sums.first += std::stoi(counts[1]);
      sums.second += std::stoi(counts[2]);
    }
    return sums;
  };

  std::vector<std::string> ids;
  for (int i = 1; i <= kRecords; ++i) ids.push_back(absl::StrCat("VIS-", i));
  EXPECT_EQ(replay_on_both({"--direction", "outbound", "--partner", "prison_calendar",
                            "--message_id", absl::StrJoin(ids, ",")}),
            std::make_pair(kRecords, kRecords));
  EXPECT_EQ(Depth(queue_), static_cast<uint32_t>(kRecords));  // each once

  // The lane delivers them (DELIVERED again), and the same by a filter.
  outbound_ = std::make_unique<Process>(
      std::vector<std::string>{BinaryPath("outbound_svc"), "--config", dir_.File("hub.yaml")},
      dir_.File("outbound-2.log"));
  ASSERT_TRUE(outbound_->WaitForLog("outbound lane running")) << outbound_->Log();
  ASSERT_TRUE(WaitFor(
      [&] {
        return Depth(queue_) == 0 &&
               Stats(ess::v1::DIRECTION_OUTBOUND).delivered() == static_cast<uint64_t>(kRecords);
      },
      absl::Seconds(30)))
      << outbound_->Log();
  EXPECT_EQ(partner.count(), 2 * kRecords);
  EXPECT_EQ(outbound_->Stop(), 0);
  // By a filter, a replay that lists the records after the other marked them replayed finds
  // none (they are no longer delivered), so how many the slower one skips depends on when it
  // lists; what each publish counts, and the queue, do not.
  const std::pair<int, int> by_filter = replay_on_both(
      {"--direction", "outbound", "--partner", "prison_calendar", "--status", "delivered"});
  EXPECT_EQ(by_filter.first, kRecords);
  EXPECT_LE(by_filter.second, kRecords);
  EXPECT_EQ(Depth(queue_), static_cast<uint32_t>(kRecords));  // each once

  EXPECT_EQ(replica_b->Stop(), 0) << replica_b->Log();
  unsetenv("ESS_TEST_HUB_DSN");
}

TEST_F(HubTest, RepeatedWebhooksArePublishedOnceEvenAcrossARestart) {
  CapturePartner partner;
  StartHub(absl::StrCat("http://127.0.0.1:", partner.port()));
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  auto post = [&](const std::string& body, const std::string& webhook_id) {
    http::HeaderList headers = {{"Content-Type", "application/json"}};
    if (!webhook_id.empty()) headers.emplace_back("webhook-id", webhook_id);
    auto r = http_.SendAndWait({.url = Url("/webhook/prison"), .headers = headers, .body = body});
    EXPECT_TRUE(r.ok());
    return r.ok() ? r->body : std::string();
  };
  // The same webhook-id: published once.
  EXPECT_EQ(post(R"({"id":"VIS-1","status":"confirmed"})", "msg_1"), R"({"ok":true,"events":1})");
  EXPECT_EQ(post(R"({"id":"VIS-1","status":"confirmed"})", "msg_1"),
            R"({"ok":true,"events":0,"duplicates":1})");
  // No webhook-id: the same correlation id and payload is a repeat; another status is not.
  EXPECT_EQ(post(R"({"id":"VIS-2","status":"confirmed"})", ""), R"({"ok":true,"events":1})");
  EXPECT_EQ(post(R"({"id":"VIS-2","status":"confirmed"})", ""),
            R"({"ok":true,"events":0,"duplicates":1})");
  EXPECT_EQ(post(R"({"id":"VIS-2","status":"cancelled"})", ""), R"({"ok":true,"events":1})");
  // Memory holds the newest 2 ids (dedupe_memory_ids): msg_1 is forgotten there, not in the store,
  // once its PUBLISHED record is stored (up to record_delay_ms after its answer; until then a
  // repeat is answered 503, "in progress").
  ASSERT_TRUE(WaitFor([&] { return Stats(ess::v1::DIRECTION_INBOUND).published() == 3; },
                      absl::Seconds(10)));
  EXPECT_EQ(post(R"({"id":"VIS-1","status":"confirmed"})", "msg_1"),
            R"({"ok":true,"events":0,"duplicates":1})");
  // A new inbound_svc process has an empty memory: the replay store still knows msg_1.
  EXPECT_EQ(inbound_->Stop(), 0);
  StartInbound("hub.yaml");
  EXPECT_EQ(post(R"({"id":"VIS-1","status":"confirmed"})", "msg_1"),
            R"({"ok":true,"events":0,"duplicates":1})");

  std::vector<std::string> bodies;
  while (true) {
    auto d = (*conn)->Get(sub);
    if (!d.ok()) break;
    bodies.push_back(d->message.body);
  }
  EXPECT_THAT(bodies, ::testing::ElementsAre(
                          R"({"type":"SlotConfirmed","id":"VIS-1","status":"confirmed"})",
                          R"({"type":"SlotConfirmed","id":"VIS-2","status":"confirmed"})",
                          R"({"type":"SlotConfirmed","id":"VIS-2","status":"cancelled"})"));
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// Ids are a partner's own, in the lane's memory as in the store: the same webhook-id, or the
// same event without one, from two partners is two events.
TEST_F(HubTest, TwoPartnersSameIdsAreTwoEvents) {
  CapturePartner partner;
  StartHub(partner.url());
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  auto post = [&](const std::string& path, const std::string& webhook_id, const std::string& body) {
    http::HeaderList headers = {{"Content-Type", "application/json"}};
    if (!webhook_id.empty()) headers.emplace_back("webhook-id", webhook_id);
    return http_.SendAndWait({.url = Url(path), .headers = headers, .body = body});
  };
  for (const char* path : {"/webhook/prison", "/webhook/clinic"}) {
    auto r = post(path, "1", R"({"id":"VIS-88","status":"cancelled"})");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200) << path;
    EXPECT_EQ(r->body, R"({"ok":true,"events":1})") << path;
    r = post(path, "", R"({"id":"VIS-5","status":"confirmed"})");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->body, R"({"ok":true,"events":1})") << path;
  }
  // And a repeat is still a repeat, per partner.
  auto r = post("/webhook/clinic", "1", R"({"id":"VIS-88","status":"cancelled"})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->body, R"({"ok":true,"events":0,"duplicates":1})");
  std::map<std::string, int> partners;
  for (auto d = (*conn)->Get(sub); d.ok(); d = (*conn)->Get(sub)) {
    for (const auto& [k, v] : d->message.headers) {
      if (k == "x-ess-partner") ++partners[v];
    }
  }
  EXPECT_EQ(partners["prison_calendar"], 2);
  EXPECT_EQ(partners["clinic"], 2);
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// A partner without webhook-id but with an id of its own per call (InboundRoute.id_header):
// its retry is a repeat, and a new call with the same content (a status that flips back) is a
// new event. Known by content instead, the second "confirmed" would be taken for a repeat.
TEST_F(HubTest, AnIdHeaderTellsARetryFromANewCallWithTheSameContent) {
  CapturePartner partner;
  std::string yaml = Config(partner.url());
  const std::string path = "      webhook_path: /webhook/clinic\n";
  ASSERT_NE(yaml.find(path), std::string::npos);
  yaml.replace(yaml.find(path), path.size(), path + "      id_header: X-Delivery-Id\n");
  dir_.Write("hub.yaml", yaml);
  ASSERT_NO_FATAL_FAILURE(StartReplay());
  ASSERT_NO_FATAL_FAILURE(StartInbound("hub.yaml"));
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  auto post = [&](const std::string& delivery_id, const std::string& body) {
    return PostWebhook(body, "/webhook/clinic",
                       delivery_id.empty() ? http::HeaderList{}
                                           : http::HeaderList{{"X-Delivery-Id", delivery_id}});
  };
  const std::string confirmed = R"({"id":"VIS-61","status":"confirmed"})";
  const std::string cancelled = R"({"id":"VIS-61","status":"cancelled"})";
  const std::vector<std::tuple<std::string, std::string, std::string>> calls = {
      {"d-1", confirmed, R"({"ok":true,"events":1})"},
      {"d-1", confirmed, R"({"ok":true,"events":0,"duplicates":1})"},  // its retry
      {"d-2", cancelled, R"({"ok":true,"events":1})"},
      {"d-3", confirmed, R"({"ok":true,"events":1})"},  // confirmed again: a new call
  };
  for (const auto& [id, body, answer] : calls) {
    auto r = post(id, body);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200) << id;
    EXPECT_EQ(r->body, answer) << id;
  }
  // Without the header, content decides, as before: the same content twice is one event.
  for (const char* answer :
       {R"({"ok":true,"events":1})", R"({"ok":true,"events":0,"duplicates":1})"}) {
    auto r = post("", R"({"id":"VIS-62","status":"confirmed"})");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->body, answer);
  }
  // The route's id header alone names a call: a webhook-id there (unsigned, not what the route
  // was configured with) is not read. Two calls with one webhook-id and their own ids are two
  // events; before, the second (the visit cancelled) was taken for a repeat of the first.
  for (const char* status : {"confirmed", "cancelled"}) {
    auto r = PostWebhook(absl::StrCat(R"({"id":"VIS-63","status":")", status, R"("})"),
                         "/webhook/clinic",
                         {{"X-Delivery-Id", absl::StrCat("d-", status)}, {"webhook-id", "w-1"}});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->body, R"({"ok":true,"events":1})") << status;
  }
  auto bad = post(std::string(256, 'x'), confirmed);
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ(bad->status, 400);
  EXPECT_THAT(bad->body, HasSubstr("header x-delivery-id: 256 bytes; at most 255"));

  std::vector<std::string> statuses;
  for (auto d = (*conn)->Get(sub); d.ok(); d = (*conn)->Get(sub)) {
    rapidjson::Document doc;
    doc.Parse(d->message.body.c_str());
    if (doc.IsObject() && doc.HasMember("status")) statuses.push_back(doc["status"].GetString());
  }
  EXPECT_THAT(statuses, ::testing::ElementsAre("confirmed", "cancelled", "confirmed", "confirmed",
                                               "confirmed", "cancelled"));
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

TEST_F(HubTest, AnIdBeingPublishedElsewhereIsHeldForItsLeaseThenTaken) {
  CapturePartner partner;
  StartHub(absl::StrCat("http://127.0.0.1:", partner.port()));
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  // Another replica claimed wh-7 and died before publishing it: the store says RECEIVED.
  {
    grpc::ClientContext ctx;
    ess::v1::RecordRequest req;
    ess::v1::MessageRecord* r = req.add_records();
    r->set_direction(ess::v1::DIRECTION_INBOUND);
    r->set_partner("prison_calendar");
    r->set_message_id("wh-7");
    r->set_correlation_id("VIS-7");
    r->set_status(ess::v1::MESSAGE_STATUS_RECEIVED);
    ess::v1::RecordResponse resp;
    ASSERT_TRUE(stub_->Record(&ctx, req, &resp).ok());
  }
  auto post = [&] {
    return http_.SendAndWait(
        {.url = Url("/webhook/prison"),
         .headers = {{"Content-Type", "application/json"}, {"webhook-id", "wh-7"}},
         .body = R"({"id":"VIS-7","status":"confirmed"})"});
  };
  // Within the lease (claim_lease_ms, 2 s): the partner is told to retry, nothing is published.
  auto r = post();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->Header("retry-after"), "1");
  EXPECT_THAT(r->body, HasSubstr("in progress"));
  EXPECT_EQ((*conn)->Get(sub).status().code(), absl::StatusCode::kNotFound);
  // Once the lease has run out, the retry claims the id and publishes it, once.
  absl::SleepFor(absl::Milliseconds(2100));
  r = post();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;
  auto d = (*conn)->Get(sub);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->message.message_id, "wh-7");
  EXPECT_EQ((*conn)->Get(sub).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(WaitFor(
      [&] {
        auto t = Trail("VIS-7");
        return t.records_size() == 1 && t.records(0).status() == ess::v1::MESSAGE_STATUS_PUBLISHED;
      },
      absl::Seconds(10)));
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// A setting only the adapter can judge is still reported at its line, by each lane that
// serves the partner; a lane that does not serve it does not care.
TEST_F(HubTest, ABadAdapterSettingStopsTheLanesAtItsLine) {
  std::string yaml = Config("http://127.0.0.1:9");
  const std::string good = "      base_url: http://127.0.0.1:9\n";
  ASSERT_THAT(yaml, HasSubstr(good));
  absl::StrReplaceAll({{good, "      base_url: ftp://127.0.0.1:9\n"}}, &yaml);
  dir_.Write("bad.yaml", yaml);
  // The line of base_url in the file.
  const std::string before = yaml.substr(0, yaml.find("base_url: ftp"));
  const int line = 1 + static_cast<int>(std::count(before.begin(), before.end(), '\n'));
  for (const char* lane : {"outbound_svc", "inbound_svc"}) {
    testing::ToolRun run = testing::RunTool({BinaryPath(lane), "--config", dir_.File("bad.yaml")},
                                            dir_.File(absl::StrCat(lane, ".log")));
    EXPECT_EQ(run.exit_code, 2) << lane << ": " << run.output;
    EXPECT_THAT(run.output, HasSubstr(absl::StrCat("bad.yaml:", line,
                                                   ":17: partners[0].settings.base_url: "
                                                   "must start with http:// or https://")))
        << lane;
  }
}

TEST_F(HubTest, ASignedRouteTakesOnlyFreshCallsSignedByThePartner) {
  const std::string secret = NewSecretInEnvironment("ESS_TEST_PRISON_WEBHOOK_SECRETS");
  webhook_auth_ = "{secrets_env: ESS_TEST_PRISON_WEBHOOK_SECRETS, tolerance_seconds: 60}";
  const std::string yaml = Config("http://127.0.0.1:9");
  ASSERT_THAT(yaml, HasSubstr("auth: {secrets_env: ESS_TEST_PRISON_WEBHOOK_SECRETS"));
  ASSERT_EQ(yaml.find(secret), std::string::npos);
  dir_.Write("hub.yaml", yaml);
  StartReplay();
  // Without the secrets in its environment the inbound lane does not start, and says why.
  dir_.Write("unset.yaml", absl::StrReplaceAll(yaml, {{"ESS_TEST_PRISON_WEBHOOK_SECRETS",
                                                       "ESS_TEST_UNSET_WEBHOOK_SECRETS"}}));
  testing::ToolRun unset = testing::RunTool(
      {BinaryPath("inbound_svc"), "--config", dir_.File("unset.yaml")}, dir_.File("unset.log"));
  EXPECT_EQ(unset.exit_code, 2) << unset.output;
  EXPECT_THAT(unset.output, HasSubstr("partners[0].inbound.auth.secrets_env: environment variable "
                                      "ESS_TEST_UNSET_WEBHOOK_SECRETS is not set"));
  StartInbound("hub.yaml");
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);

  auto partner = webhook::SignatureVerifier::Create({secret}, absl::Seconds(60));
  auto stranger = webhook::SignatureVerifier::Create(
      {"whsec_c2VjcmV0LW9mLWEtcm90YXRlZC1lbmRwb2ludCEh"}, absl::Seconds(60));
  ASSERT_TRUE(partner.ok() && stranger.ok());
  const std::string body = R"({"id":"VIS-S1","status":"confirmed"})";
  const std::string now = absl::StrCat(absl::ToUnixSeconds(absl::Now()));
  auto post = [&](const std::string& id, const std::string& ts, const std::string& signature,
                  const std::string& sent_body) {
    http::HeaderList headers = {{"Content-Type", "application/json"}, {"webhook-id", id}};
    if (!ts.empty()) headers.emplace_back("webhook-timestamp", ts);
    if (!signature.empty()) headers.emplace_back("webhook-signature", signature);
    auto r =
        http_.SendAndWait({.url = Url("/webhook/prison"), .headers = headers, .body = sent_body});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : http::Response{};
  };

  // Not signed, signed by someone else, altered after signing, or signed 10 minutes ago (a
  // captured call replayed): 401 with the reason, and nothing reaches the bus.
  auto r = post("wh-s1", now, "", body);
  EXPECT_EQ(r.status, 401);
  EXPECT_THAT(r.body, HasSubstr("webhook-signature header missing"));
  r = post("wh-s1", now, stranger->Sign("wh-s1", now, body), body);
  EXPECT_EQ(r.status, 401);
  EXPECT_THAT(r.body, HasSubstr("no webhook-signature matches"));
  r = post("wh-s1", now, partner->Sign("wh-s1", now, body),
           R"({"id":"VIS-S1","status":"cancelled"})");
  EXPECT_EQ(r.status, 401);
  const std::string old = absl::StrCat(absl::ToUnixSeconds(absl::Now() - absl::Minutes(10)));
  r = post("wh-s1", old, partner->Sign("wh-s1", old, body), body);
  EXPECT_EQ(r.status, 401);
  EXPECT_THAT(r.body, HasSubstr("webhook-timestamp is 10m"));
  EXPECT_EQ((*conn)->Get(sub).status().code(), absl::StatusCode::kNotFound);

  // Signed by the partner, now: published once, under its webhook-id.
  r = post("wh-s1", now, partner->Sign("wh-s1", now, body), body);
  EXPECT_EQ(r.status, 200) << r.body;
  auto d = (*conn)->Get(sub);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->message.body, R"({"type":"SlotConfirmed","id":"VIS-S1","status":"confirmed"})");
  EXPECT_EQ(d->message.message_id, "wh-s1");
  EXPECT_EQ((*conn)->Get(sub).status().code(), absl::StatusCode::kNotFound);
  // The refusals are logged with their reason, never with the secret.
  EXPECT_THAT(inbound_->Log(), HasSubstr("webhook refused: not signed by the partner"));
  EXPECT_THAT(inbound_->Log(), ::testing::Not(HasSubstr(secret.substr(6))));
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

TEST_F(HubTest, EverySyncEmitsAnAuditEventWithoutPayload) {
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string audit = testing::BindSubscriber(**conn, exchange_ + ".audit");
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  CapturePartner partner;
  StartHub(partner.url());
  Publish({{"AU-1", VisitEvent("AU-1")}, {"AU-BAD", R"({"id":"AU-BAD","inmateId":"A123"})"}});
  auto r = PostWebhook(R"({"id":"AU-1","status":"confirmed"})");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->status, 200);
  std::map<std::string, std::string> seen;  // correlation id + direction -> the audit JSON
  ASSERT_TRUE(WaitFor(
      [&] {
        for (auto d = (*conn)->Get(audit); d.ok(); d = (*conn)->Get(audit)) {
          EXPECT_EQ(d->message.type, "SyncAudit");
          rapidjson::Document doc;
          EXPECT_FALSE(doc.Parse(d->message.body.c_str()).HasParseError());
          seen[d->message.correlation_id + "/" + doc["direction"].GetString()] = d->message.body;
        }
        return seen.size() == 3;
      },
      absl::Seconds(20)));
  EXPECT_THAT(seen["AU-1/DIRECTION_OUTBOUND"], HasSubstr(R"("status":"MESSAGE_STATUS_DELIVERED")"));
  EXPECT_THAT(seen["AU-1/DIRECTION_OUTBOUND"], HasSubstr(R"("partner":"prison_calendar")"));
  EXPECT_THAT(seen["AU-1/DIRECTION_INBOUND"], HasSubstr(R"("status":"MESSAGE_STATUS_PUBLISHED")"));
  EXPECT_THAT(seen["AU-1/DIRECTION_INBOUND"], HasSubstr(R"("eventType":"SlotConfirmed")"));
  EXPECT_THAT(seen["AU-BAD/DIRECTION_OUTBOUND"], HasSubstr(R"("status":"MESSAGE_STATUS_DEAD")"));
  EXPECT_THAT(seen["AU-BAD/DIRECTION_OUTBOUND"], HasSubstr("missing required field"));
  // The ids of a parked event are read before its message moves to the parked queue.
  EXPECT_THAT(seen["AU-BAD/DIRECTION_OUTBOUND"], HasSubstr(R"("messageId":"AU-BAD")"));
  EXPECT_THAT(seen["AU-BAD/DIRECTION_OUTBOUND"], HasSubstr(R"("correlationId":"AU-BAD")"));
  EXPECT_THAT(seen["AU-1/DIRECTION_OUTBOUND"], HasSubstr(R"("messageId":"AU-1")"));
  for (const auto& [key, json] : seen) {
    EXPECT_THAT(json, ::testing::Not(HasSubstr("A123"))) << key;  // ids and outcome, no payload
  }
  ASSERT_TRUE((*conn)->DeleteQueue(audit).ok());
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// A partner's plain-text error that echoes the event's PII (here the inmateId, a configured
// pii_fields member) is masked before it is logged, recorded, put in the parked message's
// x-ess-reason and x-ess-history, or audited.
TEST_F(HubTest, APartnersErrorTextIsMaskedOfTheEventsPiiValues) {
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string audit = testing::BindSubscriber(**conn, exchange_ + ".audit");
  CapturePartner partner;
  partner.set_behaviour([](const CapturePartner::Seen&, http::Responder r) {
    std::move(r).Send({.status = 400, .content_type = "text/plain", .body = "inmate A123 unknown"});
  });
  StartHub(partner.url());
  Publish({{"PII-1", VisitEvent("PII-1")}});
  ASSERT_TRUE(WaitFor([&] { return DepthOrZero(queue_ + ".parked") == 1; }, absl::Seconds(30)))
      << outbound_->Log();
  auto d = (*conn)->Get(queue_ + ".parked");
  ASSERT_TRUE(d.ok()) << d.status();
  std::string reason, history;
  for (const auto& [k, v] : d->message.headers) {
    if (k == "x-ess-reason") reason = v;
    if (k == "x-ess-history") history = v;
  }
  EXPECT_EQ(reason, "partner answered HTTP 400: inmate *** unknown");
  EXPECT_THAT(history, HasSubstr("partner answered HTTP 400: inmate *** unknown"));
  EXPECT_THAT(history, ::testing::Not(HasSubstr("A123")));
  ASSERT_TRUE(
      WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).dead() == 1; }, absl::Seconds(10)));
  auto t = Trail("PII-1");
  ASSERT_EQ(t.records_size(), 1);
  EXPECT_EQ(t.records(0).error(), "partner answered HTTP 400: inmate *** unknown");
  std::string audited;
  ASSERT_TRUE(WaitFor(
      [&] {
        if (auto a = (*conn)->Get(audit); a.ok()) audited = a->message.body;
        return !audited.empty();
      },
      absl::Seconds(20)));
  EXPECT_THAT(audited, HasSubstr("inmate *** unknown"));
  EXPECT_THAT(audited, ::testing::Not(HasSubstr("A123")));
  EXPECT_THAT(outbound_->Log(), HasSubstr("inmate *** unknown"));
  EXPECT_THAT(outbound_->Log(), ::testing::Not(HasSubstr("A123")));
  ASSERT_TRUE((*conn)->DeleteQueue(audit).ok());
}

// With bus.audit_batch_max the same events reach the audit exchange in SyncAuditBatch messages:
// every outcome once, in fewer messages than events when they come faster than confirms.
TEST_F(HubTest, AuditEventsInBatchesCarryEveryOutcomeOnce) {
  audit_batch_max_ = 50;
  constexpr int kEvents = 300;
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string audit = testing::BindSubscriber(**conn, exchange_ + ".audit");
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  // An operator's view: essbus prints one line per audit event, batched or not.
  testing::Process essbus(
      {testing::BinaryPath("essbus"), "--amqp", absl::StrCat(broker_.host, ":", broker_.port),
       "subscribe", "--exchange", exchange_ + ".audit", "--count", absl::StrCat(kEvents + 1),
       "--timeout_s", "60"},
      dir_.File("essbus.log"));
  ASSERT_TRUE(essbus.WaitForLog("subscribed exchange=")) << essbus.Log();
  CapturePartner partner;
  StartHub(partner.url());
  std::vector<std::pair<std::string, std::string>> events;
  for (int i = 0; i < kEvents; ++i) {
    const std::string id = absl::StrCat("AB-", i);
    events.push_back({id, VisitEvent(id)});
  }
  Publish(events);
  auto r = PostWebhook(R"({"id":"AB-0","status":"confirmed"})");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->status, 200);
  std::map<std::string, int> seen;  // correlation id + direction + status -> times seen
  size_t messages = 0;
  int audited = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        for (auto d = (*conn)->Get(audit); d.ok(); d = (*conn)->Get(audit)) {
          ++messages;
          EXPECT_EQ(d->message.type, "SyncAuditBatch");
          ess::v1::SyncAuditBatch batch;
          EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(d->message.body, &batch).ok())
              << d->message.body;
          EXPECT_LE(batch.events_size(), 50);
          for (const ess::v1::SyncAudit& e : batch.events()) {
            ++seen[absl::StrCat(e.correlation_id(), "/", ess::v1::Direction_Name(e.direction()),
                                "/", ess::v1::MessageStatus_Name(e.status()))];
            ++audited;
          }
        }
        return audited >= kEvents + 1;
      },
      absl::Seconds(30)))
      << audited << " audit events";
  EXPECT_EQ(audited, kEvents + 1);
  for (int i = 0; i < kEvents; ++i) {
    EXPECT_EQ((seen[absl::StrCat("AB-", i, "/DIRECTION_OUTBOUND/MESSAGE_STATUS_DELIVERED")]), 1)
        << i;
  }
  EXPECT_EQ(seen["AB-0/DIRECTION_INBOUND/MESSAGE_STATUS_PUBLISHED"], 1);
  EXPECT_LT(messages, static_cast<size_t>(kEvents)) << "no two events shared a message";
  ASSERT_EQ(essbus.Wait(absl::Seconds(60)), 0) << essbus.Log();
  const std::string lines = essbus.Log();
  std::vector<std::string> printed = absl::StrSplit(lines, "type=SyncAudit cid=");
  EXPECT_EQ(printed.size(), static_cast<size_t>(kEvents + 2)) << lines;  // a line per event
  EXPECT_THAT(lines, HasSubstr("type=SyncAudit cid=AB-299 batch=batch:AB-"));
  EXPECT_THAT(lines, HasSubstr(R"(body={"correlationId":"AB-299","messageId":"AB-299")"));
  // The inbound lane's metrics count its one event and the message that carried it.
  auto scraped = http_.SendAndWait({.method = "GET", .url = Url("/metrics")});
  ASSERT_TRUE(scraped.ok());
  EXPECT_THAT(scraped->body, HasSubstr("ess_audit_events_total{outcome=\"published\"} 1\n"));
  EXPECT_THAT(scraped->body, HasSubstr("ess_audit_events_total{outcome=\"failed\"} 0\n"));
  EXPECT_THAT(scraped->body, HasSubstr("ess_audit_messages_total 1\n"));
  ASSERT_TRUE((*conn)->DeleteQueue(audit).ok());
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// The lines of a Prometheus text exposition that start with `name{`, without the HELP/TYPE.
std::vector<std::string> Samples(const std::string& text, const std::string& name) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, name + "{") || absl::StartsWith(line, name + " ")) {
      lines.emplace_back(line);
    }
  }
  return lines;
}

TEST_F(HubTest, MetricsCountEachOutcomeAndTheSuccessRatio) {
  const int metrics_port = testing::FreePort();
  outbound_extra_ = absl::StrCat("  metrics_listen: 127.0.0.1:", metrics_port);
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  CapturePartner partner;
  partner.set_behaviour([](const CapturePartner::Seen& seen, http::Responder r) {
    const bool refuse = absl::StartsWith(seen.correlation, "REFUSED");
    std::move(r).Send({.status = refuse ? 422 : 201, .body = "{}"});
  });
  StartHub(partner.url());
  EXPECT_THAT(outbound_->Log(), HasSubstr(absl::StrCat("metrics_port=", metrics_port)));
  Publish({{"OK-1", VisitEvent("OK-1")},
           {"OK-2", VisitEvent("OK-2")},
           {"OK-3", VisitEvent("OK-3")},
           {"REFUSED-1", VisitEvent("REFUSED-1")}});
  ASSERT_TRUE(WaitFor(
      [&] {
        auto s = Stats(ess::v1::DIRECTION_OUTBOUND);
        return s.delivered() == 3 && s.dead() == 1;
      },
      absl::Seconds(30)));

  // The lane counts a message when it settles it, just after its record is stored: the store's
  // figures can be ahead of the lane's counters for a moment.
  absl::StatusOr<http::Response> outbound;
  WaitFor(
      [&] {
        outbound = http_.SendAndWait(
            {.method = "GET", .url = absl::StrCat("http://127.0.0.1:", metrics_port, "/metrics")});
        return outbound.ok() &&
               absl::StrContains(
                   outbound->body,
                   R"(ess_outbound_messages_total{partner="prison_calendar",outcome="parked"} 1)") &&
               absl::StrContains(
                   outbound->body,
                   R"(ess_outbound_messages_total{partner="prison_calendar",outcome="delivered"} 3)");
      },
      absl::Seconds(10));
  ASSERT_TRUE(outbound.ok()) << outbound.status();
  ASSERT_EQ(outbound->status, 200);
  EXPECT_THAT(Samples(outbound->body, "ess_outbound_messages_total"),
              ::testing::UnorderedElementsAre(
                  R"(ess_outbound_messages_total{partner="prison_calendar",outcome="delivered"} 3)",
                  R"(ess_outbound_messages_total{partner="prison_calendar",outcome="dry_run"} 0)",
                  R"(ess_outbound_messages_total{partner="prison_calendar",outcome="retried"} 0)",
                  R"(ess_outbound_messages_total{partner="prison_calendar",outcome="parked"} 1)"));
  EXPECT_THAT(
      Samples(outbound->body, "ess_outbound_success_ratio"),
      ::testing::ElementsAre(R"(ess_outbound_success_ratio{partner="prison_calendar"} 0.75)"));
  EXPECT_THAT(Samples(outbound->body, "ess_outbound_received_total"),
              ::testing::ElementsAre("ess_outbound_received_total 4"));
  EXPECT_THAT(outbound->body, HasSubstr("# TYPE ess_outbound_messages_total counter"));
  // The lane's recorder timed the Record calls that stored those four outcomes.
  EXPECT_THAT(Samples(outbound->body, "ess_replay_client_call_seconds_count"),
              ::testing::Contains(::testing::MatchesRegex(
                  R"(ess_replay_client_call_seconds_count\{call="record"\} [1-4])")));

  ASSERT_EQ(PostWebhook(R"({"id":"OK-1","status":"confirmed"})")->status, 200);
  ASSERT_EQ(PostWebhook(R"({"id":"OK-1","status":"confirmed"})")->status, 200);  // a repeat
  ASSERT_EQ(PostWebhook("not json")->status, 400);
  // A GET on a webhook path (405) is refused as rejected, as its HELP says of every 4xx.
  auto get = http_.SendAndWait({.method = "GET", .url = Url("/webhook/prison")});
  ASSERT_TRUE(get.ok()) << get.status();
  ASSERT_EQ(get->status, 405);
  auto inbound = http_.SendAndWait({.method = "GET", .url = Url("/metrics")});
  ASSERT_TRUE(inbound.ok()) << inbound.status();
  ASSERT_EQ(inbound->status, 200);
  // One Content-Type, Prometheus' text format (scrapers take the first one they see).
  EXPECT_THAT(inbound->headers, ::testing::Contains(::testing::Key("content-type")).Times(1));
  EXPECT_EQ(inbound->Header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_THAT(Samples(inbound->body, "ess_inbound_events_total"),
              ::testing::ElementsAre(R"(ess_inbound_events_total{outcome="published"} 1)",
                                     R"(ess_inbound_events_total{outcome="duplicate"} 1)"));
  EXPECT_THAT(Samples(inbound->body, "ess_inbound_refused_total"),
              ::testing::ElementsAre(R"(ess_inbound_refused_total{reason="rejected"} 2)",
                                     R"(ess_inbound_refused_total{reason="unauthenticated"} 0)",
                                     R"(ess_inbound_refused_total{reason="unavailable"} 0)"));
  EXPECT_THAT(inbound->body, HasSubstr("rejected (answered 4xx: 400, 401, 404 or 405;"));
  // One call went through the store's claim and the broker's confirm; the repeat was answered
  // from the lane's memory, and the bad ones before any of it.
  EXPECT_THAT(Samples(inbound->body, "ess_inbound_stage_seconds_count"),
              ::testing::ElementsAre(R"(ess_inbound_stage_seconds_count{stage="claim"} 1)",
                                     R"(ess_inbound_stage_seconds_count{stage="publish"} 1)"));
  EXPECT_THAT(Samples(inbound->body, "ess_inbound_webhook_seconds_count"),
              ::testing::ElementsAre("ess_inbound_webhook_seconds_count 2"));
  EXPECT_THAT(inbound->body, HasSubstr("# TYPE ess_inbound_stage_seconds histogram"));
  // At least the connection this scrape came on.
  EXPECT_THAT(
      Samples(inbound->body, "ess_inbound_http_connections"),
      ::testing::ElementsAre(::testing::MatchesRegex("ess_inbound_http_connections [1-9]")));
  // That claim was one call to the store, timed by the lane's recorder.
  EXPECT_THAT(inbound->body, HasSubstr(R"(ess_replay_client_call_seconds_count{call="claim"} 1)"));
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

TEST_F(HubTest, BadWebhooksGetTheRightStatusAndReason) {
  CapturePartner partner;
  StartHub(absl::StrCat("http://127.0.0.1:", partner.port()));
  auto r = PostWebhook("{not json");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 400);
  EXPECT_THAT(r->body, HasSubstr("prison_calendar: invalid JSON at offset 1"));
  r = PostWebhook(R"({"status":"confirmed"})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 400);
  EXPECT_THAT(r->body, HasSubstr(R"(missing required field \"id\")"));
  r = PostWebhook(R"({"id":"VIS-1","status":"confirmed"})", "/webhook/unknown");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->body, R"({"error":"no partner serves /webhook/unknown"})");
  auto g = http_.SendAndWait({.method = "GET", .url = Url("/webhook/prison")});
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->status, 405);
  EXPECT_EQ(g->Header("allow"), "POST");

  // What the hub cannot carry is the partner's to fix (400, naming it), and costs nothing
  // else: a body nested 150,000 deep crashed the lane; an id longer than an AMQP property holds
  // dropped the lane's broker connection, failing every webhook in flight; text that is not
  // UTF-8 failed the store's batched claim of other webhooks, with 503 for all of them.
  const std::vector<std::tuple<std::string, http::HeaderList, std::string>> refused = {
      {std::string(150000, '['), {}, "invalid JSON at offset 64: nested deeper than 64 levels"},
      {"{\"id\":\"U8-\xff\",\"status\":\"ok\"}", {}, "Invalid encoding in string"},
      {absl::StrCat(R"({"id":")", std::string(300, 'L'), R"(","status":"ok"})"),
       {},
       R"(the mapped event's \"id\": 300 bytes; at most 255)"},
      {R"({"id":"CR\r\nX: y","status":"ok"})", {}, "control character 0x0d at byte 2"},
      {R"({"id":"VIS-2","status":"ok"})",
       {{"webhook-id", std::string(256, 'w')}},
       "header webhook-id: 256 bytes; at most 255"},
      {R"({"id":"VIS-2","status":"ok"})",
       {{"webhook-id", "wh-\xe9"}},
       "header webhook-id: not UTF-8 (byte 3 is 0xe9)"},
  };
  for (const auto& [body, headers, reason] : refused) {
    r = PostWebhook(body, "/webhook/prison", headers);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 400) << reason << ": " << r->body;
    EXPECT_THAT(r->body, HasSubstr(reason));
  }
  // The lane kept its broker connection and serves the next webhook.
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok()) << conn.status();
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  r = PostWebhook(R"({"id":"VIS-OK","status":"confirmed"})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_THAT(inbound_->Log(), ::testing::Not(HasSubstr("connection lost")));
  // Only it was claimed and published: nothing of the refused ones reached the store.
  ASSERT_TRUE(WaitFor([&] { return Stats(ess::v1::DIRECTION_INBOUND).published() == 1; },
                      absl::Seconds(10)));
  EXPECT_EQ(Stats(ess::v1::DIRECTION_INBOUND).received(), 0u);
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// A personal value in a REST path (inmate <- inmateId) never reaches the log, the record, the
// parked message's x-ess-reason or the audit event, raw or URL-escaped, when the partner is
// down: before, the transport error carried the URL's path ("POST http://...:PORT/api/inmates/
// Jane%20Doe-O%27Brien/slots: Failed to connect...") past the masking.
TEST_F(HubTest, APersonalValueInTheRestPathReachesNoLogRecordReasonOrAuditEscaped) {
  int closed_port = 0;
  {
    CapturePartner probe;
    closed_port = probe.port();
    probe.Stop();  // connections to it are refused
  }
  std::string yaml = Config(absl::StrCat("http://127.0.0.1:", closed_port));
  const std::string path = "      path: /api/slots\n";
  ASSERT_NE(yaml.find(path), std::string::npos);
  yaml.replace(yaml.find(path), path.size(), "      path: /api/inmates/{inmate}/slots\n");
  dir_.Write("hub.yaml", yaml);
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok()) << conn.status();
  const std::string audit = testing::BindSubscriber(**conn, exchange_ + ".audit");
  ASSERT_NO_FATAL_FAILURE(StartReplay());
  outbound_ = std::make_unique<Process>(
      std::vector<std::string>{BinaryPath("outbound_svc"), "--config", dir_.File("hub.yaml")},
      dir_.File("outbound.log"));
  ASSERT_TRUE(outbound_->WaitForLog("outbound lane running")) << outbound_->Log();
  Publish(
      {{"VIS-PII", R"({"type":"VisitScheduleUpdated","id":"VIS-PII","inmateId":"Jane Doe-O'Brien",)"
                   R"("slotUtc":"2026-12-01T15:00:00Z"})"}});
  ASSERT_TRUE(WaitFor([&] { return DepthOrZero(queue_ + ".parked") == 1; }, absl::Seconds(30)))
      << outbound_->Log();
  auto parked = (*conn)->Get(queue_ + ".parked");
  ASSERT_TRUE(parked.ok()) << parked.status();
  std::string reason, history;
  for (const auto& [k, v] : parked->message.headers) {
    if (k == "x-ess-reason") reason = v;
    if (k == "x-ess-history") history = v;
  }
  // Still useful: the method and the partner's origin, and what went wrong.
  EXPECT_THAT(reason, HasSubstr(absl::StrCat("POST http://127.0.0.1:", closed_port, ": ")));
  ASSERT_TRUE(
      WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).dead() == 1; }, absl::Seconds(10)));
  auto trail = Trail("VIS-PII");
  std::string errors;
  for (const auto& rec : trail.records()) absl::StrAppend(&errors, rec.error(), "\n");
  std::string audited;
  ASSERT_TRUE(WaitFor(
      [&] {
        for (auto a = (*conn)->Get(audit); a.ok(); a = (*conn)->Get(audit)) {
          absl::StrAppend(&audited, a->message.body, "\n");
        }
        return absl::StrContains(audited, "MESSAGE_STATUS_DEAD");
      },
      absl::Seconds(10)))
      << audited;
  ASSERT_TRUE((*conn)->DeleteQueue(audit).ok());
  const std::string log = outbound_->Log();
  EXPECT_THAT(log, HasSubstr("127.0.0.1"));  // the failures were logged
  for (const char* pii : {"Jane", "Doe-O", "O'Brien", "O%27Brien", "Jane%20Doe", "/api/inmates/"}) {
    EXPECT_THAT(log, ::testing::Not(HasSubstr(pii))) << pii;
    EXPECT_THAT(reason, ::testing::Not(HasSubstr(pii))) << pii << ": " << reason;
    EXPECT_THAT(history, ::testing::Not(HasSubstr(pii))) << pii << ": " << history;
    EXPECT_THAT(errors, ::testing::Not(HasSubstr(pii))) << pii << ": " << errors;
    EXPECT_THAT(audited, ::testing::Not(HasSubstr(pii))) << pii << ": " << audited;
  }
}

TEST_F(HubTest, PoisonEventsAreParkedWithTheirReasonAndRecordedDead) {
  CapturePartner partner;
  StartHub(absl::StrCat("http://127.0.0.1:", partner.port()));
  Publish({{"BAD-1", "this is not json"},
           {"BAD-2", R"({"type":"VisitScheduleUpdated","id":"BAD-2","slotUtc":"x"})"},
           {"GOOD-1", VisitEvent("GOOD-1")}});
  ASSERT_TRUE(WaitFor([&] { return DepthOrZero(queue_ + ".parked") == 2; }, absl::Seconds(30)));
  ASSERT_TRUE(WaitFor([&] { return partner.count() == 1; }, absl::Seconds(30)));
  EXPECT_EQ(partner.seen()[0].correlation, "GOOD-1");

  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  std::map<std::string, std::string> reasons;
  for (int i = 0; i < 2; ++i) {
    auto d = (*conn)->Get(queue_ + ".parked");
    ASSERT_TRUE(d.ok()) << d.status();
    for (const auto& [k, v] : d->message.headers) {
      if (k == "x-ess-reason") reasons[d->message.correlation_id] = v;
    }
  }
  EXPECT_THAT(reasons["BAD-1"], HasSubstr("invalid JSON at offset 1: Invalid value."));
  EXPECT_EQ(reasons["BAD-2"], "missing required field \"inmateId\" (for \"inmate\")");

  ASSERT_TRUE(
      WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).dead() == 2; }, absl::Seconds(10)));
  auto bad2 = Trail("BAD-2");
  ASSERT_EQ(bad2.records_size(), 1);
  EXPECT_EQ(bad2.records(0).status(), ess::v1::MESSAGE_STATUS_DEAD);
  EXPECT_EQ(bad2.records(0).error(), "missing required field \"inmateId\" (for \"inmate\")");
  EXPECT_EQ(Depth(queue_), 0u);
}

// An event whose id the hub cannot carry (too long for an AMQP property, not UTF-8, a control
// character that would forge a partner's header) is parked with the reason, and recorded DEAD
// under a stand-in id the store can hold. Before, the first dropped the lane's publisher
// connection, the second failed the store's whole batch of records (other events pushed twice)
// and stalled the lane, the third reached the partner as a header of its own.
TEST_F(HubTest, EventsWithIdsTheHubCannotCarryAreParkedAndRecorded) {
  CapturePartner partner;
  StartHub(partner.url());
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok()) << conn.status();
  ASSERT_TRUE((*conn)->Apply({.queues = {{.name = queue_}}}).ok());
  const std::vector<amqp::Message> events = {
      {.body = VisitEvent("VIS-2\\r\\nX-Injected: yes"), .message_id = "m-crlf"},
      {.body = VisitEvent(std::string(300, 'L')), .message_id = "m-long"},
      {.body = VisitEvent("VIS-U8"), .message_id = "m-\xff"},
      {.body = VisitEvent("GOOD-1"), .message_id = "m-good"},
  };
  for (const amqp::Message& m : events) ASSERT_TRUE((*conn)->Publish("", queue_, m).ok());
  ASSERT_TRUE(WaitFor([&] { return DepthOrZero(queue_ + ".parked") == 3; }, absl::Seconds(30)));
  ASSERT_TRUE(WaitFor(
      [&] {
        auto s = Stats(ess::v1::DIRECTION_OUTBOUND);
        return s.dead() == 3 && s.delivered() == 1;
      },
      absl::Seconds(10)))
      << Stats(ess::v1::DIRECTION_OUTBOUND).ShortDebugString();
  ASSERT_EQ(partner.count(), 1u);
  EXPECT_EQ(partner.seen()[0].correlation, "GOOD-1");
  EXPECT_EQ(Depth(queue_), 0u);

  ess::v1::ListRequest req;
  req.set_partner("prison_calendar");
  req.set_status(ess::v1::MESSAGE_STATUS_DEAD);
  ess::v1::ListResponse resp;
  ASSERT_TRUE(stub_->List(Call().get(), req, &resp).ok());
  std::map<std::string, std::string> errors;  // correlation id -> error
  for (const auto& r : resp.records()) errors[r.correlation_id()] = r.error();
  ASSERT_EQ(errors.size(), 3u);
  EXPECT_EQ(errors["VIS-2\r\nX-Injected: yes"], "the event's id: control character 0x0d at byte 5");
  EXPECT_EQ(errors["VIS-U8"], "the message's message_id: not UTF-8 (byte 2 is 0xff)");
  const auto long_one = std::find_if(errors.begin(), errors.end(), [](const auto& e) {
    return absl::StartsWith(e.first, std::string(200, 'L'));
  });
  ASSERT_NE(long_one, errors.end());
  EXPECT_LE(long_one->first.size(), 255u);
  EXPECT_EQ(long_one->second, "the event's id: 300 bytes; at most 255");
}

// The store outage of the next two tests: killed, then back with the same database and port.
class StoreOutageTest : public HubTest {
 protected:
  void KillStore() {
    stub_.reset();
    ASSERT_EQ(replay_->Stop(SIGKILL), 128 + SIGKILL);
    replay_.reset();
  }
  // The event is not moved while the store is down: back on its queue (not parked unrecorded),
  // consumption paused for the store.
  void HeldForTheStore() {
    ASSERT_TRUE(
        WaitFor([&] { return DepthOrZero(queue_) == 1 || DepthOrZero(queue_ + ".parked") == 1; },
                absl::Seconds(30)))
        << outbound_->Log();
    EXPECT_EQ(DepthOrZero(queue_ + ".parked"), 0u);
    EXPECT_THAT(outbound_->Log(), HasSubstr("consumption paused"));
  }
  // Once the store is back: parked, and recorded DEAD.
  void ParkedAndRecordedDead() {
    ASSERT_TRUE(WaitFor([&] { return DepthOrZero(queue_ + ".parked") == 1; }, absl::Seconds(30)))
        << outbound_->Log();
    ASSERT_TRUE(
        WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).dead() == 1; }, absl::Seconds(10)));
  }
};

// No ack without its record, for a park too: a poison event taken while the store is down is
// not parked and acked away unrecorded; it stays on its queue (requeued, consumption paused)
// and, once the store is back, is parked and recorded DEAD, so ops replay finds it.
TEST_F(StoreOutageTest, APoisonEventIsParkedAndRecordedOnceTheStoreIsBack) {
  CapturePartner partner;
  StartHub(partner.url());
  ASSERT_NO_FATAL_FAILURE(KillStore());
  Publish({{"BAD-9", R"({"type":"VisitScheduleUpdated","id":"BAD-9","slotUtc":"x"})"}},
          /*declare=*/false);
  ASSERT_NO_FATAL_FAILURE(HeldForTheStore());
  EXPECT_THAT(outbound_->Log(), HasSubstr("replay store did not take the record; requeued"));
  ASSERT_NO_FATAL_FAILURE(StartReplay());  // same database, same port
  ASSERT_NO_FATAL_FAILURE(ParkedAndRecordedDead());
  auto t = Trail("BAD-9");
  ASSERT_EQ(t.records_size(), 1);
  EXPECT_EQ(t.records(0).status(), ess::v1::MESSAGE_STATUS_DEAD);
  EXPECT_EQ(t.records(0).error(), "missing required field \"inmateId\" (for \"inmate\")");
  EXPECT_EQ(Depth(queue_), 0u);
  EXPECT_EQ(partner.count(), 0u);
}

// The same for a retry: a failed push whose FAILED record the store cannot take is requeued,
// not moved to the delay queue unrecorded; once the store is back it is retried, recorded and
// parked after its attempts.
TEST_F(StoreOutageTest, ARetryIsRecordedOnceTheStoreIsBack) {
  CapturePartner partner;
  partner.set_status(503);
  StartHub(partner.url());
  ASSERT_NO_FATAL_FAILURE(KillStore());
  Publish({{"DOWN-9", VisitEvent("DOWN-9")}}, /*declare=*/false);
  ASSERT_NO_FATAL_FAILURE(HeldForTheStore());
  ASSERT_NO_FATAL_FAILURE(StartReplay());
  // max_attempts 2: parked after its second attempt, recorded DEAD with both.
  ASSERT_NO_FATAL_FAILURE(ParkedAndRecordedDead());
  auto t = Trail("DOWN-9");
  ASSERT_EQ(t.records_size(), 1);
  EXPECT_EQ(t.records(0).status(), ess::v1::MESSAGE_STATUS_DEAD);
  EXPECT_EQ(t.records(0).attempts(), 2u);
}

// outbound_svc's metrics port answers /healthz (liveness) and /readyz (readiness): 200 while it
// can deliver, 503 naming the store while consumption is paused because the store does not take
// the lane's records (it notices with the first record that fails), 200 again once a probe of the
// store answers and consumption resumes.
TEST_F(StoreOutageTest, OutboundIsNotReadyWhileItsStoreDoesNotTakeRecords) {
  const int metrics_port = testing::FreePort();
  outbound_extra_ = absl::StrCat("  metrics_listen: 127.0.0.1:", metrics_port);
  CapturePartner partner;
  StartHub(partner.url());
  auto get = [&](const std::string& path) {
    auto r = http_.SendAndWait({.method = "GET",
                                .url = absl::StrCat("http://127.0.0.1:", metrics_port, path),
                                .timeout = absl::Seconds(2)});
    return r.ok() ? absl::StrCat(r->status, " ", r->body) : std::string(r.status().message());
  };
  auto ready_becomes = [&](const std::string& want) {
    return WaitFor([&] { return get("/readyz") == want; }, absl::Seconds(30));
  };
  const std::string ready = R"(200 {"ready":true})", alive = R"(200 {"ok":true})";
  ASSERT_TRUE(ready_becomes(ready)) << get("/readyz") << "\n" << outbound_->Log();
  EXPECT_EQ(get("/healthz"), alive);

  ASSERT_NO_FATAL_FAILURE(KillStore());
  // Nothing to record yet: the lane has not noticed.
  EXPECT_EQ(get("/readyz"), ready);
  Publish({{"STORE-READY-1", VisitEvent("STORE-READY-1")}}, /*declare=*/false);
  ASSERT_TRUE(ready_becomes(
      R"(503 {"ready":false,"store":"does not take the lane's records: consumption paused"})"))
      << get("/readyz") << "\n"
      << outbound_->Log();
  EXPECT_EQ(get("/healthz"), alive);

  ASSERT_NO_FATAL_FAILURE(StartReplay());  // same database, same port
  ASSERT_TRUE(ready_becomes(ready)) << get("/readyz") << "\n" << outbound_->Log();
  ASSERT_TRUE(WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).delivered() == 1; },
                      absl::Seconds(30)))
      << outbound_->Log();
  EXPECT_EQ(get("/healthz"), alive);
}

// A park the broker refuses (its parked queue was deleted under the lane) leaves the event in
// its queue: requeued, and parked once the queue is back, never acked and dropped. Meanwhile the
// partner's queue is held, with a growing pause between tries, rather than the same event
// coming straight back to be recorded and refused again in a loop.
TEST_F(HubTest, AParkTheBrokerRefusesIsRequeuedAndHeldUntilItCanBeParked) {
  CapturePartner partner;
  StartHub(absl::StrCat("http://127.0.0.1:", partner.port()));
  const std::string parked = queue_ + ".parked";
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok()) << conn.status();
  ASSERT_TRUE((*conn)->DeleteQueue(parked).ok());
  Publish({{"BAD-1", "this is not json"}}, /*declare=*/false);
  ASSERT_TRUE(WaitFor(
      [&] {
        return outbound_->Log().find("move not published; delivery requeued") != std::string::npos;
      },
      absl::Seconds(10)));
  EXPECT_THAT(outbound_->Log(), HasSubstr("unroutable: exchange= routing_key=" + parked));
  // Logged just after the requeue: waited for, not read at once (CI once read the log between
  // the two lines).
  EXPECT_TRUE(WaitFor(
      [&] {
        return absl::StrContains(outbound_->Log(), "a move to a delay or parked queue failed");
      },
      absl::Seconds(5)))
      << outbound_->Log();
  // Held for 250 ms, 500 ms, 1 s, 2 s: a handful of tries in 2.5 s, where a requeue loop makes
  // thousands.
  absl::SleepFor(absl::Milliseconds(2500));
  EXPECT_LE(testing::CountOccurrences(outbound_->Log(), "move not published"), 6u);

  ASSERT_TRUE((*conn)->Apply({.queues = {{.name = parked}}}).ok());
  ASSERT_TRUE(WaitFor([&] { return DepthOrZero(parked) == 1; }, absl::Seconds(10)));
  auto d = (*conn)->Get(parked);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->message.correlation_id, "BAD-1");
  EXPECT_EQ(d->message.body, "this is not json");
  ASSERT_TRUE(WaitFor([&] { return Depth(queue_) == 0u; }, absl::Seconds(10)));
  EXPECT_EQ(partner.count(), 0u);
  EXPECT_THAT(outbound_->Log(), HasSubstr("moves can be published again"));
}

// The lane's publisher down while its consumer is up (here it cannot reconnect: the events
// exchange it declares was redeclared with another type). A visit the partner refuses cannot
// be parked: it goes back to its queue, and the partner's queue waits for the publisher, rather
// than the visit being pushed to the partner again and again. Once the publisher is back, the
// visit is parked, recorded dead after one push.
TEST_F(HubTest, WhileTheLanesPublisherIsDownItsMovesWaitForItWithoutALoop) {
  const int metrics_port = testing::FreePort();
  outbound_extra_ = absl::StrCat("  metrics_listen: 127.0.0.1:", metrics_port);
  CapturePartner partner;
  partner.set_behaviour([](const CapturePartner::Seen&, http::Responder r) {
    std::move(r).Send({.status = 422, .body = "{\"error\":\"slot unknown\"}"});
  });
  StartHub(partner.url());
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok()) << conn.status();
  ASSERT_TRUE((*conn)->DeleteExchange(exchange_).ok());
  ASSERT_TRUE((*conn)->Apply({.exchanges = {{.name = exchange_, .type = "direct"}}}).ok());
  ASSERT_EQ(testing::CloseBrokerConnections(absl::StrCat(":", outbound_->pid(), "-publisher")), 1);
  ASSERT_TRUE(
      WaitFor([&] { return outbound_->Log().find("amqp connection lost") != std::string::npos; },
              absl::Seconds(10)))
      << outbound_->Log();

  Publish({{"V-1", VisitEvent("V-1")}}, /*declare=*/false);
  ASSERT_TRUE(WaitFor([&] { return partner.count() >= 1; }, absl::Seconds(10))) << outbound_->Log();
  // While the publisher stays down, the visit waits in its queue: one push, no loop.
  absl::SleepFor(absl::Seconds(2));
  EXPECT_EQ(partner.count(), 1u);
  EXPECT_THAT(outbound_->Log(), HasSubstr("a move to a delay or parked queue failed"));
  EXPECT_THAT(outbound_->Log(), HasSubstr("publisher_connected=false"));
  auto metrics = http_.SendAndWait(
      {.method = "GET", .url = absl::StrCat("http://127.0.0.1:", metrics_port, "/metrics")});
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_THAT(metrics->body, HasSubstr(R"(ess_outbound_moves_held{partner="prison_calendar"} 1)"));
  EXPECT_EQ(Depth(queue_), 1u);
  EXPECT_EQ(DepthOrZero(queue_ + ".parked"), 0u);

  // The publisher comes back (it declares the exchange again), and the visit is parked.
  ASSERT_TRUE((*conn)->DeleteExchange(exchange_).ok());
  ASSERT_TRUE(WaitFor([&] { return DepthOrZero(queue_ + ".parked") == 1; }, absl::Seconds(20)))
      << outbound_->Log();
  EXPECT_EQ(Depth(queue_), 0u);
  EXPECT_THAT(outbound_->Log(), HasSubstr("moves can be published again"));
  const ess::v1::GetResponse t = Trail("V-1");
  ASSERT_EQ(t.records_size(), 1);
  EXPECT_EQ(t.records(0).status(), ess::v1::MESSAGE_STATUS_DEAD);
  EXPECT_THAT(t.records(0).error(), HasSubstr("422"));
  // The redelivery found the visit recorded dead with the same payload: parked as decided,
  // without a second push.
  EXPECT_THAT(outbound_->Log(), HasSubstr("redelivered after it was given up on; parked again"));
  EXPECT_EQ(partner.count(), 1u);
}

// An event over outbound.max_event_bytes is parked before any push (its record would not fit
// a call to the store, and the lane would hold it in memory on every redelivery), recorded DEAD
// without its payload; the parked message keeps it whole. The next event flows.
TEST_F(HubTest, AnEventOverTheSizeLimitIsParkedBeforeAnyPush) {
  outbound_extra_ = "  max_event_bytes: 4096";
  CapturePartner partner;
  StartHub(partner.url());
  const std::string big =
      absl::StrCat(R"({"type":"VisitScheduleUpdated","id":"BIG-1",)",
                   R"("inmateId":"A123","note":")", std::string(5000, 'n'), R"("})");
  Publish({{"BIG-1", big}, {"OK-1", VisitEvent("OK-1")}}, /*declare=*/false);
  ASSERT_TRUE(WaitFor([&] { return DepthOrZero(queue_ + ".parked") == 1; }, absl::Seconds(10)))
      << outbound_->Log();
  ASSERT_TRUE(WaitFor([&] { return partner.count() == 1; }, absl::Seconds(10)));
  EXPECT_EQ(partner.seen()[0].correlation, "OK-1");
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok()) << conn.status();
  auto d = (*conn)->Get(queue_ + ".parked");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->message.body, big);
  const ess::v1::GetResponse t = Trail("BIG-1");
  ASSERT_EQ(t.records_size(), 1);
  EXPECT_EQ(t.records(0).status(), ess::v1::MESSAGE_STATUS_DEAD);
  EXPECT_EQ(t.records(0).error(),
            absl::StrCat("event of ", big.size(), " bytes, over outbound.max_event_bytes (4096)"));
  EXPECT_EQ(t.records(0).payload(), "");
}

// Events published without an AMQP message id get one from their content: the event's id and
// a hash of its body. A second update of the same visit is not a repeat of the first, and an
// event with no id at all is still parked with a record of its own, without failing the
// records batched with it.
TEST_F(HubTest, EventsWithoutAMessageIdGetOneFromTheirContent) {
  CapturePartner partner;
  StartHub(partner.url());
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok()) << conn.status();
  const std::string first = VisitEvent("VIS-5");
  std::string second = first;
  second.replace(second.find("2026-12-01T15:00:00Z"), 20, "2026-12-02T09:30:00Z");
  ASSERT_NE(first, second);
  ASSERT_TRUE((*conn)->Publish("", queue_, {.body = first}).ok());
  ASSERT_TRUE((*conn)->Publish("", queue_, {.body = "no json, no ids"}).ok());
  ASSERT_TRUE((*conn)->Publish("", queue_, {.body = second}).ok());
  for (int i = 0; i < 10; ++i) {
    const std::string id = absl::StrCat("ANON-", i);
    ASSERT_TRUE((*conn)->Publish("", queue_, {.body = VisitEvent(id)}).ok());
  }
  ASSERT_TRUE(WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).delivered() == 12; },
                      absl::Seconds(30)))
      << Stats(ess::v1::DIRECTION_OUTBOUND).ShortDebugString();
  ASSERT_TRUE(
      WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).dead() == 1; }, absl::Seconds(10)));
  ASSERT_TRUE(WaitFor([&] { return DepthOrZero(queue_ + ".parked") == 1; }, absl::Seconds(10)));
  EXPECT_EQ(Depth(queue_), 0u);
  EXPECT_EQ(outbound_->Stop(), 0) << outbound_->Log();
  outbound_.reset();

  // Every event pushed once (no batch of records failed and sent back), each with its own key.
  std::vector<CapturePartner::Seen> seen = partner.seen();
  ASSERT_EQ(seen.size(), 12u);
  std::set<std::string> keys;
  std::vector<std::string> vis5_keys;
  for (const auto& s : seen) {
    keys.insert(s.idempotency_key);
    EXPECT_TRUE(absl::StartsWith(s.idempotency_key, s.correlation + ":")) << s.idempotency_key;
    if (s.correlation == "VIS-5") vis5_keys.push_back(s.idempotency_key);
  }
  EXPECT_EQ(keys.size(), 12u);
  ASSERT_EQ(vis5_keys.size(), 2u);
  EXPECT_NE(vis5_keys[0], vis5_keys[1]);
  // Both updates are in the store, under their own ids.
  auto trail = Trail("VIS-5");
  ASSERT_EQ(trail.records_size(), 2);
  EXPECT_NE(trail.records(0).message_id(), trail.records(1).message_id());
}

// An adapter that batches (CSV over SFTP) holds events the lane has not settled. When the lane
// stops before the batch is due, they go back to the queue: not parked, not lost, no crash.
TEST_F(HubTest, StoppingTheLaneReturnsWhatAnSftpBatchHeldToTheQueue) {
  CapturePartner partner;
  outbound_extra_ = "  shutdown_deadline_ms: 300";
  const std::string rest =
      absl::StrCat("    adapter: rest\n    settings:\n      base_url: ", partner.url(),
                   "\n      path: /api/slots\n");
  const std::string sftp = absl::StrCat(
      "    adapter: sftp_csv\n    settings:\n      host: ", testing::RequiredEnv("ESS_SFTP_HOST"),
      "\n      port: ", testing::RequiredEnv("ESS_SFTP_PORT"),
      "\n      user: ", testing::RequiredEnv("ESS_SFTP_USER"),
      "\n      private_key_file: ", testing::RequiredEnv("ESS_SFTP_KEY"),
      "\n      known_hosts_file: ", testing::RequiredEnv("ESS_SFTP_KNOWN_HOSTS"),
      "\n      remote_dir: /\n      max_rows: 100\n      max_age_ms: 600000\n");
  std::string yaml = Config(partner.url());
  ASSERT_TRUE(absl::StrContains(yaml, rest)) << yaml;
  absl::StrReplaceAll({{rest, sftp}}, &yaml);
  dir_.Write("hub.yaml", yaml);
  ASSERT_NO_FATAL_FAILURE(StartReplay());
  outbound_ = std::make_unique<testing::Process>(
      std::vector<std::string>{testing::BinaryPath("outbound_svc"), "--config",
                               dir_.File("hub.yaml")},
      dir_.File("outbound.log"));
  ASSERT_TRUE(outbound_->WaitForLog("outbound lane running")) << outbound_->Log();
  std::vector<std::pair<std::string, std::string>> events;
  for (int i = 0; i < 5; ++i) {
    events.emplace_back(absl::StrCat("HELD-", i), VisitEvent(absl::StrCat("HELD-", i)));
  }
  Publish(events);
  // Taken by the lane (unacked, not ready), held in the adapter's open batch.
  ASSERT_TRUE(WaitFor([&] { return Depth(queue_) == 0; }, absl::Seconds(10)));
  EXPECT_EQ(outbound_->Stop(), 0) << outbound_->Log();
  EXPECT_THAT(outbound_->Log(), HasSubstr("shutdown deadline passed"));
  // Given back by the lane while it could settle them (before, the adapter failed them while
  // the lane was being destroyed, into a consumer that was gone).
  EXPECT_THAT(outbound_->Log(), HasSubstr("parked=0 duplicates=0 requeued=5"));
  outbound_.reset();
  EXPECT_EQ(Depth(queue_), 5u);
  EXPECT_EQ(DepthOrZero(queue_ + ".parked"), 0u);
  const ess::v1::PartnerStats stats = Stats(ess::v1::DIRECTION_OUTBOUND);
  EXPECT_EQ(stats.dead() + stats.delivered() + stats.failed(), 0u) << stats.ShortDebugString();
}

TEST_F(HubTest, PermanentPartnerRefusalIsParkedAndRetryableIsRetriedThenParked) {
  CapturePartner partner;
  partner.set_status(422);
  StartHub(absl::StrCat("http://127.0.0.1:", partner.port()));
  Publish({{"REFUSED-1", VisitEvent("REFUSED-1")}});
  ASSERT_TRUE(WaitFor([&] { return DepthOrZero(queue_ + ".parked") == 1; }, absl::Seconds(30)));
  EXPECT_EQ(partner.count(), 1u);  // permanent: no second attempt

  partner.set_status(503);
  Publish({{"DOWN-1", VisitEvent("DOWN-1")}});
  // max_attempts 2: one retry through the 200 ms delay queue, then parked.
  ASSERT_TRUE(WaitFor([&] { return DepthOrZero(queue_ + ".parked") == 2; }, absl::Seconds(30)));
  EXPECT_EQ(partner.count(), 3u);
  auto t = Trail("DOWN-1");
  ASSERT_EQ(t.records_size(), 1);
  EXPECT_EQ(t.records(0).status(), ess::v1::MESSAGE_STATUS_DEAD);
  EXPECT_EQ(t.records(0).attempts(), 2u);
  EXPECT_THAT(t.records(0).error(),
              HasSubstr("gave up after 2 attempts: partner answered HTTP 503"));
}

TEST_F(HubTest, PartnersRetryAfterIsHonoured) {
  CapturePartner partner;
  absl::Mutex mu;
  std::vector<absl::Time> arrivals;
  partner.set_behaviour([&](const CapturePartner::Seen&, http::Responder r) {
    absl::MutexLock lock(&mu);
    arrivals.push_back(absl::Now());
    if (arrivals.size() == 1) {
      std::move(r).Send({.status = 429, .headers = {{"Retry-After", "2"}}, .body = "{}"});
    } else {
      std::move(r).Send({.status = 201, .body = "{}"});
    }
  });
  StartHub(partner.url());
  Publish({{"RA-1", VisitEvent("RA-1")}});
  ASSERT_TRUE(WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).delivered() == 1; },
                      absl::Seconds(20)));
  absl::MutexLock lock(&mu);
  ASSERT_EQ(arrivals.size(), 2u);
  // Full jitter alone would have waited at most 200 ms; the partner asked for 2 s.
  EXPECT_GE(arrivals[1] - arrivals[0], absl::Milliseconds(1900));
  EXPECT_EQ(Trail("RA-1").records(0).attempts(), 2u);
}

TEST_F(HubTest, QuorumQueuesCarryTheFlowToo) {
  quorum_ = true;
  CapturePartner partner;
  StartHub(partner.url());
  std::vector<std::pair<std::string, std::string>> events;
  for (int i = 0; i < 50; ++i)
    events.emplace_back(absl::StrCat("Q-", i), VisitEvent(absl::StrCat("Q-", i)));
  Publish(events, /*declare=*/false);
  ASSERT_TRUE(WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).delivered() == 50; },
                      absl::Seconds(30)));
  EXPECT_EQ(partner.count(), 50u);
  // The work queue really is a quorum queue: declaring it classic is refused by the broker.
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  EXPECT_EQ((*conn)->Apply({.queues = {{.name = queue_}}}).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(HubTest, DryRunRecordsEverythingAndSendsNothing) {
  CapturePartner partner;
  StartHub(absl::StrCat("http://127.0.0.1:", partner.port()), {"--dry_run"});
  // More than the partner's 32 pushes in flight: each dry run must free its slot.
  constexpr int kEvents = 100;
  std::vector<std::pair<std::string, std::string>> events;
  for (int i = 0; i < kEvents; ++i)
    events.emplace_back(absl::StrCat("DRY-", i), VisitEvent(absl::StrCat("DRY-", i)));
  Publish(events);
  ASSERT_TRUE(WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).dry_run() == kEvents; },
                      absl::Seconds(30)))
      << Stats(ess::v1::DIRECTION_OUTBOUND).dry_run() << " dry runs";
  EXPECT_EQ(partner.count(), 0u);
  auto t = Trail("DRY-3");
  ASSERT_EQ(t.records_size(), 1);
  EXPECT_EQ(t.records(0).status(), ess::v1::MESSAGE_STATUS_DRY_RUN);
  EXPECT_TRUE(t.records(0).dry_run());
  EXPECT_THAT(t.records(0).rendered(), HasSubstr(R"({"id":"DRY-3","inmate":"A123")"));
  EXPECT_EQ(outbound_->Stop(), 0);
  EXPECT_THAT(outbound_->Log(), HasSubstr("dry-run: request not sent"));
  EXPECT_THAT(outbound_->Log(), HasSubstr(R"(\"inmate\":\"***\")"));  // PII masked in the log
  EXPECT_THAT(outbound_->Log(), ::testing::Not(HasSubstr("A123")));
  outbound_.reset();
  EXPECT_EQ(Depth(queue_), 0u);
}

// SIGTERM (a rolling deploy) while a webhook is in progress: it still gets its 200 once its
// claim and publish are done, rather than a reset connection.
TEST_F(HubTest, InboundStoppedMidWebhookStillAnswersIt) {
  CapturePartner partner;
  StartHub(partner.url());
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  // The store stops answering for a moment (our own child, by PID): the claim waits.
  ASSERT_EQ(kill(replay_->pid(), SIGSTOP), 0);
  auto call = std::async(std::launch::async,
                         [&] { return PostWebhook(R"({"id":"VIS-DRAIN","status":"confirmed"})"); });
  absl::SleepFor(absl::Milliseconds(300));  // the call has reached the lane
  ASSERT_EQ(kill(inbound_->pid(), SIGTERM), 0);
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_EQ(kill(replay_->pid(), SIGCONT), 0);
  absl::StatusOr<http::Response> r = call.get();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(inbound_->Wait(absl::Seconds(20)), 0) << inbound_->Log();
  inbound_.reset();
  auto d = (*conn)->Get(sub);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->message.correlation_id, "VIS-DRAIN");
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// A call of two events (a CSV webhook) whose second publish the broker refuses: the first is on
// the bus, so it is recorded PUBLISHED and the partner's retry publishes only the second.
TEST_F(HubTest, APartlyPublishedCallIsRetriedForWhatWasNotPublished) {
  CapturePartner partner;
  std::string yaml = Config(partner.url());
  absl::StrAppend(&yaml, "  - name: roster\n    adapter: sftp_csv\n    settings: {host: ",
                  testing::RequiredEnv("ESS_SFTP_HOST"),
                  ", user: u, private_key_file: ", testing::RequiredEnv("ESS_SFTP_KEY"),
                  ", known_hosts_file: ", testing::RequiredEnv("ESS_SFTP_KNOWN_HOSTS"), R"(}
    inbound:
      webhook_path: /webhook/roster
      mapping:
        - {target: type, constant: SlotConfirmed}
        - {target: id, source: id}
        - {target: status, source: status}
)");
  dir_.Write("hub.yaml", yaml);
  ASSERT_NO_FATAL_FAILURE(StartReplay());
  ASSERT_NO_FATAL_FAILURE(StartInbound("hub.yaml"));
  // The only queue bound to the exchange takes one message and refuses the next (a nack).
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string audit = testing::BindSubscriber(**conn, exchange_ + ".audit");
  const std::string sub = testing::UniqueName("one-slot");
  ASSERT_TRUE((*conn)
                  ->Apply({.exchanges = {{.name = exchange_, .type = "fanout"}},
                           .queues = {{.name = sub,
                                       .string_args = {{"x-overflow", "reject-publish"}},
                                       .int_args = {{"x-max-length", 1}}}},
                           .bindings = {{.queue = sub, .exchange = exchange_}}})
                  .ok());
  auto post = [&] {
    return http_.SendAndWait({.url = Url("/webhook/roster"),
                              .headers = {{"Content-Type", "text/csv"}, {"webhook-id", "roster-1"}},
                              .body = "correlation_id,id,status\nVIS-1,VIS-1,confirmed\n"
                                      "VIS-2,VIS-2,confirmed\n"});
  };
  auto r = post();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 503) << r->body;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto one = Trail("VIS-1"), two = Trail("VIS-2");
        return one.records_size() == 1 && two.records_size() == 1 &&
               one.records(0).status() == ess::v1::MESSAGE_STATUS_PUBLISHED &&
               two.records(0).status() == ess::v1::MESSAGE_STATUS_FAILED;
      },
      absl::Seconds(10)))
      << Trail("VIS-1").ShortDebugString() << " / " << Trail("VIS-2").ShortDebugString();
  // The audit says the same: VIS-1 published, VIS-2 failed with the reason.
  std::map<std::string, std::string> audited;
  ASSERT_TRUE(WaitFor(
      [&] {
        for (auto a = (*conn)->Get(audit); a.ok(); a = (*conn)->Get(audit)) {
          audited[a->message.correlation_id] = a->message.body;
        }
        return audited.size() == 2;
      },
      absl::Seconds(10)));
  EXPECT_THAT(audited["VIS-1"], HasSubstr(R"("status":"MESSAGE_STATUS_PUBLISHED")"));
  EXPECT_THAT(audited["VIS-2"], HasSubstr(R"("status":"MESSAGE_STATUS_FAILED")"));
  EXPECT_THAT(audited["VIS-2"], HasSubstr("event bus"));
  ASSERT_TRUE((*conn)->DeleteQueue(audit).ok());
  // The partner retries once the bus has room: only VIS-2 goes out.
  auto d = (*conn)->Get(sub);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->message.message_id, "roster-1:0");
  r = post();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->body, R"({"ok":true,"events":1,"duplicates":1})");
  d = (*conn)->Get(sub);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->message.message_id, "roster-1:1");
  EXPECT_EQ((*conn)->Get(sub).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

TEST_F(HubTest, InboundAnswers503WhenBrokerOrStoreIsUnreachable) {
  int closed = testing::FreePort();
  dir_.Write("hub.yaml", Config("http://127.0.0.1:9"));
  StartReplay();
  dir_.Write("nobus.yaml", Config("http://127.0.0.1:9", /*bus_port=*/closed));
  StartInbound("nobus.yaml");
  auto r = PostWebhook(R"({"id":"VIS-9","status":"confirmed"})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->Header("retry-after"), "1");
  // The partner is told which part failed, nothing of the hub's insides; the log says what.
  EXPECT_EQ(r->body, R"({"error":"event bus unavailable"})");
  EXPECT_THAT(inbound_->Log(),
              HasSubstr(R"(msg="publish failed; partner told to retry" partner=prison_calendar )"
                        R"(error="not connected to the amqp broker")"));
  EXPECT_EQ(inbound_->Stop(), 0);  // a graceful stop sends the records still queued
  EXPECT_THAT(inbound_->Log(), HasSubstr("msg=stopping signal=SIGTERM"));  // as replay_svc says
  // It was recorded RECEIVED while the publish was tried, then FAILED with the reason.
  auto failed = Trail("VIS-9");
  ASSERT_EQ(failed.records_size(), 1);
  EXPECT_EQ(failed.records(0).status(), ess::v1::MESSAGE_STATUS_FAILED);
  EXPECT_THAT(failed.records(0).error(), HasSubstr("event bus"));
  EXPECT_EQ(failed.trail().stage(), "failed");

  // With a subscriber bound (an event nobody would receive is refused as unroutable).
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  dir_.Write("nostore.yaml", Config("http://127.0.0.1:9", 0, /*replay_port=*/closed));
  StartInbound("nostore.yaml");
  r = PostWebhook(R"({"id":"VIS-9","status":"confirmed"})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->Header("retry-after"), "1");
  EXPECT_EQ(r->body, R"({"error":"replay store unavailable"})");
  // The detail (here gRPC's, naming the store's address) is in the lane's log only.
  EXPECT_THAT(inbound_->Log(),
              HasSubstr(absl::StrCat(R"(msg="replay store failed the claim; partner told to )",
                                     R"(retry" partner=prison_calendar error="replay store: )")));
  EXPECT_THAT(inbound_->Log(), HasSubstr(absl::StrCat("127.0.0.1:", closed)));
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// /healthz says the process serves (liveness); /readyz says whether a webhook can be taken now
// (readiness): 503 naming the part that does not answer while the broker or the store is away,
// 200 again once it is back. The bus goes through a relay the test takes down; the store is
// killed and started again on its port, as a crash and restart would.
TEST_F(HubTest, InboundIsReadyOnlyWhileItsBusAndStoreAnswer) {
  testing::TcpRelay bus(broker_.port);
  dir_.Write("hub.yaml", Config("http://127.0.0.1:9", bus.port()));
  ASSERT_NO_FATAL_FAILURE(StartReplay());
  ASSERT_NO_FATAL_FAILURE(StartInbound("hub.yaml"));
  auto get = [&](const std::string& path) {
    auto r = http_.SendAndWait({.method = "GET", .url = Url(path), .timeout = absl::Seconds(2)});
    return r.ok() ? absl::StrCat(r->status, " ", r->body) : std::string(r.status().message());
  };
  auto ready_becomes = [&](const std::string& want) {
    return WaitFor([&] { return get("/readyz") == want; }, absl::Seconds(20));
  };
  const std::string ready = R"(200 {"ready":true})", alive = R"(200 {"ok":true})";
  ASSERT_TRUE(ready_becomes(ready)) << get("/readyz") << "\n" << inbound_->Log();

  bus.Down();
  ASSERT_TRUE(ready_becomes(R"(503 {"ready":false,"bus":"not connected"})")) << get("/readyz");
  EXPECT_EQ(get("/healthz"), alive);
  // Meanwhile each webhook gets 503; the lane logs the failure once, not once per webhook.
  for (int i = 0; i < 20; ++i) {
    auto r = PostWebhook(absl::StrCat(R"({"id":"BUS-)", i, R"(","status":"confirmed"})"));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(absl::StrCat(r->status, " ", r->body), R"(503 {"error":"event bus unavailable"})");
  }
  const size_t logged = testing::CountOccurrences(inbound_->Log(), "msg=\"publish failed;");
  EXPECT_GE(logged, 1u);
  EXPECT_LE(logged, 3u) << inbound_->Log();
  ASSERT_TRUE(bus.Up());
  ASSERT_TRUE(ready_becomes(ready)) << get("/readyz");

  stub_.reset();
  ASSERT_EQ(replay_->Stop(SIGKILL), 128 + SIGKILL);
  replay_.reset();
  ASSERT_TRUE(ready_becomes(R"(503 {"ready":false,"store":"unreachable"})")) << get("/readyz");
  EXPECT_EQ(get("/healthz"), alive);
  bus.Down();
  ASSERT_TRUE(ready_becomes(R"(503 {"ready":false,"bus":"not connected","store":"unreachable"})"))
      << get("/readyz");
  ASSERT_TRUE(bus.Up());
  ASSERT_NO_FATAL_FAILURE(StartReplay());  // same database, same port
  ASSERT_TRUE(ready_becomes(ready)) << get("/readyz");
  EXPECT_EQ(get("/healthz"), alive);
}

// essbus publish takes its BODY from stdin when it is "-", as its usage line says.
TEST_F(HubTest, EssbusPublishesABodyReadFromStdin) {
  const std::string queue = testing::UniqueName("essbus_stdin");
  const std::string body = VisitEvent("VIS-STDIN");
  dir_.Write("body.json", body + "\n");
  const testing::ToolRun run =
      testing::RunTool({"/bin/sh", "-c",
                        absl::StrCat(R"(exec "$0" --amqp )", broker_.host, ":", broker_.port,
                                     " publish --queue ", queue, R"( - < "$1")"),
                        BinaryPath("essbus"), dir_.File("body.json")},
                       dir_.File("essbus.log"));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok()) << conn.status();
  auto d = (*conn)->Get(queue);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->message.body, body);
  EXPECT_EQ(d->message.correlation_id, "VIS-STDIN");
  ASSERT_TRUE((*conn)->DeleteQueue(queue).ok());
}

TEST_F(HubTest, UnroutableEventIsRefusedNotDropped) {
  CapturePartner partner;
  StartHub(absl::StrCat("http://127.0.0.1:", partner.port()));
  // No queue is bound to the events exchange: publishing would drop the event.
  auto r = PostWebhook(R"({"id":"VIS-5","status":"confirmed"})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->body, R"({"error":"event bus unavailable"})");
  EXPECT_THAT(inbound_->Log(), HasSubstr(R"(error="unroutable: exchange=)"));
}

TEST_F(HubTest, VisitIsPushedDeliveredAndConfirmedThroughTheDemoPartner) {
  // As ./run.sh runs it: the partner signs its callbacks, the route takes only signed ones.
  NewSecretInEnvironment("ESS_TEST_DEMO_WEBHOOK_SECRETS");
  webhook_auth_ = "{secrets_env: ESS_TEST_DEMO_WEBHOOK_SECRETS}";
  int partner_port = testing::FreePort();
  partner_proc_ = std::make_unique<Process>(
      std::vector<std::string>{BinaryPath("demo_partner"), "--listen",
                               absl::StrCat("127.0.0.1:", partner_port), "--callback_url",
                               Url("/webhook/prison"), "--callback_delay_ms", "10", "--secret_env",
                               "ESS_TEST_DEMO_WEBHOOK_SECRETS"},
      dir_.File("partner.log"));
  ASSERT_TRUE(WaitFor(
      [&] {
        auto r = http_.SendAndWait(
            {.method = "GET", .url = absl::StrCat("http://127.0.0.1:", partner_port, "/health")});
        return r.ok() && r->status == 200;
      },
      absl::Seconds(20)));
  StartHub(absl::StrCat("http://127.0.0.1:", partner_port));
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  Publish({{"VIS-77", VisitEvent("VIS-77")}});

  absl::StatusOr<amqp::Delivery> d;
  ASSERT_TRUE(WaitFor([&] { return (d = (*conn)->Get(sub)).ok(); }, absl::Seconds(30)))
      << partner_proc_->Log();
  EXPECT_EQ(d->message.body, R"({"type":"SlotConfirmed","id":"VIS-77","status":"confirmed"})");
  EXPECT_EQ(d->message.correlation_id, "VIS-77");
  EXPECT_EQ(d->message.message_id, "cb-VIS-77");  // the signed webhook-id
  // An unsigned call to the same route is refused.
  auto forged = PostWebhook(R"({"id":"VIS-77","status":"cancelled"})");
  ASSERT_TRUE(forged.ok());
  EXPECT_EQ(forged->status, 401);
  EXPECT_EQ((*conn)->Get(sub).status().code(), absl::StatusCode::kNotFound);

  // The subscriber can see the event just before the inbound lane's record is stored.
  ess::v1::GetResponse t;
  ASSERT_TRUE(WaitFor([&] { return (t = Trail("VIS-77")).trail().stage() == "confirmed"; },
                      absl::Seconds(10)));
  EXPECT_EQ(t.records_size(), 2);
  EXPECT_EQ(t.trail().stage(), "confirmed");
  EXPECT_TRUE(t.trail().has_pushed_at());
  EXPECT_TRUE(t.trail().has_delivered_at());
  EXPECT_TRUE(t.trail().has_confirmed_at());
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// A partner that follows the IETF Idempotency-Key draft answers 409 to a repeat of a key whose
// first request it is still processing. The first push times out on the lane's side (the
// partner takes 3 s, timeout_ms is 1 s); its retries get 409 until the partner has finished
// it, then the stored 201. The event ends DELIVERED, not parked: before, the first 409 parked
// it DEAD, and the partner then completed the first attempt all the same.
TEST_F(HubTest, A409ToARetryWhileThePartnerStillProcessesTheFirstIsRetriedNotParked) {
  absl::Mutex mu;
  enum class State { kNew, kProcessing, kDone };
  std::map<std::string, State> keys;   // guarded by mu
  std::vector<std::thread> finishing;  // guarded by mu
  auto join_finishing = [&] {
    std::vector<std::thread> threads;
    {
      absl::MutexLock lock(&mu);
      threads.swap(finishing);
    }
    for (std::thread& t : threads) t.join();
  };
  CapturePartner partner;
  // Joins the partner's late answers (a failed assertion included) while its server still runs.
  struct Joiner {
    std::function<void()> join;
    ~Joiner() { join(); }
  } joiner{join_finishing};
  partner.set_behaviour([&](const CapturePartner::Seen& seen, http::Responder r) {
    absl::MutexLock lock(&mu);
    State& state = keys[seen.idempotency_key];
    if (state == State::kNew) {
      state = State::kProcessing;
      finishing.emplace_back([&, key = seen.idempotency_key, r = std::move(r)]() mutable {
        absl::SleepFor(absl::Seconds(3));
        {
          absl::MutexLock done(&mu);
          keys[key] = State::kDone;
        }
        std::move(r).Send({.status = 201, .body = R"({"accepted":true})"});
      });
    } else if (state == State::kProcessing) {
      std::move(r).Send({.status = 409, .body = R"({"error":"request in progress"})"});
    } else {
      std::move(r).Send({.status = 201, .body = R"({"accepted":true})"});  // the stored answer
    }
  });
  std::string yaml = Config(partner.url());
  for (auto [from, to] :
       {std::pair<std::string, std::string>{"      timeout_ms: 3000\n", "      timeout_ms: 1000\n"},
        {"retry: {max_attempts: 2, initial_backoff_ms: 200, max_backoff_ms: 3000}",
         "retry: {max_attempts: 30, initial_backoff_ms: 200, max_backoff_ms: 1000}"}}) {
    ASSERT_NE(yaml.find(from), std::string::npos) << from;
    yaml.replace(yaml.find(from), from.size(), to);
  }
  dir_.Write("hub.yaml", yaml);
  ASSERT_NO_FATAL_FAILURE(StartReplay());
  outbound_ = std::make_unique<Process>(
      std::vector<std::string>{BinaryPath("outbound_svc"), "--config", dir_.File("hub.yaml")},
      dir_.File("outbound.log"));
  ASSERT_TRUE(outbound_->WaitForLog("outbound lane running")) << outbound_->Log();
  Publish({{"VIS-409", VisitEvent("VIS-409")}});
  const bool delivered = WaitFor(
      [&] { return Stats(ess::v1::DIRECTION_OUTBOUND).delivered() == 1; }, absl::Seconds(60));
  join_finishing();
  ASSERT_TRUE(delivered) << outbound_->Log();
  EXPECT_EQ(Stats(ess::v1::DIRECTION_OUTBOUND).dead(), 0u);
  EXPECT_EQ(DepthOrZero(queue_ + ".parked"), 0u);
  const std::vector<CapturePartner::Seen> seen = partner.seen();
  ASSERT_GE(seen.size(), 3u);  // the first, at least one 409, the stored 201
  for (const auto& s : seen) EXPECT_EQ(s.idempotency_key, "VIS-409");
  EXPECT_THAT(outbound_->Log(),
              HasSubstr("HTTP 409 to a retry: the partner may still be processing an earlier "
                        "attempt with this Idempotency-Key"));
}

}  // namespace
}  // namespace ess
