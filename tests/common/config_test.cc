#include "common/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "adapters/registry.h"
#include "ess/v1/adapters.pb.h"

namespace ess::config {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<ess::v1::HubConfig> Load(std::string_view yaml) {
  return LoadString(yaml, "hub.yaml", "/etc/ess", adapters::BuiltinRegistry().SettingsResolver());
}

constexpr char kGood[] = R"(
bus:
  host: 127.0.0.1
  port: 5673
replay:
  listen: 127.0.0.1:50051
  database_path: data/replay.db
inbound:
  listen: 127.0.0.1:8080
logging:
  pii_fields: [inmateId, inmate]
partners:
  - name: prison_calendar
    adapter: rest
    settings:
      base_url: http://127.0.0.1:9000
      path: /api/slots
      headers: {X-Api-Key: abc}
      success_codes: [200, 201]
    outbound:
      queue: visit_updates
      mapping:
        - {target: id, source: id}
        - {target: inmate, source: inmateId}
        - {target: slot, source: slotUtc}
    inbound:
      webhook_path: /webhook/prison
      mapping:
        - {target: type, constant: SlotConfirmed}
        - {target: id, source: id}
        - {target: status, source: status}
)";

// Every relative path of the file is taken from the file's folder, the adapters' files too
// (ca_file, private_key_file, known_hosts_file); absolute ones are kept.
TEST(ConfigTest, RelativeFilesOfTheAdaptersAreTakenFromTheConfigFolder) {
  std::string yaml = kGood;
  yaml += R"(
  - name: probation
    adapter: sftp_csv
    settings: {host: h, user: u, private_key_file: keys/probation, known_hosts_file: /k/hosts}
    inbound: {poll: {remote_dir: /out, processed_dir: /done}, mapping: [{target: id, source: id}]}
  - name: calendar
    adapter: soap
    settings: {endpoint: "https://calendar.example/ws", ca_file: ../certs/ca.pem}
    inbound: {webhook_path: /soap, mapping: [{target: id, source: id}]}
)";
  auto c = Load(yaml);
  ASSERT_TRUE(c.ok()) << c.status();
  ess::v1::SftpCsvAdapterConfig sftp;
  ASSERT_TRUE(c->partners(1).settings().UnpackTo(&sftp));
  EXPECT_EQ(sftp.private_key_file(), "/etc/ess/keys/probation");
  EXPECT_EQ(sftp.known_hosts_file(), "/k/hosts");
  ess::v1::SoapAdapterConfig soap;
  ASSERT_TRUE(c->partners(2).settings().UnpackTo(&soap));
  EXPECT_EQ(soap.ca_file(), "/etc/certs/ca.pem");
}

TEST(ConfigTest, LoadsAndFillsDefaults) {
  auto c = Load(kGood);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bus().port(), 5673u);
  EXPECT_EQ(c->bus().vhost(), "/");
  EXPECT_EQ(c->bus().user(), "guest");
  EXPECT_EQ(c->bus().heartbeat_seconds(), 30u);
  EXPECT_EQ(c->bus().events_exchange(), "events");
  EXPECT_EQ(c->replay().address(), "127.0.0.1:50051");
  EXPECT_EQ(c->replay().database_path(), "/etc/ess/data/replay.db");
  EXPECT_EQ(c->replay().batch_max(), 256u);
  EXPECT_EQ(c->replay().batch_delay_ms(), 2u);
  EXPECT_EQ(c->replay().record_delay_ms(), 20u);
  EXPECT_EQ(c->outbound().prefetch(), 256u);
  ASSERT_EQ(c->partners_size(), 1);
  const auto& p = c->partners(0);
  EXPECT_EQ(p.outbound().max_in_flight(), 64u);
  EXPECT_EQ(p.outbound().retry().max_attempts(), 5u);
  EXPECT_EQ(p.outbound().mapping(1).source(), "inmateId");
  EXPECT_EQ(p.inbound().mapping(0).constant(), "SlotConfirmed");
  ess::v1::RestAdapterConfig rest;
  ASSERT_TRUE(p.settings().UnpackTo(&rest));
  EXPECT_EQ(rest.base_url(), "http://127.0.0.1:9000");
  EXPECT_EQ(rest.headers().at("X-Api-Key"), "abc");
  EXPECT_THAT(rest.success_codes(), ::testing::ElementsAre(200, 201));
  EXPECT_THAT(c->logging().pii_fields(), ::testing::ElementsAre("inmateId", "inmate"));
}

