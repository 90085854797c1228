//! `ferrule-aggregator`: see the library's documentation.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ferrule_aggregator::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ferrule-aggregator",
    version,
    about = "ferrule's central aggregator: commits every batch durably before acknowledging it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept agents and commit their batches until SIGTERM or Ctrl-C.
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
    /// Print what an embedded log holds, as JSON (works while the aggregator runs).
    Inspect {
        /// The aggregator's data directory (`log.dir`).
        #[arg(long)]
        data: PathBuf,
    },
    /// Alert rules (see rules/README.md).
    Alerts {
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// The signal engine (are we keeping up?).
    Signals {
        #[command(subcommand)]
        command: SignalsCommand,
    },
}

#[derive(Subcommand)]
enum SignalsCommand {
    /// Replay pipeline snapshots (JSON lines) through the signal engine and print
    /// each stage's signal as a JSON line; a summary goes to stderr. Exits
    /// non-zero naming the line of the first bad snapshot.
    Replay {
        /// The snapshots, one JSON object a line; `-` for stdin.
        #[arg(long)]
        input: PathBuf,
    },
}

/// `signals replay`: the replay lives in ferrule-signals; this only opens the file.
fn signals_replay(input: &std::path::Path) -> anyhow::Result<()> {
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let summary = if input.as_os_str() == "-" {
        ferrule_signals::replay(std::io::stdin().lock(), stdout)
    } else {
        let file =
            std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
        ferrule_signals::replay(std::io::BufReader::new(file), stdout)
    }
    .with_context(|| format!("{}", input.display()))?;
    eprintln!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

#[derive(Subcommand)]
enum AlertsCommand {
    /// Replay samples (JSON lines) through a rules file and print every transition
    /// as a JSON line; a summary goes to stderr. Exits non-zero naming the file and
    /// line of the first bad rule or sample.
    Test {
        /// The TOML rules file.
        #[arg(long)]
        rules: PathBuf,
        /// The samples, one JSON object a line; `-` for stdin.
        #[arg(long)]
        input: PathBuf,
    },
}

/// `alerts test`: the replay lives in ferrule-rules; this only opens the files.
fn alerts_test(rules: &std::path::Path, input: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(rules).with_context(|| format!("reading {}", rules.display()))?;
    let rules_set =
        ferrule_rules::RuleSet::from_toml(&text).with_context(|| format!("{}", rules.display()))?;
    let stdout = std::io::stdout().lock();
    let summary = if input.as_os_str() == "-" {
        ferrule_rules::replay(&rules_set, std::io::stdin().lock(), stdout)
    } else {
        let file =
            std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
        ferrule_rules::replay(&rules_set, std::io::BufReader::new(file), stdout)
    }
    .with_context(|| format!("{}", input.display()))?;
    eprintln!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(ferrule_config::load_validated::<Config>(path, "FERRULE")?.logged())
}

/// `alerts.rules`, if set, must read and pass ferrule_rules' checks (each error
/// names the rule and its line).
fn check_rules(cfg: &Config, out: &mut ferrule_config::Checked) {
    let Some(path) = cfg.alerts.as_ref().and_then(|a| a.rules.as_ref()) else {
        return;
    };
    match std::fs::read_to_string(path) {
        Err(e) => out.problems.push(format!(
            "{}: alerts.rules: cannot read it: {e}",
            path.display()
        )),
        Ok(text) => match ferrule_rules::RuleSet::from_toml(&text) {
            Err(e) => out.problems.push(format!("{}: {e}", path.display())),
            Ok(rules) => out.notes.push(format!(
                "{}: {} alert rules",
                path.display(),
                rules.rules().len()
            )),
        },
    }
    if path.is_relative() {
        out.warnings.push(format!(
            "{}: alerts.rules is a relative path, resolved against the working directory, not the config file's",
            path.display()
        ));
    }
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
                let mut out = checked(cfg.check_tls(std::time::SystemTime::now()));
                check_rules(cfg, &mut out);
                out
            })
        }
        Command::Inspect { data } => match ferrule_aggregator::inspect::inspect(&data) {
            Ok(report) => {
                println!("{}", report.to_json());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("inspect {}: {e:#}", data.display());
                ExitCode::FAILURE
            }
        },
        Command::Alerts {
            command: AlertsCommand::Test { rules, input },
        } => match alerts_test(&rules, &input) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("alerts test: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Signals {
            command: SignalsCommand::Replay { input },
        } => match signals_replay(&input) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("signals replay: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            ferrule_telemetry::init_logging();
            let result = (|| -> anyhow::Result<()> {
                let cfg = load(&config)?;
                let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
                rt.block_on(ferrule_aggregator::server::run(
                    cfg,
                    async {
                        ferrule_telemetry::shutdown_signal().await;
                        ferrule_telemetry::notify::stopping();
                    },
                    // Under systemd (Type=notify): ready once listening, and
                    // the watchdog pinged from the runtime from then on.
                    |r| {
                        ferrule_telemetry::notify::ready(&format!(
                            "accepting agents on {}",
                            r.quic_addr
                        ))
                    },
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
