//! The agent's sensor catalog: sensor name to numeric id, for the agent's whole
//! life (not one session), saved next to the spool.
//!
//! Batches in the spool carry ids; after a restart they must still mean the same
//! sensors, so the catalog is written (temp file, fsync, rename) before any batch
//! using a new id can be spooled. Every session sends the catalog's Defines on each
//! lane before the first batch that may use them.

use ferrule_wire::{Define, SensorId, SensorKind, SensorName};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    id: u32,
    name: String,
    unit: String,
    kind: SensorKind,
}

/// The catalog, loaded from and saved to one file.
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    defines: Vec<Define>,
    by_name: HashMap<String, SensorId>,
}

impl Catalog {
    /// Loads `dir/sensors.json`, or starts empty.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("sensors.json");
        let mut c = Self {
            path,
            defines: Vec::new(),
            by_name: HashMap::new(),
        };
        match std::fs::read(&c.path) {
            Ok(bytes) => {
                let entries: Vec<Entry> = serde_json::from_slice(&bytes)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", c.path.display()))?;
                for e in entries {
                    let name = SensorName::new(e.name)
                        .map_err(|err| anyhow::anyhow!("{}: {err}", c.path.display()))?;
                    c.by_name.insert(name.as_str().to_string(), SensorId(e.id));
                    c.defines.push(Define {
                        sensor: SensorId(e.id),
                        name,
                        unit: e.unit,
                        kind: e.kind,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", c.path.display())),
        }
        Ok(c)
    }

    /// The id for a sensor, assigning and saving a new one if needed.
    pub fn intern(
        &mut self,
        name: SensorName,
        unit: &str,
        kind: SensorKind,
    ) -> anyhow::Result<SensorId> {
        if let Some(id) = self.by_name.get(name.as_str()) {
            return Ok(*id);
        }
        let id = SensorId(u32::try_from(self.defines.len())?);
        self.by_name.insert(name.as_str().to_string(), id);
        self.defines.push(Define {
            sensor: id,
            name,
            unit: unit.to_string(),
            kind,
        });
        self.save()?;
        Ok(id)
    }

    /// Every Define, in id order.
    pub fn defines(&self) -> &[Define] {
        &self.defines
    }

    fn save(&self) -> anyhow::Result<()> {
        let entries: Vec<Entry> = self
            .defines
            .iter()
            .map(|d| Entry {
                id: d.sensor.0,
                name: d.name.as_str().to_string(),
                unit: d.unit.clone(),
                kind: d.kind,
            })
            .collect();
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&entries)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut c = Catalog::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let n = |s: &str| SensorName::new(s).unwrap_or_else(|e| panic!("{e}"));
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
}
