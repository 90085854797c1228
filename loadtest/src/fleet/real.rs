//! Real `ferrule-agent` processes in the fleet, beside the simulated ones,
//! for the faults only a real agent can have: SIGKILL (`agent-kill`) and a
//! power cut that tears the spool's last write (`agent-power-cut`). Each runs
//! its synthetic three-phase feed into its own disk spool and forwards it to
//! the run's aggregator.
//!
//! A real agent keeps no ledger the run can read, so it is checked by
//! [`Continuity`] instead, from what the sink holds: every (epoch, seq) once;
//! no seq missing between an agent's first and last (its seqs are spool
//! offsets, numbered on across restarts and epochs, so batches spooled before
//! a kill and never resent leave a gap below the new epoch's); each sensor's
//! samples forward in time; no hole in any sensor's feed except one that spans
//! a kill and its restart; and every feed reaching the sink up to the end. A
//! batch lost anywhere fails the run. Pure bookkeeping; [`RealAgents`] starts,
//! kills and tears the processes.

use crate::devpki::DevPki;
use crate::procs::{self, AgentSpec, Proc};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The site the real agents' certificates name.
pub const SITE: &str = "site-real";

/// A stretch of a sensor's feed with no sample, at least this long (or
/// twenty sample periods of a slower feed), is a hole: far above the jitter
/// of the feed's 10 ms ticks.
pub const HOLE: Duration = Duration::from_millis(400);

/// How far before a kill a hole may start and still be the kill's: what the
/// agent had read and not yet written to its spool (its 50 ms batching
/// window and a feed tick), with room for a loaded machine.
pub const BEFORE_KILL: Duration = Duration::from_secs(2);

/// How far after the restart a hole may end and still be the kill's: the
/// agent's start (spool recovery, configuration) before its feed runs.
pub const AFTER_RESTART: Duration = Duration::from_secs(5);

/// How far past the kill a hole may start, or before the restart it may end,
/// and still span them: clocks read a moment apart.
pub const SPAN_SLACK: Duration = Duration::from_millis(200);

/// A feed whose last sample in the sink is older than this when the agents
/// were stopped did not get through to the end.
pub const STALE: Duration = Duration::from_secs(5);

/// What the sink holds for the real agents, checked.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RealVerdict {
    /// Real agents in the run.
    pub agents: usize,
    /// Their records in the sink.
    pub records: u64,
    /// Samples in those records.
    pub samples: u64,
    /// Epochs seen (one per start of an agent).
    pub epochs: usize,
    /// Records holding an (agent, epoch, seq) the sink already held.
    pub duplicates: u64,
    /// Seqs missing between an agent's first and last in the sink (any
    /// epoch): batches the agent spooled and never got through. Must be 0.
    pub seq_gaps: u64,
    /// Records whose samples go back in time against the same sensor's
    /// previous record.
    pub out_of_order: u64,
    /// Holes in a sensor's feed that span a kill and its restart: expected,
    /// one per kill per sensor.
    pub holes_at_kills: u64,
    /// Holes anywhere else: samples lost. Must be 0.
    pub holes_unexplained: u64,
    /// The longest hole at a kill, ms.
    pub longest_kill_hole_ms: u64,
    /// Sensors whose last sample in the sink is more than [`STALE`] older
    /// than the stop: the feed stopped getting through. Must be 0.
    pub stale_feeds: u64,
    /// Real agents with nothing in the sink. Must be 0.
    pub silent_agents: u64,
    /// The agents had not drained to a few batches in flight within the
    /// drain time when they were stopped.
    pub drain_timed_out: bool,
    /// Records the agents' spools held unacknowledged when they were
    /// stopped at the end (kept for their next start, not lost).
    pub held_in_spools: u64,
    /// Corrupt spool records the restarted agents found and counted.
    pub spool_corrupt_counted: u64,
    /// Times an agent logged that it recovered its spool from a torn tail
    /// (cut it off).
    pub spool_damage_recovered: u64,
    /// Bytes the power cut tore off the spool's last segment.
    pub torn_bytes: u64,
    /// The seq of the record whose write the power cut tore.
    pub torn_seq: Option<u64>,
    /// A few examples of what failed, to start looking.
    pub examples: Vec<String>,
}

