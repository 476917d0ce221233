//! A testbed of real hosts: network namespaces (hosts `a`, `b`, the operator's host `c`,
//! and as asked up to two replica hosts `r1`, `r2` and an etcd host `e`) joined by a
//! bridge that lives in a namespace of its own. Hosts a and b
//! each run their own PostgreSQL on `192.0.2.X:5432`, their own pgwarden daemon on
//! `192.0.2.X:8008` (as the `postgres` user, as the shipped unit does, or as root with
//! `os_user`) and have their own instance of the stand-in application with its own
//! `/etc/inmanta/inmanta.d/database.cfg`. "Here" and "there" are then different hosts on
//! the network, which loopback cannot model: a cut between a and b leaves c seeing both.
//!
//! With [`TestbedOptions::replicas`], hosts r1 and r2 each run a `role: replica` node
//! (`ro-1`, `ro-2`), cloned from pg-a over the bridge as the loopback kit clones its
//! replicas (own application_name, no slot), and a daemon of their own. With
//! [`TestbedOptions::etcd`], host e runs a one-member etcd on `192.0.2.6:2379` and every
//! daemon's config has `lock.etcd` pointing at it (`testbed_etcd.rs`).
//!
//! Each testbed has its own bridge namespace, so every testbed reuses the same
//! TEST-NET-1 addresses (192.0.2.1 a, .2 b, .3 c, .4 r1, .5 r2, .6 e) without seeing any
//! other; nothing is routed outside the namespaces. `ip netns exec` bind-mounts `/etc/netns/NS/*` over
//! `/etc`, so each host has its own `/etc/pgwarden` and `/etc/inmanta`.
//!
//! Dropping the testbed (also while a test panics) kills every process in its
//! namespaces, deletes them and their `/etc/netns` directories and removes the temp dir.
//! A test process killed outright cannot clean up; the next [`Testbed::start`] on the
//! machine removes the namespaces whose creating process is gone.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tempfile::TempDir;

use crate::bins::find_pg_bin_dir;
use crate::cluster::{
    check_traversable, clear_zombie_pidfile, hba, mkdir, objects_sql, postmaster_pid_in,
    standby_name, with_settings_block, write_standby_conf, Credentials, PgNode, StopMode,
    INITDB_ARGS,
};
use crate::error::{IoContext, KitError};
use crate::procs::{pid_alive, postgres_processes_in, signal, Cmd, Runner};
use crate::slots::{self, SlotGuard};
use crate::util::{conninfo_value, file_tail, poll_until, random_hex, sql_literal, TAIL_LINES};

/// Where `ip netns add` keeps the namespace handles.
const NETNS_RUN_DIR: &str = "/run/netns";
/// Where `ip netns exec` finds each namespace's own `/etc` entries.
const NETNS_ETC_DIR: &str = "/etc/netns";
/// Every testbed namespace name starts with this, then the creating pid and a `-`.
const NS_PREFIX: &str = "pgw";
/// The test subnet; it exists only inside the testbed's namespaces.
pub const SUBNET: &str = "192.0.2.0/24";
/// PostgreSQL's port on every host.
pub const PG_PORT: u16 = 5432;
/// The pgwarden daemon's port on every host.
pub const API_PORT: u16 = 8008;
/// The config path every daemon is started with (its host's own, through the bind mount).
pub const DAEMON_CONFIG: &str = "/etc/pgwarden/pgwarden.yaml";
/// The application's database settings on every host (its host's own).
pub const APP_CONFIG: &str = "/etc/inmanta/inmanta.d/database.cfg";
/// Role and database of the test writer ([`Writer`]): not the application's role, so the
/// fence (no session of `db_user` left) does not count it.
pub const WRITER_USER: &str = "writer";
pub const WRITER_DB: &str = "writes";

const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Testbeds made by this process, for unique namespace names.
static TESTBEDS: AtomicUsize = AtomicUsize::new(0);
/// nftables tables made by this process, for unique table names.
static CUTS: AtomicUsize = AtomicUsize::new(0);

/// One simulated machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// Runs pg-a (the initial primary) and its daemon.
    A,
    /// Runs pg-b (the initial synchronous standby) and its daemon.
    B,
    /// The operator's host: no database, no daemon.
    C,
    /// Runs the first `role: replica` node, ro-1, and its daemon ([`TestbedOptions::replicas`]).
    R1,
    /// Runs the second replica, ro-2, and its daemon.
    R2,
    /// Runs the etcd member ([`TestbedOptions::etcd`]): no database, no daemon.
    E,
}

impl Host {
    /// The hosts every testbed has.
    pub const ALL: [Host; 3] = [Host::A, Host::B, Host::C];
    /// Every host a testbed may have.
    pub const EVERY: [Host; 6] = [Host::A, Host::B, Host::C, Host::R1, Host::R2, Host::E];

    /// The host's address on [`SUBNET`].
    pub fn addr(self) -> &'static str {
        match self {
            Host::A => "192.0.2.1",
            Host::B => "192.0.2.2",
            Host::C => "192.0.2.3",
            Host::R1 => "192.0.2.4",
            Host::R2 => "192.0.2.5",
            Host::E => "192.0.2.6",
        }
    }

    /// The host's name in namespace and interface names (short: interface names are
    /// limited to 15 bytes).
    fn letter(self) -> &'static str {
        match self {
            Host::A => "a",
            Host::B => "b",
            Host::C => "c",
            Host::R1 => "r1",
            Host::R2 => "r2",
            Host::E => "e",
        }
    }

    /// The index of the node on this host (a: 0, b: 1, r1: 2, r2: 3); None for c and e.
    pub fn node(self) -> Option<usize> {
        match self {
            Host::A => Some(0),
            Host::B => Some(1),
            Host::R1 => Some(2),
            Host::R2 => Some(3),
            Host::C | Host::E => None,
        }
    }

    /// The host of node `i` (0: a, 1: b, 2: r1, 3: r2).
    pub fn of_node(i: usize) -> Host {
        [Host::A, Host::B, Host::R1, Host::R2][i]
    }

    fn node_index(self) -> usize {
        self.node()
            .unwrap_or_else(|| panic!("host {self:?} runs no node, no daemon and no application"))
    }
}

/// Which user the daemons run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaemonUser {
    /// As the shipped systemd unit: `User=postgres`; node commands run directly.
    Postgres,
    /// As root, with `os_user: postgres` and node commands wrapped in `runuser`.
    Root,
}

/// How a testbed is built.
#[derive(Clone, Debug)]
pub struct TestbedOptions {
    /// The `pgwarden` binary the daemons and the application's commands run.
    pub pgwarden_bin: PathBuf,
    /// Directory of initdb/pg_ctl; None searches (see [`crate::find_pg_bin_dir`]).
    pub bin_dir: Option<PathBuf>,
    pub daemon_user: DaemonUser,
    pub poll_interval: Duration,
    pub poll_timeout: Duration,
    pub failure_threshold: u32,
    /// Extra environment of the daemon of node i (0: a, 1: b, 2: r1, 3: r2); missing
    /// entries are empty.
    pub daemon_env: Vec<Vec<(String, String)>>,
    /// YAML lines appended to each daemon's `application:` section.
    pub application_extra: String,
    /// The host whose application instance is started once the cluster is up (None:
    /// none). Only one instance ever runs.
    pub app_host: Option<Host>,
    /// Start every daemon (and wait until they answer) as part of [`Testbed::start`].
    pub start_daemons: bool,
    /// Read-only replicas beside the pair (0, 1 or 2): ro-1 on host r1, ro-2 on r2, each
    /// with its daemon, `role: replica` in every config. The application runs on a and
    /// b only (`application.runs_on`).
    pub replicas: usize,
    /// Run etcd on host e and give every daemon `lock.etcd` with this TTL (None: no etcd,
    /// the daemons' own lock).
    pub etcd: Option<Duration>,
}

