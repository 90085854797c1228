//! `[otlp]`: where and how ferrule sends its telemetry, shared by the agent and
//! the aggregator.

use ferrule_config::Invalid;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// OTLP/gRPC (a collector's port 4317).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (a collector's port 4318); `/v1/metrics`
    /// and `/v1/traces` are added to the endpoint.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// `[otlp]`: export to an OpenTelemetry Collector (or any OTLP receiver).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSection {
    /// The receiver's base URL: `http://collector:4317` (gRPC) or
    /// `http://collector:4318` (HTTP); `https://` for TLS.
    pub endpoint: String,
    /// `grpc` (default) or `http/protobuf`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Headers (gRPC metadata) sent with every export, e.g. an API key; a value
    /// `env:NAME` is read from the environment, so tokens stay out of files.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// CA bundle (PEM) the receiver's certificate must chain to; the platform's
    /// roots when absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; with `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS; with `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Seconds between metric exports. Default 10.
    #[serde(default = "default_export_interval_secs")]
    pub export_interval_secs: u64,
    /// An export that takes longer is abandoned, seconds. Default 10.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Share of batches whose life is traced, 0 to 1 (0 sends no traces).
    /// Agent and aggregator pick the same batches, by their (agent, epoch, seq),
    /// so a sampled batch's spans from both form one trace. Default 0.01.
    #[serde(default = "default_trace_sample_ratio")]
    pub trace_sample_ratio: f64,
    /// Aggregator only: sensors sent as OTLP gauges, by glob over
    /// `site/agent/sensor` (`*` any run of characters, `?` one), read from their
    /// own consumer group of the real-time path. Empty (default): none.
    #[serde(default)]
    pub sensors: Vec<String>,
}

fn default_export_interval_secs() -> u64 {
    10
}

fn default_timeout_secs() -> u64 {
    10
}

fn default_trace_sample_ratio() -> f64 {
    0.01
}

impl OtlpSection {
    /// Time between metric exports.
    pub fn export_interval(&self) -> Duration {
        Duration::from_secs(self.export_interval_secs.max(1))
    }

    /// Time one export may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }

    /// What is wrong with the section, keys under `prefix` (e.g. `otlp`).
    pub fn invalid(&self, prefix: &str) -> Vec<Invalid> {
        let mut bad = Vec::new();
        let key = |k: &str| format!("{prefix}.{k}");
        match self.endpoint.split_once("://") {
            Some(("http" | "https", rest)) if !rest.is_empty() && !rest.starts_with('/') => {}
            _ => bad.push(Invalid::new(
                key("endpoint"),
                format!(
                    "{:?} is not an http:// or https:// URL with a host (e.g. http://collector:4317)",
                    self.endpoint
                ),
            )),
        }
        if self.endpoint.starts_with("http://") && (self.ca.is_some() || self.cert.is_some()) {
            bad.push(Invalid::new(
                key("endpoint"),
                "TLS files are set but the endpoint is http://: use https://",
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            bad.push(Invalid::new(
                key("cert"),
                "cert and key go together (mutual TLS), or neither",
            ));
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            bad.push(Invalid::new(
                key("trace_sample_ratio"),
                "must be between 0 and 1",
            ));
        }
        if self.export_interval_secs == 0 {
            bad.push(Invalid::new(
                key("export_interval_secs"),
                "must be at least 1",
            ));
        }
        if self.timeout_secs == 0 {
            bad.push(Invalid::new(key("timeout_secs"), "must be at least 1"));
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                bad.push(Invalid::new(
                    key(&format!("headers.{name}")),
                    "is not a valid header name",
                ));
            }
            if let Some(var) = value.strip_prefix("env:") {
                if var.is_empty() {
                    bad.push(Invalid::new(
                        key(&format!("headers.{name}")),
                        "env: names no variable",
                    ));
                }
            }
        }
        for (i, g) in self.sensors.iter().enumerate() {
            if g.trim().is_empty() {
                bad.push(Invalid::new(key(&format!("sensors[{i}]")), "is empty"));
            }
        }
        bad
    }
}

/// `env:NAME` read from the environment, anything else as is.
pub(crate) fn resolve(value: &str) -> Result<String, String> {
    match value.strip_prefix("env:") {
        Some(var) => std::env::var(var)
            .map_err(|_| format!("environment variable {var} is not set (named by env:{var})")),
        None => Ok(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OtlpSection, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_both_protocols_parse() {
        let s = parse("endpoint = \"http://127.0.0.1:4317\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.export_interval_secs, 10);
        assert!((s.trace_sample_ratio - 0.01).abs() < 1e-12);
        assert!(s.invalid("otlp").is_empty());
        let s = parse("endpoint = \"http://c:4318\"\nprotocol = \"http/protobuf\"")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
    }

    #[test]
    fn mistakes_are_named_by_key() {
        assert!(parse("endpoint = \"http://c\"\nprotocol = \"udp\"").is_err());
        assert!(parse("endpoint = \"http://c\"\nendpont = 1").is_err());
        let s = parse(
            "endpoint = \"collector:4317\"\ntrace_sample_ratio = 2.0\ncert = \"c.pem\"\nheaders = { \"bad header\" = \"x\" }",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<String> = s.invalid("otlp").into_iter().map(|i| i.key).collect();
        for k in [
            "otlp.endpoint",
            "otlp.trace_sample_ratio",
            "otlp.cert",
            "otlp.headers.bad header",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} not in {keys:?}");
        }
    }

    #[test]
    fn env_secrets_resolve_or_say_which_variable_is_missing() {
        assert_eq!(resolve("plain"), Ok("plain".to_string()));
        let e = resolve("env:FERRULE_OTLP_TEST_SURELY_UNSET").expect_err("unset");
        assert!(e.contains("FERRULE_OTLP_TEST_SURELY_UNSET"), "{e}");
    }

    /// The commented `[otlp]` blocks of deploy/'s examples, switched on, parse
    /// and pass the checks: what an operator copying them gets.
    #[test]
    fn the_deploy_examples_otlp_blocks_parse() {
        for file in ["aggregator.toml", "agent.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy")
                .join(file);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
            let at = text
                .find("# [otlp]\n")
                .unwrap_or_else(|| panic!("{file} documents [otlp]"));
            let mut block = String::new();
            for line in text[at + "# [otlp]\n".len()..].lines() {
                if !line.starts_with('#') {
                    break;
                }
                if let Some(code) = line.strip_prefix("# ").filter(|l| !l.starts_with('#')) {
                    block.push_str(code);
                    block.push('\n');
                }
            }
            let s = parse(&block).unwrap_or_else(|e| panic!("{file}: {e}\n{block}"));
            let bad = s.invalid("otlp");
            let bad: Vec<&Invalid> = bad
                .iter()
                .filter(|i| !(file == "agent.toml" && i.key == "otlp.sensors"))
                .collect();
            assert!(bad.is_empty(), "{file}: {bad:?}");
            assert!(s.headers.contains_key("x-api-key"), "{file}: {block}");
        }
    }
}
