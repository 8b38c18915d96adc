// Message ids made from content, for events whose sender gave them none. Both lanes use them:
// the inbound lane for webhooks without a webhook-id, the outbound lane for events published
// without an AMQP message_id. The same event always gets the same id (a redelivery or a retry
// is recognised); a different update of the same business id gets another.
#ifndef ESS_COMMON_IDS_H_
#define ESS_COMMON_IDS_H_

#include <string>
#include <string_view>

namespace ess::ids {

// The first 16 hex digits of SHA-256(text).
std::string ShortHash(std::string_view text);

// "ID:HASH" of the event's business id and its body ("HASH" alone without an id).
std::string ContentId(std::string_view id, std::string_view body);

}  // namespace ess::ids

#endif  // ESS_COMMON_IDS_H_