impl TestbedOptions {
    /// Daemons as `postgres`, polling every 250 ms, the application running on b.
    pub fn new(pgwarden_bin: impl Into<PathBuf>) -> TestbedOptions {
        TestbedOptions {
            pgwarden_bin: pgwarden_bin.into(),
            bin_dir: None,
            daemon_user: DaemonUser::Postgres,
            poll_interval: Duration::from_millis(250),
            poll_timeout: Duration::from_millis(1000),
            failure_threshold: 3,
            daemon_env: vec![Vec::new(), Vec::new()],
            application_extra: String::new(),
            app_host: Some(Host::B),
            start_daemons: true,
            replicas: 0,
            etcd: None,
        }
    }
}

/// A running testbed. See the module documentation.
pub struct Testbed {
    /// `pgw{pid}-{n}`; the namespaces are this plus `a`, `b`, `c`, `s` (the switch) and
    /// those of the optional hosts (`r1`, `r2`, `e`).
    id: String,
    dir: PathBuf,
    bin_dir: PathBuf,
    opts: TestbedOptions,
    nodes: Vec<PgNode>,
    creds: Credentials,
    api_token: String,
    writer_password: String,
    runner: Runner,
    /// The namespaces created so far (a failed start cleans up exactly these).
    created: Mutex<Vec<String>>,
    /// The daemon of node i, if running.
    daemons: Mutex<Vec<Option<Child>>>,
    /// The etcd member on host e, if [`TestbedOptions::etcd`].
    pub(crate) etcd: Mutex<Option<Child>>,
    // Dropped after `Drop::drop`: removes the temp dir, then frees the slot.
    _temp: TempDir,
    _slot: SlotGuard,
}

