//! The fake world's file system: a tree of directories and files, each
//! with its mode, owner and group, the free bytes of each file system, and
//! pg_rewind and pg_basebackup as effects whose outcome a test sets (ok, or
//! a [`Fault`]: an error exit, a timeout, a tool that cannot run, a kill).
//! A pg_basebackup that succeeds leaves a whole data directory at `-D`
//! (the primary's files, as the real tool copies them); one that fails
//! after it began leaves a partial one, as the real tool can.
//!
//! Effect names for [`super::FakeWorld::fault`]: `exists`, `is_empty`,
//! `free_bytes`, `keep`, `restore`, `remove_all`, `swap`,
//! `configure_standby` and `pg_control`, at the path they are called on;
//! `run_tool` at the tool's name (`pg_rewind`, `pg_basebackup`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{enter, FakeWorld, Fault, World};
use crate::effects::datadir::{set_auto_conf, DataDirs};

/// The data directory owner (postgres) in the fake world.
pub const POSTGRES: (u32, u32) = (105, 112);

/// One directory (`text` None) or file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub text: Option<String>,
    pub mode: u32,
    pub owner: (u32, u32),
}

/// The host's file system.
#[derive(Clone, Debug, Default)]
pub struct FakeFs {
    pub entries: BTreeMap<PathBuf, Entry>,
    /// Free bytes per file system, by mount point: a path is on the
    /// longest mount point that holds it.
    pub free: BTreeMap<PathBuf, u64>,
}

impl FakeFs {
    pub fn dir(&mut self, path: impl AsRef<Path>, mode: u32, owner: (u32, u32)) {
        let e = Entry {
            text: None,
            mode,
            owner,
        };
        self.entries.insert(path.as_ref().to_owned(), e);
    }

    pub fn file(&mut self, path: impl AsRef<Path>, text: &str, mode: u32, owner: (u32, u32)) {
        let e = Entry {
            text: Some(text.to_owned()),
            mode,
            owner,
        };
        self.entries.insert(path.as_ref().to_owned(), e);
    }

    pub fn get(&self, path: impl AsRef<Path>) -> Option<&Entry> {
        self.entries.get(path.as_ref())
    }

    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.entries.contains_key(path.as_ref())
    }

    /// `path` and everything under it, by path relative to it.
    pub fn tree(&self, path: &Path) -> BTreeMap<PathBuf, Entry> {
        self.entries
            .iter()
            .filter(|(p, _)| p.starts_with(path))
            .map(|(p, e)| (p.strip_prefix(path).unwrap().to_owned(), e.clone()))
            .collect()
    }

    fn has_children(&self, dir: &Path) -> bool {
        self.entries.keys().any(|p| p.parent() == Some(dir))
    }

    fn remove_tree(&mut self, path: &Path) {
        self.entries.retain(|p, _| !p.starts_with(path));
    }

    /// A rename of `from` (and everything under it) to `to`.
    pub fn move_tree(&mut self, from: &Path, to: &Path) -> Result<(), String> {
        if self.exists(to) {
            return Err(format!("{}: File exists (os error 17)", to.display()));
        }
        if !to.parent().is_some_and(|p| self.exists(p)) || !self.exists(from) {
            return Err(format!(
                "{} -> {}: No such file or directory (os error 2)",
                from.display(),
                to.display()
            ));
        }
        for (rel, e) in self.tree(from) {
            self.entries.insert(
                if rel.as_os_str().is_empty() {
                    to.to_owned()
                } else {
                    to.join(rel)
                },
                e,
            );
        }
        self.entries
            .retain(|p, _| !p.starts_with(from) || p.starts_with(to));
        Ok(())
    }

    /// Writes a file owned like `dir`, 0600 (as pgwarden writes a data
    /// directory's files); `dir` must exist.
    fn write_owned_like(&mut self, dir: &Path, name: &str, text: &str) -> Result<(), String> {
        let owner = self
            .get(dir)
            .filter(|e| e.text.is_none())
            .ok_or_else(|| format!("{}: No such file or directory (os error 2)", dir.display()))?
            .owner;
        self.file(dir.join(name), text, 0o600, owner);
        Ok(())
    }

    /// A PostgreSQL data directory at `dir` whose files say `origin` (whose
    /// data it holds); pg_control says `wal_log_hints` on or off.
    pub fn data_dir(&mut self, dir: &Path, origin: &str, hints: bool) {
        self.dir(dir, 0o700, POSTGRES);
        self.file(dir.join("PG_VERSION"), "15\n", 0o600, POSTGRES);
        self.dir(dir.join("global"), 0o700, POSTGRES);
        let control = format!(
            "wal_log_hints={} checksums=off",
            if hints { "on" } else { "off" }
        );
        self.file(dir.join("global/pg_control"), &control, 0o600, POSTGRES);
        self.dir(dir.join("base"), 0o700, POSTGRES);
        self.file(dir.join("base/ORIGIN"), origin, 0o600, POSTGRES);
        for f in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
            self.file(dir.join(f), &format!("# {origin}: {f}\n"), 0o600, POSTGRES);
        }
        self.file(dir.join("postgresql.auto.conf"), "", 0o600, POSTGRES);
    }

    fn free_under(&self, path: &Path) -> Option<u64> {
        self.free
            .iter()
            .filter(|(m, _)| path.starts_with(m))
            .max_by_key(|(m, _)| m.components().count())
            .map(|(_, f)| *f)
    }
}

