#!/usr/bin/env bash
# Installs what is missing, builds, starts the servers the tests need (a private RabbitMQ on a
# free loopback port), runs every test through ctest, and stops what it started.
#
#   ./test.sh                 every test
#   ./test.sh -L unit         only unit tests (any ctest arguments pass through)
set -euo pipefail
cd "$(dirname "$0")"

scripts/install-deps.sh
scripts/build.sh

STACK="$PWD/.stack/test"
cleanup() { scripts/rabbitmq.sh stop "$STACK" || true; }
trap cleanup EXIT
scripts/rabbitmq.sh start "$STACK"
# shellcheck disable=SC1091
source "$STACK/env"
export ESS_AMQP_HOST ESS_AMQP_PORT

ctest --test-dir build --output-on-failure --timeout 600 -j2 "$@"
