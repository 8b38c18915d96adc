// The inbound SFTP poll on real parts: the replay_svc and inbound_svc binaries, the RabbitMQ that
// ./test.sh started (ESS_AMQP_HOST, ESS_AMQP_PORT) and the private OpenSSH server of
// scripts/sshd.sh (ESS_SFTP_HOST, ESS_SFTP_PORT, ESS_SFTP_USER, ESS_SFTP_KEY,
// ESS_SFTP_KNOWN_HOSTS, ESS_SFTP_ROOT). Missing variables fail the tests.
//
// The server runs on this machine without a chroot, so the tests drop files straight into
// folders under ESS_SFTP_ROOT (written as ".NAME.part" and renamed, as a partner would) and read
// the outcome from there. Every test has its own folders, partner name, exchange and store.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "adapters/registry.h"
#include "adapters/sftp_csv/sftp_client.h"
#include "common/amqp.h"
#include "common/config.h"
#include "common/http_client.h"
#include "common/replay_client.h"
#include "ess/v1/event.pb.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "tests/integration/harness.h"

namespace ess {
namespace {

namespace fs = std::filesystem;
using adapters::sftp_csv::SftpClient;
using testing::BinaryPath;
using ::testing::HasSubstr;
using testing::Process;
using testing::RequiredEnv;
using ::testing::UnorderedElementsAre;
using testing::WaitFor;

constexpr absl::Duration kFileTimeout = absl::Seconds(60);

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Writes `data` as DIR/.NAME.part, then renames it to DIR/NAME, as a partner's upload would.
void Drop(const fs::path& dir, const std::string& name, const std::string& data) {
  const fs::path part = dir / absl::StrCat(".", name, ".part");
  {
    std::ofstream out(part, std::ios::binary);
    out << data;
  }
  fs::rename(part, dir / name);
}

std::string Sha16(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), 8));
}

std::string Header(const amqp::Message& m, const std::string& name) {
  for (const auto& [k, v] : m.headers) {
    if (k == name) return v;
  }
  return "<absent>";
}

SftpClient::Options ClientOptions() {
  return {.host = RequiredEnv("ESS_SFTP_HOST"),
          .port = static_cast<uint32_t>(std::stoul(RequiredEnv("ESS_SFTP_PORT"))),
          .user = RequiredEnv("ESS_SFTP_USER"),
          .private_key_file = RequiredEnv("ESS_SFTP_KEY"),
          .known_hosts_file = RequiredEnv("ESS_SFTP_KNOWN_HOSTS"),
          .timeout = absl::Seconds(10)};
}

// A folder of its own under ESS_SFTP_ROOT, removed at the end.
class RemoteDir {
 public:
  RemoteDir() : path_(fs::path(RequiredEnv("ESS_SFTP_ROOT")) / testing::UniqueName("poll")) {
    fs::create_directories(path_);
  }
  ~RemoteDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// --- SftpClient: the calls the poller adds --------------------------------------------------

TEST(SftpClientTest, ListsDownloadsRenamesAndRemoves) {
  RemoteDir root;
  const fs::path& d = root.path();
  fs::create_directories(d / "sub");
  Drop(d, "a.csv", "id\r\nVIS-1\r\n");
  Drop(d, "b name.csv", std::string(1000, 'x'));
  SftpClient client(ClientOptions());

  auto names = client.List(d.string());
  ASSERT_TRUE(names.ok()) << names.status();
  EXPECT_THAT(*names, UnorderedElementsAre("a.csv", "b name.csv", "sub"));

  auto data = client.Download((d / "a.csv").string(), 1 << 20);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(*data, "id\r\nVIS-1\r\n");
  auto spaced = client.Download((d / "b name.csv").string(), 1000);
  ASSERT_TRUE(spaced.ok()) << spaced.status();
  EXPECT_EQ(spaced->size(), 1000u);
  EXPECT_EQ(client.Download((d / "b name.csv").string(), 999).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(client.Download((d / "missing.csv").string(), 1000).status().code(),
            absl::StatusCode::kNotFound);
  // Stat: the size and the modification time (whole seconds) the file system has.
  fs::last_write_time(d / "b name.csv", fs::file_time_type::clock::now() - std::chrono::hours(30));
  auto stat = client.Stat((d / "b name.csv").string());
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(stat->size, 1000u);
  struct stat local;
  ASSERT_EQ(::stat((d / "b name.csv").c_str(), &local), 0);
  EXPECT_EQ(stat->mtime, static_cast<int64_t>(local.st_mtime));
  EXPECT_EQ(client.Stat((d / "missing.csv").string()).status().code(), absl::StatusCode::kNotFound);
  // Once its stop is notified, a client's calls end with CANCELLED.
  absl::Notification stop;
  SftpClient stopping(ClientOptions(), &stop);
  ASSERT_TRUE(stopping.Exists(d.string()).ok());
  stop.Notify();
  EXPECT_EQ(stopping.Download((d / "b name.csv").string(), 1000).status().code(),
            absl::StatusCode::kCancelled);

  // Rename never overwrites.
  EXPECT_EQ(client.Rename((d / "a.csv").string(), (d / "b name.csv").string()).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ReadFile(d / "b name.csv").size(), 1000u);
  ASSERT_TRUE(client.Rename((d / "a.csv").string(), (d / "sub" / "a.csv").string()).ok());
  EXPECT_FALSE(fs::exists(d / "a.csv"));
  EXPECT_EQ(ReadFile(d / "sub" / "a.csv"), "id\r\nVIS-1\r\n");
  EXPECT_EQ(client.Rename((d / "a.csv").string(), (d / "c.csv").string()).code(),
            absl::StatusCode::kNotFound);

  ASSERT_TRUE(client.Remove((d / "b name.csv").string()).ok());
  EXPECT_FALSE(fs::exists(d / "b name.csv"));
  EXPECT_EQ(client.Remove((d / "b name.csv").string()).code(), absl::StatusCode::kNotFound);

  auto there = client.Exists((d / "sub").string());
  ASSERT_TRUE(there.ok()) << there.status();
  EXPECT_TRUE(*there);
  there = client.Exists((d / "nothing").string());
  ASSERT_TRUE(there.ok()) << there.status();
  EXPECT_FALSE(*there);
  EXPECT_EQ(client.List((d / "nothing").string()).status().code(), absl::StatusCode::kUnavailable);
}

// --- Config: what a poll route needs -------------------------------------------------------

absl::Status LoadPartner(const std::string& partner_yaml) {
  const std::string yaml = absl::StrCat("partners:\n", partner_yaml);
  return config::LoadString(yaml, "hub.yaml", "/tmp",
                            adapters::BuiltinRegistry().SettingsResolver())
      .status();
}

TEST(SftpPollConfigTest, PollRoutesAreValidated) {
  constexpr char kSftp[] = R"(
  - name: files
    adapter: sftp_csv
    settings: {host: h, user: u, private_key_file: k, known_hosts_file: kh}
    inbound:
      mapping: [{target: id, source: id}]
)";
  auto with = [&](const std::string& inbound_extra, const std::string& adapter = "sftp_csv") {
    std::string p = absl::StrReplaceAll(kSftp, {{"adapter: sftp_csv", "adapter: " + adapter}});
    if (adapter != "sftp_csv") {
      p = absl::StrReplaceAll(p, {{"{host: h, user: u, private_key_file: k, known_hosts_file: kh}",
                                   "{base_url: \"http://127.0.0.1:1\"}"}});
    }
    return LoadPartner(absl::StrCat(p, inbound_extra));
  };
  EXPECT_THAT(with("").message(), HasSubstr("partners[0].inbound: needs a webhook_path or a poll"));
  EXPECT_TRUE(with("      poll: {remote_dir: /out, processed_dir: /out/done}\n").ok());
  EXPECT_THAT(with("      poll: {processed_dir: /done}\n").message(),
              HasSubstr("partners[0].inbound.poll.remote_dir: must be an absolute path"));
  EXPECT_THAT(with("      poll: {remote_dir: /out}\n").message(),
              HasSubstr("partners[0].inbound.poll.processed_dir: must be an absolute path"));
  EXPECT_THAT(with("      poll: {remote_dir: /out, processed_dir: /out/}\n").message(),
              HasSubstr("processed_dir: must differ from remote_dir"));
  EXPECT_THAT(with("      poll: {remote_dir: /out, processed_dir: /done}\n", "rest").message(),
              HasSubstr("partners[0].inbound.poll: adapter \"rest\" cannot pull files"));
  // A webhook alone is still fine.
  EXPECT_TRUE(with("      webhook_path: /hook\n", "rest").ok());
  // Two polls of one folder (the same host, port and remote_dir) would each take its files.
  auto two = [&](const std::string& second_settings, const std::string& second_dir) {
    std::string second = absl::StrReplaceAll(
        kSftp,
        {{"name: files", "name: files2"},
         {"{host: h, user: u, private_key_file: k, known_hosts_file: kh}", second_settings}});
    return LoadPartner(absl::StrCat(kSftp, "      poll: {remote_dir: /out, processed_dir: /d}\n",
                                    second, "      poll: {remote_dir: ", second_dir,
                                    ", processed_dir: /d2}\n"));
  };
  EXPECT_EQ(two("{host: H, port: 22, user: v, private_key_file: k, known_hosts_file: kh}", "/out/")
                .message(),
            "hub.yaml:15:26: partners[1].inbound.poll.remote_dir: partners[0] (\"files\") polls "
            "the same folder (host, port and remote_dir)");
  EXPECT_TRUE(
      two("{host: h, port: 2222, user: u, private_key_file: k, known_hosts_file: kh}", "/out")
          .ok());
  EXPECT_TRUE(two("{host: h2, user: u, private_key_file: k, known_hosts_file: kh}", "/out").ok());
  EXPECT_TRUE(two("{host: h, user: u, private_key_file: k, known_hosts_file: kh}", "/out2").ok());

  auto loaded = config::LoadString(
      absl::StrCat("partners:\n", kSftp, "      poll: {remote_dir: /out, processed_dir: /d}\n"),
      "hub.yaml", "/tmp", adapters::BuiltinRegistry().SettingsResolver());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->partners(0).inbound().poll().interval_ms(), 60000u);
  EXPECT_EQ(loaded->partners(0).inbound().poll().settle_ms(), 2000u);
  EXPECT_EQ(loaded->partners(0).inbound().poll().suffix(), ".csv");
  EXPECT_EQ(loaded->partners(0).inbound().poll().max_file_bytes(), uint64_t{64} << 20);
}

