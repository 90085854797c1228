//! Host metrics: the box's own health (CPU, memory, disks, network, temperature)
//! and the agent's (its CPU, resident memory and spool size), read with `sysinfo`
//! every `interval_secs`.
//!
//! Sensor names, under `prefix` (default `host`):
//!
//! | group         | sensors                                                          |
//! |---------------|------------------------------------------------------------------|
//! | `cpu`         | `cpu/usage_percent` (all cores, 0-100), `cpu/load1` `load5` `load15` |
//! | `memory`      | `memory/total_bytes` `used_bytes` `available_bytes` `swap_total_bytes` `swap_used_bytes` |
//! | `disk`        | `disk/<mount>/total_bytes` `used_bytes` `available_bytes`, as `df` shows them ([`DiskSpace`]) |
//! | `network`     | `net/<iface>/rx_bytes_total` `tx_bytes_total` `rx_packets_total` `tx_packets_total` `rx_errors_total` `tx_errors_total` (counters) |
//! | `temperature` | `temp/<label>/celsius`, for each sensor the hardware exposes (maybe none) |
//! | `agent`       | `agent/cpu_percent` (0-100 per core), `agent/rss_bytes`, `agent/spool_bytes` |
//!
//! `<mount>`, `<iface>` and `<label>` are made into valid sensor name parts by
//! [`name_part`]: `/` is `root`, `/var/lib` is `var_lib`, anything outside
//! ASCII letters, digits and `_ . : -` becomes `_`.
//!
//! Invariants: `sysinfo` reads `/proc` and `/sys` with blocking calls, so each
//! round (refresh, sensor registration, which saves the catalog) runs in
//! `spawn_blocking`; only the configured groups are refreshed, and the process
//! refresh covers the agent's own pid only. At most [`MAX_SENSORS`] sensors are
//! created, so interfaces or mounts that come and go (containers) cannot grow the
//! catalog without bound; the `interfaces` and `mount_points` lists narrow it.

use super::{now_ns, InputContext};
use ferrule_config::Invalid;
use ferrule_wire::{Quality, SensorId, SensorKind, SensorName, Series};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Every reason this input counts in `ferrule_agent_input_errors_total`,
/// published at 0 when it starts so `rate()` and alerts have a series before
/// the first error.
pub const ERROR_REASONS: &[&str] = &[
    "bad_sensor_name",
    "catalog_error",
    "probe_failed",
    "too_many_sensors",
];

use sysinfo::{
    Components, CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Networks, Pid,
    ProcessRefreshKind, ProcessesToUpdate, System,
};

/// Most distinct sensors this input creates.
pub const MAX_SENSORS: usize = 1000;

/// A group of host metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// CPU usage of the whole box and load averages.
    Cpu,
    /// Memory and swap.
    Memory,
    /// Space on each mounted file system.
    Disk,
    /// Traffic counters of each interface.
    Network,
    /// Hardware temperature sensors, where the hardware has them.
    Temperature,
    /// The agent's own CPU, resident memory and spool size.
    Agent,
}

impl Group {
    /// Every group (the default).
    pub const ALL: [Group; 6] = [
        Group::Cpu,
        Group::Memory,
        Group::Disk,
        Group::Network,
        Group::Temperature,
        Group::Agent,
    ];
}

/// `[inputs.host]`: the box's and the agent's own health.
///
/// ```toml
/// [inputs.host]
/// name = "host"
/// interval_secs = 10
/// groups = ["cpu", "memory", "disk", "agent"]
/// mount_points = ["/", "/var/lib/ferrule"]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Input name, for counters and logs.
    pub name: String,
    /// Seconds between readings. Default 10.
    #[serde(default = "d_interval")]
    pub interval_secs: u64,
    /// Sensor names start with `<prefix>/`. Default `host`.
    #[serde(default = "d_prefix")]
    pub prefix: String,
    /// Which groups to read: `cpu`, `memory`, `disk`, `network`, `temperature`,
    /// `agent`. Default all.
    #[serde(default = "d_groups")]
    pub groups: Vec<Group>,
    /// Mount points to report (exact paths); empty for all. Default empty.
    #[serde(default)]
    pub mount_points: Vec<String>,
    /// Network interfaces to report (exact names); empty for all. Default empty.
    #[serde(default)]
    pub interfaces: Vec<String>,
}

