#include "common/cli.h"

#include <dlfcn.h>
#include <string.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"

ABSL_FLAG(std::string, config, "", "Path of the hub config file (YAML or JSON).");

namespace ess::cli {

namespace {

bool OwnFlagFile(absl::string_view file) {
  return absl::StrContains(file, "_svc/") || absl::StrContains(file, "tools/") ||
         absl::StrContains(file, "bench/") || absl::StrContains(file, "common/cli");
}

// --help: the usage text and this project's flags, on stdout, exit 0 (Abseil's own handling
// exits 1, which reads as a failure to scripts).
[[noreturn]] void PrintHelp(const std::string& usage) {
  std::cout << "usage: " << usage << "\n\nflags:\n";
  std::vector<std::pair<std::string, const absl::CommandLineFlag*>> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (OwnFlagFile(flag->Filename())) flags.emplace_back(std::string(name), flag);
  }
  std::sort(flags.begin(), flags.end());
  for (const auto& [name, flag] : flags) {
    std::cout << "  --" << name << "  " << flag->Help();
    if (!flag->DefaultValue().empty()) std::cout << " (default: " << flag->DefaultValue() << ")";
    std::cout << "\n";
  }
  std::exit(0);
}

// An unknown flag, or a value its flag cannot take, is a usage error: exit 2 naming it
// (Abseil's own parsing exits 1 on a bad value, which reads as a failure to scripts).
void CheckFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    // A lone "-" is an argument (stdin, by convention), as Abseil's parse takes it too.
    if (arg == "-") continue;
    if (!absl::ConsumePrefix(&arg, "--") && !absl::ConsumePrefix(&arg, "-")) continue;
    const size_t eq = arg.find('=');
    absl::string_view name = arg.substr(0, eq);
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) {
      if (absl::ConsumePrefix(&name, "no") && absl::FindCommandLineFlag(name) != nullptr) continue;
      std::cerr << "error: unknown flag --" << name << " (see --help)\n";
      std::exit(2);
    }
    std::string value;
    if (eq != absl::string_view::npos) {
      value = std::string(arg.substr(eq + 1));
    } else if (flag->IsOfType<bool>()) {
      continue;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::cerr << "error: --" << name << " needs a value (see --help)\n";
      std::exit(2);
    }
    // Parsed here only to be checked; Abseil's parse below sets the same value.
    if (std::string error; !flag->ParseFrom(value, &error)) {
      std::cerr << "error: --" << name << " " << value << ": " << error << " (see --help)\n";
      std::exit(2);
    }
  }
}

// "--dry-run" is accepted for "--dry_run": flag names are written with underscores, people
// type dashes.
void NormalizeDashes(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    char* arg = argv[i];
    if (std::string_view(arg) == "--") break;
    if (arg[0] != '-') continue;
    char* name = arg + (arg[1] == '-' ? 2 : 1);
    for (char* c = name; *c != '\0' && *c != '='; ++c) {
      if (*c == '-') *c = '_';
    }
  }
}

}  // namespace

std::vector<std::string> Parse(int argc, char** argv, const std::string& usage) {
  // Debian builds Abseil without NDEBUG, which leaves Mutex deadlock detection on: a global lock
  // and a graph update on every acquisition (about 3x the cost of a lock, gRPC's included).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  NormalizeDashes(argc, argv);
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg == "--help" || arg == "-help" || arg == "-h") PrintHelp(usage);
  }
  CheckFlags(argc, argv);
  absl::FlagsUsageConfig usage_config;
  // --helpfull still lists everything; --helpshort lists this project's flags.
  usage_config.contains_help_flags = OwnFlagFile;
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

std::string SignalName(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev != nullptr ? absl::StrCat("SIG", abbrev) : absl::StrCat("signal ", sig);
}

std::string MallocLibrary() {
  // The first definition in the global scope is the one every library's call binds to.
  void* malloc_fn = dlsym(RTLD_DEFAULT, "malloc");
  Dl_info info{};
  if (malloc_fn == nullptr || dladdr(malloc_fn, &info) == 0 || info.dli_fname == nullptr) {
    return "unknown";
  }
  std::string_view path = info.dli_fname;
  return std::string(path.substr(path.rfind('/') + 1));
}

}  // namespace ess::cli
