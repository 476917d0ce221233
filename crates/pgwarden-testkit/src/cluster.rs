//! Building and driving a real two-node PostgreSQL cluster (primary + synchronous
//! standby with a physical slot) on loopback, for integration tests and `pgwarden demo`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::bins::find_pg_bin_dir;
use crate::error::{IoContext, KitError};
use crate::procs::{is_zombie, pid_alive, postgres_processes_in, signal, Cmd, Runner};
use crate::slots::{self, SlotGuard};
use crate::util::{
    conf_literal, conninfo_value, file_len, file_tail, free_port, poll_until, random_hex,
    read_from, sql_literal, TAIL_LINES,
};

/// Marks the start of the settings block the testkit appends to postgresql.conf; on
/// rewrite, everything from this line on is replaced.
const CONF_MARKER: &str = "# ---- pgwarden-testkit settings";

/// Longest unix socket path Linux accepts (sun_path is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// initdb's options after `-D DIR`, shared with the testbed's builder.
pub(crate) const INITDB_ARGS: [&str; 8] = [
    "-U",
    "postgres",
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
    // Tests do not need the files on disk; skipping the fsync saves seconds.
    "--no-sync",
    "--encoding=UTF8",
    "--locale=C",
    "--no-instructions",
];

/// How long the builder waits for the standby to stream / become synchronous.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);

/// How a cluster is built. `Default` gives the layout pgwarden's tests and demo expect.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// None: a fresh temp dir, removed on drop. Some: created if missing and kept on drop
    /// (the servers are still stopped).
    pub dir: Option<PathBuf>,
    /// Directory of initdb/pg_ctl; None searches (see [`crate::find_pg_bin_dir`]).
    pub bin_dir: Option<PathBuf>,
    /// Node names, also the data directory names under `dir`: initial primary, standby.
    pub node_names: [String; 2],
    /// Name of the physical replication slot the standby uses.
    pub slot: String,
    /// application_name of the standby's walreceiver, and so the name listed in
    /// synchronous_standby_names.
    pub application_name: String,
    /// Make the standby synchronous once it streams.
    pub synchronous: bool,
    /// Asynchronous read-only replicas of the initial primary (pgwarden's
    /// `role: replica`), after the pair in node order: each cloned like the
    /// standby but without a slot, streaming under its own name as
    /// application_name, never in synchronous_standby_names.
    pub replicas: Vec<String>,
    /// Serve TLS (`ssl = on`) with this PEM certificate and key, copied into the
    /// primary's data directory (and so into every clone) as server.crt and server.key.
    pub server_tls: Option<(PathBuf, PathBuf)>,
    /// The TCP lines of pg_hba.conf (`hostssl ...`, `hostnossl ... reject`) in place
    /// of the default `host` ones; the unix socket lines stay.
    pub hba_tcp: Option<Vec<String>>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            dir: None,
            bin_dir: None,
            node_names: ["pg-a".to_string(), "pg-b".to_string()],
            slot: "replication".to_string(),
            application_name: "inmanta".to_string(),
            synchronous: true,
            replicas: Vec::new(),
            server_tls: None,
            hba_tcp: None,
        }
    }
}

/// The roles created on the cluster. Passwords are random per cluster.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// pgwarden's own role: LOGIN SUPERUSER, member of pg_monitor, EXECUTE on pg_promote
    /// and pg_control_* (superuser keeps later failover work simple; the grants document
    /// what a non-superuser setup would need).
    pub monitor_user: String,
    pub monitor_password: String,
    /// LOGIN REPLICATION role the standby streams with.
    pub replication_user: String,
    pub replication_password: String,
    /// The application's role, owner of `app_db`.
    pub app_user: String,
    pub app_password: String,
    pub app_db: String,
}

/// One PostgreSQL server of the cluster.
#[derive(Clone, Debug)]
pub struct PgNode {
    pub name: String,
    /// Always "127.0.0.1".
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// Where pg_ctl sends the server's output (appended across restarts).
    pub log_file: PathBuf,
    /// unix_socket_directories of this node; psql connects through it as `postgres`.
    pub socket_dir: PathBuf,
}

/// `pg_ctl stop -m` mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Roll back sessions, checkpoint, exit cleanly.
    Fast,
    /// Exit at once; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// The secret files under `<dir>/secrets/` (mode 0600, no trailing newline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secret {
    MonitorPassword,
    ReplicationPassword,
    AppPassword,
    ApiToken,
}

impl Secret {
    const ALL: [Secret; 4] = [
        Secret::MonitorPassword,
        Secret::ReplicationPassword,
        Secret::AppPassword,
        Secret::ApiToken,
    ];

    fn file_name(self) -> &'static str {
        match self {
            Secret::MonitorPassword => "monitor-password",
            Secret::ReplicationPassword => "replication-password",
            Secret::AppPassword => "app-password",
            Secret::ApiToken => "api-token",
        }
    }
}

