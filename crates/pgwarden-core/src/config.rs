//! The configuration model (`pgwarden.yaml`) and its validation.
//!
//! Parsing is two steps: serde reads the YAML into these structs (unknown keys,
//! wrong types and malformed durations, sizes and addresses are refused there,
//! with the line and column serde_yaml knows), then [`Config::validate`] checks
//! what spans several keys (local_node names a node, names are unique, ...).
//! Those errors carry a YAML path, turned into a line and column by
//! [`locate`], so every error the user sees says file:line:column and what to
//! change. Nothing here touches the file system: checking that the files named
//! in the config are readable is the caller's job (see `pgwarden-daemon`).

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

pub mod lock;

/// The whole configuration of one pgwarden daemon.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Cluster name; a constant label on every metric.
    pub cluster: String,
    /// Which entry of `nodes` this daemon runs beside.
    pub local_node: String,
    /// Where the HTTP listener (metrics, health, API) binds.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Journal of operations and audit log (used by the failover issue).
    pub state_dir: PathBuf,
    /// File holding the Bearer token every mutating request must present.
    pub api_token_file: PathBuf,
    #[serde(default)]
    pub poll: PollConfig,
    pub monitor: MonitorConfig,
    pub replication: ReplicationConfig,
    /// Thresholds of the health rules (an extension of DESIGN.md).
    #[serde(default)]
    pub health: HealthConfig,
    pub nodes: Vec<NodeConfig>,
    /// The application fenced before a switch. Optional for a monitoring-only
    /// deployment; failover refuses to run without it.
    #[serde(default)]
    pub application: Option<ApplicationConfig>,
    /// When this daemon's node is a primary on an older timeline than
    /// another primary (a former primary restarted after a failover), stop
    /// it at once with the node's `stop` command: two writers must not
    /// coexist. Default true; false only reports `stale_primary`.
    #[serde(default = "default_true")]
    pub stop_stale_primary: bool,
    /// HTTPS on the listener (an extension of DESIGN.md). Then every
    /// `nodes[].api` must be an https:// URL.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The clients' door to the primary (DESIGN "Clients that follow the
    /// primary"): with it, an operation pauses and re-points the proxy and
    /// leaves the application running.
    #[serde(default)]
    pub proxy: Option<ProxyConfig>,
    /// Where the operation lock lives (`lock.etcd`); without it the two
    /// daemons agree through their APIs. See [`lock`].
    #[serde(default)]
    pub lock: Option<lock::LockConfig>,
    /// How a rejoin copies (`rejoin.basebackup_max_rate`).
    #[serde(default)]
    pub rejoin: RejoinConfig,
}

/// `rejoin`: how a rejoin's pg_basebackup copies the primary.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RejoinConfig {
    /// pg_basebackup `--max-rate` in bytes per second (e.g. `50MiB`): a cap
    /// on what the copy takes from the primary's disk and network. Default:
    /// no cap. PostgreSQL accepts 32kB to 1GB.
    #[serde(
        default,
        deserialize_with = "opt_byte_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub basebackup_max_rate: Option<u64>,
}

fn opt_byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    byte_size(d).map(Some)
}

/// `proxy`: what stands between the application and PostgreSQL.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    #[serde(default)]
    pub pgbouncer: Option<PgbouncerConfig>,
}

/// `proxy.pgbouncer`: the pgbouncers the application connects through.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PgbouncerConfig {
    /// The hosts (node names) with a pgbouncer; each host's own daemon talks
    /// to its pgbouncer's admin console. Default: every node. On one machine
    /// (loopback tests) name one host only.
    #[serde(default)]
    pub runs_on: Option<Vec<String>>,
    /// The admin console, as seen from the daemon on the same host.
    pub admin: PgbouncerAdmin,
    /// pgbouncer.ini, on each host of `runs_on`.
    pub config_file: PathBuf,
    /// The `[databases]` entry whose `host=` and `port=` are re-pointed.
    pub database: String,
    /// How long PAUSE may wait for the transactions in flight. Default 10s.
    #[serde(with = "humantime_serde", default = "default_pause_timeout")]
    pub pause_timeout: Duration,
    /// The role pgbouncer logs in as on PostgreSQL (an extension of
    /// DESIGN.md): fenced means no session of it is left on the old
    /// primary. Default `application.db_user`; required without `application`.
    #[serde(default)]
    pub db_user: Option<String>,
}

/// `proxy.pgbouncer.admin`: how to reach the admin console (`pgbouncer` database).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PgbouncerAdmin {
    pub host: String,
    pub port: u16,
    /// A user of pgbouncer's `admin_users`.
    pub user: String,
    /// Its password; without it the console must trust this user.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn default_pause_timeout() -> Duration {
    Duration::from_secs(10)
}

impl PgbouncerConfig {
    /// The hosts with a pgbouncer, in the order of `nodes`.
    pub fn hosts(&self, nodes: &[NodeConfig]) -> Vec<String> {
        match &self.runs_on {
            Some(list) => nodes
                .iter()
                .filter(|n| list.contains(&n.name))
                .map(|n| n.name.clone())
                .collect(),
            None => nodes.iter().map(|n| n.name.clone()).collect(),
        }
    }
}

/// The listener's certificate and key, and whom to trust when calling the
/// other daemon.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate (keep it 0600).
    pub key_file: PathBuf,
    /// PEM certificates trusted for the other daemon's API; default
    /// `cert_file` (one certificate shared by both daemons).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// How often and how patiently nodes are polled.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// Time between the starts of two polls of one node. Default 1s.
    #[serde(with = "humantime_serde", default = "default_poll_interval")]
    pub interval: Duration,
    /// Budget of connect + query of one poll of one node. Default 1s.
    #[serde(with = "humantime_serde", default = "default_poll_timeout")]
    pub timeout: Duration,
    /// Consecutive failed polls before a node counts as down. Default 3.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            interval: default_poll_interval(),
            timeout: default_poll_timeout(),
            failure_threshold: default_failure_threshold(),
        }
    }
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_poll_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_failure_threshold() -> u32 {
    3
}

