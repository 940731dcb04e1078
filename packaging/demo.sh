#!/usr/bin/env bash
# Quick-start cluster: 3 sheep on one host (local driver), VDI "demo" exported over NBD.
#   packaging/demo.sh start|stop|status|clean        (make run / make stop / make status)
# Env: SHEEPDOG_BIN (default ./sheepdog), DEMO_DIR (/tmp/sheepdog-demo), DEMO_BASE_PORT (7000;
#      the sheep use BASE..BASE+2), DEMO_NBD_PORT (10809), DEMO_VDI (demo), DEMO_SIZE (1G).
# start records the ports in DEMO_DIR/demo.env; stop and status read them from there, so only
# DEMO_DIR has to be given again (other ports given to them must match the recorded ones).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SHEEPDOG_BIN:-$ROOT/sheepdog}
DEMO=${DEMO_DIR:-/tmp/sheepdog-demo}
BASE=${DEMO_BASE_PORT:-7000}
NBD=${DEMO_NBD_PORT:-10809}
VDI=${DEMO_VDI:-demo}
SIZE=${DEMO_SIZE:-1G}
N=3

die() { echo "demo: $*" >&2; exit 1; }

for v in BASE NBD; do
  case "${!v}" in '' | *[!0-9]*) die "port '${!v}' is not a number" ;; esac
  [ "${!v}" -ge 1 ] && [ "${!v}" -le 65533 ] || die "port ${!v} is out of range"
done

SETTINGS="$DEMO/demo.env"

# Ports of the demo in $DEMO as start recorded them; a different explicit DEMO_* port is an error
# (stop must not shut down whatever else listens on the default port).
load_settings() {
  [ -f "$SETTINGS" ] || return 0
  local rbase rnbd
  rbase=$(sed -n 's/^DEMO_BASE_PORT=\([0-9]*\)$/\1/p' "$SETTINGS")
  rnbd=$(sed -n 's/^DEMO_NBD_PORT=\([0-9]*\)$/\1/p' "$SETTINGS")
  if [ -n "$rbase" ] && [ "$rbase" != "$BASE" ]; then
    [ -n "${DEMO_BASE_PORT:-}" ] &&
      die "the demo in $DEMO uses DEMO_BASE_PORT=$rbase, not $BASE ('$0 clean' starts over)"
    BASE=$rbase
  fi
  if [ -n "$rnbd" ] && [ "$rnbd" != "$NBD" ]; then
    [ -n "${DEMO_NBD_PORT:-}" ] &&
      die "the demo in $DEMO uses DEMO_NBD_PORT=$rnbd, not $NBD ('$0 clean' starts over)"
    NBD=$rnbd
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid of node i if it is running (zombies do not count)
node_pid() {
  local f="$DEMO/$1.pid" pid st
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  st=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  case "$st" in Z*) return 1 ;; esac
  echo "$pid"
}

dog() { "$BIN" dog "$@" -a 127.0.0.1 -p "$BASE"; }

start_node() {
  local i=$1 port=$((BASE + $1)) pid
  if pid=$(node_pid "$i"); then
    echo "node $i already running (pid $pid, port $port)"
    return
  fi
  port_open "$port" && die "port $port is already in use by another process"
  mkdir -p "$DEMO/$i"
  local args=(sheep -b 127.0.0.1 -p "$port" -z "$i" -c "local:$DEMO/cluster" -f -l "dir=$DEMO/$i")
  if [ "$i" -eq 0 ]; then
    port_open "$NBD" && die "NBD port $NBD is already in use by another process"
    args+=(--nbd "127.0.0.1:$NBD")
  fi
  args+=("$DEMO/$i")
  echo "$(date '+%F %T') $BIN ${args[*]}" >>"$DEMO/$i.out"
  # setsid: the daemon outlives make and the terminal; -f keeps it in the foreground so $! is its pid
  setsid "$BIN" "${args[@]}" >>"$DEMO/$i.out" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$DEMO/$i.pid"
  local t
  for t in $(seq 200); do
    if ! node_pid "$i" >/dev/null; then
      tail -n 30 "$DEMO/$i.out" >&2
      die "sheep $i exited during startup (log: $DEMO/$i.out, $DEMO/$i/sheep.log)"
    fi
    if port_open "$port" && { [ "$i" -ne 0 ] || port_open "$NBD"; }; then
      echo "node $i started (pid $pid, port $port, zone $i)"
      return
    fi
    sleep 0.1
  done
  tail -n 30 "$DEMO/$i.out" >&2
  die "sheep $i is not accepting connections on port $port after 20 s"
}

