// A partner's CSV file, any bytes, through the sftp_csv adapter's Pull (header row, then one
// event per row through the inbound mapping): no crash; each bad row is reported once, with a
// line that never goes back; each event is a SlotConfirmed with its id.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "adapters/sftp_csv/sftp_csv_adapter.h"
#include "ess/v1/adapters.pb.h"
#include "ess/v1/config.pb.h"

namespace adapters = ess::adapters;

namespace {

adapters::sftp_csv::SftpCsvAdapter& Adapter() {
  static adapters::sftp_csv::SftpCsvAdapter* adapter = [] {
    // The settings name a key and known_hosts that only have to exist: nothing connects.
    static const std::filesystem::path dir =
        std::filesystem::temp_directory_path() / ("ess_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    std::atexit([] { std::filesystem::remove_all(dir); });
    std::ofstream(dir / "id") << "not a key\n";
    std::ofstream(dir / "known_hosts") << "";
    ess::v1::SftpCsvAdapterConfig settings;
    settings.set_host("127.0.0.1");
    settings.set_port(1);
    settings.set_user("ess");
    settings.set_private_key_file((dir / "id").string());
    settings.set_known_hosts_file((dir / "known_hosts").string());
    settings.set_remote_dir("/drop/");
    ess::v1::PartnerConfig partner;
    partner.set_name("probation");
    partner.set_adapter("sftp_csv");
    partner.mutable_settings()->PackFrom(settings);
    auto add = [&](const char* target, const char* source, const char* constant) {
      ess::v1::FieldMapping* f = partner.mutable_inbound()->add_mapping();
      f->set_target(target);
      f->set_source(source);
      f->set_constant(constant);
      return f;
    };
    add("type", "", "SlotConfirmed");
    add("id", "correlation_id", "");
    add("status", "status", "");
    add("note", "note", "")->set_default_value("none");
    auto created = adapters::sftp_csv::SftpCsvAdapter::Create(partner);
    if (!created.ok()) {
      std::fprintf(stderr, "%s\n", std::string(created.status().message()).c_str());
      std::abort();
    }
    return created->release();
  }();
  return *adapter;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<adapters::PullError> errors;
  auto events = Adapter().Pull(
      {.body = std::string_view(reinterpret_cast<const char*>(data), size), .errors = &errors});
  uint64_t last_line = 0;
  for (const adapters::PullError& e : errors) {
    if (e.line == 0 || e.line <= last_line || e.message.empty()) std::abort();
    last_line = e.line;
  }
  if (!events.ok()) return 0;
  for (const adapters::InboundEvent& e : *events) {
    if (e.event_type != "SlotConfirmed" || e.correlation_id.empty()) std::abort();
  }
  return 0;
}
