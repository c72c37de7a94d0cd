#!/usr/bin/env bash
# Profiles two paths of a release build with `perf record -e cpu-clock` (a software clock:
# this machine's perf has no hardware counters) and prints the top symbols of each:
#   writes: sendMessage over HTTP -> database -> hub, 64 in flight, SQLite
#   fanout: 1,000 messageAdded subscribers of one room, saturated (bench/profile.sh fanout)
#   storm:  9,500 graphql-ws connections opened 1,000 at a time (connection_init, presence)
#
#   bench/profile.sh            # writes to bench/results/profile-*.txt
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BENCH_BIN:-$CARGO_TARGET_DIR/release}
OUT=${BENCH_OUT:-$ROOT/bench/results}
export TIDINGS_JWT_SECRET=${TIDINGS_JWT_SECRET:-tidings-bench-secret-0123456789abcdef}
mkdir -p "$OUT"
WORK=$(mktemp -d)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for what in ${*:-writes storm}; do
  p=$(port)
  TIDINGS_BIND=127.0.0.1:$p TIDINGS_DATABASE_URL="sqlite://$WORK/$what.db?mode=rwc" \
    TIDINGS_RATE_LIMITS=off RUST_LOG=warn "$BIN/tidings" serve >"$WORK/$what.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$p/health" && break; sleep 0.1; done
  case $what in
    writes) args=(--subscribers 100 --rooms 100 --rate 0 --window 64 --publishers 4 --duration 8) ;;
    fanout) args=(--subscribers 1000 --rate 0 --window 256 --duration 5 --join-concurrency 64 --room-prefix fan) ;;
    storm) args=(--sub events --skip-join --publish none --subscribers 9500 --connect-concurrency 1000 --room-prefix storm) ;;
  esac
  perf record -q -e cpu-clock -F 999 -g -o "$WORK/$what.data" -p "$SERVER_PID" >/dev/null 2>&1 &
  PERF=$!
  "$BIN/tidings-bench" load --url "http://127.0.0.1:$p" --server-pid "$SERVER_PID" --timeout 120 \
    --label "profile-$what" --json "$OUT/profile-$what.json" "${args[@]}"
  kill -INT "$PERF"; wait "$PERF" 2>/dev/null || true
  set +o pipefail
  {
    echo "# $what: perf record -e cpu-clock on the server, flat (self) by symbol"
    perf report -i "$WORK/$what.data" --no-children --sort symbol --stdio 2>/dev/null \
      | grep -E '^ +[0-9]' | sed -E 's/ +- +- *$//; s/ +$//' | head -40
    echo
    echo "# $what: by shared object"
    perf report -i "$WORK/$what.data" --no-children --sort dso --stdio 2>/dev/null \
      | grep -E '^ +[0-9]' | sed -E 's/ +- +- *$//; s/ +$//' | head -10
  } >"$OUT/profile-$what.txt"
  set -o pipefail
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
done
