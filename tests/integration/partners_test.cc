// Several partners of different kinds in one hub, configured only: two REST partners with
// different mappings side by side, and a SOAP partner whose synchronous answer confirms the
// visit without any webhook. Real binaries, broker and HTTP.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/amqp.h"
#include "common/replay_client.h"
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

constexpr char kSoapAnswer[] = R"(<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body>
    <m:BookVisitResponse xmlns:m="urn:medical">
      <m:Status>confirmed</m:Status>
      <m:Room>B-12</m:Room>
    </m:BookVisitResponse>
  </soap:Body>
</soap:Envelope>)";

// The medical partner's request (the visit's id alone) and the mapping of its answer.
constexpr char kBookVisitById[] =
    R"yaml(      body_template: "<m:BookVisit xmlns:m=\"urn:medical\"><m:Id>{id}</m:Id></m:BookVisit>"
      namespaces: {m: "urn:medical"}
      response_mapping:
        - {target: type, constant: SlotConfirmed}
        - {target: status, xpath: "string(//m:BookVisitResponse/m:Status)"}
)yaml";

// A partner that answers every request with kSoapAnswer.
void AnswerBooked(const CapturePartner::Seen&, http::Responder r) {
  std::move(r).Send(
      {.status = 200, .content_type = "text/xml; charset=utf-8", .body = kSoapAnswer});
}

class PartnersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker_ = testing::BrokerOptions();
    exchange_ = testing::UniqueName("events");
    replay_port_ = testing::FreePort();
  }
  void TearDown() override {
    if (outbound_) {
      EXPECT_EQ(outbound_->Stop(), 0) << outbound_->Log();
    }
    stub_.reset();
    if (replay_) {
      EXPECT_EQ(replay_->Stop(), 0) << replay_->Log();
    }
  }

  void Start(const std::string& partners_yaml) {
    dir_.Write("hub.yaml", absl::StrCat("bus: {port: ", broker_.port, ", events_exchange: ",
                                        exchange_, "}\nreplay: {listen: \"127.0.0.1:", replay_port_,
                                        "\", database_path: replay.db}\n"
                                        "logging: {level: info, pii_fields: [inmateId, inmate]}\n"
                                        "partners:\n",
                                        partners_yaml));
    replay_ = std::make_unique<Process>(
        std::vector<std::string>{BinaryPath("replay_svc"), "--config", dir_.File("hub.yaml")},
        dir_.File("replay.log"));
    stub_ = MakeReplayStub(absl::StrCat("127.0.0.1:", replay_port_));
    ASSERT_TRUE(testing::WaitForReplay(*stub_, absl::Seconds(20)));
    outbound_ = std::make_unique<Process>(
        std::vector<std::string>{BinaryPath("outbound_svc"), "--config", dir_.File("hub.yaml")},
        dir_.File("outbound.log"));
    ASSERT_TRUE(outbound_->WaitForLog("outbound lane running")) << outbound_->Log();
  }

  // The SOAP partner "medical" at `url`, consuming `queue`: `settings` are its settings' lines
  // after the endpoint, `route` its outbound route's lines after the queue.
  void StartMedical(const std::string& url, const std::string& queue, const std::string& settings,
                    const std::string& route) {
    Start(absl::StrCat("\n  - name: medical\n    adapter: soap\n    settings:\n      endpoint: \"",
                       url, "/soap/Visits\"\n", settings, "    outbound:\n      queue: ", queue,
                       "\n", route));
  }

  // The value of header `name` of a message, or empty.
  static std::string HeaderOf(const amqp::Message& m, std::string_view name) {
    for (const auto& [k, v] : m.headers) {
      if (k == name) return v;
    }
    return "";
  }

  // With `message_id` empty, the event's id is its message id too.
  void Publish(const std::string& queue, const std::string& id, const std::string& body,
               const std::string& message_id = "") {
    auto conn = amqp::Connection::Open(broker_);
    ASSERT_TRUE(conn.ok());
    ASSERT_TRUE((*conn)
                    ->Publish("", queue,
                              {.body = body,
                               .correlation_id = id,
                               .message_id = message_id.empty() ? id : message_id})
                    .ok());
  }

  // Waits up to `timeout` for the trail of `cid` to hold its one record, DEAD, into `t`.
  void OneDeadRecord(const std::string& cid, ess::v1::GetResponse* t,
                     absl::Duration timeout = absl::Seconds(10)) {
    ASSERT_TRUE(WaitFor(
        [&] {
          *t = Trail(cid);
          return t->records_size() == 1 && t->records(0).status() == ess::v1::MESSAGE_STATUS_DEAD;
        },
        timeout))
        << t->DebugString();
  }

  ess::v1::GetResponse Trail(const std::string& cid) {
    grpc::ClientContext ctx;
    ess::v1::GetRequest req;
    req.set_correlation_id(cid);
    ess::v1::GetResponse resp;
    stub_->Get(&ctx, req, &resp);
    return resp;
  }

  amqp::ConnectionOptions broker_;
  std::string exchange_;
  int replay_port_ = 0;
  testing::TempDir dir_;
  std::unique_ptr<ess::v1::ReplayService::Stub> stub_;
  std::unique_ptr<Process> replay_, outbound_;
};

