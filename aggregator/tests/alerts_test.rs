//! `alerts test` replays the rules crate's meter fixture and prints its golden
//! transitions; a bad rule or a bad sample fails naming the file and line.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rules/tests/fixtures")
}

fn alerts_test(rules: &std::path::Path, input: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrule-aggregator"))
        .args(["alerts", "test", "--rules"])
        .arg(rules)
        .arg("--input")
        .arg(input)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn replays_the_fixture() {
    let (ok, stdout, stderr) = alerts_test(
        &fixtures().join("meter.toml"),
        &fixtures().join("meter.jsonl"),
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        std::fs::read_to_string(fixtures().join("meter.expected.jsonl")).unwrap()
    );
    let summary: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
    assert_eq!(summary["firing"], 4);
}

#[test]
fn bad_rules_and_bad_samples_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"uv\"\nkind = \"below\"\nsensors = \"*\"\nthreshold = 207.0\nclear = 200.0\nseverity = \"critical\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = alerts_test(&rules, &fixtures().join("meter.jsonl"));
    assert!(!ok);
    assert!(
        stderr.contains("rules.toml")
            && stderr.contains("(line 1): clear 200 is below threshold 207"),
        "{stderr}"
    );

    let input = dir.path().join("samples.jsonl");
    std::fs::write(
        &input,
        "{\"ts\": 1, \"sensor\": \"a\", \"site\": \"b\", \"value\": 1}\n{\"ts\": 2}\n",
    )
    .unwrap();
    let (ok, _, stderr) = alerts_test(&fixtures().join("meter.toml"), &input);
    assert!(!ok);
    assert!(
        stderr.contains("samples.jsonl") && stderr.contains("input line 2: missing field"),
        "{stderr}"
    );
}
