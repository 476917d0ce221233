//! The trips of a first install as shipped: the example config's commands
//! must be the ones the shipped polkit rule allows, and a daemon run as the
//! shipped unit runs it (`postgres`, `NoNewPrivileges=yes`) must not reach
//! for `sudo` to become the user it already is.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use pgwarden_testkit::{ClusterOptions, DaemonLayout, Secret, TestCluster};

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
