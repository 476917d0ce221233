//! The operation manager: one operation at a time across both daemons;
//! start, resume, abort; the run loop that journals each step's intent
//! before acting and its outcome after (the order that makes a crash at any
//! instant safe, see `pgwarden_core::operation`).
//!
//! The lock: an operation that is open (running, failed or interrupted) in
//! this daemon's journal holds it here; the peer daemon is asked to hold it
//! too (`POST /v1/internal/lock`, a lock file in its state_dir) when it is
//! reachable. A peer that does not answer cannot hold it: that is the
//! failover case where the old primary's host is gone. This sits behind
//! these few functions so that a consensus store (an etcd lease) can take
//! its place for larger clusters without touching the steps.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use pgwarden_core::operation::{
    Facts, Operation, OperationKind, OperationState, Request, StepName, StepOutcome,
};
use pgwarden_core::preflight::{self, Check};
use pgwarden_core::Config;
use serde::Serialize;
use tokio::sync::watch;

use crate::effects::Effects;
use crate::metrics::Metrics;
use crate::poller::Published;
use journal::{Journal, JournalError};
use lock::{Lease, LockFile};
use steps::StepContext;

pub mod etcd_lock;
pub mod journal;
pub mod lock;
mod peers;
pub mod steps;
mod sync;

/// Why a request about operations was refused. The HTTP layer maps each
/// kind to a status and an `error` code; the message is for a human.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    NotFound(String),
    /// Another operation holds the lock, or the state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// Preflight refused: the failed checks are listed.
    #[error("{message}")]
    Preflight { message: String, checks: Vec<Check> },
    /// Another daemon that must do the work does not answer.
    #[error("{0}")]
    Unavailable(String),
    /// This daemon is starting an operation itself at this very moment (a
    /// lock request from the peer crossed ours): the peer decides by name
    /// which of the two goes on.
    #[error("{0}")]
    Starting(String),
    #[error("{0}")]
    Internal(String),
}

/// The answer to a dry run.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub kind: OperationKind,
    pub target: String,
    pub would_proceed: bool,
    pub checks: Vec<Check>,
    pub plan: Vec<StepName>,
}

pub struct Operations {
    config: Arc<Config>,
    journal: Journal,
    effects: Arc<dyn Effects>,
    published: watch::Receiver<Arc<Published>>,
    metrics: Arc<Metrics>,
    /// The open operation, else the most recent one; waiters and the poll
    /// loop (for /health) watch it.
    current: watch::Sender<Option<Operation>>,
    /// Serializes lock decisions: checking "nothing open" and journaling
    /// the new operation are one step.
    gate: tokio::sync::Mutex<()>,
    /// The lock a peer's operation holds here (a lease with an expiry).
    peer_lock: LockFile,
    /// This daemon's lease at its peers, for its open operation. A std
    /// Mutex: never held across an await.
    lease: std::sync::Mutex<Lease>,
    /// Peers the operator confirmed fenced in `PUT /v1/sync` while their
    /// daemon was silent; the poll loop drops one once it answers again.
    fenced_peers: crate::poller::FencedPeers,
    /// Asks the poll loop to poll every node now: what a step changed
    /// shows in /health and /v1/status without waiting for the next tick.
    poll_now: Arc<tokio::sync::Notify>,
    /// The id of an operation this daemon is starting (asking peers for the
    /// lock, not yet journaled). While set, a peer's lock request is refused:
    /// two daemons starting at the same instant then both get 409 instead of
    /// granting each other's lock. A std Mutex: never held across an await.
    starting: std::sync::Mutex<Option<String>>,
    /// The lock in etcd when `lock.etcd` is configured; it then replaces
    /// the peers' lock.
    etcd: Option<etcd_lock::EtcdLock>,
}

