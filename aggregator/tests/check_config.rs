//! The shipped example configuration passes `check-config`; broken ones fail
//! naming the file, line and key (or the environment variable) at fault; TLS
//! material that would keep agents out fails it naming the file and the fault.
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

/// The fixtures (see transport/tests/fixtures/tls/README.md), copied into a
/// temporary directory with the modes a deployment would give them.
fn tls_dir() -> tempfile::TempDir {
    let from = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../transport/tests/fixtures/tls");
    let dir = tempfile::tempdir().unwrap();
    for (src, dst) in [
        ("pki/ca-bundle.crt", "ca-bundle.crt"),
        ("pki/crl.pem", "crl.pem"),
        ("server-agg.example.net.crt", "server.crt"),
        ("server-agg.example.net.key", "server.key"),
        ("agent-substation-7-rtu-3.crt", "agent.crt"),
        ("agent-substation-7-rtu-3.key", "agent.key"),
        ("agent-expired.crt", "expired.crt"),
        ("agent-expired.key", "expired.key"),
        ("foreign/agent-substation-7-rtu-3.crt", "foreign.crt"),
        ("foreign/agent-substation-7-rtu-3.key", "foreign.key"),
    ] {
        let to = dir.path().join(dst);
        std::fs::copy(from.join(src), &to).unwrap();
        set_mode(&to, if dst.ends_with(".key") { 0o600 } else { 0o644 });
    }
    dir
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Environment overrides pointing the example's `[tls]` at files in `dir`.
fn tls_env(
    dir: &std::path::Path,
    cert: &str,
    key: &str,
    ca: &str,
    crl: &str,
) -> Vec<(String, String)> {
    let p = |f: &str| dir.join(f).display().to_string();
    vec![
        ("FERRULE_TLS__CERT".into(), p(cert)),
        ("FERRULE_TLS__KEY".into(), p(key)),
        ("FERRULE_TLS__CLIENT_CA".into(), p(ca)),
        ("FERRULE_TLS__CRL".into(), p(crl)),
    ]
}

fn check_env(env: &[(String, String)], more: &[(&str, &str)]) -> (bool, String) {
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(more);
    check(&example(), &all)
}

#[test]
fn the_example_with_good_tls_material_is_valid() {
    let dir = tls_dir();
    let env = tls_env(
        dir.path(),
        "server.crt",
        "server.key",
        "ca-bundle.crt",
        "crl.pem",
    );
    let (ok, out) = check_env(&env, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("agg.example.net"),
        "the names are reported: {out}"
    );
}

#[test]
fn the_example_names_tls_files_that_do_not_exist_here() {
    let (ok, out) = check(&example(), &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("/etc/ferrule/pki/server-agg.example.net.key"),
        "{out}"
    );
}

#[test]
fn bad_tls_material_fails_naming_the_file_and_the_fault() {
    let dir = tls_dir();
    std::fs::write(
        dir.path().join("garbage.pem"),
        "-----BEGIN X509 CRL-----\n!!\n-----END X509 CRL-----\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("empty.pem"), "nothing here\n").unwrap();
    for (case, cert, key, crl, file, fault) in [
        (
            "missing key",
            "server.crt",
            "nope.key",
            "crl.pem",
            "nope.key",
            "No such file",
        ),
        (
            "key of another certificate",
            "server.crt",
            "agent.key",
            "crl.pem",
            "agent.key",
            "does not match the certificate",
        ),
        (
            "expired certificate",
            "expired.crt",
            "expired.key",
            "crl.pem",
            "expired.crt",
            "expired on",
        ),
        (
            "certificate from another CA",
            "foreign.crt",
            "foreign.key",
            "crl.pem",
            "foreign.crt",
            "no DNS name",
        ),
        (
            "agent certificate as the server's",
            "agent.crt",
            "agent.key",
            "crl.pem",
            "agent.crt",
            "no DNS name",
        ),
        (
            "garbage CRL",
            "server.crt",
            "server.key",
            "garbage.pem",
            "garbage.pem",
            "CRL",
        ),
        (
            "no CRL in the file",
            "server.crt",
            "server.key",
            "empty.pem",
            "empty.pem",
            "no X509 CRL found",
        ),
        (
            "missing CRL",
            "server.crt",
            "server.key",
            "nope.pem",
            "nope.pem",
            "No such file",
        ),
    ] {
        let env = tls_env(dir.path(), cert, key, "ca-bundle.crt", crl);
        let (ok, out) = check_env(&env, &[]);
        assert!(!ok, "{case}: accepted: {out}");
        let line = out
            .lines()
            .find(|l| l.contains(file) && l.contains(fault))
            .unwrap_or_else(|| panic!("{case}: no line names {file} and says {fault:?}: {out}"));
        eprintln!("{case}: {line}");
    }
}

#[test]
fn a_key_readable_by_others_is_a_warning() {
    let dir = tls_dir();
    set_mode(&dir.path().join("server.key"), 0o640);
    let env = tls_env(
        dir.path(),
        "server.crt",
        "server.key",
        "ca-bundle.crt",
        "crl.pem",
    );
    let (ok, out) = check_env(&env, &[]);
    assert!(ok, "a warning failed the check: {out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("no warning: {out}"));
    assert!(
        line.contains("server.key") && line.contains("640"),
        "{line}"
    );
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
    let dir = tls_dir();
    let env = tls_env(
        dir.path(),
        "server.crt",
        "server.key",
        "ca-bundle.crt",
        "crl.pem",
    );
    let (ok, out) = check_env(&env, &[("FERRULE_SERVER__LISTEN", "0.0.0.0:5000")]);
    assert!(ok, "{out}");
}

/// The example with its commented `[alerts]` block switched on: `alerts.rules`
/// is read and checked with the rule engine's own checks, so a bad rules file
/// fails `check-config` naming the file, the rule and its line.
#[test]
fn the_examples_alerts_block_passes_and_a_bad_rules_file_fails() {
    let text = std::fs::read_to_string(example()).unwrap();
    let at = text
        .find("# [alerts]")
        .expect("the example documents [alerts]");
    let mut on = text[..at].to_string();
    // Up to the next live section: the [alerts] block and its subtables only.
    let block_end = text[at..].find("\n[").map_or(text.len(), |i| at + i + 1);
    for line in text[at..block_end].lines() {
        let line = if let Some(comment) = line.strip_prefix("# # ") {
            format!("# {comment}")
        } else if let Some(key) = line.strip_prefix("# ") {
            key.to_string()
        } else {
            line.trim_start_matches('#').to_string()
        };
        on.push_str(&line);
        on.push('\n');
    }
    on.push_str(&text[block_end..]);
    let dir = tls_dir();
    let cfg = dir.path().join("aggregator.toml");
    std::fs::write(&cfg, on).unwrap();
    let env = tls_env(
        dir.path(),
        "server.crt",
        "server.key",
        "ca-bundle.crt",
        "crl.pem",
    );
    let run = |rules: &std::path::Path| {
        let mut all: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let rules = rules.display().to_string();
        all.push(("FERRULE_ALERTS__RULES", &rules));
        check(&cfg, &all)
    };
    let good = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rules/examples/three-phase.toml");
    let (ok, out) = run(&good);
    assert!(ok, "{out}");
    assert!(out.contains("7 alert rules"), "{out}");

    let bad = dir.path().join("bad-rules.toml");
    std::fs::write(
        &bad,
        "[[rule]]\nname = \"low\"\nkind = \"below\"\nsensors = \"*\"\nthreshold = 1.0\nclear = 0.5\nseverity = \"critical\"\n",
    )
    .unwrap();
    let (ok, out) = run(&bad);
    assert!(!ok, "{out}");
    assert!(
        out.contains("bad-rules.toml") && out.contains("low"),
        "{out}"
    );

    let (ok, out) = run(&dir.path().join("missing.toml"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("missing.toml") && out.contains("alerts.rules"),
        "{out}"
    );
}

/// The example with its commented `[redis]` section switched on.
fn example_with_redis(url: &str) -> (tempfile::TempDir, PathBuf) {
    let text = std::fs::read_to_string(example()).unwrap();
    let (head, tail) = text.split_once("# [redis]\n").unwrap();
    let mut out = format!("{head}[redis]\n");
    for line in tail.lines() {
        out.push_str(line.strip_prefix("# ").unwrap_or(line));
        out.push('\n');
    }
    let out = out.replace("rediss://redis-1:6380", url);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aggregator.toml");
    std::fs::write(&path, out).unwrap();
    (dir, path)
}

#[test]
fn the_examples_redis_section_is_valid_and_a_bad_url_is_named() {
    let dir = tls_dir();
    let env = tls_env(
        dir.path(),
        "server.crt",
        "server.key",
        "ca-bundle.crt",
        "crl.pem",
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (_d, good) = example_with_redis("rediss://redis-1:6380");
    let (ok, out) = check(&good, &env);
    assert!(ok, "{out}");
    let (_d, bad) = example_with_redis("http://redis-1:6379");
    let (ok, out) = check(&bad, &env);
    assert!(!ok && out.contains("redis.url"), "{out}");
}