// --- The poller in inbound_svc -------------------------------------------------------------

class SftpPollTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker_ = testing::BrokerOptions();
    partner_ = testing::UniqueName("prison_files");
    exchange_ = testing::UniqueName("events");
    subscriber_ = testing::UniqueName("subscriber");
    replay_port_ = testing::FreePort();
    inbound_port_ = testing::FreePort();
    drop_ = root_.path() / "drop";
    processed_ = root_.path() / "processed";
    fs::create_directories(drop_);
    fs::create_directories(processed_);
    auto conn = amqp::Connection::Open(broker_);
    ASSERT_TRUE(conn.ok()) << conn.status();
    ASSERT_TRUE((*conn)
                    ->Apply({.exchanges = {{.name = exchange_, .type = "fanout"}},
                             .queues = {{.name = subscriber_}},
                             .bindings = {{.queue = subscriber_, .exchange = exchange_}}})
                    .ok());
  }

  void TearDown() override {
    if (inbound_) {
      EXPECT_EQ(inbound_->Stop(), 0) << inbound_->Log();
    }
    // An idle gRPC client would hold replay_svc's graceful shutdown for a few seconds.
    stub_.reset();
    if (replay_) {
      EXPECT_EQ(replay_->Stop(), 0) << replay_->Log();
    }
    if (HasFailure()) {
      if (replay_) std::cerr << "---- replay_svc ----\n" << replay_->Log();
      if (inbound_) std::cerr << "---- inbound_svc ----\n" << inbound_->Log();
    }
    auto conn = amqp::Connection::Open(broker_);
    if (conn.ok()) {
      (void)(*conn)->DeleteQueue(subscriber_);
      (void)(*conn)->DeleteQueue(ParkedQueue());
      if (!audit_queue_.empty()) (void)(*conn)->DeleteQueue(audit_queue_);
    }
  }

  // Configures the audit exchange and binds a queue of the test's to it; before StartHub().
  void UseAudit() {
    audit_exchange_ = exchange_ + ".audit";
    auto conn = amqp::Connection::Open(broker_);
    ASSERT_TRUE(conn.ok()) << conn.status();
    audit_queue_ = testing::BindSubscriber(**conn, audit_exchange_);
  }

  // Takes `n` audit events (then checks there are no more), in the order they were published,
  // after checking what every one of them must say.
  std::vector<v1::SyncAudit> TakeAudits(size_t n) {
    std::vector<v1::SyncAudit> out;
    for (const amqp::Delivery& d : Take(audit_queue_, n)) {
      const amqp::Message& m = d.message;
      v1::SyncAudit a;
      auto parsed = google::protobuf::util::JsonStringToMessage(m.body, &a);
      EXPECT_TRUE(parsed.ok()) << parsed.ToString() << ": " << m.body;
      EXPECT_EQ(m.type, "SyncAudit");
      EXPECT_EQ(m.correlation_id, a.correlation_id());
      EXPECT_EQ(m.message_id,
                absl::StrCat(a.message_id(), ":", v1::MessageStatus_Name(a.status()), ":1"));
      EXPECT_EQ(a.direction(), v1::DIRECTION_INBOUND);
      EXPECT_EQ(a.partner(), partner_);
      EXPECT_EQ(a.attempt(), 1u);
      EXPECT_FALSE(a.dry_run());
      // started_at is when the file was downloaded, finished_at when its outcome was settled.
      EXPECT_TRUE(a.has_started_at());
      EXPECT_LE(google::protobuf::util::TimeUtil::TimestampToNanoseconds(a.started_at()),
                google::protobuf::util::TimeUtil::TimestampToNanoseconds(a.finished_at()));
      out.push_back(std::move(a));
    }
    return out;
  }

  // Drops a one-row file "visits_next.csv" and checks that its audit event is the only one
  // queued. The poller emits in order on one channel, so whatever it emitted earlier would be
  // queued ahead of it: this shows that nothing was emitted since the last TakeAudits().
  void ExpectOnlyTheNextFileAudited(const std::string& visit_id) {
    const std::string name = "visits_next.csv";
    const std::string csv = absl::StrCat("visit_id,status\r\n", visit_id, ",confirmed\r\n");
    Drop(drop_, name, csv);
    ASSERT_TRUE(WaitMoved(name, name)) << inbound_->Log();
    std::vector<v1::SyncAudit> audits = TakeAudits(1);
    ASSERT_EQ(audits.size(), 1u);
    EXPECT_EQ(audits[0].message_id(), absl::StrCat(name, ":", Sha16(csv), ":2"));
    EXPECT_EQ(audits[0].correlation_id(), visit_id);
    EXPECT_EQ(audits[0].status(), v1::MESSAGE_STATUS_PUBLISHED);
  }

  std::string ParkedQueue() const { return partner_ + ".inbound.parked"; }

  std::string Config() const {
    return absl::StrReplaceAll(
        R"(
bus:
  host: 127.0.0.1
  port: BUS_PORT
  events_exchange: EXCHANGE
AUDIT_EXCHANGE_SETTING
replay:
  listen: 127.0.0.1:REPLAY_PORT
  database_path: replay.db
RETENTION
inbound:
  listen: 127.0.0.1:INBOUND_PORT
DEDUPE_WINDOW
logging:
  level: info
partners:
  - name: PARTNER
    adapter: sftp_csv
    settings:
      host: SFTP_HOST
      port: SFTP_PORT
      user: SFTP_USER
      private_key_file: SFTP_KEY
      known_hosts_file: SFTP_KNOWN_HOSTS
      timeout_ms: 10000
    inbound:
      poll:
        remote_dir: DROP
        processed_dir: PROCESSED
        interval_ms: 200
        settle_ms: SETTLE_MS
MAX_FILE_BYTES
      mapping:
        - {target: type, constant: SlotConfirmed}
        - {target: id, source: visit_id}
        - {target: status, source: status}
)",
        {{"BUS_PORT", absl::StrCat(broker_.port)},
         {"EXCHANGE", exchange_},
         {"AUDIT_EXCHANGE_SETTING",
          audit_exchange_.empty() ? "" : absl::StrCat("  audit_exchange: ", audit_exchange_)},
         {"REPLAY_PORT", absl::StrCat(replay_port_)},
         {"INBOUND_PORT", absl::StrCat(inbound_port_)},
         {"PARTNER", partner_},
         {"SFTP_HOST", RequiredEnv("ESS_SFTP_HOST")},
         {"SFTP_PORT", RequiredEnv("ESS_SFTP_PORT")},
         {"SFTP_USER", RequiredEnv("ESS_SFTP_USER")},
         {"SFTP_KEY", RequiredEnv("ESS_SFTP_KEY")},
         {"SFTP_KNOWN_HOSTS", RequiredEnv("ESS_SFTP_KNOWN_HOSTS")},
         {"SETTLE_MS", absl::StrCat(settle_ms_)},
         {"MAX_FILE_BYTES",
          max_file_bytes_ == 0 ? "" : absl::StrCat("        max_file_bytes: ", max_file_bytes_)},
         {"RETENTION", retention_s_ == 0
                           ? ""
                           : absl::StrCat("  retention: {max_age_seconds: ", retention_s_,
                                          ", sweep_interval_seconds: 1}")},
         {"DEDUPE_WINDOW",
          retention_s_ == 0 ? "" : absl::StrCat("  dedupe_window_seconds: ", retention_s_)},
         {"DROP", drop_.string()},
         {"PROCESSED", processed_.string()}});
  }

  void StartReplay() {
    dir_.Write("hub.yaml", Config());
    replay_ = std::make_unique<Process>(
        std::vector<std::string>{BinaryPath("replay_svc"), "--config", dir_.File("hub.yaml")},
        dir_.File("replay.log"));
    stub_ = MakeReplayStub(absl::StrCat("127.0.0.1:", replay_port_));
    ASSERT_TRUE(testing::WaitForReplay(*stub_, absl::Seconds(20))) << replay_->Log();
  }

  void StartInbound() {
    inbound_ = std::make_unique<Process>(
        std::vector<std::string>{BinaryPath("inbound_svc"), "--config", dir_.File("hub.yaml")},
        dir_.File("inbound.log"));
    ASSERT_TRUE(inbound_->WaitForLog("inbound lane running")) << inbound_->Log();
  }

  void StartHub() {
    StartReplay();
    if (!HasFatalFailure()) StartInbound();
  }

  // A second inbound_svc on the same config but its own webhook port (hub2.yaml), polling the
  // same folder; null, with the test failed, if it does not start.
  std::unique_ptr<Process> StartSecondInbound() {
    const int second_port = testing::FreePort();
    dir_.Write("hub2.yaml",
               absl::StrReplaceAll(Config(), {{absl::StrCat("127.0.0.1:", inbound_port_),
                                               absl::StrCat("127.0.0.1:", second_port)}}));
    auto second = std::make_unique<Process>(
        std::vector<std::string>{BinaryPath("inbound_svc"), "--config", dir_.File("hub2.yaml")},
        dir_.File("inbound2.log"));
    if (!second->WaitForLog("inbound lane running")) {
      ADD_FAILURE() << "the second inbound_svc did not start\n" << second->Log();
      return nullptr;
    }
    return second;
  }

  // True once DROP/NAME is gone and PROCESSED/MOVED_NAME is there.
  bool WaitMoved(const std::string& name, const std::string& moved_name) {
    return WaitFor([&] { return !fs::exists(drop_ / name) && fs::exists(processed_ / moved_name); },
                   kFileTimeout);
  }

  // Takes `n` messages from `queue` (waiting up to a minute for them), then checks it is empty.
  std::vector<amqp::Delivery> Take(const std::string& queue, size_t n) {
    auto conn = amqp::Connection::Open(broker_);
    EXPECT_TRUE(conn.ok()) << conn.status();
    std::vector<amqp::Delivery> got;
    if (!conn.ok()) return got;
    WaitFor(
        [&] {
          while (got.size() < n) {
            auto d = (*conn)->Get(queue);
            if (!d.ok()) return false;
            got.push_back(*std::move(d));
          }
          return true;
        },
        kFileTimeout);
    EXPECT_EQ(got.size(), n);
    EXPECT_EQ((*conn)->Get(queue).status().code(), absl::StatusCode::kNotFound);
    return got;
  }

  uint32_t Depth(const std::string& queue) {
    auto conn = amqp::Connection::Open(broker_);
    EXPECT_TRUE(conn.ok());
    if (!conn.ok()) return 0;
    auto n = (*conn)->MessageCount(queue);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? *n : 0;
  }

  absl::StatusOr<ess::v1::MessageRecord> Record(const std::string& message_id) {
    grpc::ClientContext ctx;
    ess::v1::GetRequest req;
    req.mutable_record()->set_direction(ess::v1::DIRECTION_INBOUND);
    req.mutable_record()->set_partner(partner_);
    req.mutable_record()->set_message_id(message_id);
    ess::v1::GetResponse resp;
    grpc::Status s = stub_->Get(&ctx, req, &resp);
    if (!s.ok())
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    if (resp.records_size() != 1) return absl::NotFoundError(message_id);
    return resp.records(0);
  }

  // Every inbound record of the partner with `status`.
  std::vector<ess::v1::MessageRecord> Records(ess::v1::MessageStatus status) {
    std::vector<ess::v1::MessageRecord> out;
    std::string token;
    for (int page = 0; page < 100; ++page) {
      grpc::ClientContext ctx;
      ess::v1::ListRequest req;
      req.set_partner(partner_);
      req.set_direction(ess::v1::DIRECTION_INBOUND);
      req.set_status(status);
      req.set_page_size(1000);
      req.set_page_token(token);
      ess::v1::ListResponse resp;
      grpc::Status s = stub_->List(&ctx, req, &resp);
      EXPECT_TRUE(s.ok()) << s.error_message();
      if (!s.ok()) break;
      out.insert(out.end(), resp.records().begin(), resp.records().end());
      token = resp.next_page_token();
      if (token.empty()) break;
    }
    return out;
  }

  static std::string Event(const std::string& id, const std::string& status = "confirmed") {
    return absl::StrCat(R"({"type":"SlotConfirmed","id":")", id, R"(","status":")", status,
                        R"("})");
  }

  RemoteDir root_;
  fs::path drop_, processed_;
  amqp::ConnectionOptions broker_;
  std::string partner_, exchange_, subscriber_;
  std::string audit_exchange_, audit_queue_;  // set by UseAudit()
  int replay_port_ = 0, inbound_port_ = 0;
  int settle_ms_ = 100;
  // Set: the poll's max_file_bytes.
  uint64_t max_file_bytes_ = 0;
  // Set: the store evicts settled records this many seconds old, and sweeps every second.
  int retention_s_ = 0;
  testing::TempDir dir_;
  std::unique_ptr<ess::v1::ReplayService::Stub> stub_;
  std::unique_ptr<Process> replay_, inbound_;
};

