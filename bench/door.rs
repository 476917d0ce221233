//! The application-visible write pause of a switchover, in one run: with
//! pgbouncer as the application's door (pgwarden pauses and re-points it; the
//! application keeps running and its one connection), and with the
//! stop/rewrite/start path (pgwarden stops the stand-in application,
//! rewrites its database.cfg, starts it again).
//!
//! Each run builds a fresh two-node cluster and a daemon beside each node
//! (release build, polls every 200 ms), then asks pg-a's daemon for a
//! switchover to pg-b (`?wait=true`).
//! - pgbouncer: a real pgbouncer (Debian's, transaction pooling) in front of
//!   pg-a, and a writer holding ONE connection through it, committing a row
//!   every ~5 ms (`pgwarden_testkit::pgbouncer::Writer`). The pause is its
//!   longest single INSERT (sent before the PAUSE, answered after the
//!   RESUME); errors are every INSERT that failed, connections how many it
//!   had to open (1: it kept its connection).
//! - stop/rewrite/start: the stand-in application commits a heartbeat every
//!   100 ms on its own connection; the pause is the longest gap between two
//!   consecutive heartbeats' commit times (`heartbeat.at`, read on the new
//!   primary), so good to one 100 ms tick.
//!
//! Both count the acknowledged writes missing on the new primary (must be
//! 0). Prints each run, the medians and maxima, then one JSON line.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgwarden_bench::http::{get, post};
use pgwarden_bench::median;
use pgwarden_bench::rig::{pgwarden_exe, start_daemons, Rig};
use pgwarden_testkit::pgbouncer::{longest_pause, Database, Pgbouncer, PgbouncerOptions, Writer};
use pgwarden_testkit::{poll_until, ClusterOptions, DaemonLayout, Secret, TestCluster};

const POLL: Duration = Duration::from_millis(200);
const TABLE: &str = "door_writes";

/// One switchover, as the application saw it.
struct Run {
    pause_ms: f64,
    done_ms: f64,
    errors: usize,
    connections: usize,
    acked: usize,
    lost: usize,
}

fn main() -> anyhow::Result<()> {
    let mut runs = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().context("--runs needs a number")?.parse()?,
            "--help" | "-h" => {
                println!("pgwarden-door-bench [--runs N]: N switchovers with pgbouncer and N with the stop/rewrite/start path, on fresh clusters; prints the application-visible write pause");
                return Ok(());
            }
            other => bail!("unknown argument {other}; see --help"),
        }
    }
    let exe = pgwarden_exe()?;
    let mut results: Vec<(&str, Vec<Run>)> = Vec::new();
    for (name, one) in [
        (
            "pgbouncer",
            pgbouncer_run as fn(&Path) -> anyhow::Result<Run>,
        ),
        ("stop/rewrite/start", restart_run),
    ] {
        let mut measured = Vec::new();
        for i in 0..runs {
            let r = one(&exe).with_context(|| format!("{name} run {}", i + 1))?;
            eprintln!(
                "{name} {}/{runs}: pause {:.0} ms, switchover done {:.0} ms, {} error(s), {} connection(s), {} of {} acknowledged lost",
                i + 1,
                r.pause_ms,
                r.done_ms,
                r.errors,
                r.connections,
                r.lost,
                r.acked
            );
            measured.push(r);
        }
        results.push((name, measured));
    }
    let mut json = serde_json::Map::new();
    println!("switchover, application-visible write pause ({runs} runs each), ms:");
    for (name, rs) in &results {
        let pauses: Vec<f64> = rs.iter().map(|r| r.pause_ms).collect();
        let max = pauses.iter().cloned().fold(0.0, f64::max);
        let done = median(rs.iter().map(|r| r.done_ms).collect());
        let errors: usize = rs.iter().map(|r| r.errors).sum();
        let lost: usize = rs.iter().map(|r| r.lost).sum();
        let acked: usize = rs.iter().map(|r| r.acked).sum();
        let reconnects: usize = rs.iter().map(|r| r.connections.saturating_sub(1)).sum();
        let med = median(pauses.clone());
        println!(
            "  {name:<20} pause median {med:>7.1}  max {max:>7.1}   switchover done {done:>7.1}   errors {errors}   reconnects {reconnects}   lost {lost} of {acked}"
        );
        json.insert(
            name.to_string(),
            serde_json::json!({"pause_ms_median": med, "pause_ms_max": max, "pauses_ms": pauses,
                "done_ms_median": done, "errors": errors, "reconnects": reconnects, "lost": lost, "acked": acked}),
        );
    }
    println!("{}", serde_json::Value::Object(json));
    let lost: usize = results
        .iter()
        .flat_map(|(_, rs)| rs.iter().map(|r| r.lost))
        .sum();
    if lost > 0 {
        bail!("{lost} acknowledged writes were lost");
    }
    Ok(())
}

