//! Helpers for the tests on the testbed of real hosts (`pgwarden_testkit::testbed`):
//! the operator's requests, made from host c, and the invariants every operation must
//! keep, checked the way a user would see them.

use std::time::Duration;

use pgwarden_testkit::{poll_until, Host, Testbed, TestbedOptions};

use super::{http, pgwarden_bin, Response};

/// Options for a testbed running this build's `pgwarden`.
pub fn options() -> TestbedOptions {
    TestbedOptions::new(pgwarden_bin())
}

/// Builds a testbed, panicking with the kit's explanation if it cannot.
pub fn start(opts: TestbedOptions) -> Testbed {
    Testbed::start(opts).unwrap_or_else(|e| panic!("{e}"))
}

/// `GET path` of the daemon on `to`, sent from the operator's host c.
pub fn get(tb: &Testbed, to: Host, path: &str) -> Response {
    let url = format!("{}{path}", tb.api_url(to));
    tb.in_host(Host::C, || http("GET", &url, None, &[]))
}

/// `POST path` with the API token to the daemon on `to`, sent from host c.
pub fn post(tb: &Testbed, to: Host, path: &str, body: &str) -> Response {
    let url = format!("{}{path}", tb.api_url(to));
    let auth = format!("Bearer {}", tb.api_token());
    tb.in_host(Host::C, || {
        http("POST", &url, Some(body), &[("Authorization", &auth)])
    })
}

/// A deadline of `polls` poll intervals plus a probe timeout and slack for a loaded
/// machine.
pub fn within(tb: &Testbed, polls: u32) -> Duration {
    let o = tb.options();
    o.poll_interval * polls + o.poll_timeout + Duration::from_secs(10)
}

/// Polls `/health` of the daemon on `host` (from c) until `pred` holds.
pub fn wait_health(
    tb: &Testbed,
    host: Host,
    what: &str,
    timeout: Duration,
    pred: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    poll_until(timeout, what, || {
        let r = get(tb, host, "/health");
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        pred(r.status, &v).then_some(v)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nlast /health of {host:?}: {}\n--- daemon log ---\n{}",
            get(tb, host, "/health").body,
            tb.daemon_log_text(host)
        )
    })
}

/// Every daemon (a, b and the replicas' hosts) answers 200 on `/health`,
/// having polled every node: /health can be 200 before a daemon's first poll
/// of the standby (its problems are read on the primary), while an
/// operation's preflight needs that poll.
pub fn wait_healthy(tb: &Testbed, what: &str) {
    for host in tb.node_hosts() {
        wait_health(tb, host, what, within(tb, 8), |c, _| c == 200);
        poll_until(within(tb, 8), "both nodes polled", || {
            let s: serde_json::Value =
                serde_json::from_str(&get(tb, host, "/v1/status").body).ok()?;
            s["nodes"]
                .as_array()?
                .iter()
                .all(|n| n["snapshot"].is_object())
                .then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {}", get(tb, host, "/v1/status").body));
    }
}

/// The invariants after an operation that left node `primary` the primary, with the
/// application instance of `app_host` running:
/// - `/primary` answers 200 on exactly one host, the primary's (replicas'
///   hosts included);
/// - exactly one application instance runs, on `app_host`;
/// - every id the writer and the application acknowledged is on the primary.
pub fn assert_invariants(tb: &Testbed, primary: usize, app_host: Host, writer_acks: &[i64]) {
    let primary_host = Host::of_node(primary);
    // Polled: each daemon answers from its last poll of its local node.
    poll_until(
        within(tb, 4),
        "/primary to answer 200 on the primary's host only",
        || {
            let codes: Vec<u16> = tb
                .node_hosts()
                .iter()
                .map(|h| get(tb, *h, "/primary").status)
                .collect();
            let ok = tb
                .node_hosts()
                .iter()
                .zip(&codes)
                .all(|(h, c)| (*c == 200) == (*h == primary_host));
            ok.then_some(())
        },
    )
    .unwrap_or_else(|e| {
        let codes: Vec<String> = tb
            .node_hosts()
            .iter()
            .map(|h| format!("{h:?} {}", get(tb, *h, "/primary").status))
            .collect();
        panic!("{e}: {}", codes.join(", "))
    });
    let running: Vec<Host> = tb
        .node_hosts()
        .into_iter()
        .filter(|h| tb.app_ctl(*h, "is-running").0 == 0)
        .collect();
    assert_eq!(running, [app_host], "exactly one application instance runs");

    let written = tb.written_ids(primary).unwrap();
    let lost: Vec<i64> = writer_acks
        .iter()
        .filter(|id| !written.contains(id))
        .copied()
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    // Read the acks first: a heartbeat acknowledged after the query is no false loss.
    let mut app_acks = tb.app_acks(Host::A);
    app_acks.extend(tb.app_acks(Host::B));
    let beats = tb.heartbeat_ids(primary).unwrap();
    let lost: Vec<i64> = app_acks
        .iter()
        .filter(|id| !beats.contains(id))
        .copied()
        .collect();
    assert!(lost.is_empty(), "acknowledged heartbeats lost: {lost:?}");
}

/// database.cfg as the application on every host first saw it, pointed at node `i`.
pub fn app_config_pointing_to(tb: &Testbed, i: usize) -> String {
    tb.original_app_config().replace(
        &format!("host = {}\n", Host::A.addr()),
        &format!("host = {}\n", tb.node(i).host),
    )
}

/// Whether node `i` is in recovery (a standby), asked over its unix socket.
pub fn in_recovery(tb: &Testbed, i: usize) -> bool {
    tb.psql(i, "SELECT pg_is_in_recovery()").unwrap() == "t"
}

/// The real user id the process `pid` runs as.
pub fn uid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Uid in /proc/{pid}/status"))
}
