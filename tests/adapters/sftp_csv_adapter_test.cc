// Unit tests of the sftp_csv adapter that need no server: settings, rendering, batching (in
// dry-run), file names and Pull. The uploads themselves are in sftp_csv_integration_test.cc.
#include "adapters/sftp_csv/sftp_csv_adapter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "adapters/registry.h"
#include "common/json.h"
#include "common/log.h"

namespace ess::adapters::sftp_csv {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

// Key and known_hosts files only have to be readable here: nothing connects.
class Files {
 public:
  Files() {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("sftp_csv_unit_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    std::ofstream(key()) << "not a real key\n";
    std::ofstream(known_hosts()) << "";
  }
  ~Files() { std::filesystem::remove_all(dir_); }
  std::string key() const { return (dir_ / "id").string(); }
  std::string known_hosts() const { return (dir_ / "known_hosts").string(); }

 private:
  std::filesystem::path dir_;
};

const Files& TestFiles() {
  static const Files* files = new Files();
  return *files;
}

ess::v1::SftpCsvAdapterConfig Settings() {
  ess::v1::SftpCsvAdapterConfig s;
  s.set_host("127.0.0.1");
  s.set_port(1);
  s.set_user("ess");
  s.set_private_key_file(TestFiles().key());
  s.set_known_hosts_file(TestFiles().known_hosts());
  s.set_remote_dir("/drop/");
  return s;
}

ess::v1::PartnerConfig Partner(const ess::v1::SftpCsvAdapterConfig& s = Settings()) {
  ess::v1::PartnerConfig p;
  p.set_name("prison");
  p.set_adapter("sftp_csv");
  p.mutable_settings()->PackFrom(s);
  for (const char* t : {"id", "inmate", "slot", "note"}) {
    auto* f = p.mutable_outbound()->add_mapping();
    f->set_target(t);
    f->set_source(t);
    if (std::string(t) == "note") f->set_required(false);
  }
  auto add_in = [&](const char* target, const char* source, const char* constant) {
    auto* f = p.mutable_inbound()->add_mapping();
    f->set_target(target);
    f->set_source(source);
    f->set_constant(constant);
  };
  add_in("type", "", "SlotConfirmed");
  add_in("id", "correlation_id", "");
  add_in("status", "status", "");
  auto* opt = p.mutable_inbound()->add_mapping();
  opt->set_target("note");
  opt->set_source("note");
  opt->set_default_value("none");
  return p;
}

std::unique_ptr<SftpCsvAdapter> Make(const ess::v1::PartnerConfig& p = Partner()) {
  auto a = SftpCsvAdapter::Create(p);
  EXPECT_TRUE(a.ok()) << a.status();
  return a.ok() ? *std::move(a) : nullptr;
}

// Mapped events that stay alive while the test pushes them.
struct Events {
  std::vector<std::unique_ptr<rapidjson::Document>> docs;
  std::vector<std::vector<MappedField>> fields;
  Mapper mapper;

  Events() : mapper(*Mapper::Compile(Partner().outbound().mapping())) {}
  const std::vector<MappedField>& Add(const std::string& json) {
    docs.push_back(std::make_unique<rapidjson::Document>());
    EXPECT_TRUE(json::Parse(json, *docs.back()).ok()) << json;
    fields.emplace_back();
    EXPECT_TRUE(mapper.Apply(*docs.back(), &fields.back()).ok());
    return fields.back();
  }
};

// Collects PushResults from any thread.
class Results {
 public:
  Adapter::PushDone Done(size_t i) {
    return [this, i](PushResult r) {
      absl::MutexLock lock(&mu_);
      got_.emplace_back(i, std::move(r));
    };
  }
  // Waits (at most 10 s) for `n` results; returns them in arrival order.
  std::vector<std::pair<size_t, PushResult>> Wait(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return got_.size() >= n; };
    mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
    return std::move(got_);
  }
  size_t Count() {
    absl::MutexLock lock(&mu_);
    return got_.size();
  }

