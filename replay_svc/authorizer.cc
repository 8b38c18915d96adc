#include "replay_svc/authorizer.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/replay_client.h"

namespace ess::replay {
namespace {

std::array<uint8_t, 32> Digest(std::string_view token) {
  std::array<uint8_t, 32> digest;
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest.data());
  return digest;
}

}  // namespace

absl::StatusOr<Authorizer> Authorizer::FromConfig(const ess::v1::ReplayAuth& auth) {
  Authorizer authorizer;
  for (int i = 0; i < auth.callers_size(); ++i) {
    const ess::v1::ReplayCaller& c = auth.callers(i);
    const std::string field = absl::StrCat("replay.auth.callers[", i, "].");
    Role role;
    if (c.role() == "lane") {
      role = Role::kLane;
    } else if (c.role() == "viewer") {
      role = Role::kViewer;
    } else if (c.role() == "ops") {
      role = Role::kOps;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(field, "role: unknown role \"", c.role(), "\" (lane, viewer or ops)"));
    }
    const char* token = c.token_env().empty() ? nullptr : std::getenv(c.token_env().c_str());
    if (token == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat(field, "token_env: environment variable ", c.token_env(), " is not set"));
    }
    const std::string_view value(token);
    if (value.size() < kMinTokenLength) {
      return absl::InvalidArgumentError(absl::StrCat(field, "token_env: the token in ",
                                                     c.token_env(), " is shorter than ",
                                                     kMinTokenLength, " characters"));
    }
    // Refused here rather than matched never: a client sending it would abort in gRPC.
    if (const std::string problem = BearerTokenProblem(value); !problem.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, "token_env: the token in ", c.token_env(), " ", problem));
    }
    Caller caller{.name = c.name(), .role = role, .digest = Digest(value)};
    for (const Caller& other : authorizer.callers_) {
      if (other.digest == caller.digest) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, "token_env: the same token as caller ", other.name, "'s: each needs its own"));
      }
    }
    authorizer.callers_.push_back(std::move(caller));
  }
  return authorizer;
}

absl::StatusOr<const Authorizer::Caller*> Authorizer::Find(std::string_view authorization) const {
  std::string_view token = authorization;
  // RFC 7235: the scheme is case-insensitive ("bearer", "BEARER"), then one or more spaces.
  constexpr std::string_view kScheme = "Bearer ";
  if (absl::StartsWithIgnoreCase(absl::string_view(token.data(), token.size()),
                                 absl::string_view(kScheme.data(), kScheme.size()))) {
    token.remove_prefix(kScheme.size());
    while (token.starts_with(' ')) token.remove_prefix(1);
  }
  if (token.size() == authorization.size() || token.empty()) {
    return absl::UnauthenticatedError(
        "ReplayService needs a bearer token (metadata \"authorization: Bearer TOKEN\")");
  }
  const std::array<uint8_t, 32> digest = Digest(token);
  const Caller* found = nullptr;
  for (const Caller& c : callers_) {  // every caller compared: no early exit on a match
    if (CRYPTO_memcmp(c.digest.data(), digest.data(), digest.size()) == 0) found = &c;
  }
  return found;
}

bool Authorizer::SeesBodies(std::string_view authorization) const {
  if (!enabled()) return true;
  absl::StatusOr<const Caller*> found = Find(authorization);
  return found.ok() && *found != nullptr && (*found)->role != Role::kViewer;
}

absl::StatusOr<std::string> Authorizer::Check(std::string_view authorization, Method method) const {
  if (!enabled()) return std::string();
  absl::StatusOr<const Caller*> caller = Find(authorization);
  if (!caller.ok()) return caller.status();
  const Caller* found = *caller;
  if (found == nullptr) return absl::UnauthenticatedError("the bearer token is nobody's");
  if (!Allows(found->role, method)) {
    const char* role = found->role == Role::kLane     ? "lane"
                       : found->role == Role::kViewer ? "viewer"
                                                      : "ops";
    return absl::PermissionDeniedError(absl::StrCat("caller ", found->name, " (role ", role,
                                                    ") may not call ", MethodName(method)));
  }
  return found->name;
}

const char* Authorizer::MethodName(Method method) {
  switch (method) {
    case Method::kRecord:
      return "Record";
    case Method::kUpdateStatus:
      return "UpdateStatus";
    case Method::kGet:
      return "Get";
    case Method::kLookup:
      return "Lookup";
    case Method::kClaim:
      return "Claim";
    case Method::kList:
      return "List";
    case Method::kStats:
      return "Stats";
    case Method::kReplay:
      return "Replay";
  }
  return "?";
}

bool Authorizer::Allows(Role role, Method method) {
  switch (role) {
    case Role::kLane:
      return method == Method::kRecord || method == Method::kLookup || method == Method::kClaim ||
             method == Method::kGet;
    case Role::kViewer:
      return method == Method::kGet || method == Method::kLookup || method == Method::kList ||
             method == Method::kStats;
    case Role::kOps:
      return method == Method::kGet || method == Method::kLookup || method == Method::kList ||
             method == Method::kStats || method == Method::kReplay ||
             method == Method::kUpdateStatus;
  }
  return false;
}

}  // namespace ess::replay
