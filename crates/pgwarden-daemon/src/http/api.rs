//! The mutating API (failover, switchover, resume, abort, node actions, the
//! peer lock) and the operation journal and audit log reads.
//!
//! Every mutating route passes through [`guard`]: a Bearer token is required
//! (401 without, 403 wrong, compared in constant time), the body is capped
//! in size and in time, a request that carries a secret outside its
//! Authorization header is refused, and the request is appended to the audit
//! log (secrets masked), with its result, before the answer leaves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use pgwarden_core::operation::{Operation, OperationKind, OperationState, Request as OpRequest};
use serde::Deserialize;
use serde_json::json;

use crate::audit::{caller_id, token_matches, AuditEntry, Redactor};
use crate::http::{error, AppState};
use crate::ops::{now, OpError};

/// Request bodies are small JSON documents; anything larger is refused.
pub const MAX_BODY: usize = 64 * 1024;

/// How long a client may take to send a body once its headers are in: a
/// client that announces a body and stalls must not hold a task forever.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// An audit entry stays small whatever the client sends (anyone can send a
/// request, authenticated or not, and each one is written down): the
/// endpoint and the result are cut at this many bytes...
const AUDIT_TEXT_MAX: usize = 1024;
/// ...a JSON body is kept whole up to this size...
const AUDIT_BODY_MAX: usize = 4096;
/// ...and anything else as its first bytes, as text.
const AUDIT_PREVIEW: usize = 512;

type Shared = State<Arc<AppState>>;

pub(crate) fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let mutating = Router::new()
        .route("/v1/failover", post(failover))
        .route("/v1/switchover", post(switchover))
        .route("/v1/operations/{id}/resume", post(resume))
        .route("/v1/operations/{id}/abort", post(abort))
        .route("/v1/node/{action}", post(node_action))
        .route("/v1/node/application/{action}", post(application_action))
        .route("/v1/node/follow/{primary}", post(node_follow))
        .route("/v1/node/pgbouncer/{action}", post(pgbouncer_action))
        .route("/v1/sync", put(sync))
        .route("/v1/rejoin", post(rejoin))
        .route("/v1/internal/lock", post(lock))
        .route("/v1/internal/unlock", post(unlock))
        // Inside the guard: a wrong method is authenticated and audited too.
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state, guard));
    Router::new()
        .route("/v1/operations", get(list_operations))
        .route("/v1/operations/{id}", get(get_operation))
        .route("/v1/audit", get(audit_tail))
        .merge(mutating)
}

fn op_error(e: OpError) -> Response {
    match e {
        OpError::NotFound(m) => error(StatusCode::NOT_FOUND, "not_found", m),
        OpError::Conflict(m) => error(StatusCode::CONFLICT, "conflict", m),
        OpError::Preflight { message, checks } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "preflight_failed", "message": message, "checks": checks})),
        )
            .into_response(),
        OpError::Unavailable(m) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
        OpError::Starting(m) => error(StatusCode::CONFLICT, "starting", m),
        OpError::Internal(m) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
    }
}

/// Checks the token, caps the body, runs the handler, audits the outcome.
async fn guard(
    State(s): Shared,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    // In its own task: a client that hangs up (say during ?wait=true) drops
    // this future, but the request still runs to its end and is audited.
    match tokio::spawn(guarded(s, remote, req, next)).await {
        Ok(r) => r,
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the request handler failed: {e}"),
        ),
    }
}

