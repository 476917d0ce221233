//! The steps of a rejoin: turn this daemon's own node (a former primary, or
//! a node with an empty data directory) into the synchronous standby of the
//! current primary, or, for a `role: replica` node, into an asynchronous
//! replica of it (its own application_name, no slot, never in
//! synchronous_standby_names). Run by the node's own daemon, since it rewrites the data
//! directory; another daemon forwards the request.
//!
//! The data directory is rebuilt with pg_rewind when it allows it (wal_log_hints
//! or checksums, and the source role may read files), else with a fresh
//! pg_basebackup into a NEW directory: the old one is moved aside and only
//! deleted once the new standby streams synchronously. The node's own
//! configuration files (postgresql.conf, pg_hba.conf, pg_ident.conf) are kept
//! across the rebuild, since both tools copy the primary's. Like the
//! failover steps, each one checks the real state first, so resume is safe.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgwarden_core::operation::{Operation, StepName, StepOutcome};
use pgwarden_core::Config;

use super::{fail, ok, progress, require_synchronous, run_preflight, wait_for, StepContext};
use crate::effects::command::as_user;
use crate::effects::datadir::primary_conninfo;
use crate::effects::NodeSql;

/// A copy of 1 GB on this kind of machine takes well under a minute; a
/// large production database may take hours.
const COPY_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// Configuration files that belong to the node, not to the primary.
const OWN_FILES: [&str; 3] = ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"];

pub async fn run_step(ctx: &StepContext, op: &mut Operation, step: StepName) -> StepOutcome {
    match step {
        StepName::Preflight => preflight_step(ctx, op).await,
        StepName::StopNode => stop_node(ctx).await,
        StepName::RebuildDataDirectory => rebuild(ctx, op).await,
        StepName::ConfigureStandby => configure(ctx, op),
        StepName::StartStandby => start(ctx).await,
        StepName::WaitStreaming => wait_streaming(ctx, op).await,
        StepName::EnableSynchronous => enable_synchronous(ctx, op).await,
        StepName::Done => ok(format!(
            "{} is the {} of {}",
            ctx.config.local_node,
            if ctx.config.local().is_replica() {
                "asynchronous replica"
            } else {
                "synchronous standby"
            },
            op.facts.primary.as_deref().unwrap_or("the primary")
        )),
        other => fail(format!("step {other:?} is not a rejoin step")),
    }
}

fn data_dir(config: &Config) -> Result<PathBuf, StepOutcome> {
    config
        .local()
        .data_dir
        .clone()
        .ok_or_else(|| fail("nodes[].data_dir is not configured for this node"))
}

fn bin(config: &Config, name: &str) -> String {
    match &config.local().bin_dir {
        Some(b) => b.join(name).display().to_string(),
        None => name.to_owned(),
    }
}

async fn preflight_step(ctx: &StepContext, op: &mut Operation) -> StepOutcome {
    if let Err(refused) = run_preflight(ctx, op).await {
        return refused;
    }
    let primary = match ctx.view.writable_primary() {
        Some(p) => p.name.clone(),
        None => return fail("no primary to follow"),
    };
    op.facts.primary = Some(primary.clone());
    let dir = match data_dir(&ctx.config) {
        Ok(d) => d,
        Err(o) => return o,
    };
    let pnode = ctx.effects.node(&primary);
    // The pair's slot is the standby's; a replica streams without one.
    if !ctx.config.local().is_replica() {
        if let Err(e) = pnode.ensure_slot(&ctx.config.replication.slot).await {
            return fail(format!("the replication slot on {primary}: {e}"));
        }
    }
    // What the operator asked for (kept across resumes: `method` becomes
    // the method chosen).
    let asked = op
        .facts
        .method_asked
        .clone()
        .or(op.facts.method.clone())
        .unwrap_or_else(|| "auto".into());
    op.facts.method_asked = Some(asked.clone());
    let empty = match ctx.effects.data_dirs().is_empty(&dir) {
        Ok(e) => e,
        Err(e) => {
            return fail(format!(
                "cannot tell whether {} holds a data directory: {e}",
                dir.display()
            ))
        }
    };
    let (method, why) = if empty {
        (
            "basebackup",
            "the data directory is empty or absent: a first clone".to_owned(),
        )
    } else if asked == "basebackup" {
        ("basebackup", "asked for".to_owned())
    } else {
        match rewind_possible(ctx, &dir, &*pnode).await {
            Ok(why) => ("rewind", why),
            Err(why) if asked == "rewind" => {
                return fail(format!("pg_rewind was asked for but cannot work: {why}"))
            }
            Err(why) => ("basebackup", format!("pg_rewind cannot work here ({why})")),
        }
    };
    if method == "basebackup" {
        let needed = match pnode.database_bytes().await {
            Ok(n) => n,
            Err(e) => return fail(format!("cannot size the copy of {primary}: {e}")),
        };
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let free = match ctx.effects.data_dirs().free_bytes(parent) {
            Ok(f) => f,
            Err(e) => return fail(format!("cannot tell whether a copy of {primary} fits: {e}")),
        };
        // The copy needs the databases plus room for WAL streamed meanwhile.
        let want = needed + needed / 10 + 64 * 1024 * 1024;
        if free < want {
            return fail(format!(
                "not enough disk under {} for a copy of {primary}: {} free, {} needed (the old data directory is kept until the new one works)",
                parent.display(),
                pgwarden_core::health::human_bytes(free),
                pgwarden_core::health::human_bytes(want)
            ));
        }
    }
    op.facts.method = Some(method.into());
    op.facts.method_reason = Some(why.clone());
    ok(format!(
        "will rebuild {} from {primary} with {method}: {why}",
        ctx.config.local_node
    ))
}

