//! Model-based property test: random appends, syncs, flushes, reads, releases,
//! drop-oldest, reopens and injected tail / middle corruption, checked after every
//! step against an in-memory model of what the log must hold.
//!
//! The model's rules are the log's promises: with `FsyncPolicy::Always` every append
//! survives a reopen; with `Batch` everything below the durable offset survives and of
//! the rest only a prefix, never garbage; tail corruption loses exactly the damaged
//! records at the end; middle corruption loses exactly the damaged record and counts it.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ferrule_disklog::scan::{scan, Bounds};
use ferrule_disklog::segment::{self, SegmentHeader, SEGMENT_HEADER_LEN};
use ferrule_disklog::{FsyncPolicy, Log, Offset, Options, Recovery};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Tail {
    Chop,
    Flip(u8),
    Zero,
}

#[derive(Debug, Clone)]
enum Action {
    Append(Vec<u8>),
    Sync,
    Flush,
    Read { from: u16, max: usize },
    Release(u16),
    DropOldest,
    Reopen,
    CorruptTail { n: u16, how: Tail },
    CorruptMiddle { pick: u16, byte: u16, xor: u8 },
}

fn action() -> impl Strategy<Value = Action> {
    let tail = prop_oneof![
        Just(Tail::Chop),
        (1u8..).prop_map(Tail::Flip),
        Just(Tail::Zero)
    ];
    prop_oneof![
        12 => proptest::collection::vec(any::<u8>(), 0..120).prop_map(Action::Append),
        3 => Just(Action::Sync),
        1 => Just(Action::Flush),
        3 => (any::<u16>(), 1usize..20).prop_map(|(from, max)| Action::Read { from, max }),
        2 => any::<u16>().prop_map(Action::Release),
        1 => Just(Action::DropOldest),
        2 => Just(Action::Reopen),
        1 => (any::<u16>(), tail).prop_map(|(n, how)| Action::CorruptTail { n, how }),
        1 => (any::<u16>(), any::<u16>(), 1u8..).prop_map(|(pick, byte, xor)| Action::CorruptMiddle { pick, byte, xor }),
    ]
}

/// What the log must hold.
#[derive(Debug, Default)]
struct Model {
    /// Records in `floor..next` that exist (not lost to injected damage).
    records: BTreeMap<u64, Vec<u8>>,
    /// Offsets lost to injected middle damage.
    lost: BTreeSet<u64>,
    floor: u64,
    next: u64,
    durable: u64,
}

impl Model {
    fn set_floor(&mut self, floor: u64) {
        self.floor = self.floor.max(floor);
        self.records = self.records.split_off(&self.floor);
    }

    fn truncate(&mut self, next: u64) {
        self.records.split_off(&next);
        self.lost.split_off(&next);
        self.next = next;
    }

    fn corrupt_count(&self) -> u64 {
        self.lost.range(self.floor..self.next).count() as u64
    }

    fn from(&self, from: u64) -> Vec<(Offset, Vec<u8>)> {
        self.records
            .range(from.max(self.floor)..)
            .map(|(&o, p)| (Offset(o), p.clone()))
            .collect()
    }
}

struct Harness {
    dir: tempfile::TempDir,
    opts: Options,
    log: Option<Log>,
    m: Model,
}

fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            segment::parse_file_name(e.file_name().to_str()?).map(|b| (b, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// A valid frame on disk: (offset, file, absolute position, length).
struct Frame {
    offset: u64,
    path: PathBuf,
    pos: usize,
    len: usize,
}

fn frames(dir: &Path) -> Vec<Vec<Frame>> {
    let segs = segments(dir);
    segs.iter()
        .enumerate()
        .map(|(i, (base, path))| {
            let bytes = std::fs::read(path).unwrap();
            let h =
                SegmentHeader::parse(&bytes).expect("test never leaves a damaged header behind");
            let bounds = Bounds {
                min: *base,
                end: segs.get(i + 1).map(|s| s.0),
            };
            scan(&bytes[SEGMENT_HEADER_LEN..], h.salt, bounds)
                .records
                .iter()
                .map(|r| Frame {
                    offset: r.offset,
                    path: path.clone(),
                    pos: SEGMENT_HEADER_LEN + r.pos,
                    len: r.frame_len,
                })
                .collect()
        })
        .collect()
}

impl Harness {
    fn log(&mut self) -> &mut Log {
        self.log.as_mut().unwrap()
    }

    /// Drops the log and reopens it; checks the generic recovery promises and returns
    /// the recovery report for action-specific checks.
    fn reopen_raw(&mut self) -> Recovery {
        self.log = None;
        let (log, rec) = Log::open(self.dir.path(), self.opts.clone()).unwrap();
        self.log = Some(log);
        rec
    }

    /// Reopen without injected damage.
    fn reopen(&mut self) {
        let rec = self.reopen_raw();
        let next = rec.next_offset.0;
        assert!(
            next >= self.m.durable,
            "durable records lost: {rec:?} durable {}",
            self.m.durable
        );
        assert!(
            next <= self.m.next,
            "records appeared from nowhere: {rec:?}"
        );
        if self.opts.fsync == FsyncPolicy::Always {
            assert_eq!(next, self.m.next, "Always: every appended record survives");
        }
        assert_eq!(rec.truncated_tail_bytes, 0, "{rec:?}");
        self.m.truncate(next);
        self.after_recovery(&rec);
    }

    fn after_recovery(&mut self, rec: &Recovery) {
        assert_eq!(rec.first_offset.0, self.m.floor, "{rec:?}");
        assert_eq!(rec.next_offset.0, self.m.next, "{rec:?}");
        assert_eq!(
            rec.corrupt_records,
            self.m.corrupt_count(),
            "{rec:?} lost {:?}",
            self.m.lost
        );
        assert_eq!(rec.records, self.m.records.len() as u64, "{rec:?}");
        assert!(!rec.floor_rebuilt);
        self.m.durable = self.m.next;
    }

    fn step(&mut self, a: &Action) {
        match a {
            Action::Append(p) => {
                let o = self.log().append(p).unwrap();
                assert_eq!(o.0, self.m.next);
                self.m.records.insert(o.0, p.clone());
                self.m.next += 1;
            }
            Action::Sync => {
                let d = self.log().sync().unwrap();
                assert_eq!(d.0, self.m.next);
            }
            Action::Flush => {
                let f = self.log().flush().unwrap();
                assert_eq!(f.0, self.m.next);
            }
            Action::Read { from, max } => {
                let from = u64::from(*from) % (self.m.next + 2);
                let got = self.log().read_from(Offset(from), *max).unwrap();
                let mut want = self.m.from(from);
                want.truncate(*max);
                self.check_prefix(&got, &want);
            }
            Action::Release(frac) => {
                let o = u64::from(*frac) % (self.m.next + 2);
                self.log().release_through(Offset(o)).unwrap();
                let floor = (o + 1).min(self.m.next);
                self.m.set_floor(floor);
            }
            Action::DropOldest => {
                let segs = segments(self.dir.path());
                let d = self.log().drop_oldest_segment().unwrap();
                if segs.len() == 1 && segs[0].0 == self.m.next {
                    assert_eq!(d, None);
                    return;
                }
                let end = segs.get(1).map_or(self.m.next, |s| s.0);
                let d = d.expect("a segment with records can be dropped");
                assert_eq!((d.base.0, d.end.0), (segs[0].0, end));
                let live = self.m.records.range(..end).count() as u64;
                assert_eq!(d.records, live);
                self.m.set_floor(end);
            }
            Action::Reopen => self.reopen(),
            Action::CorruptTail { n, how } => {
                self.reopen();
                self.log = None;
                let (base, path) = segments(self.dir.path()).pop().unwrap();
                let before = std::fs::read(&path).unwrap();
                let n = 1 + usize::from(*n) % before.len();
                let mut after = before.clone();
                let cut = before.len() - n;
                match how {
                    Tail::Chop => after.truncate(cut),
                    Tail::Flip(x) => after[cut..].iter_mut().for_each(|b| *b ^= x),
                    Tail::Zero => after[cut..].fill(0),
                }
                std::fs::write(&path, &after).unwrap();
                let salt = SegmentHeader::parse(&before).unwrap().salt;
                let recs = scan(
                    &before[SEGMENT_HEADER_LEN..],
                    salt,
                    Bounds {
                        min: base,
                        end: None,
                    },
                )
                .records;
                let intact: Vec<bool> = recs
                    .iter()
                    .map(|r| {
                        let span =
                            SEGMENT_HEADER_LEN + r.pos..SEGMENT_HEADER_LEN + r.pos + r.frame_len;
                        after.get(span.clone()) == Some(&before[span])
                    })
                    .collect();
                let survivors = intact.iter().take_while(|&&ok| ok).count();
                assert!(
                    intact[survivors..].iter().all(|ok| !ok),
                    "tail damage is a suffix"
                );
                let next = recs[..survivors]
                    .last()
                    .map_or(base, |r| r.offset + 1)
                    .max(self.m.floor);
                let rec = self.reopen_raw();
                assert_eq!(rec.next_offset.0, next, "{rec:?}");
                self.m.truncate(next);
                self.after_recovery(&rec);
            }
            Action::CorruptMiddle { pick, byte, xor } => {
                self.reopen();
                self.log = None;
                let mut per_seg = frames(self.dir.path());
                if let Some(last) = per_seg.last_mut() {
                    last.pop(); // damage to the very last record is a torn tail
                }
                let floor = self.m.floor;
                let candidates: Vec<Frame> = per_seg
                    .into_iter()
                    .flatten()
                    .filter(|f| f.offset >= floor)
                    .collect();
                if !candidates.is_empty() {
                    let f = &candidates[usize::from(*pick) % candidates.len()];
                    let mut bytes = std::fs::read(&f.path).unwrap();
                    bytes[f.pos + usize::from(*byte) % f.len] ^= xor;
                    std::fs::write(&f.path, &bytes).unwrap();
                    self.m.records.remove(&f.offset);
                    self.m.lost.insert(f.offset);
                }
                let rec = self.reopen_raw();
                self.after_recovery(&rec);
            }
        }
        self.check_state();
    }

    /// `got` must be a prefix of `want` covering at least everything durable.
    fn check_prefix(&mut self, got: &[(Offset, Vec<u8>)], want: &[(Offset, Vec<u8>)]) {
        assert!(
            got.len() <= want.len() && got == &want[..got.len()],
            "read returned records the model does not hold"
        );
        let durable = self.log().durable_offset().0;
        let must = want.iter().filter(|(o, _)| o.0 < durable).count();
        assert!(
            got.len() >= must,
            "read missed durable records: got {} want >= {must}",
            got.len()
        );
        if self.opts.fsync == FsyncPolicy::Always {
            assert_eq!(got.len(), want.len());
        }
    }

    fn check_state(&mut self) {
        let (next, first, durable) = {
            let log = self.log();
            (
                log.next_offset().0,
                log.first_offset().0,
                log.durable_offset().0,
            )
        };
        assert_eq!(next, self.m.next);
        assert_eq!(first, self.m.floor);
        assert!(durable >= self.m.durable && durable <= next);
        if self.opts.fsync == FsyncPolicy::Always {
            assert_eq!(durable, next);
        }
        self.m.durable = durable;
        let got = self.log().read_from(Offset(0), usize::MAX).unwrap();
        let want = self.m.from(0);
        self.check_prefix(&got, &want);
        let files = segments(self.dir.path());
        assert_eq!(files.len(), self.log().segment_count());
        let on_disk: u64 = files
            .iter()
            .map(|(_, p)| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(self.log().total_bytes() >= on_disk);
    }
}

fn run(fsync: FsyncPolicy, write_buffer_bytes: usize, actions: &[Action]) {
    let mut opts = Options::default();
    opts.segment_bytes = 300;
    opts.fsync = fsync;
    opts.write_buffer_bytes = write_buffer_bytes;
    let dir = tempfile::tempdir().unwrap();
    let (log, rec) = Log::open(dir.path(), opts.clone()).unwrap();
    assert!(rec.is_clean(), "{rec:?}");
    let mut h = Harness {
        dir,
        opts,
        log: Some(log),
        m: Model::default(),
    };
    for a in actions {
        h.step(a);
    }
    h.step(&Action::Reopen);
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn always_policy_matches_model(actions in proptest::collection::vec(action(), 1..80)) {
        run(FsyncPolicy::Always, 1 << 20, &actions);
    }

    #[test]
    fn batch_policy_matches_model(
        actions in proptest::collection::vec(action(), 1..80),
        buf in prop_oneof![Just(0usize), Just(100), Just(1 << 20)],
    ) {
        run(FsyncPolicy::Batch, buf, &actions);
    }
}
