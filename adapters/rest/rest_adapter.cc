#include "adapters/rest/rest_adapter.h"

#include <curl/curl.h>

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "adapters/http_status.h"
#include "adapters/json_pull.h"
#include "common/log.h"

namespace ess::adapters::rest {
namespace {

std::string UrlEscape(std::string_view s) {
  char* e = curl_easy_escape(nullptr, s.data(), static_cast<int>(s.size()));
  std::string out = e ? e : "";
  curl_free(e);
  return out;
}

// Fills {name} placeholders from the mapped fields. INVALID_ARGUMENT for an unknown name.
absl::StatusOr<std::string> ExpandPath(std::string_view tmpl, std::span<const MappedField> fields) {
  std::string out;
  size_t i = 0;
  while (i < tmpl.size()) {
    size_t open = tmpl.find('{', i);
    if (open == std::string_view::npos) {
      out.append(tmpl.substr(i));
      break;
    }
    size_t close = tmpl.find('}', open);
    if (close == std::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("path \"", std::string(tmpl), "\": missing }"));
    }
    out.append(tmpl.substr(i, open - i));
    std::string_view name = tmpl.substr(open + 1, close - open - 1);
    const MappedField* hit = nullptr;
    for (const MappedField& f : fields) {
      if (f.name == name) hit = &f;
    }
    if (hit == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("path placeholder {", std::string(name), "} is not a mapped field"));
    }
    out.append(UrlEscape(Mapper::Text(*hit)));
    i = close + 1;
  }
  return out;
}

}  // namespace

RestAdapter::RestAdapter(std::string partner, ess::v1::RestAdapterConfig settings,
                         http::Client* http, std::optional<Mapper> inbound)
    : partner_(std::move(partner)),
      settings_(std::move(settings)),
      success_codes_(settings_.success_codes().begin(), settings_.success_codes().end()),
      http_(http),
      inbound_(std::move(inbound)) {}

absl::StatusOr<http::Request> RestAdapter::Render(const PushRequest& request) const {
  http::Request req;
  req.method = settings_.method().empty() ? "POST" : settings_.method();
  absl::StatusOr<std::string> path = ExpandPath(settings_.path(), request.fields);
  if (!path.ok()) return path.status();
  req.url = absl::StrCat(settings_.base_url(), *path);
  req.headers.reserve(4 + settings_.headers_size());
  req.headers.emplace_back("Content-Type", "application/json");
  req.headers.emplace_back("Idempotency-Key", std::string(request.correlation_id));
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
    log::Info(request.correlation_id, "dry-run: request not sent",
              {{"partner", partner_},
               {"method", req->method},
               {"url", req->url},
               {"body", log::MaskJson(req->body)}});
    std::move(done)(
        PushResult{.status = absl::OkStatus(), .rendered = std::move(rendered), .dry_run = true});
    return;
  }
  SendAndJudge(
      http_, "rest", *std::move(req), std::move(rendered),
      [this](const http::Response& resp, PushResult* result) {
        result->detail = absl::StrCat(resp.status);
        result->status = ClassifyHttpStatus(resp.status, success_codes_, resp.body);
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
  std::string method = absl::AsciiStrToUpper(settings.method());
  if (!method.empty() && method != "POST" && method != "PUT" && method != "PATCH") {
    return bad("method", "must be POST, PUT or PATCH");
  }
  settings.set_method(method);
  for (uint32_t code : settings.success_codes()) {
    if (code < 100 || code > 599) return bad("success_codes", "must be HTTP status codes");
  }
  std::optional<Mapper> inbound;
  if (partner.has_inbound()) {
    absl::StatusOr<Mapper> m = Mapper::Compile(partner.inbound().mapping());
    if (!m.ok()) return m.status();
    inbound = *std::move(m);
  }
  return std::make_unique<RestAdapter>(partner.name(), std::move(settings), context.http,
                                       std::move(inbound));
}

}  // namespace ess::adapters::rest
