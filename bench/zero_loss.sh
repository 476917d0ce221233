#!/usr/bin/env bash
# Builds pgwarden and the zero-loss bench (release) and runs it; arguments go to the bench.
#   bench/zero_loss.sh                     20 repetitions of each mode (failover after a
#                                          postmaster SIGKILL, after pg_ctl stop -m immediate,
#                                          switchover), each on a fresh cluster, writers running
#   bench/zero_loss.sh --reps 5 --modes sigkill,switchover
# Exits non-zero if an acknowledged write is missing on the new primary.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p pgwarden -p pgwarden-bench
exec "${CARGO_TARGET_DIR:-target}/release/pgwarden-zero-loss" "$@"
