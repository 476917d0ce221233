//! The one interface through which the daemon's decisions touch the world:
//! SQL on a node, an action on a node's PostgreSQL through the daemon beside
//! it, the application on each host, the other daemons' APIs, and the
//! application's config file. The steps, the operation manager, the poller
//! and the stale guard decide; an [`Effects`] does.
//!
//! [`RealEffects`] is the world; `fake::FakeWorld` (tests only) is an
//! in-memory twin in which every effect can be made to fail, time out or
//! answer "unknown", so that each decision is table-tested in milliseconds.
//!
//! Every answer that can be "I could not tell" says so: [`Answer::Unknown`],
//! an [`AdminError`] (timeout, refused connection, failed statement, odd
//! answer) or a [`PeerError`]. None of them is ever read as "down".

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgwarden_core::preflight::Shadow;
use pgwarden_core::snapshot::{Lsn, WalReceiver};
use pgwarden_core::Answer;
use pgwarden_pg::AdminError;

pub mod app;
pub mod appconfig;
pub mod command;
pub mod datadir;
#[cfg(test)]
pub mod fake;
pub mod fsutil;
pub mod guarded;
pub mod node;
pub mod pgbouncer;
mod real;
pub mod replica;

pub use node::{local_node_action, NodeState};
pub use real::RealEffects;
pub use replica::follow_local;

/// A failed call to another daemon: its HTTP status if it answered.
/// Only a connection that could not be made is `unreachable` (nothing was
/// sent, so nothing was done there); a timeout after the request went out,
/// or an answer that cannot be read, is neither "done" nor "not done".
#[derive(Clone, Debug)]
pub struct PeerError {
    pub status: Option<u16>,
    pub unreachable: bool,
    /// The `error` code of the peer's JSON answer, when it answered one.
    pub code: Option<String>,
    pub message: String,
}

/// SQL on one node, as the monitor role. Each call is bounded by the
/// handle's timeout ([`Effects::node`] or the shorter [`Effects::node_quick`]).
#[async_trait]
pub trait NodeSql: Send + Sync {
    async fn is_in_recovery(&self) -> Result<bool, AdminError>;
    /// The timeline the node writes (primary) or receives (standby).
    async fn timeline(&self) -> Result<u32, AdminError>;
    async fn current_lsn(&self) -> Result<Option<Lsn>, AdminError>;
    async fn replay_lsn(&self) -> Result<Option<Lsn>, AdminError>;
    /// `pg_promote(wait => false)`: asks, does not wait.
    async fn request_promotion(&self) -> Result<(), AdminError>;
    /// How long until the node left recovery, or `None` after `deadline`.
    async fn wait_until_primary(
        &self,
        deadline: Duration,
        every: Duration,
    ) -> Result<Option<Duration>, AdminError>;
    async fn checkpoint(&self) -> Result<(), AdminError>;
    /// `ALTER SYSTEM SET`, or `RESET` for `None`.
    async fn alter_system(&self, setting: &str, value: Option<&str>) -> Result<(), AdminError>;
    async fn reload(&self) -> Result<(), AdminError>;
    async fn setting(&self, name: &str) -> Result<String, AdminError>;
    /// Creates the physical slot unless it exists; whether it did.
    async fn ensure_slot(&self, slot: &str) -> Result<bool, AdminError>;
    /// Client sessions of `role`.
    async fn sessions_of(&self, role: &str) -> Result<u64, AdminError>;
    /// Terminates every client session of `role`; how many were signalled.
    async fn terminate_sessions_of(&self, role: &str) -> Result<u64, AdminError>;
    /// Sessions waiting for a synchronous standby (`wait_event = SyncRep`).
    async fn sync_rep_waiters(&self) -> Result<u64, AdminError>;
    /// Standbys named `application_name` streaming with `sync_state = sync`.
    async fn sync_standbys_named(&self, application_name: &str) -> Result<u64, AdminError>;
    /// The size of every database together: what a base backup copies.
    async fn database_bytes(&self) -> Result<u64, AdminError>;
    /// Whether the monitor role may read the files pg_rewind reads.
    async fn may_read_files_for_rewind(&self) -> Result<bool, AdminError>;
    /// The WAL receiver: status, sender, timeline; `None` without one.
    async fn wal_receiver(&self) -> Result<Option<WalReceiver>, AdminError>;
    /// The pg_stat_progress_basebackup row of the base backup that runs as
    /// `application_name` on this node (its source); `None` without one.
    async fn basebackup_progress(
        &self,
        application_name: &str,
    ) -> Result<Option<pgwarden_core::progress::BasebackupRow>, AdminError>;
}