impl RealVerdict {
    /// Why the real agents fail the run, one phrase per reason.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.drain_timed_out {
            f.push("the real agents did not drain before the end".into());
        }
        for (n, what) in [
            (self.silent_agents, "real agents with nothing in the sink"),
            (self.duplicates, "real-agent duplicates"),
            (self.seq_gaps, "real-agent batches missing"),
            (self.out_of_order, "real-agent records out of order"),
            (
                self.holes_unexplained,
                "holes in a real agent's feed away from a kill",
            ),
            (
                self.stale_feeds,
                "real-agent feeds that stopped getting through before the end",
            ),
        ] {
            if n > 0 {
                f.push(format!("{n} {what}"));
            }
        }
        f
    }
}

/// When an agent was down: from the kill to its restart, Unix ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Down {
    /// The agent.
    pub agent: usize,
    /// SIGKILL sent.
    pub killed_ns: i64,
    /// Started again.
    pub restarted_ns: i64,
}

/// Checks the real agents' records as the sink is read (any order of
/// agents; each agent's records in sink order).
#[derive(Debug, Default)]
pub struct Continuity {
    by_agent: HashMap<String, usize>,
    /// The shortest gap that is a hole, ns.
    hole_ns: i64,
    seen: HashMap<(usize, u64, u64), u8>,
    /// Per agent: every seq in the sink, any epoch.
    seqs: HashMap<usize, BTreeSet<u64>>,
    epochs: BTreeSet<(usize, u64)>,
    /// Per (agent, sensor name): the latest sample time so far.
    last_ts: HashMap<(usize, String), i64>,
    /// Per (agent, sensor name): (first, last) sample time of each record.
    spans: HashMap<(usize, String), Vec<(i64, i64)>>,
    verdict: RealVerdict,
}

impl Continuity {
    /// A checker for these agent ids, whose feeds run at `rate_hz` samples
    /// a second per sensor.
    pub fn new(agents: &[String], rate_hz: u32) -> Self {
        let period_ns = 1_000_000_000 / i64::from(rate_hz.max(1));
        Self {
            by_agent: agents
                .iter()
                .enumerate()
                .map(|(i, a)| (a.clone(), i))
                .collect(),
            hole_ns: (HOLE.as_nanos() as i64).max(20 * period_ns),
            verdict: RealVerdict {
                agents: agents.len(),
                ..RealVerdict::default()
            },
            ..Self::default()
        }
    }

    /// One record of `agent` (others are ignored): its epoch and seq, each
    /// series' (sensor name, first, last sample time) and its sample count.
    pub fn record(
        &mut self,
        agent: &str,
        epoch: u64,
        seq: u64,
        series: &[(String, i64, i64)],
        samples: u64,
    ) {
        let Some(&i) = self.by_agent.get(agent) else {
            return;
        };
        let v = &mut self.verdict;
        v.records += 1;
        let n = self.seen.entry((i, epoch, seq)).or_insert(0);
        *n = n.saturating_add(1);
        if *n > 1 {
            v.duplicates += 1;
            return;
        }
        v.samples += samples;
        self.seqs.entry(i).or_default().insert(seq);
        self.epochs.insert((i, epoch));
        let mut back = false;
        for (name, first, last) in series {
            let prev = self.last_ts.entry((i, name.clone())).or_insert(i64::MIN);
            if *first < *prev {
                back = true;
            }
            *prev = (*prev).max(*last);
            self.spans
                .entry((i, name.clone()))
                .or_default()
                .push((*first, *last));
        }
        if back {
            v.out_of_order += 1;
            example(
                &mut v.examples,
                format!("{agent} epoch {epoch} seq {seq} goes back in time"),
            );
        }
    }

