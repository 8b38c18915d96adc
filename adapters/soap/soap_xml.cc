#include "adapters/soap/soap_xml.h"

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>
#include <rapidjson/document.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <mutex>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "adapters/json_pull.h"
#include "common/json.h"
#include "common/log.h"
#include "common/sv.h"
#include "common/utf8.h"

namespace ess::adapters::soap {
namespace {

constexpr std::string_view kPiiMask = "***";

// libxml2 must be initialized once before threads use it.
struct ParseState {
  bool doctype = false;
  std::string first_error;
};

void InitLibxml() {
  static std::once_flag once;
  std::call_once(once, [] { xmlInitParser(); });
}

const xmlChar* X(const char* s) { return reinterpret_cast<const xmlChar*>(s); }
std::string_view Sv(const xmlChar* s) {
  return s == nullptr ? std::string_view() : std::string_view(reinterpret_cast<const char*>(s));
}

// Owns an xmlChar* that libxml2 allocated.
std::string TakeXmlString(xmlChar* s) {
  std::string out(Sv(s));
  xmlFree(s);
  return out;
}

std::string ParseErrorText(const xmlError* e) {
  if (e == nullptr || e->message == nullptr) return "unknown error";
  std::string msg(absl::StripAsciiWhitespace(e->message));
  if (e->line > 0 && !absl::StrContains(msg, " line "))
    absl::StrAppend(&msg, " (line ", e->line, ")");
  return msg;
}

// libxml2 records XPath errors by code only (the text stays in a private table).
std::string XPathErrorText(const xmlError& e) {
  if (e.message != nullptr) return std::string(absl::StripAsciiWhitespace(e.message));
  std::string_view what;
  switch (e.code) {
    case XML_XPATH_NUMBER_ERROR:
      what = "bad number";
      break;
    case XML_XPATH_UNFINISHED_LITERAL_ERROR:
      what = "unfinished literal";
      break;
    case XML_XPATH_START_LITERAL_ERROR:
      what = "bad start of literal";
      break;
    case XML_XPATH_VARIABLE_REF_ERROR:
    case XML_XPATH_UNDEF_VARIABLE_ERROR:
      what = "variables are not supported";
      break;
    case XML_XPATH_INVALID_PREDICATE_ERROR:
      what = "invalid predicate";
      break;
    case XML_XPATH_EXPR_ERROR:
      what = "invalid expression";
      break;
    case XML_XPATH_UNKNOWN_FUNC_ERROR:
      what = "unknown function";
      break;
    case XML_XPATH_INVALID_OPERAND:
      what = "invalid operand";
      break;
    case XML_XPATH_INVALID_TYPE:
      what = "invalid type";
      break;
    case XML_XPATH_INVALID_ARITY:
      what = "wrong number of function arguments";
      break;
    case XML_XPATH_UNDEF_PREFIX_ERROR:
      what = "undeclared namespace prefix";
      break;
    case XML_XPATH_MEMORY_ERROR:
      what = "out of memory";
      break;
    default:
      what = "error";
  }
  std::string msg(what);
  if (e.code != XML_XPATH_UNDEF_PREFIX_ERROR && e.int1 > 0) {
    absl::StrAppend(&msg, " at offset ", e.int1);
  }
  return msg;
}

// A SAX hook: the DOCTYPE is where entities would be declared, so parsing stops right there.
void RejectDoctype(void* ctx, const xmlChar*, const xmlChar*, const xmlChar*) {
  auto* ctxt = static_cast<xmlParserCtxtPtr>(ctx);
  static_cast<ParseState*>(ctxt->_private)->doctype = true;
  xmlStopParser(ctxt);
}

// Keeps the first parse error (the cause; later ones are consequences).
void KeepFirstError(void* ctx, xmlErrorPtr error) {
  auto* state = static_cast<ParseState*>(static_cast<xmlParserCtxtPtr>(ctx)->_private);
  if (state->first_error.empty()) state->first_error = ParseErrorText(error);
}

// Errors of XPath evaluation land in the context's lastError instead of stderr.
void IgnoreXmlError(void*, xmlErrorPtr) {}

void IgnoreGenericError(void*, const char*, ...) {}

// Some XPath failures (an unknown function) are also reported through libxml2's generic error
// function, which writes to stderr; silenced on this thread while one is alive.
class QuietGenericErrors {
 public:
  QuietGenericErrors() : func_(xmlGenericError), context_(xmlGenericErrorContext) {
    xmlSetGenericErrorFunc(nullptr, IgnoreGenericError);
  }
  ~QuietGenericErrors() { xmlSetGenericErrorFunc(context_, func_); }
  QuietGenericErrors(const QuietGenericErrors&) = delete;
  QuietGenericErrors& operator=(const QuietGenericErrors&) = delete;

