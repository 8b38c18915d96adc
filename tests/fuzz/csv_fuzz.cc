// csv::Read on any bytes: no crash, line numbers that never go back, and every record it reads
// survives AppendRecord -> Read unchanged (one record, the same fields, no error). This found
// the two writer fixes in tests/adapters/csv_test.cc.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "adapters/csv/csv.h"

namespace csv = ess::adapters::csv;
using Fields = std::vector<std::string>;

namespace {

std::vector<Fields> ReadAll(std::string_view data, int* errors) {
  std::vector<Fields> records;
  uint64_t last_line = 0;
  (void)csv::Read(
      data,
      [&](uint64_t line, std::span<const std::string> fields) {
        if (line == 0 || line < last_line) {
          std::fprintf(stderr, "record line %lu after %lu\n", line, last_line);
          std::abort();
        }
        last_line = line;
        records.emplace_back(fields.begin(), fields.end());
      },
      [&](uint64_t line, std::string_view) {
        if (line == 0) std::abort();
        ++*errors;
      });
  return records;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int errors = 0;
  const std::vector<Fields> records =
      ReadAll(std::string_view(reinterpret_cast<const char*>(data), size), &errors);
  for (const Fields& record : records) {
    const std::vector<std::string_view> views(record.begin(), record.end());
    std::string written;
    csv::AppendRecord(views, &written);
    int back_errors = 0;
    const std::vector<Fields> back = ReadAll(written, &back_errors);
    if (back_errors != 0 || back.size() != 1 || back[0] != record) {
      std::fprintf(stderr, "round trip of a %zu-field record: %zu records, %d errors\n",
                   record.size(), back.size(), back_errors);
      std::abort();
    }
  }
  return 0;
}
