//! The operation lock as an etcd lease, when `lock.etcd` is configured
//! (DESIGN.md "More than two nodes"); it then takes the place of the lock
//! the daemons agree on through their APIs (`ops/lock.rs`).
//!
//! Taking it: grant a lease of `lock.etcd.ttl`, then one transaction
//! "create `<prefix>/<cluster>/lock` if absent" with that lease and the
//! value `{holder, operation_id}`. The key's create revision is the
//! fencing token: journaled in the operation (facts `lock_token`,
//! `etcd_lease`) and checked before every step by a linearizable read
//! that must still show our token, our operation and our lease. A lease
//! that expired, was revoked, or a key that another daemon created since,
//! fails the step before it acts. The holder renews the lease every third
//! of its TTL while the operation is open; a daemon that dies stops
//! renewing, so after one TTL the key is gone and another daemon can take
//! it, with a larger token: the dead holder's resume then finds a token
//! that no longer matches and is refused.
//!
//! etcd is reached through its v3 JSON gateway (`/v3/kv/txn`,
//! `/v3/lease/grant`, ...) over reqwest, behind the small [`EtcdApi`]
//! trait so the rules here run against a fake in unit tests. Plain
//! http:// only: TLS and authentication to etcd are not supported yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pgwarden_core::config::lock::EtcdLockConfig;
use pgwarden_core::operation::Operation;
use pgwarden_core::preflight::{Check, Verdict};
use serde::{Deserialize, Serialize};

use super::{OpError, Operations};

/// A failed call to etcd. `unreachable`: no endpoint accepted a connection.
#[derive(Clone, Debug)]
pub struct EtcdError {
    pub message: String,
    pub unreachable: bool,
}

/// The lock key as etcd has it.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub lease: i64,
}

/// The answer to "create the key if absent".
#[derive(Clone, Debug, PartialEq)]
pub enum Created {
    /// Created at this revision (the fencing token).
    At(i64),
    /// The key exists: who holds it.
    Held(KeyValue),
}

/// The few calls of etcd's v3 API the lock needs.
#[async_trait::async_trait]
pub trait EtcdApi: Send + Sync {
    /// A new lease of `ttl_s` seconds; its id.
    async fn grant(&self, ttl_s: i64) -> Result<i64, EtcdError>;
    /// Creates `key` = `value` attached to `lease` unless the key exists.
    async fn create(&self, key: &str, value: &[u8], lease: i64) -> Result<Created, EtcdError>;
    /// The key, read linearizably (a member cut off from the quorum errs).
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError>;
    /// Renews `lease`; its remaining TTL in seconds, 0 when it is gone.
    async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError>;
    async fn revoke(&self, lease: i64) -> Result<(), EtcdError>;
    /// Deletes `key` if its create revision is still `token`.
    async fn delete_if(&self, key: &str, token: i64) -> Result<(), EtcdError>;
}

/// Why a check did not find the lock held.
enum Lost {
    /// etcd did not answer: held or not is unknown.
    Unknown(String),
    /// Not held: gone, or another token.
    Gone(String),
}

/// What the lock key holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockValue {
    pub holder: String,
    pub operation_id: String,
}

/// What an operation journals about its etcd lock (facts `lock_token`,
/// `etcd_lease`, `etcd_lock`).
#[derive(Clone, Debug)]
pub struct LockFacts {
    /// The key's create revision: the fencing token.
    pub token: i64,
    pub lease: i64,
    /// How it was taken, for the operator.
    pub note: String,
}

impl LockFacts {
    pub fn record(self, facts: &mut pgwarden_core::operation::Facts) {
        facts.lock_token = Some(self.token);
        facts.etcd_lease = Some(self.lease);
        facts.etcd_lock = Some(self.note);
    }
}

