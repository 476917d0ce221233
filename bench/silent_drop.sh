#!/usr/bin/env bash
# Builds pgwarden and the silent-drop bench and runs it: the first statement of an
# operation after the daemon's admin connection was silently dropped (testbed, nftables).
#   bench/silent_drop.sh                                  this build only (after)
#   bench/silent_drop.sh before=/path/to/main/pgwarden    main's binary, then this build's
# Arguments are LABEL=BINARY pairs; this build's binary is added last as `after`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p pgwarden -p pgwarden-bench
target="${CARGO_TARGET_DIR:-target}/release"
exec "$target/pgwarden-silent-drop" "$@" "after=$target/pgwarden"
