// SFTP faults on a real OpenSSH server: a private sshd of this test (scripts/sshd.sh in a
// temporary folder) whose SFTP subsystem is sftp_fault_relay, which runs OpenSSH's sftp-server
// and injects the fault its mode file names (a server that stops answering at one request, an
// answer lost after the server acted, a slow link). Each test writes the mode, then connects.
// SftpLaneFaultTest runs the lane's binaries against it, with the RabbitMQ that ./test.sh
// started (ESS_AMQP_*).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "adapters/http_status.h"
#include "adapters/sftp_csv/sftp_client.h"
#include "adapters/sftp_csv/sftp_csv_adapter.h"
#include "tests/integration/harness.h"
#include "tests/integration/hub_fixture.h"

namespace ess::adapters::sftp_csv {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

// SFTP packet types (draft-ietf-secsh-filexfer-02, version 3).
constexpr int kOpen = 3, kRead = 5, kWrite = 6, kStat = 17, kRename = 18;

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteFile(const fs::path& p, const std::string& data) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << data;
}

// Bytes that compress badly and differ at every offset.
std::string Bytes(size_t n) {
  std::string s(n, '\0');
  uint32_t x = 2463534242u;
  for (char& c : s) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = static_cast<char>(x);
  }
  return s;
}

// The names in `dir`, sorted.
std::vector<std::string> FilesIn(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

// Rows of `csv` whose first cell is `id`.
size_t RowsOf(const std::string& csv, const std::string& id) {
  const std::string row = absl::StrCat("\n", id, ",");  // a row starts with its id
  size_t rows = 0;
  for (size_t at = csv.find(row); at != std::string::npos; at = csv.find(row, at + 1)) ++rows;
  return rows;
}

// The test suite's own sshd, whose SFTP subsystem is sftp_fault_relay with a mode file.
class FaultySshd {
 public:
  // Call with ASSERT_NO_FATAL_FAILURE.
  void Start() {
    stack_ = std::make_unique<testing::TempDir>();
    mode_file_ = stack_->File("mode");
    SetMode("pass");
    const std::string relay =
        (fs::read_symlink("/proc/self/exe").parent_path() / "sftp_fault_relay").string();
    ASSERT_TRUE(fs::exists(relay)) << relay;
    setenv("ESS_SSHD_SFTP_SUBSYSTEM", absl::StrCat(relay, " ", mode_file_).c_str(), 1);
    testing::ToolRun run = Script("start");
    unsetenv("ESS_SSHD_SFTP_SUBSYSTEM");
    ASSERT_EQ(run.exit_code, 0) << run.output;
    // DIR/env: "export NAME=VALUE" lines.
    for (absl::string_view line : absl::StrSplit(ReadFile(stack_->File("sshd/env")), '\n')) {
      if (!absl::ConsumePrefix(&line, "export ")) continue;
      std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
      env_[kv.first] = kv.second;
    }
  }

  void Stop() {
    if (stack_ == nullptr) return;
    testing::ToolRun run = Script("stop");
    EXPECT_EQ(run.exit_code, 0) << run.output;
    stack_.reset();
  }

  // The fault of every SFTP session from now on (sftp_fault_relay.cc lists the modes).
  void SetMode(const std::string& mode) const { WriteFile(mode_file_, mode + "\n"); }
  // Every new SFTP session ends at once (the relay exits), as after drop_reply_then_refuse,
  // until Unrefuse: the server is back.
  void Refuse() const { WriteFile(mode_file_ + ".refuse", "gone\n"); }
  void Unrefuse() const { fs::remove(mode_file_ + ".refuse"); }
  // ESS_SFTP_* of its env file, empty when it did not start.
  std::string Env(const std::string& name) const {
    auto it = env_.find(name);
    return it == env_.end() ? "" : it->second;
  }

 private:
  testing::ToolRun Script(const std::string& command) const {
    return testing::RunTool(
        {"/bin/bash", absl::StrCat(testing::RequiredEnv("ESS_SOURCE_DIR"), "/scripts/sshd.sh"),
         command, stack_->File("sshd")},
        stack_->File(absl::StrCat("sshd-", command, ".log")));
  }

  std::unique_ptr<testing::TempDir> stack_;
  std::string mode_file_;
  std::map<std::string, std::string> env_;
};

class SftpFaultTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    sshd_ = new FaultySshd();
    sshd_->Start();
    env_ = {};
    for (const char* name : {"ESS_SFTP_HOST", "ESS_SFTP_PORT", "ESS_SFTP_USER", "ESS_SFTP_KEY",
                             "ESS_SFTP_KNOWN_HOSTS", "ESS_SFTP_ROOT"}) {
      env_[name] = sshd_->Env(name);
    }
  }

  static void TearDownTestSuite() {
    sshd_->Stop();
    delete sshd_;
    sshd_ = nullptr;
  }

  void SetUp() override {
    ASSERT_FALSE(env_["ESS_SFTP_ROOT"].empty()) << "the test's sshd did not start";
    dir_ = fs::path(env_["ESS_SFTP_ROOT"]) /
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    SetMode("pass");
  }

  static void SetMode(const std::string& mode) { sshd_->SetMode(mode); }

  static SftpClient::Options Options() {
    return {.host = env_["ESS_SFTP_HOST"],
            .port = static_cast<uint32_t>(std::stoul(env_["ESS_SFTP_PORT"])),
            .user = env_["ESS_SFTP_USER"],
            .private_key_file = env_["ESS_SFTP_KEY"],
            .known_hosts_file = env_["ESS_SFTP_KNOWN_HOSTS"],
            .timeout = absl::Seconds(120),
            .stall_timeout = absl::Seconds(2)};
  }

  std::vector<std::string> Files() const { return FilesIn(dir_); }

  static FaultySshd* sshd_;
  static std::map<std::string, std::string> env_;
  fs::path dir_;
};

