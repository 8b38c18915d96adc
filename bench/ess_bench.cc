// ess_bench: the ESS performance benchmark (see bench/README.md; ./bench.sh runs it).
//
// Starts a private RabbitMQ node (scripts/rabbitmq.sh, state in .stack/bench), an in-process
// partner server, and the real replay_svc / outbound_svc / inbound_svc binaries on loopback;
// runs each scenario bounded in count and time; prints one table in which every figure stands
// beside a ceiling measured in the same run; writes every figure to bench/results/<time>.json.
// Stops every process it started, by PID, and the broker it started.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <rapidjson/document.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/flags/flag.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/amqp_load.h"
#include "bench/latency_stats.h"
#include "bench/open_loop.h"
#include "bench/partner.h"
#include "bench/procs.h"
#include "bench/scraped_histogram.h"
#include "common/amqp.h"
#include "common/cli.h"
#include "common/config.h"
#include "common/http_client.h"
#include "common/log.h"
#include "common/postgres.h"
#include "common/replay_client.h"
#include "common/thread_name.h"
#include "common/webhook_signature.h"
#include "google/protobuf/util/time_util.h"
#include "outbound_svc/lane.h"

ABSL_FLAG(uint64_t, events, 100000,
          "Events per outbound run (preloaded), messages per broker ceiling run, records per "
          "replay store run.");
ABSL_FLAG(int, duration_s, 10, "Seconds of each timed run (latency runs, inbound, HTTP ceiling).");
ABSL_FLAG(bool, full, false,
          "The long run: --events=300000 --duration_s=30 unless those are given too.");
ABSL_FLAG(std::string, scenarios, "all",
          "Comma-separated subset of: ceilings,http,outbound,latency,info,scaling,replay,inbound "
          "(all: every one), and baseline (the issue's Node.js and Python lanes; not in all: "
          "needs Node.js with bench/baseline/install.sh, and Debian's python3-pika, "
          "python3-requests, python3-fastapi, python3-uvicorn).");
ABSL_FLAG(std::string, replicas, "1,2,3", "Outbound lane replica counts of the scaling run.");
ABSL_FLAG(double, latency_rate, 0,
          "Events/s of the outbound latency run; 0: half the rate the outbound run measured.");
ABSL_FLAG(double, inbound_latency_rate, 0,
          "Webhooks/s of the inbound latency run; 0: half the rate the inbound run measured.");
ABSL_FLAG(uint64_t, info_events, 0,
          "Events of the outbound run at log level info; 0: as many as --events (a run with fewer "
          "events is faster for that reason alone).");
ABSL_FLAG(uint32_t, prefetch, 1024, "outbound.prefetch of the lanes (and of the consume ceiling).");
ABSL_FLAG(uint32_t, max_in_flight, 64,
          "outbound max_in_flight: partner requests in flight per lane (the config default).");
ABSL_FLAG(uint32_t, batch_max, 256, "replay.batch_max: records per Record call.");
ABSL_FLAG(uint32_t, batch_delay_ms, 2, "replay.batch_delay_ms.");
ABSL_FLAG(uint32_t, record_delay_ms, 20, "replay.record_delay_ms.");
ABSL_FLAG(bool, full_sync, false, "replay.full_sync: the store's commits wait for the disk.");
ABSL_FLAG(bool, audit, false,
          "The lanes publish a SyncAudit event per outcome (bus.audit_exchange, as production's "
          "hub.yaml sets it) to an exchange with a queue bound; default: no audit events.");
ABSL_FLAG(uint32_t, audit_batch_max, 0,
          "With --audit: bus.audit_batch_max, audit events per SyncAuditBatch message (0: one "
          "SyncAudit message per event, the default).");
ABSL_FLAG(bool, quorum_queues, false,
          "Every queue of the run is a quorum queue (the ceilings' too, and bus.quorum_queues of "
          "the lanes); default: classic queues.");
ABSL_FLAG(std::string, postgres_dsn, "",
          "Run replay_svc on PostgreSQL (replay.postgres) with this libpq connection string "
          "instead of SQLite, each scenario in a fresh schema of its own (e.g. the DSN that "
          "scripts/postgres.sh writes to DIR/env).");
ABSL_FLAG(uint32_t, publish_window, 1024, "Unconfirmed publishes of the benchmark's publisher.");
ABSL_FLAG(int, wrk_connections, 256,
          "Keep-alive connections of wrk: the fixed concurrency of the inbound run and of the HTTP "
          "ceiling (the inbound run is repeated with --publish_window connections).");
ABSL_FLAG(int, wrk_threads, 1, "wrk threads.");
ABSL_FLAG(bool, signed_webhooks, true,
          "Webhooks carry Standard Webhooks signatures that the inbound lane verifies (a secret "
          "made for the run); false: plain webhooks on an unauthenticated route.");
ABSL_FLAG(int, amqp_port, 0, "Use the RabbitMQ already listening on this loopback port.");
ABSL_FLAG(int, amqp_pid, 0, "With --amqp_port: the broker's PID, so that its CPU is counted.");
ABSL_FLAG(std::string, source_dir, ESS_SOURCE_DIR, "The ESS source tree.");
ABSL_FLAG(std::string, bin_dir, "", "Folder of the service binaries (default: this binary's).");
ABSL_FLAG(std::string, work_dir, "", "State of this run (default: SOURCE/.stack/bench).");
ABSL_FLAG(std::string, results_dir, "", "Where the JSON goes (default: SOURCE/bench/results).");

namespace ess::bench {
namespace {

constexpr char kPartnerName[] = "bench_partner";
constexpr char kEventsExchange[] = "bench.events";
constexpr char kSinkQueue[] = "bench.events.sink";
// With --audit: the lanes' audit exchange, and the queue that stands for its subscriber (a new
// one per scenario, not consumed: counted at the end of an outbound run).
constexpr char kAuditExchange[] = "bench.audit";
constexpr char kAuditQueue[] = "bench.audit.sink";
constexpr char kWebhookPath[] = "/webhook/bench";

// ---- small helpers --------------------------------------------------------------------------

void Say(const std::string& line) {
  std::cerr << absl::FormatTime("%H:%M:%S ", absl::Now(), absl::LocalTimeZone()) << line
            << std::endl;
}

std::string Grouped(double v) {
  const std::string digits = absl::StrCat(std::llround(std::fabs(v)));
  std::string out = v < 0 ? "-" : "";
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i != 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::string Ms(double ns) { return absl::StrFormat("%.2f ms", ns / 1e6); }

std::string Percent(double ratio) { return absl::StrFormat("%.0f%%", ratio * 100); }

bool WaitUntil(const std::function<bool()>& condition, absl::Duration timeout,
               absl::Duration every = absl::Milliseconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(every);
  }
  return true;
}

// A subscriber of the events a latency run publishes: consumes `queue` with manual acks on a
// thread of its own while the run goes on, as the hub's subscribers do. Without one, the queue
// grows by the run's whole count, and RabbitMQ's publish-to-confirm time grows with its depth
// (p99 15-30 ms after 5 s at 3,000 msg/s, against 1-5 ms in the first second): the run would
// measure an unread queue instead of the lane.
class Subscriber {
 public:
  Subscriber(const BrokerAddress& broker, std::string queue, uint64_t count,
             absl::Duration max_duration)
      : thread_([this, broker, queue, count, max_duration] {
          NameThisThread("subscriber");
          result_ = ConsumeAcked(
              broker,
              {.queue = queue, .count = count, .max_duration = max_duration, .prefetch = 1024});
        }) {
    // Up once the queue has it; a subscriber that failed to start is seen in Join().
    WaitUntil(
        [&] {
          absl::StatusOr<QueueState> q = QueueInfo(broker, queue);
          return q.ok() && q->consumers >= 1;
        },
        absl::Seconds(10), absl::Milliseconds(5));
  }
  Subscriber(const Subscriber&) = delete;
  Subscriber& operator=(const Subscriber&) = delete;
  ~Subscriber() {
    if (thread_.joinable()) thread_.join();
  }

  // Waits until it has consumed its count (or ran out of time).
  const ConsumeResult& Join() {
    if (thread_.joinable()) thread_.join();
    return result_;
  }

 private:
  ConsumeResult result_;
  std::thread thread_;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string VisitEvent(const std::string& id, int64_t sent_ns) {
  return absl::StrCat(R"({"type":"VisitScheduleUpdated","id":")", id,
                      R"(","inmateId":"A123","slotUtc":"2026-12-01T15:00:00Z","sentNs":)", sent_ns,
                      "}");
}

// ---- results ----------------------------------------------------------------------------------

// One scenario's figures: flat, so that runs compare key by key.
struct Scenario {
  std::string name;
  std::vector<std::pair<std::string, double>> figures;
  std::vector<std::pair<std::string, std::string>> notes;
  std::vector<std::pair<std::string, double>> cpu_percent;   // of one core, per process
  std::vector<std::pair<std::string, double>> peak_rss_mib;  // VmHWM per process
  // Of one core, per "process/thread name" (threads of one name added up), busiest first; the
  // broker's threads are not sampled.
  std::vector<std::pair<std::string, double>> thread_cpu_percent;
  std::vector<std::string> errors;  // why it failed, if it did

  void Set(const std::string& key, double v) { figures.emplace_back(key, v); }
  void Note(const std::string& key, const std::string& v) { notes.emplace_back(key, v); }
  bool ok() const { return errors.empty(); }
  void Fail(const std::string& why) {
    errors.push_back(why);
    Say(absl::StrCat("  ", name, ": ", why));
  }
  std::optional<double> Get(const std::string& key) const {
    for (const auto& [k, v] : figures) {
      if (k == key) return v;
    }
    return std::nullopt;
  }
  // "rabbitmq 98%, outbound_svc 71%, ess_bench 20% | others 35%": the busiest processes of
  // the benchmark, then what processes outside it used meanwhile.
  std::string Busiest(size_t n = 3) const {
    std::vector<std::pair<std::string, double>> sorted;
    double others = -1;
    for (const auto& [proc, pct] : cpu_percent) {
      if (proc == "others") {
        others = pct;
      } else {
        sorted.emplace_back(proc, pct);
      }
    }
    std::sort(sorted.begin(), sorted.end(),
              [](const auto& a, const auto& b) { return a.second > b.second; });
    std::vector<std::string> parts;
    for (size_t i = 0; i < sorted.size() && i < n; ++i) {
      if (sorted[i].second < 1) break;
      std::string part = absl::StrFormat("%s %.0f%%", sorted[i].first, sorted[i].second);
      // Its busiest thread, when one thread is most of the process's load.
      const std::string prefix = sorted[i].first + "/";
      for (const auto& [thread, pct] : thread_cpu_percent) {
        if (!absl::StartsWith(thread, prefix)) continue;
        if (pct >= 10 && pct >= sorted[i].second / 2) {
          absl::StrAppend(&part,
                          absl::StrFormat(" (%s %.0f%%)", thread.substr(prefix.size()), pct));
        }
        break;  // busiest first
      }
      parts.push_back(std::move(part));
    }
    std::string out = absl::StrJoin(parts, ", ");
    if (others >= 0) absl::StrAppend(&out, absl::StrFormat(" | others %.0f%%", others));
    return out;
  }
};

// A latency run's p99 of each second (see latency_stats.h): its figures, and its words for the
// progress line.
void SetPerSecondP99(Scenario& sc, const SecondP99& p) {
  sc.Set("p99_per_second_median_ms", p.median_ms);
  sc.Set("p99_per_second_worst_ms", p.worst_ms);
  sc.Set("p99_seconds", static_cast<double>(p.seconds));
  sc.Note("p99_by_second_ms", absl::StrJoin(p.by_second_ms, " ", [](std::string* out, double ms) {
            absl::StrAppend(out, absl::StrFormat("%.2f", ms));
          }));
}

std::string PerSecondP99Text(const SecondP99& p) {
  return absl::StrFormat("; p99 of each second: median %.2f ms, worst %.2f ms", p.median_ms,
                         p.worst_ms);
}

// Busy ticks of the whole machine (all CPUs) from /proc/stat.
uint64_t MachineBusyTicks() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  uint64_t user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  return user + nice + system + irq + softirq + steal;
}

// Waits (at most 5 s) until the whole machine is nearly idle (under 30% of one core over
// 250 ms), so that one scenario's aftermath (the broker deleting a purged queue, a WAL
// checkpoint) is not charged to the next.
void WaitQuiet() {
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < deadline) {
    const uint64_t before = MachineBusyTicks();
    absl::SleepFor(absl::Milliseconds(250));
    const double cores = static_cast<double>(MachineBusyTicks() - before) / TicksPerSecond() / 0.25;
    if (cores < 0.3) return;
  }
}

// CPU use of a set of processes over a window, as % of one core, and what the rest of the
// machine (processes outside the benchmark) used meanwhile.
class CpuWindow {
 public:
  static constexpr char kOthers[] = "others";

  struct Proc {
    std::string name;
    pid_t pid;
  };
  void Begin(std::vector<Proc> procs) {
    procs_ = std::move(procs);
    start_ticks_.clear();
    start_threads_.clear();
    for (const Proc& p : procs_) {
      start_ticks_.push_back(Sample(p.pid).cpu_ticks);
      absl::flat_hash_map<pid_t, uint64_t>& threads = start_threads_.emplace_back();
      if (p.name == "rabbitmq") continue;
      for (const ThreadSample& t : SampleThreads(p.pid)) threads[t.tid] = t.cpu_ticks;
    }
    machine_start_ = MachineBusyTicks();
    start_ = absl::Now();
  }
  // Adds each process's share to `s` (extra: CPU seconds of processes reaped meanwhile).
  void End(Scenario& s, const std::vector<std::pair<std::string, double>>& extra = {}) {
    const double wall = absl::ToDoubleSeconds(absl::Now() - start_);
    if (wall <= 0) return;
    const double machine =
        static_cast<double>(MachineBusyTicks() - machine_start_) / TicksPerSecond();
    double ours = 0;
    for (size_t i = 0; i < procs_.size(); ++i) {
      const ProcSample now = Sample(procs_[i].pid);
      if (!now.ok) continue;
      const double seconds =
          static_cast<double>(now.cpu_ticks - start_ticks_[i]) / TicksPerSecond();
      ours += seconds;
      s.cpu_percent.emplace_back(procs_[i].name, 100.0 * seconds / wall);
      if (procs_[i].name == "rabbitmq") continue;
      // A thread started in the window counts from zero; one that ended in it is not seen.
      absl::flat_hash_map<std::string, uint64_t> by_name;
      for (const ThreadSample& t : SampleThreads(procs_[i].pid)) {
        const auto start = start_threads_[i].find(t.tid);
        const uint64_t from = start == start_threads_[i].end() ? 0 : start->second;
        by_name[t.name] += t.cpu_ticks >= from ? t.cpu_ticks - from : 0;
      }
      for (const auto& [name, ticks] : by_name) {
        const double pct = 100.0 * static_cast<double>(ticks) / TicksPerSecond() / wall;
        if (pct >= 0.5) s.thread_cpu_percent.emplace_back(procs_[i].name + "/" + name, pct);
      }
    }
    std::sort(s.thread_cpu_percent.begin(), s.thread_cpu_percent.end(),
              [](const auto& a, const auto& b) { return a.second > b.second; });
    for (const auto& [name, seconds] : extra) {
      ours += seconds;
      s.cpu_percent.emplace_back(name, 100.0 * seconds / wall);
    }
    s.cpu_percent.emplace_back(kOthers, std::max(0.0, 100.0 * (machine - ours) / wall));
    s.Set("cpu_window_s", wall);
  }

