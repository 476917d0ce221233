//! The last state seen of the primary: what it had written and which
//! standby had it, kept after the primary goes silent, so a failover can
//! tell what the target lacks instead of trusting it.
//!
//! The daemon records it from every view in which the primary answered
//! (and persists it, fsync'd, when it changes); preflight compares the
//! target with it (`target_has_primary_wal`).

use serde::{Deserialize, Serialize};

use crate::snapshot::Lsn;
use crate::view::{ClusterView, Role};

/// One standby as the primary's `pg_stat_replication` showed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastStandby {
    pub name: String,
    pub state: Option<String>,
    pub sync_state: Option<String>,
    pub flush_lsn: Option<Lsn>,
}

/// The primary at its last sight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastPrimary {
    pub node: String,
    /// When it was last seen answering (RFC 3339).
    pub seen_at: String,
    pub timeline: u32,
    /// `pg_current_wal_lsn()`: everything it had written by then.
    pub current_lsn: Option<Lsn>,
    pub synchronous_standby_names: String,
    pub standbys: Vec<LastStandby>,
}

impl LastPrimary {
    /// The writable primary of `view` if it answered in this very poll.
    pub fn from_view(view: &ClusterView, now: &str) -> Option<LastPrimary> {
        let p = view.writable_primary()?;
        let s = p.snapshot.as_ref()?;
        if !p.reachable || p.role != Role::Primary {
            return None;
        }
        Some(LastPrimary {
            node: p.name.clone(),
            seen_at: now.to_owned(),
            timeline: s.timeline,
            current_lsn: s.current_lsn,
            synchronous_standby_names: s.settings.synchronous_standby_names.clone(),
            standbys: p
                .replication
                .iter()
                .map(|l| LastStandby {
                    name: l.standby.clone(),
                    state: l.row.state.clone(),
                    sync_state: l.row.sync_state.clone(),
                    flush_lsn: l.row.flush_lsn,
                })
                .collect(),
        })
    }

    /// Whether `other` says something new (more than a later `seen_at`):
    /// what is worth an fsync.
    pub fn differs_from(&self, other: &LastPrimary) -> bool {
        LastPrimary {
            seen_at: String::new(),
            ..self.clone()
        } != LastPrimary {
            seen_at: String::new(),
            ..other.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::{primary, standby};
    use crate::view::tests::{config, failed, ok};

    #[test]
    fn recorded_only_from_a_primary_that_answered() {
        let v = ClusterView::build(&config(), &[ok(primary()), ok(standby())]);
        let last = LastPrimary::from_view(&v, "t1").unwrap();
        assert_eq!(last.node, "pg-a");
        assert_eq!(last.standbys[0].name, "pg-b");
        assert_eq!(last.standbys[0].sync_state.as_deref(), Some("sync"));
        let v = ClusterView::build(&config(), &[failed(3), ok(standby())]);
        assert_eq!(LastPrimary::from_view(&v, "t2"), None);
        let mut later = last.clone();
        later.seen_at = "t3".into();
        assert!(!last.differs_from(&later));
        later.current_lsn = Lsn::parse("0/9000000");
        assert!(last.differs_from(&later));
    }
}
