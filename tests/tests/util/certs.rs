//! Test certificates made with `openssl` (Debian's openssl package): a CA
//! and a server certificate for 127.0.0.1 it signed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e} (apt-get install openssl)"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` in `dir`, and (when `leaf`) a server certificate for
/// 127.0.0.1 it signed: (CA certificate, leaf certificate, leaf key).
pub fn ca_and_leaf(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}")).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca_key, ca_crt) = (p("ca.key"), p("ca.crt"));
    let subject = format!("/CN=pgwarden test CA {name}");
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", &subject];
    ca.extend(ec);
    ca.extend(["-keyout", &ca_key, "-out", &ca_crt]);
    openssl(&ca);
    let (key, csr, leaf, ext) = (p("leaf.key"), p("leaf.csr"), p("leaf.crt"), p("ext.cnf"));
    let mut req = vec!["req", "-subj", "/CN=127.0.0.1"];
    req.extend(ec);
    req.extend(["-keyout", &key, "-out", &csr]);
    openssl(&req);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &leaf,
    ]);
    // The walreceiver and the rebuild tools read the CA as postgres.
    for f in [&ca_crt, &leaf] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    (ca_crt.into(), leaf.into(), key.into())
}
