//! Helpers shared by the integration tests: a real `pgwarden run` process per
//! node, a tiny HTTP client, and readers for the metrics text.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use pgwarden_testkit::{poll_until, ClusterOptions, DaemonLayout, TestCluster};

pub mod certs;
pub mod testbed;

/// The `pgwarden` binary of this build (target/<profile>/pgwarden, next to
/// the test's deps/ directory), or `PGWARDEN_BIN`.
pub fn pgwarden_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PGWARDEN_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("pgwarden");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p pgwarden`, or run the tests with `cargo nextest run --workspace`)",
        bin.display()
    );
    bin
}

/// `name` on the PATH, else in /usr/sbin or /usr/bin. A missing tool fails
/// the test with what to install: CI installs the tools, so a missing one
/// is a failure, never a skip.
pub fn tool(name: &str, debian_package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed (looked on PATH, in /usr/sbin and /usr/bin). This \
                 test needs it: `apt-get install -y {debian_package}` (Debian package \
                 `{debian_package}`; .ci/run installs it)"
            )
        })
}

/// The permission bits of a file (with setuid/setgid/sticky).
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A `pgwarden run` process; killed on drop.
pub struct Daemon {
    child: Option<Child>,
    pub url: String,
    pub log: PathBuf,
    pub config: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path, url: String) -> Daemon {
        Daemon::start_with_env(config, url, &[])
    }

    pub fn start_with_env(config: &Path, url: String, env: &[(&str, &str)]) -> Daemon {
        let d = Daemon::spawn(config, url, env);
        poll_until(
            Duration::from_secs(20),
            "the daemon to answer /livez",
            || (d.get("/livez").status == 200).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}\n--- daemon log ---\n{}", d.log_text()));
        d
    }

    /// Starts `pgwarden run` without waiting for it to answer (an HTTPS
    /// daemon, which this module's plain HTTP client cannot ask).
    pub fn spawn(config: &Path, url: String, env: &[(&str, &str)]) -> Daemon {
        let log = config.with_extension("log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(pgwarden_bin())
            .args(["run", "--config"])
            .arg(config)
            .env("PGWARDEN_LOG", "info,pgwarden_pg=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start pgwarden");
        Daemon {
            child: Some(child),
            url,
            log,
            config: config.to_owned(),
        }
    }

    pub fn get(&self, path: &str) -> Response {
        http("GET", &format!("{}{}", self.url, path), None, &[])
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").body
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    /// SIGKILL, as a crash or an OOM kill would: no cleanup at all.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A request with the API token.
    pub fn post(&self, path: &str, body: &str, token: &str) -> Response {
        let auth = format!("Bearer {token}");
        http(
            "POST",
            &format!("{}{}", self.url, path),
            Some(body),
            &[("Authorization", &auth)],
        )
    }

    /// A PUT with the API token.
    pub fn put(&self, path: &str, body: &str, token: &str) -> Response {
        let auth = format!("Bearer {token}");
        http(
            "PUT",
            &format!("{}{}", self.url, path),
            Some(body),
            &[("Authorization", &auth)],
        )
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        poll_until(
            Duration::from_secs(10),
            "the daemon to exit after SIGTERM",
            || child.try_wait().ok().flatten(),
        )
        .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A real cluster and a daemon beside each node.
pub struct Env {
    pub daemons: Vec<Daemon>,
    pub layout: DaemonLayout,
    // Dropped last: the daemons stop before the cluster goes.
    pub cluster: TestCluster,
}

/// The stand-in application as a service beside the cluster.
pub struct App {
    pub dir: PathBuf,
    pub config_file: PathBuf,
    /// database.cfg as first written (pointing to pg-a).
    pub original: String,
}

impl App {
    pub fn ctl(&self, action: &str) -> (i32, String) {
        let out = Command::new(pgwarden_bin())
            .args(["standin-ctl", action, "--dir"])
            .arg(&self.dir)
            .args(if action == "start" {
                vec![
                    "--config".to_owned(),
                    self.config_file.display().to_string(),
                ]
            } else {
                vec![]
            })
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    pub fn acks(&self) -> Vec<i64> {
        pgwarden_testkit::standin::read_acks(&self.dir.join("acks"))
    }

    pub fn wait_acks(&self, at_least: usize) -> Vec<i64> {
        poll_until(
            Duration::from_secs(30),
            "the application to acknowledge heartbeats",
            || {
                let a = self.acks();
                (a.len() >= at_least).then_some(a)
            },
        )
        .unwrap()
    }
}

/// What an environment with an application looks like.
#[derive(Default)]
pub struct Options {
    /// YAML lines added to the `application:` section.
    pub application_extra: String,
    /// Environment of daemon i.
    pub daemon_env: Vec<Vec<(String, String)>>,
    /// Asynchronous read-only replicas (`role: replica`) after the pair,
    /// each with its own daemon (see `ClusterOptions::replicas`).
    pub replicas: Vec<String>,
    /// Top-level YAML sections appended to every daemon's config (`lock:`).
    pub config_extra: String,
}

impl Env {
    /// A cluster, the stand-in application writing to pg-a through
    /// database.cfg, and a daemon beside each node whose config fences it.
    pub fn start_with_app(opts: Options) -> (Env, App) {
        let cluster = TestCluster::start(ClusterOptions {
            replicas: opts.replicas.clone(),
            ..ClusterOptions::default()
        })
        .expect("build the cluster");
        let dir = cluster.dir().join("app");
        std::fs::create_dir_all(&dir).unwrap();
        let c = cluster.credentials();
        let a = cluster.node(0);
        let original = format!(
            "# inmanta database settings (test)\n[server]\nbind-port = 8888\n\n[database]\n; the orchestrator's database\nhost = {}\nport={}\nname = {}\nusername = {}\npassword = {}\nconnection_pool_max_size = 10\n\n[logging]\nlevel = info\n",
            a.host, a.port, c.app_db, c.app_user, c.app_password
        );
        let config_file = dir.join("database.cfg");
        std::fs::write(&config_file, &original).unwrap();
        let app = App {
            dir: dir.clone(),
            config_file: config_file.clone(),
            original,
        };
        let (code, out) = app.ctl("start");
        assert_eq!(code, 0, "standin-ctl start: {out}");
        app.wait_acks(3);

        let mut layout = DaemonLayout::for_tests(&cluster);
        layout.extra = pgwarden_testkit::service::standin_application_yaml(
            &pgwarden_bin(),
            &dir,
            &c.app_user,
            &config_file,
        ) + "  session_grace: 1s\n"
            // One machine: both daemons see the same process, so the one
            // instance is named on one host (DESIGN.md "Two hosts"); pg-b's,
            // whose daemon the tests never take away.
            + "  runs_on: [pg-b]\n"
            + &opts.application_extra
            + &opts.config_extra;
        let daemons = (0..cluster.nodes().len())
            .map(|i| {
                let cfg = pgwarden_testkit::write_pgwarden_config(&cluster, i, &layout).unwrap();
                let env: Vec<(&str, &str)> = opts
                    .daemon_env
                    .get(i)
                    .map(|v| v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
                    .unwrap_or_default();
                Daemon::start_with_env(&cfg, layout.api_url(i), &env)
            })
            .collect();
        let env = Env {
            daemons,
            layout,
            cluster,
        };
        env.wait_all_polled();
        (env, app)
    }

    pub fn token(&self) -> String {
        self.cluster.api_token().to_owned()
    }

    /// Restarts daemon i (after a kill), with the same config.
    pub fn restart_daemon(&mut self, i: usize, env: &[(&str, &str)]) {
        let cfg = self.daemons[i].config.clone();
        self.daemons[i].kill();
        self.daemons[i] = Daemon::start_with_env(&cfg, self.layout.api_url(i), env);
    }

    pub fn start() -> Env {
        Env::start_with_extra("")
    }

    /// With `extra` YAML appended to every daemon's config.
    pub fn start_with_extra(extra: &str) -> Env {
        Env::start_with_extra_from(&[], |_| (extra.to_owned(), ())).0
    }

    /// With the YAML that `extra` makes from the cluster (and what it
    /// started beside it, e.g. a pgbouncer in front of it) appended to every
    /// daemon's config, daemon i with the environment `daemon_env[i]`.
    pub fn start_with_extra_from<T>(
        daemon_env: &[Vec<(String, String)>],
        extra: impl FnOnce(&TestCluster) -> (String, T),
    ) -> (Env, T) {
        let cluster = TestCluster::start(ClusterOptions::default()).expect("build the cluster");
        let mut layout = DaemonLayout::for_tests(&cluster);
        let (yaml, beside) = extra(&cluster);
        layout.extra = yaml;
        let daemons = (0..cluster.nodes().len())
            .map(|i| {
                let cfg = pgwarden_testkit::write_pgwarden_config(&cluster, i, &layout).unwrap();
                let env: Vec<(&str, &str)> = daemon_env
                    .get(i)
                    .map(|v| v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
                    .unwrap_or_default();
                Daemon::start_with_env(&cfg, layout.api_url(i), &env)
            })
            .collect();
        let env = Env {
            daemons,
            layout,
            cluster,
        };
        env.wait_all_polled();
        (env, beside)
    }

    /// A deadline of `polls` poll intervals plus one probe timeout, plus slack
    /// for a loaded machine: how long a change may take to show.
    pub fn within_polls(&self, polls: u32) -> Duration {
        self.layout.poll_interval * polls + self.layout.poll_timeout + Duration::from_secs(5)
    }

    /// Waits until every daemon has polled every node at least once:
    /// `/health` can be 200 before the standby's own first poll (its
    /// problems are read on the primary), while preflight needs it.
    pub fn wait_all_polled(&self) {
        for d in &self.daemons {
            poll_until(Duration::from_secs(20), "every node polled", || {
                let s = d.get("/v1/status").json();
                s["nodes"]
                    .as_array()?
                    .iter()
                    .all(|n| n["snapshot"].is_object())
                    .then_some(())
            })
            .unwrap();
        }
    }

    /// Polls `/health` of daemon `i` until `pred` holds on its JSON.
    pub fn wait_health(
        &self,
        i: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(u16, &serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let d = &self.daemons[i];
        poll_until(timeout, what, || {
            let r = d.get("/health");
            let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            pred(r.status, &v).then_some(v)
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nlast /health: {}\n--- log ---\n{}",
                d.get("/health").body,
                d.log_text()
            )
        })
    }
}

impl Env {
    /// The heartbeat ids the application wrote that node `i` holds.
    pub fn heartbeat_ids(&self, i: usize) -> std::collections::HashSet<i64> {
        let c = self.cluster.credentials();
        self.cluster
            .psql_db(i, &c.app_db, "SELECT id FROM heartbeat")
            .unwrap()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// After an operation that left node `primary` the primary: it is the
    /// only node that takes writes (by PostgreSQL itself) and the only one
    /// whose daemon answers `/primary` 200; one application instance runs;
    /// every heartbeat it acknowledged is on the primary.
    pub fn assert_invariants(&self, app: &App, primary: usize) {
        let writable: Vec<usize> = (0..self.cluster.nodes().len())
            .filter(|&i| {
                self.cluster.is_running(i)
                    && self
                        .cluster
                        .psql(i, "SELECT pg_is_in_recovery()")
                        .ok()
                        .as_deref()
                        == Some("f")
            })
            .collect();
        assert_eq!(writable, [primary], "exactly one node takes writes");
        poll_until(
            self.within_polls(4),
            "/primary to answer 200 on the primary's daemon only",
            || {
                let codes: Vec<u16> = self
                    .daemons
                    .iter()
                    .map(|d| d.get("/primary").status)
                    .collect();
                codes
                    .iter()
                    .enumerate()
                    .all(|(i, c)| (*c == 200) == (i == primary))
                    .then_some(())
            },
        )
        .unwrap();
        assert_eq!(app.ctl("is-running").0, 0, "the application runs");
        let acked = app.acks();
        let held = self.heartbeat_ids(primary);
        let lost: Vec<i64> = acked
            .iter()
            .filter(|a| !held.contains(a))
            .copied()
            .collect();
        assert!(lost.is_empty(), "acknowledged heartbeats lost: {lost:?}");
    }
}

/// Whether a /health body lists `code` (for `node`, when given).
pub fn has_problem(health: &serde_json::Value, code: &str, node: Option<&str>) -> bool {
    health["problems"].as_array().is_some_and(|ps| {
        ps.iter()
            .any(|p| p["code"] == code && node.is_none_or(|n| p["node"] == n))
    })
}

pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A minimal HTTP/1.1 client (one request per connection): enough for tests,
/// and it sees exactly the bytes a user's curl would.
pub fn http(method: &str, url: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Response {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (hostport, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = match TcpStream::connect(hostport) {
        Ok(s) => s,
        Err(e) => {
            return Response {
                status: 0,
                headers: String::new(),
                body: e.to_string(),
            }
        }
    };
    // Long: ?wait=true answers when an operation is done.
    s.set_read_timeout(Some(Duration::from_secs(240))).unwrap();
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    if s.write_all(req.as_bytes()).is_err() {
        return Response {
            status: 0,
            headers: String::new(),
            body: "write failed".into(),
        };
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers: head.to_owned(),
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The value of one sample in Prometheus text, matching every given label.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, label_text) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

impl Drop for App {
    fn drop(&mut self) {
        // The application must not outlive the test (it would retry forever).
        let _ = std::fs::remove_file(
            self.dir
                .join(pgwarden_testkit::service::IGNORE_SIGTERM_FLAG),
        );
        let _ = self.ctl("stop");
    }
}
