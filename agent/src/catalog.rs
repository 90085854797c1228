//! The agent's sensor catalog: sensor name to numeric id, for the agent's whole
//! life (not one session), saved next to the spool.
//!
//! Batches in the spool carry ids; after a restart they must still mean the same
//! sensors, so a new id is saved (appended to `sensors.jsonl` and fsynced) before
//! any batch using it can be spooled. Every session sends the catalog's Defines on
//! each lane before the first batch that may use them.
//!
//! Bounded, and persistently so: at most `agent.max_sensors` names, kept across
//! restarts with the rest of the catalog; a new name beyond it is refused (the
//! input counts it, and `ferrule_agent_sensors_refused_total`), so a publisher
//! spraying topic names can neither grow the catalog without bound nor push it
//! past what the aggregator accepts. Appending costs one short write per new
//! sensor, whatever the catalog's size (rewriting it whole cost its size each
//! time). A catalog written by an older agent (`sensors.json`, one array) is read
//! and moved to the new file.

use ferrule_wire::{Define, SensorId, SensorKind, SensorName};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Sensors a catalog holds unless configured otherwise (`agent.max_sensors`).
pub const DEFAULT_MAX_SENSORS: usize = 10_000;

/// The file the catalog lives in, one JSON entry per line.
pub const CATALOG_FILE: &str = "sensors.jsonl";
/// The file an older agent kept the whole catalog in.
const OLD_CATALOG_FILE: &str = "sensors.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    id: u32,
    name: String,
    unit: String,
    kind: SensorKind,
}

/// Why a sensor could not be registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The catalog holds `agent.max_sensors` names already.
    #[error("the sensor catalog is full (agent.max_sensors = {max}): {name} not registered")]
    Full {
        /// The refused name.
        name: String,
        /// The cap.
        max: usize,
    },
    /// Saving the new entry failed (the name is not registered).
    #[error("saving the sensor catalog {path}: {source}")]
    Io {
        /// The catalog file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The catalog, loaded from and appended to one file.
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    file: Option<File>,
    defines: Vec<Define>,
    by_name: HashMap<String, SensorId>,
    next_id: u32,
    max: usize,
}

