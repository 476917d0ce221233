//! The operation lock between the daemons, as leases.
//!
//! An operation open in a daemon's journal holds the lock there. The daemon
//! also asks every peer daemon that answers to hold it (`POST
//! /v1/internal/lock`): the peer writes a lock file in its state_dir with an
//! expiry, and refuses its own operations (and `PUT /v1/sync`) until the
//! lock is released or expires. The holder renews the lease every third of
//! [`LEASE_TTL`] while the operation is open, so a holder that dies blocks
//! the other daemon for one TTL, not forever.
//!
//! Before every step the holder checks its lease ([`Lease::check`]): a peer
//! that granted it and was not re-confirmed within two thirds of the TTL
//! may have let it expire and started something of its own, so the step
//! does not run. A peer that refuses a renewal (it holds another
//! operation's lock) makes the lease lost for good. A peer that could not
//! be reached at all never held the lock ("not shared"): that is the
//! failover case of a dead host, which the confirmation rules guard.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{now, OpError, Operations};
use crate::effects::fsutil;

/// How long a peer holds a lock that is not renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// The lock file a peer's operation leaves in our state_dir.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerLock {
    pub holder: String,
    pub operation_id: String,
    pub since: String,
    /// Unix time in ms after which the lock no longer holds (0: a lock
    /// file of a version without leases, which holds until released).
    #[serde(default)]
    pub expires_at_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl PeerLock {
    pub fn new(holder: &str, operation_id: &str, since: String, ttl: Duration) -> PeerLock {
        PeerLock {
            holder: holder.to_owned(),
            operation_id: operation_id.to_owned(),
            since,
            expires_at_ms: now_ms() + ttl.as_millis() as u64,
        }
    }

    pub fn expired(&self) -> bool {
        self.expires_at_ms != 0 && now_ms() >= self.expires_at_ms
    }
}

/// The lock file in this daemon's state_dir.
pub struct LockFile {
    pub path: PathBuf,
}

impl LockFile {
    /// The lock a peer holds here, if any and not expired.
    pub fn read(&self) -> Option<PeerLock> {
        let text = std::fs::read(&self.path).ok()?;
        let lock: PeerLock = serde_json::from_slice(&text).ok()?;
        (!lock.expired()).then_some(lock)
    }

    /// The lock file as it is, expired or not (to say what expired).
    pub fn read_any(&self) -> Option<PeerLock> {
        serde_json::from_slice(&std::fs::read(&self.path).ok()?).ok()
    }

    pub fn write(&self, lock: &PeerLock) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(lock).expect("a lock serializes");
        fsutil::write_atomic(&self.path, &bytes, 0o600)
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The holder's side: which peers confirmed the lease of the open
/// operation, and when last.
#[derive(Debug, Default)]
pub struct Lease {
    operation_id: Option<String>,
    confirmed: HashMap<String, Instant>,
    lost: Option<String>,
}

impl Lease {
    /// Starts afresh for `operation_id` (a new operation, or a resume).
    pub fn begin(&mut self, operation_id: &str) {
        *self = Lease {
            operation_id: Some(operation_id.to_owned()),
            ..Lease::default()
        };
    }

    pub fn operation_id(&self) -> Option<&str> {
        self.operation_id.as_deref()
    }

    pub fn end(&mut self) {
        *self = Lease::default();
    }

    pub fn confirmed(&mut self, operation_id: &str, peer: &str, at: Instant) {
        if self.operation_id.as_deref() == Some(operation_id) {
            self.confirmed.insert(peer.to_owned(), at);
        }
    }

    pub fn lost(&mut self, operation_id: &str, why: String) {
        if self.operation_id.as_deref() == Some(operation_id) && self.lost.is_none() {
            self.lost = Some(why);
        }
    }

    /// Whether the next step of `operation_id` may act.
    pub fn check(&self, operation_id: &str, now: Instant) -> Result<(), String> {
        if self.operation_id.as_deref() != Some(operation_id) {
            return Ok(());
        }
        if let Some(why) = &self.lost {
            return Err(format!("the operation lock was lost: {why}"));
        }
        let fresh = LEASE_TTL * 2 / 3;
        for (peer, at) in &self.confirmed {
            let age = now.saturating_duration_since(*at);
            if age > fresh {
                return Err(format!(
                    "the lock lease held by the daemon beside {peer} was last renewed {}s ago (it expires there after {}s): \
                     that daemon may have started an operation of its own, so this step did not run; resume once it answers",
                    age.as_secs(),
                    LEASE_TTL.as_secs()
                ));
            }
        }
        Ok(())
    }
}

impl Operations {
    pub(super) fn peer_lock(&self) -> Option<PeerLock> {
        self.peer_lock.read()
    }

