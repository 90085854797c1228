//! The Modbus input against a real peer this project did not write: a pymodbus
//! TCP server (`tests/peers/modbus_sim.py`) serving known values, packed by
//! Python's `struct` independently of the decoder under test.
//!
//! Checked: every type in every byte/word order decodes to exactly the served
//! value, with the sensors' names, units and kinds in the catalog; the map is read
//! in the planned number of requests per poll; an address that answers an
//! exception is counted once and sends nothing while the rest keeps arriving; a
//! merged read over a hole the device refuses is split so the points around the
//! hole arrive on every poll, without retrying the merged read each time; a dead
//! device and a device that never answers are counted without delaying a healthy
//! one; a device that restarts is read again.
//!
//! Needs `python3` with `pymodbus` 3.x (`scripts/test.sh` installs it); without
//! it the tests fail saying so rather than skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferrule_agent::batcher::Chunk;
use ferrule_agent::catalog::Catalog;
use ferrule_agent::config::InputsSection;
use ferrule_agent::inputs::modbus::{self, ModbusConfig};
use ferrule_agent::inputs::InputContext;
use ferrule_telemetry::Registry;
use ferrule_wire::{Quality, SensorKind};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout, Instant};

/// Generous: the suite runs on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- the peer

/// The pymodbus simulator, killed on drop.
struct Sim {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sim {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
    }
}

fn require_pymodbus() {
    let hint = "the Modbus input tests need python3 with pymodbus 3.x: run scripts/test.sh, \
                or python3 -m pip install 'pymodbus>=3.6,<4'";
    match Command::new("python3")
        .args(["-c", "import pymodbus; print(pymodbus.__version__)"])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "pymodbus is missing ({}): {hint}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("python3 cannot be run ({e}): {hint}"),
    }
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts the simulator on `port` and waits until it accepts connections.
async fn start_sim(dir: &Path, port: u16) -> Sim {
    require_pymodbus();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/modbus_sim.py");
    let log = dir.join(format!(
        "modbus_sim-{port}-{}.log",
        ferrule_agent::inputs::now_ns()
    ));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("python3 cannot be started");
    let mut sim = Sim { child, port, log };
    let start = Instant::now();
    loop {
        if let Some(status) = sim.child.try_wait().unwrap() {
            panic!("modbus_sim.py exited ({status}):\n{}", sim.log());
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return sim;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "modbus_sim.py does not listen on {port} after {DEADLINE:?}:\n{}",
            sim.log()
        );
        sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- the agent side

/// What `InputContext::new` needs, and what the inputs produce.
struct Harness {
    tx: mpsc::Sender<Chunk>,
    rx: mpsc::Receiver<Chunk>,
    catalog: Arc<Mutex<Catalog>>,
    registry: Registry,
    stop: watch::Sender<bool>,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel(64);
        let (stop, _) = watch::channel(false);
        Self {
            tx,
            rx,
            catalog: Arc::new(Mutex::new(Catalog::open(dir.path()).unwrap())),
            registry: Registry::new(),
            stop,
            dir,
        }
    }

    fn spawn(&self, cfg: ModbusConfig) -> tokio::task::JoinHandle<()> {
        let ctx = InputContext::new(
            &cfg.name,
            self.tx.clone(),
            self.catalog.clone(),
            self.registry.clone(),
            self.stop.subscribe(),
        );
        tokio::spawn(modbus::run(cfg, ctx))
    }

    /// Sensor id to name.
    fn names(&self) -> HashMap<u32, String> {
        let cat = self.catalog.lock().unwrap();
        cat.defines()
            .iter()
            .map(|d| (d.sensor.0, d.name.as_str().to_string()))
            .collect()
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.registry.counter_value(name, labels).unwrap_or(0)
    }

    fn errors(&self, input: &str, reason: &str) -> u64 {
        self.counter(
            "ferrule_agent_input_errors_total",
            &[("input", input), ("reason", reason)],
        )
    }

    /// The next chunk, failing the test after `DEADLINE`.
    async fn next(&mut self) -> Chunk {
        match timeout(DEADLINE, self.rx.recv()).await {
            Ok(Some(c)) => c,
            Ok(None) => panic!("every input stopped"),
            Err(_) => panic!(
                "no samples for {DEADLINE:?}; metrics:\n{}",
                self.registry.render()
            ),
        }
    }

    async fn shutdown(&mut self, tasks: Vec<tokio::task::JoinHandle<()>>) {
        self.stop.send(true).unwrap();
        for t in tasks {
            // Stopping is bounded by one poll (reads time out) plus a send.
            timeout(DEADLINE, t)
                .await
                .expect("the input did not stop")
                .unwrap();
        }
        // Drain what the last polls sent.
        while self.rx.try_recv().is_ok() {}
    }
}

/// Parses `[[inputs.modbus]]` TOML the way the agent's config does.
fn devices(text: &str) -> Vec<ModbusConfig> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        inputs: InputsSection,
    }
    let loaded = ferrule_config::load_str::<File>(text, "test.toml", std::iter::empty(), "FERRULE")
        .unwrap_or_else(|e| panic!("{e}"));
    let devices = loaded.value.inputs.modbus;
    for (i, d) in devices.iter().enumerate() {
        let mut bad = Vec::new();
        d.validate(&format!("inputs.modbus[{i}]"), &mut bad);
        assert!(bad.is_empty(), "{bad:?}");
    }
    devices
}

