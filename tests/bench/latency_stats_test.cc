// The benchmark's latency statistics: nearest-rank percentiles and the p99 of each second.
#include "bench/latency_stats.h"

#include <cstdint>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ess::bench {
namespace {

constexpr int64_t kSecond = 1'000'000'000;
constexpr int64_t kMs = 1'000'000;

TEST(LatencyStatsTest, PercentileIsTheNearestRank) {
  std::vector<int64_t> sorted;
  for (int64_t i = 1; i <= 200; ++i) sorted.push_back(i);
  EXPECT_EQ(PercentileOf(sorted, 50), 100);
  EXPECT_EQ(PercentileOf(sorted, 99), 198);
  EXPECT_EQ(PercentileOf(sorted, 99.9), 200);
  EXPECT_EQ(PercentileOf(sorted, 0), 1);
  EXPECT_EQ(PercentileOf({}, 99), 0);
}

TEST(LatencyStatsTest, TheP99OfEachSecondShowsOneBadSecond) {
  const int64_t from = 5 * kSecond;
  std::vector<std::pair<int64_t, int64_t>> samples;
  // Warm-up before `from`: left out, however slow.
  for (int i = 0; i < 500; ++i) samples.emplace_back(from - kSecond + i * kMs, 900 * kMs);
  // Seconds 0-3: 200 samples each at 1 ms, so each second's p99 (rank 198) is 1 ms; but
  // second 2 ends with 5 samples at 20 ms, more than its 2 above the p99: its p99 is 20 ms.
  for (int s = 0; s < 4; ++s) {
    for (int i = 0; i < 200; ++i) {
      int64_t latency = 1 * kMs;
      if (s == 2 && i >= 195) latency = 20 * kMs;
      samples.emplace_back(from + s * kSecond + i * 4 * kMs, latency);
    }
  }
  // Second 4 has only 50 samples: too few for a p99, left out.
  for (int i = 0; i < 50; ++i) samples.emplace_back(from + 4 * kSecond + i * kMs, 500 * kMs);

  const SecondP99 p = PerSecondP99(samples, from);
  EXPECT_EQ(p.seconds, 4u);
  EXPECT_DOUBLE_EQ(p.median_ms, 1.0);
  EXPECT_DOUBLE_EQ(p.worst_ms, 20.0);
  EXPECT_THAT(p.by_second_ms, ::testing::ElementsAre(1.0, 1.0, 20.0, 1.0));
}

TEST(LatencyStatsTest, NoSecondWithEnoughSamples) {
  const SecondP99 p = PerSecondP99({{0, kMs}, {1, kMs}}, 0);
  EXPECT_EQ(p.seconds, 0u);
  EXPECT_EQ(p.worst_ms, 0);
}

}  // namespace
}  // namespace ess::bench
