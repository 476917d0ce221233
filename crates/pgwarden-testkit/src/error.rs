//! The testkit's error type: every variant carries enough context (command line, exit
//! status, stderr and server-log tails) to tell the user what went wrong and what to do.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building or driving a test cluster or the stand-in.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// No directory holding both `initdb` and `pg_ctl` was found.
    #[error("{}", not_found_message(.searched))]
    PgBinNotFound {
        /// Every place that was looked at, with the reason it was rejected.
        searched: Vec<String>,
    },

    /// A file-system or process-spawning operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. "creating /tmp/x/logs".
        context: String,
        #[source]
        source: io::Error,
    },

    /// An external command (initdb, pg_ctl, pg_basebackup, psql) exited unsuccessfully.
    #[error("{0}")]
    Command(Box<CommandFailure>),

    /// `poll_until` gave up.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },

    /// Building a cluster failed; `source` is the underlying failure, `logs` the server log
    /// tails of the nodes (empty when `source` already carries them).
    #[error("building the test cluster failed while {step}: {source}{logs}")]
    Start {
        step: String,
        #[source]
        source: Box<KitError>,
        logs: String,
    },

    /// The machine is not set up the way the testkit needs (missing user, unreachable
    /// directory, path too long...). The message says how to fix it.
    #[error("{0}")]
    Environment(String),

    /// The stand-in's INI file is missing, unreadable or lacks the section.
    #[error("stand-in configuration {path}: {message}")]
    Config { path: PathBuf, message: String },

    /// The stand-in found no writable primary within its startup window (unreachable,
    /// refusing the login, or a read-only standby). Like `inmanta-server`, the stand-in
    /// process then exits with status 4 ([`crate::standin::EXIT_DB_UNREACHABLE`]).
    #[error("stand-in: no usable database at {target} within {waited:?} of starting: {reason}")]
    DbUnreachable {
        /// host:port from the config file at the last attempt.
        target: String,
        waited: Duration,
        /// The last attempt's error.
        reason: String,
    },

    /// The stand-in hit an error it cannot retry (e.g. its ack file is not writable).
    #[error("stand-in: {context}: {source}")]
    Standin {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl KitError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        KitError::Io {
            context: context.into(),
            source,
        }
    }

    /// True for a `Command` error that already carries a server-log tail.
    pub(crate) fn has_log(&self) -> bool {
        matches!(self, KitError::Command(f) if f.log.is_some())
    }
}

/// Shorthand for `map_err(|e| KitError::io(..))` with a lazily built context.
pub(crate) trait IoContext<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T, KitError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T, KitError> {
        self.map_err(|e| KitError::io(f(), e))
    }
}

fn not_found_message(searched: &[String]) -> String {
    let mut s = String::from(
        "PostgreSQL server binaries not found: no directory holds both `initdb` and `pg_ctl`.\n\
         Looked in:\n",
    );
    for place in searched {
        let _ = writeln!(s, "  - {place}");
    }
    s.push_str(
        "Install the server, e.g. `apt-get install postgresql-15`, or name the directory that \
         holds initdb explicitly (ClusterOptions::bin_dir).",
    );
    s
}

/// Details of a failed external command.
#[derive(Debug)]
pub struct CommandFailure {
    /// The command line as run (never contains a password).
    pub command: String,
    /// Its exit status, e.g. "exit status: 1".
    pub status: String,
    /// The last lines of its stderr (or of stdout when stderr was empty).
    pub stderr: String,
    /// The server log consulted and its last lines, when one is relevant.
    pub log: Option<(PathBuf, String)>,
    /// What the user can do about it, when we know.
    pub hint: Option<String>,
}

impl std::fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` failed ({})", self.command, self.status)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        if !self.stderr.trim().is_empty() {
            write!(f, "\n  its output (last lines):\n{}", indent(&self.stderr))?;
        }
        if let Some((path, tail)) = &self.log {
            write!(
                f,
                "\n  server log {} (last lines):\n{}",
                path.display(),
                indent(tail)
            )?;
        }
        Ok(())
    }
}

pub(crate) fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
