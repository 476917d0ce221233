//! A cross-process limit on how many test clusters run at once: test runners start tests
//! in parallel processes, and more than a few PostgreSQL pairs overload a 2-core machine
//! until timeouts fire.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{IoContext, KitError};

/// Directory of the lock files, shared by every process on the machine.
pub const SLOT_DIR: &str = "/tmp/pgwarden-testkit-slots";

/// Environment variable overriding how many clusters may run at once (default 3).
pub const MAX_CLUSTERS_ENV: &str = "PGWARDEN_TEST_MAX_CLUSTERS";

const DEFAULT_MAX_CLUSTERS: usize = 3;

/// One held slot; the flock is released when this (its file) is dropped, or when the
/// process dies, so a crashed test never leaks a slot.
#[derive(Debug)]
pub(crate) struct SlotGuard {
    _file: File,
    pub(crate) path: PathBuf,
}

fn max_clusters() -> usize {
    std::env::var(MAX_CLUSTERS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_MAX_CLUSTERS)
}

/// Blocks until one of the N slot lock files can be flocked.
pub(crate) fn acquire() -> Result<SlotGuard, KitError> {
    acquire_in(Path::new(SLOT_DIR), max_clusters())
}

pub(crate) fn acquire_in(dir: &Path, n: usize) -> Result<SlotGuard, KitError> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        // Sticky and world-writable like /tmp, so root and non-root runs can share it.
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777));
    }
    loop {
        for k in 0..n {
            let path = dir.join(format!("slot-{k}"));
            let file = open_lock(&path)
                .ctx(|| format!("opening the cluster slot lock {}", path.display()))?;
            // SAFETY: the fd is valid for the lifetime of `file`.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(SlotGuard { _file: file, path });
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Opens (creating if needed) a lock file. flock works on a read-only descriptor, so a
/// file created by another user (root vs. not) can still be shared.
fn open_lock(path: &Path) -> std::io::Result<File> {
    match File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o666)
                .open(path)?;
            // The umask trimmed the mode; widen it so any user can open it later.
            let _ = file.set_permissions(std::fs::Permissions::from_mode(0o666));
            Ok(file)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let a = acquire_in(dir.path(), 2).unwrap();
        let b = acquire_in(dir.path(), 2).unwrap();
        assert_ne!(a.path, b.path);
        let waiter = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || acquire_in(&dir, 2).unwrap().path)
        };
        let freed = a.path.clone();
        drop(a);
        assert_eq!(waiter.join().unwrap(), freed);
    }
}
