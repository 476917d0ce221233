//! Read-only replicas (`nodes[].role: replica`) beside the pair, on real
//! clusters of three nodes on loopback, a daemon beside each: the replica
//! leaves the pair healthy and is listed with its role; a failover or a
//! switchover re-points it to the new primary with a reload (same
//! postmaster), streaming on the new timeline; it is never a target unless
//! named and forced; a rejoin clones it as an asynchronous replica.

mod util;

use std::time::Duration;

use pgwarden_testkit::{poll_until, StopMode};
use util::{has_problem, metric, pgwarden_bin, Env, Options};

const RO: usize = 2;

fn with_replica() -> (Env, util::App) {
    let (env, app) = Env::start_with_app(Options {
        replicas: vec!["ro-1".into()],
        ..Options::default()
    });
    for i in 0..3 {
        env.wait_health(
            i,
            "healthy with the replica",
            env.within_polls(4),
            |c, _| c == 200,
        );
    }
    (env, app)
}

/// `status|sender_port|received_tli` of node `i`'s walreceiver.
fn receiver(env: &Env, i: usize) -> String {
    env.cluster
        .psql(
            i,
            "SELECT status || '|' || sender_port || '|' || received_tli FROM pg_stat_wal_receiver",
        )
        .unwrap_or_default()
}

/// The replica's row on node `primary`: `state|sync_state`.
fn replica_row(env: &Env, primary: usize) -> String {
    env.cluster
        .psql(
            primary,
            "SELECT state || '|' || sync_state FROM pg_stat_replication WHERE application_name = 'ro-1'",
        )
        .unwrap_or_default()
}

/// After an operation that made node `primary` the primary on `timeline`:
/// the replica streams from it on that timeline, by its own
/// pg_stat_wal_receiver and by the primary's pg_stat_replication, and a
/// row written on the primary now reaches it.
fn assert_follows(env: &Env, primary: usize, timeline: u32) {
    let want = format!("streaming|{}|{timeline}", env.cluster.node(primary).port);
    assert_eq!(receiver(env, RO), want, "the replica's walreceiver");
    assert_eq!(replica_row(env, primary), "streaming|async");
    let marker = format!("{}", std::process::id());
    env.cluster
        .psql(
            primary,
            &format!("CREATE TABLE IF NOT EXISTS after_switch(x text); INSERT INTO after_switch VALUES ('{marker}')"),
        )
        .unwrap();
    poll_until(
        Duration::from_secs(10),
        "the replica to replay a new row",
        || {
            env.cluster
                .psql(RO, "SELECT x FROM after_switch")
                .ok()
                .filter(|v| v.contains(&marker))
        },
    )
    .unwrap();
}

/// The repoint_replicas step of `op`, its message and the measured time.
fn repoint_step(op: &serde_json::Value) -> (String, u64) {
    let step = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "repoint_replicas")
        .unwrap_or_else(|| panic!("no repoint_replicas step: {op}"));
    assert_eq!(step["state"], "succeeded", "{step}");
    let ms = op["facts"]["replica_ro-1_repointed_ms"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no re-point time: {op}"));
    (step["message"].as_str().unwrap_or("").to_owned(), ms)
}

