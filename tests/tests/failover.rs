//! Failover and switchover end to end on real clusters, with the stand-in
//! application fenced and redirected through real commands: what an
//! operator's one curl must achieve, and what it must refuse to do.

mod util;

use std::time::Duration;

use pgwarden_testkit::{poll_until, StopMode};
use util::{has_problem, metric, Env, Options};

const WAIT: &str = "?wait=true";

fn ids_on(env: &Env, node: usize) -> Vec<i64> {
    let c = env.cluster.credentials();
    let out = env
        .cluster
        .psql_db(node, &c.app_db, "SELECT id FROM heartbeat ORDER BY id")
        .unwrap();
    out.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn missing(acked: &[i64], present: &[i64]) -> Vec<i64> {
    let set: std::collections::HashSet<_> = present.iter().collect();
    acked.iter().filter(|a| !set.contains(a)).copied().collect()
}

/// What `path` gained from byte `offset` on (a server log during one start).
fn log_from(path: &std::path::Path, offset: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default()).into_owned()
}

fn in_recovery(env: &Env, node: usize) -> Option<bool> {
    env.cluster
        .psql(node, "SELECT pg_is_in_recovery()")
        .ok()
        .map(|v| v == "t")
}

fn timeline(env: &Env, node: usize) -> u32 {
    env.cluster
        .psql(
            node,
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
        )
        .unwrap()
        .parse()
        .unwrap()
}

/// The byte-exact expectation for database.cfg after a switch to node `i`.
fn switched_cfg(env: &Env, original: &str, i: usize) -> String {
    let a = env.cluster.node(0);
    let n = env.cluster.node(i);
    original
        .replace(
            &format!("host = {}\n", a.host),
            &format!("host = {}\n", n.host),
        )
        .replace(&format!("port={}\n", a.port), &format!("port={}\n", n.port))
}

fn sessions_of_app(env: &Env, node: usize) -> u64 {
    env.cluster
        .psql(
            node,
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'inmanta'",
        )
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn failover_after_the_primary_is_killed() {
    let (env, app) = Env::start_with_app(Options::default());
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    assert_eq!(timeline(&env, 0), 1);

    env.cluster.stop_node(0, StopMode::Immediate).unwrap();
    let acked_before = app.acks();
    env.wait_health(1, "pg-a down", env.within_polls(5), |_, h| {
        has_problem(h, "node_down", Some("pg-a"))
    });

    let r = env.daemons[1].post(
        &format!("/v1/failover{WAIT}"),
        r#"{"target": "pg-b", "reason": "pg-a crashed"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[1].log_text());
    let op = r.json();
    assert_eq!(op["state"], "succeeded");
    let steps: Vec<&str> = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "preflight",
            "fence_application",
            "stop_old_primary",
            "promote",
            "reconfigure_new_primary",
            "switch_application",
            "start_application",
            "done"
        ]
    );

    // The new primary takes writes, one timeline up.
    assert_eq!(in_recovery(&env, 1), Some(false));
    assert_eq!(timeline(&env, 1), 2);
    assert_eq!(
        env.cluster
            .psql(1, "SHOW synchronous_standby_names")
            .unwrap(),
        "",
        "a lone primary must not block writes"
    );
    assert_eq!(
        env.cluster
            .psql(
                1,
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'replication'"
            )
            .unwrap(),
        "1"
    );
    // database.cfg points to it, every other byte unchanged, and a backup kept.
    let cfg = std::fs::read_to_string(&app.config_file).unwrap();
    assert_eq!(cfg, switched_cfg(&env, &app.original, 1));
    let backups: Vec<_> = std::fs::read_dir(&app.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".bak"))
        .collect();
    assert_eq!(backups.len(), 1);
    assert_eq!(
        std::fs::read_to_string(backups[0].path()).unwrap(),
        app.original
    );
    // The application runs, holds its session on the new primary and writes there.
    assert_eq!(app.ctl("is-running").0, 0);
    assert!(sessions_of_app(&env, 1) >= 1);
    let after = app.wait_acks(acked_before.len() + 5);
    // Every heartbeat acknowledged before the kill survived.
    let present = ids_on(&env, 1);
    assert_eq!(missing(&acked_before, &present), Vec::<i64>::new());
    assert_eq!(missing(&after, &present).len(), 0);

    // Journal, audit and metrics tell the same story.
    let id = op["id"].as_str().unwrap();
    let fetched = env.daemons[1].get(&format!("/v1/operations/{id}")).json();
    assert_eq!(fetched["state"], "succeeded");
    let audit = env.daemons[1].get("/v1/audit?limit=10");
    assert!(
        audit.body.contains("/v1/failover") && audit.body.contains("\"caller\":\"token:"),
        "{}",
        audit.body
    );
    assert!(
        !audit.body.contains(&env.token()),
        "the token leaked into the audit log"
    );
    poll_until(
        env.within_polls(2),
        "operations_total to count the failover",
        || {
            let m = env.daemons[1].metrics();
            (metric(
                &m,
                "pgwarden_operations_total",
                &[("kind", "failover"), ("result", "succeeded")],
            ) == Some(1.0)
                && metric(&m, "pgwarden_operation_in_progress", &[]) == Some(0.0)
                && metric(&m, "pgwarden_application_fenced", &[]) == Some(0.0))
            .then_some(())
        },
    )
    .unwrap();
}

