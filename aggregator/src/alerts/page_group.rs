//! Paging through Redis: with a `[redis]` section (and `alerts.redis_stream`,
//! `alerts.page_through_redis` on), every aggregator writes its transitions to
//! the alert stream `{prefix}:alerts`, and each pager output (an Alertmanager,
//! PagerDuty) is fed from that stream by one Redis consumer group,
//! `page:<output>`, shared by every aggregator.
//!
//! ```text
//! aggregator A ─┐                     ┌─ group page:alertmanager:host:port ─► lease holder ─► Alertmanager
//! aggregator B ─┴─► XADD ferrule:alerts ┤
//!                                     └─ group page:pagerduty ──────────────► lease holder ─► PagerDuty
//! ```
//!
//! - **One deliverer per output at a time.** A consumer group hands entries to
//!   whichever consumer asks, so two aggregators reading at once could take one
//!   alert's `firing` and its `resolved` in the wrong order. Each output
//!   therefore has a lease (`SET NX PX` with a random token, renewed every third
//!   of `alerts.page_lease_ms` by a script that checks the token); only its
//!   holder reads, so the group's entries are handled in stream order. A
//!   holder counts its lease as held only until two thirds of the TTL after
//!   its last renewal began, on the monotonic clock, and makes each delivery
//!   attempt only while it holds it: one stopped past its lease (SIGSTOP, a
//!   paused VM) wakes as a non-holder and leaves what it had read to the new
//!   holder, instead of delivering a `firing` after the new holder paged the
//!   `resolved`.
//! - **At least once, acknowledged after delivery.** The holder reads with
//!   `XREADGROUP`, delivers (retrying as the direct outputs do), then `XACK`s.
//!   An aggregator that takes the lease over first claims, with `XAUTOCLAIM`,
//!   every entry a dead or stopped holder had read but not acknowledged (its
//!   lease having expired, they have been idle at least that long), and
//!   handles them before new ones. A holder whose round failed (Redis
//!   refused a claim, a command timed out) likewise reclaims its own pending
//!   entries before reading new ones: `XREADGROUP >` never returns an entry
//!   again.
//! - **Once per episode.** What each output has open lives in Redis, in the
//!   hash `{prefix}:alerts:open:<output>`, moved by one script per entry
//!   ([`CLAIM`]): a `firing` for an alert already open (another aggregator's
//!   copy after a failover) is not paged again; a `resolved` closes the
//!   episode that was opened, with its identity; an entry older than the one
//!   the hash last recorded (read again after a takeover) is not paged again,
//!   and an entry read again that was the last recorded is delivered again
//!   (its first delivery may not have happened; pagers drop such repeats).
//! - **Damage heals.** The open hash and the lease are ferrule's keys: a key
//!   of another type under their names (WRONGTYPE for every command) is
//!   deleted by the next claim or lease script, as a damaged record is
//!   overwritten; a destroyed group is made again.
//! - **Resends.** Alertmanager resolves what it stops hearing of, so the holder
//!   resends every open alert of the hash each resend interval. The aggregator
//!   that forgets a silent agent ([`super::Notifiers::forget`]) removes its
//!   open alerts only if it is still the one that last reported them.
//!
//! Counters, beside the output's usual ones:
//! `ferrule_aggregator_alert_page_reclaimed_total{output}` (entries taken over
//! from another consumer), `ferrule_aggregator_alert_page_entries_undecodable_total{output}`,
//! `ferrule_aggregator_alert_page_redis_errors_total{output}`, and the gauge
//! `ferrule_aggregator_alert_page_lease{output}` (1 while this aggregator
//! delivers for the output).