TEST_F(SftpPollTest, ThousandRowsBecomeThousandEventsAndTheFileMoves) {
  ASSERT_NO_FATAL_FAILURE(StartHub());
  constexpr int kRows = 1000;
  std::string csv = "visit_id,status\r\n";
  for (int i = 0; i < kRows; ++i) absl::StrAppend(&csv, "VIS-", i, ",confirmed\r\n");
  const std::string name = "visits_20261201.csv";
  const std::string sha16 = Sha16(csv);
  Drop(drop_, name, csv);

  ASSERT_TRUE(WaitMoved(name, name)) << inbound_->Log();
  EXPECT_EQ(ReadFile(processed_ / name), csv);
  // Moved only after every event was confirmed: they are all on the subscriber's queue now.
  std::vector<amqp::Delivery> got = Take(subscriber_, kRows);
  std::set<std::string> ids;
  for (const amqp::Delivery& d : got) {
    const amqp::Message& m = d.message;
    EXPECT_EQ(m.body, Event(m.correlation_id));
    EXPECT_EQ(m.type, "SlotConfirmed");
    EXPECT_EQ(Header(m, "x-ess-partner"), partner_);
    EXPECT_EQ(Header(m, "x-ess-file"), name);
    // The row of VIS-i starts on line i + 2 (the header is line 1).
    const int i = std::stoi(m.correlation_id.substr(4));
    EXPECT_EQ(m.message_id, absl::StrCat(name, ":", sha16, ":", i + 2));
    ids.insert(m.correlation_id);
  }
  EXPECT_EQ(ids.size(), static_cast<size_t>(kRows));

  // 1000 event records and the file's marker.
  std::vector<ess::v1::MessageRecord> published = Records(ess::v1::MESSAGE_STATUS_PUBLISHED);
  EXPECT_EQ(published.size(), static_cast<size_t>(kRows + 1));
  EXPECT_TRUE(Records(ess::v1::MESSAGE_STATUS_DEAD).empty());
  auto marker = Record(absl::StrCat("file:", name, ":", sha16));
  ASSERT_TRUE(marker.ok()) << marker.status();
  EXPECT_EQ(marker->status(), ess::v1::MESSAGE_STATUS_PUBLISHED);
  EXPECT_EQ(marker->rendered(), "1000 events, 0 parked");
  auto row = Record(absl::StrCat(name, ":", sha16, ":502"));
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(row->correlation_id(), "VIS-500");
  EXPECT_EQ(row->event_type(), "SlotConfirmed");
  EXPECT_EQ(row->payload(), "VIS-500,confirmed");
  EXPECT_EQ(row->rendered(), Event("VIS-500"));
  EXPECT_EQ(row->source(),
            absl::StrCat("sftp://", RequiredEnv("ESS_SFTP_HOST"), drop_.string(), "/", name));
  // The poller logs the move after it returns.
  EXPECT_TRUE(inbound_->WaitForLog("events=1000 parked=0")) << inbound_->Log();
  EXPECT_THAT(inbound_->Log(), HasSubstr("file processed"));
}