TEST_F(PartnersTest, TwoRestPartnersWithDifferentMappingsSideBySide) {
  CapturePartner calendar, probation;
  const std::string qa = testing::UniqueName("calendar"), qb = testing::UniqueName("probation");
  Start(absl::StrCat(R"(
  - name: calendar
    adapter: rest
    settings: {base_url: ")",
                     calendar.url(), R"(", path: /api/slots}
    outbound:
      queue: )",
                     qa, R"(
      mapping: [{target: id, source: id}, {target: inmate, source: inmateId}, {target: slot, source: slotUtc}]
  - name: probation
    adapter: rest
    settings: {base_url: ")",
                     probation.url(), R"(", path: "/v2/visits/{ref}", method: PUT}
    outbound:
      queue: )",
                     qb, R"(
      mapping:
        - {target: ref, source: id, letter_case: lower}
        - {target: offender, source: inmateId, width: 8, pad: "0", align_right: true}
        - {target: when, source: slotUtc, timestamp_format: "%d/%m/%Y %H:%M"}
        - {target: source, constant: ess}
)"));
  const std::string event =
      R"({"type":"VisitScheduleUpdated","id":"VIS-77","inmateId":"A123","slotUtc":"2026-12-01T15:00:00Z"})";
  // The same event on both partners' queues.
  Publish(qa, "VIS-77", event);
  Publish(qb, "VIS-77", event);
  ASSERT_TRUE(
      WaitFor([&] { return calendar.count() == 1 && probation.count() == 1; }, absl::Seconds(20)));
  EXPECT_EQ(calendar.seen()[0].path, "/api/slots");
  EXPECT_EQ(calendar.seen()[0].body,
            R"({"id":"VIS-77","inmate":"A123","slot":"2026-12-01T15:00:00Z"})");
  EXPECT_EQ(probation.seen()[0].path, "/v2/visits/vis-77");
  EXPECT_EQ(probation.seen()[0].body,
            R"({"ref":"vis-77","offender":"0000A123","when":"01/12/2026 15:00","source":"ess"})");
  EXPECT_EQ(probation.seen()[0].idempotency_key, "VIS-77");
  ASSERT_TRUE(WaitFor([&] { return Trail("VIS-77").records_size() == 2; }, absl::Seconds(10)));
}

