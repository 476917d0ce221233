//! Re-points a `role: replica` node at a new primary: `primary_conninfo` in
//! its postgresql.auto.conf, then a reload (PostgreSQL 13+ applies a new
//! primary_conninfo without a restart: the walreceiver reconnects). Done
//! here when the replica is this daemon's node, else by the daemon beside
//! it, which owns its data directory; the password stays in that file, as
//! pg_basebackup -R puts it, and never travels in SQL text or an answer.

use pgwarden_core::Config;

use super::datadir::{primary_conninfo, write_auto_conf};
use super::Effects;

/// Makes this daemon's own node (a replica) stream from `primary`.
pub async fn follow_local(
    config: &Config,
    effects: &dyn Effects,
    primary: &str,
) -> Result<String, String> {
    let me = config.local();
    if !me.is_replica() {
        return Err(format!(
            "{} is not a `role: replica` node: the pair's standby is rebuilt with a rejoin",
            me.name
        ));
    }
    let p = config
        .node(primary)
        .filter(|p| p.name != me.name)
        .ok_or_else(|| format!("{primary} is not another node of this cluster"))?;
    let dir = me
        .data_dir
        .as_ref()
        .ok_or("nodes[].data_dir is not configured for this node: its postgresql.auto.conf cannot be rewritten")?;
    let conninfo = primary_conninfo(config, effects.replication_password(), p);
    write_auto_conf(
        dir,
        &[
            ("primary_conninfo", Some(conninfo)),
            ("primary_slot_name", None),
        ],
    )
    .map_err(|e| format!("cannot rewrite {}/postgresql.auto.conf: {e}", dir.display()))?;
    effects
        .node(&me.name)
        .reload()
        .await
        .map_err(|e| format!("primary_conninfo is written but the reload failed: {e}"))?;
    Ok(format!(
        "primary_conninfo -> {}:{} as application_name {}; configuration reloaded",
        p.host,
        p.port,
        me.walreceiver_name(&config.replication)
    ))
}
