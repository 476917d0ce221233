//! The pgwarden config of a daemon on a [`Testbed`] host: the sibling of
//! `pgwarden_config.rs` (loopback) for hosts with their own addresses and their own
//! `/etc`. Every path the daemon reads is its host's `/etc/pgwarden/...`, every address
//! a host's `192.0.2.X`, and the ports are the production ones (5432, 8008).

use crate::pgwarden_config::yaml_list;
use crate::testbed::{DaemonUser, Host, Testbed, API_PORT, APP_CONFIG};

/// The YAML of the daemon on `host` (a, b, r1 or r2).
pub(crate) fn daemon_config(tb: &Testbed, host: Host) -> String {
    let local = host
        .node()
        .expect("only the hosts of nodes (a, b, r1, r2) run a daemon");
    let opts = tb.options();
    let c = tb.credentials();
    let root = opts.daemon_user == DaemonUser::Root;
    let mut y = format!(
        "# Written by pgwarden-testkit for the daemon on testbed host {host:?}.\n\
         cluster: testbed\n\
         local_node: {name}\n\
         listen: {addr}:{API_PORT}\n\
         state_dir: {state}\n\
         api_token_file: /etc/pgwarden/api.token\n\
         poll:\n  interval: {interval}ms\n  timeout: {timeout}ms\n  failure_threshold: {threshold}\n\
         monitor:\n  user: {muser}\n  password_file: /etc/pgwarden/monitor.password\n  dbname: postgres\n\
         replication:\n  slot: replication\n  application_name: inmanta\n  user: {ruser}\n  \
         password_file: /etc/pgwarden/replication.password\n\
         nodes:\n",
        name = tb.node(local).name,
        addr = host.addr(),
        state = tb.state_dir(host).display(),
        interval = opts.poll_interval.as_millis(),
        timeout = opts.poll_timeout.as_millis(),
        threshold = opts.failure_threshold,
        muser = c.monitor_user,
        ruser = c.replication_user,
    );
    let pg_ctl = tb.bin_dir().join("pg_ctl").display().to_string();
    for (i, n) in tb.nodes().iter().enumerate() {
        let data = n.data_dir.display().to_string();
        let log = n.log_file.display().to_string();
        // As root the server commands must drop to postgres (PostgreSQL refuses root);
        // as postgres, like the shipped unit, they run directly.
        let wrap = |argv: &[&str]| -> Vec<String> {
            let prefix: &[&str] = if root {
                &["runuser", "-u", "postgres", "--"]
            } else {
                &[]
            };
            prefix.iter().chain(argv).map(|s| s.to_string()).collect()
        };
        // -W: pgwarden verifies the stop itself.
        let stop = wrap(&[&pg_ctl, "-D", &data, "-W", "-m", "fast", "stop"]);
        // The node's identity on its command line: pg_rewind copies the other node's
        // postgresql.conf, whose listen address is not this host's.
        let identity = tb.node_identity(i);
        let start = wrap(&[
            &pg_ctl, "-D", &data, "-o", &identity, "-w", "-t", "60", "-l", &log, "start",
        ]);
        y.push_str(&format!(
            "  - name: {}\n    host: {}\n    port: {}\n    api: {}\n    data_dir: {}\n    bin_dir: {}\n    stop: {}\n    start: {}\n{}{}",
            n.name,
            n.host,
            n.port,
            tb.api_url(Host::of_node(i)),
            data,
            tb.bin_dir().display(),
            yaml_list(&stop),
            yaml_list(&start),
            if root { "    os_user: postgres\n" } else { "" },
            if i >= 2 { "    role: replica\n" } else { "" },
        ));
    }
    // Each host's config names its own instance; each daemon runs the
    // application's commands for its own host, and an operation reaches the
    // other host's instance through that host's daemon.
    y.push_str(&crate::service::standin_application_yaml(
        &tb.pgwarden_bin(),
        &tb.app_dir(host),
        &c.app_user,
        std::path::Path::new(APP_CONFIG),
    ));
    y.push_str("  session_grace: 1s\n");
    if tb.nodes().len() > 2 {
        // The replicas' hosts have no instance of the application.
        y.push_str("  runs_on: [pg-a, pg-b]\n");
    }
    y.push_str(&opts.application_extra);
    y.push_str(&tb.etcd_lock_yaml());
    y
}
