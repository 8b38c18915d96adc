#include "adapters/rest/rest_adapter.h"

#include <curl/curl.h>

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "adapters/http_status.h"
#include "adapters/json_pull.h"
#include "common/log.h"
#include "common/sv.h"

namespace ess::adapters::rest {
namespace {

std::string UrlEscape(std::string_view s) {
  char* e = curl_easy_escape(nullptr, s.data(), static_cast<int>(s.size()));
  std::string out = e ? e : "";
  curl_free(e);
  return out;
}

// A placeholder's value as one path segment. "." and ".." are unreserved, so escaping leaves
// them as they are, and as a whole segment they are dot segments (RFC 3986 5.2.4) that a
// client or any proxy on the way may resolve: "/api/inmates/../visits/../cancel" is
// "/api/cancel", another endpoint. Percent-encoded they are data.
std::string PathSegment(std::string_view value) {
  if (value == ".") return "%2E";
  if (value == "..") return "%2E%2E";
  return UrlEscape(value);
}

// Walks a path template: `literal(text)` for the text between placeholders, `name(name)` for
// each {name}, in order; the first error of `name` stops it. INVALID_ARGUMENT for a placeholder
// without its } or without a name.
template <typename Literal, typename Name>
absl::Status WalkPath(std::string_view tmpl, Literal literal, Name name) {
  size_t i = 0;
  while (i < tmpl.size()) {
    const size_t open = tmpl.find('{', i);
    if (open == std::string_view::npos) {
      literal(tmpl.substr(i));
      break;
    }
    const size_t close = tmpl.find('}', open);
    if (close == std::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("placeholder at offset ", open, " has no closing }"));
    }
    const std::string_view n = tmpl.substr(open + 1, close - open - 1);
    if (n.empty() || n.find('{') != std::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("placeholder at offset ", open, " has no name"));
    }
    literal(tmpl.substr(i, open - i));
    if (absl::Status s = name(n); !s.ok()) return s;
    i = close + 1;
  }
  return absl::OkStatus();
}

// Fills {name} placeholders from the mapped fields. INVALID_ARGUMENT for an unknown name.
absl::StatusOr<std::string> ExpandPath(std::string_view tmpl, std::span<const MappedField> fields) {
  std::string out;
  absl::Status s = WalkPath(
      tmpl, [&](std::string_view text) { out.append(text); },
      [&](std::string_view name) {
        for (const MappedField& f : fields) {
          if (f.name == name) {
            out.append(PathSegment(Mapper::Text(f)));
            return absl::OkStatus();
          }
        }
        return absl::InvalidArgumentError(
            absl::StrCat("path placeholder {", std::string(name), "} is not a mapped field"));
      });
  if (!s.ok()) return s;
  return out;
}

}  // namespace

RestAdapter::RestAdapter(std::string partner, ess::v1::RestAdapterConfig settings,
                         http::Client* http, std::optional<Mapper> inbound,
                         std::optional<Mapper> outbound)
    : partner_(std::move(partner)),
      settings_(std::move(settings)),
      success_codes_(settings_.success_codes().begin(), settings_.success_codes().end()),
      http_(http),
      inbound_(std::move(inbound)),
      outbound_(std::move(outbound)) {
  for (const auto& [name, value] : settings_.headers()) {
    if (absl::EqualsIgnoreCase(name, "Content-Type")) custom_content_type_ = true;
  }
}

absl::StatusOr<http::Request> RestAdapter::Render(const PushRequest& request) const {
  http::Request req;
  req.method = settings_.method().empty() ? "POST" : settings_.method();
  absl::StatusOr<std::string> path = ExpandPath(settings_.path(), request.fields);
  if (!path.ok()) return path.status();
  req.url = absl::StrCat(settings_.base_url(), *path);
  req.headers.reserve(4 + settings_.headers_size());
  // A configured Content-Type (a vendor media type) replaces the default one, below.
  if (!custom_content_type_) req.headers.emplace_back("Content-Type", "application/json");
  // Per event, not per business id: a second update of the same visit is not a repeat.
  req.headers.emplace_back(
      "Idempotency-Key",
      std::string(request.message_id.empty() ? request.correlation_id : request.message_id));
  req.headers.emplace_back(
      settings_.correlation_header().empty() ? "X-Correlation-ID" : settings_.correlation_header(),
      std::string(request.correlation_id));
  for (const auto& [k, v] : settings_.headers()) req.headers.emplace_back(k, v);
  Mapper::AppendJson(request.fields, &req.body);
  ApplyTransport(settings_, req);
  return req;
}

