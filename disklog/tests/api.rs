//! Scenario tests of the public API: rolling, reading across segments, release and
//! its persisted floor, drop-oldest, retention, and recovery from specific damage
//! (torn segment header, zero-filled tail, damaged floor file, damaged headers,
//! damaged sealed segment, leftovers of a crash between floor write and deletion).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrule_disklog::retention::Reason;
use ferrule_disklog::segment;
use ferrule_disklog::{Error, FsyncPolicy, Log, Offset, Options};

fn small() -> Options {
    let mut o = Options::default();
    o.segment_bytes = 1024;
    o
}

fn payload(i: u64) -> Vec<u8> {
    format!("record number {i} {}", "x".repeat((i % 50) as usize)).into_bytes()
}

fn fill(log: &mut Log, n: u64) {
    for _ in 0..n {
        let next = log.next_offset().0;
        assert_eq!(log.append(&payload(next)).unwrap().0, next);
    }
    log.sync().unwrap();
}

fn seg_paths(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(segment::parse_file_name)
                .is_some()
        })
        .collect();
    v.sort();
    v
}

fn check_all(log: &Log, from: u64, to: u64) {
    let got = log.read_from(Offset(0), usize::MAX).unwrap();
    let want: Vec<_> = (from..to).map(|i| (Offset(i), payload(i))).collect();
    assert_eq!(got, want);
}

#[test]
fn reopen_keeps_synced_records_and_continues_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, rec) = Log::open(dir.path(), small()).unwrap();
    assert!(rec.is_clean());
    fill(&mut log, 100);
    assert!(log.segment_count() > 3);
    drop(log);
    let (mut log, rec) = Log::open(dir.path(), small()).unwrap();
    assert!(rec.is_clean(), "{rec:?}");
    assert_eq!(
        (rec.records, rec.first_offset, rec.next_offset),
        (100, Offset(0), Offset(100))
    );
    fill(&mut log, 5);
    check_all(&log, 0, 105);
}

#[test]
fn unsynced_records_are_not_durable_and_dropped_buffer_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), Options::default()).unwrap();
    fill(&mut log, 3);
    log.append(b"not synced").unwrap();
    assert_eq!(log.durable_offset(), Offset(3));
    assert_eq!(
        log.read_from(Offset(3), 10).unwrap(),
        vec![],
        "buffered records are not readable"
    );
    assert_eq!(log.flush().unwrap(), Offset(4));
    assert_eq!(log.read_from(Offset(3), 10).unwrap().len(), 1);
    assert_eq!(log.durable_offset(), Offset(3));
    assert_eq!(log.sync().unwrap(), Offset(4));
    log.append(b"lost on drop").unwrap();
    drop(log);
    let (log, _) = Log::open(dir.path(), Options::default()).unwrap();
    assert_eq!(log.next_offset(), Offset(4));
}

#[test]
fn reads_across_segments_from_any_offset_with_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, 200);
    for from in [0, 1, 17, 63, 64, 150, 199] {
        let got = log.read_from(Offset(from), 30).unwrap();
        let want: Vec<_> = (from..(from + 30).min(200))
            .map(|i| (Offset(i), payload(i)))
            .collect();
        assert_eq!(got, want, "from {from}");
    }
    assert!(log.read_from(Offset(200), 10).unwrap().is_empty());
    let recs = log.read_records(Offset(10), 100, 100).unwrap();
    assert!(!recs.is_empty() && recs.iter().map(|r| r.payload.len()).sum::<usize>() <= 100);
    let one = log.read_records(Offset(10), 100, 1).unwrap();
    assert_eq!(
        one.len(),
        1,
        "a record larger than max_bytes still comes back alone"
    );
    let age = SystemTime::now()
        .duration_since(one[0].appended_at)
        .unwrap();
    assert!(age < Duration::from_secs(60));
}

