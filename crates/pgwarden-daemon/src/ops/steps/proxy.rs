//! The steps fence_application, switch_application and start_application
//! when `proxy.pgbouncer` is the application's door: the application keeps
//! running and keeps its client connections; pgbouncer holds its queries.
//!
//! Fenced means: every configured pgbouncer PAUSEd (each transaction in
//! flight finished, no new one started) and no session of the fenced role
//! (`proxy.pgbouncer.db_user`, else `application.db_user`) left on any node
//! that answers. Then the old primary is stopped and the target promoted as
//! usual; switch_application rewrites the `[databases]` entry, RELOADs,
//! RECONNECTs, verifies SHOW DATABASES and RESUMEs; start_application
//! verifies that the pool's server connections go to the new primary.

use std::time::{Duration, Instant};

use pgwarden_core::config::PgbouncerConfig;
use pgwarden_core::operation::{Operation, StepOutcome};

use super::failover::{ctx_confirmed, sessions};
use super::{fail, ok, wait_for, StepContext, POLL};
use crate::effects::pgbouncer::{Action, Report};

/// How long start_application waits for server connections that pgbouncer
/// still keeps to another address to be closed (RECONNECT closes each once
/// released, so a long transaction there holds it).
const SERVERS_MOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// RESUMEs the pgbouncers of `hosts` (after a failed fence); says how it went.
async fn resume_all(ctx: &StepContext, hosts: &[String]) -> String {
    if hosts.is_empty() {
        return "no pgbouncer was paused".into();
    }
    let mut out = Vec::new();
    for h in hosts {
        match ctx.effects.pgbouncer_on(h, &Action::Resume).await {
            Ok(_) => out.push(format!("pgbouncer on {h} resumed")),
            Err(e) => out.push(format!(
                "pgbouncer on {h} NOT resumed ({}): RESUME it by hand",
                e.message
            )),
        }
    }
    out.join(", ")
}

