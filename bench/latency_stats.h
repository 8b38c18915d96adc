// Latency statistics of the benchmark's latency runs.
#ifndef ESS_BENCH_LATENCY_STATS_H_
#define ESS_BENCH_LATENCY_STATS_H_

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace ess::bench {

// Percentile (0..100) of sorted samples, nearest rank; 0 without samples.
double PercentileOf(const std::vector<int64_t>& sorted, double p);

// The p99 of each whole second of a latency run, to show the spread within one run: a run's
// p99 is set by its worst stretch (at 3,400 requests/s, its worst ~100 ms over 10 s), and on a
// shared VM one stall can be that stretch.
struct SecondP99 {
  double median_ms = 0;
  double worst_ms = 0;
  size_t seconds = 0;  // seconds counted
  // Each counted second's p99, in time order: whether the tail was one stall or every second.
  std::vector<double> by_second_ms;
};

// `samples`: (send time, latency) in ns, in any order. Seconds are counted from `from_ns` by
// send time; samples sent before it, and seconds with fewer than 100 samples, are left out.
SecondP99 PerSecondP99(const std::vector<std::pair<int64_t, int64_t>>& samples, int64_t from_ns);

}  // namespace ess::bench

#endif  // ESS_BENCH_LATENCY_STATS_H_
