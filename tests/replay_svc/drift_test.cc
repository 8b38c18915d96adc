// The drift watch on a real SQLite store, on a clock the test sets: what each check counts, what
// the metrics and the log say, and what a failed count leaves.
#include "replay_svc/drift.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/sqlite.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "replay_svc/sqlite_replay_store.h"
#include "tests/replay_svc/test_util.h"

namespace ess::replay {
namespace {

using ::ess::replay::testing::MakeRecord;
using ::ess::replay::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr auto kOut = ess::v1::DIRECTION_OUTBOUND;
constexpr auto kIn = ess::v1::DIRECTION_INBOUND;
constexpr auto kDelivered = ess::v1::MESSAGE_STATUS_DELIVERED;
constexpr auto kPublished = ess::v1::MESSAGE_STATUS_PUBLISHED;
const absl::Time kStart = absl::FromUnixSeconds(1'700'000'000);

// A clock that stays where the test puts it.
class SetClock {
 public:
  absl::Time Now() {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Set(absl::Time t) {
    absl::MutexLock lock(&mu_);
    now_ = t;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_) = kStart;
};

// The samples of the metrics text whose line starts with `name` followed by '{' or ' '.
std::vector<std::string> Samples(const DriftWatch& watch, const std::string& name) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(metrics::Render(watch.Metrics()), '\n')) {
    if (absl::StartsWith(line, name + "{") || absl::StartsWith(line, name + " ")) {
      lines.emplace_back(line);
    }
  }
  return lines;
}

// Checks that counted every partner so far (ess_replay_drift_checks_total{result="ok"}).
int OkChecks(const DriftWatch& watch) {
  int ok = -1;
  for (const std::string& line : Samples(watch, "ess_replay_drift_checks_total")) {
    absl::string_view n = line;
    if (absl::ConsumePrefix(&n, R"(ess_replay_drift_checks_total{result="ok"} )")) {
      EXPECT_TRUE(absl::SimpleAtoi(n, &ok)) << line;
    }
  }
  return ok;
}

// Waits (up to 10 s) until `watch` made `n` checks that counted every partner.
void WaitForChecks(const DriftWatch& watch, int n) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (OkChecks(watch) < n && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(2));
  ASSERT_GE(OkChecks(watch), n);
}

class DriftWatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    log::Init("replay_svc", log::Level::kInfo);
    SqliteReplayStore::Options options;
    options.clock = [this] { return clock_.Now(); };
    auto store = SqliteReplayStore::Open(dir_.File("replay.db"), std::move(options));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  // A watch of prison (confirms within 10 minutes) and clinic (within an hour), over a day,
  // that checks once at start (done when this returns) and then when the test calls Check().
  void Watch() {
    watch_ = std::make_unique<DriftWatch>(
        *store_,
        std::vector<DriftWatch::Partner>{{"prison", absl::Minutes(10)}, {"clinic", absl::Hours(1)}},
        DriftWatch::Options{.window = absl::Hours(24),
                            .interval = absl::InfiniteDuration(),
                            .clock = [this] { return clock_.Now(); }});
    WaitForChecks(*watch_, 1);
  }

  // Records one event at `at`, as the lanes would.
  void Write(absl::Time at, ess::v1::Direction direction, const std::string& partner,
             const std::string& id, const std::string& correlation_id,
             ess::v1::MessageStatus status) {
    clock_.Set(at);
    google::protobuf::RepeatedPtrField<ess::v1::MessageRecord> batch;
    *batch.Add() = MakeRecord(direction, partner, id, correlation_id, status);
    absl::StatusOr<uint32_t> stored = store_->Record(batch);
    ASSERT_TRUE(stored.ok()) << stored.status();
  }

  // Runs a check at `at` and returns what it logged.
  std::string CheckAt(absl::Time at) {
    clock_.Set(at);
    ::testing::internal::CaptureStderr();
    absl::Status s = watch_->Check();
    std::string logged = ::testing::internal::GetCapturedStderr();
    EXPECT_TRUE(s.ok()) << s;
    return logged;
  }

  TempDir dir_;
  SetClock clock_;
  std::unique_ptr<SqliteReplayStore> store_;
  std::unique_ptr<DriftWatch> watch_;
};