/// The role pgwarden uses to observe (and later promote) the nodes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    pub user: String,
    /// Password file; without it libpq's usual passfile or trust applies.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_dbname")]
    pub dbname: String,
}

fn default_dbname() -> String {
    "postgres".to_owned()
}

/// How the standby replicates from the primary.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Physical slot name on the primary.
    pub slot: String,
    /// What `synchronous_standby_names` holds and the standby's
    /// `primary_conninfo` sets as application_name.
    pub application_name: String,
    pub user: String,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Refuse a failover when the target is further behind, unless forced.
    #[serde(
        deserialize_with = "byte_size",
        default = "default_max_lag_on_failover"
    )]
    pub max_lag_on_failover: u64,
}

fn default_max_lag_on_failover() -> u64 {
    16 * 1024 * 1024
}

/// Thresholds of the health rules. Not in the original contract: added so
/// `lag_high` and `slot_wal_at_risk` have limits an operator can tune.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `lag_high` when a standby's replay position is this far behind. Default 16MiB.
    #[serde(deserialize_with = "byte_size", default = "default_max_lag_bytes")]
    pub max_lag_bytes: u64,
    /// `lag_high` when a standby's replay lag is longer than this. Default 30s.
    #[serde(with = "humantime_serde", default = "default_max_lag_time")]
    pub max_lag_time: Duration,
    /// `slot_wal_at_risk` when the slot holds back more WAL than this. Default 1GiB.
    #[serde(
        deserialize_with = "byte_size",
        default = "default_max_slot_retained_wal"
    )]
    pub max_slot_retained_wal: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            max_lag_bytes: default_max_lag_bytes(),
            max_lag_time: default_max_lag_time(),
            max_slot_retained_wal: default_max_slot_retained_wal(),
        }
    }
}

fn default_max_lag_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_max_lag_time() -> Duration {
    Duration::from_secs(30)
}
fn default_max_slot_retained_wal() -> u64 {
    1024 * 1024 * 1024
}

/// One PostgreSQL node and the pgwarden daemon beside it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Base URL of the pgwarden daemon beside this node.
    #[serde(default)]
    pub api: Option<String>,
    /// Used by that node's own daemon only.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL server binaries; else found on PATH.
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
    #[serde(default)]
    pub start: Option<Vec<String>>,
    #[serde(default)]
    pub stop: Option<Vec<String>>,
    /// The OS user that owns `data_dir` (e.g. postgres): pg_rewind,
    /// pg_basebackup and `pg_ctl status` run as it (runuser when pgwarden
    /// runs as root, sudo -n when it is another user). Unset, or pgwarden's
    /// own user: directly. A
    /// rejoin also writes into the data directory and renames it, so
    /// pgwarden must run as root or as that owner.
    #[serde(default)]
    pub os_user: Option<String>,
    /// `member` (default): one of the primary/standby pair. `replica`: an
    /// asynchronous read-only replica (DESIGN.md "More than two nodes"),
    /// never in synchronous_standby_names, never a target unless forced.
    #[serde(default)]
    pub role: NodeRole,
    /// The application_name this node's walreceiver connects with, which is
    /// how its `pg_stat_replication` row is told apart from the others on
    /// one address. Replicas only (default: the node's name); the pair's
    /// standby connects as `replication.application_name`.
    #[serde(default)]
    pub application_name: Option<String>,
    /// TLS to this node, as libpq's sslmode, for every connection pgwarden
    /// makes to it (the poll, operations) and every conninfo it writes or
    /// passes (primary_conninfo of a node streaming from it, pg_rewind's and
    /// pg_basebackup's source). Unset: libpq's default, `prefer`, and no
    /// `sslmode` written into a conninfo.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// PEM CA certificates that sign this node's server certificate; needed
    /// by `verify-ca` and `verify-full`. Must be readable by pgwarden and, for
    /// the conninfos it writes, by the OS user of the nodes streaming from it.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
}

/// `nodes[].sslmode`: libpq's values, with libpq's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it, else plain text; the certificate is
    /// checked only against `sslrootcert`, when one is given.
    Prefer,
    /// TLS or nothing; the certificate is checked as for `prefer`.
    Require,
    /// TLS, the certificate signed by a CA of `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate names `host`.
    VerifyFull,
}

impl SslMode {
    /// The value in a libpq conninfo.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate must be signed by a known CA.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// `nodes[].role`: whether a node belongs to the failover pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// The primary or its synchronous standby (exactly two nodes).
    #[default]
    Member,
    /// An asynchronous read-only replica of the primary.
    Replica,
}

impl NodeConfig {
    pub fn is_replica(&self) -> bool {
        self.role == NodeRole::Replica
    }

    /// The application_name in this node's `primary_conninfo`, and so in its
    /// `pg_stat_replication` row on the primary.
    pub fn walreceiver_name<'a>(&'a self, replication: &'a ReplicationConfig) -> &'a str {
        match self.role {
            NodeRole::Member => &replication.application_name,
            NodeRole::Replica => self.application_name.as_deref().unwrap_or(&self.name),
        }
    }
}

/// The application (inmanta-server) that is fenced before a switch.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationConfig {
    pub name: String,
    pub stop: Vec<String>,
    pub start: Vec<String>,
    /// Exit status 0 means running.
    pub is_running: Vec<String>,
    /// Fenced means: no session of this role remains on any reachable node.
    pub db_user: String,
    pub config_file: PathBuf,
    #[serde(default = "default_config_section")]
    pub config_section: String,
    #[serde(default = "default_host_key")]
    pub host_key: String,
    #[serde(default = "default_port_key")]
    pub port_key: String,
    #[serde(with = "humantime_serde", default = "default_stop_timeout")]
    pub stop_timeout: Duration,
    #[serde(with = "humantime_serde", default = "default_start_timeout")]
    pub start_timeout: Duration,
    #[serde(default)]
    pub health_url: Option<String>,
    /// After the application stopped, how long its sessions may take to
    /// disappear before the remaining ones are terminated. Default 5s.
    #[serde(with = "humantime_serde", default = "default_session_grace")]
    pub session_grace: Duration,
    /// Terminate sessions of `db_user` that outlive the grace period (a
    /// killed client's backend busy in a long query never notices). Default true.
    #[serde(default = "default_true")]
    pub terminate_lingering_sessions: bool,
    /// The hosts (by node name) with an instance of the application
    /// installed; each host's own daemon runs the commands above for it.
    /// Default: every node. On one machine (the demo, loopback tests) name
    /// one host only: both daemons would otherwise see the same process.
    #[serde(default)]
    pub runs_on: Option<Vec<String>>,
    /// Where the one instance runs after an operation.
    #[serde(default)]
    pub placement: Placement,
    /// Optional: keeps a stopped instance from starting by itself (e.g.
    /// `systemctl disable inmanta-server`); run on every host fenced.
    #[serde(default)]
    pub disable: Option<Vec<String>>,
    /// Optional: undoes `disable` on the host where the instance starts.
    #[serde(default)]
    pub enable: Option<Vec<String>>,
}

