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
//! etcd is reached over its gRPC API with the `etcd-client` crate
//! ([`EtcdGrpc`]: TLS with a CA, a client certificate, etcd users), every
//! call bounded by [`call_timeout`], behind the small [`EtcdApi`] trait so
//! the rules here run against a fake in unit tests. An error, a timeout or
//! an answer we do not understand is "unknown": it refuses an operation or
//! stops it, never reads as "the lock is free".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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
    /// Until when each operation's lease is known to live: the instant the
    /// last acknowledged grant or renewal was SENT, plus the TTL, minus
    /// [`EtcdLock::margin`]. etcd starts the TTL when it handles the
    /// request, which is after we sent it, and never shortens a lease (a
    /// new leader extends them), so the lease lives at least that long
    /// unless someone revokes it. Monotonic clock: a wall-clock step does
    /// not move it.
    held: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

impl EtcdLock {
    pub fn new(config: &EtcdLockConfig, cluster: &str, holder: &str) -> EtcdLock {
        EtcdLock::with_api(Arc::new(EtcdGrpc::new(config)), config, cluster, holder)
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
            held: Default::default(),
        }
    }

    /// What [`EtcdLock::held_until`] keeps off the TTL: a quarter of it,
    /// for a slow clock rate on either side and the time to act after.
    fn margin(&self) -> Duration {
        self.ttl / 4
    }

    /// `ttl`: what etcd answered, or (at the grant) what we asked for,
    /// which etcd never lowers.
    fn held_since(&self, id: &str, sent: std::time::Instant, ttl: Duration) {
        let until = sent + ttl.saturating_sub(self.margin());
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), until);
    }

    /// Until when `id`'s lease is known to live without asking etcd.
    pub fn held_until(&self, id: &str) -> Option<std::time::Instant> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
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
                "gave no usable answer"
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
        let sent = std::time::Instant::now();
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
            Ok(Created::At(token)) => {
                self.held_since(operation_id, sent, self.ttl);
                Ok(LockFacts {
                    token,
                    lease,
                    note: format!(
                        "{} created at revision {token} (the fencing token) with lease {lease:x} of {ttl_s}s, in etcd {}, taken in {:.1} ms",
                        self.key, self.endpoints, sent.elapsed().as_secs_f64() * 1000.0
                    ),
                })
            }
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
        let sent = std::time::Instant::now();
        match self.api.keep_alive(lease).await {
            Ok(ttl) if ttl > 0 => self.held_since(&op.id, sent, Duration::from_secs(ttl as u64)),
            Ok(_) => {
                self.held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&op.id);
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
        let sent = std::time::Instant::now();
        match self.api.keep_alive(op.facts.etcd_lease.unwrap_or(0)).await {
            Ok(ttl) if ttl > 0 => {
                self.held_since(&op.id, sent, Duration::from_secs(ttl as u64));
                Ok(())
            }
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
        self.held
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

/// The etcd lock of one running operation, as the effects guard asks it
/// (`effects/guarded.rs`).
pub struct OperationLock {
    pub ops: Arc<Operations>,
    pub op: Operation,
}

#[async_trait::async_trait]
impl crate::effects::guarded::LockCheck for OperationLock {
    async fn check(&self) -> Result<(), String> {
        self.ops.check_lock(&self.op).await
    }
    fn held_until(&self) -> Option<std::time::Instant> {
        self.ops.etcd().and_then(|e| e.held_until(&self.op.id))
    }
}

/// etcd's v3 gRPC API through the `etcd-client` crate: one connection per
/// endpoint (with TLS and authentication as configured), made at its first
/// use and kept; a call that fails drops it, so the next one reconnects and
/// reads the certificate and password files again (a rotated file is
/// picked up). The endpoints are tried in turn from the one that answered
/// last, moving on only when the connection could not be made: a request
/// that was sent may have been applied.
pub struct EtcdGrpc {
    config: EtcdLockConfig,
    timeout: Duration,
    clients: Vec<tokio::sync::Mutex<Option<etcd_client::Client>>>,
    last_good: std::sync::atomic::AtomicUsize,
}

/// One etcd call's budget: under a third of the TTL (the renewal period),
/// at most 2 s, so a renewal that hangs leaves time for the next one and a
/// check before an effect never waits long.
pub fn call_timeout(ttl: Duration) -> Duration {
    (ttl / 3).min(Duration::from_secs(2))
}

fn read_file(name: &str, path: &std::path::Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|e| EtcdError {
        message: format!("cannot read lock.etcd.{name} {}: {e}", path.display()),
        unreachable: false,
    })
}

/// What went wrong, with the causes tonic chains below it and a hint at
/// the setting to look at. The password is never in it: etcd and tonic do
/// not echo it, and we never format it.
fn describe_error(e: &etcd_client::Error) -> (String, bool) {
    use std::error::Error as _;
    let (mut text, unreachable) = match e {
        etcd_client::Error::GRpcStatus(s) => (format!("{:?}: {}", s.code(), s.message()), false),
        etcd_client::Error::TransportError(t) => (t.to_string(), false),
        other => (other.to_string(), false),
    };
    let mut cause = match e {
        etcd_client::Error::GRpcStatus(s) => s.source(),
        etcd_client::Error::TransportError(t) => t.source(),
        _ => None,
    };
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    let lower = text.to_ascii_lowercase();
    // Only a connection that was never made (refused, no route, a failed
    // handshake) or a member that refused for want of a leader is
    // "unreachable": nothing was applied, the next endpoint may be tried.
    // "no leader" is refused before anything is applied, so it counts too.
    let unreachable = unreachable
        || matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Unavailable)
            && (lower.contains("connect error")
                || lower.contains("connection refused")
                || lower.contains("no leader"));
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        text.push_str(" (a TLS failure: check lock.etcd.ca_file, cert_file and key_file against the members' certificates)");
    } else if lower.contains("authentication")
        || lower.contains("permission denied")
        || lower.contains("user name")
    {
        text.push_str(
            " (check lock.etcd.username and password_file, and that user's role on the lock key)",
        );
    }
    (text, unreachable)
}

