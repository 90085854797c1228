//! A real OpenTelemetry Collector (upstream receiver, contrib file exporter)
//! started by `scripts/otelcol.sh` on free loopback ports, stopped on drop; and
//! readers for what it wrote (OTLP JSON, one export request per line).

#![allow(dead_code)]

use super::redis_server::repo;
use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn otelcol_sh(args: &[&str]) -> String {
    let out = Command::new(repo().join("scripts/otelcol.sh"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("scripts/otelcol.sh: {e}"));
    assert!(
        out.status.success(),
        "scripts/otelcol.sh {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running collector.
pub struct Collector {
    pub dir: PathBuf,
    /// `http://127.0.0.1:PORT` (`https://localhost:PORT` with TLS).
    pub grpc: String,
    pub http: String,
}

impl Collector {
    /// Plain OTLP on two free ports.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, None)
    }

    /// With `pki`: TLS only, the dev server certificate, client certificates
    /// chaining to the dev CA required.
    pub fn start_with(dir: &Path, pki: Option<&DevPki>) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let grpc = procs::free_tcp_port().unwrap().to_string();
        let http = procs::free_tcp_port().unwrap().to_string();
        let mut args = vec![
            "start".to_string(),
            dir.to_str().unwrap().to_string(),
            grpc,
            http,
        ];
        if let Some(p) = pki {
            args.push("--tls".into());
            for f in [p.server_cert(), p.server_key(), p.ca_bundle()] {
                args.push(f.to_str().unwrap().to_string());
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = otelcol_sh(&args);
        let field = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k}= in {out}"))
                .to_string()
        };
        Self {
            dir: dir.to_path_buf(),
            grpc: field("grpc"),
            http: field("http"),
        }
    }

    fn lines(&self, file: &str) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Every metric received: (resource attributes, metric object), in order.
    pub fn metrics(&self) -> Vec<(Value, Value)> {
        let mut out = Vec::new();
        for line in self.lines("metrics.jsonl") {
            for rm in line["resourceMetrics"].as_array().into_iter().flatten() {
                for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                    for m in sm["metrics"].as_array().into_iter().flatten() {
                        out.push((rm["resource"].clone(), m.clone()));
                    }
                }
            }
        }
        out
    }

    /// The metric names of the newest export from `service`.
    pub fn last_export(&self, service: &str) -> Vec<String> {
        self.lines("metrics.jsonl")
            .iter()
            .rev()
            .find_map(|line| {
                let rms = line["resourceMetrics"].as_array()?;
                let mine: Vec<&Value> = rms
                    .iter()
                    .filter(|rm| {
                        attr(&rm["resource"]["attributes"], "service.name").as_deref()
                            == Some(service)
                    })
                    .collect();
                (!mine.is_empty()).then(|| {
                    mine.iter()
                        .flat_map(|rm| rm["scopeMetrics"].as_array().into_iter().flatten())
                        .flat_map(|sm| sm["metrics"].as_array().into_iter().flatten())
                        .filter_map(|m| m["name"].as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// Every span received: (resource attributes, span object), in order.
    pub fn spans(&self) -> Vec<(Value, Value)> {
        let mut out = Vec::new();
        for line in self.lines("traces.jsonl") {
            for rs in line["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        out.push((rs["resource"].clone(), s.clone()));
                    }
                }
            }
        }
        out
    }

    /// The collector's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("otelcol.log")).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/otelcol.sh"))
            .args(["stop", self.dir.to_str().unwrap()])
            .output();
    }
}

/// An attribute's value from an OTLP JSON attribute list, as a string
/// (`stringValue`, `intValue` (a string in OTLP JSON), `doubleValue`, `boolValue`).
pub fn attr(attrs: &Value, key: &str) -> Option<String> {
    attrs.as_array()?.iter().find_map(|kv| {
        (kv["key"] == key).then(|| {
            let v = &kv["value"];
            v["stringValue"]
                .as_str()
                .map(str::to_string)
                .or_else(|| v["intValue"].as_str().map(str::to_string))
                .or_else(|| v["doubleValue"].as_f64().map(|d| d.to_string()))
                .or_else(|| v["boolValue"].as_bool().map(|b| b.to_string()))
                .unwrap_or_default()
        })
    })
}

/// A number data point's value (`asInt` is a string in OTLP JSON, `asDouble` a
/// number).
pub fn point_value(p: &Value) -> Option<f64> {
    p["asDouble"]
        .as_f64()
        .or_else(|| p["asInt"].as_str().and_then(|s| s.parse().ok()))
        .or_else(|| p["asInt"].as_f64())
}
