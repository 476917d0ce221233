#!/usr/bin/env bash
# Builds pgwarden and the soak (release) and runs it; arguments go to the soak.
#   bench/soak.sh                                   30 minutes, standby restarted every 60 s
#   bench/soak.sh --minutes 3 --restart-every 20s   a short run
# Prints the daemons' RSS, fds and connections per sample, then a verdict; exits non-zero
# if something grew.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p pgwarden -p pgwarden-bench
exec "${CARGO_TARGET_DIR:-target}/release/pgwarden-soak" "$@"