/// A running two-node cluster (plus any [`ClusterOptions::replicas`]). Dropping it stops the servers (immediate mode) and, for a
/// temp dir, removes the directory; this also happens when a test panics.
pub struct TestCluster {
    dir: PathBuf,
    bin_dir: PathBuf,
    nodes: Vec<PgNode>,
    creds: Credentials,
    opts: ClusterOptions,
    api_token: String,
    runner: Runner,
    // Dropped after `Drop::drop` stopped the servers: removes the temp dir, then frees
    // the slot for the next cluster.
    _temp: Option<TempDir>,
    slot: SlotGuard,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("dir", &self.dir)
            .field("nodes", &self.nodes)
            .field("slot", &self.slot.path)
            .finish_non_exhaustive()
    }
}

impl TestCluster {
    /// Builds and starts the cluster: initdb, roles, database, slot, base backup, standby
    /// streaming (and synchronous if asked). On failure everything started is stopped and
    /// a temp dir removed; the error carries the server log tails.
    pub fn start(opts: ClusterOptions) -> Result<TestCluster, KitError> {
        let bin_dir = find_pg_bin_dir(opts.bin_dir.as_deref())?;
        for tool in ["pg_basebackup", "psql"] {
            if !bin_dir.join(tool).is_file() {
                return Err(KitError::Environment(format!(
                    "{} has initdb and pg_ctl but no {tool}; install the full server and \
                     client (e.g. `apt-get install postgresql-15`) or set \
                     ClusterOptions::bin_dir to its bin directory",
                    bin_dir.display()
                )));
            }
        }
        let runner = Runner::detect()?;
        validate_names(&opts)?;
        let slot = slots::acquire()?;

        let (dir, temp) = match &opts.dir {
            Some(d) => {
                fs::create_dir_all(d).ctx(|| format!("creating cluster dir {}", d.display()))?;
                let d = fs::canonicalize(d).ctx(|| format!("resolving {}", d.display()))?;
                (d, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("pgwarden-testkit-")
                    .tempdir()
                    .ctx(|| "creating a temp dir for the cluster".into())?;
                let d = fs::canonicalize(t.path())
                    .ctx(|| format!("resolving {}", t.path().display()))?;
                (d, Some(t))
            }
        };

        let nodes = opts
            .node_names
            .iter()
            .chain(&opts.replicas)
            .map(|name| PgNode {
                name: name.clone(),
                host: "127.0.0.1".to_string(),
                port: 0,
                data_dir: dir.join(name),
                log_file: dir.join("logs").join(format!("{name}.log")),
                socket_dir: dir.join("sockets").join(name),
            })
            .collect();

        let creds = Credentials {
            monitor_user: "pgwarden".into(),
            monitor_password: random_hex(12)?,
            replication_user: "replication".into(),
            replication_password: random_hex(12)?,
            app_user: "inmanta".into(),
            app_password: random_hex(12)?,
            app_db: "inmanta".into(),
        };

        // From here on, `cluster`'s Drop cleans up whatever a failed step left behind.
        let mut cluster = TestCluster {
            dir,
            bin_dir,
            nodes,
            creds,
            opts,
            api_token: random_hex(24)?,
            runner,
            _temp: temp,
            slot,
        };
        cluster.build()?;
        Ok(cluster)
    }

    fn build(&mut self) -> Result<(), KitError> {
        self.step("laying out the cluster directory", |c| c.layout())?;
        self.step("initialising the primary (initdb)", |c| c.init_primary())?;
        self.step("starting the primary", |c| c.start_with_port_retry(0))?;
        self.step("creating roles, database and replication slot", |c| {
            c.create_objects()
        })?;
        self.step("cloning the standby (pg_basebackup)", |c| c.clone_standby())?;
        self.step("starting the standby", |c| c.start_with_port_retry(1))?;
        self.step("waiting for the standby to stream", |c| {
            c.wait_for_standby(0, false, REPLICATION_TIMEOUT)
        })?;
        for i in 2..self.nodes.len() {
            self.step("cloning a replica (pg_basebackup)", |c| c.clone_node(i))?;
            self.step("starting a replica", |c| c.start_with_port_retry(i))?;
            self.step("waiting for the replica to stream", |c| {
                let name = c.nodes[i].name.clone();
                c.wait_for_walreceiver(0, &name, false, REPLICATION_TIMEOUT)
            })?;
        }
        if self.opts.synchronous {
            // Done last: a synchronous primary without an attached standby blocks every
            // write, including the setup above.
            self.step("making the standby synchronous", |c| {
                c.set_synchronous(0, true)?;
                c.wait_for_standby(0, true, REPLICATION_TIMEOUT)
            })?;
        }
        Ok(())
    }

    /// Runs one build step, wrapping its error with the step name and the node logs.
    fn step(
        &mut self,
        step: &str,
        f: impl FnOnce(&mut Self) -> Result<(), KitError>,
    ) -> Result<(), KitError> {
        f(self).map_err(|e| {
            let logs = if e.has_log() {
                String::new()
            } else {
                self.log_tails()
            };
            KitError::Start {
                step: step.to_string(),
                source: Box::new(e),
                logs,
            }
        })
    }

    fn log_tails(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let tail = file_tail(&n.log_file, TAIL_LINES);
            if !tail.trim().is_empty() {
                s.push_str(&format!(
                    "\n  server log {} (last lines):\n{}",
                    n.log_file.display(),
                    crate::error::indent(&tail)
                ));
            }
        }
        s
    }

