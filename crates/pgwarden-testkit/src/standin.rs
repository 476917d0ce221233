//! A stand-in for `inmanta-server`: reads inmanta's database.cfg, writes a numbered
//! heartbeat row every tick and records each acknowledged commit in an ack file. pgwarden
//! failovers fence it and rewrite its config; it follows by re-reading the file and
//! reconnecting, and the ack file lets tests check that no acknowledged write was lost.
//!
//! Like `inmanta-server`, it only starts against a writable primary: at startup it tries
//! for [`STARTUP_TIMEOUT`] (3 s) to connect to a server that is not in recovery, and
//! otherwise fails with [`KitError::DbUnreachable`], which [`exit_code`] maps to
//! [`EXIT_DB_UNREACHABLE`] (4). Once it has connected, it never gives up: it reconnects
//! forever, re-reading the config each time, and writes nothing while the server it
//! reaches is a standby (in recovery).
//!
//! Run as a process (signal mode, no stop flag) it returns on SIGTERM/SIGINT, except that
//! when the environment variable [`IGNORE_SIGTERM_ENV`] (`STANDIN_IGNORE_SIGTERM`) names
//! a file and that file exists when SIGTERM arrives, it ignores the signal and keeps its
//! session: an application that refuses to stop (see [`crate::service`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::{sleep, MissedTickBehavior};

use crate::error::KitError;

/// Where inmanta keeps its database settings by default.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/inmanta/inmanta.d/database.cfg";

/// Pause between reconnection attempts.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// Exit status of a stand-in process that found no writable primary at startup: the
/// status `inmanta-server` exits with when its database is unreachable.
pub const EXIT_DB_UNREACHABLE: i32 = 4;

/// How long the stand-in keeps trying to reach a writable primary at startup before it
/// fails with [`KitError::DbUnreachable`].
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Environment variable naming a flag file: while that file exists, the stand-in ignores
/// SIGTERM (signal mode only). `pgwarden standin-ctl start` sets it to
/// `<dir>/ignore-sigterm`.
pub const IGNORE_SIGTERM_ENV: &str = "STANDIN_IGNORE_SIGTERM";

/// How the stand-in runs.
#[derive(Clone, Debug)]
pub struct StandinOptions {
    /// INI file with the connection settings (re-read on every reconnect).
    pub config_file: PathBuf,
    /// Section holding host/port/name/username/password; inmanta uses "database".
    pub section: String,
    /// Each acknowledged heartbeat id is appended here, one per line.
    pub ack_file: PathBuf,
    /// Time between heartbeats.
    pub interval: Duration,
    /// When set, `run` returns once this becomes true (checked at least every 25 ms,
    /// also while a commit waits, e.g. on an absent synchronous standby). When set, the
    /// stand-in leaves SIGTERM/SIGINT alone so an embedding process (a test) keeps its
    /// default signal behaviour; when None it returns on SIGTERM/SIGINT.
    pub stop: Option<Arc<AtomicBool>>,
}

impl StandinOptions {
    /// Options with inmanta's section name, a 100 ms interval and no stop flag.
    pub fn new(config_file: impl Into<PathBuf>, ack_file: impl Into<PathBuf>) -> Self {
        StandinOptions {
            config_file: config_file.into(),
            section: "database".to_string(),
            ack_file: ack_file.into(),
            interval: Duration::from_millis(100),
            stop: None,
        }
    }
}

/// Connection settings read from the INI file, with inmanta's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbSettings {
    pub host: String,
    pub port: u16,
    pub name: String,
    pub username: String,
    pub password: Option<String>,
}