/// POSTs a switchover to pg-b on `api` and waits for it; its duration in ms.
fn switchover(api: &str, token: &str) -> anyhow::Result<f64> {
    let sent = Instant::now();
    let (status, answer) = post(
        api,
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "bench"}"#,
        token,
    );
    let done = sent.elapsed().as_secs_f64() * 1000.0;
    if status != 200 {
        bail!("the switchover answered {status}: {answer}");
    }
    Ok(done)
}

/// The ids in `table` on node `i`.
fn ids(cluster: &TestCluster, i: usize, sql: &str) -> anyhow::Result<Vec<String>> {
    let db = cluster.credentials().app_db.clone();
    Ok(cluster
        .psql_db(i, &db, sql)?
        .lines()
        .map(|l| l.trim().to_owned())
        .collect())
}

fn pgbouncer_run(exe: &Path) -> anyhow::Result<Run> {
    let cluster = TestCluster::start(ClusterOptions::default())?;
    let c = cluster.credentials().clone();
    let a = cluster.node(0).clone();
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
            admin_user: "pgbadmin".into(),
            admin_password: admin_password.clone(),
        },
    )?;
    let password_file = cluster.dir().join("pgbouncer-admin.password");
    std::fs::write(&password_file, format!("{admin_password}\n"))?;
    let mut layout = DaemonLayout::for_tests(&cluster);
    layout.poll_interval = POLL;
    layout.extra = format!(
        "proxy:\n  pgbouncer:\n    runs_on: [pg-b]\n    admin: {{host: 127.0.0.1, port: {}, user: pgbadmin, password_file: {}}}\n    config_file: {}\n    database: {}\n    db_user: {}\n",
        pgb.port,
        password_file.display(),
        pgb.config_file.display(),
        c.app_db,
        c.app_user
    );
    let _daemons = start_daemons(exe, &cluster, &layout)?;
    let token = std::fs::read_to_string(cluster.secret_file(Secret::ApiToken))?
        .trim()
        .to_owned();
    wait_healthy(&layout)?;
    cluster.psql_db(
        0,
        &c.app_db,
        &format!(
            "CREATE TABLE {TABLE} (id bigint PRIMARY KEY); GRANT SELECT, INSERT ON {TABLE} TO {}",
            c.app_user
        ),
    )?;
    let writer = Writer::start(
        pgb.client_config(&c.app_user, &c.app_password, &c.app_db),
        TABLE,
    )
    .map_err(anyhow::Error::msg)?;
    let now = Instant::now();
    poll_until(Duration::from_secs(30), "a first commit", || {
        writer.committed_after(now).then_some(())
    })?;
    let done_ms = switchover(&layout.api_url(0), &token)?;
    let after = Instant::now();
    poll_until(
        Duration::from_secs(30),
        "a commit after the switchover",
        || writer.committed_after(after).then_some(()),
    )?;
    let connections = writer.connections();
    let attempts = writer.finish();
    let stored = ids(&cluster, 1, &format!("SELECT id FROM {TABLE}"))?;
    let acked: Vec<i64> = attempts
        .iter()
        .filter(|a| a.error.is_none())
        .map(|a| a.id)
        .collect();
    let lost = acked
        .iter()
        .filter(|id| !stored.contains(&id.to_string()))
        .count();
    let (insert, _) = longest_pause(&attempts);
    Ok(Run {
        pause_ms: insert.as_secs_f64() * 1000.0,
        done_ms,
        errors: attempts.iter().filter(|a| a.error.is_some()).count(),
        connections,
        acked: acked.len(),
        lost,
    })
}

fn wait_healthy(layout: &DaemonLayout) -> anyhow::Result<()> {
    for i in 0..2 {
        poll_until(Duration::from_secs(30), "a healthy cluster", || {
            (get(&layout.api_url(i), "/health").0 == 200).then_some(())
        })?;
    }
    Ok(())
}

fn restart_run(exe: &Path) -> anyhow::Result<Run> {
    let rig = Rig::start(exe, POLL)?;
    let before = rig.app.acks().len();
    let done_ms = switchover(&rig.api(0), &rig.token)?;
    // The application runs again: it commits on pg-b.
    poll_until(
        Duration::from_secs(30),
        "heartbeats after the switchover",
        || (rig.app.acks().len() >= before + 5).then_some(()),
    )?;
    let acked = rig.app.acks();
    let stored = ids(&rig.cluster, 1, "SELECT id FROM heartbeat")?;
    let lost = acked
        .iter()
        .filter(|id| !stored.contains(&id.to_string()))
        .count();
    // The longest time between two consecutive heartbeat commits.
    let gap = ids(
        &rig.cluster,
        1,
        "SELECT coalesce(max(gap), 0) FROM (SELECT extract(epoch FROM at - lag(at) OVER (ORDER BY id)) * 1000 AS gap FROM heartbeat) g",
    )?;
    let pause_ms: f64 = gap
        .first()
        .context("no heartbeat gap")?
        .parse()
        .context("the heartbeat gap")?;
    Ok(Run {
        pause_ms,
        done_ms,
        // Its errors are not seen from here (the process is stopped, not
        // failing); a restart is a new connection by definition.
        errors: 0,
        connections: 2,
        acked: acked.len(),
        lost,
    })
}
