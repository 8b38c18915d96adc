#include "adapters/csv/csv.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace ess::adapters::csv {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;

struct Parsed {
  std::vector<std::pair<uint64_t, std::vector<std::string>>> records;
  std::vector<std::pair<uint64_t, std::string>> errors;
};

Parsed Parse(std::string_view data) {
  Parsed p;
  absl::Status s = Read(
      data,
      [&](uint64_t line, std::span<const std::string> fields) {
        p.records.emplace_back(line, std::vector<std::string>(fields.begin(), fields.end()));
      },
      [&](uint64_t line, std::string_view message) { p.errors.emplace_back(line, message); });
  EXPECT_TRUE(s.ok()) << s;
  return p;
}

using Fields = std::vector<std::string>;

TEST(CsvWriteTest, QuotesOnlyWhatNeedsIt) {
  std::string out;
  AppendRecord({"plain", "a,b", "say \"hi\"", "two\r\nlines", "lf\nonly", "", " padded"}, &out);
  EXPECT_EQ(out, "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\r\nlines\",\"lf\nonly\",,\" padded\"\r\n");
}

// Both found by fuzzing the round trip (AppendRecord, then Read): each record came back changed
// or not at all.
TEST(CsvWriteTest, ARecordOfOneEmptyFieldIsNotAnEmptyLine) {
  std::string out;
  AppendRecord({"value"}, &out);
  AppendRecord({""}, &out);
  AppendRecord({"last"}, &out);
  EXPECT_EQ(out, "value\r\n\"\"\r\nlast\r\n");
  EXPECT_THAT(Parse(out).records,
              ElementsAre(Pair(1, Fields{"value"}), Pair(2, Fields{""}), Pair(3, Fields{"last"})));
}

TEST(CsvWriteTest, AFieldStartingWithAByteOrderMarkIsQuoted) {
  const std::string bom_first =
      "\xEF\xBB\xBF"
      "id";
  std::string out;
  AppendRecord({bom_first, "x"}, &out);
  EXPECT_EQ(out, "\"" + bom_first + "\",x\r\n");
  // At the start of a file: the field keeps its U+FEFF.
  EXPECT_THAT(Parse(out).records, ElementsAre(Pair(1, Fields{bom_first, "x"})));
}

TEST(CsvWriteTest, KeepsUtf8AsIs) {
  std::string out;
  AppendRecord({"Zoë", "名前", "emoji 🙂"}, &out);
  EXPECT_EQ(out, "Zoë,名前,emoji 🙂\r\n");
}

TEST(CsvReadTest, RoundTripsEveryKindOfValue) {
  const std::vector<Fields> rows = {
      {"id", "name", "note"},
      {"1", "O'Neil, Jo", "said \"hello\""},
      {"2", "", "multi\r\nline\nvalue"},
      {"3", "  spaces kept  ", "tab\tinside"},
      {"4", "Zoë 名前 🙂", ","},
      {"5", "\"", "\r"},
  };
  std::string data;
  for (const Fields& row : rows) {
    std::vector<std::string_view> views(row.begin(), row.end());
    AppendRecord(views, &data);
  }
  Parsed p = Parse(data);
  EXPECT_THAT(p.errors, IsEmpty());
  ASSERT_EQ(p.records.size(), rows.size());
  for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(p.records[i].second, rows[i]) << "row " << i;
  // Lines where each record starts: row 2 spans two physical lines (CRLF) plus a bare LF.
  EXPECT_EQ(p.records[0].first, 1u);
  EXPECT_EQ(p.records[1].first, 2u);
  EXPECT_EQ(p.records[2].first, 3u);
  EXPECT_EQ(p.records[3].first, 6u);
  EXPECT_EQ(p.records[4].first, 7u);
  EXPECT_EQ(p.records[5].first, 8u);
}

TEST(CsvReadTest, EmptyFieldsAndLastLineWithoutLineEnd) {
  Parsed p = Parse("a,,c\r\n,,\r\n\"\",x,\"\"");
  EXPECT_THAT(p.errors, IsEmpty());
  EXPECT_THAT(p.records, ElementsAre(Pair(1, Fields{"a", "", "c"}), Pair(2, Fields{"", "", ""}),
                                     Pair(3, Fields{"", "x", ""})));
}

TEST(CsvReadTest, SkipsBomAndEmptyLinesAndAcceptsLfOrCr) {
  Parsed p = Parse("\xEF\xBB\xBFid,v\n\n1,a\r2,b\r\n\r\n3,c\n");
  EXPECT_THAT(p.errors, IsEmpty());
  EXPECT_THAT(p.records, ElementsAre(Pair(1, Fields{"id", "v"}), Pair(3, Fields{"1", "a"}),
                                     Pair(4, Fields{"2", "b"}), Pair(6, Fields{"3", "c"})));
}

TEST(CsvReadTest, ReportsMalformedQuotingWithLineAndKeepsTheOtherRows) {
  Parsed p = Parse(
      "id,v\r\n"
      "1,ok\r\n"
      "2,bad\"quote\r\n"          // a quote inside an unquoted field
      "3,\"closed\"trailing\r\n"  // text after a closing quote
      "4,\"fine, really\"\r\n");
  EXPECT_THAT(p.records, ElementsAre(Pair(1, Fields{"id", "v"}), Pair(2, Fields{"1", "ok"}),
                                     Pair(5, Fields{"4", "fine, really"})));
  EXPECT_THAT(p.errors, ElementsAre(Pair(3, "malformed quoting at line 3, column 6"),
                                    Pair(4, "malformed quoting at line 4, column 11")));
}

TEST(CsvReadTest, ReportsAMultiLineRecordAtTheLineItStarts) {
  Parsed p = Parse(
      "id,v\r\n"
      "1,\"spans\r\n"
      "two lines\"x\r\n"  // fails on line 3, but the record starts on line 2
      "2,after\r\n");
  EXPECT_THAT(p.records, ElementsAre(Pair(1, Fields{"id", "v"}), Pair(4, Fields{"2", "after"})));
  EXPECT_THAT(p.errors, ElementsAre(Pair(2, "malformed quoting at line 3, column 11")));
}

TEST(CsvReadTest, ReportsAnUnclosedQuoteAtTheEnd) {
  Parsed p = Parse("id,v\r\n1,a\r\n2,\"never closed\r\nmore\r\n");
  EXPECT_THAT(p.records, ElementsAre(Pair(1, Fields{"id", "v"}), Pair(2, Fields{"1", "a"})));
  EXPECT_THAT(p.errors, ElementsAre(Pair(3, "quoted field not closed before the end of the file")));
}

TEST(CsvReadTest, EmptyInput) {
  Parsed p = Parse("");
  EXPECT_THAT(p.records, IsEmpty());
  EXPECT_THAT(p.errors, IsEmpty());
  p = Parse("\r\n\n");
  EXPECT_THAT(p.records, IsEmpty());
}

}  // namespace
}  // namespace ess::adapters::csv
