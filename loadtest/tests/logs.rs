//! Logs, as an operator and a security reviewer read them: human-readable text
//! by default (colours only on a terminal, none with `NO_COLOR` or in a file),
//! one JSON object per line with `FERRULE_LOG_FORMAT=json`, an unknown format
//! said plainly and text used (the daemon still starts), and no secret, key or
//! token in them, ever, even while every path that holds one fails and logs.
//!
//! Real processes on loopback. Two aggregator + agent pairs run at once, one
//! logging JSON and one text, each with its own distinctive secrets
//! (`s3cr3t-<pair>-<what>-<random>`): the JSON pair's aggregator gets every
//! secret field through `env:NAME`, the text pair's literally in its file;
//! both also carry secrets where only a literal goes (a password in a URL, a
//! SASL user name), and both agents have `env:`, literal and `file:` ones.
//! Every path holding one is made to fail, so its errors are logged:
//!
//! - Redis (`[redis]`, password and a password in the URL): a real
//!   `redis-server` (scripts/redis.sh) that requires another password, so
//!   every AUTH is refused: the fan-out, the sampler lock and the alert
//!   stream fail;
//! - Kafka (`[kafka.properties]`: SASL/PLAIN user name and password): brokers
//!   at a closed loopback port, so batches and alert records fail;
//! - PagerDuty (`routing_key`): at a closed loopback port;
//! - Alertmanager: at a closed loopback port, `user:password@` in its URL;
//! - the agents' MQTT inputs, with `env:`, literal and `file:` passwords: a real
//!   Mosquitto that knows the user with another password refuses them.
//!
//! An alert rule that fires at once on the agents' synthetic feed makes the
//! alert outputs send. The agents hold their TLS keys in files and connect to
//! their aggregator (the aggregator's key is its QUIC reset secret too). All
//! four log at `FERRULE_LOG=debug`, what an operator turns on to find out why
//! something fails (dependencies' debug lines included). After about ten
//! seconds both pairs get SIGTERM and their stderr is read whole:
//! every JSON line is an object with `timestamp`, `level` and `message`; every
//! text line is `<timestamp> <LEVEL> ...` without escape codes; each failure
//! is there as a warning or an error; and no secret (nor its random part, nor
//! the `s3cr3t` marker, nor `user:password` in base64 as in a Basic header),
//! nor any line of any PEM private key of the test's PKI, appears in any log.
//!
//! Beside them: an aggregator with `FERRULE_LOG_FORMAT=yaml` starts, says why
//! it logs text, and logs text; two aggregators on a real terminal (`script`
//! gives them a pty) log in colour, and without with `NO_COLOR=1`.
//!
//! Run by `scripts/test.sh` with `--ignored` after `cargo build --workspace
//! --bins` (15 to 35 s, most of it the aggregators stopping with Kafka
//! unreachable); needs redis-server, mosquitto and mosquitto_passwd, and
//! util-linux's script.

// Plain test threads: blocking sleeps are what we want.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // a panic in a test is a failure with a backtrace

mod support;

use base64::Engine as _;
use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{self, AgentSpec, Proc};
use std::hash::BuildHasher as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::redis_server::Redis;

const LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

/// Fires at once and for good on the synthetic feed's frequency (about 50 Hz),
/// so every alert output has something to send.
const RULES: &str = r#"
[[rule]]
name = "logtest_frequency"
kind = "above"
sensors = "*/f"
threshold = 1.0
severity = "warning"
"#;

/// 16 random hex digits.
fn random() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{:016x}",
        std::collections::hash_map::RandomState::new().hash_one(nanos)
    )
}

