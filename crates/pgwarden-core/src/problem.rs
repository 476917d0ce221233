//! The problems pgwarden reports: stable codes that alerts, scripts and
//! tests rely on, a severity, and a sentence. The rules that find them are
//! in [`crate::health`]; the view only carries them.

use std::fmt;

use serde::Serialize;

/// A stable, machine-readable problem code (snake_case in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    /// `poll.failure_threshold` polls in a row failed.
    NodeDown,
    /// No reachable node is a primary.
    NoPrimary,
    /// More than one reachable node accepts writes.
    SplitBrain,
    /// A primary on an older timeline than another primary: a former primary
    /// that came back after a failover.
    StalePrimary,
    /// The nodes are not copies of one cluster (different system identifiers).
    SystemIdentifierMismatch,
    /// The primary shows no streaming replication for a standby.
    StandbyNotStreaming,
    /// A standby streams but is not the synchronous one.
    StandbyNotSync,
    /// A standby is on another timeline than the primary.
    StandbyWrongTimeline,
    /// The replication slot is missing on the primary.
    SlotMissing,
    /// The replication slot exists but no standby uses it.
    SlotInactive,
    /// The slot lost or may lose WAL the standby needs, or holds back too much.
    SlotWalAtRisk,
    /// A standby is further behind than `health.max_lag_*`.
    LagHigh,
    /// Sessions wait for the synchronous standby: writes are blocked.
    WritesBlocked,
    /// `synchronous_standby_names` is empty on the primary.
    SyncStandbyNamesUnset,
    /// A setting that breaks replication or durability.
    SettingUnsafe,
    /// An operation stopped at a failed step: resume or abort it.
    OperationFailed,
    /// An operation was cut off (daemon killed): resume or abort it.
    OperationInterrupted,
    /// This node is a stale primary and its own daemon tried to stop it and
    /// could not (or could not verify the stop): two writers may coexist.
    StalePrimaryNotStopped,
    /// This daemon's node is a primary, and both the other node and the
    /// daemon beside it have been silent for `poll.failure_threshold`
    /// polls: it may have been failed over from the other side.
    PrimaryIsolated,
    /// This daemon has not polled the node yet (it just started): what the
    /// node is, is unknown, and unknown is not healthy.
    NodeNotPolled,
    /// A `role: replica` node does not stream from the primary, or streams
    /// on another timeline. A warning: the pair is unaffected.
    ReplicaNotStreaming,
    /// A `role: replica` node is further behind than `health.max_lag_*`.
    ReplicaLagHigh,
    /// A `role: replica` node runs as a primary (promoted with force): the
    /// config no longer says what the cluster is; operations are refused
    /// until it does.
    ConfigRoleMismatch,
}

impl ProblemCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemCode::NodeDown => "node_down",
            ProblemCode::NoPrimary => "no_primary",
            ProblemCode::SplitBrain => "split_brain",
            ProblemCode::StalePrimary => "stale_primary",
            ProblemCode::SystemIdentifierMismatch => "system_identifier_mismatch",
            ProblemCode::StandbyNotStreaming => "standby_not_streaming",
            ProblemCode::StandbyNotSync => "standby_not_sync",
            ProblemCode::StandbyWrongTimeline => "standby_wrong_timeline",
            ProblemCode::SlotMissing => "slot_missing",
            ProblemCode::SlotInactive => "slot_inactive",
            ProblemCode::SlotWalAtRisk => "slot_wal_at_risk",
            ProblemCode::LagHigh => "lag_high",
            ProblemCode::WritesBlocked => "writes_blocked",
            ProblemCode::SyncStandbyNamesUnset => "sync_standby_names_unset",
            ProblemCode::SettingUnsafe => "setting_unsafe",
            ProblemCode::OperationFailed => "operation_failed",
            ProblemCode::OperationInterrupted => "operation_interrupted",
            ProblemCode::StalePrimaryNotStopped => "stale_primary_not_stopped",
            ProblemCode::PrimaryIsolated => "primary_isolated",
            ProblemCode::NodeNotPolled => "node_not_polled",
            ProblemCode::ReplicaNotStreaming => "replica_not_streaming",
            ProblemCode::ReplicaLagHigh => "replica_lag_high",
            ProblemCode::ConfigRoleMismatch => "config_role_mismatch",
        }
    }
}

impl fmt::Display for ProblemCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Warning,
}

/// One thing wrong with the cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    pub code: ProblemCode,
    pub severity: Severity,
    /// The node it concerns; `None` for cluster-wide problems.
    pub node: Option<String>,
    /// A sentence for a human.
    pub message: String,
}
