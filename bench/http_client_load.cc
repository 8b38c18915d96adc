// http_client_load: ESS's own HTTP client (ess::http::Client, the lanes' libcurl wrapper)
// against ESS's HTTP server (ess::http::Server, the inbound lane's) in a child process, on
// loopback, with a fixed number of requests in flight. Prints requests/s and the CPU time per
// request of each side, so that a change to either can be judged by its cost rather than by a
// throughput figure that depends on what else the machine runs.
//
//   http_client_load --requests 200000 --in_flight 64
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/http_client.h"
#include "common/http_server.h"

ABSL_FLAG(int, requests, 200000, "Requests to send.");
ABSL_FLAG(int, in_flight, 64, "Requests in flight at once (and connections).");
ABSL_FLAG(int, rate, 0,
          "Requests/s, sent on schedule whatever the answers do (open loop; latency "
          "percentiles are printed); 0: as fast as --in_flight allows.");

namespace {

double CpuSeconds(const rusage& u) {
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int total = absl::GetFlag(FLAGS_requests);
  const int window = absl::GetFlag(FLAGS_in_flight);

  // The child reports its port and serves until the parent closes its end.
  int ports[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, ports) != 0) return 1;
  const pid_t child = fork();
  if (child == 0) {  // the server: answers 201 until its parent closes the pipe
    ess::http::Server server({.listen = "127.0.0.1:0"},
                             [](ess::http::ServerRequest, ess::http::Responder r) {
                               std::move(r).Send({.status = 201, .body = R"({"ok":true})"});
                             });
    if (!server.Start().ok()) _exit(1);
    const int port = server.port();
    close(ports[0]);
    [[maybe_unused]] ssize_t w = write(ports[1], &port, sizeof(port));
    char c;
    while (read(ports[1], &c, 1) > 0) {
    }
    server.Stop();
    _exit(0);
  }
  close(ports[1]);
  int port = 0;
  if (read(ports[0], &port, sizeof(port)) != sizeof(port)) {
    std::fprintf(stderr, "server did not start\n");
    return 1;
  }
  const std::string url = absl::StrCat("http://127.0.0.1:", port, "/visits");
  const std::string body =
      R"({"visitId":"VIS-000123","inmateId":"A1234BC","start":"2026-12-01T10:00:00Z","end":"2026-12-01T11:00:00Z","room":"B2"})";

  ess::http::Client client({.max_connections_per_host = window, .max_total_connections = window});
  std::atomic<int> sent{0}, done{0}, failed{0};
  absl::Notification finished;
  std::function<void()> send_one = [&] {
    if (sent.fetch_add(1) >= total) return;
    ess::http::Request req{
        .url = url,
        .headers = {{"Content-Type", "application/json"}, {"Idempotency-Key", "VIS-000123"}},
        .body = body};
    client.Send(std::move(req), [&](absl::StatusOr<ess::http::Response> r) {
      if (!r.ok() || r->status != 201) failed.fetch_add(1);
      if (done.fetch_add(1) + 1 == total) finished.Notify();
      send_one();
    });
  };
  const int rate = absl::GetFlag(FLAGS_rate);
  std::vector<int64_t> latency_ns(rate > 0 ? total : 0);
  rusage before{}, after{}, child_usage{};
  getrusage(RUSAGE_SELF, &before);
  const absl::Time start = absl::Now();
  if (rate > 0) {
    for (int i = 0; i < total; ++i) {
      const absl::Time due = start + absl::Seconds(1) * i / rate;
      if (const absl::Duration wait = due - absl::Now(); wait > absl::ZeroDuration()) {
        absl::SleepFor(wait);
      }
      ess::http::Request req{
          .url = url, .headers = {{"Content-Type", "application/json"}}, .body = body};
      client.Send(std::move(req),
                  [&, i, sent = absl::Now()](absl::StatusOr<ess::http::Response> r) {
                    latency_ns[i] = absl::ToInt64Nanoseconds(absl::Now() - sent);
                    if (!r.ok() || r->status != 201) failed.fetch_add(1);
                    if (done.fetch_add(1) + 1 == total) finished.Notify();
                  });
    }
  } else {
    for (int i = 0; i < window; ++i) send_one();
  }
  finished.WaitForNotification();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  getrusage(RUSAGE_SELF, &after);
  client.Stop();
  close(ports[0]);
  int status = 0;
  waitpid(child, &status, 0);
  getrusage(RUSAGE_CHILDREN, &child_usage);
  std::printf(
      "%d requests (%d failed), %d in flight: %.0f req/s; CPU per request: client %.1f us, "
      "server %.1f us; peak RSS: client %.1f MiB, server %.1f MiB\n",
      total, failed.load(), window, total / seconds,
      (CpuSeconds(after) - CpuSeconds(before)) * 1e6 / total, CpuSeconds(child_usage) * 1e6 / total,
      after.ru_maxrss / 1024.0, child_usage.ru_maxrss / 1024.0);
  if (rate > 0) {
    std::sort(latency_ns.begin(), latency_ns.end());
    auto at = [&](double q) { return latency_ns[static_cast<size_t>(q * (total - 1))] / 1e6; };
    std::printf("latency at %d req/s: p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms\n", rate, at(0.5),
                at(0.99), at(0.999));
  }
  return failed.load() == 0 ? 0 : 1;
}
