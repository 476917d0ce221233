//! Figure 2: round trips per poll, counted by PostgreSQL itself.
//!
//! Every poll is one simple-protocol statement, hence one transaction, on the daemon's
//! persistent connection to database `postgres`. So the growth of
//! `pg_stat_database.xact_commit` of `postgres` over a window, divided by the polls the
//! daemon counted in the same window (`pgwarden_poll_duration_seconds_count`), is the
//! number of transactions (≈ round trips) per poll. psql reads the counter while
//! connected to database `inmanta`, so its own transactions land elsewhere.
//!
//! The only other client of `postgres` on an idle cluster is autovacuum: on the primary
//! its worker visits every database once per `autovacuum_naptime` (1 min) and commits 2
//! transactions there. [`quiet_autovacuum`] switches it off for the bench.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use pgwarden_testkit::TestCluster;
use tokio::runtime::Runtime;

use crate::load::get_once;

const COUNTERS_SQL: &str =
    "SELECT xact_commit, sessions FROM pg_stat_database WHERE datname = 'postgres'";

/// The counters of one moment, per node in node order.
pub struct Counters {
    xact_commit: Vec<u64>,
    sessions: Vec<u64>,
    polls: Vec<u64>,
    poll_errors: Vec<u64>,
}

/// The growth of the counters of one node over the window.
pub struct NodeRoundTrips {
    pub node: String,
    pub transactions: u64,
    pub polls: u64,
    pub poll_errors: u64,
    /// Sessions opened on database `postgres`: 0 when the daemon kept its connection.
    pub new_sessions: u64,
}

impl NodeRoundTrips {
    pub fn per_poll(&self) -> f64 {
        self.transactions as f64 / self.polls.max(1) as f64
    }

    /// PostgreSQL flushes a backend's counters at most once a second, so each end of
    /// the window may miss the latest poll: the transaction count is good to ±1.
    pub fn uncertainty(&self) -> f64 {
        1.0 / self.polls.max(1) as f64
    }
}

/// Switches autovacuum off on the primary (the standby runs none), so that its visits do
/// not count as the daemon's transactions. Reloaded at once; the cluster is thrown away
/// after the bench.
pub fn quiet_autovacuum(cluster: &TestCluster) -> Result<()> {
    // Two calls: ALTER SYSTEM refuses to run inside a multi-statement transaction.
    cluster.psql(0, "ALTER SYSTEM SET autovacuum = off")?;
    cluster.psql(0, "SELECT pg_reload_conf()")?;
    Ok(())
}

/// Reads every node's counters with psql, then the daemon's poll counters from /metrics.
pub fn read_counters(
    rt: &Runtime,
    cluster: &TestCluster,
    addr: SocketAddr,
    names: &[String],
) -> Result<Counters> {
    let mut c = Counters {
        xact_commit: Vec::new(),
        sessions: Vec::new(),
        polls: Vec::new(),
        poll_errors: Vec::new(),
    };
    for i in 0..names.len() {
        let row = cluster.psql_db(i, "inmanta", COUNTERS_SQL)?;
        let (xacts, sessions) = row
            .split_once('|')
            .and_then(|(x, s)| Some((x.parse().ok()?, s.parse().ok()?)))
            .with_context(|| format!("unexpected pg_stat_database row {row:?}"))?;
        c.xact_commit.push(xacts);
        c.sessions.push(sessions);
    }
    let (status, body) = get_once(rt, addr, "/metrics")?;
    if status != 200 {
        bail!("GET /metrics answered {status}");
    }
    let text = String::from_utf8_lossy(&body);
    for name in names {
        let polls = metric_value(&text, "pgwarden_poll_duration_seconds_count", name)?;
        c.polls.push(polls);
        c.poll_errors
            .push(metric_value(&text, "pgwarden_poll_errors_total", name)?);
    }
    Ok(c)
}

/// The value of the sample `name{...,node="<node>",...}` in Prometheus text format.
fn metric_value(text: &str, name: &str, node: &str) -> Result<u64> {
    let prefix = format!("{name}{{");
    let label = format!("node=\"{node}\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.split_once("} "))
        .find(|(labels, _)| labels.split(',').any(|kv| kv == label))
        .and_then(|(_, value)| value.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .with_context(|| format!("no {name}{{{label}}} in /metrics"))
}

pub fn round_trips(names: &[String], before: &Counters, after: &Counters) -> Vec<NodeRoundTrips> {
    let growth = |a: &[u64], b: &[u64], i: usize| b[i].saturating_sub(a[i]);
    names
        .iter()
        .enumerate()
        .map(|(i, name)| NodeRoundTrips {
            node: name.clone(),
            transactions: growth(&before.xact_commit, &after.xact_commit, i),
            polls: growth(&before.polls, &after.polls, i),
            poll_errors: growth(&before.poll_errors, &after.poll_errors, i),
            new_sessions: growth(&before.sessions, &after.sessions, i),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_value_picks_the_node() {
        let text = "# HELP x\n\
            pgwarden_poll_duration_seconds_count{cluster=\"demo\",node=\"pg-a\"} 12\n\
            pgwarden_poll_duration_seconds_count{cluster=\"demo\",node=\"pg-b\"} 11\n";
        let v = |node| metric_value(text, "pgwarden_poll_duration_seconds_count", node);
        assert_eq!(v("pg-a").unwrap(), 12);
        assert_eq!(v("pg-b").unwrap(), 11);
        assert!(v("pg-c").is_err());
    }
}
