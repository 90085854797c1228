//! The `ferrule-certs` binary end to end: stdout contract, files, openssl
//! verification, revocation, bundles and bad input.
// Helpers outside #[test] fns unwrap too: a panic is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_rejected, assert_verifies, cert_count, mode, openssl_ok, s, san, text};

/// Runs the built binary with `args`.
fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrule-certs"))
        .args(args)
        .output()
        .expect("run ferrule-certs")
}

/// Runs the binary, asserts success and returns the paths printed on stdout,
/// checking that stdout holds nothing but existing paths.
fn run_paths(args: &[&str]) -> Vec<PathBuf> {
    let out = run(args);
    assert!(
        out.status.success(),
        "ferrule-certs {args:?} failed:\n{}",
        text(&out)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let paths: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    assert!(!paths.is_empty(), "no paths printed by {args:?}");
    for p in &paths {
        assert!(
            p.is_file(),
            "printed {} which is not a file (stdout: {stdout:?})",
            p.display()
        );
    }
    paths
}

/// Runs the binary expecting failure; returns stderr. Checks the failure is
/// a clean error (exit 1, message, no panic, nothing on stdout).
fn run_fails(args: &[&str]) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "ferrule-certs {args:?} unexpectedly succeeded"
    );
    assert!(
        !stderr.contains("panicked"),
        "panic for {args:?}:\n{stderr}"
    );
    assert!(
        stderr.contains("error"),
        "no error message for {args:?}:\n{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "stdout not empty on failure for {args:?}"
    );
    stderr
}

fn find<'a>(paths: &'a [PathBuf], name: &str) -> &'a Path {
    paths
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == name))
        .unwrap_or_else(|| panic!("{name} not among {paths:?}"))
}

