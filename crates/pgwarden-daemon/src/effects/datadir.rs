//! A data directory's own files: postgresql.auto.conf (the settings a
//! standby or replica streams with) and the files written beside it, owned
//! like the data directory so PostgreSQL can read them.

use std::path::Path;

use pgwarden_core::Config;

use super::fsutil;

/// `key = 'value'` lines of postgresql.auto.conf set (or removed for None);
/// every other line is kept.
pub fn set_auto_conf(text: &str, settings: &[(&str, Option<String>)]) -> String {
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            !settings.iter().any(|(k, _)| *k == key)
        })
        .map(str::to_owned)
        .collect();
    for (k, v) in settings {
        if let Some(v) = v {
            out.push(format!("{k} = '{}'", v.replace('\'', "''")));
        }
    }
    out.join("\n") + "\n"
}

/// The `primary_conninfo` of this daemon's node streaming from `primary`,
/// under the node's own application_name (the standby's is
/// `replication.application_name`, a replica's its own, so neither is ever
/// taken for the other in `synchronous_standby_names`).
pub fn primary_conninfo(
    ctx_config: &Config,
    replication_password: Option<String>,
    primary: &pgwarden_core::config::NodeConfig,
) -> String {
    let r = &ctx_config.replication;
    let me = ctx_config.local();
    let mut conninfo = format!(
        "host={} port={} user={} application_name={}",
        primary.host,
        primary.port,
        r.user,
        me.walreceiver_name(r)
    );
    conninfo.push_str(&ssl_conninfo(primary));
    if let Some(pw) = replication_password {
        // In postgresql.auto.conf (0600, the data directory owner's), as
        // pg_basebackup -R writes it; pgwarden never reports it.
        conninfo.push_str(&format!(" password={}", conninfo_quote(&pw)));
    }
    conninfo
}

/// ` sslmode=... sslrootcert=...` for a libpq conninfo to `node`, as
/// configured (nothing when unset: libpq's defaults).
pub fn ssl_conninfo(node: &pgwarden_core::config::NodeConfig) -> String {
    let mut out = String::new();
    if let Some(mode) = node.sslmode {
        out.push_str(&format!(" sslmode={}", mode.as_str()));
    }
    if let Some(root) = &node.sslrootcert {
        out.push_str(&format!(
            " sslrootcert={}",
            conninfo_quote(&root.display().to_string())
        ));
    }
    out
}

/// A libpq conninfo value in single quotes: libpq escapes `'` and `\` with a
/// backslash (not SQL's doubled quote).
fn conninfo_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Sets `settings` in this node's postgresql.auto.conf (other lines kept),
/// owned like its data directory. Takes effect at the next start, or the
/// next reload for primary_conninfo and primary_slot_name (PostgreSQL 13+).
pub fn write_auto_conf(dir: &Path, settings: &[(&str, Option<String>)]) -> std::io::Result<()> {
    let auto = dir.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&auto).unwrap_or_default();
    write_owned_like_dir(&auto, set_auto_conf(&text, settings).as_bytes(), dir)
}

/// Writes `to` atomically, 0600, owned like the data directory `dir`.
pub fn write_owned_like_dir(to: &Path, bytes: &[u8], dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir)?;
    fsutil::write_atomic_owned(to, bytes, 0o600, Some((meta.uid(), meta.gid())))
}

/// Writes `to` atomically with the mode, owner and group of `meta`: a
/// node's own configuration file goes back as it was (a pg_hba.conf 0640
/// stays group-readable), not as the copying tool left it.
fn copy_with_meta(to: &Path, bytes: &[u8], meta: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    fsutil::write_atomic_owned(
        to,
        bytes,
        meta.permissions().mode() & 0o7777,
        Some((meta.uid(), meta.gid())),
    )
}

