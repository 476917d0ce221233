#!/usr/bin/env bash
# Builds pgwarden and the door bench (release) and runs it; arguments go to the bench.
#   bench/door.sh              5 switchovers with pgbouncer, 5 with the stop/rewrite/start path
#   bench/door.sh --runs 10
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p pgwarden -p pgwarden-bench
exec "${CARGO_TARGET_DIR:-target}/release/pgwarden-door-bench" "$@"