 private:
  absl::Mutex mu_;
  std::vector<std::pair<size_t, PushResult>> got_ ABSL_GUARDED_BY(mu_);
};

TEST(SftpCsvAdapterTest, HeaderIsCorrelationColumnThenMappingTargets) {
  auto a = Make();
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->header(), "correlation_id,id,inmate,slot,note\r\n");
  auto s = Settings();
  s.set_correlation_column("ess_id");
  a = Make(Partner(s));
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->header(), "ess_id,id,inmate,slot,note\r\n");
}

TEST(SftpCsvAdapterTest, FileNamesAreDeterministicPerSetOfRows) {
  auto a = Make();
  ASSERT_NE(a, nullptr);
  const absl::Time t =
      absl::FromCivil(absl::CivilSecond(2026, 12, 1, 23, 59, 0), absl::UTCTimeZone());
  using R = SftpCsvAdapter::BatchRow;
  const std::vector<R> ab = {{"a", "x\r\n"}, {"b", "y\r\n"}};
  const std::vector<R> ba = {{"b", "y\r\n"}, {"a", "x\r\n"}};
  const std::vector<R> abc = {{"a", "x\r\n"}, {"b", "y\r\n"}, {"c", "z\r\n"}};
  EXPECT_EQ(SftpCsvAdapter::BatchId(ab), "3503d3b9821ea937");  // sha256("a\nx\r\nb\ny\r\n")
  EXPECT_EQ(a->FileName(ab, t), "prison_20261201_3503d3b9821ea937.csv");
  EXPECT_EQ(a->FileName(ba, t), a->FileName(ab, t));
  EXPECT_NE(a->FileName(abc, t), a->FileName(ab, t));
  // The same message ids with a row changed: another batch, another name. Before, the name
  // hashed the ids only, and the changed batch was taken as delivered without being uploaded.
  const std::vector<R> changed = {{"a", "x\r\n"}, {"b", "y, changed\r\n"}};
  EXPECT_NE(a->FileName(changed, t), a->FileName(ab, t));
  // The same rows under other ids, and a row moved between ids, are other batches too.
  EXPECT_NE(a->FileName(std::vector<R>{{"a", "y\r\n"}, {"b", "x\r\n"}}, t), a->FileName(ab, t));
  EXPECT_NE(a->FileName(std::vector<R>{{"c", "x\r\n"}, {"b", "y\r\n"}}, t), a->FileName(ab, t));
  auto s = Settings();
  s.set_file_name_pattern("ess-{batch}-{date}.txt");
  a = Make(Partner(s));
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->FileName(ab, t), "ess-3503d3b9821ea937-20261201.txt");
}

TEST(SftpCsvAdapterTest, FactoryRejectsBadSettings) {
  auto with = [](auto edit) {
    auto s = Settings();
    edit(s);
    auto a = BuiltinRegistry().Create(Partner(s), {});
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(a.status().message());
  };
  using S = ess::v1::SftpCsvAdapterConfig;
  EXPECT_EQ(with([](S& s) { s.set_host(""); }),
            "partners[prison].settings.host: must be a host name or address");
  EXPECT_EQ(with([](S& s) { s.set_user(""); }),
            "partners[prison].settings.user: must be a user name");
  EXPECT_EQ(with([](S& s) { s.set_remote_dir("drop"); }),
            "partners[prison].settings.remote_dir: must be an absolute path");
  EXPECT_EQ(with([](S& s) { s.set_private_key_file("/nonexistent/key"); }),
            "partners[prison].settings.private_key_file: cannot be read");
  EXPECT_EQ(with([](S& s) { s.set_known_hosts_file(""); }),
            "partners[prison].settings.known_hosts_file: is required");
  EXPECT_EQ(with([](S& s) { s.set_passphrase_env("ESS_TEST_SURELY_UNSET_VARIABLE"); }),
            "partners[prison].settings.passphrase_env: environment variable "
            "ESS_TEST_SURELY_UNSET_VARIABLE is not set");
  EXPECT_EQ(with([](S& s) { s.set_file_name_pattern("{partner}_{time}.csv"); }),
            "partners[prison].settings.file_name_pattern: placeholders are {partner}, {date} and "
            "{batch}");
  EXPECT_EQ(with([](S& s) { s.set_file_name_pattern("{partner}_{date}.csv"); }),
            "partners[prison].settings.file_name_pattern: needs {batch}: without it two batches "
            "of a day get one name, and the second is taken as delivered without being uploaded");
  EXPECT_THAT(with([](S& s) { s.set_file_name_pattern("out/{batch}.csv"); }),
              StartsWith("partners[prison].settings.file_name_pattern: gives \"out/"));
  EXPECT_THAT(with([](S& s) { s.set_file_name_pattern(".{batch}"); }),
              StartsWith("partners[prison].settings.file_name_pattern: gives \"."));
  EXPECT_EQ(with([](S& s) { s.set_correlation_column("inmate"); }),
            "partners[prison].settings.correlation_column: \"inmate\" is also a target of "
            "outbound.mapping");
}

