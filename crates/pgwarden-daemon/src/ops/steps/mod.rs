//! The steps of every operation, one function each: failover.rs (the
//! failover and switchover steps, with their preflight and the checks a
//! resume repeats), rejoin.rs, and what they share here.
//!
//! Every step first looks at the real state and acts only if its effect is
//! not there yet, so running it again after a crash (resume) repeats no
//! side effect. What a later step needs is recorded in the operation's
//! `facts`, which the journal persists. Steps touch the world only through
//! [`Effects`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pgwarden_core::operation::{Operation, OperationKind, StepName, StepOutcome};
use pgwarden_core::preflight::{self, Verdict};
use pgwarden_core::view::ClusterView;
use pgwarden_core::Config;

use crate::effects::{Effects, NodeSql};

pub mod failover;
pub mod progress;
pub mod proxy;
pub mod rejoin;
pub mod replicas;
#[cfg(test)]
mod tables;
#[cfg(test)]
mod tables_rejoin;

pub use failover::{preflight_checks, reverify, silent_hosts};

/// What a step needs: the config, the latest cluster view, the effects.
pub struct StepContext {
    pub config: Arc<Config>,
    pub effects: Arc<dyn Effects>,
    pub view: Arc<ClusterView>,
    /// Hosts the request confirms fenced (`fenced_hosts`): their silence is
    /// accepted where pgwarden would otherwise stop.
    pub fenced_hosts: Vec<String>,
    /// Where the step's long work shows its progress (see `progress.rs`).
    pub progress: progress::Reporter,
}

/// How often conditions are re-checked while waiting for them: often, as
/// every check is a cheap command or a statement on a cached connection,
/// and the application is down while we wait.
pub(super) const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it yields `Some`, or `None` after `deadline`.
pub(crate) async fn wait_for<T, F, Fut>(
    deadline: Duration,
    every: Duration,
    mut check: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    // tokio's clock, so that tests with a paused clock run the waits at once.
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

pub(super) fn ok(msg: impl Into<String>) -> StepOutcome {
    StepOutcome::Succeeded(msg.into())
}

pub(super) fn fail(msg: impl Into<String>) -> StepOutcome {
    StepOutcome::Failed(msg.into())
}

/// The preflight step's checks, run again at the step itself: the checks,
/// or the step's failure naming every check that failed.
pub(super) async fn run_preflight(
    ctx: &StepContext,
    op: &Operation,
) -> Result<Vec<preflight::Check>, StepOutcome> {
    let checks = preflight_checks(
        &ctx.config,
        &ctx.effects,
        &ctx.view,
        op.kind,
        &op.request,
        None,
    )
    .await;
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .map(|c| format!("{}: {}", c.name, c.message))
        .collect();
    if failed.is_empty() {
        Ok(checks)
    } else {
        Err(fail(format!("refused: {}", failed.join("; "))))
    }
}

/// Runs one step of `op` and says how it ended.
pub async fn run_step(ctx: &StepContext, op: &mut Operation, step: StepName) -> StepOutcome {
    match op.kind {
        OperationKind::Rejoin => rejoin::run_step(ctx, op, step).await,
        OperationKind::Failover | OperationKind::Switchover => {
            failover::run_step(ctx, op, step).await
        }
    }
}

/// A fact an earlier step recorded (`name` is its journal key), or the
/// step's failure saying it is missing.
pub(super) fn fact<'o, T>(value: &'o Option<T>, name: &str) -> Result<&'o T, StepOutcome> {
    value.as_ref().ok_or_else(|| {
        fail(format!(
            "the journal lacks `{name}` (recorded by an earlier step)"
        ))
    })
}

/// Sets `synchronous_standby_names` on the primary `node` to the standby's
/// application name, reloads, and waits until pg_stat_replication shows that
/// standby with sync_state = sync.
pub async fn require_synchronous(
    node: &dyn NodeSql,
    node_name: &str,
    app_name: &str,
    deadline: Duration,
) -> Result<(), String> {
    // Quoted: application names may hold characters (`-`) that
    // synchronous_standby_names would otherwise not parse.
    let value = format!("\"{app_name}\"");
    let e = |e: pgwarden_pg::AdminError| e.to_string();
    node.alter_system("synchronous_standby_names", Some(&value))
        .await
        .map_err(e)?;
    node.reload().await.map_err(e)?;
    let synchronous = wait_for(deadline, POLL, || async {
        match node.sync_standbys_named(app_name).await {
            Ok(0) => None,
            Ok(_) => Some(Ok(())),
            Err(err) => Some(Err(e(err))),
        }
    })
    .await;
    synchronous.unwrap_or_else(|| {
        Err(format!(
            "synchronous_standby_names is set on {node_name}, but no standby named {app_name} became synchronous within {deadline:?}: check its primary_conninfo"
        ))
    })
}
