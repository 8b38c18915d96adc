#!/usr/bin/env bash
# Installs what is missing, builds in Release, starts the local stack (a private RabbitMQ, the
# replay store, both lanes, the demo partner and a subscriber) and walks the visit-booking flow:
#
#   VisitScheduleUpdated -> visit_updates -> outbound_svc -> partner POST /api/slots
#   partner POST /webhook/prison (signed) -> inbound_svc -> events exchange -> SlotConfirmed
#   a forged, unsigned callback -> 401
#   essctl replay (ops token) -> replay_svc -> events exchange -> a late subscriber
#
#   ./run.sh          walk the flow, then keep the stack running until Ctrl-C
#   ./run.sh --once   walk the flow, stop everything, exit 0 only if SlotConfirmed arrived, the
#                     forged callback was refused and the replay reached the late subscriber
#
# Environment (all optional):
#   ESS_BUILD_DIR=DIR         the build tree, as for scripts/build.sh (default build); the
#                             binaries run from DIR/bin
#   ESS_RUN_STACK_DIR=DIR     where the stack keeps its state and logs (default .stack/run): the
#                             private RabbitMQ node, replay.db, *.log, hub.yaml, ops.token
#   ESS_RUN_SKIP_SETUP=1      skip scripts/install-deps.sh and scripts/build.sh (for a tree that
#                             test.sh or the caller has already installed and built; the
#                             run_sh_test ctest runs ./run.sh --once this way)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
ONCE=0
[ "${1:-}" = "--once" ] && ONCE=1

if [ "${ESS_RUN_SKIP_SETUP:-0}" != 1 ]; then
  scripts/install-deps.sh
  scripts/build.sh
fi
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

