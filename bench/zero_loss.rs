//! Zero data loss: every write acknowledged to a client before a failover or a
//! switchover must be on the new primary. Run on real clusters with writers running.
//!
//! Each repetition builds a fresh cluster (pg-a primary, pg-b synchronous standby,
//! `synchronous_commit = on`) with the stand-in application fenced and restarted by
//! pgwarden and a daemon beside each node ([`Rig`]), and runs two kinds of writers:
//! - the stand-in application: one heartbeat row every 100 ms, each id appended to its
//!   ack file once the INSERT returned;
//! - `--writers` connections of this bench (role `bench_writer`, not fenced by
//!   pgwarden, like any other client of the database): each INSERTs `(writer, seq)`
//!   into `bench_writes` in a tight loop, autocommit, `SET synchronous_commit = on`, and
//!   records `seq` only once the INSERT (its COMMIT) returned. When its connection
//!   breaks it reconnects to whichever node answers as a primary.
//!
//! Then, per mode: `sigkill` SIGKILLs pg-a's postmaster, `immediate` runs
//! `pg_ctl stop -m immediate` on it; both wait until pg-b's daemon counts pg-a down and
//! send `POST /v1/failover?wait=true` there. `switchover` sends
//! `POST /v1/switchover?wait=true` to pg-a's daemon while the writers run. Once the
//! writers have written to the new primary, they stop, and every acknowledged id is
//! looked up on pg-b.
//!
//! The check is only worth something if writes were in flight when the old primary
//! went away: per repetition the bench reports how many acknowledgements came in the
//! 100 ms before the cut (the kill; for a switchover, the start of the
//! `stop_old_primary` step), how long before the cut each writer's last acknowledgement
//! on the old primary came, and how many INSERTs failed with the connection (commits
//! cut off: not acknowledged, so allowed to be missing). A repetition in which a writer
//! was idle at the cut counts as vacuous and fails the run like a missing write.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use pgwarden_bench::http::post;
use pgwarden_bench::rig::{pgwarden_exe, wait_node_down, Rig};
use pgwarden_bench::{interrupted, median};
use pgwarden_testkit::{poll_until, StopMode, TestCluster};

const USAGE: &str = "\
usage: pgwarden-zero-loss [--reps N] [--writers N] [--modes LIST] [--before-cut-ms MS]

  --reps N           repetitions per mode, each on a fresh cluster (default 20)
  --writers N        writer connections of the bench, besides the stand-in (default 2)
  --modes LIST       comma-separated, of sigkill, immediate, switchover (default all)
  --before-cut-ms MS how long the writers write before the cut, plus 0-99 ms of
                     jitter per repetition (default 500)

Prints one line per repetition, a table per mode and one JSON line. Exits 1 if an
acknowledged write is missing, a repetition was vacuous (a writer idle at the cut) or
failed.";

/// The bench's writers log in as this role (not `db_user`, so pgwarden's fence leaves
/// them alone). The password only guards a throwaway cluster.
const WRITER_ROLE: &str = "bench_writer";
const WRITER_PASSWORD: &str = "bench-writer";

/// A writer whose last acknowledgement on the old primary is older than this at the
/// cut was not really writing: the repetition is vacuous.
const IDLE_LIMIT: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Sigkill,
    Immediate,
    Switchover,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Sigkill, Mode::Immediate, Mode::Switchover];

    fn name(self) -> &'static str {
        match self {
            Mode::Sigkill => "failover-sigkill",
            Mode::Immediate => "failover-immediate",
            Mode::Switchover => "switchover",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Mode> {
        Ok(match s {
            "sigkill" | "failover-sigkill" => Mode::Sigkill,
            "immediate" | "failover-immediate" => Mode::Immediate,
            "switchover" => Mode::Switchover,
            other => bail!("unknown mode {other:?}: use sigkill, immediate or switchover"),
        })
    }
}