TEST_F(PartnersTest, SoapAnswerConfirmsTheVisitWithoutAWebhook) {
  CapturePartner medical;
  medical.set_behaviour(AnswerBooked);
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  const std::string queue = testing::UniqueName("medical");
  Start(absl::StrCat(R"yaml(
  - name: medical
    adapter: soap
    settings:
      endpoint: ")yaml",
                     medical.url(), R"yaml(/soap/Visits"
      soap_action: "urn:medical/BookVisit"
      body_template: "<m:BookVisit xmlns:m=\"urn:medical\"><m:Id>{id}</m:Id><m:Patient>{inmate}</m:Patient></m:BookVisit>"
      namespaces: {m: "urn:medical"}
      response_mapping:
        - {target: type, constant: SlotConfirmed}
        - {target: status, xpath: "string(//m:BookVisitResponse/m:Status)"}
        - {target: room, xpath: "string(//m:BookVisitResponse/m:Room)"}
    outbound:
      queue: )yaml",
                     queue, R"yaml(
      mapping: [{target: id, source: id}, {target: inmate, source: inmateId}]
)yaml"));
  Publish(queue, "VIS-88",
          R"({"type":"VisitScheduleUpdated","id":"VIS-88","inmateId":"A&B<1>","slotUtc":"x"})");
  absl::StatusOr<amqp::Delivery> d;
  ASSERT_TRUE(WaitFor([&] { return (d = (*conn)->Get(sub)).ok(); }, absl::Seconds(20)))
      << outbound_->Log();
  EXPECT_EQ(d->message.body,
            R"({"id":"VIS-88","type":"SlotConfirmed","status":"confirmed","room":"B-12"})");
  EXPECT_EQ(d->message.correlation_id, "VIS-88");
  ASSERT_EQ(medical.count(), 1u);
  EXPECT_THAT(medical.seen()[0].body,
              HasSubstr("<m:Id>VIS-88</m:Id><m:Patient>A&amp;B&lt;1&gt;</m:Patient>"));
  EXPECT_THAT(medical.seen()[0].body, HasSubstr(">VIS-88</ess:CorrelationId>"));
  // The lane stores the confirmation (inbound, PUBLISHED) and the delivery (outbound,
  // DELIVERED) in two Record calls, which may land in different batches: the trail can read
  // "confirmed" a moment before the delivery's record is there.
  ess::v1::GetResponse t;
  ASSERT_TRUE(WaitFor(
      [&] {
        t = Trail("VIS-88");
        return t.trail().stage() == "confirmed" && t.records_size() == 2;
      },
      absl::Seconds(10)))
      << t.DebugString();
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// Two updates of one visit, each confirmed by the SOAP answer: each confirmation has its own
// message id (the delivery's, plus the event type), so both are on the bus under their own ids
// and both stay in the store; one from a message id near the 255-byte limit still fits.
TEST_F(PartnersTest, EachDeliverysConfirmationHasAMessageIdOfItsOwn) {
  CapturePartner medical;
  medical.set_behaviour(AnswerBooked);
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  const std::string sub = testing::BindSubscriber(**conn, exchange_);
  const std::string queue = testing::UniqueName("medical");
  StartMedical(medical.url(), queue, kBookVisitById, "      mapping: [{target: id, source: id}]\n");
  // 250 bytes of two-byte characters: with ":SlotConfirmed" the id would pass 255 bytes.
  std::string long_id;
  while (long_id.size() < 250) long_id += "\xc3\xa9";
  const std::vector<std::string> message_ids = {"VIS-91-update-1", "VIS-91-update-2", long_id};
  for (const std::string& mid : message_ids) {
    Publish(queue, "VIS-91", R"({"type":"VisitScheduleUpdated","id":"VIS-91"})", mid);
  }
  std::vector<std::string> seen;
  ASSERT_TRUE(WaitFor(
      [&] {
        if (auto d = (*conn)->Get(sub); d.ok()) seen.push_back(d->message.message_id);
        return seen.size() == message_ids.size();
      },
      absl::Seconds(20)))
      << outbound_->Log();
  EXPECT_EQ(seen[0], "VIS-91-update-1:SlotConfirmed");
  EXPECT_EQ(seen[1], "VIS-91-update-2:SlotConfirmed");
  EXPECT_LE(seen[2].size(), 255u);
  EXPECT_NE(seen[2], seen[0]);
  // Every delivery and every confirmation has its record: none overwrote another.
  ess::v1::GetResponse t;
  ASSERT_TRUE(WaitFor(
      [&] {
        t = Trail("VIS-91");
        return t.records_size() == 6;
      },
      absl::Seconds(10)))
      << t.DebugString();
  std::multiset<std::string> inbound;
  for (const auto& r : t.records()) {
    if (r.direction() == ess::v1::DIRECTION_INBOUND) inbound.insert(r.message_id());
  }
  EXPECT_EQ(inbound, std::multiset<std::string>(seen.begin(), seen.end()));
  ASSERT_TRUE((*conn)->DeleteQueue(sub).ok());
}

// A SOAP fault whose faultstring echoes the event's PII (the inmateId, a pii_fields member) is
// masked before it reaches the log, the store's record and the parked message's reason. The
// faultstring is long (about 9 KB of echoes): it is masked before it is cut, so no echo is left
// half visible at a cut. (Cut by the adapter at 2 KiB first, the last echo kept "B42".)
TEST_F(PartnersTest, ASoapFaultIsMaskedOfTheEventsPiiValues) {
  CapturePartner medical;
  // Its first 10 bytes put a 2 KiB cut of the text right after an echo's "B42".
  std::string echoes = "Lookup 1: Patient B4242 unknown";
  for (int i = 0; i < 400; ++i) echoes += "; Patient B4242 unknown";
  medical.set_behaviour([echoes](const CapturePartner::Seen&, http::Responder r) {
    std::move(r).Send({.status = 500,
                       .content_type = "text/xml; charset=utf-8",
                       .body = absl::StrCat(R"(<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body>
    <soap:Fault>
      <faultcode>soap:Client</faultcode>
      <faultstring>)",
                                            echoes, R"(</faultstring>
    </soap:Fault>
  </soap:Body>
</soap:Envelope>)")});
  });
  const std::string queue = testing::UniqueName("medical");
  StartMedical(
      medical.url(), queue,
      R"(      body_template: "<m:BookVisit xmlns:m=\"urn:medical\"><m:Id>{id}</m:Id><m:Patient>{inmate}</m:Patient></m:BookVisit>"
)",
      "      mapping: [{target: id, source: id}, {target: inmate, source: inmateId}]\n");
  Publish(queue, "VIS-92", R"({"type":"VisitScheduleUpdated","id":"VIS-92","inmateId":"B4242"})");
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  absl::StatusOr<amqp::Delivery> d;
  ASSERT_TRUE(
      WaitFor([&] { return (d = (*conn)->Get(queue + ".parked")).ok(); }, absl::Seconds(30)))
      << outbound_->Log();
  const std::string reason = HeaderOf(d->message, "x-ess-reason");
  EXPECT_THAT(reason, HasSubstr("Patient *** unknown"));
  EXPECT_THAT(reason, HasSubstr(" bytes more]"));  // cut
  EXPECT_THAT(reason, ::testing::Not(HasSubstr("B4")));
  ess::v1::GetResponse t;
  ASSERT_NO_FATAL_FAILURE(OneDeadRecord("VIS-92", &t));
  EXPECT_THAT(t.records(0).error(), HasSubstr("Patient *** unknown"));
  EXPECT_THAT(t.records(0).error(), HasSubstr(" bytes more]"));
  EXPECT_LE(t.records(0).error().size(), 4096u);
  EXPECT_THAT(t.records(0).error(), ::testing::Not(HasSubstr("B4")));
  EXPECT_THAT(outbound_->Log(), ::testing::Not(HasSubstr("B4")));
}

// How many lines of `log` hold both `a` and `b`.
size_t LinesWith(const std::string& log, const std::string& a, const std::string& b) {
  size_t n = 0;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    n += absl::StrContains(line, a) && absl::StrContains(line, b) ? 1 : 0;
  }
  return n;
}

