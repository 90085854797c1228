//! # ferrule-telemetry
//!
//! The metrics every ferrule process keeps about itself: a registry of named,
//! labelled counters, gauges and histograms (kept by `prometheus-client`; counter
//! and gauge handles are plain atomics, cheap on hot paths), rendered as
//! OpenMetrics text and served at `/metrics`.
//!
//! Every drop, retry, rejection and ack has a counter here; none is rate-limited.
//!
//! ```
//! use ferrule_telemetry::Registry;
//! let reg = Registry::new();
//! let acks = reg.counter("ferrule_acks_total", "Batches acknowledged", &[("outcome", "committed")]);
//! acks.inc();
//! assert!(reg.render().contains("ferrule_acks_total{outcome=\"committed\"} 1"));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod http;
mod registry;

mod health;
pub mod notify;

pub use health::Health;
pub use http::{serve, serve_probes, Probes};
pub use registry::{
    Buckets, Counter, FamilyInfo, Gauge, Histogram, Kind, MirrorFn, MirrorMaker, Registry,
    SeriesValues, CONTENT_TYPE,
};

/// Logs to stderr with the filter in `FERRULE_LOG` (`info` when unset), the way
/// every ferrule binary does.
pub fn init_logging() {
    init_logging_with("info");
}

/// How log lines are written, from `FERRULE_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message` and
    /// the event's fields at the top level), for Loki, Elasticsearch or `jq`.
    Json,
}

impl LogFormat {
    /// The format `FERRULE_LOG_FORMAT` names (`text` or `json`; text when
    /// unset), or the value it does not understand.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("FERRULE_LOG_FORMAT") {
            Err(_) => Ok(Self::Text),
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "" | "text" => Ok(Self::Text),
                "json" => Ok(Self::Json),
                _ => Err(v),
            },
        }
    }
}

/// Logs to stderr with the filter in `FERRULE_LOG`, or `default_filter` when it is
/// unset, in the format `FERRULE_LOG_FORMAT` names ([`LogFormat`]). Text has
/// colours only when stderr is a terminal and `NO_COLOR` is unset: a log
/// redirected to a file or a journal stays plain text a person or a parser can
/// read. An unknown format is said on stderr and text is used: a typo in an
/// environment variable must not keep a daemon from starting.
pub fn init_logging_with(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRULE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let format = LogFormat::from_env().unwrap_or_else(|bad| {
        eprintln!("FERRULE_LOG_FORMAT={bad:?} is neither \"text\" nor \"json\": logging text");
        LogFormat::Text
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour_on_stderr()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Whether log lines on stderr may carry ANSI colour codes: on a terminal, unless
/// the `NO_COLOR` convention (<https://no-color.org>) asks otherwise.
pub fn colour_on_stderr() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Completes on SIGTERM or Ctrl-C: what every ferrule daemon stops on.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
