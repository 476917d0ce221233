//! The stand-in application as a service with `start`, `stop` and `is-running` commands,
//! the way `systemctl start/stop/is-active` drive a `Type=simple` unit. pgwarden's
//! `application.start/stop/is_running` run these as real external commands:
//! `pgwarden standin-ctl <start|stop|is-running> --dir DIR [--config FILE]
//! [--ack-file FILE] [--timeout SECS]`, whose main is [`ctl`].
//!
//! `DIR` holds the service's state:
//!
//! | file                 | what                                                        |
//! |----------------------|-------------------------------------------------------------|
//! | `DIR/standin.pid`    | pid of the running app (plus its start time, against pid reuse) |
//! | `DIR/standin.log`    | the app's stdout and stderr, appended across starts         |
//! | `DIR/database.cfg`   | the app's INI config unless `--config` names another file   |
//! | `DIR/acks`           | acknowledged heartbeat ids unless `--ack-file` names another |
//! | `DIR/ignore-sigterm` | flag file, see below                                        |
//! | `DIR/standin.lock`   | serialises concurrent `start`/`stop` on the same DIR        |
//!
//! - `start`: exit 0 at once if the app is already running. Otherwise spawn
//!   `EXE APP_ARGS... --config FILE --ack-file FILE` detached (its own session via
//!   `setsid`, stdin from /dev/null, stdout and stderr appended to the log, cwd DIR), so it
//!   outlives the ctl process and the process group pgwarden kills on timeout; write the
//!   pid file atomically; then watch it for [`STARTUP_GRACE`] (300 ms). Exit 0 if it is
//!   still alive then; if it died, print the log tail and exit with its status (1 if that
//!   was 0 or a signal). The app itself keeps trying to reach a writable primary for
//!   [`crate::standin::STARTUP_TIMEOUT`] (3 s) and then exits with status 4, as
//!   `inmanta-server` does when its database is unreachable: so, like with systemd, a
//!   caller detects that by polling `is-running` after `start`.
//! - `stop`: SIGTERM the app and poll until it exits, up to `--timeout`
//!   ([`DEFAULT_STOP_TIMEOUT`], 15 s); then SIGKILL its process group and wait up to
//!   [`KILL_WAIT`] (2 s). Remove the pid file and exit 0, also when it was not running.
//!   Exit 1, with the reason on stderr, when it could not be stopped.
//! - `is-running`: exit 0 when the app runs, [`EXIT_NOT_RUNNING`] (3) when not (systemd's
//!   convention for `is-active`). A zombie counts as dead ([`crate::pid_alive`]), as does
//!   a pid file whose pid now belongs to another process.
//!
//! Two knobs let tests simulate a misbehaving application:
//! - the environment variable `STANDIN_FAIL_STOP=1` ([`FAIL_STOP_ENV`]) makes `stop` print
//!   `refusing to stop (STANDIN_FAIL_STOP)` and exit 1 without touching the app: a stop
//!   command that fails;
//! - `STANDIN_HANG_STOP=1` ([`HANG_STOP_ENV`]) makes `stop` hang without touching the
//!   app, as a `systemctl stop` stuck on a unit would: the caller's timeout must end it;
//! - the flag file `DIR/ignore-sigterm` ([`IGNORE_SIGTERM_FLAG`]): if it exists when the
//!   app receives SIGTERM, the app ignores the signal and keeps its session (an application
//!   that refuses to stop), so `stop` has to fall back to SIGKILL. `start` passes the
//!   file's path to the app in [`crate::standin::IGNORE_SIGTERM_ENV`]; the file is looked
//!   at on each SIGTERM, so it can be created or removed while the app runs.
//!
//! The default timeouts fit the 20 s `stop_timeout`/`start_timeout` of
//! [`standin_application_yaml`]: a stop takes at most 15 s + 2 s.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::procs::{pid_alive, signal};
use crate::util::file_tail;

