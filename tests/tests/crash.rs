//! The daemon SIGKILLed inside every step of a switchover and of a failover
//! (rejoin: rejoin.rs), restarted, and the operation resumed: it must finish, and finish once. The kill lands
//! at the worst point, after the step's side effect and before its outcome
//! is journaled (fault injection holds the daemon there), so resume must
//! find the effect in the real state instead of repeating it: pg_promote
//! not run twice (the timeline goes up by exactly one), database.cfg not
//! edited twice (one backup, the exact expected bytes).

mod util;

use std::time::Duration;

use pgwarden_testkit::poll_until;
use util::{has_problem, Env, Options};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Run by pg-a's daemon while pg-a is healthy.
    Switchover,
    /// Run by pg-b's daemon after pg-a crashed.
    Failover,
}

fn crash_in(kind: Kind, step: &str, point: &str) {
    let fault = format!("{step}:{point}");
    // The daemon that runs the operation carries the fault.
    let runner = if kind == Kind::Switchover { 0 } else { 1 };
    let mut daemon_env = vec![vec![], vec![]];
    daemon_env[runner] = vec![("PGWARDEN_FAULT_PAUSE".to_owned(), fault.clone())];
    let (mut env, app) = Env::start_with_app(Options {
        daemon_env,
        ..Default::default()
    });
    env.wait_health(runner, "healthy first", env.within_polls(3), |c, _| {
        c == 200
    });
    let path = match kind {
        Kind::Switchover => "/v1/switchover",
        Kind::Failover => {
            env.cluster.kill_postmaster(0).unwrap();
            env.wait_health(1, "pg-a down", env.within_polls(5), |_, h| {
                has_problem(h, "node_down", Some("pg-a"))
            });
            "/v1/failover"
        }
    };
    // Acknowledged before the operation: none may be lost.
    let acked_before = app.acks();
    let r = env.daemons[runner].post(
        path,
        r#"{"target": "pg-b", "reason": "crash test"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();

    // Wait until the daemon holds at the fault point, then kill it there.
    poll_until(
        Duration::from_secs(60),
        "the daemon to reach the fault point",
        || {
            env.daemons[runner]
                .log_text()
                .contains("fault injection: pausing the operation here")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", env.daemons[runner].log_text()));
    let journal =
        pgwarden_testkit::state_dir(&env.cluster, runner).join(format!("operations/{id}.json"));
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&journal).unwrap()).unwrap();
    let running: Vec<&str> = on_disk["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "running")
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(running, [step], "the journal shows the step in progress");
    env.daemons[runner].kill();

    // Restarted, the daemon reports the operation interrupted.
    env.restart_daemon(runner, &[]);
    let op = env.daemons[runner]
        .get(&format!("/v1/operations/{id}"))
        .json();
    assert_eq!(op["state"], "interrupted", "{op}");
    env.wait_health(
        runner,
        "operation_interrupted",
        env.within_polls(3),
        |c, h| c == 503 && has_problem(h, "operation_interrupted", None),
    );

    // Resume finishes it.
    let r = env.daemons[runner].post(
        &format!("/v1/operations/{id}/resume?wait=true"),
        "",
        &env.token(),
    );
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.body,
        env.daemons[runner].log_text()
    );
    let op = r.json();
    assert_eq!(op["state"], "succeeded");
    for s in op["steps"].as_array().unwrap() {
        let want = if s["name"] == step { 2 } else { 1 };
        assert_eq!(s["attempts"], want, "{s}");
    }

    // Each effect happened exactly once.
    let tl: u32 = env
        .cluster
        .psql(
            1,
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
        )
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(tl, 2, "promoted exactly once");
    let a = env.cluster.node(0);
    let b = env.cluster.node(1);
    let expected = app
        .original
        .replace(
            &format!("host = {}\n", a.host),
            &format!("host = {}\n", b.host),
        )
        .replace(&format!("port={}\n", a.port), &format!("port={}\n", b.port));
    assert_eq!(std::fs::read_to_string(&app.config_file).unwrap(), expected);
    let backups = std::fs::read_dir(&app.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".bak"))
        .count();
    assert_eq!(backups, 1, "database.cfg edited once");
    assert!(!env.cluster.is_running(0), "the old primary stays stopped");
    assert_eq!(app.ctl("is-running").0, 0, "the application runs again");
    let mut acked = app.wait_acks(app.acks().len() + 3);
    acked.extend(acked_before);
    let c = env.cluster.credentials();
    let ids: std::collections::HashSet<i64> = env
        .cluster
        .psql_db(1, &c.app_db, "SELECT id FROM heartbeat")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let lost: Vec<i64> = acked.iter().filter(|i| !ids.contains(i)).copied().collect();
    assert!(lost.is_empty(), "acknowledged heartbeats lost: {lost:?}");
    env.wait_health(
        runner,
        "no operation problem left",
        env.within_polls(3),
        |_, h| {
            !has_problem(h, "operation_interrupted", None)
                && !has_problem(h, "operation_failed", None)
        },
    );
}

macro_rules! crash_tests {
    ($($name:ident: $kind:expr, $step:literal, $point:literal;)*) => {
        $(
            #[test]
            fn $name() {
                crash_in($kind, $step, $point);
            }
        )*
    };
}

crash_tests! {
    killed_after_fencing: Kind::Switchover, "fence_application", "after";
    killed_after_stopping_the_old_primary: Kind::Switchover, "stop_old_primary", "after";
    killed_before_promoting: Kind::Switchover, "promote", "before";
    killed_after_promoting: Kind::Switchover, "promote", "after";
    killed_after_reconfiguring: Kind::Switchover, "reconfigure_new_primary", "after";
    killed_after_switching_database_cfg: Kind::Switchover, "switch_application", "after";
    killed_after_starting_the_application: Kind::Switchover, "start_application", "after";
    failover_killed_after_fencing: Kind::Failover, "fence_application", "after";
    failover_killed_after_stop_old_primary: Kind::Failover, "stop_old_primary", "after";
    failover_killed_after_promoting: Kind::Failover, "promote", "after";
    failover_killed_after_reconfiguring: Kind::Failover, "reconfigure_new_primary", "after";
    failover_killed_after_switching_database_cfg: Kind::Failover, "switch_application", "after";
    failover_killed_after_starting_the_application: Kind::Failover, "start_application", "after";
}
