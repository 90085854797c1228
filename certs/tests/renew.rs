//! `renew` on real files: the identity and names kept, a new serial Valid in
//! the index, the key kept (or new with `new_key`), and every refusal
//! leaving the files untouched. Checked by the real `openssl` too.
// Helpers outside #[test] fns unwrap too: a panic is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{assert_verifies, cert_count, mode, openssl_ok, s};
use ferrule_certs::{
    AgentIdentity, CaFiles, CertInfo, CertKind, Error, InitOptions, IssueOptions, RenewOptions,
    RevocationReason, Serial, Status,
};
use time::{Duration, OffsetDateTime};

fn ca(dir: &Path) -> CaFiles {
    ferrule_certs::init(dir, &InitOptions::default()).unwrap();
    CaFiles::new(dir)
}

fn leaf(path: &Path) -> CertInfo {
    ferrule_certs::inspect(&fs::read(path).unwrap())
        .unwrap()
        .remove(0)
}

fn agent(dir: &Path, site: &str, id: &str) -> ferrule_certs::Issued {
    let identity = AgentIdentity::new(site, id).unwrap();
    ferrule_certs::issue_agent(dir, &identity, &IssueOptions::default()).unwrap()
}

fn status_of(dir: &Path, serial: &Serial) -> Option<Status> {
    ferrule_certs::list(dir)
        .unwrap()
        .into_iter()
        .find(|e| &e.serial == serial)
        .map(|e| e.status)
}

/// The public key openssl reads from a certificate or a private key.
fn pubkey_of_cert(cert: &Path) -> String {
    openssl_ok(&["x509", "-in", s(cert), "-noout", "-pubkey"])
}
fn pubkey_of_key(key: &Path) -> String {
    openssl_ok(&["pkey", "-in", s(key), "-pubout"])
}

