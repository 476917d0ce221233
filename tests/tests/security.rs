//! Security of the HTTP API and of what pgwarden writes down: who may change
//! the cluster, what a hostile or broken client can do to the daemon, and
//! where secrets must never show up. Real clusters and the real `pgwarden`
//! binary; every refusal is checked from the outside (status, JSON body,
//! audit log, the cluster itself).
//!
//! | Case | Expected |
//! |---|---|
//! | read-only routes (`/`, `/metrics`, `/livez`, `/health`, `/primary`, `/replica`, `/v1/status`, `/v1/operations`, `/v1/audit`) without a token, or with a wrong one | answered (200; 503 from the role check of the other role) |
//! | every mutating route without `Authorization` | 401 `unauthorized`; nothing happens; audited as `anonymous` |
//! | every mutating route with a wrong token, or the token plus one character | 403 `forbidden`; nothing happens; audited as `token:<hash>` |
//! | every mutating route with `Basic` credentials holding the token | 401 (only `Bearer` counts); nothing happens; audited |
//! | every mutating route with `Bearer ` and an empty token | 401 (the parser trims the value to `Bearer`); nothing happens; audited |
//! | the same routes with the token and harmless bodies (dry runs, lock + unlock, unknown ids) | 200 / 404: the table hits real routes |
//! | a wrong method on a mutating route (GET /v1/failover, POST /v1/sync...) | without a token 401; with it 405 `method_not_allowed` with `Allow`, audited; nothing happens |
//! | a body of exactly 64 KiB (a dry run) | processed (200); its audit entry keeps a 512-byte preview |
//! | a body of 64 KiB + 1, by Content-Length or chunked | 413 `too_large`; the daemon keeps serving |
//! | Content-Length 100, 10 bytes sent, then nothing | 408 `timeout` after BODY_TIMEOUT (10 s), not before; `/livez` answers meanwhile |
//! | invalid JSON or not UTF-8, unknown or duplicate fields, wrong types, bad values, 30,000 nested arrays | 400 `bad_request` naming the problem; audited; nothing happens |
//! | 10,000 malformed requests over raw TCP from 4 threads (garbage, truncated lines, bad or huge or too many headers, bad UTF-8 paths, bad JSON, wrong tokens, empty connections) | each answered 400/403/431 or closed, never a 5xx or a hang; same PID; RSS < +64 MiB; fds back to the start; the audit log parses and holds each audited one |
//! | state_dir, operations/, audit.log, journal, database.cfg's backup | 0700 / 0600 |
//! | audit.log chmod 0644, state_dir and operations/ 0755, daemon restarted | 0600 / 0700 again |
//! | the token, the monitor or the replication password pasted into a body (plain or \u-escaped), a JSON key, the path (plain or %-encoded), the query | 400, not processed, never echoed; masked `***` in the audit log |
//! | the token in the path of a read-only route | 404 `no operation ***`, never echoed |
//! | after all that and a real switchover with the application: every answer, both daemons' logs and command lines, every file under `<cluster>/pgwarden/`, `pgwarden status` / `operations` / `audit` | none holds the API token, the monitor, replication or application password |
//! | 300 clients stalled in their request head, the daemon limited to 256 fds | each disconnected after HEADER_READ_TIMEOUT (10 s); `/health` answers again; SIGTERM is not held up by a stalled client |

mod util;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pgwarden_testkit::{poll_until, state_dir, Secret};
use util::{http, mode, pgwarden_bin, Daemon, Env, Options, Response};

/// The daemon's MAX_BODY (crates/pgwarden-daemon/src/http/api.rs).
const MAX_BODY: usize = 64 * 1024;
/// The daemon's BODY_TIMEOUT.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// An id no journal holds.
const NO_SUCH_OP: &str = "20260101T000000Z-switchover-000000";

