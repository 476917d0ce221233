//! `PUT /v1/sync`: synchronous replication on or off at the primary,
//! verified by reading the setting back and, for "sync", by a standby
//! streaming with `sync_state = sync`.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{steps, OpError, Operations};
use crate::effects::NodeSql;

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

impl Operations {
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
            steps::silent_hosts(&self.config, &self.effects, &self.view(), fenced_hosts).await;
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
                // A replica streaming is no standby to wait for: it is
                // never in synchronous_standby_names.
                p.replication
                    .iter()
                    .filter(|l| l.streaming && !self.config.is_replica(&l.standby))
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
        // Unknown counts as none waiting: it only sizes the warning.
        let waiting = |n: Arc<dyn NodeSql>| async move { n.sync_rep_waiters().await.unwrap_or(0) };
        let blocked_before = waiting(node.clone()).await;
        let mut answer = SyncAnswer {
            mode: if on { "sync" } else { "async" },
            primary: primary.clone(),
            synchronous_standby_names: String::new(),
            sync_standbys: Vec::new(),
            released_writes: 0,
            warning: None,
        };
        if on && !streaming.is_empty() {
            steps::require_synchronous(
                &*node,
                &primary,
                app_name,
                std::time::Duration::from_secs(30),
            )
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
            while waiting(node.clone()).await > 0 && Instant::now() < until {
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
}
