#include "common/json.h"

#include <rapidjson/encodedstream.h>
#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace ess::json {
namespace {

// Hands the reader's events on to the document, refusing to open a level deeper than kMaxDepth,
// and a whole number beyond 64-bit integers: RapidJSON reads one as a double, which would change
// it (an id of 23 digits sent on to a partner with its last digits lost). `text` is the input,
// which the reader takes from `bytes`.
class DepthLimit {
 public:
  DepthLimit(rapidjson::Document& doc, std::string_view text, const rapidjson::MemoryStream& bytes)
      : doc_(doc), text_(text), bytes_(bytes) {}
  bool too_deep() const { return too_deep_; }
  bool too_wide() const { return too_wide_; }

  bool StartObject() { return Open() && doc_.StartObject(); }
  bool EndObject(rapidjson::SizeType members) { return Close() && doc_.EndObject(members); }
  bool StartArray() { return Open() && doc_.StartArray(); }
  bool EndArray(rapidjson::SizeType elements) { return Close() && doc_.EndArray(elements); }
  bool Key(const char* s, rapidjson::SizeType n, bool copy) { return doc_.Key(s, n, copy); }
  bool String(const char* s, rapidjson::SizeType n, bool copy) { return doc_.String(s, n, copy); }
  bool RawNumber(const char* s, rapidjson::SizeType n, bool copy) {
    return doc_.RawNumber(s, n, copy);
  }
  bool Null() { return doc_.Null(); }
  bool Bool(bool b) { return doc_.Bool(b); }
  bool Int(int i) { return doc_.Int(i); }
  bool Uint(unsigned u) { return doc_.Uint(u); }
  bool Int64(int64_t i) { return doc_.Int64(i); }
  bool Uint64(uint64_t u) { return doc_.Uint64(u); }
  bool Double(double d) {
    if (WholeNumberLiteral()) {
      too_wide_ = true;
      return false;
    }
    return doc_.Double(d);
  }

 private:
  bool Open() {
    if (++depth_ <= kMaxDepth) return true;
    too_deep_ = true;
    return false;
  }
  bool Close() {
    --depth_;
    return true;
  }

  // Whether the number just read as a double was written without a fraction or an exponent:
  // an integer that did not fit 64 bits.
  bool WholeNumberLiteral() const {
    const size_t end = std::min(bytes_.Tell(), text_.size());
    size_t start = end;
    while (start > 0 &&
           std::string_view("0123456789+-.eE").find(text_[start - 1]) != std::string_view::npos) {
      --start;
    }
    return text_.substr(start, end - start).find_first_of(".eE") == std::string_view::npos;
  }

  rapidjson::Document& doc_;
  const std::string_view text_;
  const rapidjson::MemoryStream& bytes_;
  size_t depth_ = 0;
  bool too_deep_ = false;
  bool too_wide_ = false;
};

}  // namespace

absl::Status Parse(std::string_view text, rapidjson::Document& doc) {
  // Iterative: no recursion in the parser whatever the input; the depth limit then bounds every
  // recursive walk of the document afterwards (mapping, masking, serializing).
  constexpr unsigned kFlags =
      rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag;
  rapidjson::ParseResult result;
  bool too_deep = false, too_wide = false;
  auto generate = [&](rapidjson::Document& target) {
    rapidjson::MemoryStream bytes(text.data(), text.size());
    rapidjson::EncodedInputStream<rapidjson::UTF8<>, rapidjson::MemoryStream> in(bytes);
    DepthLimit handler(target, text, bytes);
    rapidjson::Reader reader;
    result = reader.Parse<kFlags>(in, handler);
    too_deep = handler.too_deep();
    too_wide = handler.too_wide();
    return !result.IsError();
  };
  doc.Populate(generate);
  if (too_deep) {
    return absl::InvalidArgumentError(absl::StrCat("invalid JSON at offset ", result.Offset(),
                                                   ": nested deeper than ", kMaxDepth, " levels"));
  }
  if (too_wide) {
    // Not the number itself: it may be personal (an id), and this reaches logs and records.
    return absl::InvalidArgumentError(
        absl::StrCat("invalid JSON at offset ", result.Offset(),
                     ": a whole number beyond 64-bit integers, which would lose digits (send it "
                     "as a string)"));
  }
  if (result.IsError()) {
    return absl::InvalidArgumentError(absl::StrCat("invalid JSON at offset ", result.Offset(), ": ",
                                                   rapidjson::GetParseError_En(result.Code())));
  }
  return absl::OkStatus();
}

std::string Serialize(const rapidjson::Value& value) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buf);
  value.Accept(writer);
  return std::string(buf.GetString(), buf.GetSize());
}

std::string_view GetString(const rapidjson::Value& object, std::string_view key) {
  if (!object.IsObject()) return {};
  auto it = object.FindMember(rapidjson::Value(rapidjson::StringRef(key.data(), key.size())));
  if (it == object.MemberEnd() || !it->value.IsString()) return {};
  return View(it->value);
}

}  // namespace ess::json
