//! Builds the [`ClusterView`] from the observations of one poll: each
//! node's role and links, then the health rules over it. The view's types
//! (`view.rs`) know nothing of the rules; the rules (`health.rs`) read the
//! view; this is where the two meet, so the arrows run one way.

use crate::config::Config;
use crate::health;
use crate::last_primary::{LastPrimary, LastStandby};
use crate::problem::Severity;
use crate::snapshot::{Lsn, ReplicationRow};
use crate::view::{ClusterView, LagBytes, NodeObservation, NodeView, Role, StandbyLink};

impl ClusterView {
    /// Derives the view. `observations` are in the order of `config.nodes`
    /// (missing entries count as never polled).
    pub fn build(config: &Config, observations: &[NodeObservation]) -> ClusterView {
        let nodes: Vec<NodeView> = config
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut obs = observations.get(i).cloned().unwrap_or_default();
                let down = obs.consecutive_failures >= config.poll.failure_threshold;
                if down {
                    obs.snapshot = None;
                }
                let role = match &obs.snapshot {
                    Some(s) if s.in_recovery && n.is_replica() => Role::Replica,
                    Some(s) if s.in_recovery => Role::Standby,
                    Some(_) => Role::Primary,
                    None => Role::Unknown,
                };
                let replication = obs
                    .snapshot
                    .as_ref()
                    .map(|s| {
                        s.replication
                            .iter()
                            .map(|row| link(config, &n.name, s.current_lsn, row))
                            .collect()
                    })
                    .unwrap_or_default();
                NodeView {
                    name: n.name.clone(),
                    host: n.host.clone(),
                    port: n.port,
                    reachable: obs.snapshot.is_some() && obs.consecutive_failures == 0,
                    down,
                    role,
                    consecutive_failures: obs.consecutive_failures,
                    daemon_down: obs
                        .daemon_failures
                        .map(|f| f >= config.poll.failure_threshold),
                    daemon_answered: obs.daemon_failures.map(|f| f == 0),
                    last_error: obs.last_error,
                    polled_at: obs.polled_at,
                    replication,
                    snapshot: obs.snapshot,
                }
            })
            .collect();
        // A primary whose last poll failed still counts within the debounce
        // (it is not down), but only when no reachable primary exists: right
        // after a switchover the stopped old primary must not hide the new one.
        let is_primary = |n: &&NodeView| n.role == Role::Primary;
        let reachable: Vec<&NodeView> = nodes
            .iter()
            .filter(is_primary)
            .filter(|n| n.reachable)
            .collect();
        let debounced: Vec<&NodeView> = nodes
            .iter()
            .filter(is_primary)
            .filter(|n| !n.reachable)
            .collect();
        let primary = match (reachable.as_slice(), debounced.as_slice()) {
            ([only], _) | ([], [only]) => Some(only.name.clone()),
            _ => None,
        };
        let mut view = ClusterView {
            cluster: config.cluster.clone(),
            primary,
            healthy: false,
            problems: Vec::new(),
            nodes,
            last_primary: None,
        };
        view.problems = health::evaluate(config, &view);
        view.healthy = !view
            .problems
            .iter()
            .any(|p| p.severity == Severity::Critical);
        view
    }

    /// Adds the problem of an operation stopped half-way (failed or
    /// interrupted): the cluster is not healthy until it is resumed or aborted.
    pub fn with_operation(mut self, op: Option<&crate::operation::Operation>) -> ClusterView {
        if let Some(op) = op {
            self.problems.extend(health::operation_problems(op));
            self.healthy = !self
                .problems
                .iter()
                .any(|p| p.severity == Severity::Critical);
        }
        self
    }
}

fn link(config: &Config, on_node: &str, current: Option<Lsn>, row: &ReplicationRow) -> StandbyLink {
    let behind = |l: Option<Lsn>| match (l, current) {
        (Some(l), Some(c)) => l.bytes_until(c),
        _ => 0,
    };
    StandbyLink {
        standby: standby_name(config, on_node, row),
        streaming: row.state.as_deref() == Some("streaming"),
        sync: row.sync_state.as_deref() == Some("sync"),
        lag_bytes: LagBytes {
            sent: behind(row.sent_lsn),
            write: behind(row.write_lsn),
            flush: behind(row.flush_lsn),
            replay: behind(row.replay_lsn),
        },
        row: row.clone(),
    }
}

/// Which configured node a `pg_stat_replication` row on `on_node` belongs to.
///
/// In order: an application_name equal to a node name (the Patroni
/// convention); an application_name that exactly one other node connects
/// with (`replication.application_name` for the pair's standby,
/// `nodes[].application_name` for a replica: on one address this is the
/// only identity a row has); a client address equal to exactly one other
/// node's host. Otherwise the row's own application_name.
pub fn standby_name(config: &Config, on_node: &str, row: &ReplicationRow) -> String {
    let others: Vec<_> = config.nodes.iter().filter(|n| n.name != on_node).collect();
    if let Some(n) = others.iter().find(|n| n.name == row.application_name) {
        return n.name.clone();
    }
    let by_identity: Vec<_> = others
        .iter()
        .filter(|n| n.walreceiver_name(&config.replication) == row.application_name)
        .collect();
    if let [only] = by_identity.as_slice() {
        return only.name.clone();
    }
    if let Some(addr) = &row.client_addr {
        let by_addr: Vec<_> = others.iter().filter(|n| &n.host == addr).collect();
        if let [only] = by_addr.as_slice() {
            return only.name.clone();
        }
    }
    row.application_name.clone()
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
}