TEST_F(DriftWatchTest, CountsEachPartnersDeliveriesThatNoEventConfirmedInTime) {
  const absl::Time t = kStart;
  Write(t, kOut, "prison", "m-1", "VIS-1", kDelivered);
  Write(t, kOut, "prison", "m-2", "VIS-2", kDelivered);
  Write(t, kOut, "prison", "m-3", "VIS-3", kDelivered);
  Write(t, kOut, "prison", "m-f", "VIS-F", ess::v1::MESSAGE_STATUS_FAILED);  // not taken
  Write(t, kOut, "clinic", "m-4", "VIS-4", kDelivered);
  Write(t, kOut, "courts", "m-9", "VIS-9", kDelivered);  // not watched
  Write(t + absl::Minutes(5), kOut, "prison", "m-5", "VIS-5", kDelivered);
  ASSERT_NO_FATAL_FAILURE(Watch());

  // 12 minutes on: prison's first three are overdue, m-5 (7 minutes) and clinic's are not.
  std::string logged = CheckAt(t + absl::Minutes(12));
  EXPECT_THAT(Samples(*watch_, "ess_replay_unconfirmed_deliveries"),
              ElementsAre(R"(ess_replay_unconfirmed_deliveries{partner="prison"} 3)",
                          R"(ess_replay_unconfirmed_deliveries{partner="clinic"} 0)"));
  EXPECT_THAT(Samples(*watch_, "ess_replay_unconfirmed_oldest_seconds"),
              ElementsAre(R"(ess_replay_unconfirmed_oldest_seconds{partner="prison"} 720)",
                          R"(ess_replay_unconfirmed_oldest_seconds{partner="clinic"} 0)"));
  EXPECT_THAT(logged, HasSubstr("deliveries not confirmed in time"));
  EXPECT_THAT(logged, HasSubstr("partner=prison unconfirmed=3 confirm_within_s=600 "
                                "oldest_delivered=2023-11-14T22:13:20Z"));
  EXPECT_THAT(logged, HasSubstr("essctl list --partner prison --direction outbound --status "
                                "delivered --unconfirmed --since 2023-11-13T22:25:20Z --until "
                                "2023-11-14T22:15:20Z"));
  EXPECT_THAT(logged, Not(HasSubstr("partner=clinic")));

  // VIS-2 is confirmed, by another partner's webhook: the trail counts it, and so does this.
  Write(t + absl::Minutes(13), kIn, "clinic", "wh-2", "VIS-2", kPublished);
  // An inbound event that failed to publish confirms nothing.
  Write(t + absl::Minutes(13), kIn, "prison", "wh-3", "VIS-3", ess::v1::MESSAGE_STATUS_FAILED);
  logged = CheckAt(t + absl::Minutes(14));
  EXPECT_THAT(Samples(*watch_, "ess_replay_unconfirmed_deliveries"),
              ElementsAre(R"(ess_replay_unconfirmed_deliveries{partner="prison"} 2)",
                          R"(ess_replay_unconfirmed_deliveries{partner="clinic"} 0)"));
  EXPECT_THAT(logged, HasSubstr("partner=prison unconfirmed=2 "));
  // Nothing changed: nothing is logged.
  EXPECT_THAT(CheckAt(t + absl::Minutes(14)), IsEmpty());

  // An hour on, clinic's m-4 is overdue too, and prison's m-5.
  logged = CheckAt(t + absl::Minutes(61));
  EXPECT_THAT(Samples(*watch_, "ess_replay_unconfirmed_deliveries"),
              ElementsAre(R"(ess_replay_unconfirmed_deliveries{partner="prison"} 3)",
                          R"(ess_replay_unconfirmed_deliveries{partner="clinic"} 1)"));
  EXPECT_THAT(Samples(*watch_, "ess_replay_unconfirmed_oldest_seconds"),
              ElementsAre(R"(ess_replay_unconfirmed_oldest_seconds{partner="prison"} 3660)",
                          R"(ess_replay_unconfirmed_oldest_seconds{partner="clinic"} 3660)"));
  EXPECT_THAT(logged, HasSubstr("partner=clinic unconfirmed=1 confirm_within_s=3600 "));

  // A day and two minutes on, what was delivered at t has left the window; m-5 has not.
  logged = CheckAt(t + absl::Hours(24) + absl::Minutes(2));
  EXPECT_THAT(Samples(*watch_, "ess_replay_unconfirmed_deliveries"),
              ElementsAre(R"(ess_replay_unconfirmed_deliveries{partner="prison"} 1)",
                          R"(ess_replay_unconfirmed_deliveries{partner="clinic"} 0)"));
  EXPECT_THAT(logged, HasSubstr(R"(msg="no unconfirmed deliveries" partner=clinic)"));

  // m-5 is confirmed: prison is back to none.
  Write(t + absl::Hours(25), kIn, "prison", "wh-5", "VIS-5", kPublished);
  logged = CheckAt(t + absl::Hours(25));
  EXPECT_THAT(Samples(*watch_, "ess_replay_unconfirmed_deliveries"),
              ElementsAre(R"(ess_replay_unconfirmed_deliveries{partner="prison"} 0)",
                          R"(ess_replay_unconfirmed_deliveries{partner="clinic"} 0)"));
  EXPECT_THAT(logged, HasSubstr(R"(msg="no unconfirmed deliveries" partner=prison)"));
  // The start's check and the six above.
  EXPECT_THAT(Samples(*watch_, "ess_replay_drift_checks_total"),
              ElementsAre(R"(ess_replay_drift_checks_total{result="ok"} 7)",
                          R"(ess_replay_drift_checks_total{result="error"} 0)"));
}

