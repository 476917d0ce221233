//! Calls that concern another daemon's host: an operation or a rejoin that
//! runs there, and the application on this host as the other daemon asks.

use std::sync::Arc;

use super::{OpError, Operations};
use crate::effects::Effects;

impl Operations {
    /// Acts on (or looks at) this host's pgbouncer.
    pub async fn pgbouncer_here(
        &self,
        action: &crate::effects::pgbouncer::Action,
    ) -> Result<crate::effects::pgbouncer::Report, String> {
        self.effects.pgbouncer_here(action).await
    }

    /// The side effects (the internal follow route re-points this node).
    pub(crate) fn effects(&self) -> &Arc<dyn Effects> {
        &self.effects
    }

    /// `application.health_url` asked from this host.
    pub async fn app_healthy_here(&self) -> pgwarden_core::Answer {
        match self.effects.app_healthy_on(&self.config.local_node).await {
            Ok(a) => a,
            Err(e) => pgwarden_core::Answer::Unknown(e.message),
        }
    }

    /// Points this host's application config file at `host:port`.
    pub fn switch_config_here(
        &self,
        operation: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, String> {
        self.effects
            .switch_application_config(operation, host, port)
    }

    /// An operation of this journal, else of a peer's (a rejoin runs on the
    /// rejoining node's daemon, wherever it was asked for).
    pub async fn find(&self, id: &str) -> Option<serde_json::Value> {
        if let Some(op) = self.get(id) {
            return serde_json::to_value(op).ok();
        }
        for n in self
            .config
            .nodes
            .iter()
            .filter(|n| n.name != self.config.local_node)
        {
            let Some(api) = &n.api else { continue };
            let url = format!(
                "{}/v1/operations/{id}?local=true",
                api.trim_end_matches('/')
            );
            if let Ok(v) = self.effects.get(&url).await {
                return Some(v);
            }
        }
        None
    }

    /// Forwards a rejoin of `node` to the daemon beside it.
    pub async fn forward_rejoin(
        &self,
        node: &str,
        query: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, serde_json::Value), OpError> {
        let api = self
            .config
            .node(node)
            .and_then(|n| n.api.clone())
            .ok_or_else(|| {
                OpError::Conflict(format!(
                    "nodes[{node}].api is not configured: send the rejoin to {node}'s daemon"
                ))
            })?;
        let url = format!("{}/v1/rejoin{query}", api.trim_end_matches('/'));
        // A copy of a large database can take hours when the caller waits.
        self.effects
            .forward(&url, body, std::time::Duration::from_secs(6 * 3600))
            .await
            .map_err(|e| {
                OpError::Unavailable(format!(
                    "the rejoin runs on {node}'s own daemon, which does not answer: {e}"
                ))
            })
    }
}
