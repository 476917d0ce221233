//! Tests of the testkit against real PostgreSQL: the cluster it builds, the stand-in
//! application, and the binary search's error message.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden_testkit::standin::{self, StandinOptions};
use pgwarden_testkit::{
    find_pg_bin_dir_in, pid_alive, poll_until, postgres_processes_in, ClusterOptions, Secret,
    StopMode, TestCluster,
};

fn start() -> TestCluster {
    let t = Instant::now();
    let c = TestCluster::start(ClusterOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "cluster started in {:?} at {}",
        t.elapsed(),
        c.dir().display()
    );
    c
}

#[test]
fn builds_a_synchronous_pair() {
    let c = start();
    assert_eq!(c.psql(0, "SELECT pg_is_in_recovery()").unwrap(), "f");
    assert_eq!(c.psql(1, "SELECT pg_is_in_recovery()").unwrap(), "t");
    assert_eq!(
        c.psql(
            0,
            "SELECT application_name, state, sync_state FROM pg_stat_replication"
        )
        .unwrap(),
        "inmanta|streaming|sync"
    );
    assert_eq!(
        c.psql(
            0,
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'replication'"
        )
        .unwrap(),
        "t"
    );

    // A write as the application role, over TCP with its password, commits (which, with
    // a synchronous standby, means the standby has it) and shows up on the standby.
    let cr = c.credentials();
    c.psql_tcp(
        0,
        &cr.app_user,
        &cr.app_password,
        &cr.app_db,
        "CREATE TABLE t (x int); INSERT INTO t VALUES (42)",
    )
    .unwrap();
    poll_until(Duration::from_secs(10), "the row to reach pg-b", || {
        (c.psql_db(1, "inmanta", "SELECT x FROM t").ok()? == "42").then_some(())
    })
    .unwrap();

    // pgwarden's role can log in and is a superuser.
    assert_eq!(
        c.psql_tcp(
            0,
            &cr.monitor_user,
            &cr.monitor_password,
            "postgres",
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        .unwrap(),
        "t"
    );

    // The standby's primary_conninfo keeps the password (pgwarden must redact it).
    let conninfo = c.psql(1, "SHOW primary_conninfo").unwrap();
    assert!(conninfo.contains(&format!("password={}", cr.replication_password)));
    assert!(conninfo.contains("application_name=inmanta"));

    // Secret files: 0600, no trailing newline.
    for (which, value) in [
        (Secret::MonitorPassword, cr.monitor_password.as_str()),
        (
            Secret::ReplicationPassword,
            cr.replication_password.as_str(),
        ),
        (Secret::ApiToken, c.api_token()),
    ] {
        let path = c.secret_file(which);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), value);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }

    let dir = c.dir().to_path_buf();
    let pids: Vec<i32> = (0..2).map(|i| c.postmaster_pid(i).unwrap()).collect();
    let data_dirs: Vec<PathBuf> = c.nodes().iter().map(|n| n.data_dir.clone()).collect();
    assert!(pids.iter().all(|&p| pid_alive(p)));
    drop(c);
    assert!(!dir.exists(), "{} still exists", dir.display());
    for (pid, data) in pids.iter().zip(&data_dirs) {
        assert!(!pid_alive(*pid), "postmaster {pid} survived the drop");
        assert_eq!(postgres_processes_in(data), Vec::<i32>::new());
    }
}

#[test]
fn standin_writes_heartbeats() {
    let c = start();
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("database.cfg");
    let acks = work.path().join("acks");
    let cr = c.credentials();
    let a = c.node(0);
    standin::write_database_cfg(
        &cfg,
        &a.host,
        a.port,
        &cr.app_db,
        &cr.app_user,
        &cr.app_password,
    )
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut opts = StandinOptions::new(&cfg, &acks);
    opts.stop = Some(stop.clone());
    let runner = std::thread::spawn(move || standin::run(opts));

    let wait_acks = |n: usize| {
        poll_until(
            Duration::from_secs(30),
            &format!("{n} acknowledged heartbeats"),
            || {
                let a = standin::read_acks(&acks);
                (a.len() >= n).then_some(a)
            },
        )
    };
    let mut acked = wait_acks(5);
    // A restart of the primary breaks its connection; it must reconnect and go on.
    if acked.is_ok() {
        c.stop_node(0, StopMode::Fast).unwrap();
        c.start_node(0).unwrap();
        acked = wait_acks(acked.unwrap().len() + 3);
    }
    stop.store(true, Ordering::SeqCst);
    runner.join().unwrap().unwrap();
    let acked = acked.unwrap();
    let acked_final = standin::read_acks(&acks);
    assert!(acked_final.len() >= acked.len());
    assert_eq!(
        acked_final,
        (1..=acked_final.len() as i64).collect::<Vec<_>>()
    );

    let stored: Vec<i64> = c
        .psql_db(0, "inmanta", "SELECT id FROM heartbeat ORDER BY id")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    for id in &acked_final {
        assert!(
            stored.contains(id),
            "acked heartbeat {id} missing from {stored:?}"
        );
    }
}