// ---------------------------------------------------------------- the tests

/// The simulator's map as `[[inputs.modbus.registers]]` entries, with the value
/// each must decode to (see `modbus_sim.py`).
fn served() -> Vec<(&'static str, &'static str, f64, &'static str)> {
    // Python packs a double into an f32 the way `as f32` rounds it.
    let f32_of = |x: f64| f64::from(x as f32);
    vec![
        (
            "plc/u16",
            r#"kind = "holding"
address = 0
unit = "count""#,
            51234.0,
            "count",
        ),
        (
            "plc/i16",
            r#"kind = "holding"
address = 1
type = "i16""#,
            -1234.0,
            "",
        ),
        (
            "plc/u32",
            r#"kind = "holding"
address = 2
type = "u32""#,
            3_000_000_123.0,
            "",
        ),
        (
            "plc/i32",
            r#"kind = "holding"
address = 4
type = "i32""#,
            -2_000_000_123.0,
            "",
        ),
        (
            "plc/f32_abcd",
            r#"kind = "holding"
address = 6
type = "f32"
byte_order = "big"
word_order = "big""#,
            f32_of(123.456),
            "",
        ),
        (
            "plc/f32_cdab",
            r#"kind = "holding"
address = 8
type = "f32"
word_order = "little""#,
            f32_of(-7.25),
            "",
        ),
        (
            "plc/f32_badc",
            r#"kind = "holding"
address = 10
type = "f32"
byte_order = "little""#,
            f32_of(0.1),
            "",
        ),
        (
            "plc/f32_dcba",
            r#"kind = "holding"
address = 12
type = "f32"
byte_order = "little"
word_order = "little""#,
            f32_of(6.02214e23),
            "",
        ),
        (
            "plc/f64_abcdefgh",
            r#"kind = "holding"
address = 14
type = "f64""#,
            std::f64::consts::E, // Python serves 2.718281828459045, the same double
            "",
        ),
        (
            "plc/f64_hgfedcba",
            r#"kind = "holding"
address = 18
type = "f64"
byte_order = "little"
word_order = "little""#,
            -1.2345678e-7,
            "",
        ),
        (
            "plc/volts",
            r#"kind = "holding"
address = 22
scale = 0.1
unit = "V""#,
            230.1,
            "V",
        ),
        (
            "plc/amps",
            r#"kind = "holding"
address = 23
type = "i16"
scale = 0.01
offset = 1.0
unit = "A""#,
            -4.0,
            "A",
        ),
        (
            "plc/swapped",
            r#"kind = "holding"
address = 30
byte_order = "little""#,
            4660.0,
            "",
        ),
        (
            "plc/u32_cdab",
            r#"kind = "holding"
address = 100
type = "u32"
word_order = "little"
sensor_kind = "counter"
unit = "Wh""#,
            4_000_000_001.0,
            "Wh",
        ),
        (
            "plc/in_u16",
            r#"kind = "input"
address = 0"#,
            7.0,
            "",
        ),
        (
            "plc/in_i32",
            r#"kind = "input"
address = 1
type = "i32"
word_order = "little""#,
            -42.0,
            "",
        ),
        ("plc/coil0", "kind = \"coil\"\naddress = 0", 1.0, ""),
        ("plc/coil1", "kind = \"coil\"\naddress = 1", 0.0, ""),
        ("plc/coil7", "kind = \"coil\"\naddress = 7", 1.0, ""),
        ("plc/coil9", "kind = \"coil\"\naddress = 9", 1.0, ""),
        ("plc/di0", "kind = \"discrete\"\naddress = 0", 0.0, ""),
        ("plc/di2", "kind = \"discrete\"\naddress = 2", 1.0, ""),
        ("plc/di9", "kind = \"discrete\"\naddress = 9", 1.0, ""),
    ]
}

