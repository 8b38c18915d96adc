#include "adapters/soap/soap_adapter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "adapters/registry.h"
#include "adapters/soap/soap_xml.h"
#include "common/http_server.h"
#include "common/json.h"
#include "common/log.h"
#include "tests/adapters/test_certificate.h"

namespace ess::adapters::soap {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::Pair;
using ::testing::StartsWith;

// ---- Recorded partner answers ----

constexpr char kOk11[] = R"(<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
               xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <soap:Header>
    <ess:CorrelationId xmlns:ess="urn:ess:v1">VIS-77</ess:CorrelationId>
  </soap:Header>
  <soap:Body>
    <v:BookVisitResponse xmlns:v="urn:example:visits">
      <v:Status>CONFIRMED</v:Status>
      <v:SlotId>S-991</v:SlotId>
      <v:Capacity>4</v:Capacity>
    </v:BookVisitResponse>
  </soap:Body>
</soap:Envelope>)";

constexpr char kOk12[] = R"(<?xml version="1.0" encoding="utf-8"?>
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope">
  <env:Body>
    <BookVisitResponse xmlns="urn:example:visits">
      <Status>CONFIRMED</Status>
      <SlotId>S-992</SlotId>
      <Capacity>2</Capacity>
    </BookVisitResponse>
  </env:Body>
</env:Envelope>)";

constexpr char kClientFault11[] = R"(<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body>
    <soap:Fault>
      <faultcode>soap:Client</faultcode>
      <faultstring>Unknown inmate A999</faultstring>
      <detail><v:Error xmlns:v="urn:example:visits">E-404</v:Error></detail>
    </soap:Fault>
  </soap:Body>
</soap:Envelope>)";

constexpr char kServerFault11[] = R"(<?xml version="1.0"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/">
  <SOAP-ENV:Body>
    <SOAP-ENV:Fault>
      <faultcode>SOAP-ENV:Server.Database</faultcode>
      <faultstring>database unavailable</faultstring>
    </SOAP-ENV:Fault>
  </SOAP-ENV:Body>
</SOAP-ENV:Envelope>)";

constexpr char kSenderFault12[] = R"(<?xml version="1.0"?>
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"
              xmlns:v="urn:example:visits">
  <env:Body>
    <env:Fault>
      <env:Code>
        <env:Value>env:Sender</env:Value>
        <env:Subcode><env:Value>v:SlotTaken</env:Value></env:Subcode>
      </env:Code>
      <env:Reason><env:Text xml:lang="en">slot already booked</env:Text></env:Reason>
    </env:Fault>
  </env:Body>
</env:Envelope>)";

constexpr char kReceiverFault12[] =
    R"(<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope">
  <env:Body><env:Fault>
    <env:Code><env:Value>env:Receiver</env:Value></env:Code>
    <env:Reason><env:Text xml:lang="en">try later</env:Text></env:Reason>
  </env:Fault></env:Body>
</env:Envelope>)";

constexpr char kEnvelopeNs11[] = "http://schemas.xmlsoap.org/soap/envelope/";

// ---- Partner and event ----

ess::v1::PartnerConfig Partner(const std::string& endpoint, const std::string& version = "") {
  ess::v1::PartnerConfig p;
  p.set_name("visits");
  p.set_adapter("soap");
  for (const char* target : {"id", "inmate", "slot", "note"}) {
    auto* f = p.mutable_outbound()->add_mapping();
    f->set_target(target);
    f->set_source(target);
  }
  ess::v1::SoapAdapterConfig soap;
  soap.set_endpoint(endpoint);
  soap.set_soap_version(version);
  soap.set_soap_action("urn:example:visits/Book");
  soap.set_body_template(
      R"(<v:BookVisit xmlns:v="urn:example:visits"><v:Id>{id}</v:Id>)"
      R"(<v:Inmate>{inmate}</v:Inmate><v:Slot>{slot}</v:Slot><v:Note a="{note}">{note}</v:Note>)"
      R"(</v:BookVisit>)");
  (*soap.mutable_headers())["X-Api-Key"] = "k1";
  (*soap.mutable_namespaces())["v"] = "urn:example:visits";
  auto add = [&](const char* target, const char* xpath, const char* constant, bool required) {
    auto* f = soap.add_response_mapping();
    f->set_target(target);
    f->set_xpath(xpath);
    f->set_constant(constant);
    if (!required) f->set_required(false);
  };
  add("type", "", "SlotConfirmed", true);
  add("status", "string(//v:Status)", "", true);
  add("slot", "/soap:Envelope/soap:Body/v:BookVisitResponse/v:SlotId", "", true);
  add("capacity", "number(//v:Capacity)", "", true);
  add("confirmed", "//v:Status = 'CONFIRMED'", "", true);
  add("note", "//v:Note", "", false);
  p.mutable_settings()->PackFrom(soap);
  return p;
}

