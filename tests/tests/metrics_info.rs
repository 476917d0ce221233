//! The metrics that say what runs and whether it is current, scraped from a
//! real daemon: `pgwarden_node_info` (server version and system identifier
//! as PostgreSQL reports them), `pgwarden_last_poll_timestamp_seconds` (the
//! wall clock of the last successful poll: it advances while polls succeed
//! and stops when they fail), the `process_*` metrics, and the `revision`
//! of `pgwarden_build_info`.

mod util;

use std::time::{SystemTime, UNIX_EPOCH};

use pgwarden_testkit::{poll_until, StopMode};
use util::{metric, Env};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The labels of the first `name` series in the metrics text.
fn labels_of(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| l[name.len() + 1..l.find('}').unwrap()].to_owned())
}

#[test]
fn node_info_last_poll_process_and_revision_are_exported_with_sane_values() {
    let started = now();
    let env = Env::start();
    env.wait_all_polled();
    let d = &env.daemons[0];
    let m = d.metrics();
    let v = |m: &str, name: &str, labels: &[(&str, &str)]| {
        metric(m, name, labels).unwrap_or_else(|| panic!("{name}{labels:?} missing in\n{m}"))
    };

    // node_info: what PostgreSQL itself says, for both nodes; both nodes
    // are one cluster, so one system identifier.
    let mut ids = Vec::new();
    for (i, node) in ["pg-a", "pg-b"].into_iter().enumerate() {
        let version = env.cluster.psql(i, "SHOW server_version_num").unwrap();
        let id = env
            .cluster
            .psql(i, "SELECT system_identifier FROM pg_control_system()")
            .unwrap();
        assert!(version.starts_with("15"), "PostgreSQL 15: {version}");
        let labels = [
            ("node", node),
            ("server_version", version.as_str()),
            ("system_identifier", id.as_str()),
        ];
        assert_eq!(v(&m, "pgwarden_node_info", &labels), 1.0);
        ids.push(id);
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(
        m.lines()
            .filter(|l| l.starts_with("pgwarden_node_info{"))
            .count(),
        2,
        "one node_info per node:\n{m}"
    );

    // last_poll_timestamp_seconds: a unix time between the test's start and
    // now, advancing with every poll.
    let mut last = [0.0; 2];
    for (i, node) in ["pg-a", "pg-b"].into_iter().enumerate() {
        let t = v(
            &m,
            "pgwarden_last_poll_timestamp_seconds",
            &[("node", node)],
        );
        assert!(
            t >= started - 1.0 && t <= now() + 1.0,
            "last poll of {node} at {t}, test started at {started}"
        );
        last[i] = t;
    }
    poll_until(env.within_polls(3), "the last poll time to advance", || {
        let m = d.metrics();
        let t = metric(
            &m,
            "pgwarden_last_poll_timestamp_seconds",
            &[("node", "pg-a")],
        )?;
        (t > last[0]).then_some(())
    })
    .unwrap();

    // The standby stops: its last successful poll stays where it was, the
    // primary's goes on.
    env.cluster.stop_node(1, StopMode::Fast).unwrap();
    let frozen = poll_until(env.within_polls(6), "pg-b down", || {
        let m = d.metrics();
        (metric(&m, "pgwarden_node_up", &[("node", "pg-b")])? == 0.0).then(|| {
            metric(
                &m,
                "pgwarden_last_poll_timestamp_seconds",
                &[("node", "pg-b")],
            )
            .unwrap()
        })
    })
    .unwrap();
    poll_until(env.within_polls(3), "pg-a polled after pg-b froze", || {
        let m = d.metrics();
        let a = metric(
            &m,
            "pgwarden_last_poll_timestamp_seconds",
            &[("node", "pg-a")],
        )?;
        (a > frozen + env.layout.poll_interval.as_secs_f64()).then_some(())
    })
    .unwrap();
    let m = d.metrics();
    assert_eq!(
        v(
            &m,
            "pgwarden_last_poll_timestamp_seconds",
            &[("node", "pg-b")]
        ),
        frozen,
        "failed polls must not move the last successful poll"
    );
    env.cluster.start_node(1).unwrap();

    // process_*: unprefixed, as every dashboard expects, and plausible.
    let rss = v(&m, "process_resident_memory_bytes", &[]);
    assert!(rss > 1e6 && rss < 1e9, "RSS {rss}");
    let fds = v(&m, "process_open_fds", &[]);
    let max_fds = v(&m, "process_max_fds", &[]);
    assert!(fds >= 3.0 && fds < max_fds, "fds {fds} of {max_fds}");
    let start = v(&m, "process_start_time_seconds", &[]);
    assert!(
        start >= started - 60.0 && start <= now(),
        "started at {start}"
    );
    assert!(v(&m, "process_cpu_seconds_total", &[]) >= 0.0);
    assert!(
        !m.contains("pgwarden_process_"),
        "process metrics must not carry the pgwarden_ prefix"
    );

    // build_info: the version, and the commit the binary was built from
    // (`unknown` outside a git checkout).
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let revision = git.as_deref().unwrap_or("unknown");
    let labels = labels_of(&m, "pgwarden_build_info").expect("build_info");
    assert!(
        labels.contains(&format!("revision=\"{revision}\""))
            && labels.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "build_info{{{labels}}}, expected revision {revision}"
    );
    drop(env);
}
