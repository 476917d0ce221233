//! The health rules: what is wrong with a [`ClusterView`], as stable problem
//! codes that alerts, scripts and tests rely on.
//!
//! A critical problem makes `/health` answer 503 and `cluster_healthy` 0; a
//! warning is reported but leaves the cluster healthy (a lag spike is not an
//! outage). Rules about standbys run only when there is exactly one primary:
//! with none or two, "standby X is not streaming" is noise next to the real
//! problem.

use crate::config::Config;
pub use crate::problem::{Problem, ProblemCode, Severity};
use crate::view::{ClusterView, Role};

fn critical(code: ProblemCode, node: Option<&str>, message: String) -> Problem {
    Problem {
        code,
        severity: Severity::Critical,
        node: node.map(str::to_owned),
        message,
    }
}

fn warning(code: ProblemCode, node: Option<&str>, message: String) -> Problem {
    Problem {
        code,
        severity: Severity::Warning,
        node: node.map(str::to_owned),
        message,
    }
}

/// Every problem of `view`, in a stable order (cluster-wide first, then by node).
///
/// A `role: replica` node's own trouble (not polled, down, not streaming,
/// behind) is a warning: the pair still fails over and serves writes without
/// it, so it must not turn `/health` 503 nor block an operation. What makes
/// a replica dangerous (it accepts writes: split brain; it is another
/// cluster: system identifier) stays critical.
pub fn evaluate(config: &Config, view: &ClusterView) -> Vec<Problem> {
    use ProblemCode::*;
    let mut out = Vec::new();
    let severe = |name: &str| {
        if config.is_replica(name) {
            warning
        } else {
            critical
        }
    };

    for n in view
        .nodes
        .iter()
        .filter(|n| n.polled_at.is_none() && n.snapshot.is_none() && n.consecutive_failures == 0)
    {
        out.push(severe(&n.name)(
            NodeNotPolled,
            Some(&n.name),
            format!(
                "{} has not been polled yet since this daemon started: its state is unknown",
                n.name
            ),
        ));
    }

    for n in view.nodes.iter().filter(|n| n.down) {
        out.push(severe(&n.name)(
            NodeDown,
            Some(&n.name),
            format!(
                "{} did not answer {} polls in a row: {}",
                n.name,
                n.consecutive_failures,
                n.last_error.as_deref().unwrap_or("no answer")
            ),
        ));
    }

    // Split brain needs two primaries that answer now; one that stopped
    // answering (within the debounce) is not writing for anyone.
    let primaries: Vec<_> = view
        .nodes
        .iter()
        .filter(|n| n.role == Role::Primary && n.reachable)
        .collect();
    let any_primary = view.nodes.iter().any(|n| n.role == Role::Primary);
    match primaries.len() {
        0 if any_primary => {}
        0 => out.push(critical(
            NoPrimary,
            None,
            "no reachable node is a primary".into(),
        )),
        1 => {}
        _ => {
            let names: Vec<String> = primaries
                .iter()
                .map(|n| format!("{} (timeline {})", n.name, timeline(n)))
                .collect();
            out.push(critical(
                SplitBrain,
                None,
                format!("more than one node accepts writes: {}", names.join(", ")),
            ));
            let newest = primaries.iter().map(|n| timeline(n)).max().unwrap_or(0);
            for n in primaries.iter().filter(|n| timeline(n) < newest) {
                out.push(critical(
                    StalePrimary,
                    Some(&n.name),
                    format!(
                        "{} is a primary on timeline {} while another primary is on timeline {}: a former primary came back; stop it and rejoin it as a standby",
                        n.name,
                        timeline(n),
                        newest
                    ),
                ));
            }
        }
    }

    out.extend(config_role_mismatch(config, view));

    // Every reachable node must be a copy of the same cluster; the primary's
    // identifier (or the first reachable node's) is the reference.
    let reference = primaries
        .first()
        .copied()
        .or_else(|| view.nodes.iter().find(|n| n.reachable))
        .and_then(|n| {
            n.snapshot
                .as_ref()
                .map(|s| (n.name.as_str(), s.system_identifier))
        });
    if let Some((ref_name, ref_id)) = reference {
        for n in &view.nodes {
            if let Some(s) = &n.snapshot {
                if s.system_identifier != ref_id {
                    out.push(critical(
                        SystemIdentifierMismatch,
                        Some(&n.name),
                        format!(
                            "{} has system identifier {} but {} has {}: they are not copies of one cluster",
                            n.name, s.system_identifier, ref_name, ref_id
                        ),
                    ));
                }
            }
        }
    }

    let Some(primary) = view.primary.as_deref().and_then(|p| view.node(p)) else {
        return out;
    };
    let Some(p) = primary.snapshot.as_ref() else {
        return out;
    };
    let pname = primary.name.as_str();
    let settings = &p.settings;

    if !matches!(settings.wal_level.as_str(), "replica" | "logical") {
        out.push(critical(
            SettingUnsafe,
            Some(pname),
            format!(
                "wal_level is {} on the primary: a standby needs replica or logical",
                settings.wal_level
            ),
        ));
    }
    if matches!(settings.synchronous_commit.as_str(), "off" | "local") {
        out.push(warning(
            SettingUnsafe,
            Some(pname),
            format!(
                "synchronous_commit is {} on the primary: commits do not wait for the standby, so a failover can lose them",
                settings.synchronous_commit
            ),
        ));
    }
    if settings.max_wal_senders < 2 {
        out.push(warning(
            SettingUnsafe,
            Some(pname),
            format!(
                "max_wal_senders is {} on the primary: the standby and a rebuild (pg_basebackup) need at least 2",
                settings.max_wal_senders
            ),
        ));
    }
    if settings.synchronous_standby_names.trim().is_empty() {
        out.push(critical(
            SyncStandbyNamesUnset,
            Some(pname),
            "synchronous_standby_names is empty on the primary: commits are not protected by the standby".into(),
        ));
    }
    if p.backends_waiting_sync_rep > 0 {
        out.push(critical(
            WritesBlocked,
            Some(pname),
            format!(
                "{} session(s) wait for the synchronous standby to confirm their commit: writes are blocked until it is back or `pgwarden sync async` releases them",
                p.backends_waiting_sync_rep
            ),
        ));
    }

    let slot_name = &config.replication.slot;
    match p.slot(slot_name) {
        None => out.push(critical(
            SlotMissing,
            Some(pname),
            format!("the replication slot `{slot_name}` does not exist on the primary {pname}"),
        )),
        Some(slot) => {
            if !slot.active {
                out.push(critical(
                    SlotInactive,
                    Some(pname),
                    format!("the replication slot `{slot_name}` on {pname} is not used by any standby; it retains WAL meanwhile"),
                ));
            }
            if let Some(status @ ("unreserved" | "lost")) = slot.wal_status.as_deref() {
                out.push(critical(
                    SlotWalAtRisk,
                    Some(pname),
                    format!(
                        "the replication slot `{slot_name}` has wal_status {status}: the standby {} the WAL it needs",
                        if status == "lost" { "has lost" } else { "is about to lose" }
                    ),
                ));
            }
            if let Some(retained) = slot.retained_bytes {
                if retained > config.health.max_slot_retained_wal {
                    out.push(warning(
                        SlotWalAtRisk,
                        Some(pname),
                        format!(
                            "the replication slot `{slot_name}` holds back {} of WAL (limit health.max_slot_retained_wal = {})",
                            human_bytes(retained),
                            human_bytes(config.health.max_slot_retained_wal)
                        ),
                    ));
                }
            }
        }
    }

    for n in view.nodes.iter().filter(|n| n.name != pname) {
        let name = n.name.as_str();
        if n.role == Role::Primary {
            continue; // already reported as split brain
        }
        if config.is_replica(name) {
            out.extend(replica_problems(config, primary, p, n));
            continue;
        }
        if let Some(s) = &n.snapshot {
            if s.timeline != p.timeline {
                out.push(critical(
                    StandbyWrongTimeline,
                    Some(name),
                    format!(
                        "standby {name} is on timeline {} but the primary {pname} is on timeline {}",
                        s.timeline, p.timeline
                    ),
                ));
            }
        }
        let link = primary.replication.iter().find(|l| l.standby == name);
        match link {
            Some(l) if l.streaming => {
                if !l.sync {
                    out.push(critical(
                        StandbyNotSync,
                        Some(name),
                        format!(
                            "standby {name} streams but its sync_state is {}: commits do not wait for it",
                            l.row.sync_state.as_deref().unwrap_or("unknown")
                        ),
                    ));
                }
                if l.lag_bytes.replay > config.health.max_lag_bytes {
                    out.push(warning(
                        LagHigh,
                        Some(name),
                        format!(
                            "standby {name} replays {} behind the primary (limit health.max_lag_bytes = {})",
                            human_bytes(l.lag_bytes.replay),
                            human_bytes(config.health.max_lag_bytes)
                        ),
                    ));
                } else if let Some(secs) = l.row.replay_lag_seconds {
                    if secs > config.health.max_lag_time.as_secs_f64() {
                        out.push(warning(
                            LagHigh,
                            Some(name),
                            format!(
                                "standby {name} replays {secs:.1}s behind the primary (limit health.max_lag_time = {}s)",
                                config.health.max_lag_time.as_secs()
                            ),
                        ));
                    }
                }
            }
            other => {
                let state = other
                    .and_then(|l| l.row.state.clone())
                    .map(|s| format!("its replication is in state {s}"))
                    .unwrap_or_else(|| "it has no replication connection".into());
                let why = if n.down || !n.reachable {
                    " and the node does not answer"
                } else {
                    ""
                };
                out.push(critical(
                    StandbyNotStreaming,
                    Some(name),
                    format!(
                        "standby {name} is not streaming from the primary {pname}: {state}{why}"
                    ),
                ));
            }
        }
    }
    out
}