impl EtcdGrpc {
    pub fn new(config: &EtcdLockConfig) -> EtcdGrpc {
        EtcdGrpc {
            config: config.clone(),
            timeout: call_timeout(config.ttl),
            clients: config
                .endpoints
                .iter()
                .map(|_| Default::default())
                .collect(),
            last_good: Default::default(),
        }
    }

    fn options(&self) -> Result<etcd_client::ConnectOptions, EtcdError> {
        let c = &self.config;
        let mut o = etcd_client::ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            // A token that etcd expired is fetched anew, not an error.
            .with_auto_token_refresh(true)
            // A member without a leader (cut off from its quorum) refuses
            // at once with "no leader" instead of letting the call hang,
            // so the next endpoint is tried within the budget.
            .with_require_leader(true);
        if let Some(ca) = &c.ca_file {
            let mut tls = etcd_client::TlsOptions::new().ca_certificate(
                etcd_client::Certificate::from_pem(read_file("ca_file", ca)?),
            );
            if let (Some(cert), Some(key)) = (&c.cert_file, &c.key_file) {
                tls = tls.identity(etcd_client::Identity::from_pem(
                    read_file("cert_file", cert)?,
                    read_file("key_file", key)?,
                ));
            }
            o = o.with_tls(tls);
        }
        if let (Some(user), Some(file)) = (&c.username, &c.password_file) {
            let raw = read_file("password_file", file)?;
            let password = String::from_utf8(raw)
                .map_err(|_| EtcdError {
                    message: format!(
                        "lock.etcd.password_file {} is not UTF-8 text",
                        file.display()
                    ),
                    unreachable: false,
                })?
                .trim_end_matches(['\n', '\r'])
                .to_owned();
            o = o.with_user(user.clone(), password);
        }
        Ok(o)
    }

    /// The connection to endpoint `i`, and whether it was made just now
    /// (false: kept from an earlier call).
    async fn connected(&self, i: usize) -> Result<(etcd_client::Client, bool), EtcdError> {
        let mut slot = self.clients[i].lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok((c.clone(), false));
        }
        let options = self.options()?;
        let c = etcd_client::Client::connect([&self.config.endpoints[i]], Some(options))
            .await
            .map_err(|e| {
                let (message, unreachable) = describe_error(&e);
                EtcdError {
                    message: format!("connecting: {message}"),
                    unreachable,
                }
            })?;
        *slot = Some(c.clone());
        Ok((c, true))
    }

    /// Runs `f` on a connection, the whole of it (connecting and moving to
    /// the next endpoint included) bounded by the call timeout. No answer
    /// in time is an error like any other: the caller reads it as
    /// "unknown", never as "free".
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, EtcdError>
    where
        F: Fn(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, EtcdError>>,
    {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.clients.len();
        let first = self.last_good.load(Relaxed);
        let attempt = async {
            let mut failures = Vec::new();
            for i in (0..n).map(|k| (first + k) % n) {
                let r = match self.connected(i).await {
                    Ok((c, fresh)) => match f(c).await {
                        // A kept connection may have broken while idle (a
                        // closed stream, a reset): asked once more on a new
                        // one. A repeat can only refuse more, never grant: a
                        // create already applied finds its key taken.
                        Err(_) if !fresh => {
                            *self.clients[i].lock().await = None;
                            match self.connected(i).await {
                                Ok((c, _)) => f(c).await,
                                Err(e) => Err(e),
                            }
                        }
                        r => r,
                    },
                    Err(e) => Err(e),
                };
                match r {
                    Ok(v) => {
                        self.last_good.store(i, Relaxed);
                        return Ok(v);
                    }
                    Err(e) => {
                        // Reconnect next time: the connection (or its
                        // files) may be what is wrong.
                        *self.clients[i].lock().await = None;
                        if !e.unreachable {
                            return Err(EtcdError {
                                message: format!("{}: {}", self.config.endpoints[i], e.message),
                                unreachable: false,
                            });
                        }
                        failures.push(format!("{}: {}", self.config.endpoints[i], e.message));
                    }
                }
            }
            Err(EtcdError {
                message: format!(
                    "no endpoint accepted a connection ({})",
                    failures.join("; ")
                ),
                unreachable: true,
            })
        };
        let r = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(EtcdError {
                message: format!("no answer within {} ms", self.timeout.as_millis()),
                unreachable: false,
            }),
        };
        r.map_err(|e| EtcdError {
            message: format!("{what}: {}", e.message),
            unreachable: e.unreachable,
        })
    }
}

