// The Kubernetes manifests (deploy/k8s) as kubectl renders them, per overlay: each lane its own
// Deployment whose replica count its autoscaler alone sets, the store a single replica with a
// volume its retention cannot let fill, every setting the hub config relies on (its secrets'
// variables, its ports, its addresses) present in the pods that need it and absent from those
// that do not, the store's private key on no lane, and every container within the restricted
// Pod Security Standard on a read-only root filesystem. The ConfigMap's hub.yaml goes through
// the real config loader.
#include <stdio.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "adapters/registry.h"
#include "common/config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "yaml-cpp/yaml.h"

namespace ess {
namespace {

using ::testing::Contains;
using ::testing::Not;

struct Rendered {
  std::vector<YAML::Node> docs;
  std::string error;
};

// `kubectl kustomize deploy/k8s/PATH`, parsed.
Rendered RenderPath(const std::string& path) {
  const char* source = std::getenv("ESS_SOURCE_DIR");
  Rendered r;
  if (source == nullptr) {
    r.error = "ESS_SOURCE_DIR is not set (ctest sets it)";
    return r;
  }
  const std::string cmd =
      absl::StrCat("kubectl kustomize '", source, "/deploy/k8s/", path, "' 2>/dev/null");
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) {
    r.error = "popen failed";
    return r;
  }
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) out.append(buf, n);
  const int status = pclose(pipe);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    r.error = absl::StrCat("`", cmd, "` failed (status ", status,
                           "); is kubectl installed? scripts/install-deps.sh installs it");
    return r;
  }
  r.docs = YAML::LoadAll(out);
  return r;
}

// `kubectl kustomize deploy/k8s/overlays/NAME`, parsed.
Rendered Render(const std::string& overlay) { return RenderPath("overlays/" + overlay); }

const YAML::Node* Find(const Rendered& r, const std::string& kind, const std::string& name) {
  for (const YAML::Node& d : r.docs) {
    if (d["kind"].as<std::string>() == kind && d["metadata"]["name"].as<std::string>() == name) {
      return &d;
    }
  }
  return nullptr;
}

// The first container of a Deployment or StatefulSet.
YAML::Node Container(const YAML::Node& workload) {
  return workload["spec"]["template"]["spec"]["containers"][0];
}

std::set<std::string> EnvNames(const YAML::Node& container) {
  std::set<std::string> names;
  for (const YAML::Node& e : container["env"]) names.insert(e["name"].as<std::string>());
  return names;
}

// Every Deployment and StatefulSet of the render.
std::vector<const YAML::Node*> Workloads(const Rendered& r) {
  std::vector<const YAML::Node*> out;
  for (const YAML::Node& d : r.docs) {
    const std::string kind = d["kind"].as<std::string>();
    if (kind == "Deployment" || kind == "StatefulSet" || kind == "Job") out.push_back(&d);
  }
  return out;
}

// A quantity in bytes, for the binary suffixes the manifests use ("10Gi"); -1 if unparsed.
int64_t Bytes(const std::string& quantity) {
  static const std::map<std::string, int64_t> kSuffixes = {{"Ki", int64_t{1} << 10},
                                                           {"Mi", int64_t{1} << 20},
                                                           {"Gi", int64_t{1} << 30},
                                                           {"Ti", int64_t{1} << 40}};
  for (const auto& [suffix, factor] : kSuffixes) {
    if (quantity.size() > suffix.size() &&
        quantity.compare(quantity.size() - suffix.size(), suffix.size(), suffix) == 0) {
      int64_t n;
      if (absl::SimpleAtoi(quantity.substr(0, quantity.size() - suffix.size()), &n)) {
        return n * factor;
      }
    }
  }
  return -1;
}

