//! No silent loss on failover: a daemon remembers what the primary had at
//! its last sight, and a failover to a standby that lacks it is refused
//! unless forced (and then says how much may be lost).

mod util;

use std::time::Duration;

use pgwarden_testkit::{poll_until, StopMode};
use util::{has_problem, Env, Options};

const WAIT: &str = "?wait=true";

fn lsn_bytes(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// The runbook's advice for blocked writes (`sync async`), then commits on
/// the primary alone, then the primary dies and the lagging standby comes
/// back: a failover without force would lose those commits, and is refused.
#[test]
fn a_failover_to_a_standby_that_lacks_acknowledged_commits_is_refused_unless_forced() {
    let (env, _app) = Env::start_with_app(Options::default());
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);

    env.cluster.stop_node(1, StopMode::Fast).unwrap();
    let r = env.daemons[0].put("/v1/sync", r#"{"mode": "async"}"#, &env.token());
    assert_eq!(r.status, 200, "{}", r.body);

    // 20 MiB of acknowledged commits that exist on pg-a only: more than
    // the default max_lag_on_failover (16MiB).
    env.cluster
        .psql(
            0,
            "CREATE TABLE only_on_a (id int, pad text); \
             INSERT INTO only_on_a SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g",
        )
        .unwrap();
    let written = lsn_bytes(&env.cluster.psql(0, "SELECT pg_current_wal_lsn()").unwrap());
    // pg-b's daemon, which will run the failover, must have seen that.
    poll_until(
        env.within_polls(3),
        "pg-b's daemon to see pg-a's last writes",
        || {
            let s = env.daemons[1].get("/v1/status").json();
            let seen = s["last_primary"]["current_lsn"].as_str().map(lsn_bytes)?;
            (s["last_primary"]["node"] == "pg-a" && seen >= written).then_some(())
        },
    )
    .unwrap();

    env.cluster.kill_postmaster(0).unwrap();
    env.cluster.start_node(1).unwrap();
    env.wait_health(
        1,
        "pg-a down, pg-b a standby again",
        env.within_polls(5),
        |_, h| {
            has_problem(h, "node_down", Some("pg-a"))
                && h["nodes"][1]["role"] == "standby"
                && h["nodes"][1]["reachable"] == true
        },
    );
    // The down primary's last sight is still shown, with its LSN.
    let status = env.daemons[1].get("/v1/status").json();
    assert_eq!(status["last_primary"]["node"], "pg-a", "{status}");
    assert!(status["last_primary"]["seen_at"].is_string(), "{status}");

    let r = env.daemons[1].post(
        &format!("/v1/failover{WAIT}"),
        r#"{"target": "pg-b", "reason": "pg-a crashed"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let body = r.json();
    let check = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "target_has_primary_wal")
        .unwrap_or_else(|| panic!("no target_has_primary_wal check: {body}"));
    assert_eq!(check["verdict"], "fail", "{body}");
    assert!(
        check["message"]
            .as_str()
            .unwrap()
            .contains("behind what pg-a had"),
        "{body}"
    );
    // Refused means nothing was done: pg-b is still a standby.
    assert_eq!(
        env.cluster.psql(1, "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );

    // Forced, it goes ahead and says what may have been lost.
    let r = env.daemons[1].post(
        &format!("/v1/failover{WAIT}"),
        r#"{"target": "pg-b", "reason": "accept the loss", "force": true}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[1].log_text());
    let op = r.json();
    let lost: u64 = op["facts"]["bytes_possibly_lost"]
        .as_str()
        .unwrap_or_else(|| panic!("no bytes_possibly_lost: {op}"))
        .parse()
        .unwrap();
    assert!(lost >= 20 * 1000 * 1000, "{lost} bytes: {op}");
    assert_eq!(
        env.cluster.psql(1, "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
    let audit = env.daemons[1].get("/v1/audit?limit=10").json();
    let entry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["status"] == 200 && e["endpoint"].as_str().unwrap().starts_with("/v1/failover"))
        .unwrap_or_else(|| panic!("no audit entry of the forced failover: {audit}"));
    assert!(
        entry["result"]
            .as_str()
            .unwrap()
            .contains(&format!("bytes_possibly_lost={lost}")),
        "{entry}"
    );
}

/// The record survives a restart of the daemon: what the primary had is
/// known even when the primary died while its peer's daemon was down.
#[test]
fn the_primary_last_seen_is_kept_across_a_daemon_restart() {
    let (mut env, _app) = Env::start_with_app(Options::default());
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    let before = env.daemons[1].get("/v1/status").json();
    assert_eq!(before["last_primary"]["node"], "pg-a", "{before}");
    env.cluster.stop_node(0, StopMode::Immediate).unwrap();
    env.restart_daemon(1, &[]);
    let after = poll_until(
        Duration::from_secs(20),
        "a first view after the restart",
        || {
            let s = env.daemons[1].get("/v1/status").json();
            (s["nodes"][0]["polled_at"].is_string()).then_some(s)
        },
    )
    .unwrap();
    assert_eq!(after["last_primary"]["node"], "pg-a", "{after}");
    assert!(after["last_primary"]["current_lsn"].is_string(), "{after}");
    assert_eq!(
        after["last_primary"]["standbys"][0]["sync_state"], "sync",
        "{after}"
    );
}
