//! The shipped example configuration passes `check-config`; broken ones fail
//! naming the file, line and key at fault; TLS material that would keep the
//! agent from opening a session fails it naming the file and the fault.
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
        // The binaries' own name and the scripts' variables draw no warning.
        .env("FERRULE_LOG", "info")
        .env("FERRULEDEV_CACHE", "/tmp/cache")
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
    assert!(
        !log.contains("FERRULEDEV_CACHE") && !log.contains("var=FERRULE_LOG"),
        "the scripts' and the binary's own variables are not overrides to warn about: {log}"
    );
}

#[test]
fn check_config_names_a_table_written_twice_and_a_mistyped_override() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example()).unwrap();
    let twice = format!("{text}\n[spool]\ndir = \"/tmp/x\"\n");
    let line = twice.lines().count() - 1;
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, &twice).unwrap();
    let (ok, out) = check(&path, &[]);
    assert!(!ok, "a second [spool] accepted: {out}");
    assert!(out.contains(&format!("agent.toml:{line}:")), "{out}");
    assert!(out.contains("`spool`"), "names the table: {out}");

    let tls = tls_dir();
    let p = |f: &str| tls.path().join(f).display().to_string();
    let (cert, key, ca) = (p("agent.crt"), p("agent.key"), p("ca-bundle.crt"));
    let (ok, out) = check(
        &example(),
        &[
            ("FERRULE_TLS__CERT", &cert),
            ("FERRULE_TLS__KEY", &key),
            ("FERRULE_TLS__SERVER_CA", &ca),
            ("FERRULE_SPOOL_DIR", "/typo"),
            ("FERRULE_LOG", "debug"),
            ("FERRULEDEV_CACHE", "/tmp/cache"),
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: FERRULE_SPOOL_DIR looks like an override"),
        "{out}"
    );
    assert!(
        !out.contains("FERRULE_LOG") && !out.contains("FERRULEDEV_CACHE"),
        "{out}"
    );
}

// ---------------------------------------------------------------- TLS material

