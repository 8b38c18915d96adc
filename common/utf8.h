// UTF-8 checks for text that came from outside (a partner's payload, a header, a file, an AMQP
// property) before it goes where only UTF-8 is allowed: protobuf `string` fields (the store's
// records), JSON on the bus, log lines.
#ifndef ESS_COMMON_UTF8_H_
#define ESS_COMMON_UTF8_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace ess::utf8 {

// Whether `text` is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing
// above U+10FFFF, no sequence cut short).
bool Valid(std::string_view text);

// The offset of the first byte of `text` that does not start a well-formed sequence, or
// std::string_view::npos when the whole text is valid.
size_t FirstInvalid(std::string_view text);

// `text` with each byte that does not start a well-formed sequence replaced by U+FFFD, for free
// text (an error message quoting a partner) that must reach a UTF-8 field whatever it holds.
std::string Repair(std::string_view text);

// `text` itself when it has at most `max_bytes` bytes; else its head, cut on a character
// boundary (never inside a UTF-8 sequence), then a marker saying how much was cut:
// "HEAD... [cut: 198000 bytes more]", `max_bytes` bytes at most in all. For free text (a
// partner's error) bound for a place of bounded size: an AMQP header, a record, a log line.
// `max_bytes` should leave room for the marker (kMinCutBytes); a smaller one gets the marker
// alone, cut short. Taken by value: a text that fits is handed back without a copy.
inline constexpr size_t kMinCutBytes = 64;
std::string Cut(std::string text, size_t max_bytes);

// The tail of `text` of at most `max_bytes` bytes, starting on a character boundary (the
// bytes of a sequence cut at its start are dropped too). For a log that keeps its latest
// entries.
std::string KeepTail(std::string text, size_t max_bytes);

}  // namespace ess::utf8

#endif  // ESS_COMMON_UTF8_H_
