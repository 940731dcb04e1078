#!/usr/bin/env bash
# Runs the unit tests (one bun process) and then each e2e file in its own bun process, adds up
# bun's " N pass" / " N fail" / " N skip" summary lines, and ends with exactly one line
# "N passed, N failed, N skipped". A run that crashed or timed out without a summary counts as one
# failure. Tests skip only when the user opts out of a component (tests/lib/components.ts):
# SHEEPDOG_SKIP=corosync,zookeeper,nbd-clients; a missing component is a failure otherwise.
#
#   tests/run.sh                 all tests
#   tests/run.sh FILE...         only these test files (unit ones together, e2e ones one by one)
# Env: SHEEPDOG_SKIP (components not to test), SHEEPDOG_LONG=1 (long tests),
#      TEST_TIMEOUT_MS (per test, default 600000), FILE_TIMEOUT (seconds per e2e file, default
#      1200), UNIT_TIMEOUT (seconds, default 1200).
set -uo pipefail
cd "$(dirname "$0")/.."

BUN=node_modules/.bin/bun
TEST_TIMEOUT_MS=${TEST_TIMEOUT_MS:-600000}
FILE_TIMEOUT=${FILE_TIMEOUT:-1200}
UNIT_TIMEOUT=${UNIT_TIMEOUT:-1200}

if [ ! -x "$BUN" ]; then
  echo "$BUN not found: run 'make deps' (npm ci) first" >&2
  echo "0 passed, 1 failed, 0 skipped"
  exit 1
fi

if [ -n "${SHEEPDOG_SKIP:-}" ]; then
  echo "SHEEPDOG_SKIP=$SHEEPDOG_SKIP: tests of these components are reported as skipped"
fi

unit=() e2e=()
if [ $# -gt 0 ]; then
  for f in "$@"; do
    case "$f" in /*) ;; *) f="./${f#./}" ;; esac # bun treats a bare name as a filter
    case "$f" in
      */e2e/*) e2e+=("$f") ;;
      *) unit+=("$f") ;;
    esac
  done
else
  shopt -s nullglob
  for f in tests/unit/*.test.ts; do unit+=("./$f"); done
  for f in tests/e2e/*.test.ts; do e2e+=("./$f"); done
  shopt -u nullglob
fi

passed=0
failed=0
skipped=0
failed_runs=() skipped_runs=()
workdir=$(mktemp -d "${TMPDIR:-/tmp}/sheepdog-run.XXXXXX")
trap 'rm -rf "$workdir"' EXIT

# leftovers PGID: true when live (non-zombie) processes remain in that process group.
leftovers() {
  ps -e -o pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}

# run_bun LABEL LIMIT_SECONDS FILE...
run_bun() {
  local label=$1 limit=$2
  shift 2
  local log="$workdir/out.log" pgfile="$workdir/pgid"
  : >"$log"
  echo "=== $label"
  local start=$SECONDS
  # timeout makes itself a process-group leader and signals the whole group when time is up;
  # the group id (= its pid) also lets us reap anything a crashed test left behind.
  bash -c 'echo $$ >"$1"; shift; exec timeout -k 15 "$@"' _ "$pgfile" \
    "$limit" "$BUN" test --timeout "$TEST_TIMEOUT_MS" "$@" </dev/null 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local pg
  pg=$(cat "$pgfile" 2>/dev/null || true)
  if [ -n "$pg" ] && leftovers "$pg" && sleep 1 && leftovers "$pg"; then
    echo "warning: $label left processes behind; killing process group $pg"
    pkill -KILL -g "$pg" 2>/dev/null || true
  fi

  local clean p f s
  clean=$(sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$log")
  p=$(printf '%s\n' "$clean" | grep -E '^ *[0-9]+ pass$' | tail -n1 | tr -dc '0-9')
  f=$(printf '%s\n' "$clean" | grep -E '^ *[0-9]+ fail$' | tail -n1 | tr -dc '0-9')
  s=$(printf '%s\n' "$clean" | grep -E '^ *[0-9]+ skip$' | tail -n1 | tr -dc '0-9')
  skipped=$((skipped + ${s:-0}))
  [ "${s:-0}" -gt 0 ] && skipped_runs+=("$label ($s skipped)")
  local what
  if [ -z "$p" ] && [ -z "$f" ]; then
    if [ "$rc" -eq 124 ] || { [ "$rc" -eq 137 ] && [ $((SECONDS - start)) -ge "$limit" ]; }; then
      what="timed out after ${limit}s"
    else
      what="exited $rc without a summary"
    fi
    failed=$((failed + 1))
    failed_runs+=("$label ($what)")
  else
    p=${p:-0} f=${f:-0}
    passed=$((passed + p))
    failed=$((failed + f))
    if [ "$f" -gt 0 ]; then
      failed_runs+=("$label ($f failed)")
    elif [ "$rc" -ne 0 ]; then
      # Summary says all passed but bun still failed (unhandled error between tests, timeout...).
      failed=$((failed + 1))
      failed_runs+=("$label (exit $rc)")
    fi
  fi
  echo "=== $label: exit $rc, $((SECONDS - start))s"
}

if [ ${#unit[@]} -gt 0 ]; then
  run_bun "unit tests (${#unit[@]} files)" "$UNIT_TIMEOUT" "${unit[@]}"
fi
for f in "${e2e[@]}"; do
  run_bun "$f" "$FILE_TIMEOUT" "$f"
done

if [ ${#skipped_runs[@]} -gt 0 ]; then
  echo
  echo "Skipped (SHEEPDOG_SKIP=${SHEEPDOG_SKIP:-}):"
  for r in "${skipped_runs[@]}"; do echo "  $r"; done
fi
if [ ${#failed_runs[@]} -gt 0 ]; then
  echo
  echo "Failures:"
  for r in "${failed_runs[@]}"; do echo "  $r"; done
fi
echo
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
