#!/usr/bin/env bash
# The server's CPU per connect: 19,000 graphql-ws subscriptions opened 1,000 at a time by two
# generator processes (as `bench/run.sh storm`), on one fresh server per target, and the
# server's utime+stime (/proc/<pid>/stat) from the first connect until both processes are
# connected. Where `bench/run.sh storm` gives connects/s, which the generators' own CPU (on the
# same cores) bounds too, this gives what each connect costs the server alone.
#
#   bench/connect-cpu.sh                    # floor and tidings, one run each
#   BENCH_BIN=/path/to/bins bench/connect-cpu.sh tidings floor tidings
#   PERF=/tmp/storm.data bench/connect-cpu.sh tidings   # and a perf record of the connect phase
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BENCH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
export TIDINGS_JWT_SECRET=${TIDINGS_JWT_SECRET:-tidings-bench-secret-0123456789abcdef}
WORK=$(mktemp -d)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }

for target in ${*:-floor tidings}; do
  port=$(free_port)
  case $target in
    floor) "$BIN/tidings-bench" floor --bind "127.0.0.1:$port" >"$WORK/server.log" 2>&1 & ;;
    tidings)
      TIDINGS_BIND=127.0.0.1:$port TIDINGS_DATABASE_URL="sqlite://$WORK/$port.db?mode=rwc" \
        TIDINGS_RATE_LIMITS=off RUST_LOG=warn "$BIN/tidings" serve >"$WORK/server.log" 2>&1 & ;;
    *) echo "unknown target $target (floor or tidings)" >&2; exit 2 ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 0.1; done
  sleep 1
  rm -f "$WORK"/ready-*
  before=$(ticks); started=$(date +%s.%N)
  if [ -n "${PERF:-}" ]; then
    perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -o "$PERF" -p "$SERVER_PID" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  gens=()
  for part in 0 1; do
    "$BIN/tidings-bench" load --timeout 240 --url "http://127.0.0.1:$port" --proto gql --sub events \
      --publish none --skip-join --subscribers 9500 --offset $((part * 9500)) --rooms 1 \
      --room-prefix idle --connect-concurrency 1000 --hold 3 --ready-file "$WORK/ready-$part" \
      --label "connect-cpu-$target-part$part" --json "$WORK/part$part.json" >"$WORK/gen$part.log" 2>&1 &
    gens+=($!)
  done
  for _ in $(seq 1 2400); do [ -f "$WORK/ready-0" ] && [ -f "$WORK/ready-1" ] && break; sleep 0.05; done
  after=$(ticks); ended=$(date +%s.%N)
  if [ -n "${PERF:-}" ]; then kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; fi
  for g in "${gens[@]}"; do wait "$g" || true; done
  connected=$(cat "$WORK"/gen*.log | grep -oE '[0-9]+ connected in' | awk '{s += $1} END {print s + 0}')
  hz=$(getconf CLK_TCK)
  awk -v t="$target" -v n="$connected" -v d=$((after - before)) -v hz="$hz" -v s="$started" -v e="$ended" \
    'BEGIN { printf "%s: %d connected in %.2f s; server CPU %.2f s, %.0f µs per connect\n", t, n, e - s, d / hz, n ? d / hz / n * 1e6 : 0 }'
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
done
