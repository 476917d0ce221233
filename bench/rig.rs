//! A real two-node cluster (pg-a primary, pg-b synchronous standby) with the stand-in
//! application fenced and restarted through its real `standin-ctl` commands, and a
//! `pgwarden run` beside each node: what the failover, zero-loss and soak benches run
//! against.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use pgwarden_testkit::{
    poll_until, service, standin, ClusterOptions, DaemonLayout, Secret, TestCluster,
};

use crate::http::get;

/// `target/release/pgwarden` next to this binary (the bench scripts build it).
pub fn pgwarden_exe() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let exe = me.with_file_name("pgwarden");
    if !exe.exists() {
        bail!(
            "{} not found: build it first (the bench/*.sh scripts run cargo build --release \
             -p pgwarden -p pgwarden-bench)",
            exe.display()
        );
    }
    Ok(exe)
}

/// A `pgwarden run` child process, killed on drop.
pub struct Daemon(Child);

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Whether the process still runs (false once it exited).
    pub fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `pgwarden run` beside each node of `cluster`, each logging to `<config>.log`; killed
/// on drop, and with the bench if the bench is killed.
pub fn start_daemons(
    exe: &Path,
    cluster: &TestCluster,
    layout: &DaemonLayout,
) -> anyhow::Result<Vec<Daemon>> {
    let mut daemons = Vec::new();
    for i in 0..cluster.nodes().len() {
        let path = pgwarden_testkit::write_pgwarden_config(cluster, i, layout)?;
        let log = std::fs::File::create(path.with_extension("log"))?;
        let mut cmd = Command::new(exe);
        cmd.args(["run", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a terminal's Ctrl-C reaches only the bench, which
            // then stops the daemons itself.
            .process_group(0);
        // SAFETY: only prctl(2), which is async-signal-safe, runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Die with the bench even if it is SIGKILLed and cannot clean up.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        daemons.push(Daemon(cmd.spawn()?));
    }
    Ok(daemons)
}

/// The stand-in application, run through `standin-ctl`; stopped on drop.
pub struct App {
    pub opts: service::CtlOptions,
}

impl App {
    /// The heartbeat ids the stand-in has acknowledged so far, in order.
    pub fn acks(&self) -> Vec<i64> {
        standin::read_acks(&self.opts.ack_path())
    }
}

impl Drop for App {
    fn drop(&mut self) {
        service::ctl(service::CtlAction::Stop, &self.opts);
    }
}

/// A cluster, its stand-in application and a daemon beside each node. The fields drop
/// in order: the application, the daemons, then the cluster.
pub struct Rig {
    pub app: App,
    pub daemons: Vec<Daemon>,
    pub layout: DaemonLayout,
    /// The API token of both daemons.
    pub token: String,
    pub cluster: TestCluster,
}

impl Rig {
    /// Builds a fresh cluster, starts the stand-in against pg-a (its database.cfg in
    /// `<cluster dir>/app`), then a daemon beside each node polling every
    /// `poll_interval`; returns once both daemons answer /health 200 and the stand-in
    /// has acknowledged 5 heartbeats.
    pub fn start(exe: &Path, poll_interval: Duration) -> anyhow::Result<Rig> {
        let cluster = TestCluster::start(ClusterOptions::default())?;
        let c = cluster.credentials().clone();
        let app_dir = cluster.dir().join("app");
        std::fs::create_dir_all(&app_dir)?;
        let cfg = app_dir.join("database.cfg");
        let a = cluster.node(0);
        standin::write_database_cfg(
            &cfg,
            &a.host,
            a.port,
            &c.app_db,
            &c.app_user,
            &c.app_password,
        )?;
        let mut opts = service::CtlOptions::new(exe, &app_dir);
        opts.config_file = Some(cfg.clone());
        if service::ctl(service::CtlAction::Start, &opts) != 0 {
            bail!("the stand-in did not start");
        }
        let app = App { opts };
        let mut layout = DaemonLayout::for_tests(&cluster);
        layout.poll_interval = poll_interval;
        // One machine: the one instance is named on one host (both daemons
        // would otherwise see the same process).
        layout.extra = service::standin_application_yaml(exe, &app_dir, &c.app_user, &cfg)
            + "  session_grace: 1s\n  runs_on: [pg-b]\n";
        let daemons = start_daemons(exe, &cluster, &layout)?;
        let token = std::fs::read_to_string(cluster.secret_file(Secret::ApiToken))?
            .trim()
            .to_owned();
        for i in 0..2 {
            poll_until(Duration::from_secs(30), "a healthy cluster", || {
                (get(&layout.api_url(i), "/health").0 == 200).then_some(())
            })?;
        }
        poll_until(Duration::from_secs(30), "heartbeats", || {
            (app.acks().len() >= 5).then_some(())
        })?;
        Ok(Rig {
            app,
            daemons,
            layout,
            token,
            cluster,
        })
    }

    /// The API of the daemon beside node `i`.
    pub fn api(&self, i: usize) -> String {
        self.layout.api_url(i)
    }
}

/// Waits until the daemon at `api` reports `node_down` on /health (a node it can no
/// longer reach has missed `failure_threshold` polls): from then on it accepts a
/// failover.
pub fn wait_node_down(api: &str, what: &str) -> anyhow::Result<()> {
    poll_until(Duration::from_secs(30), what, || {
        get(api, "/health")
            .1
            .contains("\"code\":\"node_down\"")
            .then_some(())
    })
    .context("the primary was not reported down")?;
    Ok(())
}
