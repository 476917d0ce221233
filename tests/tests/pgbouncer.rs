//! pgbouncer as the application's door (DESIGN "Clients that follow the
//! primary"), with a real pgbouncer (Debian's 1.18, transaction pooling) in
//! front of a real cluster: a writer holding ONE connection through it keeps
//! committing across a switchover, without a connection error and without
//! losing an acknowledged commit; the longest pause it saw is printed (run
//! with `--no-capture`), not asserted (timing bounds flake on a loaded
//! machine). And the fence's failures: pgbouncer down, a PAUSE that a long
//! transaction holds past pause_timeout, each refused before anything is
//! promoted, with pgbouncer serving again.

mod util;

use std::time::{Duration, Instant};

use pgwarden_testkit::pgbouncer::{
    self, longest_pause, Attempt, Database, Pgbouncer, PgbouncerOptions, Writer,
};
use pgwarden_testkit::{poll_until, StopMode, TestCluster};
use util::Env;

const ADMIN: &str = "pgbadmin";
const TABLE: &str = "door_writes";

/// A cluster, a pgbouncer in front of it (its `inmanta` entry on pg-a) on
/// pg-b's host, and daemons whose config names it as the door.
fn start() -> (Env, Pgbouncer) {
    start_on("pg-b", &[])
}

/// The same with the pgbouncer on `host`'s host (one machine: the daemon of
/// that host alone talks to it, as on two hosts).
fn start_on(host: &str, daemon_env: &[Vec<(String, String)>]) -> (Env, Pgbouncer) {
    let (env, pgb) = Env::start_with_extra_from(daemon_env, |cluster: &TestCluster| {
        let c = cluster.credentials();
        let a = cluster.node(0);
        let admin_password = format!("admin-{}", c.app_password);
        let pgb = Pgbouncer::start(
            cluster.dir(),
            PgbouncerOptions {
                databases: vec![Database {
                    name: c.app_db.clone(),
                    host: a.host.clone(),
                    port: a.port,
                    dbname: c.app_db.clone(),
                }],
                users: vec![(c.app_user.clone(), c.app_password.clone())],
                admin_user: ADMIN.into(),
                admin_password: admin_password.clone(),
            },
        )
        .expect("start pgbouncer");
        let password_file = cluster.dir().join("pgbouncer-admin.password");
        std::fs::write(&password_file, format!("{admin_password}\n")).unwrap();
        let yaml = format!(
            "proxy:\n  pgbouncer:\n    runs_on: [{host}]\n    admin: {{host: 127.0.0.1, port: {}, user: {ADMIN}, password_file: {}}}\n    config_file: {}\n    database: {}\n    pause_timeout: 2s\n    db_user: {}\n",
            pgb.port,
            password_file.display(),
            pgb.config_file.display(),
            c.app_db,
            c.app_user
        );
        (yaml, pgb)
    });
    for i in 0..2 {
        env.wait_health(i, "healthy first", env.within_polls(8), |c, _| c == 200);
    }
    env.cluster
        .psql_db(
            0,
            &env.cluster.credentials().app_db,
            &format!(
                "CREATE TABLE {TABLE} (id bigint PRIMARY KEY); GRANT SELECT, INSERT ON {TABLE} TO {}",
                env.cluster.credentials().app_user
            ),
        )
        .unwrap();
    (env, pgb)
}

/// How the application connects: to pgbouncer, as the application's role.
fn client_config(env: &Env, pgb: &Pgbouncer) -> tokio_postgres::Config {
    let c = env.cluster.credentials();
    pgb.client_config(&c.app_user, &c.app_password, &c.app_db)
}

/// A client of pgbouncer, on `rt`.
fn connect(
    rt: &tokio::runtime::Runtime,
    env: &Env,
    pgb: &Pgbouncer,
) -> Result<tokio_postgres::Client, String> {
    pgbouncer::open(rt, &client_config(env, pgb))
}

