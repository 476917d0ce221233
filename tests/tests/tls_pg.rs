//! TLS to PostgreSQL on a real cluster whose pg_hba.conf takes TCP
//! connections over TLS only (`hostnossl ... reject`, then `hostssl` lines):
//! with `sslmode: verify-full` and the CA in `sslrootcert` on every node,
//! both daemons monitor, switchovers and rejoins (by pg_rewind and by
//! pg_basebackup from the new primary) work, and the rejoined standby
//! streams with the sslmode in its primary_conninfo. A daemon given the wrong CA calls the nodes down and
//! says why: the certificate. Certificates are made by `openssl`.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pgwarden_testkit::{poll_until, ClusterOptions, DaemonLayout, TestCluster};
use util::certs::ca_and_leaf;
use util::{has_problem, Daemon, Env};

/// A stand-in application that is one psql session of the application's
/// role, over TLS, to the node its database.cfg names (what is tested here are pgwarden's connections;
/// the testkit's stand-in speaks plain text, which this pg_hba refuses).
/// Its health is that its host's daemon answers.
fn psql_application(cluster: &TestCluster, dir: &Path, health_url: &str) -> String {
    let pid = dir.join("pid").display().to_string();
    let cfg = dir.join("database.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nhost = 127.0.0.1\nport = {}\nname = inmanta\n",
            cluster.node(0).port
        ),
    )
    .unwrap();
    let c = cluster.credentials();
    let start = format!(
        "port=$(sed -n 's/^port *= *//p' '{cfg}'); PGPASSWORD={pw} setsid {psql} \"host=127.0.0.1 port=$port user={user} dbname={db} sslmode=require\" -c 'SELECT pg_sleep(3600)' >/dev/null 2>&1 </dev/null & echo $! > {pid}",
        pw = c.app_password,
        psql = cluster.bin_dir().join("psql").display(),
        cfg = cfg.display(),
        user = c.app_user,
        db = c.app_db,
    );
    let sh = |script: &str| serde_json::to_string(&["sh", "-c", script]).unwrap();
    format!(
        "application:\n  name: session\n  stop: {}\n  start: {}\n  is_running: {}\n  db_user: {}\n  config_file: \"{}\"\n  session_grace: 1s\n  runs_on: [pg-b]\n  health_url: {health_url}\n",
        sh(&format!("test -e {pid} && kill $(cat {pid}); rm -f {pid}; exit 0")),
        sh(&start),
        sh(&format!("test -e {pid} && kill -0 $(cat {pid})")),
        c.app_user,
        cfg.display()
    )
}

fn start_daemons(cluster: &TestCluster, layout: &DaemonLayout) -> Vec<Daemon> {
    (0..2)
        .map(|i| {
            let cfg = pgwarden_testkit::write_pgwarden_config(cluster, i, layout).unwrap();
            Daemon::start(&cfg, layout.api_url(i))
        })
        .collect()
}

/// Sessions of the monitor role on node `i`, by whether they use TLS.
fn monitor_sessions_by_ssl(env: &Env, i: usize) -> String {
    env.cluster
        .psql(
            i,
            "SELECT string_agg(DISTINCT s.ssl::text, ',') FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'pgwarden' AND a.client_addr IS NOT NULL",
        )
        .unwrap()
}

