//! The derived picture of the whole cluster: [`ClusterView`].
//!
//! Built from the config and the latest observation of each node; it decides
//! each node's role, which node is the primary, how each standby replicates
//! from it, and (through [`crate::health`]) what is wrong. Metrics, `/health`,
//! `/primary`, `/replica` and `/v1/status` are all read from one view, so they
//! never disagree.

use serde::Serialize;

use crate::problem::{Problem, Severity};
use crate::snapshot::{NodeSnapshot, ReplicationRow};

/// What the poller knows about one node; the input of [`ClusterView::build`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeObservation {
    /// The latest successful snapshot. It is still used while the node
    /// fails fewer than `poll.failure_threshold` polls in a row, so one
    /// timed-out poll does not flip roles and health (the threshold is the
    /// debounce); a node that is down has no role.
    pub snapshot: Option<NodeSnapshot>,
    /// Failed polls in a row (0 after a success).
    pub consecutive_failures: u32,
    /// Why the latest poll failed (never contains a password).
    pub last_error: Option<String>,
    /// When the latest poll finished, as RFC 3339 text supplied by the caller.
    pub polled_at: Option<String>,
    /// Failed checks in a row of the daemon beside this node (`/livez`);
    /// `None` for this daemon's own node, or a node without `api`.
    pub daemon_failures: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Standby,
    /// A `role: replica` node in recovery: an asynchronous read-only
    /// replica, apart from the pair (a promoted replica is a `Primary`).
    Replica,
    Unknown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Replica => "replica",
            Role::Unknown => "unknown",
        }
    }
}

/// How far a standby is behind, by the primary's `pg_stat_replication`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LagBytes {
    pub sent: u64,
    pub write: u64,
    pub flush: u64,
    pub replay: u64,
}

/// A `pg_stat_replication` row with the standby it belongs to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StandbyLink {
    /// The config name of the standby when it could be matched, else the
    /// row's application_name.
    pub standby: String,
    pub streaming: bool,
    pub sync: bool,
    pub lag_bytes: LagBytes,
    #[serde(flatten)]
    pub row: ReplicationRow,
}

/// One node as the view sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeView {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The latest poll succeeded.
    pub reachable: bool,
    /// At least `poll.failure_threshold` polls failed in a row.
    pub down: bool,
    pub role: Role,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub polled_at: Option<String>,
    /// The daemon beside this node has not answered `poll.failure_threshold`
    /// checks in a row (`None`: not checked, e.g. this daemon's own node).
    pub daemon_down: Option<bool>,
    /// The latest check of the daemon beside this node answered (`None`:
    /// not checked yet, or this daemon's own node).
    pub daemon_answered: Option<bool>,
    /// The standbys streaming from this node, matched to config names.
    pub replication: Vec<StandbyLink>,
    /// The latest successful snapshot (possibly from an earlier poll while
    /// `reachable` is false and the node is not yet down).
    pub snapshot: Option<NodeSnapshot>,
}

/// Both nodes, their roles, and the problems found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterView {
    pub cluster: String,
    /// The one reachable primary; `None` when there is none, or more than one.
    pub primary: Option<String>,
    /// No critical problem.
    pub healthy: bool,
    pub problems: Vec<Problem>,
    pub nodes: Vec<NodeView>,
    /// The primary as last seen answering, kept after it goes silent (set
    /// by the daemon, which persists it; see [`crate::last_primary`]).
    pub last_primary: Option<crate::last_primary::LastPrimary>,
}