/// The pid file under DIR.
pub const PID_FILE: &str = "standin.pid";
/// The app's log (stdout and stderr) under DIR.
pub const LOG_FILE: &str = "standin.log";
/// The config file under DIR used when `--config` is absent.
pub const DEFAULT_CONFIG_FILE: &str = "database.cfg";
/// The ack file under DIR used when `--ack-file` is absent.
pub const DEFAULT_ACK_FILE: &str = "acks";
/// While this file exists under DIR, the app ignores SIGTERM.
pub const IGNORE_SIGTERM_FLAG: &str = "ignore-sigterm";
/// Lock file under DIR serialising `start` and `stop`.
const LOCK_FILE: &str = "standin.lock";
/// Set to a non-empty value other than "0", `stop` refuses to do anything and exits 1.
pub const FAIL_STOP_ENV: &str = "STANDIN_FAIL_STOP";
/// `is-running`'s exit status when the app is not running (as `systemctl is-active`).
pub const EXIT_NOT_RUNNING: i32 = 3;
/// Set to a non-empty value other than "0", `stop` hangs (until killed).
pub const HANG_STOP_ENV: &str = "STANDIN_HANG_STOP";
/// How long `stop` waits after SIGTERM before it sends SIGKILL, unless told otherwise.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `stop` waits for the app to vanish after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(2);
/// How long `start` watches the new process before it calls it started.
pub const STARTUP_GRACE: Duration = Duration::from_millis(300);
/// Interval of the liveness polls in `start` and `stop`.
const POLL: Duration = Duration::from_millis(20);
/// Lines of the app's log that a failed `start` shows.
const LOG_TAIL_LINES: usize = 15;

/// A `standin-ctl` command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtlAction {
    Start,
    Stop,
    IsRunning,
}

impl CtlAction {
    /// The command-line spelling: `start`, `stop`, `is-running`.
    pub fn as_str(self) -> &'static str {
        match self {
            CtlAction::Start => "start",
            CtlAction::Stop => "stop",
            CtlAction::IsRunning => "is-running",
        }
    }
}

impl FromStr for CtlAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "start" => Ok(CtlAction::Start),
            "stop" => Ok(CtlAction::Stop),
            "is-running" => Ok(CtlAction::IsRunning),
            other => Err(format!(
                "unknown action {other:?}: expected start, stop or is-running"
            )),
        }
    }
}

impl std::fmt::Display for CtlAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`ctl`] acts on and how `start` launches the app.
#[derive(Clone, Debug)]
pub struct CtlOptions {
    /// The service's state directory (created by `start`).
    pub dir: PathBuf,
    /// The app's INI config; None: `DIR/database.cfg`.
    pub config_file: Option<PathBuf>,
    /// The app's ack file; None: `DIR/acks`.
    pub ack_file: Option<PathBuf>,
    /// The program `start` runs: the pgwarden binary.
    pub exe: PathBuf,
    /// Arguments before `--config FILE --ack-file FILE`; `["standin-app"]` by default.
    pub app_args: Vec<String>,
    /// How long `stop` waits after SIGTERM before SIGKILL (`--timeout`).
    pub stop_timeout: Duration,
}

