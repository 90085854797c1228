//! The `floor` file: the first offset still needed, and the log's salt.
//!
//! Written when a log is created and on every [`crate::Log::release_through`],
//! atomically: write `floor.tmp`, fsync it, rename it over `floor`, fsync the directory.
//! So a reader of `floor` sees either the old or the new content, never a mix. On a
//! full disk, where no new file can be made, it is overwritten in place instead (see
//! [`write`]). If the
//! file is missing or damaged anyway (bit rot, an operator), recovery falls back to the
//! first segment's base (released records may be read again: duplicates, never loss)
//! and to the salt in the segment headers.
//!
//! Layout (little-endian), 32 bytes: magic `FRLFLOOR` (8), version u32, salt u32,
//! floor u64, CRC32C of bytes 0..24 (u32), reserved zero (u32).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::error::{io_err, Result};
use crate::segment::FORMAT_VERSION;

/// Name of the floor file inside the log directory.
pub(crate) const FLOOR_FILE: &str = "floor";
/// Name of the temporary file the floor is staged in.
pub(crate) const FLOOR_TMP: &str = "floor.tmp";
const MAGIC: [u8; 8] = *b"FRLFLOOR";
const LEN: usize = 32;

/// The content of the floor file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Floor {
    pub(crate) salt: u32,
    /// The first offset not released.
    pub(crate) floor: u64,
}

impl Floor {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.salt.to_le_bytes());
        b[16..24].copy_from_slice(&self.floor.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn parse(b: &[u8]) -> Option<Self> {
        if b.len() != LEN || b[0..8] != MAGIC {
            return None;
        }
        let u32_at = |at: usize| {
            b.get(at..at + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_le_bytes)
        };
        let floor = b
            .get(16..24)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)?;
        if u32_at(8)? != FORMAT_VERSION || u32_at(24)? != crc32c::crc32c(&b[0..24]) {
            return None;
        }
        Some(Self {
            salt: u32_at(12)?,
            floor,
        })
    }
}

/// What [`read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloorState {
    Missing,
    Damaged,
    Valid(Floor),
}

/// Reads the floor file in `dir`.
pub(crate) fn read(dir: &Path) -> Result<FloorState> {
    let path = dir.join(FLOOR_FILE);
    match fs::read(&path) {
        Ok(b) => Ok(Floor::parse(&b).map_or(FloorState::Damaged, FloorState::Valid)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FloorState::Missing),
        Err(e) => Err(io_err("read floor file", path)(e)),
    }
}

/// Replaces the floor file in `dir` and makes the change durable: atomically
/// (temp file, rename) when it can, else in place.
///
/// The atomic way needs a new file, which a full disk refuses, and releasing
/// records is exactly what frees a full disk: so when it fails, the 32 bytes are
/// overwritten in place (no new block is needed). A write torn by a crash there
/// leaves a damaged floor, which recovery rebuilds from the segments (released
/// records may be read again: duplicates, never loss).
pub(crate) fn write(dir: &Path, floor: Floor) -> Result<()> {
    match write_atomic(dir, floor) {
        Ok(()) => Ok(()),
        Err(atomic) => {
            let _ = fs::remove_file(dir.join(FLOOR_TMP));
            let path = dir.join(FLOOR_FILE);
            let in_place = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| {
                    f.write_all(&floor.encode())?;
                    f.sync_all()
                });
            match in_place {
                Ok(()) => Ok(()),
                Err(_) => Err(atomic),
            }
        }
    }
}

fn write_atomic(dir: &Path, floor: Floor) -> Result<()> {
    let tmp = dir.join(FLOOR_TMP);
    let path = dir.join(FLOOR_FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("create floor temp file", &tmp))?;
    f.write_all(&floor.encode())
        .map_err(io_err("write floor temp file", &tmp))?;
    f.sync_all()
        .map_err(io_err("fsync floor temp file", &tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io_err("rename floor temp file to", &path))?;
    sync_dir(dir)
}

/// Makes creations, renames and removals in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let f = Floor { salt: 3, floor: 99 };
        assert_eq!(Floor::parse(&f.encode()), Some(f));
        let mut b = f.encode();
        b[17] ^= 1;
        assert_eq!(Floor::parse(&b), None);
        assert_eq!(Floor::parse(&b[..10]), None);
    }

    #[test]
    fn write_then_read() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()).unwrap(), FloorState::Missing);
        write(d.path(), Floor { salt: 1, floor: 2 }).unwrap();
        write(d.path(), Floor { salt: 1, floor: 5 }).unwrap();
        assert_eq!(
            read(d.path()).unwrap(),
            FloorState::Valid(Floor { salt: 1, floor: 5 })
        );
        assert!(!d.path().join(FLOOR_TMP).exists());
        std::fs::write(d.path().join(FLOOR_FILE), b"junk").unwrap();
        assert_eq!(read(d.path()).unwrap(), FloorState::Damaged);
    }
}