/// The etcd lock of one daemon.
pub struct EtcdLock {
    api: Arc<dyn EtcdApi>,
    key: String,
    ttl: Duration,
    endpoints: String,
    holder: String,
    /// Why the lease of an operation is lost for good (a renewal found it
    /// gone), by operation id. A std Mutex: never held across an await.
    lost: std::sync::Mutex<HashMap<String, String>>,
}

impl EtcdLock {
    pub fn new(config: &EtcdLockConfig, cluster: &str, holder: &str) -> EtcdLock {
        EtcdLock::with_api(
            Arc::new(EtcdGateway::new(config.endpoints.clone())),
            config,
            cluster,
            holder,
        )
    }

    pub fn with_api(
        api: Arc<dyn EtcdApi>,
        config: &EtcdLockConfig,
        cluster: &str,
        holder: &str,
    ) -> EtcdLock {
        EtcdLock {
            api,
            key: config.lock_key(cluster),
            ttl: config.ttl,
            endpoints: config.endpoints.join(", "),
            holder: holder.to_owned(),
            lost: Default::default(),
        }
    }

    /// How often an open operation's lease is renewed.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    fn unavailable(&self, e: &EtcdError) -> OpError {
        OpError::Unavailable(self.unavailable_message(e))
    }

    fn unavailable_message(&self, e: &EtcdError) -> String {
        format!(
            "the operation lock is in etcd ({}), which {}: {}; operations are refused until it answers (monitoring goes on)",
            self.endpoints,
            if e.unreachable {
                "does not answer"
            } else {
                "answered with an error"
            },
            e.message
        )
    }

    fn describe(&self, kv: &KeyValue) -> String {
        match serde_json::from_slice::<LockValue>(&kv.value) {
            Ok(v) => format!(
                "operation {} of the daemon beside {} (token {})",
                v.operation_id, v.holder, kv.create_revision
            ),
            Err(_) => format!(
                "a value pgwarden did not write (token {})",
                kv.create_revision
            ),
        }
    }

    /// Before preflight: is the lock free? Refuses early when etcd does not
    /// answer (503) or another operation holds the key (409).
    pub async fn ensure_free(&self) -> Result<(), OpError> {
        match self.api.get(&self.key).await {
            Ok(None) => Ok(()),
            Ok(Some(kv)) => Err(OpError::Conflict(self.held_message(&kv))),
            Err(e) => Err(self.unavailable(&e)),
        }
    }

    fn held_message(&self, kv: &KeyValue) -> String {
        format!(
            "the etcd lock {} is held by {}; wait for it, or resume/abort it there",
            self.key,
            self.describe(kv)
        )
    }

    /// The preflight check `etcd_lock`: whether the lock could be taken
    /// now, so a dry run says what the real request would meet.
    pub async fn preflight_check(&self) -> Check {
        let (verdict, message) = match self.api.get(&self.key).await {
            Ok(None) => (
                Verdict::Pass,
                format!(
                    "the etcd lock {} is free (etcd {})",
                    self.key, self.endpoints
                ),
            ),
            Ok(Some(kv)) => (Verdict::Fail, self.held_message(&kv)),
            Err(e) => (Verdict::Fail, self.unavailable_message(&e)),
        };
        Check {
            name: "etcd_lock",
            verdict,
            message,
            forceable: false,
        }
    }

    /// Takes the lock for `operation_id`: the facts to journal with it.
    pub async fn take(&self, operation_id: &str) -> Result<LockFacts, OpError> {
        let ttl_s = self.ttl.as_secs().max(1) as i64;
        let lease = self
            .api
            .grant(ttl_s)
            .await
            .map_err(|e| self.unavailable(&e))?;
        let value = serde_json::to_vec(&LockValue {
            holder: self.holder.clone(),
            operation_id: operation_id.to_owned(),
        })
        .expect("a lock value serializes");
        match self.api.create(&self.key, &value, lease).await {
            Ok(Created::At(token)) => Ok(LockFacts {
                token,
                lease,
                note: format!(
                    "{} created at revision {token} (the fencing token) with lease {lease:x} of {ttl_s}s, in etcd {}",
                    self.key, self.endpoints
                ),
            }),
            Ok(Created::Held(kv)) => {
                self.revoke_quietly(lease).await;
                Err(OpError::Conflict(format!(
                    "the etcd lock {} is held by {}",
                    self.key,
                    self.describe(&kv)
                )))
            }
            Err(e) => {
                // The create may have happened: the lease going away takes
                // the key with it.
                self.revoke_quietly(lease).await;
                Err(self.unavailable(&e))
            }
        }
    }

    async fn revoke_quietly(&self, lease: i64) {
        if let Err(e) = self.api.revoke(lease).await {
            tracing::warn!(
                "could not revoke etcd lease {lease:x} (it expires after its TTL): {}",
                e.message
            );
        }
    }

    /// Whether `op` still holds the lock it journaled, read from etcd now.
    /// Anything but "yes, our token, our operation, our lease" stops.
    pub async fn check(&self, op: &Operation) -> Result<(), String> {
        self.verify(op).await.map_err(|l| match l {
            Lost::Unknown(m) | Lost::Gone(m) => m,
        })
    }

    async fn verify(&self, op: &Operation) -> Result<(), Lost> {
        let (Some(token), Some(lease)) = (op.facts.lock_token, op.facts.etcd_lease) else {
            return Err(Lost::Gone(format!(
                "operation {} journaled no etcd lock token, so it may not act while the lock is in etcd",
                op.id
            )));
        };
        // A renewal that found the lease gone is final; the key still says
        // who holds the lock now.
        let lost = self.lost_reason(&op.id).map(|why| {
            Lost::Gone(format!(
                "the etcd lock (token {token}) was lost: {why}; this step did not run"
            ))
        });
        let kv = match self.api.get(&self.key).await {
            Ok(kv) => kv,
            Err(e) => {
                return Err(lost.unwrap_or_else(|| Lost::Unknown(format!(
                    "cannot read the etcd lock {} at {}: {}; whether this operation still holds it is unknown, so this step did not run",
                    self.key, self.endpoints, e.message
                ))))
            }
        };
        let mine = LockValue {
            holder: self.holder.clone(),
            operation_id: op.id.clone(),
        };
        match kv {
            None => Err(Lost::Gone(format!(
                "the etcd lock {} of this operation (token {token}) is gone: its lease expired or was revoked; this step did not run",
                self.key
            ))),
            Some(kv)
                if kv.create_revision == token
                    && kv.lease == lease
                    && serde_json::from_slice::<LockValue>(&kv.value).ok() == Some(mine) =>
            {
                lost.map_or(Ok(()), Err)
            }
            Some(kv) => Err(Lost::Gone(format!(
                "the etcd lock {} no longer carries this operation's token {token}: it is held by {}; this step did not run",
                self.key,
                self.describe(&kv)
            ))),
        }
    }

    fn lost_reason(&self, id: &str) -> Option<String> {
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Renews `op`'s lease. A lease found gone is lost for good; an etcd
    /// that does not answer decides nothing (the check before the next step
    /// reads the key and stops then).
    pub async fn renew(&self, op: &Operation) {
        let Some(lease) = op.facts.etcd_lease else {
            return;
        };
        match self.api.keep_alive(lease).await {
            Ok(ttl) if ttl > 0 => {}
            Ok(_) => {
                let why = format!("its lease {lease:x} expired or was revoked in etcd");
                tracing::error!(operation = %op.id, "the etcd lock was lost: {why}");
                self.lost
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(op.id.clone(), why);
            }
            Err(e) => {
                tracing::warn!(operation = %op.id, "could not renew the etcd lease: {}", e.message)
            }
        }
    }

    /// Before a resume: the journaled token must still hold, and its lease
    /// live. A token that no longer matches means another operation may
    /// have run meanwhile: the resume is refused, not re-locked.
    pub async fn resume(&self, op: &Operation) -> Result<(), OpError> {
        let refused = |why: String| {
            OpError::Conflict(format!(
                "not resumed: {why}. Another daemon may have run an operation since: abort this one and start anew"
            ))
        };
        match self.verify(op).await {
            Ok(()) => {}
            Err(Lost::Unknown(m)) => return Err(OpError::Unavailable(m)),
            Err(Lost::Gone(m)) => return Err(refused(m)),
        }
        match self.api.keep_alive(op.facts.etcd_lease.unwrap_or(0)).await {
            Ok(ttl) if ttl > 0 => Ok(()),
            Ok(_) => Err(refused(format!(
                "the etcd lease of this operation's lock (token {}) expired",
                op.facts
                    .lock_token
                    .map_or_else(|| "?".into(), |t| t.to_string())
            ))),
            Err(e) => Err(self.unavailable(&e)),
        }
    }

    /// Gives the lock back: deletes the key if it still carries our token,
    /// and revokes the lease. Best effort: the TTL ends it anyway.
    pub async fn release(&self, op: &Operation) {
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&op.id);
        if let Some(token) = op.facts.lock_token {
            if let Err(e) = self.api.delete_if(&self.key, token).await {
                tracing::warn!(operation = %op.id, "could not delete the etcd lock key (its lease ends it): {}", e.message);
            }
        }
        if let Some(lease) = op.facts.etcd_lease {
            self.revoke_quietly(lease).await;
        }
    }
}

