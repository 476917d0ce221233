//! The fault matrix: things that break around an operation, each with the
//! outcome pgwarden promises asserted, and nothing lost.
//!
//! | Fault | Expected |
//! |---|---|
//! | the fence command hangs | killed at `stop_timeout`; fence failed; nothing promoted; cfg untouched |
//! | the old primary's daemon is gone with its node | failover proceeds; the lost lock is recorded |
//! | the primary hangs (every process SIGSTOPped) | node_down; failover (its daemon is asked to stop it; the stop waits on the frozen node); once it wakes, it is stopped |
//! | the primary's port stops answering (packets dropped) | node_down; failover; its daemon, still reachable, stops it BEFORE the promotion |
//! | the primary's host cut off the network (PostgreSQL and daemon ports dropped) | node_down; failover with the lock unshared; once the network is back, its own daemon stops it as a stale primary |
//! | state_dir's disk is full | 500 "nothing was done"; nothing changed; works once space is freed |
//! | a corrupt or truncated journal file at start | set aside as `*.corrupt`, daemon starts and serves |
//!
//! Covered elsewhere: database.cfg without its section and an application
//! that refuses to stop (failover.rs), SIGKILL of the daemon in every step
//! (crash.rs), a hung standby's poll (monitoring.rs), a rejoin whose node
//! daemon is down (rejoin.rs).

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgwarden_testkit::{poll_until, StopMode};
use util::{has_problem, tool, Env, Options};

fn in_recovery(env: &Env, node: usize) -> Option<bool> {
    env.cluster
        .psql(node, "SELECT pg_is_in_recovery()")
        .ok()
        .map(|v| v == "t")
}

fn ids_on(env: &Env, node: usize) -> std::collections::HashSet<i64> {
    let c = env.cluster.credentials();
    env.cluster
        .psql_db(node, &c.app_db, "SELECT id FROM heartbeat")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn assert_nothing_lost(env: &Env, acked: &[i64], node: usize) {
    let present = ids_on(env, node);
    let lost: Vec<_> = acked.iter().filter(|a| !present.contains(a)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

/// Rewrites daemon `i`'s config with `edit` and restarts it.
fn reconfigure(
    env: &mut Env,
    i: usize,
    daemon_env: &[(&str, &str)],
    edit: impl Fn(&str) -> String,
) {
    let cfg = env.daemons[i].config.clone();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let edited = edit(&text);
    assert_ne!(text, edited, "the edit changed nothing");
    std::fs::write(&cfg, edited).unwrap();
    env.restart_daemon(i, daemon_env);
}

/// `standin-ctl stop` processes still alive for the app in `dir`.
fn hanging_stops(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args = String::from_utf8_lossy(&c).replace('\0', " ");
                args.contains("standin-ctl stop") && args.contains(&needle)
            })
        })
        .collect()
}

#[test]
fn a_fence_command_that_hangs_is_killed_at_its_timeout_and_nothing_is_promoted() {
    let (mut env, app) = Env::start_with_app(Options::default());
    reconfigure(&mut env, 1, &[("STANDIN_HANG_STOP", "1")], |t| {
        t.replace("stop_timeout: 20s", "stop_timeout: 2s")
    });
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    let r = env.daemons[1].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 424, "{}", r.body);
    let op = r.json();
    let fence = &op["steps"][1];
    assert_eq!(fence["name"], "fence_application");
    assert_eq!(fence["state"], "failed");
    let msg = fence["message"].as_str().unwrap();
    assert!(
        msg.contains("did not finish within 2s") && msg.contains("hanging instead of stopping"),
        "{msg}"
    );
    assert!(op["steps"].as_array().unwrap()[2..]
        .iter()
        .all(|s| s["state"] == "pending"));
    // Nothing moved: the standby is a standby, the primary a primary, the
    // file as it was, the application still running.
    assert_eq!(in_recovery(&env, 1), Some(true));
    assert_eq!(in_recovery(&env, 0), Some(false));
    assert_eq!(
        std::fs::read_to_string(&app.config_file).unwrap(),
        app.original
    );
    assert_eq!(app.ctl("is-running").0, 0);
    // The hung command was killed with its process group, not left behind.
    poll_until(
        Duration::from_secs(5),
        "no hanging stop command left",
        || hanging_stops(&app.dir).is_empty().then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", hanging_stops(&app.dir)));
    let id = op["id"].as_str().unwrap();
    let aborted = env.daemons[1].post(&format!("/v1/operations/{id}/abort"), "", &env.token());
    assert_eq!(aborted.status, 200, "{}", aborted.body);
}