    // ---- build steps -------------------------------------------------------------------

    fn layout(&mut self) -> Result<(), KitError> {
        let dir = self.dir.clone();
        for node in &self.nodes {
            let socket = node.socket_dir.join(".s.PGSQL.65535");
            if socket.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(KitError::Environment(format!(
                    "the cluster dir {} is too deep: the unix socket path {} would exceed \
                     {MAX_SOCKET_PATH} bytes. Choose a shorter directory.",
                    dir.display(),
                    socket.display()
                )));
            }
            if fs::read_dir(&node.data_dir).is_ok_and(|mut d| d.next().is_some()) {
                return Err(KitError::Environment(format!(
                    "{} already exists and is not empty (a cluster from an earlier run?). \
                     Remove {} or choose another directory.",
                    node.data_dir.display(),
                    dir.display()
                )));
            }
        }
        if self.runner.is_root() {
            check_traversable(&dir)?;
        }

        mkdir(&dir, None)?;
        self.runner.chown_one(&dir)?;
        let logs = dir.join("logs");
        let sockets = dir.join("sockets");
        mkdir(&logs, Some(0o755))?;
        mkdir(&sockets, Some(0o755))?;
        for node in &self.nodes {
            // PostgreSQL insists on 0700 (or 0750) data directories.
            mkdir(&node.data_dir, Some(0o700))?;
            mkdir(&node.socket_dir, Some(0o755))?;
        }
        self.runner.chown_tree(&logs)?;
        self.runner.chown_tree(&sockets)?;
        for node in &self.nodes {
            self.runner.chown_tree(&node.data_dir)?;
        }

