// The sftp_csv adapter against a real OpenSSH server (scripts/sshd.sh). Needs ESS_SFTP_HOST,
// ESS_SFTP_PORT, ESS_SFTP_USER, ESS_SFTP_KEY, ESS_SFTP_PUBKEY, ESS_SFTP_KNOWN_HOSTS and
// ESS_SFTP_ROOT (source the env file sshd.sh writes); fails when they are missing.
//
// The server runs on this machine, so the tests read what arrived straight from ESS_SFTP_ROOT.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "adapters/sftp_csv/sftp_client.h"
#include "adapters/sftp_csv/sftp_csv_adapter.h"
#include "common/json.h"

namespace ess::adapters::sftp_csv {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

struct Env {
  std::string host, user, key, pubkey, known_hosts, root;
  uint32_t port = 0;
};

// Reads ESS_SFTP_*; the names of the missing ones in `missing`.
Env ReadEnv(std::string* missing) {
  auto get = [&](const char* name) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') absl::StrAppend(missing, " ", name);
    return std::string(v ? v : "");
  };
  Env e;
  e.host = get("ESS_SFTP_HOST");
  e.port = static_cast<uint32_t>(std::atoi(get("ESS_SFTP_PORT").c_str()));
  e.user = get("ESS_SFTP_USER");
  e.key = get("ESS_SFTP_KEY");
  e.pubkey = get("ESS_SFTP_PUBKEY");
  e.known_hosts = get("ESS_SFTP_KNOWN_HOSTS");
  e.root = get("ESS_SFTP_ROOT");
  return e;
}

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A loopback port on which nothing listens.
uint32_t ClosedPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  close(fd);
  return ntohs(addr.sin_port);
}

// Collects PushResults from the adapter's thread.
class Results {
 public:
  Adapter::PushDone Done(size_t i) {
    return [this, i](PushResult r) {
      absl::MutexLock lock(&mu_);
      got_.emplace_back(i, std::move(r));
    };
  }
  // Waits (at most 60 s) for `n` results.
  std::vector<std::pair<size_t, PushResult>> Wait(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return got_.size() >= n; };
    mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(60));
    return std::move(got_);
  }

 private:
  absl::Mutex mu_;
  std::vector<std::pair<size_t, PushResult>> got_ ABSL_GUARDED_BY(mu_);
};

ess::v1::PartnerConfig Partner(const ess::v1::SftpCsvAdapterConfig& s) {
  ess::v1::PartnerConfig p;
  p.set_name("prison");
  p.set_adapter("sftp_csv");
  p.mutable_settings()->PackFrom(s);
  for (const char* t : {"id", "inmate", "slot", "note"}) {
    auto* f = p.mutable_outbound()->add_mapping();
    f->set_target(t);
    f->set_source(t);
  }
  // Inbound: the files we write, read back as events.
  auto add_in = [&](const char* target, const char* source, const char* constant) {
    auto* f = p.mutable_inbound()->add_mapping();
    f->set_target(target);
    f->set_source(source);
    f->set_constant(constant);
  };
  add_in("type", "", "VisitRow");
  add_in("id", "correlation_id", "");
  add_in("inmate", "inmate", "");
  add_in("slot", "slot", "");
  add_in("note", "note", "");
  return p;
}

class SftpCsvIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string missing;
    env_ = ReadEnv(&missing);
    ASSERT_TRUE(missing.empty()) << "missing environment:" << missing
                                 << " (scripts/sshd.sh start DIR; source DIR/env)";
    // A folder of its own per test, inside the server's upload root.
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(env_.root) / absl::StrCat("it_", getpid(), "_", info->name());
    // Local files of the test (bad known_hosts), kept out of the folder the uploads go to.
    scratch_ = fs::path(env_.root) / absl::StrCat("it_", getpid(), "_", info->name(), ".local");
    for (const fs::path& d : {dir_, scratch_}) {
      fs::remove_all(d);
      fs::create_directories(d);
    }
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
    if (!scratch_.empty()) fs::remove_all(scratch_);
  }

  ess::v1::SftpCsvAdapterConfig Settings() const {
    ess::v1::SftpCsvAdapterConfig s;
    s.set_host(env_.host);
    s.set_port(env_.port);
    s.set_user(env_.user);
    s.set_private_key_file(env_.key);
    s.set_public_key_file(env_.pubkey);
    s.set_known_hosts_file(env_.known_hosts);
    s.set_remote_dir(dir_.string());
    s.set_max_rows(500);
    s.set_max_age_ms(600000);  // batches close by row count only, so the file count is exact
    s.set_timeout_ms(20000);
    return s;
  }

  std::unique_ptr<SftpCsvAdapter> Make(const ess::v1::SftpCsvAdapterConfig& s) {
    auto a = SftpCsvAdapter::Create(Partner(s));
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() ? *std::move(a) : nullptr;
  }

  // The files in `dir`, by name.
  static std::vector<std::string> Files(const fs::path& dir) {
    std::vector<std::string> names;
    if (!fs::exists(dir)) return names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  Env env_;
  fs::path dir_;
  fs::path scratch_;
};