impl Operations {
    pub(super) fn etcd(&self) -> Option<&EtcdLock> {
        self.etcd.as_ref()
    }

    /// The check before every step: the lease at the peers, or the etcd lock.
    pub(super) async fn check_lock(&self, op: &Operation) -> Result<(), String> {
        match self.etcd() {
            Some(etcd) => etcd.check(op).await,
            None => self.lease().check(&op.id, std::time::Instant::now()),
        }
    }
}

/// etcd's v3 JSON gateway over HTTP, trying each endpoint in turn.
pub struct EtcdGateway {
    endpoints: Vec<String>,
    http: reqwest::Client,
    /// The endpoint that answered last, tried first: a dead member in
    /// front of the list then costs one connect timeout once, not at
    /// every renewal.
    last_good: std::sync::atomic::AtomicUsize,
}

/// One etcd call's budget: well under the TTL, so a renewal that hangs
/// still leaves time for the next one.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

fn num(v: &serde_json::Value) -> i64 {
    // int64 fields come as JSON strings; absent means 0.
    match v {
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        v => v.as_i64().unwrap_or(0),
    }
}

fn key_value(kv: &serde_json::Value) -> Result<KeyValue, EtcdError> {
    let value = B64
        .decode(kv["value"].as_str().unwrap_or(""))
        .map_err(|e| EtcdError {
            message: format!("etcd sent a value that is not base64: {e}"),
            unreachable: false,
        })?;
    Ok(KeyValue {
        value,
        create_revision: num(&kv["create_revision"]),
        lease: num(&kv["lease"]),
    })
}

