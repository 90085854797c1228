//! A real Prometheus Alertmanager for end-to-end alert tests and benchmarks, with a
//! webhook receiver that records every notification it sends: what an operator's
//! pager would get, counted at the far end.
//!
//! Alertmanager runs as its own process on a free loopback port, with its cluster
//! listener off and a throwaway storage directory; it is killed on drop. The route
//! groups by (alertname, site, agent, sensor) with no group wait, so each alert
//! episode is one `firing` and one `resolved` notification.
//!
//! Blocking code for tests and the benchmark's own threads, never an executor's.
#![allow(clippy::disallowed_methods)]

use anyhow::Context as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Largest webhook body kept (Alertmanager's are a few KiB).
const MAX_BODY: usize = 4 << 20;

/// One notification Alertmanager sent to the webhook, as received.
#[derive(Debug, Clone)]
pub struct Notification {
    /// When it arrived.
    pub at: Instant,
    /// The JSON body (Alertmanager's webhook format, version 4).
    pub body: serde_json::Value,
}

/// A running Alertmanager and its webhook.
pub struct Alertmanager {
    child: Child,
    /// Where its API listens (`http://{addr}`).
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Notification>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary: `$FERRULE_ALERTMANAGER` or Debian's `prometheus-alertmanager`.
fn binary() -> String {
    std::env::var("FERRULE_ALERTMANAGER").unwrap_or_else(|_| "prometheus-alertmanager".into())
}

impl Alertmanager {
    /// Starts Alertmanager and its webhook, waiting (up to 20 s) until it is ready.
    pub fn start() -> anyhow::Result<Self> {
        let hook = TcpListener::bind("127.0.0.1:0").context("binding the webhook")?;
        let hook_addr = hook.local_addr()?;
        let received: Arc<Mutex<Vec<Notification>>> = Arc::default();
        let sink = received.clone();
        std::thread::spawn(move || {
            for conn in hook.incoming() {
                let Ok(conn) = conn else { continue };
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let _ = serve_hook(conn, &sink);
                });
            }
        });
        let dir = tempfile::tempdir()?;
        let cfg = dir.path().join("alertmanager.yml");
        std::fs::write(
            &cfg,
            format!(
                "route:\n  receiver: hook\n  group_by: [alertname, site, agent, sensor]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 4h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: http://{hook_addr}/\n        send_resolved: true\n"
            ),
        )?;
        let addr: SocketAddr = ([127, 0, 0, 1], crate::procs::free_tcp_port()?).into();
        let bin = binary();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.path={}",
                PathBuf::from(dir.path()).join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "`{bin}` could not start: this needs Debian's prometheus-alertmanager \
                     (scripts/test.sh installs it; or apt-get install -y prometheus-alertmanager)"
                )
            })?;
        let am = Alertmanager {
            child,
            addr,
            received,
            _dir: dir,
        };
        let start = Instant::now();
        while crate::procs::http_get(addr, "/-/ready").is_err() {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(20),
                "alertmanager did not become ready in 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(am)
    }

    /// Its base URL, for `[[alerts.alertmanager]] url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every notification the webhook received so far.
    pub fn notifications(&self) -> Vec<Notification> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Reads HTTP/1.1 requests on one connection, keeps each body, answers 200.
fn serve_hook(conn: std::net::TcpStream, sink: &Mutex<Vec<Notification>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len.min(MAX_BODY)];
        reader.read_exact(&mut body)?;
        if let Ok(v) = serde_json::from_slice(&body) {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Notification {
                    at: Instant::now(),
                    body: v,
                });
        }
        writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
    }
}
