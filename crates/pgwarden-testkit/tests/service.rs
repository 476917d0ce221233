//! The stand-in as a service (`standin-ctl start/stop/is-running`) against real
//! PostgreSQL, driven the way pgwarden drives it: as external commands.
//!
//! There is no pgwarden binary here, so this test binary plays it. `ctl` spawns
//! `EXE APP_ARGS... --config C --ack-file A`; with EXE = this test binary and APP_ARGS =
//! `--ignored --exact standin_child_entry --nocapture --test-threads=1 -- standin-app`,
//! libtest runs only the ignored test `standin_child_entry` and takes everything after
//! `--` as further name filters, which match no test (`--exact`). That "test" reads the
//! real argv, finds `standin-app --config C --ack-file A` and becomes the stand-in
//! process (`standin::run_main`, then `process::exit` with its status). The ctl commands
//! themselves run the same way through `standin_ctl_entry`
//! (`... -- standin-ctl stop --dir D [--timeout-ms N]`), so each `start`/`stop` is a
//! short-lived process of its own, as under pgwarden: exit statuses and environment
//! (`STANDIN_FAIL_STOP`) are per command, and the app must survive its ctl parent.
//! Run without those arguments (e.g. `--run-ignored all`), both entries return at once.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden_testkit::service::{self, CtlAction, CtlOptions, EXIT_NOT_RUNNING};
use pgwarden_testkit::standin::{self, StandinOptions, EXIT_DB_UNREACHABLE};
use pgwarden_testkit::{free_port, pid_alive, poll_until, ClusterOptions, KitError, TestCluster};

const APP_ENTRY: &str = "standin_child_entry";
const CTL_ENTRY: &str = "standin_ctl_entry";

/// The arguments after `--` of this process, when it was started as a child entry.
fn child_args(marker: &str) -> Option<Vec<String>> {
    let args: Vec<String> = std::env::args().collect();
    let dash = args.iter().position(|a| a == "--")?;
    let rest = &args[dash + 1..];
    (rest.first()? == marker).then(|| rest[1..].to_vec())
}

/// The value after `flag` in `args`.
fn flag(args: &[String], flag: &str) -> Option<String> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).cloned()
}

/// libtest arguments that run only the ignored entry `name`, then `-- marker`.
fn entry_args(name: &str, marker: &str) -> Vec<String> {
    [
        "--ignored",
        "--exact",
        name,
        "--nocapture",
        "--test-threads=1",
        "--",
        marker,
    ]
    .map(String::from)
    .to_vec()
}

/// Not a test: the stand-in application process that `ctl start` spawns.
#[test]
#[ignore = "entry point of the stand-in child process"]
fn standin_child_entry() {
    let Some(args) = child_args("standin-app") else {
        return;
    };
    let config = flag(&args, "--config").expect("--config");
    let acks = flag(&args, "--ack-file").expect("--ack-file");
    std::process::exit(standin::run_main(StandinOptions::new(config, acks)));
}

/// Not a test: a `standin-ctl ACTION --dir D [--timeout-ms N]` command process.
#[test]
#[ignore = "entry point of the standin-ctl child process"]
fn standin_ctl_entry() {
    let Some(args) = child_args("standin-ctl") else {
        return;
    };
    let action: CtlAction = args[0].parse().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut opts = CtlOptions::new(exe, flag(&args, "--dir").expect("--dir"));
    opts.app_args = entry_args(APP_ENTRY, "standin-app");
    if let Some(ms) = flag(&args, "--timeout-ms") {
        opts.stop_timeout = Duration::from_millis(ms.parse().unwrap());
    }
    std::process::exit(service::ctl(action, &opts));
}