FaultySshd* SftpFaultTest::sshd_ = nullptr;
std::map<std::string, std::string> SftpFaultTest::env_;

TEST_F(SftpFaultTest, TheRelayPassesEverythingWhenNoFaultIsSet) {
  const std::string data = Bytes(300 << 10);
  WriteFile(dir_ / "in.bin", data);
  SftpClient client(Options());
  absl::StatusOr<std::string> got = client.Download((dir_ / "in.bin").string(), 1 << 20);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, data);
  ASSERT_TRUE(client.UploadAtomically(dir_.string(), "out.bin", data).ok());
  EXPECT_EQ(ReadFile(dir_ / "out.bin"), data);
}

// The whole-call deadline is two minutes: the stall timeout (2 s) is what ends these calls, and
// the message says so ("stalled"), where a whole-call deadline would say "timed out".
TEST_F(SftpFaultTest, ADownloadTheServerStopsAnsweringFailsAsStalled) {
  WriteFile(dir_ / "in.bin", Bytes(100 << 10));
  SetMode(absl::StrCat("stall_at ", kRead));
  SftpClient client(Options());
  absl::StatusOr<std::string> got = client.Download((dir_ / "in.bin").string(), 1 << 20);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr("stalled, no byte moved for 2s"));
  EXPECT_THAT(got.status().message(), HasSubstr("download of " + (dir_ / "in.bin").string()));

  // The same client works again once the server does (a new connection).
  SetMode("pass");
  got = client.Download((dir_ / "in.bin").string(), 1 << 20);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->size(), size_t{100} << 10);
}

// Steps that move no byte of the file (opening it, a stat) are watched too.
TEST_F(SftpFaultTest, AStallBeforeAnyByteOfTheFileIsCaughtToo) {
  WriteFile(dir_ / "in.bin", "x");
  SetMode(absl::StrCat("stall_at ", kOpen));
  SftpClient downloader(Options());
  absl::StatusOr<std::string> got = downloader.Download((dir_ / "in.bin").string(), 1 << 20);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr("stalled"));

  SetMode(absl::StrCat("stall_at ", kStat));
  SftpClient stater(Options());
  absl::StatusOr<SftpClient::FileStat> stat = stater.Stat((dir_ / "in.bin").string());
  EXPECT_EQ(stat.status().code(), absl::StatusCode::kDeadlineExceeded) << stat.status();
  EXPECT_THAT(stat.status().message(), HasSubstr("stalled"));
}

TEST_F(SftpFaultTest, ASlowLinkThatStillMovesIsNotAStall) {
  // 600 KiB at 100 KiB/s: three times the stall timeout. The client sees bytes arrive a whole
  // SFTP data packet (~30 KB) at a time, every ~0.3 s here.
  const std::string data = Bytes(600 << 10);
  WriteFile(dir_ / "in.bin", data);
  SetMode(absl::StrCat("throttle ", 100 << 10));
  SftpClient client(Options());
  absl::StatusOr<std::string> got = client.Download((dir_ / "in.bin").string(), 1 << 20);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, data);
}

TEST_F(SftpFaultTest, TheWholeCallDeadlineStillBoundsASlowLink) {
  WriteFile(dir_ / "in.bin", Bytes(300 << 10));
  SetMode(absl::StrCat("throttle ", 50 << 10));
  SftpClient::Options options = Options();
  options.timeout = absl::Seconds(2);
  options.stall_timeout = absl::Seconds(60);
  SftpClient client(options);
  absl::StatusOr<std::string> got = client.Download((dir_ / "in.bin").string(), 1 << 20);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  EXPECT_THAT(std::string(got.status().message()), Not(HasSubstr("stalled")));
}

