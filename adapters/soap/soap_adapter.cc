#include "adapters/soap/soap_adapter.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "adapters/http_status.h"
#include "common/log.h"
#include "common/sv.h"

namespace ess::adapters::soap {

absl::StatusOr<std::unique_ptr<SoapAdapter>> SoapAdapter::Create(
    const ess::v1::PartnerConfig& partner, http::Client* http) {
  std::unique_ptr<SoapAdapter> a(new SoapAdapter());
  a->partner_ = partner.name();
  a->http_ = http;
  ess::v1::SoapAdapterConfig& settings = a->settings_;
  if (!partner.settings().UnpackTo(&settings)) {
    return absl::InvalidArgumentError(
        absl::StrCat("partners[", partner.name(), "].settings: not a ", settings.GetTypeName()));
  }
  auto bad = [&](std::string_view field, std::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("partners[", partner.name(), "].settings.",
                                                   ToAbsl(field), ": ", ToAbsl(what)));
  };
  const std::string& url = settings.endpoint();
  if (!absl::StartsWith(url, "http://") && !absl::StartsWith(url, "https://")) {
    return bad("endpoint", "must start with http:// or https://");
  }
  if (settings.soap_version().empty() || settings.soap_version() == "1.1") {
    a->version_ = Version::k11;
  } else if (settings.soap_version() == "1.2") {
    a->version_ = Version::k12;
  } else {
    return bad("soap_version", "must be 1.1 or 1.2");
  }
  if (settings.soap_action().find_first_of("\"\r\n") != std::string::npos) {
    return bad("soap_action", "must not contain quotes or line breaks");
  }
  if (settings.body_template().empty()) return bad("body_template", "must not be empty");
  absl::StatusOr<BodyTemplate> body = BodyTemplate::Compile(settings.body_template());
  if (!body.ok()) return bad("body_template", ToStd(body.status().message()));
  a->body_ = *std::move(body);
  // Every placeholder must name a field the outbound mapping produces.
  if (partner.has_outbound() && partner.outbound().mapping_size() > 0) {
    absl::flat_hash_set<std::string> targets;
    for (const auto& f : partner.outbound().mapping()) targets.insert(f.target());
    for (const std::string& name : a->body_.Placeholders()) {
      if (!targets.contains(name)) {
        return bad("body_template",
                   absl::StrCat("placeholder {", name, "} is not a target of outbound.mapping"));
      }
    }
  }
  // The outbound mapping says which fields are personal, for the dry-run log.
  absl::StatusOr<Mapper> outbound = Mapper::Compile(
      partner.has_outbound() ? partner.outbound().mapping()
                             : google::protobuf::RepeatedPtrField<ess::v1::FieldMapping>());
  if (!outbound.ok()) return outbound.status();
  a->outbound_ = *std::move(outbound);
  // The template must be well-formed XML once filled (placeholders filled with nothing).
  absl::StatusOr<std::string> probe_body = a->body_.Render({}, /*mask_personal=*/nullptr);
  if (!probe_body.ok()) return bad("body_template", ToStd(probe_body.status().message()));
  absl::StatusOr<std::string> probe = RenderEnvelope(a->version_, "probe", *probe_body);
  if (!probe.ok()) return bad("body_template", ToStd(probe.status().message()));
  absl::StatusOr<Response> parsed = Response::Parse(*probe);
  if (!parsed.ok()) {
    std::string_view why = ToStd(parsed.status().message());
    why.remove_prefix(std::min(why.size(), std::string_view("malformed SOAP response: ").size()));
    return bad("body_template", absl::StrCat("not well-formed XML: ", ToAbsl(why)));
  }
  absl::StatusOr<ResponseMapping> mapping =
      ResponseMapping::Compile(settings.response_mapping(), settings.namespaces());
  if (!mapping.ok()) {
    // The mapping names its own field ("response_mapping[0].xpath: ..." or "namespaces.v: ...").
    return absl::InvalidArgumentError(
        absl::StrCat("partners[", partner.name(), "].settings.", mapping.status().message()));
  }
  a->response_mapping_ = *std::move(mapping);
  // The partner's SOAP callbacks are read through the response mapping; without one every
  // webhook would be answered 503 for ever.
  if (partner.has_inbound() && !partner.inbound().webhook_path().empty() &&
      a->response_mapping_.empty()) {
    return bad("response_mapping", "is needed to read the callbacks of inbound.webhook_path");
  }
  for (const auto& [name, value] : settings.headers()) {
    if (absl::Status h = http::CheckHeader(name, value); !h.ok()) {
      return bad(absl::StrCat("headers.", name), ToStd(h.message()));
    }
    const std::string lower = absl::AsciiStrToLower(name);
    if (lower == "content-type" || lower == "soapaction") {
      return bad(absl::StrCat("headers.", name), "is set by the adapter (see soap_action)");
    }
  }
  if (absl::Status s = CheckTransport(partner.name(), settings); !s.ok()) return s;
  return a;
}