fn start_writer(env: &Env, pgb: &Pgbouncer) -> Writer {
    Writer::start(client_config(env, pgb), TABLE).expect("the writer connects through pgbouncer")
}

/// Waits for a commit that began after `after`, or says what the writer saw.
fn wait_ack_after(writer: &Writer, after: Instant, what: &str) {
    poll_until(Duration::from_secs(60), what, || {
        writer.committed_after(after).then_some(())
    })
    .unwrap_or_else(|e| {
        let last: Vec<_> = writer.attempts().into_iter().rev().take(5).collect();
        panic!("{e}\nthe writer's last attempts: {last:#?}")
    });
}

/// The node a new transaction through pgbouncer runs on.
fn served_by(env: &Env, pgb: &Pgbouncer) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = connect(&rt, env, pgb).unwrap();
    let rows = rt
        .block_on(client.simple_query("SELECT inet_server_port()"))
        .unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .unwrap()
}

/// The invariants after an operation: exactly one writable node (`primary`),
/// and every acknowledged commit on it.
fn assert_invariants(env: &Env, primary: usize, attempts: &[Attempt]) {
    for i in 0..2 {
        let in_recovery = env.cluster.psql(i, "SELECT pg_is_in_recovery()");
        if i == primary {
            assert_eq!(
                in_recovery.as_deref().ok(),
                Some("f"),
                "{} must be the primary",
                env.cluster.node(i).name
            );
        } else {
            // Stopped, or a standby: not writable either way.
            assert!(
                !matches!(in_recovery.as_deref(), Ok("f")),
                "{} is writable too: two writable nodes",
                env.cluster.node(i).name
            );
        }
    }
    let rows = env
        .cluster
        .psql_db(
            primary,
            &env.cluster.credentials().app_db,
            &format!("SELECT id FROM {TABLE}"),
        )
        .unwrap();
    let stored: std::collections::BTreeSet<i64> =
        rows.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let lost: Vec<i64> = attempts
        .iter()
        .filter(|a| a.error.is_none() && !stored.contains(&a.id))
        .map(|a| a.id)
        .collect();
    let acked = attempts.iter().filter(|a| a.error.is_none()).count();
    assert!(
        lost.is_empty(),
        "acknowledged commits lost: {lost:?} of {acked}"
    );
}

