//! The library API end to end on real files, checked by the real `openssl`.
// Helpers outside #[test] fns unwrap too: a panic is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::PathBuf;

use common::{assert_rejected, assert_verifies, cert_count, mode, openssl_ok, s, san};
use ferrule_certs::{
    AgentIdentity, CaFiles, CertKind, Error, InitOptions, IssueOptions, RevocationReason, Serial,
    Status,
};
use time::OffsetDateTime;

fn init(dir: &std::path::Path) -> CaFiles {
    let written = ferrule_certs::init(dir, &InitOptions::default()).unwrap();
    let files = CaFiles::new(dir);
    for p in [
        &files.root_cert,
        &files.root_key,
        &files.issuing_cert,
        &files.issuing_key,
        &files.bundle,
        &files.crl,
        &files.index,
    ] {
        assert!(written.contains(p), "{} not reported", p.display());
        assert!(p.is_file(), "{} not written", p.display());
    }
    files
}

#[test]
fn init_issue_verify_revoke() {
    let tmp = tempfile::tempdir().unwrap();
    let files = init(tmp.path());
    let dir = tmp.path();

    // CA properties as openssl sees them.
    let root_text = openssl_ok(&["x509", "-in", s(&files.root_cert), "-noout", "-text"]);
    assert!(root_text.contains("CA:TRUE"), "{root_text}");
    assert!(
        root_text.contains("Certificate Sign, CRL Sign"),
        "{root_text}"
    );
    let issuing_text = openssl_ok(&["x509", "-in", s(&files.issuing_cert), "-noout", "-text"]);
    assert!(
        issuing_text.contains("CA:TRUE, pathlen:0"),
        "{issuing_text}"
    );
    assert_eq!(cert_count(&files.issuing_cert), 1);
    assert_verifies(&files.root_cert, &files.root_cert, &files.issuing_cert, &[]);
    for key in [&files.root_key, &files.issuing_key] {
        assert_eq!(mode(key), 0o600, "{}", key.display());
    }
    // The initial CRL is empty and parses.
    let crl0 = openssl_ok(&["crl", "-in", s(&files.crl), "-noout", "-text"]);
    assert!(crl0.contains("No Revoked Certificates"), "{crl0}");

    let server = ferrule_certs::issue_server(
        dir,
        &["agg.example.com".to_owned(), "10.1.2.3".to_owned()],
        &IssueOptions::default(),
    )
    .unwrap();
    let agent_id = AgentIdentity::new("plant-7", "pump_03").unwrap();
    let agent = ferrule_certs::issue_agent(dir, &agent_id, &IssueOptions::default()).unwrap();
    assert_eq!(server.cert, dir.join("server-agg.example.com.crt"));
    assert_eq!(agent.cert, dir.join("agent-plant-7-pump_03.crt"));
    assert_eq!(agent.key, dir.join("agent-plant-7-pump_03.key"));

    // Chain files: leaf then issuing CA. Keys 0600.
    for issued in [&server, &agent] {
        assert_eq!(cert_count(&issued.cert), 2);
        assert_eq!(mode(&issued.key), 0o600);
        assert_verifies(&files.root_cert, &files.issuing_cert, &issued.cert, &[]);
    }
    assert_verifies(
        &files.root_cert,
        &files.issuing_cert,
        &server.cert,
        &["-purpose", "sslserver"],
    );
    assert_verifies(
        &files.root_cert,
        &files.issuing_cert,
        &agent.cert,
        &["-purpose", "sslclient"],
    );
    assert_rejected(
        &files.root_cert,
        &files.issuing_cert,
        &agent.cert,
        &["-purpose", "sslserver"],
    );
    assert_rejected(
        &files.root_cert,
        &files.issuing_cert,
        &server.cert,
        &["-purpose", "sslclient"],
    );

    let agent_san = san(&agent.cert);
    assert!(
        agent_san.contains("URI:ferrule://site/plant-7/agent/pump_03"),
        "{agent_san}"
    );
    let server_san = san(&server.cert);
    assert!(server_san.contains("DNS:agg.example.com"), "{server_san}");
    assert!(server_san.contains("IP Address:10.1.2.3"), "{server_san}");
    let subject = openssl_ok(&["x509", "-in", s(&agent.cert), "-noout", "-subject"]);
    assert!(subject.contains("CN = pump_03"), "{subject}");

    // Inspect reads back what was issued.
    let infos = ferrule_certs::inspect(&fs::read(&agent.cert).unwrap()).unwrap();
    assert_eq!(infos.len(), 2);
    let leaf = &infos[0];
    assert_eq!(leaf.serial, agent.serial);
    assert_eq!(leaf.uris, vec![agent_id.to_uri()]);
    assert_eq!(leaf.agent.as_ref(), Some(&agent_id));
    assert!(!leaf.is_ca && infos[1].is_ca);
    let days = leaf.days_left(OffsetDateTime::now_utc());
    assert!((29..=30).contains(&days), "days left {days}");
    let server_info = &ferrule_certs::inspect(&fs::read(&server.cert).unwrap()).unwrap()[0];
    assert_eq!(server_info.dns_names, vec!["agg.example.com".to_owned()]);
    assert_eq!(
        server_info.ip_addresses,
        vec!["10.1.2.3".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(server_info.agent.is_none());
    let server_days = server_info.days_left(OffsetDateTime::now_utc());
    assert!((89..=90).contains(&server_days), "days left {server_days}");

    // The index knows both leaves.
    let entries = ferrule_certs::list(dir).unwrap();
    let kinds: Vec<CertKind> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            CertKind::Root,
            CertKind::Issuing,
            CertKind::Server,
            CertKind::Agent
        ]
    );

    // Revoke the agent: CRL lists it, openssl rejects it, server still passes.
    let before = ferrule_certs::list(dir).unwrap();
    assert!(before.iter().all(|e| e.status == Status::Valid));
    let typed = Serial::parse(&agent.serial.to_colon_hex().to_uppercase()).unwrap();
    let crl = ferrule_certs::revoke(dir, &typed, RevocationReason::KeyCompromise).unwrap();
    assert_eq!(crl, files.crl);
    let crl_text = openssl_ok(&["crl", "-in", s(&crl), "-noout", "-text"]);
    assert!(
        crl_text.to_lowercase().contains(&agent.serial.to_hex()),
        "serial {} not in CRL:\n{crl_text}",
        agent.serial
    );
    assert!(crl_text.contains("Key Compromise"), "{crl_text}");
    assert_crl_number_and_window(&files, "0x02");
    let crl_args = ["-crl_check", "-CRLfile", s(&files.crl)];
    let why = assert_rejected(
        &files.root_cert,
        &files.issuing_cert,
        &agent.cert,
        &crl_args,
    );
    assert!(why.contains("revoked"), "{why}");
    assert_verifies(
        &files.root_cert,
        &files.issuing_cert,
        &server.cert,
        &crl_args,
    );

    // Revoking twice, unknown serials and the CA itself are refused.
    assert!(matches!(
        ferrule_certs::revoke(dir, &agent.serial, RevocationReason::Superseded),
        Err(Error::AlreadyRevoked { .. })
    ));
    assert!(matches!(
        ferrule_certs::revoke(
            dir,
            &Serial::parse("01").unwrap(),
            RevocationReason::Unspecified
        ),
        Err(Error::UnknownSerial { .. })
    ));
    let issuing_serial = ferrule_certs::list(dir).unwrap()[1].serial.clone();
    assert!(matches!(
        ferrule_certs::revoke(dir, &issuing_serial, RevocationReason::Unspecified),
        Err(Error::NotRevocable { .. })
    ));

    // Refreshing keeps the revocation and bumps the CRL number.
    ferrule_certs::refresh_crl(dir).unwrap();
    let refreshed = openssl_ok(&["crl", "-in", s(&files.crl), "-noout", "-text"]);
    assert!(refreshed.to_lowercase().contains(&agent.serial.to_hex()));
    assert_eq!(fs::read_to_string(&files.crl_number).unwrap().trim(), "3");
    assert_crl_number_and_window(&files, "0x03");
}