impl EtcdGateway {
    pub fn new(endpoints: Vec<String>) -> EtcdGateway {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("the HTTP client builds");
        EtcdGateway {
            endpoints,
            http,
            last_good: Default::default(),
        }
    }

    /// POSTs `body` to `path` at the first endpoint that takes the
    /// connection. Only a refused or timed-out connection moves on to the
    /// next endpoint: a request that was sent may have been applied.
    async fn call(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, EtcdError> {
        let mut failures = Vec::new();
        let first = self.last_good.load(std::sync::atomic::Ordering::Relaxed);
        let n = self.endpoints.len();
        for (i, ep) in (0..n).map(|k| ((first + k) % n, &self.endpoints[(first + k) % n])) {
            let url = format!("{}{path}", ep.trim_end_matches('/'));
            let r = match self.http.post(&url).json(&body).send().await {
                Ok(r) => r,
                Err(e) if e.is_connect() => {
                    failures.push(format!("{ep}: {e}"));
                    continue;
                }
                Err(e) => {
                    return Err(EtcdError {
                        message: format!("{url}: {e}"),
                        unreachable: false,
                    })
                }
            };
            self.last_good
                .store(i, std::sync::atomic::Ordering::Relaxed);
            let status = r.status();
            let v: serde_json::Value = r.json().await.map_err(|e| EtcdError {
                message: format!("{url}: answered {status} with an unreadable body: {e}"),
                unreachable: false,
            })?;
            if !status.is_success() || v.get("error").is_some() {
                return Err(EtcdError {
                    message: format!(
                        "{url}: {status} {}",
                        v["message"].as_str().unwrap_or("(no message)")
                    ),
                    unreachable: false,
                });
            }
            return Ok(v);
        }
        Err(EtcdError {
            message: format!(
                "no endpoint accepted a connection ({})",
                failures.join("; ")
            ),
            unreachable: true,
        })
    }
}

#[async_trait::async_trait]
impl EtcdApi for EtcdGateway {
    async fn grant(&self, ttl_s: i64) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/lease/grant", serde_json::json!({"TTL": ttl_s}))
            .await?;
        match num(&v["ID"]) {
            0 => Err(EtcdError {
                message: format!("etcd granted no lease: {v}"),
                unreachable: false,
            }),
            id => Ok(id),
        }
    }

