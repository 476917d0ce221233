//! The last state seen of the primary: what it had written and which
//! standby had it, kept after the primary goes silent, so a failover can
//! tell what the target lacks instead of trusting it.
//!
//! The daemon records it from every view in which the primary answered
//! (and persists it, fsync'd, when it changes a failover's verdict or the
//! LSN moved a quarter of `max_lag_on_failover`); preflight compares the
//! target with it (`target_has_primary_wal`). A sight is taken from a view
//! by `LastPrimary::from_view`, in `assess.rs`, where views are built.

use serde::{Deserialize, Serialize};

use crate::snapshot::Lsn;

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
    /// Whether this sight is worth an fsync over `on_disk`: anything that
    /// changes a failover's verdict at once (another primary or timeline,
    /// `synchronous_standby_names`, a standby's state or sync_state), or the
    /// primary's LSN more than `lsn_step` bytes past the recorded one. Under
    /// write load the LSN moves every poll; the record on disk then lags
    /// the truth by at most `lsn_step`, and only a daemon restarted after
    /// the primary died reads it (the running daemon keeps every sight).
    pub fn worth_persisting(&self, on_disk: Option<&LastPrimary>, lsn_step: u64) -> bool {
        let Some(d) = on_disk else { return true };
        let standbys = |l: &LastPrimary| -> Vec<(String, Option<String>, Option<String>)> {
            l.standbys
                .iter()
                .map(|s| (s.name.clone(), s.state.clone(), s.sync_state.clone()))
                .collect()
        };
        let moved = match (d.current_lsn, self.current_lsn) {
            (Some(then), Some(now)) => then.bytes_until(now) > lsn_step,
            (then, now) => then != now,
        };
        self.node != d.node
            || self.timeline != d.timeline
            || self.synchronous_standby_names != d.synchronous_standby_names
            || standbys(self) != standbys(d)
            || moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_verdict_changing_sight_or_a_large_lsn_step_is_persisted() {
        let v = ClusterView::build(&config(), &[ok(primary()), ok(standby())]);
        let disk = LastPrimary::from_view(&v, "t1").unwrap();
        assert!(disk.worth_persisting(None, 1024));
        let mut later = LastPrimary {
            seen_at: "t2".into(),
            ..disk.clone()
        };
        assert!(
            !later.worth_persisting(Some(&disk), 1024),
            "only seen_at changed"
        );
        let lsn = disk.current_lsn.unwrap();
        later.current_lsn = Some(Lsn(lsn.0 + 1024));
        assert!(!later.worth_persisting(Some(&disk), 1024));
        later.current_lsn = Some(Lsn(lsn.0 + 1025));
        assert!(later.worth_persisting(Some(&disk), 1024));
        let mut async_now = disk.clone();
        async_now.standbys[0].sync_state = Some("async".into());
        assert!(async_now.worth_persisting(Some(&disk), 1024));
        let mut unset = disk.clone();
        unset.synchronous_standby_names.clear();
        assert!(unset.worth_persisting(Some(&disk), 1024));
    }
    use crate::snapshot::tests::{primary, standby};
    use crate::view::tests::{config, failed, ok};
    use crate::view::ClusterView;

    #[test]
    fn recorded_only_from_a_primary_that_answered() {
        let v = ClusterView::build(&config(), &[ok(primary()), ok(standby())]);
        let last = LastPrimary::from_view(&v, "t1").unwrap();
        assert_eq!(last.node, "pg-a");
        assert_eq!(last.standbys[0].name, "pg-b");
        assert_eq!(last.standbys[0].sync_state.as_deref(), Some("sync"));
        let v = ClusterView::build(&config(), &[failed(3), ok(standby())]);
        assert_eq!(LastPrimary::from_view(&v, "t2"), None);
    }
}
