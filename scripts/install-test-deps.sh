#!/usr/bin/env bash
# Installs what the build and the tests need on a Debian 12 machine that has Rust: the
# Debian packages below (only those missing), the `postgres` user the test
# clusters run as, cargo-nextest and cargo-deb. Non-interactive; as root, or
# through `sudo -n` when not root. Safe to run again: it installs nothing
# that is already there. Used by scripts/test.sh and .ci/run.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if [[ "$(id -u)" == 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    as_root=(false)
fi

# PostgreSQL 15 server binaries and the unprivileged user the servers run as.
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql-15)
command -v runuser >/dev/null || need+=(util-linux)
# promtool and amtool check the shipped alert rules and Alertmanager config.
command -v promtool >/dev/null || need+=(prometheus)
command -v amtool >/dev/null || need+=(prometheus-alertmanager)
# systemd-analyze verifies the unit, visudo the sudoers example.
command -v systemd-analyze >/dev/null || need+=(systemd)
[ -x /usr/sbin/visudo ] || need+=(sudo)
# The TLS test makes certificates with openssl and asks with curl.
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
# The INI rewriter is checked against Python's own configparser.
command -v python3 >/dev/null || need+=(python3)
# The network-cut fault tests drop a node's packets with nftables.
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need+=(nftables)
# The testbed of real hosts (tests/tests/testbed.rs) builds network namespaces,
# veth pairs and a bridge with iproute2, cuts links with nftables inside them,
# and starts the daemons as postgres with setpriv (util-linux, as runuser).
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need+=(iproute2)
command -v setpriv >/dev/null || need+=(util-linux)
# Load balancer checks of /primary and /replica run through a real HAProxy.
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
# The application's door through a pooler: a real pgbouncer (tests/tests/pgbouncer.rs).
[ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
# The etcd operation lock (tests/tests/etcd_lock.rs) runs against a real
# etcd member; etcd-server's own service is kept from starting (policy-rc.d).
[ -x /usr/bin/etcd ] || need+=(etcd-server)
# The etcd lock's client (etcd-client) compiles etcd's .proto files when it
# builds: protoc (3.21 in Debian 12 builds it).
command -v protoc >/dev/null || need+=(protobuf-compiler)
# The status page is checked in a real headless browser.
[ -x /usr/bin/chromium ] || need+=(chromium)
# The Debian package test (tests/tests/package.rs) builds, installs and
# removes the .deb with dpkg; the man page is checked as a gzip file.
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v gzip >/dev/null || need+=(gzip)
# cargo-deb computes the package's Depends: with dpkg-shlibdeps.
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)

if ((${#need[@]})); then
    # Sort -u: util-linux may be asked for twice.
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    if [[ "${as_root[*]}" == false ]]; then
        echo "install-test-deps.sh: need root (or sudo without a password) to install: ${need[*]}" >&2
        exit 1
    fi
    echo "install-test-deps.sh: installing ${need[*]}"
    "${as_root[@]}" apt-get update -qq
    # Do not let the packages start their own services (Debian's postgresql
    # would create and start a default cluster on port 5432, haproxy and
    # prometheus their daemons): policy-rc.d exit 101 means "not allowed".
    "${as_root[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d"
    trap '"${as_root[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
    "${as_root[@]}" apt-get install -y -qq "${need[@]}"
    "${as_root[@]}" rm -f /usr/sbin/policy-rc.d
    trap - EXIT
fi
id postgres >/dev/null 2>&1 ||
    "${as_root[@]}" useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
# Builds the Debian package of tests/tests/package.rs.
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