/// `application.placement`: which host of `runs_on` starts the application.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Where it ran before, if that host's daemon answers; else on the new
    /// primary's host.
    #[default]
    Stay,
    /// On the new primary's host.
    FollowPrimary,
}

impl ApplicationConfig {
    /// The hosts with an instance, in the order of `nodes`.
    pub fn hosts(&self, nodes: &[NodeConfig]) -> Vec<String> {
        match &self.runs_on {
            Some(list) => nodes
                .iter()
                .filter(|n| list.contains(&n.name))
                .map(|n| n.name.clone())
                .collect(),
            None => nodes.iter().map(|n| n.name.clone()).collect(),
        }
    }
}

fn default_session_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_true() -> bool {
    true
}

fn default_config_section() -> String {
    "database".to_owned()
}
fn default_host_key() -> String {
    "host".to_owned()
}
fn default_port_key() -> String {
    "port".to_owned()
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(120)
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "`{text}` is not an IP address and port such as 127.0.0.1:8008"
        ))
    })
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Number(n) => Ok(n),
        Size::Text(t) => parse_byte_size(&t).map_err(serde::de::Error::custom),
    }
}

/// Parses `16MiB`, `16MB`, `512kB`, `1GiB`, `4096`. Like PostgreSQL, the
/// decimal-looking units (kB, MB, GB, TB) mean powers of 1024.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || {
        format!("`{text}` is not a size: write a whole number with a unit, such as 16MiB, 512kB or 1GiB")
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" | "KiB" | "k" | "K" => 1 << 10,
        "MB" | "MiB" | "M" => 1 << 20,
        "GB" | "GiB" | "G" => 1 << 30,
        "TB" | "TiB" | "T" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

/// One step of a path into the YAML document, to point at a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

impl fmt::Display for PathSeg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathSeg::Key(k) => write!(f, ".{k}"),
            PathSeg::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A problem found by validation: where (a YAML path) and what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub path: Vec<PathSeg>,
    pub message: String,
}

fn key(k: &str) -> PathSeg {
    PathSeg::Key(k.to_owned())
}

/// One located problem of a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Why a configuration was refused: the file and every located problem.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub origin: String,
    pub problems: Vec<Located>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", self.origin, p.line, p.column, p.message)?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// An error at a known line and column of `origin`.
    pub fn at(origin: &str, line: usize, column: usize, message: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.to_owned(),
            problems: vec![Located {
                line,
                column,
                message: message.into(),
            }],
        }
    }

    /// Locates validation problems in `text` (the file they came from).
    pub fn from_invalid(origin: &str, text: &str, invalid: &[Invalid]) -> Self {
        let problems = invalid
            .iter()
            .map(|inv| {
                let (line, column) = locate(text, &inv.path);
                Located {
                    line,
                    column,
                    message: inv.message.clone(),
                }
            })
            .collect();
        ConfigError {
            origin: origin.to_owned(),
            problems,
        }
    }
}

