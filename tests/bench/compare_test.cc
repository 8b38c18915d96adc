// bench_compare's core: ess_bench results of two builds, figure by figure.
#include "bench/compare.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ess::bench {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// An ess_bench result with an outbound run (two lane replicas) and, unless `outbound_only`,
// an inbound latency run.
Results Result(const std::string& source, double events_per_s, double lane1_pct, double lane2_pct,
               bool passed = true, double p99 = 10) {
  std::string json = absl::StrCat(R"({"started": "x", "settings": {}, "scenarios": {
    "outbound": {"passed": )",
                                  passed ? "true" : "false", R"(, "errors": [],
      "events_per_s": )",
                                  events_per_s, R"(, "window_messages": 10000, "cpu_window_s": 2,
      "cpu_percent": {"rabbitmq": 50, "outbound_svc#1": )",
                                  lane1_pct, R"(, "outbound_svc#2": )", lane2_pct,
                                  R"(, "others": 3},
      "thread_cpu_percent": {"outbound_svc#1/ess-http-client": )",
                                  lane1_pct / 2, R"(, "outbound_svc#2/ess-http-client": )",
                                  lane2_pct / 2, R"(, "ess_bench/ess-http-server": 20},
      "peak_rss_mib": {"outbound_svc": 40}},
    "inbound_latency": {"passed": true, "errors": [], "p99_ms": )",
                                  p99, R"(, "cpu_window_s": 10, "cpu_percent": {"inbound_svc": 52}}
  }})");
  return {.source = source, .json = std::move(json)};
}

const CompareRow* Find(const std::vector<CompareRow>& rows, const std::string& scenario,
                       const std::string& figure) {
  for (const CompareRow& r : rows) {
    if (r.scenario == scenario && r.figure == figure) return &r;
  }
  return nullptr;
}

TEST(CompareTest, MediansRangesAndCpuPerMessageOfEachSide) {
  absl::StatusOr<std::vector<CompareRow>> rows =
      Compare({Result("a1", 10000, 30, 20), Result("a2", 12000, 40, 20, true, 30),
               Result("a3", 11000, 35, 25, true, 20)},
              {Result("b1", 13200, 20, 20)});
  ASSERT_TRUE(rows.ok()) << rows.status();

  const CompareRow* rate = Find(*rows, "outbound", "events_per_s");
  ASSERT_NE(rate, nullptr);
  EXPECT_THAT(rate->base.values, ElementsAre(10000, 12000, 11000));
  EXPECT_EQ(rate->base.Median(), 11000);
  EXPECT_EQ(rate->base.Min(), 10000);
  EXPECT_EQ(rate->base.Max(), 12000);
  EXPECT_THAT(rate->test.values, ElementsAre(13200));

  // Replicas added up, then per message: (30 + 20)% of a core for 2 s over 10,000 messages.
  const CompareRow* lane = Find(*rows, "outbound", "cpu_us_per_msg.outbound_svc");
  ASSERT_NE(lane, nullptr);
  EXPECT_DOUBLE_EQ(lane->base.values[0], 100.0);
  EXPECT_DOUBLE_EQ(lane->test.values[0], 80.0);
  // Threads likewise, by name: half of each replica's CPU, so 50 and 40 us.
  const CompareRow* client =
      Find(*rows, "outbound", "thread_cpu_us_per_msg.outbound_svc/ess-http-client");
  ASSERT_NE(client, nullptr);
  EXPECT_DOUBLE_EQ(client->base.values[0], 50.0);
  EXPECT_DOUBLE_EQ(client->test.values[0], 40.0);
  const CompareRow* partner =
      Find(*rows, "outbound", "thread_cpu_us_per_msg.ess_bench/ess-http-server");
  ASSERT_NE(partner, nullptr);
  EXPECT_DOUBLE_EQ(partner->base.values[0], 40.0);
  ASSERT_NE(Find(*rows, "outbound", "cpu_percent.others"), nullptr);
  ASSERT_NE(Find(*rows, "outbound", "peak_rss_mib.outbound_svc"), nullptr);
  // Without a message count, CPU stays in % of a core.
  const CompareRow* latency_cpu = Find(*rows, "inbound_latency", "cpu_percent.inbound_svc");
  ASSERT_NE(latency_cpu, nullptr);
  EXPECT_THAT(latency_cpu->test.values, ElementsAre(52));

  const std::string table = FormatComparison(*rows, 3, 1);
  EXPECT_THAT(table, HasSubstr("base (3 runs)"));
  EXPECT_THAT(table, HasSubstr("test (1 run)"));
  // Median (range), the test's single value, and test / base of the medians: 13,200 / 11,000.
  EXPECT_THAT(table, HasSubstr("11,000 (10,000-12,000)"));
  const size_t at = table.find("  events_per_s");
  ASSERT_NE(at, std::string::npos) << table;
  const std::string line = table.substr(at, table.find('\n', at) - at);
  EXPECT_THAT(line, HasSubstr(" 13,200 ")) << line;
  EXPECT_TRUE(line.ends_with(" 1.20")) << line;
  EXPECT_THAT(table, HasSubstr("20.0 (10.0-30.0)"));  // inbound_latency p99_ms
}

