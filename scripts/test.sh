#!/usr/bin/env bash
# README's test command on a fresh machine: installs what the tests need
# (scripts/install-test-deps.sh: PostgreSQL 15, promtool, amtool, chromium,
# haproxy, nftables, iproute2, ..., cargo-nextest, cargo-deb), then builds
# and runs every test. Arguments go to `cargo nextest run`, e.g.
# `scripts/test.sh -p pgwarden-tests --test deploy`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
if (($#)); then
    cargo build --workspace && cargo nextest run "$@"
else
    cargo build --workspace && cargo nextest run --workspace
fi
