//! Locating the PostgreSQL server binaries (`initdb`, `pg_ctl`, ...) on this machine.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::KitError;

/// Where Debian/Ubuntu packages install each major version's binaries: `<root>/<ver>/bin`.
pub const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";

/// Finds a directory holding both `initdb` and `pg_ctl`: `preferred` if given, then each
/// directory of `$PATH`, then `/usr/lib/postgresql/*/bin`, highest version first.
pub fn find_pg_bin_dir(preferred: Option<&Path>) -> Result<PathBuf, KitError> {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    find_pg_bin_dir_in(preferred, &path_dirs, Path::new(DEBIAN_PG_ROOT))
}

/// [`find_pg_bin_dir`] with the search places spelled out, so it can be tested.
pub fn find_pg_bin_dir_in(
    preferred: Option<&Path>,
    path_dirs: &[PathBuf],
    versions_root: &Path,
) -> Result<PathBuf, KitError> {
    let mut searched = Vec::new();
    let check = |searched: &mut Vec<String>, dir: &Path, label: &str| -> Option<PathBuf> {
        match missing_tools(dir) {
            None => Some(resolve_links(dir)),
            Some(why) => {
                searched.push(format!("{} ({label}: {why})", dir.display()));
                None
            }
        }
    };

    if let Some(dir) = preferred {
        if let Some(found) = check(&mut searched, dir, "requested") {
            return Ok(found);
        }
    }
    for dir in path_dirs {
        if let Some(found) = check(&mut searched, dir, "from PATH") {
            return Ok(found);
        }
    }
    let versions = installed_versions(versions_root);
    if versions.is_empty() {
        searched.push(format!(
            "{}/*/bin (no PostgreSQL versions installed there)",
            versions_root.display()
        ));
    }
    for (_, name) in versions {
        let dir = versions_root.join(name).join("bin");
        if let Some(found) = check(&mut searched, &dir, "packaged version") {
            return Ok(found);
        }
    }
    Err(KitError::PgBinNotFound { searched })
}

/// PATH directories often hold only symlinks to a few server programs (here
/// /usr/local/bin has initdb, pg_ctl and postgres but no pg_basebackup): follow initdb's
/// link to the real installation directory when that one is complete.
fn resolve_links(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir.join("initdb"))
        .ok()
        .and_then(|real| real.parent().map(Path::to_path_buf))
        .filter(|real| missing_tools(real).is_none())
        .unwrap_or_else(|| dir.to_path_buf())
}

/// None when `dir` has executable `initdb` and `pg_ctl`, else why not.
fn missing_tools(dir: &Path) -> Option<String> {
    if !dir.is_dir() {
        return Some("not a directory".into());
    }
    let missing: Vec<&str> = ["initdb", "pg_ctl"]
        .into_iter()
        .filter(|tool| !is_executable(&dir.join(tool)))
        .collect();
    (!missing.is_empty()).then(|| format!("no {}", missing.join(", no ")))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Subdirectories of `root` named like a version ("15", "9.6"), highest first.
fn installed_versions(root: &Path) -> Vec<(Vec<u32>, String)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, String)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let key = name
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((key, name))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake_bin(dir: &Path, tools: &[&str]) {
        fs::create_dir_all(dir).unwrap();
        for t in tools {
            let p = dir.join(t);
            fs::write(&p, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn picks_the_highest_complete_version() {
        let root = tempfile::tempdir().unwrap();
        fake_bin(&root.path().join("9.6/bin"), &["initdb", "pg_ctl"]);
        fake_bin(&root.path().join("15/bin"), &["initdb", "pg_ctl"]);
        fake_bin(&root.path().join("16/bin"), &["initdb"]); // incomplete: skipped
        fake_bin(&root.path().join("common/bin"), &["initdb", "pg_ctl"]); // not a version
        let found = find_pg_bin_dir_in(None, &[], root.path()).unwrap();
        assert_eq!(found, root.path().join("15/bin"));
    }

    #[test]
    fn follows_symlinks_to_the_real_installation() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("real");
        fake_bin(&real, &["initdb", "pg_ctl", "pg_basebackup"]);
        let links = root.path().join("links");
        fs::create_dir_all(&links).unwrap();
        for t in ["initdb", "pg_ctl"] {
            std::os::unix::fs::symlink(real.join(t), links.join(t)).unwrap();
        }
        let found = find_pg_bin_dir_in(None, &[links], root.path()).unwrap();
        assert_eq!(found, fs::canonicalize(&real).unwrap());
    }

    #[test]
    fn preferred_wins_then_path() {
        let root = tempfile::tempdir().unwrap();
        let pref = root.path().join("pref");
        let on_path = root.path().join("onpath");
        fake_bin(&pref, &["initdb", "pg_ctl"]);
        fake_bin(&on_path, &["initdb", "pg_ctl"]);
        let path = vec![on_path.clone()];
        assert_eq!(
            find_pg_bin_dir_in(Some(&pref), &path, root.path()).unwrap(),
            pref
        );
        let bogus = root.path().join("bogus");
        assert_eq!(
            find_pg_bin_dir_in(Some(&bogus), &path, root.path()).unwrap(),
            on_path
        );
    }
}