/// The fixtures (see transport/tests/fixtures/tls/README.md), copied into a
/// temporary directory with the modes a deployment would give them.
fn tls_dir() -> tempfile::TempDir {
    let from = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../transport/tests/fixtures/tls");
    let dir = tempfile::tempdir().unwrap();
    for (src, dst) in [
        ("pki/ca-bundle.crt", "ca-bundle.crt"),
        ("agent-substation-7-rtu-3.crt", "agent.crt"),
        ("agent-substation-7-rtu-3.key", "agent.key"),
        ("agent-substation-7-other.key", "other.key"),
        ("agent-expired.crt", "expired.crt"),
        ("agent-expired.key", "expired.key"),
        ("foreign/agent-substation-7-rtu-3.crt", "foreign.crt"),
        ("foreign/agent-substation-7-rtu-3.key", "foreign.key"),
        ("server-agg.example.net.crt", "server.crt"),
        ("server-agg.example.net.key", "server.key"),
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

/// Runs check-config on the example with its `[tls]` files taken from `dir`.
fn check_tls(dir: &std::path::Path, cert: &str, key: &str, ca: &str) -> (bool, String) {
    let p = |f: &str| dir.join(f).display().to_string();
    let (cert, key, ca) = (p(cert), p(key), p(ca));
    check(
        &example(),
        &[
            ("FERRULE_TLS__CERT", &cert),
            ("FERRULE_TLS__KEY", &key),
            ("FERRULE_TLS__SERVER_CA", &ca),
        ],
    )
}

#[test]
fn the_example_with_good_tls_material_is_valid() {
    let dir = tls_dir();
    let (ok, out) = check_tls(dir.path(), "agent.crt", "agent.key", "ca-bundle.crt");
    assert!(ok, "{out}");
    assert!(!out.contains("warning"), "{out}");
    assert!(out.contains("agent substation-7/rtu-3"), "{out}");
}

#[test]
fn the_example_names_tls_files_that_do_not_exist_here() {
    // deploy/agent.toml points at /etc/ferrule/pki: check-config reads them.
    let (ok, out) = check(&example(), &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("/etc/ferrule/pki/agent-substation-7-rtu-3.key"),
        "{out}"
    );
}

#[test]
fn bad_tls_material_fails_naming_the_file_and_the_fault() {
    let dir = tls_dir();
    std::fs::write(dir.path().join("garbage.crt"), "not a certificate\n").unwrap();
    std::fs::write(
        dir.path().join("garbage.key"),
        "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    for (case, cert, key, ca, file, fault) in [
        (
            "missing key",
            "agent.crt",
            "nope.key",
            "ca-bundle.crt",
            "nope.key",
            "No such file",
        ),
        (
            "key of another certificate",
            "agent.crt",
            "other.key",
            "ca-bundle.crt",
            "other.key",
            "does not match the certificate",
        ),
        (
            "expired certificate",
            "expired.crt",
            "expired.key",
            "ca-bundle.crt",
            "expired.crt",
            "expired on",
        ),
        (
            "certificate from another CA",
            "foreign.crt",
            "foreign.key",
            "ca-bundle.crt",
            "foreign.crt",
            "not accepted with the trust bundle",
        ),
        (
            "server certificate as the agent's",
            "server.crt",
            "server.key",
            "ca-bundle.crt",
            "server.crt",
            "not accepted with the trust bundle",
        ),
        (
            "garbage certificate PEM",
            "garbage.crt",
            "agent.key",
            "ca-bundle.crt",
            "garbage.crt",
            "no CERTIFICATE found",
        ),
        (
            "garbage key PEM",
            "agent.crt",
            "garbage.key",
            "ca-bundle.crt",
            "garbage.key",
            "bad PEM",
        ),
        (
            "garbage trust bundle",
            "agent.crt",
            "agent.key",
            "garbage.crt",
            "garbage.crt",
            "no CERTIFICATE found",
        ),
    ] {
        let (ok, out) = check_tls(dir.path(), cert, key, ca);
        assert!(!ok, "{case}: accepted: {out}");
        let line = out
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("{case}: {file} not named: {out}"));
        assert!(
            line.contains(fault),
            "{case}: {line:?} does not say {fault:?}: {out}"
        );
    }
}

#[test]
fn a_key_readable_by_others_is_a_warning() {
    let dir = tls_dir();
    set_mode(&dir.path().join("agent.key"), 0o644);
    let (ok, out) = check_tls(dir.path(), "agent.crt", "agent.key", "ca-bundle.crt");
    assert!(ok, "a warning failed the check: {out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("no warning: {out}"));
    assert!(line.contains("agent.key") && line.contains("644"), "{line}");
}

#[test]
fn a_certificate_for_another_agent_is_refused() {
    let dir = tls_dir();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let (ok, out) = check(
        &example(),
        &[
            ("FERRULE_TLS__CERT", &p("agent.crt")),
            ("FERRULE_TLS__KEY", &p("agent.key")),
            ("FERRULE_TLS__SERVER_CA", &p("ca-bundle.crt")),
            ("FERRULE_AGENT__ID", "rtu-4"),
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("substation-7/rtu-3") && out.contains("substation-7/rtu-4"),
        "{out}"
    );
}

/// A key path naming something huge (a log, a disk image, `/dev/zero`) is
/// refused after a bounded read, naming the file: it was read whole into
/// memory (64 MiB of RSS per 64 MiB of file; `/dev/zero` never ended) and then
/// reported as "no PRIVATE KEY found".
#[test]
fn a_huge_or_endless_key_file_is_refused_without_reading_it_whole() {
    let dir = tls_dir();
    let big = dir.path().join("big.key");
    // Sparse: costs no disk.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    set_mode(&big, 0o600);
    let (ok, out) = check_tls(dir.path(), "agent.crt", "big.key", "ca-bundle.crt");
    assert!(!ok, "{out}");
    let line = out.lines().find(|l| l.contains("big.key")).unwrap();
    assert!(line.contains("larger than"), "{out}");

    let ca = dir.path().join("ca-bundle.crt").display().to_string();
    let cert = dir.path().join("agent.crt").display().to_string();
    let (ok, out) = check(
        &example(),
        &[
            ("FERRULE_TLS__CERT", &cert),
            ("FERRULE_TLS__KEY", "/dev/zero"),
            ("FERRULE_TLS__SERVER_CA", &ca),
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("/dev/zero: larger than"), "{out}");
}

/// A passphrase-protected key (PKCS#8 `ENCRYPTED PRIVATE KEY`, or a
/// traditional key with `Proc-Type: 4,ENCRYPTED`) is named as encrypted, not
/// as "no PRIVATE KEY found"; and no message shows the key's bytes.
#[test]
fn an_encrypted_key_is_named_as_encrypted() {
    let dir = tls_dir();
    // `openssl pkcs8 -topk8 -passout pass:x` of a throwaway P-256 key.
    let pkcs8 = "-----BEGIN ENCRYPTED PRIVATE KEY-----\n\
MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAi0JrmeVMw0LAICCAAw\n\
DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEKjNEhXTrfZNqsUV0ROKelsEgZAE\n\
gA5nD3YcH0nZsU8Q1l7gBlWU2z2m1Y3FZ8R0y0rTj3zCbAXmb7t0fXUbR7cS2lwA\n\
7oB9Kq9y3M0gZ3cC1Y3s5h8z3gHk1fQm3+Rk2mN0rj1pNN3rXnPqQ0xW4jS7M2sK\n\
8A0x0YqX5fJXc4l9kGH3ZbV1Ww2sBq8U2k8=\n\
-----END ENCRYPTED PRIVATE KEY-----\n";
    let traditional = "-----BEGIN EC PRIVATE KEY-----\n\
Proc-Type: 4,ENCRYPTED\n\
DEK-Info: AES-128-CBC,3F5B1B4E1E4C0F2A9D7E6C5B4A392817\n\
\n\
q9y3M0gZ3cC1Y3s5h8z3gHk1fQm3+Rk2mN0rj1pNN3rXnPqQ0xW4jS7M2sK8A0x0\n\
YqX5fJXc4l9kGH3ZbV1Ww2sBq8U2k8gA5nD3YcH0nZsU8Q1l7gBlWU2z2m1Y3FZ8\n\
-----END EC PRIVATE KEY-----\n";
    for (name, text) in [("pkcs8.key", pkcs8), ("traditional.key", traditional)] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        set_mode(&path, 0o600);
        let (ok, out) = check_tls(dir.path(), "agent.crt", name, "ca-bundle.crt");
        assert!(!ok, "{name}: {out}");
        let line = out.lines().find(|l| l.contains(name)).unwrap();
        assert!(line.contains("encrypted"), "{name}: {out}");
        assert!(
            !out.contains("q9y3M0gZ") && !out.contains("MIHsMFcG"),
            "{out}"
        );
    }
}

/// Two endpoints that fail in different ways (one never answers, one is an
/// address no packet can go to): each cause is logged once. The agent kept
/// one "last cause" for all endpoints, so it changed at every attempt and
/// every round of retries logged a warning per endpoint, for as long as both
/// stayed down.
#[test]
// A plain test thread waiting for the agent to retry: sleeping is what it should do.
#[allow(clippy::disallowed_methods)]
fn endpoints_failing_differently_log_each_cause_once() {
    let dir = tls_dir();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let log_path = dir.path().join("agent.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrule-agent"))
        .args(["run", "--config"])
        .arg(example())
        .envs([
            ("FERRULE_TLS__CERT", p("agent.crt")),
            ("FERRULE_TLS__KEY", p("agent.key")),
            ("FERRULE_TLS__SERVER_CA", p("ca-bundle.crt")),
            ("FERRULE_SPOOL__DIR", p("spool")),
            ("FERRULE_METRICS__LISTEN", "127.0.0.1:0".into()),
            // 127.0.0.1:1 never answers QUIC (a handshake timeout); 0.0.0.0 is
            // refused before sending (quinn's invalid remote address).
            (
                "FERRULE_UPLINK__ENDPOINTS",
                r#"["127.0.0.1:1", "0.0.0.0:4433"]"#.into(),
            ),
            ("FERRULE_UPLINK__CONNECT_TIMEOUT_SECS", "1".into()),
            ("FERRULE_UPLINK__BACKOFF_MAX_MS", "500".into()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // At least four rounds of both endpoints.
    std::thread::sleep(std::time::Duration::from_secs(8));
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("uplink session failed"))
        .collect();
    assert!(
        failed.iter().any(|l| l.contains("127.0.0.1:1"))
            && failed.iter().any(|l| l.contains("0.0.0.0:4433")),
        "each endpoint's cause is logged once: {log}"
    );
    assert_eq!(failed.len(), 2, "a cause was logged again: {log}");
}

/// A certificate file with its issuing CA first and the leaf second: named as
/// an order problem, not as "this key does not match the certificate" (the
/// key does match; it was sent hunting for the wrong key).
#[test]
fn a_chain_with_the_leaf_not_first_is_named_as_such() {
    let dir = tls_dir();
    let pem = std::fs::read_to_string(dir.path().join("agent.crt")).unwrap();
    let end = "-----END CERTIFICATE-----\n";
    let first = pem.find(end).unwrap() + end.len();
    let (leaf, issuer) = pem.split_at(first);
    std::fs::write(dir.path().join("reversed.crt"), format!("{issuer}{leaf}")).unwrap();
    let (ok, out) = check_tls(dir.path(), "reversed.crt", "agent.key", "ca-bundle.crt");
    assert!(!ok, "{out}");
    assert!(
        out.contains("must come first") && out.contains("certificate 2 of 2"),
        "{out}"
    );
    assert!(!out.contains("does not match the certificate"), "{out}");
}

/// Relative TLS paths resolve against the working directory (in `run` too),
/// not the config file's: a check run from the config's directory passed while
/// the daemon, started elsewhere (`WorkingDirectory=/`), could not find them.
/// Now a warning names the path and the directory it was resolved against.
#[test]
fn relative_tls_paths_are_a_warning_naming_the_working_directory() {
    let dir = tls_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrule-agent"))
        .args(["check-config", "--config"])
        .arg(example())
        .current_dir(dir.path())
        .envs([
            ("FERRULE_TLS__CERT", "agent.crt"),
            ("FERRULE_TLS__KEY", "./agent.key"),
            ("FERRULE_TLS__SERVER_CA", "ca-bundle.crt"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let warnings: Vec<&str> = text.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 3, "{text}");
    assert!(
        warnings
            .iter()
            .all(|w| w.contains("relative path") && w.contains("working directory")),
        "{text}"
    );
}

/// The renew hook's keys: a fraction outside (0, 1), a jitter that reaches
/// past it and an empty command are config errors naming the key; a good hook
/// passes.
#[test]
fn renew_hook_keys_are_checked() {
    let text = std::fs::read_to_string(example()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let with = |keys: &str| text.replace("[tls]\n", &format!("[tls]\n{keys}\n"));
    for (keys, key, says) in [
        (
            "renew_at_fraction = 1.0",
            "tls.renew_at_fraction",
            "between 0 and 1",
        ),
        (
            "renew_at_fraction = 0",
            "tls.renew_at_fraction",
            "between 0 and 1",
        ),
        (
            "renew_at_fraction = -0.5",
            "tls.renew_at_fraction",
            "between 0 and 1",
        ),
        (
            "renew_at_fraction = 0.9\nrenew_jitter_fraction = 0.2",
            "tls.renew_jitter_fraction",
            "outside (0, 1)",
        ),
        (
            "renew_jitter_fraction = -0.1",
            "tls.renew_jitter_fraction",
            "0 or more",
        ),
        ("renew_command = []", "tls.renew_command", "argv array"),
        ("renew_command = [\"\"]", "tls.renew_command", "argv array"),
        (
            "renew_command = \"ferrule-certs renew\"",
            "renew_command",
            "sequence",
        ),
        (
            "renew_timeout_secs = 0",
            "tls.renew_timeout_secs",
            "at least 1",
        ),
        ("renew_retry_secs = 0", "tls.renew_retry_secs", "at least 1"),
        ("renew_after_secs = 5", "renew_after_secs", "unknown field"),
    ] {
        std::fs::write(&path, with(keys)).unwrap();
        let (ok, out) = check(&path, &[]);
        assert!(!ok, "{keys} accepted");
        assert!(out.contains(key), "{keys}: {out}");
        assert!(out.contains(says), "{keys}: {out}");
    }
    std::fs::write(
        &path,
        with("renew_command = [\"/usr/bin/ferrule-certs\", \"renew\"]\nrenew_at_fraction = 0.5\nrenew_jitter_fraction = 0.1"),
    )
    .unwrap();
    let (_, out) = check(&path, &[]);
    assert!(!out.contains("renew"), "{out}");
}
