//! `ferrule-agent`: see the library's documentation.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ferrule_agent::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ferrule-agent",
    version,
    about = "ferrule's site agent: reads local signals, spools them crash-safely and forwards them over mutually authenticated QUIC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read inputs and forward them until SIGTERM or Ctrl-C.
    Run {
        /// The TOML configuration file.
        #[arg(long, env = "FERRULE_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration file: exits non-zero naming the file, line and key at fault.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, env = "FERRULE_CONFIG")]
        config: PathBuf,
    },
}

/// The TLS report in the form `check-config` prints.
fn checked(report: ferrule_transport::MaterialReport) -> ferrule_config::Checked {
    let mut out = ferrule_config::Checked::default();
    out.problems = report.problems.iter().map(ToString::to_string).collect();
    out.warnings = report.warnings.iter().map(ToString::to_string).collect();
    out.notes = report.notes;
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => {
            ferrule_config::check_command_with::<Config>(&config, "FERRULE", |cfg| {
                checked(cfg.check_tls(std::time::SystemTime::now()))
            })
        }
        Command::Run { config } => {
            ferrule_telemetry::init_logging();
            let result = (|| -> anyhow::Result<()> {
                let cfg = ferrule_config::load_validated::<Config>(&config, "FERRULE")?.logged();
                // Multi-threaded even with one worker: some fsyncs leave it
                // through `block_in_place`.
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(cfg.agent.worker_threads)
                    .thread_name("ferrule-agent")
                    .enable_all()
                    .build()
                    .context("starting the runtime")?;
                rt.block_on(ferrule_agent::run(
                    cfg,
                    async {
                        ferrule_telemetry::shutdown_signal().await;
                        ferrule_telemetry::notify::stopping();
                    },
                    ferrule_telemetry::Registry::new(),
                ))
            })();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Logging writes to stderr: printing it as well showed it twice.
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
