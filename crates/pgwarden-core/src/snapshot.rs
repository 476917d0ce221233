//! What one poll of one node saw: [`NodeSnapshot`].
//!
//! The probe (`pgwarden-pg`) asks PostgreSQL for a single JSON document whose
//! keys are exactly these field names, so this file is also the schema of that
//! query. The same structs are served, unchanged, in `GET /v1/status`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::conninfo::PrimaryConninfo;

/// A WAL position. Serialized the way PostgreSQL prints it (`0/3000148`);
/// read from that text or from a plain byte number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.trim().split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some(Lsn((hi << 32) | lo))
    }

    /// Bytes from `self` forward to `ahead` (0 when `ahead` is not ahead).
    pub fn bytes_until(self, ahead: Lsn) -> u64 {
        ahead.0.saturating_sub(self.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(Lsn(b)),
            Raw::Text(t) => Lsn::parse(&t)
                .ok_or_else(|| serde::de::Error::custom(format!("`{t}` is not an LSN"))),
        }
    }
}

/// Everything one poll of one node saw. Fields a standby (or a primary)
/// cannot report are `None` or empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSnapshot {
    /// `server_version_num`, e.g. 150010.
    pub server_version: u32,
    pub in_recovery: bool,
    /// The timeline this node writes (primary) or receives (standby). Read
    /// from the current WAL file name on a primary, because
    /// `pg_control_checkpoint()` still shows the old timeline until the first
    /// checkpoint after a promotion.
    pub timeline: u32,
    /// As a string in JSON: it does not fit a JavaScript number.
    #[serde(with = "u64_as_string")]
    pub system_identifier: u64,
    /// Primary: `pg_current_wal_lsn()`.
    pub current_lsn: Option<Lsn>,
    /// Standby: `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<Lsn>,
    /// Standby: `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<Lsn>,
    /// Standby: commit time of the last replayed transaction.
    pub last_replay_at: Option<String>,
    /// Standby: 0 when everything received is replayed, else the age of the
    /// last replayed transaction (server clock).
    pub replay_delay_seconds: Option<f64>,
    /// `pg_stat_replication`: the standbys streaming from this node.
    pub replication: Vec<ReplicationRow>,
    /// `pg_replication_slots`.
    pub slots: Vec<SlotRow>,
    /// `pg_stat_wal_receiver`, on a standby.
    pub wal_receiver: Option<WalReceiver>,
    pub settings: Settings,
    /// Backends whose commit waits for the synchronous standby (`SyncRep`).
    pub backends_waiting_sync_rep: u32,
    /// Client sessions per role (used to verify that the application is fenced).
    pub sessions_by_role: BTreeMap<String, u32>,
}

/// One row of `pg_stat_replication`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicationRow {
    pub pid: i32,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: Option<String>,
    pub sync_state: Option<String>,
    pub sent_lsn: Option<Lsn>,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub write_lag_seconds: Option<f64>,
    pub flush_lag_seconds: Option<f64>,
    pub replay_lag_seconds: Option<f64>,
}

/// One row of `pg_replication_slots`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotRow {
    pub slot_name: String,
    pub slot_type: String,
    pub active: bool,
    pub restart_lsn: Option<Lsn>,
    /// reserved | extended | unreserved | lost
    pub wal_status: Option<String>,
    /// Bytes that can still be written before this slot loses WAL (None: unlimited).
    pub safe_wal_size: Option<i64>,
    /// WAL held back by this slot, in bytes.
    pub retained_bytes: Option<u64>,
}

/// The row of `pg_stat_wal_receiver` on a standby.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WalReceiver {
    pub status: String,
    pub sender_host: Option<String>,
    pub sender_port: Option<u16>,
    pub slot_name: Option<String>,
    pub received_tli: Option<u32>,
    pub flushed_lsn: Option<Lsn>,
}

/// The settings that matter for replication safety.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub synchronous_standby_names: String,
    pub synchronous_commit: String,
    pub wal_level: String,
    pub hot_standby: String,
    pub max_wal_senders: u32,
    /// Parsed on arrival; the password is never kept.
    #[serde(deserialize_with = "conninfo_from_text")]
    pub primary_conninfo: PrimaryConninfo,
    pub primary_slot_name: String,
    pub wal_log_hints: String,
    pub data_checksums: String,
}

