//! Running an external command (the application's stop/start/is_running, a
//! node's stop/start): an argv list, never a shell string, with a timeout.
//!
//! The command runs in its own process group so that on timeout the whole
//! group (a `systemctl` and whatever it forked, a script and its children)
//! is killed, not only the direct child. Errors carry the last lines of
//! stderr, which is where a failing command says why.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// At most this much of stdout and stderr is kept (the tail).
const KEEP_BYTES: usize = 8 * 1024;
/// Lines of stderr quoted in an error.
const QUOTE_LINES: usize = 10;
/// How long the output pipes may stay open after the command ended.
const PIPE_GRACE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last lines of stderr (or stdout when stderr is empty), joined.
    pub fn last_lines(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(QUOTE_LINES)..].join(" | ")
    }
}

/// `argv` run as `os_user`: through runuser when we are root, through
/// `sudo -n` otherwise (which then needs a sudoers rule), or as is. As is
/// also when `os_user` is pgwarden's own user: sudo would change nothing,
/// and under the shipped unit (`NoNewPrivileges=yes`) it cannot run at all.
pub fn as_user(os_user: Option<&str>, argv: Vec<String>) -> Vec<String> {
    let Some(user) = os_user else { return argv };
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if crate::load::user_name(euid).as_deref() == Some(user) {
        return argv;
    }
    let prefix: Vec<&str> = if euid == 0 {
        vec!["runuser", "-u", user, "--"]
    } else {
        vec!["sudo", "-n", "-u", user, "--"]
    };
    prefix.into_iter().map(str::to_owned).chain(argv).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the command is empty")]
    Empty,
    #[error("cannot run `{program}`: {source} (is it installed and on PATH?)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{argv}` did not finish within {after:?} and was killed with its process group; its last output: {last}")]
    TimedOut {
        argv: String,
        after: Duration,
        last: String,
    },
    #[error("`{argv}` failed with {status}: {last}")]
    Failed {
        argv: String,
        status: String,
        last: String,
    },
}

fn display(argv: &[String]) -> String {
    argv.join(" ")
}

/// Runs `argv` to completion or until `timeout`; any exit status is Ok.
pub async fn run(argv: &[String], timeout: Duration) -> Result<Finished, CommandError> {
    run_env(argv, &[], timeout).await
}

