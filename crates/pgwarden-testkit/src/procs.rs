//! Running external commands (as the `postgres` user when we are root) and inspecting
//! processes, including the zombie-aware liveness checks this machine needs.

use std::ffi::{CString, OsStr};
use std::io::Write;
use std::os::unix::fs::lchown;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::{CommandFailure, IoContext, KitError};
use crate::util::{file_tail, tail_lines, TAIL_LINES};

/// How server-side commands are run. PostgreSQL refuses to run as root, so as root they
/// go through `runuser -u postgres --` and the directories they touch are chowned.
#[derive(Clone, Debug)]
pub(crate) enum Runner {
    Direct,
    AsPostgres { uid: u32, gid: u32 },
}

impl Runner {
    pub(crate) fn detect() -> Result<Runner, KitError> {
        if !crate::util::is_root() {
            return Ok(Runner::Direct);
        }
        let (uid, gid) = lookup_user("postgres").ok_or_else(|| {
            KitError::Environment(
                "running as root, but there is no `postgres` system user to run the PostgreSQL \
                 server as (it refuses to run as root). Install the server package \
                 (`apt-get install postgresql-15` creates the user) or run the tests as a \
                 non-root user."
                    .into(),
            )
        })?;
        Ok(Runner::AsPostgres { uid, gid })
    }

    /// A command for a server-side program (initdb, pg_ctl, pg_basebackup).
    pub(crate) fn server(&self, program: &Path) -> Cmd {
        match self {
            Runner::Direct => Cmd::new(program),
            Runner::AsPostgres { .. } => Cmd::new(Path::new("runuser"))
                .args(["-u", "postgres", "--"])
                .arg(program),
        }
    }

    /// Gives `path` (recursively) to the postgres user when we are root; no-op otherwise.
    pub(crate) fn chown_tree(&self, path: &Path) -> Result<(), KitError> {
        if let Runner::AsPostgres { uid, gid } = self {
            chown_recursive(path, *uid, *gid)
                .ctx(|| format!("giving {} to the postgres user (chown)", path.display()))?;
        }
        Ok(())
    }

    pub(crate) fn chown_one(&self, path: &Path) -> Result<(), KitError> {
        if let Runner::AsPostgres { uid, gid } = self {
            lchown(path, Some(*uid), Some(*gid))
                .ctx(|| format!("giving {} to the postgres user (chown)", path.display()))?;
        }
        Ok(())
    }

    pub(crate) fn is_root(&self) -> bool {
        matches!(self, Runner::AsPostgres { .. })
    }
}

