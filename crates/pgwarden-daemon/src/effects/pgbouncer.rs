//! The pgbouncers in front of the application (`proxy.pgbouncer`): pause,
//! resume, re-point and look at the one on THIS host through its admin
//! console, and those on other hosts through their daemons
//! (`POST /v1/node/pgbouncer/{action}`), as the application's commands are
//! run (DESIGN "Two hosts": each daemon acts on its own host only).

use std::path::Path;
use std::time::Duration;

use pgwarden_core::config::PgbouncerConfig;
use pgwarden_core::pgbouncer_ini;
use pgwarden_pg::pgbouncer::Console;
use pgwarden_pg::Target;
use serde::{Deserialize, Serialize};

use super::{fsutil, PeerError, RealEffects};

/// Budget of one admin command other than PAUSE.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(5);

/// What is asked of a host's pgbouncer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action", deny_unknown_fields)]
pub enum Action {
    /// What SHOW DATABASES and SHOW SERVERS say about the entry.
    Status,
    /// Check that pgbouncer.ini can be re-pointed here and that pgbouncer
    /// runs what it says after a RELOAD of the file as it is, then PAUSE the entry,
    /// bounded by `pause_timeout` (undone when it times out): what would
    /// fail after the promotion fails here, before it.
    Pause,
    Resume,
    /// Rewrite the entry in pgbouncer.ini to `host`/`port`, RELOAD,
    /// RECONNECT, and verify with SHOW DATABASES.
    Repoint {
        operation: String,
        host: String,
        port: u16,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Status => "status",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Repoint { .. } => "repoint",
        }
    }
}

/// A server connection of the entry's pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub user: String,
    pub state: String,
    pub addr: String,
    pub port: Option<u16>,
}

/// A pgbouncer's answer, the same shape whether asked here or over the API.
/// `status` fills in everything; `repoint` the entry; `pause` and `resume`
/// only say they were done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The host whose pgbouncer answered.
    pub host: String,
    /// Where SHOW DATABASES says the entry points.
    pub entry_host: Option<String>,
    pub entry_port: Option<u16>,
    pub paused: bool,
    pub servers: Vec<Server>,
    /// Repoint: whether pgbouncer.ini was rewritten (false: it pointed there).
    #[serde(default)]
    pub changed: bool,
}

impl RealEffects {
    fn pgbouncer_config(&self) -> Result<&PgbouncerConfig, String> {
        self.config
            .pgbouncer()
            .ok_or_else(|| "no proxy.pgbouncer configured".to_owned())
    }

    fn console(&self, pb: &PgbouncerConfig) -> Console {
        Console {
            target: Target {
                host: pb.admin.host.clone(),
                port: pb.admin.port,
                user: pb.admin.user.clone(),
                password: self.secrets.pgbouncer_password.clone(),
                dbname: "pgbouncer".into(),
                // On this host (pgbouncer's own admin listener), as before.
                tls: pgwarden_pg::PgTls::disabled(),
            },
            timeout: CONSOLE_TIMEOUT,
        }
    }