fn post_switchover(env: &Env, target: &str) -> serde_json::Value {
    let r = env.daemons[0].post(
        "/v1/switchover?wait=true",
        &format!(r#"{{"target": "{target}", "reason": "pgbouncer test"}}"#),
        &env.token(),
    );
    assert!(
        r.status == 200 || r.status == 424,
        "{} {}",
        r.status,
        r.body
    );
    r.json()
}

fn step_message(op: &serde_json::Value, step: &str) -> String {
    op["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == step))
        .map(|s| s["message"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

#[test]
fn a_writer_on_one_pgbouncer_connection_keeps_committing_across_a_switchover() {
    let (env, pgb) = start();
    let writer = start_writer(&env, &pgb);
    wait_ack_after(&writer, Instant::now(), "a first commit through pgbouncer");
    assert_eq!(served_by(&env, &pgb), env.cluster.node(0).port);
    let ini_before = std::fs::read_to_string(&pgb.config_file).unwrap();

    let began = Instant::now();
    let op = post_switchover(&env, "pg-b");
    let took = began.elapsed();
    assert_eq!(
        op["state"],
        "succeeded",
        "{op:#}\n{}",
        env.daemons[0].log_text()
    );
    wait_ack_after(
        &writer,
        Instant::now(),
        "a commit through pgbouncer after the switchover",
    );
    assert_eq!(
        writer.connections(),
        1,
        "pgbouncer closed the application's connection"
    );
    let attempts = writer.finish();

    let errors: Vec<&Attempt> = attempts.iter().filter(|a| a.error.is_some()).collect();
    assert!(errors.is_empty(), "the application saw errors: {errors:#?}");
    let (insert, gap) = longest_pause(&attempts);
    eprintln!(
        "pgbouncer switchover: longest INSERT {:.0} ms, longest gap between commits {:.0} ms, {} commits on one connection, operation {:.2}s; facts {}",
        insert.as_secs_f64() * 1000.0,
        gap.as_secs_f64() * 1000.0,
        attempts.len(),
        took.as_secs_f64(),
        op["facts"]
    );
    // What the user sees: the steps say what was paused and re-pointed,
    // pgbouncer.ini names pg-b (and only its host and port changed),
    // new transactions run on pg-b.
    assert!(
        step_message(&op, "fence_application").contains("pgbouncer on pg-b paused"),
        "{op:#}"
    );
    assert!(
        step_message(&op, "switch_application").contains("RESUME"),
        "{op:#}"
    );
    assert!(
        step_message(&op, "start_application").contains("the application kept running"),
        "{op:#}"
    );
    let (a, b) = (env.cluster.node(0), env.cluster.node(1));
    let ini_after = std::fs::read_to_string(&pgb.config_file).unwrap();
    assert_eq!(
        ini_after,
        ini_before.replace(
            &format!("host={} port={}", a.host, a.port),
            &format!("host={} port={}", b.host, b.port)
        )
    );
    assert_eq!(
        util::mode(&pgb.config_file),
        0o640,
        "pgbouncer.ini keeps its mode"
    );
    assert_eq!(served_by(&env, &pgb), b.port);
    assert_invariants(&env, 1, &attempts);
    // The admin console's password reached no log, answer or audit entry.
    let secret = pgb.admin_password();
    let audit = env.daemons[0].get("/v1/audit?limit=100").body;
    for (what, text) in [
        ("pg-a's log", env.daemons[0].log_text()),
        ("pg-b's log", env.daemons[1].log_text()),
        ("the operation", op.to_string()),
        ("the audit log", audit),
    ] {
        assert!(
            !text.contains(secret),
            "{what} holds the pgbouncer admin password"
        );
    }
}

#[test]
fn a_pgbouncer_that_is_down_is_refused_before_anything_is_promoted() {
    let (env, mut pgb) = start();
    pgb.kill();
    let op = post_switchover(&env, "pg-b");
    assert_eq!(op["state"], "failed", "{op:#}");
    let fence = step_message(&op, "fence_application");
    assert!(
        fence.contains("cannot pause pgbouncer on pg-b") && fence.contains("does not answer"),
        "{fence}"
    );
    assert!(fence.contains("nothing promoted"), "{fence}");
    assert_invariants(&env, 0, &[]);
    // Nothing was rewritten: its entry still names pg-a.
    let a = env.cluster.node(0);
    let ini = std::fs::read_to_string(&pgb.config_file).unwrap();
    assert!(
        ini.contains(&format!("host={} port={}", a.host, a.port)),
        "{ini}"
    );
}

#[test]
fn a_transaction_longer_than_pause_timeout_stops_the_switchover_and_pgbouncer_serves_again() {
    let (env, pgb) = start();
    let writer = start_writer(&env, &pgb);
    wait_ack_after(&writer, Instant::now(), "a first commit through pgbouncer");
    // A second client keeps a transaction open through pgbouncer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let long = connect(&rt, &env, &pgb).unwrap();
    rt.block_on(long.simple_query(&format!("BEGIN; INSERT INTO {TABLE} (id) VALUES (-1)")))
        .unwrap();

    let op = post_switchover(&env, "pg-b");
    assert_eq!(op["state"], "failed", "{op:#}");
    let fence = step_message(&op, "fence_application");
    assert!(
        fence.contains("a transaction did not finish within 2s"),
        "{fence}"
    );
    assert!(
        fence.contains("pgbouncer resumed again") || fence.contains("pgbouncer on pg-b resumed"),
        "{fence}"
    );
    // Resumed: the writer commits again, the long transaction too.
    let after = Instant::now();
    wait_ack_after(
        &writer,
        after,
        "a commit through pgbouncer after the refused switchover",
    );
    rt.block_on(long.simple_query("COMMIT")).unwrap();
    let attempts = writer.finish();
    let errors: Vec<&Attempt> = attempts.iter().filter(|a| a.error.is_some()).collect();
    assert!(errors.is_empty(), "the application saw errors: {errors:#?}");
    assert_invariants(&env, 0, &attempts);
    assert_eq!(served_by(&env, &pgb), env.cluster.node(0).port);
}

#[test]
fn a_pgbouncer_ini_that_pgbouncer_would_not_reload_is_refused_before_anything_is_paused() {
    let (env, pgb) = start();
    let writer = start_writer(&env, &pgb);
    wait_ack_after(&writer, Instant::now(), "a first commit through pgbouncer");
    // pgbouncer answers RELOAD of this file without an error and keeps its
    // old settings: after a promotion it would go on pointing at pg-a.
    let mut ini = std::fs::read_to_string(&pgb.config_file).unwrap();
    ini.push_str("this line is not a setting\n");
    std::fs::write(&pgb.config_file, &ini).unwrap();
    let op = post_switchover(&env, "pg-b");
    assert_eq!(op["state"], "failed", "{op:#}");
    let fence = step_message(&op, "fence_application");
    assert!(
        fence.contains("is not `key = value`")
            && fence.contains("pgbouncer would refuse the whole file"),
        "{fence}"
    );
    assert!(fence.contains("nothing promoted"), "{fence}");
    wait_ack_after(
        &writer,
        Instant::now(),
        "a commit through pgbouncer after the refusal",
    );
    let attempts = writer.finish();
    assert!(
        attempts.iter().all(|a| a.error.is_none()),
        "the application saw errors"
    );
    assert_invariants(&env, 0, &attempts);
    assert_eq!(
        std::fs::read_to_string(&pgb.config_file).unwrap(),
        ini,
        "nothing rewritten"
    );
}

#[test]
fn a_pgbouncer_on_a_host_whose_daemon_is_silent_is_not_taken_as_paused() {
    let (mut env, pgb) = start_on("pg-a", &[]);
    let writer = start_writer(&env, &pgb);
    wait_ack_after(&writer, Instant::now(), "a first commit through pgbouncer");
    env.daemons[0].kill();
    poll_until(
        env.within_polls(8),
        "pg-b's daemon to notice pg-a's is gone",
        || {
            (env.daemons[1].get("/v1/status").json()["nodes"][0]["daemon_answered"] == false)
                .then_some(())
        },
    )
    .unwrap();
    let body = serde_json::json!({"target": "pg-b", "reason": "pg-a's daemon is gone"}).to_string();
    let r = env.daemons[1].post("/v1/switchover?wait=true", &body, &env.token());
    assert_eq!(r.status, 422, "{}", r.body);
    let j = r.json();
    let check = j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "host_fenced" && c["verdict"] == "fail")
        .unwrap_or_else(|| panic!("no failed host_fenced: {j}"))
        .clone();
    assert!(
        check["message"].as_str().unwrap().contains("fenced_hosts"),
        "{check}"
    );
    // Nothing was paused: the writer goes on, on pg-a.
    wait_ack_after(
        &writer,
        Instant::now(),
        "a commit through pgbouncer after the refusal",
    );
    let attempts = writer.finish();
    assert!(
        attempts.iter().all(|a| a.error.is_none()),
        "the application saw errors"
    );
    assert_invariants(&env, 0, &attempts);
    assert_eq!(served_by(&env, &pgb), env.cluster.node(0).port);
}

#[test]
fn after_a_failover_pgbouncer_leads_the_same_client_connection_to_the_new_primary() {
    let (env, pgb) = start();
    let writer = start_writer(&env, &pgb);
    wait_ack_after(&writer, Instant::now(), "a first commit through pgbouncer");
    let killed = Instant::now();
    env.cluster.stop_node(0, StopMode::Immediate).unwrap();
    let stopped = killed.elapsed();
    env.wait_health(1, "pg-a down", env.within_polls(5), |_, h| {
        util::has_problem(h, "node_down", Some("pg-a"))
    });
    eprintln!(
        "pg-a stopped in {stopped:?}, seen down after {:?}",
        killed.elapsed()
    );
    let failover_began = Instant::now();
    let r = env.daemons[1].post(
        "/v1/failover?wait=true",
        r#"{"target": "pg-b", "reason": "pg-a crashed"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[1].log_text());
    let op = r.json();
    assert!(
        step_message(&op, "switch_application").contains("RESUME"),
        "{op:#}"
    );
    let failover_took = failover_began.elapsed();
    wait_ack_after(
        &writer,
        Instant::now(),
        "a commit through pgbouncer after the failover",
    );
    let connections_seen = writer.connections();
    let attempts = writer.finish();
    // The transaction in flight when pg-a died fails, and pgbouncer closes
    // that client's connection with it ("server conn crashed?"): errors at
    // the kill, before the failover began, and one new connection at most;
    // every later transaction waits for the failover and commits on pg-b.
    let connections = connections_seen;
    let errors: Vec<&Attempt> = attempts.iter().filter(|a| a.error.is_some()).collect();
    assert!(connections <= 2, "{connections} connections");
    assert!(
        errors.iter().all(|a| a.began < failover_began),
        "errors after the failover began: {errors:#?}"
    );
    let (insert, gap) = longest_pause(&attempts);
    eprintln!(
        "pgbouncer failover: longest INSERT {:.0} ms, longest gap between commits {:.0} ms (from the kill), {} error(s) at the kill, {connections} connection(s); the failover took {:.0} ms",
        insert.as_secs_f64() * 1000.0,
        gap.as_secs_f64() * 1000.0,
        errors.len(),
        failover_took.as_secs_f64() * 1000.0
    );
    for st in op["steps"].as_array().unwrap() {
        eprintln!(
            "  {} {} -> {}",
            st["name"], st["started_at"], st["finished_at"]
        );
    }
    assert_invariants(&env, 1, &attempts);
    assert_eq!(served_by(&env, &pgb), env.cluster.node(1).port);
}

#[test]
fn a_switchover_killed_after_the_fence_is_resumed_with_pgbouncer_still_paused() {
    let fault = vec![
        vec![(
            "PGWARDEN_FAULT_PAUSE".to_owned(),
            "stop_old_primary:before".to_owned(),
        )],
        vec![],
    ];
    let (mut env, pgb) = start_on("pg-b", &fault);
    let writer = start_writer(&env, &pgb);
    wait_ack_after(&writer, Instant::now(), "a first commit through pgbouncer");
    let r = env.daemons[0].post(
        "/v1/switchover",
        r#"{"target": "pg-b", "reason": "pgbouncer crash test"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    poll_until(
        Duration::from_secs(60),
        "the daemon to reach the fault point",
        || {
            env.daemons[0]
                .log_text()
                .contains("fault injection: pausing the operation here")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", env.daemons[0].log_text()));
    env.daemons[0].kill();
    env.restart_daemon(0, &[]);
    // The resume re-checks the fence (pgbouncer still paused, no session
    // back), then finishes; the writer waited and goes on, on pg-b.
    let r = env.daemons[0].post(
        &format!("/v1/operations/{id}/resume?wait=true"),
        "",
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    assert!(
        env.daemons[0]
            .log_text()
            .contains("re-verified before resuming: pgbouncer still paused"),
        "{}",
        env.daemons[0].log_text()
    );
    wait_ack_after(
        &writer,
        Instant::now(),
        "a commit through pgbouncer after the resume",
    );
    assert_eq!(
        writer.connections(),
        1,
        "pgbouncer closed the application's connection"
    );
    let attempts = writer.finish();
    assert!(
        attempts.iter().all(|a| a.error.is_none()),
        "the application saw errors"
    );
    assert_invariants(&env, 1, &attempts);
    assert_eq!(served_by(&env, &pgb), env.cluster.node(1).port);
}