/// The message of a file-system call that went wrong.
fn fs_error(path: &Path, fault: Fault) -> String {
    let why = match fault {
        Fault::Error => "Permission denied (os error 13)",
        Fault::Timeout => "Stale file handle (os error 116)",
        Fault::Unreachable => "Transport endpoint is not connected (os error 107)",
        Fault::Unknown => "Input/output error (os error 5)",
    };
    format!("{}: {why}", path.display())
}

/// [`DataDirs`] on the fake world's file system.
pub struct FakeDataDirs {
    pub(super) world: Arc<Mutex<World>>,
}

impl FakeDataDirs {
    /// Records the call; its fault as an error, else `f` on the file system.
    fn call<T>(
        &self,
        effect: &str,
        path: &Path,
        f: impl FnOnce(&mut FakeFs) -> Result<T, String>,
    ) -> Result<T, String> {
        if let Some(fault) = enter(&self.world, effect, &path.display().to_string()) {
            return Err(fs_error(path, fault));
        }
        f(&mut self.world.lock().unwrap().fs)
    }
}

#[async_trait]
impl DataDirs for FakeDataDirs {
    fn exists(&self, path: &Path) -> Result<bool, String> {
        self.call("exists", path, |fs| Ok(fs.exists(path)))
    }

    fn is_empty(&self, dir: &Path) -> Result<bool, String> {
        self.call("is_empty", dir, |fs| Ok(!fs.has_children(dir)))
    }

    fn free_bytes(&self, dir: &Path) -> Result<u64, String> {
        self.call("free_bytes", dir, |fs| {
            fs.free_under(dir)
                .ok_or_else(|| format!("{}: no file system", dir.display()))
        })
    }

    fn keep(&self, from: &Path, to: &Path, names: &[&str]) -> Result<(), String> {
        self.call("keep", from, |fs| {
            fs.dir(to, 0o700, (0, 0));
            for f in names {
                if let Some(e) = fs.get(from.join(f)).cloned() {
                    fs.entries.insert(to.join(f), e);
                }
            }
            Ok(())
        })
    }

    fn restore(&self, from: &Path, dir: &Path, names: &[&str]) -> Result<(), String> {
        self.call("restore", dir, |fs| {
            for f in names {
                if let Some(e) = fs.get(from.join(f)).cloned() {
                    if !fs.exists(dir) {
                        return Err(format!(
                            "cannot restore {f}: {}",
                            fs_error(dir, Fault::Error)
                        ));
                    }
                    fs.entries.insert(dir.join(f), e);
                }
            }
            Ok(())
        })
    }

    fn remove_all(&self, path: &Path) -> std::io::Result<()> {
        self.call("remove_all", path, |fs| {
            if !fs.exists(path) {
                return Err(format!(
                    "{}: No such file or directory (os error 2)",
                    path.display()
                ));
            }
            fs.remove_tree(path);
            Ok(())
        })
        .map_err(std::io::Error::other)
    }