// A server that closed an idle session: the next call asks first, and goes on a new one.
TEST_F(SftpFaultTest, ASessionTheServerClosedWhileIdleIsReplaced) {
  WriteFile(dir_ / "in.bin", "x");
  SetMode("idle_close 300");
  SftpClient client(Options());
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<bool> there = client.Exists((dir_ / "in.bin").string());
    ASSERT_TRUE(there.ok()) << i << ": " << there.status();
    EXPECT_TRUE(*there);
    absl::SleepFor(absl::Milliseconds(1500));  // the relay ends the session after 300 ms
  }
}

// A server that takes the login but whose SFTP subsystem ends at once (missing, or failing):
// the call fails after connect_timeout and says which step never finished. Before, it said
// "no SSH session", which sent ops looking at the network.
TEST_F(SftpFaultTest, ASubsystemThatDoesNotStartIsNamedAsTheCause) {
  sshd_->Refuse();
  SftpClient::Options options = Options();
  options.connect_timeout = absl::Seconds(2);  // the SSH handshake and login fit in it
  SftpClient client(options);
  absl::StatusOr<bool> there = client.Exists((dir_ / "in.bin").string());
  sshd_->Unrefuse();
  EXPECT_EQ(there.status().code(), absl::StatusCode::kDeadlineExceeded) << there.status();
  EXPECT_THAT(there.status().message(),
              HasSubstr("no SFTP session within 2s: logged in, but the server's SFTP subsystem "
                        "did not start"));

  // Nothing listens: the TCP step says so, at once.
  options.port = 1;
  SftpClient nowhere(options);
  there = nowhere.Exists((dir_ / "in.bin").string());
  EXPECT_EQ(there.status().code(), absl::StatusCode::kUnavailable) << there.status();
  EXPECT_THAT(there.status().message(), HasSubstr("cannot connect"));
}

TEST_F(SftpFaultTest, AnUploadWhoseRenameAnswerIsLostIsDoneOnce) {
  const std::string data = Bytes(50 << 10);
  SetMode(absl::StrCat("drop_reply ", kRename));
  SftpClient client(Options());
  absl::Status s = client.UploadAtomically(dir_.string(), "visits.csv", data);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_THAT(Files(), ::testing::ElementsAre("visits.csv"));
  EXPECT_EQ(ReadFile(dir_ / "visits.csv"), data);
}

TEST_F(SftpFaultTest, AnUploadWhoseRenameNeverReachedTheServerFailsAndLeavesNothing) {
  SetMode(absl::StrCat("stall_at ", kRename));
  SftpClient client(Options());
  absl::Status s = client.UploadAtomically(dir_.string(), "visits.csv", Bytes(50 << 10));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_THAT(s.message(), HasSubstr("stalled"));
  EXPECT_THAT(Files(), ::testing::IsEmpty());  // no file, and no part file left behind
}

TEST_F(SftpFaultTest, AnUploadTheServerStopsTakingFailsAndLeavesNothing) {
  SetMode(absl::StrCat("stall_at ", kWrite));
  SftpClient client(Options());
  absl::Status s = client.UploadAtomically(dir_.string(), "visits.csv", Bytes(50 << 10));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_THAT(s.message(), HasSubstr("stalled"));
  EXPECT_THAT(Files(), ::testing::IsEmpty());
}

// An sftp_csv adapter of the test's server, its files in dir_; `max_rows` rows close a batch,
// and so does `max_age_ms` after its first row.
std::unique_ptr<SftpCsvAdapter> MakeAdapter(const fs::path& dir, int max_rows, int max_age_ms,
                                            std::map<std::string, std::string>& env) {
  ess::v1::SftpCsvAdapterConfig s;
  s.set_host(env["ESS_SFTP_HOST"]);
  s.set_port(std::stoul(env["ESS_SFTP_PORT"]));
  s.set_user(env["ESS_SFTP_USER"]);
  s.set_private_key_file(env["ESS_SFTP_KEY"]);
  s.set_known_hosts_file(env["ESS_SFTP_KNOWN_HOSTS"]);
  s.set_remote_dir(dir.string());
  s.set_max_rows(max_rows);
  s.set_max_age_ms(max_age_ms);
  s.set_stall_timeout_ms(2000);
  ess::v1::PartnerConfig partner;
  partner.set_name("probation");
  partner.set_adapter("sftp_csv");
  partner.mutable_settings()->PackFrom(s);
  auto* f = partner.mutable_outbound()->add_mapping();
  f->set_target("visit_id");
  f->set_source("id");
  absl::StatusOr<std::unique_ptr<SftpCsvAdapter>> adapter = SftpCsvAdapter::Create(partner);
  EXPECT_TRUE(adapter.ok()) << adapter.status();
  return adapter.ok() ? *std::move(adapter) : nullptr;
}

