// Names the calling thread, as `top -H`, `ps -L`, `perf` and /proc/PID/task/*/comm show it.
// Linux keeps 15 characters; a longer name is cut there.
//
//   thread_ = std::thread([this] { ess::NameThisThread("ess-http-client"); Run(); });
#ifndef ESS_COMMON_THREAD_NAME_H_
#define ESS_COMMON_THREAD_NAME_H_

#include <pthread.h>

#include <string>
#include <string_view>

namespace ess {

inline void NameThisThread(std::string_view name) {
  const std::string cut(name.substr(0, 15));
  pthread_setname_np(pthread_self(), cut.c_str());
}

}  // namespace ess

#endif  // ESS_COMMON_THREAD_NAME_H_
