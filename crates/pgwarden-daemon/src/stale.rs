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
use crate::operations::now;
use crate::Published;

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
            continue;
        };
        if !config.stop_stale_primary {
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
            }
            Err(e) => {
                tracing::error!(node = %me, retry_in = ?backoff, "could not stop the stale primary: {e}");
                failure.send_replace(Some(e));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
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
