//! The poll loop: one task per node probes it every `poll.interval`; one
//! builder task folds their results into a new [`ClusterView`], updates the
//! metrics and publishes both.
//!
//! A task per node means a slow or dead node (each probe bounded by
//! `poll.timeout`) never delays the other node's poll. The builder also ticks
//! on its own, so `/livez` proves the loop runs even when every probe hangs.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pgwarden_core::last_primary::LastPrimary;
use pgwarden_core::view::{ClusterView, NodeObservation};
use pgwarden_core::{health, Config, NodeSnapshot};
use pgwarden_pg::{Prober, Target};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::Instrument;

use crate::load::Secrets;
use crate::metrics::Metrics;

/// Peer hosts the operator confirmed fenced (`PUT /v1/sync` with
/// `fenced_hosts`) while their daemon was silent. A std Mutex: held only to
/// read or change the set.
pub(crate) type FencedPeers = Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>;

/// What the poll loop publishes after each poll, read by every HTTP handler.
/// One value behind one `watch`, so a scrape and a health check always see
/// the same poll.
pub(crate) struct Published {
    pub view: Arc<ClusterView>,
    /// The rendered /metrics text of this view.
    pub metrics: axum::body::Bytes,
    /// When the poll loop last ran (liveness).
    pub loop_at: Instant,
    /// When the poll behind each node's latest result started (in the
    /// order of `nodes`): an operation waits for polls started after its
    /// last step, so its answer and the view agree.
    pub polls_started: Vec<Option<Instant>>,
}

struct PollResult {
    node: usize,
    outcome: Result<NodeSnapshot, String>,
    started: Instant,
    took: Duration,
}

/// What the poll loop reads from and writes to.
pub(crate) struct Wiring {
    pub config: Arc<Config>,
    pub secrets: Secrets,
    pub metrics: Arc<Metrics>,
    /// Where each new view and its rendered metrics go.
    pub published: watch::Sender<Arc<Published>>,
    /// The open or latest operation, whose problems join the view.
    pub operation: watch::Receiver<Option<pgwarden_core::operation::Operation>>,
    /// Why the stale-primary guard could not stop this node, if it could not.
    pub guard_failure: watch::Receiver<Option<String>>,
    /// Tells systemd when the daemon is ready and that its loop still runs.
    pub notifier: Arc<crate::notify::Notifier>,
    /// Poll every node at once (after an operation's step), not at the next tick.
    pub poll_now: Arc<tokio::sync::Notify>,
    /// Asks the other daemons whether they answer (`primary_isolated`).
    pub effects: Arc<dyn crate::effects::Effects>,
    /// Peers confirmed fenced by the operator while silent.
    pub fenced_peers: crate::poller::FencedPeers,
    pub stop: watch::Receiver<bool>,
}

/// Starts the node pollers and the view builder; the handle ends when all
/// of them have stopped.
pub(crate) fn spawn(span: tracing::Span, wiring: Wiring) -> JoinHandle<()> {
    let Wiring {
        config,
        secrets,
        metrics,
        published,
        operation,
        guard_failure,
        notifier,
        poll_now,
        effects,
        fenced_peers,
        stop,
    } = wiring;
    let (tx, rx) = mpsc::channel(config.nodes.len() * 2);
    let (daemon_tx, daemon_rx) = mpsc::channel(config.nodes.len() * 2);
    let mut pollers = Vec::new();
    for (i, node) in config.nodes.iter().enumerate() {
        let target = Target {
            host: node.host.clone(),
            port: node.port,
            user: config.monitor.user.clone(),
            password: secrets.monitor_password.clone(),
            dbname: config.monitor.dbname.clone(),
            tls: pgwarden_pg::PgTls::for_node(node),
        };
        let prober = Prober::new(target, config.poll.timeout);
        pollers.push(tokio::spawn(poll_node(
            i,
            prober,
            config.poll.interval,
            tx.clone(),
            poll_now.clone(),
            stop.clone(),
        )));
    }
    drop(tx);
    for (i, node) in config.nodes.iter().enumerate() {
        if node.name == config.local_node || node.api.is_none() {
            continue;
        }
        pollers.push(tokio::spawn(check_daemon(
            i,
            node.name.clone(),
            effects.clone(),
            config.poll.interval,
            daemon_tx.clone(),
            stop.clone(),
        )));
    }
    drop(daemon_tx);
    tokio::spawn(
        async move {
            build_views(
                ViewLoop {
                    config,
                    metrics,
                    published,
                    operation,
                    guard_failure,
                    notifier,
                    fenced_peers,
                    stop,
                },
                rx,
                daemon_rx,
            )
            .await;
            for p in pollers {
                let _ = p.await;
            }
        }
        .instrument(span),
    )
}