use super::notify::{Kind, Notification};
use super::stream::{from_redis_fields, redis_fields};
use super::{Driver, Output, Shutdown};
use crate::fanout::redis::{connection_lost, items, text, Conn, Target};
use ferrule_rules::Fingerprint;
use ferrule_telemetry::{Counter, Gauge, Registry};
use redis::Value;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// Entries read per round.
const READ_COUNT: usize = 64;
/// Longest wait of one read for new entries (well under any response timeout).
const BLOCK: Duration = Duration::from_millis(250);
/// How long a resolved episode's record stays, so a late copy is recognized.
const RESOLVED_KEPT: Duration = Duration::from_secs(3600);
/// Consumers of the group idle this long with nothing pending are removed.
const CONSUMER_GONE: Duration = Duration::from_secs(3600);
/// How often the group's consumers and old records are tidied.
const HOUSEKEEPING: Duration = Duration::from_secs(60);
/// When a group is first made it starts this far back, so alerts written
/// while it did not exist yet (Redis came back before the group was made) are
/// still paged, but not a long history.
const FIRST_READ_BACK: Duration = Duration::from_secs(600);
/// Open alerts resent per round at most (the direct outputs' bound).
const MAX_RESEND: usize = super::MAX_OPEN_ALERTS;
/// Resolved records dropped per resend round at most (one round trip each):
/// after a storm of alert series, the rest go in later rounds rather than
/// hold up paging for one round trip per record (200 000 took half a minute).
const MAX_DROPS: usize = 1000;
/// Forget requests queued at most (one per forgotten series).
const MAX_FORGETS: usize = 100_000;

/// One entry's step in the output's open-alerts hash.
///
/// `KEYS[1]` the hash; `ARGV`: 1 `F` (firing) or `R` (resolved), 2 the
/// fingerprint, 3 the entry id, 4 the aggregator that wrote it, 5 the entry's
/// fields as a JSON object, 6 the time in ms, 7 the entry's episode.
/// Values: `F|<id>|<aggregator>|<fields>` while open,
/// `R|<id>|<ms>|<episode>` once resolved. Returns `{verdict, episode}`:
/// `page` (deliver; for a resolve, close `episode`), `same` (a copy of what
/// is open or closed: not paged), `stale` (older than what was recorded).
pub const CLAIM: &str = r#"
-- The hash is ferrule's: anything else under its name is damage (as a damaged
-- record is) and would stop every claim; it goes.
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'hash' and t ~= 'none' then redis.call('DEL', KEYS[1]) end
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  if am == nil or bm == nil then return false end
  return am < bm or (am == bm and as < bs)
end
-- The record, split: kind, id, then two more parts (the last may hold '|').
-- Anything else (damaged, foreign) reads as no record and is overwritten.
local cur = redis.call('HGET', KEYS[1], ARGV[2])
local kind, id, p1, p2
if cur then
  kind, id, p1, p2 = string.match(cur, '^([FR])|([^|]*)|([^|]*)|(.*)$')
end
if kind and id ~= ARGV[3] and older(ARGV[3], id) then
  return {'stale', ''}
end
if kind == 'R' and id == ARGV[3] then
  return {'page', p2}
end
if ARGV[1] == 'F' then
  if kind == 'F' then
    if id == ARGV[3] then return {'page', ''} end
    -- The same incident: whoever reported it last speaks for it now.
    redis.call('HSET', KEYS[1], ARGV[2], 'F|' .. id .. '|' .. ARGV[4] .. '|' .. p2)
    return {'same', ''}
  end
  redis.call('HSET', KEYS[1], ARGV[2], 'F|' .. ARGV[3] .. '|' .. ARGV[4] .. '|' .. ARGV[5])
  return {'page', ''}
end
if kind == 'F' then
  local ok, fields = pcall(cjson.decode, p2)
  local opened = ARGV[7]
  if ok and type(fields) == 'table' and type(fields['episode']) == 'string' then
    opened = fields['episode']
  end
  redis.call('HSET', KEYS[1], ARGV[2], 'R|' .. ARGV[3] .. '|' .. ARGV[6] .. '|' .. opened)
  return {'page', opened}
end
if kind == 'R' then
  return {'same', ''}
end
redis.call('HSET', KEYS[1], ARGV[2], 'R|' .. ARGV[3] .. '|' .. ARGV[6] .. '|' .. ARGV[7])
return {'page', ARGV[7]}
"#;

/// Takes or renews the lease `KEYS[1]` for token `ARGV[1]`, `ARGV[2]` ms. A
/// key of another type under the lease's name is damage that would stop
/// every aggregator from holding it: it goes.
pub const LEASE: &str = r#"
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'string' and t ~= 'none' then redis.call('DEL', KEYS[1]) end
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"#;

/// Gives the lease `KEYS[1]` back if token `ARGV[1]` still holds it.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Drops open alert `ARGV[1]` of hash `KEYS[1]` if aggregator `ARGV[2]` last
/// reported it (a silent agent forgotten there; after a failover the
/// aggregator that has the agent now speaks for its alerts).
pub const FORGET: &str = r#"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return 0 end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local writer = string.match(cur, '^F|[^|]*|([^|]*)|')
  if writer == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