#[test]
fn an_agent_keeps_its_identity_and_key_and_gets_a_new_valid_serial() {
    let tmp = tempfile::tempdir().unwrap();
    let files = ca(tmp.path());
    let dir = tmp.path();
    let issued = agent(dir, "plant-7", "pump_03");
    let before = leaf(&issued.cert);
    let key_before = fs::read(&issued.key).unwrap();

    let renewed = ferrule_certs::renew(dir, &issued.cert, &RenewOptions::default()).unwrap();
    let after = leaf(&issued.cert);

    // Identity exactly as it was: subject, URI SAN, no other names, issuer.
    assert_eq!(after.subject, before.subject);
    assert_eq!(after.uris, vec!["ferrule://site/plant-7/agent/pump_03"]);
    assert_eq!(after.uris, before.uris);
    assert!(after.dns_names.is_empty() && after.ip_addresses.is_empty());
    assert_eq!(after.issuer, before.issuer);
    assert_eq!(
        after.agent,
        Some(AgentIdentity::new("plant-7", "pump_03").unwrap())
    );
    assert!(!after.is_ca);
    let text = openssl_ok(&["x509", "-in", s(&issued.cert), "-noout", "-text"]);
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("TLS Web Server Authentication"), "{text}");

    // A new serial, reported, recorded Valid; the old one still Valid (in
    // use until it expires).
    assert_ne!(after.serial, before.serial);
    assert_eq!(renewed.serial, after.serial);
    assert_eq!(renewed.previous_serial, before.serial);
    assert_eq!(renewed.kind, CertKind::Agent);
    assert_eq!(renewed.identity, "ferrule://site/plant-7/agent/pump_03");
    assert_eq!(status_of(dir, &after.serial), Some(Status::Valid));
    assert_eq!(status_of(dir, &before.serial), Some(Status::Valid));
    let entry = ferrule_certs::list(dir)
        .unwrap()
        .into_iter()
        .find(|e| e.serial == after.serial)
        .unwrap();
    assert_eq!(entry.kind, CertKind::Agent);
    assert_eq!(entry.identity, renewed.identity);

    // The kind's default lifetime from now.
    let expected = OffsetDateTime::now_utc() + Duration::days(30);
    assert!((after.not_after - expected).abs() < Duration::minutes(2));
    assert_eq!(
        renewed.not_after.unix_timestamp(),
        after.not_after.unix_timestamp()
    );

    // The key untouched (only the certificate file changed), and it is the
    // new certificate's key.
    assert_eq!(fs::read(&issued.key).unwrap(), key_before);
    assert!(!renewed.key_replaced);
    assert_eq!(renewed.paths(), vec![issued.cert.as_path()]);
    assert_eq!(pubkey_of_cert(&issued.cert), pubkey_of_key(&issued.key));

    // Leaf then issuing CA, 0644, verifies as a client certificate.
    assert_eq!(cert_count(&issued.cert), 2);
    assert_eq!(mode(&issued.cert), 0o644);
    assert_verifies(
        &files.root_cert,
        &files.issuing_cert,
        &issued.cert,
        &["-purpose", "sslclient"],
    );
    // No temporary files left beside it.
    let leftovers: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_server_keeps_its_names_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let files = ca(tmp.path());
    let dir = tmp.path();
    let names = [
        "agg.example.com".to_owned(),
        "10.1.2.3".to_owned(),
        "agg-2.example.com".to_owned(),
        "::1".to_owned(),
    ];
    let issued = ferrule_certs::issue_server(dir, &names, &IssueOptions::default()).unwrap();
    let before = leaf(&issued.cert);
    let renewed = ferrule_certs::renew(
        dir,
        &issued.cert,
        &RenewOptions {
            days: Some(10),
            ..RenewOptions::default()
        },
    )
    .unwrap();
    let after = leaf(&issued.cert);
    assert_eq!(after.subject, before.subject);
    assert_eq!(after.dns_names, before.dns_names);
    assert_eq!(after.ip_addresses, before.ip_addresses);
    assert!(after.uris.is_empty());
    assert_ne!(after.serial, before.serial);
    assert_eq!(renewed.kind, CertKind::Server);
    assert_eq!(
        renewed.identity,
        "agg.example.com,10.1.2.3,agg-2.example.com,::1"
    );
    assert_eq!(status_of(dir, &after.serial), Some(Status::Valid));
    // --days honoured.
    let expected = OffsetDateTime::now_utc() + Duration::days(10);
    assert!((after.not_after - expected).abs() < Duration::minutes(2));
    let text = openssl_ok(&["x509", "-in", s(&issued.cert), "-noout", "-text"]);
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(
        text.contains("DNS:agg.example.com, IP Address:10.1.2.3, DNS:agg-2.example.com"),
        "{text}"
    );
    assert_verifies(
        &files.root_cert,
        &files.issuing_cert,
        &issued.cert,
        &["-purpose", "sslserver"],
    );
}

#[test]
fn new_key_replaces_the_key_and_the_pair_matches() {
    let tmp = tempfile::tempdir().unwrap();
    ca(tmp.path());
    let dir = tmp.path();
    let issued = agent(dir, "plant-7", "pump_04");
    let key_before = fs::read(&issued.key).unwrap();
    let renewed = ferrule_certs::renew(
        dir,
        &issued.cert,
        &RenewOptions {
            new_key: true,
            ..RenewOptions::default()
        },
    )
    .unwrap();
    assert!(renewed.key_replaced);
    assert_eq!(
        renewed.paths(),
        vec![issued.cert.as_path(), issued.key.as_path()]
    );
    assert_ne!(fs::read(&issued.key).unwrap(), key_before);
    assert_eq!(mode(&issued.key), 0o600);
    assert_eq!(pubkey_of_cert(&issued.cert), pubkey_of_key(&issued.key));
    assert_eq!(status_of(dir, &renewed.serial), Some(Status::Valid));
    // And the new pair renews again with the key kept.
    ferrule_certs::renew(dir, &issued.cert, &RenewOptions::default()).unwrap();
}

