//! A real crash: a child process appends with `FsyncPolicy::Always` and prints each
//! offset after `append` returns (its acknowledgement); the parent SIGKILLs it at a
//! random moment, reopens the log and checks that every acknowledged record is there
//! with its payload, that nothing else is garbage, and that the next child continues
//! the same log. Repeated over several rounds on one directory.
//!
//! The same runs with `FsyncPolicy::Batch`: the child syncs after every few appends
//! and acknowledges everything below the offset `sync` returned (group commit).
//!
//! The child is this test binary re-executed with `--exact child_writer` and the log
//! directory in `FERRULE_DISKLOG_CHILD` (policy in `FERRULE_DISKLOG_CHILD_POLICY`);
//! without that variable `child_writer` is a no-op.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use ferrule_disklog::{FsyncPolicy, Log, Offset, Options};

const CHILD_ENV: &str = "FERRULE_DISKLOG_CHILD";
const POLICY_ENV: &str = "FERRULE_DISKLOG_CHILD_POLICY";

fn opts(fsync: FsyncPolicy) -> Options {
    let mut o = Options::default();
    o.fsync = fsync;
    o.segment_bytes = 8 << 10;
    o.write_buffer_bytes = 2 << 10;
    o
}

/// The payload of record `offset`: varied lengths, content derived from the offset so
/// the parent can check every record it finds.
fn payload(offset: u64) -> Vec<u8> {
    let len = (offset.wrapping_mul(7919) % 700) as usize;
    (0..len)
        .map(|i| (offset as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect()
}

#[test]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let batch = std::env::var(POLICY_ENV).is_ok_and(|p| p == "batch");
    let fsync = if batch {
        FsyncPolicy::Batch
    } else {
        FsyncPolicy::Always
    };
    let (mut log, _) = Log::open(&dir, opts(fsync)).unwrap();
    let mut out = std::io::stdout().lock();
    // Bounded so an orphaned child stops by itself.
    for i in 0..200_000u64 {
        let next = log.next_offset().0;
        let o = log.append(&payload(next)).unwrap();
        let acked = if !batch {
            Some(o.0)
        } else if i % 7 == 6 {
            Some(log.sync().unwrap().0 - 1)
        } else {
            None
        };
        if let Some(a) = acked {
            writeln!(out, "DURABLE {a}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn kill_9_loses_no_acknowledged_record_with_always() {
    kill_rounds(FsyncPolicy::Always);
}

#[test]
fn kill_9_loses_no_acknowledged_record_with_group_commit() {
    kill_rounds(FsyncPolicy::Batch);
}

fn kill_rounds(fsync: FsyncPolicy) {
    let policy = if fsync == FsyncPolicy::Batch {
        "batch"
    } else {
        "always"
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut acked = BTreeSet::new();
    for round in 0..6 {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env(POLICY_ENV, policy)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let target = 20 + rand() % 400;
        let mut seen = 0;
        while seen < target {
            let line = lines.next().expect("child exited early").unwrap();
            if let Some(o) = line.strip_prefix("DURABLE ") {
                acked.insert(o.parse::<u64>().unwrap());
                seen += 1;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Acknowledgements printed between our last read and the kill count too.
        for line in lines {
            if let Some(o) = line.unwrap().strip_prefix("DURABLE ") {
                acked.insert(o.parse::<u64>().unwrap());
            }
        }

        let (log, rec) = Log::open(dir.path(), opts(fsync)).unwrap();
        assert_eq!(rec.corrupt_records, 0, "round {round}: {rec:?}");
        assert_eq!(rec.corrupt_bytes, 0, "round {round}: {rec:?}");
        let all = log.read_from(Offset(0), usize::MAX).unwrap();
        assert_eq!(
            all.len() as u64,
            rec.next_offset.0,
            "round {round}: every offset present"
        );
        for (i, (o, p)) in all.iter().enumerate() {
            assert_eq!(o.0, i as u64);
            assert_eq!(*p, payload(o.0), "round {round}: record {o} is garbage");
        }
        let max_acked = acked.last().copied().unwrap();
        assert!(
            max_acked < rec.next_offset.0,
            "round {round}: acknowledged {max_acked} lost: {rec:?}"
        );
        eprintln!(
            "{policy} round {round}: {} acknowledged, {rec:?}",
            acked.len()
        );
    }
}