// A partner's error text as long as the event (the URL of a push to a closed port, whose path
// holds a 140 KB field) went whole into x-ess-reason: the move did not fit the AMQP frame, the
// lane's publisher connection went down with it, the event was pushed again and again and never
// parked, and the other partner's moves in flight on that connection were lost or duplicated.
// Now x-ess-reason is cut, a move that would not fit is refused before anything is sent (the
// connection stays up), and each event is retried within its policy and parked once.
TEST_F(PartnersTest, ALongErrorTextNeitherLoopsItsEventNorDisturbsOtherPartners) {
  CapturePartner other;  // answers 503: retried, then parked
  other.set_status(503);
  const int closed_port = testing::FreePort();  // nothing listens there: connection refused
  const std::string qa = testing::UniqueName("notes"), qb = testing::UniqueName("other");
  Start(absl::StrCat(R"(
  - name: notes_big
    adapter: rest
    settings: {base_url: "http://127.0.0.1:)",
                     closed_port, R"(", path: "/api/visits/{id}/notes/{note}"}
    outbound:
      queue: )",
                     qa, R"(
      retry: {max_attempts: 3, initial_backoff_ms: 100, max_backoff_ms: 400}
      mapping: [{target: id, source: id}, {target: note, source: note}]
  - name: other
    adapter: rest
    settings: {base_url: ")",
                     other.url(), R"(", path: /api/slots}
    outbound:
      queue: )",
                     qb, R"(
      retry: {max_attempts: 3, initial_backoff_ms: 100, max_backoff_ms: 400}
      mapping: [{target: id, source: id}]
)"));
  Publish(qa, "VIS-BIG",
          absl::StrCat(R"({"type":"VisitNoteAdded","id":"VIS-BIG","note":")",
                       std::string(140'000, 'n'), R"("})"));
  Publish(qb, "VIS-OTHER", R"({"type":"VisitScheduleUpdated","id":"VIS-OTHER"})");

  // Each recorded DEAD once (not waited on with ASSERT: the counts below say what went wrong).
  ess::v1::GetResponse big, small;
  auto dead = [](const ess::v1::GetResponse& t) {
    return t.records_size() == 1 && t.records(0).status() == ess::v1::MESSAGE_STATUS_DEAD;
  };
  const bool settled = WaitFor(
      [&] {
        big = Trail("VIS-BIG");
        small = Trail("VIS-OTHER");
        return dead(big) && dead(small);
      },
      absl::Seconds(30));
  // Settled for good: nothing is pushed any more.
  absl::SleepFor(absl::Seconds(2));
  const std::string log = outbound_->Log();
  EXPECT_EQ(LinesWith(log, "push failed", "partner=notes_big"), 3u);
  EXPECT_EQ(other.count(), 3u);
  EXPECT_EQ(CountOccurrences(log, "move not published"), 0u);
  EXPECT_EQ(CountOccurrences(log, "amqp connection lost"), 0u);
  ASSERT_TRUE(settled) << "VIS-BIG: " << big.records_size() << " records, "
                       << (big.records_size() ? big.records(0).status() : 0)
                       << "; VIS-OTHER: " << small.records_size() << " records, "
                       << (small.records_size() ? small.records(0).status() : 0);

  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  for (const std::string& q : {qa, qb}) EXPECT_EQ((*conn)->MessageCount(q).value_or(99), 0u) << q;
  EXPECT_EQ((*conn)->MessageCount(qb + ".parked").value_or(99), 1u);
  ASSERT_EQ((*conn)->MessageCount(qa + ".parked").value_or(99), 1u);
  absl::StatusOr<amqp::Delivery> d = (*conn)->Get(qa + ".parked");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->message.body.size(), big.records(0).payload().size());
  EXPECT_EQ(HeaderOf(d->message, "x-ess-attempt"), "3");
  const std::string reason = HeaderOf(d->message, "x-ess-reason");
  EXPECT_THAT(reason, ::testing::StartsWith("gave up after 3 attempts: "));
  EXPECT_LE(reason.size(), 2048u);
  EXPECT_LE(HeaderOf(d->message, "x-ess-history").size(), 2048u);
  EXPECT_EQ(big.records(0).attempts(), 3u);
  EXPECT_EQ(small.records(0).attempts(), 3u);
}

