//! A network namespace for the aggregator, joined to this one by a veth pair,
//! so the `partition` and `packet-loss` faults cut or thin the path between
//! the agents and the aggregator and nothing else on the machine: the rules
//! are nftables rules inside the namespace, on its end of the pair. Needs root
//! (`ip netns`, `nft`). Removed on drop.
//!
//! `tc netem` (latency, reordering) is not used: this machine's kernel has no
//! `sch_netem` ("Specified qdisc kind is unknown"); dropping, all or at random,
//! is what nftables gives everywhere.

use anyhow::{bail, Context};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Namespaces made by this process so far: each gets its own names and /30.
static MADE: AtomicU32 = AtomicU32::new(0);

/// The namespace, its veth pair and nftables table.
pub struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    host: Ipv4Addr,
    inside: Ipv4Addr,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Creates the namespace with loopback up, the veth pair addressed as a
    /// /30 in 10.201.0.0/16, and an empty nftables table with input and
    /// output chains inside.
    pub fn create() -> anyhow::Result<Self> {
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names: at most 15 bytes.
        let tag = format!("{:x}", (pid << 4 | (n & 0xf)) & 0xff_ffff);
        // A /30 from the pid and the count, so concurrent runs do not clash.
        let block = (pid.wrapping_mul(16).wrapping_add(n)) % 16_384;
        let base = u32::from(Ipv4Addr::new(10, 201, 0, 0)) + block * 4;
        let ns = Self {
            name: format!("ferrule-{tag}"),
            host_if: format!("fh{tag}"),
            ns_if: format!("fn{tag}"),
            host: Ipv4Addr::from(base + 1),
            inside: Ipv4Addr::from(base + 2),
        };
        run(&["ip", "netns", "add", &ns.name]).context(
            "creating a network namespace (the partition and packet-loss faults need root and iproute2)",
        )?;
        // From here on, drop cleans up whatever was made.
        let (h, i) = (format!("{}/30", ns.host), format!("{}/30", ns.inside));
        for step in [
            vec![
                "ip",
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns.ns_if,
            ],
            vec!["ip", "link", "set", &ns.ns_if, "netns", &ns.name],
            vec!["ip", "addr", "add", &h, "dev", &ns.host_if],
            vec!["ip", "link", "set", &ns.host_if, "up"],
            vec!["ip", "-n", &ns.name, "addr", "add", &i, "dev", &ns.ns_if],
            vec!["ip", "-n", &ns.name, "link", "set", &ns.ns_if, "up"],
            vec!["ip", "-n", &ns.name, "link", "set", "lo", "up"],
        ] {
            run(&step)?;
        }
        ns.nft(&["add", "table", "inet", "ferrule"])?;
        for (chain, hook) in [("in", "input"), ("out", "output")] {
            ns.nft(&[
                "add",
                "chain",
                "inet",
                "ferrule",
                chain,
                &format!("{{ type filter hook {hook} priority 0; }}"),
            ])?;
        }
        Ok(ns)
    }

    fn nft(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut v = vec!["ip", "netns", "exec", &self.name, "nft"];
        v.extend_from_slice(args);
        run(&v).context("nftables in the namespace (needs nft)")
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address inside the namespace (the aggregator listens on it).
    pub fn inside(&self) -> Ipv4Addr {
        self.inside
    }

    /// This side's address of the pair.
    pub fn host(&self) -> Ipv4Addr {
        self.host
    }

    /// Drops `percent` of the packets crossing the pair, each way, at random
    /// (100: a partition). Replaces what was set before.
    pub fn drop_percent(&self, percent: u32) -> anyhow::Result<()> {
        self.heal()?;
        if percent == 0 {
            return Ok(());
        }
        for (chain, dir) in [("in", "iifname"), ("out", "oifname")] {
            let mut rule = vec!["add", "rule", "inet", "ferrule", chain, dir, &self.ns_if];
            let pct = format!("{}", percent.min(100));
            if percent < 100 {
                rule.extend_from_slice(&["numgen", "random", "mod", "100", "<", &pct]);
            }
            rule.push("drop");
            self.nft(&rule)?;
        }
        Ok(())
    }

    /// Every packet through again.
    pub fn heal(&self) -> anyhow::Result<()> {
        for chain in ["in", "out"] {
            self.nft(&["flush", "chain", "inet", "ferrule", chain])?;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end deletes the pair; the namespace goes with its name.
        let _ = run(&["ip", "link", "del", &self.host_if]);
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}