/// Runs `standin-ctl action --dir dir` as a child process.
fn ctl(action: &str, dir: &Path, configure: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(entry_args(CTL_ENTRY, "standin-ctl"))
        .arg(action)
        .arg("--dir")
        .arg(dir)
        .env_remove(service::FAIL_STOP_ENV);
    configure(&mut cmd);
    let t = Instant::now();
    let out = cmd.output().unwrap();
    eprintln!(
        "standin-ctl {action}: {} in {:?}\n  stdout: {}\n  stderr: {}",
        out.status,
        t.elapsed(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

fn code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {:?}", out.status.signal()))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn is_running(dir: &Path) -> i32 {
    code(&ctl("is-running", dir, |_| {}))
}

/// Kills the app of `dir` (if any) when dropped, so no stand-in outlives a failed test.
struct Service {
    dir: PathBuf,
    _temp: tempfile::TempDir,
}

impl Service {
    fn new() -> Service {
        let temp = tempfile::tempdir().unwrap();
        Service {
            dir: temp.path().join("app"),
            _temp: temp,
        }
    }

    fn pid(&self) -> Option<i32> {
        service::running_pid(&self.dir)
    }

    fn acks(&self) -> Vec<i64> {
        standin::read_acks(&self.dir.join(service::DEFAULT_ACK_FILE))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(service::LOG_FILE)).unwrap_or_default()
    }

    fn write_cfg(&self, c: &TestCluster, node: usize) {
        std::fs::create_dir_all(&self.dir).unwrap();
        write_cfg(&self.dir.join(service::DEFAULT_CONFIG_FILE), c, node);
    }

    fn wait_acks(&self, n: usize) -> Vec<i64> {
        poll_until(
            Duration::from_secs(30),
            &format!("{n} acknowledged heartbeats"),
            || {
                let a = self.acks();
                (a.len() >= n).then_some(a)
            },
        )
        .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", self.log()))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn write_cfg(path: &Path, c: &TestCluster, node: usize) {
    let cr = c.credentials();
    let n = c.node(node);
    standin::write_database_cfg(
        path,
        &n.host,
        n.port,
        &cr.app_db,
        &cr.app_user,
        &cr.app_password,
    )
    .unwrap();
}

fn start_cluster() -> TestCluster {
    let t = Instant::now();
    let c = TestCluster::start(ClusterOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("cluster started in {:?}", t.elapsed());
    c
}

/// Sessions of the application role on node `i`.
fn app_sessions(c: &TestCluster, i: usize) -> usize {
    c.psql(
        i,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'inmanta'",
    )
    .unwrap()
    .parse()
    .unwrap()
}

fn wait_no_app_session(c: &TestCluster, i: usize) {
    poll_until(
        Duration::from_secs(30),
        "the application's sessions to disappear from pg_stat_activity",
        || (app_sessions(c, i) == 0).then_some(()),
    )
    .unwrap();
}

/// Acks are 1..=n and all of them are in the primary's heartbeat table.
fn check_acks(c: &TestCluster, acks: &[i64]) {
    assert_eq!(acks, (1..=acks.len() as i64).collect::<Vec<_>>());
    let stored: Vec<i64> = c
        .psql_db(0, "inmanta", "SELECT id FROM heartbeat ORDER BY id")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    for id in acks {
        assert!(stored.contains(id), "acked {id} missing from {stored:?}");
    }
}

#[test]
fn start_is_running_stop() {
    let c = start_cluster();
    let svc = Service::new();
    // Nothing there yet: not running, and stopping is a no-op.
    assert_eq!(is_running(&svc.dir), EXIT_NOT_RUNNING);
    assert_eq!(code(&ctl("stop", &svc.dir, |_| {})), 0);

    svc.write_cfg(&c, 0);
    assert_eq!(code(&ctl("start", &svc.dir, |_| {})), 0);
    let pid = svc.pid().expect("a live pid in the pid file");
    // Detached: its own session, and it outlived the ctl process that spawned it.
    // SAFETY: getsid has no preconditions.
    assert_eq!(unsafe { libc::getsid(pid) }, pid);
    assert_eq!(is_running(&svc.dir), 0);
    // Starting a running service changes nothing.
    assert_eq!(code(&ctl("start", &svc.dir, |_| {})), 0);
    assert_eq!(svc.pid(), Some(pid));

    let before = svc.wait_acks(5).len();
    svc.wait_acks(before + 5);
    assert_eq!(app_sessions(&c, 0), 1);

    let out = ctl("stop", &svc.dir, |_| {});
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // SIGTERM suffices: stop never fell back to SIGKILL (what it does, and
    // logs, after its timeout), however long the machine took.
    assert!(
        !stderr(&out).contains("sending SIGKILL"),
        "SIGTERM suffices: {}",
        stderr(&out)
    );
    assert!(!pid_alive(pid));
    assert!(!svc.dir.join(service::PID_FILE).exists());
    assert_eq!(is_running(&svc.dir), EXIT_NOT_RUNNING);
    wait_no_app_session(&c, 0);
    let log = svc.log();
    assert!(log.contains("connected to 127.0.0.1:"), "{log}");
    assert!(log.contains("standin-ctl stop: SIGTERM"), "{log}");
    assert!(!log.contains("standin-ctl stop: SIGKILL"), "{log}");
    check_acks(&c, &svc.acks());

    // A second start continues the numbering where the table left off.
    let acked = svc.acks().len();
    assert_eq!(code(&ctl("start", &svc.dir, |_| {})), 0);
    svc.wait_acks(acked + 3);
    assert_eq!(code(&ctl("stop", &svc.dir, |_| {})), 0);
    check_acks(&c, &svc.acks());
}

#[test]
fn unreachable_database_ends_the_app_with_status_4() {
    // Become the subreaper of our descendants: when the ctl process exits, its orphaned
    // app becomes our child, and waitpid gives us the app's real exit status.
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes this process's attribute.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let svc = Service::new();
    std::fs::create_dir_all(&svc.dir).unwrap();

    // Without a config the app fails at once, and start reports it with the log tail.
    let out = ctl("start", &svc.dir, |_| {});
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("exited right after starting"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("database.cfg"), "{}", stderr(&out));
    assert_eq!(is_running(&svc.dir), EXIT_NOT_RUNNING);

    // Nothing listens on the port: the app retries for 3 s, so start itself succeeds
    // (Type=simple), and the app then exits with status 4. Not before it retried (the
    // lower bound); no upper bound, which a loaded two-core machine would break.
    let port = free_port();
    standin::write_database_cfg(
        &svc.dir.join(service::DEFAULT_CONFIG_FILE),
        "127.0.0.1",
        port,
        "inmanta",
        "inmanta",
        "x",
    )
    .unwrap();
    let t = Instant::now();
    assert_eq!(code(&ctl("start", &svc.dir, |_| {})), 0);
    let pid = svc.pid().expect("running during its startup window");
    let status = poll_until(Duration::from_secs(15), "the app to exit", || {
        let mut status = 0;
        // SAFETY: waitpid on our (adopted) child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid: {}", std::io::Error::last_os_error());
        (r == pid).then_some(status)
    })
    .unwrap();
    let took = t.elapsed();
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), EXIT_DB_UNREACHABLE);
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    assert_eq!(is_running(&svc.dir), EXIT_NOT_RUNNING);
    let log = svc.log();
    assert!(log.contains("exiting with status 4"), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{port}")), "{log}");
    // Stopping a dead service is fine and clears the stale pid file.
    assert_eq!(code(&ctl("stop", &svc.dir, |_| {})), 0);
    assert!(!svc.dir.join(service::PID_FILE).exists());
}

#[test]
fn failing_stop_leaves_the_app_running() {
    let c = start_cluster();
    let svc = Service::new();
    svc.write_cfg(&c, 0);
    assert_eq!(code(&ctl("start", &svc.dir, |_| {})), 0);
    let pid = svc.pid().unwrap();
    let acked = svc.wait_acks(3).len();

    let out = ctl("stop", &svc.dir, |cmd| {
        cmd.env(service::FAIL_STOP_ENV, "1");
    });
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("refusing to stop (STANDIN_FAIL_STOP)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(is_running(&svc.dir), 0);
    assert_eq!(svc.pid(), Some(pid));
    svc.wait_acks(acked + 5);
    assert_eq!(app_sessions(&c, 0), 1);

    assert_eq!(code(&ctl("stop", &svc.dir, |_| {})), 0);
    wait_no_app_session(&c, 0);
    check_acks(&c, &svc.acks());
}

#[test]
fn app_ignoring_sigterm_is_killed() {
    let c = start_cluster();
    let svc = Service::new();
    svc.write_cfg(&c, 0);
    assert_eq!(code(&ctl("start", &svc.dir, |_| {})), 0);
    let pid = svc.pid().unwrap();
    svc.wait_acks(3);
    std::fs::write(svc.dir.join(service::IGNORE_SIGTERM_FLAG), "").unwrap();

    let t = Instant::now();
    let out = ctl("stop", &svc.dir, |cmd| {
        cmd.args(["--timeout-ms", "1500"]);
    });
    let took = t.elapsed();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("sending SIGKILL"), "{}", stderr(&out));
    // SIGKILL only after the whole --timeout-ms; how soon after is no
    // behaviour of stop's, only of the machine's load.
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(!pid_alive(pid));
    assert_eq!(is_running(&svc.dir), EXIT_NOT_RUNNING);
    let log = svc.log();
    assert!(log.contains("ignoring SIGTERM"), "{log}");
    // The backend notices its client is gone (the kernel closed the socket).
    wait_no_app_session(&c, 0);
    check_acks(&c, &svc.acks());
}

#[test]
fn standin_needs_a_writable_primary_at_startup_only() {
    let c = start_cluster();
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("database.cfg");
    let acks = work.path().join("acks");
    let run = |cfg: &Path| {
        let t = Instant::now();
        let r = standin::run(StandinOptions::new(cfg, &acks));
        (r, t.elapsed())
    };

    // Nothing listening.
    standin::write_database_cfg(&cfg, "127.0.0.1", free_port(), "inmanta", "inmanta", "x").unwrap();
    let (r, took) = run(&cfg);
    assert_eq!(standin::exit_code(&r), EXIT_DB_UNREACHABLE, "{r:?}");
    assert!(matches!(r, Err(KitError::DbUnreachable { .. })));
    // It retried (3 s) before giving up; no upper bound (a loaded machine).
    assert!(took >= Duration::from_millis(2500), "{took:?}");

    // The standby: reachable, but read-only.
    write_cfg(&cfg, &c, 1);
    let (r, _) = run(&cfg);
    let msg = r.as_ref().unwrap_err().to_string();
    assert_eq!(standin::exit_code(&r), EXIT_DB_UNREACHABLE, "{msg}");
    assert!(msg.contains("in recovery"), "{msg}");
    assert!(standin::read_acks(&acks).is_empty());

    // Started against the primary, it keeps going whatever comes later.
    write_cfg(&cfg, &c, 0);
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
                (a.len() >= n).then_some(a.len())
            },
        )
        .unwrap()
    };
    let acked = wait_acks(3);

    // Pointed at the standby and cut off: it reconnects to the standby again and again
    // (sessions pile up there), but writes nothing, and does not give up after 3 s.
    write_cfg(&cfg, &c, 1);
    let sessions = |i: usize| -> i64 {
        c.psql(
            i,
            "SELECT sessions FROM pg_stat_database WHERE datname = 'inmanta'",
        )
        .unwrap()
        .parse()
        .unwrap()
    };
    let standby_sessions = sessions(1);
    c.psql(
        0,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'inmanta'",
    )
    .unwrap();
    let t = Instant::now();
    poll_until(
        Duration::from_secs(30),
        "the stand-in to retry the standby for more than its startup window",
        || {
            (t.elapsed() > standin::STARTUP_TIMEOUT + Duration::from_secs(1)
                && sessions(1) >= standby_sessions + 10)
                .then_some(())
        },
    )
    .unwrap();
    // Once it retries the standby, nothing more is acknowledged however often it tries.
    let stalled = standin::read_acks(&acks).len();
    let seen = sessions(1);
    poll_until(Duration::from_secs(30), "five more attempts", || {
        (sessions(1) >= seen + 5).then_some(())
    })
    .unwrap();
    assert_eq!(standin::read_acks(&acks).len(), stalled);
    assert!(stalled >= acked);
    assert!(!runner.is_finished(), "the stand-in gave up");

    // Back to the primary: heartbeats resume, numbered on.
    write_cfg(&cfg, &c, 0);
    wait_acks(stalled + 3);
    stop.store(true, Ordering::SeqCst);
    runner.join().unwrap().unwrap();
    check_acks(&c, &standin::read_acks(&acks));
}
