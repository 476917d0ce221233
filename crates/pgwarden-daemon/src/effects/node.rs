//! This host's PostgreSQL: stop and start it with the configured commands,
//! and verify what state it is really in. One reader of each kind of
//! evidence: `pg_ctl status` (running, not running, or unknown), the
//! postmaster's PID file and port (gone, or not), and `pg_controldata`.
//!
//! "Stopped" is answered only once the postmaster is verified gone: the PID
//! in `postmaster.pid` no longer exists and the port accepts no connection.
//! A failed or refused status command is never read as "not running".

use std::path::Path;
use std::time::{Duration, Instant};

use pgwarden_core::config::NodeConfig;
use pgwarden_core::snapshot::Lsn;
use pgwarden_core::{Answer, Config};
use serde::{Deserialize, Serialize};

use super::command::{self, as_user};

/// Budget of stopping or starting a node's PostgreSQL.
pub const NODE_ACTION_TIMEOUT: Duration = Duration::from_secs(120);
/// Budget of one status or pg_controldata command.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection to the node's own port may take to be refused.
const PORT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A node's PostgreSQL as its own daemon saw it after a stop or start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub node: String,
    /// `pg_controldata`'s "Database cluster state", e.g. "shut down".
    pub cluster_state: Option<String>,
    /// The last checkpoint: after a clean shutdown, the final WAL record.
    pub checkpoint_lsn: Option<Lsn>,
    pub message: String,
}

/// What `pg_controldata` says of a data directory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PgControl {
    /// "Database cluster state", e.g. `shut down`, `in production`.
    pub cluster_state: Option<String>,
    /// "Latest checkpoint location".
    pub checkpoint_lsn: Option<Lsn>,
    /// "wal_log_hints setting" is on.
    pub wal_log_hints: bool,
    /// "Data page checksum version" is not 0.
    pub checksums: bool,
}

fn bin(me: &NodeConfig, name: &str) -> String {
    match &me.bin_dir {
        Some(b) => b.join(name).display().to_string(),
        None => name.to_owned(),
    }
}

/// `pg_controldata -D dir`, parsed.
pub async fn pg_control(me: &NodeConfig, dir: &Path) -> Result<PgControl, String> {
    let argv = vec![
        bin(me, "pg_controldata"),
        "-D".into(),
        dir.display().to_string(),
    ];
    let out = command::run_checked(&argv, CHECK_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    Ok(parse_pg_control(&out.stdout))
}

fn parse_pg_control(text: &str) -> PgControl {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .map(|v| v.trim_start_matches(':').trim().to_owned())
        })
    };
    PgControl {
        cluster_state: field("Database cluster state"),
        checkpoint_lsn: field("Latest checkpoint location").and_then(|v| Lsn::parse(&v)),
        wal_log_hints: field("wal_log_hints setting").as_deref() == Some("on"),
        checksums: field("Data page checksum version").is_some_and(|v| v != "0"),
    }
}

/// Whether a postmaster runs on this node's data directory, by `pg_ctl
/// status` (run as `os_user`, since pg_ctl refuses root): exit 0 running,
/// exit 3 not running, anything else (a spawn error, a timeout, exit 1 or
/// 4, a signal) unknown.
pub async fn pg_status(me: &NodeConfig) -> Answer {
    let Some(dir) = &me.data_dir else {
        return Answer::Unknown(format!(
            "nodes[{}].data_dir is not configured: pgwarden cannot check its PostgreSQL",
            me.name
        ));
    };
    let argv = as_user(
        me.os_user.as_deref(),
        vec![
            bin(me, "pg_ctl"),
            "status".into(),
            "-D".into(),
            dir.display().to_string(),
        ],
    );
    match command::run(&argv, CHECK_TIMEOUT).await {
        Err(e) => Answer::Unknown(format!("`pg_ctl status` could not be run: {e}")),
        Ok(f) => status_answer(f.code, &f.last_lines(), me.os_user.is_some()),
    }
}

