// replay_svc: serves ReplayService over the replay store: the SQLite file at
// replay.database_path, or a PostgreSQL database shared by several replicas (replay.postgres,
// or --postgres_dsn_env).
//
//   replay_svc --config hub.yaml [--postgres_dsn_env NAME]
//   replay_svc --config hub.yaml [--postgres_dsn_env NAME] --import_from /old/replay.db
//
// With --import_from it serves nothing: it copies every record of that SQLite store into the
// configured one (store_copy.h), prints what it copied and exits 0 (1: the copy stopped; run it
// again, it skips what is there already).
//
// Uses replay.listen and the store's settings of the hub config, and the bus (bus.*) to publish
// ops replays (ReplayService.Replay) and their audit events; the store serves whether or not the
// broker is up (the publisher keeps reconnecting, and a replay meanwhile fails). Callers are
// checked against replay.auth (see authorizer.h). SIGTERM or SIGINT
// stops it gracefully (calls in flight get a grace period) with exit code 0. Exit 2: bad flags or
// config; exit 1: the store could not be opened or the address could not be bound.
#include <openssl/err.h>
#include <openssl/x509.h>
#include <signal.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/cli.h"
#include "common/config.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/ops_endpoints.h"
#include "common/pem.h"
#include "common/sqlite.h"
#include "common/wiring.h"
#include "replay_svc/authorizer.h"
#include "replay_svc/drift.h"
#include "replay_svc/postgres_replay_store.h"
#include "replay_svc/replay_server.h"
#include "replay_svc/replayer.h"
#include "replay_svc/retention.h"
#include "replay_svc/sqlite_replay_store.h"
#include "replay_svc/store_copy.h"

ABSL_FLAG(std::string, postgres_dsn_env, "",
          "Keep the store on PostgreSQL, with the libpq connection string in this environment "
          "variable (replay.postgres.dsn_env), whatever the config says of database_path: one "
          "hub config then serves a single SQLite replica and a shared store alike.");

ABSL_FLAG(std::string, import_from, "",
          "Serve nothing: copy every record of the SQLite replay store at this path into the "
          "store the config names (e.g. PostgreSQL, moving to several replicas), then exit. "
          "Records keep their times; one the target holds already is replaced only by a newer "
          "one, so the copy can run again.");