impl CtlOptions {
    /// Options for `exe standin-app` with state in `dir`, default files and timeout.
    pub fn new(exe: impl Into<PathBuf>, dir: impl Into<PathBuf>) -> CtlOptions {
        CtlOptions {
            dir: dir.into(),
            config_file: None,
            ack_file: None,
            exe: exe.into(),
            app_args: vec!["standin-app".to_string()],
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }

    /// The config file the app reads.
    pub fn config_path(&self) -> PathBuf {
        self.config_file
            .clone()
            .unwrap_or_else(|| self.dir.join(DEFAULT_CONFIG_FILE))
    }

    /// The ack file the app appends to.
    pub fn ack_path(&self) -> PathBuf {
        self.ack_file
            .clone()
            .unwrap_or_else(|| self.dir.join(DEFAULT_ACK_FILE))
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join(PID_FILE)
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// The flag file that makes the app ignore SIGTERM.
    pub fn ignore_sigterm_flag(&self) -> PathBuf {
        self.dir.join(IGNORE_SIGTERM_FLAG)
    }
}

/// Runs one `standin-ctl` command and returns the exit status the process should exit
/// with (see the module doc). Progress goes to stdout, failures to stderr.
pub fn ctl(action: CtlAction, opts: &CtlOptions) -> i32 {
    match action {
        CtlAction::Start => start(opts),
        CtlAction::Stop => stop(opts),
        CtlAction::IsRunning => match running_pid(&opts.dir) {
            Some(pid) => {
                println!("standin: running (pid {pid})");
                0
            }
            None => {
                println!("standin: not running");
                EXIT_NOT_RUNNING
            }
        },
    }
}

/// The pid of the running app of the service in `dir`: the pid file names a live,
/// non-zombie process that is the one `start` spawned (same start time). None otherwise.
pub fn running_pid(dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(dir.join(PID_FILE)).ok()?;
    let (pid, started) = parse_pid_file(&text)?;
    if !pid_alive(pid) {
        return None;
    }
    // A pid recorded with a start time only counts while that same process holds it:
    // never signal a stranger that inherited a recycled pid.
    match (started, proc_start_time(pid)) {
        (Some(recorded), Some(now)) if recorded != now => None,
        _ => Some(pid),
    }
}

fn start(opts: &CtlOptions) -> i32 {
    let dir = &opts.dir;
    if let Err(e) = fs::create_dir_all(dir) {
        eprintln!("standin: cannot create {}: {e}", dir.display());
        return 1;
    }
    let _lock = match lock(dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "standin: cannot lock {}: {e}",
                dir.join(LOCK_FILE).display()
            );
            return 1;
        }
    };
    if let Some(pid) = running_pid(dir) {
        println!("standin: already running (pid {pid})");
        return 0;
    }

    let log_path = opts.log_file();
    let log = match OpenOptions::new().create(true).append(true).open(&log_path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("standin: cannot open the log {}: {e}", log_path.display());
            return 1;
        }
    };
    let log_err = match log.try_clone() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("standin: cannot duplicate the log handle: {e}");
            return 1;
        }
    };

    let mut cmd = Command::new(&opts.exe);
    cmd.args(&opts.app_args)
        .arg("--config")
        .arg(opts.config_path())
        .arg("--ack-file")
        .arg(opts.ack_path())
        .env(
            crate::standin::IGNORE_SIGTERM_ENV,
            opts.ignore_sigterm_flag(),
        )
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (setsid, signal).
    unsafe {
        cmd.pre_exec(|| {
            // Its own session and process group: it survives the ctl process, and the
            // group kill pgwarden applies to a command that times out.
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            // Dispositions our caller ignored would otherwise be inherited.
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let shown = format!(
        "{} {} --config {} --ack-file {}",
        opts.exe.display(),
        opts.app_args.join(" "),
        opts.config_path().display(),
        opts.ack_path().display()
    );
    log_marker(&log_path, &format!("standin-ctl start: {shown}"));
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("standin: cannot run `{shown}`: {e}");
            return 1;
        }
    };
    let pid = child.id() as i32;
    if let Err(e) = write_pid_file(&opts.pid_file(), pid) {
        eprintln!(
            "standin: cannot write {}: {e}; killing the app (pid {pid})",
            opts.pid_file().display()
        );
        let _ = child.kill();
        let _ = child.wait();
        return 1;
    }

    // Type=simple: started once it is still alive after the grace period. We are its
    // parent, so a quick death gives us its real exit status.
    let deadline = Instant::now() + STARTUP_GRACE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = fs::remove_file(opts.pid_file());
            let code = status.code().filter(|&c| c != 0).unwrap_or(1);
            eprintln!(
                "standin: the application exited right after starting ({status}); \
                 last lines of {}:\n{}",
                log_path.display(),
                file_tail(&log_path, LOG_TAIL_LINES)
            );
            return code;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
    println!("standin: started (pid {pid}); log {}", log_path.display());
    0
}

