//! Bad configs: `pgwarden check-config` and `pgwarden run` refuse each kind
//! with exit status 2 and a message that says file:line:column and what to fix.

mod util;

use std::path::Path;
use std::process::Command;

const GOOD: &str = "\
cluster: inmanta
local_node: pg-a
listen: 127.0.0.1:0
state_dir: STATE
api_token_file: TOKEN
poll:
  interval: 1s
  timeout: 1s
  failure_threshold: 3
monitor:
  user: pgwarden
  password_file: PASSWORD
replication:
  slot: replication
  application_name: inmanta
  user: replication
nodes:
  - name: pg-a
    host: 127.0.0.1
    port: 5432
  - name: pg-b
    host: 127.0.0.1
    port: 5433
";

struct Outcome {
    code: Option<i32>,
    stderr: String,
    stdout: String,
}

fn check(dir: &Path, verb: &str, text: &str) -> Outcome {
    let token = dir.join("api.token");
    let password = dir.join("monitor.password");
    std::fs::write(&token, "t0k3n").unwrap();
    std::fs::write(&password, "pw").unwrap();
    let text = text
        .replace("STATE", &dir.join("state").display().to_string())
        .replace("TOKEN", &token.display().to_string())
        .replace("PASSWORD", &password.display().to_string());
    let path = dir.join("pgwarden.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(util::pgwarden_bin())
        .args([verb, "--config"])
        .arg(&path)
        .output()
        .unwrap();
    Outcome {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

#[test]
fn a_good_config_passes() {
    let dir = tempfile::tempdir().unwrap();
    let o = check(dir.path(), "check-config", GOOD);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stdout
            .contains("OK (cluster inmanta, local node pg-a, 2 nodes)"),
        "{}",
        o.stdout
    );
}

#[test]
fn every_kind_of_bad_config_exits_2_and_says_where_and_what() {
    // (what is wrong, the edit, "line:column: " and a phrase of the message)
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "YAML syntax",
            GOOD.replace("cluster: inmanta", "cluster: 'inmanta"),
            ":24:1: ",
            "found unexpected end of stream, while scanning a quoted scalar",
        ),
        (
            "tab indentation",
            GOOD.replace("  user: pgwarden", "\tuser: pgwarden"),
            ":11:1: ",
            "indented with a tab",
        ),
        (
            "unknown key",
            GOOD.replace("  failure_threshold: 3", "  failure_treshold: 3"),
            ":9:3: ",
            "unknown key `failure_treshold` under `poll`",
        ),
        (
            "missing key",
            GOOD.replace("local_node: pg-a\n", ""),
            ":1:1: ",
            "missing key `local_node`",
        ),
        (
            "bad duration",
            GOOD.replace("interval: 1s", "interval: soon"),
            ":7:3: ",
            "poll.interval",
        ),
        (
            "bad listen address",
            GOOD.replace("127.0.0.1:0", "localhost"),
            ":3:1: ",
            "such as 127.0.0.1:8008",
        ),
        (
            "bad port",
            GOOD.replace("port: 5433", "port: 70000"),
            ":23:5: ",
            "nodes[1].port",
        ),
        (
            "unknown local node",
            GOOD.replace("local_node: pg-a", "local_node: pg-c"),
            ":2:1: ",
            "is not one of the nodes (pg-a, pg-b)",
        ),
        (
            "duplicate node",
            GOOD.replace("name: pg-b", "name: pg-a"),
            ":21:5: ",
            "used twice",
        ),
        (
            "one node",
            GOOD[..GOOD.find("  - name: pg-b").unwrap()].to_owned(),
            ":17:1: ",
            "at least two nodes",
        ),
        (
            "same address twice",
            GOOD.replace("port: 5433", "port: 5432"),
            ":23:5: ",
            "same host and port",
        ),
        (
            "bad slot name",
            GOOD.replace("slot: replication", "slot: Bad-Slot"),
            ":14:3: ",
            "not a valid slot name",
        ),
        (
            "unreadable password file",
            GOOD.replace("password_file: PASSWORD", "password_file: /nonexistent/pw"),
            ":12:3: ",
            "cannot read monitor.password_file /nonexistent/pw",
        ),
        (
            "unknown sslmode",
            GOOD.replace("port: 5433", "port: 5433\n    sslmode: verify_full"),
            ":24:",
            "expected one of `disable`, `prefer`, `require`, `verify-ca`, `verify-full`",
        ),
        (
            "verify-full without sslrootcert",
            GOOD.replace("port: 5433", "port: 5433\n    sslmode: verify-full"),
            ":24:5: ",
            "give nodes[1].sslrootcert",
        ),
        (
            "missing sslrootcert file",
            GOOD.replace(
                "port: 5433",
                "port: 5433\n    sslmode: verify-full\n    sslrootcert: /nonexistent/ca.crt",
            ),
            ":25:5: ",
            "nodes[1].sslrootcert: cannot read sslrootcert /nonexistent/ca.crt",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (what, text, at, phrase) in &cases {
        for verb in ["check-config", "run"] {
            let o = check(dir.path(), verb, text);
            assert_eq!(o.code, Some(2), "{what} ({verb}): {}", o.stderr);
            let first = o.stderr.lines().next().unwrap_or("");
            assert!(
                first.contains("pgwarden.yaml:"),
                "{what}: no file name in {first:?}"
            );
            assert!(
                first.contains(at),
                "{what}: expected position {at:?} in {first:?}"
            );
            assert!(
                o.stderr.contains(phrase),
                "{what}: expected {phrase:?} in {:?}",
                o.stderr
            );
        }
    }
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = Command::new(util::pgwarden_bin())
        .args(["check-config", "--config", "/nonexistent/pgwarden.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/pgwarden.yaml:1:1: cannot read the config file"),
        "{err}"
    );
}

#[test]
fn check_config_warns_when_another_cfg_file_overrides_the_switch() {
    // inmanta reads every *.cfg of its directory in name order: a later file
    // setting database.host would undo a failover's switch.
    let dir = tempfile::tempdir().unwrap();
    let inmanta_d = dir.path().join("inmanta.d");
    std::fs::create_dir(&inmanta_d).unwrap();
    let cfg = inmanta_d.join("database.cfg");
    std::fs::write(&cfg, "[database]\nhost = 10.0.0.1\nport = 5432\n").unwrap();
    std::fs::write(
        inmanta_d.join("zz-local.cfg"),
        "[database]\nhost = 10.9.9.9\n",
    )
    .unwrap();
    std::fs::write(
        inmanta_d.join("aa-early.cfg"),
        "[database]\nhost = 10.8.8.8\n",
    )
    .unwrap();
    let text = format!(
        "{GOOD}application:\n  name: inmanta-server\n  stop: [true]\n  start: [true]\n  is_running: [true]\n  db_user: inmanta\n  config_file: {}\n",
        cfg.display()
    );
    let o = check(dir.path(), "check-config", &text);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stderr.contains("zz-local.cfg also sets `host`"),
        "{}",
        o.stderr
    );
    assert!(
        !o.stderr.contains("aa-early.cfg"),
        "a file read before it does not override: {}",
        o.stderr
    );
}

/// The example config's first trip: `listen: 127.0.0.1:8008` while
/// `nodes[local].api` names the host's address. Fine on the host itself;
/// the other daemon's first call fails. check-config says so (a warning:
/// exit 0), and is quiet when listen serves it.
#[test]
fn check_config_warns_when_the_local_api_is_not_served_by_listen() {
    let with = |listen: &str| {
        GOOD.replace("listen: 127.0.0.1:0", &format!("listen: {listen}"))
            .replacen(
                "    port: 5432\n",
                "    port: 5432\n    api: http://10.0.0.1:8008\n",
                1,
            )
    };
    let dir = tempfile::tempdir().unwrap();
    let o = check(dir.path(), "check-config", &with("127.0.0.1:8008"));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stderr.contains(
            "warning: nodes[pg-a].api http://10.0.0.1:8008 is not served by this daemon's listen: \
             it reaches 10.0.0.1 but `listen` is 127.0.0.1:8008"
        ),
        "{}",
        o.stderr
    );
    for served in ["0.0.0.0:8008", "10.0.0.1:8008"] {
        let o = check(dir.path(), "check-config", &with(served));
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        assert!(!o.stderr.contains("warning"), "{served}: {}", o.stderr);
    }
}

