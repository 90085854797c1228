//! Golden test vectors: the encoding of each message is pinned in
//! `tests/vectors/*.hex`, so it cannot drift without a deliberate change.
//!
//! To re-pin after a deliberate change (and a protocol or encoding version bump):
//! `FERRULE_BLESS_VECTORS=1 cargo test -p ferrule-wire --test vectors`.
#![allow(clippy::unwrap_used)] // a panic in a test is a failure with a backtrace

mod common;

use common::same;
use ferrule_wire::example::{FeedOptions, ThreePhaseFeed};
use ferrule_wire::*;
use std::path::PathBuf;

fn vectors() -> Vec<(&'static str, Message)> {
    let mut mixed = Series::new(SensorId(9));
    for (i, v) in [1.5, f64::NAN, -0.0, f64::INFINITY, 1e-300, 3.25]
        .iter()
        .enumerate()
    {
        let q = [Quality::Good, Quality::Uncertain, Quality::Bad][i % 3];
        mixed.push(1_767_225_600_000_000_000 + i as i64 * 1_000_123, *v, q);
    }
    vec![
        (
            "hello",
            Message::Hello(Hello {
                min_version: 1,
                max_version: 1,
                epoch: Epoch(1_767_225_600),
                resume_from: Seq(42),
                // An agent from before live copies: lanes and clock offsets.
                capabilities: Capabilities(Capabilities::LANES.0 | Capabilities::CLOCK_OFFSET.0),
                site: "substation-7".into(),
                agent: "rtu-3".into(),
                software: "0.1.0".into(),
            }),
        ),
        (
            "hello_live",
            Message::Hello(Hello {
                min_version: 1,
                max_version: 1,
                epoch: Epoch(1_767_225_600),
                resume_from: Seq(42),
                // An agent from before spool reports: lanes, clock offsets, live copies.
                capabilities: Capabilities(
                    Capabilities::LANES.0 | Capabilities::CLOCK_OFFSET.0 | Capabilities::LIVE.0,
                ),
                site: "substation-7".into(),
                agent: "rtu-3".into(),
                software: "0.2.0".into(),
            }),
        ),
        (
            "hello_status",
            Message::Hello(Hello {
                min_version: 1,
                max_version: 1,
                epoch: Epoch(1_767_225_600),
                resume_from: Seq(42),
                capabilities: Capabilities(
                    Capabilities::LANES.0
                        | Capabilities::CLOCK_OFFSET.0
                        | Capabilities::LIVE.0
                        | Capabilities::STATUS.0,
                ),
                site: "substation-7".into(),
                agent: "rtu-3".into(),
                software: "0.3.0".into(),
            }),
        ),
        (
            "status",
            Message::Status(Status {
                spool_batches: 1_234,
                spool_bytes: 5_678_901,
                oldest_unacked_ms: 3_600_000,
            }),
        ),
        (
            "welcome",
            Message::Welcome(Welcome {
                version: 1,
                capabilities: Capabilities::LANES,
                limits: ServerLimits {
                    max_frame_bytes: 1 << 20,
                    max_batch_samples: 61_680,
                    max_sensors: 100_000,
                    heartbeat_interval_ms: 5_000,
                },
                credit: Credit {
                    bytes: 8 << 20,
                    batches: 64,
                },
                server: "agg-1".into(),
            }),
        ),
        (
            "define",
            Message::Define(Define {
                sensor: SensorId(3),
                name: SensorName::new("feeder-2/phase_a/voltage").unwrap(),
                unit: "V".into(),
                kind: SensorKind::Gauge,
            }),
        ),
        (
            "batch_three_phase",
            Message::Batch(Batch {
                epoch: Epoch(1_767_225_600),
                seq: Seq(42),
                clock_offset_ns: -1_250_000,
                series: ThreePhaseFeed::new(7, 1_767_225_600_000_000_000, FeedOptions::default())
                    .next_batch(70),
            }),
        ),
        (
            "live_three_phase",
            Message::Live(Batch {
                epoch: Epoch(1_767_225_600),
                seq: Seq(43),
                clock_offset_ns: -1_250_000,
                series: ThreePhaseFeed::new(7, 1_767_225_670_000_000_000, FeedOptions::default())
                    .next_batch(10),
            }),
        ),
        (
            "batch_special_values",
            Message::Batch(Batch {
                epoch: Epoch(5),
                seq: Seq(6),
                clock_offset_ns: 7,
                series: vec![mixed, Series::new(SensorId(10))],
            }),
        ),
        (
            "ack_committed",
            Message::Ack(Ack {
                epoch: Epoch(5),
                outcome: Outcome::Committed,
                through: Some(Seq(100)),
                ranges: vec![SeqRange {
                    first: Seq(102),
                    last: Seq(104),
                }],
            }),
        ),
        (
            "ack_rejected",
            Message::Ack(Ack {
                epoch: Epoch(5),
                outcome: Outcome::Rejected(RejectReason::UNKNOWN_SENSOR),
                through: None,
                ranges: vec![SeqRange {
                    first: Seq(101),
                    last: Seq(101),
                }],
            }),
        ),
        (
            "credit",
            Message::Credit(Credit {
                bytes: 1 << 20,
                batches: 8,
            }),
        ),
        (
            "heartbeat",
            Message::Heartbeat(Heartbeat {
                origin_ns: 1_767_225_600_000_000_000,
                receive_ns: 1_767_225_600_001_000_000,
                transmit_ns: 1_767_225_600_001_000_500,
            }),
        ),
        (
            "goaway",
            Message::GoAway(GoAway {
                reason: GoAwayReason::SHUTDOWN,
                alternate: Some("agg-2.example:4433".into()),
            }),
        ),
        (
            "error",
            Message::Error(ErrorMessage {
                code: ErrorCode::IDENTITY_MISMATCH,
                message: "hello claims another site".into(),
            }),
        ),
    ]
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, b) in bytes.iter().enumerate() {
        s.push_str(&format!("{b:02x}"));
        s.push(if i % 32 == 31 { '\n' } else { ' ' });
    }
    s.trim_end().to_string() + "\n"
}