fn status_answer(code: Option<i32>, last: &str, has_os_user: bool) -> Answer {
    match code {
        Some(0) => Answer::Yes,
        Some(3) => Answer::No,
        other => {
            let how = match other {
                Some(c) => format!("exited with {c}"),
                None => "was killed by a signal".to_owned(),
            };
            let hint = if last.contains("cannot be run as root") && !has_os_user {
                ": pg_ctl refuses root; set nodes[].os_user to the data directory's owner"
            } else {
                ""
            };
            Answer::Unknown(format!("`pg_ctl status` {how} ({last}){hint}"))
        }
    }
}

/// The PID of the first line of `postmaster.pid`: `Ok(None)` when the file
/// does not exist (no postmaster, or one that removed it on exit).
fn pid_file(dir: &Path) -> Result<Option<i32>, String> {
    let path = dir.join("postmaster.pid");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{} does not start with a PID", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "cannot read {}: {e} (run pgwarden as the data directory's owner or as root)",
            path.display()
        )),
    }
}

/// Whether `pid` is a live postgres process: kill(pid, 0) finds it (EPERM
/// means it exists, owned by someone else) and its name is postgres. A
/// PID reused by another program after a crash is not a postmaster.
fn postmaster_alive(pid: i32) -> bool {
    // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) state ...": a zombie has exited already.
        Ok(stat) => {
            let comm = stat.split(['(', ')']).nth(1).unwrap_or("");
            let state = stat.rsplit(") ").next().unwrap_or("");
            (comm.starts_with("postgres") || comm.starts_with("postmaster"))
                && !state.starts_with('Z')
        }
        Err(_) => true,
    }
}

/// Whether this node's postmaster is verified gone: no live PID in
/// `postmaster.pid`, and nothing accepts a connection on the node's port.
/// A connection that is refused or not answered within a second was not
/// accepted; one that is accepted means a server still listens there.
pub async fn postmaster_gone(me: &NodeConfig) -> Answer {
    let Some(dir) = &me.data_dir else {
        return Answer::Unknown(format!(
            "nodes[{}].data_dir is not configured: pgwarden cannot verify that its PostgreSQL stopped",
            me.name
        ));
    };
    match pid_file(dir) {
        Err(why) => return Answer::Unknown(why),
        Ok(Some(pid)) if postmaster_alive(pid) => return Answer::No,
        Ok(_) => {}
    }
    let addr = format!("{}:{}", me.host, me.port);
    match tokio::time::timeout(PORT_CHECK_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Answer::No,
        Ok(Err(_)) | Err(_) => Answer::Yes,
    }
}

/// Stops this daemon's own PostgreSQL with `nodes[].stop`, then verifies it
/// is gone and reads pg_control. A node known not to run (pg_ctl status 3
/// and no postmaster) is not stopped again: pg_ctl would fail on it, and a
/// resumed step must succeed. Every other case runs the stop command, so an
/// unknown status never skips a stop.
pub async fn stop_local(config: &Config) -> Result<NodeState, String> {
    stop_local_within(config, NODE_ACTION_TIMEOUT).await
}

