//! pgwarden-bench: what one pgwarden daemon costs, measured against a REAL healthy
//! two-node PostgreSQL 15 cluster built by `pgwarden-testkit`.
//!
//! 1. Footprint ([`footprint`]): one `pgwarden run` beside pg-a polls both nodes every
//!    1 s. For `--duration` seconds the bench samples VmRSS and Threads from
//!    `/proc/<pid>/status` every second, VmHWM at the end, and CPU time (utime + stime of
//!    `/proc/<pid>/stat`) at both ends of the window.
//! 2. Round trips per poll ([`round_trips`]): PostgreSQL's own
//!    `pg_stat_database.xact_commit` of database `postgres` against the daemon's
//!    `pgwarden_poll_duration_seconds_count`, over the same window.
//! 3. `/metrics` under load ([`load`]): an open loop at `--rate` requests/s for
//!    `--load-seconds` over keep-alive connections, latency measured from each request's
//!    intended start (no coordinated omission); the same loop against a no-op server as
//!    a control; then a closed loop at full speed.
//! 4. The figures against the targets ([`report`]).
//!
//! Output: a table on stdout, then one JSON line; progress goes to stderr. The exit status
//! is 1 when a target of figure 4 is NOT MET, as on an error. The daemon is stopped and
//! the cluster torn down on success, on error and on Ctrl-C / SIGTERM.

mod footprint;
mod load;
mod report;
mod round_trips;

use std::fs::{self, File};
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgwarden_bench::interrupted;
use pgwarden_testkit::{write_pgwarden_config, ClusterOptions, DaemonLayout, TestCluster};
use tokio::runtime::Runtime;

use footprint::{CpuMeter, CpuUse, Footprint, StealMeter};
use load::{get_once, CannedServer, LoadResult};
use report::Machine;
use round_trips::NodeRoundTrips;

const USAGE: &str = "\
usage: pgwarden-bench [--duration SECS] [--rate REQS_PER_S] [--load-seconds SECS]

  --duration SECS      footprint window while polling every 1 s (default 60)
  --rate N             open-loop GET /metrics requests per second (default 1000)
  --load-seconds SECS  length of the open-loop phase (default 10)

Builds a real two-node PostgreSQL 15 cluster, runs one `pgwarden run` beside pg-a (the
pgwarden binary next to this one, or $PGWARDEN_BIN), prints a table, then one JSON line.";

const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long the daemon may take to answer 200 on /livez and /health after its start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    pgwarden_bench::bench_main("pgwarden-bench", USAGE, parse_args, run)
}

// ---- arguments ----------------------------------------------------------------------

struct Options {
    duration_s: u64,
    rate: u64,
    load_s: u64,
}

/// Parses the flags by hand (`--flag VALUE` or `--flag=VALUE`); `Ok(None)` is `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>> {
    let mut o = Options {
        duration_s: 60,
        rate: 1000,
        load_s: 10,
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg, None),
        };
        let slot = match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--duration" => &mut o.duration_s,
            "--rate" => &mut o.rate,
            "--load-seconds" => &mut o.load_s,
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        };
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .with_context(|| format!("{flag} needs a value"))?,
        };
        *slot = value
            .parse()
            .ok()
            .filter(|&n: &u64| n > 0)
            .with_context(|| format!("{flag}: expected a positive whole number, got {value:?}"))?;
    }
    Ok(Some(o))
}

// ---- Ctrl-C / SIGTERM ---------------------------------------------------------------

fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps until `deadline`, waking every 100 ms to notice a Ctrl-C.
fn sleep_until(deadline: Instant) -> Result<()> {
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
}

fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

// ---- the run ------------------------------------------------------------------------

/// True when every target of figure 4 was met: a NOT MET exits 1.
fn run(opts: &Options) -> Result<bool> {
    let bin = pgwarden_bin()?;
    // One thread for the client: at these rates it is mostly idle, and it leaves the
    // second core to the daemon and PostgreSQL.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let load_before = Machine::load_average();

    progress("building a two-node PostgreSQL cluster (pg-a primary, pg-b sync standby)");
    let cluster = TestCluster::start(ClusterOptions::default()).context("building the cluster")?;
    check_interrupted()?;
    let mut layout = DaemonLayout::for_tests(&cluster);
    layout.poll_interval = POLL_INTERVAL;
    let config = write_pgwarden_config(&cluster, 0, &layout).context("writing the config")?;
    let url = layout.api_url(0);
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .with_context(|| format!("the daemon's API address {url}"))?;
    // Declared after `cluster`, so it is dropped (stopped) before the cluster is.
    let mut daemon = Daemon::start(&bin, &config, addr)?;
    progress(&format!("daemon pid {} at {url}", daemon.pid));

    let figures = match measure(&rt, &cluster, &mut daemon, opts) {
        Ok(f) => f,
        Err(e) => {
            if !interrupted() {
                eprintln!("--- daemon log (last lines) ---\n{}", daemon.log_tail(30));
            }
            return Err(e);
        }
    };
    let machine = Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: Machine::cpu_model(),
        postgres: cluster.psql(0, "SHOW server_version")?,
        load_before,
        load_after: Machine::load_average(),
    };
    let (table, met) = report::table(opts, &machine, &figures);
    print!("{table}");
    println!("{}", report::json(opts, &machine, &figures));
    if !met {
        progress("a target is NOT MET (figure 4): exit status 1");
    }
    progress("stopping the daemon and the cluster");
    Ok(met)
}