async fn poll_node(
    node: usize,
    mut prober: Prober,
    interval: Duration,
    results: mpsc::Sender<PollResult>,
    poll_now: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    // After a slow poll, wait a full interval instead of bursting to catch up.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = poll_now.notified() => ticker.reset(),
            _ = stop.wait_for(|s| *s) => return,
        }
        let started = Instant::now();
        let outcome = prober.probe().await.map_err(|e| e.to_string());
        let result = PollResult {
            node,
            outcome,
            started,
            took: started.elapsed(),
        };
        if results.send(result).await.is_err() {
            return;
        }
    }
}

/// Asks the daemon beside node `node` every `interval` whether it answers.
async fn check_daemon(
    node: usize,
    name: String,
    effects: Arc<dyn crate::effects::Effects>,
    interval: Duration,
    results: mpsc::Sender<(usize, bool)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let answers = tokio::select! {
            a = effects.daemon_answers(&name) => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        if results.send((node, answers)).await.is_err() {
            return;
        }
    }
}

/// What the view builder reads and writes: the [`Wiring`] minus the pollers' part.
struct ViewLoop {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    published: watch::Sender<Arc<Published>>,
    operation: watch::Receiver<Option<pgwarden_core::operation::Operation>>,
    guard_failure: watch::Receiver<Option<String>>,
    notifier: Arc<crate::notify::Notifier>,
    fenced_peers: crate::poller::FencedPeers,
    stop: watch::Receiver<bool>,
}