#[test]
fn release_persists_floor_and_deletes_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, 100);
    let before = log.segment_count();
    log.release_through(Offset(49)).unwrap();
    assert_eq!(log.first_offset(), Offset(50));
    assert!(log.segment_count() < before);
    assert_eq!(seg_paths(dir.path()).len(), log.segment_count());
    assert_eq!(log.read_from(Offset(0), 1).unwrap()[0].0, Offset(50));
    log.release_through(Offset(10)).unwrap(); // lower: no-op
    assert_eq!(log.first_offset(), Offset(50));
    drop(log);
    let (mut log, rec) = Log::open(dir.path(), small()).unwrap();
    assert!(rec.is_clean(), "{rec:?}");
    assert_eq!((rec.first_offset, rec.records), (Offset(50), 50));
    check_all(&log, 50, 100);
    log.release_through(Offset(u64::MAX)).unwrap(); // clamps to what exists
    assert_eq!(log.first_offset(), Offset(100));
    assert_eq!(log.segment_count(), 1);
    fill(&mut log, 1);
    check_all(&log, 100, 101);
}

#[test]
fn segments_left_by_a_crash_after_the_floor_write_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, 100);
    let first = seg_paths(dir.path())[0].clone();
    let saved = std::fs::read(&first).unwrap();
    log.release_through(Offset(99)).unwrap();
    drop(log);
    std::fs::write(&first, saved).unwrap();
    std::fs::write(dir.path().join("floor.tmp"), b"half written").unwrap();
    let (log, rec) = Log::open(dir.path(), small()).unwrap();
    assert_eq!(rec.released_segments_removed, 1, "{rec:?}");
    assert!(!first.exists() && !dir.path().join("floor.tmp").exists());
    assert_eq!(log.first_offset(), Offset(100));
}

#[test]
fn drop_oldest_counts_what_it_drops_and_always_progresses() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.drop_oldest_segment().unwrap(), None);
    fill(&mut log, 100);
    log.release_through(Offset(4)).unwrap();
    let total = log.total_bytes();
    let d = log.drop_oldest_segment().unwrap().unwrap();
    assert_eq!(d.base, Offset(0));
    assert_eq!(d.records, d.end.0 - 5);
    assert_eq!(log.first_offset(), d.end);
    assert_eq!(log.total_bytes(), total - d.bytes);
    let mut dropped = d.records;
    while let Some(d) = log.drop_oldest_segment().unwrap() {
        dropped += d.records;
    }
    assert_eq!(dropped, 95);
    assert_eq!(log.first_offset(), Offset(100));
    assert_eq!(log.segment_count(), 1);
    fill(&mut log, 2);
    check_all(&log, 100, 102);
}

#[test]
fn retention_deletes_oldest_segments_by_size_and_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = small();
    o.max_total_bytes = Some(4096);
    o.max_age = Some(Duration::from_secs(3600));
    let (mut log, _) = Log::open(dir.path(), o).unwrap();
    let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for i in 0..100u64 {
        log.append_at(&payload(i), t0 + Duration::from_secs(i * 60))
            .unwrap();
    }
    log.sync().unwrap();
    let r = log
        .enforce_retention(t0 + Duration::from_secs(99 * 60))
        .unwrap();
    assert!(!r.deleted.is_empty() && r.deleted.iter().all(|(_, why)| *why == Reason::TotalBytes));
    assert!(log.total_bytes() <= 4096);
    assert_eq!(log.first_offset(), r.deleted.last().unwrap().0.end);
    assert_eq!(r.records(), log.first_offset().0);
    // Two days later everything but the active segment is too old.
    let r = log
        .enforce_retention(t0 + Duration::from_secs(2 * 86_400))
        .unwrap();
    assert!(r.deleted.iter().all(|(_, why)| *why == Reason::Age));
    assert_eq!(log.segment_count(), 1);
    let first = log.first_offset().0;
    check_all(&log, first, 100);
    assert!(log
        .enforce_retention(t0 + Duration::from_secs(9 * 86_400))
        .unwrap()
        .deleted
        .is_empty());
}