impl DbSettings {
    /// Reads `section` of the INI file at `path`.
    pub fn load(path: &Path, section: &str) -> Result<DbSettings, KitError> {
        let err = |message: String| KitError::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(format!(
                "cannot read it ({e}); write it first (write_database_cfg)"
            ))
        })?;
        let ini = parse_ini(&text);
        let values = ini
            .get(&section.to_ascii_lowercase())
            .ok_or_else(|| err(format!("no [{section}] section")))?;
        let get = |k: &str| values.get(k).cloned();
        let port = match get("port") {
            None => 5432,
            Some(p) => p
                .parse()
                .map_err(|_| err(format!("port = {p:?} is not a port number")))?,
        };
        Ok(DbSettings {
            host: get("host").unwrap_or_else(|| "localhost".into()),
            port,
            name: get("name").unwrap_or_else(|| "inmanta".into()),
            username: get("username").unwrap_or_else(|| "postgres".into()),
            password: get("password"),
        })
    }

    fn pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .dbname(&self.name)
            .user(&self.username)
            .application_name("pgwarden-standin")
            .connect_timeout(Duration::from_secs(2));
        if let Some(pw) = &self.password {
            c.password(pw);
        }
        c
    }
}

/// Parses INI text: `[section]` headers, `key = value` / `key=value` (or `key: value`)
/// lines, `#` and `;` comment lines. Section names and keys are lowercased; values are
/// trimmed and otherwise kept verbatim (no inline comments, as in Python's configparser).
pub fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_ascii_lowercase();
            out.entry(name.clone()).or_default();
            section = Some(name);
            continue;
        }
        let Some(section) = &section else { continue };
        let Some(pos) = line.find(['=', ':']) else {
            continue;
        };
        let (key, value) = (&line[..pos], &line[pos + 1..]);
        out.entry(section.clone())
            .or_default()
            .insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    out
}

/// Writes an inmanta-style database.cfg (atomically, mode 0600 as it holds a password).
pub fn write_database_cfg(
    path: &Path,
    host: &str,
    port: u16,
    db: &str,
    user: &str,
    password: &str,
) -> io::Result<()> {
    let text = format!(
        "# Database settings of the pgwarden stand-in application (inmanta format).\n\
         [database]\n\
         host={host}\n\
         port={port}\n\
         name={db}\n\
         username={user}\n\
         password={password}\n"
    );
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
    }
    // A reader (the stand-in reconnecting) sees either the old or the new file.
    std::fs::rename(&tmp, path)
}

/// The acknowledged heartbeat ids in an ack file (empty if it does not exist).
pub fn read_acks(path: &Path) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Runs the stand-in until SIGTERM/SIGINT (or the stop flag), then returns Ok.
///
/// Fails when it cannot start: unreadable config at startup, unwritable ack file, or
/// ([`KitError::DbUnreachable`]) no writable primary reachable within
/// [`STARTUP_TIMEOUT`]. After the first successful connection, database errors are
/// retried forever. A process should exit with [`exit_code`] of the result (or use
/// [`run_main`], which does the printing too).
pub fn run(opts: StandinOptions) -> Result<(), KitError> {
    // Fail fast on a config that is wrong from the start; later read errors are retried
    // (the file may be mid-rewrite by a failover).
    let settings = DbSettings::load(&opts.config_file, &opts.section)?;
    let ack = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&opts.ack_file)
        .map_err(|e| KitError::Standin {
            context: format!("opening ack file {}", opts.ack_file.display()),
            source: e,
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KitError::Standin {
            context: "starting the tokio runtime".into(),
            source: e,
        })?;
    rt.block_on(run_async(opts, settings, ack))
}

/// The exit status a stand-in process should end with: 0 for Ok,
/// [`EXIT_DB_UNREACHABLE`] (4) for [`KitError::DbUnreachable`], 1 for anything else.
pub fn exit_code(result: &Result<(), KitError>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(KitError::DbUnreachable { .. }) => EXIT_DB_UNREACHABLE,
        Err(_) => 1,
    }
}

/// [`run`] for a process's main: prints a failure on stderr and returns the exit status
/// ([`exit_code`]) the process should exit with. `pgwarden standin-app` is
/// `std::process::exit(standin::run_main(opts))`.
pub fn run_main(opts: StandinOptions) -> i32 {
    let result = run(opts);
    let code = exit_code(&result);
    if let Err(e) = &result {
        eprintln!("pgwarden-standin: {e}; exiting with status {code}");
    }
    code
}

