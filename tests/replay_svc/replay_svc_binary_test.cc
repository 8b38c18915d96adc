// The real replay_svc binary (and essctl) on one database file across a restart: records go in
// through ReplayRecorder, the service stops on SIGTERM with exit code 0, a second run serves the
// same records back. Binaries come from ${ESS_BIN_DIR} (set by ess_test).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/http_client.h"
#include "common/replay_client.h"
#include "common/sqlite.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/replay_svc/test_store.h"
#include "tests/replay_svc/test_util.h"

extern char** environ;

namespace ess::replay {
namespace {

using ::ess::replay::testing::MakeRecord;
using ::ess::replay::testing::Outbound;
using ::ess::replay::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// The value of the sample `series` (name and labels, as exposed) in a /metrics text; empty if
// it is not there.
std::string SampleValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::ConsumePrefix(&line, series) && absl::ConsumePrefix(&line, " ")) {
      return std::string(line);
    }
  }
  return "";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A child process with stdout and stderr sent to files. Killed (SIGKILL) if still running on
// destruction.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::string& out_path,
        const std::string& err_path) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out_path.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_path.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0].c_str(), &actions, nullptr, args.data(), environ) != 0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    if (pid_ > 0) waiter_ = std::thread([this] { Reap(); });
  }

  ~Child() {
    if (pid_ > 0 && !exited_.HasBeenNotified()) kill(pid_, SIGKILL);
    if (waiter_.joinable()) waiter_.join();
  }

  bool started() const { return pid_ > 0; }
  void Signal(int sig) {
    if (pid_ > 0 && !exited_.HasBeenNotified()) kill(pid_, sig);
  }

  // The exit code, or nullopt if it did not exit normally within `timeout`.
  std::optional<int> WaitForExit(absl::Duration timeout) {
    if (!exited_.WaitForNotificationWithTimeout(timeout)) return std::nullopt;
    if (!WIFEXITED(status_)) return std::nullopt;
    return WEXITSTATUS(status_);
  }
  bool HasExited() const { return exited_.HasBeenNotified(); }

 private:
  void Reap() {
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    status_ = status;
    exited_.Notify();
  }

  pid_t pid_ = -1;
  int status_ = 0;  // Written before exited_ is notified.
  absl::Notification exited_;
  std::thread waiter_;
};

// What a finished tool printed, and its exit code (-1 if it did not finish in time).
struct ToolResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

class ReplaySvcBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* bin_dir = std::getenv("ESS_BIN_DIR");
    ASSERT_NE(bin_dir, nullptr) << "ESS_BIN_DIR is not set (run through ctest)";
    replay_svc_ = absl::StrCat(bin_dir, "/replay_svc");
    essctl_ = absl::StrCat(bin_dir, "/essctl");
    ASSERT_EQ(access(replay_svc_.c_str(), X_OK), 0) << "not built: " << replay_svc_;
    ASSERT_EQ(access(essctl_.c_str(), X_OK), 0) << "not built: " << essctl_;

    port_ = testing::PickFreePort();
    ASSERT_GT(port_, 0);
    address_ = absl::StrCat("127.0.0.1:", port_);
    metrics_port_ = testing::PickFreePort();
    ASSERT_GT(metrics_port_, 0);
    config_ = dir_.File("hub.yaml");
    std::ofstream(config_) << "replay:\n"
                           << "  listen: \"" << address_ << "\"\n"
                           << "  database_path: \"" << dir_.File("replay.db") << "\"\n"
                           << "  metrics_listen: \"127.0.0.1:" << metrics_port_ << "\"\n";
  }

  // Starts replay_svc and waits until it answers a call.
  std::unique_ptr<Child> StartService(const std::string& log_name) {
    return StartService(log_name, config_, address_);
  }
  // The same, with `config`, which makes it listen on `address`, and more flags.
  std::unique_ptr<Child> StartService(const std::string& log_name, const std::string& config,
                                      const std::string& address,
                                      const std::vector<std::string>& flags = {}) {
    std::vector<std::string> argv = {replay_svc_, "--config", config};
    argv.insert(argv.end(), flags.begin(), flags.end());
    auto child = std::make_unique<Child>(argv, dir_.File(log_name + ".out"), dir_.File(log_name));
    EXPECT_TRUE(child->started());
    // Short reconnect backoff: the first attempts are refused until the child listens.
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 20);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 20);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 200);
    std::unique_ptr<ess::v1::ReplayService::Stub> stub = ess::v1::ReplayService::NewStub(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
    grpc::ClientContext context;
    context.set_wait_for_ready(true);
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    ess::v1::StatsResponse stats;
    grpc::Status status = stub->Stats(&context, ess::v1::StatsRequest(), &stats);
    EXPECT_TRUE(status.ok()) << status.error_message() << "\nlog:\n"
                             << ReadFile(dir_.File(log_name));
    return child;
  }

  ToolResult RunEssctl(const std::vector<std::string>& args) { return RunEssctl(address_, args); }
  ToolResult RunEssctl(const std::string& address, const std::vector<std::string>& args) {
    std::vector<std::string> argv = {essctl_, "--addr", address};
    argv.insert(argv.end(), args.begin(), args.end());
    return Run(argv, "essctl");
  }
  // Runs `argv` to its end (killed after `timeout`: exit_code -1, as for a crash), its output in
  // NAME.out and NAME.err.
  ToolResult Run(const std::vector<std::string>& argv, const std::string& name,
                 absl::Duration timeout = absl::Seconds(30)) {
    const std::string out = dir_.File(name + ".out");
    const std::string err = dir_.File(name + ".err");
    ToolResult result;
    {
      Child tool(argv, out, err);
      result.exit_code = tool.WaitForExit(timeout).value_or(-1);
    }
    result.out = ReadFile(out);
    result.err = ReadFile(err);
    return result;
  }

  TempDir dir_;
  std::string replay_svc_;
  std::string essctl_;
  int port_ = 0;
  std::string address_;
  std::string config_;
  int metrics_port_ = 0;
};