/// Why pg_rewind can work on `dir` from the primary, or why not.
async fn rewind_possible(
    ctx: &StepContext,
    dir: &Path,
    primary: &dyn NodeSql,
) -> Result<String, String> {
    let control = ctx.effects.pg_control(dir).await?;
    let (hints, checksums) = (control.wal_log_hints, control.checksums);
    if !hints && !checksums {
        return Err(
            "neither wal_log_hints nor data checksums are on in this data directory".into(),
        );
    }
    match primary.may_read_files_for_rewind().await {
        Ok(true) => Ok(format!(
            "{} on, and {} may read the primary's files",
            if hints {
                "wal_log_hints"
            } else {
                "data checksums"
            },
            ctx.config.monitor.user
        )),
        Ok(false) => Err(format!(
            "{} lacks EXECUTE on pg_ls_dir, pg_stat_file or pg_read_binary_file on the primary",
            ctx.config.monitor.user
        )),
        Err(e) => Err(format!("cannot check the rewind privileges: {e}")),
    }
}

async fn stop_node(ctx: &StepContext) -> StepOutcome {
    let dir = match data_dir(&ctx.config) {
        Ok(d) => d,
        Err(o) => return o,
    };
    match ctx.effects.data_dirs().is_empty(&dir) {
        Ok(true) => return StepOutcome::Skipped("no data directory yet: nothing to stop".into()),
        Ok(false) => {}
        Err(e) => {
            return fail(format!(
                "cannot tell whether {} holds a data directory: {e}",
                dir.display()
            ))
        }
    }
    match ctx
        .effects
        .node_action(&ctx.config.local_node, "stop")
        .await
    {
        Ok(s) => ok(s.message),
        Err(e) => fail(e),
    }
}

fn own_files_dir(ctx: &StepContext, op: &Operation) -> PathBuf {
    ctx.config.state_dir.join(format!("rejoin-{}", op.id))
}