fn closed_port() -> u16 {
    // Bound, then released: nothing listens there (connects are refused).
    procs::free_tcp_port().unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/local/sbin".into()]);
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` not found: this test needs Debian's mosquitto and util-linux's script \
         (scripts/test.sh installs mosquitto; by hand: apt-get install -y mosquitto)"
    );
}

// ---- Mosquitto that refuses ferrule's passwords ------------------------------------

/// A Mosquitto that knows the user `ferrule` only with a password ferrule is
/// never given: every CONNECT of an agent is refused.
struct Broker {
    port: u16,
    child: Option<Child>,
}

impl Broker {
    fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let port = procs::free_tcp_port().unwrap();
        let passwords = dir.join("passwords");
        let made = Command::new(tool("mosquitto_passwd"))
            .args(["-b", "-c"])
            .arg(&passwords)
            .args(["ferrule", &format!("broker-only-{}", random())])
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "mosquitto_passwd: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        // Running as root, Mosquitto would switch to the `mosquitto` user and
        // could not read the temp dir; `user` keeps whoever runs the test.
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let conf = format!(
            "user {user}\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
             persistence false\nlog_dest file {}/mosquitto.log\n",
            passwords.display(),
            dir.display(),
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        let mut child = Command::new(tool("mosquitto"))
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "mosquitto exited with {status}:\n{}",
                    read(&dir.join("mosquitto.log"))
                );
            }
            assert!(Instant::now() < deadline, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            child: Some(child),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

// ---- One aggregator + agent pair --------------------------------------------------

/// What the pairs share: the PKI, the rules, the refusing Redis and Mosquitto.
struct Shared<'a> {
    root: &'a Path,
    pki: &'a DevPki,
    rules: PathBuf,
    redis_port: u16,
    mqtt_port: u16,
}

/// A running pair and what it was given.
struct Pair {
    name: &'static str,
    json: bool,
    /// (what, value) of every secret in its configs and environment.
    secrets: Vec<(String, String)>,
    agg: Proc,
    agent: Proc,
    agg_log: PathBuf,
    agent_log: PathBuf,
    /// MQTT input names of the agent (each must log its refusal).
    mqtt_inputs: Vec<String>,
}

impl Pair {
    /// Writes the configs (secrets through `env:` when `json`, literally
    /// otherwise) and starts the aggregator, then the agent.
    fn start(s: &Shared<'_>, name: &'static str, json: bool) -> Self {
        let dir = s.root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut secrets = Vec::new();
        let mut secret = |what: &str| {
            let v = format!("s3cr3t-{name}-{what}-{}", random());
            secrets.push((what.to_string(), v.clone()));
            v
        };
        let redis_password = secret("redis-password");
        let redis_url_password = secret("redis-url-password");
        let kafka_username = secret("kafka-sasl-username");
        let kafka_password = secret("kafka-sasl-password");
        let pagerduty_key = secret("pagerduty-routing-key");
        let am_password = secret("alertmanager-url-password");
        let mqtt_env = secret("mqtt-password-env");
        let mqtt_literal = secret("mqtt-password-literal");
        let mqtt_file = secret("mqtt-password-file");
        secrets.push((
            "alertmanager basic auth (base64)".into(),
            base64::engine::general_purpose::STANDARD.encode(format!("am-user:{am_password}")),
        ));

        // Where the secret goes in the file, and the environment it needs.
        let mut agg_env: Vec<(String, String)> = vec![
            (
                "FERRULE_LOG_FORMAT".into(),
                (if json { "json" } else { "text" }).into(),
            ),
            ("FERRULE_LOG".into(), "debug".into()),
        ];
        let mut field = |var: &str, value: &str| {
            if json {
                agg_env.push((var.to_string(), value.to_string()));
                format!("env:{var}")
            } else {
                value.to_string()
            }
        };
        let redis_password_cfg = field("LOGTEST_REDIS_PASSWORD", &redis_password);
        let kafka_password_cfg = field("LOGTEST_KAFKA_PASSWORD", &kafka_password);
        let pagerduty_key_cfg = field("LOGTEST_PAGERDUTY_KEY", &pagerduty_key);

        let quic: SocketAddr = ([127, 0, 0, 1], procs::free_udp_port().unwrap()).into();
        let extra = format!(
            "[redis]\n\
             url = \"redis://ferrule:{redis_url_password}@127.0.0.1:{redis}\"\n\
             password = \"{redis_password_cfg}\"\n\
             response_timeout_ms = 1000\n\
             reconnect_max_ms = 1000\n\n\
             [alerts]\n\
             rules = {rules:?}\n\
             page_through_redis = false\n\
             kafka_timeout_ms = 1000\n\n\
             [[alerts.alertmanager]]\n\
             url = \"http://am-user:{am_password}@127.0.0.1:{am}\"\n\
             timeout_ms = 1000\n\n\
             [alerts.pagerduty]\n\
             url = \"http://127.0.0.1:{pd}/v2/enqueue\"\n\
             routing_key = \"{pagerduty_key_cfg}\"\n\
             timeout_ms = 1000\n\n\
             [kafka]\n\
             brokers = \"127.0.0.1:{kafka}\"\n\
             topic = \"logtest\"\n\
             message_timeout_ms = 1000\n\n\
             [kafka.properties]\n\
             \"security.protocol\" = \"SASL_PLAINTEXT\"\n\
             \"sasl.mechanism\" = \"PLAIN\"\n\
             \"sasl.username\" = \"{kafka_username}\"\n\
             \"sasl.password\" = \"{kafka_password_cfg}\"\n",
            redis = s.redis_port,
            rules = s.rules.display().to_string(),
            am = closed_port(),
            pd = closed_port(),
            kafka = closed_port(),
        );
        let toml = procs::aggregator_toml(s.pki, &dir.join("data"), quic, None, &extra)
            .replace("[server]\n", "[server]\ndrain_timeout_secs = 2\n");
        std::fs::write(dir.join("aggregator.toml"), toml).unwrap();

        // The agent: its TLS key in a file, three MQTT inputs whose passwords
        // come from the environment, the file and a file of their own.
        let password_file = dir.join("mqtt-password");
        std::fs::write(&password_file, format!("{mqtt_file}\n")).unwrap();
        let mut mqtt_inputs = Vec::new();
        let mut inputs = String::new();
        for (kind, password) in [
            ("env", "env:LOGTEST_MQTT_PASSWORD".to_string()),
            ("literal", mqtt_literal.clone()),
            ("file", format!("file:{}", password_file.display())),
        ] {
            let input = format!("mqtt-{kind}");
            inputs.push_str(&format!(
                "[[inputs.mqtt]]\nname = \"{input}\"\nhost = \"127.0.0.1\"\nport = {port}\n\
                 client_id = \"logtest-{name}-{kind}\"\nusername = \"ferrule\"\npassword = {password:?}\n\
                 connect_timeout_secs = 2\nbackoff_initial_ms = 200\nbackoff_max_ms = 2000\n\n\
                 [[inputs.mqtt.subscriptions]]\ntopic = \"logtest/+\"\nsensor = \"mqtt/{{1}}\"\n\n",
                port = s.mqtt_port,
            ));
            mqtt_inputs.push(input);
        }
        let spec = AgentSpec {
            site: "plant-1".into(),
            id: format!("logs-{name}"),
            spool: dir.join("spool"),
            endpoints: vec![quic.to_string()],
            rate_hz: 100,
            total_samples: None,
            fsync: "interval",
            metrics: None,
            extra: inputs,
        };
        std::fs::write(
            dir.join("agent.toml"),
            procs::agent_toml(s.pki, &spec).unwrap(),
        )
        .unwrap();

        let agg_log = dir.join("aggregator.log");
        let env: Vec<(&str, &str)> = agg_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let agg = Proc::start_with_env(
            &format!("aggregator ({name})"),
            &procs::bin("ferrule-aggregator").unwrap(),
            &dir.join("aggregator.toml"),
            &agg_log,
            &env,
        )
        .unwrap();
        let agent_log = dir.join("agent.log");
        let agent = Proc::start_with_env(
            &format!("agent ({name})"),
            &procs::bin("ferrule-agent").unwrap(),
            &dir.join("agent.toml"),
            &agent_log,
            &[
                ("FERRULE_LOG_FORMAT", if json { "json" } else { "text" }),
                ("FERRULE_LOG", "debug"),
                ("LOGTEST_MQTT_PASSWORD", &mqtt_env),
            ],
        )
        .unwrap();
        Self {
            name,
            json,
            secrets,
            agg,
            agent,
            agg_log,
            agent_log,
            mqtt_inputs,
        }
    }

    /// What the logs do not show yet: the failures each path must log, and
    /// the agent's session.
    fn missing(&self) -> Vec<String> {
        let agg = read(&self.agg_log);
        let agent = read(&self.agent_log);
        let json = self.json;
        let mut missing = Vec::new();
        let mut need = |what: &str, ok: bool| {
            if !ok {
                missing.push(what.to_string());
            }
        };
        let warned = |text: &str, needle: &str| {
            text.lines()
                .any(|l| is_warning(l, json) && l.to_lowercase().contains(needle))
        };
        need("a warning about redis", warned(&agg, "redis"));
        need(
            "redis refusing the password (authentication failed)",
            agg.to_lowercase().contains("authentication failed"),
        );
        need("a warning about kafka", warned(&agg, "kafka"));
        need("a warning about pagerduty", warned(&agg, "pagerduty"));
        need("a warning about alertmanager", warned(&agg, "alertmanager"));
        need(
            "the agent's uplink session up",
            agent.contains("uplink session up"),
        );
        for input in &self.mqtt_inputs {
            need(
                &format!("a warning from MQTT input {input}"),
                warned(&agent, &format!("\"{input}\"")) || warned(&agent, &format!("={input} ")),
            );
        }
        missing
    }
}

/// The level of a log line in the pair's format.
fn level(line: &str, json: bool) -> Option<String> {
    if json {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(v.get("level")?.as_str()?.to_string())
    } else {
        let mut words = line.split_whitespace();
        words.next()?;
        Some(words.next()?.to_string())
    }
}

fn is_warning(line: &str, json: bool) -> bool {
    matches!(level(line, json).as_deref(), Some("WARN" | "ERROR"))
}

/// A text line as tracing's default format writes it:
/// `2025-01-02T03:04:05.678901Z  INFO target: message fields`.
fn text_line_problem(line: &str) -> Option<&'static str> {
    if line.contains('\u{1b}') {
        return Some("an escape code");
    }
    if serde_json::from_str::<serde_json::Value>(line).is_ok() {
        return Some("JSON, not text");
    }
    let mut words = line.split_whitespace();
    let ts = words.next().unwrap_or("");
    let b = ts.as_bytes();
    if !(ts.len() >= 20 && b[4] == b'-' && b[10] == b'T' && ts.ends_with('Z')) {
        return Some("no timestamp first");
    }
    if !LEVELS.contains(&words.next().unwrap_or("")) {
        return Some("no level second");
    }
    None
}

/// Every non-empty line is a JSON object with string `timestamp`, `level` (one
/// of tracing's) and `message`: what fails that, with the line.
fn json_line_problem(line: &str) -> Option<String> {
    let v: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return Some(format!("not JSON ({e})")),
    };
    let Some(o) = v.as_object() else {
        return Some("not an object".into());
    };
    for key in ["timestamp", "level", "message"] {
        if !o.get(key).is_some_and(serde_json::Value::is_string) {
            return Some(format!("no string {key:?}"));
        }
    }
    if !LEVELS.contains(&o["level"].as_str().unwrap_or("")) {
        return Some("an unknown level".into());
    }
    None
}

/// Asserts every non-empty line of `text` passes `check`, naming the lines that do not.
fn all_lines(name: &str, text: &str, check: impl Fn(&str) -> Option<String>) {
    let bad: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| check(l).map(|why| format!("  {why}: {l}")))
        .collect();
    assert!(
        bad.is_empty(),
        "{name}: {} of {} lines are not in the format asked for:\n{}",
        bad.len(),
        text.lines().count(),
        bad.join("\n")
    );
}

/// The needles nothing may log: every secret, its random part, the marker,
/// and every base64 line of every PEM private key in `pki` (and each key's
/// whole body on one line).
fn forbidden(secrets: &[(String, String)], pki: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![("the secret marker".into(), "s3cr3t".into())];
    for (what, value) in secrets {
        out.push((what.clone(), value.clone()));
        if let Some((_, tail)) = value.rsplit_once('-') {
            if tail.len() >= 16 {
                out.push((format!("{what} (its random part)"), tail.to_string()));
            }
        }
    }
    let mut keys = 0;
    for e in std::fs::read_dir(pki).unwrap().flatten() {
        let text = read(&e.path());
        if !text.contains("PRIVATE KEY-----") {
            continue;
        }
        keys += 1;
        let file = e.file_name().to_string_lossy().into_owned();
        let body: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .collect();
        assert!(!body.is_empty(), "{file}: no PEM body");
        for (i, line) in body.iter().enumerate() {
            out.push((format!("{file} line {}", i + 1), (*line).to_string()));
        }
        out.push((format!("{file} (whole body)"), body.concat()));
    }
    assert!(keys >= 3, "the PKI holds only {keys} private keys");
    out
}

/// Which of `needles` are in which of `texts` (case-insensitive), with up to
/// three lines each.
fn find_leaks(texts: &[(String, String)], needles: &[(String, String)]) -> Vec<String> {
    let mut leaks = Vec::new();
    for (name, text) in texts {
        let lower = text.to_lowercase();
        for (what, needle) in needles {
            let needle = needle.to_lowercase();
            if lower.contains(&needle) {
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| l.to_lowercase().contains(&needle))
                    .take(3)
                    .collect();
                leaks.push(format!("{what} in {name}:\n    {}", lines.join("\n    ")));
            }
        }
    }
    leaks
}

/// Polls `path` until it contains `needle` or `within` passes.
fn wait_log(path: &Path, needle: &str, within: Duration) -> bool {
    procs::wait_for(within, || read(path).contains(needle).then_some(())).is_some()
}

// ---- Terminals --------------------------------------------------------------------

/// An aggregator whose stdin, stdout and stderr are a pseudo-terminal
/// (util-linux `script`), what the terminal shows written to `out`.
struct OnTerminal {
    script: Child,
    pid_file: PathBuf,
    out: PathBuf,
}

impl OnTerminal {
    fn start(dir: &Path, config: &Path, no_color: bool) -> Self {
        let pid_file = dir.join("aggregator.pid");
        let out = dir.join("terminal.out");
        let cmd = format!(
            "echo $$ > '{}'; exec '{}' run --config '{}'",
            pid_file.display(),
            procs::bin("ferrule-aggregator").unwrap().display(),
            config.display()
        );
        let mut c = Command::new(tool("script"));
        c.args(["-q", "-e", "-c", &cmd, "/dev/null"])
            .env_remove("FERRULE_LOG_FORMAT")
            .env_remove("NO_COLOR")
            .env("FERRULE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null());
        if no_color {
            c.env("NO_COLOR", "1");
        }
        Self {
            script: c.spawn().unwrap(),
            pid_file,
            out,
        }
    }

    /// SIGTERM to the aggregator once it listens; what the terminal showed,
    /// `\r` removed, and whether it exited 0.
    fn stop(mut self) -> (String, bool) {
        let listening = wait_log(&self.out, "aggregator listening", Duration::from_secs(30));
        let pid = read(&self.pid_file).trim().to_string();
        if !pid.is_empty() {
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let ok = loop {
            if let Some(s) = self.script.try_wait().unwrap() {
                break s.success();
            }
            if Instant::now() > deadline {
                let _ = self.script.kill();
                let _ = self.script.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = read(&self.out).replace('\r', "");
        assert!(
            listening,
            "never listening on a terminal:\n{}",
            tail(&text, 30)
        );
        (text, ok)
    }
}

// ---- The test ---------------------------------------------------------------------

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn logs_are_text_or_json_lines_and_never_hold_a_secret() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pki = DevPki::ensure(&root.join("pki")).unwrap();
    let rules = root.join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();

    // A real Redis that takes no password ferrule has: AUTH is refused.
    let redis = Redis::start(&root.join("redis"));
    let redis_port: u16 = redis.url.rsplit(':').next().unwrap().parse().unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(format!("redis-only-{}", random()))
        .query(&mut redis.conn())
        .unwrap();
    let broker = Broker::start(&root.join("mosquitto"));

    // Text, not JSON: an unknown format is said and the daemon starts.
    let unknown_dir = root.join("unknown-format");
    std::fs::create_dir_all(&unknown_dir).unwrap();
    let plain = |dir: &Path| {
        let quic: SocketAddr = ([127, 0, 0, 1], procs::free_udp_port().unwrap()).into();
        let config = dir.join("aggregator.toml");
        std::fs::write(
            &config,
            procs::aggregator_toml(&pki, &dir.join("data"), quic, None, ""),
        )
        .unwrap();
        config
    };
    let unknown_log = unknown_dir.join("aggregator.log");
    let mut unknown = Proc::start_with_env(
        "aggregator (FERRULE_LOG_FORMAT=yaml)",
        &procs::bin("ferrule-aggregator").unwrap(),
        &plain(&unknown_dir),
        &unknown_log,
        &[("FERRULE_LOG_FORMAT", "yaml")],
    )
    .unwrap();
    // On a terminal: colours, unless NO_COLOR.
    let terminals: Vec<(bool, OnTerminal)> = [false, true]
        .into_iter()
        .map(|no_color| {
            let dir = root.join(if no_color {
                "terminal-no-color"
            } else {
                "terminal"
            });
            std::fs::create_dir_all(&dir).unwrap();
            (no_color, OnTerminal::start(&dir, &plain(&dir), no_color))
        })
        .collect();

    let shared = Shared {
        root,
        pki: &pki,
        rules,
        redis_port,
        mqtt_port: broker.port,
    };
    let mut pairs = [
        Pair::start(&shared, "json", true),
        Pair::start(&shared, "text", false),
    ];

    // The unknown format and the terminals, while the pairs run.
    assert!(
        wait_log(
            &unknown_log,
            "aggregator listening",
            Duration::from_secs(30)
        ),
        "with FERRULE_LOG_FORMAT=yaml the aggregator did not start:\n{}",
        tail(&read(&unknown_log), 30)
    );
    assert!(
        unknown.is_running(),
        "with FERRULE_LOG_FORMAT=yaml it exited"
    );
    assert!(
        unknown.term(Duration::from_secs(20)),
        "with FERRULE_LOG_FORMAT=yaml it did not stop cleanly"
    );
    let unknown_text = read(&unknown_log);
    let first = unknown_text.lines().next().unwrap_or("");
    assert!(
        first.contains("FERRULE_LOG_FORMAT")
            && first.contains("yaml")
            && first.contains("text")
            && first.contains("json"),
        "the first line says the format is not understood and text is used: {first:?}"
    );
    all_lines(
        "FERRULE_LOG_FORMAT=yaml",
        &unknown_text.lines().skip(1).collect::<Vec<_>>().join("\n"),
        |l| text_line_problem(l).map(str::to_string),
    );
    let mut logs: Vec<(String, String)> = vec![("FERRULE_LOG_FORMAT=yaml".into(), unknown_text)];
    for (no_color, t) in terminals {
        let name = if no_color {
            "terminal, NO_COLOR=1"
        } else {
            "terminal"
        };
        let (text, ok) = t.stop();
        assert!(ok, "{name}: did not stop cleanly:\n{}", tail(&text, 30));
        if no_color {
            all_lines(name, &text, |l| text_line_problem(l).map(str::to_string));
        } else {
            let coloured = text.lines().filter(|l| l.contains("\u{1b}[")).count();
            assert!(
                coloured * 2 >= text.lines().count(),
                "{name}: {coloured} of {} lines coloured:\n{}",
                text.lines().count(),
                tail(&text, 30)
            );
            all_lines(name, &procs::strip_ansi(&text), |l| {
                text_line_problem(l).map(str::to_string)
            });
        }
        logs.push((name.into(), text));
    }

    // The pairs: at least ten seconds, and until every failure was logged.
    let deadline = Instant::now() + Duration::from_secs(40);
    let min_end = Instant::now() + Duration::from_secs(10);
    loop {
        let missing: Vec<String> = pairs
            .iter()
            .flat_map(|p| {
                p.missing()
                    .into_iter()
                    .map(move |m| format!("{}: {m}", p.name))
            })
            .collect();
        if missing.is_empty() && Instant::now() >= min_end {
            break;
        }
        if Instant::now() >= deadline {
            for p in &pairs {
                eprintln!(
                    "---- {} aggregator:\n{}\n---- {} agent:\n{}",
                    p.name,
                    tail(&read(&p.agg_log), 40),
                    p.name,
                    tail(&read(&p.agent_log), 40)
                );
            }
            panic!(
                "after 40 s the logs still lack:\n  {}",
                missing.join("\n  ")
            );
        }
        for p in &mut pairs {
            assert!(
                p.agg.is_running(),
                "{} exited:\n{}",
                p.agg.name,
                tail(&read(&p.agg_log), 40)
            );
            assert!(
                p.agent.is_running(),
                "{} exited:\n{}",
                p.agent.name,
                tail(&read(&p.agent_log), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let ran = started.elapsed();

    // SIGTERM: agents first, then aggregators, all pairs at once.
    std::thread::scope(|s| {
        for p in &mut pairs {
            s.spawn(move || {
                assert!(
                    p.agent.term(Duration::from_secs(20)),
                    "{} did not stop cleanly",
                    p.agent.name
                );
                // With its brokers unreachable the aggregator still stops
                // promptly: its Kafka sink's topic checks (5 s each) run on
                // their own and never hold its loop.
                assert!(
                    p.agg.term(Duration::from_secs(15)),
                    "{} did not stop cleanly",
                    p.agg.name
                );
            });
        }
    });

    let mut secrets = Vec::new();
    for p in &pairs {
        let agg = read(&p.agg_log);
        let agent = read(&p.agent_log);
        for (what, text) in [("aggregator", &agg), ("agent", &agent)] {
            let name = format!("{what} ({})", p.name);
            assert!(
                text.lines().count() >= 5,
                "{name} logged almost nothing:\n{text}"
            );
            // The variable is the binaries' own, not a misspelt config override.
            assert!(
                !text.contains("looks like an override"),
                "{name}: warns about an environment variable:\n{}",
                text.lines()
                    .filter(|l| l.contains("looks like an override"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            if p.json {
                all_lines(&name, text, json_line_problem);
            } else {
                all_lines(&name, text, |l| text_line_problem(l).map(str::to_string));
            }
        }
        eprintln!(
            "{}: aggregator {} lines ({} warnings or errors), agent {} lines ({} warnings or errors)",
            p.name,
            agg.lines().count(),
            agg.lines().filter(|l| is_warning(l, p.json)).count(),
            agent.lines().count(),
            agent.lines().filter(|l| is_warning(l, p.json)).count(),
        );
        logs.push((format!("aggregator ({})", p.name), agg));
        logs.push((format!("agent ({})", p.name), agent));
        secrets.extend(p.secrets.iter().cloned());
    }
    let needles = forbidden(&secrets, &pki.dir);
    // The search finds what is there: each literal secret in the text pair's
    // configuration, each key line in the key files.
    let text_dir = root.join("text");
    let configs = [
        (
            "aggregator.toml (text)",
            read(&text_dir.join("aggregator.toml")),
        ),
        ("agent.toml (text)", read(&text_dir.join("agent.toml"))),
    ]
    .map(|(n, t)| (n.to_string(), t));
    let found = find_leaks(&configs, &needles).join("\n");
    for what in [
        "redis-password",
        "redis-url-password",
        "kafka-sasl-username",
        "kafka-sasl-password",
        "pagerduty-routing-key",
        "alertmanager-url-password",
        "mqtt-password-literal",
    ] {
        assert!(
            found.contains(&format!("{what} in ")),
            "the search does not find the text pair's {what} in its config"
        );
    }
    let key_files: Vec<(String, String)> = std::fs::read_dir(&pki.dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                read(&e.path()),
            )
        })
        .collect();
    let key_lines: Vec<(String, String)> = needles
        .iter()
        .filter(|(what, _)| what.contains(" line "))
        .cloned()
        .collect();
    assert_eq!(
        find_leaks(&key_files, &key_lines).len(),
        key_lines.len(),
        "the search does not find every key line in the key files"
    );
    let leaks = find_leaks(&logs, &needles);
    assert!(
        leaks.is_empty(),
        "secrets in the logs:\n{}",
        leaks.join("\n")
    );
    drop(broker);
    drop(redis);
    eprintln!(
        "ran {ran:?}; {} logs checked for {} secrets and the private keys; total {:?}",
        logs.len(),
        secrets.len(),
        started.elapsed()
    );
}