// A partner that writes a file under its final name, a row at a time, is not read half-written:
// the file is read once its size and time stayed the same for settle_ms (here 1.5 s, while the
// poller lists every 200 ms and a row comes every 600 ms).
TEST_F(SftpPollTest, AFileStillBeingWrittenIsReadOnceItSettles) {
  settle_ms_ = 1500;
  ASSERT_NO_FATAL_FAILURE(StartHub());
  const std::string name = "visits_growing.csv";
  std::string csv = "visit_id,status\r\n";
  {
    std::ofstream out(drop_ / name, std::ios::binary);
    out << csv << std::flush;
    for (int i = 1; i <= 3; ++i) {
      absl::SleepFor(absl::Milliseconds(600));
      const std::string row = absl::StrCat("VIS-G", i, ",confirmed\r\n");
      out << row << std::flush;
      csv += row;
    }
  }
  ASSERT_TRUE(WaitMoved(name, name)) << inbound_->Log();
  EXPECT_EQ(ReadFile(processed_ / name), csv);
  std::set<std::string> ids;
  for (const amqp::Delivery& d : Take(subscriber_, 3)) ids.insert(d.message.correlation_id);
  EXPECT_EQ(ids, (std::set<std::string>{"VIS-G1", "VIS-G2", "VIS-G3"}));
  auto marker = Record(absl::StrCat("file:", name, ":", Sha16(csv)));
  ASSERT_TRUE(marker.ok()) << marker.status();
  EXPECT_EQ(marker->rendered(), "3 events, 0 parked");
}

TEST_F(SftpPollTest, MalformedRowsAreParkedWithFileAndLineAndTheOthersGoThrough) {
  ASSERT_NO_FATAL_FAILURE(StartHub());
  const std::string name = "visits_bad.csv";
  const std::string csv =
      "visit_id,status\r\n"        // 1
      "VIS-1,confirmed\r\n"        // 2
      "VIS-2,confirmed,extra\r\n"  // 3: one cell too many
      "VIS-3,cancelled\r\n"        // 4
      "VIS-4,confirmed\r\n"        // 5
      "VIS-5,\"confirmed\r\n";     // 6: a quote never closed
  const std::string sha16 = Sha16(csv);
  Drop(drop_, name, csv);
  ASSERT_TRUE(WaitMoved(name, name)) << inbound_->Log();

  std::vector<amqp::Delivery> events = Take(subscriber_, 3);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].message.body, Event("VIS-1"));
  EXPECT_EQ(events[1].message.body, Event("VIS-3", "cancelled"));
  EXPECT_EQ(events[2].message.body, Event("VIS-4"));
  EXPECT_EQ(events[1].message.message_id, absl::StrCat(name, ":", sha16, ":4"));

  std::vector<amqp::Delivery> parked = Take(ParkedQueue(), 2);
  ASSERT_EQ(parked.size(), 2u);
  EXPECT_EQ(parked[0].message.body, "VIS-2,confirmed,extra");
  EXPECT_EQ(Header(parked[0].message, "x-ess-file"), name);
  EXPECT_EQ(Header(parked[0].message, "x-ess-line"), "3");
  EXPECT_EQ(Header(parked[0].message, "x-ess-reason"), "3 fields, the header has 2");
  EXPECT_EQ(Header(parked[0].message, "x-ess-partner"), partner_);
  EXPECT_EQ(parked[1].message.body, "VIS-5,\"confirmed");
  EXPECT_EQ(Header(parked[1].message, "x-ess-file"), name);
  EXPECT_EQ(Header(parked[1].message, "x-ess-line"), "6");
  EXPECT_THAT(Header(parked[1].message, "x-ess-reason"), HasSubstr("quoted field not closed"));

  std::vector<ess::v1::MessageRecord> dead = Records(ess::v1::MESSAGE_STATUS_DEAD);
  EXPECT_EQ(dead.size(), 2u);
  auto l3 = Record(absl::StrCat(name, ":", sha16, ":L3"));
  ASSERT_TRUE(l3.ok()) << l3.status();
  EXPECT_EQ(l3->status(), ess::v1::MESSAGE_STATUS_DEAD);
  EXPECT_EQ(l3->error(), absl::StrCat(name, ":3: 3 fields, the header has 2"));
  EXPECT_EQ(l3->payload(), "VIS-2,confirmed,extra");
  EXPECT_EQ(Records(ess::v1::MESSAGE_STATUS_PUBLISHED).size(), 4u);  // 3 events and the marker
  auto marker = Record(absl::StrCat("file:", name, ":", sha16));
  ASSERT_TRUE(marker.ok()) << marker.status();
  EXPECT_EQ(marker->rendered(), "3 events, 2 parked");
  EXPECT_TRUE(inbound_->WaitForLog("events=3 parked=2")) << inbound_->Log();
}

