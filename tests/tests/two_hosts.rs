//! Two hosts for real (DESIGN.md "Two hosts"): the application on its hosts,
//! fenced and started through each host's own daemon, exactly one instance
//! after every operation; hosts that do not answer are confirmed by the
//! operator, never assumed down; an isolated primary is not offered to
//! clients. Every test runs on the namespace testbed (hosts a, b and the
//! operator's c) and checks, after each operation: one `/primary`, one
//! application instance, pointing at the primary and holding a session
//! there, no acknowledged write lost.

mod util;

use std::time::Duration;

use pgwarden_testkit::{poll_until, Host, StopMode, Testbed};
use util::has_problem;
use util::testbed::{
    app_config_pointing_to, assert_invariants, get, in_recovery, options, post, start, wait_health,
    wait_healthy, within,
};

/// `PUT path` with the token to the daemon on `to`, from host c.
fn put(tb: &Testbed, to: Host, path: &str, body: &str) -> util::Response {
    let url = format!("{}{path}", tb.api_url(to));
    let auth = format!("Bearer {}", tb.api_token());
    tb.in_host(Host::C, || {
        util::http("PUT", &url, Some(body), &[("Authorization", &auth)])
    })
}

/// The one running instance points at node `i` and holds a session there.
fn assert_app_on(tb: &Testbed, host: Host, i: usize) {
    assert_eq!(
        std::fs::read_to_string(tb.app_config_file(host)).unwrap(),
        app_config_pointing_to(tb, i),
        "the instance on {host:?} points at node {i}"
    );
    let user = &tb.credentials().app_user;
    poll_until(
        within(tb, 4),
        "the application's session on the primary",
        || {
            let n: u64 = tb
                .psql(
                    i,
                    &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}'"),
                )
                .ok()?
                .parse()
                .ok()?;
            (n > 0).then_some(())
        },
    )
    .unwrap();
}

fn refused_check(r: &util::Response, check: &str) -> String {
    assert_eq!(r.status, 422, "{}", r.body);
    let j = r.json();
    let c = j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == check && c["verdict"] == "fail")
        .unwrap_or_else(|| panic!("no failed {check}: {j}"))
        .clone();
    c["message"].as_str().unwrap().to_owned()
}

/// The Inmanta guide's own failover: inmanta-server runs on host a beside
/// the primary; PostgreSQL on a dies, the host lives on. The failover run
/// through b's daemon stops the instance on a through a's daemon, points
/// database.cfg at pg-b on both hosts, and starts it again on a (`stay`):
/// one orchestrator, never two.
#[test]
fn the_guides_failover_keeps_one_instance_where_it_ran() {
    let mut o = options();
    o.app_host = Some(Host::A);
    let tb = start(o);
    wait_healthy(&tb, "healthy first");
    let writer = tb.start_writer(Host::A);
    writer.wait_more(10, Duration::from_secs(30)).unwrap();

    tb.kill_postmaster(0).unwrap();
    wait_health(&tb, Host::B, "pg-a down", within(&tb, 8), |_, h| {
        has_problem(h, "node_down", Some("pg-a"))
    });
    let r = post(
        &tb,
        Host::B,
        "/v1/failover?wait=true",
        r#"{"target": "pg-b", "reason": "PostgreSQL on a died"}"#,
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, tb.daemon_log_text(Host::B));
    let op = r.json();
    assert_eq!(op["facts"]["app_ran_on"], "pg-a", "{op}");
    assert_eq!(op["facts"]["app_started_on"], "pg-a", "{op}");
    // Both hosts' database.cfg name the new primary: a later start anywhere finds it.
    for h in [Host::A, Host::B] {
        assert_eq!(
            std::fs::read_to_string(tb.app_config_file(h)).unwrap(),
            app_config_pointing_to(&tb, 1),
            "{h:?}"
        );
    }
    assert_app_on(&tb, Host::A, 1);
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    let acked = writer.stop();
    assert_invariants(&tb, 1, Host::A, &acked);
}