        // Secrets stay owned by the invoking user (the daemon reading them runs as that
        // user too, root in the demo), readable by nobody else.
        let secrets = dir.join("secrets");
        mkdir(&secrets, Some(0o700))?;
        for which in Secret::ALL {
            let value = self.secret_value(which).to_string();
            write_secret(&self.secret_file(which), &value)?;
        }
        Ok(())
    }

    fn init_primary(&mut self) -> Result<(), KitError> {
        let node = &self.nodes[0];
        self.server_cmd("initdb")
            .arg("-D")
            .arg(&node.data_dir)
            .args(INITDB_ARGS)
            .run()?;
        self.nodes[0].port = free_port();
        self.write_node_settings(0)?;
        let hba = match &self.opts.hba_tcp {
            None => node_hba(),
            Some(lines) => hba(&[]) + &lines.join("\n") + "\n",
        };
        let hba_path = self.nodes[0].data_dir.join("pg_hba.conf");
        fs::write(&hba_path, hba).ctx(|| format!("writing {}", hba_path.display()))?;
        if let Some((cert, key)) = &self.opts.server_tls {
            let dir = &self.nodes[0].data_dir;
            fs::copy(cert, dir.join("server.crt")).ctx(|| format!("copying {}", cert.display()))?;
            fs::copy(key, dir.join("server.key")).ctx(|| format!("copying {}", key.display()))?;
            // PostgreSQL refuses a key others can read.
            fs::set_permissions(dir.join("server.key"), fs::Permissions::from_mode(0o600))
                .ctx(|| "chmod 0600 server.key".into())?;
            // Above the testkit's block, so clones (which copy postgresql.conf) keep it.
            let conf = dir.join("postgresql.conf");
            let text = fs::read_to_string(&conf).ctx(|| format!("reading {}", conf.display()))?;
            let text = match text.find(CONF_MARKER) {
                Some(pos) => format!("{}ssl = on\n\n{}", &text[..pos], &text[pos..]),
                None => format!("{text}\nssl = on\n"),
            };
            fs::write(&conf, text).ctx(|| format!("writing {}", conf.display()))?;
        }
        self.runner.chown_tree(&self.nodes[0].data_dir)
    }

    fn create_objects(&mut self) -> Result<(), KitError> {
        // Fed on stdin, never on argv: it holds the passwords.
        let sql = objects_sql(&self.creds, &self.opts.slot);
        // psql -f - runs each statement in its own transaction, as CREATE DATABASE needs.
        self.psql_base(0, "postgres")
            .args(["-f", "-"])
            .run_with_stdin(Some(&sql))?;
        Ok(())
    }

    fn clone_standby(&mut self) -> Result<(), KitError> {
        self.clone_node(1)
    }

    /// Clones node `i` from node 0: the standby (node 1) over the slot, a
    /// replica over a temporary one.
    fn clone_node(&mut self, i: usize) -> Result<(), KitError> {
        let (a, b) = (&self.nodes[0], &self.nodes[i]);
        let slot: &[&str] = if i == 1 {
            &["-S", &self.opts.slot]
        } else {
            &[]
        };
        self.server_cmd("pg_basebackup")
            .args(["-h", &a.host, "-p", &a.port.to_string()])
            .args(["-U", &self.creds.replication_user])
            .arg("-D")
            .arg(&b.data_dir)
            .args(["-c", "fast", "-X", "stream", "-R"])
            .args(slot)
            .args(["--no-sync", "-w"])
            .env("PGPASSWORD", &self.creds.replication_password)
            .log(&a.log_file)
            .run()?;

        self.nodes[i].port = free_port();
        self.write_node_settings(i)?;
        self.write_standby_settings(i, 0)?;
        let b = &self.nodes[i];
        let signal_file = b.data_dir.join("standby.signal");
        if !signal_file.exists() {
            fs::write(&signal_file, "").ctx(|| format!("creating {}", signal_file.display()))?;
        }
        fs::set_permissions(&b.data_dir, fs::Permissions::from_mode(0o700))
            .ctx(|| format!("chmod 0700 {}", b.data_dir.display()))?;
        self.runner.chown_tree(&b.data_dir)
    }

    /// Starts node `i`, moving it to a fresh port when the one picked got taken meanwhile
    /// (free_port can only say the port *was* free).
    fn start_with_port_retry(&mut self, i: usize) -> Result<(), KitError> {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let offset = file_len(&self.nodes[i].log_file);
            match self.start_node(i) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let logged = read_from(&self.nodes[i].log_file, Some(offset));
                    if attempt < ATTEMPTS && logged.contains("Address already in use") {
                        self.nodes[i].port = free_port();
                        self.write_node_settings(i)?;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    // ---- configuration files -------------------------------------------------------------

    /// (Re)writes node `i`'s block of settings at the end of its postgresql.conf: the
    /// common test settings plus its own port and socket directory.
    ///
    /// Public because `pg_rewind` copies postgresql.conf from the source server: after
    /// rewinding node `i`, call this to give it back its own port and socket directory.
    pub fn write_node_settings(&self, i: usize) -> Result<(), KitError> {
        let node = &self.nodes[i];
        let path = node.data_dir.join("postgresql.conf");
        let current = fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))?;
        let text = with_settings_block(
            &current,
            &node.name,
            "127.0.0.1",
            node.port,
            &node.socket_dir,
        );
        fs::write(&path, text).ctx(|| format!("writing {}", path.display()))
    }

    /// Makes node `i` a standby of node `upstream`: rewrites primary_conninfo and
    /// primary_slot_name in its postgresql.auto.conf (other lines kept) and creates
    /// standby.signal. The password stays in primary_conninfo on purpose: pgwarden must
    /// strip it when reporting the setting, and tests check that. Takes effect on the next
    /// start (or reload, for these two settings on PostgreSQL 13+).
    ///
    /// A replica (node 2 and later) streams under its own name and without a slot.
    pub fn write_standby_settings(&self, i: usize, upstream: usize) -> Result<(), KitError> {
        let node = &self.nodes[i];
        let up = &self.nodes[upstream];
        let (app, slot) = if self.is_replica(i) {
            (node.name.as_str(), "")
        } else {
            (self.opts.application_name.as_str(), self.opts.slot.as_str())
        };
        let conninfo = format!(
            "host={} port={} user={} password={} application_name={}",
            up.host,
            up.port,
            conninfo_value(&self.creds.replication_user),
            conninfo_value(&self.creds.replication_password),
            conninfo_value(app),
        );
        write_standby_conf(&node.data_dir, &conninfo, slot, &self.runner)
    }

    /// Node `i` is one of [`ClusterOptions::replicas`], not of the pair.
    pub fn is_replica(&self, i: usize) -> bool {
        i >= 2
    }

    // ---- accessors ---------------------------------------------------------------------

    /// The cluster directory (data dirs, logs/, sockets/, secrets/).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of initdb, pg_ctl, psql... used for this cluster.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Index 0 is the initial primary, 1 the standby.
    pub fn nodes(&self) -> &[PgNode] {
        &self.nodes
    }

    pub fn node(&self, i: usize) -> &PgNode {
        &self.nodes[i]
    }

    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// A random token for pgwarden's HTTP API, also in `secret_file(Secret::ApiToken)`.
    pub fn api_token(&self) -> &str {
        &self.api_token
    }

    /// Path of a secret file under `<dir>/secrets/` (mode 0600, no trailing newline).
    pub fn secret_file(&self, which: Secret) -> PathBuf {
        self.dir.join("secrets").join(which.file_name())
    }

    fn secret_value(&self, which: Secret) -> &str {
        match which {
            Secret::MonitorPassword => &self.creds.monitor_password,
            Secret::ReplicationPassword => &self.creds.replication_password,
            Secret::AppPassword => &self.creds.app_password,
            Secret::ApiToken => &self.api_token,
        }
    }

    /// libpq key/value connection string to node `i` over TCP.
    pub fn conninfo(&self, i: usize, user: &str, password: &str, db: &str) -> String {
        let n = &self.nodes[i];
        format!(
            "host={} port={} user={} password={} dbname={}",
            n.host,
            n.port,
            conninfo_value(user),
            conninfo_value(password),
            conninfo_value(db)
        )
    }

    // ---- server control ----------------------------------------------------------------

    /// `pg_ctl start -w -l <log_file>`.
    pub fn start_node(&self, i: usize) -> Result<(), KitError> {
        self.clear_zombie_pidfile(i);
        let n = &self.nodes[i];
        self.server_cmd("pg_ctl")
            .arg("-D")
            .arg(&n.data_dir)
            .args(["-w", "-t", "60", "-l"])
            .arg(&n.log_file)
            .arg("start")
            .log(&n.log_file)
            .hint(format!(
                "see the server log {} for why {} did not start",
                n.log_file.display(),
                n.name
            ))
            .run()?;
        Ok(())
    }

    /// `pg_ctl stop -w -m fast|immediate`; Ok when the node is already stopped.
    pub fn stop_node(&self, i: usize, mode: StopMode) -> Result<(), KitError> {
        if !self.is_running(i) {
            self.clear_zombie_pidfile(i);
            return Ok(());
        }
        let n = &self.nodes[i];
        let result = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(&n.data_dir)
            .args(["-w", "-t", "60", "-m", mode.as_arg(), "stop"])
            .log(&n.log_file)
            .run();
        match result {
            // It may have died on its own between the check and the stop.
            Err(_) if !self.is_running(i) => {
                self.clear_zombie_pidfile(i);
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// SIGKILLs node `i`'s postmaster (a crash), and returns once it and all its children
    /// are gone, so the caller can rely on the node being down.
    pub fn kill_postmaster(&self, i: usize) -> Result<(), KitError> {
        let n = &self.nodes[i];
        let pid = self
            .postmaster_pid(i)
            .filter(|&p| pid_alive(p))
            .ok_or_else(|| {
                KitError::Environment(format!(
                    "cannot kill the postmaster of {}: it is not running",
                    n.name
                ))
            })?;
        signal(pid, libc::SIGKILL).ctx(|| format!("sending SIGKILL to postmaster {pid}"))?;
        poll_until(
            Duration::from_secs(15),
            &format!("{}'s postmaster {pid} and its children to exit", n.name),
            || (!pid_alive(pid) && postgres_processes_in(&n.data_dir).is_empty()).then_some(()),
        )?;
        self.clear_zombie_pidfile(i);
        Ok(())
    }

    /// The postmaster pid recorded in node `i`'s postmaster.pid (None if no such file).
    /// The process may be dead if the server crashed; see [`crate::pid_alive`].
    pub fn postmaster_pid(&self, i: usize) -> Option<i32> {
        postmaster_pid_in(&self.nodes[i].data_dir)
    }

    /// Whether node `i`'s postmaster is alive (zombies count as dead).
    pub fn is_running(&self, i: usize) -> bool {
        self.postmaster_pid(i).is_some_and(pid_alive)
    }

    /// Live server processes (postmaster and children) of node `i`.
    pub fn node_processes(&self, i: usize) -> Vec<i32> {
        postgres_processes_in(&self.nodes[i].data_dir)
    }

    /// `pg_ctl promote -w`.
    pub fn promote(&self, i: usize) -> Result<(), KitError> {
        let n = &self.nodes[i];
        self.server_cmd("pg_ctl")
            .arg("-D")
            .arg(&n.data_dir)
            .args(["-w", "-t", "60", "promote"])
            .log(&n.log_file)
            .run()?;
        Ok(())
    }

    /// A postmaster killed here becomes a zombie (PID 1 of this VM does not reap
    /// orphans) that still "exists" for kill(pid, 0), so the next postmaster would refuse
    /// to start over its postmaster.pid and socket lock file. Once it and its children are
    /// gone, remove those stale lock files, as a reaping init would have made them
    /// harmless.
    fn clear_zombie_pidfile(&self, i: usize) {
        let n = &self.nodes[i];
        clear_zombie_pidfile(&n.data_dir, &n.socket_dir);
    }

    // ---- SQL ---------------------------------------------------------------------------

    /// Runs `sql` on node `i` as superuser `postgres` in database `postgres`, through the
    /// unix socket; returns the trimmed unaligned tuples-only output.
    pub fn psql(&self, i: usize, sql: &str) -> Result<String, KitError> {
        self.psql_db(i, "postgres", sql)
    }

    /// [`TestCluster::psql`] in database `db`.
    pub fn psql_db(&self, i: usize, db: &str, sql: &str) -> Result<String, KitError> {
        let out = self.psql_base(i, db).arg("-c").arg(sql).run()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs `sql` on node `i` over TCP as `user` (password authentication, so this also
    /// exercises pg_hba.conf and the role's password).
    pub fn psql_tcp(
        &self,
        i: usize,
        user: &str,
        password: &str,
        db: &str,
        sql: &str,
    ) -> Result<String, KitError> {
        let n = &self.nodes[i];
        let out = Cmd::new(&self.bin_dir.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                &n.host,
                "-p",
                &n.port.to_string(),
                "-U",
                user,
                "-d",
                db,
            ])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .arg("-c")
            .arg(sql)
            .run()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `ALTER SYSTEM SET synchronous_standby_names` to the standby's application_name
    /// (`on`) or '' (`off`) on node `primary`, then reload.
    pub fn set_synchronous(&self, primary: usize, on: bool) -> Result<(), KitError> {
        let names = if on {
            standby_name(&self.opts.application_name)
        } else {
            String::new()
        };
        // Two calls: ALTER SYSTEM refuses to run inside the implicit transaction of a
        // multi-statement -c.
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

    /// Waits until node `primary`'s pg_stat_replication shows the standby (by
    /// application_name) streaming, and with `sync` also sync_state = 'sync'.
    pub fn wait_for_standby(
        &self,
        primary: usize,
        sync: bool,
        timeout: Duration,
    ) -> Result<(), KitError> {
        self.wait_for_walreceiver(primary, &self.opts.application_name, sync, timeout)
    }

    /// Waits until node `primary`'s pg_stat_replication shows a walreceiver
    /// named `app` streaming (and with `sync`, sync_state = 'sync').
    pub fn wait_for_walreceiver(
        &self,
        primary: usize,
        app: &str,
        sync: bool,
        timeout: Duration,
    ) -> Result<(), KitError> {
        let want = if sync { "streaming|sync" } else { "streaming|" };
        let sql = format!(
            "SELECT state || '|' || {} FROM pg_stat_replication WHERE application_name = {}",
            if sync { "sync_state" } else { "''" },
            sql_literal(app)
        );
        let what = format!(
            "{} to show standby '{app}' {} in pg_stat_replication",
            self.nodes[primary].name,
            if sync {
                "streaming with sync_state = sync"
            } else {
                "streaming"
            }
        );
        let started = Instant::now();
        let mut last = String::new();
        poll_until(timeout, &what, || {
            match self.psql(primary, &sql) {
                Ok(out) => {
                    if out.lines().any(|l| l == want) {
                        return Some(());
                    }
                    last = out;
                }
                Err(e) => last = e.to_string(),
            }
            None
        })
        .map_err(|e| match e {
            KitError::Timeout { what, .. } => KitError::Timeout {
                what: format!(
                    "{what} (last seen: {})",
                    if last.is_empty() { "no row" } else { &last }
                ),
                waited: started.elapsed(),
            },
            e => e,
        })
    }

    fn psql_base(&self, i: usize, db: &str) -> Cmd {
        let n = &self.nodes[i];
        Cmd::new(&self.bin_dir.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&n.socket_dir)
            .args(["-p", &n.port.to_string(), "-U", "postgres", "-d", db])
            .env("PGCONNECT_TIMEOUT", "10")
    }

    /// A server-side command, run as `postgres` when we are root, from the cluster dir
    /// (as postgres, the caller's cwd, e.g. /root, may not be readable).
    fn server_cmd(&self, program: &str) -> Cmd {
        self.runner
            .server(&self.bin_dir.join(program))
            .current_dir(&self.dir)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if self.postmaster_pid(i).is_some() {
                let _ = self.stop_node(i, StopMode::Immediate);
            }
            // Belt and braces: whatever pg_ctl could not stop is killed outright, so no
            // server outlives the cluster (nor keeps its port).
            for pid in self.node_processes(i) {
                let _ = signal(pid, libc::SIGKILL);
            }
        }
        let _ = poll_until(Duration::from_secs(10), "cluster processes to exit", || {
            (0..self.nodes.len())
                .all(|i| self.node_processes(i).is_empty())
                .then_some(())
        });
    }
}

/// The postmaster pid recorded in `data_dir`/postmaster.pid.
pub(crate) fn postmaster_pid_in(data_dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// See `TestCluster::clear_zombie_pidfile` for why: removes the lock files of a postmaster that
/// is a zombie with no live child.
pub(crate) fn clear_zombie_pidfile(data_dir: &Path, socket_dir: &Path) {
    let Some(pid) = postmaster_pid_in(data_dir) else {
        return;
    };
    if !is_zombie(pid) || !postgres_processes_in(data_dir).is_empty() {
        return;
    }
    if let Ok(entries) = fs::read_dir(socket_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = fs::read_to_string(entry.path()).unwrap_or_default();
            if name.starts_with(".s.PGSQL.")
                && name.ends_with(".lock")
                && owner.lines().next().map(str::trim) == Some(pid.to_string().as_str())
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    let _ = fs::remove_file(data_dir.join("postmaster.pid"));
}

/// Points the server in `data_dir` at its upstream: primary_conninfo and primary_slot_name
/// rewritten in postgresql.auto.conf (other lines kept), and standby.signal created.
pub(crate) fn write_standby_conf(
    data_dir: &Path,
    conninfo: &str,
    slot: &str,
    runner: &Runner,
) -> Result<(), KitError> {
    let path = data_dir.join("postgresql.auto.conf");
    let current = fs::read_to_string(&path).unwrap_or_default();
    let mut text: String = current
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            key != "primary_conninfo" && key != "primary_slot_name"
        })
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!(
        "primary_conninfo = {}\nprimary_slot_name = {}\n",
        conf_literal(conninfo),
        conf_literal(slot)
    ));
    fs::write(&path, text).ctx(|| format!("writing {}", path.display()))?;
    let signal_file = data_dir.join("standby.signal");
    if !signal_file.exists() {
        fs::write(&signal_file, "").ctx(|| format!("creating {}", signal_file.display()))?;
    }
    runner.chown_one(&path)?;
    runner.chown_one(&signal_file)
}

/// `current` (a postgresql.conf) with the testkit's settings block for a node replaced or
/// appended: the common test settings plus the node's listen address, port and socket
/// directory.
pub(crate) fn with_settings_block(
    current: &str,
    name: &str,
    listen: &str,
    port: u16,
    socket_dir: &Path,
) -> String {
    let base = match current.find(CONF_MARKER) {
        Some(pos) => &current[..pos],
        None => current,
    };
    let mut text = base.trim_end().to_string();
    text.push_str("\n\n");
    text.push_str(&format!(
        "{CONF_MARKER} for node {name} (rewritten by the testkit; edit above this line) ----\n"
    ));
    text.push_str(&format!(
        "listen_addresses = {listen}\n\
         port = {port}\n\
         unix_socket_directories = {sock}\n\
         cluster_name = {cname}\n\
         wal_level = replica\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         hot_standby = on\n\
         # pg_rewind needs either data checksums or wal_log_hints.\n\
         wal_log_hints = on\n\
         # Test clusters live in temp dirs and only survive process crashes (which fsync\n\
         # does not matter for), never OS crashes: skipping fsync makes them much faster.\n\
         fsync = off\n\
         shared_buffers = 16MB\n\
         max_connections = 40\n\
         synchronous_commit = on\n\
         logging_collector = off\n\
         wal_keep_size = 128MB\n\
         password_encryption = scram-sha-256\n\
         # Reconnect a standby quickly after its upstream restarts or changes (default 5s).\n\
         wal_retrieve_retry_interval = '500ms'\n",
        listen = conf_literal(listen),
        sock = conf_literal(&socket_dir.to_string_lossy()),
        cname = conf_literal(name),
    ));
    text
}

/// The roles, the application's database and the standby's slot, as SQL for `psql -f -`.
pub(crate) fn objects_sql(c: &Credentials, slot: &str) -> String {
    format!(
        "CREATE ROLE {mon} LOGIN SUPERUSER PASSWORD {monpw};\n\
         GRANT pg_monitor TO {mon};\n\
         GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO {mon};\n\
         GRANT EXECUTE ON FUNCTION pg_control_checkpoint() TO {mon};\n\
         GRANT EXECUTE ON FUNCTION pg_control_system() TO {mon};\n\
         GRANT EXECUTE ON FUNCTION pg_control_init() TO {mon};\n\
         GRANT EXECUTE ON FUNCTION pg_control_recovery() TO {mon};\n\
         CREATE ROLE {rep} LOGIN REPLICATION PASSWORD {reppw};\n\
         CREATE ROLE {app} LOGIN PASSWORD {apppw};\n\
         CREATE DATABASE {db} OWNER {app};\n\
         SELECT pg_create_physical_replication_slot({slot});\n",
        mon = ident(&c.monitor_user),
        monpw = sql_literal(&c.monitor_password),
        rep = ident(&c.replication_user),
        reppw = sql_literal(&c.replication_password),
        app = ident(&c.app_user),
        apppw = sql_literal(&c.app_password),
        db = ident(&c.app_db),
        slot = sql_literal(slot),
    )
}

/// What synchronous_standby_names should contain for an application_name: the bare name
/// when it is a plain identifier, else double-quoted.
pub(crate) fn standby_name(app: &str) -> String {
    let plain = !app.is_empty()
        && app
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !app.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        app.to_string()
    } else {
        format!("\"{}\"", app.replace('"', "\"\""))
    }
}

/// Quotes an SQL identifier.
pub(crate) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn node_hba() -> String {
    hba(&["127.0.0.1/32"])
}

/// pg_hba.conf: trust on the unix socket, passwords (scram) over TCP from `networks`.
pub(crate) fn hba(networks: &[&str]) -> String {
    let mut s = "# Written by pgwarden-testkit.\n\
     # TYPE  DATABASE     USER  ADDRESS       METHOD\n\
     local   all          all                 trust\n\
     # Lets tools such as pg_basebackup use the socket too.\n\
     local   replication  all                 trust\n"
        .to_string();
    for net in networks {
        s.push_str(&format!(
            "host    all          all   {net}  scram-sha-256\n\
             host    replication  all   {net}  scram-sha-256\n"
        ));
    }
    s
}

fn validate_names(opts: &ClusterOptions) -> Result<(), KitError> {
    let [a, b] = &opts.node_names;
    for name in [a, b].into_iter().chain(&opts.replicas) {
        let ok = !name.is_empty()
            && name != "."
            && name != ".."
            && !["logs", "sockets", "secrets"].contains(&name.as_str())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !ok {
            return Err(KitError::Environment(format!(
                "invalid node name {name:?}: use letters, digits, '-', '_' or '.', and not \
                 logs/sockets/secrets (it names a directory in the cluster dir)"
            )));
        }
    }
    if a == b {
        return Err(KitError::Environment(format!(
            "both nodes are named {a:?}; node names must differ"
        )));
    }
    let mut seen = std::collections::BTreeSet::from([a, b]);
    if let Some(r) = opts.replicas.iter().find(|r| !seen.insert(*r)) {
        return Err(KitError::Environment(format!(
            "two nodes are named {r:?}; node names must differ"
        )));
    }
    if opts.slot.is_empty() || opts.application_name.is_empty() {
        return Err(KitError::Environment(
            "slot and application_name must not be empty".into(),
        ));
    }
    Ok(())
}

/// As root the servers run as `postgres`, which must be able to reach the cluster dir.
pub(crate) fn check_traversable(dir: &Path) -> Result<(), KitError> {
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(ancestor) else {
            continue;
        };
        if meta.permissions().mode() & 0o001 == 0 {
            return Err(KitError::Environment(format!(
                "the postgres user cannot reach {} because {} is not searchable by others \
                 (mode {:o}). Choose a directory under /tmp, or `chmod o+x {}`.",
                dir.display(),
                ancestor.display(),
                meta.permissions().mode() & 0o7777,
                ancestor.display()
            )));
        }
    }
    Ok(())
}

pub(crate) fn mkdir(path: &Path, mode: Option<u32>) -> Result<(), KitError> {
    fs::create_dir_all(path).ctx(|| format!("creating {}", path.display()))?;
    if let Some(mode) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .ctx(|| format!("chmod {mode:o} {}", path.display()))?;
    }
    Ok(())
}