// No row of a file with an unusable header can be read: each is parked and recorded, the header
// row with the reason, the data rows with the header's, so none is only in the moved file.
TEST_F(SftpPollTest, AFileWithAnUnusableHeaderIsParkedWholeAndMoved) {
  ASSERT_NO_FATAL_FAILURE(StartHub());
  const std::string name = "no_header.csv";
  const std::string csv = "visit_id,visit_id\r\nVIS-1,confirmed\r\nVIS-2,cancelled\r\n";
  Drop(drop_, name, csv);
  ASSERT_TRUE(WaitMoved(name, name)) << inbound_->Log();
  std::vector<amqp::Delivery> parked = Take(ParkedQueue(), 3);
  ASSERT_EQ(parked.size(), 3u);
  std::map<std::string, std::pair<std::string, std::string>> by_line;  // line -> body, reason
  for (const amqp::Delivery& d : parked) {
    by_line[Header(d.message, "x-ess-line")] = {d.message.body, Header(d.message, "x-ess-reason")};
  }
  const std::string reason = "line 1: the header's column 2 repeats column 1";
  EXPECT_EQ(by_line["1"], std::make_pair(std::string("visit_id,visit_id"), reason));
  EXPECT_EQ(by_line["2"], std::make_pair(std::string("VIS-1,confirmed"),
                                         "the header row (line 1) is unusable: " + reason));
  EXPECT_EQ(by_line["3"], std::make_pair(std::string("VIS-2,cancelled"),
                                         "the header row (line 1) is unusable: " + reason));
  EXPECT_EQ(Depth(subscriber_), 0u);
  EXPECT_EQ(Records(ess::v1::MESSAGE_STATUS_DEAD).size(), 3u);
  auto marker = Record(absl::StrCat("file:", name, ":", Sha16(csv)));
  ASSERT_TRUE(marker.ok()) << marker.status();
  EXPECT_EQ(marker->rendered(), "0 events, 3 parked");
}

TEST_F(SftpPollTest, TheSameFileDroppedAgainIsMovedWithoutPublishing) {
  ASSERT_NO_FATAL_FAILURE(StartHub());
  const std::string name = "visits.csv";
  const std::string csv = "visit_id,status\r\nVIS-1,confirmed\r\nVIS-2,confirmed\r\n";
  const std::string sha16 = Sha16(csv);
  Drop(drop_, name, csv);
  ASSERT_TRUE(WaitMoved(name, name)) << inbound_->Log();
  EXPECT_EQ(Take(subscriber_, 2).size(), 2u);

  Drop(drop_, name, csv);
  // Same name, same bytes: moved beside the first copy, nothing published (a publish would be
  // confirmed, and so queued, before the move).
  ASSERT_TRUE(WaitMoved(name, absl::StrCat(name, ".", sha16))) << inbound_->Log();
  EXPECT_EQ(ReadFile(processed_ / absl::StrCat(name, ".", sha16)), csv);
  EXPECT_EQ(Depth(subscriber_), 0u);
  EXPECT_EQ(Records(ess::v1::MESSAGE_STATUS_PUBLISHED).size(), 3u);
  // The poller logs the move after it returns.
  EXPECT_TRUE(inbound_->WaitForLog("file already processed")) << inbound_->Log();

  // A third time: both names are taken by these very bytes, so the file is removed.
  Drop(drop_, name, csv);
  ASSERT_TRUE(WaitFor([&] { return !fs::exists(drop_ / name); }, kFileTimeout));
  EXPECT_EQ(Depth(subscriber_), 0u);
  std::vector<std::string> kept;
  for (const auto& e : fs::directory_iterator(processed_)) {
    kept.push_back(e.path().filename().string());
  }
  EXPECT_THAT(kept, UnorderedElementsAre(name, absl::StrCat(name, ".", sha16)));
}

// Two replicas of inbound_svc poll one folder (the prod overlay runs three or more): each row is
// published once in all. The poller claims a file's marker, with a lease, before it publishes:
// a file the other holds is left for the next tick, one it published is only moved. Before, the
// marker was only looked up, and both replicas published most files.
TEST_F(SftpPollTest, TwoPollersOfOneFolderPublishEachRowOnce) {
  ASSERT_NO_FATAL_FAILURE(StartHub());
  std::unique_ptr<Process> second_lane = StartSecondInbound();
  ASSERT_NE(second_lane, nullptr);
  Process& second = *second_lane;
  constexpr int kFiles = 12;
  for (int i = 0; i < kFiles; ++i) {
    Drop(drop_, absl::StrCat("visits_", 10 + i, ".csv"),
         absl::StrCat("visit_id,status\r\nVIS-", i, ",confirmed\r\n"));
  }
  for (int i = 0; i < kFiles; ++i) {
    const std::string name = absl::StrCat("visits_", 10 + i, ".csv");
    ASSERT_TRUE(WaitMoved(name, name)) << inbound_->Log() << second.Log();
  }
  // Both stopped, nothing more can come: what is queued is all that was published.
  EXPECT_EQ(second.Stop(), 0) << second.Log();
  EXPECT_EQ(inbound_->Stop(), 0) << inbound_->Log();
  const std::string logs = inbound_->Log() + second.Log();
  inbound_.reset();
  std::multiset<std::string> ids;
  for (const amqp::Delivery& d : Take(subscriber_, kFiles)) ids.insert(d.message.correlation_id);
  for (int i = 0; i < kFiles; ++i) {
    EXPECT_EQ(ids.count(absl::StrCat("VIS-", i)), 1u) << "VIS-" << i << "\n" << logs;
  }
  // kFiles events and kFiles markers.
  EXPECT_EQ(Records(ess::v1::MESSAGE_STATUS_PUBLISHED).size(), 2u * kFiles);
}

