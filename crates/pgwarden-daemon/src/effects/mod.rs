//! The one interface through which an operation touches the world: SQL on a
//! node, an action on a node's PostgreSQL through the daemon beside it,
//! external commands, and the application's config file. The executor
//! decides; this module does.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pgwarden_core::{ini, Answer, Config};
use pgwarden_pg::{Node, Target};

use crate::load::Secrets;

pub mod app;
pub mod command;
pub mod fsutil;
pub mod node;
pub mod pgbouncer;

pub use node::{local_node_action, NodeState};

/// Budget of one SQL action (CHECKPOINT on a busy node takes a while).
const SQL_TIMEOUT: Duration = Duration::from_secs(60);
use node::NODE_ACTION_TIMEOUT;

/// A failed call to another daemon: its HTTP status if it answered.
/// Only a connection that could not be made is `unreachable` (nothing was
/// sent, so nothing was done there); a timeout after the request went out,
/// or an answer that cannot be read, is neither "done" nor "not done".
#[derive(Debug)]
pub struct PeerError {
    pub status: Option<u16>,
    pub unreachable: bool,
    /// The `error` code of the peer's JSON answer, when it answered one.
    pub code: Option<String>,
    pub message: String,
}

pub struct Effects {
    config: Arc<Config>,
    secrets: Secrets,
    http: reqwest::Client,
    /// One SQL connection per node, reused across steps. A std Mutex: only
    /// held to look up or insert, never across an await.
    nodes: std::sync::Mutex<std::collections::HashMap<String, Node>>,
}