/// What a rejoin does to this host's files: look at a data directory, keep
/// and restore the node's own configuration files, swap a fresh copy in,
/// and run the copying tools. Behind a trait so that the rejoin's steps
/// touch no file themselves.
#[async_trait::async_trait]
pub trait DataDirs: Send + Sync {
    /// Whether `path` exists; `Err` when that cannot be told (a permission
    /// error, an I/O error): never read as "absent".
    fn exists(&self, path: &Path) -> Result<bool, String>;
    /// Absent or without entries; `Err` when it cannot be read (never read
    /// as "empty").
    fn is_empty(&self, dir: &Path) -> Result<bool, String>;
    /// Free bytes on the file system holding `dir`.
    fn free_bytes(&self, dir: &Path) -> Result<u64, String>;
    /// Copies `names` that exist in `from` into the private directory `to`,
    /// each with its mode, owner and group.
    fn keep(&self, from: &Path, to: &Path, names: &[&str]) -> Result<(), String>;
    /// Copies `names` kept in `from` back into the data directory `dir`,
    /// with the mode, owner and group they had when kept.
    fn restore(&self, from: &Path, dir: &Path, names: &[&str]) -> Result<(), String>;
    fn remove_all(&self, path: &Path) -> std::io::Result<()>;
    /// Puts the copy `new` in place of `dir`, the old one moved to `old`
    /// (an empty `dir` is removed instead); whether an old one was kept.
    fn swap(&self, new: &Path, dir: &Path, old: &Path) -> Result<bool, String>;
    /// [`write_auto_conf`] and, for a standby, `standby.signal`.
    fn configure_standby(
        &self,
        dir: &Path,
        settings: &[(&str, Option<String>)],
        signal: bool,
    ) -> std::io::Result<()>;
    /// Runs a tool (pg_rewind, pg_basebackup) to its end, with `env`.
    async fn run_tool(
        &self,
        argv: &[String],
        env: &[(&str, &str)],
        timeout: std::time::Duration,
    ) -> Result<(), String>;
}

/// The real file system of this host.
pub struct RealDataDirs;

#[async_trait::async_trait]
impl DataDirs for RealDataDirs {
    fn exists(&self, path: &Path) -> Result<bool, String> {
        path.try_exists()
            .map_err(|e| format!("cannot tell whether {} exists: {e}", path.display()))
    }