TEST_F(SftpPollTest, AMarkerAlreadyInTheStoreMovesTheFileWithoutPublishing) {
  ASSERT_NO_FATAL_FAILURE(StartReplay());
  const std::string name = "crashed_before_move.csv";
  const std::string csv = "visit_id,status\r\nVIS-9,confirmed\r\n";
  // What a poller that crashed between recording the marker and the move left behind.
  {
    ess::v1::RecordRequest req;
    ess::v1::MessageRecord* rec = req.add_records();
    const std::string marker = absl::StrCat("file:", name, ":", Sha16(csv));
    rec->set_direction(ess::v1::DIRECTION_INBOUND);
    rec->set_partner(partner_);
    rec->set_correlation_id(marker);
    rec->set_message_id(marker);
    rec->set_status(ess::v1::MESSAGE_STATUS_PUBLISHED);
    grpc::ClientContext ctx;
    ess::v1::RecordResponse resp;
    grpc::Status s = stub_->Record(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  Drop(drop_, name, csv);
  ASSERT_NO_FATAL_FAILURE(StartInbound());
  ASSERT_TRUE(WaitMoved(name, name)) << inbound_->Log();
  EXPECT_EQ(Depth(subscriber_), 0u);
  EXPECT_EQ(Records(ess::v1::MESSAGE_STATUS_PUBLISHED).size(), 1u);  // the marker only
}

TEST_F(SftpPollTest, AFileThatCannotBeMovedStaysAndIsMovedLaterWithoutRepublishing) {
  fs::remove(processed_);
  ASSERT_NO_FATAL_FAILURE(StartHub());
  const std::string name = "visits.csv";
  Drop(drop_, name, "visit_id,status\r\nVIS-1,confirmed\r\n");
  ASSERT_TRUE(inbound_->WaitForLog("does not exist")) << inbound_->Log();
  EXPECT_THAT(inbound_->Log(), HasSubstr(absl::StrCat("processed_dir ", processed_.string())));
  EXPECT_TRUE(fs::exists(drop_ / name));
  // Published and marked before the move failed, like a crash between the two.
  EXPECT_EQ(Take(subscriber_, 1).size(), 1u);

  fs::create_directories(processed_);
  ASSERT_TRUE(WaitMoved(name, name)) << inbound_->Log();
  EXPECT_EQ(Depth(subscriber_), 0u);
  EXPECT_EQ(Records(ess::v1::MESSAGE_STATUS_PUBLISHED).size(), 2u);  // the event and the marker
}

// Its marker outlives retention while the file stays: every look at the file records the marker
// again. Before, retention evicted it with the file's other records, and the next listing
// published the rows a second time.
TEST_F(SftpPollTest, AFileThatCannotBeMovedKeepsItsMarkerThroughRetention) {
  retention_s_ = 2;
  fs::remove(processed_);
  ASSERT_NO_FATAL_FAILURE(StartHub());
  const std::string name = "visits.csv";
  const std::string csv = "visit_id,status\r\nVIS-1,confirmed\r\n";
  Drop(drop_, name, csv);
  ASSERT_TRUE(inbound_->WaitForLog("does not exist")) << inbound_->Log();
  EXPECT_EQ(Take(subscriber_, 1).size(), 1u);

  // The event's own record, settled and not touched since, goes once it is 2 s old.
  const std::string event_id = absl::StrCat(name, ":", Sha16(csv), ":2");
  ASSERT_TRUE(Record(event_id).ok());
  ASSERT_TRUE(
      WaitFor([&] { return absl::IsNotFound(Record(event_id).status()); }, absl::Seconds(60)))
      << replay_->Log();
  absl::StatusOr<ess::v1::MessageRecord> marker =
      Record(absl::StrCat("file:", name, ":", Sha16(csv)));
  ASSERT_TRUE(marker.ok()) << marker.status();
  EXPECT_EQ(marker->status(), ess::v1::MESSAGE_STATUS_PUBLISHED);
  EXPECT_EQ(marker->rendered(), "1 events, 0 parked");  // the refresh keeps the summary

  fs::create_directories(processed_);
  ASSERT_TRUE(WaitMoved(name, name)) << inbound_->Log();
  EXPECT_EQ(Depth(subscriber_), 0u);  // not published again
}

// A settled file over max_file_bytes (here 1000) is decided from its stat, never downloaded:
// recorded dead, moved aside as NAME.too-large with its bytes, audited and counted once, and
// nothing of it published; the file after it in the same listing goes through. Before, it stayed
// in the drop folder, downloaded and refused at every tick, neither recorded nor audited.
TEST_F(SftpPollTest, AFileOverMaxFileBytesIsSetAsideUnreadRecordedDeadAndCounted) {
  max_file_bytes_ = 1000;
  ASSERT_NO_FATAL_FAILURE(UseAudit());
  ASSERT_NO_FATAL_FAILURE(StartReplay());
  // Well-formed rows that would each be an event if the file were read.
  std::string big = "visit_id,status\r\n";
  for (int i = 0; big.size() <= 1000; ++i) absl::StrAppend(&big, "VIS-B", i, ",confirmed\r\n");
  const std::string small = "visit_id,status\r\nVIS-1,confirmed\r\n";
  // Both there before the poller starts: the same listing sees them settle, "big.csv" first.
  Drop(drop_, "big.csv", big);
  Drop(drop_, "visits.csv", small);
  ASSERT_NO_FATAL_FAILURE(StartInbound());

  ASSERT_TRUE(WaitMoved("big.csv", "big.csv.too-large")) << inbound_->Log();
  EXPECT_EQ(ReadFile(processed_ / "big.csv.too-large"), big);
  ASSERT_TRUE(WaitMoved("visits.csv", "visits.csv")) << inbound_->Log();
  // Moved once its event was confirmed: the only one published.
  std::vector<amqp::Delivery> events = Take(subscriber_, 1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].message.correlation_id, "VIS-1");
  EXPECT_EQ(Depth(ParkedQueue()), 0u);

  const std::string id = absl::StrCat("file:big.csv:too-large:", big.size());
  const std::string error =
      absl::StrCat("big.csv: ", big.size(), " bytes, more than max_file_bytes (1000); not read, ",
                   "moved to ", processed_.string(), " with the suffix .too-large");
  absl::StatusOr<ess::v1::MessageRecord> dead = Record(id);
  ASSERT_TRUE(dead.ok()) << dead.status();
  EXPECT_EQ(dead->status(), ess::v1::MESSAGE_STATUS_DEAD);
  EXPECT_EQ(dead->correlation_id(), id);
  EXPECT_EQ(dead->error(), error);
  EXPECT_EQ(dead->source(),
            absl::StrCat("sftp://", RequiredEnv("ESS_SFTP_HOST"), drop_.string(), "/big.csv"));
  EXPECT_EQ(Records(ess::v1::MESSAGE_STATUS_DEAD).size(), 1u);
  // The small file's event and marker; nothing of the big one.
  EXPECT_EQ(Records(ess::v1::MESSAGE_STATUS_PUBLISHED).size(), 2u);

  // Audited once, dead, with the record's id and error; set aside before the next file was
  // processed, so its audit event comes first.
  std::vector<v1::SyncAudit> audits = TakeAudits(2);
  ASSERT_EQ(audits.size(), 2u);
  EXPECT_EQ(audits[0].message_id(), id);
  EXPECT_EQ(audits[0].correlation_id(), id);
  EXPECT_EQ(audits[0].status(), v1::MESSAGE_STATUS_DEAD);
  EXPECT_EQ(audits[0].error(), error);
  EXPECT_EQ(audits[1].message_id(), absl::StrCat("visits.csv:", Sha16(small), ":2"));
  EXPECT_EQ(audits[1].status(), v1::MESSAGE_STATUS_PUBLISHED);

  // Counted, on inbound_svc's /metrics (the small file's count goes up before this line).
  ASSERT_TRUE(inbound_->WaitForLog("file processed")) << inbound_->Log();
  http::Client http({});
  auto scraped = http.SendAndWait(
      {.method = "GET", .url = absl::StrCat("http://127.0.0.1:", inbound_port_, "/metrics")});
  ASSERT_TRUE(scraped.ok()) << scraped.status();
  ASSERT_EQ(scraped->status, 200);
  const std::string labels = absl::StrCat("{partner=\"", partner_, "\",");
  EXPECT_THAT(scraped->body, HasSubstr(absl::StrCat("ess_inbound_poll_files_total", labels,
                                                    "outcome=\"too_large\"} 1\n")));
  EXPECT_THAT(scraped->body, HasSubstr(absl::StrCat("ess_inbound_poll_files_total", labels,
                                                    "outcome=\"processed\"} 1\n")));
  EXPECT_THAT(scraped->body, HasSubstr(absl::StrCat("ess_inbound_poll_rows_total", labels,
                                                    "outcome=\"published\"} 1\n")));
  EXPECT_THAT(scraped->body, HasSubstr(absl::StrCat("ess_inbound_poll_left_total", labels,
                                                    "reason=\"failure\"} 0\n")));

  // Decided from the stat: never downloaded, never left for another poll, logged once.
  ASSERT_EQ(inbound_->Stop(), 0) << inbound_->Log();
  const std::string log = inbound_->Log();
  inbound_.reset();
  EXPECT_EQ(testing::CountOccurrences(log, "file too large; moved aside unread"), 1u) << log;
  EXPECT_THAT(log, HasSubstr(absl::StrCat("file=big.csv bytes=", big.size(),
                                          " max_file_bytes=1000 to=", processed_.string(),
                                          "/big.csv.too-large")));
  EXPECT_EQ(testing::CountOccurrences(log, "file received"), 1u) << log;  // visits.csv only
  EXPECT_EQ(testing::CountOccurrences(log, "left for the next poll"), 0u) << log;
  EXPECT_THAT(log, HasSubstr("too_large=1"));
}

// A second too-large file of the same name is not lost over the first: it is set aside under a
// name of its own, and its different size gives it a record of its own.
TEST_F(SftpPollTest, ASecondTooLargeFileOfTheSameNameGetsANameOfItsOwn) {
  max_file_bytes_ = 100;
  ASSERT_NO_FATAL_FAILURE(StartHub());
  const std::string first(200, 'a'), second(300, 'b');
  Drop(drop_, "big.csv", first);
  ASSERT_TRUE(WaitMoved("big.csv", "big.csv.too-large")) << inbound_->Log();
  Drop(drop_, "big.csv", second);
  ASSERT_TRUE(WaitFor([&] { return !fs::exists(drop_ / "big.csv"); }, kFileTimeout))
      << inbound_->Log();
  EXPECT_EQ(ReadFile(processed_ / "big.csv.too-large"), first);
  std::vector<std::string> others;
  for (const auto& e : fs::directory_iterator(processed_)) {
    const std::string n = e.path().filename().string();
    if (n != "big.csv.too-large") others.push_back(n);
  }
  ASSERT_EQ(others.size(), 1u);
  // big.csv.YYYYMMDDTHHMMSS.mmmZ.too-large
  EXPECT_THAT(others[0],
              ::testing::MatchesRegex(R"(big\.csv\.[0-9]{8}T[0-9]{6}\.[0-9]{3}Z\.too-large)"));
  EXPECT_EQ(ReadFile(processed_ / others[0]), second);
  EXPECT_EQ(Records(ess::v1::MESSAGE_STATUS_DEAD).size(), 2u);
  EXPECT_TRUE(Record("file:big.csv:too-large:200").ok());
  EXPECT_TRUE(Record("file:big.csv:too-large:300").ok());
  EXPECT_EQ(Depth(subscriber_), 0u);
}

// While processed_dir is missing a too-large file stays, with the reason; once it is there the
// file is set aside, and recorded, audited and counted once.
TEST_F(SftpPollTest, ATooLargeFileThatCannotBeMovedStaysAndIsSetAsideLater) {
  max_file_bytes_ = 100;
  fs::remove(processed_);
  ASSERT_NO_FATAL_FAILURE(UseAudit());
  ASSERT_NO_FATAL_FAILURE(StartHub());
  const std::string big(500, 'x');
  Drop(drop_, "big.csv", big);
  ASSERT_TRUE(inbound_->WaitForLog("does not exist")) << inbound_->Log();
  EXPECT_TRUE(fs::exists(drop_ / "big.csv"));
  // Recorded before any move was tried.
  absl::StatusOr<ess::v1::MessageRecord> dead = Record("file:big.csv:too-large:500");
  ASSERT_TRUE(dead.ok()) << dead.status();
  EXPECT_EQ(dead->status(), ess::v1::MESSAGE_STATUS_DEAD);

  fs::create_directories(processed_);
  ASSERT_TRUE(WaitMoved("big.csv", "big.csv.too-large")) << inbound_->Log();
  EXPECT_EQ(ReadFile(processed_ / "big.csv.too-large"), big);
  std::vector<v1::SyncAudit> audits = TakeAudits(1);
  ASSERT_EQ(audits.size(), 1u);
  EXPECT_EQ(audits[0].message_id(), "file:big.csv:too-large:500");
  EXPECT_EQ(audits[0].status(), v1::MESSAGE_STATUS_DEAD);
  EXPECT_EQ(Records(ess::v1::MESSAGE_STATUS_DEAD).size(), 1u);
  EXPECT_TRUE(inbound_->WaitForLog("file too large; moved aside unread")) << inbound_->Log();
  EXPECT_EQ(testing::CountOccurrences(inbound_->Log(), "file too large; moved aside unread"), 1u);
}

// Two replicas polling one folder set each too-large file aside once in all, with no claim:
// both may record it (the same record), but one rename alone moves it, and only that replica
// counts, logs and audits it.
TEST_F(SftpPollTest, TwoPollersOfOneFolderSetEachTooLargeFileAsideOnce) {
  max_file_bytes_ = 100;
  ASSERT_NO_FATAL_FAILURE(UseAudit());
  ASSERT_NO_FATAL_FAILURE(StartHub());
  std::unique_ptr<Process> second_lane = StartSecondInbound();
  ASSERT_NE(second_lane, nullptr);
  Process& second = *second_lane;
  constexpr int kFiles = 8;
  for (int i = 0; i < kFiles; ++i) {
    Drop(drop_, absl::StrCat("big_", 10 + i, ".csv"), std::string(200 + i, 'x'));
  }
  for (int i = 0; i < kFiles; ++i) {
    const std::string name = absl::StrCat("big_", 10 + i, ".csv");
    ASSERT_TRUE(WaitMoved(name, name + ".too-large")) << inbound_->Log() << second.Log();
    EXPECT_EQ(ReadFile(processed_ / (name + ".too-large")), std::string(200 + i, 'x'));
  }
  // Both stopped, nothing more can come: what is queued is all that was audited.
  EXPECT_EQ(second.Stop(), 0) << second.Log();
  EXPECT_EQ(inbound_->Stop(), 0) << inbound_->Log();
  const std::string logs = inbound_->Log() + second.Log();
  inbound_.reset();
  EXPECT_EQ(testing::CountOccurrences(logs, "file too large; moved aside unread"),
            static_cast<size_t>(kFiles))
      << logs;
  std::multiset<std::string> ids;
  for (const v1::SyncAudit& a : TakeAudits(kFiles)) {
    EXPECT_EQ(a.status(), v1::MESSAGE_STATUS_DEAD);
    ids.insert(a.message_id());
  }
  for (int i = 0; i < kFiles; ++i) {
    EXPECT_EQ(ids.count(absl::StrCat("file:big_", 10 + i, ".csv:too-large:", 200 + i)), 1u) << logs;
  }
  EXPECT_EQ(Records(ess::v1::MESSAGE_STATUS_DEAD).size(), static_cast<size_t>(kFiles));
  EXPECT_EQ(Depth(subscriber_), 0u);
  // No other file of the folder was set aside under a second name.
  size_t moved = 0;
  for (const auto& e : fs::directory_iterator(processed_)) moved += e.is_regular_file();
  EXPECT_EQ(moved, static_cast<size_t>(kFiles));
}

TEST_F(SftpPollTest, AFileStaysWhileTheStoreIsDownAndGoesThroughOnceItIsBack) {
  ASSERT_NO_FATAL_FAILURE(StartHub());
  stub_.reset();
  ASSERT_EQ(replay_->Stop(), 0) << replay_->Log();
  const std::string name = "visits.csv";
  Drop(drop_, name, "visit_id,status\r\nVIS-1,confirmed\r\n");
  ASSERT_TRUE(inbound_->WaitForLog("file left for the next poll", absl::Seconds(30)))
      << inbound_->Log();
  EXPECT_TRUE(fs::exists(drop_ / name));
  EXPECT_EQ(Depth(subscriber_), 0u);  // nothing is published before the store's lookup

  ASSERT_NO_FATAL_FAILURE(StartReplay());  // the same port and database
  ASSERT_TRUE(WaitMoved(name, name)) << inbound_->Log();
  EXPECT_EQ(Take(subscriber_, 1).size(), 1u);
}

TEST_F(SftpPollTest, PartialAndOtherFilesAreLeftAlone) {
  ASSERT_NO_FATAL_FAILURE(StartHub());
  {
    std::ofstream(drop_ / ".x.csv.part") << "visit_id,status\r\nVIS-1,confirmed\r\n";
    std::ofstream(drop_ / "notes.txt") << "visit_id,status\r\nVIS-2,confirmed\r\n";
  }
  // Two files processed one after the other: at least two full listings saw the others.
  Drop(drop_, "first.csv", "visit_id,status\r\nVIS-3,confirmed\r\n");
  ASSERT_TRUE(WaitMoved("first.csv", "first.csv")) << inbound_->Log();
  Drop(drop_, "second.csv", "visit_id,status\r\nVIS-4,confirmed\r\n");
  ASSERT_TRUE(WaitMoved("second.csv", "second.csv")) << inbound_->Log();

  std::vector<amqp::Delivery> got = Take(subscriber_, 2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].message.correlation_id, "VIS-3");
  EXPECT_EQ(got[1].message.correlation_id, "VIS-4");
  EXPECT_TRUE(fs::exists(drop_ / ".x.csv.part"));
  EXPECT_TRUE(fs::exists(drop_ / "notes.txt"));
}

