//! The line protocol input against real senders this project did not write:
//! `socat` and OpenBSD `nc` over TCP and UDP, with malformed lines mixed in, a
//! connection limit, over-long lines, and backpressure (a spool that takes
//! nothing stalls the TCP sender instead of the agent buffering).
//!
//! Needs `socat` and `nc` (Debian `socat`, `netcat-openbsd`; `scripts/test.sh`
//! installs them). Without them the tests fail, naming the package.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferrule_agent::batcher::Chunk;
use ferrule_agent::catalog::Catalog;
use ferrule_agent::config::InputsSection;
use ferrule_agent::inputs::{line, InputContext};
use ferrule_telemetry::Registry;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

const INPUT: &str = "lp";

/// Fails (never skips) when a peer tool is missing.
fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: install the Debian package `{package}` \
         (scripts/test.sh does). This test needs the real peer and does not skip."
    );
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

type Got = BTreeMap<String, Vec<(i64, f64)>>;

/// One running line input, its chunk channel (drained only when a test says so)
/// and its counters.
struct Harness {
    rt: tokio::runtime::Runtime,
    rx: mpsc::Receiver<Chunk>,
    catalog: Arc<Mutex<Catalog>>,
    registry: Registry,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    tcp: SocketAddr,
    udp: SocketAddr,
    got: Got,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Starts an input listening on free TCP and UDP ports; `extra` is more TOML
    /// keys for its block. `queue` is the chunk channel's capacity.
    fn start(extra: &str, queue: usize) -> Self {
        need("socat", "socat");
        need("nc", "netcat-openbsd");
        let tcp: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let udp: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let text = format!(
            "[[inputs.line]]\nname = \"{INPUT}\"\nlisten_tcp = \"{tcp}\"\nlisten_udp = \"{udp}\"\n{extra}\n"
        );
        let cfg = inputs(&text).line.remove(0);
        let mut bad = Vec::new();
        cfg.validate("inputs.line[0]", &mut bad);
        assert!(bad.is_empty(), "{bad:?}");

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Mutex::new(Catalog::open(dir.path()).unwrap()));
        let registry = Registry::new();
        let (tx, rx) = mpsc::channel(queue);
        let (stop, stop_rx) = watch::channel(false);
        let ctx = InputContext::new(INPUT, tx, catalog.clone(), registry.clone(), stop_rx);
        let task = rt.spawn(line::run(cfg, ctx));
        // TCP is bound after UDP: once it accepts, both are up.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(tcp).is_err() {
            assert!(
                Instant::now() < deadline,
                "the input never listened on {tcp}"
            );
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
        }
        let h = Self {
            rt,
            rx,
            catalog,
            registry,
            stop,
            task: Some(task),
            tcp,
            udp,
            got: Got::new(),
            _dir: dir,
        };
        // The probe connection above was accepted and has closed.
        h.wait_for(
            |h| h.accepted() == 1 && h.connections() == 0,
            "the probe connection to close",
        );
        h
    }

    fn errors(&self, reason: &str) -> u64 {
        self.registry
            .counter_value(
                "ferrule_agent_input_errors_total",
                &[("input", INPUT), ("reason", reason)],
            )
            .unwrap_or(0)
    }

    fn samples_sent(&self) -> u64 {
        self.registry
            .counter_value("ferrule_agent_input_samples_total", &[("input", INPUT)])
            .unwrap_or(0)
    }

    fn accepted(&self) -> u64 {
        self.registry
            .counter_value("ferrule_agent_line_connections_total", &[("input", INPUT)])
            .unwrap_or(0)
    }

    fn connections(&self) -> i64 {
        self.registry
            .gauge(
                "ferrule_agent_line_connections_open",
                "Open TCP connections of each line protocol input",
                &[("input", INPUT)],
            )
            .get()
    }

    fn wait_for(&self, cond: impl Fn(&Self) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.pause(Duration::from_millis(10));
        }
    }

    /// Sleeps the test thread (which is not one of the runtime's workers).
    fn pause(&self, d: Duration) {
        self.rt.block_on(async { tokio::time::sleep(d).await });
    }

    /// Drains chunks into `got` until `done` holds (or fails after `secs`).
    fn drain_until(&mut self, done: impl Fn(&Got) -> bool, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done(&self.got) {
            assert!(
                Instant::now() < deadline,
                "timed out; got {} sensors: {:?}",
                self.got.len(),
                self.got.keys().collect::<Vec<_>>()
            );
            let chunk = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(100), self.rx.recv()).await
            });
            if let Ok(Some(chunk)) = chunk {
                assert_eq!(&*chunk.input, INPUT);
                let cat = self.catalog.lock().unwrap();
                for s in chunk.series {
                    let d = cat
                        .defines()
                        .iter()
                        .find(|d| d.sensor == s.sensor())
                        .expect("a series of an unregistered sensor");
                    let v = self.got.entry(d.name.as_str().to_string()).or_default();
                    for (t, x, q) in s.iter() {
                        assert_eq!(q, ferrule_wire::Quality::Good);
                        v.push((t, x));
                    }
                }
            }
        }
    }

    fn unit(&self, sensor: &str) -> String {
        let cat = self.catalog.lock().unwrap();
        cat.defines()
            .iter()
            .find(|d| d.name.as_str() == sensor)
            .map(|d| d.unit.clone())
            .unwrap_or_else(|| panic!("no sensor {sensor}"))
    }

    /// Stops the input and checks it returns promptly.
    fn stop(mut self) {
        self.stop.send(true).unwrap();
        let task = self.task.take().unwrap();
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await })
            .expect("the input did not stop within 5 s")
            .unwrap();
    }
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

