//! The host metrics input on this machine: the expected sensors appear every
//! interval with plausible values, only configured groups are read, and missing
//! hardware (no temperature sensors in a VM) is not an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferrule_agent::batcher::Chunk;
use ferrule_agent::catalog::Catalog;
use ferrule_agent::config::InputsSection;
use ferrule_agent::inputs::{host, InputContext};
use ferrule_telemetry::Registry;
use ferrule_wire::{Quality, SensorKind};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn inputs(text: &str) -> InputsSection {
    #[derive(serde::Deserialize)]
    struct File {
        inputs: InputsSection,
    }
    ferrule_config::load_str::<File>(text, "test.toml", [], "FERRULE")
        .unwrap_or_else(|e| panic!("{e}"))
        .value
        .inputs
}

/// Readings per sensor: (timestamp, value).
type Got = BTreeMap<String, Vec<(i64, f64)>>;

struct Run {
    got: Got,
    /// Sensor name to (unit, kind).
    defines: BTreeMap<String, (String, SensorKind)>,
    errors: u64,
}

/// Runs the host input from `block` (an `[inputs.host]` body) until `rounds`
/// readings of `<prefix>/...` sensors arrived, with the registry's spool gauge set
/// to `spool_bytes`; then stops it and checks it returns promptly.
fn run_host(block: &str, rounds: usize, spool_bytes: i64) -> Run {
    let cfg = inputs(&format!("[inputs.host]\n{block}\n")).host.unwrap();
    let mut bad = Vec::new();
    cfg.validate("inputs.host", &mut bad);
    assert!(bad.is_empty(), "{bad:?}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(Mutex::new(Catalog::open(dir.path()).unwrap()));
    let registry = Registry::new();
    // What the spool publishes; the input reads it from the registry.
    registry
        .gauge("ferrule_agent_spool_bytes", "Bytes in the spool", &[])
        .set(spool_bytes);
    let (tx, mut rx) = mpsc::channel::<Chunk>(16);
    let (stop, stop_rx) = watch::channel(false);
    let ctx = InputContext::new(&cfg.name, tx, catalog.clone(), registry.clone(), stop_rx);
    let task = rt.spawn(host::run(cfg.clone(), ctx));
    let mut got = Got::new();
    let deadline = Instant::now() + Duration::from_secs(u64::from(rounds as u32) * 2 + 10);
    let mut chunks = 0;
    while chunks < rounds {
        assert!(Instant::now() < deadline, "only {chunks} rounds arrived");
        let chunk = rt
            .block_on(async { tokio::time::timeout(Duration::from_millis(200), rx.recv()).await });
        let Ok(Some(chunk)) = chunk else { continue };
        chunks += 1;
        let cat = catalog.lock().unwrap();
        for s in chunk.series {
            let d = cat
                .defines()
                .iter()
                .find(|d| d.sensor == s.sensor())
                .expect("a series of an unregistered sensor");
            for (t, v, q) in s.iter() {
                assert_eq!(q, Quality::Good);
                got.entry(d.name.as_str().to_string())
                    .or_default()
                    .push((t, v));
            }
        }
    }
    stop.send(true).unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await })
        .expect("the host input did not stop within 5 s")
        .unwrap();
    let defines = catalog
        .lock()
        .unwrap()
        .defines()
        .iter()
        .map(|d| (d.name.as_str().to_string(), (d.unit.clone(), d.kind)))
        .collect();
    Run {
        got,
        defines,
        errors: registry.counter_sum("ferrule_agent_input_errors_total"),
    }
}

fn last(run: &Run, sensor: &str) -> f64 {
    run.got
        .get(sensor)
        .and_then(|v| v.last())
        .unwrap_or_else(|| panic!("no {sensor}; got {:?}", run.got.keys().collect::<Vec<_>>()))
        .1
}

fn cores() -> f64 {
    let mut s = sysinfo::System::new();
    s.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    s.cpus().len().max(1) as f64
}