TEST(SftpCsvAdapterTest, DryRunBatchClosesAtMaxRowsAndRendersTheExactRows) {
  log::Init("sftp_csv_test", log::Level::kInfo, {"inmate"});
  auto s = Settings();
  s.set_max_rows(3);
  s.set_max_age_ms(600000);  // only the row count can close it
  auto a = Make(Partner(s));
  ASSERT_NE(a, nullptr);
  Events ev;
  Results results;
  ::testing::internal::CaptureStderr();
  a->Push({.correlation_id = "VIS-1",
           .message_id = "m1",
           .fields = ev.Add(R"({"id":"VIS-1","inmate":"A123","slot":"2026-12-01T15:00:00Z"})"),
           .dry_run = true},
          results.Done(0));
  a->Push({.correlation_id = "VIS-2",
           .message_id = "m2",
           .fields = ev.Add(R"({"id":"VIS-2","inmate":"B, \"the\" 2nd","slot":"s",)"
                            R"("note":"two\r\nlines"})"),
           .dry_run = true},
          results.Done(1));
  EXPECT_EQ(results.Count(), 0u);  // the batch is not full yet
  a->Push({.correlation_id = "VIS-3",
           .message_id = "m3",
           .fields = ev.Add(R"({"id":"VIS-3","inmate":"Zoë","slot":"s","note":""})"),
           .dry_run = true},
          results.Done(2));
  auto got = results.Wait(3);
  std::string logged = ::testing::internal::GetCapturedStderr();
  log::Init("sftp_csv_test");
  ASSERT_EQ(got.size(), 3u);
  const std::string rows[] = {
      "VIS-1,VIS-1,A123,2026-12-01T15:00:00Z,\r\n",
      "VIS-2,VIS-2,\"B, \"\"the\"\" 2nd\",s,\"two\r\nlines\"\r\n",
      "VIS-3,VIS-3,Zoë,s,\r\n",
  };
  const std::vector<SftpCsvAdapter::BatchRow> batch = {
      {"m1", rows[0]}, {"m2", rows[1]}, {"m3", rows[2]}};
  const std::string name = a->FileName(batch, absl::Now());
  for (auto& [i, r] : got) {
    EXPECT_TRUE(r.status.ok()) << r.status;
    EXPECT_TRUE(r.dry_run);
    EXPECT_EQ(r.rendered, a->header() + rows[i]);
    EXPECT_EQ(r.detail, "dry-run: would upload /drop/" + name + " (3 rows)");
  }
  EXPECT_THAT(logged, HasSubstr("dry-run: CSV file not uploaded"));
  EXPECT_THAT(logged, HasSubstr("VIS-1,VIS-1,***,2026-12-01T15:00:00Z,"));
  EXPECT_THAT(logged, Not(HasSubstr("A123")));
  EXPECT_THAT(logged, Not(HasSubstr("Zoë")));
}

