#!/usr/bin/env bash
# Runs every benchmark scenario of PERFORMANCE.md against a release build of this checkout,
# the floor (tidings-bench floor) and the Node reference (bench/node-ref), one fresh server
# and database per run, on free loopback ports. Bounded: every generator stops by itself
# (--timeout), every server is stopped by its pid at the end of its run.
#
#   bench/run.sh                # everything (about 15 minutes on 2 cores)
#   bench/run.sh fanout idle    # some scenarios: fanout push latency idle idle50k chat redis writes storm abuse streams receipts
#   BENCH_TARGETS="floor tidings" bench/run.sh fanout   # leave the Node reference out (fanout, push, latency, idle, storm)
#   bench/run.sh cluster        # 3 instances on a 3-shard Redis Cluster (not in the default set)
#   bench/run.sh admin          # fan-out with the operator console closed and open (not in the default set)
#   bench/run.sh cohorts        # memory per connection and per cohort, 10,000 users in 100/1,000/5,000 rooms
#   bench/run.sh remote         # memory an instance holds per user connected to another instance
#   bench/run.sh keepalive      # memory per idle HTTP keep-alive connection
#   BENCH_TARGETS="floor tidings" bench/run.sh gen2   # push, storm and idle by the second generator
#   BENCH_BIN=target/before bench/run.sh storm   # the binaries in target/before, built before
#
# Results: bench/results/*.json (one report per run) and bench/results/fanout.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
OUT=${BENCH_OUT:-$ROOT/bench/results}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
export TIDINGS_JWT_SECRET=${TIDINGS_JWT_SECRET:-tidings-bench-secret-0123456789abcdef}
SCENARIOS=${*:-fanout push latency idle idle50k chat redis writes storm abuse streams}
TARGETS=${BENCH_TARGETS:-floor tidings node}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Built one package at a time: together, feature unification would rebuild shared crates.
# BENCH_BIN=DIR runs the binaries already in DIR (`tidings`, `tidings-bench`) and builds
# nothing: two builds compared back to back, each copied aside once.
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  cargo build --release -q -p tidings
  cargo build --release -q -p tidings-bench
fi
case " $TARGETS " in
  *" node "*) (cd bench/node-ref && [ -d node_modules ] || npm ci --no-audit --no-fund -q) ;;
esac

# free_cluster_port: a free port below 55000 whose cluster bus port (+10000) is free too
free_cluster_port() {
  python3 -c '
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p >= 55000:
        continue
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 10000))
    except OSError:
        continue
    print(p); break'
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url
  for _ in $(seq 1 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "server at $1 did not come up" >&2; return 1
}

