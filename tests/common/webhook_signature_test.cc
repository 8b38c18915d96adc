// Standard Webhooks signatures: the specification's reference vector, secret rotation, replay
// protection and the errors a partner sees.
#include "common/webhook_signature.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ess::webhook {
namespace {

using ::testing::HasSubstr;

// The reference vector of the Standard Webhooks specification.
constexpr char kSecret[] = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
constexpr char kId[] = "msg_p5jXN8AQM9LWM0D4loKWxJek";
constexpr char kTimestamp[] = "1614265330";
constexpr char kBody[] = R"({"test": 2432232314})";
constexpr char kSignature[] = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
// Another secret of the same partner, as during a rotation (30 key bytes).
constexpr char kOtherSecret[] = "whsec_c2VjcmV0LW9mLWEtcm90YXRlZC1lbmRwb2ludCEh";

const absl::Time kSigned = absl::FromUnixSeconds(1614265330);

SignatureVerifier Make(std::vector<std::string> secrets) {
  absl::StatusOr<SignatureVerifier> v = SignatureVerifier::Create(secrets, absl::Minutes(5));
  EXPECT_TRUE(v.ok()) << v.status();
  return *std::move(v);
}

TEST(WebhookSignatureTest, TheReferenceVectorVerifiesAndIsWhatSignProduces) {
  SignatureVerifier v = Make({kSecret});
  EXPECT_TRUE(v.Verify(kId, kTimestamp, kSignature, kBody, kSigned).ok());
  EXPECT_EQ(v.Sign(kId, kTimestamp, kBody), kSignature);
}

// The keyed contexts are shared by copies of a verifier and used from several threads at once:
// every thread gets the reference answer, for good and for altered calls.
TEST(WebhookSignatureTest, CopiesOfAVerifierVerifyFromSeveralThreadsAtOnce) {
  const SignatureVerifier v = Make({kOtherSecret, kSecret});
  std::atomic<int> good{0}, refused{0}, signed_right{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, copy = v] {
      for (int i = 0; i < 2000; ++i) {
        if (copy.Verify(kId, kTimestamp, kSignature, kBody, kSigned).ok()) ++good;
        if (!copy.Verify(kId, kTimestamp, kSignature, "{}", kSigned).ok()) ++refused;
      }
    });
  }
  for (int i = 0; i < 2000; ++i) {
    if (Make({kSecret}).Sign(kId, kTimestamp, kBody) == kSignature) ++signed_right;
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(good.load(), 8000);
  EXPECT_EQ(refused.load(), 8000);
  EXPECT_EQ(signed_right.load(), 2000);
}

TEST(WebhookSignatureTest, AnyChangeToIdTimestampOrBodyBreaksTheSignature) {
  SignatureVerifier v = Make({kSecret});
  for (auto [id, ts, body] :
       {std::tuple{"msg_other", kTimestamp, kBody}, std::tuple{kId, "1614265331", kBody},
        std::tuple{kId, kTimestamp, R"({"test": 2432232315})"}}) {
    absl::Status s = v.Verify(id, ts, kSignature, body, kSigned);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << id << " " << ts << " " << body;
    EXPECT_EQ(s.message(), "no webhook-signature matches");
  }
}

TEST(WebhookSignatureTest, DuringARotationEitherSecretAndEitherSignatureIsAccepted) {
  SignatureVerifier old_key = Make({kSecret});
  SignatureVerifier new_key = Make({kOtherSecret});
  const std::string new_signature = new_key.Sign(kId, kTimestamp, kBody);
  ASSERT_NE(new_signature, kSignature);
  // The hub knows both secrets; the partner signs with the new one only.
  SignatureVerifier both = Make({kSecret, kOtherSecret});
  EXPECT_TRUE(both.Verify(kId, kTimestamp, new_signature, kBody, kSigned).ok());
  // The partner sends both signatures; the hub still knows only the old secret.
  const std::string two = absl::StrCat(new_signature, " ", kSignature);
  EXPECT_TRUE(old_key.Verify(kId, kTimestamp, two, kBody, kSigned).ok());
  EXPECT_FALSE(old_key.Verify(kId, kTimestamp, new_signature, kBody, kSigned).ok());
}

TEST(WebhookSignatureTest, OtherSchemesAndMalformedEntriesAreIgnored) {
  SignatureVerifier v = Make({kSecret});
  const std::string mixed = absl::StrCat("v1a,abc v2,", std::string(kSignature).substr(3),
                                         " v1,not*base64 v1,AAAA ", kSignature);
  EXPECT_TRUE(v.Verify(kId, kTimestamp, mixed, kBody, kSigned).ok());
  // The same entries without the valid one: nothing matches.
  absl::Status s =
      v.Verify(kId, kTimestamp, "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", kBody, kSigned);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
}

TEST(WebhookSignatureTest, ATimestampOutsideTheToleranceIsRefusedEitherWay) {
  SignatureVerifier v = Make({kSecret});
  EXPECT_TRUE(v.Verify(kId, kTimestamp, kSignature, kBody, kSigned + absl::Minutes(5)).ok());
  EXPECT_TRUE(v.Verify(kId, kTimestamp, kSignature, kBody, kSigned - absl::Minutes(5)).ok());
  absl::Status late = v.Verify(kId, kTimestamp, kSignature, kBody, kSigned + absl::Minutes(6));
  EXPECT_EQ(late.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(late.message(), "webhook-timestamp is 6m old; at most 5m is accepted");
  absl::Status early = v.Verify(kId, kTimestamp, kSignature, kBody, kSigned - absl::Hours(1));
  EXPECT_EQ(early.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(early.message(), "webhook-timestamp is 1h in the future; at most 5m is accepted");
}

TEST(WebhookSignatureTest, MissingOrMalformedHeadersAreNamed) {
  SignatureVerifier v = Make({kSecret});
  EXPECT_EQ(v.Verify("", kTimestamp, kSignature, kBody, kSigned).message(),
            "webhook-id header missing");
  EXPECT_EQ(v.Verify(kId, "", kSignature, kBody, kSigned).message(),
            "webhook-timestamp header missing");
  EXPECT_EQ(v.Verify(kId, kTimestamp, "", kBody, kSigned).message(),
            "webhook-signature header missing");
  absl::Status s = v.Verify(kId, "2021-02-25T15:02:10Z", kSignature, kBody, kSigned);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(s.message(), "webhook-timestamp is not a number of seconds");
}

TEST(WebhookSignatureTest, BadSecretsAreNamedByPositionWithoutTheirValue) {
  absl::StatusOr<SignatureVerifier> v =
      SignatureVerifier::Create({kSecret, "whsec_not*base64"}, absl::Minutes(5));
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(v.status().message(), "secret 2 is not \"whsec_\" followed by base64");
  v = SignatureVerifier::Create({"whsec_c2hvcnQ="}, absl::Minutes(5));  // "short"
  EXPECT_EQ(v.status().message(), "secret 1 holds 5 key bytes; at least 16");
  EXPECT_THAT(v.status().message(), ::testing::Not(HasSubstr("c2hvcnQ")));
  v = SignatureVerifier::Create({}, absl::Minutes(5));
  EXPECT_EQ(v.status().message(), "no signing secret");
  // The prefix is optional.
  EXPECT_TRUE(
      SignatureVerifier::Create({"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}, absl::Minutes(5)).ok());
}

}  // namespace
}  // namespace ess::webhook