// A header the rest adapter sets itself (Idempotency-Key, the correlation header) is refused
// when the service builds the adapters, at its line (the service exits 2).
TEST(ConfigTest, AHeaderTheRestAdapterSetsItselfIsNamedAtItsLine) {
  const auto& registry = adapters::BuiltinRegistry();
  std::string yaml = kGood;
  yaml.replace(yaml.find("{X-Api-Key: abc}"), 16, "{X-Api-Key: abc, idempotency-key: static}");
  auto c =
      LoadString(yaml, "hub.yaml", "/etc/ess", registry.SettingsResolver(),
                 [&](const ess::v1::PartnerConfig& p) { return registry.Create(p, {}).status(); });
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("partners[0].settings.headers.idempotency-key: is set by the adapter"));
  EXPECT_THAT(std::string(c.status().message()), ::testing::StartsWith("hub.yaml:18:"));
}

TEST(ConfigTest, JsonIsAcceptedToo) {
  auto c = Load(R"({"bus": {"port": 5674}, "replay": {"listen": "127.0.0.1:1"}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bus().port(), 5674u);
}

TEST(ConfigTest, UnknownFieldNamesFileLineAndPath) {
  auto c = Load("bus:\n  host: x\n  prot: 5672\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("hub.yaml:3:3: bus.prot: unknown field"));
}

// YAML lets a key be written twice, the last one winning; a hub file that does so was quietly
// half ignored (a second `port:`, a second `partners:` list).
TEST(ConfigTest, AKeyWrittenTwiceIsNamedAtItsRepeat) {
  auto c = Load("bus:\n  port: 1\n  port: 5672\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.status().message(), "hub.yaml:3:3: bus.port: repeated (first at line 2, column 3)");
  // Under its JSON name too.
  c = Load("bus: {events_exchange: a, eventsExchange: b}\n");
  EXPECT_THAT(c.status().message(),
              HasSubstr("bus.eventsExchange: repeated (first at line 1, column 7)"));
  std::string twice = kGood;
  twice += twice.substr(twice.find("partners:"));
  c = Load(twice);
  EXPECT_THAT(c.status().message(), HasSubstr(": partners: repeated (first at line "));
  std::string header = kGood;
  header.replace(header.find("base_url"), 8, "headers: {X-Key: a, X-Key: b}\n      base_url");
  c = Load(header);
  EXPECT_THAT(c.status().message(),
              HasSubstr("partners[0].settings.headers.X-Key: repeated (first at line "));
}

TEST(ConfigTest, WrongTypeNamesTheField) {
  auto c = Load("bus:\n  port: lots\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(),
              HasSubstr("hub.yaml:2:9: bus.port: expected a non-negative integer, got \"lots\""));
}

TEST(ConfigTest, UnknownAdapterIsNamed) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("adapter: rest"), 13, "adapter: fax");
  auto c = Load(yaml);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(),
              HasSubstr(":14:14: partners[0].adapter: unknown adapter \"fax\""));
}

TEST(ConfigTest, UnknownSettingIsNamedWithItsPath) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("base_url"), 8, "baseurl_");
  auto c = Load(yaml);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("partners[0].settings.baseurl_: unknown field"));
}

TEST(ConfigTest, BadMappingIsNamedWithItsPath) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("{target: inmate, source: inmateId}"), 34,
               "{target: inmate, source: \"a..b\"}");
  auto c = Load(yaml);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(),
              HasSubstr("partners[0].outbound.mapping[1].source: bad path \"a..b\""));
}

