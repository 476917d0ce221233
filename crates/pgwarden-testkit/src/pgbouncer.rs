//! A real pgbouncer (Debian's `/usr/sbin/pgbouncer`) for tests: transaction
//! pooling, in its own temporary directory, on a free loopback port, run in
//! the foreground (as the `postgres` user when we are root, as a packaged
//! pgbouncer runs as its own user); stopped and removed on drop.
//!
//! [`Writer`] is an application behind it: one connection, committing rows.
//!
//! Clients and the admin console log in with SCRAM against `userlist.txt`
//! (plain passwords there, so pgbouncer can also log in to PostgreSQL with
//! them). pgbouncer.ini belongs to pgbouncer's user, 0640, as a packaged one.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{IoContext, KitError};
use crate::procs::Runner;
use crate::util::{free_port, poll_until};

/// Debian's binary, installed by `apt-get install pgbouncer`.
pub const PGBOUNCER_BIN: &str = "/usr/sbin/pgbouncer";

/// One `[databases]` entry.
#[derive(Clone, Debug)]
pub struct Database {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

/// What a test asks of its pgbouncer.
#[derive(Clone, Debug)]
pub struct PgbouncerOptions {
    pub databases: Vec<Database>,
    /// Client users and their passwords (also used for the server login).
    pub users: Vec<(String, String)>,
    pub admin_user: String,
    pub admin_password: String,
}

/// A running pgbouncer; killed and its directory removed on drop.
pub struct Pgbouncer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    pub config_file: PathBuf,
    pub log_file: PathBuf,
    options: PgbouncerOptions,
}