    async fn create(&self, key: &str, value: &[u8], lease: i64) -> Result<Created, EtcdError> {
        let k = B64.encode(key);
        let v = self
            .call(
                "/v3/kv/txn",
                serde_json::json!({
                    "compare": [{"target": "CREATE", "key": k, "create_revision": "0"}],
                    "success": [{"request_put": {"key": k, "value": B64.encode(value), "lease": lease.to_string()}}],
                    "failure": [{"request_range": {"key": k}}],
                }),
            )
            .await?;
        if v["succeeded"].as_bool() == Some(true) {
            return Ok(Created::At(num(&v["header"]["revision"])));
        }
        match v["responses"][0]["response_range"]["kvs"].get(0) {
            Some(kv) => Ok(Created::Held(key_value(kv)?)),
            // Gone between the compare and the range: impossible in one
            // transaction, so an answer we do not understand.
            None => Err(EtcdError {
                message: format!("etcd answered the lock transaction oddly: {v}"),
                unreachable: false,
            }),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let v = self
            .call("/v3/kv/range", serde_json::json!({"key": B64.encode(key)}))
            .await?;
        v["kvs"].get(0).map(key_value).transpose()
    }

    async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        let v = self
            .call(
                "/v3/lease/keepalive",
                serde_json::json!({"ID": lease.to_string()}),
            )
            .await?;
        Ok(num(&v["result"]["TTL"]))
    }

