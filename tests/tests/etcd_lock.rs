//! The operation lock as an etcd lease (`lock.etcd`), against a real etcd
//! (Debian's etcd-server) and real two-node clusters: the token is
//! journaled, etcd down refuses operations while monitoring goes on, a
//! lease lost mid-operation stops it before its next step, and a killed
//! holder's lock passes to the other daemon after the TTL while its own
//! resume is refused by the token.

mod util;

use std::time::{Duration, Instant};

use pgwarden_testkit::etcd::Etcd;
use pgwarden_testkit::poll_until;
use util::{Env, Options};

/// A short TTL keeps the tests that wait for it short.
const TTL: Duration = Duration::from_secs(4);

/// The lock section; its first endpoint is a port nothing listens on, so
/// every test also shows a dead member is skipped for the next one.
fn lock_yaml(etcd: &Etcd, ttl: Duration) -> String {
    format!(
        "lock:\n  etcd:\n    endpoints: [http://127.0.0.1:{}, {}]\n    prefix: /pgwarden-test\n    ttl: {}s\n",
        pgwarden_testkit::free_port(),
        etcd.endpoint(),
        ttl.as_secs()
    )
}

/// The lock key of the test cluster (`<prefix>/<cluster>/lock`).
fn lock_key(env: &Env) -> String {
    let cfg = std::fs::read_to_string(&env.daemons[0].config).unwrap();
    let cluster = cfg
        .lines()
        .find_map(|l| l.strip_prefix("cluster:"))
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_owned();
    format!("/pgwarden-test/{cluster}/lock")
}

/// A cluster with the application, each daemon with the etcd lock and
/// `fault[i]` as its PGWARDEN_FAULT_PAUSE (empty: none).
fn start(etcd: &Etcd, faults: [&str; 2]) -> (Env, util::App) {
    start_with_ttl(etcd, faults, TTL)
}

fn start_with_ttl(etcd: &Etcd, faults: [&str; 2], ttl: Duration) -> (Env, util::App) {
    let daemon_env = faults
        .iter()
        .map(|f| {
            if f.is_empty() {
                vec![]
            } else {
                vec![("PGWARDEN_FAULT_PAUSE".to_owned(), (*f).to_owned())]
            }
        })
        .collect();
    let (env, app) = Env::start_with_app(Options {
        daemon_env,
        config_extra: lock_yaml(etcd, ttl),
        ..Default::default()
    });
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    (env, app)
}

fn switchover(env: &Env, from: usize, reason: &str) -> util::Response {
    let body = serde_json::json!({"target": "pg-b", "reason": reason}).to_string();
    env.daemons[from].post("/v1/switchover", &body, &env.token())
}

