//! The load-balancer routes (`/read-write`, `/read-only`, `/replica?lag=`,
//! `/sync`, `/async`) on real daemons beside a real primary and standby:
//! what HAProxy or a curl sees for each node, with GET, HEAD and OPTIONS,
//! a standby whose replay really falls behind, and a standby made
//! asynchronous through `PUT /v1/sync`.

mod util;

use pgwarden_testkit::poll_until;
use util::{Daemon, Env, Response};

const METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];

fn ask(d: &Daemon, method: &str, path: &str) -> Response {
    util::http(method, &format!("{}{}", d.url, path), None, &[])
}

/// `path` answers `want` to every method, HEAD without a body, GET and
/// OPTIONS with the local node's summary.
fn check(d: &Daemon, node: &str, path: &str, want: u16) {
    for method in METHODS {
        let case = format!("{method} {path} on the daemon beside {node}");
        let r = ask(d, method, path);
        assert_eq!(r.status, want, "{case}: {}", r.body);
        if method == "HEAD" {
            assert_eq!(r.body, "", "{case}: HEAD has no body");
        } else {
            assert_eq!(r.json()["name"], node, "{case}: {}", r.body);
        }
    }
}

/// Polls until `path` on `d` answers `want` (to GET), then checks every method.
fn wait_for(env: &Env, i: usize, path: &str, want: u16, what: &str) -> serde_json::Value {
    let d = &env.daemons[i];
    let r = poll_until(env.within_polls(8), what, || {
        let r = ask(d, "GET", path);
        (r.status == want).then_some(r)
    })
    .unwrap_or_else(|e| panic!("{e}\nlast answer: {}", ask(d, "GET", path).body));
    check(d, &env.cluster.node(i).name, path, want);
    r.json()
}

#[test]
fn each_route_answers_for_its_own_node_with_every_method() {
    let env = Env::start();
    for i in 0..2 {
        env.wait_health(i, "healthy first", env.within_polls(8), |c, _| c == 200);
    }
    env.wait_all_polled();
    let (a, b) = (&env.daemons[0], &env.daemons[1]);

    // A healthy pair: pg-a the primary, pg-b its synchronous standby.
    // (route, the primary's answer, the standby's answer)
    let table = [
        ("/read-write", 200, 503),
        ("/read-only", 200, 200),
        ("/replica", 503, 200),
        ("/replica?lag=1GiB", 503, 200),
        ("/sync", 503, 200),
        ("/async", 503, 503),
        ("/async?lag=1GiB", 503, 503),
    ];
    for (path, on_a, on_b) in table {
        check(a, "pg-a", path, on_a);
        check(b, "pg-b", path, on_b);
    }
    // /read-write is /primary, body and all.
    let (rw, p) = (a.get("/read-write").json(), a.get("/primary").json());
    assert_eq!(rw, p, "/read-write and /primary differ");
    assert_eq!(rw["writable"], true);
    let sync = b.get("/sync").json();
    assert_eq!(sync["sync_state"], "sync", "{sync}");
    let replica = b.get("/replica?lag=1GiB").json();
    assert_eq!(replica["lag_source"], "primary", "{replica}");
    assert_eq!(replica["max_lag_bytes"], 1u64 << 30, "{replica}");
    assert!(replica["lag_bytes"].is_u64(), "{replica}");

    // Bad parameters are 400 with the error shape, never a silent 200.
    for path in [
        "/replica?lag=lots",
        "/replica?lag=",
        "/replica?lagg=1MiB",
        "/async?lag=-1",
        "/read-write?lag=1MiB",
        "/read-only?x=1",
        "/sync?lag=1",
    ] {
        for method in ["GET", "OPTIONS"] {
            let r = ask(b, method, path);
            assert_eq!(r.status, 400, "{method} {path}: {}", r.body);
            let v = r.json();
            assert_eq!(v["error"], "bad_request", "{method} {path}: {v}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        }
    }
    let r = ask(b, "POST", "/read-write");
    assert_eq!(r.status, 405, "{}", r.body);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("allow: get,head,options"),
        "{}",
        r.headers
    );

    // Replay really falls behind: pause it on pg-b and write on pg-a (the
    // commits still return: synchronous means flushed, not replayed).
    env.cluster.psql(1, "SELECT pg_wal_replay_pause()").unwrap();
    env.cluster
        .psql(
            0,
            "CREATE TABLE lagging AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
        )
        .unwrap();
    let over = wait_for(
        &env,
        1,
        "/replica?lag=1MiB",
        503,
        "pg-b's replay lag to exceed 1MiB",
    );
    assert_eq!(over["streaming"], true, "{over}");
    assert_eq!(over["lag_source"], "primary", "{over}");
    assert!(
        over["lag_bytes"].as_u64().unwrap() > 1 << 20,
        "the lag shown is what was decided on: {over}"
    );
    check(b, "pg-b", "/replica", 200);
    check(b, "pg-b", "/replica?lag=1GiB", 200);
    check(b, "pg-b", "/replica?lag=1048576", 503);
    check(b, "pg-b", "/read-only", 200);
    check(b, "pg-b", "/sync", 200);
    env.cluster
        .psql(1, "SELECT pg_wal_replay_resume()")
        .unwrap();
    wait_for(
        &env,
        1,
        "/replica?lag=1MiB",
        200,
        "pg-b to catch up within 1MiB",
    );

    // Synchronous replication off: pg-b becomes /async, no longer /sync.
    let r = a.put("/v1/sync", r#"{"mode": "async"}"#, &env.token());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = wait_for(&env, 1, "/async", 200, "pg-b to be an async standby");
    assert_eq!(v["sync_state"], "async", "{v}");
    check(b, "pg-b", "/sync", 503);
    check(b, "pg-b", "/async?lag=1GiB", 200);
    check(b, "pg-b", "/read-only", 200);
    check(a, "pg-a", "/async", 503);
    check(a, "pg-a", "/sync", 503);
    // And back.
    let r = a.put("/v1/sync", r#"{"mode": "sync"}"#, &env.token());
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(&env, 1, "/sync", 200, "pg-b to be the sync standby again");
    check(b, "pg-b", "/async", 503);
}

/// The primary goes: its daemon stops sending writes there, and the standby,
/// whose WAL receiver stops streaming, stops taking reads.
#[test]
fn a_stopped_primary_gets_no_writes_and_its_standby_no_reads() {
    let env = Env::start();
    for i in 0..2 {
        env.wait_health(i, "healthy first", env.within_polls(8), |c, _| c == 200);
    }
    env.wait_all_polled();
    check(&env.daemons[0], "pg-a", "/read-write", 200);
    env.cluster
        .stop_node(0, pgwarden_testkit::StopMode::Fast)
        .unwrap();
    wait_for(&env, 0, "/read-write", 503, "pg-a to lose /read-write");
    wait_for(&env, 0, "/read-only", 503, "pg-a to lose /read-only");
    wait_for(&env, 1, "/read-only", 503, "pg-b to stop streaming");
    for path in ["/replica", "/sync", "/async", "/read-write"] {
        check(&env.daemons[1], "pg-b", path, 503);
    }
}