    fn is_empty(&self, dir: &Path) -> Result<bool, String> {
        let unreadable = |e: std::io::Error| format!("cannot read {}: {e}", dir.display());
        match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(unreadable(e)),
            Ok(mut d) => match d.next() {
                None => Ok(true),
                Some(Ok(_)) => Ok(false),
                Some(Err(e)) => Err(unreadable(e)),
            },
        }
    }

    fn free_bytes(&self, dir: &Path) -> Result<u64, String> {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        // SAFETY: a valid NUL-terminated path and a zeroed out-struct.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0 {
            Ok(st.f_bavail as u64 * st.f_frsize as u64)
        } else {
            Err(format!(
                "cannot tell the free space under {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ))
        }
    }

    fn keep(&self, from: &Path, to: &Path, names: &[&str]) -> Result<(), String> {
        fsutil::private_dir(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
        for f in names {
            let cannot = |e: std::io::Error| format!("cannot keep {f}: {e}");
            let meta = match std::fs::metadata(from.join(f)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                other => other.map_err(cannot)?,
            };
            std::fs::read(from.join(f))
                .and_then(|bytes| copy_with_meta(&to.join(f), &bytes, &meta))
                .map_err(cannot)?;
        }
        Ok(())
    }

    fn restore(&self, from: &Path, dir: &Path, names: &[&str]) -> Result<(), String> {
        for f in names {
            let cannot = |e: std::io::Error| format!("cannot restore {f}: {e}");
            let saved = from.join(f);
            let meta = match std::fs::metadata(&saved) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                other => other.map_err(cannot)?,
            };
            std::fs::read(&saved)
                .and_then(|bytes| copy_with_meta(&dir.join(f), &bytes, &meta))
                .map_err(cannot)?;
        }
        Ok(())
    }

    fn remove_all(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn swap(&self, new: &Path, dir: &Path, old: &Path) -> Result<bool, String> {
        let mut kept = false;
        if self.exists(dir)? {
            if self.is_empty(dir)? {
                std::fs::remove_dir(dir)
                    .map_err(|e| format!("cannot replace the empty {}: {e}", dir.display()))?;
            } else {
                std::fs::rename(dir, old)
                    .map_err(|e| format!("cannot move {} aside: {e}", dir.display()))?;
                kept = true;
            }
        }
        std::fs::rename(new, dir)
            .map_err(|e| format!("cannot move the copy into {}: {e}", dir.display()))?;
        if let Some(parent) = dir.parent() {
            let _ = fsutil::sync_dir(parent);
        }
        Ok(kept)
    }

    fn configure_standby(
        &self,
        dir: &Path,
        settings: &[(&str, Option<String>)],
        signal: bool,
    ) -> std::io::Result<()> {
        write_auto_conf(dir, settings)?;
        let file = dir.join("standby.signal");
        if signal && !file.exists() {
            write_owned_like_dir(&file, b"", dir)?;
        }
        Ok(())
    }

    async fn run_tool(
        &self,
        argv: &[String],
        env: &[(&str, &str)],
        timeout: std::time::Duration,
    ) -> Result<(), String> {
        super::command::run_checked_env(argv, env, timeout)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_values_are_quoted_the_libpq_way() {
        assert_eq!(conninfo_quote("pw"), "'pw'");
        assert_eq!(conninfo_quote(r"it's a\b"), r"'it\'s a\\b'");
    }

    #[test]
    fn auto_conf_lines_are_replaced_and_others_kept() {
        let text = "# Do not edit this file manually!\nprimary_conninfo = 'old'\nwork_mem = '8MB'\nsynchronous_standby_names = 'x'\n";
        let out = set_auto_conf(
            text,
            &[
                ("primary_conninfo", Some("host=b pw='q'".into())),
                ("synchronous_standby_names", None),
            ],
        );
        assert_eq!(out, "# Do not edit this file manually!\nwork_mem = '8MB'\nprimary_conninfo = 'host=b pw=''q'''\n");
    }

    /// The real keep and restore bring a file back with its own mode and
    /// owner, over whatever the copying tool left there.
    #[test]
    fn kept_files_come_back_with_their_mode_and_owner() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let base = std::env::temp_dir().join(format!("pgwarden-keep-{}", std::process::id()));
        let (dir, keep) = (base.join("data"), base.join("keep"));
        std::fs::create_dir_all(&dir).unwrap();
        let hba = dir.join("pg_hba.conf");
        std::fs::write(&hba, "local all all peer\n").unwrap();
        std::fs::set_permissions(&hba, std::fs::Permissions::from_mode(0o640)).unwrap();
        let d = RealDataDirs;
        d.keep(&dir, &keep, &["pg_hba.conf", "pg_ident.conf"])
            .unwrap();
        // The tool's copy: the primary's file, 0600.
        std::fs::remove_file(&hba).unwrap();
        std::fs::write(&hba, "host all all 0.0.0.0/0 trust\n").unwrap();
        std::fs::set_permissions(&hba, std::fs::Permissions::from_mode(0o600)).unwrap();
        d.restore(&keep, &dir, &["pg_hba.conf", "pg_ident.conf"])
            .unwrap();
        let meta = std::fs::metadata(&hba).unwrap();
        assert_eq!(
            std::fs::read_to_string(&hba).unwrap(),
            "local all all peer\n"
        );
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        let owner = std::fs::metadata(&base).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (owner.uid(), owner.gid()));
        assert!(!dir.join("pg_ident.conf").exists(), "nothing made up");
        assert_eq!(d.exists(&dir.join("nothing")), Ok(false));
        assert_eq!(d.is_empty(&base.join("absent")), Ok(true));
        assert_eq!(d.is_empty(&dir), Ok(false));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
