//! Loading a config the way the agent and the aggregator do: one file, env
//! overrides, and errors that point at the line or variable to fix.
#![allow(clippy::unwrap_used)]

use std::io::Write;

use ferrule_config::{
    load, load_str, load_str_validated, load_validated, ConfigError, Invalid, Loaded, Origin,
    Validate,
};
use serde::Deserialize;

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    log_level: Option<String>,
    site: Site,
    #[serde(default)]
    spool: Spool,
    #[serde(default)]
    sensors: Vec<Sensor>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Site {
    name: String,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Spool {
    dir: String,
    max_bytes: u64,
    fsync: bool,
    limits: Limits,
}

impl Default for Spool {
    fn default() -> Self {
        Self {
            dir: "/var/lib/ferrule/spool".to_string(),
            max_bytes: 1 << 30,
            fsync: true,
            limits: Limits::default(),
        }
    }
}

#[derive(Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
struct Limits {
    max_files: u32,
    max_age_secs: u64,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Sensor {
    name: String,
    interval_ms: u64,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Vec<Invalid>> {
        let mut problems = Vec::new();
        if self.spool.max_bytes < 1 << 20 {
            problems.push(Invalid::new(
                "spool.max_bytes",
                "must be at least 1 MiB (1048576)",
            ));
        }
        for (i, sensor) in self.sensors.iter().enumerate() {
            if sensor.interval_ms == 0 {
                problems.push(Invalid::new(
                    format!("sensors[{i}].interval_ms"),
                    "must be positive",
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

const GOOD: &str = r#"# agent config
log_level = "info"

[site]
name = "substation-7"
tags = ["north", "hv"]

[spool]
dir = "/data/spool"
max_bytes = 2097152

[spool.limits]
max_files = 64

[[sensors]]
name = "busbar_temp"
interval_ms = 1000

[[sensors]]
name = "breaker_state"
interval_ms = 250
"#;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_env(text: &str, vars: &[(&str, &str)]) -> Result<Loaded<Config>, ConfigError> {
    load_str(text, "agent.toml", env(vars), "FERRULE")
}

fn err(text: &str, vars: &[(&str, &str)]) -> String {
    load_env(text, vars).unwrap_err().to_string()
}

/// 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn good_file() {
    let loaded = load_env(GOOD, &[]).unwrap();
    let config = loaded.value;
    assert_eq!(config.log_level.as_deref(), Some("info"));
    assert_eq!(config.site.name, "substation-7");
    assert_eq!(config.site.tags, ["north", "hv"]);
    assert_eq!(config.spool.dir, "/data/spool");
    assert_eq!(config.spool.max_bytes, 2_097_152);
    assert!(config.spool.fsync, "default kept");
    assert_eq!(config.spool.limits.max_files, 64);
    assert_eq!(config.sensors.len(), 2);
    assert_eq!(config.sensors[1].interval_ms, 250);
    assert!(loaded.overrides.is_empty());
}

#[test]
fn defaults_fill_missing_sections() {
    let config = load_env("[site]\nname = \"s\"\n", &[]).unwrap().value;
    assert_eq!(config.spool, Spool::default());
    assert!(config.sensors.is_empty());
}

#[test]
fn unknown_key_names_line_and_key() {
    let text = GOOD.replace("max_bytes = 2097152", "max_byte = 2097152");
    let line = line_of(&text, "max_byte =");
    assert_eq!(
        err(&text, &[]),
        format!(
            "agent.toml:{line}: spool.max_byte: unknown field `max_byte`, \
             expected one of `dir`, `max_bytes`, `fsync`, `limits`"
        )
    );
}

#[test]
fn unknown_section_names_its_header() {
    let text = format!("{GOOD}\n[uplnk]\nport = 1\n");
    let line = line_of(&text, "[uplnk]");
    let msg = err(&text, &[]);
    assert!(
        msg.starts_with(&format!("agent.toml:{line}: uplnk: unknown field `uplnk`")),
        "{msg}"
    );
}

#[test]
fn wrong_type_names_line_and_dotted_key() {
    let text = GOOD.replace("max_bytes = 2097152", "max_bytes = \"10MB\"");
    let line = line_of(&text, "max_bytes =");
    assert_eq!(
        err(&text, &[]),
        format!("agent.toml:{line}: spool.max_bytes: invalid type: string \"10MB\", expected u64")
    );
}

#[test]
fn wrong_type_in_nested_table_and_array_of_tables() {
    let text = GOOD.replace("max_files = 64", "max_files = -1");
    let line = line_of(&text, "max_files");
    let msg = err(&text, &[]);
    assert!(
        msg.starts_with(&format!("agent.toml:{line}: spool.limits.max_files: ")),
        "{msg}"
    );

    let text = GOOD.replace("interval_ms = 250", "interval_ms = \"fast\"");
    let line = line_of(&text, "\"fast\"");
    assert_eq!(
        err(&text, &[]),
        format!(
            "agent.toml:{line}: sensors[1].interval_ms: invalid type: string \"fast\", expected u64"
        )
    );
}

#[test]
fn missing_required_key_names_its_table() {
    let text = GOOD.replace("name = \"substation-7\"", "");
    let msg = err(&text, &[]);
    let line = line_of(&text, "[site]");
    assert!(
        msg.starts_with(&format!("agent.toml:{line}: site: missing field `name`")),
        "{msg}"
    );
}

#[test]
fn missing_top_level_section_has_no_line() {
    assert_eq!(
        err("[spool]\nmax_bytes = 5\n", &[]),
        "agent.toml: missing field `site`"
    );
}

#[test]
fn syntax_error_names_line_and_column() {
    let text = GOOD.replace("dir = \"/data/spool\"", "dir = \"/data/spool");
    let line = line_of(&text, "dir =");
    let e = load_env(&text, &[]).unwrap_err();
    let ConfigError::Syntax {
        file,
        line: l,
        column,
        ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!((file.as_str(), *l), ("agent.toml", line), "{e}");
    assert!(*column >= 7, "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("agent.toml:{line}:{column}: ")),
        "{e}"
    );

    let e = err("[site]\nname = \"x\"\nname = \"y\"\n", &[]);
    assert!(e.starts_with("agent.toml:3:"), "duplicate key: {e}");
    assert!(e.contains("`name`"), "names the key: {e}");
}

#[test]
fn a_table_written_twice_is_named() {
    let e = err(
        "[site]\nname = \"x\"\n\n[spool]\ndir = \"/a\"\n\n[spool]\nmax_bytes = 5\n",
        &[],
    );
    assert!(
        e.starts_with("agent.toml:7:"),
        "points at the second [spool]: {e}"
    );
    assert!(e.contains("`spool`"), "names the table: {e}");
}

#[test]
fn env_overrides_nested_keys() {
    let loaded = load_env(
        GOOD,
        &[
            ("FERRULE_SPOOL__MAX_BYTES", "5000000"),
            ("FERRULE_SPOOL__FSYNC", "false"),
            ("FERRULE_SPOOL__DIR", "/mnt/ssd/spool"),
            ("FERRULE_SITE__TAGS", r#"["a", "b"]"#),
            ("FERRULE_SPOOL__LIMITS__MAX_AGE_SECS", "3600"),
            ("FERRULE__LOG_LEVEL", "debug"),
            ("PATH", "/usr/bin"),
            ("FERRULE_CONFIG", "/etc/ferrule/agent.toml"),
            ("FERRULE_LOG", "debug"),
            ("FERRULEDEV_CACHE", "/tmp/cache"),
            ("FERRULE_SPOOL_DIR", "/typo"),
        ],
    )
    .unwrap();
    let c = &loaded.value;
    assert_eq!(c.spool.max_bytes, 5_000_000);
    assert!(!c.spool.fsync);
    assert_eq!(c.spool.dir, "/mnt/ssd/spool");
    assert_eq!(c.site.tags, ["a", "b"]);
    assert_eq!(c.spool.limits.max_age_secs, 3600);
    assert_eq!(c.spool.limits.max_files, 64, "sibling from the file kept");
    assert_eq!(c.log_level.as_deref(), Some("debug"));
    assert_eq!(
        loaded.overrides,
        [
            "FERRULE__LOG_LEVEL",
            "FERRULE_SITE__TAGS",
            "FERRULE_SPOOL__DIR",
            "FERRULE_SPOOL__FSYNC",
            "FERRULE_SPOOL__MAX_BYTES",
            "FERRULE_SPOOL__LIMITS__MAX_AGE_SECS",
        ]
    );
    // The binaries' own names and the scripts' FERRULEDEV_* draw no warning; a typo does.
    assert_eq!(loaded.ignored, ["FERRULE_SPOOL_DIR"]);
}

#[test]
fn env_creates_missing_tables_and_replaces_whole_ones() {
    let c = load_env(
        "[site]\nname = \"s\"\n",
        &[("FERRULE_SPOOL__LIMITS__MAX_FILES", "3")],
    )
    .unwrap()
    .value;
    assert_eq!(c.spool.limits.max_files, 3);
    assert_eq!(c.spool.dir, Spool::default().dir);

    let c = load_env(
        GOOD,
        &[
            ("FERRULE__SITE", r#"{ name = "from-env" }"#),
            ("FERRULE_SITE__TAGS", r#"["x"]"#),
        ],
    )
    .unwrap()
    .value;
    assert_eq!(
        c.site,
        Site {
            name: "from-env".into(),
            tags: vec!["x".into()]
        }
    );
}

#[test]
fn env_value_that_looks_like_toml_falls_back_to_string() {
    let c = load_env(
        GOOD,
        &[
            ("FERRULE_SITE__NAME", "123"),
            ("FERRULE__LOG_LEVEL", "2024-01-01"),
        ],
    )
    .unwrap()
    .value;
    assert_eq!(c.site.name, "123");
    assert_eq!(c.log_level.as_deref(), Some("2024-01-01"));
    let c = load_env(GOOD, &[("FERRULE_SITE__NAME", "\"quoted\"")])
        .unwrap()
        .value;
    assert_eq!(c.site.name, "quoted");
}

#[test]
fn env_unknown_key_names_the_variable() {
    assert_eq!(
        err(GOOD, &[("FERRULE_SPOOL__MAX_BYTE", "5")]),
        "FERRULE_SPOOL__MAX_BYTE: unknown field `max_byte`, \
         expected one of `dir`, `max_bytes`, `fsync`, `limits`"
    );
    // A section the file does not have: the variable created it.
    let msg = err(GOOD, &[("FERRULE_UPLINK__PORT", "4433")]);
    assert!(
        msg.starts_with("FERRULE_UPLINK__PORT: uplink: unknown field `uplink`"),
        "{msg}"
    );
    let msg = err(GOOD, &[("FERRULE__SPOOL", "{ dirr = \"/x\" }")]);
    assert!(
        msg.starts_with("FERRULE__SPOOL: spool.dirr: unknown field `dirr`"),
        "{msg}"
    );
}

#[test]
fn env_wrong_type_names_the_variable_not_the_file() {
    assert_eq!(
        err(GOOD, &[("FERRULE_SPOOL__MAX_BYTES", "10MB")]),
        "FERRULE_SPOOL__MAX_BYTES: invalid type: string \"10MB\", expected u64"
    );
    // Read as a boolean, and "true" as a string does not fit either: the
    // error is about the boolean.
    assert_eq!(
        err(GOOD, &[("FERRULE_SPOOL__MAX_BYTES", "true")]),
        "FERRULE_SPOOL__MAX_BYTES: invalid type: boolean `true`, expected u64"
    );
    let msg = err(GOOD, &[("FERRULE_SITE__TAGS", "[1, 2]")]);
    assert!(
        msg.starts_with("FERRULE_SITE__TAGS: site.tags[0]: invalid type: integer `1`"),
        "{msg}"
    );
    // The file's own value at a different key still gets its line.
    let text = GOOD.replace("interval_ms = 250", "interval_ms = \"x\"");
    let msg = err(&text, &[("FERRULE_SPOOL__MAX_BYTES", "5")]);
    assert!(msg.starts_with("agent.toml:"), "{msg}");
}

#[test]
fn env_names_that_cannot_apply_are_errors() {
    let msg = err(GOOD, &[("FERRULE_SPOOL__", "1")]);
    assert!(
        msg.starts_with("FERRULE_SPOOL__: not a valid override name"),
        "{msg}"
    );
    let msg = err(GOOD, &[("FERRULE_SITE__NAME__FIRST", "x")]);
    assert_eq!(
        msg,
        "FERRULE_SITE__NAME__FIRST: cannot set a key inside `site.name`: \
         it is a string, not a table"
    );
    let msg = err(GOOD, &[("FERRULE_SENSORS__NAME", "x")]);
    assert!(msg.contains("arrays can only be replaced whole"), "{msg}");
}

#[test]
fn validation_error_gets_the_line_of_its_key() {
    let text = GOOD
        .replace("max_bytes = 2097152", "max_bytes = 1024")
        .replace("interval_ms = 250", "interval_ms = 0");
    let e = load_str_validated::<Config>(&text, "agent.toml", env(&[]), "FERRULE").unwrap_err();
    let ConfigError::Validation(problems) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(problems.len(), 2);
    assert_eq!(
        problems[0].origin,
        Origin::File {
            file: "agent.toml".into(),
            line: Some(line_of(&text, "max_bytes ="))
        }
    );
    let zero = line_of(&text, "interval_ms = 0");
    assert_eq!(
        e.to_string(),
        format!(
            "agent.toml:{}: spool.max_bytes: must be at least 1 MiB (1048576)\n\
             agent.toml:{zero}: sensors[1].interval_ms: must be positive",
            line_of(&text, "max_bytes =")
        )
    );
}

#[test]
fn validation_error_on_an_overridden_key_names_the_variable() {
    let e = load_str_validated::<Config>(
        GOOD,
        "agent.toml",
        env(&[("FERRULE_SPOOL__MAX_BYTES", "10")]),
        "FERRULE",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "FERRULE_SPOOL__MAX_BYTES: must be at least 1 MiB (1048576)"
    );
    // A key not in the file (default value) has no line.
    let e = load_str_validated::<Config>(
        "[site]\nname = \"s\"\n[[sensors]]\nname = \"t\"\ninterval_ms = 1\n",
        "agent.toml",
        env(&[]),
        "FERRULE",
    );
    assert!(e.is_ok(), "{e:?}");
}

#[test]
fn load_reads_the_file_and_the_process_env() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(GOOD.as_bytes()).unwrap();
    // A prefix no other test uses, so this test's variables cannot leak
    // into the others (they use explicit environments anyway).
    std::env::set_var("FERRULETESTLOAD_SPOOL__MAX_BYTES", "4194304");
    let loaded: Loaded<Config> = load_validated(file.path(), "FERRULETESTLOAD").unwrap();
    assert_eq!(loaded.value.spool.max_bytes, 4_194_304);
    assert_eq!(loaded.overrides, ["FERRULETESTLOAD_SPOOL__MAX_BYTES"]);
    std::env::remove_var("FERRULETESTLOAD_SPOOL__MAX_BYTES");
}

#[test]
fn missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deploy").join("agent.toml");
    let e = load::<Config>(&path, "FERRULE").unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{}: ", path.display())), "{msg}");
}

#[test]
fn file_errors_use_the_path_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "[site]\nname = 5\n").unwrap();
    let msg = load::<Config>(&path, "FERRULE").unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "{}:2: site.name: invalid type: integer `5`, expected a string",
            path.display()
        )
    );
}