/// Everything an operation, the poller or the stale guard does to the world.
#[async_trait]
pub trait Effects: Send + Sync {
    /// SQL on a configured node, over its cached connection (long budget:
    /// a CHECKPOINT on a busy node takes a while).
    fn node(&self, name: &str) -> Arc<dyn NodeSql>;
    /// The same with the poll timeout: "does it answer at all?".
    fn node_quick(&self, name: &str) -> Arc<dyn NodeSql>;

    /// This host's data directories and the copying tools (a rejoin).
    fn data_dirs(&self) -> &dyn datadir::DataDirs;
    /// `pg_controldata` of `dir`, with this daemon's node's tools.
    async fn pg_control(&self, dir: &std::path::Path) -> Result<node::PgControl, String>;

    /// Passwords for the tools run during a rejoin (handed over in
    /// PGPASSWORD, never on a command line).
    fn monitor_password(&self) -> Option<String>;
    fn replication_password(&self) -> Option<String>;

    /// Stops (`action` = "stop") or starts a node's PostgreSQL: locally when
    /// it is this daemon's node, else through the daemon beside it. `Ok`
    /// only when verified (a stop: the postmaster is gone).
    async fn node_action(&self, node: &str, action: &str) -> Result<NodeState, String>;

    /// Asks for `node`'s PostgreSQL to be stopped, locally or through the
    /// daemon beside it, giving up after `budget`. A failover uses it on an
    /// old primary it cannot reach over SQL: "unreachable" is not "stopped"
    /// (a firewall, a cut link, a full connection table), and the daemon
    /// beside the node reaches it without the network. An error with a
    /// status means that daemon answered and could not stop it.
    async fn stop_within(&self, node: &str, budget: Duration) -> Result<NodeState, PeerError>;

    /// Whether `node`'s PostgreSQL is verified stopped, asked of its own
    /// daemon (locally: [`Effects::local_node_stopped`]); stops nothing. A
    /// failover asks it while the fence runs, so a dead old primary costs
    /// no time after the fence; a live one is stopped only after the fence.
    async fn node_stopped_on(&self, node: &str) -> Result<Answer, PeerError>;

    /// Whether this daemon's own node is verified stopped: `pg_ctl status`
    /// says "not running" AND the postmaster is gone.
    async fn local_node_stopped(&self) -> Answer;
    /// Stops this daemon's own node, verified.
    async fn stop_local_node(&self) -> Result<NodeState, String>;

