#!/usr/bin/env bash
# Runs a private PostgreSQL 15 server whose whole state lives under one directory.
#
#   scripts/postgres.sh start  DIR   # start (or find running) the server of DIR; writes DIR/env
#   scripts/postgres.sh stop   DIR   # stop only the server of DIR
#   scripts/postgres.sh status DIR   # exit 0 if the server of DIR is running
#
# The server never touches the system cluster (/var/lib/postgresql, port 5432) or its service:
#  * it listens on 127.0.0.1 only, on a free port chosen at start, and on a unix socket in a
#    folder of its own;
#  * trust authentication, from loopback and the socket only (pg_hba.conf has nothing else);
#    superuser postgres, database ess (created at the first start), UTF8, locale C.UTF-8;
#  * a throwaway test cluster: fsync, synchronous_commit and full_page_writes are off, so a crash
#    of the machine may lose or corrupt it (never use these settings for data that matters);
#  * PostgreSQL refuses to run as root: run by root, the cluster belongs to the postgres OS user
#    and initdb and pg_ctl run as that user (runuser); run by another user, it is that user's;
#  * the folder that user owns is DIR/pg (data/, postgres.log, run/ for the socket); when that
#    user cannot reach DIR (a parent such as /root is closed to it), it is a folder made under
#    /tmp instead, recorded in DIR/pgroot (remove it with DIR);
#  * a unix socket path holds at most 107 bytes: when DIR/pg/run is too long (or has characters
#    a socket list cannot hold), the socket folder is made under /tmp, recorded in
#    DIR/socket_dir, and removed at stop.
# stop is pg_ctl stop -m fast on the cluster's own data directory; nothing is killed by name.
#
# DIR/env holds shell exports for clients and tests:
#   ESS_POSTGRES_HOST ESS_POSTGRES_PORT ESS_POSTGRES_DB ESS_POSTGRES_USER
#   ESS_POSTGRES_DSN (libpq key=value: host=127.0.0.1 port=PORT dbname=ess user=postgres)
#   ESS_POSTGRES_SOCKET_DIR ESS_POSTGRES_DIR
set -euo pipefail

readonly PG_BIN=/usr/lib/postgresql/15/bin
readonly START_TIMEOUT_S=${ESS_POSTGRES_START_TIMEOUT_S:-30}
readonly STOP_TIMEOUT_S=20
readonly DB_NAME=ess
readonly DB_USER=postgres
# sizeof(sun_path) is 108: the socket's path, "<folder>/.s.PGSQL.<port>", holds at most 107
# bytes, so the folder at most 107 - 15 (the length of "/.s.PGSQL.65535").
readonly SOCKET_DIR_MAX=92
SELF=$(readlink -f "${BASH_SOURCE[0]}")
readonly SELF
# shellcheck source=scripts/lib.sh
. "$(dirname "$SELF")/lib.sh"

die() {
  echo "postgres.sh: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 {start|stop|status} DIR" >&2
  exit 2
}

# The OS user the cluster runs as: postgres for root, else the current user.
if [[ $(id -u) == 0 ]]; then
  PG_USER=postgres
else
  PG_USER=$(id -un)
fi
readonly PG_USER

# Runs a command as $PG_USER, from / (the caller's directory, /root say, may be closed to it).
as_pg() {
  if [[ $(id -u) == 0 ]]; then
    (cd / && runuser -u "$PG_USER" -- "$@")
  else
    (cd / && "$@")
  fi
}

# Sets every variable describing the server of $DIR. The port comes from DIR/port, the folders
# from DIR/pgroot and DIR/socket_dir when those exist.
load_layout() {
  DIR=$(mkdir -p "$1" && cd "$1" && pwd)
  PG_ROOT="$DIR/pg"
  if [[ -s "$DIR/pgroot" ]]; then PG_ROOT=$(<"$DIR/pgroot"); fi
  DATA_DIR="$PG_ROOT/data"
  LOG_FILE="$PG_ROOT/postgres.log"
  SOCKET_DIR="$PG_ROOT/run"
  if [[ -s "$DIR/socket_dir" ]]; then SOCKET_DIR=$(<"$DIR/socket_dir"); fi
  PORT=""
  if [[ -s "$DIR/port" ]]; then PORT=$(tr -dc '0-9' <"$DIR/port"); fi
}

# The postmaster's pid: the first line of postmaster.pid, or nothing.
postmaster_pid() {
  local f="$DATA_DIR/postmaster.pid"
  if [[ -s "$f" ]]; then head -n 1 "$f" | tr -dc '0-9'; fi
}

# True if pid $1 is a postmaster of the data directory of $DIR (the postmaster works in its data
# directory), not any other process that may have reused the pid.
is_our_postgres() {
  pid_alive "$1" || return 1
  [[ "$(cat "/proc/$1/comm" 2>/dev/null)" == postgres ]] || return 1
  [[ "$(readlink "/proc/$1/cwd" 2>/dev/null)" == "$(readlink -f "$DATA_DIR")" ]]
}