/// Past the simulator's holding block: answers exception 0x02.
const MISSING: &str = "plc/missing";

fn plc_config(port: u16, poll_interval_ms: u64) -> String {
    let mut text = format!(
        "[[inputs.modbus]]\nname = \"plc\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         unit_id = 1\npoll_interval_ms = {poll_interval_ms}\ntimeout_ms = 5000\n"
    );
    for (sensor, entry, _, _) in served() {
        text += &format!("[[inputs.modbus.registers]]\nsensor = \"{sensor}\"\n{entry}\n");
    }
    text += &format!(
        "[[inputs.modbus.registers]]\nsensor = \"{MISSING}\"\nkind = \"holding\"\naddress = 1000\n"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_order_decodes_to_the_served_value() {
    let mut h = Harness::new();
    let sim = start_sim(h.dir.path(), free_port()).await;
    let cfg = devices(&plc_config(sim.port, 100)).remove(0);
    let task = h.spawn(cfg);

    let expected: HashMap<&str, f64> = served().iter().map(|(s, _, v, _)| (*s, *v)).collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let start = Instant::now();
    // Three full polls' worth of every point.
    while expected
        .keys()
        .any(|s| seen.get(*s).copied().unwrap_or(0) < 3)
    {
        assert!(
            start.elapsed() < DEADLINE,
            "seen so far: {seen:?}\n{}",
            sim.log()
        );
        let chunk = h.next().await;
        assert_eq!(&*chunk.input, "plc");
        let names = h.names();
        // One timestamp per poll: the points of a device line up.
        let stamps: Vec<i64> = chunk
            .series
            .iter()
            .flat_map(|s| s.timestamps_ns().to_vec())
            .collect();
        assert!(stamps.windows(2).all(|w| w[0] == w[1]), "{stamps:?}");
        let now = ferrule_agent::inputs::now_ns();
        assert!(stamps.iter().all(|t| (now - t).abs() < 60_000_000_000));
        for s in &chunk.series {
            let name = &names[&s.sensor().0];
            let want = expected
                .get(name.as_str())
                .unwrap_or_else(|| panic!("unexpected sensor {name}"));
            for (_, v, q) in s.iter() {
                assert_eq!(q, Quality::Good, "{name}");
                assert_eq!(
                    v.to_bits(),
                    want.to_bits(),
                    "{name}: got {v}, served {want}"
                );
            }
            *seen.entry(name.clone()).or_default() += s.len();
        }
    }
    assert!(
        !seen.contains_key(MISSING),
        "a value was invented for {MISSING}"
    );

    // The catalog has every sensor with its unit and kind.
    {
        let cat = h.catalog.lock().unwrap();
        let defs: HashMap<&str, _> = cat
            .defines()
            .iter()
            .map(|d| (d.name.as_str(), (d.unit.as_str(), d.kind)))
            .collect();
        for (sensor, _, _, unit) in served() {
            let (u, kind) = defs[sensor];
            assert_eq!(u, unit, "{sensor}");
            let want = if sensor.contains("coil") || sensor.contains("di") {
                SensorKind::State
            } else if sensor == "plc/u32_cdab" {
                SensorKind::Counter
            } else {
                SensorKind::Gauge
            };
            assert_eq!(kind, want, "{sensor}");
        }
        assert!(
            defs.contains_key(MISSING),
            "sensors are registered up front"
        );
    }

    h.shutdown(vec![task]).await;
    let polls = h.counter("ferrule_agent_modbus_polls_total", &[("input", "plc")]);
    let requests = h.counter("ferrule_agent_modbus_requests_total", &[("input", "plc")]);
    let metrics = h.registry.render();
    // coils 0..10, discrete 0..10, holding 0..31 (the gap 24..30 bridged),
    // holding 100..102, input 0..3; holding 1000 (the exception) was tried
    // once, then dropped from the plan.
    assert!(
        metrics.contains("ferrule_agent_modbus_planned_reads{input=\"plc\"} 5"),
        "{metrics}"
    );
    assert!(polls >= 3, "{metrics}");
    assert_eq!(requests, 5 * polls + 1, "{metrics}");
    // The refused address: counted once, nothing else went wrong.
    assert_eq!(h.errors("plc", "exception"), 1, "{metrics}");
    for reason in [
        "timeout", "connect", "protocol", "decode", "config", "sensor",
    ] {
        assert_eq!(h.errors("plc", reason), 0, "{reason}: {metrics}");
    }
    assert!(
        h.counter("ferrule_agent_input_samples_total", &[("input", "plc")])
            >= 3 * served().len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_around_a_refused_hole_arrive_on_every_poll() {
    let mut h = Harness::new();
    let sim = start_sim(h.dir.path(), free_port()).await;
    // A gap of 80 merges everything below 1000 into one read over the hole
    // 97..99, which the simulator refuses; plc/hole sits in it.
    let mut text = format!(
        "[[inputs.modbus]]\nname = \"plc\"\nhost = \"127.0.0.1\"\nport = {}\n\
         poll_interval_ms = 100\ntimeout_ms = 5000\nmax_gap_addresses = 80\n",
        sim.port
    );
    let good = [
        ("plc/u16", "address = 0", 51234.0),
        ("plc/volts", "address = 22\nscale = 0.1", 230.1),
        (
            "plc/swapped",
            "address = 30\nbyte_order = \"little\"",
            4660.0,
        ),
        ("plc/r96", "address = 96", 9696.0),
        (
            "plc/u32_cdab",
            "address = 100\ntype = \"u32\"\nword_order = \"little\"",
            4_000_000_001.0,
        ),
    ];
    let refused = [("plc/hole", "address = 98"), (MISSING, "address = 1000")];
    for (sensor, entry) in good
        .iter()
        .map(|(s, e, _)| (*s, *e))
        .chain(refused.iter().copied())
    {
        text += &format!(
            "[[inputs.modbus.registers]]\nsensor = \"{sensor}\"\nkind = \"holding\"\n{entry}\n"
        );
    }
    let task = h.spawn(devices(&text).remove(0));

    let polls_wanted = 8;
    for poll in 0..polls_wanted {
        let chunk = h.next().await;
        let names = h.names();
        let mut got: Vec<(String, f64)> = chunk
            .series
            .iter()
            .flat_map(|s| {
                let name = names[&s.sensor().0].clone();
                s.values()
                    .iter()
                    .map(move |v| (name.clone(), *v))
                    .collect::<Vec<_>>()
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want: Vec<(String, f64)> =
            good.iter().map(|(s, _, v)| (s.to_string(), *v)).collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, want, "poll {poll}\n{}", h.registry.render());
    }
    h.shutdown(vec![task]).await;
    let polls = h.counter("ferrule_agent_modbus_polls_total", &[("input", "plc")]);
    let requests = h.counter("ferrule_agent_modbus_requests_total", &[("input", "plc")]);
    let metrics = h.registry.render();
    assert!(polls >= polls_wanted, "{metrics}");
    // The first poll: 0..102 refused, split into 0..31 (read) and 96..102
    // (refused), that into 96 (read) and 98..102 (refused), that into 98
    // (refused: dropped) and 100..102 (read); 1000 refused and dropped: 8
    // requests. Every later poll sends only the three reads that work.
    assert!(
        metrics.contains("ferrule_agent_modbus_planned_reads{input=\"plc\"} 3"),
        "{metrics}"
    );
    assert_eq!(requests, 8 + 3 * (polls - 1), "{metrics}");
    assert_eq!(
        h.counter(
            "ferrule_agent_modbus_split_reads_total",
            &[("input", "plc")]
        ),
        3,
        "{metrics}"
    );
    // The two refused sensors: counted once each, however many polls.
    assert_eq!(h.errors("plc", "exception"), 2, "{metrics}");
    for reason in ["timeout", "connect", "protocol", "decode"] {
        assert_eq!(h.errors("plc", reason), 0, "{reason}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_silent_devices_do_not_delay_a_healthy_one() {
    let mut h = Harness::new();
    let sim = start_sim(h.dir.path(), free_port()).await;
    // Accepts connections and never answers: every read times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let dead_port = free_port();
    let text = format!(
        r#"
[[inputs.modbus]]
name = "good"
host = "127.0.0.1"
port = {good}
poll_interval_ms = 100
timeout_ms = 5000
[[inputs.modbus.registers]]
sensor = "good/u16"
kind = "holding"
address = 0

[[inputs.modbus]]
name = "dead"
host = "127.0.0.1"
port = {dead_port}
poll_interval_ms = 100
timeout_ms = 3000
[[inputs.modbus.registers]]
sensor = "dead/u16"
kind = "holding"
address = 0

[[inputs.modbus]]
name = "silent"
host = "127.0.0.1"
port = {silent_port}
poll_interval_ms = 100
timeout_ms = 3000
[[inputs.modbus.registers]]
sensor = "silent/u16"
kind = "holding"
address = 0
[[inputs.modbus.registers]]
sensor = "silent/coil"
kind = "coil"
address = 0
"#,
        good = sim.port
    );
    let tasks: Vec<_> = devices(&text).into_iter().map(|d| h.spawn(d)).collect();

    // Watch the healthy device while the silent one sits in 3 s timeouts.
    let mut good_polls = 0;
    let mut last = Instant::now();
    let mut longest_gap = Duration::ZERO;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(7)
        || good_polls < 10
        || h.errors("silent", "timeout") < 2
    {
        assert!(start.elapsed() < DEADLINE, "good polls: {good_polls}");
        let chunk = h.next().await;
        assert_eq!(&*chunk.input, "good", "only the healthy device has values");
        let v = chunk.series[0].values()[0];
        assert_eq!(v, 51234.0);
        good_polls += 1;
        longest_gap = longest_gap.max(last.elapsed());
        last = Instant::now();
    }
    let metrics = h.registry.render();
    // 100 ms polls; a wait on another device's 3 s timeout would show here.
    assert!(
        longest_gap < Duration::from_millis(2500),
        "{longest_gap:?}\n{metrics}"
    );
    assert!(h.errors("dead", "connect") >= 1, "{metrics}");
    assert!(h.errors("silent", "timeout") >= 2, "{metrics}");
    for reason in ["timeout", "connect", "exception", "protocol", "decode"] {
        assert_eq!(h.errors("good", reason), 0, "{reason}: {metrics}");
    }
    // Unreachable devices back off instead of retrying every 100 ms.
    let dead_polls = h.counter("ferrule_agent_modbus_polls_total", &[("input", "dead")]);
    assert!(
        dead_polls < 30,
        "{dead_polls} connection attempts in ~7 s\n{metrics}"
    );
    h.shutdown(tasks).await;
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_device_is_read_again() {
    let mut h = Harness::new();
    let port = free_port();
    let mut sim = start_sim(h.dir.path(), port).await;
    let text = format!(
        "[[inputs.modbus]]\nname = \"plc\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         poll_interval_ms = 100\ntimeout_ms = 3000\n\
         [[inputs.modbus.registers]]\nsensor = \"plc/i16\"\nkind = \"holding\"\naddress = 1\ntype = \"i16\"\n"
    );
    let task = h.spawn(devices(&text).remove(0));
    assert_eq!(h.next().await.series[0].values()[0], -1234.0);

    sim.stop();
    let start = Instant::now();
    while h.errors("plc", "connect") == 0 {
        assert!(start.elapsed() < DEADLINE, "{}", h.registry.render());
        // Samples polled before the stop may still be queued.
        let _ = timeout(Duration::from_millis(100), h.rx.recv()).await;
    }
    while h.rx.try_recv().is_ok() {}

    let _sim = start_sim(h.dir.path(), port).await;
    let chunk = h.next().await;
    assert_eq!(chunk.series[0].values()[0], -1234.0);
    assert_eq!(chunk.series[0].quality()[0], Quality::Good);
    h.shutdown(vec![task]).await;
}

#[test]
fn the_example_config_is_valid() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/modbus.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let devices = devices(&text);
    assert!(!devices.is_empty());
    for d in &devices {
        assert!(!d.registers.is_empty(), "{}", d.name);
    }
}
