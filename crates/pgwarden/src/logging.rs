//! Where the logs go. Text on stderr by default, JSON with `--log-format
//! json`, and under systemd the journal's native protocol
//! (tracing-journald): one entry per event with its priority from the level
//! and every tracing field (of the event and of its spans: `node`,
//! `operation`, `step`, ...) as a journal field `F_<NAME>`, so that
//! `journalctl -u pgwarden F_OPERATION=<id>` or `-p warning` select exactly.
//!
//! `auto` (the default) uses the journal when stderr *is* the journal
//! stream: systemd sets `JOURNAL_STREAM=<dev>:<inode>` of the stream it
//! connects to stdout/stderr, and the variable is inherited by children whose
//! stderr was redirected elsewhere, so it is compared with stderr itself (as
//! sd_journal_stream_fd(3) recommends). If the journal's socket cannot be
//! reached, the logs stay on stderr (which systemd still collects) with a
//! warning saying why, rather than being lost.

use clap::ValueEnum;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// The journal when stderr is systemd's journal stream, else text.
    Auto,
    /// Human-readable text on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// The systemd journal's native protocol (text on stderr if unreachable).
    Journal,
}

pub fn init(format: LogFormat) {
    let filter =
        || EnvFilter::try_from_env("PGWARDEN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = match format {
        LogFormat::Journal => true,
        LogFormat::Auto => stderr_is_journal_stream(),
        LogFormat::Text | LogFormat::Json => false,
    };
    let mut fallback = None;
    if journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let mut priorities = tracing_journald::PriorityMappings::new();
                // info is the daemon's normal chatter: journal "info", not
                // "notice", so `journalctl -p notice` shows what matters.
                priorities.info = tracing_journald::Priority::Informational;
                priorities.debug = tracing_journald::Priority::Debug;
                let layer = layer
                    .with_syslog_identifier("pgwarden".into())
                    .with_priority_mappings(priorities);
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => fallback = Some(e),
        }
    }
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        _ => builder.init(),
    }
    if let Some(e) = fallback {
        tracing::warn!(
            error = %e,
            "the systemd journal cannot be reached (/run/systemd/journal/socket): logging text to stderr instead"
        );
    }
}

/// `JOURNAL_STREAM` names stderr's device and inode.
fn stderr_is_journal_stream() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat writes into a zeroed stat buffer we own; fd 2 may be
    // closed, which fstat reports as an error.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev == dev && st.st_ino == ino
}
