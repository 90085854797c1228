//! The sampler: every `sampler.period_ms`, one aggregator reads every pipeline
//! stage's cumulative counters (a [`Snapshot`]), feeds them to the signal
//! engine ([`ferrule_signals`]) and stores snapshot and signals together.
//!
//! - **With `[redis]`**, exactly one aggregator samples at a time: the holder
//!   of the lock `{prefix}:{sampler}:lock`, taken with `SET NX PX` and a
//!   random token by a script that also increments the fencing counter
//!   `{prefix}:{sampler}:fence` (so every grant has a higher fence), renewed by
//!   a script that checks the token, released by compare-and-delete. The
//!   decisions are pure ([`lease::Lease`]). Every snapshot carries its fence;
//!   the store (a script) refuses one older than the newest it has seen, so a
//!   sampler paused past its lease and resumed cannot write. A grant's fence
//!   is above the newest stored too (`newest`, else the history's last
//!   entry), so a lost counter never refuses every write; a sampler granted a
//!   fence below one it took (Redis restarted empty) starts its signals over.
//!   A sampler key holding another type is deleted and remade. Times come from
//!   Redis `TIME`, one clock whoever samples. The history is the capped stream
//!   `{prefix}:{sampler}:snapshots` (fields `fence`, `ts`, `snapshot`,
//!   `signals`, JSON). Each aggregator reports its own counters every period
//!   in the hash `{prefix}:{sampler}:aggregators`; the real-time path records
//!   the streams it writes in the set `{prefix}:{sampler}:streams`.
//! - **Without Redis** the aggregator samples itself (fence 1), keeps the
//!   newest snapshots in memory and appends them, as `signals replay` reads
//!   them, to `{log.dir}/signals/snapshots.jsonl`, one file per run (the
//!   previous run's, and a file grown past 64 MiB, move to `.1`).
//!
//! Stages: `aggregator:<instance>` (batches received against batches
//! committed and acknowledged, per aggregator; `aggregator` without Redis), `redis:<group>` (each consumer
//! group of the sites' streams: entries added against entries read, summed
//! over the streams), and, without Redis, `fanout:<consumer>` (each in-process
//! consumer: entries handed to it against entries it took or lost).
//!
//! Metrics: gauges `ferrule_aggregator_sampler_active` (1 while this
//! aggregator samples) and `ferrule_aggregator_sampler_fence`; counters
//! `ferrule_aggregator_sampler_snapshots_total`,
//! `ferrule_aggregator_sampler_writes_refused_total` (the store refused an old
//! fence) and `ferrule_aggregator_sampler_errors_total`.

pub mod kafka;
pub mod lease;

use crate::config::{RedisSection, SamplerSection};
use crate::fanout::embedded::Subscriptions;
use crate::fanout::redis::{connection_lost, items, number, text, timed_out, Conn, Target};
use crate::metrics::IngestMetrics;
use ferrule_signals::{Engine, Signal, Snapshot, StageSample};
use ferrule_telemetry::{Counter, Gauge, Registry};
use lease::{Action, Lease};
use redis::Value;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Lua shared by the scripts (a macro, for `concat!`): `fence_of(key)` reads a fence from a string
/// key, nil when the key is missing, of another type or not a whole number
/// below 2^53 (Lua's exact integers); `stored_fence(newest, snapshots)` is the
/// newest fence stored, from `newest` or else the history's last entry, so a
/// lost or garbled key never lets an old fence in or a new grant fall below.
macro_rules! fence_lua {
    () => {
        r#"
local function whole(n)
  if n and n >= 0 and n < 9007199254740992 and n == math.floor(n) then return n end
  return nil
end
local function fence_of(key)
  if redis.call('TYPE', key)['ok'] ~= 'string' then return nil end
  return whole(tonumber(redis.call('GET', key)))
end
local function stored_fence(newest, snapshots)
  local n = fence_of(newest)
  if n then return n end
  if redis.call('TYPE', snapshots)['ok'] ~= 'stream' then return 0 end
  local last = redis.call('XREVRANGE', snapshots, '+', '-', 'COUNT', 1)[1]
  if not last then return 0 end
  for i = 1, #last[2], 2 do
    if last[2][i] == 'fence' then return whole(tonumber(last[2][i + 1])) or 0 end
  end
  return 0
end
"#
    };
}

/// Takes the lock (`KEYS[1]`) for `ARGV[1]` (`ARGV[2]` ms) and returns a new
/// fence, or nil if another token holds it. The fence is above the counter
/// (`KEYS[2]`) and above the newest stored (`KEYS[3]`, else the history
/// `KEYS[4]`): a counter lost (Redis restarted without persistence, a DEL, an
/// eviction) while the history survived still gives a fence the store takes.
/// A lock of another type is deleted (no holder writes one); a lock already
/// ours (a grant whose answer was lost) is granted again under a new fence.
const ACQUIRE: &str = concat!(
    fence_lua!(),
    r#"
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'string' then redis.call('DEL', KEYS[1]) end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local f = math.max(fence_of(KEYS[2]) or 0, stored_fence(KEYS[3], KEYS[4])) + 1
redis.call('SET', KEYS[2], string.format('%d', f))
return f
"#
);

