//! `ferrule-demo`: an aggregator and three agents on loopback, in one process,
//! streaming a synthetic three-phase feed over mutually authenticated QUIC into
//! the embedded durable log. Development certificates are made on first run. All
//! state lives under `./ferrule-demo/`; Ctrl-C stops everything cleanly.

use anyhow::Context as _;
use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{agent_toml, aggregator_toml, AgentSpec};
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const QUIC: &str = "127.0.0.1:4433";
const METRICS: &str = "127.0.0.1:9464";
/// The live page.
const PAGE: &str = "127.0.0.1:9480";
const AGENTS: [(&str, &str); 3] = [
    ("substation-1", "rtu-1"),
    ("substation-1", "rtu-2"),
    ("substation-2", "rtu-3"),
];
const RATE_HZ: u32 = 1000;
/// The alert rules the demo evaluates (the same file the rules crate tests).
const RULES: &str = include_str!("../../../rules/examples/three-phase.toml");

fn main() -> ExitCode {
    // Alerts are printed by the demo itself, one line each.
    ferrule_telemetry::init_logging_with(
        "warn,ferrule_aggregator=info,ferrule_aggregator::alerts=warn,ferrule_agent=warn",
    );
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferrule-demo: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(demo()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrule-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

async fn demo() -> anyhow::Result<()> {
    std::fs::create_dir_all("ferrule-demo").context("creating ./ferrule-demo")?;
    // Absolute, so the configs it writes work from any directory (and the
    // config checks have no relative path to warn about).
    let root = std::fs::canonicalize("ferrule-demo").context("locating ./ferrule-demo")?;
    let pki = DevPki::ensure(&root.join("pki"))?;
    let quic: SocketAddr = QUIC.parse()?;
    let metrics: SocketAddr = METRICS.parse()?;
    // The rules of rules/examples/three-phase.toml: the feed's sag fires the
    // undervoltage alert and resolves it. Written once; edit it to experiment.
    let rules_path = root.join("rules.toml");
    if !rules_path.exists() {
        write(&rules_path, RULES)?;
    }
    let agg_path = root.join("aggregator.toml");
    write(
        &agg_path,
        &aggregator_toml(
            &pki,
            &root.join("aggregator"),
            quic,
            Some(metrics),
            &format!(
                "[alerts]\nrules = {:?}\n\n[page]\nlisten = \"{PAGE}\"\n",
                rules_path.display().to_string()
            ),
        ),
    )?;
    let agg_cfg =
        ferrule_config::load_validated::<ferrule_aggregator::config::Config>(&agg_path, "FERRULE")?
            .value;

    let mut agent_cfgs = Vec::new();
    for (site, id) in AGENTS {
        let spec = AgentSpec {
            site: site.into(),
            id: id.into(),
            spool: root.join("agents").join(id),
            endpoints: vec![QUIC.into()],
            rate_hz: RATE_HZ,
            total_samples: None,
            fsync: "interval",
            metrics: None,
            // The same rules: a crossing leaves the agent at once, not when its
            // batch window closes.
            extra: format!(
                "sag_every_secs = 20\n\n[alerts]\nrules = {:?}\n",
                rules_path.display().to_string()
            ),
        };
        let path = root.join(format!("agent-{id}.toml"));
        write(&path, &agent_toml(&pki, &spec)?)?;
        agent_cfgs.push(
            ferrule_config::load_validated::<ferrule_agent::config::Config>(&path, "FERRULE")?
                .value,
        );
    }

    let (stop_agg_tx, mut stop_agg_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let aggregator = tokio::spawn(ferrule_aggregator::server::run(
        agg_cfg,
        async move {
            let _ = stop_agg_rx.wait_for(|s| *s).await;
        },
        move |r| {
            let _ = ready_tx.send(r);
        },
    ));
    let running = match ready_rx.await {
        Ok(r) => r,
        Err(_) => {
            return match aggregator.await {
                Ok(Err(e)) => Err(e.context(format!(
                    "starting the aggregator on {QUIC} (is another demo running?)"
                ))),
                _ => Err(anyhow::anyhow!(
                    "the aggregator stopped before it was ready"
                )),
            }
        }
    };

    let (stop_agents_tx, stop_agents_rx) = watch::channel(false);
    let mut agents = Vec::new();
    for cfg in agent_cfgs {
        let mut stop = stop_agents_rx.clone();
        agents.push(tokio::spawn(ferrule_agent::run(
            cfg,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
            ferrule_telemetry::Registry::new(),
        )));
    }

    println!(
        "ferrule demo running: an aggregator on {QUIC} (QUIC, mutual TLS) and {} agents,",
        AGENTS.len()
    );
    println!(
        "each streaming three-phase voltage, current and frequency ({} samples/s, a voltage sag every 20 s).",
        RATE_HZ * 7
    );
    println!();
    match running.page_addr {
        Some(addr) => println!("  live page (open it):        http://{addr}/"),
        None => println!("  live page:                  not served"),
    }
    println!("  what the aggregator holds:  cargo run --release -p ferrule-aggregator -- inspect --data ferrule-demo/aggregator");
    println!(
        "  its metrics:                curl -s http://{METRICS}/metrics | grep ferrule_aggregator_"
    );
    println!("  configs and certificates:   ferrule-demo/*.toml, ferrule-demo/pki/");
    println!("  alert rules:                ferrule-demo/rules.toml (alerts print below as they fire and resolve)");
    println!("  Ctrl-C stops everything cleanly; run the demo again to continue where it stopped.");
    println!();

    let committed = |r: &ferrule_telemetry::Registry| {
        r.counter_sum("ferrule_aggregator_committed_samples_total")
    };
    let started = Instant::now();
    let mut last = (Instant::now(), committed(&running.registry));
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.tick().await;
    let mut alerts = running.alerts.as_ref().map(|a| a.subscribe());
    loop {
        tokio::select! {
            a = async {
                match alerts.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match a {
                Ok(e) => print_alert(started, &e),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    println!("({n} alert transitions not shown: the terminal fell behind)");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => alerts = None,
            },
            _ = every.tick() => {
                let now = (Instant::now(), committed(&running.registry));
                let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
                let sessions = running.registry.gauge("ferrule_aggregator_sessions", "Agent sessions up", &[]).get();
                println!(
                    "[{:>4} s] {sessions} agents connected, {} samples committed durably, {:.0} samples/s",
                    started.elapsed().as_secs(),
                    now.1,
                    rate
                );
                last = now;
                // The signal engine's plain answer, per stage (the sampler's latest).
                let latest = running
                    .sampled
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .back()
                    .cloned();
                if let Some(s) = latest {
                    for sig in &s.signals {
                        println!("         {}", sig.text);
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    println!("stopping: agents first (their in-flight batches are acknowledged or stay spooled), then the aggregator");
    let _ = stop_agents_tx.send(true);
    for a in agents {
        match a.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("agent stopped with an error: {e:#}"),
            Err(e) => eprintln!("agent task failed: {e}"),
        }
    }
    let _ = stop_agg_tx.send(true);
    match aggregator.await {
        Ok(r) => r?,
        Err(e) => anyhow::bail!("aggregator task failed: {e}"),
    }
    println!("stopped. `cargo run --release -p ferrule-aggregator -- inspect --data ferrule-demo/aggregator` shows what was committed.");
    Ok(())
}

/// One line per firing or resolved alert, with how long after the batch's arrival
/// the evaluator emitted it.
fn print_alert(started: Instant, e: &ferrule_aggregator::alerts::evaluate::Evaluated) {
    use ferrule_rules::State;
    let t = &e.transition;
    let what = match t.state {
        State::Firing => format!("ALERT FIRING   {}", t.annotation),
        State::Resolved => format!("alert resolved {} back to {:.1}", t.sensor, t.value),
        _ => return,
    };
    let after_ms = (e.emitted_ns - e.received_ns) as f64 / 1e6;
    println!(
        "[{:>4} s] {what} [{} {}/{}; {after_ms:.2} ms after the batch arrived]",
        started.elapsed().as_secs(),
        t.rule,
        t.site,
        t.agent,
    );
}
