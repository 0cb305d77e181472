#!/usr/bin/env bash
# The test command (README, and what .ci/run calls). Makes sure the services
# the tests use answer (PostgreSQL on 127.0.0.1:5432 with trust auth, Redis
# on 127.0.0.1:6379, and the redis-server binary the cluster tests start
# privately), installing and starting them from Debian's packages when they
# do not, then builds the web console (Node.js, npm) and runs its unit tests,
# builds once and runs every test of the workspace, drives the console in
# Chromium, then fuzzes the HTTP API from its OpenAPI document
# (scripts/fuzz-api.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

pg_up() {
    command -v pg_isready >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q
}

ensure_postgres() {
    if [ -n "${SOJOURN_TEST_DATABASE_URL:-}" ] || pg_up; then
        return
    fi
    echo "PostgreSQL does not answer on 127.0.0.1:5432: starting it" >&2
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
        # A fresh Debian cluster asks for passwords over TCP; the tests, like
        # the developer machines, use trust auth on the loopback.
        for hba in /etc/postgresql/*/main/pg_hba.conf; do
            if ! grep -q "sojourn-tests" "$hba"; then
                as_root sed -i '1i host all all 127.0.0.1/32 trust # sojourn-tests\nhost all all ::1/128 trust # sojourn-tests' "$hba"
            fi
        done
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
        if pg_up; then return; fi
        sleep 1
    done
    echo "PostgreSQL did not start" >&2
    exit 1
}

redis_up() {
    command -v redis-cli >/dev/null 2>&1 && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG
}

ensure_redis() {
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        echo "redis-server not found: installing it" >&2
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server
    fi
    if redis_up; then
        return
    fi
    echo "Redis does not answer on 127.0.0.1:6379: starting it" >&2
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/sojourn-tests.log
    for _ in $(seq 1 30); do
        if redis_up; then return; fi
        sleep 0.2
    done
    echo "Redis did not start" >&2
    exit 1
}

ensure_tools() {
    local missing=()
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
    if [ "${#missing[@]}" -gt 0 ]; then
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
}

# tansu, pinned; each Kafka test starts its own broker on a free port with
# its own SQLite file (sojourn_testkit::PrivateKafka).
TANSU_VERSION=0.6.0
ensure_tansu() {
    local bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
    if [ -n "${SOJOURN_TEST_TANSU:-}" ]; then
        return
    fi
    if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
        return
    fi
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
        return
    fi
    echo "tansu $TANSU_VERSION (the Kafka-protocol broker of the tests) not found: installing it (about 13 minutes, once)" >&2
    cargo install tansu --version "$TANSU_VERSION" --locked --features libsql
}

# Node.js (20.19 or newer: Vite and Playwright need it) and Debian's
# Chromium, for the console's build, its tests and its end-to-end run.
node_ok() {
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 &&
        node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'
}

ensure_node() {
    if node_ok; then return; fi
    echo "Node.js 20.19+ not found: installing Debian's nodejs and npm" >&2
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
    if ! node_ok; then
        echo "the console needs Node.js 20.19 or newer (found $(node --version 2>/dev/null || echo none)): install it (https://nodejs.org) and run this again" >&2
        exit 1
    fi
}

ensure_chromium() {
    if [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
        echo "chromium not found: installing Debian's (the console's end-to-end test drives it)" >&2
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
    fi
    export CHROMIUM="${CHROMIUM:-$(command -v chromium)}"
}

ensure_tools
ensure_postgres
ensure_redis
ensure_tansu
ensure_node
ensure_chromium
# The console from source: its packages, lint, types, unit tests, then its
# build into console/dist, which the binary embeds (built next).
(
    cd console
    npm ci --no-audit --no-fund --loglevel=error
    # Its API types, from console/openapi.json (a Rust test keeps that
    # the API's document; CI checks both are committed as generated).
    npm run api-types --silent
    npm run lint
    npm run typecheck
    npm test
    npm run build
)
cargo test --workspace --locked "$@"
# The console in Chromium against a real `sojourn dev` (the binary the
# tests built): screenshots in console/e2e/out.
if [ "$#" -eq 0 ]; then
    SOJOURN_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/sojourn" node console/e2e/run.mjs
fi
# The API against its own OpenAPI document (schemathesis; about 90 s).
if [ "$#" -eq 0 ]; then
    bash scripts/fuzz-api.sh
fi
