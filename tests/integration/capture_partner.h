// A partner for tests: an HTTP server on loopback that records every request and answers what
// the test tells it to, per request.
#ifndef ESS_TESTS_INTEGRATION_CAPTURE_PARTNER_H_
#define ESS_TESTS_INTEGRATION_CAPTURE_PARTNER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/http_server.h"
#include "gtest/gtest.h"

namespace ess::testing {

class CapturePartner {
 public:
  struct Seen {
    std::string path, body, idempotency_key, correlation;
  };
  // Decides the answer to a request (called on the server thread; may keep the Responder to
  // answer late, or drop it). Default: answer status() at once.
  using Behaviour = std::function<void(const Seen&, http::Responder)>;

  explicit CapturePartner(std::string listen = "127.0.0.1:0") : listen_(std::move(listen)) {
    Start();
  }

  void Start() {
    server_ = std::make_unique<http::Server>(
        http::Server::Options{.listen = listen_},
        [this](http::ServerRequest req, http::Responder r) {
          Seen seen{req.path, req.body, std::string(req.Header("idempotency-key")),
                    std::string(req.Header("x-correlation-id"))};
          Behaviour behaviour;
          {
            absl::MutexLock lock(&mu_);
            seen_.push_back(seen);
            behaviour = behaviour_;
          }
          if (behaviour) {
            behaviour(seen, std::move(r));
          } else {
            std::move(r).Send({.status = status_.load(), .body = R"({"accepted":true})"});
          }
        });
    ASSERT_TRUE(server_->Start().ok());
    listen_ = "127.0.0.1:" + std::to_string(server_->port());
  }
  // Closes the port: connections are refused until Start().
  void Stop() { server_->Stop(); }

  int port() const { return server_->port(); }
  std::string url() const { return "http://" + listen_; }
  size_t count() {
    absl::MutexLock lock(&mu_);
    return seen_.size();
  }
  std::vector<Seen> seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }
  void set_status(int s) { status_ = s; }
  void set_behaviour(Behaviour b) {
    absl::MutexLock lock(&mu_);
    behaviour_ = std::move(b);
  }

 private:
  std::string listen_;
  absl::Mutex mu_;
  std::vector<Seen> seen_ ABSL_GUARDED_BY(mu_);
  Behaviour behaviour_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> status_{201};
  std::unique_ptr<http::Server> server_;
};

}  // namespace ess::testing

#endif  // ESS_TESTS_INTEGRATION_CAPTURE_PARTNER_H_
