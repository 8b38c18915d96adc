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

}  // namespace ess::utf8

#endif  // ESS_COMMON_UTF8_H_