absl::StatusOr<http::Request> SoapAdapter::Render(const PushRequest& request) const {
  absl::StatusOr<std::string> body = body_.Render(request.fields, /*mask_personal=*/nullptr);
  if (!body.ok()) return body.status();
  absl::StatusOr<std::string> envelope = RenderEnvelope(version_, request.correlation_id, *body);
  if (!envelope.ok()) return envelope.status();
  http::Request req;
  req.method = "POST";
  req.url = settings_.endpoint();
  req.headers.reserve(2 + settings_.headers_size());
  if (version_ == Version::k11) {
    req.headers.emplace_back("Content-Type", "text/xml; charset=utf-8");
    req.headers.emplace_back("SOAPAction", absl::StrCat("\"", settings_.soap_action(), "\""));
  } else {
    std::string type = "application/soap+xml; charset=utf-8";
    if (!settings_.soap_action().empty()) {
      absl::StrAppend(&type, "; action=\"", settings_.soap_action(), "\"");
    }
    req.headers.emplace_back("Content-Type", std::move(type));
  }
  for (const auto& [k, v] : settings_.headers()) req.headers.emplace_back(k, v);
  req.body = *std::move(envelope);
  ApplyTransport(settings_, req);
  return req;
}

void SoapAdapter::Push(const PushRequest& request, PushDone done) {
  absl::StatusOr<http::Request> req = Render(request);
  if (!req.ok()) {
    std::move(done)(PushResult{.status = req.status()});
    return;
  }
  std::string rendered = absl::StrCat(req->method, " ", req->url, "\n", req->body);
  if (request.dry_run) {
    // The envelope again, with PII values masked, for the log line only.
    absl::StatusOr<std::string> masked_body = body_.Render(request.fields, &outbound_);
    absl::StatusOr<std::string> masked =
        masked_body.ok() ? RenderEnvelope(version_, request.correlation_id, *masked_body)
                         : masked_body.status();
    log::Info(request.correlation_id, "dry-run: SOAP request not sent",
              {{"partner", partner_},
               {"url", req->url},
               {"soap_action", settings_.soap_action()},
               {"envelope", masked.ok() ? std::string_view(*masked) : "(unrenderable)"}});
    std::move(done)(
        PushResult{.status = absl::OkStatus(), .rendered = std::move(rendered), .dry_run = true});
    return;
  }
  SendAndJudge(
      http_, "soap", *std::move(req), std::move(rendered),
      [this, cid = std::string(request.correlation_id)](const http::Response& resp,
                                                        PushResult* result) {
        Judge(resp.status, resp.body, resp.truncated, cid, result);
      },
      std::move(done));
}

void SoapAdapter::Judge(long http_status, std::string_view body, bool truncated,
                        std::string_view correlation_id, PushResult* result) const {
  const bool success = http_status >= 200 && http_status < 300;
  result->detail = absl::StrCat(http_status);
  if (success && body.empty() && response_mapping_.empty()) {
    result->status = absl::OkStatus();
    return;
  }
  absl::StatusOr<Response> parsed = Response::Parse(body);
  if (parsed.ok() && parsed->fault()) {
    result->status = parsed->fault()->ToStatus();
    absl::StrAppend(&result->detail, " ", result->status.message());
    return;
  }
  if (!success) {
    result->status = ClassifyHttpStatus(http_status, {}, body);
    return;
  }
  if (!parsed.ok()) {
    std::string msg(parsed.status().message());
    if (truncated) absl::StrAppend(&msg, " (the response exceeded max_response_bytes)");
    result->status = absl::InvalidArgumentError(msg);
    absl::StrAppend(&result->detail, " ", msg);
    return;
  }
  if (!response_mapping_.empty()) {
    absl::StatusOr<InboundEvent> event = response_mapping_.Apply(*parsed, correlation_id);
    if (!event.ok()) {
      result->status = absl::InvalidArgumentError(
          absl::StrCat("SOAP response cannot be mapped: ", event.status().message()));
      absl::StrAppend(&result->detail, " ", result->status.message());
      return;
    }
    result->confirmations.push_back(*std::move(event));
  }
  result->status = absl::OkStatus();
}

absl::StatusOr<std::vector<InboundEvent>> SoapAdapter::Pull(const PullRequest& request) {
  if (response_mapping_.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("partner \"", partner_, "\" has no response_mapping to read SOAP with"));
  }
  absl::StatusOr<Response> parsed = Response::Parse(request.body);
  if (!parsed.ok()) return parsed.status();
  if (parsed->fault()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the payload is a ", parsed->fault()->ToStatus().message()));
  }
  std::string_view cid =
      parsed->correlation_id().empty() ? request.correlation_id : parsed->correlation_id();
  absl::StatusOr<InboundEvent> event = response_mapping_.Apply(*parsed, cid);
  if (!event.ok()) return event.status();
  std::vector<InboundEvent> events;
  events.push_back(*std::move(event));
  return events;
}

absl::StatusOr<std::unique_ptr<Adapter>> SoapAdapterFactory::Create(
    const ess::v1::PartnerConfig& partner, const AdapterContext& context) const {
  absl::StatusOr<std::unique_ptr<SoapAdapter>> a = SoapAdapter::Create(partner, context.http);
  if (!a.ok()) return a.status();
  return std::unique_ptr<Adapter>(*std::move(a));
}

}  // namespace ess::adapters::soap