/// A replica's problems (warnings): it streams from the primary on its
/// timeline, within `health.max_lag_*`.
fn replica_problems(
    config: &Config,
    primary: &crate::view::NodeView,
    p: &crate::snapshot::NodeSnapshot,
    n: &crate::view::NodeView,
) -> Vec<Problem> {
    use ProblemCode::*;
    let (name, pname) = (n.name.as_str(), primary.name.as_str());
    let mut out = Vec::new();
    if let Some(s) = &n.snapshot {
        if s.timeline != p.timeline {
            out.push(warning(
                ReplicaNotStreaming,
                Some(name),
                format!(
                    "replica {name} is on timeline {} but the primary {pname} is on timeline {}: re-point it (or rebuild it with `pgwarden rejoin {name}`)",
                    s.timeline, p.timeline
                ),
            ));
        }
    }
    match primary.replication.iter().find(|l| l.standby == name) {
        Some(l) if l.streaming => {
            let behind = if l.lag_bytes.replay > config.health.max_lag_bytes {
                Some(format!(
                    "{} (limit health.max_lag_bytes = {})",
                    human_bytes(l.lag_bytes.replay),
                    human_bytes(config.health.max_lag_bytes)
                ))
            } else {
                l.row
                    .replay_lag_seconds
                    .filter(|secs| *secs > config.health.max_lag_time.as_secs_f64())
                    .map(|secs| {
                        format!(
                            "{secs:.1}s (limit health.max_lag_time = {}s)",
                            config.health.max_lag_time.as_secs()
                        )
                    })
            };
            if let Some(behind) = behind {
                out.push(warning(
                    ReplicaLagHigh,
                    Some(name),
                    format!("replica {name} replays {behind} behind the primary {pname}: reads there are stale"),
                ));
            }
        }
        other => {
            let state = other
                .and_then(|l| l.row.state.clone())
                .map(|s| format!("its replication is in state {s}"))
                .unwrap_or_else(|| "it has no replication connection".into());
            let why = if n.down || !n.reachable {
                " and the node does not answer"
            } else {
                ""
            };
            out.push(warning(
                ReplicaNotStreaming,
                Some(name),
                format!("replica {name} is not streaming from the primary {pname}: {state}{why}"),
            ));
        }
    }
    out
}