// Pushes one event per id (its message id and correlation id), and collects the results.
class Pushes {
 public:
  // `maybe_delivered_as`: as the lane hands back a failed push's with its retry.
  void Push(SftpCsvAdapter& adapter, const std::vector<std::string>& ids,
            const std::string& maybe_delivered_as = "") {
    for (const std::string& id : ids) {
      fields_.push_back({MappedField{.name = "visit_id", .text = id}});
      adapter.Push({.correlation_id = id,
                    .message_id = id,
                    .fields = fields_.back(),
                    .maybe_delivered_as = maybe_delivered_as},
                   [this, id](PushResult r) {
                     absl::MutexLock lock(&mu_);
                     results_[id] = std::move(r);
                   });
    }
  }
  // Waits (at most a minute) for `n` results in all, and returns them by id.
  std::map<std::string, PushResult> Wait(size_t n) {
    absl::MutexLock lock(&mu_);
    auto all = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return results_.size() >= n; };
    mu_.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(60));
    return results_;
  }
  void Clear() {
    absl::MutexLock lock(&mu_);
    results_.clear();
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, PushResult> results_ ABSL_GUARDED_BY(mu_);
  std::deque<std::vector<MappedField>> fields_;  // stable addresses
};

// The adapter end to end: a batch whose rename answer is lost is delivered, once, and every
// event of it is done. Before, the batch failed, its events were retried one by one and came
// back in other batches, under other names: the partner got the rows twice.
TEST_F(SftpFaultTest, ABatchWhoseRenameAnswerIsLostIsDeliveredOnceAndItsEventsAreDone) {
  Pushes pushes;  // before the adapter: its thread calls back until the adapter is gone
  std::unique_ptr<SftpCsvAdapter> adapter = MakeAdapter(dir_, 3, 600000, env_);
  ASSERT_NE(adapter, nullptr);
  SetMode(absl::StrCat("drop_reply ", kRename));
  const std::vector<std::string> ids = {"VIS-1", "VIS-2", "VIS-3"};
  pushes.Push(*adapter, ids);
  std::map<std::string, PushResult> results = pushes.Wait(3);
  ASSERT_EQ(results.size(), 3u);
  for (const auto& [id, r] : results) {
    EXPECT_TRUE(r.status.ok()) << id << ": " << r.status;
    EXPECT_THAT(r.detail, HasSubstr("(3 rows)"));
  }
  const std::vector<std::string> files = Files();
  ASSERT_EQ(files.size(), 1u);
  const std::vector<SftpCsvAdapter::BatchRow> rows = {
      {"VIS-1", "VIS-1,VIS-1\r\n"}, {"VIS-2", "VIS-2,VIS-2\r\n"}, {"VIS-3", "VIS-3,VIS-3\r\n"}};
  EXPECT_EQ(files[0], adapter->FileName(rows, absl::Now()));
  EXPECT_EQ(ReadFile(dir_ / files[0]),
            "correlation_id,visit_id\r\nVIS-1,VIS-1\r\nVIS-2,VIS-2\r\n"
            "VIS-3,VIS-3\r\n");
}

// The answer lost and the server gone before the client could look again: each event of the
// batch fails with the file's path, which the lane carries with its retry. The events come back
// to an adapter that never saw them (another replica, or this one after a restart) and in other
// company: it first looks for that file, and sends only what is not there. Before, the adapter
// remembered such files itself, so rows retried by another process went out a second time.
TEST_F(SftpFaultTest, RowsOfAnUploadOfUnknownOutcomeAreNotSentAgainByAnotherProcess) {
  std::string made;
  {
    Pushes pushes;
    std::unique_ptr<SftpCsvAdapter> adapter = MakeAdapter(dir_, 4, 300, env_);
    ASSERT_NE(adapter, nullptr);
    SetMode(absl::StrCat("drop_reply_then_refuse ", kRename));
    pushes.Push(*adapter, {"VIS-1", "VIS-2", "VIS-3"});  // a batch of 3, closed by its age
    std::map<std::string, PushResult> results = pushes.Wait(3);
    ASSERT_EQ(results.size(), 3u);
    const std::vector<std::string> files = Files();
    ASSERT_EQ(files.size(), 1u);  // the server did make the file
    made = (dir_ / files[0]).string();
    for (const auto& [id, r] : results) {
      EXPECT_TRUE(IsRetryable(r.status)) << id << ": " << r.status;  // the lane retries
      EXPECT_EQ(r.maybe_delivered_as, made) << id;
      EXPECT_THAT(r.status.message(), HasSubstr(made + " may have been made all the same")) << id;
    }
  }  // that adapter, and whatever it knew, is gone

  std::unique_ptr<SftpCsvAdapter> adapter = MakeAdapter(dir_, 10, 300, env_);
  ASSERT_NE(adapter, nullptr);
  // While the server refuses, the retry cannot tell, and keeps the path for the next one.
  {
    Pushes pushes;
    pushes.Push(*adapter, {"VIS-1"}, made);
    std::map<std::string, PushResult> results = pushes.Wait(1);
    ASSERT_EQ(results.size(), 1u);
    EXPECT_FALSE(results["VIS-1"].status.ok());
    EXPECT_EQ(results["VIS-1"].maybe_delivered_as, made);
  }

  // The server is back. VIS-5 may have landed in a file that is not there, and VIS-6 names a
  // file outside remote_dir (which exists: a path from a message header is not trusted to
  // settle a row anywhere else); both go out with VIS-4 in one new file.
  sshd_->Unrefuse();
  SetMode("pass");
  const fs::path outside = dir_.parent_path() / "elsewhere.csv";
  WriteFile(outside, "correlation_id,visit_id\r\nVIS-6,VIS-6\r\n");
  Pushes pushes;
  pushes.Push(*adapter, {"VIS-1", "VIS-2", "VIS-3"}, made);
  pushes.Push(*adapter, {"VIS-4"});
  pushes.Push(*adapter, {"VIS-5"}, (dir_ / "probation_20261201_0000000000000000.csv").string());
  pushes.Push(*adapter, {"VIS-6"}, outside.string());
  std::map<std::string, PushResult> results = pushes.Wait(6);
  fs::remove(outside);
  ASSERT_EQ(results.size(), 6u);
  for (const auto& [id, r] : results) {
    EXPECT_TRUE(r.status.ok()) << id << ": " << r.status;
    const bool earlier = id == "VIS-1" || id == "VIS-2" || id == "VIS-3";
    EXPECT_THAT(r.detail, HasSubstr(earlier ? "delivered as " + made : "uploaded")) << id;
    EXPECT_EQ(r.maybe_delivered_as, "") << id;
  }
  std::string all;
  for (const std::string& name : Files()) all += ReadFile(dir_ / name);
  EXPECT_EQ(Files().size(), 2u);
  for (const std::string id : {"VIS-1", "VIS-2", "VIS-3", "VIS-4", "VIS-5", "VIS-6"}) {
    EXPECT_EQ(RowsOf(all, id), 1u) << id << " in\n" << all;
  }
}

