// A webhook's way in before any I/O, on any bytes ("ID\nTIMESTAMP\nSIGNATURES\nBODY"): the
// signature check must not crash, what Sign makes Verify must take, and the JSON body goes
// through a partner's inbound mapping (PullJson).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "adapters/json_pull.h"
#include "common/mapping.h"
#include "common/webhook_signature.h"
#include "ess/v1/config.pb.h"

namespace {

const ess::webhook::SignatureVerifier& Verifier() {
  static const auto* verifier = [] {
    // A secret made here: any 32 bytes will do.
    auto created = ess::webhook::SignatureVerifier::Create(
        {absl::StrCat("whsec_", absl::Base64Escape(std::string(32, '\x5a')))}, absl::Minutes(5));
    if (!created.ok()) std::abort();
    return new ess::webhook::SignatureVerifier(*std::move(created));
  }();
  return *verifier;
}

const ess::Mapper& Mapper() {
  static const ess::Mapper* mapper = [] {
    google::protobuf::RepeatedPtrField<ess::v1::FieldMapping> fields;
    auto add = [&](const char* target, const char* source, const char* constant) {
      ess::v1::FieldMapping* f = fields.Add();
      f->set_target(target);
      f->set_source(source);
      f->set_constant(constant);
      return f;
    };
    add("type", "", "SlotConfirmed");
    add("id", "id", "");
    add("status", "status", "");
    add("visitor", "visitors[0].name", "")->set_default_value("none");
    auto compiled = ess::Mapper::Compile(fields);
    if (!compiled.ok()) std::abort();
    return new ess::Mapper(*std::move(compiled));
  }();
  return *mapper;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::string_view header[3];
  for (std::string_view& h : header) {
    const size_t end = in.find('\n');
    if (end == std::string_view::npos) return 0;
    h = in.substr(0, end);
    in.remove_prefix(end + 1);
  }
  const absl::Time now = absl::FromUnixSeconds(1764000000);
  (void)Verifier().Verify(header[0], header[1], header[2], in, now);
  const std::string signature = Verifier().Sign(header[0], "1764000000", in);
  if (!header[0].empty() && !Verifier().Verify(header[0], "1764000000", signature, in, now).ok()) {
    std::abort();
  }
  (void)ess::adapters::PullJson(Mapper(), {.body = in, .content_type = "application/json"});
  return 0;
}