fn quote_user(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl Pgbouncer {
    /// Starts it under `parent` and waits until its admin console answers.
    pub fn start(parent: &Path, options: PgbouncerOptions) -> Result<Pgbouncer, KitError> {
        if !Path::new(PGBOUNCER_BIN).exists() {
            return Err(KitError::Environment(format!(
                "{PGBOUNCER_BIN} is missing: `apt-get install pgbouncer` (scripts/install-test-deps.sh does)"
            )));
        }
        let runner = Runner::detect()?;
        let dir = tempfile::Builder::new()
            .prefix("pgbouncer-")
            .tempdir_in(parent)
            .ctx(|| format!("creating a pgbouncer directory in {}", parent.display()))?;
        let port = free_port();
        let config_file = dir.path().join("pgbouncer.ini");
        let log_file = dir.path().join("pgbouncer.log");
        let auth_file = dir.path().join("userlist.txt");
        let mut users: Vec<String> = options
            .users
            .iter()
            .map(|(u, p)| format!("{} {}\n", quote_user(u), quote_user(p)))
            .collect();
        users.push(format!(
            "{} {}\n",
            quote_user(&options.admin_user),
            quote_user(&options.admin_password)
        ));
        fs::write(&auth_file, users.concat()).ctx(|| format!("writing {}", auth_file.display()))?;
        fs::write(
            &config_file,
            ini(&options, port, dir.path(), &auth_file, &log_file),
        )
        .ctx(|| format!("writing {}", config_file.display()))?;
        for f in [&auth_file, &config_file] {
            fs::set_permissions(f, fs::Permissions::from_mode(0o640))
                .ctx(|| format!("chmod {}", f.display()))?;
        }
        runner.chown_tree(dir.path())?;
        let mut bouncer = Pgbouncer {
            child: None,
            dir,
            port,
            config_file,
            log_file,
            options,
        };
        bouncer.spawn(&runner)?;
        Ok(bouncer)
    }

    fn spawn(&mut self, runner: &Runner) -> Result<(), KitError> {
        let stdout = fs::File::create(self.dir.path().join("pgbouncer.out"))
            .ctx(|| "creating pgbouncer.out".to_owned())?;
        let mut cmd = Command::new(PGBOUNCER_BIN);
        // The user switch is done in the child itself (not through
        // runuser): the process killed on drop is then pgbouncer itself.
        if let Runner::AsPostgres { uid, gid } = runner {
            use std::os::unix::process::CommandExt;
            cmd.uid(*uid).gid(*gid);
        }
        let child = cmd
            .arg(&self.config_file)
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().ctx(|| "pgbouncer.out".to_owned())?)
            .stderr(stdout)
            .spawn()
            .ctx(|| format!("starting {PGBOUNCER_BIN}"))?;
        self.child = Some(child);
        let port = self.port;
        poll_until(Duration::from_secs(20), "pgbouncer to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        })
        .map_err(|e| {
            KitError::Environment(format!("{e}\n--- pgbouncer log ---\n{}", self.log_text()))
        })
    }

    /// Stops it (SIGKILL: a pgbouncer that is down, as a crashed one is).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same files (after [`Pgbouncer::kill`]).
    pub fn restart(&mut self) -> Result<(), KitError> {
        self.kill();
        self.spawn(&Runner::detect()?)
    }

    /// How a client (the application) connects to it.
    pub fn client_config(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(10));
        cfg
    }

    pub fn admin_user(&self) -> &str {
        &self.options.admin_user
    }

    pub fn admin_password(&self) -> &str {
        &self.options.admin_password
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_text(&self) -> String {
        let mut t = fs::read_to_string(&self.log_file).unwrap_or_default();
        t.push_str(&fs::read_to_string(self.dir.path().join("pgbouncer.out")).unwrap_or_default());
        t
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ini(o: &PgbouncerOptions, port: u16, dir: &Path, auth_file: &Path, log_file: &Path) -> String {
    let mut s = String::from("; written by pgwarden-testkit\n[databases]\n");
    for d in &o.databases {
        s.push_str(&format!(
            "{} = host={} port={} dbname={}\n",
            d.name, d.host, d.port, d.dbname
        ));
    }
    s.push_str(&format!(
        "\n[pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         pidfile = {pid}\n\
         logfile = {log}\n\
         auth_type = scram-sha-256\n\
         auth_file = {auth}\n\
         admin_users = {admin}\n\
         ; the application's door: one server connection per transaction\n\
         pool_mode = transaction\n\
         default_pool_size = 5\n\
         max_client_conn = 100\n\
         ; after a server login failed (the primary died), pgbouncer waits this\n\
         ; long before it tries again, even once re-pointed (default 15s)\n\
         server_login_retry = 1\n\
         ; what the client library sends at startup\n\
         ignore_startup_parameters = extra_float_digits,options\n",
        pid = dir.join("pgbouncer.pid").display(),
        log = log_file.display(),
        auth = auth_file.display(),
        admin = o.admin_user,
    ));
    s
}

/// Opens a client connection on `rt` (its driver spawned there).
pub fn open(
    rt: &tokio::runtime::Runtime,
    cfg: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, String> {
    rt.block_on(async {
        let (client, conn) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    })
}

/// One INSERT the writer made.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub id: i64,
    pub began: Instant,
    pub ended: Instant,
    /// None: acknowledged.
    pub error: Option<String>,
}

/// An application behind pgbouncer: ONE connection, committing numbered rows
/// (`INSERT INTO <table> (id)`) one after the other, a few milliseconds apart,
/// in its own thread. Simple protocol: transaction pooling keeps no prepared
/// statement across transactions. A connection pgbouncer closes is opened
/// again, as an application's pool would, and counted.
pub struct Writer {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Connects (an error if it cannot), then writes until [`Writer::finish`].
    pub fn start(cfg: tokio_postgres::Config, table: &str) -> Result<Writer, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut client = open(&rt, &cfg)?;
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(1));
        let (a, s, n) = (attempts.clone(), stop.clone(), connections.clone());
        let table = table.to_owned();
        let thread = std::thread::spawn(move || {
            let mut id = 0;
            while !s.load(Ordering::Relaxed) {
                if client.is_closed() {
                    match open(&rt, &cfg) {
                        Ok(c) => {
                            client = c;
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    }
                }
                id += 1;
                let began = Instant::now();
                let r = rt.block_on(
                    client.simple_query(&format!("INSERT INTO {table} (id) VALUES ({id})")),
                );
                a.lock().unwrap_or_else(|p| p.into_inner()).push(Attempt {
                    id,
                    began,
                    ended: Instant::now(),
                    error: r.err().map(|e| match e.as_db_error() {
                        Some(db) => format!("{e}: {}", db.message()),
                        None => e.to_string(),
                    }),
                });
                // The application's pace: a commit every few milliseconds.
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Ok(Writer {
            attempts,
            connections,
            stop,
            thread: Some(thread),
        })
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether a commit that began after `after` was acknowledged.
    pub fn committed_after(&self, after: Instant) -> bool {
        self.attempts()
            .iter()
            .any(|a| a.error.is_none() && a.began > after)
    }

    /// Connections opened so far: 1 unless pgbouncer closed the first.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Stops writing; every attempt made.
    pub fn finish(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.attempts()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The longest single INSERT (the pause the application saw) and the longest
/// gap between two acknowledged commits.
pub fn longest_pause(attempts: &[Attempt]) -> (Duration, Duration) {
    let insert = attempts
        .iter()
        .map(|a| a.ended - a.began)
        .max()
        .unwrap_or_default();
    let acks: Vec<Instant> = attempts
        .iter()
        .filter(|a| a.error.is_none())
        .map(|a| a.ended)
        .collect();
    let gap = acks
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    (insert, gap)
}