impl std::fmt::Debug for Testbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Testbed")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Testbed {
    /// Builds the hosts, the cluster (pg-a primary on a, pg-b its synchronous standby on
    /// b), the configs, and, as asked, starts the application and the daemons. On failure
    /// everything made so far is removed again.
    pub fn start(opts: TestbedOptions) -> Result<Testbed, KitError> {
        let runner = Runner::detect()?;
        if !runner.is_root() {
            return Err(KitError::Environment(
                "the testbed needs root (network namespaces, nftables, /etc/netns)".into(),
            ));
        }
        let bin_dir = find_pg_bin_dir(opts.bin_dir.as_deref())?;
        for tool in ["ip", "nft", "runuser", "setpriv"] {
            if find_tool(tool).is_none() {
                return Err(KitError::Environment(format!(
                    "`{tool}` is not installed; the testbed needs iproute2, nftables and \
                     util-linux (`apt-get install iproute2 nftables util-linux`; .ci/run \
                     installs them)"
                )));
            }
        }
        sweep_orphans();
        let waited = std::time::Instant::now();
        let slot = slots::acquire()?;
        // On stderr, which test runners show for a failed test: a slow start is often
        // only a long wait for a slot held by other tests on the machine.
        eprintln!(
            "testbed: waited {:.1}s for a cluster slot ({})",
            waited.elapsed().as_secs_f64(),
            slot.path.display()
        );
        let n = TESTBEDS.fetch_add(1, Ordering::SeqCst);
        let id = format!("{NS_PREFIX}{}-{n}", std::process::id());
        let temp = tempfile::Builder::new()
            .prefix("pgwarden-testbed-")
            .tempdir()
            .ctx(|| "creating a temp dir for the testbed".into())?;
        let dir = fs::canonicalize(temp.path()).ctx(|| "resolving the temp dir".into())?;
        if opts.replicas > 2 {
            return Err(KitError::Environment(format!(
                "the testbed has hosts for two replicas (r1, r2), not {}",
                opts.replicas
            )));
        }
        let names = ["pg-a", "pg-b", "ro-1", "ro-2"];
        let nodes: Vec<PgNode> = names[..2 + opts.replicas]
            .iter()
            .enumerate()
            .map(|(i, name)| PgNode {
                name: name.to_string(),
                host: Host::of_node(i).addr().to_string(),
                port: PG_PORT,
                data_dir: dir.join(name),
                log_file: dir.join("logs").join(format!("{name}.log")),
                socket_dir: dir.join("sockets").join(name),
            })
            .collect();
        let daemon_count = nodes.len();
        let creds = Credentials {
            monitor_user: "pgwarden".into(),
            monitor_password: random_hex(12)?,
            replication_user: "replication".into(),
            replication_password: random_hex(12)?,
            app_user: "inmanta".into(),
            app_password: random_hex(12)?,
            app_db: "inmanta".into(),
        };
        let tb = Testbed {
            id,
            dir,
            bin_dir,
            opts,
            nodes,
            creds,
            api_token: random_hex(24)?,
            writer_password: random_hex(12)?,
            runner,
            created: Mutex::new(Vec::new()),
            daemons: Mutex::new((0..daemon_count).map(|_| None).collect()),
            etcd: Mutex::new(None),
            _temp: temp,
            _slot: slot,
        };
        // From here on, `tb`'s Drop removes whatever a failed step left behind.
        tb.step("laying out directories and /etc/netns", |t| t.layout())?;
        tb.step("creating the hosts and the bridge", |t| t.network())?;
        tb.step("initialising pg-a (initdb)", |t| t.init_primary())?;
        tb.step("starting pg-a on host a", |t| t.start_node(0))?;
        tb.step("creating roles, databases and the slot", |t| {
            t.create_objects()
        })?;
        tb.step("cloning pg-b from host b (pg_basebackup)", |t| {
            t.clone_standby()
        })?;
        tb.step("starting pg-b on host b", |t| t.start_node(1))?;
        tb.step("making pg-b a synchronous standby", |t| {
            t.wait_for_standby(0, false, REPLICATION_TIMEOUT)?;
            t.set_synchronous(0, true)?;
            t.wait_for_standby(0, true, REPLICATION_TIMEOUT)
        })?;
        for i in 2..tb.nodes.len() {
            tb.step("cloning a replica (pg_basebackup)", |t| t.clone_replica(i))?;
            tb.step("starting a replica", |t| t.start_node(i))?;
            tb.step("waiting for the replica to stream", |t| {
                t.wait_for_stream(0, &t.nodes[i].name, REPLICATION_TIMEOUT)
            })?;
        }
        if tb.opts.etcd.is_some() {
            tb.step("starting etcd on host e", |t| t.start_etcd())?;
        }
        tb.step("writing the daemons' and the application's configs", |t| {
            t.write_configs()
        })?;
        if let Some(host) = tb.opts.app_host {
            tb.step("starting the application", |t| t.start_app(host))?;
        }
        if tb.opts.start_daemons {
            for i in 0..tb.nodes.len() {
                let env = tb.opts.daemon_env.get(i).cloned().unwrap_or_default();
                tb.step("starting the daemons", |t| {
                    t.start_daemon(Host::of_node(i), &env)
                })?;
            }
        }
        Ok(tb)
    }

    fn step(
        &self,
        step: &str,
        f: impl FnOnce(&Self) -> Result<(), KitError>,
    ) -> Result<(), KitError> {
        let started = std::time::Instant::now();
        let result = f(self);
        eprintln!(
            "testbed {}: {step}: {:.2}s",
            self.id,
            started.elapsed().as_secs_f64()
        );
        result.map_err(|e| {
            let mut logs = String::new();
            if !e.has_log() {
                for n in &self.nodes {
                    let tail = file_tail(&n.log_file, TAIL_LINES);
                    if !tail.trim().is_empty() {
                        logs.push_str(&format!(
                            "\n  server log {}:\n{}",
                            n.log_file.display(),
                            crate::error::indent(&tail)
                        ));
                    }
                }
            }
            KitError::Start {
                step: format!("{step} (testbed {})", self.id),
                source: Box::new(e),
                logs,
            }
        })
    }

    // ---- build steps -----------------------------------------------------------------

    fn layout(&self) -> Result<(), KitError> {
        check_traversable(&self.dir)?;
        mkdir(&self.dir, Some(0o755))?;
        // The daemons and the application run as postgres, which may not
        // reach the build's target/ (a checkout under a private directory):
        // they run a link (or a copy) of the binary in the testbed's own.
        let staged = self.pgwarden_bin();
        if fs::hard_link(&self.opts.pgwarden_bin, &staged).is_err() {
            fs::copy(&self.opts.pgwarden_bin, &staged).ctx(|| {
                format!(
                    "copying {} to {}",
                    self.opts.pgwarden_bin.display(),
                    staged.display()
                )
            })?;
        }
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o755))
            .ctx(|| format!("chmod 755 {}", staged.display()))?;
        let pg = &self.runner;
        for sub in ["logs", "sockets", "state", "app"] {
            let d = self.dir.join(sub);
            mkdir(&d, Some(0o755))?;
            pg.chown_one(&d)?;
        }
        for (i, n) in self.nodes.iter().enumerate() {
            mkdir(&n.data_dir, Some(0o700))?;
            mkdir(&n.socket_dir, Some(0o755))?;
            let state = self.state_dir(Host::of_node(i));
            mkdir(&state, Some(0o700))?;
            let app = self.app_dir(Host::of_node(i));
            mkdir(&app, Some(0o755))?;
            for d in [&n.data_dir, &n.socket_dir, &state, &app] {
                pg.chown_one(d)?;
            }
        }
        // `ip netns exec` can only bind-mount over entries that exist on the machine: the
        // mount points are created empty and left in place (other testbeds share them).
        for mount_point in ["/etc/pgwarden", "/etc/inmanta"] {
            if !Path::new(mount_point).exists() {
                mkdir(Path::new(mount_point), Some(0o755))?;
            }
        }
        for host in self.node_hosts() {
            let etc = self.etc_dir(host);
            mkdir(&etc.join("pgwarden"), Some(0o750))?;
            let (_, gid) = postgres_ids(pg);
            std::os::unix::fs::chown(etc.join("pgwarden"), Some(0), Some(gid))
                .ctx(|| format!("chown root:postgres {}", etc.display()))?;
            // The daemon rewrites database.cfg next to itself (temp file, backup, rename):
            // the directory is the daemon user's.
            let inmanta_d = etc.join("inmanta").join("inmanta.d");
            mkdir(&inmanta_d, Some(0o755))?;
            pg.chown_one(&etc.join("inmanta"))?;
            pg.chown_one(&inmanta_d)?;
        }
        Ok(())
    }

    fn network(&self) -> Result<(), KitError> {
        let switch = self.switch_ns();
        for ns in [switch.clone()]
            .into_iter()
            .chain(self.hosts().iter().map(|h| self.ns(*h)))
        {
            ip(&["netns", "add", &ns])?;
            self.created.lock().unwrap().push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for host in self.hosts() {
            let ns = self.ns(host);
            // Created inside the switch's namespace with the peer moved straight into the
            // host's: no interface ever appears in the machine's own namespace, so
            // parallel testbeds cannot clash on names.
            let port = format!("v{}", host.letter());
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &switch, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", host.addr()),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    fn init_primary(&self) -> Result<(), KitError> {
        let n = &self.nodes[0];
        self.server_cmd(Host::A, "initdb")
            .arg("-D")
            .arg(&n.data_dir)
            .args(INITDB_ARGS)
            .run()?;
        self.write_node_settings(0)?;
        let path = n.data_dir.join("pg_hba.conf");
        fs::write(&path, hba(&["127.0.0.1/32", SUBNET]))
            .ctx(|| format!("writing {}", path.display()))?;
        self.runner.chown_one(&path)
    }

    fn create_objects(&self) -> Result<(), KitError> {
        // Fed on stdin, never on argv: it holds the passwords.
        let sql = format!(
            "{}CREATE ROLE {WRITER_USER} LOGIN PASSWORD {};\n\
             CREATE DATABASE {WRITER_DB} OWNER {WRITER_USER};\n",
            objects_sql(&self.creds, "replication"),
            sql_literal(&self.writer_password)
        );
        self.psql_cmd(0, "postgres")
            .args(["-f", "-"])
            .run_with_stdin(Some(&sql))?;
        self.psql_db(
            0,
            WRITER_DB,
            &format!(
                "CREATE TABLE writes (id bigint PRIMARY KEY); \
                 ALTER TABLE writes OWNER TO {WRITER_USER}"
            ),
        )?;
        Ok(())
    }

    fn clone_standby(&self) -> Result<(), KitError> {
        let b = &self.nodes[1];
        // Run on host b: the base backup crosses the bridge, like a real clone.
        self.server_cmd(Host::B, "pg_basebackup")
            .args(["-h", Host::A.addr(), "-p", &PG_PORT.to_string()])
            .args(["-U", &self.creds.replication_user])
            .arg("-D")
            .arg(&b.data_dir)
            .args(["-c", "fast", "-X", "stream", "-R", "-S", "replication"])
            .args(["--no-sync", "-w"])
            .env("PGPASSWORD", &self.creds.replication_password)
            .log(&self.nodes[0].log_file)
            .run()?;
        self.write_node_settings(1)?;
        let conninfo = format!(
            "host={} port={PG_PORT} user={} password={} application_name=inmanta",
            Host::A.addr(),
            conninfo_value(&self.creds.replication_user),
            conninfo_value(&self.creds.replication_password),
        );
        write_standby_conf(&b.data_dir, &conninfo, "replication", &self.runner)?;
        fs::set_permissions(&b.data_dir, fs::Permissions::from_mode(0o700))
            .ctx(|| format!("chmod 0700 {}", b.data_dir.display()))?;
        self.runner.chown_tree(&b.data_dir)
    }

    /// Clones replica `i` from pg-a on its own host, as the loopback kit clones its
    /// replicas: over a temporary slot, streaming under its own name (the node's) so
    /// that it never becomes synchronous, and without the pair's slot.
    fn clone_replica(&self, i: usize) -> Result<(), KitError> {
        let n = &self.nodes[i];
        self.server_cmd(Host::of_node(i), "pg_basebackup")
            .args(["-h", Host::A.addr(), "-p", &PG_PORT.to_string()])
            .args(["-U", &self.creds.replication_user])
            .arg("-D")
            .arg(&n.data_dir)
            .args(["-c", "fast", "-X", "stream", "-R"])
            .args(["--no-sync", "-w"])
            .env("PGPASSWORD", &self.creds.replication_password)
            .log(&self.nodes[0].log_file)
            .run()?;
        self.write_node_settings(i)?;
        let conninfo = format!(
            "host={} port={PG_PORT} user={} password={} application_name={}",
            Host::A.addr(),
            conninfo_value(&self.creds.replication_user),
            conninfo_value(&self.creds.replication_password),
            conninfo_value(&n.name),
        );
        write_standby_conf(&n.data_dir, &conninfo, "", &self.runner)?;
        fs::set_permissions(&n.data_dir, fs::Permissions::from_mode(0o700))
            .ctx(|| format!("chmod 0700 {}", n.data_dir.display()))?;
        self.runner.chown_tree(&n.data_dir)
    }

    /// Waits until node `primary` shows the walreceiver named `app` streaming.
    pub fn wait_for_stream(
        &self,
        primary: usize,
        app: &str,
        timeout: Duration,
    ) -> Result<(), KitError> {
        let sql = format!(
            "SELECT state FROM pg_stat_replication WHERE application_name = {}",
            sql_literal(app)
        );
        poll_until(
            timeout,
            &format!("{} to show {app} streaming", self.nodes[primary].name),
            || {
                self.psql(primary, &sql)
                    .ok()
                    .filter(|o| o.lines().any(|l| l == "streaming"))
                    .map(|_| ())
            },
        )
    }

    fn write_node_settings(&self, i: usize) -> Result<(), KitError> {
        let n = &self.nodes[i];
        let path = n.data_dir.join("postgresql.conf");
        let current = fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))?;
        let text = with_settings_block(&current, &n.name, &n.host, n.port, &n.socket_dir);
        fs::write(&path, text).ctx(|| format!("writing {}", path.display()))
    }

    fn write_configs(&self) -> Result<(), KitError> {
        let (_, gid) = postgres_ids(&self.runner);
        for host in self.node_hosts() {
            let etc = self.etc_dir(host).join("pgwarden");
            let files = [
                ("api.token", self.api_token.as_str()),
                ("monitor.password", self.creds.monitor_password.as_str()),
                (
                    "replication.password",
                    self.creds.replication_password.as_str(),
                ),
            ];
            for (name, value) in files {
                write_file(&etc.join(name), value, 0o640, Some((0, gid)))?;
            }
            let yaml = crate::testbed_config::daemon_config(self, host);
            write_file(&etc.join("pgwarden.yaml"), &yaml, 0o640, Some((0, gid)))?;
            let cfg = self.app_config_file(host);
            write_file(&cfg, &self.original_app_config(), 0o600, None)?;
            self.runner.chown_one(&cfg)?;
        }
        Ok(())
    }

    fn start_app(&self, host: Host) -> Result<(), KitError> {
        let (code, out) = self.app_ctl(host, "start");
        if code != 0 {
            return Err(KitError::Environment(format!(
                "standin-ctl start on host {host:?} exited with {code}: {out}"
            )));
        }
        let acks = self.app_dir(host).join("acks");
        poll_until(
            Duration::from_secs(30),
            "the application to acknowledge heartbeats",
            || (crate::standin::read_acks(&acks).len() >= 3).then_some(()),
        )
    }

    // ---- names and paths -------------------------------------------------------------

    /// The testbed's id, `pgw{pid}-{n}`; the namespaces are named after it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The network namespace of `host`.
    pub fn ns(&self, host: Host) -> String {
        format!("{}{}", self.id, host.letter())
    }

    /// The namespace holding the bridge.
    pub fn switch_ns(&self) -> String {
        format!("{}s", self.id)
    }

    /// The hosts of this testbed: a, b, c, then r1, r2 and e as asked.
    pub fn hosts(&self) -> Vec<Host> {
        let mut v = Host::ALL.to_vec();
        v.extend(self.replica_hosts());
        if self.opts.etcd.is_some() {
            v.push(Host::E);
        }
        v
    }

    /// The hosts that run a node and its daemon: a, b, then r1, r2 as asked.
    pub fn node_hosts(&self) -> Vec<Host> {
        (0..self.nodes.len()).map(Host::of_node).collect()
    }

    /// The hosts of the `role: replica` nodes (r1, r2), as asked.
    pub fn replica_hosts(&self) -> Vec<Host> {
        (2..self.nodes.len()).map(Host::of_node).collect()
    }

    /// Every namespace: one per host of [`Testbed::hosts`], and the switch.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.hosts().iter().map(|h| self.ns(*h)).collect();
        v.push(self.switch_ns());
        v
    }

    /// The testbed's temp dir (data dirs, logs/, sockets/, state/, app/).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn options(&self) -> &TestbedOptions {
        &self.opts
    }

    /// Node 0 is pg-a on host a, node 1 pg-b on host b, 2 ro-1 on r1, 3 ro-2 on r2.
    pub fn node(&self, i: usize) -> &PgNode {
        &self.nodes[i]
    }

    pub fn nodes(&self) -> &[PgNode] {
        &self.nodes
    }

    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    pub fn api_token(&self) -> &str {
        &self.api_token
    }

    /// `/etc/netns/NS` of `host`: what the host sees as `/etc/pgwarden`, `/etc/inmanta`.
    pub fn etc_dir(&self, host: Host) -> PathBuf {
        Path::new(NETNS_ETC_DIR).join(self.ns(host))
    }

    /// `http://192.0.2.X:8008`.
    pub fn api_url(&self, host: Host) -> String {
        format!("http://{}:{API_PORT}", host.addr())
    }

    /// The daemon's config on `host`, as seen from this (the machine's) mount namespace.
    pub fn daemon_config_path(&self, host: Host) -> PathBuf {
        self.etc_dir(host).join("pgwarden").join("pgwarden.yaml")
    }

    /// The daemon's state_dir on `host`.
    pub fn state_dir(&self, host: Host) -> PathBuf {
        self.dir
            .join("state")
            .join(&self.nodes[host.node_index()].name)
    }

    /// Where the daemon on `host` logs (stdout and stderr, appended across restarts).
    pub fn daemon_log(&self, host: Host) -> PathBuf {
        self.dir
            .join("logs")
            .join(format!("daemon-{}.log", self.nodes[host.node_index()].name))
    }

    pub fn daemon_log_text(&self, host: Host) -> String {
        fs::read_to_string(self.daemon_log(host)).unwrap_or_default()
    }

    /// The application instance's directory on `host` (pid file, log, acks).
    pub fn app_dir(&self, host: Host) -> PathBuf {
        // Hosts c and e have no application instance: asking for one is a test bug (panics).
        host.node_index();
        self.dir.join("app").join(host.letter())
    }

    /// `host`'s `/etc/inmanta/inmanta.d/database.cfg`, as seen from here.
    pub fn app_config_file(&self, host: Host) -> PathBuf {
        self.etc_dir(host)
            .join("inmanta")
            .join("inmanta.d")
            .join("database.cfg")
    }

    /// database.cfg as first written on every host, pointing to pg-a.
    pub fn original_app_config(&self) -> String {
        let c = &self.creds;
        format!(
            "# inmanta database settings (testbed)\n[server]\nbind-port = 8888\n\n\
             [database]\nhost = {}\nport = {PG_PORT}\nname = {}\nusername = {}\n\
             password = {}\nconnection_pool_max_size = 10\n",
            Host::A.addr(),
            c.app_db,
            c.app_user,
            c.app_password
        )
    }

    /// The heartbeat ids the application instance on `host` acknowledged.
    pub fn app_acks(&self, host: Host) -> Vec<i64> {
        crate::standin::read_acks(&self.app_dir(host).join("acks"))
    }

    // ---- running things on a host ----------------------------------------------------

    /// Runs `f` on a thread that has joined `host`'s network namespace: its sockets are
    /// the host's (addresses, routes, firewall), so "the operator on c asks b's daemon"
    /// is literal. Only the network namespace changes; files are the machine's.
    pub fn in_host<T: Send>(&self, host: Host, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new(NETNS_RUN_DIR).join(self.ns(host));
        std::thread::scope(|s| {
            s.spawn(move || {
                enter_netns(&path).unwrap_or_else(|e| panic!("{e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Whether a TCP connection from `from` to `to`:`port` is established within
    /// `timeout` (a dropped SYN times out; nothing listening is refused at once).
    pub fn can_connect(&self, from: Host, to: Host, port: u16, timeout: Duration) -> bool {
        let addr: SocketAddr = format!("{}:{port}", to.addr()).parse().expect("an address");
        self.in_host(from, || TcpStream::connect_timeout(&addr, timeout).is_ok())
    }

    /// A command run on `host` (in its namespaces, with its /etc), as root.
    pub fn host_command(&self, host: Host, program: &Path) -> Command {
        let mut cmd = Command::new(find_tool("ip").expect("checked at start"));
        cmd.args(["netns", "exec", &self.ns(host)]).arg(program);
        cmd.current_dir(&self.dir);
        cmd
    }

    /// A server-side program (initdb, pg_ctl, pg_basebackup) run on `host` as postgres.
    fn server_cmd(&self, host: Host, program: &str) -> Cmd {
        Cmd::new(&find_tool("ip").expect("checked at start"))
            .args([
                "netns",
                "exec",
                &self.ns(host),
                "runuser",
                "-u",
                "postgres",
                "--",
            ])
            .arg(self.bin_dir.join(program))
            .current_dir(&self.dir)
    }

    /// The `pgwarden` binary every host runs (inside the testbed's directory,
    /// so that postgres can reach it).
    pub fn pgwarden_bin(&self) -> PathBuf {
        self.dir.join("pgwarden")
    }

    /// Runs `pgwarden standin-ctl ACTION` for `host`'s instance, on `host`, as the user
    /// the daemons run as (so the instance's files stay the daemon's). Returns the exit
    /// status and the output.
    pub fn app_ctl(&self, host: Host, action: &str) -> (i32, String) {
        let mut cmd = Command::new(find_tool("ip").expect("checked at start"));
        cmd.args(["netns", "exec", &self.ns(host)]);
        if self.opts.daemon_user == DaemonUser::Postgres {
            cmd.args(as_postgres_exec());
        }
        cmd.arg(self.pgwarden_bin())
            .args(["standin-ctl", action, "--dir"])
            .arg(self.app_dir(host));
        if action == "start" {
            cmd.args(["--config", APP_CONFIG]);
        }
        let out = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running standin-ctl {action}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// Live processes in `host`'s network namespace.
    pub fn processes(&self, host: Host) -> Vec<i32> {
        netns_id(&Path::new(NETNS_RUN_DIR).join(self.ns(host)))
            .map(processes_in_netns)
            .unwrap_or_default()
    }

    // ---- daemons ---------------------------------------------------------------------

    /// Starts the daemon on `host` as the shipped unit would (as postgres, or as root
    /// for [`DaemonUser::Root`]): `pgwarden run --config /etc/pgwarden/pgwarden.yaml`,
    /// with `env` added, and waits until host c gets 200 from its `/livez`.
    pub fn start_daemon(&self, host: Host, env: &[(String, String)]) -> Result<(), KitError> {
        let i = host.node_index();
        let log = self.daemon_log(host);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .ctx(|| format!("opening {}", log.display()))?;
        let err = out.try_clone().ctx(|| "duplicating the log fd".into())?;
        // As the unit's ExecStartPre: a config the daemon would refuse fails here, with
        // check-config's `file:line:column: what to fix`.
        let mut check = Cmd::new(&find_tool("ip").expect("checked at start")).args([
            "netns",
            "exec",
            &self.ns(host),
        ]);
        if self.opts.daemon_user == DaemonUser::Postgres {
            check = check.args(as_postgres_exec());
        }
        check
            .arg(self.pgwarden_bin())
            .args(["check-config", "--config", DAEMON_CONFIG])
            .current_dir(&self.dir)
            .run()?;
        let mut cmd = Command::new(find_tool("ip").expect("checked at start"));
        cmd.args(["netns", "exec", &self.ns(host)]);
        if self.opts.daemon_user == DaemonUser::Postgres {
            cmd.args(as_postgres_exec());
        }
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(&key);
            }
        }
        cmd.arg(self.pgwarden_bin())
            .args(["run", "--config", DAEMON_CONFIG])
            .env("PGWARDEN_LOG", "info,pgwarden_pg=debug")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // A daemon still running would keep 8008 and the new one could not bind it.
        self.kill_daemon(host);
        let child = cmd
            .spawn()
            .ctx(|| format!("starting the daemon on host {host:?}"))?;
        let pid = child.id() as i32;
        self.daemons.lock().unwrap()[i] = Some(child);
        let url = format!("{}:{API_PORT}", host.addr());
        poll_until(
            Duration::from_secs(20),
            &format!("the daemon on host {host:?} to answer /livez from host c"),
            || {
                if !pid_alive(pid) {
                    return Some(false);
                }
                (self.in_host(Host::C, || status_of(&url, "/livez")) == Some(200)).then_some(true)
            },
        )
        .and_then(|alive| {
            if alive {
                Ok(())
            } else {
                Err(KitError::Environment(format!(
                    "the daemon on host {host:?} exited at start; its log {}:\n{}",
                    log.display(),
                    file_tail(&log, TAIL_LINES)
                )))
            }
        })
    }

    /// SIGKILLs the daemon on `host` (no cleanup, like a crash) and reaps it.
    pub fn kill_daemon(&self, host: Host) {
        if let Some(mut c) = self.daemons.lock().unwrap()[host.node_index()].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The pid of the daemon on `host`, if this testbed runs it. `setpriv` execs it, so
    /// this is the `pgwarden run` process itself.
    pub fn daemon_pid(&self, host: Host) -> Option<i32> {
        self.daemons.lock().unwrap()[host.node_index()]
            .as_ref()
            .map(|c| c.id() as i32)
    }

    // ---- servers ---------------------------------------------------------------------

    /// The `-o` options that give node `i` its identity on the command line (a rewound
    /// data directory carries the other node's postgresql.conf).
    pub fn node_identity(&self, i: usize) -> String {
        let n = &self.nodes[i];
        format!("-h {} -p {} -k {}", n.host, n.port, n.socket_dir.display())
    }

    /// `pg_ctl start -w` of node `i` on its host, as postgres.
    pub fn start_node(&self, i: usize) -> Result<(), KitError> {
        let n = &self.nodes[i];
        clear_zombie_pidfile(&n.data_dir, &n.socket_dir);
        self.server_cmd(Host::of_node(i), "pg_ctl")
            .arg("-D")
            .arg(&n.data_dir)
            .args(["-o", &self.node_identity(i), "-w", "-t", "60", "-l"])
            .arg(&n.log_file)
            .arg("start")
            .log(&n.log_file)
            .run()?;
        Ok(())
    }

    /// `pg_ctl stop -w -m MODE` of node `i`; Ok when it is already stopped.
    pub fn stop_node(&self, i: usize, mode: StopMode) -> Result<(), KitError> {
        let n = &self.nodes[i];
        if !self.is_running(i) {
            clear_zombie_pidfile(&n.data_dir, &n.socket_dir);
            return Ok(());
        }
        let m = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let r = self
            .server_cmd(Host::of_node(i), "pg_ctl")
            .arg("-D")
            .arg(&n.data_dir)
            .args(["-w", "-t", "60", "-m", m, "stop"])
            .log(&n.log_file)
            .run();
        match r {
            Err(_) if !self.is_running(i) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// SIGKILLs node `i`'s postmaster (its host stays up) and returns once it and its
    /// children are gone.
    pub fn kill_postmaster(&self, i: usize) -> Result<(), KitError> {
        let n = &self.nodes[i];
        let pid = postmaster_pid_in(&n.data_dir)
            .filter(|&p| pid_alive(p))
            .ok_or_else(|| KitError::Environment(format!("{} is not running", n.name)))?;
        signal(pid, libc::SIGKILL).ctx(|| format!("SIGKILL to postmaster {pid}"))?;
        poll_until(
            Duration::from_secs(15),
            &format!("{}'s postmaster {pid} and its children to exit", n.name),
            || (!pid_alive(pid) && postgres_processes_in(&n.data_dir).is_empty()).then_some(()),
        )?;
        clear_zombie_pidfile(&n.data_dir, &n.socket_dir);
        Ok(())
    }

    /// Whether node `i`'s postmaster is alive.
    pub fn is_running(&self, i: usize) -> bool {
        postmaster_pid_in(&self.nodes[i].data_dir).is_some_and(pid_alive)
    }

    // ---- SQL -------------------------------------------------------------------------

    fn psql_cmd(&self, i: usize, db: &str) -> Cmd {
        let n = &self.nodes[i];
        // The unix socket is a file: reachable from here whatever the firewall says.
        Cmd::new(&self.bin_dir.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&n.socket_dir)
            .args(["-p", &n.port.to_string(), "-U", "postgres", "-d", db])
            .env("PGCONNECT_TIMEOUT", "10")
    }

    /// `sql` on node `i` as `postgres` over its unix socket; trimmed unaligned output.
    pub fn psql(&self, i: usize, sql: &str) -> Result<String, KitError> {
        self.psql_db(i, "postgres", sql)
    }

    pub fn psql_db(&self, i: usize, db: &str, sql: &str) -> Result<String, KitError> {
        let out = self.psql_cmd(i, db).arg("-c").arg(sql).run()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `sql` from `from` to node `i` over TCP as the application's role (through the
    /// network, so a cut shows).
    pub fn psql_from(&self, from: Host, i: usize, sql: &str) -> Result<String, KitError> {
        let c = &self.creds;
        let n = &self.nodes[i];
        let out = Cmd::new(&find_tool("ip").expect("checked at start"))
            .args(["netns", "exec", &self.ns(from)])
            .arg(self.bin_dir.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &n.host, "-p", &n.port.to_string()])
            .args(["-U", &c.app_user, "-d", &c.app_db])
            .env("PGPASSWORD", &c.app_password)
            .env("PGCONNECT_TIMEOUT", "3")
            .arg("-c")
            .arg(sql)
            .run()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `ALTER SYSTEM SET synchronous_standby_names` on node `primary`, then reload.
    pub fn set_synchronous(&self, primary: usize, on: bool) -> Result<(), KitError> {
        let names = if on {
            standby_name("inmanta")
        } else {
            String::new()
        };
        self.psql(
            primary,
            &format!(
                "ALTER SYSTEM SET synchronous_standby_names = {}",
                sql_literal(&names)
            ),
        )?;
        self.psql(primary, "SELECT pg_reload_conf()")?;
        Ok(())
    }

    /// Waits until node `primary` shows the standby streaming (and `sync`, if asked).
    pub fn wait_for_standby(
        &self,
        primary: usize,
        sync: bool,
        timeout: Duration,
    ) -> Result<(), KitError> {
        let want = if sync { "streaming|sync" } else { "streaming" };
        let sql = "SELECT state || CASE WHEN sync_state = 'sync' THEN '|sync' ELSE '' END \
                   FROM pg_stat_replication WHERE application_name = 'inmanta'";
        poll_until(
            timeout,
            &format!("{} to show its standby {want}", self.nodes[primary].name),
            || {
                self.psql(primary, sql)
                    .ok()
                    .filter(|o| o.lines().any(|l| l == want))
                    .map(|_| ())
            },
        )
    }

    /// The ids in the writer's table on node `i`.
    pub fn written_ids(&self, i: usize) -> Result<HashSet<i64>, KitError> {
        Ok(self
            .psql_db(i, WRITER_DB, "SELECT id FROM writes")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// The heartbeat ids the application wrote, on node `i`.
    pub fn heartbeat_ids(&self, i: usize) -> Result<HashSet<i64>, KitError> {
        Ok(self
            .psql_db(i, &self.creds.app_db, "SELECT id FROM heartbeat")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    // ---- partitions ------------------------------------------------------------------

    /// Drops every packet between `x` and `y`, both directions, until healed.
    pub fn cut(&self, x: Host, y: Host) -> Partition<'_> {
        self.partition(&[(x, peer_rules(y, None)), (y, peer_rules(x, None))])
    }

    /// Drops the TCP packets between `x` and `y` to or from `port` (8008: the daemon API
    /// only, 5432: PostgreSQL only), both directions; everything else passes.
    pub fn cut_port(&self, x: Host, y: Host, port: u16) -> Partition<'_> {
        self.partition(&[
            (x, peer_rules(y, Some(port))),
            (y, peer_rules(x, Some(port))),
        ])
    }

    /// Drops the TCP packets of `host`'s connections that use its local port `port`
    /// (one connection, by its client port), both directions: a firewall or NAT that
    /// forgot that one connection. Every other connection, new ones included, passes.
    pub fn drop_flow(&self, host: Host, port: u16) -> Partition<'_> {
        self.partition(&[(
            host,
            (
                format!("tcp dport {port} drop"),
                format!("tcp sport {port} drop"),
            ),
        )])
    }

    /// Drops every packet between `x` and the network (its own loopback still works).
    pub fn isolate(&self, x: Host) -> Partition<'_> {
        self.partition(&[(
            x,
            (
                "iifname != \"lo\" drop".to_string(),
                "oifname != \"lo\" drop".to_string(),
            ),
        )])
    }

    /// Removes every cut in every host, also those of guards still alive.
    pub fn heal(&self) {
        for host in self.hosts() {
            for table in self.cut_tables(host) {
                self.delete_table(host, &table);
            }
        }
    }

    fn partition(&self, rules: &[(Host, (String, String))]) -> Partition<'_> {
        let n = CUTS.fetch_add(1, Ordering::SeqCst);
        let table = format!("pgwcut{n}");
        let mut tables = Vec::new();
        for (host, (input, output)) in rules {
            // Dropped, not rejected: a cut link or a silent firewall makes connections
            // hang until a timeout, which is the hard case.
            let text = format!(
                "table inet {table} {{\n\
                 \x20 chain input {{\n    type filter hook input priority 0; policy accept;\n    {input}\n  }}\n\
                 \x20 chain output {{\n    type filter hook output priority 0; policy accept;\n    {output}\n  }}\n\
                 }}\n"
            );
            Cmd::new(&find_tool("ip").expect("checked at start"))
                .args(["netns", "exec", &self.ns(*host), "nft", "-f", "-"])
                .run_with_stdin(Some(&text))
                .unwrap_or_else(|e| panic!("applying a cut on host {host:?}: {e}"));
            tables.push((*host, table.clone()));
        }
        Partition { tb: self, tables }
    }

    fn cut_tables(&self, host: Host) -> Vec<String> {
        let out = Command::new(find_tool("ip").expect("checked at start"))
            .args(["netns", "exec", &self.ns(host), "nft", "list", "tables"])
            .output();
        let Ok(out) = out else { return Vec::new() };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("table inet "))
            .filter(|t| t.starts_with("pgwcut"))
            .map(str::to_owned)
            .collect()
    }

    fn delete_table(&self, host: Host, table: &str) {
        let _ = Command::new(find_tool("ip").expect("checked at start"))
            .args([
                "netns",
                "exec",
                &self.ns(host),
                "nft",
                "delete",
                "table",
                "inet",
            ])
            .arg(table)
            .output();
    }

    // ---- the writer ------------------------------------------------------------------

    /// Starts a [`Writer`] on `host`.
    pub fn start_writer(&self, host: Host) -> Writer {
        Writer::start(
            Path::new(NETNS_RUN_DIR).join(self.ns(host)),
            self.writer_password.clone(),
        )
    }

    /// What must be gone once the testbed is dropped; see [`Footprint::leftovers`].
    pub fn footprint(&self) -> Footprint {
        Footprint {
            namespaces: self.namespaces(),
            net_ids: self
                .namespaces()
                .iter()
                .filter_map(|ns| netns_id(&Path::new(NETNS_RUN_DIR).join(ns)))
                .collect(),
            etc_dirs: self
                .namespaces()
                .iter()
                .map(|ns| Path::new(NETNS_ETC_DIR).join(ns))
                .collect(),
            dir: self.dir.clone(),
        }
    }
}

/// The input and output rules isolating a host from `peer` (on `port` only, if given).
fn peer_rules(peer: Host, port: Option<u16>) -> (String, String) {
    let a = peer.addr();
    match port {
        None => (format!("ip saddr {a} drop"), format!("ip daddr {a} drop")),
        Some(p) => (
            format!("ip saddr {a} tcp dport {p} drop\n    ip saddr {a} tcp sport {p} drop"),
            format!("ip daddr {a} tcp dport {p} drop\n    ip daddr {a} tcp sport {p} drop"),
        ),
    }
}

/// A network cut; healed (its nftables tables deleted) on drop.
#[must_use = "the cut is healed when this guard is dropped"]
pub struct Partition<'a> {
    tb: &'a Testbed,
    tables: Vec<(Host, String)>,
}

impl Partition<'_> {
    /// Heals this cut now.
    pub fn heal(self) {}
}

impl Drop for Partition<'_> {
    fn drop(&mut self) {
        for (host, table) in &self.tables {
            self.tb.delete_table(*host, table);
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for slot in self.daemons.get_mut().unwrap_or_else(|p| p.into_inner()) {
            if let Some(mut c) = slot.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(mut c) = self
            .etcd
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        let created = std::mem::take(self.created.get_mut().unwrap_or_else(|p| p.into_inner()));
        for ns in &created {
            remove_namespace(ns);
        }
        for host in Host::EVERY {
            let _ = fs::remove_dir_all(self.etc_dir(host));
        }
    }
}

/// Kills every process in namespace `ns`, then deletes it and its /etc/netns directory.
fn remove_namespace(ns: &str) {
    let handle = Path::new(NETNS_RUN_DIR).join(ns);
    if let Some(id) = netns_id(&handle) {
        // A process may fork while we kill (a daemon starting a server): repeat until
        // none is left.
        let _ = poll_until(
            Duration::from_secs(15),
            &format!("every process in namespace {ns} to exit"),
            || {
                let pids = processes_in_netns(id);
                for &pid in &pids {
                    let _ = signal(pid, libc::SIGKILL);
                }
                pids.is_empty().then_some(())
            },
        );
    }
    let _ = Command::new(find_tool("ip").unwrap_or_else(|| "ip".into()))
        .args(["netns", "delete", ns])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = fs::remove_dir_all(Path::new(NETNS_ETC_DIR).join(ns));
}

/// Removes the namespaces of testbeds whose process died without cleaning up (killed by
/// a test runner's timeout, say): their processes would otherwise run forever.
fn sweep_orphans() {
    let Ok(entries) = fs::read_dir(NETNS_RUN_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|r| r.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if !pid_alive(pid) {
            remove_namespace(&name);
        }
    }
}

/// What a testbed leaves on the machine while it runs, to check that it is all gone.
#[derive(Clone, Debug)]
pub struct Footprint {
    pub namespaces: Vec<String>,
    net_ids: Vec<(u64, u64)>,
    pub etc_dirs: Vec<PathBuf>,
    pub dir: PathBuf,
}

impl Footprint {
    /// Everything still there: namespaces, processes in them, /etc/netns dirs, the dir.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for ns in &self.namespaces {
            if Path::new(NETNS_RUN_DIR).join(ns).exists() {
                left.push(format!("namespace {ns}"));
            }
        }
        // Namespace inode numbers are reused at once: a parallel testbed's new namespace
        // may carry one of ours. Those are bound under /run/netns (`ip netns add` binds
        // at creation); one of ours kept alive only by a leftover process is not.
        let bound: HashSet<(u64, u64)> = fs::read_dir(NETNS_RUN_DIR)
            .map(|d| d.flatten().filter_map(|e| netns_id(&e.path())).collect())
            .unwrap_or_default();
        for id in self.net_ids.iter().filter(|id| !bound.contains(id)) {
            for pid in processes_in_netns(*id) {
                let cmd = fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .unwrap_or_default();
                left.push(format!("process {pid} ({})", cmd.trim()));
            }
        }
        for d in &self.etc_dirs {
            if d.exists() {
                left.push(format!("directory {}", d.display()));
            }
        }
        if self.dir.exists() {
            left.push(format!("directory {}", self.dir.display()));
        }
        left
    }
}

// ---- the writer ------------------------------------------------------------------------

/// Commits numbered rows (1, 2, 3...) into `writes` on whichever node is the writable
/// primary, from one host, through whatever happens to the cluster; it reconnects on any
/// error and records each id whose commit was acknowledged. With synchronous replication
/// no acknowledged id may be missing on the primary after a failover.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(netns: PathBuf, password: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                enter_netns(&netns).unwrap_or_else(|e| panic!("{e}"));
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime");
                rt.block_on(write_loop(stop, acked, password));
            })
        };
        Writer {
            stop,
            acked,
            handle: Some(handle),
        }
    }

    /// The ids acknowledged so far.
    pub fn acked(&self) -> Vec<i64> {
        self.acked.lock().unwrap().clone()
    }

    /// Waits until `more` ids beyond those acknowledged now are acknowledged.
    pub fn wait_more(&self, more: usize, timeout: Duration) -> Result<Vec<i64>, KitError> {
        let want = self.acked.lock().unwrap().len() + more;
        poll_until(timeout, &format!("the writer to reach {want} acks"), || {
            let a = self.acked();
            (a.len() >= want).then_some(a)
        })
    }

    /// Stops writing and returns every acknowledged id.
    pub fn stop(mut self) -> Vec<i64> {
        self.finish();
        self.acked()
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.finish();
    }
}