struct Event {
  rapidjson::Document doc;
  std::vector<MappedField> fields;
  Mapper mapper;
};

std::unique_ptr<Event> MapVisit(const char* json) {
  google::protobuf::RepeatedPtrField<ess::v1::FieldMapping> m;
  for (const char* t : {"id", "inmate", "slot", "note"}) {
    auto* f = m.Add();
    f->set_target(t);
    f->set_source(t);
    if (std::string(t) == "note") f->set_required(false);
  }
  auto e = std::make_unique<Event>(Event{{}, {}, *Mapper::Compile(m)});
  EXPECT_TRUE(json::Parse(json, e->doc).ok());
  EXPECT_TRUE(e->mapper.Apply(e->doc, &e->fields).ok());
  return e;
}

std::unique_ptr<Event> Visit() {
  return MapVisit(
      R"({"id":"VIS-77","inmate":"A123","slot":"2026-12-01T15:00:00Z","note":"<b>&\"'x"})");
}

std::unique_ptr<SoapAdapter> Make(const ess::v1::PartnerConfig& p, http::Client* client = nullptr) {
  auto a = SoapAdapter::Create(p, client);
  EXPECT_TRUE(a.ok()) << a.status();
  return a.ok() ? *std::move(a) : nullptr;
}

// ---- Escaping and envelopes ----

TEST(SoapXmlTest, EscapesMarkupQuotesAndCarriageReturns) {
  std::string out;
  ASSERT_TRUE(AppendEscaped("a<b>&\"c'\r\n\td", &out).ok());
  EXPECT_EQ(out, "a&lt;b&gt;&amp;&quot;c&apos;&#xD;\n\td");
  EXPECT_EQ(AppendEscaped("bell\x07", &out).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SoapXmlTest, TemplateRejectsBadPlaceholders) {
  EXPECT_EQ(BodyTemplate::Compile("<a>{id</a>").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BodyTemplate::Compile("<a>{}</a>").status().code(), absl::StatusCode::kInvalidArgument);
  auto t = BodyTemplate::Compile("<a>{x}</a><b>{y}{x}</b>");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->Placeholders(), (std::vector<std::string>{"x", "y", "x"}));
}

TEST(SoapAdapterTest, RendersSoap11EnvelopeAndHeaders) {
  auto adapter = Make(Partner("http://127.0.0.1:9/soap"));
  ASSERT_NE(adapter, nullptr);
  auto ev = Visit();
  auto req = adapter->Render({.correlation_id = "VIS-77", .fields = ev->fields});
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->method, "POST");
  EXPECT_EQ(req->url, "http://127.0.0.1:9/soap");
  EXPECT_EQ(req->body,
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
            "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">"
            "<soap:Header><ess:CorrelationId xmlns:ess=\"urn:ess:v1\">VIS-77</ess:CorrelationId>"
            "</soap:Header><soap:Body>"
            "<v:BookVisit xmlns:v=\"urn:example:visits\"><v:Id>VIS-77</v:Id>"
            "<v:Inmate>A123</v:Inmate><v:Slot>2026-12-01T15:00:00Z</v:Slot>"
            "<v:Note a=\"&lt;b&gt;&amp;&quot;&apos;x\">&lt;b&gt;&amp;&quot;&apos;x</v:Note>"
            "</v:BookVisit></soap:Body></soap:Envelope>");
  EXPECT_THAT(req->headers, Contains(Pair("Content-Type", "text/xml; charset=utf-8")));
  EXPECT_THAT(req->headers, Contains(Pair("SOAPAction", "\"urn:example:visits/Book\"")));
  EXPECT_THAT(req->headers, Contains(Pair("X-Api-Key", "k1")));
  // What we send must itself be a well-formed SOAP 1.1 envelope carrying the correlation id.
  auto parsed = Response::Parse(req->body);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->version(), Version::k11);
  EXPECT_EQ(parsed->correlation_id(), "VIS-77");
}

