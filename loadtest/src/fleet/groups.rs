//! Two Redis consumer groups reading the fleet's site streams, for the
//! `redis-group-stall` fault: `fast` reads and acknowledges every entry as it
//! comes; `slow` does the same until it is told to stall, then reads nothing
//! more (a consumer process hung, a dashboard whose reader died). What users
//! check: the stall costs the agents nothing (acks go on), the fast group
//! still gets every batch, Redis's memory stays under the stream cap, and what
//! the slow group lost to the cap is counted for it alone.

use anyhow::{bail, Context};
use redis::Value;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The group that keeps reading.
pub const FAST: &str = "fast";
/// The group that stalls at the fault.
pub const SLOW: &str = "slow";

/// What one group read.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GroupRead {
    /// Entries delivered to it (and acknowledged).
    pub entries: u64,
    /// Distinct (agent, epoch, seq) among them.
    pub distinct: u64,
}

/// The two groups' readers.
pub struct Readers {
    url: String,
    streams: Vec<String>,
    stop: Arc<AtomicBool>,
    stall: Arc<AtomicBool>,
    threads: Vec<(&'static str, JoinHandle<anyhow::Result<GroupRead>>)>,
}

/// How the streams stood at the end.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GroupsReport {
    /// The fast group's reads.
    pub fast: GroupRead,
    /// The slow group's reads (all before its stall).
    pub slow: GroupRead,
    /// The longest stream's length at the end, entries.
    pub longest_stream: u64,
    /// Entries still in the streams after the slow group's last read: with
    /// what it read and what it lost, every entry published.
    pub slow_waiting: u64,
    /// The aggregator's `redis.max_len` in this run.
    pub max_len: u64,
    /// What the aggregator counted as lost to the cap by the fast group
    /// (`ferrule_aggregator_fanout_group_lost_total{group="fast"}`).
    pub fast_lost_counted: u64,
    /// The same for the slow group.
    pub slow_lost_counted: u64,
    /// `/healthz` at the end, its lines joined by " / ".
    pub healthz: String,
}

/// The sum of `ferrule_aggregator_fanout_group_lost_total` over the streams
/// for one group, from a `/metrics` exposition.
pub fn lost_counted(exposition: &str, group: &str) -> u64 {
    crate::procs::metric_sum_with(
        exposition,
        "ferrule_aggregator_fanout_group_lost_total",
        &format!("group=\"{group}\""),
    ) as u64
}

fn connect(url: &str) -> anyhow::Result<redis::Connection> {
    let client = redis::Client::open(url).with_context(|| format!("redis url {url}"))?;
    client
        .get_connection_with_timeout(Duration::from_secs(5))
        .with_context(|| format!("connecting to {url}"))
}

/// Text of a bulk or simple string reply.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `(id, agent, epoch, seq)` of each entry in an `XREADGROUP` reply's stream.
fn entries(stream_entries: &Value) -> Vec<(String, (String, u64, u64))> {
    let Value::Array(items) = stream_entries else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = text(pair.first()?)?;
            let Value::Array(fields) = pair.get(1)? else {
                return None;
            };
            let get = |k: &str| {
                fields
                    .chunks_exact(2)
                    .find(|c| text(&c[0]).as_deref() == Some(k))
                    .and_then(|c| text(&c[1]))
            };
            let num = |k: &str| get(k)?.parse::<u64>().ok();
            Some((id, (get("agent")?, num("epoch")?, num("seq")?)))
        })
        .collect()
}

