// Ops replay end to end: events a partner refused are parked and recorded DEAD; once the partner
// is back, `essctl replay` sends them through the real outbound lane again, and a webhook's event
// goes to the events exchange again. Real replay_svc, outbound_svc, inbound_svc, RabbitMQ and
// HTTP on loopback.
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/integration/hub_fixture.h"

namespace ess {
namespace {

using testing::CapturePartner;
using ::testing::HasSubstr;
using testing::WaitFor;

class OpsReplayTest : public HubTest {
 protected:
  testing::ToolRun Essctl(std::vector<std::string> args) {
    std::vector<std::string> argv = {testing::BinaryPath("essctl"), "--addr",
                                     absl::StrCat("127.0.0.1:", replay_port_)};
    argv.insert(argv.end(), args.begin(), args.end());
    return testing::RunTool(std::move(argv), dir_.File("essctl.log"));
  }

  // Outbound records of the partner in `status`, at most 1000.
  std::vector<ess::v1::MessageRecord> Records(ess::v1::MessageStatus status) {
    ess::v1::ListRequest req;
    req.set_partner("prison_calendar");
    req.set_direction(ess::v1::DIRECTION_OUTBOUND);
    req.set_status(status);
    req.set_page_size(1000);
    ess::v1::ListResponse resp;
    EXPECT_TRUE(stub_->List(Call().get(), req, &resp).ok());
    return {resp.records().begin(), resp.records().end()};
  }
};

TEST_F(OpsReplayTest, ParkedEventsAreReplayedToThePartnerOnceItIsBack) {
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string audit = testing::BindSubscriber(**conn, exchange_ + ".audit");
  CapturePartner partner;
  partner.set_status(422);  // refused: parked at once, recorded DEAD
  StartHub(partner.url());
  constexpr int kEvents = 25;
  std::vector<std::pair<std::string, std::string>> events;
  std::set<std::string> ids;
  for (int i = 0; i < kEvents; ++i) {
    std::string id = absl::StrCat("RP-", i);
    events.emplace_back(id, VisitEvent(id));
    ids.insert(id);
  }
  auto rfc3339 = [](absl::Time t) {
    return absl::FormatTime(absl::RFC3339_full, t, absl::UTCTimeZone());
  };
  const std::string outage_began = rfc3339(absl::Now());
  Publish(events);
  ASSERT_TRUE(WaitFor([&] { return Records(ess::v1::MESSAGE_STATUS_DEAD).size() == kEvents; },
                      absl::Seconds(30)));
  const std::string outage_ended = rfc3339(absl::Now());
  // 30 s, as for the records: beside bench_smoke_test on two cores, 10 s once ran out.
  ASSERT_TRUE(
      WaitFor([&] { return DepthOrZero(queue_ + ".parked") == kEvents; }, absl::Seconds(30)))
      << DepthOrZero(queue_ + ".parked") << " parked";
  EXPECT_EQ(partner.count(), static_cast<size_t>(kEvents));

  // Replayed while the partner still refuses, they are parked again, and --wait says so.
  testing::ToolRun early =
      Essctl({"replay", "--partner", "prison_calendar", "--status", "dead", "--reason", "too early",
              "--requested_by", "early@ops", "--wait", "30s"});
  EXPECT_EQ(early.exit_code, 1) << early.output;
  EXPECT_THAT(early.output, HasSubstr("replayed 25, skipped 0, failed 0"));
  EXPECT_THAT(early.output, HasSubstr("(then: delivered 0, parked again 25, still pending 0)"));
  EXPECT_EQ(partner.count(), static_cast<size_t>(2 * kEvents));
  partner.set_status(201);

  // A dry run says what it would do, and does nothing.
  testing::ToolRun dry = Essctl({"replay", "--partner", "prison_calendar", "--direction",
                                 "outbound", "--status", "dead", "--dry_run"});
  EXPECT_EQ(dry.exit_code, 0) << dry.output;
  EXPECT_THAT(dry.output, HasSubstr("dry run, nothing published: would replay 25, skipped 0"));
  EXPECT_THAT(dry.output, HasSubstr("queue " + queue_));
  EXPECT_EQ(Records(ess::v1::MESSAGE_STATUS_DEAD).size(), static_cast<size_t>(kEvents));

  // By their last change, the outage's window no longer finds them: the early replay moved it.
  // By when they entered the hub, it finds all of them.
  testing::ToolRun by_change = Essctl({"replay", "--partner", "prison_calendar", "--since",
                                       outage_began, "--until", outage_ended, "--dry_run"});
  EXPECT_EQ(by_change.exit_code, 0) << by_change.output;
  EXPECT_THAT(by_change.output, HasSubstr("would replay 0, skipped 0"));

  // A real replay needs a reason, for the audit trail.
  testing::ToolRun unreasoned =
      Essctl({"replay", "--partner", "prison_calendar", "--status", "dead"});
  EXPECT_EQ(unreasoned.exit_code, 2) << unreasoned.output;
  EXPECT_THAT(unreasoned.output, HasSubstr("replay needs --reason"));

  testing::ToolRun run =
      Essctl({"replay", "--partner", "prison_calendar", "--direction", "outbound", "--status",
              "dead", "--received_since", outage_began, "--received_until", outage_ended,
              "--reason", "partner refused while its calendar was locked", "--requested_by",
              "alice@ops", "--wait", "30s"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("replayed 25, skipped 0, failed 0"));
  // The lane pushed each one again, the partner accepted, the store says DELIVERED.
  EXPECT_THAT(run.output, HasSubstr("(then: delivered 25, parked again 0, still pending 0)"));
  EXPECT_EQ(Records(ess::v1::MESSAGE_STATUS_DELIVERED).size(), static_cast<size_t>(kEvents));
  std::vector<CapturePartner::Seen> seen = partner.seen();
  std::set<std::string> replayed;
  for (size_t i = 2 * kEvents; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].idempotency_key, seen[i].correlation);  // the same key as the first time
    replayed.insert(seen[i].correlation);
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(3 * kEvents));
  EXPECT_EQ(replayed, ids);
  EXPECT_TRUE(Records(ess::v1::MESSAGE_STATUS_DEAD).empty());
  // The parked copies stay where they were (the first 25, and 25 more from the early replay):
  // the store, not the broker, drives a replay.
  EXPECT_EQ(Depth(queue_ + ".parked"), static_cast<uint32_t>(2 * kEvents));