end
return 0
"#;

/// Drops field `ARGV[1]` of `KEYS[1]` if it still holds `ARGV[2]`.
const DROP_IF: &str = r#"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return 0 end
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"#;

/// What [`CLAIM`] decided for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it; a resolve closes this episode (`<fingerprint>-<start ns>`).
    Page(Option<String>),
    /// A copy of what is already open or closed.
    Same,
    /// Older than what the output last recorded: handled before.
    Stale,
}

/// The Redis keys and names of one output's group.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The alert stream.
    pub stream: String,
    /// The consumer group, `page:<output>`.
    pub group: String,
    /// What is open, `{prefix}:alerts:open:<output>`.
    pub open: String,
    /// The lease, `{prefix}:alerts:lease:<output>`.
    pub lease: String,
}

impl Keys {
    /// The keys for output `output` (its metric label) under `prefix`.
    pub fn new(prefix: &str, output: &str) -> Self {
        Self {
            stream: super::stream::redis_stream_key(prefix),
            group: format!("page:{output}"),
            open: format!("{prefix}:alerts:open:{output}"),
            lease: format!("{prefix}:alerts:lease:{output}"),
        }
    }
}

/// The counters of one output's group.
#[derive(Debug, Clone)]
struct GroupCounters {
    reclaimed: Counter,
    undecodable: Counter,
    redis_errors: Counter,
    lease: Gauge,
}

impl GroupCounters {
    fn new(r: &Registry, output: &str) -> Self {
        let l = [("output", output)];
        Self {
            reclaimed: r.counter(
                "ferrule_aggregator_alert_page_reclaimed_total",
                "Alert stream entries taken over from a consumer that read but did not acknowledge them.",
                &l,
            ),
            undecodable: r.counter(
                "ferrule_aggregator_alert_page_entries_undecodable_total",
                "Alert stream entries that are not alerts (skipped and acknowledged).",
                &l,
            ),
            redis_errors: r.counter(
                "ferrule_aggregator_alert_page_redis_errors_total",
                "Failed Redis commands of a paging group (retried).",
                &l,
            ),
            lease: r.gauge(
                "ferrule_aggregator_alert_page_lease",
                "1 while this aggregator delivers an output's pages from the alert stream.",
                &l,
            ),
        }
    }
}

/// Whether this aggregator holds an output's lease: until two thirds of the
/// TTL after the start of its last successful take or renewal, so it stops
/// delivering before Redis lets the lease go, even if the process was stopped
/// (SIGSTOP, a VM paused) and wakes with a request still in hand. The clock is
/// monotonic and runs while the process is stopped.
#[derive(Debug, Default)]
struct LeaseState {
    until: Mutex<Option<Instant>>,
}

impl LeaseState {
    fn holds(&self) -> bool {
        self.until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|t| Instant::now() < t)
    }

    fn set(&self, until: Option<Instant>) {
        *self.until.lock().unwrap_or_else(PoisonError::into_inner) = until;
    }
}

/// Where a holder resumes [`XAUTOCLAIM`]ing pending entries: after a takeover
/// (counted as reclaimed), or after a failed round, whose entries it read
/// itself and may not have handled.
#[derive(Debug, Clone)]
struct Reclaim {
    cursor: String,
    takeover: bool,
}

/// One output fed from its consumer group.
pub(super) struct PageGroup {
    driver: Driver,
    target: Arc<Target>,
    keys: Keys,
    me: String,
    lease_ttl: Duration,
    resend: Option<Duration>,
    max_batch: usize,
    timeout: Duration,
    counters: GroupCounters,
    lease_state: Arc<LeaseState>,
}

/// One stream entry as read: its id and, unless it was trimmed away, fields.
type Entry = (String, Option<Vec<(String, String)>>);