#[test]
fn failover_proceeds_when_the_old_primarys_daemon_is_gone_with_its_node() {
    let (mut env, app) = Env::start_with_app(Options::default());
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    // The whole host of pg-a is lost: its daemon and its PostgreSQL.
    env.daemons[0].kill();
    env.cluster.stop_node(0, StopMode::Immediate).unwrap();
    let acked = app.acks();
    env.wait_health(1, "pg-a down", env.within_polls(5), |_, h| {
        has_problem(h, "node_down", Some("pg-a"))
    });
    // A host whose daemon is silent cannot be verified: the operator says it is fenced.
    assert_refused_until_confirmed(&env);
    let op = failover_to_b_fenced(&env, "host A lost", &["pg-a"]);
    let lock = op["facts"]["peer_lock"].as_str().unwrap();
    assert!(
        lock.contains("the daemon beside pg-a is unreachable, lock not shared"),
        "{lock}"
    );
    assert_eq!(in_recovery(&env, 1), Some(false));
    assert_nothing_lost(&env, &acked, 1);
    // The application writes to the new primary.
    let before = app.acks().len();
    app.wait_acks(before + 3);
    let c = env.cluster.credentials();
    assert!(
        env.cluster
            .psql_db(1, &c.app_db, "SELECT count(*) FROM heartbeat")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            >= before + 3
    );
}

