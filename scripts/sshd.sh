#!/usr/bin/env bash
# Runs a private OpenSSH server (SFTP only matters) whose whole state lives under one directory.
#
#   scripts/sshd.sh start  DIR   # start (or find running) the sshd of DIR; writes DIR/env
#   scripts/sshd.sh stop   DIR   # stop only the sshd of DIR
#   scripts/sshd.sh status DIR   # exit 0 if the sshd of DIR is running
#
# The server never touches the system sshd or port 22:
#  * it listens on 127.0.0.1 only, on a free port chosen at start;
#  * its host key, the client key pair, sshd_config, authorized_keys, known_hosts, pid file and
#    log are generated under DIR at the first start (throwaway ed25519 keys, never committed);
#  * public-key login only, for the current user (root: PermitRootLogin prohibit-password);
#  * SFTP through internal-sftp; uploads go to DIR/sftp-root (an absolute path: no chroot);
#  * ESS_SSHD_SFTP_SUBSYSTEM, if set when it starts, is the SFTP subsystem's command instead
#    (the fault tests' relay, tests/fault/sftp_fault_relay.cc).
#
# DIR/env holds shell exports for clients and tests:
#   ESS_SFTP_HOST ESS_SFTP_PORT ESS_SFTP_USER ESS_SFTP_KEY ESS_SFTP_PUBKEY
#   ESS_SFTP_KNOWN_HOSTS ESS_SFTP_ROOT
set -euo pipefail

readonly SSHD=/usr/sbin/sshd
readonly START_TIMEOUT_S=${ESS_SSHD_START_TIMEOUT_S:-20}
readonly STOP_TIMEOUT_S=10
SELF=$(readlink -f "${BASH_SOURCE[0]}")
readonly SELF
# shellcheck source=scripts/lib.sh
. "$(dirname "$SELF")/lib.sh"

die() {
  echo "sshd.sh: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 {start|stop|status} DIR" >&2
  exit 2
}

# True if pid $1 is an sshd started with the config of $DIR (not any other process that may
# have reused the pid).
is_our_sshd() {
  pid_alive "$1" || return 1
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "-f $CONFIG"
}

load_layout() {
  DIR=$(mkdir -p "$1" && cd "$1" && pwd)
  CONFIG="$DIR/sshd_config"
  PID_FILE="$DIR/sshd.pid"
  LOG_FILE="$DIR/sshd.log"
  HOST_KEY="$DIR/ssh_host_ed25519_key"
  USER_KEY="$DIR/id_ed25519"
  AUTHORIZED_KEYS="$DIR/authorized_keys"
  KNOWN_HOSTS="$DIR/known_hosts"
  ROOT="$DIR/sftp-root"
  PORT=""
  if [[ -s "$DIR/port" ]]; then PORT=$(tr -dc '0-9' <"$DIR/port"); fi
  USER_NAME=$(id -un)
}

# Generates what is missing: keys are made once per DIR and kept across restarts.
ensure_keys() {
  if [[ ! -s "$HOST_KEY" ]]; then
    rm -f "$HOST_KEY" "$HOST_KEY.pub"
    (umask 077 && ssh-keygen -q -t ed25519 -N '' -C "ess-test-host" -f "$HOST_KEY")
  fi
  if [[ ! -s "$USER_KEY" ]]; then
    rm -f "$USER_KEY" "$USER_KEY.pub"
    (umask 077 && ssh-keygen -q -t ed25519 -N '' -C "ess-test-user" -f "$USER_KEY")
  fi
  cp "$USER_KEY.pub" "$AUTHORIZED_KEYS"
  mkdir -p "$ROOT"
  chmod 755 "$ROOT"
}

write_config() {
  local permit_root=no
  [[ $(id -u) == 0 ]] && permit_root=prohibit-password
  cat >"$CONFIG" <<EOF
# Written by $SELF start $DIR
Port $PORT
ListenAddress 127.0.0.1
HostKey $HOST_KEY
PidFile $PID_FILE
AuthorizedKeysFile $AUTHORIZED_KEYS
AllowUsers $USER_NAME
PermitRootLogin $permit_root
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding no
X11Forwarding no
PermitTTY no
PrintMotd no
LogLevel INFO
Subsystem sftp ${ESS_SSHD_SFTP_SUBSYSTEM:-internal-sftp}
EOF
  # known_hosts for [127.0.0.1]:PORT (the form ssh and libssh2 look up for a non-22 port).
  printf '[127.0.0.1]:%s %s\n' "$PORT" "$(cut -d' ' -f1,2 "$HOST_KEY.pub")" >"$KNOWN_HOSTS"
}