/// Renews the lock if `ARGV[1]` still holds it: 1, else 0.
const RENEW: &str = r#"
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Deletes the lock if `ARGV[1]` still holds it.
const RELEASE: &str = r#"
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Stores a snapshot unless its fence (`ARGV[1]`) is older than the newest
/// stored (`KEYS[1]`, else the history's last entry): 1 stored, 0 refused.
/// `KEYS[2]` the history stream, `ARGV[2]` its cap, then `ts`, the snapshot
/// and the signals. Keys of another type in their place are replaced. With a
/// channel (`ARGV[6]`), publishes the set there as the page's gateways
/// forward it: [`crate::page::ring::frame_text`], its `seq` the entry's id
/// (so a set is published only once stored, and only by the newest fence),
/// and answers that id instead of 1.
pub const STORE: &str = concat!(
    fence_lua!(),
    r#"
local fence = tonumber(ARGV[1])
if fence < stored_fence(KEYS[1], KEYS[2]) then return 0 end
local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'none' and t ~= 'stream' then redis.call('DEL', KEYS[2]) end
redis.call('SET', KEYS[1], ARGV[1])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'fence', ARGV[1], 'ts', ARGV[3], 'snapshot', ARGV[4], 'signals', ARGV[5])
if ARGV[6] and ARGV[6] ~= '' then
  redis.call('PUBLISH', ARGV[6], '{"seq":"' .. id .. '","fence":' .. ARGV[1] .. ',"ts":' .. ARGV[3] .. ',"snapshot":' .. ARGV[4] .. ',"signals":' .. ARGV[5] .. '}')
  return id
end
return 1
"#
);

/// Deletes `KEYS[1]` if it holds another type than `ARGV[1]`: 1 deleted.
const FIX_TYPE: &str = r#"
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"#;

/// One stream's counters: `{entries-added, group, entries-read, lag, ...}`
/// (-1 where Redis does not know), read inside Redis so the stream's first
/// and last entries (`XINFO STREAM` returns them) never cross the network.
const GROUPS: &str = r#"
local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if not ok then return {} end
local added = -1
for i = 1, #info, 2 do
  if info[i] == 'entries-added' then added = info[i + 1] end
end
local out = {added}
local okg, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not okg then return {added} end
for _, g in ipairs(groups) do
  local name, read, lag = nil, -1, -1
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1]
    elseif g[i] == 'entries-read' and g[i + 1] then read = g[i + 1]
    elseif g[i] == 'lag' and g[i + 1] then lag = g[i + 1] end
  end
  if name then
    table.insert(out, name)
    table.insert(out, read)
    table.insert(out, lag)
  end
end
return out
"#;

/// The Kafka groups' newest reading and when it was taken, shared by the
/// reader task and the sampler.
type KafkaReading = Arc<Mutex<Option<(Vec<StageSample>, Instant)>>>;

/// An aggregator's report older than this is not a stage any more.
const AGGREGATOR_GONE: Duration = Duration::from_secs(30);
/// Streams read per snapshot at most.
const MAX_STREAMS: usize = 10_000;
/// Streams read per round trip (one pipeline of `EVALSHA GROUPS`).
const STREAMS_PER_TRIP: usize = 500;
/// Stages in one snapshot at most: what the engine takes
/// ([`ferrule_signals::Config::max_stages`]).
const MAX_STAGES: usize = 1024;
/// Snapshots kept in memory for the page (the newest).
const KEPT_IN_MEMORY: usize = 3600;
/// The local history file is rotated at this size.
const LOCAL_FILE_MAX: u64 = 64 << 20;

/// The Redis keys of the sampler under `prefix` (one hash slot: `{sampler}`).
#[derive(Debug, Clone)]
pub struct Keys {
    /// The lock.
    pub lock: String,
    /// The fencing counter.
    pub fence: String,
    /// The newest fence stored.
    pub newest: String,
    /// The history stream.
    pub snapshots: String,
    /// Each aggregator's counters.
    pub aggregators: String,
    /// Each aggregator's sum over its agents' spools (`<ts> <head> <pos>`:
    /// batches received plus the backlog the agents report, against batches
    /// received), for the stage `agents`.
    pub agents: String,
    /// The streams the real-time path writes.
    pub streams: String,
}

impl Keys {
    /// The keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        let k = |name: &str| format!("{prefix}:{{sampler}}:{name}");
        Self {
            lock: k("lock"),
            fence: k("fence"),
            newest: k("newest"),
            snapshots: k("snapshots"),
            aggregators: k("aggregators"),
            agents: k("agents"),
            streams: k("streams"),
        }
    }
}

