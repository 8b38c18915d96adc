// Compares benchmark results: runs of a base build against runs of a test build (each an
// ess_bench results JSON), figure by figure, scenario by scenario. Every Profiling entry of
// bench/README.md is such an A/B; on a shared machine only interleaved rounds compare well,
// so each side may have several runs, and each figure is shown as the median with its range.
//
//   absl::StatusOr<std::vector<CompareRow>> rows = Compare({base1, base2}, {test1, test2});
#ifndef ESS_BENCH_COMPARE_H_
#define ESS_BENCH_COMPARE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ess::bench {

// The figures of one side for one row, one per run that has it.
struct Sample {
  std::vector<double> values;
  double Median() const;
  double Min() const;
  double Max() const;
};

struct CompareRow {
  std::string scenario;
  // "webhooks_per_s", "p99_ms", "cpu_us_per_msg.inbound_svc", "cpu_percent.rabbitmq",
  // "peak_rss_mib.replay_svc".
  std::string figure;
  Sample base, test;
  // A side's runs in which the scenario failed (its figures are left out).
  int base_failed = 0, test_failed = 0;
};

// Reads results JSON text (ess_bench's file). INVALID_ARGUMENT names what is wrong.
struct Results {
  std::string source;  // the file, for messages
  std::string json;
};

// One row per figure of every scenario that both sides ran, in the order of the first base
// run's scenarios. Throughput, latency and record figures as recorded; CPU as microseconds per
// message where the scenario counted its messages, as % of a core otherwise; peak RSS. A
// figure only one side has is left out.
absl::StatusOr<std::vector<CompareRow>> Compare(const std::vector<Results>& base,
                                                const std::vector<Results>& test);

// The rows as a table: figure, base and test medians with their ranges, test / base.
std::string FormatComparison(const std::vector<CompareRow>& rows, size_t base_runs,
                             size_t test_runs);

}  // namespace ess::bench

#endif  // ESS_BENCH_COMPARE_H_
