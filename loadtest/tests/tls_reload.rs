//! Certificates changed under a running aggregator, with real parts: the real
//! `ferrule-aggregator` and `ferrule-agent` binaries, certificates from the
//! `ferrule-certs` library, and a probe that makes a real QUIC + mutual TLS
//! handshake and reads the serial the aggregator presents. A rotation is
//! judged by that serial, never by the aggregator's own word.
//!
//! - The server certificate is rotated every 3 s for two minutes, by the
//!   symlink swap Kubernetes and cert-manager do, while two agents stream:
//!   every handshake after a swap sees the new serial, no agent's connection
//!   drops, every event arrives.
//! - Each bad rotation (a key that is not the certificate's, an expired
//!   certificate, one for other names, one from a foreign CA, a truncated
//!   file) is refused, counted by reason, and the old certificate keeps
//!   serving.
//! - An agent revoked by a new CRL is cut off within the reload interval
//!   (`certificate_revoked`), its new handshakes fail, its unacknowledged
//!   batches stay in its spool; the other agent carries on.
//!
//! Run by `scripts/test.sh` with `--ignored`.

#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)]

use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs::{self, AgentSpec, Proc};
use ferrule_transport::{client_crypto, client_endpoint, ClientTls, EndpointLimits};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Rig {
    tmp: tempfile::TempDir,
    pki: DevPki,
    /// The directory the aggregator's certificate paths point into
    /// (`live/tls.crt` -> `..data/tls.crt`, `..data` -> a versioned dir).
    live: PathBuf,
    quic: SocketAddr,
    metrics: SocketAddr,
    agg: Option<Proc>,
    agents: Vec<(String, SocketAddr, Proc)>,
    version: u32,
}

fn issue_server(pki: &DevPki, names: &[&str], out: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(out).unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let issued = ferrule_certs::issue_server(
        &pki.dir,
        &names,
        &ferrule_certs::IssueOptions {
            days: Some(30),
            out_dir: Some(out.to_path_buf()),
            force: true,
        },
    )
    .unwrap();
    (issued.cert, issued.key)
}

impl Rig {
    fn new(agent_ids: &[&str], total_samples: Option<u64>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let pki = DevPki::ensure(&root.join("pki")).unwrap();
        let live = root.join("live");
        std::fs::create_dir_all(&live).unwrap();
        let mut rig = Self {
            pki,
            live,
            quic: ([127, 0, 0, 1], procs::free_udp_port().unwrap()).into(),
            metrics: ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into(),
            agg: None,
            agents: Vec::new(),
            version: 0,
            tmp,
        };
        let (c, k) = (rig.pki.server_cert(), rig.pki.server_key());
        rig.swap_in(&std::fs::read(c).unwrap(), &std::fs::read(k).unwrap());
        std::os::unix::fs::symlink("..data/tls.crt", rig.live.join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", rig.live.join("tls.key")).unwrap();
        let toml = procs::aggregator_toml(
            &rig.pki,
            &root.join("data"),
            rig.quic,
            Some(rig.metrics),
            "",
        )
        .replace(
            &format!("{:?}", rig.pki.server_cert().display().to_string()),
            &format!("{:?}", rig.live.join("tls.crt").display().to_string()),
        )
        .replace(
            &format!("{:?}", rig.pki.server_key().display().to_string()),
            &format!("{:?}", rig.live.join("tls.key").display().to_string()),
        )
        .replace("[tls]\n", "[tls]\nreload_interval_secs = 1\n");
        let cfg = root.join("aggregator.toml");
        std::fs::write(&cfg, toml).unwrap();
        rig.agg = Some(
            Proc::start(
                "aggregator",
                &procs::bin("ferrule-aggregator").unwrap(),
                &cfg,
                &root.join("aggregator.log"),
            )
            .unwrap(),
        );
        let m = rig.metrics;
        procs::wait_for(Duration::from_secs(20), || {
            procs::http_get(m, "/metrics").ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "the aggregator never answered:\n{}",
                rig.log("aggregator.log")
            )
        });
        for id in agent_ids {
            let metrics: SocketAddr = ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into();
            let spec = AgentSpec {
                site: "plant-1".into(),
                id: id.to_string(),
                spool: root.join(format!("spool-{id}")),
                endpoints: vec![rig.quic.to_string()],
                rate_hz: 100,
                total_samples,
                fsync: "interval",
                metrics: Some(metrics),
                extra: String::new(),
            };
            let path = root.join(format!("agent-{id}.toml"));
            std::fs::write(&path, procs::agent_toml(&rig.pki, &spec).unwrap()).unwrap();
            let p = Proc::start(
                id,
                &procs::bin("ferrule-agent").unwrap(),
                &path,
                &root.join(format!("agent-{id}.log")),
            )
            .unwrap();
            rig.agents.push((id.to_string(), metrics, p));
        }
        rig
    }

