//! pgwarden-silent-drop: how long the first statement of an operation takes
//! after the daemon's admin connection to a node was silently dropped, for
//! one or more pgwarden binaries (e.g. main's, then this build's).
//!
//! Per binary, on a fresh testbed of real hosts (network namespaces), b's
//! daemon first runs `PUT /v1/sync` (its SQL runs on the primary pg-a over
//! b's admin connection(s), across the bridge), so it holds idle connections
//! to pg-a. Then, found by their client ports in pg-a's pg_stat_activity:
//!
//! 1. *ended, then healed*: an nftables rule on b drops those connections'
//!    packets, pg-a ends their sessions (pg_terminate_backend: its FIN is
//!    lost), the rule is removed, and at once `PUT /v1/sync` is sent to b.
//! 2. *black-holed*: the rule drops those connections' packets and stays
//!    (a firewall or NAT that forgot them; new connections pass), and
//!    `PUT /v1/sync` is sent to b; the rule goes after the answer.
//! 3. as 2, with a switchover to pg-b sent to b instead.
//!
//! Each line: the request's time until its answer, its status, and for the
//! switchover its state. `PUT /v1/sync`'s first statement (the count of
//! sessions waiting for the standby) uses the 60 s SQL budget, so a dead
//! connection that is not replaced costs those 60 s there.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgwarden_testkit::{poll_until, Host, Testbed, TestbedOptions};

const USAGE: &str = "\
usage: pgwarden-silent-drop [LABEL=PGWARDEN_BINARY]...

  Each argument is a label and a pgwarden binary (default: this build's,
  target/release/pgwarden, as `after`). For each, a fresh testbed; prints one
  line per scenario.";

