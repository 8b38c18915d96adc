// CSV as RFC 4180 has it: writing records and reading them back, for adapters that exchange
// files with partners.
//
// Writing: fields separated by commas, records ended by CRLF; a field is quoted (with its quotes
// doubled) when it holds a comma, a quote, CR or LF, starts or ends with a space or tab (so
// that readers which trim unquoted fields keep it whole), or starts with U+FEFF (which a reader
// takes for a byte order mark at the start of a file). A record of one empty field is written
// "" (an empty line would be skipped). Bytes are written as given (UTF-8 in, UTF-8 out).
//
//   std::string out;
//   csv::AppendRecord({"id", "name"}, &out);          // id,name\r\n
//   csv::AppendRecord({"VIS-77", "O'Neil, \"Jo\""}, &out);  // VIS-77,"O'Neil, ""Jo"""\r\n
//
// Reading goes through libcsv in strict mode, record by record, and survives bad records: a
// record with malformed quoting (a quote inside an unquoted field, text after a closing quote,
// a quoted field never closed) is reported with the line it starts on, and reading resumes on the
// next line. Quoted fields may hold commas, quotes and line breaks; spaces are data (never
// trimmed); empty lines are skipped; a UTF-8 byte order mark at the start is skipped.
//
//   absl::Status s = csv::Read(data,
//       [](uint64_t line, std::span<const std::string> fields) { ... },
//       [](uint64_t line, std::string_view message) { ... });
#ifndef ESS_ADAPTERS_CSV_CSV_H_
#define ESS_ADAPTERS_CSV_CSV_H_

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"

namespace ess::adapters::csv {

// Appends one field, quoted when needed (see the file comment). No separator, no line end.
void AppendField(std::string_view value, std::string* out);

// Appends one record: the fields separated by commas, then CRLF.
void AppendRecord(std::span<const std::string_view> fields, std::string* out);
void AppendRecord(std::initializer_list<std::string_view> fields, std::string* out);

// Called for each well-formed record with the 1-based line it starts on.
using RecordFn = absl::FunctionRef<void(uint64_t line, std::span<const std::string> fields)>;
// Called for each malformed record with the 1-based line it starts on and what is wrong,
// e.g. "malformed quoting at line 7, column 12".
using ErrorFn = absl::FunctionRef<void(uint64_t line, std::string_view message)>;

// Reads every record of `data` in order. Malformed records go to `on_error` and do not stop the
// reading. Returns RESOURCE_EXHAUSTED only if a field outgrows memory; OK otherwise.
absl::Status Read(std::string_view data, RecordFn on_record, ErrorFn on_error);

}  // namespace ess::adapters::csv

#endif  // ESS_ADAPTERS_CSV_CSV_H_
