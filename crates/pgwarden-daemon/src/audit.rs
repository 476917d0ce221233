//! The audit log: who asked for what, when, from where, and the result; one
//! JSON line per mutating request in `<state_dir>/audit.log`, appended and
//! fsync'd before the answer goes out.
//!
//! The caller is identified by a short hash of the token it presented: enough
//! to tell two tokens apart, useless to someone reading the log. Bodies of
//! mutating requests carry no secrets by design (target, reason, flags).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One audited request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub time: String,
    pub remote: String,
    /// `token:<12 hex>` of the presented token, or `anonymous`.
    pub caller: String,
    pub method: String,
    pub endpoint: String,
    pub body: serde_json::Value,
    pub status: u16,
    pub result: String,
}

/// The append-only audit file.
pub struct AuditLog {
    path: PathBuf,
    // A std Mutex: appends are short and no `.await` happens while held.
    file: Mutex<File>,
}

impl AuditLog {
    pub fn open(state_dir: &Path) -> io::Result<AuditLog> {
        let path = state_dir.join("audit.log");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        Ok(AuditLog {
            path,
            file: Mutex::new(file),
        })
    }

    /// Appends `entry` and fsyncs; an error means the entry may be lost and
    /// the caller must not report success for an unaudited action.
    pub fn append(&self, entry: &AuditEntry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).expect("an audit entry always serializes");
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&line)?;
        f.sync_data()
    }

    /// The last `limit` entries, oldest first. Lines that do not parse (a
    /// torn last line after a crash) are skipped.
    pub fn tail(&self, limit: usize) -> io::Result<Vec<AuditEntry>> {
        let reader = BufReader::new(File::open(&self.path)?);
        let mut out = std::collections::VecDeque::with_capacity(limit.min(1024));
        for line in reader.lines() {
            if let Ok(e) = serde_json::from_str::<AuditEntry>(&line?) {
                if out.len() == limit {
                    out.pop_front();
                }
                if limit > 0 {
                    out.push_back(e);
                }
            }
        }
        Ok(out.into())
    }
}

/// `token:` and the first 12 hex digits of SHA-256 of the token.
pub fn caller_id(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("token:{hex}")
}

/// Compares a presented token with the configured one in constant time (no
/// timing leak of how many leading bytes matched).
pub fn token_matches(presented: &str, expected: &str) -> bool {
    // Hash both first so lengths leak nothing either.
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u16) -> AuditEntry {
        AuditEntry {
            time: "2026-11-22T00:00:00Z".into(),
            remote: "127.0.0.1:5555".into(),
            caller: caller_id("s3cret-token"),
            method: "POST".into(),
            endpoint: "/v1/failover".into(),
            body: serde_json::json!({"target": "pg-b", "reason": "test"}),
            status: n,
            result: "accepted".into(),
        }
    }

    #[test]
    fn entries_append_and_tail_in_order() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(d.path()).unwrap();
        for n in 0..5 {
            log.append(&entry(200 + n)).unwrap();
        }
        let last: Vec<u16> = log.tail(2).unwrap().iter().map(|e| e.status).collect();
        assert_eq!(last, [203, 204]);
        assert_eq!(
            AuditLog::open(d.path()).unwrap().tail(100).unwrap().len(),
            5,
            "reopened, appended to"
        );
    }

    #[test]
    fn a_torn_line_is_skipped_and_the_token_never_written() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(d.path()).unwrap();
        log.append(&entry(202)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(d.path().join("audit.log"))
            .unwrap()
            .write_all(b"{\"time\":")
            .unwrap();
        assert_eq!(log.tail(10).unwrap().len(), 1);
        let text = std::fs::read_to_string(d.path().join("audit.log")).unwrap();
        assert!(!text.contains("s3cret-token"));
        assert!(text.contains("\"caller\":\"token:"));
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("", "abc"));
        assert_ne!(caller_id("a"), caller_id("b"));
        assert_eq!(caller_id("a").len(), "token:".len() + 12);
    }
}