/// Fault injection for the crash tests: `PGWARDEN_FAULT_PAUSE=promote:after`
/// holds the run loop at that point (after the step's intent, or after its
/// effect but before its outcome, is journaled) so a test can SIGKILL the
/// daemon exactly there; `promote:after:5` holds it 5 s only, so a test can
/// change the world under a held operation and watch the next step. Compiled only with the `fault-injection` feature,
/// which the test suites enable: the shipped binary has no such hook.
#[cfg(not(feature = "fault-injection"))]
async fn fault_pause(_step: StepName, _point: &str) {}

#[cfg(feature = "fault-injection")]
async fn fault_pause(step: StepName, point: &str) {
    let Ok(want) = std::env::var("PGWARDEN_FAULT_PAUSE") else {
        return;
    };
    let name = serde_json::to_value(step)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let (at, secs) = match want.splitn(3, ':').nth(2) {
        Some(s) => (
            want[..want.len() - s.len() - 1].to_owned(),
            s.parse().unwrap_or(120),
        ),
        None => (want.clone(), 120),
    };
    if at == format!("{name}:{point}") {
        tracing::warn!(%want, "fault injection: pausing the operation here");
        tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    }
}

pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn new_id(kind: OperationKind) -> String {
    let stamp: String = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let mut rnd = [0u8; 3];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut rnd));
    format!("{stamp}-{kind}-{:02x}{:02x}{:02x}", rnd[0], rnd[1], rnd[2])
}

impl Operations {
    /// Opens the journal, marks operations cut off by a crash interrupted,
    /// and returns the manager with the journal files it had to set aside.
    pub fn open(
        config: Arc<Config>,
        effects: Arc<dyn Effects>,
        published: watch::Receiver<Arc<Published>>,
        metrics: Arc<Metrics>,
        current: watch::Sender<Option<Operation>>,
        poll_now: Arc<tokio::sync::Notify>,
        fenced_peers: crate::poller::FencedPeers,
    ) -> Result<(Arc<Operations>, Vec<JournalError>), JournalError> {
        let journal = Journal::open(&config.state_dir)?;
        let (ops, corrupt) = journal.recover()?;
        for op in ops
            .iter()
            .filter(|o| o.state == OperationState::Interrupted)
        {
            tracing::warn!(operation = %op.id, kind = %op.kind, "found an interrupted operation: resume or abort it");
        }
        let latest = ops
            .iter()
            .rev()
            .find(|o| o.is_open())
            .or(ops.last())
            .cloned();
        current.send_replace(latest);
        let peer_lock = LockFile {
            path: config.state_dir.join("lock.json"),
        };
        let etcd = config
            .etcd_lock()
            .map(|e| etcd_lock::EtcdLock::new(e, &config.cluster, &config.local_node));
        let me = Operations {
            etcd,
            config,
            journal,
            effects,
            published,
            metrics,
            current,
            gate: tokio::sync::Mutex::new(()),
            peer_lock,
            lease: Default::default(),
            fenced_peers,
            poll_now,
            starting: std::sync::Mutex::new(None),
        };
        me.publish_metrics(me.current.borrow().as_ref());
        Ok((Arc::new(me), corrupt))
    }

    pub fn current(&self) -> Option<Operation> {
        self.current.borrow().clone()
    }

    fn open_operation(&self) -> Option<Operation> {
        self.current().filter(Operation::is_open)
    }

    /// Every operation of the journal, newest first.
    pub fn list(&self) -> Vec<Operation> {
        let mut ops = self
            .journal
            .load_all()
            .map(|(ops, _)| ops)
            .unwrap_or_default();
        // The running one is fresher in memory than on disk only between a
        // step's end and its journal write; prefer memory.
        if let Some(cur) = self.current() {
            if let Some(o) = ops.iter_mut().find(|o| o.id == cur.id) {
                *o = cur;
            }
        }
        ops.reverse();
        ops
    }

    pub fn get(&self, id: &str) -> Option<Operation> {
        self.list().into_iter().find(|o| o.id == id)
    }

    fn view(&self) -> Arc<pgwarden_core::ClusterView> {
        self.published.borrow().view.clone()
    }

