#include "common/webhook_signature.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

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

// An HMAC-SHA256 context keyed with `key`, or null if OpenSSL cannot make one.
std::shared_ptr<const EVP_MAC_CTX> KeyedHmac(const std::string& key) {
  std::unique_ptr<EVP_MAC, decltype(&EVP_MAC_free)> hmac(EVP_MAC_fetch(nullptr, "HMAC", nullptr),
                                                         &EVP_MAC_free);
  if (hmac == nullptr) return nullptr;
  std::shared_ptr<EVP_MAC_CTX> ctx(EVP_MAC_CTX_new(hmac.get()), &EVP_MAC_CTX_free);
  if (ctx == nullptr) return nullptr;
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end(),
  };
  if (EVP_MAC_init(ctx.get(), reinterpret_cast<const unsigned char*>(key.data()), key.size(),
                   params) != 1) {
    return nullptr;
  }
  return ctx;
}

// HMAC-SHA256 of "id.timestamp.body" under the key of `keyed`; empty if OpenSSL fails (which
// then matches no signature).
std::string Mac(const EVP_MAC_CTX& keyed, std::string_view id, std::string_view timestamp,
                std::string_view body) {
  std::unique_ptr<EVP_MAC_CTX, decltype(&EVP_MAC_CTX_free)> ctx(EVP_MAC_CTX_dup(&keyed),
                                                                &EVP_MAC_CTX_free);
  if (ctx == nullptr) return {};
  bool ok = true;
  for (std::string_view part :
       {id, std::string_view("."), timestamp, std::string_view("."), body}) {
    ok = ok && EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(part.data()),
                              part.size()) == 1;
  }
  unsigned char mac[EVP_MAX_MD_SIZE];
  size_t len = 0;
  if (!ok || EVP_MAC_final(ctx.get(), mac, &len, sizeof(mac)) != 1) return {};
  return std::string(reinterpret_cast<const char*>(mac), len);
}

}  // namespace

absl::StatusOr<SignatureVerifier> SignatureVerifier::Create(const std::vector<std::string>& secrets,
                                                            absl::Duration tolerance) {
  if (secrets.empty()) return absl::InvalidArgumentError("no signing secret");
  std::vector<KeyedMac> keys;
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
    KeyedMac keyed = KeyedHmac(key);
    if (keyed == nullptr) return absl::InternalError("OpenSSL has no HMAC-SHA256");
    keys.push_back(std::move(keyed));
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
  for (const KeyedMac& key : keys_) macs.push_back(Mac(*key, id, timestamp, body));
  bool matched = false;
  for (absl::string_view entry : absl::StrSplit(ToAbsl(signatures), ' ', absl::SkipEmpty())) {
    if (!absl::ConsumePrefix(&entry, "v1,")) continue;  // other schemes are not ours
    std::string given;
    if (!absl::Base64Unescape(entry, &given) || given.size() != kMacBytes) continue;
    for (const std::string& mac : macs) {
      matched |= mac.size() == kMacBytes && CRYPTO_memcmp(given.data(), mac.data(), kMacBytes) == 0;
    }
  }
  if (!matched) return absl::UnauthenticatedError("no webhook-signature matches");
  return absl::OkStatus();
}

std::string SignatureVerifier::Sign(std::string_view id, std::string_view timestamp,
                                    std::string_view body) const {
  return absl::StrCat("v1,", absl::Base64Escape(Mac(*keys_.front(), id, timestamp, body)));
}

}  // namespace ess::webhook