#[test]
fn crash_and_restart_a_node() {
    let c = start();
    let pid = c.postmaster_pid(0).unwrap();
    c.kill_postmaster(0).unwrap();
    assert!(!pid_alive(pid));
    assert!(!c.is_running(0));
    assert!(c.node_processes(0).is_empty());
    // Stopping a node that is already down is fine.
    c.stop_node(0, StopMode::Fast).unwrap();

    c.start_node(0).unwrap();
    assert_eq!(c.psql(0, "SELECT 1").unwrap(), "1");
    c.wait_for_standby(0, true, Duration::from_secs(30))
        .unwrap();

    c.stop_node(1, StopMode::Fast).unwrap();
    c.stop_node(1, StopMode::Fast).unwrap();
    assert!(!c.is_running(1));
    c.promote(0).unwrap_err(); // not a standby: pg_ctl refuses
    c.start_node(1).unwrap();
    c.wait_for_standby(0, true, Duration::from_secs(30))
        .unwrap();
}

#[test]
fn missing_binaries_error_lists_where_it_looked() {
    let bogus = Path::new("/nonexistent/pgwarden-bogus-bin");
    let path_dirs = vec![PathBuf::from("/nonexistent/on-path")];
    let root = Path::new("/nonexistent/usr-lib-postgresql");
    let err = find_pg_bin_dir_in(Some(bogus), &path_dirs, root).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/pgwarden-bogus-bin"), "{msg}");
    assert!(msg.contains("/nonexistent/on-path"), "{msg}");
    assert!(
        msg.contains("/nonexistent/usr-lib-postgresql/*/bin"),
        "{msg}"
    );
    assert!(msg.contains("apt-get install postgresql-15"), "{msg}");

    // And with nothing but an empty search: still says what to do.
    let msg = find_pg_bin_dir_in(None, &[], root).unwrap_err().to_string();
    assert!(msg.contains("apt-get install postgresql-15"), "{msg}");
}

#[test]
fn kept_dir_survives_drop_but_servers_stop() {
    let parent = tempfile::tempdir().unwrap();
    // The postgres user must be able to traverse the parent when we are root.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = parent.path().join("demo");
    let opts = ClusterOptions {
        dir: Some(dir.clone()),
        synchronous: false,
        ..ClusterOptions::default()
    };
    let c = TestCluster::start(opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.psql(0, "SELECT sync_state FROM pg_stat_replication")
            .unwrap(),
        "async"
    );
    let pid = c.postmaster_pid(1).unwrap();
    drop(c);
    assert!(dir.join("pg-a/PG_VERSION").exists());
    assert!(!pid_alive(pid));

    // Reusing the directory is refused with a clear message.
    let err = TestCluster::start(ClusterOptions {
        dir: Some(dir.clone()),
        ..ClusterOptions::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("already exists and is not empty"), "{err}");
}

#[test]
fn failed_start_explains_and_cleans_up() {
    let err = TestCluster::start(ClusterOptions {
        slot: "Not A Valid Slot".into(),
        ..ClusterOptions::default()
    })
    .unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("while creating roles, database and replication slot"),
        "{msg}"
    );
    assert!(msg.contains("psql"), "{msg}");
    assert!(msg.contains("replication slot name"), "{msg}");
    // The psql command line names the socket dir inside the temp dir: it must be gone.
    let dir = msg
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/sockets/pg-a"))
        .expect("socket dir in the message");
    assert!(!Path::new(dir).exists(), "{dir} was not removed");
}