    async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call(
            "/v3/lease/revoke",
            serde_json::json!({"ID": lease.to_string()}),
        )
        .await
        .map(|_| ())
    }

    async fn delete_if(&self, key: &str, token: i64) -> Result<(), EtcdError> {
        let k = B64.encode(key);
        self.call(
            "/v3/kv/txn",
            serde_json::json!({
                "compare": [{"target": "CREATE", "key": k, "create_revision": token.to_string()}],
                "success": [{"request_delete_range": {"key": k}}],
            }),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_core::operation::{OperationKind, Request};
    use std::sync::Mutex;

    /// etcd as the lock sees it: one key, leases, a revision counter.
    #[derive(Default)]
    struct FakeEtcd {
        state: Mutex<FakeState>,
    }

    #[derive(Default)]
    struct FakeState {
        revision: i64,
        leases: std::collections::BTreeSet<i64>,
        key: Option<KeyValue>,
        down: bool,
    }

    impl FakeEtcd {
        fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> Result<T, EtcdError> {
            let mut s = self.state.lock().unwrap();
            if s.down {
                return Err(EtcdError {
                    message: "connection refused".into(),
                    unreachable: true,
                });
            }
            Ok(f(&mut s))
        }

        /// What `etcdctl lease revoke` (or the TTL running out) does.
        fn expire(&self, lease: i64) {
            let mut s = self.state.lock().unwrap();
            s.leases.remove(&lease);
            if s.key.as_ref().is_some_and(|k| k.lease == lease) {
                s.key = None;
                s.revision += 1;
            }
        }
    }

    #[async_trait::async_trait]
    impl EtcdApi for FakeEtcd {
        async fn grant(&self, _ttl_s: i64) -> Result<i64, EtcdError> {
            self.with(|s| {
                s.revision += 1;
                let id = 0x1000 + s.revision;
                s.leases.insert(id);
                id
            })
        }
        async fn create(&self, _key: &str, value: &[u8], lease: i64) -> Result<Created, EtcdError> {
            self.with(|s| match &s.key {
                Some(kv) => Created::Held(kv.clone()),
                None => {
                    s.revision += 1;
                    s.key = Some(KeyValue {
                        value: value.to_vec(),
                        create_revision: s.revision,
                        lease,
                    });
                    Created::At(s.revision)
                }
            })
        }
        async fn get(&self, _key: &str) -> Result<Option<KeyValue>, EtcdError> {
            self.with(|s| s.key.clone())
        }
        async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
            self.with(|s| if s.leases.contains(&lease) { 10 } else { 0 })
        }
        async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
            self.with(|_| ())?;
            self.expire(lease);
            Ok(())
        }
        async fn delete_if(&self, _key: &str, token: i64) -> Result<(), EtcdError> {
            self.with(|s| {
                if s.key.as_ref().is_some_and(|k| k.create_revision == token) {
                    s.key = None;
                }
            })
        }
    }

    fn config() -> EtcdLockConfig {
        EtcdLockConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/pgwarden".into(),
            ttl: Duration::from_secs(6),
        }
    }

    fn lock(api: &Arc<FakeEtcd>, holder: &str) -> EtcdLock {
        EtcdLock::with_api(api.clone(), &config(), "demo", holder)
    }

    async fn taken(l: &EtcdLock, id: &str) -> Operation {
        let mut op = Operation::new(
            id.into(),
            OperationKind::Switchover,
            Request {
                target: "pg-b".into(),
                reason: String::new(),
                force: false,
                fenced_hosts: Vec::new(),
            },
            "t",
        );
        l.take(id)
            .await
            .expect("the lock is free")
            .record(&mut op.facts);
        op
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_its_token_is_checked() {
        let etcd = Arc::new(FakeEtcd::default());
        let (a, b) = (lock(&etcd, "pg-a"), lock(&etcd, "pg-b"));
        assert_eq!(a.key, "/pgwarden/demo/lock");
        assert_eq!(a.renew_every(), Duration::from_secs(2));
        let op = taken(&a, "op-1").await;
        let token: i64 = op.facts.lock_token.unwrap();
        assert!(a.check(&op).await.is_ok());
        assert!(a.resume(&op).await.is_ok(), "still held: resumable");

        let Err(OpError::Conflict(m)) = b.take("op-2").await else {
            panic!("a second holder")
        };
        assert!(
            m.contains("operation op-1 of the daemon beside pg-a"),
            "{m}"
        );
        let Err(OpError::Conflict(m)) = b.ensure_free().await else {
            panic!("held")
        };
        assert!(m.contains(&format!("token {token}")), "{m}");
        let check = b.preflight_check().await;
        assert_eq!((check.name, check.verdict), ("etcd_lock", Verdict::Fail));
        assert!(check.message.contains("op-1"), "{}", check.message);

        // The lease lapses (the holder died, or someone revoked it).
        etcd.expire(op.facts.etcd_lease.unwrap());
        let e = a.check(&op).await.unwrap_err();
        assert!(e.contains("is gone") && e.contains("did not run"), "{e}");
        let other = taken(&b, "op-2").await;
        assert!(other.facts.lock_token.unwrap() > token);
        let e = a.check(&op).await.unwrap_err();
        assert!(
            e.contains(&format!("token {token}")) && e.contains("op-2 of the daemon beside pg-b"),
            "{e}"
        );
        let Err(OpError::Conflict(m)) = a.resume(&op).await else {
            panic!("the old token resumed")
        };
        assert!(m.starts_with("not resumed") && m.contains("abort"), "{m}");

        // The old holder's release does not delete the new holder's key.
        a.release(&op).await;
        assert!(b.check(&other).await.is_ok());
        b.release(&other).await;
        assert!(a.ensure_free().await.is_ok());
        assert_eq!(a.preflight_check().await.verdict, Verdict::Pass);
    }

    #[tokio::test]
    async fn a_lease_found_gone_at_renewal_is_lost_for_good() {
        let etcd = Arc::new(FakeEtcd::default());
        let a = lock(&etcd, "pg-a");
        let op = taken(&a, "op-1").await;
        a.renew(&op).await;
        assert!(a.check(&op).await.is_ok());
        etcd.state.lock().unwrap().leases.clear();
        a.renew(&op).await;
        let e = a.check(&op).await.unwrap_err();
        assert!(
            e.contains("was lost") && e.contains("expired or was revoked"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn etcd_down_refuses_and_stops_with_the_endpoints() {
        let etcd = Arc::new(FakeEtcd::default());
        let a = lock(&etcd, "pg-a");
        let op = taken(&a, "op-1").await;
        etcd.state.lock().unwrap().down = true;
        let e = a.check(&op).await.unwrap_err();
        assert!(
            e.contains("unknown") && e.contains("http://127.0.0.1:2379"),
            "{e}"
        );
        a.renew(&op).await;
        let Err(OpError::Unavailable(m)) = a.take("op-2").await else {
            panic!("taken with etcd down")
        };
        assert!(
            m.contains("http://127.0.0.1:2379") && m.contains("does not answer"),
            "{m}"
        );
        assert!(matches!(
            a.ensure_free().await,
            Err(OpError::Unavailable(_))
        ));
        assert!(matches!(a.resume(&op).await, Err(OpError::Unavailable(_))));
        etcd.state.lock().unwrap().down = false;
        assert!(
            a.check(&op).await.is_ok(),
            "a failed renewal alone loses nothing"
        );
    }

    /// A port nothing listens on (bound, then closed).
    fn dead_endpoint() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }

    #[tokio::test]
    async fn the_gateway_skips_a_dead_endpoint_and_says_when_none_answers() {
        // A one-answer stand-in for etcd's gateway: enough to see which
        // endpoint was used and how the answer is read.
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", live.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut c, _) = live.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let body = r#"{"header":{"revision":"9"},"kvs":[{"key":"eA==","create_revision":"7","value":"e30=","lease":"42"}],"count":"1"}"#;
                let _ = c
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let g = EtcdGateway::new(vec![dead_endpoint(), url]);
        let kv = g.get("x").await.unwrap().unwrap();
        assert_eq!(
            (kv.create_revision, kv.lease, kv.value),
            (7, 42, b"{}".to_vec())
        );
        assert_eq!(g.last_good.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(g.get("x").await.is_ok(), "the live one first now");

        let dead = EtcdGateway::new(vec![dead_endpoint(), dead_endpoint()]);
        let e = dead.get("x").await.unwrap_err();
        assert!(
            e.unreachable && e.message.contains("no endpoint accepted"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn an_operation_without_a_token_may_not_act() {
        let etcd = Arc::new(FakeEtcd::default());
        let a = lock(&etcd, "pg-a");
        let mut op = taken(&a, "op-1").await;
        op.facts.lock_token = None;
        assert!(a
            .check(&op)
            .await
            .unwrap_err()
            .contains("no etcd lock token"));
    }
}
