//! The pgwarden runtime: a poll loop per node feeding one cluster view, the
//! metrics computed from it, and the HTTP listener that serves both.
//!
//! [`run`] is the whole daemon; the binary only parses arguments, loads the
//! config and hands in a shutdown future (SIGTERM / SIGINT). Every task
//! watches one shutdown signal and ends when it flips.

mod audit;
mod effects;
mod http;
mod load;
mod metrics;
mod notify;
mod ops;
mod poller;
mod stale;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use pgwarden_core::view::ClusterView;
use tokio::sync::watch;
use tracing::Instrument;

use poller::{FencedPeers, Published};

pub use effects::appconfig::shadows;
pub use load::{load, Loaded, Secrets};

/// `pg_ctl status` of this daemon's own node: running, not running, or
/// unknown and why (what `check-config` reports).
pub async fn local_pg_status(config: &pgwarden_core::Config) -> pgwarden_core::Answer {
    effects::node::pg_status(config.local()).await
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {addr}: {source} (is another pgwarden or program using that port? change `listen`)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Journal(#[from] ops::journal::JournalError),
    #[error("cannot open the audit log in {dir}: {source} (check state_dir)")]
    Audit {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Runs the daemon until `shutdown` completes: binds `listen`, polls every
/// node, serves HTTP. Returns after every task has stopped.
pub async fn run(
    loaded: Loaded,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    // Every log line says which daemon wrote it (the demo runs two in one process).
    let span = tracing::info_span!("daemon", node = %loaded.config.local_node);
    run_daemon(loaded, shutdown).instrument(span).await
}

async fn run_daemon(
    loaded: Loaded,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    for note in &loaded.notes {
        tracing::info!("{note}");
    }
    let config = Arc::new(loaded.config);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(DaemonError::Serve)?;
    tracing::info!(%addr, cluster = %config.cluster, local_node = %config.local_node, "pgwarden listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = Arc::new(metrics::Metrics::new(&config));
    let initial = ClusterView::build(&config, &[]);
    metrics.update(&config, &initial);
    let (published_tx, published_rx) = watch::channel(Arc::new(Published {
        view: Arc::new(initial),
        metrics: metrics.render().into(),
        loop_at: Instant::now(),
        polls_started: vec![None; config.nodes.len()],
    }));
    // Rung by the operation manager after each step: poll every node now.
    let poll_now = Arc::new(tokio::sync::Notify::new());
    let fenced_peers: FencedPeers = Default::default();

    let (op_tx, op_rx) = watch::channel(None);
    let effects: Arc<dyn effects::Effects> = Arc::new(effects::RealEffects::new(
        config.clone(),
        loaded.secrets.clone(),
    ));
    let (ops, corrupt) = ops::Operations::open(
        config.clone(),
        effects.clone(),
        published_rx.clone(),
        metrics.clone(),
        op_tx,
        poll_now.clone(),
        fenced_peers.clone(),
    )?;
    for e in corrupt {
        tracing::error!("{e}");
    }
    let lease_keeper = tokio::spawn(ops.clone().keep_lease(stop_rx.clone()).in_current_span());
    let audit = Arc::new(audit::AuditLog::open(&config.state_dir).map_err(|source| {
        DaemonError::Audit {
            dir: config.state_dir.clone(),
            source,
        }
    })?);

    let notifier = Arc::new(notify::Notifier::from_env());
    if let Some(every) = notifier.watchdog_every() {
        if config.poll.interval >= every {
            tracing::warn!(poll_interval = ?config.poll.interval, "WatchdogSec should be more than twice poll.interval, or systemd may restart a healthy pgwarden");
        }
    }
    let (guard_tx, guard_rx) = watch::channel(None);
    let stale_guard = tokio::spawn(
        stale::run(
            config.clone(),
            effects.clone(),
            audit.clone(),
            published_rx.clone(),
            guard_tx,
            stop_rx.clone(),
        )
        .in_current_span(),
    );
    let poller = poller::spawn(
        tracing::Span::current(),
        poller::Wiring {
            config: config.clone(),
            secrets: loaded.secrets.clone(),
            metrics: metrics.clone(),
            published: published_tx,
            operation: op_rx,
            guard_failure: guard_rx,
            notifier: notifier.clone(),
            poll_now,
            effects: effects.clone(),
            fenced_peers,
            stop: stop_rx.clone(),
        },
    );

    let state = Arc::new(http::AppState {
        config: config.clone(),
        published: published_rx,
        ops,
        audit,
        token: loaded.secrets.api_token.clone(),
        secrets: audit::Redactor::new(
            [
                &loaded.secrets.api_token,
                &loaded.secrets.monitor_password,
                &loaded.secrets.replication_password,
                &loaded.secrets.pgbouncer_password,
            ]
            .into_iter()
            .flatten()
            .map(|s| s.expose()),
        ),
    });
    let router = http::router(state);
    let server = match loaded.tls {
        None => tokio::spawn(http::server::serve(listener, router, stop_rx.clone())),
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls).map_err(DaemonError::Serve)?;
            tracing::info!("serving HTTPS only (tls)");
            tokio::spawn(http::server::serve(listener, router, stop_rx.clone()))
        }
    };

    shutdown.await;
    tracing::info!("shutting down");
    notifier.stopping();
    let _ = stop_tx.send(true);
    let served = server.await;
    let _ = poller.await;
    let _ = stale_guard.await;
    let _ = lease_keeper.await;
    tracing::info!("stopped");
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(DaemonError::Serve(e)),
        Err(join) => Err(DaemonError::Serve(std::io::Error::other(join))),
    }
}
