#include "common/pem.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/sv.h"

namespace ess {
namespace {

int NoPassphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*u*/) { return -1; }

}  // namespace

absl::StatusOr<std::string> ReadPemFile(const std::string& path, std::string_view field) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  if (in) text << in.rdbuf();
  if (!in || in.bad()) {
    return absl::FailedPreconditionError(absl::StrCat(ToAbsl(field), ": cannot read ", path));
  }
  std::string pem = text.str();
  if (pem.find("-----BEGIN ") == std::string::npos) {
    return absl::FailedPreconditionError(
        absl::StrCat(ToAbsl(field), ": ", path, " holds no PEM block"));
  }
  return pem;
}

X509Ptr ReadCertificate(std::string_view pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* cert = bio != nullptr ? PEM_read_bio_X509(bio, nullptr, &NoPassphrase, nullptr) : nullptr;
  BIO_free(bio);
  ERR_clear_error();
  return X509Ptr(cert);
}

EvpPkeyPtr ReadPrivateKey(std::string_view pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* key =
      bio != nullptr ? PEM_read_bio_PrivateKey(bio, nullptr, &NoPassphrase, nullptr) : nullptr;
  BIO_free(bio);
  ERR_clear_error();
  return EvpPkeyPtr(key);
}

absl::Status CheckCertificateFile(const std::string& path, std::string_view field) {
  absl::StatusOr<std::string> pem = ReadPemFile(path, field);
  if (!pem.ok()) return pem.status();
  if (ReadCertificate(*pem) == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(ToAbsl(field), ": ", path, " holds no PEM certificate that can be read"));
  }
  return absl::OkStatus();
}

}  // namespace ess