async fn rebuild(ctx: &StepContext, op: &mut Operation) -> StepOutcome {
    let dir = match data_dir(&ctx.config) {
        Ok(d) => d,
        Err(o) => return o,
    };
    let primary = op.facts.primary.clone().unwrap_or_default();
    let Some(p) = ctx.config.node(&primary) else {
        return fail("the journal lacks the primary");
    };
    // Keep this node's own configuration files before a tool overwrites them.
    let keep = own_files_dir(ctx, op);
    let dirs = ctx.effects.data_dirs();
    let unchanged = |e: String| fail(format!("{e}; the data directory is unchanged"));
    let keep_now = dirs
        .exists(&keep)
        .and_then(|kept| Ok(!kept && !dirs.is_empty(&dir)?));
    let keep_now = match keep_now {
        Ok(k) => k,
        Err(e) => return unchanged(e),
    };
    if keep_now {
        if let Err(e) = dirs.keep(&dir, &keep, &OWN_FILES) {
            return fail(format!(
                "cannot keep the configuration files in {}: {e}",
                keep.display()
            ));
        }
    }
    let os_user = ctx.config.local().os_user.clone();
    let mut note = String::new();
    // pg_rewind leaves a backup_label telling recovery where to start: its
    // presence in a stopped directory means an earlier attempt of this step
    // rewound it already (a resume), and a second rewind would break it.
    let rewound_before = match dirs.exists(&dir.join("backup_label")) {
        Ok(r) => r,
        Err(e) => return unchanged(e),
    };
    if op.facts.method.as_deref() == Some("rewind") && rewound_before {
        note = "already rewound by an earlier attempt of this step".into();
    } else if op.facts.method.as_deref() == Some("rewind") {
        // pg_rewind reads the source's timeline from its control file, which
        // shows the new timeline only after the first checkpoint following a
        // promotion: without this it may decide "no rewind required" and
        // leave a standby that cannot follow.
        if let Err(e) = ctx.effects.node(&primary).checkpoint().await {
            return fail(format!(
                "CHECKPOINT on {primary} before pg_rewind failed: {e}"
            ));
        }
        let source = format!(
            "host={} port={} user={} dbname={}{}",
            p.host,
            p.port,
            ctx.config.monitor.user,
            ctx.config.monitor.dbname,
            crate::effects::datadir::ssl_conninfo(p)
        );
        let argv = as_user(
            os_user.as_deref(),
            vec![
                bin(&ctx.config, "pg_rewind"),
                format!("--target-pgdata={}", dir.display()),
                format!("--source-server={source}"),
            ],
        );
        let pw = ctx.effects.monitor_password();
        let env: Vec<(&str, &str)> = pw.iter().map(|p| ("PGPASSWORD", p.as_str())).collect();
        // pg_rewind shows no progress on its source, and its own output
        // comes at its end: only the phase is shown.
        ctx.progress.report(Some(progress::phase_only(
            "rewinding",
            "pg_rewind copies only the blocks changed since the timelines diverged; its progress is not read",
        )));
        match dirs.run_tool(&argv, &env, COPY_TIMEOUT).await {
            Ok(_) => note = format!("rewound from {primary} with pg_rewind"),
            Err(e) if op.facts.method_asked.as_deref() == Some("rewind") => {
                return fail(format!(
                    "pg_rewind was asked for and failed: {e}; ask for basebackup (or auto) instead"
                ));
            }
            Err(e) => {
                // Not fatal: a fresh copy always works (and keeps the old directory).
                tracing::warn!("pg_rewind failed, falling back to pg_basebackup: {e}");
                op.facts.method = Some("basebackup".into());
                op.facts.method_reason = Some(format!("pg_rewind failed: {e}"));
                note = format!("pg_rewind failed ({e}); ");
            }
        }
    }
    if op.facts.method.as_deref() == Some("basebackup") {
        match basebackup(ctx, op, &dir, &primary, os_user.as_deref()).await {
            Ok(m) => note.push_str(&m),
            Err(e) => return fail(format!("{note}{e}")),
        }
    }
    // The node's own configuration files go back over the primary's.
    if let Err(e) = dirs.restore(&keep, &dir, &OWN_FILES) {
        return fail(e);
    }
    ok(note)
}

