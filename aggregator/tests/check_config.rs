//! The shipped example configuration passes `check-config`; broken ones fail
//! naming the file, line and key (or the environment variable) at fault.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/aggregator.toml")
}

fn check(path: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrule-aggregator"))
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
fn a_misspelled_key_names_file_line_and_key() {
    let text = std::fs::read_to_string(example()).unwrap();
    let broken = text.replace("frame_timeout_secs = 10", "frame_timeout_sec = 10");
    let line = broken
        .lines()
        .position(|l| l.starts_with("frame_timeout_sec ="))
        .unwrap()
        + 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agg.toml");
    std::fs::write(&path, broken).unwrap();
    let (ok, out) = check(&path, &[]);
    assert!(!ok);
    assert!(out.contains(&format!("agg.toml:{line}:")), "{out}");
    assert!(out.contains("frame_timeout_sec"), "{out}");
}

#[test]
fn a_bad_override_names_the_variable() {
    let (ok, out) = check(&example(), &[("FERRULE_SERVER__MAX_FRAME_BYTES", "100")]);
    assert!(!ok);
    assert!(out.contains("FERRULE_SERVER__MAX_FRAME_BYTES"), "{out}");
    let (ok, out) = check(&example(), &[("FERRULE_SERVER__LISTEN", "not an address")]);
    assert!(!ok);
    assert!(out.contains("FERRULE_SERVER__LISTEN"), "{out}");
    let (ok, out) = check(&example(), &[("FERRULE_SERVER__LISTEN", "0.0.0.0:5000")]);
    assert!(ok, "{out}");
}
