#include "adapters/registry.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "adapters/rest/rest_adapter.h"
#include "adapters/sftp_csv/sftp_csv_adapter.h"
#include "adapters/soap/soap_adapter.h"

namespace ess::adapters {

absl::Status Registry::Register(std::unique_ptr<AdapterFactory> factory) {
  std::string name(factory->name());
  auto [it, inserted] = factories_.try_emplace(name, std::move(factory));
  if (!inserted) {
    return absl::AlreadyExistsError(absl::StrCat("adapter \"", name, "\" is registered twice"));
  }
  return absl::OkStatus();
}

const AdapterFactory* Registry::Find(std::string_view name) const {
  auto it = factories_.find(absl::string_view(name.data(), name.size()));
  return it == factories_.end() ? nullptr : it->second.get();
}

std::vector<std::string> Registry::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, f] : factories_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

config::SettingsTypeResolver Registry::SettingsResolver() const {
  return [this](std::string_view name) -> const google::protobuf::Descriptor* {
    const AdapterFactory* f = Find(name);
    return f ? f->settings_type() : nullptr;
  };
}

absl::StatusOr<std::unique_ptr<Adapter>> Registry::Create(const ess::v1::PartnerConfig& partner,
                                                          const AdapterContext& context) const {
  const AdapterFactory* f = Find(partner.adapter());
  if (f == nullptr) {
    return absl::NotFoundError(absl::StrCat("partner \"", partner.name(), "\": unknown adapter \"",
                                            partner.adapter(),
                                            "\" (known: ", absl::StrJoin(Names(), ", "), ")"));
  }
  return f->Create(partner, context);
}

const Registry& BuiltinRegistry() {
  static const Registry* registry = [] {
    auto* r = new Registry();
    // Every built-in adapter kind, in one place.
    (void)r->Register(std::make_unique<rest::RestAdapterFactory>());
    (void)r->Register(std::make_unique<soap::SoapAdapterFactory>());
    (void)r->Register(std::make_unique<sftp_csv::SftpCsvAdapterFactory>());
    return r;
  }();
  return *registry;
}

}  // namespace ess::adapters
