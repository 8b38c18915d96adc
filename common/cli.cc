#include "common/cli.h"

#include <csignal>
#include <cstdlib>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"

ABSL_FLAG(std::string, config, "", "Path of the hub config file (YAML or JSON).");

namespace ess::cli {

std::vector<std::string> Parse(int argc, char** argv, const std::string& usage) {
  absl::FlagsUsageConfig usage_config;
  // --help lists the flags defined in this project (not Abseil's or gRPC's own).
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "_svc/") || absl::StrContains(file, "tools/") ||
           absl::StrContains(file, "bench/") || absl::StrContains(file, "common/cli");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  usage_config.normalize_filename = [](absl::string_view f) { return std::string(f); };
  absl::SetFlagsUsageConfig(usage_config);
  absl::SetProgramUsageMessage(usage);
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  return {rest.begin() + 1, rest.end()};
}

std::string RequiredConfigPath() {
  std::string path = absl::GetFlag(FLAGS_config);
  if (path.empty()) {
    std::cerr << "error: --config PATH is required (see --help)\n";
    std::exit(2);
  }
  return path;
}

namespace {
sigset_t TerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}
}  // namespace

void BlockTerminationSignals() {
  sigset_t set = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForTerminationSignal() {
  sigset_t set = TerminationSignals();
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

}  // namespace ess::cli
