# shellcheck shell=bash
# Shell helpers shared by run.sh and the scripts here. Source it; it defines functions only.

# True if something listens on TCP port $1 (loopback or wildcard).
port_in_use() {
  [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]
}

# free_port [TAKEN...]: prints a TCP port below the ephemeral range that nothing listens on and
# that is none of TAKEN (ports already picked for listeners not started yet). Never 25672, the
# default Erlang distribution port. Fails after 200 tries.
free_port() {
  local taken=" $* " port i
  for ((i = 0; i < 200; i++)); do
    port=$((10000 + RANDOM % 22000))
    [[ $taken == *" $port "* ]] && continue
    ((port == 25672)) && continue
    port_in_use "$port" && continue
    echo "$port"
    return 0
  done
  echo "no free port found" >&2
  return 1
}

# True if $1 is the PID of a live process.
pid_alive() {
  [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null
}

# Waits until pid $1 exits, up to $2 seconds. Returns 1 if it still runs.
wait_exit() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    pid_alive "$1" || return 0
    sleep 0.1
  done
  return 1
}

# The PID in file $1, or nothing.
read_pid() {
  if [[ -s "$1" ]]; then tr -dc '0-9' <"$1"; fi
}

# wait_for SECONDS COMMAND...: runs COMMAND every 0.1 s until it succeeds or time runs out.
wait_for() {
  local seconds=$1
  shift
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}
