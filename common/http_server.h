// Asynchronous HTTP/1.1 server on libevent (evhttp), for webhooks and test partners.
//
// The handler runs on the server's event-loop thread and gets a Responder; it may answer at
// once or later from any thread (e.g. after a broker confirm), so a slow answer never holds a
// thread. Keep-alive, a body size limit (413), request deadlines and a cap on open connections
// are built in.
//
//   ess::http::Server server({.listen = "127.0.0.1:0"},
//       [](ess::http::ServerRequest req, ess::http::Responder r) {
//         std::move(r).Send({.status = 200, .body = "{}"});
//       });
//   server.Start();  server.port();
#ifndef ESS_COMMON_HTTP_SERVER_H_
#define ESS_COMMON_HTTP_SERVER_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/http_client.h"

namespace ess::http {

struct ServerRequest {
  std::string method;  // "POST"
  std::string path;    // "/webhook/prison" (no query)
  std::string query;   // "a=1&b=2" or empty
  HeaderList headers;  // names lower-cased
  std::string body;
  std::string peer;  // "127.0.0.1:53211"

  std::string_view Header(std::string_view lower_name) const;
};

struct ServerResponse {
  int status = 200;
  std::string content_type = "application/json";
  HeaderList headers;
  std::string body;
};

// Answers one request, exactly once, from any thread. A Responder dropped without Send
// answers 500 so that no client hangs.
class Responder {
 public:
  Responder() = default;
  Responder(Responder&&) noexcept;
  Responder& operator=(Responder&&) noexcept;
  ~Responder();
  void Send(ServerResponse response) &&;

  struct State;  // internal
  explicit Responder(std::shared_ptr<State> state);

 private:
  std::shared_ptr<State> state_;
};

class Server {
 public:
  struct Options {
    std::string listen = "127.0.0.1:0";  // host:port; port 0 picks a free one
    size_t max_body_bytes = 1 << 20;
    // Bounds, each on its own: a request's arrival, from its first byte to its last (a client
    // that trickles a request byte by byte is closed then); a pause while reading or writing;
    // an idle keep-alive connection; and the handler: a request not answered within it gets 503
    // with Retry-After, and a later Send is ignored. Checked about once a second. 0 or less: no
    // limit.
    int request_timeout_seconds = 30;
    // Connections open at once, at most. At the cap the server stops accepting: new
    // connections wait in the kernel's listen queue until one closes. So does it for a second
    // when accept() fails (e.g. out of file descriptors), instead of retrying at once. 0: no cap.
    size_t max_connections = 10000;
  };
  using Handler = std::function<void(ServerRequest, Responder)>;

  Server(Options options, Handler handler);
  ~Server();  // Stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and starts the event-loop thread. INVALID_ARGUMENT for a bad address,
  // UNAVAILABLE when the port cannot be bound. The first Start in a process sets SIGPIPE
  // to ignored if it still has its default action (a peer's close must not kill us).
  absl::Status Start();
  // The bound port (after Start).
  int port() const;
  // Connections open right now (any thread; for metrics and tests).
  size_t connections() const;
  // Graceful stop, first half: stops accepting connections, answers what is left with
  // "Connection: close", and waits until every request handed to the handler is answered or
  // `timeout` passed. True if nothing was left unanswered. Stop() must follow. Not from a
  // handler.
  bool Drain(absl::Duration timeout);
  // Stops accepting, answers nothing further, joins the thread. Not from a handler.
  // Responders still held afterwards may be sent or dropped safely; nothing happens.
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ess::http

#endif  // ESS_COMMON_HTTP_SERVER_H_
