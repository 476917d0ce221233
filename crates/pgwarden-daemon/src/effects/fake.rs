//! An in-memory twin of the world, for table tests of the decisions: nodes
//! with a role, a timeline, LSNs and a pg_control state; hosts whose daemon
//! answers or not and whose application runs or not; and, for any effect on
//! any node or host, a [`Fault`] that makes it fail, time out, find nothing
//! to connect to, or answer something that cannot be read.
//!
//! This host's data directories are a file tree in memory, with the
//! copying tools as effects ([`fs`]), so that a rejoin's decisions are
//! tabled too, with what each leaves on disk.
//!
//! It is no stand-in for PostgreSQL: the real-cluster suites prove the
//! steps work. It exists so that every outcome of every effect a step calls
//! is tried, in milliseconds, and the step's decision asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pgwarden_core::preflight::Shadow;
use pgwarden_core::snapshot::{Lsn, WalReceiver};
use pgwarden_core::{Answer, Config};
use pgwarden_pg::AdminError;

use super::app::AppCommand;
use super::{pgbouncer, Effects, NodeSql, NodeState, PeerError};

pub mod fs;

/// How an effect goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// It ran and failed: a statement error, a command's non-zero exit, a
    /// daemon answering 500.
    Error,
    /// No answer within its budget, after the request went out.
    Timeout,
    /// Nothing to talk to: a refused connection, a daemon not listening.
    Unreachable,
    /// An answer that means neither yes nor no: an odd SQL result, a status
    /// command's unexpected exit, a malformed peer answer.
    Unknown,
}

impl Fault {
    pub const ALL: [Fault; 4] = [
        Fault::Error,
        Fault::Timeout,
        Fault::Unreachable,
        Fault::Unknown,
    ];
}

/// One node's PostgreSQL.
#[derive(Clone, Debug)]
pub struct FakeNode {
    pub running: bool,
    pub in_recovery: bool,
    pub timeline: u32,
    /// A primary's current LSN; a standby's replay LSN.
    pub lsn: Lsn,
    /// pg_controldata's "Database cluster state".
    pub cluster_state: String,
    /// Client sessions per role.
    pub sessions: BTreeMap<String, u64>,
    pub settings: BTreeMap<String, String>,
    pub slots: BTreeSet<String>,
    /// What pg_stat_progress_basebackup shows of a copy from this node, as
    /// a test sets it.
    pub basebackup: Option<pgwarden_core::progress::BasebackupRow>,
}

/// One host: its daemon and its application instance.
#[derive(Clone, Debug)]
pub struct FakeHost {
    pub daemon_up: bool,
    pub app_running: bool,
    /// Where its application config file points (host, port).
    pub app_points_to: (String, u16),
}

#[derive(Debug)]
pub struct World {
    pub nodes: BTreeMap<String, FakeNode>,
    pub hosts: BTreeMap<String, FakeHost>,
    /// (effect, node or host) -> what goes wrong there.
    pub faults: BTreeMap<(String, String), Fault>,
    /// Every effect called, as (effect, node or host), in order.
    pub calls: Vec<(String, String)>,
    /// This daemon's host's files (data directories).
    pub fs: fs::FakeFs,
}

/// Records the call of `effect` at `at` and returns its fault, if any.
fn enter(world: &Mutex<World>, effect: &str, at: &str) -> Option<Fault> {
    let mut w = world.lock().unwrap();
    w.calls.push((effect.to_owned(), at.to_owned()));
    w.faults.get(&(effect.to_owned(), at.to_owned())).copied()
}

/// The fake world: `Arc<FakeWorld>` is an `Arc<dyn Effects>`.
pub struct FakeWorld {
    config: Arc<Config>,
    world: Arc<Mutex<World>>,
    dirs: fs::FakeDataDirs,
}

