//! HAProxy for real (Debian's `haproxy`), with the shipped
//! `deploy/haproxy/haproxy.cfg`: the file passes `haproxy -c` as shipped,
//! and a copy of it pointed at a test cluster keeps a writer on its write
//! port committing across a switchover, a rejoin and a failover, without
//! losing an acknowledged commit. The write-unavailable window the writer
//! saw is printed (run with `--no-capture`), not asserted: timing bounds
//! flake on a loaded two-core machine.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgwarden_testkit::{free_port, poll_until};
use util::{has_problem, tool, Env, Options};

const WRITER: &str = "lbwriter";
const WRITER_PASSWORD: &str = "lb-writer-test-password";

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/haproxy.cfg")
}

fn haproxy() -> PathBuf {
    tool("haproxy", "haproxy")
}

/// `haproxy -c -f file`: (passed, what it printed).
fn haproxy_check(file: &Path) -> (bool, String) {
    let out = Command::new(haproxy())
        .arg("-c")
        .arg("-f")
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_shipped_config_is_valid_without_warnings() {
    let (ok, text) = haproxy_check(&shipped_config());
    assert!(ok, "haproxy -c refused deploy/haproxy/haproxy.cfg:\n{text}");
    assert!(text.contains("Configuration file is valid"), "{text}");
    assert!(
        !text.contains("WARNING"),
        "haproxy -c warns about the shipped file:\n{text}"
    );
    // What the checks rely on, so an edit that drops it fails here.
    let cfg = std::fs::read_to_string(shipped_config()).unwrap();
    for line in [
        "option httpchk GET /read-write",
        "option httpchk GET /replica",
        "http-check expect status 200",
        "default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions",
    ] {
        assert!(cfg.contains(line), "the shipped file lacks `{line}`");
    }
    assert!(
        !cfg.lines()
            .any(|l| l.contains("httpchk") && l.contains("/health")),
        "/health must not be a check"
    );
}

/// The shipped file with its addresses replaced by the test cluster's, and
/// its privilege settings dropped (they are about the host, not about
/// routing). Every replaced text must be there: an edit of the shipped file
/// that this rendering misses fails here rather than testing something else.
fn render(env: &Env, write_port: u16, read_port: u16) -> String {
    let mut cfg = std::fs::read_to_string(shipped_config()).unwrap();
    let mut replace = |from: &str, to: &str, times: usize| {
        assert_eq!(
            cfg.matches(from).count(),
            times,
            "`{from}` in deploy/haproxy/haproxy.cfg"
        );
        cfg = cfg.replace(from, to);
    };
    replace("bind *:5000", &format!("bind 127.0.0.1:{write_port}"), 1);
    replace("bind *:5001", &format!("bind 127.0.0.1:{read_port}"), 1);
    for (i, shipped_ip) in ["10.0.0.1", "10.0.0.2"].iter().enumerate() {
        let n = env.cluster.node(i);
        replace(
            &format!("server {} {shipped_ip}:5432 check port 8008", n.name),
            &format!(
                "server {} {}:{} check port {}",
                n.name, n.host, n.port, env.layout.api_ports[i]
            ),
            2,
        );
    }
    // Logs to the test's file (haproxy runs in the foreground).
    replace("log /dev/log local0", "log stdout format raw local0", 1);
    for line in [
        "    chroot /var/lib/haproxy\n",
        "    user haproxy\n",
        "    group haproxy\n",
    ] {
        replace(line, "", 1);
    }
    cfg
}

/// `haproxy -db` in the foreground; killed on drop.
struct Haproxy {
    child: Child,
    log: PathBuf,
}

impl Haproxy {
    fn start(cfg: &Path) -> Haproxy {
        let log = cfg.with_extension("log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(haproxy())
            .arg("-db")
            .arg("-f")
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start haproxy");
        Haproxy { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sql` through a HAProxy port as the writer role, in a new session:
/// Ok(output) when psql exited 0.
fn through(psql: &Path, port: u16, sql: &str) -> Result<String, String> {
    let out = Command::new(psql)
        .args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1"])
        .arg(format!(
            "host=127.0.0.1 port={port} user={WRITER} dbname=postgres connect_timeout=10"
        ))
        .arg("-c")
        .arg(sql)
        .env("PGPASSWORD", WRITER_PASSWORD)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// One INSERT the writer tried.
#[derive(Clone, Debug)]
struct Attempt {
    id: i64,
    ended: Instant,
    acked: bool,
    error: String,
}

/// A client writing through the write port: one short psql session per
/// numbered row, as an application reconnecting after every error would.
struct Writer {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(psql: PathBuf, port: u16) -> Writer {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (attempts.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut id = 0;
            while !s.load(Ordering::Relaxed) {
                id += 1;
                let r = through(
                    &psql,
                    port,
                    &format!("INSERT INTO lb_writes (id) VALUES ({id})"),
                );
                a.lock().unwrap().push(Attempt {
                    id,
                    ended: Instant::now(),
                    acked: r.is_ok(),
                    error: r.err().unwrap_or_default(),
                });
                // The writer's pace (at most ~50 attempts a second), so a
                // port with no server behind it does not become a fork
                // storm that slows the failover it measures. It waits for
                // nothing.
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Writer {
            attempts,
            stop,
            thread: Some(thread),
        }
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }

    /// Waits for a row acknowledged after `after`.
    fn wait_ack_after(&self, after: Instant, what: &str) -> Attempt {
        poll_until(Duration::from_secs(60), what, || {
            self.attempts()
                .into_iter()
                .find(|a| a.acked && a.ended > after)
        })
        .unwrap_or_else(|e| {
            let last: Vec<_> = self.attempts().into_iter().rev().take(5).collect();
            panic!("{e}\nthe writer's last attempts: {last:#?}")
        })
    }

    fn finish(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.attempts()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the writer saw around one operation: from its last commit before
/// `from` to its first commit after `to`, the longest time between two
/// acknowledged commits, and how many attempts failed meanwhile.
fn report(what: &str, attempts: &[Attempt], from: Instant, to: Instant, first_after: &Attempt) {
    let acks: Vec<&Attempt> = attempts.iter().filter(|a| a.acked).collect();
    let start = acks
        .iter()
        .rev()
        .find(|a| a.ended <= from)
        .map_or(from, |a| a.ended);
    let end = first_after.ended;
    let in_window: Vec<Instant> = acks
        .iter()
        .map(|a| a.ended)
        .filter(|t| *t >= start && *t <= end)
        .collect();
    let longest = in_window
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let failed: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| !a.acked && a.ended >= start && a.ended <= end)
        .collect();
    let errors: std::collections::BTreeSet<String> = failed
        .iter()
        .map(|a| a.error.lines().next().unwrap_or("").to_owned())
        .collect();
    eprintln!(
        "haproxy write window, {what}: longest gap between acknowledged commits {:.2}s; \
         {} failed attempt(s); operation took {:.2}s; first commit {:.2}s after it began \
         (errors seen: {errors:?})",
        longest.as_secs_f64(),
        failed.len(),
        (to - from).as_secs_f64(),
        (end - from).as_secs_f64(),
    );
}

fn server_port(psql: &Path, port: u16) -> Option<u16> {
    through(psql, port, "SELECT inet_server_port()")
        .ok()?
        .parse()
        .ok()
}

/// Waits until the write port leads to node `i`.
fn wait_writes_go_to(env: &Env, psql: &Path, port: u16, i: usize, lb: &Haproxy) {
    let want = env.cluster.node(i).port;
    poll_until(
        Duration::from_secs(30),
        &format!("the write port to lead to {}", env.cluster.node(i).name),
        || (server_port(psql, port) == Some(want)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n--- haproxy log ---\n{}", lb.log_text()));
    assert_eq!(
        through(psql, port, "SELECT pg_is_in_recovery()").as_deref(),
        Ok("f"),
        "the write port leads to a node in recovery"
    );
}

#[test]
fn a_writer_through_haproxy_keeps_committing_across_switchover_rejoin_and_failover() {
    let (env, _app) = Env::start_with_app(Options::default());
    for i in 0..2 {
        env.wait_health(i, "healthy first", env.within_polls(8), |c, _| c == 200);
    }
    env.wait_all_polled();
    let psql = env.cluster.bin_dir().join("psql");
    // The writer is its own role: the fence of an operation ends the
    // application role's sessions and checks none remain, and a writer
    // reconnecting as that role would (rightly) fail the fence.
    env.cluster
        .psql(
            0,
            &format!(
                "CREATE ROLE {WRITER} LOGIN PASSWORD '{WRITER_PASSWORD}'; \
                 CREATE TABLE lb_writes (id bigint PRIMARY KEY, at timestamptz DEFAULT now()); \
                 GRANT SELECT, INSERT ON lb_writes TO {WRITER}"
            ),
        )
        .unwrap();

    let (write_port, read_port) = (free_port(), free_port());
    let cfg = env.cluster.dir().join("haproxy.cfg");
    std::fs::write(&cfg, render(&env, write_port, read_port)).unwrap();
    let (ok, text) = haproxy_check(&cfg);
    assert!(ok, "haproxy -c refused the rendered copy:\n{text}");
    let lb = Haproxy::start(&cfg);
    // At its start HAProxy counts every server up until its first check
    // fails (within `inter`): until then a write may reach the standby,
    // which refuses it. Wait for the checks to have sorted them.
    for server in ["pg-write/pg-b", "pg-read/pg-a"] {
        poll_until(
            Duration::from_secs(15),
            &format!("haproxy to mark {server} down"),
            || {
                lb.log_text()
                    .contains(&format!("Server {server} is DOWN"))
                    .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n--- haproxy log ---\n{}", lb.log_text()));
    }

    // Writes lead to the primary, reads to the standby.
    wait_writes_go_to(&env, &psql, write_port, 0, &lb);
    let standby_port = env.cluster.node(1).port;
    poll_until(
        Duration::from_secs(30),
        "the read port to lead to pg-b",
        || (server_port(&psql, read_port) == Some(standby_port)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n--- haproxy log ---\n{}", lb.log_text()));
    assert_eq!(
        through(&psql, read_port, "SELECT pg_is_in_recovery()").as_deref(),
        Ok("t")
    );

    let writer = Writer::start(psql.clone(), write_port);
    writer.wait_ack_after(Instant::now(), "a first commit through HAProxy");
    let token = env.token();

    // 1. A switchover to pg-b.
    let began = Instant::now();
    let r = env.daemons[0].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "haproxy test"}"#,
        &token,
    );
    let ended = Instant::now();
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    assert_eq!(r.json()["state"], "succeeded", "{}", r.body);
    let first = writer.wait_ack_after(ended, "a commit through HAProxy after the switchover");
    report("switchover", &writer.attempts(), began, ended, &first);
    wait_writes_go_to(&env, &psql, write_port, 1, &lb);

    // 2. pg-a rejoins as the synchronous standby; writes stay on pg-b.
    let began = Instant::now();
    let r = env.daemons[0].post(
        "/v1/rejoin?wait=true",
        r#"{"node": "pg-a", "reason": "haproxy test"}"#,
        &token,
    );
    let ended = Instant::now();
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    assert_eq!(r.json()["state"], "succeeded", "{}", r.body);
    let first = writer.wait_ack_after(ended, "a commit through HAProxy after the rejoin");
    report("rejoin", &writer.attempts(), began, ended, &first);
    wait_writes_go_to(&env, &psql, write_port, 1, &lb);
    for i in 0..2 {
        env.wait_health(
            i,
            "healthy after the rejoin",
            env.within_polls(8),
            |c, _| c == 200,
        );
    }
    env.wait_all_polled();
    // The commits wait for pg-a again: a failover to it loses none of them.
    writer.wait_ack_after(Instant::now(), "a synchronous commit on pg-b");

    // 3. pg-b's postmaster dies; failover to pg-a.
    let began = Instant::now();
    env.cluster.kill_postmaster(1).unwrap();
    env.wait_health(0, "pg-b down", env.within_polls(8), |_, h| {
        has_problem(h, "node_down", Some("pg-b"))
    });
    let r = env.daemons[0].post(
        "/v1/failover?wait=true",
        r#"{"target": "pg-a", "reason": "haproxy test: pg-b crashed"}"#,
        &token,
    );
    let ended = Instant::now();
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    assert_eq!(r.json()["state"], "succeeded", "{}", r.body);
    let first = writer.wait_ack_after(ended, "a commit through HAProxy after the failover");
    report(
        "failover (from the kill)",
        &writer.attempts(),
        began,
        ended,
        &first,
    );
    wait_writes_go_to(&env, &psql, write_port, 0, &lb);
    writer.wait_ack_after(Instant::now(), "another commit on pg-a");

    // Every acknowledged row is on the final primary.
    let attempts = writer.finish();
    let acked: Vec<i64> = attempts.iter().filter(|a| a.acked).map(|a| a.id).collect();
    let present: std::collections::HashSet<i64> = env
        .cluster
        .psql(0, "SELECT id FROM lb_writes")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let lost: Vec<i64> = acked
        .iter()
        .filter(|id| !present.contains(id))
        .copied()
        .collect();
    assert_eq!(
        lost,
        Vec::<i64>::new(),
        "acknowledged commits missing on pg-a ({} acknowledged, {} attempts)",
        acked.len(),
        attempts.len()
    );
    eprintln!(
        "haproxy writer: {} attempts, {} acknowledged, all of them on pg-a",
        attempts.len(),
        acked.len()
    );
    // HAProxy saw and logged each change of primary: pg-b up for writes
    // after the switchover, pg-a after the failover (it was down since the
    // switchover, and stayed down as a standby after the rejoin).
    let log = lb.log_text();
    for server in ["pg-write/pg-a", "pg-write/pg-b"] {
        for change in ["UP", "DOWN"] {
            assert!(
                log.contains(&format!("Server {server} is {change}")),
                "no `{server} is {change}` in the haproxy log:\n{log}"
            );
        }
    }
}
