// PEM files the hub is given (TLS CAs, certificates, keys): read and checked with OpenSSL when a
// service starts, so that a file that cannot serve is refused at once, naming its setting,
// instead of failing each call that would use it.
//
//   absl::Status s = ess::CheckCertificateFile(path, "partners[x].settings.ca_file");
#ifndef ESS_COMMON_PEM_H_
#define ESS_COMMON_PEM_H_

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ess {

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct EvpPkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, EvpPkeyFree>;

// The text of the PEM file at `path`. FAILED_PRECONDITION "FIELD: ..." when it cannot be read
// or holds no PEM block.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, std::string_view field);

// The first certificate of `pem`, or null when it holds none OpenSSL can read.
X509Ptr ReadCertificate(std::string_view pem);

// The first private key of `pem`, or null when it holds none OpenSSL can read. No passphrase is
// asked for (OpenSSL would prompt on the terminal): an encrypted key is no key.
EvpPkeyPtr ReadPrivateKey(std::string_view pem);

// OK when the file at `path` holds at least one PEM certificate OpenSSL can read (a CA
// bundle). FAILED_PRECONDITION "FIELD: ..." naming the path and what is wrong, never the file's
// text.
absl::Status CheckCertificateFile(const std::string& path, std::string_view field);

}  // namespace ess

#endif  // ESS_COMMON_PEM_H_