/// One stored sample: the snapshot and what the engine made of it.
#[derive(Debug, Clone)]
pub struct Sampled {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Its signals, one per stage.
    pub signals: Vec<Signal>,
}

/// The running sampler.
pub struct Sampler {
    task: tokio::task::JoinHandle<()>,
    kafka_task: Option<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
    /// The newest samples this aggregator took (for the page).
    pub recent: Arc<Mutex<VecDeque<Arc<Sampled>>>>,
}

impl Sampler {
    /// Starts sampling (a no-op task when `cfg.enabled` is false).
    #[allow(clippy::too_many_arguments)] // what it reads and where it writes, each its own
    pub fn start(
        cfg: &SamplerSection,
        redis: Option<&RedisSection>,
        data_dir: PathBuf,
        ingest: IngestMetrics,
        local: Subscriptions,
        gateway: crate::page::Gateway,
        agents: crate::agents::Agents,
        kafka: Option<&crate::config::KafkaSection>,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let active = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let kafka_stages: KafkaReading = Arc::default();
        let mut kafka_task = None;
        let mut history = None;
        if let (Some(k), true) = (kafka, cfg.enabled) {
            if !cfg.kafka_groups.is_empty() {
                let reader = kafka::KafkaStages::new(k, &cfg.kafka_groups, Duration::from_secs(2))?;
                kafka_task = Some(tokio::spawn(read_kafka(
                    reader,
                    Duration::from_millis(cfg.period_ms.max(100)),
                    active.clone(),
                    kafka_stages.clone(),
                    stop_rx.clone(),
                )));
            }
            if !cfg.kafka_history_topic.is_empty() {
                history = Some(HistoryTopic::new(k, &cfg.kafka_history_topic)?);
            }
        }
        let recent: Arc<Mutex<VecDeque<Arc<Sampled>>>> = Arc::default();
        let metrics = Metrics::new(registry);
        let driver = Driver {
            period: Duration::from_millis(cfg.period_ms.max(100)),
            history: cfg.history_max_len.max(1),
            instance: crate::instance::name().to_string(),
            engine: Engine::default(),
            ingest,
            local,
            recent: recent.clone(),
            metrics,
            gateway,
            agents,
            active,
            kafka_stages,
            history_topic: history,
            run: format!("{}", (wall_s() * 1000.0) as u64),
            published: 0,
            redis: match redis {
                Some(r) => Some(RedisSide {
                    target: crate::fanout::redis::target(r)
                        .map_err(|e| anyhow::anyhow!("sampler: {e}"))?,
                    conn: None,
                    keys: Keys::new(&r.stream_prefix),
                    channel: crate::page::redis::channel(&r.stream_prefix),
                    lease: Lease::new(Duration::from_millis(cfg.lease_ttl_ms.max(300))),
                    ttl_ms: cfg.lease_ttl_ms.max(300),
                    token: format!("{}-{:016x}", crate::instance::name(), fastrand::u64(..)),
                    timeout: Duration::from_millis(r.response_timeout_ms.max(1)),
                    was_active: false,
                    groups_sha: None,
                }),
                None => None,
            },
            file: data_dir.join("signals").join("snapshots.jsonl"),
        };
        if cfg.enabled && redis.is_none() {
            // One run, one file: replaying it gives this run's signals (the
            // previous run's history is kept in `.1`).
            let file = &driver.file;
            if file.exists() {
                if let Err(e) = std::fs::rename(file, file.with_extension("jsonl.1")) {
                    tracing::warn!(error = %e, file = %file.display(), "sampler: keeping the previous history failed");
                }
            }
        }
        let task = if cfg.enabled {
            tokio::spawn(driver.run(stop_rx))
        } else {
            tokio::spawn(async {})
        };
        Ok(Self {
            task,
            stop,
            recent,
            kafka_task,
        })
    }

    /// Stops sampling (giving the lock back) and waits.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Some(k) = self.kafka_task {
            k.abort();
        }
        if tokio::time::timeout(Duration::from_secs(3), &mut { self.task })
            .await
            .is_err()
        {
            tracing::warn!("sampler did not stop within 3 s");
        }
    }
}

#[derive(Clone)]
struct Metrics {
    active: Gauge,
    fence: Gauge,
    snapshots: Counter,
    refused: Counter,
    errors: Counter,
}

impl Metrics {
    fn new(r: &Registry) -> Self {
        Self {
            active: r.gauge(
                "ferrule_aggregator_sampler_active",
                "1 while this aggregator is the sampler.",
                &[],
            ),
            fence: r.gauge(
                "ferrule_aggregator_sampler_fence",
                "The fence this aggregator last sampled under.",
                &[],
            ),
            snapshots: r.counter(
                "ferrule_aggregator_sampler_snapshots_total",
                "Snapshots taken and stored by this aggregator.",
                &[],
            ),
            refused: r.counter(
                "ferrule_aggregator_sampler_writes_refused_total",
                "Snapshots the store refused for an old fence (another aggregator took over).",
                &[],
            ),
            errors: r.counter(
                "ferrule_aggregator_sampler_errors_total",
                "Failed sampler commands (Redis, the local history file).",
                &[],
            ),
        }
    }
}