// The same through the lane, on the real binaries and broker: the path travels with the
// event's retry (a message header), so a restarted outbound_svc does not send again the rows
// the stopped one may have delivered.
class SftpLaneFaultTest : public HubTest {
 protected:
  static void SetUpTestSuite() {
    sshd_ = new FaultySshd();
    sshd_->Start();
  }
  static void TearDownTestSuite() {
    sshd_->Stop();
    delete sshd_;
    sshd_ = nullptr;
  }

  void SetUp() override {
    HubTest::SetUp();
    ASSERT_FALSE(sshd_->Env("ESS_SFTP_ROOT").empty()) << "the test's sshd did not start";
    remote_ = fs::path(sshd_->Env("ESS_SFTP_ROOT")) / queue_;
    fs::create_directories(remote_);
    sshd_->SetMode("pass");
  }
  void TearDown() override {
    HubTest::TearDown();
    fs::remove_all(remote_);
  }

  // The hub config with the partner on the test's sshd: batches close 300 ms after their first
  // row, a call that stalls, or a connection not set up, fails after 2 s, and retries come back
  // within a second; an event is parked after `max_attempts`.
  std::string SftpConfig(int max_attempts) const {
    const std::string rest =
        "    adapter: rest\n    settings:\n      base_url: http://127.0.0.1:9\n"
        "      path: /api/slots\n      timeout_ms: 3000\n";
    const std::string sftp = absl::StrCat(
        "    adapter: sftp_csv\n    settings:\n      host: ", sshd_->Env("ESS_SFTP_HOST"),
        "\n      port: ", sshd_->Env("ESS_SFTP_PORT"),
        "\n      user: ", sshd_->Env("ESS_SFTP_USER"),
        "\n      private_key_file: ", sshd_->Env("ESS_SFTP_KEY"),
        "\n      known_hosts_file: ", sshd_->Env("ESS_SFTP_KNOWN_HOSTS"),
        "\n      remote_dir: ", remote_.string(),
        "\n      max_rows: 10\n      max_age_ms: 300\n      stall_timeout_ms: 2000"
        "\n      connect_timeout_ms: 2000\n");
    const std::string retry =
        "retry: {max_attempts: 2, initial_backoff_ms: 200, max_backoff_ms: 3000}";
    std::string yaml = Config("http://127.0.0.1:9");
    EXPECT_TRUE(absl::StrContains(yaml, rest)) << yaml;
    EXPECT_TRUE(absl::StrContains(yaml, retry)) << yaml;
    absl::StrReplaceAll({{rest, sftp},
                         {retry, absl::StrCat("retry: {max_attempts: ", max_attempts,
                                              ", initial_backoff_ms: 200, max_backoff_ms: 1000}")}},
                        &yaml);
    return yaml;
  }

  void StartOutbound(const std::string& log) {
    outbound_ = std::make_unique<testing::Process>(
        std::vector<std::string>{testing::BinaryPath("outbound_svc"), "--config",
                                 dir_.File("hub.yaml")},
        dir_.File(log));
    ASSERT_TRUE(outbound_->WaitForLog("outbound lane running")) << outbound_->Log();
  }