fn grpc_err(e: etcd_client::Error) -> EtcdError {
    let (message, unreachable) = describe_error(&e);
    EtcdError {
        message,
        unreachable,
    }
}

fn odd(what: &str) -> EtcdError {
    EtcdError {
        message: format!("etcd answered {what} oddly"),
        unreachable: false,
    }
}

fn key_value(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        lease: kv.lease(),
    }
}

#[async_trait::async_trait]
impl EtcdApi for EtcdGrpc {
    async fn grant(&self, ttl_s: i64) -> Result<i64, EtcdError> {
        self.call("granting a lease", |mut c| async move {
            let r = c.lease_grant(ttl_s, None).await.map_err(grpc_err)?;
            match (r.id(), r.error()) {
                (id, "") if id != 0 => Ok(id),
                (_, why) => Err(EtcdError {
                    message: format!("etcd granted no lease: {why}"),
                    unreachable: false,
                }),
            }
        })
        .await
    }

    async fn create(&self, key: &str, value: &[u8], lease: i64) -> Result<Created, EtcdError> {
        use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
        let (key, value) = (key.to_owned(), value.to_vec());
        self.call("creating the lock key", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        value,
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(key, None)]);
                let r = c.txn(txn).await.map_err(grpc_err)?;
                if r.succeeded() {
                    // The key's create revision is the revision of this write.
                    return match r.header().map(|h| h.revision()) {
                        Some(rev) if rev > 0 => Ok(Created::At(rev)),
                        _ => Err(odd("the lock transaction without a revision")),
                    };
                }
                match r.op_responses().first() {
                    Some(TxnOpResponse::Get(g)) => match g.kvs().first() {
                        Some(kv) => Ok(Created::Held(key_value(kv))),
                        // Gone between the compare and the range: impossible in
                        // one transaction, so an answer we do not understand.
                        None => Err(odd("the lock transaction (the key both exists and not)")),
                    },
                    _ => Err(odd("the lock transaction")),
                }
            }
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let key = key.to_owned();
        // Linearizable (the default): a member cut off from its quorum errs
        // instead of answering from its own, possibly stale, copy.
        self.call("reading the lock key", |mut c| {
            let key = key.clone();
            async move {
                let r = c.get(key, None).await.map_err(grpc_err)?;
                Ok(r.kvs().first().map(key_value))
            }
        })
        .await
    }

    async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        self.call("renewing the lease", |mut c| async move {
            // Opening the stream renews once but keeps etcd's answer to
            // itself; a second renewal on it reads the TTL etcd set (the
            // lease's own, which a resume after a change of `ttl` must not
            // take from the config).
            let (mut keeper, mut answers) = match c.lease_keep_alive(lease).await {
                Ok(k) => k,
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == "lease not found" => {
                    return Ok(0)
                }
                Err(e) => return Err(grpc_err(e)),
            };
            keeper.keep_alive().await.map_err(grpc_err)?;
            match answers.message().await.map_err(grpc_err)? {
                Some(r) => Ok(r.ttl().max(0)),
                None => Err(odd("the lease renewal (the stream ended)")),
            }
        })
        .await
    }

    async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("revoking the lease", |mut c| async move {
            match c.lease_revoke(lease).await {
                Ok(_) => Ok(()),
                // Already gone: what revoking wanted.
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.message().contains("lease not found") =>
                {
                    Ok(())
                }
                Err(e) => Err(grpc_err(e)),
            }
        })
        .await
    }

    async fn delete_if(&self, key: &str, token: i64) -> Result<(), EtcdError> {
        use etcd_client::{Compare, CompareOp, Txn, TxnOp};
        let key = key.to_owned();
        self.call("deleting the lock key", |mut c| {
            let key = key.clone();
            async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        key.clone(),
                        CompareOp::Equal,
                        token,
                    )])
                    .and_then([TxnOp::delete(key, None)]);
                c.txn(txn).await.map_err(grpc_err).map(|_| ())
            }
        })
        .await
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
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
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
        let now = std::time::Instant::now();
        // Known to live for the TTL less a quarter: 6s at the grant.
        let until = a.held_until("op-1").unwrap();
        assert!(until > now && until <= now + Duration::from_millis(4500));
        a.renew(&op).await;
        // The fake answers a TTL of 10 s: the lease's own, not the config's.
        assert!(a.held_until("op-1").unwrap() > now + Duration::from_secs(7));
        assert!(a.check(&op).await.is_ok());
        etcd.state.lock().unwrap().leases.clear();
        a.renew(&op).await;
        assert_eq!(
            a.held_until("op-1"),
            None,
            "a lease found gone vouches for nothing"
        );
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
