//! The monitoring core against real PostgreSQL 15 clusters: what /health,
//! /metrics, /primary, /replica and /v1/status tell an operator when the
//! cluster is healthy, and when its standby, primary or slot breaks.

mod util;

use std::process::{Command, Stdio};
use std::time::Duration;

use pgwarden_testkit::{poll_until, StopMode};
use util::{has_problem, metric, Env};

#[test]
fn a_healthy_cluster_is_healthy_on_both_daemons() {
    let mut env = Env::start();
    let deadline = env.within_polls(3);
    for i in 0..2 {
        env.wait_health(i, "a healthy cluster", deadline, |status, h| {
            status == 200 && h["healthy"] == true
        });
    }
    for d in &env.daemons {
        let m = d.metrics();
        let v = |name: &str, labels: &[(&str, &str)]| {
            metric(&m, name, labels).unwrap_or_else(|| panic!("{name}{labels:?} missing in\n{m}"))
        };
        assert_eq!(v("pgwarden_node_up", &[("node", "pg-a")]), 1.0);
        assert_eq!(v("pgwarden_node_up", &[("node", "pg-b")]), 1.0);
        assert_eq!(v("pgwarden_node_is_primary", &[("node", "pg-a")]), 1.0);
        assert_eq!(v("pgwarden_node_is_primary", &[("node", "pg-b")]), 0.0);
        assert_eq!(v("pgwarden_node_timeline", &[("node", "pg-a")]), 1.0);
        assert_eq!(v("pgwarden_node_timeline", &[("node", "pg-b")]), 1.0);
        let link = [("node", "pg-a"), ("standby", "pg-b")];
        assert_eq!(v("pgwarden_replication_connected", &link), 1.0);
        assert_eq!(v("pgwarden_replication_sync", &link), 1.0);
        assert!(
            v(
                "pgwarden_replication_lag_bytes",
                &[("node", "pg-a"), ("standby", "pg-b"), ("kind", "flush")]
            ) >= 0.0
        );
        assert_eq!(
            v(
                "pgwarden_slot_active",
                &[("node", "pg-a"), ("slot", "replication")]
            ),
            1.0
        );
        assert_eq!(
            v("pgwarden_sync_standby_names_set", &[("node", "pg-a")]),
            1.0
        );
        assert_eq!(
            v("pgwarden_backends_waiting_sync_rep", &[("node", "pg-a")]),
            0.0
        );
        assert_eq!(v("pgwarden_split_brain", &[("cluster", "demo")]), 0.0);
        assert_eq!(v("pgwarden_cluster_healthy", &[]), 1.0);
        assert_eq!(
            v(
                "pgwarden_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            1.0
        );
        assert!(
            v(
                "pgwarden_node_wal_lsn_bytes",
                &[("node", "pg-a"), ("kind", "current")]
            ) > 0.0
        );
        assert!(
            v(
                "pgwarden_node_wal_lsn_bytes",
                &[("node", "pg-b"), ("kind", "replay")]
            ) > 0.0
        );
        assert!(v("pgwarden_poll_duration_seconds_count", &[("node", "pg-b")]) >= 1.0);
    }

    // Load balancer checks answer for the daemon's own node only.
    let (a, b) = (&env.daemons[0], &env.daemons[1]);
    assert_eq!(a.get("/primary").status, 200);
    assert_eq!(b.get("/primary").status, 503);
    assert_eq!(a.get("/replica").status, 503);
    assert_eq!(b.get("/replica").status, 200);

    // /v1/status: everything one poll saw, and no password anywhere.
    let status = b.get("/v1/status");
    assert_eq!(status.status, 200);
    let s = status.json();
    assert_eq!(s["local_node"], "pg-b");
    assert_eq!(s["primary"], "pg-a");
    let pg_b = &s["nodes"][1];
    assert_eq!(pg_b["role"], "standby");
    assert_eq!(pg_b["snapshot"]["wal_receiver"]["status"], "streaming");
    assert_eq!(
        pg_b["snapshot"]["settings"]["primary_conninfo"]["application_name"],
        "inmanta"
    );
    assert_eq!(
        pg_b["snapshot"]["settings"]["primary_slot_name"],
        "replication"
    );
    let pg_a = &s["nodes"][0];
    assert_eq!(pg_a["replication"][0]["standby"], "pg-b");
    assert_eq!(pg_a["replication"][0]["sync_state"], "sync");
    assert_eq!(
        pg_a["snapshot"]["system_identifier"],
        pg_b["snapshot"]["system_identifier"]
    );
    let creds = env.cluster.credentials();
    for secret in [
        &creds.monitor_password,
        &creds.replication_password,
        &creds.app_password,
    ] {
        assert!(
            !status.body.contains(secret.as_str()),
            "a password leaked into /v1/status"
        );
        assert!(
            !a.log_text().contains(secret.as_str()),
            "a password leaked into the log"
        );
    }
    assert!(!status.body.contains(env.cluster.api_token()));

    // `pgwarden status` shows the same as a table.
    let out = Command::new(util::pgwarden_bin())
        .args(["status", "--url", &a.url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("healthy") && table.contains("pg-b") && table.contains("streaming"),
        "{table}"
    );

    // SIGTERM stops the daemon cleanly.
    let code = env.daemons[1].terminate();
    assert!(code.success(), "exit status {code:?}");
}

#[test]
fn a_stopped_standby_is_reported_then_blocks_writes_then_recovers() {
    let env = Env::start();
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);

    env.cluster.stop_node(1, StopMode::Fast).unwrap();
    let h = env.wait_health(0, "standby_not_streaming", env.within_polls(3), |c, h| {
        c == 503 && has_problem(h, "standby_not_streaming", Some("pg-b"))
    });
    assert_eq!(h["healthy"], false);
    assert!(
        metric(
            &env.daemons[0].metrics(),
            "pgwarden_replication_connected",
            &[("standby", "pg-b")]
        ) == Some(0.0)
    );

    // A commit now waits for the missing synchronous standby.
    let c = env.cluster.credentials();
    let psql = env.cluster.bin_dir().join("psql");
    let conninfo = env
        .cluster
        .conninfo(0, &c.app_user, &c.app_password, &c.app_db);
    let mut writer = Command::new(psql)
        .args([
            conninfo.as_str(),
            "-X",
            "-c",
            "CREATE TABLE blocked_write(x int); INSERT INTO blocked_write VALUES (1)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    env.wait_health(0, "writes_blocked", env.within_polls(3), |_, h| {
        has_problem(h, "writes_blocked", Some("pg-a"))
    });
    let waiting = poll_until(env.within_polls(3), "backends_waiting_sync_rep = 1", || {
        let v = metric(
            &env.daemons[1].metrics(),
            "pgwarden_backends_waiting_sync_rep",
            &[("node", "pg-a")],
        )?;
        (v >= 1.0).then_some(v)
    })
    .unwrap();
    assert!(waiting >= 1.0);
    assert!(
        writer.try_wait().unwrap().is_none(),
        "the write should still wait"
    );

    // The standby comes back: the write commits and the cluster is healthy.
    env.cluster.start_node(1).unwrap();
    let status = poll_until(
        Duration::from_secs(30),
        "the blocked write to commit",
        || writer.try_wait().unwrap(),
    )
    .unwrap();
    assert!(status.success());
    for i in 0..2 {
        env.wait_health(
            i,
            "healthy again",
            env.within_polls(3) + Duration::from_secs(10),
            |c, _| c == 200,
        );
    }
}

#[test]
fn a_killed_primary_is_down() {
    let env = Env::start();
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    env.cluster.kill_postmaster(0).unwrap();
    let h = env.wait_health(1, "node_down for pg-a", env.within_polls(4), |c, h| {
        c == 503 && has_problem(h, "node_down", Some("pg-a")) && has_problem(h, "no_primary", None)
    });
    assert_eq!(h["nodes"][0]["reachable"], false);
    let m = env.daemons[1].metrics();
    assert_eq!(
        metric(&m, "pgwarden_node_up", &[("node", "pg-a")]),
        Some(0.0)
    );
    assert!(metric(&m, "pgwarden_poll_errors_total", &[("node", "pg-a")]).unwrap() >= 3.0);
    // The standby's own poll may still be the one from before the kill:
    // its receiver is seen gone at its next poll.
    poll_until(
        env.within_polls(3),
        "the standby's receiver to have lost its primary",
        || (env.daemons[1].get("/replica").status == 503).then_some(()),
    )
    .unwrap();
    assert_eq!(env.daemons[0].get("/primary").status, 503);
    assert_eq!(
        env.daemons[0].get("/livez").status,
        200,
        "the daemon itself lives on"
    );
}

#[test]
fn a_standby_promoted_beside_a_live_primary_is_split_brain() {
    // Reported only: the daemon beside a stale primary would otherwise stop
    // it (see failover.rs), and this test looks at the split brain itself.
    let env = Env::start_with_extra("stop_stale_primary: false\n");
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    env.cluster.promote(1).unwrap();
    for i in 0..2 {
        env.wait_health(i, "split_brain", env.within_polls(3), |c, h| {
            c == 503
                && has_problem(h, "split_brain", None)
                && has_problem(h, "stale_primary", Some("pg-a"))
        });
        assert_eq!(
            metric(&env.daemons[i].metrics(), "pgwarden_split_brain", &[]),
            Some(1.0)
        );
    }
    let m = env.daemons[0].metrics();
    assert_eq!(
        metric(&m, "pgwarden_node_timeline", &[("node", "pg-b")]),
        Some(2.0),
        "timeline right after promote"
    );
    // Load balancers must not send writes to the stale primary.
    assert_eq!(env.daemons[0].get("/primary").status, 503);
    assert_eq!(env.daemons[1].get("/primary").status, 200);
}

#[test]
fn a_dropped_slot_is_missing() {
    let env = Env::start();
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    // The standby streams without the slot from now on, so only the slot is wrong.
    env.cluster
        .psql(1, "ALTER SYSTEM SET primary_slot_name = ''")
        .unwrap();
    env.cluster.psql(1, "SELECT pg_reload_conf()").unwrap();
    poll_until(Duration::from_secs(30), "the slot to be released", || {
        let r = env
            .cluster
            .psql(
                0,
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'replication'",
            )
            .ok()?;
        (r == "f").then_some(())
    })
    .unwrap();
    // The reload restarts the walreceiver: only once it streams again,
    // without the slot, is "the standby streams" true, so that the check
    // of standby_not_streaming below can fail.
    poll_until(
        Duration::from_secs(30),
        "the standby to stream again without the slot",
        || {
            let r = env
                .cluster
                .psql(
                    0,
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                )
                .ok()?;
            (r == "1").then_some(())
        },
    )
    .unwrap();
    env.cluster
        .psql(0, "SELECT pg_drop_replication_slot('replication')")
        .unwrap();
    let h = env.wait_health(0, "slot_missing", env.within_polls(3), |c, h| {
        c == 503 && has_problem(h, "slot_missing", Some("pg-a"))
    });
    assert!(!has_problem(&h, "standby_not_streaming", None), "{h}");
    assert_eq!(
        metric(
            &env.daemons[0].metrics(),
            "pgwarden_slot_active",
            &[("slot", "replication")]
        ),
        None
    );
}

#[test]
fn a_hung_node_does_not_delay_the_other() {
    let env = Env::start();
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    let count = |node: &str| {
        metric(
            &env.daemons[0].metrics(),
            "pgwarden_poll_duration_seconds_count",
            &[("node", node)],
        )
        .unwrap_or(0.0)
    };
    // SIGSTOP every process of the standby: connections hang instead of failing.
    let pids = env.cluster.node_processes(1);
    assert!(!pids.is_empty());
    let signal = |sig| {
        for &p in &pids {
            // SAFETY: plain kill(2) of a postgres process of this test's cluster.
            unsafe { libc::kill(p, sig) };
        }
    };
    signal(libc::SIGSTOP);
    let (a0, b0) = (count("pg-a"), count("pg-b"));
    // Wait for two timed-out polls of the hung node...
    let waited = poll_until(
        env.within_polls(12),
        "two polls of the hung standby",
        || (count("pg-b") >= b0 + 2.0).then_some(()),
    );
    let a1 = count("pg-a");
    signal(libc::SIGCONT);
    waited.unwrap();
    // ...during which the primary kept its own pace (a 1 s timeout is 4 polls at 250 ms).
    assert!(
        a1 - a0 >= 3.0,
        "pg-a polled {} times while pg-b hung twice",
        a1 - a0
    );
    let h = env.daemons[0].get("/health").json();
    assert_eq!(h["nodes"][0]["reachable"], true, "{h}");
}

#[test]
fn a_least_privilege_monitor_role_is_enough() {
    // What docs and the example config promise: LOGIN + pg_monitor suffices
    // to observe (promoting needs more, later).
    let cluster = pgwarden_testkit::TestCluster::start(Default::default()).unwrap();
    cluster
        .psql(
            0,
            "CREATE ROLE watcher LOGIN PASSWORD 'watcher-pw' IN ROLE pg_monitor",
        )
        .unwrap();
    let pw = cluster.dir().join("watcher.password");
    std::fs::write(&pw, "watcher-pw").unwrap();
    let layout = pgwarden_testkit::DaemonLayout::for_tests(&cluster);
    let yaml = pgwarden_testkit::pgwarden_config(&cluster, 1, &layout)
        .replace("  user: pgwarden\n", "  user: watcher\n")
        .replace(
            &cluster
                .secret_file(pgwarden_testkit::Secret::MonitorPassword)
                .display()
                .to_string(),
            &pw.display().to_string(),
        );
    assert!(yaml.contains("user: watcher"));
    let path = cluster.dir().join("watcher.yaml");
    std::fs::write(&path, yaml).unwrap();
    let d = util::Daemon::start(&path, layout.api_url(1));
    poll_until(
        Duration::from_secs(20),
        "healthy as seen by a pg_monitor role",
        || {
            let r = d.get("/health");
            (r.status == 200).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", d.get("/health").body, d.log_text()));
    // Healthy can show before the standby's own first poll (its problems
    // are read on the primary): wait until both nodes were polled.
    let s = poll_until(Duration::from_secs(20), "both nodes polled", || {
        let s = d.get("/v1/status").json();
        (s["nodes"][0]["snapshot"].is_object() && s["nodes"][1]["snapshot"].is_object())
            .then_some(s)
    })
    .unwrap();
    assert_eq!(
        s["nodes"][1]["snapshot"]["settings"]["primary_conninfo"]["application_name"],
        "inmanta"
    );
    assert_eq!(
        s["nodes"][0]["replication"][0]["state"], "streaming",
        "pg_monitor sees replication details"
    );
}