#[test]
fn a_replica_is_monitored_apart_from_the_pair() {
    let (env, _app) = with_replica();
    let h = env.daemons[0].get("/health").json();
    assert_eq!(h["problems"], serde_json::json!([]), "{h}");

    let s = env.daemons[0].get("/v1/status").json();
    let ro = &s["nodes"][RO];
    assert_eq!(ro["name"], "ro-1");
    assert_eq!(ro["role"], "replica");
    assert_eq!(s["nodes"][1]["role"], "standby");
    let link = s["nodes"][0]["replication"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["standby"] == "ro-1")
        .cloned()
        .unwrap_or_else(|| panic!("the primary's row for ro-1: {s}"));
    assert_eq!(link["sync_state"], "async");

    // `pgwarden status`: the replica with its role, lag and sessions.
    let out = std::process::Command::new(pgwarden_bin())
        .args(["status", "--url", &env.layout.api_url(0)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("ro-1"))
        .unwrap_or_else(|| panic!("ro-1 not listed:\n{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cols[2..4], ["replica", "streaming"], "{text}");
    assert!(cols[4].parse::<u32>().is_ok(), "sessions: {text}");
    assert_eq!(cols.last(), Some(&"async"), "{text}");

    // The status page and the metrics say the same.
    let page = env.daemons[0].get("/").body;
    assert!(page.contains("id=\"node-ro-1\""), "{page}");
    assert!(page.contains("class=\"pill replica\">replica<"), "{page}");
    let m = env.daemons[0].metrics();
    assert_eq!(
        metric(
            &m,
            "pgwarden_node_role",
            &[("node", "ro-1"), ("role", "replica")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "pgwarden_replication_connected",
            &[("node", "pg-a"), ("standby", "ro-1")]
        ),
        Some(1.0)
    );
    assert!(metric(&m, "pgwarden_node_sessions", &[("node", "ro-1")]).is_some());
    // Reads may go to it: its own daemon answers /replica.
    assert_eq!(env.daemons[RO].get("/replica").status, 200);

    // A replica that stops is a warning: the pair stays healthy.
    env.cluster.stop_node(RO, StopMode::Fast).unwrap();
    let h = env.wait_health(0, "ro-1 down", env.within_polls(6), |_, h| {
        has_problem(h, "replica_not_streaming", Some("ro-1"))
            && has_problem(h, "node_down", Some("ro-1"))
    });
    assert_eq!(env.daemons[0].get("/health").status, 200, "{h}");
    assert!(
        h["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["severity"] == "warning"),
        "{h}"
    );
}

#[test]
fn a_replica_is_never_a_target_by_accident() {
    let (env, app) = with_replica();
    for kind in ["switchover", "failover"] {
        let r = env.daemons[0].post(
            &format!("/v1/{kind}?wait=true"),
            r#"{"target": "ro-1"}"#,
            &env.token(),
        );
        assert_eq!(r.status, 422, "{kind}: {}", r.body);
        let checks = r.json()["checks"].clone();
        let check = checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "target_not_replica")
            .cloned()
            .unwrap_or_else(|| panic!("{kind}: {checks}"));
        assert_eq!(check["verdict"], "fail", "{check}");
        assert!(
            check["message"].as_str().unwrap().contains("force"),
            "{check}"
        );
    }
    // Nothing happened: the pair is as it was.
    env.assert_invariants(&app, 0);
    assert_eq!(replica_row(&env, 0), "streaming|async");
}

#[test]
fn a_switchover_re_points_the_replica_without_a_restart() {
    let (env, app) = with_replica();
    app.wait_acks(5);
    let postmaster = env.cluster.postmaster_pid(RO);
    let r = env.daemons[0].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "maintenance"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    let op = r.json();
    assert_eq!(op["state"], "succeeded", "{op}");
    let (message, ms) = repoint_step(&op);
    println!("re-point after switchover: ro-1 streaming from pg-b on the new timeline {ms} ms from the re-point request ({message})");
    assert!(
        message.contains("ro-1 streams from pg-b on timeline 2"),
        "{message}"
    );

    assert_follows(&env, 1, 2);
    assert_eq!(
        env.cluster.postmaster_pid(RO),
        postmaster,
        "re-pointed by a reload, not a restart"
    );
    assert!(
        !env.cluster
            .psql(1, "SHOW synchronous_standby_names")
            .unwrap()
            .contains("ro-1"),
        "a replica is never synchronous"
    );
    env.assert_invariants(&app, 1);
    let h = env.wait_health(1, "no replica problem", env.within_polls(4), |_, h| {
        !has_problem(h, "replica_not_streaming", Some("ro-1"))
    });
    assert!(!has_problem(&h, "replica_lag_high", Some("ro-1")), "{h}");
}

#[test]
fn a_failover_re_points_the_replica_to_the_new_timeline() {
    let (env, app) = with_replica();
    app.wait_acks(5);
    let postmaster = env.cluster.postmaster_pid(RO);
    env.cluster.stop_node(0, StopMode::Immediate).unwrap();
    env.wait_health(1, "pg-a down", env.within_polls(6), |_, h| {
        has_problem(h, "node_down", Some("pg-a"))
    });
    // While pg-a is down the replica has no primary to stream from: a
    // warning beside the critical problems of the pair.
    let r = env.daemons[1].post(
        "/v1/failover?wait=true",
        r#"{"target": "pg-b", "reason": "pg-a crashed"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[1].log_text());
    let op = r.json();
    assert_eq!(op["state"], "succeeded", "{op}");
    let (message, ms) = repoint_step(&op);
    println!("re-point after failover: ro-1 streaming from pg-b on the new timeline {ms} ms from the re-point request ({message})");

    assert_follows(&env, 1, 2);
    assert_eq!(env.cluster.postmaster_pid(RO), postmaster);
    env.assert_invariants(&app, 1);
}

#[test]
fn a_rejoin_clones_a_replica_outside_synchronous_standby_names() {
    let (env, app) = with_replica();
    // An empty data directory: the first clone of a new replica.
    env.cluster.stop_node(RO, StopMode::Fast).unwrap();
    let dir = env.cluster.node(RO).data_dir.clone();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let r = env.daemons[0].post(
        "/v1/rejoin?wait=true",
        r#"{"node": "ro-1", "reason": "new replica"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[RO].log_text());
    let op = r.json();
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["facts"]["method"], "basebackup", "{op}");
    let steps = op["steps"].as_array().unwrap();
    let sync = steps
        .iter()
        .find(|s| s["name"] == "enable_synchronous")
        .unwrap();
    assert!(
        sync["message"]
            .as_str()
            .unwrap()
            .contains("stays asynchronous"),
        "{sync}"
    );
    assert_eq!(replica_row(&env, 0), "streaming|async");
    assert_eq!(
        env.cluster
            .psql(0, "SHOW synchronous_standby_names")
            .unwrap()
            .trim_matches('"'),
        "inmanta"
    );
    // Its own application_name, no slot of the pair's taken.
    assert_eq!(
        env.cluster
            .psql(
                0,
                "SELECT count(*) FROM pg_replication_slots WHERE active_pid = (SELECT pid FROM pg_stat_replication WHERE application_name = 'ro-1')"
            )
            .unwrap(),
        "0"
    );
    for i in 0..3 {
        env.wait_health(i, "healthy after the clone", env.within_polls(6), |c, h| {
            c == 200 && !has_problem(h, "replica_not_streaming", None)
        });
    }
    env.assert_invariants(&app, 0);
}

#[test]
fn a_replica_that_cannot_follow_fails_nothing_and_is_rebuilt_later() {
    let (mut env, app) = with_replica();
    app.wait_acks(5);
    // The replica's host is gone: PostgreSQL and its daemon.
    env.daemons[RO].kill();
    env.cluster.stop_node(RO, StopMode::Immediate).unwrap();
    env.wait_health(0, "ro-1 down", env.within_polls(6), |c, h| {
        c == 200 && has_problem(h, "node_down", Some("ro-1"))
    });
    // A silent replica host without the application needs no fenced_hosts.
    let r = env.daemons[0].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "maintenance"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    let op = r.json();
    assert_eq!(op["state"], "succeeded", "{op}");
    let step = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "repoint_replicas")
        .cloned()
        .unwrap();
    assert_eq!(step["state"], "succeeded", "{step}");
    let message = step["message"].as_str().unwrap();
    assert!(message.contains("ro-1 is NOT re-pointed"), "{message}");
    assert!(message.contains("pgwarden rejoin ro-1"), "{message}");
    assert_eq!(op["facts"]["replicas_not_repointed"], "ro-1", "{op}");
    env.assert_invariants(&app, 1);
    // Until then a warning (pg-a, stopped by the switchover, is the pair's
    // critical problem until it is rejoined).
    let h = env.wait_health(1, "the replica's warning", env.within_polls(6), |_, h| {
        has_problem(h, "replica_not_streaming", Some("ro-1"))
    });
    for p in h["problems"].as_array().unwrap() {
        if p["node"] == "ro-1" {
            assert_eq!(p["severity"], "warning", "{h}");
        }
    }

    // The host is back, still following the old primary (stopped): a
    // rejoin points it at the current one.
    env.cluster.start_node(RO).unwrap();
    env.restart_daemon(RO, &[]);
    // The rejoin runs on ro-1's own daemon: it must have seen the primary.
    poll_until(
        env.within_polls(4),
        "ro-1's daemon to see pg-b as the primary",
        || (env.daemons[RO].get("/v1/status").json()["primary"] == "pg-b").then_some(()),
    )
    .unwrap();
    let r = env.daemons[1].post(
        "/v1/rejoin?wait=true",
        r#"{"node": "ro-1", "reason": "back"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[RO].log_text());
    assert_eq!(r.json()["state"], "succeeded", "{}", r.body);
    poll_until(Duration::from_secs(30), "ro-1 to stream from pg-b", || {
        (receiver(&env, RO) == format!("streaming|{}|2", env.cluster.node(1).port)).then_some(())
    })
    .unwrap();
    assert_follows(&env, 1, 2);
}

#[test]
fn a_forced_failover_to_the_replica_is_the_last_resort() {
    let (env, app) = with_replica();
    app.wait_acks(5);
    // The primary and its standby are both lost.
    env.cluster.stop_node(1, StopMode::Immediate).unwrap();
    env.cluster.stop_node(0, StopMode::Immediate).unwrap();
    env.wait_health(RO, "both down", env.within_polls(6), |_, h| {
        has_problem(h, "node_down", Some("pg-a")) && has_problem(h, "node_down", Some("pg-b"))
    });
    let r = env.daemons[RO].post(
        "/v1/failover?wait=true",
        r#"{"target": "ro-1", "reason": "pg-a and pg-b lost"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 422, "unforced: {}", r.body);
    // pg-a's stop is verified as the old primary's; pg-b's host the
    // operator confirms fenced (its sessions cannot be counted).
    let r = env.daemons[RO].post(
        "/v1/failover?wait=true",
        r#"{"target": "ro-1", "reason": "pg-a and pg-b lost", "force": true, "fenced_hosts": ["pg-b"]}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[RO].log_text());
    let op = r.json();
    assert_eq!(op["state"], "succeeded", "{op}");
    // The loss report, as for a standby: what it lacked of the primary's last sight.
    let lost: u64 = op["facts"]["bytes_possibly_lost"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no loss report: {op}"));
    println!("forced failover to the replica: bytes_possibly_lost = {lost}");
    let preflight = op["steps"][0]["message"].as_str().unwrap();
    assert!(
        preflight.contains("ro-1 is a `role: replica` node")
            && preflight.contains("(ignored: force)"),
        "{preflight}"
    );
    assert_eq!(op["facts"]["old_primary"], "pg-a", "{op}");
    assert_eq!(
        env.cluster.psql(RO, "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
    assert_eq!(app.ctl("is-running").0, 0, "the application runs");
    let cfg = std::fs::read_to_string(&app.config_file).unwrap();
    assert!(
        cfg.contains(&format!("port={}\n", env.cluster.node(RO).port)),
        "{cfg}"
    );
    poll_until(
        env.within_polls(4),
        "/primary on ro-1's daemon only",
        || {
            let codes: Vec<u16> = env
                .daemons
                .iter()
                .map(|d| d.get("/primary").status)
                .collect();
            (codes == [503, 503, 200]).then_some(())
        },
    )
    .unwrap();

    // The view reports what ro-1 is now, the primary; the config still
    // calls it a replica, which is a critical problem, and every operation
    // is refused until the config is edited.
    let s = env.daemons[RO].get("/v1/status").json();
    assert_eq!(s["primary"], "ro-1", "{s}");
    assert_eq!(s["nodes"][RO]["role"], "primary", "{s}");
    let h = env.wait_health(RO, "config_role_mismatch", env.within_polls(4), |_, h| {
        has_problem(h, "config_role_mismatch", Some("ro-1"))
    });
    let p = h["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == "config_role_mismatch")
        .unwrap()
        .clone();
    assert_eq!(p["severity"], "critical", "{p}");
    assert!(
        p["message"].as_str().unwrap().contains("edit nodes[]"),
        "{p}"
    );
    for (path, body) in [
        (
            "/v1/rejoin?wait=true",
            r#"{"node": "pg-b", "reason": "rebuild the pair"}"#,
        ),
        (
            "/v1/switchover?wait=true",
            r#"{"target": "pg-b", "reason": "back to the pair", "force": true}"#,
        ),
    ] {
        let r = env.daemons[RO].post(path, body, &env.token());
        assert_eq!(r.status, 422, "{path}: {}", r.body);
        let checks = r.json()["checks"].clone();
        assert!(
            checks
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "roles_match_config" && c["verdict"] == "fail"),
            "{path}: {checks}"
        );
    }
}

#[test]
fn a_streaming_replica_is_no_standby_for_synchronous_replication() {
    let (env, _app) = with_replica();
    // The standby is lost; only the replica streams.
    env.cluster.stop_node(1, StopMode::Fast).unwrap();
    let token = env.token();
    let r = env.daemons[0].put("/v1/sync", r#"{"mode": "async"}"#, &token);
    assert_eq!(r.status, 200, "{}", r.body);
    env.wait_health(
        0,
        "the standby not streaming",
        env.within_polls(6),
        |_, h| has_problem(h, "standby_not_streaming", Some("pg-b")),
    );
    assert_eq!(replica_row(&env, 0), "streaming|async");
    // Restoring sync would make every commit wait for a standby that is
    // gone: the replica streaming changes nothing.
    let r = env.daemons[0].put("/v1/sync", r#"{"mode": "sync"}"#, &token);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("no standby streams"), "{}", r.body);
    assert_eq!(
        env.cluster
            .psql(0, "SHOW synchronous_standby_names")
            .unwrap(),
        "",
        "nothing was set"
    );
}