impl Effects {
    pub fn new(config: Arc<Config>, secrets: Secrets) -> Effects {
        let builder = reqwest::Client::builder()
            .timeout(NODE_ACTION_TIMEOUT + Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3));
        // With tls, the other daemon is trusted through the configured CA
        // file only (read and checked when the config was loaded).
        let builder = match &config.tls {
            Some(tls) => {
                crate::tls::trusting(builder, crate::tls::trust_file(tls)).unwrap_or_else(|e| {
                    tracing::error!("{e}: calls to the other daemon will fail");
                    reqwest::Client::builder()
                })
            }
            None => builder,
        };
        let http = builder.build().expect("the HTTP client builds");
        Effects {
            config,
            secrets,
            http,
            nodes: Default::default(),
        }
    }

    /// SQL access to a configured node, as the monitor role, over the
    /// node's cached connection.
    pub fn node(&self, name: &str) -> Node {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .entry(name.to_owned())
            .or_insert_with(|| {
                let n = self
                    .config
                    .node(name)
                    .expect("operations only name configured nodes");
                let target = Target {
                    host: n.host.clone(),
                    port: n.port,
                    user: self.config.monitor.user.clone(),
                    password: self.secrets.monitor_password.clone(),
                    dbname: self.config.monitor.dbname.clone(),
                };
                Node::new(n.name.clone(), target, SQL_TIMEOUT)
            })
            .clone()
    }

    /// Passwords for the tools run during a rejoin (handed over in
    /// PGPASSWORD, never on a command line).
    pub fn monitor_password(&self) -> Option<String> {
        self.secrets
            .monitor_password
            .as_ref()
            .map(|s| s.expose().to_owned())
    }

    pub fn replication_password(&self) -> Option<String> {
        self.secrets
            .replication_password
            .as_ref()
            .map(|s| s.expose().to_owned())
    }

    /// The same with a short timeout: "does it answer at all?".
    pub fn node_quick(&self, name: &str) -> Node {
        self.node(name)
            .with_timeout(self.config.poll.timeout.max(Duration::from_secs(1)))
    }

    /// Stops (`action` = "stop") or starts a node's PostgreSQL: locally when
    /// it is this daemon's node, else through the daemon beside it.
    pub async fn node_action(&self, node: &str, action: &str) -> Result<NodeState, String> {
        if node == self.config.local_node {
            return local_node_action(&self.config, action).await;
        }
        let n = self
            .config
            .node(node)
            .ok_or_else(|| format!("unknown node {node}"))?;
        let api = n.api.as_deref().ok_or_else(|| {
            format!("nodes[{node}].api is not configured: cannot ask {node}'s daemon to {action} PostgreSQL")
        })?;
        let url = format!("{}/v1/node/{action}", api.trim_end_matches('/'));
        let v = self
            .post(&url, &serde_json::json!({}))
            .await
            .map_err(|e| e.message)?;
        serde_json::from_value(v).map_err(|e| format!("{url} answered unexpectedly: {e}"))
    }

    /// Asks for `node`'s PostgreSQL to be stopped, locally or through the
    /// daemon beside it, giving up after `budget`. A failover uses it on an
    /// old primary it cannot reach over SQL: "unreachable" is not "stopped"
    /// (a firewall, a cut link, a full connection table), and the daemon
    /// beside the node reaches it without the network. An error with a
    /// status means that daemon answered and could not stop it.
    pub async fn stop_within(&self, node: &str, budget: Duration) -> Result<NodeState, PeerError> {
        let timed_out = || PeerError {
            status: None,
            unreachable: false,
            code: None,
            message: format!("the stop was not confirmed within {}s", budget.as_secs()),
        };
        if node == self.config.local_node {
            return match tokio::time::timeout(budget, local_node_action(&self.config, "stop")).await
            {
                Ok(r) => r.map_err(|message| PeerError {
                    status: Some(503),
                    unreachable: false,
                    code: None,
                    message,
                }),
                Err(_) => Err(timed_out()),
            };
        }
        let api = self
            .config
            .node(node)
            .and_then(|n| n.api.as_deref())
            .ok_or_else(|| PeerError {
                status: None,
                unreachable: true,
                code: None,
                message: format!("nodes[{node}].api is not configured"),
            })?;
        let url = format!("{}/v1/node/stop", api.trim_end_matches('/'));
        let request = self.http.post(&url).json(&serde_json::json!({}));
        let v = tokio::time::timeout(budget, self.send(request, &url))
            .await
            .map_err(|_| timed_out())??;
        serde_json::from_value(v).map_err(|e| PeerError {
            status: None,
            unreachable: false,
            code: None,
            message: format!("{url} answered unexpectedly: {e}"),
        })
    }

    /// POSTs JSON to another daemon with the API token.
    pub async fn post(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, PeerError> {
        self.send(self.http.post(url).json(body), url).await
    }

    /// Forwards a request to another daemon and returns its status and body
    /// as they are (a rejoin runs on the rejoining node's own daemon).
    pub async fn forward(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(u16, serde_json::Value), String> {
        let mut req = self.http.post(url).json(body).timeout(timeout);
        if let Some(t) = &self.secrets.api_token {
            req = req.bearer_auth(t.expose());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {}", error_chain(&e)))?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(serde_json::Value::Null)))
    }

    /// GETs JSON from another daemon.
    pub async fn get(&self, url: &str) -> Result<serde_json::Value, PeerError> {
        self.send(self.http.get(url).timeout(Duration::from_secs(3)), url)
            .await
    }

    async fn send(
        &self,
        mut req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<serde_json::Value, PeerError> {
        if let Some(t) = &self.secrets.api_token {
            req = req.bearer_auth(t.expose());
        }
        let resp = req.send().await.map_err(|e| PeerError {
            status: None,
            unreachable: e.is_connect(),
            code: None,
            message: if e.is_connect() {
                format!("cannot reach {url}: {}", error_chain(&e))
            } else {
                format!(
                    "{url} did not answer (the request may have been received): {}",
                    error_chain(&e)
                )
            },
        })?;
        let status = resp.status();
        let value: Result<serde_json::Value, _> = resp.json().await;
        let value = match (status.is_success(), value) {
            (true, Ok(v)) => return Ok(v),
            (true, Err(e)) => {
                return Err(PeerError {
                    status: None,
                    unreachable: false,
                    code: None,
                    message: format!("{url} answered {status} with a body that is not JSON: {e}"),
                })
            }
            (false, v) => v.unwrap_or(serde_json::Value::Null),
        };
        {
            Err(PeerError {
                status: Some(status.as_u16()),
                unreachable: false,
                code: value["error"].as_str().map(str::to_owned),
                message: format!(
                    "{url} answered {status}: {}",
                    value["message"].as_str().unwrap_or("no message")
                ),
            })
        }
    }

    /// Points the application's config file at `host`/`port`. Returns
    /// `Ok(false)` when it already did (nothing written: a resumed step does
    /// not edit the file twice). Before the first change the original is kept
    /// as `<file>.pgwarden-<operation>.bak`.
    pub fn switch_application_config(
        &self,
        operation: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, String> {
        let app = self
            .config
            .application
            .as_ref()
            .ok_or("no application configured")?;
        let path = &app.config_file;
        let original = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let port = port.to_string();
        let updated = ini::set(
            &original,
            &app.config_section,
            &[(&app.host_key, host), (&app.port_key, &port)],
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        if updated == original {
            return Ok(false);
        }
        let backup = path.with_file_name(format!(
            "{}.pgwarden-{operation}.bak",
            path.file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default()
        ));
        if !backup.exists() {
            fsutil::write_atomic(&backup, original.as_bytes(), 0o600)
                .map_err(|e| format!("cannot write the backup {}: {e}", backup.display()))?;
        }
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        write_like(path, updated.as_bytes(), &meta)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        // Verify by reading back what the application will read.
        let reread = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot re-read {}: {e}", path.display()))?;
        let got_host = ini::get(&reread, &app.config_section, &app.host_key);
        let got_port = ini::get(&reread, &app.config_section, &app.port_key);
        if got_host.as_deref() != Some(host) || got_port.as_deref() != Some(port.as_str()) {
            return Err(format!(
                "{} reads back {}={:?} {}={:?} after the rewrite",
                path.display(),
                app.host_key,
                got_host,
                app.port_key,
                got_port
            ));
        }
        Ok(true)
    }

    /// The base URL of `host`'s daemon.
    fn api_of(&self, host: &str) -> Result<String, PeerError> {
        self.config
            .node(host)
            .and_then(|n| n.api.as_deref())
            .map(|a| a.trim_end_matches('/').to_owned())
            .ok_or_else(|| PeerError {
                status: None,
                unreachable: true,
                code: None,
                message: format!(
                    "nodes[{host}].api is not configured: pgwarden cannot reach that host's daemon"
                ),
            })
    }

    /// Whether `host`'s daemon answers at all (`/livez`, a short timeout).
    /// This daemon's own host always does.
    pub async fn daemon_answers(&self, host: &str) -> bool {
        if host == self.config.local_node {
            return true;
        }
        let Ok(api) = self.api_of(host) else {
            return false;
        };
        let url = format!("{api}/livez");
        let timeout = self.config.poll.timeout.max(Duration::from_secs(1));
        // Any answer, even 503 (a loop behind), is a daemon that answers.
        self.http.get(&url).timeout(timeout).send().await.is_ok()
    }

    /// Whether the application runs on `host`: asked here for this daemon's
    /// own host, else of that host's daemon.
    pub async fn app_status_on(&self, host: &str) -> Result<Answer, PeerError> {
        let app = self.application()?;
        if host == self.config.local_node {
            return Ok(app::status(app).await);
        }
        let v = self.app_call(host, "status", serde_json::json!({})).await?;
        let wire: app::WireAnswer =
            serde_json::from_value(v["running"].clone()).map_err(|e| PeerError {
                status: None,
                unreachable: false,
                code: None,
                message: format!(
                    "{host}'s daemon answered the application status unexpectedly: {e}"
                ),
            })?;
        Ok(wire.to_answer())
    }

    /// Runs the application's `which` command on `host`.
    pub async fn app_command_on(
        &self,
        host: &str,
        which: app::AppCommand,
    ) -> Result<String, PeerError> {
        let app = self.application()?;
        if host == self.config.local_node {
            return app::run(app, which).await.map_err(|message| PeerError {
                status: Some(503),
                unreachable: false,
                code: None,
                message,
            });
        }
        let v = self
            .app_call(host, which.as_str(), serde_json::json!({}))
            .await?;
        Ok(v["message"].as_str().unwrap_or("done").to_owned())
    }

    /// `application.health_url`, asked on `host` (it names the instance there).
    pub async fn app_healthy_on(&self, host: &str) -> Result<Answer, PeerError> {
        let app = self.application()?;
        if host == self.config.local_node {
            return Ok(app::healthy(app, &self.http).await);
        }
        let v = self.app_call(host, "health", serde_json::json!({})).await?;
        let wire: app::WireAnswer =
            serde_json::from_value(v["healthy"].clone()).map_err(|e| PeerError {
                status: None,
                unreachable: false,
                code: None,
                message: format!(
                    "{host}'s daemon answered the application health unexpectedly: {e}"
                ),
            })?;
        Ok(wire.to_answer())
    }

    /// Points the application's config file on `host` at `db_host:db_port`;
    /// `Ok(false)` when it already did.
    pub async fn app_config_on(
        &self,
        host: &str,
        operation: &str,
        db_host: &str,
        db_port: u16,
    ) -> Result<bool, PeerError> {
        if host == self.config.local_node {
            return self
                .switch_application_config(operation, db_host, db_port)
                .map_err(|message| PeerError {
                    status: Some(503),
                    unreachable: false,
                    code: None,
                    message,
                });
        }
        let body = serde_json::json!({"operation": operation, "host": db_host, "port": db_port});
        let v = self.app_call(host, "config", body).await?;
        v["changed"].as_bool().ok_or_else(|| PeerError {
            status: None,
            unreachable: false,
            code: None,
            message: format!("{host}'s daemon answered the config switch unexpectedly: {v}"),
        })
    }

    fn application(&self) -> Result<&pgwarden_core::config::ApplicationConfig, PeerError> {
        self.config.application.as_ref().ok_or_else(|| PeerError {
            status: None,
            unreachable: false,
            code: None,
            message: "no application configured".into(),
        })
    }

    async fn app_call(
        &self,
        host: &str,
        action: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, PeerError> {
        let url = format!("{}/v1/node/application/{action}", self.api_of(host)?);
        // The command's own budget, plus the way there and back.
        let app = self.application()?;
        let budget = app.stop_timeout.max(app.start_timeout) + Duration::from_secs(10);
        self.send(self.http.post(&url).json(&body).timeout(budget), &url)
            .await
    }
}

/// Why the application's config file could not be rewritten the way the
/// switch does it (atomically, keeping owner and mode), or None. Preflight
/// asks before the fence: after the promotion it would be too late.
pub fn config_file_blocker(app: &pgwarden_core::config::ApplicationConfig) -> Option<String> {
    let path = &app.config_file;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return Some(format!("cannot read {}: {e}", path.display())),
    };
    if let Err(e) = ini::set(
        &text,
        &app.config_section,
        &[(&app.host_key, "check"), (&app.port_key, "1")],
    ) {
        return Some(format!("{}: {e}", path.display()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    if !writable_dir(dir) {
        return Some(format!(
            "pgwarden cannot create files in {} (the rewrite is a new file renamed over the old one): \
             give its user write access to the directory (and ReadWritePaths= in the unit)",
            dir.display()
        ));
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(format!("{}: {e}", path.display())),
    };
    owner_keepable(&meta).err()
}

fn writable_dir(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string; access(2) reads it only. AT_EACCESS checks
    // the effective ids, the ones the rewrite runs with.
    unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        ) == 0
    }
}

/// A process that is not root may give a file only its own uid and one of
/// its own groups: the rewritten file would otherwise change hands, and the
/// application might no longer read it.
fn owner_keepable(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: these calls have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid == 0 {
        return Ok(());
    }
    let in_group = meta.gid() == egid || supplementary_groups().contains(&meta.gid());
    if meta.uid() == euid && in_group {
        return Ok(());
    }
    Err(format!(
        "the file belongs to uid {} gid {}, and pgwarden (uid {euid}) could not give the rewritten file \
         that owner: make it owned by pgwarden's user with a group the application reads \
         through (e.g. chown postgres:inmanta, chmod 0640, and add postgres to that group), or run pgwarden as root",
        meta.uid(),
        meta.gid()
    ))
}

fn supplementary_groups() -> Vec<libc::gid_t> {
    // SAFETY: getgroups(0, NULL) returns the count; the second call fills a
    // buffer of that size.
    unsafe {
        let n = libc::getgroups(0, std::ptr::null_mut());
        if n <= 0 {
            return Vec::new();
        }
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let got = libc::getgroups(n, groups.as_mut_ptr());
        groups.truncate(got.max(0) as usize);
        groups
    }
}

/// Writes `bytes` atomically over `path`, keeping its mode and owner: the
/// application (not root) must still be able to read its config file.
fn write_like(path: &Path, bytes: &[u8], meta: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // Refuse before writing rather than leave a file the application may
    // no longer read.
    owner_keepable(meta).map_err(std::io::Error::other)?;
    fsutil::write_atomic_owned(
        path,
        bytes,
        meta.permissions().mode() & 0o7777,
        Some((meta.uid(), meta.gid())),
    )
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut s = e.source();
    while let Some(x) = s {
        out.push_str(": ");
        out.push_str(&x.to_string());
        s = x.source();
    }
    out
}
