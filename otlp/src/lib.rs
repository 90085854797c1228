//! # ferrule-otlp
//!
//! ferrule's OpenTelemetry export over OTLP (gRPC or HTTP/protobuf), for
//! observability teams that already run an OpenTelemetry Collector:
//!
//! - **its own metrics**: every counter and gauge of the process's
//!   [`Registry`] (read when the SDK collects, under the same names as on
//!   `/metrics`), and every histogram (each observation copied to an OTel
//!   histogram with the same bucket bounds);
//! - **traces of a batch's life** ([`BatchTracer`]): spans for the steps a
//!   sampled batch goes through (spooled, sent, committed, acknowledged), with
//!   its agent, epoch and seq as attributes. Agent and aggregator derive the
//!   trace from those three alone, so their spans of one batch form one trace
//!   without any context on the wire;
//! - **sensors as gauges** ([`SensorGauges`]): selected signals, for a team
//!   whose dashboards read OTLP.
//!
//! Export is best effort and never blocks the data path: the SDK exports from
//! its own thread, a receiver that is down costs failed exports (logged by the
//! SDK) and nothing else.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod config;
mod spans;

pub use config::{OtlpSection, Protocol};
pub use opentelemetry::trace::SpanKind;
pub use opentelemetry::KeyValue;
pub use spans::{BatchKey, BatchTracer, ROOT};

use ferrule_telemetry::{Kind, Registry};
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Why OTLP export could not start (the process does not start either: a
/// configured export that silently does nothing would be worse).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A TLS file is missing or unreadable, or does not parse.
    #[error("otlp TLS: {0}")]
    Tls(String),
    /// A header value names an environment variable that is not set, or is
    /// not a valid header.
    #[error("otlp.headers: {0}")]
    Header(String),
    /// The SDK refused to build an exporter.
    #[error("otlp exporter: {0}")]
    Exporter(String),
    /// Not called from within a tokio runtime.
    #[error("otlp export must start inside the tokio runtime")]
    NoRuntime,
}

/// The running export. Dropping it stops nothing: call [`Otlp::shutdown`] to
/// flush what is pending before the process exits.
pub struct Otlp {
    export_interval: Duration,
    meters: SdkMeterProvider,
    tracers: SdkTracerProvider,
    meter: Meter,
    batches: BatchTracer,
    bridge: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Otlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otlp").finish_non_exhaustive()
    }
}

/// The headers of `[otlp]`, `env:` values read.
fn headers(cfg: &OtlpSection) -> Result<HashMap<String, String>, Error> {
    cfg.headers
        .iter()
        .map(|(k, v)| Ok((k.clone(), config::resolve(v).map_err(Error::Header)?)))
        .collect()
}

fn exporter_error(e: impl std::fmt::Display) -> Error {
    Error::Exporter(e.to_string())
}

