#!/usr/bin/env bash
# Installs the Debian 12 packages ESS needs to build, test and run, and nothing else.
# Idempotent: packages already installed are left alone, and apt is not touched at all when
# nothing is missing. Needs root (or sudo) only when something must be installed.
#
# ESS runs only private RabbitMQ nodes, sshd servers and PostgreSQL servers of its own, on
# loopback (scripts/rabbitmq.sh, scripts/sshd.sh, scripts/postgres.sh). The system services that
# the packages rabbitmq-server, openssh-server and postgresql-15 bring (RabbitMQ on 0.0.0.0:5672,
# 25672 and epmd's 4369; sshd on :22; the cluster 15/main that postgresql-15 creates, on
# localhost:5432) are never started by this script: while it installs, a temporary
# /usr/sbin/policy-rc.d denies every service start (Debian's policy layer, which invoke-rc.d and
# deb-systemd-invoke obey), and on a host running systemd the services of the packages this run
# installed are then disabled at boot. Services of packages that were installed before are left
# as they are, running or not.
set -euo pipefail

PACKAGES=(
  # toolchain
  g++ cmake ninja-build ccache pkg-config git
  # libraries (the stack: gRPC + Protobuf, Abseil, librabbitmq-c, OpenSSL, GoogleTest)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  librabbitmq-dev libssl-dev libgtest-dev libgmock-dev
  # libraries chosen from Debian: HTTP client, SFTP client, HTTP server, store, config, JSON
  libcurl4-openssl-dev libssh2-1-dev libevent-dev libsqlite3-dev libyaml-cpp-dev rapidjson-dev
  # libraries of the SOAP and CSV adapters: XML with XPath, CSV parsing
  libxml2-dev libcsv-dev
  # metrics: Prometheus client (counters, text format, the /metrics server of outbound_svc)
  prometheus-cpp-dev
  # the services' malloc (CMake option ESS_MALLOC; bench/README.md, Profiling 22)
  libjemalloc-dev
  # servers the stack and the tests run on loopback
  rabbitmq-server openssh-server openssh-client
  # the store's shared backend: the PostgreSQL 15 server (the tests run a private one on
  # loopback, scripts/postgres.sh) and its client library libpq
  postgresql-15 libpq-dev
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

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# The packages whose systemd units this run disables once it has installed them, each with its
# units: the servers, erlang-base (pulled in by rabbitmq-server), whose epmd.socket listens on
# every interface at 4369, and postgresql-common (pulled in by postgresql-15), whose
# postgresql.service starts every cluster (postgresql@15-main.service, through its systemd
# generator); postgresql-15 itself has no unit. Only those not installed before this run count.
declare -A UNITS=(
  [rabbitmq-server]="rabbitmq-server.service"
  [openssh-server]="ssh.service"
  [erlang-base]="epmd.socket epmd.service"
  [postgresql-common]="postgresql.service"
)
absent_before=()
for p in "${!UNITS[@]}"; do
  installed "$p" || absent_before+=("$p")
done

# No service starts while apt installs: policy-rc.d exits 101 ("action forbidden"), so the
# packages' maintainer scripts skip starting their services and the install succeeds even when
# a port such as 5672 is taken. The file is made only if there is none (an existing one, e.g. a
# container image's, is the machine's policy and stays), and removed on any exit. A file left
# by a run of this script that was killed (it carries MARKER) counts as ours.
POLICY=/usr/sbin/policy-rc.d
MARKER="made by ESS scripts/install-deps.sh"
own_policy=0
remove_policy() {
  if [ $own_policy -eq 1 ]; then
    $SUDO rm -f "$POLICY" || echo "install-deps: could not remove $POLICY; remove it by hand" >&2
  fi
}
trap remove_policy EXIT
trap 'exit 130' INT TERM HUP
if [ -e "$POLICY" ] && grep -qF "$MARKER" "$POLICY" 2>/dev/null; then
  own_policy=1
elif [ ! -e "$POLICY" ]; then
  own_policy=1
  printf '#!/bin/sh\n# %s while it installs packages: no service starts.\nexit 101\n' "$MARKER" |
    $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
remove_policy
own_policy=0

# Installing enabled the new services at boot (the packages' postinst does); undo that where
# systemd runs. Nothing is stopped: nothing was started.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  for p in "${absent_before[@]}"; do
    installed "$p" || continue
    for unit in ${UNITS[$p]}; do
      echo "install-deps: $p was installed by this run: systemctl disable $unit"
      $SUDO systemctl disable --quiet "$unit" ||
        echo "install-deps: warning: systemctl disable $unit failed" >&2
    done
  done
fi
echo "install-deps: done"