fn main() -> std::process::ExitCode {
    pgwarden_bench::bench_main("pgwarden-silent-drop", USAGE, parse_args, run)
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Vec<(String, PathBuf)>>> {
    let mut out = Vec::new();
    for a in args {
        if a == "--help" || a == "-h" {
            return Ok(None);
        }
        let Some((label, bin)) = a.split_once('=') else {
            bail!("expected LABEL=PGWARDEN_BINARY, got {a:?}");
        };
        out.push((label.to_owned(), PathBuf::from(bin)));
    }
    if out.is_empty() {
        let exe = std::env::current_exe()?;
        out.push((
            "after".into(),
            exe.parent().context("bench directory")?.join("pgwarden"),
        ));
    }
    Ok(Some(out))
}

/// One HTTP/1.1 request from host c (Connection: close): status and time.
fn request(
    tb: &Testbed,
    method: &str,
    to: Host,
    path: &str,
    body: &str,
) -> Result<(u16, String, Duration)> {
    let url = tb.api_url(to);
    let addr = url.trim_start_matches("http://").to_owned();
    let token = tb.api_token().to_owned();
    let (method, path, body) = (method.to_owned(), path.to_owned(), body.to_owned());
    tb.in_host(Host::C, move || {
        let started = Instant::now();
        let mut s = TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let took = started.elapsed();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((status, body, took))
    })
}

/// b's daemon's admin connections to pg-a, by client port.
fn admin_ports(tb: &Testbed) -> Result<Vec<u16>> {
    Ok(tb
        .psql(
            0,
            "SELECT client_port FROM pg_stat_activity WHERE usename = 'pgwarden' AND client_addr = '192.0.2.2' AND query NOT LIKE '-- The pgwarden probe%'",
        )?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

fn warm(tb: &Testbed) -> Result<Vec<u16>> {
    let (status, body, _) = request(tb, "PUT", Host::B, "/v1/sync", r#"{"mode": "sync"}"#)?;
    if status != 200 {
        bail!("PUT /v1/sync to warm the pool answered {status}: {body}");
    }
    Ok(poll_until(
        Duration::from_secs(10),
        "b's admin connection to pg-a",
        || admin_ports(tb).ok().filter(|p| !p.is_empty()),
    )?)
}

fn line(label: &str, scenario: &str, what: &str, status: u16, took: Duration, note: &str) {
    println!(
        "{label:<8} {scenario:<22} {what:<16} {status:>4} {:>9.3} s  {note}",
        took.as_secs_f64()
    );
}

fn one_binary(label: &str, bin: &PathBuf) -> Result<()> {
    if !bin.is_file() {
        bail!("{} is not a file", bin.display());
    }
    let tb = Testbed::start(TestbedOptions::new(bin)).map_err(|e| anyhow::anyhow!("{e}"))?;
    poll_until(Duration::from_secs(60), "both daemons healthy", || {
        [Host::A, Host::B]
            .iter()
            .all(|h| matches!(request(&tb, "GET", *h, "/health", ""), Ok((200, _, _))))
            .then_some(())
    })?;
    // A control: the same request over healthy connections.
    warm(&tb)?;
    let (s, _, t) = request(&tb, "PUT", Host::B, "/v1/sync", r#"{"mode": "sync"}"#)?;
    line(label, "healthy (control)", "PUT /v1/sync", s, t, "");

    // 1. ended while dropped, then healed.
    let ports = warm(&tb)?;
    let cuts: Vec<_> = ports.iter().map(|p| tb.drop_flow(Host::B, *p)).collect();
    let list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    tb.psql(
        0,
        &format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE client_port IN ({list})"),
    )?;
    poll_until(Duration::from_secs(10), "pg-a's backends to exit", || {
        admin_ports(&tb)
            .ok()
            .filter(|now| now.iter().all(|p| !ports.contains(p)))
    })?;
    drop(cuts);
    let (s, _, t) = request(&tb, "PUT", Host::B, "/v1/sync", r#"{"mode": "sync"}"#)?;
    line(
        label,
        "ended, then healed",
        "PUT /v1/sync",
        s,
        t,
        &format!("{} connection(s)", ports.len()),
    );

    // 2. black-holed.
    let ports = warm(&tb)?;
    let cuts: Vec<_> = ports.iter().map(|p| tb.drop_flow(Host::B, *p)).collect();
    let (s, _, t) = request(&tb, "PUT", Host::B, "/v1/sync", r#"{"mode": "sync"}"#)?;
    drop(cuts);
    line(
        label,
        "black-holed",
        "PUT /v1/sync",
        s,
        t,
        &format!("{} connection(s)", ports.len()),
    );

    // 3. black-holed, a switchover.
    let ports = warm(&tb)?;
    let cuts: Vec<_> = ports.iter().map(|p| tb.drop_flow(Host::B, *p)).collect();
    let (s, body, t) = request(
        &tb,
        "POST",
        Host::B,
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "silent-drop bench"}"#,
    )?;
    drop(cuts);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let slowest = v["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .filter_map(|st| {
                    let ms = |k: &str| {
                        humantime::parse_rfc3339_weak(st[k].as_str()?.trim_end_matches('Z')).ok()
                    };
                    let d = ms("finished_at")?.duration_since(ms("started_at")?).ok()?;
                    Some((d, st["name"].as_str().unwrap_or("?").to_owned()))
                })
                .max()
                .map(|(d, n)| format!("slowest step {n} {:.3} s", d.as_secs_f64()))
                .unwrap_or_default()
        })
        .unwrap_or_default();
    line(
        label,
        "black-holed",
        "switchover",
        s,
        t,
        &format!("{} ({slowest})", v["state"].as_str().unwrap_or("no state")),
    );
    Ok(())
}

fn run(bins: &Vec<(String, PathBuf)>) -> Result<()> {
    println!(
        "{:<8} {:<22} {:<16} {:>4} {:>11}  note",
        "binary", "scenario", "request", "code", "answer in"
    );
    for (label, bin) in bins {
        if pgwarden_bench::interrupted() {
            bail!("interrupted");
        }
        one_binary(label, bin).with_context(|| format!("{label} ({})", bin.display()))?;
    }
    Ok(())
}
