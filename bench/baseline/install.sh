#!/usr/bin/env bash
# Installs the Node.js baseline lanes' two packages (amqplib, undici) from the npm registry, at
# the versions package-lock.json pins, into bench/baseline/node_modules. Needs node and npm
# (Debian: apt-get install nodejs npm). ess_bench --scenarios baseline runs them.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "bench/baseline: node and npm are needed (apt-get install nodejs npm)" >&2
  exit 1
fi
if [[ -d node_modules/amqplib && -d node_modules/undici ]]; then
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
