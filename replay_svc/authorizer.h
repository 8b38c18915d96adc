// Who may call which ReplayService method (replay.auth of the hub config).
//
// Each caller presents a bearer token in the "authorization" metadata ("Bearer TOKEN"); its
// role decides the methods:
//   lane    Record, Lookup, Claim, Get
//   viewer  Get, Lookup, List, Stats
//   ops     Get, Lookup, List, Stats, Replay, UpdateStatus
// A viewer (a dashboard) gets records without their bodies (payload and rendered: a partner's
// message, which holds personal data); lanes and ops get them whole.
// No token, or one that is nobody's: UNAUTHENTICATED. A method outside the role:
// PERMISSION_DENIED naming the caller, its role and the method. Tokens are kept as SHA-256
// digests and compared in constant time, against every caller's.
//
//   absl::StatusOr<Authorizer> auth = Authorizer::FromConfig(config.replay().auth());
//   absl::StatusOr<std::string> who = auth->Check(metadata_value, Authorizer::Method::kReplay);
#ifndef ESS_REPLAY_SVC_AUTHORIZER_H_
#define ESS_REPLAY_SVC_AUTHORIZER_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "ess/v1/config.pb.h"

namespace ess::replay {

class Authorizer {
 public:
  enum class Method { kRecord, kUpdateStatus, kGet, kLookup, kClaim, kList, kStats, kReplay };
  enum class Role { kLane, kViewer, kOps };

  // Tokens shorter than this are refused at start: a guessable token is no control.
  static constexpr size_t kMinTokenLength = 16;

  // Reads each caller's token from its environment variable. FAILED_PRECONDITION when one is
  // not set; INVALID_ARGUMENT when one is too short, holds a character other than visible ASCII
  // (BearerTokenProblem: a trailing line break, say), or two callers share a token; either names
  // the field (e.g. "replay.auth.callers[1].token_env: environment variable X is not set"),
  // never a token. With no callers, enabled() is false and Check lets every call through.
  static absl::StatusOr<Authorizer> FromConfig(const ess::v1::ReplayAuth& auth);

  bool enabled() const { return !callers_.empty(); }
  size_t callers() const { return callers_.size(); }

  // The caller's name if `authorization` (the metadata value, "Bearer TOKEN") is a caller's
  // token and its role may call `method`; "" when not enabled.
  absl::StatusOr<std::string> Check(std::string_view authorization, Method method) const;

  // Whether the caller of `authorization` gets records' bodies: true when not enabled, or for a
  // caller whose role is not viewer. (Call after Check has let the call through.)
  bool SeesBodies(std::string_view authorization) const;

  static const char* MethodName(Method method);
  static bool Allows(Role role, Method method);

 private:
  struct Caller {
    std::string name;
    Role role;
    std::array<uint8_t, 32> digest;  // SHA-256 of the token
  };
  // The caller whose token `authorization` carries: null when there is none, or
  // UNAUTHENTICATED when it is no bearer token.
  absl::StatusOr<const Caller*> Find(std::string_view authorization) const;

  std::vector<Caller> callers_;
};

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_AUTHORIZER_H_