fn signal_all(pids: &[i32], sig: libc::c_int) {
    for &pid in pids {
        // SAFETY: kill(2) of processes of a server this test started.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Resumes a frozen node even when the test fails half-way, so the cluster
/// can be stopped and cleaned up.
struct Thaw(Vec<i32>);

impl Drop for Thaw {
    fn drop(&mut self) {
        signal_all(&self.0, libc::SIGCONT);
    }
}

#[test]
fn a_frozen_primary_is_failed_over_and_stopped_by_its_own_daemon_when_it_wakes() {
    let (env, app) = Env::start_with_app(Options::default());
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    // A frozen primary cannot acknowledge a commit when it wakes: its
    // synchronous standby will have been promoted by then.
    assert_ne!(
        env.cluster
            .psql(0, "SHOW synchronous_standby_names")
            .unwrap(),
        ""
    );
    // A VM pause or a stuck kernel: every process of the node stops at once.
    let pids = env.cluster.node_processes(0);
    assert!(!pids.is_empty());
    let thaw = Thaw(pids.clone());
    signal_all(&pids, libc::SIGSTOP);
    let acked = app.acks();
    env.wait_health(1, "pg-a down", env.within_polls(6), |_, h| {
        has_problem(h, "node_down", Some("pg-a"))
    });
    // The failover asks pg-a's daemon to stop it; the stop waits on the
    // frozen node and is not confirmed: unknown, so nothing is promoted.
    let body = serde_json::json!({"target": "pg-b", "reason": "pg-a hangs"}).to_string();
    let r = env.daemons[1].post("/v1/failover?wait=true", &body, &env.token());
    assert_eq!(r.status, 424, "{}", r.body);
    let failed = r.json();
    let stop = step_message(&failed, "stop_old_primary");
    assert!(
        stop.contains("not confirmed within 10s") && stop.contains("nothing is promoted"),
        "{stop}\n--- pg-a ---\n{}",
        env.daemons[0].log_text()
    );
    assert_eq!(in_recovery(&env, 1), Some(true));
    // The operator fences pg-a's host (here: it is frozen, its stop is
    // pending) and says so.
    let id = failed["id"].as_str().unwrap();
    let r = env.daemons[1].post(&format!("/v1/operations/{id}/abort"), "", &env.token());
    assert_eq!(r.status, 200, "{}", r.body);
    let op = failover_to_b_fenced(&env, "pg-a hangs, host fenced", &["pg-a"]);
    assert_eq!(in_recovery(&env, 1), Some(false));
    assert_nothing_lost(&env, &acked, 1);
    let stop = step_message(&op, "stop_old_primary");
    assert!(stop.contains("confirmed"), "{stop}");

    // It wakes up with the stop pending (or as a primary of the old
    // timeline, which its own daemon stops): either way it stops.
    drop(thaw);
    poll_until(
        Duration::from_secs(30),
        "the woken former primary to be stopped",
        || (!env.cluster.is_running(0)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", env.daemons[0].log_text()));
    // One writable node: pg-b.
    assert_eq!(in_recovery(&env, 1), Some(false));
    env.wait_health(
        1,
        "pg-a reported down, no split brain",
        env.within_polls(5),
        |_, h| !has_problem(h, "split_brain", None) && h["primary"] == "pg-b",
    );
}

/// `POST /v1/failover?wait=true` to pg-b's daemon, asserted to succeed; the operation.
fn failover_to_b(env: &Env, reason: &str) -> serde_json::Value {
    failover_to_b_fenced(env, reason, &[])
}

/// The same, the operator confirming `fenced` hosts fenced.
fn failover_to_b_fenced(env: &Env, reason: &str, fenced: &[&str]) -> serde_json::Value {
    let body =
        serde_json::json!({"target": "pg-b", "reason": reason, "fenced_hosts": fenced}).to_string();
    let r = env.daemons[1].post("/v1/failover?wait=true", &body, &env.token());
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[1].log_text());
    let op = r.json();
    assert_eq!(op["state"], "succeeded", "{op}");
    op
}

/// A failover to pg-b refused by preflight because pg-a's host does not
/// answer and nobody confirmed it fenced: nothing happens.
fn assert_refused_until_confirmed(env: &Env) {
    let body = serde_json::json!({"target": "pg-b", "reason": "not confirmed"}).to_string();
    let r = env.daemons[1].post("/v1/failover?wait=true", &body, &env.token());
    assert_eq!(r.status, 422, "{}", r.body);
    let j = r.json();
    let check = j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "host_fenced")
        .unwrap_or_else(|| panic!("no host_fenced check: {j}"))
        .clone();
    assert_eq!(check["verdict"], "fail", "{j}");
    assert!(
        check["message"].as_str().unwrap().contains("pg-a")
            && check["message"].as_str().unwrap().contains("fenced_hosts"),
        "{check}"
    );
    assert_eq!(
        in_recovery(env, 1),
        Some(true),
        "refused: nothing was promoted"
    );
}

/// The message of step `name` of an operation.
fn step_message(op: &serde_json::Value, name: &str) -> String {
    op["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .and_then(|s| s["message"].as_str())
        .unwrap_or_else(|| panic!("no step {name} with a message in {op}"))
        .to_owned()
}

/// TCP packets to and from some loopback ports dropped by an nftables
/// table of the test's own, removed on drop. Dropped, not refused: a cut
/// link or a silent firewall makes connections hang until a timeout, which
/// is the hard case; a refused connection fails fast. Loopback cannot tell
/// a local client from a remote one, so the node's own daemon loses it too.
struct NetworkCut {
    table: String,
}

impl NetworkCut {
    fn drop_ports(ports: &[u16]) -> NetworkCut {
        let nft = tool("nft", "nftables");
        let table = format!("pgwarden_test_{}", ports[0]);
        let set = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let rules = format!(
            "table inet {table} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
             tcp dport {{ {set} }} drop\n    tcp sport {{ {set} }} drop\n  }}\n}}\n"
        );
        let rules_file = std::env::temp_dir().join(format!("{table}.nft"));
        std::fs::write(&rules_file, rules).unwrap();
        let out = Command::new(&nft)
            .arg("-f")
            .arg(&rules_file)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&rules_file);
        assert!(
            out.status.success(),
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        NetworkCut { table }
    }
}

impl Drop for NetworkCut {
    fn drop(&mut self) {
        let _ = Command::new(tool("nft", "nftables"))
            .args(["delete", "table", "inet", &self.table])
            .output();
    }
}