struct Options {
    reps: usize,
    writers: usize,
    modes: Vec<Mode>,
    before_cut: Duration,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Option<Options>> {
    let mut o = Options {
        reps: 20,
        writers: 2,
        modes: Mode::ALL.to_vec(),
        before_cut: Duration::from_millis(500),
    };
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--reps" => o.reps = value("--reps")?.parse()?,
            "--writers" => o.writers = value("--writers")?.parse()?,
            "--modes" => {
                o.modes = value("--modes")?
                    .split(',')
                    .map(Mode::parse)
                    .collect::<anyhow::Result<_>>()?
            }
            "--before-cut-ms" => {
                o.before_cut = Duration::from_millis(value("--before-cut-ms")?.parse()?)
            }
            "--help" | "-h" => return Ok(None),
            other => bail!("unknown argument {other}; see --help"),
        }
    }
    if o.reps == 0 || o.writers == 0 {
        bail!("--reps and --writers must be at least 1");
    }
    Ok(Some(o))
}

fn main() -> ExitCode {
    pgwarden_bench::bench_main("pgwarden-zero-loss", USAGE, parse_args, run)
}

/// Runs every mode; Ok(true) when nothing was missing, vacuous or failed.
fn run(opts: &Options) -> anyhow::Result<bool> {
    let exe = pgwarden_exe()?;
    let mut results = Vec::new();
    for &mode in &opts.modes {
        let mut reps = Vec::new();
        let mut errors = Vec::new();
        for i in 0..opts.reps {
            if interrupted() {
                bail!("interrupted");
            }
            // Spread the cut over the stand-in's 100 ms heartbeat period.
            let before_cut = opts.before_cut + Duration::from_millis((i as u64 * 37) % 100);
            match run_rep(mode, &exe, opts.writers, before_cut) {
                Ok(r) => {
                    println!("{} {:>2}/{}: {}", mode.name(), i + 1, opts.reps, r.line());
                    reps.push(r);
                }
                Err(e) => {
                    println!("{} {:>2}/{}: ERROR {e:#}", mode.name(), i + 1, opts.reps);
                    errors.push(format!("{e:#}"));
                }
            }
        }
        results.push((mode, reps, errors));
    }
    Ok(report(&results))
}

// ---- the writers ----------------------------------------------------------------------

/// An acknowledged INSERT: its COMMIT returned.
struct Ack {
    seq: i64,
    at: Instant,
    node: usize,
}

/// An INSERT that returned an error (or no answer within 10 s): not acknowledged.
struct Failure {
    seq: i64,
    sent: Instant,
    node: usize,
}

/// What one writer did.
#[derive(Default)]
struct WriterLog {
    acks: Vec<Ack>,
    failures: Vec<Failure>,
    /// Per session: node, and its synchronous_commit and synchronous_standby_names.
    sessions: Vec<(usize, String, String)>,
}

/// Where the writers connect: each node's host and port, and the database.
#[derive(Clone)]
struct Targets {
    nodes: Vec<(String, u16)>,
    db: String,
}

/// Connects to the first node that answers as a primary; sets and reads back
/// synchronous_commit and prepares the INSERT.
async fn connect_writable(
    t: &Targets,
) -> Option<(
    tokio_postgres::Client,
    tokio_postgres::Statement,
    usize,
    String,
    String,
)> {
    for (i, (host, port)) in t.nodes.iter().enumerate() {
        let attempt = async {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(host)
                .port(*port)
                .user(WRITER_ROLE)
                .password(WRITER_PASSWORD)
                .dbname(&t.db)
                .application_name("pgwarden-zero-loss-writer")
                .connect_timeout(Duration::from_secs(1));
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.ok()?;
            tokio::spawn(async move {
                // Its error also surfaces on the next statement.
                let _ = conn.await;
            });
            client
                .batch_execute("SET synchronous_commit = on")
                .await
                .ok()?;
            let row = client
                .query_one(
                    "SELECT pg_is_in_recovery(), current_setting('synchronous_commit'), \
                     current_setting('synchronous_standby_names')",
                    &[],
                )
                .await
                .ok()?;
            if row.get::<_, bool>(0) {
                return None;
            }
            let stmt = client
                .prepare("INSERT INTO bench_writes (writer, seq) VALUES ($1, $2)")
                .await
                .ok()?;
            Some((client, stmt, i, row.get(1), row.get(2)))
        };
        if let Ok(Some(c)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            return Some(c);
        }
    }
    None
}