// Events with awkward values: commas, quotes, line breaks, non-ASCII.
struct Visits {
  std::vector<std::unique_ptr<rapidjson::Document>> docs;
  std::vector<std::vector<MappedField>> fields;
  std::vector<std::string> ids;
  std::map<std::string, std::string> expected;  // id -> the event Pull must give back
  Mapper mapper;

  explicit Visits(int n, const std::string& prefix = "VIS-")
      : mapper(*Mapper::Compile(Partner({}).outbound().mapping())) {
    for (int i = 0; i < n; ++i) {
      std::string id = absl::StrCat(prefix, i);
      std::string note = i % 3 == 0   ? absl::StrCat("bring ID, \"gate ", i, "\"")
                         : i % 3 == 1 ? "two\r\nlines"
                                      : "Zoë 名前 🙂";
      rapidjson::Document d(rapidjson::kObjectType);
      auto& al = d.GetAllocator();
      d.AddMember("id", rapidjson::Value(id.c_str(), al), al);
      d.AddMember("inmate", rapidjson::Value(absl::StrCat("A", 1000 + i).c_str(), al), al);
      d.AddMember("slot", "2026-12-01T15:00:00Z", al);
      d.AddMember("note", rapidjson::Value(note.c_str(), al), al);
      docs.push_back(std::make_unique<rapidjson::Document>(std::move(d)));
      fields.emplace_back();
      EXPECT_TRUE(mapper.Apply(*docs.back(), &fields.back()).ok());
      ids.push_back(id);
      rapidjson::Document e(rapidjson::kObjectType);
      auto& ea = e.GetAllocator();
      e.AddMember("type", "VisitRow", ea);
      e.AddMember("id", rapidjson::Value(id.c_str(), ea), ea);
      e.AddMember("inmate", rapidjson::Value(absl::StrCat("A", 1000 + i).c_str(), ea), ea);
      e.AddMember("slot", "2026-12-01T15:00:00Z", ea);
      e.AddMember("note", rapidjson::Value(note.c_str(), ea), ea);
      expected[id] = json::Serialize(e);
    }
  }

  // `note_of(i)`, when given, is the SendNote of event i.
  void Push(Adapter& a, Results& results, int from, int to,
            const std::function<SendNote*(int)>& note_of = {}) const {
    for (int i = from; i < to; ++i) {
      a.Push({.correlation_id = ids[i],
              .message_id = ids[i],
              .fields = fields[i],
              .note = note_of ? note_of(i) : nullptr},
             results.Done(i));
    }
  }
};