# start_tidings PORT DB_URL [REDIS_URL]: sets SERVER_PID. Rate limits are off (these are load
# tests) unless BUDGETS=on, as for the abuse scenario. With REDIS_CLUSTER set (seed nodes), the
# instance uses that cluster instead of REDIS_URL.
start_tidings() {
  local port=$1 db=$2 redis=${3:-}
  local limits=off
  [ "${BUDGETS:-off}" = on ] && limits=on
  env TIDINGS_BIND=127.0.0.1:"$port" TIDINGS_DATABASE_URL="$db" TIDINGS_RATE_LIMITS=$limits \
    ${redis:+TIDINGS_REDIS_URL=$redis} ${REDIS_CLUSTER:+TIDINGS_REDIS_CLUSTER=$REDIS_CLUSTER} \
    TIDINGS_MAX_CONNECTIONS=${MAX_CONNECTIONS:-20000} RUST_LOG=warn \
    "$BIN/tidings" serve >"$WORK/tidings-$port.log" 2>&1 &
  SERVER_PID=$!; PIDS+=("$SERVER_PID")
  wait_http "http://127.0.0.1:$port/health"
}
start_floor() {
  "$BIN/tidings-bench" floor --bind "127.0.0.1:$1" >"$WORK/floor-$1.log" 2>&1 &
  SERVER_PID=$!; PIDS+=("$SERVER_PID")
  sleep 0.3
}
start_node() {
  PORT=$1 node bench/node-ref/server.mjs >"$WORK/node-$1.log" 2>&1 &
  SERVER_PID=$!; PIDS+=("$SERVER_PID")
  sleep 0.8
}
# start_redis: a Redis of our own, keeping nothing on disk; sets rport and REDIS_PID
start_redis() {
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    >"$WORK/redis-$rport.log" 2>&1 &
  REDIS_PID=$!; PIDS+=("$REDIS_PID"); sleep 0.5
}
# start_cluster: a Redis Cluster of our own, 3 masters and no replicas (a benchmark measures
# shards, not failover), keeping nothing on disk; sets CLUSTER_PORTS and REDIS_CLUSTER
start_cluster() {
  CLUSTER_PORTS=(); local addrs=()
  for _ in 0 1 2; do
    local p
    p=$(free_cluster_port)
    mkdir -p "$WORK/cluster-$p"
    redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
      --cluster-enabled yes --cluster-config-file nodes.conf --dir "$WORK/cluster-$p" \
      >"$WORK/cluster-$p.log" 2>&1 &
    PIDS+=($!); CLUSTER_PORTS+=("$p"); addrs+=("127.0.0.1:$p")
  done
  for p in "${CLUSTER_PORTS[@]}"; do
    for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$p" ping >/dev/null 2>&1 || { echo "cluster node $p did not start:" >&2; cat "$WORK/cluster-$p.log" >&2; return 1; }
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$WORK/cluster-create.log"
  for _ in $(seq 1 100); do
    redis-cli -p "${CLUSTER_PORTS[0]}" cluster info | grep -q cluster_state:ok && break; sleep 0.1
  done
  REDIS_CLUSTER=$(printf 'redis://127.0.0.1:%s,' "${CLUSTER_PORTS[@]}"); REDIS_CLUSTER=${REDIS_CLUSTER%,}
}
# shard_stats LABEL: per master, SPUBLISH calls, network bytes and CPU seconds so far
shard_stats() {
  for p in "${CLUSTER_PORTS[@]}"; do
    local calls in out cpu
    calls=$(redis-cli -p "$p" info commandstats | tr -d '\r' | sed -n 's/^cmdstat_spublish:calls=\([0-9]*\).*/\1/p')
    in=$(redis-cli -p "$p" info stats | tr -d '\r' | sed -n 's/^total_net_input_bytes:\([0-9]*\)/\1/p')
    out=$(redis-cli -p "$p" info stats | tr -d '\r' | sed -n 's/^total_net_output_bytes:\([0-9]*\)/\1/p')
    cpu=$(redis-cli -p "$p" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.3f", s}')
    echo "$1 shard=$p spublish=${calls:-0} in_bytes=${in:-0} out_bytes=${out:-0} cpu_seconds=${cpu:-0}"
  done
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
sqlite() { echo "sqlite://$WORK/$1.db?mode=rwc"; }
pgdb() { # fresh PostgreSQL database
  local name=tidings_bench_$1_$$
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $name" -c "CREATE DATABASE $name" >/dev/null
  echo "$PG/$name"
}

# serve TARGET PORT: starts tidings (fresh SQLite), floor or node
serve() {
  case $1 in
    tidings) start_tidings "$2" "$(sqlite "t$2")" ;;
    floor) start_floor "$2" ;;
    node) start_node "$2" ;;
  esac
}
join_flag() { [ "$1" = tidings ] || echo --skip-join; }

load() { "$BIN/tidings-bench" load --timeout 240 "$@"; }