/// Two hosts, pg-a primary on timeline 1 at 0/3000000, pg-b its streaming
/// standby, the application running on pg-a with 2 sessions on pg-a.
pub const CONFIG: &str = r#"
cluster: test
local_node: pg-b
listen: 127.0.0.1:8008
state_dir: /tmp/pgwarden-fake
api_token_file: /tmp/pgwarden-fake/token
monitor: {user: pgwarden}
replication: {slot: replication, application_name: inmanta, user: replication}
nodes:
  - {name: pg-a, host: 10.0.0.1, port: 5432, api: "http://10.0.0.1:8008"}
  - {name: pg-b, host: 10.0.0.2, port: 5432, api: "http://10.0.0.2:8008"}
application:
  name: inmanta-server
  stop: [systemctl, stop, inmanta-server]
  start: [systemctl, start, inmanta-server]
  is_running: [systemctl, is-active, inmanta-server]
  db_user: inmanta
  config_file: /etc/inmanta/inmanta.d/database.cfg
  runs_on: [pg-a, pg-b]
"#;

impl FakeWorld {
    pub fn new(config: Config) -> Arc<FakeWorld> {
        let mut nodes = BTreeMap::new();
        let mut hosts = BTreeMap::new();
        let first = config.nodes[0].clone();
        for (i, n) in config.nodes.iter().enumerate() {
            let primary = i == 0;
            let mut sessions = BTreeMap::new();
            if primary {
                if let Some(app) = &config.application {
                    sessions.insert(app.db_user.clone(), 2);
                }
            }
            let mut settings = BTreeMap::new();
            settings.insert(
                "synchronous_standby_names".to_owned(),
                if primary { "\"inmanta\"" } else { "" }.to_owned(),
            );
            nodes.insert(
                n.name.clone(),
                FakeNode {
                    running: true,
                    in_recovery: !primary,
                    timeline: 1,
                    lsn: Lsn(0x300_0000),
                    cluster_state: if primary {
                        "in production"
                    } else {
                        "in archive recovery"
                    }
                    .to_owned(),
                    sessions,
                    settings,
                    slots: BTreeSet::new(),
                    basebackup: None,
                },
            );
            hosts.insert(
                n.name.clone(),
                FakeHost {
                    daemon_up: true,
                    app_running: primary,
                    app_points_to: (first.host.clone(), first.port),
                },
            );
        }
        let world = Arc::new(Mutex::new(World {
            nodes,
            hosts,
            faults: BTreeMap::new(),
            calls: Vec::new(),
            fs: fs::FakeFs::default(),
        }));
        Arc::new(FakeWorld {
            config: Arc::new(config),
            dirs: fs::FakeDataDirs {
                world: world.clone(),
            },
            world,
        })
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.clone()
    }