fn conninfo_from_text<'de, D: Deserializer<'de>>(d: D) -> Result<PrimaryConninfo, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Parsed(PrimaryConninfo),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Text(t) => PrimaryConninfo::parse(&t),
        Raw::Parsed(p) => p,
    })
}

mod u64_as_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(n),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl NodeSnapshot {
    /// The slot of that name, if this node has it.
    pub fn slot(&self, name: &str) -> Option<&SlotRow> {
        self.slots.iter().find(|s| s.slot_name == name)
    }

    /// Where this node's WAL ends: written (primary) or received (standby).
    pub fn wal_end(&self) -> Option<Lsn> {
        if self.in_recovery {
            self.receive_lsn.or(self.replay_lsn)
        } else {
            self.current_lsn
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A healthy primary as the probe reports it; tests tweak copies.
    pub fn primary() -> NodeSnapshot {
        serde_json::from_value(serde_json::json!({
            "server_version": 150010,
            "in_recovery": false,
            "timeline": 1,
            "system_identifier": 7300000000000000001u64,
            "current_lsn": "0/3000148",
            "receive_lsn": null,
            "replay_lsn": null,
            "last_replay_at": null,
            "replay_delay_seconds": null,
            "replication": [{
                "pid": 100, "application_name": "inmanta", "client_addr": "10.0.0.2",
                "state": "streaming", "sync_state": "sync",
                "sent_lsn": "0/3000148", "write_lsn": "0/3000148", "flush_lsn": "0/3000148",
                "replay_lsn": "0/3000100",
                "write_lag_seconds": 0.001, "flush_lag_seconds": 0.002, "replay_lag_seconds": 0.003
            }],
            "slots": [{
                "slot_name": "replication", "slot_type": "physical", "active": true,
                "restart_lsn": "0/3000000", "wal_status": "reserved", "safe_wal_size": null,
                "retained_bytes": 328
            }],
            "wal_receiver": null,
            "settings": {
                "synchronous_standby_names": "inmanta", "synchronous_commit": "on",
                "wal_level": "replica", "hot_standby": "on", "max_wal_senders": 10,
                "primary_conninfo": "", "primary_slot_name": "",
                "wal_log_hints": "on", "data_checksums": "off"
            },
            "backends_waiting_sync_rep": 0,
            "sessions_by_role": {"inmanta": 2, "pgwarden": 1}
        }))
        .expect("fixture parses")
    }

    /// A healthy standby of [`primary`].
    pub fn standby() -> NodeSnapshot {
        let mut s = primary();
        s.in_recovery = true;
        s.current_lsn = None;
        s.receive_lsn = Lsn::parse("0/3000148");
        s.replay_lsn = Lsn::parse("0/3000100");
        s.replay_delay_seconds = Some(0.0);
        s.replication.clear();
        s.slots.clear();
        s.wal_receiver = Some(WalReceiver {
            status: "streaming".into(),
            sender_host: Some("10.0.0.1".into()),
            sender_port: Some(5432),
            slot_name: Some("replication".into()),
            received_tli: Some(1),
            flushed_lsn: Lsn::parse("0/3000148"),
        });
        s.settings.synchronous_standby_names = String::new();
        s.settings.primary_conninfo = PrimaryConninfo::parse(
            "host=10.0.0.1 port=5432 user=replication password=hunter2 application_name=inmanta",
        );
        s.settings.primary_slot_name = "replication".into();
        s.sessions_by_role.clear();
        s
    }

    #[test]
    fn lsn_text_round_trips() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/0"), Some(Lsn(0)));
        assert_eq!(Lsn::parse("nope"), None);
        assert_eq!(Lsn::parse("1FFFFFFFF/0"), None);
        assert_eq!(Lsn(10).bytes_until(Lsn(4)), 0);
    }

    #[test]
    fn a_snapshot_serializes_without_secrets_and_reads_back() {
        let s = standby();
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("hunter2"));
        assert!(json.contains("\"system_identifier\":\"7300000000000000001\""));
        let back: NodeSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
