//! Progress of a step's long work, shown while it runs: a rejoin's
//! pg_basebackup is watched from its source's pg_stat_progress_basebackup
//! every second, and each reading goes to the step's [`Reporter`] (the
//! operation manager puts it on the running step in memory, for
//! `/v1/operations`, the status page and the metrics). The journal gets only
//! the final figure, with the step's outcome.
//!
//! A reading that fails (an error, a timeout, an odd answer) is reported as
//! progress unknown and the copy goes on: watching must never stop the work.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden_core::operation::{Operation, StepState};
use pgwarden_core::progress::{BasebackupTracker, Progress};

use super::StepContext;

/// How often the source is read: often enough for a live bar, and one
/// cheap statement a second costs the primary nothing.
pub const EVERY: Duration = Duration::from_secs(1);

/// Where a running step's progress goes; the default drops it.
#[derive(Clone, Default)]
pub struct Reporter(Option<Arc<dyn Fn(Option<Progress>) + Send + Sync>>);

impl Reporter {
    pub fn new(f: impl Fn(Option<Progress>) + Send + Sync + 'static) -> Reporter {
        Reporter(Some(Arc::new(f)))
    }

    pub fn report(&self, p: Option<Progress>) {
        if let Some(f) = &self.0 {
            f(p)
        }
    }
}

/// The application_name of the rejoin copy of `node`, by which its row of
/// pg_stat_progress_basebackup is found on the source.
pub fn copy_application_name(node: &str) -> String {
    let safe: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("pgwarden_rejoin_{safe}")
}

/// Runs `tool` (a pg_basebackup whose connection is named `app`) to its end
/// while reporting the progress that `source` shows of it. Returns the
/// tool's result and the final figure (its average rate).
pub async fn watch_basebackup<E>(
    ctx: &StepContext,
    source: &str,
    app: &str,
    tool: impl Future<Output = Result<(), E>>,
) -> (Result<(), E>, Progress) {
    let node = ctx.effects.node_quick(source);
    let started = tokio::time::Instant::now();
    // A std Mutex: held only to update, never across an await.
    let tracker = Mutex::new(BasebackupTracker::default());
    let poll = async {
        loop {
            let read = node
                .basebackup_progress(app)
                .await
                .map_err(|e| format!("cannot read pg_stat_progress_basebackup on {source}: {e}"));
            let p = tracker.lock().unwrap_or_else(|p| p.into_inner()).observe(
                started.elapsed().as_secs_f64(),
                &crate::ops::now(),
                read,
            );
            ctx.progress.report(Some(p));
            tokio::time::sleep(EVERY).await;
        }
    };
    // Biased, the watch first: a first reading is taken before the tool is
    // polled, and the outcome does not depend on select!'s random choice
    // when both are ready (the fake world's tools end at once).
    let out = tokio::select! {
        biased;
        never = poll => never,
        out = tool => out,
    };
    let last = tracker.lock().unwrap_or_else(|p| p.into_inner()).finished(
        out.is_ok(),
        started.elapsed().as_secs_f64(),
        &crate::ops::now(),
    );
    (out, last)
}

/// What the running step shows while a tool without readable progress
/// runs (pg_rewind).
pub fn phase_only(phase: &str, note: &str) -> Progress {
    Progress {
        phase: phase.to_owned(),
        observed_at: crate::ops::now(),
        note: Some(note.to_owned()),
        ..Progress::default()
    }
}