/// Checks the CRL's number (as openssl prints it) and that it is valid for
/// exactly seven days from now.
fn assert_crl_number_and_window(files: &CaFiles, number: &str) {
    let out = openssl_ok(&["crl", "-in", s(&files.crl), "-noout", "-crlnumber"]);
    assert_eq!(out.trim(), format!("crlNumber={number}"));
    let pem = fs::read(&files.crl).unwrap();
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    assert_eq!(block.label, "X509 CRL");
    let (_, crl) = x509_parser::parse_x509_crl(&block.contents).unwrap();
    let this = crl.last_update().to_datetime();
    let next = crl.next_update().unwrap().to_datetime();
    assert_eq!(next - this, time::Duration::days(7));
    assert!((OffsetDateTime::now_utc() - this).abs() < time::Duration::minutes(5));
}

#[test]
fn existing_files_are_never_overwritten_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let files = init(dir);
    let id = AgentIdentity::new("s1", "a1").unwrap();
    let first = ferrule_certs::issue_agent(dir, &id, &IssueOptions::default()).unwrap();
    let key_before = fs::read(&first.key).unwrap();
    let cert_before = fs::read(&first.cert).unwrap();
    let index_before = fs::read(&files.index).unwrap();

    let err = ferrule_certs::issue_agent(dir, &id, &IssueOptions::default()).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("agent-s1-a1."), "{err}");
    assert_eq!(fs::read(&first.key).unwrap(), key_before);
    assert_eq!(fs::read(&first.cert).unwrap(), cert_before);
    assert_eq!(
        fs::read(&files.index).unwrap(),
        index_before,
        "refused issue touched the index"
    );

    // init over an existing CA is refused too, and leaves the keys alone.
    let root_key = fs::read(&files.root_key).unwrap();
    let err = ferrule_certs::init(dir, &InitOptions::default()).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert_eq!(fs::read(&files.root_key).unwrap(), root_key);

    // --force replaces, still 0600, and the new cert verifies.
    let forced = IssueOptions {
        force: true,
        ..IssueOptions::default()
    };
    let second = ferrule_certs::issue_agent(dir, &id, &forced).unwrap();
    assert_ne!(fs::read(&second.key).unwrap(), key_before);
    assert_eq!(mode(&second.key), 0o600);
    assert_ne!(second.serial, first.serial);
    assert_verifies(&files.root_cert, &files.issuing_cert, &second.cert, &[]);
}

