#include "adapters/rest/rest_adapter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <future>

#include "absl/synchronization/mutex.h"
#include "adapters/http_status.h"
#include "adapters/registry.h"
#include "common/http_server.h"
#include "common/json.h"
#include "common/log.h"
#include "tests/adapters/test_certificate.h"

namespace ess::adapters::rest {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Pair;

ess::v1::PartnerConfig Partner(const std::string& base_url) {
  ess::v1::PartnerConfig p;
  p.set_name("prison");
  p.set_adapter("rest");
  ess::v1::RestAdapterConfig rest;
  rest.set_base_url(base_url);
  rest.set_path("/api/slots/{id}");
  (*rest.mutable_headers())["X-Api-Key"] = "k1";
  p.mutable_settings()->PackFrom(rest);
  auto* in = p.mutable_inbound();
  in->set_webhook_path("/webhook/prison");
  auto* f = in->add_mapping();
  f->set_target("type");
  f->set_constant("SlotConfirmed");
  f = in->add_mapping();
  f->set_target("id");
  f->set_source("id");
  f = in->add_mapping();
  f->set_target("status");
  f->set_source("status");
  return p;
}

struct Event {
  rapidjson::Document doc;
  std::vector<MappedField> fields;
  Mapper mapper;
};

std::unique_ptr<Event> MapVisit() {
  google::protobuf::RepeatedPtrField<ess::v1::FieldMapping> m;
  for (auto [t, s] : {std::pair{"id", "id"}, {"inmate", "inmateId"}, {"slot", "slotUtc"}}) {
    auto* f = m.Add();
    f->set_target(t);
    f->set_source(s);
  }
  auto e = std::make_unique<Event>(Event{{}, {}, *Mapper::Compile(m)});
  EXPECT_TRUE(json::Parse(R"({"type":"VisitScheduleUpdated","id":"VIS 77","inmateId":"A123",)"
                          R"("slotUtc":"2026-12-01T15:00:00Z"})",
                          e->doc)
                  .ok());
  EXPECT_TRUE(e->mapper.Apply(e->doc, &e->fields).ok());
  return e;
}

TEST(RestAdapterTest, RendersTheRequest) {
  auto adapter = BuiltinRegistry().Create(Partner("http://127.0.0.1:9"), {});
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  auto* rest = static_cast<RestAdapter*>(adapter->get());
  auto ev = MapVisit();
  auto req = rest->Render({.correlation_id = "VIS 77", .fields = ev->fields});
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->method, "POST");
  EXPECT_EQ(req->url, "http://127.0.0.1:9/api/slots/VIS%2077");
  EXPECT_EQ(req->body, R"({"id":"VIS 77","inmate":"A123","slot":"2026-12-01T15:00:00Z"})");
  EXPECT_THAT(req->headers, Contains(Pair("Idempotency-Key", "VIS 77")));
  EXPECT_THAT(req->headers, Contains(Pair("X-Correlation-ID", "VIS 77")));
  EXPECT_THAT(req->headers, Contains(Pair("X-Api-Key", "k1")));
  EXPECT_THAT(req->headers, Contains(Pair("Content-Type", "application/json")));
}

// Mapped fields of an event, through `mapping` (target <- source pairs).
struct Mapped {
  rapidjson::Document doc;
  std::vector<MappedField> fields;
  Mapper mapper;
};
std::unique_ptr<Mapped> MapEvent(std::string_view json,
                                 std::vector<std::pair<std::string, std::string>> mapping) {
  google::protobuf::RepeatedPtrField<ess::v1::FieldMapping> m;
  for (const auto& [t, s] : mapping) {
    auto* f = m.Add();
    f->set_target(t);
    f->set_source(s);
  }
  auto e = std::make_unique<Mapped>(Mapped{{}, {}, *Mapper::Compile(m)});
  EXPECT_TRUE(json::Parse(json, e->doc).ok());
  EXPECT_TRUE(e->mapper.Apply(e->doc, &e->fields).ok());
  return e;
}

