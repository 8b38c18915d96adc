// The `soap` adapter: SOAP 1.1 or 1.2 over HTTP(S).
//
// Push fills the configured body template with the mapped fields (XML-escaped), wraps it in the
// Envelope of the configured version with the correlation id in a header element
// (<ess:CorrelationId xmlns:ess="urn:ess:v1">VIS-77</ess:CorrelationId>) and POSTs it:
//   1.1  Content-Type: text/xml; charset=utf-8            SOAPAction: "ACTION"
//   1.2  Content-Type: application/soap+xml; charset=utf-8; action="ACTION"
//
// How the answer is judged (the response is read with libxml2, never by string search):
//   a SOAP Fault, whatever the HTTP status     by the fault (soap_xml.h, Fault::ToStatus):
//                                              Client/Sender permanent, Server/Receiver retryable
//   2xx, empty body, no response mapping        OK
//   2xx that is not a readable SOAP Envelope    INVALID_ARGUMENT "malformed SOAP response: ..."
//     (or that the response mapping cannot      (permanent: the partner may well have applied the
//     map)                                      request, so it is parked for a person, not resent)
//   2xx otherwise                               OK, with the mapped event (if a response mapping
//                                              is configured) in PushResult.confirmations
//   other status without a Fault                adapters::ClassifyHttpStatus
//
// Pull reads a raw SOAP response (e.g. an asynchronous callback) through the same response
// mapping; its correlation id is, in order: a field targeting "id", the <ess:CorrelationId>
// header element of the response, the request's correlation id.
//
// Dry-run renders the exact envelope, logs it with the values of PII fields masked, sends nothing.
//
// Settings: ess.v1.SoapAdapterConfig (proto/ess/v1/adapters.proto).
#ifndef ESS_ADAPTERS_SOAP_SOAP_ADAPTER_H_
#define ESS_ADAPTERS_SOAP_SOAP_ADAPTER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "adapters/adapter.h"
#include "adapters/soap/soap_xml.h"
#include "common/http_client.h"
#include "ess/v1/adapters.pb.h"

namespace ess::adapters::soap {

class SoapAdapter : public Adapter {
 public:
  // Validates the partner's settings. INVALID_ARGUMENT "partners[NAME].settings.FIELD: what".
  // `http` must outlive the adapter (it may be null for dry-run and Pull only).
  static absl::StatusOr<std::unique_ptr<SoapAdapter>> Create(const ess::v1::PartnerConfig& partner,
                                                             http::Client* http);

  void Push(const PushRequest& request, PushDone done) override;
  absl::StatusOr<std::vector<InboundEvent>> Pull(const PullRequest& request) override;

  // The request Push would send (exposed for tests and dry-run).
  absl::StatusOr<http::Request> Render(const PushRequest& request) const;

  // Judges the partner's answer to the push of `correlation_id` as the file comment says:
  // status, detail and confirmations of the result are set.
  void Judge(long http_status, std::string_view body, bool truncated,
             std::string_view correlation_id, PushResult* result) const;

 private:
  SoapAdapter() = default;

  std::string partner_;
  ess::v1::SoapAdapterConfig settings_;
  Version version_ = Version::k11;
  BodyTemplate body_;
  // The outbound mapping, for Mapper::IsPersonal (dry-run logs mask personal fields).
  Mapper outbound_;
  ResponseMapping response_mapping_;
  http::Client* http_ = nullptr;
};

class SoapAdapterFactory : public AdapterFactory {
 public:
  std::string_view name() const override { return "soap"; }
  const google::protobuf::Descriptor* settings_type() const override {
    return ess::v1::SoapAdapterConfig::descriptor();
  }
  absl::StatusOr<std::unique_ptr<Adapter>> Create(const ess::v1::PartnerConfig& partner,
                                                  const AdapterContext& context) const override;
};

}  // namespace ess::adapters::soap

#endif  // ESS_ADAPTERS_SOAP_SOAP_ADAPTER_H_
