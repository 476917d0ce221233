//! SQL actions of an operation: promote, checkpoint, ALTER SYSTEM, slots,
//! sessions of a role. A [`Node`] draws its connections from a small
//! deadpool-postgres pool of its own, shared by its clones (a new SCRAM login
//! per statement would cost more than the statements); it is separate from
//! the probe's connection, which stays dedicated to polling.
//!
//! A pooled connection may have sat idle for weeks, and the path to the
//! node may have dropped it silently since: before a statement uses one it
//! is checked (an empty query, deadpool's `Verified`) within a SHORT budget,
//! and one that fails or does not answer is thrown away and replaced by a
//! new one. A failed check says nothing about the node (the node may be
//! fine and only that connection dead): only the statement's own outcome
//! counts. Acquiring and running together are bounded by the handle's
//! timeout.
//!
//! Values are always passed as quoted literals built here; setting names and
//! role names come from the validated config.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Timeouts};
use pgwarden_core::progress::BasebackupRow;
use pgwarden_core::snapshot::{Lsn, WalReceiver};
use tokio_postgres::SimpleQueryMessage;

use crate::probe::Target;

/// Connections per node: one statement stuck on a busy node (a long
/// CHECKPOINT) must not keep a quick check of the same node waiting, and
/// more is never needed, as an operation runs one step at a time.
const POOL_SIZE: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no answer from {node} within {after:?}")]
    Timeout { node: String, after: Duration },
    /// Nothing listens on the node's port: the connection was refused.
    /// Unlike any other connection failure, this says something certain:
    /// no server runs there to serve a session.
    #[error("cannot connect to {node}: the connection was refused (no server listens)")]
    Refused { node: String },
    #[error("cannot connect to {node}: {detail}")]
    Connect { node: String, detail: String },
    #[error("{node}: `{statement}` failed: {detail}")]
    Statement {
        node: String,
        statement: String,
        detail: String,
    },
    #[error("{node}: unexpected answer to `{statement}`: {detail}")]
    Answer {
        node: String,
        statement: String,
        detail: String,
    },
}

/// One node to act on: its name (for messages) and its pool.
#[derive(Clone)]
pub struct Node {
    pub name: String,
    pub timeout: Duration,
    /// How long a pooled connection may take to answer its check before it
    /// is replaced.
    pub check_timeout: Duration,
    /// Shared by clones (a deadpool `Pool` is a handle).
    pub(crate) pool: Pool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("check_timeout", &self.check_timeout)
            .field("pool", &self.pool.status())
            .finish()
    }
}

/// `'it''s'`: a SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `"name"`: a SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Whether a connection failed because nothing listens (ECONNREFUSED).
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Takes a connection out of the pool for good unless disarmed: one whose
/// statement failed or was cut off by the timeout may be stuck
/// mid-protocol, and must not go back for the next caller.
struct Discard(Option<deadpool_postgres::Object>);

impl Drop for Discard {
    fn drop(&mut self) {
        if let Some(obj) = self.0.take() {
            drop(deadpool_postgres::Object::take(obj));
        }
    }
}

impl Node {
    /// `timeout` bounds each call (acquire + statement); `check_timeout`
    /// the check of a pooled connection.
    pub fn new(name: String, target: Target, timeout: Duration, check_timeout: Duration) -> Node {
        let tls = target.tls.clone();
        let manager = Manager::from_config(
            target.config(timeout),
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .expect("a pool with a runtime builds");
        Node {
            name,
            timeout,
            check_timeout,
            pool,
        }
    }

    /// The same node (and pool) with another timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Node {
        Node {
            timeout,
            ..self.clone()
        }
    }

    fn pool_error(&self, e: PoolError) -> AdminError {
        match e {
            PoolError::Backend(e) if refused(&e) => AdminError::Refused {
                node: self.name.clone(),
            },
            PoolError::Backend(e) => AdminError::Connect {
                node: self.name.clone(),
                detail: crate::probe::chain(&e),
            },
            PoolError::Timeout(_) => AdminError::Timeout {
                node: self.name.clone(),
                after: self.timeout,
            },
            other => AdminError::Connect {
                node: self.name.clone(),
                detail: other.to_string(),
            },
        }
    }