/// The message of `node`'s node_down problem in a /health body ("" if none):
/// it ends with the last poll's error.
fn node_down_message(health: &serde_json::Value, node: &str) -> String {
    health["problems"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["code"] == "node_down" && p["node"] == node)
        })
        .and_then(|p| p["message"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Every id the application acknowledged is on `node`: the acks are read
/// first, so a heartbeat acknowledged in between is not a false loss.
fn assert_all_acks_on(env: &Env, app: &util::App, node: usize) {
    let acked = app.acks();
    assert!(!acked.is_empty());
    assert_nothing_lost(env, &acked, node);
}

#[test]
fn a_primary_whose_port_stops_answering_is_stopped_by_its_daemon_before_the_promotion() {
    let (env, app) = Env::start_with_app(Options::default());
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    // A primary that loses its standby finishes a shutdown only once its
    // walsender gives up on the standby, after wal_sender_timeout (60 s by
    // default): shorter here, so the stop completes within the failover.
    env.cluster
        .psql(0, "ALTER SYSTEM SET wal_sender_timeout = '3s'")
        .unwrap();
    env.cluster.psql(0, "SELECT pg_reload_conf()").unwrap();

    let cut = NetworkCut::drop_ports(&[env.cluster.node(0).port]);
    env.wait_health(1, "pg-a down", env.within_polls(6), |_, h| {
        has_problem(h, "node_down", Some("pg-a"))
    });
    let op = failover_to_b(&env, "pg-a's port does not answer"); // Unreachable over SQL, yet running: stopped through its daemon, and
                                                                 // verified stopped, before pg-b was promoted.
    let stop = step_message(&op, "stop_old_primary");
    assert!(stop.contains("the daemon beside it stopped it"), "{stop}");
    assert!(!env.cluster.is_running(0), "pg-a still runs: {stop}");
    let lock = op["facts"]["peer_lock"].as_str().unwrap();
    assert!(lock.contains("held by the daemon beside pg-a"), "{lock}");
    assert_eq!(in_recovery(&env, 1), Some(false));
    assert_all_acks_on(&env, &app, 1);

    // The network back: pg-a stays down, pg-b is the one primary, and the
    // application writes there. All of that held while the network was
    // cut too, so first see the daemon notice the network is back: while
    // cut, its polls of pg-a time out (packets dropped); once back, they
    // are refused at once (nothing listens on pg-a's port).
    let down_because = |h: &serde_json::Value| node_down_message(h, "pg-a");
    env.wait_health(1, "pg-a's polls timing out", env.within_polls(3), |_, h| {
        let why = down_because(h);
        why.contains("timed out") || why.contains("no answer within")
    });
    drop(cut);
    env.wait_health(1, "pg-a's polls refused", env.within_polls(5), |_, h| {
        down_because(h).contains("refused")
    });
    let before = app.acks().len();
    app.wait_acks(before + 3);
    env.wait_health(1, "pg-b the one primary", env.within_polls(5), |_, h| {
        h["primary"] == "pg-b" && !has_problem(h, "split_brain", None)
    });
    assert!(!env.cluster.is_running(0));
    assert_all_acks_on(&env, &app, 1);
}

#[test]
fn a_primary_host_cut_off_the_network_is_failed_over_and_stopped_by_its_own_daemon_once_back() {
    let (env, app) = Env::start_with_app(Options::default());
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    // The host of pg-a drops off the network: its PostgreSQL and its daemon.
    let cut = NetworkCut::drop_ports(&[env.cluster.node(0).port, env.layout.api_ports[0]]);
    env.wait_health(1, "pg-a down", env.within_polls(6), |_, h| {
        has_problem(h, "node_down", Some("pg-a"))
    });
    assert_refused_until_confirmed(&env);
    let op = failover_to_b_fenced(&env, "host A cut off", &["pg-a"]);
    let lock = op["facts"]["peer_lock"].as_str().unwrap();
    assert!(
        lock.contains("the daemon beside pg-a is unreachable, lock not shared"),
        "{lock}"
    );
    let stop = step_message(&op, "stop_old_primary");
    assert!(
        stop.contains("did not confirm a stop") && stop.contains("confirmed"),
        "{stop}"
    );
    // Nothing could reach it: the isolated primary still runs (its commits
    // wait for the synchronous standby it lost).
    assert!(env.cluster.is_running(0));
    assert_eq!(in_recovery(&env, 1), Some(false));
    assert_all_acks_on(&env, &app, 1);

    // The network back: pg-a is a primary of the old timeline, a second
    // writer; the daemon beside it stops it and audits why.
    drop(cut);
    poll_until(
        Duration::from_secs(30),
        "the former primary to be stopped once back",
        || (!env.cluster.is_running(0)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n--- daemon pg-a ---\n{}", env.daemons[0].log_text()));
    poll_until(Duration::from_secs(10), "the stop to be audited", || {
        let audit = env.daemons[0].get("/v1/audit?limit=20").body;
        audit.contains("stale").then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n--- daemon pg-a ---\n{}",
            env.daemons[0].get("/v1/audit?limit=20").body,
            env.daemons[0].log_text()
        )
    });
    env.wait_health(1, "pg-b the one primary", env.within_polls(5), |_, h| {
        h["primary"] == "pg-b" && !has_problem(h, "split_brain", None)
    });
    let before = app.acks().len();
    app.wait_acks(before + 3);
    assert_all_acks_on(&env, &app, 1);
}

/// A small tmpfs mounted over a directory for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount_over(dir: &Path, size: &str) -> Tmpfs {
        let keep = tempfile::tempdir().unwrap();
        copy_dir(dir, keep.path());
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -t tmpfs (the test needs root and CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        copy_dir(keep.path(), dir);
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes into `dir` until the disk says ENOSPC; returns the filler.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    loop {
        match f.write_all(&block) {
            Ok(()) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    let _ = f.sync_all();
    path
}

#[test]
fn a_full_disk_under_state_dir_refuses_the_operation_and_changes_nothing() {
    let (mut env, app) = Env::start_with_app(Options::default());
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    let state = pgwarden_testkit::state_dir(&env.cluster, 1);
    env.daemons[1].kill();
    let _mount = Tmpfs::mount_over(&state, "512k");
    let filler = fill(&state);
    env.restart_daemon(1, &[]);
    env.wait_health(1, "healthy on a full disk", env.within_polls(3), |c, _| {
        c == 200
    });

    let r = env.daemons[1].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 500, "{}\n{}", r.body, env.daemons[1].log_text());
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("nothing was done") && msg.contains("No space left on device"),
        "{msg}"
    );
    assert_eq!(in_recovery(&env, 1), Some(true));
    assert_eq!(in_recovery(&env, 0), Some(false));
    assert_eq!(app.ctl("is-running").0, 0);
    assert_eq!(
        std::fs::read_to_string(&app.config_file).unwrap(),
        app.original
    );
    // The peer's lock was given back: the other daemon takes requests.
    let dry = env.daemons[0].post(
        "/v1/switchover",
        r#"{"target": "pg-b", "dry_run": true}"#,
        &env.token(),
    );
    assert_eq!(dry.json()["would_proceed"], true, "{}", dry.body);

    // Space freed: the same request works.
    std::fs::remove_file(filler).unwrap();
    let r = env.daemons[1].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[1].log_text());
    assert_eq!(in_recovery(&env, 1), Some(false));
}

#[test]
fn a_corrupt_or_truncated_journal_file_is_set_aside_at_start() {
    let mut env = Env::start();
    let ops = pgwarden_testkit::state_dir(&env.cluster, 0).join("operations");
    env.daemons[0].kill();
    std::fs::create_dir_all(&ops).unwrap();
    let valid_start = r#"{"id": "op-truncated", "kind": "switchover", "state": "running", "steps": [{"name": "preflight", "sta"#;
    std::fs::write(ops.join("op-truncated.json"), valid_start).unwrap();
    std::fs::write(ops.join("op-garbage.json"), b"\x00\xff not json at all").unwrap();
    env.restart_daemon(0, &[]);

    for name in ["op-truncated", "op-garbage"] {
        assert!(
            ops.join(format!("{name}.json.corrupt")).exists(),
            "{name} set aside"
        );
        assert!(!ops.join(format!("{name}.json")).exists());
    }
    let log = env.daemons[0].log_text();
    assert!(
        log.contains("op-truncated") && log.contains("op-garbage"),
        "{log}"
    );
    let list = env.daemons[0].get("/v1/operations").body;
    assert!(!list.contains("op-truncated"), "{list}");
    env.wait_health(0, "healthy", env.within_polls(3), |c, _| c == 200);
}
