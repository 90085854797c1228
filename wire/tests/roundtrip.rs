//! Property tests: every message survives encode then decode, bit for bit, and
//! decoding arbitrary bytes never panics.
#![allow(clippy::unwrap_used)] // a panic in a test is a failure with a backtrace

mod common;

use common::{frame, same};
use ferrule_wire::*;
use proptest::prelude::*;

fn name() -> impl Strategy<Value = SensorName> {
    "[a-z0-9_./:-]{1,40}".prop_map(|s| SensorName::new(s).unwrap())
}

fn quality() -> impl Strategy<Value = Quality> {
    prop_oneof![
        Just(Quality::Good),
        Just(Quality::Uncertain),
        Just(Quality::Bad)
    ]
}

/// Values that exercise both codec paths: decimals, smooth signals, raw bits.
fn values(n: usize) -> impl Strategy<Value = Vec<f64>> {
    prop_oneof![
        proptest::collection::vec(any::<u64>().prop_map(f64::from_bits), n),
        proptest::collection::vec((-100_000i64..100_000).prop_map(|i| i as f64 / 100.0), n),
        proptest::collection::vec((-5i64..5).prop_map(|i| i as f64 * 0.1), n),
        (any::<f64>(), -1.0f64..1.0)
            .prop_map(move |(a, d)| (0..n).map(|i| a + d * i as f64).collect()),
    ]
}

fn timestamps(n: usize) -> impl Strategy<Value = Vec<i64>> {
    prop_oneof![
        proptest::collection::vec(any::<i64>(), n),
        (any::<i64>(), 0i64..10_000_000, 0i64..1000).prop_flat_map(move |(t0, step, jit)| {
            proptest::collection::vec(-jit..=jit, n).prop_map(move |js| {
                js.iter()
                    .enumerate()
                    .map(|(i, j)| {
                        t0.wrapping_add(step.wrapping_mul(i as i64))
                            .wrapping_add(*j)
                    })
                    .collect()
            })
        }),
    ]
}

fn series() -> impl Strategy<Value = Series> {
    (any::<u32>(), 0usize..300).prop_flat_map(|(id, n)| {
        (
            timestamps(n),
            values(n),
            prop_oneof![
                proptest::collection::vec(quality(), n),
                quality().prop_map(move |q| vec![q; n])
            ],
        )
            .prop_map(move |(ts, vs, qs)| {
                let mut s = Series::new(SensorId(id));
                for ((t, v), q) in ts.iter().zip(&vs).zip(&qs) {
                    s.push(*t, *v, *q);
                }
                s
            })
    })
}

fn seq_range() -> impl Strategy<Value = SeqRange> {
    (any::<u64>(), 0u64..1000).prop_map(|(a, w)| SeqRange {
        first: Seq(a),
        last: Seq(a.saturating_add(w)),
    })
}

