//! Figure 1: the daemon's memory, CPU and threads while it polls, read from /proc.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{progress, sleep_until, Daemon};

/// What the bench reads from `/proc/<pid>/status`.
pub struct ProcStatus {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub threads: u64,
}

pub fn proc_status(pid: i32) -> Result<ProcStatus> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in {path} (did the daemon exit?)"))
    };
    Ok(ProcStatus {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
        threads: field("Threads:")?,
    })
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces: split after its closing parenthesis,
    // where field 3 (state) starts. utime and stime are fields 14 and 15.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no field {n} in {path}"))
    };
    Ok(field(14)? + field(15)?)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Measures the CPU time a process uses over a wall-clock window.
pub struct CpuMeter {
    pid: i32,
    ticks: u64,
    at: Instant,
}

pub struct CpuUse {
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
}

impl CpuUse {
    /// Percent of one core.
    pub fn percent(&self) -> f64 {
        100.0 * self.cpu_seconds / self.wall_seconds
    }
}

impl CpuMeter {
    pub fn start(pid: i32) -> Result<CpuMeter> {
        Ok(CpuMeter {
            pid,
            ticks: cpu_ticks(pid)?,
            at: Instant::now(),
        })
    }

    pub fn finish(self) -> Result<CpuUse> {
        let ticks = cpu_ticks(self.pid)?.saturating_sub(self.ticks);
        Ok(CpuUse {
            cpu_seconds: ticks as f64 / clock_ticks_per_second(),
            wall_seconds: self.at.elapsed().as_secs_f64(),
        })
    }
}

/// Steal time: how much of the machine's CPU time the hypervisor gave to others while
/// this VM had work to run. Read from the `cpu` line of /proc/stat over a window.
pub struct StealMeter {
    steal: u64,
    total: u64,
}

impl StealMeter {
    pub fn start() -> Result<StealMeter> {
        let (steal, total) = steal_and_total_ticks()?;
        Ok(StealMeter { steal, total })
    }

    /// Percent of all CPU time (every core) in the window that was stolen.
    pub fn finish(self) -> Result<f64> {
        let (steal, total) = steal_and_total_ticks()?;
        let total = total.saturating_sub(self.total).max(1);
        Ok(100.0 * steal.saturating_sub(self.steal) as f64 / total as f64)
    }
}

/// (steal, sum of all fields) of the `cpu` line: user nice system idle iowait irq
/// softirq steal guest guest_nice; guest time is already inside user and nice.
fn steal_and_total_ticks() -> Result<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let steal = *ticks.get(7).context("no steal field in /proc/stat")?;
    Ok((steal, ticks.iter().take(8).sum()))
}

pub struct Footprint {
    /// VmRSS at the start and after every second of the window.
    pub rss_kb: Vec<u64>,
    /// VmHWM at the end: the peak RSS since the daemon started.
    pub hwm_kb: u64,
    pub threads_end: u64,
    pub threads_max: u64,
    pub cpu: CpuUse,
}

impl Footprint {
    pub fn rss_min_mib(&self) -> f64 {
        mib(self.rss_kb.iter().copied().min().unwrap_or(0))
    }

    pub fn rss_avg_mib(&self) -> f64 {
        mib(self.rss_kb.iter().sum::<u64>()) / self.rss_kb.len().max(1) as f64
    }

    pub fn rss_max_mib(&self) -> f64 {
        mib(self.rss_kb.iter().copied().max().unwrap_or(0))
    }
}

pub fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Samples the daemon every second for `window`; CPU time is read at both ends.
pub fn sample_footprint(daemon: &mut Daemon, window: Duration) -> Result<Footprint> {
    let first = proc_status(daemon.pid)?;
    let cpu = CpuMeter::start(daemon.pid)?;
    let start = Instant::now();
    let mut rss_kb = vec![first.rss_kb];
    let mut threads_max = first.threads;
    for second in 1..=window.as_secs() {
        sleep_until(start + Duration::from_secs(second))?;
        daemon.ensure_running()?;
        let s = proc_status(daemon.pid)?;
        rss_kb.push(s.rss_kb);
        threads_max = threads_max.max(s.threads);
        if second % 10 == 0 && second < window.as_secs() {
            progress(&format!("  {second} s, RSS {:.2} MiB", mib(s.rss_kb)));
        }
    }
    let cpu = cpu.finish()?;
    let end = proc_status(daemon.pid)?;
    Ok(Footprint {
        rss_kb,
        hwm_kb: end.hwm_kb,
        threads_end: end.threads,
        threads_max: threads_max.max(end.threads),
        cpu,
    })
}