 private:
  xmlGenericErrorFunc func_;
  void* context_;
};

bool IsElement(const xmlNode* n, std::string_view ns, std::string_view name) {
  return n != nullptr && n->type == XML_ELEMENT_NODE && Sv(n->name) == name && n->ns != nullptr &&
         Sv(n->ns->href) == ns;
}

// First element child named `name` in namespace `ns` (any namespace when `ns` is empty).
const xmlNode* Child(const xmlNode* parent, std::string_view ns, std::string_view name) {
  for (const xmlNode* c = parent->children; c != nullptr; c = c->next) {
    if (c->type != XML_ELEMENT_NODE || Sv(c->name) != name) continue;
    if (ns.empty() || (c->ns != nullptr && Sv(c->ns->href) == ns)) return c;
  }
  return nullptr;
}

const xmlNode* FirstElement(const xmlNode* parent) {
  for (const xmlNode* c = parent->children; c != nullptr; c = c->next) {
    if (c->type == XML_ELEMENT_NODE) return c;
  }
  return nullptr;
}

std::string Text(const xmlNode* n) {
  if (n == nullptr) return "";
  return std::string(
      absl::StripAsciiWhitespace(TakeXmlString(xmlNodeGetContent(const_cast<xmlNode*>(n)))));
}

absl::Status Malformed(std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("malformed SOAP response: ", ToAbsl(why)));
}

Fault ReadFault(const xmlNode* fault, Version version) {
  Fault f;
  if (version == Version::k11) {
    // faultcode and faultstring are unqualified in 1.1; some servers qualify them anyway.
    f.code = Text(Child(fault, "", "faultcode"));
    f.reason = Text(Child(fault, "", "faultstring"));
    return f;
  }
  const std::string_view ns = kSoap12Namespace;
  const xmlNode* code = Child(fault, ns, "Code");
  if (code != nullptr) {
    f.code = Text(Child(code, ns, "Value"));
    const xmlNode* sub = Child(code, ns, "Subcode");
    if (sub != nullptr) f.subcode = Text(Child(sub, ns, "Value"));
  }
  const xmlNode* reason = Child(fault, ns, "Reason");
  if (reason != nullptr) f.reason = Text(Child(reason, ns, "Text"));
  return f;
}

}  // namespace

absl::Status AppendEscaped(std::string_view text, std::string* out) {
  for (char c : text) {
    switch (c) {
      case '&':
        out->append("&amp;");
        break;
      case '<':
        out->append("&lt;");
        break;
      case '>':
        out->append("&gt;");
        break;
      case '"':
        out->append("&quot;");
        break;
      case '\'':
        out->append("&apos;");
        break;
      case '\r':
        out->append("&#xD;");
        break;
      case '\t':
      case '\n':
        out->push_back(c);
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          return absl::InvalidArgumentError(absl::StrCat(
              "control character 0x", absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2),
              " cannot be carried in XML"));
        }
        out->push_back(c);
    }
  }
  return absl::OkStatus();
}

// ---- BodyTemplate ----