/// Every route behind the API's `guard` (crates/pgwarden-daemon/src/http/api.rs)
/// as (method, path, a body that would do something if accepted). Sent to
/// the daemon beside the primary: a `node/stop` that got through would stop
/// pg-a, a `sync` would release synchronous replication, a `rejoin` would
/// rebuild pg-b, a `failover` would promote it.
#[rustfmt::skip]
const MUTATING: &[(&str, &str, &str)] = &[
    ("POST", "/v1/failover", r#"{"target": "pg-b", "reason": "security test", "force": true}"#),
    ("POST", "/v1/switchover", r#"{"target": "pg-b", "reason": "security test"}"#),
    ("POST", "/v1/operations/20260101T000000Z-switchover-000000/resume", ""),
    ("POST", "/v1/operations/20260101T000000Z-switchover-000000/abort", ""),
    ("POST", "/v1/node/stop", ""),
    ("POST", "/v1/node/application/stop", ""),
    ("POST", "/v1/node/application/config", r#"{"operation": "security-test", "host": "10.9.9.9", "port": 1}"#),
    ("POST", "/v1/node/pgbouncer/pause", ""),
    ("POST", "/v1/node/pgbouncer/repoint", r#"{"action": "repoint", "operation": "security-test", "host": "10.9.9.9", "port": 1}"#),
    ("PUT", "/v1/sync", r#"{"mode": "async", "force": true}"#),
    ("POST", "/v1/rejoin", r#"{"node": "pg-b", "method": "basebackup", "force": true}"#),
    ("POST", "/v1/internal/lock", r#"{"holder": "pg-b", "operation_id": "security-test"}"#),
    ("POST", "/v1/internal/unlock", r#"{"operation_id": "security-test"}"#),
];

/// Bodies a route does not take, with the token: (method, path, body, what
/// the 400's message must name).
#[rustfmt::skip]
const BAD_BODIES: &[(&str, &str, &str, &str)] = &[
    ("POST", "/v1/switchover", r#"{"target": "pg-b","#, "EOF while parsing a value at line 1 column 18"),
    ("POST", "/v1/switchover", "", "EOF while parsing a value"),
    ("POST", "/v1/switchover", "x=pg-b", "expected value at line 1 column 1"),
    ("POST", "/v1/switchover", r#""pg-b""#, r#"invalid type: string "pg-b""#),
    ("POST", "/v1/failover", r#"{"target": "pg-b", "dryrun": true}"#, "unknown field `dryrun`"),
    ("POST", "/v1/failover", r#"{"target": "pg-b", "force": "yes"}"#, "expected a boolean"),
    ("POST", "/v1/switchover", r#"{"target": 2}"#, "invalid type: integer `2`, expected a string"),
    ("POST", "/v1/switchover", r#"{"reason": "x"}"#, "missing field `target`"),
    ("POST", "/v1/switchover", r#"{"target": "pg-b", "target": "pg-a"}"#, "duplicate field `target`"),
    ("POST", "/v1/switchover", r#"{"target": "  "}"#, "`target` must name the node to promote"),
    ("PUT", "/v1/sync", r#"{"mode": "semi"}"#, "`mode` is `sync` or `async`, not `semi`"),
    ("PUT", "/v1/sync", r#"{"mode": "async", "now": true}"#, "unknown field `now`"),
    ("POST", "/v1/rejoin", r#"{"node": "pg-z"}"#, "`node` pg-z is not a node of this cluster"),
    ("POST", "/v1/rejoin", r#"{"node": "pg-b", "method": "magic"}"#, "`method` is auto, rewind or basebackup, not `magic`"),
    ("POST", "/v1/internal/lock", r#"{"holder": "pg-b"}"#, "missing field `operation_id`"),
];

// ---- small helpers ----------------------------------------------------------

/// `host:port` of a daemon.
fn addr(d: &Daemon) -> String {
    d.url.trim_start_matches("http://").to_owned()
}

fn request(d: &Daemon, method: &str, path: &str, body: &str, auth: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
    http(method, &format!("{}{path}", d.url), Some(body), &headers)
}

fn json_of(r: &Response, case: &str) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| {
        panic!(
            "{case}: the answer is not JSON ({e}): {} {}",
            r.status, r.body
        )
    })
}

/// Asserts the error shape `{"error": code, "message": "..."}` and returns the message.
fn assert_error(r: &Response, status: u16, code: &str, case: &str) -> String {
    assert_eq!(r.status, status, "{case}: status; body: {}", r.body);
    let v = json_of(r, case);
    assert_eq!(v["error"], code, "{case}: error code; body: {}", r.body);
    let msg = v["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        msg.len() > 10,
        "{case}: a message that says something: {}",
        r.body
    );
    msg
}

/// The last `n` audit entries through the API, oldest first.
fn audit_tail(d: &Daemon, n: usize) -> Vec<serde_json::Value> {
    let r = d.get(&format!("/v1/audit?limit={n}"));
    assert_eq!(r.status, 200, "GET /v1/audit: {}", r.body);
    r.json()["entries"].as_array().expect("entries").clone()
}

/// Whether the audit tail holds an entry for this request and status.
fn audited(d: &Daemon, method: &str, endpoint: &str, status: u16) -> bool {
    audit_tail(d, 200)
        .iter()
        .any(|e| e["method"] == method && e["endpoint"] == endpoint && e["status"] == status)
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// A field of /proc/<pid>/status, in its unit (kB for VmRSS).
fn proc_status(pid: i32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e} (the daemon is gone?)"));
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

fn rss_kib(pid: i32) -> u64 {
    proc_status(pid, "VmRSS")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Standard base64 (RFC 4648, with padding), for a Basic header.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What a raw TCP exchange ended with.
#[derive(Debug)]
struct Raw {
    /// The status of the answer, when one came.
    status: Option<u16>,
    /// `answered`, `closed` (EOF, no answer), `reset`, `timeout`, `connect`.
    outcome: &'static str,
    text: String,
}

/// Sends `bytes` on a fresh connection (then half-closes when `eof`) and
/// reads until the daemon closes or `timeout` passes.
fn exchange(addr: &str, bytes: &[u8], eof: bool, timeout: Duration) -> Raw {
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            return Raw {
                status: None,
                outcome: "connect",
                text: e.to_string(),
            }
        }
    };
    s.set_read_timeout(Some(timeout)).unwrap();
    // A daemon that answers early (413, 431) and closes may reset the rest
    // of a long write: read what it said anyway.
    let _ = s.write_all(bytes);
    if eof {
        let _ = s.shutdown(Shutdown::Write);
    }
    read_answer(&mut s)
}

fn read_answer(s: &mut TcpStream) -> Raw {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break Some("timeout")
            }
            Err(_) => break Some("reset"),
        }
    };
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok());
    let outcome = match (status, end) {
        (_, Some("timeout")) => "timeout",
        (Some(_), _) => "answered",
        (None, Some(e)) => e,
        (None, None) => "closed",
    };
    Raw {
        status,
        outcome,
        text,
    }
}

fn body_of(raw: &Raw) -> &str {
    raw.text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
}

// ---- what "nothing happened" means ----------------------------------------

/// The cluster as the test found it: pg-a the primary with its synchronous
/// standby, no operation in either journal, no peer lock, /health 200.
fn assert_untouched(env: &Env, case: &str) {
    for (i, d) in env.daemons.iter().enumerate() {
        let ops = d.get("/v1/operations");
        assert_eq!(ops.status, 200, "{case}: GET /v1/operations on daemon {i}");
        assert_eq!(
            ops.json()["operations"],
            serde_json::json!([]),
            "{case}: no operation may have started (daemon {i})"
        );
        let lock = state_dir(&env.cluster, i).join("lock.json");
        assert!(
            !lock.exists(),
            "{case}: no peer lock may be held ({})",
            lock.display()
        );
    }
    let status = env.daemons[0].get("/v1/status").json();
    assert_eq!(
        status["primary"], "pg-a",
        "{case}: pg-a is still the primary"
    );
    let primary = env
        .cluster
        .psql(
            0,
            "SELECT pg_is_in_recovery()::text || ' ' || current_setting('synchronous_standby_names') \
             || ' ' || (SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync')",
        )
        .unwrap_or_else(|e| panic!("{case}: pg-a must still run and answer: {e}"));
    assert_eq!(
        primary, "false inmanta 1",
        "{case}: pg-a a writable primary with `inmanta` as its synchronous standby"
    );
    assert_eq!(
        env.cluster
            .psql(1, "SELECT pg_is_in_recovery()")
            .ok()
            .as_deref(),
        Some("t"),
        "{case}: pg-b still a standby"
    );
    let h = env.daemons[0].get("/health");
    assert_eq!(h.status, 200, "{case}: /health still 200: {}", h.body);
}

// ---- test 1-3: refusals, bodies, abuse -------------------------------------

#[test]
fn the_api_refuses_unauthenticated_oversized_stalled_and_malformed_requests_and_survives_abuse() {
    let env = Env::start();
    for i in 0..2 {
        env.wait_health(i, "healthy first", env.within_polls(8), |c, _| c == 200);
    }
    assert_untouched(&env, "at start");
    check_read_only_routes(&env);
    check_auth_table(&env);
    check_wrong_methods(&env);
    check_bodies(&env);
    check_abuse(&env);
    assert_untouched(&env, "at the end");
}

/// Reads never need a token (a wrong one is ignored too).
fn check_read_only_routes(env: &Env) {
    for (i, d) in env.daemons.iter().enumerate() {
        let (primary, replica) = if i == 0 { (200, 503) } else { (503, 200) };
        let routes = [
            ("/", 200),
            ("/metrics", 200),
            ("/livez", 200),
            ("/health", 200),
            ("/primary", primary),
            ("/replica", replica),
            ("/v1/status", 200),
            ("/v1/operations", 200),
            ("/v1/audit", 200),
            ("/v1/audit?limit=5", 200),
        ];
        for (path, want) in routes {
            for auth in [None, Some("Bearer not-the-token")] {
                let case = format!("GET {path} on daemon {i} with auth {auth:?}");
                let r = request(d, "GET", path, "", auth);
                assert_eq!(r.status, want, "{case}: {}", r.body);
                if path != "/" && path != "/metrics" {
                    json_of(&r, &case);
                }
            }
        }
        let case = format!("GET /v1/operations/{NO_SUCH_OP} on daemon {i}");
        assert_error(
            &d.get(&format!("/v1/operations/{NO_SUCH_OP}")),
            404,
            "not_found",
            &case,
        );
    }
    assert!(env.daemons[0]
        .metrics()
        .contains("pgwarden_cluster_healthy"));
}

/// Every mutating route, with every way of not presenting the token.
fn check_auth_table(env: &Env) {
    let d = &env.daemons[0];
    let token = env.token();
    let wrong = format!("Bearer {}", "0123456789abcdef".repeat(3));
    let longer = format!("Bearer {token}0");
    let basic = format!("Basic {}", base64(format!("pgwarden:{token}").as_bytes()));
    // (case, Authorization header, status, error code, caller in the audit)
    #[rustfmt::skip]
    let cases: [(&str, Option<&str>, u16, &str, &str); 5] = [
        ("no Authorization header", None, 401, "unauthorized", "anonymous"),
        ("a wrong token", Some(&wrong), 403, "forbidden", "token:"),
        ("the token and one more character", Some(&longer), 403, "forbidden", "token:"),
        ("Basic credentials holding the token", Some(&basic), 401, "unauthorized", "anonymous"),
        // The HTTP parser trims the trailing space: `Bearer` alone is no
        // Bearer credential at all.
        ("`Bearer ` with an empty token", Some("Bearer "), 401, "unauthorized", "anonymous"),
    ];
    for &(method, path, body) in MUTATING {
        for (what, auth, status, code, caller) in cases {
            let case = format!("{method} {path} with {what}");
            let r = request(d, method, path, body, auth);
            let msg = assert_error(&r, status, code, &case);
            assert!(
                !msg.contains(&token),
                "{case}: the message echoes the token"
            );
            let last = audit_tail(d, 1);
            let e = last
                .last()
                .unwrap_or_else(|| panic!("{case}: no audit entry"));
            assert_eq!(
                (
                    e["method"].as_str(),
                    e["endpoint"].as_str(),
                    e["status"].as_u64()
                ),
                (Some(method), Some(path), Some(status as u64)),
                "{case}: the refusal is the last audit entry: {e}"
            );
            assert!(
                e["caller"].as_str().unwrap_or_default().starts_with(caller),
                "{case}: audited caller {} (want {caller}...)",
                e["caller"]
            );
            assert!(
                e["result"].as_str().unwrap_or_default().starts_with(code),
                "{case}: audited result {}",
                e["result"]
            );
            assert_untouched(env, &case);
        }
    }
    // The same routes with the token are real and answer: the refusals
    // above are the token's doing, not a missing route.
    let bearer = format!("Bearer {token}");
    let with_token =
        |method: &str, path: &str, body: &str| request(d, method, path, body, Some(&bearer));
    for path in ["/v1/failover", "/v1/switchover"] {
        let r = with_token("POST", path, r#"{"target": "pg-b", "dry_run": true}"#);
        assert_eq!(
            r.status, 200,
            "dry run of {path} with the token: {}",
            r.body
        );
        assert!(
            r.json()["checks"].is_array(),
            "dry run of {path}: {}",
            r.body
        );
    }
    for action in ["resume", "abort"] {
        let path = format!("/v1/operations/{NO_SUCH_OP}/{action}");
        assert_error(&with_token("POST", &path, ""), 404, "not_found", &path);
    }
    let r = with_token("POST", "/v1/node/reboot", "");
    assert_error(&r, 404, "not_found", "POST /v1/node/reboot with the token");
    // No proxy.pgbouncer in this config: the route is there, and says so.
    let r = with_token("POST", "/v1/node/pgbouncer/pause", "");
    assert_error(
        &r,
        409,
        "conflict",
        "POST /v1/node/pgbouncer/pause with the token",
    );
    let r = with_token(
        "POST",
        "/v1/internal/lock",
        r#"{"holder": "pg-b", "operation_id": "security-test"}"#,
    );
    assert_eq!(r.status, 200, "lock with the token: {}", r.body);
    assert!(state_dir(&env.cluster, 0).join("lock.json").exists());
    let r = with_token(
        "POST",
        "/v1/internal/unlock",
        r#"{"operation_id": "security-test"}"#,
    );
    assert_eq!(r.status, 200, "unlock with the token: {}", r.body);
    assert_untouched(env, "after the requests with the token");
}

/// A wrong method on a mutating route: the token is checked first (401
/// without it, audited); with it, the router's 405 with `Allow`, audited
/// too. Nothing happens either way.
fn check_wrong_methods(env: &Env) {
    let d = &env.daemons[0];
    let bearer = format!("Bearer {}", env.token());
    let cases = [
        ("GET", "/v1/failover", "POST"),
        ("GET", "/v1/switchover", "POST"),
        ("PUT", "/v1/failover", "POST"),
        ("DELETE", "/v1/rejoin", "POST"),
        ("GET", "/v1/node/stop", "POST"),
        ("GET", "/v1/operations/x/abort", "POST"),
        ("GET", "/v1/sync", "PUT"),
        ("POST", "/v1/sync", "PUT"),
        ("GET", "/v1/internal/lock", "POST"),
    ];
    let body = r#"{"target": "pg-b", "mode": "async"}"#;
    for (method, path, allowed) in cases {
        let case = format!("{method} {path} without a token");
        let r = request(d, method, path, body, None);
        assert_error(&r, 401, "unauthorized", &case);
        assert!(audited(d, method, path, 401), "{case}: audited");
        assert_untouched(env, &case);

        let case = format!("{method} {path} with the token");
        let r = request(d, method, path, body, Some(&bearer));
        assert_eq!(r.status, 405, "{case}: {} {}", r.headers, r.body);
        let allow = r
            .headers
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("allow:")
                    .map(|v| v.trim().to_ascii_uppercase())
            })
            .unwrap_or_default();
        assert_eq!(allow, allowed, "{case}: the Allow header\n{}", r.headers);
        let e = audit_tail(d, 1).pop().unwrap();
        assert_eq!(
            (
                e["method"].as_str(),
                e["endpoint"].as_str(),
                e["status"].as_u64()
            ),
            (Some(method), Some(path), Some(405)),
            "{case}: audited: {e}"
        );
        assert_eq!(
            r.json()["error"],
            "method_not_allowed",
            "{case}: the error shape of every answer"
        );
        assert!(
            e["result"]
                .as_str()
                .is_some_and(|r| r.starts_with("method_not_allowed: ")),
            "{case}: audited result: {e}"
        );
        assert_untouched(env, &case);
    }
}

/// Size and time caps on bodies, and what a bad body is told.
fn check_bodies(env: &Env) {
    let d = &env.daemons[0];
    let a = addr(d);
    let token = env.token();
    let bearer = format!("Bearer {token}");

    // A client that announces 100 bytes, sends 10 and stalls: it gets 408
    // after BODY_TIMEOUT while everyone else is served. Its connection is
    // opened first; the checks below run while it waits.
    let (tx, rx) = mpsc::channel();
    let stall_head = format!(
        "POST /v1/switchover?stalled HTTP/1.1\r\nHost: {a}\r\nAuthorization: {bearer}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"target\":"
    );
    assert_eq!(
        stall_head.len() - stall_head.find("\r\n\r\n").unwrap() - 4,
        10
    );
    let mut stalled = TcpStream::connect(&a).unwrap();
    stalled
        .set_read_timeout(Some(BODY_TIMEOUT + Duration::from_secs(20)))
        .unwrap();
    stalled.write_all(stall_head.as_bytes()).unwrap();
    let sent_at = Instant::now();
    let staller = std::thread::spawn(move || {
        let r = read_answer(&mut stalled);
        // The receiver is gone only when the test already failed.
        let _ = tx.send(sent_at.elapsed());
        r
    });
    // Served while the client stalls: answered, and the client still waits.
    let r = d.get("/livez");
    assert_eq!(r.status, 200, "/livez while a client stalls: {}", r.body);
    let early = rx.try_recv();
    assert!(
        matches!(early, Err(mpsc::TryRecvError::Empty)),
        "the first /livez was answered only after the stalled client was: {early:?}"
    );

    // Exactly MAX_BODY: a dry run, processed.
    let head = r#"{"target": "pg-b", "dry_run": true, "reason": ""#;
    let pad = MAX_BODY - head.len() - 2;
    let at_cap = format!("{head}{}\"}}", "x".repeat(pad));
    assert_eq!(at_cap.len(), MAX_BODY);
    let r = request(d, "POST", "/v1/switchover?at-cap", &at_cap, Some(&bearer));
    assert_eq!(
        r.status, 200,
        "a body of exactly {MAX_BODY} bytes: {}",
        r.body
    );
    let e = audit_tail(d, 1).pop().unwrap();
    assert_eq!(e["endpoint"], "/v1/switchover?at-cap");
    let kept = e["body"].as_str().unwrap_or_default();
    assert!(
        kept.len() < 1024 && kept.ends_with(&format!("({MAX_BODY} bytes)")),
        "the audit keeps a preview of a large body, not all of it: {} bytes: {}",
        kept.len(),
        &kept[kept.len().saturating_sub(80)..]
    );

    // One byte more: 413, announced or chunked.
    let over = format!("{head}{}\"}}", "x".repeat(pad + 1));
    let r = request(d, "POST", "/v1/switchover?over-cap", &over, Some(&bearer));
    let msg = assert_error(&r, 413, "too_large", "Content-Length over the cap");
    assert!(msg.contains(&MAX_BODY.to_string()), "{msg}");
    assert!(audited(d, "POST", "/v1/switchover?over-cap", 413));

    let chunked = |body: &str, tag: &str| {
        let mut req = format!(
            "POST /v1/switchover?{tag} HTTP/1.1\r\nHost: {a}\r\nAuthorization: {bearer}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        for c in body.as_bytes().chunks(8000) {
            req.push_str(&format!(
                "{:x}\r\n{}\r\n",
                c.len(),
                std::str::from_utf8(c).unwrap()
            ));
        }
        req.push_str("0\r\n\r\n");
        exchange(&a, req.as_bytes(), false, Duration::from_secs(10))
    };
    let small = chunked(r#"{"target": "pg-b", "dry_run": true}"#, "chunked-small");
    assert_eq!(
        small.status,
        Some(200),
        "a small chunked dry run: {small:?}"
    );
    let big = chunked(&over, "chunked-over-cap");
    assert_eq!(big.status, Some(413), "chunked over the cap: {}", big.text);
    let v: serde_json::Value = serde_json::from_str(body_of(&big)).unwrap();
    assert_eq!(v["error"], "too_large", "{}", big.text);
    assert!(audited(d, "POST", "/v1/switchover?chunked-over-cap", 413));
    assert_eq!(d.get("/livez").status, 200, "served after the large bodies");

    // Bodies that are not what the route takes: 400, naming the problem.
    // 30,000 nested arrays (60 KB): the guard parses every body as JSON to
    // look for secrets; serde_json's depth limit keeps that off the stack.
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let nested = (
        "POST",
        "/v1/switchover",
        deep.as_str(),
        "invalid type: sequence",
    );
    for &(method, path, body, names) in BAD_BODIES.iter().chain([&nested]) {
        let case = format!("{method} {path} with body {:.60}", body);
        let r = request(d, method, path, body, Some(&bearer));
        let msg = assert_error(&r, 400, "bad_request", &case);
        assert!(
            msg.contains(names),
            "{case}: the message names the problem ({names}): {msg}"
        );
        assert!(audited(d, method, path, 400), "{case}: audited");
    }
    // Not UTF-8 at all.
    let req = format!(
        "POST /v1/switchover HTTP/1.1\r\nHost: {a}\r\nAuthorization: {bearer}\r\n\
         Content-Length: 4\r\nConnection: close\r\n\r\n"
    );
    let raw = exchange(
        &a,
        &[req.as_bytes(), b"\xff\xfe\x00\x01"].concat(),
        false,
        Duration::from_secs(10),
    );
    assert_eq!(raw.status, Some(400), "a binary body: {}", raw.text);
    assert!(
        body_of(&raw).contains("expected value"),
        "a binary body: {}",
        raw.text
    );
    assert_untouched(env, "after the bad bodies");

    // The stalled client: /livez keeps answering until it is told 408. An
    // answer counts as given while the client stalled when the client was
    // seen still waiting after it: an ordering, not a wall-clock bound (on a
    // loaded two-core machine any one request may be slow). The checks
    // above may have taken most of BODY_TIMEOUT, so the /livez asked right
    // after the stall began (checked there) is the one sure to count.
    let mut livez = 0;
    let mut confirmed = 1;
    let mut slowest = Duration::ZERO;
    let elapsed = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(elapsed) => break elapsed,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Every answer so far came before this look at the client.
                confirmed = 1 + livez;
                let t = Instant::now();
                let r = d.get("/livez");
                slowest = slowest.max(t.elapsed());
                assert_eq!(r.status, 200, "/livez while a client stalls: {}", r.body);
                livez += 1;
            }
            Err(e) => panic!("the stalled client's thread: {e}"),
        }
    };
    let raw = staller.join().unwrap();
    println!(
        "stalled body: answered {:?} after {elapsed:.2?}; /livez answered {livez} times \
         meanwhile ({confirmed} of them, with the first, surely before it), slowest {slowest:.2?}",
        raw.status
    );
    assert_eq!(raw.status, Some(408), "the stalled client: {raw:?}");
    let v: serde_json::Value = serde_json::from_str(body_of(&raw)).unwrap();
    assert_eq!(v["error"], "timeout", "{}", raw.text);
    assert!(
        v["message"].as_str().unwrap().contains("within 10s"),
        "{}",
        raw.text
    );
    // Not before the promised timeout; how long after is the machine's
    // business (a measurement, for bench/).
    assert!(
        elapsed >= BODY_TIMEOUT - Duration::from_millis(200),
        "408 after {elapsed:?}, promised after {BODY_TIMEOUT:?}"
    );
    assert!(audited(d, "POST", "/v1/switchover?stalled", 408));
}

/// The kinds of malformed traffic, sent round-robin.
const ABUSE_KINDS: [&str; 10] = [
    "garbage bytes",
    "truncated request line",
    "invalid header line",
    "huge header",
    "too many headers",
    "invalid UTF-8 in the path",
    "bad JSON with the token",
    "a wrong token",
    "connect and close",
    "unfinished head",
];

/// One malformed request of `kind` (the n-th of its thread).
fn abuse_bytes(kind: usize, n: usize, a: &str, token: &str) -> (Vec<u8>, bool) {
    match kind {
        0 => {
            // Deterministic noise, NULs and high bytes included.
            let mut x = (n as u64)
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let bytes = (0..256)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (x >> 56) as u8
                })
                .collect();
            (bytes, true)
        }
        1 => (b"POST /v1/fail".to_vec(), true),
        2 => (
            format!("GET /livez HTTP/1.1\r\nHost: {a}\r\nNo colon here\r\n\r\n").into_bytes(),
            false,
        ),
        3 => (
            format!(
                "GET /livez HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
                // Over hyper's ~400 KiB buffer, whatever it reads at once.
                "a".repeat(1024 * 1024)
            )
            .into_bytes(),
            false,
        ),
        4 => {
            let mut r = format!("GET /livez HTTP/1.1\r\nHost: {a}\r\n");
            for i in 0..200 {
                r.push_str(&format!("X-H{i}: v\r\n"));
            }
            r.push_str("\r\n");
            (r.into_bytes(), false)
        }
        5 => (
            [
                b"GET /v1/operations/\xff\xfe\xc3 HTTP/1.1\r\nHost: ".as_slice(),
                a.as_bytes(),
                b"\r\nConnection: close\r\n\r\n",
            ]
            .concat(),
            false,
        ),
        6 => {
            let body = r#"{"target": "pg-b", "reason": "#;
            (
                format!(
                    "POST /v1/switchover?abuse HTTP/1.1\r\nHost: {a}\r\nAuthorization: Bearer {token}\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
                false,
            )
        }
        7 => {
            let body = r#"{"target": "pg-b"}"#;
            (
                format!(
                    "POST /v1/failover?abuse HTTP/1.1\r\nHost: {a}\r\nAuthorization: Bearer wrong-{n}\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
                false,
            )
        }
        8 => (Vec::new(), false),
        _ => (
            format!("GET /livez HTTP/1.1\r\nHost: {a}\r\n").into_bytes(),
            true,
        ),
    }
}

/// Outcomes a kind may end with (anything else fails the test).
fn abuse_allowed(kind: usize, raw: &Raw) -> bool {
    match kind {
        0 => raw.status == Some(400) || matches!(raw.outcome, "closed" | "reset"),
        1 | 9 => raw.status == Some(400) || matches!(raw.outcome, "closed" | "reset"),
        2 | 5 => raw.status == Some(400),
        3 => raw.status == Some(431) || raw.outcome == "reset",
        4 => raw.status == Some(431),
        6 => raw.status == Some(400),
        7 => raw.status == Some(403),
        _ => true,
    }
}

/// 10,000 malformed requests; the daemon must not notice much.
fn check_abuse(env: &Env) {
    const TOTAL: usize = 10_000;
    const THREADS: usize = 4;
    let d = &env.daemons[0];
    let a = addr(d);
    let token = env.token();
    let pid = d.pid();
    let audit_file = state_dir(&env.cluster, 0).join("audit.log");
    let count_abuse = |endpoint: &str| {
        std::fs::read_to_string(&audit_file)
            .unwrap()
            .lines()
            .filter(|l| l.contains(&format!("\"endpoint\":\"{endpoint}\"")))
            .count()
    };
    assert_eq!(count_abuse("/v1/switchover?abuse"), 0);
    let rss_before = rss_kib(pid);
    let fds_before = open_fds(pid);

    let started = Instant::now();
    let results: Vec<BTreeMap<(usize, String), usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (a, token) = (&a, &token);
                s.spawn(move || {
                    let mut seen = BTreeMap::new();
                    for n in (t..TOTAL).step_by(THREADS) {
                        let kind = n % ABUSE_KINDS.len();
                        let (bytes, eof) = abuse_bytes(kind, n, a, token);
                        let raw = if kind == 8 {
                            drop(TcpStream::connect(a.as_str()).expect("connect"));
                            Raw {
                                status: None,
                                outcome: "closed",
                                text: String::new(),
                            }
                        } else {
                            exchange(a, &bytes, eof, Duration::from_secs(10))
                        };
                        assert!(
                            abuse_allowed(kind, &raw),
                            "request {n} ({}): {} {:?}: {:.300}",
                            ABUSE_KINDS[kind],
                            raw.outcome,
                            raw.status,
                            raw.text
                        );
                        let label = raw
                            .status
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| raw.outcome.to_owned());
                        *seen.entry((kind, label)).or_insert(0) += 1;
                    }
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = started.elapsed();
    let mut outcomes: BTreeMap<(usize, String), usize> = BTreeMap::new();
    for m in results {
        for (k, v) in m {
            *outcomes.entry(k).or_insert(0) += v;
        }
    }
    let sent: usize = outcomes.values().sum();
    assert_eq!(sent, TOTAL);
    println!(
        "abuse: {TOTAL} malformed requests in {:.2}s ({THREADS} threads)",
        took.as_secs_f64()
    );
    for ((kind, label), n) in &outcomes {
        println!("  {:<28} {label:>8} x{n}", ABUSE_KINDS[*kind]);
    }

    // Still the same process, alive and serving.
    assert_eq!(d.pid(), pid);
    let state = proc_status(pid, "State");
    assert!(!state.starts_with('Z'), "the daemon is a zombie: {state}");
    assert_eq!(d.get("/livez").status, 200, "/livez after the abuse");
    env.wait_health(
        0,
        "/health 200 after the abuse",
        env.within_polls(4),
        |c, _| c == 200,
    );
    let rss_after = rss_kib(pid);
    let fds_after = poll_until(
        Duration::from_secs(15),
        "the daemon's open fds back near their start value",
        || {
            let n = open_fds(pid);
            (n <= fds_before + 2).then_some(n)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {} open now, {fds_before} before", open_fds(pid)));
    println!(
        "abuse: RSS {rss_before} KiB -> {rss_after} KiB ({:+} KiB); open fds {fds_before} -> {fds_after}",
        rss_after as i64 - rss_before as i64
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // Every audited one is in the log, and the log still parses.
    let per_kind = TOTAL / ABUSE_KINDS.len();
    assert_eq!(
        count_abuse("/v1/switchover?abuse"),
        per_kind,
        "bad JSON with the token audited"
    );
    assert_eq!(
        count_abuse("/v1/failover?abuse"),
        per_kind,
        "wrong tokens audited"
    );
    let text = std::fs::read_to_string(&audit_file).unwrap();
    for (i, line) in text.lines().enumerate() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("audit.log line {}: {e}: {line:.200}", i + 1));
    }
    let r = d.get("/v1/audit?limit=5");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["entries"].as_array().map(Vec::len),
        Some(5),
        "{}",
        r.body
    );
}

// ---- test 4-5: files and secrets --------------------------------------------

/// Everything a user or a file shows, with where it came from.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    fn keep(&mut self, what: impl Into<String>, r: Response) -> Response {
        self.0
            .push((what.into(), format!("{}\r\n\r\n{}", r.headers, r.body)));
        r
    }

    fn text(&mut self, what: impl Into<String>, text: String) {
        self.0.push((what.into(), text));
    }
}

fn cli(seen: &mut Seen, args: &[&str]) -> String {
    cli_exiting(seen, args, &[0])
}

/// [`cli`] for a command whose exit status carries an answer (`status`
/// exits 1 for an unhealthy cluster): any of `codes` is fine.
fn cli_exiting(seen: &mut Seen, args: &[&str], codes: &[i32]) -> String {
    let out = Command::new(pgwarden_bin()).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.code().is_some_and(|c| codes.contains(&c)),
        "pgwarden {}: {:?}\n{text}",
        args.join(" "),
        out.status
    );
    seen.text(format!("pgwarden {}", args.join(" ")), text.clone());
    text
}

/// `s` with every character %-encoded.
fn percent_encoded(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// `s` with its first character as a JSON \u escape.
fn json_escaped(s: &str) -> String {
    let mut c = s.chars();
    let first = c.next().unwrap();
    format!("\\u{:04x}{}", first as u32, c.as_str())
}

#[test]
fn secrets_never_leak_and_state_files_are_private() {
    let (mut env, app) = Env::start_with_app(Options::default());
    env.wait_health(1, "healthy first", env.within_polls(8), |c, _| c == 200);
    let c = env.cluster.credentials().clone();
    let token = env.token();
    #[rustfmt::skip]
    let secrets = [
        ("the API token", token.clone(), Secret::ApiToken),
        ("the monitor password", c.monitor_password.clone(), Secret::MonitorPassword),
        ("the replication password", c.replication_password.clone(), Secret::ReplicationPassword),
        ("the application's password", c.app_password.clone(), Secret::AppPassword),
    ];
    for (name, value, file) in &secrets {
        // Long and random, so finding one as a substring means it leaked.
        assert!(
            value.len() >= 8,
            "{name} is too short for a substring check: {value:?}"
        );
        assert_eq!(
            std::fs::read_to_string(env.cluster.secret_file(*file)).unwrap(),
            *value,
            "{name}: the file the daemon reads"
        );
        for (other, v, _) in &secrets {
            assert!(
                other == name || !v.contains(value.as_str()),
                "{name} inside {other}"
            );
        }
    }
    let d = &env.daemons[1];
    let bearer = format!("Bearer {token}");
    let mut seen = Seen::default();

    // A wrong token, and Basic credentials holding the right one.
    let r = seen.keep(
        "a wrong token",
        request(
            d,
            "POST",
            "/v1/switchover",
            r#"{"target": "pg-b"}"#,
            Some("Bearer 00000000000000000000"),
        ),
    );
    assert_error(&r, 403, "forbidden", "a wrong token");
    let basic = format!("Basic {}", base64(format!(":{token}").as_bytes()));
    let r = seen.keep(
        "Basic",
        request(
            d,
            "POST",
            "/v1/switchover",
            r#"{"target": "pg-b"}"#,
            Some(&basic),
        ),
    );
    assert_error(&r, 401, "unauthorized", "Basic with the token");

    // The configured secrets pasted where no secret belongs: not processed,
    // whatever the spelling, and never echoed.
    for (name, value, _) in &secrets[..3] {
        let pasted: Vec<(String, String, String)> = vec![
            (
                format!("{name} in the reason"),
                "/v1/switchover".into(),
                format!(r#"{{"target": "pg-b", "reason": "{value}"}}"#),
            ),
            (
                format!("{name} \\u-escaped in the reason"),
                "/v1/switchover".into(),
                format!(
                    r#"{{"target": "pg-b", "reason": "{}"}}"#,
                    json_escaped(value)
                ),
            ),
            (
                format!("{name} as a JSON key"),
                "/v1/switchover".into(),
                format!(r#"{{"target": "pg-b", "{value}": 1}}"#),
            ),
            (
                format!("{name} in the path"),
                format!("/v1/operations/{value}/abort"),
                String::new(),
            ),
            (
                format!("{name} %-encoded in the path"),
                format!("/v1/operations/{}/abort", percent_encoded(value)),
                String::new(),
            ),
            (
                format!("{name} %-encoded in a JSON string"),
                "/v1/switchover".into(),
                format!(
                    r#"{{"target": "pg-b", "reason": "{}"}}"#,
                    percent_encoded(value)
                ),
            ),
            (
                format!("{name} %-encoded in a form body"),
                "/v1/switchover".into(),
                format!("target=pg-b&reason={}", percent_encoded(value)),
            ),
            (
                format!("{name} in the query"),
                format!("/v1/switchover?wait=true&note={value}"),
                r#"{"target": "pg-b"}"#.into(),
            ),
            (
                format!("{name} in a rejoin"),
                "/v1/rejoin".into(),
                format!(r#"{{"node": "pg-a", "reason": "{value}", "dry_run": true}}"#),
            ),
        ];
        for (case, path, body) in pasted {
            let r = seen.keep(&case, request(d, "POST", &path, &body, Some(&bearer)));
            let msg = assert_error(&r, 400, "bad_request", &case);
            assert!(msg.contains("was not processed"), "{case}: {msg}");
            let e = audit_tail(d, 1).pop().unwrap();
            assert_eq!(e["status"], 400, "{case}: audited: {e}");
            assert!(
                e.to_string().contains("***"),
                "{case}: the secret is masked in the audit: {e}"
            );
            assert_eq!(
                d.get("/v1/operations").json()["operations"],
                serde_json::json!([]),
                "{case}: no operation started"
            );
        }
    }
    // The token in the path without (or with a wrong) Authorization: the
    // refusal is audited with the token masked.
    let path = format!("/v1/operations/{token}/abort");
    let r = seen.keep(
        "token in the path, no auth",
        request(d, "POST", &path, "", None),
    );
    assert_error(&r, 401, "unauthorized", "token in the path, no auth");
    let r = seen.keep(
        "token in the path, wrong auth",
        request(d, "POST", &path, "", Some("Bearer 00000000000000000000")),
    );
    assert_error(&r, 403, "forbidden", "token in the path, wrong auth");
    let e = audit_tail(d, 1).pop().unwrap();
    assert_eq!(e["endpoint"], "/v1/operations/***/abort", "{e}");
    // Read-only routes handed the token: not echoed either. Each answers
    // as it would any other value there: no such operation or page (404),
    // a limit that is not a number (400), an unknown query ignored (200).
    for (path, want) in [
        (format!("/v1/operations/{token}"), 404),
        (format!("/v1/operations/{token}?local=true"), 404),
        (format!("/{token}"), 404),
        (format!("/v1/audit?limit={token}"), 400),
        (format!("/v1/status?{token}"), 200),
    ] {
        let r = seen.keep(format!("GET {path}"), d.get(&path));
        assert_eq!(r.status, want, "GET {path}: {}", r.body);
    }
    let r = d.get(&format!("/v1/operations/{token}"));
    assert_eq!(
        assert_error(&r, 404, "not_found", "GET /v1/operations/<token>"),
        "no operation ***"
    );

    // A real switchover, end to end, with the application.
    let r = seen.keep(
        "the switchover",
        d.post(
            "/v1/switchover?wait=true",
            r#"{"target": "pg-b", "reason": "security test: planned switchover"}"#,
            &token,
        ),
    );
    assert_eq!(
        r.status,
        200,
        "the switchover: {}\n{}",
        r.body,
        d.log_text()
    );
    let op = r.json();
    assert_eq!(op["state"], "succeeded");
    let id = op["id"].as_str().unwrap().to_owned();
    app.wait_acks(app.acks().len() + 3);
    // The caller of the switchover is the token's hash; a wrong token's is another.
    let entries = audit_tail(d, 200);
    let mine = entries
        .iter()
        .find(|e| e["endpoint"] == "/v1/switchover?wait=true" && e["status"] == 200)
        .expect("the switchover is audited")["caller"]
        .clone();
    let wrong = entries.iter().find(|e| e["status"] == 403).unwrap()["caller"].clone();
    assert!(mine.as_str().unwrap().starts_with("token:"), "{mine}");
    assert_ne!(mine, wrong, "two tokens, two callers");

    // Files: private, and made private again at start.
    for i in 0..2 {
        let dir = state_dir(&env.cluster, i);
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        assert_eq!(mode(&dir.join("operations")), 0o700);
        assert_eq!(mode(&dir.join("audit.log")), 0o600);
        let files = files_under(&dir);
        // The daemon that ran the operation journaled it.
        let journaled = files.iter().any(|f| {
            f.extension().is_some_and(|e| e == "json")
                && f.parent().is_some_and(|p| p.ends_with("operations"))
        });
        assert_eq!(journaled, i == 1, "daemon {i}'s journal: {files:?}");
        for f in &files {
            assert_eq!(
                mode(f) & 0o077,
                0,
                "{} is readable by others: {:o}",
                f.display(),
                mode(f)
            );
        }
    }
    let backups: Vec<_> = files_under(&app.dir)
        .into_iter()
        .filter(|f| f.to_string_lossy().ends_with(".bak"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    // The backup of database.cfg holds the application's password.
    assert_eq!(mode(&backups[0]), 0o600, "{}", backups[0].display());

    let dir = state_dir(&env.cluster, 1);
    chmod(&dir.join("audit.log"), 0o644);
    chmod(&dir, 0o755);
    chmod(&dir.join("operations"), 0o755);
    env.restart_daemon(1, &[]);
    assert_eq!(
        mode(&dir.join("audit.log")),
        0o600,
        "audit.log after a restart"
    );
    assert_eq!(mode(&dir), 0o700, "state_dir after a restart");
    assert_eq!(
        mode(&dir.join("operations")),
        0o700,
        "operations/ after a restart"
    );
    let d = &env.daemons[1];
    env.wait_health(
        1,
        "healthy again after the restart",
        env.within_polls(8),
        |c, h| c == 200 || h["primary"] == "pg-b",
    );

    // Everything users and files see, from both daemons.
    for (i, d) in env.daemons.iter().enumerate() {
        for path in [
            "/".to_owned(),
            "/metrics".into(),
            "/livez".into(),
            "/health".into(),
            "/primary".into(),
            "/replica".into(),
            "/v1/status".into(),
            "/v1/operations".into(),
            format!("/v1/operations/{id}"),
            format!("/v1/operations/{id}?local=true"),
            "/v1/audit?limit=10000".into(),
        ] {
            seen.keep(format!("GET {path} on daemon {i}"), d.get(&path));
        }
        let cfg = d.config.display().to_string();
        // After the switchover pg-a is stopped: unhealthy, exit 1.
        cli_exiting(&mut seen, &["status", "--url", &d.url], &[0, 1]);
        cli_exiting(&mut seen, &["status", "--json", "--config", &cfg], &[0, 1]);
        cli(&mut seen, &["operations", "--config", &cfg]);
        cli(&mut seen, &["history", "--config", &cfg]);
        cli(&mut seen, &["history", "--json", "--config", &cfg]);
        cli(&mut seen, &["operations", &id, "--config", &cfg]);
        cli(&mut seen, &["operations", "--json", "--config", &cfg]);
        cli(&mut seen, &["audit", "--limit", "10000", "--config", &cfg]);
        cli(
            &mut seen,
            &["audit", "--json", "--limit", "10000", "--config", &cfg],
        );
        seen.text(format!("log of daemon {i}"), d.log_text());
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", d.pid())).unwrap();
        seen.text(
            format!("command line of daemon {i}"),
            String::from_utf8_lossy(&cmdline).into(),
        );
    }
    let shown = cli(&mut seen, &["operations", &id, "--url", &d.url]);
    assert!(shown.contains("switch_application"), "{shown}");
    // Every file pgwarden writes: the configs and logs of the daemons and
    // their state_dirs (journal, audit log, lock). The application's own
    // database.cfg (and pgwarden's backup of it, 0600 as checked above)
    // legitimately hold the application's password: they are under app/,
    // not scanned.
    let pgwarden_dir = env.cluster.dir().join("pgwarden");
    let files = files_under(&pgwarden_dir);
    assert!(files.len() >= 6, "{files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        seen.text(
            f.display().to_string(),
            String::from_utf8_lossy(&bytes).into(),
        );
    }
    assert!(seen
        .0
        .iter()
        .any(|(_, t)| t.contains("security test: planned switchover")));

    let mut leaks = Vec::new();
    for (what, text) in &seen.0 {
        for (name, value, _) in &secrets {
            if let Some(at) = text.find(value.as_str()) {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(80)
                    .map_or(0, |(i, _)| i);
                leaks.push(format!("{name} in {what}: ...{}...", &text[from..at]));
            }
        }
    }
    println!(
        "secrets: searched {} answers, outputs and files",
        seen.0.len()
    );
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}

// ---- a client that never finishes its request head --------------------------

/// Sets the soft limit of open files of `pid` (root may lower another
/// process's limits with prlimit(2)).
fn limit_open_files(pid: i32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) with valid pointers; only reads `old` to keep the hard limit.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(
        rc,
        0,
        "prlimit of {pid}: {}",
        std::io::Error::last_os_error()
    );
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(
        rc,
        0,
        "prlimit of {pid}: {}",
        std::io::Error::last_os_error()
    );
}

/// Clients that send half a request head and stall (slowloris) must not
/// hold the daemon's connections, and so its file descriptors, for good:
/// hyper's header_read_timeout (30 s by default) needs a timer, which
/// `axum::serve` does not give it, so today such a client is never
/// disconnected, and a few hundred of them (under systemd's default soft
/// limit of 1024 open files) leave /health, /primary and /metrics
/// unanswered until they go away.
#[test]
fn a_client_that_stalls_in_its_request_head_is_disconnected() {
    const STALLED: usize = 300;
    let env = Env::start();
    let d = &env.daemons[0];
    let a = addr(d);
    assert_eq!(d.get("/livez").status, 200);
    // A daemon as systemd would run it, with fewer files: 256.
    limit_open_files(d.pid(), 256);
    let head = format!("GET /livez HTTP/1.1\r\nHost: {a}\r\n");
    let stalled: Vec<TcpStream> = (0..STALLED)
        .map(|_| {
            let mut s = TcpStream::connect(&a).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    let opened = Instant::now();
    // What a load balancer's health check sees meanwhile.
    let check = |what: &str| {
        let mut s = TcpStream::connect(&a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let req = format!("GET /health HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let r = read_answer(&mut s);
        println!(
            "{what}: GET /health -> {} {:?} ({} fds open in the daemon)",
            r.outcome,
            r.status,
            open_fds(d.pid())
        );
        r.status
    };
    check(&format!("{STALLED} clients stalled in their request head"));
    // Within the daemon's header read timeout (10 s) and a margin, the stalled
    // clients are disconnected and the health check answers again.
    let mut first = stalled[0].try_clone().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    let r = read_answer(&mut first);
    println!(
        "the first stalled client: {} {:?} after {:.1?}",
        r.outcome,
        r.status,
        opened.elapsed()
    );
    assert_ne!(
        r.outcome,
        "timeout",
        "a client stalled in its request head was not disconnected within {:?}",
        opened.elapsed()
    );
    // Answered, and healthy: the daemon polls again once it has file
    // descriptors to spare (any status would also come from a daemon that
    // answers only to say it cannot reach its nodes).
    let status = poll_until(
        Duration::from_secs(20),
        "GET /health to answer 200 again",
        || check("after the stalled clients were disconnected").filter(|s| *s == 200),
    );
    assert!(status.is_ok(), "{status:?}");
    drop(stalled);
}

/// The same root cause at shutdown: graceful shutdown waits for every
/// connection, and one stalled in its request head never ends, so SIGTERM
/// (`systemctl stop`, a restart) hangs until the client goes away or
/// systemd kills the daemon at TimeoutStopSec (30 s in deploy/systemd).
#[test]
fn sigterm_stops_the_daemon_while_a_client_stalls_in_its_request_head() {
    let env = Env::start();
    let a = addr(&env.daemons[0]);
    let mut stalled = TcpStream::connect(&a).unwrap();
    stalled
        .write_all(format!("GET /livez HTTP/1.1\r\nHost: {a}\r\n").as_bytes())
        .unwrap();
    // SIGTERM, then an exit (a zombie until the Daemon is dropped) within
    // 10 s, as Daemon::terminate waits; Drop kills it if it did not.
    let pid = env.daemons[0].pid();
    let t = Instant::now();
    // SAFETY: kill(2) of the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let exited = poll_until(
        Duration::from_secs(10),
        "the daemon to exit after SIGTERM",
        || proc_status(pid, "State").starts_with('Z').then_some(()),
    );
    println!("after SIGTERM: {exited:?} after {:.1?}", t.elapsed());
    assert!(
        exited.is_ok(),
        "{exited:?} with a client stalled in its request head"
    );
    drop(stalled);
}