TEST_F(SftpPollTest, EveryRowIsAuditedOnceItsFileIsSettledAndTheSameFileAgainIsNot) {
  ASSERT_NO_FATAL_FAILURE(UseAudit());
  ASSERT_NO_FATAL_FAILURE(StartHub());
  const std::string name = "visits_audit.csv";
  const std::string csv =
      "visit_id,status\r\n"        // 1
      "VIS-1,confirmed\r\n"        // 2
      "VIS-2,confirmed,extra\r\n"  // 3: one cell too many
      "VIS-3,cancelled\r\n"        // 4
      "VIS-4,confirmed\r\n";       // 5
  const std::string id = absl::StrCat(name, ":", Sha16(csv), ":");
  const int64_t dropped_ns = absl::ToUnixNanos(absl::Now());
  Drop(drop_, name, csv);
  ASSERT_TRUE(WaitMoved(name, name)) << inbound_->Log();

  std::vector<amqp::Delivery> events = Take(subscriber_, 3);
  ASSERT_EQ(events.size(), 3u);
  ASSERT_EQ(Take(ParkedQueue(), 1).size(), 1u);
  // The file is moved once its audit events are confirmed: all of them are queued by now.
  std::vector<v1::SyncAudit> audits = TakeAudits(4);
  ASSERT_EQ(audits.size(), 4u);
  std::map<std::string, v1::SyncAudit> by_id;
  size_t published = 0, dead = 0;
  for (const v1::SyncAudit& a : audits) {
    by_id[a.message_id()] = a;
    published += a.status() == v1::MESSAGE_STATUS_PUBLISHED;
    dead += a.status() == v1::MESSAGE_STATUS_DEAD;
    EXPECT_GE(google::protobuf::util::TimeUtil::TimestampToNanoseconds(a.started_at()), dropped_ns);
  }
  EXPECT_EQ(published, 3u);
  EXPECT_EQ(dead, 1u);
  ASSERT_EQ(by_id.size(), 4u);
  // One audit event per published event, under the event's own message id.
  for (const amqp::Delivery& e : events) {
    ASSERT_TRUE(by_id.contains(e.message.message_id)) << e.message.message_id;
    const v1::SyncAudit& a = by_id[e.message.message_id];
    EXPECT_EQ(a.status(), v1::MESSAGE_STATUS_PUBLISHED);
    EXPECT_EQ(a.correlation_id(), e.message.correlation_id);
    EXPECT_EQ(a.event_type(), "SlotConfirmed");
    EXPECT_EQ(a.error(), "");
  }
  EXPECT_EQ(by_id[id + "2"].correlation_id(), "VIS-1");
  EXPECT_EQ(by_id[id + "4"].correlation_id(), "VIS-3");
  EXPECT_EQ(by_id[id + "5"].correlation_id(), "VIS-4");
  const v1::SyncAudit& bad = by_id[id + "L3"];
  EXPECT_EQ(bad.status(), v1::MESSAGE_STATUS_DEAD);
  EXPECT_EQ(bad.correlation_id(), id + "L3");
  EXPECT_EQ(bad.event_type(), "");
  EXPECT_EQ(bad.error(), absl::StrCat(name, ":3: 3 fields, the header has 2"));
  // Ids and outcomes, never a row's text (every row has a lowercase status cell).
  for (const v1::SyncAudit& a : audits) {
    EXPECT_THAT(a.DebugString(), ::testing::Not(HasSubstr("confirmed"))) << a.DebugString();
  }

  // The same bytes again: the marker is there, so the file is moved with nothing published and
  // nothing audited.
  Drop(drop_, name, csv);
  ASSERT_TRUE(WaitMoved(name, absl::StrCat(name, ".", Sha16(csv)))) << inbound_->Log();
  EXPECT_TRUE(inbound_->WaitForLog("file already processed")) << inbound_->Log();
  ASSERT_NO_FATAL_FAILURE(ExpectOnlyTheNextFileAudited("VIS-5"));
  EXPECT_EQ(Depth(subscriber_), 1u);  // VIS-5 only
}

