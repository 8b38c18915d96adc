// The benchmark, every scenario at a small size, against the test broker: ess_bench checks what
// each scenario moved (the partner got every event once, the store recorded each, every 2xx
// webhook reached the bus and the subscriber, replayed records landed on the queue) and exits 1
// when a check fails. This test fails with it and names the scenario and its errors, so a
// change that breaks the benchmark, or a guarantee the benchmark checks, shows in ./test.sh.
// No figure is judged here: speed is for ./bench.sh on a quiet machine.
#include <rapidjson/document.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"

namespace ess {
namespace {

TEST(BenchSmokeTest, EveryScenarioPassesItsChecks) {
  testing::TempDir dir;
  const std::string results = dir.File("results");
  const testing::ToolRun run = testing::RunTool(
      {testing::BinaryPath("ess_bench"), "--amqp_port", testing::RequiredEnv("ESS_AMQP_PORT"),
       "--events", "2000", "--info_events", "1000", "--duration_s", "2", "--replicas", "2",
       "--work_dir", dir.File("work"), "--results_dir", results, "--source_dir",
       testing::RequiredEnv("ESS_SOURCE_DIR"), "--bin_dir", testing::RequiredEnv("ESS_BIN_DIR")},
      dir.File("ess_bench.log"), absl::Seconds(280));
  EXPECT_EQ(run.exit_code, 0) << run.output;

  std::vector<std::string> files;
  if (std::filesystem::is_directory(results)) {
    for (const auto& entry : std::filesystem::directory_iterator(results)) {
      files.push_back(entry.path().string());
    }
  }
  ASSERT_EQ(files.size(), 1u) << "one results file expected in " << results;
  std::ifstream in(files[0]);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  rapidjson::Document doc;
  doc.Parse(text.c_str(), text.size());
  ASSERT_FALSE(doc.HasParseError()) << files[0];
  ASSERT_TRUE(doc.HasMember("scenarios") && doc["scenarios"].IsObject());
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

  // What the checks counted is what was asked for.
  auto figure = [&](const char* scenario, const char* key) {
    const auto& sc = scenarios[scenario];
    return sc.HasMember(key) && sc[key].IsNumber() ? sc[key].GetDouble() : -1.0;
  };
  if (scenarios.HasMember("outbound")) {
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

// The Node.js lanes beside ESS's (--scenarios baseline): they move every event and
// webhook, and the scenarios' own checks pass. They need Node.js and two npm packages, which
// ./test.sh installs when the machine has node and npm.
TEST(BenchSmokeTest, TheNodeJsBaselinePassesItsChecks) {
  const std::string baseline = testing::RequiredEnv("ESS_SOURCE_DIR") + "/bench/baseline";
  if (!std::filesystem::is_directory(baseline + "/node_modules/amqplib") ||
      !std::filesystem::is_directory(baseline + "/node_modules/undici")) {
    GTEST_SKIP() << "the Node.js baseline is not installed (bench/baseline/install.sh needs node "
                    "and npm)";
  }
  testing::TempDir dir;
  const std::string results = dir.File("results");
  const testing::ToolRun run = testing::RunTool(
      {testing::BinaryPath("ess_bench"), "--amqp_port", testing::RequiredEnv("ESS_AMQP_PORT"),
       "--scenarios", "baseline", "--events", "2000", "--duration_s", "2", "--work_dir",
       dir.File("work"), "--results_dir", results, "--source_dir",
       testing::RequiredEnv("ESS_SOURCE_DIR"), "--bin_dir", testing::RequiredEnv("ESS_BIN_DIR")},
      dir.File("ess_bench.log"), absl::Seconds(120));
  EXPECT_EQ(run.exit_code, 0) << run.output;

  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(results)) {
    files.push_back(entry.path().string());
  }
  ASSERT_EQ(files.size(), 1u);
  std::ifstream in(files[0]);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  rapidjson::Document doc;
  doc.Parse(text.c_str(), text.size());
  ASSERT_FALSE(doc.HasParseError()) << files[0];
  const auto& scenarios = doc["scenarios"];
  for (const char* name : {"baseline_outbound", "baseline_inbound"}) {
    ASSERT_TRUE(scenarios.HasMember(name)) << name;
    EXPECT_TRUE(scenarios[name]["passed"].GetBool()) << name << ": " << run.output;
  }
  const auto& out = scenarios["baseline_outbound"];
  EXPECT_EQ(out["partner_requests"].GetDouble(), 2000);
  EXPECT_EQ(out["duplicates"].GetDouble(), 0);
  const auto& in_sc = scenarios["baseline_inbound"];
  EXPECT_GT(in_sc["ok"].GetDouble(), 0);
  EXPECT_GE(in_sc["on_bus"].GetDouble(), in_sc["ok"].GetDouble());
}

}  // namespace
}  // namespace ess