cmd_start() {
  [ -x "$BIN" ] || die "$BIN not found: run 'make build' first"
  mkdir -p "$DEMO"
  load_settings
  printf 'DEMO_BASE_PORT=%s\nDEMO_NBD_PORT=%s\n' "$BASE" "$NBD" >"$SETTINGS"
  local i
  for i in $(seq 0 $((N - 1))); do start_node "$i"; done

  local info="" t formatted=0
  for t in $(seq 60); do
    info=$(dog cluster info 2>&1 || true)
    if grep -q "Cluster status: running" <<<"$info"; then break; fi
    if [ "$formatted" -eq 0 ] && grep -qi "waiting for cluster to be formatted" <<<"$info"; then
      echo "formatting the cluster with 3 copies"
      dog cluster format --copies 3
      formatted=1
      continue
    fi
    sleep 0.5
  done
  grep -q "Cluster status: running" <<<"$info" || { echo "$info" >&2; die "cluster did not come up"; }

  if dog vdi list -r | awk -v n="$VDI" '$2 == n { found = 1 } END { exit !found }'; then
    echo "VDI '$VDI' exists"
  else
    echo "creating VDI '$VDI' ($SIZE)"
    dog vdi create "$VDI" "$SIZE"
  fi

  local STOP_ARGS="" CLEAN="bash packaging/demo.sh clean" P=""
  [ "$BASE" = 7000 ] || P=" -p $BASE"
  if [ -n "${DEMO_DIR:-}" ]; then
    STOP_ARGS=" DEMO_DIR=$DEMO"
    CLEAN="DEMO_DIR=$DEMO $CLEAN"
  fi
  cat <<EOF

Sheepdog demo cluster is running: $N sheep on 127.0.0.1:$BASE-$((BASE + N - 1)) (zones 0-$((N - 1))),
data under $DEMO/<n>, logs in $DEMO/<n>.out and $DEMO/<n>/sheep.log.
VDI '$VDI' is exported over NBD by node 0 at nbd://127.0.0.1:$NBD/$VDI

Attach / inspect:
  qemu-img info nbd://127.0.0.1:$NBD/$VDI
  nbdinfo nbd://127.0.0.1:$NBD/$VDI
  qemu-io -f raw -c 'write -P 0xab 0 4M' -c 'read -P 0xab 0 4M' nbd://127.0.0.1:$NBD/$VDI
  nbdcopy disk.img nbd://127.0.0.1:$NBD/$VDI
Administer:
  $BIN dog cluster info$P
  $BIN dog node list$P
  $BIN dog vdi list$P
Stop:  make stop$STOP_ARGS        (data is kept; '$CLEAN' also removes $DEMO)
EOF
}

cmd_stop() {
  local i pid pids=() t
  for i in $(seq 0 $((N - 1))); do
    if pid=$(node_pid "$i"); then pids+=("$pid"); fi
  done
  if [ ${#pids[@]} -eq 0 ]; then
    echo "no demo sheep running"
    rm -f "$DEMO"/*.pid
    return
  fi
  # A clean cluster shutdown lets the next start skip recovery; plain SIGTERM is the fallback.
  if node_pid 0 >/dev/null && [ -x "$BIN" ]; then
    timeout 10 "$BIN" dog cluster shutdown -a 127.0.0.1 -p "$BASE" </dev/null >/dev/null 2>&1 || true
  fi
  for t in $(seq 50); do
    local alive=()
    for pid in "${pids[@]}"; do
      st=$(ps -o stat= -p "$pid" 2>/dev/null) && [[ $st != Z* ]] && alive+=("$pid")
    done
    [ ${#alive[@]} -eq 0 ] && break
    [ "$t" -eq 10 ] && kill -TERM "${alive[@]}" 2>/dev/null || true
    [ "$t" -eq 50 ] && kill -KILL "${alive[@]}" 2>/dev/null || true
    sleep 0.2
  done
  rm -f "$DEMO"/*.pid
  echo "demo cluster stopped (data kept in $DEMO)"
}

cmd_status() {
  local i pid
  for i in $(seq 0 $((N - 1))); do
    if pid=$(node_pid "$i"); then
      echo "node $i: running (pid $pid, port $((BASE + i)))"
    else
      echo "node $i: stopped"
    fi
  done
  if node_pid 0 >/dev/null && [ -x "$BIN" ]; then dog cluster info || true; fi
}

[ "${1:-start}" = start ] || load_settings

case "${1:-start}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  clean) cmd_stop; rm -rf "$DEMO"; echo "removed $DEMO" ;;
  *) die "usage: $0 start|stop|status|clean" ;;
esac