    fn swap(&self, new: &Path, dir: &Path, old: &Path) -> Result<bool, String> {
        self.call("swap", dir, |fs| {
            let mut kept = false;
            if fs.exists(dir) {
                if fs.has_children(dir) {
                    fs.move_tree(dir, old)
                        .map_err(|e| format!("cannot move {} aside: {e}", dir.display()))?;
                    kept = true;
                } else {
                    fs.remove_tree(dir);
                }
            }
            fs.move_tree(new, dir)
                .map_err(|e| format!("cannot move the copy into {}: {e}", dir.display()))?;
            Ok(kept)
        })
    }

    fn configure_standby(
        &self,
        dir: &Path,
        settings: &[(&str, Option<String>)],
        signal: bool,
    ) -> std::io::Result<()> {
        self.call("configure_standby", dir, |fs| {
            let auto = dir.join("postgresql.auto.conf");
            let text = fs
                .get(&auto)
                .and_then(|e| e.text.clone())
                .unwrap_or_default();
            fs.write_owned_like(dir, "postgresql.auto.conf", &set_auto_conf(&text, settings))?;
            if signal && !fs.exists(dir.join("standby.signal")) {
                fs.write_owned_like(dir, "standby.signal", "")?;
            }
            Ok(())
        })
        .map_err(std::io::Error::other)
    }

    async fn run_tool(
        &self,
        argv: &[String],
        _env: &[(&str, &str)],
        _timeout: Duration,
    ) -> Result<(), String> {
        let tool = argv
            .iter()
            .filter_map(|a| Path::new(a).file_name()?.to_str())
            .find(|n| *n == "pg_rewind" || *n == "pg_basebackup")
            .unwrap_or("?")
            .to_owned();
        let arg = |flag: &str| -> Option<PathBuf> {
            let i = argv.iter().position(|a| a == flag)?;
            argv.get(i + 1).map(PathBuf::from)
        };
        let target = match tool.as_str() {
            "pg_basebackup" => arg("-D"),
            _ => argv
                .iter()
                .find_map(|a| a.strip_prefix("--target-pgdata="))
                .map(PathBuf::from),
        }
        .ok_or_else(|| format!("{tool}: no target directory given"))?;
        let fault = enter(&self.world, "run_tool", &tool);
        FakeWorld::hang(fault).await;
        let mut w = self.world.lock().unwrap();
        let fs = &mut w.fs;
        // What a copy that began leaves behind when it did not end.
        let partial = |fs: &mut FakeFs| {
            if tool == "pg_basebackup" && !fs.exists(&target) {
                fs.dir(&target, 0o700, POSTGRES);
                fs.file(target.join("PG_VERSION"), "15\n", 0o600, POSTGRES);
            }
        };
        match fault {
            Some(Fault::Error) => {
                partial(fs);
                return Err(format!(
                    "`{tool}` exited with status 1: {tool}: error: could not receive data from WAL stream: server closed the connection unexpectedly"
                ));
            }
            Some(Fault::Timeout) => {
                partial(fs);
                return Err(format!("`{tool}` did not finish within 6h and was killed"));
            }
            Some(Fault::Unreachable) => {
                return Err(format!(
                    "cannot run `{tool}`: No such file or directory (os error 2) (is it installed and on PATH?)"
                ))
            }
            Some(Fault::Unknown) => {
                partial(fs);
                return Err(format!("`{tool}` was killed by signal 9"));
            }
            None => {}
        }
        if tool == "pg_basebackup" {
            if fs.has_children(&target) {
                return Err(format!(
                    "`{tool}` exited with status 1: directory \"{}\" exists but is not empty",
                    target.display()
                ));
            }
            if !target.parent().is_some_and(|p| fs.exists(p)) {
                return Err(format!(
                    "`{tool}` exited with status 1: could not create directory \"{}\": No such file or directory",
                    target.display()
                ));
            }
            fs.data_dir(&target, "a copy of the primary", true);
        } else {
            if !fs.exists(target.join("PG_VERSION")) {
                return Err(format!(
                    "`{tool}` exited with status 1: could not open file \"{}/PG_VERSION\"",
                    target.display()
                ));
            }
            // pg_rewind copies the primary's configuration files too, and
            // leaves a backup_label for recovery.
            for f in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
                let text = format!("# a copy of the primary: {f}\n");
                fs.file(target.join(f), &text, 0o600, POSTGRES);
            }
            fs.file(
                target.join("backup_label"),
                "START WAL LOCATION: 0/4000028\n",
                0o600,
                POSTGRES,
            );
        }
        Ok(())
    }
}
