//! The lock checked before every side effect of an operation: [`Guarded`]
//! wraps the operation's [`Effects`] and, before each effect that changes
//! the world (stop, start, promote, ALTER SYSTEM, a peer's mutating route,
//! pgbouncer's PAUSE/RESUME/re-point, the application's commands and
//! config, a rejoin's file work and tools), asks the operation lock
//! ([`LockCheck`]) whether this operation still holds it. Reading effects
//! are not guarded. A step therefore cannot act after the lock was lost by
//! forgetting a check: the check is here, below every step.
//!
//! The first refusal is kept ([`Guarded::refused`]): every later effect of
//! the operation is refused with it, and the run loop fails the step with
//! it even when the step itself would have gone on past the error.
//!
//! Async effects ask etcd itself (one linearizable read, see
//! `ops/etcd_lock.rs`). The few synchronous ones (a rejoin's file moves,
//! this host's config-file rewrite) cannot wait for etcd; they go on only
//! while the lease is known to live, from the last renewal etcd
//! acknowledged (see [`LockCheck::held_until`]). A renewal that finds the
//! lease gone (expired, or revoked by an operator) ends that at once. What
//! they do not see is the key deleted by hand while its lease lives: the
//! next async effect or step sees it. Requiring a recent read of the key
//! instead would refuse a rejoin's swap after a pg_basebackup of an hour.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pgwarden_core::preflight::Shadow;
use pgwarden_core::snapshot::{Lsn, WalReceiver};
use pgwarden_core::Answer;
use pgwarden_pg::AdminError;

use super::datadir::DataDirs;
use super::{app, node, pgbouncer, Effects, NodeSql, NodeState, PeerError};

/// Whether the running operation still holds the operation lock.
#[async_trait]
pub trait LockCheck: Send + Sync {
    /// Asks the lock's store now: `Err` with the reason when not held, or
    /// when that is unknown.
    async fn check(&self) -> Result<(), String>;
    /// Until when the lease is known to live without asking (the last
    /// acknowledged renewal plus its TTL, minus a margin), if known.
    fn held_until(&self) -> Option<Instant>;
}

struct State {
    refused: Option<String>,
    verified: Option<Instant>,
    /// Live checks made, and their total and longest time.
    checks: u32,
    total: Duration,
    longest: Duration,
}

/// The operation's effects, with the lock checked before each mutating one.
pub struct Guarded {
    inner: Arc<dyn Effects>,
    lock: Arc<dyn LockCheck>,
    state: Arc<Mutex<State>>,
    dirs: GuardedDirs,
}

impl Guarded {
    pub fn new(inner: Arc<dyn Effects>, lock: Arc<dyn LockCheck>) -> Guarded {
        let state = Arc::new(Mutex::new(State {
            refused: None,
            verified: None,
            checks: 0,
            total: Duration::ZERO,
            longest: Duration::ZERO,
        }));
        Guarded {
            dirs: GuardedDirs {
                inner: inner.clone(),
                lock: lock.clone(),
                state: state.clone(),
            },
            inner,
            lock,
            state,
        }
    }

    /// The first refusal, if an effect was refused.
    pub fn refused(&self) -> Option<String> {
        lock(&self.state).refused.clone()
    }

    /// What the checks cost: how many, mean and longest (for the journal).
    pub fn cost(&self) -> Option<String> {
        let s = lock(&self.state);
        (s.checks > 0).then(|| {
            format!(
                "{} checks before side effects, mean {:.2} ms, longest {:.2} ms",
                s.checks,
                s.total.as_secs_f64() * 1000.0 / f64::from(s.checks),
                s.longest.as_secs_f64() * 1000.0
            )
        })
    }

    /// The run loop checked the lock itself, just now.
    pub fn verified(&self, at: Instant) {
        lock(&self.state).verified = Some(at);
    }

    async fn guard(&self, effect: &str) -> Result<(), String> {
        guard(&self.lock, &self.state, effect).await
    }