# idle_run TARGET PROTO LABEL CONCURRENCY: ~19k idle `events` subscriptions over PROTO on one
# fresh TARGET server, by two generator processes (each process may hold 20,000 files);
# reports the server's RSS per subscription in $OUT/LABEL-19000.json.
idle_run() {
  local target=$1 proto=$2 label=$3 cc=$4
  port=$(free_port); serve "$target" "$port"
  sleep 1
  before=$("$BIN/tidings-bench" rss "$SERVER_PID")
  rm -f "$WORK"/ready-*
  gens=()
  for part in 0 1; do
    load --url "http://127.0.0.1:$port" --proto "$proto" --sub events --publish none --skip-join \
      --subscribers 9500 --offset $((part * 9500)) --rooms 1 --room-prefix idle \
      --connect-concurrency "$cc" --hold 8 --ready-file "$WORK/ready-$part" \
      --label "$label-part$part" --json "$WORK/$label-part$part.json" &
    gens+=($!)
  done
  for _ in $(seq 1 900); do [ -f "$WORK/ready-0" ] && [ -f "$WORK/ready-1" ] && break; sleep 0.2; done
  sleep 2
  after=$("$BIN/tidings-bench" rss "$SERVER_PID")
  for g in "${gens[@]}"; do wait "$g" || true; done
  "$BIN/tidings-bench" merge --rss-before "$before" --rss-after "$after" \
    --label "$label-19000" "$WORK/$label-part0.json" \
    "$WORK/$label-part1.json" >"$OUT/$label-19000.json"
  grep -E '"(connected|connect_failures|connects_per_second|server_rss_per_connection_kib)"' \
    "$OUT/$label-19000.json" | tr -d '\n'; echo " <- $label"
  stop "$SERVER_PID"
}

gen2() { "$BIN/tidings-bench" gen2 "$@"; }

# gen2_connects TARGET NAME CONCURRENCY: 19,000 `events` subscriptions held on one fresh TARGET
# server, opened by two gen2 processes (each may hold 20,000 files), each CONCURRENCY at a
# time; the server's RSS per subscription and the connects/s over both in $OUT/gen2-NAME-TARGET-19000.json.
gen2_connects() {
  local target=$1 name=$2 cc=$3
  port=$(free_port); serve "$target" "$port"
  sleep 1
  before=$("$BIN/tidings-bench" rss "$SERVER_PID")
  rm -f "$WORK"/gen2-ready-*
  gens=()
  for part in 0 1; do
    gen2 connects --timeout 240 --url "http://127.0.0.1:$port" --sub events --skip-join \
      --subscribers 9500 --offset $((part * 9500)) --rooms 1 --room-prefix idle \
      --connect-concurrency "$cc" --hold 8 --ready-file "$WORK/gen2-ready-$part" \
      --label "gen2-$name-$target-part$part" --json "$WORK/gen2-$name-$target-part$part.json" &
    gens+=($!)
  done
  for _ in $(seq 1 900); do [ -f "$WORK/gen2-ready-0" ] && [ -f "$WORK/gen2-ready-1" ] && break; sleep 0.2; done
  sleep 2
  after=$("$BIN/tidings-bench" rss "$SERVER_PID")
  for g in "${gens[@]}"; do wait "$g" || true; done
  gen2 merge --rss-before "$before" --rss-after "$after" --label "gen2-$name-$target-19000" \
    "$WORK/gen2-$name-$target-part0.json" "$WORK/gen2-$name-$target-part1.json" \
    >"$OUT/gen2-$name-$target-19000.json" || true
  stop "$SERVER_PID"
}