// A SOAP answer whose confirmation cannot be published (nothing is bound to the events
// exchange, so the broker returns it) fails the delivery like any retryable failure: recorded
// FAILED, retried through the delay queue, then parked after max_attempts, with a reason that
// says the partner took it. The partner sees one request per attempt, not a hot loop.
TEST_F(PartnersTest, AConfirmationThatCannotBePublishedIsRetriedThenParked) {
  CapturePartner medical;
  medical.set_behaviour(AnswerBooked);
  const std::string queue = testing::UniqueName("medical");
  StartMedical(medical.url(), queue, kBookVisitById,
               "      retry: {max_attempts: 3, initial_backoff_ms: 50, max_backoff_ms: 200}\n"
               "      circuit_breaker: {disabled: true}\n"
               "      mapping: [{target: id, source: id}]\n");
  // Nothing is bound to exchange_: every confirmation is returned as unroutable.
  Publish(queue, "VIS-90", R"({"type":"VisitScheduleUpdated","id":"VIS-90"})");
  auto conn = amqp::Connection::Open(broker_);
  ASSERT_TRUE(conn.ok());
  absl::StatusOr<amqp::Delivery> d;
  ASSERT_TRUE(
      WaitFor([&] { return (d = (*conn)->Get(queue + ".parked")).ok(); }, absl::Seconds(30)))
      << outbound_->Log();
  // Parked after its third attempt: three requests, and none after it (the delivery is acked).
  EXPECT_EQ(medical.count(), 3u) << outbound_->Log();
  const std::string reason = HeaderOf(d->message, "x-ess-reason");
  EXPECT_THAT(reason, HasSubstr("gave up after 3 attempts: the partner accepted it but its "
                                "confirmation was not published: unroutable"));
  ess::v1::GetResponse t;
  ASSERT_NO_FATAL_FAILURE(OneDeadRecord("VIS-90", &t));
  EXPECT_EQ(t.records(0).direction(), ess::v1::DIRECTION_OUTBOUND);
  EXPECT_EQ(t.records(0).attempts(), 3u);
  EXPECT_THAT(t.records(0).error(),
              HasSubstr("the partner accepted it but its confirmation was not published"));
  EXPECT_EQ(medical.count(), 3u);
  auto depth = (*conn)->MessageCount(queue);
  ASSERT_TRUE(depth.ok());
  EXPECT_EQ(*depth, 0u);
}

}  // namespace
}  // namespace ess
