#include "common/metrics.h"

#include <sstream>

#include "prometheus/text_serializer.h"

namespace ess::metrics {

prometheus::MetricFamily Family(std::string name, std::string help, prometheus::MetricType type) {
  prometheus::MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  return family;
}

prometheus::MetricFamily Single(std::string name, std::string help, prometheus::MetricType type,
                                double value) {
  prometheus::MetricFamily family = Family(std::move(name), std::move(help), type);
  AddSample(family, {}, value);
  return family;
}

void AddSample(prometheus::MetricFamily& family, const Labels& labels, double value) {
  prometheus::ClientMetric& sample = family.metric.emplace_back();
  for (const auto& [name, v] : labels) sample.label.push_back({name, v});
  if (family.type == prometheus::MetricType::Counter) {
    sample.counter.value = value;
  } else {
    sample.gauge.value = value;
  }
}

namespace {

// Fine below 10 ms, where a lane's stages live, then coarser up to the lanes' deadlines.
const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* const kBuckets = new prometheus::Histogram::BucketBoundaries{
      0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
      0.015,  0.02,    0.03,   0.05,    0.075, 0.1,    0.25,  0.5,   1,     2.5,   5,      10};
  return *kBuckets;
}

}  // namespace

Latency::Latency() : histogram_(LatencyBuckets()) {}

void Latency::AddTo(prometheus::MetricFamily& family, const Labels& labels) const {
  prometheus::ClientMetric& sample = family.metric.emplace_back(histogram_.Collect());
  for (const auto& [name, v] : labels) sample.label.push_back({name, v});
}

std::string Render(const std::vector<prometheus::MetricFamily>& families) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

}  // namespace ess::metrics