/// A fresh copy into `<data_dir>.pgwarden-new-<op>`, then swapped in; the
/// old directory is moved to `<data_dir>.pgwarden-old-<op>` (deleted only
/// once the standby streams synchronously).
async fn basebackup(
    ctx: &StepContext,
    op: &mut Operation,
    dir: &Path,
    primary: &str,
    os_user: Option<&str>,
) -> Result<String, String> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let new = dir.with_file_name(format!("{name}.pgwarden-new-{}", op.id));
    let old = dir.with_file_name(format!("{name}.pgwarden-old-{}", op.id));
    let dirs = ctx.effects.data_dirs();
    if dirs.exists(&old)? && dirs.exists(dir)? && !dirs.exists(&new)? {
        // Resumed after the swap: the copy is in place.
        op.facts.old_data_dir = Some(old.clone());
        return Ok(format!(
            "fresh copy already in place (old directory at {})",
            old.display()
        ));
    }
    if dirs.exists(&new)? {
        // An interrupted copy of ours: start it again.
        dirs.remove_all(&new)
            .map_err(|e| format!("cannot clear the unfinished copy {}: {e}", new.display()))?;
    }
    let p = ctx.config.node(primary).ok_or("unknown primary")?;
    let r = &ctx.config.replication;
    let app = progress::copy_application_name(&ctx.config.local_node);
    let argv = as_user(
        os_user,
        vec![
            bin(&ctx.config, "pg_basebackup"),
            "-h".into(),
            p.host.clone(),
            "-p".into(),
            p.port.to_string(),
            "-U".into(),
            r.user.clone(),
            "-D".into(),
            new.display().to_string(),
            "-X".into(),
            "stream".into(),
            "-c".into(),
            "fast".into(),
            "-w".into(),
            // One conninfo (pg_basebackup keeps only the last -d): it names
            // the walsender, so that its row of the source's
            // pg_stat_progress_basebackup can be found (progress.rs), and
            // carries the source's sslmode/sslrootcert.
            "-d".into(),
            format!(
                "application_name={app}{}",
                crate::effects::datadir::ssl_conninfo(p)
            ),
        ]
        .into_iter()
        .chain(
            ctx.config
                .rejoin
                .basebackup_max_rate
                .map(|rate| format!("--max-rate={}k", rate / 1024)),
        )
        // A replica copies over a temporary slot: the pair's slot is in
        // use by the standby.
        .chain(
            (!ctx.config.local().is_replica())
                .then(|| ["-S".to_owned(), r.slot.clone()])
                .into_iter()
                .flatten(),
        )
        .collect(),
    );
    let pw = ctx.effects.replication_password();
    let env: Vec<(&str, &str)> = pw.iter().map(|p| ("PGPASSWORD", p.as_str())).collect();
    let started = tokio::time::Instant::now();
    let copy = dirs.run_tool(&argv, &env, COPY_TIMEOUT);
    let (copied, last) = progress::watch_basebackup(ctx, primary, &app, copy).await;
    let figures = pgwarden_core::progress::summary(&last, started.elapsed().as_secs_f64());
    progress::keep_final(op, last);
    if let Err(e) = copied {
        // Nothing of the old directory was touched; the partial copy goes.
        let _ = dirs.remove_all(&new);
        return Err(format!(
            "pg_basebackup from {primary} failed: {e}; the old data directory is untouched"
        ));
    }
    // Swap: the old directory aside (kept), the copy in its place.
    // An earlier attempt killed half-way through its swap left the old
    // directory aside already: it is kept, and goes once the standby works.
    let kept = dirs.swap(&new, dir, &old)? || dirs.exists(&old)?;
    if kept {
        op.facts.old_data_dir = Some(old.clone());
    }
    Ok(format!(
        "fresh copy from {primary} with pg_basebackup{}{}",
        figures.map(|f| format!(" ({f})")).unwrap_or_default(),
        if kept {
            format!(
                "; the old data directory is kept at {} until the standby is synchronous",
                old.display()
            )
        } else {
            String::new()
        }
    ))
}

fn configure(ctx: &StepContext, op: &Operation) -> StepOutcome {
    let dir = match data_dir(&ctx.config) {
        Ok(d) => d,
        Err(o) => return o,
    };
    let primary = op.facts.primary.clone().unwrap_or_default();
    let Some(p) = ctx.config.node(&primary) else {
        return fail("the journal lacks the primary");
    };
    let r = &ctx.config.replication;
    let me = ctx.config.local();
    let conninfo = primary_conninfo(&ctx.config, ctx.effects.replication_password(), p);
    let slot = (!me.is_replica()).then(|| r.slot.clone());
    let write = ctx.effects.data_dirs().configure_standby(
        &dir,
        &[
            ("primary_conninfo", Some(conninfo)),
            ("primary_slot_name", slot.clone()),
            // A standby must not wait for standbys of its own.
            ("synchronous_standby_names", None),
        ],
        true,
    );
    match write {
        Ok(()) => ok(format!(
            "standby.signal written; primary_conninfo -> {}:{} as application_name {}, {}",
            p.host,
            p.port,
            me.walreceiver_name(r),
            match slot {
                Some(slot) => format!("primary_slot_name {slot}"),
                None => "no slot (an asynchronous replica)".to_owned(),
            }
        )),
        Err(e) => fail(format!("cannot configure {}: {e}", dir.display())),
    }
}

