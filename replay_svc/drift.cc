#include "replay_svc/drift.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/sv.h"

namespace ess::replay {

std::vector<DriftWatch::Partner> DriftWatch::PartnersFromConfig(const ess::v1::HubConfig& config) {
  std::vector<Partner> partners;
  for (const ess::v1::PartnerConfig& p : config.partners()) {
    if (p.has_outbound() && p.outbound().confirm_within_seconds() > 0) {
      partners.push_back({.name = p.name(),
                          .confirm_within = absl::Seconds(
                              static_cast<int64_t>(p.outbound().confirm_within_seconds()))});
    }
  }
  return partners;
}

DriftWatch::Options DriftWatch::OptionsFromConfig(const ess::v1::HubConfig& config) {
  const ess::v1::ReplayDrift& d = config.replay().drift();
  return {.window = absl::Seconds(static_cast<int64_t>(d.window_seconds())),
          .interval = absl::Seconds(d.check_interval_seconds())};
}

DriftWatch::DriftWatch(ReplayStore& store, std::vector<Partner> partners, Options options)
    : store_(store),
      partners_(std::move(partners)),
      options_(std::move(options)),
      figures_(partners_.size()),
      thread_("replay-drift", options_.interval, [this] { CheckAndLog(); }) {}

void DriftWatch::CheckAndLog() {
  if (absl::Status s = Check(); !s.ok()) {
    log::Error("", "drift check failed", {{"error", ToStd(s.message())}});
  }
}

absl::Status DriftWatch::Check() {
  absl::MutexLock check(&check_mu_);
  absl::Status first_failure;
  for (size_t i = 0; i < partners_.size(); ++i) {
    const Partner& partner = partners_[i];
    const absl::Time now = Now();
    absl::StatusOr<UnconfirmedDeliveries> found =
        store_.CountUnconfirmed(partner.name, absl::ToUnixMicros(now - options_.window),
                                absl::ToUnixMicros(now - partner.confirm_within));
    if (!found.ok()) {
      if (first_failure.ok()) {
        first_failure =
            absl::Status(found.status().code(),
                         absl::StrCat("partner ", partner.name, ": ", found.status().message()));
      }
      continue;
    }
    const absl::Duration oldest_age = found->oldest_micros.has_value()
                                          ? now - absl::FromUnixMicros(*found->oldest_micros)
                                          : absl::ZeroDuration();
    Figures before;
    {
      absl::MutexLock lock(&figures_mu_);
      before = figures_[i];
      figures_[i] = {.counted = true, .unconfirmed = found->count, .oldest_age = oldest_age};
    }
    if (before.counted && before.unconfirmed == found->count) continue;
    if (found->count == 0) {
      if (before.counted) log::Info("", "no unconfirmed deliveries", {{"partner", partner.name}});
      continue;
    }
    const std::string count = absl::StrCat(found->count);
    const std::string within = absl::StrCat(absl::ToInt64Seconds(partner.confirm_within));
    const std::string oldest = absl::FormatTime(
        "%Y-%m-%dT%H:%M:%SZ", absl::FromUnixMicros(*found->oldest_micros), absl::UTCTimeZone());
    // The rows this count read: [now - window, now - confirm_within).
    const std::string list = absl::StrCat(
        "essctl list --partner ", partner.name,
        " --direction outbound --status delivered --unconfirmed --since ",
        absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", now - options_.window, absl::UTCTimeZone()),
        " --until ",
        absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", now - partner.confirm_within, absl::UTCTimeZone()));
    log::Warn("", "deliveries not confirmed in time",
              {{"partner", partner.name},
               {"unconfirmed", count},
               {"confirm_within_s", within},
               {"oldest_delivered", oldest},
               {"list", list}});
  }
  (first_failure.ok() ? checks_ok_ : checks_failed_).fetch_add(1);
  return first_failure;
}

std::vector<prometheus::MetricFamily> DriftWatch::Metrics() const {
  prometheus::MetricFamily unconfirmed = metrics::Family(
      "ess_replay_unconfirmed_deliveries",
      "Deliveries to the partner within replay.drift.window_seconds and older than its "
      "outbound.confirm_within_seconds that no inbound event confirmed, at the last check.",
      prometheus::MetricType::Gauge);
  prometheus::MetricFamily oldest = metrics::Family(
      "ess_replay_unconfirmed_oldest_seconds",
      "Age of the oldest of those deliveries at the last check; 0 when there is none.",
      prometheus::MetricType::Gauge);
  {
    absl::MutexLock lock(&figures_mu_);
    for (size_t i = 0; i < partners_.size(); ++i) {
      if (!figures_[i].counted) continue;
      const metrics::Labels labels = {{"partner", partners_[i].name}};
      metrics::AddSample(unconfirmed, labels, static_cast<double>(figures_[i].unconfirmed));
      metrics::AddSample(oldest, labels, absl::ToDoubleSeconds(figures_[i].oldest_age));
    }
  }
  prometheus::MetricFamily checks =
      metrics::Family("ess_replay_drift_checks_total",
                      "Drift checks by result (error: the count of some partner failed).",
                      prometheus::MetricType::Counter);
  metrics::AddSample(checks, {{"result", "ok"}}, static_cast<double>(checks_ok_.load()));
  metrics::AddSample(checks, {{"result", "error"}}, static_cast<double>(checks_failed_.load()));
  std::vector<prometheus::MetricFamily> families;
  families.push_back(std::move(unconfirmed));
  families.push_back(std::move(oldest));
  families.push_back(std::move(checks));
  return families;
}

}  // namespace ess::replay