TEST(ConfigTest, DuplicatePartnersAndQueuesAreRejected) {
  auto c = Load(R"(
partners:
  - {name: a, adapter: rest, settings: {base_url: "http://x"}, outbound: {queue: q, mapping: [{target: id, source: id}]}}
  - {name: a, adapter: rest, settings: {base_url: "http://x"}, outbound: {queue: q, mapping: [{target: id, source: id}]}}
)");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("hub.yaml:4:"));
  EXPECT_THAT(c.status().message(), HasSubstr("partners[1].name: duplicate partner name \"a\""));
}

// A work queue that is another partner's parked or delay queue would have that partner's
// parked (or waiting) events delivered to this one: refused, at the queue's line.
TEST(ConfigTest, AWorkQueueThatIsAnotherPartnersParkedOrDelayQueueIsRejected) {
  auto c = Load(R"(
partners:
  - {name: za, adapter: rest, settings: {base_url: "http://x"}, outbound: {queue: za, mapping: [{target: id, source: id}]}}
  - {name: zb, adapter: rest, settings: {base_url: "http://x"}, outbound: {queue: za.parked, mapping: [{target: id, source: id}]}}
)");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("hub.yaml:4:"));
  EXPECT_THAT(c.status().message(),
              HasSubstr("partners[1].outbound.queue: queue \"za.parked\" is a delay or parked "
                        "queue of partner \"za\""));
  // The first partner's delay queue (default retry: 1000 ms first), named before its owner.
  c = Load(R"(
partners:
  - {name: zb, adapter: rest, settings: {base_url: "http://x"}, outbound: {queue: za.retry.1000ms, mapping: [{target: id, source: id}]}}
  - {name: za, adapter: rest, settings: {base_url: "http://x"}, outbound: {queue: za, mapping: [{target: id, source: id}]}}
)");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("hub.yaml:3:"));
  EXPECT_THAT(c.status().message(),
              HasSubstr("partners[0].outbound.queue: queue \"za.retry.1000ms\" is a delay or "
                        "parked queue of partner \"za\""));
  // Names alike but not the same are fine.
  EXPECT_TRUE(Load(R"(
partners:
  - {name: za, adapter: rest, settings: {base_url: "http://x"}, outbound: {queue: za, mapping: [{target: id, source: id}]}}
  - {name: zb, adapter: rest, settings: {base_url: "http://x"}, outbound: {queue: za.parked2, mapping: [{target: id, source: id}]}}
)")
                  .ok());
}