// A redelivery of an event whose row is waiting (the broker redelivers after a connection
// drop while the batch is open) adds no second row: both deliveries are done once, with the
// first row's outcome. Before, the file held the row twice and "delivered" was logged twice.
TEST(SftpCsvAdapterTest, ARedeliveredEventWaitingInABatchIsNotAddedTwice) {
  log::Init("sftp_csv_test", log::Level::kInfo, {"inmate"});
  auto s = Settings();
  s.set_max_rows(3);
  s.set_max_age_ms(600000);  // only the row count can close it
  auto a = Make(Partner(s));
  ASSERT_NE(a, nullptr);
  Events ev;
  Results results;
  const auto& visit = ev.Add(R"({"id":"VIS-1","inmate":"A123","slot":"s"})");
  ::testing::internal::CaptureStderr();
  a->Push({.correlation_id = "VIS-1", .message_id = "m1", .fields = visit, .dry_run = true},
          results.Done(0));
  a->Push({.correlation_id = "VIS-1", .message_id = "m1", .fields = visit, .dry_run = true},
          results.Done(1));  // the redelivery
  // Changed under the same message id: another row (its own file name, see FileName).
  a->Push({.correlation_id = "VIS-1",
           .message_id = "m1",
           .fields = ev.Add(R"({"id":"VIS-1","inmate":"A123","slot":"changed"})"),
           .dry_run = true},
          results.Done(2));
  EXPECT_EQ(results.Count(), 0u);  // two rows: the batch is not full yet
  a->Push({.correlation_id = "VIS-2",
           .message_id = "m2",
           .fields = ev.Add(R"({"id":"VIS-2","inmate":"B","slot":"s"})"),
           .dry_run = true},
          results.Done(3));
  auto got = results.Wait(4);
  a->Stop();
  std::string logged = ::testing::internal::GetCapturedStderr();
  log::Init("sftp_csv_test");
  ASSERT_EQ(got.size(), 4u);
  std::vector<size_t> done;
  for (auto& [i, r] : got) {
    done.push_back(i);
    EXPECT_TRUE(r.status.ok()) << r.status;
    EXPECT_THAT(r.detail, HasSubstr("(3 rows)"));
  }
  std::sort(done.begin(), done.end());
  EXPECT_THAT(done, ElementsAre(0, 1, 2, 3));  // each delivery done, once
  EXPECT_EQ(got[0].second.rendered, got[1].second.rendered);
  EXPECT_EQ(results.Count(), 0u);
  EXPECT_THAT(logged, HasSubstr("CSV row already waiting; not added again"));
  const size_t at = logged.find("VIS-1,VIS-1,***,s,");
  ASSERT_NE(at, std::string::npos) << logged;
  EXPECT_EQ(logged.find("VIS-1,VIS-1,***,s,", at + 1), std::string::npos) << logged;
}