/// `config_role_mismatch`: a `role: replica` node that answers as a primary,
/// typically promoted by a forced failover (the last resort when the pair is
/// lost). The view reports the role the node has (`primary`), not the one
/// the config gives it; but the config no longer describes the cluster: the
/// pair it names is not where the primary is, so a switchover, failover or
/// rejoin planned from it would be wrong (the promoted node would be left
/// out of the pair's rules and never get a synchronous standby). Critical,
/// and every operation is refused (preflight `roles_match_config`) until
/// the config is edited to say what the cluster is.
pub fn config_role_mismatch(config: &Config, view: &ClusterView) -> Vec<Problem> {
    view.nodes
        .iter()
        .filter(|n| config.is_replica(&n.name) && n.role == Role::Primary && n.reachable)
        .map(|n| {
            critical(
                ProblemCode::ConfigRoleMismatch,
                Some(&n.name),
                config_role_mismatch_message(&n.name),
            )
        })
        .collect()
}

/// What to do about a `role: replica` node running as the primary (shared by
/// the problem and the preflight check).
pub fn config_role_mismatch_message(name: &str) -> String {
    format!(
        "{name} is configured `role: replica` but runs as the primary (promoted with force): \
         edit nodes[] in every daemon's config so that {name} is one of the pair (remove its `role: replica`, \
         and give `role: replica` to, or remove, the pair node it replaces), restart the daemons, \
         then rejoin the other pair node as its standby; until then operations are refused"
    )
}