fn stop(opts: &CtlOptions) -> i32 {
    if std::env::var_os(HANG_STOP_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        eprintln!("standin: hanging instead of stopping ({HANG_STOP_ENV})");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if fail_stop_requested() {
        eprintln!("standin: refusing to stop ({FAIL_STOP_ENV})");
        return 1;
    }
    let dir = &opts.dir;
    if !dir.is_dir() {
        println!("standin: not running ({} does not exist)", dir.display());
        return 0;
    }
    let _lock = match lock(dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "standin: cannot lock {}: {e}",
                dir.join(LOCK_FILE).display()
            );
            return 1;
        }
    };
    let Some(pid) = running_pid(dir) else {
        remove_pid_file(opts);
        println!("standin: not running");
        return 0;
    };

    log_marker(
        &opts.log_file(),
        &format!("standin-ctl stop: SIGTERM to pid {pid}"),
    );
    if let Err(e) = signal(pid, libc::SIGTERM) {
        eprintln!("standin: cannot send SIGTERM to pid {pid}: {e}");
        return 1;
    }
    if wait_gone(pid, opts.stop_timeout) {
        remove_pid_file(opts);
        println!("standin: stopped (pid {pid})");
        return 0;
    }

    eprintln!(
        "standin: pid {pid} still running {:?} after SIGTERM; sending SIGKILL",
        opts.stop_timeout
    );
    log_marker(
        &opts.log_file(),
        &format!("standin-ctl stop: SIGKILL to pid {pid} and its process group"),
    );
    // `start` made it a session (and so process-group) leader: kill whatever it forked
    // too. Ignored if it is not a group leader (a pid file written by someone else).
    let _ = signal(-pid, libc::SIGKILL);
    if let Err(e) = signal(pid, libc::SIGKILL) {
        eprintln!("standin: cannot send SIGKILL to pid {pid}: {e}");
        return 1;
    }
    if wait_gone(pid, KILL_WAIT) {
        remove_pid_file(opts);
        println!("standin: killed (pid {pid})");
        return 0;
    }
    eprintln!(
        "standin: could not stop pid {pid}: still alive {KILL_WAIT:?} after SIGKILL \
         (stuck in the kernel?)"
    );
    1
}

fn fail_stop_requested() -> bool {
    std::env::var_os(FAIL_STOP_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Polls until `pid` is gone (or a zombie), at most `timeout`.
fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        // If the app is our own child (ctl called in-process right after start), reap it
        // so it does not linger as a zombie; ECHILD otherwise, which is fine.
        // SAFETY: waitpid with WNOHANG and a null status pointer has no preconditions.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
        }
        if !pid_alive(pid) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

fn remove_pid_file(opts: &CtlOptions) {
    match fs::remove_file(opts.pid_file()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("standin: cannot remove {}: {e}", opts.pid_file().display()),
    }
}

/// Takes an exclusive flock on `DIR/standin.lock`, released when the file is dropped.
fn lock(dir: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Appends a timestamped `---- text` line to the log, so the log tells starts apart.
fn log_marker(log: &Path, text: &str) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "---- [unix time {secs}] {text}");
    }
}

/// Writes `pid` (and its start time, when /proc has it) to the pid file atomically.
fn write_pid_file(path: &Path, pid: i32) -> io::Result<()> {
    let mut text = format!("{pid}\n");
    if let Some(t) = proc_start_time(pid) {
        text.push_str(&format!("{t}\n"));
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)
}

/// The pid on the first line, and the process start time on the second when present.
fn parse_pid_file(text: &str) -> Option<(i32, Option<u64>)> {
    let mut lines = text.lines();
    let pid: i32 = lines.next()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    let started = lines.next().and_then(|l| l.trim().parse().ok());
    Some((pid, started))
}

/// Field 22 of /proc/<pid>/stat: when the process started, in clock ticks after boot.
fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces and parentheses) start
    // at field 3 (state); field 22 is the 20th of them.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The `application:` section of a pgwarden config that drives the stand-in through
