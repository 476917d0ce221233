//! Fencing a stale primary: when this daemon's own node is a primary on an
//! older timeline than another primary (a former primary that systemd, or a
//! person, started again after a failover), it is a second writer. The
//! daemon beside it stops it with the node's `stop` command and audits
//! that, unless `stop_stale_primary` is off.
//!
//! Only the daemon beside the stale node acts, and only on its own node: the
//! newest timeline wins, which is the node the application was switched to.
//!
//! The guard subscribes to the published views on its own. "Stopped" is
//! audited only when the stop was verified (the postmaster is gone). A stop
//! that fails is published as `stale_primary_not_stopped` (critical, read
//! by the view builder) and retried with a growing pause, never every poll.

use std::sync::Arc;
use std::time::Duration;

use pgwarden_core::{Config, ProblemCode};
use tokio::sync::watch;

use crate::audit::{AuditEntry, AuditLog};
use crate::effects::Effects;
use crate::ops::now;
use crate::poller::Published;

/// First pause after a failed stop; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Runs the guard until `stop` flips. `failure` carries why the last stop
/// of a stale local node failed (None: no failure to report).
pub(crate) async fn run(
    config: Arc<Config>,
    effects: Arc<dyn Effects>,
    audit: Arc<AuditLog>,
    mut published: watch::Receiver<Arc<Published>>,
    failure: watch::Sender<Option<String>>,
    mut stop: watch::Receiver<bool>,
) {
    let me = config.local_node.clone();
    let mut backoff = FIRST_BACKOFF;
    // After a failed stop, no new attempt before this; the views are still
    // read meanwhile, so a node no longer stale clears the report at once.
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut last_view = None;
    loop {
        tokio::select! {
            changed = published.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let view = published.borrow_and_update().view.clone();
        // The poll loop republishes the same view between polls (liveness).
        if last_view.as_ref().is_some_and(|v| Arc::ptr_eq(v, &view)) {
            continue;
        }
        last_view = Some(view.clone());
        let reason = {
            view.problems
                .iter()
                .find(|p| {
                    p.code == ProblemCode::StalePrimary && p.node.as_deref() == Some(me.as_str())
                })
                .map(|p| p.message.clone())
        };
        let Some(reason) = reason else {
            // Not (or no longer) stale: nothing to report, start afresh.
            failure.send_if_modified(|f| f.take().is_some());
            backoff = FIRST_BACKOFF;
            retry_at = None;
            continue;
        };
        if !config.stop_stale_primary {
            continue;
        }
        if retry_at.is_some_and(|at| tokio::time::Instant::now() < at) {
            continue;
        }
        // A view polled before the last stop finished still shows it stale;
        // a node verified down needs no second stop (nor a second audit).
        if effects.local_node_stopped().await.is_yes() {
            continue;
        }
        tracing::error!(node = %me, "{reason}: stopping it now (stop_stale_primary)");
        let result = tokio::select! {
            r = effects.stop_local_node() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (status, outcome) = match &result {
            Ok(state) => (200, format!("stopped: {}", state.message)),
            Err(e) => (500, format!("could not stop it: {e}")),
        };
        audit_stop(&audit, &me, &reason, status, &outcome);
        match result {
            Ok(_) => {
                tracing::warn!(node = %me, "stale primary stopped");
                failure.send_replace(None);
                backoff = FIRST_BACKOFF;
                retry_at = None;
            }
            Err(e) => {
                tracing::error!(node = %me, retry_in = ?backoff, "could not stop the stale primary: {e}");
                failure.send_replace(Some(e));
                retry_at = Some(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn audit_stop(audit: &AuditLog, me: &str, reason: &str, status: u16, outcome: &str) {
    let entry = AuditEntry {
        time: now(),
        remote: "local".into(),
        caller: "pgwarden".into(),
        method: "AUTO".into(),
        endpoint: "stop_stale_primary".into(),
        body: serde_json::json!({"node": me, "reason": reason}),
        status,
        result: outcome.to_owned(),
    };
    if let Err(e) = audit.append(&entry) {
        tracing::error!("cannot append to the audit log: {e}");
    }
}

#[cfg(test)]
mod tests {
    //! The guard's decisions in the fake world: what it stops, what it
    //! audits, what it reports, and how often it tries again.

    use std::time::Instant;

    use pgwarden_core::health::{Problem, Severity};
    use pgwarden_core::view::ClusterView;

    use super::*;
    use crate::effects::fake::{FakeWorld, Fault, CONFIG};

    struct Guard {
        world: Arc<FakeWorld>,
        audit: Arc<AuditLog>,
        views: watch::Sender<Arc<Published>>,
        failure: watch::Receiver<Option<String>>,
        _stop: watch::Sender<bool>,
        _dir: tempfile::TempDir,
    }

    /// The guard of pg-b, which runs as a primary on an older timeline.
    fn guard() -> Guard {
        let world = FakeWorld::new(Config::parse_str("fake.yaml", CONFIG).unwrap());
        world.with(|w| w.nodes.get_mut("pg-b").unwrap().in_recovery = false);
        let dir = tempfile::tempdir().unwrap();
        let audit = Arc::new(AuditLog::open(dir.path()).unwrap());
        let (views, rx) = watch::channel(published(&world, false));
        let (failure_tx, failure) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(run(
            world.config(),
            world.clone(),
            audit.clone(),
            rx,
            failure_tx,
            stop_rx,
        ));
        Guard {
            world,
            audit,
            views,
            failure,
            _stop: stop_tx,
            _dir: dir,
        }
    }

    /// A freshly polled view, with pg-b stale or not.
    fn published(world: &FakeWorld, stale: bool) -> Arc<Published> {
        let mut view = ClusterView::build(&world.config(), &[]);
        if stale {
            view.problems.push(Problem {
                code: ProblemCode::StalePrimary,
                severity: Severity::Critical,
                node: Some("pg-b".into()),
                message: "pg-b is a primary on timeline 1, older than pg-a's 2".into(),
            });
        }
        Arc::new(Published {
            view: Arc::new(view),
            metrics: Default::default(),
            loop_at: Instant::now(),
            polls_started: Vec::new(),
        })
    }

    impl Guard {
        /// Publishes one poll per 500 ms for `polls` polls.
        async fn polls(&self, stale: bool, polls: u32) {
            for _ in 0..polls {
                self.views.send_replace(published(&self.world, stale));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }

        fn stop_attempts(&self) -> usize {
            self.world.with(|w| {
                w.calls
                    .iter()
                    .filter(|(effect, _)| effect == "stop_local_node")
                    .count()
            })
        }

        fn audited(&self) -> Vec<(u16, String)> {
            self.audit
                .tail(100)
                .unwrap()
                .into_iter()
                .map(|e| (e.status, e.result))
                .collect()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_primary_is_stopped_once_and_audited_once() {
        let g = guard();
        g.polls(true, 10).await;
        assert!(!g.world.with(|w| w.nodes["pg-b"].running));
        assert_eq!(
            g.stop_attempts(),
            1,
            "a node verified stopped is not stopped again"
        );
        let audited = g.audited();
        assert_eq!(audited.len(), 1, "{audited:?}");
        assert_eq!(audited[0].0, 200);
        assert!(audited[0].1.starts_with("stopped"), "{audited:?}");
        assert_eq!(*g.failure.borrow(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_that_fails_is_reported_never_audited_as_stopped_and_retried_with_backoff() {
        let g = guard();
        for fault in Fault::ALL {
            g.world.fault("stop_local_node", "pg-b", fault);
        }
        // 30 s of polls every 500 ms: 60 chances to retry.
        g.polls(true, 60).await;
        assert!(g.world.with(|w| w.nodes["pg-b"].running));
        let attempts = g.stop_attempts();
        // Pauses of 1, 2, 4, 8, 16 s: about six attempts, never one per poll.
        assert!(
            (3..=8).contains(&attempts),
            "{attempts} stop attempts in 30 s"
        );
        let failure = g
            .failure
            .borrow()
            .clone()
            .expect("the failure is published");
        assert!(failure.contains("still runs"), "{failure}");
        let audited = g.audited();
        assert_eq!(audited.len(), attempts, "{audited:?}");
        assert!(
            audited
                .iter()
                .all(|(status, result)| *status == 500 && !result.starts_with("stopped")),
            "{audited:?}"
        );
        // No longer stale (stopped by hand): the report is withdrawn.
        g.polls(false, 2).await;
        assert_eq!(*g.failure.borrow(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_state_of_the_node_is_not_taken_for_stopped() {
        let g = guard();
        g.world.fault("local_node_stopped", "pg-b", Fault::Unknown);
        g.polls(true, 4).await;
        assert!(g.stop_attempts() >= 1, "the guard took unknown for stopped");
        assert!(!g.world.with(|w| w.nodes["pg-b"].running));
    }

    #[tokio::test(start_paused = true)]
    async fn a_primary_that_is_not_stale_is_left_alone() {
        let g = guard();
        g.polls(false, 6).await;
        assert_eq!(g.stop_attempts(), 0);
        assert!(g.audited().is_empty());
    }
}