absl::StatusOr<BodyTemplate> BodyTemplate::Compile(std::string_view text) {
  BodyTemplate t;
  size_t i = 0;
  while (i < text.size()) {
    size_t open = text.find('{', i);
    if (open == std::string_view::npos) {
      t.parts_.push_back({std::string(text.substr(i)), false});
      break;
    }
    if (open > i) t.parts_.push_back({std::string(text.substr(i, open - i)), false});
    size_t close = text.find('}', open);
    if (close == std::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("placeholder at offset ", open, " has no }"));
    }
    std::string_view name = text.substr(open + 1, close - open - 1);
    if (name.empty() || name.find_first_of("{<>&\"' ") != std::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad placeholder {", ToAbsl(name), "} at offset ", open));
    }
    t.parts_.push_back({std::string(name), true});
    i = close + 1;
  }
  return t;
}

std::vector<std::string> BodyTemplate::Placeholders() const {
  std::vector<std::string> names;
  for (const Part& p : parts_) {
    if (p.placeholder) names.push_back(p.text);
  }
  return names;
}

absl::StatusOr<std::string> BodyTemplate::Render(std::span<const MappedField> fields,
                                                 const Mapper* mask_personal) const {
  std::string out;
  for (const Part& p : parts_) {
    if (!p.placeholder) {
      out.append(p.text);
      continue;
    }
    const MappedField* hit = nullptr;
    for (const MappedField& f : fields) {
      if (f.name == p.text) {
        hit = &f;
        break;
      }
    }
    if (hit == nullptr) continue;  // an absent optional field renders empty
    if (mask_personal != nullptr && mask_personal->IsPersonal(p.text)) {
      out.append(kPiiMask);
      continue;
    }
    absl::Status s = AppendEscaped(Mapper::Text(*hit), &out);
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("field \"", p.text, "\": ", s.message()));
    }
  }
  return out;
}

absl::StatusOr<std::string> RenderEnvelope(Version version, std::string_view correlation_id,
                                           std::string_view body) {
  const std::string_view ns = version == Version::k11 ? kSoap11Namespace : kSoap12Namespace;
  std::string out;
  out.reserve(body.size() + 320);
  absl::StrAppend(&out, R"(<?xml version="1.0" encoding="utf-8"?>)", "\n",
                  R"(<soap:Envelope xmlns:soap=")", ToAbsl(ns), R"(">)", "<soap:Header>",
                  R"(<ess:CorrelationId xmlns:ess=")", ToAbsl(kEssNamespace), R"(">)");
  absl::Status s = AppendEscaped(correlation_id, &out);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("correlation id: ", s.message()));
  absl::StrAppend(&out, "</ess:CorrelationId></soap:Header><soap:Body>", ToAbsl(body),
                  "</soap:Body></soap:Envelope>");
  return out;
}

// ---- Fault ----

absl::Status Fault::ToStatus() const {
  std::string_view local = code;
  if (size_t colon = local.rfind(':'); colon != std::string_view::npos) {
    local.remove_prefix(colon + 1);
  }
  std::string_view kind = local.substr(0, local.find('.'));
  // The partner's texts are cut (kMaxFaultCodeBytes, kMaxFaultReasonBytes): the message goes to
  // logs, records and a retried or parked message's headers. The kind is read before.
  std::string msg =
      absl::StrCat("SOAP fault ", code.empty() ? "(no code)" : utf8::Cut(code, kMaxFaultCodeBytes));
  if (!subcode.empty()) absl::StrAppend(&msg, " (", utf8::Cut(subcode, kMaxFaultCodeBytes), ")");
  if (!reason.empty()) absl::StrAppend(&msg, ": ", utf8::Cut(reason, kMaxFaultReasonBytes));
  if (kind == "Client" || kind == "Sender") return absl::InvalidArgumentError(msg);
  if (kind == "VersionMismatch" || kind == "MustUnderstand" || kind == "DataEncodingUnknown") {
    return absl::FailedPreconditionError(msg);
  }
  return absl::UnavailableError(msg);  // Server, Receiver, or a code we do not know
}

// ---- Response ----

void Response::DocFree::operator()(_xmlDoc* doc) const { xmlFreeDoc(doc); }