impl PageGroup {
    /// The group for `driver`'s output; `resend` for Alertmanager.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        driver: Driver,
        target: Target,
        prefix: &str,
        me: String,
        lease_ttl: Duration,
        resend: Option<Duration>,
        max_batch: usize,
        timeout: Duration,
        registry: &Registry,
    ) -> Self {
        let name = driver.output.name.clone();
        Self {
            counters: GroupCounters::new(registry, &name),
            keys: Keys::new(prefix, &name),
            driver,
            target: Arc::new(target),
            me,
            lease_ttl,
            resend,
            max_batch: max_batch.max(1),
            timeout,
            lease_state: Arc::new(LeaseState::default()),
        }
    }

    /// Runs the lease and the reader until shutdown.
    pub(super) async fn run(mut self) {
        let lease = tokio::spawn(lease_loop(
            self.target.clone(),
            self.keys.lease.clone(),
            self.me.clone(),
            self.lease_ttl,
            self.timeout,
            self.lease_state.clone(),
            self.driver.shutdown.clone(),
        ));
        self.read_loop().await;
        lease.abort();
        let _ = lease.await;
        self.counters.lease.set(0);
        // Give the lease back at once, so another aggregator need not wait
        // for it to expire.
        if let Ok(Ok(mut c)) = tokio::time::timeout(self.timeout, self.target.connect()).await {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(RELEASE).arg(1).arg(&self.keys.lease).arg(&self.me);
            let _ = tokio::time::timeout(self.timeout, c.cmd(&cmd)).await;
        }
    }

    async fn read_loop(&mut self) {
        let mut conn: Option<Conn> = None;
        let mut holding = false;
        let mut reclaim_from: Option<Reclaim> = None;
        let mut next_resend = Instant::now();
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        let mut failures: u32 = 0;
        while !self.driver.closed() {
            let c = match &conn {
                Some(c) => c.clone(),
                None => match tokio::time::timeout(self.timeout * 2, self.target.connect()).await {
                    Ok(Ok(c)) => {
                        conn = Some(c.clone());
                        c
                    }
                    Ok(Err(e)) => {
                        self.failed(&mut failures, &format!("connecting: {e}"))
                            .await;
                        continue;
                    }
                    Err(_) => {
                        self.failed(&mut failures, "connecting: no answer").await;
                        continue;
                    }
                },
            };
            let mut c = c;
            let step = self
                .step(
                    &mut c,
                    &mut holding,
                    &mut reclaim_from,
                    &mut next_resend,
                    &mut next_housekeeping,
                )
                .await;
            match step {
                Ok(()) => failures = 0,
                Err(e) => {
                    if connection_lost(&e) {
                        conn = None;
                    }
                    if e.code() == Some("NOGROUP") {
                        // The stream or group went away (FLUSHALL, a new
                        // Redis, XGROUP DESTROY): made again on the next round.
                        holding = false;
                    }
                    if holding && reclaim_from.is_none() {
                        // Entries this round read may be pending unhandled
                        // (a claim failed): `>` would never return them.
                        reclaim_from = Some(Reclaim {
                            cursor: "0-0".into(),
                            takeover: false,
                        });
                    }
                    self.failed(&mut failures, &e.to_string()).await;
                }
            }
        }
    }

    async fn failed(&self, failures: &mut u32, why: &str) {
        *failures = failures.saturating_add(1);
        self.counters.redis_errors.inc();
        let wait = Duration::from_millis(100u64.saturating_mul(1 << (*failures).min(6)))
            .min(Duration::from_secs(5));
        if *failures == 1 || (*failures).is_power_of_two() {
            tracing::warn!(output = %self.driver.output.name, error = %why, failures = *failures, "paging from the alert stream: Redis failed; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.driver.shutdown.wake.notified() => {}
        }
    }

    /// One round: forgets, then (holding the lease) reclaim or read, deliver,
    /// acknowledge, resend and tidy.
    async fn step(
        &mut self,
        c: &mut Conn,
        holding: &mut bool,
        reclaim_from: &mut Option<Reclaim>,
        next_resend: &mut Instant,
        next_housekeeping: &mut Instant,
    ) -> Result<(), redis::RedisError> {
        self.forgets(c).await?;
        if !self.lease_state.holds() {
            if *holding {
                tracing::info!(output = %self.driver.output.name, "paging lease lost: another aggregator delivers");
            }
            *holding = false;
            self.counters.lease.set(0);
            tokio::select! {
                () = tokio::time::sleep(self.lease_ttl / 3) => {}
                () = self.driver.shutdown.wake.notified() => {}
                () = self.driver.output.wake.notified() => {}
            }
            return Ok(());
        }
        if !*holding {
            self.make_group(c).await?;
            *holding = true;
            *reclaim_from = Some(Reclaim {
                cursor: "0-0".into(),
                takeover: true,
            });
            *next_resend = Instant::now();
            self.counters.lease.set(1);
            tracing::info!(output = %self.driver.output.name, group = %self.keys.group, "paging lease taken: this aggregator delivers");
        }
        let entries = if let Some(Reclaim { cursor, takeover }) = reclaim_from.clone() {
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&self.keys.stream)
                .arg(&self.keys.group)
                .arg(&self.me)
                .arg(0)
                .arg(&cursor)
                .arg("COUNT")
                .arg(READ_COUNT);
            let reply = self.query(c, &cmd).await?;
            let parts = items(&reply);
            let next = parts.first().and_then(text).unwrap_or_else(|| "0-0".into());
            let got = parts.get(1).map(parse_entries).unwrap_or_default();
            *reclaim_from = (next != "0-0").then_some(Reclaim {
                cursor: next,
                takeover,
            });
            if takeover && !got.is_empty() {
                self.counters.reclaimed.add(got.len() as u64);
                tracing::info!(output = %self.driver.output.name, entries = got.len(), "paging: took over entries read but not acknowledged");
            }
            got
        } else {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&self.keys.group)
                .arg(&self.me)
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.keys.stream)
                .arg(">");
            let reply = self.query(c, &cmd).await?;
            stream_entries(&reply)
        };
        if !entries.is_empty() {
            self.handle(c, entries).await?;
        }
        if let Some(interval) = self.resend {
            if Instant::now() >= *next_resend {
                *next_resend = Instant::now() + interval;
                self.resend(c).await?;
            }
        }
        if Instant::now() >= *next_housekeeping {
            *next_housekeeping = Instant::now() + HOUSEKEEPING;
            self.housekeeping(c).await?;
        }
        Ok(())
    }

    async fn query(&self, c: &mut Conn, cmd: &redis::Cmd) -> Result<Value, redis::RedisError> {
        match tokio::time::timeout(self.timeout + BLOCK, c.cmd(cmd)).await {
            Ok(r) => r,
            Err(_) => Err(crate::fanout::redis::timed_out()),
        }
    }

    /// Makes the group if it is missing, starting [`FIRST_READ_BACK`] ago.
    async fn make_group(&self, c: &mut Conn) -> Result<(), redis::RedisError> {
        let start_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(FIRST_READ_BACK)
            .as_millis();
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&self.keys.stream)
            .arg(&self.keys.group)
            .arg(format!("{start_ms}-0"))
            .arg("MKSTREAM");
        match self.query(c, &cmd).await {
            Ok(_) => {
                tracing::info!(output = %self.driver.output.name, group = %self.keys.group, "paging: made the consumer group");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Decides each entry, delivers what pages, then acknowledges them all.
    async fn handle(&mut self, c: &mut Conn, entries: Vec<Entry>) -> Result<(), redis::RedisError> {
        let mut ids = Vec::with_capacity(entries.len());
        let mut pages: Vec<Arc<Notification>> = Vec::new();
        for (id, fields) in entries {
            ids.push(id.clone());
            let Some(fields) = fields else {
                continue; // trimmed away before it was handled
            };
            let n = match from_redis_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
                Ok(n) => n,
                Err(e) => {
                    self.counters.undecodable.inc();
                    tracing::warn!(output = %self.driver.output.name, entry = %id, error = %e, "alert stream entry is not an alert; skipped");
                    continue;
                }
            };
            let writer = fields
                .iter()
                .find(|(k, _)| k == "aggregator")
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            match self.claim(c, &id, writer, &n).await? {
                Verdict::Page(episode) => {
                    let mut n = n;
                    if let (Kind::Resolved, Some(e)) = (n.kind, episode) {
                        if let Some(start) = parse_episode(&e, n.fingerprint) {
                            n.episode.started_ns = start;
                        }
                    }
                    pages.push(Arc::new(n));
                }
                Verdict::Same => {
                    if n.kind == Kind::Firing {
                        self.driver.output.counters.deduped.inc();
                    }
                }
                Verdict::Stale => {}
            }
        }
        if !self.deliver_all(pages).await {
            // Shutting down or the lease lost: not acknowledged, the next
            // holder has them.
            return Ok(());
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.keys.stream).arg(&self.keys.group);
        for id in &ids {
            cmd.arg(id);
        }
        self.query(c, &cmd).await.map(|_| ())
    }

    async fn claim(
        &self,
        c: &mut Conn,
        id: &str,
        writer: &str,
        n: &Notification,
    ) -> Result<Verdict, redis::RedisError> {
        let payload: serde_json::Map<String, serde_json::Value> = redis_fields(n)
            .into_iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
            .collect();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CLAIM)
            .arg(1)
            .arg(&self.keys.open)
            .arg(match n.kind {
                Kind::Firing => "F",
                Kind::Resolved => "R",
            })
            .arg(n.fingerprint.to_string())
            .arg(id)
            // A foreign writer's name cannot break the record's separators.
            .arg(writer.replace('|', "_"))
            .arg(serde_json::Value::Object(payload).to_string())
            .arg(now_ms())
            .arg(n.dedup_key());
        let reply = self.query(c, &cmd).await?;
        let parts = items(&reply);
        let verdict = parts.first().and_then(text).unwrap_or_default();
        let episode = parts.get(1).and_then(text).filter(|e| !e.is_empty());
        Ok(match verdict.as_str() {
            "page" => Verdict::Page(episode),
            "same" => Verdict::Same,
            _ => Verdict::Stale,
        })
    }

    /// Delivers `pages` in order, never an alert's firing and resolve in one
    /// request. False when shutting down before all were handled.
    /// Each attempt is made only while the lease is held: a holder that lost
    /// it (stopped past its TTL, cut off from Redis) leaves the rest to the
    /// next holder, which reclaims them, rather than deliver a `firing` after
    /// that holder delivered its `resolved`.
    async fn deliver_all(&mut self, pages: Vec<Arc<Notification>>) -> bool {
        let lease = self.lease_state.clone();
        let holds = move || lease.holds();
        let mut batch: Vec<Arc<Notification>> = Vec::new();
        for n in pages {
            let full = batch.len() >= self.max_batch
                || batch.iter().any(|b| b.fingerprint == n.fingerprint);
            if full
                && !self
                    .driver
                    .deliver_while(std::mem::take(&mut batch), &holds)
                    .await
            {
                return false;
            }
            batch.push(n);
        }
        batch.is_empty() || self.driver.deliver_while(batch, &holds).await
    }

    /// Sends every open alert again (Alertmanager expires what it stops hearing
    /// of) and drops resolved records kept long enough, [`MAX_DROPS`] a round.
    async fn resend(&mut self, c: &mut Conn) -> Result<(), redis::RedisError> {
        let mut cursor = "0".to_string();
        let mut open: Vec<Arc<Notification>> = Vec::new();
        let mut old: Vec<(String, String)> = Vec::new();
        let cutoff = now_ms().saturating_sub(RESOLVED_KEPT.as_millis() as u64);
        loop {
            let mut cmd = redis::cmd("HSCAN");
            cmd.arg(&self.keys.open).arg(&cursor).arg("COUNT").arg(500);
            let reply = match self.query(c, &cmd).await {
                // Not a hash (damage): nothing readable is open; the next
                // claim replaces it.
                Err(e) if e.code() == Some("WRONGTYPE") => return Ok(()),
                r => r?,
            };
            let parts = items(&reply);
            cursor = parts.first().and_then(text).unwrap_or_else(|| "0".into());
            let pairs = parts.get(1).map(items).unwrap_or(&[]);
            for pair in pairs.chunks_exact(2) {
                let (Some(field), Some(value)) = (text(&pair[0]), text(&pair[1])) else {
                    continue;
                };
                match parse_open(&value) {
                    Some(Record::Open(n)) if open.len() < MAX_RESEND => open.push(Arc::new(n)),
                    Some(Record::Resolved { at_ms }) if at_ms < cutoff && old.len() < MAX_DROPS => {
                        old.push((field, value));
                    }
                    _ => {}
                }
            }
            if cursor == "0" {
                break;
            }
        }
        for (field, value) in old {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(DROP_IF)
                .arg(1)
                .arg(&self.keys.open)
                .arg(field)
                .arg(value);
            self.query(c, &cmd).await?;
        }
        if !open.is_empty() {
            tracing::debug!(output = %self.driver.output.name, alerts = open.len(), "resending open alerts");
            self.deliver_all(open).await;
        }
        Ok(())
    }

    /// Removes consumers long gone with nothing pending.
    async fn housekeeping(&self, c: &mut Conn) -> Result<(), redis::RedisError> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("CONSUMERS")
            .arg(&self.keys.stream)
            .arg(&self.keys.group);
        let reply = self.query(c, &cmd).await?;
        for consumer in items(&reply) {
            let f = crate::fanout::redis::fields(consumer);
            let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
            let name = get("name").and_then(text);
            let pending = get("pending").and_then(crate::fanout::redis::number);
            let idle = get("idle").and_then(crate::fanout::redis::number);
            if let (Some(name), Some(0), Some(idle)) = (name, pending, idle) {
                if name != self.me && idle >= CONSUMER_GONE.as_millis() as u64 {
                    let mut cmd = redis::cmd("XGROUP");
                    cmd.arg("DELCONSUMER")
                        .arg(&self.keys.stream)
                        .arg(&self.keys.group)
                        .arg(&name);
                    self.query(c, &cmd).await?;
                }
            }
        }
        Ok(())
    }

    /// Drops the open alerts this aggregator forgot (a silent agent) if it is
    /// still the one that last reported them.
    async fn forgets(&self, c: &mut Conn) -> Result<(), redis::RedisError> {
        let fps: Vec<Fingerprint> = std::mem::take(
            &mut *self
                .driver
                .output
                .forgets
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (i, fp) in fps.iter().enumerate() {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(FORGET)
                .arg(1)
                .arg(&self.keys.open)
                .arg(fp.to_string())
                .arg(&self.me);
            if let Err(e) = self.query(c, &cmd).await {
                // Not done: keep the rest for the next round.
                let mut q = self
                    .driver
                    .output
                    .forgets
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                q.extend_from_slice(&fps[i..]);
                q.truncate(MAX_FORGETS);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Queues a forget for the group task of `output`.
pub(super) fn queue_forget(output: &Output, fp: Fingerprint) {
    let mut q = output
        .forgets
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if q.len() < MAX_FORGETS {
        q.push(fp);
    }
}

/// Holds the lease while it can: takes it when free, renews it every third of
/// its TTL, and says it is lost once a renewal has not succeeded for two
/// thirds of it (before it can expire and another take it).
async fn lease_loop(
    target: Arc<Target>,
    key: String,
    token: String,
    ttl: Duration,
    timeout: Duration,
    state: Arc<LeaseState>,
    shutdown: Arc<Shutdown>,
) {
    let mut conn: Option<Conn> = None;
    let mut last_ok: Option<Instant> = None;
    let period = ttl / 3;
    while !shutdown.closed.load(Ordering::Relaxed) {
        let attempt_at = Instant::now();
        let got = async {
            let mut c = match &conn {
                Some(c) => c.clone(),
                None => {
                    let c = tokio::time::timeout(timeout, target.connect())
                        .await
                        .map_err(|_| "connecting: no answer".to_string())?
                        .map_err(|e| format!("connecting: {e}"))?;
                    conn = Some(c.clone());
                    c
                }
            };
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(LEASE)
                .arg(1)
                .arg(&key)
                .arg(&token)
                .arg(ttl.as_millis() as u64);
            match tokio::time::timeout(timeout.min(period), c.cmd(&cmd)).await {
                Ok(Ok(Value::Int(1))) => Ok(true),
                Ok(Ok(_)) => Ok(false),
                Ok(Err(e)) => {
                    if connection_lost(&e) {
                        conn = None;
                    }
                    Err(e.to_string())
                }
                Err(_) => {
                    conn = None;
                    Err("no answer".to_string())
                }
            }
        }
        .await;
        match got {
            Ok(true) => {
                // Redis counts the TTL from when it ran the script, after
                // `attempt_at`: two thirds of it leave a margin.
                last_ok = Some(attempt_at);
                state.set(Some(attempt_at + period * 2));
            }
            Ok(false) => {
                last_ok = None;
                state.set(None);
            }
            Err(why) => {
                if last_ok.is_some_and(|t| t.elapsed() >= period * 2) {
                    last_ok = None;
                    state.set(None);
                    tracing::warn!(lease = %key, error = %why, "paging lease could not be renewed: stepping down");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = shutdown.wake.notified() => {}
        }
    }
    state.set(None);
}

/// What the open-alerts hash holds for one alert.
enum Record {
    Open(Notification),
    Resolved { at_ms: u64 },
}

fn parse_open(value: &str) -> Option<Record> {
    let (kind, rest) = value.split_at_checked(2)?;
    let (_id, rest) = rest.split_once('|')?;
    match kind {
        "F|" => {
            let (_writer, fields) = rest.split_once('|')?;
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(fields).ok()?;
            let n = from_redis_fields(
                map.iter()
                    .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))),
            )
            .ok()?;
            Some(Record::Open(n))
        }
        "R|" => {
            let (ms, _episode) = rest.split_once('|')?;
            Some(Record::Resolved {
                at_ms: ms.parse().ok()?,
            })
        }
        _ => None,
    }
}

/// The start of episode text `<fingerprint>-<start ns>` of alert `fp`.
fn parse_episode(text: &str, fp: Fingerprint) -> Option<i64> {
    let rest = text.strip_prefix(&fp.to_string())?.strip_prefix('-')?;
    rest.parse().ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The entries of an `XREADGROUP` reply (RESP2 arrays or a RESP3 map).
fn stream_entries(reply: &Value) -> Vec<Entry> {
    match reply {
        Value::Map(m) => m.iter().flat_map(|(_, v)| parse_entries(v)).collect(),
        other => items(other)
            .iter()
            .flat_map(|s| items(s).get(1).map(parse_entries).unwrap_or_default())
            .collect(),
    }
}

/// `[[id, [field, value, ...]], ...]`; a trimmed entry has no fields.
fn parse_entries(v: &Value) -> Vec<Entry> {
    items(v)
        .iter()
        .filter_map(|e| {
            let parts = items(e);
            let id = parts.first().and_then(text)?;
            let fields = match parts.get(1) {
                Some(Value::Nil) | None => None,
                Some(f) => Some(
                    crate::fanout::redis::fields(f)
                        .into_iter()
                        .filter_map(|(k, v)| Some((k, text(v)?)))
                        .collect(),
                ),
            };
            Some((id, fields))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_rules::Episode;

    #[test]
    fn open_records_read_back() {
        let n = Notification {
            kind: Kind::Firing,
            ts_ns: 5,
            rule: "undervoltage".into(),
            site: "s".into(),
            agent: "a".into(),
            sensor: "feeder-1/va".into(),
            value: 180.5,
            fingerprint: Fingerprint(7),
            episode: Episode {
                fingerprint: Fingerprint(7),
                started_ns: 3,
            },
            severity: "critical",
            labels: Default::default(),
            annotation: "low | very".into(),
            quality: ferrule_wire::Quality::Good,
        };
        let payload: serde_json::Map<String, serde_json::Value> = redis_fields(&n)
            .into_iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
            .collect();
        let value = format!(
            "F|1700000000000-0|host-1-2-abcd|{}",
            serde_json::Value::Object(payload)
        );
        match parse_open(&value) {
            Some(Record::Open(back)) => assert_eq!(back, n),
            _ => panic!("not read back: {value}"),
        }
        match parse_open("R|1700000000000-3|1700000000123|0000000000000007-3") {
            Some(Record::Resolved { at_ms }) => assert_eq!(at_ms, 1_700_000_000_123),
            _ => panic!("resolved record not read back"),
        }
        assert!(parse_open("garbage").is_none());
        assert!(parse_open("F|").is_none());
        assert_eq!(parse_episode("0000000000000007-3", Fingerprint(7)), Some(3));
        assert_eq!(parse_episode("0000000000000008-3", Fingerprint(7)), None);
    }

    #[test]
    fn replies_of_both_protocols_give_the_entries() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry = Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("state"), bulk("firing")]),
        ]);
        let gone = Value::Array(vec![bulk("2-0"), Value::Nil]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("ferrule:alerts"),
            Value::Array(vec![entry.clone(), gone.clone()]),
        ])]);
        let resp3 = Value::Map(vec![(
            bulk("ferrule:alerts"),
            Value::Array(vec![entry, gone]),
        )]);
        for r in [resp2, resp3] {
            let got = stream_entries(&r);
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].0, "1-0");
            assert_eq!(
                got[0].1.as_deref(),
                Some(&[("state".to_string(), "firing".to_string())][..])
            );
            assert_eq!(got[1], ("2-0".to_string(), None));
        }
        assert!(stream_entries(&Value::Nil).is_empty());
    }
}