impl Config {
    /// Parses and validates a config; `origin` names the file in errors.
    pub fn parse_str(origin: &str, text: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(
            text,
        ))
        .map_err(|e| {
            // serde_yaml knows where syntax errors are, but puts errors
            // raised while converting a value (a bad address, duration or
            // size) at the enclosing mapping; the path finds the value.
            let path_text = e.path().to_string();
            let path = parse_error_path(&path_text);
            let yaml = e.into_inner();
            let message = yaml.to_string();
            // libyaml's syntax errors ("... while scanning ...") carry the
            // exact position; the path only says where parsing had got to.
            let syntax = message.contains("while scanning") || message.contains("while parsing");
            let located = match locate(text, &path) {
                _ if syntax => None,
                (1, 1) => None,
                at => Some(at),
            };
            let (line, column) = located
                .or(yaml.location().map(|l| (l.line(), l.column())))
                .unwrap_or((1, 1));
            let mut explained = explain_serde_error(if syntax { "" } else { &path_text }, &message);
            let bad_line = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
            let indent = &bad_line[..bad_line.len() - bad_line.trim_start().len()];
            if syntax && indent.contains('\t') {
                explained
                    .push_str(" (this line is indented with a tab: YAML indents with spaces only)");
            }
            ConfigError::at(origin, line, column, explained)
        })?;
        let invalid = config.validate();
        if invalid.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::from_invalid(origin, text, &invalid))
        }
    }

    /// Checks what serde cannot: constraints across keys and value ranges.
    pub fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        let mut bad = |path: Vec<PathSeg>, message: String| out.push(Invalid { path, message });

        if let Some(rate) = self.rejoin.basebackup_max_rate {
            if !(32 << 10..=1 << 30).contains(&rate) {
                bad(
                    vec![key("rejoin"), key("basebackup_max_rate")],
                    format!("rejoin.basebackup_max_rate: pg_basebackup accepts 32kB to 1GB per second, not {rate} bytes: write e.g. 50MiB, or leave it out for no cap"),
                );
            }
        }

        if self.cluster.trim().is_empty() {
            bad(
                vec![key("cluster")],
                "cluster: give the cluster a name, e.g. `inmanta`".into(),
            );
        }
        let members = self.members().count();
        if members < 2 {
            bad(
                vec![key("nodes")],
                format!(
                    "nodes: list at least two nodes (a primary and a standby) that are not `role: replica`; found {members}"
                ),
            );
        } else if members > 2 {
            bad(
                vec![key("nodes")],
                format!(
                    "nodes: the primary/standby pair is two nodes, found {members} without `role: replica`: give every further node `role: replica` (an asynchronous read-only replica)"
                ),
            );
        }
        let mut names = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        let mut walreceivers = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let at = |k: &str| vec![key("nodes"), PathSeg::Index(i), key(k)];
            if !valid_name(&n.name) {
                bad(
                    at("name"),
                    format!(
                        "nodes[{i}].name `{}` is not a valid node name: use letters, digits, `-`, `_` or `.`",
                        n.name
                    ),
                );
            } else if !names.insert(n.name.clone()) {
                bad(
                    at("name"),
                    format!("node name `{}` is used twice: names must be unique", n.name),
                );
            }
            if n.host.trim().is_empty() || n.host.contains(char::is_whitespace) {
                bad(
                    at("host"),
                    format!("nodes[{i}].host `{}` is not a host name or address", n.host),
                );
            }
            if n.port == 0 {
                bad(
                    at("port"),
                    format!("nodes[{i}].port must be between 1 and 65535"),
                );
            }
            if !addrs.insert((n.host.clone(), n.port)) {
                bad(
                    at("port"),
                    format!(
                        "nodes[{i}] has the same host and port ({}:{}) as another node",
                        n.host, n.port
                    ),
                );
            }
            if let Some(api) = &n.api {
                if !(api.starts_with("http://") || api.starts_with("https://")) || api.len() < 10 {
                    bad(
                        at("api"),
                        format!(
                            "nodes[{i}].api `{api}` must be a URL such as http://10.0.0.1:8008"
                        ),
                    );
                } else if self.tls.is_some() && !api.starts_with("https://") {
                    bad(
                        at("api"),
                        format!(
                            "nodes[{i}].api `{api}` must be an https:// URL: with `tls`, the daemons speak only HTTPS"
                        ),
                    );
                }
            }
            for (k, cmd) in [("start", &n.start), ("stop", &n.stop)] {
                if let Some(cmd) = cmd {
                    check_command(cmd, at(k), &format!("nodes[{i}].{k}"), &mut bad);
                }
            }
            if let Some(app) = &n.application_name {
                if !n.is_replica() {
                    bad(
                        at("application_name"),
                        format!(
                            "nodes[{i}].application_name: only a `role: replica` node has its own; the primary/standby pair connects as replication.application_name (`{}`)",
                            self.replication.application_name
                        ),
                    );
                } else if !valid_name(app) {
                    bad(
                        at("application_name"),
                        format!("nodes[{i}].application_name `{app}` must be letters, digits, `-`, `_` or `.`"),
                    );
                }
            }
            if n.sslmode.is_some_and(SslMode::verifies) && n.sslrootcert.is_none() {
                bad(
                    at("sslmode"),
                    format!(
                        "nodes[{i}].sslmode `{}` checks the server's certificate against a CA: give nodes[{i}].sslrootcert (the PEM file of the CA that signed it)",
                        n.sslmode.map(SslMode::as_str).unwrap_or_default()
                    ),
                );
            }
            if n.sslmode == Some(SslMode::Disable) && n.sslrootcert.is_some() {
                bad(
                    at("sslrootcert"),
                    format!("nodes[{i}].sslrootcert is given but sslmode is `disable`: remove one of them"),
                );
            }
            if n.is_replica() {
                let own = n.walreceiver_name(&self.replication);
                if own == self.replication.application_name {
                    bad(
                        at(if n.application_name.is_some() { "application_name" } else { "name" }),
                        format!(
                            "nodes[{i}] is a replica connecting as `{own}`, the synchronous standby's application_name: synchronous_standby_names would make it synchronous; give it another application_name"
                        ),
                    );
                } else if !walreceivers.insert(own.to_owned()) {
                    bad(
                        at(if n.application_name.is_some() { "application_name" } else { "name" }),
                        format!(
                            "nodes[{i}] connects as application_name `{own}` like another replica: each replica needs its own to be told apart in pg_stat_replication"
                        ),
                    );
                }
            }
        }
        if !self.nodes.iter().any(|n| n.name == self.local_node) {
            let known: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            bad(
                vec![key("local_node")],
                format!(
                    "local_node `{}` is not one of the nodes ({}): name the node this daemon runs beside",
                    self.local_node,
                    known.join(", ")
                ),
            );
        }
        if self.poll.interval.is_zero() {
            bad(
                vec![key("poll"), key("interval")],
                "poll.interval must be longer than 0s".into(),
            );
        }
        if self.poll.timeout.is_zero() {
            bad(
                vec![key("poll"), key("timeout")],
                "poll.timeout must be longer than 0s".into(),
            );
        }
        if self.poll.failure_threshold == 0 {
            bad(
                vec![key("poll"), key("failure_threshold")],
                "poll.failure_threshold must be at least 1".into(),
            );
        }
        if self.monitor.user.trim().is_empty() {
            bad(
                vec![key("monitor"), key("user")],
                "monitor.user: name the monitoring role".into(),
            );
        }
        if !valid_slot_name(&self.replication.slot) {
            bad(
                vec![key("replication"), key("slot")],
                format!(
                    "replication.slot `{}` is not a valid slot name: use lower-case letters, digits and `_`, at most 63",
                    self.replication.slot
                ),
            );
        }
        if !valid_name(&self.replication.application_name) {
            bad(
                vec![key("replication"), key("application_name")],
                format!(
                    "replication.application_name `{}` must be letters, digits, `-`, `_` or `.`",
                    self.replication.application_name
                ),
            );
        }
        if let Some(app) = &self.application {
            let at = |k: &str| vec![key("application"), key(k)];
            for (k, cmd) in [
                ("stop", &app.stop),
                ("start", &app.start),
                ("is_running", &app.is_running),
            ] {
                check_command(cmd, at(k), &format!("application.{k}"), &mut bad);
            }
            for (k, cmd) in [("disable", &app.disable), ("enable", &app.enable)] {
                if let Some(cmd) = cmd {
                    check_command(cmd, at(k), &format!("application.{k}"), &mut bad);
                }
            }
            if let Some(list) = &app.runs_on {
                let known: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                for (i, h) in list.iter().enumerate() {
                    if !known.contains(&h.as_str()) {
                        bad(
                            vec![key("application"), key("runs_on"), PathSeg::Index(i)],
                            format!(
                                "application.runs_on[{i}] `{h}` is not a node ({}): name the hosts by their node name",
                                known.join(", ")
                            ),
                        );
                    }
                }
                if list.is_empty() {
                    bad(
                        at("runs_on"),
                        "application.runs_on: name at least one host (or leave it out: every node)"
                            .into(),
                    );
                }
            }
            if app.db_user.trim().is_empty() {
                bad(
                    at("db_user"),
                    "application.db_user: name the application's database role".into(),
                );
            }
        }
        if let Some(pb) = self.pgbouncer() {
            validate_pgbouncer(self, pb, &mut bad);
        }
        out.extend(lock::validate(self.lock.as_ref()));
        out
    }

    /// The configured pgbouncers, if any.
    pub fn pgbouncer(&self) -> Option<&PgbouncerConfig> {
        self.proxy.as_ref().and_then(|p| p.pgbouncer.as_ref())
    }

    /// The role whose sessions mean "not fenced": pgbouncer's when a proxy
    /// is the door, else the application's.
    pub fn fenced_role(&self) -> Option<&str> {
        self.pgbouncer()
            .and_then(|p| p.db_user.as_deref())
            .or(self.application.as_ref().map(|a| a.db_user.as_str()))
    }

    /// The etcd lock, when `lock.etcd` is configured.
    pub fn etcd_lock(&self) -> Option<&lock::EtcdLockConfig> {
        self.lock.as_ref().and_then(|l| l.etcd.as_ref())
    }

    /// The entry of `nodes` this daemon runs beside (validated to exist).
    pub fn local(&self) -> &NodeConfig {
        self.node(&self.local_node)
            .expect("validated: local_node names a node")
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The two nodes of the primary/standby pair (not `role: replica`).
    pub fn members(&self) -> impl Iterator<Item = &NodeConfig> {
        self.nodes.iter().filter(|n| !n.is_replica())
    }

    /// The `role: replica` nodes.
    pub fn replicas(&self) -> impl Iterator<Item = &NodeConfig> {
        self.nodes.iter().filter(|n| n.is_replica())
    }

    /// Whether `name` is a configured `role: replica` node.
    pub fn is_replica(&self, name: &str) -> bool {
        self.node(name).is_some_and(NodeConfig::is_replica)
    }
}

