#include "common/mapping.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/json.h"
#include "common/log.h"

namespace ess {

absl::StatusOr<std::vector<Mapper::Step>> Mapper::ParsePath(std::string_view path) {
  std::vector<Step> steps;
  size_t i = 0;
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad path \"", std::string(path), "\": ", std::string(why)));
  };
  while (i < path.size()) {
    size_t end = path.find_first_of(".[", i);
    if (end == std::string_view::npos) end = path.size();
    if (end == i) return bad("empty member name");
    steps.push_back({std::string(path.substr(i, end - i)), -1});
    i = end;
    while (i < path.size() && path[i] == '[') {
      size_t close = path.find(']', i);
      if (close == std::string_view::npos) return bad("missing ]");
      int index;
      std::string_view digits = path.substr(i + 1, close - i - 1);
      if (!absl::SimpleAtoi(absl::string_view(digits.data(), digits.size()), &index) || index < 0) {
        return bad("index must be a non-negative integer");
      }
      steps.push_back({"", index});
      i = close + 1;
    }
    if (i < path.size()) {
      if (path[i] != '.') return bad("expected . or [");
      ++i;
      if (i == path.size()) return bad("ends with .");
    }
  }
  if (steps.empty()) return bad("empty");
  return steps;
}

absl::StatusOr<Mapper> Mapper::Compile(
    const google::protobuf::RepeatedPtrField<ess::v1::FieldMapping>& fields) {
  Mapper m;
  m.values_ = std::make_shared<rapidjson::Document>();
  auto& alloc = m.values_->GetAllocator();
  // Constant values live in an array owned by the document; reserve so pointers stay stable.
  m.values_->SetArray();
  m.values_->Reserve(static_cast<rapidjson::SizeType>(2 * fields.size()), alloc);
  auto keep = [&](const std::string& s) {
    m.values_->PushBack(
        rapidjson::Value(s.data(), static_cast<rapidjson::SizeType>(s.size()), alloc), alloc);
    return &(*m.values_)[m.values_->Size() - 1];
  };
  absl::flat_hash_set<std::string> targets;
  for (int i = 0; i < fields.size(); ++i) {
    const ess::v1::FieldMapping& f = fields[i];
    auto err = [&](std::string_view field, std::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat("[", i, "].", std::string(field), ": ", std::string(what)));
    };
    if (f.target().empty()) return err("target", "must not be empty");
    if (!targets.insert(f.target()).second) {
      return err("target", absl::StrCat("duplicate target \"", f.target(), "\""));
    }
    if (f.source().empty() == f.constant().empty()) {
      return err("source", "exactly one of source and constant must be set");
    }
    Field out;
    out.target = f.target();
    out.source = f.source();
    if (!f.constant().empty()) {
      out.constant = keep(f.constant());
    } else {
      absl::StatusOr<std::vector<Step>> path = ParsePath(f.source());
      if (!path.ok()) return err("source", std::string(path.status().message()));
      out.path = *std::move(path);
    }
    if (!f.default_value().empty()) out.fallback = keep(f.default_value());
    out.required = f.has_required() ? f.required() : out.fallback == nullptr;
    out.timestamp_format = f.timestamp_format();
    if (f.letter_case() == "upper") {
      out.letter_case = Field::Case::kUpper;
    } else if (f.letter_case() == "lower") {
      out.letter_case = Field::Case::kLower;
    } else if (!f.letter_case().empty()) {
      return err("letter_case", "must be upper or lower");
    }
    // A fixed width is a column of a partner's format, not a buffer size: a typo of many
    // digits would pad every field of every message to gigabytes.
    if (f.width() > kMaxWidth) return err("width", absl::StrCat("must be at most ", kMaxWidth));
    out.width = f.width();
    if (!f.pad().empty()) {
      if (f.pad().size() != 1) return err("pad", "must be one ASCII character");
      out.pad = f.pad();
    }
    out.align_right = f.align_right();
    if (f.truncate() && f.width() == 0) return err("truncate", "needs a width");
    out.truncate = f.truncate();
    m.fields_.push_back(std::move(out));
  }
  return m;
}

const rapidjson::Value* Mapper::Lookup(const rapidjson::Value& root,
                                       const std::vector<Step>& path) {
  const rapidjson::Value* v = &root;
  for (const Step& s : path) {
    if (s.index >= 0) {
      if (!v->IsArray() || static_cast<rapidjson::SizeType>(s.index) >= v->Size()) return nullptr;
      v = &(*v)[static_cast<rapidjson::SizeType>(s.index)];
    } else {
      if (!v->IsObject()) return nullptr;
      auto it = v->FindMember(rapidjson::StringRef(s.key.data(), s.key.size()));
      if (it == v->MemberEnd()) return nullptr;
      v = &it->value;
    }
  }
  return v->IsNull() ? nullptr : v;
}

