// A running gRPC server for ReplayService: the service plus gRPC health checking and server
// reflection, so grpcurl or any client can find it; over TLS when given a certificate and key.
//
// Health (grpc.health.v1.Health) is reported for the server ("") and for
// "ess.v1.ReplayService" alike: SERVING while the store answered its last probe, NOT_SERVING
// while it does not (e.g. PostgreSQL is down), and NOT_SERVING from shutdown on. A thread of
// the server's own probes the store (a lookup of a key no record has) once per
// health_probe_interval; a health check never reaches the store.
//
//   auto server = ess::replay::ReplayServer::Start(*store, {.listen = "127.0.0.1:0"});
//   if (!server.ok()) ...;
//   std::string address = (*server)->address();   // "127.0.0.1:41735"
//   (*server)->Shutdown(absl::Seconds(10));
//
// The store must outlive the server.
#ifndef ESS_REPLAY_SVC_REPLAY_SERVER_H_
#define ESS_REPLAY_SVC_REPLAY_SERVER_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "replay_svc/periodic_thread.h"
#include "replay_svc/replay_service.h"
#include "replay_svc/replay_store.h"

namespace ess::replay {

class ReplayServer {
 public:
  struct Options {
    // "host:port"; port 0 picks a free port (see port()).
    std::string listen;
    size_t reader_threads = 2;
    // Largest request accepted (a Record batch with its payloads).
    int max_receive_message_bytes = 64 << 20;
    // Publishes for ReplayService.Replay; null: Replay answers FAILED_PRECONDITION.
    Replayer* replayer = nullptr;
    // Who may call what; null: every caller may call everything.
    const Authorizer* authorizer = nullptr;
    // PEM certificate chain and private key: serve TLS only. Empty: plaintext.
    std::string tls_cert_pem;
    std::string tls_key_pem;
    // PEM CA certificates: with TLS, require a client certificate signed by them (mutual TLS).
    std::string tls_client_ca_pem;
    // How often the store is probed for health checking; zero: never (always SERVING until
    // shutdown).
    absl::Duration health_probe_interval = absl::Seconds(1);
  };

  // INVALID_ARGUMENT for a malformed `listen`; UNAVAILABLE if it cannot be bound (e.g. the
  // port is taken: the port is never shared with another process).
  static absl::StatusOr<std::unique_ptr<ReplayServer>> Start(ReplayStore& store, Options options);
  // Shutdown(0) if it was not shut down yet.
  ~ReplayServer();
  ReplayServer(const ReplayServer&) = delete;
  ReplayServer& operator=(const ReplayServer&) = delete;

  // The address actually bound: the host of `listen` with the chosen port.
  const std::string& address() const { return address_; }
  const ReplayServiceImpl& service() const { return *service_; }
  int port() const { return port_; }

  // Reports NOT_SERVING, stops accepting calls, lets calls in flight run for `grace`, cancels
  // the rest, and returns when every call has finished. Later calls do nothing.
  void Shutdown(absl::Duration grace);

 private:
  ReplayServer(std::unique_ptr<ReplayServiceImpl> service, std::unique_ptr<grpc::Server> server,
               std::string address, int port);
  // One probe of `store`: sets the serving status of "" and of ReplayService.
  void ProbeStore(ReplayStore& store);

  // Destroyed after the server, as the server uses it until then.
  std::unique_ptr<ReplayServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  const std::string address_;
  const int port_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
  // Whether the last probe found the store answering; none yet: unset.
  std::optional<bool> store_answers_;
  // Stopped first at shutdown, before the health service stops taking statuses.
  std::unique_ptr<PeriodicThread> health_probe_;
};

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_REPLAY_SERVER_H_