    pub(super) fn lease(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renews the lease of the open operation at every peer, every third of
    /// its TTL, until `stop` flips: also after a restart, for an operation
    /// found interrupted, which still holds the lock until resumed or aborted.
    pub async fn keep_lease(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = self.etcd().map_or(LEASE_TTL / 3, |e| e.renew_every());
        // A daemon restarted with an operation open renews its etcd lease at
        // once: the lease may have only a fraction of its TTL left.
        if let (Some(etcd), Some(op)) = (self.etcd(), self.open_operation()) {
            etcd.renew(&op).await;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(op) = self.open_operation() else {
                continue;
            };
            if let Some(etcd) = self.etcd() {
                etcd.renew(&op).await;
                continue;
            }
            if self.lease().operation_id() != Some(op.id.as_str()) {
                self.lease().begin(&op.id);
            }
            // A renewal never fails the operation by itself: the check
            // before the next step decides.
            let _ = self.lock_peers(&op.id, false).await;
        }
    }

    /// Asks every peer daemon to hold (or keep holding) the lock of `id`.
    /// Only a connection that cannot be made means "unreachable" (the lock
    /// is then not shared with it); any other failure (a refusal, an
    /// authentication error, a timeout after the request was sent, an
    /// answer that cannot be read) refuses, since that daemon may be
    /// holding or doing something we cannot see.
    pub(super) async fn lock_peers(&self, id: &str, first: bool) -> Result<String, OpError> {
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

    pub(super) async fn unlock_peer(&self, node: &str, id: &str) {
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

    pub(super) async fn unlock_peers(&self, id: &str) {
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
    pub(super) async fn clear_stale_peer_lock(&self) {
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
        // A peer that asks is configured without lock.etcd: granting would
        // let it act beside an operation that only etcd knows of.
        if self.etcd().is_some() {
            return Err(OpError::Conflict(format!(
                "this daemon keeps the operation lock in etcd (lock.etcd) and {holder} asked for it through the API: give every daemon the same `lock` section"
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_while_renewed_and_not_after() {
        let t0 = Instant::now();
        let mut l = Lease::default();
        l.begin("op-1");
        assert!(
            l.check("op-1", t0).is_ok(),
            "no peer confirmed: nothing to lapse"
        );
        l.confirmed("op-1", "pg-a", t0);
        assert!(l.check("op-1", t0 + LEASE_TTL / 3).is_ok());
        let e = l.check("op-1", t0 + LEASE_TTL).unwrap_err();
        assert!(e.contains("last renewed 15s ago"), "{e}");
        l.confirmed("op-1", "pg-a", t0 + LEASE_TTL);
        assert!(l.check("op-1", t0 + LEASE_TTL).is_ok(), "renewed");
        l.confirmed("op-2", "pg-a", t0);
        l.lost("op-1", "pg-a holds the lock of op-9".into());
        assert!(l
            .check("op-1", t0 + LEASE_TTL)
            .unwrap_err()
            .contains("op-9"));
        assert!(
            l.check("op-3", t0).is_ok(),
            "another operation's lease says nothing"
        );
    }

    #[test]
    fn an_expired_lock_file_does_not_hold() {
        let d = tempfile::tempdir().unwrap();
        let f = LockFile {
            path: d.path().join("lock.json"),
        };
        f.write(&PeerLock::new(
            "pg-b",
            "op-1",
            "t".into(),
            Duration::from_secs(60),
        ))
        .unwrap();
        assert_eq!(f.read().unwrap().operation_id, "op-1");
        f.write(&PeerLock::new("pg-b", "op-1", "t".into(), Duration::ZERO))
            .unwrap();
        assert_eq!(f.read(), None);
        assert_eq!(f.read_any().unwrap().operation_id, "op-1");
        let legacy = r#"{"holder":"pg-b","operation_id":"op-0","since":"t"}"#;
        std::fs::write(&f.path, legacy).unwrap();
        assert_eq!(f.read().unwrap().operation_id, "op-0", "no expiry: holds");
    }
}
