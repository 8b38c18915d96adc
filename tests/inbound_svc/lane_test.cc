// The inbound lane in process, served over real HTTP on loopback, with an adapter of the test's
// own: what a partner is told when the adapter fails its webhook, and what the log keeps.
//
// The built-in adapters fail a webhook with anything but INVALID_ARGUMENT only when memory runs
// out (libxml2, libcsv), which the real inbound_svc binary cannot be made to do on demand; the
// lane is the same class that binary runs.
#include "inbound_svc/lane.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/http_client.h"
#include "common/log.h"

namespace ess::inbound {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Fails every Pull with `status`; pushes nothing.
class FailingAdapter : public adapters::Adapter {
 public:
  explicit FailingAdapter(absl::Status status) : status_(std::move(status)) {}
  void Push(const adapters::PushRequest&, PushDone done) override {
    std::move(done)(adapters::PushResult{.status = absl::UnimplementedError("inbound only")});
  }
  absl::StatusOr<std::vector<adapters::InboundEvent>> Pull(const adapters::PullRequest&) override {
    return status_;
  }

 private:
  absl::Status status_;
};

// A lane whose one route (/webhook/prison, partner "prison") has an adapter failing with
// `status`. Nothing past the adapter is reached: no publisher, no store.
std::unique_ptr<Lane> StartLane(absl::Status status) {
  std::vector<Lane::Route> routes;
  routes.push_back({.partner = "prison",
                    .path = "/webhook/prison",
                    .adapter = std::make_unique<FailingAdapter>(std::move(status))});
  auto lane = std::make_unique<Lane>(Lane::Options{}, std::move(routes), nullptr, nullptr);
  EXPECT_TRUE(lane->Start().ok());
  return lane;
}

absl::StatusOr<http::Response> Post(http::Client& client, int port, const std::string& body) {
  return client.SendAndWait({.url = absl::StrCat("http://127.0.0.1:", port, "/webhook/prison"),
                             .headers = {{"Content-Type", "application/json"}},
                             .body = body});
}

constexpr char kPayload[] = R"({"id":"VIS-1","inmateId":"A123","status":"confirmed"})";

// An adapter failure that is not the payload's fault is answered 503 (the partner retries) with
// a body that names the part and nothing else: the adapter's text can hold its settings or the
// payload's personal data. The text goes to the log, PII masked, at most once a second.
TEST(InboundLaneTest, AnAdapterFailureThatIsNotThePayloadsIsAnswered503WithoutItsText) {
  log::Init("inbound_svc", log::Level::kInfo, {"inmateId"});
  std::unique_ptr<Lane> lane = StartLane(absl::FailedPreconditionError(
      R"(ca_file /etc/ess/partner-ca.pem unreadable for https://10.1.2.3:8443; inmate A123 in )"
      R"({"inmateId":"A123"})"));
  http::Client client({});
  constexpr int kCalls = 20;
  ::testing::internal::CaptureStderr();
  for (int i = 0; i < kCalls; ++i) {
    absl::StatusOr<http::Response> r = Post(client, lane->port(), kPayload);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 503);
    EXPECT_EQ(r->Header("retry-after"), "1");
    EXPECT_EQ(r->body, R"({"error":"webhook adapter unavailable"})");
  }
  lane->Stop();
  const std::string log = ::testing::internal::GetCapturedStderr();
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StrContains(line, "msg=\"adapter failed the webhook; partner told to retry\"")) {
      lines.emplace_back(line);
    }
  }
  ASSERT_FALSE(lines.empty()) << log;
  // The detail, with its code, for ops; the inmate's number masked, in plain text and in JSON.
  EXPECT_THAT(lines[0], HasSubstr("partner=prison"));
  EXPECT_THAT(lines[0], HasSubstr("FAILED_PRECONDITION: ca_file /etc/ess/partner-ca.pem"));
  EXPECT_THAT(lines[0], HasSubstr(R"(inmate *** in {\"inmateId\":\"***\"})"));
  EXPECT_THAT(log, Not(HasSubstr("A123")));
  EXPECT_THAT(lines[0], HasSubstr("suppressed_since_last=0"));
  // Throttled: not a line per call.
  EXPECT_LT(lines.size(), static_cast<size_t>(kCalls)) << log;
  EXPECT_EQ(lane->counters().published.load(), 0u);
}

// A payload the adapter finds wrong is the partner's to fix: 400, and the body says what is
// wrong with it, as before.
TEST(InboundLaneTest, ABadPayloadIsAnswered400WithTheReason) {
  log::Init("inbound_svc", log::Level::kInfo, {"inmateId"});
  std::unique_ptr<Lane> lane =
      StartLane(absl::InvalidArgumentError(R"(missing required field "status" (for "status"))"));
  http::Client client({});
  absl::StatusOr<http::Response> r = Post(client, lane->port(), kPayload);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(r->body,
            R"json({"error":"prison: missing required field \"status\" (for \"status\")"})json");
  EXPECT_EQ(r->Header("retry-after"), "");
}

}  // namespace
}  // namespace ess::inbound
