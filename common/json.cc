#include "common/json.h"

#include <rapidjson/encodedstream.h>
#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "absl/strings/str_cat.h"

namespace ess::json {
namespace {

// Hands the reader's events on to the document, refusing to open a level deeper than kMaxDepth.
class DepthLimit {
 public:
  explicit DepthLimit(rapidjson::Document& doc) : doc_(doc) {}
  bool too_deep() const { return too_deep_; }

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
  bool Double(double d) { return doc_.Double(d); }

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

  rapidjson::Document& doc_;
  size_t depth_ = 0;
  bool too_deep_ = false;
};

}  // namespace

absl::Status Parse(std::string_view text, rapidjson::Document& doc) {
  // Iterative: no recursion in the parser whatever the input; the depth limit then bounds every
  // recursive walk of the document afterwards (mapping, masking, serializing).
  constexpr unsigned kFlags =
      rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag;
  rapidjson::ParseResult result;
  bool too_deep = false;
  auto generate = [&](rapidjson::Document& target) {
    rapidjson::MemoryStream bytes(text.data(), text.size());
    rapidjson::EncodedInputStream<rapidjson::UTF8<>, rapidjson::MemoryStream> in(bytes);
    DepthLimit handler(target);
    rapidjson::Reader reader;
    result = reader.Parse<kFlags>(in, handler);
    too_deep = handler.too_deep();
    return !result.IsError();
  };
  doc.Populate(generate);
  if (too_deep) {
    return absl::InvalidArgumentError(absl::StrCat("invalid JSON at offset ", result.Offset(),
                                                   ": nested deeper than ", kMaxDepth, " levels"));
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