async fn write_loop(stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<i64>>>, password: String) {
    let stopped = || {
        let stop = stop.clone();
        async move {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut next: i64 = 1;
    let mut prefer = 0;
    while !stop.load(Ordering::SeqCst) {
        for k in 0..2 {
            let host = Host::of_node((prefer + k) % 2);
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(host.addr())
                .port(PG_PORT)
                .user(WRITER_USER)
                .password(&password)
                .dbname(WRITER_DB)
                .application_name("pgwarden-testbed-writer")
                .connect_timeout(Duration::from_secs(1));
            let conn = tokio::select! {
                c = cfg.connect(tokio_postgres::NoTls) => c,
                _ = stopped() => return,
            };
            let Ok((client, connection)) = conn else {
                continue;
            };
            let task = tokio::spawn(connection);
            let writable = matches!(
                client.query_one("SELECT pg_is_in_recovery()", &[]).await,
                Ok(row) if !row.get::<_, bool>(0)
            );
            if writable {
                prefer = (prefer + k) % 2;
                loop {
                    let id = next;
                    next += 1;
                    let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = &[&id];
                    let r = tokio::select! {
                        r = client.execute("INSERT INTO writes (id) VALUES ($1)", params) => r,
                        _ = stopped() => { task.abort(); return; }
                    };
                    if r.is_err() {
                        break;
                    }
                    acked.lock().unwrap().push(id);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            task.abort();
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stopped() => return,
        }
    }
}

// ---- helpers ---------------------------------------------------------------------------

/// Moves the calling thread into the network namespace whose handle is `path`.
fn enter_netns(path: &Path) -> Result<(), KitError> {
    let f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    // SAFETY: setns on a valid namespace descriptor affects only the calling thread
    // (CLONE_NEWNET is allowed in a multi-threaded process).
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(KitError::io(
            format!("setns into {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The (device, inode) identifying a network namespace by its handle.
fn netns_id(path: &Path) -> Option<(u64, u64)> {
    let m = fs::metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

/// Live (non-zombie) processes whose network namespace is `id`.
fn processes_in_netns(id: (u64, u64)) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| (m.dev(), m.ino()) == id)
                && pid_alive(*pid)
        })
        .collect()
}

/// `ip ...`, failing with its stderr.
fn ip(args: &[&str]) -> Result<(), KitError> {
    Cmd::new(&find_tool("ip").expect("checked at start"))
        .args(args)
        .run()
        .map(|_| ())
}

/// `setpriv` as postgres: unlike `runuser` it execs the program instead of waiting for it
/// as a child, so the pid spawned is the daemon's own and a SIGKILL reaches it.
fn as_postgres_exec() -> [&'static str; 5] {
    [
        "setpriv",
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ]
}

fn postgres_ids(runner: &Runner) -> (u32, u32) {
    match runner {
        Runner::AsPostgres { uid, gid } => (*uid, *gid),
        Runner::Direct => (0, 0),
    }
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn write_file(
    path: &Path,
    text: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), KitError> {
    fs::write(path, text).ctx(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {mode:o} {}", path.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .ctx(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// The HTTP status of `GET path` at `addr` (None when nothing answered in 2 s).
fn status_of(addr: &str, path: &str) -> Option<u16> {
    let sa: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    String::from_utf8_lossy(&head[..n])
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_cut_both_directions() {
        let (i, o) = peer_rules(Host::B, None);
        assert_eq!(i, "ip saddr 192.0.2.2 drop");
        assert_eq!(o, "ip daddr 192.0.2.2 drop");
        let (i, o) = peer_rules(Host::A, Some(8008));
        assert!(i.contains("ip saddr 192.0.2.1 tcp dport 8008 drop"), "{i}");
        assert!(i.contains("ip saddr 192.0.2.1 tcp sport 8008 drop"), "{i}");
        assert!(o.contains("ip daddr 192.0.2.1 tcp dport 8008 drop"), "{o}");
        assert!(o.contains("ip daddr 192.0.2.1 tcp sport 8008 drop"), "{o}");
    }

    /// A testbed whose process was killed outright (a runner's timeout) left its
    /// namespace and a process in it: the next start removes both.
    #[test]
    fn namespaces_of_dead_processes_are_swept() {
        if !crate::util::is_root() {
            return;
        }
        let mut gone = Command::new("true").spawn().unwrap();
        let dead = gone.id();
        gone.wait().unwrap();
        let name = format!("{NS_PREFIX}{dead}-0z");
        ip(&["netns", "add", &name]).unwrap();
        let mut sleeper = Command::new(find_tool("ip").unwrap())
            .args(["netns", "exec", &name, "sleep", "600"])
            .spawn()
            .unwrap();
        let handle = Path::new(NETNS_RUN_DIR).join(&name);
        let id = netns_id(&handle).unwrap();
        poll_until(Duration::from_secs(5), "the sleeper to enter", || {
            (!processes_in_netns(id).is_empty()).then_some(())
        })
        .unwrap();
        sweep_orphans();
        let status = sleeper.wait().unwrap();
        assert!(!status.success(), "killed: {status}");
        assert!(!handle.exists());
    }

    #[test]
    fn namespace_names_fit_interface_limits() {
        // The longest pid Linux hands out (2^22) and a two-digit testbed number.
        for host in Host::EVERY {
            let name = format!("{NS_PREFIX}4194304-99{}", host.letter());
            assert!(name.len() <= 15, "{name}");
            assert!(format!("v{}", host.letter()).len() <= 15);
        }
        assert!(format!("{NS_PREFIX}4194304-99s").len() <= 15);
    }
}
