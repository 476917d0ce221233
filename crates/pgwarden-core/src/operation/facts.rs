//! What an operation's steps record for later steps and for a resume,
//! typed. On the wire (the journal, `/v1/operations`) the facts are a flat
//! JSON object of strings, as they always were: `"new_timeline": "2"`,
//! `"replica_ro-1_repointed_ms": "41"`; journals written before this type
//! load unchanged, and a key this version does not know (or a value it
//! cannot read) is kept as it is.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::snapshot::Lsn;

/// The facts of one operation. Every field is None until a step records it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    into = "BTreeMap<String, String>",
    try_from = "BTreeMap<String, String>"
)]
pub struct Facts {
    // Failover and switchover.
    /// The node the target takes over from (preflight).
    pub old_primary: Option<String>,
    /// The old primary's last LSN: its shutdown checkpoint, or the last
    /// position seen before it stopped (stop_old_primary).
    pub old_primary_final_lsn: Option<Lsn>,
    /// How far the target was behind the primary's last known position, in
    /// bytes: what a forced failover may lose.
    pub bytes_possibly_lost: Option<u64>,
    /// The host whose application instance was stopped by the fence.
    pub app_ran_on: Option<String>,
    /// How long stopping the application took, in ms.
    pub app_stop_ms: Option<u64>,
    /// The target's timeline before pg_promote.
    pub timeline_before: Option<u32>,
    /// The timeline the new primary writes.
    pub new_timeline: Option<u32>,
    /// From pg_promote until the target took writes, in ms.
    pub promote_writable_ms: Option<u64>,
    /// The host the application was started on.
    pub app_started_on: Option<String>,
    /// How long starting the application took, in ms.
    pub app_start_ms: Option<u64>,
    // pgbouncer (`proxy.pgbouncer`).
    /// The hosts whose pgbouncer was PAUSEd (and must be RESUMEd).
    pub pgbouncer_paused: Option<Vec<String>>,
    /// The hosts whose pgbouncer now points at the new primary.
    pub pgbouncer_repointed: Option<Vec<String>>,
    /// How long the PAUSE took, in ms.
    pub pgbouncer_pause_ms: Option<u64>,
    /// How long the RESUME took, in ms.
    pub pgbouncer_resume_ms: Option<u64>,
    // Read-only replicas.
    /// The replicas that still follow the old primary.
    pub replicas_not_repointed: Option<Vec<String>>,
    /// Per replica, by node name (`replica_<name>_...` on the wire).
    pub replicas: BTreeMap<String, ReplicaFacts>,
    // Locks.
    /// What the peer lock said when taken (no etcd).
    pub peer_lock: Option<String>,
    /// A failover's probe of the old primary while the fence ran:
    /// `stopped`, `standby`, `alive` or `unknown`.
    pub old_primary_probe: Option<String>,
    /// What the probe saw.
    pub old_primary_probe_detail: Option<String>,
    /// When the probe answered (RFC 3339): its "stopped" is trusted briefly.
    pub old_primary_probe_at: Option<String>,
    /// When the fence was verified (RFC 3339); absent when it did not hold.
    pub fence_verified_at: Option<String>,
    /// The etcd lock key's create revision: the fencing token.
    pub lock_token: Option<i64>,
    /// The etcd lease holding the lock.
    pub etcd_lease: Option<i64>,
    /// What the etcd lock said when taken.
    pub etcd_lock: Option<String>,
    /// The checks of the etcd lock before each side effect: count, mean, longest.
    pub etcd_lock_checks: Option<String>,
    // Rejoin.
    /// The primary the node follows.
    pub primary: Option<String>,
    /// `auto`, `rewind` or `basebackup`: asked for by the request, then the
    /// method chosen.
    pub method: Option<String>,
    /// The method the operator asked for (kept across resumes).
    pub method_asked: Option<String>,
    /// Why the method was chosen.
    pub method_reason: Option<String>,
    /// Where the old data directory was moved aside by a fresh copy.
    pub old_data_dir: Option<PathBuf>,
    /// Whether the old data directory stays after the rejoin.
    pub keep_old_data: Option<bool>,
    /// Keys this version does not know, and values it cannot read, kept
    /// as they were read.
    pub other: BTreeMap<String, String>,
}

