// Pull for partners that call back with JSON (REST webhooks): the partner's payload is mapped
// through its inbound mapping into one internal event.
#ifndef ESS_ADAPTERS_JSON_PULL_H_
#define ESS_ADAPTERS_JSON_PULL_H_

#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "adapters/adapter.h"
#include "common/mapping.h"

namespace ess::adapters {

// INVALID_ARGUMENT for a body that is not a JSON object, lacks a mapped field, or maps to an
// event without a string "id" and "type".
absl::StatusOr<std::vector<InboundEvent>> PullJson(const Mapper& mapper,
                                                   const PullRequest& request);

// The internal event made of mapped fields: its JSON, its "id" (correlation id) and "type".
// INVALID_ARGUMENT as CheckIds says. Shared by every adapter's Pull.
absl::StatusOr<InboundEvent> EventFromFields(std::span<const MappedField> fields);

// INVALID_ARGUMENT when the event's "id" or "type" is missing (not a string) or is not an id
// the hub can carry (ids::Check), naming which.
absl::Status CheckIds(const InboundEvent& event);

}  // namespace ess::adapters

#endif  // ESS_ADAPTERS_JSON_PULL_H_