 private:
  std::vector<Proc> procs_;
  std::vector<uint64_t> start_ticks_;
  std::vector<absl::flat_hash_map<pid_t, uint64_t>> start_threads_;  // per proc: tid -> ticks
  uint64_t machine_start_ = 0;
  absl::Time start_;
};

// ---- the run ------------------------------------------------------------------------------

struct Settings {
  uint64_t events;
  absl::Duration duration;
  uint64_t info_events;
  std::vector<int> replicas;
  uint32_t prefetch, max_in_flight, batch_max, batch_delay_ms, record_delay_ms, publish_window;
  int wrk_connections, wrk_threads;
  bool full_sync = false;
  bool quorum_queues = false;
  bool audit = false;
  uint32_t audit_batch_max = 0;
  // Set: the store is on PostgreSQL (--postgres_dsn).
  std::string postgres_dsn;
  std::string source_dir, bin_dir, run_dir, wrk;
  // Set when webhooks are signed: the partner's side of the inbound route's secret.
  std::optional<webhook::SignatureVerifier> signer;
};

// The environment variable through which inbound_svc gets the run's webhook secret.
constexpr char kSecretsEnv[] = "ESS_BENCH_WEBHOOK_SECRETS";
// The one through which replay_svc gets its scenario's PostgreSQL schema (--postgres_dsn).
constexpr char kPostgresDsnEnv[] = "ESS_BENCH_REPLAY_DSN";
// Most webhooks/s one wrk thread is given signatures for; a faster run would send unsigned
// ones (answered 401, counted as non-2xx).
constexpr double kMaxSignedRate = 30000;

// The services of one scenario, with their own folder, config and replay database.
struct Stack {
  std::string dir;
  std::string config;
  std::string queue;
  int replay_port = 0;
  int replay_metrics_port = 0;
  int inbound_port = 0;
  std::unique_ptr<Child> replay;
  std::vector<std::unique_ptr<Child>> outbound;
  std::unique_ptr<Child> inbound;
  std::unique_ptr<ess::v1::ReplayService::Stub> stub;
};

class Bench {
 public:
  Bench(Settings settings, BrokerAddress broker, pid_t broker_pid)
      : s_(std::move(settings)), broker_(std::move(broker)), broker_pid_(broker_pid) {}

  absl::Status Start() { return partner_.Start(); }
  void Stop() { partner_.Stop(); }

  void Ceilings();
  void HttpCeiling();
  // events/s with `replicas` lanes; 0 on failure.
  double Outbound(const std::string& name, int replicas, uint64_t events,
                  const std::string& log_level);
  void OutboundLatency(const std::string& name, double rate);
  // The broker alone at `rate`: paced persistent publishes, consumed with manual acks.
  void BrokerLatency(double rate);
  void Replay();
  void Inbound();
  // The issue's Node.js and Python lanes (bench/baseline), measured like ESS's.
  void Baseline();

  const std::deque<Scenario>& scenarios() const { return scenarios_; }
  const Scenario* Find(const std::string& name) const {
    for (const Scenario& sc : scenarios_) {
      if (sc.name == name) return &sc;
    }
    return nullptr;
  }

 private:
  Scenario& Add(const std::string& name) {
    WaitQuiet();
    Say(absl::StrCat("scenario ", name));
    scenarios_.push_back(Scenario{.name = name});
    return scenarios_.back();
  }

  std::string HubConfig(const Stack& st, const std::string& log_level) const;
  absl::Status StartStack(Stack& st, const std::string& tag, const std::string& log_level);
  void StartOutbound(Stack& st, int replicas);
  absl::Status StartInbound(Stack& st);
  // Records the child's peak RSS, then stops it (SIGTERM) and forgets it.
  void StopChild(std::unique_ptr<Child>& child, Scenario& sc);
  void StopStack(Stack& st, Scenario& sc);
  std::vector<CpuWindow::Proc> Procs(const Stack& st) const;
  absl::StatusOr<ess::v1::PartnerStats> Stats(Stack& st, ess::v1::Direction direction);
  void DeleteQueues(const std::vector<std::string>& queues);
  // A durable queue of the benchmark's own (a ceiling's, the events sink): a quorum queue
  // with --quorum_queues, else a classic one.
  amqp::QueueSpec Queue(const std::string& name) const;
  // Declares the queues of the stack's outbound lane as the lane will declare them (with
  // --quorum_queues, quorum queues with a delivery limit and dead-lettering to parked).
  absl::Status DeclareLaneQueues(const Stack& st) const;
  // Publishes `events` visit events with ids "RUN-i" to `queue`, persistent and confirmed: an
  // outbound run's preloaded work.
  PublishResult PreloadVisits(const std::string& queue, uint64_t events, const std::string& run);
  // Runs wrk against `url`; fills `sc` with its figures. Returns the WRK_RESULT JSON line.
  // `signatures`: the base path SignWebhooks() returned, for signed webhooks.
  std::optional<std::string> RunWrk(Scenario& sc, const std::string& url, int connections,
                                    const std::string& kind, const std::string& prefix,
                                    absl::Duration duration, double* cpu_seconds,
                                    const std::string& signatures = "");
  // The /metrics text of the inbound lane and of the store, for SetStages.
  struct Scrape {
    std::string inbound, replay;
  };
  Scrape ScrapeMetrics(const Stack& st) const;
  // Where a webhook's time went between two scrapes, from the services' own histograms: the
  // lane's claim and publish rounds and whole answer, the store's write-queue wait and its
  // Claim and Record transactions. Sets stage_<name>_{p50,p99,mean}_ms and says them.
  static void SetStages(Scenario& sc, const Scrape& before, const Scrape& after);
  // Writes the signatures of the webhooks wrk sends with `prefix` (see bench/post.lua) and
  // returns the files' base path. Done before a run, so its CPU is not counted in it.
  std::string SignWebhooks(const std::string& prefix, absl::Duration duration) const;
  // The audit events in the audit queue once `expected` are there (or after 30 s): with
  // batches, the queue is consumed and the events in each SyncAuditBatch counted.
  struct AuditCount {
    uint64_t events = 0, messages = 0;
    std::string error;  // a message that is not what the lanes publish
  };
  AuditCount CountAuditEvents(uint64_t expected) const;

  Settings s_;
  BrokerAddress broker_;
  pid_t broker_pid_;
  Partner partner_;
  std::deque<Scenario> scenarios_;  // references stay valid as scenarios are added
  int stacks_ = 0;
};

std::string Bench::HubConfig(const Stack& st, const std::string& log_level) const {
  return absl::StrCat("# Written by ess_bench for one scenario.\n",  //
                      "bus:\n",                                      //
                      "  host: 127.0.0.1\n",                         //
                      "  port: ", broker_.port, "\n",                //
                      "  events_exchange: ", kEventsExchange, "\n",  //
                      "  quorum_queues: ", s_.quorum_queues ? "true" : "false", "\n",
                      s_.audit ? absl::StrCat("  audit_exchange: ", kAuditExchange,
                                              "\n  audit_batch_max: ", s_.audit_batch_max, "\n")
                               : "",
                      "replay:\n",                                   //
                      "  listen: 127.0.0.1:", st.replay_port, "\n",  //
                      s_.postgres_dsn.empty()
                          ? absl::StrCat("  database_path: replay.db\n  full_sync: ",
                                         s_.full_sync ? "true" : "false", "\n")
                          : absl::StrCat("  postgres: {dsn_env: ", kPostgresDsnEnv, "}\n"),
                      "  batch_max: ", s_.batch_max, "\n",                           //
                      "  batch_delay_ms: ", s_.batch_delay_ms, "\n",                 //
                      "  record_delay_ms: ", s_.record_delay_ms, "\n",               //
                      "  metrics_listen: 127.0.0.1:", st.replay_metrics_port, "\n",  //
                      "outbound:\n",                                                 //
                      "  prefetch: ", s_.prefetch, "\n",                             //
                      "inbound:\n",                                                  //
                      "  listen: 127.0.0.1:", st.inbound_port, "\n",                 //
                      "logging:\n",                                                  //
                      "  level: ", log_level, "\n",                                  //
                      "  pii_fields: [inmateId, inmate]\n",                          //
                      "partners:\n",                                                 //
                      "  - name: ", kPartnerName, "\n",                              //
                      "    adapter: rest\n",                                         //
                      "    settings:\n",                                             //
                      "      base_url: http://127.0.0.1:", partner_.port(), "\n",    //
                      "      path: /api/slots\n",                                    //
                      "      timeout_ms: 5000\n",                                    //
                      "    outbound:\n",                                             //
                      "      queue: ", st.queue, "\n",                               //
                      "      max_in_flight: ", s_.max_in_flight, "\n",               //
                      "      retry: {max_attempts: 2, initial_backoff_ms: 1000}\n",  //
                      "      mapping:\n",                                            //
                      "        - {target: id, source: id}\n",                        //
                      "        - {target: inmate, source: inmateId}\n",              //
                      "        - {target: slot, source: slotUtc}\n",                 //
                      "        - {target: sentNs, source: sentNs}\n",                //
                      "    inbound:\n",                                              //
                      "      webhook_path: ", kWebhookPath, "\n",                    //
                      s_.signer ? absl::StrCat("      auth: {secrets_env: ", kSecretsEnv, "}\n")
                                : std::string(),                              //
                      "      mapping:\n",                                     //
                      "        - {target: type, constant: SlotConfirmed}\n",  //
                      "        - {target: id, source: id}\n",                 //
                      "        - {target: status, source: status}\n");
}

void Bench::DeleteQueues(const std::vector<std::string>& queues) {
  absl::StatusOr<std::unique_ptr<amqp::Connection>> conn =
      amqp::Connection::Open({.host = broker_.host, .port = broker_.port});
  if (!conn.ok()) return;
  for (const std::string& q : queues) (void)(*conn)->DeleteQueue(q);
}

amqp::QueueSpec Bench::Queue(const std::string& name) const {
  amqp::QueueSpec q{.name = name};
  if (s_.quorum_queues) q.string_args = {{"x-queue-type", "quorum"}};
  return q;
}

absl::Status Bench::DeclareLaneQueues(const Stack& st) const {
  absl::StatusOr<ess::v1::HubConfig> config = config::LoadFile(st.config);
  if (!config.ok()) return config.status();
  absl::StatusOr<std::unique_ptr<amqp::Connection>> conn =
      amqp::Connection::Open({.host = broker_.host, .port = broker_.port});
  if (!conn.ok()) return conn.status();
  return (*conn)->Apply(outbound::OutboundTopology(*config));
}

PublishResult Bench::PreloadVisits(const std::string& queue, uint64_t events,
                                   const std::string& run) {
  return PublishConfirmed(broker_, {.routing_key = queue,
                                    .type = "VisitScheduleUpdated",
                                    .count = events,
                                    .max_duration = absl::Seconds(120),
                                    .window = s_.publish_window,
                                    .make = [&run](uint64_t i, std::string* body, std::string* id) {
                                      *id = absl::StrCat(run, "-", i);
                                      *body = VisitEvent(*id, MonoNs());
                                    }});
}

absl::Status Bench::StartStack(Stack& st, const std::string& tag, const std::string& log_level) {
  st.dir = absl::StrCat(s_.run_dir, "/", ++stacks_, "-", tag);
  std::filesystem::create_directories(st.dir);
  st.queue = absl::StrCat("bench.visits.", stacks_);
  st.replay_port = FreePort();
  st.replay_metrics_port = FreePort();
  st.inbound_port = FreePort();
  st.config = st.dir + "/hub.yaml";
  std::ofstream(st.config) << HubConfig(st, log_level);
  if (!s_.postgres_dsn.empty()) {
    // A fresh schema per scenario, as SQLite gets a fresh file; replay_svc makes its tables.
    const std::string schema = absl::StrCat("ess_bench_", stacks_);
    absl::StatusOr<ess::pg::Connection> db = ess::pg::Connection::Open(s_.postgres_dsn);
    if (!db.ok()) return db.status();
    if (absl::Status s = db->Exec(
            absl::StrCat("DROP SCHEMA IF EXISTS ", schema, " CASCADE; CREATE SCHEMA ", schema));
        !s.ok()) {
      return s;
    }
    setenv(kPostgresDsnEnv,
           absl::StrCat(s_.postgres_dsn, " options='-c search_path=", schema, "'").c_str(), 1);
  }
  DeleteQueues({st.queue, st.queue + ".parked", st.queue + ".retry.1000ms"});
  if (s_.audit) {
    DeleteQueues({kAuditQueue});
    absl::StatusOr<std::unique_ptr<amqp::Connection>> conn =
        amqp::Connection::Open({.host = broker_.host, .port = broker_.port});
    if (!conn.ok()) return conn.status();
    if (absl::Status s =
            (*conn)->Apply({.exchanges = {{.name = kAuditExchange, .type = "fanout"}},
                            .queues = {Queue(kAuditQueue)},
                            .bindings = {{.queue = kAuditQueue, .exchange = kAuditExchange}}});
        !s.ok()) {
      return s;
    }
  }
  st.replay = std::make_unique<Child>(
      "replay_svc", std::vector<std::string>{s_.bin_dir + "/replay_svc", "--config", st.config},
      st.dir + "/replay_svc.log");
  st.stub = MakeReplayStub(absl::StrCat("127.0.0.1:", st.replay_port));
  const bool up = WaitUntil(
      [&] {
        if (!st.replay->Running()) return true;
        grpc::ClientContext ctx;
        ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
        ess::v1::StatsResponse resp;
        return st.stub->Stats(&ctx, {}, &resp).ok();
      },
      absl::Seconds(20), absl::Milliseconds(20));
  if (!up || !st.replay->Running()) {
    return absl::UnavailableError(
        absl::StrCat("replay_svc did not come up:\n", st.replay->LogTail()));
  }
  return absl::OkStatus();
}

void Bench::StartOutbound(Stack& st, int replicas) {
  for (int i = 0; i < replicas; ++i) {
    st.outbound.push_back(std::make_unique<Child>(
        replicas == 1 ? std::string("outbound_svc") : absl::StrCat("outbound_svc#", i + 1),
        std::vector<std::string>{s_.bin_dir + "/outbound_svc", "--config", st.config},
        absl::StrCat(st.dir, "/outbound_svc.", i + 1, ".log")));
  }
}