    /// The verdict, given when each agent was down and when they were all
    /// stopped (Unix ns).
    pub fn finish(mut self, downs: &[Down], stopped_ns: i64) -> RealVerdict {
        let mut v = std::mem::take(&mut self.verdict);
        v.epochs = self.epochs.len();
        let names: HashMap<usize, String> =
            self.by_agent.iter().map(|(a, &i)| (i, a.clone())).collect();
        let name = |i: &usize| names.get(i).map_or("?", String::as_str).to_string();
        v.silent_agents = (0..v.agents).filter(|i| !self.seqs.contains_key(i)).count() as u64;
        for (i, seqs) in &self.seqs {
            let (Some(&lo), Some(&hi)) = (seqs.first(), seqs.last()) else {
                continue;
            };
            let missing = (hi - lo + 1) - seqs.len() as u64;
            if missing > 0 {
                v.seq_gaps += missing;
                let first_missing = (lo..=hi).find(|s| !seqs.contains(s)).unwrap_or(lo);
                example(
                    &mut v.examples,
                    format!(
                        "{}: {missing} seqs missing from {lo}-{hi}, first {first_missing}",
                        name(i)
                    ),
                );
            }
        }
        let slack = SPAN_SLACK.as_nanos() as i64;
        for ((i, sensor), spans) in &mut self.spans {
            spans.sort_unstable();
            let mut reach = i64::MIN;
            for &(first, last) in spans.iter() {
                if reach != i64::MIN && first - reach >= self.hole_ns {
                    // The kill's hole starts just before the kill (what the
                    // agent had read and not spooled) and ends after the
                    // restart: it spans both.
                    let at_kill = downs.iter().any(|d| {
                        d.agent == *i
                            && reach >= d.killed_ns - BEFORE_KILL.as_nanos() as i64
                            && reach <= d.killed_ns + slack
                            && first >= d.restarted_ns - slack
                            && first <= d.restarted_ns + AFTER_RESTART.as_nanos() as i64
                    });
                    if at_kill {
                        v.holes_at_kills += 1;
                        v.longest_kill_hole_ms = v
                            .longest_kill_hole_ms
                            .max(((first - reach) / 1_000_000) as u64);
                    } else {
                        v.holes_unexplained += 1;
                        example(
                            &mut v.examples,
                            format!(
                                "{} {sensor}: no sample for {} ms from {reach} ns",
                                name(i),
                                (first - reach) / 1_000_000
                            ),
                        );
                    }
                }
                reach = reach.max(last);
            }
            if reach < stopped_ns - STALE.as_nanos() as i64 {
                v.stale_feeds += 1;
                example(
                    &mut v.examples,
                    format!(
                        "{} {sensor}: last sample {} ms before the stop",
                        name(i),
                        (stopped_ns - reach) / 1_000_000
                    ),
                );
            }
        }
        v
    }
}

/// Keeps `what` among the first ten examples of a failure.
fn example(examples: &mut Vec<String>, what: String) {
    if examples.len() < 10 {
        examples.push(what);
    }
}

/// One real agent process and its files.
struct RealAgent {
    id: String,
    config: PathBuf,
    log: PathBuf,
    spool: PathBuf,
    metrics: SocketAddr,
    proc: Option<Proc>,
}

/// The run's real agents.
pub struct RealAgents {
    agents: Vec<RealAgent>,
    downs: Vec<Down>,
    /// When the last kill was sent, Unix ns.
    killed_ns: i64,
    torn_bytes: u64,
    torn_seq: Option<u64>,
}

fn unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