#[test]
fn a_key_elsewhere_and_a_symlinked_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    ca(&tmp.path().join("pki"));
    let dir = tmp.path().join("pki");
    let issued = agent(&dir, "s", "a");
    // The live layout: /etc/ferrule/agent.crt -> pki/agent-s-a.crt, key
    // under another name.
    let live = tmp.path().join("live");
    fs::create_dir(&live).unwrap();
    let link = live.join("agent.crt");
    std::os::unix::fs::symlink(&issued.cert, &link).unwrap();
    let key = live.join("private.pem");
    fs::copy(&issued.key, &key).unwrap();
    let renewed = ferrule_certs::renew(
        &dir,
        &link,
        &RenewOptions {
            key: Some(key.clone()),
            ..RenewOptions::default()
        },
    )
    .unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(leaf(&issued.cert).serial, renewed.serial);
    assert_eq!(pubkey_of_cert(&link), pubkey_of_key(&key));
}

/// Each refusal names its reason and writes nothing: the certificate, the
/// key and the index are byte-for-byte what they were.
#[test]
fn refusals_leave_everything_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let files = ca(&tmp.path().join("ca1"));
    let dir = files.dir.clone();
    let other = ca(&tmp.path().join("ca2"));
    let a1 = agent(&dir, "plant-1", "a1");
    let a2 = agent(&dir, "plant-1", "a2");
    let foreign = agent(&other.dir, "plant-1", "a1");
    let revoked = agent(&dir, "plant-1", "gone");
    ferrule_certs::revoke(&dir, &revoked.serial, RevocationReason::KeyCompromise).unwrap();
    let garbage = tmp.path().join("notes.crt");
    fs::write(&garbage, "not a certificate\n").unwrap();

    let snapshot =
        |paths: &[&Path]| -> Vec<Vec<u8>> { paths.iter().map(|p| fs::read(p).unwrap()).collect() };
    let watched: Vec<&Path> = vec![
        &files.index,
        &a1.cert,
        &a1.key,
        &a2.cert,
        &foreign.cert,
        &revoked.cert,
        &files.root_cert,
        &files.issuing_cert,
    ];
    let before = snapshot(&watched);
    let renew = |cert: &Path, key: Option<&Path>| {
        ferrule_certs::renew(
            &dir,
            cert,
            &RenewOptions {
                key: key.map(Path::to_path_buf),
                ..RenewOptions::default()
            },
        )
        .unwrap_err()
    };

    // Not a certificate at all.
    let e = renew(&garbage, None);
    assert!(matches!(e, Error::NoCertificates), "{e}");
    // A CA certificate is not a leaf.
    for ca_cert in [&files.root_cert, &files.issuing_cert] {
        let e = renew(ca_cert, Some(&files.issuing_key));
        assert!(matches!(e, Error::NotFerruleLeaf { .. }), "{e}");
        assert!(e.to_string().contains("CA certificate"), "{e}");
    }
    // Another CA's leaf, even with the same identity.
    let e = renew(&foreign.cert, None);
    assert!(matches!(e, Error::IssuerMismatch { .. }), "{e}");
    assert!(e.to_string().contains("was not issued by the CA in"), "{e}");
    // A revoked serial.
    let e = renew(&revoked.cert, None);
    assert!(matches!(e, Error::RevokedLeaf { .. }), "{e}");
    assert!(e.to_string().contains("is revoked"), "{e}");
    // A key that is not the certificate's.
    let e = renew(&a1.cert, Some(&a2.key));
    assert!(matches!(e, Error::LeafKeyMismatch { .. }), "{e}");
    assert!(e.to_string().contains("--new-key"), "{e}");
    // A missing key.
    let e = renew(&a1.cert, Some(&tmp.path().join("nope.key")));
    assert!(matches!(e, Error::Io { .. }), "{e}");

    // A leaf this CA signed but never recorded (the index lost a line).
    let index = fs::read_to_string(&files.index).unwrap();
    let without: String = index
        .lines()
        .filter(|l| !l.starts_with(&a2.serial.to_hex()))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&files.index, &without).unwrap();
    let e = renew(&a2.cert, None);
    assert!(matches!(e, Error::UnknownSerial { .. }), "{e}");
    fs::write(&files.index, &index).unwrap();

    assert!(
        snapshot(&watched) == before,
        "a refused renew wrote something"
    );
    // Every message is one line.
    for e in [renew(&revoked.cert, None), renew(&a1.cert, Some(&a2.key))] {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
    // No lock left behind.
    assert!(!files.lock.exists());
}
