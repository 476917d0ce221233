//! `pgwarden demo`: a local two-node cluster built by the test kit, a
//! pgwarden daemon beside each node (in this process, each with its own
//! config, registry and listener, exactly as `pgwarden run` would start it),
//! and the stand-in application writing heartbeats. Ctrl-C cleans it all up.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use pgwarden_testkit::{service, standin, ClusterOptions, DaemonLayout, Secret, TestCluster};
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

    let app = Standin::start(&cluster)?;
    let mut layout = DaemonLayout::for_tests(&cluster);
    layout.poll_interval = Duration::from_secs(1);
    layout.extra = app.application_yaml(&cluster);
    let configs = (0..cluster.nodes().len())
        .map(|i| pgwarden_testkit::write_pgwarden_config(&cluster, i, &layout))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot write the daemon configs")?;

    let result = crate::runtime().block_on(serve(&cluster, &configs, &layout));
    app.stop();
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

/// The stand-in application as a service, driven by `pgwarden standin-ctl`
/// exactly as the daemons will drive it when they fence it.
struct Standin {
    opts: service::CtlOptions,
    config_file: PathBuf,
}

impl Standin {
    fn start(cluster: &TestCluster) -> anyhow::Result<Standin> {
        let dir = cluster.dir().join("app");
        std::fs::create_dir_all(&dir)?;
        let config_file = dir.join("database.cfg");
        let c = cluster.credentials();
        let primary = cluster.node(0);
        standin::write_database_cfg(
            &config_file,
            &primary.host,
            primary.port,
            &c.app_db,
            &c.app_user,
            &c.app_password,
        )?;
        let exe = std::env::current_exe().context("cannot find the pgwarden executable")?;
        let mut opts = service::CtlOptions::new(exe, &dir);
        opts.config_file = Some(config_file.clone());
        match service::ctl(service::CtlAction::Start, &opts) {
            0 => Ok(Standin { opts, config_file }),
            code => anyhow::bail!(
                "the stand-in application did not start (exit {code}); see {}",
                dir.join("standin.log").display()
            ),
        }
    }

    /// The `application:` section that makes the daemons fence this service.
    fn application_yaml(&self, cluster: &TestCluster) -> String {
        // One machine: both daemons see the same process, so the one
        // instance is named on one host (DESIGN.md "Two hosts").
        service::standin_application_yaml(
            &self.opts.exe,
            &self.opts.dir,
            &cluster.credentials().app_user,
            &self.config_file,
        ) + &format!("  runs_on: [{}]\n", cluster.node(1).name)
    }

    fn stop(&self) {
        let _ = service::ctl(service::CtlAction::Stop, &self.opts);
    }
}

fn print_guide(cluster: &TestCluster, configs: &[PathBuf], layout: &DaemonLayout) {
    // The binary may not be on PATH (cargo run): print commands that work as pasted.
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "pgwarden".into());
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
    println!("  {a}/            (the status page, in a browser)");
    println!("  {me} status --url {a}");
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
    println!("Fail over the way an operator would (fences the stand-in, promotes pg-b, rewrites its database.cfg):");
    println!(
        "  {me} switchover --config {} --to pg-b",
        configs[0].display()
    );
    println!("  {me} operations --url {a}");
    println!(
        "  curl -s -X POST -H \"Authorization: Bearer $(cat {})\" -d '{{\"target\":\"pg-b\",\"dry_run\":true}}' {a}/v1/switchover",
        token.display()
    );
    println!("\nPress Ctrl-C to stop everything and clean up.");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