impl RealAgents {
    /// Writes `n` agents' configurations in `dir` (certificates from `pki`,
    /// each feed `rate_hz` per sensor, seven sensors) and starts them,
    /// dialing `endpoint`.
    pub fn start(
        dir: &Path,
        pki: &DevPki,
        n: usize,
        rate_hz: u32,
        endpoint: SocketAddr,
    ) -> anyhow::Result<Self> {
        let bin = procs::bin("ferrule-agent")?;
        let mut agents = Vec::with_capacity(n);
        for i in 0..n {
            let id = format!("real-{i:02}");
            let metrics = SocketAddr::from(([127, 0, 0, 1], procs::free_tcp_port()?));
            let spool = dir.join(format!("{id}-spool"));
            let spec = AgentSpec {
                site: SITE.into(),
                id: id.clone(),
                spool: spool.clone(),
                endpoints: vec![endpoint.to_string()],
                rate_hz,
                total_samples: None,
                fsync: "interval",
                metrics: Some(metrics),
                extra: String::new(),
            };
            let config = dir.join(format!("{id}.toml"));
            std::fs::write(&config, procs::agent_toml(pki, &spec)?)?;
            let log = dir.join(format!("{id}.log"));
            let proc = Proc::start(&id, &bin, &config, &log)?;
            agents.push(RealAgent {
                id,
                config,
                log,
                spool,
                metrics,
                proc: Some(proc),
            });
        }
        Ok(Self {
            agents,
            downs: Vec::new(),
            killed_ns: 0,
            torn_bytes: 0,
            torn_seq: None,
        })
    }

    /// The agents' ids.
    pub fn ids(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.id.clone()).collect()
    }

    /// SIGKILLs agent `i`; with `tear`, then tears its spool's last write
    /// (its newest segment cut midway through the last record's payload).
    /// [`RealAgents::restart`] brings it back.
    pub fn kill(&mut self, i: usize, tear: bool) -> anyhow::Result<()> {
        let a = &mut self.agents[i];
        self.killed_ns = unix_ns();
        if let Some(mut p) = a.proc.take() {
            p.kill9();
        }
        if tear {
            if let Some((bytes, seq)) = tear_last_write(&a.spool)? {
                self.torn_bytes += bytes;
                self.torn_seq = Some(seq);
            }
        }
        Ok(())
    }

    /// Starts agent `i` again on the same configuration and spool, after a
    /// [`RealAgents::kill`].
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let bin = procs::bin("ferrule-agent")?;
        let a = &mut self.agents[i];
        a.proc = Some(Proc::start(&a.id, &bin, &a.config, &a.log)?);
        self.downs.push(Down {
            agent: i,
            killed_ns: self.killed_ns,
            restarted_ns: unix_ns(),
        });
        Ok(())
    }

    /// Waits up to `drain` for every agent's spool to hold nothing
    /// unacknowledged but what its feed keeps adding, then SIGTERMs them.
    pub fn stop(&mut self, drain: Duration) -> Stopped {
        let stopped_ns = unix_ns();
        let metrics: Vec<SocketAddr> = self.agents.iter().map(|a| a.metrics).collect();
        let drained = procs::wait_for(drain, || {
            metrics.iter().all(|m| caught_up(*m)).then_some(())
        })
        .is_some();
        let mut held = 0;
        let mut problems = Vec::new();
        for a in &mut self.agents {
            held += unacked(a.metrics).unwrap_or(0);
            if let Some(mut p) = a.proc.take() {
                if !p.is_running() {
                    problems.push(format!("real agent {} exited before the end", a.id));
                } else if !p.term(Duration::from_secs(30)) {
                    problems.push(format!(
                        "real agent {} did not stop within 30 s of SIGTERM",
                        a.id
                    ));
                }
            }
        }
        Stopped {
            held,
            problems,
            drained,
            stopped_ns,
        }
    }

    /// Agent `i` answers and its spool holds no more than a live feed keeps
    /// in flight.
    pub fn caught_up(&self, i: usize) -> bool {
        caught_up(self.agents[i].metrics)
    }

    /// Times the agents logged a spool recovered from a torn tail (their
    /// warning with a `truncated_tail_bytes` above zero).
    pub fn damage_recovered(&self) -> u64 {
        self.agents
            .iter()
            .map(|a| {
                let text = std::fs::read_to_string(&a.log).unwrap_or_default();
                procs::strip_ansi(&text)
                    .lines()
                    .filter(|l| l.contains("spool recovered from damage"))
                    .filter(|l| {
                        l.split("truncated_tail_bytes: ")
                            .nth(1)
                            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                            .and_then(|n| n.parse::<u64>().ok())
                            .is_some_and(|n| n > 0)
                    })
                    .count() as u64
            })
            .sum()
    }

    /// Corrupt records the agents counted (their latest processes).
    pub fn corrupt_counted(&self) -> u64 {
        self.agents
            .iter()
            .map(|a| {
                procs::http_get(a.metrics, "/metrics")
                    .map(|t| procs::metric_sum(&t, "ferrule_agent_spool_corrupt_records_total"))
                    .unwrap_or(0)
            })
            .sum()
    }

    /// When each was down.
    pub fn downs(&self) -> &[Down] {
        &self.downs
    }

    /// Bytes torn off spools so far, and the seq of the last record torn.
    pub fn torn(&self) -> (u64, Option<u64>) {
        (self.torn_bytes, self.torn_seq)
    }

    /// The last lines of agent `i`'s log.
    pub fn log(&self, i: usize) -> &Path {
        &self.agents[i].log
    }
}

