//! Failover and switchover times on real clusters, with the stand-in
//! application fenced and restarted through real commands.
//!
//! Each run builds a fresh two-node cluster (there is no rejoin yet to go
//! back), starts a daemon beside each node, then either kills the primary
//! (`pg_ctl stop -m immediate`) and asks the standby's daemon for a failover,
//! or asks for a switchover of the healthy pair. It measures, from the
//! moment the request is sent:
//! - when the new primary is writable, seen from outside: a separate
//!   connection polls `pg_is_in_recovery()` on it every millisecond;
//! - when the operation is done (the `?wait=true` answer);
//! - each step's duration, from the journal's timestamps;
//! - the application's own stop and start commands and the server's own
//!   promotion (pg_promote to writable), from the operation's facts;
//! - pgwarden's overhead: done minus those three.
//!
//! For both it counts the application's acknowledged heartbeats missing on
//! the new primary after the operation (must be 0): for a failover, those
//! acknowledged by the killed primary before it died. A step, a timestamp or
//! a fact missing from the operation is an error, never 0 ms. Prints
//! medians, then one JSON line.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgwarden_bench::http::{get, post};
use pgwarden_bench::median;
use pgwarden_bench::rig::{pgwarden_exe, start_daemons, wait_node_down, Rig};
use pgwarden_testkit::{poll_until, ClusterOptions, DaemonLayout, Secret, StopMode, TestCluster};

const STEPS: [&str; 8] = [
    "preflight",
    "fence_application",
    "stop_old_primary",
    "promote",
    "reconfigure_new_primary",
    "switch_application",
    "start_application",
    "done",
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Failover,
    Switchover,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Failover => "failover",
            Kind::Switchover => "switchover",
        }
    }
}

/// One measured run, all in milliseconds.
#[derive(Default, Clone)]
struct Run {
    writable: f64,
    done: f64,
    steps: Vec<f64>,
    app_stop: f64,
    app_start: f64,
    promote_wait: f64,
    lost: usize,
    acked: usize,
    /// Request sent -> the first step started (HTTP, preflight at the
    /// request, the peer lock, the journal's first write).
    to_first_step: f64,
    /// Summed gaps between one step's end and the next one's start, up to
    /// the promotion (the run loop: journal writes, the lock check).
    gaps_before_promote: f64,
}

impl Run {
    fn overhead(&self) -> f64 {
        self.done - self.app_stop - self.app_start - self.promote_wait
    }
}

fn main() -> anyhow::Result<()> {
    let mut runs = 5;
    let mut rejoin_scale: Option<u32> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().context("--runs needs a number")?.parse()?,
            "--rejoin" => {
                rejoin_scale = Some(
                    args.next()
                        .context("--rejoin needs a pgbench scale (64 is about 1 GB)")?
                        .parse()?,
                )
            }
            "--help" | "-h" => {
                println!("pgwarden-failover-bench [--runs N]: N failovers and N switchovers on fresh clusters; prints medians");
                println!("pgwarden-failover-bench --rejoin SCALE: rejoin times by pg_rewind and by pg_basebackup, empty and with pgbench -i -s SCALE (64 is about 1 GB)");
                return Ok(());
            }
            other => bail!("unknown argument {other}; see --help"),
        }
    }
    let exe = pgwarden_exe()?;
    if let Some(scale) = rejoin_scale {
        return rejoin_bench(&exe, scale);
    }
    let mut results = Vec::new();
    for kind in [Kind::Failover, Kind::Switchover] {
        let mut measured = Vec::new();
        for i in 0..runs {
            let r =
                run_once(kind, &exe).with_context(|| format!("{} run {}", kind.name(), i + 1))?;
            eprintln!(
                "{} {}/{}: writable {:.1} ms, done {:.1} ms, overhead {:.1} ms",
                kind.name(),
                i + 1,
                runs,
                r.writable,
                r.done,
                r.overhead()
            );
            measured.push(r);
        }
        results.push((kind, measured));
    }
    report(&results);
    let lost: usize = results
        .iter()
        .flat_map(|(_, runs)| runs.iter().map(|r| r.lost))
        .sum();
    if lost > 0 {
        bail!("{lost} acknowledged heartbeats were lost");
    }
    Ok(())
}