  std::vector<std::string> Files() const { return FilesIn(remote_); }

  // The hub with the lane, VIS-1..3 published to it; the server will make their file, lose the
  // answer to the rename, and refuse every session after that. `before_publish` runs once the
  // lane is up.
  void PushThroughALostRenameAnswer(int max_attempts = 50,
                                    const std::function<void()>& before_publish = {}) {
    dir_.Write("hub.yaml", SftpConfig(max_attempts));
    ASSERT_NO_FATAL_FAILURE(StartReplay());
    sshd_->SetMode(absl::StrCat("drop_reply_then_refuse ", kRename));
    ASSERT_NO_FATAL_FAILURE(StartOutbound("outbound-1.log"));
    if (before_publish) {
      ASSERT_NO_FATAL_FAILURE(before_publish());
    }
    Publish({{"VIS-1", VisitEvent("VIS-1")},
             {"VIS-2", VisitEvent("VIS-2")},
             {"VIS-3", VisitEvent("VIS-3")}});
  }

  // Waits until the server renamed the batch's file into place (not just began its part file),
  // while the client waits for the lost answer (2 s); sets its name.
  void WaitForTheFileMade(std::string* made) {
    ASSERT_TRUE(testing::WaitFor(
        [&] {
          const std::vector<std::string> files = Files();
          return files.size() == 1 && !files[0].starts_with(".");
        },
        absl::Seconds(30)))
        << outbound_->Log();
    *made = Files()[0];
  }

  // PushThroughALostRenameAnswer, then SIGTERM to the lane while the upload waits for the lost
  // answer, with `deadline_ms` to finish. Sets the file the server made and the stopped lane's
  // log.
  void StopDuringTheUpload(int deadline_ms, std::string* made, std::string* log) {
    outbound_extra_ = absl::StrCat("  shutdown_deadline_ms: ", deadline_ms);
    ASSERT_NO_FATAL_FAILURE(PushThroughALostRenameAnswer());
    ASSERT_NO_FATAL_FAILURE(WaitForTheFileMade(made));
    EXPECT_EQ(outbound_->Stop(SIGTERM, absl::Seconds(30)), 0) << outbound_->Log();
    *log = outbound_->Log();
    outbound_.reset();
  }

  // The server is back. The three retries of VIS-1..3 wait in the queue beside a new event,
  // VIS-4, for a lane that never saw them: it finds their rows in `made`, and sends VIS-4 alone.
  void ExpectTheRetriesToFind(const std::string& made) {
    sshd_->Unrefuse();
    sshd_->SetMode("pass");
    Publish({{"VIS-4", VisitEvent("VIS-4")}});
    ASSERT_TRUE(testing::WaitFor([&] { return Depth(queue_) == 4; }, absl::Seconds(10)))
        << Depth(queue_);
    ASSERT_NO_FATAL_FAILURE(StartOutbound("outbound-2.log"));
    ASSERT_TRUE(testing::WaitFor(
        [&] { return Stats(ess::v1::DIRECTION_OUTBOUND).delivered() == 4; }, absl::Seconds(30)))
        << Stats(ess::v1::DIRECTION_OUTBOUND).ShortDebugString() << "\n"
        << outbound_->Log();
    EXPECT_THAT(outbound_->Log(), HasSubstr("CSV rows found delivered by an earlier upload"));
    EXPECT_THAT(outbound_->Log(), HasSubstr("rows=3"));

    const std::vector<std::string> files = Files();
    EXPECT_EQ(files.size(), 2u);
    EXPECT_THAT(files, ::testing::Contains(made));
    std::string all;
    for (const std::string& name : files) all += ReadFile(remote_ / name);
    for (const std::string id : {"VIS-1", "VIS-2", "VIS-3", "VIS-4"}) {
      EXPECT_EQ(RowsOf(all, id), 1u) << id << " in\n" << all;
    }
    EXPECT_EQ(DepthOrZero(queue_ + ".parked"), 0u);
  }

  static FaultySshd* sshd_;
  fs::path remote_;
};

FaultySshd* SftpLaneFaultTest::sshd_ = nullptr;

TEST_F(SftpLaneFaultTest, ARestartedLaneDoesNotSendAgainRowsAnUploadOfUnknownOutcomeMade) {
  ASSERT_NO_FATAL_FAILURE(PushThroughALostRenameAnswer());
  // The server made the file, its answer was lost, and it refuses every session since: the
  // first attempt failed, recorded with the path.
  ASSERT_TRUE(testing::WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).failed() == 3; },
                               absl::Seconds(30)))
      << outbound_->Log();
  const ess::v1::GetResponse trail = Trail("VIS-1");
  ASSERT_EQ(trail.records_size(), 1);
  EXPECT_THAT(trail.records(0).error(), HasSubstr("may have been made all the same"));
  ASSERT_EQ(Files().size(), 1u);
  const std::string made = Files()[0];
  EXPECT_EQ(outbound_->Stop(), 0) << outbound_->Log();
  outbound_.reset();
  ExpectTheRetriesToFind(made);
}