pub(crate) fn write_secret(path: &Path, value: &str) -> Result<(), KitError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .ctx(|| format!("creating secret file {}", path.display()))?;
    // An existing file keeps its old mode despite .mode(); force it.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .ctx(|| format!("chmod 600 {}", path.display()))?;
    f.write_all(value.as_bytes())
        .ctx(|| format!("writing secret file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_names_are_quoted_only_when_needed() {
        assert_eq!(standby_name("inmanta"), "inmanta");
        assert_eq!(standby_name("In-manta"), "\"In-manta\"");
    }

    /// The start retries on a fresh port when the chosen one was taken meanwhile.
    #[test]
    fn start_moves_to_a_free_port_when_its_port_is_taken() {
        let mut c = TestCluster::start(ClusterOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        c.stop_node(1, StopMode::Fast).unwrap();
        let old = c.node(1).port;
        let _squatter = std::net::TcpListener::bind(("127.0.0.1", old)).unwrap();
        c.start_with_port_retry(1).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(c.node(1).port, old);
        assert_eq!(c.psql(1, "SHOW port").unwrap(), c.node(1).port.to_string());
        c.wait_for_standby(0, true, REPLICATION_TIMEOUT).unwrap();
    }

    #[test]
    fn node_names_are_checked() {
        let mut o = ClusterOptions::default();
        assert!(validate_names(&o).is_ok());
        o.node_names[1] = "pg-a".into();
        assert!(validate_names(&o).is_err());
        o.node_names[1] = "../x".into();
        assert!(validate_names(&o).is_err());
        o.node_names[1] = "logs".into();
        assert!(validate_names(&o).is_err());
    }
}