// A placeholder's value "." or ".." is data, not a dot segment: before, the partner got
// "POST /api/cancel" for "/api/inmates/{inmate}/visits/{id}/cancel" (curl resolved the
// segments), and the lane recorded it delivered.
TEST(RestAdapterTest, APlaceholderValueOfDotOrDotDotStaysInItsSegment) {
  absl::Mutex mu;
  std::vector<std::string> lines;
  http::Server server({}, [&](http::ServerRequest req, http::Responder r) {
    {
      absl::MutexLock lock(&mu);
      lines.push_back(req.method + " " + req.path);
    }
    std::move(r).Send({.status = 201, .body = "{}"});
  });
  ASSERT_TRUE(server.Start().ok());
  http::Client client({});
  ess::v1::PartnerConfig partner = Partner("http://127.0.0.1:" + std::to_string(server.port()));
  ess::v1::RestAdapterConfig rest;
  ASSERT_TRUE(partner.settings().UnpackTo(&rest));
  rest.set_path("/api/inmates/{inmate}/visits/{id}/cancel");
  partner.mutable_settings()->PackFrom(rest);
  auto adapter = BuiltinRegistry().Create(partner, {.http = &client});
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  for (const char* event : {R"({"id":"..","inmateId":".."})", R"({"id":".","inmateId":".."})",
                            R"({"id":"...","inmateId":"a.b"})"}) {
    auto ev = MapEvent(event, {{"id", "id"}, {"inmate", "inmateId"}});
    std::promise<PushResult> p;
    (*adapter)->Push({.correlation_id = "VIS-1", .fields = ev->fields},
                     [&](PushResult r) { p.set_value(std::move(r)); });
    PushResult r = p.get_future().get();
    EXPECT_TRUE(r.status.ok()) << r.status;
  }
  server.Stop();
  absl::MutexLock lock(&mu);
  EXPECT_THAT(lines, ::testing::ElementsAre("POST /api/inmates/%2E%2E/visits/%2E%2E/cancel",
                                            "POST /api/inmates/%2E%2E/visits/%2E/cancel",
                                            "POST /api/inmates/a.b/visits/.../cancel"));
}

TEST(RestAdapterTest, PushesOverRealHttpAndClassifiesAnswers) {
  std::atomic<int> answer{201};
  std::string last_body;
  http::Server server({}, [&](http::ServerRequest req, http::Responder r) {
    last_body = req.body;
    std::move(r).Send({.status = answer.load(), .body = "{}"});
  });
  ASSERT_TRUE(server.Start().ok());
  http::Client client({});
  auto adapter = BuiltinRegistry().Create(
      Partner("http://127.0.0.1:" + std::to_string(server.port())), {.http = &client});
  ASSERT_TRUE(adapter.ok());
  auto ev = MapVisit();
  auto push = [&]() {
    std::promise<PushResult> p;
    (*adapter)->Push({.correlation_id = "VIS 77", .fields = ev->fields},
                     [&](PushResult r) { p.set_value(std::move(r)); });
    return p.get_future().get();
  };
  PushResult r = push();
  EXPECT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.detail, "201");
  EXPECT_EQ(last_body, R"({"id":"VIS 77","inmate":"A123","slot":"2026-12-01T15:00:00Z"})");
  EXPECT_THAT(r.rendered, HasSubstr("POST http://127.0.0.1:"));
  answer = 503;
  EXPECT_EQ(push().status.code(), absl::StatusCode::kUnavailable);
  answer = 400;
  EXPECT_EQ(push().status.code(), absl::StatusCode::kInvalidArgument);
  answer = 302;
  EXPECT_EQ(push().status.code(), absl::StatusCode::kFailedPrecondition);
  server.Stop();
}

