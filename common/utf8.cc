#include "common/utf8.h"

#include <rapidjson/encodings.h>
#include <rapidjson/memorystream.h>

#include <string>

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

namespace {

bool Continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

}  // namespace

std::string Cut(std::string text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  auto marker = [](size_t cut) { return "... [cut: " + std::to_string(cut) + " bytes more]"; };
  // The marker with the most digits it can need leaves room for any head.
  const size_t room = marker(text.size()).size();
  if (max_bytes <= room) return marker(text.size()).substr(0, max_bytes);
  size_t head = max_bytes - room;
  while (head > 0 && Continuation(text[head])) --head;  // text[head] starts the cut part
  const size_t cut = text.size() - head;
  text.resize(head);
  text.append(marker(cut));
  return text;
}

std::string KeepTail(std::string text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  size_t start = text.size() - max_bytes;
  while (start < text.size() && Continuation(text[start])) ++start;
  text.erase(0, start);
  return text;
}

}  // namespace ess::utf8
