//! The probe: one persistent connection per node, one round trip per poll.
//!
//! The whole poll is a single simple-protocol query (`probe.sql`) that returns
//! one JSON document, so a poll costs exactly one round trip and needs no
//! prepared statement. Connect and query together are bounded by the poll
//! timeout; on any failure the connection is dropped and rebuilt on the next
//! poll, because a connection that timed out may be stuck mid-protocol.

use std::time::Duration;

use pgwarden_core::{NodeSnapshot, Secret};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::tls::PgTls;

const PROBE_SQL: &str = include_str!("probe.sql");

/// Idle time before the first TCP keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// Where and as whom to connect to one node.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
    /// `nodes[].sslmode` and `sslrootcert`.
    pub tls: PgTls,
}

impl Target {
    /// A libpq-style configuration for this target, named `pgwarden` in
    /// pg_stat_activity, connect bounded by `timeout`.
    pub(crate) fn config(&self, timeout: Duration) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("pgwarden")
            .connect_timeout(timeout)
            // An idle connection (the admin one waits weeks between
            // operations) whose path silently dropped is found dead by the
            // kernel within ~25 s and rebuilt on its next use, instead of the
            // first statement of a failover waiting out its whole budget.
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            // The same bound for a statement sent into a silent path:
            // unacknowledged data ends the connection instead of the
            // kernel retransmitting for ~15 minutes.
            .tcp_user_timeout(KEEPALIVE_IDLE + Duration::from_secs(15))
            .ssl_mode(self.tls.ssl_mode());
        if let Some(p) = &self.password {
            cfg.password(p.expose());
        }
        cfg
    }
}

/// Why a poll failed. Messages never contain the password.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?} (connect + query)")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("probe query failed: {0}")]
    Query(String),
    #[error("probe answer unreadable: {0}")]
    Decode(String),
}

/// Polls one node, keeping its connection between polls.
pub struct Prober {
    target: Target,
    timeout: Duration,
    /// The live connection, if the last poll succeeded.
    client: Option<Client>,
}

impl Prober {
    pub fn new(target: Target, timeout: Duration) -> Prober {
        Prober {
            target,
            timeout,
            client: None,
        }
    }

    /// One poll: connect if needed, run the probe, decode it. Bounded by the
    /// timeout as a whole; a failure drops the connection.
    pub async fn probe(&mut self) -> Result<NodeSnapshot, ProbeError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.probe_unbounded()).await {
            Ok(Ok(snapshot)) => Ok(snapshot),
            Ok(Err(e)) => {
                self.client = None;
                Err(e)
            }
            Err(_) => {
                self.client = None;
                Err(ProbeError::Timeout(timeout))
            }
        }
    }

    async fn probe_unbounded(&mut self) -> Result<NodeSnapshot, ProbeError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(self.connect().await?);
        }
        let client = self.client.as_ref().expect("connected above");
        let messages = client
            .simple_query(PROBE_SQL)
            .await
            .map_err(|e| ProbeError::Query(chain(&e)))?;
        let json = messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0),
                _ => None,
            })
            .ok_or_else(|| ProbeError::Decode("the probe returned no row".into()))?;
        serde_json::from_str(json).map_err(|e| ProbeError::Decode(e.to_string()))
    }

    async fn connect(&self) -> Result<Client, ProbeError> {
        let mut cfg = self.target.config(self.timeout);
        // The server gives up on a probe we stopped waiting for.
        cfg.options(format!(
            "-c statement_timeout={}",
            self.timeout.as_millis().max(1)
        ));
        let (client, connection) = cfg
            .connect(self.target.tls.clone())
            .await
            .map_err(|e| ProbeError::Connect(chain(&e)))?;
        // The connection future drives the socket; it ends when the client drops.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %chain(&e), "probe connection closed");
            }
        });
        Ok(client)
    }
}

/// "error connecting to server: Connection refused (os error 111)": the
/// error and its sources, which is where tokio-postgres keeps the detail.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_has_tcp_keepalives() {
        let t = Target {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "pgwarden".into(),
            password: None,
            dbname: "postgres".into(),
            tls: PgTls::new(None, None),
        };
        let cfg = t.config(Duration::from_secs(3));
        assert!(cfg.get_keepalives());
        assert_eq!(cfg.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(cfg.get_keepalives_retries(), Some(3));
        assert!(cfg.get_tcp_user_timeout().is_some());
    }
}