/// Parses hex, ignoring whitespace and `#` comment lines.
fn from_hex(text: &str) -> Vec<u8> {
    let digits: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digit"))
        .collect()
}

#[test]
fn encodings_match_the_golden_vectors() {
    let bless = std::env::var_os("FERRULE_BLESS_VECTORS").is_some();
    let limits = Limits::default();
    for (name, msg) in vectors() {
        let path = dir().join(format!("{name}.hex"));
        let mut bytes = Vec::new();
        encode(&msg, &limits, &mut bytes).unwrap();
        if bless {
            let text = format!(
                "# ferrule wire v{PROTOCOL_VERSION}, sample encoding v{SAMPLE_ENCODING_V1}: {name} ({} bytes)\n{}",
                bytes.len(),
                to_hex(&bytes)
            );
            std::fs::write(&path, text).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (bless with FERRULE_BLESS_VECTORS=1)",
                path.display()
            )
        });
        let golden = from_hex(&text);
        assert_eq!(
            to_hex(&bytes),
            to_hex(&golden),
            "encoding of {name} drifted from {}",
            path.display()
        );
        let (back, used) = decode(&golden, &limits).unwrap().unwrap();
        assert_eq!(used, golden.len());
        assert!(same(&back, &msg), "{name}: golden bytes decode to {back:?}");
    }
}

