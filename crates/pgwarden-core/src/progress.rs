//! Progress of the long work inside a step (a rejoin's pg_basebackup copy):
//! what the source reports, the rate over a sliding window, the ETA, and
//! how it reads for a human.
//!
//! No clock here: every reading comes with its time (seconds since any
//! fixed origin) and its RFC 3339 text from the caller. An unreadable
//! source gives a progress whose figures are unknown (`None`), never zero.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::units::{human_bytes, human_seconds};

/// The rate is measured over this much of the recent past: long enough to
/// smooth a pause of the source (a checkpoint, a large file), short enough
/// to follow a change of `--max-rate` or of the load.
pub const RATE_WINDOW_S: f64 = 20.0;

/// One row of `pg_stat_progress_basebackup` on the source.
#[derive(Clone, Debug, PartialEq)]
pub struct BasebackupRow {
    /// `initializing`, `waiting for checkpoint to finish`, `estimating
    /// backup size`, `streaming database files`, `waiting for wal
    /// archiving to finish`, `transferring wal files`.
    pub phase: String,
    /// NULL until the size is estimated (and with `--no-estimate-size`).
    pub backup_total: Option<u64>,
    pub backup_streamed: u64,
    pub tablespaces_total: u64,
    pub tablespaces_streamed: u64,
}

/// What a running step shows of its long work: `steps[].progress` in
/// `/v1/operations`. A figure that cannot be known is `null`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Progress {
    /// What the tool is doing: the phase of pg_stat_progress_basebackup,
    /// `starting` (no row yet), `finishing` (the source has sent all),
    /// `done`, `rewinding` (pg_rewind), or `unknown` (the source could not
    /// be read).
    pub phase: String,
    pub bytes_done: Option<u64>,
    pub bytes_total: Option<u64>,
    pub rate_bytes_per_s: Option<f64>,
    /// Seconds left at the current rate.
    pub eta_s: Option<f64>,
    /// When this was read (RFC 3339).
    pub observed_at: String,
    /// Why figures are missing, for a human.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Progress {
    /// Done as a fraction of the total, when both are known.
    pub fn fraction(&self) -> Option<f64> {
        match (self.bytes_done, self.bytes_total) {
            (Some(d), Some(t)) if t > 0 => Some((d as f64 / t as f64).min(1.0)),
            _ => None,
        }
    }

    /// One line: `streaming database files: 120.0 MiB of 300.0 MiB (40%),
    /// 8.0 MiB/s, about 23s left`.
    pub fn line(&self) -> String {
        let mut out = self.phase.clone();
        match (self.bytes_done, self.bytes_total) {
            (Some(d), Some(t)) => out.push_str(&format!(
                ": {} of {} ({:.0}%)",
                human_bytes(d),
                human_bytes(t),
                self.fraction().unwrap_or(0.0) * 100.0
            )),
            (Some(d), None) => out.push_str(&format!(": {} (total not known yet)", human_bytes(d))),
            (None, _) => {}
        }
        if let Some(r) = self.rate_bytes_per_s {
            out.push_str(&format!(", {}/s", human_bytes(r as u64)));
        }
        if let Some(eta) = self.eta_s {
            out.push_str(&format!(", about {} left", human_seconds(eta)));
        }
        if let Some(n) = &self.note {
            out.push_str(&format!(" ({n})"));
        }
        out
    }
}

/// Bytes seen over time; the rate over the last `window` seconds.
#[derive(Clone, Debug)]
pub struct RateWindow {
    window: f64,
    samples: VecDeque<(f64, u64)>,
}

impl RateWindow {
    pub fn new(window_s: f64) -> RateWindow {
        RateWindow {
            window: window_s,
            samples: VecDeque::new(),
        }
    }