// The dry-run log masks a column by its source too: `offender <- inmateId` (pii_fields
// [inmateId]) and `note <- visitor.name` (pii_fields [visitor]). Before, only the column (the
// target) was checked, and the log carried both values.
TEST(SftpCsvAdapterTest, DryRunMasksAColumnRenamedFromAPersonalSource) {
  log::Init("sftp_csv_test", log::Level::kInfo, {"inmateId", "visitor"});
  auto s = Settings();
  s.set_max_rows(1);
  auto p = Partner(s);
  p.mutable_outbound()->mutable_mapping(1)->set_target("offender");
  p.mutable_outbound()->mutable_mapping(1)->set_source("inmateId");
  p.mutable_outbound()->mutable_mapping(3)->set_source("visitor.name");
  auto a = Make(p);
  ASSERT_NE(a, nullptr);
  rapidjson::Document doc;
  ASSERT_TRUE(json::Parse(R"({"id":"VIS-1","inmateId":"A123","slot":"s",)"
                          R"("visitor":{"name":"Jane Roe"}})",
                          doc)
                  .ok());
  Mapper m = *Mapper::Compile(p.outbound().mapping());
  std::vector<MappedField> fields;
  ASSERT_TRUE(m.Apply(doc, &fields).ok());
  Results results;
  ::testing::internal::CaptureStderr();
  a->Push({.correlation_id = "VIS-1", .message_id = "m1", .fields = fields, .dry_run = true},
          results.Done(0));
  auto got = results.Wait(1);
  a->Stop();
  std::string logged = ::testing::internal::GetCapturedStderr();
  log::Init("sftp_csv_test");
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(got[0].second.status.ok()) << got[0].second.status;
  EXPECT_EQ(got[0].second.rendered,
            "correlation_id,id,offender,slot,note\r\nVIS-1,VIS-1,A123,s,Jane Roe\r\n");
  EXPECT_THAT(logged, HasSubstr("VIS-1,VIS-1,***,s,***"));
  EXPECT_THAT(logged, Not(HasSubstr("A123")));
  EXPECT_THAT(logged, Not(HasSubstr("Jane Roe")));
}

TEST(SftpCsvAdapterTest, DryRunBatchClosesAtMaxAge) {
  auto s = Settings();
  s.set_max_rows(100);
  s.set_max_age_ms(50);
  auto a = Make(Partner(s));
  ASSERT_NE(a, nullptr);
  Events ev;
  Results results;
  for (int i = 0; i < 2; ++i) {
    std::string id = "VIS-" + std::to_string(i);
    a->Push({.correlation_id = id,
             .fields = ev.Add(R"({"id":")" + id + R"(","inmate":"A","slot":"s"})"),
             .dry_run = true},
            results.Done(i));
  }
  auto got = results.Wait(2);
  ASSERT_EQ(got.size(), 2u);
  for (auto& [i, r] : got) {
    EXPECT_TRUE(r.status.ok());
    EXPECT_THAT(r.detail, HasSubstr("(2 rows)"));
  }
}

TEST(SftpCsvAdapterTest, StoppingCompletesUnsentEventsAsRetryable) {
  auto s = Settings();
  s.set_max_age_ms(600000);
  auto a = Make(Partner(s));
  ASSERT_NE(a, nullptr);
  Events ev;
  Results results;
  a->Push(
      {.correlation_id = "VIS-1", .fields = ev.Add(R"({"id":"VIS-1","inmate":"A","slot":"s"})")},
      results.Done(0));
  a->Stop();  // nothing was uploaded: no connection was ever attempted
  auto got = results.Wait(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].second.status,
            absl::UnavailableError("sftp_csv adapter of \"prison\" stopped before the upload"));
  // Stopped, it takes nothing more; stopping again (and destroying it) changes nothing.
  a->Push(
      {.correlation_id = "VIS-2", .fields = ev.Add(R"({"id":"VIS-2","inmate":"A","slot":"s"})")},
      results.Done(1));
  got = results.Wait(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].first, 1u);
  EXPECT_EQ(got[0].second.status.code(), absl::StatusCode::kUnavailable);
  a->Stop();
  a.reset();
  EXPECT_EQ(results.Count(), 0u);
}

