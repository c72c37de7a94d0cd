#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs and starts what the tests need
# (PostgreSQL, OpenSSL, Redis, nginx, Node.js with the interop test's npm clients, Chromium
# with playwright-core for the browser tests), checks that the committed playground build is
# current, then runs formatting, lints and every test on SQLite and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

apt_updated=0
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages ($*) and not root: install them first" >&2
    exit 1
  fi
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL -------------------------------------------------------------------------------
pg_url_default="postgres://postgres:postgres@127.0.0.1:5432/test"
start_postgres() {
  have pg_ctlcluster || apt_install postgresql postgresql-client
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    log "starting PostgreSQL"
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
      pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && break
      sleep 1
    done
    pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL did not start" >&2; exit 1; }
  fi
  # A fresh install asks TCP clients for a password: give `postgres` a known one (where the
  # server trusts local clients, as on a developer machine, it is simply not asked for).
  if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
    su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='test'\"" | grep -q 1 \
      || su postgres -c "createdb test"
  fi
}

if [ -z "${TIDINGS_TEST_DATABASE_URL:-}" ]; then
  start_postgres
  export TIDINGS_TEST_DATABASE_URL="$pg_url_default"
fi
have openssl || apt_install openssl
# The scale-out tests start (and kill) their own redis-server; the cluster and Sentinel tests
# (tests/redis_cluster.rs) also make a cluster with redis-cli and run `redis-server --sentinel`
# (Redis 7 or later: sharded pub/sub); the deployment test runs nginx.
have redis-server || apt_install redis-server
have redis-cli || apt_install redis-tools
have nginx || apt_install nginx-light || apt_install nginx

# --- Node.js (tests/interop: real npm GraphQL clients against the server) ---------------------
# Debian's own nodejs is 18; the interop clients (graphql-ws 6) want 20, which this project's
# machines come with. The apt fallback is for a machine that has no Node.js at all.
{ have node && have npm; } || apt_install nodejs npm
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || echo "warning: Node.js $node_major is older than tests/interop wants (20)" >&2
log "npm ci (tests/interop)"
npm ci --prefix tests/interop --no-audit --no-fund

# --- The playground (playground/: GraphiQL and the chat client, built into playground/dist) ---
# The binary embeds the committed build; a fresh build must equal it.
log "npm ci (playground) and a rebuild checked against playground/dist"
npm ci --prefix playground --no-audit --no-fund
bash scripts/check-playground.sh

# --- Browser tests (tests/browser: Debian's chromium, driven by playwright-core) --------------
# No browser download: playwright-core drives the distribution's chromium.
[ -x /usr/bin/chromium ] || apt_install chromium
log "npm ci (tests/browser)"
npm ci --prefix tests/browser --no-audit --no-fund

# --- Rust ------------------------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

log "cargo test (SQLite and PostgreSQL)"
cargo test --workspace
