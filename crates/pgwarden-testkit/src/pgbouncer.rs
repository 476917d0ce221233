//! A real pgbouncer (Debian's `/usr/sbin/pgbouncer`) for tests: transaction
//! pooling, in its own temporary directory, on a free loopback port, run in
//! the foreground (as the `postgres` user when we are root, as a packaged
//! pgbouncer runs as its own user); stopped and removed on drop.
//!
//! Clients and the admin console log in with SCRAM against `userlist.txt`
//! (plain passwords there, so pgbouncer can also log in to PostgreSQL with
//! them). pgbouncer.ini belongs to pgbouncer's user, 0640, as a packaged one.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
