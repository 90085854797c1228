//! The spool against an in-memory model, across random appends, fsyncs, acks,
//! releases, reads, restarts and torn tails.
//!
//! Checked after every step: reads return exactly the model's unsettled durable
//! batches, in order, byte for byte (never garbage); sequence numbers continue
//! across restarts with no gap and no reuse of anything durable; every restart
//! begins a higher epoch; released batches never come back.
#![allow(clippy::unwrap_used)]

use ferrule_agent::config::{FsyncMode, FullPolicy, SpoolSection};
use ferrule_agent::spool::Spool;
use ferrule_telemetry::Registry;
use ferrule_wire::Seq;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone)]
enum Op {
    Append(u8, usize),
    Sync,
    /// A group commit split as the batcher runs it: begin, append this batch
    /// meanwhile, fsync (as if on another thread), finish. Only what was
    /// appended before the begin may become durable (or more, by a roll).
    SplitSync(u8, usize),
    Settle(Vec<usize>),
    Release,
    Restart,
    /// Chop this many bytes off the end of the newest segment file, then restart.
    TearTail(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), 1usize..300).prop_map(|(b, n)| Op::Append(b, n)),
        2 => Just(Op::Sync),
        2 => (any::<u8>(), 1usize..300).prop_map(|(b, n)| Op::SplitSync(b, n)),
        3 => proptest::collection::vec(0usize..64, 1..8).prop_map(Op::Settle),
        1 => Just(Op::Release),
        1 => Just(Op::Restart),
        1 => (1usize..80).prop_map(Op::TearTail),
    ]
}

fn cfg(dir: &Path, fsync: FsyncMode) -> SpoolSection {
    SpoolSection {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 30,
        full_policy: FullPolicy::Block,
        fsync,
        fsync_interval_ms: 10,
        segment_bytes: 2048,
    }
}

fn newest_segment(dir: &Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(dir.join("log"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
}

/// Model state: every appended batch by seq, which are durable, which settled, and
/// the released floor (persisted across restarts).
struct Model {
    batches: BTreeMap<u64, Vec<u8>>,
    durable_until: u64,
    settled: std::collections::BTreeSet<u64>,
    released_floor: u64,
}

fn check(
    spool: &Spool,
    reader: &ferrule_agent::spool::SpoolReader,
    m: &Model,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(spool.durable_until(), Seq(m.durable_until));
    let got = reader.read(Seq(1), 10_000).unwrap();
    let want: Vec<(u64, &Vec<u8>)> = m
        .batches
        .range(m.released_floor + 1..m.durable_until)
        .map(|(s, f)| (*s, f))
        .collect();
    for b in &got {
        // The per-input counts come back with the frame.
        prop_assert_eq!(b.inputs.first().map(|(i, _)| i.as_str()), Some("in"));
        prop_assert_eq!(
            b.samples() as usize,
            b.frame.len() + usize::from(b.inputs.len() > 1)
        );
    }
    let got_pairs: Vec<(u64, &Vec<u8>)> = got.iter().map(|b| (b.seq.0, &b.frame)).collect();
    prop_assert_eq!(got_pairs, want);
    Ok(())
}

fn run(ops: Vec<Op>, fsync: FsyncMode) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::new();
    let (mut spool, mut reader) = Spool::open(&cfg(dir.path(), fsync), &reg).unwrap();
    let mut epoch = spool.epoch();
    let mut m = Model {
        batches: BTreeMap::new(),
        durable_until: 1,
        settled: Default::default(),
        released_floor: 0,
    };
    for op in ops {
        match op {
            Op::Append(b, n) => {
                let seq = spool.next_seq();
                let frame = vec![b; n];
                let got = spool.append(&[("in", n as u32)], &frame).unwrap();
                prop_assert_eq!(got, seq);
                m.batches.insert(seq.0, frame);
                if fsync == FsyncMode::Always {
                    m.durable_until = seq.0 + 1;
                } else {
                    // Group commit: a segment roll fsyncs the sealed segment, so
                    // durability may advance without a sync, but never past the end.
                    let d = spool.durable_until().0;
                    prop_assert!(d >= m.durable_until && d <= seq.0 + 1);
                    m.durable_until = d;
                }
            }
            Op::Sync => {
                spool.sync().unwrap();
                m.durable_until = m
                    .batches
                    .keys()
                    .next_back()
                    .map_or(m.durable_until, |s| s + 1);
            }
            Op::SplitSync(b, n) => {
                let job = spool.begin_sync().unwrap();
                let before = m.batches.keys().next_back().map_or(1, |s| s + 1);
                let seq = spool.next_seq();
                let frame = vec![b; n];
                spool
                    .append(&[("in", n as u32), ("other", 1)], &frame)
                    .unwrap();
                m.batches.insert(seq.0, frame);
                if let Some(job) = job {
                    spool.finish_sync(job.run()).unwrap();
                }
                let d = spool.durable_until().0;
                if fsync == FsyncMode::Always {
                    prop_assert_eq!(d, seq.0 + 1);
                } else {
                    // Everything before the begin is durable now; the batch
                    // appended meanwhile only if a segment roll synced it.
                    prop_assert!(
                        d >= before && d <= seq.0 + 1,
                        "durable {d}, before {before}"
                    );
                }
                m.durable_until = d;
            }
            Op::Settle(picks) => {
                let candidates: Vec<u64> = m
                    .batches
                    .range(m.released_floor + 1..m.durable_until)
                    .map(|(s, _)| *s)
                    .collect();
                if candidates.is_empty() {
                    continue;
                }
                let seqs: Vec<Seq> = picks
                    .iter()
                    .map(|i| Seq(candidates[i % candidates.len()]))
                    .collect();
                spool.settle(&seqs).unwrap();
                for s in seqs {
                    m.settled.insert(s.0);
                }
            }
            Op::Release => {
                spool.release().unwrap();
                while m.settled.contains(&(m.released_floor + 1)) {
                    m.released_floor += 1;
                }
            }
            Op::Restart | Op::TearTail(_) => {
                drop(reader);
                drop(spool);
                if let Op::TearTail(n) = op {
                    if let Some(seg) = newest_segment(dir.path()) {
                        let len = std::fs::metadata(&seg).unwrap().len();
                        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
                        f.set_len(len.saturating_sub(n as u64)).unwrap();
                    }
                }
                let (s2, r2) = Spool::open(&cfg(dir.path(), fsync), &reg).unwrap();
                spool = s2;
                reader = r2;
                // What survived: a prefix of what was appended; never less than what
                // was released, never anything that was not appended.
                let next = spool.next_seq().0;
                prop_assert!(
                    next > m.released_floor,
                    "released batches came back: next {next}"
                );
                prop_assert!(next <= m.batches.keys().next_back().map_or(1, |s| s + 1));
                if !matches!(op, Op::TearTail(_)) {
                    prop_assert!(
                        next >= m.durable_until,
                        "durable batches lost on a clean restart"
                    );
                }
                m.batches.retain(|s, _| *s < next);
                m.durable_until = next;
                m.settled.clear();
                prop_assert_eq!(spool.first_unacked(), Seq(m.released_floor + 1));
                // Every start is a new, higher epoch, so no (epoch, seq) is ever
                // reused, whatever the restart cut.
                prop_assert!(spool.epoch() > epoch);
                epoch = spool.epoch();
            }
        }
        check(&spool, &reader, &m)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn spool_matches_model_fsync_always(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops, FsyncMode::Always)?;
    }

    #[test]
    fn spool_matches_model_group_commit(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops, FsyncMode::Interval)?;
    }
}
