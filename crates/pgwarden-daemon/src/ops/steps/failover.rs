//! The steps of a failover or switchover, one function each.
//!
//! Every step first looks at the real state and acts only if its effect is
//! not there yet, so running it again after a crash (resume) repeats no
//! side effect: a promoted node is not promoted again, a config file that
//! already points to the new primary is not rewritten. What a later step
//! needs (the old primary, its final LSN, the new timeline) is recorded in
//! the operation's `facts`, which the journal persists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden_core::config::{ApplicationConfig, Placement};
use pgwarden_core::operation::{Operation, OperationKind, StepName, StepOutcome};
use pgwarden_core::preflight::{self, PreflightInput, Verdict};
use pgwarden_core::view::{ClusterView, Role};
use pgwarden_core::{Answer, Config};

use super::{fact, fail, ok, proxy, run_preflight, wait_for, StepContext, POLL};
use pgwarden_pg::AdminError;

use crate::effects::app::AppCommand;
use crate::effects::Effects;

/// Runs one step of a failover or switchover.
pub(super) async fn run_step(ctx: &StepContext, op: &mut Operation, step: StepName) -> StepOutcome {
    match step {
        StepName::Preflight => preflight_step(ctx, op).await,
        // With a proxy, the application keeps running: pgbouncer is paused
        // and re-pointed instead (ops/steps/proxy.rs).
        StepName::FenceApplication if op.kind == OperationKind::Failover => {
            fence_and_probe(ctx, op).await
        }
        StepName::FenceApplication => fence(ctx, op).await,
        StepName::StopOldPrimary => stop_old_primary(ctx, op).await,
        StepName::Promote => promote(ctx, op).await,
        StepName::ReconfigureNewPrimary => reconfigure_new_primary(ctx, op).await,
        StepName::SwitchApplication => match ctx.config.pgbouncer() {
            Some(pb) => proxy::switch(ctx, op, pb).await,
            None => switch_application(ctx, op).await,
        },
        StepName::StartApplication => match ctx.config.pgbouncer() {
            Some(pb) => proxy::verify(ctx, op, pb).await,
            None => start_application(ctx, op).await,
        },
        StepName::RepointReplicas => super::replicas::repoint_replicas(ctx, op).await,
        StepName::Done => done(op),
        other => fail(format!(
            "step {other:?} belongs to another kind of operation"
        )),
    }
}

/// The fence, by the proxy when there is one, else by stopping the
/// application.
async fn fence(ctx: &StepContext, op: &mut Operation) -> StepOutcome {
    match ctx.config.pgbouncer() {
        Some(pb) => proxy::fence(ctx, op, pb).await,
        None => fence_application(ctx, op).await,
    }
}

/// How long a probe of the old primary taken while the fence ran counts
/// for `stop_old_primary`. Older (a fence that took long, a resume), the
/// step asks the daemon beside it again: a stop verified long ago is not
/// trusted.
const PROBE_TRUSTED_FOR: Duration = Duration::from_secs(2);

/// How long the fence step waits for a probe still running after the fence.
const PROBE_GRACE: Duration = Duration::from_millis(100);

/// What the probe of a failover's old primary found; journaled as the
/// fact `old_primary_probe`.
#[derive(Debug, PartialEq)]
enum Probe {
    /// Its own daemon verified it stopped (pg_ctl status and the postmaster).
    Stopped,
    /// It answers and is in recovery: not writable.
    Standby,
    /// It answers as a primary, or its daemon says it runs: it is stopped
    /// only by `stop_old_primary`, after the fence.
    Alive,
    /// Neither could be told: `stop_old_primary` decides as without a probe.
    Unknown,
}

impl Probe {
    fn as_str(&self) -> &'static str {
        match self {
            Probe::Stopped => "stopped",
            Probe::Standby => "standby",
            Probe::Alive => "alive",
            Probe::Unknown => "unknown",
        }
    }
}

/// Looks at a failover's old primary without touching it: over SQL, and
/// when that fails, by asking the daemon beside it whether it is stopped.
/// Nothing is stopped here, so it may run while the fence is not verified.
async fn probe_old_primary(ctx: &StepContext, old: &str) -> (Probe, String) {
    let sql = match ctx.effects.node_quick(old).is_in_recovery().await {
        Ok(true) => return (Probe::Standby, format!("{old} answers and is in recovery")),
        Ok(false) => {
            return (
                Probe::Alive,
                format!("{old} answers as a primary: it is stopped after the fence"),
            )
        }
        Err(e) => e.to_string(),
    };
    match ctx.effects.node_stopped_on(old).await {
        Ok(Answer::Yes) => (
            Probe::Stopped,
            format!("{old} does not answer over SQL ({sql}); the daemon beside it verified it stopped"),
        ),
        Ok(Answer::No) => (
            Probe::Alive,
            format!("{old} does not answer over SQL ({sql}) but the daemon beside it says it runs: it is stopped after the fence"),
        ),
        Ok(Answer::Unknown(why)) => (
            Probe::Unknown,
            format!("{old} does not answer over SQL ({sql}) and the daemon beside it cannot tell whether it runs: {why}"),
        ),
        Err(e) => (
            Probe::Unknown,
            format!("{old} does not answer over SQL ({sql}) and the daemon beside it was not asked: {}", e.message),
        ),
    }
}

