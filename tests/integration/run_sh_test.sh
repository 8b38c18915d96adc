#!/usr/bin/env bash
# The README's first Quick start command, as a user runs it: `./run.sh --once`, on the binaries
# of this build tree (ESS_BUILD_DIR; ctest sets it) without installing or building again
# (ESS_RUN_SKIP_SETUP=1: test.sh has done both), with its stack (a private RabbitMQ node, the
# replay store, the lanes, the demo partner, the subscribers) in a temporary folder, so a
# developer's own ./run.sh (.stack/run) is not touched. Passes if run.sh exits 0, its output
# shows each step of the walk-through, and nothing it started is left running.
#
#   ESS_SOURCE_DIR=/work/main ESS_BUILD_DIR=/tmp/build tests/integration/run_sh_test.sh
set -uo pipefail

SOURCE_DIR=${ESS_SOURCE_DIR:?ESS_SOURCE_DIR is not set (ctest sets it)}
: "${ESS_BUILD_DIR:?ESS_BUILD_DIR is not set (ctest sets it)}"
# run.sh's own bound: below the ctest TIMEOUT, so that its cleanup (kill what it started, stop
# its RabbitMQ node) runs on SIGTERM and timeout's SIGKILL comes before ctest's.
RUN_TIMEOUT_S=${ESS_RUN_SH_TEST_TIMEOUT_S:-200}

STACK=$(mktemp -d /tmp/ess-run-sh-test.XXXXXX)
OUT="$STACK/run.sh.out"
FAILED=0
fail() {
  echo "FAIL: $*" >&2
  FAILED=1
}

# Processes whose command line names this test's stack folder: the services (--config
# $STACK/hub.yaml) and the RabbitMQ node (its data under $STACK/rabbitmq).
leftovers() {
  local pid
  for pid in $(pgrep -f -- "$STACK/" || true); do
    [ "$pid" != "$$" ] && echo "$pid"
  done
}

finish() {
  # A last resort if run.sh itself was killed: stop its node, then whatever else is left.
  "$SOURCE_DIR/scripts/rabbitmq.sh" stop "$STACK/stack/rabbitmq" >/dev/null 2>&1 || true
  local pid
  for pid in $(leftovers); do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$STACK"
}
trap finish EXIT

echo "run_sh_test: ./run.sh --once with ESS_RUN_STACK_DIR=$STACK/stack ESS_BUILD_DIR=$ESS_BUILD_DIR"
ESS_RUN_SKIP_SETUP=1 ESS_RUN_STACK_DIR="$STACK/stack" ESS_BUILD_DIR="$ESS_BUILD_DIR" \
  timeout -k 20 "$RUN_TIMEOUT_S" "$SOURCE_DIR/run.sh" --once >"$OUT" 2>&1
RC=$?
cat "$OUT"
echo "run_sh_test: run.sh exited $RC"
if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then
  fail "./run.sh --once did not finish within ${RUN_TIMEOUT_S} s (exit $RC)"
elif [ "$RC" -ne 0 ]; then
  fail "./run.sh --once exited $RC"
fi

# expect DESCRIPTION EXTENDED-REGEX: the output has a line matching it.
expect() {
  grep -Eq -- "$2" "$OUT" || fail "$1: no line matching /$2/ in the output"
}
# Never the setup steps: the test runs the tree as built.
if grep -q '^install-deps:' "$OUT"; then fail "run.sh ran scripts/install-deps.sh"; fi
expect "the private broker" "== starting a private RabbitMQ"
expect "the event published" '^published cid=VIS-77 to queue visit_updates'
expect "the partner got VIS-77" 'svc=demo_partner cid=VIS-77 msg="slot received"'
expect "the outbound lane delivered it" 'svc=outbound_svc cid=VIS-77 msg=delivered'
expect "the inbound lane published the signed callback" 'svc=inbound_svc cid=VIS-77 msg=published'
expect "the partner's callback answered" 'svc=demo_partner cid=VIS-77 msg="callback answered" status=200'
expect "the subscriber saw SlotConfirmed" '^type=SlotConfirmed cid=VIS-77 '
expect "the store shows VIS-77 confirmed" '^stage +confirmed'
expect "the forged callback refused" '^HTTP/1.1 401'
expect "ops replayed it" '^\(replayed 1, skipped 0, failed 0\)'
[ "$(grep -c '^type=SlotConfirmed cid=VIS-77 ' "$OUT")" -eq 2 ] ||
  fail "not two SlotConfirmed lines (the subscriber's, then the late subscriber's replayed one)"
expect "the outbound lane's metrics" '^ess_outbound_messages_total\{.*outcome="delivered"\} 1$'
expect "the verdict" '== OK: VIS-77 was pushed, delivered, confirmed \(by a signed callback\) and replayed'
if grep -q 'FAILED' "$OUT"; then fail "the output reports a failure"; fi

# run.sh's cleanup stopped everything it started: its broker node and every process.
if "$SOURCE_DIR/scripts/rabbitmq.sh" status "$STACK/stack/rabbitmq" >/dev/null 2>&1; then
  fail "run.sh left its RabbitMQ node running"
fi
left=$(leftovers)
if [ -n "$left" ]; then
  fail "run.sh left processes running:"
  ps -o pid,args -p "$(echo "$left" | paste -sd, -)" >&2 || true
fi

if [ "$FAILED" -ne 0 ]; then
  echo "run_sh_test: FAILED; the stack's logs:" >&2
  for f in "$STACK"/stack/*.log; do
    [ -f "$f" ] && { echo "--- $f" >&2; tail -n 40 "$f" >&2; }
  done
  exit 1
fi
echo "run_sh_test: OK"