/// One writer: INSERTs `(id, seq)` back to back until `stop`, recording each
/// acknowledgement; reconnects after an error. `acked[node]` counts its acks per node.
async fn writer(
    id: i32,
    t: Targets,
    stop: Arc<AtomicBool>,
    acked: Arc<[AtomicU64; 2]>,
) -> WriterLog {
    let mut log = WriterLog::default();
    // Never reused: an id whose INSERT failed may still have committed.
    let mut seq: i64 = 0;
    while !stop.load(Ordering::SeqCst) {
        let Some((client, stmt, node, sync_commit, standby_names)) = connect_writable(&t).await
        else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        log.sessions.push((node, sync_commit, standby_names));
        while !stop.load(Ordering::SeqCst) {
            seq += 1;
            let sent = Instant::now();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, &seq];
            let insert = client.execute(&stmt, &params);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(10), insert).await {
                log.acks.push(Ack {
                    seq,
                    at: Instant::now(),
                    node,
                });
                acked[node].fetch_add(1, Ordering::SeqCst);
                continue;
            }
            log.failures.push(Failure { seq, sent, node });
            break;
        }
    }
    log
}

/// The bench's writers, running on their own thread.
struct Writers {
    stop: Arc<AtomicBool>,
    /// Acks per writer per node, for progress checks.
    acked: Vec<Arc<[AtomicU64; 2]>>,
    thread: std::thread::JoinHandle<anyhow::Result<Vec<WriterLog>>>,
}

impl Writers {
    fn start(n: usize, t: Targets) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Vec<Arc<[AtomicU64; 2]>> = (0..n)
            .map(|_| Arc::new([AtomicU64::new(0), AtomicU64::new(0)]))
            .collect();
        let (stop2, acked2) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(async {
                let tasks: Vec<_> = acked2
                    .into_iter()
                    .enumerate()
                    .map(|(i, a)| tokio::spawn(writer(i as i32 + 1, t.clone(), stop2.clone(), a)))
                    .collect();
                let mut logs = Vec::new();
                for task in tasks {
                    logs.push(task.await.unwrap_or_default());
                }
                logs
            }))
        });
        Writers {
            stop,
            acked,
            thread,
        }
    }

    /// Waits until every writer has `n` acks on `node`.
    fn wait_acked(&self, node: usize, n: u64, what: &str) -> anyhow::Result<()> {
        poll_until(Duration::from_secs(30), what, || {
            self.acked
                .iter()
                .all(|a| a[node].load(Ordering::SeqCst) >= n)
                .then_some(())
        })?;
        Ok(())
    }

    fn stop(self) -> anyhow::Result<Vec<WriterLog>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?
    }
}

// ---- one repetition -----------------------------------------------------------------

/// What one repetition measured. Times in ms.
struct Rep {
    /// Acknowledged writes of the bench's writers, and of those on the old primary.
    writer_acks: usize,
    writer_acks_old: usize,
    standin_acks: usize,
    /// Acknowledged but not on the new primary: (writer, seq) and heartbeat ids.
    missing_writes: Vec<(i32, i64)>,
    missing_heartbeats: Vec<i64>,
    /// Writer INSERTs that failed on the old primary, and how many of those committed
    /// anyway (on the new primary although never acknowledged).
    cut_off: usize,
    cut_off_present: usize,
    /// Writer acks on the old primary from 100 ms before the cut on.
    acks_near_cut: usize,
    /// The largest (cut - last ack on the old primary) over the writers; negative when
    /// every writer was still acknowledged after the cut began (before the server was
    /// really gone).
    stalest_ms: f64,
    /// Request to the `?wait=true` answer.
    done_ms: f64,
    /// Cut to the first acknowledged write on the new primary.
    resumed_ms: f64,
    /// Why the repetition proves nothing, if it does not.
    vacuous: Option<String>,
}

impl Rep {
    fn missing(&self) -> usize {
        self.missing_writes.len() + self.missing_heartbeats.len()
    }