impl Readers {
    /// Creates both groups on every stream (from the start, before anything
    /// is published) and starts their readers.
    pub fn start(url: &str, streams: Vec<String>) -> anyhow::Result<Self> {
        let mut con = connect(url)?;
        for key in &streams {
            for g in [FAST, SLOW] {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(key)
                    .arg(g)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query::<()>(&mut con)
                    .with_context(|| format!("XGROUP CREATE {key} {g}"))?;
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stall = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for g in [FAST, SLOW] {
            let (url, streams, stop) = (url.to_string(), streams.clone(), stop.clone());
            let stall = (g == SLOW).then(|| stall.clone());
            threads.push((
                g,
                std::thread::spawn(move || read_group(&url, &streams, g, &stop, stall.as_deref())),
            ));
        }
        Ok(Self {
            url: url.to_string(),
            streams,
            stop,
            stall,
            threads,
        })
    }

    /// The slow group reads nothing more from now on.
    pub fn stall_slow(&self) {
        self.stall.store(true, Ordering::Relaxed);
    }

    /// Stops the readers (after the fan-out has published everything) and
    /// says what each read and how long the streams are. Blocking: call it
    /// from `spawn_blocking`.
    #[allow(clippy::disallowed_methods)] // a blocking thread, not an executor's
    pub fn finish(self, max_len: u64) -> anyhow::Result<GroupsReport> {
        // Let the fast group read the last entries published.
        std::thread::sleep(Duration::from_millis(500));
        self.stop.store(true, Ordering::Relaxed);
        let mut report = GroupsReport {
            max_len,
            ..GroupsReport::default()
        };
        for (g, t) in self.threads {
            let read = t
                .join()
                .map_err(|_| anyhow::anyhow!("the {g} group's reader panicked"))??;
            if g == FAST {
                report.fast = read;
            } else {
                report.slow = read;
            }
        }
        let mut con = connect(&self.url)?;
        for key in &self.streams {
            let len: u64 = redis::cmd("XLEN").arg(key).query(&mut con)?;
            report.longest_stream = report.longest_stream.max(len);
            report.slow_waiting += waiting(&mut con, key, SLOW)?;
        }
        Ok(report)
    }
}

/// Entries in `key` after `group`'s last delivered id, counted 1 000 at a time.
fn waiting(con: &mut redis::Connection, key: &str, group: &str) -> anyhow::Result<u64> {
    let reply: Value = redis::cmd("XINFO").arg("GROUPS").arg(key).query(con)?;
    let Value::Array(gs) = reply else {
        bail!("XINFO GROUPS {key}: {reply:?}");
    };
    let mut last = None;
    for g in gs {
        let fields = match g {
            Value::Array(f) => f,
            Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => continue,
        };
        let get = |k: &str| {
            fields
                .chunks_exact(2)
                .find(|c| text(&c[0]).as_deref() == Some(k))
                .and_then(|c| text(&c[1]))
        };
        if get("name").as_deref() == Some(group) {
            last = get("last-delivered-id");
        }
    }
    let mut from = last.with_context(|| format!("no group {group} on {key}"))?;
    let mut n = 0u64;
    // At most the stream's length, a thousand at a time.
    for _ in 0..100_000 {
        let reply: Value = redis::cmd("XRANGE")
            .arg(key)
            .arg(format!("({from}"))
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query(con)?;
        let Value::Array(items) = reply else { break };
        let Some(next) = items.last().and_then(|i| match i {
            Value::Array(pair) => pair.first().and_then(text),
            _ => None,
        }) else {
            break;
        };
        n += items.len() as u64;
        from = next;
    }
    Ok(n)
}

/// One group's reader: `XREADGROUP` up to 1 000 entries (blocking 100 ms),
/// then `XACK` them, until `stop`; with `stall`, nothing more once it is set.
/// Runs on its own thread.
#[allow(clippy::disallowed_methods)] // its own thread, not an executor's
fn read_group(
    url: &str,
    streams: &[String],
    group: &str,
    stop: &AtomicBool,
    stall: Option<&AtomicBool>,
) -> anyhow::Result<GroupRead> {
    let mut con = connect(url)?;
    let mut seen = HashSet::new();
    let mut read = GroupRead::default();
    // Bounded: the run ends within minutes; the harness sets `stop`.
    let deadline = std::time::Instant::now() + Duration::from_secs(3600);
    while !stop.load(Ordering::Relaxed) {
        if std::time::Instant::now() > deadline {
            bail!("the {group} group's reader ran for an hour");
        }
        if stall.is_some_and(|s| s.load(Ordering::Relaxed)) {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg("reader")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS");
        for s in streams {
            cmd.arg(s);
        }
        for _ in streams {
            cmd.arg(">");
        }
        let reply: Value = cmd
            .query(&mut con)
            .with_context(|| format!("XREADGROUP {group}"))?;
        let Value::Array(per_stream) = reply else {
            // Nil: nothing within the block.
            continue;
        };
        for s in per_stream {
            let Value::Array(kv) = s else { continue };
            let (Some(key), Some(items)) = (kv.first().and_then(text), kv.get(1)) else {
                continue;
            };
            let got = entries(items);
            if got.is_empty() {
                continue;
            }
            let mut ack = redis::cmd("XACK");
            ack.arg(&key).arg(group);
            for (id, k) in got {
                ack.arg(id);
                read.entries += 1;
                if seen.insert(k) {
                    read.distinct += 1;
                }
            }
            ack.query::<()>(&mut con)
                .with_context(|| format!("XACK {key} {group}"))?;
        }
    }
    Ok(read)
}