namespace {

constexpr absl::Duration kShutdownGrace = absl::Seconds(10);

// Checks what replay.tls gives replay_svc before anything is opened: gRPC would take any PEM
// and fail only when it listens ("cannot listen", after printing lines of its own). An error
// names the field and what is wrong with the file, never the key's text.
absl::Status CheckServerTls(const ess::v1::ReplayTls& tls, std::string_view cert_pem,
                            std::string_view key_pem, std::string_view client_ca_pem) {
  absl::Status status;
  if (!cert_pem.empty()) {
    ess::X509Ptr cert = ess::ReadCertificate(cert_pem);
    ess::EvpPkeyPtr key = ess::ReadPrivateKey(key_pem);
    if (cert == nullptr) {
      status = absl::InvalidArgumentError(absl::StrCat(
          "replay.tls.cert_file: ", tls.cert_file(), " holds no PEM certificate that can be read"));
    } else if (key == nullptr) {
      status = absl::InvalidArgumentError(
          absl::StrCat("replay.tls.key_file: ", tls.key_file(),
                       " holds no PEM private key that can be read (not a key, or one "
                       "encrypted with a passphrase)"));
    } else if (X509_check_private_key(cert.get(), key.get()) != 1) {
      status = absl::InvalidArgumentError(absl::StrCat(
          "replay.tls.key_file: ", tls.key_file(), " does not match replay.tls.cert_file (",
          tls.cert_file(), "): it is not the key of that certificate"));
    }
  }
  if (status.ok() && !client_ca_pem.empty()) {
    if (ess::ReadCertificate(client_ca_pem) == nullptr) {
      status = absl::InvalidArgumentError(
          absl::StrCat("replay.tls.client_ca_file: ", tls.client_ca_file(),
                       " holds no PEM certificate that can be read"));
    }
  }
  ERR_clear_error();
  return status;
}

// --import_from: copies the SQLite store at `path` (a file) into `target`. Exit 0 when every
// record was read, 2 when `path` is no replay store, 1 when the copy stopped.
int ImportFrom(const std::string& path, ess::replay::ReplayStore& target,
               const std::string& target_name) {
  // A replay store's file has a schema version; opening any other SQLite file as a store would
  // make the store's tables in it. The look is read-only: it changes nothing of such a file.
  {
    absl::StatusOr<ess::sqlite::Database> db =
        ess::sqlite::Database::Open(path, {.read_only = true});
    absl::StatusOr<ess::sqlite::Statement> version =
        db.ok() ? db->Prepare("PRAGMA user_version")
                : absl::StatusOr<ess::sqlite::Statement>(db.status());
    absl::StatusOr<bool> row = version.ok() ? version->Step() : version.status();
    if (!row.ok()) {
      std::cerr << "error: --import_from " << path << ": " << row.status().message() << "\n";
      return 2;
    }
    if (!*row || version->ColumnInt64(0) == 0) {
      std::cerr << "error: --import_from " << path
                << ": not a replay store (its SQLite schema version is 0)\n";
      return 2;
    }
  }
  absl::StatusOr<std::unique_ptr<ess::replay::SqliteReplayStore>> source =
      ess::replay::SqliteReplayStore::Open(path);
  if (!source.ok()) {
    std::cerr << "error: --import_from " << path << ": " << source.status().message() << "\n";
    return 2;
  }
  ess::log::Info("", "importing", {{"from", path}, {"into", target_name}});
  const absl::Time started = absl::Now();
  absl::Time logged = started;
  ess::replay::CopyCount so_far;
  absl::StatusOr<ess::replay::CopyCount> copied = ess::replay::CopyStore(
      **source, target, {.progress = [&](const ess::replay::CopyCount& count) {
        so_far = count;
        if (absl::Now() - logged < absl::Seconds(5)) return;
        logged = absl::Now();
        ess::log::Info(
            "", "importing",
            {{"read", absl::StrCat(count.read)}, {"written", absl::StrCat(count.written)}});
      }});
  if (!copied.ok()) {
    std::cerr << "error: importing " << path << " into " << target_name << ": "
              << copied.status().message() << " (after " << so_far.read
              << " records; run it again to go on: what was copied is skipped)\n";
    return 1;
  }
  const double seconds = std::max(absl::ToDoubleSeconds(absl::Now() - started), 1e-3);
  std::cout << "imported " << path << " into " << target_name << ": " << copied->read
            << " records read, " << copied->written << " written, "
            << copied->read - copied->written << " held already (the same or newer), in "
            << absl::StrFormat("%.1f", seconds) << " s\n";
  ess::log::Info("", "imported",
                 {{"from", path},
                  {"read", absl::StrCat(copied->read)},
                  {"written", absl::StrCat(copied->written)},
                  {"records_per_s", absl::StrFormat("%.0f", copied->read / seconds)}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Block the stop signals in every thread (threads inherit the mask); main waits for them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  ess::cli::Parse(argc, argv, "replay_svc --config PATH");
  const std::string config_path = ess::cli::RequiredConfigPath();
  absl::StatusOr<ess::v1::HubConfig> config = ess::config::LoadFile(config_path);
  if (!config.ok()) {
    std::cerr << "error: " << config.status().message() << "\n";
    return 2;
  }
  if (const std::string env = absl::GetFlag(FLAGS_postgres_dsn_env); !env.empty()) {
    ess::v1::ReplayPostgres* postgres = config->mutable_replay()->mutable_postgres();
    postgres->set_dsn_env(env);
    if (postgres->max_connections() == 0) postgres->set_max_connections(8);
    config->mutable_replay()->clear_database_path();
  }
  ess::log::Init("replay_svc", config->logging());
  const ess::v1::ReplayConfig& replay = config->replay();

  absl::StatusOr<ess::replay::Authorizer> authorizer =
      ess::replay::Authorizer::FromConfig(replay.auth());
  if (!authorizer.ok()) {
    std::cerr << "error: " << config_path << ": " << authorizer.status().message() << "\n";
    return 2;
  }
  const std::string import_from = absl::GetFlag(FLAGS_import_from);
  if (!authorizer->enabled() && import_from.empty()) {
    ess::log::Warn("", "ReplayService is open to every caller: replay.auth names no callers");
  }

  std::string tls_cert_pem, tls_key_pem;
  if (!replay.tls().cert_file().empty()) {
    absl::StatusOr<std::string> cert =
        ess::ReadPemFile(replay.tls().cert_file(), "replay.tls.cert_file");
    absl::StatusOr<std::string> key =
        ess::ReadPemFile(replay.tls().key_file(), "replay.tls.key_file");
    if (!cert.ok() || !key.ok()) {
      std::cerr << "error: " << config_path << ": "
                << (cert.ok() ? key.status() : cert.status()).message() << "\n";
      return 2;
    }
    tls_cert_pem = *std::move(cert);
    tls_key_pem = *std::move(key);
  }
  std::string tls_client_ca_pem;
  if (!replay.tls().client_ca_file().empty()) {
    absl::StatusOr<std::string> ca =
        ess::ReadPemFile(replay.tls().client_ca_file(), "replay.tls.client_ca_file");
    if (!ca.ok()) {
      std::cerr << "error: " << config_path << ": " << ca.status().message() << "\n";
      return 2;
    }
    tls_client_ca_pem = *std::move(ca);
  }
  if (absl::Status s = CheckServerTls(replay.tls(), tls_cert_pem, tls_key_pem, tls_client_ca_pem);
      !s.ok()) {
    std::cerr << "error: " << config_path << ": " << s.message() << "\n";
    return 2;
  }

  if (std::error_code error;
      !import_from.empty() && !std::filesystem::is_regular_file(import_from, error)) {
    std::cerr << "error: --import_from: no such file: " << import_from << "\n";
    return 2;
  }
  if (!import_from.empty() && !replay.has_postgres()) {
    std::error_code error;
    if (std::filesystem::equivalent(import_from, replay.database_path(), error)) {
      std::cerr << "error: --import_from " << import_from
                << " is the store the config names (replay.database_path)\n";
      return 2;
    }
  }

  // The store: SQLite by default, PostgreSQL when several replicas must share it.
  absl::StatusOr<std::unique_ptr<ess::replay::ReplayStore>> store;
  std::string store_name;  // for the log; never the connection string, which may hold a password
  if (replay.has_postgres()) {
    const char* dsn = std::getenv(replay.postgres().dsn_env().c_str());
    if (dsn == nullptr || *dsn == '\0') {
      std::cerr << "error: " << config_path << ": replay.postgres.dsn_env: environment variable "
                << replay.postgres().dsn_env() << " is not set\n";
      return 2;
    }
    store_name = absl::StrCat("postgres (", replay.postgres().dsn_env(), ")");
    absl::StatusOr<std::unique_ptr<ess::replay::PostgresReplayStore>> pg =
        ess::replay::PostgresReplayStore::Open(
            dsn, {.max_connections = replay.postgres().max_connections()});
    if (pg.ok()) {
      store = std::move(*pg);
    } else {
      store = pg.status();
    }
  } else {
    store_name = replay.database_path();
    absl::StatusOr<std::unique_ptr<ess::replay::SqliteReplayStore>> sqlite =
        ess::replay::SqliteReplayStore::Open(replay.database_path(),
                                             {.full_sync = replay.full_sync()});
    if (sqlite.ok()) {
      store = std::move(*sqlite);
    } else {
      store = sqlite.status();
    }
  }
  if (!store.ok()) {
    ess::log::Error("", "cannot open the replay store",
                    {{"store", store_name}, {"error", store.status().ToString()}});
    return 1;
  }
  if (!import_from.empty()) return ImportFrom(import_from, **store, store_name);

  // Replays go out through a publisher of their own, with confirms.
  ess::replay::Replayer::Options replayer_options = ess::replay::Replayer::FromConfig(*config);
  ess::amqp::Topology topology{
      .exchanges = {{.name = replayer_options.events_exchange, .type = "fanout"}}};
  const std::string& audit_exchange = config->bus().audit_exchange();
  if (!audit_exchange.empty()) {
    topology.exchanges.push_back({.name = audit_exchange, .type = "fanout"});
  }
  ess::amqp::Publisher publisher({.connection = ess::BusOptions(config->bus(), "replay_svc"),
                                  .topology = std::move(topology)});
  ess::AuditSink audit(&publisher, audit_exchange, config->bus().audit_batch_max());
  ess::replay::Replayer replayer(
      std::move(replayer_options),
      [&publisher](std::string exchange, std::string routing_key, ess::amqp::Message message,
                   ess::amqp::Publisher::Done done) {
        publisher.Publish(std::move(exchange), std::move(routing_key), std::move(message),
                          std::move(done));
      },
      &audit);
  if (absl::Status s = publisher.Start(); !s.ok()) {
    ess::log::Warn("", "bus not reachable yet; replays fail until it is",
                   {{"error", s.ToString()}});
  }

  absl::StatusOr<std::unique_ptr<ess::replay::ReplayServer>> server =
      ess::replay::ReplayServer::Start(**store,
                                       {.listen = replay.listen(),
                                        .replayer = &replayer,
                                        .authorizer = &*authorizer,
                                        .tls_cert_pem = std::move(tls_cert_pem),
                                        .tls_key_pem = std::move(tls_key_pem),
                                        .tls_client_ca_pem = std::move(tls_client_ca_pem)});
  if (!server.ok()) {
    ess::log::Error("", "cannot serve", {{"error", server.status().ToString()}});
    return absl::IsInvalidArgument(server.status()) ? 2 : 1;  // 2: replay.listen is malformed.
  }
  std::unique_ptr<ess::replay::RetentionSweeper> sweeper;
  if (ess::replay::RetentionSweeper::Enabled(*config)) {
    sweeper = std::make_unique<ess::replay::RetentionSweeper>(
        **store, ess::replay::RetentionSweeper::PolicyFromConfig(*config),
        absl::Seconds(replay.retention().sweep_interval_seconds()));
  }
  std::unique_ptr<ess::replay::DriftWatch> drift;
  std::vector<ess::replay::DriftWatch::Partner> watched =
      ess::replay::DriftWatch::PartnersFromConfig(*config);
  const size_t watched_partners = watched.size();
  if (!watched.empty()) {
    drift = std::make_unique<ess::replay::DriftWatch>(
        **store, std::move(watched), ess::replay::DriftWatch::OptionsFromConfig(*config));
  }
  // Its readiness is gRPC's health service; the metrics port adds /healthz (liveness).
  std::unique_ptr<ess::ops::Server> metrics;
  if (!replay.metrics_listen().empty()) {
    const ess::replay::ReplayServer& served = **server;
    const ess::replay::RetentionSweeper* swept = sweeper.get();
    const ess::replay::DriftWatch* watch = drift.get();
    absl::StatusOr<std::unique_ptr<ess::ops::Server>> m = ess::ops::Server::Start(
        replay.metrics_listen(), {.metrics = [&served, swept, watch, &audit] {
          std::vector<prometheus::MetricFamily> families = served.service().Metrics();
          if (swept != nullptr) {
            families.push_back(ess::metrics::Single(
                "ess_replay_retention_evicted_total", "Settled records evicted by retention.",
                prometheus::MetricType::Counter, static_cast<double>(swept->evicted())));
          }
          if (watch != nullptr) {
            for (prometheus::MetricFamily& f : watch->Metrics()) families.push_back(std::move(f));
          }
          for (prometheus::MetricFamily& f : audit.Metrics()) families.push_back(std::move(f));
          return families;
        }});
    if (!m.ok()) {
      ess::log::Error("", "cannot serve", {{"error", m.status().ToString()}});
      return 1;
    }
    metrics = *std::move(m);
  }
  ess::log::Info("", "listening",
                 {{"address", (*server)->address()},
                  {"store", store_name},
                  {"callers", absl::StrCat(authorizer->callers())},
                  {"tls", replay.tls().cert_file().empty()        ? "off"
                          : replay.tls().client_ca_file().empty() ? "on"
                                                                  : "mutual"},
                  {"retention", sweeper ? "on" : "off"},
                  {"drift_watched", absl::StrCat(watched_partners)},
                  {"metrics_port", metrics ? absl::StrCat(metrics->port()) : "off"},
                  {"malloc", ess::cli::MallocLibrary()}});

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  ess::log::Info("", "stopping", {{"signal", ess::cli::SignalName(signal_number)}});
  metrics.reset();
  if (sweeper) sweeper->Stop();
  if (drift) drift->Stop();
  (*server)->Shutdown(kShutdownGrace);
  server->reset();
  // A replay the broker confirms after its call answered is marked then: its confirm gets a
  // moment still, and the marks their audit events, before the publisher goes.
  replayer.Drain(absl::Seconds(5));  // logs what is left unconfirmed
  replayer.Stop();                   // marks the late confirms, before the store closes
  audit.Drain(absl::Seconds(5));
  publisher.Stop();
  store->reset();
  ess::log::Info("", "stopped");
  return 0;
}
