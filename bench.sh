#!/usr/bin/env bash
# The ESS benchmark in one command: installs what is missing (Debian packages only), builds in
# Release, and runs build/bin/ess_bench, which starts a private RabbitMQ node (state under
# .stack/bench), the replay store, the lanes and a partner on free loopback ports, runs every
# scenario bounded in count and time, prints one table, writes bench/results/<time>.json, and
# stops everything it started. See bench/README.md.
#
#   ./bench.sh                                  the quick run (about 5 minutes)
#   ./bench.sh --full                           the long run (300,000 events, 30 s timed runs)
#   ./bench.sh --events 50000 --scenarios outbound,inbound    (any ess_bench flag; --help)
set -euo pipefail
cd "$(dirname "$0")"

scripts/install-deps.sh
scripts/build.sh --target ess_bench bench_compare http_client_load wakeup_cost replay_svc \
  outbound_svc inbound_svc

# The Node.js baseline (--scenarios baseline) needs its two npm packages.
if command -v node >/dev/null && command -v npm >/dev/null; then
  bench/baseline/install.sh || echo "warning: the Node.js baseline is not installed" >&2
fi

# ess_bench stops its broker itself, also on Ctrl-C; this catches a crash of ess_bench.
cleanup() {
  scripts/rabbitmq.sh stop "$PWD/.stack/bench/rabbitmq" >/dev/null 2>&1 || true
}
trap cleanup EXIT
"${ESS_BUILD_DIR:-build}/bin/ess_bench" "$@"
