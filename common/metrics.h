// Prometheus metrics (Debian's prometheus-cpp, its core library): helpers that build metric
// families from the counters a component already keeps, and their text rendering for our own
// HTTP servers (common/ops_endpoints.h serves it at GET /metrics).
//
//   prometheus::MetricFamily settled = metrics::Family(
//       "ess_outbound_messages_total", "Messages settled.", prometheus::MetricType::Counter);
//   metrics::AddSample(settled, {{"partner", "prison"}, {"outcome", "delivered"}}, 42);
//   std::string text = metrics::Render({settled});   // the text exposition format
#ifndef ESS_COMMON_METRICS_H_
#define ESS_COMMON_METRICS_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"

namespace ess::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

// An empty family: Counter, Gauge or Histogram.
prometheus::MetricFamily Family(std::string name, std::string help, prometheus::MetricType type);
// A family of one unlabelled sample.
prometheus::MetricFamily Single(std::string name, std::string help, prometheus::MetricType type,
                                double value);
// Appends one sample to a Counter or Gauge family.
void AddSample(prometheus::MetricFamily& family, const Labels& labels, double value);

// A latency histogram in seconds, on buckets from 100 us to 10 s (prometheus-cpp's Histogram:
// one short mutex hold per Observe). Thread-safe.
//
//   metrics::Latency claim;
//   claim.Observe(absl::Now() - started);
//   prometheus::MetricFamily f = metrics::Family("ess_x_seconds", "...", MetricType::Histogram);
//   claim.AddTo(f, {{"stage", "claim"}});
class Latency {
 public:
  Latency();
  void Observe(absl::Duration d) { histogram_.Observe(absl::ToDoubleSeconds(d)); }
  // Appends this histogram to a Histogram family, with `labels`.
  void AddTo(prometheus::MetricFamily& family, const Labels& labels) const;

 private:
  prometheus::Histogram histogram_;
};

// The families in Prometheus' text exposition format (version 0.0.4).
std::string Render(const std::vector<prometheus::MetricFamily>& families);
inline constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace ess::metrics

#endif  // ESS_COMMON_METRICS_H_
