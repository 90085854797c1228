//! Helpers shared by the integration tests: running the real `openssl`
//! binary and our own CLI, and checking file modes.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `openssl ARGS...`; panics with a clear message if the binary is
/// missing, because these tests must never skip silently.
pub fn openssl(args: &[&str]) -> Output {
    match Command::new("openssl").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run the `openssl` binary ({e}); these tests need the OpenSSL CLI \
             (Debian: apt-get install openssl)"
        ),
    }
}

/// Runs openssl, asserts success and returns stdout+stderr as text.
pub fn openssl_ok(args: &[&str]) -> String {
    let out = openssl(args);
    let text = text(&out);
    assert!(out.status.success(), "openssl {args:?} failed:\n{text}");
    text
}

/// stdout followed by stderr, lossily decoded.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `openssl verify` of the first certificate in `leaf` against `root`
/// (trusted) and `issuing` (untrusted intermediate), plus `extra` flags.
pub fn verify(root: &Path, issuing: &Path, leaf: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["verify"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-CAfile", s(root), "-untrusted", s(issuing), s(leaf)]);
    openssl(&args)
}

/// Asserts `openssl verify` prints OK for `leaf`.
pub fn assert_verifies(root: &Path, issuing: &Path, leaf: &Path, extra: &[&str]) {
    let out = verify(root, issuing, leaf, extra);
    let t = text(&out);
    assert!(
        out.status.success() && t.contains(": OK"),
        "openssl verify {extra:?} {} failed:\n{t}",
        leaf.display()
    );
}

/// Asserts `openssl verify` rejects `leaf`, returning its output.
pub fn assert_rejected(root: &Path, issuing: &Path, leaf: &Path, extra: &[&str]) -> String {
    let out = verify(root, issuing, leaf, extra);
    let t = text(&out);
    assert!(
        !out.status.success(),
        "openssl verify {extra:?} {} unexpectedly passed:\n{t}",
        leaf.display()
    );
    t
}

/// The subjectAltName extension as openssl prints it.
pub fn san(cert: &Path) -> String {
    openssl_ok(&["x509", "-in", s(cert), "-noout", "-ext", "subjectAltName"])
}

/// Permission bits of a file.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Path as &str (test paths are UTF-8 temp dirs).
pub fn s(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Number of PEM certificates in a file.
pub fn cert_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .matches("-----BEGIN CERTIFICATE-----")
        .count()
}
