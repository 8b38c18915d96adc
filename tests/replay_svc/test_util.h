// Helpers shared by the replay_svc tests: a private temp folder, a fake clock, record and key
// builders, and the invalid keys every keyed read must refuse.
#ifndef ESS_TESTS_REPLAY_SVC_TEST_UTIL_H_
#define ESS_TESTS_REPLAY_SVC_TEST_UTIL_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ess/v1/replay.pb.h"
#include "gtest/gtest.h"
#include "replay_svc/records.h"

namespace ess::replay::testing {

// A fresh folder under the test temp dir, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "ess_replay_XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed: " << pattern;
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Each Now() returns the previous value plus `step` (0: always the same time). Thread-safe.
class FakeClock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000),
                     absl::Duration step = absl::Seconds(1))
      : next_(start), step_(step) {}

  absl::Time Now() {
    absl::MutexLock lock(&mu_);
    absl::Time now = next_;
    next_ += step_;
    return now;
  }
  // The value the next Now() returns.
  absl::Time Peek() {
    absl::MutexLock lock(&mu_);
    return next_;
  }

 private:
  absl::Mutex mu_;
  absl::Time next_ ABSL_GUARDED_BY(mu_);
  const absl::Duration step_;
};

// A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it; it is released
// again before returning, so a child process can bind it). 0 on failure.
inline int PickFreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// The message ids of `records` (any container of MessageRecord), in order.
template <typename Records>
std::vector<std::string> MessageIds(const Records& records) {
  std::vector<std::string> ids;
  for (const ess::v1::MessageRecord& r : records) ids.push_back(r.message_id());
  return ids;
}

inline google::protobuf::Timestamp Ts(absl::Time t) {
  return FromUnixMicros(absl::ToUnixMicros(t));
}

inline ess::v1::RecordKey Key(ess::v1::Direction direction, const std::string& partner,
                              const std::string& message_id) {
  ess::v1::RecordKey key;
  key.set_direction(direction);
  key.set_partner(partner);
  key.set_message_id(message_id);
  return key;
}

// A key spoiled in one field, and the INVALID_ARGUMENT message naming it when it is keys[3].
struct InvalidKeyCase {
  const char* name;
  void (*corrupt)(ess::v1::RecordKey*);
  const char* message;
};

inline std::vector<InvalidKeyCase> InvalidKeyCases() {
  return {
      {"message_id", [](ess::v1::RecordKey* k) { k->clear_message_id(); },
       "keys[3].message_id: must not be empty"},
      {"partner", [](ess::v1::RecordKey* k) { k->clear_partner(); },
       "keys[3].partner: must not be empty"},
      {"direction", [](ess::v1::RecordKey* k) { k->clear_direction(); },
       "keys[3].direction: must be DIRECTION_OUTBOUND or DIRECTION_INBOUND"},
      {"unknown_direction",
       [](ess::v1::RecordKey* k) { k->set_direction(static_cast<ess::v1::Direction>(42)); },
       "keys[3].direction: must be DIRECTION_OUTBOUND or DIRECTION_INBOUND"},
  };
}

inline std::string InvalidKeyCaseName(const ::testing::TestParamInfo<InvalidKeyCase>& info) {
  return info.param.name;
}

inline ess::v1::MessageRecord MakeRecord(
    ess::v1::Direction direction, const std::string& partner, const std::string& message_id,
    const std::string& correlation_id,
    ess::v1::MessageStatus status = ess::v1::MESSAGE_STATUS_RECEIVED) {
  ess::v1::MessageRecord r;
  r.set_direction(direction);
  r.set_partner(partner);
  r.set_message_id(message_id);
  r.set_correlation_id(correlation_id);
  r.set_status(status);
  r.set_event_type(direction == ess::v1::DIRECTION_OUTBOUND ? "VisitScheduleUpdated"
                                                            : "SlotConfirmed");
  r.set_payload(R"({"type":"VisitScheduleUpdated","id":")" + correlation_id + R"("})");
  return r;
}

inline ess::v1::MessageRecord Outbound(
    const std::string& partner, const std::string& message_id,
    ess::v1::MessageStatus status = ess::v1::MESSAGE_STATUS_RECEIVED) {
  return MakeRecord(ess::v1::DIRECTION_OUTBOUND, partner, message_id, message_id, status);
}

}  // namespace ess::replay::testing

#endif  // ESS_TESTS_REPLAY_SVC_TEST_UTIL_H_
