// The benchmark, every scenario at a small size, against the test broker: ess_bench checks what
// each scenario moved (the partner got every event once, the store recorded each, every 2xx
// webhook reached the bus and the subscriber, replayed records landed on the queue) and exits 1
// when a check fails. This test fails with it and names the scenario and its errors, so a
// change that breaks the benchmark, or a guarantee the benchmark checks, shows in ./test.sh.
// No figure is judged here: speed is for ./bench.sh on a quiet machine.
#include <fcntl.h>
#include <rapidjson/document.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"

namespace ess {
namespace {

// The one results file a run (RunBench) wrote into `dir`, parsed.
::testing::AssertionResult ReadResults(const testing::TempDir& dir, rapidjson::Document* doc) {
  const std::string results = dir.File("results");
  std::vector<std::string> files;
  if (std::filesystem::is_directory(results)) {
    for (const auto& entry : std::filesystem::directory_iterator(results)) {
      files.push_back(entry.path().string());
    }
  }
  if (files.size() != 1) {
    return ::testing::AssertionFailure()
           << files.size() << " results files in " << results << ", one expected";
  }
  std::ifstream in(files[0]);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  doc->Parse(text.c_str(), text.size());
  if (doc->HasParseError() || !doc->HasMember("scenarios") || !(*doc)["scenarios"].IsObject()) {
    return ::testing::AssertionFailure() << files[0] << " is no results file";
  }
  return ::testing::AssertionSuccess();
}

// Runs ess_bench with `args` against the test broker, with its work folder, results and log
// in `dir` ("work", "results", "ess_bench.log").
testing::ToolRun RunBench(const testing::TempDir& dir, const std::vector<std::string>& args,
                          absl::Duration timeout) {
  std::vector<std::string> argv = {testing::BinaryPath("ess_bench"),
                                   "--amqp_port",
                                   testing::RequiredEnv("ESS_AMQP_PORT"),
                                   "--work_dir",
                                   dir.File("work"),
                                   "--results_dir",
                                   dir.File("results"),
                                   "--source_dir",
                                   testing::RequiredEnv("ESS_SOURCE_DIR"),
                                   "--bin_dir",
                                   testing::RequiredEnv("ESS_BIN_DIR")};
  argv.insert(argv.end(), args.begin(), args.end());
  return testing::RunTool(argv, dir.File("ess_bench.log"), timeout);
}

TEST(BenchSmokeTest, EveryScenarioPassesItsChecks) {
  testing::TempDir dir;
  const testing::ToolRun run = RunBench(
      dir, {"--events", "2000", "--info_events", "1000", "--duration_s", "2", "--replicas", "2"},
      absl::Seconds(280));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  rapidjson::Document doc;
  ASSERT_TRUE(ReadResults(dir, &doc)) << run.output;
  const auto& scenarios = doc["scenarios"];

  const std::set<std::string> expected = {"broker_publish",
                                          "broker_consume",
                                          "broker_publish_lane",
                                          "http_partner",
                                          "outbound",
                                          "broker_latency",
                                          "outbound_latency",
                                          "outbound_latency_quarter",
                                          "outbound_info_log",
                                          "outbound_replicas_2",
                                          "replay_store",
                                          "inbound",
                                          "inbound_window",
                                          "inbound_latency_quarter",
                                          "inbound_latency"};
  std::set<std::string> seen;
  for (const auto& m : scenarios.GetObject()) {
    const std::string name = m.name.GetString();
    seen.insert(name);
    const auto& sc = m.value;
    ASSERT_TRUE(sc.HasMember("passed") && sc["passed"].IsBool()) << name;
    std::string errors;
    for (const auto& e : sc["errors"].GetArray()) absl::StrAppend(&errors, "\n  ", e.GetString());
    EXPECT_TRUE(sc["passed"].GetBool()) << name << " failed:" << errors;
  }
  EXPECT_EQ(seen, expected);
  EXPECT_EQ(doc["settings"]["quorum_queues"].GetDouble(), 0);
  EXPECT_THAT(run.output, ::testing::HasSubstr(" s timed runs; classic queues"));

  // What the checks counted is what was asked for.
  auto figure = [&](const char* scenario, const char* key) {
    const auto& sc = scenarios[scenario];
    return sc.HasMember(key) && sc[key].IsNumber() ? sc[key].GetDouble() : -1.0;
  };
  auto figure_in = [&](const char* scenario, const char* object, const char* key) {
    const auto& sc = scenarios[scenario];
    if (!sc.HasMember(object) || !sc[object].IsObject()) return -1.0;
    const auto& o = sc[object];
    return o.HasMember(key) && o[key].IsNumber() ? o[key].GetDouble() : -1.0;
  };
  if (scenarios.HasMember("outbound")) {
    // CPU per thread, by the names the services give them: the partner requests' thread is
    // there, and no thread of the lane used more than the whole lane.
    const auto& threads = scenarios["outbound"]["thread_cpu_percent"];
    ASSERT_TRUE(threads.IsObject());
    ASSERT_TRUE(threads.HasMember("outbound_svc/ess-http-client"));
    double lane_threads = 0;
    for (const auto& t : threads.GetObject()) {
      if (std::string(t.name.GetString()).starts_with("outbound_svc/")) {
        EXPECT_LE(t.value.GetDouble(), figure_in("outbound", "cpu_percent", "outbound_svc") + 1)
            << t.name.GetString();
        lane_threads += t.value.GetDouble();
      }
    }
    EXPECT_GT(lane_threads, 0);
    EXPECT_EQ(figure("outbound", "partner_requests"), 2000);
    EXPECT_EQ(figure("outbound", "duplicates"), 0);
    EXPECT_EQ(figure("outbound", "records_delivered"), 2000);
  }
  for (const char* name : {"inbound_latency_quarter", "inbound_latency"}) {
    if (!scenarios.HasMember(name)) continue;
    EXPECT_GT(figure(name, "sent"), 0) << name;
    EXPECT_EQ(figure(name, "ok"), figure(name, "sent")) << name;
    EXPECT_EQ(figure(name, "consumed"), figure(name, "ok")) << name;
  }
}

// The baselines beside ESS's lanes (--scenarios baseline): the original design's Python lanes
// and the Node.js lanes move every event and webhook, and each scenario's own checks
// pass. Python's packages come from Debian (scripts/install-deps.sh); the Node.js lanes need
// node and two npm packages, which ./test.sh installs when the machine has node and npm.
TEST(BenchSmokeTest, TheBaselinesPassTheirChecks) {
  const std::string node_modules =
      testing::RequiredEnv("ESS_SOURCE_DIR") + "/bench/baseline/node_modules";
  const bool node = std::filesystem::is_directory(node_modules + "/amqplib") &&
                    std::filesystem::is_directory(node_modules + "/undici");
  testing::TempDir dir;
  const testing::ToolRun run =
      RunBench(dir, {"--scenarios", "baseline", "--events", "1000", "--duration_s", "2"},
               absl::Seconds(150));
  rapidjson::Document doc;
  ASSERT_TRUE(ReadResults(dir, &doc)) << run.output;
  const auto& scenarios = doc["scenarios"];
  std::vector<std::string> langs = {"python"};
  if (node) {
    EXPECT_EQ(run.exit_code, 0) << run.output;
    langs.push_back("node");
  } else {
    EXPECT_EQ(run.exit_code, 1) << "without node the Node.js baseline fails, naming why";
    ASSERT_TRUE(scenarios.HasMember("baseline_node_outbound"));
    EXPECT_THAT(std::string(scenarios["baseline_node_outbound"]["errors"][0].GetString()),
                ::testing::HasSubstr("bench/baseline/install.sh"));
  }
  for (const std::string& lang : langs) {
    const std::string out_name = "baseline_" + lang + "_outbound";
    const std::string in_name = "baseline_" + lang + "_inbound";
    ASSERT_TRUE(scenarios.HasMember(out_name.c_str())) << out_name;
    ASSERT_TRUE(scenarios.HasMember(in_name.c_str())) << in_name;
    const auto& out = scenarios[out_name.c_str()];
    const auto& in_sc = scenarios[in_name.c_str()];
    EXPECT_TRUE(out["passed"].GetBool()) << out_name << ": " << run.output;
    EXPECT_TRUE(in_sc["passed"].GetBool()) << in_name << ": " << run.output;
    EXPECT_EQ(out["partner_requests"].GetDouble(), 1000) << out_name;
    EXPECT_EQ(out["duplicates"].GetDouble(), 0) << out_name;
    EXPECT_GT(in_sc["ok"].GetDouble(), 0) << in_name;
    EXPECT_GE(in_sc["on_bus"].GetDouble(), in_sc["ok"].GetDouble()) << in_name;
  }
}

// Production's configuration (deploy/k8s/base/hub.yaml) runs the lanes on quorum queues with
// audit events. --quorum_queues declares every queue of the run as one, the lanes' own too,
// and the lanes declare theirs with the same arguments (a difference would be
// PRECONDITION_FAILED and fail the scenario); --audit adds an audit exchange with a queue
// bound, which must get one event per delivered event and at least one per webhook answered
// 2xx. The same checks as the classic run:
// every event delivered once and recorded, every 2xx webhook on the bus, every replayed record
// on the partner's queue.
TEST(BenchSmokeTest, ProductionsQueuesAndAuditRunPassesItsChecks) {
  testing::TempDir dir;
  const testing::ToolRun run =
      RunBench(dir,
               {"--quorum_queues", "--audit", "--scenarios", "ceilings,outbound,replay,inbound",
                "--events", "2000", "--duration_s", "2"},
               absl::Seconds(200));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  rapidjson::Document doc;
  ASSERT_TRUE(ReadResults(dir, &doc)) << run.output;
  const auto& scenarios = doc["scenarios"];
  std::set<std::string> seen;
  for (const auto& m : scenarios.GetObject()) {
    const std::string name = m.name.GetString();
    seen.insert(name);
    EXPECT_TRUE(m.value["passed"].GetBool()) << name << ": " << run.output;
  }
  EXPECT_EQ(seen, (std::set<std::string>{"broker_publish", "broker_consume", "broker_publish_lane",
                                         "outbound", "replay_store", "inbound", "inbound_window",
                                         "inbound_latency_quarter", "inbound_latency"}));
  ASSERT_TRUE(scenarios.HasMember("outbound"));
  const auto& out = scenarios["outbound"];
  EXPECT_EQ(out["partner_requests"].GetDouble(), 2000);
  EXPECT_EQ(out["duplicates"].GetDouble(), 0);
  EXPECT_EQ(out["records_delivered"].GetDouble(), 2000);
  EXPECT_EQ(out["audit_events"].GetDouble(), 2000);  // --audit: one per delivered event
  const auto& in = scenarios["inbound"];             // and at least one per webhook answered 2xx
  EXPECT_GT(in["ok"].GetDouble(), 0);
  EXPECT_GE(in["audit_events"].GetDouble(), in["ok"].GetDouble());
  EXPECT_EQ(scenarios["broker_consume"]["messages"].GetDouble(),
            scenarios["broker_publish"]["messages"].GetDouble());
  EXPECT_EQ(doc["settings"]["quorum_queues"].GetDouble(), 1);
  EXPECT_EQ(doc["settings"]["audit"].GetDouble(), 1);
  EXPECT_THAT(run.output, ::testing::HasSubstr(" s timed runs; quorum queues; audit events on"));
}

// With --audit_batch_max the lane's audit events come in SyncAuditBatch messages: the run
// counts the events inside them, every delivered event's once.
TEST(BenchSmokeTest, AuditBatchesRunCountsTheEventsInThem) {
  testing::TempDir dir;
  const testing::ToolRun run = RunBench(
      dir, {"--audit", "--audit_batch_max", "64", "--scenarios", "outbound", "--events", "2000"},
      absl::Seconds(200));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  rapidjson::Document doc;
  ASSERT_TRUE(ReadResults(dir, &doc)) << run.output;
  ASSERT_TRUE(doc["scenarios"].HasMember("outbound")) << run.output;
  const auto& out = doc["scenarios"]["outbound"];
  EXPECT_TRUE(out["passed"].GetBool()) << run.output;
  EXPECT_EQ(out["partner_requests"].GetDouble(), 2000);
  EXPECT_EQ(out["audit_events"].GetDouble(), 2000);
  EXPECT_GE(out["audit_messages"].GetDouble(), 2000.0 / 64);
  EXPECT_LT(out["audit_messages"].GetDouble(), 2000);
  EXPECT_EQ(doc["settings"]["audit_batch_max"].GetDouble(), 64);
  EXPECT_THAT(run.output, ::testing::HasSubstr("audit events on, in batches of up to 64"));
}

// Two runs in one work folder would share one RabbitMQ node, and the first to end would stop
// it under the other: a run takes the folder's lock, and a second is refused before it starts
// anything.
TEST(BenchSmokeTest, ASecondRunInTheSameWorkFolderIsRefused) {
  testing::TempDir dir;
  const std::string work = dir.File("work");
  std::filesystem::create_directories(work);
  const int held = open((work + "/.lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  ASSERT_GE(held, 0);
  ASSERT_EQ(flock(held, LOCK_EX | LOCK_NB), 0);
  const testing::ToolRun run =
      RunBench(dir, {"--scenarios", "ceilings", "--events", "100"}, absl::Seconds(30));
  close(held);
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_THAT(run.output, ::testing::HasSubstr("another ess_bench is running in " + work));
  EXPECT_FALSE(std::filesystem::exists(work + "/rabbitmq")) << "started a broker";
  EXPECT_FALSE(std::filesystem::exists(dir.File("results")));
}

}  // namespace
}  // namespace ess