fn validate_pgbouncer(
    config: &Config,
    pb: &PgbouncerConfig,
    bad: &mut impl FnMut(Vec<PathSeg>, String),
) {
    let at = |k: &str| vec![key("proxy"), key("pgbouncer"), key(k)];
    if let Some(list) = &pb.runs_on {
        let known: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        for (i, h) in list.iter().enumerate() {
            if !known.contains(&h.as_str()) {
                let mut path = at("runs_on");
                path.push(PathSeg::Index(i));
                bad(
                    path,
                    format!(
                        "proxy.pgbouncer.runs_on[{i}] `{h}` is not a node ({}): name the hosts by their node name",
                        known.join(", ")
                    ),
                );
            }
        }
        if list.is_empty() {
            bad(
                at("runs_on"),
                "proxy.pgbouncer.runs_on: name at least one host (or leave it out: every node)"
                    .into(),
            );
        }
    }
    // The entry name is matched as pgbouncer reads it: a bare word.
    if pb.database.is_empty()
        || pb
            .database
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '=' | '[' | ']' | ';' | '#' | '"' | '\''))
    {
        bad(
            at("database"),
            format!(
                "proxy.pgbouncer.database `{}`: name the [databases] entry of pgbouncer.ini (a word without spaces, `=`, quotes or brackets)",
                pb.database
            ),
        );
    }
    if pb.pause_timeout.is_zero() {
        bad(
            at("pause_timeout"),
            "proxy.pgbouncer.pause_timeout: give PAUSE some time, e.g. 10s".into(),
        );
    }
    if pb.admin.user.trim().is_empty() {
        bad(
            vec![key("proxy"), key("pgbouncer"), key("admin"), key("user")],
            "proxy.pgbouncer.admin.user: name a user of pgbouncer's admin_users".into(),
        );
    }
    match (&pb.db_user, &config.application) {
        (Some(u), _) if u.trim().is_empty() => bad(
            at("db_user"),
            "proxy.pgbouncer.db_user: name the role pgbouncer logs in as".into(),
        ),
        (None, None) => bad(
            vec![key("proxy"), key("pgbouncer")],
            "proxy.pgbouncer: without an `application` section, set db_user (the role pgbouncer logs in as on PostgreSQL)".into(),
        ),
        _ => {}
    }
}

