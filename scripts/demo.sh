#!/usr/bin/env bash
# README's first command on a fresh machine: installs the PostgreSQL 15
# server binaries when none are there (Debian's postgresql-15, without
# letting it start its own cluster), then runs `cargo run -p pgwarden -- demo`.
# Arguments go to `pgwarden demo` (--dir DIR, --bin-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        echo "demo.sh: PostgreSQL 15 is not installed; as root: apt-get install -y postgresql-15" >&2
        exit 1
    fi
    echo "demo.sh: installing postgresql-15"
    "${as_root[@]}" apt-get update -qq
    # Debian's package would create and start a default cluster: not allowed.
    "${as_root[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d"
    trap '"${as_root[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
    "${as_root[@]}" apt-get install -y -qq postgresql-15
    "${as_root[@]}" rm -f /usr/sbin/policy-rc.d
    trap - EXIT
fi
exec cargo run -p pgwarden -- demo "$@"
