#!/usr/bin/env bash
# Installs what is missing, builds, starts the servers the tests need (a private RabbitMQ node,
# a private OpenSSH sshd and a private PostgreSQL 15 server, each on a free loopback port with
# state under .stack/test), runs every test through ctest, and stops what it started.
#
#   ./test.sh                 every test
#   ./test.sh -L unit         only unit tests (any ctest arguments pass through)
#
# ESS_BUILD_DIR=DIR builds into and tests DIR instead of build/ (as scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")"

scripts/install-deps.sh
scripts/build.sh
# The benchmark's Node.js baseline lanes (bench_smoke_test runs them) need two npm packages.
# Without node and npm, or without the npm registry, that test says so and skips.
if command -v node >/dev/null && command -v npm >/dev/null; then
  bench/baseline/install.sh || echo "warning: bench/baseline/install.sh failed; the Node.js baseline test will skip" >&2
fi

STACK="$PWD/.stack/test"
cleanup() {
  scripts/postgres.sh stop "$STACK/postgres" || true
  scripts/sshd.sh stop "$STACK/sshd" || true
  scripts/rabbitmq.sh stop "$STACK/rabbitmq" || true
}
trap cleanup EXIT
scripts/rabbitmq.sh start "$STACK/rabbitmq"
scripts/sshd.sh start "$STACK/sshd"
scripts/postgres.sh start "$STACK/postgres"
# Each writes shell exports (ESS_AMQP_*, ESS_RABBITMQ_*, ESS_SFTP_*, ESS_POSTGRES_*) that the
# tests read.
# shellcheck disable=SC1091
source "$STACK/rabbitmq/env"
# shellcheck disable=SC1091
source "$STACK/sshd/env"
# shellcheck disable=SC1091
source "$STACK/postgres/env"

ctest --test-dir "${ESS_BUILD_DIR:-build}" --output-on-failure --timeout 600 -j2 "$@"
