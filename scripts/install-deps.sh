#!/usr/bin/env bash
# Installs the Debian 12 packages ESS needs to build, test and run, and nothing else.
# Idempotent: packages already installed are left alone, and apt is not touched at all when
# nothing is missing. Needs root (or sudo) only when something must be installed.
set -euo pipefail

PACKAGES=(
  # toolchain
  g++ cmake ninja-build ccache pkg-config git
  # libraries (the stack: gRPC + Protobuf, Abseil, librabbitmq-c, OpenSSL, GoogleTest)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  librabbitmq-dev libssl-dev libgtest-dev libgmock-dev
  # libraries chosen from Debian: HTTP client, HTTP server, store, config, JSON
  libcurl4-openssl-dev libevent-dev libsqlite3-dev libyaml-cpp-dev rapidjson-dev
  # libraries of the SOAP and CSV adapters: XML with XPath, CSV parsing
  libxml2-dev libcsv-dev
  # metrics: Prometheus client (counters, text format, the /metrics server of outbound_svc)
  prometheus-cpp-dev
  # the services' malloc (CMake option ESS_MALLOC; bench/README.md, Profiling 22)
  libjemalloc-dev
  # servers the stack and the tests run on loopback
  rabbitmq-server openssh-server openssh-client
  # tools the scripts use (openssl: the tests make their TLS certificates at test time)
  iproute2 procps ca-certificates openssl
  # the benchmark's HTTP load generator (./bench.sh)
  wrk
  # the benchmark's Python baseline: the original design's lanes (bench/baseline, --scenarios
  # baseline). The Node.js baseline uses the machine's node and npm when there are any.
  python3 python3-pika python3-requests python3-fastapi python3-uvicorn
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# kubectl renders the Kubernetes manifests in the tests (kubectl kustomize, offline). Any kubectl
# will do; without one, Debian's kubernetes-client provides it.
if ! command -v kubectl >/dev/null 2>&1; then
  missing+=(kubernetes-client)
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The packaged RabbitMQ and sshd services are not needed (ESS runs its own on loopback ports);
# their install scripts may try to start them, which is harmless.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