  // Each replay is audited with who asked and why.
  std::set<std::string> audited;
  ASSERT_TRUE(WaitFor(
      [&] {
        for (auto d = (*conn)->Get(audit); d.ok(); d = (*conn)->Get(audit)) {
          if (d->message.body.find(R"("replayedBy":"alice@ops")") == std::string::npos) continue;
          EXPECT_THAT(
              d->message.body,
              HasSubstr(R"("replayReason":"partner refused while its calendar was locked")"));
          EXPECT_THAT(d->message.body, HasSubstr(R"("status":"MESSAGE_STATUS_RECEIVED")"));
          EXPECT_THAT(d->message.message_id, HasSubstr(":MESSAGE_STATUS_RECEIVED:1:replay-"));
          audited.insert(d->message.correlation_id);
        }
        return audited.size() == kEvents;
      },
      absl::Seconds(10)));
  EXPECT_EQ(audited, ids);

  // Nothing is left to replay.
  testing::ToolRun again = Essctl(
      {"replay", "--partner", "prison_calendar", "--status", "dead", "--reason", "second pass"});
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("replayed 0, skipped 0, failed 0"));
  ASSERT_TRUE((*conn)->DeleteQueue(audit).ok());
}

TEST_F(OpsReplayTest, AWebhooksEventIsPublishedAgainAndUnknownIdsAreNamed) {
  CapturePartner partner;
  StartHub(partner.url());
  // The events exchange needs a subscriber for a webhook to be taken (mandatory publish).
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string early = testing::BindSubscriber(**conn, exchange_);
  auto r = PostWebhook(R"({"id":"VIS-9","status":"confirmed"})");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->status, 200) << r->body;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto t = Trail("VIS-9");
        return t.records_size() == 1 && t.records(0).status() == ess::v1::MESSAGE_STATUS_PUBLISHED;
      },
      absl::Seconds(10)));
  const std::string message_id = Trail("VIS-9").records(0).message_id();

  // A subscriber that joined after the event was published gets it by replay.
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  testing::ToolRun run = Essctl({"replay", "--direction", "inbound", "--partner", "prison_calendar",
                                 "--message_id", absl::StrCat(message_id, ",no-such-id"),
                                 "--reason", "billing missed it", "--requested_by", "bob"});
  EXPECT_EQ(run.exit_code, 1) << run.output;  // one of the two ids has no record
  EXPECT_THAT(run.output, HasSubstr("replayed 1, skipped 1, failed 0"));
  EXPECT_THAT(run.output, HasSubstr("no such record"));
  EXPECT_THAT(run.output, HasSubstr("exchange " + exchange_));

  auto d = (*conn)->Get(sub);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->message.body, R"({"type":"SlotConfirmed","id":"VIS-9","status":"confirmed"})");
  EXPECT_EQ(d->message.correlation_id, "VIS-9");
  EXPECT_EQ(d->message.message_id, message_id);
  EXPECT_EQ(d->message.type, "SlotConfirmed");
  std::vector<std::pair<std::string, std::string>> headers(d->message.headers.begin(),
                                                           d->message.headers.end());
  EXPECT_THAT(headers,
              ::testing::Contains(std::make_pair(std::string("x-ess-replay"), std::string("bob"))));
  EXPECT_THAT(headers, ::testing::Contains(std::make_pair(std::string("x-ess-partner"),
                                                          std::string("prison_calendar"))));
  EXPECT_EQ((*conn)->Get(sub).status().code(), absl::StatusCode::kNotFound);  // once
  EXPECT_EQ(Depth(early), 2u);  // the event, and its replay
  auto t = Trail("VIS-9");
  ASSERT_EQ(t.records_size(), 1);
  EXPECT_EQ(t.records(0).status(), ess::v1::MESSAGE_STATUS_PUBLISHED);
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
  ASSERT_TRUE((*conn)->DeleteQueue(early).ok());
}

