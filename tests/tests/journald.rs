//! Logs under systemd: when stderr is the journal stream (`JOURNAL_STREAM`
//! names its device and inode, as systemd sets it), the daemon speaks the
//! journal's native protocol, with priorities from the levels and the
//! tracing fields as journal fields; when the journal's socket is missing
//! it still starts, and logs text to stderr after a warning saying why.
//! Without systemd here, a datagram socket bound at journald's address
//! stands in for it (and is removed again, also on failure).

mod util;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgwarden_testkit::poll_until;
use util::Env;

const SOCKET: &str = "/run/systemd/journal/socket";

/// `JOURNAL_STREAM` for a daemon whose stderr is `log`.
fn journal_stream_of(log: &Path) -> String {
    let m = std::fs::metadata(log).unwrap();
    format!("{}:{}", m.dev(), m.ino())
}

/// The stand-in journald: its socket, and the directories it had to make.
struct FakeJournald {
    sock: UnixDatagram,
    made: Vec<PathBuf>,
}

impl FakeJournald {
    fn bind() -> FakeJournald {
        let mut made = Vec::new();
        for dir in ["/run/systemd", "/run/systemd/journal"] {
            if !Path::new(dir).exists() {
                std::fs::create_dir(dir)
                    .unwrap_or_else(|e| panic!("mkdir {dir} (needs root): {e}"));
                made.push(PathBuf::from(dir));
            }
        }
        let sock = UnixDatagram::bind(SOCKET).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        FakeJournald { sock, made }
    }

    /// Every entry received so far, each as its fields in order.
    fn drain(&self, into: &mut Vec<Vec<(String, String)>>) {
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = self.sock.recv(&mut buf) {
            if n > 0 {
                into.push(parse_entry(&buf[..n]));
            }
        }
    }
}

/// The journal's native protocol: `KEY=value\n`, or `KEY\n`, a 64-bit
/// little-endian length, the value's bytes and `\n` (for any value).
fn parse_entry(mut b: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while let Some(nl) = b.iter().position(|&c| c == b'\n') {
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|&c| c == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            b = &b[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &b[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = String::from_utf8_lossy(&rest[8..8 + len]).into_owned();
            assert_eq!(rest[8 + len], b'\n', "malformed entry after {key}");
            fields.push((key, value));
            b = &rest[8 + len + 1..];
        }
    }
    assert!(b.is_empty(), "trailing bytes in a journal entry: {b:?}");
    fields
}

fn has(entry: &[(String, String)], key: &str, value: &str) -> bool {
    entry.iter().any(|(k, v)| k == key && v == value)
}

impl Drop for FakeJournald {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(SOCKET);
        for dir in self.made.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn journal_stream_logs_to_the_journal_and_falls_back_to_stderr_without_it() {
    let mut env = Env::start();
    let log = env.daemons[0].log.clone();
    let stream = journal_stream_of(&log);
    let real_journald = Path::new(SOCKET).exists();

    if !real_journald {
        // No journald: the daemon starts (Daemon::start waits for /livez),
        // warns on stderr once, and logs text there.
        let before = std::fs::read_to_string(&log).unwrap().len();
        env.restart_daemon(0, &[("JOURNAL_STREAM", &stream)]);
        let text = poll_until(
            Duration::from_secs(20),
            "the daemon to log it listens",
            || {
                let all = std::fs::read_to_string(&log).unwrap();
                let new = all[before..].to_owned();
                new.contains("pgwarden listening").then_some(new)
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", env.daemons[0].log_text()));
        let warning = text
            .lines()
            .find(|l| l.contains("the systemd journal cannot be reached"))
            .unwrap_or_else(|| panic!("no warning about the journal:\n{text}"));
        assert!(
            warning.contains("WARN") && warning.contains(SOCKET),
            "{warning}"
        );
        // It works: healthy once it has polled both nodes.
        env.wait_health(
            0,
            "healthy after the restart",
            env.within_polls(3),
            |c, _| c == 200,
        );
    }

    // A journald: entries go there, not to stderr.
    let journald = (!real_journald).then(FakeJournald::bind);
    let before = std::fs::read_to_string(&log).unwrap().len();
    env.restart_daemon(0, &[("JOURNAL_STREAM", &stream)]);
    if let Some(j) = &journald {
        let mut got = Vec::new();
        let listening = poll_until(
            Duration::from_secs(20),
            "the journal entry `pgwarden listening`",
            || {
                j.drain(&mut got);
                got.iter()
                    .find(|e| has(e, "MESSAGE", "pgwarden listening"))
                    .cloned()
            },
        )
        .unwrap_or_else(|e| panic!("{e}\nreceived: {got:#?}\n{}", env.daemons[0].log_text()));
        // info is journal priority 6; the event's fields and its span's
        // (`daemon{node=...}`) are journal fields.
        for (key, value) in [
            ("PRIORITY", "6"),
            ("SYSLOG_IDENTIFIER", "pgwarden"),
            ("F_NODE", "pg-a"),
            ("F_LOCAL_NODE", "pg-a"),
            ("F_CLUSTER", "demo"),
            ("TARGET", "pgwarden_daemon"),
        ] {
            assert!(
                has(&listening, key, value),
                "{key}={value} missing in {listening:#?}"
            );
        }
    }
    env.wait_health(
        0,
        "healthy after the restart",
        env.within_polls(3),
        |c, _| c == 200,
    );
    let after = std::fs::read_to_string(&log).unwrap();
    assert!(
        !after[before..].contains("pgwarden listening"),
        "logged to stderr although the journal is there:\n{}",
        &after[before..]
    );

    // JOURNAL_STREAM inherited by a process whose stderr is elsewhere (not
    // the journal stream) keeps text on stderr, without a warning.
    let before = after.len();
    env.restart_daemon(0, &[("JOURNAL_STREAM", "1:1")]);
    let text = poll_until(Duration::from_secs(20), "text on stderr again", || {
        let all = std::fs::read_to_string(&log).unwrap();
        let new = all[before..].to_owned();
        new.contains("pgwarden listening").then_some(new)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", env.daemons[0].log_text()));
    assert!(!text.contains("journal cannot be reached"), "{text}");
    drop(journald);
}