#[test]
fn switchover_loses_no_acknowledged_heartbeat() {
    let (env, app) = Env::start_with_app(Options::default());
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    app.wait_acks(5);

    let started = env.daemons[0].post(
        "/v1/switchover",
        r#"{"target": "pg-b", "reason": "maintenance"}"#,
        &env.token(),
    );
    assert_eq!(started.status, 202, "{}", started.body);
    let id = started.json()["id"].as_str().unwrap().to_owned();
    // Throughout the switchover and until the stopped old primary counts as
    // down, its last snapshot still says "primary": that must never read as
    // a split brain on the new primary's daemon.
    poll_until(
        env.within_polls(40),
        "the switchover to end and pg-a to count as down",
        || {
            let h = env.daemons[1].get("/health").json();
            assert!(
                !has_problem(&h, "split_brain", None),
                "false split brain: {h}"
            );
            let op = env.daemons[0].get(&format!("/v1/operations/{id}")).json();
            (op["state"] != "running" && has_problem(&h, "node_down", Some("pg-a"))).then_some(())
        },
    )
    .unwrap();
    let r = env.daemons[0].get(&format!("/v1/operations/{id}"));
    assert_eq!(
        r.json()["state"],
        "succeeded",
        "{}\n{}",
        r.body,
        env.daemons[0].log_text()
    );
    let acked = app.acks();
    assert_eq!(
        missing(&acked, &ids_on(&env, 1)),
        Vec::<i64>::new(),
        "zero acknowledged heartbeats lost"
    );
    // The old primary is stopped and takes no writes.
    assert!(!env.cluster.is_running(0), "pg-a must be stopped");
    assert!(env
        .cluster
        .psql(0, "CREATE TABLE should_fail(x int)")
        .is_err());
    assert_eq!(in_recovery(&env, 1), Some(false));
    assert_eq!(
        std::fs::read_to_string(&app.config_file).unwrap(),
        switched_cfg(&env, &app.original, 1)
    );
    let more = app.wait_acks(acked.len() + 3);
    assert_eq!(missing(&more, &ids_on(&env, 1)), Vec::<i64>::new());
    let op = r.json();
    let stop = &op["steps"][2];
    assert!(
        stop["message"].as_str().unwrap().contains("replayed up to"),
        "{stop}"
    );
}