// A replay by key takes no filter flag: it would have been ignored, and the key replayed
// whatever its status (a delivered visit pushed again). Refused before any call.
TEST_F(OpsReplayTest, MessageIdsTakeNoFilterFlagAndListTakesNoMessageId) {
  const std::vector<std::string> by_key = {"replay", "--direction",  "outbound", "--partner",
                                           "prison", "--message_id", "m-1",      "--dry_run"};
  const std::vector<std::vector<std::string>> filters = {
      {"--status", "dead"},
      {"--event_type", "VisitScheduleUpdated"},
      {"--since", "2030-01-01T00:00:00Z"},
      {"--until", "2030-01-01T00:00:00Z"},
      {"--received_since", "2030-01-01T00:00:00Z"},
      {"--received_until", "2030-01-01T00:00:00Z"},
      {"--unconfirmed"},
      {"--correlation", "VIS-1"}};
  for (const std::vector<std::string>& filter : filters) {
    std::vector<std::string> args = by_key;
    args.insert(args.end(), filter.begin(), filter.end());
    testing::ToolRun run = Essctl(args);
    EXPECT_EQ(run.exit_code, 2) << filter[0] << ": " << run.output;
    EXPECT_THAT(run.output, HasSubstr("replay --message_id selects records by key only; it "
                                      "cannot be combined with " +
                                      filter[0]));
  }
  testing::ToolRun several =
      Essctl({"replay", "--direction", "outbound", "--partner", "prison", "--message_id", "m-1",
              "--status", "dead", "--received_since", "2030-01-01T00:00:00Z", "--dry_run"});
  EXPECT_EQ(several.exit_code, 2) << several.output;
  EXPECT_THAT(several.output, HasSubstr("combined with --status, --received_since ("));

  testing::ToolRun list = Essctl({"list", "--message_id", "m-1"});
  EXPECT_EQ(list.exit_code, 2) << list.output;
  EXPECT_THAT(list.output, HasSubstr("list does not take --message_id"));
}

