//! The `pgwarden` command: parses arguments and hands off to the libraries.
//! `run` starts the daemon, `check-config` validates a config, `status` reads
//! a daemon's `/v1/status`, `demo` builds a local two-node cluster and runs
//! a daemon beside each node.

mod demo;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "pgwarden",
    version,
    about = "Supervise a two-node PostgreSQL cluster and fail it over safely."
)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PGWARDEN_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    Status {
        /// Base URL of a pgwarden daemon (default: the `listen` of --config, else http://127.0.0.1:8008).
        #[arg(long)]
        url: Option<String>,
        /// Take the URL from this config file's `listen`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the raw /v1/status JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build a local two-node demo cluster, run a daemon beside each node and a stand-in application; Ctrl-C cleans up.
    Demo {
        /// Keep the cluster in this directory instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Directory of the PostgreSQL server binaries (initdb, pg_ctl, ...).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// The stand-in application used by the demo and the tests (writes heartbeats).
    #[command(hide = true)]
    StandinApp {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        ack_file: PathBuf,
    },
}

/// Exit status for a refused config, so scripts can tell it from a crash.
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
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
        Command::Status { url, config, json } => {
            report(runtime().block_on(status::run(url, config, json)))
        }
        Command::Demo { dir, bin_dir } => report(demo::run(dir, bin_dir)),
        Command::StandinApp { config, ack_file } => report(
            pgwarden_testkit::standin::run(pgwarden_testkit::standin::StandinOptions {
                config_file: config,
                section: "database".into(),
                ack_file,
                interval: std::time::Duration::from_millis(100),
                stop: None,
            })
            .map_err(anyhow::Error::from),
        ),
    }
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

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PGWARDEN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