// Ids from the event go into headers; one that would break its header line is refused by the
// HTTP client, naming the header: a permanent error (parked by the lane), and nothing is sent.
TEST(RestAdapterTest, AnIdThatWouldInjectAHeaderIsRefusedAndNothingIsSent) {
  std::atomic<int> hits{0};
  http::Server server({}, [&](http::ServerRequest, http::Responder r) {
    ++hits;
    std::move(r).Send({.status = 201, .body = "{}"});
  });
  ASSERT_TRUE(server.Start().ok());
  http::Client client({});
  auto adapter = BuiltinRegistry().Create(
      Partner("http://127.0.0.1:" + std::to_string(server.port())), {.http = &client});
  ASSERT_TRUE(adapter.ok());
  auto ev = MapVisit();
  auto push = [&](std::string_view cid, std::string_view mid) {
    std::promise<PushResult> p;
    (*adapter)->Push({.correlation_id = cid, .message_id = mid, .fields = ev->fields},
                     [&](PushResult r) { p.set_value(std::move(r)); });
    return p.get_future().get();
  };
  PushResult r = push("VIS-2\r\nX-Injected: yes", "");
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;
  EXPECT_THAT(std::string(r.status.message()),
              HasSubstr("header Idempotency-Key: value holds a CR, LF or NUL"));
  EXPECT_FALSE(IsRetryable(r.status));
  r = push("VIS-2", std::string_view("VIS-2\0b", 7));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;
  r = push("VIS-2\nX-Injected: yes", "MSG-1");
  EXPECT_THAT(std::string(r.status.message()),
              HasSubstr("header X-Correlation-ID: value holds a CR, LF or NUL"));
  EXPECT_EQ(hits.load(), 0);
  EXPECT_TRUE(push("VIS-2", "MSG-1").status.ok());
  EXPECT_EQ(hits.load(), 1);
  server.Stop();
}

// Pushes `request` through `adapter` and waits for the result.
PushResult PushAndWait(Adapter& adapter, const PushRequest& request) {
  std::promise<PushResult> p;
  adapter.Push(request, [&](PushResult r) { p.set_value(std::move(r)); });
  return p.get_future().get();
}

// The partner's `settings` changed by `change`.
template <typename Change>
ess::v1::PartnerConfig WithSettings(ess::v1::PartnerConfig partner, Change change) {
  ess::v1::RestAdapterConfig rest;
  EXPECT_TRUE(partner.settings().UnpackTo(&rest));
  change(rest);
  partner.mutable_settings()->PackFrom(rest);
  return partner;
}

// ca_file is checked when the adapter is built, naming the field (the service exits 2 then);
// before, a missing one parked every event DEAD ("error setting certificate file").
TEST(RestAdapterTest, FactoryChecksTheCaFileHoldsACertificate) {
  const std::string good = test_tls::WriteTempFile("ca.pem", test_tls::SelfSignedCertificatePem());
  const std::string not_pem = test_tls::WriteTempFile("not-pem.txt", "hello\n");
  const std::string no_cert = test_tls::WriteTempFile(
      "key-only.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
  const std::string missing = ::testing::TempDir() + "ess-no-such-partner-ca.pem";
  auto create = [](const std::string& ca) {
    return BuiltinRegistry()
        .Create(WithSettings(Partner("https://127.0.0.1:9"),
                             [&](ess::v1::RestAdapterConfig& r) { r.set_ca_file(ca); }),
                {})
        .status();
  };
  EXPECT_TRUE(create(good).ok()) << create(good);
  absl::Status s = create(missing);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "partners[prison].settings.ca_file: cannot read " + missing);
  s = create(not_pem);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "partners[prison].settings.ca_file: " + not_pem + " holds no PEM block");
  s = create(no_cert);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "partners[prison].settings.ca_file: " + no_cert +
                             " holds no PEM certificate that can be read");
  for (const std::string& f : {good, not_pem, no_cert}) std::remove(f.c_str());
}

// A CA file that was good when the lane started and went bad since (a rotation gap) fails the
// push retryably: the lane retries it rather than parking it DEAD.
TEST(RestAdapterTest, ACaFileThatWentBadSinceTheStartIsRetryable) {
  http::Server server({}, [&](http::ServerRequest, http::Responder r) {
    std::move(r).Send({.status = 201, .body = "{}"});
  });
  ASSERT_TRUE(server.Start().ok());
  const std::string ca =
      test_tls::WriteTempFile("rotating-ca.pem", test_tls::SelfSignedCertificatePem());
  http::Client client({});
  auto adapter = BuiltinRegistry().Create(
      WithSettings(Partner("https://127.0.0.1:" + std::to_string(server.port())),
                   [&](ess::v1::RestAdapterConfig& r) { r.set_ca_file(ca); }),
      {.http = &client});
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  ASSERT_EQ(std::remove(ca.c_str()), 0);
  auto ev = MapVisit();
  PushResult r = PushAndWait(
      **adapter, {.correlation_id = "VIS-1", .message_id = "MSG-1", .fields = ev->fields});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
  EXPECT_TRUE(IsRetryable(r.status));
  server.Stop();
}

