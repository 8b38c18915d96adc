// Who may call what on ReplayService: the Authorizer alone (tokens from the environment, the
// role table), then a real in-process server that enforces it on every method.
#include "replay_svc/authorizer.h"

#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/synchronization/notification.h"
#include "common/replay_client.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "replay_svc/replay_server.h"
#include "replay_svc/sqlite_replay_store.h"
#include "tests/replay_svc/test_util.h"

namespace ess::replay {
namespace {

using ::ess::replay::testing::Key;
using ::ess::replay::testing::Outbound;
using ::ess::replay::testing::TempDir;
using ::testing::HasSubstr;
using Method = Authorizer::Method;
using Role = Authorizer::Role;

constexpr char kLaneToken[] = "lane-token-0123456789abcdef";
constexpr char kViewerToken[] = "viewer-token-0123456789abcdef";
constexpr char kOpsToken[] = "ops-token-0123456789abcdef";

ess::v1::ReplayAuth ThreeCallers() {
  setenv("ESS_TEST_LANE_TOKEN", kLaneToken, 1);
  setenv("ESS_TEST_VIEWER_TOKEN", kViewerToken, 1);
  setenv("ESS_TEST_OPS_TOKEN", kOpsToken, 1);
  ess::v1::ReplayAuth auth;
  for (auto [name, role, env] : {std::tuple{"lanes", "lane", "ESS_TEST_LANE_TOKEN"},
                                 std::tuple{"dashboard", "viewer", "ESS_TEST_VIEWER_TOKEN"},
                                 std::tuple{"oncall", "ops", "ESS_TEST_OPS_TOKEN"}}) {
    ess::v1::ReplayCaller* c = auth.add_callers();
    c->set_name(name);
    c->set_role(role);
    c->set_token_env(env);
  }
  return auth;
}

std::string Bearer(const std::string& token) { return "Bearer " + token; }

TEST(AuthorizerTest, EachRoleMayCallItsMethodsOnly) {
  const std::vector<Method> all = {Method::kRecord, Method::kUpdateStatus, Method::kGet,
                                   Method::kLookup, Method::kClaim,        Method::kList,
                                   Method::kStats,  Method::kReplay};
  auto allowed = [&](Role role) {
    std::vector<std::string> names;
    for (Method m : all) {
      if (Authorizer::Allows(role, m)) names.push_back(Authorizer::MethodName(m));
    }
    return names;
  };
  EXPECT_THAT(allowed(Role::kLane), ::testing::ElementsAre("Record", "Get", "Lookup", "Claim"));
  EXPECT_THAT(allowed(Role::kViewer), ::testing::ElementsAre("Get", "Lookup", "List", "Stats"));
  EXPECT_THAT(allowed(Role::kOps),
              ::testing::ElementsAre("UpdateStatus", "Get", "Lookup", "List", "Stats", "Replay"));
}

TEST(AuthorizerTest, ChecksTheTokenThenTheRole) {
  absl::StatusOr<Authorizer> auth = Authorizer::FromConfig(ThreeCallers());
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_TRUE(auth->enabled());
  EXPECT_EQ(auth->Check(Bearer(kOpsToken), Method::kReplay).value(), "oncall");
  EXPECT_EQ(auth->Check(Bearer(kLaneToken), Method::kClaim).value(), "lanes");

  absl::StatusOr<std::string> denied = auth->Check(Bearer(kViewerToken), Method::kReplay);
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.status().message(), "caller dashboard (role viewer) may not call Replay");