    /// Changes the world (a node killed, a host cut off).
    pub fn with<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        f(&mut self.world.lock().unwrap())
    }

    /// Makes `effect` on `at` (a node or a host) go wrong from now on.
    pub fn fault(&self, effect: &str, at: &str, fault: Fault) {
        self.with(|w| w.faults.insert((effect.to_owned(), at.to_owned()), fault));
    }

    /// How many effects were called so far.
    pub fn call_count(&self) -> usize {
        self.with(|w| w.calls.len())
    }

    /// The distinct (effect, node or host) pairs called after the first `n` calls.
    pub fn called_since(&self, n: usize) -> BTreeSet<(String, String)> {
        self.with(|w| w.calls[n..].iter().cloned().collect())
    }

    /// The node the application of `host` points to, by host and port.
    fn node_at(&self, host: &str, port: u16) -> Option<String> {
        self.config
            .nodes
            .iter()
            .find(|n| n.host == host && n.port == port)
            .map(|n| n.name.clone())
    }

    /// The cluster view a poll of this world would give: each running node
    /// answers with its role, timeline and LSN; a primary shows every
    /// running standby streaming, `sync` when `synchronous_standby_names`
    /// names it.
    pub fn view(&self) -> pgwarden_core::ClusterView {
        use pgwarden_core::snapshot::NodeSnapshot;
        use pgwarden_core::view::NodeObservation;
        let config = &self.config;
        let observations: Vec<NodeObservation> = self.with(|w| {
            config
                .nodes
                .iter()
                .map(|c| {
                    let n = &w.nodes[&c.name];
                    if !n.running {
                        return NodeObservation {
                            consecutive_failures: 10,
                            last_error: Some("connection refused".into()),
                            polled_at: Some("t".into()),
                            ..Default::default()
                        };
                    }
                    let ssn = n.settings.get("synchronous_standby_names").cloned().unwrap_or_default();
                    let replication: Vec<serde_json::Value> = if n.in_recovery {
                        Vec::new()
                    } else {
                        config
                            .nodes
                            .iter()
                            .filter(|o| o.name != c.name && w.nodes[&o.name].running && w.nodes[&o.name].in_recovery)
                            .enumerate()
                            .map(|(i, o)| {
                                let app = o.walreceiver_name(&config.replication);
                                serde_json::json!({
                                    "pid": 100 + i, "application_name": app, "client_addr": o.host,
                                    "state": "streaming",
                                    "sync_state": if ssn.contains(app) { "sync" } else { "async" },
                                    "sent_lsn": n.lsn, "write_lsn": n.lsn, "flush_lsn": n.lsn, "replay_lsn": n.lsn,
                                    "write_lag_seconds": 0.0, "flush_lag_seconds": 0.0, "replay_lag_seconds": 0.0
                                })
                            })
                            .collect()
                    };
                    let snapshot = serde_json::json!({
                        "server_version": 150010, "in_recovery": n.in_recovery, "timeline": n.timeline,
                        "system_identifier": "7000000000000000001",
                        "current_lsn": (!n.in_recovery).then_some(n.lsn),
                        "receive_lsn": n.in_recovery.then_some(n.lsn),
                        "replay_lsn": n.in_recovery.then_some(n.lsn),
                        "last_replay_at": null, "replay_delay_seconds": n.in_recovery.then_some(0.0),
                        "replication": replication, "slots": [], "wal_receiver": null,
                        "settings": {
                            "synchronous_standby_names": ssn, "synchronous_commit": "on",
                            "wal_level": "replica", "hot_standby": "on", "max_wal_senders": 10,
                            "primary_conninfo": "", "primary_slot_name": "",
                            "wal_log_hints": "on", "data_checksums": "off"
                        },
                        "backends_waiting_sync_rep": 0,
                        "sessions_by_role": n.sessions,
                    });
                    NodeObservation {
                        snapshot: Some(
                            serde_json::from_value::<NodeSnapshot>(snapshot)
                                .expect("the fake world's snapshot is a NodeSnapshot"),
                        ),
                        polled_at: Some("t".into()),
                        ..Default::default()
                    }
                })
                .collect()
        });
        pgwarden_core::ClusterView::build(config, &observations)
    }

    /// Records the call and returns its fault, if any.
    fn enter(&self, effect: &str, at: &str) -> Option<Fault> {
        enter(&self.world, effect, at)
    }

    /// A timeout takes its time (instant under a paused test clock).
    async fn hang(fault: Option<Fault>) {
        if fault == Some(Fault::Timeout) {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }

    fn peer_error(at: &str, fault: Fault) -> PeerError {
        let (status, unreachable, message) = match fault {
            Fault::Error => (Some(500), false, format!("{at}'s daemon answered 500")),
            Fault::Timeout => (None, false, format!("{at}'s daemon did not answer in time")),
            Fault::Unreachable => (None, true, format!("cannot reach {at}'s daemon")),
            Fault::Unknown => (None, false, format!("{at}'s daemon answered unexpectedly")),
        };
        PeerError {
            status,
            unreachable,
            code: None,
            message,
        }
    }

    /// A peer call on `host`: its fault, else the host's daemon must be up.
    async fn peer(&self, effect: &str, host: &str) -> Result<(), PeerError> {
        let fault = self.enter(effect, host);
        Self::hang(fault).await;
        if let Some(f) = fault {
            return Err(Self::peer_error(host, f));
        }
        if host != self.config.local_node && !self.with(|w| w.hosts[host].daemon_up) {
            return Err(Self::peer_error(host, Fault::Unreachable));
        }
        Ok(())
    }

    fn stop(&self, node: &str) -> NodeState {
        self.with(|w| {
            let n = w.nodes.get_mut(node).expect("a configured node");
            if n.running {
                n.running = false;
                n.cluster_state = if n.in_recovery {
                    "shut down in recovery"
                } else {
                    "shut down"
                }
                .to_owned();
                n.sessions.clear();
            }
            NodeState {
                node: node.to_owned(),
                cluster_state: Some(n.cluster_state.clone()),
                checkpoint_lsn: Some(n.lsn),
                message: format!("{node} stopped"),
            }
        })
    }

    fn start(&self, node: &str) -> Result<NodeState, String> {
        let data_dir = (node == self.config.local_node)
            .then(|| self.config.local().data_dir.clone())
            .flatten();
        self.with(|w| {
            // This host's node starts from its data directory: a standby
            // when standby.signal is there, following the primary's timeline.
            if let Some(dir) = data_dir {
                if !w.fs.exists(dir.join("PG_VERSION")) {
                    return Err(format!(
                        "pg_ctl: directory \"{}\" is not a database cluster directory",
                        dir.display()
                    ));
                }
                if w.fs.exists(dir.join("standby.signal")) {
                    let primary_tl = w
                        .nodes
                        .values()
                        .filter(|n| n.running && !n.in_recovery)
                        .map(|n| n.timeline)
                        .max();
                    let n = w.nodes.get_mut(node).expect("a configured node");
                    n.in_recovery = true;
                    n.timeline = primary_tl.unwrap_or(n.timeline);
                }
            }
            let n = w.nodes.get_mut(node).expect("a configured node");
            n.running = true;
            n.cluster_state = if n.in_recovery {
                "in archive recovery"
            } else {
                "in production"
            }
            .to_owned();
            Ok(NodeState {
                node: node.to_owned(),
                cluster_state: Some(n.cluster_state.clone()),
                checkpoint_lsn: Some(n.lsn),
                message: format!("{node} started"),
            })
        })
    }
}

