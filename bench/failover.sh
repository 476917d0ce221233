#!/usr/bin/env bash
# Builds pgwarden and the failover bench (release) and runs it; arguments go to the bench.
#   bench/failover.sh              5 failovers (primary killed) and 5 switchovers, medians
#   bench/failover.sh --runs 10
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p pgwarden -p pgwarden-bench
exec "${CARGO_TARGET_DIR:-target}/release/pgwarden-failover-bench" "$@"
