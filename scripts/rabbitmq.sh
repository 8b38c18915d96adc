#!/usr/bin/env bash
# Runs a private RabbitMQ node whose whole state lives under one directory.
#
#   scripts/rabbitmq.sh start  DIR   # start (or find running) the node of DIR; writes DIR/env
#   scripts/rabbitmq.sh stop   DIR   # stop only the node of DIR
#   scripts/rabbitmq.sh status DIR   # exit 0 if the node of DIR is running
#   scripts/rabbitmq.sh ctl    DIR ARGS...   # rabbitmqctl against the node of DIR
#
# The node never touches a broker or epmd on the default ports, and two directories never
# collide:
#  * node name ess-<hash of DIR>@localhost;
#  * AMQP listener on 127.0.0.1 only, on a free port chosen at start;
#  * its own Erlang distribution port and its own epmd (ERL_EPMD_PORT), both on loopback;
#  * config, data (mnesia), logs, pid file and an empty enabled-plugins file under DIR;
#  * Erlang schedulers not bound to CPUs (RABBITMQ_SCHEDULER_BIND_TYPE=u unless set): the node
#    shares its cores with the hub, the tests and the benchmark, and a scheduler pinned to a core
#    that another process holds makes every process queued on it wait (bench/README.md,
#    Profiling 18: webhook p99 at 3,000/s, median of eight runs, 110 ms bound, 31 ms unbound);
#  * ESS_RABBITMQ_ERL_ARGS, when set, appended to the node's Erlang arguments (experiments such
#    as "+S 1:1", Profiling 23).
# The system rabbitmq-server service is never started or stopped. Runs as root; the Erlang cookie
# is $HOME/.erlang.cookie (created, mode 400, if missing).
#
# DIR/env holds shell exports for clients and tools:
#   ESS_AMQP_HOST ESS_AMQP_PORT ESS_AMQP_URL ESS_RABBITMQ_NODE ESS_RABBITMQ_DIR
#   ESS_RABBITMQCTL (rabbitmqctl binary, to be used with -n "$ESS_RABBITMQ_NODE")
#   ERL_EPMD_PORT RABBITMQ_CONF_ENV_FILE (what rabbitmqctl needs to reach the node)
set -euo pipefail

readonly RABBITMQ_LIB_BIN=/usr/lib/rabbitmq/bin
readonly START_TIMEOUT_S=${ESS_RABBITMQ_START_TIMEOUT_S:-60}
readonly STOP_TIMEOUT_S=30
SELF=$(readlink -f "${BASH_SOURCE[0]}")
readonly SELF
# shellcheck source=scripts/lib.sh
. "$(dirname "$SELF")/lib.sh"

die() {
  echo "rabbitmq.sh: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 {start|stop|status} DIR | $0 ctl DIR RABBITMQCTL_ARGS..." >&2
  exit 2
}

ensure_cookie() {
  local cookie="${HOME:?HOME must be set}/.erlang.cookie"
  if [[ ! -s "$cookie" ]]; then
    (umask 077 && head -c 32 /dev/urandom | sha256sum | cut -c1-40 | tr -d '\n' >"$cookie")
  fi
  chmod 400 "$cookie"
}

# Sets every variable describing the node of $DIR. Ports come from DIR/ports when it exists.
load_layout() {
  DIR=$(mkdir -p "$1" && cd "$1" && pwd)
  local hash
  hash=$(printf '%s' "$DIR" | sha1sum | cut -c1-10)
  NODE="ess-${hash}@localhost"
  PID_FILE="$DIR/rabbitmq.pid"
  EPMD_PID_FILE="$DIR/epmd.pid"
  LOG_DIR="$DIR/log"
  AMQP_PORT="" DIST_PORT="" EPMD_PORT=""
  if [[ -s "$DIR/ports" ]]; then
    # shellcheck source=/dev/null
    . "$DIR/ports"
  fi
}