fn d_interval() -> u64 {
    10
}
fn d_prefix() -> String {
    "host".into()
}
fn d_groups() -> Vec<Group> {
    Group::ALL.to_vec()
}

impl HostConfig {
    /// Semantic checks `check-config` reports with the line of `key`.
    pub fn validate(&self, key: &str, bad: &mut Vec<Invalid>) {
        if self.name.is_empty() {
            bad.push(Invalid::new(format!("{key}.name"), "must not be empty"));
        }
        if !(1..=86_400).contains(&self.interval_secs) {
            bad.push(Invalid::new(
                format!("{key}.interval_secs"),
                "must be 1..=86400",
            ));
        }
        // The longest fixed suffix is "/memory/swap_total_bytes"; mounts and
        // interfaces are clipped to fit.
        if self.prefix.len() > 64 || SensorName::new(format!("{}/x", self.prefix)).is_err() {
            bad.push(Invalid::new(
                format!("{key}.prefix"),
                "1-64 characters of ASCII letters, digits and _ . : / -",
            ));
        }
        if self.groups.is_empty() {
            bad.push(Invalid::new(
                format!("{key}.groups"),
                "name at least one of cpu, memory, disk, network, temperature, agent",
            ));
        }
    }
}

/// Turns a mount point, interface name or component label into one valid sensor
/// name part: `/` becomes `root`, leading and trailing slashes go, inner slashes
/// and any other character outside ASCII letters, digits and `_ . : -` become `_`,
/// and the result is clipped to 64 bytes.
///
/// ```
/// use ferrule_agent::inputs::host::name_part;
/// assert_eq!(name_part("/"), "root");
/// assert_eq!(name_part("/var/lib/docker"), "var_lib_docker");
/// assert_eq!(name_part("coretemp Package id 0"), "coretemp_Package_id_0");
/// ```
pub fn name_part(raw: &str) -> String {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return if raw.is_empty() {
            "_".into()
        } else {
            "root".into()
        };
    }
    trimmed
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// One reading, before it has a sensor id.
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    name: String,
    unit: &'static str,
    kind: SensorKind,
    value: f64,
}

/// The `sysinfo` state kept between rounds (CPU usage is a difference between two
/// refreshes), holding only what the configured groups need.
struct Probe {
    prefix: String,
    groups: HashSet<Group>,
    mounts: Vec<String>,
    interfaces: Vec<String>,
    sys: System,
    disks: Option<Disks>,
    nets: Option<Networks>,
    comps: Option<Components>,
    pid: Option<Pid>,
}

impl Probe {
    /// Takes the first (baseline) readings. Blocking.
    fn new(cfg: &HostConfig) -> Self {
        let groups: HashSet<Group> = cfg.groups.iter().copied().collect();
        let has = |g| groups.contains(&g);
        let mut probe = Self {
            prefix: cfg.prefix.clone(),
            mounts: cfg.mount_points.clone(),
            interfaces: cfg.interfaces.clone(),
            sys: System::new(),
            disks: has(Group::Disk)
                .then(|| Disks::new_with_refreshed_list_specifics(disk_refresh())),
            nets: has(Group::Network).then(Networks::new_with_refreshed_list),
            comps: has(Group::Temperature).then(Components::new_with_refreshed_list),
            pid: has(Group::Agent)
                .then(sysinfo::get_current_pid)
                .and_then(Result::ok),
            groups,
        };
        probe.refresh();
        probe
    }

    fn has(&self, g: Group) -> bool {
        self.groups.contains(&g)
    }

