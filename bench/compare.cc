#include "bench/compare.h"

#include <rapidjson/document.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ess::bench {
namespace {

// The figures compared as recorded, in this order.
constexpr const char* kFigures[] = {
    "msgs_per_s",
    "requests_per_s",
    "events_per_s",
    "webhooks_per_s",
    "records_per_s",
    "list_records_per_s",
    "replay_records_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "p99_per_second_median_ms",
    "p99_per_second_worst_ms",
    "p50_us",
    "p99_us",
    "target_rate",
    "broker_confirm_p50_ms",
    "broker_confirm_p99_ms",
    // Where the inbound runs' time went (the services' histograms): the mean of each stage, and
    // the tail of the claim.
    "stage_claim_mean_ms",
    "stage_claim_p99_ms",
    "stage_publish_mean_ms",
    "stage_answer_mean_ms",
    "stage_store_write_wait_mean_ms",
    "stage_store_claim_mean_ms",
    "stage_store_record_mean_ms",
    "stage_client_claim_wait_mean_ms",
    "stage_client_claim_call_mean_ms",
};

// One run's figures: scenario -> figure -> value, the scenarios in file order.
struct Run {
  std::vector<std::string> order;
  absl::flat_hash_map<std::string, std::vector<std::pair<std::string, double>>> figures;
  absl::flat_hash_map<std::string, bool> passed;
};

absl::StatusOr<Run> ReadRun(const Results& results) {
  rapidjson::Document doc;
  doc.Parse(results.json.data(), results.json.size());
  if (doc.HasParseError()) {
    return absl::InvalidArgumentError(
        absl::StrCat(results.source, ": not JSON (offset ", doc.GetErrorOffset(), ")"));
  }
  if (!doc.IsObject() || !doc.HasMember("scenarios") || !doc["scenarios"].IsObject()) {
    return absl::InvalidArgumentError(
        absl::StrCat(results.source, ": no \"scenarios\" object (not an ess_bench result)"));
  }
  Run run;
  for (const auto& [name_value, sc] : doc["scenarios"].GetObject()) {
    const std::string name = name_value.GetString();
    if (!sc.IsObject()) {
      return absl::InvalidArgumentError(
          absl::StrCat(results.source, ": scenarios.", name, " is not an object"));
    }
    run.order.push_back(name);
    run.passed[name] = sc.HasMember("passed") && sc["passed"].IsBool() && sc["passed"].GetBool();
    std::vector<std::pair<std::string, double>>& out = run.figures[name];
    auto number = [&](const char* key) -> std::optional<double> {
      if (!sc.HasMember(key) || !sc[key].IsNumber()) return std::nullopt;
      return sc[key].GetDouble();
    };
    for (const char* key : kFigures) {
      if (std::optional<double> v = number(key)) out.emplace_back(key, *v);
    }
    // CPU per process, replicas ("outbound_svc#2") added to their service.
    std::map<std::string, double> cpu;
    double others = -1;
    if (sc.HasMember("cpu_percent") && sc["cpu_percent"].IsObject()) {
      for (const auto& [proc, pct] : sc["cpu_percent"].GetObject()) {
        if (!pct.IsNumber()) continue;
        std::string p = proc.GetString();
        if (p == "others") {
          others = pct.GetDouble();
          continue;
        }
        cpu[p.substr(0, p.find('#'))] += pct.GetDouble();
      }
    }
    const std::optional<double> messages = number("window_messages");
    const std::optional<double> wall = number("cpu_window_s");
    const bool per_message = messages && wall && *messages > 0 && *wall > 0;
    // "<prefix>cpu_us_per_msg.<who>" when the scenario counts its messages, else
    // "<prefix>cpu_percent.<who>".
    auto add_cpu = [&](const std::string& prefix, const std::map<std::string, double>& by_name) {
      for (const auto& [who, pct] : by_name) {
        if (per_message) {
          out.emplace_back(absl::StrCat(prefix, "cpu_us_per_msg.", who),
                           pct / 100 * *wall / *messages * 1e6);
        } else {
          out.emplace_back(absl::StrCat(prefix, "cpu_percent.", who), pct);
        }
      }
    };
    add_cpu("", cpu);
    if (others >= 0) out.emplace_back("cpu_percent.others", others);
    // The same per thread ("outbound_svc/ess-http-client"), replicas added up likewise.
    std::map<std::string, double> threads;
    if (sc.HasMember("thread_cpu_percent") && sc["thread_cpu_percent"].IsObject()) {
      for (const auto& [key, pct] : sc["thread_cpu_percent"].GetObject()) {
        if (!pct.IsNumber()) continue;
        const std::string k = key.GetString();
        const size_t slash = k.find('/');
        if (slash == std::string::npos) continue;
        const std::string proc = k.substr(0, slash);
        threads[absl::StrCat(proc.substr(0, proc.find('#')), k.substr(slash))] += pct.GetDouble();
      }
    }
    add_cpu("thread_", threads);
    if (sc.HasMember("peak_rss_mib") && sc["peak_rss_mib"].IsObject()) {
      for (const auto& [proc, mib] : sc["peak_rss_mib"].GetObject()) {
        if (mib.IsNumber()) {
          out.emplace_back(absl::StrCat("peak_rss_mib.", proc.GetString()), mib.GetDouble());
        }
      }
    }
  }
  return run;
}

absl::StatusOr<std::vector<Run>> ReadRuns(const std::vector<Results>& results) {
  std::vector<Run> runs;
  for (const Results& r : results) {
    absl::StatusOr<Run> run = ReadRun(r);
    if (!run.ok()) return run.status();
    runs.push_back(*std::move(run));
  }
  return runs;
}

// Figure values of `scenario` in the runs where it passed; `failed` counts the others.
std::vector<std::pair<std::string, Sample>> Collect(const std::vector<Run>& runs,
                                                    const std::string& scenario, int* failed) {
  std::vector<std::pair<std::string, Sample>> figures;
  for (const Run& run : runs) {
    auto it = run.figures.find(scenario);
    if (it == run.figures.end()) continue;
    if (!run.passed.at(scenario)) {
      ++*failed;
      continue;
    }
    for (const auto& [figure, value] : it->second) {
      auto at = std::find_if(figures.begin(), figures.end(),
                             [&](const auto& f) { return f.first == figure; });
      if (at == figures.end()) {
        figures.emplace_back(figure, Sample());
        at = figures.end() - 1;
      }
      at->second.values.push_back(value);
    }
  }
  return figures;
}

std::string Figure(double v) {
  if (std::fabs(v) >= 1000) {
    std::string digits = absl::StrFormat("%.0f", v);
    std::string out;
    const size_t lead = (digits[0] == '-') ? 1 : 0;
    for (size_t i = 0; i < digits.size(); ++i) {
      if (i > lead && (digits.size() - i) % 3 == 0) out.push_back(',');
      out.push_back(digits[i]);
    }
    return out;
  }
  if (std::fabs(v) >= 100) return absl::StrFormat("%.0f", v);
  if (std::fabs(v) >= 10) return absl::StrFormat("%.1f", v);
  return absl::StrFormat("%.2f", v);
}

std::string Cell(const Sample& s) {
  if (s.values.empty()) return "-";
  if (s.values.size() == 1) return Figure(s.values[0]);
  return absl::StrCat(Figure(s.Median()), " (", Figure(s.Min()), "-", Figure(s.Max()), ")");
}

}  // namespace

