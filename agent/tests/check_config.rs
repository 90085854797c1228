//! The shipped example configuration passes `check-config`; broken ones fail
//! naming the file, line and key at fault.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml")
}

fn check(path: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrule-agent"))
        .args(["check-config", "--config"])
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_example_is_valid() {
    let (ok, out) = check(&example(), &[]);
    assert!(ok, "{out}");
}

#[test]
fn wrong_types_and_values_name_their_line() {
    let text = std::fs::read_to_string(example()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (from, to, key) in [
        (
            "max_bytes = 1073741824",
            "max_bytes = \"1GB\"",
            "spool.max_bytes",
        ),
        (
            "full_policy = \"block\"",
            "full_policy = \"sometimes\"",
            "spool.full_policy",
        ),
        ("rate_hz = 100", "rate_hz = 0", "rate_hz"),
    ] {
        let broken = text.replace(from, to);
        let line = broken.lines().position(|l| l.starts_with(to)).unwrap() + 1;
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, &broken).unwrap();
        let (ok, out) = check(&path, &[]);
        assert!(!ok, "{to} accepted");
        assert!(out.contains(&format!("agent.toml:{line}")), "{to}: {out}");
        assert!(out.contains(key), "{to}: {out}");
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let (ok, out) = check(std::path::Path::new("/nonexistent/agent.toml"), &[]);
    assert!(!ok);
    assert!(out.contains("/nonexistent/agent.toml"), "{out}");
}

#[test]
// A plain test thread polling a log file: sleeping is what it should do.
#[allow(clippy::disallowed_methods)]
fn run_warns_about_a_variable_that_looks_like_an_override_and_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example()).unwrap().replace(
        "dir = \"/var/lib/ferrule/agent\"",
        &format!("dir = {:?}", dir.path().join("spool").display().to_string()),
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let log_path = dir.path().join("agent.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrule-agent"))
        .args(["run", "--config"])
        .arg(&path)
        .env("FERRULE_SPOOL_DIR", "/elsewhere")
        .env("FERRULE_BATCH__MAX_DELAY_MS", "40")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // Logged right after loading, before anything else can fail or wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut log = String::new();
    while std::time::Instant::now() < deadline {
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("FERRULE_SPOOL_DIR") && log.contains("FERRULE_BATCH__MAX_DELAY_MS") {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            log = std::fs::read_to_string(&log_path).unwrap_or_default();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        log.contains("looks like an override but is not one") && log.contains("FERRULE_SPOOL_DIR"),
        "{log}"
    );
    assert!(
        log.contains("configuration override from the environment")
            && log.contains("FERRULE_BATCH__MAX_DELAY_MS"),
        "{log}"
    );
}