TEST(RestAdapterTest, DryRunSendsNothing) {
  std::atomic<int> hits{0};
  http::Server server({}, [&](http::ServerRequest, http::Responder r) {
    ++hits;
    std::move(r).Send({});
  });
  ASSERT_TRUE(server.Start().ok());
  http::Client client({});
  auto adapter = BuiltinRegistry().Create(
      Partner("http://127.0.0.1:" + std::to_string(server.port())), {.http = &client});
  ASSERT_TRUE(adapter.ok());
  auto ev = MapVisit();
  std::promise<PushResult> p;
  (*adapter)->Push({.correlation_id = "VIS 77", .fields = ev->fields, .dry_run = true},
                   [&](PushResult r) { p.set_value(std::move(r)); });
  PushResult r = p.get_future().get();
  EXPECT_TRUE(r.status.ok());
  EXPECT_TRUE(r.dry_run);
  EXPECT_THAT(r.rendered, HasSubstr(R"("inmate":"A123")"));
  EXPECT_EQ(hits.load(), 0);
  server.Stop();
}

// The dry-run log masks a field renamed from a personal one (inmate <- inmateId), in the body
// and in the path, as the SOAP and CSV adapters do; the rendered request stays exact.
TEST(RestAdapterTest, DryRunLogMasksAFieldRenamedFromAPersonalOne) {
  log::Init("test", log::Level::kInfo, {"inmateId"});
  ess::v1::PartnerConfig partner = Partner("http://127.0.0.1:9");
  ess::v1::RestAdapterConfig rest;
  ASSERT_TRUE(partner.settings().UnpackTo(&rest));
  rest.set_path("/api/inmates/{inmate}/slots");
  partner.mutable_settings()->PackFrom(rest);
  for (auto [t, s] : {std::pair{"id", "id"}, {"inmate", "inmateId"}, {"slot", "slotUtc"}}) {
    auto* f = partner.mutable_outbound()->add_mapping();
    f->set_target(t);
    f->set_source(s);
  }
  http::Client client({});
  auto adapter = BuiltinRegistry().Create(partner, {.http = &client});
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  auto ev = MapVisit();
  testing::internal::CaptureStderr();
  std::promise<PushResult> p;
  (*adapter)->Push({.correlation_id = "VIS 77", .fields = ev->fields, .dry_run = true},
                   [&](PushResult r) { p.set_value(std::move(r)); });
  PushResult r = p.get_future().get();
  const std::string log = testing::internal::GetCapturedStderr();
  log::Init("test", log::Level::kInfo, {});
  EXPECT_TRUE(r.dry_run);
  EXPECT_THAT(r.rendered, HasSubstr("/api/inmates/A123/slots"));
  EXPECT_THAT(r.rendered, HasSubstr(R"("inmate":"A123")"));
  EXPECT_THAT(log, HasSubstr("dry-run: request not sent"));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("A123")));
  EXPECT_THAT(log, HasSubstr(R"(\"inmate\":\"***\")"));
  EXPECT_THAT(log, HasSubstr(R"(\"slot\":\"2026-12-01T15:00:00Z\")"));  // the rest as it is
}

// A transport failure names the method and the partner's origin, never the path, which holds
// event data: a PII value escaped in it ("Jane%20Doe-O%27Brien") got past the masking of logs,
// records, x-ess-reason and audit events.
TEST(RestAdapterTest, ATransportErrorNamesTheOriginNotThePath) {
  log::Init("test", log::Level::kInfo, {"inmateId", "inmate"});
  int port = 0;
  {
    http::Server probe({}, [](http::ServerRequest, http::Responder r) { std::move(r).Send({}); });
    ASSERT_TRUE(probe.Start().ok());
    port = probe.port();
    probe.Stop();  // the port is closed: connections are refused
  }
  const std::string origin = "http://127.0.0.1:" + std::to_string(port);
  http::Client client({});
  auto adapter = BuiltinRegistry().Create(
      WithSettings(Partner(origin),
                   [](ess::v1::RestAdapterConfig& r) {
                     r.set_path("/api/inmates/{inmate}/slots?who={inmate}");
                   }),
      {.http = &client});
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  auto ev = MapEvent(R"({"id":"VIS-1","inmateId":"Jane Doe-O'Brien"})",
                     {{"id", "id"}, {"inmate", "inmateId"}});
  PushResult r = PushAndWait(
      **adapter, {.correlation_id = "VIS-1", .message_id = "MSG-1", .fields = ev->fields});
  log::Init("test", log::Level::kInfo, {});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
  const std::string message(r.status.message());
  EXPECT_THAT(message, ::testing::StartsWith("POST " + origin + ": "));
  for (const std::string& text : {message, r.detail}) {
    EXPECT_THAT(text, ::testing::Not(HasSubstr("Jane"))) << text;
    EXPECT_THAT(text, ::testing::Not(HasSubstr("/api/inmates"))) << text;
  }
}