#[test]
fn torn_header_of_a_just_created_segment_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, 10);
    drop(log);
    // Power loss right after creating the next segment: its header never reached disk.
    std::fs::write(segment::path(dir.path(), 10), [0u8; 7]).unwrap();
    let (mut log, rec) = Log::open(dir.path(), small()).unwrap();
    assert_eq!(
        (
            rec.truncated_tail_bytes,
            rec.corrupt_records,
            rec.next_offset
        ),
        (7, 0, Offset(10)),
        "{rec:?}"
    );
    fill(&mut log, 10);
    drop(log);
    let (log, rec) = Log::open(dir.path(), small()).unwrap();
    assert!(rec.is_clean(), "{rec:?}");
    check_all(&log, 0, 20);
}

#[test]
fn zero_filled_tail_after_power_loss_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), Options::default()).unwrap();
    fill(&mut log, 10);
    drop(log);
    let p = seg_paths(dir.path()).pop().unwrap();
    let mut b = std::fs::read(&p).unwrap();
    b.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&p, b).unwrap();
    let (mut log, rec) = Log::open(dir.path(), Options::default()).unwrap();
    assert_eq!((rec.truncated_tail_bytes, rec.records), (4096, 10));
    fill(&mut log, 1);
    check_all(&log, 0, 11);
}

#[test]
fn damaged_floor_file_and_headers_are_rebuilt_without_losing_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), Options::default()).unwrap();
    fill(&mut log, 10);
    log.release_through(Offset(2)).unwrap();
    drop(log);
    // Damage the floor file and the only segment's header: the salt must be solved
    // from the first record.
    std::fs::write(dir.path().join("floor"), b"garbage").unwrap();
    let p = seg_paths(dir.path()).pop().unwrap();
    let mut b = std::fs::read(&p).unwrap();
    b[3] ^= 0xFF;
    std::fs::write(&p, b).unwrap();
    let (mut log, rec) = Log::open(dir.path(), Options::default()).unwrap();
    assert!(rec.floor_rebuilt);
    assert_eq!(
        (rec.records, rec.corrupt_records, rec.corrupt_bytes),
        (10, 0, 32),
        "{rec:?}"
    );
    // The floor went back to the first segment: released records come back (duplicates,
    // never loss).
    assert_eq!(log.first_offset(), Offset(0));
    fill(&mut log, 1);
    drop(log);
    let (log, rec) = Log::open(dir.path(), Options::default()).unwrap();
    assert!(rec.is_clean(), "{rec:?}");
    check_all(&log, 0, 11);
}

#[test]
fn wholly_damaged_sealed_segment_is_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, 100);
    drop(log);
    let segs = seg_paths(dir.path());
    let victim = &segs[1];
    let base = segment::parse_file_name(victim.file_name().unwrap().to_str().unwrap()).unwrap();
    let end = segment::parse_file_name(segs[2].file_name().unwrap().to_str().unwrap()).unwrap();
    let len = std::fs::metadata(victim).unwrap().len() as usize;
    std::fs::write(victim, vec![0xFFu8; len]).unwrap();
    let (log, rec) = Log::open(dir.path(), small()).unwrap();
    assert_eq!(rec.corrupt_records, end - base, "{rec:?}");
    assert_eq!(rec.corrupt_bytes, len as u64);
    assert_eq!(rec.records, 100 - (end - base));
    let got: Vec<u64> = log
        .read_from(Offset(0), usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.0 .0)
        .collect();
    let want: Vec<u64> = (0..100).filter(|o| !(base..end).contains(o)).collect();
    assert_eq!(got, want);
}

#[test]
fn damage_appearing_while_running_is_an_error_never_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), Options::default()).unwrap();
    fill(&mut log, 3);
    let p = seg_paths(dir.path()).pop().unwrap();
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n - 2] ^= 1;
    std::fs::write(&p, b).unwrap();
    assert!(matches!(
        log.read_from(Offset(0), 10),
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(log.read_from(Offset(0), 2).unwrap().len(), 2);
}

#[test]
fn oversized_record_is_rejected_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Options::default();
    o.max_record_bytes = 10;
    let (mut log, _) = Log::open(dir.path(), o).unwrap();
    assert!(matches!(
        log.append(&[0u8; 11]),
        Err(Error::RecordTooLarge { len: 11, max: 10 })
    ));
    assert_eq!(log.append(&[0u8; 10]).unwrap(), Offset(0));
}

