//! The trips of a first install as shipped: the example config's commands
//! must be the ones the shipped polkit rule allows, a daemon run as the
//! shipped unit runs it (`postgres`, `NoNewPrivileges=yes`) must not reach
//! for `sudo` to become the user it already is, and the install guide's
//! grants (deploy/postgresql/grants.sql) must be enough for a monitor role
//! that is not a superuser to switch over and rejoin.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use pgwarden_testkit::{ClusterOptions, DaemonLayout, Host, Secret, StopMode, TestCluster};
use util::testbed::{assert_invariants, wait_healthy};
use util::{Env, Options};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn read(rel: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The strings of the JavaScript array `var NAME = [...]` in the polkit rule.
fn js_array(rule: &str, name: &str) -> Vec<String> {
    let start = rule
        .find(&format!("var {name} = ["))
        .unwrap_or_else(|| panic!("no `var {name}` in the rule"));
    let list = &rule[start..];
    let list = &list[list.find('[').unwrap() + 1..list.find(']').unwrap()];
    list.split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Every start/stop command of config/pgwarden.example.yaml is a plain
/// `systemctl VERB UNIT` that deploy/systemd/49-pgwarden.rules allows (no
/// sudo: the unit keeps NoNewPrivileges), and `is_running` is `systemctl
/// is-active`, which needs no permission.
#[test]
fn the_example_configs_commands_are_what_the_polkit_rule_allows() {
    let config = pgwarden_core::Config::parse_str(
        "pgwarden.example.yaml",
        &read("config/pgwarden.example.yaml"),
    )
    .unwrap();
    let rule = read("deploy/systemd/49-pgwarden.rules");
    let units = js_array(&rule, "units");
    let verbs = js_array(&rule, "verbs");
    assert!(rule.contains(r#"subject.user !== "postgres""#), "{rule}");
    let unit_file = read("deploy/systemd/pgwarden.service");
    assert!(
        unit_file.contains("\nUser=postgres\n") && unit_file.contains("\nNoNewPrivileges=yes\n")
    );

    let app = config
        .application
        .as_ref()
        .expect("the example fences the application");
    let mut commands = vec![
        ("application.stop", app.stop.clone()),
        ("application.start", app.start.clone()),
    ];
    for n in &config.nodes {
        for (what, argv) in [("start", &n.start), ("stop", &n.stop)] {
            let argv = argv
                .clone()
                .unwrap_or_else(|| panic!("nodes[{}].{what} is not set", n.name));
            commands.push((what, argv));
        }
    }
    assert_eq!(commands.len(), 6);
    for (what, argv) in commands {
        let allowed = argv.len() == 3
            && argv[0] == "systemctl"
            && verbs.contains(&argv[1])
            && units.contains(&argv[2]);
        assert!(allowed, "{what} {argv:?} is not allowed by 49-pgwarden.rules (units {units:?}, verbs {verbs:?})");
    }
    assert_eq!(app.is_running[..3], ["systemctl", "is-active", "--quiet"]);
    assert!(units.contains(&app.is_running[3]));
}

/// `nodes[].os_user: postgres` for a daemon that runs as postgres with
/// no_new_privs set (as under the shipped unit): `pg_ctl status` must run
/// directly. Through `sudo -n -u postgres` it could not run at all, and
/// check-config would say the node's state is unknown (exit 2).
#[test]
fn os_user_naming_the_daemons_own_user_needs_no_sudo() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "runs as root, as the suite does"
    );
    let cluster = TestCluster::start(ClusterOptions::default()).expect("build the cluster");
    let layout = DaemonLayout::for_tests(&cluster);
    let generated = pgwarden_testkit::write_pgwarden_config(&cluster, 0, &layout).unwrap();
    let mut text = std::fs::read_to_string(&generated).unwrap();

    // A directory of postgres's own, with copies of the secrets it reads.
    let dir = tempfile::tempdir().unwrap();
    let (uid, gid) = postgres_ids();
    let own = |p: &Path, mode: u32| {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    own(dir.path(), 0o700);
    for (i, s) in [
        Secret::ApiToken,
        Secret::MonitorPassword,
        Secret::ReplicationPassword,
    ]
    .into_iter()
    .enumerate()
    {
        let from = cluster.secret_file(s);
        let to = dir.path().join(format!("secret-{i}"));
        std::fs::copy(&from, &to).unwrap();
        own(&to, 0o600);
        text = text.replace(&from.display().to_string(), &to.display().to_string());
    }
    let state = pgwarden_testkit::state_dir(&cluster, 0)
        .display()
        .to_string();
    text = text.replace(&state, &dir.path().join("state").display().to_string());
    assert!(text.contains("    os_user: postgres\n"), "{text}");
    // The generated commands drop to postgres with runuser, which only root
    // may: as postgres they run directly.
    text = text.replace("\"runuser\", \"-u\", \"postgres\", \"--\", ", "");
    let config = dir.path().join("pgwarden.yaml");
    std::fs::write(&config, &text).unwrap();
    own(&config, 0o600);

    let out = Command::new("setpriv")
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--no-new-privs",
            "--",
        ])
        .arg(util::pgwarden_bin())
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{said}\n--- config ---\n{text}");
    assert!(
        said.contains("local PostgreSQL (pg-a): running (pg_ctl status)"),
        "{said}"
    );
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// docs/install.md step 2: the monitor role is no superuser, only what
/// deploy/postgresql/grants.sql grants. With the daemons restarted on it, a
/// switchover (fence, promote, ALTER SYSTEM, the slot)
/// and a rejoin by pg_rewind succeed, and the invariants hold.
#[test]
fn the_install_guides_grants_are_enough_without_superuser() {
    let (mut env, app) = Env::start_with_app(Options::default());
    env.wait_health(1, "healthy first", env.within_polls(3), |c, _| c == 200);
    let monitor = env.cluster.credentials().monitor_user.clone();
    assert_eq!(monitor, "pgwarden", "the role grants.sql names");
    env.cluster
        .psql(0, &format!("ALTER ROLE {monitor} NOSUPERUSER"))
        .unwrap();
    env.cluster
        .psql(0, &read("deploy/postgresql/grants.sql"))
        .unwrap();
    // Replicated: the standby's catalog says the same.
    pgwarden_testkit::poll_until(
        env.within_polls(3),
        "the standby to see the role without superuser",
        || {
            let v = env
                .cluster
                .psql(
                    1,
                    &format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{monitor}'"),
                )
                .ok()?;
            (v == "f").then_some(())
        },
    )
    .unwrap();
    // New sessions of the daemons, as the role is now.
    for i in 0..2 {
        env.restart_daemon(i, &[]);
    }
    env.wait_health(
        1,
        "healthy as a non-superuser",
        env.within_polls(5),
        |c, _| c == 200,
    );
    env.wait_all_polled();

    let r = env.daemons[1].post(
        "/v1/switchover?wait=true",
        r#"{"target": "pg-b", "reason": "install guide"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[1].log_text());
    env.assert_invariants(&app, 1);

    let r = env.daemons[1].post(
        "/v1/rejoin?wait=true",
        r#"{"node": "pg-a", "reason": "install guide"}"#,
        &env.token(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.daemons[0].log_text());
    assert_eq!(r.json()["facts"]["method"], "rewind", "{}", r.body);
    for i in 0..2 {
        env.wait_health(
            i,
            "healthy after the rejoin",
            env.within_polls(5),
            |c, _| c == 200,
        );
    }
    env.assert_invariants(&app, 1);
}

/// The `s/^OLD$/NEW/` edits of the guide's `sed -i` line for pg-b, read
/// from docs/install.md itself, so the guide and this test cannot drift.
fn guide_edits_for_pg_b() -> Vec<(String, String)> {
    let guide = read("docs/install.md");
    let line = guide
        .lines()
        .find(|l| l.starts_with("sed -i ") && l.contains("local_node: pg-b"))
        .expect("docs/install.md's sed line for pg-b");
    let edits: Vec<(String, String)> = line
        .split("'s/^")
        .skip(1)
        .map(|e| {
            let (old, rest) = e.split_once("$/").expect("s/^OLD$/NEW/");
            let new = rest.split_once("/'").expect("s/^OLD$/NEW/").0;
            (old.to_owned(), new.to_owned())
        })
        .collect();
    assert_eq!(edits.len(), 2, "{line}");
    edits
}

/// The guide's config (the example, as pg-a; with the guide's two edits, as
/// pg-b) passes `check-config` with no warning: pg-a beside a running
/// PostgreSQL, pg-b before its first clone (an empty data directory). Only
/// the paths of this machine replace the guide's (secrets, state_dir,
/// data_dir).
#[test]
fn the_install_guides_config_passes_check_config_on_both_hosts() {
    let example = read("config/pgwarden.example.yaml");
    let mut pg_b = example.clone();
    for (old, new) in guide_edits_for_pg_b() {
        let before = pg_b.clone();
        pg_b = pg_b.replacen(&format!("\n{old}\n"), &format!("\n{new}\n"), 1);
        assert_ne!(
            pg_b, before,
            "the guide's edit {old:?} matches no line of the example"
        );
    }
    assert!(pg_b.contains("\nlocal_node: pg-b\n") && pg_b.contains("\nlisten: 10.0.0.2:8008\n"));

    let cluster = TestCluster::start(ClusterOptions::default()).expect("build the cluster");
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("main");
    std::fs::create_dir(&empty).unwrap();
    let here = |text: &str, data_dir: &Path| {
        let mut t = text.replace(
            "/var/lib/postgresql/15/main",
            &data_dir.display().to_string(),
        );
        t = t.replace(
            "/var/lib/pgwarden",
            &dir.path().join("state").display().to_string(),
        );
        // The application the guide's step 5 fills in: its database.cfg.
        let inmanta_d = dir.path().join("inmanta.d");
        std::fs::create_dir_all(&inmanta_d).unwrap();
        let cfg = inmanta_d.join("database.cfg");
        std::fs::write(&cfg, "[database]\nhost = 10.0.0.1\nport = 5432\n").unwrap();
        t = t.replace(
            "/etc/inmanta/inmanta.d/database.cfg",
            &cfg.display().to_string(),
        );
        for f in ["api.token", "monitor.password", "replication.password"] {
            let path = dir.path().join(f);
            std::fs::write(&path, "s3cret").unwrap();
            t = t.replace(&format!("/etc/pgwarden/{f}"), &path.display().to_string());
        }
        let live = |l: &&str| !l.trim_start().starts_with('#') && l.contains("/etc/pgwarden/");
        assert_eq!(t.lines().find(live), None, "a path of the guide left");
        t
    };
    for (host, text, data_dir, says) in [
        (
            "pg-a",
            &example,
            cluster.node(0).data_dir.clone(),
            "local PostgreSQL (pg-a): running (pg_ctl status)".to_owned(),
        ),
        (
            "pg-b",
            &pg_b,
            empty.clone(),
            format!(
                "local PostgreSQL (pg-b): no cluster yet: {} is empty",
                empty.display()
            ),
        ),
    ] {
        let config = dir.path().join(format!("{host}.yaml"));
        std::fs::write(&config, here(text, &data_dir)).unwrap();
        let out = Command::new(util::pgwarden_bin())
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{host}: {stdout}{stderr}");
        assert!(
            stdout.contains(&format!("OK (cluster inmanta, local node {host}, 2 nodes)")),
            "{stdout}"
        );
        assert!(stdout.contains(&says), "{host}: {stdout}");
        assert!(!stderr.contains("warning"), "{host}: {stderr}");
    }
}

/// The guide's firewall parses (`nft -c` checks it against the kernel
/// without loading it).
#[test]
fn the_install_guides_firewall_parses() {
    let nft = util::tool("nft", "nftables");
    let file = format!("{ROOT}/deploy/nftables/pgwarden.nft");
    let out = Command::new(nft)
        .args(["-c", "-f", &file])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = read("deploy/nftables/pgwarden.nft");
    for port in [
        "tcp dport 8008 ip saddr",
        "tcp dport 5432 ip saddr",
        "tcp dport { 5432, 8008 } drop",
    ] {
        assert!(text.contains(port), "{port}");
    }
}

/// docs/install.md on two hosts of the testbed (daemons as `postgres`, as
/// the shipped unit; the operator on host c): the monitor role with only the
/// guide's grants (step 2); pg-b's cluster stopped and its data directory
/// emptied (step 1); both daemons started through the unit's check-config,
/// which must pass pg-b's empty directory (step 5); `pgwarden rejoin pg-b`
/// on host a with nothing but /etc/pgwarden/pgwarden.yaml clones the first
/// standby; `pgwarden status` on each host, and from c with PGWARDEN_URL,
/// exits 0 (step 6). The commands are the testbed's (pg_ctl, not systemctl:
/// no systemd in a network namespace).
#[test]
fn the_install_guide_on_two_hosts_clones_the_first_standby_and_status_agrees() {
    let tb = util::testbed::start(util::testbed::options());
    wait_healthy(&tb, "healthy first");
    let monitor = tb.credentials().monitor_user.clone();
    tb.psql(0, &format!("ALTER ROLE {monitor} NOSUPERUSER"))
        .unwrap();
    tb.psql(0, &read("deploy/postgresql/grants.sql")).unwrap();
    // A fresh pair has no synchronous standby yet: commits must not wait for pg-b.
    tb.set_synchronous(0, false).unwrap();

    tb.kill_daemon(Host::B);
    tb.stop_node(1, StopMode::Fast).unwrap();
    let data = tb.node(1).data_dir.clone();
    for entry in std::fs::read_dir(&data).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    // The copy goes into a new directory beside the data directory, renamed
    // over it: its parent must be postgres's, as Debian's
    // /var/lib/postgresql/15 is (the testbed's is root's).
    let (uid, _) = postgres_ids();
    std::os::unix::fs::chown(data.parent().unwrap(), Some(uid), None).unwrap();
    // New sessions as the role is now; start_daemon runs check-config first,
    // as the unit's ExecStartPre.
    tb.kill_daemon(Host::A);
    tb.start_daemon(Host::A, &[]).unwrap();
    tb.start_daemon(Host::B, &[])
        .unwrap_or_else(|e| panic!("{e}"));

    let pgwarden = |host: Host, args: &[&str], env: &[(&str, &str)]| {
        let out = tb
            .host_command(host, &tb.pgwarden_bin())
            .args(args)
            .env_remove("PGWARDEN_URL")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = pgwarden(Host::B, &["check-config"], &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("local PostgreSQL (pg-b): no cluster yet"),
        "{text}"
    );

    let (code, text) = pgwarden(Host::A, &["rejoin", "pg-b", "--yes"], &[]);
    assert_eq!(
        code,
        Some(0),
        "{text}\n--- b ---\n{}",
        tb.daemon_log_text(Host::B)
    );
    assert!(text.contains("a first clone"), "{text}");
    assert!(
        text.contains("pg-b is the synchronous standby of pg-a"),
        "{text}"
    );

    wait_healthy(&tb, "healthy with the cloned standby");
    for host in [Host::A, Host::B] {
        let (code, text) = pgwarden(host, &["status"], &[]);
        assert_eq!(code, Some(0), "{host:?}: {text}");
        let me = tb.node(host.node().unwrap()).name.clone();
        assert!(text.contains(&format!("seen from {me}: healthy")), "{text}");
        let pg_b = text
            .lines()
            .find(|l| l.starts_with("pg-b "))
            .unwrap_or_default();
        assert!(
            pg_b.contains("streaming") && pg_b.ends_with("sync"),
            "{text}"
        );
    }
    let url = tb.api_url(Host::B);
    let (code, text) = pgwarden(Host::C, &["status"], &[("PGWARDEN_URL", &url)]);
    assert_eq!(code, Some(0), "{text}");
    assert_invariants(&tb, 0, Host::B, &[]);
}