TEST(ConfigTest, MissingSettingsAndRoutesAreRejected) {
  auto c = Load(
      "partners:\n  - {name: a, adapter: rest, outbound: {queue: q, mapping: [{target: id, source: "
      "id}]}}\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("partners[0].settings: is required"));
  c = Load("partners:\n  - {name: a, adapter: rest, settings: {base_url: \"http://x\"}}\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(),
              HasSubstr("partners[0]: needs an outbound or an inbound route"));
}

TEST(ConfigTest, ReplayCallersNeedANameARoleAndATokenVariable) {
  auto c = Load(R"(
replay:
  auth:
    callers:
      - {name: lanes, role: lane, token_env: ESS_LANE_TOKEN}
      - {name: oncall, role: admin, token_env: ESS_OPS_TOKEN}
)");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      c.status().message(),
      HasSubstr("replay.auth.callers[1].role: unknown role \"admin\" (lane, viewer or ops)"));
  c = Load(R"(
replay:
  auth:
    callers:
      - {name: lanes, role: lane, token_env: ESS_LANE_TOKEN}
      - {name: lanes, role: ops, token_env: ESS_OPS_TOKEN}
)");
  EXPECT_THAT(c.status().message(),
              HasSubstr("replay.auth.callers[1].name: \"lanes\" is already another caller's"));
  c = Load("replay: {auth: {callers: [{name: lanes, role: lane}]}}\n");
  EXPECT_THAT(c.status().message(),
              HasSubstr("replay.auth.callers[0].token_env: must name an environment variable"));
  // The tokens themselves are read by replay_svc at start, not by every service that loads the
  // file: a lane holds its own token only.
  c = Load("replay: {auth: {callers: [{name: lanes, role: lane, token_env: ESS_UNSET_TOKEN}]}}\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->replay().auth().callers(0).role(), "lane");
}

TEST(ConfigTest, ReplayTlsFilesAreTakenFromTheConfigFolderAndCertAndKeyGoTogether) {
  auto c = Load("replay: {tls: {cert_file: server.pem}}\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(),
              HasSubstr("replay.tls.key_file: cert_file and key_file go together"));
  c = Load(
      "replay: {tls: {cert_file: server.pem, key_file: /etc/ess/server.key, ca_file: ca.pem}}\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->replay().tls().key_file(), "/etc/ess/server.key");
  EXPECT_EQ(c->replay().tls().cert_file(), "/etc/ess/server.pem");
  EXPECT_EQ(c->replay().tls().ca_file(), "/etc/ess/ca.pem");
  c = Load("replay: {tls: {ca_file: ca.pem, client_cert_file: lane.pem}}\n");
  EXPECT_THAT(c.status().message(),
              HasSubstr("replay.tls.client_key_file: client_cert_file and client_key_file go "
                        "together"));
  c = Load("replay: {tls: {client_ca_file: ca.pem}}\n");
  EXPECT_THAT(c.status().message(),
              HasSubstr("replay.tls.client_ca_file: needs cert_file and key_file"));
}

TEST(ConfigTest, RetentionNeverReachesIntoTheDedupeWindow) {
  auto c =
      Load("inbound: {dedupe_window_seconds: 600}\nreplay: {retention: {max_age_seconds: 60}}\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("replay.retention.max_age_seconds: must be at least "
                                              "inbound.dedupe_window_seconds (600)"));
  c = Load("replay: {retention: {max_age_seconds: 604800}}\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->replay().retention().sweep_interval_seconds(), 300u);
}

// Drift: a partner that says how soon it confirms is watched over replay.drift's window, which
// must reach past that delay, and retention must keep its deliveries at least that long.
TEST(ConfigTest, HowSoonAPartnerConfirmsFitsTheDriftWindowAndRetention) {
  auto c = Load(kGood);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->replay().drift().check_interval_seconds(), 60u);
  EXPECT_EQ(c->replay().drift().window_seconds(), 86400u);
  EXPECT_EQ(c->partners(0).outbound().confirm_within_seconds(), 0u);  // not watched

  const std::string queue = "      queue: visit_updates\n";
  const std::string database = "  database_path: data/replay.db\n";
  std::string watched = kGood;
  watched.replace(watched.find(queue), queue.size(),
                  queue + "      confirm_within_seconds: 3600\n");
  c = Load(watched);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->partners(0).outbound().confirm_within_seconds(), 3600u);

  auto with_replay = [&](const std::string& line) {
    std::string yaml = watched;
    yaml.replace(yaml.find(database), database.size(), database + line);
    return Load(yaml);
  };
  c = with_replay("  drift: {window_seconds: 3600, check_interval_seconds: 5}\n");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(),
              HasSubstr("hub.yaml:23:31: partners[0].outbound.confirm_within_seconds: must be "
                        "below replay.drift.window_seconds (3600)"));
  c = with_replay("  drift: {window_seconds: 3601, check_interval_seconds: 5}\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->replay().drift().check_interval_seconds(), 5u);
  c = with_replay("  retention: {max_age_seconds: 1800}\n");
  EXPECT_THAT(c.status().message(),
              HasSubstr("partners[0].outbound.confirm_within_seconds: must be below "
                        "replay.retention.max_age_seconds (1800)"));
  c = with_replay("  drift: {window_seconds: 40000000}\n");
  EXPECT_THAT(c.status().message(),
              HasSubstr("replay.drift.window_seconds: must be at most a year (31536000)"));
}

