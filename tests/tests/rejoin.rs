//! Rejoin on real clusters: after a failover the old primary becomes the
//! new synchronous standby (pg_rewind, or a fresh pg_basebackup into a new
//! directory with the old one kept aside until the new one works), a node
//! with an empty data directory is cloned the same way, and an interrupted
//! rejoin is resumed. Every acknowledged heartbeat survives throughout.

mod util;

use std::time::Duration;

use pgwarden_testkit::{poll_until, StopMode};
use util::{has_problem, Env, Options};

fn ids_on(env: &Env, node: usize) -> std::collections::HashSet<i64> {
    let c = env.cluster.credentials();
    env.cluster
        .psql_db(node, &c.app_db, "SELECT id FROM heartbeat")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn assert_nothing_lost(env: &Env, acked: &[i64], node: usize) {
    let ids = ids_on(env, node);
    let lost: Vec<i64> = acked.iter().filter(|a| !ids.contains(a)).copied().collect();
    assert!(
        lost.is_empty(),
        "acknowledged heartbeats lost on node {node}: {lost:?}"
    );
}

fn failover_to_b(env: &Env) {
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    env.cluster.stop_node(0, StopMode::Immediate).unwrap();
    env.wait_health(1, "pg-a down", env.within_polls(5), |_, h| {
        has_problem(h, "node_down", Some("pg-a"))
    });
    let r = env.daemons[1].post(
        "/v1/failover?wait=true",
        r#"{"target": "pg-b"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

fn sync_state(env: &Env, primary: usize) -> String {
    env.cluster
        .psql(
            primary,
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'inmanta'",
        )
        .unwrap_or_default()
}

#[test]
fn failover_rejoin_switchover_back_rejoin_again() {
    let (env, app) = Env::start_with_app(Options::default());
    failover_to_b(&env);
    let acked = app.wait_acks(app.acks().len() + 3);

    // The current primary cannot be "rejoined".
    let r = env.daemons[0].post("/v1/rejoin", r#"{"node": "pg-b"}"#, &env.token());
    assert_eq!(r.status, 409, "{}", r.body);

    // Sent to pg-b's daemon, run by pg-a's: pg_rewind (wal_log_hints is on).
    let r = env.daemons[1].post(
        "/v1/rejoin?wait=true",
        r#"{"node": "pg-a", "reason": "back in service"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    let op = r.json();
    assert_eq!(op["facts"]["method"], "rewind", "{op}");
    assert_eq!(sync_state(&env, 1), "sync");
    for i in 0..2 {
        env.wait_health(
            i,
            "healthy after the rejoin",
            env.within_polls(4),
            |c, _| c == 200,
        );
    }
    assert_nothing_lost(&env, &acked, 1);

    // Back to pg-a with a switchover, then pg-b rejoins.
    let r = env.daemons[1].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-a"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[1].log_text());
    let acked = app.wait_acks(app.acks().len() + 3);
    assert_nothing_lost(&env, &acked, 0);
    // This time through the CLI, asking pg-a's daemon: it forwards to
    // pg-b's, and the CLI follows the steps there.
    let out = std::process::Command::new(util::pgwarden_bin())
        .args([
            "rejoin",
            "pg-b",
            "--yes",
            "--url",
            &env.daemons[0].url,
            "--token-file",
        ])
        .arg(env.cluster.secret_file(pgwarden_testkit::Secret::ApiToken))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.daemons[1].log_text()
    );
    assert!(
        text.contains("enable_synchronous") && text.contains("succeeded"),
        "{text}"
    );
    assert_eq!(sync_state(&env, 0), "sync");
    for i in 0..2 {
        env.wait_health(i, "healthy again", env.within_polls(4), |c, _| c == 200);
    }
    let acked = app.wait_acks(app.acks().len() + 3);
    assert_nothing_lost(&env, &acked, 0);
    assert_nothing_lost(&env, &acked, 1);
}

#[test]
fn rejoin_by_basebackup_replaces_the_directory_only_once_the_copy_works() {
    let (env, app) = Env::start_with_app(Options::default());
    failover_to_b(&env);
    let data = env.cluster.node(0).data_dir.clone();
    let marker = data.join("pgwarden-test-marker");
    std::fs::write(&marker, "old directory").unwrap();
    let r = env.daemons[0].post(
        "/v1/rejoin?wait=true",
        r#"{"node": "pg-a", "method": "basebackup", "keep_old_data": true}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    let op = r.json();
    assert_eq!(op["facts"]["method"], "basebackup");
    let old = std::path::PathBuf::from(op["facts"]["old_data_dir"].as_str().unwrap());
    assert!(
        old.join("pgwarden-test-marker").exists(),
        "the old directory is kept aside"
    );
    assert!(!marker.exists(), "the data directory is a fresh copy");
    assert_eq!(sync_state(&env, 1), "sync");
    env.wait_health(0, "healthy", env.within_polls(4), |c, _| c == 200);
    let acked = app.wait_acks(app.acks().len() + 3);
    assert_nothing_lost(&env, &acked, 1);
    // The node kept its own postgresql.conf (its port), not the primary's.
    assert_eq!(
        env.cluster.psql(0, "SHOW port").unwrap(),
        env.cluster.node(0).port.to_string()
    );
}

#[test]
fn an_empty_node_is_cloned_as_the_first_standby() {
    let env = Env::start();
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    env.cluster.stop_node(1, StopMode::Fast).unwrap();
    let data = env.cluster.node(1).data_dir.clone();
    std::fs::remove_dir_all(&data).unwrap();
    // Sent to the primary's daemon: forwarded to pg-b's, which clones.
    let r = env.daemons[0].post("/v1/rejoin?wait=true", r#"{"node": "pg-b"}"#, &env.token());
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[1].log_text());
    let op = r.json();
    assert_eq!(op["facts"]["method"], "basebackup", "{op}");
    assert!(
        op["facts"]["method_reason"]
            .as_str()
            .unwrap()
            .contains("empty"),
        "{op}"
    );
    assert_eq!(sync_state(&env, 0), "sync");
    for i in 0..2 {
        env.wait_health(i, "healthy", env.within_polls(4), |c, _| c == 200);
    }
}

/// The node's daemon SIGKILLed after `step` acted and before its outcome
/// was journaled; restarted, the rejoin resumes and ends synchronous.
fn rejoin_killed_after(step: &str) {
    let fault = vec![("PGWARDEN_FAULT_PAUSE".to_owned(), format!("{step}:after"))];
    let (mut env, app) = Env::start_with_app(Options {
        daemon_env: vec![fault],
        ..Default::default()
    });
    failover_to_b(&env);
    let r = env.daemons[0].post("/v1/rejoin", r#"{"node": "pg-a"}"#, &env.token());
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    poll_until(
        Duration::from_secs(60),
        "the rejoin to reach the fault point",
        || {
            env.daemons[0]
                .log_text()
                .contains("fault injection: pausing the operation here")
                .then_some(())
        },
    )
    .unwrap();
    env.daemons[0].kill();
    env.restart_daemon(0, &[]);
    assert_eq!(
        env.daemons[0].get(&format!("/v1/operations/{id}")).json()["state"],
        "interrupted"
    );
    let r = env.daemons[0].post(
        &format!("/v1/operations/{id}/resume?wait=true"),
        "",
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    assert_eq!(sync_state(&env, 1), "sync");
    env.wait_health(1, "healthy", env.within_polls(4), |c, _| c == 200);
    let acked = app.wait_acks(app.acks().len() + 3);
    assert_nothing_lost(&env, &acked, 1);
}

macro_rules! rejoin_crash_tests {
    ($($name:ident: $step:literal;)*) => {
        $(
            #[test]
            fn $name() {
                rejoin_killed_after($step);
            }
        )*
    };
}

rejoin_crash_tests! {
    rejoin_killed_after_stopping_the_node: "stop_node";
    an_interrupted_rejoin_is_resumed: "rebuild_data_directory";
    rejoin_killed_after_configuring_the_standby: "configure_standby";
    rejoin_killed_after_starting_the_standby: "start_standby";
    rejoin_killed_after_it_streams: "wait_streaming";
    rejoin_killed_after_enabling_synchronous: "enable_synchronous";
}

#[test]
fn a_failing_pg_rewind_falls_back_to_a_fresh_copy_and_says_so() {
    let (env, app) = Env::start_with_app(Options::default());
    failover_to_b(&env);
    // Lose the old primary's older WAL segments: its crash recovery, and so
    // pg_rewind, cannot work on this directory any more.
    let wal = env.cluster.node(0).data_dir.join("pg_wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.starts_with("00000001"))
        .collect();
    segments.sort();
    segments.pop();
    assert!(
        !segments.is_empty(),
        "the old primary has older WAL segments"
    );
    for seg in &segments {
        std::fs::remove_file(wal.join(seg)).unwrap();
    }
    let r = env.daemons[1].post("/v1/rejoin?wait=true", r#"{"node": "pg-a"}"#, &env.token());
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    let op = r.json();
    assert_eq!(op["facts"]["method"], "basebackup", "{op}");
    assert!(
        op["facts"]["method_reason"]
            .as_str()
            .unwrap()
            .starts_with("pg_rewind failed"),
        "{op}"
    );
    let rebuild = &op["steps"][2]["message"];
    assert!(
        rebuild.as_str().unwrap().contains("pg_rewind failed")
            && rebuild.as_str().unwrap().contains("pg_basebackup"),
        "{rebuild}"
    );
    assert_eq!(sync_state(&env, 1), "sync");
    let acked = app.wait_acks(app.acks().len() + 3);
    assert_nothing_lost(&env, &acked, 1);
}

#[test]
fn a_rejoin_whose_node_daemon_does_not_answer_is_refused_clearly() {
    let mut env = Env::start();
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    env.daemons[1].kill();
    let r = env.daemons[0].post("/v1/rejoin", r#"{"node": "pg-b"}"#, &env.token());
    assert_eq!(r.status, 503, "{}", r.body);
    let v = r.json();
    assert_eq!(v["error"], "unavailable");
    assert!(
        v["message"].as_str().unwrap().contains("pg-b's own daemon"),
        "{v}"
    );
    // Nothing changed: pg-b still streams synchronously.
    assert_eq!(sync_state(&env, 0), "sync");
}
