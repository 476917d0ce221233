//! The HTTP listener: hyper's HTTP/1 server driven by hand instead of
//! `axum::serve`, for the limits a daemon on an operations network needs
//! and `axum::serve` does not set:
//!
//! - a client must send its request head within [`HEADER_READ_TIMEOUT`]
//!   (axum::serve arms no timer, so hyper's header timeout never fired: a
//!   client stalled half-way through its head kept its connection forever,
//!   and enough of them exhausted the file descriptors until `/health`, which
//!   load balancers ask, stopped answering);
//! - at most [`MAX_CONNECTIONS`] connections at once; more wait in the
//!   listen backlog instead of failing with EMFILE elsewhere in the daemon;
//! - shutdown waits at most [`SHUTDOWN_GRACE`] for requests in flight, so a
//!   stalled client cannot hold SIGTERM up until systemd kills the daemon.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// How long a client may take to send a whole request head, from the
/// moment the server starts reading it (also how long an idle keep-alive
/// connection stays open).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once. A systemd service gets 1024 descriptors
/// unless raised (the shipped unit raises it); the poll loop, the journal
/// and the commands need some too.
pub const MAX_CONNECTIONS: usize = 512;

/// How long shutdown waits for requests in flight before it drops them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `stop` flips, then drains for at
/// most [`SHUTDOWN_GRACE`]. Each request carries the client's address as
/// axum's `ConnectInfo<SocketAddr>` (the audit log records it).
pub async fn serve<L>(
    mut listener: L,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = stop.wait_for(|stop| *stop) => break,
        };
        // axum's Listener retries failed accepts (EMFILE included) itself.
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let service = router.clone().map_request(
            move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                req
            },
        );
        let connection = graceful
            .watch(http.serve_connection(TokioIo::new(io), TowerToHyperService::new(service)));
        tokio::spawn(async move {
            // A client that hangs up, times out or speaks garbage ends its
            // own connection; hyper already answered what could be answered.
            if let Err(e) = connection.await {
                tracing::debug!(%remote, "connection ended: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight {}s after shutdown began: dropped",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    Ok(())
}
