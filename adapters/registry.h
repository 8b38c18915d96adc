// The registry of adapter kinds: factories by name.
//
// Built-in kinds are listed in one place, BuiltinRegistry() (registry.cc), not registered by
// static initializers that a static library could drop.
//
//   const Registry& registry = BuiltinRegistry();
//   auto cfg = ess::config::LoadFile(path, registry.SettingsResolver());
//   auto adapter = registry.Create(cfg->partners(0), context);
#ifndef ESS_ADAPTERS_REGISTRY_H_
#define ESS_ADAPTERS_REGISTRY_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "adapters/adapter.h"
#include "common/config.h"

namespace ess::adapters {

class Registry {
 public:
  // ALREADY_EXISTS for a second factory of the same name.
  absl::Status Register(std::unique_ptr<AdapterFactory> factory);
  // nullptr when unknown.
  const AdapterFactory* Find(std::string_view name) const;
  std::vector<std::string> Names() const;
  // For ess::config::LoadFile: adapter name -> settings type.
  config::SettingsTypeResolver SettingsResolver() const;
  // NOT_FOUND "unknown adapter ..." or the factory's error.
  absl::StatusOr<std::unique_ptr<Adapter>> Create(const ess::v1::PartnerConfig& partner,
                                                  const AdapterContext& context) const;

 private:
  absl::flat_hash_map<std::string, std::unique_ptr<AdapterFactory>> factories_;
};

// Every adapter kind this build knows: "rest".
const Registry& BuiltinRegistry();

}  // namespace ess::adapters

#endif  // ESS_ADAPTERS_REGISTRY_H_
