// The benchmark's reading of the services' latency histograms, from text rendered by the same
// code the services use (metrics::Latency, prometheus-cpp's serializer).
#include "bench/scraped_histogram.h"

#include <string>

#include "absl/time/time.h"
#include "common/metrics.h"
#include "gtest/gtest.h"

namespace ess::bench {
namespace {

std::string Render(const metrics::Latency& claim, const metrics::Latency& publish) {
  prometheus::MetricFamily f =
      metrics::Family("ess_inbound_stage_seconds", "Stages.", prometheus::MetricType::Histogram);
  claim.AddTo(f, {{"stage", "claim"}});
  publish.AddTo(f, {{"stage", "publish"}});
  return metrics::Render({f});
}

TEST(ScrapedHistogramTest, ReadsOneSeriesAndItsQuantiles) {
  metrics::Latency claim, publish;
  // 100 claims: 50 of 0.8 ms (bucket 0.75-1 ms), 49 of 4.5 ms (4-5 ms), 1 of 40 ms (30-50 ms).
  for (int i = 0; i < 50; ++i) claim.Observe(absl::Microseconds(800));
  for (int i = 0; i < 49; ++i) claim.Observe(absl::Microseconds(4500));
  claim.Observe(absl::Milliseconds(40));
  publish.Observe(absl::Seconds(20));  // above every bound

  const std::string text = Render(claim, publish);
  absl::StatusOr<ScrapedHistogram> h =
      ScrapedHistogram::Parse(text, "ess_inbound_stage_seconds", {{"stage", "claim"}});
  ASSERT_TRUE(h.ok()) << h.status() << "\n" << text;
  EXPECT_EQ(h->count, 100);
  EXPECT_NEAR(h->sum, 50 * 0.0008 + 49 * 0.0045 + 0.04, 1e-9);
  EXPECT_NEAR(h->Mean(), h->sum / 100, 1e-12);
  // The median is the 50th sample: the top of the 0.75-1 ms bucket.
  EXPECT_NEAR(h->Quantile(0.5), 0.001, 1e-12);
  // The 99th is in the 4-5 ms bucket, whose 49 samples are spread over it: 4 + 49/49 ms.
  EXPECT_NEAR(h->Quantile(0.99), 0.005, 1e-12);
  // Half-way through the 4-5 ms bucket: rank 74.5 of 50..99.
  EXPECT_NEAR(h->Quantile(0.745), 0.004 + 0.001 * 24.5 / 49, 1e-12);

  absl::StatusOr<ScrapedHistogram> p =
      ScrapedHistogram::Parse(text, "ess_inbound_stage_seconds", {{"stage", "publish"}});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->count, 1);
  EXPECT_DOUBLE_EQ(p->Quantile(0.99), 10);  // in +Inf: the highest finite bound
}

TEST(ScrapedHistogramTest, MinusLeavesWhatARunObserved) {
  metrics::Latency claim, publish;
  for (int i = 0; i < 1000; ++i) claim.Observe(absl::Milliseconds(50));
  absl::StatusOr<ScrapedHistogram> before = ScrapedHistogram::Parse(
      Render(claim, publish), "ess_inbound_stage_seconds", {{"stage", "claim"}});
  ASSERT_TRUE(before.ok());
  for (int i = 0; i < 10; ++i) claim.Observe(absl::Microseconds(300));
  absl::StatusOr<ScrapedHistogram> after = ScrapedHistogram::Parse(
      Render(claim, publish), "ess_inbound_stage_seconds", {{"stage", "claim"}});
  ASSERT_TRUE(after.ok());
  const ScrapedHistogram run = after->Minus(*before);
  EXPECT_EQ(run.count, 10);
  EXPECT_NEAR(run.Mean(), 0.0003, 1e-9);
  EXPECT_LE(run.Quantile(0.99), 0.0005);  // the earlier 50 ms samples are gone
  EXPECT_GT(run.Quantile(0.99), 0.00025);
}

TEST(ScrapedHistogramTest, MissingAmbiguousAndBrokenInputAreErrors) {
  metrics::Latency claim, publish;
  const std::string text = Render(claim, publish);
  EXPECT_EQ(ScrapedHistogram::Parse(text, "ess_nothing_seconds").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(
      ScrapedHistogram::Parse(text, "ess_inbound_stage_seconds", {{"stage", "x"}}).status().code(),
      absl::StatusCode::kNotFound);
  // Without a label filter both stages match.
  absl::StatusOr<ScrapedHistogram> both =
      ScrapedHistogram::Parse(text, "ess_inbound_stage_seconds");
  EXPECT_EQ(both.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(both.status().message().find("more than one series"), std::string::npos);
  absl::StatusOr<ScrapedHistogram> broken =
      ScrapedHistogram::Parse("# HELP x\nx_bucket{le=\"0.1\"} 3\nx_count{} many\n", "x");
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(broken.status().message().find("line 3"), std::string::npos) << broken.status();
}

}  // namespace
}  // namespace ess::bench