/// A failover's fence, with the old primary probed at the same time: the
/// two are independent, and both must be verified before the promotion.
/// The probe stops nothing; an old primary found alive is stopped by
/// `stop_old_primary`, which runs only after this step succeeded, so a
/// fence that fails never leaves a live primary stopped. The probe's
/// verdict and when it and the fence were verified are journaled with
/// this step's outcome (`old_primary_probe`, `old_primary_probe_at`,
/// `fence_verified_at`), so a resume knows which came first and how old
/// the probe is.
async fn fence_and_probe(ctx: &StepContext, op: &mut Operation) -> StepOutcome {
    let Some(old) = op.facts.old_primary.clone() else {
        return fence(ctx, op).await;
    };
    // A probe that outlasts the fence by more than PROBE_GRACE (a hung
    // host, a daemon that does not answer) is dropped as unknown: the
    // failover then costs no more than it did without a probe.
    let (fenced_tx, fenced_rx) = tokio::sync::oneshot::channel::<()>();
    let probe = async {
        let cut_off = async {
            let _ = fenced_rx.await;
            tokio::time::sleep(PROBE_GRACE).await;
        };
        let found = tokio::select! {
            found = probe_old_primary(ctx, &old) => found,
            _ = cut_off => (
                Probe::Unknown,
                format!("the probe of {old} had not finished {} ms after the fence", PROBE_GRACE.as_millis()),
            ),
        };
        (found, crate::ops::now())
    };
    let fenced = async {
        let outcome = fence(ctx, op).await;
        let at = crate::ops::now();
        let _ = fenced_tx.send(());
        (outcome, at)
    };
    let (((verdict, detail), probed_at), (outcome, fenced_at)) = tokio::join!(probe, fenced);
    op.facts.old_primary_probe = Some(verdict.as_str().into());
    op.facts.old_primary_probe_detail = Some(detail.clone());
    op.facts.old_primary_probe_at = Some(probed_at);
    match outcome {
        StepOutcome::Succeeded(m) => {
            op.facts.fence_verified_at = Some(fenced_at);
            ok(format!("{m}; meanwhile: {detail}"))
        }
        StepOutcome::Skipped(m) => {
            op.facts.fence_verified_at = Some(fenced_at);
            StepOutcome::Skipped(format!("{m}; meanwhile: {detail}"))
        }
        StepOutcome::Failed(m) => {
            op.facts.fence_verified_at = None;
            fail(format!(
                "{m}; {old} was only looked at, not stopped ({detail})"
            ))
        }
    }
}

/// The probe's "stopped", if it was taken within [`PROBE_TRUSTED_FOR`].
fn trusted_stop(op: &Operation) -> Option<(Duration, &str)> {
    if op.facts.old_primary_probe.as_deref() != Some(Probe::Stopped.as_str()) {
        return None;
    }
    let at = op
        .facts
        .old_primary_probe_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())?;
    let age = std::time::SystemTime::now().duration_since(at).ok()?;
    (age <= PROBE_TRUSTED_FOR).then(|| {
        (
            age,
            op.facts.old_primary_probe_detail.as_deref().unwrap_or(""),
        )
    })
}

/// What a resumed failover or switchover re-checks before it acts again:
/// the guards of the completed steps that protect the next side effect. A
/// fence verified an hour ago is not trusted: the application may have been
/// started by hand, the old primary restarted, the target rebuilt.
pub async fn reverify(ctx: &StepContext, op: &Operation) -> Result<Vec<String>, String> {
    if op.kind == OperationKind::Rejoin {
        return Ok(Vec::new());
    }
    let mut held = Vec::new();
    let promoted = op.completed(StepName::Promote);
    // The fence guards the promotion. After it, the application running
    // again is what start_application does (perhaps before a crash).
    if op.completed(StepName::FenceApplication) && !promoted && ctx.config.pgbouncer().is_some() {
        held.push(proxy::reverify_fence(ctx, op).await?);
    } else if op.completed(StepName::FenceApplication) && !promoted {
        let app = application(ctx).map_err(|_| "no application configured".to_owned())?;
        match is_running(ctx, app).await {
            Ok(false) => {}
            Ok(true) => {
                return Err(format!(
                    "{} runs again although the fence was verified earlier: stop it, then resume",
                    app.name
                ))
            }
            Err(e) => return Err(format!("cannot tell whether {} runs: {e}", app.name)),
        }
        let now = sessions(ctx, op, &app.db_user).await;
        if !now.none_left() {
            return Err(format!(
                "sessions of {} are back or cannot be counted ({}): the fence is not verified",
                app.db_user,
                now.describe()
            ));
        }
        held.push(format!("{} still fenced", app.name));
    }
    if op.completed(StepName::StopOldPrimary) && !promoted {
        if let Some(old) = &op.facts.old_primary {
            match ctx.effects.node_quick(old).is_in_recovery().await {
                Ok(false) => {
                    return Err(format!(
                    "{old} answers as a primary again since it was stopped: stop it, then resume"
                ))
                }
                Ok(true) => held.push(format!("{old} is a standby")),
                Err(_) => held.push(format!("{old} does not answer")),
            }
        }
    }
    if !promoted {
        let target = &op.request.target;
        // Asked directly: a daemon restarted after a crash has no view yet.
        // Already a primary is what a crash between pg_promote and its
        // journal entry leaves; the promote step then says so and skips.
        if let Err(e) = ctx.effects.node_quick(target).is_in_recovery().await {
            return Err(format!("{target} does not answer: {e}"));
        }
        let id = |n: &str| {
            ctx.view
                .node(n)
                .and_then(|n| n.snapshot.as_ref())
                .map(|s| s.system_identifier)
        };
        if let (Some(old), Some(tid)) = (&op.facts.old_primary, id(target)) {
            if id(old).is_some_and(|o| o != tid) {
                return Err(format!(
                    "{target} is no longer a copy of {old}'s cluster (system identifier {tid})"
                ));
            }
        }
        held.push(format!("{target} is still a standby of the same cluster"));
    }
    Ok(held)
}

