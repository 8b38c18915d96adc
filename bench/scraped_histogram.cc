#include "bench/scraped_histogram.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/sv.h"

namespace ess::bench {
namespace {

using Labels = std::vector<std::pair<std::string, std::string>>;

// One sample line: `name{a="x",b="y"} value`. Label values in our exposition carry no quotes or
// commas, so a split is enough; anything else fails the line.
struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

absl::StatusOr<Sample> ParseSample(std::string_view line) {
  Sample s;
  const size_t brace = line.find('{');
  const size_t space = line.rfind(' ');
  if (space == std::string_view::npos) return absl::InvalidArgumentError("no value");
  std::string_view value = line.substr(space + 1);
  if (value == "+Inf") {
    s.value = std::numeric_limits<double>::infinity();
  } else if (!absl::SimpleAtod(ToAbsl(value), &s.value)) {
    return absl::InvalidArgumentError(absl::StrCat("value '", ToAbsl(value), "' is no number"));
  }
  if (brace == std::string_view::npos || brace > space) {
    s.name = std::string(line.substr(0, space));
    return s;
  }
  s.name = std::string(line.substr(0, brace));
  const size_t close = line.rfind('}', space);
  if (close == std::string_view::npos || close < brace) {
    return absl::InvalidArgumentError("labels not closed");
  }
  std::string_view inside = line.substr(brace + 1, close - brace - 1);
  for (absl::string_view pair : absl::StrSplit(ToAbsl(inside), ',', absl::SkipEmpty())) {
    const size_t eq = pair.find('=');
    if (eq == absl::string_view::npos) return absl::InvalidArgumentError("label without '='");
    absl::string_view v = pair.substr(eq + 1);
    if (!absl::ConsumePrefix(&v, "\"") || !absl::ConsumeSuffix(&v, "\"")) {
      return absl::InvalidArgumentError("label value not quoted");
    }
    s.labels.emplace_back(std::string(pair.substr(0, eq)), std::string(v));
  }
  return s;
}

std::string Label(const Labels& labels, std::string_view key) {
  for (const auto& [k, v] : labels) {
    if (k == key) return v;
  }
  return "";
}

bool Matches(const Labels& have, const Labels& want) {
  for (const auto& [k, v] : want) {
    bool found = false;
    for (const auto& [hk, hv] : have) found = found || (hk == k && hv == v);
    if (!found) return false;
  }
  return true;
}

// The series' identity: its labels without `le`.
Labels Series(const Labels& labels) {
  Labels out;
  for (const auto& kv : labels) {
    if (kv.first != "le") out.push_back(kv);
  }
  return out;
}

}  // namespace

absl::StatusOr<ScrapedHistogram> ScrapedHistogram::Parse(std::string_view text,
                                                         std::string_view name,
                                                         const Labels& labels) {
  const std::string bucket_name = absl::StrCat(ToAbsl(name), "_bucket");
  const std::string sum_name = absl::StrCat(ToAbsl(name), "_sum");
  const std::string count_name = absl::StrCat(ToAbsl(name), "_count");
  ScrapedHistogram h;
  bool found = false;
  std::optional<Labels> series;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(ToAbsl(text), '\n')) {
    ++line_no;
    if (line.empty() || line.front() == '#' || !absl::StartsWith(line, ToAbsl(name))) continue;
    absl::StatusOr<Sample> s = ParseSample(ToStd(line));
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics line ", line_no, " (", line, "): ", s.status().message()));
    }
    if (s->name != bucket_name && s->name != sum_name && s->name != count_name) continue;
    if (!Matches(s->labels, labels)) continue;
    Labels this_series = Series(s->labels);
    if (series.has_value() && *series != this_series) {
      return absl::InvalidArgumentError(absl::StrCat("more than one series of ", ToAbsl(name),
                                                     " matches the labels (line ", line_no, ")"));
    }
    series = std::move(this_series);
    found = true;
    if (s->name == sum_name) {
      h.sum = s->value;
    } else if (s->name == count_name) {
      h.count = s->value;
    } else {
      const std::string le = Label(s->labels, "le");
      double bound = 0;
      if (le == "+Inf") {
        bound = std::numeric_limits<double>::infinity();
      } else if (!absl::SimpleAtod(le, &bound)) {
        return absl::InvalidArgumentError(
            absl::StrCat("metrics line ", line_no, ": bucket bound '", le, "' is no number"));
      }
      h.buckets.emplace_back(bound, s->value);
    }
  }
  if (!found) {
    return absl::NotFoundError(absl::StrCat("no histogram ", ToAbsl(name), " in the metrics"));
  }
  std::sort(h.buckets.begin(), h.buckets.end());
  return h;
}

ScrapedHistogram ScrapedHistogram::Minus(const ScrapedHistogram& earlier) const {
  ScrapedHistogram d = *this;
  d.count -= earlier.count;
  d.sum -= earlier.sum;
  for (auto& [bound, n] : d.buckets) {
    for (const auto& [b, m] : earlier.buckets) {
      if (b == bound) n -= m;
    }
  }
  return d;
}

double ScrapedHistogram::Quantile(double q) const {
  if (buckets.empty() || count <= 0) return 0;
  const double rank = q * buckets.back().second;
  double lower_bound = 0, lower_count = 0;
  for (const auto& [bound, n] : buckets) {
    if (n >= rank) {
      if (std::isinf(bound)) return lower_bound;  // above the highest finite bound
      if (n == lower_count) return bound;
      return lower_bound + (bound - lower_bound) * (rank - lower_count) / (n - lower_count);
    }
    lower_bound = bound;
    lower_count = n;
  }
  return lower_bound;
}

}  // namespace ess::bench