fn check_command(
    cmd: &[String],
    path: Vec<PathSeg>,
    what: &str,
    bad: &mut impl FnMut(Vec<PathSeg>, String),
) {
    if cmd.is_empty() || cmd[0].trim().is_empty() {
        bad(
            path,
            format!("{what} must be a command as a list of arguments, e.g. [systemctl, start, postgresql]"),
        );
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_slot_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `nodes[1].port` (serde_path_to_error's notation) as path segments.
fn parse_error_path(text: &str) -> Vec<PathSeg> {
    let mut out = Vec::new();
    for part in text.split('.').filter(|p| !p.is_empty() && *p != "?") {
        let (name, rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            out.push(key(name));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(PathSeg::Index(i));
            }
        }
    }
    out
}

/// serde_yaml's messages name Rust types; say it in the user's words.
fn explain_serde_error(path: &str, msg: &str) -> String {
    // serde_yaml appends " at line L column C" and prepends "path: "; we
    // print the location ourselves and name the path in our own words.
    let msg = strip_positions(msg);
    let msg = msg.as_str();
    let parent = path.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
    let msg = [path, parent]
        .iter()
        .filter(|p| !p.is_empty() && **p != "?")
        .find_map(|p| msg.strip_prefix(&format!("{p}: ")))
        .unwrap_or(msg);
    let under = if parent.is_empty() || parent == "?" {
        String::new()
    } else {
        format!(" under `{parent}`")
    };
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let (field, expected) = rest.split_once(", expected").unwrap_or((rest, ""));
        return format!(
            "unknown key {field}{under}: remove it or fix its spelling (expected{})",
            expected.trim_end_matches('.')
        );
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        let within = if path.is_empty() || path == "?" {
            String::new()
        } else {
            format!(" under `{path}`")
        };
        return format!("missing key {rest}{within}: add it (see config/pgwarden.example.yaml)");
    }
    if path.is_empty() || path == "?" {
        msg.to_owned()
    } else {
        format!("{path}: {msg}")
    }
}

/// Removes every " at line L column C" (we print the position up front).
fn strip_positions(msg: &str) -> String {
    let mut out = String::new();
    let mut rest = msg;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let skip = after
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_digit() || c == ' ' || "column".contains(c)))
            .map_or(after.len(), |(j, _)| j);
        rest = &after[skip..];
    }
    out.push_str(rest);
    out
}