/// [`stop_local`] with the budget of its verification as a parameter (the
/// unit tests verify the give-up without waiting 120 s).
async fn stop_local_within(config: &Config, budget: Duration) -> Result<NodeState, String> {
    let me = config.local();
    let argv = me.stop.as_ref().ok_or_else(|| {
        format!(
            "nodes[{}].stop is not configured: pgwarden cannot stop PostgreSQL",
            me.name
        )
    })?;
    let dir = me.data_dir.as_ref().ok_or_else(|| {
        format!(
            "nodes[{}].data_dir is not configured: pgwarden cannot verify a stop",
            me.name
        )
    })?;
    let status = pg_status(me).await;
    let already_down = status.is_no() && postmaster_gone(me).await.is_yes();
    if !already_down {
        if let Err(e) = command::run_checked(argv, NODE_ACTION_TIMEOUT).await {
            // The command may fail on a server that stopped meanwhile: the
            // evidence decides, not the exit status.
            return match postmaster_gone(me).await {
                Answer::Yes => {
                    finish_stop(
                        me,
                        dir,
                        "stopped (its stop command failed, but the postmaster is gone)",
                    )
                    .await
                }
                Answer::No => Err(format!("{} could not be stopped: {e}", me.name)),
                Answer::Unknown(why) => Err(format!(
                    "{}'s stop command failed ({e}) and whether it still runs is unknown: {why}",
                    me.name
                )),
            };
        }
    }
    // Verified, not assumed: a stop command may return before the server is
    // down (`pg_ctl -W`, a unit that does not wait).
    let until = Instant::now() + budget;
    loop {
        match postmaster_gone(me).await {
            Answer::Yes => break,
            _ if Instant::now() < until => tokio::time::sleep(Duration::from_millis(10)).await,
            Answer::No => {
                return Err(format!(
                    "{} was told to stop but its postmaster still runs after {budget:?}",
                    me.name,
                ))
            }
            Answer::Unknown(why) => {
                return Err(format!("cannot verify that {} stopped: {why}", me.name))
            }
        }
    }
    let how = if already_down {
        "already stopped"
    } else {
        "stopped"
    };
    finish_stop(me, dir, how).await
}

async fn finish_stop(me: &NodeConfig, dir: &Path, how: &str) -> Result<NodeState, String> {
    // Gone: pg_control now holds its last word ("shut down", or "in
    // production" after a crash).
    let control = pg_control(me, dir).await;
    let state = match &control {
        Ok(c) => c.cluster_state.clone().unwrap_or_else(|| "unknown".into()),
        Err(e) => format!("unknown ({e})"),
    };
    let control = control.unwrap_or_default();
    Ok(NodeState {
        node: me.name.clone(),
        message: format!("{how}, postmaster verified gone; cluster state {state}"),
        cluster_state: control.cluster_state,
        checkpoint_lsn: control.checkpoint_lsn,
    })
}

/// Starts this daemon's own PostgreSQL with `nodes[].start` unless it runs,
/// then verifies `pg_ctl status` says running.
pub async fn start_local(config: &Config) -> Result<NodeState, String> {
    let me = config.local();
    let argv = me.start.as_ref().ok_or_else(|| {
        format!(
            "nodes[{}].start is not configured: pgwarden cannot start PostgreSQL",
            me.name
        )
    })?;
    let how = match pg_status(me).await {
        Answer::Yes => "already running",
        _ => {
            command::run_checked(argv, NODE_ACTION_TIMEOUT)
                .await
                .map_err(|e| format!("starting {} failed: {e}", me.name))?;
            "started"
        }
    };
    let until = Instant::now() + NODE_ACTION_TIMEOUT;
    loop {
        match pg_status(me).await {
            Answer::Yes => break,
            _ if Instant::now() < until => tokio::time::sleep(Duration::from_millis(20)).await,
            Answer::No => {
                return Err(format!(
                    "{} is not running after its start command: see its server log",
                    me.name
                ))
            }
            Answer::Unknown(why) => {
                return Err(format!("cannot verify that {} started: {why}", me.name))
            }
        }
    }
    let control = match &me.data_dir {
        Some(dir) => pg_control(me, dir).await.unwrap_or_default(),
        None => PgControl::default(),
    };
    Ok(NodeState {
        node: me.name.clone(),
        message: format!("{how}; pg_ctl status says it runs"),
        cluster_state: control.cluster_state,
        checkpoint_lsn: control.checkpoint_lsn,
    })
}

