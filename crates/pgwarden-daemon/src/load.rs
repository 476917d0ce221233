//! Loading a config file: read it, parse and validate it (pure, in
//! `pgwarden-core`), then check what needs the file system: the files it
//! names must be readable. Also reads the secrets those files hold.

use std::path::{Path, PathBuf};

use pgwarden_core::config::{ConfigError, Invalid, PathSeg};
use pgwarden_core::{Config, Secret};

/// A validated config and the secrets it points to.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    pub secrets: Secrets,
    /// The listener's TLS setup, when `tls` is configured.
    pub tls: Option<crate::tls::ServerTls>,
    /// Defaults filled in from the file system, for the log and check-config.
    pub notes: Vec<String>,
}

/// Secrets read from the files the config names. `Debug` shows `***`.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    pub api_token: Option<Secret>,
    pub monitor_password: Option<Secret>,
    pub replication_password: Option<Secret>,
    /// `proxy.pgbouncer.admin.password_file`: the admin console's password.
    pub pgbouncer_password: Option<Secret>,
}

/// Reads, parses and validates `path`; every error says file:line:column.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::at(&origin, 1, 1, format!("cannot read the config file: {e}")))?;
    let mut config = Config::parse_str(&origin, &text)?;
    let notes = default_os_user(&mut config).into_iter().collect();

    let key = |k: &str| PathSeg::Key(k.to_owned());
    let mut invalid = Vec::new();
    let mut read_secret = |file: &Path, at: Vec<PathSeg>, what: &str| -> Option<Secret> {
        match std::fs::read_to_string(file) {
            Ok(v) => {
                let v = v.trim_end_matches(['\n', '\r']).to_owned();
                if v.is_empty() {
                    invalid.push(Invalid {
                        path: at,
                        message: format!("{what} {} is empty", file.display()),
                    });
                    None
                } else {
                    Some(Secret::new(v))
                }
            }
            Err(e) => {
                invalid.push(Invalid {
                    path: at,
                    message: format!("cannot read {what} {}: {e}", file.display()),
                });
                None
            }
        }
    };
    let api_token = read_secret(
        &config.api_token_file,
        vec![key("api_token_file")],
        "api_token_file",
    );
    let monitor_password = config.monitor.password_file.as_ref().and_then(|f| {
        read_secret(
            f,
            vec![key("monitor"), key("password_file")],
            "monitor.password_file",
        )
    });
    let replication_password = config.replication.password_file.as_ref().and_then(|f| {
        read_secret(
            f,
            vec![key("replication"), key("password_file")],
            "replication.password_file",
        )
    });
    let pgbouncer_password = config
        .pgbouncer()
        .and_then(|p| p.admin.password_file.as_ref())
        .and_then(|f| {
            read_secret(
                f,
                vec![
                    key("proxy"),
                    key("pgbouncer"),
                    key("admin"),
                    key("password_file"),
                ],
                "proxy.pgbouncer.admin.password_file",
            )
        });
    // lock.etcd's files: read again at each connection to etcd (a rotated
    // certificate is picked up), checked here so a typo fails at start.
    if let Some(etcd) = config.etcd_lock() {
        if let Some(f) = &etcd.password_file {
            let _ = read_secret(
                f,
                vec![key("lock"), key("etcd"), key("password_file")],
                "lock.etcd.password_file",
            );
        }
        for (name, file) in [
            ("ca_file", &etcd.ca_file),
            ("cert_file", &etcd.cert_file),
            ("key_file", &etcd.key_file),
        ] {
            if let Some(f) = file {
                if let Err(e) = std::fs::read(f) {
                    invalid.push(Invalid {
                        path: vec![key("lock"), key("etcd"), key(name)],
                        message: format!("cannot read lock.etcd.{name} {}: {e}", f.display()),
                    });
                }
            }
        }
    }
    if let Some(app) = &config.application {
        if let Err(e) = std::fs::metadata(&app.config_file) {
            invalid.push(Invalid {
                path: vec![key("application"), key("config_file")],
                message: format!(
                    "cannot read application.config_file {}: {e}",
                    app.config_file.display()
                ),
            });
        }
    }
    // Each node's sslrootcert must hold certificates now, not at the first
    // connection.
    for (i, n) in config.nodes.iter().enumerate() {
        if n.sslrootcert.is_none() {
            continue;
        }
        if let Some(problem) = pgwarden_pg::PgTls::for_node(n).problem() {
            invalid.push(Invalid {
                path: vec![key("nodes"), PathSeg::Index(i), key("sslrootcert")],
                message: format!("nodes[{i}].sslrootcert: {problem}"),
            });
        }
    }
    let tls = config
        .tls
        .as_ref()
        .and_then(|t| match crate::tls::server_config(t) {
            Ok(s) => Some(s),
            Err((field, message)) => {
                invalid.push(Invalid {
                    path: vec![key("tls"), key(field)],
                    message,
                });
                None
            }
        });
    if !invalid.is_empty() {
        return Err(ConfigError::from_invalid(&origin, &text, &invalid));
    }
    Ok(Loaded {
        config,
        path: path.to_owned(),
        secrets: Secrets {
            api_token,
            monitor_password,
            replication_password,
            pgbouncer_password,
        },
        tls,
        notes,
    })
}

/// Running as root with `nodes[local].os_user` unset, every `pg_ctl status`
/// would fail (pg_ctl refuses root) and no stop could be verified: default
/// it to the owner of the data directory (or of its parent, before a first
/// clone), the user PostgreSQL runs as. Returns what was chosen.
fn default_os_user(config: &mut Config) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let local = config.local_node.clone();
    let node = config.nodes.iter_mut().find(|n| n.name == local)?;
    if node.os_user.is_some() {
        return None;
    }
    let dir = node.data_dir.as_ref()?;
    let meta = std::fs::metadata(dir)
        .ok()
        .or_else(|| std::fs::metadata(dir.parent()?).ok())?;
    let uid = Some(meta.uid()).filter(|&uid| uid != 0)?;
    let user = user_name(uid)?;
    let note = format!(
        "nodes[{local}].os_user is unset and pgwarden runs as root: pg_ctl, pg_rewind and pg_basebackup run as {user}, the owner of {}",
        dir.display()
    );
    node.os_user = Some(user);
    Some(note)
}

/// The login name of `uid` (getpwuid_r).
pub(crate) fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: zeroed passwd out-struct, a buffer of the size passed, and a
    // result pointer; getpwuid_r fills them or leaves result null.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}