/// What is recorded about one read-only replica.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaFacts {
    /// From the re-point request until it streamed from the new primary.
    pub repointed_ms: Option<u64>,
}

/// A fact's value as the string it is on the wire.
trait Wire: Sized {
    fn to_wire(&self) -> String;
    fn from_wire(s: &str) -> Option<Self>;
}

impl Wire for String {
    fn to_wire(&self) -> String {
        self.clone()
    }
    fn from_wire(s: &str) -> Option<Self> {
        Some(s.to_owned())
    }
}

macro_rules! wire_by_parse {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            fn to_wire(&self) -> String {
                self.to_string()
            }
            fn from_wire(s: &str) -> Option<Self> {
                s.parse().ok()
            }
        }
    )*};
}
wire_by_parse!(u32, u64, i64, bool);

impl Wire for Lsn {
    fn to_wire(&self) -> String {
        self.to_string()
    }
    fn from_wire(s: &str) -> Option<Self> {
        Lsn::parse(s)
    }
}

impl Wire for PathBuf {
    fn to_wire(&self) -> String {
        self.display().to_string()
    }
    fn from_wire(s: &str) -> Option<Self> {
        Some(PathBuf::from(s))
    }
}

/// A comma-separated list of node names.
impl Wire for Vec<String> {
    fn to_wire(&self) -> String {
        self.join(",")
    }
    fn from_wire(s: &str) -> Option<Self> {
        Some(
            s.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
}

const REPLICA_PREFIX: &str = "replica_";
const REPOINTED_SUFFIX: &str = "_repointed_ms";

/// Calls `$f!(field)` for every named field of [`Facts`], so that the wire
/// names are the field names and no field is forgotten either way.
macro_rules! each_field {
    ($f:ident) => {
        $f!(
            old_primary,
            old_primary_final_lsn,
            bytes_possibly_lost,
            app_ran_on,
            app_stop_ms,
            timeline_before,
            new_timeline,
            promote_writable_ms,
            app_started_on,
            app_start_ms,
            pgbouncer_paused,
            pgbouncer_repointed,
            pgbouncer_pause_ms,
            pgbouncer_resume_ms,
            replicas_not_repointed,
            old_primary_probe,
            old_primary_probe_detail,
            old_primary_probe_at,
            fence_verified_at,
            peer_lock,
            lock_token,
            etcd_lease,
            etcd_lock,
            etcd_lock_checks,
            primary,
            method,
            method_asked,
            method_reason,
            old_data_dir,
            keep_old_data
        )
    };
}

impl From<Facts> for BTreeMap<String, String> {
    fn from(f: Facts) -> Self {
        let mut out = f.other;
        macro_rules! put {
            ($($name:ident),*) => {$(
                if let Some(v) = &f.$name {
                    out.insert(stringify!($name).to_owned(), v.to_wire());
                }
            )*};
        }
        each_field!(put);
        for (name, r) in f.replicas {
            if let Some(ms) = r.repointed_ms {
                out.insert(
                    format!("{REPLICA_PREFIX}{name}{REPOINTED_SUFFIX}"),
                    ms.to_wire(),
                );
            }
        }
        out
    }
}

impl From<BTreeMap<String, String>> for Facts {
    fn from(mut map: BTreeMap<String, String>) -> Self {
        let mut f = Facts::default();
        macro_rules! take {
            ($($name:ident),*) => {$(
                // A value that does not read (an old daemon's `?`) stays
                // as it was, and the fact is unknown.
                if let Some(v) = map.remove(stringify!($name)) {
                    match Wire::from_wire(&v) {
                        Some(t) => f.$name = Some(t),
                        None => {
                            f.other.insert(stringify!($name).to_owned(), v);
                        }
                    }
                }
            )*};
        }
        each_field!(take);
        for (key, v) in std::mem::take(&mut map) {
            let replica = key
                .strip_prefix(REPLICA_PREFIX)
                .and_then(|k| k.strip_suffix(REPOINTED_SUFFIX))
                .filter(|name| !name.is_empty());
            match (replica, u64::from_wire(&v)) {
                (Some(name), Some(ms)) => {
                    f.replicas.entry(name.to_owned()).or_default().repointed_ms = Some(ms);
                }
                _ => {
                    f.other.insert(key, v);
                }
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal record's facts as a daemon of the string-map days wrote
    /// them, every key of that time among them.
    const OLD: &str = r#"{
        "app_ran_on": "pg-a", "app_start_ms": "570", "app_started_on": "pg-b",
        "app_stop_ms": "140", "bytes_possibly_lost": "0", "etcd_lease": "7587869512345678",
        "etcd_lock": "/pgwarden/demo/lock created at revision 12", "keep_old_data": "false",
        "lock_token": "12", "method": "basebackup", "method_asked": "auto",
        "method_reason": "pg_rewind cannot work here (no hints)",
        "new_timeline": "2", "old_data_dir": "/var/lib/postgresql/15/main.pgwarden-old-x",
        "old_primary": "pg-a", "old_primary_final_lsn": "0/302C2C0",
        "peer_lock": "pg-b's daemon holds the lock", "pgbouncer_pause_ms": "3",
        "pgbouncer_paused": "pg-a,pg-b", "pgbouncer_repointed": "", "pgbouncer_resume_ms": "2",
        "primary": "pg-b", "promote_writable_ms": "75", "replica_ro-1_repointed_ms": "41",
        "replica_ro_2_repointed_ms": "9", "replicas_not_repointed": "ro-3",
        "timeline_before": "1", "some_later_key": "kept"
    }"#;

    #[test]
    fn an_old_journal_record_loads_typed_and_writes_back_the_same() {
        let before: serde_json::Value = serde_json::from_str(OLD).unwrap();
        let f: Facts = serde_json::from_str(OLD).unwrap();
        assert_eq!(f.new_timeline, Some(2));
        assert_eq!(f.old_primary_final_lsn, Lsn::parse("0/302C2C0"));
        assert_eq!(f.lock_token, Some(12));
        assert_eq!(f.keep_old_data, Some(false));
        assert_eq!(f.pgbouncer_paused, Some(vec!["pg-a".into(), "pg-b".into()]));
        assert_eq!(f.pgbouncer_repointed, Some(vec![]));
        assert_eq!(f.replicas["ro-1"].repointed_ms, Some(41));
        assert_eq!(f.replicas["ro_2"].repointed_ms, Some(9));
        assert_eq!(f.other["some_later_key"], "kept");
        assert!(f.other.len() == 1, "{:?}", f.other);
        assert_eq!(serde_json::to_value(&f).unwrap(), before);
    }

    #[test]
    fn facts_round_trip_as_a_flat_map_of_strings() {
        let mut f = Facts {
            old_primary: Some("pg-a".into()),
            new_timeline: Some(3),
            old_data_dir: Some("/d.old".into()),
            ..Default::default()
        };
        f.replicas.entry("ro-1".into()).or_default().repointed_ms = Some(7);
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"old_primary": "pg-a", "new_timeline": "3", "old_data_dir": "/d.old", "replica_ro-1_repointed_ms": "7"})
        );
        assert_eq!(serde_json::from_value::<Facts>(v).unwrap(), f);
        assert_eq!(
            serde_json::to_value(Facts::default()).unwrap(),
            serde_json::json!({})
        );
        // A known fact that does not read is unknown, and kept as it was.
        let f: Facts = serde_json::from_str(r#"{"new_timeline": "?"}"#).unwrap();
        assert_eq!(f.new_timeline, None);
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"new_timeline":"?"}"#
        );
    }
}