impl Drop for RealAgents {
    fn drop(&mut self) {
        for a in &mut self.agents {
            if let Some(mut p) = a.proc.take() {
                p.kill9();
            }
        }
    }
}

/// What [`RealAgents::stop`] found.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// Batches the spools still held unacknowledged.
    pub held: u64,
    /// Agents that had exited early or did not stop on SIGTERM.
    pub problems: Vec<String>,
    /// Every agent drained to a few batches in flight.
    pub drained: bool,
    /// When the stop began, Unix ns.
    pub stopped_ns: i64,
}

/// An agent's spool holds no more than a live feed keeps in flight (a few
/// batches), per its metrics.
fn caught_up(m: SocketAddr) -> bool {
    unacked(m).is_some_and(|n| n <= 4)
}

/// Unacknowledged batches in an agent's spool, from its metrics.
fn unacked(m: SocketAddr) -> Option<u64> {
    let text = procs::http_get(m, "/metrics").ok()?;
    procs::metric(&text, "ferrule_agent_spool_unacked_batches").map(|v| v as u64)
}

/// Tears the spool's last write: the newest segment file (its `log/*.seg`;
/// names are zero-padded first offsets) is cut midway through the payload of
/// its last whole record, as a power cut during that write leaves it. Returns
/// the bytes cut and the torn record's seq (its offset + 1), or `None` when
/// the newest segment holds no record yet.
fn tear_last_write(spool: &Path) -> anyhow::Result<Option<(u64, u64)>> {
    use ferrule_disklog::record::{HEADER_LEN, MAGIC};
    use ferrule_disklog::segment::SEGMENT_HEADER_LEN;
    let mut newest: Option<PathBuf> = None;
    for e in std::fs::read_dir(spool.join("log"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "seg") && newest.as_ref().is_none_or(|q| p > *q) {
            newest = Some(p);
        }
    }
    let Some(path) = newest else {
        return Ok(None);
    };
    let b = std::fs::read(&path)?;
    let le32 = |at: usize| {
        b.get(at..at + 4)
            .and_then(|x| <[u8; 4]>::try_from(x).ok())
            .map(u32::from_le_bytes)
    };
    let le64 = |at: usize| {
        b.get(at..at + 8)
            .and_then(|x| <[u8; 8]>::try_from(x).ok())
            .map(u64::from_le_bytes)
    };
    // Walk the framing: magic, payload length, offset at the front of each
    // record's header.
    let mut pos = SEGMENT_HEADER_LEN;
    let mut last = None;
    while let (Some(magic), Some(len), Some(offset)) = (le32(pos), le32(pos + 4), le64(pos + 8)) {
        let end = pos + HEADER_LEN + len as usize;
        if magic != MAGIC || len == 0 || end > b.len() {
            break;
        }
        last = Some((pos, len as usize, offset));
        pos = end;
    }
    let Some((at, len, offset)) = last else {
        return Ok(None);
    };
    let keep = (at + HEADER_LEN + len / 2) as u64;
    let f = std::fs::OpenOptions::new().write(true).open(&path)?;
    f.set_len(keep)?;
    f.sync_all()?;
    Ok(Some((b.len() as u64 - keep, offset + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    /// A feed of 100 Hz in 50 ms records, `from`..`to` ms, seqs from `seq0`,
    /// skipping `skip`; the next seq.
    fn feed(c: &mut Continuity, epoch: u64, seq0: u64, from: i64, to: i64, skip: &[u64]) -> u64 {
        let mut seq = seq0;
        let mut t = from;
        while t < to {
            if !skip.contains(&seq) {
                c.record(
                    "real-00",
                    epoch,
                    seq,
                    &[("f/va".into(), t * MS, (t + 40) * MS)],
                    5,
                );
            }
            seq += 1;
            t += 50;
        }
        seq
    }

    fn checker() -> Continuity {
        Continuity::new(&["real-00".into()], 100)
    }

    const DOWN: Down = Down {
        agent: 0,
        killed_ns: 5_000 * MS,
        restarted_ns: 6_500 * MS,
    };

    #[test]
    fn an_unbroken_feed_passes() {
        let mut c = checker();
        feed(&mut c, 1, 1, 0, 10_000, &[]);
        let v = c.finish(&[], 10_000 * MS);
        assert!(v.failures().is_empty(), "{v:?}");
        assert_eq!((v.records, v.samples, v.epochs), (200, 1000, 1));
    }

    #[test]
    fn a_lost_batch_is_a_seq_gap() {
        let mut c = checker();
        feed(&mut c, 1, 1, 0, 10_000, &[77]);
        let v = c.finish(&[], 10_000 * MS);
        assert_eq!(v.seq_gaps, 1, "{v:?}");
    }

    #[test]
    fn a_hole_spanning_the_kill_is_expected() {
        let mut c = checker();
        let next = feed(&mut c, 1, 1, 0, 5_000, &[]);
        // Down from 5 s to 6.5 s; the new epoch numbers on.
        feed(&mut c, 2, next, 7_000, 12_000, &[]);
        let v = c.finish(&[DOWN], 12_000 * MS);
        assert!(v.failures().is_empty(), "{v:?}");
        assert_eq!((v.holes_at_kills, v.epochs), (1, 2));
        assert_eq!(v.longest_kill_hole_ms, 2_010);
    }

    #[test]
    fn a_hole_with_no_kill_to_explain_it_is_loss() {
        let mut c = checker();
        let next = feed(&mut c, 1, 1, 0, 5_000, &[]);
        feed(&mut c, 2, next, 7_000, 12_000, &[]);
        let v = c.finish(&[], 12_000 * MS);
        assert_eq!(v.holes_unexplained, 1, "{v:?}");
        assert!(!v.failures().is_empty());
    }

    #[test]
    fn a_hole_near_the_kill_that_does_not_span_it_is_loss() {
        // The feed's last 1.5 s before the kill missing, seqs renumbered
        // over it (a spool that lost its tail): not the kill's hole.
        let mut c = checker();
        let next = feed(&mut c, 1, 1, 0, 3_500, &[]);
        feed(&mut c, 2, next, 6_600, 12_000, &[]);
        let early = Down {
            killed_ns: 5_400 * MS,
            ..DOWN
        };
        let v = c.finish(&[early], 12_000 * MS);
        assert_eq!(v.holes_unexplained, 0, "within BEFORE_KILL: {v:?}");
        let late = Down {
            killed_ns: 6_000 * MS,
            restarted_ns: 6_100 * MS,
            ..DOWN
        };
        let mut c = checker();
        let next = feed(&mut c, 1, 1, 0, 3_500, &[]);
        feed(&mut c, 2, next, 6_600, 12_000, &[]);
        let v = c.finish(&[late], 12_000 * MS);
        assert_eq!(v.holes_unexplained, 1, "{v:?}");
        // And one that ends before the restart cannot be the kill's either.
        let mut c = checker();
        let next = feed(&mut c, 1, 1, 0, 4_900, &[]);
        feed(&mut c, 2, next, 5_600, 12_000, &[]);
        let v = c.finish(&[DOWN], 12_000 * MS);
        assert_eq!(v.holes_unexplained, 1, "{v:?}");
    }

    #[test]
    fn batches_spooled_before_a_kill_and_never_resent_are_missing() {
        // Seqs 1-100 spooled, 1-90 through before the kill; the restarted
        // agent numbers on from 101 and never resends 91-100.
        let mut c = checker();
        feed(&mut c, 1, 1, 0, 4_500, &[]);
        feed(&mut c, 2, 101, 6_600, 12_000, &[]);
        let v = c.finish(&[DOWN], 12_000 * MS);
        assert_eq!(v.seq_gaps, 10, "{v:?}");
        assert!(!v.failures().is_empty());
    }

    #[test]
    fn a_feed_that_stops_getting_through_is_stale_and_a_silent_agent_fails() {
        let mut c = Continuity::new(&["real-00".into(), "real-01".into()], 100);
        feed(&mut c, 1, 1, 0, 4_000, &[]);
        let v = c.finish(&[], 12_000 * MS);
        assert_eq!((v.stale_feeds, v.silent_agents), (1, 1), "{v:?}");
        assert_eq!(v.failures().len(), 2, "{v:?}");
    }

    #[test]
    fn repeats_and_time_going_back_are_counted() {
        let mut c = checker();
        feed(&mut c, 1, 1, 0, 1_000, &[]);
        feed(&mut c, 1, 5, 200, 300, &[]);
        c.record("real-00", 1, 21, &[("f/va".into(), 0, 10)], 1);
        let v = c.finish(&[], 1_000 * MS);
        assert_eq!(v.duplicates, 2, "{v:?}");
        assert_eq!(v.out_of_order, 1, "{v:?}");
    }

    #[test]
    fn other_agents_are_not_its_business() {
        let mut c = checker();
        c.record("a00001", 1, 1, &[("x".into(), 0, 1)], 1);
        let v = c.finish(&[], 0);
        assert_eq!(v.records, 0);
        assert_eq!(
            v.failures(),
            vec!["1 real agents with nothing in the sink".to_string()]
        );
    }

    #[test]
    fn a_slow_feed_is_not_all_holes() {
        // 5 Hz: 200 ms between samples, records 1 s apart.
        let mut c = Continuity::new(&["real-00".into()], 5);
        for (i, t) in (0..10_000).step_by(1_000).enumerate() {
            c.record(
                "real-00",
                1,
                i as u64 + 1,
                &[("f/va".into(), t * MS, (t + 800) * MS)],
                5,
            );
        }
        let v = c.finish(&[], 10_000 * MS);
        assert!(v.failures().is_empty(), "{v:?}");
    }

    #[test]
    fn a_torn_write_cuts_the_newest_segments_last_record_midway() {
        use ferrule_disklog::{Log, Offset};
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        {
            let (mut log, _) = Log::open(&dir, ferrule_disklog::Options::default()).unwrap();
            for i in 0..3u8 {
                log.append(&[i; 100]).unwrap();
            }
            log.sync().unwrap();
        }
        let (bytes, seq) = tear_last_write(d.path()).unwrap().expect("a record torn");
        assert_eq!((bytes, seq), (50, 3));
        // Recovery cuts the torn record and keeps the two before it.
        let (log, recovery) = Log::open(&dir, ferrule_disklog::Options::default()).unwrap();
        assert!(recovery.truncated_tail_bytes > 0, "{recovery:?}");
        assert_eq!(log.next_offset(), Offset(2));
    }
}