/// The problem an operation stopped half-way is: the cluster may be between
/// two states (application fenced, standby not yet promoted) until an
/// operator resumes or aborts it.
/// The stale-primary guard of `node` could not stop it: `why` says what
/// failed. Critical until the node is stopped by hand or the guard succeeds.
pub fn stale_primary_not_stopped(node: &str, why: &str) -> Problem {
    critical(
        ProblemCode::StalePrimaryNotStopped,
        Some(node),
        format!("{node} is a stale primary and its daemon could not stop it: {why}; stop it by hand (it is a second writer), then rejoin it"),
    )
}

/// `primary_isolated`: this daemon's own node is a reachable primary, every
/// node of the failover pair other than it is down with the daemon beside
/// it down too, and the operator has not confirmed all of those hosts
/// fenced (`confirmed`). A primary that cannot reach the other side of the
/// pair may be the losing side of a partition in which that side failed
/// over (Patroni's failsafe idea): it must not be offered to clients as the
/// primary until it hears from that side again.
///
/// Isolation is about whether the side that can take over sees us, so
/// `role: replica` nodes do not count: a replica is never promoted without
/// `force` and arbitrates nothing, and a replica (or its daemon) still
/// answering says nothing about whether the standby's side failed over. It
/// is a witness of the network: the message names it, and its daemon's
/// status tells the operator whether the standby's host is gone or only cut
/// from the primary. A node configured as a replica but running as the
/// primary (forcibly promoted) is isolated from the pair's two nodes alike.
pub fn primary_isolated(
    config: &Config,
    view: &ClusterView,
    confirmed: &std::collections::BTreeSet<String>,
) -> Option<Problem> {
    let me = view.node(&config.local_node)?;
    if me.role != Role::Primary || !me.reachable {
        return None;
    }
    let (peers, witnesses): (Vec<_>, Vec<_>) = view
        .nodes
        .iter()
        .filter(|n| n.name != me.name)
        .partition(|n| !config.is_replica(&n.name));
    // No peer in contact, and one the operator has not confirmed fenced
    // could have taken over.
    let isolated = !peers.is_empty()
        && peers.iter().all(|n| n.down && n.daemon_down == Some(true))
        && peers.iter().any(|n| !confirmed.contains(&n.name));
    isolated.then(|| {
        let names: Vec<&str> = peers.iter().map(|n| n.name.as_str()).collect();
        let seen: Vec<&str> = witnesses
            .iter()
            .filter(|n| n.reachable || n.daemon_answered == Some(true))
            .map(|n| n.name.as_str())
            .collect();
        let witness = if seen.is_empty() {
            String::new()
        } else {
            format!(
                " The replica(s) {} still answer, but a replica is no peer here: it cannot take over without force and decides nothing; \
                 its daemon's status shows whether {} is gone or only cut from {}.",
                seen.join(", "),
                names.join(", "),
                me.name
            )
        };
        critical(
            ProblemCode::PrimaryIsolated,
            Some(&me.name),
            format!(
                "{} is a primary that has lost {} and the daemon beside it for {} polls: the other side may have failed over. \
                 /primary answers 503 until a peer answers again, or the operator confirms the peer fenced \
                 (PUT /v1/sync with fenced_hosts).{witness}",
                me.name,
                names.join(", "),
                config.poll.failure_threshold
            ),
        )
    })
}

pub fn operation_problems(op: &crate::operation::Operation) -> Vec<Problem> {
    use crate::operation::{OperationState, StepState};
    let stopped_at = op
        .steps
        .iter()
        .find(|s| matches!(s.state, StepState::Failed | StepState::Running));
    let step = stopped_at
        .and_then(|s| serde_json::to_value(s.name).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "an unknown step".into());
    let then = format!(
        "`pgwarden resume {id}` finishes it, `pgwarden abort {id}` gives it up",
        id = op.id
    );
    let (code, what) = match op.state {
        OperationState::Failed => (
            ProblemCode::OperationFailed,
            format!(
                "failed at {step}: {}",
                stopped_at.and_then(|s| s.message.as_deref()).unwrap_or("")
            ),
        ),
        OperationState::Interrupted => (
            ProblemCode::OperationInterrupted,
            format!("was interrupted (daemon stopped) during {step}"),
        ),
        _ => return Vec::new(),
    };
    vec![critical(
        code,
        None,
        format!(
            "{} {} to {} {what}; {then}",
            op.kind, op.id, op.request.target
        ),
    )]
}

fn timeline(n: &crate::view::NodeView) -> u32 {
    n.snapshot.as_ref().map(|s| s.timeline).unwrap_or(0)
}