/// `exe standin-ctl` with state in `dir`. `start` passes `--config config_file`, so the
/// app reads the very file pgwarden rewrites on a switch. Values that YAML could read as
/// something other than a plain string are double-quoted.
pub fn standin_application_yaml(
    exe: &Path,
    dir: &Path,
    db_user: &str,
    config_file: &Path,
) -> String {
    let exe = exe.to_string_lossy();
    let dir = dir.to_string_lossy();
    let config = config_file.to_string_lossy();
    let argv = |action: &str, extra: &[&str]| {
        let mut items = vec![exe.as_ref(), "standin-ctl", action, "--dir", dir.as_ref()];
        items.extend_from_slice(extra);
        items
            .iter()
            .map(|s| yaml_scalar(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "application:\n\
         \x20 name: standin\n\
         \x20 stop: [{stop}]\n\
         \x20 start: [{start}]\n\
         \x20 is_running: [{is_running}]\n\
         \x20 db_user: {user}\n\
         \x20 config_file: {config_yaml}\n\
         \x20 stop_timeout: 20s\n\
         \x20 start_timeout: 20s\n",
        stop = argv("stop", &[]),
        start = argv("start", &["--config", config.as_ref()]),
        is_running = argv("is-running", &[]),
        user = yaml_scalar(db_user),
        config_yaml = yaml_scalar(&config),
    )
}

/// `s` as a YAML scalar that reads back as the string `s`, in block or flow context:
/// plain when it is made of letters, digits and `/._-` and cannot be mistaken for a
/// number, boolean or null; else a double-quoted (JSON) string.
fn yaml_scalar(s: &str) -> String {
    let safe_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'));
    let safe_start = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '_')
        || (s.starts_with("--") && s[2..].starts_with(|c: char| c.is_ascii_alphabetic()));
    const RESERVED: [&str; 10] = [
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "nan",
    ];
    let reserved = RESERVED.iter().any(|r| r.eq_ignore_ascii_case(s));
    if safe_chars && safe_start && !reserved {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("a string always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_and_print() {
        for a in [CtlAction::Start, CtlAction::Stop, CtlAction::IsRunning] {
            assert_eq!(a.as_str().parse::<CtlAction>().unwrap(), a);
        }
        assert!("restart"
            .parse::<CtlAction>()
            .unwrap_err()
            .contains("restart"));
    }

    #[test]
    fn default_paths() {
        let o = CtlOptions::new("/usr/bin/pgwarden", "/srv/app");
        assert_eq!(o.config_path(), Path::new("/srv/app/database.cfg"));
        assert_eq!(o.ack_path(), Path::new("/srv/app/acks"));
        assert_eq!(o.pid_file(), Path::new("/srv/app/standin.pid"));
        assert_eq!(o.app_args, vec!["standin-app"]);
        assert_eq!(o.stop_timeout, DEFAULT_STOP_TIMEOUT);
    }

    #[test]
    fn pid_files() {
        assert_eq!(parse_pid_file("123\n"), Some((123, None)));
        assert_eq!(parse_pid_file("123\n456\n"), Some((123, Some(456))));
        assert_eq!(parse_pid_file("x\n"), None);
        assert_eq!(parse_pid_file("0\n"), None);
        assert_eq!(parse_pid_file(""), None);

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(running_pid(dir.path()), None);
        let me = std::process::id() as i32;
        write_pid_file(&dir.path().join(PID_FILE), me).unwrap();
        assert_eq!(running_pid(dir.path()), Some(me));
        // Same pid, other start time: a recycled pid, not ours.
        let started = proc_start_time(me).unwrap();
        fs::write(
            dir.path().join(PID_FILE),
            format!("{me}\n{}\n", started + 1),
        )
        .unwrap();
        assert_eq!(running_pid(dir.path()), None);
        fs::write(dir.path().join(PID_FILE), format!("{}\n", i32::MAX)).unwrap();
        assert_eq!(running_pid(dir.path()), None);
    }

    #[test]
    fn stop_and_is_running_without_an_app() {
        let dir = tempfile::tempdir().unwrap();
        let o = CtlOptions::new("/nonexistent/pgwarden", dir.path().join("svc"));
        assert_eq!(ctl(CtlAction::IsRunning, &o), EXIT_NOT_RUNNING);
        assert_eq!(ctl(CtlAction::Stop, &o), 0);
        fs::create_dir_all(&o.dir).unwrap();
        fs::write(o.pid_file(), format!("{}\n", i32::MAX)).unwrap();
        assert_eq!(ctl(CtlAction::Stop, &o), 0);
        assert!(!o.pid_file().exists(), "a stale pid file is removed");
    }

    #[test]
    fn start_reports_a_missing_program() {
        let dir = tempfile::tempdir().unwrap();
        let o = CtlOptions::new("/nonexistent/pgwarden", dir.path());
        assert_eq!(ctl(CtlAction::Start, &o), 1);
        assert!(!o.pid_file().exists());
    }

    #[test]
    fn start_reports_an_app_that_dies_at_once() {
        let dir = tempfile::tempdir().unwrap();
        // `sh -c 'echo ...; exit 7' standin-app --config ... --ack-file ...`
        let mut o = CtlOptions::new("/bin/sh", dir.path());
        o.app_args = vec!["-c".into(), "echo no database >&2; exit 7".into()];
        assert_eq!(ctl(CtlAction::Start, &o), 7);
        assert!(!o.pid_file().exists());
        let log = fs::read_to_string(o.log_file()).unwrap();
        assert!(log.contains("no database"), "{log}");
        assert_eq!(ctl(CtlAction::IsRunning, &o), EXIT_NOT_RUNNING);
    }

    #[test]
    fn start_stop_a_plain_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = CtlOptions::new("/bin/sh", dir.path());
        // Runs until SIGTERM; its args are the --config/--ack-file start appends.
        o.app_args = vec!["-c".into(), "exec sleep 600".into()];
        assert_eq!(ctl(CtlAction::Start, &o), 0);
        let pid = running_pid(dir.path()).expect("running");
        // Detached: a session of its own.
        // SAFETY: getsid has no preconditions.
        assert_eq!(unsafe { libc::getsid(pid) }, pid);
        assert_eq!(ctl(CtlAction::Start, &o), 0, "already running is success");
        assert_eq!(running_pid(dir.path()), Some(pid), "no second instance");
        assert_eq!(ctl(CtlAction::IsRunning, &o), 0);
        assert_eq!(ctl(CtlAction::Stop, &o), 0);
        assert!(!pid_alive(pid));
        assert!(!o.pid_file().exists());
        assert_eq!(ctl(CtlAction::IsRunning, &o), EXIT_NOT_RUNNING);
    }

    #[test]
    fn yaml_section() {
        let y = standin_application_yaml(
            Path::new("/usr/bin/pgwarden"),
            Path::new("/tmp/app"),
            "inmanta",
            Path::new("/tmp/app/database.cfg"),
        );
        assert_eq!(
            y,
            "application:\n  name: standin\n  \
             stop: [/usr/bin/pgwarden, standin-ctl, stop, --dir, /tmp/app]\n  \
             start: [/usr/bin/pgwarden, standin-ctl, start, --dir, /tmp/app, --config, /tmp/app/database.cfg]\n  \
             is_running: [/usr/bin/pgwarden, standin-ctl, is-running, --dir, /tmp/app]\n  \
             db_user: inmanta\n  config_file: /tmp/app/database.cfg\n  \
             stop_timeout: 20s\n  start_timeout: 20s\n"
        );
        let y = standin_application_yaml(
            Path::new("/opt/my app/pgwarden"),
            Path::new("/tmp/a,b"),
            "123",
            Path::new("/tmp/x: y.cfg"),
        );
        assert!(
            y.contains("stop: [\"/opt/my app/pgwarden\", standin-ctl, stop, --dir, \"/tmp/a,b\"]"),
            "{y}"
        );
        assert!(y.contains("db_user: \"123\"\n"), "{y}");
        assert!(y.contains("config_file: \"/tmp/x: y.cfg\"\n"), "{y}");
    }

    #[test]
    fn yaml_scalars() {
        for plain in ["inmanta", "/tmp/x-1/a.cfg", "--dir", "standin-ctl", "_x"] {
            assert_eq!(yaml_scalar(plain), plain);
        }
        for quoted in [
            "", "123", "1.5", "-1", "true", "No", "null", "~", "a b", "a:b", "#x", "-", "'",
        ] {
            assert!(yaml_scalar(quoted).starts_with('"'), "{quoted}");
        }
        assert_eq!(yaml_scalar("a\"b"), r#""a\"b""#);
    }
}