fn message() -> impl Strategy<Value = Message> {
    let credit =
        (any::<u64>(), any::<u32>()).prop_map(|(bytes, batches)| Credit { bytes, batches });
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            ".{0,20}",
            ".{0,20}",
            ".{0,20}"
        )
            .prop_map(
                |(a, b, e, r, c, site, agent, software)| Message::Hello(Hello {
                    min_version: a,
                    max_version: b,
                    epoch: Epoch(e),
                    resume_from: Seq(r),
                    capabilities: Capabilities(c),
                    site,
                    agent,
                    software,
                })
            ),
        (
            any::<u16>(),
            any::<u32>(),
            any::<[u32; 4]>(),
            credit.clone(),
            ".{0,30}"
        )
            .prop_map(|(version, c, l, credit, server)| Message::Welcome(Welcome {
                version,
                capabilities: Capabilities(c),
                limits: ServerLimits {
                    max_frame_bytes: l[0],
                    max_batch_samples: l[1],
                    max_sensors: l[2],
                    heartbeat_interval_ms: l[3],
                },
                credit,
                server,
            })),
        (any::<u32>(), name(), "[A-Za-z%/]{0,8}", 0u8..3).prop_map(|(id, name, unit, k)| {
            Message::Define(Define {
                sensor: SensorId(id),
                name,
                unit,
                kind: [SensorKind::Gauge, SensorKind::Counter, SensorKind::State][k as usize],
            })
        }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<i64>(),
            proptest::collection::vec(series(), 0..8)
        )
            .prop_map(|(e, s, off, series)| Message::Batch(Batch {
                epoch: Epoch(e),
                seq: Seq(s),
                clock_offset_ns: off,
                series,
            })),
        (
            any::<u64>(),
            prop_oneof![
                Just(Outcome::Committed),
                any::<u16>().prop_map(|r| Outcome::Rejected(RejectReason(r)))
            ],
            proptest::option::of(any::<u64>().prop_map(Seq)),
            proptest::collection::vec(seq_range(), 0..10)
        )
            .prop_map(|(e, outcome, through, ranges)| Message::Ack(Ack {
                epoch: Epoch(e),
                outcome,
                through,
                ranges,
            })),
        credit.prop_map(Message::Credit),
        any::<[i64; 3]>().prop_map(|t| Message::Heartbeat(Heartbeat {
            origin_ns: t[0],
            receive_ns: t[1],
            transmit_ns: t[2],
        })),
        (any::<u16>(), proptest::option::of("[a-z0-9.:-]{1,30}")).prop_map(|(r, alternate)| {
            Message::GoAway(GoAway {
                reason: GoAwayReason(r),
                alternate,
            })
        }),
        (any::<u16>(), ".{0,60}").prop_map(|(c, message)| Message::Error(ErrorMessage {
            code: ErrorCode(c),
            message,
        })),
        any::<[u64; 3]>().prop_map(|n| Message::Status(Status {
            spool_batches: n[0],
            spool_bytes: n[1],
            oldest_unacked_ms: n[2],
        })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(m in message()) {
        let limits = Limits { max_frame_bytes: u32::MAX, max_batch_samples: u32::MAX };
        let mut buf = Vec::new();
        encode(&m, &limits, &mut buf).unwrap();
        let (back, used) = decode(&buf, &limits).unwrap().unwrap();
        prop_assert_eq!(used, buf.len());
        prop_assert!(same(&m, &back), "{:?} != {:?}", m, back);
        // Any prefix is "need more", never an error or a wrong message.
        let cut = buf.len() / 2;
        prop_assert_eq!(decode(&buf[..cut], &limits).unwrap().map(|(_, n)| n), None);
    }

    #[test]
    fn frames_survive_any_chunking(ms in proptest::collection::vec(message(), 1..6), chunk in 1usize..64) {
        let limits = Limits { max_frame_bytes: u32::MAX, max_batch_samples: u32::MAX };
        let mut bytes = Vec::new();
        for m in &ms {
            encode(m, &limits, &mut bytes).unwrap();
        }
        let mut reader = FrameReader::new(limits);
        let mut got = Vec::new();
        for c in bytes.chunks(chunk) {
            reader.feed(c);
            while let Some(m) = reader.next_message().unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(reader.buffered(), 0);
        prop_assert_eq!(got.len(), ms.len());
        for (a, b) in ms.iter().zip(&got) {
            prop_assert!(same(a, b));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let limits = Limits::for_frame_bytes(4096);
        let _ = decode(&bytes, &limits);
        for ty in 0..=11u8 {
            let _ = decode_payload(ty, &bytes, &limits);
        }
    }

    /// Decoding a record into reused columns gives what the allocating decode
    /// gives, bit for bit, and fails exactly when it fails: for any series, after
    /// any earlier record in the same columns, with any one byte damaged, and
    /// with any series' values declined (their timestamps still there, their
    /// columns still checked).
    #[test]
    fn records_decode_the_same_into_reused_columns(
        earlier in proptest::collection::vec(series(), 0..4),
        ss in proptest::collection::vec(series(), 0..6),
        flip in proptest::option::of(any::<(usize, u8)>()),
        declined in any::<u8>(),
    ) {
        use ferrule_wire::record::{
            decode_record, decode_record_filtered, decode_record_into, encode_record, RecordHeader,
        };
        let record = |series: &[Series]| {
            let header = RecordHeader {
                site: "s".into(),
                agent: "a".into(),
                epoch: Epoch(1),
                seq: Seq(2),
                clock_offset_ns: -3,
                received_ns: 4,
                samples: series.iter().map(Series::len).sum::<usize>() as u32,
                sensors: Vec::new(),
            };
            let mut buf = Vec::new();
            encode_record(&header, series, &mut buf).unwrap();
            buf
        };
        let mut columns = SampleColumns::default();
        decode_record_into(&record(&earlier), u64::MAX, &mut columns).unwrap();
        let mut buf = record(&ss);
        if let Some((at, x)) = flip {
            let i = at % buf.len();
            buf[i] ^= x | 1;
        }
        let limit = 10_000;
        let keep = |i: usize| declined & (1 << (i % 8)) == 0;
        let mut asked = Vec::new();
        for filtered in [false, true] {
            let into = if filtered {
                decode_record_filtered(&buf, limit, &mut columns, |_, i, _, ts| {
                    asked.push((i, ts.len()));
                    keep(i)
                })
            } else {
                decode_record_into(&buf, limit, &mut columns)
            };
            match (decode_record(&buf, limit), into) {
                (Ok(whole), Ok(header)) => {
                    prop_assert_eq!(&whole.header, &header);
                    prop_assert_eq!(whole.series.len(), columns.series().len());
                    for (i, (a, b)) in whole.series.iter().zip(columns.series()).enumerate() {
                        prop_assert_eq!(a.sensor(), b.sensor());
                        prop_assert_eq!(a.timestamps_ns(), b.timestamps_ns());
                        if filtered && !a.is_empty() {
                            prop_assert!(asked.contains(&(i, a.len())));
                        }
                        if filtered && !a.is_empty() && !keep(i) {
                            prop_assert!(!b.has_values());
                            prop_assert!(b.values().is_empty() && b.quality().is_empty());
                            prop_assert_eq!(b.iter().count(), 0);
                            continue;
                        }
                        prop_assert!(b.has_values());
                        prop_assert_eq!(a.quality(), b.quality());
                        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        prop_assert_eq!(bits(a.values()), bits(b.values()));
                        prop_assert_eq!(a.iter().count(), b.iter().count());
                    }
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "allocating decode {:?}, into columns {:?}", a.map(|_| ()), b),
            }
        }
    }

    #[test]
    fn corrupting_a_batch_never_panics(flip in any::<(usize, u8)>()) {
        let series = ferrule_wire::example::ThreePhaseFeed::new(1, 0, Default::default()).next_batch(300);
        let m = Message::Batch(Batch { epoch: Epoch(1), seq: Seq(2), clock_offset_ns: 3, series });
        let mut buf = frame(&m);
        let i = 5 + flip.0 % (buf.len() - 5);
        buf[i] ^= flip.1 | 1;
        let _ = decode(&buf, &Limits::default());
    }
}
