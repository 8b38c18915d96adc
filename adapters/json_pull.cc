#include "adapters/json_pull.h"

#include "common/json.h"

namespace ess::adapters {

absl::StatusOr<std::vector<InboundEvent>> PullJson(const Mapper& mapper,
                                                   const PullRequest& request) {
  rapidjson::Document doc;
  absl::Status s = json::Parse(request.body, doc);
  if (!s.ok()) return s;
  std::vector<MappedField> fields;
  s = mapper.Apply(doc, &fields);
  if (!s.ok()) return s;
  InboundEvent event;
  for (const MappedField& f : fields) {
    if (f.name == "id" && f.value->IsString()) event.correlation_id = json::View(*f.value);
    if (f.name == "type" && f.value->IsString()) event.event_type = json::View(*f.value);
  }
  if (event.correlation_id.empty()) {
    return absl::InvalidArgumentError("the mapped event has no string \"id\" (its correlation id)");
  }
  if (event.event_type.empty()) {
    return absl::InvalidArgumentError("the mapped event has no string \"type\"");
  }
  Mapper::AppendJson(fields, &event.body);
  std::vector<InboundEvent> events;
  events.push_back(std::move(event));
  return events;
}

}  // namespace ess::adapters
