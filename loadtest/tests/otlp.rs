//! OTLP export against a real OpenTelemetry Collector this project did not
//! write (upstream otlp receiver, contrib file exporter; built by
//! `scripts/otelcol.sh` from the Go module proxy): what an observability team
//! checks before wiring ferrule into its pipeline.
//!
//! A real aggregator and a real agent; the agent reads known values over the
//! line protocol. The collector must receive, over gRPC, over HTTP/protobuf and
//! over mutual TLS:
//! - the aggregator's metrics, named as on `/metrics`: counters as monotonic
//!   sums with their values, gauges, histograms with their bucket bounds;
//! - a span for each sampled batch's commit, carrying the batch's agent, epoch
//!   and seq, in the trace those three name (the agent derives the same);
//! - the selected sensor as a gauge carrying exactly the values sent, with its
//!   site, agent, unit and quality; sensors not selected are not sent.
#![allow(clippy::unwrap_used)] // a panic in a test is a failure with a backtrace
#![allow(clippy::disallowed_methods)] // a blocking test paces its own sends

mod support;

use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{self, AgentSpec, Proc};
use serde_json::Value;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::otelcol::{attr, point_value, Collector};

const SITE: &str = "plant-1";
const AGENT: &str = "otlp";

/// The values sent for `grid/voltage_l1`, in order.
fn voltages() -> Vec<f64> {
    (0..40).map(|i| 230.0 + f64::from(i) * 0.25).collect()
}

struct Rig {
    root: std::path::PathBuf,
    pki: DevPki,
    quic: SocketAddr,
    metrics: SocketAddr,
    agg: Option<Proc>,
    agent: Option<Proc>,
    line: SocketAddr,
}

impl Rig {
    fn new(root: &Path) -> Self {
        let pki = DevPki::ensure(&root.join("pki")).unwrap();
        Self {
            root: root.to_path_buf(),
            pki,
            quic: ([127, 0, 0, 1], procs::free_udp_port().unwrap()).into(),
            metrics: ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into(),
            agg: None,
            agent: None,
            line: ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into(),
        }
    }

    /// Starts the aggregator with `[otlp]` as given (and a fresh log).
    fn start_aggregator(&mut self, otlp: &str, name: &str) {
        self.agg = None;
        let data = self.root.join(format!("data-{name}"));
        let toml = procs::aggregator_toml(&self.pki, &data, self.quic, Some(self.metrics), otlp);
        let cfg = self.root.join(format!("aggregator-{name}.toml"));
        std::fs::write(&cfg, toml).unwrap();
        self.agg = Some(
            Proc::start(
                "aggregator",
                &procs::bin("ferrule-aggregator").unwrap(),
                &cfg,
                &self.root.join(format!("aggregator-{name}.log")),
            )
            .unwrap(),
        );
        procs::wait_for(Duration::from_secs(20), || {
            procs::http_get(self.metrics, "/readyz").ok()
        })
        .unwrap_or_else(|| panic!("aggregator not ready:\n{}", self.log(name)));
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.join(format!("aggregator-{name}.log")))
            .unwrap_or_default()
    }

    /// Starts the agent, exporting over OTLP/gRPC to `otlp` (every batch
    /// traced).
    fn start_agent(&mut self, otlp: &str) {
        let spec = AgentSpec {
            site: SITE.into(),
            id: AGENT.into(),
            spool: self.root.join("spool"),
            endpoints: vec![self.quic.to_string()],
            rate_hz: 5,
            total_samples: None,
            fsync: "interval",
            metrics: None,
            extra: format!(
                "[[inputs.line]]\nname = \"lp\"\nlisten_tcp = \"{}\"\nprecision = \"ns\"\nunits = {{ \"grid/voltage_l1\" = \"V\" }}\n\n[otlp]\nendpoint = \"{otlp}\"\nexport_interval_secs = 1\ntrace_sample_ratio = 1.0\n",
                self.line
            ),
        };
        let toml = procs::agent_toml(&self.pki, &spec).unwrap();
        std::fs::write(self.root.join("agent.toml"), toml).unwrap();
        self.agent = Some(
            Proc::start(
                "agent",
                &procs::bin("ferrule-agent").unwrap(),
                &self.root.join("agent.toml"),
                &self.root.join("agent.log"),
            )
            .unwrap(),
        );
    }

    /// Sends every voltage over the line protocol, one line each, 20 ms apart.
    fn send_voltages(&self) {
        let mut s = procs::wait_for(Duration::from_secs(20), || {
            TcpStream::connect(self.line).ok()
        })
        .unwrap_or_else(|| panic!("the agent's line input never listened"));
        for v in voltages() {
            let ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            writeln!(s, "grid voltage_l1={v},current_l1=12.5 {ns}").unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        s.flush().unwrap();
    }
}