struct RedisSide {
    target: Target,
    conn: Option<Conn>,
    keys: Keys,
    /// Where the page's gateways hear each stored set.
    channel: String,
    lease: Lease,
    ttl_ms: u64,
    token: String,
    timeout: Duration,
    was_active: bool,
    /// `GROUPS` as loaded in Redis (`SCRIPT LOAD`), once.
    groups_sha: Option<String>,
}

struct Driver {
    period: Duration,
    history: u64,
    instance: String,
    engine: Engine,
    ingest: IngestMetrics,
    local: Subscriptions,
    recent: Arc<Mutex<VecDeque<Arc<Sampled>>>>,
    metrics: Metrics,
    /// Without Redis, each set goes to this aggregator's page directly.
    gateway: crate::page::Gateway,
    /// The agents' spool reports, for the stage `agents`.
    agents: crate::agents::Agents,
    /// Whether this aggregator samples now (the Kafka reader works only then).
    active: Arc<std::sync::atomic::AtomicBool>,
    /// The Kafka groups' newest reading, and when it was taken.
    kafka_stages: KafkaReading,
    /// The durable history topic, with `[kafka]`.
    history_topic: Option<HistoryTopic>,
    /// Without Redis, sets are numbered `<run>-<n>`: the run's start in ms.
    run: String,
    published: u64,
    redis: Option<RedisSide>,
    file: PathBuf,
}

type RedisResult<T> = Result<T, redis::RedisError>;