absl::Status Bench::StartInbound(Stack& st) {
  st.inbound = std::make_unique<Child>(
      "inbound_svc", std::vector<std::string>{s_.bin_dir + "/inbound_svc", "--config", st.config},
      st.dir + "/inbound_svc.log");
  http::Client client({});
  const std::string url = absl::StrCat("http://127.0.0.1:", st.inbound_port, "/healthz");
  const bool up = WaitUntil(
      [&] {
        if (!st.inbound->Running()) return true;
        auto r = client.SendAndWait({.method = "GET", .url = url, .timeout = absl::Seconds(1)});
        return r.ok() && r->status == 200;
      },
      absl::Seconds(20), absl::Milliseconds(20));
  if (!up || !st.inbound->Running()) {
    return absl::UnavailableError(
        absl::StrCat("inbound_svc did not come up:\n", st.inbound->LogTail()));
  }
  return absl::OkStatus();
}

std::vector<CpuWindow::Proc> Bench::Procs(const Stack& st) const {
  std::vector<CpuWindow::Proc> procs = {{"rabbitmq", broker_pid_}, {"ess_bench", getpid()}};
  if (st.replay) procs.push_back({"replay_svc", st.replay->pid()});
  for (const auto& o : st.outbound) procs.push_back({o->name(), o->pid()});
  if (st.inbound) procs.push_back({"inbound_svc", st.inbound->pid()});
  return procs;
}

void Bench::StopChild(std::unique_ptr<Child>& child, Scenario& sc) {
  if (child == nullptr) return;
  const ProcSample p = Sample(child->pid());
  if (p.ok) sc.peak_rss_mib.emplace_back(child->name(), static_cast<double>(p.hwm_kib) / 1024.0);
  if (!child->Running()) {
    sc.Fail(absl::StrCat(child->name(), " exited during the run",
                         child->DumpedCore() ? " (it dumped core beside its log)" : "", ":\n",
                         child->LogTail()));
  } else if (const int rc = child->Stop(); rc != 0) {
    sc.Fail(absl::StrCat(child->name(), " exited with ", rc, " when stopped:\n", child->LogTail()));
  }
  child.reset();
}

void Bench::StopStack(Stack& st, Scenario& sc) {
  for (auto& o : st.outbound) StopChild(o, sc);
  st.outbound.clear();
  StopChild(st.inbound, sc);
  st.stub.reset();  // an idle channel would hold replay_svc's graceful shutdown
  StopChild(st.replay, sc);
  DeleteQueues({st.queue, st.queue + ".parked", st.queue + ".retry.1000ms"});
  if (s_.audit) DeleteQueues({kAuditQueue});
  // Logs and config stay for a look afterwards; the database (up to hundreds of MB) goes.
  for (const char* suffix : {"", "-wal", "-shm"}) {
    std::error_code ignored;
    std::filesystem::remove(absl::StrCat(st.dir, "/replay.db", suffix), ignored);
  }
}

absl::StatusOr<ess::v1::PartnerStats> Bench::Stats(Stack& st, ess::v1::Direction direction) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  ess::v1::StatsRequest req;
  req.set_partner(kPartnerName);
  ess::v1::StatsResponse resp;
  grpc::Status s = st.stub->Stats(&ctx, req, &resp);
  if (!s.ok()) return absl::UnavailableError(s.error_message());
  for (const auto& p : resp.partners()) {
    if (p.direction() == direction) return p;
  }
  return ess::v1::PartnerStats();
}

Bench::Scrape Bench::ScrapeMetrics(const Stack& st) const {
  http::Client client({});
  auto get = [&](int port) {
    absl::StatusOr<http::Response> r =
        client.SendAndWait({.method = "GET",
                            .url = absl::StrCat("http://127.0.0.1:", port, "/metrics"),
                            .timeout = absl::Seconds(5)});
    return r.ok() && r->status == 200 ? std::move(r->body) : std::string();
  };
  return {.inbound = get(st.inbound_port), .replay = get(st.replay_metrics_port)};
}

void Bench::SetStages(Scenario& sc, const Scrape& before, const Scrape& after) {
  struct Stage {
    const char* key;
    bool inbound;  // from the lane, else from the store
    const char* histogram;
    std::vector<std::pair<std::string, std::string>> labels;
  };
  const Stage stages[] = {
      {"claim", true, "ess_inbound_stage_seconds", {{"stage", "claim"}}},
      {"publish", true, "ess_inbound_stage_seconds", {{"stage", "publish"}}},
      {"answer", true, "ess_inbound_webhook_seconds", {}},
      {"store_write_wait", false, "ess_replay_queue_wait_seconds", {{"queue", "write"}}},
      {"store_claim", false, "ess_replay_store_seconds", {{"method", "Claim"}}},
      {"store_record", false, "ess_replay_store_seconds", {{"method", "Record"}}},
      // The lane's recorder: a claim batch's wait to go out, and its call's round trip.
      {"client_claim_wait", true, "ess_replay_client_batch_wait_seconds", {{"call", "claim"}}},
      {"client_claim_call", true, "ess_replay_client_call_seconds", {{"call", "claim"}}},
  };
  std::string said;
  for (const Stage& stage : stages) {
    const std::string& b = stage.inbound ? before.inbound : before.replay;
    const std::string& a = stage.inbound ? after.inbound : after.replay;
    absl::StatusOr<ScrapedHistogram> hb = ScrapedHistogram::Parse(b, stage.histogram, stage.labels);
    absl::StatusOr<ScrapedHistogram> ha = ScrapedHistogram::Parse(a, stage.histogram, stage.labels);
    if (!hb.ok() || !ha.ok()) {
      sc.Note(absl::StrCat("stage_", stage.key),
              std::string((hb.ok() ? ha : hb).status().message()));
      continue;
    }
    const ScrapedHistogram run = ha->Minus(*hb);
    if (run.count <= 0) continue;
    const std::string key = absl::StrCat("stage_", stage.key);
    sc.Set(key + "_p50_ms", run.Quantile(0.5) * 1e3);
    sc.Set(key + "_p99_ms", run.Quantile(0.99) * 1e3);
    sc.Set(key + "_mean_ms", run.Mean() * 1e3);
    absl::StrAppend(&said, said.empty() ? "" : "; ", stage.key,
                    absl::StrFormat(" p50 %.2f p99 %.2f mean %.2f", run.Quantile(0.5) * 1e3,
                                    run.Quantile(0.99) * 1e3, run.Mean() * 1e3));
  }
  if (!said.empty()) Say(absl::StrCat("  stages (ms, services' histograms): ", said));
}

Bench::AuditCount Bench::CountAuditEvents(uint64_t expected) const {
  AuditCount count;
  if (s_.audit_batch_max <= 1) {  // a message per event
    WaitUntil(
        [&] {
          absl::StatusOr<QueueState> q = QueueInfo(broker_, kAuditQueue);
          count.messages = count.events = q.ok() ? q->messages : 0;
          return count.events >= expected;
        },
        absl::Seconds(30), absl::Milliseconds(20));
    return count;
  }
  auto on_message = [&count](std::string_view body) {
    ++count.messages;
    rapidjson::Document doc;
    doc.Parse(body.data(), body.size());
    if (doc.HasParseError() || !doc.IsObject() || !doc.HasMember("events") ||
        !doc["events"].IsArray()) {
      if (count.error.empty()) {
        count.error = absl::StrCat("an audit message is not a SyncAuditBatch: ",
                                   std::string(body.substr(0, 120)));
      }
      return;
    }
    count.events += doc["events"].Size();
  };
  WaitUntil(
      [&] {
        absl::StatusOr<QueueState> q = QueueInfo(broker_, kAuditQueue);
        if (q.ok() && q->messages > 0) {
          const ConsumeResult r = ConsumeAcked(
              broker_, {.queue = kAuditQueue, .count = q->messages, .on_message = on_message});
          if (!r.status.ok() && count.error.empty()) {
            count.error = absl::StrCat("consuming the audit queue: ", r.status.message());
          }
        }
        return count.events >= expected || !count.error.empty();
      },
      absl::Seconds(30), absl::Milliseconds(20));
  return count;
}

std::string Bench::SignWebhooks(const std::string& prefix, absl::Duration duration) const {
  // wrk's Lua has no HMAC: each thread reads the signatures of its requests from a file.
  const std::string base = absl::StrCat(s_.run_dir, "/signatures-", prefix);
  const std::string ts = absl::StrCat(absl::ToUnixSeconds(absl::Now()));
  const auto per_thread = static_cast<uint64_t>(kMaxSignedRate * absl::ToDoubleSeconds(duration));
  for (int tid = 1; tid <= s_.wrk_threads; ++tid) {
    std::ofstream out(absl::StrCat(base, "-", tid));
    for (uint64_t n = 1; n <= per_thread; ++n) {
      const std::string id = absl::StrCat(prefix, "-", tid, "-", n);
      out << ts << " "
          << s_.signer->Sign(id, ts, absl::StrCat(R"({"id":")", id, R"(","status":"confirmed"})"))
          << "\n";
    }
  }
  return base;
}

std::optional<std::string> Bench::RunWrk(Scenario& sc, const std::string& url, int connections,
                                         const std::string& kind, const std::string& prefix,
                                         absl::Duration duration, double* cpu_seconds,
                                         const std::string& signatures) {
  const std::string log = absl::StrCat(s_.run_dir, "/wrk-", sc.name, ".log");
  std::vector<std::string> argv = {s_.wrk,
                                   absl::StrCat("-t", s_.wrk_threads),
                                   absl::StrCat("-c", connections),
                                   absl::StrCat("-d", absl::ToInt64Seconds(duration), "s"),
                                   "--timeout",
                                   "10s",
                                   "-s",
                                   s_.source_dir + "/bench/post.lua",
                                   url,
                                   "--",
                                   kind,
                                   prefix};
  if (!signatures.empty()) argv.push_back(signatures);
  const int rc = RunToCompletion(argv, log, cpu_seconds);
  const std::string out = ReadFile(log);
  const size_t at = out.rfind("WRK_RESULT ");
  if (rc != 0 || at == std::string::npos) {
    sc.Fail(absl::StrCat("wrk failed (exit ", rc, "): ", out.substr(0, 2000)));
    return std::nullopt;
  }
  std::string line = out.substr(at + 11);
  line = line.substr(0, line.find('\n'));
  return line;
}

// Pulls "key":number out of wrk's one-line JSON.
double JsonNumber(const std::string& json, const std::string& key) {
  const size_t at = json.find(absl::StrCat("\"", key, "\":"));
  if (at == std::string::npos) return 0;
  double v = 0;
  const size_t from = at + key.size() + 3;
  size_t end = from;
  while (end < json.size() && (std::isdigit(json[end]) || json[end] == '.' || json[end] == '-')) {
    ++end;
  }
  (void)absl::SimpleAtod(json.substr(from, end - from), &v);
  return v;
}

// ---- scenarios ----------------------------------------------------------------------------

void Bench::Ceilings() {
  const std::string queue = "bench.ceiling";
  DeleteQueues({queue});
  {
    absl::StatusOr<std::unique_ptr<amqp::Connection>> conn =
        amqp::Connection::Open({.host = broker_.host, .port = broker_.port});
    if (!conn.ok() || !(*conn)->Apply({.queues = {Queue(queue)}}).ok()) {
      Add("broker_publish").Fail("cannot declare the ceiling queue");
      return;
    }
  }
  Scenario& pub = Add("broker_publish");
  CpuWindow cpu;
  cpu.Begin({{"rabbitmq", broker_pid_}, {"ess_bench", getpid()}});
  PublishResult p =
      PublishConfirmed(broker_, {.routing_key = queue,
                                 .type = "VisitScheduleUpdated",
                                 .count = s_.events,
                                 .max_duration = std::max(s_.duration, absl::Seconds(10)),
                                 .window = s_.publish_window,
                                 .make = [](uint64_t i, std::string* body, std::string* id) {
                                   *id = absl::StrCat("CEIL-", i);
                                   *body = VisitEvent(*id, MonoNs());
                                 }});
  cpu.End(pub);
  pub.Set("messages", static_cast<double>(p.confirmed));
  pub.Set("window_messages", static_cast<double>(p.confirmed));
  pub.Set("msgs_per_s", p.ConfirmedPerSecond());
  pub.Set("window", s_.publish_window);
  pub.Set("nacked", static_cast<double>(p.nacked));
  if (!p.status.ok()) pub.Fail(std::string(p.status.message()));
  Say(absl::StrCat("  persistent publish + confirms: ", Grouped(p.ConfirmedPerSecond()), " msg/s (",
                   p.confirmed, " messages)"));

  Scenario& con = Add("broker_consume");
  cpu.Begin({{"rabbitmq", broker_pid_}, {"ess_bench", getpid()}});
  ConsumeResult c = ConsumeAcked(broker_, {.queue = queue,
                                           .count = p.confirmed,
                                           .max_duration = absl::Seconds(60),
                                           .prefetch = static_cast<uint16_t>(s_.prefetch),
                                           .ack_every = 64});
  cpu.End(con);
  con.Set("messages", static_cast<double>(c.consumed));
  con.Set("window_messages", static_cast<double>(c.consumed));
  con.Set("msgs_per_s", c.PerSecond());
  con.Set("prefetch", s_.prefetch);
  if (!c.status.ok()) con.Fail(std::string(c.status.message()));
  if (c.consumed != p.confirmed) {
    con.Fail(absl::StrCat("consumed ", c.consumed, " of ", p.confirmed));
  }
  Say(absl::StrCat("  consume + manual ack: ", Grouped(c.PerSecond()), " msg/s"));

  // The same broker publishing what the inbound lane publishes (its body, properties, header
  // table, timestamp and mandatory flag, through a fanout exchange): how much of RabbitMQ's
  // cost per webhook is the messages' shape rather than the lane's pace. Shown beside the
  // ceiling, which stays the bare publish the targets are set against.
  amqp::Topology fanout_to_queue;
  fanout_to_queue.exchanges.push_back({.name = "bench.ceiling.fanout", .type = "fanout"});
  fanout_to_queue.bindings.push_back({.queue = queue, .exchange = "bench.ceiling.fanout"});
  const std::string& fanout = fanout_to_queue.exchanges[0].name;
  if (absl::StatusOr<std::unique_ptr<amqp::Connection>> conn =
          amqp::Connection::Open({.host = broker_.host, .port = broker_.port});
      conn.ok() && (*conn)->Apply(fanout_to_queue).ok()) {
    Scenario& lane = Add("broker_publish_lane");
    cpu.Begin({{"rabbitmq", broker_pid_}, {"ess_bench", getpid()}});
    PublishOptions shaped;
    shaped.exchange = fanout;
    shaped.type = "SlotConfirmed";
    shaped.count = s_.events;
    shaped.max_duration = std::max(s_.duration, absl::Seconds(10));
    shaped.window = s_.publish_window;
    shaped.make = [](uint64_t i, std::string* body, std::string* id) {
      *id = absl::StrCat("LANE-", i);
      *body = absl::StrCat(R"({"type":"SlotConfirmed","id":")", *id, R"(","status":"confirmed"})");
    };
    shaped.lane_shaped = true;
    PublishResult l = PublishConfirmed(broker_, shaped);
    cpu.End(lane);
    lane.Set("messages", static_cast<double>(l.confirmed));
    lane.Set("window_messages", static_cast<double>(l.confirmed));
    lane.Set("msgs_per_s", l.ConfirmedPerSecond());
    if (!l.status.ok()) lane.Fail(std::string(l.status.message()));
    Say(absl::StrCat("  persistent publish + confirms, lane-shaped: ",
                     Grouped(l.ConfirmedPerSecond()), " msg/s"));
  } else {
    Add("broker_publish_lane").Fail("cannot declare the fanout exchange");
  }
  DeleteQueues({queue});
}