// The overlays whose store is one SQLite replica (dev, prod).
class ManifestsTest : public ::testing::TestWithParam<std::string> {};
// Every overlay, the store on PostgreSQL (shared-store) too.
class EveryOverlayTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ManifestsTest, EachLaneScalesOnItsOwnAndTheStoreIsOneWriter) {
  Rendered r = Render(GetParam());
  ASSERT_EQ(r.error, "");
  const std::string ns = GetParam() == "prod" ? "ess" : "ess-dev";
  const int lane_min = GetParam() == "prod" ? 3 : 1;
  for (const YAML::Node& d : r.docs) {
    EXPECT_EQ(d["metadata"]["namespace"].as<std::string>(), ns) << d["metadata"]["name"];
  }
  for (const std::string lane : {"outbound-svc", "inbound-svc"}) {
    const YAML::Node* deployment = Find(r, "Deployment", lane);
    ASSERT_NE(deployment, nullptr) << lane;
    const YAML::Node* hpa = Find(r, "HorizontalPodAutoscaler", lane);
    ASSERT_NE(hpa, nullptr) << lane;
    EXPECT_EQ((*hpa)["spec"]["scaleTargetRef"]["kind"].as<std::string>(), "Deployment");
    EXPECT_EQ((*hpa)["spec"]["scaleTargetRef"]["name"].as<std::string>(), lane);
    EXPECT_EQ((*hpa)["spec"]["minReplicas"].as<int>(), lane_min) << lane;
    EXPECT_GT((*hpa)["spec"]["maxReplicas"].as<int>(), lane_min) << lane;
    // Memory bounded in line with the benchmark's peak RSS targets (64 MiB per lane).
    EXPECT_EQ(Container(*deployment)["resources"]["limits"]["memory"].as<std::string>(), "128Mi");
  }
  if (GetParam() == "prod") {  // webhook bursts get more room than the steady outbound flow
    EXPECT_EQ((*Find(r, "HorizontalPodAutoscaler", "inbound-svc"))["spec"]["maxReplicas"].as<int>(),
              20);
    EXPECT_EQ(
        (*Find(r, "HorizontalPodAutoscaler", "outbound-svc"))["spec"]["maxReplicas"].as<int>(), 10);
  }
  // An autoscaler alone sets its target's count: a Deployment that also sets spec.replicas is
  // reset to that number by every `kubectl apply`, undoing a scale-out in the middle of a burst.
  int autoscaled = 0;
  for (const YAML::Node& d : r.docs) {
    if (d["kind"].as<std::string>() != "HorizontalPodAutoscaler") continue;
    const YAML::Node target = d["spec"]["scaleTargetRef"];
    const YAML::Node* workload =
        Find(r, target["kind"].as<std::string>(), target["name"].as<std::string>());
    ASSERT_NE(workload, nullptr) << d["metadata"]["name"] << " scales nothing that is rendered";
    EXPECT_FALSE((*workload)["spec"]["replicas"].IsDefined())
        << target["name"] << " sets spec.replicas, which its autoscaler owns";
    ++autoscaled;
  }
  EXPECT_EQ(autoscaled, 2);
  const YAML::Node* store = Find(r, "StatefulSet", "replay-svc");
  ASSERT_NE(store, nullptr);
  EXPECT_EQ((*store)["spec"]["replicas"].as<int>(), 1);  // one SQLite writer, by design
  EXPECT_EQ((*store)["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].as<std::string>(),
            "data");
  EXPECT_EQ(Find(r, "HorizontalPodAutoscaler", "replay-svc"), nullptr);
}

TEST_P(ManifestsTest, TheHubConfigLoadsAndEachPodHasExactlyTheSecretsItUses) {
  Rendered r = Render(GetParam());
  ASSERT_EQ(r.error, "");
  std::string hub_yaml;
  std::string config_map;
  for (const YAML::Node& d : r.docs) {
    if (d["kind"].as<std::string>() == "ConfigMap") {
      config_map = d["metadata"]["name"].as<std::string>();
      hub_yaml = d["data"]["hub.yaml"].as<std::string>();
    }
  }
  ASSERT_FALSE(hub_yaml.empty());
  // The bus password is read at load; the service's pods have it (checked below).
  setenv("ESS_BUS_PASSWORD", "from-the-secret", 1);
  absl::StatusOr<ess::v1::HubConfig> config = config::LoadString(
      hub_yaml, "hub.yaml", "/etc/ess", adapters::BuiltinRegistry().SettingsResolver());
  ASSERT_TRUE(config.ok()) << config.status();

  // What each service reads from its environment, by the config.
  std::set<std::string> store_env = {config->bus().password_env()};
  for (const auto& caller : config->replay().auth().callers()) store_env.insert(caller.token_env());
  const std::set<std::string> outbound_env = {config->bus().password_env(),
                                              config->replay().token_env()};
  std::set<std::string> inbound_env = outbound_env;
  for (const auto& p : config->partners()) {
    if (p.has_inbound() && p.inbound().has_auth())
      inbound_env.insert(p.inbound().auth().secrets_env());
  }
  const std::map<std::string, std::pair<std::string, std::set<std::string>>> workloads = {
      {"replay-svc", {"StatefulSet", store_env}},
      {"outbound-svc", {"Deployment", outbound_env}},
      {"inbound-svc", {"Deployment", inbound_env}},
  };
  const std::map<std::string, std::string> binaries = {{"replay-svc", "replay_svc"},
                                                       {"outbound-svc", "outbound_svc"},
                                                       {"inbound-svc", "inbound_svc"}};
  for (const auto& [name, kind_env] : workloads) {
    const YAML::Node* w = Find(r, kind_env.first, name);
    ASSERT_NE(w, nullptr) << name;
    const YAML::Node c = Container(*w);
    EXPECT_EQ(EnvNames(c), kind_env.second) << name << ": exactly the variables its config reads";
    std::vector<std::string> command;
    for (const YAML::Node& a : c["command"]) command.push_back(a.as<std::string>());
    EXPECT_EQ(command, (std::vector<std::string>{"/usr/local/bin/" + binaries.at(name), "--config",
                                                 "/etc/ess/hub.yaml"}));
    bool config_mounted = false;
    for (const YAML::Node& v : (*w)["spec"]["template"]["spec"]["volumes"]) {
      if (v["configMap"]) config_mounted |= v["configMap"]["name"].as<std::string>() == config_map;
    }
    EXPECT_TRUE(config_mounted) << name << " mounts " << config_map;
  }
  EXPECT_THAT(EnvNames(Container(*Find(r, "Deployment", "outbound-svc"))),
              Not(Contains("PRISON_WEBHOOK_SECRETS")));

  // Ports and addresses line up: the lanes dial the store's Service, which reaches its port.
  EXPECT_EQ(config->replay().address(), "replay-svc:50051");
  const YAML::Node* store_service = Find(r, "Service", "replay-svc");
  ASSERT_NE(store_service, nullptr);
  EXPECT_EQ((*store_service)["spec"]["ports"][0]["port"].as<int>(), 50051);
  EXPECT_EQ(config->replay().listen(), "0.0.0.0:50051");
  EXPECT_EQ(Container(*Find(r, "StatefulSet", "replay-svc"))["ports"][0]["containerPort"].as<int>(),
            50051);
  EXPECT_EQ(config->inbound().listen(), "0.0.0.0:8080");
  const YAML::Node inbound = Container(*Find(r, "Deployment", "inbound-svc"));
  EXPECT_EQ(inbound["ports"][0]["containerPort"].as<int>(), 8080);
  // Ready while its bus and store answer; alive while it serves HTTP.
  EXPECT_EQ(inbound["readinessProbe"]["httpGet"]["path"].as<std::string>(), "/readyz");
  EXPECT_EQ(inbound["livenessProbe"]["httpGet"]["path"].as<std::string>(), "/healthz");
  // Metrics: outbound_svc's and replay_svc's own ports, inbound_svc's webhook port.
  EXPECT_EQ(config->replay().metrics_listen(), "0.0.0.0:9465");
  EXPECT_EQ(Container(*Find(r, "StatefulSet", "replay-svc"))["ports"][1]["containerPort"].as<int>(),
            9465);
  EXPECT_EQ(config->outbound().metrics_listen(), "0.0.0.0:9464");
  const YAML::Node outbound = Container(*Find(r, "Deployment", "outbound-svc"));
  EXPECT_EQ(outbound["ports"][0]["containerPort"].as<int>(), 9464);
  // The same probes on its metrics port: ready while it can deliver, alive while it serves HTTP.
  EXPECT_EQ(outbound["readinessProbe"]["httpGet"]["path"].as<std::string>(), "/readyz");
  EXPECT_EQ(outbound["readinessProbe"]["httpGet"]["port"].as<std::string>(), "metrics");
  EXPECT_EQ(outbound["livenessProbe"]["httpGet"]["path"].as<std::string>(), "/healthz");
  EXPECT_EQ(outbound["livenessProbe"]["httpGet"]["port"].as<std::string>(), "metrics");
  // Retention by age keeps the lanes' idempotency window...
  const ess::v1::ReplayRetention& retention = config->replay().retention();
  EXPECT_GE(retention.max_age_seconds(), config->inbound().dedupe_window_seconds());
  EXPECT_GT(retention.max_age_seconds(), 0u);
  // ...but age alone does not bound the store's volume (a busy fortnight can hold any number of
  // records): a count per partner and direction does. Sized as hub.yaml's comment states, at
  // an assumed 2 KiB per record: every partner's two directions at the cap take at most half
  // the volume, the rest being for what no cap evicts, the WAL and free pages.
  constexpr int64_t kAssumedBytesPerRecord = 2048;
  ASSERT_GT(retention.max_records_per_partner(), 0u) << "replay.retention has no count cap";
  const YAML::Node* store = Find(r, "StatefulSet", "replay-svc");
  ASSERT_NE(store, nullptr);
  int64_t volume = -1;
  for (const YAML::Node& claim : (*store)["spec"]["volumeClaimTemplates"]) {
    if (claim["metadata"]["name"].as<std::string>() == "data") {
      volume = Bytes(claim["spec"]["resources"]["requests"]["storage"].as<std::string>());
    }
  }
  ASSERT_GT(volume, 0) << "the store's data volume and its size";
  const int64_t capped = static_cast<int64_t>(config->partners_size()) * 2 *
                         static_cast<int64_t>(retention.max_records_per_partner()) *
                         kAssumedBytesPerRecord;
  EXPECT_LE(capped, volume / 2) << config->partners_size() << " partners x 2 directions x "
                                << retention.max_records_per_partner() << " records x "
                                << kAssumedBytesPerRecord << " bytes against a volume of " << volume
                                << " bytes";
  // The store's files on its data volume (the only writable place besides /tmp; checked below).
  EXPECT_EQ(config->replay().database_path(), "/var/lib/ess/replay.db");
  // TLS files where the config expects them.
  EXPECT_EQ(config->replay().tls().cert_file(), "/etc/ess/tls/tls.crt");
  EXPECT_EQ(config->replay().tls().ca_file(), "/etc/ess/tls/ca.crt");
}

// Each lane checks replay-svc's certificate against ca.crt of the Secret ess-replay-tls, which
// also holds the store's tls.key: a lane's volume projects ca.crt alone, so the key is written to
// no lane's node (a Secret volume without items puts every key of the Secret there).
TEST_P(EveryOverlayTest, TheLanesGetOnlyTheStoresCaNotItsKey) {
  Rendered r = Render(GetParam());
  ASSERT_EQ(r.error, "");
  int lanes = 0;
  for (const YAML::Node* w : Workloads(r)) {
    const std::string name = (*w)["metadata"]["name"].as<std::string>();
    if (name == "replay-svc") continue;
    ++lanes;
    bool mounted = false;
    for (const YAML::Node& v : (*w)["spec"]["template"]["spec"]["volumes"]) {
      if (!v["secret"] || v["secret"]["secretName"].as<std::string>() != "ess-replay-tls") continue;
      const YAML::Node items = v["secret"]["items"];
      ASSERT_TRUE(items.IsDefined() && items.IsSequence())
          << name << ": ess-replay-tls mounted without items";
      ASSERT_EQ(items.size(), 1u) << name;
      EXPECT_EQ(items[0]["key"].as<std::string>(), "ca.crt") << name;
      EXPECT_EQ(items[0]["path"].as<std::string>(), "ca.crt") << name;
      // Where the config's replay.tls.ca_file expects it.
      for (const YAML::Node& m : Container(*w)["volumeMounts"]) {
        if (m["name"].as<std::string>() != v["name"].as<std::string>()) continue;
        mounted = true;
        EXPECT_EQ(m["mountPath"].as<std::string>(), "/etc/ess/tls") << name;
        EXPECT_FALSE(m["subPath"].IsDefined()) << name;
      }
    }
    EXPECT_TRUE(mounted) << name << " mounts the store's CA";
  }
  EXPECT_EQ(lanes, 2);
}

// The restricted Pod Security Standard (non-root, no privilege escalation, every capability
// dropped, the runtime's seccomp profile) for every container, on a read-only root filesystem;
// what a service writes is on a writable volume: the store's SQLite files on its data volume,
// SQLite's temporary files on /tmp.
// The containers of `r`'s workloads, each checked.
int ExpectRestricted(const Rendered& r) {
  int containers = 0;
  for (const YAML::Node* w : Workloads(r)) {
    const YAML::Node pod = (*w)["spec"]["template"]["spec"];
    const std::string name = (*w)["metadata"]["name"].as<std::string>();
    EXPECT_TRUE(pod["securityContext"]["runAsNonRoot"].as<bool>(false)) << name;
    EXPECT_FALSE(pod["hostNetwork"].as<bool>(false)) << name;
    EXPECT_FALSE(pod["hostPID"].as<bool>(false)) << name;
    for (const YAML::Node& v : pod["volumes"]) EXPECT_FALSE(v["hostPath"].IsDefined()) << name;
    std::map<std::string, bool> volumes_writable;  // volume name -> may be written
    for (const YAML::Node& v : pod["volumes"]) {
      volumes_writable[v["name"].as<std::string>()] = !v["secret"] && !v["configMap"];
    }
    for (const YAML::Node& claim : (*w)["spec"]["volumeClaimTemplates"]) {
      volumes_writable[claim["metadata"]["name"].as<std::string>()] = true;
    }
    for (const char* list : {"initContainers", "containers"}) {
      for (const YAML::Node& c : pod[list]) {
        ++containers;
        const std::string where = absl::StrCat(name, "/", c["name"].as<std::string>());
        const YAML::Node sc = c["securityContext"];
        if (!sc.IsDefined() || !sc.IsMap()) {
          ADD_FAILURE() << where << " has no securityContext";
          continue;
        }
        EXPECT_FALSE(sc["allowPrivilegeEscalation"].as<bool>(true)) << where;
        EXPECT_FALSE(sc["privileged"].as<bool>(false)) << where;
        EXPECT_TRUE(sc["readOnlyRootFilesystem"].as<bool>(false)) << where;
        std::vector<std::string> dropped;
        for (const YAML::Node& d : sc["capabilities"]["drop"])
          dropped.push_back(d.as<std::string>());
        EXPECT_THAT(dropped, Contains("ALL")) << where;
        EXPECT_FALSE(sc["capabilities"]["add"].IsDefined()) << where;
        const YAML::Node seccomp =
            sc["seccompProfile"] ? sc["seccompProfile"] : pod["securityContext"]["seccompProfile"];
        EXPECT_EQ(seccomp["type"].as<std::string>(""), "RuntimeDefault") << where;
        if (sc["runAsNonRoot"]) {
          EXPECT_TRUE(sc["runAsNonRoot"].as<bool>()) << where;
        }
        if (sc["runAsUser"]) {
          EXPECT_NE(sc["runAsUser"].as<int>(), 0) << where;
        }

        std::set<std::string> writable;
        for (const YAML::Node& m : c["volumeMounts"]) {
          const std::string volume = m["name"].as<std::string>();
          if (volumes_writable[volume] && !m["readOnly"].as<bool>(false)) {
            writable.insert(m["mountPath"].as<std::string>());
          }
        }
        if ((name == "replay-svc" && (*w)["spec"]["volumeClaimTemplates"].IsDefined()) ||
            name == "replay-store-import") {
          EXPECT_THAT(writable, Contains("/var/lib/ess")) << where << ": database_path's folder";
          EXPECT_THAT(writable, Contains("/tmp")) << where << ": SQLite's temporary files";
        }
      }
    }
  }
  return containers;
}

TEST_P(EveryOverlayTest, EveryContainerIsRestrictedWithAReadOnlyRootFilesystem) {
  Rendered r = Render(GetParam());
  ASSERT_EQ(r.error, "");
  EXPECT_EQ(ExpectRestricted(r), 3);
}

INSTANTIATE_TEST_SUITE_P(Overlays, ManifestsTest, ::testing::Values("dev", "prod"));
INSTANTIATE_TEST_SUITE_P(Overlays, EveryOverlayTest,
                         ::testing::Values("dev", "prod", "shared-store"),
                         [](const ::testing::TestParamInfo<std::string>& overlay) {
                           std::string name = overlay.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// Where a pod on PostgreSQL finds the CA that the database server's certificate is checked
// against: the connection string's sslrootcert (deploy/k8s/README.md), since libpq's default,
// ~/.postgresql/root.crt, is in no pod.
constexpr char kPostgresCa[] = "/etc/ess/postgres/ca.crt";

// `workload` mounts ca.crt of the Secret ess-postgres-ca, read-only, at kPostgresCa; and the
// README's connection string names it.
void ExpectPostgresCa(const YAML::Node& workload) {
  const std::string name = workload["metadata"]["name"].as<std::string>();
  std::string volume;
  for (const YAML::Node& m : Container(workload)["volumeMounts"]) {
    if (m["mountPath"].as<std::string>() == "/etc/ess/postgres") {
      volume = m["name"].as<std::string>();
      EXPECT_TRUE(m["readOnly"].as<bool>(false)) << name;
    }
  }
  ASSERT_FALSE(volume.empty()) << name << " mounts no PostgreSQL CA at /etc/ess/postgres";
  bool found = false;
  for (const YAML::Node& v : workload["spec"]["template"]["spec"]["volumes"]) {
    if (v["name"].as<std::string>() != volume) continue;
    found = true;
    ASSERT_TRUE(v["secret"].IsDefined()) << name;
    EXPECT_EQ(v["secret"]["secretName"].as<std::string>(), "ess-postgres-ca") << name;
    ASSERT_EQ(v["secret"]["items"].size(), 1u) << name;
    EXPECT_EQ(v["secret"]["items"][0]["key"].as<std::string>(), "ca.crt") << name;
    EXPECT_EQ(absl::StrCat("/etc/ess/postgres/", v["secret"]["items"][0]["path"].as<std::string>()),
              kPostgresCa)
        << name;
  }
  EXPECT_TRUE(found) << name << ": no volume " << volume;
  std::ifstream in(absl::StrCat(std::getenv("ESS_SOURCE_DIR"), "/deploy/k8s/README.md"));
  const std::string readme((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_THAT(readme, ::testing::HasSubstr(absl::StrCat("sslrootcert=", kPostgresCa)));
}

// The store on PostgreSQL (overlays/shared-store): prod with replay-svc as several
// interchangeable replicas without a volume claim, the base's hub.yaml put on PostgreSQL by
// --postgres_dsn_env, whose variable comes from the Secret; the lanes exactly prod's.
TEST(SharedStoreManifestsTest, TheStoreRunsSeveralReplicasOverPostgres) {
  Rendered r = Render("shared-store");
  Rendered prod = Render("prod");
  ASSERT_EQ(r.error, "");
  ASSERT_EQ(prod.error, "");
  const YAML::Node* store = Find(r, "StatefulSet", "replay-svc");
  ASSERT_NE(store, nullptr);
  EXPECT_EQ((*store)["metadata"]["namespace"].as<std::string>(), "ess");
  EXPECT_GE((*store)["spec"]["replicas"].as<int>(), 2);
  EXPECT_EQ((*store)["spec"]["podManagementPolicy"].as<std::string>(), "Parallel");
  EXPECT_FALSE((*store)["spec"]["volumeClaimTemplates"].IsDefined());
  const YAML::Node c = Container(*store);
  std::vector<std::string> command;
  for (const YAML::Node& a : c["command"]) command.push_back(a.as<std::string>());
  EXPECT_EQ(command,
            (std::vector<std::string>{"/usr/local/bin/replay_svc", "--config", "/etc/ess/hub.yaml",
                                      "--postgres_dsn_env", "ESS_REPLAY_DSN"}));
  std::set<std::string> expected_env =
      EnvNames(Container(*Find(prod, "StatefulSet", "replay-svc")));
  expected_env.insert("ESS_REPLAY_DSN");
  EXPECT_EQ(EnvNames(c), expected_env);
  for (const YAML::Node& e : c["env"]) {
    if (e["name"].as<std::string>() != "ESS_REPLAY_DSN") continue;
    EXPECT_EQ(e["valueFrom"]["secretKeyRef"]["name"].as<std::string>(), "ess-secrets");
    EXPECT_EQ(e["valueFrom"]["secretKeyRef"]["key"].as<std::string>(), "replay-postgres-dsn");
  }
  std::set<std::string> mounts;
  for (const YAML::Node& m : c["volumeMounts"]) mounts.insert(m["mountPath"].as<std::string>());
  EXPECT_EQ(mounts, (std::set<std::string>{"/etc/ess/hub.yaml", "/etc/ess/tls", "/tmp",
                                           "/etc/ess/postgres"}));
  ExpectPostgresCa(*store);
  // Everything else is prod's, document for document.
  ASSERT_EQ(r.docs.size(), prod.docs.size());
  for (const YAML::Node& d : prod.docs) {
    const std::string kind = d["kind"].as<std::string>();
    const std::string name = d["metadata"]["name"].as<std::string>();
    if (kind == "StatefulSet") continue;
    const YAML::Node* same = Find(r, kind, name);
    ASSERT_NE(same, nullptr) << kind << " " << name;
    EXPECT_EQ(YAML::Dump(*same), YAML::Dump(d)) << kind << " " << name;
  }
}

// The one-off copy of prod's SQLite store into shared-store's database (jobs/import-sqlite-store):
// replay_svc --import_from on the volume prod's store StatefulSet made, writing where
// shared-store's replicas read, restricted as every pod is.
TEST(ImportJobManifestsTest, CopiesProdsStoreVolumeIntoSharedStoresDatabase) {
  Rendered job = RenderPath("jobs/import-sqlite-store");
  Rendered prod = Render("prod");
  Rendered shared = Render("shared-store");
  ASSERT_EQ(job.error, "");
  ASSERT_EQ(prod.error, "");
  ASSERT_EQ(shared.error, "");
  const YAML::Node* import = Find(job, "Job", "replay-store-import");
  ASSERT_NE(import, nullptr);
  EXPECT_EQ((*import)["metadata"]["namespace"].as<std::string>(), "ess");
  EXPECT_EQ(ExpectRestricted(job), 1);
  const YAML::Node c = Container(*import);
  std::vector<std::string> command;
  for (const YAML::Node& a : c["command"]) command.push_back(a.as<std::string>());

  // It reads the file prod's store writes: replay.database_path of the base's hub.yaml, on the
  // claim of the StatefulSet's first pod (<template>-<statefulset>-0), mounted where prod
  // mounts it.
  const YAML::Node* store = Find(prod, "StatefulSet", "replay-svc");
  ASSERT_NE(store, nullptr);
  const std::string template_name =
      (*store)["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].as<std::string>();
  std::string prod_mount;
  for (const YAML::Node& m : Container(*store)["volumeMounts"]) {
    if (m["name"].as<std::string>() == template_name) prod_mount = m["mountPath"].as<std::string>();
  }
  std::string database_path;
  for (const YAML::Node& d : prod.docs) {
    if (d["kind"].as<std::string>() == "ConfigMap") {
      database_path = YAML::Load(d["data"]["hub.yaml"].as<std::string>())["replay"]["database_path"]
                          .as<std::string>("");
    }
  }
  ASSERT_FALSE(prod_mount.empty());
  ASSERT_EQ(database_path, prod_mount + "/replay.db");
  EXPECT_EQ(command, (std::vector<std::string>{"/usr/local/bin/replay_svc", "--config",
                                               "/etc/ess/hub.yaml", "--postgres_dsn_env",
                                               "ESS_REPLAY_DSN", "--import_from", database_path}));
  const YAML::Node pod = (*import)["spec"]["template"]["spec"];
  EXPECT_EQ(pod["restartPolicy"].as<std::string>(), "Never");
  std::string claim, data_volume;
  for (const YAML::Node& v : pod["volumes"]) {
    if (v["persistentVolumeClaim"]) {
      claim = v["persistentVolumeClaim"]["claimName"].as<std::string>();
      data_volume = v["name"].as<std::string>();
    }
  }
  EXPECT_EQ(claim, absl::StrCat(template_name, "-replay-svc-0"));
  bool mounted = false;
  for (const YAML::Node& m : c["volumeMounts"]) {
    if (m["name"].as<std::string>() == data_volume) {
      mounted = m["mountPath"].as<std::string>() == prod_mount;
    }
  }
  EXPECT_TRUE(mounted) << "the claim is mounted at " << prod_mount;
  // The same database as shared-store's replicas, and no other secret.
  const YAML::Node* replicas = Find(shared, "StatefulSet", "replay-svc");
  ASSERT_NE(replicas, nullptr);
  std::string shared_key;
  for (const YAML::Node& e : Container(*replicas)["env"]) {
    if (e["name"].as<std::string>() == "ESS_REPLAY_DSN") {
      shared_key = e["valueFrom"]["secretKeyRef"]["key"].as<std::string>();
    }
  }
  EXPECT_EQ(EnvNames(c), (std::set<std::string>{"ESS_REPLAY_DSN"}));
  EXPECT_EQ(c["env"][0]["valueFrom"]["secretKeyRef"]["name"].as<std::string>(), "ess-secrets");
  EXPECT_EQ(c["env"][0]["valueFrom"]["secretKeyRef"]["key"].as<std::string>(), shared_key);
  ExpectPostgresCa(*import);
  // Its config loads.
  std::string hub_yaml;
  for (const YAML::Node& d : job.docs) {
    if (d["kind"].as<std::string>() == "ConfigMap")
      hub_yaml = d["data"]["hub.yaml"].as<std::string>();
  }
  absl::StatusOr<ess::v1::HubConfig> config = config::LoadString(
      hub_yaml, "hub.yaml", "/etc/ess", adapters::BuiltinRegistry().SettingsResolver());
  EXPECT_TRUE(config.ok()) << config.status();
}

}  // namespace
}  // namespace ess