/// What ends the stand-in: the stop flag, or SIGTERM/SIGINT when there is no flag.
struct Stopper {
    flag: Option<Arc<AtomicBool>>,
    term: Option<Signal>,
    int: Option<Signal>,
    /// While this file exists, SIGTERM is ignored (see [`IGNORE_SIGTERM_ENV`]).
    ignore_term_flag: Option<PathBuf>,
}

impl Stopper {
    fn new(flag: Option<Arc<AtomicBool>>) -> Result<Stopper, KitError> {
        let (term, int) = if flag.is_some() {
            (None, None)
        } else {
            let install = |kind: SignalKind, name: &str| {
                signal(kind).map_err(|e| KitError::Standin {
                    context: format!("installing the {name} handler"),
                    source: e,
                })
            };
            (
                Some(install(SignalKind::terminate(), "SIGTERM")?),
                Some(install(SignalKind::interrupt(), "SIGINT")?),
            )
        };
        let ignore_term_flag = if flag.is_some() {
            None
        } else {
            std::env::var_os(IGNORE_SIGTERM_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Ok(Stopper {
            flag,
            term,
            int,
            ignore_term_flag,
        })
    }

    /// Completes when the stand-in should stop. Cancel-safe.
    async fn stopped(&mut self) {
        loop {
            if self.flag.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
                return;
            }
            tokio::select! {
                _ = recv(&mut self.term) => {
                    if let Some(flag) = self.ignore_term_flag.as_ref().filter(|f| f.exists()) {
                        eprintln!(
                            "pgwarden-standin: ignoring SIGTERM ({} exists)",
                            flag.display()
                        );
                        continue;
                    }
                    return;
                }
                _ = recv(&mut self.int) => return,
                _ = sleep(Duration::from_millis(25)), if self.flag.is_some() => {}
            }
        }
    }
}

async fn recv(sig: &mut Option<Signal>) {
    match sig {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Why a connection attempt gave no usable session.
#[derive(Debug)]
enum ConnectError {
    Pg(tokio_postgres::Error),
    /// The server is a standby: inmanta-server does not run against one.
    InRecovery,
    /// The startup window ran out during the attempt.
    TimedOut,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Pg(e) => write!(f, "{e}"),
            ConnectError::InRecovery => {
                f.write_str("the server is in recovery (a read-only standby), not a primary")
            }
            ConnectError::TimedOut => f.write_str("the connection attempt did not complete"),
        }
    }
}

impl From<tokio_postgres::Error> for ConnectError {
    fn from(e: tokio_postgres::Error) -> Self {
        ConnectError::Pg(e)
    }
}

async fn run_async(
    opts: StandinOptions,
    mut settings: DbSettings,
    mut ack: File,
) -> Result<(), KitError> {
    let mut stopper = Stopper::new(opts.stop.clone())?;
    let started = Instant::now();
    let mut ever_connected = false;
    let mut first = true;
    // The last complaint printed, so a long outage logs one line per distinct error
    // rather than five per second.
    let mut last_complaint = String::new();
    loop {
        if !first {
            tokio::select! {
                _ = stopper.stopped() => return Ok(()),
                _ = sleep(RECONNECT_DELAY) => {}
            }
            match DbSettings::load(&opts.config_file, &opts.section) {
                Ok(s) => settings = s,
                Err(e) => eprintln!("pgwarden-standin: {e}; keeping the previous settings"),
            }
        }
        first = false;

        // Before the first connection, every attempt is bounded by what is left of the
        // startup window; afterwards only by the driver's connect timeout.
        let budget = (!ever_connected).then(|| STARTUP_TIMEOUT.saturating_sub(started.elapsed()));
        let attempt = async {
            match budget {
                Some(b) => tokio::time::timeout(b, connect(&settings))
                    .await
                    .unwrap_or(Err(ConnectError::TimedOut)),
                None => connect(&settings).await,
            }
        };
        let connected = tokio::select! {
            _ = stopper.stopped() => return Ok(()),
            r = attempt => r,
        };
        let (client, last_id) = match connected {
            Ok(c) => c,
            Err(e) => {
                let target = format!("{}:{}", settings.host, settings.port);
                let complaint = format!("cannot use {target}: {e}");
                if complaint != last_complaint {
                    let what = if ever_connected {
                        "retrying"
                    } else {
                        "retrying until the startup window closes"
                    };
                    eprintln!("pgwarden-standin: {complaint}; {what}");
                    last_complaint = complaint;
                }
                let waited = started.elapsed();
                if !ever_connected && waited + RECONNECT_DELAY >= STARTUP_TIMEOUT {
                    return Err(KitError::DbUnreachable {
                        target,
                        waited,
                        reason: e.to_string(),
                    });
                }
                continue;
            }
        };
        ever_connected = true;
        last_complaint.clear();
        eprintln!(
            "pgwarden-standin: connected to {}:{}, continuing after heartbeat {last_id}",
            settings.host, settings.port
        );

        let mut next = last_id + 1;
        let mut ticker = tokio::time::interval(opts.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopper.stopped() => return Ok(()),
                _ = ticker.tick() => {}
            }
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&next];
            let insert = client.execute("INSERT INTO heartbeat (id) VALUES ($1)", &params);
            let result = tokio::select! {
                _ = stopper.stopped() => return Ok(()),
                r = insert => r,
            };
            match result {
                Ok(_) => {
                    // Only now is the commit acknowledged (synchronously replicated when
                    // the primary is synchronous): record it.
                    writeln!(ack, "{next}")
                        .and_then(|_| ack.flush())
                        .map_err(|e| KitError::Standin {
                            context: format!("appending to ack file {}", opts.ack_file.display()),
                            source: e,
                        })?;
                    next += 1;
                }
                Err(e) => {
                    eprintln!("pgwarden-standin: heartbeat {next} failed: {e}; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Connects, checks that the server is a primary, creates the table if needed and
/// returns the highest id already there.
async fn connect(settings: &DbSettings) -> Result<(tokio_postgres::Client, i64), ConnectError> {
    let (client, connection) = settings.pg_config().connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        // Its error also surfaces on the next query through the client.
        let _ = connection.await;
    });
    // Checked first: on a standby even CREATE TABLE IF NOT EXISTS fails, with a less
    // telling error. Dropping the client ends the session.
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    if in_recovery {
        return Err(ConnectError::InRecovery);
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS heartbeat \
             (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let row = client
        .query_one("SELECT coalesce(max(id), 0)::bigint FROM heartbeat", &[])
        .await?;
    Ok((client, row.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_parsing() {
        let ini = parse_ini(
            "# comment\n; other\n[Database]\nHost = db.example\nport=6543\n\
             password = a=b:c\n[other]\nhost=x\n",
        );
        let db = &ini["database"];
        assert_eq!(db["host"], "db.example");
        assert_eq!(db["port"], "6543");
        assert_eq!(db["password"], "a=b:c");
        assert_eq!(ini["other"]["host"], "x");
    }

    #[test]
    fn cfg_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("database.cfg");
        write_database_cfg(&path, "127.0.0.1", 5433, "inmanta", "inmanta", "s3cret").unwrap();
        let s = DbSettings::load(&path, "database").unwrap();
        assert_eq!(
            s,
            DbSettings {
                host: "127.0.0.1".into(),
                port: 5433,
                name: "inmanta".into(),
                username: "inmanta".into(),
                password: Some("s3cret".into()),
            }
        );
        assert!(std::fs::read_to_string(&path).unwrap().starts_with('#'));
        let err = DbSettings::load(&path, "nope").unwrap_err().to_string();
        assert!(err.contains("no [nope] section"), "{err}");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&Ok(())), 0);
        let unreachable = KitError::DbUnreachable {
            target: "127.0.0.1:1".into(),
            waited: STARTUP_TIMEOUT,
            reason: "connection refused".into(),
        };
        assert_eq!(exit_code(&Err(unreachable)), EXIT_DB_UNREACHABLE);
        let config = KitError::Config {
            path: "/x".into(),
            message: "missing".into(),
        };
        assert_eq!(exit_code(&Err(config)), 1);
    }

    #[test]
    fn acks_skip_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks");
        assert!(read_acks(&path).is_empty());
        std::fs::write(&path, "1\n2\nx\n3").unwrap();
        assert_eq!(read_acks(&path), vec![1, 2, 3]);
    }
}