TEST(RestAdapterTest, PullMapsTheCallback) {
  auto adapter = BuiltinRegistry().Create(Partner("http://127.0.0.1:9"), {});
  ASSERT_TRUE(adapter.ok());
  auto events = (*adapter)->Pull({.body = R"({"id":"VIS-77","status":"confirmed"})"});
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].body, R"({"type":"SlotConfirmed","id":"VIS-77","status":"confirmed"})");
  EXPECT_EQ((*events)[0].correlation_id, "VIS-77");
  EXPECT_EQ((*events)[0].event_type, "SlotConfirmed");
  auto bad = (*adapter)->Pull({.body = R"({"status":"confirmed"})"});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "missing required field \"id\" (for \"id\")");
  bad = (*adapter)->Pull({.body = "not json"});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RestAdapterTest, FactoryRejectsBadSettings) {
  auto p = Partner("ftp://x");
  auto a = BuiltinRegistry().Create(p, {});
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(a.status().message()),
              HasSubstr("partners[prison].settings.base_url: must start with http"));
  // A configured header must be one header line.
  auto with_settings = [](auto change) {
    ess::v1::PartnerConfig partner = Partner("http://127.0.0.1:9");
    ess::v1::RestAdapterConfig rest;
    EXPECT_TRUE(partner.settings().UnpackTo(&rest));
    change(rest);
    partner.mutable_settings()->PackFrom(rest);
    return BuiltinRegistry().Create(partner, {}).status();
  };
  absl::Status s = with_settings([](ess::v1::RestAdapterConfig& r) {
    (*r.mutable_headers())["X-Api-Key"] = "k1\r\nX-Injected: yes";
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "partners[prison].settings.headers.X-Api-Key: header X-Api-Key: value holds a CR, LF "
            "or NUL");
  s = with_settings([](ess::v1::RestAdapterConfig& r) { (*r.mutable_headers())["X-A:B"] = "k"; });
  EXPECT_THAT(std::string(s.message()), HasSubstr("partners[prison].settings.headers.X-A:B: "));
  s = with_settings(
      [](ess::v1::RestAdapterConfig& r) { r.set_correlation_header("X-Cid\nX-Injected"); });
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("partners[prison].settings.correlation_header: header name"));
  p.set_adapter("fax");
  EXPECT_EQ(BuiltinRegistry().Create(p, {}).status().code(), absl::StatusCode::kNotFound);
}

// A configured Content-Type (a vendor media type) replaces the adapter's application/json: the
// partner gets one. Before, it got two Content-Types (and two Idempotency-Keys, now refused).
TEST(RestAdapterTest, AConfiguredContentTypeReplacesTheDefault) {
  absl::Mutex mu;
  http::HeaderList seen;
  http::Server server({}, [&](http::ServerRequest req, http::Responder r) {
    {
      absl::MutexLock lock(&mu);
      seen = req.headers;
    }
    std::move(r).Send({.status = 201, .body = "{}"});
  });
  ASSERT_TRUE(server.Start().ok());
  http::Client client({});
  auto adapter = BuiltinRegistry().Create(
      WithSettings(Partner("http://127.0.0.1:" + std::to_string(server.port())),
                   [](ess::v1::RestAdapterConfig& r) {
                     (*r.mutable_headers())["content-type"] = "application/vnd.partner+json";
                   }),
      {.http = &client});
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  auto ev = MapVisit();
  PushResult r = PushAndWait(
      **adapter, {.correlation_id = "VIS-1", .message_id = "MSG-1", .fields = ev->fields});
  EXPECT_TRUE(r.status.ok()) << r.status;
  server.Stop();
  absl::MutexLock lock(&mu);
  std::vector<std::string> types, keys;
  for (const auto& [name, value] : seen) {
    if (name == "content-type") types.push_back(value);
    if (name == "idempotency-key") keys.push_back(value);
  }
  EXPECT_THAT(types, ::testing::ElementsAre("application/vnd.partner+json"));
  EXPECT_THAT(keys, ::testing::ElementsAre("MSG-1"));
}

