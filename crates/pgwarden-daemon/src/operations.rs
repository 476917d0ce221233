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
    Operation, OperationKind, OperationState, Request, StepName, StepOutcome,
};
use pgwarden_core::preflight::{self, Check, PreflightInput};
use pgwarden_core::Config;
use serde::Serialize;
use tokio::sync::watch;

use crate::effects::Effects;
use crate::executor::{self, StepContext};
use crate::journal::{Journal, JournalError};
use crate::lock::{Lease, LockFile, PeerLock, LEASE_TTL};
use crate::metrics::Metrics;
use crate::Published;

/// Why a request about operations was refused; maps to an HTTP status.
#[derive(Debug)]
pub enum OpError {
    NotFound(String),
    /// Another operation holds the lock, or the state does not allow it.
    Conflict(String),
    /// Preflight refused: the failed checks are listed.
    Preflight {
        message: String,
        checks: Vec<Check>,
    },
    /// Another daemon that must do the work does not answer.
    Unavailable(String),
    /// This daemon is starting an operation itself at this very moment (a
    /// lock request from the peer crossed ours): the peer decides by name
    /// which of the two goes on.
    Starting(String),
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

/// Sets `synchronous_standby_names` on the primary `node` to the standby's
/// application name, reloads, and waits until pg_stat_replication shows that
/// standby with sync_state = sync.
pub async fn require_synchronous(
    node: &pgwarden_pg::Node,
    app_name: &str,
    deadline: std::time::Duration,
) -> Result<(), String> {
    // Quoted: application names may hold characters (`-`) that
    // synchronous_standby_names would otherwise not parse.
    let value = format!("\"{app_name}\"");
    let e = |e: pgwarden_pg::AdminError| e.to_string();
    node.alter_system("synchronous_standby_names", Some(&value))
        .await
        .map_err(e)?;
    node.reload().await.map_err(e)?;
    let sql = format!(
        "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync' AND state = 'streaming' AND application_name = {}",
        pgwarden_pg::quote_literal(app_name)
    );
    let until = Instant::now() + deadline;
    loop {
        if node.value(&sql).await.map_err(e)? != "0" {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(format!(
                "synchronous_standby_names is set on {}, but no standby named {app_name} became synchronous within {deadline:?}: check its primary_conninfo",
                node.name
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The answer to `PUT /v1/sync`.
#[derive(Clone, Debug, Serialize)]
pub struct SyncAnswer {
    pub mode: &'static str,
    pub primary: String,
    pub synchronous_standby_names: String,
    /// Standbys streaming synchronously after the change (mode sync).
    pub sync_standbys: Vec<String>,
    /// Sessions that were waiting for the standby and were released (mode async).
    pub released_writes: u64,
    pub warning: Option<String>,
}

pub struct Operations {
    config: Arc<Config>,
    journal: Journal,
    effects: Arc<Effects>,
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
    fenced_peers: crate::FencedPeers,
    /// Asks the poll loop to poll every node now: what a step changed
    /// shows in /health and /v1/status without waiting for the next tick.
    poll_now: Arc<tokio::sync::Notify>,
    /// The id of an operation this daemon is starting (asking peers for the
    /// lock, not yet journaled). While set, a peer's lock request is refused:
    /// two daemons starting at the same instant then both get 409 instead of
    /// granting each other's lock. A std Mutex: never held across an await.
    starting: std::sync::Mutex<Option<String>>,
}

/// Fault injection for the crash tests: `PGWARDEN_FAULT_PAUSE=promote:after`
/// holds the run loop at that point (after the step's intent, or after its
/// effect but before its outcome, is journaled) so a test can SIGKILL the
/// daemon exactly there. Compiled only with the `fault-injection` feature,
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
    if want == format!("{name}:{point}") {
        tracing::warn!(%want, "fault injection: pausing the operation here");
        tokio::time::sleep(std::time::Duration::from_secs(120)).await;
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
        effects: Arc<Effects>,
        published: watch::Receiver<Arc<Published>>,
        metrics: Arc<Metrics>,
        current: watch::Sender<Option<Operation>>,
        poll_now: Arc<tokio::sync::Notify>,
        fenced_peers: crate::FencedPeers,
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
        let me = Operations {
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

    fn peer_lock(&self) -> Option<PeerLock> {
        self.peer_lock.read()
    }

    fn lease(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renews the lease of the open operation at every peer, every third of
    /// its TTL, until `stop` flips: also after a restart, for an operation
    /// found interrupted, which still holds the lock until resumed or aborted.
    pub async fn keep_lease(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(LEASE_TTL / 3) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(op) = self.open_operation() else {
                continue;
            };
            if self.lease().operation_id() != Some(op.id.as_str()) {
                self.lease().begin(&op.id);
            }
            // A renewal never fails the operation by itself: the check
            // before the next step decides.
            let _ = self.lock_peers(&op.id, false).await;
        }
    }

    fn view(&self) -> Arc<pgwarden_core::ClusterView> {
        self.published.borrow().view.clone()
    }

    async fn preflight(&self, kind: OperationKind, request: &Request) -> Vec<Check> {
        let silent = if kind == OperationKind::Rejoin {
            Vec::new()
        } else {
            executor::silent_hosts(
                &self.config,
                &self.effects,
                &self.view(),
                &request.fenced_hosts,
            )
            .await
        };
        let open = self.open_operation().map(|o| o.id);
        let lock = self
            .peer_lock()
            .map(|l| format!("{} (held for {})", l.operation_id, l.holder));
        let shadows = executor::shadows(&self.config);
        let blocker = self
            .config
            .application
            .as_ref()
            .and_then(crate::effects::config_file_blocker);
        preflight::preflight(&PreflightInput {
            config: &self.config,
            view: &self.view(),
            kind,
            request,
            open_operation: open.as_deref().or(lock.as_deref()),
            shadows: &shadows,
            config_file_blocker: blocker.as_deref(),
            silent_hosts: &silent,
        })
    }

    /// A dry run: the checks and the steps, nothing changed.
    pub async fn plan(&self, kind: OperationKind, request: &Request) -> Plan {
        let checks = self.preflight(kind, request).await;
        Plan {
            kind,
            target: request.target.clone(),
            would_proceed: preflight::passed(&checks),
            checks,
            plan: kind.steps().to_vec(),
        }
    }

    /// Takes the lock (here and at the peer), journals a new operation and
    /// starts running it.
    pub async fn start(
        self: &Arc<Self>,
        kind: OperationKind,
        request: Request,
    ) -> Result<Operation, OpError> {
        let mut facts = std::collections::BTreeMap::new();
        // A forced failover says in its first answer (and so in the audit
        // entry) what it may cost; preflight records it again when it runs.
        if kind == OperationKind::Failover && request.force {
            if let Some(lost) = preflight::bytes_possibly_lost(&self.view(), &request.target) {
                facts.insert("bytes_possibly_lost".into(), lost.to_string());
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
        facts: std::collections::BTreeMap<String, String>,
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
        facts: std::collections::BTreeMap<String, String>,
    ) -> Result<Operation, OpError> {
        self.lease().begin(&id);
        let lock_note = match self.lock_peers(&id, true).await {
            Ok(note) => note,
            Err(e) => {
                self.lease().end();
                return Err(e);
            }
        };
        let mut op = Operation::new(id, kind, request, &now());
        op.facts.extend(facts);
        op.facts.insert("peer_lock".into(), lock_note);
        if let Err(e) = self.journal.save(&op) {
            self.unlock_peers(&op.id).await;
            return Err(OpError::Internal(format!("nothing was done: {e}")));
        }
        tracing::info!(operation = %op.id, kind = %kind, target = %op.request.target, "operation started");
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
        self.lease().begin(&op.id);
        let note = self.lock_peers(&op.id, false).await?;
        op.facts.insert("peer_lock".into(), note);
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
        self.unlock_peers(&op.id).await;
        Ok(op)
    }

    /// `PUT /v1/sync`: sets (`on`) or clears `synchronous_standby_names` on
    /// the primary, verified. Setting it with no streaming standby would
    /// block every write, so that needs `force`. Clearing it releases writes
    /// waiting for a lost standby; the answer says what that costs.
    ///
    /// Going async while a peer daemon is silent is refused unless
    /// `fenced_hosts` names it: that peer may have promoted its node, and an
    /// async primary alone would then acknowledge writes the other side
    /// never sees. Naming it also tells this daemon that its primary is
    /// alone on purpose (no `primary_isolated` while the peer stays silent).
    pub async fn set_sync(
        &self,
        on: bool,
        force: bool,
        fenced_hosts: &[String],
    ) -> Result<SyncAnswer, OpError> {
        let _gate = self.gate.lock().await;
        let silent =
            executor::silent_hosts(&self.config, &self.effects, &self.view(), fenced_hosts).await;
        let unconfirmed: Vec<&str> = silent
            .iter()
            .filter(|h| !fenced_hosts.contains(h))
            .map(String::as_str)
            .collect();
        if !on && !unconfirmed.is_empty() {
            return Err(OpError::Conflict(format!(
                "the daemon on host {} does not answer: its node may have been promoted, and this primary would then acknowledge writes that are lost; \
                 if that host is fenced (powered off, or PostgreSQL stopped and disabled there), confirm it with \"fenced_hosts\": [{}]",
                unconfirmed.join(", "),
                unconfirmed.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(", ")
            )));
        }
        {
            let mut confirmed = self.fenced_peers.lock().unwrap_or_else(|p| p.into_inner());
            confirmed.extend(silent.iter().filter(|h| fenced_hosts.contains(h)).cloned());
        }
        if let Some(open) = self.open_operation() {
            return Err(OpError::Conflict(format!(
                "operation {} is open: finish or abort it first",
                open.id
            )));
        }
        if let Some(lock) = self.peer_lock() {
            return Err(OpError::Conflict(format!(
                "the daemon beside {} runs operation {}: change synchronous replication after it",
                lock.holder, lock.operation_id
            )));
        }
        let view = self.view();
        let primary = view.primary.clone().ok_or_else(|| {
            OpError::Conflict("there is no single reachable primary to configure".into())
        })?;
        let streaming: Vec<String> = view
            .node(&primary)
            .map(|p| {
                p.replication
                    .iter()
                    .filter(|l| l.streaming)
                    .map(|l| l.standby.clone())
                    .collect()
            })
            .unwrap_or_default();
        if on && streaming.is_empty() && !force {
            return Err(OpError::Conflict(format!(
                "no standby streams from {primary}: with synchronous_standby_names set every commit would wait forever; start the standby first, or pass force"
            )));
        }
        let app_name = &self.config.replication.application_name;
        let node = self.effects.node(&primary);
        let failed = |e: pgwarden_pg::AdminError| OpError::Internal(format!("{primary}: {e}"));
        let waiting = |n: &pgwarden_pg::Node| {
            let n = n.clone();
            async move {
                n.value("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
                    .await
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            }
        };
        let blocked_before = waiting(&node).await;
        let mut answer = SyncAnswer {
            mode: if on { "sync" } else { "async" },
            primary: primary.clone(),
            synchronous_standby_names: String::new(),
            sync_standbys: Vec::new(),
            released_writes: 0,
            warning: None,
        };
        if on && !streaming.is_empty() {
            require_synchronous(&node, app_name, std::time::Duration::from_secs(30))
                .await
                .map_err(OpError::Conflict)?;
            answer.sync_standbys = streaming.clone();
        } else {
            // async, or sync forced with no standby: set the value, verify it took.
            let value = if on {
                format!("\"{app_name}\"")
            } else {
                String::new()
            };
            node.alter_system("synchronous_standby_names", Some(&value))
                .await
                .map_err(failed)?;
            node.reload().await.map_err(failed)?;
            let until = Instant::now() + std::time::Duration::from_secs(10);
            while node
                .setting("synchronous_standby_names")
                .await
                .map_err(failed)?
                != value
            {
                if Instant::now() > until {
                    return Err(OpError::Internal(format!(
                        "{primary} did not take the new synchronous_standby_names after a reload"
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        answer.synchronous_standby_names = node
            .setting("synchronous_standby_names")
            .await
            .map_err(failed)?;
        if on && streaming.is_empty() {
            answer.warning =
                Some("no standby streams: every commit waits until one connects".into());
        } else if !on {
            let until = Instant::now() + std::time::Duration::from_secs(10);
            while waiting(&node).await > 0 && Instant::now() < until {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            answer.released_writes = blocked_before;
            answer.warning = Some(format!(
                "commits no longer wait for a standby: the ones made from now on (and the {blocked_before} released) exist on {primary} only until a standby catches up, and are lost if {primary} dies first; run `pgwarden sync sync` once the standby streams"
            ));
        }
        tracing::warn!(mode = answer.mode, primary = %primary, "synchronous replication changed");
        Ok(answer)
    }

    /// `application.health_url` asked from this host.
    pub async fn app_healthy_here(&self) -> pgwarden_core::Answer {
        match self.effects.app_healthy_on(&self.config.local_node).await {
            Ok(a) => a,
            Err(e) => pgwarden_core::Answer::Unknown(e.message),
        }
    }

    /// Points this host's application config file at `host:port`.
    pub fn switch_config_here(
        &self,
        operation: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, String> {
        self.effects
            .switch_application_config(operation, host, port)
    }

    /// Acts on (or looks at) this host's pgbouncer.
    pub async fn pgbouncer_here(
        &self,
        action: &crate::effects::pgbouncer::Action,
    ) -> Result<crate::effects::pgbouncer::Report, String> {
        self.effects.pgbouncer_here(action).await
    }

    /// An operation of this journal, else of a peer's (a rejoin runs on the
    /// rejoining node's daemon, wherever it was asked for).
    pub async fn find(&self, id: &str) -> Option<serde_json::Value> {
        if let Some(op) = self.get(id) {
            return serde_json::to_value(op).ok();
        }
        for n in self
            .config
            .nodes
            .iter()
            .filter(|n| n.name != self.config.local_node)
        {
            let Some(api) = &n.api else { continue };
            let url = format!(
                "{}/v1/operations/{id}?local=true",
                api.trim_end_matches('/')
            );
            if let Ok(v) = self.effects.get(&url).await {
                return Some(v);
            }
        }
        None
    }

    /// Forwards a rejoin of `node` to the daemon beside it.
    pub async fn forward_rejoin(
        &self,
        node: &str,
        query: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, serde_json::Value), OpError> {
        let api = self
            .config
            .node(node)
            .and_then(|n| n.api.clone())
            .ok_or_else(|| {
                OpError::Conflict(format!(
                    "nodes[{node}].api is not configured: send the rejoin to {node}'s daemon"
                ))
            })?;
        let url = format!("{}/v1/rejoin{query}", api.trim_end_matches('/'));
        // A copy of a large database can take hours when the caller waits.
        self.effects
            .forward(&url, body, std::time::Duration::from_secs(6 * 3600))
            .await
            .map_err(|e| {
                OpError::Unavailable(format!(
                    "the rejoin runs on {node}'s own daemon, which does not answer: {e}"
                ))
            })
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
    /// completed guaranteed (see [`executor::reverify`]); if that no longer
    /// holds, its next step fails with the reason and nothing runs.
    async fn run_resumed(self: Arc<Self>, mut op: Operation) {
        let ctx = StepContext {
            config: self.config.clone(),
            effects: self.effects.clone(),
            view: self.view(),
            fenced_hosts: op.request.fenced_hosts.clone(),
        };
        match executor::reverify(&ctx, &op).await {
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
        while op.next_step().is_some() {
            let step = op.start_step(&now()).expect("a next step exists");
            if let Err(e) = self.journal.save(&op) {
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
            if let Err(why) = self.lease().check(&op.id, Instant::now()) {
                let _ = op.finish_step(StepOutcome::Failed(why), &now());
                let _ = self.journal.save(&op);
                self.current.send_replace(Some(op.clone()));
                break;
            }
            fault_pause(step, "before").await;
            let ctx = StepContext {
                config: self.config.clone(),
                effects: self.effects.clone(),
                view: self.view(),
                fenced_hosts: op.request.fenced_hosts.clone(),
            };
            let step_started = Instant::now();
            let outcome = executor::run_step(&ctx, &mut op, step).await;
            match &outcome {
                StepOutcome::Failed(m) => {
                    tracing::error!(operation = %op.id, ?step, "step failed: {m}")
                }
                StepOutcome::Succeeded(m) | StepOutcome::Skipped(m) => {
                    tracing::info!(operation = %op.id, ?step, ms = step_started.elapsed().as_millis() as u64, "{m}")
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
            if let Err(e) = self.journal.save(&op) {
                // The effect happened; memory holds the truth and the next
                // save retries. Resume would re-check the real state anyway.
                tracing::error!(operation = %op.id, "cannot journal the end of a step: {e}");
            }
            self.current.send_replace(Some(op.clone()));
            self.publish_metrics(Some(&op));
        }
        self.finished(&op, Some(started.elapsed()));
        if op.state == OperationState::Succeeded {
            self.lease().end();
            self.unlock_peers(&op.id).await;
            tracing::info!(operation = %op.id, seconds = started.elapsed().as_secs_f64(), "operation succeeded");
        }
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

    /// Asks every peer daemon to hold (or keep holding) the lock of `id`.
    /// Only a connection that cannot be made means "unreachable" (the lock
    /// is then not shared with it); any other failure (a refusal, an
    /// authentication error, a timeout after the request was sent, an
    /// answer that cannot be read) refuses, since that daemon may be
    /// holding or doing something we cannot see.
    async fn lock_peers(&self, id: &str, first: bool) -> Result<String, OpError> {
        let mut notes = Vec::new();
        let mut locked = Vec::new();
        for n in self
            .config
            .nodes
            .iter()
            .filter(|n| n.name != self.config.local_node)
        {
            let Some(api) = &n.api else {
                notes.push(format!("{}: no api configured", n.name));
                continue;
            };
            let url = format!("{}/v1/internal/lock", api.trim_end_matches('/'));
            let body = serde_json::json!({
                "holder": self.config.local_node,
                "operation_id": id,
                "ttl_ms": LEASE_TTL.as_millis() as u64,
            });
            let asked = Instant::now();
            let mut answer = self.effects.post(&url, &body).await;
            // Two daemons starting at the same instant refuse each other's
            // lock. Exactly one must go on: the one whose node name sorts
            // first asks again while the other gives up.
            let tie_until = asked + std::time::Duration::from_secs(2);
            while first
                && self.config.local_node < n.name
                && Instant::now() < tie_until
                && matches!(&answer, Err(e) if e.code.as_deref() == Some("starting"))
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                answer = self.effects.post(&url, &body).await;
            }
            match answer {
                Ok(_) => {
                    self.lease().confirmed(id, &n.name, asked);
                    locked.push(n.name.clone());
                    notes.push(format!("held by the daemon beside {}", n.name));
                }
                Err(e) if e.unreachable => notes.push(format!(
                    "the daemon beside {} is unreachable, lock not shared: {}",
                    n.name, e.message
                )),
                Err(e) => {
                    if e.status == Some(409) {
                        self.lease().lost(
                            id,
                            format!(
                                "the daemon beside {} holds another lock: {}",
                                n.name, e.message
                            ),
                        );
                    }
                    // Taking it for the first time: give back what was taken.
                    if first {
                        for name in &locked {
                            self.unlock_peer(name, id).await;
                        }
                    }
                    return Err(OpError::Conflict(format!(
                        "the daemon beside {} did not grant the operation lock: {}",
                        n.name, e.message
                    )));
                }
            }
        }
        Ok(notes.join("; "))
    }

    async fn unlock_peer(&self, node: &str, id: &str) {
        if let Some(api) = self.config.node(node).and_then(|n| n.api.as_ref()) {
            let url = format!("{}/v1/internal/unlock", api.trim_end_matches('/'));
            if let Err(e) = self
                .effects
                .post(&url, &serde_json::json!({"operation_id": id}))
                .await
            {
                tracing::warn!(node, "could not release the peer's lock: {}", e.message);
            }
        }
    }

    async fn unlock_peers(&self, id: &str) {
        for n in self
            .config
            .nodes
            .iter()
            .filter(|n| n.name != self.config.local_node)
        {
            self.unlock_peer(&n.name, id).await;
        }
    }

    /// A peer's lock whose operation is over there (finished, aborted, or
    /// unknown) is stale: drop it. An unreachable holder keeps it.
    async fn clear_stale_peer_lock(&self) {
        let Some(lock) = self.peer_lock() else { return };
        let Some(api) = self.config.node(&lock.holder).and_then(|n| n.api.clone()) else {
            return;
        };
        let url = format!(
            "{}/v1/operations/{}",
            api.trim_end_matches('/'),
            lock.operation_id
        );
        match self.effects.get(&url).await {
            Ok(v)
                if !matches!(
                    v["state"].as_str(),
                    Some("running" | "failed" | "interrupted")
                ) =>
            {
                tracing::info!(operation = %lock.operation_id, "dropping a stale lock: the operation ended at {}", lock.holder);
                self.peer_lock.remove();
            }
            Err(e) if e.status == Some(404) => self.peer_lock.remove(),
            _ => {}
        }
    }

    /// The peer asks us to hold (or renew) the lock for its operation, for
    /// `ttl` from now.
    pub fn hold_for_peer(
        &self,
        holder: &str,
        operation_id: &str,
        ttl: std::time::Duration,
    ) -> Result<(), OpError> {
        // Held until the lock file is written: see `start`.
        let starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mine) = starting.as_ref() {
            return Err(OpError::Starting(format!(
                "this daemon is starting operation {mine} itself"
            )));
        }
        if let Some(open) = self.open_operation() {
            return Err(OpError::Conflict(format!(
                "operation {} is open here",
                open.id
            )));
        }
        match (self.peer_lock(), self.peer_lock.read_any()) {
            (Some(lock), _) if lock.operation_id != operation_id => {
                return Err(OpError::Conflict(format!(
                    "the lock is held for operation {} of {}",
                    lock.operation_id, lock.holder
                )));
            }
            (None, Some(expired)) if expired.operation_id != operation_id => {
                tracing::warn!(
                    operation = %expired.operation_id,
                    holder = %expired.holder,
                    "the lock of this operation expired (its daemon did not renew it): granting it to {operation_id} of {holder}"
                );
            }
            _ => {}
        }
        let since = self
            .peer_lock
            .read_any()
            .filter(|l| l.operation_id == operation_id)
            .map(|l| l.since)
            .unwrap_or_else(now);
        let lock = PeerLock::new(holder, operation_id, since, ttl);
        self.peer_lock.write(&lock).map_err(|e| {
            OpError::Internal(format!(
                "cannot write {}: {e}",
                self.peer_lock.path.display()
            ))
        })
    }

    pub fn release_for_peer(&self, operation_id: &str) {
        if self
            .peer_lock
            .read_any()
            .is_some_and(|l| l.operation_id == operation_id)
        {
            self.peer_lock.remove();
        }
    }
}
