//! Soak: both daemons against one real cluster for `--minutes`, with the standby
//! restarted every `--restart-every`, to show that nothing grows: the daemons' memory,
//! file descriptors and connections to PostgreSQL at the end are those after warm-up.
//!
//! The cluster is the one of the failover benches ([`Rig`]): pg-a primary, pg-b
//! synchronous standby, the stand-in application writing a heartbeat every 100 ms, a
//! `pgwarden run` beside each node. Every restart stops pg-b (`pg_ctl stop -m fast`,
//! or immediate with `--stop-mode immediate`), starts it again and waits until both
//! daemons answer /health 200 again (the standby streams and is synchronous). Each
//! sample reads, per daemon:
//! - VmRSS and Threads of `/proc/<pid>/status`;
//! - the open file descriptors (entries of `/proc/<pid>/fd`);
//! - its established TCP connections to the PostgreSQL nodes: the socket inodes among
//!   its fds, looked up in `/proc/<pid>/net/tcp` (and `tcp6`) with a node's port as the
//!   remote port;
//! - GET /health (status and problem codes);
//!
//! and per node the client sessions of the monitor role in `pg_stat_activity` (both
//! daemons' connections together). Samples are taken at the start, every
//! `--sample-every` (just before a restart when both are due) and at the end.
//!
//! Verdict: after warm-up (the first sample that follows a restart), the end must not
//! exceed it: RSS by more than `--rss-slack-mib` (1 MiB), descriptors by more than 2,
//! connections and sessions not at all; every restart must have been followed by a
//! healthy cluster, and both daemons must still run. A soak in which pg-b was never
//! restarted (`--minutes` shorter than `--restart-every`, or interrupted before the
//! first) measured no reconnection at all: it says so and exits 1 instead of giving a
//! growth verdict.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgwarden_bench::http::get;
use pgwarden_bench::interrupted;
use pgwarden_bench::rig::{pgwarden_exe, Rig};
use pgwarden_testkit::StopMode;

const USAGE: &str = "\
usage: pgwarden-soak [--minutes M] [--restart-every DUR] [--sample-every DUR]
                     [--poll-interval DUR] [--stop-mode fast|immediate] [--rss-slack-mib X]

  --minutes M           how long to run (default 30; fractions allowed)
  --restart-every DUR   restart the standby this often (default 60s)
  --sample-every DUR    sample the daemons this often (default 60s)
  --poll-interval DUR   the daemons' poll.interval (default 250ms)
  --stop-mode MODE      how the standby is stopped: fast (default) or immediate
  --rss-slack-mib X     RSS growth allowed after warm-up (default 1)

DUR: 20s, 1m, 500ms (a bare number is seconds). Prints a row per sample as it goes,
then the verdict and one JSON line. Exits 1 if something grew, a restart did not
recover, a daemon died, or pg-b was never restarted (no verdict then). Ctrl-C / SIGTERM
end the run early with a final sample.";

/// How long a restarted standby may take until both daemons say healthy again.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Descriptors allowed above the warm-up sample (an HTTP request between the daemons
/// may be open at the moment of a sample).
const FD_SLACK: usize = 2;

struct Options {
    duration: Duration,
    restart_every: Duration,
    sample_every: Duration,
    poll_interval: Duration,
    stop_mode: StopMode,
    rss_slack_kb: u64,
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    if let Ok(secs) = s.parse::<f64>() {
        return Ok(Duration::from_secs_f64(secs));
    }
    humantime::parse_duration(s).with_context(|| format!("{s:?} is not a duration"))
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Option<Options>> {
    let mut o = Options {
        duration: Duration::from_secs(30 * 60),
        restart_every: Duration::from_secs(60),
        sample_every: Duration::from_secs(60),
        poll_interval: Duration::from_millis(250),
        stop_mode: StopMode::Fast,
        rss_slack_kb: 1024,
    };
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--minutes" => {
                o.duration = Duration::from_secs_f64(value("--minutes")?.parse::<f64>()? * 60.0)
            }
            "--restart-every" => o.restart_every = parse_duration(&value("--restart-every")?)?,
            "--sample-every" => o.sample_every = parse_duration(&value("--sample-every")?)?,
            "--poll-interval" => o.poll_interval = parse_duration(&value("--poll-interval")?)?,
            "--stop-mode" => {
                o.stop_mode = match value("--stop-mode")?.as_str() {
                    "fast" => StopMode::Fast,
                    "immediate" => StopMode::Immediate,
                    other => bail!("--stop-mode {other}: use fast or immediate"),
                }
            }
            "--rss-slack-mib" => {
                o.rss_slack_kb = (value("--rss-slack-mib")?.parse::<f64>()? * 1024.0) as u64
            }
            "--help" | "-h" => return Ok(None),
            other => bail!("unknown argument {other}; see --help"),
        }
    }
    if o.restart_every.is_zero() || o.sample_every.is_zero() || o.poll_interval.is_zero() {
        bail!("--restart-every, --sample-every and --poll-interval must be longer than 0");
    }
    Ok(Some(o))
}

