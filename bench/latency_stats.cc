#include "bench/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

namespace ess::bench {

double PercentileOf(const std::vector<int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double rank = std::ceil(p / 100.0 * static_cast<double>(sorted.size()));
  const size_t i = static_cast<size_t>(std::clamp<double>(rank, 1, sorted.size())) - 1;
  return static_cast<double>(sorted[i]);
}

SecondP99 PerSecondP99(const std::vector<std::pair<int64_t, int64_t>>& samples, int64_t from_ns) {
  std::map<int64_t, std::vector<int64_t>> by_second;
  for (const auto& [sent_ns, latency_ns] : samples) {
    if (sent_ns >= from_ns) by_second[(sent_ns - from_ns) / 1'000'000'000].push_back(latency_ns);
  }
  std::vector<double> in_order;
  for (auto& [second, lat] : by_second) {
    if (lat.size() < 100) continue;
    std::sort(lat.begin(), lat.end());
    in_order.push_back(PercentileOf(lat, 99) / 1e6);
  }
  if (in_order.empty()) return {};
  std::vector<double> p99s = in_order;
  std::sort(p99s.begin(), p99s.end());
  const size_t n = p99s.size();
  return {.median_ms = n % 2 == 1 ? p99s[n / 2] : (p99s[n / 2 - 1] + p99s[n / 2]) / 2,
          .worst_ms = p99s.back(),
          .seconds = n,
          .by_second_ms = std::move(in_order)};
}

}  // namespace ess::bench