    /// Refreshes what the configured groups read. Blocking.
    fn refresh(&mut self) {
        if self.has(Group::Cpu) {
            self.sys
                .refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
        }
        if self.has(Group::Memory) {
            self.sys
                .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        }
        if let Some(d) = &mut self.disks {
            d.refresh_specifics(true, disk_refresh());
        }
        if let Some(n) = &mut self.nets {
            n.refresh(true);
        }
        if let Some(c) = &mut self.comps {
            c.refresh(true);
        }
        if let Some(pid) = self.pid {
            self.sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                true,
                ProcessRefreshKind::nothing()
                    .with_cpu()
                    .with_memory()
                    .without_tasks(),
            );
        }
    }

    /// Refreshes and reads every configured group. Blocking.
    fn read(&mut self, spool_bytes: i64) -> Vec<Reading> {
        self.refresh();
        let mut out = Vec::new();
        let p = &self.prefix;
        let mut push = |name: String, unit: &'static str, kind: SensorKind, value: f64| {
            out.push(Reading {
                name,
                unit,
                kind,
                value,
            });
        };
        if self.has(Group::Cpu) {
            push(
                format!("{p}/cpu/usage_percent"),
                "%",
                SensorKind::Gauge,
                f64::from(self.sys.global_cpu_usage()),
            );
            let load = System::load_average();
            for (n, v) in [
                ("load1", load.one),
                ("load5", load.five),
                ("load15", load.fifteen),
            ] {
                push(format!("{p}/cpu/{n}"), "", SensorKind::Gauge, v);
            }
        }
        if self.has(Group::Memory) {
            let s = &self.sys;
            for (n, v) in [
                ("total_bytes", s.total_memory()),
                ("used_bytes", s.used_memory()),
                ("available_bytes", s.available_memory()),
                ("swap_total_bytes", s.total_swap()),
                ("swap_used_bytes", s.used_swap()),
            ] {
                push(format!("{p}/memory/{n}"), "B", SensorKind::Gauge, v as f64);
            }
        }
        if let Some(disks) = &self.disks {
            let mut seen = HashSet::new();
            for d in disks.list() {
                let mount = d.mount_point().to_string_lossy();
                if !self.mounts.is_empty() && !self.mounts.iter().any(|m| *m == mount) {
                    continue;
                }
                // The same file system can be mounted twice (bind mounts); and two
                // mounts can sanitize alike: the first one listed wins.
                let part = name_part(&mount);
                if !seen.insert(part.clone()) {
                    continue;
                }
                let space = DiskSpace::of(d.mount_point()).unwrap_or(DiskSpace {
                    total: d.total_space(),
                    used: d.total_space().saturating_sub(d.available_space()),
                    available: d.available_space(),
                });
                for (n, v) in [
                    ("total_bytes", space.total),
                    ("used_bytes", space.used),
                    ("available_bytes", space.available),
                ] {
                    push(
                        format!("{p}/disk/{part}/{n}"),
                        "B",
                        SensorKind::Gauge,
                        v as f64,
                    );
                }
            }
        }
        if let Some(nets) = &self.nets {
            let mut seen = HashSet::new();
            for (iface, d) in nets.list() {
                if !self.interfaces.is_empty() && !self.interfaces.contains(iface) {
                    continue;
                }
                let part = name_part(iface);
                if !seen.insert(part.clone()) {
                    continue;
                }
                for (n, unit, v) in [
                    ("rx_bytes_total", "B", d.total_received()),
                    ("tx_bytes_total", "B", d.total_transmitted()),
                    ("rx_packets_total", "", d.total_packets_received()),
                    ("tx_packets_total", "", d.total_packets_transmitted()),
                    ("rx_errors_total", "", d.total_errors_on_received()),
                    ("tx_errors_total", "", d.total_errors_on_transmitted()),
                ] {
                    push(
                        format!("{p}/net/{part}/{n}"),
                        unit,
                        SensorKind::Counter,
                        v as f64,
                    );
                }
            }
        }
        if let Some(comps) = &self.comps {
            let mut seen = HashSet::new();
            for c in comps.list() {
                // Absent or unreadable sensors report None (or NaN on some chips).
                let Some(t) = c.temperature().filter(|t| t.is_finite()) else {
                    continue;
                };
                let part = name_part(c.label());
                if seen.insert(part.clone()) {
                    push(
                        format!("{p}/temp/{part}/celsius"),
                        "°C",
                        SensorKind::Gauge,
                        f64::from(t),
                    );
                }
            }
        }
        if self.has(Group::Agent) {
            if let Some(proc_) = self.pid.and_then(|pid| self.sys.process(pid)) {
                push(
                    format!("{p}/agent/cpu_percent"),
                    "%",
                    SensorKind::Gauge,
                    f64::from(proc_.cpu_usage()),
                );
                push(
                    format!("{p}/agent/rss_bytes"),
                    "B",
                    SensorKind::Gauge,
                    proc_.memory() as f64,
                );
            }
            push(
                format!("{p}/agent/spool_bytes"),
                "B",
                SensorKind::Gauge,
                spool_bytes as f64,
            );
        }
        out
    }
}

