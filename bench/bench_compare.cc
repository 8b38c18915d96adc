// bench_compare: an A/B of ess_bench results, figure by figure (see compare.h).
//
//   for round in 1 2; do
//     build/bin/ess_bench --scenarios inbound --results_dir /tmp/ab/base
//     build/bin/ess_bench --scenarios inbound --results_dir /tmp/ab/test --bin_dir /tmp/variant
//   done
//   build/bin/bench_compare --base /tmp/ab/base --test /tmp/ab/test
//
// Exits 0 with the table, 1 when a result cannot be read (naming the file), 2 on bad usage.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"
#include "bench/compare.h"
#include "common/cli.h"

ABSL_FLAG(std::string, base, "",
          "Results of the base: JSON files or folders of them, comma-separated.");
ABSL_FLAG(std::string, test, "",
          "Results of the test: JSON files or folders of them, comma-separated.");

namespace {

// The files named by `list` (folders: their *.json, sorted), read; false after printing why.
bool ReadAll(const std::string& flag, const std::string& list,
             std::vector<ess::bench::Results>* out) {
  std::vector<std::string> files;
  for (const std::string& item :
       std::vector<std::string>(absl::StrSplit(list, ',', absl::SkipEmpty()))) {
    std::error_code ec;
    if (std::filesystem::is_directory(item, ec)) {
      std::vector<std::string> found;
      for (const auto& entry : std::filesystem::directory_iterator(item, ec)) {
        if (entry.path().extension() == ".json") found.push_back(entry.path().string());
      }
      if (found.empty()) {
        std::cerr << "bench_compare: --" << flag << ": no .json file in " << item << "\n";
        return false;
      }
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else {
      files.push_back(item);
    }
  }
  if (files.empty()) {
    std::cerr << "bench_compare: --" << flag << " is required\n";
    return false;
  }
  for (const std::string& file : files) {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      std::cerr << "bench_compare: --" << flag << ": cannot read " << file << "\n";
      return false;
    }
    out->push_back({.source = file,
                    .json = std::string(std::istreambuf_iterator<char>(in),
                                        std::istreambuf_iterator<char>())});
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args =
      ess::cli::Parse(argc, argv, "bench_compare --base FILES_OR_FOLDERS --test FILES_OR_FOLDERS");
  if (!args.empty()) {
    std::cerr << "bench_compare: unexpected argument " << args[0] << "\n";
    return 2;
  }
  std::vector<ess::bench::Results> base, test;
  if (!ReadAll("base", absl::GetFlag(FLAGS_base), &base) ||
      !ReadAll("test", absl::GetFlag(FLAGS_test), &test)) {
    return absl::GetFlag(FLAGS_base).empty() || absl::GetFlag(FLAGS_test).empty() ? 2 : 1;
  }
  absl::StatusOr<std::vector<ess::bench::CompareRow>> rows = ess::bench::Compare(base, test);
  if (!rows.ok()) {
    std::cerr << "bench_compare: " << rows.status().message() << "\n";
    return 1;
  }
  std::cout << ess::bench::FormatComparison(*rows, base.size(), test.size());
  return 0;
}