/// SQL on one fake node.
struct FakeSql {
    world: Arc<Mutex<World>>,
    name: String,
}

impl FakeSql {
    /// Records the call; applies its fault; refuses when the node is down.
    async fn enter<T>(
        &self,
        effect: &str,
        f: impl FnOnce(&mut FakeNode) -> Result<T, String>,
    ) -> Result<T, AdminError> {
        let fault = enter(&self.world, effect, &self.name);
        FakeWorld::hang(fault).await;
        let node = self.name.clone();
        let statement = effect.to_owned();
        match fault {
            Some(Fault::Error) => {
                return Err(AdminError::Statement {
                    node,
                    statement,
                    detail: "ERROR: injected".into(),
                })
            }
            Some(Fault::Timeout) => {
                return Err(AdminError::Timeout {
                    node,
                    after: Duration::from_secs(10),
                })
            }
            Some(Fault::Unreachable) => return Err(AdminError::Refused { node }),
            Some(Fault::Unknown) => {
                return Err(AdminError::Answer {
                    node,
                    statement,
                    detail: "`?`".into(),
                })
            }
            None => {}
        }
        let mut w = self.world.lock().unwrap();
        let n = w.nodes.get_mut(&self.name).expect("a configured node");
        if !n.running {
            return Err(AdminError::Refused { node });
        }
        f(n).map_err(|detail| AdminError::Statement {
            node,
            statement,
            detail,
        })
    }
}

