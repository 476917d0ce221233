//! deploy/install.sh, staged into a temporary root: every file where the
//! unit and the docs say, with tight permissions, and a second run (an
//! upgrade) keeps the operator's config and token.

mod util;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use util::mode;

const INSTALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/install.sh");

fn install(root: &Path) -> String {
    let out = Command::new("bash")
        .arg(INSTALL)
        .arg("--binary")
        .arg(util::pgwarden_bin())
        .arg("--destdir")
        .arg(root)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "install.sh failed:\n{text}");
    text
}

fn uid_of(user: &str) -> Option<u32> {
    let name = std::ffi::CString::new(user).unwrap();
    // SAFETY: a valid C string; the result is read at once, before any
    // other getpw* call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    // SAFETY: non-null means a valid passwd record.
    (!pw.is_null()).then(|| unsafe { (*pw).pw_uid })
}

#[test]
fn install_sh_stages_every_file_with_tight_permissions_and_keeps_them_on_upgrade() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    install(r);

    let expect = [
        ("usr/bin/pgwarden", 0o755),
        ("etc/systemd/system/pgwarden.service", 0o644),
        ("etc/polkit-1/rules.d/49-pgwarden.rules", 0o644),
        ("etc/pgwarden", 0o750),
        ("etc/pgwarden/pgwarden.yaml", 0o640),
        ("etc/pgwarden/api.token", 0o640),
        ("var/lib/pgwarden", 0o700),
        ("usr/share/doc/pgwarden/runbook.md", 0o644),
        ("usr/share/doc/pgwarden/examples/pgwarden.sudoers", 0o644),
        ("usr/share/pgwarden/prometheus/alerts.yml", 0o644),
        ("usr/share/pgwarden/grafana/dashboard.json", 0o644),
    ];
    for (path, want) in expect {
        assert_eq!(mode(&r.join(path)), want, "mode of {path}");
    }
    // Owned by the daemon's user, which must exist: .ci/run creates it, and
    // without it install.sh's chown is not checked at all.
    let pg = uid_of("postgres").unwrap_or_else(|| {
        panic!(
            "no `postgres` user: create it as .ci/run does (`useradd --system --home-dir \
             /var/lib/postgresql --shell /bin/bash postgres`, or apt-get install -y postgresql-15)"
        )
    });
    let state = std::fs::metadata(r.join("var/lib/pgwarden")).unwrap();
    assert_eq!(state.uid(), pg, "state_dir belongs to the daemon user");
    let token = std::fs::read_to_string(r.join("etc/pgwarden/api.token")).unwrap();
    assert_eq!(token.len(), 64, "32 random bytes in hex: {token:?}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    let unit = std::fs::read_to_string(r.join("etc/systemd/system/pgwarden.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("User=postgres"));
    // The installed binary is the one given, and runs.
    let v = Command::new(r.join("usr/bin/pgwarden"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("pgwarden "));

    // An upgrade keeps what the operator made.
    let config = r.join("etc/pgwarden/pgwarden.yaml");
    std::fs::write(&config, "cluster: mine\n").unwrap();
    install(r);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "cluster: mine\n");
    assert_eq!(
        std::fs::read_to_string(r.join("etc/pgwarden/api.token")).unwrap(),
        token
    );
}

#[test]
fn install_sh_refuses_a_missing_binary_and_unknown_arguments() {
    let root = tempfile::tempdir().unwrap();
    for args in [
        vec!["--binary", "/nonexistent/pgwarden"],
        vec!["--frobnicate"],
    ] {
        let out = Command::new("bash")
            .arg(INSTALL)
            .args(&args)
            .arg("--destdir")
            .arg(root.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("install.sh: "), "{args:?}: {err}");
    }
    assert!(
        std::fs::read_dir(root.path()).unwrap().next().is_none(),
        "nothing installed"
    );
}
