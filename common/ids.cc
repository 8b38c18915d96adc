#include "common/ids.h"

#include <openssl/evp.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace ess::ids {

std::string ShortHash(std::string_view text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(text.data(), text.size(), digest, &len, EVP_sha256(), nullptr);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), 8));
}

std::string ContentId(std::string_view id, std::string_view body) {
  if (id.empty()) return ShortHash(body);
  return absl::StrCat(absl::string_view(id.data(), id.size()), ":", ShortHash(body));
}

}  // namespace ess::ids
