//! Re-points a `role: replica` node at a new primary: `primary_conninfo` in
//! its postgresql.auto.conf, then a reload (PostgreSQL 13+ applies a new
//! primary_conninfo without a restart: the walreceiver reconnects). Done
//! here when the replica is this daemon's node, else by the daemon beside
//! it, which owns its data directory; the password stays in that file, as
//! pg_basebackup -R puts it, and never travels in SQL text or an answer.

use pgwarden_core::Config;

use super::Effects;

/// Makes this daemon's own node (a replica) stream from `primary`.
pub async fn follow_local(
    config: &Config,
    effects: &Effects,
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
    let conninfo = crate::rejoin::primary_conninfo(config, effects, p);
    crate::rejoin::write_auto_conf(
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

impl Effects {
    /// Makes `replica` stream from `primary`: locally, or through the
    /// daemon beside it.
    pub async fn follow(&self, replica: &str, primary: &str) -> Result<String, String> {
        if replica == self.config.local_node {
            return follow_local(&self.config, self, primary).await;
        }
        let api = self
            .config
            .node(replica)
            .and_then(|n| n.api.as_deref())
            .ok_or_else(|| {
                format!("nodes[{replica}].api is not configured: cannot ask {replica}'s daemon to follow {primary}")
            })?;
        let url = format!("{}/v1/node/follow/{primary}", api.trim_end_matches('/'));
        let v = self
            .post(&url, &serde_json::json!({}))
            .await
            .map_err(|e| e.message)?;
        Ok(v["message"].as_str().unwrap_or("re-pointed").to_owned())
    }
}