    /// SIGKILLs the aggregator and starts it again on the same config.
    fn restart_aggregator(&mut self) {
        if let Some(mut p) = self.agg.take() {
            p.kill9();
        }
        let root = self.tmp.path();
        self.agg = Some(
            Proc::start(
                "aggregator",
                &procs::bin("ferrule-aggregator").unwrap(),
                &root.join("aggregator.toml"),
                &root.join("aggregator-2.log"),
            )
            .unwrap(),
        );
    }

    fn log(&self, name: &str) -> String {
        let t = std::fs::read_to_string(self.tmp.path().join(name)).unwrap_or_default();
        let tail: Vec<&str> = t.lines().rev().take(25).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Puts `cert` and `key` in service the Kubernetes way: a new versioned
    /// directory, then `..data` swapped to it in one rename.
    fn swap_in(&mut self, cert: &[u8], key: &[u8]) {
        self.version += 1;
        let v = self.live.join(format!("..v{}", self.version));
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(v.join("tls.crt"), cert).unwrap();
        std::fs::write(v.join("tls.key"), key).unwrap();
        let tmp = self.live.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("..v{}", self.version), &tmp).unwrap();
        std::fs::rename(&tmp, self.live.join("..data")).unwrap();
    }

    fn metric(&self, series: &str) -> f64 {
        let t = procs::http_get(self.metrics, "/metrics").unwrap_or_default();
        procs::metric(&t, series).unwrap_or(0.0)
    }

    /// The sum of every series of `name` (all label sets).
    fn metric_sum(&self, name: &str) -> f64 {
        let t = procs::http_get(self.metrics, "/metrics").unwrap_or_default();
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn agent_metric(&self, i: usize, series: &str) -> f64 {
        let t = procs::http_get(self.agents[i].1, "/metrics").unwrap_or_default();
        procs::metric(&t, series).unwrap_or(0.0)
    }
}

/// The serial of the certificate the aggregator presents to a new handshake
/// (as agent `plant-1/probe`), or the handshake's error.
fn probe(
    rt: &tokio::runtime::Runtime,
    pki: &DevPki,
    addr: SocketAddr,
    id: &str,
) -> Result<String, String> {
    let (cert, key) = pki.agent("plant-1", id).unwrap();
    let crypto = client_crypto(
        &ClientTls {
            cert,
            key,
            server_ca: pki.ca_bundle(),
        },
        &ferrule_transport::Refusals::new(),
    )
    .unwrap();
    rt.block_on(async {
        let ep = client_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            crypto,
            &EndpointLimits::default(),
        )
        .unwrap();
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            ep.connect(addr, "localhost").unwrap(),
        )
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
        // A refused client certificate shows after the handshake, as a close.
        let closed = tokio::time::timeout(Duration::from_millis(300), conn.closed()).await;
        if let Ok(e) = closed {
            return Err(e.to_string());
        }
        let chain = conn
            .peer_identity()
            .unwrap()
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .unwrap();
        let path = std::env::temp_dir().join(format!("probe-{}-{id}.crt", std::process::id()));
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                chain[0].as_ref()
            )
        );
        std::fs::write(&path, pem).unwrap();
        let serial = ferrule_transport::leaf_summary(&path).unwrap().serial;
        let _ = std::fs::remove_file(&path);
        conn.close(0u32.into(), b"probe done");
        ep.wait_idle().await;
        Ok(serial)
    })
}

