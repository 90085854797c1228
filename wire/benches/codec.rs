//! Encode + decode of a realistic batch: 1000 samples of three-phase voltage,
//! current and frequency at 1 kHz with noise (see `ferrule_wire::example`).
//!
//! Run: `cargo bench -p ferrule-wire --bench codec`. Prints a summary line per
//! workload (bytes/sample, ns/sample for encode + decode), then divan's table.

use ferrule_wire::example::{FeedOptions, ThreePhaseFeed};
use ferrule_wire::{decode, encode, Batch, Epoch, Limits, Message, Seq};
use std::hint::black_box;
use std::time::Instant;

fn batch(opts: FeedOptions) -> Message {
    let series = ThreePhaseFeed::new(7, 1_767_225_600_000_000_000, opts).next_batch(1000);
    Message::Batch(Batch {
        epoch: Epoch(1),
        seq: Seq(1),
        clock_offset_ns: -1_250_000,
        series,
    })
}

fn workloads() -> Vec<(&'static str, Message)> {
    vec![
        (
            "meter resolution, exact clock",
            batch(FeedOptions::default()),
        ),
        (
            "meter resolution, 20 us clock jitter",
            batch(FeedOptions {
                jitter_ns: 20_000,
                ..FeedOptions::default()
            }),
        ),
        (
            "full-precision noise (worst case)",
            batch(FeedOptions {
                full_precision: true,
                ..FeedOptions::default()
            }),
        ),
    ]
}

fn round_trip(msg: &Message, limits: &Limits, buf: &mut Vec<u8>) -> usize {
    buf.clear();
    encode(msg, limits, buf).expect("encode");
    let (back, _) = decode(buf, limits).expect("decode").expect("whole frame");
    black_box(back);
    buf.len()
}

fn main() {
    let limits = Limits::default();
    println!("ferrule-wire codec, one batch of 1000 samples (7 series at 1 kHz)");
    for (name, msg) in workloads() {
        let mut buf = Vec::new();
        let bytes = round_trip(&msg, &limits, &mut buf);
        // Warm up, then time enough iterations for a stable mean.
        for _ in 0..200 {
            round_trip(&msg, &limits, &mut buf);
        }
        let iters = 5_000;
        let t = Instant::now();
        for _ in 0..iters {
            round_trip(black_box(&msg), &limits, &mut buf);
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(iters) / 1000.0;
        println!(
            "  {name:<40} {:>6.2} bytes/sample  {ns:>6.1} ns/sample encode+decode",
            bytes as f64 / 1000.0
        );
    }
    println!();
    divan::main();
}

#[divan::bench(args = ["exact", "jitter", "full"])]
fn encode_decode(bencher: divan::Bencher, which: &str) {
    let all = workloads();
    let msg = match which {
        "exact" => &all[0].1,
        "jitter" => &all[1].1,
        _ => &all[2].1,
    };
    let limits = Limits::default();
    let mut buf = Vec::new();
    bencher
        .counter(divan::counter::ItemsCount::new(1000usize))
        .bench_local(|| round_trip(black_box(msg), &limits, &mut buf));
}

#[divan::bench]
fn encode_only(bencher: divan::Bencher) {
    let msg = batch(FeedOptions::default());
    let limits = Limits::default();
    let mut buf = Vec::new();
    bencher
        .counter(divan::counter::ItemsCount::new(1000usize))
        .bench_local(|| {
            buf.clear();
            encode(black_box(&msg), &limits, &mut buf).expect("encode");
            buf.len()
        });
}