/// fence_application with a proxy.
pub(super) async fn fence(
    ctx: &StepContext,
    op: &mut Operation,
    pb: &PgbouncerConfig,
) -> StepOutcome {
    let Some(role) = ctx.config.fenced_role().map(str::to_owned) else {
        return fail("no db_user to verify the fence with (proxy.pgbouncer.db_user)");
    };
    let began = Instant::now();
    let mut paused = Vec::new();
    let mut notes = Vec::new();
    for h in pb.hosts(&ctx.config.nodes) {
        match ctx.effects.pgbouncer_on(&h, &Action::Pause).await {
            Ok(_) => {
                paused.push(h.clone());
                // Journaled at once: a crash from here on leaves it paused,
                // and resume or abort must know where.
                op.facts.pgbouncer_paused = Some(paused.clone());
                notes.push(format!("pgbouncer on {h} paused"));
            }
            Err(e) if e.unreachable && ctx_confirmed(ctx, &h) => notes.push(format!(
                "{h}: its daemon does not answer; its pgbouncer fenced by the operator's confirmation"
            )),
            Err(e) => {
                // A daemon that did not answer in time may have paused its
                // pgbouncer all the same: resume it too (RESUME of one that
                // is not paused is harmless). One that answered undid its
                // own PAUSE; unreachable: nothing was sent.
                if e.status.is_none() && !e.unreachable {
                    paused.push(h.clone());
                }
                let resumed = resume_all(ctx, &paused).await;
                return fail(format!(
                    "cannot pause pgbouncer on {h}: {}{}; nothing promoted ({resumed})",
                    e.message,
                    if e.unreachable {
                        "; if that host is fenced (powered off), confirm it with fenced_hosts"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    op.facts.pgbouncer_pause_ms = Some(began.elapsed().as_millis() as u64);
    // Paused, the pools' server connections are idle and stay open (until
    // server_idle_timeout): close them, so that no session of the role is
    // left on the old primary. A session still there after that is a
    // client that does not go through pgbouncer.
    let mut terminated = 0;
    for n in &ctx.config.nodes {
        terminated += ctx
            .effects
            .node_quick(&n.name)
            .terminate_sessions_of(&role)
            .await
            .unwrap_or(0);
    }
    let gone = wait_for(Duration::from_secs(10), POLL, || async {
        sessions(ctx, op, &role).await.none_left().then_some(())
    })
    .await;
    if gone.is_none() {
        let left = sessions(ctx, op, &role).await.describe();
        let resumed = resume_all(ctx, &paused).await;
        return fail(format!(
            "sessions of {role} remain or cannot be counted with pgbouncer paused ({left}): a client that does not go through pgbouncer; fencing not verified, nothing promoted ({resumed})"
        ));
    }
    ok(format!(
        "{}; {terminated} lingering session(s) of {role} terminated; no session of {role} remains",
        notes.join("; ")
    ))
}

/// What a resumed operation re-checks of a proxy fence before promoting:
/// each pgbouncer it paused still paused, and no session of the role back.
pub(super) async fn reverify_fence(ctx: &StepContext, op: &Operation) -> Result<String, String> {
    for h in op.facts.pgbouncer_paused.clone().unwrap_or_default() {
        match ctx.effects.pgbouncer_on(&h, &Action::Status).await {
            Ok(Report { paused: true, .. }) => {}
            Ok(_) => {
                return Err(format!(
                    "pgbouncer on {h} is no longer paused although the fence was verified earlier: abort, then run the operation again"
                ))
            }
            Err(e) => return Err(format!("cannot verify that pgbouncer on {h} is still paused: {}", e.message)),
        }
    }
    let role = ctx.config.fenced_role().unwrap_or_default();
    let now = sessions(ctx, op, role).await;
    if !now.none_left() {
        return Err(format!(
            "sessions of {role} are back or cannot be counted ({}): the fence is not verified",
            now.describe()
        ));
    }
    Ok("pgbouncer still paused".into())
}

/// switch_application with a proxy: re-point each pgbouncer (rewrite,
/// RELOAD, RECONNECT, SHOW DATABASES names the new primary), then RESUME.
pub(super) async fn switch(
    ctx: &StepContext,
    op: &mut Operation,
    pb: &PgbouncerConfig,
) -> StepOutcome {
    let target = op.request.target.clone();
    let Some(node) = ctx.config.node(&target) else {
        return fail(format!("unknown node {target}"));
    };
    let action = Action::Repoint {
        operation: op.id.clone(),
        host: node.host.clone(),
        port: node.port,
    };
    let file = pb.config_file.display().to_string();
    let (mut done, mut notes) = (Vec::new(), Vec::new());
    for h in pb.hosts(&ctx.config.nodes) {
        match ctx.effects.pgbouncer_on(&h, &action).await {
            Ok(r) => {
                done.push(h.clone());
                notes.push(format!(
                    "{h}: {file} {} {}:{}",
                    if r.changed { "now points to" } else { "already pointed to" },
                    node.host,
                    node.port
                ));
            }
            Err(e) if e.unreachable && ctx_confirmed(ctx, &h) => notes.push(format!(
                "{h}: not re-pointed (its daemon does not answer; fenced by confirmation): point {} at {}:{} there before its pgbouncer serves again",
                pb.database, node.host, node.port
            )),
            Err(e) => {
                return fail(format!(
                    "re-pointing pgbouncer on {h} failed: {}; {target} IS the primary now; the pgbouncers stay paused (clients wait): fix it, then resume the operation",
                    e.message
                ))
            }
        }
        op.facts.pgbouncer_repointed = Some(done.clone());
    }
    let began = Instant::now();
    for h in &done {
        if let Err(e) = ctx.effects.pgbouncer_on(h, &Action::Resume).await {
            return fail(format!(
                "pgbouncer on {h} points to {target} but RESUME failed: {}; resume the operation",
                e.message
            ));
        }
    }
    op.facts.pgbouncer_resume_ms = Some(began.elapsed().as_millis() as u64);
    ok(format!(
        "{}; SHOW DATABASES names {}:{}; RELOAD, RECONNECT, RESUME done on {}",
        notes.join("; "),
        node.host,
        node.port,
        if done.is_empty() {
            "none".to_owned()
        } else {
            done.join(", ")
        }
    ))
}

/// Whether a server connection at `addr:port` is one to `host:port`. SHOW
/// SERVERS gives the address; a host name in the config is not resolved
/// here, so only the port is compared then.
fn goes_to(s: &crate::effects::pgbouncer::Server, host: &str, port: u16) -> bool {
    s.port == Some(port) && (host.parse::<std::net::IpAddr>().is_err() || s.addr == host)
}

/// start_application with a proxy: the application was never stopped; verify
/// that each pgbouncer serves (not paused, entry on the new primary) and
/// that none of its server connections goes elsewhere.
pub(super) async fn verify(ctx: &StepContext, op: &Operation, pb: &PgbouncerConfig) -> StepOutcome {
    let target = &op.request.target;
    let Some(node) = ctx.config.node(target) else {
        return fail(format!("unknown node {target}"));
    };
    let mut notes = Vec::new();
    for h in op.facts.pgbouncer_repointed.clone().unwrap_or_default() {
        let checked = wait_for(SERVERS_MOVE_TIMEOUT, POLL, || async {
            let r = ctx.effects.pgbouncer_on(&h, &Action::Status).await.ok()?;
            let elsewhere = r
                .servers
                .iter()
                .filter(|s| !goes_to(s, &node.host, node.port))
                .count();
            (elsewhere == 0 && !r.paused).then_some(r)
        })
        .await;
        match checked {
            Some(r) => notes.push(format!(
                "{h}: pgbouncer serves {} from {}:{} with {} server connection(s), none elsewhere",
                pb.database,
                r.entry_host.as_deref().unwrap_or("?"),
                r.entry_port.map(|p| p.to_string()).unwrap_or("?".into()),
                r.servers.len()
            )),
            None => {
                let now = match ctx.effects.pgbouncer_on(&h, &Action::Status).await {
                    Ok(r) => format!(
                        "paused: {}, server connections: {}",
                        r.paused,
                        r.servers
                            .iter()
                            .map(|s| format!("{}:{} ({})", s.addr, s.port.unwrap_or(0), s.state))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Err(e) => e.message,
                };
                return fail(format!(
                    "pgbouncer on {h} still has server connections that do not go to {target} after {SERVERS_MOVE_TIMEOUT:?} ({now})"
                ));
            }
        }
    }
    ok(format!(
        "the application kept running; {}",
        notes.join("; ")
    ))
}