    fn line(&self) -> String {
        let mut s = format!(
            "acked {} (writers {}, {} on the old primary; stand-in {}), missing {}; \
             at the cut: {} acks in the last 100 ms, stalest writer's last ack {:.1} ms \
             before, {} commits cut off ({} on the new primary anyway); done {:.0} ms after \
             the request, writes resumed {:.2} s after the cut",
            self.writer_acks + self.standin_acks,
            self.writer_acks,
            self.writer_acks_old,
            self.standin_acks,
            self.missing(),
            self.acks_near_cut,
            self.stalest_ms,
            self.cut_off,
            self.cut_off_present,
            self.done_ms,
            self.resumed_ms / 1e3,
        );
        if self.missing() > 0 {
            s.push_str(&format!(
                "\n    MISSING writer writes (writer, seq): {:?}\n    MISSING heartbeat ids: {:?}",
                first(&self.missing_writes, 20),
                first(&self.missing_heartbeats, 20)
            ));
        }
        if let Some(why) = &self.vacuous {
            s.push_str(&format!("\n    VACUOUS: {why}"));
        }
        s
    }
}

fn first<T: Clone>(v: &[T], n: usize) -> Vec<T> {
    v[..v.len().min(n)].to_vec()
}

/// Creates the writers' role and table on the primary (replicated to the standby).
fn create_writer_table(cluster: &TestCluster) -> anyhow::Result<()> {
    let c = cluster.credentials();
    cluster.psql(
        0,
        &format!("CREATE ROLE {WRITER_ROLE} LOGIN PASSWORD '{WRITER_PASSWORD}'"),
    )?;
    cluster.psql_db(
        0,
        &c.app_db,
        &format!(
            "CREATE TABLE bench_writes (writer int NOT NULL, seq bigint NOT NULL, \
             at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (writer, seq)); \
             GRANT SELECT, INSERT ON bench_writes TO {WRITER_ROLE}"
        ),
    )?;
    Ok(())
}

fn run_rep(mode: Mode, exe: &Path, n_writers: usize, before_cut: Duration) -> anyhow::Result<Rep> {
    let rig = Rig::start(exe, Duration::from_millis(200))?;
    let cluster = &rig.cluster;
    let c = cluster.credentials().clone();
    create_writer_table(cluster)?;
    let sync = cluster.psql(
        0,
        "SELECT state || ' ' || sync_state FROM pg_stat_replication WHERE application_name = 'inmanta'",
    )?;
    if sync != "streaming sync" {
        bail!("pg-b is not a synchronous standby before the cut: {sync:?}");
    }

    let targets = Targets {
        nodes: cluster
            .nodes()
            .iter()
            .map(|n| (n.host.clone(), n.port))
            .collect(),
        db: c.app_db.clone(),
    };
    let writers = Writers::start(n_writers, targets);
    writers.wait_acked(0, 10, "every writer to write on pg-a")?;
    std::thread::sleep(before_cut);

    // The cut, and the operation.
    let mut cut = Instant::now();
    let (runner, kind) = match mode {
        Mode::Sigkill => {
            cluster.kill_postmaster(0)?;
            (1, "failover")
        }
        Mode::Immediate => {
            cluster.stop_node(0, StopMode::Immediate)?;
            (1, "failover")
        }
        Mode::Switchover => (0, "switchover"),
    };
    if runner == 1 {
        wait_node_down(&rig.api(1), "pg-a to count as down")?;
    }
    let (sent, sent_wall) = (Instant::now(), SystemTime::now());
    let (status, answer) = post(
        &rig.api(runner),
        &format!("/v1/{kind}?wait=true"),
        r#"{"target": "pg-b", "reason": "zero-loss bench"}"#,
        &rig.token,
    );
    let done_ms = sent.elapsed().as_secs_f64() * 1e3;
    let op: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
    if status != 200 || op["state"] != "succeeded" {
        let view = pgwarden_bench::http::get(&rig.api(runner), "/v1/status").1;
        let _ = writers.stop();
        bail!("the {kind} answered {status}: {answer}\n    its daemon's /v1/status then: {view}");
    }
    if mode == Mode::Switchover {
        // The cut of a switchover: when pgwarden set out to stop the old primary.
        let started = op["steps"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == "stop_old_primary"))
            .and_then(|s| s["started_at"].as_str())
            .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
            .context("no started_at for stop_old_primary in the answer")?;
        cut = match started.duration_since(sent_wall) {
            Ok(d) => sent + d,
            Err(e) => sent - e.duration(),
        };
    }

    // Writes resume on the new primary; then stop and count.
    let heartbeats_at_done = rig.app.acks().len();
    writers.wait_acked(1, 10, "every writer to write on pg-b")?;
    poll_until(
        Duration::from_secs(30),
        "stand-in heartbeats on pg-b",
        || (rig.app.acks().len() >= heartbeats_at_done + 3).then_some(()),
    )?;
    let logs = writers.stop()?;
    // The ack file is read before the table: whatever it lists was acknowledged before
    // the table is read.
    let heartbeats = rig.app.acks();
    if cluster.psql(1, "SELECT pg_is_in_recovery()")? != "f" {
        bail!("pg-b is not a primary after the {kind}");
    }
    let rows: HashSet<(i32, i64)> = cluster
        .psql_db(1, &c.app_db, "SELECT writer, seq FROM bench_writes")?
        .lines()
        .filter_map(|l| {
            let (w, s) = l.split_once('|')?;
            Some((w.parse().ok()?, s.parse().ok()?))
        })
        .collect();
    let heartbeat_rows: HashSet<i64> = cluster
        .psql_db(1, &c.app_db, "SELECT id FROM heartbeat")?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();

    // Every session on the old primary must have run with synchronous commit to a
    // synchronous standby, or the check proves nothing.
    for log in &logs {
        for (node, commit, names) in &log.sessions {
            if *node == 0 && (commit != "on" || names.is_empty()) {
                bail!(
                    "a writer ran on pg-a with synchronous_commit = {commit:?}, \
                     synchronous_standby_names = {names:?}"
                );
            }
        }
    }
    Ok(measure(
        &logs,
        &rows,
        &heartbeats,
        &heartbeat_rows,
        cut,
        done_ms,
    ))
}