/// The hosts (other than this daemon's) whose daemon does not answer. A
/// daemon the poll loop's latest check (at most one poll interval old)
/// heard is taken as answering, so preflight costs no round trip; if it is
/// gone since, the step that needs it finds out and fails. One the check did
/// not hear is asked again now, unless the operator confirmed its host
/// fenced already (`confirmed`), which makes its silence accepted anyway.
///
/// A `role: replica` host without an application instance is left out: the
/// operation changes nothing there before `repoint_replicas`, which reports
/// a silent one instead of failing, and its PostgreSQL is polled like any
/// node (a promoted replica is a split brain).
pub async fn silent_hosts(
    config: &Config,
    effects: &Arc<dyn Effects>,
    view: &ClusterView,
    confirmed: &[String],
) -> Vec<String> {
    let mut silent = Vec::new();
    let mut unchecked = Vec::new();
    let app_hosts = config
        .application
        .as_ref()
        .map(|a| a.hosts(&config.nodes))
        .unwrap_or_default();
    let verified = |n: &&pgwarden_core::config::NodeConfig| {
        n.name != config.local_node && (!n.is_replica() || app_hosts.contains(&n.name))
    };
    for n in config.nodes.iter().filter(verified) {
        match view.node(&n.name).and_then(|v| v.daemon_answered) {
            Some(true) => {}
            _ if confirmed.contains(&n.name) => silent.push(n.name.clone()),
            _ => unchecked.push(n),
        }
    }
    let asks: Vec<_> = unchecked
        .into_iter()
        .map(|n| {
            let (effects, name) = (effects.clone(), n.name.clone());
            tokio::spawn(async move { (!effects.daemon_answers(&name).await).then_some(name) })
        })
        .collect();
    for a in asks {
        if let Ok(Some(name)) = a.await {
            silent.push(name);
        }
    }
    silent
}

/// The preflight checks of a failover, switchover or rejoin request, as the
/// plan, the start of an operation and its preflight step all run them.
pub async fn preflight_checks(
    config: &Config,
    effects: &Arc<dyn Effects>,
    view: &ClusterView,
    kind: OperationKind,
    request: &pgwarden_core::operation::Request,
    open_operation: Option<&str>,
) -> Vec<preflight::Check> {
    let silent = if kind == OperationKind::Rejoin {
        Vec::new()
    } else {
        silent_hosts(config, effects, view, &request.fenced_hosts).await
    };
    // Only a failover or switchover rewrites the application's config.
    let (shadows, blocker) = if kind == OperationKind::Rejoin {
        (Vec::new(), None)
    } else {
        (effects.shadows(), effects.config_file_blocker())
    };
    preflight::preflight(&PreflightInput {
        config,
        view,
        kind,
        request,
        open_operation,
        shadows: &shadows,
        config_file_blocker: blocker.as_deref(),
        silent_hosts: &silent,
    })
}

async fn preflight_step(ctx: &StepContext, op: &mut Operation) -> StepOutcome {
    let checks = match run_preflight(ctx, op).await {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    // The node the target takes over from: the current primary if one is
    // known, else (failover of a dead primary) the other node of the pair;
    // a replica is never it (a forced replica target takes over from the
    // primary last seen).
    let target = &op.request.target;
    let pair =
        |n: &&pgwarden_core::view::NodeView| &n.name != target && !ctx.config.is_replica(&n.name);
    let last_seen = ctx.view.last_primary.as_ref().map(|l| l.node.as_str());
    let old = ctx
        .view
        .nodes
        .iter()
        .filter(pair)
        .find(|n| n.role == Role::Primary)
        .or_else(|| {
            ctx.view
                .nodes
                .iter()
                .filter(pair)
                .find(|n| Some(n.name.as_str()) == last_seen)
        })
        .or_else(|| ctx.view.nodes.iter().find(pair))
        .map(|n| n.name.clone());
    if let Some(old) = old {
        op.facts.old_primary = Some(old);
    }
    // A forced failover says what it may cost (journal, answer and audit).
    if op.kind == OperationKind::Failover && op.request.force {
        if let Some(lost) = preflight::bytes_possibly_lost(&ctx.view, target) {
            op.facts.bytes_possibly_lost = Some(lost);
        }
    }
    let warnings: Vec<&str> = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Warn)
        .map(|c| c.message.as_str())
        .collect();
    let mut msg = format!("{} checks passed", checks.len() - warnings.len());
    if !warnings.is_empty() {
        msg.push_str(&format!("; warnings: {}", warnings.join("; ")));
    }
    ok(msg)
}

