#include "adapters/json_pull.h"

#include "common/ids.h"
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
  absl::StatusOr<InboundEvent> event = EventFromFields(fields);
  if (!event.ok()) return event.status();
  std::vector<InboundEvent> events;
  events.push_back(*std::move(event));
  return events;
}

absl::StatusOr<InboundEvent> EventFromFields(std::span<const MappedField> fields) {
  InboundEvent event;
  event.correlation_id = Mapper::StringOf(fields, "id");
  event.event_type = Mapper::StringOf(fields, "type");
  if (absl::Status s = CheckIds(event); !s.ok()) return s;
  Mapper::AppendJson(fields, &event.body);
  return event;
}

absl::Status CheckIds(const InboundEvent& event) {
  if (event.correlation_id.empty()) {
    return absl::InvalidArgumentError("the mapped event has no string \"id\" (its correlation id)");
  }
  if (event.event_type.empty()) {
    return absl::InvalidArgumentError("the mapped event has no string \"type\"");
  }
  if (absl::Status s = ids::Check(event.correlation_id, "the mapped event's \"id\""); !s.ok()) {
    return s;
  }
  return ids::Check(event.event_type, "the mapped event's \"type\"");
}

}  // namespace ess::adapters