#[test]
fn a_failing_stop_command_fails_the_fence_and_nothing_is_promoted() {
    let env_b = vec![("STANDIN_FAIL_STOP".to_owned(), "1".to_owned())];
    let (env, app) = Env::start_with_app(Options {
        daemon_env: vec![vec![], env_b],
        ..Default::default()
    });
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    let r = env.daemons[1].post(
        &format!("/v1/switchover{WAIT}"),
        r#"{"target": "pg-b"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 424, "{}", r.body);
    let op = r.json();
    assert_eq!(op["state"], "failed");
    assert_eq!(op["steps"][1]["name"], "fence_application");
    assert_eq!(op["steps"][1]["state"], "failed");
    assert!(
        op["steps"][1]["message"]
            .as_str()
            .unwrap()
            .contains("refusing to stop"),
        "{}",
        op["steps"][1]
    );
    assert!(op["steps"].as_array().unwrap()[2..]
        .iter()
        .all(|s| s["state"] == "pending"));
    assert_eq!(
        in_recovery(&env, 1),
        Some(true),
        "the standby must NOT be promoted"
    );
    assert_eq!(in_recovery(&env, 0), Some(false));
    assert_eq!(
        std::fs::read_to_string(&app.config_file).unwrap(),
        app.original
    );

    // The failed operation holds the lock and shows in /health, on both daemons.
    let id = op["id"].as_str().unwrap().to_owned();
    env.wait_health(1, "operation_failed", env.within_polls(3), |c, h| {
        c == 503 && has_problem(h, "operation_failed", None)
    });
    let again = env.daemons[1].post("/v1/switchover", r#"{"target": "pg-b"}"#, &env.token());
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(again.body.contains(&id), "{}", again.body);
    let other = env.daemons[0].post("/v1/switchover", r#"{"target": "pg-b"}"#, &env.token());
    assert_eq!(
        other.status, 409,
        "the peer holds the lock too: {}",
        other.body
    );
    // Abort releases it.
    let aborted = env.daemons[1].post(&format!("/v1/operations/{id}/abort"), "", &env.token());
    assert_eq!(aborted.status, 200, "{}", aborted.body);
    assert_eq!(aborted.json()["state"], "aborted");
    env.wait_health(1, "healthy after abort", env.within_polls(3), |c, _| {
        c == 200
    });
    let dry = env.daemons[0].post(
        "/v1/switchover",
        r#"{"target": "pg-b", "dry_run": true}"#,
        &env.token(),
    );
    assert_eq!(dry.json()["would_proceed"], true, "{}", dry.body);
}

#[test]
fn an_application_that_keeps_its_session_is_not_fenced() {
    // Another client holds a session as the application's role and fencing
    // may not terminate it: the fence cannot be verified, so nothing moves.
    let extra = "  terminate_lingering_sessions: false\n".to_owned();
    let (env, app) = Env::start_with_app(Options {
        application_extra: extra,
        ..Default::default()
    });
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    let c = env.cluster.credentials().clone();
    let mut holder = std::process::Command::new(env.cluster.bin_dir().join("psql"))
        .args([
            env.cluster
                .conninfo(0, &c.app_user, &c.app_password, &c.app_db)
                .as_str(),
            "-X",
            "-c",
            "SELECT pg_sleep(600)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    poll_until(Duration::from_secs(10), "the extra session", || {
        (sessions_of_app(&env, 0) >= 2).then_some(())
    })
    .unwrap();
    let r = env.daemons[0].post(
        &format!("/v1/switchover{WAIT}"),
        r#"{"target": "pg-b"}"#,
        &env.token(),
    );
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(r.status, 424, "{}", r.body);
    let fence = &r.json()["steps"][1];
    assert_eq!(fence["state"], "failed");
    assert!(
        fence["message"]
            .as_str()
            .unwrap()
            .contains("sessions of inmanta remain"),
        "{fence}"
    );
    assert_eq!(
        in_recovery(&env, 1),
        Some(true),
        "the standby must NOT be promoted"
    );
    assert_eq!(
        std::fs::read_to_string(&app.config_file).unwrap(),
        app.original
    );
}

#[test]
fn a_lingering_backend_is_terminated_then_the_fence_verified() {
    let (env, app) = Env::start_with_app(Options::default());
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    // A client of the application's role runs a long query and is killed:
    // its backend keeps running the query and never notices.
    let c = env.cluster.credentials().clone();
    let mut client = std::process::Command::new(env.cluster.bin_dir().join("psql"))
        .args([
            env.cluster
                .conninfo(0, &c.app_user, &c.app_password, &c.app_db)
                .as_str(),
            "-X",
            "-c",
            "SELECT pg_sleep(600)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    poll_until(Duration::from_secs(10), "the long query", || {
        (sessions_of_app(&env, 0) >= 2).then_some(())
    })
    .unwrap();
    client.kill().unwrap();
    client.wait().unwrap();
    let r = env.daemons[0].post(
        &format!("/v1/switchover{WAIT}"),
        r#"{"target": "pg-b"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let fence = &r.json()["steps"][1];
    assert!(
        fence["message"]
            .as_str()
            .unwrap()
            .contains("1 lingering session(s) of inmanta terminated"),
        "{fence}"
    );
    drop(app);
}

#[test]
fn refusals_say_why() {
    let (env, app) = Env::start_with_app(Options::default());
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    let d = &env.daemons[0];
    // Not a standby: 422 with the failed check.
    let r = d.post(
        "/v1/failover",
        r#"{"target": "pg-a", "force": true}"#,
        &env.token(),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let v = r.json();
    assert_eq!(v["error"], "preflight_failed");
    let check = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "target_is_standby")
        .unwrap()
        .clone();
    assert_eq!(check["verdict"], "fail");
    assert!(check["message"]
        .as_str()
        .unwrap()
        .contains("already a primary"));
    // A failover of a healthy primary is refused (switchover is the tool).
    let r = d.post("/v1/failover", r#"{"target": "pg-b"}"#, &env.token());
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("use a switchover"), "{}", r.body);
    // Authentication.
    let no_token = util::http(
        "POST",
        &format!("{}/v1/switchover", d.url),
        Some(r#"{"target": "pg-b"}"#),
        &[],
    );
    assert_eq!(no_token.status, 401);
    assert_eq!(no_token.json()["error"], "unauthorized");
    let wrong = d.post("/v1/switchover", r#"{"target": "pg-b"}"#, "not-the-token");
    assert_eq!(wrong.status, 403);
    // Bad bodies.
    assert_eq!(
        d.post("/v1/switchover", "{not json", &env.token()).status,
        400
    );
    assert_eq!(
        d.post(
            "/v1/switchover",
            r#"{"target": "pg-b", "targte": 1}"#,
            &env.token()
        )
        .status,
        400
    );
    // Every one of them is audited, none with the token.
    let audit = d.get("/v1/audit?limit=100").json();
    let statuses: Vec<u64> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [422, 422, 401, 403, 400, 400]);
    assert!(!d.get("/v1/audit").body.contains(&env.token()));
    assert_eq!(in_recovery(&env, 1), Some(true));

    // database.cfg without its [database] section: refused before the
    // fence, not found out after the promotion.
    let original = std::fs::read_to_string(&app.config_file).unwrap();
    let broken = original.replace("[database]", "[db]");
    std::fs::write(&app.config_file, &broken).unwrap();
    let r = d.post("/v1/switchover", r#"{"target": "pg-b"}"#, &env.token());
    assert_eq!(r.status, 422, "{}", r.body);
    let check = r.json()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "application_config_writable")
        .cloned()
        .unwrap_or_else(|| panic!("no application_config_writable check: {}", r.body));
    assert_eq!(check["verdict"], "fail");
    assert!(
        check["message"]
            .as_str()
            .unwrap()
            .contains("section [database] is not in the file"),
        "{check}"
    );
    assert_eq!(std::fs::read_to_string(&app.config_file).unwrap(), broken);
    assert_eq!(app.ctl("is-running").0, 0, "the application still runs");
    assert_eq!(in_recovery(&env, 1), Some(true));
    std::fs::write(&app.config_file, &original).unwrap();
    let dry = d.post(
        "/v1/switchover",
        r#"{"target": "pg-b", "dry_run": true}"#,
        &env.token(),
    );
    assert_eq!(dry.json()["would_proceed"], true, "{}", dry.body);
}

#[test]
fn dry_run_changes_nothing() {
    let (env, app) = Env::start_with_app(Options::default());
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    let state = |env: &Env| {
        (
            std::fs::read(&app.config_file).unwrap(),
            in_recovery(env, 0),
            in_recovery(env, 1),
            env.cluster
                .psql(0, "SHOW synchronous_standby_names")
                .unwrap(),
            env.cluster
                .psql(0, "SELECT slot_name, active FROM pg_replication_slots")
                .unwrap(),
            app.ctl("is-running").0,
        )
    };
    let before = state(&env);
    let r = env.daemons[1].post(
        "/v1/switchover",
        r#"{"target": "pg-b", "dry_run": true}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["would_proceed"], true, "{}", r.body);
    assert_eq!(v["plan"].as_array().unwrap().len(), 8);
    assert!(v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["verdict"] != "fail"));
    assert_eq!(state(&env), before);
    assert_eq!(
        env.daemons[1].get("/v1/operations").json()["operations"],
        serde_json::json!([])
    );
}

#[test]
fn simultaneous_requests_to_both_daemons_start_at_most_one_operation() {
    let (env, _app) = Env::start_with_app(Options::default());
    for i in 0..2 {
        env.wait_health(i, "healthy first", env.within_polls(3), |c, _| c == 200);
    }
    env.wait_all_polled();
    let token = env.token();
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = env
            .daemons
            .iter()
            .map(|d| {
                let token = &token;
                s.spawn(move || {
                    let r = d.post("/v1/switchover", r#"{"target": "pg-b"}"#, token);
                    (r.status, r.body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 409),
        "{answers:?}"
    );
    // At most one, and not none: two requests that lock each other out
    // would also keep "at most one".
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "exactly one operation starts: {answers:?}"
    );
    let started: usize = env
        .daemons
        .iter()
        .map(|d| {
            d.get("/v1/operations").json()["operations"]
                .as_array()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(
        started, 1,
        "the journals hold the one operation: {statuses:?}"
    );
}

#[test]
fn a_client_that_hangs_up_while_waiting_is_still_audited() {
    use std::io::Write;
    let (env, _app) = Env::start_with_app(Options::default());
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    let d = &env.daemons[0];
    let body = r#"{"target": "pg-b", "reason": "hang up"}"#;
    let mut s = std::net::TcpStream::connect(d.url.trim_start_matches("http://")).unwrap();
    write!(
        s,
        "POST /v1/switchover?wait=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        env.token(),
        body.len()
    )
    .unwrap();
    poll_until(Duration::from_secs(10), "the operation to start", || {
        (!d.get("/v1/operations").json()["operations"]
            .as_array()
            .unwrap()
            .is_empty())
        .then_some(())
    })
    .unwrap();
    drop(s);
    let entry = poll_until(
        Duration::from_secs(60),
        "the audit entry of the abandoned request",
        || {
            let a = d.get("/v1/audit").json();
            a["entries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["endpoint"] == "/v1/switchover?wait=true")
                .cloned()
        },
    )
    .unwrap();
    assert_eq!(entry["status"], 200, "{entry}");
    assert_eq!(entry["body"]["reason"], "hang up");
}

#[test]
fn a_former_primary_started_again_is_stopped_by_its_own_daemon() {
    let (env, app) = Env::start_with_app(Options::default());
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    env.cluster.stop_node(0, StopMode::Immediate).unwrap();
    env.wait_health(1, "pg-a down", env.within_polls(5), |_, h| {
        has_problem(h, "node_down", Some("pg-a"))
    });
    let r = env.daemons[1].post(
        &format!("/v1/failover{WAIT}"),
        r#"{"target": "pg-b"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let acked = app.wait_acks(app.acks().len() + 3);

    // systemd (or a person) starts the old primary again: a second writer.
    // It must really run, or "not running" below would hold at once.
    let server_log = env.cluster.node(0).log_file.clone();
    let offset = std::fs::metadata(&server_log).map_or(0, |m| m.len());
    let started = env.cluster.start_node(0);
    let logged = log_from(&server_log, offset);
    assert!(
        logged.contains("database system is ready to accept connections"),
        "pg-a never accepted connections: {started:?}\n--- its log ---\n{logged}"
    );
    // pg_ctl -w looks at the server every 100 ms: the daemon may stop it
    // between it becoming ready and pg_ctl's next look, and then pg_ctl
    // calls a start that did happen a failure. Only that is excused: a
    // server that ran, and was told to shut down.
    if let Err(e) = &started {
        assert!(
            logged.contains("shutdown request"),
            "pg_ctl start failed, and not because pg-a was stopped: {e}\n--- its log ---\n{logged}"
        );
    }
    // The daemon beside it sees a primary on timeline 1 next to one on
    // timeline 2 and stops it at once.
    poll_until(
        env.within_polls(2),
        "the stale primary to be stopped",
        || (!env.cluster.is_running(0)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", env.daemons[0].log_text()));
    // The entry is written once the stop command returns, which may be
    // after the server is gone.
    let entry = poll_until(
        Duration::from_secs(30),
        "the audit entry of the stale primary's stop",
        || {
            let audit = env.daemons[0].get("/v1/audit").json();
            audit["entries"]
                .as_array()?
                .iter()
                .find(|e| e["endpoint"] == "stop_stale_primary")
                .cloned()
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", env.daemons[0].get("/v1/audit").body));
    assert_eq!(entry["status"], 200, "{entry}");
    assert!(
        entry["body"]["reason"]
            .as_str()
            .unwrap()
            .contains("timeline 1"),
        "{entry}"
    );
    // The application kept writing to the new primary only.
    assert_eq!(
        std::fs::read_to_string(&app.config_file).unwrap(),
        switched_cfg(&env, &app.original, 1)
    );
    assert_eq!(missing(&acked, &ids_on(&env, 1)), Vec::<i64>::new());
    assert!(sessions_of_app(&env, 1) >= 1);
}