fn application(ctx: &StepContext) -> Result<&ApplicationConfig, StepOutcome> {
    ctx.config
        .application
        .as_ref()
        .ok_or_else(|| fail("no application configured"))
}

/// Whether the application runs on `host`, through that host's daemon.
/// Unknown (a command that cannot run, an exit status that means neither,
/// a daemon that does not answer) is an error: nothing can be verified then.
async fn running_on(
    ctx: &StepContext,
    app: &ApplicationConfig,
    host: &str,
) -> Result<bool, String> {
    match ctx.effects.app_status_on(host).await {
        Ok(Answer::Yes) => Ok(true),
        Ok(Answer::No) => Ok(false),
        Ok(Answer::Unknown(why)) => Err(format!(
            "cannot tell whether {} runs on {host}: {why}",
            app.name
        )),
        Err(e) => Err(format!(
            "cannot ask {host}'s daemon whether {} runs there: {}",
            app.name, e.message
        )),
    }
}

/// Whether the application runs on some host of `runs_on` (the first
/// answer that is not "no"), for the checks made after the fence.
async fn is_running(ctx: &StepContext, app: &ApplicationConfig) -> Result<bool, String> {
    for h in app.hosts(&ctx.config.nodes) {
        match ctx.effects.app_status_on(&h).await {
            Ok(Answer::No) => {}
            Ok(Answer::Yes) => return Ok(true),
            Ok(Answer::Unknown(why)) => return Err(format!("{h}: {why}")),
            Err(e) if e.unreachable && ctx_confirmed(ctx, &h) => {}
            Err(e) => return Err(format!("{h}: {}", e.message)),
        }
    }
    Ok(false)
}

/// The hosts the operator confirmed fenced in the request being run.
pub(super) fn ctx_confirmed(ctx: &StepContext, host: &str) -> bool {
    ctx.fenced_hosts.iter().any(|h| h == host)
}

/// The application's sessions, counted on every node.
#[derive(Default)]
pub(super) struct Sessions {
    total: u64,
    /// "2 on pg-a", for the messages.
    seen: Vec<String>,
    /// Nodes whose count is unknown, with why.
    unknown: Vec<String>,
}

impl Sessions {
    pub(super) fn none_left(&self) -> bool {
        self.total == 0 && self.unknown.is_empty()
    }

    pub(super) fn describe(&self) -> String {
        let mut parts = self.seen.clone();
        parts.extend(self.unknown.iter().map(|u| format!("unknown on {u}")));
        parts.join(", ")
    }
}

/// The node whose sessions need not be counted: the old primary in a
/// failover (it is down), or once stop_old_primary has begun (it may have
/// stopped it before a crash). In both cases stop_old_primary verifies it
/// stopped (or the operator confirms its host fenced) before anything is
/// promoted, and a stopped node has no sessions. Every other node must
/// answer: a count that times out is not zero.
fn uncounted_node(op: &Operation) -> Option<&str> {
    let stop_begun = op
        .steps
        .iter()
        .any(|s| s.name == StepName::StopOldPrimary && s.attempts > 0);
    (op.kind == OperationKind::Failover || stop_begun)
        .then_some(op.facts.old_primary.as_deref())
        .flatten()
}

/// Sessions of `role` per node.
///
/// Besides [`uncounted_node`], two nodes that do not answer are not
/// counted: a `role: replica` node (read-only: a session there writes
/// nothing, and a promoted replica is a split brain the poll reports), and
/// a node whose host the operator confirmed fenced in `fenced_hosts` (the
/// last resort of a forced failover to a replica, with both nodes of the
/// pair lost, names the standby's host so).
pub(super) async fn sessions(ctx: &StepContext, op: &Operation, role: &str) -> Sessions {
    let mut out = Sessions::default();
    for n in &ctx.config.nodes {
        match ctx.effects.node_quick(&n.name).sessions_of(role).await {
            Ok(count) => {
                out.total += count;
                if count > 0 {
                    out.seen.push(format!("{count} on {}", n.name));
                }
            }
            // Nothing listens there: no server, so no session.
            Err(AdminError::Refused { .. }) => {}
            Err(_) if uncounted_node(op) == Some(n.name.as_str()) => {}
            Err(_) if n.is_replica() || op.request.fenced_hosts.contains(&n.name) => {}
            Err(e) => out.unknown.push(format!("{} ({e})", n.name)),
        }
    }
    out
}

