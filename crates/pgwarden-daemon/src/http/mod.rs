//! The HTTP API: metrics, health checks for load balancers, and status.
//!
//! Every handler reads the latest [`Published`] poll result and answers from
//! memory; none of them talks to PostgreSQL, so a scrape or a health check is
//! fast and cannot pile up behind a hung node.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pgwarden_core::routes;
use pgwarden_core::view::{ClusterView, NodeView};
use pgwarden_core::Config;
use serde_json::json;
use tokio::sync::watch;

use crate::poller::Published;

pub mod api;
pub mod page;
pub mod server;

pub(crate) struct AppState {
    pub config: Arc<Config>,
    pub published: watch::Receiver<Arc<Published>>,
    pub ops: Arc<crate::ops::Operations>,
    pub audit: Arc<crate::audit::AuditLog>,
    /// The API token mutating requests must present.
    pub token: Option<pgwarden_core::Secret>,
    /// Masks the token and the configured passwords wherever a request's
    /// text is kept or echoed (built once: the secrets are read at start).
    pub secrets: crate::audit::Redactor,
}

impl AppState {
    fn latest(&self) -> Arc<Published> {
        self.published.borrow().clone()
    }
}

type Shared = State<Arc<AppState>>;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/health", get(health))
        // The load-balancer routes (pgwarden's and Patroni's names). OPTIONS
        // answers like GET because HAProxy's `option httpchk` without a
        // method sends OPTIONS.
        .route("/primary", get(primary).options(primary))
        .route("/replica", get(replica).options(replica))
        .route("/read-write", get(read_write).options(read_write))
        .route("/read-only", get(read_only).options(read_only))
        .route("/sync", get(sync_standby).options(sync_standby))
        .route("/async", get(async_standby).options(async_standby))
        .route("/v1/status", get(status))
        .merge(crate::http::api::routes(state.clone()))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::http::api::MAX_BODY,
        ))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

/// `{"error": code, "message": sentence}` with a status, the shape of every error.
pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/api.md",
    )
}

pub(crate) async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method (the Allow header lists those it takes); see docs/api.md",
    )
}

