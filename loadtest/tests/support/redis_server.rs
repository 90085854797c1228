//! A throwaway `redis-server` (or a three-master cluster) started by
//! `scripts/redis.sh` on free loopback ports and stopped on drop, shared by the
//! test files that need a real Redis (`mod support;`).

#![allow(dead_code)]

use ferrule_loadtest::devpki::DevPki;
use ferrule_loadtest::procs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn redis_sh(args: &[&str]) -> String {
    let out = Command::new(repo().join("scripts/redis.sh"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("scripts/redis.sh: {e}"));
    assert!(
        out.status.success(),
        "scripts/redis.sh {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throwaway redis-server (or cluster), stopped on drop.
pub struct Redis {
    /// Its data directory (the handle `scripts/redis.sh` takes).
    pub dir: PathBuf,
    /// `redis://127.0.0.1:PORT` (`rediss://localhost:PORT` over TLS).
    pub url: String,
    /// For a TLS server: the CA bundle, and the test's client certificate and key.
    pub tls: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
}

impl Redis {
    pub fn start(dir: &Path) -> Self {
        let port = procs::free_tcp_port().unwrap().to_string();
        Self::from_output(dir, &redis_sh(&["start", dir.to_str().unwrap(), &port]))
    }

    /// TLS only, with the dev PKI's server certificate (for `localhost`).
    pub fn start_tls(dir: &Path, pki: &DevPki) -> Self {
        let port = procs::free_tcp_port().unwrap().to_string();
        let mut r = Self::from_output(
            dir,
            &redis_sh(&[
                "start",
                dir.to_str().unwrap(),
                &port,
                pki.server_cert().to_str().unwrap(),
                pki.server_key().to_str().unwrap(),
                pki.ca_bundle().to_str().unwrap(),
            ]),
        );
        let (cert, key) = pki.agent("redis-clients", "test-reader").unwrap();
        r.tls = Some((
            std::fs::read(pki.ca_bundle()).unwrap(),
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
        r
    }

    pub fn cluster(dir: &Path) -> Self {
        // Three consecutive free ports (and their cluster bus ports, +10000).
        let base = procs::free_port_block(&[0, 1, 2, 10_000, 10_001, 10_002])
            .unwrap_or_else(|e| panic!("{e}"));
        Self::from_output(
            dir,
            &redis_sh(&["start-cluster", dir.to_str().unwrap(), &base.to_string()]),
        )
    }

    pub fn from_output(dir: &Path, out: &str) -> Self {
        let url = out
            .lines()
            .find_map(|l| l.strip_prefix("url="))
            .unwrap_or_else(|| panic!("no url= line: {out:?}"))
            .to_string();
        Self {
            dir: dir.to_path_buf(),
            url,
            tls: None,
        }
    }

    pub fn conn(&self) -> redis::Connection {
        let client = match &self.tls {
            Some((ca, cert, key)) => redis::Client::build_with_tls(
                self.url.as_str(),
                redis::TlsCertificates {
                    client_tls: Some(redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.clone(),
                    }),
                    root_cert: Some(ca.clone()),
                },
            ),
            None => redis::Client::open(self.url.as_str()),
        };
        client
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap()
    }

    pub fn kill(&self) {
        redis_sh(&["kill", self.dir.to_str().unwrap()]);
    }

    pub fn restart(&self) {
        redis_sh(&["restart", self.dir.to_str().unwrap()]);
    }

    pub fn pause(&self) {
        redis_sh(&["pause", self.dir.to_str().unwrap()]);
    }

    pub fn resume(&self) {
        redis_sh(&["resume", self.dir.to_str().unwrap()]);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // A paused server must take SIGCONT to shut down.
        let _ = Command::new(repo().join("scripts/redis.sh"))
            .args(["resume", self.dir.to_str().unwrap_or("")])
            .output();
        let _ = Command::new(repo().join("scripts/redis.sh"))
            .args(["stop", self.dir.to_str().unwrap_or("")])
            .output();
    }
}