fn main() -> ExitCode {
    pgwarden_bench::bench_main("pgwarden-soak", USAGE, parse_args, run)
}

fn progress(msg: &str) {
    eprintln!("[soak] {msg}");
}

// ---- samples --------------------------------------------------------------------------

/// One daemon at one moment.
#[derive(Clone, Debug)]
struct DaemonSample {
    rss_kb: u64,
    threads: u64,
    fds: usize,
    /// Established TCP connections to a PostgreSQL node's port.
    pg_tcp: usize,
    /// All its TCP sockets (any state, any peer).
    tcp: usize,
    health: String,
    healthy: bool,
}

#[derive(Clone, Debug)]
struct Sample {
    at: Duration,
    restarts: usize,
    daemons: Vec<DaemonSample>,
    /// Client sessions of the monitor role per node; None when the node did not answer.
    monitor_sessions: Vec<Option<usize>>,
}

fn status_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The inodes of the sockets among `pid`'s descriptors, and the number of descriptors.
fn socket_inodes(pid: i32) -> anyhow::Result<(usize, HashSet<u64>)> {
    let dir = format!("/proc/{pid}/fd");
    let mut fds = 0;
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(entry) = entry else { continue };
        fds += 1;
        // A descriptor closed since read_dir saw it has no link any more: skip it.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok((fds, inodes))
}

/// (all TCP sockets of `inodes`, those established to one of `pg_ports`), from
/// `/proc/<pid>/net/tcp{,6}`.
fn tcp_connections(pid: i32, inodes: &HashSet<u64>, pg_ports: &[u16]) -> (usize, usize) {
    let (mut all, mut pg) = (0, 0);
    for file in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(inode) = f.get(9).and_then(|i| i.parse::<u64>().ok()) else {
                continue;
            };
            if !inodes.contains(&inode) {
                continue;
            }
            all += 1;
            let remote_port = f
                .get(2)
                .and_then(|r| r.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            let established = f.get(3) == Some(&"01");
            if established && remote_port.is_some_and(|p| pg_ports.contains(&p)) {
                pg += 1;
            }
        }
    }
    (all, pg)
}

/// GET /health: ("200", true) or ("503 node_down,standby_not_sync", false).
fn health(api: &str) -> (String, bool) {
    let (status, body) = get(api, "/health");
    let codes: Vec<&str> = body
        .split("\"code\":\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    let text = if codes.is_empty() {
        status.to_string()
    } else {
        format!("{status} {}", codes.join(","))
    };
    (text, status == 200)
}