// The Idempotency-Key and the correlation header are the hub's: a configured one is refused,
// whatever its case, naming it.
TEST(RestAdapterTest, FactoryRefusesHeadersTheAdapterSets) {
  auto create = [](auto change) {
    return BuiltinRegistry()
        .Create(WithSettings(Partner("http://127.0.0.1:9"), change), {})
        .status();
  };
  absl::Status s = create(
      [](ess::v1::RestAdapterConfig& r) { (*r.mutable_headers())["Idempotency-Key"] = "static"; });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "partners[prison].settings.headers.Idempotency-Key: is set by the adapter (the "
            "event's message id, per event)");
  s = create(
      [](ess::v1::RestAdapterConfig& r) { (*r.mutable_headers())["idempotency-KEY"] = "static"; });
  EXPECT_THAT(
      std::string(s.message()),
      HasSubstr("partners[prison].settings.headers.idempotency-KEY: is set by the adapter"));
  s = create(
      [](ess::v1::RestAdapterConfig& r) { (*r.mutable_headers())["x-correlation-id"] = "static"; });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "partners[prison].settings.headers.x-correlation-id: is set by the adapter (the "
            "correlation id; see correlation_header)");
  s = create([](ess::v1::RestAdapterConfig& r) {
    r.set_correlation_header("X-Trace-Id");
    (*r.mutable_headers())["X-TRACE-ID"] = "static";
  });
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("partners[prison].settings.headers.X-TRACE-ID: is set by the adapter"));
  // With another correlation header, X-Correlation-ID is the partner's own.
  EXPECT_TRUE(create([](ess::v1::RestAdapterConfig& r) {
                r.set_correlation_header("X-Trace-Id");
                (*r.mutable_headers())["X-Correlation-ID"] = "tenant-7";
              }).ok());
}

TEST(RestAdapterTest, FactoryChecksThePathsPlaceholdersAgainstTheMapping) {
  auto with_path = [](const std::string& path) {
    ess::v1::PartnerConfig p = Partner("http://127.0.0.1:9");
    ess::v1::RestAdapterConfig rest;
    EXPECT_TRUE(p.settings().UnpackTo(&rest));
    rest.set_path(path);
    p.mutable_settings()->PackFrom(rest);
    for (const char* target : {"ref", "inmate"}) {
      auto* f = p.mutable_outbound()->add_mapping();
      f->set_target(target);
      f->set_source(target);
    }
    return BuiltinRegistry().Create(p, {}).status();
  };
  EXPECT_TRUE(with_path("/v2/visits/{ref}/inmates/{inmate}").ok());
  absl::Status s = with_path("/v2/visits/{reference}");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "partners[prison].settings.path: placeholder {reference} is not a target of "
            "outbound.mapping");
  EXPECT_EQ(with_path("/v2/visits/{ref").message(),
            "partners[prison].settings.path: placeholder at offset 11 has no closing }");
  EXPECT_EQ(with_path("/v2/visits/{}").message(),
            "partners[prison].settings.path: placeholder at offset 11 has no name");
}