async fn metrics(State(s): Shared) -> Response {
    let body = s.latest().metrics.clone();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn livez(State(s): Shared) -> Response {
    let p = s.latest();
    let age = Instant::now().saturating_duration_since(p.loop_at);
    let limit = s.config.poll.interval * 3;
    let body = json!({"alive": age <= limit, "last_loop_seconds_ago": age.as_secs_f64()});
    let code = if age <= limit {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

fn ok_or_unavailable(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn node_summary(n: &NodeView) -> serde_json::Value {
    json!({
        "name": n.name,
        "role": n.role,
        "reachable": n.reachable,
        "down": n.down,
        "timeline": n.snapshot.as_ref().map(|s| s.timeline),
    })
}

async fn health(State(s): Shared) -> Response {
    let view = s.latest().view.clone();
    let body = json!({
        "healthy": view.healthy,
        "cluster": view.cluster,
        "primary": view.primary,
        "problems": view.problems,
        "nodes": view.nodes.iter().map(node_summary).collect::<Vec<_>>(),
    });
    (ok_or_unavailable(view.healthy), Json(body)).into_response()
}

fn local<'v>(s: &AppState, view: &'v ClusterView) -> &'v NodeView {
    view.node(&s.config.local_node)
        .expect("the view has every configured node")
}

/// 200 iff this daemon's node is the primary clients should write to: a
/// reachable primary, and not one left behind on an older timeline.
async fn primary(State(s): Shared) -> Response {
    writable_answer(&s)
}

/// The answer of `/primary` and `/read-write`: one decision, one body.
fn writable_answer(s: &AppState) -> Response {
    let view = s.latest().view.clone();
    let me = local(s, &view);
    let writable = routes::is_writable_primary(&view, &me.name);
    let mut body = node_summary(me);
    body["writable"] = json!(writable);
    if let Some(why) = routes::isolation(&view, &me.name) {
        body["reason"] = json!(why);
    }
    (ok_or_unavailable(writable), Json(body)).into_response()
}

/// 200 iff this daemon's node is a standby whose WAL receiver streams, and
/// with `?lag=SIZE` also at most that far behind in replay.
async fn replica(State(s): Shared, RawQuery(q): RawQuery) -> Response {
    let params = match routes::parse_params(q.as_deref(), true) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let view = s.latest().view.clone();
    let me = local(&s, &view);
    let streaming = routes::is_streaming_standby(me);
    let ok = routes::is_replica_within(&view, &me.name, params.max_lag);
    let mut body = node_summary(me);
    body["streaming"] = json!(streaming);
    add_lag(&mut body, &view, &me.name, params);
    (ok_or_unavailable(ok), Json(body)).into_response()
}

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// The lag fields of a standby route's body: what the decision was made on.
fn add_lag(body: &mut serde_json::Value, view: &ClusterView, me: &str, p: routes::RouteParams) {
    let lag = routes::standby_lag(view, me);
    body["lag_bytes"] = json!(lag.map(|l| l.bytes));
    body["lag_source"] = json!(lag.map(|l| l.source));
    if let Some(max) = p.max_lag {
        body["max_lag_bytes"] = json!(max);
    }
}

/// A route that takes no parameters: 400 for any, else the answer.
fn no_params(q: Option<String>, answer: impl FnOnce() -> Response) -> Response {
    match routes::parse_params(q.as_deref(), false) {
        Ok(_) => answer(),
        Err(e) => bad_request(e),
    }
}

/// Patroni's `/read-write`: exactly `/primary` (the same decision function,
/// so whatever takes writes away from a node does so on both routes).
async fn read_write(State(s): Shared, RawQuery(q): RawQuery) -> Response {
    no_params(q, || writable_answer(&s))
}

/// Patroni's `/read-only`: the writable primary, or a streaming standby.
async fn read_only(State(s): Shared, RawQuery(q): RawQuery) -> Response {
    no_params(q, || {
        let view = s.latest().view.clone();
        let me = local(&s, &view);
        let readable = routes::is_readable(&view, &me.name);
        let mut body = node_summary(me);
        body["readable"] = json!(readable);
        (ok_or_unavailable(readable), Json(body)).into_response()
    })
}

/// Patroni's `/sync`: a streaming standby the primary lists as `sync`.
async fn sync_standby(State(s): Shared, RawQuery(q): RawQuery) -> Response {
    no_params(q, || {
        let view = s.latest().view.clone();
        let me = local(&s, &view);
        let ok = routes::is_sync_standby(&view, &me.name);
        let mut body = node_summary(me);
        body["sync_state"] = json!(routes::sync_state(&view, &me.name));
        body["sync"] = json!(ok);
        (ok_or_unavailable(ok), Json(body)).into_response()
    })
}

/// Patroni's `/async`: a streaming standby that is not `/sync`, within
/// `?lag=SIZE` when given.
async fn async_standby(State(s): Shared, RawQuery(q): RawQuery) -> Response {
    let params = match routes::parse_params(q.as_deref(), true) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let view = s.latest().view.clone();
    let me = local(&s, &view);
    let ok = routes::is_async_standby(&view, &me.name, params.max_lag);
    let mut body = node_summary(me);
    body["sync_state"] = json!(routes::sync_state(&view, &me.name));
    body["async"] = json!(ok);
    add_lag(&mut body, &view, &me.name, params);
    (ok_or_unavailable(ok), Json(body)).into_response()
}

/// The status page for a browser (see [`crate::http::page`]).
async fn page(State(s): Shared) -> Response {
    let view = s.latest().view.clone();
    // The journal and the audit log are files: read them off the async
    // threads. The current operation is in memory; the journal is read only
    // when there is none, for the newest finished one.
    let (ops, audit) = (s.ops.clone(), s.audit.clone());
    let read = tokio::task::spawn_blocking(move || {
        let op = ops.current().or_else(|| ops.list().into_iter().next());
        let entries = audit
            .tail(crate::http::page::AUDIT_ENTRIES)
            .map_err(|e| e.to_string());
        (op, entries)
    })
    .await;
    let (op, entries) = match read {
        Ok(r) => r,
        Err(e) => (None, Err(format!("the reader failed: {e}"))),
    };
    let generated_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let html = crate::http::page::render(&crate::http::page::Page {
        config: &s.config,
        view: &view,
        operation: op.as_ref(),
        audit: entries.as_deref().map_err(Clone::clone),
        generated_at: &generated_at,
    });
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // The page is self-contained: inline CSS, no script, nothing to load.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
        .into_response()
}

async fn status(State(s): Shared) -> Response {
    let view = s.latest().view.clone();
    Json(json!({
        "cluster": view.cluster,
        "local_node": s.config.local_node,
        "generated_at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "healthy": view.healthy,
        "primary": view.primary,
        "problems": view.problems,
        "nodes": view.nodes,
        "operation": s.ops.current(),
        // The primary at its last sight: for a down primary, when it was
        // last seen and what it had then.
        "last_primary": view.last_primary,
    }))
    .into_response()
}
