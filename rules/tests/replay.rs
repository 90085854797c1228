//! Replay: the fixture's transitions are pinned in a golden file (set
//! `FERRULE_UPDATE_GOLDEN=1` to rewrite it after a deliberate change), bad input
//! fails naming the line, and the README's TOML examples all load.
#![allow(clippy::unwrap_used)]

use ferrule_rules::{replay, ReplayError, RuleSet};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn meter_rules() -> RuleSet {
    RuleSet::from_toml(&std::fs::read_to_string(fixture("meter.toml")).unwrap()).unwrap()
}

#[test]
fn the_meter_fixture_matches_its_golden_output() {
    let input = std::fs::read(fixture("meter.jsonl")).unwrap();
    let mut out = Vec::new();
    let summary = replay(&meter_rules(), &input[..], &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let golden = fixture("meter.expected.jsonl");
    if std::env::var_os("FERRULE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &out).unwrap();
    }
    assert_eq!(out, std::fs::read_to_string(&golden).unwrap());
    assert_eq!(
        (summary.samples, summary.firing, summary.resolved),
        (86, 4, 4)
    );
    // Every line is a JSON object with the promised keys.
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in [
            "ts",
            "rule",
            "sensor",
            "state",
            "value",
            "fingerprint",
            "episode",
            "site",
            "agent",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {line}");
        }
    }
}

fn replay_err(input: &str) -> String {
    match replay(&meter_rules(), input.as_bytes(), Vec::new()) {
        Err(e @ ReplayError::Input { .. }) => e.to_string(),
        other => panic!("{input:?}: {other:?}"),
    }
}

#[test]
fn bad_input_names_the_line() {
    let ok = r#"{"ts": 1, "sensor": "a", "site": "b", "value": 1}"#;
    for (bad, want) in [
        ("not json", "input line 3: expected"),
        (
            r#"{"ts": 1, "sensor": "a", "site": "b"}"#,
            "input line 3: missing field `value`",
        ),
        (
            r#"{"ts": 1, "sensor": "a", "site": "b", "value": 1, "valeu": 2}"#,
            "unknown field `valeu`",
        ),
        (
            r#"{"ts": 1, "sensor": "a", "site": "b", "value": "1"}"#,
            "invalid type",
        ),
        (
            r#"{"ts": 1, "sensor": "a", "site": "b", "value": 1, "quality": "meh"}"#,
            "unknown variant `meh`",
        ),
        (
            r#"{"ts": 1e300, "sensor": "a", "site": "b", "value": 1}"#,
            "input line 3: ts 1e300 is not a usable Unix time",
        ),
        ("[1, 2]", "input line 3"),
    ] {
        let e = replay_err(&format!("{ok}\n\n{bad}\n{ok}\n"));
        assert!(e.contains(want), "{bad}: {e}");
    }
    let long = format!("{ok}\n{}\n", " ".repeat(70_000));
    assert!(replay_err(&long).contains("input line 2: longer than"));
    let e = match replay(
        &meter_rules(),
        &b"{\"ts\": 1, \"sensor\": \"\xff\", \"site\": \"b\", \"value\": 1}"[..],
        Vec::new(),
    ) {
        Err(e) => e.to_string(),
        Ok(s) => panic!("{s:?}"),
    };
    assert!(e.contains("input line 1"), "{e}");
}

#[test]
fn timestamps_round_trip_to_the_microsecond() {
    let rules = RuleSet::from_toml(
        "[[rule]]\nname = \"q\"\nkind = \"quality\"\nsensors = \"*\"\nseverity = \"info\"\n",
    )
    .unwrap();
    let input =
        r#"{"ts": 1700000000.123456, "sensor": "a", "site": "b", "value": 1, "quality": "bad"}"#;
    let mut out = Vec::new();
    replay(&rules, input.as_bytes(), &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["ts"].as_f64(), Some(1700000000.123456));
    assert_eq!(
        v["episode"].as_str().unwrap().split('-').nth(1),
        Some("1700000000123456000")
    );
    assert_eq!(v["quality"], "bad");
    assert_eq!(v["agent"], "");
}

#[test]
fn readme_examples_load() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut blocks = 0;
    for block in readme.split("```toml\n").skip(1) {
        let text = block.split("```").next().unwrap();
        RuleSet::from_toml(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        blocks += 1;
    }
    assert!(blocks >= 2, "{blocks}");
    // The README's JSONL examples are valid input.
    let jsonl: String = readme
        .split("```jsonl\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .next()
        .unwrap()
        .to_owned();
    replay(&meter_rules(), jsonl.as_bytes(), Vec::new()).unwrap();
}