void Bench::HttpCeiling() {
  Scenario& sc = Add("http_partner");
  partner_.Reset(false, 0);
  CpuWindow cpu;
  cpu.Begin({{"ess_bench", getpid()}});
  double wrk_cpu = 0;
  const absl::Duration d = std::min(s_.duration, absl::Seconds(10));
  std::optional<std::string> r =
      RunWrk(sc, absl::StrCat("http://127.0.0.1:", partner_.port(), "/api/slots"),
             s_.wrk_connections, "partner", "HTTP", d, &wrk_cpu);
  cpu.End(sc, {{"wrk", wrk_cpu}});
  if (!r) return;
  const double seconds = JsonNumber(*r, "duration_us") / 1e6;
  const double ok = JsonNumber(*r, "ok");
  sc.Set("requests_per_s", seconds > 0 ? ok / seconds : 0);
  sc.Set("requests", ok);
  sc.Set("window_messages", ok);
  sc.Set("non2xx", JsonNumber(*r, "non2xx"));
  sc.Set("p50_us", JsonNumber(*r, "p50"));
  sc.Set("p99_us", JsonNumber(*r, "p99"));
  sc.Set("connections", s_.wrk_connections);
  Say(absl::StrCat("  partner server: ", Grouped(ok / seconds), " req/s"));
}

double Bench::Outbound(const std::string& name, int replicas, uint64_t events,
                       const std::string& log_level) {
  Scenario& sc = Add(name);
  sc.Set("replicas", replicas);
  sc.Set("events", static_cast<double>(events));
  sc.Note("log_level", log_level);
  Stack st;
  if (absl::Status s = StartStack(st, name, log_level); !s.ok()) {
    sc.Fail(std::string(s.message()));
    return 0;
  }
  if (absl::Status declared = DeclareLaneQueues(st); !declared.ok()) {
    sc.Fail(absl::StrCat("cannot declare the lane's queue: ", declared.message()));
    StopStack(st, sc);
    return 0;
  }
  const std::string run = absl::StrCat("E", getpid(), "-", st.dir.substr(st.dir.rfind('/') + 1));
  PublishResult pre = PreloadVisits(st.queue, events, run);
  if (pre.confirmed != events) {
    sc.Fail(absl::StrCat("preload: ", pre.confirmed, " of ", events,
                         " confirmed: ", pre.status.message()));
    StopStack(st, sc);
    return 0;
  }
  sc.Set("preload_msgs_per_s", pre.ConfirmedPerSecond());
  WaitQuiet();  // the broker settles the preload first
  Say(absl::StrCat("  ", events, " events preloaded; starting ", replicas, " outbound_svc"));

  partner_.Reset(/*track_ids=*/true, 0);
  const int64_t spawned_ns = MonoNs();
  StartOutbound(st, replicas);
  CpuWindow cpu;
  cpu.Begin(Procs(st));
  // Bounded: at least a minute, or 1,000 events/s.
  const absl::Duration limit = absl::Seconds(std::max<double>(60, events / 1000.0));
  const bool delivered = WaitUntil(
      [&] {
        for (auto& o : st.outbound) {
          if (!o->Running()) return true;
        }
        return partner_.count() >= events;
      },
      limit, absl::Milliseconds(2));
  if (!delivered || partner_.count() < events) {
    sc.Fail(absl::StrCat("the partner got ", partner_.count(), " of ", events, " events"));
    cpu.End(sc);
    StopStack(st, sc);
    return 0;
  }
  // Then every record: the lane acks only after its record, so records lag the partner only by
  // the batching delay.
  uint64_t recorded = 0;
  WaitUntil(
      [&] {
        absl::StatusOr<ess::v1::PartnerStats> stats = Stats(st, ess::v1::DIRECTION_OUTBOUND);
        recorded = stats.ok() ? stats->delivered() : 0;
        return recorded >= events;
      },
      absl::Seconds(30), absl::Milliseconds(5));
  const int64_t done_ns = MonoNs();
  cpu.End(sc);
  if (recorded != events) sc.Fail(absl::StrCat(recorded, " records for ", events, " events"));
  const double seconds = static_cast<double>(done_ns - partner_.first_ns()) / 1e9;
  const double rate = static_cast<double>(events) / seconds;
  sc.Set("events_per_s", rate);
  sc.Set("seconds", seconds);
  sc.Set("startup_ms", static_cast<double>(partner_.first_ns() - spawned_ns) / 1e6);
  sc.Set("partner_requests", static_cast<double>(partner_.count()));
  sc.Set("duplicates", static_cast<double>(partner_.duplicates()));
  sc.Set("records_delivered", static_cast<double>(recorded));
  sc.Set("window_messages", static_cast<double>(events));
  if (s_.audit) {
    // One DELIVERED audit event per event, published with confirm after its outcome.
    const AuditCount audited = CountAuditEvents(events);
    sc.Set("audit_events", static_cast<double>(audited.events));
    sc.Set("audit_messages", static_cast<double>(audited.messages));
    if (!audited.error.empty()) sc.Fail(audited.error);
    if (audited.events != events) {
      sc.Fail(absl::StrCat(audited.events, " audit events for ", events, " events"));
    }
  }

  // Acks: nothing may be left ready now, and stopping the lanes must return nothing to the
  // queue (the broker requeues every delivery its consumer did not ack).
  absl::StatusOr<QueueState> before = QueueInfo(broker_, st.queue);
  sc.Set("ready_after_run", before.ok() ? static_cast<double>(before->messages) : -1.0);
  for (auto& o : st.outbound) StopChild(o, sc);
  st.outbound.clear();
  absl::StatusOr<QueueState> after = QueueInfo(broker_, st.queue);
  sc.Set("ready_after_lanes_stopped", after.ok() ? static_cast<double>(after->messages) : -1.0);
  if (!after.ok() || after->messages != 0) {
    sc.Fail("deliveries left unacked (returned to the queue when the lanes stopped)");
  }
  StopStack(st, sc);
  Say(absl::StrCat("  ", Grouped(rate), " events/s (", replicas, " replica",
                   replicas > 1 ? "s" : "", ", log ", log_level, ")"));
  return rate;
}

void Bench::OutboundLatency(const std::string& name, double rate) {
  Scenario& sc = Add(name);
  sc.Set("target_rate", rate);
  Stack st;
  if (absl::Status s = StartStack(st, "outbound_latency", "warn"); !s.ok()) {
    sc.Fail(std::string(s.message()));
    return;
  }
  StartOutbound(st, 1);
  const bool consuming = WaitUntil(
      [&] {
        absl::StatusOr<QueueState> q = QueueInfo(broker_, st.queue);
        return (q.ok() && q->consumers >= 1) || !st.outbound[0]->Running();
      },
      absl::Seconds(20), absl::Milliseconds(20));
  if (!consuming || !st.outbound[0]->Running()) {
    sc.Fail("outbound_svc did not start consuming");
    StopStack(st, sc);
    return;
  }
  const int64_t warm_until = MonoNs() + 1'000'000'000;  // the first second is warm-up
  partner_.Reset(false, warm_until);
  const uint64_t count = static_cast<uint64_t>(rate * absl::ToDoubleSeconds(s_.duration));
  CpuWindow cpu;
  cpu.Begin(Procs(st));
  const std::string run = absl::StrCat("L", getpid());
  PublishResult p =
      PublishConfirmed(broker_, {.routing_key = st.queue,
                                 .type = "VisitScheduleUpdated",
                                 .count = count,
                                 .max_duration = s_.duration + absl::Seconds(5),
                                 .window = s_.publish_window,
                                 .rate = rate,
                                 .make = [&run](uint64_t i, std::string* body, std::string* id) {
                                   *id = absl::StrCat(run, "-", i);
                                   *body = VisitEvent(*id, MonoNs());
                                 }});
  WaitUntil([&] { return partner_.count() >= p.published; }, absl::Seconds(30));
  cpu.End(sc);
  const std::vector<std::pair<int64_t, int64_t>> samples = partner_.latencies();
  std::vector<int64_t> lat;
  lat.reserve(samples.size());
  for (const auto& [sent_ns, latency_ns] : samples) lat.push_back(latency_ns);
  std::sort(lat.begin(), lat.end());
  const SecondP99 per_second = PerSecondP99(samples, warm_until);
  SetPerSecondP99(sc, per_second);
  sc.Set("published", static_cast<double>(p.published));
  sc.Set("window_messages", static_cast<double>(p.published));  // for the CPU per message
  sc.Set("achieved_rate", static_cast<double>(p.published) / absl::ToDoubleSeconds(p.elapsed));
  sc.Set("delivered", static_cast<double>(partner_.count()));
  sc.Set("samples", static_cast<double>(lat.size()));
  sc.Set("p50_ms", PercentileOf(lat, 50) / 1e6);
  sc.Set("p99_ms", PercentileOf(lat, 99) / 1e6);
  sc.Set("p999_ms", PercentileOf(lat, 99.9) / 1e6);
  sc.Set("max_ms", lat.empty() ? 0 : static_cast<double>(lat.back()) / 1e6);
  if (partner_.count() < p.published) {
    sc.Fail(absl::StrCat("the partner got ", partner_.count(), " of ", p.published));
  }
  StopStack(st, sc);
  Say(absl::StrCat("  at ", Grouped(rate), " events/s: p50 ", Ms(PercentileOf(lat, 50)), " p99 ",
                   Ms(PercentileOf(lat, 99)), " p99.9 ", Ms(PercentileOf(lat, 99.9)),
                   PerSecondP99Text(per_second)));
}

void Bench::BrokerLatency(double rate) {
  Scenario& sc = Add("broker_latency");
  sc.Set("target_rate", rate);
  const std::string queue = "bench.latency";
  DeleteQueues({queue});
  {
    absl::StatusOr<std::unique_ptr<amqp::Connection>> conn =
        amqp::Connection::Open({.host = broker_.host, .port = broker_.port});
    if (!conn.ok() || !(*conn)->Apply({.queues = {Queue(queue)}}).ok()) {
      sc.Fail("cannot declare the latency queue");
      return;
    }
  }
  const uint64_t count = static_cast<uint64_t>(rate * absl::ToDoubleSeconds(s_.duration));
  const int64_t warm_until = MonoNs() + 1'000'000'000;
  std::vector<int64_t> lat;
  lat.reserve(count);
  ConsumeResult consumed;
  std::thread consumer([&] {
    consumed = ConsumeAcked(
        broker_, {.queue = queue,
                  .count = count,
                  .max_duration = s_.duration + absl::Seconds(20),
                  .prefetch = static_cast<uint16_t>(s_.prefetch),
                  .on_message = [&](std::string_view body) {
                    const int64_t now = MonoNs();
                    const size_t at = body.find("\"sentNs\":");
                    int64_t sent = 0;
                    if (at == std::string_view::npos) return;
                    body.remove_prefix(at + 9);
                    body = body.substr(0, body.find('}'));
                    if (absl::SimpleAtoi(absl::string_view(body.data(), body.size()), &sent) &&
                        sent >= warm_until) {
                      lat.push_back(now - sent);
                    }
                  }});
  });
  // The consumer is up when the queue has it.
  WaitUntil(
      [&] {
        absl::StatusOr<QueueState> q = QueueInfo(broker_, queue);
        return q.ok() && q->consumers >= 1;
      },
      absl::Seconds(10), absl::Milliseconds(5));
  CpuWindow cpu;
  cpu.Begin({{"rabbitmq", broker_pid_}, {"ess_bench", getpid()}});
  PublishResult p =
      PublishConfirmed(broker_, {.routing_key = queue,
                                 .type = "VisitScheduleUpdated",
                                 .count = count,
                                 .max_duration = s_.duration + absl::Seconds(5),
                                 .window = s_.publish_window,
                                 .rate = rate,
                                 .make = [](uint64_t i, std::string* body, std::string* id) {
                                   *id = absl::StrCat("BL-", i);
                                   *body = VisitEvent(*id, MonoNs());
                                 }});
  consumer.join();
  cpu.End(sc);
  std::sort(lat.begin(), lat.end());
  sc.Set("published", static_cast<double>(p.published));
  sc.Set("window_messages", static_cast<double>(p.published));
  sc.Set("consumed", static_cast<double>(consumed.consumed));
  sc.Set("samples", static_cast<double>(lat.size()));
  sc.Set("p50_ms", PercentileOf(lat, 50) / 1e6);
  sc.Set("p99_ms", PercentileOf(lat, 99) / 1e6);
  sc.Set("p999_ms", PercentileOf(lat, 99.9) / 1e6);
  if (!consumed.status.ok() || consumed.consumed != p.published) {
    sc.Fail(absl::StrCat("consumed ", consumed.consumed, " of ", p.published, ": ",
                         consumed.status.message()));
  }
  DeleteQueues({queue});
  Say(absl::StrCat("  broker alone at ", Grouped(rate), " msg/s: p50 ", Ms(PercentileOf(lat, 50)),
                   " p99 ", Ms(PercentileOf(lat, 99)), " p99.9 ", Ms(PercentileOf(lat, 99.9))));
}

