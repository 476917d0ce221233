//! TLS on the listener: with `tls:` both daemons serve HTTPS only, the CLI
//! and the daemons trust exactly the configured certificate, and a whole
//! switchover (the peer lock, stopping the other node) runs over HTTPS.
//! Certificates are made by `openssl` (Debian's openssl package).

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pgwarden_testkit::poll_until;
use util::{pgwarden_bin, Env, Options};

/// A CA, and a certificate for 127.0.0.1 it signed, in `dir`: returns the
/// CA certificate, the chain file (leaf, then CA) and the leaf's key.
fn ca_and_leaf(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (ca_crt, leaf, key) = util::certs::ca_and_leaf(dir, name);
    let chain = dir.join(format!("{name}-chain.crt"));
    let both = std::fs::read_to_string(&leaf).unwrap() + &std::fs::read_to_string(&ca_crt).unwrap();
    std::fs::write(&chain, both).unwrap();
    (ca_crt, chain, key)
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl (apt-get install curl)")
}

fn cli(args: &[&str]) -> Output {
    Command::new(pgwarden_bin()).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn both_daemons_serve_https_and_a_switchover_runs_over_it() {
    let (mut env, app) = Env::start_with_app(Options::default());
    let dir = tempfile::tempdir().unwrap();
    // The chain file holds the CA too: with no tls.ca_file, the daemons
    // trust the certificates of tls.cert_file, so each other.
    let (ca_crt, cert, key) = ca_and_leaf(dir.path(), "daemons");
    let tls = format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n",
        cert.display(),
        key.display()
    );
    let mut urls = Vec::new();
    for i in 0..2 {
        env.daemons[i].kill();
        let cfg = env.daemons[i].config.clone();
        let text = std::fs::read_to_string(&cfg).unwrap();
        let edited = text.replace("http://127.0.0.1", "https://127.0.0.1") + &tls;
        std::fs::write(&cfg, edited).unwrap();
        let url = env.layout.api_url(i).replacen("http://", "https://", 1);
        env.daemons[i] = util::Daemon::spawn(&cfg, url.clone(), &[]);
        urls.push(url);
    }
    let ca = ca_crt.to_str().unwrap();

    // The CLI over HTTPS, trusting the configured certificate.
    let status = poll_until(
        Duration::from_secs(20),
        "pgwarden status over https",
        || {
            let o = cli(&["status", "--url", &urls[0], "--ca-file", ca]);
            (o.status.success() && text(&o).contains("pg-b")).then_some(o)
        },
    )
    .unwrap_or_else(|e| {
        let o = cli(&["status", "--url", &urls[0], "--ca-file", ca]);
        panic!("{e}: {}\n{}", text(&o), env.daemons[0].log_text())
    });
    assert!(text(&status).contains("pg-a"), "{}", text(&status));

    // HTTPS only, and trusted only through the configured certificate.
    let health = format!("{}/health", urls[1]);
    let ok = poll_until(Duration::from_secs(20), "/health 200 over https", || {
        let o = curl(&[
            "--cacert",
            ca,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &health,
        ]);
        (String::from_utf8_lossy(&o.stdout) == "200").then_some(())
    });
    ok.unwrap_or_else(|e| panic!("{e}\n{}", env.daemons[1].log_text()));
    let untrusted = curl(&[&health]);
    assert_eq!(
        untrusted.status.code(),
        Some(60),
        "an unknown CA is refused: {}",
        text(&untrusted)
    );
    // A plain request gets the TLS server's alert back, no HTTP answer:
    // curl reads those bytes as a status-less HTTP/0.9 reply and refuses
    // it (exit 1). A daemon that served plain HTTP, a refused connection
    // (7) or a timeout (28) all fail differently.
    let plain = curl(&[&health.replacen("https://", "http://", 1)]);
    assert_eq!(
        plain.status.code(),
        Some(1),
        "plain HTTP gets no HTTP answer: {}",
        text(&plain)
    );
    assert!(
        text(&plain).contains("Received HTTP/0.9 when not allowed"),
        "plain HTTP gets no HTTP answer: {}",
        text(&plain)
    );
    let other = tempfile::tempdir().unwrap();
    let (wrong_ca, _, _) = ca_and_leaf(other.path(), "other");
    let o = cli(&[
        "status",
        "--url",
        &urls[0],
        "--ca-file",
        wrong_ca.to_str().unwrap(),
    ]);
    // Refused for the certificate (the daemon cannot be asked: exit 2), not
    // for a flag the CLI does not know or an unreachable daemon: the text says.
    assert_eq!(
        o.status.code(),
        Some(2),
        "another certificate is not trusted: {}",
        text(&o)
    );
    assert!(
        text(&o).contains("invalid peer certificate"),
        "another certificate is not trusted: {}",
        text(&o)
    );

    // A switchover through the CLI: the lock and the stop of pg-a go from
    // daemon to daemon over HTTPS.
    let token = env.cluster.secret_file(pgwarden_testkit::Secret::ApiToken);
    let o = cli(&[
        "switchover",
        "--to",
        "pg-b",
        "--yes",
        "--url",
        &urls[1],
        "--ca-file",
        ca,
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "{}\n--- pg-b daemon ---\n{}",
        text(&o),
        env.daemons[1].log_text()
    );
    assert_eq!(
        env.cluster.psql(1, "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
    assert!(
        !env.cluster.is_running(0),
        "pg-a stopped by its own daemon over HTTPS"
    );
    let before = app.acks().len();
    app.wait_acks(before + 3);
}

#[test]
fn bad_tls_settings_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, _) = ca_and_leaf(dir.path(), "c");
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let config = |api: &str, key: &Path| {
        format!(
            "cluster: c\nlocal_node: a\nlisten: 127.0.0.1:0\nstate_dir: {d}/state\napi_token_file: {t}\n\
             monitor: {{user: m}}\nreplication: {{slot: s, application_name: x, user: r}}\n\
             nodes:\n  - {{name: a, host: 127.0.0.1, port: 5432, api: '{api}'}}\n  - {{name: b, host: 127.0.0.2, port: 5432}}\n\
             tls:\n  cert_file: {c}\n  key_file: {k}\n",
            d = dir.path().display(),
            t = token.display(),
            c = cert.display(),
            k = key.display(),
        )
    };
    let check = |yaml: String| {
        let f = dir.path().join("pgwarden.yaml");
        std::fs::write(&f, yaml).unwrap();
        cli(&["check-config", "--config", f.to_str().unwrap()])
    };
    let missing_key = check(config(
        "https://127.0.0.1:8008",
        &dir.path().join("nope.key"),
    ));
    assert_eq!(missing_key.status.code(), Some(2), "{}", text(&missing_key));
    assert!(
        text(&missing_key).contains("cannot read tls.key_file"),
        "{}",
        text(&missing_key)
    );
    // A certificate is not a key.
    let not_a_key = check(config("https://127.0.0.1:8008", &cert));
    assert_eq!(not_a_key.status.code(), Some(2));
    assert!(
        text(&not_a_key).contains("no usable PEM private key"),
        "{}",
        text(&not_a_key)
    );
    let http_api = check(config("http://127.0.0.1:8008", &cert));
    assert_eq!(http_api.status.code(), Some(2));
    assert!(
        text(&http_api).contains("must be an https:// URL"),
        "{}",
        text(&http_api)
    );
}