// The store on PostgreSQL: its connection string comes from the environment (only replay_svc
// reads it), and a database_path beside it is refused rather than silently ignored.
TEST(ConfigTest, APostgresStoreNamesItsConnectionStringVariableAndNoFile) {
  auto c = Load("replay: {postgres: {dsn_env: ESS_REPLAY_DSN}}\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->replay().postgres().dsn_env(), "ESS_REPLAY_DSN");
  EXPECT_EQ(c->replay().postgres().max_connections(), 8u);
  EXPECT_EQ(c->replay().database_path(), "");
  c = Load("replay: {postgres: {max_connections: 4}}\n");
  EXPECT_THAT(c.status().message(),
              HasSubstr("replay.postgres.dsn_env: must name an environment variable"));
  c = Load("replay:\n  database_path: replay.db\n  postgres: {dsn_env: ESS_REPLAY_DSN}\n");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(),
              HasSubstr("hub.yaml:2:18: replay.database_path: the store is on PostgreSQL"));
}

TEST(ConfigTest, YamlSyntaxErrorHasALine) {
  auto c = Load("bus:\n  host: [unclosed\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  // file:line:col of where the parser gave up (line 3: the end of the text).
  EXPECT_THAT(std::string(c.status().message()),
              ::testing::StartsWith("hub.yaml:3:1: end of sequence"));
}

TEST(ConfigTest, MissingFileIsNotFound) {
  auto c = LoadFile("/nonexistent/hub.yaml");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("/nonexistent/hub.yaml"));
}

// `--config .` named a folder, which read as an empty file: "inbound.listen is required".
TEST(ConfigTest, AFolderIsNotAConfigFile) {
  auto c = LoadFile("/tmp");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.status().message(), "/tmp: is a directory; --config takes the hub's YAML file");
}

TEST(ConfigTest, PasswordFromEnvironment) {
  setenv("ESS_TEST_BUS_PASSWORD", "s3cret", 1);
  auto c = Load("bus: {password_env: ESS_TEST_BUS_PASSWORD}\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bus().password(), "s3cret");
  c = Load("bus: {password_env: ESS_TEST_UNSET_VARIABLE}\n");
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("bus.password_env: environment variable"));
}

TEST(ConfigTest, WebhookSecretsComeFromTheEnvironmentOfTheInboundLaneOnly) {
  auto with_auth = [](std::string_view auth) {
    std::string yaml = kGood;
    const std::string path = "      webhook_path: /webhook/prison\n";
    yaml.replace(yaml.find(path), path.size(),
                 absl::StrCat(path, "      auth: ", std::string(auth), "\n"));
    return Load(yaml);
  };
  setenv("ESS_TEST_WEBHOOK_SECRETS",
         " whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw  whsec_c2VjcmV0LW9mLWEtcm90YXRlZC1lbmRwb2ludCEh ",
         1);
  auto c = with_auth("{secrets_env: ESS_TEST_WEBHOOK_SECRETS}");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->partners(0).inbound().auth().tolerance_seconds(), 300u);
  EXPECT_TRUE(WebhookVerifier(c->partners(0).inbound().auth()).ok());

  // Loading does not read the secrets (the outbound lane and the store never hold them);
  // inbound_svc builds the verifier at start, and that fails naming the variable.
  c = with_auth("{secrets_env: ESS_TEST_UNSET_SECRETS, tolerance_seconds: 60}");
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<webhook::SignatureVerifier> v = WebhookVerifier(c->partners(0).inbound().auth());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(v.status().message(), "environment variable ESS_TEST_UNSET_SECRETS is not set");

  setenv("ESS_TEST_BAD_SECRETS", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_hunter2!", 1);
  c = with_auth("{secrets_env: ESS_TEST_BAD_SECRETS}");
  ASSERT_TRUE(c.ok()) << c.status();
  v = WebhookVerifier(c->partners(0).inbound().auth());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(v.status().message(),
              HasSubstr("environment variable ESS_TEST_BAD_SECRETS: secret 2 is not \"whsec_\" "
                        "followed by base64"));
  EXPECT_THAT(v.status().message(), ::testing::Not(HasSubstr("hunter2")));

  c = with_auth("{tolerance_seconds: 60}");
  EXPECT_THAT(c.status().message(),
              HasSubstr("partners[0].inbound.auth.secrets_env: must name an environment variable"));

  // A signed call is good for tolerance_seconds either side of its time: the dedupe window
  // (600 by default) must remember it that long, twice over.
  c = with_auth("{secrets_env: ESS_TEST_WEBHOOK_SECRETS, tolerance_seconds: 301}");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(),
              HasSubstr(":28:"));  // the line of the auth map
  EXPECT_THAT(c.status().message(),
              HasSubstr("partners[0].inbound.auth.tolerance_seconds: must be at most half of "
                        "inbound.dedupe_window_seconds (600)"));
}