#[test]
fn always_policy_makes_each_append_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = small();
    o.fsync = FsyncPolicy::Always;
    let (mut log, _) = Log::open(dir.path(), o).unwrap();
    for i in 0..50 {
        log.append(&payload(i)).unwrap();
        assert_eq!(log.durable_offset(), Offset(i + 1));
    }
}

#[test]
fn reader_on_another_thread_follows_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    let reader = log.reader();
    let consumer = std::thread::spawn(move || {
        let mut next = 0;
        let mut spins = 0u64;
        while next < 500 {
            let got = reader.read_from(Offset(next), 64).unwrap();
            for (o, p) in got {
                assert_eq!((o.0, p), (next, payload(next)));
                next += 1;
            }
            spins += 1;
            assert!(spins < 50_000_000, "reader stalled at {next}");
            std::thread::yield_now();
        }
    });
    for _ in 0..50 {
        fill(&mut log, 10);
        // Release behind the reader now and then, so segments vanish under it.
        let first = log.first_offset().0;
        if first + 100 < log.next_offset().0 {
            log.release_through(Offset(first)).unwrap();
        }
    }
    consumer.join().unwrap();
}

#[test]
fn files_that_are_not_segments_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README"), b"hello").unwrap();
    let (mut log, rec) = Log::open(dir.path(), Options::default()).unwrap();
    assert!(rec.is_clean());
    fill(&mut log, 1);
    drop(log);
    let (_, rec) = Log::open(dir.path(), Options::default()).unwrap();
    assert!(rec.is_clean());
    assert!(dir.path().join("README").exists());
}

#[test]
fn opening_a_missing_nested_directory_creates_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a").join("b");
    let (mut log, rec) = Log::open(&path, Options::default()).unwrap();
    assert!(rec.is_clean() && rec.segments == 1);
    fill(&mut log, 2);
    assert_eq!(log.dir(), path.as_path());
    assert!(path.join("floor").exists());
}

#[test]
fn read_only_open_sees_records_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = ferrule_disklog::Options::default();
    o.segment_bytes = 300;
    let (mut log, _) = ferrule_disklog::Log::open(dir.path(), o).unwrap();
    for i in 0..20u8 {
        log.append(&[i; 40]).unwrap();
    }
    log.sync().unwrap();
    // A half-written record at the end, as a crashed writer would leave it.
    let last = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0x6f, 0x10, 0x5c, 0xd1, 9, 9]).unwrap();
    let len_before = std::fs::metadata(&last).unwrap().len();
    let listing_before: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    let (reader, _) = ferrule_disklog::LogReader::open_read_only(dir.path()).unwrap();
    let got = reader.read_from(ferrule_disklog::Offset(0), 100).unwrap();
    assert_eq!(got.len(), 20);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, (o, p))| o.0 == i as u64 && p == &vec![i as u8; 40]));
    assert_eq!(
        std::fs::metadata(&last).unwrap().len(),
        len_before,
        "read-only open must not truncate"
    );
    let listing_after: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listing_before, listing_after);
}

#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    fill(&mut log, 3);
    match Log::open(dir.path(), small()) {
        Err(Error::Locked { dir: d }) => assert_eq!(d, dir.path()),
        other => panic!("a second writer got {other:?}"),
    }
    // Readers need no lock.
    let (reader, _) = ferrule_disklog::LogReader::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.read_from(Offset(0), 10).unwrap().len(), 3);
    drop(log);
    let (log, _) = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.next_offset(), Offset(3));
}