/// Runs `cmd` with `data` on its stdin (from a file, so each read gets it whole)
/// and checks it succeeds.
fn run_with_input(cmd: &mut Command, data: &[u8]) -> std::process::Output {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(data).unwrap();
    std::io::Seek::rewind(&mut f).unwrap();
    let out = cmd
        .stdin(Stdio::from(f))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn socat_tcp(addr: SocketAddr, data: &[u8]) {
    run_with_input(
        Command::new("socat").args(["-u", "-", &format!("TCP:{addr}")]),
        data,
    );
}

fn socat_udp(addr: SocketAddr, data: &[u8]) {
    // -b: one read of the file (and so one datagram) carries all of it.
    run_with_input(
        Command::new("socat").args(["-u", "-b", "65000", "-", &format!("UDP-SENDTO:{addr}")]),
        data,
    );
}

fn nc_tcp(addr: SocketAddr, data: &[u8]) {
    // -N: shut the socket down for writing at end of input (OpenBSD nc).
    run_with_input(
        Command::new("nc").args(["-N", &addr.ip().to_string(), &addr.port().to_string()]),
        data,
    );
}

fn nc_udp(addr: SocketAddr, data: &[u8]) {
    run_with_input(
        Command::new("nc").args([
            "-u",
            "-w1",
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ]),
        data,
    );
}

const MIXED: &str = concat!(
    "# a comment, then an empty line\n",
    "\n",
    "weather,site=s1,bay=3 temp=21.5,hum=40i 1700000000000000001\n",
    "weather,site=s1 temp=21.75 1700000000000000002\n",
    // An escaped tag the template does not use: parsed, ignored.
    "weather,site=s1,note=a\\ b\\,c\\=d temp=23 1700000000000000003\n",
    "state,site=s1 open=t,closed=false 1700000000000000004\n",
    "state,site=s1 label=\"hello, world \\\"x\\\"\",count=7i 1700000000000000005\n",
    "big,site=s1 u=18446744073709551615u,neg=-42i,e=-1.5e-3 1700000000000000006\n",
    "nots,site=s1 v=1\n",
    // Malformed, one of each reason, between good lines.
    "weather,site=s1 temp=abc 1700000000000000007\n",
    "weather,site=s1,bay temp=1 1700000000000000008\n",
    "weather,site=s1 temp=1 17000000000000000009x\n",
    "weather temp=1 1700000000000000010\n",
    "bad!name,site=s1 v=1 1700000000000000011\n",
    "weather,site=s1 temp=22.5 1700000000000000012\n",
    "crlf,site=s1 v=3 1700000000000000013\r\n",
    // The last line has no newline: the end of the stream ends it.
    "last,site=s1 v=-0.25 1700000000000000014",
);

/// Checks what [`MIXED`], sent at or after `sent_from`, produced.
fn check_mixed(h: &mut Harness, sent_from: i64) {
    h.drain_until(|g| g.contains_key("s1/last/v"), 10);
    let sent_to = now_ns();
    let g = &h.got;
    assert_eq!(
        g["s1/weather/temp"],
        vec![
            (1_700_000_000_000_000_001, 21.5),
            (1_700_000_000_000_000_002, 21.75),
            (1_700_000_000_000_000_003, 23.0),
            (1_700_000_000_000_000_012, 22.5),
        ]
    );
    assert_eq!(g["s1/weather/hum"], vec![(1_700_000_000_000_000_001, 40.0)]);
    assert_eq!(g["s1/state/open"], vec![(1_700_000_000_000_000_004, 1.0)]);
    assert_eq!(g["s1/state/closed"], vec![(1_700_000_000_000_000_004, 0.0)]);
    assert_eq!(g["s1/state/count"], vec![(1_700_000_000_000_000_005, 7.0)]);
    assert_eq!(
        g["s1/big/u"],
        vec![(1_700_000_000_000_000_006, u64::MAX as f64)]
    );
    assert_eq!(g["s1/big/neg"], vec![(1_700_000_000_000_000_006, -42.0)]);
    assert_eq!(g["s1/big/e"], vec![(1_700_000_000_000_000_006, -1.5e-3)]);
    assert_eq!(g["s1/crlf/v"], vec![(1_700_000_000_000_000_013, 3.0)]);
    assert_eq!(g["s1/last/v"], vec![(1_700_000_000_000_000_014, -0.25)]);
    // No timestamp: the receive time.
    let nots = &g["s1/nots/v"];
    assert_eq!(nots.len(), 1);
    assert_eq!(nots[0].1, 1.0);
    assert!(
        (sent_from..=sent_to).contains(&nots[0].0),
        "receive time {} outside [{sent_from}, {sent_to}]",
        nots[0].0
    );
    assert!(!g.contains_key("s1/state/label"));
    assert_eq!(g.len(), 11, "{:?}", g.keys().collect::<Vec<_>>());
    for (reason, n) in [
        ("bad_field", 1),
        ("bad_line", 1),
        ("bad_timestamp", 1),
        ("missing_tag", 1),
        ("bad_sensor_name", 1),
        ("string_field", 1),
        ("line_too_long", 0),
    ] {
        assert_eq!(h.errors(reason), n, "{reason}");
    }
    assert_eq!(h.unit("s1/weather/temp"), "°C");
    assert_eq!(h.unit("s1/weather/hum"), "%");
    assert_eq!(h.unit("s1/state/open"), "1");
}

const MIXED_CFG: &str = r#"
sensor_name = "{tag:site}/{measurement}/{field}"
unit = "1"
units = { temp = "°C", "weather/hum" = "%" }
"#;

#[test]
fn tcp_from_socat_keeps_good_lines_and_counts_each_malformed_one() {
    let mut h = Harness::start(MIXED_CFG, 64);
    let from = now_ns();
    socat_tcp(h.tcp, MIXED.as_bytes());
    check_mixed(&mut h, from);
    h.stop();
}

#[test]
fn udp_from_socat_keeps_good_lines_and_counts_each_malformed_one() {
    let mut h = Harness::start(MIXED_CFG, 64);
    let from = now_ns();
    socat_udp(h.udp, MIXED.as_bytes());
    check_mixed(&mut h, from);
    h.stop();
}

#[test]
fn nc_over_tcp_and_udp_with_millisecond_precision() {
    let mut h = Harness::start("precision = \"ms\"", 64);
    nc_tcp(
        h.tcp,
        b"m,host=a v=1 1700000000123\nm,host=a v=2 1700000000124\nm v=oops 1\n",
    );
    nc_udp(h.udp, b"u v=10i 1700000000125\nu v=11i 9223372036855\n");
    h.drain_until(
        |g| g.contains_key("u/v") && g.get("m/v").is_some_and(|v| v.len() == 2),
        10,
    );
    assert_eq!(
        h.got["m/v"],
        vec![
            (1_700_000_000_123_000_000, 1.0),
            (1_700_000_000_124_000_000, 2.0)
        ]
    );
    assert_eq!(h.got["u/v"], vec![(1_700_000_000_125_000_000, 10.0)]);
    h.wait_for(
        |h| h.errors("bad_timestamp") == 1,
        "the overflowing ms timestamp",
    );
    assert_eq!(h.errors("bad_field"), 1);
    h.stop();
}

#[test]
fn over_long_lines_are_skipped_up_to_the_next_newline() {
    let mut h = Harness::start("max_line_bytes = 1024", 64);
    let mut data = Vec::new();
    data.extend_from_slice(b"a v=1 1\n");
    // 100 KiB in one line: counted once, never buffered whole.
    data.extend_from_slice(b"huge,t=");
    data.extend(std::iter::repeat_n(b'x', 100 * 1024));
    data.extend_from_slice(b" v=9 2\n");
    data.extend_from_slice(b"b v=2 3\n");
    // One byte over the limit, then exactly at the limit.
    let over = format!("c,t={} v=1 4\n", "y".repeat(1025 - 10));
    assert_eq!(over.len(), 1026);
    data.extend_from_slice(over.as_bytes());
    let exact = format!("d,t={} v=4 5\n", "z".repeat(1024 - 10));
    assert_eq!(exact.len(), 1025);
    data.extend_from_slice(exact.as_bytes());
    data.extend_from_slice(b"e v=5 6");
    nc_tcp(h.tcp, &data);
    h.drain_until(|g| g.contains_key("e/v"), 10);
    assert_eq!(h.got["a/v"], vec![(1, 1.0)]);
    assert_eq!(h.got["b/v"], vec![(3, 2.0)]);
    assert_eq!(h.got["d/v"], vec![(5, 4.0)]);
    assert_eq!(h.got["e/v"], vec![(6, 5.0)]);
    assert!(!h.got.contains_key("huge/v") && !h.got.contains_key("c/v"));
    assert_eq!(h.errors("line_too_long"), 2);
    // Over UDP too: the rest of the datagram is kept.
    let mut dgram = format!("f,t={} v=1 7\n", "w".repeat(1100)).into_bytes();
    dgram.extend_from_slice(b"g v=7 8\n");
    socat_udp(h.udp, &dgram);
    h.drain_until(|g| g.contains_key("g/v"), 10);
    assert_eq!(h.got["g/v"], vec![(8, 7.0)]);
    assert_eq!(h.errors("line_too_long"), 3);
    h.stop();
}

#[test]
fn connections_beyond_the_limit_are_refused_and_counted() {
    let mut h = Harness::start("max_connections = 1", 64);
    let mut held = TcpStream::connect(h.tcp).unwrap();
    h.wait_for(|h| h.connections() == 1, "the held connection");
    // A second sender is closed at once; what it wrote is not read.
    let out = Command::new("socat")
        .args(["-u", "-", &format!("TCP:{}", h.tcp)])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            let _ = c.stdin.take().unwrap().write_all(b"refused v=1 1\n");
            c.wait_with_output()
        })
        .unwrap();
    drop(out);
    h.wait_for(|h| h.errors("too_many_connections") == 1, "the refusal");
    // The held connection still works, and once it closes another is accepted.
    held.write_all(b"held v=1 1\n").unwrap();
    held.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = held.read_to_end(&mut rest);
    drop(held);
    h.wait_for(|h| h.connections() == 0, "the held connection to close");
    socat_tcp(h.tcp, b"later v=2 2\n");
    h.drain_until(
        |g| g.contains_key("held/v") && g.contains_key("later/v"),
        10,
    );
    assert!(!h.got.contains_key("refused/v"));
    assert_eq!(h.got["later/v"], vec![(2, 2.0)]);
    h.stop();
}