# Exports the environment rabbitmq-server and rabbitmqctl read, all pointing into $DIR.
export_node_env() {
  export RABBITMQ_NODENAME="$NODE"
  export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
  export RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config"
  export RABBITMQ_MNESIA_BASE="$DIR/mnesia"
  export RABBITMQ_LOG_BASE="$LOG_DIR"
  export RABBITMQ_PID_FILE="$PID_FILE"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
  export RABBITMQ_PLUGINS_EXPAND_DIR="$DIR/plugins-expand"
  export RABBITMQ_FEATURE_FLAGS_FILE="$DIR/feature_flags"
  export RABBITMQ_DIST_PORT="$DIST_PORT"
  export RABBITMQ_SCHEDULER_BIND_TYPE="${RABBITMQ_SCHEDULER_BIND_TYPE:-u}"
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} ${ESS_RABBITMQ_ERL_ARGS:-}"
  export ERL_EPMD_PORT="$EPMD_PORT"
  export ERL_EPMD_ADDRESS=127.0.0.1
}

ctl() {
  "$RABBITMQ_LIB_BIN/rabbitmqctl" -n "$NODE" "$@"
}

node_pid() {
  read_pid "$PID_FILE"
}

# True if the node of $DIR answers and its rabbit application runs.
node_running() {
  [[ -n "$EPMD_PORT" ]] || return 1
  pid_alive "$(node_pid)" || return 1
  export_node_env
  "$RABBITMQ_LIB_BIN/rabbitmq-diagnostics" -q -n "$NODE" check_running >/dev/null 2>&1
}

write_env() {
  local tmp="$DIR/env.tmp"
  cat >"$tmp" <<EOF
# Written by $SELF start $DIR
export ESS_AMQP_HOST=127.0.0.1
export ESS_AMQP_PORT=$AMQP_PORT
export ESS_AMQP_URL=amqp://guest:guest@127.0.0.1:$AMQP_PORT/
export ESS_RABBITMQ_NODE=$NODE
export ESS_RABBITMQ_DIR=$DIR
export ESS_RABBITMQCTL=$RABBITMQ_LIB_BIN/rabbitmqctl
export ERL_EPMD_PORT=$EPMD_PORT
export RABBITMQ_CONF_ENV_FILE=$DIR/rabbitmq-env.conf
EOF
  mv "$tmp" "$DIR/env"
}

print_ready() {
  echo "rabbitmq node $NODE running (pid $(node_pid)), log dir $LOG_DIR"
  echo "AMQP URL: amqp://guest:guest@127.0.0.1:$AMQP_PORT/"
  echo "env: source $DIR/env"
}

