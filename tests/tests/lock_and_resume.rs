//! The operation lock as a lease, and resume that re-verifies: a peer that
//! answers oddly refuses the operation, a dead holder's lock expires, and a
//! fence verified before a crash is checked again before anything else runs.

mod util;

use std::time::Duration;

use pgwarden_testkit::poll_until;
use util::{Daemon, Env, Options};

/// A peer that answers the lock request with an error (here a 403: it has
/// another token) is not "unreachable": the operation is refused.
#[test]
fn a_peer_that_refuses_the_lock_request_refuses_the_operation() {
    let (mut env, _app) = Env::start_with_app(Options::default());
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    let other = env.cluster.dir().join("other.token");
    std::fs::write(&other, "a-token-the-other-daemon-does-not-have\n").unwrap();
    let cfg = env.daemons[1].config.clone();
    let token_file = env
        .cluster
        .secret_file(pgwarden_testkit::Secret::ApiToken)
        .display()
        .to_string();
    let yaml = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&token_file, &other.display().to_string());
    std::fs::write(&cfg, yaml).unwrap();
    env.daemons[1].kill();
    env.daemons[1] = Daemon::start(&cfg, env.layout.api_url(1));

    let r = env.daemons[0].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "lock test"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("did not grant the operation lock") && msg.contains("403"),
        "{msg}"
    );
    // Nothing was done.
    assert_eq!(
        env.cluster.psql(1, "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );
    assert_eq!(
        env.cluster.psql(0, "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
    let ops = env.daemons[0].get("/v1/operations").json();
    assert_eq!(ops["operations"].as_array().unwrap().len(), 0, "{ops}");
}

/// A cluster whose pg-a daemon holds its operations at `fault` (see
/// `PGWARDEN_FAULT_PAUSE`), a switchover to pg-b sent to it, and the daemon
/// waited for at that point; the operation's id.
fn switchover_held_at(fault: &str, reason: &str) -> (Env, util::App, String) {
    let (env, app) = Env::start_with_app(Options {
        daemon_env: vec![
            vec![("PGWARDEN_FAULT_PAUSE".to_owned(), fault.to_owned())],
            vec![],
        ],
        ..Default::default()
    });
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    let body = serde_json::json!({"target": "pg-b", "reason": reason}).to_string();
    let r = env.daemons[0].post("/v1/switchover", &body, &env.token());
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    poll_until(Duration::from_secs(60), "the fault point", || {
        env.daemons[0]
            .log_text()
            .contains("fault injection: pausing the operation here")
            .then_some(())
    })
    .unwrap();
    (env, app, id)
}

/// The daemon holding the lock dies mid-operation and stays dead: its
/// lease at the other daemon expires, which can then act again.
#[test]
fn the_lock_of_a_dead_holder_expires() {
    let (mut env, _app, _id) = switchover_held_at("fence_application:before", "lease test");
    let held = env.daemons[1].put("/v1/sync", r#"{"mode": "sync"}"#, &env.token());
    assert_eq!(held.status, 409, "the lock is held: {}", held.body);
    assert!(held.body.contains("runs operation"), "{}", held.body);
    env.daemons[0].kill();
    // The lease (15 s) is no longer renewed: it lapses.
    let r = poll_until(
        Duration::from_secs(60),
        "the dead holder's lease to expire",
        || {
            let r = env.daemons[1].put("/v1/sync", r#"{"mode": "sync"}"#, &env.token());
            (r.status != 409).then_some(r)
        },
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A switchover killed after the fence, the application started again by
/// hand meanwhile: resume re-verifies the fence and refuses to go on.
#[test]
fn resume_re_verifies_the_fence_before_it_acts() {
    let (mut env, app, id) = switchover_held_at("stop_old_primary:before", "resume test");
    assert_ne!(
        app.ctl("is-running").0,
        0,
        "fenced: the application is stopped"
    );
    env.daemons[0].kill();
    env.restart_daemon(0, &[]);

    // Someone starts the application again while the operation stands still.
    let (code, out) = app.ctl("start");
    assert_eq!(code, 0, "{out}");
    app.wait_acks(app.acks().len() + 2);
    let r = env.daemons[0].post(
        &format!("/v1/operations/{id}/resume?wait=true"),
        "",
        &env.token(),
    );
    assert_eq!(r.status, 424, "{}", r.body);
    let op = r.json();
    let failed: Vec<&serde_json::Value> = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{op}");
    assert_eq!(failed[0]["name"], "stop_old_primary", "{op}");
    let msg = failed[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("not resumed") && msg.contains("runs again"),
        "{msg}"
    );
    // Nothing after the fence ran: pg-a is still the primary.
    assert_eq!(
        env.cluster.psql(0, "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
    assert_eq!(
        env.cluster.psql(1, "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );

    // Fenced again by hand, the resume goes through.
    let (code, out) = app.ctl("stop");
    assert_eq!(code, 0, "{out}");
    let r = env.daemons[0].post(
        &format!("/v1/operations/{id}/resume?wait=true"),
        "",
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    assert_eq!(
        env.cluster.psql(1, "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
}

/// What the operation verified is in the view when it answers: a rejoin
/// right after a switchover is accepted, and the rejoining node's daemon is
/// healthy the moment the rejoin answers.
#[test]
fn switchover_then_rejoin_back_to_back() {
    let (env, _app) = Env::start_with_app(Options::default());
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    let r = env.daemons[1].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "back to back"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = env.daemons[1].post(
        "/v1/rejoin?wait=true",
        r#"{"node": "pg-a", "reason": "back to back"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    // The moment the rejoin answers, the view holds what it verified: pg-b
    // the primary, pg-a a reachable standby, no node down.
    let h = env.daemons[0].get("/health").json();
    assert_eq!(h["primary"], "pg-b", "{h}");
    let roles: Vec<_> = h["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].clone(), n["role"].clone(), n["down"].clone()))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("pg-a".into(), "standby".into(), false.into()),
            ("pg-b".into(), "primary".into(), false.into()),
        ],
        "{h}"
    );
    // A commit the writer made while pg-a caught up may still wait for it
    // at that instant (writes_blocked, from one poll): healthy within a poll.
    env.wait_health(
        0,
        "healthy after the rejoin",
        env.within_polls(3),
        |c, _| c == 200,
    );
}