absl::Status Mapper::Apply(const rapidjson::Value& source, std::vector<MappedField>* out) const {
  out->clear();
  if (!source.IsObject()) return absl::InvalidArgumentError("payload is not a JSON object");
  for (const Field& f : fields_) {
    const rapidjson::Value* v = f.constant ? f.constant : Lookup(source, f.path);
    if (v == nullptr) v = f.fallback;
    if (v == nullptr) {
      if (f.required) {
        return absl::InvalidArgumentError(
            absl::StrCat("missing required field \"", f.source, "\" (for \"", f.target, "\")"));
      }
      continue;
    }
    if (!f.transforms()) {
      out->push_back({.name = f.target, .value = v});
      continue;
    }
    absl::StatusOr<std::string> text = Transform(f, Text({.value = v}));
    if (!text.ok()) return text.status();
    out->push_back({.name = f.target, .text = *std::move(text)});
  }
  return absl::OkStatus();
}

void Mapper::AppendJson(std::span<const MappedField> fields, std::string* out) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.StartObject();
  for (const MappedField& f : fields) {
    w.Key(f.name.data(), static_cast<rapidjson::SizeType>(f.name.size()));
    if (f.value != nullptr) {
      f.value->Accept(w);
    } else {
      w.String(f.text.data(), static_cast<rapidjson::SizeType>(f.text.size()));
    }
  }
  w.EndObject();
  out->append(buf.GetString(), buf.GetSize());
}

std::string Mapper::ToJson(std::span<const MappedField> fields) {
  std::string out;
  AppendJson(fields, &out);
  return out;
}

std::string Mapper::Text(const MappedField& field) {
  if (field.value == nullptr) return field.text;
  if (field.value->IsString()) return std::string(json::View(*field.value));
  return json::Serialize(*field.value);
}

std::string_view Mapper::StringOf(std::span<const MappedField> fields, std::string_view name) {
  for (const MappedField& f : fields) {
    if (f.name != name) continue;
    if (f.value == nullptr) return f.text;
    if (f.value->IsString()) return json::View(*f.value);
  }
  return {};
}

namespace {

// Length in UTF-8 code points.
size_t CodePoints(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// The byte offset where code point `n` starts (the size when there are fewer).
size_t ByteOffsetOf(std::string_view s, size_t n) {
  size_t seen = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) {
      if (seen == n) return i;
      ++seen;
    }
  }
  return s.size();
}

}  // namespace

bool Mapper::Personal(const Field& f) {
  // A path is personal when any member on it is (the logs mask a PII member's whole value).
  return log::IsPii(f.target) ||
         std::any_of(f.path.begin(), f.path.end(), [](const Step& s) { return log::IsPii(s.key); });
}

bool Mapper::IsPersonal(std::string_view target) const {
  for (const Field& f : fields_) {
    if (f.target == target) return Personal(f);
  }
  return log::IsPii(target);
}

absl::StatusOr<std::string> Mapper::Transform(const Field& f, std::string text) {
  if (!f.timestamp_format.empty()) {
    absl::Time t;
    std::string err;
    if (!absl::ParseTime(absl::RFC3339_full, text, &t, &err)) {
      // The value only when it is not personal data: errors reach logs and records.
      const bool pii = Personal(f);
      return absl::InvalidArgumentError(absl::StrCat(
          "field \"", f.source, "\": ", pii ? "its value" : absl::StrCat("\"", text, "\""),
          " is not an RFC 3339 timestamp"));
    }
    text = absl::FormatTime(f.timestamp_format, t, absl::UTCTimeZone());
  }
  if (f.letter_case == Field::Case::kUpper) absl::AsciiStrToUpper(&text);
  if (f.letter_case == Field::Case::kLower) absl::AsciiStrToLower(&text);
  if (f.width > 0) {
    const size_t len = CodePoints(text);
    if (len > f.width && f.truncate) {
      text.resize(ByteOffsetOf(text, f.width));
    } else if (len > f.width) {
      // Its length only, never the value: what reaches logs and records. Cut silently, an id
      // would name someone else at the partner.
      return absl::InvalidArgumentError(absl::StrCat(
          "field \"", f.source, "\": its value has ", len, " characters, wider than its column (",
          "width ", f.width, "); set truncate: true where a cut value is acceptable"));
    } else if (len < f.width) {
      std::string padding(f.width - len, f.pad[0]);
      text = f.align_right ? padding + text : text + padding;
    }
  }
  return text;
}

}  // namespace ess
