#!/usr/bin/env bash
# README's test command on a fresh machine: installs what the tests need
# (scripts/install-test-deps.sh: PostgreSQL 15, promtool, amtool, chromium,
# haproxy, nftables, iproute2, ..., cargo-nextest, cargo-deb), then builds
# and runs every test. Arguments go to `cargo nextest run`, e.g.
# `scripts/test.sh -p pgwarden-tests --test deploy`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
# tests/tests/package.rs packages the release binary without the `demo`
# feature (scripts/build-deb.sh). From scratch that build takes minutes,
# more than nextest gives one test: build it first, the test's own build is
# then a no-op.
cargo build --release --locked -p pgwarden --no-default-features
if (($#)); then
    cargo build --workspace && cargo nextest run "$@"
else
    cargo build --workspace && cargo nextest run --workspace
fi