/// Fences the application on every host of `runs_on`, each through that
/// host's daemon: stopped (and disabled, when `disable` is configured),
/// verified by `is_running` there. A host whose daemon does not answer is
/// passed only when the operator confirmed it fenced (`fenced_hosts`).
async fn fence_application(ctx: &StepContext, op: &mut Operation) -> StepOutcome {
    let app = match application(ctx) {
        Ok(a) => a,
        Err(o) => return o,
    };
    let began = Instant::now();
    let mut notes = Vec::new();
    for h in app.hosts(&ctx.config.nodes) {
        match ctx.effects.app_status_on(&h).await {
            Err(e) if e.unreachable && ctx_confirmed(ctx, &h) => {
                notes.push(format!(
                    "{h}: its daemon does not answer; fenced by the operator's confirmation"
                ));
                continue;
            }
            Err(e) => {
                return fail(format!(
                    "cannot verify {} on host {h}: {}{}",
                    app.name,
                    e.message,
                    if e.unreachable {
                        "; if that host is fenced (powered off, or the application stopped and disabled there), confirm it with fenced_hosts"
                    } else {
                        ""
                    }
                ))
            }
            Ok(Answer::Unknown(why)) => {
                return fail(format!(
                    "cannot tell whether {} runs on {h}: {why}",
                    app.name
                ))
            }
            Ok(Answer::No) => notes.push(format!("not running on {h}")),
            Ok(Answer::Yes) => {
                // Where it ran: `placement: stay` starts it there again.
                op.facts.app_ran_on.get_or_insert_with(|| h.clone());
                if let Err(e) = ctx.effects.app_command_on(&h, AppCommand::Stop).await {
                    return fail(format!(
                        "stopping {} on {h} failed: {}",
                        app.name, e.message
                    ));
                }
                let stopped = wait_for(app.stop_timeout, POLL, || async {
                    matches!(running_on(ctx, app, &h).await, Ok(false)).then_some(())
                })
                .await;
                if stopped.is_none() {
                    let now = running_on(ctx, app, &h).await;
                    return fail(format!(
                        "{} still runs on {h} {:?} after its stop command ({})",
                        app.name,
                        app.stop_timeout,
                        match now {
                            Ok(true) => "is_running says running".to_owned(),
                            Ok(false) => "stopped just now".to_owned(),
                            Err(e) => e,
                        }
                    ));
                }
                notes.push(format!("stopped on {h}"));
            }
        }
        if app.disable.is_some() {
            if let Err(e) = ctx.effects.app_command_on(&h, AppCommand::Disable).await {
                return fail(format!(
                    "disabling {} on {h} failed: {}",
                    app.name, e.message
                ));
            }
        }
    }
    // The application's own time, apart from pgwarden's (benchmarks).
    op.facts.app_stop_ms = Some(began.elapsed().as_millis() as u64);
    let hosts_note = notes.join("; ");
    // The processes are gone; their sessions must be too. A backend busy in
    // a long query does not notice its client died, so after a grace period
    // the remaining ones are terminated, then the count is verified.
    let role = &app.db_user;
    let clean = wait_for(app.session_grace, POLL, || async {
        sessions(ctx, op, role).await.none_left().then_some(())
    })
    .await;
    if clean.is_some() {
        return ok(format!(
            "{} stopped ({hosts_note}); no session of {role} remains",
            app.name
        ));
    }
    let now = sessions(ctx, op, role).await;
    if !now.unknown.is_empty() {
        return fail(format!(
            "{} stopped, but the sessions of {role} cannot be counted on {}: fencing not verified, nothing promoted",
            app.name,
            now.unknown.join(", ")
        ));
    }
    if !app.terminate_lingering_sessions {
        return fail(format!(
            "{} stopped but sessions of {role} remain ({}) and terminate_lingering_sessions is off: fencing not verified",
            app.name,
            now.describe()
        ));
    }
    let mut terminated = 0;
    for n in &ctx.config.nodes {
        terminated += ctx
            .effects
            .node_quick(&n.name)
            .terminate_sessions_of(role)
            .await
            .unwrap_or(0);
    }
    let gone = wait_for(Duration::from_secs(10), POLL, || async {
        sessions(ctx, op, role).await.none_left().then_some(())
    })
    .await;
    match gone {
        Some(()) => ok(format!(
            "{} stopped ({hosts_note}); {terminated} lingering session(s) of {role} terminated after {:?}; none remains",
            app.name, app.session_grace
        )),
        None => fail(format!(
            "sessions of {role} remain after terminating them ({}): fencing not verified, nothing promoted",
            sessions(ctx, op, role).await.describe()
        )),
    }
}