impl Otlp {
    /// Starts exporting `registry`'s metrics, and traces for [`Otlp::batches`],
    /// as `service` (`service.name`) with `attributes` on the resource (site,
    /// agent, instance). Call it from inside the tokio runtime.
    pub fn start(
        cfg: &OtlpSection,
        service: &str,
        attributes: Vec<KeyValue>,
        registry: &Registry,
    ) -> Result<Self, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let tls = client::TlsFiles::load(cfg)?;
        let headers = headers(cfg)?;
        let base = cfg.endpoint.trim_end_matches('/').to_string();
        let https = base.starts_with("https://");
        let (metric_exporter, span_exporter) = match cfg.protocol {
            Protocol::Grpc => {
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
                        .map_err(|e| Error::Header(format!("{k}: {e}")))?;
                    let value = v
                        .parse()
                        .map_err(|_| Error::Header(format!("{k}: not a valid header value")))?;
                    metadata.insert(key, value);
                }
                let m = opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(base.clone())
                    .with_timeout(cfg.timeout())
                    .with_metadata(metadata.clone());
                let m = if https {
                    m.with_tls_config(tls.tonic())
                } else {
                    m
                };
                let s = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(base.clone())
                    .with_timeout(cfg.timeout())
                    .with_metadata(metadata);
                let s = if https {
                    s.with_tls_config(tls.tonic())
                } else {
                    s
                };
                (
                    m.build().map_err(exporter_error)?,
                    s.build().map_err(exporter_error)?,
                )
            }
            Protocol::HttpProtobuf => {
                let http = client::RuntimeHttp::new(tls.rustls()?, runtime.clone(), cfg.timeout());
                let m = opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_http_client(http.clone())
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(format!("{base}/v1/metrics"))
                    .with_timeout(cfg.timeout())
                    .with_headers(headers.clone())
                    .build()
                    .map_err(exporter_error)?;
                let s = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_http_client(http)
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(format!("{base}/v1/traces"))
                    .with_timeout(cfg.timeout())
                    .with_headers(headers)
                    .build()
                    .map_err(exporter_error)?;
                (m, s)
            }
        };
        let resource = Resource::builder()
            .with_service_name(service.to_string())
            .with_attributes(attributes)
            .build();
        let reader = PeriodicReader::builder(metric_exporter)
            .with_interval(cfg.export_interval())
            .build();
        let meters = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(reader)
            // Room for every sensor series (the SDK's default is 2000 per
            // instrument, the rest lumped into one overflow series).
            .with_view(|i: &opentelemetry_sdk::metrics::Instrument| {
                (i.name() == SENSOR_GAUGE)
                    .then(|| {
                        opentelemetry_sdk::metrics::Stream::builder()
                            .with_cardinality_limit(MAX_SENSOR_SERIES + 1)
                            .build()
                            .ok()
                    })
                    .flatten()
            })
            .build();
        let tracers = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_id_generator(spans::KeyedIds::default())
            .with_batch_exporter(span_exporter)
            .build();
        let meter = meters.meter("ferrule");
        let batches = BatchTracer::new(&tracers, cfg.trace_sample_ratio);
        registry.mirror_histograms(histogram_mirror(meter.clone()));
        let bridge = runtime.spawn(bridge(
            meter.clone(),
            registry.clone(),
            // New families show up in the next export after they appear.
            cfg.export_interval().min(Duration::from_secs(5)),
        ));
        tracing::info!(endpoint = %base, protocol = ?cfg.protocol, interval_s = cfg.export_interval().as_secs(), "exporting metrics and traces over OTLP");
        Ok(Self {
            export_interval: cfg.export_interval(),
            meters,
            tracers,
            meter,
            batches,
            bridge,
        })
    }

    /// The tracer for batch spans (sampling decided per batch).
    pub fn batches(&self) -> BatchTracer {
        self.batches.clone()
    }

    /// The meter, for instruments of one's own (the sensor gauges).
    pub fn meter(&self) -> Meter {
        self.meter.clone()
    }

    /// Exports what is pending and stops, waiting `within` at most: a receiver
    /// that is down or hangs must not hold a process's stop (the SDK's own
    /// shutdown can take 5 s per signal). What is not out by then is lost.
    pub async fn shutdown(self, within: Duration) {
        self.bridge.abort();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (meters, tracers) = (self.meters, self.tracers);
        // A thread of its own, not waited for past `within`: a blocking task
        // of the runtime would hold the runtime's own shutdown.
        let spawned = std::thread::Builder::new()
            .name("otlp-shutdown".into())
            .spawn(move || {
                let m = meters.shutdown();
                let t = tracers.shutdown();
                let _ = done_tx.send((m, t));
            });
        if spawned.is_err() {
            return;
        }
        match tokio::time::timeout(within, done_rx).await {
            Ok(Ok((m, t))) => {
                if let Err(e) = m {
                    tracing::warn!(error = %e, "OTLP metrics: last export failed");
                }
                if let Err(e) = t {
                    tracing::warn!(error = %e, "OTLP traces: last export failed");
                }
            }
            _ => tracing::warn!(
                within_s = within.as_secs_f64(),
                "OTLP: the last export did not finish in time; left behind"
            ),
        }
    }
}

fn attrs(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect()
}

/// Copies histogram observations into OTel histograms with the same bounds, one
/// instrument per family.
fn histogram_mirror(meter: Meter) -> Arc<ferrule_telemetry::MirrorMaker> {
    let instruments: Mutex<HashMap<String, opentelemetry::metrics::Histogram<f64>>> =
        Mutex::default();
    Arc::new(move |name, help, bounds, labels| {
        let h = instruments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_string())
            .or_insert_with(|| {
                meter
                    .f64_histogram(name.to_string())
                    .with_description(help.to_string())
                    .with_boundaries(bounds.to_vec())
                    .build()
            })
            .clone();
        let attributes = attrs(labels);
        Box::new(move |v| h.record(v, &attributes))
    })
}