    /// Runs one statement (simple protocol: ALTER SYSTEM cannot run in a
    /// transaction block) and returns its rows as text.
    pub async fn query(&self, statement: &str) -> Result<Vec<Vec<Option<String>>>, AdminError> {
        let timeouts = Timeouts {
            wait: Some(self.timeout),
            create: Some(self.timeout),
            recycle: Some(self.check_timeout.min(self.timeout)),
        };
        let work = async {
            let obj = self
                .pool
                .timeout_get(&timeouts)
                .await
                .map_err(|e| self.pool_error(e))?;
            // Armed until the statement succeeded: a failure or the timeout
            // dropping this future throws the connection away.
            let mut conn = Discard(Some(obj));
            let client = conn.0.as_ref().expect("just set");
            let messages =
                client
                    .simple_query(statement)
                    .await
                    .map_err(|e| AdminError::Statement {
                        node: self.name.clone(),
                        statement: statement.to_owned(),
                        detail: crate::probe::chain(&e),
                    })?;
            // Succeeded: back to the pool (dropping the Object returns it).
            drop(conn.0.take());
            Ok(messages
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                    }
                    _ => None,
                })
                .collect())
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(AdminError::Timeout {
                node: self.name.clone(),
                after: self.timeout,
            }),
        }
    }

    /// The single value of a one-row, one-column answer.
    pub async fn value(&self, statement: &str) -> Result<String, AdminError> {
        let rows = self.query(statement).await?;
        rows.into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .ok_or_else(|| AdminError::Answer {
                node: self.name.clone(),
                statement: statement.to_owned(),
                detail: "no value".into(),
            })
    }

    pub async fn execute(&self, statement: &str) -> Result<(), AdminError> {
        self.query(statement).await.map(|_| ())
    }

    pub async fn is_in_recovery(&self) -> Result<bool, AdminError> {
        Ok(self.value("SELECT pg_is_in_recovery()").await? == "t")
    }

    /// The timeline this node writes (primary) or receives (standby); see probe.sql.
    pub async fn timeline(&self) -> Result<u32, AdminError> {
        let sql = "SELECT CASE WHEN pg_is_in_recovery() \
                   THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), (pg_control_checkpoint()).timeline_id) \
                   ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END";
        let v = self.value(sql).await?;
        v.parse().map_err(|_| self.answer(sql, &v))
    }

    fn answer(&self, statement: &str, got: &str) -> AdminError {
        AdminError::Answer {
            node: self.name.clone(),
            statement: statement.to_owned(),
            detail: format!("`{got}`"),
        }
    }

    async fn lsn(&self, sql: &str) -> Result<Option<Lsn>, AdminError> {
        let rows = self.query(sql).await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .and_then(|v| Lsn::parse(&v)))
    }

    pub async fn current_lsn(&self) -> Result<Option<Lsn>, AdminError> {
        self.lsn("SELECT pg_current_wal_lsn()").await
    }

    pub async fn replay_lsn(&self) -> Result<Option<Lsn>, AdminError> {
        self.lsn("SELECT pg_last_wal_replay_lsn()").await
    }

    /// Asks for promotion without waiting: `pg_promote(wait => true)` only
    /// notices the end of recovery at its 100 ms poll; the caller polls
    /// [`Node::is_in_recovery`] far more often.
    pub async fn request_promotion(&self) -> Result<(), AdminError> {
        self.execute("SELECT pg_promote(wait => false)").await
    }

    /// Polls `pg_is_in_recovery()` every `every` over one connection until
    /// it is false; returns how long that took, or `None` after `deadline`.
    pub async fn wait_until_primary(
        &self,
        deadline: Duration,
        every: Duration,
    ) -> Result<Option<Duration>, AdminError> {
        let started = std::time::Instant::now();
        while started.elapsed() < deadline {
            if !self.is_in_recovery().await? {
                return Ok(Some(started.elapsed()));
            }
            tokio::time::sleep(every).await;
        }
        Ok(None)
    }

    pub async fn checkpoint(&self) -> Result<(), AdminError> {
        self.execute("CHECKPOINT").await
    }

    /// `ALTER SYSTEM SET name = 'value'`, or `RESET` for `None`.
    pub async fn alter_system(&self, setting: &str, value: Option<&str>) -> Result<(), AdminError> {
        let sql = match value {
            Some(v) => format!("ALTER SYSTEM SET {setting} = {}", quote_literal(v)),
            None => format!("ALTER SYSTEM RESET {setting}"),
        };
        self.execute(&sql).await
    }

    pub async fn reload(&self) -> Result<(), AdminError> {
        self.execute("SELECT pg_reload_conf()").await
    }

    pub async fn setting(&self, name: &str) -> Result<String, AdminError> {
        self.value(&format!("SELECT current_setting({})", quote_literal(name)))
            .await
    }

    /// Creates the physical slot unless it exists; returns whether it did.
    pub async fn ensure_slot(&self, slot: &str) -> Result<bool, AdminError> {
        let exists = self
            .value(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = {}",
                quote_literal(slot)
            ))
            .await?;
        if exists != "0" {
            return Ok(false);
        }
        self.execute(&format!(
            "SELECT pg_create_physical_replication_slot({})",
            quote_literal(slot)
        ))
        .await?;
        Ok(true)
    }

    /// Client sessions of `role` (other than ours).
    pub async fn sessions_of(&self, role: &str) -> Result<u64, AdminError> {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = {} AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            quote_literal(role)
        );
        let v = self.value(&sql).await?;
        v.parse().map_err(|_| self.answer(&sql, &v))
    }

    /// Sessions waiting for a synchronous standby to confirm their commit.
    pub async fn sync_rep_waiters(&self) -> Result<u64, AdminError> {
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'";
        let v = self.value(sql).await?;
        v.parse().map_err(|_| self.answer(sql, &v))
    }

    /// Standbys named `application_name` streaming synchronously.
    pub async fn sync_standbys_named(&self, application_name: &str) -> Result<u64, AdminError> {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync' AND state = 'streaming' AND application_name = {}",
            quote_literal(application_name)
        );
        let v = self.value(&sql).await?;
        v.parse().map_err(|_| self.answer(&sql, &v))
    }

    /// The size of every database together: what a base backup copies.
    pub async fn database_bytes(&self) -> Result<u64, AdminError> {
        let sql = "SELECT sum(pg_database_size(oid))::bigint FROM pg_database";
        let v = self.value(sql).await?;
        v.parse().map_err(|_| self.answer(sql, &v))
    }

    /// The row of pg_stat_progress_basebackup of the base backup whose
    /// walsender runs as `application_name` (pg_basebackup's connection),
    /// or `None` while it has none (not started yet, or all sent). Needs
    /// pg_read_all_stats (pg_monitor) to see another role's backup.
    pub async fn basebackup_progress(
        &self,
        application_name: &str,
    ) -> Result<Option<BasebackupRow>, AdminError> {
        let sql = format!(
            "SELECT p.phase, p.backup_total::text, p.backup_streamed::text, \
             p.tablespaces_total::text, p.tablespaces_streamed::text \
             FROM pg_stat_progress_basebackup p JOIN pg_stat_activity a ON a.pid = p.pid \
             WHERE a.application_name = {} ORDER BY a.backend_start DESC LIMIT 1",
            quote_literal(application_name)
        );
        let rows = self.query(&sql).await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let col = |i: usize| row.get(i).cloned().flatten();
        let num = |i: usize| -> Result<u64, AdminError> {
            let v = col(i).unwrap_or_default();
            v.parse().map_err(|_| self.answer(&sql, &v))
        };
        Ok(Some(BasebackupRow {
            phase: col(0).unwrap_or_default(),
            // NULL until estimated, and with --no-estimate-size.
            backup_total: col(1)
                .map(|v| v.parse().map_err(|_| self.answer(&sql, &v)))
                .transpose()?,
            backup_streamed: num(2)?,
            tablespaces_total: num(3)?,
            tablespaces_streamed: num(4)?,
        }))
    }

    /// Whether this role may call every function pg_rewind calls on a
    /// source (it reads global/pg_control with the one-argument
    /// pg_read_binary_file).
    pub async fn may_read_files_for_rewind(&self) -> Result<bool, AdminError> {
        let sql = "SELECT has_function_privilege('pg_ls_dir(text, boolean, boolean)', 'EXECUTE') \
                   AND has_function_privilege('pg_stat_file(text, boolean)', 'EXECUTE') \
                   AND has_function_privilege('pg_read_binary_file(text)', 'EXECUTE') \
                   AND has_function_privilege('pg_read_binary_file(text, bigint, bigint, boolean)', 'EXECUTE')";
        Ok(self.value(sql).await? == "t")
    }

    /// The WAL receiver (`pg_stat_wal_receiver`): its status, whom it
    /// streams from and on which timeline; `None` when there is none.
    pub async fn wal_receiver(&self) -> Result<Option<WalReceiver>, AdminError> {
        let sql = "SELECT status, sender_host, sender_port::text, received_tli::text FROM pg_stat_wal_receiver";
        let rows = self.query(sql).await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let col = |i: usize| row.get(i).cloned().flatten();
        Ok(Some(WalReceiver {
            status: col(0).unwrap_or_default(),
            sender_host: col(1),
            sender_port: col(2).and_then(|p| p.parse().ok()),
            slot_name: None,
            received_tli: col(3).and_then(|t| t.parse().ok()),
            flushed_lsn: None,
        }))
    }

    /// Terminates every backend of `role`; returns how many were signalled.
    /// Needed because a killed client's backend busy in a long query does
    /// not notice that its client is gone.
    pub async fn terminate_sessions_of(&self, role: &str) -> Result<u64, AdminError> {
        let sql = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = {} AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            quote_literal(role)
        );
        let v = self.value(&sql).await?;
        v.parse().map_err(|_| self.answer(&sql, &v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts connections and never says a word (a hung
    /// postmaster, a half-open link).
    async fn silent_server() -> (u16, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        (port, task)
    }

    fn node(port: u16, timeout: Duration) -> Node {
        let target = Target {
            host: "127.0.0.1".into(),
            port,
            user: "pgwarden".into(),
            password: None,
            dbname: "postgres".into(),
            tls: crate::PgTls::disabled(),
        };
        Node::new("pg-x".into(), target, timeout, Duration::from_millis(100))
    }

    #[tokio::test]
    async fn a_node_that_never_answers_is_a_timeout_not_an_answer() {
        let (port, _server) = silent_server().await;
        let n = node(port, Duration::from_millis(200));
        match n.is_in_recovery().await {
            Err(AdminError::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(200)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_stuck_statement_does_not_hold_another_caller_past_its_budget() {
        let (port, _server) = silent_server().await;
        let slow = node(port, Duration::from_secs(600));
        let holder = {
            let slow = slow.clone();
            tokio::spawn(async move { slow.is_in_recovery().await })
        };
        // The slow caller holds a connection of the pool; a quick caller of
        // the same node must get its own timeout, not wait behind it.
        while slow.pool.status().waiting == 0 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let quick = slow.with_timeout(Duration::from_millis(200));
        // Its own 200 ms each time, not the holder's 600 s.
        for _ in 0..3 {
            match quick.is_in_recovery().await {
                Err(AdminError::Timeout { after, .. }) => {
                    assert_eq!(after, Duration::from_millis(200))
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        // The holder is still waiting on its statement.
        assert!(!holder.is_finished());
        holder.abort();
    }

    #[tokio::test]
    async fn a_port_nothing_listens_on_is_refused_not_unknown() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        match node(port, Duration::from_secs(5)).is_in_recovery().await {
            Err(AdminError::Refused { node }) => assert_eq!(node, "pg-x"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn literals_and_identifiers_are_quoted() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
