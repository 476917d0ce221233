//! Three and four nodes on hosts of their own (DESIGN.md "More than two
//! nodes"): the namespace testbed with read-only replicas on hosts r1 and r2
//! (each with its PostgreSQL and its daemon) and an etcd member on host e.
//! A failover and a switchover re-point the replica over the network; a
//! replica is never a target by accident; with etcd down operations are
//! refused while monitoring goes on; a lease lost mid-operation stops it
//! before its next step; a killed holder's lock passes to the other daemon
//! after the TTL and its own resume is refused by the token; a primary cut
//! from its standby's side is isolated although a replica still sees it.
//! After every operation: one `/primary` among all daemons, one application
//! instance, no acknowledged write lost.
//!
//! The figures (failover and switchover times, the re-point time) are
//! printed: `cargo nextest run -p pgwarden-tests --test more_hosts
//! --no-capture 2>&1 | grep 'nodes:'`.

mod util;

use std::time::{Duration, Instant};

use pgwarden_testkit::{poll_until, Host, Testbed, TestbedOptions};
use util::has_problem;
use util::testbed::{
    assert_invariants, get, in_recovery, options, post, start, wait_health, wait_healthy, within,
};

/// Short, so that the tests waiting for it stay short.
const TTL: Duration = Duration::from_secs(4);
const RO1: usize = 2;

fn opts(replicas: usize, etcd: bool) -> TestbedOptions {
    let mut o = options();
    o.replicas = replicas;
    o.etcd = etcd.then_some(TTL);
    o.app_host = Some(Host::A);
    o
}

/// `status|sender_host|received_tli` of node `i`'s walreceiver.
fn receiver(tb: &Testbed, i: usize) -> String {
    tb.psql(
        i,
        "SELECT status || '|' || sender_host || '|' || received_tli FROM pg_stat_wal_receiver",
    )
    .unwrap_or_default()
}

/// When node `i`'s postmaster started: the same after a reload, not after a restart.
fn started_at(tb: &Testbed, i: usize) -> String {
    tb.psql(i, "SELECT pg_postmaster_start_time()").unwrap()
}