fn sample(rig: &mut Rig, at: Duration, restarts: usize) -> anyhow::Result<Sample> {
    let pg_ports: Vec<u16> = rig.cluster.nodes().iter().map(|n| n.port).collect();
    let mut daemons = Vec::new();
    for i in 0..rig.daemons.len() {
        if !rig.daemons[i].running() {
            bail!("the daemon beside {} exited", rig.cluster.node(i).name);
        }
        let pid = rig.daemons[i].pid();
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // /proc first: the /health request below is a connection of its own.
        let (fds, inodes) = socket_inodes(pid)?;
        let (tcp, pg_tcp) = tcp_connections(pid, &inodes, &pg_ports);
        let (health, healthy) = health(&rig.api(i));
        daemons.push(DaemonSample {
            rss_kb: status_field(&status, "VmRSS:").context("no VmRSS")?,
            threads: status_field(&status, "Threads:").context("no Threads")?,
            fds,
            pg_tcp,
            tcp,
            health,
            healthy,
        });
    }
    let monitor = rig.cluster.credentials().monitor_user.clone();
    let monitor_sessions = (0..rig.cluster.nodes().len())
        .map(|i| {
            rig.cluster
                .psql(
                    i,
                    &format!(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE usename = '{monitor}' AND backend_type = 'client backend'"
                    ),
                )
                .ok()
                .and_then(|s| s.parse().ok())
        })
        .collect();
    Ok(Sample {
        at,
        restarts,
        daemons,
        monitor_sessions,
    })
}

// ---- the run ----------------------------------------------------------------------------

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

fn pair<T: std::fmt::Display>(v: impl Iterator<Item = T>) -> String {
    v.map(|x| x.to_string()).collect::<Vec<_>>().join(" / ")
}

const HEADER: &str = "time    restarts  RSS MiB a / b   fds a / b  threads  pg conns a / b  monitor sessions pg-a / pg-b  health a / b";

fn row(s: &Sample) -> String {
    let sessions = pair(
        s.monitor_sessions
            .iter()
            .map(|m| m.map_or("-".to_string(), |n| n.to_string())),
    );
    format!(
        "{:<7} {:>8}  {:<15} {:<10} {:<8} {:<15} {:<28} {}",
        clock(s.at),
        s.restarts,
        pair(s.daemons.iter().map(|d| format!("{:.2}", mib(d.rss_kb)))),
        pair(s.daemons.iter().map(|d| d.fds)),
        pair(s.daemons.iter().map(|d| d.threads)),
        pair(s.daemons.iter().map(|d| d.pg_tcp)),
        sessions,
        pair(s.daemons.iter().map(|d| d.health.clone())),
    )
}

