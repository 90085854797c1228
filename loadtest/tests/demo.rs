//! The README's first command, as a user runs it: `ferrule-demo` in an empty
//! directory prints the live page's address; the page (read by a real
//! headless Chromium) shows the stages in words and the voltage sag's alert;
//! Ctrl-C (SIGINT) stops it cleanly. A screenshot is saved to
//! `target/test-artifacts/demo-page.png`.
//!
//! The demo listens on fixed loopback ports (4433, 9464, 9480): this file has
//! one test, and test binaries run one at a time.

#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)]

mod support;

use ferrule_loadtest::procs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::browser::Browser;

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn the_first_command_serves_the_page_with_live_signals_and_the_sags_alert() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_ferrule-demo"))
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The address it prints.
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let url = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                if let Some(u) = l
                    .split_whitespace()
                    .find(|w| w.starts_with("http://") && w.ends_with(":9480/"))
                {
                    break u.to_string();
                }
                seen.push(l);
            }
            Err(_) => {
                let _ = demo.kill();
                panic!(
                    "the demo never printed the page's address:\n{}",
                    seen.join("\n")
                );
            }
        }
    };
    let page: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    // A sag every 20 s: its undervoltage alert fires and resolves.
    let state = procs::wait_for(Duration::from_secs(60), || {
        let body = procs::http_get(page, "/state").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let alert = v["local"]["alerts_recent"]
            .as_array()?
            .iter()
            .any(|a| a["rule"] == "undervoltage");
        let stage = v["signals"]["signals"].as_array()?.iter().any(|s| {
            s["stage"] == "aggregator" && s["text"].as_str().is_some_and(|t| !t.is_empty())
        });
        (alert && stage).then_some(v)
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let shot = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target/test-artifacts/demo-page.png");
    let rendered = state.as_ref().map(|_| {
        rt.block_on(async {
            let mut b = Browser::launch().await;
            b.open(&url).await;
            let dom = b
                .wait_for(
                    "document.getElementById('stages').innerText + '\\n' + document.getElementById('alerts-recent').innerText + '\\n' + document.getElementById('agents').innerText",
                    Duration::from_secs(20),
                    |v| {
                        v.as_str().is_some_and(|t| {
                            t.contains("aggregator is") && t.contains("undervoltage") && t.contains("substation-1/rtu-1")
                        })
                    },
                )
                .await;
            b.screenshot(&shot).await;
            dom
        })
    });
    // Ctrl-C stops it cleanly.
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(demo.id().to_string())
        .status();
    let stopped = procs::wait_for(Duration::from_secs(30), || demo.try_wait().ok().flatten());
    if stopped.is_none() {
        let _ = demo.kill();
    }
    assert!(
        state.is_some(),
        "the page never showed the aggregator's stage and the sag's alert"
    );
    let dom = rendered.flatten();
    assert!(
        dom.is_some(),
        "the browser never rendered the stages, the alert and the agents"
    );
    println!(
        "demo page: {}\nscreenshot: {}",
        dom.unwrap(),
        shot.display()
    );
    let status = stopped.expect("the demo did not stop within 30 s of SIGINT");
    assert!(status.success(), "the demo exited with {status}");
}