TEST(SoapAdapterTest, RendersSoap12EnvelopeAndContentTypeAction) {
  auto adapter = Make(Partner("https://partner.example/soap", "1.2"));
  ASSERT_NE(adapter, nullptr);
  auto ev = MapVisit(R"({"id":"A&B","inmate":"A123","slot":"s"})");  // no note: renders empty
  auto req = adapter->Render({.correlation_id = "A&B", .fields = ev->fields});
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_THAT(req->body, HasSubstr("<soap:Envelope xmlns:soap=\"http://www.w3.org/2003/05/"
                                   "soap-envelope\"><soap:Header><ess:CorrelationId "
                                   "xmlns:ess=\"urn:ess:v1\">A&amp;B</ess:CorrelationId>"));
  EXPECT_THAT(req->body, HasSubstr("<v:Id>A&amp;B</v:Id>"));
  EXPECT_THAT(req->body, HasSubstr("<v:Note a=\"\"></v:Note>"));
  EXPECT_THAT(req->headers, Contains(Pair("Content-Type",
                                          "application/soap+xml; charset=utf-8; "
                                          "action=\"urn:example:visits/Book\"")));
  for (const auto& [k, v] : req->headers) EXPECT_NE(k, "SOAPAction");
  auto parsed = Response::Parse(req->body);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->version(), Version::k12);
  EXPECT_EQ(parsed->correlation_id(), "A&B");
}

TEST(SoapAdapterTest, ValueXmlCannotCarryIsAPermanentError) {
  auto adapter = Make(Partner("http://127.0.0.1:9/soap"));
  ASSERT_NE(adapter, nullptr);
  auto ev = MapVisit("{\"id\":\"VIS-1\",\"inmate\":\"A\\u0001\",\"slot\":\"s\"}");
  std::promise<PushResult> p;
  adapter->Push({.correlation_id = "VIS-1", .fields = ev->fields},
                [&](PushResult r) { p.set_value(std::move(r)); });
  PushResult r = p.get_future().get();
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status.message()), HasSubstr("field \"inmate\": control character"));
}

// ---- Parsing responses ----

TEST(SoapResponseTest, ParsesSuccessAndFaultsOfBothVersions) {
  auto ok11 = Response::Parse(kOk11);
  ASSERT_TRUE(ok11.ok()) << ok11.status();
  EXPECT_EQ(ok11->version(), Version::k11);
  EXPECT_FALSE(ok11->fault());
  EXPECT_EQ(ok11->correlation_id(), "VIS-77");

  auto ok12 = Response::Parse(kOk12);
  ASSERT_TRUE(ok12.ok()) << ok12.status();
  EXPECT_EQ(ok12->version(), Version::k12);
  EXPECT_FALSE(ok12->fault());
  EXPECT_EQ(ok12->correlation_id(), "");

  auto client = Response::Parse(kClientFault11);
  ASSERT_TRUE(client.ok() && client->fault());
  EXPECT_EQ(client->fault()->code, "soap:Client");
  EXPECT_EQ(client->fault()->reason, "Unknown inmate A999");
  EXPECT_EQ(client->fault()->ToStatus(),
            absl::InvalidArgumentError("SOAP fault soap:Client: Unknown inmate A999"));

  auto server = Response::Parse(kServerFault11);
  ASSERT_TRUE(server.ok() && server->fault());
  EXPECT_EQ(server->fault()->ToStatus(),
            absl::UnavailableError("SOAP fault SOAP-ENV:Server.Database: database unavailable"));

  auto sender = Response::Parse(kSenderFault12);
  ASSERT_TRUE(sender.ok() && sender->fault());
  EXPECT_EQ(sender->fault()->ToStatus(),
            absl::InvalidArgumentError("SOAP fault env:Sender (v:SlotTaken): slot already booked"));

  auto receiver = Response::Parse(kReceiverFault12);
  ASSERT_TRUE(receiver.ok() && receiver->fault());
  EXPECT_EQ(receiver->fault()->ToStatus(),
            absl::UnavailableError("SOAP fault env:Receiver: try later"));
}