impl RedisSide {
    async fn conn(&mut self) -> RedisResult<Conn> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(self.timeout * 2, self.target.connect())
            .await
            .map_err(|_| timed_out())??;
        self.conn = Some(c.clone());
        Ok(c)
    }

    async fn query(&mut self, cmd: &redis::Cmd) -> RedisResult<Value> {
        let mut c = self.conn().await?;
        let r = tokio::time::timeout(self.timeout, c.cmd(cmd))
            .await
            .map_err(|_| timed_out())
            .and_then(|r| r);
        if let Err(e) = &r {
            if connection_lost(e) || e.is_timeout() {
                self.conn = None;
            }
        }
        r
    }

    /// One step of the lock: take or renew it when due.
    async fn lease_step(&mut self, metrics: &Metrics) {
        let now = Instant::now();
        let action = self.lease.next(now);
        let mut cmd = redis::cmd("EVAL");
        match action {
            Action::WaitUntil(_) => return,
            Action::Acquire => {
                cmd.arg(ACQUIRE)
                    .arg(4)
                    .arg(&self.keys.lock)
                    .arg(&self.keys.fence)
                    .arg(&self.keys.newest)
                    .arg(&self.keys.snapshots)
                    .arg(&self.token)
                    .arg(self.ttl_ms);
            }
            Action::Renew => {
                cmd.arg(RENEW)
                    .arg(1)
                    .arg(&self.keys.lock)
                    .arg(&self.token)
                    .arg(self.ttl_ms);
            }
        }
        match (action, self.query(&cmd).await) {
            (Action::Acquire, Ok(Value::Int(fence))) => {
                let fence = u64::try_from(fence).unwrap_or(0);
                self.lease.acquired(fence, now);
                tracing::info!(fence, "sampler lock taken: this aggregator samples");
            }
            (Action::Renew, Ok(Value::Int(1))) => self.lease.renewed(now),
            (_, Ok(_)) => {
                if self.was_active {
                    tracing::info!("sampler lock lost: another aggregator samples");
                }
                self.lease.lost(now);
            }
            (_, Err(e)) => {
                metrics.errors.inc();
                tracing::debug!(error = %e, "sampler lock: Redis failed");
                self.lease.failed(now);
            }
        }
    }

    async fn time(&mut self) -> RedisResult<f64> {
        let v = self.query(&redis::cmd("TIME")).await?;
        let parts = items(&v);
        match (
            parts.first().and_then(number),
            parts.get(1).and_then(number),
        ) {
            (Some(s), Some(us)) => Ok(s as f64 + us as f64 / 1e6),
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "TIME answered something else",
            ))),
        }
    }

    /// Runs `cmd` on `key`; if the key holds another type than `kind`
    /// (WRONGTYPE), deletes it and answers `Nil`, so a stray key in the
    /// sampler's place costs one period, not sampling for good.
    async fn query_typed(&mut self, cmd: &redis::Cmd, key: &str, kind: &str) -> RedisResult<Value> {
        match self.query(cmd).await {
            Err(e) if e.code() == Some("WRONGTYPE") => {
                tracing::warn!(
                    key,
                    kind,
                    "sampler: a key of another type was in place; deleting it"
                );
                let mut fix = redis::cmd("EVAL");
                fix.arg(FIX_TYPE).arg(1).arg(key).arg(kind);
                self.query(&fix).await?;
                Ok(Value::Nil)
            }
            r => r,
        }
    }

    /// Reports this aggregator's counters.
    async fn report(
        &mut self,
        instance: &str,
        now_s: f64,
        (head, pos): (u64, u64),
        agents: Option<(u64, u64)>,
    ) -> RedisResult<()> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&self.keys.aggregators)
            .arg(instance)
            .arg(format!("{now_s} {head} {pos}"));
        let key = self.keys.aggregators.clone();
        self.query_typed(&cmd, &key, "hash").await?;
        if let Some((head, pos)) = agents {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&self.keys.agents)
                .arg(instance)
                .arg(format!("{now_s} {head} {pos}"));
            let key = self.keys.agents.clone();
            self.query_typed(&cmd, &key, "hash").await?;
        }
        Ok(())
    }

    /// `GROUPS` for each of `streams`, one pipeline of `EVALSHA`s (the
    /// script loaded again if Redis lost it).
    async fn groups(&mut self, streams: &[String]) -> RedisResult<Vec<Value>> {
        for attempt in 0..2 {
            let sha = match &self.groups_sha {
                Some(sha) => sha.clone(),
                None => {
                    let v = self
                        .query(redis::cmd("SCRIPT").arg("LOAD").arg(GROUPS))
                        .await?;
                    let sha = text(&v).ok_or_else(|| {
                        redis::RedisError::from((
                            redis::ErrorKind::UnexpectedReturnType,
                            "SCRIPT LOAD answered something else",
                        ))
                    })?;
                    self.groups_sha = Some(sha.clone());
                    sha
                }
            };
            let mut pipe = redis::pipe();
            for s in streams {
                pipe.cmd("EVALSHA").arg(&sha).arg(1).arg(s);
            }
            let mut c = self.conn().await?;
            let r = tokio::time::timeout(self.timeout, c.pipe(&pipe))
                .await
                .map_err(|_| timed_out())
                .and_then(|r| r);
            match r {
                Ok(v) => return Ok(items(&v).to_vec()),
                Err(e) if attempt == 0 && e.code() == Some("NOSCRIPT") => {
                    self.groups_sha = None;
                }
                Err(e) => {
                    if connection_lost(&e) || e.is_timeout() {
                        self.conn = None;
                    }
                    return Err(e);
                }
            }
        }
        Ok(Vec::new())
    }

    /// The live reports in the hash `key` (`<ts> <head> <pos>` per
    /// aggregator): name, head, position. Junk, and reports too old or dated
    /// too far ahead, are deleted.
    async fn reports(
        &mut self,
        key: &str,
        now_s: f64,
        max_name: usize,
    ) -> RedisResult<Vec<(String, u64, u64)>> {
        let v = self
            .query_typed(redis::cmd("HGETALL").arg(key), key, "hash")
            .await?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (name, value) in crate::fanout::redis::fields(&v) {
            let Some(value) = text(value) else {
                gone.push(name);
                continue;
            };
            let mut it = value.split(' ');
            let (Some(ts), Some(head), Some(pos), None) = (
                it.next().and_then(|x| x.parse::<f64>().ok()),
                it.next().and_then(|x| x.parse::<u64>().ok()),
                it.next().and_then(|x| x.parse::<u64>().ok()),
                it.next(),
            ) else {
                gone.push(name);
                continue;
            };
            // Too old, or dated ahead of Redis's clock by as much (junk, or a
            // clock that stepped back): not a stage any more. A name the
            // engine would refuse is not one either.
            if (now_s - ts).abs() > AGGREGATOR_GONE.as_secs_f64()
                || !ts.is_finite()
                || name.is_empty()
                || name.len() > max_name
            {
                gone.push(name);
                continue;
            }
            out.push((name, head, pos));
        }
        for chunk in gone.chunks(1000) {
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(key);
            for g in chunk {
                cmd.arg(g);
            }
            self.query(&cmd).await?;
        }
        Ok(out)
    }

    /// Every stage Redis knows: aggregators' reports, the agents' spools
    /// (summed over the aggregators' reports) and the sites' groups.
    async fn stages(&mut self, now_s: f64) -> RedisResult<Vec<StageSample>> {
        let key = self.keys.aggregators.clone();
        let max_name = ferrule_signals::engine::MAX_STAGE_NAME - "aggregator:".len();
        let mut out: Vec<StageSample> = self
            .reports(&key, now_s, max_name)
            .await?
            .into_iter()
            .map(|(name, head, position)| StageSample {
                stage: format!("aggregator:{name}"),
                head,
                position,
            })
            .collect();
        // Bounded (the engine takes at most MAX_STAGES): the same ones each
        // time, by name.
        out.sort_by(|a, b| a.stage.cmp(&b.stage));
        out.truncate(MAX_STAGES / 2);
        let key = self.keys.agents.clone();
        let agents = self.reports(&key, now_s, max_name).await?;
        if !agents.is_empty() {
            let (head, position) = agents.iter().fold((0u64, 0u64), |(h, p), (_, ah, ap)| {
                (h.saturating_add(*ah), p.saturating_add(*ap))
            });
            out.push(StageSample {
                stage: "agents".into(),
                head,
                position,
            });
        }
        let key = self.keys.streams.clone();
        let v = self
            .query_typed(redis::cmd("SMEMBERS").arg(&key), &key, "set")
            .await?;
        let mut streams: Vec<String> = items(&v).iter().filter_map(text).collect();
        // The same streams each time (SMEMBERS has no order): a sum over a
        // varying subset would read as counters going back and forth.
        streams.sort_unstable();
        streams.truncate(MAX_STREAMS);
        let mut groups: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let max_name = ferrule_signals::engine::MAX_STAGE_NAME - "redis:".len();
        let mut answers = Vec::with_capacity(streams.len());
        for chunk in streams.chunks(STREAMS_PER_TRIP) {
            answers.extend(self.groups(chunk).await?);
        }
        for v in answers {
            let parts = items(&v);
            let Some(added) = parts.first().and_then(int) else {
                continue;
            };
            for g in parts[1..].chunks_exact(3) {
                let (Some(name), Some(read), Some(lag)) = (text(&g[0]), int(&g[1]), int(&g[2]))
                else {
                    continue;
                };
                if name.len() > max_name {
                    continue;
                }
                let pos = if read >= 0 {
                    read
                } else if lag >= 0 && added >= 0 {
                    added - lag
                } else {
                    continue;
                };
                if !groups.contains_key(&name) && groups.len() >= MAX_STAGES - out.len() {
                    continue;
                }
                let e = groups.entry(name).or_default();
                // Saturating: Redis counters go to i64::MAX (XSETID), a sum
                // of several would overflow.
                e.0 = e.0.saturating_add(u64::try_from(added.max(0)).unwrap_or(0));
                e.1 = e.1.saturating_add(u64::try_from(pos.max(0)).unwrap_or(0));
            }
        }
        out.extend(groups.into_iter().map(|(g, (head, pos))| StageSample {
            stage: format!("redis:{g}"),
            head,
            position: pos,
        }));
        Ok(out)
    }

    /// Stores and publishes `t`; its entry id, or `None` if refused.
    async fn store(
        &mut self,
        fence: u64,
        history: u64,
        t: &SetText,
    ) -> RedisResult<Option<String>> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(STORE)
            .arg(2)
            .arg(&self.keys.newest)
            .arg(&self.keys.snapshots)
            .arg(fence)
            .arg(history)
            .arg(&t.ts)
            .arg(&t.snapshot)
            .arg(&t.signals)
            .arg(&self.channel);
        Ok(match self.query(&cmd).await? {
            Value::Int(0) => None,
            v => Some(text(&v).unwrap_or_default()),
        })
    }

    async fn release(&mut self) {
        if self.lease.release().is_some() {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(RELEASE)
                .arg(1)
                .arg(&self.keys.lock)
                .arg(&self.token);
            let _ = self.query(&cmd).await;
        }
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// A stored set's parts as text: what the store script takes and what the
/// page, the Kafka history and the Redis history all carry.
struct SetText {
    ts: String,
    snapshot: String,
    signals: String,
}

impl SetText {
    fn of(s: &Sampled) -> Self {
        Self {
            // Rust's float text is JSON's (never an exponent; finite: a
            // clock's reading), as the published set needs.
            ts: format!("{}", s.snapshot.ts),
            snapshot: serde_json::to_string(&s.snapshot).unwrap_or_else(|_| "null".into()),
            signals: serde_json::to_string(&s.signals).unwrap_or_else(|_| "[]".into()),
        }
    }

    fn frame(&self, seq: &str, fence: u64) -> String {
        crate::page::ring::frame_text(
            seq,
            &fence.to_string(),
            &self.ts,
            &self.snapshot,
            &self.signals,
        )
    }
}

/// The durable history in Kafka: each stored set, as the page gets it,
/// keyed by its fence. Sent without waiting; a failure is counted in
/// `ferrule_aggregator_sampler_errors_total` and logged once a minute at most.
struct HistoryTopic {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    last_warned: Arc<Mutex<Option<Instant>>>,
}

impl HistoryTopic {
    fn new(k: &crate::config::KafkaSection, topic: &str) -> anyhow::Result<Self> {
        let mut c = rdkafka::config::ClientConfig::new();
        c.set("bootstrap.servers", &k.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "zstd")
            .set("linger.ms", "50")
            .set("message.timeout.ms", "30000")
            // A dead Kafka holds at most this many sets.
            .set("queue.buffering.max.messages", "1000")
            .set("client.id", format!("{}-sampler", k.client_id));
        crate::kafka::pass_through(&mut c, k)?;
        Ok(Self {
            producer: c.create()?,
            topic: topic.to_string(),
            last_warned: Arc::default(),
        })
    }

    fn send(&self, fence: u64, text: String, metrics: &Metrics) {
        let key = fence.to_string();
        let record = rdkafka::producer::FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&text);
        let warn = {
            let errors = metrics.errors.clone();
            let last = self.last_warned.clone();
            let topic = self.topic.clone();
            move |e: String| {
                errors.inc();
                let mut l = last.lock().unwrap_or_else(PoisonError::into_inner);
                if l.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    *l = Some(Instant::now());
                    tracing::warn!(topic, error = %e, "sampler: writing the signal history to Kafka failed (create the topic, or set sampler.kafka_history_topic = \"\" to turn it off)");
                }
            }
        };
        match self.producer.send_result(record) {
            Ok(delivery) => {
                tokio::spawn(async move {
                    match delivery.await {
                        Ok(Ok(_)) => {}
                        Ok(Err((e, _))) => warn(e.to_string()),
                        Err(_) => warn("delivery cancelled".into()),
                    }
                });
            }
            Err((e, _)) => warn(e.to_string()),
        }
    }
}