/// [`run`] with extra environment variables (how a password reaches
/// pg_basebackup or pg_rewind: never on the command line, where `ps` shows it).
pub async fn run_env(
    argv: &[String],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Finished, CommandError> {
    let (program, args) = argv.split_first().ok_or(CommandError::Empty)?;
    let started = Instant::now();
    let mut command = Command::new(program);
    for var in crate::notify::ENV_VARS {
        command.env_remove(var);
    }
    let mut child = command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can kill everything it started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CommandError::Spawn {
            program: program.clone(),
            source,
        })?;
    let pid = child.id().map(|p| p as i32);
    let stdout = Tail::start(child.stdout.take());
    let stderr = Tail::start(child.stderr.take());
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let status = match waited {
        Ok(status) => Some(status),
        Err(_) => {
            if let Some(pid) = pid {
                // SAFETY: kill(2) of the process group we created above.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = child.wait().await;
            None
        }
    };
    // The pipes close once every process holding them is gone. A daemon the
    // command started may hold them for good (`pg_ctl start` without `-l`
    // leaves them to the postmaster, which pg_ctl moved to its own session,
    // so no group kill reaches it): give the readers a moment, then stop
    // reading and keep what came.
    let stdout = stdout.finish(PIPE_GRACE).await;
    let stderr = stderr.finish(PIPE_GRACE).await;
    let finished = Finished {
        code: status
            .as_ref()
            .and_then(|s| s.as_ref().ok())
            .and_then(|s| s.code()),
        stdout,
        stderr,
        took: started.elapsed(),
    };
    match status {
        None => Err(CommandError::TimedOut {
            argv: display(argv),
            after: timeout,
            last: finished.last_lines(),
        }),
        Some(_) => Ok(finished),
    }
}

/// Like [`run`], but a non-zero exit is an error quoting stderr.
pub async fn run_checked(argv: &[String], timeout: Duration) -> Result<Finished, CommandError> {
    run_checked_env(argv, &[], timeout).await
}

/// [`run_env`], a non-zero exit being an error quoting stderr.
pub async fn run_checked_env(
    argv: &[String],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Finished, CommandError> {
    let f = run_env(argv, env, timeout).await?;
    if f.success() {
        Ok(f)
    } else {
        let status = match f.code {
            Some(c) => format!("exit status {c}"),
            None => "a signal".to_owned(),
        };
        Err(CommandError::Failed {
            argv: display(argv),
            status,
            last: f.last_lines(),
        })
    }
}

/// The tail of one output pipe, read by its own task into a buffer that
/// stays readable if the task is stopped before the pipe closes.
struct Tail {
    kept: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tail {
    fn start(pipe: Option<impl AsyncRead + Unpin + Send + 'static>) -> Tail {
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = kept.clone();
        let task = tokio::spawn(async move {
            let Some(mut pipe) = pipe else { return };
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        // A std Mutex: held for a copy, never across an await.
                        let mut kept = into.lock().unwrap_or_else(|p| p.into_inner());
                        kept.extend_from_slice(&buf[..n]);
                        if kept.len() > 2 * KEEP_BYTES {
                            let cut = kept.len() - KEEP_BYTES;
                            kept.drain(..cut);
                        }
                    }
                }
            }
        });
        Tail { kept, task }
    }

    /// What was read, after the pipe closed or `grace` passed.
    async fn finish(mut self, grace: Duration) -> String {
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
        }
        let mut kept = std::mem::take(&mut *self.kept.lock().unwrap_or_else(|p| p.into_inner()));
        if kept.len() > KEEP_BYTES {
            kept.drain(..kept.len() - KEEP_BYTES);
        }
        String::from_utf8_lossy(&kept).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sudo only to become someone else: for pgwarden's own user it would
    /// change nothing, and the shipped unit's NoNewPrivileges blocks it.
    #[test]
    fn os_user_switches_user_only_for_another_user() {
        let cmd = argv(&["pg_ctl", "status"]);
        assert_eq!(as_user(None, cmd.clone()), cmd);
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let me = crate::load::user_name(euid).expect("this process's user has a name");
        assert_eq!(as_user(Some(&me), cmd.clone()), cmd);
        let other = if euid == 0 { "nobody" } else { "root" };
        let switched = as_user(Some(other), cmd.clone());
        let prefix = if euid == 0 {
            argv(&["runuser", "-u", other, "--"])
        } else {
            argv(&["sudo", "-n", "-u", other, "--"])
        };
        assert_eq!(switched, [prefix, cmd].concat());
    }

    fn argv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn commands_do_not_inherit_the_systemd_notify_socket() {
        // Each nextest test is its own process: setting the variable here
        // races with nothing.
        std::env::set_var("NOTIFY_SOCKET", "/run/systemd/notify");
        std::env::set_var("WATCHDOG_USEC", "30000000");
        let f = run_checked(
            &argv(&[
                "sh",
                "-c",
                "echo ${NOTIFY_SOCKET-unset} ${WATCHDOG_USEC-unset}",
            ]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(f.stdout, "unset unset\n");
    }

    #[tokio::test]
    async fn a_daemon_that_keeps_the_pipes_open_does_not_hold_the_command() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("daemon.pid");
        // Like `pg_ctl start` without -l: the command exits at once, the
        // process it started keeps its stdout and stderr.
        let script = format!("sleep 300 & echo $! > {}; echo started", pidfile.display());
        let began = std::time::Instant::now();
        let f = run_checked(&argv(&["sh", "-c", &script]), Duration::from_secs(600))
            .await
            .unwrap();
        let took = began.elapsed();
        let daemon: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: kill(2) of the sleep this test started.
        unsafe { libc::kill(daemon, libc::SIGKILL) };
        assert_eq!(f.stdout, "started\n");
        // Waiting for the pipes would take the sleep's 300 s.
        assert!(took < Duration::from_secs(120), "took {took:?}");
    }

    #[tokio::test]
    async fn success_and_output() {
        let f = run_checked(
            &argv(&["sh", "-c", "echo out; echo err >&2"]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(f.code, Some(0));
        assert_eq!(f.stdout, "out\n");
        assert_eq!(f.last_lines(), "err");
    }

    #[tokio::test]
    async fn a_failure_quotes_stderr() {
        let e = run_checked(
            &argv(&[
                "sh",
                "-c",
                "echo 'unit inmanta-server not found' >&2; exit 5",
            ]),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`sh -c echo 'unit inmanta-server not found' >&2; exit 5` failed with exit status 5: unit inmanta-server not found"
        );
    }

    #[tokio::test]
    async fn a_missing_program_says_so() {
        let e = run(&argv(&["/nonexistent/stop-app"]), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot run `/nonexistent/stop-app`"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_hanging_command_is_killed_with_its_children() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("child.pid");
        // The shell starts a grandchild that would outlive a plain kill of the shell.
        let script = format!(
            "sleep 600 & echo $! > {}; echo stuck >&2; wait",
            pidfile.display()
        );
        // Long enough for the shell to have started its grandchild on a
        // loaded machine (with 300 ms it sometimes had not).
        let e = run(&argv(&["sh", "-c", &script]), Duration::from_secs(3))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("did not finish within 3s") && msg.ends_with("stuck"),
            "{msg}"
        );
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .expect("the shell started its grandchild within 3 s")
            .trim()
            .parse()
            .unwrap();
        // Killed means gone or a zombie awaiting its reaper. SIGKILL is
        // delivered, not finished, when kill(2) returns: on a loaded machine
        // the grandchild is still seen running for a moment, so poll.
        let stat =
            || std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
        let alive = |state: &str| {
            state
                .split(") ")
                .nth(1)
                .is_some_and(|r| !r.starts_with('Z'))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut state = stat();
        while alive(&state) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            state = stat();
        }
        assert!(!alive(&state), "the grandchild survived: {state}");
    }
}