absl::StatusOr<Response> Response::Parse(std::string_view xml) {
  InitLibxml();
  if (xml.empty()) return Malformed("empty body");
  if (xml.size() > static_cast<size_t>(INT_MAX)) return Malformed("too large");
  xmlParserCtxtPtr ctxt = xmlNewParserCtxt();
  if (ctxt == nullptr) return absl::ResourceExhaustedError("libxml2: no memory for a parser");
  ParseState state;
  ctxt->_private = &state;
  ctxt->sax->internalSubset = RejectDoctype;
  ctxt->sax->serror = KeepFirstError;
  // Never XML_PARSE_NOENT (entity substitution) nor XML_PARSE_DTDLOAD; no network either.
  xmlDocPtr doc =
      xmlCtxtReadMemory(ctxt, xml.data(), static_cast<int>(xml.size()), nullptr, nullptr,
                        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
  const bool ns_ok = ctxt->nsWellFormed != 0;
  std::string error =
      state.first_error.empty() ? ParseErrorText(xmlCtxtGetLastError(ctxt)) : state.first_error;
  xmlFreeParserCtxt(ctxt);
  Response r;
  r.doc_.reset(doc);
  if (state.doctype) return Malformed("a DOCTYPE is not allowed in a SOAP message");
  if (doc == nullptr) return Malformed(error);
  if (!ns_ok) return Malformed(absl::StrCat("namespace error: ", error));

  const xmlNode* root = xmlDocGetRootElement(doc);
  if (IsElement(root, kSoap11Namespace, "Envelope")) {
    r.version_ = Version::k11;
  } else if (IsElement(root, kSoap12Namespace, "Envelope")) {
    r.version_ = Version::k12;
  } else {
    return Malformed(absl::StrCat("the root element is ",
                                  root == nullptr ? "missing" : ToAbsl(Sv(root->name)),
                                  ", not a SOAP 1.1 or 1.2 Envelope"));
  }
  const std::string_view ns = r.version_ == Version::k11 ? kSoap11Namespace : kSoap12Namespace;
  if (const xmlNode* header = Child(root, ns, "Header"); header != nullptr) {
    r.correlation_id_ = Text(Child(header, kEssNamespace, "CorrelationId"));
  }
  const xmlNode* body = Child(root, ns, "Body");
  if (body == nullptr) return Malformed("the Envelope has no Body");
  const xmlNode* first = FirstElement(body);
  if (IsElement(first, ns, "Fault")) r.fault_ = ReadFault(first, r.version_);
  return r;
}

// ---- ResponseMapping ----

struct ResponseMapping::Impl {
  struct Field {
    std::string target;
    std::string xpath;  // as written, for messages
    xmlXPathCompExprPtr expr = nullptr;
    std::optional<std::string> constant;
    std::optional<std::string> fallback;
    bool required = true;
  };
  std::vector<Field> fields;
  std::vector<std::pair<std::string, std::string>> namespaces;  // configured prefix -> URI
  bool has_id = false;

  Impl() = default;
  Impl(const Impl&) = delete;  // owns the compiled expressions
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    for (Field& f : fields) xmlXPathFreeCompExpr(f.expr);
  }

  // A context on `doc` with every prefix registered; "soap"/"env" bind to `envelope_ns`.
  xmlXPathContextPtr NewContext(xmlDocPtr doc, std::string_view envelope_ns) const {
    xmlXPathContextPtr x = xmlXPathNewContext(doc);
    if (x == nullptr) return nullptr;
    x->error = IgnoreXmlError;
    std::string env(envelope_ns);
    xmlXPathRegisterNs(x, X("soap"), X(env.c_str()));
    xmlXPathRegisterNs(x, X("env"), X(env.c_str()));
    xmlXPathRegisterNs(x, X("soap11"), X(std::string(kSoap11Namespace).c_str()));
    xmlXPathRegisterNs(x, X("soap12"), X(std::string(kSoap12Namespace).c_str()));
    xmlXPathRegisterNs(x, X("ess"), X(std::string(kEssNamespace).c_str()));
    for (const auto& [prefix, uri] : namespaces) {
      xmlXPathRegisterNs(x, X(prefix.c_str()), X(uri.c_str()));
    }
    return x;
  }
};