/// `placement: follow_primary`: a switchover moves the one instance to the
/// new primary's host.
#[test]
fn placement_follow_primary_moves_the_instance_with_the_primary() {
    let mut o = options();
    o.app_host = Some(Host::A);
    o.application_extra = "  placement: follow_primary\n".into();
    let tb = start(o);
    wait_healthy(&tb, "healthy first");
    let writer = tb.start_writer(Host::A);
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    let r = post(
        &tb,
        Host::A,
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "maintenance of host a"}"#,
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, tb.daemon_log_text(Host::A));
    assert_eq!(r.json()["facts"]["app_started_on"], "pg-b");
    assert_app_on(&tb, Host::B, 1);
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    let acked = writer.stop();
    assert_invariants(&tb, 1, Host::B, &acked);

    // And back with a rejoin and a switchover: the instance follows to a.
    let r = post(
        &tb,
        Host::B,
        "/v1/rejoin?wait=true",
        r#"{"node": "pg-a", "reason": "back in service"}"#,
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, tb.daemon_log_text(Host::A));
    wait_healthy(&tb, "healthy after the rejoin");
    let r = post(
        &tb,
        Host::B,
        "/v1/switchover?wait=true",
        r#"{"target": "pg-a", "reason": "back to a"}"#,
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, tb.daemon_log_text(Host::B));
    assert_app_on(&tb, Host::A, 0);
    assert_invariants(&tb, 0, Host::A, &acked);
}

/// Host a lost entirely (every packet dropped): its daemon cannot verify
/// anything there, so the failover is refused until the operator confirms
/// the host fenced; confirmed, it goes on and starts the one instance on b.
#[test]
fn a_lost_host_must_be_confirmed_fenced() {
    let mut o = options();
    o.app_host = Some(Host::A);
    let tb = start(o);
    wait_healthy(&tb, "healthy first");
    let cut = tb.isolate(Host::A);
    wait_health(&tb, Host::B, "pg-a down", within(&tb, 8), |_, h| {
        has_problem(h, "node_down", Some("pg-a"))
    });
    let r = post(
        &tb,
        Host::B,
        "/v1/failover?wait=true",
        r#"{"target": "pg-b", "reason": "host a lost"}"#,
    );
    let why = refused_check(&r, "host_fenced");
    assert!(
        why.contains("pg-a") && why.contains("fenced_hosts"),
        "{why}"
    );
    assert!(in_recovery(&tb, 1), "refused: nothing promoted");

    // The operator fences host a (here: stops its PostgreSQL and the
    // application on it, as powering it off would), then says so. PostgreSQL
    // first, in immediate mode like a power-off: a clean shutdown would wait
    // wal_sender_timeout (60 s) for the unreachable standby, and the
    // application's commit waiting for that standby would make its SIGTERM
    // wait out its stop timeout.
    tb.stop_node(0, StopMode::Immediate).unwrap();
    tb.app_ctl(Host::A, "stop");
    let r = post(
        &tb,
        Host::B,
        "/v1/failover?wait=true",
        r#"{"target": "pg-b", "reason": "host a powered off", "fenced_hosts": ["pg-a"]}"#,
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, tb.daemon_log_text(Host::B));
    let op = r.json();
    assert_eq!(op["request"]["fenced_hosts"][0], "pg-a", "journaled: {op}");
    assert_eq!(op["facts"]["app_started_on"], "pg-b", "{op}");
    assert_app_on(&tb, Host::B, 1);
    let audit = get(&tb, Host::B, "/v1/audit?limit=5").body;
    assert!(audit.contains("fenced_hosts"), "audited: {audit}");
    drop(cut);
    assert_invariants(&tb, 1, Host::B, &[]);
}

