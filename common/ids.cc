#include "common/ids.h"

#include <openssl/evp.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/utf8.h"

namespace ess::ids {

std::string ShortHash(std::string_view text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(text.data(), text.size(), digest, &len, EVP_sha256(), nullptr);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), 8));
}

absl::Status Check(std::string_view id, std::string_view what) {
  const absl::string_view name(what.data(), what.size());
  if (id.empty()) return absl::InvalidArgumentError(absl::StrCat(name, ": empty"));
  if (id.size() > kMaxBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": ", id.size(), " bytes; at most ", kMaxBytes));
  }
  if (const size_t at = utf8::FirstInvalid(id); at != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": not UTF-8 (byte ", at, " is 0x",
                     absl::BytesToHexString(absl::string_view(id.data() + at, 1)), ")"));
  }
  for (size_t i = 0; i < id.size(); ++i) {
    const auto c = static_cast<unsigned char>(id[i]);
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": control character 0x",
                       absl::BytesToHexString(absl::string_view(&id[i], 1)), " at byte ", i));
    }
  }
  return absl::OkStatus();
}

std::string Fit(std::string id) {
  if (id.size() <= kMaxBytes) return id;
  const std::string hash = ShortHash(id);
  size_t head = kMaxBytes - 1 - hash.size();
  // Back to the start of a character: continuation bytes are 10xxxxxx.
  while (head > 0 && (static_cast<unsigned char>(id[head]) & 0xC0) == 0x80) --head;
  id.resize(head);
  absl::StrAppend(&id, "~", hash);
  return id;
}

std::string ContentId(std::string_view id, std::string_view body) {
  if (id.empty()) return ShortHash(body);
  return Fit(absl::StrCat(absl::string_view(id.data(), id.size()), ":", ShortHash(body)));
}

}  // namespace ess::ids