TEST(SoapResponseTest, OtherFaultCodes) {
  EXPECT_EQ((Fault{.code = "s:VersionMismatch"}).ToStatus().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((Fault{.code = "env:MustUnderstand"}).ToStatus().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((Fault{.code = "Client.Auth"}).ToStatus().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((Fault{.code = "x:Whatever"}).ToStatus().code(), absl::StatusCode::kUnavailable);
}

// A partner's fault text may be as long as its answer (200 KB): the status carries its head,
// cut and marked, and is classified by the code all the same.
TEST(SoapResponseTest, ALongFaultTextIsCutAndStillClassified) {
  const std::string reason(200'000, 'r');
  const absl::Status s = (Fault{.code = "s:Server", .reason = reason}).ToStatus();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_LE(s.message().size(), Fault::kMaxFaultReasonBytes + 64);
  EXPECT_THAT(std::string(s.message()), ::testing::StartsWith("SOAP fault s:Server: rrr"));
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr(" bytes more]"));
  const absl::Status client =
      (Fault{.code = "soap:Client", .subcode = std::string(10'000, 's'), .reason = reason})
          .ToStatus();
  EXPECT_EQ(client.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LE(client.message().size(), Fault::kMaxFaultCodeBytes + Fault::kMaxFaultReasonBytes + 64);
}

TEST(SoapResponseTest, RejectsMalformedXml) {
  for (const char* bad : {"", "not xml at all", "<soap:Envelope xmlns:soap=\"x\"><soap:Body>",
                          "<a><b></a>", "<x:Envelope><x:Body/></x:Envelope>"}) {
    auto r = Response::Parse(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(r.status().message()), StartsWith("malformed SOAP response: ")) << bad;
  }
  auto not_soap = Response::Parse("<html><body>502 Bad Gateway</body></html>");
  EXPECT_EQ(not_soap.status(),
            absl::InvalidArgumentError(
                "malformed SOAP response: the root element is html, not a SOAP 1.1 or 1.2 "
                "Envelope"));
  auto no_body = Response::Parse(
      absl::StrCat("<s:Envelope xmlns:s=\"", kEnvelopeNs11, "\"><s:Header/></s:Envelope>"));
  EXPECT_EQ(no_body.status(),
            absl::InvalidArgumentError("malformed SOAP response: the Envelope has no Body"));
}

TEST(SoapResponseTest, RefusesDoctypesSoNoEntityIsEverExpanded) {
  const std::string xxe = absl::StrCat(
      "<?xml version=\"1.0\"?>\n<!DOCTYPE s:Envelope [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>"
      "<s:Envelope xmlns:s=\"",
      kEnvelopeNs11, "\"><s:Body><r>&x;</r></s:Body></s:Envelope>");
  EXPECT_EQ(Response::Parse(xxe).status(),
            absl::InvalidArgumentError(
                "malformed SOAP response: a DOCTYPE is not allowed in a SOAP message"));
  std::string laughs = "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol0 \"lol\">";
  for (int i = 1; i < 10; ++i) {
    std::string ref = absl::StrCat("&lol", i - 1, ";");
    absl::StrAppend(&laughs, "<!ENTITY lol", i, " \"", ref, ref, ref, ref, ref, ref, ref, ref, ref,
                    ref, "\">");
  }
  absl::StrAppend(&laughs, "]><lolz>&lol9;</lolz>");
  EXPECT_EQ(Response::Parse(laughs).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- Judging answers and the synchronous confirmation ----

TEST(SoapAdapterTest, JudgesAnswers) {
  auto adapter = Make(Partner("http://127.0.0.1:9/soap"));
  ASSERT_NE(adapter, nullptr);
  auto judge = [&](long status, std::string_view body) {
    PushResult r;
    adapter->Judge(status, body, false, "VIS-77", &r);
    return r;
  };
  PushResult ok = judge(200, kOk11);
  ASSERT_TRUE(ok.status.ok()) << ok.status;
  EXPECT_EQ(ok.detail, "200");
  ASSERT_EQ(ok.confirmations.size(), 1u);
  EXPECT_EQ(ok.confirmations[0].body,
            R"({"id":"VIS-77","type":"SlotConfirmed","status":"CONFIRMED","slot":"S-991",)"
            R"("capacity":4,"confirmed":true})");
  EXPECT_EQ(ok.confirmations[0].correlation_id, "VIS-77");
  EXPECT_EQ(ok.confirmations[0].event_type, "SlotConfirmed");

  PushResult client = judge(500, kClientFault11);
  EXPECT_EQ(client.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client.detail, "500 SOAP fault soap:Client: Unknown inmate A999");
  EXPECT_THAT(client.confirmations, IsEmpty());
  EXPECT_EQ(judge(500, kServerFault11).status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(judge(400, kSenderFault12).status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(judge(500, kReceiverFault12).status.code(), absl::StatusCode::kUnavailable);
  // A fault is a fault even under 200.
  EXPECT_EQ(judge(200, kClientFault11).status.code(), absl::StatusCode::kInvalidArgument);
  // Not SOAP: the HTTP status decides.
  EXPECT_EQ(judge(502, "<html>bad gateway</html>").status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(judge(503, "").status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(judge(404, "no such service").status,
            absl::InvalidArgumentError("partner answered HTTP 404: no such service"));
  EXPECT_EQ(judge(429, "").status.code(), absl::StatusCode::kResourceExhausted);
  // 2xx that cannot be read: permanent.
  PushResult malformed = judge(200, "<soap:Envelope");
  EXPECT_EQ(malformed.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(malformed.status.message()), StartsWith("malformed SOAP response: "));
  // 2xx that lacks what the response mapping requires: permanent, named.
  std::string no_status = kOk11;
  no_status.replace(no_status.find("<v:Status>CONFIRMED</v:Status>"), 30, "");
  EXPECT_EQ(judge(200, no_status).status,
            absl::InvalidArgumentError("SOAP response cannot be mapped: response has nothing at "
                                       "\"string(//v:Status)\" (for \"status\")"));
}

TEST(SoapAdapterTest, ResponseMappingBindsSoapPrefixToTheResponseVersion) {
  // The 1.2 answer uses a default namespace and env:, the mapping still says soap: and v:.
  auto adapter = Make(Partner("http://127.0.0.1:9/soap", "1.2"));
  ASSERT_NE(adapter, nullptr);
  PushResult r;
  adapter->Judge(200, kOk12, false, "VIS-78", &r);
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_EQ(r.confirmations.size(), 1u);
  EXPECT_EQ(r.confirmations[0].body,
            R"({"id":"VIS-78","type":"SlotConfirmed","status":"CONFIRMED","slot":"S-992",)"
            R"("capacity":2,"confirmed":true})");
}

TEST(SoapAdapterTest, EmptySuccessWithoutMappingIsOk) {
  auto p = Partner("http://127.0.0.1:9/soap");
  ess::v1::SoapAdapterConfig soap;
  ASSERT_TRUE(p.settings().UnpackTo(&soap));
  soap.clear_response_mapping();
  p.mutable_settings()->PackFrom(soap);
  auto adapter = Make(p);
  ASSERT_NE(adapter, nullptr);
  PushResult r;
  adapter->Judge(202, "", false, "VIS-77", &r);
  EXPECT_TRUE(r.status.ok());
  EXPECT_THAT(r.confirmations, IsEmpty());
  adapter->Judge(200, kOk11, false, "VIS-77", &r);
  EXPECT_TRUE(r.status.ok());
  EXPECT_THAT(r.confirmations, IsEmpty());
  EXPECT_EQ(adapter->Pull({.body = kOk11}).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SoapAdapterTest, PullMapsARawResponse) {
  auto adapter = Make(Partner("http://127.0.0.1:9/soap"));
  ASSERT_NE(adapter, nullptr);
  // The correlation id comes from the echoed <ess:CorrelationId> header.
  auto events = adapter->Pull({.body = kOk11, .correlation_id = "ignored"});
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].correlation_id, "VIS-77");
  // Without the header element: the request's correlation id.
  events = adapter->Pull({.body = kOk12, .correlation_id = "VIS-90"});
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_EQ((*events)[0].correlation_id, "VIS-90");
  EXPECT_THAT((*events)[0].body, StartsWith(R"({"id":"VIS-90","type":"SlotConfirmed")"));
  // Neither: no id.
  EXPECT_EQ(
      adapter->Pull({.body = kOk12}).status(),
      absl::InvalidArgumentError("the mapped event has no string \"id\" (its correlation id)"));
  auto fault = adapter->Pull({.body = kClientFault11});
  EXPECT_EQ(fault.status(), absl::InvalidArgumentError(
                                "the payload is a SOAP fault soap:Client: Unknown inmate A999"));
  EXPECT_EQ(adapter->Pull({.body = "<oops"}).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- Factory validation ----

TEST(SoapAdapterTest, FactoryRejectsBadSettings) {
  auto with = [](auto edit) {
    auto p = Partner("http://127.0.0.1:9/soap");
    ess::v1::SoapAdapterConfig soap;
    EXPECT_TRUE(p.settings().UnpackTo(&soap));
    edit(soap);
    p.mutable_settings()->PackFrom(soap);
    auto a = BuiltinRegistry().Create(p, {});
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(a.status().message());
  };
  using C = ess::v1::SoapAdapterConfig;
  {
    auto p = Partner("http://127.0.0.1:9/soap");
    p.mutable_inbound()->set_webhook_path("/webhook/visits");
    ess::v1::SoapAdapterConfig soap;
    EXPECT_TRUE(p.settings().UnpackTo(&soap));
    soap.clear_response_mapping();
    p.mutable_settings()->PackFrom(soap);
    EXPECT_EQ(BuiltinRegistry().Create(p, {}).status().message(),
              "partners[visits].settings.response_mapping: is needed to read the callbacks of "
              "inbound.webhook_path");
  }
  EXPECT_EQ(with([](C& c) { c.set_endpoint("ftp://x"); }),
            "partners[visits].settings.endpoint: must start with http:// or https://");
  EXPECT_EQ(with([](C& c) { c.set_soap_version("2.0"); }),
            "partners[visits].settings.soap_version: must be 1.1 or 1.2");
  EXPECT_EQ(with([](C& c) { c.set_body_template("<a>{unknown}</a>"); }),
            "partners[visits].settings.body_template: placeholder {unknown} is not a target of "
            "outbound.mapping");
  EXPECT_THAT(with([](C& c) { c.set_body_template("<a>{id}</b>"); }),
              StartsWith("partners[visits].settings.body_template: not well-formed XML: "));
  EXPECT_THAT(with([](C& c) { c.set_body_template("<q:a>{id}</q:a>"); }),
              StartsWith("partners[visits].settings.body_template: not well-formed XML: "
                         "namespace error"));
  EXPECT_THAT(with([](C& c) { c.mutable_response_mapping(1)->set_xpath("//v:Status[["); }),
              StartsWith("partners[visits].settings.response_mapping[1].xpath: does not compile"));
  EXPECT_THAT(with([](C& c) { c.mutable_response_mapping(1)->set_xpath("//zz:Status"); }),
              StartsWith("partners[visits].settings.response_mapping[1].xpath: cannot be "
                         "evaluated"));
  EXPECT_EQ(with([](C& c) { c.mutable_response_mapping(0)->set_target("kind"); }),
            "partners[visits].settings.response_mapping: no field targets \"type\"");
  EXPECT_EQ(with([](C& c) { (*c.mutable_namespaces())["soap"] = "urn:x"; }),
            "partners[visits].settings.namespaces.soap: is built in and cannot be redefined");
  EXPECT_EQ(with([](C& c) { (*c.mutable_headers())["soapaction"] = "x"; }),
            "partners[visits].settings.headers.soapaction: is set by the adapter (see "
            "soap_action)");
  EXPECT_EQ(with([](C& c) { c.mutable_response_mapping(1)->set_constant("x"); }),
            "partners[visits].settings.response_mapping[1].xpath: exactly one of xpath and "
            "constant must be set");
}

// ---- Over real HTTP on loopback ----

struct Seen {
  std::string method, path, content_type, soap_action, api_key, body;
};

class SoapHttpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<http::Server>(
        http::Server::Options{}, [this](http::ServerRequest req, http::Responder r) {
          http::ServerResponse answer;
          {
            absl::MutexLock lock(&mu_);
            seen_.push_back({req.method, req.path, std::string(req.Header("content-type")),
                             std::string(req.Header("soapaction")),
                             std::string(req.Header("x-api-key")), req.body});
            answer = answer_;
          }
          std::move(r).Send(std::move(answer));
        });
    ASSERT_TRUE(server_->Start().ok());
    url_ = "http://127.0.0.1:" + std::to_string(server_->port()) + "/soap/visits";
  }
  void TearDown() override { server_->Stop(); }

  void Answer(int status, std::string content_type, std::string body) {
    absl::MutexLock lock(&mu_);
    answer_ = {.status = status, .content_type = std::move(content_type), .body = std::move(body)};
  }
  Seen Last() {
    absl::MutexLock lock(&mu_);
    return seen_.empty() ? Seen{} : seen_.back();
  }
  size_t Count() {
    absl::MutexLock lock(&mu_);
    return seen_.size();
  }
  static PushResult PushAndWait(Adapter& a, const PushRequest& req) {
    std::promise<PushResult> p;
    a.Push(req, [&](PushResult r) { p.set_value(std::move(r)); });
    return p.get_future().get();
  }

  std::unique_ptr<http::Server> server_;
  std::string url_;
  http::Client client_{{}};
  absl::Mutex mu_;
  std::vector<Seen> seen_ ABSL_GUARDED_BY(mu_);
  http::ServerResponse answer_ ABSL_GUARDED_BY(mu_);
};

TEST_F(SoapHttpTest, Soap11PushSendsTheExactEnvelopeAndReturnsTheConfirmation) {
  auto adapter = BuiltinRegistry().Create(Partner(url_), {.http = &client_});
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  auto* soap = static_cast<SoapAdapter*>(adapter->get());
  auto ev = Visit();
  PushRequest req{.correlation_id = "VIS-77", .fields = ev->fields};
  Answer(200, "text/xml; charset=utf-8", kOk11);
  PushResult r = PushAndWait(**adapter, req);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.detail, "200");
  Seen seen = Last();
  EXPECT_EQ(seen.method, "POST");
  EXPECT_EQ(seen.path, "/soap/visits");
  EXPECT_EQ(seen.content_type, "text/xml; charset=utf-8");
  EXPECT_EQ(seen.soap_action, "\"urn:example:visits/Book\"");
  EXPECT_EQ(seen.api_key, "k1");
  EXPECT_EQ(seen.body, soap->Render(req)->body);
  EXPECT_EQ(r.rendered, absl::StrCat("POST ", url_, "\n", seen.body));
  ASSERT_EQ(r.confirmations.size(), 1u);
  EXPECT_EQ(r.confirmations[0].body,
            R"({"id":"VIS-77","type":"SlotConfirmed","status":"CONFIRMED","slot":"S-991",)"
            R"("capacity":4,"confirmed":true})");

  Answer(500, "text/xml; charset=utf-8", kClientFault11);
  r = PushAndWait(**adapter, req);
  EXPECT_EQ(r.status, absl::InvalidArgumentError("SOAP fault soap:Client: Unknown inmate A999"));
  EXPECT_THAT(r.confirmations, IsEmpty());
  Answer(500, "text/xml; charset=utf-8", kServerFault11);
  EXPECT_EQ(PushAndWait(**adapter, req).status.code(), absl::StatusCode::kUnavailable);
  Answer(503, "text/html", "<html>maintenance</html>");
  EXPECT_EQ(PushAndWait(**adapter, req).status.code(), absl::StatusCode::kUnavailable);
  Answer(200, "text/xml", "<soap:Envelope><unclosed>");
  r = PushAndWait(**adapter, req);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status.message()), StartsWith("malformed SOAP response: "));
  EXPECT_EQ(Count(), 5u);
}

TEST_F(SoapHttpTest, Soap12PushUsesTheContentTypeActionAndClassifiesCodes) {
  auto adapter = BuiltinRegistry().Create(Partner(url_, "1.2"), {.http = &client_});
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  auto ev = Visit();
  PushRequest req{.correlation_id = "VIS-78", .fields = ev->fields};
  Answer(200, "application/soap+xml; charset=utf-8", kOk12);
  PushResult r = PushAndWait(**adapter, req);
  ASSERT_TRUE(r.status.ok()) << r.status;
  Seen seen = Last();
  EXPECT_EQ(seen.content_type,
            "application/soap+xml; charset=utf-8; action=\"urn:example:visits/Book\"");
  EXPECT_EQ(seen.soap_action, "");
  EXPECT_THAT(seen.body, HasSubstr("xmlns:soap=\"http://www.w3.org/2003/05/soap-envelope\""));
  EXPECT_THAT(seen.body, HasSubstr(">VIS-78</ess:CorrelationId>"));
  ASSERT_EQ(r.confirmations.size(), 1u);
  EXPECT_EQ(r.confirmations[0].correlation_id, "VIS-78");

  Answer(400, "application/soap+xml", kSenderFault12);
  EXPECT_EQ(PushAndWait(**adapter, req).status,
            absl::InvalidArgumentError("SOAP fault env:Sender (v:SlotTaken): slot already booked"));
  Answer(500, "application/soap+xml", kReceiverFault12);
  EXPECT_EQ(PushAndWait(**adapter, req).status,
            absl::UnavailableError("SOAP fault env:Receiver: try later"));
}

TEST_F(SoapHttpTest, ServerFaultCarriesRetryAfter) {
  auto adapter = BuiltinRegistry().Create(Partner(url_), {.http = &client_});
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  auto ev = Visit();
  {
    absl::MutexLock lock(&mu_);
    answer_ = {.status = 503,
               .content_type = "text/xml; charset=utf-8",
               .headers = {{"Retry-After", "7"}},
               .body = kServerFault11};
  }
  PushResult r = PushAndWait(**adapter, {.correlation_id = "VIS-77", .fields = ev->fields});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(r.retry_after, absl::Seconds(7));
}

TEST_F(SoapHttpTest, UnreachableEndpointIsRetryable) {
  auto p = Partner("http://127.0.0.1:1/soap");
  auto adapter = BuiltinRegistry().Create(p, {.http = &client_});
  ASSERT_TRUE(adapter.ok());
  auto ev = Visit();
  PushResult r = PushAndWait(**adapter, {.correlation_id = "VIS-77", .fields = ev->fields});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
  // The error names the endpoint's origin only, never its path.
  EXPECT_THAT(std::string(r.status.message()), StartsWith("POST http://127.0.0.1:1: "));
  EXPECT_THAT(std::string(r.status.message()), Not(HasSubstr("/soap")));
}

// ca_file is checked when the adapter is built, naming the field; a CA file that went bad
// since (a rotation gap) fails the push retryably, not for good.
TEST_F(SoapHttpTest, TheCaFileIsCheckedAtCreateAndWhenItGoesBadLaterThePushIsRetryable) {
  auto with_ca = [](ess::v1::PartnerConfig p, const std::string& ca) {
    ess::v1::SoapAdapterConfig soap;
    EXPECT_TRUE(p.settings().UnpackTo(&soap));
    soap.set_ca_file(ca);
    p.mutable_settings()->PackFrom(soap);
    return p;
  };
  const std::string missing = ::testing::TempDir() + "ess-no-such-soap-ca.pem";
  auto refused = BuiltinRegistry().Create(with_ca(Partner(url_), missing), {.http = &client_});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refused.status().message(),
            "partners[visits].settings.ca_file: cannot read " + missing);
  const std::string key_only = test_tls::WriteTempFile(
      "soap-key-only.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
  refused = BuiltinRegistry().Create(with_ca(Partner(url_), key_only), {.http = &client_});
  EXPECT_EQ(refused.status().message(), "partners[visits].settings.ca_file: " + key_only +
                                            " holds no PEM certificate that can be read");
  std::remove(key_only.c_str());

  const std::string ca =
      test_tls::WriteTempFile("soap-ca.pem", test_tls::SelfSignedCertificatePem());
  std::string https = url_;
  https.replace(0, 4, "https");
  auto adapter = BuiltinRegistry().Create(with_ca(Partner(https), ca), {.http = &client_});
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  ASSERT_EQ(std::remove(ca.c_str()), 0);
  auto ev = Visit();
  PushResult r = PushAndWait(**adapter, {.correlation_id = "VIS-77", .fields = ev->fields});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
}

TEST_F(SoapHttpTest, DryRunSendsNothingAndLogsMaskedEnvelope) {
  log::Init("soap_test", log::Level::kInfo, {"inmate"});
  auto adapter = BuiltinRegistry().Create(Partner(url_), {.http = &client_});
  ASSERT_TRUE(adapter.ok());
  auto ev = Visit();
  ::testing::internal::CaptureStderr();
  PushResult r =
      PushAndWait(**adapter, {.correlation_id = "VIS-77", .fields = ev->fields, .dry_run = true});
  std::string logged = ::testing::internal::GetCapturedStderr();
  log::Init("soap_test");
  EXPECT_TRUE(r.status.ok());
  EXPECT_TRUE(r.dry_run);
  EXPECT_THAT(r.rendered, HasSubstr("<v:Inmate>A123</v:Inmate>"));
  EXPECT_THAT(logged, HasSubstr("dry-run"));
  EXPECT_THAT(logged, HasSubstr("<v:Inmate>***</v:Inmate>"));
  EXPECT_THAT(logged, Not(HasSubstr("A123")));
  EXPECT_EQ(Count(), 0u);
}

// The dry-run log masks a field by its source too: `inmate <- inmateId` (pii_fields [inmateId])
// and `note <- visitor.name` (pii_fields [visitor]). Before, only the placeholder (the target)
// was checked, and the log carried both values.
TEST(SoapAdapterTest, DryRunMasksAFieldRenamedFromAPersonalSource) {
  log::Init("soap_test", log::Level::kInfo, {"inmateId", "visitor"});
  auto p = Partner("http://127.0.0.1:9/soap");
  p.mutable_outbound()->mutable_mapping(1)->set_source("inmateId");
  p.mutable_outbound()->mutable_mapping(3)->set_source("visitor.name");
  auto adapter = Make(p);
  ASSERT_NE(adapter, nullptr);
  rapidjson::Document doc;
  ASSERT_TRUE(json::Parse(R"({"id":"VIS-77","inmateId":"A123","slot":"s",)"
                          R"("visitor":{"name":"Jane Roe"}})",
                          doc)
                  .ok());
  Mapper m = *Mapper::Compile(p.outbound().mapping());
  std::vector<MappedField> fields;
  ASSERT_TRUE(m.Apply(doc, &fields).ok());
  ::testing::internal::CaptureStderr();
  std::promise<PushResult> done;
  adapter->Push({.correlation_id = "VIS-77", .fields = fields, .dry_run = true},
                [&](PushResult r) { done.set_value(std::move(r)); });
  PushResult r = done.get_future().get();
  std::string logged = ::testing::internal::GetCapturedStderr();
  log::Init("soap_test");
  EXPECT_TRUE(r.status.ok()) << r.status;
  EXPECT_THAT(r.rendered, HasSubstr("<v:Inmate>A123</v:Inmate>"));  // sent as it is
  EXPECT_THAT(logged, HasSubstr("<v:Id>VIS-77</v:Id><v:Inmate>***</v:Inmate>"));
  EXPECT_THAT(logged, Not(HasSubstr("A123")));
  EXPECT_THAT(logged, Not(HasSubstr("Jane Roe")));
}

}  // namespace
}  // namespace ess::adapters::soap