fn run_once(kind: Kind, exe: &Path) -> anyhow::Result<Run> {
    let rig = Rig::start(exe, Duration::from_millis(200))?;
    let (cluster, c) = (&rig.cluster, rig.cluster.credentials().clone());
    let api = |i: usize| rig.api(i);

    // The daemon that will run the operation: the standby's for a failover
    // (the primary's host is "gone"), the primary's for a switchover.
    let (runner, body) = match kind {
        Kind::Failover => {
            cluster.stop_node(0, StopMode::Immediate)?;
            wait_node_down(&api(1), "pg-a to count as down")?;
            (1, r#"{"target": "pg-b", "reason": "bench"}"#)
        }
        Kind::Switchover => (0, r#"{"target": "pg-b", "reason": "bench"}"#),
    };

    // Watch pg-b from outside for the moment it accepts writes.
    let b = cluster.node(1).clone();
    let conninfo = format!(
        "host={} port={} user={} password={} dbname=postgres",
        b.host, b.port, c.monitor_user, c.monitor_password
    );
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || -> anyhow::Result<Instant> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            ready_tx.send(()).ok();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await?;
                if !row.get::<_, bool>(0) {
                    return Ok(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            bail!("pg-b never became writable")
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the watcher did not connect")?;

    let sent = Instant::now();
    let sent_wall = std::time::SystemTime::now();
    let (status, answer) = post(
        &api(runner),
        &format!("/v1/{}?wait=true", kind.name()),
        body,
        &rig.token,
    );
    let done = sent.elapsed();
    if status != 200 {
        bail!("the {} answered {status}: {answer}", kind.name());
    }
    let writable = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("watcher panicked"))??;
    let op: serde_json::Value = serde_json::from_str(&answer)?;

    let fact = |name: &str| -> anyhow::Result<f64> {
        op["facts"][name]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .with_context(|| format!("the operation has no fact {name}: {}", op["facts"]))
    };
    let steps = STEPS
        .iter()
        .map(|name| step_ms(&op, name))
        .collect::<anyhow::Result<Vec<f64>>>()?;

    // Every heartbeat the application was told is committed, before the
    // operation (on pg-a) and after (on pg-b), must be on pg-b. The acks are
    // read first, so one acknowledged in between is on pg-b already.
    let acks = rig.app.acks();
    if acks.is_empty() {
        bail!("the application acknowledged no heartbeat: nothing to lose, nothing measured");
    }
    let ids: std::collections::HashSet<i64> = cluster
        .psql_db(1, &c.app_db, "SELECT id FROM heartbeat")?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let lost = acks.iter().filter(|a| !ids.contains(a)).count();
    let (to_first_step, gaps_before_promote) = run_loop_ms(&op, sent_wall)?;
    let run = Run {
        to_first_step,
        gaps_before_promote,
        writable: writable.duration_since(sent).as_secs_f64() * 1e3,
        done: done.as_secs_f64() * 1e3,
        steps,
        app_stop: fact("app_stop_ms")?,
        app_start: fact("app_start_ms")?,
        promote_wait: fact("promote_writable_ms")?,
        lost,
        acked: acks.len(),
    };
    drop(rig);
    Ok(run)
}

/// From the journal's timestamps (ms precision): request -> first step
/// started, and the summed gaps between steps up to the promotion's start.
fn run_loop_ms(op: &serde_json::Value, sent: std::time::SystemTime) -> anyhow::Result<(f64, f64)> {
    let steps = op["steps"]
        .as_array()
        .context("the operation has no steps")?;
    let ts = |step: &serde_json::Value, field: &str| {
        step[field]
            .as_str()
            .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
            .with_context(|| format!("step {} has no {field}", step["name"]))
    };
    let ms = |a: std::time::SystemTime, b: std::time::SystemTime| match b.duration_since(a) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    };
    let first = steps.first().context("the operation has no steps")?;
    let to_first = ms(sent, ts(first, "started_at")?);
    let mut gaps = 0.0;
    for pair in steps.windows(2) {
        gaps += ms(ts(&pair[0], "finished_at")?, ts(&pair[1], "started_at")?);
        if pair[1]["name"] == "promote" {
            break;
        }
    }
    Ok((to_first, gaps))
}

/// Step `name`'s duration in ms from the journal's timestamps; an error
/// when the step, or one of its timestamps, is missing.
fn step_ms(op: &serde_json::Value, name: &str) -> anyhow::Result<f64> {
    let step = op["steps"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .with_context(|| format!("the operation has no step {name}"))?;
    let ts = |field: &str| {
        step[field]
            .as_str()
            .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
            .with_context(|| format!("step {name} has no {field}: {step}"))
    };
    let (started, finished) = (ts("started_at")?, ts("finished_at")?);
    let took = finished
        .duration_since(started)
        .with_context(|| format!("step {name} finished before it started: {step}"))?;
    Ok(took.as_secs_f64() * 1e3)
}

fn report(results: &[(Kind, Vec<Run>)]) {
    let mut json = serde_json::Map::new();
    for (kind, runs) in results {
        let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
        println!("\n{} ({} runs), medians in ms:", kind.name(), runs.len());
        println!(
            "  request -> new primary writable   {:8.1}",
            m(&|r| r.writable)
        );
        println!("  request -> operation done         {:8.1}", m(&|r| r.done));
        println!(
            "    request -> first step started  {:8.1}",
            m(&|r| r.to_first_step)
        );
        println!(
            "    between steps, to promote      {:8.1}   (journal writes, lock check)",
            m(&|r| r.gaps_before_promote)
        );
        for (i, name) in STEPS.iter().enumerate() {
            println!("    {name:<26} {:8.1}", m(&|r| r.steps[i]));
        }
        println!(
            "  application stop command          {:8.1}",
            m(&|r| r.app_stop)
        );
        println!(
            "  application start command         {:8.1}",
            m(&|r| r.app_start)
        );
        println!(
            "  pg_promote -> writable (server)   {:8.1}",
            m(&|r| r.promote_wait)
        );
        println!("  pgwarden overhead                 {:8.1}   (done - app stop - app start - promotion)", m(&|r| r.overhead()));
        let lost: usize = runs.iter().map(|r| r.lost).sum();
        let acked: usize = runs.iter().map(|r| r.acked).sum();
        println!(
            "  acknowledged heartbeats lost      {lost} of {acked} over {} runs",
            runs.len()
        );
        json.insert(
            kind.name().into(),
            serde_json::json!({
                "runs": runs.len(),
                "writable_ms": m(&|r| r.writable),
                "done_ms": m(&|r| r.done),
                "steps_ms": STEPS.iter().enumerate().map(|(i, n)| (n.to_string(), serde_json::json!(m(&|r| r.steps[i])))).collect::<serde_json::Map<_, _>>(),
                "app_stop_ms": m(&|r| r.app_stop),
                "app_start_ms": m(&|r| r.app_start),
                "promote_ms": m(&|r| r.promote_wait),
                "overhead_ms": m(&|r| r.overhead()),
                "to_first_step_ms": m(&|r| r.to_first_step),
                "gaps_before_promote_ms": m(&|r| r.gaps_before_promote),
                "lost": runs.iter().map(|r| r.lost).sum::<usize>(),
                "acked": runs.iter().map(|r| r.acked).sum::<usize>(),
            }),
        );
    }
    println!("\n{}", serde_json::Value::Object(json));
}

/// Rejoin of the old primary after a failover, by pg_rewind and by
/// pg_basebackup, on a near-empty database and on one of pgbench scale
/// `scale`. One run each: the copy dominates and varies little.
fn rejoin_bench(exe: &Path, scale: u32) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for (label, s) in [
        ("small (empty pgbench tables)", 0),
        ("pgbench scale", scale),
    ] {
        for method in ["rewind", "basebackup"] {
            let (total, rebuild) = rejoin_once(exe, s, method)?;
            eprintln!("{label} {s} {method}: rejoin {total:.0} ms (rebuild {rebuild:.0} ms)");
            rows.push((
                format!(
                    "{label}{}",
                    if s > 0 {
                        format!(" {s}")
                    } else {
                        String::new()
                    }
                ),
                method,
                total,
                rebuild,
            ));
        }
    }
    println!("\nrejoin of the old primary after a failover (one run each), ms:");
    println!(
        "  {:<32} {:<11} {:>12} {:>12}",
        "database", "method", "rejoin", "rebuild step"
    );
    for (label, method, total, rebuild) in &rows {
        println!("  {label:<32} {method:<11} {total:>12.0} {rebuild:>12.0}");
    }
    Ok(())
}

fn rejoin_once(exe: &Path, scale: u32, method: &str) -> anyhow::Result<(f64, f64)> {
    let cluster = TestCluster::start(ClusterOptions::default())?;
    let pgbench = cluster.bin_dir().join("pgbench");
    let a = cluster.node(0).clone();
    if scale > 0 {
        let status = std::process::Command::new(&pgbench)
            .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
            .arg(&a.socket_dir)
            .args(["-p", &a.port.to_string(), "-U", "postgres", "postgres"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("pgbench -i failed");
        }
        // A running cluster checkpoints every few minutes; pg_rewind needs
        // the WAL since the last common checkpoint (wal_keep_size here).
        cluster.psql(0, "CHECKPOINT")?;
    }
    let mut layout = DaemonLayout::for_tests(&cluster);
    layout.poll_interval = Duration::from_millis(200);
    let daemons = start_daemons(exe, &cluster, &layout)?;
    let api = |i: usize| layout.api_url(i);
    poll_until(Duration::from_secs(60), "a healthy cluster", || {
        (get(&api(1), "/health").0 == 200).then_some(())
    })?;
    cluster.stop_node(0, StopMode::Immediate)?;
    wait_node_down(&api(1), "pg-a to count as down")?;
    let token = std::fs::read_to_string(cluster.secret_file(Secret::ApiToken))?;
    // The failover needs an application section; without one it is refused,
    // so promote through the kit and let pgwarden only do the rejoin.
    cluster.promote(1)?;
    cluster
        .psql(
            1,
            "SELECT pg_create_physical_replication_slot('replication')",
        )
        .ok();
    poll_until(Duration::from_secs(30), "pg-b as the primary", || {
        get(&api(1), "/v1/status")
            .1
            .contains("\"primary\":\"pg-b\"")
            .then_some(())
    })?;
    let body = format!(r#"{{"node": "pg-a", "method": "{method}"}}"#);
    let sent = Instant::now();
    let (status, answer) = post(&api(1), "/v1/rejoin?wait=true", &body, token.trim());
    let total = sent.elapsed().as_secs_f64() * 1e3;
    if status != 200 {
        bail!("the rejoin answered {status}: {answer}");
    }
    let op: serde_json::Value = serde_json::from_str(&answer)?;
    if op["facts"]["method"] != method {
        eprintln!(
            "asked for {method}, got {}: {}",
            op["facts"]["method"], op["facts"]["method_reason"]
        );
    }
    let rebuild = step_ms(&op, "rebuild_data_directory")?;
    drop(daemons);
    Ok((total, rebuild))
}
