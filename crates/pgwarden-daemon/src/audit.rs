//! The audit log: who asked for what, when, from where, and the result; one
//! JSON line per mutating request in `<state_dir>/audit.log`, appended and
//! fsync'd before the answer goes out.
//!
//! The caller is identified by a short hash of the token it presented: enough
//! to tell two tokens apart, useless to someone reading the log. Bodies of
//! mutating requests carry no secrets by design (target, reason, flags); one
//! that does anyway (a token pasted into the body or the path by mistake) is
//! refused, and [`Redactor`] masks it in the entry.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
        // `mode` applies only to a new file: one left readable by others
        // (copied in, restored from a backup) is made private too.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
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

/// Masks the API token and the configured passwords in text that is kept or
/// shown: the audit entry of a request, an error that echoes its input.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Each secret as it is, and as it appears inside a JSON string when
    /// that differs (a password with `"` or `\\`), longest first.
    needles: Vec<String>,
}

/// What a secret is replaced with.
pub const REDACTED: &str = "***";

/// Shorter secrets are not looked for: masking every "ab" of a text would
/// destroy it, and a secret that short protects nothing anyway.
const MIN_SECRET_LEN: usize = 4;

impl Redactor {
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Redactor {
        let mut needles = Vec::new();
        for s in secrets.into_iter() {
            let s = s.as_ref();
            if s.len() < MIN_SECRET_LEN {
                continue;
            }
            let quoted = serde_json::to_string(s).expect("a string serializes");
            let escaped = &quoted[1..quoted.len() - 1];
            if escaped != s {
                needles.push(escaped.to_owned());
            }
            needles.push(s.to_owned());
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Redactor { needles }
    }

    /// Whether `text` holds a secret, as it is or percent-encoded (a path),
    /// however many times.
    pub fn found_in(&self, text: &[u8]) -> bool {
        let holds = |t: &[u8]| self.needles.iter().any(|n| contains(t, n.as_bytes()));
        let mut text = text.to_vec();
        loop {
            if holds(&text) {
                return true;
            }
            let decoded = percent_decode(&text);
            if decoded == text {
                return false;
            }
            text = decoded;
        }
    }

    /// [`Redactor::redact`], also for a secret that is there only
    /// percent-encoded (`/v1/operations/%34%37.../abort`): such a text is
    /// kept decoded as far as needed, then masked.
    pub fn mask(&self, text: &str) -> String {
        let mut out = self.redact(text);
        while self.found_in(out.as_bytes()) {
            let decoded = self.redact(&String::from_utf8_lossy(&percent_decode(out.as_bytes())));
            if decoded == out {
                break;
            }
            out = decoded;
        }
        out
    }

    /// Whether a JSON value holds a secret in a string or a key, however it
    /// was escaped in the text it was parsed from.
    pub fn found_in_json(&self, v: &serde_json::Value) -> bool {
        use serde_json::Value;
        match v {
            Value::String(s) => self.found_in(s.as_bytes()),
            Value::Array(a) => a.iter().any(|v| self.found_in_json(v)),
            Value::Object(o) => o
                .iter()
                .any(|(k, v)| self.found_in(k.as_bytes()) || self.found_in_json(v)),
            _ => false,
        }
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), REDACTED);
            }
        }
        out
    }

    /// The same for every string and key of a JSON value.
    pub fn redact_json(&self, v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::String(s) => Value::String(self.redact(&s)),
            Value::Array(a) => Value::Array(a.into_iter().map(|v| self.redact_json(v)).collect()),
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, v)| (self.redact(&k), self.redact_json(v)))
                    .collect(),
            ),
            other => other,
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// `%41` -> `A`; anything that is not a valid escape stays as it is.
fn percent_decode(text: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let escaped = (text[i] == b'%')
            .then(|| Some(hex(*text.get(i + 1)?)? << 4 | hex(*text.get(i + 2)?)?))
            .flatten();
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(text[i]);
                i += 1;
            }
        }
    }
    out
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
    fn the_log_is_private_even_when_it_was_not() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("audit.log");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        AuditLog::open(d.path()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
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
    fn secrets_are_found_and_masked_however_they_are_spelled() {
        let r = Redactor::new(["0123456789abcdef", "pa\"ss\\word", "ab"]);
        assert!(r.found_in(b"/v1/operations/0123456789abcdef/abort"));
        assert!(r.found_in(b"/v1/operations/%30123456789abcdef/abort"));
        assert!(r.found_in(br#"{"reason": "pa\"ss\\word"}"#));
        assert!(!r.found_in(b"/v1/operations/0123456789abcde/abort"));
        assert!(!r.found_in(b"ab ab ab"), "too short to look for");
        let v: serde_json::Value =
            serde_json::from_str(r#"{"x": ["\u0030123456789abcdef"], "pa\"ss\\word": 1}"#).unwrap();
        assert!(r.found_in_json(&v));
        let masked = r.redact_json(v);
        assert_eq!(masked, serde_json::json!({"x": ["***"], "***": 1}));
        assert_eq!(
            r.redact("token 0123456789abcdef and pa\"ss\\word, escaped pa\\\"ss\\\\word"),
            "token *** and ***, escaped ***"
        );
        assert!(!Redactor::default().found_in(b"anything"));
        // Every byte percent-encoded, twice (`0` is %30, then %2530).
        let twice: String = "0123456789abcdef"
            .bytes()
            .map(|b| format!("%25{b:02X}"))
            .collect();
        let path = format!("/v1/operations/{twice}/abort");
        assert!(r.found_in(path.as_bytes()));
        assert_eq!(r.mask(&path), "/v1/operations/***/abort");
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