#[test]
fn a_hostssl_only_cluster_is_monitored_switched_over_and_rejoined_over_verified_tls() {
    let certs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(certs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ca, leaf, key) = ca_and_leaf(certs.path(), "good");
    let (wrong_ca, _, _) = ca_and_leaf(certs.path(), "other");
    let cluster = TestCluster::start(ClusterOptions {
        server_tls: Some((leaf, key)),
        hba_tcp: Some(vec![
            "hostnossl all          all  0.0.0.0/0     reject".into(),
            "hostssl   all          all  127.0.0.1/32  scram-sha-256".into(),
            "hostssl   replication  all  127.0.0.1/32  scram-sha-256".into(),
        ]),
        ..ClusterOptions::default()
    })
    .expect("build the cluster");
    let app_dir = cluster.dir().join("app");
    std::fs::create_dir_all(&app_dir).unwrap();
    let mut layout = DaemonLayout::for_tests(&cluster);
    layout.extra = psql_application(&cluster, &app_dir, &format!("{}/livez", layout.api_url(1)));
    layout.node_extra = format!(
        "    sslmode: verify-full\n    sslrootcert: {}\n",
        ca.display()
    );
    let daemons = start_daemons(&cluster, &layout);
    let env = Env {
        daemons,
        layout,
        cluster,
    };
    env.wait_all_polled();

    // Plain text is refused by the server itself, so every session pgwarden
    // holds is encrypted.
    let plain = Command::new(env.cluster.bin_dir().join("psql"))
        .arg(format!(
            "{} sslmode=disable connect_timeout=5",
            env.cluster.conninfo(
                0,
                "pgwarden",
                &env.cluster.credentials().monitor_password,
                "postgres"
            )
        ))
        .args(["-Atc", "SELECT 1"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("no encryption"),
        "pg_hba must refuse plain text: {}",
        String::from_utf8_lossy(&plain.stderr)
    );
    for i in 0..2 {
        env.wait_health(i, "healthy over TLS", env.within_polls(4), |c, _| c == 200);
    }
    assert_eq!(monitor_sessions_by_ssl(&env, 0), "true");
    assert_eq!(monitor_sessions_by_ssl(&env, 1), "true");

    // A switchover, run by pg-a's daemon over its pools.
    let r = env.daemons[0].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    assert_eq!(
        env.cluster.psql(1, "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );

    // The old primary rejoins: pg_rewind from pg-b with the TLS settings.
    let r = env.daemons[1].post(
        "/v1/rejoin?wait=true",
        r#"{"node": "pg-a", "reason": "back over TLS"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    let conninfo = env.cluster.psql(0, "SHOW primary_conninfo").unwrap();
    assert!(
        conninfo.contains("sslmode=verify-full")
            && conninfo.contains(&format!("sslrootcert='{}'", ca.display())),
        "{conninfo}"
    );
    let walsender = poll_until(
        env.within_polls(8),
        "pg-a to stream synchronously from pg-b over TLS",
        || {
            let row = env
                .cluster
                .psql(
                    1,
                    "SELECT r.sync_state || ',' || s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.application_name = 'inmanta'",
                )
                .ok()?;
            (row == "sync,true").then_some(row)
        },
    )
    .unwrap();
    assert_eq!(walsender, "sync,true");
    for i in 0..2 {
        env.wait_health(
            i,
            "healthy after the rejoin",
            env.within_polls(8),
            |c, _| c == 200,
        );
    }
    // Invariants: one writable node, and only its daemon says primary.
    assert_eq!(
        env.cluster.psql(0, "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );
    assert_eq!(env.daemons[1].get("/primary").status, 200);
    assert_eq!(env.daemons[0].get("/primary").status, 503);

    // Back to pg-a, and pg-b rejoins by a fresh copy: pg_basebackup with
    // the TLS settings in its --dbname.
    let r = env.daemons[1].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-a"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[1].log_text());
    let r = env.daemons[0].post(
        "/v1/rejoin?wait=true",
        r#"{"node": "pg-b", "method": "basebackup"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[1].log_text());
    assert_eq!(r.json()["facts"]["method"], "basebackup", "{}", r.body);
    let conninfo = env.cluster.psql(1, "SHOW primary_conninfo").unwrap();
    assert!(conninfo.contains("sslmode=verify-full"), "{conninfo}");
    poll_until(
        env.within_polls(8),
        "pg-b to stream synchronously from pg-a over TLS",
        || {
            let row = env
                .cluster
                .psql(
                    0,
                    "SELECT r.sync_state || ',' || s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.application_name = 'inmanta'",
                )
                .ok()?;
            (row == "sync,true").then_some(())
        },
    )
    .unwrap();
    for i in 0..2 {
        env.wait_health(i, "healthy after the copy", env.within_polls(8), |c, _| {
            c == 200
        });
    }
    assert_eq!(
        env.cluster.psql(1, "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );
    assert_eq!(env.daemons[0].get("/primary").status, 200);
    assert_eq!(env.daemons[1].get("/primary").status, 503);

    // A daemon trusting the wrong CA: the nodes are down, and the reason
    // is the certificate. One that reaches pg-b by a name its certificate
    // does not hold (localhost; the certificate names 127.0.0.1) likewise.
    let pg_b_port = env.cluster.node(1).port;
    let cases = [
        (
            "wrong-ca",
            wrong_ca.clone(),
            false,
            "not signed by a CA of sslrootcert".to_owned(),
        ),
        (
            "wrong-name",
            ca.clone(),
            true,
            "does not name localhost".to_owned(),
        ),
    ];
    for (name, root, by_name, phrase) in cases {
        let mut layout = env.layout.clone();
        layout.api_ports = vec![pgwarden_testkit::free_port(), pgwarden_testkit::free_port()];
        layout.node_extra = format!(
            "    sslmode: verify-full\n    sslrootcert: {}\n",
            root.display()
        );
        let mut text = pgwarden_testkit::pgwarden_config(&env.cluster, 0, &layout)
            .replace("pgwarden/pg-a\n", &format!("pgwarden/pg-a-{name}\n"));
        if by_name {
            text = text.replace(
                &format!("host: 127.0.0.1\n    port: {pg_b_port}\n"),
                &format!("host: localhost\n    port: {pg_b_port}\n"),
            );
        }
        let dir = env.cluster.dir().join("pgwarden");
        std::fs::create_dir_all(dir.join(format!("pg-a-{name}"))).unwrap();
        let cfg = dir.join(format!("pg-a-{name}.yaml"));
        std::fs::write(&cfg, text).unwrap();
        let d = Daemon::start(&cfg, layout.api_url(0));
        let health = poll_until(
            Duration::from_secs(30),
            &format!("the {name} daemon to call pg-b down"),
            || {
                let r = d.get("/health");
                let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
                (r.status == 503 && has_problem(&v, "node_down", Some("pg-b"))).then_some(v)
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
        let text = health.to_string();
        assert!(
            text.contains("certificate was refused") && text.contains(&phrase),
            "{name}: {text}"
        );
        if !by_name {
            assert!(text.contains(&root.display().to_string()), "{text}");
        }
    }
}
