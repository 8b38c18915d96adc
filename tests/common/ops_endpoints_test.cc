// Tests of ess::ops (the operations endpoints) on loopback, driven by ess::http::Client.
#include "common/ops_endpoints.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/http_client.h"
#include "common/metrics.h"

namespace ess::ops {
namespace {

using ::testing::HasSubstr;

class OpsEndpointsTest : public ::testing::Test {
 protected:
  // "STATUS BODY" of GET `path`, or the client's error.
  std::string Get(const Server& server, const std::string& path) {
    absl::StatusOr<http::Response> r =
        client_.SendAndWait({.method = "GET",
                             .url = absl::StrCat("http://127.0.0.1:", server.port(), path),
                             .timeout = absl::Seconds(5)});
    return r.ok() ? absl::StrCat(r->status, " ", r->body) : std::string(r.status().message());
  }

  http::Client client_{{}};
};

TEST_F(OpsEndpointsTest, ServesLivenessReadinessFromTheCallbackAndMetrics) {
  std::atomic<bool> bus_up{true};
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(
      "127.0.0.1:0", {.metrics =
                          [] {
                            return std::vector<prometheus::MetricFamily>{metrics::Single(
                                "ess_test_up", "1 while up.", prometheus::MetricType::Gauge, 1)};
                          },
                      .readiness =
                          [&] {
                            NotReady not_ready;
                            if (!bus_up) not_ready.emplace_back("bus", "not connected");
                            // A value from outside (a broker's reason) is escaped in the body.
                            if (!bus_up)
                              not_ready.emplace_back("broker_alarm", R"(low on "memory")");
                            return not_ready;
                          }});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(Get(**server, "/healthz"), R"(200 {"ok":true})");
  EXPECT_EQ(Get(**server, "/readyz"), R"(200 {"ready":true})");
  bus_up = false;
  EXPECT_EQ(Get(**server, "/readyz"),
            R"(503 {"ready":false,"bus":"not connected","broker_alarm":"low on \"memory\""})");
  EXPECT_EQ(Get(**server, "/healthz"), R"(200 {"ok":true})");
  EXPECT_THAT(Get(**server, "/metrics"), HasSubstr("\ness_test_up 1\n"));
  EXPECT_THAT(Get(**server, "/metrics"), HasSubstr("# HELP ess_test_up 1 while up.\n"));
  EXPECT_EQ(Get(**server, "/other"), R"(404 {"error":"not an operations endpoint"})");
}

TEST_F(OpsEndpointsTest, AnEndpointWithoutItsCallbackIsNotServed) {
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start("127.0.0.1:0", {});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(Get(**server, "/healthz"), R"(200 {"ok":true})");
  EXPECT_THAT(Get(**server, "/readyz"), HasSubstr("404 "));
  EXPECT_THAT(Get(**server, "/metrics"), HasSubstr("404 "));
}

TEST_F(OpsEndpointsTest, APortInUseIsUnavailable) {
  absl::StatusOr<std::unique_ptr<Server>> first = Server::Start("127.0.0.1:0", {});
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::unique_ptr<Server>> second =
      Server::Start(absl::StrCat("127.0.0.1:", (*first)->port()), {});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("ops endpoints: "));
}

}  // namespace
}  // namespace ess::ops