for scenario in $SCENARIOS; do
  case $scenario in
  fanout) # saturated fan-out to one room: about 256,000 deliveries in flight (256 messages at 1k)
    for n in ${FANOUT_SIZES:-1000 5000 15000}; do
      for target in $TARGETS; do
        port=$(free_port); serve $target "$port"
        load --url "http://127.0.0.1:$port" --server-pid "$SERVER_PID" $(join_flag $target) \
          --subscribers $n --rate 0 --window $((256000 / n)) --duration 5 --drain 20 \
          --connect-concurrency 200 --join-concurrency 64 \
          --label "fanout-$target-$n" --json "$OUT/fanout-$target-$n.json" || true
        stop "$SERVER_PID"
      done
    done ;;
  push) # open loop: 1,000 subscribers of one room, 2,000 messages/s offered (2 M deliveries/s)
    for target in $TARGETS; do
      port=$(free_port); serve $target "$port"
      load --url "http://127.0.0.1:$port" --server-pid "$SERVER_PID" $(join_flag $target) \
        --subscribers 1000 --rate 2000 --window 4000 --publishers 4 --duration 10 --drain 20 \
        --connect-concurrency 200 --join-concurrency 64 \
        --label "push-$target-1000" --json "$OUT/push-$target-1000.json" || true
      stop "$SERVER_PID"
    done ;;
  latency) # 5k subscribers, 50 messages/s: latency below saturation
    for target in $TARGETS; do
      port=$(free_port); serve $target "$port"
      load --url "http://127.0.0.1:$port" --server-pid "$SERVER_PID" $(join_flag $target) \
        --subscribers 5000 --rate 50 --window 1000 --duration 10 --drain 20 \
        --join-concurrency 64 --label "latency-$target-5000" --json "$OUT/latency-$target-5000.json" || true
      stop "$SERVER_PID"
    done ;;
  abuse) # the budgets' attacks against the default budgets: peak RSS growth under each, and an
    # honest client's latency meanwhile (bench/src/abuse.rs)
    port=$(free_port)
    BUDGETS=on start_tidings "$port" "$(sqlite "abuse$port")"
    "$BIN/tidings-bench" abuse --url "http://127.0.0.1:$port" --server-pid "$SERVER_PID" \
      --json "$OUT/abuse-tidings.json" || true
    stop "$SERVER_PID" ;;
  idle|storm) # ~19k idle graphql-ws subscriptions on one instance, by two generator processes
    # (each process may hold 20,000 files); the storm variant connects 1,000 at a time. Every
    # target runs both, so a storm's connects/s compares with a storm of the floor's in the same run.
    if [ "$scenario" = storm ]; then cc=1000; else cc=200; fi
    for target in $TARGETS; do idle_run "$target" gql "$scenario-$target" $cc; done ;;
  streams) # subscriptions over HTTP streams beside graphql-ws in one run: saturated fan-out to
    # 1,000 subscribers of one room per transport, then ~19k idle SSE subscriptions
    for proto in gql sse multipart; do
      port=$(free_port); serve tidings "$port"
      load --url "http://127.0.0.1:$port" --server-pid "$SERVER_PID" --proto $proto \
        --subscribers 1000 --rate 0 --window 256 --duration 5 --drain 20 \
        --connect-concurrency 200 --join-concurrency 64 \
        --label "streams-fanout-$proto-1000" --json "$OUT/streams-fanout-$proto-1000.json" || true
      stop "$SERVER_PID"
    done
    idle_run tidings sse idle-sse-tidings 200 ;;
  idle50k) # 50,000 idle graphql-ws subscriptions over three instances sharing PostgreSQL and a
    # Redis of our own, by three generator processes (each process may hold 20,000 files); each
    # process spreads its connections over the three instances.
    start_redis
    db=$(pgdb idle50k)
    ports=(); spids=()
    for _ in 0 1 2; do
      p=$(free_port); start_tidings "$p" "$db" "redis://127.0.0.1:$rport"
      ports+=("$p"); spids+=("$SERVER_PID")
    done
    sleep 1
    rss_sum() { local t=0; for s in "${spids[@]}"; do t=$((t + $("$BIN/tidings-bench" rss "$s"))); done; echo $t; }
    before=$(rss_sum)
    rm -f "$WORK"/ready-*
    gens=(); counts=(16666 16667 16667); offsets=(0 16666 33333)
    for part in 0 1 2; do
      a=${ports[$part]}; b=${ports[$(((part + 1) % 3))]}; c=${ports[$(((part + 2) % 3))]}
      "$BIN/tidings-bench" load --timeout 900 --url "http://127.0.0.1:$a" \
        --also "http://127.0.0.1:$b" --also "http://127.0.0.1:$c" \
        --sub events --publish none --skip-join \
        --subscribers "${counts[$part]}" --offset "${offsets[$part]}" --rooms 1 --room-prefix idle \
        --connect-concurrency 200 --hold 60 --ready-file "$WORK/ready-$part" \
        --label "idle50k-part$part" --json "$WORK/idle50k-part$part.json" &
      gens+=($!)
    done
    for _ in $(seq 1 4000); do
      [ -f "$WORK/ready-0" ] && [ -f "$WORK/ready-1" ] && [ -f "$WORK/ready-2" ] && break; sleep 0.2
    done
    sleep 2
    after=$(rss_sum)
    open=0
    for p in "${ports[@]}"; do
      n=$(curl -sf "http://127.0.0.1:$p/metrics" | awk '/^tidings_connections\{/ {s += $2} END {print s + 0}')
      open=$((open + n))
    done
    echo "open connections on the three instances while held: $open"
    for g in "${gens[@]}"; do wait "$g" || true; done
    "$BIN/tidings-bench" merge --rss-before "$before" --rss-after "$after" \
      --label "idle50k-tidings-50000" "$WORK"/idle50k-part{0,1,2}.json >"$OUT/idle50k-tidings-50000.json"
    grep -E '"(connected|connect_failures|connects_per_second|server_rss_per_connection_kib)"' \
      "$OUT/idle50k-tidings-50000.json" | tr -d '\n'; echo " <- idle50k tidings"
    for s in "${spids[@]}"; do stop "$s"; done
    stop "$REDIS_PID" ;;
  chat) # 10k users in 1k rooms of 10; every message sent by a member over HTTP
    port=$(free_port); serve tidings "$port"
    load --url "http://127.0.0.1:$port" --server-pid "$SERVER_PID" \
      --subscribers 10000 --rooms 1000 --rate 500 --window 2000 --publishers 4 --duration 10 \
      --join-concurrency 64 --label chat-tidings-10000 --json "$OUT/chat-tidings-10000.json" || true
    stop "$SERVER_PID" ;;
  cohorts) # what a cohort costs beside its members: the chat load's 10,000 users in 100, 1,000
    # and 5,000 rooms on one instance (each room one cohort); the RSS per connection after the
    # warm-up (every room has had events) against rooms per connection gives both costs.
    # COHORTS_ROOMS picks the room counts; COHORTS_CLUSTER=1 runs the instance on PostgreSQL
    # and a Redis Cluster of its own, as the cluster scenario's instances run.
    [ "${COHORTS_CLUSTER:-0}" = 1 ] && start_cluster
    for rooms in ${COHORTS_ROOMS:-100 1000 5000}; do
      port=$(free_port)
      if [ "${COHORTS_CLUSTER:-0}" = 1 ]; then
        start_tidings "$port" "$(pgdb cohorts)"
        for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" | grep -q '"redis":"ok"' && break; sleep 0.1; done
      else
        serve tidings "$port"
      fi
      load --url "http://127.0.0.1:$port" --server-pid "$SERVER_PID" \
        --subscribers 10000 --rooms $rooms --rate 50 --window 2000 --publishers 4 --duration 3 \
        --join-concurrency 64 --label cohorts-$rooms --json "$OUT/cohorts-$rooms.json" || true
      stop "$SERVER_PID"
    done ;;
  redis) # the same through two instances sharing PostgreSQL and a Redis of our own
    start_redis
    db=$(pgdb redis)
    p1=$(free_port); start_tidings "$p1" "$db" "redis://127.0.0.1:$rport"; s1=$SERVER_PID
    p2=$(free_port); start_tidings "$p2" "$db" "redis://127.0.0.1:$rport"; s2=$SERVER_PID
    load --url "http://127.0.0.1:$p1" --also "http://127.0.0.1:$p2" \
      --server-pid "$s1" --server-pid "$s2" \
      --subscribers 10000 --rooms 1000 --rate 500 --window 2000 --publishers 4 --duration 10 \
      --join-concurrency 64 --label chat-redis-10000 --json "$OUT/chat-redis-10000.json" || true
    stop "$s1"; stop "$s2"; stop "$REDIS_PID" ;;
  cluster) # 3 instances sharing PostgreSQL and a 3-master Redis Cluster (sharded pub/sub):
    # (1) chat: 30,000 users in 3,000 rooms of 10 spread over the three, 1,000 messages/s offered;
    # (2) fan-out: 3,000 subscribers of one room over the three, saturated. Per shard, SPUBLISH
    # calls and bytes before and after each run (cluster-shards.txt); the prediction is
    # PERFORMANCE.md's capacity model.
    start_cluster
    db=$(pgdb cluster)
    cports=(); cpids=()
    for _ in 0 1 2; do
      p=$(free_port); MAX_CONNECTIONS=50000 start_tidings "$p" "$db"
      cports+=("$p"); cpids+=("$SERVER_PID")
    done
    for p in "${cports[@]}"; do
      for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$p/health" | grep -q '"redis":"ok"' && break; sleep 0.1; done
    done
    urls=(--url "http://127.0.0.1:${cports[0]}" --also "http://127.0.0.1:${cports[1]}" --also "http://127.0.0.1:${cports[2]}")
    pids=(--server-pid "${cpids[0]}" --server-pid "${cpids[1]}" --server-pid "${cpids[2]}")
    rss_sum() { local t=0; for s in "${cpids[@]}"; do t=$((t + $("$BIN/tidings-bench" rss "$s"))); done; echo $t; }
    shard_stats chat-before >"$OUT/cluster-shards.txt"
    # Two generator processes (each may hold 20,000 files), each with its own 15,000 users in
    # rooms of CLUSTER_ROOM_SIZE (10: 1,500 rooms) and half the rate; the server RSS is summed
    # over the three instances once both are connected, while they publish.
    before=$(rss_sum)
    rm -f "$WORK"/ready-chat-*
    gens=()
    size=${CLUSTER_ROOM_SIZE:-10}
    for part in 0 1; do
      load "${urls[@]}" "${pids[@]}" --offset $((part * 15000)) --room-prefix "chat$part-" \
        --subscribers 15000 --rooms $((15000 / size)) --rate 500 --window 2000 --publishers 3 --duration 10 \
        --connect-concurrency 200 --join-concurrency 64 --ready-file "$WORK/ready-chat-$part" \
        --label "cluster-chat-part$part" --json "$WORK/cluster-chat-part$part.json" &
      gens+=($!)
    done
    for _ in $(seq 1 900); do [ -f "$WORK/ready-chat-0" ] && [ -f "$WORK/ready-chat-1" ] && break; sleep 0.2; done
    sleep 2
    after=$(rss_sum)
    # The instances' open TCP connections then: the WebSockets, and the publishers' HTTP
    # keep-alive connections, which hold hyper's buffers.
    for p in "${cports[@]}"; do
      echo "instance $p: $(ss -Htn state established "( sport = :$p )" | wc -l) TCP connections at the RSS reading"
    done | tee "$OUT/cluster-connections.txt"
    for g in "${gens[@]}"; do wait "$g" || true; done
    "$BIN/tidings-bench" merge --rss-before "$before" --rss-after "$after" \
      --label cluster-chat-30000 "$WORK/cluster-chat-part0.json" "$WORK/cluster-chat-part1.json" \
      >"$OUT/cluster-chat-30000.json"
    shard_stats chat-after >>"$OUT/cluster-shards.txt"
    load "${urls[@]}" "${pids[@]}" --room-prefix fan \
      --subscribers 3000 --rate 0 --window 85 --duration 5 --drain 20 \
      --connect-concurrency 200 --join-concurrency 64 \
      --label cluster-fanout-3000 --json "$OUT/cluster-fanout-3000.json" || true
    shard_stats fanout-after >>"$OUT/cluster-shards.txt"
    cat "$OUT/cluster-shards.txt"
    for s in "${cpids[@]}"; do stop "$s"; done ;;
  remote) # what an instance holds for users connected to another one (presence knows every
    # user of the deployment on every instance): two instances on one Redis Cluster and
    # PostgreSQL, ~19,000 idle subscriptions (signed-in users) on the second; the first's RSS
    # before and after, per remote user (remote-known.txt), and the second's per subscription
    start_cluster
    db=$(pgdb remote)
    pa=$(free_port); start_tidings "$pa" "$db"; sa=$SERVER_PID
    pb=$(free_port); start_tidings "$pb" "$db"; sb=$SERVER_PID
    for p in "$pa" "$pb"; do
      for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$p/health" | grep -q '"redis":"ok"' && break; sleep 0.1; done
    done
    sleep 1
    before_a=$("$BIN/tidings-bench" rss "$sa"); before_b=$("$BIN/tidings-bench" rss "$sb")
    rm -f "$WORK"/ready-remote-*
    gens=()
    for part in 0 1; do
      load --url "http://127.0.0.1:$pb" --sub events --publish none --skip-join \
        --subscribers 9500 --offset $((part * 9500)) --rooms 1 --room-prefix remote \
        --connect-concurrency 200 --hold 10 --ready-file "$WORK/ready-remote-$part" \
        --label "remote-part$part" --json "$WORK/remote-part$part.json" &
      gens+=($!)
    done
    for _ in $(seq 1 900); do [ -f "$WORK/ready-remote-0" ] && [ -f "$WORK/ready-remote-1" ] && break; sleep 0.2; done
    # The first instance learns each user from the announcements, which follow the connects.
    sleep 4
    after_a=$("$BIN/tidings-bench" rss "$sa"); after_b=$("$BIN/tidings-bench" rss "$sb")
    online=$(curl -sf "http://127.0.0.1:$pa/metrics" | awk '/^tidings_presence_known_users /{print $2}')
    for g in "${gens[@]}"; do wait "$g" || true; done
    "$BIN/tidings-bench" merge --rss-before "$before_b" --rss-after "$after_b" \
      --label remote-serving-19000 "$WORK/remote-part0.json" "$WORK/remote-part1.json" \
      >"$OUT/remote-serving-19000.json"
    connected=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["connected"])' "$OUT/remote-serving-19000.json")
    {
      echo "serving instance: rss_before_kib=$before_b rss_after_kib=$after_b connected=$connected"
      echo "other instance: rss_before_kib=$before_a rss_after_kib=$after_a known_users=${online:-unknown}"
      awk -v a="$before_a" -v b="$after_a" -v n="$connected" \
        'BEGIN { printf "other instance, KiB per remote user: %.3f\n", (b - a) / n }'
    } | tee "$OUT/remote-known.txt"
    stop "$sa"; stop "$sb" ;;
  keepalive) # what an idle HTTP/1.1 keep-alive connection holds (hyper's buffers), as the
    # publishers' connections of a chat load do between requests: 2,000 of them, after one
    # GraphQL query each
    port=$(free_port); serve tidings "$port"
    python3 bench/keepalive.py --port "$port" --pid "$SERVER_PID" --connections 2000 \
      --path '/graphql?query=%7B__typename%7D' | tee "$OUT/keepalive.txt"
    stop "$SERVER_PID" ;;
  writes) # sendMessage writes/s: 64 in flight, 100 rooms of one subscriber each
    for backend in sqlite postgres; do
      port=$(free_port)
      if [ $backend = sqlite ]; then db=$(sqlite "w$port"); else db=$(pgdb writes); fi
      start_tidings "$port" "$db"
      load --url "http://127.0.0.1:$port" --server-pid "$SERVER_PID" \
        --subscribers 100 --rooms 100 --rate 0 --window 64 --publishers 4 --duration 10 \
        --label "writes-$backend" --json "$OUT/writes-$backend.json" || true
      stop "$SERVER_PID"
    done ;;
  admin) # what an open operator console costs the hot path: saturated fan-out to 1,000
    # subscribers of one room with the console closed, then open (bench/node-ref/console.mjs:
    # a serverStats subscriber and the console's table queries every 5 s), twice each, in one run
    for round in 1 2; do
      for console in closed open; do
        port=$(free_port); serve tidings "$port"
        watcher=""
        if [ $console = open ]; then
          admin_token=$("$BIN/tidings" token --user console --role admin)
          node bench/node-ref/console.mjs "http://127.0.0.1:$port" "$admin_token" 120 \
            >"$WORK/console-$port.log" 2>&1 &
          watcher=$!; PIDS+=("$watcher")
          sleep 2
        fi
        load --url "http://127.0.0.1:$port" --server-pid "$SERVER_PID" \
          --subscribers 1000 --rate 0 --window 256 --duration 5 --drain 20 \
          --connect-concurrency 200 --join-concurrency 64 \
          --label "admin-console-$console-$round" --json "$OUT/admin-console-$console-$round.json" || true
        if [ -n "$watcher" ]; then
          kill -TERM "$watcher" 2>/dev/null || true; wait "$watcher" || echo "the console saw nothing" >&2
          cat "$WORK/console-$port.log"
        fi
        stop "$SERVER_PID"
      done
    done
    for f in "$OUT"/admin-console-*.json; do
      printf '%s ' "$(basename "$f" .json)"; grep -oE '"deliveries_per_second": *[0-9.]+' "$f"
    done ;;
  receipts) # 1,000 members of one room subscribed to roomEvents, each marking it read once a
    # second (RECEIPTS_MARKS=N: N times a second, which the debounce folds to one receipt event
    # per member and second; bench/src/receipts.rs): receipt events and deliveries per second,
    # server CPU
    for backend in sqlite postgres; do
      port=$(free_port)
      if [ $backend = sqlite ]; then db=$(sqlite "rc$port"); else db=$(pgdb receipts); fi
      start_tidings "$port" "$db"
      "$BIN/tidings-bench" receipts --url "http://127.0.0.1:$port" --server-pid "$SERVER_PID" \
        --members 1000 --duration 10 --marks-per-second "${RECEIPTS_MARKS:-1}" \
        --json "$OUT/receipts-$backend-1000${RECEIPTS_MARKS:+-x$RECEIPTS_MARKS}.json" || true
      stop "$SERVER_PID"
    done ;;
  gen2) # the same targets measured by the second generator (bench/src/gen2.rs, a WebSocket
    # client of its own), each run on a fresh server, the targets side by side per scenario:
    # push (1,000 subscribers of one room, 2,000 messages/s offered open loop, 10 s), a connect
    # storm (19,000 held, 1,000 at a time: 500 per process) and idle subscriptions (19,000, 200
    # at a time per process, as idle_run)
    for target in $TARGETS; do
      port=$(free_port); serve "$target" "$port"
      gen2 push --timeout 240 --url "http://127.0.0.1:$port" --server-pid "$SERVER_PID" $(join_flag "$target") \
        --subscribers 1000 --rate 2000 --window 4000 --duration 10 --drain 20 \
        --connect-concurrency 200 --join-concurrency 64 \
        --label "gen2-push-$target-1000" --json "$OUT/gen2-push-$target-1000.json" || true
      stop "$SERVER_PID"
    done
    for target in $TARGETS; do gen2_connects "$target" storm 500; done
    for target in $TARGETS; do gen2_connects "$target" idle 200; done
    python3 - "$OUT"/gen2-*.json <<'PY'
import json, sys
for path in sys.argv[1:]:
    r = json.load(open(path))
    print(f"{r['label']}: {r['connected']}/{r['subscribers']} connected, {r['connects_per_second']:.0f} connects/s, "
          f"{r['deliveries_per_second']:.0f} deliveries/s, p99 {r['latency']['p99_ms']:.0f} ms, "
          f"lost {r['lost']}, dup {r['duplicated']}, {r['server_rss_per_connection_kib']:.2f} KiB/conn")
PY
    ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
done

# The chart, when this run made fan-out reports.
if compgen -G "$OUT/fanout-*.json" >/dev/null; then
  "$BIN/tidings-bench" chart "$OUT"/fanout-*.json --out "$OUT/fanout.svg"
fi