impl Catalog {
    /// Loads the catalog in `dir`, or starts empty, with the default cap.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Self::open_with(dir, DEFAULT_MAX_SENSORS)
    }

    /// Loads the catalog in `dir`, or starts empty, holding at most `max` names.
    /// A line torn by a crash (its id was never used: the id is handed out only
    /// once its line is durable) or damaged is skipped with a warning.
    pub fn open_with(dir: &Path, max: usize) -> anyhow::Result<Self> {
        let path = dir.join(CATALOG_FILE);
        let mut c = Self {
            path,
            file: None,
            defines: Vec::new(),
            by_name: HashMap::new(),
            next_id: 0,
            max,
        };
        match std::fs::read(&c.path) {
            Ok(bytes) => {
                let mut bad = 0usize;
                for line in bytes.split(|b| *b == b'\n') {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<Entry>(line) {
                        Ok(e) => c.load(e)?,
                        Err(_) => bad += 1,
                    }
                }
                if bad > 0 {
                    tracing::warn!(path = %c.path.display(), lines = bad, "sensor catalog lines unreadable (torn by a crash, or damaged); skipped");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let old = dir.join(OLD_CATALOG_FILE);
                if let Ok(bytes) = std::fs::read(&old) {
                    let entries: Vec<Entry> = serde_json::from_slice(&bytes)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", old.display()))?;
                    for e in entries.iter().cloned() {
                        c.load(e)?;
                    }
                    c.rewrite(&entries)?;
                    let _ = std::fs::remove_file(&old);
                }
            }
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", c.path.display())),
        }
        if c.defines.len() > c.max {
            tracing::warn!(sensors = c.defines.len(), max = c.max, "the sensor catalog holds more than agent.max_sensors: no new sensor is registered until it is raised");
        }
        Ok(c)
    }

    fn load(&mut self, e: Entry) -> anyhow::Result<()> {
        let name = SensorName::new(e.name)
            .map_err(|err| anyhow::anyhow!("{}: {err}", self.path.display()))?;
        if self.by_name.contains_key(name.as_str()) {
            return Ok(());
        }
        if self.defines.iter().any(|d| d.sensor.0 == e.id) {
            // An id means one sensor for good: the first entry holds it.
            tracing::warn!(path = %self.path.display(), id = e.id, name = %name, "sensor catalog names an id twice; the later entry is ignored");
            return Ok(());
        }
        self.by_name
            .insert(name.as_str().to_string(), SensorId(e.id));
        self.next_id = self.next_id.max(e.id.saturating_add(1));
        self.defines.push(Define {
            sensor: SensorId(e.id),
            name,
            unit: e.unit,
            kind: e.kind,
        });
        Ok(())
    }

    /// Writes `entries` as a new catalog file (temp file, fsync, rename).
    fn rewrite(&self, entries: &[Entry]) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut f = File::create(&tmp)?;
        for e in entries {
            serde_json::to_writer(&mut f, e)?;
            f.write_all(b"\n")?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The id for a sensor, assigning and saving a new one if needed (blocking:
    /// one append and fsync for a new name).
    pub fn intern(
        &mut self,
        name: SensorName,
        unit: &str,
        kind: SensorKind,
    ) -> Result<SensorId, CatalogError> {
        if let Some(id) = self.by_name.get(name.as_str()) {
            return Ok(*id);
        }
        if self.defines.len() >= self.max {
            return Err(CatalogError::Full {
                name: name.as_str().to_string(),
                max: self.max,
            });
        }
        let id = SensorId(self.next_id);
        let entry = Entry {
            id: id.0,
            name: name.as_str().to_string(),
            unit: unit.to_string(),
            kind,
        };
        self.append(&entry).map_err(|source| CatalogError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.next_id += 1;
        self.by_name.insert(name.as_str().to_string(), id);
        self.defines.push(Define {
            sensor: id,
            name,
            unit: unit.to_string(),
            kind,
        });
        Ok(id)
    }

    fn append(&mut self, e: &Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if self.file.is_none() {
            let created = !self.path.exists();
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            if created {
                if let Some(dir) = self.path.parent() {
                    File::open(dir)?.sync_all()?;
                }
            }
            self.file = Some(f);
        }
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("catalog file"))?;
        let before = f.metadata()?.len();
        let result = f.write_all(&line).and_then(|()| f.sync_data());
        if result.is_err() {
            // Cut what this write may have left (a torn line would swallow the
            // next one, and a line whose fsync failed would hold an id handed
            // out again), and open the file afresh next time.
            let _ = f.set_len(before).and_then(|()| f.sync_data());
            self.file = None;
        }
        result
    }

    /// Every Define, in the order registered.
    pub fn defines(&self) -> &[Define] {
        &self.defines
    }

    /// The most names the catalog registers.
    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> SensorName {
        SensorName::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn ids_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut c = Catalog::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let a = c
            .intern(n("f1/va"), "V", SensorKind::Gauge)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = c
            .intern(n("f1/f"), "Hz", SensorKind::Gauge)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a, b);
        let mut again = Catalog::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            again
                .intern(n("f1/f"), "Hz", SensorKind::Gauge)
                .unwrap_or_else(|e| panic!("{e}")),
            b
        );
        assert_eq!(again.defines().len(), 2);
    }

    #[test]
    fn the_cap_holds_across_restarts_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut c = Catalog::open_with(dir.path(), 3).unwrap_or_else(|e| panic!("{e}"));
        for s in ["a", "b", "c"] {
            c.intern(n(s), "V", SensorKind::Gauge)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(matches!(
            c.intern(n("d"), "V", SensorKind::Gauge),
            Err(CatalogError::Full { max: 3, .. })
        ));
        // Known names still resolve.
        assert!(c.intern(n("b"), "V", SensorKind::Gauge).is_ok());
        drop(c);
        // A crash while appending left half a line.
        let path = dir.path().join(CATALOG_FILE);
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        f.write_all(b"{\"id\":3,\"na")
            .unwrap_or_else(|e| panic!("{e}"));
        drop(f);
        let mut c = Catalog::open_with(dir.path(), 3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.defines().len(), 3);
        assert!(
            c.intern(n("d"), "V", SensorKind::Gauge).is_err(),
            "still full"
        );
        let mut c = Catalog::open_with(dir.path(), 4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.intern(n("d"), "V", SensorKind::Gauge)
                .unwrap_or_else(|e| panic!("{e}")),
            SensorId(3)
        );
    }

    #[test]
    fn a_catalog_of_an_older_agent_is_read_and_moved() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join(OLD_CATALOG_FILE),
            r#"[{"id":0,"name":"x/va","unit":"V","kind":"Gauge"},{"id":1,"name":"x/f","unit":"Hz","kind":"Gauge"}]"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut c = Catalog::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.intern(n("x/f"), "Hz", SensorKind::Gauge)
                .unwrap_or_else(|e| panic!("{e}")),
            SensorId(1)
        );
        assert_eq!(
            c.intern(n("x/vb"), "V", SensorKind::Gauge)
                .unwrap_or_else(|e| panic!("{e}")),
            SensorId(2)
        );
        assert!(!dir.path().join(OLD_CATALOG_FILE).exists());
        let c = Catalog::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.defines().len(), 3);
    }
}