/// Moved to [`crate::units`]; kept here for the paths that name it.
pub use crate::units::human_bytes;

#[cfg(test)]
mod tests {
    use super::ProblemCode::*;
    use super::*;
    use crate::snapshot::tests::{primary, standby};
    use crate::snapshot::{Lsn, NodeSnapshot};
    use crate::view::tests::{config, failed, failed_after, ok};
    use crate::view::NodeObservation;

    fn with_no_rows(mut s: NodeSnapshot) -> NodeSnapshot {
        s.replication.clear();
        s
    }

    fn promoted(mut s: NodeSnapshot) -> NodeSnapshot {
        s.in_recovery = false;
        s.timeline += 1;
        s.current_lsn = Lsn::parse("0/5000000");
        s.wal_receiver = None;
        s
    }

    type Case = (
        &'static str,
        Vec<NodeObservation>,
        Vec<(ProblemCode, Option<&'static str>)>,
    );

    /// Each rule: a situation and exactly the problems it must produce.
    fn cases() -> Vec<Case> {
        let p = primary;
        let s = standby;
        let with_p = |f: fn(&mut NodeSnapshot)| {
            let mut x = p();
            f(&mut x);
            x
        };
        let with_s = |f: fn(&mut NodeSnapshot)| {
            let mut x = s();
            f(&mut x);
            x
        };
        vec![
            ("healthy", vec![ok(p()), ok(s())], vec![]),
            (
                "standby down: not streaming and down",
                vec![ok(with_p(|x| x.replication.clear())), failed(3)],
                vec![
                    (NodeDown, Some("pg-b")),
                    (StandbyNotStreaming, Some("pg-b")),
                ],
            ),
            (
                "standby failing below the threshold is not yet down",
                vec![ok(p()), failed(2)],
                vec![],
            ),
            (
                "primary down",
                vec![failed(3), ok(s())],
                vec![(NodeDown, Some("pg-a")), (NoPrimary, None)],
            ),
            (
                "primary never answered: no primary, not yet down",
                vec![failed(1), ok(s())],
                vec![(NoPrimary, None)],
            ),
            (
                "primary missed polls below the threshold: its last snapshot stands",
                vec![failed_after(p(), 2), ok(s())],
                vec![],
            ),
            (
                "old primary stopped by a switchover, still within the debounce: no split brain",
                vec![failed_after(p(), 1), ok(promoted(s()))],
                vec![
                    (SyncStandbyNamesUnset, Some("pg-b")),
                    (SlotMissing, Some("pg-b")),
                ],
            ),
            (
                "primary missed the threshold: down, its last snapshot no longer counts",
                vec![failed_after(p(), 3), ok(s())],
                vec![(NodeDown, Some("pg-a")), (NoPrimary, None)],
            ),
            (
                "standby promoted beside a live primary",
                vec![ok(p()), ok(promoted(s()))],
                vec![(SplitBrain, None), (StalePrimary, Some("pg-a"))],
            ),
            (
                "two clusters",
                vec![ok(p()), ok(with_s(|x| x.system_identifier = 42))],
                vec![(SystemIdentifierMismatch, Some("pg-b"))],
            ),
            (
                "standby connected but catching up",
                vec![
                    ok(with_p(|x| x.replication[0].state = Some("catchup".into()))),
                    ok(s()),
                ],
                vec![(StandbyNotStreaming, Some("pg-b"))],
            ),
            (
                "standby async",
                vec![
                    ok(with_p(|x| {
                        x.replication[0].sync_state = Some("async".into())
                    })),
                    ok(s()),
                ],
                vec![(StandbyNotSync, Some("pg-b"))],
            ),
            (
                "synchronous_standby_names unset",
                vec![
                    ok(with_p(|x| {
                        x.settings.synchronous_standby_names.clear();
                        x.replication[0].sync_state = Some("async".into());
                    })),
                    ok(s()),
                ],
                vec![
                    (SyncStandbyNamesUnset, Some("pg-a")),
                    (StandbyNotSync, Some("pg-b")),
                ],
            ),
            (
                "standby on the old timeline",
                vec![ok(with_p(|x| x.timeline = 2)), ok(s())],
                vec![(StandbyWrongTimeline, Some("pg-b"))],
            ),
            (
                "slot dropped",
                vec![ok(with_p(|x| x.slots.clear())), ok(s())],
                vec![(SlotMissing, Some("pg-a"))],
            ),
            (
                "slot inactive",
                vec![ok(with_p(|x| x.slots[0].active = false)), ok(s())],
                vec![(SlotInactive, Some("pg-a"))],
            ),
            (
                "slot lost its WAL",
                vec![
                    ok(with_p(|x| x.slots[0].wal_status = Some("lost".into()))),
                    ok(s()),
                ],
                vec![(SlotWalAtRisk, Some("pg-a"))],
            ),
            (
                "slot unreserved",
                vec![
                    ok(with_p(|x| {
                        x.slots[0].wal_status = Some("unreserved".into())
                    })),
                    ok(s()),
                ],
                vec![(SlotWalAtRisk, Some("pg-a"))],
            ),
            (
                "slot retains too much",
                vec![
                    ok(with_p(|x| x.slots[0].retained_bytes = Some(2 << 30))),
                    ok(s()),
                ],
                vec![(SlotWalAtRisk, Some("pg-a"))],
            ),
            (
                "lag in bytes",
                vec![
                    ok(with_p(|x| x.current_lsn = Lsn::parse("0/5000000"))),
                    ok(s()),
                ],
                vec![(LagHigh, Some("pg-b"))],
            ),
            (
                "lag in time",
                vec![
                    ok(with_p(|x| x.replication[0].replay_lag_seconds = Some(31.0))),
                    ok(s()),
                ],
                vec![(LagHigh, Some("pg-b"))],
            ),
            (
                "writes waiting on the standby",
                vec![ok(with_p(|x| x.backends_waiting_sync_rep = 3)), ok(s())],
                vec![(WritesBlocked, Some("pg-a"))],
            ),
            (
                "wal_level minimal",
                vec![
                    ok(with_p(|x| x.settings.wal_level = "minimal".into())),
                    ok(s()),
                ],
                vec![(SettingUnsafe, Some("pg-a"))],
            ),
            (
                "synchronous_commit off",
                vec![
                    ok(with_p(|x| x.settings.synchronous_commit = "off".into())),
                    ok(s()),
                ],
                vec![(SettingUnsafe, Some("pg-a"))],
            ),
            (
                "synchronous_commit local",
                vec![
                    ok(with_p(|x| x.settings.synchronous_commit = "local".into())),
                    ok(s()),
                ],
                vec![(SettingUnsafe, Some("pg-a"))],
            ),
            (
                "one wal sender",
                vec![ok(with_p(|x| x.settings.max_wal_senders = 1)), ok(s())],
                vec![(SettingUnsafe, Some("pg-a"))],
            ),
            (
                "nothing reachable",
                vec![failed(5), failed(5)],
                vec![
                    (NodeDown, Some("pg-a")),
                    (NodeDown, Some("pg-b")),
                    (NoPrimary, None),
                ],
            ),
        ]
    }

    #[test]
    fn every_rule_fires_exactly_where_it_should() {
        let c = config();
        for (name, obs, want) in cases() {
            let v = ClusterView::build(&c, &obs);
            let got: Vec<(ProblemCode, Option<&str>)> = v
                .problems
                .iter()
                .map(|p| (p.code, p.node.as_deref()))
                .collect();
            assert_eq!(got, want, "case `{name}`: {:#?}", v.problems);
        }
    }

    #[test]
    fn warnings_leave_the_cluster_healthy_and_critical_problems_do_not() {
        let c = config();
        for (name, obs, _) in cases() {
            let v = ClusterView::build(&c, &obs);
            let critical = v.problems.iter().any(|p| p.severity == Severity::Critical);
            assert_eq!(v.healthy, !critical, "case `{name}`");
        }
        let mut lagging = primary();
        lagging.current_lsn = Lsn::parse("0/5000000");
        assert!(ClusterView::build(&c, &[ok(lagging), ok(standby())]).healthy);
    }

    #[test]
    fn messages_name_the_node_and_say_what_to_do() {
        let mut p = primary();
        p.backends_waiting_sync_rep = 2;
        let v = ClusterView::build(&config(), &[ok(p), ok(standby())]);
        let m = &v.problems[0].message;
        assert!(
            m.contains("2 session(s)") && m.contains("pgwarden sync async"),
            "{m}"
        );
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(16 << 20), "16.0 MiB");
    }