/// Compares what was acknowledged with what the new primary has, and how close to the
/// cut the writers were writing.
fn measure(
    logs: &[WriterLog],
    rows: &HashSet<(i32, i64)>,
    heartbeats: &[i64],
    heartbeat_rows: &HashSet<i64>,
    cut: Instant,
    done_ms: f64,
) -> Rep {
    let signed_ms = |a: Instant, b: Instant| -> f64 {
        if a >= b {
            (a - b).as_secs_f64() * 1e3
        } else {
            -((b - a).as_secs_f64() * 1e3)
        }
    };
    let mut missing_writes = Vec::new();
    let (mut cut_off, mut cut_off_present, mut acks_near_cut) = (0, 0, 0);
    let mut stalest_ms = f64::MIN;
    let mut first_new: Option<Instant> = None;
    let mut idle = Vec::new();
    for (w, log) in logs.iter().enumerate() {
        let id = w as i32 + 1;
        for a in &log.acks {
            if !rows.contains(&(id, a.seq)) {
                missing_writes.push((id, a.seq));
            }
            if a.node == 1 {
                first_new = Some(first_new.map_or(a.at, |f| f.min(a.at)));
            }
            if a.node == 0 && a.at + Duration::from_millis(100) >= cut {
                acks_near_cut += 1;
            }
        }
        let last_old = log.acks.iter().filter(|a| a.node == 0).map(|a| a.at).max();
        for f in log.failures.iter().filter(|f| f.node == 0) {
            cut_off += 1;
            if rows.contains(&(id, f.seq)) {
                cut_off_present += 1;
            }
        }
        // The failed INSERT that ended this writer's run on the old primary.
        let broke =
            last_old.and_then(|last| log.failures.iter().find(|f| f.node == 0 && f.sent >= last));
        match (last_old, broke) {
            (Some(last), Some(_)) => {
                stalest_ms = stalest_ms.max(signed_ms(cut, last));
                if last + IDLE_LIMIT < cut {
                    idle.push(format!(
                        "writer {id}: last ack {:.0} ms before the cut",
                        signed_ms(cut, last)
                    ));
                }
            }
            _ => idle.push(format!(
                "writer {id}: no ack on pg-a, or no INSERT failed there after its last ack"
            )),
        }
    }
    let mut missing_heartbeats = BTreeSet::new();
    let mut max = i64::MIN;
    for &h in heartbeats {
        // A repeated (or smaller) id: the stand-in reconnected to a primary whose
        // highest id was below it, so the first acknowledgement of it was lost.
        if h <= max || !heartbeat_rows.contains(&h) {
            missing_heartbeats.insert(h);
        }
        max = max.max(h);
    }
    Rep {
        writer_acks: logs.iter().map(|l| l.acks.len()).sum(),
        writer_acks_old: logs
            .iter()
            .map(|l| l.acks.iter().filter(|a| a.node == 0).count())
            .sum(),
        standin_acks: heartbeats.len(),
        missing_writes,
        missing_heartbeats: missing_heartbeats.into_iter().collect(),
        cut_off,
        cut_off_present,
        acks_near_cut,
        stalest_ms,
        done_ms,
        resumed_ms: first_new.map_or(f64::NAN, |f| signed_ms(f, cut)),
        vacuous: (!idle.is_empty()).then(|| idle.join("; ")),
    }
}