async fn start(ctx: &StepContext) -> StepOutcome {
    let me = &ctx.config.local_node;
    if ctx.effects.node_quick(me).is_in_recovery().await.is_ok() {
        return StepOutcome::Skipped(format!("{me} already runs"));
    }
    match ctx
        .effects
        .node_action(&ctx.config.local_node, "start")
        .await
    {
        Ok(s) => ok(s.message),
        Err(e) => fail(e),
    }
}

async fn wait_streaming(ctx: &StepContext, op: &Operation) -> StepOutcome {
    let me = ctx.config.local_node.clone();
    let node = ctx.effects.node_quick(&me);
    let primary = op.facts.primary.clone().unwrap_or_default();
    let seen = std::sync::Mutex::new(String::from("no answer"));
    let ended = wait_for(
        Duration::from_secs(120),
        Duration::from_millis(50),
        || async {
            match node.is_in_recovery().await {
                Ok(false) => {
                    // Never leave two writers: it came up as a primary.
                    let _ = ctx.effects.node_action(&me, "stop").await;
                    Some(fail(format!(
                        "{me} started as a primary instead of a standby and was stopped again"
                    )))
                }
                Ok(true) => {
                    // Streaming on the primary's current timeline: a rewound node
                    // first replays the old timeline up to the switch, then its
                    // receiver reconnects for the new one.
                    let receiving = node.wal_receiver().await;
                    let want = ctx.effects.node_quick(&primary).timeline().await;
                    *seen.lock().unwrap() =
                        format!("receiver {receiving:?}, primary timeline {want:?}");
                    let (Ok(Some(r)), Ok(want)) = (&receiving, &want) else {
                        return None;
                    };
                    if r.status != "streaming" || r.received_tli != Some(*want) {
                        return None;
                    }
                    let lsn = match node.replay_lsn().await {
                        Ok(Some(l)) => l.to_string(),
                        _ => "?".into(),
                    };
                    Some(ok(format!(
                        "{me} streams from {primary} on its timeline (replayed up to {lsn})"
                    )))
                }
                Err(_) => None,
            }
        },
    )
    .await;
    ended.unwrap_or_else(|| {
        fail(format!(
            "{me} does not stream from {primary} on its timeline after 120s ({}): see its server log",
            seen.lock().unwrap()
        ))
    })
}

async fn enable_synchronous(ctx: &StepContext, op: &mut Operation) -> StepOutcome {
    let primary = op.facts.primary.clone().unwrap_or_default();
    let mut msg = if ctx.config.local().is_replica() {
        // Never in synchronous_standby_names: a replica's absence must not
        // block the primary's commits.
        format!(
            "{} is a replica: it stays asynchronous, outside synchronous_standby_names",
            ctx.config.local_node
        )
    } else {
        let node = ctx.effects.node(&primary);
        let app = &ctx.config.replication.application_name;
        if let Err(e) = require_synchronous(&*node, &primary, app, Duration::from_secs(60)).await {
            return fail(e);
        }
        format!(
            "{primary} waits for {} (sync_state = sync)",
            ctx.config.local_node
        )
    };
    // Only now is the replacement proven: the old directory may go.
    if let Some(old) = op.facts.old_data_dir.clone() {
        if op.facts.keep_old_data == Some(true) {
            msg.push_str(&format!(
                "; the old data directory is kept at {}",
                old.display()
            ));
        } else {
            // The standby works: a leftover old directory is reported, not a
            // reason to fail a rejoin that is done.
            match ctx.effects.data_dirs().exists(&old).and_then(|there| {
                there
                    .then(|| {
                        ctx.effects
                            .data_dirs()
                            .remove_all(&old)
                            .map_err(|e| e.to_string())
                    })
                    .transpose()
            }) {
                Ok(None) => {}
                Ok(Some(())) => msg.push_str(&format!(
                    "; removed the old data directory {}",
                    old.display()
                )),
                Err(e) => msg.push_str(&format!(
                    "; could not remove the old data directory {}: {e}",
                    old.display()
                )),
            }
        }
    }
    let _ = ctx.effects.data_dirs().remove_all(&own_files_dir(ctx, op));
    ok(msg)
}
