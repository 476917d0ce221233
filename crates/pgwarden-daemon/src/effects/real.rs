//! The real world: SQL over each node's pool of checked connections, this host's
//! PostgreSQL and application through their commands, the other hosts
//! through their daemons' APIs, files on this host.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgwarden_core::preflight::Shadow;
use pgwarden_core::{Answer, Config};
use pgwarden_pg::{Node, Target};

use super::node::{self, local_node_action, NodeState, NODE_ACTION_TIMEOUT};
use super::{app, appconfig, pgbouncer, replica, Effects, NodeSql, PeerError};
use crate::load::Secrets;

/// Budget of one SQL action (CHECKPOINT on a busy node takes a while).
const SQL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct RealEffects {
    pub(super) config: Arc<Config>,
    pub(super) secrets: Secrets,
    pub(super) http: reqwest::Client,
    /// One SQL pool per node (see pgwarden_pg::Node), reused across steps.
    /// A std Mutex: only held to look up or insert, never across an await.
    nodes: std::sync::Mutex<std::collections::HashMap<String, Node>>,
}

impl RealEffects {
    pub fn new(config: Arc<Config>, secrets: Secrets) -> RealEffects {
        let builder = reqwest::Client::builder()
            .timeout(NODE_ACTION_TIMEOUT + Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3));
        // With tls, the other daemon is trusted through the configured CA
        // file only (read and checked when the config was loaded).
        let builder = match &config.tls {
            Some(tls) => {
                crate::tls::trusting(builder, crate::tls::trust_file(tls)).unwrap_or_else(|e| {
                    tracing::error!("{e}: calls to the other daemon will fail");
                    reqwest::Client::builder()
                })
            }
            None => builder,
        };
        let http = builder.build().expect("the HTTP client builds");
        RealEffects {
            config,
            secrets,
            http,
            nodes: Default::default(),
        }
    }

    /// How long a pooled connection may take to answer its check before a
    /// new one replaces it: half the poll timeout, so that even a quick
    /// call ([`Effects::node_quick`]) has time left to connect again.
    fn check_timeout(&self) -> Duration {
        (self.config.poll.timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// SQL access to a configured node, as the monitor role, over the
    /// node's pool.
    fn sql_node(&self, name: &str) -> Node {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .entry(name.to_owned())
            .or_insert_with(|| {
                let n = self
                    .config
                    .node(name)
                    .expect("operations only name configured nodes");
                let target = Target {
                    host: n.host.clone(),
                    port: n.port,
                    user: self.config.monitor.user.clone(),
                    password: self.secrets.monitor_password.clone(),
                    dbname: self.config.monitor.dbname.clone(),
                    tls: pgwarden_pg::PgTls::for_node(n),
                };
                Node::new(n.name.clone(), target, SQL_TIMEOUT, self.check_timeout())
            })
            .clone()
    }

    pub(super) async fn send(
        &self,
        mut req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<serde_json::Value, PeerError> {
        if let Some(t) = &self.secrets.api_token {
            req = req.bearer_auth(t.expose());
        }
        let resp = req.send().await.map_err(|e| PeerError {
            status: None,
            unreachable: e.is_connect(),
            code: None,
            message: if e.is_connect() {
                format!("cannot reach {url}: {}", error_chain(&e))
            } else {
                format!(
                    "{url} did not answer (the request may have been received): {}",
                    error_chain(&e)
                )
            },
        })?;
        let status = resp.status();
        let value: Result<serde_json::Value, _> = resp.json().await;
        let value = match (status.is_success(), value) {
            (true, Ok(v)) => return Ok(v),
            (true, Err(e)) => {
                return Err(PeerError {
                    status: None,
                    unreachable: false,
                    code: None,
                    message: format!("{url} answered {status} with a body that is not JSON: {e}"),
                })
            }
            (false, v) => v.unwrap_or(serde_json::Value::Null),
        };
        {
            Err(PeerError {
                status: Some(status.as_u16()),
                unreachable: false,
                code: value["error"].as_str().map(str::to_owned),
                message: format!(
                    "{url} answered {status}: {}",
                    value["message"].as_str().unwrap_or("no message")
                ),
            })
        }
    }

    /// The base URL of `host`'s daemon.
    pub(super) fn api_of(&self, host: &str) -> Result<String, PeerError> {
        self.config
            .node(host)
            .and_then(|n| n.api.as_deref())
            .map(|a| a.trim_end_matches('/').to_owned())
            .ok_or_else(|| PeerError {
                status: None,
                unreachable: true,
                code: None,
                message: format!(
                    "nodes[{host}].api is not configured: pgwarden cannot reach that host's daemon"
                ),
            })
    }

    fn application(&self) -> Result<&pgwarden_core::config::ApplicationConfig, PeerError> {
        self.config.application.as_ref().ok_or_else(|| PeerError {
            status: None,
            unreachable: false,
            code: None,
            message: "no application configured".into(),
        })
    }

    async fn app_call(
        &self,
        host: &str,
        action: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, PeerError> {
        let url = format!("{}/v1/node/application/{action}", self.api_of(host)?);
        // The command's own budget, plus the way there and back.
        let app = self.application()?;
        let budget = app.stop_timeout.max(app.start_timeout) + Duration::from_secs(10);
        self.send(self.http.post(&url).json(&body).timeout(budget), &url)
            .await
    }
}

#[async_trait]
impl Effects for RealEffects {
    fn data_dirs(&self) -> &dyn super::datadir::DataDirs {
        &super::datadir::RealDataDirs
    }

    async fn pg_control(&self, dir: &std::path::Path) -> Result<node::PgControl, String> {
        node::pg_control(self.config.local(), dir).await
    }

    fn monitor_password(&self) -> Option<String> {
        self.secrets
            .monitor_password
            .as_ref()
            .map(|s| s.expose().to_owned())
    }

    fn replication_password(&self) -> Option<String> {
        self.secrets
            .replication_password
            .as_ref()
            .map(|s| s.expose().to_owned())
    }

    fn node(&self, name: &str) -> Arc<dyn NodeSql> {
        Arc::new(self.sql_node(name))
    }

    fn node_quick(&self, name: &str) -> Arc<dyn NodeSql> {
        let quick = self.config.poll.timeout.max(Duration::from_secs(1));
        Arc::new(self.sql_node(name).with_timeout(quick))
    }

    async fn node_stopped_on(&self, node: &str) -> Result<Answer, PeerError> {
        if node == self.config.local_node {
            return Ok(self.local_node_stopped().await);
        }
        let url = format!("{}/v1/node/status", self.api_of(node)?);
        let v = self.post(&url, &serde_json::json!({})).await?;
        let wire: app::WireAnswer =
            serde_json::from_value(v["stopped"].clone()).map_err(|e| PeerError {
                status: None,
                unreachable: false,
                code: None,
                message: format!("{url} answered unexpectedly: {e}"),
            })?;
        Ok(wire.to_answer())
    }

    async fn local_node_stopped(&self) -> Answer {
        let me = self.config.local();
        match node::pg_status(me).await {
            Answer::No => node::postmaster_gone(me).await,
            Answer::Yes => Answer::No,
            unknown => unknown,
        }
    }

    async fn stop_local_node(&self) -> Result<NodeState, String> {
        node::stop_local(&self.config).await
    }

    /// Stops (`action` = "stop") or starts a node's PostgreSQL: locally when
    /// it is this daemon's node, else through the daemon beside it.
    async fn node_action(&self, node: &str, action: &str) -> Result<NodeState, String> {
        if node == self.config.local_node {
            return local_node_action(&self.config, action).await;
        }
        let n = self
            .config
            .node(node)
            .ok_or_else(|| format!("unknown node {node}"))?;
        let api = n.api.as_deref().ok_or_else(|| {
            format!("nodes[{node}].api is not configured: cannot ask {node}'s daemon to {action} PostgreSQL")
        })?;
        let url = format!("{}/v1/node/{action}", api.trim_end_matches('/'));
        let v = self
            .post(&url, &serde_json::json!({}))
            .await
            .map_err(|e| e.message)?;
        serde_json::from_value(v).map_err(|e| format!("{url} answered unexpectedly: {e}"))
    }

    /// Asks for `node`'s PostgreSQL to be stopped, locally or through the
    /// daemon beside it, giving up after `budget`. A failover uses it on an
    /// old primary it cannot reach over SQL: "unreachable" is not "stopped"
    /// (a firewall, a cut link, a full connection table), and the daemon
    /// beside the node reaches it without the network. An error with a
    /// status means that daemon answered and could not stop it.
    async fn stop_within(&self, node: &str, budget: Duration) -> Result<NodeState, PeerError> {
        let timed_out = || PeerError {
            status: None,
            unreachable: false,
            code: None,
            message: format!("the stop was not confirmed within {}s", budget.as_secs()),
        };
        if node == self.config.local_node {
            return match tokio::time::timeout(budget, local_node_action(&self.config, "stop")).await
            {
                Ok(r) => r.map_err(|message| PeerError {
                    status: Some(503),
                    unreachable: false,
                    code: None,
                    message,
                }),
                Err(_) => Err(timed_out()),
            };
        }
        let url = format!("{}/v1/node/stop", self.api_of(node)?);
        let request = self.http.post(&url).json(&serde_json::json!({}));
        let v = tokio::time::timeout(budget, self.send(request, &url))
            .await
            .map_err(|_| timed_out())??;
        serde_json::from_value(v).map_err(|e| PeerError {
            status: None,
            unreachable: false,
            code: None,
            message: format!("{url} answered unexpectedly: {e}"),
        })
    }

    /// POSTs JSON to another daemon with the API token.
    async fn post(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, PeerError> {
        self.send(self.http.post(url).json(body), url).await
    }

    /// Forwards a request to another daemon and returns its status and body
    /// as they are (a rejoin runs on the rejoining node's own daemon).
    async fn forward(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(u16, serde_json::Value), String> {
        let mut req = self.http.post(url).json(body).timeout(timeout);
        if let Some(t) = &self.secrets.api_token {
            req = req.bearer_auth(t.expose());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {}", error_chain(&e)))?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(serde_json::Value::Null)))
    }

    /// GETs JSON from another daemon.
    async fn get(&self, url: &str) -> Result<serde_json::Value, PeerError> {
        self.send(self.http.get(url).timeout(Duration::from_secs(3)), url)
            .await
    }

    fn switch_application_config(
        &self,
        operation: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, String> {
        let app = self
            .config
            .application
            .as_ref()
            .ok_or("no application configured")?;
        appconfig::switch(app, operation, host, port)
    }

    fn config_file_blocker(&self) -> Option<String> {
        appconfig::blocker(self.config.application.as_ref()?)
    }

    fn shadows(&self) -> Vec<Shadow> {
        appconfig::shadows(&self.config)
    }

    async fn follow(&self, replica: &str, primary: &str) -> Result<String, String> {
        if replica == self.config.local_node {
            return replica::follow_local(&self.config, self, primary).await;
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

    /// Whether `host`'s daemon answers at all (`/livez`, a short timeout).
    /// This daemon's own host always does.
    async fn pgbouncer_here(
        &self,
        action: &pgbouncer::Action,
    ) -> Result<pgbouncer::Report, String> {
        self.run_pgbouncer_here(action).await
    }

    async fn pgbouncer_on(
        &self,
        host: &str,
        action: &pgbouncer::Action,
    ) -> Result<pgbouncer::Report, PeerError> {
        self.run_pgbouncer_on(host, action).await
    }

    async fn daemon_answers(&self, host: &str) -> bool {
        if host == self.config.local_node {
            return true;
        }
        let Ok(api) = self.api_of(host) else {
            return false;
        };
        let url = format!("{api}/livez");
        let timeout = self.config.poll.timeout.max(Duration::from_secs(1));
        // Any answer, even 503 (a loop behind), is a daemon that answers.
        self.http.get(&url).timeout(timeout).send().await.is_ok()
    }

    /// Whether the application runs on `host`: asked here for this daemon's
    /// own host, else of that host's daemon.
    async fn app_status_on(&self, host: &str) -> Result<Answer, PeerError> {
        let app = self.application()?;
        if host == self.config.local_node {
            return Ok(app::status(app).await);
        }
        let v = self.app_call(host, "status", serde_json::json!({})).await?;
        let wire: app::WireAnswer =
            serde_json::from_value(v["running"].clone()).map_err(|e| PeerError {
                status: None,
                unreachable: false,
                code: None,
                message: format!(
                    "{host}'s daemon answered the application status unexpectedly: {e}"
                ),
            })?;
        Ok(wire.to_answer())
    }

    /// Runs the application's `which` command on `host`.
    async fn app_command_on(
        &self,
        host: &str,
        which: app::AppCommand,
    ) -> Result<String, PeerError> {
        let app = self.application()?;
        if host == self.config.local_node {
            return app::run(app, which).await.map_err(|message| PeerError {
                status: Some(503),
                unreachable: false,
                code: None,
                message,
            });
        }
        let v = self
            .app_call(host, which.as_str(), serde_json::json!({}))
            .await?;
        Ok(v["message"].as_str().unwrap_or("done").to_owned())
    }

    /// `application.health_url`, asked on `host` (it names the instance there).
    async fn app_healthy_on(&self, host: &str) -> Result<Answer, PeerError> {
        let app = self.application()?;
        if host == self.config.local_node {
            return Ok(app::healthy(app, &self.http).await);
        }
        let v = self.app_call(host, "health", serde_json::json!({})).await?;
        let wire: app::WireAnswer =
            serde_json::from_value(v["healthy"].clone()).map_err(|e| PeerError {
                status: None,
                unreachable: false,
                code: None,
                message: format!(
                    "{host}'s daemon answered the application health unexpectedly: {e}"
                ),
            })?;
        Ok(wire.to_answer())
    }

    /// Points the application's config file on `host` at `db_host:db_port`;
    /// `Ok(false)` when it already did.
    async fn app_config_on(
        &self,
        host: &str,
        operation: &str,
        db_host: &str,
        db_port: u16,
    ) -> Result<bool, PeerError> {
        if host == self.config.local_node {
            return self
                .switch_application_config(operation, db_host, db_port)
                .map_err(|message| PeerError {
                    status: Some(503),
                    unreachable: false,
                    code: None,
                    message,
                });
        }
        let body = serde_json::json!({"operation": operation, "host": db_host, "port": db_port});
        let v = self.app_call(host, "config", body).await?;
        v["changed"].as_bool().ok_or_else(|| PeerError {
            status: None,
            unreachable: false,
            code: None,
            message: format!("{host}'s daemon answered the config switch unexpectedly: {v}"),
        })
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut s = e.source();
    while let Some(x) = s {
        out.push_str(": ");
        out.push_str(&x.to_string());
        s = x.source();
    }
    out
}