#[async_trait]
impl NodeSql for FakeSql {
    async fn is_in_recovery(&self) -> Result<bool, AdminError> {
        self.enter("is_in_recovery", |n| Ok(n.in_recovery)).await
    }
    async fn timeline(&self) -> Result<u32, AdminError> {
        self.enter("timeline", |n| Ok(n.timeline)).await
    }
    async fn current_lsn(&self) -> Result<Option<Lsn>, AdminError> {
        self.enter("current_lsn", |n| {
            if n.in_recovery {
                Err("recovery is in progress".into())
            } else {
                Ok(Some(n.lsn))
            }
        })
        .await
    }
    async fn replay_lsn(&self) -> Result<Option<Lsn>, AdminError> {
        self.enter("replay_lsn", |n| Ok(n.in_recovery.then_some(n.lsn)))
            .await
    }
    async fn request_promotion(&self) -> Result<(), AdminError> {
        self.enter("request_promotion", |n| {
            if !n.in_recovery {
                return Err("recovery is not in progress".into());
            }
            n.in_recovery = false;
            n.timeline += 1;
            n.cluster_state = "in production".into();
            Ok(())
        })
        .await
    }
    async fn wait_until_primary(
        &self,
        _deadline: Duration,
        _every: Duration,
    ) -> Result<Option<Duration>, AdminError> {
        self.enter("wait_until_primary", |n| {
            Ok((!n.in_recovery).then_some(Duration::from_millis(2)))
        })
        .await
    }
    async fn checkpoint(&self) -> Result<(), AdminError> {
        self.enter("checkpoint", |_| Ok(())).await
    }
    async fn alter_system(&self, setting: &str, value: Option<&str>) -> Result<(), AdminError> {
        self.enter("alter_system", |n| {
            match value {
                Some(v) => n.settings.insert(setting.to_owned(), v.to_owned()),
                None => n.settings.remove(setting),
            };
            Ok(())
        })
        .await
    }
    async fn reload(&self) -> Result<(), AdminError> {
        self.enter("reload", |_| Ok(())).await
    }
    async fn setting(&self, name: &str) -> Result<String, AdminError> {
        self.enter("setting", |n| {
            Ok(n.settings.get(name).cloned().unwrap_or_default())
        })
        .await
    }
    async fn ensure_slot(&self, slot: &str) -> Result<bool, AdminError> {
        self.enter("ensure_slot", |n| Ok(n.slots.insert(slot.to_owned())))
            .await
    }
    async fn sessions_of(&self, role: &str) -> Result<u64, AdminError> {
        self.enter("sessions_of", |n| {
            Ok(n.sessions.get(role).copied().unwrap_or(0))
        })
        .await
    }
    async fn terminate_sessions_of(&self, role: &str) -> Result<u64, AdminError> {
        self.enter("terminate_sessions_of", |n| {
            Ok(n.sessions.remove(role).unwrap_or(0))
        })
        .await
    }
    async fn sync_rep_waiters(&self) -> Result<u64, AdminError> {
        self.enter("sync_rep_waiters", |_| Ok(0)).await
    }
    async fn sync_standbys_named(&self, _application_name: &str) -> Result<u64, AdminError> {
        self.enter("sync_standbys_named", |_| Ok(1)).await
    }
    async fn database_bytes(&self) -> Result<u64, AdminError> {
        self.enter("database_bytes", |_| Ok(1 << 20)).await
    }
    async fn may_read_files_for_rewind(&self) -> Result<bool, AdminError> {
        self.enter("may_read_files_for_rewind", |_| Ok(true)).await
    }
    async fn wal_receiver(&self) -> Result<Option<WalReceiver>, AdminError> {
        self.enter("wal_receiver", |n| {
            Ok(n.in_recovery.then(|| WalReceiver {
                status: "streaming".into(),
                sender_host: None,
                sender_port: None,
                slot_name: None,
                received_tli: Some(n.timeline),
                flushed_lsn: Some(n.lsn),
            }))
        })
        .await
    }
    async fn basebackup_progress(
        &self,
        _application_name: &str,
    ) -> Result<Option<pgwarden_core::progress::BasebackupRow>, AdminError> {
        self.enter("basebackup_progress", |n| Ok(n.basebackup.clone()))
            .await
    }
}

#[async_trait]
impl Effects for FakeWorld {
    fn node(&self, name: &str) -> Arc<dyn NodeSql> {
        Arc::new(FakeSql {
            world: self.world.clone(),
            name: name.to_owned(),
        })
    }

    fn node_quick(&self, name: &str) -> Arc<dyn NodeSql> {
        self.node(name)
    }

    fn data_dirs(&self) -> &dyn super::datadir::DataDirs {
        &self.dirs
    }

