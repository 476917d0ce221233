//! The `repoint_replicas` step of a failover or switchover: every `role:
//! replica` node is pointed at the new primary (primary_conninfo and a
//! reload, no restart; see [`crate::effects::replica`]) and verified
//! streaming from it on its new timeline, by the replica's own
//! `pg_stat_wal_receiver`.
//!
//! It runs after the application is back: the pair's operation is complete
//! by then, so a replica that cannot follow (down, its daemon silent, ahead
//! of the new primary's history after a failover) fails nothing. It is
//! written down instead: in the step's message, in the fact
//! `replicas_not_repointed`, and, as long as it lasts, as the live problem
//! `replica_not_streaming`. Re-running it (resume) is harmless: pointing a
//! replica at the primary it already follows changes nothing.

use std::time::{Duration, Instant};

use pgwarden_core::config::NodeConfig;
use pgwarden_core::operation::{Operation, StepOutcome};

use super::{wait_for, StepContext};

/// How long a re-pointed replica may take to stream on the new timeline:
/// its walreceiver restarts at once on the reload, then fetches the new
/// timeline's history file.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn repoint_replicas(ctx: &StepContext, op: &mut Operation) -> StepOutcome {
    let target = op.request.target.clone();
    let Some(primary) = ctx.config.node(&target) else {
        return StepOutcome::Failed(format!("unknown node {target}"));
    };
    let timeline = match op.facts.new_timeline {
        Some(t) => t,
        None => match ctx.effects.node(&target).timeline().await {
            Ok(t) => t,
            Err(e) => {
                return StepOutcome::Failed(format!(
                "the new primary's timeline is unknown, so no replica can be verified on it: {e}"
            ))
            }
        },
    };
    let replicas: Vec<&NodeConfig> = ctx.config.replicas().filter(|r| r.name != target).collect();
    if replicas.is_empty() {
        return StepOutcome::Skipped(format!("no replica besides {target} to re-point"));
    }
    let mut lines = Vec::new();
    let mut left = Vec::new();
    for r in replicas {
        let started = Instant::now();
        let result = match ctx.effects.follow(&r.name, &target).await {
            Ok(_) => streams_from(ctx, &r.name, primary, timeline).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                let ms = started.elapsed().as_millis();
                op.facts
                    .replicas
                    .entry(r.name.clone())
                    .or_default()
                    .repointed_ms = Some(ms as u64);
                lines.push(format!(
                    "{} streams from {target} on timeline {timeline} ({ms} ms from the re-point request)",
                    r.name
                ));
            }
            Err(why) => {
                lines.push(format!("{} is NOT re-pointed: {why}", r.name));
                left.push(r.name.clone());
            }
        }
    }
    if left.is_empty() {
        op.facts.replicas_not_repointed = None;
    } else {
        op.facts.replicas_not_repointed = Some(left.clone());
        lines.push(format!(
            "the {} of the pair is complete; {} still follow{} the old primary: fix the cause and resume, or rebuild with `pgwarden rejoin {}`",
            op.kind,
            left.join(", "),
            if left.len() == 1 { "s" } else { "" },
            left[0]
        ));
    }
    StepOutcome::Succeeded(lines.join("; "))
}

/// Waits until `replica`'s walreceiver streams from `primary` on
/// `timeline`; says what it saw last when it does not.
async fn streams_from(
    ctx: &StepContext,
    replica: &str,
    primary: &NodeConfig,
    timeline: u32,
) -> Result<(), String> {
    let node = ctx.effects.node_quick(replica);
    let want = format!("streaming {} {} {timeline}", primary.host, primary.port);
    let seen = std::sync::Mutex::new(String::from("no answer"));
    let found = wait_for(FOLLOW_TIMEOUT, Duration::from_millis(20), || async {
        let now = match node.wal_receiver().await {
            Ok(Some(r)) => format!(
                "{} {} {} {}",
                r.status,
                r.sender_host.as_deref().unwrap_or("?"),
                r.sender_port
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "?".into()),
                r.received_tli
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "?".into())
            ),
            Ok(None) => "no walreceiver".into(),
            Err(e) => e.to_string(),
        };
        let hit = now == want;
        *seen.lock().unwrap_or_else(|p| p.into_inner()) = now;
        hit.then_some(())
    })
    .await;
    found.ok_or_else(|| {
        format!(
            "not streaming from {}:{} on timeline {timeline} after {}s (its walreceiver: `{}`); see its server log",
            primary.host,
            primary.port,
            FOLLOW_TIMEOUT.as_secs(),
            seen.lock().unwrap_or_else(|p| p.into_inner())
        )
    })
}
