//! This process's name among other aggregators: in Redis consumer groups, in
//! the alert stream's `aggregator` field, in the sampler's stages. Host, pid
//! and a random part, so a restarted aggregator is a new name (what the old
//! one left is reclaimed or expires).

use std::sync::OnceLock;

/// The name, made once per process.
pub fn name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "aggregator".into());
        let host: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
    })
}
