//! The stale-primary guard when it cannot stop its node: it says so
//! (`stale_primary_not_stopped`, critical), never audits "stopped" for a
//! node that still runs, and backs off instead of retrying at every poll.

mod util;

use std::time::Duration;

use pgwarden_testkit::{poll_until, StopMode};
use util::{has_problem, Daemon, Env, Options};

/// Seconds since midnight of an RFC 3339 UTC time (`...T03:40:01.123Z`).
fn seconds_of_day(t: &str) -> f64 {
    let clock = t.split('T').nth(1).unwrap().trim_end_matches('Z');
    let mut parts = clock.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

#[test]
fn a_stale_primary_that_cannot_be_stopped_is_reported_and_retried_with_backoff() {
    let (mut env, _app) = Env::start_with_app(Options::default());
    // pg-a's daemon gets a stop command that fails (a unit it may not stop,
    // a broken sudoers rule): the first `stop:` of its config is pg-a's.
    let cfg = env.daemons[0].config.clone();
    let yaml = std::fs::read_to_string(&cfg).unwrap();
    let at = yaml.find("    stop: ").expect("pg-a has a stop command");
    let end = at + yaml[at..].find('\n').unwrap();
    let yaml = format!("{}    stop: [\"false\"]{}", &yaml[..at], &yaml[end..]);
    std::fs::write(&cfg, yaml).unwrap();
    env.daemons[0].kill();
    env.daemons[0] = Daemon::start(&cfg, env.layout.api_url(0));
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);

    env.cluster.stop_node(0, StopMode::Immediate).unwrap();
    env.wait_health(1, "pg-a down", env.within_polls(5), |_, h| {
        has_problem(h, "node_down", Some("pg-a"))
    });
    let r = env.daemons[1].post(
        "/v1/failover?wait=true",
        r#"{"target": "pg-b"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // The old primary is started again: a second writer its daemon cannot stop.
    env.cluster.start_node(0).unwrap();
    env.wait_health(
        0,
        "stale_primary_not_stopped",
        env.within_polls(5),
        |c, h| c == 503 && has_problem(h, "stale_primary_not_stopped", Some("pg-a")),
    );
    assert!(env.cluster.is_running(0), "the stop command really failed");

    let failures = poll_until(
        Duration::from_secs(60),
        "three failed stops audited",
        || {
            let audit = env.daemons[0].get("/v1/audit?limit=100").json();
            let entries: Vec<serde_json::Value> = audit["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["endpoint"] == "stop_stale_primary")
                .cloned()
                .collect();
            (entries.len() >= 3).then_some(entries)
        },
    )
    .unwrap();
    for e in &failures {
        assert_eq!(e["status"], 500, "never audited as stopped: {e}");
        assert!(
            e["result"]
                .as_str()
                .unwrap()
                .starts_with("could not stop it"),
            "{e}"
        );
    }
    // Backoff: 1 s, then 2 s (at least) between attempts.
    let times: Vec<f64> = failures
        .iter()
        .map(|e| seconds_of_day(e["time"].as_str().unwrap()))
        .collect();
    assert!(times[1] - times[0] >= 1.0, "{times:?}");
    assert!(times[2] - times[1] >= 2.0, "{times:?}");

    // Stopped by hand, the problem goes away.
    env.cluster.stop_node(0, StopMode::Fast).unwrap();
    env.wait_health(0, "the problem cleared", env.within_polls(5) * 3, |_, h| {
        !has_problem(h, "stale_primary_not_stopped", None)
    });
}