TEST(SftpCsvAdapterTest, PushWithoutOutboundMappingFails) {
  auto p = Partner();
  p.clear_outbound();
  auto a = Make(p);
  ASSERT_NE(a, nullptr);
  std::promise<PushResult> done;
  a->Push({.correlation_id = "VIS-1"}, [&](PushResult r) { done.set_value(std::move(r)); });
  EXPECT_EQ(done.get_future().get().status.code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SftpCsvAdapterTest, PullMapsEveryGoodRowAndReportsTheBadOnesWithLines) {
  auto a = Make();
  ASSERT_NE(a, nullptr);
  std::vector<PullError> errors;
  auto events = a->Pull({.body = "correlation_id,status,note\r\n"               // line 1
                                 "VIS-1,confirmed,\"bring ID, please\"\r\n"     // 2
                                 "VIS-2,bad\"quote,x\r\n"                       // 3: quoting
                                 "VIS-3,confirmed\r\n"                          // 4: 2 fields
                                 "VIS-4,,x\r\n"                                 // 5: status empty
                                 "VIS-5,\"multi\r\nline\",\r\n"                 // 6-7
                                 ",confirmed,x\r\n"                             // 8: no id
                                 "VIS-6,cancelled,Zoë 🙂\r\n"                // 9
                                 "VIS-7,confirmed,caf\xe9\r\n"                  // 10: Latin-1
                                 + std::string(300, 'L') + ",confirmed,x\r\n",  // 11: id too long
                         .errors = &errors});
  ASSERT_TRUE(events.ok()) << events.status();
  std::vector<std::string> bodies;
  for (const InboundEvent& e : *events) {
    bodies.push_back(e.body);
    EXPECT_EQ(e.event_type, "SlotConfirmed");
  }
  EXPECT_THAT(bodies,
              ElementsAre(R"({"type":"SlotConfirmed","id":"VIS-1","status":"confirmed",)"
                          R"("note":"bring ID, please"})",
                          R"({"type":"SlotConfirmed","id":"VIS-5","status":"multi\r\nline",)"
                          R"("note":"none"})",
                          R"({"type":"SlotConfirmed","id":"VIS-6","status":"cancelled",)"
                          R"("note":"Zoë 🙂"})"));
  EXPECT_EQ((*events)[0].correlation_id, "VIS-1");
  EXPECT_THAT(
      errors,
      ElementsAre(
          AllOf(Field(&PullError::line, 3),
                Field(&PullError::message, "malformed quoting at line 3, column 10")),
          AllOf(Field(&PullError::line, 4),
                Field(&PullError::message, "2 fields, the header has 3")),
          AllOf(Field(&PullError::line, 5),
                Field(&PullError::message, "missing required field \"status\" (for \"status\")")),
          AllOf(
              Field(&PullError::line, 8),
              Field(&PullError::message, "missing required field \"correlation_id\" (for \"id\")")),
          AllOf(Field(&PullError::line, 10),
                Field(&PullError::message, "column \"note\" is not UTF-8 (byte 4 of the cell)")),
          AllOf(Field(&PullError::line, 11),
                Field(&PullError::message, "the mapped event's \"id\": 300 bytes; at most 255"))));
}

TEST(SftpCsvAdapterTest, PullRejectsAnUnusableHeaderAndAcceptsAnEmptyFile) {
  auto a = Make();
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->Pull({.body = "correlation_id,,note\r\nx,y,z\r\n"}).status(),
            absl::InvalidArgumentError("line 1: the header has an empty column name"));
  EXPECT_EQ(a->Pull({.body = "a,b,a\r\n"}).status(),
            absl::InvalidArgumentError("line 1: the header's column 3 repeats column 1"));
  EXPECT_EQ(a->Pull({.body = "correlation_id,st\xe4tus\r\nVIS-1,ok\r\n"}).status(),
            absl::InvalidArgumentError("line 1: the header's column 2 is not UTF-8 (byte 3)"));
  EXPECT_EQ(a->Pull({.body = "\r\na,\"b\r\n"}).status(),
            absl::InvalidArgumentError(
                "line 2: malformed header: quoted field not closed before the end of the file"));
  auto empty = a->Pull({.body = ""});
  ASSERT_TRUE(empty.ok());
  EXPECT_THAT(*empty, IsEmpty());
  // Errors are logged when the caller does not collect them.
  auto logged = a->Pull({.body = "correlation_id,status\r\nVIS-1\r\nVIS-2,ok\r\n"});
  ASSERT_TRUE(logged.ok());
  EXPECT_EQ(logged->size(), 1u);
  auto p = Partner();
  p.clear_inbound();
  EXPECT_EQ(Make(p)->Pull({.body = "a\r\n"}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace ess::adapters::sftp_csv