#[test]
fn out_dir_and_custom_days() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let files = init(&dir);
    let out = tmp.path().join("leaves");
    let opts = IssueOptions {
        days: Some(3),
        out_dir: Some(out.clone()),
        force: false,
    };
    let issued = ferrule_certs::issue_server(&dir, &["::1".to_owned()], &opts).unwrap();
    assert_eq!(issued.cert, out.join("server-__1.crt"));
    assert!(san(&issued.cert).contains("IP Address:0:0:0:0:0:0:0:1"));
    let info = &ferrule_certs::inspect(&fs::read(&issued.cert).unwrap()).unwrap()[0];
    assert!((2..=3).contains(&info.days_left(OffsetDateTime::now_utc())));
    assert_verifies(&files.root_cert, &files.issuing_cert, &issued.cert, &[]);

    let too_long = IssueOptions {
        days: Some(10_000),
        ..IssueOptions::default()
    };
    let err = ferrule_certs::issue_server(&dir, &["x.example".to_owned()], &too_long).unwrap_err();
    assert!(matches!(err, Error::OutlivesIssuer { .. }), "{err}");
    let zero = IssueOptions {
        days: Some(0),
        ..IssueOptions::default()
    };
    assert!(matches!(
        ferrule_certs::issue_server(&dir, &["x.example".to_owned()], &zero),
        Err(Error::InvalidDays { days: 0 })
    ));
}

#[test]
fn bundle_of_two_roots_verifies_leaves_from_both() {
    let tmp = tempfile::tempdir().unwrap();
    let old = init(&tmp.path().join("old"));
    let new = init(&tmp.path().join("new"));
    let id = AgentIdentity::new("site", "agent").unwrap();
    let old_leaf = ferrule_certs::issue_agent(&old.dir, &id, &IssueOptions::default()).unwrap();
    let new_leaf = ferrule_certs::issue_agent(&new.dir, &id, &IssueOptions::default()).unwrap();

    let out = tmp.path().join("trust.pem");
    let inputs: Vec<PathBuf> = vec![
        old.bundle.clone(),
        new.root_cert.clone(),
        old.root_cert.clone(),
    ];
    let report = ferrule_certs::bundle(&out, &inputs, false).unwrap();
    assert_eq!(report.included.len(), 2);
    assert_eq!(report.duplicates, 1);
    assert_eq!(cert_count(&out), 2);
    assert_verifies(&out, &old.issuing_cert, &old_leaf.cert, &[]);
    assert_verifies(&out, &new.issuing_cert, &new_leaf.cert, &[]);
    // Each old bundle alone does not trust the other CA's leaves.
    assert_rejected(&old.bundle, &new.issuing_cert, &new_leaf.cert, &[]);

    // Not overwritten without force; leaves are rejected as bundle members.
    assert!(matches!(
        ferrule_certs::bundle(&out, &inputs, false),
        Err(Error::AlreadyExists { .. })
    ));
    let bad =
        ferrule_certs::bundle(&tmp.path().join("bad.pem"), &[&new_leaf.cert], false).unwrap_err();
    assert!(matches!(bad, Error::NotCa { .. }), "{bad}");
    assert!(!tmp.path().join("bad.pem").exists());
}

#[test]
fn identity_parsing_for_the_aggregator() {
    let id = AgentIdentity::from_uri("ferrule://site/berlin-2/agent/gw.01").unwrap();
    assert_eq!(id.site(), "berlin-2");
    assert_eq!(id.agent(), "gw.01");
    for bad in [
        "",
        "ferrule://site/a b/agent/c",
        "ferrule://site/a/agent/c/d",
    ] {
        assert!(AgentIdentity::from_uri(bad).is_err(), "{bad}");
    }
    let long = "x".repeat(65);
    let err = AgentIdentity::new(&long, "a").unwrap_err();
    assert!(err.to_string().contains("longer than 64"), "{err}");
    assert!(AgentIdentity::new("", "a").is_err());
    assert!(AgentIdentity::new("a", "b/c").is_err());
}

#[test]
fn operating_on_a_missing_dir_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let id = AgentIdentity::new("s", "a").unwrap();
    let err = ferrule_certs::issue_agent(&missing, &id, &IssueOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NoCaDir { .. }), "{err}");
    assert!(err.to_string().contains("init"), "{err}");
    assert!(ferrule_certs::revoke(
        &missing,
        &Serial::parse("01").unwrap(),
        RevocationReason::Unspecified
    )
    .is_err());
    assert!(ferrule_certs::refresh_crl(&missing).is_err());
    assert!(!missing.exists(), "a failed command created the directory");
}
