// Client options derived from the hub config, shared by the services' main() functions.
#ifndef ESS_COMMON_WIRING_H_
#define ESS_COMMON_WIRING_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/amqp.h"
#include "common/pem.h"  // ReadPemFile, for the services' TLS files
#include "common/replay_client.h"
#include "ess/v1/config.pb.h"

namespace ess {

amqp::ConnectionOptions BusOptions(const ess::v1::BusConfig& bus, std::string connection_name);
// The recorder of a lane, with the token of replay.token_env when it names one and the CA of
// replay.tls.ca_file when set (FAILED_PRECONDITION naming the field when the variable is not
// set, its token cannot be sent (BearerTokenProblem), a file cannot be read, or
// replay.tls.ca_file is missing where replay_svc serves TLS (replay.tls.cert_file) or the lanes
// have a client certificate: they would dial in plaintext).
absl::StatusOr<ReplayRecorder::Options> RecorderOptions(const ess::v1::ReplayConfig& replay);

// A lane's recorder (RecorderOptions), checked against the store: a store that is down may
// come later (the lane waits for it), one that refuses this lane's token will not.
// FAILED_PRECONDITION naming the field or the store's refusal ("the replay store refuses
// SERVICE: ...").
absl::StatusOr<std::unique_ptr<ReplayRecorder>> StartRecorder(const ess::v1::ReplayConfig& replay,
                                                              std::string_view service);

}  // namespace ess

#endif  // ESS_COMMON_WIRING_H_