    /// The reported layout: pg-a primary, pg-b its sync standby streaming as
    /// `inmanta`, ro-1 an async replica, all on 127.0.0.1.
    fn three(replica_row: Option<&str>, ro: NodeObservation) -> Vec<NodeObservation> {
        let mut p = primary();
        p.replication[0].client_addr = Some("127.0.0.1".into());
        if let Some(state) = replica_row {
            let mut row = p.replication[0].clone();
            row.application_name = "ro-1".into();
            row.sync_state = Some("async".into());
            row.state = Some(state.into());
            p.replication.push(row);
        }
        vec![ok(p), ok(standby()), ro]
    }

    fn problems_of(
        obs: &[NodeObservation],
    ) -> (bool, Vec<(ProblemCode, Severity, Option<String>)>) {
        let c = crate::view::tests::config_with_replica();
        let v = ClusterView::build(&c, obs);
        let list = v
            .problems
            .iter()
            .map(|p| (p.code, p.severity, p.node.clone()))
            .collect();
        (v.healthy, list)
    }

    #[test]
    fn a_streaming_replica_leaves_the_pair_healthy() {
        let (healthy, list) = problems_of(&three(Some("streaming"), ok(standby())));
        assert!(healthy && list.is_empty(), "{list:?}");
        let v = ClusterView::build(
            &crate::view::tests::config_with_replica(),
            &three(Some("streaming"), ok(standby())),
        );
        assert_eq!(v.nodes[2].role, crate::view::Role::Replica);
        assert_eq!(v.nodes[1].role, crate::view::Role::Standby);
    }