write_env() {
  local tmp="$DIR/env.tmp"
  cat >"$tmp" <<EOF
# Written by $SELF start $DIR
export ESS_SFTP_HOST=127.0.0.1
export ESS_SFTP_PORT=$PORT
export ESS_SFTP_USER=$USER_NAME
export ESS_SFTP_KEY=$USER_KEY
export ESS_SFTP_PUBKEY=$USER_KEY.pub
export ESS_SFTP_KNOWN_HOSTS=$KNOWN_HOSTS
export ESS_SFTP_ROOT=$ROOT
EOF
  mv "$tmp" "$DIR/env"
}

print_ready() {
  echo "sshd running (pid $(read_pid "$PID_FILE")) on 127.0.0.1:$PORT, sftp root $ROOT"
  echo "env: source $DIR/env"
}

# True if the sshd of $DIR runs and accepts connections on its port.
running() {
  [[ -n "$PORT" ]] || return 1
  is_our_sshd "$(read_pid "$PID_FILE")" || return 1
  port_in_use "$PORT"
}

cmd_start() {
  load_layout "$1"
  if running; then
    write_env
    print_ready
    return 0
  fi
  local stale
  stale=$(read_pid "$PID_FILE")
  if is_our_sshd "$stale"; then
    die "sshd of $DIR has pid $stale but does not listen; run '$0 stop $DIR' first"
  fi
  rm -f "$PID_FILE" "$DIR/env"
  # The privilege separation directory sshd insists on.
  if [[ ! -d /run/sshd ]]; then
    mkdir -p /run/sshd
    chmod 755 /run/sshd
  fi
  ensure_keys
  # shellcheck disable=SC2119  # nothing is taken yet
  PORT=$(free_port) || die "no free port found"
  echo "$PORT" >"$DIR/port"
  write_config
  "$SSHD" -t -f "$CONFIG" || die "sshd rejects $CONFIG"
  # sshd daemonizes itself and writes PidFile; -E sends its log to a file under DIR.
  "$SSHD" -f "$CONFIG" -E "$LOG_FILE" </dev/null || die "sshd failed to start (see $LOG_FILE)"

  local deadline=$((SECONDS + START_TIMEOUT_S)) pid=""
  while ((SECONDS < deadline)); do
    pid=$(read_pid "$PID_FILE")
    if [[ -n "$pid" ]] && ! pid_alive "$pid"; then
      tail -n 20 "$LOG_FILE" >&2 || true
      die "sshd (pid $pid) exited during start-up"
    fi
    if [[ -n "$pid" ]] && port_in_use "$PORT"; then
      write_env
      print_ready
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$LOG_FILE" >&2 || true
  die "sshd not listening on 127.0.0.1:$PORT after ${START_TIMEOUT_S}s; stop it with '$0 stop $DIR'"
}

cmd_stop() {
  load_layout "$1"
  local pid
  pid=$(read_pid "$PID_FILE")
  if is_our_sshd "$pid"; then
    # Only the listener: sessions it forked end when their clients disconnect.
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_exit "$pid" "$STOP_TIMEOUT_S"; then
      echo "sshd (pid $pid) did not stop; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      wait_exit "$pid" 5 || die "pid $pid survived SIGKILL"
    fi
    echo "sshd of $DIR stopped"
  else
    echo "no sshd running for $DIR"
  fi
  rm -f "$PID_FILE" "$DIR/env"
}

cmd_status() {
  load_layout "$1"
  if running; then
    echo "sshd running (pid $(read_pid "$PID_FILE")) on 127.0.0.1:$PORT"
    return 0
  fi
  echo "sshd of $DIR not running"
  return 1
}

[[ $# -eq 2 ]] || usage
case "$1" in
  start) cmd_start "$2" ;;
  stop) cmd_stop "$2" ;;
  status) cmd_status "$2" ;;
  *) usage ;;
esac