    /// POSTs JSON to another daemon with the API token.
    async fn post(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, PeerError>;
    /// Forwards a request to another daemon and returns its status and body
    /// as they are (a rejoin runs on the rejoining node's own daemon).
    async fn forward(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(u16, serde_json::Value), String>;
    /// GETs JSON from another daemon.
    async fn get(&self, url: &str) -> Result<serde_json::Value, PeerError>;

    /// Makes the `role: replica` node `replica` stream from `primary`
    /// (primary_conninfo and a reload): locally, or through the daemon
    /// beside it.
    async fn follow(&self, replica: &str, primary: &str) -> Result<String, String>;

    /// Acts on (or looks at) this host's pgbouncer (`proxy.pgbouncer`).
    async fn pgbouncer_here(&self, action: &pgbouncer::Action)
        -> Result<pgbouncer::Report, String>;
    /// The same on `host`, through its daemon.
    async fn pgbouncer_on(
        &self,
        host: &str,
        action: &pgbouncer::Action,
    ) -> Result<pgbouncer::Report, PeerError>;

    /// Whether `host`'s daemon answers at all (`/livez`, a short timeout).
    /// This daemon's own host always does.
    async fn daemon_answers(&self, host: &str) -> bool;

    /// Whether the application runs on `host`, asked of that host's daemon.
    async fn app_status_on(&self, host: &str) -> Result<Answer, PeerError>;
    /// Runs the application's `which` command on `host`.
    async fn app_command_on(&self, host: &str, which: app::AppCommand)
        -> Result<String, PeerError>;
    /// `application.health_url`, asked on `host`.
    async fn app_healthy_on(&self, host: &str) -> Result<Answer, PeerError>;
    /// Points the application's config file on `host` at `db_host:db_port`;
    /// `Ok(false)` when it already did.
    async fn app_config_on(
        &self,
        host: &str,
        operation: &str,
        db_host: &str,
        db_port: u16,
    ) -> Result<bool, PeerError>;

    /// Points this host's application config file at `host:port`
    /// ([`appconfig::switch`]); `Ok(false)` when it already did.
    fn switch_application_config(
        &self,
        operation: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, String>;
    /// Why this host's config file could not be rewritten, or None.
    fn config_file_blocker(&self) -> Option<String>;
    /// Files that would override the switch ([`appconfig::shadows`]).
    fn shadows(&self) -> Vec<Shadow>;
}

#[async_trait]
impl NodeSql for pgwarden_pg::Node {
    async fn is_in_recovery(&self) -> Result<bool, AdminError> {
        pgwarden_pg::Node::is_in_recovery(self).await
    }
    async fn timeline(&self) -> Result<u32, AdminError> {
        pgwarden_pg::Node::timeline(self).await
    }
    async fn current_lsn(&self) -> Result<Option<Lsn>, AdminError> {
        pgwarden_pg::Node::current_lsn(self).await
    }
    async fn replay_lsn(&self) -> Result<Option<Lsn>, AdminError> {
        pgwarden_pg::Node::replay_lsn(self).await
    }
    async fn request_promotion(&self) -> Result<(), AdminError> {
        pgwarden_pg::Node::request_promotion(self).await
    }
    async fn wait_until_primary(
        &self,
        deadline: Duration,
        every: Duration,
    ) -> Result<Option<Duration>, AdminError> {
        pgwarden_pg::Node::wait_until_primary(self, deadline, every).await
    }
    async fn checkpoint(&self) -> Result<(), AdminError> {
        pgwarden_pg::Node::checkpoint(self).await
    }
    async fn alter_system(&self, setting: &str, value: Option<&str>) -> Result<(), AdminError> {
        pgwarden_pg::Node::alter_system(self, setting, value).await
    }
    async fn reload(&self) -> Result<(), AdminError> {
        pgwarden_pg::Node::reload(self).await
    }
    async fn setting(&self, name: &str) -> Result<String, AdminError> {
        pgwarden_pg::Node::setting(self, name).await
    }
    async fn ensure_slot(&self, slot: &str) -> Result<bool, AdminError> {
        pgwarden_pg::Node::ensure_slot(self, slot).await
    }
    async fn sessions_of(&self, role: &str) -> Result<u64, AdminError> {
        pgwarden_pg::Node::sessions_of(self, role).await
    }
    async fn terminate_sessions_of(&self, role: &str) -> Result<u64, AdminError> {
        pgwarden_pg::Node::terminate_sessions_of(self, role).await
    }
    async fn sync_rep_waiters(&self) -> Result<u64, AdminError> {
        pgwarden_pg::Node::sync_rep_waiters(self).await
    }
    async fn sync_standbys_named(&self, application_name: &str) -> Result<u64, AdminError> {
        pgwarden_pg::Node::sync_standbys_named(self, application_name).await
    }
    async fn database_bytes(&self) -> Result<u64, AdminError> {
        pgwarden_pg::Node::database_bytes(self).await
    }
    async fn may_read_files_for_rewind(&self) -> Result<bool, AdminError> {
        pgwarden_pg::Node::may_read_files_for_rewind(self).await
    }
    async fn wal_receiver(&self) -> Result<Option<WalReceiver>, AdminError> {
        pgwarden_pg::Node::wal_receiver(self).await
    }
    async fn basebackup_progress(
        &self,
        application_name: &str,
    ) -> Result<Option<pgwarden_core::progress::BasebackupRow>, AdminError> {
        pgwarden_pg::Node::basebackup_progress(self, application_name).await
    }
}