    async fn preflight(&self, kind: OperationKind, request: &Request) -> Vec<Check> {
        let open = self.open_operation().map(|o| o.id);
        let lock = self
            .peer_lock()
            .map(|l| format!("{} (held for {})", l.operation_id, l.holder));
        let mut checks = steps::preflight_checks(
            &self.config,
            &self.effects,
            &self.view(),
            kind,
            request,
            open.as_deref().or(lock.as_deref()),
        )
        .await;
        if let Some(etcd) = self.etcd() {
            checks.insert(1.min(checks.len()), etcd.preflight_check().await);
        }
        checks
    }

    /// A dry run: the checks and the steps, nothing changed.
    pub async fn plan(&self, kind: OperationKind, request: &Request) -> Plan {
        let checks = self.preflight(kind, request).await;
        Plan {
            kind,
            target: request.target.clone(),
            would_proceed: preflight::passed(&checks),
            checks,
            plan: kind.plan(self.config.replicas().next().is_some()),
        }
    }

    /// Takes the lock (here and at the peer), journals a new operation and
    /// starts running it.
    pub async fn start(
        self: &Arc<Self>,
        kind: OperationKind,
        request: Request,
    ) -> Result<Operation, OpError> {
        let mut facts = Facts::default();
        // A forced failover says in its first answer (and so in the audit
        // entry) what it may cost; preflight records it again when it runs.
        if kind == OperationKind::Failover && request.force {
            if let Some(lost) = preflight::bytes_possibly_lost(&self.view(), &request.target) {
                facts.bytes_possibly_lost = Some(lost);
            }
        }
        self.start_with(kind, request, facts).await
    }