fn serial_of(path: &Path) -> String {
    ferrule_transport::leaf_summary(path).unwrap().serial
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn the_server_certificate_rotates_under_load_and_bad_ones_are_refused() {
    // 7 sensors at 100 Hz: 100 000 samples each is about 143 s, the whole
    // rotation run.
    const TOTAL: u64 = 100_000;
    let mut rig = Rig::new(&["a1", "a2"], Some(TOTAL));
    let rt = tokio::runtime::Runtime::new().unwrap();
    procs::wait_for(Duration::from_secs(20), || {
        (rig.metric("ferrule_aggregator_sessions") == 2.0).then_some(())
    })
    .unwrap_or_else(|| panic!("agents never connected:\n{}", rig.log("aggregator.log")));
    let first = probe(&rt, &rig.pki, rig.quic, "probe").unwrap();
    assert_eq!(first, serial_of(&rig.pki.server_cert()));

    // Good rotations every 3 s for two minutes.
    let start = Instant::now();
    let mut rotations = 0;
    let mut serving = first;
    while start.elapsed() < Duration::from_secs(120) {
        let out = rig.tmp.path().join(format!("issue-{rotations}"));
        let (c, k) = issue_server(&rig.pki, &["localhost", "127.0.0.1"], &out);
        let want = serial_of(&c);
        rig.swap_in(&std::fs::read(&c).unwrap(), &std::fs::read(&k).unwrap());
        let seen = procs::wait_for(Duration::from_secs(5), || {
            probe(&rt, &rig.pki, rig.quic, "probe")
                .ok()
                .filter(|s| *s == want)
        });
        assert!(
            seen.is_some(),
            "rotation {rotations}: new handshakes never saw serial {want}\n{}",
            rig.log("aggregator.log")
        );
        serving = want;
        rotations += 1;
        std::thread::sleep(Duration::from_secs(3).saturating_sub(Duration::from_millis(500)));
    }
    println!(
        "{rotations} rotations in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(
        rig.metric("ferrule_aggregator_tls_reloads_total{outcome=\"applied\"}"),
        rotations as f64
    );
    // No agent's session dropped: each has had exactly one.
    for i in 0..rig.agents.len() {
        assert_eq!(
            rig.agent_metric(i, "ferrule_agent_sessions_total"),
            1.0,
            "agent {} reconnected",
            rig.agents[i].0
        );
    }

    // Bad rotations: each refused, by reason, and the last good one serves on.
    let good_c = std::fs::read(rig.live.join("tls.crt")).unwrap();
    let good_k = std::fs::read(rig.live.join("tls.key")).unwrap();
    let other = issue_server(
        &rig.pki,
        &["localhost", "127.0.0.1"],
        &rig.tmp.path().join("other"),
    );
    let wrong_name = issue_server(
        &rig.pki,
        &["elsewhere.example"],
        &rig.tmp.path().join("wrong"),
    );
    let foreign_pki = DevPki::ensure(&rig.tmp.path().join("foreign")).unwrap();
    let expired = expired_server(&rig.pki, &rig.tmp.path().join("expired"));
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "key_mismatch",
            std::fs::read(&other.0).unwrap(),
            good_k.clone(),
        ),
        (
            "expired",
            std::fs::read(&expired.0).unwrap(),
            std::fs::read(&expired.1).unwrap(),
        ),
        (
            "names_dropped",
            std::fs::read(&wrong_name.0).unwrap(),
            std::fs::read(&wrong_name.1).unwrap(),
        ),
        (
            "untrusted",
            std::fs::read(foreign_pki.server_cert()).unwrap(),
            std::fs::read(foreign_pki.server_key()).unwrap(),
        ),
        (
            "unreadable",
            good_c[..good_c.len() / 2].to_vec(),
            good_k.clone(),
        ),
    ];
    for (reason, c, k) in cases {
        let series = format!("ferrule_aggregator_tls_reload_refused_total{{reason=\"{reason}\"}}");
        let before = rig.metric(&series);
        rig.swap_in(&c, &k);
        procs::wait_for(Duration::from_secs(5), || {
            (rig.metric(&series) > before).then_some(())
        })
        .unwrap_or_else(|| panic!("{reason}: not refused\n{}", rig.log("aggregator.log")));
        assert_eq!(
            probe(&rt, &rig.pki, rig.quic, "probe").unwrap(),
            serving,
            "{reason}: the old certificate must keep serving"
        );
    }
    // Good again: taken.
    let (c, k) = issue_server(
        &rig.pki,
        &["localhost", "127.0.0.1"],
        &rig.tmp.path().join("last"),
    );
    let want = serial_of(&c);
    rig.swap_in(&std::fs::read(&c).unwrap(), &std::fs::read(&k).unwrap());
    procs::wait_for(Duration::from_secs(5), || {
        probe(&rt, &rig.pki, rig.quic, "probe")
            .ok()
            .filter(|s| *s == want)
    })
    .expect("a good certificate after bad ones is taken");
    // Every event the agents generated arrived, committed once.
    let all = procs::wait_for(Duration::from_secs(90), || {
        (rig.metric_sum("ferrule_aggregator_committed_samples_total") >= (2 * TOTAL) as f64)
            .then_some(())
    });
    assert!(
        all.is_some(),
        "committed {} of {}\n{}",
        rig.metric_sum("ferrule_aggregator_committed_samples_total"),
        2 * TOTAL,
        rig.log("aggregator.log")
    );
    assert_eq!(
        rig.metric_sum("ferrule_aggregator_committed_samples_total"),
        (2 * TOTAL) as f64
    );
    for i in 0..rig.agents.len() {
        assert_eq!(
            rig.agent_metric(i, "ferrule_agent_spool_unacked_batches"),
            0.0
        );
        assert_eq!(
            rig.agent_metric(i, "ferrule_agent_sessions_total"),
            1.0,
            "agent {} reconnected",
            rig.agents[i].0
        );
    }
    assert_eq!(
        rig.metric_sum("ferrule_aggregator_commit_failures_total"),
        0.0
    );
}