TEST_F(SftpCsvIntegrationTest, ThousandEventsBecomeTwoCompleteFilesAndARepeatAddsNone) {
  auto a = Make(Settings());
  ASSERT_NE(a, nullptr);
  Visits visits(1000);
  Results results;
  visits.Push(*a, results, 0, 1000);
  auto got = results.Wait(1000);
  ASSERT_EQ(got.size(), 1000u);
  for (auto& [i, r] : got) {
    ASSERT_TRUE(r.status.ok()) << i << ": " << r.status;
    EXPECT_THAT(r.detail, StartsWith("uploaded " + dir_.string() + "/prison_"));
    EXPECT_THAT(r.detail, HasSubstr("(500 rows)"));
  }

  // Exactly two files, no part file left, every row back as it went out.
  std::vector<std::string> files = Files(dir_);
  ASSERT_EQ(files.size(), 2u) << ::testing::PrintToString(files);
  std::map<std::string, std::string> seen;
  for (const std::string& name : files) {
    EXPECT_THAT(name, StartsWith("prison_"));
    EXPECT_TRUE(absl::EndsWith(name, ".csv")) << name;
    const std::string content = ReadFile(dir_ / name);
    EXPECT_THAT(content, StartsWith("correlation_id,id,inmate,slot,note\r\n"));
    std::vector<PullError> errors;
    auto events = a->Pull({.body = content, .errors = &errors});
    ASSERT_TRUE(events.ok()) << events.status();
    EXPECT_THAT(errors, IsEmpty());
    EXPECT_EQ(events->size(), 500u);
    for (const InboundEvent& e : *events) {
      EXPECT_TRUE(seen.emplace(e.correlation_id, e.body).second) << "twice: " << e.correlation_id;
    }
  }
  EXPECT_EQ(seen, visits.expected);
  // The first batch (events 0..499) is the file named after their ids and rows.
  std::vector<SftpCsvAdapter::BatchRow> first;
  for (const auto& [i, r] : got) {
    if (i < 500) {
      first.push_back({.message_id = visits.ids[i],
                       .line = std::string_view(r.rendered).substr(a->header().size())});
    }
  }
  ASSERT_EQ(first.size(), 500u);
  const std::string first_name = a->FileName(first, absl::Now());
  EXPECT_TRUE(fs::exists(dir_ / first_name)) << first_name;
  const auto first_mtime = fs::last_write_time(dir_ / first_name);

  // The same 500 events again (a redelivery after a crash): delivered, no second file.
  Results again;
  visits.Push(*a, again, 0, 500);
  auto repeat = again.Wait(500);
  ASSERT_EQ(repeat.size(), 500u);
  for (auto& [i, r] : repeat) {
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.detail, "already delivered as " + (dir_ / first_name).string());
  }
  EXPECT_EQ(Files(dir_), files);
  EXPECT_EQ(fs::last_write_time(dir_ / first_name), first_mtime);
}

// An event changed under the same message id (a publisher reusing it, or `essctl replay` of a
// changed record) is another batch: it is uploaded in a file of its own, and each file holds its
// row as it was sent. Before, the file name hashed the message ids only: the changed event was
// taken as "already delivered" and the partner kept the old row.
TEST_F(SftpCsvIntegrationTest, AChangedEventUnderTheSameMessageIdIsUploadedAgain) {
  auto s = Settings();
  s.set_max_rows(1);
  auto a = Make(s);
  ASSERT_NE(a, nullptr);
  Mapper mapper = *Mapper::Compile(Partner(s).outbound().mapping());
  std::vector<std::string> files_seen;
  std::vector<std::string> rows;
  for (const char* note : {"slot 10:00", "CHANGED to 14:00", "slot 10:00"}) {
    rapidjson::Document d;
    ASSERT_TRUE(
        json::Parse(
            absl::StrCat(R"({"id":"VIS-9","inmate":"A1","slot":"s","note":")", note, R"("})"), d)
            .ok());
    std::vector<MappedField> fields;
    ASSERT_TRUE(mapper.Apply(d, &fields).ok());
    Results results;
    a->Push({.correlation_id = "VIS-9", .message_id = "UPD-1", .fields = fields}, results.Done(0));
    auto got = results.Wait(1);
    ASSERT_EQ(got.size(), 1u);
    ASSERT_TRUE(got[0].second.status.ok()) << got[0].second.status;
    rows.push_back(absl::StrCat("VIS-9,VIS-9,A1,s,", note, "\r\n"));
    EXPECT_EQ(got[0].second.rendered, a->header() + rows.back());
    files_seen.push_back(got[0].second.detail);
  }
  EXPECT_THAT(files_seen[0], StartsWith("uploaded "));
  EXPECT_THAT(files_seen[1], StartsWith("uploaded "));  // not "already delivered as ..."
  // The first content again is the first file: delivered, not uploaded a second time.
  EXPECT_THAT(files_seen[2], StartsWith("already delivered as "));
  const std::vector<std::string> files = Files(dir_);
  ASSERT_EQ(files.size(), 2u) << ::testing::PrintToString(files);
  std::vector<std::string> contents;
  for (const std::string& name : files) contents.push_back(ReadFile(dir_ / name));
  std::sort(contents.begin(), contents.end());
  EXPECT_EQ(contents, (std::vector<std::string>{a->header() + rows[1], a->header() + rows[0]}));
}

