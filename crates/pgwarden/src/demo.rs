//! `pgwarden demo`: a local two-node cluster built by the test kit, a
//! pgwarden daemon beside each node (in this process, each with its own
//! config, registry and listener, exactly as `pgwarden run` would start it),
//! and the stand-in application writing heartbeats. Ctrl-C cleans it all up.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use pgwarden_testkit::{standin, ClusterOptions, DaemonLayout, Secret, TestCluster};
use tokio::sync::watch;

pub fn run(dir: Option<PathBuf>, bin_dir: Option<PathBuf>) -> anyhow::Result<()> {
    // Fails early, saying which package to install, when PostgreSQL is missing.
    let bin_dir = pgwarden_testkit::find_pg_bin_dir(bin_dir.as_deref())?;
    eprintln!(
        "pgwarden demo: building a primary + synchronous standby with {}",
        bin_dir.display()
    );
    let cluster = TestCluster::start(ClusterOptions {
        dir,
        bin_dir: Some(bin_dir),
        ..ClusterOptions::default()
    })
    .context("could not build the demo cluster")?;

    let mut layout = DaemonLayout::for_tests(&cluster);
    layout.poll_interval = Duration::from_secs(1);
    let configs = (0..cluster.nodes().len())
        .map(|i| pgwarden_testkit::write_pgwarden_config(&cluster, i, &layout))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot write the daemon configs")?;

    let app = start_standin(&cluster)?;
    let result = crate::runtime().block_on(serve(&cluster, &configs, &layout));
    stop_child(app);
    eprintln!("pgwarden demo: stopping PostgreSQL and removing the demo files");
    drop(cluster);
    result
}

async fn serve(
    cluster: &TestCluster,
    configs: &[PathBuf],
    layout: &DaemonLayout,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut daemons = Vec::new();
    for path in configs {
        let loaded = pgwarden_daemon::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut stop = stop_rx.clone();
        daemons.push(tokio::spawn(pgwarden_daemon::run(loaded, async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    print_guide(cluster, configs, layout);
    crate::shutdown_signal().await;
    let _ = stop_tx.send(true);
    for d in daemons {
        d.await.context("a daemon task panicked")??;
    }
    Ok(())
}

fn start_standin(cluster: &TestCluster) -> anyhow::Result<Child> {
    let app_dir = cluster.dir().join("app");
    std::fs::create_dir_all(&app_dir)?;
    let cfg = app_dir.join("database.cfg");
    let c = cluster.credentials();
    let primary = cluster.node(0);
    standin::write_database_cfg(
        &cfg,
        &primary.host,
        primary.port,
        &c.app_db,
        &c.app_user,
        &c.app_password,
    )?;
    let exe = std::env::current_exe().context("cannot find the pgwarden executable")?;
    let log = std::fs::File::create(app_dir.join("standin.log"))?;
    Command::new(exe)
        .args(["standin-app", "--config"])
        .arg(&cfg)
        .arg("--ack-file")
        .arg(app_dir.join("acks"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start the stand-in application")
}

fn stop_child(mut child: Child) {
    // SIGTERM lets the stand-in close its session cleanly.
    // SAFETY: kill has no memory preconditions; the pid is our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

fn print_guide(cluster: &TestCluster, configs: &[PathBuf], layout: &DaemonLayout) {
    let a = layout.api_url(0);
    let b = layout.api_url(1);
    let token = cluster.secret_file(Secret::ApiToken);
    let standby = cluster.node(1);
    let runas = if is_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    println!(
        "\npgwarden demo is running in {dir}\n",
        dir = cluster.dir().display()
    );
    for (i, n) in cluster.nodes().iter().enumerate() {
        println!(
            "  {name}  {role:<8} postgresql://{host}:{port}  daemon {api}  (config {cfg})",
            name = n.name,
            role = if i == 0 { "primary" } else { "standby" },
            host = n.host,
            port = n.port,
            api = layout.api_url(i),
            cfg = configs[i].display()
        );
    }
    println!(
        "  stand-in application: writes a heartbeat every 100 ms to pg-a (log {app}/standin.log)\n",
        app = cluster.dir().join("app").display()
    );
    println!("Try:");
    println!("  pgwarden status --url {a}");
    println!("  curl -s {a}/health");
    println!("  curl -s {a}/v1/status");
    println!("  curl -s {a}/metrics | grep -E '^pgwarden_(replication|cluster_healthy|node_up)'");
    println!("  curl -si {a}/primary ; curl -si {b}/replica");
    println!("Break something and watch /health change within a few seconds:");
    println!(
        "  {runas}{bin}/pg_ctl -D {data} stop -m fast      # the standby: standby_not_streaming, writes_blocked",
        bin = cluster.bin_dir().display(),
        data = standby.data_dir.display()
    );
    println!(
        "  {runas}{bin}/pg_ctl -D {data} start -l {log}    # and back",
        bin = cluster.bin_dir().display(),
        data = standby.data_dir.display(),
        log = standby.log_file.display()
    );
    println!(
        "The API token (for the mutating endpoints of later releases) is in {}",
        token.display()
    );
    println!("\nPress Ctrl-C to stop everything and clean up.");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
