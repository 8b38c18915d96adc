#include "adapters/csv/csv.h"

#include <csv.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace ess::adapters::csv {
namespace {

constexpr std::string_view kUtf8Bom = "\xEF\xBB\xBF";

bool NeedsQuotes(std::string_view v) {
  if (v.empty()) return false;
  if (v.front() == ' ' || v.front() == '\t' || v.back() == ' ' || v.back() == '\t') return true;
  // At the start of a file, readers (this one too) take these bytes for a byte order mark.
  if (v.starts_with(kUtf8Bom)) return true;
  return v.find_first_of(",\"\r\n") != std::string_view::npos;
}

// RFC 4180: spaces belong to the field. libcsv trims spaces and tabs unless told otherwise.
int NoSpace(unsigned char) { return 0; }

bool IsLineEnd(char c) { return c == '\r' || c == '\n'; }

// Parser state shared with libcsv's callbacks.
struct Reading {
  RecordFn* on_record;
  std::vector<std::string> fields;
  uint64_t record_line = 0;
  // No record has begun since the last one ended: the next non-blank line starts one.
  bool record_pending = true;
};

void OnField(void* data, size_t size, void* arg) {
  auto* r = static_cast<Reading*>(arg);
  r->fields.emplace_back(data == nullptr ? "" : std::string(static_cast<char*>(data), size));
}

void OnRecordEnd(int, void* arg) {
  auto* r = static_cast<Reading*>(arg);
  (*r->on_record)(r->record_line, r->fields);
  r->fields.clear();
  r->record_pending = true;
}

class Parser {
 public:
  Parser() { Init(); }
  ~Parser() { csv_free(&p_); }
  Parser(const Parser&) = delete;
  Parser& operator=(const Parser&) = delete;

  // Drops whatever a failed record left behind.
  void Reset() {
    csv_free(&p_);
    Init();
  }
  csv_parser* get() { return &p_; }

 private:
  void Init() {
    csv_init(&p_, CSV_STRICT | CSV_STRICT_FINI);
    csv_set_space_func(&p_, NoSpace);
  }
  csv_parser p_;
};

}  // namespace

void AppendField(std::string_view value, std::string* out) {
  if (!NeedsQuotes(value)) {
    out->append(value);
    return;
  }
  out->push_back('"');
  for (char c : value) {
    if (c == '"') out->push_back('"');
    out->push_back(c);
  }
  out->push_back('"');
}

void AppendRecord(std::span<const std::string_view> fields, std::string* out) {
  // A lone empty field would be an empty line, which readers skip: "" keeps the record.
  if (fields.size() == 1 && fields[0].empty()) {
    out->append("\"\"\r\n");
    return;
  }
  for (size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) out->push_back(',');
    AppendField(fields[i], out);
  }
  out->append("\r\n");
}

void AppendRecord(std::initializer_list<std::string_view> fields, std::string* out) {
  AppendRecord(std::span<const std::string_view>(fields.begin(), fields.size()), out);
}

absl::Status Read(std::string_view data, RecordFn on_record, ErrorFn on_error) {
  if (data.starts_with(kUtf8Bom)) data.remove_prefix(kUtf8Bom.size());
  Parser parser;
  Reading r{.on_record = &on_record};
  // Fed one physical line at a time (CRLF, LF or a lone CR ends one), so that line numbers are
  // known and a malformed record can be skipped up to the end of the line where it failed.
  uint64_t line = 0;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t end = pos;
    while (end < data.size() && !IsLineEnd(data[end])) ++end;
    if (end < data.size()) {
      end += (data[end] == '\r' && end + 1 < data.size() && data[end + 1] == '\n') ? 2 : 1;
    }
    std::string_view chunk = data.substr(pos, end - pos);
    ++line;
    if (r.record_pending && !IsLineEnd(chunk.front())) {
      r.record_line = line;
      r.record_pending = false;
    }
    size_t done = csv_parse(parser.get(), chunk.data(), chunk.size(), OnField, OnRecordEnd, &r);
    if (done < chunk.size()) {
      int error = csv_error(parser.get());
      if (error != CSV_EPARSE) {
        return absl::ResourceExhaustedError(
            absl::StrCat("CSV line ", line, ": ", csv_strerror(error)));
      }
      on_error(r.record_line,
               absl::StrCat("malformed quoting at line ", line, ", column ", done + 1));
      parser.Reset();
      r.fields.clear();
      r.record_pending = true;
    }
    pos = end;
  }
  if (csv_fini(parser.get(), OnField, OnRecordEnd, &r) != 0) {
    on_error(r.record_line, "quoted field not closed before the end of the file");
  }
  return absl::OkStatus();
}

}  // namespace ess::adapters::csv