double Sample::Median() const {
  if (values.empty()) return 0;
  std::vector<double> v = values;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}
double Sample::Min() const {
  return values.empty() ? 0 : *std::min_element(values.begin(), values.end());
}
double Sample::Max() const {
  return values.empty() ? 0 : *std::max_element(values.begin(), values.end());
}

absl::StatusOr<std::vector<CompareRow>> Compare(const std::vector<Results>& base,
                                                const std::vector<Results>& test) {
  if (base.empty() || test.empty()) {
    return absl::InvalidArgumentError("need at least one base and one test result");
  }
  absl::StatusOr<std::vector<Run>> base_runs = ReadRuns(base);
  if (!base_runs.ok()) return base_runs.status();
  absl::StatusOr<std::vector<Run>> test_runs = ReadRuns(test);
  if (!test_runs.ok()) return test_runs.status();

  std::vector<std::string> scenarios;
  for (const Run& run : *base_runs) {
    for (const std::string& name : run.order) {
      if (std::find(scenarios.begin(), scenarios.end(), name) == scenarios.end()) {
        scenarios.push_back(name);
      }
    }
  }
  std::vector<CompareRow> rows;
  for (const std::string& scenario : scenarios) {
    int base_failed = 0, test_failed = 0;
    const auto base_figures = Collect(*base_runs, scenario, &base_failed);
    const auto test_figures = Collect(*test_runs, scenario, &test_failed);
    bool any = false;
    for (const auto& [figure, base_sample] : base_figures) {
      auto t = std::find_if(test_figures.begin(), test_figures.end(),
                            [&](const auto& f) { return f.first == figure; });
      if (t == test_figures.end()) continue;
      rows.push_back({.scenario = scenario,
                      .figure = figure,
                      .base = base_sample,
                      .test = t->second,
                      .base_failed = base_failed,
                      .test_failed = test_failed});
      any = true;
    }
    // A scenario that failed on a side everywhere still shows, so the failure is not hidden.
    if (!any && (base_failed > 0 || test_failed > 0)) {
      rows.push_back({.scenario = scenario,
                      .figure = "(no figures)",
                      .base_failed = base_failed,
                      .test_failed = test_failed});
    }
  }
  return rows;
}

