//! The application's config file (database.cfg): the check preflight runs
//! before the fence, the files that would shadow the switch, and the
//! rewrite itself, which keeps the file's mode, owner and group.

use std::path::Path;

use pgwarden_core::config::ApplicationConfig;
use pgwarden_core::preflight::Shadow;
use pgwarden_core::{ini, Config};

use super::fsutil;

/// Points the application's config file at `host`/`port`. Returns
/// `Ok(false)` when it already did (nothing written: a resumed step does
/// not edit the file twice). Before the first change the original is kept
/// as `<file>.pgwarden-<operation>.bak`.
pub fn switch(
    app: &ApplicationConfig,
    operation: &str,
    host: &str,
    port: u16,
) -> Result<bool, String> {
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
    fsutil::keep_original(path, operation, original.as_bytes()).map_err(|e| {
        format!(
            "cannot write the backup {}.pgwarden-{operation}.bak: {e}",
            path.display()
        )
    })?;
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

/// Settings outside the application's config file that would override the
/// switch: inmanta reads every `*.cfg` of the file's directory in name
/// order, so a later file setting the same key wins.
pub fn shadows(config: &Config) -> Vec<Shadow> {
    let Some(app) = &config.application else {
        return Vec::new();
    };
    let Some(dir) = app.config_file.parent() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cfg") && *p != app.config_file)
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files
        .into_iter()
        .filter(|f| f.file_name() > app.config_file.file_name())
    {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for key in [&app.host_key, &app.port_key] {
            if pgwarden_core::ini::get(&text, &app.config_section, key).is_some() {
                out.push(Shadow {
                    source: f.display().to_string(),
                    key: key.clone(),
                });
            }
        }
    }
    out
}

/// Why the application's config file could not be rewritten the way the
/// switch does it (atomically, keeping owner and mode), or None. Preflight
/// asks before the fence: after the promotion it would be too late.
pub fn blocker(app: &ApplicationConfig) -> Option<String> {
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

pub(super) fn writable_dir(dir: &Path) -> bool {
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
pub(super) fn owner_keepable(meta: &std::fs::Metadata) -> Result<(), String> {
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
pub(super) fn write_like(
    path: &Path,
    bytes: &[u8],
    meta: &std::fs::Metadata,
) -> std::io::Result<()> {
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
