// Loading and validating the hub config (proto/ess/v1/config.proto) from YAML or JSON.
//
// The file is walked against the proto schema, so every error names the file, the line and
// the field path:  "hub.yaml:14:7: partners[0].outbound.mapping[1].target: must not be empty".
// A partner's `settings` map is parsed into the typed message of its adapter (the resolver
// maps the adapter name to that message type; the adapter registry provides one).
// After parsing, defaults are filled in (see the comments in config.proto), relative file paths
// are taken from the config file's folder, and the whole config is validated.
//
//   absl::StatusOr<ess::v1::HubConfig> cfg = ess::config::LoadFile(path, resolver);
//   if (!cfg.ok()) { std::cerr << cfg.status().message(); return 2; }
#ifndef ESS_COMMON_CONFIG_H_
#define ESS_COMMON_CONFIG_H_

#include <functional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/webhook_signature.h"
#include "ess/v1/config.pb.h"
#include "google/protobuf/descriptor.h"

namespace ess::config {

// Returns the settings message type of an adapter kind, or nullptr if there is no such kind.
using SettingsTypeResolver =
    std::function<const google::protobuf::Descriptor*(std::string_view adapter)>;

// A service's own check of a partner it will serve (e.g. building its adapter), run last for
// each partner. An error "partners[NAME].settings.FIELD: what" (the adapters' form) comes back
// from the loader as "FILE:LINE:COL: partners[INDEX].settings.FIELD: what".
using PartnerCheck = std::function<absl::Status(const ess::v1::PartnerConfig& partner)>;

// INVALID_ARGUMENT with "FILE:LINE:COL: FIELD: what" for a bad file; NOT_FOUND if it cannot
// be read. With a null resolver, partner settings are not parsed (tools that do not need them).
absl::StatusOr<ess::v1::HubConfig> LoadFile(const std::string& path,
                                            const SettingsTypeResolver& resolver = nullptr,
                                            const PartnerCheck& check = nullptr);
// Same from text; `file_name` is used in messages and `base_dir` for relative paths.
absl::StatusOr<ess::v1::HubConfig> LoadString(std::string_view text, std::string_view file_name,
                                              std::string_view base_dir,
                                              const SettingsTypeResolver& resolver = nullptr,
                                              const PartnerCheck& check = nullptr);

// The verifier of a route's webhook signatures, with the secrets of the environment variable
// `auth.secrets_env` (FAILED_PRECONDITION when it is not set; INVALID_ARGUMENT naming a bad
// secret by position, never by value). Loading a config does not read the secrets (only
// inbound_svc needs them): inbound_svc calls this at start.
absl::StatusOr<webhook::SignatureVerifier> WebhookVerifier(const ess::v1::WebhookAuth& auth);

}  // namespace ess::config

#endif  // ESS_COMMON_CONFIG_H_