TEST(CompareTest, AFailedScenarioIsCountedAndItsFiguresLeftOut) {
  absl::StatusOr<std::vector<CompareRow>> rows =
      Compare({Result("a1", 10000, 30, 20), Result("a2", 99999, 30, 20, /*passed=*/false)},
              {Result("b1", 12000, 30, 20, /*passed=*/false), Result("b2", 11000, 30, 20)});
  ASSERT_TRUE(rows.ok()) << rows.status();
  const CompareRow* rate = Find(*rows, "outbound", "events_per_s");
  ASSERT_NE(rate, nullptr);
  EXPECT_THAT(rate->base.values, ElementsAre(10000));
  EXPECT_THAT(rate->test.values, ElementsAre(11000));
  EXPECT_EQ(rate->base_failed, 1);
  EXPECT_EQ(rate->test_failed, 1);
  EXPECT_THAT(FormatComparison(*rows, 2, 2),
              HasSubstr("outbound  (failed in 1 base and 1 test runs: left out)"));

  // Failed everywhere on one side: the scenario still shows.
  rows = Compare({Result("a1", 10000, 30, 20, false)}, {Result("b1", 11000, 30, 20)});
  ASSERT_TRUE(rows.ok()) << rows.status();
  const CompareRow* none = Find(*rows, "outbound", "(no figures)");
  ASSERT_NE(none, nullptr);
  EXPECT_EQ(none->base_failed, 1);
}

TEST(CompareTest, ScenariosOnlyOneSideRanAreLeftOut) {
  Results base = Result("a1", 10000, 30, 20);
  Results test = Result("b1", 11000, 30, 20);
  test.json = absl::StrReplaceAll(test.json, {{"\"outbound\"", "\"outbound_replicas_2\""}});
  absl::StatusOr<std::vector<CompareRow>> rows = Compare({base}, {test});
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(Find(*rows, "outbound", "events_per_s"), nullptr);
  EXPECT_EQ(Find(*rows, "outbound_replicas_2", "events_per_s"), nullptr);
  EXPECT_NE(Find(*rows, "inbound_latency", "p99_ms"), nullptr);
}

TEST(CompareTest, ABadResultIsNamed) {
  absl::StatusOr<std::vector<CompareRow>> rows =
      Compare({Result("a1", 1, 1, 1)}, {{.source = "/tmp/b.json", .json = "{not json"}});
  ASSERT_FALSE(rows.ok());
  EXPECT_EQ(rows.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(rows.status().message()), HasSubstr("/tmp/b.json: not JSON"));

  rows = Compare({{.source = "a.json", .json = R"({"rows": []})"}}, {Result("b", 1, 1, 1)});
  ASSERT_FALSE(rows.ok());
  EXPECT_THAT(std::string(rows.status().message()), HasSubstr("a.json: no \"scenarios\" object"));

  EXPECT_FALSE(Compare({}, {Result("b", 1, 1, 1)}).ok());
}

}  // namespace
}  // namespace ess::bench
