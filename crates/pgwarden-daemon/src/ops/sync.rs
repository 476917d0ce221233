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
        // With the lock in etcd, another daemon's operation shows there only;
        // an etcd that does not answer may hide one, so it refuses too.
        if let Some(etcd) = self.etcd() {
            etcd.ensure_free().await?;
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

#[cfg(test)]
mod tests {
    //! `PUT /v1/sync` in the fake world: every fault of every effect it
    //! calls gives an error, never an answer that claims the change.

    use std::time::Instant;

    use pgwarden_core::Config;
    use tokio::sync::watch;

    use super::*;
    use crate::effects::fake::{FakeWorld, Fault, CONFIG};
    use crate::poller::Published;

    /// pg-b's daemon in a healthy world, the primary pg-a synchronous.
    fn operations(world: &Arc<FakeWorld>, dir: &std::path::Path) -> Arc<Operations> {
        let text = CONFIG.replace("/tmp/pgwarden-fake", &dir.display().to_string());
        let config = Arc::new(Config::parse_str("fake.yaml", &text).unwrap());
        let metrics = Arc::new(crate::metrics::Metrics::new(&config));
        let published = Arc::new(Published {
            view: Arc::new(world.view()),
            metrics: Default::default(),
            loop_at: Instant::now(),
            polls_started: Vec::new(),
        });
        let (_tx, rx) = watch::channel(published);
        std::mem::forget(_tx);
        let (current, _) = watch::channel(None);
        let (ops, _) = Operations::open(
            config,
            world.clone(),
            rx,
            metrics,
            current,
            Default::default(),
            Default::default(),
        )
        .unwrap();
        ops
    }

    #[tokio::test(start_paused = true)]
    async fn every_fault_of_every_effect_of_a_sync_change_is_an_error() {
        for on in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let world = FakeWorld::new(Config::parse_str("fake.yaml", CONFIG).unwrap());
            let ops = operations(&world, dir.path());
            let before = world.call_count();
            let answer = ops.set_sync(on, false, &[]).await;
            assert!(answer.is_ok(), "on={on}: {answer:?}");
            let calls = world.called_since(before);
            assert!(!calls.is_empty());
            for (effect, at) in calls {
                // Only sizes the warning of "async": unknown counts as none.
                if effect == "sync_rep_waiters" {
                    continue;
                }
                // "sync" with a silent peer is safe: commits only wait more.
                if on && effect == "daemon_answers" {
                    continue;
                }
                for fault in Fault::ALL {
                    let dir = tempfile::tempdir().unwrap();
                    let world = FakeWorld::new(Config::parse_str("fake.yaml", CONFIG).unwrap());
                    let ops = operations(&world, dir.path());
                    world.fault(&effect, &at, fault);
                    let answer = ops.set_sync(on, false, &[]).await;
                    assert!(
                        answer.is_err(),
                        "sync on={on} claimed success with {fault:?} on {effect} {at}: {answer:?}"
                    );
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn going_async_with_a_silent_peer_needs_its_host_confirmed_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let world = FakeWorld::new(Config::parse_str("fake.yaml", CONFIG).unwrap());
        world.with(|w| w.hosts.get_mut("pg-a").unwrap().daemon_up = false);
        let ops = operations(&world, dir.path());
        let refused = ops.set_sync(false, false, &[]).await.unwrap_err();
        assert!(refused.to_string().contains("fenced_hosts"), "{refused}");
        let done = ops.set_sync(false, false, &["pg-a".into()]).await.unwrap();
        assert_eq!(done.synchronous_standby_names, "");
    }
}