log_tail() {
  local f
  for f in "$LOG_DIR"/*.log; do
    [[ -f "$f" ]] || continue
    echo "---- tail of $f" >&2
    tail -n 40 "$f" >&2
  done
}

start_epmd() {
  local pid
  pid=$(read_pid "$EPMD_PID_FILE")
  if pid_alive "$pid"; then
    return 0
  fi
  # Not -daemon: running it in the background ourselves gives us its exact pid for stop.
  setsid epmd -port "$EPMD_PORT" -address 127.0.0.1 </dev/null >>"$LOG_DIR/epmd.log" 2>&1 &
  echo $! >"$EPMD_PID_FILE"
  local i
  for ((i = 0; i < 50; i++)); do
    port_in_use "$EPMD_PORT" && return 0
    pid_alive "$!" || break
    sleep 0.1
  done
  die "epmd did not start on port $EPMD_PORT (see $LOG_DIR/epmd.log)"
}

cmd_start() {
  load_layout "$1"
  ensure_cookie
  if node_running; then
    write_env
    print_ready
    return 0
  fi
  local stale
  stale=$(node_pid)
  if pid_alive "$stale"; then
    die "node $NODE has pid $stale but does not answer; run '$0 stop $DIR' first"
  fi

  mkdir -p "$LOG_DIR" "$DIR/mnesia"
  # Fresh ports each start: the old ones may have been taken meanwhile.
  AMQP_PORT=$(free_port) || die "no free port found"
  DIST_PORT=$(free_port "$AMQP_PORT") || die "no free port found"
  EPMD_PORT=$(free_port "$AMQP_PORT" "$DIST_PORT") || die "no free port found"
  printf 'AMQP_PORT=%s\nDIST_PORT=%s\nEPMD_PORT=%s\n' "$AMQP_PORT" "$DIST_PORT" "$EPMD_PORT" \
    >"$DIR/ports"

  echo "[]." >"$DIR/enabled_plugins"
  : >"$DIR/rabbitmq-env.conf"
  cat >"$DIR/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
log.console = false
log.file.level = info
EOF
  rm -f "$PID_FILE"
  export_node_env
  start_epmd

  echo "starting rabbitmq node $NODE (amqp 127.0.0.1:$AMQP_PORT, epmd $EPMD_PORT, dist $DIST_PORT)"
  (cd "$DIR" && "$RABBITMQ_LIB_BIN/rabbitmq-server" -detached \
    </dev/null >>"$LOG_DIR/startup.log" 2>&1) ||
    { log_tail; die "rabbitmq-server -detached failed (see $LOG_DIR/startup.log)"; }

  local deadline=$((SECONDS + START_TIMEOUT_S)) pid=""
  while ((SECONDS < deadline)); do
    pid=$(node_pid)
    if [[ -n "$pid" ]] && ! pid_alive "$pid"; then
      log_tail
      die "node $NODE (pid $pid) exited during start-up"
    fi
    # The listener opens late in the boot; probe it cheaply before asking the node itself.
    if [[ -n "$pid" ]] && port_in_use "$AMQP_PORT" &&
      ctl -q await_startup --timeout 10 >/dev/null 2>&1; then
      write_env
      print_ready
      return 0
    fi
    sleep 0.2
  done
  log_tail
  die "node $NODE not ready after ${START_TIMEOUT_S}s; stop it with '$0 stop $DIR'"
}

cmd_stop() {
  load_layout "$1"
  [[ -n "$EPMD_PORT" ]] || { echo "no node recorded in $DIR"; return 0; }
  export_node_env
  local pid
  pid=$(node_pid)
  if pid_alive "$pid"; then
    ctl -q stop >/dev/null 2>&1 || true
    if ! wait_exit "$pid" "$STOP_TIMEOUT_S"; then
      echo "node $NODE (pid $pid) did not stop; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      wait_exit "$pid" 5 || die "pid $pid survived SIGKILL"
    fi
  fi
  rm -f "$PID_FILE"
  local epmd
  epmd=$(read_pid "$EPMD_PID_FILE")
  # The pid file was written by start_epmd; make sure it is still our epmd before killing.
  if pid_alive "$epmd" && [[ "$(cat "/proc/$epmd/comm" 2>/dev/null)" == epmd ]]; then
    kill -TERM "$epmd" 2>/dev/null || true
    wait_exit "$epmd" 5 || kill -KILL "$epmd" 2>/dev/null || true
  fi
  rm -f "$EPMD_PID_FILE" "$DIR/env"
  echo "rabbitmq node $NODE stopped"
}

cmd_status() {
  load_layout "$1"
  if node_running; then
    echo "rabbitmq node $NODE running (pid $(node_pid)), amqp 127.0.0.1:$AMQP_PORT"
    return 0
  fi
  echo "rabbitmq node $NODE not running"
  return 1
}

cmd_ctl() {
  load_layout "$1"
  shift
  [[ -n "$EPMD_PORT" ]] || die "no node recorded in $DIR"
  export_node_env
  exec "$RABBITMQ_LIB_BIN/rabbitmqctl" -n "$NODE" "$@"
}

[[ $(id -u) == 0 ]] || die "run as root (the node and rabbitmqctl share root's Erlang cookie)"
[[ $# -ge 2 ]] || usage
case "$1" in
  start) cmd_start "$2" ;;
  stop) cmd_stop "$2" ;;
  status) cmd_status "$2" ;;
  ctl)
    shift
    cmd_ctl "$@"
    ;;
  *) usage ;;
esac