/// Finds the line and column (1-based) of a YAML path in block-style YAML.
///
/// A small indentation walker rather than a second YAML parser: configs are
/// block style, and when a path cannot be followed the closest located
/// ancestor (or the first line) is returned, so an error is never lost.
pub fn locate(text: &str, path: &[PathSeg]) -> (usize, usize) {
    // Each meaningful line as (line number, indent of its content, content);
    // a list item `- a: 1` yields a dash entry plus `a: 1` at indent + 2.
    struct Item<'a> {
        line: usize,
        indent: usize,
        dash: bool,
        content: &'a str,
    }
    let mut items = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
            continue;
        }
        let mut indent = raw.len() - trimmed.len();
        let mut content = trimmed;
        while let Some(rest) =
            content
                .strip_prefix("- ")
                .or(if content == "-" { Some("") } else { None })
        {
            items.push(Item {
                line: n + 1,
                indent,
                dash: true,
                content: "",
            });
            let spaces = rest.len() - rest.trim_start().len();
            indent += 2 + spaces;
            content = rest.trim_start();
            if content.is_empty() {
                break;
            }
        }
        if !content.is_empty() {
            items.push(Item {
                line: n + 1,
                indent,
                dash: false,
                content,
            });
        }
    }

    let mut best = (1, 1);
    let (mut lo, mut hi) = (0, items.len());
    // The item whose children we search: its indent and whether it is a key
    // (a key's list may sit at the key's own indent: `nodes:` then `- name:`).
    let mut parent: Option<(usize, bool)> = None;
    for seg in path {
        let in_scope = |it: &Item| match parent {
            None => true,
            Some((p, is_key)) => it.indent > p || (is_key && it.dash && it.indent == p),
        };
        let Some(scope_indent) = items[lo..hi]
            .iter()
            .filter(|it| in_scope(it))
            .map(|it| it.indent)
            .min()
        else {
            return best;
        };
        let found = match seg {
            PathSeg::Key(k) => (lo..hi).find(|&j| {
                let it = &items[j];
                !it.dash
                    && it.indent == scope_indent
                    && it
                        .content
                        .strip_prefix(k.as_str())
                        .is_some_and(|r| r.trim_start().starts_with(':'))
            }),
            PathSeg::Index(want) => (lo..hi)
                .filter(|&j| items[j].dash && items[j].indent == scope_indent)
                .nth(*want),
        };
        let Some(j) = found else { return best };
        let it = &items[j];
        best = (it.line, it.indent + 1);
        hi = (j + 1..hi)
            .find(|&m| {
                let next = &items[m];
                next.indent < it.indent || (next.indent == it.indent && (it.dash || !next.dash))
            })
            .unwrap_or(hi);
        lo = j + 1;
        parent = Some((it.indent, !it.dash));
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
cluster: inmanta
local_node: pg-a
listen: 127.0.0.1:8008
state_dir: /var/lib/pgwarden
api_token_file: /etc/pgwarden/api.token
poll:
  interval: 1s
  timeout: 1s
  failure_threshold: 3
monitor:
  user: pgwarden
  password_file: /etc/pgwarden/monitor.password
  dbname: postgres
replication:
  slot: replication
  application_name: inmanta
  user: replication
  max_lag_on_failover: 16MiB
nodes:
  - name: pg-a
    host: 10.0.0.1
    port: 5432
    api: http://10.0.0.1:8008
  - name: pg-b
    host: 10.0.0.2
    port: 5432
    api: http://10.0.0.2:8008
application:
  name: inmanta-server
  stop: [systemctl, stop, inmanta-server]
  start: [systemctl, start, inmanta-server]
  is_running: [systemctl, is-active, --quiet, inmanta-server]
  db_user: inmanta
  config_file: /etc/inmanta/inmanta.d/database.cfg
"#;

    fn err(text: &str) -> ConfigError {
        Config::parse_str("pgwarden.yaml", text).expect_err("config should be refused")
    }

    #[test]
    fn the_example_parses_with_defaults() {
        let c = Config::parse_str("x", EXAMPLE).unwrap();
        assert_eq!(c.local().host, "10.0.0.1");
        assert_eq!(c.replication.max_lag_on_failover, 16 << 20);
        assert_eq!(c.health.max_lag_bytes, 16 << 20);
        let app = c.application.unwrap();
        assert_eq!(app.config_section, "database");
        assert_eq!(app.stop_timeout, Duration::from_secs(60));
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let text = include_str!("../../../config/pgwarden.example.yaml");
        let c = Config::parse_str("pgwarden.example.yaml", text).unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.health.max_slot_retained_wal, 1 << 30);
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_position() {
        let text = EXAMPLE.replace("  failure_threshold: 3", "  failure_treshold: 3");
        let e = err(&text);
        let p = &e.problems[0];
        assert_eq!((p.line, p.column), (10, 3), "{e}");
        assert!(p.message.contains("unknown key `failure_treshold`"), "{e}");
    }

    #[test]
    fn the_rejoin_copy_rate_is_a_size_within_what_pg_basebackup_accepts() {
        let c = Config::parse_str("x", EXAMPLE).unwrap();
        assert_eq!(c.rejoin.basebackup_max_rate, None, "no cap by default");
        let c = Config::parse_str(
            "x",
            &format!("{EXAMPLE}rejoin:\n  basebackup_max_rate: 8MiB\n"),
        )
        .unwrap();
        assert_eq!(c.rejoin.basebackup_max_rate, Some(8 << 20));
        let e = err(&format!("{EXAMPLE}rejoin:\n  basebackup_max_rate: 1kB\n"));
        assert!(e.to_string().contains("32kB to 1GB"), "{e}");
    }

    #[test]
    fn a_bad_duration_is_refused_with_its_position() {
        let e = err(&EXAMPLE.replace("interval: 1s", "interval: soon"));
        assert_eq!(e.problems[0].line, 8, "{e}");
    }

    #[test]
    fn a_bad_listen_address_says_what_to_write() {
        let e = err(&EXAMPLE.replace("127.0.0.1:8008", "localhost"));
        assert_eq!(e.problems[0].line, 4, "{e}");
        assert!(e.to_string().contains("such as 127.0.0.1:8008"), "{e}");
    }

    #[test]
    fn a_missing_key_is_named() {
        let e = err(&EXAMPLE.replace("local_node: pg-a\n", ""));
        assert!(e.to_string().contains("missing key `local_node`"), "{e}");
    }

    #[test]
    fn an_unknown_local_node_points_at_its_line() {
        let e = err(&EXAMPLE.replace("local_node: pg-a", "local_node: pg-c"));
        let p = &e.problems[0];
        assert_eq!((p.line, p.column), (3, 1), "{e}");
        assert!(p.message.contains("pg-a, pg-b"), "{e}");
        assert!(
            e.to_string()
                .starts_with("pgwarden.yaml:3:1: local_node `pg-c`"),
            "{e}"
        );
    }

    #[test]
    fn a_duplicate_node_name_points_at_the_second() {
        let e = err(&EXAMPLE.replace("name: pg-b", "name: pg-a"));
        let p = &e.problems[0];
        assert_eq!((p.line, p.column), (25, 5), "{e}");
        assert!(p.message.contains("used twice"), "{e}");
    }

    #[test]
    fn one_node_is_not_a_cluster() {
        let cut = EXAMPLE.find("  - name: pg-b").unwrap();
        let end = EXAMPLE.find("application:").unwrap();
        let text = format!("{}{}", &EXAMPLE[..cut], &EXAMPLE[end..]);
        let e = err(&text);
        assert!(e.to_string().contains("at least two nodes"), "{e}");
        assert_eq!(e.problems[0].line, 20, "{e}");
    }

    #[test]
    fn several_problems_are_all_reported() {
        let text = EXAMPLE
            .replace(
                "port: 5432\n    api: http://10.0.0.2:8008",
                "port: 0\n    api: ftp://x",
            )
            .replace("slot: replication", "slot: Bad-Slot");
        let e = err(&text);
        let lines: Vec<usize> = e.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![27, 28, 16], "{e}");
    }

    #[test]
    fn an_empty_command_is_refused() {
        let e = err(&EXAMPLE.replace("stop: [systemctl, stop, inmanta-server]", "stop: []"));
        assert!(
            e.to_string().contains("application.stop must be a command"),
            "{e}"
        );
        assert_eq!(e.problems[0].line, 31, "{e}");
    }

    const REPLICA: &str = "  - name: ro-1\n    host: 10.0.0.3\n    port: 5432\n    role: replica\n";

    fn with_nodes(extra: &str) -> String {
        EXAMPLE.replace("application:\n", &format!("{extra}application:\n"))
    }

    #[test]
    fn a_replica_connects_as_its_own_name() {
        let c = Config::parse_str("x", &with_nodes(REPLICA)).unwrap();
        let ro = c.node("ro-1").unwrap();
        assert!(ro.is_replica() && c.is_replica("ro-1") && !c.is_replica("pg-b"));
        assert_eq!(ro.walreceiver_name(&c.replication), "ro-1");
        assert_eq!(
            c.node("pg-b").unwrap().walreceiver_name(&c.replication),
            "inmanta"
        );
        assert_eq!(c.members().count(), 2);
        let named = format!("{REPLICA}    application_name: reports\n");
        let c = Config::parse_str("x", &with_nodes(&named)).unwrap();
        assert_eq!(
            c.node("ro-1").unwrap().walreceiver_name(&c.replication),
            "reports"
        );
    }

    #[test]
    fn sslmode_takes_libpq_values_and_an_unknown_one_points_at_its_line() {
        let tls = "    api: http://10.0.0.2:8008\n    sslmode: verify-full\n    sslrootcert: /etc/pgwarden/pg-ca.crt\n";
        let c = Config::parse_str(
            "x",
            &EXAMPLE.replace("    api: http://10.0.0.2:8008\n", tls),
        )
        .unwrap();
        let b = c.node("pg-b").unwrap();
        assert_eq!(b.sslmode, Some(SslMode::VerifyFull));
        assert_eq!(b.sslmode.unwrap().as_str(), "verify-full");
        assert_eq!(c.node("pg-a").unwrap().sslmode, None);
        let e = err(&EXAMPLE.replace(
            "    api: http://10.0.0.2:8008\n",
            "    api: http://10.0.0.2:8008\n    sslmode: verify_full\n",
        ));
        let p = &e.problems[0];
        assert_eq!(p.line, 29, "{e}");
        assert!(
            p.message.contains("verify_full") && p.message.contains("verify-full"),
            "{e}"
        );
    }

    #[test]
    fn a_verifying_sslmode_needs_sslrootcert() {
        let e = err(&EXAMPLE.replace(
            "    api: http://10.0.0.2:8008\n",
            "    api: http://10.0.0.2:8008\n    sslmode: verify-ca\n",
        ));
        let p = &e.problems[0];
        assert_eq!(p.line, 29, "{e}");
        assert!(p.message.contains("nodes[1].sslrootcert"), "{e}");
        let e = err(&EXAMPLE.replace(
            "    api: http://10.0.0.2:8008\n",
            "    api: http://10.0.0.2:8008\n    sslmode: disable\n    sslrootcert: /x.crt\n",
        ));
        assert!(e.to_string().contains("sslmode is `disable`"), "{e}");
    }

    #[test]
    fn the_pair_stays_two_nodes() {
        let third = REPLICA.replace("    role: replica\n", "");
        let e = err(&with_nodes(&third));
        assert!(
            e.to_string().contains("found 3 without `role: replica`"),
            "{e}"
        );
        let lone = EXAMPLE.replace(
            "    api: http://10.0.0.2:8008\n",
            "    api: http://10.0.0.2:8008\n    role: replica\n",
        );
        let e = err(&lone);
        assert!(e.to_string().contains("at least two nodes"), "{e}");
    }

    #[test]
    fn a_replica_never_shares_the_standby_application_name() {
        let e = err(&with_nodes(&format!(
            "{REPLICA}    application_name: inmanta\n"
        )));
        assert!(e.to_string().contains("would make it synchronous"), "{e}");
        let two = format!(
            "{REPLICA}{}",
            REPLICA
                .replace("ro-1", "ro-2")
                .replace("10.0.0.3", "10.0.0.4")
        );
        let clash = two.replacen(
            "    role: replica\n",
            "    role: replica\n    application_name: ro-2\n",
            1,
        );
        let e = err(&with_nodes(&clash));
        assert!(e.to_string().contains("like another replica"), "{e}");
        let member_named = EXAMPLE.replace(
            "    api: http://10.0.0.2:8008\n",
            "    api: http://10.0.0.2:8008\n    application_name: other\n",
        );
        let e = err(&member_named);
        assert!(e.to_string().contains("only a `role: replica` node"), "{e}");
    }

    #[test]
    fn sizes_follow_postgresql_units() {
        assert_eq!(parse_byte_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_byte_size("16MB"), Ok(16 << 20));
        assert_eq!(parse_byte_size("512kB"), Ok(512 << 10));
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert!(parse_byte_size("16 parsecs").is_err());
        assert!(parse_byte_size("99999999999TB").is_err());
    }

    #[test]
    fn locate_walks_nested_lists() {
        let text = "a:\n  b: 1\nnodes:\n  - name: x\n    host: h\n  - name: y\n    host: k\nflat:\n- name: z\n";
        let path = |v: &[PathSeg]| locate(text, v);
        assert_eq!(path(&[key("a"), key("b")]), (2, 3));
        assert_eq!(
            path(&[key("nodes"), PathSeg::Index(1), key("host")]),
            (7, 5)
        );
        assert_eq!(
            path(&[key("nodes"), PathSeg::Index(0), key("name")]),
            (4, 5)
        );
        // Unknown tails fall back to the closest ancestor.
        assert_eq!(
            path(&[key("nodes"), PathSeg::Index(5), key("host")]),
            (3, 1)
        );
        assert_eq!(path(&[key("zzz")]), (1, 1));
        // A list at its key's own indentation.
        assert_eq!(path(&[key("flat"), PathSeg::Index(0), key("name")]), (9, 3));
    }

    const PGBOUNCER: &str = "proxy:\n  pgbouncer:\n    runs_on: [pg-a]\n    admin: {host: 127.0.0.1, port: 6432, user: pgbouncer, password_file: /etc/pgwarden/pgbouncer.password}\n    config_file: /etc/pgbouncer/pgbouncer.ini\n    database: inmanta\n";

    #[test]
    fn a_pgbouncer_proxy_parses_with_its_defaults() {
        let c = Config::parse_str("x", &format!("{EXAMPLE}{PGBOUNCER}")).unwrap();
        let pb = c.pgbouncer().unwrap();
        assert_eq!(pb.pause_timeout, Duration::from_secs(10));
        assert_eq!(pb.hosts(&c.nodes), vec!["pg-a".to_owned()]);
        assert_eq!(pb.admin.port, 6432);
        // Without its own db_user, the application's role is the fenced one.
        assert_eq!(c.fenced_role(), Some("inmanta"));
    }

    #[test]
    fn a_pgbouncer_proxy_without_application_needs_db_user() {
        let end = EXAMPLE.find("application:").unwrap();
        let e = err(&format!("{}{PGBOUNCER}", &EXAMPLE[..end]));
        assert!(e.to_string().contains("set db_user"), "{e}");
        let with = format!("{}{PGBOUNCER}    db_user: app\n", &EXAMPLE[..end]);
        let c = Config::parse_str("x", &with).unwrap();
        assert!(c.application.is_none());
        assert_eq!(c.fenced_role(), Some("app"));
    }

    #[test]
    fn a_bad_pgbouncer_section_points_at_its_lines() {
        let text = format!("{EXAMPLE}{PGBOUNCER}")
            .replace("runs_on: [pg-a]", "runs_on: [pg-z]")
            .replace("database: inmanta", "database: \"in manta\"")
            + "    pause_timeout: 0s\n";
        let e = err(&text);
        let s = e.to_string();
        assert!(s.contains("runs_on[0] `pg-z` is not a node"), "{s}");
        assert!(s.contains("proxy.pgbouncer.database `in manta`"), "{s}");
        assert!(s.contains("pause_timeout"), "{s}");
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        let lines: Vec<usize> = e.problems.iter().map(|p| p.line).collect();
        assert!(lines.contains(&line_of("runs_on: [pg-z]")), "{lines:?}");
        assert!(
            lines.contains(&line_of("database: \"in manta\"")),
            "{lines:?}"
        );
        assert!(lines.contains(&line_of("pause_timeout: 0s")), "{lines:?}");
        let e = err(&format!("{EXAMPLE}{PGBOUNCER}    pause_timout: 3s\n"));
        assert!(e.to_string().contains("pause_timout"), "{e}");
    }
}