// The lane is killed (SIGKILL) while the upload waits for the lost answer: no failure is
// recorded, no retry carries the path, and the broker gives the events back as they came. The
// notes the lane stored before the upload (RECEIVED, with the file's path) tell the next lane
// where to look: it batches the three with VIS-4, under another name, and finds their rows in the
// first file. Before, it sent them again in the new file.
TEST_F(SftpLaneFaultTest, ALaneKilledDuringAnUploadLeavesThePathInItsRecords) {
  ASSERT_NO_FATAL_FAILURE(PushThroughALostRenameAnswer());
  std::string made;
  ASSERT_NO_FATAL_FAILURE(WaitForTheFileMade(&made));
  for (const std::string id : {"VIS-1", "VIS-2", "VIS-3"}) {
    const ess::v1::GetResponse trail = Trail(id);
    ASSERT_EQ(trail.records_size(), 1) << id;
    EXPECT_EQ(trail.records(0).status(), ess::v1::MESSAGE_STATUS_RECEIVED) << id;
    EXPECT_EQ(trail.records(0).maybe_delivered_as(), (remote_ / made).string()) << id;
    EXPECT_EQ(trail.trail().stage(), "pushed") << id;
  }
  EXPECT_EQ(outbound_->Stop(SIGKILL), 128 + SIGKILL);
  outbound_.reset();
  ExpectTheRetriesToFind(made);
}

// The lane is told to stop while the upload waits for the lost answer. The upload fails only
// then, while the lane drains: its events go the way of a retry, with the path, instead of back
// to the queue as they came. Before, they came back without it, and the next lane sent the rows
// again.
TEST_F(SftpLaneFaultTest, ALaneStoppedDuringAnUploadOfUnknownOutcomeHandsThePathOn) {
  std::string made, log;
  ASSERT_NO_FATAL_FAILURE(StopDuringTheUpload(20000, &made, &log));
  EXPECT_THAT(log, HasSubstr("retried=3 parked=0 duplicates=0 requeued=0"));
  EXPECT_EQ(Stats(ess::v1::DIRECTION_OUTBOUND).failed(), 3u);
  ExpectTheRetriesToFind(made);
}

// The same with a shutdown deadline shorter than the wait for the lost answer: the upload fails
// after the deadline, its events are recorded FAILED with the path, and their moves to the delay
// queue race the lane's publisher, which stops then. A move that loses gives the event back to
// the broker as it came (in the two runs whose log I read, all three did: "requeued=3"; a run
// where the moves win passes without the redelivery lookup); the next lane sees it redelivered
// and takes the path from its record. Before, it sent those rows again.
TEST_F(SftpLaneFaultTest,
       ALaneWhoseShutdownDeadlinePassesDuringSuchAnUploadLeavesThePathInTheRecords) {
  std::string made, log;
  ASSERT_NO_FATAL_FAILURE(StopDuringTheUpload(100, &made, &log));
  EXPECT_THAT(log, HasSubstr("shutdown deadline passed"));
  for (const std::string id : {"VIS-1", "VIS-2", "VIS-3"}) {
    const ess::v1::GetResponse trail = Trail(id);
    ASSERT_EQ(trail.records_size(), 1) << id;
    EXPECT_EQ(trail.records(0).status(), ess::v1::MESSAGE_STATUS_FAILED) << id;
    EXPECT_EQ(trail.records(0).maybe_delivered_as(), (remote_ / made).string()) << id;
  }
  ExpectTheRetriesToFind(made);
}

// The lane cannot move the failed events to a delay queue (the test deleted them): they go back
// to their queue as they came, without the path, and come back redelivered. Their FAILED
// records have the path: the lane that takes them (this one while the server refuses, the next
// one once it is back) reads it there. Before, the next lane sent the rows again.
TEST_F(SftpLaneFaultTest, EventsWhoseMoveToTheDelayQueueFailedTakeThePathFromTheirRecords) {
  ASSERT_NO_FATAL_FAILURE(PushThroughALostRenameAnswer(50, [&] {
    auto conn = amqp::Connection::Open(broker_);
    ASSERT_TRUE(conn.ok()) << conn.status();
    for (const int ms : {200, 400, 800, 1000}) {
      ASSERT_TRUE((*conn)->DeleteQueue(absl::StrCat(queue_, ".retry.", ms, "ms")).ok()) << ms;
    }
  }));
  ASSERT_TRUE(testing::WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).failed() == 3; },
                               absl::Seconds(30)))
      << outbound_->Log();
  ASSERT_TRUE(testing::WaitFor(
      [&] { return absl::StrContains(outbound_->Log(), "delivery requeued"); }, absl::Seconds(10)))
      << outbound_->Log();
  ASSERT_EQ(Files().size(), 1u);
  const std::string made = Files()[0];
  // Pushed again, redelivered, while the server still refuses: the lane looks for the file first,
  // cannot, and the failure keeps the path in the records.
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        const std::vector<std::string> requeued =
            absl::StrSplit(outbound_->Log(), "delivery requeued");
        return requeued.size() > 6;  // each of the three, twice
      },
      absl::Seconds(15)))
      << outbound_->Log();
  for (const std::string id : {"VIS-1", "VIS-2", "VIS-3"}) {
    EXPECT_EQ(Trail(id).records(0).maybe_delivered_as(), (remote_ / made).string()) << id;
  }
  EXPECT_EQ(outbound_->Stop(SIGTERM, absl::Seconds(30)), 0) << outbound_->Log();
  outbound_.reset();
  ExpectTheRetriesToFind(made);
}

