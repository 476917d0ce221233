#!/usr/bin/env bash
# Installs pgwarden on one node: the binary, the systemd unit, the polkit
# rule, the example config, an API token, the state directory, the docs and
# the monitoring files. Safe to run again (an upgrade): it never overwrites
# a config, a token or the state directory's contents.
#
#   deploy/install.sh [--binary PATH] [--destdir DIR] [--user postgres]
#
#   --binary   the pgwarden binary to install (default: build it with
#              `cargo build --release -p pgwarden` and use target/release/pgwarden)
#   --destdir  install under DIR instead of / (packaging, tests); ownership is
#              still set when the user exists
#   --user     the user the daemon runs as (default postgres; the unit's User=)
#
# Afterwards: edit /etc/pgwarden/pgwarden.yaml (same file on both nodes but
# `local_node`), `pgwarden check-config`, then
# `systemctl daemon-reload && systemctl enable --now pgwarden`.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
binary=""
destdir=""
user="postgres"
while (($#)); do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --destdir) destdir="${2%/}"; shift 2 ;;
        --user) user="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -z "$binary" ]]; then
    (cd "$here" && cargo build --release -p pgwarden)
    binary="$here/target/release/pgwarden"
fi
[[ -x "$binary" ]] || { echo "install.sh: $binary is not an executable; build it or pass --binary" >&2; exit 2; }
"$binary" --version >/dev/null || { echo "install.sh: $binary does not run" >&2; exit 2; }

if [[ -z "$destdir" && "$(id -u)" != 0 ]]; then
    echo "install.sh: run as root (or with --destdir to stage the files)" >&2
    exit 2
fi
if id "$user" >/dev/null 2>&1; then
    have_user=1
else
    have_user=0
    if [[ -z "$destdir" ]]; then
        echo "install.sh: user $user does not exist; install PostgreSQL first or pass --user" >&2
        exit 2
    fi
fi
owned() { # owned OWNER:GROUP PATH: chown when the daemon user exists
    ((have_user)) && chown "$1" "$2" || true
}

d="$destdir"
install -d -m 0755 "$d/usr/bin" "$d/etc/systemd/system" "$d/etc/polkit-1/rules.d" \
    "$d/usr/share/doc/pgwarden/examples" "$d/usr/share/pgwarden/prometheus" \
    "$d/usr/share/pgwarden/grafana" "$d/usr/share/pgwarden/haproxy"
install -m 0755 "$binary" "$d/usr/bin/pgwarden"

# The unit; its User= follows --user.
sed "s/^User=postgres$/User=$user/; s/^Group=postgres$/Group=$user/" \
    "$here/deploy/systemd/pgwarden.service" > "$d/etc/systemd/system/pgwarden.service"
chmod 0644 "$d/etc/systemd/system/pgwarden.service"
sed "s/subject.user !== \"postgres\"/subject.user !== \"$user\"/" \
    "$here/deploy/systemd/49-pgwarden.rules" > "$d/etc/polkit-1/rules.d/49-pgwarden.rules"
chmod 0644 "$d/etc/polkit-1/rules.d/49-pgwarden.rules"

# Config: readable by the daemon's group only; never overwritten.
install -d -m 0750 "$d/etc/pgwarden"
owned "root:$user" "$d/etc/pgwarden"
if [[ ! -e "$d/etc/pgwarden/pgwarden.yaml" ]]; then
    install -m 0640 "$here/config/pgwarden.example.yaml" "$d/etc/pgwarden/pgwarden.yaml"
    owned "root:$user" "$d/etc/pgwarden/pgwarden.yaml"
fi
# The API token: 32 random bytes, hex. Both nodes need the same one: copy
# this file to the other node instead of letting it make its own.
if [[ ! -e "$d/etc/pgwarden/api.token" ]]; then
    (umask 0077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$d/etc/pgwarden/api.token")
    chmod 0640 "$d/etc/pgwarden/api.token"
    owned "root:$user" "$d/etc/pgwarden/api.token"
fi

# state_dir: the journal and the audit log. systemd's StateDirectory= makes
# it too; creating it here lets `pgwarden run` work without systemd.
install -d -m 0700 "$d/var/lib/pgwarden"
owned "$user:$user" "$d/var/lib/pgwarden"

# Docs and the files an operator copies elsewhere.
install -m 0644 "$here"/docs/*.md "$here/README.md" "$d/usr/share/doc/pgwarden/"
install -m 0644 "$here/config/pgwarden.example.yaml" "$here/deploy/systemd/pgwarden.sudoers" \
    "$d/usr/share/doc/pgwarden/examples/"
install -d -m 0755 "$d/usr/share/doc/pgwarden/examples/pgwarden.service.d"
install -m 0644 "$here/deploy/systemd/pgwarden.service.d/sudo.conf" \
    "$d/usr/share/doc/pgwarden/examples/pgwarden.service.d/"
install -m 0644 "$here"/deploy/prometheus/*.yml "$d/usr/share/pgwarden/prometheus/"
install -m 0644 "$here/deploy/grafana/dashboard.json" "$d/usr/share/pgwarden/grafana/"
install -m 0644 "$here/deploy/haproxy/haproxy.cfg" "$d/usr/share/pgwarden/haproxy/"

echo "installed pgwarden $("$binary" --version | awk '{print $2}') under ${d:-/}"
echo "next: edit $d/etc/pgwarden/pgwarden.yaml, then pgwarden check-config, then"
echo "      systemctl daemon-reload && systemctl enable --now pgwarden"
