// Client options derived from the hub config, shared by the services' main() functions.
#ifndef ESS_COMMON_WIRING_H_
#define ESS_COMMON_WIRING_H_

#include <string>

#include "common/amqp.h"
#include "common/replay_client.h"
#include "ess/v1/config.pb.h"

namespace ess {

amqp::ConnectionOptions BusOptions(const ess::v1::BusConfig& bus, std::string connection_name);
ReplayRecorder::Options RecorderOptions(const ess::v1::ReplayConfig& replay);

}  // namespace ess

#endif  // ESS_COMMON_WIRING_H_