    /// [`Operations::start`] with facts known from the request (a rejoin's
    /// method, whether to keep the old data directory).
    pub async fn start_with(
        self: &Arc<Self>,
        kind: OperationKind,
        request: Request,
        facts: Facts,
    ) -> Result<Operation, OpError> {
        let _gate = self.gate.lock().await;
        if let Some(open) = self.open_operation() {
            return Err(OpError::Conflict(format!(
                "operation {} ({} to {}) is {}: resume or abort it first",
                open.id,
                open.kind,
                open.request.target,
                serde_json::to_value(open.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )));
        }
        if let Some(etcd) = self.etcd() {
            etcd.ensure_free().await?;
        }
        self.clear_stale_peer_lock().await;
        if let Some(lock) = self.peer_lock() {
            return Err(OpError::Conflict(format!(
                "the daemon beside {} runs operation {} (since {}); wait for it, or resume/abort it there",
                lock.holder, lock.operation_id, lock.since
            )));
        }
        let checks = self.preflight(kind, &request).await;
        // A peer that took the lock while preflight ran (two daemons asked at
        // the same instant) is a conflict, as before it, not a refusal.
        if let Some(lock) = self.peer_lock() {
            return Err(OpError::Conflict(format!(
                "the daemon beside {} just started operation {}",
                lock.holder, lock.operation_id
            )));
        }
        if !preflight::passed(&checks) {
            let failed: Vec<&str> = checks
                .iter()
                .filter(|c| c.verdict == preflight::Verdict::Fail)
                .map(|c| c.message.as_str())
                .collect();
            return Err(OpError::Preflight {
                message: format!("preflight refused: {}", failed.join("; ")),
                checks,
            });
        }
        let id = new_id(kind);
        // From here until the operation is journaled and visible as open,
        // `starting` makes this daemon refuse a peer's lock request. Setting
        // it and re-checking the peer's lock file happen under the same
        // mutex that hold_for_peer holds while it grants a lock, so a peer
        // starting at the same instant either sees our claim or we see its.
        {
            let mut starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(lock) = self.peer_lock() {
                return Err(OpError::Conflict(format!(
                    "the daemon beside {} just started operation {}",
                    lock.holder, lock.operation_id
                )));
            }
            *starting = Some(id.clone());
        }
        let result = self.journal_new(kind, request, id, facts).await;
        *self.starting.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let op = result?;
        tokio::spawn(self.clone().run(op.clone()));
        Ok(op)
    }

    /// Takes the peers' lock and journals the new operation (made visible as
    /// the open one before `starting` is cleared).
    async fn journal_new(
        &self,
        kind: OperationKind,
        request: Request,
        id: String,
        facts: Facts,
    ) -> Result<Operation, OpError> {
        // One plan whichever lock is used: with replicas, their re-point.
        let plan = kind.plan(self.config.replicas().next().is_some());
        let mut op = Operation::planned(id, kind, request, &now(), &plan);
        op.facts = facts;
        // The lock is taken before anything is journaled, so a refused lock
        // leaves nothing behind.
        if let Some(etcd) = self.etcd() {
            etcd.take(&op.id).await?.record(&mut op.facts);
        } else {
            self.lease().begin(&op.id);
            match self.lock_peers(&op.id, true).await {
                Ok(note) => op.facts.peer_lock = Some(note),
                Err(e) => {
                    self.lease().end();
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.journal.save(&op) {
            match self.etcd() {
                Some(etcd) => etcd.release(&op).await,
                None => self.unlock_peers(&op.id).await,
            }
            return Err(OpError::Internal(format!("nothing was done: {e}")));
        }
        tracing::info!(operation = %op.id, kind = %kind, target = %op.request.target, token = ?op.facts.lock_token, "operation started");
        self.current.send_replace(Some(op.clone()));
        Ok(op)
    }

    /// Continues a failed or interrupted operation at its unfinished step.
    pub async fn resume(self: &Arc<Self>, id: &str) -> Result<Operation, OpError> {
        let _gate = self.gate.lock().await;
        let mut op = self
            .get(id)
            .ok_or_else(|| OpError::NotFound(format!("no operation {id}")))?;
        if let Some(open) = self.open_operation().filter(|o| o.id != id) {
            return Err(OpError::Conflict(format!(
                "operation {} is open: resume or abort that one",
                open.id
            )));
        }
        op.resume().map_err(|e| {
            OpError::Conflict(format!(
                "{e}: only a failed or interrupted operation can be resumed"
            ))
        })?;
        // The lock is taken again, as at the start: while this operation
        // stood still its lease at the peer may have lapsed.
        if let Some(etcd) = self.etcd() {
            etcd.resume(&op).await?;
        } else {
            self.lease().begin(&op.id);
            let note = self.lock_peers(&op.id, false).await?;
            op.facts.peer_lock = Some(note);
        }
        self.journal
            .save(&op)
            .map_err(|e| OpError::Internal(format!("nothing was done: {e}")))?;
        tracing::info!(operation = %op.id, "operation resumed");
        self.current.send_replace(Some(op.clone()));
        tokio::spawn(self.clone().run_resumed(op.clone()));
        Ok(op)
    }

    /// Gives up a failed or interrupted operation and releases the lock.
    pub async fn abort(&self, id: &str) -> Result<Operation, OpError> {
        let _gate = self.gate.lock().await;
        let mut op = self
            .get(id)
            .ok_or_else(|| OpError::NotFound(format!("no operation {id}")))?;
        op.abort(&now()).map_err(|e| {
            OpError::Conflict(format!(
                "{e}: only a failed or interrupted operation can be aborted"
            ))
        })?;
        self.journal
            .save(&op)
            .map_err(|e| OpError::Internal(format!("not aborted: {e}")))?;
        tracing::warn!(operation = %op.id, "operation aborted");
        self.lease().end();
        self.finished(&op, None);
        match self.etcd() {
            Some(etcd) => etcd.release(&op).await,
            None => self.unlock_peers(&op.id).await,
        }
        Ok(op)
    }

    /// Waits until operation `id` is no longer running.
    pub async fn wait(&self, id: &str) -> Option<Operation> {
        let mut rx = self.current.subscribe();
        let done = rx
            .wait_for(|cur| {
                cur.as_ref()
                    .is_some_and(|o| o.id == id && o.state != OperationState::Running)
            })
            .await
            .ok()?
            .clone();
        done
    }

    /// A resumed operation first re-verifies what the steps it already
    /// completed guaranteed (see [`steps::reverify`]); if that no longer
    /// holds, its next step fails with the reason and nothing runs.
    async fn run_resumed(self: Arc<Self>, mut op: Operation) {
        let ctx = StepContext {
            config: self.config.clone(),
            effects: self.effects.clone(),
            view: self.view(),
            fenced_hosts: op.request.fenced_hosts.clone(),
            progress: Default::default(),
        };
        match steps::reverify(&ctx, &op).await {
            Ok(held) => {
                if !held.is_empty() {
                    tracing::info!(operation = %op.id, "re-verified before resuming: {}", held.join("; "));
                }
                self.run(op).await
            }
            Err(why) => {
                let msg = format!("not resumed: {why}");
                tracing::error!(operation = %op.id, "{msg}");
                if op.start_step(&now()).is_ok() {
                    let _ = op.finish_step(StepOutcome::Failed(msg), &now());
                }
                let _ = self.journal.save(&op);
                self.finished(&op, None);
            }
        }
    }

    /// The run loop: intent, act, fact, for each step until the end or a failure.
    async fn run(self: Arc<Self>, mut op: Operation) {
        let started = Instant::now();
        let mut kicked = started;
        // With the etcd lock, every mutating effect of a step checks it too
        // (effects/guarded.rs), not only the check before the step.
        let guarded = self.etcd().map(|_| {
            Arc::new(crate::effects::guarded::Guarded::new(
                self.effects.clone(),
                Arc::new(etcd_lock::OperationLock {
                    ops: self.clone(),
                    op: op.clone(),
                }),
            ))
        });
        while op.next_step().is_some() {
            let step = op.start_step(&now()).expect("a next step exists");
            let saving = Instant::now();
            let saved = self.journal.save(&op);
            let journal_ms = saving.elapsed().as_secs_f64() * 1e3;
            if let Err(e) = saved {
                // Intent not on disk: do not act.
                let msg = format!("cannot journal the start of this step, so it was not run: {e}");
                let _ = op.finish_step(StepOutcome::Failed(msg), &now());
                let _ = self.journal.save(&op);
                self.current.send_replace(Some(op.clone()));
                break;
            }
            self.current.send_replace(Some(op.clone()));
            self.publish_metrics(Some(&op));
            // The lock is checked before every step's side effects.
            let checked = Instant::now();
            if let Err(why) = self.check_lock(&op).await {
                let _ = op.finish_step(StepOutcome::Failed(why), &now());
                let _ = self.journal.save(&op);
                self.current.send_replace(Some(op.clone()));
                break;
            }
            if let Some(g) = &guarded {
                g.verified(checked);
            }
            fault_pause(step, "before").await;
            let ctx = StepContext {
                config: self.config.clone(),
                effects: match &guarded {
                    Some(g) => g.clone(),
                    None => self.effects.clone(),
                },
                view: self.view(),
                fenced_hosts: op.request.fenced_hosts.clone(),
                progress: self.progress_reporter(&op, step),
            };
            let step_started = Instant::now();
            let mut outcome = steps::run_step(&ctx, &mut op, step).await;
            if let Some(cost) = guarded.as_ref().and_then(|g| g.cost()) {
                op.facts.etcd_lock_checks = Some(cost);
            }
            // A refused effect fails the step even if the step went on
            // past the error: nothing after it may act.
            if let Some(why) = guarded.as_ref().and_then(|g| g.refused()) {
                if !matches!(outcome, StepOutcome::Failed(_)) {
                    outcome = StepOutcome::Failed(why);
                }
            }
            drop(ctx);
            self.metrics.set_progress(op.kind.as_str(), step, None);
            match &outcome {
                StepOutcome::Failed(m) => {
                    tracing::error!(operation = %op.id, ?step, "step failed: {m}")
                }
                StepOutcome::Succeeded(m) | StepOutcome::Skipped(m) => {
                    tracing::info!(operation = %op.id, ?step, ms = step_started.elapsed().as_millis() as u64, journal_ms, "{m}")
                }
            }
            fault_pause(step, "after").await;
            if step == StepName::Done {
                // The operation's answer and the view must agree: the
                // caller may act on one right after the other (a rejoin
                // right after a switchover). The polls kicked after the
                // last step with an effect show what it did.
                self.wait_for_fresh_view(kicked).await;
            }
            kicked = Instant::now();
            self.poll_now.notify_waiters();
            op.finish_step(outcome, &now())
                .expect("the step is running");
            // A step that ended well and has a next one is journaled with
            // that step's intent, one durable write instead of two back to
            // back: the outcome is on disk before the next side effect. A
            // crash in between leaves this step "running", and a resume
            // repeats it, which every step is written to survive (the same
            // as a crash between its effect and its outcome).
            let written_with_next = op.state == OperationState::Running && op.next_step().is_some();
            if !written_with_next {
                if let Err(e) = self.journal.save(&op) {
                    // The effect happened; memory holds the truth and the next
                    // save retries. Resume would re-check the real state anyway.
                    tracing::error!(operation = %op.id, "cannot journal the end of a step: {e}");
                }
            }
            // The etcd lock is free before anyone sees "succeeded" (a
            // waiting request answers at the publication below): a caller
            // may start the next operation on another daemon right away.
            if let (Some(etcd), OperationState::Succeeded) = (self.etcd(), op.state) {
                etcd.release(&op).await;
            }
            self.current.send_replace(Some(op.clone()));
            self.publish_metrics(Some(&op));
        }
        self.finished(&op, Some(started.elapsed()));
        if op.state == OperationState::Succeeded {
            self.lease().end();
            if self.etcd().is_none() {
                self.unlock_peers(&op.id).await;
            }
            tracing::info!(operation = %op.id, seconds = started.elapsed().as_secs_f64(), "operation succeeded");
        }
    }

    /// Where `step` of `op` reports its progress while it runs: onto that
    /// step of the operation in memory (what `/v1/operations` and the
    /// status page read; the journal is not written for it) and into the
    /// progress metrics.
    fn progress_reporter(
        self: &Arc<Self>,
        op: &Operation,
        step: StepName,
    ) -> steps::progress::Reporter {
        let me = Arc::downgrade(self);
        let (id, kind) = (op.id.clone(), op.kind);
        steps::progress::Reporter::new(move |p| {
            let Some(me) = me.upgrade() else { return };
            me.metrics.set_progress(kind.as_str(), step, p.as_ref());
            me.current.send_if_modified(|cur| {
                let Some(s) = cur.as_mut().filter(|o| o.id == id).and_then(|o| {
                    o.steps.iter_mut().find(|s| {
                        s.name == step && s.state == pgwarden_core::operation::StepState::Running
                    })
                }) else {
                    return false;
                };
                s.progress = p.clone();
                true
            });
        })
    }

    /// Waits until every node's latest poll started after `since` (bounded
    /// by one poll interval and timeout: a poller busy at `since` polls again
    /// at its next tick).
    async fn wait_for_fresh_view(&self, since: Instant) {
        let mut published = self.published.clone();
        let budget = self.config.poll.interval + self.config.poll.timeout;
        let fresh = |p: &Arc<Published>| {
            p.polls_started
                .iter()
                .all(|s| s.is_some_and(|s| s >= since))
        };
        let _ = tokio::time::timeout(budget, published.wait_for(fresh)).await;
    }

    fn finished(&self, op: &Operation, took: Option<std::time::Duration>) {
        let result = serde_json::to_value(op.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.metrics
            .operation_finished(op.kind.as_str(), &result, took);
        self.current.send_replace(Some(op.clone()));
        self.publish_metrics(Some(op));
    }

    fn publish_metrics(&self, op: Option<&Operation>) {
        let running = op.is_some_and(|o| o.state == OperationState::Running);
        let fenced = op.is_some_and(|o| {
            o.is_open()
                && o.completed(StepName::FenceApplication)
                && !o.completed(StepName::StartApplication)
        });
        self.metrics.set_operation(running, fenced);
    }
}