/// A server certificate for localhost that expired yesterday (signed by the
/// dev PKI's issuing CA, as `ferrule-certs` never would).
fn expired_server(pki: &DevPki, out: &Path) -> (PathBuf, PathBuf) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    std::fs::create_dir_all(out).unwrap();
    let ca_pem = std::fs::read_to_string(pki.issuing_ca()).unwrap();
    let ca_key = std::fs::read_to_string(pki.dir.join("issuing-ca.key")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key).unwrap()).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(10);
    params.not_after = now - time::Duration::days(1);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (c, k) = (out.join("tls.crt"), out.join("tls.key"));
    std::fs::write(&c, format!("{}\n{ca_pem}", cert.pem())).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn a_revoked_agent_is_cut_off_within_the_interval_and_the_other_carries_on() {
    let rig = Rig::new(&["a1", "a2"], None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    procs::wait_for(Duration::from_secs(20), || {
        (rig.metric("ferrule_aggregator_sessions") == 2.0).then_some(())
    })
    .unwrap_or_else(|| panic!("agents never connected:\n{}", rig.log("aggregator.log")));
    // Revoke a1.
    let (cert, _) = rig.pki.agent_paths("plant-1", "a1");
    let serial = ferrule_certs::Serial::parse(&serial_of(&cert)).unwrap();
    let t0 = Instant::now();
    ferrule_certs::revoke(
        &rig.pki.dir,
        &serial,
        ferrule_certs::RevocationReason::KeyCompromise,
    )
    .unwrap();
    procs::wait_for(Duration::from_secs(5), || {
        (rig.metric("ferrule_aggregator_sessions_revoked_total") == 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("a1 was not cut off:\n{}", rig.log("aggregator.log")));
    let cut_after = t0.elapsed();
    println!(
        "a1 cut off {:.1} s after the CRL changed (reload interval 1 s)",
        cut_after.as_secs_f64()
    );
    assert!(cut_after < Duration::from_secs(4), "{cut_after:?}");
    // Its new handshakes fail (it keeps trying); the other carries on.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        rig.metric("ferrule_aggregator_sessions"),
        1.0,
        "only a2 is connected"
    );
    assert_eq!(rig.agent_metric(0, "ferrule_agent_uplink_up"), 0.0);
    assert_eq!(rig.agent_metric(1, "ferrule_agent_uplink_up"), 1.0);
    let a2_before = rig.agent_metric(1, "ferrule_agent_acked_batches_total");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        rig.agent_metric(1, "ferrule_agent_acked_batches_total") > a2_before,
        "a2 still streams"
    );
    // a1 keeps what was not acknowledged.
    assert!(rig.agent_metric(0, "ferrule_agent_spool_unacked_batches") > 0.0);
    // A handshake with a1's certificate is refused now.
    let refused = probe(&rt, &rig.pki, rig.quic, "a1");
    assert!(refused.is_err(), "a revoked certificate still gets in");
    let log = std::fs::read_to_string(rig.tmp.path().join("agent-a1.log")).unwrap_or_default();
    assert!(
        log.contains("revoked"),
        "a1's log says why:\n{}",
        rig.log("agent-a1.log")
    );
}

/// The agent takes its renewed certificate on its next connection: a1's
/// certificate is reissued (same identity, new key and serial) and the old
/// serial revoked; cut off, a1 reconnects with the new one. a2's key is
/// replaced by one that is not its certificate's: refused, a2 reconnects
/// with its old material after the aggregator restarts.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn an_agent_takes_its_renewed_certificate_and_refuses_a_bad_one() {
    let mut rig = Rig::new(&["a1", "a2"], None);
    procs::wait_for(Duration::from_secs(20), || {
        (rig.metric("ferrule_aggregator_sessions") == 2.0).then_some(())
    })
    .unwrap_or_else(|| panic!("agents never connected:\n{}", rig.log("aggregator.log")));
    let (cert, _) = rig.pki.agent_paths("plant-1", "a1");
    let old = serial_of(&cert);
    // Renew: the same identity, new key and serial, over the same files.
    let identity = ferrule_certs::AgentIdentity::new("plant-1", "a1").unwrap();
    let renewed = ferrule_certs::issue_agent(
        &rig.pki.dir,
        &identity,
        &ferrule_certs::IssueOptions {
            days: Some(30),
            out_dir: None,
            force: true,
        },
    )
    .unwrap();
    let new = renewed.serial.to_hex();
    assert_ne!(old.to_lowercase(), new.to_lowercase());
    // The old certificate revoked: a1 is cut off and comes back with the new.
    ferrule_certs::revoke(
        &rig.pki.dir,
        &ferrule_certs::Serial::parse(&old).unwrap(),
        ferrule_certs::RevocationReason::Superseded,
    )
    .unwrap();
    let back = procs::wait_for(Duration::from_secs(20), || {
        let log =
            std::fs::read_to_string(rig.tmp.path().join("aggregator.log")).unwrap_or_default();
        log.lines()
            .any(|l| {
                l.contains("agent connected")
                    && l.contains("plant-1/a1")
                    && l.to_lowercase().contains(&new.to_lowercase())
            })
            .then_some(())
    });
    assert!(
        back.is_some(),
        "a1 never came back with serial {new}:\n{}\n{}",
        rig.log("aggregator.log"),
        rig.log("agent-a1.log")
    );
    assert_eq!(
        rig.agent_metric(0, "ferrule_agent_tls_reloads_total{outcome=\"applied\"}"),
        1.0
    );
    procs::wait_for(Duration::from_secs(10), || {
        (rig.metric("ferrule_aggregator_sessions") == 2.0).then_some(())
    })
    .expect("both agents connected again");

    // a2's key replaced by another: refused when a2 next connects.
    let (_, a2_key) = rig.pki.agent_paths("plant-1", "a2");
    let (_, a1_key) = rig.pki.agent_paths("plant-1", "a1");
    let good_key = std::fs::read(&a2_key).unwrap();
    std::fs::write(&a2_key, std::fs::read(&a1_key).unwrap()).unwrap();
    rig.restart_aggregator();
    let refused = procs::wait_for(Duration::from_secs(20), || {
        (rig.agent_metric(
            1,
            "ferrule_agent_tls_reload_refused_total{reason=\"key_mismatch\"}",
        ) == 1.0)
            .then_some(())
    });
    assert!(
        refused.is_some(),
        "a2 did not refuse the bad key:\n{}",
        rig.log("agent-a2.log")
    );
    procs::wait_for(Duration::from_secs(20), || {
        (rig.metric("ferrule_aggregator_sessions") == 2.0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "a2 did not reconnect on its old material:\n{}",
            rig.log("agent-a2.log")
        )
    });
    std::fs::write(&a2_key, good_key).unwrap();
}