fn chown_recursive(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    lchown(path, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// uid and gid of a local user, via getpwnam_r.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all-zero is a valid passwd (null pointers, zero ids) and is only read after
    // getpwnam_r filled it in.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the duration of the call and buf's length is
    // passed along.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some((pwd.pw_uid, pwd.pw_gid))
}

/// A command plus a printable form of it for error messages. Environment values are not
/// shown (that is where passwords go: never on argv, where `ps` would show them).
pub(crate) struct Cmd {
    cmd: Command,
    shown: Vec<String>,
    hint: Option<String>,
    log: Option<PathBuf>,
}

impl Cmd {
    pub(crate) fn new(program: &Path) -> Cmd {
        let mut cmd = Command::new(program);
        // PG* variables from the caller's environment (PGHOST, PGOPTIONS, PGSERVICE...)
        // would silently redirect or alter our commands.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(&key);
            }
        }
        cmd.stdin(Stdio::null());
        Cmd {
            cmd,
            shown: vec![program.display().to_string()],
            hint: None,
            log: None,
        }
    }

    pub(crate) fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.shown.push(a.as_ref().to_string_lossy().into_owned());
        self.cmd.arg(a);
        self
    }

    pub(crate) fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub(crate) fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Cmd {
        self.cmd.env(key, value);
        self
    }

    pub(crate) fn current_dir(mut self, dir: &Path) -> Cmd {
        self.cmd.current_dir(dir);
        self
    }

    /// A hint shown with the error if the command fails.
    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Cmd {
        self.hint = Some(hint.into());
        self
    }

    /// A server log whose tail is shown with the error if the command fails.
    pub(crate) fn log(mut self, log: &Path) -> Cmd {
        self.log = Some(log.to_path_buf());
        self
    }

    pub(crate) fn shown(&self) -> String {
        self.shown.join(" ")
    }

    /// Runs to completion; a non-zero exit becomes `KitError::Command`.
    pub(crate) fn run(self) -> Result<Output, KitError> {
        self.run_with_stdin(None)
    }

    /// Like `run`, feeding `input` on stdin (used for SQL that contains passwords).
    pub(crate) fn run_with_stdin(mut self, input: Option<&str>) -> Result<Output, KitError> {
        let shown = self.shown();
        if input.is_some() {
            self.cmd.stdin(Stdio::piped());
        }
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = self.cmd.spawn().map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound && shown.starts_with("runuser") {
                " (runuser is part of util-linux: `apt-get install util-linux`)"
            } else {
                ""
            };
            KitError::io(format!("starting `{shown}`{hint}"), e)
        })?;
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("stdin was piped");
            // A write error means the child exited early; its status tells the story.
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .ctx(|| format!("waiting for `{shown}`"))?;
        if out.status.success() {
            return Ok(out);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let text = if stderr.trim().is_empty() {
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            stderr.into_owned()
        };
        Err(KitError::Command(Box::new(CommandFailure {
            command: shown,
            status: out.status.to_string(),
            stderr: tail_lines(&text, TAIL_LINES),
            log: self.log.map(|p| {
                let tail = file_tail(&p, TAIL_LINES);
                (p, tail)
            }),
            hint: self.hint,
        })))
    }
}

/// Whether a process is alive. Zombies count as dead: on this VM, PID 1 does not reap
/// orphans, so a killed postmaster (an orphan once pg_ctl exits) lingers as a zombie that
/// `kill(pid, 0)` still reports as existing.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match proc_state(pid) {
        Some(state) => state != 'Z' && state != 'X',
        None if Path::new("/proc/self").exists() => false,
        // No /proc: fall back to kill(0), which cannot see zombies.
        // SAFETY: signal 0 only checks for existence and permission.
        None => unsafe {
            libc::kill(pid, 0) == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        },
    }
}

/// True when `pid` exists but is a zombie (dead, unreaped).
pub(crate) fn is_zombie(pid: i32) -> bool {
    pid > 0 && proc_state(pid) == Some('Z')
}

/// The state letter from /proc/<pid>/stat ("R", "S", "Z"...).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain ") "; the state follows
    // the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Live (non-zombie) `postgres` processes whose working directory is `dir` or below it.
/// Every server process chdirs into its data directory, so this finds a node's postmaster
/// and all its children, even orphaned ones, and even once the directory was deleted.
pub fn postgres_processes_in(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let dir = dir.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim_end() != "postgres" {
                return false;
            }
            let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
                return false;
            };
            let cwd = cwd.to_string_lossy();
            // A deleted cwd reads as "<path> (deleted)".
            (cwd == dir
                || cwd.starts_with(&format!("{dir}/"))
                || cwd.starts_with(&format!("{dir} ")))
                && pid_alive(pid)
        })
        .collect()
}

/// Sends `sig` to `pid`; Ok when the process is already gone.
pub(crate) fn signal(pid: i32, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_bogus_pid_is_not() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
        assert!(!pid_alive(i32::MAX));
    }

    #[test]
    fn failing_command_reports_its_output() {
        let err = Cmd::new(Path::new("sh"))
            .args(["-c", "echo boom >&2; exit 3"])
            .hint("do something else")
            .run()
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`sh -c echo boom >&2; exit 3` failed"),
            "{msg}"
        );
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(msg.contains("do something else"), "{msg}");
    }
}