impl ClusterView {
    /// Adds problems found outside the poll (the stale-primary guard's).
    pub fn with_problems(mut self, extra: impl IntoIterator<Item = Problem>) -> ClusterView {
        self.problems.extend(extra);
        self.healthy = !self
            .problems
            .iter()
            .any(|p| p.severity == Severity::Critical);
        self
    }

    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The primary that clients may write to: the reachable primary on the
    /// highest timeline, if exactly one holds it. A primary left behind on an
    /// older timeline (a stale former primary) is never it.
    pub fn writable_primary(&self) -> Option<&NodeView> {
        let primaries: Vec<&NodeView> = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Primary)
            .collect();
        let top = primaries
            .iter()
            .filter_map(|n| n.snapshot.as_ref())
            .map(|s| s.timeline)
            .max()?;
        let mut on_top = primaries
            .into_iter()
            .filter(|n| n.snapshot.as_ref().map(|s| s.timeline) == Some(top));
        let first = on_top.next()?;
        on_top.next().is_none().then_some(first)
    }

    /// The link from the current primary to `standby`, if it streams.
    pub fn link_to(&self, standby: &str) -> Option<&StandbyLink> {
        let primary = self.node(self.primary.as_deref()?)?;
        primary.replication.iter().find(|l| l.standby == standby)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::assess::standby_name;
    use crate::config::Config;
    use crate::snapshot::tests::{primary, standby};
    use crate::snapshot::Lsn;

    pub fn config() -> Config {
        let text = r#"
cluster: test
local_node: pg-a
listen: 127.0.0.1:8008
state_dir: /tmp/x
api_token_file: /tmp/token
monitor: {user: pgwarden}
replication: {slot: replication, application_name: inmanta, user: replication}
nodes:
  - {name: pg-a, host: 10.0.0.1, port: 5432}
  - {name: pg-b, host: 10.0.0.2, port: 5432}
"#;
        Config::parse_str("test.yaml", text).unwrap()
    }

    pub fn ok(s: NodeSnapshot) -> NodeObservation {
        NodeObservation {
            snapshot: Some(s),
            ..Default::default()
        }
    }

    /// A node that answered once with `s`, then failed `times` polls.
    pub fn failed_after(s: NodeSnapshot, times: u32) -> NodeObservation {
        NodeObservation {
            snapshot: Some(s),
            ..failed(times)
        }
    }

    pub fn failed(times: u32) -> NodeObservation {
        NodeObservation {
            snapshot: None,
            consecutive_failures: times,
            last_error: Some("connection refused".into()),
            polled_at: None,
            daemon_failures: None,
        }
    }

    #[test]
    fn a_healthy_pair() {
        let v = ClusterView::build(&config(), &[ok(primary()), ok(standby())]);
        assert_eq!(v.primary.as_deref(), Some("pg-a"));
        assert!(v.healthy, "{:?}", v.problems);
        assert_eq!(v.nodes[1].role, Role::Standby);
        let link = v.link_to("pg-b").unwrap();
        assert!(link.streaming && link.sync);
        assert_eq!(
            link.lag_bytes,
            LagBytes {
                sent: 0,
                write: 0,
                flush: 0,
                replay: 0x48
            }
        );
    }

    #[test]
    fn rows_are_matched_to_node_names() {
        let c = config();
        let mut row = primary().replication[0].clone();
        assert_eq!(
            standby_name(&c, "pg-a", &row),
            "pg-b",
            "two nodes: the other one"
        );
        row.application_name = "pg-a".into();
        assert_eq!(standby_name(&c, "pg-b", &row), "pg-a", "by name");
        row.application_name = "other".into();
        row.client_addr = Some("10.0.0.2".into());
        assert_eq!(standby_name(&c, "pg-a", &row), "pg-b", "by address");
        row.client_addr = Some("10.9.9.9".into());
        assert_eq!(
            standby_name(&c, "pg-a", &row),
            "other",
            "unknown: its own name"
        );
    }

    /// The reported case: three nodes on one address, the standby streaming
    /// as `inmanta`, the replica as `ro-1`.
    pub fn config_with_replica() -> Config {
        let text = r#"
cluster: test
local_node: pg-a
listen: 127.0.0.1:8008
state_dir: /tmp/x
api_token_file: /tmp/token
monitor: {user: pgwarden}
replication: {slot: replication, application_name: inmanta, user: replication}
nodes:
  - {name: pg-a, host: 127.0.0.1, port: 5432}
  - {name: pg-b, host: 127.0.0.1, port: 5433}
  - {name: ro-1, host: 127.0.0.1, port: 5434, role: replica}
"#;
        Config::parse_str("test.yaml", text).unwrap()
    }

    #[test]
    fn rows_on_one_address_are_matched_by_application_name() {
        let c = config_with_replica();
        let mut row = primary().replication[0].clone();
        row.client_addr = Some("127.0.0.1".into());
        assert_eq!(standby_name(&c, "pg-a", &row), "pg-b", "the standby's name");
        assert_eq!(
            standby_name(&c, "pg-b", &row),
            "pg-a",
            "after a switchover the old primary streams as inmanta"
        );
        row.application_name = "ro-1".into();
        assert_eq!(standby_name(&c, "pg-a", &row), "ro-1");
        row.application_name = "psql".into();
        assert_eq!(
            standby_name(&c, "pg-a", &row),
            "psql",
            "one address, three nodes: an unknown name stays unknown"
        );
    }

    #[test]
    fn the_writable_primary_is_the_newest_timeline() {
        let mut newer = standby();
        newer.in_recovery = false;
        newer.timeline = 2;
        newer.current_lsn = Lsn::parse("0/4000000");
        let v = ClusterView::build(&config(), &[ok(primary()), ok(newer.clone())]);
        assert_eq!(v.primary, None, "two primaries: no single primary");
        assert_eq!(v.writable_primary().unwrap().name, "pg-b");
        newer.timeline = 1;
        let v = ClusterView::build(&config(), &[ok(primary()), ok(newer)]);
        assert!(
            v.writable_primary().is_none(),
            "same timeline: nobody is safe to write to"
        );
    }
}