TEST_F(OpsReplayTest, WithCallersConfiguredEachMayDoOnlyItsRole) {
  setenv("ESS_TEST_REPLAY_LANE_TOKEN", "lane-0123456789abcdef0123", 1);
  setenv("ESS_TEST_REPLAY_OPS_TOKEN", "ops-0123456789abcdef0123", 1);
  setenv("ESS_TEST_REPLAY_VIEWER_TOKEN", "viewer-0123456789abcdef0123", 1);
  replay_extra_ = R"(  token_env: ESS_TEST_REPLAY_LANE_TOKEN
  auth:
    callers:
      - {name: lanes, role: lane, token_env: ESS_TEST_REPLAY_LANE_TOKEN}
      - {name: oncall, role: ops, token_env: ESS_TEST_REPLAY_OPS_TOKEN}
      - {name: dashboard, role: viewer, token_env: ESS_TEST_REPLAY_VIEWER_TOKEN})";
  replay_token_ = "viewer-0123456789abcdef0123";
  CapturePartner partner;
  partner.set_status(422);
  StartHub(partner.url());  // the lanes present their token, or they would not start
  Publish({{"AUTH-1", VisitEvent("AUTH-1")}});
  ASSERT_TRUE(WaitFor([&] { return DepthOrZero(queue_ + ".parked") == 1; }, absl::Seconds(30)));
  partner.set_status(201);

  const std::vector<std::string> replay = {"replay",    "--partner",      "prison_calendar",
                                           "--status",  "dead",           "--reason",
                                           "auth test", "--requested_by", "carol"};
  testing::ToolRun anonymous = Essctl(replay);
  EXPECT_EQ(anonymous.exit_code, 1) << anonymous.output;
  EXPECT_THAT(anonymous.output, HasSubstr("UNAUTHENTICATED"));
  std::vector<std::string> as_viewer = {"--token_env", "ESS_TEST_REPLAY_VIEWER_TOKEN"};
  as_viewer.insert(as_viewer.end(), replay.begin(), replay.end());
  testing::ToolRun viewer = Essctl(as_viewer);
  EXPECT_EQ(viewer.exit_code, 1) << viewer.output;
  EXPECT_THAT(viewer.output,
              HasSubstr("PERMISSION_DENIED: caller dashboard (role viewer) may not call Replay"));
  testing::ToolRun listed = Essctl(
      {"--token_env", "ESS_TEST_REPLAY_VIEWER_TOKEN", "list", "--partner", "prison_calendar"});
  EXPECT_EQ(listed.exit_code, 0) << listed.output;
  EXPECT_THAT(listed.output, HasSubstr("AUTH-1"));
  EXPECT_EQ(partner.count(), 1u);  // refused calls replayed nothing

  std::vector<std::string> as_ops = {"--token_env", "ESS_TEST_REPLAY_OPS_TOKEN"};
  as_ops.insert(as_ops.end(), replay.begin(), replay.end());
  testing::ToolRun ops = Essctl(as_ops);
  EXPECT_EQ(ops.exit_code, 0) << ops.output;
  EXPECT_THAT(ops.output, HasSubstr("replayed 1, skipped 0, failed 0"));
  ASSERT_TRUE(WaitFor([&] { return Records(ess::v1::MESSAGE_STATUS_DELIVERED).size() == 1; },
                      absl::Seconds(20)));
  EXPECT_EQ(partner.count(), 2u);
  // The log names the authenticated caller with the name it gave.
  EXPECT_THAT(replay_->Log(), HasSubstr("by=\"oncall (carol)\""));

  // A lane with a token that is nobody's stops at start, saying why.
  setenv("ESS_TEST_REPLAY_LANE_TOKEN", "stolen-0123456789abcdef", 1);
  testing::ToolRun stranger =
      testing::RunTool({testing::BinaryPath("outbound_svc"), "--config", dir_.File("hub.yaml")},
                       dir_.File("stranger.log"), absl::Seconds(30));
  EXPECT_EQ(stranger.exit_code, 2) << stranger.output;
  EXPECT_THAT(stranger.output,
              HasSubstr("the replay store refuses outbound_svc: the bearer token is nobody's"));
  // So does a lane given a viewer's token, which may read the store but not record into it
  // (it started, then pushed every event again and again, each record refused).
  setenv("ESS_TEST_REPLAY_LANE_TOKEN", "viewer-0123456789abcdef0123", 1);
  for (const char* lane : {"outbound_svc", "inbound_svc"}) {
    testing::ToolRun as_viewer_lane =
        testing::RunTool({testing::BinaryPath(lane), "--config", dir_.File("hub.yaml")},
                         dir_.File(absl::StrCat(lane, "-viewer.log")), absl::Seconds(30));
    EXPECT_EQ(as_viewer_lane.exit_code, 2) << as_viewer_lane.output;
    EXPECT_THAT(as_viewer_lane.output,
                HasSubstr(absl::StrCat("the replay store refuses ", lane,
                                       ": caller dashboard (role viewer) may not call Record")));
  }
  EXPECT_EQ(partner.count(), 2u);
}