#[test]
fn every_group_reports_plausible_values_each_second() {
    let started = now_ns();
    let run = run_host("name = \"host\"\ninterval_secs = 1", 2, 123_456);
    let ended = now_ns();

    // Two rounds, about a second apart, each sensor once per round.
    let rss = &run.got["host/agent/rss_bytes"];
    assert_eq!(rss.len(), 2);
    let gap = rss[1].0 - rss[0].0;
    assert!(
        (500_000_000..=5_000_000_000).contains(&gap),
        "rounds {gap} ns apart"
    );
    for (name, v) in &run.got {
        // Interfaces and mounts may come and go between rounds; the rest may not.
        if name.starts_with("host/net/") || name.starts_with("host/disk/") {
            assert!(v.len() <= 2, "{name}");
        } else {
            assert_eq!(v.len(), 2, "{name}");
        }
        for (t, x) in v {
            assert!((started..=ended).contains(t), "{name} stamped {t}");
            assert!(x.is_finite(), "{name} = {x}");
        }
    }

    let total = last(&run, "host/memory/total_bytes");
    assert!(total > 16e6, "memory total {total}");
    for m in ["used_bytes", "available_bytes"] {
        let v = last(&run, &format!("host/memory/{m}"));
        assert!(v > 0.0 && v <= total, "{m} {v} of {total}");
    }
    assert!(
        last(&run, "host/memory/swap_used_bytes") <= last(&run, "host/memory/swap_total_bytes")
    );

    let cpu = last(&run, "host/cpu/usage_percent");
    assert!((0.0..=100.0).contains(&cpu), "cpu {cpu}");
    for l in ["load1", "load5", "load15"] {
        assert!(last(&run, &format!("host/cpu/{l}")) >= 0.0);
    }

    let agent_cpu = last(&run, "host/agent/cpu_percent");
    assert!(
        (0.0..=100.0 * cores()).contains(&agent_cpu),
        "agent cpu {agent_cpu}"
    );
    assert!(last(&run, "host/agent/rss_bytes") > 1e6);
    assert_eq!(last(&run, "host/agent/spool_bytes"), 123_456.0);

    // At least the root file system; as df shows them, used + available <= total
    // (the rest is reserved for root, 5 % on ext4 by default; far more on some
    // hosts, such as this project's test machines).
    let disks: Vec<&String> = run
        .got
        .keys()
        .filter(|k| k.starts_with("host/disk/") && k.ends_with("/total_bytes"))
        .collect();
    assert!(!disks.is_empty(), "no disks: {:?}", run.got.keys());
    for d in disks {
        let base = d.trim_end_matches("/total_bytes");
        let t = last(&run, d);
        let u = last(&run, &format!("{base}/used_bytes"));
        let a = last(&run, &format!("{base}/available_bytes"));
        assert!(t > 0.0 && u > 0.0 && u + a <= t, "{base}: {u} + {a} > {t}");
    }

    // Loopback exists everywhere; its counters never go down.
    for c in ["rx_bytes_total", "tx_packets_total", "rx_errors_total"] {
        let v = &run.got[&format!("host/net/lo/{c}")];
        assert!(v[1].1 >= v[0].1, "{c} went down");
        assert_eq!(
            run.defines[&format!("host/net/lo/{c}")].1,
            SensorKind::Counter
        );
    }

    // Temperatures where the hardware has them (a VM usually has none).
    for (name, v) in run.got.iter().filter(|(k, _)| k.starts_with("host/temp/")) {
        assert!(name.ends_with("/celsius"));
        for (_, t) in v {
            assert!((-60.0..=150.0).contains(t), "{name} = {t}");
        }
    }

    assert_eq!(
        run.defines["host/memory/total_bytes"],
        ("B".into(), SensorKind::Gauge)
    );
    assert_eq!(run.defines["host/cpu/usage_percent"].0, "%");
    assert!(run.got.keys().all(|k| k.starts_with("host/")));
    assert_eq!(run.errors, 0, "no bad data on a healthy box");
}

#[test]
fn only_configured_groups_are_read() {
    let run = run_host(
        "name = \"mem\"\ninterval_secs = 1\nprefix = \"site-a/box\"\ngroups = [\"memory\", \"agent\"]",
        1,
        0,
    );
    let names: Vec<&str> = run.got.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "site-a/box/agent/cpu_percent",
            "site-a/box/agent/rss_bytes",
            "site-a/box/agent/spool_bytes",
            "site-a/box/memory/available_bytes",
            "site-a/box/memory/swap_total_bytes",
            "site-a/box/memory/swap_used_bytes",
            "site-a/box/memory/total_bytes",
            "site-a/box/memory/used_bytes",
        ]
    );
}

#[test]
fn filters_narrow_disks_and_interfaces() {
    let run = run_host(
        "name = \"f\"\ninterval_secs = 1\ngroups = [\"disk\", \"network\", \"temperature\"]\nmount_points = [\"/\"]\ninterfaces = [\"lo\"]",
        1,
        0,
    );
    let disks: Vec<&String> = run
        .got
        .keys()
        .filter(|k| k.starts_with("host/disk/"))
        .collect();
    assert!(
        disks.iter().all(|k| k.starts_with("host/disk/root/")),
        "{disks:?}"
    );
    let nets: Vec<&String> = run
        .got
        .keys()
        .filter(|k| k.starts_with("host/net/"))
        .collect();
    assert_eq!(nets.len(), 6, "{nets:?}");
    assert!(nets.iter().all(|k| k.starts_with("host/net/lo/")));
}

#[test]
fn the_example_config_is_valid_and_bad_configs_name_their_key() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/host.toml"))
        .unwrap();
    let cfg = inputs(&text).host.expect("an [inputs.host] block");
    let mut bad = Vec::new();
    cfg.validate("inputs.host", &mut bad);
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(cfg.groups, host::Group::ALL.to_vec());

    let cfg = inputs("[inputs.host]\nname = \"h\"\ninterval_secs = 0\nprefix = \"bad prefix\"\n")
        .host
        .unwrap();
    let mut bad = Vec::new();
    cfg.validate("inputs.host", &mut bad);
    let keys: Vec<&str> = bad.iter().map(|b| b.key.as_str()).collect();
    assert_eq!(keys, ["inputs.host.interval_secs", "inputs.host.prefix"]);
    let err = ferrule_config::load_str::<toml_file::File>(
        "[inputs.host]\nname = \"h\"\ngroups = [\"gpu\"]\n",
        "t.toml",
        [],
        "FERRULE",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("t.toml:3") && err.contains("gpu"), "{err}");
}

mod toml_file {
    /// A whole config file holding only inputs.
    #[derive(Debug, serde::Deserialize)]
    pub struct File {
        #[allow(dead_code)]
        pub inputs: ferrule_agent::config::InputsSection,
    }
}