/// Waits until both daemons answer /health 200; the time it took, or None.
fn wait_healthy(rig: &Rig) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < RECOVERY_TIMEOUT && !interrupted() {
        if (0..rig.daemons.len()).all(|i| get(&rig.api(i), "/health").0 == 200) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Restarts pg-b; Ok(time until both daemons were healthy again), or Err(why not).
fn restart_standby(rig: &Rig, mode: StopMode) -> Result<Duration, String> {
    rig.cluster
        .stop_node(1, mode)
        .map_err(|e| format!("stopping pg-b: {e}"))?;
    rig.cluster
        .start_node(1)
        .map_err(|e| format!("starting pg-b: {e}"))?;
    wait_healthy(rig).ok_or_else(|| {
        format!(
            "not healthy {}s after the restart: {}",
            RECOVERY_TIMEOUT.as_secs(),
            pair((0..rig.daemons.len()).map(|i| health(&rig.api(i)).0))
        )
    })
}

fn sleep_until(deadline: Instant) {
    while !interrupted() {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
}

fn run(opts: &Options) -> anyhow::Result<bool> {
    let exe = pgwarden_exe()?;
    progress("building the cluster, starting the stand-in and both daemons");
    let mut rig = Rig::start(&exe, opts.poll_interval)?;
    progress(&format!(
        "daemon pids {}; running {} min, restarting pg-b every {:?}, sampling every {:?}",
        pair(rig.daemons.iter().map(|d| d.pid())),
        opts.duration.as_secs_f64() / 60.0,
        opts.restart_every,
        opts.sample_every,
    ));
    println!(
        "soak: {:.1} min, pg-b restarted every {:?} (stop -m {}), daemons poll every {:?}",
        opts.duration.as_secs_f64() / 60.0,
        opts.restart_every,
        if opts.stop_mode == StopMode::Fast {
            "fast"
        } else {
            "immediate"
        },
        opts.poll_interval
    );
    println!("{HEADER}");

    let start = Instant::now();
    let end = start + opts.duration;
    let mut samples = vec![sample(&mut rig, Duration::ZERO, 0)?];
    println!("{}", row(&samples[0]));
    let mut recoveries: Vec<Duration> = Vec::new();
    let mut failed_restarts: Vec<String> = Vec::new();
    let mut next_restart = start + opts.restart_every;
    let mut next_sample = start + opts.sample_every;
    loop {
        sleep_until(next_restart.min(next_sample).min(end));
        let now = Instant::now();
        if interrupted() || now >= end {
            break;
        }
        // A sample due at the same time as a restart is taken first, with the standby
        // up for a whole period.
        if next_sample <= now {
            let s = sample(
                &mut rig,
                now - start,
                recoveries.len() + failed_restarts.len(),
            )?;
            println!("{}", row(&s));
            samples.push(s);
            next_sample += opts.sample_every;
        }
        if next_restart <= now {
            let n = recoveries.len() + failed_restarts.len() + 1;
            match restart_standby(&rig, opts.stop_mode) {
                Ok(took) => {
                    progress(&format!(
                        "restart {n}: healthy again {:.2} s after pg-b started",
                        took.as_secs_f64()
                    ));
                    recoveries.push(took);
                }
                Err(why) => {
                    progress(&format!("restart {n}: {why}"));
                    failed_restarts.push(why);
                }
            }
            while next_restart <= Instant::now() {
                next_restart += opts.restart_every;
            }
        }
    }
    // The end: with the cluster healthy, as after every restart.
    let settle = wait_healthy(&rig);
    let restarts = recoveries.len() + failed_restarts.len();
    let last = sample(&mut rig, start.elapsed(), restarts)?;
    println!("{}", row(&last));
    samples.push(last);
    if interrupted() {
        println!("(interrupted after {})", clock(start.elapsed()));
    }
    Ok(verdict(
        opts,
        &samples,
        &recoveries,
        &failed_restarts,
        settle.is_some(),
    ))
}

/// Prints the comparison of the end with the start and with the warm-up sample; true
/// when nothing grew and every restart recovered.
fn verdict(
    opts: &Options,
    samples: &[Sample],
    recoveries: &[Duration],
    failed_restarts: &[String],
    healthy_at_end: bool,
) -> bool {
    let first = &samples[0];
    let last = &samples[samples.len() - 1];
    // Warm-up: the first sample after a restart (the daemons have reconnected once),
    // if it is not the last one.
    let base = samples[..samples.len() - 1]
        .iter()
        .find(|s| s.restarts > 0)
        .unwrap_or(first);
    let mut problems = Vec::new();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nrestarts of pg-b: {} ({} failed to recover); healthy again after: median {:.2} s, max {:.2} s",
        recoveries.len() + failed_restarts.len(),
        failed_restarts.len(),
        pgwarden_bench::median(recoveries.iter().map(|d| d.as_secs_f64()).collect()),
        recoveries.iter().map(|d| d.as_secs_f64()).fold(0.0, f64::max),
    );
    let _ = writeln!(
        out,
        "baseline after warm-up: the sample at {} ({} restarts)",
        clock(base.at),
        base.restarts
    );
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "", "start", "warm-up", "end", "max", "allowed"
    );
    for (i, name) in ["pg-a", "pg-b"].iter().enumerate() {
        let d = |s: &Sample| s.daemons[i].clone();
        let max_rss = samples
            .iter()
            .map(|s| s.daemons[i].rss_kb)
            .max()
            .unwrap_or(0);
        let max_fds = samples.iter().map(|s| s.daemons[i].fds).max().unwrap_or(0);
        let max_pg = samples
            .iter()
            .map(|s| s.daemons[i].pg_tcp)
            .max()
            .unwrap_or(0);
        let rss_allowed = d(base).rss_kb + opts.rss_slack_kb;
        let _ = writeln!(
            out,
            "{:<24} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            format!("daemon {name} RSS MiB"),
            mib(d(first).rss_kb),
            mib(d(base).rss_kb),
            mib(d(last).rss_kb),
            mib(max_rss),
            mib(rss_allowed)
        );
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10}",
            format!("daemon {name} fds"),
            d(first).fds,
            d(base).fds,
            d(last).fds,
            max_fds,
            d(base).fds + FD_SLACK
        );
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10}",
            format!("daemon {name} pg conns"),
            d(first).pg_tcp,
            d(base).pg_tcp,
            d(last).pg_tcp,
            max_pg,
            d(base).pg_tcp
        );
        if d(last).rss_kb > rss_allowed {
            problems.push(format!(
                "daemon {name}: RSS {:.2} MiB > {:.2} MiB",
                mib(d(last).rss_kb),
                mib(rss_allowed)
            ));
        }
        if d(last).fds > d(base).fds + FD_SLACK {
            problems.push(format!(
                "daemon {name}: {} fds > {}",
                d(last).fds,
                d(base).fds + FD_SLACK
            ));
        }
        if d(last).pg_tcp > d(base).pg_tcp {
            problems.push(format!(
                "daemon {name}: {} connections to PostgreSQL > {}",
                d(last).pg_tcp,
                d(base).pg_tcp
            ));
        }
        if !d(last).healthy {
            problems.push(format!(
                "daemon {name}: /health {} at the end",
                d(last).health
            ));
        }
    }
    for (i, name) in ["pg-a", "pg-b"].iter().enumerate() {
        let show = |s: &Sample| s.monitor_sessions[i].map_or("-".into(), |n| n.to_string());
        let max = samples
            .iter()
            .filter_map(|s| s.monitor_sessions[i])
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10}",
            format!("monitor sessions {name}"),
            show(first),
            show(base),
            show(last),
            max,
            show(base)
        );
        if last.monitor_sessions[i].unwrap_or(usize::MAX) > base.monitor_sessions[i].unwrap_or(0) {
            problems.push(format!(
                "{name}: {} monitor sessions > {}",
                show(last),
                show(base)
            ));
        }
    }
    for why in failed_restarts {
        problems.push(format!("a restart did not recover: {why}"));
    }
    if !healthy_at_end {
        problems.push("the cluster was not healthy at the end".into());
    }
    print!("{out}");
    // Without a restart there was no reconnection to leak anything: the
    // comparison above is of a quiet cluster with itself.
    let vacuous = recoveries.is_empty() && failed_restarts.is_empty();
    let ok = problems.is_empty() && !vacuous;
    if vacuous {
        println!(
            "verdict: VACUOUS: pg-b was not restarted once in {} (--restart-every {:?}), \
             so nothing was soaked and there is no growth verdict{}",
            clock(last.at),
            opts.restart_every,
            if problems.is_empty() {
                String::new()
            } else {
                format!("; also: {}", problems.join("; "))
            }
        );
    } else if ok {
        println!(
            "verdict: no growth (end <= warm-up: RSS + {:.1} MiB, fds + {FD_SLACK}, \
             connections and sessions + 0), every restart recovered",
            mib(opts.rss_slack_kb)
        );
    } else {
        println!("verdict: FAILED: {}", problems.join("; "));
    }
    let daemon_json = |s: &Sample| {
        s.daemons
            .iter()
            .map(|d| {
                serde_json::json!({"rss_kb": d.rss_kb, "fds": d.fds, "threads": d.threads,
                    "pg_tcp": d.pg_tcp, "tcp": d.tcp, "health": d.health})
            })
            .collect::<Vec<_>>()
    };
    println!(
        "{}",
        serde_json::json!({
            "minutes": opts.duration.as_secs_f64() / 60.0,
            "restart_every_s": opts.restart_every.as_secs_f64(),
            "restarts": recoveries.len() + failed_restarts.len(),
            "failed_restarts": failed_restarts,
            "recovery_median_s": pgwarden_bench::median(recoveries.iter().map(|d| d.as_secs_f64()).collect()),
            "samples": samples.iter().map(|s| serde_json::json!({
                "at_s": s.at.as_secs(),
                "restarts": s.restarts,
                "daemons": daemon_json(s),
                "monitor_sessions": s.monitor_sessions,
            })).collect::<Vec<_>>(),
            "vacuous": vacuous,
            "ok": ok,
        })
    );
    ok
}
