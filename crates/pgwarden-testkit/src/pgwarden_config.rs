//! Writes pgwarden configs for a [`TestCluster`]: one per node, each daemon
//! listening on its own loopback port, as a real deployment would have.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::{Secret, TestCluster};
use crate::util::is_root;

/// The pieces of a pgwarden config that differ between tests.
#[derive(Clone, Debug)]
pub struct DaemonLayout {
    /// HTTP port of the daemon beside each node, in node order.
    pub api_ports: Vec<u16>,
    pub poll_interval: Duration,
    pub poll_timeout: Duration,
    pub failure_threshold: u32,
    /// Extra YAML appended at the end (e.g. an `application:` section).
    pub extra: String,
    /// YAML lines appended to every entry of `nodes:` (`    sslmode: verify-full`).
    pub node_extra: String,
}

impl DaemonLayout {
    /// Free ports for every node, polls every 250 ms (tests wait for a few polls).
    pub fn for_tests(cluster: &TestCluster) -> DaemonLayout {
        DaemonLayout {
            api_ports: cluster.nodes().iter().map(|_| crate::free_port()).collect(),
            poll_interval: Duration::from_millis(250),
            poll_timeout: Duration::from_millis(1000),
            failure_threshold: 3,
            extra: String::new(),
            node_extra: String::new(),
        }
    }

    pub fn api_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.api_ports[i])
    }
}

/// The YAML of the daemon beside node `local`.
pub fn pgwarden_config(cluster: &TestCluster, local: usize, layout: &DaemonLayout) -> String {
    let c = cluster.credentials();
    let o = cluster.options();
    let file = |s: Secret| cluster.secret_file(s).display().to_string();
    let mut y = String::new();
    y.push_str(&format!(
        "# Written by pgwarden-testkit for the daemon beside {name}.\n\
         cluster: {cluster}\n\
         local_node: {name}\n\
         listen: 127.0.0.1:{port}\n\
         state_dir: {state}\n\
         api_token_file: {token}\n\
         poll:\n  interval: {interval}\n  timeout: {timeout}\n  failure_threshold: {threshold}\n\
         monitor:\n  user: {muser}\n  password_file: {mpw}\n  dbname: postgres\n\
         replication:\n  slot: {slot}\n  application_name: {app}\n  user: {ruser}\n  password_file: {rpw}\n\
         nodes:\n",
        name = cluster.node(local).name,
        cluster = "demo",
        port = layout.api_ports[local],
        state = state_dir(cluster, local).display(),
        token = file(Secret::ApiToken),
        interval = humantime(layout.poll_interval),
        timeout = humantime(layout.poll_timeout),
        threshold = layout.failure_threshold,
        muser = c.monitor_user,
        mpw = file(Secret::MonitorPassword),
        slot = o.slot,
        app = o.application_name,
        ruser = c.replication_user,
        rpw = file(Secret::ReplicationPassword),
    ));
    for (i, n) in cluster.nodes().iter().enumerate() {
        let pg_ctl = cluster.bin_dir().join("pg_ctl").display().to_string();
        let data = n.data_dir.display().to_string();
        let log = n.log_file.display().to_string();
        // -W: pg_ctl returns at once; pgwarden verifies the stop itself by
        // reading pg_control every 10 ms (pg_ctl -w polls every 100 ms).
        let stop = as_server_user(&[&pg_ctl, "-D", &data, "-W", "-m", "fast", "stop"]);
        // The node's identity (port, socket) on its command line, as a
        // per-node unit would have it: a clone's postgresql.conf is the
        // primary's and must not decide which port this node listens on.
        let identity = format!("-p {} -k {}", n.port, n.socket_dir.display());
        let start = as_server_user(&[
            &pg_ctl, "-D", &data, "-o", &identity, "-w", "-t", "60", "-l", &log, "start",
        ]);
        y.push_str(&format!(
            "  - name: {}\n    host: {}\n    port: {}\n    api: {}\n    data_dir: {}\n    bin_dir: {}\n    stop: {}\n    start: {}\n{}",
            n.name,
            n.host,
            n.port,
            layout.api_url(i),
            data,
            cluster.bin_dir().display(),
            yaml_list(&stop),
            yaml_list(&start),
            // The data directory belongs to postgres: the rebuild tools run as it.
            if is_root() { "    os_user: postgres\n" } else { "" },
        ));
        if cluster.is_replica(i) {
            y.push_str("    role: replica\n");
        }
        y.push_str(&layout.node_extra);
    }
    y.push_str(&layout.extra);
    y
}

/// `<cluster dir>/pgwarden/<node>`: the daemon's state_dir.
pub fn state_dir(cluster: &TestCluster, i: usize) -> PathBuf {
    cluster.dir().join("pgwarden").join(&cluster.node(i).name)
}

/// Writes the config of node `i`'s daemon to `<cluster dir>/pgwarden/<node>.yaml`.
pub fn write_pgwarden_config(
    cluster: &TestCluster,
    i: usize,
    layout: &DaemonLayout,
) -> std::io::Result<PathBuf> {
    let dir = cluster.dir().join("pgwarden");
    std::fs::create_dir_all(state_dir(cluster, i))?;
    let path = dir.join(format!("{}.yaml", cluster.node(i).name));
    write(&path, &pgwarden_config(cluster, i, layout))?;
    Ok(path)
}

/// PostgreSQL refuses to run as root: as root, commands go through runuser.
fn as_server_user(argv: &[&str]) -> Vec<String> {
    let prefix: &[&str] = if is_root() {
        &["runuser", "-u", "postgres", "--"]
    } else {
        &[]
    };
    prefix.iter().chain(argv).map(|s| s.to_string()).collect()
}

/// A YAML flow list of double-quoted strings.
pub fn yaml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", quoted.join(", "))
}

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

fn humantime(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
