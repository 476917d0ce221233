//! An operation after its admin connection was silently dropped, on the
//! testbed of real hosts: b's daemon holds pooled connections to pg-a
//! (across the bridge); an nftables rule on b then drops their packets (a
//! firewall or NAT that forgot them), while new connections pass. The
//! connections look open to b's daemon and are dead. The first operation
//! after it must succeed: the pool checks a connection before a statement
//! uses it and replaces a dead one (`bench/silent_drop.sh` measures it).

mod util;

use std::time::Duration;

use pgwarden_testkit::{poll_until, Host, Testbed};
use util::testbed::{assert_invariants, options, post, start, wait_healthy};

/// The client ports of b's daemon's pooled connections to pg-a (the
/// monitor role's sessions from b's address that are not the poll's).
fn admin_ports_from_b(tb: &Testbed) -> Vec<u16> {
    tb.psql(
        0,
        "SELECT client_port FROM pg_stat_activity WHERE usename = 'pgwarden' AND client_addr = '192.0.2.2' AND query NOT LIKE '-- The pgwarden probe%'",
    )
    .unwrap()
    .lines()
    .filter_map(|l| l.trim().parse().ok())
    .collect()
}

fn put_sync(tb: &Testbed, host: Host) -> util::Response {
    let url = format!("{}/v1/sync", tb.api_url(host));
    let auth = format!("Bearer {}", tb.api_token());
    tb.in_host(Host::C, || {
        util::http(
            "PUT",
            &url,
            Some(r#"{"mode": "sync"}"#),
            &[("Authorization", &auth)],
        )
    })
}

#[test]
fn the_first_operation_after_a_silent_drop_of_its_connection_succeeds() {
    let tb = start(options());
    wait_healthy(&tb, "healthy first");
    // PUT /v1/sync runs its SQL on the primary over b's pool: afterwards
    // b's daemon holds an idle connection to pg-a.
    let r = put_sync(&tb, Host::B);
    assert_eq!(r.status, 200, "{}", r.body);
    let ports = poll_until(
        Duration::from_secs(10),
        "b's pooled connection to pg-a",
        || Some(admin_ports_from_b(&tb)).filter(|p| !p.is_empty()),
    )
    .unwrap();

    let writer = tb.start_writer(Host::A);
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    // The silent drop: a firewall between b and pg-a forgets these
    // connections and drops their packets from now on; b's daemon still
    // holds them as open (no keepalive has fired yet).
    let cuts: Vec<_> = ports.iter().map(|p| tb.drop_flow(Host::B, *p)).collect();
    // The first operation after it, run by b's daemon over that pool.
    let r = post(
        &tb,
        Host::B,
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "after a silent drop"}"#,
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, tb.daemon_log_text(Host::B));
    assert_eq!(r.json()["state"], "succeeded", "{}", r.body);
    drop(cuts);
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    let acked = writer.stop();
    assert_invariants(&tb, 1, Host::B, &acked);
}