/// Before the first standby is cloned its data directory is empty; the
/// unit's ExecStartPre (check-config) must let its daemon start, since that
/// daemon runs the rejoin. An absent directory (maybe a wrong path) and a
/// directory that is not a cluster stay errors.
#[test]
fn an_empty_data_directory_is_the_first_clones_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("main");
    std::fs::create_dir(&data).unwrap();
    let bin = pgwarden_testkit::find_pg_bin_dir(None).expect("PostgreSQL 15 binaries");
    let with = |data_dir: &Path| {
        GOOD.replacen(
            "    port: 5432\n",
            &format!(
                "    port: 5432\n    data_dir: {}\n    bin_dir: {}\n    os_user: postgres\n",
                data_dir.display(),
                bin.display()
            ),
            1,
        )
    };
    let o = check(dir.path(), "check-config", &with(&data));
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains(&format!(
            "local PostgreSQL (pg-a): no cluster yet: {} is empty; `pgwarden rejoin pg-a` clones the standby into it",
            data.display()
        )),
        "{}",
        o.stdout
    );
    let o = check(dir.path(), "check-config", &with(&dir.path().join("typo")));
    assert_eq!(o.code, Some(2), "{}{}", o.stdout, o.stderr);
    std::fs::write(data.join("stray"), "x").unwrap();
    let o = check(dir.path(), "check-config", &with(&data));
    assert_eq!(o.code, Some(2), "{}{}", o.stdout, o.stderr);
}