async fn guarded(s: Arc<AppState>, remote: SocketAddr, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let endpoint = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let method = parts.method.to_string();
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(str::to_owned);
    let caller = presented
        .as_deref()
        .map(caller_id)
        .unwrap_or_else(|| "anonymous".into());
    let secrets = &s.secrets;
    let (bytes, refused) = read_body(&parts.headers, body).await;
    let response = match (refused, presented.as_deref(), &s.token) {
        (Some(r), _, _) => r,
        (None, None, _) => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <token>`; the token is in the file named by api_token_file",
        ),
        (None, Some(t), Some(expected)) if token_matches(t, expected.expose()) => {
            // No request needs a secret outside the Authorization header;
            // one that carries it (pasted by mistake) is not processed, so
            // no answer, journal entry or log line can echo it.
            if carries_secret(secrets, &endpoint, &bytes) {
                bad_request(
                    "the request carries the API token or a configured password outside the Authorization header; it was not processed".into(),
                )
            } else {
                next.run(Request::from_parts(parts, Body::from(bytes.clone())))
                    .await
            }
        }
        (None, Some(_), _) => error(StatusCode::FORBIDDEN, "forbidden", "the token is not the one in api_token_file"),
    };
    let (rparts, rbody) = response.into_parts();
    let rbytes = axum::body::to_bytes(rbody, usize::MAX)
        .await
        .unwrap_or_default();
    let answer: serde_json::Value =
        serde_json::from_slice(&rbytes).unwrap_or(serde_json::Value::Null);
    let result = answer["error"]
        .as_str()
        .map(|e| format!("{e}: {}", answer["message"].as_str().unwrap_or("")))
        .or_else(|| {
            answer["id"].as_str().map(|id| {
                let mut r = format!("operation {id} {}", answer["state"].as_str().unwrap_or(""));
                // What a forced failover may have cost stays in the audit log.
                if let Some(lost) = answer["facts"]["bytes_possibly_lost"].as_str() {
                    r.push_str(&format!("; bytes_possibly_lost={lost}"));
                }
                r
            })
        })
        // An answer without a JSON body (the router's 405, an extractor's
        // rejection) is not an "ok" unless its status says so.
        .unwrap_or_else(|| match rparts.status {
            st if st.is_success() => "ok".into(),
            st => st.canonical_reason().unwrap_or("refused").to_owned(),
        });
    let entry = AuditEntry {
        time: now(),
        remote: remote.to_string(),
        caller,
        method,
        endpoint: truncate(secrets.mask(&endpoint), AUDIT_TEXT_MAX),
        body: audit_body(secrets, &bytes),
        status: rparts.status.as_u16(),
        result: truncate(secrets.mask(&result), AUDIT_TEXT_MAX),
    };
    if let Err(e) = s.audit.append(&entry) {
        tracing::error!("cannot append to the audit log: {e}");
    }
    Response::from_parts(rparts, Body::from(rbytes))
}

/// The body, or the answer that refuses it: over [`MAX_BODY`] (413), not
/// all there within [`BODY_TIMEOUT`] (408), cut off by the client (400).
async fn read_body(headers: &header::HeaderMap, body: Body) -> (Bytes, Option<Response>) {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request bodies are limited to {MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return (Bytes::new(), Some(too_large()));
    }
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => (b, None),
        Err(_) => (
            Bytes::new(),
            Some(error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the request body did not arrive within {}s",
                    BODY_TIMEOUT.as_secs()
                ),
            )),
        ),
        // Without a Content-Length (chunked) the limit is found while
        // reading; http-body-util's LengthLimitError says so.
        Ok(Err(e)) if declared.is_none() && e.to_string().contains("length limit") => {
            (Bytes::new(), Some(too_large()))
        }
        Ok(Err(e)) => (
            Bytes::new(),
            Some(bad_request(format!(
                "the request body could not be read (the client sent less than it announced?): {e}"
            ))),
        ),
    }
}

/// Whether the path, the query or the body of a request holds a secret.
fn carries_secret(secrets: &Redactor, endpoint: &str, body: &[u8]) -> bool {
    secrets.found_in(endpoint.as_bytes())
        || secrets.found_in(body)
        || serde_json::from_slice::<serde_json::Value>(body)
            .is_ok_and(|v| secrets.found_in_json(&v))
}

/// What the audit log keeps of a body: the JSON when it is small JSON, else
/// the start of it as text; secrets masked either way.
fn audit_body(secrets: &Redactor, bytes: &[u8]) -> serde_json::Value {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let masked = secrets.redact_json(v);
        // A string that still hides a secret (percent-encoded) is kept as
        // masked text below instead.
        if bytes.len() <= AUDIT_BODY_MAX && !secrets.found_in_json(&masked) {
            return masked;
        }
    }
    // Masked before it is cut, so no part of a secret stays.
    let text = secrets.mask(&String::from_utf8_lossy(bytes));
    let mut kept = truncate(text, AUDIT_PREVIEW);
    if bytes.len() > AUDIT_PREVIEW {
        kept.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    serde_json::Value::String(kept)
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    text
}

/// Internal: the daemon running a failover or switchover asks this one to
/// point its node (a `role: replica`) at the new primary.
async fn node_follow(State(s): Shared, Path(primary): Path<String>) -> Response {
    match crate::effects::follow_local(&s.config, &**s.ops.effects(), &primary).await {
        Ok(message) => {
            Json(json!({"node": s.config.local_node, "message": message})).into_response()
        }
        Err(m) => error(StatusCode::SERVICE_UNAVAILABLE, "node_follow_failed", m),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OperationBody {
    target: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    force: bool,
    /// Hosts whose daemon does not answer that the operator confirms are
    /// fenced (see DESIGN.md "Two hosts").
    #[serde(default)]
    fenced_hosts: Vec<String>,
}

/// A 400 answer when `hosts` names something that is not a node.
fn unknown_hosts(s: &AppState, hosts: &[String]) -> Option<Response> {
    let bad: Vec<&str> = hosts
        .iter()
        .filter(|h| s.config.node(h).is_none())
        .map(String::as_str)
        .collect();
    (!bad.is_empty()).then(|| {
        let known: Vec<&str> = s.config.nodes.iter().map(|n| n.name.as_str()).collect();
        bad_request(format!(
            "`fenced_hosts` names {}, not a node of this cluster ({}): name hosts by their node name",
            bad.join(", "),
            known.join(", ")
        ))
    })
}

#[derive(Deserialize, Default)]
struct WaitParam {
    #[serde(default)]
    wait: bool,
}

/// The body as `T`, or the message of a 400 answer.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("the request body is not valid: {e}"))
}

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

async fn failover(s: Shared, q: Query<WaitParam>, body: Bytes) -> Response {
    start(s, q, body, OperationKind::Failover).await
}

async fn switchover(s: Shared, q: Query<WaitParam>, body: Bytes) -> Response {
    start(s, q, body, OperationKind::Switchover).await
}

async fn start(
    State(s): Shared,
    Query(q): Query<WaitParam>,
    body: Bytes,
    kind: OperationKind,
) -> Response {
    let b: OperationBody = match parse(&body) {
        Ok(b) => b,
        Err(m) => return bad_request(m),
    };
    if b.target.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`target` must name the node to promote",
        );
    }
    if let Some(r) = unknown_hosts(&s, &b.fenced_hosts) {
        return r;
    }
    let request = OpRequest {
        target: b.target,
        reason: b.reason,
        force: b.force,
        fenced_hosts: b.fenced_hosts,
    };
    if b.dry_run {
        return Json(s.ops.plan(kind, &request).await).into_response();
    }
    match s.ops.start(kind, request).await {
        Ok(op) => answer(&s, op, q.wait).await,
        Err(e) => op_error(e),
    }
}

/// 202 with the operation, or with `wait`, the finished operation: 200 when
/// it succeeded, 424 when it stopped at a failed step.
async fn answer(s: &AppState, op: Operation, wait: bool) -> Response {
    if !wait {
        return (StatusCode::ACCEPTED, Json(op)).into_response();
    }
    match s.ops.wait(&op.id).await {
        Some(done) if done.state == OperationState::Succeeded => {
            (StatusCode::OK, Json(done)).into_response()
        }
        Some(done) => (StatusCode::FAILED_DEPENDENCY, Json(done)).into_response(),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the operation vanished while waiting",
        ),
    }
}

async fn resume(State(s): Shared, Path(id): Path<String>, Query(q): Query<WaitParam>) -> Response {
    match s.ops.resume(&id).await {
        Ok(op) => answer(&s, op, q.wait).await,
        Err(e) => op_error(e),
    }
}

async fn abort(State(s): Shared, Path(id): Path<String>) -> Response {
    match s.ops.abort(&id).await {
        Ok(op) => Json(op).into_response(),
        Err(e) => op_error(e),
    }
}

async fn list_operations(State(s): Shared) -> Response {
    Json(json!({"operations": s.ops.list()})).into_response()
}

async fn get_operation(
    State(s): Shared,
    Path(id): Path<String>,
    Query(l): Query<Local>,
) -> Response {
    // `?local=true`: this journal only (what a peer asks, so two daemons
    // never bounce a lookup between them).
    let found = if l.local {
        s.ops.get(&id).and_then(|op| serde_json::to_value(op).ok())
    } else {
        s.ops.find(&id).await
    };
    match found {
        Some(op) => Json(op).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            // Not echoed as it came: a token pasted here by mistake.
            format!("no operation {}", s.secrets.mask(&id)),
        ),
    }
}

#[derive(Deserialize, Default)]
struct Local {
    #[serde(default)]
    local: bool,
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn audit_tail(State(s): Shared, Query(l): Query<Limit>) -> Response {
    let limit = l.limit.unwrap_or(50).min(10_000);
    match s.audit.tail(limit) {
        Ok(entries) => Json(json!({"entries": entries})).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot read the audit log: {e}"),
        ),
    }
}

/// Internal: another daemon asks this one to stop or start its PostgreSQL.
async fn node_action(State(s): Shared, Path(action): Path<String>) -> Response {
    // `status` stops nothing: a failover asks it while the fence runs.
    if action == "status" {
        let a = s.ops.effects().local_node_stopped().await;
        return Json(json!({"node": s.config.local_node, "stopped": crate::effects::app::WireAnswer::from(&a)}))
            .into_response();
    }
    if action != "stop" && action != "start" {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "node actions are stop, start and status",
        );
    }
    match crate::effects::local_node_action(&s.config, &action).await {
        Ok(state) => Json(state).into_response(),
        Err(m) => error(StatusCode::SERVICE_UNAVAILABLE, "node_action_failed", m),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppConfigBody {
    operation: String,
    host: String,
    port: u16,
}

/// Internal: another daemon asks about, or acts on, the application
/// instance on THIS host (`status`, `health`, `stop`, `start`, `disable`,
/// `enable`, `config`). Commands run here only.
async fn application_action(State(s): Shared, Path(action): Path<String>, body: Bytes) -> Response {
    let Some(app) = s.config.application.as_ref() else {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            "no application is configured on this host's daemon",
        );
    };
    let host = s.config.local_node.clone();
    match action.as_str() {
        "status" => {
            let a = crate::effects::app::status(app).await;
            Json(json!({"host": host, "running": crate::effects::app::WireAnswer::from(&a)}))
                .into_response()
        }
        "health" => {
            let a = s.ops.app_healthy_here().await;
            Json(json!({"host": host, "healthy": crate::effects::app::WireAnswer::from(&a)}))
                .into_response()
        }
        "config" => {
            let b: AppConfigBody = match parse(&body) {
                Ok(b) => b,
                Err(m) => return bad_request(m),
            };
            match s.ops.switch_config_here(&b.operation, &b.host, b.port) {
                Ok(changed) => Json(json!({"host": host, "changed": changed})).into_response(),
                Err(m) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application_config_failed",
                    m,
                ),
            }
        }
        other => match crate::effects::app::AppCommand::parse(other) {
            None => error(
                StatusCode::NOT_FOUND,
                "not_found",
                "application actions are status, health, stop, start, disable, enable and config",
            ),
            Some(which) => match crate::effects::app::run(app, which).await {
                Ok(m) => Json(json!({"host": host, "done": true, "message": m})).into_response(),
                Err(m) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application_action_failed",
                    m,
                ),
            },
        },
    }
}

/// Internal: another daemon asks about, or acts on, the pgbouncer on THIS
/// host (`status`, `pause`, `resume`, `repoint`). The body is the action
/// (`{"action": "repoint", "operation": ..., "host": ..., "port": ...}`);
/// `status`, `pause` and `resume` need none.
async fn pgbouncer_action(State(s): Shared, Path(action): Path<String>, body: Bytes) -> Response {
    use crate::effects::pgbouncer::Action;
    if s.config.pgbouncer().is_none() {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            "no proxy.pgbouncer is configured on this host's daemon",
        );
    }
    let parsed = if body.iter().all(u8::is_ascii_whitespace) {
        parse::<Action>(json!({"action": action}).to_string().as_bytes())
    } else {
        parse::<Action>(&body)
    };
    let what = match parsed {
        Ok(a) if a.name() == action => a,
        Ok(a) => {
            return bad_request(format!(
                "the body asks for {} on the route of {action}",
                a.name()
            ))
        }
        Err(_) if !["status", "pause", "resume", "repoint"].contains(&action.as_str()) => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "pgbouncer actions are status, pause, resume and repoint",
            )
        }
        Err(m) => return bad_request(m),
    };
    match s.ops.pgbouncer_here(&what).await {
        Ok(report) => Json(report).into_response(),
        Err(m) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "pgbouncer_action_failed",
            m,
        ),
    }
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct RejoinBody {
    node: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    force: bool,
    /// auto (pg_rewind when possible, else pg_basebackup), rewind or basebackup.
    #[serde(default)]
    method: Option<String>,
    /// Keep the old data directory after a pg_basebackup (default: removed
    /// once the new standby is synchronous).
    #[serde(default)]
    keep_old_data: bool,
}

/// `POST /v1/rejoin`: run by the node's own daemon; others forward it.
async fn rejoin(State(s): Shared, Query(q): Query<WaitParam>, body: Bytes) -> Response {
    let b: RejoinBody = match parse(&body) {
        Ok(b) => b,
        Err(m) => return bad_request(m),
    };
    if s.config.node(&b.node).is_none() {
        return bad_request(format!("`node` {} is not a node of this cluster", b.node));
    }
    let method = b.method.clone().unwrap_or_else(|| "auto".into());
    if !matches!(method.as_str(), "auto" | "rewind" | "basebackup") {
        return bad_request(format!(
            "`method` is auto, rewind or basebackup, not `{method}`"
        ));
    }
    if b.node != s.config.local_node {
        let query = if q.wait { "?wait=true" } else { "" };
        let forwarded = serde_json::to_value(&b).expect("the body serializes");
        return match s.ops.forward_rejoin(&b.node, query, &forwarded).await {
            Ok((status, v)) => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                Json(v),
            )
                .into_response(),
            Err(e) => op_error(e),
        };
    }
    let view = s.published.borrow().view.clone();
    if view.writable_primary().is_some_and(|p| p.name == b.node) {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            format!("{} is the current primary: a rejoin turns a former primary into a standby; switch over first", b.node),
        );
    }
    let request = OpRequest {
        target: b.node.clone(),
        reason: b.reason,
        force: b.force,
        fenced_hosts: Vec::new(),
    };
    if b.dry_run {
        return Json(s.ops.plan(OperationKind::Rejoin, &request).await).into_response();
    }
    let facts = pgwarden_core::operation::Facts {
        method: Some(method),
        keep_old_data: Some(b.keep_old_data),
        ..Default::default()
    };
    match s
        .ops
        .start_with(OperationKind::Rejoin, request, facts)
        .await
    {
        Ok(op) => answer(&s, op, q.wait).await,
        Err(e) => op_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncBody {
    mode: String,
    #[serde(default)]
    force: bool,
    /// Peers whose daemon does not answer that the operator confirms are
    /// fenced: needed to go async (or to keep an isolated primary) then.
    #[serde(default)]
    fenced_hosts: Vec<String>,
}

/// `PUT /v1/sync {"mode": "sync" | "async", "force": bool}`.
async fn sync(State(s): Shared, body: Bytes) -> Response {
    let b: SyncBody = match parse(&body) {
        Ok(b) => b,
        Err(m) => return bad_request(m),
    };
    let on = match b.mode.as_str() {
        "sync" => true,
        "async" => false,
        other => return bad_request(format!("`mode` is `sync` or `async`, not `{other}`")),
    };
    if let Some(r) = unknown_hosts(&s, &b.fenced_hosts) {
        return r;
    }
    match s.ops.set_sync(on, b.force, &b.fenced_hosts).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => op_error(e),
    }
}

#[derive(Deserialize)]
struct LockBody {
    holder: String,
    operation_id: String,
    /// The lease's length; a holder of a version without leases sends none.
    #[serde(default)]
    ttl_ms: Option<u64>,
}

async fn lock(State(s): Shared, body: Bytes) -> Response {
    let b: LockBody = match parse(&body) {
        Ok(b) => b,
        Err(m) => return bad_request(m),
    };
    let ttl = b
        .ttl_ms
        .map(std::time::Duration::from_millis)
        .unwrap_or(crate::ops::lock::LEASE_TTL);
    match s.ops.hold_for_peer(&b.holder, &b.operation_id, ttl) {
        Ok(()) => Json(json!({"held": true, "operation_id": b.operation_id})).into_response(),
        Err(e) => op_error(e),
    }
}

#[derive(Deserialize)]
struct UnlockBody {
    operation_id: String,
}

async fn unlock(State(s): Shared, body: Bytes) -> Response {
    let b: UnlockBody = match parse(&body) {
        Ok(b) => b,
        Err(m) => return bad_request(m),
    };
    s.ops.release_for_peer(&b.operation_id);
    Json(json!({"held": false})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percent_encoded_secret_is_masked_in_what_the_audit_keeps() {
        let token = "473f66f1801975819bc616b252892f80";
        let secrets = Redactor::new([token]);
        let encoded: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
        let endpoint = format!("/v1/operations/{encoded}/abort?x=%25{}", &token[..4]);
        assert!(secrets.found_in(endpoint.as_bytes()));
        assert_eq!(secrets.mask(&endpoint), "/v1/operations/***/abort?x=%473f");
        assert_eq!(
            secrets.mask("/v1/failover?wait=true"),
            "/v1/failover?wait=true"
        );
        assert_eq!(secrets.mask("100%"), "100%");

        let body = format!(r#"{{"target": "pg-b", "reason": "{encoded}"}}"#);
        let kept = audit_body(&secrets, body.as_bytes()).to_string();
        assert!(!kept.contains(&encoded) && !kept.contains(token), "{kept}");
        assert!(kept.contains("***"), "{kept}");
        let form = format!("target=pg-b&reason={encoded}");
        let kept = audit_body(&secrets, form.as_bytes()).to_string();
        assert_eq!(kept, r#""target=pg-b&reason=***""#);
        // A body without secrets is kept as JSON, as before.
        let plain = audit_body(&secrets, br#"{"target": "pg-b"}"#);
        assert_eq!(plain, serde_json::json!({"target": "pg-b"}));
    }
}