    #[test]
    fn a_replica_in_trouble_is_a_warning() {
        let ro = Some("ro-1".to_owned());
        let (healthy, list) = problems_of(&three(None, ok(standby())));
        assert!(healthy, "{list:?}");
        assert_eq!(
            list,
            vec![(ReplicaNotStreaming, Severity::Warning, ro.clone())]
        );

        let (healthy, list) = problems_of(&three(None, failed(3)));
        assert!(healthy, "{list:?}");
        assert_eq!(
            list,
            vec![
                (NodeDown, Severity::Warning, ro.clone()),
                (ReplicaNotStreaming, Severity::Warning, ro.clone())
            ]
        );

        let mut obs = three(Some("streaming"), ok(standby()));
        obs[0].snapshot.as_mut().unwrap().replication[1].replay_lsn = Lsn::parse("0/1000000");
        let (healthy, list) = problems_of(&obs);
        assert!(healthy, "{list:?}");
        assert_eq!(list, vec![(ReplicaLagHigh, Severity::Warning, ro.clone())]);

        let mut old_timeline = standby();
        old_timeline.timeline = 0;
        let (_, list) = problems_of(&three(Some("streaming"), ok(old_timeline)));
        assert_eq!(
            list,
            vec![(ReplicaNotStreaming, Severity::Warning, ro.clone())]
        );

        let (healthy, list) = problems_of(&three(Some("streaming"), NodeObservation::default()));
        assert!(healthy, "{list:?}");
        assert_eq!(list, vec![(NodeNotPolled, Severity::Warning, ro.clone())]);
    }

    /// `daemon` failed checks of the daemon beside a node (0: it answers).
    fn daemon(mut o: NodeObservation, failures: u32) -> NodeObservation {
        o.daemon_failures = Some(failures);
        o
    }

    fn isolation_of(c: &Config, obs: &[NodeObservation], confirmed: &[&str]) -> Option<Problem> {
        let v = ClusterView::build(c, obs);
        let confirmed = confirmed.iter().map(|s| s.to_string()).collect();
        primary_isolated(c, &v, &confirmed)
    }

    #[test]
    fn isolation_is_decided_by_the_pair_not_by_a_replica() {
        let two = crate::view::tests::config();
        let three = crate::view::tests::config_with_replica();
        let lonely = || ok(with_no_rows(primary()));
        // Two nodes: the standby and its daemon lost.
        let p = isolation_of(&two, &[lonely(), daemon(failed(3), 3)], &[]);
        assert_eq!(p.map(|p| p.code), Some(PrimaryIsolated));
        // The standby's daemon still answers: the other side sees us.
        assert!(isolation_of(&two, &[lonely(), daemon(failed(3), 0)], &[]).is_none());
        // Below the threshold the daemon is not yet down: unknown is never down.
        assert!(isolation_of(&two, &[lonely(), daemon(failed(3), 2)], &[]).is_none());
        // Confirmed fenced by the operator.
        assert!(isolation_of(&two, &[lonely(), daemon(failed(3), 3)], &["pg-b"]).is_none());

        // Three nodes, a and b cut, ro-1 and its daemon still see a: still
        // isolated, and the message names the witness.
        let cut = [lonely(), daemon(failed(3), 3), daemon(ok(standby()), 0)];
        let p = isolation_of(&three, &cut, &[]).expect("isolated despite the replica");
        assert_eq!(p.node.as_deref(), Some("pg-a"));
        assert!(
            p.message.contains("lost pg-b") && p.message.contains("ro-1 still answer"),
            "{}",
            p.message
        );
        // The replica lost too: isolated, no witness named.
        let p = isolation_of(
            &three,
            &[lonely(), daemon(failed(3), 3), daemon(failed(3), 3)],
            &[],
        )
        .unwrap();
        assert!(!p.message.contains("still answer"), "{}", p.message);
        // The standby's daemon answers: not isolated, whatever the replica.
        assert!(isolation_of(
            &three,
            &[lonely(), daemon(failed(3), 0), daemon(failed(3), 3)],
            &[]
        )
        .is_none());
        // The standby streams: not isolated.
        assert!(isolation_of(
            &three,
            &[
                ok(primary()),
                daemon(ok(standby()), 3),
                daemon(failed(3), 3)
            ],
            &[]
        )
        .is_none());
    }