void Bench::Replay() {
  Scenario& sc = Add("replay_store");
  Stack st;
  if (absl::Status s = StartStack(st, "replay", "warn"); !s.ok()) {
    sc.Fail(std::string(s.message()));
    return;
  }
  const uint64_t n = s_.events;
  ReplayRecorder recorder({.address = absl::StrCat("127.0.0.1:", st.replay_port),
                           .batch_max = s_.batch_max,
                           .batch_delay = absl::Milliseconds(s_.batch_delay_ms)});
  // At most `window` records outstanding, as a lane has at most its prefetch.
  const uint64_t window = 8192;
  std::mutex mu;
  std::condition_variable cv;
  uint64_t done = 0, failed = 0;
  CpuWindow cpu;
  cpu.Begin(Procs(st));
  const absl::Time start = absl::Now();
  const std::string run = absl::StrCat("R", getpid());
  const std::string payload = VisitEvent("X", 0);
  const std::string rendered =
      R"({"id":"X","inmate":"A123","slot":"2026-12-01T15:00:00Z","sentNs":0})";
  const auto received = google::protobuf::util::TimeUtil::GetCurrentTime();
  for (uint64_t i = 0; i < n; ++i) {
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return i - done < window; });
    }
    ess::v1::MessageRecord rec;
    rec.set_direction(ess::v1::DIRECTION_OUTBOUND);
    rec.set_partner(kPartnerName);
    const std::string id = absl::StrCat(run, "-", i);
    rec.set_correlation_id(id);
    rec.set_message_id(id);
    rec.set_event_type("VisitScheduleUpdated");
    rec.set_status(ess::v1::MESSAGE_STATUS_DELIVERED);
    rec.set_payload(payload);
    rec.set_rendered(rendered);
    rec.set_attempts(1);
    rec.set_source("bench.visits");
    *rec.mutable_received_at() = received;
    recorder.Record(std::move(rec), [&](absl::Status s) {
      std::lock_guard lock(mu);
      ++done;
      if (!s.ok()) ++failed;
      cv.notify_all();
    });
  }
  {
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::seconds(60), [&] { return done == n; });
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  cpu.End(sc);
  sc.Set("window_messages", static_cast<double>(done));
  sc.Set("records", static_cast<double>(n));
  sc.Set("records_per_s", static_cast<double>(n) / seconds);
  sc.Set("failed", static_cast<double>(failed));
  sc.Set("batch_max", s_.batch_max);
  if (failed > 0 || done != n) sc.Fail(absl::StrCat(failed, " failed, ", n - done, " unanswered"));
  Say(absl::StrCat("  Record: ", Grouped(n / seconds), " records/s"));
  if (!s_.postgres_dsn.empty()) {
    // The table is seconds old and has no statistics yet: the planner would take the records
    // of a page for a handful and sort them all (64 ms a page of List instead of 2). A store in
    // service has them: autovacuum analyzes a table within a minute of a change this large.
    absl::StatusOr<ess::pg::Connection> db = ess::pg::Connection::Open(getenv(kPostgresDsnEnv));
    absl::Status analyzed = db.ok() ? db->Exec("ANALYZE ess_replay_records") : db.status();
    if (!analyzed.ok()) sc.Fail(absl::StrCat("ANALYZE: ", analyzed.ToString()));
  }

  // List: pages of 100 (the default) over the partner's records, for a bounded time.
  const absl::Time list_start = absl::Now();
  const absl::Time list_end = list_start + std::min(s_.duration, absl::Seconds(5));
  uint64_t calls = 0, listed = 0;
  std::string token;
  while (absl::Now() < list_end) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    ess::v1::ListRequest req;
    req.set_partner(kPartnerName);
    req.set_page_size(100);
    req.set_page_token(token);
    ess::v1::ListResponse resp;
    if (grpc::Status s = st.stub->List(&ctx, req, &resp); !s.ok()) {
      sc.Fail(absl::StrCat("List: ", s.error_message()));
      break;
    }
    ++calls;
    listed += resp.records_size();
    token = resp.next_page_token();
  }
  const double list_seconds = absl::ToDoubleSeconds(absl::Now() - list_start);
  sc.Set("list_calls_per_s", calls / list_seconds);
  sc.Set("list_records_per_s", listed / list_seconds);
  Say(absl::StrCat("  List: ", Grouped(calls / list_seconds), " pages/s (",
                   Grouped(listed / list_seconds), " records/s)"));

  // Replay (ops): the records above, by filter, a page of 1000 per call: each record read,
  // published to the partner's queue with confirm and marked, for a bounded time. Counted on
  // the queue afterwards, so every replayed record is a message there.
  if (absl::Status declared = DeclareLaneQueues(st); !declared.ok()) {
    sc.Fail(absl::StrCat("Replay: cannot declare the partner's queue: ", declared.message()));
    StopStack(st, sc);
    return;
  }
  const absl::Time replay_start = absl::Now();
  const absl::Time replay_end = replay_start + std::min(s_.duration, absl::Seconds(10));
  uint64_t replayed = 0, not_replayed = 0;
  ess::v1::ReplayRequest replay;
  replay.mutable_filter()->set_partner(kPartnerName);
  replay.mutable_filter()->set_direction(ess::v1::DIRECTION_OUTBOUND);
  replay.mutable_filter()->set_page_size(1000);
  replay.set_reason("benchmark");
  replay.set_requested_by("ess_bench");
  while (absl::Now() < replay_end) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    ess::v1::ReplayResponse resp;
    if (grpc::Status s = st.stub->Replay(&ctx, replay, &resp); !s.ok()) {
      sc.Fail(absl::StrCat("Replay: ", s.error_message()));
      break;
    }
    replayed += resp.replayed();
    not_replayed += resp.skipped() + resp.failed();
    if (resp.next_page_token().empty()) break;
    replay.mutable_filter()->set_page_token(resp.next_page_token());
  }
  const double replay_seconds = absl::ToDoubleSeconds(absl::Now() - replay_start);
  sc.Set("replay_records_per_s", replayed / replay_seconds);
  sc.Set("replayed", static_cast<double>(replayed));
  if (not_replayed > 0) sc.Fail(absl::StrCat("Replay: ", not_replayed, " not replayed"));
  {
    absl::StatusOr<std::unique_ptr<amqp::Connection>> conn =
        amqp::Connection::Open({.host = broker_.host, .port = broker_.port});
    absl::StatusOr<uint32_t> depth =
        conn.ok() ? (*conn)->MessageCount(st.queue) : absl::StatusOr<uint32_t>(conn.status());
    if (!depth.ok() || *depth != replayed) {
      sc.Fail(absl::StrCat("Replay: ", replayed, " replayed but the queue holds ",
                           depth.ok() ? absl::StrCat(*depth) : depth.status().ToString()));
    }
  }
  DeleteQueues({st.queue});
  Say(absl::StrCat("  Replay: ", Grouped(replayed / replay_seconds), " records/s (", replayed,
                   " republished with confirm and marked)"));
  StopStack(st, sc);
}

void Bench::Inbound() {
  Stack st;
  if (absl::Status s = StartStack(st, "inbound", "warn"); !s.ok()) {
    Add("inbound").Fail(std::string(s.message()));
    return;
  }
  DeleteQueues({kSinkQueue});  // a run of another queue type may have left it
  {
    absl::StatusOr<std::unique_ptr<amqp::Connection>> conn =
        amqp::Connection::Open({.host = broker_.host, .port = broker_.port});
    amqp::Topology t{.exchanges = {{.name = kEventsExchange, .type = "fanout"}},
                     .queues = {Queue(kSinkQueue)},
                     .bindings = {{.queue = kSinkQueue, .exchange = kEventsExchange}}};
    if (!conn.ok() || !(*conn)->Apply(t).ok()) {
      Scenario& sc = Add("inbound");
      sc.Fail("cannot declare the events sink queue");
      StopStack(st, sc);
      return;
    }
  }
  if (absl::Status s = StartInbound(st); !s.ok()) {
    Scenario& sc = Add("inbound");
    sc.Fail(std::string(s.message()));
    StopStack(st, sc);
    return;
  }
  const std::string url = absl::StrCat("http://127.0.0.1:", st.inbound_port, kWebhookPath);

  // Throughput at the fixed concurrency (--wrk_connections), then with as many webhooks in
  // flight as the publish ceiling keeps unconfirmed publishes (--publish_window): each webhook
  // waits for its confirm, so the concurrency bounds the rate at concurrency / confirm latency,
  // and RabbitMQ confirms persistent messages in disk-sync rounds of tens of ms under load.
  double rate = 0;
  double published_before = 0;
  std::vector<int> concurrencies = {s_.wrk_connections};
  if (static_cast<int>(s_.publish_window) != s_.wrk_connections) {
    concurrencies.push_back(static_cast<int>(s_.publish_window));
  }
  Scenario* first = nullptr;  // where the services' peak RSS goes
  for (const int connections : concurrencies) {
    Scenario& sc = Add(connections == s_.wrk_connections ? "inbound" : "inbound_window");
    if (first == nullptr) first = &sc;
    if (auto conn = amqp::Connection::Open({.host = broker_.host, .port = broker_.port});
        conn.ok()) {
      (void)(*conn)->Purge(kSinkQueue);
      if (s_.audit) (void)(*conn)->Purge(kAuditQueue);
    }
    const std::string prefix = absl::StrCat("W", getpid(), "c", connections);
    const std::string signatures = s_.signer ? SignWebhooks(prefix, s_.duration) : "";
    sc.Note("signed", s_.signer ? "true" : "false");
    const Scrape before = ScrapeMetrics(st);
    CpuWindow cpu;
    cpu.Begin(Procs(st));
    double wrk_cpu = 0;
    std::optional<std::string> r =
        RunWrk(sc, url, connections, "webhook", prefix, s_.duration, &wrk_cpu, signatures);
    cpu.End(sc, {{"wrk", wrk_cpu}});
    if (!r) continue;
    const double seconds = JsonNumber(*r, "duration_us") / 1e6;
    const double ok = JsonNumber(*r, "ok");
    const double run_rate = seconds > 0 ? ok / seconds : 0;
    rate = std::max(rate, run_rate);
    sc.Set("webhooks_per_s", run_rate);
    sc.Set("ok", ok);
    sc.Set("window_messages", ok);
    sc.Set("non2xx", JsonNumber(*r, "non2xx"));
    sc.Set("socket_errors", JsonNumber(*r, "connect") + JsonNumber(*r, "read") +
                                JsonNumber(*r, "write") + JsonNumber(*r, "timeout"));
    sc.Set("p50_ms", JsonNumber(*r, "p50") / 1e3);
    sc.Set("p99_ms", JsonNumber(*r, "p99") / 1e3);
    sc.Set("connections", connections);
    absl::StatusOr<QueueState> q = QueueInfo(broker_, kSinkQueue);
    const double on_bus = q.ok() ? static_cast<double>(q->messages) : -1.0;
    sc.Set("on_bus", on_bus);
    // Every 2xx is recorded PUBLISHED, just after its answer: the last ones may take a moment.
    double published = -1.0;
    const absl::Time until = absl::Now() + absl::Seconds(10);
    while (true) {
      absl::StatusOr<ess::v1::PartnerStats> stats = Stats(st, ess::v1::DIRECTION_INBOUND);
      published = stats.ok() ? static_cast<double>(stats->published()) : -1.0;
      if (published - published_before >= ok || absl::Now() >= until) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    sc.Set("records_published", published >= 0 ? published - published_before : -1.0);
    SetStages(sc, before, ScrapeMetrics(st));
    if (on_bus < ok) sc.Fail(absl::StrCat(ok, " answered 2xx but ", on_bus, " on the bus"));
    if (published - published_before < ok) {
      sc.Fail(absl::StrCat(ok, " answered 2xx but ", published - published_before,
                           " recorded PUBLISHED"));
    }
    published_before = published;
    if (s_.audit) {
      // At least one audit event per 2xx (a PUBLISHED one; a refused webhook has its own too).
      const AuditCount audited = CountAuditEvents(static_cast<uint64_t>(ok));
      sc.Set("audit_events", static_cast<double>(audited.events));
      sc.Set("audit_messages", static_cast<double>(audited.messages));
      if (!audited.error.empty()) sc.Fail(audited.error);
      if (static_cast<double>(audited.events) < ok) {
        sc.Fail(absl::StrCat(audited.events, " audit events for ", ok, " webhooks answered 2xx"));
      }
    }
    Say(absl::StrCat("  ", Grouped(run_rate), " webhooks/s at ", connections, " connections; p99 ",
                     JsonNumber(*r, "p99") / 1e3, " ms; ", on_bus, " on the bus for ", ok, " 2xx"));
  }

  // Latency, open loop: requests leave on schedule whatever the answers do, and each is timed
  // from its send to its answer. At half the measured rate (the target's load), and at a
  // quarter for the shape of the curve.
  for (const double fraction : {0.25, 0.5}) {
    Scenario& lat_sc = Add(fraction == 0.5 ? "inbound_latency" : "inbound_latency_quarter");
    lat_sc.Set("fraction_of_max", fraction);
    const double fixed = absl::GetFlag(FLAGS_inbound_latency_rate);
    if (fixed > 0 && fraction != 0.5) continue;
    if (rate > 0 || fixed > 0) {
      const double target = fixed > 0 ? fixed : rate * fraction;
      lat_sc.Set("target_rate", target);
      if (auto conn = amqp::Connection::Open({.host = broker_.host, .port = broker_.port});
          conn.ok()) {
        (void)(*conn)->Purge(kSinkQueue);
      }
      // The broker's own share: persistent publishes with confirms at the same rate, each timed
      // from publish to confirm (what a webhook waits for at least).
      {
        const std::string queue = "bench.confirm_latency";
        DeleteQueues({queue});
        if (auto conn = amqp::Connection::Open({.host = broker_.host, .port = broker_.port});
            conn.ok() && (*conn)->Apply({.queues = {Queue(queue)}}).ok()) {
          const uint64_t count = static_cast<uint64_t>(target * absl::ToDoubleSeconds(s_.duration));
          Subscriber subscriber(broker_, queue, count, s_.duration + absl::Seconds(20));
          PublishResult p = PublishConfirmed(
              broker_, {.routing_key = queue,
                        .type = "SlotConfirmed",
                        .count = count,
                        .max_duration = s_.duration + absl::Seconds(5),
                        .window = s_.publish_window,
                        .rate = target,
                        .make =
                            [](uint64_t i, std::string* body, std::string* id) {
                              *id = absl::StrCat("CL-", i);
                              *body = absl::StrCat(R"({"type":"SlotConfirmed","id":")", *id,
                                                   R"(","status":"confirmed"})");
                            },
                        .confirm_latency = true});
          const ConsumeResult& drained = subscriber.Join();
          if (drained.consumed != p.confirmed) {
            lat_sc.Fail(absl::StrCat("broker alone: ", p.confirmed, " confirmed but ",
                                     drained.consumed, " consumed"));
          }
          std::vector<int64_t> cl = std::move(p.confirm_latency_ns);
          // Without the first second (warm-up), like the webhook samples.
          const size_t skip = std::min(cl.size(), static_cast<size_t>(target));
          cl.erase(cl.begin(), cl.begin() + static_cast<std::ptrdiff_t>(skip));
          std::sort(cl.begin(), cl.end());
          lat_sc.Set("broker_confirm_p50_ms", PercentileOf(cl, 50) / 1e6);
          lat_sc.Set("broker_confirm_p99_ms", PercentileOf(cl, 99) / 1e6);
          lat_sc.Set("broker_confirm_p999_ms", PercentileOf(cl, 99.9) / 1e6);
          Say(absl::StrCat("  broker alone, publish to confirm at ", Grouped(target),
                           " msg/s: p50 ", Ms(PercentileOf(cl, 50)), " p99 ",
                           Ms(PercentileOf(cl, 99))));
        }
        DeleteQueues({queue});
      }
      const uint64_t count = static_cast<uint64_t>(target * absl::ToDoubleSeconds(s_.duration));
      // Ids unique to this run: a repeat of the previous run's ids would be answered from the
      // lane's dedupe, unpublished.
      const std::string prefix = absl::StrCat("O", getpid(), "-", lat_sc.name, "-");
      // Every 2xx must reach the subscriber: consumed is counted against ok below.
      Subscriber subscriber(broker_, kSinkQueue, count, s_.duration + absl::Seconds(40));
      const Scrape before = ScrapeMetrics(st);
      CpuWindow cpu;
      cpu.Begin(Procs(st));
      OpenLoopResult posted = PostOpenLoop(
          {.port = st.inbound_port,
           .path = kWebhookPath,
           .rate = target,
           .count = count,
           .max_connections = 256,
           .request_timeout = absl::Seconds(10),
           .drain = absl::Seconds(30)},
          [&](uint64_t i, OpenLoopRequest* req) {
            const std::string id = absl::StrCat(prefix, i);
            req->body = absl::StrCat(R"({"id":")", id, R"(","status":"confirmed"})");
            req->headers = {{"Content-Type", "application/json"}};
            if (s_.signer) {  // signing is the partner's work, timed like the rest of its request
              const std::string ts = absl::StrCat(absl::ToUnixSeconds(absl::Now()));
              req->headers.emplace_back("webhook-signature", s_.signer->Sign(id, ts, req->body));
              req->headers.emplace_back("webhook-id", id);
              req->headers.emplace_back("webhook-timestamp", ts);
            }
          });
      cpu.End(lat_sc);
      SetStages(lat_sc, before, ScrapeMetrics(st));
      const uint64_t ok = posted.ok;
      const double send_seconds = posted.send_seconds;
      // Without the first second (warm-up).
      std::vector<int64_t> lat;
      lat.reserve(posted.ok_latencies.size());
      const int64_t warm_until = posted.start_ns + 1'000'000'000;
      for (const auto& [sent_ns, latency_ns] : posted.ok_latencies) {
        if (sent_ns >= warm_until) lat.push_back(latency_ns);
      }
      std::sort(lat.begin(), lat.end());
      lat_sc.Set("sent", static_cast<double>(count));
      lat_sc.Set("window_messages", static_cast<double>(posted.sent));
      lat_sc.Set("achieved_rate", count / send_seconds);
      lat_sc.Set("ok", static_cast<double>(ok));
      lat_sc.Set("samples", static_cast<double>(lat.size()));
      lat_sc.Set("p50_ms", PercentileOf(lat, 50) / 1e6);
      lat_sc.Set("p99_ms", PercentileOf(lat, 99) / 1e6);
      lat_sc.Set("p999_ms", PercentileOf(lat, 99.9) / 1e6);
      const SecondP99 per_second = PerSecondP99(posted.ok_latencies, warm_until);
      SetPerSecondP99(lat_sc, per_second);
      const ConsumeResult& drained = subscriber.Join();
      lat_sc.Set("consumed", static_cast<double>(drained.consumed));
      if (ok != count) {
        lat_sc.Fail(absl::StrCat(ok, " of ", count, " answered 2xx; ", posted.first_error));
      }
      if (drained.consumed < ok) {
        lat_sc.Fail(absl::StrCat(ok, " answered 2xx but ", drained.consumed,
                                 " reached the subscriber", drained.status.ok() ? "" : ": ",
                                 drained.status.message()));
      }
      Say(absl::StrCat("  at ", Grouped(target), " webhooks/s: p50 ", Ms(PercentileOf(lat, 50)),
                       " p99 ", Ms(PercentileOf(lat, 99)), PerSecondP99Text(per_second)));
    } else {
      lat_sc.Fail("no inbound rate to take a share of");
    }
  }
  StopStack(st, *first);
  DeleteQueues({kSinkQueue});
}