/// Writes `bytes` to `path` by a rename over it (as a deploy tool would).
fn put(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn cat(paths: &[PathBuf]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(std::fs::read(p).unwrap());
        out.push(b'\n');
    }
    out
}

/// A fleet walked from CA 1 to CA 2 while it streams: both roots in every
/// trust bundle (and both CAs' CRLs at the aggregator), a server certificate
/// from CA 2, the agents renewed under CA 2 one by one (each moved over by
/// revoking its CA 1 certificate), then CA 1 removed everywhere. Nothing is
/// lost: every generated sample is committed once.
#[test]
#[ignore = "long: run by scripts/test.sh with --ignored"]
fn a_fleet_rolls_from_one_ca_to_another_losing_nothing() {
    const TOTAL: u64 = 28_000; // 7 sensors at 100 Hz: 40 s each
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let ca1 = DevPki::ensure(&root.join("ca1")).unwrap();
    let ca2 = DevPki::ensure(&root.join("ca2")).unwrap();
    // What the peers read, in place: the aggregator's certificate, key,
    // agents' bundle and CRL; each agent's certificate, key and bundle.
    let live = root.join("live");
    std::fs::create_dir_all(&live).unwrap();
    let (srv_c, srv_k, agg_bundle, agg_crl) = (
        live.join("server.crt"),
        live.join("server.key"),
        live.join("agents-ca.crt"),
        live.join("crl.pem"),
    );
    put(&srv_c, &std::fs::read(ca1.server_cert()).unwrap());
    put(&srv_k, &std::fs::read(ca1.server_key()).unwrap());
    put(&agg_bundle, &std::fs::read(ca1.ca_bundle()).unwrap());
    put(&agg_crl, &std::fs::read(ca1.crl()).unwrap());
    let quic: SocketAddr = ([127, 0, 0, 1], procs::free_udp_port().unwrap()).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], procs::free_tcp_port().unwrap()).into();
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let toml = format!(
        "[server]\nlisten = \"{quic}\"\n\n[tls]\ncert = {}\nkey = {}\nclient_ca = {}\ncrl = {}\nreload_interval_secs = 1\n\n[log]\ndir = {}\n\n[metrics]\nlisten = \"{metrics}\"\n",
        q(&srv_c),
        q(&srv_k),
        q(&agg_bundle),
        q(&agg_crl),
        q(&root.join("data")),
    );
    std::fs::write(root.join("aggregator.toml"), toml).unwrap();
    let _agg = Proc::start(
        "aggregator",
        &procs::bin("ferrule-aggregator").unwrap(),
        &root.join("aggregator.toml"),
        &root.join("aggregator.log"),
    )
    .unwrap();
    let log = |name: &str| std::fs::read_to_string(root.join(name)).unwrap_or_default();
    let metric_sum = |name: &str| -> f64 {
        let t = procs::http_get(metrics, "/metrics").unwrap_or_default();
        t.lines()
            .filter(|l| {
                l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    procs::wait_for(Duration::from_secs(20), || {
        procs::http_get(metrics, "/metrics").ok()
    })
    .unwrap_or_else(|| panic!("the aggregator never answered:\n{}", log("aggregator.log")));
    let ids = ["a1", "a2", "a3"];
    let mut agents = Vec::new();
    for id in ids {
        let dir = live.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = ca1.agent("plant-1", id).unwrap();
        put(&dir.join("agent.crt"), &std::fs::read(&c).unwrap());
        put(&dir.join("agent.key"), &std::fs::read(&k).unwrap());
        put(
            &dir.join("ca.crt"),
            &std::fs::read(ca1.ca_bundle()).unwrap(),
        );
        let spec = AgentSpec {
            site: "plant-1".into(),
            id: id.into(),
            spool: root.join(format!("spool-{id}")),
            endpoints: vec![quic.to_string()],
            rate_hz: 100,
            total_samples: Some(TOTAL),
            fsync: "interval",
            metrics: None,
            extra: String::new(),
        };
        let toml = procs::agent_toml(&ca1, &spec)
            .unwrap()
            .replace(&q(&c), &q(&dir.join("agent.crt")))
            .replace(&q(&k), &q(&dir.join("agent.key")))
            .replace(&q(&ca1.ca_bundle()), &q(&dir.join("ca.crt")));
        std::fs::write(root.join(format!("agent-{id}.toml")), toml).unwrap();
        agents.push(
            Proc::start(
                id,
                &procs::bin("ferrule-agent").unwrap(),
                &root.join(format!("agent-{id}.toml")),
                &root.join(format!("agent-{id}.log")),
            )
            .unwrap(),
        );
    }
    let sessions = || metric_sum("ferrule_aggregator_sessions");
    procs::wait_for(Duration::from_secs(20), || {
        (sessions() == 3.0).then_some(())
    })
    .unwrap_or_else(|| panic!("agents never connected:\n{}", log("aggregator.log")));
    let applied = || metric_sum("ferrule_aggregator_tls_reloads_total{outcome=\"applied\"}");

    // 1. Both roots trusted everywhere; both CAs' CRLs at the aggregator.
    let before = applied();
    put(&agg_bundle, &cat(&[ca1.ca_bundle(), ca2.ca_bundle()]));
    put(&agg_crl, &cat(&[ca1.crl(), ca2.crl()]));
    for id in ids {
        put(
            &live.join(id).join("ca.crt"),
            &cat(&[ca1.ca_bundle(), ca2.ca_bundle()]),
        );
    }
    procs::wait_for(Duration::from_secs(10), || {
        (applied() > before).then_some(())
    })
    .unwrap_or_else(|| panic!("both roots not taken:\n{}", log("aggregator.log")));
    // 2. A server certificate from CA 2.
    let before = applied();
    put(&srv_k, &std::fs::read(ca2.server_key()).unwrap());
    put(&srv_c, &std::fs::read(ca2.server_cert()).unwrap());
    procs::wait_for(Duration::from_secs(10), || {
        (applied() > before).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "CA 2's server certificate not taken:\n{}",
            log("aggregator.log")
        )
    });
    // 3. Each agent renewed under CA 2, moved over by revoking its CA 1 one.
    for (i, id) in ids.iter().enumerate() {
        let dir = live.join(id);
        let old = serial_of(&dir.join("agent.crt"));
        let (c, k) = ca2.agent("plant-1", id).unwrap();
        let new = serial_of(&c);
        put(&dir.join("agent.key"), &std::fs::read(&k).unwrap());
        put(&dir.join("agent.crt"), &std::fs::read(&c).unwrap());
        ferrule_certs::revoke(
            &ca1.dir,
            &ferrule_certs::Serial::parse(&old).unwrap(),
            ferrule_certs::RevocationReason::Superseded,
        )
        .unwrap();
        put(&agg_crl, &cat(&[ca1.crl(), ca2.crl()]));
        procs::wait_for(Duration::from_secs(20), || {
            log("aggregator.log")
                .lines()
                .any(|l| {
                    l.contains("agent connected")
                        && l.contains(&format!("plant-1/{id}"))
                        && l.contains(&new)
                })
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "agent {i} ({id}) never came back under CA 2:\n{}\n{}",
                log("aggregator.log"),
                log(&format!("agent-{id}.log"))
            )
        });
    }
    // 4. CA 1 removed everywhere.
    let before = applied();
    put(&agg_bundle, &std::fs::read(ca2.ca_bundle()).unwrap());
    put(&agg_crl, &std::fs::read(ca2.crl()).unwrap());
    for id in ids {
        put(
            &live.join(id).join("ca.crt"),
            &std::fs::read(ca2.ca_bundle()).unwrap(),
        );
    }
    procs::wait_for(Duration::from_secs(10), || {
        (applied() > before).then_some(())
    })
    .unwrap_or_else(|| panic!("CA 1's removal not taken:\n{}", log("aggregator.log")));
    procs::wait_for(Duration::from_secs(10), || {
        (sessions() == 3.0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not every agent is connected under CA 2:\n{}",
            log("aggregator.log")
        )
    });
    // Nothing lost.
    let all = procs::wait_for(Duration::from_secs(90), || {
        (metric_sum("ferrule_aggregator_committed_samples_total") >= (3 * TOTAL) as f64)
            .then_some(())
    });
    assert!(
        all.is_some(),
        "committed {} of {}",
        metric_sum("ferrule_aggregator_committed_samples_total"),
        3 * TOTAL
    );
    assert_eq!(
        metric_sum("ferrule_aggregator_committed_samples_total"),
        (3 * TOTAL) as f64
    );
    assert_eq!(metric_sum("ferrule_aggregator_commit_failures_total"), 0.0);
    drop(agents);
}