fn otlp_section(endpoint: &str, protocol: &str, tls: &str) -> String {
    format!(
        "[otlp]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\nexport_interval_secs = 1\ntrace_sample_ratio = 1.0\nsensors = [\"{SITE}/{AGENT}/grid/voltage_*\"]\n{tls}"
    )
}

/// The aggregator's metrics as the collector has them: the newest data points
/// of each metric named `name` from `ferrule-aggregator`.
fn newest<'a>(metrics: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    metrics
        .iter()
        .rev()
        .find(|(res, m)| {
            m["name"] == name
                && attr(&res["attributes"], "service.name").as_deref() == Some("ferrule-aggregator")
        })
        .map(|(_, m)| m)
}

/// Waits until the collector holds the aggregator's metrics, a commit span and
/// the sensor's last value; checks each.
fn check_collector_got_everything(c: &Collector, rig: &Rig, how: &str, name: &str) {
    let last_voltage = *voltages().last().unwrap();
    let got = procs::wait_for(Duration::from_secs(30), || {
        let m = c.metrics();
        let acked = newest(&m, "ferrule_aggregator_acked_batches_total")?;
        let v = point_value(&acked["sum"]["dataPoints"][0])?;
        let gauge = m
            .iter()
            .rev()
            .find(|(_, m)| m["name"] == "ferrule_sensor_value")?;
        let newest_v = gauge.1["gauge"]["dataPoints"]
            .as_array()?
            .iter()
            .filter_map(point_value)
            .next_back()?;
        let spans = c.spans();
        let commit = spans
            .iter()
            .any(|(_, s)| s["name"] == "ferrule.aggregator.commit");
        (v > 0.0 && (newest_v - last_voltage).abs() < 1e-9 && commit).then_some(())
    });
    assert!(
        got.is_some(),
        "{how}: the collector never got acked batches, the last voltage {last_voltage} and a commit span.\ncollector log:\n{}\naggregator log:\n{}",
        c.log(),
        rig.log(name)
    );
    let m = c.metrics();

    // A counter: a monotonic cumulative sum, named as on /metrics, its value
    // what /metrics says (or less: /metrics is read later).
    let acked = newest(&m, "ferrule_aggregator_acked_batches_total").unwrap();
    assert_eq!(acked["sum"]["isMonotonic"], true, "{how}: {acked}");
    assert_eq!(
        acked["sum"]["aggregationTemporality"], 2,
        "{how}: cumulative: {acked}"
    );
    let exported = point_value(&acked["sum"]["dataPoints"][0]).unwrap();
    let scraped = procs::metric(
        &procs::http_get(rig.metrics, "/metrics").unwrap(),
        "ferrule_aggregator_acked_batches_total",
    )
    .unwrap();
    assert!(
        exported > 0.0 && exported <= scraped,
        "{how}: exported {exported}, /metrics {scraped}"
    );
    // A labelled counter keeps its labels as attributes.
    let rejected = newest(&m, "ferrule_aggregator_batches_rejected_total").unwrap();
    let reasons: Vec<String> = rejected["sum"]["dataPoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| attr(&p["attributes"], "reason"))
        .collect();
    assert!(
        reasons.iter().any(|r| r == "unknown_sensor"),
        "{how}: {reasons:?}"
    );
    // A gauge.
    let sessions = newest(&m, "ferrule_aggregator_sessions").unwrap();
    assert_eq!(
        point_value(&sessions["gauge"]["dataPoints"][0]),
        Some(1.0),
        "{how}: {sessions}"
    );
    // A histogram, with the buckets /metrics has.
    let commit = newest(&m, "ferrule_aggregator_commit_latency_seconds").unwrap();
    let p = &commit["histogram"]["dataPoints"][0];
    assert_eq!(
        p["explicitBounds"].as_array().map(Vec::len),
        Some(20),
        "{how}: {commit}"
    );
    let count: u64 = p["count"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(count > 0, "{how}: no commit latencies: {commit}");

    // The sensor gauge: only the values sent, with the sensor's attributes; the
    // current (not selected) never.
    let sent = voltages();
    let mut seen = 0;
    for (res, g) in m
        .iter()
        .filter(|(_, g)| g["name"] == "ferrule_sensor_value")
    {
        assert_eq!(
            attr(&res["attributes"], "service.name").as_deref(),
            Some("ferrule-aggregator")
        );
        for p in g["gauge"]["dataPoints"].as_array().unwrap() {
            let a = &p["attributes"];
            assert_eq!(
                attr(a, "sensor").as_deref(),
                Some("grid/voltage_l1"),
                "{how}: {p}"
            );
            assert_eq!(attr(a, "site").as_deref(), Some(SITE));
            assert_eq!(attr(a, "agent").as_deref(), Some(AGENT));
            assert_eq!(attr(a, "unit").as_deref(), Some("V"));
            assert_eq!(attr(a, "quality").as_deref(), Some("good"));
            let v = point_value(p).unwrap();
            assert!(
                sent.iter().any(|s| (s - v).abs() < 1e-9),
                "{how}: {v} was never sent"
            );
            seen += 1;
        }
    }
    assert!(seen > 0);

    // Commit spans: the batch's identity as attributes, in the trace it names.
    let spans = c.spans();
    let commits: Vec<&Value> = spans
        .iter()
        .filter(|(_, s)| s["name"] == "ferrule.aggregator.commit")
        .map(|(_, s)| s)
        .collect();
    for s in &commits {
        let a = &s["attributes"];
        assert_eq!(
            attr(a, "ferrule.agent").as_deref(),
            Some(AGENT),
            "{how}: {s}"
        );
        assert_eq!(attr(a, "ferrule.site").as_deref(), Some(SITE));
        let epoch: u64 = attr(a, "ferrule.epoch").unwrap().parse().unwrap();
        let seq: u64 = attr(a, "ferrule.seq").unwrap().parse().unwrap();
        let key = ferrule_otlp::BatchKey {
            site: SITE,
            agent: AGENT,
            epoch,
            seq,
        };
        assert_eq!(
            s["traceId"].as_str().unwrap(),
            key.trace_id().to_string(),
            "{how}: the span is not in the trace its batch names"
        );
        assert_eq!(
            s["parentSpanId"].as_str().unwrap(),
            key.span_id(ferrule_otlp::ROOT).to_string()
        );
        let start: u128 = s["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u128 = s["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(end >= start && end - start < 10_000_000_000, "{how}: {s}");
    }
    eprintln!(
        "{how}: {} metric records, {} spans ({} commits), {seen} sensor points; acked exported {exported}, scraped {scraped}",
        m.len(),
        spans.len(),
        commits.len()
    );
}

/// The agent's own metrics arrive under its service name, and a batch's spans
/// from both processes form one trace: the root (first sample to ack) with the
/// agent's spool and send spans and the aggregator's commit span under it.
fn check_agent_metrics_and_one_trace_per_batch(c: &Collector) {
    let whole = procs::wait_for(Duration::from_secs(30), || {
        let m = c.metrics();
        let acked = m.iter().rev().find(|(res, m)| {
            m["name"] == "ferrule_agent_acked_batches_total"
                && attr(&res["attributes"], "service.name").as_deref() == Some("ferrule-agent")
        })?;
        (point_value(&acked.1["sum"]["dataPoints"][0])? > 0.0).then_some(())?;
        let spans = c.spans();
        // A trace with all four steps.
        spans.iter().find_map(|(_, root)| {
            (root["name"] == ferrule_otlp::ROOT).then_some(())?;
            let trace = root["traceId"].as_str()?;
            let root_id = root["spanId"].as_str()?;
            let children: Vec<&str> = spans
                .iter()
                .filter(|(_, s)| s["traceId"] == trace && s["parentSpanId"] == root_id)
                .filter_map(|(_, s)| s["name"].as_str())
                .collect();
            [
                "ferrule.agent.spool",
                "ferrule.agent.send",
                "ferrule.aggregator.commit",
            ]
            .iter()
            .all(|n| children.contains(n))
            .then(|| (root.clone(), children.len()))
        })
    });
    let (root, children) = whole.unwrap_or_else(|| {
        panic!(
            "no trace with a batch's root, spool, send and commit spans; spans: {:?}",
            c.spans()
                .iter()
                .map(|(_, s)| s["name"].clone())
                .collect::<Vec<_>>()
        )
    });
    let a = &root["attributes"];
    assert_eq!(attr(a, "ferrule.agent").as_deref(), Some(AGENT));
    let start: u128 = root["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u128 = root["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    eprintln!(
        "agent: one trace per batch, root {} ms long, {children} steps under it",
        (end - start) / 1_000_000
    );
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn the_collector_receives_metrics_traces_and_sensor_gauges_over_grpc_http_and_mtls() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut rig = Rig::new(root);

    // gRPC.
    let plain = Collector::start(&root.join("otelcol"));
    rig.start_aggregator(&otlp_section(&plain.grpc, "grpc", ""), "grpc");
    rig.start_agent(&plain.grpc);
    rig.send_voltages();
    check_collector_got_everything(&plain, &rig, "grpc", "grpc");
    check_agent_metrics_and_one_trace_per_batch(&plain);
    // A sensor that went quiet is no longer exported (three intervals on): a
    // silent sensor must not look live.
    let quiet = procs::wait_for(Duration::from_secs(20), || {
        let names = plain.last_export("ferrule-aggregator");
        (!names.is_empty() && !names.iter().any(|n| n == "ferrule_sensor_value")).then_some(())
    });
    assert!(
        quiet.is_some(),
        "the voltage, silent for 20 s, is still exported: {:?}",
        plain.last_export("ferrule-aggregator")
    );

    // HTTP/protobuf, to a fresh collector (so nothing above counts).
    drop(plain);
    let plain = Collector::start(&root.join("otelcol-http"));
    rig.start_aggregator(&otlp_section(&plain.http, "http/protobuf", ""), "http");
    rig.send_voltages();
    check_collector_got_everything(&plain, &rig, "http/protobuf", "http");
    drop(plain);

    // Mutual TLS over gRPC: the collector requires a client certificate from
    // the dev CA; the aggregator gives its own.
    let tls = Collector::start_with(&root.join("otelcol-tls"), Some(&rig.pki));
    let (cert, key) = rig.pki.agent("telemetry", "aggregator-1").unwrap();
    let files = format!(
        "ca = {:?}\ncert = {:?}\nkey = {:?}\n",
        rig.pki.ca_bundle(),
        cert,
        key
    );
    rig.start_aggregator(&otlp_section(&tls.grpc, "grpc", &files), "tls");
    rig.send_voltages();
    check_collector_got_everything(&tls, &rig, "grpc over mutual TLS", "tls");
}

/// A receiver that accepts connections and never answers (a black hole) or
/// one that is not there: the aggregator goes on acknowledging, says the
/// exports fail in its log, and still stops within seconds of SIGTERM.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn a_dead_or_silent_collector_is_logged_and_never_holds_the_pipeline_or_the_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Accepts, never reads or answers; kept open for the test's length.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for c in hole.incoming().flatten() {
            keep.lock().unwrap().push(c);
        }
    });
    let dead = procs::free_tcp_port().unwrap();
    for (how, endpoint, protocol) in [
        ("black hole, gRPC", format!("http://{hole_addr}"), "grpc"),
        (
            "black hole, HTTP",
            format!("http://{hole_addr}"),
            "http/protobuf",
        ),
        (
            "nothing there, gRPC",
            format!("http://127.0.0.1:{dead}"),
            "grpc",
        ),
    ] {
        let mut rig = Rig::new(&root.join(how.replace([' ', ','], "_")));
        rig.start_aggregator(&otlp_section(&endpoint, protocol, ""), "dead");
        rig.start_agent(&endpoint);
        rig.send_voltages();
        // Batches keep being acknowledged while every export fails.
        let acked = |rig: &Rig| {
            procs::metric(
                &procs::http_get(rig.metrics, "/metrics").unwrap_or_default(),
                "ferrule_aggregator_acked_batches_total",
            )
            .unwrap_or(0.0)
        };
        let first = procs::wait_for(Duration::from_secs(20), || {
            let a = acked(&rig);
            (a > 0.0).then_some(a)
        })
        .unwrap_or_else(|| panic!("{how}: nothing acknowledged:\n{}", rig.log("dead")));
        // The failures are in the log, said by the SDK (a wrong endpoint must
        // be noticed), within a few export intervals.
        let said = procs::wait_for(Duration::from_secs(30), || {
            rig.log("dead")
                .lines()
                .find(|l| {
                    let l = l.to_lowercase();
                    (l.contains("export") || l.contains("otlp"))
                        && (l.contains("fail") || l.contains("error"))
                })
                .map(str::to_string)
        });
        let said =
            said.unwrap_or_else(|| panic!("{how}: no export failure logged:\n{}", rig.log("dead")));
        eprintln!("{how}: logged: {said}");
        rig.send_voltages();
        let later = procs::wait_for(Duration::from_secs(20), || {
            let a = acked(&rig);
            (a > first).then_some(a)
        });
        assert!(later.is_some(), "{how}: acks stopped at {first}");
        // SIGTERM: the last export is abandoned after 3 s; the stop is prompt.
        let mut agg = rig.agg.take().unwrap();
        let t = std::time::Instant::now();
        assert!(agg.term(Duration::from_secs(12)), "{how}: did not stop");
        let took = t.elapsed();
        eprintln!("{how}: acked {first} then {later:?}; stopped in {took:?}");
        assert!(took < Duration::from_secs(10), "{how}: stop took {took:?}");
    }
}

#[test]
fn a_bad_otlp_section_stops_the_start_with_the_key_at_fault() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pki = DevPki::ensure(&root.join("pki")).unwrap();
    let quic: SocketAddr = ([127, 0, 0, 1], procs::free_udp_port().unwrap()).into();
    for (otlp, key) in [
        ("[otlp]\nendpoint = \"collector:4317\"\n", "otlp.endpoint"),
        (
            "[otlp]\nendpoint = \"http://c:4317\"\ntrace_sample_ratio = 3\n",
            "otlp.trace_sample_ratio",
        ),
        (
            "[otlp]\nendpoint = \"http://c:4317\"\nprotocol = \"udp\"\n",
            "protocol",
        ),
    ] {
        let cfg = root.join("aggregator.toml");
        std::fs::write(
            &cfg,
            procs::aggregator_toml(&pki, &root.join("data"), quic, None, otlp),
        )
        .unwrap();
        let out = std::process::Command::new(procs::bin("ferrule-aggregator").unwrap())
            .args(["check-config", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{otlp} accepted: {text}");
        assert!(text.contains(key), "{otlp}: {key} not named in: {text}");
    }
}