// ---- the baselines ------------------------------------------------------------------------

// The first executable `name` on PATH; empty if none.
std::string FindOnPath(const std::string& name) {
  const char* path = getenv("PATH");
  for (const std::string& dir : std::vector<std::string>(
           absl::StrSplit(path == nullptr ? "" : path, ':', absl::SkipEmpty()))) {
    const std::string candidate = absl::StrCat(dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// A baseline's two lanes: how to start each, given the broker, the queue or exchange, the
// partner's URL or the port to listen on.
struct BaselineLanes {
  std::string name;         // "node": the scenarios are baseline_<name>_outbound and _inbound
  std::string process;      // its CPU column
  std::string missing;      // why it cannot run here; empty if it can
  uint64_t max_events = 0;  // outbound events at most (0: --events): a slow lane takes long
  std::function<std::vector<std::string>(const std::string& queue, const std::string& partner)>
      outbound;
  std::function<std::vector<std::string>(const std::string& exchange, int port)> inbound;
};

std::vector<BaselineLanes> BaselinesFor(const Settings& s, const BrokerAddress& broker) {
  const std::string dir = s.source_dir + "/bench/baseline";
  const std::string amqp_url = absl::StrCat("amqp://guest:guest@", broker.host, ":", broker.port);
  std::vector<BaselineLanes> lanes(2);

  // The issue's straightforward Node.js lanes: amqplib with manual ack and a confirm channel,
  // undici's keep-alive pool.
  const std::string node = FindOnPath("node");
  BaselineLanes& js = lanes[0];
  js.name = "node";
  js.process = "node";
  if (node.empty() || access((dir + "/node_modules/amqplib").c_str(), R_OK) != 0 ||
      access((dir + "/node_modules/undici").c_str(), R_OK) != 0) {
    js.missing = "the Node.js baseline is not installed: run bench/baseline/install.sh";
  }
  js.outbound = [=, &s](const std::string& queue, const std::string& partner) {
    return std::vector<std::string>{node,
                                    dir + "/outbound.js",
                                    amqp_url,
                                    queue,
                                    partner,
                                    absl::StrCat(s.prefetch),
                                    absl::StrCat(s.max_in_flight)};
  };
  js.inbound = [=](const std::string& exchange, int port) {
    return std::vector<std::string>{node, dir + "/inbound.js", amqp_url, exchange,
                                    absl::StrCat(port)};
  };

  // The original design's Python lanes, as it writes them: pika with auto-ack and one
  // requests.post per event; FastAPI with a transient, unconfirmed publish per webhook.
  // Debian's python3 and packages (scripts/install-deps.sh), not whatever python3 is first on
  // PATH.
  const std::string python = "/usr/bin/python3";
  BaselineLanes& py = lanes[1];
  py.name = "python";
  py.process = "python3";
  py.max_events = 20'000;
  if (RunToCompletion({python, "-c", "import pika, requests, fastapi, uvicorn"},
                      s.run_dir + "/python-check.log") != 0) {
    py.missing =
        "the Python baseline needs Debian's python3-pika, python3-requests, python3-fastapi and "
        "python3-uvicorn (scripts/install-deps.sh)";
  }
  py.outbound = [=, &s](const std::string& queue, const std::string& partner) {
    return std::vector<std::string>{python,
                                    dir + "/outbound.py",
                                    broker.host,
                                    absl::StrCat(broker.port),
                                    queue,
                                    partner,
                                    s.quorum_queues ? "quorum" : "classic"};
  };
  py.inbound = [=](const std::string& exchange, int port) {
    return std::vector<std::string>{"/usr/bin/env",
                                    absl::StrCat("ESS_AMQP_HOST=", broker.host),
                                    absl::StrCat("ESS_AMQP_PORT=", broker.port),
                                    absl::StrCat("ESS_EXCHANGE=", exchange),
                                    python,
                                    "-m",
                                    "uvicorn",
                                    "inbound:app",
                                    "--app-dir",
                                    dir,
                                    "--host",
                                    "127.0.0.1",
                                    "--port",
                                    absl::StrCat(port),
                                    "--log-level",
                                    "warning"};
  };
  return lanes;
}

// The lanes the issue measured ESS against, in the same run (bench/baseline). They do less per
// message than ESS's lanes (no replay record, claim, signature check or retry schedule; the
// Python ones no acks after delivery and no confirms either): the figures say what that costs.
void Bench::Baseline() {
  for (const BaselineLanes& lanes : BaselinesFor(s_, broker_)) {
    const std::string prefix = absl::StrCat("baseline_", lanes.name);
    if (!lanes.missing.empty()) {
      Add(prefix + "_outbound").Fail(lanes.missing);
      continue;
    }
    const std::string run_dir = absl::StrCat(s_.run_dir, "/", ++stacks_, "-", prefix);
    std::filesystem::create_directories(run_dir);

    // Outbound: preloaded events, drained by the lane into the partner.
    {
      Scenario& sc = Add(prefix + "_outbound");
      const std::string queue = absl::StrCat("bench.", prefix, ".visits");
      DeleteQueues({queue});
      absl::StatusOr<std::unique_ptr<amqp::Connection>> conn =
          amqp::Connection::Open({.host = broker_.host, .port = broker_.port});
      if (!conn.ok() || !(*conn)->Apply({.queues = {Queue(queue)}}).ok()) {
        sc.Fail("cannot declare the baseline's queue");
        continue;
      }
      const uint64_t events =
          lanes.max_events > 0 ? std::min<uint64_t>(s_.events, lanes.max_events) : s_.events;
      sc.Set("events", static_cast<double>(events));
      const std::string run = absl::StrCat("B", getpid(), lanes.name);
      PublishResult pre = PreloadVisits(queue, events, run);
      if (pre.confirmed != events) {
        sc.Fail(absl::StrCat("preload: ", pre.confirmed, " of ", events, " confirmed"));
        continue;
      }
      WaitQuiet();
      Say(absl::StrCat("  ", events, " events preloaded; starting the ", lanes.name,
                       " outbound lane"));
      partner_.Reset(/*track_ids=*/true, 0);
      auto lane = std::make_unique<Child>(
          lanes.process,
          lanes.outbound(queue, absl::StrCat("http://127.0.0.1:", partner_.port(), "/api/slots")),
          absl::StrCat(run_dir, "/outbound.log"));
      CpuWindow cpu;
      cpu.Begin({{"rabbitmq", broker_pid_}, {lanes.process, lane->pid()}, {"ess_bench", getpid()}});
      const bool delivered =
          WaitUntil([&] { return !lane->Running() || partner_.count() >= events; },
                    absl::Seconds(std::max<double>(60, events / 500.0)), absl::Milliseconds(2));
      cpu.End(sc);
      if (!delivered || partner_.count() < events) {
        sc.Fail(absl::StrCat("the partner got ", partner_.count(), " of ", events, " events:\n",
                             lane->LogTail()));
      } else {
        const double seconds = static_cast<double>(partner_.last_ns() - partner_.first_ns()) / 1e9;
        const double rate = seconds > 0 ? static_cast<double>(events) / seconds : 0;
        sc.Set("events_per_s", rate);
        sc.Set("window_messages", static_cast<double>(events));
        sc.Set("partner_requests", static_cast<double>(partner_.count()));
        sc.Set("duplicates", static_cast<double>(partner_.duplicates()));
        Say(absl::StrCat("  ", Grouped(rate), " events/s (", lanes.name, " lane)"));
      }
      // Every delivery acked: stopping the lane must return nothing to the queue.
      StopChild(lane, sc);
      absl::StatusOr<QueueState> after = QueueInfo(broker_, queue);
      if (!after.ok() || after->messages != 0) {
        sc.Fail("deliveries left unacked (returned to the queue when the lane stopped)");
      }
      DeleteQueues({queue});
    }

    // Inbound: plain webhooks at the fixed concurrency; every 2xx must be on the bus.
    {
      Scenario& sc = Add(prefix + "_inbound");
      const std::string exchange = absl::StrCat("bench.", prefix, ".events");
      const std::string sink = absl::StrCat("bench.", prefix, ".sink");
      DeleteQueues({sink});
      absl::StatusOr<std::unique_ptr<amqp::Connection>> conn =
          amqp::Connection::Open({.host = broker_.host, .port = broker_.port});
      amqp::Topology t{.exchanges = {{.name = exchange, .type = "fanout"}},
                       .queues = {Queue(sink)},
                       .bindings = {{.queue = sink, .exchange = exchange}}};
      if (!conn.ok() || !(*conn)->Apply(t).ok()) {
        sc.Fail("cannot declare the baseline's events queue");
        continue;
      }
      const int port = FreePort();
      auto lane = std::make_unique<Child>(lanes.process, lanes.inbound(exchange, port),
                                          absl::StrCat(run_dir, "/inbound.log"));
      const std::string url = absl::StrCat("http://127.0.0.1:", port, kWebhookPath);
      http::Client client({});
      const bool up = WaitUntil(
          [&] {
            if (!lane->Running()) return true;
            return client.SendAndWait({.method = "GET", .url = url, .timeout = absl::Seconds(1)})
                .ok();
          },
          absl::Seconds(20), absl::Milliseconds(50));
      if (!up || !lane->Running()) {
        sc.Fail(
            absl::StrCat("the ", lanes.name, " inbound lane did not come up:\n", lane->LogTail()));
        StopChild(lane, sc);
        continue;
      }
      CpuWindow cpu;
      cpu.Begin({{"rabbitmq", broker_pid_}, {lanes.process, lane->pid()}, {"ess_bench", getpid()}});
      double wrk_cpu = 0;
      std::optional<std::string> r =
          RunWrk(sc, url, s_.wrk_connections, "webhook", absl::StrCat("B", getpid(), lanes.name),
                 s_.duration, &wrk_cpu);
      cpu.End(sc, {{"wrk", wrk_cpu}});
      if (r) {
        const double seconds = JsonNumber(*r, "duration_us") / 1e6;
        const double ok = JsonNumber(*r, "ok");
        const double rate = seconds > 0 ? ok / seconds : 0;
        sc.Set("webhooks_per_s", rate);
        sc.Set("ok", ok);
        sc.Set("window_messages", ok);
        sc.Set("non2xx", JsonNumber(*r, "non2xx"));
        sc.Set("p50_ms", JsonNumber(*r, "p50") / 1e3);
        sc.Set("p99_ms", JsonNumber(*r, "p99") / 1e3);
        sc.Set("connections", s_.wrk_connections);
        // The Python lane publishes unconfirmed: its last publishes may still be on their way
        // into the queue when wrk ends (46 of 10,805 once). Up to 10 s for the count to settle.
        double on_bus = -1.0;
        WaitUntil(
            [&] {
              absl::StatusOr<QueueState> q = QueueInfo(broker_, sink);
              on_bus = q.ok() ? static_cast<double>(q->messages) : -1.0;
              return on_bus >= ok;
            },
            absl::Seconds(10), absl::Milliseconds(100));
        sc.Set("on_bus", on_bus);
        if (on_bus < ok) sc.Fail(absl::StrCat(ok, " answered 2xx but ", on_bus, " on the bus"));
        Say(absl::StrCat("  ", Grouped(rate), " webhooks/s (", lanes.name, " lane, ",
                         s_.wrk_connections, " connections)"));
      }
      StopChild(lane, sc);
      DeleteQueues({sink});
    }
  }
}

// ---- report -------------------------------------------------------------------------------

struct Row {
  std::string what, value, ceiling, ratio, target, verdict, cpu;
};

void PrintTable(const std::vector<Row>& rows) {
  const std::vector<std::string> head = {"scenario",
                                         "result",
                                         "ceiling (same run)",
                                         "ratio",
                                         "target",
                                         "verdict",
                                         "busiest processes (% of a core)"};
  std::vector<size_t> w(head.size());
  auto cells = [](const Row& r) {
    return std::vector<std::string>{r.what,   r.value,   r.ceiling, r.ratio,
                                    r.target, r.verdict, r.cpu};
  };
  for (size_t i = 0; i < head.size(); ++i) w[i] = head[i].size();
  for (const Row& r : rows) {
    auto c = cells(r);
    for (size_t i = 0; i < c.size(); ++i) w[i] = std::max(w[i], c[i].size());
  }
  auto line = [&](const std::vector<std::string>& c) {
    std::string out;
    for (size_t i = 0; i < c.size(); ++i) {
      absl::StrAppend(&out, c[i], std::string(w[i] - c[i].size(), ' '),
                      i + 1 < c.size() ? "  " : "");
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    std::cout << out << "\n";
  };
  line(head);
  std::vector<std::string> rule;
  for (size_t x : w) rule.push_back(std::string(x, '-'));
  line(rule);
  for (const Row& r : rows) line(cells(r));
}

std::vector<Row> BuildRows(const Bench& b) {
  std::vector<Row> rows;
  // A failed scenario's figures stay out of the table (they are listed below it with the
  // failure): a latency run that never got its samples must not read "p99 0.00 ms, PASS".
  auto fig = [&](const char* scenario, const char* key) -> std::optional<double> {
    const Scenario* sc = b.Find(scenario);
    return sc != nullptr && sc->ok() ? sc->Get(key) : std::nullopt;
  };
  auto busiest = [&](const char* scenario) {
    const Scenario* sc = b.Find(scenario);
    return sc != nullptr ? sc->Busiest() : std::string();
  };
  auto verdict = [](bool pass) { return std::string(pass ? "PASS" : "MISS"); };
  // Under a latency row: the p99 of each second of the run, its median and its worst.
  auto per_second_row = [&](const char* scenario) {
    const std::optional<double> seconds = fig(scenario, "p99_seconds");
    if (!seconds || *seconds < 1) return;
    rows.push_back(
        {"  the p99 of each second: median / worst",
         absl::StrFormat("%.2f / %.2f ms over %.0f s",
                         fig(scenario, "p99_per_second_median_ms").value_or(0),
                         fig(scenario, "p99_per_second_worst_ms").value_or(0), *seconds)});
  };
  // Under an inbound row: where its webhooks' time went, from the services' histograms.
  auto stages_row = [&](const char* scenario) {
    const std::optional<double> claim = fig(scenario, "stage_claim_p50_ms");
    const std::optional<double> publish = fig(scenario, "stage_publish_p50_ms");
    if (!claim || !publish) return;
    rows.push_back(
        {"  in the lane, p50 / p99: claim, publish",
         absl::StrFormat("%.2f / %.2f, %.2f / %.2f ms", *claim,
                         fig(scenario, "stage_claim_p99_ms").value_or(0), *publish,
                         fig(scenario, "stage_publish_p99_ms").value_or(0)),
         absl::StrFormat("claim means: batch wait %.2f, call %.2f, of it store queue %.2f "
                         "+ Claim %.2f ms",
                         fig(scenario, "stage_client_claim_wait_mean_ms").value_or(0),
                         fig(scenario, "stage_client_claim_call_mean_ms").value_or(0),
                         fig(scenario, "stage_store_write_wait_mean_ms").value_or(0),
                         fig(scenario, "stage_store_claim_mean_ms").value_or(0))});
  };
  // RabbitMQ's CPU in a scenario, % of one core.
  auto broker_cpu = [&](const char* scenario) {
    const Scenario* sc = b.Find(scenario);
    if (sc == nullptr) return 0.0;
    for (const auto& [name, pct] : sc->cpu_percent) {
      if (name == "rabbitmq") return pct;
    }
    return 0.0;
  };
  const std::optional<double> publish = fig("broker_publish", "msgs_per_s");
  const std::optional<double> consume = fig("broker_consume", "msgs_per_s");
  if (publish) {
    rows.push_back({"broker: persistent publish + confirms", Grouped(*publish) + " msg/s", "", "",
                    "", "", busiest("broker_publish")});
  }
  if (auto lane = fig("broker_publish_lane", "msgs_per_s")) {
    Row r{"broker: the same, lane-shaped messages", Grouped(*lane) + " msg/s"};
    if (publish) {
      r.ceiling = Grouped(*publish) + " bare publish";
      r.ratio = Percent(*lane / *publish);
    }
    r.cpu = busiest("broker_publish_lane");
    rows.push_back(r);
  }
  if (consume) {
    rows.push_back({"broker: persistent consume + manual ack", Grouped(*consume) + " msg/s", "", "",
                    "", "", busiest("broker_consume")});
  }
  if (auto http = fig("http_partner", "requests_per_s")) {
    rows.push_back({"HTTP: partner server under wrk", Grouped(*http) + " req/s", "", "", "", "",
                    busiest("http_partner")});
  }
  const std::optional<double> out1 = fig("outbound", "events_per_s");
  if (out1) {
    Row r{"outbound: events/s (1 lane, preloaded)", Grouped(*out1) + " ev/s"};
    if (consume) {
      r.ceiling = Grouped(*consume) + " consume+ack";
      r.ratio = Percent(*out1 / *consume);
      r.target = ">= 60%";
      r.verdict = verdict(*out1 >= 0.6 * *consume);
    }
    r.cpu = busiest("outbound");
    rows.push_back(r);
  }
  if (auto p99 = fig("outbound_latency", "p99_ms")) {
    rows.push_back(
        {absl::StrCat("outbound: e2e latency at ",
                      Grouped(fig("outbound_latency", "target_rate").value_or(0)), " ev/s (50%)"),
         absl::StrFormat("p50 %.2f / p99 %.2f / p99.9 %.2f ms",
                         fig("outbound_latency", "p50_ms").value_or(0), *p99,
                         fig("outbound_latency", "p999_ms").value_or(0)),
         fig("broker_latency", "p99_ms")
             ? absl::StrFormat("broker alone: p50 %.2f / p99 %.2f ms, rabbitmq %.0f%%",
                               fig("broker_latency", "p50_ms").value_or(0),
                               *fig("broker_latency", "p99_ms"), broker_cpu("broker_latency"))
             : std::string(),
         "", "p99 <= 10 ms", verdict(*p99 <= 10), busiest("outbound_latency")});
    per_second_row("outbound_latency");
  }
  if (auto p99 = fig("outbound_latency_quarter", "p99_ms")) {
    rows.push_back(
        {absl::StrCat("outbound: e2e latency at ",
                      Grouped(fig("outbound_latency_quarter", "target_rate").value_or(0)),
                      " ev/s (25%)"),
         absl::StrFormat("p50 %.2f / p99 %.2f / p99.9 %.2f ms",
                         fig("outbound_latency_quarter", "p50_ms").value_or(0), *p99,
                         fig("outbound_latency_quarter", "p999_ms").value_or(0)),
         "", "", "", "", busiest("outbound_latency_quarter")});
  }
  if (auto info = fig("outbound_info_log", "events_per_s")) {
    Row r{"outbound: events/s at log level info", Grouped(*info) + " ev/s"};
    if (out1) {
      r.ceiling = Grouped(*out1) + " at warn";
      r.ratio = Percent(*info / *out1);
    }
    r.cpu = busiest("outbound_info_log");
    rows.push_back(r);
  }
  for (const Scenario& sc : b.scenarios()) {
    if (sc.name.rfind("outbound_replicas_", 0) != 0 || !sc.ok()) continue;
    auto rate = sc.Get("events_per_s");
    if (!rate) continue;
    Row r{absl::StrCat("scaling: ", sc.Get("replicas").value_or(0), " lane replicas"),
          Grouped(*rate) + " ev/s"};
    if (consume) {
      r.ceiling = Grouped(*consume) + " consume+ack";
      r.ratio = Percent(*rate / *consume);
    }
    r.cpu = sc.Busiest();
    rows.push_back(r);
  }
  for (const char* name : {"inbound", "inbound_window"}) {
    const std::optional<double> in = fig(name, "webhooks_per_s");
    if (!in) continue;
    Row r{absl::StrCat("inbound: webhooks/s (", fig(name, "connections").value_or(0),
                       " connections)"),
          Grouped(*in) + " req/s"};
    if (publish) {
      r.ceiling = Grouped(*publish) + " publish+confirm";
      r.ratio = Percent(*in / *publish);
      r.target = ">= 75%";
      r.verdict = verdict(*in >= 0.75 * *publish);
    }
    r.cpu = busiest(name);
    rows.push_back(r);
    stages_row(name);
  }
  if (auto p99 = fig("inbound_latency", "p99_ms")) {
    rows.push_back(
        {absl::StrCat("inbound: latency at ",
                      Grouped(fig("inbound_latency", "target_rate").value_or(0)),
                      " webhooks/s (50%)"),
         absl::StrFormat("p50 %.2f / p99 %.2f / p99.9 %.2f ms",
                         fig("inbound_latency", "p50_ms").value_or(0), *p99,
                         fig("inbound_latency", "p999_ms").value_or(0)),
         fig("inbound_latency", "broker_confirm_p99_ms")
             ? absl::StrFormat("broker confirm: p50 %.2f / p99 %.2f ms",
                               fig("inbound_latency", "broker_confirm_p50_ms").value_or(0),
                               *fig("inbound_latency", "broker_confirm_p99_ms"))
             : std::string(),
         "", "p99 <= 10 ms", verdict(*p99 <= 10), busiest("inbound_latency")});
    per_second_row("inbound_latency");
    stages_row("inbound_latency");
  }
  if (auto p99 = fig("inbound_latency_quarter", "p99_ms")) {
    rows.push_back(
        {absl::StrCat("inbound: latency at ",
                      Grouped(fig("inbound_latency_quarter", "target_rate").value_or(0)),
                      " webhooks/s (25%)"),
         absl::StrFormat("p50 %.2f / p99 %.2f / p99.9 %.2f ms",
                         fig("inbound_latency_quarter", "p50_ms").value_or(0), *p99,
                         fig("inbound_latency_quarter", "p999_ms").value_or(0)),
         fig("inbound_latency_quarter", "broker_confirm_p99_ms")
             ? absl::StrFormat("broker confirm: p50 %.2f / p99 %.2f ms",
                               fig("inbound_latency_quarter", "broker_confirm_p50_ms").value_or(0),
                               *fig("inbound_latency_quarter", "broker_confirm_p99_ms"))
             : std::string(),
         "", "", "", busiest("inbound_latency_quarter")});
    stages_row("inbound_latency_quarter");
  }
  if (auto rec = fig("replay_store", "records_per_s")) {
    Row r{"replay store: Record (batched)", Grouped(*rec) + " rec/s"};
    if (out1) {
      r.ceiling = Grouped(*out1) + " outbound ev/s";
      r.ratio = absl::StrFormat("%.1fx", *rec / *out1);
      r.target = ">= 2x";
      r.verdict = verdict(*rec >= 2 * *out1);
    }
    r.cpu = busiest("replay_store");
    rows.push_back(r);
    rows.push_back({"replay store: List (pages of 100)",
                    Grouped(fig("replay_store", "list_records_per_s").value_or(0)) + " rec/s", "",
                    "", "", "", ""});
    if (auto rate = fig("replay_store", "replay_records_per_s")) {
      Row replay{"replay store: Replay (pages of 1000)", Grouped(*rate) + " rec/s"};
      if (publish) {
        replay.ceiling = Grouped(*publish) + " publish+confirm";
        replay.ratio = absl::StrFormat("%.0f%%", 100 * *rate / *publish);
      }
      rows.push_back(replay);
    }
  }
  // The baseline lanes, and ESS's figure against theirs in the same run.
  for (const auto& [lang, label] : {std::pair<const char*, const char*>{"node", "Node.js"},
                                    std::pair<const char*, const char*>{"python", "Python"}}) {
    const std::string out_name = absl::StrCat("baseline_", lang, "_outbound");
    const std::string in_name = absl::StrCat("baseline_", lang, "_inbound");
    if (auto base = fig(out_name.c_str(), "events_per_s")) {
      Row r{absl::StrCat("baseline: ", label, " outbound lane"), Grouped(*base) + " ev/s"};
      if (consume) {
        r.ceiling = Grouped(*consume) + " consume+ack";
        r.ratio = Percent(*base / *consume);
      }
      r.cpu = busiest(out_name.c_str());
      rows.push_back(r);
      if (out1) {
        rows.push_back(
            {absl::StrCat("  ESS outbound / ", label), absl::StrFormat("%.2fx", *out1 / *base)});
      }
    }
    if (auto base = fig(in_name.c_str(), "webhooks_per_s")) {
      Row r{absl::StrCat("baseline: ", label, " inbound lane (",
                         fig(in_name.c_str(), "connections").value_or(0), " connections)"),
            Grouped(*base) + " req/s"};
      if (publish) {
        r.ceiling = Grouped(*publish) + " publish+confirm";
        r.ratio = Percent(*base / *publish);
      }
      r.cpu = busiest(in_name.c_str());
      rows.push_back(r);
      if (auto in = fig("inbound", "webhooks_per_s")) {
        bool is_signed = false;
        for (const auto& [key, value] : b.Find("inbound")->notes) {
          is_signed |= key == "signed" && value == "true";
        }
        rows.push_back({absl::StrCat("  ESS inbound", is_signed ? " (signed)" : "", " / ", label),
                        absl::StrFormat("%.2fx", *in / *base)});
      }
    }
  }
  // Peak RSS: the largest VmHWM of each service over the scenarios.
  std::map<std::string, std::pair<double, std::string>> peak;
  for (const Scenario& sc : b.scenarios()) {
    for (const auto& [name, mib] : sc.peak_rss_mib) {
      std::string svc = name.substr(0, name.find('#'));
      if (mib > peak[svc].first) peak[svc] = {mib, sc.name};
    }
  }
  for (const auto& [svc, v] : peak) {
    if (svc == "node" || svc == "python3") {  // the baselines' lanes: no target
      rows.push_back({absl::StrCat("memory: ", svc, " (baseline) peak RSS"),
                      absl::StrFormat("%.1f MiB", v.first), absl::StrCat("in ", v.second)});
      continue;
    }
    const double limit = svc == "replay_svc" ? 128 : 64;
    rows.push_back({absl::StrCat("memory: ", svc, " peak RSS"),
                    absl::StrFormat("%.1f MiB", v.first), absl::StrCat("in ", v.second), "",
                    absl::StrFormat("<= %.0f MiB", limit), verdict(v.first <= limit), ""});
  }
  return rows;
}

// CPU time per message of each process in the throughput and latency scenarios: what each
// message costs whoever pays for it. At full load it is independent of how busy the machine
// was; at a latency run's fixed rate it shows what the pace costs (fewer messages per wake-up).
void PrintCpuPerMessage(const Bench& b) {
  std::vector<std::string> procs = {"rabbitmq",   "outbound_svc", "inbound_svc",
                                    "replay_svc", "ess_bench",    "wrk"};
  for (const char* baseline : {"node", "python3"}) {
    for (const Scenario& sc : b.scenarios()) {
      if (sc.name.rfind("baseline_", 0) != 0) continue;
      bool has = false;
      for (const auto& [name, pct] : sc.cpu_percent) has |= name == baseline;
      if (has) {
        procs.push_back(baseline);
        break;
      }
    }
  }
  std::cout << "\nCPU time per message, microseconds (all replicas of a service added up; "
               "ess_bench is the partner server and the load generators)\n";
  std::vector<std::string> head = {"scenario"};
  for (const auto& p : procs) head.push_back(p);
  head.push_back("total");
  head.push_back("others (% of a core)");
  std::vector<std::vector<std::string>> rows;
  for (const Scenario& sc : b.scenarios()) {
    const auto msgs = sc.Get("window_messages");
    const auto wall = sc.Get("cpu_window_s");
    if (!msgs || !wall || *msgs <= 0) continue;
    std::vector<std::string> row = {sc.name};
    double total = 0;
    for (const auto& p : procs) {
      double pct = 0;
      bool seen = false;
      for (const auto& [name, v] : sc.cpu_percent) {
        if (name.substr(0, name.find('#')) == p) {
          pct += v;
          seen = true;
        }
      }
      const double us = pct / 100.0 * *wall / *msgs * 1e6;
      total += us;
      row.push_back(seen ? absl::StrFormat("%.1f", us) : "");
    }
    row.push_back(absl::StrFormat("%.1f", total));
    double others = 0;
    for (const auto& [name, v] : sc.cpu_percent) {
      if (name == "others") others = v;
    }
    row.push_back(absl::StrFormat("%.0f%%", others));
    rows.push_back(row);
  }
  std::vector<size_t> w(head.size());
  for (size_t i = 0; i < head.size(); ++i) w[i] = head[i].size();
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], r[i].size());
  }
  auto line = [&](const std::vector<std::string>& c) {
    std::string out;
    for (size_t i = 0; i < c.size(); ++i) {
      // Names left-aligned, figures right-aligned.
      const std::string pad(w[i] - c[i].size(), ' ');
      absl::StrAppend(&out, i == 0 ? c[i] + pad : pad + c[i], i + 1 < c.size() ? "  " : "");
    }
    std::cout << out << "\n";
  };
  line(head);
  std::vector<std::string> rule;
  for (size_t x : w) rule.push_back(std::string(x, '-'));
  line(rule);
  for (const auto& r : rows) line(r);
}

std::string ToJson(const Bench& b, const Settings& s, const std::string& started) {
  rapidjson::StringBuffer buf;
  rapidjson::PrettyWriter<rapidjson::StringBuffer> w(buf);
  w.StartObject();
  w.Key("started");
  w.String(started.c_str());
  w.Key("settings");
  w.StartObject();
  auto num = [&](const char* k, double v) {
    w.Key(k);
    w.Double(v);
  };
  num("events", static_cast<double>(s.events));
  num("duration_s", absl::ToDoubleSeconds(s.duration));
  num("prefetch", s.prefetch);
  num("max_in_flight", s.max_in_flight);
  num("batch_max", s.batch_max);
  num("batch_delay_ms", s.batch_delay_ms);
  num("record_delay_ms", s.record_delay_ms);
  num("publish_window", s.publish_window);
  num("full_sync", s.full_sync ? 1 : 0);
  num("postgres", s.postgres_dsn.empty() ? 0 : 1);
  num("quorum_queues", s.quorum_queues ? 1 : 0);
  num("audit", s.audit ? 1 : 0);
  num("audit_batch_max", s.audit_batch_max);
  num("wrk_connections", s.wrk_connections);
  num("wrk_threads", s.wrk_threads);
  num("cpus", std::thread::hardware_concurrency());
  w.EndObject();
  w.Key("scenarios");
  w.StartObject();
  for (const Scenario& sc : b.scenarios()) {
    w.Key(sc.name.c_str());
    w.StartObject();
    w.Key("passed");
    w.Bool(sc.ok());
    w.Key("errors");
    w.StartArray();
    for (const std::string& e : sc.errors) w.String(e.c_str());
    w.EndArray();
    for (const auto& [k, v] : sc.figures) num(k.c_str(), std::isfinite(v) ? v : 0);
    for (const auto& [k, v] : sc.notes) {
      w.Key(k.c_str());
      w.String(v.c_str());
    }
    w.Key("thread_cpu_percent");
    w.StartObject();
    for (const auto& [k, v] : sc.thread_cpu_percent) num(k.c_str(), v);
    w.EndObject();
    w.Key("cpu_percent");
    w.StartObject();
    for (const auto& [k, v] : sc.cpu_percent) num(k.c_str(), v);
    w.EndObject();
    w.Key("peak_rss_mib");
    w.StartObject();
    for (const auto& [k, v] : sc.peak_rss_mib) num(k.c_str(), v);
    w.EndObject();
    w.EndObject();
  }
  w.EndObject();
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

// ---- broker and interrupts ------------------------------------------------------------------

std::string g_broker_dir;  // set while the benchmark's own broker runs
std::string g_source_dir;

void StopBroker() {
  if (g_broker_dir.empty()) return;
  Say("stopping the benchmark broker");
  RunToCompletion({"/bin/bash", g_source_dir + "/scripts/rabbitmq.sh", "stop", g_broker_dir},
                  g_broker_dir + "/../rabbitmq-script.log", nullptr);
  g_broker_dir.clear();
}

// Ctrl-C / SIGTERM: kill the children, stop the broker, exit 130.
void WatchSignals() {
  std::thread([] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int sig = 0;
    sigwait(&set, &sig);
    Say("interrupted; stopping what the benchmark started");
    KillAllChildren();
    StopBroker();
    _exit(130);
  }).detach();
}

std::vector<std::string> Split(const std::string& list) {
  return absl::StrSplit(list, ',', absl::SkipEmpty());
}

int Main(int argc, char** argv) {
  cli::BlockTerminationSignals();
  cli::Parse(argc, argv,
             "ess_bench [--events N] [--duration_s S] [--full] [--scenarios a,b]\n"
             "Runs the ESS benchmark on loopback and prints one table (see bench/README.md).");
  log::Init("ess_bench", log::Level::kWarn);
  WatchSignals();

  Settings s;
  s.events = absl::GetFlag(FLAGS_events);
  int duration_s = absl::GetFlag(FLAGS_duration_s);
  if (absl::GetFlag(FLAGS_full)) {
    if (s.events == 100000) s.events = 300000;
    if (duration_s == 10) duration_s = 30;
  }
  s.duration = absl::Seconds(std::max(duration_s, 3));
  s.info_events = absl::GetFlag(FLAGS_info_events);
  if (s.info_events == 0) s.info_events = s.events;
  for (const std::string& r : Split(absl::GetFlag(FLAGS_replicas))) {
    int n = 0;
    if (absl::SimpleAtoi(r, &n) && n > 0) s.replicas.push_back(n);
  }
  s.prefetch = absl::GetFlag(FLAGS_prefetch);
  s.max_in_flight = absl::GetFlag(FLAGS_max_in_flight);
  s.batch_max = absl::GetFlag(FLAGS_batch_max);
  s.batch_delay_ms = absl::GetFlag(FLAGS_batch_delay_ms);
  s.record_delay_ms = absl::GetFlag(FLAGS_record_delay_ms);
  s.full_sync = absl::GetFlag(FLAGS_full_sync);
  s.quorum_queues = absl::GetFlag(FLAGS_quorum_queues);
  s.audit = absl::GetFlag(FLAGS_audit);
  s.audit_batch_max = absl::GetFlag(FLAGS_audit_batch_max);
  s.postgres_dsn = absl::GetFlag(FLAGS_postgres_dsn);
  s.publish_window = absl::GetFlag(FLAGS_publish_window);
  s.wrk_connections = absl::GetFlag(FLAGS_wrk_connections);
  s.wrk_threads = absl::GetFlag(FLAGS_wrk_threads);
  if (absl::GetFlag(FLAGS_signed_webhooks)) {
    // A secret made for this run, handed to inbound_svc through its environment.
    std::random_device seed;
    std::mt19937_64 bits(seed());
    std::string key(32, '\0');
    for (char& c : key) c = static_cast<char>(bits());
    const std::string secret = "whsec_" + absl::Base64Escape(key);
    setenv(kSecretsEnv, secret.c_str(), 1);
    s.signer = *webhook::SignatureVerifier::Create({secret}, absl::Minutes(5));
  }
  s.source_dir = std::filesystem::absolute(absl::GetFlag(FLAGS_source_dir)).string();
  g_source_dir = s.source_dir;
  s.bin_dir = absl::GetFlag(FLAGS_bin_dir);
  if (s.bin_dir.empty()) {
    s.bin_dir = std::filesystem::read_symlink("/proc/self/exe").parent_path().string();
  }
  std::string work_dir = absl::GetFlag(FLAGS_work_dir);
  if (work_dir.empty()) work_dir = s.source_dir + "/.stack/bench";
  // Absolute: the services run in their own folders (Child).
  work_dir = std::filesystem::absolute(work_dir).string();
  s.bin_dir = std::filesystem::absolute(s.bin_dir).string();
  // One run per work folder: a second would share the first's RabbitMQ node (the script finds
  // it running) and the first would stop it under the second when it ends, and each would load
  // the machine the other measures. Held until this process exits.
  std::filesystem::create_directories(work_dir);
  const int lock = open((work_dir + "/.lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (lock < 0 || flock(lock, LOCK_EX | LOCK_NB) != 0) {
    std::cerr << "error: another ess_bench is running in " << work_dir << " (its lock " << work_dir
              << "/.lock is held); wait for it to end, or give this "
              << "one --work_dir (and keep in mind that both load the same machine)\n";
    return 2;
  }
  std::string results_dir = absl::GetFlag(FLAGS_results_dir);
  if (results_dir.empty()) results_dir = s.source_dir + "/bench/results";
  const std::string stamp = absl::FormatTime("%Y%m%d-%H%M%S", absl::Now(), absl::LocalTimeZone());
  s.run_dir = absl::StrCat(work_dir, "/run-", stamp);
  std::filesystem::create_directories(s.run_dir);
  for (const char* candidate : {"/usr/bin/wrk", "/usr/local/bin/wrk"}) {
    if (access(candidate, X_OK) == 0) s.wrk = candidate;
  }
  std::vector<std::string> wanted = Split(absl::GetFlag(FLAGS_scenarios));
  auto want = [&](const std::string& name) {
    return std::find(wanted.begin(), wanted.end(), "all") != wanted.end() ||
           std::find(wanted.begin(), wanted.end(), name) != wanted.end();
  };
  if (s.wrk.empty() && (want("http") || want("inbound"))) {
    std::cerr << "error: wrk is not installed (apt-get install wrk, or ./bench.sh)\n";
    return 2;
  }
  for (const char* bin : {"replay_svc", "outbound_svc", "inbound_svc"}) {
    if (access((s.bin_dir + "/" + bin).c_str(), X_OK) != 0) {
      std::cerr << "error: " << s.bin_dir << "/" << bin << " is missing: build it first\n";
      return 2;
    }
  }

  BrokerAddress broker;
  pid_t broker_pid = 0;
  if (const int port = absl::GetFlag(FLAGS_amqp_port); port > 0) {
    broker.port = port;
    broker_pid = absl::GetFlag(FLAGS_amqp_pid);
  } else {
    const std::string dir = work_dir + "/rabbitmq";
    Say("starting a private RabbitMQ node in " + dir);
    g_broker_dir = dir;
    const int rc =
        RunToCompletion({"/bin/bash", s.source_dir + "/scripts/rabbitmq.sh", "start", dir},
                        work_dir + "/rabbitmq-script.log", nullptr);
    const std::string env = ReadFile(dir + "/env");
    const size_t at = env.find("ESS_AMQP_PORT=");
    if (rc != 0 || at == std::string::npos ||
        !absl::SimpleAtoi(env.substr(at + 14, env.find('\n', at) - at - 14), &broker.port)) {
      std::cerr << "error: the RabbitMQ node did not start; see " << work_dir
                << "/rabbitmq-script.log\n";
      StopBroker();
      return 1;
    }
    int pid = 0;
    if (absl::SimpleAtoi(ReadFile(dir + "/rabbitmq.pid"), &pid)) broker_pid = pid;
  }
  Say(absl::StrCat("broker on 127.0.0.1:", broker.port, " (pid ", broker_pid, "); run folder ",
                   s.run_dir));

  Bench bench(s, broker, broker_pid);
  if (absl::Status st = bench.Start(); !st.ok()) {
    std::cerr << "error: partner server: " << st.message() << "\n";
    StopBroker();
    return 1;
  }
  const std::string started = absl::FormatTime(absl::RFC3339_sec, absl::Now(), absl::UTCTimeZone());
  if (want("ceilings")) bench.Ceilings();
  if (want("http")) bench.HttpCeiling();
  double out_rate = 0;
  const double latency_rate = absl::GetFlag(FLAGS_latency_rate);
  if (want("outbound") || (want("latency") && latency_rate <= 0)) {
    out_rate = bench.Outbound("outbound", 1, s.events, "warn");
  }
  if (want("latency") && (latency_rate > 0 || out_rate > 0)) {
    const double rate = latency_rate > 0 ? latency_rate : out_rate / 2;
    bench.BrokerLatency(rate);
    bench.OutboundLatency("outbound_latency", rate);
    // A quarter of the maximum too, for the shape of the curve.
    if (latency_rate <= 0) bench.OutboundLatency("outbound_latency_quarter", out_rate / 4);
  }
  if (want("info")) bench.Outbound("outbound_info_log", 1, s.info_events, "info");
  if (want("scaling")) {
    for (int n : s.replicas) {
      if (n == 1 && out_rate > 0) continue;  // the outbound run above
      bench.Outbound(absl::StrCat("outbound_replicas_", n), n, s.events, "warn");
    }
  }
  if (want("replay")) bench.Replay();
  if (want("inbound")) bench.Inbound();
  // Not part of "all": it needs Node.js with bench/baseline/install.sh, and Debian's Python
  // packages.
  if (std::find(wanted.begin(), wanted.end(), "baseline") != wanted.end()) bench.Baseline();
  bench.Stop();
  StopBroker();

  std::cout << "\nESS benchmark, " << started << ", " << std::thread::hardware_concurrency()
            << " CPUs; " << s.events << " events per outbound run, "
            << absl::ToInt64Seconds(s.duration) << " s timed runs; "
            << (s.quorum_queues ? "quorum" : "classic") << " queues"
            << (s.audit ? "; audit events on" : "")
            << (s.audit && s.audit_batch_max > 1
                    ? absl::StrCat(", in batches of up to ", s.audit_batch_max)
                    : "")
            << "\n\n";
  PrintTable(BuildRows(bench));
  PrintCpuPerMessage(bench);
  bool all_ok = true;
  for (const Scenario& sc : bench.scenarios()) {
    if (!sc.ok()) {
      all_ok = false;
      std::cout << "\n" << sc.name << " FAILED:";
      for (const std::string& e : sc.errors) std::cout << "\n  " << e.substr(0, 1500);
    }
  }
  std::filesystem::create_directories(results_dir);
  const std::string path = absl::StrCat(results_dir, "/", stamp, ".json");
  std::ofstream(path) << ToJson(bench, s, started) << "\n";
  std::cout << "\nresults: " << path << "\nlogs: " << s.run_dir << "\n";
  return all_ok ? 0 : 1;
}

}  // namespace
}  // namespace ess::bench

int main(int argc, char** argv) { return ess::bench::Main(argc, argv); }