TEST_F(ReplaySvcBinaryTest, RecordsSurviveARestartAndEssctlReadsThem) {
  constexpr int kRecords = 300;
  {
    std::unique_ptr<Child> service = StartService("run1.log");
    ASSERT_FALSE(HasFailure());

    absl::Mutex mu;
    int ok = 0;
    int done = 0;
    {
      // One batch in flight at a time, so batches commit in the order they were sent and m-299
      // is the newest record (the list below expects it first).
      ReplayRecorder recorder({.address = address_, .batch_max = 64, .max_in_flight_batches = 1});
      auto count = [&](absl::Status s) {
        absl::MutexLock lock(&mu);
        ++done;
        if (s.ok()) ++ok;
      };
      for (int i = 0; i < kRecords; ++i) {
        recorder.Record(Outbound("prison", absl::StrCat("m-", i)), count);
      }
      recorder.Record(MakeRecord(ess::v1::DIRECTION_OUTBOUND, "prison", "VIS-77", "VIS-77",
                                 ess::v1::MESSAGE_STATUS_DELIVERED),
                      count);
      recorder.Stop();  // Flushes and waits.
    }
    EXPECT_EQ(done, kRecords + 1);
    EXPECT_EQ(ok, kRecords + 1);

    // What the store says of itself to Prometheus. A call's run time is observed when its task
    // returns, just after the task answered, so the last call's may still be on its way: scrape
    // until the Record run times and calls agree, for at most 2 s.
    ess::http::Client http({});
    absl::StatusOr<ess::http::Response> scrape;
    for (int attempt = 0; attempt < 100; ++attempt) {
      scrape = http.SendAndWait(
          {.method = "GET", .url = absl::StrCat("http://127.0.0.1:", metrics_port_, "/metrics")});
      ASSERT_TRUE(scrape.ok()) << scrape.status();
      if (SampleValue(scrape->body, R"(ess_replay_store_seconds_count{method="Record"})") ==
          SampleValue(scrape->body, R"(ess_replay_calls_total{method="Record",result="ok"})")) {
        break;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    EXPECT_EQ(scrape->status, 200);
    EXPECT_THAT(scrape->body,
                HasSubstr(absl::StrCat("\ness_replay_records_stored_total ", kRecords + 1, "\n")));
    EXPECT_THAT(scrape->body, HasSubstr(R"(ess_replay_calls_total{method="Record",result="ok"} )"));
    EXPECT_THAT(scrape->body,
                Not(HasSubstr(R"(ess_replay_calls_total{method="Record",result="ok"} 0)")));
    EXPECT_THAT(scrape->body,
                HasSubstr(R"(ess_replay_calls_total{method="Replay",result="ok"} 0)"));
    // Each Record call's transaction is timed, and so is its wait for the one writer thread,
    // which nothing else used here.
    const std::string record_calls =
        SampleValue(scrape->body, R"(ess_replay_calls_total{method="Record",result="ok"})");
    ASSERT_FALSE(record_calls.empty()) << scrape->body;
    EXPECT_EQ(SampleValue(scrape->body, R"(ess_replay_store_seconds_count{method="Record"})"),
              record_calls);
    EXPECT_EQ(SampleValue(scrape->body, R"(ess_replay_queue_wait_seconds_count{queue="write"})"),
              record_calls);
    EXPECT_EQ(SampleValue(scrape->body, R"(ess_replay_store_seconds_count{method="Claim"})"), "0");
    EXPECT_THAT(scrape->body, HasSubstr("# TYPE ess_replay_store_seconds histogram"));
    http.Stop();

    service->Signal(SIGTERM);
    EXPECT_EQ(service->WaitForExit(absl::Seconds(30)), std::optional<int>(0));
    const std::string log = ReadFile(dir_.File("run1.log"));
    EXPECT_THAT(log, HasSubstr(absl::StrCat("msg=listening address=", address_)));
    EXPECT_THAT(log, HasSubstr("msg=stopping signal=SIGTERM"));
    EXPECT_THAT(log, HasSubstr("msg=stopped"));
  }

  std::unique_ptr<Child> service = StartService("run2.log");
  ASSERT_FALSE(HasFailure());
  std::unique_ptr<ess::v1::ReplayService::Stub> stub = MakeReplayStub(address_);
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    ess::v1::StatsRequest request;
    ess::v1::StatsResponse stats;
    ASSERT_TRUE(stub->Stats(&context, request, &stats).ok());
    ASSERT_EQ(stats.partners_size(), 1);
    EXPECT_EQ(stats.partners(0).received(), static_cast<uint64_t>(kRecords));
    EXPECT_EQ(stats.partners(0).delivered(), 1u);
  }
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    ess::v1::GetRequest request;
    request.mutable_record()->set_direction(ess::v1::DIRECTION_OUTBOUND);
    request.mutable_record()->set_partner("prison");
    request.mutable_record()->set_message_id("m-123");
    ess::v1::GetResponse response;
    grpc::Status status = stub->Get(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(response.records_size(), 1);
    EXPECT_EQ(response.records(0).payload(), Outbound("prison", "m-123").payload());
  }

  ToolResult get = RunEssctl({"get", "--correlation", "VIS-77"});
  EXPECT_EQ(get.exit_code, 0) << get.err;
  EXPECT_THAT(get.out, HasSubstr("correlation  VIS-77"));
  EXPECT_THAT(get.out, HasSubstr("stage        delivered"));
  EXPECT_THAT(get.out, HasSubstr("confirmed    -"));

  ToolResult list =
      RunEssctl({"list", "--partner", "prison", "--status", "received", "--limit", "5"});
  EXPECT_EQ(list.exit_code, 0) << list.err;
  EXPECT_THAT(list.out, HasSubstr("m-299"));
  EXPECT_THAT(list.out, HasSubstr("(5 records; more match, raise --limit)"));
  EXPECT_THAT(list.out,
              ::testing::StartsWith("RECEIVED"));  // the column the received_* filters read

  // Every record entered the hub when the test wrote it: none before the epoch's second day.
  ToolResult received =
      RunEssctl({"list", "--partner", "prison", "--received_until", "1970-01-02T00:00:00Z"});
  EXPECT_EQ(received.exit_code, 0) << received.err;
  EXPECT_THAT(received.out, HasSubstr("(0 records)"));
  received = RunEssctl(
      {"list", "--partner", "prison", "--received_since", "1970-01-02T00:00:00Z", "--limit", "5"});
  EXPECT_EQ(received.exit_code, 0) << received.err;
  EXPECT_THAT(received.out, HasSubstr("(5 records; more match, raise --limit)"));

  ToolResult stats = RunEssctl({"stats"});
  EXPECT_EQ(stats.exit_code, 0) << stats.err;
  EXPECT_THAT(stats.out, HasSubstr("OLDEST_PENDING"));
  EXPECT_THAT(stats.out, HasSubstr("100.0%"));

  ToolResult missing = RunEssctl({"get", "--correlation", "VIS-404"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, HasSubstr("error: NOT_FOUND: no records for correlation_id=VIS-404"));

  ToolResult usage = RunEssctl({"frobnicate"});
  EXPECT_EQ(usage.exit_code, 2);
  EXPECT_THAT(usage.err, HasSubstr("unknown command \"frobnicate\""));

  ToolResult bad_status = RunEssctl({"list", "--status", "lost"});
  EXPECT_EQ(bad_status.exit_code, 2);
  // A value a flag cannot take is a usage error too, named (Abseil alone exits 1).
  ToolResult bad_time = RunEssctl({"--since", "yesterday", "list"});
  EXPECT_EQ(bad_time.exit_code, 2) << bad_time.err;
  EXPECT_THAT(bad_time.err, HasSubstr("error: --since yesterday: "));
  ToolResult bad_wait = RunEssctl({"replay", "--wait=60", "--partner", "prison"});
  EXPECT_EQ(bad_wait.exit_code, 2) << bad_wait.err;
  EXPECT_THAT(bad_wait.err, HasSubstr("error: --wait 60: "));

  // What a partner accepted and never confirmed: VIS-77, until its confirmation is recorded.
  const std::vector<std::string> drift = {
      "list",    "--direction",          "outbound",     "--status", "delivered",
      "--until", "2100-01-01T00:00:00Z", "--unconfirmed"};
  ToolResult unconfirmed = RunEssctl(drift);
  EXPECT_EQ(unconfirmed.exit_code, 0) << unconfirmed.err;
  EXPECT_THAT(unconfirmed.out, HasSubstr("VIS-77"));
  EXPECT_THAT(unconfirmed.out, HasSubstr("(1 record"));
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    ess::v1::RecordRequest request;
    *request.add_records() = MakeRecord(ess::v1::DIRECTION_INBOUND, "prison", "wh-77", "VIS-77",
                                        ess::v1::MESSAGE_STATUS_PUBLISHED);
    ess::v1::RecordResponse response;
    grpc::Status status = stub->Record(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  unconfirmed = RunEssctl(drift);
  EXPECT_EQ(unconfirmed.exit_code, 0) << unconfirmed.err;
  EXPECT_THAT(unconfirmed.out, HasSubstr("(0 records)"));

  // One record in full: a failed push that may have landed all the same says where.
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    ess::v1::RecordRequest request;
    ess::v1::MessageRecord* failed = request.add_records();
    *failed = Outbound("prison", "m-unsure", ess::v1::MESSAGE_STATUS_FAILED);
    failed->set_error("sftp upload: stalled");
    failed->set_maybe_delivered_as("/upload/prison_20261201_146a2f7c4b8b866d.csv");
    ess::v1::RecordResponse response;
    grpc::Status status = stub->Record(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  ToolResult full = RunEssctl(
      {"get", "--direction", "outbound", "--partner", "prison", "--message_id", "m-unsure"});
  EXPECT_EQ(full.exit_code, 0) << full.err;
  EXPECT_THAT(full.out, HasSubstr("status              failed"));
  EXPECT_THAT(full.out, HasSubstr("error               sftp upload: stalled"));
  EXPECT_THAT(full.out,
              HasSubstr("maybe_delivered_as  /upload/prison_20261201_146a2f7c4b8b866d.csv"));
  full =
      RunEssctl({"get", "--direction", "outbound", "--partner", "prison", "--message_id", "m-1"});
  EXPECT_EQ(full.exit_code, 0) << full.err;
  EXPECT_THAT(full.out, HasSubstr("maybe_delivered_as  -"));

  // An idle client answers the server's shutdown GOAWAY/ping only at its next backup poll (up
  // to 5 s), which the server's graceful shutdown waits for; close it first to stay quick.
  stub.reset();
  service->Signal(SIGINT);
  EXPECT_EQ(service->WaitForExit(absl::Seconds(30)), std::optional<int>(0));
}

// essctl's replay against a ReplayService of the test's own on loopback, which answers (or
// fails) each call as the test says: what essctl sends, and what it prints when a call fails.
class FakeReplayService final : public ess::v1::ReplayService::Service {
 public:
  grpc::Status Replay(grpc::ServerContext*, const ess::v1::ReplayRequest* request,
                      ess::v1::ReplayResponse* response) override {
    absl::MutexLock lock(&mu_);
    requests_.push_back(*request);
    if (fail_call_ >= 0 && static_cast<int>(requests_.size()) - 1 == fail_call_) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the store went away");
    }
    auto replayed = [&](const std::string& id) {
      ess::v1::ReplayedRecord* r = response->add_records();
      r->mutable_key()->set_direction(ess::v1::DIRECTION_OUTBOUND);
      r->mutable_key()->set_partner("prison");
      r->mutable_key()->set_message_id(id);
      r->set_correlation_id(id);
      r->set_previous_status(ess::v1::MESSAGE_STATUS_DEAD);
      r->set_target("queue visit_updates");
      r->set_outcome(ess::v1::ReplayedRecord::OUTCOME_REPLAYED);
      if (auto it = read_at_.find(id); it != read_at_.end()) {
        r->mutable_previous_updated_at()->set_seconds(it->second);
      }
      response->set_replayed(response->replayed() + 1);
    };
    if (request->keys_size() > 1000) {  // what replay_svc answers
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("keys: ", request->keys_size(), " given, at most 1000"));
    }
    for (const ess::v1::RecordKey& key : request->keys()) replayed(key.message_id());
    if (request->has_filter()) {  // pages of two, without end
      const int page = static_cast<int>(requests_.size());
      replayed(absl::StrCat("page", page, "-a"));
      replayed(absl::StrCat("page", page, "-b"));
      response->set_next_page_token(absl::StrCat("after-page-", page));
    }
    return grpc::Status::OK;
  }

  // What essctl --wait reads back: each stored record by its message id; other keys are not
  // found.
  grpc::Status Lookup(grpc::ServerContext*, const ess::v1::LookupRequest* request,
                      ess::v1::LookupResponse* response) override {
    absl::MutexLock lock(&mu_);
    for (const ess::v1::RecordKey& key : request->keys()) {
      ess::v1::LookupResult* result = response->add_results();
      if (auto it = stored_.find(key.message_id()); it != stored_.end()) {
        result->set_found(true);
        *result->mutable_record() = it->second;
      }
    }
    return grpc::Status::OK;
  }

  void FailCall(int index) {
    absl::MutexLock lock(&mu_);
    fail_call_ = index;
  }
  // Record `id` was last written at `seconds` when the replay read it (its previous_updated_at).
  void SetReadAt(const std::string& id, int64_t seconds) {
    absl::MutexLock lock(&mu_);
    read_at_[id] = seconds;
  }
  // Lookup answers `record` for its message id.
  void Store(const ess::v1::MessageRecord& record) {
    absl::MutexLock lock(&mu_);
    stored_[record.message_id()] = record;
  }
  std::vector<ess::v1::ReplayRequest> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }

 private:
  absl::Mutex mu_;
  std::vector<ess::v1::ReplayRequest> requests_ ABSL_GUARDED_BY(mu_);
  int fail_call_ ABSL_GUARDED_BY(mu_) = -1;
  std::map<std::string, int64_t> read_at_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, ess::v1::MessageRecord> stored_ ABSL_GUARDED_BY(mu_);
};

class EssctlReplayTest : public ReplaySvcBinaryTest {
 protected:
  void SetUp() override {
    ReplaySvcBinaryTest::SetUp();
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    fake_address_ = absl::StrCat("127.0.0.1:", port);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  }

  FakeReplayService service_;
  std::unique_ptr<grpc::Server> server_;
  std::string fake_address_;
};

// More ids than one call takes go in calls of 1000, in their order, each id once.
TEST_F(EssctlReplayTest, MessageIdsGoInCallsOfAThousand) {
  std::vector<std::string> ids;
  for (int i = 0; i < 2500; ++i) ids.push_back(absl::StrCat("m-", i));
  ToolResult run = RunEssctl(
      fake_address_, {"replay", "--direction", "outbound", "--partner", "prison", "--message_id",
                      absl::StrJoin(ids, ","), "--reason", "partner lost them"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr("(replayed 2500, skipped 0, failed 0)"));
  std::vector<ess::v1::ReplayRequest> requests = service_.requests();
  ASSERT_EQ(requests.size(), 3u) << run.err;
  std::vector<std::string> sent;
  for (const ess::v1::ReplayRequest& r : requests) {
    EXPECT_EQ(r.reason(), "partner lost them");
    for (const ess::v1::RecordKey& key : r.keys()) sent.push_back(key.message_id());
  }
  EXPECT_EQ(requests[0].keys_size(), 1000);
  EXPECT_EQ(requests[1].keys_size(), 1000);
  EXPECT_EQ(requests[2].keys_size(), 500);
  EXPECT_EQ(sent, ids);

  // An id given twice would be replayed twice (the store sees one call at a time).
  ToolResult twice =
      RunEssctl(fake_address_, {"replay", "--direction", "outbound", "--partner", "prison",
                                "--message_id", "m-1,m-2,m-1", "--reason", "x"});
  EXPECT_EQ(twice.exit_code, 2) << twice.err;
  EXPECT_THAT(twice.err, HasSubstr("--message_id: m-1 is given twice"));
  EXPECT_EQ(service_.requests().size(), 3u);
}

// A call failing after earlier pages were replayed: their rows are printed, then the error.
TEST_F(EssctlReplayTest, WhenALaterPageFailsTheRowsAlreadyReplayedAreShown) {
  service_.FailCall(2);  // the third call
  ToolResult run = RunEssctl(fake_address_, {"replay", "--partner", "prison", "--status", "dead",
                                             "--reason", "partner SFTP down overnight"});
  EXPECT_EQ(run.exit_code, 1) << run.err;
  for (const char* id : {"page1-a", "page1-b", "page2-a", "page2-b"}) {
    EXPECT_THAT(run.out, HasSubstr(id)) << run.out;
  }
  EXPECT_THAT(run.err, HasSubstr("after 4 replayed, 0 skipped, 0 failed and 0 unconfirmed"));
  EXPECT_THAT(run.err, HasSubstr("UNAVAILABLE: the store went away"));
  EXPECT_EQ(service_.requests().size(), 3u);
}

// --wait reads each replayed record back by key and compares its updated_at with the one the
// replay read: a key no longer found (retention deleted it meanwhile) is still pending, and the
// keys after it keep their own read times. (Before, the key not found took no read time, so
// each later key was compared with its predecessor's: a record not yet written since the
// replay counted as parked again, DEAD as the replay found it.)
TEST_F(EssctlReplayTest, WaitComparesEachKeyWithItsOwnReadTimePastAKeyNotFound) {
  service_.SetReadAt("a-gone", 1'000);
  service_.SetReadAt("b-dead", 2'000);
  service_.SetReadAt("c-delivered", 3'000);
  auto record = [](const std::string& id, ess::v1::MessageStatus status, int64_t updated_at) {
    ess::v1::MessageRecord r;
    r.set_direction(ess::v1::DIRECTION_OUTBOUND);
    r.set_partner("prison");
    r.set_message_id(id);
    r.set_status(status);
    r.mutable_updated_at()->set_seconds(updated_at);
    return r;
  };
  // b-dead: not written since the replay read it (its confirm not marked yet): pending.
  service_.Store(record("b-dead", ess::v1::MESSAGE_STATUS_DEAD, 2'000));
  // c-delivered: the lane delivered it since.
  service_.Store(record("c-delivered", ess::v1::MESSAGE_STATUS_DELIVERED, 4'000));
  ToolResult run = RunEssctl(fake_address_, {"replay", "--direction", "outbound", "--partner",
                                             "prison", "--message_id", "a-gone,b-dead,c-delivered",
                                             "--reason", "partner lost them", "--wait", "1s"});
  EXPECT_EQ(run.exit_code, 1) << run.err;  // two still pending
  EXPECT_THAT(run.out, HasSubstr("(replayed 3, skipped 0, failed 0)"));
  EXPECT_THAT(run.out, HasSubstr("(then: delivered 1, parked again 0, still pending 2)"))
      << run.out;
}

// A blank reason is no reason: refused before any call (replay_svc refuses it too).
TEST_F(EssctlReplayTest, ABlankReasonIsAUsageError) {
  ToolResult run = RunEssctl(
      fake_address_, {"replay", "--partner", "prison", "--status", "dead", "--reason", "   "});
  EXPECT_EQ(run.exit_code, 2) << run.err;
  EXPECT_THAT(run.err, HasSubstr("replay needs --reason"));
  EXPECT_TRUE(service_.requests().empty());
}

// A flag the command does not take would be ignored: `replay --limit 1` would replay every
// match. Refused before any call, naming the flag and who takes it.
TEST_F(EssctlReplayTest, AFlagTheCommandDoesNotTakeIsAUsageError) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"replay", "--partner", "prison", "--direction", "outbound", "--limit", "1", "--reason",
        "partner lost them"},
       "replay does not take --limit (did you mean --max_records?)"},
      {{"replay", "--partner", "prison", "--limit=1", "--dry_run"},
       "replay does not take --limit (did you mean --max_records?)"},
      {{"list", "--dry_run"}, "list does not take --dry_run (replay takes it)"},
      {{"list", "--max_records", "5"}, "list does not take --max_records (did you mean --limit?)"},
      {{"list", "--message_id", "m-1"},
       "list does not take --message_id (show one record with get --direction D --partner P "
       "--message_id M)"},
      {{"stats", "--limit", "5"}, "stats does not take --limit (list takes it)"},
      {{"get", "--correlation", "VIS-1", "--status", "dead"},
       "get does not take --status (list and replay take it)"},
      {{"stats", "--config", "hub.yaml"}, "stats does not take --config (no command takes it)"},
  };
  for (const auto& [args, message] : cases) {
    ToolResult run = RunEssctl(fake_address_, args);
    EXPECT_EQ(run.exit_code, 2) << absl::StrJoin(args, " ") << "\n" << run.err;
    EXPECT_THAT(run.err, HasSubstr("error: " + message)) << absl::StrJoin(args, " ");
  }
  EXPECT_TRUE(service_.requests().empty()) << "nothing is replayed";
  // The flags a command takes are taken, the common ones included.
  ToolResult replay =
      RunEssctl(fake_address_, {"--timeout", "20s", "replay", "--partner", "prison",
                                "--max_records", "2", "--reason", "partner lost them"});
  EXPECT_EQ(replay.exit_code, 0) << replay.err;
  EXPECT_THAT(replay.out, HasSubstr("(replayed 2, skipped 0, failed 0; more match"));
  EXPECT_EQ(service_.requests().size(), 1u);
}

// An address without a port would be dialled at port 0 (UNAVAILABLE, exit 1).
TEST_F(EssctlReplayTest, AnAddressWithoutAPortIsAUsageError) {
  for (const std::string address :
       {"127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "localhost:http", "127.0.0.1:65536", ":50051"}) {
    ToolResult run = RunEssctl(address, {"stats"});
    EXPECT_EQ(run.exit_code, 2) << address << "\n" << run.err;
    EXPECT_THAT(run.err, HasSubstr(absl::StrCat("error: --addr: \"", address,
                                                "\" is not HOST:PORT (e.g. 127.0.0.1:50051)")));
  }
}

// gRPC aborts a process that puts a line break (or any byte but visible ASCII) into a metadata
// value, printing the value: essctl refuses such a token before any call, never printing it.
TEST_F(EssctlReplayTest, ATokenThatCannotBeSentIsAUsageError) {
  const std::string token = "ops-token-0123456789abcdef";
  ASSERT_EQ(setenv("ESS_REPLAY_TOKEN", (token + "\n").c_str(), 1), 0);
  ToolResult run = RunEssctl(fake_address_, {"replay", "--partner", "prison", "--status", "dead",
                                             "--reason", "partner lost them"});
  EXPECT_EQ(run.exit_code, 2) << run.err;
  EXPECT_THAT(run.err, HasSubstr("error: --token_env: the token in ESS_REPLAY_TOKEN ends with a "
                                 "line break (the last line of the file it came from? store the "
                                 "token without it): a bearer token may hold only visible ASCII "
                                 "characters (0x21-0x7E)"));
  EXPECT_THAT(run.out + run.err, Not(HasSubstr(token)));
  unsetenv("ESS_REPLAY_TOKEN");
  ASSERT_EQ(setenv("ESS_TEST_OPS_TOKEN", "ops-token 0123456789abcdef", 1), 0);
  run = RunEssctl(fake_address_, {"--token_env", "ESS_TEST_OPS_TOKEN", "replay", "--partner",
                                  "prison", "--status", "dead", "--reason", "partner lost them"});
  EXPECT_EQ(run.exit_code, 2) << run.err;
  EXPECT_THAT(run.err, HasSubstr("error: --token_env: the token in ESS_TEST_OPS_TOKEN holds a "
                                 "space at character 10: a bearer token may hold only visible "
                                 "ASCII characters (0x21-0x7E)"));
  EXPECT_THAT(run.out + run.err, Not(HasSubstr("0123456789abcdef")));
  unsetenv("ESS_TEST_OPS_TOKEN");
  EXPECT_TRUE(service_.requests().empty());
}

// replay_svc refuses at start a caller's token that no client could send (a Secret made from a
// file keeps its final line break), naming the field and never printing the token.
TEST_F(ReplaySvcBinaryTest, ACallerTokenThatCannotBeSentIsAConfigError) {
  const std::string token = "lane-token-0123456789abcdef";
  for (const auto& [value, problem] : std::vector<std::pair<std::string, std::string>>{
           {token + "\r\n", "ends with a line break"},
           {"\t" + token, "starts with a tab"},
           {"lane-token-0123\001456789abcdef", "holds a control character (0x01) at character 16"},
           {"lane-token-0123456789abcd\xc3\xa9", "holds a non-ASCII byte (0xC3) at character 26"},
       }) {
    ASSERT_EQ(setenv("ESS_TEST_LANE_TOKEN", value.c_str(), 1), 0);
    std::ofstream(config_) << "replay:\n"
                           << "  listen: \"" << address_ << "\"\n"
                           << "  database_path: \"" << dir_.File("replay.db") << "\"\n"
                           << "  auth:\n"
                           << "    callers:\n"
                           << "      - {name: lanes, role: lane, token_env: ESS_TEST_LANE_TOKEN}\n";
    ToolResult run = Run({replay_svc_, "--config", config_}, "replay_svc", absl::Seconds(10));
    EXPECT_EQ(run.exit_code, 2) << problem << "\n" << run.err;
    EXPECT_THAT(run.err, HasSubstr(absl::StrCat("replay.auth.callers[0].token_env: the token in "
                                                "ESS_TEST_LANE_TOKEN ",
                                                problem)));
    EXPECT_THAT(run.out + run.err, Not(HasSubstr("0123456789abcd")));
  }
  unsetenv("ESS_TEST_LANE_TOKEN");
  EXPECT_FALSE(std::filesystem::exists(dir_.File("replay.db"))) << "refused before the store";
}

// A lane whose replay.token_env holds a token it cannot send stops at start (exit 2 naming the
// field), before any call: gRPC would abort it, printing the token.
TEST_F(ReplaySvcBinaryTest, ALaneWithATokenThatCannotBeSentStopsAtStart) {
  auto child = StartService("replay_svc.log");
  const std::string token = "lane-token-0123456789abcdef";
  ASSERT_EQ(setenv("ESS_TEST_LANE_TOKEN", (token + "\n").c_str(), 1), 0);
  const std::string config = dir_.File("lanes.yaml");
  std::ofstream(config) << R"yaml(replay:
  address: ")yaml" << address_
                        << R"yaml("
  token_env: ESS_TEST_LANE_TOKEN
inbound:
  listen: "127.0.0.1:)yaml"
                        << testing::PickFreePort() << R"yaml("
partners:
  - name: prison
    adapter: rest
    settings: {base_url: "http://127.0.0.1:9", path: /api/slots}
    outbound:
      queue: visit_updates
      mapping:
        - {target: id, source: id}
    inbound:
      webhook_path: /webhook/prison
      mapping:
        - {target: type, constant: SlotConfirmed}
        - {target: id, source: id}
)yaml";
  for (const std::string lane : {"outbound_svc", "inbound_svc"}) {
    ToolResult run = Run({absl::StrCat(std::getenv("ESS_BIN_DIR"), "/", lane), "--config", config},
                         lane, absl::Seconds(10));
    EXPECT_EQ(run.exit_code, 2) << lane << "\n" << run.err;
    EXPECT_THAT(run.err, HasSubstr(absl::StrCat("error: ", config,
                                                ": replay.token_env: the token in "
                                                "ESS_TEST_LANE_TOKEN ends with a line break")))
        << lane;
    EXPECT_THAT(run.out + run.err, Not(HasSubstr(token))) << lane;
  }
  unsetenv("ESS_TEST_LANE_TOKEN");
}

// A self-signed certificate for 127.0.0.1 (NAME.pem) and its EC key (NAME.key), made in the
// test's folder with the openssl command: test keys are made at test time, never committed.
void MakeSelfSigned(const TempDir& dir, const std::string& name) {
  Child openssl(
      {"/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", dir.File(name + ".key"), "-out", dir.File(name + ".pem"), "-days", "1",
       "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"},
      dir.File("openssl.out"), dir.File("openssl.err"));
  ASSERT_EQ(openssl.WaitForExit(absl::Seconds(30)), std::optional<int>(0))
      << ReadFile(dir.File("openssl.err"));
}

// gRPC takes any PEM and fails only when it listens, after printing lines of its own:
// replay_svc checks the certificate and key first, before it opens the store, and says which
// field is wrong and how (exit 2, one line).
TEST_F(ReplaySvcBinaryTest, ATlsKeyOrCertificateThatIsNotOneIsAConfigError) {
  ASSERT_NO_FATAL_FAILURE(MakeSelfSigned(dir_, "a"));
  ASSERT_NO_FATAL_FAILURE(MakeSelfSigned(dir_, "b"));
  {
    Child openssl({"/usr/bin/openssl", "pkey", "-in", dir_.File("a.key"), "-aes256", "-passout",
                   "pass:the-passphrase", "-out", dir_.File("encrypted.key")},
                  dir_.File("openssl.out"), dir_.File("openssl.err"));
    ASSERT_EQ(openssl.WaitForExit(absl::Seconds(30)), std::optional<int>(0));
  }
  // PEM blocks whose text is no DER ("not a certificate", in base64).
  std::ofstream(dir_.File("garbage.pem"))
      << "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
  std::ofstream(dir_.File("garbage.key"))
      << "-----BEGIN PRIVATE KEY-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END PRIVATE KEY-----\n";
  const std::string a_pem = dir_.File("a.pem"), a_key = dir_.File("a.key");
  const std::string not_a_key =
      "holds no PEM private key that can be read (not a key, or one "
      "encrypted with a passphrase)";
  struct Case {
    std::string cert, key, client_ca, error;
  };
  const std::vector<Case> cases = {
      {a_pem, a_pem, "", absl::StrCat("replay.tls.key_file: ", a_pem, " ", not_a_key)},
      {a_pem, dir_.File("garbage.key"), "",
       absl::StrCat("replay.tls.key_file: ", dir_.File("garbage.key"), " ", not_a_key)},
      {a_pem, dir_.File("encrypted.key"), "",
       absl::StrCat("replay.tls.key_file: ", dir_.File("encrypted.key"), " ", not_a_key)},
      {a_pem, dir_.File("b.key"), "",
       absl::StrCat("replay.tls.key_file: ", dir_.File("b.key"),
                    " does not match "
                    "replay.tls.cert_file (",
                    a_pem, "): it is not the key of that certificate")},
      {a_key, a_key, "",
       absl::StrCat("replay.tls.cert_file: ", a_key, " holds no PEM certificate that can be read")},
      {dir_.File("garbage.pem"), a_key, "",
       absl::StrCat("replay.tls.cert_file: ", dir_.File("garbage.pem"),
                    " holds no PEM certificate that can be read")},
      {a_pem, a_key, dir_.File("garbage.pem"),
       absl::StrCat("replay.tls.client_ca_file: ", dir_.File("garbage.pem"),
                    " holds no PEM certificate that can be read")},
  };
  for (const Case& c : cases) {
    std::ofstream(config_) << "replay:\n"
                           << "  listen: \"" << address_ << "\"\n"
                           << "  database_path: \"" << dir_.File("replay.db") << "\"\n"
                           << "  tls:\n"
                           << "    cert_file: \"" << c.cert << "\"\n"
                           << "    key_file: \"" << c.key << "\"\n"
                           << (c.client_ca.empty()
                                   ? std::string()
                                   : absl::StrCat("    client_ca_file: \"", c.client_ca, "\"\n"));
    ToolResult run = Run({replay_svc_, "--config", config_}, "replay_svc", absl::Seconds(10));
    EXPECT_EQ(run.exit_code, 2) << c.error << "\n" << run.err;
    // One line says what is wrong; every other line is the log's (logfmt), none gRPC's.
    EXPECT_THAT(run.err, HasSubstr(absl::StrCat("\nerror: ", config_, ": ", c.error, "\n")));
    for (absl::string_view line : absl::StrSplit(run.err, '\n', absl::SkipEmpty())) {
      if (!absl::StartsWith(line, "error: ")) {
        EXPECT_THAT(std::string(line), StartsWith("ts=")) << run.err;
      }
    }
    EXPECT_THAT(run.err, Not(HasSubstr("the-passphrase")));
  }
  EXPECT_FALSE(std::filesystem::exists(dir_.File("replay.db"))) << "refused before the store";

  // The pair that belongs together serves TLS (the config names no ca_file: replay_svc needs
  // none)...
  std::ofstream(config_) << "replay:\n"
                         << "  listen: \"" << address_ << "\"\n"
                         << "  database_path: \"" << dir_.File("replay.db") << "\"\n"
                         << "  tls: {cert_file: \"" << a_pem << "\", key_file: \"" << a_key
                         << "\"}\n";
  Child service({replay_svc_, "--config", config_}, dir_.File("tls.out"), dir_.File("tls.err"));
  ASSERT_TRUE(service.started());
  std::unique_ptr<ess::v1::ReplayService::Stub> stub =
      ess::MakeReplayStub(address_, {.ca_pem = ReadFile(a_pem)});
  grpc::ClientContext context;
  context.set_wait_for_ready(true);
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  ess::v1::StatsResponse stats;
  grpc::Status status = stub->Stats(&context, ess::v1::StatsRequest(), &stats);
  EXPECT_TRUE(status.ok()) << status.error_message() << "\n" << ReadFile(dir_.File("tls.err"));
  EXPECT_THAT(ReadFile(dir_.File("tls.err")), HasSubstr("tls=on"));

  // ...but the lanes, with that same config, would dial it in plaintext and never get through:
  // they stop at start, naming the missing field.
  std::ofstream(config_, std::ios::app) << R"yaml(partners:
  - name: prison
    adapter: rest
    settings: {base_url: "http://127.0.0.1:9", path: /api/slots}
    outbound:
      queue: visit_updates
      mapping:
        - {target: id, source: id}
)yaml";
  ToolResult lane =
      Run({absl::StrCat(std::getenv("ESS_BIN_DIR"), "/outbound_svc"), "--config", config_},
          "outbound_svc", absl::Seconds(10));
  EXPECT_EQ(lane.exit_code, 2) << lane.err;
  EXPECT_THAT(lane.err,
              HasSubstr(absl::StrCat("error: ", config_,
                                     ": replay.tls.ca_file: not set, but replay_svc serves TLS "
                                     "only (replay.tls.cert_file)")));
  service.Signal(SIGTERM);
  EXPECT_EQ(service.WaitForExit(absl::Seconds(30)), std::optional<int>(0));
}

TEST_F(ReplaySvcBinaryTest, MissingConfigFlagIsAUsageError) {
  Child child({replay_svc_}, dir_.File("x.out"), dir_.File("x.err"));
  ASSERT_TRUE(child.started());
  EXPECT_EQ(child.WaitForExit(absl::Seconds(30)), std::optional<int>(2));
  EXPECT_THAT(ReadFile(dir_.File("x.err")), HasSubstr("--config"));
}

TEST_F(ReplaySvcBinaryTest, UnopenableDatabaseExitsWithOne) {
  std::ofstream(config_) << "replay:\n"
                         << "  listen: \"" << address_ << "\"\n"
                         << "  database_path: \"" << dir_.File("missing/dir/replay.db") << "\"\n";
  Child child({replay_svc_, "--config", config_}, dir_.File("x.out"), dir_.File("x.err"));
  ASSERT_TRUE(child.started());
  EXPECT_EQ(child.WaitForExit(absl::Seconds(30)), std::optional<int>(1));
  EXPECT_THAT(ReadFile(dir_.File("x.err")), HasSubstr("cannot open the replay store"));
}

// The shared backend: two replay_svc replicas on one PostgreSQL database (a schema of the
// server ./test.sh starts). What one stores the other serves, and an id one of them claimed is
// in progress for the other: what lets the store scale out behind one Service. The first
// replica's config says replay.postgres; the second's names a SQLite file, which
// --postgres_dsn_env overrides (how deploy/k8s/overlays/shared-store keeps the base's config).
TEST_F(ReplaySvcBinaryTest, TwoReplicasOnOnePostgresServeTheSameRecordsAndClaims) {
  testing::TestStore db(testing::Backend::kPostgres);
  ASSERT_FALSE(HasFailure());
  ASSERT_EQ(setenv("ESS_TEST_REPLAY_DSN", db.location().c_str(), 1), 0);
  std::vector<std::string> addresses;
  std::vector<std::unique_ptr<Child>> replicas;
  for (int r = 0; r < 2; ++r) {
    const int port = testing::PickFreePort();
    ASSERT_GT(port, 0);
    addresses.push_back(absl::StrCat("127.0.0.1:", port));
    const std::string config = dir_.File(absl::StrCat("hub-", r, ".yaml"));
    std::ofstream(config) << "replay:\n"
                          << "  listen: \"" << addresses[r] << "\"\n"
                          << (r == 0 ? "  postgres: {dsn_env: ESS_TEST_REPLAY_DSN}\n"
                                     : "  database_path: replay.db\n");
    replicas.push_back(StartService(
        absl::StrCat("replica-", r, ".log"), config, addresses[r],
        r == 0 ? std::vector<std::string>{}
               : std::vector<std::string>{"--postgres_dsn_env", "ESS_TEST_REPLAY_DSN"}));
    ASSERT_FALSE(HasFailure());
    EXPECT_THAT(ReadFile(dir_.File(absl::StrCat("replica-", r, ".log"))),
                HasSubstr("store=\"postgres (ESS_TEST_REPLAY_DSN)\""));
  }
  EXPECT_NE(access(dir_.File("replay.db").c_str(), F_OK), 0) << "no SQLite file was made";

  constexpr int kRecords = 50;
  {
    ReplayRecorder recorder({.address = addresses[0], .batch_max = 16});
    absl::Mutex mu;
    int ok = 0;
    for (int i = 0; i < kRecords; ++i) {
      recorder.Record(Outbound("prison", absl::StrCat("m-", i)), [&](absl::Status s) {
        absl::MutexLock lock(&mu);
        if (s.ok()) ++ok;
      });
    }
    recorder.Stop();
    EXPECT_EQ(ok, kRecords);
  }
  ToolResult stats = RunEssctl(addresses[1], {"stats"});
  EXPECT_EQ(stats.exit_code, 0) << stats.err;
  EXPECT_THAT(stats.out, HasSubstr("prison"));
  ToolResult got = RunEssctl(addresses[1], {"get", "--direction", "outbound", "--partner", "prison",
                                            "--message_id", "m-49"});
  EXPECT_EQ(got.exit_code, 0) << got.err;
  EXPECT_THAT(got.out, HasSubstr("m-49"));

  // A webhook's id, claimed through one replica, is in progress for the other.
  auto claim = [&](const std::string& address) {
    std::unique_ptr<ess::v1::ReplayService::Stub> stub = ess::v1::ReplayService::NewStub(
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    ess::v1::ClaimRequest request;
    ess::v1::Claim* c = request.add_claims();
    *c->mutable_record() = MakeRecord(ess::v1::DIRECTION_INBOUND, "prison", "wh-1", "VIS-1");
    c->set_window_seconds(600);
    c->set_lease_ms(60'000);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    ess::v1::ClaimResponse response;
    grpc::Status status = stub->Claim(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.results_size() == 1 ? response.results(0) : ess::v1::CLAIM_OUTCOME_UNSPECIFIED;
  };
  EXPECT_EQ(claim(addresses[0]), ess::v1::CLAIM_OUTCOME_CLAIMED);
  EXPECT_EQ(claim(addresses[1]), ess::v1::CLAIM_OUTCOME_IN_PROGRESS);

  for (auto& replica : replicas) {
    replica->Signal(SIGTERM);
    EXPECT_EQ(replica->WaitForExit(absl::Seconds(30)), std::optional<int>(0));
  }
  unsetenv("ESS_TEST_REPLAY_DSN");
}

// Moving a hub from its SQLite file to PostgreSQL: replay_svc --import_from copies the file's
// records into the configured store and exits; served from there, essctl shows the same records
// (times and order included) and the same stats. Run again, it writes nothing.
TEST_F(ReplaySvcBinaryTest, ImportFromCopiesASqliteStoreIntoPostgres) {
  constexpr int kRecords = 240;
  {
    std::unique_ptr<Child> service = StartService("sqlite.log");
    ASSERT_FALSE(HasFailure());
    ReplayRecorder recorder({.address = address_, .batch_max = 16});
    absl::Mutex mu;
    int ok = 0;
    for (int i = 0; i < kRecords; ++i) {
      ess::v1::MessageRecord r =
          i % 4 == 3 ? MakeRecord(ess::v1::DIRECTION_INBOUND, "prison", absl::StrCat("wh-", i),
                                  absl::StrCat("VIS-", i - 1), ess::v1::MESSAGE_STATUS_PUBLISHED)
                     : Outbound(i % 2 == 0 ? "prison" : "probation", absl::StrCat("m-", i),
                                i % 5 == 0 ? ess::v1::MESSAGE_STATUS_FAILED
                                           : ess::v1::MESSAGE_STATUS_DELIVERED);
      recorder.Record(std::move(r), [&](absl::Status s) {
        absl::MutexLock lock(&mu);
        if (s.ok()) ++ok;
      });
    }
    recorder.Stop();
    EXPECT_EQ(ok, kRecords);
    service->Signal(SIGTERM);
    EXPECT_EQ(service->WaitForExit(absl::Seconds(30)), std::optional<int>(0));
  }

  testing::TestStore db(testing::Backend::kPostgres);
  ASSERT_FALSE(HasFailure());
  ASSERT_EQ(setenv("ESS_TEST_REPLAY_DSN", db.location().c_str(), 1), 0);
  const int pg_port = testing::PickFreePort();
  ASSERT_GT(pg_port, 0);
  const std::string pg_address = absl::StrCat("127.0.0.1:", pg_port);
  const std::string pg_config = dir_.File("hub-pg.yaml");
  std::ofstream(pg_config) << "replay:\n"
                           << "  listen: \"" << pg_address << "\"\n"
                           << "  postgres: {dsn_env: ESS_TEST_REPLAY_DSN}\n";
  auto import = [&](const std::string& from, const std::string& name) {
    ToolResult result;
    {
      Child child({replay_svc_, "--config", pg_config, "--import_from", from},
                  dir_.File(name + ".out"), dir_.File(name + ".err"));
      result.exit_code = child.WaitForExit(absl::Seconds(60)).value_or(-1);
    }
    result.out = ReadFile(dir_.File(name + ".out"));
    result.err = ReadFile(dir_.File(name + ".err"));
    return result;
  };
  const std::string file = dir_.File("replay.db");
  ToolResult first = import(file, "import-1");
  EXPECT_EQ(first.exit_code, 0) << first.err;
  EXPECT_THAT(first.out, HasSubstr(absl::StrCat("imported ", file,
                                                " into postgres (ESS_TEST_REPLAY_DSN): 240 records "
                                                "read, 240 written, 0 held already")));
  ToolResult again = import(file, "import-2");
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_THAT(again.out, HasSubstr("240 records read, 0 written, 240 held already"));

  // What each store serves, through essctl.
  auto shown = [&](const std::string& address) {
    std::vector<std::string> out;
    for (const std::vector<std::string>& args :
         {std::vector<std::string>{"list", "--limit", "1000"},
          std::vector<std::string>{"list", "--partner", "prison", "--status", "failed"},
          std::vector<std::string>{"stats"}}) {
      ToolResult r = RunEssctl(address, args);
      EXPECT_EQ(r.exit_code, 0) << r.err;
      out.push_back(r.out);
    }
    return out;
  };
  std::vector<std::string> from_sqlite, from_postgres;
  {
    std::unique_ptr<Child> service = StartService("sqlite-2.log");
    from_sqlite = shown(address_);
  }
  {
    std::unique_ptr<Child> service = StartService("pg.log", pg_config, pg_address);
    from_postgres = shown(pg_address);
  }
  ASSERT_EQ(from_sqlite.size(), 3u);
  EXPECT_THAT(from_sqlite[0], HasSubstr("m-238"));
  EXPECT_THAT(from_sqlite[1], HasSubstr("m-230"));
  EXPECT_THAT(from_sqlite[2], HasSubstr("probation"));
  EXPECT_EQ(from_postgres, from_sqlite);

  // What is no replay store, or is the target itself, is refused.
  ToolResult missing = import(dir_.File("nope.db"), "import-3");
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_THAT(missing.err, HasSubstr("--import_from: no such file: " + dir_.File("nope.db")));
  std::ofstream(dir_.File("notes.txt")) << "not a database, but long enough to be read as one\n";
  ToolResult junk = import(dir_.File("notes.txt"), "import-4");
  EXPECT_EQ(junk.exit_code, 2);
  EXPECT_THAT(junk.err, HasSubstr("--import_from " + dir_.File("notes.txt") + ": "));
  {
    absl::StatusOr<sqlite::Database> other = sqlite::Database::Open(dir_.File("other.db"));
    ASSERT_TRUE(other.ok());
    // Another program's file, in SQLite's default rollback-journal mode.
    ASSERT_TRUE(other->Exec("PRAGMA journal_mode=DELETE; CREATE TABLE notes (text TEXT)").ok());
  }
  ToolResult other = import(dir_.File("other.db"), "import-5");
  EXPECT_EQ(other.exit_code, 2);
  EXPECT_THAT(other.err, HasSubstr("--import_from " + dir_.File("other.db") +
                                   ": not a replay store (its SQLite schema version is 0)"));
  {
    absl::StatusOr<sqlite::Database> untouched =
        sqlite::Database::Open(dir_.File("other.db"), {.read_only = true});
    ASSERT_TRUE(untouched.ok()) << untouched.status();
    absl::StatusOr<sqlite::Statement> tables =
        untouched->Prepare("SELECT count(*) FROM sqlite_master WHERE type = 'table'");
    ASSERT_TRUE(tables.ok() && tables->Step().value_or(false));
    EXPECT_EQ(tables->ColumnInt64(0), 1) << "the store's tables were made in it";
    absl::StatusOr<sqlite::Statement> mode = untouched->Prepare("PRAGMA journal_mode");
    ASSERT_TRUE(mode.ok() && mode->Step().value_or(false));
    EXPECT_EQ(mode->ColumnText(0), "delete") << "its journal mode was changed";
  }
  Child itself({replay_svc_, "--config", config_, "--import_from", file}, dir_.File("x.out"),
               dir_.File("x.err"));
  EXPECT_EQ(itself.WaitForExit(absl::Seconds(30)), std::optional<int>(2));
  EXPECT_THAT(ReadFile(dir_.File("x.err")),
              HasSubstr("is the store the config names (replay.database_path)"));
  unsetenv("ESS_TEST_REPLAY_DSN");
}

TEST_F(ReplaySvcBinaryTest, APostgresStoreNeedsItsConnectionString) {
  unsetenv("ESS_TEST_UNSET_DSN");
  std::ofstream(config_) << "replay:\n"
                         << "  listen: \"" << address_ << "\"\n"
                         << "  postgres: {dsn_env: ESS_TEST_UNSET_DSN}\n";
  {
    Child child({replay_svc_, "--config", config_}, dir_.File("x.out"), dir_.File("x.err"));
    ASSERT_TRUE(child.started());
    EXPECT_EQ(child.WaitForExit(absl::Seconds(30)), std::optional<int>(2));
    EXPECT_THAT(ReadFile(dir_.File("x.err")),
                HasSubstr("replay.postgres.dsn_env: environment variable ESS_TEST_UNSET_DSN is "
                          "not set"));
  }
  // Set, to a server that is not there: the store cannot be opened.
  ASSERT_EQ(setenv("ESS_TEST_UNSET_DSN",
                   absl::StrCat("host=127.0.0.1 port=", testing::PickFreePort(),
                                " dbname=ess connect_timeout=5")
                       .c_str(),
                   1),
            0);
  Child child({replay_svc_, "--config", config_}, dir_.File("y.out"), dir_.File("y.err"));
  ASSERT_TRUE(child.started());
  EXPECT_EQ(child.WaitForExit(absl::Seconds(30)), std::optional<int>(1));
  EXPECT_THAT(ReadFile(dir_.File("y.err")), HasSubstr("cannot open the replay store"));
  EXPECT_THAT(ReadFile(dir_.File("y.err")), HasSubstr("postgres: cannot connect"));
  unsetenv("ESS_TEST_UNSET_DSN");
}

}  // namespace
}  // namespace ess::replay
