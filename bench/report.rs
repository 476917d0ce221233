//! Figure 4 and the output: the readable table (with the targets) and the JSON
//! line.

use std::fmt::Write as _;
use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::footprint::mib;
use crate::load::{
    percentile_ms, LoadResult, CLOSED_LOOP_CONNECTIONS, CLOSED_LOOP_SECONDS, OPEN_LOOP_CONNECTIONS,
};
use crate::{Figures, Options, POLL_INTERVAL};

// Targets of the issue, and figures quoted there for scale.
const TARGET_RSS_MIB: f64 = 15.0;
const TARGET_CPU_PERCENT: f64 = 1.0;
const TARGET_P99_MS: f64 = 1.0;
const QUOTED: &str = "postgres_exporter ~18 MB, ~9 ms per scrape (p99 ~13 ms); \
                      Patroni /metrics ~1.8 ms (p99 ~2.9 ms) from a ~45 MB process";

/// Where the figures were taken.
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub postgres: String,
    pub load_before: String,
    pub load_after: String,
}

impl Machine {
    pub fn cpu_model() -> String {
        fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown CPU".into())
    }

    /// The 1, 5 and 15 minute load averages.
    pub fn load_average() -> String {
        let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The human-readable table, and whether every target was met.
pub fn table(opts: &Options, m: &Machine, f: &Figures) -> (String, bool) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\npgwarden bench: {} cores ({}), PostgreSQL {}\n\
         load average {} before, {} after",
        m.cores, m.cpu_model, m.postgres, m.load_before, m.load_after
    );
    footprint(&mut out, opts, f);
    round_trips(&mut out, f);
    metrics(&mut out, opts, f);
    let met = targets(&mut out, opts, f);
    (out, met)
}

fn row(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "   {label:<30} {value}");
}

fn footprint(out: &mut String, opts: &Options, f: &Figures) {
    let fp = &f.footprint;
    let _ = writeln!(
        out,
        "\n1. Footprint: one daemon beside pg-a, polling both nodes every {} s; {} s window",
        POLL_INTERVAL.as_secs(),
        opts.duration_s
    );
    let rss = format!(
        "{:.2} / {:.2} / {:.2} MiB ({} samples, 1 per second)",
        fp.rss_min_mib(),
        fp.rss_avg_mib(),
        fp.rss_max_mib(),
        fp.rss_kb.len()
    );
    row(out, "RSS min / avg / max", rss);
    row(
        out,
        "peak RSS (VmHWM)",
        format!("{:.2} MiB", mib(fp.hwm_kb)),
    );
    let cpu = format!(
        "{:.3} % of one core ({:.2} s CPU in {:.1} s)",
        fp.cpu.percent(),
        fp.cpu.cpu_seconds,
        fp.cpu.wall_seconds
    );
    row(out, "CPU", cpu);
    let threads = format!("{} (max seen {})", fp.threads_end, fp.threads_max);
    row(out, "threads", threads);
}

fn round_trips(out: &mut String, f: &Figures) {
    let _ = writeln!(
        out,
        "\n2. Round trips per poll: pg_stat_database.xact_commit of db postgres \
         / pgwarden_poll_duration_seconds_count"
    );
    let _ = writeln!(
        out,
        "   node   transactions  polls  per poll       poll errors  new sessions"
    );
    for r in &f.round_trips {
        let _ = writeln!(
            out,
            "   {:<6} {:>12}  {:>5}  {:>4.2} ± {:<4.2}  {:>11}  {:>12}",
            r.node,
            r.transactions,
            r.polls,
            r.per_poll(),
            r.uncertainty(),
            r.poll_errors,
            r.new_sessions
        );
    }
}

fn latencies(r: &LoadResult) -> String {
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        r.ms(50.0),
        r.ms(90.0),
        r.ms(99.0),
        r.ms(99.9),
        r.ms(100.0)
    )
}

