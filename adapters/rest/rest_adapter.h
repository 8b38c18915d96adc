// The `rest` adapter: JSON over HTTP(S).
//
// Push renders the mapped fields as a JSON object and sends it (POST by default) to
// base_url + path, where {field} placeholders in the path are filled from the mapped fields.
// The event's message id (its correlation id when it has none) travels in `Idempotency-Key`,
// the correlation id in the correlation header (X-Correlation-ID by default); the configured
// `headers` may name neither (refused when the adapter is built), and a configured Content-Type
// replaces application/json. Pull maps a JSON callback through the inbound mapping.
//
// Answers are judged by adapters::ClassifyHttpStatus, but for one: a 409 to a retry
// (PushRequest.attempt > 1) is retryable (UNAVAILABLE). Each push carries its event's
// Idempotency-Key, and a partner that follows the IETF Idempotency-Key draft answers 409 to a
// repeat of a key whose first request it is still processing (one that timed out on our
// side). A first attempt's 409 is a business conflict (permanent).
//
// Settings: ess.v1.RestAdapterConfig (proto/ess/v1/adapters.proto).
#ifndef ESS_ADAPTERS_REST_REST_ADAPTER_H_
#define ESS_ADAPTERS_REST_REST_ADAPTER_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "adapters/adapter.h"
#include "common/http_client.h"
#include "common/mapping.h"
#include "ess/v1/adapters.pb.h"

namespace ess::adapters::rest {

class RestAdapter : public Adapter {
 public:
  // `http` must outlive the adapter. `inbound` is empty for a partner without inbound route;
  // `outbound`, the partner's outbound mapping, tells which fields are personal (dry-run logs).
  RestAdapter(std::string partner, ess::v1::RestAdapterConfig settings, http::Client* http,
              std::optional<Mapper> inbound, std::optional<Mapper> outbound = std::nullopt);

  void Push(const PushRequest& request, PushDone done) override;
  absl::StatusOr<std::vector<InboundEvent>> Pull(const PullRequest& request) override;

  // The request Push would send (exposed for tests and dry-run).
  absl::StatusOr<http::Request> Render(const PushRequest& request) const;

 private:
  std::string partner_;
  ess::v1::RestAdapterConfig settings_;
  std::vector<uint32_t> success_codes_;
  http::Client* http_;
  std::optional<Mapper> inbound_;
  std::optional<Mapper> outbound_;
  bool custom_content_type_ = false;  // `headers` has a Content-Type
};

class RestAdapterFactory : public AdapterFactory {
 public:
  std::string_view name() const override { return "rest"; }
  const google::protobuf::Descriptor* settings_type() const override {
    return ess::v1::RestAdapterConfig::descriptor();
  }
  absl::StatusOr<std::unique_ptr<Adapter>> Create(const ess::v1::PartnerConfig& partner,
                                                  const AdapterContext& context) const override;
};

}  // namespace ess::adapters::rest

#endif  // ESS_ADAPTERS_REST_REST_ADAPTER_H_