/// a and b cut from each other, the operator on c sees both. The primary
/// on a has lost both the standby and b's daemon: `primary_isolated`, and
/// its `/primary` answers 503; going async there is refused. A failover
/// through b is refused without confirmation; confirmed, after the heal
/// there is one primary and nothing acknowledged is lost.
#[test]
fn a_partition_between_the_hosts_loses_no_acknowledged_write() {
    let mut o = options();
    o.app_host = Some(Host::A);
    let tb = start(o);
    wait_healthy(&tb, "healthy first");
    let writer = tb.start_writer(Host::A);
    writer.wait_more(10, Duration::from_secs(30)).unwrap();

    let cut = tb.cut(Host::A, Host::B);
    wait_health(
        &tb,
        Host::A,
        "a's primary isolated",
        within(&tb, 12),
        |c, h| c == 503 && has_problem(h, "primary_isolated", Some("pg-a")),
    );
    let p = get(&tb, Host::A, "/primary");
    assert_eq!(p.status, 503, "{}", p.body);
    assert!(p.body.contains("lost"), "{}", p.body);
    let r = put(&tb, Host::A, "/v1/sync", r#"{"mode": "async"}"#);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("fenced_hosts"), "{}", r.body);

    wait_health(&tb, Host::B, "pg-a down from b", within(&tb, 8), |_, h| {
        has_problem(h, "node_down", Some("pg-a"))
    });
    let r = post(
        &tb,
        Host::B,
        "/v1/failover?wait=true",
        r#"{"target": "pg-b", "reason": "a cut off"}"#,
    );
    let why = refused_check(&r, "host_fenced");
    assert!(why.contains("pg-a"), "{why}");

    // The operator stops the application on a (reachable from c) and
    // confirms a fenced. pg-a is left running: isolated, its commits wait
    // for the standby it lost, and once back its own daemon stops it.
    tb.app_ctl(Host::A, "stop");
    let r = post(
        &tb,
        Host::B,
        "/v1/failover?wait=true",
        r#"{"target": "pg-b", "reason": "a fenced", "fenced_hosts": ["pg-a"]}"#,
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, tb.daemon_log_text(Host::B));
    assert!(!in_recovery(&tb, 1));
    assert!(tb.is_running(0), "pg-a still runs, isolated");
    let p = get(&tb, Host::A, "/primary");
    assert_eq!(
        p.status, 503,
        "an isolated primary is never offered: {}",
        p.body
    );

    drop(cut);
    poll_until(
        Duration::from_secs(60),
        "the stale pg-a to be stopped by its daemon",
        || (!tb.is_running(0)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.daemon_log_text(Host::A)));
    writer.wait_more(10, Duration::from_secs(60)).unwrap();
    let acked = writer.stop();
    assert_app_on(&tb, Host::B, 1);
    assert_invariants(&tb, 1, Host::B, &acked);
}

/// Only the daemons' API port is cut between a and b; replication still
/// flows. Nothing is isolated, but b's daemon cannot verify host a: an
/// operation through b is refused (and `sync async` too) until the port
/// is back.
#[test]
fn the_peer_daemons_port_cut_while_replication_flows() {
    let tb = start(options());
    wait_healthy(&tb, "healthy first");
    let cut = tb.cut_port(Host::A, Host::B, 8008);
    // Replication still flows: healthy on both, no isolation.
    let view = get(&tb, Host::B, "/v1/status").json();
    assert_eq!(view["primary"], "pg-a", "{view}");
    poll_until(
        within(&tb, 8),
        "b's daemon to find a's daemon silent",
        || {
            let s = get(&tb, Host::B, "/v1/status").json();
            (s["nodes"][0]["daemon_answered"] == false).then_some(())
        },
    )
    .unwrap();
    let r = post(
        &tb,
        Host::B,
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "port cut"}"#,
    );
    let why = refused_check(&r, "host_fenced");
    assert!(why.contains("pg-a"), "{why}");
    let r = put(&tb, Host::B, "/v1/sync", r#"{"mode": "async"}"#);
    assert_eq!(r.status, 409, "{}", r.body);
    let p = get(&tb, Host::A, "/primary");
    assert_eq!(p.status, 200, "pg-a sees pg-b: not isolated: {}", p.body);
    assert!(!has_problem(
        &get(&tb, Host::A, "/health").json(),
        "primary_isolated",
        None
    ));

    drop(cut);
    poll_until(
        within(&tb, 8),
        "b's daemon to hear a's daemon again",
        || {
            let s = get(&tb, Host::B, "/v1/status").json();
            (s["nodes"][0]["daemon_answered"] == true).then_some(())
        },
    )
    .unwrap();
    let r = post(
        &tb,
        Host::B,
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "port back"}"#,
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, tb.daemon_log_text(Host::B));
    assert_app_on(&tb, Host::B, 1);
    assert_invariants(&tb, 1, Host::B, &[]);
}