#[test]
fn hostile_vectors_are_refused_with_their_error() {
    // Inputs that must fail, each pinned with the error it must give.
    let limits = Limits::for_frame_bytes(4096);
    let cases: Vec<(&str, DecodeError)> = vec![
        (
            "huge_length",
            DecodeError::FrameTooLarge {
                declared: 4_294_967_299,
                limit: 4096,
            },
        ),
        ("empty_frame", DecodeError::EmptyFrame),
        ("unknown_type", DecodeError::UnknownType(200)),
        (
            "batch_too_many_samples",
            DecodeError::TooManySamples {
                declared: 1_000_000,
                limit: 240,
            },
        ),
        ("varint_overflow", DecodeError::VarintOverflow),
        ("trailing_bytes", DecodeError::TrailingBytes(2)),
        ("status_truncated", DecodeError::Truncated),
        ("status_varint_overflow", DecodeError::VarintOverflow),
        ("status_trailing_bytes", DecodeError::TrailingBytes(1)),
    ];
    for (name, want) in cases {
        let path = dir().join("hostile").join(format!("{name}.hex"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let got = decode(&from_hex(&text), &limits);
        assert_eq!(got, Err(want), "{name}");
    }
}

/// A committed record with its decoded content as JSON: the cross-language vector
/// other teams' decoders (see `wire/python/`) are tested against.
fn record_vector() -> (Vec<u8>, serde_json::Value) {
    use ferrule_wire::record::{encode_record, RecordHeader, SensorInfo};
    let series =
        ThreePhaseFeed::new(11, 1_767_225_600_000_000_000, FeedOptions::default()).next_batch(70);
    let mut specials = Series::new(SensorId(7));
    for (i, v) in [1.5, -0.0, f64::NAN, 1e-300, 230.17].iter().enumerate() {
        let q = [Quality::Good, Quality::Uncertain, Quality::Bad][i % 3];
        specials.push(1_767_225_600_000_000_000 + i as i64 * 999_937, *v, q);
    }
    let mut all = series;
    all.push(specials);
    let mut sensors: Vec<SensorInfo> = ferrule_wire::example::SENSORS
        .iter()
        .zip(ferrule_wire::example::UNITS)
        .enumerate()
        .map(|(i, (n, u))| SensorInfo {
            id: SensorId(i as u32),
            name: SensorName::new(format!("feeder-1/{n}")).unwrap(),
            unit: u.to_string(),
            kind: SensorKind::Gauge,
        })
        .collect();
    sensors.push(SensorInfo {
        id: SensorId(7),
        name: SensorName::new("breaker-3/state").unwrap(),
        unit: "".into(),
        kind: SensorKind::State,
    });
    let samples: usize = all.iter().map(Series::len).sum();
    let header = RecordHeader {
        site: "substation-7".into(),
        agent: "rtu-3".into(),
        epoch: Epoch(1_767_225_600),
        seq: Seq(42),
        clock_offset_ns: -1_250_000,
        received_ns: 1_767_225_600_500_000_000,
        samples: samples as u32,
        sensors: sensors.clone(),
    };
    let mut bytes = Vec::new();
    encode_record(&header, &all, &mut bytes).unwrap();
    let mut rows = Vec::new();
    for s in &all {
        let name = sensors
            .iter()
            .find(|i| i.id == s.sensor())
            .unwrap()
            .name
            .to_string();
        for (t, v, q) in s.iter() {
            rows.push(serde_json::json!({
                "sensor": name,
                "ts_ns": t,
                "value_bits": format!("{:016x}", v.to_bits()),
                "quality": format!("{q:?}").to_lowercase(),
            }));
        }
    }
    let json = serde_json::json!({
        "site": header.site, "agent": header.agent, "epoch": header.epoch.0, "seq": header.seq.0,
        "clock_offset_ns": header.clock_offset_ns, "received_ns": header.received_ns,
        "samples": rows,
    });
    (bytes, json)
}

#[test]
fn record_vector_matches_and_decodes() {
    let (bytes, json) = record_vector();
    let hex_path = dir().join("record_three_phase.hex");
    let json_path = dir().join("record_three_phase.json");
    if std::env::var_os("FERRULE_BLESS_VECTORS").is_some() {
        let text = format!(
            "# ferrule committed record v{}, sample encoding v{SAMPLE_ENCODING_V1} ({} bytes); decoded in record_three_phase.json\n{}",
            ferrule_wire::record::RECORD_VERSION,
            bytes.len(),
            to_hex(&bytes)
        );
        std::fs::write(&hex_path, text).unwrap();
        std::fs::write(
            &json_path,
            serde_json::to_string_pretty(&json).unwrap() + "\n",
        )
        .unwrap();
    }
    let golden = from_hex(&std::fs::read_to_string(&hex_path).unwrap());
    assert_eq!(to_hex(&bytes), to_hex(&golden), "record encoding drifted");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(json, want, "decoded content drifted");
    let rec = ferrule_wire::record::decode_record(&golden, 10_000).unwrap();
    assert_eq!(rec.header.seq, Seq(42));
}
