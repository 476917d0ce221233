//! `PUT /v1/sync` and `pgwarden sync` on a real cluster: a lost standby
//! blocks writes, `async` releases them (and says what that costs), `sync`
//! is refused while no standby streams, and restores synchronous
//! replication once it does.

mod util;

use std::process::{Command, Stdio};
use std::time::Duration;

use pgwarden_testkit::{poll_until, StopMode};
use util::{has_problem, Env};

#[test]
fn async_releases_blocked_writes_and_sync_restores_protection() {
    let env = Env::start();
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    let d = &env.daemons[0];
    let token = env.token();

    // The standby is lost; a commit now waits for it.
    env.cluster.stop_node(1, StopMode::Fast).unwrap();
    let c = env.cluster.credentials().clone();
    let mut writer = Command::new(env.cluster.bin_dir().join("psql"))
        .args([
            env.cluster
                .conninfo(0, &c.app_user, &c.app_password, &c.app_db)
                .as_str(),
            "-X",
            "-c",
            "CREATE TABLE released(x int); INSERT INTO released VALUES (1)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    env.wait_health(0, "writes_blocked", env.within_polls(3), |_, h| {
        has_problem(h, "writes_blocked", Some("pg-a"))
    });

    // Restoring sync without a standby would block every write: refused.
    let r = d.put("/v1/sync", r#"{"mode": "sync"}"#, &token);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("no standby streams"), "{}", r.body);
    // Bad requests.
    assert_eq!(
        d.put("/v1/sync", r#"{"mode": "maybe"}"#, &token).status,
        400
    );
    assert_eq!(
        util::http(
            "PUT",
            &format!("{}/v1/sync", d.url),
            Some(r#"{"mode": "async"}"#),
            &[]
        )
        .status,
        401
    );
    // Without a terminal and without --yes the CLI refuses to go async.
    let cli = Command::new(util::pgwarden_bin())
        .args(["sync", "async", "--url", &d.url, "--token-file"])
        .arg(env.cluster.secret_file(pgwarden_testkit::Secret::ApiToken))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        cli.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(
        writer.try_wait().unwrap().is_none(),
        "a refused request changes nothing"
    );

    // async releases the waiting write, and says what it costs.
    let r = d.put("/v1/sync", r#"{"mode": "async"}"#, &token);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["synchronous_standby_names"], "");
    assert!(v["released_writes"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["warning"].as_str().unwrap().contains("lost"), "{v}");
    let done = poll_until(
        Duration::from_secs(10),
        "the released write to commit",
        || writer.try_wait().unwrap(),
    )
    .unwrap();
    assert!(done.success());
    assert_eq!(
        env.cluster
            .psql_db(0, &c.app_db, "SELECT count(*) FROM released")
            .unwrap(),
        "1"
    );
    env.wait_health(
        0,
        "sync_standby_names_unset",
        env.within_polls(3),
        |_, h| {
            has_problem(h, "sync_standby_names_unset", Some("pg-a"))
                && !has_problem(h, "writes_blocked", None)
        },
    );

    // The standby is back; `pgwarden sync sync` restores synchronous replication.
    env.cluster.start_node(1).unwrap();
    env.wait_health(
        0,
        "pg-b streaming again",
        env.within_polls(3) + Duration::from_secs(10),
        |_, h| !has_problem(h, "standby_not_streaming", None),
    );
    let cli = Command::new(util::pgwarden_bin())
        .args(["sync", "sync", "--url", &d.url, "--token-file"])
        .arg(env.cluster.secret_file(pgwarden_testkit::Secret::ApiToken))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(out.contains("synchronous standby: pg-b"), "{out}");
    assert_eq!(
        env.cluster
            .psql(
                0,
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'inmanta'"
            )
            .unwrap(),
        "sync"
    );
    env.wait_health(0, "healthy again", env.within_polls(3), |c, _| c == 200);
    // Every change is in the audit log.
    let audit = d.get("/v1/audit").json();
    let statuses: Vec<u64> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["endpoint"] == "/v1/sync")
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [409, 400, 401, 200, 200]);
}
