//! The `pgwarden` command's patronictl habits, against real daemons of a
//! real cluster: `status` finds its daemon without `--url`, redraws with
//! `--watch` and exits by the cluster's health; `history` merges both
//! daemons' operations; `--to` may be left out when one standby can take
//! over; and before anyone confirms, the CLI says which checks `--force`
//! lifts.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden_testkit::{poll_until, StopMode};
use util::{has_problem, pgwarden_bin, Env, Options};

fn pgwarden(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(pgwarden_bin())
        .args(args)
        // Nothing of the machine's own settings: each test names its daemon.
        .env_remove("PGWARDEN_URL")
        .env_remove("PGWARDEN_TOKEN_FILE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn status_finds_its_daemon_watches_and_exits_by_health() {
    let mut env = Env::start();
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    let url = env.daemons[0].url.clone();

    // PGWARDEN_URL, as patronictl's PATRONI_* settings.
    let o = pgwarden(&["status"], &[("PGWARDEN_URL", &url)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).contains("seen from pg-a: healthy"),
        "{}",
        text(&o)
    );
    // The config's `listen`, without a token (status reads none).
    let cfg = env.daemons[1].config.display().to_string();
    let o = pgwarden(&["status", "--config", &cfg], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).contains("seen from pg-b: healthy"),
        "{}",
        text(&o)
    );

    // --watch redraws until Ctrl-C, then exits with the last answer's status.
    let mut watch = Command::new(pgwarden_bin())
        .args(["status", "--watch", "0.2"])
        .env("PGWARDEN_URL", &url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let out = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        })
    };
    let frames = || {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("Every 200ms: pgwarden status, "))
            .count()
    };
    poll_until(Duration::from_secs(20), "three frames of --watch", || {
        (frames() >= 3).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", lines.lock().unwrap()));
    assert_eq!(unsafe { libc::kill(watch.id() as i32, libc::SIGINT) }, 0);
    let code = watch.wait().unwrap();
    reader.join().unwrap();
    assert_eq!(code.code(), Some(0), "{:?}", lines.lock().unwrap());
    let all = lines.lock().unwrap().join("\n");
    assert!(
        all.matches("Cluster demo (primary pg-a), seen from pg-a: healthy")
            .count()
            >= 3,
        "{all}"
    );

    // Unhealthy: exit 1, with the problem listed.
    env.cluster.stop_node(1, StopMode::Fast).unwrap();
    env.wait_health(0, "standby_not_streaming", env.within_polls(3), |c, h| {
        c == 503 && has_problem(h, "standby_not_streaming", Some("pg-b"))
    });
    let o = pgwarden(&["status"], &[("PGWARDEN_URL", &url)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stdout(&o).contains("UNHEALTHY") && stdout(&o).contains("standby_not_streaming"),
        "{}",
        text(&o)
    );

    // A daemon that does not answer: exit 2, and the CLI says where it asked.
    env.daemons[0].kill();
    let o = pgwarden(&["status"], &[("PGWARDEN_URL", &url)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "cannot reach the pgwarden daemon at {url}/v1/status"
        )),
        "{}",
        text(&o)
    );
}

/// Two switchovers (there and back, with a rejoin between) leave operations
/// in both daemons' journals; `history` shows all of them in order, with
/// their timelines, from either side; `--to` is left out each time.
#[test]
fn history_merges_both_daemons_and_to_defaults_to_the_one_standby() {
    let (mut env, app) = Env::start_with_app(Options::default());
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    let cfg: Vec<String> = env
        .daemons
        .iter()
        .map(|d| d.config.display().to_string())
        .collect();

    let o = pgwarden(&["switchover", "--yes", "--config", &cfg[0]], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o)
            .contains("No --to given: pg-b is the only candidate (the one reachable standby)"),
        "{}",
        text(&o)
    );
    env.assert_invariants(&app, 1);

    let o = pgwarden(&["rejoin", "pg-a", "--yes", "--config", &cfg[1]], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    env.wait_health(
        1,
        "healthy after the rejoin",
        env.within_polls(5),
        |c, _| c == 200,
    );
    env.wait_all_polled();

    let o = pgwarden(&["switchover", "--yes", "--config", &cfg[1]], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).contains("No --to given: pg-a is the only candidate"),
        "{}",
        text(&o)
    );
    env.assert_invariants(&app, 0);

    // pg-a's daemon ran the first switchover and the rejoin (a rejoin runs
    // beside its node), pg-b's the switchover back.
    for c in &cfg {
        let o = pgwarden(&["history", "--config", c], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let rows: Vec<Vec<String>> = stdout(&o)
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect();
        // CREATED is two words (date, time): DAEMON is the third.
        let seen: Vec<(&str, &str, &str, &str, &str)> = rows
            .iter()
            .map(|r| (&*r[2], &*r[3], &*r[4], &*r[5], &*r[7]))
            .collect();
        assert_eq!(
            seen,
            [
                ("pg-a", "switchover", "pg-a", "pg-b", "succeeded"),
                ("pg-a", "rejoin", "pg-b", "pg-a", "succeeded"),
                ("pg-b", "switchover", "pg-b", "pg-a", "succeeded"),
            ],
            "{}",
            text(&o)
        );
        // The new timelines: 2, then 3; a rejoin promotes nothing.
        let tl: Vec<&str> = rows.iter().map(|r| &*r[6]).collect();
        assert_eq!(tl, ["2", "-", "3"], "{}", text(&o));
    }
    let o = pgwarden(&["history", "--json", "--config", &cfg[0]], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["unanswered"], serde_json::json!([]), "{v}");
    assert_eq!(v["operations"][2]["daemon"], "pg-b", "{v}");
    assert_eq!(v["operations"][2]["new_timeline"], "3", "{v}");

    // A silent daemon is named, and the exit status says the list is short.
    env.daemons[1].kill();
    let o = pgwarden(&["history", "--config", &cfg[0]], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "Missing: the operations of the daemon beside pg-b ({}): cannot reach",
            env.layout.api_url(1)
        )),
        "{out}"
    );
    assert_eq!(
        out.matches(" rejoin ").count(),
        1,
        "pg-a's own are shown: {out}"
    );
}

