// ReplayService end to end: a real in-process server on 127.0.0.1:0 over a SQLite file, called
// through a stub; exact status codes and contents.
#include "replay_svc/replay_service.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/metrics.h"
#include "common/replay_client.h"
#include "common/sqlite.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "replay_svc/replay_server.h"
#include "replay_svc/sqlite_replay_store.h"
#include "tests/replay_svc/test_util.h"

namespace ess::replay {
namespace {

using ::ess::replay::testing::FakeClock;
using ::ess::replay::testing::InvalidKeyCase;
using ::ess::replay::testing::Key;
using ::ess::replay::testing::MakeRecord;
using ::ess::replay::testing::MessageIds;
using ::ess::replay::testing::Outbound;
using ::ess::replay::testing::TempDir;
using ::ess::v1::MessageRecord;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr auto kOut = ess::v1::DIRECTION_OUTBOUND;
constexpr auto kIn = ess::v1::DIRECTION_INBOUND;

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  return context;
}

class ReplayServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SqliteReplayStore::Options options;
    options.clock = [this] { return clock_.Now(); };
    absl::StatusOr<std::unique_ptr<SqliteReplayStore>> store =
        SqliteReplayStore::Open(dir_.File("replay.db"), std::move(options));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    absl::StatusOr<std::unique_ptr<ReplayServer>> server =
        ReplayServer::Start(*store_, {.listen = "127.0.0.1:0"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = MakeReplayStub(server_->address());
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::Seconds(5));
  }

  grpc::Status Record(std::vector<MessageRecord> records, ess::v1::RecordResponse* response) {
    ess::v1::RecordRequest request;
    for (MessageRecord& r : records) *request.add_records() = std::move(r);
    return stub_->Record(Context().get(), request, response);
  }