fn achieved(r: &LoadResult) -> String {
    let first = r.first_error.as_ref();
    format!(
        "{:.1} req/s, {} errors{}",
        r.requests_per_second(),
        r.errors,
        first.map(|e| format!(" (first: {e})")).unwrap_or_default()
    )
}

fn metrics(out: &mut String, opts: &Options, f: &Figures) {
    let (o, c, control) = (&f.open, &f.closed, &f.control);
    let _ = writeln!(
        out,
        "\n3. GET /metrics, body {} bytes\n   \
         open loop: {} req/s for {} s over {OPEN_LOOP_CONNECTIONS} keep-alive connections, \
         latency from the intended start",
        f.metrics_bytes, opts.rate, opts.load_s
    );
    row(out, "achieved", achieved(o));
    row(out, "latency ms", latencies(o));
    let requests = (o.latencies.len() as u64 + o.errors).max(1);
    let cpu = format!(
        "{:.1} % of one core ({:.0} us per request)",
        f.open_cpu.percent(),
        1e6 * f.open_cpu.cpu_seconds / requests as f64
    );
    row(out, "daemon CPU during the loop", cpu);
    let late = &o.wake_lateness;
    let lateness = format!(
        "p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        percentile_ms(late, 50.0),
        percentile_ms(late, 99.0),
        percentile_ms(late, 99.9),
        percentile_ms(late, 100.0)
    );
    row(out, "client timer lateness ms", lateness);
    row(
        out,
        "hypervisor steal",
        format!("{:.1} % of CPU time", f.open_steal),
    );
    let _ = writeln!(
        out,
        "   control: the same open loop against a no-op server in the bench that returns\n   \
         the same body at once (the floor this machine and client set):"
    );
    row(out, "achieved", achieved(control));
    row(out, "latency ms", latencies(control));
    row(
        out,
        "hypervisor steal",
        format!("{:.1} % of CPU time", f.control_steal),
    );
    let _ = writeln!(
        out,
        "   closed loop: {CLOSED_LOOP_CONNECTIONS} connections for {CLOSED_LOOP_SECONDS} s, \
         as fast as they go"
    );
    row(out, "achieved", achieved(c));
    row(out, "latency ms", latencies(c));
    let rss = format!("{:.2} MiB", mib(f.rss_after_load_kb));
    row(out, "daemon RSS after the loops", rss);
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT MET"
    }
}

/// A missed p99 target says whether the no-op control missed it too: then this
/// machine, not the daemon, sets the tail.
fn p99_verdict(p99: f64, f: &Figures) -> &'static str {
    if p99 < TARGET_P99_MS && f.open.errors == 0 {
        "met"
    } else if f.control.ms(99.0) >= TARGET_P99_MS {
        "NOT MET here; control misses too"
    } else {
        "NOT MET"
    }
}

/// Writes figure 4; true when every verdict is "met".
fn targets(out: &mut String, opts: &Options, f: &Figures) -> bool {
    let fp = &f.footprint;
    let mut all_met = true;
    let _ = writeln!(
        out,
        "\n4. Against the issue's targets\n   {:<34} {:<18} {:<26} verdict",
        "what", "measured", "target"
    );
    let mut target = |what: &str, measured: String, goal: &str, verdict: &str| {
        all_met &= verdict.is_empty() || verdict == "met";
        let _ = writeln!(out, "   {what:<34} {measured:<18} {goal:<26} {verdict}");
    };
    let rss = fp.rss_max_mib();
    target(
        "RSS (max in the window)",
        format!("{rss:.2} MiB"),
        "< 15 MiB",
        met(rss < TARGET_RSS_MIB),
    );
    let cpu = fp.cpu.percent();
    target(
        "CPU while polling every 1 s",
        format!("{cpu:.3} %"),
        "< 1 % of one core",
        met(cpu < TARGET_CPU_PERCENT),
    );
    let p99 = f.open.ms(99.0);
    target(
        &format!("/metrics p99 at {} req/s", opts.rate),
        format!("{p99:.3} ms"),
        "< 1 ms at 1,000 req/s",
        p99_verdict(p99, f),
    );
    target(
        "  same load on the no-op control",
        format!("{:.3} ms", f.control.ms(99.0)),
        "(the machine's floor)",
        "",
    );
    let trips: Vec<String> = f
        .round_trips
        .iter()
        .map(|r| format!("{:.2}", r.per_poll()))
        .collect();
    // Exactly one round trip per poll. The counts are good to one
    // transaction (see NodeRoundTrips::uncertainty), so "1" means at most
    // one transaction more or fewer than polls over the window, no more:
    // 1.49 per poll is half a round trip too many, not "1" rounded.
    let one = !f.round_trips.is_empty()
        && f.round_trips
            .iter()
            .all(|r| r.polls > 0 && r.transactions.abs_diff(r.polls) <= 1);
    target(
        "round trips per poll, per node",
        trips.join(" / "),
        "1.00 (± 1 transaction)",
        met(one),
    );
    let _ = writeln!(out, "   for scale (quoted, not measured here): {QUOTED}");
    all_met
}