/// Waits up to `secs` for `child` to exit.
fn wait_exit(h: &Harness, child: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        h.pause(Duration::from_millis(20));
    }
}

#[test]
fn a_full_queue_stalls_the_tcp_sender_instead_of_buffering() {
    // A queue of one chunk that nobody drains: the spool blocking.
    let mut h = Harness::start("", 1);
    // 16 MiB of lines: far more than the kernel's socket buffers on both sides.
    let pad = "p".repeat(180);
    let mut data = Vec::new();
    let mut n = 0u64;
    while data.len() < 16 << 20 {
        data.extend_from_slice(format!("bp,pad={pad} v={n}i {n}\n").as_bytes());
        n += 1;
    }
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&data).unwrap();
    std::io::Seek::rewind(&mut f).unwrap();
    drop(data);
    let mut sender = Command::new("socat")
        .args(["-u", "-", &format!("TCP:{}", h.tcp)])
        .stdin(Stdio::from(f))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    h.wait_for(|h| h.samples_sent() > 0, "the first chunk");
    // The sender is stuck: the input stopped reading, the kernel buffers filled.
    assert!(
        wait_exit(&h, &mut sender, 3).is_none(),
        "socat finished 16 MiB although nothing was taken from the queue"
    );
    // One chunk (one 8 KiB read, at most ~45 of these lines) sits in the queue;
    // the next waits in the connection task. Nothing else was read.
    let sent = h.samples_sent();
    assert!(sent <= 100, "{sent} samples sent into a queue of one chunk");
    h.pause(Duration::from_millis(500));
    assert_eq!(
        h.samples_sent(),
        sent,
        "the input kept reading while blocked"
    );
    // Take from the queue: everything arrives, in order, nothing lost.
    h.drain_until(|g| g.get("bp/v").is_some_and(|v| v.len() as u64 == n), 120);
    let status = wait_exit(&h, &mut sender, 30).expect("socat did not finish once drained");
    assert!(status.success());
    let v = &h.got["bp/v"];
    for (i, (t, x)) in v.iter().enumerate() {
        assert_eq!((*t, *x), (i as i64, i as f64));
    }
    assert_eq!(h.errors("line_too_long") + h.errors("bad_line"), 0);
    h.stop();
}

#[test]
fn the_example_config_is_valid_and_bad_configs_name_their_key() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/line.toml"))
        .unwrap();
    let cfg = inputs(&text);
    assert_eq!(cfg.line.len(), 1);
    let mut bad = Vec::new();
    cfg.line[0].validate("inputs.line[0]", &mut bad);
    assert!(bad.is_empty(), "{bad:?}");

    let cfg = inputs(
        "[[inputs.line]]\nname = \"x\"\nsensor_name = \"{measurement}/{host}\"\nmax_line_bytes = 1\nmax_connections = 0\nunit = \"0123456789012345678901234567890123\"\n",
    );
    let mut bad = Vec::new();
    cfg.line[0].validate("inputs.line[0]", &mut bad);
    let keys: Vec<&str> = bad.iter().map(|b| b.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "inputs.line[0].listen_tcp",
            "inputs.line[0].sensor_name",
            "inputs.line[0].max_line_bytes",
            "inputs.line[0].max_connections",
            "inputs.line[0].unit",
        ]
    );
    assert!(bad[1].message.contains("{host}"), "{}", bad[1].message);
}