/// `stop` or `start`, by name (the internal node-action route).
pub async fn local_node_action(config: &Config, action: &str) -> Result<NodeState, String> {
    match action {
        "stop" => stop_local(config).await,
        "start" => start_local(config).await,
        other => Err(format!("unknown node action `{other}`: use stop or start")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exit_0_and_3_of_pg_ctl_status_are_answers() {
        assert_eq!(status_answer(Some(0), "", false), Answer::Yes);
        assert_eq!(
            status_answer(Some(3), "no server running", false),
            Answer::No
        );
        for code in [Some(1), Some(4), Some(2), None] {
            assert!(
                matches!(status_answer(code, "x", true), Answer::Unknown(_)),
                "{code:?}"
            );
        }
        let Answer::Unknown(why) = status_answer(
            Some(1),
            "pg_ctl: cannot be run as root | Please log in (using, e.g., \"su\") as the (unprivileged) user",
            false,
        ) else {
            panic!("exit 1 is unknown")
        };
        assert!(why.contains("set nodes[].os_user"), "{why}");
    }

    #[test]
    fn pg_controldata_fields() {
        let text = "pg_control version number:            1300\nDatabase cluster state:               shut down\nLatest checkpoint location:           0/3000060\nwal_log_hints setting:                on\nData page checksum version:           0\n";
        let c = parse_pg_control(text);
        assert_eq!(c.cluster_state.as_deref(), Some("shut down"));
        assert_eq!(c.checkpoint_lsn, Lsn::parse("0/3000060"));
        assert!(c.wal_log_hints && !c.checksums);
    }

    fn node(dir: &Path, port: u16) -> NodeConfig {
        serde_yaml::from_str(&format!(
            "{{name: pg-a, host: 127.0.0.1, port: {port}, data_dir: {}}}",
            dir.display()
        ))
        .unwrap()
    }

    /// A stop command that "succeeds" while the server goes on listening:
    /// the stop gives up at its budget (120 s in the daemon) with an error,
    /// never answers "stopped". Also when `pg_ctl status` cannot tell.
    #[tokio::test]
    async fn a_stop_not_verified_within_its_budget_fails() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        for (status_exit, what) in [(0, "running"), (4, "unknown")] {
            let pg_ctl = bin.join("pg_ctl");
            std::fs::write(&pg_ctl, format!("#!/bin/sh\nexit {status_exit}\n")).unwrap();
            std::fs::set_permissions(&pg_ctl, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            let yaml = format!(
                "cluster: c\nlocal_node: pg-a\nlisten: 127.0.0.1:8008\nstate_dir: /tmp/x\napi_token_file: /tmp/x/token\nmonitor: {{user: pgwarden}}\nreplication: {{slot: replication, application_name: inmanta, user: replication}}\nnodes:\n  - {{name: pg-a, host: 127.0.0.1, port: {port}, data_dir: {dir}, bin_dir: {bin}, stop: [\"true\"]}}\n  - {{name: pg-b, host: 127.0.0.1, port: 1}}\n",
                dir = d.path().display(),
                bin = bin.display(),
            );
            let config = Config::parse_str("t.yaml", &yaml).unwrap();
            let budget = Duration::from_millis(300);
            let started = Instant::now();
            let e = stop_local_within(&config, budget).await.unwrap_err();
            assert!(
                e.contains("still runs after 300ms"),
                "pg_ctl status {what}: {e}"
            );
            assert!(
                started.elapsed() >= budget,
                "gave up early: {:?}",
                started.elapsed()
            );
        }
        drop(listener);
    }

    #[tokio::test]
    async fn a_postmaster_is_gone_only_when_its_pid_and_port_are() {
        let d = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = node(d.path(), port);
        // No PID file, but something accepts connections on the port.
        assert_eq!(postmaster_gone(&me).await, Answer::No);
        drop(listener);
        assert_eq!(postmaster_gone(&me).await, Answer::Yes);
        // A PID file naming a dead process (a crash) is not a postmaster.
        std::fs::write(d.path().join("postmaster.pid"), "999999999\n/x\n").unwrap();
        assert_eq!(postmaster_gone(&me).await, Answer::Yes);
        // A PID file that cannot be read or parsed says nothing.
        std::fs::write(d.path().join("postmaster.pid"), "garbage\n").unwrap();
        assert!(matches!(postmaster_gone(&me).await, Answer::Unknown(_)));
    }
}