/// The figures as one JSON object (printed on one line), for scripts.
pub fn json(opts: &Options, m: &Machine, f: &Figures) -> Value {
    let fp = &f.footprint;
    let mut open = load_json(&f.open);
    open["target_rate"] = json!(opts.rate);
    open["seconds"] = json!(opts.load_s);
    open["connections"] = json!(OPEN_LOOP_CONNECTIONS);
    open["daemon_cpu_percent"] = json!(f.open_cpu.percent());
    open["client_wake_lateness_p99_ms"] = json!(percentile_ms(&f.open.wake_lateness, 99.0));
    open["steal_percent"] = json!(f.open_steal);
    let mut control = load_json(&f.control);
    control["steal_percent"] = json!(f.control_steal);
    let mut closed = load_json(&f.closed);
    closed["seconds"] = json!(CLOSED_LOOP_SECONDS);
    closed["connections"] = json!(CLOSED_LOOP_CONNECTIONS);
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "bench": "pgwarden",
        "unix_time": unix_time,
        "machine": {
            "cores": m.cores,
            "cpu": m.cpu_model,
            "postgres": m.postgres,
            "load_average_before": m.load_before,
            "load_average_after": m.load_after,
        },
        "poll_interval_s": POLL_INTERVAL.as_secs(),
        "footprint": {
            "window_s": opts.duration_s,
            "rss_min_mib": fp.rss_min_mib(),
            "rss_avg_mib": fp.rss_avg_mib(),
            "rss_max_mib": fp.rss_max_mib(),
            "vmhwm_mib": mib(fp.hwm_kb),
            "cpu_percent": fp.cpu.percent(),
            "cpu_seconds": fp.cpu.cpu_seconds,
            "threads": fp.threads_end,
            "threads_max": fp.threads_max,
        },
        "round_trips": f.round_trips.iter().map(|r| json!({
            "node": r.node,
            "transactions": r.transactions,
            "polls": r.polls,
            "per_poll": r.per_poll(),
            "per_poll_uncertainty": r.uncertainty(),
            "poll_errors": r.poll_errors,
            "new_sessions": r.new_sessions,
        })).collect::<Vec<_>>(),
        "metrics_body_bytes": f.metrics_bytes,
        "metrics_open_loop": open,
        "control_open_loop": control,
        "metrics_closed_loop": closed,
        "rss_after_load_mib": mib(f.rss_after_load_kb),
    })
}

fn load_json(r: &LoadResult) -> Value {
    json!({
        "requests_per_second": r.requests_per_second(),
        "requests": r.latencies.len(),
        "errors": r.errors,
        "p50_ms": r.ms(50.0),
        "p90_ms": r.ms(90.0),
        "p99_ms": r.ms(99.0),
        "p99_9_ms": r.ms(99.9),
        "max_ms": r.ms(100.0),
    })
}