TEST_F(SftpCsvIntegrationTest, ClientNeverOverwritesAndLeavesNoPartFile) {
  SftpClient client({.host = env_.host,
                     .port = env_.port,
                     .user = env_.user,
                     .private_key_file = env_.key,
                     .known_hosts_file = env_.known_hosts,  // public key derived by libssh2
                     .timeout = absl::Seconds(20)});
  const std::string dir = dir_.string();
  auto there = client.Exists(dir + "/x.csv");
  ASSERT_TRUE(there.ok()) << there.status();
  EXPECT_FALSE(*there);
  ASSERT_TRUE(client.UploadAtomically(dir, "x.csv", "a,b\r\n").ok());
  there = client.Exists(dir + "/x.csv");
  ASSERT_TRUE(there.ok());
  EXPECT_TRUE(*there);
  EXPECT_EQ(client.UploadAtomically(dir, "x.csv", "other\r\n"),
            absl::AlreadyExistsError(dir + "/x.csv already exists"));
  EXPECT_EQ(ReadFile(dir_ / "x.csv"), "a,b\r\n");
  EXPECT_EQ(Files(dir_), std::vector<std::string>{"x.csv"});
  // A name with a space and a quote travels through URL and rename command intact.
  ASSERT_TRUE(client.UploadAtomically(dir, "we \"q\".csv", "1\r\n").ok());
  EXPECT_EQ(ReadFile(dir_ / "we \"q\".csv"), "1\r\n");
}

TEST_F(SftpCsvIntegrationTest, UnknownHostKeyIsRejectedForEveryEvent) {
  const fs::path empty = scratch_ / "known_hosts_empty";
  std::ofstream(empty) << "";
  auto s = Settings();
  s.set_known_hosts_file(empty.string());
  s.set_max_rows(3);
  auto a = Make(s);
  ASSERT_NE(a, nullptr);
  Visits visits(3);
  Results results;
  visits.Push(*a, results, 0, 3);
  auto got = results.Wait(3);
  ASSERT_EQ(got.size(), 3u);
  for (auto& [i, r] : got) {
    EXPECT_EQ(r.status.code(), absl::StatusCode::kPermissionDenied) << r.status;
    EXPECT_THAT(std::string(r.status.message()), HasSubstr("host key not in"));
  }
  EXPECT_THAT(Files(dir_), IsEmpty());
}

TEST_F(SftpCsvIntegrationTest, MismatchedHostKeyIsRejectedForEveryEvent) {
  const fs::path wrong = scratch_ / "known_hosts_wrong";
  std::ofstream(wrong) << "[" << env_.host << "]:" << env_.port
                       << " ssh-ed25519 "
                          "AAAAC3NzaC1lZDI1NTE5AAAAIOxg3qlPLIsS5WdsuO1zAmhtBTalmDwYsKN/0gyk+MSM\n";
  auto s = Settings();
  s.set_known_hosts_file(wrong.string());
  s.set_max_rows(2);
  auto a = Make(s);
  ASSERT_NE(a, nullptr);
  Visits visits(2);
  Results results;
  visits.Push(*a, results, 0, 2);
  auto got = results.Wait(2);
  ASSERT_EQ(got.size(), 2u);
  for (auto& [i, r] : got) {
    EXPECT_EQ(r.status.code(), absl::StatusCode::kPermissionDenied) << r.status;
    EXPECT_THAT(std::string(r.status.message()), HasSubstr("host key does not match"));
  }
  EXPECT_THAT(Files(dir_), IsEmpty());
}

TEST_F(SftpCsvIntegrationTest, MissingRemoteFolderFailsEveryEventAndLeavesNoFile) {
  auto s = Settings();
  s.set_remote_dir((dir_ / "missing").string());
  s.set_max_rows(4);
  auto a = Make(s);
  ASSERT_NE(a, nullptr);
  Visits visits(4);
  Results results;
  visits.Push(*a, results, 0, 4);
  auto got = results.Wait(4);
  ASSERT_EQ(got.size(), 4u);
  for (auto& [i, r] : got) {
    EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
    EXPECT_FALSE(r.detail.empty());
  }
  EXPECT_THAT(Files(dir_), IsEmpty());
}