  for (std::string bad : {std::string(), std::string("Bearer "), std::string(kOpsToken),
                          "Basic " + std::string(kOpsToken), Bearer("nobody-s-token-1234567")}) {
    EXPECT_EQ(auth->Check(bad, Method::kGet).status().code(), absl::StatusCode::kUnauthenticated)
        << bad;
  }
}

// RFC 7235: the auth scheme is case-insensitive, and one or more spaces follow it.
TEST(AuthorizerTest, TheSchemeIsMatchedWhateverItsCase) {
  absl::StatusOr<Authorizer> auth = Authorizer::FromConfig(ThreeCallers());
  ASSERT_TRUE(auth.ok()) << auth.status();
  for (std::string scheme : {"bearer ", "BEARER ", "bEaReR ", "Bearer   "}) {
    EXPECT_EQ(auth->Check(scheme + kOpsToken, Method::kReplay).value(), "oncall") << scheme;
  }
  for (std::string bad : {std::string("bearer "), std::string("BEARER   "),
                          "Bearer" + std::string(kOpsToken), "Bearerx " + std::string(kOpsToken)}) {
    EXPECT_EQ(auth->Check(bad, Method::kGet).status().code(), absl::StatusCode::kUnauthenticated)
        << bad;
  }
}

TEST(AuthorizerTest, WithoutCallersEveryCallPasses) {
  absl::StatusOr<Authorizer> auth = Authorizer::FromConfig({});
  ASSERT_TRUE(auth.ok());
  EXPECT_FALSE(auth->enabled());
  EXPECT_EQ(auth->Check("", Method::kReplay).value(), "");
}

TEST(AuthorizerTest, BadTokensStopTheStartNamingTheFieldNeverTheToken) {
  ess::v1::ReplayAuth auth = ThreeCallers();
  auth.mutable_callers(1)->set_token_env("ESS_TEST_UNSET_TOKEN");
  unsetenv("ESS_TEST_UNSET_TOKEN");
  absl::StatusOr<Authorizer> a = Authorizer::FromConfig(auth);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a.status().message(),
            "replay.auth.callers[1].token_env: environment variable ESS_TEST_UNSET_TOKEN is not "
            "set");

  setenv("ESS_TEST_SHORT_TOKEN", "short", 1);
  auth.mutable_callers(1)->set_token_env("ESS_TEST_SHORT_TOKEN");
  a = Authorizer::FromConfig(auth);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.status().message(),
            "replay.auth.callers[1].token_env: the token in ESS_TEST_SHORT_TOKEN is shorter than "
            "16 characters");

  auth.mutable_callers(1)->set_token_env("ESS_TEST_OPS_TOKEN");  // oncall's token too
  a = Authorizer::FromConfig(auth);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(a.status().message(), HasSubstr("callers[2].token_env: the same token as caller"));
  EXPECT_THAT(a.status().message(), ::testing::Not(HasSubstr(kOpsToken)));
}

// ---- Enforced by the service, on every method ----------------------------------------------

class AuthorizedServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<Authorizer> auth = Authorizer::FromConfig(ThreeCallers());
    ASSERT_TRUE(auth.ok());
    authorizer_ = std::make_unique<Authorizer>(*std::move(auth));
    auto store = SqliteReplayStore::Open(dir_.File("replay.db"));
    ASSERT_TRUE(store.ok());
    store_ = *std::move(store);
    auto server =
        ReplayServer::Start(*store_, {.listen = "127.0.0.1:0", .authorizer = authorizer_.get()});
    ASSERT_TRUE(server.ok());
    server_ = *std::move(server);
    stub_ = MakeReplayStub(server_->address());
  }
  void TearDown() override { server_->Shutdown(absl::Seconds(5)); }

  std::unique_ptr<grpc::ClientContext> As(const std::string& token) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    if (!token.empty()) context->AddMetadata("authorization", Bearer(token));
    return context;
  }

  grpc::StatusCode Record(const std::string& token) {
    ess::v1::RecordRequest req;
    *req.add_records() = Outbound("prison", "m-1");
    ess::v1::RecordResponse resp;
    return stub_->Record(As(token).get(), req, &resp).error_code();
  }
  grpc::StatusCode List(const std::string& token) {
    ess::v1::ListResponse resp;
    return stub_->List(As(token).get(), {}, &resp).error_code();
  }
  grpc::StatusCode Replay(const std::string& token) {
    ess::v1::ReplayRequest req;
    req.mutable_filter()->set_partner("prison");
    ess::v1::ReplayResponse resp;
    // No Replayer in this server: an authorised call gets as far as FAILED_PRECONDITION.
    return stub_->Replay(As(token).get(), req, &resp).error_code();
  }

  TempDir dir_;
  std::unique_ptr<Authorizer> authorizer_;
  std::unique_ptr<SqliteReplayStore> store_;
  std::unique_ptr<ReplayServer> server_;
  std::unique_ptr<ess::v1::ReplayService::Stub> stub_;
};