fn wait_paused(env: &Env, i: usize) {
    poll_until(Duration::from_secs(60), "the fault point", || {
        env.daemons[i]
            .log_text()
            .contains("fault injection: pausing the operation here")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", env.daemons[i].log_text()));
}

fn wait_done(env: &Env, i: usize, id: &str) -> serde_json::Value {
    poll_until(Duration::from_secs(120), "the operation to end", || {
        let op = env.daemons[i].get(&format!("/v1/operations/{id}")).json();
        (op["state"] != "running").then_some(op)
    })
    .unwrap()
}

#[test]
fn a_switchover_with_the_etcd_lock_journals_its_token_and_releases_it() {
    let etcd = Etcd::start().unwrap();
    let (env, app) = start(&etcd, ["", ""]);
    app.wait_acks(3);
    let r = env.daemons[0].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "etcd lock"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    let op = r.json();
    let token: i64 = op["facts"]["lock_token"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no lock_token in the journal: {op}"));
    assert!(token > 0, "{op}");
    let note = op["facts"]["etcd_lock"].as_str().unwrap();
    assert!(
        note.contains(&format!("revision {token} (the fencing token)")),
        "{note}"
    );
    // What the lock cost: taking it, and the checks before side effects.
    let checks = op["facts"]["etcd_lock_checks"].as_str().unwrap_or_default();
    assert!(checks.contains("checks before side effects"), "{op}");
    println!("plain http: {note}\nplain http: {checks}");
    assert!(
        op["facts"].get("peer_lock").is_none(),
        "etcd replaces the peers' lock: {op}"
    );
    // The journal on disk carries it too (what a resume reads).
    let file = pgwarden_testkit::state_dir(&env.cluster, 0)
        .join("operations")
        .join(format!("{}.json", op["id"].as_str().unwrap()));
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(on_disk["facts"]["lock_token"], token.to_string().as_str());
    // A daemon configured without lock.etcd that asks for the lock through
    // the API is refused: the lock is in etcd.
    let r = env.daemons[1].post(
        "/v1/internal/lock",
        r#"{"holder": "pg-a", "operation_id": "op-without-etcd", "ttl_ms": 1000}"#,
        &env.token(),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("same `lock` section"), "{}", r.body);
    // Released at the end: the key is gone.
    assert_eq!(etcd.get(&lock_key(&env)), None);
    env.assert_invariants(&app, 1);
}

#[test]
fn with_etcd_down_operations_are_refused_and_monitoring_goes_on() {
    let mut etcd = Etcd::start().unwrap();
    let (env, _app) = start(&etcd, ["", ""]);
    etcd.stop();
    let r = env.daemons[1].post(
        "/v1/failover",
        r#"{"target": "pg-b", "reason": "etcd down"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains(&etcd.endpoint()) && msg.contains("operations are refused"),
        "{msg}"
    );
    let r = switchover(&env, 0, "etcd down");
    assert_eq!(r.status, 503, "{}", r.body);
    // A dry run says so too.
    let r = env.daemons[0].post(
        "/v1/switchover",
        r#"{"target": "pg-b", "reason": "etcd down", "dry_run": true}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let plan = r.json();
    assert_eq!(plan["would_proceed"], false, "{plan}");
    let check = plan["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "etcd_lock")
        .unwrap_or_else(|| panic!("no etcd_lock check: {plan}"))
        .clone();
    assert_eq!(check["verdict"], "fail", "{check}");
    assert!(
        check["message"]
            .as_str()
            .unwrap()
            .contains(&etcd.endpoint()),
        "{check}"
    );
    let r = env.daemons[0].put("/v1/sync", r#"{"mode": "sync"}"#, &env.token());
    assert_eq!(r.status, 503, "{}", r.body);
    // Monitoring does not depend on etcd.
    let h = env.daemons[0].get("/health");
    assert_eq!(h.status, 200, "{}", h.body);
    let m = env.daemons[1].get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m.body.contains("pgwarden_"), "{}", m.body);
    assert_eq!(
        env.daemons[0].get("/v1/operations").json()["operations"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "nothing was journaled"
    );
    assert_eq!(
        env.cluster.psql(0, "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
    // etcd back: operations are accepted again.
    etcd.start_again().unwrap();
    let r = env.daemons[0].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "etcd back"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn a_lease_revoked_mid_operation_stops_it_before_its_next_step() {
    let etcd = Etcd::start().unwrap();
    // Held 6 s after the fence's effect, before the next step's check.
    let (env, app) = start(&etcd, ["fence_application:after:6", ""]);
    let r = switchover(&env, 0, "revoked lease");
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    wait_paused(&env, 0);
    let (value, token, lease) = etcd.get(&lock_key(&env)).expect("the lock key");
    assert_eq!(value["operation_id"], id.as_str(), "{value}");
    assert_eq!(value["holder"], "pg-a", "{value}");
    // While held, the other daemon refuses its own operations: the lock
    // is shared through etcd.
    let r = switchover(&env, 1, "while held");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains(&format!("token {token}")), "{}", r.body);
    let r = env.daemons[1].put("/v1/sync", r#"{"mode": "async"}"#, &env.token());
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains(&format!("token {token}")), "{}", r.body);

    etcd.revoke(lease).unwrap();
    let op = wait_done(&env, 0, &id);
    assert_eq!(op["state"], "failed", "{op}");
    let failed: Vec<&serde_json::Value> = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{op}");
    assert_eq!(failed[0]["name"], "stop_old_primary", "{op}");
    let msg = failed[0]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("token {token}")) && msg.contains("did not run"),
        "{msg}"
    );
    // Nothing after the fence ran: pg-a is still the only primary, the
    // application still fenced.
    assert_eq!(
        env.cluster.psql(0, "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
    assert_eq!(
        env.cluster.psql(1, "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );
    assert_ne!(app.ctl("is-running").0, 0, "still fenced");
    // Its resume is refused by the token; aborting it gives up cleanly.
    let r = env.daemons[0].post(
        &format!("/v1/operations/{id}/resume?wait=true"),
        "",
        &env.token(),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("not resumed"), "{}", r.body);
    let r = env.daemons[0].post(&format!("/v1/operations/{id}/abort"), "", &env.token());
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn a_killed_holder_loses_the_lock_after_the_ttl_and_its_resume_is_refused() {
    let etcd = Etcd::start().unwrap();
    // pg-a's daemon is killed before its first step; pg-b's operation is
    // held 20 s before its first step so pg-a's resume meets it.
    let (mut env, app) = start(
        &etcd,
        ["fence_application:before", "fence_application:before:20"],
    );
    let r = switchover(&env, 0, "killed holder");
    assert_eq!(r.status, 202, "{}", r.body);
    let dead_id = r.json()["id"].as_str().unwrap().to_owned();
    wait_paused(&env, 0);
    let (_, dead_token, _) = etcd.get(&lock_key(&env)).expect("the lock key");
    let r = switchover(&env, 1, "while held");
    assert_eq!(r.status, 409, "held: {}", r.body);
    env.daemons[0].kill();
    let killed = Instant::now();

    // Nothing renews the lease any more: etcd drops the key after the TTL.
    let waited = poll_until(Duration::from_secs(60), "the lease to expire", || {
        etcd.get(&lock_key(&env))
            .is_none()
            .then(|| killed.elapsed())
    })
    .unwrap();
    println!(
        "the lock key of the killed holder was gone {:.1}s after the kill (ttl {}s)",
        waited.as_secs_f64(),
        TTL.as_secs()
    );
    assert!(waited <= TTL + Duration::from_secs(5), "{waited:?}");
    // The dead holder comes back (its host must answer for a switchover's
    // preflight), its operation interrupted; the other daemon takes the lock.
    env.restart_daemon(0, &[]);
    env.wait_all_polled();
    let r = switchover(&env, 1, "after the holder died");
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let (value, token, _) = etcd.get(&lock_key(&env)).expect("the new lock key");
    assert_eq!(value["operation_id"], id.as_str());
    assert!(token > dead_token, "{token} > {dead_token}");

    // The dead holder's resume is refused: its token no longer matches.
    let r = env.daemons[0].post(
        &format!("/v1/operations/{dead_id}/resume?wait=true"),
        "",
        &env.token(),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        msg.starts_with("not resumed")
            && msg.contains(&format!("token {dead_token}"))
            && msg.contains(&format!("operation {id} of the daemon beside pg-b")),
        "{msg}"
    );
    let op = env.daemons[0]
        .get(&format!("/v1/operations/{dead_id}"))
        .json();
    assert_eq!(op["state"], "interrupted", "nothing ran: {op}");
    // Aborting the dead operation leaves the new holder's key alone.
    let r = env.daemons[0].post(&format!("/v1/operations/{dead_id}/abort"), "", &env.token());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(etcd.get(&lock_key(&env)).map(|(_, t, _)| t), Some(token));

    let op = wait_done(&env, 1, &id);
    assert_eq!(
        op["state"],
        "succeeded",
        "{op}\n{}",
        env.daemons[1].log_text()
    );
    env.assert_invariants(&app, 1);
}

#[test]
fn a_holder_restarted_within_the_ttl_keeps_its_lock_and_resumes() {
    let etcd = Etcd::start().unwrap();
    let ttl = Duration::from_secs(15);
    let (mut env, app) = start_with_ttl(&etcd, ["stop_old_primary:before", ""], ttl);
    let r = switchover(&env, 0, "quick restart");
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    wait_paused(&env, 0);
    let (_, token, lease) = etcd.get(&lock_key(&env)).expect("the lock key");
    env.daemons[0].kill();
    let killed = Instant::now();
    env.restart_daemon(0, &[]);
    env.wait_all_polled();
    let r = env.daemons[0].post(
        &format!("/v1/operations/{id}/resume?wait=true"),
        "",
        &env.token(),
    );
    assert!(killed.elapsed() < ttl, "restarted within the TTL");
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    let op = r.json();
    assert_eq!(
        op["facts"]["lock_token"],
        token.to_string().as_str(),
        "{op}"
    );
    assert_eq!(
        op["facts"]["etcd_lease"],
        lease.to_string().as_str(),
        "{op}"
    );
    assert_eq!(etcd.get(&lock_key(&env)), None, "released at the end");
    env.assert_invariants(&app, 1);
}

/// The key is released before the switchover answers, so a rejoin sent at
/// once (run by the rejoining node's daemon, another daemon) takes it.
#[test]
fn a_switchover_then_a_rejoin_back_to_back_each_take_the_etcd_lock() {
    let etcd = Etcd::start().unwrap();
    let (env, _app) = start(&etcd, ["", ""]);
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    let r = env.daemons[1].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "back to back"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let first: i64 = r.json()["facts"]["lock_token"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let r = env.daemons[1].post(
        "/v1/rejoin?wait=true",
        r#"{"node": "pg-a", "reason": "back to back"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    let rejoin = r.json();
    let second: i64 = rejoin["facts"]["lock_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no lock_token: {rejoin}"))
        .parse()
        .unwrap();
    assert!(second > first, "{second} > {first}");
    assert_eq!(etcd.get(&lock_key(&env)), None, "released");
    let h = env.daemons[0].get("/health");
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.json()["primary"], "pg-b");
}

/// Certificates for a TLS etcd, made with openssl: a CA, the member's
/// certificate for 127.0.0.1, a client certificate, and another CA that
/// signed none of them.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn make() -> Certs {
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-etcd-certs-")
            .tempdir()
            .unwrap();
        let d = dir.path().display().to_string();
        let script = format!(
            r#"set -e; cd {d}
key() {{ openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }}
key ca.key; openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj /CN=pgwarden-test-ca
key wrong-ca.key; openssl req -x509 -new -key wrong-ca.key -out wrong-ca.pem -days 2 -subj /CN=another-ca
key server.key; openssl req -new -key server.key -out server.csr -subj /CN=etcd
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
key client.key; openssl req -new -key client.key -out client.csr -subj /CN=pgwarden
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null
printf 'lock-password-1\n' > password; printf 'wrong\n' > wrong-password
"#
        );
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl: {out:?}");
        Certs { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// Turns on etcd's authentication as an operator would: a root user, and
/// `pgwarden` with read-write on the test prefix only.
fn enable_auth(etcd: &Etcd, certs: &Certs) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(
                std::fs::read(certs.path("ca.pem")).unwrap(),
            ))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(certs.path("client.pem")).unwrap(),
                std::fs::read(certs.path("client.key")).unwrap(),
            ));
        let mut c = etcd_client::Client::connect(
            [etcd.endpoint()],
            Some(etcd_client::ConnectOptions::new().with_tls(tls)),
        )
        .await
        .unwrap();
        c.user_add("root", "root-password", None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.role_add("pgwarden").await.unwrap();
        c.role_grant_permission(
            "pgwarden",
            etcd_client::Permission::read_write("/pgwarden-test").with_prefix(),
        )
        .await
        .unwrap();
        c.user_add("pgwarden", "lock-password-1", None)
            .await
            .unwrap();
        c.user_grant_role("pgwarden", "pgwarden").await.unwrap();
        c.auth_enable().await.unwrap();
    });
}

/// Daemon `i` polled its own node since it started (its log if not):
/// the old primary of the switchover is stopped, so not every node answers.
fn wait_polled(env: &Env, i: usize) {
    poll_until(Duration::from_secs(30), "its own node polled", || {
        let s = env.daemons[i].get("/v1/status").json();
        s["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["name"] == "pg-b" && n["snapshot"].is_object())
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", env.daemons[i].log_text()));
}

fn tls_lock_yaml(etcd: &Etcd, certs: &Certs, ca: &str, password: &str) -> String {
    format!(
        "lock:\n  etcd:\n    endpoints: [{}]\n    prefix: /pgwarden-test\n    ttl: {}s\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n    username: pgwarden\n    password_file: {}\n",
        etcd.endpoint(),
        TTL.as_secs(),
        certs.path(ca).display(),
        certs.path("client.pem").display(),
        certs.path("client.key").display(),
        certs.path(password).display(),
    )
}

#[test]
fn the_lock_over_tls_with_a_client_certificate_and_a_user_and_a_wrong_ca_refuses() {
    let certs = Certs::make();
    let etcd = Etcd::start_with(Some(pgwarden_testkit::etcd::EtcdTls {
        cert: certs.path("server.pem"),
        key: certs.path("server.key"),
        client_ca: Some(certs.path("ca.pem")),
    }))
    .unwrap();
    assert!(etcd.endpoint().starts_with("https://"));
    enable_auth(&etcd, &certs);
    let (mut env, app) = Env::start_with_app(Options {
        config_extra: tls_lock_yaml(&etcd, &certs, "ca.pem", "password"),
        ..Default::default()
    });
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    app.wait_acks(3);
    let r = env.daemons[0].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "etcd over TLS"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    let op = r.json();
    assert_eq!(op["state"], "succeeded", "{op}");
    let note = op["facts"]["etcd_lock"].as_str().unwrap();
    assert!(note.contains("(the fencing token)"), "{note}");
    println!("over TLS with a user: {note}");
    println!(
        "over TLS with a user: {}",
        op["facts"]["etcd_lock_checks"]
            .as_str()
            .unwrap_or("no checks")
    );
    env.assert_invariants(&app, 1);
    let secret = "lock-password-1";
    assert!(!env.daemons[0].log_text().contains(secret));

    // pg-b's daemon with a CA that did not sign etcd's certificate: its
    // operations are refused with the reason; it goes on monitoring.
    let cfg = std::fs::read_to_string(&env.daemons[1].config).unwrap();
    let wrong = cfg.replace(
        &certs.path("ca.pem").display().to_string(),
        &certs.path("wrong-ca.pem").display().to_string(),
    );
    assert_ne!(cfg, wrong);
    std::fs::write(&env.daemons[1].config, wrong).unwrap();
    env.restart_daemon(1, &[]);
    wait_polled(&env, 1);
    let r = env.daemons[1].post(
        "/v1/switchover",
        r#"{"target": "pg-a", "reason": "wrong CA"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("operations are refused") && msg.contains("TLS failure"),
        "{msg}"
    );
    println!("wrong CA: {msg}");
    // Monitoring goes on: the status is served, from fresh polls.
    let s = env.daemons[1].get("/v1/status");
    assert_eq!(s.status, 200, "monitoring goes on: {}", s.body);

    // The same daemon with the right CA and a wrong password.
    let cfg = std::fs::read_to_string(&env.daemons[1].config).unwrap();
    let wrong = cfg
        .replace(
            &certs.path("wrong-ca.pem").display().to_string(),
            &certs.path("ca.pem").display().to_string(),
        )
        .replace(
            &certs.path("password").display().to_string(),
            &certs.path("wrong-password").display().to_string(),
        );
    std::fs::write(&env.daemons[1].config, wrong).unwrap();
    env.restart_daemon(1, &[]);
    wait_polled(&env, 1);
    let r = env.daemons[1].post(
        "/v1/switchover",
        r#"{"target": "pg-a", "reason": "wrong password"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("username and password_file"), "{msg}");
    assert!(!msg.contains("wrong\n") && !msg.contains(secret), "{msg}");
    println!("wrong password: {msg}");
    for d in &env.daemons {
        assert!(!d.log_text().contains(secret), "the password in a log");
    }
    assert_eq!(env.daemons[1].get("/v1/status").status, 200);
}