/// A file system's size as `df` reports it. `used` is blocks in use (total
/// minus free), `available` what an unprivileged writer can still use; on a file
/// system with blocks reserved for root (ext4 keeps 5 % by default) `total -
/// used - available` is that reserve, so `used` is neither "total minus
/// available" nor inflated by the reserve, and `used / (used + available)` is
/// `df`'s Use%.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Size of the file system, bytes (`df` 1B-blocks).
    pub total: u64,
    /// Bytes in use (`df` Used).
    pub used: u64,
    /// Bytes an unprivileged writer can still use (`df` Available).
    pub available: u64,
}

impl DiskSpace {
    /// Reads it with statvfs(2) for the file system mounted at `mount`.
    pub fn of(mount: &std::path::Path) -> std::io::Result<Self> {
        let s = rustix::fs::statvfs(mount)?;
        let unit = if s.f_frsize > 0 {
            s.f_frsize
        } else {
            s.f_bsize
        };
        Ok(Self {
            total: s.f_blocks.saturating_mul(unit),
            used: s.f_blocks.saturating_sub(s.f_bfree).saturating_mul(unit),
            available: s.f_bavail.saturating_mul(unit),
        })
    }
}

fn disk_refresh() -> DiskRefreshKind {
    DiskRefreshKind::nothing().with_storage()
}

/// What one blocking round owns: the probe and the sensor ids found so far.
struct Round {
    probe: Probe,
    ids: HashMap<String, SensorId>,
    ctx: InputContext,
}

impl Round {
    /// Reads, registers new sensors and builds one series per sensor. Blocking.
    fn run(&mut self) -> Vec<Series> {
        let spool = self
            .ctx
            .registry()
            .gauge("ferrule_agent_spool_bytes", "Bytes in the spool", &[])
            .get();
        let readings = self.probe.read(spool);
        let ts = now_ns();
        let mut out = Vec::with_capacity(readings.len());
        for r in readings {
            let id = match self.ids.get(&r.name) {
                Some(id) => *id,
                None if self.ids.len() >= MAX_SENSORS => {
                    self.ctx.bad(
                        "too_many_sensors",
                        format!(
                            "{} would exceed {MAX_SENSORS} host sensors; skipped",
                            r.name
                        ),
                    );
                    continue;
                }
                None => {
                    // name_part keeps names valid; a prefix check-config did not
                    // see (a config built in code) can still break them.
                    if let Err(e) = SensorName::new(r.name.as_str()) {
                        self.ctx
                            .bad("bad_sensor_name", format!("{:?}: {e}", r.name));
                        continue;
                    }
                    match self.ctx.sensor(&r.name, r.unit, r.kind) {
                        Ok(id) => {
                            self.ids.insert(r.name, id);
                            id
                        }
                        Err(e) => {
                            self.ctx
                                .bad("catalog_error", format!("{:?}: {e:#}", r.name));
                            continue;
                        }
                    }
                }
            };
            let mut s = Series::with_capacity(id, 1);
            s.push(ts, r.value, Quality::Good);
            out.push(s);
        }
        out
    }
}