TEST(ConfigTest, AnIdHeaderIsAHeaderNameOfAnUnsignedWebhookRoute) {
  auto with = [](std::string_view lines) {
    std::string yaml = kGood;
    const std::string path = "      webhook_path: /webhook/prison\n";
    yaml.replace(yaml.find(path), path.size(), path + std::string(lines));
    return Load(yaml);
  };
  auto c = with("      id_header: X-Delivery-Id\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->partners(0).inbound().id_header(), "X-Delivery-Id");

  c = with("      id_header: X Delivery\n");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("partners[0].inbound.id_header: \"X Delivery\" is "
                                              "not a header name"));
  setenv("ESS_TEST_ID_HEADER_SECRETS", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 1);
  c = with(
      "      id_header: X-Delivery-Id\n      auth: {secrets_env: ESS_TEST_ID_HEADER_SECRETS}\n");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(),
              HasSubstr("partners[0].inbound.id_header: a signed route's calls are known by "
                        "their signed webhook-id"));

  // A pulled file has no headers to read an id from.
  std::string pulled = kGood;
  pulled += R"(
  - name: probation
    adapter: sftp_csv
    settings: {host: h, user: u, private_key_file: /k/probation, known_hosts_file: /k/hosts}
    inbound:
      poll: {remote_dir: /out, processed_dir: /done}
      id_header: X-Delivery-Id
      mapping: [{target: id, source: id}]
)";
  c = Load(pulled);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("partners[1].inbound.id_header: names a webhook header: needs a "
                        "webhook_path"));
}

// inbound_svc serves its probes and metrics on the webhook port: a partner's path cannot take
// one of them.
TEST(ConfigTest, AWebhookPathCannotBeAnEndpointOfTheLanesOwn) {
  for (const char* reserved : {"/healthz", "/readyz", "/metrics"}) {
    std::string yaml = kGood;
    yaml.replace(yaml.find("/webhook/prison"), 15, reserved);
    auto c = Load(yaml);
    ASSERT_FALSE(c.ok()) << reserved;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(c.status().message(),
              absl::StrCat("hub.yaml:27:21: partners[0].inbound.webhook_path: \"", reserved,
                           "\" is inbound_svc's own (/healthz, /readyz and /metrics are "
                           "reserved)"));
  }
  // A path under one of them is a path of its own.
  std::string yaml = kGood;
  yaml.replace(yaml.find("/webhook/prison"), 15, "/healthz/prison");
  EXPECT_TRUE(Load(yaml).ok());
}

// A service's own check of its partners (building each adapter) is reported like any other
// error: at the line of the setting, with the partner's index.
TEST(ConfigTest, AnAdapterSettingRefusedByTheServiceIsNamedAtItsLine) {
  std::string yaml = kGood;
  yaml.replace(yaml.find("http://127.0.0.1:9000"), 21, "ftp://127.0.0.1:9000");
  ASSERT_TRUE(Load(yaml).ok());  // the loader alone knows nothing of adapters' rules
  const auto& registry = adapters::BuiltinRegistry();
  auto c =
      LoadString(yaml, "hub.yaml", "/etc/ess", registry.SettingsResolver(),
                 [&](const ess::v1::PartnerConfig& p) { return registry.Create(p, {}).status(); });
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.status().message(),
            "hub.yaml:16:17: partners[0].settings.base_url: must start with http:// or https://");
  // An error in another form is placed at the partner.
  c = LoadString(kGood, "hub.yaml", "/etc/ess", registry.SettingsResolver(),
                 [](const ess::v1::PartnerConfig&) { return absl::UnavailableError("no route"); });
  EXPECT_EQ(c.status().message(), "hub.yaml:13:5: partners[0]: no route");
}