TEST_F(AuthorizedServiceTest, EveryCallIsCheckedBeforeItTouchesTheStore) {
  EXPECT_EQ(Record(""), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Record("wrong-token-0123456789"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Record(kViewerToken), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Record(kOpsToken), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(store_->List({.limit = 10}).value().records.empty());  // nothing was stored
  EXPECT_EQ(Record(kLaneToken), grpc::StatusCode::OK);

  EXPECT_EQ(List(kLaneToken), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(List(kViewerToken), grpc::StatusCode::OK);
  EXPECT_EQ(List(kOpsToken), grpc::StatusCode::OK);

  EXPECT_EQ(Replay(""), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Replay(kLaneToken), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Replay(kViewerToken), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Replay(kOpsToken), grpc::StatusCode::FAILED_PRECONDITION);
}

// Every method, every role: the table of README's "Access control", written out here rather
// than read from the Authorizer, so that a handler that forgets its check fails.
TEST_F(AuthorizedServiceTest, EachRoleReachesExactlyItsMethods) {
  using Call = std::function<grpc::Status(grpc::ClientContext*)>;
  const std::vector<std::pair<std::string, Call>> methods = {
      {"Record",
       [&](grpc::ClientContext* c) {
         ess::v1::RecordResponse resp;
         return stub_->Record(c, {}, &resp);
       }},
      {"UpdateStatus",
       [&](grpc::ClientContext* c) {
         ess::v1::MessageRecord resp;
         return stub_->UpdateStatus(c, {}, &resp);
       }},
      {"Get",
       [&](grpc::ClientContext* c) {
         ess::v1::GetResponse resp;
         return stub_->Get(c, {}, &resp);
       }},
      {"Lookup",
       [&](grpc::ClientContext* c) {
         ess::v1::LookupResponse resp;
         return stub_->Lookup(c, {}, &resp);
       }},
      {"Claim",
       [&](grpc::ClientContext* c) {
         ess::v1::ClaimResponse resp;
         return stub_->Claim(c, {}, &resp);
       }},
      {"List",
       [&](grpc::ClientContext* c) {
         ess::v1::ListResponse resp;
         return stub_->List(c, {}, &resp);
       }},
      {"Stats",
       [&](grpc::ClientContext* c) {
         ess::v1::StatsResponse resp;
         return stub_->Stats(c, {}, &resp);
       }},
      {"Replay",
       [&](grpc::ClientContext* c) {
         ess::v1::ReplayResponse resp;
         return stub_->Replay(c, {}, &resp);
       }},
  };
  const std::map<std::string, std::set<std::string>> allowed = {
      {kLaneToken, {"Record", "Get", "Lookup", "Claim"}},
      {kViewerToken, {"Get", "Lookup", "List", "Stats"}},
      {kOpsToken, {"Get", "Lookup", "List", "Stats", "Replay", "UpdateStatus"}},
  };
  for (const auto& [name, call] : methods) {
    EXPECT_EQ(call(As("").get()).error_code(), grpc::StatusCode::UNAUTHENTICATED) << name;
    for (const auto& [token, methods_of_role] : allowed) {
      const grpc::StatusCode code = call(As(token).get()).error_code();
      if (methods_of_role.contains(name)) {
        // Past the check: whatever the (empty) request earns, not a refusal.
        EXPECT_NE(code, grpc::StatusCode::UNAUTHENTICATED) << name << " as " << token;
        EXPECT_NE(code, grpc::StatusCode::PERMISSION_DENIED) << name << " as " << token;
      } else {
        EXPECT_EQ(code, grpc::StatusCode::PERMISSION_DENIED) << name << " as " << token;
      }
    }
  }
}

// A viewer (a dashboard) sees every record without its bodies, which hold the partner's
// message and so personal data; ops and the lanes get them whole.
TEST_F(AuthorizedServiceTest, AViewerGetsRecordsWithoutTheirBodies) {
  ess::v1::MessageRecord rec = Outbound("prison", "m-body");
  rec.set_payload(R"({"id":"m-body","inmateId":"A123"})");
  rec.set_rendered(R"({"inmate":"A123"})");
  {
    ess::v1::RecordRequest req;
    *req.add_records() = rec;
    ess::v1::RecordResponse resp;
    ASSERT_TRUE(stub_->Record(As(kLaneToken).get(), req, &resp).ok());
  }
  ess::v1::GetRequest by_cid;
  by_cid.set_correlation_id("m-body");
  ess::v1::GetRequest by_key;
  *by_key.mutable_record() = Key(ess::v1::DIRECTION_OUTBOUND, "prison", "m-body");
  ess::v1::LookupRequest lookup;
  *lookup.add_keys() = Key(ess::v1::DIRECTION_OUTBOUND, "prison", "m-body");
  ess::v1::ListRequest list;
  list.set_partner("prison");
  for (const char* token : {kViewerToken, kOpsToken, kLaneToken}) {
    const bool whole = std::string(token) != kViewerToken;
    std::vector<ess::v1::MessageRecord> seen;
    ess::v1::GetResponse got;
    ASSERT_TRUE(stub_->Get(As(token).get(), by_cid, &got).ok());
    seen.insert(seen.end(), got.records().begin(), got.records().end());
    got.Clear();
    ASSERT_TRUE(stub_->Get(As(token).get(), by_key, &got).ok());
    seen.insert(seen.end(), got.records().begin(), got.records().end());
    ess::v1::LookupResponse looked;
    ASSERT_TRUE(stub_->Lookup(As(token).get(), lookup, &looked).ok());
    ASSERT_EQ(looked.results_size(), 1);
    seen.push_back(looked.results(0).record());
    if (std::string(token) != kLaneToken) {  // lanes may not List
      ess::v1::ListResponse listed;
      ASSERT_TRUE(stub_->List(As(token).get(), list, &listed).ok());
      seen.insert(seen.end(), listed.records().begin(), listed.records().end());
    }
    ASSERT_EQ(seen.size(), std::string(token) == kLaneToken ? 3u : 4u) << token;
    for (const ess::v1::MessageRecord& r : seen) {
      EXPECT_EQ(r.message_id(), "m-body") << token;
      EXPECT_EQ(r.payload(), whole ? rec.payload() : "") << token;
      EXPECT_EQ(r.rendered(), whole ? rec.rendered() : "") << token;
    }
  }
}

TEST_F(AuthorizedServiceTest, TheRecorderSendsItsTokenAndPingReportsARefusal) {
  {
    ReplayRecorder lane({.address = server_->address(), .token = kLaneToken});
    EXPECT_TRUE(lane.Ping(absl::Seconds(5)).ok());
    absl::Notification done;
    absl::Status result;
    lane.Record(Outbound("prison", "m-2"), [&](absl::Status s) {
      result = s;
      done.Notify();
    });
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
    EXPECT_TRUE(result.ok()) << result;
  }
  // A viewer's token may Get but not Record: no lane can work with it.
  ReplayRecorder viewer({.address = server_->address(), .token = kViewerToken});
  absl::Status viewer_ping = viewer.Ping(absl::Seconds(5));
  EXPECT_EQ(viewer_ping.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(viewer_ping.message(), HasSubstr("may not call Record"));
  ReplayRecorder stranger({.address = server_->address(), .token = "stranger-0123456789abc"});
  EXPECT_EQ(stranger.Ping(absl::Seconds(5)).code(), absl::StatusCode::kUnauthenticated);
  ReplayRecorder anonymous({.address = server_->address()});
  EXPECT_EQ(anonymous.Ping(absl::Seconds(5)).code(), absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace ess::replay
