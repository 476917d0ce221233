//! The `pgwarden` command: parses arguments and hands off to the libraries.
//! `run` starts the daemon, `check-config` validates a config, `status` reads
//! a daemon's `/v1/status`, `demo` builds a local two-node cluster and runs
//! a daemon beside each node. `failover`, `switchover`, `operations`,
//! `resume`, `abort`, `audit` and `history` are clients of the daemon's operation API
//! (`client` talks HTTP, `operate` renders and follows).
//!
//! `demo` and the hidden `standin-*` commands (the stand-in application the
//! tests and the demo drive) need the test kit, so they exist only with the
//! cargo feature `demo` (on by default; the Debian package is built without).

mod assets;
mod client;
#[cfg(feature = "demo")]
mod demo;
mod history;
mod logging;
mod operate;
mod render;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use client::Connect;
use logging::LogFormat;
use operate::OperateArgs;

#[derive(Parser)]
#[command(
    name = "pgwarden",
    version,
    about = "Supervise a two-node PostgreSQL cluster and fail it over safely."
)]
struct Cli {
    /// Log format: text, one JSON object per line, or the systemd journal
    /// (`auto`: the journal when stderr is systemd's journal stream, else text).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "PGWARDEN_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon beside one PostgreSQL node.
    Run {
        #[arg(long, short, default_value = "/etc/pgwarden/pgwarden.yaml")]
        config: PathBuf,
    },
    /// Validate a config file (and the files it names) without starting anything.
    CheckConfig {
        #[arg(long, short, default_value = "/etc/pgwarden/pgwarden.yaml")]
        config: PathBuf,
    },
    /// Show both nodes as a daemon sees them.
    ///
    /// The daemon: --url, else PGWARDEN_URL, else the `listen` of --config,
    /// else of /etc/pgwarden/pgwarden.yaml when it exists, else
    /// http://127.0.0.1:8008. No token is needed.
    ///
    /// Exit status: 0 healthy, with no problem; 1 unhealthy (a critical
    /// problem: /health answers 503) or degraded (a warning); 2 the daemon
    /// could not be asked (unreachable, an error answer, an unreadable
    /// config) or bad usage. With --watch: that of the last answer.
    Status {
        /// Print the raw /v1/status JSON.
        #[arg(long)]
        json: bool,
        /// Redraw every SECONDS (default 2) until Ctrl-C.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2", value_parser = parse_interval)]
        watch: Option<std::time::Duration>,
        #[command(flatten)]
        connect: Connect,
    },
    #[cfg(feature = "demo")]
    /// Build a local two-node demo cluster, run a daemon beside each node and a stand-in application; Ctrl-C cleans up.
    Demo {
        /// Keep the cluster in this directory instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Directory of the PostgreSQL server binaries (initdb, pg_ctl, ...).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Fail over to the standby: the primary is down. Runs a dry run first, asks, then follows the steps.
    ///
    /// Exit status: 0 succeeded (or a dry run that would proceed), 1 the operation failed
    /// or any other error, 3 refused (preflight, conflict, not confirmed), 4 the token was
    /// refused or is missing, 130 Ctrl-C while following (the operation goes on).
    Failover(OperateArgs),
    /// Switch over to the standby: the primary is healthy; planned, zero data loss.
    ///
    /// Exit status: as for `failover`.
    Switchover(OperateArgs),
    /// List the operations (newest first), or show the steps of one.
    Operations {
        /// Show this operation's steps.
        id: Option<String>,
        /// Print the raw JSON of the API.
        #[arg(long)]
        json: bool,
        /// With an ID: follow the operation live until it ends (as `failover` does).
        #[arg(long, short, requires = "id")]
        follow: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Every daemon's operations in one list, oldest first: kind, the node it
    /// ran on, from which node to which, timelines, outcome.
    ///
    /// The first daemon is found as for `status`; the others are the
    /// nodes[].api of the config. Exit status: 0 every daemon answered; 1 some
    /// did not (named below the list: their operations are missing); 2 none did.
    History {
        /// Print JSON: `operations` (oldest first, each with its `daemon`) and `unanswered`.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Turn a former primary (or an empty node) into the synchronous standby of the current primary.
    Rejoin(operate::RejoinArgs),
    /// Set (`sync`) or clear (`async`) synchronous replication on the primary, verified.
    /// `async` releases writes blocked on a lost standby, at the price of durability.
    Sync {
        #[arg(value_parser = ["sync", "async"])]
        mode: String,
        /// `sync` even though no standby streams (every commit then waits).
        #[arg(long)]
        force: bool,
        /// Confirm that the peer HOST, whose daemon does not answer, is fenced
        /// (needed to go `async` then). Repeat for several hosts.
        #[arg(long = "confirm-fenced", value_name = "HOST")]
        confirm_fenced: Vec<String>,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Resume a failed or interrupted operation at the step that did not finish, and follow it.
    Resume {
        id: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Give up a failed or interrupted operation: the steps not run are marked skipped; nothing is undone.
    Abort {
        id: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Show the audit log: who asked for what, when, from where, and the result.
    Audit {
        /// How many entries (the most recent).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the raw JSON of the API.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Write the man pages (pgwarden.1, pgwarden-SUBCOMMAND.1) into DIR (packaging).
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
    /// Write bash, zsh and fish completions into DIR (packaging).
    #[command(hide = true)]
    GenerateCompletions { dir: PathBuf },
    /// The stand-in application used by the demo and the tests (writes heartbeats).
    #[cfg(feature = "demo")]
    #[command(hide = true)]
    StandinApp {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        ack_file: PathBuf,
    },
    /// Start, stop or probe the stand-in application like a service manager would
    /// (the application's start/stop/is_running commands in test configs).
    #[cfg(feature = "demo")]
    #[command(hide = true)]
    StandinCtl {
        action: CtlAction,
        /// Directory holding the stand-in's pid file and log.
        #[arg(long)]
        dir: PathBuf,
        /// The stand-in's database.cfg.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the stand-in records acknowledged writes.
        #[arg(long)]
        ack_file: Option<PathBuf>,
        /// How long `stop` waits after SIGTERM before SIGKILL: seconds, or a duration like 500ms.
        #[arg(long, value_parser = parse_timeout)]
        timeout: Option<std::time::Duration>,
    },
}

#[cfg(feature = "demo")]
#[derive(Clone, Copy, clap::ValueEnum)]
enum CtlAction {
    Start,
    Stop,
    IsRunning,
}

/// Exit status for a refused config, so scripts can tell it from a crash.
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Command::CheckConfig { config } => match pgwarden_daemon::load(&config) {
            Ok(loaded) => {
                println!(
                    "{}: OK (cluster {}, local node {}, {} nodes)",
                    config.display(),
                    loaded.config.cluster,
                    loaded.config.local_node,
                    loaded.config.nodes.len()
                );
                // A switch of database.cfg that another file overrides would
                // not take effect: say so before any failover needs it.
                for s in pgwarden_daemon::shadows(&loaded.config) {
                    eprintln!(
                        "warning: {} also sets `{}` and is read after the application's config file: a failover's switch would not take effect",
                        s.source, s.key
                    );
                }
                // The other daemon calls nodes[local].api: a listen that does
                // not serve it fails only when that host first calls.
                let me = loaded.config.local();
                if let Some(api) = &me.api {
                    if let Some(why) =
                        pgwarden_core::listen::api_not_served(api, loaded.config.listen, resolve)
                    {
                        eprintln!(
                            "warning: nodes[{}].api {api} is not served by this daemon's listen: {why}",
                            me.name
                        );
                    }
                }
                for note in &loaded.notes {
                    println!("note: {note}");
                }
                // pgwarden stops, starts and rebuilds only its own node; a
                // status it cannot read means no stop could be verified.
                if me.data_dir.is_none() {
                    println!(
                        "local PostgreSQL ({}): not checked: nodes[{}].data_dir is not set, so pgwarden cannot stop, verify or rejoin it",
                        me.name, me.name
                    );
                    return ExitCode::SUCCESS;
                }
                // Before the first standby is cloned (docs/install.md) its data
                // directory exists and is empty: pg_ctl status cannot tell
                // that from a wrong path, but nothing can run on an empty
                // directory. The unit runs check-config before the daemon,
                // which must run for `pgwarden rejoin` to clone into it.
                if let Some(dir) = me.data_dir.as_ref().filter(|d| is_empty_dir(d)) {
                    println!(
                        "local PostgreSQL ({}): no cluster yet: {} is empty; `pgwarden rejoin {}` clones the standby into it",
                        me.name,
                        dir.display(),
                        me.name
                    );
                    return ExitCode::SUCCESS;
                }
                match runtime().block_on(pgwarden_daemon::local_pg_status(&loaded.config)) {
                    pgwarden_core::Answer::Yes => {
                        println!("local PostgreSQL ({}): running (pg_ctl status)", me.name)
                    }
                    pgwarden_core::Answer::No => {
                        println!(
                            "local PostgreSQL ({}): not running (pg_ctl status)",
                            me.name
                        )
                    }
                    pgwarden_core::Answer::Unknown(why) => {
                        eprintln!(
                            "{}: nodes[{}]: whether PostgreSQL runs is unknown, so pgwarden could not verify a stop of it: {why}",
                            config.display(),
                            me.name
                        );
                        return ExitCode::from(EXIT_BAD_CONFIG);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        },
        Command::Run { config } => {
            let loaded = match pgwarden_daemon::load(&config) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            let rt = runtime();
            match rt.block_on(pgwarden_daemon::run(loaded, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("pgwarden: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status {
            json,
            watch,
            connect,
        } => ExitCode::from(runtime().block_on(status::run(connect, json, watch))),
        #[cfg(feature = "demo")]
        Command::Demo { dir, bin_dir } => report(demo::run(dir, bin_dir)),
        Command::Failover(args) => {
            operate::report(runtime().block_on(operate::run_operate("failover", args)))
        }
        Command::Switchover(args) => {
            operate::report(runtime().block_on(operate::run_operate("switchover", args)))
        }
        Command::Operations {
            id,
            json,
            follow,
            connect,
        } => {
            operate::report(runtime().block_on(operate::run_operations(connect, id, json, follow)))
        }
        Command::History { json, connect } => {
            operate::report(runtime().block_on(history::run(connect, json)))
        }
        Command::Rejoin(args) => operate::report(runtime().block_on(operate::run_rejoin(args))),
        Command::Sync {
            mode,
            force,
            confirm_fenced,
            yes,
            connect,
        } => operate::report(runtime().block_on(operate::run_sync(
            connect,
            &mode,
            force,
            confirm_fenced,
            yes,
        ))),
        Command::Resume { id, yes, connect } => {
            operate::report(runtime().block_on(operate::run_resume(connect, id, yes)))
        }
        Command::Abort { id, yes, connect } => {
            operate::report(runtime().block_on(operate::run_abort(connect, id, yes)))
        }
        Command::Audit {
            limit,
            json,
            connect,
        } => operate::report(runtime().block_on(operate::run_audit(connect, limit, json))),
        Command::GenerateMan { dir } => report(assets::man(&dir)),
        Command::GenerateCompletions { dir } => report(assets::completions(&dir)),
        #[cfg(feature = "demo")]
        Command::StandinApp { config, ack_file } => {
            // 4 (EXIT_DB_UNREACHABLE) when no writable primary answers at start.
            let code = pgwarden_testkit::standin::run_main(
                pgwarden_testkit::standin::StandinOptions::new(config, ack_file),
            );
            exit_status(code)
        }
        #[cfg(feature = "demo")]
        Command::StandinCtl {
            action,
            dir,
            config,
            ack_file,
            timeout,
        } => standin_ctl(action, dir, config, ack_file, timeout),
    }
}

#[cfg(feature = "demo")]
fn standin_ctl(
    action: CtlAction,
    dir: PathBuf,
    config_file: Option<PathBuf>,
    ack_file: Option<PathBuf>,
    timeout: Option<std::time::Duration>,
) -> ExitCode {
    use pgwarden_testkit::service;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("pgwarden: cannot find this program's path: {e}");
            return ExitCode::FAILURE;
        }
    };
    let action = match action {
        CtlAction::Start => service::CtlAction::Start,
        CtlAction::Stop => service::CtlAction::Stop,
        CtlAction::IsRunning => service::CtlAction::IsRunning,
    };
    let mut opts = service::CtlOptions::new(exe, dir);
    opts.config_file = config_file;
    opts.ack_file = ack_file;
    opts.app_args = vec!["standin-app".into()];
    if let Some(t) = timeout {
        opts.stop_timeout = t;
    }
    exit_status(service::ctl(action, &opts))
}

/// `15` (seconds) or a humantime duration (`500ms`, `1m`).
#[cfg(feature = "demo")]
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return std::time::Duration::try_from_secs_f64(secs).map_err(|e| e.to_string());
    }
    humantime::parse_duration(s).map_err(|e| format!("{e}: give seconds or a duration like 500ms"))
}

/// An existing directory with nothing in it (not an absent one: that may be
/// a wrong `data_dir`, which stays an error).
fn is_empty_dir(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// The addresses of a host name, as the other daemon's resolver would find
/// them (the same /etc/hosts and DNS, assumed).
fn resolve(host: &str) -> Option<Vec<std::net::IpAddr>> {
    use std::net::ToSocketAddrs;
    (host, 0)
        .to_socket_addrs()
        .ok()
        .map(|addrs| addrs.map(|a| a.ip()).collect())
}

/// `--watch` seconds: a positive number, at least 0.1 (a daemon's status
/// changes once per poll; faster redraws only load it).
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.1..=86400.0).contains(&secs) {
        return Err("give between 0.1 and 86400 seconds".into());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// An `i32` exit status from a library as the process's exit status.
#[cfg(feature = "demo")]
fn exit_status(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgwarden: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        // Two workers are plenty for two pollers and a small HTTP server.
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

/// Completes on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("cannot install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("cannot install the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