/// Registers an observable instrument for every counter and gauge family of
/// `registry`, now and whenever new ones appear; each reads its series when the
/// SDK collects.
async fn bridge(meter: Meter, registry: Registry, every: Duration) {
    let mut known: HashSet<String> = HashSet::new();
    // Observable instruments stay registered while their handles live.
    let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        for f in registry.families() {
            if f.kind == Kind::Histogram || known.contains(&f.name) {
                continue;
            }
            known.insert(f.name.clone());
            let (reg, name) = (registry.clone(), f.name.clone());
            match f.kind {
                Kind::Counter => held.push(Box::new(
                    meter
                        .u64_observable_counter(f.name.clone())
                        .with_description(f.help.clone())
                        .with_callback(move |o| {
                            for (labels, v) in reg.read(&name) {
                                o.observe(u64::try_from(v).unwrap_or(0), &attrs(&labels));
                            }
                        })
                        .build(),
                )),
                Kind::Gauge => held.push(Box::new(
                    meter
                        .i64_observable_gauge(f.name.clone())
                        .with_description(f.help.clone())
                        .with_callback(move |o| {
                            for (labels, v) in reg.read(&name) {
                                o.observe(v, &attrs(&labels));
                            }
                        })
                        .build(),
                )),
                Kind::Histogram => {}
            }
        }
    }
}

/// Sensor series exported at most; beyond, new sensors are refused (counted in
/// `ferrule_aggregator_otlp_sensor_series_refused_total`), never lumped together.
pub const MAX_SENSOR_SERIES: usize = 10_000;

/// A sensor's newest value and what it is exported with.
struct SensorPoint {
    attributes: Vec<KeyValue>,
    unit: String,
    quality: &'static str,
    value: f64,
    at: std::time::Instant,
}

type SensorKey = (String, String, String);

/// Selected sensors' values as an OTLP gauge (`ferrule_sensor_value`), one
/// series per (site, agent, sensor) with its `unit` and `quality` as
/// attributes: the newest value at each export. A sensor not heard from for
/// three export intervals is no longer exported (a silent sensor must not look
/// live), and at most [`MAX_SENSOR_SERIES`] sensors are.
#[derive(Clone)]
pub struct SensorGauges {
    points: Arc<Mutex<HashMap<SensorKey, SensorPoint>>>,
    refused: ferrule_telemetry::Counter,
    /// Keeps the observable gauge registered.
    _gauge: Arc<opentelemetry::metrics::ObservableGauge<f64>>,
}

impl std::fmt::Debug for SensorGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorGauges").finish_non_exhaustive()
    }
}

/// The name sensor gauges are exported under.
pub const SENSOR_GAUGE: &str = "ferrule_sensor_value";

impl SensorGauges {
    /// The gauge on `otlp`'s meter; its refusals counted in `registry`.
    pub fn new(otlp: &Otlp, registry: &Registry) -> Self {
        let points: Arc<Mutex<HashMap<SensorKey, SensorPoint>>> = Arc::default();
        let stale = otlp.export_interval * 3;
        let read = points.clone();
        let gauge = otlp
            .meter()
            .f64_observable_gauge(SENSOR_GAUGE)
            .with_description("A sensor's newest value, selected by otlp.sensors")
            .with_callback(move |o| {
                let mut p = read.lock().unwrap_or_else(PoisonError::into_inner);
                p.retain(|_, point| point.at.elapsed() < stale);
                for point in p.values() {
                    o.observe(point.value, &point.attributes);
                }
            })
            .build();
        Self {
            points,
            refused: registry.counter(
                "ferrule_aggregator_otlp_sensor_series_refused_total",
                "Samples of sensors not exported over OTLP because otlp.sensors selected more than 10000 sensors",
                &[],
            ),
            _gauge: Arc::new(gauge),
        }
    }

    /// Records `value` for the sensor; `quality` is its quality flag's name.
    pub fn record(
        &self,
        site: &str,
        agent: &str,
        sensor: &str,
        unit: &str,
        quality: &'static str,
        value: f64,
    ) {
        let mut points = self.points.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (site.to_string(), agent.to_string(), sensor.to_string());
        let now = std::time::Instant::now();
        if let Some(p) = points.get_mut(&key) {
            if p.unit != unit || p.quality != quality {
                p.attributes = sensor_attributes(site, agent, sensor, unit, quality);
                p.unit = unit.to_string();
                p.quality = quality;
            }
            p.value = value;
            p.at = now;
            return;
        }
        if points.len() >= MAX_SENSOR_SERIES {
            self.refused.inc();
            return;
        }
        points.insert(
            key,
            SensorPoint {
                attributes: sensor_attributes(site, agent, sensor, unit, quality),
                unit: unit.to_string(),
                quality,
                value,
                at: now,
            },
        );
    }
}

fn sensor_attributes(
    site: &str,
    agent: &str,
    sensor: &str,
    unit: &str,
    quality: &str,
) -> Vec<KeyValue> {
    vec![
        KeyValue::new("site", site.to_string()),
        KeyValue::new("agent", agent.to_string()),
        KeyValue::new("sensor", sensor.to_string()),
        KeyValue::new("unit", unit.to_string()),
        KeyValue::new("quality", quality.to_string()),
    ]
}
