//! Small helpers shared by the cluster builder and the stand-in: ports, polling, random
//! secrets, log tails.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{IoContext, KitError};

/// How many lines of stderr / server log an error carries.
pub(crate) const TAIL_LINES: usize = 20;

/// Returns a TCP port that was free on 127.0.0.1 a moment ago.
///
/// The port is released before returning, so another process may grab it before the
/// caller binds it; `TestCluster::start` therefore retries a server start on a fresh port
/// when the log says the address was in use.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 never fails");
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}

/// Calls `f` every 50 ms until it returns `Some`, or fails once `timeout` has elapsed.
///
/// Tests use this instead of sleeping: it waits exactly as long as needed and the error
/// says what was awaited.
pub fn poll_until<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, KitError> {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(KitError::Timeout {
                what: what.to_string(),
                waited: now - start,
            });
        }
        std::thread::sleep(Duration::from_millis(50).min(deadline - now));
    }
}

/// `bytes` random bytes from /dev/urandom, hex encoded (so safe in SQL, conninfo and INI
/// files without quoting).
pub(crate) fn random_hex(bytes: usize) -> Result<String, KitError> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .ctx(|| "reading /dev/urandom for a random password".into())?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The last `n` lines of `text`.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of a file, reading at most its last 64 KiB; empty if unreadable.
pub(crate) fn file_tail(path: &Path, n: usize) -> String {
    tail_lines(&read_from(path, None), n)
}

/// The file's content from byte `offset` on (or its last 64 KiB when `offset` is None);
/// empty if unreadable. Used to look at what a server logged during one start attempt.
pub(crate) fn read_from(path: &Path, offset: Option<u64>) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = offset.unwrap_or(len.saturating_sub(64 * 1024)).min(len);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

pub(crate) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// True when running as root: PostgreSQL refuses that, so server commands go through
/// `runuser -u postgres`.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Quotes a string as an SQL literal (standard_conforming_strings is on by default).
pub(crate) fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Quotes a value for a postgresql.conf line.
pub(crate) fn conf_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes a libpq conninfo value when it needs it (empty, or containing spaces, quotes
/// or backslashes).
pub(crate) fn conninfo_value(s: &str) -> String {
    if !s.is_empty() && !s.contains([' ', '\'', '\\', '\t', '\n']) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
        assert_eq!(tail_lines("", 5), "");
    }

    #[test]
    fn quoting() {
        assert_eq!(sql_literal("it's"), "'it''s'");
        assert_eq!(conninfo_value("abc"), "abc");
        assert_eq!(conninfo_value("a b'c"), r"'a b\'c'");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(conf_literal(r"a'\"), r"'a''\\'");
    }

    #[test]
    fn poll_until_reports_what_it_awaited() {
        let err = poll_until(Duration::from_millis(120), "the moon", || None::<()>).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("the moon"), "{msg}");
        let mut n = 0;
        assert_eq!(
            poll_until(Duration::from_secs(5), "three calls", || {
                n += 1;
                (n == 3).then_some(n)
            })
            .unwrap(),
            3
        );
    }

    #[test]
    fn random_hex_is_random() {
        let a = random_hex(12).unwrap();
        assert_eq!(a.len(), 24);
        assert_ne!(a, random_hex(12).unwrap());
    }
}