// The retries run out while the server still refuses: the events are parked, and their DEAD
// records keep the file's path. Once the server is back, ops replay them from the store, in two
// runs: VIS-1 and VIS-2, then the rest. Neither batch is the first one, so neither file name is
// the first file's. Each replay carries the path as the retry did, and the lane finds the rows
// in the file the first upload made. Before, both replays sent their rows again, in new files.
TEST_F(SftpLaneFaultTest, AnOpsReplayOfEventsParkedAfterAnUploadOfUnknownOutcomeFindsTheirRows) {
  ASSERT_NO_FATAL_FAILURE(PushThroughALostRenameAnswer(/*max_attempts=*/2));
  ASSERT_TRUE(testing::WaitFor([&] { return Stats(ess::v1::DIRECTION_OUTBOUND).dead() == 3; },
                               absl::Seconds(30)))
      << Stats(ess::v1::DIRECTION_OUTBOUND).ShortDebugString() << "\n"
      << outbound_->Log();
  ASSERT_EQ(Files().size(), 1u);
  const std::string made = Files()[0];
  for (const std::string id : {"VIS-1", "VIS-2", "VIS-3"}) {
    const ess::v1::GetResponse trail = Trail(id);
    ASSERT_EQ(trail.records_size(), 1) << id;
    EXPECT_EQ(trail.records(0).status(), ess::v1::MESSAGE_STATUS_DEAD) << id;
    EXPECT_EQ(trail.records(0).maybe_delivered_as(), (remote_ / made).string()) << id;
  }
  EXPECT_EQ(Depth(queue_ + ".parked"), 3u);

  sshd_->Unrefuse();
  sshd_->SetMode("pass");
  auto replay = [&](std::vector<std::string> selection) {
    std::vector<std::string> argv = {testing::BinaryPath("essctl"),
                                     "--addr",
                                     absl::StrCat("127.0.0.1:", replay_port_),
                                     "replay",
                                     "--partner",
                                     "prison_calendar",
                                     "--direction",
                                     "outbound",
                                     "--reason",
                                     "SFTP server was down",
                                     "--requested_by",
                                     "alice@ops",
                                     "--wait",
                                     "30s"};
    argv.insert(argv.end(), selection.begin(), selection.end());
    return testing::RunTool(std::move(argv), dir_.File("essctl.log"));
  };
  testing::ToolRun some = replay({"--message_id", "VIS-1,VIS-2"});
  EXPECT_EQ(some.exit_code, 0) << some.output << outbound_->Log();
  EXPECT_THAT(some.output, HasSubstr("replayed 2, skipped 0, failed 0"));
  EXPECT_THAT(some.output, HasSubstr("(then: delivered 2, parked again 0, still pending 0)"));
  testing::ToolRun rest = replay({"--status", "dead"});
  EXPECT_EQ(rest.exit_code, 0) << rest.output << outbound_->Log();
  EXPECT_THAT(rest.output, HasSubstr("replayed 1, skipped 0, failed 0"));
  EXPECT_THAT(rest.output, HasSubstr("(then: delivered 1, parked again 0, still pending 0)"));
  EXPECT_THAT(outbound_->Log(), HasSubstr("CSV rows found delivered by an earlier upload"));

  EXPECT_THAT(Files(), ::testing::ElementsAre(made));
  const std::string csv = ReadFile(remote_ / made);
  for (const std::string id : {"VIS-1", "VIS-2", "VIS-3"}) {
    EXPECT_EQ(RowsOf(csv, id), 1u) << id << " in\n" << csv;
    const ess::v1::GetResponse trail = Trail(id);
    ASSERT_EQ(trail.records_size(), 1) << id;
    EXPECT_EQ(trail.records(0).status(), ess::v1::MESSAGE_STATUS_DELIVERED) << id;
    EXPECT_EQ(trail.records(0).maybe_delivered_as(), "") << id;
  }
}

}  // namespace
}  // namespace ess::adapters::sftp_csv
