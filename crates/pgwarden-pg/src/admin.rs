//! SQL actions of an operation: promote, checkpoint, ALTER SYSTEM, slots,
//! sessions of a role. A [`Node`] keeps one connection, shared by its clones
//! and rebuilt after any error (a new SCRAM login per statement would cost
//! more than the statements); it is separate from the probe's connection,
//! which stays dedicated to polling. Every call is bounded by a timeout.
//!
//! Values are always passed as quoted literals built here; setting names and
//! role names come from the validated config.

use std::time::Duration;

use pgwarden_core::snapshot::{Lsn, WalReceiver};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::probe::Target;

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

/// One node to act on: its name (for messages) and how to connect.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub target: Target,
    pub timeout: Duration,
    /// The cached connection, shared by clones; `None` until first use and
    /// after an error. A tokio Mutex: it is held across the query's await.
    pub(crate) conn: std::sync::Arc<tokio::sync::Mutex<Option<Client>>>,
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

impl Node {
    pub fn new(name: String, target: Target, timeout: Duration) -> Node {
        Node {
            name,
            target,
            timeout,
            conn: Default::default(),
        }
    }

    /// The same node (and connection) with another timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Node {
        Node {
            timeout,
            ..self.clone()
        }
    }

    async fn connect(&self) -> Result<Client, AdminError> {
        let cfg = self.target.config(self.timeout);
        let (client, connection) = cfg.connect(NoTls).await.map_err(|e| {
            if refused(&e) {
                AdminError::Refused {
                    node: self.name.clone(),
                }
            } else {
                AdminError::Connect {
                    node: self.name.clone(),
                    detail: crate::probe::chain(&e),
                }
            }
        })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs one statement (simple protocol: ALTER SYSTEM cannot run in a
    /// transaction block) and returns its rows as text.
    pub async fn query(&self, statement: &str) -> Result<Vec<Vec<Option<String>>>, AdminError> {
        // The lock is taken inside the timeout: a statement of another step
        // stuck on this connection must not hold this one past its budget.
        let work = async {
            let mut guard = self.conn.lock().await;
            let result =
                async {
                    if guard.as_ref().is_none_or(|c| c.is_closed()) {
                        *guard = Some(self.connect().await?);
                    }
                    let client = guard.as_ref().expect("connected above");
                    let messages = client.simple_query(statement).await.map_err(|e| {
                        AdminError::Statement {
                            node: self.name.clone(),
                            statement: statement.to_owned(),
                            detail: crate::probe::chain(&e),
                        }
                    })?;
                    Ok(messages
                        .into_iter()
                        .filter_map(|m| match m {
                            SimpleQueryMessage::Row(r) => {
                                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                            }
                            _ => None,
                        })
                        .collect())
                }
                .await;
            if result.is_err() {
                // The connection may be stuck mid-protocol or gone: rebuild it.
                *guard = None;
            }
            result
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                // Cut off mid-statement: the connection cannot be trusted.
                // If another caller holds it, that caller resets it itself.
                if let Ok(mut guard) = self.conn.try_lock() {
                    *guard = None;
                }
                Err(AdminError::Timeout {
                    node: self.name.clone(),
                    after: self.timeout,
                })
            }
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
        };
        Node::new("pg-x".into(), target, timeout)
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
    async fn the_connection_lock_is_taken_inside_the_timeout() {
        let (port, _server) = silent_server().await;
        let slow = node(port, Duration::from_secs(600));
        let holder = {
            let slow = slow.clone();
            tokio::spawn(async move { slow.is_in_recovery().await })
        };
        // The slow caller holds the connection; a quick caller of the same
        // node must get its own timeout, not wait behind it.
        while slow.conn.try_lock().is_ok() {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let quick = slow.with_timeout(Duration::from_millis(200));
        match quick.is_in_recovery().await {
            Err(AdminError::Timeout { after, .. }) => {
                assert_eq!(after, Duration::from_millis(200))
            }
            other => panic!("{other:?}"),
        }
        // Its own 200 ms, not the holder's 600 s (generous for 2 cores).
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        // The holder still holds it: the quick caller did not get it.
        assert!(slow.conn.try_lock().is_err());
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
