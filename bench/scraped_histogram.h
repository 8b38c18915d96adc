// Histograms read from a service's Prometheus /metrics text, for the benchmark's breakdown of
// where a message's time goes (the services' own stage histograms, e.g.
// ess_inbound_stage_seconds{stage="claim"}).
//
//   absl::StatusOr<ScrapedHistogram> before = ScrapedHistogram::Parse(text, "ess_x_seconds",
//                                                                     {{"stage", "claim"}});
//   ... the run ...
//   ScrapedHistogram run = after->Minus(*before);   // the run's observations only
//   double p99_s = run.Quantile(0.99);
#ifndef ESS_BENCH_SCRAPED_HISTOGRAM_H_
#define ESS_BENCH_SCRAPED_HISTOGRAM_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace ess::bench {

struct ScrapedHistogram {
  // Cumulative counts by upper bound, ascending, as exposed; the last bound is +Inf.
  std::vector<std::pair<double, double>> buckets;
  double count = 0;
  double sum = 0;

  // The series of histogram `name` whose labels include all of `labels` (others may be present,
  // but only one series may match). NOT_FOUND when none does; INVALID_ARGUMENT, naming the line,
  // when a line of it cannot be read.
  static absl::StatusOr<ScrapedHistogram> Parse(
      std::string_view text, std::string_view name,
      const std::vector<std::pair<std::string, std::string>>& labels = {});

  // What was observed since `earlier` (the same series scraped before).
  ScrapedHistogram Minus(const ScrapedHistogram& earlier) const;

  // The q-quantile (0..1), interpolated linearly within its bucket as Prometheus'
  // histogram_quantile does; the highest finite bound if it falls in +Inf; 0 without samples.
  double Quantile(double q) const;
  double Mean() const { return count > 0 ? sum / count : 0; }
};

}  // namespace ess::bench

#endif  // ESS_BENCH_SCRAPED_HISTOGRAM_H_