// A count that fails keeps the last figures (a scrape still sees the drift), names the partner
// in its error, and is counted; the next check that works takes over.
TEST_F(DriftWatchTest, AFailedCountKeepsTheLastFiguresAndIsCounted) {
  Write(kStart, kOut, "prison", "m-1", "VIS-1", kDelivered);
  ASSERT_NO_FATAL_FAILURE(Watch());
  EXPECT_THAT(CheckAt(kStart + absl::Minutes(11)), HasSubstr("partner=prison unconfirmed=1 "));

  {
    // What a broken file looks like to the store: its table is gone.
    absl::StatusOr<sqlite::Database> db = sqlite::Database::Open(dir_.File("replay.db"));
    ASSERT_TRUE(db.ok()) << db.status();
    ASSERT_TRUE(db->Exec("ALTER TABLE records RENAME TO records_elsewhere").ok());
  }
  clock_.Set(kStart + absl::Minutes(12));
  absl::Status s = watch_->Check();
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("partner prison: "));
  EXPECT_THAT(s.message(), HasSubstr("records"));
  EXPECT_THAT(Samples(*watch_, "ess_replay_unconfirmed_deliveries"),
              ElementsAre(R"(ess_replay_unconfirmed_deliveries{partner="prison"} 1)",
                          R"(ess_replay_unconfirmed_deliveries{partner="clinic"} 0)"));
  EXPECT_THAT(Samples(*watch_, "ess_replay_drift_checks_total"),
              ElementsAre(R"(ess_replay_drift_checks_total{result="ok"} 2)",
                          R"(ess_replay_drift_checks_total{result="error"} 1)"));

  {
    absl::StatusOr<sqlite::Database> db = sqlite::Database::Open(dir_.File("replay.db"));
    ASSERT_TRUE(db.ok()) << db.status();
    ASSERT_TRUE(db->Exec("ALTER TABLE records_elsewhere RENAME TO records").ok());
  }
  Write(kStart + absl::Minutes(13), kIn, "prison", "wh-1", "VIS-1", kPublished);
  EXPECT_THAT(CheckAt(kStart + absl::Minutes(14)), HasSubstr("no unconfirmed deliveries"));
  EXPECT_THAT(Samples(*watch_, "ess_replay_unconfirmed_deliveries"),
              ElementsAre(R"(ess_replay_unconfirmed_deliveries{partner="prison"} 0)",
                          R"(ess_replay_unconfirmed_deliveries{partner="clinic"} 0)"));
}

// The thread checks at once and then every interval, until Stop.
TEST_F(DriftWatchTest, TheThreadChecksEveryIntervalUntilStopped) {
  Write(kStart, kOut, "prison", "m-1", "VIS-1", kDelivered);
  clock_.Set(kStart + absl::Hours(1));
  ::testing::internal::CaptureStderr();
  DriftWatch watch(*store_, {{"prison", absl::Minutes(10)}},
                   {.window = absl::Hours(24), .interval = absl::Milliseconds(10), .clock = [this] {
                      return clock_.Now();
                    }});
  WaitForChecks(watch, 3);
  watch.Stop();
  const std::string logged = ::testing::internal::GetCapturedStderr();
  const int checks = OkChecks(watch);
  EXPECT_GE(checks, 3);
  EXPECT_THAT(Samples(watch, "ess_replay_unconfirmed_deliveries"),
              ElementsAre(R"(ess_replay_unconfirmed_deliveries{partner="prison"} 1)"));
  // The count changed once: one warning, however many checks ran.
  EXPECT_EQ(
      std::vector<absl::string_view>(absl::StrSplit(logged, "deliveries not confirmed in time"))
          .size(),
      2u)
      << logged;
  // Stopped: no more checks.
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(OkChecks(watch), checks);
}

// Partners are watched when their outbound route says how soon they confirm.
TEST(DriftWatchConfigTest, WatchesThePartnersThatSayHowSoonTheyConfirm) {
  ess::v1::HubConfig config;
  config.mutable_replay()->mutable_drift()->set_check_interval_seconds(30);
  config.mutable_replay()->mutable_drift()->set_window_seconds(7200);
  auto* prison = config.add_partners();
  prison->set_name("prison");
  prison->mutable_outbound()->set_confirm_within_seconds(600);
  auto* courts = config.add_partners();
  courts->set_name("courts");
  courts->mutable_outbound();  // pushes, never confirms
  auto* clinic = config.add_partners();
  clinic->set_name("clinic");
  clinic->mutable_inbound();  // only calls in
  std::vector<DriftWatch::Partner> partners = DriftWatch::PartnersFromConfig(config);
  ASSERT_EQ(partners.size(), 1u);
  EXPECT_EQ(partners[0].name, "prison");
  EXPECT_EQ(partners[0].confirm_within, absl::Minutes(10));
  DriftWatch::Options options = DriftWatch::OptionsFromConfig(config);
  EXPECT_EQ(options.interval, absl::Seconds(30));
  EXPECT_EQ(options.window, absl::Hours(2));
}

}  // namespace
}  // namespace ess::replay