/// The Kafka groups' newest reading, if fresh (three periods and 2 s).
fn kafka_now(k: &KafkaReading, period: Duration) -> Vec<StageSample> {
    match &*k.lock().unwrap_or_else(PoisonError::into_inner) {
        Some((stages, at)) if at.elapsed() < period * 3 + Duration::from_secs(2) => stages.clone(),
        _ => Vec::new(),
    }
}

/// Reads the Kafka groups every period while this aggregator samples, on a
/// blocking thread, into `out` (the sampler takes the newest reading: a slow
/// or dead Kafka never holds a snapshot up).
async fn read_kafka(
    reader: kafka::KafkaStages,
    period: Duration,
    active: Arc<std::sync::atomic::AtomicBool>,
    out: KafkaReading,
    mut stop: watch::Receiver<bool>,
) {
    let reader = Arc::new(reader);
    let mut last_warned: Option<Instant> = None;
    loop {
        if active.load(std::sync::atomic::Ordering::Relaxed) {
            let r = reader.clone();
            if let Ok((stages, errors)) = tokio::task::spawn_blocking(move || r.read()).await {
                if !errors.is_empty()
                    && last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60))
                {
                    last_warned = Some(Instant::now());
                    tracing::warn!(errors = ?errors, "sampler: reading Kafka consumer groups failed");
                }
                *out.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((stages, Instant::now()));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Wall time, Unix seconds to the microsecond (as Redis `TIME` gives it).
fn wall_s() -> f64 {
    let us = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    (us / 1_000_000) as f64 + (us % 1_000_000) as f64 / 1e6
}

impl Driver {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut next_sample = tokio::time::Instant::now();
        loop {
            if *stop.borrow() {
                break;
            }
            if let Some(r) = &mut self.redis {
                r.lease_step(&self.metrics).await;
            }
            let now = tokio::time::Instant::now();
            if now >= next_sample {
                next_sample = now + self.period;
                self.sample().await;
            }
            let wake = match &self.redis {
                Some(r) => match r.lease.next(Instant::now()) {
                    Action::WaitUntil(at) => tokio::time::Instant::from_std(at).min(next_sample),
                    _ => next_sample.min(tokio::time::Instant::now() + Duration::from_millis(10)),
                },
                None => next_sample,
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                _ = stop.changed() => {}
            }
        }
        if let Some(r) = &mut self.redis {
            r.release().await;
        }
        self.metrics.active.set(0);
    }

    /// One period: report, and if this aggregator samples, snapshot, signal and store.
    async fn sample(&mut self) {
        let head = self.ingest.batches_received.get();
        let pos = self.ingest.acked_batches.get().min(head);
        let Some(r) = &mut self.redis else {
            self.sample_local(head, pos);
            return;
        };
        let now_s = match r.time().await {
            Ok(t) => t,
            Err(e) => {
                self.metrics.errors.inc();
                tracing::debug!(error = %e, "sampler: Redis TIME failed");
                return;
            }
        };
        let agents = self.agents.spool_backlog().map(|backlog| {
            let received = self.ingest.batches_received.get();
            (received.saturating_add(backlog), received)
        });
        if let Err(e) = r.report(&self.instance, now_s, (head, pos), agents).await {
            self.metrics.errors.inc();
            tracing::debug!(error = %e, "sampler: reporting counters failed");
        }
        let Some(fence) = r.lease.holds(Instant::now()) else {
            self.active
                .store(false, std::sync::atomic::Ordering::Relaxed);
            if r.was_active {
                r.was_active = false;
                self.metrics.active.set(0);
            }
            return;
        };
        self.active
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let stages = match r.stages(now_s).await {
            Ok(mut s) => {
                s.extend(kafka_now(&self.kafka_stages, self.period));
                s
            }
            Err(e) => {
                self.metrics.errors.inc();
                tracing::warn!(error = %e, "sampler: reading the stages failed");
                return;
            }
        };
        // Still the sampler after those round trips (a pause would show here)?
        if r.lease.holds(Instant::now()) != Some(fence) {
            return;
        }
        let snapshot = Snapshot {
            ts: now_s,
            fence,
            stages,
        };
        if self.engine.newest_fence().is_some_and(|n| n > fence) {
            // Granted a fence below one this engine took: Redis lost the
            // counter and the history (restarted without persistence); the
            // grant is the truth now, and the signals start over.
            tracing::warn!(
                fence,
                newest = self.engine.newest_fence(),
                "sampler: the fence went back (Redis lost its keys); signals start over"
            );
            self.engine = Engine::default();
        }
        let signals = match self.engine.handle(&snapshot) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "sampler: snapshot refused by the engine");
                return;
            }
        };
        let sampled = Arc::new(Sampled { snapshot, signals });
        let set = SetText::of(&sampled);
        match r.store(fence, self.history, &set).await {
            Ok(Some(id)) => {
                if !r.was_active {
                    r.was_active = true;
                    self.metrics.active.set(1);
                }
                self.metrics
                    .fence
                    .set(i64::try_from(fence).unwrap_or(i64::MAX));
                self.metrics.snapshots.inc();
                if let Some(h) = &self.history_topic {
                    h.send(fence, set.frame(&id, fence), &self.metrics);
                }
                self.keep(sampled);
            }
            Ok(None) => {
                self.metrics.refused.inc();
                tracing::warn!(fence, "sampler: the store refused this fence (another aggregator samples now); stepping down");
                r.lease.lost(Instant::now());
                r.was_active = false;
                self.metrics.active.set(0);
            }
            Err(e) => {
                self.metrics.errors.inc();
                tracing::warn!(error = %e, "sampler: storing the snapshot failed");
            }
        }
    }

    /// Without Redis: this aggregator's own stages, kept in memory and a file.
    fn sample_local(&mut self, head: u64, pos: u64) {
        let mut stages = vec![StageSample {
            stage: "aggregator".into(),
            head,
            position: pos,
        }];
        for (name, pushed, done) in self.local.progress() {
            let stage = format!("fanout:{name}");
            if stages.iter().all(|s| s.stage != stage) {
                stages.push(StageSample {
                    stage,
                    head: pushed,
                    position: done,
                });
            }
        }
        if let Some(backlog) = self.agents.spool_backlog() {
            stages.push(StageSample {
                stage: "agents".into(),
                head: head.saturating_add(backlog),
                position: head,
            });
        }
        self.active
            .store(true, std::sync::atomic::Ordering::Relaxed);
        stages.extend(kafka_now(&self.kafka_stages, self.period));
        let snapshot = Snapshot {
            ts: wall_s(),
            fence: 1,
            stages,
        };
        let signals = match self.engine.handle(&snapshot) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "sampler: snapshot refused by the engine");
                return;
            }
        };
        if let Err(e) = self.append_local(&snapshot) {
            self.metrics.errors.inc();
            tracing::debug!(error = %e, file = %self.file.display(), "sampler: appending the history failed");
        }
        self.metrics.active.set(1);
        self.metrics.fence.set(1);
        self.metrics.snapshots.inc();
        self.published += 1;
        let seq = format!("{}-{}", self.run, self.published);
        let sampled = Arc::new(Sampled { snapshot, signals });
        let frame = SetText::of(&sampled).frame(&seq, 1);
        if let Some(h) = &self.history_topic {
            h.send(1, frame.clone(), &self.metrics);
        }
        self.gateway.offer(frame);
        self.keep(sampled);
    }

    fn append_local(&self, snapshot: &Snapshot) -> std::io::Result<()> {
        use std::io::Write as _;
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if std::fs::metadata(&self.file).is_ok_and(|m| m.len() >= LOCAL_FILE_MAX) {
            std::fs::rename(&self.file, self.file.with_extension("jsonl.1"))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)?;
        let mut line = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
        line.push(b'\n');
        f.write_all(&line)
    }

    fn keep(&self, s: Arc<Sampled>) {
        let mut r = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let cap = KEPT_IN_MEMORY.min(usize::try_from(self.history).unwrap_or(usize::MAX));
        while r.len() >= cap.max(1) {
            r.pop_front();
        }
        r.push_back(s);
    }
}