    /// Does `action` on THIS host's pgbouncer.
    pub(super) async fn run_pgbouncer_here(&self, action: &Action) -> Result<Report, String> {
        let pb = self.pgbouncer_config()?;
        let console = self.console(pb);
        let db = &pb.database;
        let mut report = Report {
            host: self.config.local_node.clone(),
            entry_host: None,
            entry_port: None,
            paused: false,
            servers: Vec::new(),
            changed: false,
        };
        match action {
            Action::Status => {
                let (dbs, servers) = console.status().await.map_err(|e| e.to_string())?;
                let entry = entry(pb, dbs)?;
                report.entry_host = entry.host;
                report.entry_port = entry.port;
                report.paused = entry.paused;
                report.servers = servers
                    .into_iter()
                    .filter(|s| &s.database == db)
                    .map(|s| Server {
                        user: s.user,
                        state: s.state,
                        addr: s.addr,
                        port: s.port,
                    })
                    .collect();
            }
            Action::Pause => {
                if let Some(why) = config_file_blocker(pb) {
                    return Err(why);
                }
                // Before anything is paused: pgbouncer runs what its file
                // says. If not, the file does not load (RELOAD keeps the old
                // settings without an error) or was never reloaded, and the
                // re-pointing after the promotion could not be trusted.
                let dbs = console.reload(None).await.map_err(|e| e.to_string())?;
                let running = entry(pb, dbs)?;
                let file = std::fs::read_to_string(&pb.config_file)
                    .map_err(|e| format!("cannot read {}: {e}", pb.config_file.display()))?;
                let written = pgbouncer_ini::target(&file, db)
                    .map_err(|e| format!("{}: {e}", pb.config_file.display()))?;
                let running_port = running.port.map(|p| p.to_string());
                if running.host != written.host || running_port != written.port {
                    return Err(format!(
                        "{} says {db} = host={} port={}, but after RELOAD pgbouncer still runs host={} port={}: it does not take the file (see its log for \"config file loading failed\"), so it could not be re-pointed; nothing paused",
                        pb.config_file.display(),
                        written.host.as_deref().unwrap_or("?"),
                        written.port.as_deref().unwrap_or("?"),
                        running.host.as_deref().unwrap_or("?"),
                        running_port.as_deref().unwrap_or("?"),
                    ));
                }
                console
                    .pause(db, pb.pause_timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                report.paused = true;
            }
            Action::Resume => console.resume(db).await.map_err(|e| e.to_string())?,
            Action::Repoint {
                operation,
                host,
                port,
            } => {
                report.changed = repoint_file(&pb.config_file, db, operation, host, *port)?;
                let dbs = console.reload(Some(db)).await.map_err(|e| e.to_string())?;
                let entry = entry(pb, dbs)?;
                if entry.host.as_deref() != Some(host.as_str()) || entry.port != Some(*port) {
                    return Err(format!(
                        "after RELOAD, SHOW DATABASES says {db} points to {}:{}, not {host}:{port}: pgbouncer did not take the rewritten file (see its log for \"config file loading failed\")",
                        entry.host.as_deref().unwrap_or("?"),
                        entry.port.map(|p| p.to_string()).unwrap_or("?".into())
                    ));
                }
                report.entry_host = entry.host;
                report.entry_port = entry.port;
                report.paused = entry.paused;
            }
        }
        Ok(report)
    }

    /// Does `action` on `host`'s pgbouncer: here, or through its daemon.
    pub(super) async fn run_pgbouncer_on(
        &self,
        host: &str,
        action: &Action,
    ) -> Result<Report, PeerError> {
        if host == self.config.local_node {
            return self
                .run_pgbouncer_here(action)
                .await
                .map_err(|message| PeerError {
                    status: Some(503),
                    unreachable: false,
                    code: None,
                    message,
                });
        }
        let pause_timeout = self
            .pgbouncer_config()
            .map(|p| p.pause_timeout)
            .unwrap_or_default();
        let url = format!("{}/v1/node/pgbouncer/{}", self.api_of(host)?, action.name());
        // PAUSE's own budget, plus the admin commands and the way there and back.
        let budget = pause_timeout + CONSOLE_TIMEOUT * 4 + Duration::from_secs(5);
        let v = self
            .send(self.http.post(&url).json(action).timeout(budget), &url)
            .await?;
        serde_json::from_value(v).map_err(|e| PeerError {
            status: None,
            unreachable: false,
            code: None,
            message: format!(
                "{host}'s daemon answered the pgbouncer {} unexpectedly: {e}",
                action.name()
            ),
        })
    }
}

/// The entry of SHOW DATABASES that `proxy.pgbouncer.database` names.
fn entry(
    pb: &PgbouncerConfig,
    dbs: Vec<pgwarden_pg::pgbouncer::DatabaseEntry>,
) -> Result<pgwarden_pg::pgbouncer::DatabaseEntry, String> {
    dbs.into_iter()
        .find(|d| d.name == pb.database)
        .ok_or_else(|| {
            format!(
                "SHOW DATABASES has no entry {}: add it to [databases] of {}",
                pb.database,
                pb.config_file.display()
            )
        })
}

/// Points the entry `db` of `path` at `host:port`; `Ok(false)` when it
/// already did (nothing written). Before the first change the original is
/// kept as `<file>.pgwarden-<operation>.bak`; the rewrite keeps mode and owner.
fn repoint_file(
    path: &Path,
    db: &str,
    operation: &str,
    host: &str,
    port: u16,
) -> Result<bool, String> {
    let original = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let updated = pgbouncer_ini::repoint(&original, db, host, port)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if updated == original {
        return Ok(false);
    }
    fsutil::keep_original(path, operation, original.as_bytes())
        .map_err(|e| format!("cannot keep the original of {}: {e}", path.display()))?;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    super::appconfig::write_like(path, updated.as_bytes(), &meta)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let reread = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot re-read {}: {e}", path.display()))?;
    let got = pgbouncer_ini::target(&reread, db).map_err(|e| format!("{}: {e}", path.display()))?;
    let port = port.to_string();
    if got.host.as_deref() != Some(host) || got.port.as_deref() != Some(port.as_str()) {
        return Err(format!(
            "{} reads back host={:?} port={:?} for {db} after the rewrite",
            path.display(),
            got.host,
            got.port
        ));
    }
    Ok(true)
}

/// Why `path` could not be re-pointed the way the switch does it, or None.
/// Preflight asks before the fence: after the promotion it is too late.
pub fn config_file_blocker(pb: &PgbouncerConfig) -> Option<String> {
    let path = &pb.config_file;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return Some(format!("cannot read {}: {e}", path.display())),
    };
    if let Err(e) = pgbouncer_ini::check(&text)
        .and_then(|()| pgbouncer_ini::repoint(&text, &pb.database, "check", 1))
    {
        return Some(format!("{}: {e}", path.display()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    if !super::appconfig::writable_dir(dir) {
        return Some(format!(
            "pgwarden cannot create files in {} (the rewrite is a new file renamed over the old one)",
            dir.display()
        ));
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(format!("{}: {e}", path.display())),
    };
    super::appconfig::owner_keepable(&meta).err()
}