TEST_F(SftpPollTest, AFileWhoseMoveFailsIsAuditedOnceAndNotAgainWhenItIsMovedLater) {
  fs::remove(processed_);
  ASSERT_NO_FATAL_FAILURE(UseAudit());
  ASSERT_NO_FATAL_FAILURE(StartHub());
  const std::string name = "visits.csv";
  const std::string csv = "visit_id,status\r\nVIS-1,confirmed\r\n";
  Drop(drop_, name, csv);
  ASSERT_TRUE(inbound_->WaitForLog("does not exist")) << inbound_->Log();
  EXPECT_TRUE(fs::exists(drop_ / name));
  // The marker was recorded before the move failed: the outcome is settled and audited.
  std::vector<v1::SyncAudit> audits = TakeAudits(1);
  ASSERT_EQ(audits.size(), 1u);
  EXPECT_EQ(audits[0].message_id(), absl::StrCat(name, ":", Sha16(csv), ":2"));
  EXPECT_EQ(audits[0].status(), v1::MESSAGE_STATUS_PUBLISHED);
  EXPECT_EQ(audits[0].correlation_id(), "VIS-1");

  // The ticks that retry the move find the marker and audit nothing.
  fs::create_directories(processed_);
  ASSERT_TRUE(WaitMoved(name, name)) << inbound_->Log();
  ASSERT_NO_FATAL_FAILURE(ExpectOnlyTheNextFileAudited("VIS-2"));
}

}  // namespace
}  // namespace ess
