//! Durable file writes: the journal, the audit log and the application's
//! config file must survive a crash or power loss at any instant.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Replaces `path` with `bytes` so that a reader (or a crash) sees either
/// the old file or the new one, never a mix: write a temp file in the same
/// directory, fsync it, rename it over `path`, fsync the directory. The new
/// file has exactly `mode`, whatever the umask.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_owned(path, bytes, mode, None)
}

/// [`write_atomic`], the new file also given `owner` (uid, gid). Mode and
/// owner are set on the open temp file (fchown, then fchmod, which a chown
/// could otherwise clear setgid from) before the rename: the umask masks
/// the mode given at creation, and a chown after the rename would leave a
/// moment in which the file's own reader (the application, not root) could
/// not read it, or a crash that left it so for good.
pub fn write_atomic_owned(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // A full disk must not leave a half-written temp file behind.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Keeps `original` (the content of `path` before an operation rewrote it)
/// as `<file>.pgwarden-<operation>.bak`, 0600, once: a resumed step must
/// not overwrite the original with its own first rewrite.
pub fn keep_original(path: &Path, operation: &str, original: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|f| f.to_string_lossy())
        .unwrap_or_default();
    let backup = path.with_file_name(format!("{name}.pgwarden-{operation}.bak"));
    if backup.exists() {
        return Ok(());
    }
    write_atomic(&backup, original, 0o600)
}

/// fsync a directory, so a rename or a new file in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and parents) if missing, and makes it private (0700): it
/// holds the journal and the audit log.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole_with_the_mode_asked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("op.json");
        write_atomic(&p, b"first", 0o600).unwrap();
        write_atomic(&p, b"second", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp file remains: {leftovers:?}");
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        write_atomic(&p, b"old", 0o600).unwrap();
        // A directory where the temp file should go makes the write fail.
        let blocker = d.path().join(format!(".x.tmp-{}", std::process::id()));
        fs::create_dir(&blocker).unwrap();
        assert!(write_atomic(&p, b"new", 0o600).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
    }

    #[test]
    fn mode_owner_and_group_survive_a_strict_umask() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("database.cfg");
        // The shipped unit's UMask=0077. Each nextest test is its own
        // process, so the process-wide umask changes no other test.
        // SAFETY: umask has no preconditions.
        unsafe { libc::umask(0o077) };
        // root:<a group the application reads through>, 0640: as root any
        // gid will do; otherwise one of our own groups.
        // SAFETY: these calls have no preconditions.
        let (uid, gid) = unsafe {
            if libc::geteuid() == 0 {
                (0, 65534)
            } else {
                (libc::geteuid(), libc::getegid())
            }
        };
        write_atomic_owned(&p, b"[database]\nhost = a\n", 0o640, Some((uid, gid))).unwrap();
        write_atomic_owned(&p, b"[database]\nhost = b\n", 0o640, Some((uid, gid))).unwrap();
        let meta = fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        assert_eq!(fs::read(&p).unwrap(), b"[database]\nhost = b\n");
        write_atomic(&d.path().join("op.json"), b"{}", 0o600).unwrap();
        assert_eq!(
            fs::metadata(d.path().join("op.json"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    #[test]
    fn private_dir_is_0700() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b");
        private_dir(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
