// The XML side of the `soap` adapter: rendering envelopes, reading responses and faults, and
// mapping a response into an event with XPath. libxml2 stays inside the .cc file.
//
//   absl::StatusOr<BodyTemplate> t = BodyTemplate::Compile("<v:Book
//   xmlns:v=\"urn:v\">{id}</v:Book>"); absl::StatusOr<std::string> body = t->Render(fields,
//   /*mask_personal=*/nullptr); absl::StatusOr<std::string> envelope = RenderEnvelope(Version::k11,
//   "VIS-77", *body);
//
//   absl::StatusOr<Response> r = Response::Parse(http_body);   // INVALID_ARGUMENT if malformed
//   if (r->fault()) return r->fault()->ToStatus();             // Client/Sender: permanent
//   absl::StatusOr<InboundEvent> e = mapping.Apply(*r, "VIS-77");
//
// Responses are parsed defensively: no network access, no DTD (a DOCTYPE stops the parser at
// once, so no entity is ever declared or expanded), no external entities.
#ifndef ESS_ADAPTERS_SOAP_SOAP_XML_H_
#define ESS_ADAPTERS_SOAP_SOAP_XML_H_

#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "adapters/adapter.h"
#include "common/mapping.h"
#include "ess/v1/adapters.pb.h"

struct _xmlDoc;

namespace ess::adapters::soap {

enum class Version { k11, k12 };

inline constexpr std::string_view kSoap11Namespace = "http://schemas.xmlsoap.org/soap/envelope/";
inline constexpr std::string_view kSoap12Namespace = "http://www.w3.org/2003/05/soap-envelope";
// Namespace of the correlation id header element <ess:CorrelationId>.
inline constexpr std::string_view kEssNamespace = "urn:ess:v1";

// Appends `text` escaped for XML content and attribute values: & < > " ' as entities, CR as
// &#xD; (so that it survives line-end normalization). INVALID_ARGUMENT for a control character
// XML 1.0 cannot carry (below 0x20 other than tab, LF and CR).
absl::Status AppendEscaped(std::string_view text, std::string* out);

// A SOAP Body template: XML text with {field} placeholders.
class BodyTemplate {
 public:
  // INVALID_ARGUMENT for an unclosed or empty placeholder.
  static absl::StatusOr<BodyTemplate> Compile(std::string_view text);

  // Names of the placeholders, in order of appearance (repeats included).
  std::vector<std::string> Placeholders() const;

  // Fills every placeholder with the XML-escaped text of the mapped field of that name (the
  // empty string when the event has no such field, e.g. an absent optional one). With
  // `mask_personal` (the outbound mapping), the fields it says are personal
  // (Mapper::IsPersonal: the target or a member of the source path is a PII field) render as
  // "***" (for logs). INVALID_ARGUMENT for a value XML cannot carry.
  absl::StatusOr<std::string> Render(std::span<const MappedField> fields,
                                     const Mapper* mask_personal) const;

 private:
  struct Part {
    std::string text;  // literal text, or the placeholder name
    bool placeholder = false;
  };
  std::vector<Part> parts_;
};

// <?xml ...?><soap:Envelope><soap:Header><ess:CorrelationId>...</soap:Header>
// <soap:Body>BODY</soap:Body></soap:Envelope>, in the namespace of `version`. `body` is inserted
// as it is. INVALID_ARGUMENT for a correlation id XML cannot carry.
absl::StatusOr<std::string> RenderEnvelope(Version version, std::string_view correlation_id,
                                           std::string_view body);

// A SOAP Fault, as the partner wrote it.
struct Fault {
  // 1.1: faultcode, e.g. "soap:Client" or "Server.Database". 1.2: Code/Value, e.g. "env:Sender".
  std::string code;
  // 1.2 only: Code/Subcode/Value, if any.
  std::string subcode;
  // 1.1: faultstring. 1.2: the first Reason/Text.
  std::string reason;

  // The classification the lanes act on (the prefix of `code` is ignored, as are ".suffixes"):
  //   Client (1.1), Sender (1.2)                              INVALID_ARGUMENT (permanent)
  //   Server (1.1), Receiver (1.2)                            UNAVAILABLE (retryable)
  //   VersionMismatch, MustUnderstand, DataEncodingUnknown    FAILED_PRECONDITION (permanent:
  //                                                           the endpoint rejects our envelope)
  //   anything else                                           UNAVAILABLE (retried, then parked)
  // The message is "SOAP fault CODE[ (SUBCODE)]: REASON", each text cut on a character boundary
  // with a marker (utf8::Cut) past kMaxFaultCodeBytes (code, subcode) or kMaxFaultReasonBytes
  // (reason): a partner's fault text may be as long as its answer. The reason's bound is wide:
  // the outbound lane masks the event's personal values in the text, then cuts it shorter, so
  // that no value is split by a cut before it is masked.
  static constexpr size_t kMaxFaultCodeBytes = 256;
  static constexpr size_t kMaxFaultReasonBytes = 64 * 1024;
  absl::Status ToStatus() const;
};

// A parsed SOAP response document.
class Response {
 public:
  // INVALID_ARGUMENT "malformed SOAP response: ..." for text that is not well-formed XML
  // (namespaces included), has a DOCTYPE, or is not a SOAP 1.1 or 1.2 Envelope with a Body.
  static absl::StatusOr<Response> Parse(std::string_view xml);

  // The version of the response's own Envelope.
  Version version() const { return version_; }
  // Set when the Body's first element is a Fault.
  const std::optional<Fault>& fault() const { return fault_; }
  // The <ess:CorrelationId> header element the partner echoed, or empty.
  const std::string& correlation_id() const { return correlation_id_; }

  const _xmlDoc* doc() const { return doc_.get(); }

 private:
  struct DocFree {
    void operator()(_xmlDoc* doc) const;
  };
  std::unique_ptr<_xmlDoc, DocFree> doc_;
  Version version_ = Version::k11;
  std::optional<Fault> fault_;
  std::string correlation_id_;
};

// SoapAdapterConfig.response_mapping, compiled: XPath expressions (or constants) producing the
// fields of one internal event. Thread-safe; copies share the compiled expressions.
class ResponseMapping {
 public:
  // INVALID_ARGUMENT "response_mapping[i].FIELD: what" or "namespaces.PREFIX: what" for an empty
  // or duplicate target, neither or both of xpath and constant, an XPath expression that does
  // not compile or uses an undeclared prefix, a redefined built-in prefix; and
  // "response_mapping: no field targets \"type\"" when the list is not empty but has no "type".
  static absl::StatusOr<ResponseMapping> Compile(
      const google::protobuf::RepeatedPtrField<ess::v1::SoapResponseField>& fields,
      const google::protobuf::Map<std::string, std::string>& namespaces);

  bool empty() const;

  // The event the response maps to: {"id":..., fields in order}. The "id" is
  // `default_correlation_id` unless a field targets "id". INVALID_ARGUMENT naming a required field
  // the response lacks ("response has nothing at \"XPATH\" (for \"status\")"), or when the event
  // has no string "type" or "id".
  absl::StatusOr<InboundEvent> Apply(const Response& response,
                                     std::string_view default_correlation_id) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace ess::adapters::soap

#endif  // ESS_ADAPTERS_SOAP_SOAP_XML_H_
