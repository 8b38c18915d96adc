#include "bench/partner.h"

#include <time.h>

#include <string_view>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"

namespace ess::bench {
namespace {

// The value of a top-level string or number member `key` in compact JSON, found by text
// search: cheap enough not to make the partner the bottleneck it is measuring.
std::string_view FindValue(std::string_view json, std::string_view quoted_key) {
  const size_t at = json.find(quoted_key);
  if (at == std::string_view::npos) return {};
  size_t i = at + quoted_key.size();
  while (i < json.size() && (json[i] == ' ' || json[i] == ':')) ++i;
  if (i < json.size() && json[i] == '"') {
    const size_t end = json.find('"', i + 1);
    return end == std::string_view::npos ? std::string_view() : json.substr(i + 1, end - i - 1);
  }
  size_t end = i;
  while (end < json.size() && json[end] >= '0' && json[end] <= '9') ++end;
  return json.substr(i, end - i);
}

}  // namespace

int64_t MonoNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

Partner::Partner()
    : server_({.listen = "127.0.0.1:0"}, [this](http::ServerRequest req, http::Responder r) {
        Handle(std::move(req), std::move(r));
      }) {}

void Partner::Reset(bool track_ids, int64_t latency_from_ns) {
  absl::MutexLock lock(&mu_);
  count_ = 0;
  first_ns_ = 0;
  last_ns_ = 0;
  track_ids_ = track_ids;
  latency_from_ns_ = latency_from_ns;
  ids_.clear();
  duplicates_ = 0;
  latencies_.clear();
}

uint64_t Partner::duplicates() {
  absl::MutexLock lock(&mu_);
  return duplicates_;
}

std::vector<std::pair<int64_t, int64_t>> Partner::latencies() {
  absl::MutexLock lock(&mu_);
  return latencies_;
}

void Partner::Handle(http::ServerRequest request, http::Responder responder) {
  const int64_t now = MonoNs();
  {
    absl::MutexLock lock(&mu_);
    if (track_ids_) {
      const std::string_view id = FindValue(request.body, "\"id\"");
      if (!ids_.emplace(id).second) ++duplicates_;
    }
    if (latency_from_ns_ > 0) {
      int64_t sent = 0;
      const std::string_view v = FindValue(request.body, "\"sentNs\"");
      if (absl::SimpleAtoi(absl::string_view(v.data(), v.size()), &sent) &&
          sent >= latency_from_ns_) {
        latencies_.emplace_back(sent, now - sent);
      }
    }
    if (count_.load() == 0) first_ns_ = now;
    last_ns_ = now;
    count_.fetch_add(1);
  }
  std::move(responder).Send({.status = 201, .body = R"({"accepted":true})"});
}

}  // namespace ess::bench