/// A failover while the primary still answers fails `primary_down` only:
/// the CLI says that is what `--force` would lift, and with `--force` it
/// says so again before it would ask (here: refuses, no terminal), and
/// nothing changes.
#[test]
fn the_cli_names_the_checks_force_lifts_before_asking() {
    let (env, _app) = Env::start_with_app(Options::default());
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    env.wait_all_polled();
    let cfg = env.daemons[1].config.display().to_string();

    let o = pgwarden(&["failover", "--dry-run", "--config", &cfg], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = stdout(&o);
    assert!(
        out.contains("\n--force would lift: primary_down\n"),
        "{out}"
    );
    assert!(!out.contains("cannot lift"), "{out}");

    let o = pgwarden(&["failover", "--force", "--config", &cfg], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = stdout(&o);
    let lifted = out
        .find("--force lifts 1 check(s): primary_down\n")
        .unwrap_or_else(|| panic!("{}", text(&o)));
    assert!(lifted > out.find("(ignored: force)").unwrap(), "{out}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a terminal: pass --yes to confirm"),
        "{}",
        text(&o)
    );
    assert_eq!(
        env.cluster.psql(1, "SELECT pg_is_in_recovery()").unwrap(),
        "t",
        "refused: nothing was promoted"
    );
}

/// The exit statuses are in the man pages the package ships (generated from
/// the same clap definition as `--help`), and `history` has its page.
#[test]
fn the_man_pages_document_the_exit_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let o = pgwarden(&["generate-man", dir.path().to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let page = |name: &str| {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            // roff escapes the dashes of `--watch`.
            .replace("\\-", "-")
    };
    let status = page("pgwarden-status.1");
    for said in [
        "PGWARDEN_URL",
        "/etc/pgwarden/pgwarden.yaml",
        "--watch",
        "Exit status: 0 healthy",
    ] {
        assert!(
            status.contains(said),
            "pgwarden-status.1 lacks {said:?}:\n{status}"
        );
    }
    let history = page("pgwarden-history.1");
    assert!(
        history.contains("Exit status: 0 every daemon answered"),
        "{history}"
    );
}