    async fn pg_control(&self, dir: &std::path::Path) -> Result<super::node::PgControl, String> {
        let file = dir.join("global/pg_control");
        if let Some(f) = self.enter("pg_control", &dir.display().to_string()) {
            return Err(format!(
                "pg_controldata failed ({f:?}): could not open file \"{}\"",
                file.display()
            ));
        }
        let text = self
            .with(|w| w.fs.get(&file).and_then(|e| e.text.clone()))
            .ok_or_else(|| {
                format!(
                    "pg_controldata: could not open file \"{}\": No such file or directory",
                    file.display()
                )
            })?;
        Ok(super::node::PgControl {
            cluster_state: Some("shut down".into()),
            checkpoint_lsn: None,
            wal_log_hints: text.contains("wal_log_hints=on"),
            checksums: text.contains("checksums=on"),
        })
    }

    fn monitor_password(&self) -> Option<String> {
        None
    }

    fn replication_password(&self) -> Option<String> {
        None
    }

    async fn node_action(&self, node: &str, action: &str) -> Result<NodeState, String> {
        let effect = format!("node_{action}");
        let fault = self.enter(&effect, node);
        Self::hang(fault).await;
        if let Some(f) = fault {
            return Err(Self::peer_error(node, f).message);
        }
        if node != self.config.local_node && !self.with(|w| w.hosts[node].daemon_up) {
            return Err(Self::peer_error(node, Fault::Unreachable).message);
        }
        match action {
            "stop" => Ok(self.stop(node)),
            _ => self.start(node),
        }
    }

    async fn stop_within(&self, node: &str, _budget: Duration) -> Result<NodeState, PeerError> {
        self.peer("stop_within", node).await?;
        Ok(self.stop(node))
    }

    async fn node_stopped_on(&self, node: &str) -> Result<Answer, PeerError> {
        let fault = self.enter("node_stopped", node);
        Self::hang(fault).await;
        match fault {
            Some(Fault::Unknown) => Ok(Answer::Unknown("pg_ctl status exited 4".into())),
            Some(f) => Err(Self::peer_error(node, f)),
            None if node != self.config.local_node && !self.with(|w| w.hosts[node].daemon_up) => {
                Err(Self::peer_error(node, Fault::Unreachable))
            }
            None => Ok(Answer::from_bool(!self.with(|w| w.nodes[node].running))),
        }
    }

    async fn local_node_stopped(&self) -> Answer {
        let me = self.config.local_node.clone();
        match self.enter("local_node_stopped", &me) {
            Some(Fault::Unknown | Fault::Error | Fault::Timeout | Fault::Unreachable) => {
                Answer::Unknown("pg_ctl status exited 4".into())
            }
            None => Answer::from_bool(!self.with(|w| w.nodes[&me].running)),
        }
    }

    async fn stop_local_node(&self) -> Result<NodeState, String> {
        let me = self.config.local_node.clone();
        let fault = self.enter("stop_local_node", &me);
        Self::hang(fault).await;
        match fault {
            Some(f) => Err(format!("the stop command failed ({f:?}); {me} still runs")),
            None => Ok(self.stop(&me)),
        }
    }

    async fn post(
        &self,
        url: &str,
        _body: &serde_json::Value,
    ) -> Result<serde_json::Value, PeerError> {
        self.peer("post", url).await.map(|_| serde_json::json!({}))
    }

    async fn forward(
        &self,
        url: &str,
        _body: &serde_json::Value,
        _timeout: Duration,
    ) -> Result<(u16, serde_json::Value), String> {
        self.peer("forward", url)
            .await
            .map(|_| (200, serde_json::json!({})))
            .map_err(|e| e.message)
    }

    async fn get(&self, url: &str) -> Result<serde_json::Value, PeerError> {
        self.peer("get", url).await.map(|_| serde_json::json!({}))
    }

    async fn follow(&self, replica: &str, primary: &str) -> Result<String, String> {
        self.peer("follow", replica).await.map_err(|e| e.message)?;
        Ok(format!("{replica} follows {primary}"))
    }

    async fn pgbouncer_here(
        &self,
        action: &pgbouncer::Action,
    ) -> Result<pgbouncer::Report, String> {
        let me = self.config.local_node.clone();
        self.pgbouncer_on(&me, action).await.map_err(|e| e.message)
    }