#[test]
fn reopen_recovers_in_place_and_readers_follow() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    let reader = log.reader();
    fill(&mut log, 30);
    // Damage a record in a sealed segment while the log runs.
    let p = seg_paths(dir.path()).remove(0);
    let mut b = std::fs::read(&p).unwrap();
    b[segment::SEGMENT_HEADER_LEN + 40] ^= 0xFF;
    std::fs::write(&p, b).unwrap();
    assert!(matches!(
        reader.read_from(Offset(0), 100),
        Err(Error::Corrupt { .. })
    ));
    let rec = log.reopen().unwrap();
    assert_eq!(rec.corrupt_records, 1);
    assert_eq!(log.missing(), vec![Offset(0)..Offset(1)]);
    // The same reader now reads past the damage; offsets go on.
    let got = reader.read_from(Offset(0), 100).unwrap();
    assert_eq!(got.len(), 29);
    assert_eq!(got[0].0, Offset(1));
    fill(&mut log, 1);
    assert_eq!(log.next_offset(), Offset(31));
    // Released past it, nothing is missing any more.
    log.release_through(Offset(1)).unwrap();
    assert!(log.missing().is_empty());
}

#[test]
fn truncate_to_durable_cuts_what_no_sync_covered_and_offsets_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), small()).unwrap();
    let reader = log.reader();
    fill(&mut log, 20);
    // Appends that roll the segment: the roll makes what came before it durable.
    let segs = log.segment_count();
    while log.segment_count() == segs {
        log.append(&payload(log.next_offset().0)).unwrap();
    }
    let durable = log.durable_offset();
    assert_eq!(durable.0, log.next_offset().0 - 1);
    // Appended and handed to the OS (readable), never synced.
    for _ in 0..3 {
        log.append(&payload(log.next_offset().0)).unwrap();
    }
    log.flush().unwrap();
    let next = log.next_offset();
    assert!(reader.read_from(durable, 100).unwrap().len() as u64 == next.0 - durable.0);
    let rec = log.truncate_to_durable().unwrap();
    assert_eq!(rec.cut_records, next.0 - durable.0, "{rec:?}");
    assert!(rec.is_clean(), "{rec:?}");
    assert_eq!(log.next_offset(), durable);
    // Neither this process's readers nor a read-only open see the cut records.
    assert!(reader.read_from(durable, 100).unwrap().is_empty());
    let (ro, _) = ferrule_disklog::LogReader::open_read_only(dir.path()).unwrap();
    assert!(ro.read_from(durable, 100).unwrap().is_empty());
    fill(&mut log, 2);
    drop(log);
    let (log, rec) = Log::open(dir.path(), small()).unwrap();
    assert!(rec.is_clean(), "{rec:?}");
    check_all(&log, 0, durable.0 + 2);
}

#[test]
#[ignore = "mounts a tmpfs (needs root): run by scripts/test.sh with --ignored"]
fn a_full_disk_fails_appends_then_release_and_reopen_bring_the_log_back() {
    let base = tempfile::tempdir().unwrap();
    let mnt = base.path().join("fs");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs (needs root)");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let mut o = Options::default();
    o.segment_bytes = 64 << 10;
    let (mut log, _) = Log::open(&mnt, o.clone()).unwrap();
    let rec = vec![7u8; 4000];
    let mut appended = 0u64;
    let err = loop {
        match log.append(&rec).and_then(|_| log.sync()) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
        assert!(appended < 10_000, "the disk never filled");
    };
    assert!(err.is_storage_full(), "{err}");
    assert!(matches!(log.append(&rec), Err(Error::Poisoned { .. })));
    // Releasing works on the full disk (the floor is written in place) and frees
    // whole segments; then the log comes back without a restart.
    let durable = log.durable_offset();
    log.release_through(Offset(durable.0 - 1)).unwrap();
    log.reopen().unwrap();
    let next = log.next_offset();
    // What the failed write left past the durable offset is cut, nothing below it.
    assert_eq!(next, durable, "durable records lost or undurable ones kept");
    log.append(&rec).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, rec) = Log::open(&mnt, o).unwrap();
    assert_eq!(log.next_offset(), Offset(next.0 + 1));
    assert_eq!(rec.corrupt_records, 0);
}
