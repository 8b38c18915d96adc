#include "common/utf8.h"

#include <rapidjson/encodings.h>
#include <rapidjson/memorystream.h>

namespace ess::utf8 {
namespace {

// Where RapidJSON's validator writes the bytes it accepted: nowhere.
struct Discard {
  void Put(char) {}
};

// The length of the well-formed sequence at the start of `text`, or 0.
size_t SequenceAt(std::string_view text) {
  if (static_cast<unsigned char>(text.front()) < 0x80) return 1;  // ASCII, the common case
  rapidjson::MemoryStream in(text.data(), text.size());
  Discard out;
  // Past the end MemoryStream yields '\0', which is no continuation byte: a cut sequence fails.
  if (!rapidjson::UTF8<>::Validate(in, out)) return 0;
  return in.Tell();
}

}  // namespace

size_t FirstInvalid(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const size_t n = SequenceAt(text.substr(i));
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

bool Valid(std::string_view text) { return FirstInvalid(text) == std::string_view::npos; }

std::string Repair(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const size_t n = SequenceAt(text.substr(i));
    if (n == 0) {
      out.append("\xEF\xBF\xBD");  // U+FFFD REPLACEMENT CHARACTER
      ++i;
    } else {
      out.append(text.substr(i, n));
      i += n;
    }
  }
  return out;
}

}  // namespace ess::utf8
