// Debian 12's Abseil is built with its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW
// is 0), which does not convert to or from std::string_view. These two spell the conversion.
#ifndef ESS_COMMON_SV_H_
#define ESS_COMMON_SV_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace ess {

inline std::string_view ToStd(absl::string_view s) { return {s.data(), s.size()}; }
inline absl::string_view ToAbsl(std::string_view s) { return {s.data(), s.size()}; }

}  // namespace ess

#endif  // ESS_COMMON_SV_H_