    /// Records `bytes` done at time `t`. Fewer bytes than before means the
    /// work started again (a new copy): the past no longer says anything.
    pub fn push(&mut self, t: f64, bytes: u64) {
        if let Some(&(lt, lb)) = self.samples.back() {
            if bytes < lb || t < lt {
                self.samples.clear();
            }
        }
        self.samples.push_back((t, bytes));
        // Keep one sample at or beyond the window's edge so that the
        // window is always covered.
        while self.samples.len() > 2 && self.samples[1].0 <= t - self.window {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window; `None` until two samples at
    /// least a second apart exist.
    pub fn rate(&self) -> Option<f64> {
        let (&(t0, b0), &(t1, b1)) = (self.samples.front()?, self.samples.back()?);
        let dt = t1 - t0;
        (dt >= 1.0).then(|| (b1 - b0) as f64 / dt)
    }
}

/// Seconds until `total` at `rate`: 0 once done, `None` when the rate is
/// unknown or nil (stalled: no honest estimate).
pub fn eta(done: u64, total: u64, rate: Option<f64>) -> Option<f64> {
    if done >= total {
        return Some(0.0);
    }
    let r = rate.filter(|r| *r > 0.0)?;
    Some((total - done) as f64 / r)
}

/// Turns successive readings of the source's pg_stat_progress_basebackup
/// into [`Progress`].
#[derive(Clone, Debug)]
pub struct BasebackupTracker {
    window: RateWindow,
    last: Option<BasebackupRow>,
}

impl Default for BasebackupTracker {
    fn default() -> Self {
        BasebackupTracker {
            window: RateWindow::new(RATE_WINDOW_S),
            last: None,
        }
    }
}

impl BasebackupTracker {
    /// One reading at `t` (`at`: its RFC 3339 text): the row of our backup,
    /// none (not started yet, or all sent), or why it could not be read.
    pub fn observe(
        &mut self,
        t: f64,
        at: &str,
        read: Result<Option<BasebackupRow>, String>,
    ) -> Progress {
        let mut p = Progress {
            observed_at: at.to_owned(),
            ..Progress::default()
        };
        match read {
            Ok(Some(row)) => {
                self.window.push(t, row.backup_streamed);
                p.rate_bytes_per_s = self.window.rate();
                p.eta_s = row
                    .backup_total
                    .and_then(|total| eta(row.backup_streamed, total, p.rate_bytes_per_s));
                p.phase = row.phase.clone();
                p.bytes_done = Some(row.backup_streamed);
                p.bytes_total = row.backup_total;
                self.last = Some(row);
            }
            Ok(None) => match &self.last {
                // The source has sent everything; the tool still writes.
                Some(row) => {
                    p.phase = "finishing".into();
                    p.bytes_done = Some(row.backup_streamed);
                    p.bytes_total = row.backup_total;
                }
                None => p.phase = "starting".into(),
            },
            Err(e) => {
                p.phase = "unknown".into();
                p.note = Some(e);
            }
        }
        p
    }

    /// The figure to keep once the tool ended after `elapsed_s`. A copy
    /// that ended well sent the whole data directory: the source's
    /// estimate of it (readings every second miss the last moments), at
    /// the average rate of the whole run. A failed one keeps what was seen.
    pub fn finished(&self, succeeded: bool, elapsed_s: f64, at: &str) -> Progress {
        let seen = self.last.as_ref().map(|r| r.backup_streamed);
        let total = self.last.as_ref().and_then(|r| r.backup_total);
        let done = if succeeded {
            match (seen, total) {
                (Some(s), Some(t)) => Some(s.max(t)),
                (s, _) => s,
            }
        } else {
            seen
        };
        Progress {
            phase: if succeeded { "done" } else { "failed" }.into(),
            bytes_done: done,
            bytes_total: if succeeded { done } else { total },
            rate_bytes_per_s: done
                .filter(|_| elapsed_s >= 1.0)
                .map(|d| d as f64 / elapsed_s),
            eta_s: succeeded.then_some(0.0),
            observed_at: at.to_owned(),
            note: done
                .is_none()
                .then(|| "the source's progress was never seen".to_owned()),
        }
    }
}

/// `312.0 MiB in 41s, 7.6 MiB/s`, for a step's final message.
pub fn summary(p: &Progress, elapsed_s: f64) -> Option<String> {
    let done = p.bytes_done?;
    Some(format!(
        "{} in {}{}",
        human_bytes(done),
        human_seconds(elapsed_s),
        p.rate_bytes_per_s
            .map(|r| format!(", {}/s", human_bytes(r as u64)))
            .unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(phase: &str, streamed: u64, total: Option<u64>) -> BasebackupRow {
        BasebackupRow {
            phase: phase.into(),
            backup_total: total,
            backup_streamed: streamed,
            tablespaces_total: 1,
            tablespaces_streamed: 0,
        }
    }

    #[test]
    fn the_rate_is_measured_over_the_window_only() {
        let mut w = RateWindow::new(10.0);
        assert_eq!(w.rate(), None);
        w.push(0.0, 0);
        assert_eq!(w.rate(), None, "one sample says nothing");
        w.push(0.5, 100);
        assert_eq!(w.rate(), None, "less than a second apart");
        // 100 B/s for 20 s, then 1000 B/s: after 10 s of the new pace the
        // window sees only it.
        for t in 1..=20 {
            w.push(t as f64, t * 100);
        }
        assert_eq!(w.rate(), Some(100.0));
        for t in 21..=30 {
            w.push(t as f64, 2000 + (t - 20) * 1000);
        }
        assert_eq!(w.rate(), Some(1000.0));
    }

    #[test]
    fn a_copy_that_starts_again_forgets_the_old_rate() {
        let mut w = RateWindow::new(10.0);
        w.push(0.0, 0);
        w.push(5.0, 5000);
        w.push(6.0, 10);
        assert_eq!(w.rate(), None);
        w.push(8.0, 210);
        assert_eq!(w.rate(), Some(100.0));
    }

    #[test]
    fn the_eta_needs_a_rate_and_is_zero_when_done() {
        assert_eq!(eta(100, 1100, Some(100.0)), Some(10.0));
        assert_eq!(eta(100, 1100, None), None);
        assert_eq!(eta(100, 1100, Some(0.0)), None, "stalled: no estimate");
        assert_eq!(eta(1100, 1100, None), Some(0.0));
        // The estimate is an estimate: more streamed than estimated is done.
        assert_eq!(eta(1200, 1100, Some(5.0)), Some(0.0));
    }

    #[test]
    fn readings_become_progress_and_unknown_is_never_zero() {
        let mut tr = BasebackupTracker::default();
        let p = tr.observe(0.0, "t0", Ok(None));
        assert_eq!(p.phase, "starting");
        assert_eq!((p.bytes_done, p.bytes_total), (None, None));
        let p = tr.observe(1.0, "t1", Ok(Some(row("estimating backup size", 0, None))));
        assert_eq!(
            (p.bytes_done, p.bytes_total, p.eta_s),
            (Some(0), None, None)
        );
        let p = tr.observe(
            2.0,
            "t2",
            Ok(Some(row(
                "streaming database files",
                1 << 20,
                Some(11 << 20),
            ))),
        );
        assert_eq!(p.rate_bytes_per_s, Some((1 << 20) as f64));
        assert_eq!(p.eta_s, Some(10.0));
        assert_eq!(p.observed_at, "t2");
        let p = tr.observe(3.0, "t3", Err("timeout after 2s".into()));
        assert_eq!(p.phase, "unknown");
        assert_eq!(
            (p.bytes_done, p.bytes_total, p.rate_bytes_per_s, p.eta_s),
            (None, None, None, None)
        );
        assert_eq!(p.note.as_deref(), Some("timeout after 2s"));
        // The next good reading measures the rate across the gap.
        let p = tr.observe(
            4.0,
            "t4",
            Ok(Some(row(
                "streaming database files",
                3 << 20,
                Some(11 << 20),
            ))),
        );
        assert_eq!(p.rate_bytes_per_s, Some((3 << 20) as f64 / 3.0));
        // All sent: the row is gone while the tool finishes.
        let p = tr.observe(5.0, "t5", Ok(None));
        assert_eq!(p.phase, "finishing");
        assert_eq!(p.bytes_done, Some(3 << 20));
        let failed = tr.finished(false, 4.0, "t6");
        assert_eq!(failed.phase, "failed");
        assert_eq!(
            (failed.bytes_done, failed.bytes_total),
            (Some(3 << 20), Some(11 << 20))
        );
        assert_eq!(failed.eta_s, None);
        // Ended well: the whole directory went, as the source estimated it.
        let f = tr.finished(true, 4.0, "t6");
        assert_eq!(f.phase, "done");
        assert_eq!(
            (f.bytes_done, f.bytes_total),
            (Some(11 << 20), Some(11 << 20))
        );
        assert_eq!(f.rate_bytes_per_s, Some((11 << 20) as f64 / 4.0));
        assert_eq!(summary(&f, 4.0).unwrap(), "11.0 MiB in 4s, 2.8 MiB/s");
    }

    #[test]
    fn a_copy_never_seen_ends_without_figures() {
        let f = BasebackupTracker::default().finished(true, 30.0, "t");
        assert_eq!((f.bytes_done, f.rate_bytes_per_s), (None, None));
        assert!(f.note.is_some());
        assert_eq!(summary(&f, 30.0), None);
    }

    #[test]
    fn progress_reads_as_one_line() {
        let p = Progress {
            phase: "streaming database files".into(),
            bytes_done: Some(120 << 20),
            bytes_total: Some(300 << 20),
            rate_bytes_per_s: Some((8 << 20) as f64),
            eta_s: Some(22.6),
            observed_at: "t".into(),
            note: None,
        };
        assert_eq!(
            p.line(),
            "streaming database files: 120.0 MiB of 300.0 MiB (40%), 8.0 MiB/s, about 23s left"
        );
        let unknown = Progress {
            phase: "unknown".into(),
            note: Some("cannot read pg_stat_progress_basebackup on pg-a: timeout".into()),
            ..Progress::default()
        };
        assert_eq!(
            unknown.line(),
            "unknown (cannot read pg_stat_progress_basebackup on pg-a: timeout)"
        );
    }
}