// A partner that follows the IETF Idempotency-Key draft answers 409 to a repeat of a key whose
// first request it is still processing: to a retry that is retryable, with the reason said;
// to a first attempt it stays a conflict (permanent). 425 Too Early is retryable on any attempt.
TEST(RestAdapterTest, A409ToARetryIsRetryableAndToAFirstAttemptPermanent) {
  std::atomic<int> answer{409};
  std::atomic<int> hits{0};
  http::Server server({}, [&](http::ServerRequest req, http::Responder r) {
    ++hits;
    EXPECT_EQ(req.Header("idempotency-key"), "MSG-1");
    std::move(r).Send({.status = answer.load(), .body = R"({"error":"in progress"})"});
  });
  ASSERT_TRUE(server.Start().ok());
  http::Client client({});
  auto adapter = BuiltinRegistry().Create(
      Partner("http://127.0.0.1:" + std::to_string(server.port())), {.http = &client});
  ASSERT_TRUE(adapter.ok());
  auto ev = MapVisit();
  auto push = [&](uint32_t attempt) {
    return PushAndWait(**adapter, {.correlation_id = "VIS-1",
                                   .message_id = "MSG-1",
                                   .fields = ev->fields,
                                   .attempt = attempt});
  };
  PushResult first = push(1);
  EXPECT_EQ(first.status.code(), absl::StatusCode::kInvalidArgument) << first.status;
  EXPECT_EQ(first.status.message(), R"(partner answered HTTP 409: {"error":"in progress"})");
  PushResult retry = push(2);
  EXPECT_EQ(retry.status.code(), absl::StatusCode::kUnavailable) << retry.status;
  EXPECT_TRUE(IsRetryable(retry.status));
  EXPECT_THAT(std::string(retry.status.message()),
              ::testing::StartsWith("HTTP 409 to a retry: the partner may still be processing an "
                                    "earlier attempt with this Idempotency-Key"));
  EXPECT_EQ(retry.detail, "409");
  answer = 422;  // other 4xx stay permanent on a retry
  EXPECT_EQ(push(3).status.code(), absl::StatusCode::kInvalidArgument);
  answer = 425;
  EXPECT_EQ(push(1).status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(hits.load(), 4);
  server.Stop();
}

TEST(HttpStatusTest, ThePartnersAnswerInTheErrorIsMaskedThenCut) {
  log::Init("test", log::Level::kInfo, {"inmateId"});
  std::vector<uint32_t> none;
  absl::Status s = ClassifyHttpStatus(422, none, R"({"error":"unknown inmate","inmateId":"A123"})");
  EXPECT_EQ(s.message(),
            R"(partner answered HTTP 422: {"error":"unknown inmate","inmateId":"***"})");
  // Longer than the excerpt: masked whole first, so a value cut in half is masked too.
  const std::string padding(190, 'x');
  s = ClassifyHttpStatus(500, none, absl::StrCat(R"({"e":")", padding, R"(","inmateId":"A123"})"));
  EXPECT_THAT(std::string(s.message()), ::testing::Not(HasSubstr("A1")));
  EXPECT_EQ(s.message().size(), std::string_view("partner answered HTTP 500: ").size() + 200);
  log::Init("test", log::Level::kInfo, {});
}

TEST(HttpStatusTest, Classification) {
  std::vector<uint32_t> none;
  EXPECT_TRUE(ClassifyHttpStatus(204, none, "").ok());
  EXPECT_EQ(ClassifyHttpStatus(408, none, "").code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(ClassifyHttpStatus(429, none, "").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ClassifyHttpStatus(500, none, "").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ClassifyHttpStatus(301, none, "").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ClassifyHttpStatus(401, none, "").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(ClassifyHttpStatus(403, none, "").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ClassifyHttpStatus(404, none, "no").message(), "partner answered HTTP 404: no");
  std::vector<uint32_t> only201 = {201};
  EXPECT_EQ(ClassifyHttpStatus(200, only201, "").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ClassifyHttpStatus(201, only201, "").ok());
  EXPECT_TRUE(IsRetryable(absl::UnavailableError("")));
  const absl::Time now = absl::FromUnixSeconds(1790000000);  // 2026-09-21T14:13:20Z
  EXPECT_EQ(ParseRetryAfter("120", now), absl::Seconds(120));
  EXPECT_EQ(ParseRetryAfter("", now), absl::ZeroDuration());
  EXPECT_EQ(ParseRetryAfter("soon", now), absl::ZeroDuration());
  EXPECT_EQ(ParseRetryAfter("Mon, 21 Sep 2026 14:15:00 GMT", now), absl::Seconds(100));
  EXPECT_EQ(ParseRetryAfter("Mon, 21 Sep 2026 14:00:00 GMT", now), absl::ZeroDuration());
  EXPECT_FALSE(IsRetryable(absl::InvalidArgumentError("")));
}

}  // namespace
}  // namespace ess::adapters::rest