async fn stop_old_primary(ctx: &StepContext, op: &mut Operation) -> StepOutcome {
    let old = match fact(&op.facts.old_primary, "old_primary") {
        Ok(o) => o.to_owned(),
        Err(o) => return o,
    };
    let target = op.request.target.clone();
    match op.kind {
        OperationKind::Switchover => {
            let node = ctx.effects.node(&old);
            // Flush everything to disk so the shutdown checkpoint is quick.
            let before = match node.current_lsn().await {
                Ok(lsn) => {
                    if let Err(e) = node.checkpoint().await {
                        return fail(format!("CHECKPOINT on {old} failed: {e}"));
                    }
                    lsn
                }
                // Already stopped (a resumed step): the final LSN was recorded.
                Err(_) => op.facts.old_primary_final_lsn,
            };
            let state = match ctx.effects.node_action(&old, "stop").await {
                Ok(s) => s,
                Err(e) => return fail(format!("stopping {old} failed: {e}")),
            };
            // Zero loss is verified against the shutdown checkpoint, the
            // last record a cleanly stopped primary wrote. A primary that
            // died instead (no clean shutdown) has no such final position.
            if state.cluster_state.as_deref() != Some("shut down") {
                return fail(format!(
                    "{old} did not shut down cleanly (cluster state {}): its final LSN cannot be verified, so {target} is not promoted; use a failover",
                    state.cluster_state.as_deref().unwrap_or("unknown")
                ));
            }
            let Some(final_lsn) = state.checkpoint_lsn.or(before) else {
                return fail(format!("cannot tell the final LSN of {old}: refusing to promote without verifying"));
            };
            op.facts.old_primary_final_lsn = Some(final_lsn);
            let standby = ctx.effects.node(&target);
            let replayed = wait_for(Duration::from_secs(30), Duration::from_millis(10), || async {
                standby.replay_lsn().await.ok().flatten().filter(|r| *r >= final_lsn)
            })
            .await;
            match replayed {
                Some(r) => ok(format!("{old} stopped cleanly at {final_lsn}; {target} replayed up to {r}")),
                None => fail(format!(
                    "{target} did not replay up to {old}'s final LSN {final_lsn} within 30s: promoting now could lose commits; {old} is stopped"
                )),
            }
        }
        _ => match ctx.effects.node_quick(&old).is_in_recovery().await {
            Ok(false) => match ctx.effects.node_action(&old, "stop").await {
                Ok(s) => ok(format!("{old} answered as a primary after all and was stopped ({})", s.message)),
                Err(e) => fail(format!(
                    "{old} still answers as a primary and could not be stopped: {e}; refusing to create a second writable node"
                )),
            },
            Ok(true) => ok(format!("{old} answers but is in recovery: not writable, left alone")),
            // Verified stopped by its own daemon while the fence ran, and
            // still silent over SQL now: no need to ask that daemon again.
            Err(e) => match trusted_stop(op) {
                Some((age, detail)) => ok(format!(
                    "{old} does not answer over SQL ({e}); verified stopped {} ms ago, while the fence ran ({detail})",
                    age.as_millis()
                )),
                None => stop_unreachable_old_primary(ctx, &old, &e.to_string()).await,
            },
        },
    }
}

/// How long a failover waits for the daemon beside an old primary it cannot
/// reach to stop it. A dead host refuses or times out the connection in
/// seconds; a hung one (SIGSTOP, a stuck disk) would hold the failover as
/// long as it hangs, and its stop is already under way when it wakes.
const STOP_UNREACHABLE_BUDGET: Duration = Duration::from_secs(10);

/// Failover, old primary silent over SQL: ask the daemon beside it to stop
/// it anyway, since it reaches PostgreSQL without the network. Verified
/// stopped: go on. That daemon answering that it could NOT stop it: the
/// node runs, so fail here rather than make a second writable node. That
/// daemon silent, or not confirming within the budget (a frozen node, a
/// stuck disk): whether the old primary still takes writes is unknown, so
/// go on only if the operator confirmed that host fenced (`fenced_hosts`);
/// a host cut off and back later is then stopped by its own daemon as a
/// stale primary.
async fn stop_unreachable_old_primary(
    ctx: &StepContext,
    old: &str,
    sql_error: &str,
) -> StepOutcome {
    match ctx.effects.stop_within(old, STOP_UNREACHABLE_BUDGET).await {
        Ok(state) => ok(format!(
            "{old} does not answer over SQL ({sql_error}); the daemon beside it stopped it ({})",
            state.message
        )),
        Err(e) if e.status.is_some() => fail(format!(
            "{old} does not answer over SQL ({sql_error}), but the daemon beside it could not stop it: {}; it may still be writable, so nothing is promoted. Stop {old} by hand (or power its host off), then resume",
            e.message
        )),
        Err(e) if ctx_confirmed(ctx, old) => ok(format!(
            "{old} does not answer over SQL ({sql_error}) and the daemon beside it did not confirm a stop ({}); the operator confirmed {old}'s host fenced: going on; if {old} comes back as a primary, its own daemon stops it",
            e.message
        )),
        Err(e) => fail(format!(
            "{old} does not answer over SQL ({sql_error}) and the daemon beside it did not confirm a stop ({}): whether {old} still takes writes is unknown, so nothing is promoted. \
             If {old}'s host is fenced (powered off, or PostgreSQL stopped and disabled there), abort and fail over again with \"fenced_hosts\": [\"{old}\"]",
            e.message
        )),
    }
}