// A partner's ca_file that cannot be read is refused when the service builds the adapters, at
// its line (the service exits 2).
TEST(ConfigTest, APartnersUnreadableCaFileIsNamedAtItsLine) {
  const auto& registry = adapters::BuiltinRegistry();
  std::string yaml = kGood;
  yaml.replace(yaml.find("      path: /api/slots\n"), 0, "      ca_file: partner-ca.pem\n");
  auto c =
      LoadString(yaml, "hub.yaml", "/nonexistent-ess", registry.SettingsResolver(),
                 [&](const ess::v1::PartnerConfig& p) { return registry.Create(p, {}).status(); });
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
  EXPECT_EQ(c.status().message(),
            "hub.yaml:17:16: partners[0].settings.ca_file: cannot read "
            "/nonexistent-ess/partner-ca.pem");
}

TEST(ConfigTest, DurationsAndWidthsHaveBounds) {
  std::string yaml = kGood;
  const std::string queue = "      queue: visit_updates\n";
  yaml.replace(yaml.find(queue), queue.size(),
               queue + "      retry: {max_age_ms: 18446744073709551615}\n");
  auto c = Load(yaml);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(),
              HasSubstr("partners[0].outbound.retry.max_age_ms: must be at most a year"));

  yaml = kGood;
  yaml.replace(yaml.find("{target: inmate, source: inmateId}"), 34,
               "{target: inmate, source: inmateId, width: 4000000000}");
  c = Load(yaml);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(),
              HasSubstr("partners[0].outbound.mapping[1].width: must be at most 4096"));

  yaml = kGood;
  yaml.replace(yaml.find("bus:\n"), 5, "bus:\n  audit_batch_max: 1001\n");
  c = Load(yaml);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("bus.audit_batch_max: must be at most 1000"));
  yaml = kGood;
  yaml.replace(yaml.find("bus:\n"), 5, "bus:\n  audit_batch_max: 1000\n");
  c = Load(yaml);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bus().audit_batch_max(), 1000u);
}

// A polled file is read whole into memory: its size limit has a default and a ceiling, and a
// value over it is named at its line.
TEST(ConfigTest, APollsMaxFileBytesHasADefaultAndACeiling) {
  auto with = [](const std::string& setting) {
    return absl::StrCat(kGood, R"yaml(
  - name: probation
    adapter: sftp_csv
    settings: {host: h, user: u, private_key_file: /k/probation, known_hosts_file: /k/hosts}
    inbound:
      mapping: [{target: id, source: id}]
      poll:
        remote_dir: /out
        processed_dir: /done
)yaml",
                        setting);
  };
  auto c = Load(with(""));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->partners(1).inbound().poll().max_file_bytes(), uint64_t{64} << 20);
  c = Load(with("        max_file_bytes: 1000\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->partners(1).inbound().poll().max_file_bytes(), 1000u);
  c = Load(with("        max_file_bytes: 1073741824\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->partners(1).inbound().poll().max_file_bytes(), uint64_t{1} << 30);

  const std::string yaml = with("        max_file_bytes: 1073741825\n");
  c = Load(yaml);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  // The line of the setting (the last one), the column of its value.
  const size_t line = std::count(yaml.begin(), yaml.end(), '\n');
  EXPECT_EQ(c.status().message(),
            absl::StrCat("hub.yaml:", line,
                         ":25: partners[1].inbound.poll.max_file_bytes: must be "
                         "at most 1073741824 (1 GiB): a polled file is read whole into memory"));
  c = Load(with("        max_file_bytes: -1\n"));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("partners[1].inbound.poll.max_file_bytes: expected "
                                              "a non-negative integer"));
}

}  // namespace
}  // namespace ess::config
