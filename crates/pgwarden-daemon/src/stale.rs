//! Fencing a stale primary: when this daemon's own node is a primary on an
//! older timeline than another primary (a former primary that systemd, or a
//! person, started again after a failover), it is a second writer. The
//! daemon beside it stops it at once with the node's `stop` command and
//! audits that, unless `stop_stale_primary` is off.
//!
//! Only the daemon beside the stale node acts, and only on its own node: the
//! newest timeline wins, which is the node the application was switched to.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pgwarden_core::view::ClusterView;
use pgwarden_core::{Config, ProblemCode};

use crate::audit::{AuditEntry, AuditLog};
use crate::effects::local_node_action;
use crate::operations::now;

pub(crate) struct StaleGuard {
    config: Arc<Config>,
    audit: Arc<AuditLog>,
    /// A stop is under way: do not start another one on the next poll.
    stopping: Arc<AtomicBool>,
}

impl StaleGuard {
    pub fn new(config: Arc<Config>, audit: Arc<AuditLog>) -> StaleGuard {
        StaleGuard {
            config,
            audit,
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Called with every new view; stops the local node if it is stale.
    pub fn check(&self, view: &ClusterView) {
        let me = self.config.local_node.clone();
        let Some(problem) = view.problems.iter().find(|p| {
            p.code == ProblemCode::StalePrimary && p.node.as_deref() == Some(me.as_str())
        }) else {
            return;
        };
        if !self.config.stop_stale_primary || self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let (config, audit, stopping) = (
            self.config.clone(),
            self.audit.clone(),
            self.stopping.clone(),
        );
        let reason = problem.message.clone();
        tracing::error!(node = %me, "{reason}: stopping it now (stop_stale_primary)");
        tokio::spawn(async move {
            let result = local_node_action(&config, "stop").await;
            let (status, outcome) = match &result {
                Ok(state) => (200, format!("stopped: {}", state.message)),
                Err(e) => (500, format!("could not stop it: {e}")),
            };
            match &result {
                Ok(_) => tracing::warn!(node = %me, "stale primary stopped"),
                Err(e) => tracing::error!(node = %me, "could not stop the stale primary: {e}"),
            }
            let entry = AuditEntry {
                time: now(),
                remote: "local".into(),
                caller: "pgwarden".into(),
                method: "AUTO".into(),
                endpoint: "stop_stale_primary".into(),
                body: serde_json::json!({"node": me, "reason": reason}),
                status,
                result: outcome,
            };
            if let Err(e) = audit.append(&entry) {
                tracing::error!("cannot append to the audit log: {e}");
            }
            stopping.store(false, Ordering::SeqCst);
        });
    }
}