    async fn pgbouncer_on(
        &self,
        host: &str,
        _action: &pgbouncer::Action,
    ) -> Result<pgbouncer::Report, PeerError> {
        self.peer("pgbouncer", host).await?;
        Err(PeerError {
            status: Some(503),
            unreachable: false,
            code: None,
            message: "the fake world has no pgbouncer".into(),
        })
    }

    async fn daemon_answers(&self, host: &str) -> bool {
        match self.enter("daemon_answers", host) {
            Some(_) => false,
            None => host == self.config.local_node || self.with(|w| w.hosts[host].daemon_up),
        }
    }

    async fn app_status_on(&self, host: &str) -> Result<Answer, PeerError> {
        let fault = self.enter("app_status", host);
        Self::hang(fault).await;
        match fault {
            Some(Fault::Unknown) => Ok(Answer::Unknown("is_running exited 4".into())),
            Some(f) => Err(Self::peer_error(host, f)),
            None if host != self.config.local_node && !self.with(|w| w.hosts[host].daemon_up) => {
                Err(Self::peer_error(host, Fault::Unreachable))
            }
            None => Ok(Answer::from_bool(self.with(|w| w.hosts[host].app_running))),
        }
    }

    async fn app_command_on(&self, host: &str, which: AppCommand) -> Result<String, PeerError> {
        self.peer(&format!("app_{}", which.as_str()), host).await?;
        let db_user = self
            .config
            .application
            .as_ref()
            .map(|a| a.db_user.clone())
            .unwrap_or_default();
        let (db_host, db_port) = self.with(|w| w.hosts[host].app_points_to.clone());
        let db_node = self.node_at(&db_host, db_port);
        self.with(|w| match which {
            AppCommand::Stop => {
                if w.hosts[host].app_running {
                    w.hosts.get_mut(host).unwrap().app_running = false;
                    // Its sessions end with it.
                    for n in w.nodes.values_mut() {
                        n.sessions.remove(&db_user);
                    }
                }
            }
            AppCommand::Start => {
                w.hosts.get_mut(host).unwrap().app_running = true;
                // inmanta-server connects where its config points, and
                // exits when that database is down or read-only.
                match db_node.and_then(|d| w.nodes.get_mut(&d)) {
                    Some(n) if n.running && !n.in_recovery => {
                        *n.sessions.entry(db_user.clone()).or_insert(0) += 1;
                    }
                    _ => w.hosts.get_mut(host).unwrap().app_running = false,
                }
            }
            AppCommand::Disable | AppCommand::Enable => {}
        });
        Ok(format!("{} done on {host}", which.as_str()))
    }

    async fn app_healthy_on(&self, host: &str) -> Result<Answer, PeerError> {
        let fault = self.enter("app_health", host);
        Self::hang(fault).await;
        match fault {
            Some(Fault::Unknown) => Ok(Answer::Unknown("health_url answered 418".into())),
            Some(f) => Err(Self::peer_error(host, f)),
            None => Ok(Answer::from_bool(self.with(|w| w.hosts[host].app_running))),
        }
    }

    async fn app_config_on(
        &self,
        host: &str,
        _operation: &str,
        db_host: &str,
        db_port: u16,
    ) -> Result<bool, PeerError> {
        self.peer("app_config", host).await?;
        let want = (db_host.to_owned(), db_port);
        Ok(self.with(|w| {
            let h = w.hosts.get_mut(host).unwrap();
            let changed = h.app_points_to != want;
            h.app_points_to = want;
            changed
        }))
    }

    fn switch_application_config(
        &self,
        _operation: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, String> {
        let me = self.config.local_node.clone();
        if let Some(f) = self.enter("app_config", &me) {
            return Err(format!("cannot write the config file ({f:?})"));
        }
        let want = (host.to_owned(), port);
        Ok(self.with(|w| {
            let h = w.hosts.get_mut(&me).unwrap();
            let changed = h.app_points_to != want;
            h.app_points_to = want;
            changed
        }))
    }

    fn config_file_blocker(&self) -> Option<String> {
        None
    }

    fn shadows(&self) -> Vec<Shadow> {
        Vec::new()
    }
}