async fn promote(ctx: &StepContext, op: &mut Operation) -> StepOutcome {
    let target = op.request.target.clone();
    let node = ctx.effects.node(&target);
    match node.is_in_recovery().await {
        Err(e) => return fail(format!("cannot reach {target}: {e}")),
        Ok(false) => {
            let tl = node.timeline().await.ok();
            if let Some(t) = tl {
                op.facts.new_timeline.get_or_insert(t);
            }
            let tl = tl.map_or_else(|| "?".into(), |t| t.to_string());
            return StepOutcome::Skipped(format!(
                "{target} is already a primary (timeline {tl}): not promoted again"
            ));
        }
        Ok(true) => {}
    }
    let before = match node.timeline().await {
        Ok(t) => t,
        Err(e) => return fail(format!("cannot read {target}'s timeline: {e}")),
    };
    // A standby whose walreceiver stopped (the old primary is down) reports
    // the timeline of its last restartpoint, which may lag the one it
    // replays; the primary's own at its last sight does not. For the
    // record only: the check below compares the node with itself.
    let seen = ctx.view.last_primary.as_ref().map_or(0, |l| l.timeline);
    op.facts.timeline_before = Some(before.max(seen));
    let started = Instant::now();
    if let Err(e) = node.request_promotion().await {
        return fail(format!("pg_promote on {target} failed: {e}"));
    }
    let waited = match node
        .wait_until_primary(Duration::from_secs(60), Duration::from_millis(2))
        .await
    {
        Ok(Some(took)) => took,
        Ok(None) => {
            return fail(format!(
                "{target} did not leave recovery within 60s of pg_promote"
            ))
        }
        Err(e) => return fail(format!("lost {target} while it was promoting: {e}")),
    };
    let after = match node.timeline().await {
        Ok(t) => t,
        Err(e) => {
            return fail(format!(
                "{target} left recovery but its timeline cannot be read: {e}"
            ))
        }
    };
    op.facts.new_timeline = Some(after);
    op.facts.promote_writable_ms = Some(waited.as_millis() as u64);
    if after <= before {
        return fail(format!(
            "{target} left recovery but its timeline is still {after}"
        ));
    }
    ok(format!(
        "{target} writable {} ms after pg_promote (step {} ms); timeline {before} -> {after}",
        waited.as_millis(),
        started.elapsed().as_millis()
    ))
}