/// Keeps `p` on the running step of `op`: journaled with its outcome.
pub fn keep_final(op: &mut Operation, p: Progress) {
    if let Some(s) = op.steps.iter_mut().find(|s| s.state == StepState::Running) {
        s.progress = Some(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::fake::{FakeWorld, Fault, CONFIG};
    use pgwarden_core::progress::BasebackupRow;
    use pgwarden_core::{ClusterView, Config};

    fn context(w: &Arc<FakeWorld>, seen: Arc<Mutex<Vec<Progress>>>) -> StepContext {
        let config = w.config();
        StepContext {
            view: Arc::new(ClusterView::build(&config, &[])),
            config,
            effects: w.clone(),
            fenced_hosts: vec![],
            progress: Reporter::new(move |p| seen.lock().unwrap().extend(p)),
        }
    }

    fn row(streamed: u64) -> BasebackupRow {
        BasebackupRow {
            phase: "streaming database files".into(),
            backup_total: Some(100 << 20),
            backup_streamed: streamed,
            tablespaces_total: 1,
            tablespaces_streamed: 0,
        }
    }

    /// A copy of 12 s during which the source shows 10 MiB/s for 10 s.
    async fn copy(w: &Arc<FakeWorld>) -> (Result<(), String>, Progress, Vec<Progress>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ctx = context(w, seen.clone());
        let w2 = w.clone();
        let tool = async move {
            for i in 1..=10u64 {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                w2.with(|world| {
                    world.nodes.get_mut("pg-a").unwrap().basebackup = Some(row(i * (10 << 20)));
                });
            }
            // The tool still writes after the source has sent all.
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<(), String>(())
        };
        let (out, last) = watch_basebackup(&ctx, "pg-a", "pgwarden_rejoin_pg-b", tool).await;
        let seen = seen.lock().unwrap().clone();
        (out, last, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_shows_its_bytes_rate_and_eta_while_it_runs() {
        let w = FakeWorld::new(Config::parse_str("fake", CONFIG).unwrap());
        let (out, last, seen) = copy(&w).await;
        assert_eq!(out, Ok(()));
        assert_eq!(seen[0].phase, "starting", "{seen:?}");
        let mid = seen
            .iter()
            .find(|p| p.bytes_done == Some(50 << 20))
            .expect("a reading half-way");
        assert_eq!(mid.bytes_total, Some(100 << 20));
        assert_eq!(mid.rate_bytes_per_s, Some((10 << 20) as f64));
        assert_eq!(mid.eta_s, Some(5.0));
        assert_eq!(last.phase, "done");
        assert_eq!(last.bytes_done, Some(100 << 20));
        assert_eq!(last.rate_bytes_per_s, Some((100 << 20) as f64 / 12.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_copy_keeps_what_was_seen_and_says_failed() {
        let w = FakeWorld::new(Config::parse_str("fake", CONFIG).unwrap());
        w.with(|world| world.nodes.get_mut("pg-a").unwrap().basebackup = Some(row(30 << 20)));
        let ctx = context(&w, Default::default());
        let tool = async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            Err::<(), _>("pg_basebackup: error: connection lost")
        };
        let (out, last) = watch_basebackup(&ctx, "pg-a", "app", tool).await;
        assert!(out.is_err());
        assert_eq!(last.phase, "failed");
        assert_eq!(
            (last.bytes_done, last.bytes_total),
            (Some(30 << 20), Some(100 << 20))
        );
    }

    /// Every way a reading can fail: the copy goes on and ends as the tool
    /// ends; the progress says unknown, never zero.
    #[tokio::test(start_paused = true)]
    async fn an_unreadable_source_never_stops_the_copy() {
        for fault in Fault::ALL {
            let w = FakeWorld::new(Config::parse_str("fake", CONFIG).unwrap());
            w.fault("basebackup_progress", "pg-a", fault);
            let (out, last, seen) = copy(&w).await;
            assert_eq!(out, Ok(()), "{fault:?}");
            assert!(!seen.is_empty(), "{fault:?}");
            for p in &seen {
                assert_eq!(p.phase, "unknown", "{fault:?}: {p:?}");
                assert_eq!(
                    (p.bytes_done, p.bytes_total, p.rate_bytes_per_s),
                    (None, None, None)
                );
                assert!(p.note.as_deref().unwrap().contains("pg-a"), "{p:?}");
            }
            assert_eq!(last.bytes_done, None, "{fault:?}");
        }
    }

    #[test]
    fn the_copy_s_application_name_is_safe_in_a_conninfo() {
        assert_eq!(copy_application_name("pg-a"), "pgwarden_rejoin_pg-a");
        assert_eq!(copy_application_name("a b'c"), "pgwarden_rejoin_a_b_c");
    }
}