namespace {

// What an expression produced: absent, or a JSON string, number or boolean.
struct XPathValue {
  enum Kind { kAbsent, kString, kNumber, kBool } kind = kAbsent;
  std::string text;
  double number = 0;
  bool boolean = false;
};

XPathValue Convert(xmlXPathObjectPtr obj) {
  XPathValue v;
  switch (obj->type) {
    case XPATH_NODESET:
      if (obj->nodesetval == nullptr || obj->nodesetval->nodeNr == 0) return v;
      v.text = TakeXmlString(xmlXPathCastNodeToString(obj->nodesetval->nodeTab[0]));
      v.kind = XPathValue::kString;
      return v;
    case XPATH_BOOLEAN:
      v.kind = XPathValue::kBool;
      v.boolean = obj->boolval != 0;
      return v;
    case XPATH_NUMBER:
      if (std::isnan(obj->floatval) || std::isinf(obj->floatval)) return v;
      v.kind = XPathValue::kNumber;
      v.number = obj->floatval;
      return v;
    default:
      v.text = TakeXmlString(xmlXPathCastToString(obj));
      v.kind = XPathValue::kString;
      return v;
  }
}

bool IsNcName(std::string_view s) {
  if (s.empty() || absl::ascii_isdigit(s[0]) || s[0] == '-' || s[0] == '.') return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(c) && c != '_' && c != '-' && c != '.') return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<ResponseMapping> ResponseMapping::Compile(
    const google::protobuf::RepeatedPtrField<ess::v1::SoapResponseField>& fields,
    const google::protobuf::Map<std::string, std::string>& namespaces) {
  InitLibxml();
  auto impl = std::make_shared<Impl>();
  static constexpr std::string_view kBuiltin[] = {"soap", "env", "soap11", "soap12", "ess"};
  for (const auto& entry : namespaces) {
    // Named references, not a structured binding: lambdas may not capture those before C++20's
    // P1091, which clang 14 lacks (the fuzzing build, tests/fuzz).
    const std::string& prefix = entry.first;
    const std::string& uri = entry.second;
    auto bad = [&](std::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat("namespaces.", prefix, ": ", ToAbsl(what)));
    };
    for (std::string_view b : kBuiltin) {
      if (prefix == b) return bad("is built in and cannot be redefined");
    }
    if (!IsNcName(prefix)) return bad("is not a valid XML prefix");
    if (uri.empty()) return bad("the namespace URI must not be empty");
    impl->namespaces.emplace_back(prefix, uri);
  }
  std::sort(impl->namespaces.begin(), impl->namespaces.end());

  // Expressions are checked against an empty document: syntax, functions and prefixes.
  xmlDocPtr probe = xmlReadMemory("<probe/>", 8, nullptr, nullptr, XML_PARSE_NONET);
  if (probe == nullptr) return absl::ResourceExhaustedError("libxml2: no memory");
  QuietGenericErrors quiet;
  xmlXPathContextPtr x = impl->NewContext(probe, kSoap11Namespace);
  absl::flat_hash_set<std::string> targets;
  absl::Status status;
  bool has_type = false;
  for (int i = 0; i < fields.size() && status.ok(); ++i) {
    const ess::v1::SoapResponseField& f = fields[i];
    auto bad = [&](std::string_view field, std::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat("response_mapping[", i, "].", ToAbsl(field), ": ", ToAbsl(what)));
    };
    if (f.target().empty()) {
      status = bad("target", "must not be empty");
      break;
    }
    if (!targets.insert(f.target()).second) {
      status = bad("target", absl::StrCat("duplicate target \"", f.target(), "\""));
      break;
    }
    if (f.xpath().empty() == f.constant().empty()) {
      status = bad("xpath", "exactly one of xpath and constant must be set");
      break;
    }
    Impl::Field out;
    out.target = f.target();
    if (!f.constant().empty()) {
      out.constant = f.constant();
    } else {
      out.xpath = f.xpath();
      out.expr = xmlXPathCtxtCompile(x, X(f.xpath().c_str()));
      if (out.expr == nullptr) {
        status = bad("xpath", absl::StrCat("does not compile: ", XPathErrorText(x->lastError)));
        break;
      }
      xmlXPathObjectPtr probe_result = xmlXPathCompiledEval(out.expr, x);
      if (probe_result == nullptr) {
        status = bad("xpath", absl::StrCat("cannot be evaluated: ", XPathErrorText(x->lastError)));
        xmlXPathFreeCompExpr(out.expr);
        break;
      }
      xmlXPathFreeObject(probe_result);
    }
    if (!f.default_value().empty()) out.fallback = f.default_value();
    out.required = f.has_required() ? f.required() : !out.fallback.has_value();
    has_type = has_type || out.target == "type";
    impl->has_id = impl->has_id || out.target == "id";
    impl->fields.push_back(std::move(out));
  }
  xmlXPathFreeContext(x);
  xmlFreeDoc(probe);
  if (!status.ok()) return status;
  if (!impl->fields.empty() && !has_type) {
    return absl::InvalidArgumentError("response_mapping: no field targets \"type\"");
  }
  ResponseMapping m;
  m.impl_ = std::move(impl);
  return m;
}