async fn build_views(
    wiring: ViewLoop,
    mut results: mpsc::Receiver<PollResult>,
    mut daemons: mpsc::Receiver<(usize, bool)>,
) {
    let ViewLoop {
        config,
        metrics,
        published,
        operation,
        guard_failure,
        notifier,
        fenced_peers,
        mut stop,
    } = wiring;
    let mut ready = false;
    let mut observations = vec![NodeObservation::default(); config.nodes.len()];
    let mut last_primary =
        LastPrimaryRecord::load(&config.state_dir, config.replication.max_lag_on_failover);
    let mut polls_started = vec![None; config.nodes.len()];
    let mut ticker = tokio::time::interval(config.poll.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = results.recv() => {
                let Some(result) = result else { return };
                let name = &config.nodes[result.node].name;
                metrics.observe_poll(name, result.took, result.outcome.is_err());
                polls_started[result.node] = Some(result.started);
                let obs = &mut observations[result.node];
                log_transition(name, obs, &result.outcome);
                record_poll(obs, result.outcome, humantime::format_rfc3339_millis(SystemTime::now()).to_string());
                // An operation stopped half-way is a cluster problem too.
                let guard = guard_failure
                    .borrow()
                    .as_deref()
                    .map(|why| health::stale_primary_not_stopped(&config.local_node, why));
                let mut view = ClusterView::build(&config, &observations)
                    .with_operation(operation.borrow().as_ref())
                    .with_problems(guard);
                view.last_primary = last_primary.update(&view);
                let confirmed = fenced_peers.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let isolated = health::primary_isolated(&config, &view, &confirmed);
                let view = view.with_problems(isolated);
                log_problem_changes(&published.borrow().view, &view);
                // Ready once every node has been polled (answered or not):
                // from then on /metrics and /health tell the truth.
                let line = status_line(&view);
                if ready {
                    notifier.status(&line);
                } else if observations.iter().all(|o| o.polled_at.is_some()) {
                    notifier.ready(&line);
                    ready = true;
                }
                notifier.watchdog(Instant::now());
                metrics.update(&config, &view);
                let text = metrics.render();
                published.send_replace(Arc::new(Published {
                    view: Arc::new(view),
                    metrics: text.into(),
                    loop_at: Instant::now(),
                    polls_started: polls_started.clone(),
                }));
            }
            Some((node, answers)) = daemons.recv() => {
                record_daemon(&mut observations[node], answers);
                if answers {
                    // A peer that answers again is no longer "fenced": the
                    // operator's confirmation was for its silence.
                    let name = &config.nodes[node].name;
                    fenced_peers.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
                }
            }
            _ = ticker.tick() => {
                // Liveness only: republish the same view with a fresh time.
                let last = published.borrow().clone();
                published.send_replace(Arc::new(Published {
                    view: last.view.clone(),
                    metrics: last.metrics.clone(),
                    loop_at: Instant::now(),
                    polls_started: last.polls_started.clone(),
                }));
                notifier.watchdog(Instant::now());
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Folds one poll of a node into its observation: the debounce. A failed
/// poll counts one more failure in a row and keeps the last snapshot (the
/// view calls the node down only after `poll.failure_threshold` of them);
/// an answer resets the count.
fn record_poll(obs: &mut NodeObservation, outcome: Result<NodeSnapshot, String>, at: String) {
    match outcome {
        Ok(snapshot) => {
            obs.snapshot = Some(snapshot);
            obs.consecutive_failures = 0;
            obs.last_error = None;
        }
        Err(e) => {
            obs.consecutive_failures = obs.consecutive_failures.saturating_add(1);
            obs.last_error = Some(e);
        }
    }
    obs.polled_at = Some(at);
}

/// The same for the daemon beside the node: silent checks in a row.
fn record_daemon(obs: &mut NodeObservation, answers: bool) {
    let failures = obs.daemon_failures.unwrap_or(0);
    obs.daemon_failures = Some(if answers {
        0
    } else {
        failures.saturating_add(1)
    });
}

/// One line for `systemctl status`: health, the primary, the problems.
fn status_line(view: &ClusterView) -> String {
    let primary = view.primary.as_deref().unwrap_or("none");
    if view.healthy && view.problems.is_empty() {
        return format!("healthy, primary {primary}");
    }
    let codes: Vec<String> = view
        .problems
        .iter()
        .map(|p| match &p.node {
            Some(n) => format!("{}({n})", p.code),
            None => p.code.to_string(),
        })
        .collect();
    let health = if view.healthy { "healthy" } else { "unhealthy" };
    format!("{health}, primary {primary}: {}", codes.join(" "))
}

fn log_transition(node: &str, before: &NodeObservation, now: &Result<NodeSnapshot, String>) {
    match (before.consecutive_failures, now) {
        (0, Err(e)) => tracing::warn!(node, error = %e, "node stopped answering"),
        (n, Ok(_)) if n > 0 => tracing::info!(node, failed_polls = n, "node answers again"),
        _ => {}
    }
}

fn log_problem_changes(before: &ClusterView, after: &ClusterView) {
    let key = |p: &pgwarden_core::Problem| (p.code, p.node.clone());
    for p in &after.problems {
        if !before.problems.iter().any(|b| key(b) == key(p)) {
            tracing::warn!(code = %p.code, node = p.node.as_deref().unwrap_or(""), "{}", p.message);
        }
    }
    for p in &before.problems {
        if !after.problems.iter().any(|a| key(a) == key(p)) {
            tracing::info!(code = %p.code, node = p.node.as_deref().unwrap_or(""), "resolved");
        }
    }
    if before.healthy != after.healthy {
        tracing::info!(healthy = after.healthy, "cluster health changed");
    }
}

/// The primary at its last sight, kept in `state_dir/last_primary.json` so
/// that a daemon restarted after the primary died still knows what it had
/// (see `pgwarden_core::last_primary`). Written, fsync'd, when it says
/// something new; a later `seen_at` alone is kept in memory.
struct LastPrimaryRecord {
    path: std::path::PathBuf,
    /// The latest sight, kept in memory every poll.
    last: Option<LastPrimary>,
    /// What the file holds.
    on_disk: Option<LastPrimary>,
    /// How far the primary's LSN may move before the file is rewritten: a
    /// quarter of `max_lag_on_failover`, so a restarted daemon's record
    /// never hides more than that of a gap.
    lsn_step: u64,
}

impl LastPrimaryRecord {
    fn load(state_dir: &std::path::Path, max_lag_on_failover: u64) -> LastPrimaryRecord {
        let path = state_dir.join("last_primary.json");
        let last = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| tracing::error!("{} is unreadable, ignored: {e}", path.display()))
                .ok(),
            Err(_) => None,
        };
        LastPrimaryRecord {
            path,
            on_disk: last.clone(),
            last,
            lsn_step: max_lag_on_failover / 4,
        }
    }

    /// Records the primary of `view` if it answered now; returns the record.
    fn update(&mut self, view: &ClusterView) -> Option<LastPrimary> {
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        if let Some(seen) = LastPrimary::from_view(view, &now) {
            if seen.worth_persisting(self.on_disk.as_ref(), self.lsn_step) {
                let bytes = serde_json::to_vec(&seen).expect("a record serializes");
                match crate::effects::fsutil::write_atomic(&self.path, &bytes, 0o600) {
                    Ok(()) => self.on_disk = Some(seen.clone()),
                    Err(e) => tracing::error!(
                        "cannot record the primary's last state in {}: {e}",
                        self.path.display()
                    ),
                }
            }
            self.last = Some(seen);
        }
        self.last.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::fake::{FakeWorld, CONFIG};
    use pgwarden_core::view::Role;

    /// A node that stops answering is down only after
    /// `poll.failure_threshold` failed polls in a row, its last answer
    /// kept until then; one answer brings it back and resets the count.
    #[test]
    fn a_node_is_down_only_after_the_failure_threshold_and_back_at_one_answer() {
        let config = Config::parse_str("fake.yaml", CONFIG).unwrap();
        let threshold = config.poll.failure_threshold;
        assert!(threshold > 1, "the debounce needs a threshold above 1");
        let w = FakeWorld::new(config.clone());
        let answers = w.view();
        let snapshot = |i: usize| answers.nodes[i].snapshot.clone().unwrap();
        let mut obs = vec![NodeObservation::default(); 2];
        for (i, o) in obs.iter_mut().enumerate() {
            record_poll(o, Ok(snapshot(i)), "t0".into());
        }
        let view = |obs: &[NodeObservation]| ClusterView::build(&config, obs);
        assert_eq!(view(&obs).node("pg-a").unwrap().role, Role::Primary);
        for failed in 1..=threshold {
            record_poll(
                &mut obs[0],
                Err("connection refused".into()),
                format!("t{failed}"),
            );
            let v = view(&obs);
            let a = v.node("pg-a").unwrap();
            assert_eq!(obs[0].consecutive_failures, failed);
            assert_eq!(a.down, failed >= threshold, "after {failed} failed polls");
            assert!(obs[0].snapshot.is_some(), "the last answer is kept");
            assert_eq!(obs[0].last_error.as_deref(), Some("connection refused"));
            assert_eq!(
                obs[0].polled_at.as_deref(),
                Some(format!("t{failed}").as_str())
            );
        }
        record_poll(&mut obs[0], Ok(snapshot(0)), "t9".into());
        assert_eq!(
            (obs[0].consecutive_failures, obs[0].last_error.as_deref()),
            (0, None)
        );
        assert!(!view(&obs).node("pg-a").unwrap().down);

        let mut d = NodeObservation::default();
        assert_eq!(d.daemon_failures, None, "never asked is not silent");
        record_daemon(&mut d, false);
        record_daemon(&mut d, false);
        assert_eq!(d.daemon_failures, Some(2));
        record_daemon(&mut d, true);
        assert_eq!(d.daemon_failures, Some(0));
    }
}