std::string FormatComparison(const std::vector<CompareRow>& rows, size_t base_runs,
                             size_t test_runs) {
  std::vector<std::vector<std::string>> table = {
      {"scenario / figure",
       absl::StrCat("base (", base_runs, " run", base_runs == 1 ? "" : "s", ")"),
       absl::StrCat("test (", test_runs, " run", test_runs == 1 ? "" : "s", ")"), "test/base"}};
  std::string scenario;
  for (const CompareRow& row : rows) {
    if (row.scenario != scenario) {
      scenario = row.scenario;
      std::string head = scenario;
      if (row.base_failed > 0 || row.test_failed > 0) {
        absl::StrAppend(&head, "  (failed in ", row.base_failed, " base and ", row.test_failed,
                        " test runs: left out)");
      }
      table.push_back({head, "", "", ""});
    }
    std::string ratio = "-";
    if (!row.base.values.empty() && !row.test.values.empty() && row.base.Median() != 0) {
      ratio = absl::StrFormat("%.2f", row.test.Median() / row.base.Median());
    }
    table.push_back({absl::StrCat("  ", row.figure), Cell(row.base), Cell(row.test), ratio});
  }
  std::vector<size_t> width(4, 0);
  for (const auto& line : table) {
    for (size_t i = 0; i < line.size(); ++i) width[i] = std::max(width[i], line[i].size());
  }
  std::string out;
  for (size_t n = 0; n < table.size(); ++n) {
    const auto& line = table[n];
    std::string text;
    for (size_t i = 0; i < line.size(); ++i) {
      const std::string pad(width[i] - line[i].size(), ' ');
      absl::StrAppend(&text, i == 0 ? line[i] + pad : pad + line[i],
                      i + 1 < line.size() ? "  " : "");
    }
    while (!text.empty() && text.back() == ' ') text.pop_back();
    absl::StrAppend(&out, text, "\n");
    if (n == 0) {
      std::string rule;
      for (size_t i = 0; i < width.size(); ++i) {
        absl::StrAppend(&rule, std::string(width[i], '-'), i + 1 < width.size() ? "  " : "");
      }
      absl::StrAppend(&out, rule, "\n");
    }
  }
  return out;
}

}  // namespace ess::bench
