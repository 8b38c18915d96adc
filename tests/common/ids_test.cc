#include "common/ids.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "common/utf8.h"

namespace ess {
namespace {

TEST(Utf8Test, TellsWellFormedTextFromTheRest) {
  EXPECT_TRUE(utf8::Valid(""));
  EXPECT_TRUE(utf8::Valid("VIS-77"));
  EXPECT_TRUE(utf8::Valid("Zo\xC3\xAB \xE2\x82\xAC \xF0\x9F\x98\x80"));  // ë, €, an emoji
  EXPECT_EQ(utf8::FirstInvalid("VIS-\xFF"), 4u);                         // not a lead byte
  EXPECT_EQ(utf8::FirstInvalid("caf\xE9!"), 3u);                         // Latin-1 é
  EXPECT_EQ(utf8::FirstInvalid("ab\xC0\xAF"), 2u);                       // overlong '/'
  EXPECT_EQ(utf8::FirstInvalid("\xED\xA0\x80"), 0u);                     // a UTF-16 surrogate
  EXPECT_EQ(utf8::FirstInvalid("\xF4\x90\x80\x80"), 0u);                 // above U+10FFFF
  EXPECT_EQ(utf8::FirstInvalid("ok\xE2\x82"), 2u);                       // cut short
}

TEST(Utf8Test, RepairReplacesEachBadByteAndKeepsTheRest) {
  EXPECT_EQ(utf8::Repair("caf\xE9 ok \xC3\xAB"), "caf\xEF\xBF\xBD ok \xC3\xAB");
  EXPECT_EQ(utf8::Repair("\xFF\xFE"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(utf8::Repair("fine"), "fine");
}

// A partner's long error text bound for a header: cut on a character boundary, marked with
// how much was cut, within the bound; a text that fits is left alone.
TEST(Utf8Test, CutKeepsAHeadOfWholeCharactersAndSaysHowMuchWasCut) {
  EXPECT_EQ(utf8::Cut("short", 64), "short");
  const std::string big(200'000, 'x');
  const std::string cut = utf8::Cut(big, 2048);
  EXPECT_LE(cut.size(), 2048u);
  EXPECT_GE(cut.size(), 2000u);
  const std::string marker = absl::StrCat("... [cut: ", big.size() - cut.find('.'), " bytes more]");
  EXPECT_EQ(cut, std::string(cut.find('.'), 'x') + marker);
  // Euro signs (3 bytes each): never cut inside one, and still valid UTF-8.
  std::string euros;
  for (int i = 0; i < 1000; ++i) euros += "\xE2\x82\xAC";
  for (size_t max = 64; max < 200; ++max) {
    const std::string c = utf8::Cut(euros, max);
    EXPECT_LE(c.size(), max);
    EXPECT_TRUE(utf8::Valid(c)) << max;
    EXPECT_EQ(c.find("... [cut: ") % 3, 0u) << max;
  }
  EXPECT_EQ(utf8::Cut(big, 10).size(), 10u);  // too small for the marker: the marker, cut
}

TEST(Utf8Test, KeepTailStartsOnACharacterBoundary) {
  EXPECT_EQ(utf8::KeepTail("fine", 10), "fine");
  std::string euros;
  for (int i = 0; i < 10; ++i) euros += "\xE2\x82\xAC";
  EXPECT_EQ(utf8::KeepTail(euros, 8), "\xE2\x82\xAC\xE2\x82\xAC");
  EXPECT_EQ(utf8::KeepTail("abcdef", 3), "def");
}

TEST(IdsTest, CheckTakesWhatEveryHopCanCarryAndNamesWhatIsWrong) {
  EXPECT_TRUE(ids::Check("VIS-77", "id").ok());
  EXPECT_TRUE(ids::Check("visite de Zo\xC3\xAB", "id").ok());  // UTF-8 and spaces are fine
  EXPECT_TRUE(ids::Check(std::string(255, 'x'), "id").ok());

  absl::Status s = ids::Check("", "webhook-id");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "webhook-id: empty");
  EXPECT_EQ(ids::Check(std::string(256, 'x'), "the event's id").message(),
            "the event's id: 256 bytes; at most 255");
  EXPECT_EQ(ids::Check("VIS-\xE9", "id").message(), "id: not UTF-8 (byte 4 is 0xe9)");
  EXPECT_EQ(ids::Check("VIS-2\r\nX-Injected: yes", "id").message(),
            "id: control character 0x0d at byte 5");
  EXPECT_EQ(ids::Check(std::string("a\0b", 3), "id").message(),
            "id: control character 0x00 at byte 1");
  EXPECT_EQ(ids::Check("a\x7f", "id").message(), "id: control character 0x7f at byte 1");
}

TEST(IdsTest, FitKeepsShortIdsAndShortensLongOnesUniquely) {
  EXPECT_EQ(ids::Fit("VIS-77:SlotConfirmed"), "VIS-77:SlotConfirmed");
  const std::string at_limit(255, 'a');
  EXPECT_EQ(ids::Fit(at_limit), at_limit);

  const std::string a = std::string(300, 'a') + "1";
  const std::string b = std::string(300, 'a') + "2";
  const std::string fa = ids::Fit(a);
  EXPECT_LE(fa.size(), ids::kMaxBytes);
  EXPECT_EQ(fa.substr(0, 200), a.substr(0, 200));  // still readable
  EXPECT_NE(fa, ids::Fit(b));                      // and still unique
  EXPECT_EQ(fa, ids::Fit(a));                      // and stable
  EXPECT_TRUE(ids::Check(fa, "id").ok()) << fa;

  // Never cut inside a character: 200 two-byte characters (400 bytes).
  std::string wide;
  for (int i = 0; i < 200; ++i) wide += "\xC3\xAB";
  const std::string fw = ids::Fit(wide);
  EXPECT_LE(fw.size(), ids::kMaxBytes);
  EXPECT_TRUE(utf8::Valid(fw)) << fw;
}

TEST(IdsTest, ContentIdsFitWhateverTheIdsLength) {
  const std::string id(255, 'v');
  const std::string made = ids::ContentId(id, R"({"id":"vvv"})");
  EXPECT_LE(made.size(), ids::kMaxBytes);
  EXPECT_NE(made, ids::ContentId(id, R"({"id":"vvv","x":1})"));
  EXPECT_EQ(ids::ContentId("VIS-77", "{}").substr(0, 7), "VIS-77:");
}

}  // namespace
}  // namespace ess
