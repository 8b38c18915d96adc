// A SOAP response as a partner may send it, any bytes: parsing, the fault's classification and a
// response mapping must not crash (AddressSanitizer, UndefinedBehaviorSanitizer).
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "adapters/soap/soap_xml.h"
#include "ess/v1/adapters.pb.h"

namespace soap = ess::adapters::soap;

namespace {

const soap::ResponseMapping& Mapping() {
  static const soap::ResponseMapping* mapping = [] {
    google::protobuf::RepeatedPtrField<ess::v1::SoapResponseField> fields;
    auto add = [&](const char* target, const char* xpath, const char* constant) {
      ess::v1::SoapResponseField* f = fields.Add();
      f->set_target(target);
      f->set_xpath(xpath);
      f->set_constant(constant);
    };
    add("type", "", "SlotConfirmed");
    add("status", "string(//v:Status)", "");
    add("slots", "count(//v:Slot)", "");
    add("start", "//v:Slot[1]/@start", "");
    google::protobuf::Map<std::string, std::string> namespaces;
    namespaces["v"] = "urn:visits";
    auto compiled = soap::ResponseMapping::Compile(fields, namespaces);
    if (!compiled.ok()) std::abort();
    return new soap::ResponseMapping(*std::move(compiled));
  }();
  return *mapping;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto response =
      soap::Response::Parse(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!response.ok()) return 0;
  if (response->fault().has_value()) (void)response->fault()->ToStatus();
  (void)Mapping().Apply(*response, "VIS-1");
  return 0;
}
