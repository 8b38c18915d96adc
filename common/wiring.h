// Client options derived from the hub config, shared by the services' main() functions.
#ifndef ESS_COMMON_WIRING_H_
#define ESS_COMMON_WIRING_H_

#include <string>

#include "absl/status/statusor.h"
#include "common/amqp.h"
#include "common/replay_client.h"
#include "ess/v1/config.pb.h"

namespace ess {

amqp::ConnectionOptions BusOptions(const ess::v1::BusConfig& bus, std::string connection_name);
// The recorder of a lane, with the token of replay.token_env when it names one
// (FAILED_PRECONDITION naming the variable when it is not set).
absl::StatusOr<ReplayRecorder::Options> RecorderOptions(const ess::v1::ReplayConfig& replay);

}  // namespace ess

#endif  // ESS_COMMON_WIRING_H_
