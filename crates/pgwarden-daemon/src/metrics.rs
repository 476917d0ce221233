//! The Prometheus metrics of one daemon, computed from the [`ClusterView`].
//!
//! The poll loop calls [`Metrics::update`] after every poll and
//! [`Metrics::render`] right after, and the text is cached: a scrape only
//! copies bytes and never waits on PostgreSQL (or on a lock held across I/O).
//! Series that describe "is X there" (replication_connected/sync of every
//! configured standby) are always exported, as 0 when missing, so that an
//! alert on `== 0` fires instead of a series silently vanishing.
//!
//! The process metrics (`process_resident_memory_bytes`, ...) live in a
//! second registry without the `pgwarden_` prefix, so that they carry the
//! names every Prometheus dashboard expects; `render` concatenates both.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgwarden_core::view::{ClusterView, Role};
use pgwarden_core::Config;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric of the daemon, and the registry that owns them.
pub struct Metrics {
    registry: Registry,
    /// `process_*` of this process, unprefixed.
    process: Registry,
    node_info: IntGaugeVec,
    last_poll_timestamp_seconds: GaugeVec,
    node_up: IntGaugeVec,
    node_is_primary: IntGaugeVec,
    /// The role the view gives each node (primary, standby, replica,
    /// unknown): tells a `role: replica` node's series from the pair's.
    node_role: IntGaugeVec,
    /// Client sessions on each node, as an HA dashboard lists them.
    node_sessions: IntGaugeVec,
    /// 1 for a node configured `role: replica`, from the config, so
    /// alerts about the pair leave replicas out even while they are down.
    node_replica: IntGaugeVec,
    node_timeline: IntGaugeVec,
    node_wal_lsn_bytes: GaugeVec,
    node_replay_delay_seconds: GaugeVec,
    replication_connected: IntGaugeVec,
    replication_sync: IntGaugeVec,
    replication_lag_bytes: GaugeVec,
    replication_lag_seconds: GaugeVec,
    slot_active: IntGaugeVec,
    slot_retained_wal_bytes: GaugeVec,
    slot_safe_wal_size_bytes: GaugeVec,
    sync_standby_names_set: IntGaugeVec,
    backends_waiting_sync_rep: IntGaugeVec,
    split_brain: IntGauge,
    cluster_healthy: IntGauge,
    problem: IntGaugeVec,
    poll_duration_seconds: HistogramVec,
    poll_errors_total: IntCounterVec,
    operation_in_progress: IntGauge,
    operations_total: IntCounterVec,
    last_operation_duration_seconds: GaugeVec,
    application_fenced: IntGauge,
    /// The running step's long work (a rejoin's copy): bytes done/total,
    /// rate, ETA; a series only for a figure that is known.
    operation_progress_bytes: GaugeVec,
    operation_progress_rate: GaugeVec,
    operation_progress_eta: GaugeVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    /// Registers every metric under the `pgwarden_` prefix with the constant
    /// label `cluster`.
    pub fn new(config: &Config) -> Metrics {
        let labels: std::collections::HashMap<String, String> =
            [("cluster".to_owned(), config.cluster.clone())]
                .into_iter()
                .collect();
        let registry = Registry::new_custom(Some("pgwarden".into()), Some(labels.clone()))
            .expect("static registry options are valid");
        let process =
            Registry::new_custom(None, Some(labels)).expect("static registry options are valid");
        #[cfg(target_os = "linux")]
        process
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metric names are unique");
        macro_rules! reg {
            ($metric:expr) => {{
                let m = $metric.expect("static metric definitions are valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let node = &["node"];
        let standby = &["node", "standby"];
        let m = Metrics {
            node_info: reg!(IntGaugeVec::new(opts("node_info", "Always 1 for each polled node: its server_version (server_version_num) and system_identifier from the last successful poll."), &["node", "server_version", "system_identifier"])),
            last_poll_timestamp_seconds: reg!(GaugeVec::new(opts("last_poll_timestamp_seconds", "Unix time of the last successful poll of the node (absent until one succeeded)."), node)),
            node_up: reg!(IntGaugeVec::new(opts("node_up", "1 unless the node missed poll.failure_threshold polls in a row."), node)),
            node_is_primary: reg!(IntGaugeVec::new(opts("node_is_primary", "1 when the node is up and not in recovery."), node)),
            node_role: reg!(IntGaugeVec::new(opts("node_role", "1 for the node's role by the last poll: primary, standby (of the pair), replica (a role: replica node in recovery) or unknown."), &["node", "role"])),
            node_replica: reg!(IntGaugeVec::new(opts("node_replica", "1 for a node configured `role: replica` (an asynchronous read-only replica beside the pair), else 0; from the config, always exported."), node)),
            node_sessions: reg!(IntGaugeVec::new(opts("node_sessions", "Client sessions (client backends of every role) on the node at the last poll."), node)),
            node_timeline: reg!(IntGaugeVec::new(opts("node_timeline", "Timeline the node writes (primary) or receives (standby)."), node)),
            node_wal_lsn_bytes: reg!(GaugeVec::new(opts("node_wal_lsn_bytes", "WAL position in bytes: current (primary), receive and replay (standby)."), &["node", "kind"])),
            node_replay_delay_seconds: reg!(GaugeVec::new(opts("node_replay_delay_seconds", "Standby: 0 when all received WAL is replayed, else the age of the last replayed transaction."), node)),
            replication_connected: reg!(IntGaugeVec::new(opts("replication_connected", "1 when the standby streams from this node (pg_stat_replication state = streaming)."), standby)),
            replication_sync: reg!(IntGaugeVec::new(opts("replication_sync", "1 when the standby's sync_state is sync."), standby)),
            replication_lag_bytes: reg!(GaugeVec::new(opts("replication_lag_bytes", "Bytes the standby is behind this node's current WAL position."), &["node", "standby", "kind"])),
            replication_lag_seconds: reg!(GaugeVec::new(opts("replication_lag_seconds", "write_lag / flush_lag / replay_lag of pg_stat_replication."), &["node", "standby", "kind"])),
            slot_active: reg!(IntGaugeVec::new(opts("slot_active", "1 when a standby uses the replication slot."), &["node", "slot"])),
            slot_retained_wal_bytes: reg!(GaugeVec::new(opts("slot_retained_wal_bytes", "WAL the slot holds back, in bytes."), &["node", "slot"])),
            slot_safe_wal_size_bytes: reg!(GaugeVec::new(opts("slot_safe_wal_size_bytes", "Bytes that can be written before the slot loses WAL (absent when unlimited)."), &["node", "slot"])),
            sync_standby_names_set: reg!(IntGaugeVec::new(opts("sync_standby_names_set", "1 when synchronous_standby_names is not empty."), node)),
            backends_waiting_sync_rep: reg!(IntGaugeVec::new(opts("backends_waiting_sync_rep", "Sessions whose commit waits for the synchronous standby (writes blocked)."), node)),
            split_brain: reg!(IntGauge::with_opts(opts("split_brain", "1 when more than one node accepts writes."))),
            cluster_healthy: reg!(IntGauge::with_opts(opts("cluster_healthy", "1 when /health answers 200 (no critical problem)."))),
            problem: reg!(IntGaugeVec::new(opts("problem", "1 for each current problem, by code, node and severity (see docs/metrics.md)."), &["code", "node", "severity"])),
            poll_duration_seconds: reg!(HistogramVec::new(
                HistogramOpts::new("poll_duration_seconds", "Duration of one poll of one node (connect + query).")
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
                node,
            )),
            poll_errors_total: reg!(IntCounterVec::new(opts("poll_errors_total", "Polls of the node that failed."), node)),
            operation_in_progress: reg!(IntGauge::with_opts(opts("operation_in_progress", "1 while a failover, switchover or rejoin runs."))),
            operations_total: reg!(IntCounterVec::new(opts("operations_total", "Finished operations by kind and result."), &["kind", "result"])),
            application_fenced: reg!(IntGauge::with_opts(opts("application_fenced", "1 while an operation holds the application stopped (between fence_application and start_application)."))),
            operation_progress_bytes: reg!(GaugeVec::new(opts("operation_progress_bytes", "Bytes done (kind=done) and to do in all (kind=total) by the running step's long work (a rejoin's pg_basebackup), as its source shows it; absent when not known."), &["operation", "step", "kind"])),
            operation_progress_rate: reg!(GaugeVec::new(opts("operation_progress_rate_bytes_per_second", "Rate of the running step's long work over the last 20 s; absent when not known."), &["operation", "step"])),
            operation_progress_eta: reg!(GaugeVec::new(opts("operation_progress_eta_seconds", "Seconds the running step's long work needs at its current rate; absent when not known."), &["operation", "step"])),
            last_operation_duration_seconds: reg!(GaugeVec::new(opts("last_operation_duration_seconds", "Duration of the last finished operation of each kind."), &["kind"])),
            registry,
            process,
        };
        let build = reg_build_info(&m.registry);
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("PGWARDEN_GIT_REVISION")])
            .set(1);
        for n in &config.nodes {
            // Counters and histograms exist from the start, so rate() works
            // from the first scrape.
            m.poll_errors_total.with_label_values(&[&n.name]);
            m.node_replica
                .with_label_values(&[&n.name])
                .set(i64::from(n.is_replica()));
        }
        m
    }

    /// Records one poll of `node` (success or failure).
    pub fn observe_poll(&self, node: &str, took: Duration, failed: bool) {
        self.poll_duration_seconds
            .with_label_values(&[node])
            .observe(took.as_secs_f64());
        if failed {
            self.poll_errors_total.with_label_values(&[node]).inc();
        } else {
            // The wall clock, not the poll's own timing: an alert compares
            // it with Prometheus's time() to see a poll loop that stopped
            // while the cached metrics still look fine.
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.last_poll_timestamp_seconds
                .with_label_values(&[node])
                .set(now);
        }
    }

    /// Sets every gauge from `view`, dropping series that no longer exist.
    pub fn update(&self, config: &Config, view: &ClusterView) {
        for vec in [
            &self.node_info,
            &self.node_up,
            &self.node_is_primary,
            &self.node_role,
            &self.node_sessions,
            &self.node_timeline,
            &self.replication_connected,
            &self.replication_sync,
            &self.slot_active,
            &self.sync_standby_names_set,
            &self.backends_waiting_sync_rep,
            &self.problem,
        ] {
            vec.reset();
        }
        for vec in [
            &self.node_wal_lsn_bytes,
            &self.node_replay_delay_seconds,
            &self.replication_lag_bytes,
            &self.replication_lag_seconds,
            &self.slot_retained_wal_bytes,
            &self.slot_safe_wal_size_bytes,
        ] {
            vec.reset();
        }

        for n in &view.nodes {
            let name = n.name.as_str();
            self.node_up
                .with_label_values(&[name])
                .set(i64::from(!n.down));
            self.node_is_primary
                .with_label_values(&[name])
                .set(i64::from(n.role == Role::Primary));
            self.node_role
                .with_label_values(&[name, n.role.as_str()])
                .set(1);
            let Some(s) = &n.snapshot else { continue };
            self.node_sessions
                .with_label_values(&[name])
                .set(i64::from(s.sessions_by_role.values().sum::<u32>()));
            self.node_info
                .with_label_values(&[
                    name,
                    &s.server_version.to_string(),
                    &s.system_identifier.to_string(),
                ])
                .set(1);
            self.node_timeline
                .with_label_values(&[name])
                .set(i64::from(s.timeline));
            for (kind, lsn) in [
                ("current", s.current_lsn),
                ("receive", s.receive_lsn),
                ("replay", s.replay_lsn),
            ] {
                if let Some(lsn) = lsn {
                    self.node_wal_lsn_bytes
                        .with_label_values(&[name, kind])
                        .set(lsn.0 as f64);
                }
            }
            if let Some(d) = s.replay_delay_seconds {
                self.node_replay_delay_seconds
                    .with_label_values(&[name])
                    .set(d);
            }
            self.sync_standby_names_set
                .with_label_values(&[name])
                .set(i64::from(
                    !s.settings.synchronous_standby_names.trim().is_empty(),
                ));
            self.backends_waiting_sync_rep
                .with_label_values(&[name])
                .set(i64::from(s.backends_waiting_sync_rep));
            for slot in &s.slots {
                let l = [name, slot.slot_name.as_str()];
                self.slot_active
                    .with_label_values(&l)
                    .set(i64::from(slot.active));
                if let Some(r) = slot.retained_bytes {
                    self.slot_retained_wal_bytes
                        .with_label_values(&l)
                        .set(r as f64);
                }
                if let Some(safe) = slot.safe_wal_size {
                    self.slot_safe_wal_size_bytes
                        .with_label_values(&l)
                        .set(safe as f64);
                }
            }
            if n.role == Role::Primary {
                // Every configured standby gets a series, streaming or not.
                for other in config.nodes.iter().filter(|o| o.name != n.name) {
                    let l = [name, other.name.as_str()];
                    self.replication_connected.with_label_values(&l).set(0);
                    self.replication_sync.with_label_values(&l).set(0);
                }
            }
            for link in &n.replication {
                let l = [name, link.standby.as_str()];
                self.replication_connected
                    .with_label_values(&l)
                    .set(i64::from(link.streaming));
                self.replication_sync
                    .with_label_values(&l)
                    .set(i64::from(link.sync));
                let b = link.lag_bytes;
                for (kind, v) in [
                    ("sent", b.sent),
                    ("write", b.write),
                    ("flush", b.flush),
                    ("replay", b.replay),
                ] {
                    self.replication_lag_bytes
                        .with_label_values(&[name, &link.standby, kind])
                        .set(v as f64);
                }
                let r = &link.row;
                for (kind, v) in [
                    ("write", r.write_lag_seconds),
                    ("flush", r.flush_lag_seconds),
                    ("replay", r.replay_lag_seconds),
                ] {
                    // NULL lag means "caught up and idle" in pg_stat_replication.
                    self.replication_lag_seconds
                        .with_label_values(&[name, &link.standby, kind])
                        .set(v.unwrap_or(0.0));
                }
            }
        }
        let split = view
            .problems
            .iter()
            .any(|p| p.code == pgwarden_core::ProblemCode::SplitBrain);
        self.split_brain.set(i64::from(split));
        self.cluster_healthy.set(i64::from(view.healthy));
        for p in &view.problems {
            let severity = match p.severity {
                pgwarden_core::health::Severity::Critical => "critical",
                pgwarden_core::health::Severity::Warning => "warning",
            };
            self.problem
                .with_label_values(&[p.code.as_str(), p.node.as_deref().unwrap_or(""), severity])
                .set(1);
        }
    }

    /// Operation gauges, set by the operation manager at every transition.
    pub fn set_operation(&self, in_progress: bool, fenced: bool) {
        self.operation_in_progress.set(i64::from(in_progress));
        self.application_fenced.set(i64::from(fenced));
    }

    /// The progress of `step` of a running `operation` (a kind), or none:
    /// every figure not known has no series, so unknown never reads as 0.
    pub fn set_progress(
        &self,
        operation: &str,
        step: pgwarden_core::operation::StepName,
        p: Option<&pgwarden_core::progress::Progress>,
    ) {
        self.operation_progress_bytes.reset();
        self.operation_progress_rate.reset();
        self.operation_progress_eta.reset();
        let Some(p) = p else { return };
        let step = serde_json::to_value(step)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        for (kind, v) in [("done", p.bytes_done), ("total", p.bytes_total)] {
            if let Some(v) = v {
                self.operation_progress_bytes
                    .with_label_values(&[operation, &step, kind])
                    .set(v as f64);
            }
        }
        if let Some(r) = p.rate_bytes_per_s {
            self.operation_progress_rate
                .with_label_values(&[operation, &step])
                .set(r);
        }
        if let Some(e) = p.eta_s {
            self.operation_progress_eta
                .with_label_values(&[operation, &step])
                .set(e);
        }
    }

    /// Counts a finished operation; `took` is None for an abort.
    pub fn operation_finished(&self, kind: &str, result: &str, took: Option<Duration>) {
        self.operations_total
            .with_label_values(&[kind, result])
            .inc();
        if let Some(t) = took {
            self.last_operation_duration_seconds
                .with_label_values(&[kind])
                .set(t.as_secs_f64());
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        TextEncoder::new()
            .encode(&families, &mut buf)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

fn reg_build_info(registry: &Registry) -> IntGaugeVec {
    let g = IntGaugeVec::new(
        opts(
            "build_info",
            "Always 1; version and revision (git commit at build time, or unknown) say which pgwarden runs.",
        ),
        &["version", "revision"],
    )
    .expect("static metric definition is valid");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::fake::{FakeWorld, CONFIG};

    fn rendered(w: &FakeWorld) -> String {
        let config = w.config();
        let m = Metrics::new(&config);
        m.update(&config, &w.view());
        m.render()
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "no line `{line}` in:\n{}",
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// pg-a primary, pg-b its streaming synchronous standby; the fake
    /// world lists no replication slot, so slot_missing is the view's one
    /// problem, and a series.
    #[test]
    fn metrics_of_a_streaming_pair_come_from_the_view() {
        let w = FakeWorld::new(Config::parse_str("fake.yaml", CONFIG).unwrap());
        let t = rendered(&w);
        has(&t, r#"pgwarden_node_up{node="pg-a",cluster="test"} 1"#);
        has(&t, r#"pgwarden_node_up{node="pg-b",cluster="test"} 1"#);
        has(
            &t,
            r#"pgwarden_node_is_primary{node="pg-a",cluster="test"} 1"#,
        );
        has(
            &t,
            r#"pgwarden_node_is_primary{node="pg-b",cluster="test"} 0"#,
        );
        has(
            &t,
            r#"pgwarden_node_role{node="pg-b",role="standby",cluster="test"} 1"#,
        );
        has(
            &t,
            r#"pgwarden_node_timeline{node="pg-a",cluster="test"} 1"#,
        );
        has(
            &t,
            r#"pgwarden_node_wal_lsn_bytes{kind="current",node="pg-a",cluster="test"} 50331648"#,
        );
        has(
            &t,
            r#"pgwarden_node_sessions{node="pg-a",cluster="test"} 2"#,
        );
        has(
            &t,
            r#"pgwarden_sync_standby_names_set{node="pg-a",cluster="test"} 1"#,
        );
        has(
            &t,
            r#"pgwarden_replication_connected{node="pg-a",standby="pg-b",cluster="test"} 1"#,
        );
        has(
            &t,
            r#"pgwarden_replication_sync{node="pg-a",standby="pg-b",cluster="test"} 1"#,
        );
        has(&t, r#"pgwarden_split_brain{cluster="test"} 0"#);
        has(
            &t,
            r#"pgwarden_problem{code="slot_missing",node="pg-a",severity="critical",cluster="test"} 1"#,
        );
        has(&t, r#"pgwarden_cluster_healthy{cluster="test"} 0"#);
    }

    /// The standby down: its series say so, and the primary's "is the
    /// standby there" series stay, at 0, so that alerts on `== 0` fire.
    #[test]
    fn a_standby_that_is_down_is_zero_not_absent() {
        let w = FakeWorld::new(Config::parse_str("fake.yaml", CONFIG).unwrap());
        w.with(|w| w.nodes.get_mut("pg-b").unwrap().running = false);
        let t = rendered(&w);
        has(&t, r#"pgwarden_node_up{node="pg-b",cluster="test"} 0"#);
        has(
            &t,
            r#"pgwarden_replication_connected{node="pg-a",standby="pg-b",cluster="test"} 0"#,
        );
        has(
            &t,
            r#"pgwarden_replication_sync{node="pg-a",standby="pg-b",cluster="test"} 0"#,
        );
        has(&t, r#"pgwarden_cluster_healthy{cluster="test"} 0"#);
        has(
            &t,
            r#"pgwarden_problem{code="node_down",node="pg-b",severity="critical",cluster="test"} 1"#,
        );
        assert!(
            !t.contains(r#"pgwarden_node_timeline{node="pg-b",cluster="test"}"#),
            "no timeline for a node that did not answer"
        );
    }

    /// Two writable nodes: split_brain is 1 and so is the problem.
    #[test]
    fn two_primaries_are_a_split_brain() {
        let w = FakeWorld::new(Config::parse_str("fake.yaml", CONFIG).unwrap());
        w.with(|w| w.nodes.get_mut("pg-b").unwrap().in_recovery = false);
        let t = rendered(&w);
        has(&t, r#"pgwarden_split_brain{cluster="test"} 1"#);
        has(
            &t,
            r#"pgwarden_node_is_primary{node="pg-b",cluster="test"} 1"#,
        );
        has(&t, r#"pgwarden_cluster_healthy{cluster="test"} 0"#);
    }
}