# True once pid $1 is no postmaster of $DIR any more. Not pid_alive: an exited postmaster stays a
# zombie until the init process reaps it (pg_ctl is not its parent), which kill -0 still sees.
postgres_gone() {
  ! is_our_postgres "$1"
}

# True if pid $1 is a zombie: exited, not reaped yet.
is_zombie() {
  grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# True if the server of $DIR runs, on the port DIR/port names, and accepts connections.
running() {
  [[ -n "$PORT" ]] || return 1
  is_our_postgres "$(postmaster_pid)" || return 1
  # postmaster.pid, line 4: the port the server listens on.
  [[ "$(sed -n 4p "$DATA_DIR/postmaster.pid" 2>/dev/null)" == "$PORT" ]] || return 1
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U "$DB_USER" -d postgres -t 5
}

# Makes a folder owned by $PG_USER (mktemp) under /tmp: a short path every user can reach.
make_tmp_folder() {
  local d
  d=$(mktemp -d "/tmp/$1.XXXXXX") || die "mktemp -d /tmp/$1.XXXXXX failed"
  [[ $(id -u) == 0 ]] && chown "$PG_USER:" "$d"
  chmod 755 "$d"
  echo "$d"
}

# Makes the folder $PG_USER owns and the socket folder, choosing where (see the header).
ensure_folders() {
  if [[ ! -d "$PG_ROOT" ]]; then
    rm -f "$DIR/pgroot"
    PG_ROOT="$DIR/pg"
    mkdir -p "$PG_ROOT"
    [[ $(id -u) == 0 ]] && chown "$PG_USER:" "$PG_ROOT"
    chmod 755 "$PG_ROOT"
    if ! as_pg test -w "$PG_ROOT"; then
      rmdir "$PG_ROOT"
      PG_ROOT=$(make_tmp_folder ess-postgres)
      echo "$PG_USER cannot reach $DIR; cluster folder $PG_ROOT (recorded in $DIR/pgroot)" >&2
      echo "$PG_ROOT" >"$DIR/pgroot"
    fi
  fi
  as_pg test -w "$PG_ROOT" || die "$PG_USER cannot write to $PG_ROOT"
  DATA_DIR="$PG_ROOT/data"
  LOG_FILE="$PG_ROOT/postgres.log"

  if [[ -s "$DIR/socket_dir" && -d "$SOCKET_DIR" ]]; then
    return 0
  fi
  rm -f "$DIR/socket_dir"
  SOCKET_DIR="$PG_ROOT/run"
  if (($(printf '%s' "$SOCKET_DIR" | wc -c) > SOCKET_DIR_MAX)) ||
    [[ "$SOCKET_DIR" == *[!A-Za-z0-9/._-]* ]]; then
    SOCKET_DIR=$(make_tmp_folder ess-pgsock)
    echo "$SOCKET_DIR" >"$DIR/socket_dir"
  else
    as_pg mkdir -p "$SOCKET_DIR"
  fi
}

# initdb the first time (and again if a former initdb did not finish: no PG_VERSION).
ensure_cluster() {
  [[ -s "$DATA_DIR/PG_VERSION" ]] && return 0
  rm -rf "$DATA_DIR"
  echo "initdb $DATA_DIR (as $PG_USER)"
  # --no-sync: a throwaway cluster; nothing initdb writes needs to reach the disk.
  as_pg "$PG_BIN/initdb" -D "$DATA_DIR" -U "$DB_USER" --auth=trust --encoding=UTF8 \
    --locale=C.UTF-8 --no-sync --no-instructions >"$DIR/initdb.log" 2>&1 ||
    { tail -n 20 "$DIR/initdb.log" >&2; die "initdb failed (see $DIR/initdb.log)"; }
}

# Writes ess.conf and pg_hba.conf into the data directory, owned by $PG_USER.
write_config() {
  # The settings of this script (ess.conf, rewritten at each start) override initdb's.
  if ! grep -qxF "include 'ess.conf'" "$DATA_DIR/postgresql.conf"; then
    echo "include 'ess.conf'" | as_pg tee -a "$DATA_DIR/postgresql.conf" >/dev/null
  fi
  as_pg tee "$DATA_DIR/ess.conf" >/dev/null <<EOF
# Written by $SELF start $DIR
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCKET_DIR'
max_connections = 200
# A throwaway test cluster: durability traded for speed (a machine crash may lose it).
fsync = off
synchronous_commit = off
full_page_writes = off
# The log goes to stderr, which pg_ctl -l sends to $LOG_FILE.
logging_collector = off
lc_messages = 'C'
EOF
  as_pg tee "$DATA_DIR/pg_hba.conf" >/dev/null <<EOF
# Written by $SELF start $DIR
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
host    all       all   ::1/128       trust
EOF
}

# Creates the database $DB_NAME if it is missing.
ensure_database() {
  local found
  found=$("$PG_BIN/psql" -X -q -A -t -h 127.0.0.1 -p "$PORT" -U "$DB_USER" -d postgres \
    -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") ||
    die "psql cannot reach the server on 127.0.0.1:$PORT (see $LOG_FILE)"
  if [[ "$found" != 1 ]]; then
    "$PG_BIN/createdb" -h 127.0.0.1 -p "$PORT" -U "$DB_USER" "$DB_NAME" ||
      die "createdb $DB_NAME failed (see $LOG_FILE)"
  fi
}

write_env() {
  local tmp="$DIR/env.tmp"
  cat >"$tmp" <<EOF
# Written by $SELF start $DIR
export ESS_POSTGRES_HOST=127.0.0.1
export ESS_POSTGRES_PORT=$PORT
export ESS_POSTGRES_DB=$DB_NAME
export ESS_POSTGRES_USER=$DB_USER
export ESS_POSTGRES_DSN="host=127.0.0.1 port=$PORT dbname=$DB_NAME user=$DB_USER"
export ESS_POSTGRES_SOCKET_DIR=$(printf '%q' "$SOCKET_DIR")
export ESS_POSTGRES_DIR=$(printf '%q' "$DIR")
EOF
  mv "$tmp" "$DIR/env"
}

print_ready() {
  echo "postgres running (pid $(postmaster_pid)) on 127.0.0.1:$PORT, data $DATA_DIR, log $LOG_FILE"
  echo "env: source $DIR/env"
}

cmd_start() {
  load_layout "$1"
  [[ -x "$PG_BIN/initdb" ]] ||
    die "PostgreSQL 15 server not found ($PG_BIN/initdb missing); run scripts/install-deps.sh"
  if running; then
    ensure_database
    write_env
    print_ready
    return 0
  fi
  local stale
  stale=$(postmaster_pid)
  if is_our_postgres "$stale"; then
    die "postgres of $DIR has pid $stale but does not answer; run '$0 stop $DIR' first"
  fi
  # A postmaster that died (SIGKILL, OOM killer) stays a zombie until the init process reaps it,
  # and until then postgres refuses the data directory: its postmaster.pid names a pid that
  # kill -0 still finds.
  if pid_alive "$stale" && is_zombie "$stale"; then
    wait_exit "$stale" 10 || die "pid $stale of $DATA_DIR/postmaster.pid is a zombie nobody reaps"
  fi
  rm -f "$DIR/env"
  ensure_folders
  ensure_cluster
  # Sockets and their lock files a killed server left (the folder is this server's alone).
  rm -f "$SOCKET_DIR"/.s.PGSQL.*
  # Fresh port each start: the old one may have been taken meanwhile.
  # shellcheck disable=SC2119  # nothing is taken yet
  PORT=$(free_port) || die "no free port found"
  echo "$PORT" >"$DIR/port"
  write_config

  # pg_ctl -w returns once the server accepts connections, or fails after -t seconds; the
  # postmaster is its own session leader (pg_ctl calls setsid), so a ^C in the caller's
  # terminal does not reach it: stop it with '$0 stop DIR'.
  as_pg "$PG_BIN/pg_ctl" start -D "$DATA_DIR" -l "$LOG_FILE" -w -t "$START_TIMEOUT_S" -s ||
    { tail -n 20 "$LOG_FILE" >&2 || true; die "pg_ctl start failed (see $LOG_FILE)"; }
  if ! wait_for 5 running; then
    tail -n 20 "$LOG_FILE" >&2 || true
    die "postgres not answering on 127.0.0.1:$PORT; stop it with '$0 stop $DIR'"
  fi
  ensure_database
  write_env
  print_ready
}

cmd_stop() {
  load_layout "$1"
  local pid
  pid=$(postmaster_pid)
  if is_our_postgres "$pid"; then
    # Fast: open sessions are rolled back and closed, then the server shuts down cleanly.
    if ! as_pg "$PG_BIN/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t "$STOP_TIMEOUT_S" -s ||
      ! wait_for 5 postgres_gone "$pid"; then
      echo "postgres (pid $pid) did not stop; immediate shutdown, then SIGKILL" >&2
      as_pg "$PG_BIN/pg_ctl" stop -D "$DATA_DIR" -m immediate -w -t 5 -s || true
      if ! postgres_gone "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        wait_for 5 postgres_gone "$pid" || die "pid $pid survived SIGKILL"
      fi
    fi
    echo "postgres of $DIR stopped"
  else
    echo "no postgres running for $DIR"
  fi
  # The socket folder made under /tmp for a long DIR: made again at the next start.
  if [[ -s "$DIR/socket_dir" ]]; then
    rm -rf -- "$SOCKET_DIR"
    rm -f "$DIR/socket_dir"
  fi
  rm -f "$DIR/env"
}

cmd_status() {
  load_layout "$1"
  if running; then
    echo "postgres running (pid $(postmaster_pid)) on 127.0.0.1:$PORT"
    return 0
  fi
  echo "postgres of $DIR not running"
  return 1
}

[[ $# -eq 2 ]] || usage
case "$1" in
  start) cmd_start "$2" ;;
  stop) cmd_stop "$2" ;;
  status) cmd_status "$2" ;;
  *) usage ;;
esac