bool ResponseMapping::empty() const { return impl_ == nullptr || impl_->fields.empty(); }

absl::StatusOr<InboundEvent> ResponseMapping::Apply(const Response& response,
                                                    std::string_view default_correlation_id) const {
  if (empty()) return absl::FailedPreconditionError("no response_mapping is configured");
  const std::string_view env_ns =
      response.version() == Version::k11 ? kSoap11Namespace : kSoap12Namespace;
  QuietGenericErrors quiet;
  xmlXPathContextPtr x = impl_->NewContext(const_cast<xmlDocPtr>(response.doc()), env_ns);
  if (x == nullptr) return absl::ResourceExhaustedError("libxml2: no memory for XPath");

  rapidjson::Document event(rapidjson::kObjectType);
  auto& alloc = event.GetAllocator();
  auto str = [&](std::string_view s) {
    // An empty view may have a null data(); RapidJSON copies with memcpy.
    return rapidjson::Value(s.empty() ? "" : s.data(), static_cast<rapidjson::SizeType>(s.size()),
                            alloc);
  };
  if (!impl_->has_id) event.AddMember("id", str(default_correlation_id), alloc);
  absl::Status status;
  for (const Impl::Field& f : impl_->fields) {
    XPathValue v;
    if (f.constant) {
      v.kind = XPathValue::kString;
      v.text = *f.constant;
    } else {
      xmlXPathObjectPtr obj = xmlXPathCompiledEval(f.expr, x);
      if (obj == nullptr) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "XPath \"", f.xpath, "\" (for \"", f.target, "\"): ", XPathErrorText(x->lastError)));
        break;
      }
      v = Convert(obj);
      xmlXPathFreeObject(obj);
      if (v.kind == XPathValue::kString && v.text.empty()) v.kind = XPathValue::kAbsent;
    }
    if (v.kind == XPathValue::kAbsent && f.fallback) {
      v.kind = XPathValue::kString;
      v.text = *f.fallback;
    }
    if (v.kind == XPathValue::kAbsent) {
      if (!f.required) continue;
      status = absl::InvalidArgumentError(
          absl::StrCat("response has nothing at \"", f.xpath, "\" (for \"", f.target, "\")"));
      break;
    }
    rapidjson::Value value;
    switch (v.kind) {
      case XPathValue::kAbsent:
      case XPathValue::kString:
        value = str(v.text);
        break;
      case XPathValue::kNumber:
        if (v.number == std::trunc(v.number) && std::fabs(v.number) < 9.0e15) {
          value.SetInt64(static_cast<int64_t>(v.number));
        } else {
          value.SetDouble(v.number);
        }
        break;
      case XPathValue::kBool:
        value.SetBool(v.boolean);
        break;
    }
    event.AddMember(str(f.target), value, alloc);
  }
  xmlXPathFreeContext(x);
  if (!status.ok()) return status;

  InboundEvent out;
  out.correlation_id = std::string(json::GetString(event, "id"));
  out.event_type = std::string(json::GetString(event, "type"));
  if (absl::Status s = CheckIds(out); !s.ok()) return s;
  out.body = json::Serialize(event);
  return out;
}

}  // namespace ess::adapters::soap