/// Runs the input until shutdown: a baseline reading at start, then one round
/// every `interval_secs` (the first after one interval, so CPU usage covers a
/// whole interval). A round that overruns delays the next instead of bunching.
pub async fn run(cfg: HostConfig, ctx: InputContext) {
    let mut stop = ctx.shutdown();
    let setup = cfg.clone();
    let probe = match tokio::task::spawn_blocking(move || Probe::new(&setup)).await {
        Ok(p) => p,
        Err(e) => {
            ctx.bad("probe_failed", format!("starting host metrics: {e}"));
            return;
        }
    };
    let mut round = Round {
        probe,
        ids: HashMap::new(),
        ctx: ctx.clone(),
    };
    let period = Duration::from_secs(cfg.interval_secs.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let done = tokio::task::spawn_blocking(move || {
            let series = round.run();
            (round, series)
        })
        .await;
        let series = match done {
            Ok((r, s)) => {
                round = r;
                s
            }
            Err(e) => {
                // A panic inside sysinfo: the state is gone; report and stop this
                // input only.
                ctx.bad("probe_failed", format!("reading host metrics: {e}"));
                return;
            }
        };
        if !ctx.send(series).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_space_agrees_with_df() {
        // df's own figures for the same file system, in bytes.
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=size,used,avail", "/"])
            .output()
            .expect("df runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let nums: Vec<u64> = text
            .lines()
            .nth(1)
            .expect("a line of figures")
            .split_whitespace()
            .map(|n| n.parse().expect("a number"))
            .collect();
        let ours = DiskSpace::of(std::path::Path::new("/")).expect("statvfs /");
        // Other processes write between the two reads: allow 64 MiB of drift.
        let close = |a: u64, b: u64| a.abs_diff(b) <= 64 << 20;
        assert_eq!(ours.total, nums[0], "total");
        assert!(
            close(ours.used, nums[1]),
            "used {} vs df {}",
            ours.used,
            nums[1]
        );
        assert!(
            close(ours.available, nums[2]),
            "available {} vs df {}",
            ours.available,
            nums[2]
        );
        assert!(
            ours.used + ours.available <= ours.total,
            "a reserve, if any, is neither"
        );
    }

    #[test]
    fn name_parts_are_valid_sensor_name_parts() {
        for (raw, want) in [
            ("/", "root"),
            ("", "_"),
            ("//", "root"),
            ("/boot/efi", "boot_efi"),
            ("/mnt/with space", "mnt_with_space"),
            ("eth0", "eth0"),
            ("veth1a2b@if5", "veth1a2b_if5"),
            ("acpitz temp1", "acpitz_temp1"),
            ("nvme Composite WD 1.0", "nvme_Composite_WD_1.0"),
            ("ünï", "_n_"),
        ] {
            assert_eq!(name_part(raw), want, "{raw:?}");
        }
        let long = name_part(&"x".repeat(500));
        assert_eq!(long.len(), 64);
        // Prefix (64) + the longest group path + part (64) fits a sensor name.
        let name = format!(
            "{}/net/{}/rx_packets_total",
            "p".repeat(64),
            name_part(&"é/".repeat(300))
        );
        assert!(SensorName::new(name).is_ok());
    }

    #[test]
    fn config_defaults_and_checks() {
        let cfg: HostConfig = toml_like(r#"{"name":"host"}"#);
        assert_eq!(cfg.interval_secs, 10);
        assert_eq!(cfg.prefix, "host");
        assert_eq!(cfg.groups, Group::ALL.to_vec());
        let mut bad = Vec::new();
        cfg.validate("inputs.host", &mut bad);
        assert!(bad.is_empty(), "{bad:?}");
        let cfg: HostConfig =
            toml_like(r#"{"name":"","interval_secs":0,"prefix":"a b","groups":[]}"#);
        cfg.validate("inputs.host", &mut bad);
        let keys: Vec<&str> = bad.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "inputs.host.name",
                "inputs.host.interval_secs",
                "inputs.host.prefix",
                "inputs.host.groups"
            ]
        );
    }

    fn toml_like(json: &str) -> HostConfig {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
    }
}