/// Replica `ro` streams from node `primary` on `timeline`, by its own
/// walreceiver and by the primary's pg_stat_replication (asynchronously),
/// and a row written on the primary reaches it.
fn assert_follows(tb: &Testbed, ro: usize, primary: usize, timeline: u32) {
    let want = format!("streaming|{}|{timeline}", tb.node(primary).host);
    poll_until(Duration::from_secs(20), "the replica to stream", || {
        (receiver(tb, ro) == want).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {} (want {want})", receiver(tb, ro)));
    let name = &tb.node(ro).name;
    let row = tb
        .psql(
            primary,
            &format!("SELECT state || '|' || sync_state FROM pg_stat_replication WHERE application_name = '{name}'"),
        )
        .unwrap();
    assert_eq!(row, "streaming|async", "{name} on the primary");
    let marker = format!("{name}-{}-{timeline}", std::process::id());
    tb.psql(
        primary,
        &format!("CREATE TABLE IF NOT EXISTS marks(x text); INSERT INTO marks VALUES ('{marker}')"),
    )
    .unwrap();
    poll_until(
        Duration::from_secs(20),
        "the replica to replay a new row",
        || {
            tb.psql(ro, "SELECT x FROM marks")
                .ok()
                .filter(|v| v.contains(&marker))
        },
    )
    .unwrap();
}

/// Seconds since midnight of an RFC 3339 UTC time (`...T21:30:01.123Z`).
fn secs_of_day(t: &str) -> f64 {
    let time = t.split('T').nth(1).unwrap_or_else(|| panic!("a time: {t}"));
    let time = time.trim_end_matches('Z');
    let mut parts = time.split(':');
    let mut next = || -> f64 { parts.next().and_then(|p| p.parse().ok()).unwrap() };
    next() * 3600.0 + next() * 60.0 + next()
}

/// From the first step's start to the last step's end, by the journal.
fn op_seconds(op: &serde_json::Value) -> f64 {
    let steps = op["steps"].as_array().unwrap();
    let first = steps[0]["started_at"].as_str().unwrap();
    let last = steps
        .iter()
        .filter_map(|s| s["finished_at"].as_str())
        .map(secs_of_day)
        .fold(f64::MIN, f64::max);
    let mut d = last - secs_of_day(first);
    if d < 0.0 {
        d += 86_400.0;
    }
    d
}

/// The re-point of replica `name` in `op`: step succeeded, its time in ms.
fn repoint_ms(op: &serde_json::Value, name: &str) -> u64 {
    let step = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "repoint_replicas")
        .unwrap_or_else(|| panic!("no repoint_replicas step: {op}"));
    assert_eq!(step["state"], "succeeded", "{step}");
    op["facts"][format!("replica_{name}_repointed_ms")]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no re-point time for {name}: {op}"))
}

/// Switchover and failover to a replica, unforced, from `host`: refused
/// by `target_not_replica`, which says how to lift it.
fn assert_replica_refused(tb: &Testbed, host: Host, replica: &str) {
    for kind in ["switchover", "failover"] {
        let body = serde_json::json!({"target": replica, "reason": "by accident"}).to_string();
        let r = post(tb, host, &format!("/v1/{kind}?wait=true"), &body);
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
}

fn pause_count(tb: &Testbed, host: Host) -> usize {
    tb.daemon_log_text(host)
        .matches("fault injection: pausing the operation here")
        .count()
}

/// Waits until the daemon on `host` has paused `before + 1` times.
fn wait_paused(tb: &Testbed, host: Host, before: usize) {
    poll_until(Duration::from_secs(60), "the fault point", || {
        (pause_count(tb, host) > before).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.daemon_log_text(host)));
}

fn wait_done(tb: &Testbed, host: Host, id: &str) -> serde_json::Value {
    poll_until(Duration::from_secs(120), "the operation to end", || {
        let op = get(tb, host, &format!("/v1/operations/{id}")).json();
        (op["state"] != "running").then_some(op)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.daemon_log_text(host)))
}

/// Every daemon has polled every node (its /health may be 503 meanwhile:
/// an interrupted operation is a critical problem).
fn wait_polled(tb: &Testbed) {
    for host in tb.node_hosts() {
        poll_until(within(tb, 8), "every node polled", || {
            let s: serde_json::Value =
                serde_json::from_str(&get(tb, host, "/v1/status").body).ok()?;
            s["nodes"]
                .as_array()?
                .iter()
                .all(|n| n["snapshot"].is_object() && n["daemon_answered"] != false)
                .then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {}", get(tb, host, "/v1/status").body));
    }
}

fn switchover(tb: &Testbed, via: Host, to: &str, reason: &str) -> util::Response {
    let body = serde_json::json!({"target": to, "reason": reason}).to_string();
    post(tb, via, "/v1/switchover", &body)
}

/// Three nodes: a failover then, after a rejoin, a switchover back, each
/// re-pointing ro-1 on host r1 by a reload; ro-1 refused as a target
/// without force. Prints the three-node figures.
#[test]
fn three_nodes_failover_and_switchover_re_point_the_replica() {
    let tb = start(opts(1, true));
    wait_healthy(&tb, "healthy with the replica");
    let writer = tb.start_writer(Host::C);
    writer.wait_more(10, Duration::from_secs(30)).unwrap();

    assert_replica_refused(&tb, Host::B, "ro-1");
    assert_replica_refused(&tb, Host::R1, "ro-1");
    assert_invariants(&tb, 0, Host::A, &writer.acked());
    let postmaster = started_at(&tb, RO1);

    // Failover: PostgreSQL on a dies, its host lives.
    tb.kill_postmaster(0).unwrap();
    wait_health(&tb, Host::B, "pg-a down", within(&tb, 8), |_, h| {
        has_problem(h, "node_down", Some("pg-a"))
    });
    let asked = Instant::now();
    let r = post(
        &tb,
        Host::B,
        "/v1/failover?wait=true",
        r#"{"target": "pg-b", "reason": "PostgreSQL on a died"}"#,
    );
    let failover_wall = asked.elapsed();
    assert_eq!(r.status, 200, "{}\n{}", r.body, tb.daemon_log_text(Host::B));
    let op = r.json();
    assert_eq!(op["state"], "succeeded", "{op}");
    let failover_ms = repoint_ms(&op, "ro-1");
    let failover_secs = op_seconds(&op);
    assert!(op["facts"]["lock_token"].as_str().is_some(), "{op}");
    assert_follows(&tb, RO1, 1, 2);
    assert_eq!(started_at(&tb, RO1), postmaster, "a reload, not a restart");
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    assert_invariants(&tb, 1, Host::A, &writer.acked());
    assert_replica_refused(&tb, Host::B, "ro-1");

    // pg-a back as the standby, then a switchover back to it.
    let r = post(
        &tb,
        Host::B,
        "/v1/rejoin?wait=true",
        r#"{"node": "pg-a", "reason": "back in service"}"#,
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, tb.daemon_log_text(Host::A));
    wait_healthy(&tb, "healthy after the rejoin");
    let asked = Instant::now();
    let r = post(
        &tb,
        Host::R1,
        "/v1/switchover?wait=true",
        r#"{"target": "pg-a", "reason": "back to a, asked through the replica's daemon"}"#,
    );
    let switchover_wall = asked.elapsed();
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.body,
        tb.daemon_log_text(Host::R1)
    );
    let op = r.json();
    assert_eq!(op["state"], "succeeded", "{op}");
    let switchover_ms = repoint_ms(&op, "ro-1");
    let switchover_secs = op_seconds(&op);
    assert_follows(&tb, RO1, 0, 3);
    assert_eq!(started_at(&tb, RO1), postmaster, "a reload, not a restart");
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    let acked = writer.stop();
    assert_invariants(&tb, 0, Host::A, &acked);

    println!(
        "three nodes: failover {failover_secs:.2}s by its steps ({:.2}s request to answer), ro-1 re-pointed in {failover_ms} ms",
        failover_wall.as_secs_f64()
    );
    println!(
        "three nodes: switchover {switchover_secs:.2}s by its steps ({:.2}s request to answer), ro-1 re-pointed in {switchover_ms} ms",
        switchover_wall.as_secs_f64()
    );
}

/// Three nodes and etcd on host e: etcd down refuses operations while every
/// daemon keeps monitoring; etcd cut from the operating daemon while its
/// switchover is held after the fence stops it before the next step; a
/// holder killed while holding the lease loses it after the TTL, the other
/// daemon takes it, and the dead holder's resume is refused by the token.
#[test]
fn three_nodes_with_etcd_down_cut_and_a_killed_holder() {
    let mut o = opts(1, true);
    // Held 8 s after the fence's effect, before the next step's check.
    o.daemon_env[0] = vec![(
        "PGWARDEN_FAULT_PAUSE".into(),
        "fence_application:after:8".into(),
    )];
    let tb = start(o);
    wait_healthy(&tb, "healthy first");
    let writer = tb.start_writer(Host::C);
    writer.wait_more(10, Duration::from_secs(30)).unwrap();

    // etcd down.
    tb.stop_etcd();
    for (via, kind) in [
        (Host::B, "failover"),
        (Host::A, "switchover"),
        (Host::R1, "switchover"),
    ] {
        let r = post(
            &tb,
            via,
            &format!("/v1/{kind}"),
            r#"{"target": "pg-b", "reason": "etcd down"}"#,
        );
        assert_eq!(r.status, 503, "{kind} via {via:?}: {}", r.body);
        let msg = r.json()["message"].as_str().unwrap_or_default().to_owned();
        assert!(
            msg.contains("etcd") && msg.contains(Host::E.addr()),
            "{msg}"
        );
    }
    let r = post(
        &tb,
        Host::A,
        "/v1/switchover",
        r#"{"target": "pg-b", "reason": "etcd down", "dry_run": true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let plan = r.json();
    assert_eq!(plan["would_proceed"], false, "{plan}");
    assert!(
        plan["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "etcd_lock" && c["verdict"] == "fail"),
        "{plan}"
    );
    // Monitoring does not depend on etcd: every daemon, the replica's too.
    for host in tb.node_hosts() {
        // Polled: a commit of the writer caught waiting for the standby
        // (`writes_blocked`) may show for one poll on a loaded machine.
        wait_health(
            &tb,
            host,
            "healthy with etcd down",
            within(&tb, 8),
            |c, _| c == 200,
        );
        let m = get(&tb, host, "/metrics");
        assert!(
            m.status == 200 && m.body.contains("pgwarden_node_role"),
            "{host:?}"
        );
        let ops = get(&tb, host, "/v1/operations").json();
        assert_eq!(ops["operations"].as_array().unwrap().len(), 0, "{ops}");
    }
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    assert_invariants(&tb, 0, Host::A, &writer.acked());
    tb.start_etcd_again().unwrap();

    // A lease lost mid-operation: etcd cut from a's daemon while its
    // switchover is held after the fence.
    let before = pause_count(&tb, Host::A);
    let r = switchover(&tb, Host::A, "pg-b", "lease lost");
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    wait_paused(&tb, Host::A, before);
    let (value, token, _) = tb.etcd_get(&tb.etcd_lock_key()).expect("the lock key");
    assert_eq!(value["operation_id"], id.as_str(), "{value}");
    assert_eq!(value["holder"], "pg-a", "{value}");
    // Shared through etcd: b's and r1's daemons refuse their own.
    for via in [Host::B, Host::R1] {
        let r = switchover(&tb, via, "pg-b", "while held");
        assert_eq!(r.status, 409, "{via:?}: {}", r.body);
        assert!(r.body.contains(&format!("token {token}")), "{}", r.body);
    }
    let cut = tb.cut(Host::A, Host::E);
    let op = wait_done(&tb, Host::A, &id);
    assert_eq!(op["state"], "failed", "{op}");
    let failed: Vec<&serde_json::Value> = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{op}");
    assert_eq!(failed[0]["name"], "stop_old_primary", "{op}");
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("did not run"),
        "{op}"
    );
    // Nothing after the fence ran.
    assert!(!in_recovery(&tb, 0) && in_recovery(&tb, 1), "no promotion");
    assert_ne!(tb.app_ctl(Host::A, "is-running").0, 0, "still fenced");
    // Unrenewed, the lease ends after the TTL: the key is gone.
    poll_until(TTL + Duration::from_secs(10), "the lease to expire", || {
        tb.etcd_get(&tb.etcd_lock_key()).is_none().then_some(())
    })
    .unwrap();
    drop(cut);
    let r = post(
        &tb,
        Host::A,
        &format!("/v1/operations/{id}/resume?wait=true"),
        "",
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("not resumed"), "{}", r.body);
    let r = post(&tb, Host::A, &format!("/v1/operations/{id}/abort"), "");
    assert_eq!(r.status, 200, "{}", r.body);
    // The operator starts the fenced instance again.
    let (code, out) = tb.app_ctl(Host::A, "start");
    assert_eq!(code, 0, "{out}");
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    assert_invariants(&tb, 0, Host::A, &writer.acked());

    // A holder killed while holding the lease. a's operation is held
    // before its first step; b's is held 20 s before its first, so that
    // a's resume meets it holding the lock.
    tb.start_daemon(
        Host::A,
        &[(
            "PGWARDEN_FAULT_PAUSE".into(),
            "fence_application:before".into(),
        )],
    )
    .unwrap();
    tb.start_daemon(
        Host::B,
        &[(
            "PGWARDEN_FAULT_PAUSE".into(),
            "fence_application:before:20".into(),
        )],
    )
    .unwrap();
    wait_polled(&tb);
    let before = pause_count(&tb, Host::A);
    let r = switchover(&tb, Host::A, "pg-b", "killed holder");
    assert_eq!(r.status, 202, "{}", r.body);
    let dead_id = r.json()["id"].as_str().unwrap().to_owned();
    wait_paused(&tb, Host::A, before);
    let (_, dead_token, _) = tb.etcd_get(&tb.etcd_lock_key()).expect("the lock key");
    tb.kill_daemon(Host::A);
    let killed = Instant::now();
    let waited = poll_until(Duration::from_secs(60), "the lease to expire", || {
        tb.etcd_get(&tb.etcd_lock_key())
            .is_none()
            .then(|| killed.elapsed())
    })
    .unwrap();
    println!(
        "three nodes: the killed holder's lock key was gone {:.1}s after the kill (ttl {}s)",
        waited.as_secs_f64(),
        TTL.as_secs()
    );
    assert!(waited <= TTL + Duration::from_secs(5), "{waited:?}");
    // The dead holder's host comes back (a switchover's preflight needs
    // its daemon); the other daemon takes the lock.
    tb.start_daemon(Host::A, &[]).unwrap();
    wait_polled(&tb);
    let r = switchover(&tb, Host::B, "pg-b", "after the holder died");
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let (value, token, _) = tb.etcd_get(&tb.etcd_lock_key()).expect("the new lock key");
    assert_eq!(value["operation_id"], id.as_str(), "{value}");
    assert!(token > dead_token, "{token} > {dead_token}");
    let r = post(
        &tb,
        Host::A,
        &format!("/v1/operations/{dead_id}/resume?wait=true"),
        "",
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        msg.starts_with("not resumed")
            && msg.contains(&format!("token {dead_token}"))
            && msg.contains(&format!("operation {id} of the daemon beside pg-b")),
        "{msg}"
    );
    let op = get(&tb, Host::A, &format!("/v1/operations/{dead_id}")).json();
    assert_eq!(op["state"], "interrupted", "nothing ran: {op}");
    let r = post(&tb, Host::A, &format!("/v1/operations/{dead_id}/abort"), "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        tb.etcd_get(&tb.etcd_lock_key()).map(|(_, t, _)| t),
        Some(token),
        "the new holder's key is left alone"
    );
    let op = wait_done(&tb, Host::B, &id);
    assert_eq!(
        op["state"],
        "succeeded",
        "{op}\n{}",
        tb.daemon_log_text(Host::B)
    );
    assert_follows(&tb, RO1, 1, 2);
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    let acked = writer.stop();
    assert_invariants(&tb, 1, Host::A, &acked);
}

/// Four nodes (a, b, r1, r2). a and b cut from each other while both
/// replicas still see a: a's primary is isolated all the same (a replica
/// is a witness, not a peer), and the replicas' daemons show it is a cut
/// (they see both). Healed, a switchover re-points both replicas; neither
/// is ever a target by accident.
#[test]
fn four_nodes_isolation_ignores_replicas_and_a_switchover_re_points_both() {
    let tb = start(opts(2, false));
    wait_healthy(&tb, "healthy with two replicas");
    let writer = tb.start_writer(Host::C);
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    assert_replica_refused(&tb, Host::A, "ro-1");
    assert_replica_refused(&tb, Host::R2, "ro-2");

    let cut = tb.cut(Host::A, Host::B);
    let h = wait_health(
        &tb,
        Host::A,
        "a's primary isolated",
        within(&tb, 12),
        |c, h| c == 503 && has_problem(h, "primary_isolated", Some("pg-a")),
    );
    let p = h["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == "primary_isolated")
        .unwrap()
        .clone();
    let msg = p["message"].as_str().unwrap();
    assert!(msg.contains("ro-1, ro-2 still answer"), "{msg}");
    let r = get(&tb, Host::A, "/primary");
    assert_eq!(r.status, 503, "{}", r.body);
    // The witnesses: each replica's daemon still sees both pair nodes.
    for host in tb.replica_hosts() {
        let s = get(&tb, host, "/v1/status").json();
        assert_eq!(s["primary"], "pg-a", "{host:?}: {s}");
        for n in &s["nodes"].as_array().unwrap()[..2] {
            assert_eq!(n["reachable"], true, "{host:?}: {n}");
        }
    }
    drop(cut);
    wait_health(&tb, Host::A, "not isolated", within(&tb, 12), |_, h| {
        !has_problem(h, "primary_isolated", None)
    });
    wait_healthy(&tb, "healthy after the heal");
    writer.wait_more(10, Duration::from_secs(60)).unwrap();
    assert_invariants(&tb, 0, Host::A, &writer.acked());

    let postmasters = [started_at(&tb, 2), started_at(&tb, 3)];
    let r = post(
        &tb,
        Host::R2,
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "maintenance of host a"}"#,
    );
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.body,
        tb.daemon_log_text(Host::R2)
    );
    let op = r.json();
    assert_eq!(op["state"], "succeeded", "{op}");
    for (ro, name) in [(2, "ro-1"), (3, "ro-2")] {
        let ms = repoint_ms(&op, name);
        println!("four nodes: switchover re-pointed {name} in {ms} ms");
        assert_follows(&tb, ro, 1, 2);
        assert_eq!(started_at(&tb, ro), postmasters[ro - 2], "{name} reloaded");
    }
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    let acked = writer.stop();
    assert_invariants(&tb, 1, Host::A, &acked);
    assert_replica_refused(&tb, Host::B, "ro-2");
}

/// The hosts added for replicas and etcd are cleaned up as a, b and c are:
/// a test that panics leaves no namespace, process or directory behind
/// (etcd on host e and PostgreSQL on r1 included).
#[test]
fn a_panic_leaves_no_replica_host_and_no_etcd_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let mut o = opts(1, true);
        o.start_daemons = false;
        o.app_host = None;
        let tb = start(o);
        let footprint = tb.footprint();
        for ns in [tb.ns(Host::R1), tb.ns(Host::E)] {
            assert!(footprint.namespaces.contains(&ns), "{ns}");
        }
        assert!(!tb.processes(Host::R1).is_empty(), "ro-1 runs on r1");
        assert!(!tb.processes(Host::E).is_empty(), "etcd runs on e");
        let _cut = tb.cut(Host::A, Host::E);
        tx.send(footprint).unwrap();
        panic!("on purpose: the testbed must clean up while unwinding");
    })
    .join();
    assert!(outcome.is_err(), "the thread panicked");
    let footprint = rx.recv().unwrap();
    assert_eq!(footprint.leftovers(), Vec::<String>::new());
}
