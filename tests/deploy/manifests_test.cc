// The Kubernetes manifests (deploy/k8s) as kubectl renders them, per overlay: each lane its own
// Deployment with its own autoscaler, the store a single replica with a volume, and every
// setting the hub config relies on (its secrets' variables, its ports, its addresses) present in
// the pods that need it and absent from those that do not. The ConfigMap's hub.yaml goes
// through the real config loader.
#include <stdio.h>
#include <sys/wait.h>

#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>

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

// `kubectl kustomize deploy/k8s/overlays/NAME`, parsed.
Rendered Render(const std::string& overlay) {
  const char* source = std::getenv("ESS_SOURCE_DIR");
  Rendered r;
  if (source == nullptr) {
    r.error = "ESS_SOURCE_DIR is not set (ctest sets it)";
    return r;
  }
  const std::string cmd = absl::StrCat("kubectl kustomize '", source, "/deploy/k8s/overlays/",
                                       overlay, "' 2>/dev/null");
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

class ManifestsTest : public ::testing::TestWithParam<std::string> {};

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
    EXPECT_EQ((*deployment)["spec"]["replicas"].as<int>(), lane_min) << lane;
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
  const YAML::Node* store = Find(r, "StatefulSet", "replay-svc");
  ASSERT_NE(store, nullptr);
  EXPECT_EQ((*store)["spec"]["replicas"].as<int>(), 1);  // one SQLite writer
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
  EXPECT_EQ(inbound["readinessProbe"]["httpGet"]["path"].as<std::string>(), "/healthz");
  // Metrics: outbound_svc's and replay_svc's own ports, inbound_svc's webhook port.
  EXPECT_EQ(config->replay().metrics_listen(), "0.0.0.0:9465");
  EXPECT_EQ(Container(*Find(r, "StatefulSet", "replay-svc"))["ports"][1]["containerPort"].as<int>(),
            9465);
  EXPECT_EQ(config->outbound().metrics_listen(), "0.0.0.0:9464");
  const YAML::Node outbound = Container(*Find(r, "Deployment", "outbound-svc"));
  EXPECT_EQ(outbound["ports"][0]["containerPort"].as<int>(), 9464);
  EXPECT_EQ(outbound["livenessProbe"]["httpGet"]["path"].as<std::string>(), "/metrics");
  // The store's volume is bounded by retention.
  EXPECT_GE(config->replay().retention().max_age_seconds(),
            config->inbound().dedupe_window_seconds());
  EXPECT_GT(config->replay().retention().max_age_seconds(), 0u);
  // TLS files where the config expects them.
  EXPECT_EQ(config->replay().tls().cert_file(), "/etc/ess/tls/tls.crt");
  EXPECT_EQ(config->replay().tls().ca_file(), "/etc/ess/tls/ca.crt");
}

INSTANTIATE_TEST_SUITE_P(Overlays, ManifestsTest, ::testing::Values("dev", "prod"));

}  // namespace
}  // namespace ess