void RestAdapter::Push(const PushRequest& request, PushDone done) {
  absl::StatusOr<http::Request> req = Render(request);
  if (!req.ok()) {
    std::move(done)(PushResult{.status = req.status()});
    return;
  }
  std::string rendered = absl::StrCat(req->method, " ", req->url, "\n", req->body);
  if (request.dry_run) {
    // Logged as rendered with each personal field's value masked: a field whose target or
    // source is personal (a renamed `offender <- inmateId` too), in the body and in the path;
    // then any personal member inside a value.
    std::vector<MappedField> masked(request.fields.begin(), request.fields.end());
    for (MappedField& f : masked) {
      if (outbound_.has_value() && outbound_->IsPersonal(f.name))
        f = {.name = f.name, .text = "***"};
    }
    PushRequest shown = request;
    shown.fields = masked;
    absl::StatusOr<http::Request> logged = Render(shown);
    log::Info(request.correlation_id, "dry-run: request not sent",
              {{"partner", partner_},
               {"method", req->method},
               {"url", logged.ok() ? logged->url : "?"},
               {"body", log::MaskJson(logged.ok() ? logged->body : "")}});
    std::move(done)(
        PushResult{.status = absl::OkStatus(), .rendered = std::move(rendered), .dry_run = true});
    return;
  }
  SendAndJudge(
      http_, "rest", *std::move(req), std::move(rendered),
      [this, retry = request.attempt > 1](const http::Response& resp, PushResult* result) {
        result->detail = absl::StrCat(resp.status);
        result->status = ClassifyHttpStatus(resp.status, success_codes_, resp.body);
        // Every push carries its event's Idempotency-Key. A partner that follows the IETF
        // Idempotency-Key draft answers 409 to a repeat of a key whose first request it is still
        // processing (e.g. one that timed out on our side): on a retry that is no conflict of
        // the event's, and parking it would park an event the partner then delivers. On a
        // first attempt 409 stays a business conflict (permanent).
        if (retry && resp.status == 409 && !result->status.ok() && !IsRetryable(result->status)) {
          result->status = absl::UnavailableError(absl::StrCat(
              "HTTP 409 to a retry: the partner may still be processing an earlier attempt with "
              "this Idempotency-Key (",
              result->status.message(), ")"));
        }
      },
      std::move(done));
}

absl::StatusOr<std::vector<InboundEvent>> RestAdapter::Pull(const PullRequest& request) {
  if (!inbound_) {
    return absl::FailedPreconditionError(
        absl::StrCat("partner \"", partner_, "\" has no inbound route"));
  }
  return PullJson(*inbound_, request);
}

absl::StatusOr<std::unique_ptr<Adapter>> RestAdapterFactory::Create(
    const ess::v1::PartnerConfig& partner, const AdapterContext& context) const {
  ess::v1::RestAdapterConfig settings;
  if (!partner.settings().UnpackTo(&settings)) {
    return absl::InvalidArgumentError(
        absl::StrCat("partners[", partner.name(), "].settings: not a ", settings.GetTypeName()));
  }
  auto bad = [&](std::string_view field, std::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("partners[", partner.name(), "].settings.",
                                                   std::string(field), ": ", std::string(what)));
  };
  const std::string& url = settings.base_url();
  if (!absl::StartsWith(url, "http://") && !absl::StartsWith(url, "https://")) {
    return bad("base_url", "must start with http:// or https://");
  }
  if (!settings.path().empty() && settings.path()[0] != '/')
    return bad("path", "must start with /");
  // Every {placeholder} must be closed and, when the outbound mapping is given, name one of its
  // targets: found here, not by parking every event the lane takes.
  absl::flat_hash_set<std::string> targets;
  for (const auto& f : partner.outbound().mapping()) targets.insert(f.target());
  absl::Status path = WalkPath(
      settings.path(), [](std::string_view) {},
      [&](std::string_view name) {
        if (targets.empty() || targets.contains(std::string(name))) return absl::OkStatus();
        return absl::InvalidArgumentError(absl::StrCat("placeholder {", std::string(name),
                                                       "} is not a target of outbound.mapping"));
      });
  if (!path.ok()) return bad("path", ToStd(path.message()));
  std::string method = absl::AsciiStrToUpper(settings.method());
  if (!method.empty() && method != "POST" && method != "PUT" && method != "PATCH") {
    return bad("method", "must be POST, PUT or PATCH");
  }
  settings.set_method(method);
  // A configured header must be one header line; the HTTP client would refuse every request
  // with it, so it is refused here, at its line, rather than by parking every event.
  for (const auto& [name, value] : settings.headers()) {
    if (absl::Status h = http::CheckHeader(name, value); !h.ok()) {
      return bad(absl::StrCat("headers.", name), ToStd(h.message()));
    }
  }
  if (!settings.correlation_header().empty()) {
    if (absl::Status h = http::CheckHeader(settings.correlation_header(), ""); !h.ok()) {
      return bad("correlation_header", ToStd(h.message()));
    }
  }
  // The hub's own headers: a second one beside them would reach the partner too (two
  // Idempotency-Keys, of which the partner may read either), and a static one would make
  // every event a repeat of the first. (A Content-Type replaces the default one.)
  const std::string correlation = settings.correlation_header().empty()
                                      ? std::string("X-Correlation-ID")
                                      : settings.correlation_header();
  for (const auto& [name, value] : settings.headers()) {
    if (absl::EqualsIgnoreCase(name, "Idempotency-Key")) {
      return bad(absl::StrCat("headers.", name),
                 "is set by the adapter (the event's message id, per event)");
    }
    if (absl::EqualsIgnoreCase(name, correlation)) {
      return bad(absl::StrCat("headers.", name),
                 "is set by the adapter (the correlation id; see correlation_header)");
    }
  }
  for (uint32_t code : settings.success_codes()) {
    if (code < 100 || code > 599) return bad("success_codes", "must be HTTP status codes");
  }
  if (absl::Status s = CheckTransport(partner.name(), settings); !s.ok()) return s;
  std::optional<Mapper> inbound;
  if (partner.has_inbound()) {
    absl::StatusOr<Mapper> m = Mapper::Compile(partner.inbound().mapping());
    if (!m.ok()) return m.status();
    inbound = *std::move(m);
  }
  std::optional<Mapper> outbound;
  if (partner.has_outbound()) {
    absl::StatusOr<Mapper> m = Mapper::Compile(partner.outbound().mapping());
    if (!m.ok()) return m.status();
    outbound = *std::move(m);
  }
  return std::make_unique<RestAdapter>(partner.name(), std::move(settings), context.http,
                                       std::move(inbound), std::move(outbound));
}

}  // namespace ess::adapters::rest