// The lane's side of SendNote, as the adapter sees it: each note's place, whether a file was
// there already when it came, and the store's answer (given at once).
class NoteTaker final : public SendNote {
 public:
  explicit NoteTaker(absl::Status answer) : answer_(std::move(answer)) {}
  void BeforeSend(std::string where, absl::AnyInvocable<void(absl::Status) &&> done) override {
    {
      absl::MutexLock lock(&mu_);
      there_before_.push_back(fs::exists(where));
      wheres_.push_back(std::move(where));
    }
    std::move(done)(answer_);
  }
  std::vector<std::string> wheres() {
    absl::MutexLock lock(&mu_);
    return wheres_;
  }
  std::vector<bool> there_before() {
    absl::MutexLock lock(&mu_);
    return there_before_;
  }

 private:
  const absl::Status answer_;
  absl::Mutex mu_;
  std::vector<std::string> wheres_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> there_before_ ABSL_GUARDED_BY(mu_);
};

// Before it uploads a batch, the adapter tells each row's note where its file goes, and uploads
// only once every note is stored. One note the store did not take keeps the whole batch back:
// every row fails retryably, and nothing is made on the server. Once the notes are taken, the
// same rows go out in the file their notes named.
TEST_F(SftpCsvIntegrationTest, ABatchIsUploadedOnlyOnceEveryRowsNoteIsStored) {
  auto s = Settings();
  s.set_max_rows(3);
  auto a = Make(s);
  ASSERT_NE(a, nullptr);
  Visits visits(3);
  NoteTaker taken(absl::OkStatus()), refused(absl::UnavailableError("replay store down"));
  Results results;
  visits.Push(*a, results, 0, 3, [&](int i) -> SendNote* { return i == 1 ? &refused : &taken; });
  auto got = results.Wait(3);
  ASSERT_EQ(got.size(), 3u);
  for (auto& [i, r] : got) {
    EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
    EXPECT_THAT(std::string(r.status.message()),
                HasSubstr("the replay store did not take the note of the upload of " +
                          dir_.string() + "/prison_"));
    EXPECT_THAT(std::string(r.status.message()), HasSubstr("not uploaded: replay store down"));
    EXPECT_EQ(r.maybe_delivered_as, "") << i;  // nothing was sent: nowhere to look
  }
  EXPECT_THAT(Files(dir_), IsEmpty());
  ASSERT_EQ(refused.wheres().size(), 1u);
  ASSERT_EQ(taken.wheres().size(), 2u);

  NoteTaker all(absl::OkStatus());
  Results again;
  visits.Push(*a, again, 0, 3, [&](int) -> SendNote* { return &all; });
  got = again.Wait(3);
  ASSERT_EQ(got.size(), 3u);
  for (auto& [i, r] : got) EXPECT_TRUE(r.status.ok()) << i << ": " << r.status;
  const std::vector<std::string> files = Files(dir_);
  ASSERT_EQ(files.size(), 1u);
  const std::string path = (dir_ / files[0]).string();
  EXPECT_EQ(all.wheres(), std::vector<std::string>(3, path));
  EXPECT_EQ(all.there_before(), std::vector<bool>(3, false));
  EXPECT_EQ(refused.wheres()[0], path);  // the same rows: the same name
}

TEST_F(SftpCsvIntegrationTest, ServerDownFailsEveryEventAsRetryable) {
  auto s = Settings();
  s.set_port(ClosedPort());
  s.set_max_rows(3);
  auto a = Make(s);
  ASSERT_NE(a, nullptr);
  Visits visits(3);
  Results results;
  visits.Push(*a, results, 0, 3);
  auto got = results.Wait(3);
  ASSERT_EQ(got.size(), 3u);
  for (auto& [i, r] : got) {
    EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
  }
  EXPECT_THAT(Files(dir_), IsEmpty());
}

}  // namespace
}  // namespace ess::adapters::sftp_csv
