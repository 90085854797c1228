//! The disk log's recovery scan on arbitrary files: `Log::open` (and the
//! read-only `LogReader::open_read_only`) of a directory holding fuzzer-made
//! segment and floor files must recover, never panic, hang or fail on content.
//!
//! Input: up to 6 files, each `tag: u8, base: u16 le, len: u16 le, bytes`
//! (cut short at the end of the input). An odd tag writes the `floor` file,
//! an even one the segment file of base offset `base`.
//!
//! Invariants checked: both opens succeed and agree (records, first and next
//! offset, every record read back); the records read are exactly
//! `Recovery::records`, in strictly increasing offsets within
//! `first_offset..next_offset`; an append then gets `next_offset`, and a
//! second open of the repaired log finds nothing more to cut and returns the
//! same records plus the new one.
#![no_main]

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use ferrule_disklog::{segment, Log, LogReader, Offset, Options};
use libfuzzer_sys::fuzz_target;

/// One directory per fuzzing process, on tmpfs when there is one, under
/// `$FERRULE_DISKLOG_FUZZ_DIR` if set (`scripts/fuzz.sh` sets it and removes it).
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = match std::env::var_os("FERRULE_DISKLOG_FUZZ_DIR") {
            Some(d) => PathBuf::from(d),
            None if std::path::Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        root.join(format!("ferrule-disklog-fuzz-{}", std::process::id()))
    })
}

fn read_all(reader: &LogReader) -> Vec<(Offset, Vec<u8>)> {
    reader
        .read_from(Offset(0), usize::MAX)
        .expect("records recovery accepted read back")
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect("create fuzz directory");
    let mut rest = data;
    for _ in 0..6 {
        let [tag, b0, b1, l0, l1, tail @ ..] = rest else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        let name = if tag & 1 == 1 {
            "floor".to_string()
        } else {
            segment::file_name(u64::from(u16::from_le_bytes([*b0, *b1])))
        };
        fs::write(dir.join(name), bytes).expect("write fuzz file");
        rest = next;
    }

    let (reader, ro) =
        LogReader::open_read_only(dir).expect("read-only open never fails on content");
    let ro_records = read_all(&reader);
    drop(reader);

    let (mut log, rec) = Log::open(dir, Options::default()).expect("open never fails on content");
    let records = read_all(&log.reader());
    assert_eq!(records.len() as u64, rec.records, "{rec:?}");
    assert_eq!(
        (ro.records, ro.first_offset, ro.next_offset),
        (rec.records, rec.first_offset, rec.next_offset)
    );
    assert_eq!(ro_records, records);
    assert_eq!(log.first_offset(), rec.first_offset);
    assert_eq!(log.next_offset(), rec.next_offset);
    assert_eq!(log.durable_offset(), rec.next_offset);
    for w in records.windows(2) {
        assert!(w[0].0 < w[1].0, "offsets not increasing");
    }
    if let (Some(first), Some(last)) = (records.first(), records.last()) {
        assert!(first.0 >= rec.first_offset && last.0 < rec.next_offset);
    }

    // The repaired log takes appends at its next offset and reopens as it was.
    let Ok(at) = log.append(b"after recovery") else {
        return; // only the offset space running out may refuse it
    };
    assert_eq!(at, rec.next_offset);
    assert!(log.sync().expect("sync") > at);
    drop(log);
    let (log, again) = Log::open(dir, Options::default()).expect("reopen");
    assert_eq!(again.truncated_tail_bytes, 0, "{again:?}");
    assert!(
        !again.floor_rebuilt && again.released_segments_removed == 0,
        "{again:?}"
    );
    assert_eq!(again.records, rec.records + 1, "{again:?}");
    assert_eq!(again.first_offset, rec.first_offset);
    let mut expect = records;
    expect.push((at, b"after recovery".to_vec()));
    assert_eq!(read_all(&log.reader()), expect);
});