  void MustRecord(std::vector<MessageRecord> records) {
    const size_t n = records.size();
    ess::v1::RecordResponse response;
    grpc::Status status = Record(std::move(records), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(response.stored(), n);
  }

  TempDir dir_;
  FakeClock clock_;
  std::unique_ptr<SqliteReplayStore> store_;
  std::unique_ptr<ReplayServer> server_;
  std::unique_ptr<ess::v1::ReplayService::Stub> stub_;
};

TEST_F(ReplayServiceTest, BindsAnEphemeralPortOnLoopback) {
  EXPECT_GT(server_->port(), 0);
  EXPECT_EQ(server_->address(), absl::StrCat("127.0.0.1:", server_->port()));
}

TEST_F(ReplayServiceTest, RecordThenGetByCorrelationWithTrail) {
  MessageRecord out = MakeRecord(kOut, "prison", "m-1", "VIS-77");
  *out.mutable_received_at() = testing::Ts(absl::FromUnixSeconds(1'000));
  MustRecord({out});
  out.set_status(ess::v1::MESSAGE_STATUS_DELIVERED);
  const absl::Time delivered_at = clock_.Peek();
  MustRecord({out});
  const absl::Time confirmed_at = clock_.Peek();
  MustRecord({MakeRecord(kIn, "prison", "wh-9", "VIS-77", ess::v1::MESSAGE_STATUS_PUBLISHED),
              MakeRecord(kOut, "prison", "m-2", "VIS-78")});

  ess::v1::GetRequest request;
  request.set_correlation_id("VIS-77");
  ess::v1::GetResponse response;
  grpc::Status status = stub_->Get(Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(MessageIds(response.records()), ElementsAre("m-1", "wh-9"));
  EXPECT_EQ(response.records(0).status(), ess::v1::MESSAGE_STATUS_DELIVERED);
  const ess::v1::CorrelationTrail& trail = response.trail();
  EXPECT_EQ(trail.correlation_id(), "VIS-77");
  EXPECT_EQ(trail.stage(), "confirmed");
  EXPECT_EQ(trail.pushed_at().seconds(), 1'000);
  EXPECT_EQ(trail.delivered_at().seconds(), absl::ToUnixSeconds(delivered_at));
  EXPECT_EQ(trail.confirmed_at().seconds(), absl::ToUnixSeconds(confirmed_at));
}

TEST_F(ReplayServiceTest, GetByRecordKey) {
  MustRecord({Outbound("prison", "m-1"), MakeRecord(kIn, "prison", "m-1", "m-1")});
  ess::v1::GetRequest request;
  request.mutable_record()->set_direction(kIn);
  request.mutable_record()->set_partner("prison");
  request.mutable_record()->set_message_id("m-1");
  ess::v1::GetResponse response;
  grpc::Status status = stub_->Get(Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.records_size(), 1);
  EXPECT_EQ(response.records(0).direction(), kIn);
  EXPECT_FALSE(response.has_trail());
}

struct InvalidRecordCase {
  const char* name;
  void (*corrupt)(MessageRecord*);
  const char* message;
};

class InvalidRecordTest : public ReplayServiceTest,
                          public ::testing::WithParamInterface<InvalidRecordCase> {};

TEST_P(InvalidRecordTest, IsInvalidArgumentNamingIndexAndFieldAndStoresNothing) {
  std::vector<MessageRecord> batch;
  for (int i = 0; i < 5; ++i) batch.push_back(Outbound("prison", absl::StrCat("m-", i)));
  GetParam().corrupt(&batch[3]);
  ess::v1::RecordResponse response;
  grpc::Status status = Record(batch, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), GetParam().message);

  ess::v1::ListRequest list;
  ess::v1::ListResponse listed;
  ASSERT_TRUE(stub_->List(Context().get(), list, &listed).ok());
  EXPECT_EQ(listed.records_size(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Fields, InvalidRecordTest,
    ::testing::Values(
        InvalidRecordCase{"message_id", [](MessageRecord* r) { r->clear_message_id(); },
                          "records[3].message_id: must not be empty"},
        InvalidRecordCase{"partner", [](MessageRecord* r) { r->clear_partner(); },
                          "records[3].partner: must not be empty"},
        InvalidRecordCase{"correlation_id", [](MessageRecord* r) { r->clear_correlation_id(); },
                          "records[3].correlation_id: must not be empty"},
        InvalidRecordCase{"direction", [](MessageRecord* r) { r->clear_direction(); },
                          "records[3].direction: must be DIRECTION_OUTBOUND or DIRECTION_INBOUND"},
        InvalidRecordCase{"status", [](MessageRecord* r) { r->clear_status(); },
                          "records[3].status: must be a specified MessageStatus"},
        InvalidRecordCase{"received_at",
                          [](MessageRecord* r) { r->mutable_received_at()->set_nanos(-1); },
                          "records[3].received_at: is not a valid timestamp"}),
    [](const ::testing::TestParamInfo<InvalidRecordCase>& p) { return p.param.name; });

TEST_F(ReplayServiceTest, EmptyRecordBatchIsOkAndStoresNothing) {
  ess::v1::RecordResponse response;
  grpc::Status status = Record({}, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.stored(), 0u);
}

TEST_F(ReplayServiceTest, UpdateStatusOfAKnownAndAnUnknownKey) {
  MustRecord({Outbound("prison", "m-1")});
  ess::v1::UpdateStatusRequest request;
  request.set_direction(kOut);
  request.set_partner("prison");
  request.set_message_id("m-1");
  request.set_status(ess::v1::MESSAGE_STATUS_FAILED);
  request.set_error("HTTP 503");
  MessageRecord updated;
  grpc::Status status = stub_->UpdateStatus(Context().get(), request, &updated);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(updated.status(), ess::v1::MESSAGE_STATUS_FAILED);
  EXPECT_EQ(updated.error(), "HTTP 503");
  EXPECT_EQ(updated.message_id(), "m-1");

  request.set_message_id("m-404");
  status = stub_->UpdateStatus(Context().get(), request, &updated);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(status.error_message(), "no record direction=outbound partner=prison message_id=m-404");
}

TEST_F(ReplayServiceTest, UpdateStatusValidatesTheRequest) {
  ess::v1::UpdateStatusRequest request;
  request.set_direction(kOut);
  request.set_partner("prison");
  request.set_message_id("m-1");
  MessageRecord updated;
  grpc::Status status = stub_->UpdateStatus(Context().get(), request, &updated);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "status: must be a specified MessageStatus");

  request.set_status(ess::v1::MESSAGE_STATUS_DELIVERED);
  request.clear_partner();
  status = stub_->UpdateStatus(Context().get(), request, &updated);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "partner: must not be empty");
}

TEST_F(ReplayServiceTest, GetErrors) {
  ess::v1::GetResponse response;
  ess::v1::GetRequest none;
  grpc::Status status = stub_->Get(Context().get(), none, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "key: set correlation_id or record");

  ess::v1::GetRequest empty_correlation;
  empty_correlation.set_correlation_id("");
  status = stub_->Get(Context().get(), empty_correlation, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "correlation_id: must not be empty");

  ess::v1::GetRequest unknown_correlation;
  unknown_correlation.set_correlation_id("VIS-404");
  status = stub_->Get(Context().get(), unknown_correlation, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(status.error_message(), "no records for correlation_id=VIS-404");

  ess::v1::GetRequest unknown_key;
  unknown_key.mutable_record()->set_direction(kOut);
  unknown_key.mutable_record()->set_partner("prison");
  unknown_key.mutable_record()->set_message_id("m-404");
  status = stub_->Get(Context().get(), unknown_key, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);

  ess::v1::GetRequest bad_key;
  bad_key.mutable_record()->set_direction(kOut);
  bad_key.mutable_record()->set_message_id("m-1");
  status = stub_->Get(Context().get(), bad_key, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "record.partner: must not be empty");
}

// The message id of each result, "-" where none was found.
std::vector<std::string> FoundIds(const ess::v1::LookupResponse& response) {
  std::vector<std::string> ids;
  for (const ess::v1::LookupResult& r : response.results()) {
    ids.push_back(r.found() ? r.record().message_id() : "-");
  }
  return ids;
}

TEST_F(ReplayServiceTest, LookupAnswersEveryKeyInOrder) {
  MessageRecord published =
      MakeRecord(kIn, "prison", "wh-1", "VIS-1", ess::v1::MESSAGE_STATUS_PUBLISHED);
  const absl::Time write_time = clock_.Peek();
  MustRecord({published, Outbound("prison", "m-2", ess::v1::MESSAGE_STATUS_DELIVERED)});

  ess::v1::LookupRequest request;
  *request.add_keys() = Key(kOut, "prison", "m-404");
  *request.add_keys() = Key(kIn, "prison", "wh-1");
  *request.add_keys() = Key(kIn, "prison", "m-2");  // Other direction.
  *request.add_keys() = Key(kOut, "prison", "m-2");
  ess::v1::LookupResponse response;
  grpc::Status status = stub_->Lookup(Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(FoundIds(response), ElementsAre("-", "wh-1", "-", "m-2"));
  EXPECT_FALSE(response.results(0).has_record());
  MessageRecord expected = published;
  *expected.mutable_received_at() = testing::Ts(write_time);
  *expected.mutable_updated_at() = testing::Ts(write_time);
  EXPECT_EQ(response.results(1).record().SerializeAsString(), expected.SerializeAsString())
      << response.results(1).record().DebugString();
  EXPECT_EQ(response.results(3).record().status(), ess::v1::MESSAGE_STATUS_DELIVERED);
}

TEST_F(ReplayServiceTest, LookupOfNoKeysIsAnEmptyAnswer) {
  ess::v1::LookupResponse response;
  grpc::Status status = stub_->Lookup(Context().get(), ess::v1::LookupRequest(), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.results_size(), 0);
}

TEST_F(ReplayServiceTest, LookupTakesAtMostTenThousandKeys) {
  MustRecord({Outbound("prison", "m-9999")});
  ess::v1::LookupRequest request;
  for (int i = 0; i < ReplayServiceImpl::kMaxLookupKeys; ++i) {
    *request.add_keys() = Key(kOut, "prison", absl::StrCat("m-", i));
  }
  ess::v1::LookupResponse response;
  grpc::Status status = stub_->Lookup(Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.results_size(), 10'000);
  EXPECT_FALSE(response.results(0).found());
  EXPECT_TRUE(response.results(9999).found());

  *request.add_keys() = Key(kOut, "prison", "one-too-many");
  status = stub_->Lookup(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "keys: 10001 given, at most 10000 per call");
}

TEST_F(ReplayServiceTest, ClaimAnswersEveryClaimInOrder) {
  MustRecord({MakeRecord(kIn, "prison", "wh-1", "VIS-1", ess::v1::MESSAGE_STATUS_PUBLISHED)});
  ess::v1::ClaimRequest request;
  for (const char* id : {"wh-1", "wh-2", "wh-2"}) {
    ess::v1::Claim* claim = request.add_claims();
    *claim->mutable_record() = MakeRecord(kIn, "prison", id, "VIS-1");
    claim->set_window_seconds(600);
    claim->set_lease_ms(2000);
  }
  ess::v1::ClaimResponse response;
  grpc::Status status = stub_->Claim(Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(response.results(),
              ElementsAre(ess::v1::CLAIM_OUTCOME_PUBLISHED, ess::v1::CLAIM_OUTCOME_CLAIMED,
                          ess::v1::CLAIM_OUTCOME_IN_PROGRESS));
  ess::v1::GetResponse got;
  ess::v1::GetRequest get;
  *get.mutable_record() = Key(kIn, "prison", "wh-2");
  ASSERT_TRUE(stub_->Get(Context().get(), get, &got).ok());
  EXPECT_EQ(got.records(0).status(), ess::v1::MESSAGE_STATUS_RECEIVED);

  // A bad claim: INVALID_ARGUMENT naming it, and nothing of the call is stored.
  request.mutable_claims(0)->mutable_record()->set_message_id("wh-3");
  request.mutable_claims(2)->mutable_record()->clear_correlation_id();
  status = stub_->Claim(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "claims[2].record.correlation_id: must not be empty");
  *get.mutable_record() = Key(kIn, "prison", "wh-3");
  EXPECT_EQ(stub_->Get(Context().get(), get, &got).error_code(), grpc::StatusCode::NOT_FOUND);
}

class InvalidLookupKeyTest : public ReplayServiceTest,
                             public ::testing::WithParamInterface<InvalidKeyCase> {};

TEST_P(InvalidLookupKeyTest, IsInvalidArgumentNamingIndexAndField) {
  MustRecord({Outbound("prison", "m-0")});
  ess::v1::LookupRequest request;
  for (int i = 0; i < 5; ++i) *request.add_keys() = Key(kOut, "prison", absl::StrCat("m-", i));
  GetParam().corrupt(request.mutable_keys(3));
  ess::v1::LookupResponse response;
  grpc::Status status = stub_->Lookup(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), GetParam().message);
  EXPECT_EQ(response.results_size(), 0);
}

INSTANTIATE_TEST_SUITE_P(Fields, InvalidLookupKeyTest,
                         ::testing::ValuesIn(testing::InvalidKeyCases()),
                         testing::InvalidKeyCaseName);

TEST_F(ReplayServiceTest, ListPagesWithOpaqueTokens) {
  std::vector<MessageRecord> batch;
  for (int i = 0; i < 250; ++i) batch.push_back(Outbound("prison", absl::StrCat("m", 1000 + i)));
  batch.push_back(Outbound("clinic", "c-1"));
  MustRecord(batch);

  ess::v1::ListRequest request;
  request.set_partner("prison");  // page_size 0: 100 per page.
  std::vector<int> page_sizes;
  std::vector<std::string> ids;
  for (int guard = 0; guard < 10; ++guard) {
    ess::v1::ListResponse response;
    grpc::Status status = stub_->List(Context().get(), request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    page_sizes.push_back(response.records_size());
    for (const MessageRecord& r : response.records()) ids.push_back(r.message_id());
    if (response.next_page_token().empty()) break;
    request.set_page_token(response.next_page_token());
  }
  EXPECT_THAT(page_sizes, ElementsAre(100, 100, 50));
  ASSERT_EQ(ids.size(), 250u);
  for (int i = 0; i < 250; ++i) EXPECT_EQ(ids[i], absl::StrCat("m", 1249 - i)) << i;
}

TEST_F(ReplayServiceTest, ListRejectsForeignAndMalformedTokens) {
  std::vector<MessageRecord> batch;
  for (int i = 0; i < 3; ++i) batch.push_back(Outbound("prison", absl::StrCat("m", i)));
  MustRecord(batch);
  ess::v1::ListRequest request;
  request.set_page_size(1);
  ess::v1::ListResponse response;
  ASSERT_TRUE(stub_->List(Context().get(), request, &response).ok());
  ASSERT_FALSE(response.next_page_token().empty());

  ess::v1::ListRequest other_filter;
  other_filter.set_partner("prison");
  other_filter.set_page_token(response.next_page_token());
  grpc::Status status = stub_->List(Context().get(), other_filter, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "page_token: issued for a different filter");
  ess::v1::ListRequest other_window;  // the received window is part of the filter too
  other_window.mutable_received_since()->set_seconds(1);
  other_window.set_page_token(response.next_page_token());
  status = stub_->List(Context().get(), other_window, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "page_token: issued for a different filter");
  ess::v1::ListRequest unconfirmed;  // and so is asking for unconfirmed records only
  unconfirmed.set_unconfirmed(true);
  unconfirmed.set_page_token(response.next_page_token());
  status = stub_->List(Context().get(), unconfirmed, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "page_token: issued for a different filter");

  ess::v1::ListRequest garbage;
  garbage.set_page_token("not a token!");
  status = stub_->List(Context().get(), garbage, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "page_token: malformed");
}

TEST_F(ReplayServiceTest, ListCapsPageSizeAtOneThousand) {
  std::vector<MessageRecord> batch;
  for (int i = 0; i < 1001; ++i) batch.push_back(Outbound("prison", absl::StrCat("m", i)));
  MustRecord(batch);
  ess::v1::ListRequest request;
  request.set_page_size(5000);
  ess::v1::ListResponse response;
  grpc::Status status = stub_->List(Context().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.records_size(), 1000);
  EXPECT_FALSE(response.next_page_token().empty());
}

TEST_F(ReplayServiceTest, ListFiltersAndValidatesEnums) {
  MustRecord({Outbound("prison", "o1", ess::v1::MESSAGE_STATUS_DELIVERED),
              Outbound("prison", "o2", ess::v1::MESSAGE_STATUS_FAILED),
              MakeRecord(kIn, "prison", "i1", "C", ess::v1::MESSAGE_STATUS_PUBLISHED)});
  ess::v1::ListRequest request;
  request.set_direction(kOut);
  request.set_status(ess::v1::MESSAGE_STATUS_FAILED);
  ess::v1::ListResponse response;
  ASSERT_TRUE(stub_->List(Context().get(), request, &response).ok());
  EXPECT_THAT(MessageIds(response.records()), ElementsAre("o2"));

  request.set_status(static_cast<ess::v1::MessageStatus>(42));
  grpc::Status status = stub_->List(Context().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "status: unknown value 42");

  ess::v1::ListRequest bad_time;
  bad_time.mutable_since()->set_seconds(-99'999'999'999);
  status = stub_->List(Context().get(), bad_time, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "since: is not a valid timestamp");
  bad_time.clear_since();
  bad_time.mutable_received_until()->set_nanos(-1);
  status = stub_->List(Context().get(), bad_time, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "received_until: is not a valid timestamp");
}

TEST_F(ReplayServiceTest, StatsPerPartner) {
  MustRecord({Outbound("prison", "o1", ess::v1::MESSAGE_STATUS_DELIVERED),
              Outbound("prison", "o2", ess::v1::MESSAGE_STATUS_FAILED),
              Outbound("clinic", "o3", ess::v1::MESSAGE_STATUS_DELIVERED)});
  ess::v1::StatsRequest request;
  ess::v1::StatsResponse response;
  ASSERT_TRUE(stub_->Stats(Context().get(), request, &response).ok());
  ASSERT_EQ(response.partners_size(), 2);
  EXPECT_EQ(response.partners(0).partner(), "clinic");
  EXPECT_EQ(response.partners(0).success_rate(), 1.0);
  EXPECT_EQ(response.partners(1).partner(), "prison");
  EXPECT_EQ(response.partners(1).delivered(), 1u);
  EXPECT_EQ(response.partners(1).failed(), 1u);
  EXPECT_EQ(response.partners(1).success_rate(), 0.5);

  request.set_partner("prison");
  ASSERT_TRUE(stub_->Stats(Context().get(), request, &response).ok());
  ASSERT_EQ(response.partners_size(), 1);
  EXPECT_EQ(response.partners(0).partner(), "prison");
}

TEST_F(ReplayServiceTest, HealthCheckReportsServing) {
  auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(channel);
  // grpc.health.v1.HealthCheckRequest{service: ""} is the empty message; a SERVING response is
  // HealthCheckResponse{status: SERVING (1)}: field 1, varint 1.
  grpc::ByteBuffer request(nullptr, 0);
  grpc::ByteBuffer response;
  grpc::Status status;
  absl::Notification done;
  std::unique_ptr<grpc::ClientContext> context = Context();
  generic.UnaryCall(context.get(), "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                    &response, [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));
}

TEST_F(ReplayServiceTest, SecondServerOnTheSamePortFailsToStart) {
  absl::StatusOr<std::unique_ptr<ReplayServer>> second =
      ReplayServer::Start(*store_, {.listen = server_->address()});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
}

// Consecutive Record calls, and consecutive Claim calls, that queue while the writer is busy
// go to the store as one batch: each call still gets its own answer, in the order the calls
// came, an UpdateStatus between them is not jumped, and a batch the database refuses is run
// again call by call, so only the call that holds the refused record fails. The writer is kept
// busy by another connection holding the file's write lock, so the calls queue behind its
// first call.
TEST(ReplayServiceWriterTest, CallsQueuedTogetherShareATransactionAndKeepTheirOrder) {
  TempDir dir;
  SqliteReplayStore::Options options;
  options.busy_timeout_ms = 60'000;
  absl::StatusOr<std::unique_ptr<SqliteReplayStore>> store =
      SqliteReplayStore::Open(dir.File("replay.db"), std::move(options));
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<std::unique_ptr<ReplayServer>> server =
      ReplayServer::Start(**store, {.listen = "127.0.0.1:0"});
  ASSERT_TRUE(server.ok()) << server.status();
  std::unique_ptr<ess::v1::ReplayService::Stub> stub = MakeReplayStub((*server)->address());
  auto metric = [&](const std::string& name) {
    for (absl::string_view line :
         absl::StrSplit(metrics::Render((*server)->service().Metrics()), '\n')) {
      if (absl::ConsumePrefix(&line, name + " ")) return std::string(line);
    }
    return std::string("?");
  };

  absl::StatusOr<sqlite::Database> holder = sqlite::Database::Open(dir.File("replay.db"));
  ASSERT_TRUE(holder.ok()) << holder.status();
  ASSERT_TRUE(holder
                  ->Exec("CREATE TRIGGER poison BEFORE INSERT ON records "
                         "WHEN NEW.message_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); "
                         "END")
                  .ok());
  ASSERT_TRUE(holder->Exec("BEGIN IMMEDIATE").ok());

  // Each call is sent once the one before it is queued, so their order is known.
  struct Call {
    std::unique_ptr<grpc::ClientContext> context = Context();
    grpc::Status status;
    absl::Notification done;
  };
  std::vector<std::unique_ptr<Call>> calls;
  std::vector<std::unique_ptr<google::protobuf::Message>> messages;  // requests, responses
  auto sent = [&](int queued) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (metric("ess_replay_writes_queued") != absl::StrCat(queued) && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    EXPECT_EQ(metric("ess_replay_writes_queued"), absl::StrCat(queued));
  };
  auto record = [&](std::vector<MessageRecord> records) {
    auto request = std::make_unique<ess::v1::RecordRequest>();
    for (MessageRecord& r : records) *request->add_records() = std::move(r);
    auto response = std::make_unique<ess::v1::RecordResponse>();
    Call* call = calls.emplace_back(std::make_unique<Call>()).get();
    stub->async()->Record(call->context.get(), request.get(), response.get(),
                          [call](grpc::Status s) {
                            call->status = std::move(s);
                            call->done.Notify();
                          });
    messages.push_back(std::move(request));
    messages.push_back(std::move(response));
    return static_cast<ess::v1::RecordResponse*>(messages.back().get());
  };
  auto claim = [&](const std::string& id) {
    auto request = std::make_unique<ess::v1::ClaimRequest>();
    ess::v1::Claim* c = request->add_claims();
    *c->mutable_record() = MakeRecord(kIn, "prison", id, "VIS-" + id);
    c->set_window_seconds(600);
    c->set_lease_ms(60'000);
    auto response = std::make_unique<ess::v1::ClaimResponse>();
    Call* call = calls.emplace_back(std::make_unique<Call>()).get();
    stub->async()->Claim(call->context.get(), request.get(), response.get(),
                         [call](grpc::Status s) {
                           call->status = std::move(s);
                           call->done.Notify();
                         });
    messages.push_back(std::move(request));
    messages.push_back(std::move(response));
    return static_cast<ess::v1::ClaimResponse*>(messages.back().get());
  };

  // The first call takes the writer (which counts its wait) and waits for the lock.
  record({Outbound("prison", "k0")});
  const std::string taken = R"(ess_replay_queue_wait_seconds_count{queue="write"})";
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (metric(taken) != "1" && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_EQ(metric(taken), "1");
  ASSERT_EQ(metric("ess_replay_writes_queued"), "0");
  ess::v1::RecordResponse* r1 = record({Outbound("prison", "k1", ess::v1::MESSAGE_STATUS_FAILED)});
  sent(1);
  ess::v1::UpdateStatusRequest update;
  update.set_direction(kOut);
  update.set_partner("prison");
  update.set_message_id("k1");
  update.set_status(ess::v1::MESSAGE_STATUS_DEAD);
  ess::v1::MessageRecord updated;
  Call* update_call = calls.emplace_back(std::make_unique<Call>()).get();
  stub->async()->UpdateStatus(update_call->context.get(), &update, &updated,
                              [update_call](grpc::Status s) {
                                update_call->status = std::move(s);
                                update_call->done.Notify();
                              });
  sent(2);
  ess::v1::RecordResponse* r2 = record(
      {Outbound("prison", "k1", ess::v1::MESSAGE_STATUS_DELIVERED), Outbound("prison", "k2")});
  sent(3);
  ess::v1::RecordResponse* r3 = record({Outbound("prison", "k3")});
  sent(4);
  record({Outbound("prison", "k4"), Outbound("prison", "poison")});
  sent(5);
  ess::v1::ClaimResponse* c1 = claim("wh-1");
  sent(6);
  ess::v1::ClaimResponse* c2 = claim("wh-1");
  sent(7);
  ess::v1::ClaimResponse* c3 = claim("wh-2");
  sent(8);
  claim("poison");
  sent(9);
  ASSERT_TRUE(holder->Exec("COMMIT").ok());
  for (const auto& call : calls) {
    ASSERT_TRUE(call->done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  }

  ASSERT_EQ(calls.size(), 10u);
  for (int i : {0, 1}) EXPECT_TRUE(calls[i]->status.ok()) << calls[i]->status.error_message();
  EXPECT_EQ(r1->stored(), 1u);
  // UpdateStatus ran after the Record of k1 queued before it and before the one queued after
  // it: k1 was FAILED, then DEAD, then DELIVERED.
  EXPECT_TRUE(update_call->status.ok()) << update_call->status.error_message();
  EXPECT_EQ(updated.status(), ess::v1::MESSAGE_STATUS_DEAD);
  EXPECT_TRUE(calls[3]->status.ok()) << calls[3]->status.error_message();
  EXPECT_EQ(r2->stored(), 2u);
  EXPECT_TRUE(calls[4]->status.ok()) << calls[4]->status.error_message();
  EXPECT_EQ(r3->stored(), 1u);
  // The batch of the three Record calls was refused for "poison", and each ran again alone.
  EXPECT_EQ(calls[5]->status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(calls[5]->status.error_message(), HasSubstr("records[1]: sqlite: SQLITE_CONSTRAINT"));
  for (int i = 6; i < 9; ++i) {
    EXPECT_TRUE(calls[i]->status.ok()) << calls[i]->status.error_message();
  }
  EXPECT_THAT(c1->results(), ElementsAre(ess::v1::CLAIM_OUTCOME_CLAIMED));
  EXPECT_THAT(c2->results(), ElementsAre(ess::v1::CLAIM_OUTCOME_IN_PROGRESS));
  EXPECT_THAT(c3->results(), ElementsAre(ess::v1::CLAIM_OUTCOME_CLAIMED));
  // So was the batch of the four Claim calls, for its "poison".
  EXPECT_EQ(calls[9]->status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(calls[9]->status.error_message(), HasSubstr("claims[0].record: sqlite: "));

  absl::StatusOr<MessageRecord> k1 = (*store)->GetByKey(Key(kOut, "prison", "k1"));
  ASSERT_TRUE(k1.ok());
  EXPECT_EQ(k1->status(), ess::v1::MESSAGE_STATUS_DELIVERED);
  for (const char* id : {"k0", "k2", "k3"})
    EXPECT_TRUE((*store)->GetByKey(Key(kOut, "prison", id)).ok());
  for (const char* id : {"k4", "poison"}) {
    EXPECT_EQ((*store)->GetByKey(Key(kOut, "prison", id)).status().code(),
              absl::StatusCode::kNotFound);
  }
  // Two calls joined the second Record's batch, three the first Claim's.
  EXPECT_EQ(metric("ess_replay_writes_batched_total"), "5");
  EXPECT_EQ(metric("ess_replay_writes_queued"), "0");
  (*server)->Shutdown(absl::Seconds(5));
}

TEST(ReplayServerTest, MalformedListenAddressIsInvalid) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<SqliteReplayStore>> store =
      SqliteReplayStore::Open(dir.File("replay.db"));
  ASSERT_TRUE(store.ok());
  absl::StatusOr<std::unique_ptr<ReplayServer>> server =
      ReplayServer::Start(**store, {.listen = "no-port"});
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("listen: \"no-port\""));
}

}  // namespace
}  // namespace ess::replay
