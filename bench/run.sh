#!/usr/bin/env bash
# Builds pgwarden and the bench (release) and runs the bench; arguments go to the bench.
#   bench/run.sh                 full run (60 s footprint window, about 1.5 minutes)
#   bench/run.sh --duration 10   quick run
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p pgwarden -p pgwarden-bench
exec "${CARGO_TARGET_DIR:-target}/release/pgwarden-bench" "$@"