    fn guard_sync(&self, effect: &str) -> Result<(), String> {
        guard_sync(&self.lock, &self.state, effect)
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn refuse(state: &Mutex<State>, effect: &str, why: String) -> String {
    let mut s = lock(state);
    let msg = format!("{effect} was not done: {why}");
    s.refused.get_or_insert(msg).clone()
}

async fn guard(
    lock_: &Arc<dyn LockCheck>,
    state: &Mutex<State>,
    effect: &str,
) -> Result<(), String> {
    if let Some(why) = lock(state).refused.clone() {
        return Err(why);
    }
    let asked = Instant::now();
    let answer = lock_.check().await;
    {
        let mut s = lock(state);
        let took = asked.elapsed();
        s.checks += 1;
        s.total += took;
        s.longest = s.longest.max(took);
    }
    match answer {
        Ok(()) => {
            lock(state).verified = Some(asked);
            Ok(())
        }
        Err(why) => Err(refuse(state, effect, why)),
    }
}

fn guard_sync(
    lock_: &Arc<dyn LockCheck>,
    state: &Mutex<State>,
    effect: &str,
) -> Result<(), String> {
    if let Some(why) = lock(state).refused.clone() {
        return Err(why);
    }
    let now = Instant::now();
    let checked = lock(state).verified.is_some();
    if checked && lock_.held_until().is_some_and(|t| now < t) {
        return Ok(());
    }
    Err(refuse(
        state,
        effect,
        "the operation lock is not known to be held right now (no renewal acknowledged recently enough)".into(),
    ))
}

fn peer_refused(message: String) -> PeerError {
    // Not "unreachable": nothing was asked of the peer, and "unreachable"
    // would read as a dead host.
    PeerError {
        status: None,
        unreachable: false,
        code: Some("lock_lost".into()),
        message,
    }
}

/// A node's SQL, with the lock checked before each statement that changes it.
struct GuardedSql {
    inner: Arc<dyn NodeSql>,
    node: String,
    lock: Arc<dyn LockCheck>,
    state: Arc<Mutex<State>>,
}

impl GuardedSql {
    async fn guard(&self, statement: &str) -> Result<(), AdminError> {
        guard(&self.lock, &self.state, statement)
            .await
            .map_err(|detail| AdminError::Statement {
                node: self.node.clone(),
                statement: statement.to_owned(),
                detail,
            })
    }
}

#[async_trait]
impl NodeSql for GuardedSql {
    async fn is_in_recovery(&self) -> Result<bool, AdminError> {
        self.inner.is_in_recovery().await
    }
    async fn timeline(&self) -> Result<u32, AdminError> {
        self.inner.timeline().await
    }
    async fn current_lsn(&self) -> Result<Option<Lsn>, AdminError> {
        self.inner.current_lsn().await
    }
    async fn replay_lsn(&self) -> Result<Option<Lsn>, AdminError> {
        self.inner.replay_lsn().await
    }
    async fn request_promotion(&self) -> Result<(), AdminError> {
        self.guard("pg_promote()").await?;
        self.inner.request_promotion().await
    }
    async fn wait_until_primary(
        &self,
        deadline: Duration,
        every: Duration,
    ) -> Result<Option<Duration>, AdminError> {
        self.inner.wait_until_primary(deadline, every).await
    }
    async fn checkpoint(&self) -> Result<(), AdminError> {
        self.guard("CHECKPOINT").await?;
        self.inner.checkpoint().await
    }
    async fn alter_system(&self, setting: &str, value: Option<&str>) -> Result<(), AdminError> {
        self.guard(&format!("ALTER SYSTEM {setting}")).await?;
        self.inner.alter_system(setting, value).await
    }
    async fn reload(&self) -> Result<(), AdminError> {
        self.guard("pg_reload_conf()").await?;
        self.inner.reload().await
    }
    async fn setting(&self, name: &str) -> Result<String, AdminError> {
        self.inner.setting(name).await
    }
    async fn ensure_slot(&self, slot: &str) -> Result<bool, AdminError> {
        self.guard(&format!("creating the slot {slot}")).await?;
        self.inner.ensure_slot(slot).await
    }
    async fn sessions_of(&self, role: &str) -> Result<u64, AdminError> {
        self.inner.sessions_of(role).await
    }
    async fn terminate_sessions_of(&self, role: &str) -> Result<u64, AdminError> {
        self.guard(&format!("terminating the sessions of {role}"))
            .await?;
        self.inner.terminate_sessions_of(role).await
    }
    async fn sync_rep_waiters(&self) -> Result<u64, AdminError> {
        self.inner.sync_rep_waiters().await
    }
    async fn sync_standbys_named(&self, application_name: &str) -> Result<u64, AdminError> {
        self.inner.sync_standbys_named(application_name).await
    }
    async fn database_bytes(&self) -> Result<u64, AdminError> {
        self.inner.database_bytes().await
    }
    async fn may_read_files_for_rewind(&self) -> Result<bool, AdminError> {
        self.inner.may_read_files_for_rewind().await
    }
    async fn wal_receiver(&self) -> Result<Option<WalReceiver>, AdminError> {
        self.inner.wal_receiver().await
    }
    async fn basebackup_progress(
        &self,
        application_name: &str,
    ) -> Result<Option<pgwarden_core::progress::BasebackupRow>, AdminError> {
        self.inner.basebackup_progress(application_name).await
    }
}

/// This host's data directories, with the lock checked before each change.
struct GuardedDirs {
    inner: Arc<dyn Effects>,
    lock: Arc<dyn LockCheck>,
    state: Arc<Mutex<State>>,
}

impl GuardedDirs {
    fn guard_sync(&self, effect: &str) -> Result<(), String> {
        guard_sync(&self.lock, &self.state, effect)
    }
}

#[async_trait]
impl DataDirs for GuardedDirs {
    fn exists(&self, path: &Path) -> Result<bool, String> {
        self.inner.data_dirs().exists(path)
    }
    fn is_empty(&self, dir: &Path) -> Result<bool, String> {
        self.inner.data_dirs().is_empty(dir)
    }
    fn free_bytes(&self, dir: &Path) -> Result<u64, String> {
        self.inner.data_dirs().free_bytes(dir)
    }
    fn keep(&self, from: &Path, to: &Path, names: &[&str]) -> Result<(), String> {
        self.guard_sync("keeping the node's configuration files")?;
        self.inner.data_dirs().keep(from, to, names)
    }
    fn restore(&self, from: &Path, dir: &Path, names: &[&str]) -> Result<(), String> {
        self.guard_sync("restoring the node's configuration files")?;
        self.inner.data_dirs().restore(from, dir, names)
    }
    fn remove_all(&self, path: &Path) -> std::io::Result<()> {
        self.guard_sync(&format!("removing {}", path.display()))
            .map_err(std::io::Error::other)?;
        self.inner.data_dirs().remove_all(path)
    }
    fn swap(&self, new: &Path, dir: &Path, old: &Path) -> Result<bool, String> {
        self.guard_sync(&format!("swapping {} in", dir.display()))?;
        self.inner.data_dirs().swap(new, dir, old)
    }
    fn configure_standby(
        &self,
        dir: &Path,
        settings: &[(&str, Option<String>)],
        signal: bool,
    ) -> std::io::Result<()> {
        self.guard_sync("configuring the standby")
            .map_err(std::io::Error::other)?;
        self.inner
            .data_dirs()
            .configure_standby(dir, settings, signal)
    }
    async fn run_tool(
        &self,
        argv: &[String],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(), String> {
        let tool = argv.first().map(String::as_str).unwrap_or("a tool");
        guard(&self.lock, &self.state, &format!("running {tool}")).await?;
        self.inner.data_dirs().run_tool(argv, env, timeout).await
    }
}

#[async_trait]
impl Effects for Guarded {
    fn node(&self, name: &str) -> Arc<dyn NodeSql> {
        Arc::new(GuardedSql {
            inner: self.inner.node(name),
            node: name.to_owned(),
            lock: self.lock.clone(),
            state: self.state.clone(),
        })
    }
    fn node_quick(&self, name: &str) -> Arc<dyn NodeSql> {
        Arc::new(GuardedSql {
            inner: self.inner.node_quick(name),
            node: name.to_owned(),
            lock: self.lock.clone(),
            state: self.state.clone(),
        })
    }
    fn data_dirs(&self) -> &dyn DataDirs {
        &self.dirs
    }
    async fn pg_control(&self, dir: &Path) -> Result<node::PgControl, String> {
        self.inner.pg_control(dir).await
    }
    fn monitor_password(&self) -> Option<String> {
        self.inner.monitor_password()
    }
    fn replication_password(&self) -> Option<String> {
        self.inner.replication_password()
    }
    async fn node_action(&self, node: &str, action: &str) -> Result<NodeState, String> {
        self.guard(&format!("{action} of {node}")).await?;
        self.inner.node_action(node, action).await
    }
    async fn stop_within(&self, node: &str, budget: Duration) -> Result<NodeState, PeerError> {
        self.guard(&format!("stopping {node}"))
            .await
            .map_err(peer_refused)?;
        self.inner.stop_within(node, budget).await
    }
    /// Looks only: not guarded.
    async fn node_stopped_on(&self, node: &str) -> Result<Answer, PeerError> {
        self.inner.node_stopped_on(node).await
    }
    async fn local_node_stopped(&self) -> Answer {
        self.inner.local_node_stopped().await
    }
    async fn stop_local_node(&self) -> Result<NodeState, String> {
        self.guard("stopping this host's node").await?;
        self.inner.stop_local_node().await
    }
    async fn post(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, PeerError> {
        self.guard(&format!("POST {url}"))
            .await
            .map_err(peer_refused)?;
        self.inner.post(url, body).await
    }
    async fn forward(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(u16, serde_json::Value), String> {
        self.guard(&format!("forwarding to {url}")).await?;
        self.inner.forward(url, body, timeout).await
    }
    async fn get(&self, url: &str) -> Result<serde_json::Value, PeerError> {
        self.inner.get(url).await
    }
    async fn follow(&self, replica: &str, primary: &str) -> Result<String, String> {
        self.guard(&format!("re-pointing {replica} at {primary}"))
            .await?;
        self.inner.follow(replica, primary).await
    }
    async fn pgbouncer_here(
        &self,
        action: &pgbouncer::Action,
    ) -> Result<pgbouncer::Report, String> {
        if !matches!(action, pgbouncer::Action::Status) {
            self.guard("pgbouncer's action here").await?;
        }
        self.inner.pgbouncer_here(action).await
    }
    async fn pgbouncer_on(
        &self,
        host: &str,
        action: &pgbouncer::Action,
    ) -> Result<pgbouncer::Report, PeerError> {
        if !matches!(action, pgbouncer::Action::Status) {
            self.guard(&format!("pgbouncer's action on {host}"))
                .await
                .map_err(peer_refused)?;
        }
        self.inner.pgbouncer_on(host, action).await
    }
    async fn daemon_answers(&self, host: &str) -> bool {
        self.inner.daemon_answers(host).await
    }
    async fn app_status_on(&self, host: &str) -> Result<Answer, PeerError> {
        self.inner.app_status_on(host).await
    }
    async fn app_command_on(
        &self,
        host: &str,
        which: app::AppCommand,
    ) -> Result<String, PeerError> {
        self.guard(&format!("the application's {} on {host}", which.as_str()))
            .await
            .map_err(peer_refused)?;
        self.inner.app_command_on(host, which).await
    }
    async fn app_healthy_on(&self, host: &str) -> Result<Answer, PeerError> {
        self.inner.app_healthy_on(host).await
    }
    async fn app_config_on(
        &self,
        host: &str,
        operation: &str,
        db_host: &str,
        db_port: u16,
    ) -> Result<bool, PeerError> {
        self.guard(&format!("re-pointing the application's config on {host}"))
            .await
            .map_err(peer_refused)?;
        self.inner
            .app_config_on(host, operation, db_host, db_port)
            .await
    }
    fn switch_application_config(
        &self,
        operation: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, String> {
        self.guard_sync("re-pointing this host's application config")?;
        self.inner.switch_application_config(operation, host, port)
    }
    fn config_file_blocker(&self) -> Option<String> {
        self.inner.config_file_blocker()
    }
    fn shadows(&self) -> Vec<Shadow> {
        self.inner.shadows()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::fake::{FakeWorld, CONFIG};

    /// A lock whose store always says "held", and whose lease is known to
    /// live until the instant set.
    struct Known(Mutex<Option<Instant>>);

    #[async_trait]
    impl LockCheck for Known {
        async fn check(&self) -> Result<(), String> {
            Ok(())
        }
        fn held_until(&self) -> Option<Instant> {
            *self.0.lock().unwrap()
        }
    }

    fn guarded(until: Option<Instant>) -> (Arc<FakeWorld>, Guarded) {
        let w = FakeWorld::new(pgwarden_core::Config::parse_str("fake.yaml", CONFIG).unwrap());
        let g = Guarded::new(w.clone(), Arc::new(Known(Mutex::new(until))));
        (w, g)
    }

    #[tokio::test]
    async fn a_synchronous_effect_goes_on_only_while_the_lease_is_known_to_live() {
        let now = Instant::now();
        // Live, and checked by the run loop: the fake's own answer comes back.
        let (_, g) = guarded(Some(now + Duration::from_secs(10)));
        g.verified(now);
        // (The fake file tree has no /x: its own "no such file" answer.)
        let e = g.data_dirs().remove_all(Path::new("/x")).unwrap_err();
        assert!(e.to_string().contains("No such file"), "{e}");
        assert_eq!(g.refused(), None);

        // Never checked, or the lease past what its last renewal vouched
        // for: refused, and every later effect with it, without asking.
        for (until, checked) in [
            (Some(now + Duration::from_secs(10)), false),
            (Some(now), true),
            (None, true),
        ] {
            let (w, g) = guarded(until);
            if checked {
                g.verified(now);
            }
            let e = g
                .switch_application_config("op-1", "10.0.0.2", 5432)
                .unwrap_err();
            assert!(e.contains("not known to be held"), "{e}");
            let before = w.call_count();
            let e = g
                .post("http://pg-b/v1/x", &serde_json::json!({}))
                .await
                .unwrap_err();
            assert_eq!(
                (e.unreachable, e.message.as_str()),
                (false, g.refused().unwrap().as_str())
            );
            assert_eq!(w.call_count(), before, "the world was not touched");
        }
    }
}
