#include "common/webhook_signature.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstdint>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/sv.h"

namespace ess::webhook {
namespace {

constexpr std::string_view kSecretPrefix = "whsec_";
constexpr size_t kMinKeyBytes = 16;
constexpr size_t kMacBytes = 32;  // SHA-256

// HMAC-SHA256 of "id.timestamp.body" under `key`.
std::string Mac(const std::string& key, std::string_view id, std::string_view timestamp,
                std::string_view body) {
  std::string content;
  content.reserve(id.size() + timestamp.size() + body.size() + 2);
  absl::StrAppend(&content, ToAbsl(id), ".", ToAbsl(timestamp), ".", ToAbsl(body));
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(content.data()), content.size(), mac, &len);
  return std::string(reinterpret_cast<const char*>(mac), len);
}

}  // namespace

absl::StatusOr<SignatureVerifier> SignatureVerifier::Create(const std::vector<std::string>& secrets,
                                                            absl::Duration tolerance) {
  if (secrets.empty()) return absl::InvalidArgumentError("no signing secret");
  std::vector<std::string> keys;
  for (size_t i = 0; i < secrets.size(); ++i) {
    absl::string_view encoded = absl::StripAsciiWhitespace(secrets[i]);
    absl::ConsumePrefix(&encoded, ToAbsl(kSecretPrefix));
    std::string key;
    if (!absl::Base64Unescape(encoded, &key)) {
      return absl::InvalidArgumentError(
          absl::StrCat("secret ", i + 1, " is not \"whsec_\" followed by base64"));
    }
    if (key.size() < kMinKeyBytes) {
      return absl::InvalidArgumentError(absl::StrCat("secret ", i + 1, " holds ", key.size(),
                                                     " key bytes; at least ", kMinKeyBytes));
    }
    keys.push_back(std::move(key));
  }
  return SignatureVerifier(std::move(keys), tolerance);
}

absl::Status SignatureVerifier::Verify(std::string_view id, std::string_view timestamp,
                                       std::string_view signatures, std::string_view body,
                                       absl::Time now) const {
  if (signatures.empty()) return absl::UnauthenticatedError("webhook-signature header missing");
  if (id.empty()) return absl::UnauthenticatedError("webhook-id header missing");
  if (timestamp.empty()) return absl::UnauthenticatedError("webhook-timestamp header missing");
  int64_t seconds = 0;
  if (!absl::SimpleAtoi(ToAbsl(timestamp), &seconds)) {
    return absl::UnauthenticatedError("webhook-timestamp is not a number of seconds");
  }
  const absl::Duration skew = now - absl::FromUnixSeconds(seconds);
  if (skew > tolerance_) {
    return absl::UnauthenticatedError(absl::StrCat(
        "webhook-timestamp is ", absl::FormatDuration(absl::Trunc(skew, absl::Seconds(1))),
        " old; at most ", absl::FormatDuration(tolerance_), " is accepted"));
  }
  if (-skew > tolerance_) {
    return absl::UnauthenticatedError(absl::StrCat(
        "webhook-timestamp is ", absl::FormatDuration(absl::Trunc(-skew, absl::Seconds(1))),
        " in the future; at most ", absl::FormatDuration(tolerance_), " is accepted"));
  }
  // Every v1 entry against every key: which one matches must not show in the time taken.
  std::vector<std::string> macs;
  macs.reserve(keys_.size());
  for (const std::string& key : keys_) macs.push_back(Mac(key, id, timestamp, body));
  bool matched = false;
  for (absl::string_view entry : absl::StrSplit(ToAbsl(signatures), ' ', absl::SkipEmpty())) {
    if (!absl::ConsumePrefix(&entry, "v1,")) continue;  // other schemes are not ours
    std::string given;
    if (!absl::Base64Unescape(entry, &given) || given.size() != kMacBytes) continue;
    for (const std::string& mac : macs) {
      matched |= CRYPTO_memcmp(given.data(), mac.data(), kMacBytes) == 0;
    }
  }
  if (!matched) return absl::UnauthenticatedError("no webhook-signature matches");
  return absl::OkStatus();
}

std::string SignatureVerifier::Sign(std::string_view id, std::string_view timestamp,
                                    std::string_view body) const {
  return absl::StrCat("v1,", absl::Base64Escape(Mac(keys_.front(), id, timestamp, body)));
}

}  // namespace ess::webhook