async fn reconfigure_new_primary(ctx: &StepContext, op: &Operation) -> StepOutcome {
    let target = &op.request.target;
    let node = ctx.effects.node(target);
    let slot = &ctx.config.replication.slot;
    let steps = async {
        node.alter_system("primary_conninfo", None).await?;
        node.alter_system("primary_slot_name", None).await?;
        // A lone primary must not block writes waiting for a standby.
        node.alter_system("synchronous_standby_names", Some(""))
            .await?;
        node.reload().await?;
        node.ensure_slot(slot).await
    };
    let created = match steps.await {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let cleared = wait_for(
        Duration::from_secs(10),
        Duration::from_millis(5),
        || async {
            node.setting("synchronous_standby_names")
                .await
                .ok()
                .filter(|v| v.is_empty())
        },
    )
    .await;
    if cleared.is_none() {
        return fail(format!(
            "synchronous_standby_names on {target} is still set after the reload"
        ));
    }
    ok(format!(
        "primary_conninfo and primary_slot_name reset, synchronous_standby_names cleared, slot `{slot}` {}",
        if created { "created" } else { "already there" }
    ))
}

/// Points `config_file` at the new primary on every host of `runs_on` that
/// answers, each through its daemon, so that a later start anywhere finds
/// the primary. A silent host confirmed fenced is left as it is (and said).
async fn switch_application(ctx: &StepContext, op: &Operation) -> StepOutcome {
    let target = &op.request.target;
    let Some(node) = ctx.config.node(target) else {
        return fail(format!("unknown node {target}"));
    };
    let app = match application(ctx) {
        Ok(a) => a,
        Err(o) => return o,
    };
    let file = app.config_file.display().to_string();
    let (mut changed, mut kept, mut left) = (Vec::new(), Vec::new(), Vec::new());
    for h in app.hosts(&ctx.config.nodes) {
        match ctx
            .effects
            .app_config_on(&h, &op.id, &node.host, node.port)
            .await
        {
            Ok(true) => changed.push(h),
            Ok(false) => kept.push(h),
            Err(e) if e.unreachable && ctx_confirmed(ctx, &h) => left.push(h),
            Err(e) => return fail(format!("{file} on {h}: {}", e.message)),
        }
    }
    let mut msg = if changed.is_empty() {
        format!(
            "{file} already points to {}:{} on {}",
            node.host,
            node.port,
            kept.join(", ")
        )
    } else {
        format!(
            "{file} now points to {}:{} on {} (original kept as .pgwarden-{}.bak)",
            node.host,
            node.port,
            changed.join(", "),
            op.id
        )
    };
    if !left.is_empty() {
        msg.push_str(&format!(
            "; not rewritten on {} (its daemon does not answer; fenced by confirmation): point it at {}:{} before starting the application there",
            left.join(", "),
            node.host,
            node.port
        ));
    }
    if changed.is_empty() {
        StepOutcome::Skipped(msg)
    } else {
        ok(msg)
    }
}

/// The host that starts the application: `placement` among the hosts of
/// `runs_on` whose daemon answers.
async fn start_host(
    ctx: &StepContext,
    op: &Operation,
    app: &ApplicationConfig,
) -> Result<String, String> {
    let hosts = app.hosts(&ctx.config.nodes);
    let target = &op.request.target;
    let mut candidates = Vec::new();
    if app.placement == Placement::Stay {
        if let Some(before) = &op.facts.app_ran_on {
            candidates.push(before.clone());
        }
    }
    candidates.push(target.clone());
    candidates.extend(hosts.iter().cloned());
    for c in candidates {
        if hosts.contains(&c) && ctx.effects.daemon_answers(&c).await {
            return Ok(c);
        }
    }
    Err(format!(
        "no host of application.runs_on ({}) has a daemon that answers: {} cannot be started anywhere",
        hosts.join(", "),
        app.name
    ))
}

/// Starts exactly ONE instance, on the host `placement` chooses; verifies
/// it runs there, holds a session on the new primary and answers its
/// health_url, and that no other host runs one.
async fn start_application(ctx: &StepContext, op: &mut Operation) -> StepOutcome {
    let app = match application(ctx) {
        Ok(a) => a,
        Err(o) => return o,
    };
    let target = op.request.target.clone();
    let target = &target;
    let host = match start_host(ctx, op, app).await {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    let began = Instant::now();
    if app.enable.is_some() {
        if let Err(e) = ctx.effects.app_command_on(&host, AppCommand::Enable).await {
            return fail(format!(
                "enabling {} on {host} failed: {}",
                app.name, e.message
            ));
        }
    }
    if let Err(e) = ctx.effects.app_command_on(&host, AppCommand::Start).await {
        return fail(format!(
            "starting {} on {host} failed: {}",
            app.name, e.message
        ));
    }
    op.facts.app_start_ms = Some(began.elapsed().as_millis() as u64);
    op.facts.app_started_on = Some(host.clone());
    let node = ctx.effects.node_quick(target);
    let up = wait_for(app.start_timeout, POLL, || async {
        if !matches!(running_on(ctx, app, &host).await, Ok(true)) {
            return None;
        }
        let n = node
            .sessions_of(&app.db_user)
            .await
            .ok()
            .filter(|n| *n > 0)?;
        if app.health_url.is_some()
            && !matches!(ctx.effects.app_healthy_on(&host).await, Ok(Answer::Yes))
        {
            return None;
        }
        Some(n)
    })
    .await;
    let Some(n) = up else {
        let state = match running_on(ctx, app, &host).await {
            Ok(true) => "runs but has no session on the new primary (or its health_url does not answer)".to_owned(),
            Ok(false) => "is not running: it exited after starting (a database it cannot reach or a read-only one makes inmanta-server exit)".to_owned(),
            Err(e) => format!("cannot be checked: {e}"),
        };
        return fail(format!(
            "{} on {host} {state} after {:?}",
            app.name, app.start_timeout
        ));
    };
    // It has a session on the new primary, so the database accepted it
    // (inmanta-server exits when its database refuses it); check once more
    // that the process did not die right after connecting.
    if !matches!(running_on(ctx, app, &host).await, Ok(true)) {
        return fail(format!("{} started on {host} but exited again", app.name));
    }
    // Never two orchestrators.
    for other in app
        .hosts(&ctx.config.nodes)
        .into_iter()
        .filter(|h| *h != host)
    {
        match ctx.effects.app_status_on(&other).await {
            Ok(Answer::No) => {}
            Ok(Answer::Yes) => {
                return fail(format!(
                "{} runs on {other} as well as on {host}: two instances; stop the one on {other}",
                app.name
            ))
            }
            Ok(Answer::Unknown(why)) => {
                return fail(format!(
                    "cannot verify that {} stays stopped on {other}: {why}",
                    app.name
                ))
            }
            Err(e) if e.unreachable && ctx_confirmed(ctx, &other) => {}
            Err(e) => {
                return fail(format!(
                    "cannot verify that {} stays stopped on {other}: {}",
                    app.name, e.message
                ))
            }
        }
    }
    ok(format!(
        "{} runs on {host} with {n} session(s) of {} on {target}",
        app.name, app.db_user
    ))
}

fn done(op: &Operation) -> StepOutcome {
    ok(format!(
        "{} is the primary on timeline {}",
        op.request.target,
        op.facts
            .new_timeline
            .map_or_else(|| "?".into(), |t| t.to_string())
    ))
}