    #[test]
    fn a_forcibly_promoted_replica_is_isolated_from_the_pair_alike() {
        let mut c = crate::view::tests::config_with_replica();
        c.local_node = "ro-1".into();
        let obs = [
            daemon(failed(3), 3),
            daemon(failed(3), 3),
            ok(with_no_rows(promoted(standby()))),
        ];
        let p = isolation_of(&c, &obs, &[]).expect("both pair nodes lost");
        assert!(p.message.contains("lost pg-a, pg-b"), "{}", p.message);
        assert!(isolation_of(&c, &obs, &["pg-a", "pg-b"]).is_none());
        assert!(isolation_of(&c, &obs, &["pg-a"]).is_some());
    }

    #[test]
    fn a_promoted_replica_is_a_split_brain() {
        let (healthy, list) = problems_of(&three(None, ok(promoted(standby()))));
        assert!(!healthy);
        assert!(
            list.iter()
                .any(|(c, s, _)| *c == SplitBrain && *s == Severity::Critical),
            "{list:?}"
        );
        assert!(
            list.contains(&(ConfigRoleMismatch, Severity::Critical, Some("ro-1".into()))),
            "{list:?}"
        );
    }

    /// After the last resort (pg-a and pg-b lost, ro-1 promoted with force)
    /// the view says what ro-1 is, the primary, and the problem says the
    /// config does not.
    #[test]
    fn a_forcibly_promoted_replica_is_the_primary_and_its_config_is_wrong() {
        let c = crate::view::tests::config_with_replica();
        let obs = [failed(3), failed(3), ok(promoted(standby()))];
        let v = ClusterView::build(&c, &obs);
        assert_eq!(v.primary.as_deref(), Some("ro-1"));
        assert_eq!(v.nodes[2].role, crate::view::Role::Primary);
        let p = v
            .problems
            .iter()
            .find(|p| p.code == ConfigRoleMismatch)
            .unwrap_or_else(|| panic!("{:?}", v.problems));
        assert_eq!(
            (p.severity, p.node.as_deref()),
            (Severity::Critical, Some("ro-1"))
        );
        assert!(
            p.message.contains("operations are refused"),
            "{}",
            p.message
        );
        // A replica in recovery, as configured: no such problem.
        let (_, list) = problems_of(&three(Some("streaming"), ok(standby())));
        assert!(list.iter().all(|(c, _, _)| *c != ConfigRoleMismatch));
    }
}

#[cfg(test)]
mod operation_tests {
    use super::*;
    use crate::operation::{Operation, OperationKind, Request, StepOutcome};

    #[test]
    fn an_operation_stopped_half_way_is_a_critical_problem() {
        let req = Request {
            target: "pg-b".into(),
            reason: String::new(),
            force: false,
            fenced_hosts: Vec::new(),
        };
        let mut op = Operation::new("op-1".into(), OperationKind::Failover, req, "t");
        assert!(
            operation_problems(&op).is_empty(),
            "running is not a problem"
        );
        op.start_step("t").unwrap();
        op.finish_step(StepOutcome::Succeeded("ok".into()), "t")
            .unwrap();
        op.start_step("t").unwrap();
        let mut cut = op.clone();
        cut.interrupt();
        let p = &operation_problems(&cut)[0];
        assert_eq!(p.code, ProblemCode::OperationInterrupted);
        assert!(
            p.message.contains("during fence_application")
                && p.message.contains("pgwarden resume op-1"),
            "{}",
            p.message
        );
        op.finish_step(StepOutcome::Failed("app still has 2 sessions".into()), "t")
            .unwrap();
        let p = &operation_problems(&op)[0];
        assert_eq!(
            (p.code, p.severity),
            (ProblemCode::OperationFailed, Severity::Critical)
        );
        assert!(
            p.message
                .contains("failed at fence_application: app still has 2 sessions"),
            "{}",
            p.message
        );
    }
}