// ---- the report -----------------------------------------------------------------------

/// Prints the table and the JSON line; true when nothing was missing, vacuous or failed.
fn report(results: &[(Mode, Vec<Rep>, Vec<String>)]) -> bool {
    println!();
    println!(
        "{:<19} {:>4} {:>6} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9}",
        "mode",
        "reps",
        "errors",
        "acked",
        "old prim.",
        "missing",
        "max/rep",
        "vacuous",
        "cut off",
        "near cut",
        "done ms",
        "resumed s"
    );
    let mut ok = true;
    let mut json = serde_json::Map::new();
    for (mode, reps, errors) in results {
        let acked: usize = reps.iter().map(|r| r.writer_acks + r.standin_acks).sum();
        let old: usize = reps.iter().map(|r| r.writer_acks_old).sum();
        let missing: usize = reps.iter().map(|r| r.missing()).sum();
        let max_missing = reps.iter().map(|r| r.missing()).max().unwrap_or(0);
        let vacuous = reps.iter().filter(|r| r.vacuous.is_some()).count();
        let cut_off: usize = reps.iter().map(|r| r.cut_off).sum();
        let near = median(reps.iter().map(|r| r.acks_near_cut as f64).collect());
        let done = median(reps.iter().map(|r| r.done_ms).collect());
        let resumed = median(reps.iter().map(|r| r.resumed_ms / 1e3).collect());
        println!(
            "{:<19} {:>4} {:>6} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9.0} {:>8.0} {:>9.2}",
            mode.name(),
            reps.len(),
            errors.len(),
            acked,
            old,
            missing,
            max_missing,
            vacuous,
            cut_off,
            near,
            done,
            resumed
        );
        ok &= missing == 0 && vacuous == 0 && errors.is_empty();
        json.insert(
            mode.name().into(),
            serde_json::json!({
                "reps": reps.len(),
                "errors": errors,
                "acked": acked,
                "acked_writers": reps.iter().map(|r| r.writer_acks).sum::<usize>(),
                "acked_writers_old_primary": old,
                "acked_standin": reps.iter().map(|r| r.standin_acks).sum::<usize>(),
                "missing": missing,
                "max_missing_per_rep": max_missing,
                "vacuous": vacuous,
                "cut_off": cut_off,
                "cut_off_committed": reps.iter().map(|r| r.cut_off_present).sum::<usize>(),
                "median_acks_100ms_before_cut": near,
                "max_stalest_last_ack_ms": reps.iter().map(|r| r.stalest_ms).fold(f64::MIN, f64::max),
                "median_done_ms": done,
                "median_resumed_s": resumed,
            }),
        );
    }
    println!(
        "\nacked: acknowledged writes (bench writers + stand-in heartbeats), old prim.: writer \
         acks on the old primary; missing: acknowledged but not on the new primary; cut off: \
         writer INSERTs that failed when the old primary went away (not acknowledged); near \
         cut: median writer acks in the 100 ms before the cut; done: request -> ?wait=true \
         answer (median); resumed: cut -> first write acknowledged by the new primary \
         (median)."
    );
    println!(
        "verdict: {}",
        if ok {
            "no acknowledged write lost"
        } else {
            "FAILED (see the lines above)"
        }
    );
    println!("{}", serde_json::Value::Object(json));
    ok
}