#[test]
fn full_lifecycle_via_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = s(&dir);

    let init = run_paths(&["init", "--dir", d]);
    let root = find(&init, "root-ca.crt").to_owned();
    let issuing = find(&init, "issuing-ca.crt").to_owned();
    for name in [
        "root-ca.key",
        "issuing-ca.key",
        "ca-bundle.crt",
        "crl.pem",
        "index.tsv",
    ] {
        find(&init, name);
    }
    assert_eq!(mode(find(&init, "root-ca.key")), 0o600);
    assert_eq!(mode(find(&init, "issuing-ca.key")), 0o600);

    let server = run_paths(&[
        "issue-server",
        "--dir",
        d,
        "--name",
        "agg.example.com",
        "--name",
        "127.0.0.1",
    ]);
    assert_eq!(server.len(), 2);
    let server_crt = find(&server, "server-agg.example.com.crt").to_owned();
    assert_eq!(mode(find(&server, "server-agg.example.com.key")), 0o600);

    let agent = run_paths(&[
        "issue-agent",
        "--dir",
        d,
        "--site",
        "plant-1",
        "--id",
        "pump-3",
    ]);
    assert_eq!(agent.len(), 2);
    let agent_crt = find(&agent, "agent-plant-1-pump-3.crt").to_owned();
    let agent_key = find(&agent, "agent-plant-1-pump-3.key").to_owned();
    assert_eq!(mode(&agent_key), 0o600);
    assert_eq!(cert_count(&agent_crt), 2);

    assert_verifies(&root, &issuing, &server_crt, &[]);
    assert_verifies(&root, &issuing, &agent_crt, &[]);
    assert_verifies(&root, &issuing, &server_crt, &["-purpose", "sslserver"]);
    assert_verifies(&root, &issuing, &agent_crt, &["-purpose", "sslclient"]);
    assert_rejected(&root, &issuing, &agent_crt, &["-purpose", "sslserver"]);
    assert!(san(&agent_crt).contains("URI:ferrule://site/plant-1/agent/pump-3"));
    let server_san = san(&server_crt);
    assert!(server_san.contains("DNS:agg.example.com"), "{server_san}");
    assert!(server_san.contains("IP Address:127.0.0.1"), "{server_san}");

    // Second issue without --force fails naming the file; key untouched.
    let key_before = fs::read(&agent_key).unwrap();
    let err = run_fails(&[
        "issue-agent",
        "--dir",
        d,
        "--site",
        "plant-1",
        "--id",
        "pump-3",
    ]);
    assert!(err.contains("agent-plant-1-pump-3"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(fs::read(&agent_key).unwrap(), key_before);
    let err = run_fails(&["init", "--dir", d]);
    assert!(err.contains("already exists"), "{err}");

    // inspect: subject, URI SAN, serial, ~30 days left, parsed identity.
    let out = run(&["inspect", s(&agent_crt)]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8(out.stdout).unwrap();
    let serial_hex = openssl_ok(&["x509", "-in", s(&agent_crt), "-noout", "-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_lowercase();
    assert!(shown.contains("CN=pump-3"), "{shown}");
    assert!(
        shown.contains("ferrule://site/plant-1/agent/pump-3"),
        "{shown}"
    );
    assert!(
        shown.replace(':', "").contains(&serial_hex),
        "{serial_hex} not in\n{shown}"
    );
    assert!(shown.contains("site:        plant-1"), "{shown}");
    assert!(shown.contains("agent:       pump-3"), "{shown}");
    let days: i64 = shown
        .lines()
        .find_map(|l| l.strip_prefix("days left:"))
        .expect("days left line")
        .trim()
        .parse()
        .unwrap();
    assert!((29..=30).contains(&days), "{shown}");

    let out = run(&["inspect", "--json", s(&agent_crt)]);
    assert!(out.status.success(), "{}", text(&out));
    let json = String::from_utf8(out.stdout).unwrap();
    assert!(
        json.trim_start().starts_with('[') && json.trim_end().ends_with(']'),
        "{json}"
    );
    assert!(
        json.contains(&format!("\"serial\":\"{serial_hex}\"")),
        "{json}"
    );
    assert!(
        json.contains("\"site\":\"plant-1\",\"agent\":\"pump-3\""),
        "{json}"
    );
    assert!(
        json.contains("\"uris\":[\"ferrule://site/plant-1/agent/pump-3\"]"),
        "{json}"
    );

    // list shows the index.
    let out = run(&["list", "--dir", d]);
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(
        listed.contains(&serial_hex) && listed.contains("\tagent\t"),
        "{listed}"
    );

    // Revoke by openssl's colon-free uppercase spelling with 0x.
    let revoked = run_paths(&[
        "revoke",
        "--dir",
        d,
        "--serial",
        &format!("0x{}", serial_hex.to_uppercase()),
        "--reason",
        "keyCompromise",
    ]);
    assert_eq!(revoked, vec![dir.join("crl.pem")]);
    let crl = dir.join("crl.pem");
    let crl_text = openssl_ok(&["crl", "-in", s(&crl), "-noout", "-text"]);
    assert!(crl_text.to_lowercase().contains(&serial_hex), "{crl_text}");
    let crl_args = ["-crl_check", "-CRLfile", s(&crl)];
    let why = assert_rejected(&root, &issuing, &agent_crt, &crl_args);
    assert!(why.contains("revoked"), "{why}");
    assert_verifies(&root, &issuing, &server_crt, &crl_args);

    // crl refresh keeps it revoked.
    assert_eq!(run_paths(&["crl", "--dir", d]), vec![crl.clone()]);
    assert_rejected(&root, &issuing, &agent_crt, &crl_args);
    let err = run_fails(&["revoke", "--dir", d, "--serial", &serial_hex]);
    assert!(err.contains("already revoked"), "{err}");
}

#[test]
fn bundle_two_roots_via_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    let new = tmp.path().join("new");
    run_paths(&["init", "--dir", s(&old)]);
    run_paths(&["init", "--dir", s(&new)]);
    let old_leaf = run_paths(&["issue-server", "--dir", s(&old), "--name", "agg"])[0].clone();
    let new_leaf = run_paths(&["issue-server", "--dir", s(&new), "--name", "agg"])[0].clone();
    let out = tmp.path().join("trust.pem");
    let written = run_paths(&[
        "bundle",
        "--out",
        s(&out),
        s(&old.join("root-ca.crt")),
        s(&new.join("root-ca.crt")),
        s(&new.join("ca-bundle.crt")),
    ]);
    assert_eq!(written, vec![out.clone()]);
    assert_eq!(cert_count(&out), 2);
    assert_verifies(&out, &old.join("issuing-ca.crt"), &old_leaf, &[]);
    assert_verifies(&out, &new.join("issuing-ca.crt"), &new_leaf, &[]);

    let err = run_fails(&["bundle", "--out", s(&out), s(&old.join("root-ca.crt"))]);
    assert!(err.contains("already exists"), "{err}");
    let err = run_fails(&[
        "bundle",
        "--out",
        s(&tmp.path().join("x.pem")),
        s(&old_leaf),
    ]);
    assert!(err.contains("not a CA certificate"), "{err}");
}

#[test]
fn bad_input_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = s(&dir);

    // Missing CA directory.
    let err = run_fails(&["issue-agent", "--dir", d, "--site", "s", "--id", "a"]);
    assert!(
        err.contains("does not exist") && err.contains("init"),
        "{err}"
    );
    run_fails(&["revoke", "--dir", d, "--serial", "01"]);
    run_fails(&["crl", "--dir", d]);

    run_paths(&["init", "--dir", d]);

    // Bad site / id names.
    for (site, id) in [
        ("bad/site", "a"),
        ("", "a"),
        ("s", "a b"),
        ("s", &"x".repeat(65)),
    ] {
        let err = run_fails(&["issue-agent", "--dir", d, "--site", site, "--id", id]);
        assert!(err.contains("invalid"), "{err}");
    }
    let err = run_fails(&["issue-server", "--dir", d, "--name", "bad name"]);
    assert!(err.contains("invalid server name"), "{err}");
    let err = run_fails(&["issue-server", "--dir", d, "--name", "x", "--days", "0"]);
    assert!(err.contains("invalid lifetime"), "{err}");

    // inspect: nonexistent file, garbage, broken PEM, a key file.
    let err = run_fails(&["inspect", s(&tmp.path().join("nope.pem"))]);
    assert!(err.contains("nope.pem"), "{err}");
    let garbage = tmp.path().join("garbage.pem");
    fs::write(&garbage, "this is not a certificate\n").unwrap();
    let err = run_fails(&["inspect", s(&garbage)]);
    assert!(err.contains("no certificate found"), "{err}");
    let broken = tmp.path().join("broken.pem");
    fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nMIIBkzCCATmgAwIBAgIQ\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    run_fails(&["inspect", s(&broken)]);
    run_fails(&["inspect", s(&dir.join("root-ca.key"))]);

    // revoke: bad serial, unknown serial, bad reason.
    let err = run_fails(&["revoke", "--dir", d, "--serial", "xyz"]);
    assert!(err.contains("invalid serial"), "{err}");
    let err = run_fails(&["revoke", "--dir", d, "--serial", "0x1234"]);
    assert!(err.contains("not in"), "{err}");
    let err = run_fails(&["revoke", "--dir", d, "--serial", "01", "--reason", "stolen"]);
    assert!(err.contains("keyCompromise"), "{err}");

    // bundle: garbage input.
    run_fails(&["bundle", "--out", s(&tmp.path().join("b.pem")), s(&garbage)]);

    // Usage errors are clap's (exit 2), still no panic.
    let out = run(&["issue-agent", "--dir", d]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// `renew` through the binary: stdout holds only the paths written (the
/// certificate, then the key with --new-key), `list` shows the new serial
/// valid, and a refusal is one line on stderr with nothing on stdout.
#[test]
fn renew_via_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = s(&dir);
    run_paths(&["init", "--dir", d]);
    let agent = run_paths(&["issue-agent", "--dir", d, "--site", "p", "--id", "a"]);
    let crt = find(&agent, "agent-p-a.crt").to_owned();
    let key = find(&agent, "agent-p-a.key").to_owned();
    let serial_of = |p: &Path| {
        ferrule_certs::inspect(&fs::read(p).unwrap()).unwrap()[0]
            .serial
            .clone()
    };
    let old = serial_of(&crt);

    let written = run_paths(&["renew", "--dir", d, "--cert", s(&crt), "--days", "7"]);
    assert_eq!(written, vec![crt.clone()]);
    let new = serial_of(&crt);
    assert_ne!(new, old);
    let list = String::from_utf8(run(&["list", "--dir", d]).stdout).unwrap();
    let line = list
        .lines()
        .find(|l| l.starts_with(&new.to_hex()))
        .unwrap_or_else(|| panic!("{new} not listed:\n{list}"));
    assert!(line.contains("\tvalid\tferrule://site/p/agent/a"), "{line}");

    let written = run_paths(&["renew", "--dir", d, "--cert", s(&crt), "--new-key"]);
    assert_eq!(written, vec![crt.clone(), key.clone()]);
    assert_eq!(mode(&key), 0o600);

    // A refusal: the CA certificate is not a leaf.
    let root = dir.join("root-ca.crt");
    let err = run_fails(&["renew", "--dir", d, "--cert", s(&root)]);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("is not a ferrule leaf certificate"), "{err}");
}