// The lanes' token revoked while they run: replay_svc restarted (same database, same port) with
// that token only a viewer's, then restarted again with it a lane's. Meanwhile each record the
// outbound lane makes is refused (PERMISSION_DENIED): it requeues the event, stops consuming and
// probes the store (an empty Record) until the store takes its records again; nothing is acked
// without its record, nothing reaches the partner in a loop. The inbound lane's claims are
// refused too: 503, nothing published. Once allowed again, everything goes through once. The
// one event in flight when the refusals began (pushed, then its DELIVERED record refused) is
// pushed again then: the store has no record of it, so the lane cannot know the partner has it
// (at least once, same Idempotency-Key).
TEST_F(OpsReplayTest, ALaneWhoseTokenIsRevokedWhileItRunsHoldsItsEventsUntilItIsAllowedAgain) {
  setenv("ESS_TEST_REPLAY_LANE_TOKEN", "lane-0123456789abcdef0123", 1);
  setenv("ESS_TEST_REPLAY_VIEWER_TOKEN", "viewer-0123456789abcdef0123", 1);
  replay_extra_ = R"(  token_env: ESS_TEST_REPLAY_LANE_TOKEN
  auth:
    callers:
      - {name: lanes, role: lane, token_env: ESS_TEST_REPLAY_LANE_TOKEN}
      - {name: dashboard, role: viewer, token_env: ESS_TEST_REPLAY_VIEWER_TOKEN})";
  replay_token_ = "viewer-0123456789abcdef0123";  // the test's own calls only read
  const int metrics_port = testing::FreePort();
  outbound_extra_ = absl::StrCat("  metrics_listen: 127.0.0.1:", metrics_port);
  CapturePartner partner;
  StartHub(partner.url());
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok()) << conn.status();
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  auto store_paused = [&] {
    auto r = http_.SendAndWait({.method = "GET",
                                .url = absl::StrCat("http://127.0.0.1:", metrics_port, "/metrics"),
                                .timeout = absl::Seconds(2)});
    if (!r.ok()) return std::string("unreachable");
    for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
      if (absl::ConsumePrefix(&line, "ess_outbound_store_paused ")) return std::string(line);
    }
    return std::string("absent");
  };
  auto pushes_of = [&](const std::string& id) {
    size_t n = 0;
    for (const CapturePartner::Seen& seen : partner.seen()) n += seen.correlation == id;
    return n;
  };
  // Restarts the store (SIGTERM, exit 0) on the same database and port with `config`.
  auto restart_store = [&](const std::string& config, const std::string& log) {
    stub_.reset();  // an idle client would hold the graceful shutdown
    ASSERT_EQ(replay_->Stop(), 0) << replay_->Log();
    replay_ = std::make_unique<testing::Process>(
        std::vector<std::string>{testing::BinaryPath("replay_svc"), "--config", dir_.File(config)},
        dir_.File(log));
    stub_ = MakeReplayStub(absl::StrCat("127.0.0.1:", replay_port_), replay_tls_);
    ASSERT_TRUE(testing::WaitForReplay(*stub_, absl::Seconds(20))) << replay_->Log();
  };

  // Running, allowed: one event through, recorded.
  Publish({{"REV-WARM", VisitEvent("REV-WARM")}}, /*declare=*/false);
  ASSERT_TRUE(WaitFor([&] { return Records(ess::v1::MESSAGE_STATUS_DELIVERED).size() == 1; },
                      absl::Seconds(30)))
      << outbound_->Log();
  EXPECT_EQ(store_paused(), "0");

  // Revoked: the lanes' token is only a viewer's now.
  const std::string allowed = Config(partner.url());
  const std::string revoked =
      absl::StrReplaceAll(allowed, {{"{name: lanes, role: lane,", "{name: lanes, role: viewer,"}});
  ASSERT_NE(revoked, allowed);
  dir_.Write("revoked.yaml", revoked);
  ASSERT_NO_FATAL_FAILURE(restart_store("revoked.yaml", "replay-revoked.log"));
  // One event alone: pushed, its record refused, back on its queue, and the lane paused.
  Publish({{"REV-0", VisitEvent("REV-0")}}, /*declare=*/false);
  ASSERT_TRUE(
      WaitFor([&] { return store_paused() == "1" && Depth(queue_) == 1; }, absl::Seconds(30)))
      << store_paused() << " paused, " << Depth(queue_) << " queued\n"
      << outbound_->Log();
  EXPECT_THAT(outbound_->Log(), HasSubstr("replay store did not take the record; requeued"));
  EXPECT_THAT(outbound_->Log(), HasSubstr("caller lanes (role viewer) may not call Record"));
  EXPECT_THAT(outbound_->Log(),
              HasSubstr("replay store does not take the lane's records: consumption paused"));
  EXPECT_EQ(pushes_of("REV-0"), 1u);
  // Events published while the lane is paused stay on the queue, unconsumed, however many
  // probes the store refuses (one each 500 ms; a few seconds' worth).
  constexpr int kHeld = 10;
  std::vector<std::pair<std::string, std::string>> held;
  for (int i = 1; i <= kHeld; ++i) {
    const std::string id = absl::StrCat("REV-", i);
    held.emplace_back(id, VisitEvent(id));
  }
  Publish(held, /*declare=*/false);
  ASSERT_TRUE(WaitFor([&] { return Depth(queue_) == kHeld + 1; }, absl::Seconds(30)));
  absl::SleepFor(absl::Seconds(3));
  EXPECT_EQ(Depth(queue_), static_cast<uint32_t>(kHeld + 1));  // not one acked
  EXPECT_EQ(store_paused(), "1");
  EXPECT_EQ(partner.count(), 2u) << "REV-WARM and REV-0, once each";
  EXPECT_EQ(pushes_of("REV-0"), 1u);
  EXPECT_EQ(Records(ess::v1::MESSAGE_STATUS_DELIVERED).size(), 1u);
  // A webhook meanwhile: its claim is refused, 503, nothing published.
  auto webhook = PostWebhook(R"({"id":"REV-W","status":"confirmed"})");
  ASSERT_TRUE(webhook.ok()) << webhook.status();
  EXPECT_EQ(webhook->status, 503);
  EXPECT_EQ(webhook->body, R"({"error":"replay store unavailable"})");
  EXPECT_THAT(inbound_->Log(), HasSubstr("caller lanes (role viewer) may not call Claim"));
  ASSERT_TRUE(WaitFor(
      [&] {
        auto r = http_.SendAndWait(
            {.method = "GET", .url = Url("/readyz"), .timeout = absl::Seconds(2)});
        return r.ok() && r->body == R"({"ready":false,"store":"refuses the lane's token"})";
      },
      absl::Seconds(20)));
  EXPECT_EQ((*conn)->Get(sub).status().code(), absl::StatusCode::kNotFound);
  {
    ess::v1::GetRequest get;
    get.set_correlation_id("REV-W");
    ess::v1::GetResponse got;
    const grpc::Status found = stub_->Get(Call().get(), get, &got);
    EXPECT_EQ(found.error_code(), grpc::StatusCode::NOT_FOUND)
        << found.error_message();  // no claim
  }

  // Allowed again: the lane resumes by itself; every event delivered once, recorded, acked.
  ASSERT_NO_FATAL_FAILURE(restart_store("hub.yaml", "replay-allowed.log"));
  ASSERT_TRUE(WaitFor(
      [&] {
        return Records(ess::v1::MESSAGE_STATUS_DELIVERED).size() == kHeld + 2 &&
               Depth(queue_) == 0 && store_paused() == "0";
      },
      absl::Seconds(30)))
      << Records(ess::v1::MESSAGE_STATUS_DELIVERED).size() << " delivered, " << Depth(queue_)
      << " queued, paused " << store_paused() << "\n"
      << outbound_->Log();
  EXPECT_THAT(outbound_->Log(), HasSubstr("replay store answers again: consumption resumed"));
  EXPECT_EQ(pushes_of("REV-WARM"), 1u);
  EXPECT_EQ(pushes_of("REV-0"), 2u);  // in flight when the refusals began: see above
  for (const auto& [id, body] : held) EXPECT_EQ(pushes_of(id), 1u) << id;
  EXPECT_EQ(partner.count(), static_cast<size_t>(kHeld + 3));
  EXPECT_EQ(Depth(queue_ + ".parked"), 0u);
  // The partner's retry of the webhook is published, once.
  webhook = PostWebhook(R"({"id":"REV-W","status":"confirmed"})");
  ASSERT_TRUE(webhook.ok()) << webhook.status();
  EXPECT_EQ(webhook->status, 200) << webhook->body;
  auto published = (*conn)->Get(sub);
  ASSERT_TRUE(published.ok()) << published.status();
  EXPECT_EQ(published->message.correlation_id, "REV-W");
  EXPECT_EQ((*conn)->Get(sub).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// A CA, a certificate for 127.0.0.1 and a client certificate, both signed by it, made with the
// openssl command in `dir` (ca.pem; server.pem, server.key; client.pem, client.key). Test keys
// are made at test time, never committed.
void MakeCertificates(const testing::TempDir& dir) {
  dir.Write("san.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  const std::vector<std::vector<std::string>> steps = {
      {"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
       dir.File("ca.key"), "-out", dir.File("ca.pem"), "-days", "1", "-subj", "/CN=ess-test-ca"},
      {"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
       dir.File("server.key"), "-out", dir.File("server.csr"), "-subj", "/CN=127.0.0.1"},
      {"x509", "-req", "-in", dir.File("server.csr"), "-CA", dir.File("ca.pem"), "-CAkey",
       dir.File("ca.key"), "-CAcreateserial", "-out", dir.File("server.pem"), "-days", "1",
       "-extfile", dir.File("san.ext")},
      {"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
       dir.File("client.key"), "-out", dir.File("client.csr"), "-subj", "/CN=ess-lanes"},
      {"x509", "-req", "-in", dir.File("client.csr"), "-CA", dir.File("ca.pem"), "-CAkey",
       dir.File("ca.key"), "-CAcreateserial", "-out", dir.File("client.pem"), "-days", "1"},
  };
  for (const std::vector<std::string>& step : steps) {
    std::vector<std::string> argv = {"/usr/bin/openssl"};
    argv.insert(argv.end(), step.begin(), step.end());
    testing::ToolRun run = testing::RunTool(argv, dir.File("openssl.log"));
    ASSERT_EQ(run.exit_code, 0) << run.output;
  }
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST_F(OpsReplayTest, OverMutualTlsOnlyCallersWithACertificateReachTheStore) {
  ASSERT_NO_FATAL_FAILURE(MakeCertificates(dir_));
  replay_extra_ = R"(  tls:
    cert_file: server.pem
    key_file: server.key
    ca_file: ca.pem
    client_ca_file: ca.pem
    client_cert_file: client.pem
    client_key_file: client.key)";
  replay_tls_ = {.ca_pem = ReadText(dir_.File("ca.pem")),
                 .cert_pem = ReadText(dir_.File("client.pem")),
                 .key_pem = ReadText(dir_.File("client.key"))};
  CapturePartner partner;
  StartHub(partner.url());
  EXPECT_THAT(replay_->Log(), HasSubstr("tls=mutual"));
  Publish({{"TLS-1", VisitEvent("TLS-1")}});
  ASSERT_TRUE(WaitFor([&] { return Records(ess::v1::MESSAGE_STATUS_DELIVERED).size() == 1; },
                      absl::Seconds(30)));  // the lane recorded it over mutual TLS

  testing::ToolRun listed =
      Essctl({"--tls_ca_file", dir_.File("ca.pem"), "--tls_cert_file", dir_.File("client.pem"),
              "--tls_key_file", dir_.File("client.key"), "list"});
  EXPECT_EQ(listed.exit_code, 0) << listed.output;
  EXPECT_THAT(listed.output, HasSubstr("TLS-1"));
  // Without a client certificate, and without TLS at all, nothing gets through.
  testing::ToolRun anonymous =
      Essctl({"--timeout", "3s", "--tls_ca_file", dir_.File("ca.pem"), "list"});
  EXPECT_EQ(anonymous.exit_code, 1) << anonymous.output;
  EXPECT_THAT(anonymous.output, HasSubstr("UNAVAILABLE"));
  testing::ToolRun plaintext = Essctl({"--timeout", "3s", "list"});
  EXPECT_EQ(plaintext.exit_code, 1) << plaintext.output;
  EXPECT_THAT(plaintext.output, HasSubstr("UNAVAILABLE"));
  // A client certificate without a CA would have been a plaintext call carrying the token.
  testing::ToolRun no_ca = Essctl({"--tls_cert_file", dir_.File("client.pem"), "--tls_key_file",
                                   dir_.File("client.key"), "list"});
  EXPECT_EQ(no_ca.exit_code, 2) << no_ca.output;
  EXPECT_THAT(no_ca.output, HasSubstr("--tls_cert_file needs --tls_ca_file"));
  testing::ToolRun no_file = Essctl({"--tls_ca_file", dir_.File("missing.pem"), "list"});
  EXPECT_EQ(no_file.exit_code, 2) << no_file.output;
  EXPECT_THAT(no_file.output, HasSubstr("--tls_ca_file: cannot read " + dir_.File("missing.pem")));
}

}  // namespace
}  // namespace ess