BUILD_DIR=${ESS_BUILD_DIR:-build}
[[ $BUILD_DIR == /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"  # relative to the checkout, as build.sh
BIN="$BUILD_DIR/bin"
STACK=${ESS_RUN_STACK_DIR:-$ROOT/.stack/run}
mkdir -p "$STACK"
STACK=$(cd "$STACK" && pwd)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  scripts/rabbitmq.sh stop "$STACK/rabbitmq" >/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting a private RabbitMQ"
scripts/rabbitmq.sh start "$STACK/rabbitmq"
# shellcheck disable=SC1091
source "$STACK/rabbitmq/env"

REPLAY_PORT=$(free_port)
INBOUND_PORT=$(free_port "$REPLAY_PORT")
PARTNER_PORT=$(free_port "$REPLAY_PORT" "$INBOUND_PORT")
METRICS_PORT=$(free_port "$REPLAY_PORT" "$INBOUND_PORT" "$PARTNER_PORT")
sed -e "s/@AMQP_PORT@/$ESS_AMQP_PORT/" -e "s/@REPLAY_PORT@/$REPLAY_PORT/" \
    -e "s/@INBOUND_PORT@/$INBOUND_PORT/" -e "s/@PARTNER_PORT@/$PARTNER_PORT/" \
    -e "s/@METRICS_PORT@/$METRICS_PORT/" config/demo.yaml > "$STACK/hub.yaml"
rm -f "$STACK"/*.log "$STACK"/replay.db*  # each walk-through starts from an empty store
# The partner signs its callbacks with a secret made for this run (Standard Webhooks); both
# inbound_svc and the demo partner read it from the environment, never from a file.
ESS_DEMO_WEBHOOK_SECRETS="whsec_$(head -c 32 /dev/urandom | base64 -w0)"
export ESS_DEMO_WEBHOOK_SECRETS
# ReplayService callers (replay.auth): the lanes and ops, each with a token made for this run;
# essctl sends $ESS_REPLAY_TOKEN, here the ops one.
ESS_DEMO_REPLAY_LANE_TOKEN=$(head -c 24 /dev/urandom | base64 -w0)
ESS_DEMO_REPLAY_OPS_TOKEN=$(head -c 24 /dev/urandom | base64 -w0)
export ESS_DEMO_REPLAY_LANE_TOKEN ESS_DEMO_REPLAY_OPS_TOKEN
export ESS_REPLAY_TOKEN=$ESS_DEMO_REPLAY_OPS_TOKEN
(umask 077 && printf '%s' "$ESS_REPLAY_TOKEN" > "$STACK/ops.token")  # for essctl in another shell
AMQP="127.0.0.1:$ESS_AMQP_PORT"
ESSCTL=("$BIN/essctl" --addr "127.0.0.1:$REPLAY_PORT")
ESSBUS=("$BIN/essbus" --amqp "$AMQP")

start() {  # start NAME COMMAND...: runs it in the background, logging to $STACK/NAME.log
  local name=$1
  shift
  "$@" >"$STACK/$name.log" 2>&1 &
  PIDS+=($!)
}

# wait_subscribed NAME PID: waits until the subscriber NAME (essbus subscribe, PID) has bound its
# queue to the exchange, which it says on stderr ("subscribed exchange=..."), so that nothing
# published after this is missed. Fails the run if it exits first or takes more than 15 s.
wait_subscribed() {
  local name=$1 pid=$2 deadline=$((SECONDS + 15))
  until grep -q '^subscribed exchange=' "$STACK/$name.log" 2>/dev/null; do
    if ! pid_alive "$pid" || [ $SECONDS -ge $deadline ]; then
      grep -q '^subscribed exchange=' "$STACK/$name.log" 2>/dev/null && return 0
      say "FAILED: essbus subscribe ($name) exited or took over 15 s without binding its queue; its log:"
      cat "$STACK/$name.log"
      exit 1
    fi
    sleep 0.05
  done
}

say "starting replay_svc, inbound_svc, outbound_svc and the demo partner (config $STACK/hub.yaml)"
start replay_svc "$BIN/replay_svc" --config "$STACK/hub.yaml"
wait_for 20 "${ESSCTL[@]}" stats || { cat "$STACK/replay_svc.log"; exit 1; }
start inbound_svc "$BIN/inbound_svc" --config "$STACK/hub.yaml"
start demo_partner "$BIN/demo_partner" --listen "127.0.0.1:$PARTNER_PORT" \
  --callback_url "http://127.0.0.1:$INBOUND_PORT/webhook/prison" \
  --secret_env ESS_DEMO_WEBHOOK_SECRETS
start outbound_svc "$BIN/outbound_svc" --config "$STACK/hub.yaml"
wait_for 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$INBOUND_PORT" || { cat "$STACK/inbound_svc.log"; exit 1; }
wait_for 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PARTNER_PORT" || { cat "$STACK/demo_partner.log"; exit 1; }

say "a subscriber listens on the events exchange"
start subscriber "${ESSBUS[@]}" subscribe --exchange events --count 1 --timeout_s 30
SUB_PID=${PIDS[-1]}
wait_subscribed subscriber "$SUB_PID"

EVENT='{"type":"VisitScheduleUpdated","id":"VIS-77","inmateId":"A123","slotUtc":"2026-12-01T15:00:00Z"}'
say "the scheduling service publishes VisitScheduleUpdated to visit_updates"
echo "$EVENT"
"${ESSBUS[@]}" publish --queue visit_updates "$EVENT"

if wait "$SUB_PID"; then RESULT=0; else RESULT=1; fi
# The inbound lane answers the partner (and logs) just after the broker confirmed the event.
wait_for 10 bash -c "'${ESSCTL[0]}' ${ESSCTL[*]:1} get --correlation VIS-77 | grep -q 'stage *confirmed'" || true

say "every hop of correlation id VIS-77, in order"
grep -h "cid=VIS-77" "$STACK"/replay_svc.log "$STACK"/outbound_svc.log "$STACK"/demo_partner.log \
  "$STACK"/inbound_svc.log | sort
say "what the subscriber saw"
cat "$STACK/subscriber.log"
say "what the replay store holds for VIS-77 (essctl get --correlation VIS-77)"
"${ESSCTL[@]}" get --correlation VIS-77 || true

say "a forged callback (not signed by the partner) is refused"
FORGED='{"id":"VIS-77","status":"cancelled"}'
exec 3<>"/dev/tcp/127.0.0.1/$INBOUND_PORT"
printf 'POST /webhook/prison HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
  "${#FORGED}" "$FORGED" >&3
FORGED_ANSWER=$(cat <&3)
exec 3<&-
echo "$FORGED_ANSWER" | sed -n '1p;$p'
case "$FORGED_ANSWER" in
  "HTTP/1.1 401"*) ;;
  *) say "FAILED: the forged callback was not refused"; RESULT=1 ;;
esac

say "a billing service subscribes late; ops replay VIS-77's SlotConfirmed to it from the store"
start billing "${ESSBUS[@]}" subscribe --exchange events --count 1 --timeout_s 30
BILLING_PID=${PIDS[-1]}
wait_subscribed billing "$BILLING_PID"
"${ESSCTL[@]}" replay --correlation VIS-77 --direction inbound \
  --reason "billing subscribed after VIS-77 was confirmed" --requested_by "$(id -un)@run.sh" ||
  RESULT=1
if wait "$BILLING_PID"; then cat "$STACK/billing.log"; else
  say "FAILED: the replayed SlotConfirmed did not reach the late subscriber"
  RESULT=1
fi

say "the outbound lane's metrics (GET /metrics on 127.0.0.1:$METRICS_PORT)"
exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT"
printf 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
grep -E '^ess_outbound_(messages_total|success_ratio)' <&3 || true
exec 3<&-

if [ $RESULT -ne 0 ]; then
  say "FAILED: SlotConfirmed did not arrive or was not replayed, or a forged callback was taken; logs are in $STACK"
  exit 1
fi
say "OK: VIS-77 was pushed, delivered, confirmed (by a signed callback) and replayed"

if [ $ONCE -eq 1 ]; then
  exit 0
fi

cat <<MSG

The stack keeps running until Ctrl-C. Logs: $STACK/*.log
  Send another event:
    ${ESSBUS[*]} publish --queue visit_updates '{"type":"VisitScheduleUpdated","id":"VIS-78","inmateId":"B456","slotUtc":"2026-12-02T10:00:00Z"}'
  Watch the events exchange:
    ${ESSBUS[*]} subscribe --exchange events --count 10 --timeout_s 60
  Look at the replay store (essctl sends \$ESS_REPLAY_TOKEN, this run's ops token):
    export ESS_REPLAY_TOKEN=\$(cat $STACK/ops.token)
    ${ESSCTL[*]} get --correlation VIS-78
    ${ESSCTL[*]} list --partner prison_calendar
    ${ESSCTL[*]} stats
  The outbound lane's Prometheus metrics:
    exec 3<>/dev/tcp/127.0.0.1/$METRICS_PORT; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3
  Replay what a partner missed:
    ${ESSCTL[*]} replay --partner prison_calendar --status dead --reason "partner was down" --dry_run
MSG
wait "${PIDS[0]}"
