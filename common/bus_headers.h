// AMQP header names that more than one component writes or reads on bus messages.
#ifndef ESS_COMMON_BUS_HEADERS_H_
#define ESS_COMMON_BUS_HEADERS_H_

namespace ess::bus {

// The partner an inbound event came from (or an outbound message is for).
inline constexpr char kPartnerHeader[] = "x-ess-partner";
// Set on a message that ops replayed (ReplayService.Replay): who asked. The outbound lane
// pushes such a message even when the store shows it delivered.
inline constexpr char kReplayHeader[] = "x-ess-replay";
// Where a failed push may have landed all the same (adapters::PushResult::maybe_delivered_as):
// kept on the message through its retries, recorded with its FAILED or DEAD record, and set by
// an ops replay of that record; the outbound lane hands it back to the adapter with each push.
inline constexpr char kMaybeDeliveredAsHeader[] = "x-ess-maybe-delivered-as";

}  // namespace ess::bus

#endif  // ESS_COMMON_BUS_HEADERS_H_
