// The hub's ids: correlation ids, message ids and event types.
//
// An id travels in AMQP properties (short strings: 255 bytes at most), HTTP headers, the store's
// UTF-8 text and log lines, so every id that enters the hub from outside must pass Check, and
// an id the hub makes from another one goes through Fit.
//
// Message ids made from content, for events whose sender gave them none (ContentId): the
// inbound lane's for webhooks without a webhook-id, the outbound lane's for events published
// without an AMQP message_id. The same event always gets the same id (a redelivery or a retry
// is recognised); a different update of the same business id gets another.
#ifndef ESS_COMMON_IDS_H_
#define ESS_COMMON_IDS_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace ess::ids {

// The longest id, in bytes: what an AMQP short string (message-id, correlation-id, type) holds.
inline constexpr size_t kMaxBytes = 255;

// OK when `id` can be an id everywhere in the hub: 1 to kMaxBytes bytes of well-formed UTF-8
// without control characters (U+0000-U+001F, U+007F). Else INVALID_ARGUMENT
// "WHAT: REASON", e.g. "webhook-id: 300 bytes; at most 255".
absl::Status Check(std::string_view id, std::string_view what);

// `id` itself when it has at most kMaxBytes bytes; else its longest head that leaves room,
// cut on a character boundary, then "~" and ShortHash(id): kMaxBytes bytes at most, and two
// different ids stay different. For ids the hub makes by adding to an id that passed Check.
// Taken by value: an id that fits is handed back without a copy.
std::string Fit(std::string id);

// The first 16 hex digits of SHA-256(text).
std::string ShortHash(std::string_view text);

// "ID:HASH" of the event's business id and its body ("HASH" alone without an id), through Fit.
std::string ContentId(std::string_view id, std::string_view body);

}  // namespace ess::ids

#endif  // ESS_COMMON_IDS_H_
