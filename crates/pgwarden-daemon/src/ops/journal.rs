//! The operation journal: one JSON document per operation in
//! `<state_dir>/operations/<id>.json`, replaced atomically at every
//! transition (see `pgwarden_core::operation` for the order of intent, act,
//! fact). On start, an operation found `running` was cut off by a crash: it
//! is marked `interrupted` and waits for an operator to resume or abort it.

use std::fs;
use std::path::{Path, PathBuf};

use pgwarden_core::operation::Operation;

use crate::effects::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "cannot use the journal directory {dir}: {source} (check state_dir and its permissions)"
    )]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the journal file {path}: {source} (is the disk under state_dir full?)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the journal file {path} is unreadable: {reason}; it was moved to {moved_to} so the daemon can start; inspect it before resuming anything")]
    Corrupt {
        path: PathBuf,
        reason: String,
        moved_to: PathBuf,
    },
}

/// The journal directory of one daemon.
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens (creating, 0700) `<state_dir>/operations`.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let dir = state_dir.join("operations");
        fsutil::private_dir(state_dir)
            .and_then(|_| fsutil::private_dir(&dir))
            .map_err(|source| JournalError::Dir {
                dir: dir.clone(),
                source,
            })?;
        Ok(Journal { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `op` durably (fsync, rename, fsync of the directory).
    pub fn save(&self, op: &Operation) -> Result<(), JournalError> {
        let path = self.path(&op.id);
        let mut bytes = serde_json::to_vec_pretty(op).expect("an operation always serializes");
        bytes.push(b'\n');
        fsutil::write_atomic(&path, &bytes, 0o600)
            .map_err(|source| JournalError::Write { path, source })
    }

    /// Every operation in the journal, oldest first, and the files that
    /// could not be read (moved aside to `*.corrupt`, never deleted).
    pub fn load_all(&self) -> Result<(Vec<Operation>, Vec<JournalError>), JournalError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| JournalError::Dir {
            dir: self.dir.clone(),
            source,
        })?;
        let mut ops = Vec::new();
        let mut corrupt = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Operation>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(op) => ops.push(op),
                Err(reason) => {
                    let moved_to = path.with_extension("json.corrupt");
                    let _ = fs::rename(&path, &moved_to);
                    corrupt.push(JournalError::Corrupt {
                        path,
                        reason,
                        moved_to,
                    });
                }
            }
        }
        ops.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok((ops, corrupt))
    }

    /// On daemon start: loads the journal and marks operations that were
    /// running as interrupted (persisted before anything else happens).
    pub fn recover(&self) -> Result<(Vec<Operation>, Vec<JournalError>), JournalError> {
        let (mut ops, corrupt) = self.load_all()?;
        for op in &mut ops {
            if op.interrupt() {
                self.save(op)?;
            }
        }
        Ok((ops, corrupt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_core::operation::{OperationKind, OperationState, Request, StepOutcome};

    fn op(id: &str, at: &str) -> Operation {
        let req = Request {
            target: "pg-b".into(),
            reason: "test".into(),
            force: false,
            fenced_hosts: Vec::new(),
        };
        Operation::new(id.into(), OperationKind::Failover, req, at)
    }

    #[test]
    fn an_operation_cut_off_mid_step_is_interrupted_on_recovery() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path()).unwrap();
        let mut running = op("op-2", "2026-01-02");
        running.start_step("t").unwrap();
        running
            .finish_step(StepOutcome::Succeeded("ok".into()), "t")
            .unwrap();
        running.start_step("t").unwrap();
        j.save(&running).unwrap();
        let mut done = op("op-1", "2026-01-01");
        while done.next_step().is_some() {
            done.start_step("t").unwrap();
            done.finish_step(StepOutcome::Succeeded("ok".into()), "t")
                .unwrap();
        }
        j.save(&done).unwrap();

        let (ops, corrupt) = Journal::open(d.path()).unwrap().recover().unwrap();
        assert!(corrupt.is_empty());
        assert_eq!(
            ops.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            ["op-1", "op-2"]
        );
        assert_eq!(ops[0].state, OperationState::Succeeded);
        assert_eq!(ops[1].state, OperationState::Interrupted);
        // ...and that is on disk, not only in memory.
        let (again, _) = j.load_all().unwrap();
        assert_eq!(again[1].state, OperationState::Interrupted);
    }

    #[test]
    fn a_truncated_file_is_moved_aside_not_deleted() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path()).unwrap();
        j.save(&op("op-1", "t")).unwrap();
        let path = d.path().join("operations/op-1.json");
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, &text[..text.len() / 2]).unwrap();
        let (ops, corrupt) = j.recover().unwrap();
        assert!(ops.is_empty());
        assert_eq!(corrupt.len(), 1);
        let msg = corrupt[0].to_string();
        assert!(
            msg.contains("op-1.json is unreadable") && msg.contains(".corrupt"),
            "{msg}"
        );
        assert!(d.path().join("operations/op-1.json.corrupt").exists());
    }

    #[test]
    fn the_state_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let j = Journal::open(&state).unwrap();
        j.save(&op("op-1", "t")).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("operations/op-1.json")), 0o600);
    }

    /// A journal file written before facts were typed (a rejoin that
    /// copied, recorded as the string map of that time) loads, its facts
    /// typed, and is written back with the same keys and values.
    #[test]
    fn a_journal_file_of_the_string_facts_days_loads_and_saves_the_same() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path()).unwrap();
        let old = serde_json::json!({
            "id": "20261122T013147Z-rejoin-2d5d8e", "kind": "rejoin", "state": "succeeded",
            "request": {"target": "pg-a", "reason": "", "force": false},
            "created_at": "2026-11-22T01:31:47Z", "finished_at": "2026-11-22T01:32:30Z",
            "steps": [{"name": "preflight", "state": "succeeded", "started_at": "t", "finished_at": "t", "message": "ok", "attempts": 1}],
            "facts": {
                "keep_old_data": "false", "method": "basebackup", "method_asked": "auto",
                "method_reason": "pg_rewind cannot work here (neither wal_log_hints nor data checksums are on in this data directory)",
                "old_data_dir": "/var/lib/postgresql/15/main.pgwarden-old-20261122T013147Z-rejoin-2d5d8e",
                "peer_lock": "granted by pg-b", "primary": "pg-b"
            }
        });
        let file = d
            .path()
            .join("operations/20261122T013147Z-rejoin-2d5d8e.json");
        fs::write(&file, serde_json::to_vec_pretty(&old).unwrap()).unwrap();
        let (ops, corrupt) = j.load_all().unwrap();
        assert!(corrupt.is_empty(), "{corrupt:?}");
        let f = &ops[0].facts;
        assert_eq!(f.method.as_deref(), Some("basebackup"));
        assert_eq!(f.keep_old_data, Some(false));
        assert_eq!(f.primary.as_deref(), Some("pg-b"));
        j.save(&ops[0]).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        assert_eq!(back, old);
    }
}
