//! The poll loop: one task per node probes it every `poll.interval`; one
//! builder task folds their results into a new [`ClusterView`], updates the
//! metrics and publishes both.
//!
//! A task per node means a slow or dead node (each probe bounded by
//! `poll.timeout`) never delays the other node's poll. The builder also ticks
//! on its own, so `/livez` proves the loop runs even when every probe hangs.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pgwarden_core::view::{ClusterView, NodeObservation};
use pgwarden_core::{Config, NodeSnapshot};
use pgwarden_pg::{Prober, Target};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::Instrument;

use crate::load::Secrets;
use crate::metrics::Metrics;
use crate::Published;

struct PollResult {
    node: usize,
    outcome: Result<NodeSnapshot, String>,
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
    /// Stops this node's PostgreSQL when it turns out to be a stale primary.
    pub stale_guard: crate::stale::StaleGuard,
    /// Tells systemd when the daemon is ready and that its loop still runs.
    pub notifier: Arc<crate::notify::Notifier>,
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
        stale_guard,
        notifier,
        stop,
    } = wiring;
    let (tx, rx) = mpsc::channel(config.nodes.len() * 2);
    let mut pollers = Vec::new();
    for (i, node) in config.nodes.iter().enumerate() {
        let target = Target {
            host: node.host.clone(),
            port: node.port,
            user: config.monitor.user.clone(),
            password: secrets.monitor_password.clone(),
            dbname: config.monitor.dbname.clone(),
        };
        let prober = Prober::new(target, config.poll.timeout);
        pollers.push(tokio::spawn(poll_node(
            i,
            prober,
            config.poll.interval,
            tx.clone(),
            stop.clone(),
        )));
    }
    drop(tx);
    tokio::spawn(
        async move {
            build_views(
                ViewLoop {
                    config,
                    metrics,
                    published,
                    operation,
                    stale_guard,
                    notifier,
                    stop,
                },
                rx,
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
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    // After a slow poll, wait a full interval instead of bursting to catch up.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let started = Instant::now();
        let outcome = prober.probe().await.map_err(|e| e.to_string());
        let result = PollResult {
            node,
            outcome,
            took: started.elapsed(),
        };
        if results.send(result).await.is_err() {
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
    stale_guard: crate::stale::StaleGuard,
    notifier: Arc<crate::notify::Notifier>,
    stop: watch::Receiver<bool>,
}

async fn build_views(wiring: ViewLoop, mut results: mpsc::Receiver<PollResult>) {
    let ViewLoop {
        config,
        metrics,
        published,
        operation,
        stale_guard,
        notifier,
        mut stop,
    } = wiring;
    let mut ready = false;
    let mut observations = vec![NodeObservation::default(); config.nodes.len()];
    let mut ticker = tokio::time::interval(config.poll.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = results.recv() => {
                let Some(result) = result else { return };
                let name = &config.nodes[result.node].name;
                metrics.observe_poll(name, result.took, result.outcome.is_err());
                let obs = &mut observations[result.node];
                log_transition(name, obs, &result.outcome);
                match result.outcome {
                    Ok(snapshot) => {
                        obs.snapshot = Some(snapshot);
                        obs.consecutive_failures = 0;
                        obs.last_error = None;
                    }
                    Err(e) => {
                        // The last snapshot stays: the view decides how long
                        // it counts (until the node is down).
                        obs.consecutive_failures = obs.consecutive_failures.saturating_add(1);
                        obs.last_error = Some(e);
                    }
                }
                obs.polled_at = Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
                // An operation stopped half-way is a cluster problem too.
                let view = ClusterView::build(&config, &observations)
                    .with_operation(operation.borrow().as_ref());
                log_problem_changes(&published.borrow().view, &view);
                stale_guard.check(&view);
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
                }));
            }
            _ = ticker.tick() => {
                // Liveness only: republish the same view with a fresh time.
                let last = published.borrow().clone();
                published.send_replace(Arc::new(Published {
                    view: last.view.clone(),
                    metrics: last.metrics.clone(),
                    loop_at: Instant::now(),
                }));
                notifier.watchdog(Instant::now());
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
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
