#!/usr/bin/env bash
# The test command (README, and what .ci/run calls): builds once and runs
# every test of the workspace. Later issues add the service checks here
# (PostgreSQL, Redis, Kafka: answer, or install and start them).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
fi

cargo test --workspace --locked "$@"
