// Command-line handling shared by every binary: absl flags with a usage text, --help that
// lists the binary's own flags, and the --config flag that every service takes.
//
//   ABSL_FLAG(bool, dry_run, false, "...");           // in main.cc, optional
//   int main(int argc, char** argv) {
//     auto args = ess::cli::Parse(argc, argv, "outbound_svc --config PATH [--dry_run]");
//     ...
//   }
#ifndef ESS_COMMON_CLI_H_
#define ESS_COMMON_CLI_H_

#include <string>
#include <vector>

namespace ess::cli {

// Parses the flags (exits 0 after printing --help, exits 2 naming an unknown flag; a flag
// value that does not parse exits 1 with Abseil's message) and returns the
// positional arguments (argv[0] excluded).
std::vector<std::string> Parse(int argc, char** argv, const std::string& usage);

// The value of --config, exiting 2 with a message if it was not given.
std::string RequiredConfigPath();

// Blocks SIGINT and SIGTERM in the calling thread and in every thread it starts afterwards.
// Call first thing in main(), before any thread exists.
void BlockTerminationSignals();
// Waits for SIGINT or SIGTERM (blocked before) and returns its number.
int WaitForTerminationSignal();
// A signal's name as the services log it: "SIGTERM" for 15.
std::string SignalName(int sig);

// The file name of the library whose malloc this process uses, as the dynamic linker resolved
// it: "libjemalloc.so.2" for a service built with ESS_MALLOC=jemalloc, "libc.so.6" otherwise.
// The services log it when they start.
std::string MallocLibrary();

}  // namespace ess::cli

#endif  // ESS_COMMON_CLI_H_