/// Everything the bench measured.
struct Figures {
    footprint: Footprint,
    round_trips: Vec<NodeRoundTrips>,
    metrics_bytes: usize,
    open: LoadResult,
    open_cpu: CpuUse,
    /// Hypervisor steal during the open loop, % of all CPU time.
    open_steal: f64,
    control: LoadResult,
    control_steal: f64,
    closed: LoadResult,
    rss_after_load_kb: u64,
}

fn measure(
    rt: &Runtime,
    cluster: &TestCluster,
    daemon: &mut Daemon,
    opts: &Options,
) -> Result<Figures> {
    round_trips::quiet_autovacuum(cluster)?;
    wait_ready(rt, daemon)?;
    let names: Vec<String> = cluster.nodes().iter().map(|n| n.name.clone()).collect();

    progress(&format!(
        "footprint window: {} s (RSS every second; CPU and counters at both ends)",
        opts.duration_s
    ));
    let before = round_trips::read_counters(rt, cluster, daemon.addr, &names)?;
    let footprint = footprint::sample_footprint(daemon, Duration::from_secs(opts.duration_s))?;
    let after = round_trips::read_counters(rt, cluster, daemon.addr, &names)?;
    let round_trips = round_trips::round_trips(&names, &before, &after);

    let (status, body) = get_once(rt, daemon.addr, "/metrics")?;
    if status != 200 {
        bail!("GET /metrics answered {status}");
    }

    progress(&format!(
        "open loop: GET /metrics at {} req/s for {} s",
        opts.rate, opts.load_s
    ));
    let cpu = CpuMeter::start(daemon.pid)?;
    let steal = StealMeter::start()?;
    let open = rt.block_on(load::open_loop(daemon.addr, opts.rate, opts.load_s))?;
    let open_steal = steal.finish()?;
    let open_cpu = cpu.finish()?;
    check_interrupted()?;
    daemon.ensure_running()?;

    progress("control: the same open loop against a no-op server");
    let (control, control_steal) = {
        let server = CannedServer::start(&body)?;
        let steal = StealMeter::start()?;
        let result = rt.block_on(load::open_loop(server.addr, opts.rate, opts.load_s))?;
        (result, steal.finish()?)
    };
    check_interrupted()?;

    progress("closed loop: GET /metrics as fast as it goes");
    let closed = rt.block_on(load::closed_loop(daemon.addr))?;
    check_interrupted()?;
    daemon.ensure_running()?;

    Ok(Figures {
        footprint,
        round_trips,
        metrics_bytes: body.len(),
        open,
        open_cpu,
        open_steal,
        control,
        control_steal,
        closed,
        rss_after_load_kb: footprint::proc_status(daemon.pid)?.rss_kb,
    })
}

// ---- the daemon process -------------------------------------------------------------

/// The `pgwarden` binary: next to this executable (target/release), or `$PGWARDEN_BIN`.
fn pgwarden_bin() -> Result<PathBuf> {
    let bin = match std::env::var_os("PGWARDEN_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("pgwarden"),
    };
    if !bin.is_file() {
        bail!(
            "{} not found: build it first (bench/run.sh does: cargo build --release -p pgwarden \
             -p pgwarden-bench), or set PGWARDEN_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// A `pgwarden run` child process. Dropping it stops it: SIGTERM, then SIGKILL after 5 s.
struct Daemon {
    child: Child,
    pid: i32,
    addr: SocketAddr,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon with its output in `<config>.log`.
    fn start(bin: &Path, config: &Path, addr: SocketAddr) -> Result<Daemon> {
        let log = config.with_extension("log");
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group: a terminal's Ctrl-C reaches only the bench, which
            // then stops the daemon itself.
            .process_group(0);
        // SAFETY: only prctl(2), which is async-signal-safe, runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Die with the bench even if it is SIGKILLed and cannot clean up.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Daemon {
            pid: child.id() as i32,
            child,
            addr,
            log,
        })
    }

    fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the daemon exited ({status})");
        }
        Ok(())
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: kill(2) of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until /livez and then /health answer 200: the daemon polls, and it sees the
/// cluster healthy.
fn wait_ready(rt: &Runtime, daemon: &mut Daemon) -> Result<()> {
    for path in ["/livez", "/health"] {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            daemon.ensure_running()?;
            check_interrupted()?;
            let last = match get_once(rt, daemon.addr, path) {
                Ok((200, _)) => break,
                Ok((status, body)) => format!("{status} {}", String::from_utf8_lossy(&body)),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("{path} did not answer 200 within {READY_TIMEOUT:?}; last: {last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_parse_with_a_space_or_an_equals_sign() {
        let o = parse(&["--duration", "10", "--rate=500"]).unwrap().unwrap();
        assert_eq!((o.duration_s, o.rate, o.load_s), (10, 500, 10));
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--duration", "0"]).is_err());
        assert!(parse(&["--duration"]).is_err());
        assert!(parse(&["--bogus", "1"]).is_err());
    }
}
