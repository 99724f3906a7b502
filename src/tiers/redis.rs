//! The shared Redis tier: entries, scope generation counters, and the purge channel.
//!
//! Every operation has a per-command timeout. A failure marks the tier down (logged once), and
//! while it is down no command is sent at all: lookups are misses, fills are not stored, and a
//! health probe brings it back. Nothing here ever turns into a client-facing error.
//!
//! Keys: entries live under their cache key (`{prefix}:{route}:…`); counters under
//! `{prefix}:_g:{scope}` (hard) and `{prefix}:_s:{scope}` (soft); `{prefix}:_epoch` counts
//! every purge. Route names start with a letter or digit, so the namespaces cannot meet.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

/// Entries never live longer than this in Redis.
pub const MAX_ENTRY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Counters outlive every entry that captured them, so an expired counter can never make an
/// old entry valid again.
const COUNTER_TTL: Duration = Duration::from_secs(8 * 24 * 3600);
/// Longest expiry sent with `PX` / `PEXPIRE` for anything but entries (leases, replay guards,
/// the instance set). Redis refuses an expiry whose absolute time overflows its own
/// millisecond clock, which would turn a huge duration into a command error and mark the
/// tier down.
const MAX_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Milliseconds for `PX` / `PEXPIRE`: at least 1 (Redis refuses 0) and at most `max`.
fn px(ttl: Duration, max: Duration) -> u64 {
    crate::clock::millis(ttl.min(max)).max(1)
}

/// An operation on the tier: the `op` label of `cachegate_redis_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Entry lookup with its scope counters.
    Lookup,
    /// Entry store, guarded by its scope counters.
    Store,
    /// Counter bumps and the purge message.
    Purge,
    /// Registering this instance as live.
    Heartbeat,
    /// Leaving the instance set on shutdown.
    Deregister,
    /// A message on the purge channel.
    Publish,
    /// Taking or releasing a fill lease.
    Lease,
    /// A key set only if absent (replay protection).
    SetOnce,
    /// `INFO memory`, for stats.
    Info,
}

impl Op {
    /// Every operation, so each `cachegate_redis_errors_total` series can exist before the first
    /// failure.
    pub const ALL: [Op; 9] = [
        Op::Lookup,
        Op::Store,
        Op::Purge,
        Op::Heartbeat,
        Op::Deregister,
        Op::Publish,
        Op::Lease,
        Op::SetOnce,
        Op::Info,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Store => "store",
            Op::Purge => "purge",
            Op::Heartbeat => "heartbeat",
            Op::Deregister => "deregister",
            Op::Publish => "publish",
            Op::Lease => "lease",
            Op::SetOnce => "set_once",
            Op::Info => "info",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `op` label of a [`TierError::Down`]: nothing was sent, so no operation failed.
const DOWN: &str = "down";

/// Every `op` label of `cachegate_redis_errors_total`.
pub fn error_ops() -> impl Iterator<Item = &'static str> {
    Op::ALL.into_iter().map(Op::as_str).chain([DOWN])
}

/// Creates every `cachegate_redis_errors_total` series at 0 (see `proxy::prime_metrics`).
pub fn prime_metrics(m: &crate::metrics::Metrics) {
    for op in error_ops() {
        m.redis_error_counter(op);
    }
}

/// Why a Redis operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// The tier is marked down; nothing was sent.
    #[error("redis is down")]
    Down,
    /// The command took longer than `redis_timeout`.
    #[error("redis {op} timed out after {timeout:?}")]
    Timeout {
        /// Operation.
        op: Op,
        /// Limit.
        timeout: Duration,
    },
    /// Redis answered with an error or the connection broke.
    #[error("redis {op} failed: {source}")]
    Redis {
        /// Operation.
        op: Op,
        /// Cause.
        source: redis::RedisError,
    },
}

/// Generations of one scope in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gen {
    /// Hard generation: a change invalidates.
    pub hard: u64,
    /// Soft generation: a change makes stale.
    pub soft: u64,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A valid entry (encoded), and the scopes recorded in it.
    Hit(Bytes, Vec<String>),
    /// A soft-purged entry, plus the scopes' current generations for the refill.
    Stale(Bytes, Gens),
    /// Nothing valid; the scopes' current generations, captured for the fill.
    Miss(Gens),
}

/// Generations captured before an origin fetch.
#[derive(Debug, Clone, Default)]
pub struct Gens {
    /// The purge counter.
    pub epoch: u64,
    /// Per requested scope, in order.
    pub scopes: Vec<Gen>,
}

/// The Redis tier.
pub struct RedisTier {
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    up: AtomicBool,
    errors: AtomicU64,
    metrics: Arc<crate::metrics::Metrics>,
    lookup: Script,
    store: Script,
    purge: Script,
    heartbeat: Script,
    /// Purges Redis did not record (it was down): replayed before the tier is used again, so
    /// entries written before them cannot come back.
    pending: std::sync::Mutex<Vec<PendingPurge>>,
}

/// A purge waiting for Redis.
#[derive(Debug, Clone)]
struct PendingPurge {
    scopes: Vec<String>,
    soft: bool,
    channel: String,
    message: String,
    me: u64,
}

/// Past this many pending purges they collapse into one purge of everything.
const MAX_PENDING: usize = 10_000;

const LOOKUP_LUA: &str = r#"
local function gens(first)
  local out = {redis.call('GET', ARGV[2]) or '0'}
  local n = #ARGV - first + 1
  if n <= 0 then return out end
  local hk, sk = {}, {}
  for i = first, #ARGV do
    hk[#hk + 1] = ARGV[1] .. '_g:' .. ARGV[i]
    sk[#sk + 1] = ARGV[1] .. '_s:' .. ARGV[i]
  end
  local h = redis.call('MGET', unpack(hk))
  local s = redis.call('MGET', unpack(sk))
  for i = 1, n do
    out[#out + 1] = h[i] or '0'
    out[#out + 1] = s[i] or '0'
  end
  return out
end
local function answer(status, v)
  local g = gens(3)
  local out = {status, v}
  for i = 1, #g do out[#out + 1] = g[i] end
  return out
end
local v = redis.call('GET', KEYS[1])
if not v then return answer(2, '') end
local nl = string.find(v, '\n', 1, true)
if not nl then return answer(2, '') end
local hk, sk, hv, sv = {}, {}, {}, {}
for key, h, s in string.gmatch(string.sub(v, 1, nl - 1), '(%S+) (%d+) (%d+)') do
  hk[#hk + 1] = ARGV[1] .. '_g:' .. key
  sk[#sk + 1] = ARGV[1] .. '_s:' .. key
  hv[#hv + 1] = h
  sv[#sv + 1] = s
end
if #hk > 0 then
  local cur = redis.call('MGET', unpack(hk))
  for i = 1, #hk do
    if (cur[i] or '0') ~= hv[i] then
      redis.call('DEL', KEYS[1])
      return answer(2, '')
    end
  end
  local scur = redis.call('MGET', unpack(sk))
  for i = 1, #sk do
    if (scur[i] or '0') ~= sv[i] then return answer(1, string.sub(v, nl + 1)) end
  end
end
return {0, string.sub(v, nl + 1), string.sub(v, 1, nl - 1)}
"#;

const STORE_LUA: &str = r#"
for i = 2, #KEYS do
  if (redis.call('GET', KEYS[i]) or '0') ~= ARGV[i + 1] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

const PURGE_LUA: &str = r#"
for i = 2, #KEYS do
  redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
end
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t[1] * 1000 + math.floor(t[2] / 1000))
local others = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then others = others - 1 end
local receivers = redis.call('PUBLISH', ARGV[1], ARGV[2])
return {receivers, others}
"#;

const HEARTBEAT_LUA: &str = r#"
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1] * 10)
return redis.call('PUBLISH', ARGV[3], ARGV[4])
"#;

impl RedisTier {
    /// A tier for `url`; connecting happens in the background (see [`RedisTier::connect`]).
    ///
    /// # Errors
    /// A message when the URL cannot be parsed.
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<Self>, redis::RedisError> {
        let url = url.replacen("+cluster", "", 1);
        let client = redis::Client::open(url.as_str())?;
        Ok(Arc::new(RedisTier {
            client,
            conn: OnceLock::new(),
            prefix: format!("{prefix}:"),
            timeout,
            up: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            metrics,
            lookup: Script::new(LOOKUP_LUA),
            store: Script::new(STORE_LUA),
            purge: Script::new(PURGE_LUA),
            heartbeat: Script::new(HEARTBEAT_LUA),
            pending: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// The client, for the pub/sub connection.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// `{prefix}:` — every key starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether commands are being sent.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Failed commands so far.
    pub fn error_count(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Connects (retrying with backoff) and then keeps probing while the tier is down.
    pub async fn connect(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut delay = Duration::from_millis(100);
        loop {
            let cfg = ConnectionManagerConfig::new()
                .set_response_timeout(self.timeout)
                .set_connection_timeout(self.timeout.max(Duration::from_secs(1)))
                .set_number_of_retries(2)
                .set_max_delay(1000);
            let attempt = tokio::select! {
                r = self.client.get_connection_manager_with_config(cfg) => r,
                _ = stop.changed() => return,
            };
            match attempt {
                Ok(conn) => {
                    let _ = self.conn.set(conn);
                    self.mark_up();
                    break;
                }
                Err(e) => {
                    if delay == Duration::from_millis(100) {
                        tracing::warn!(error = %e, "redis unreachable: serving from memory tier and origin until it answers");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        self.probe_while_down(stop).await;
    }

    async fn probe_while_down(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if self.is_up() {
                continue;
            }
            let Some(mut conn) = self.conn.get().cloned() else {
                continue;
            };
            let ping = tokio::time::timeout(self.timeout, redis::cmd("PING").query_async::<String>(&mut conn)).await;
            if matches!(ping, Ok(Ok(_))) && self.replay_pending(conn).await {
                self.mark_up();
            }
        }
    }

    /// Sends the purges recorded while Redis was down; true when none is left.
    async fn replay_pending<C: redis::aio::ConnectionLike + Send>(&self, mut conn: C) -> bool {
        let list = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let count = list.len();
        for (i, p) in list.iter().enumerate() {
            let kind = if p.soft { "_s" } else { "_g" };
            let mut inv = self.purge.key(self.instances_key());
            for s in &p.scopes {
                inv.key(self.counter_key(kind, s));
            }
            inv.key(format!("{}_epoch", self.prefix));
            inv.arg(&p.channel)
                .arg(&p.message)
                .arg(px(COUNTER_TTL, COUNTER_TTL))
                .arg(p.me);
            let sent = tokio::time::timeout(self.timeout, inv.invoke_async::<(i64, i64)>(&mut conn)).await;
            if !matches!(sent, Ok(Ok(_))) {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                let rest: Vec<PendingPurge> = list[i..].to_vec();
                pending.splice(0..0, rest);
                return false;
            }
        }
        if count > 0 {
            tracing::info!(purges = count, "purges made while redis was down were replayed");
        }
        true
    }

    /// While the tier is marked down, a purge does not wait for the probe: it tries a fresh
    /// connection at once (a writer must not miss a Redis that is already back while other
    /// instances use it), replaying the purges Redis has not recorded yet.
    async fn reach_directly(&self) -> bool {
        let conn = tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection()).await;
        match conn {
            Ok(Ok(c)) => self.replay_pending(c).await,
            _ => false,
        }
    }

    fn remember_purge(&self, p: PendingPurge) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= MAX_PENDING {
            let all = PendingPurge {
                scopes: vec![crate::scope::ALL.to_string()],
                ..p
            };
            pending.clear();
            pending.push(all);
        } else {
            pending.push(p);
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!("redis tier up");
        }
    }

    fn mark_down(&self, err: &TierError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let op = match err {
            TierError::Down => DOWN,
            TierError::Timeout { op, .. } | TierError::Redis { op, .. } => op.as_str(),
        };
        self.metrics.redis_error_counter(op).inc();
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %err, "redis tier down: serving from memory tier and origin");
        }
    }

    /// Runs one command with the timeout, marking the tier down on failure.
    async fn run<T>(
        &self,
        op: Op,
        f: impl AsyncFnOnce(ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, TierError> {
        if !self.is_up() {
            return Err(TierError::Down);
        }
        let conn = self.conn.get().cloned().ok_or(TierError::Down)?;
        let result = match tokio::time::timeout(self.timeout, f(conn)).await {
            Err(_) => Err(TierError::Timeout {
                op,
                timeout: self.timeout,
            }),
            Ok(Err(source)) => Err(TierError::Redis { op, source }),
            Ok(Ok(v)) => Ok(v),
        };
        if let Err(e) = &result {
            self.mark_down(e);
        }
        result
    }

    fn counter_key(&self, kind: &str, scope: &str) -> String {
        format!("{}{kind}:{scope}", self.prefix)
    }

    /// Looks an entry up and validates it against the counters of the scopes recorded in it, in
    /// one round trip. On a miss (or a stale entry) it returns the current generations of
    /// `scopes`, which the fill records.
    pub async fn lookup(&self, key: &str, scopes: &[String]) -> Result<Lookup, TierError> {
        let epoch = format!("{}_epoch", self.prefix);
        let value: Vec<Value> = self
            .run(Op::Lookup, async |mut c| {
                let mut inv = self.lookup.key(key);
                inv.arg(&self.prefix).arg(&epoch);
                for s in scopes {
                    inv.arg(s);
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        parse_lookup(value).ok_or(TierError::Redis {
            op: Op::Lookup,
            source: redis::RedisError::from((redis::ErrorKind::TypeError, "unexpected lookup reply")),
        })
    }

    /// Current generations of `scopes` (used for scopes learnt from the response).
    pub async fn gens(&self, scopes: &[String]) -> Result<Gens, TierError> {
        match self.lookup(&format!("{}_none", self.prefix), scopes).await? {
            Lookup::Miss(g) | Lookup::Stale(_, g) => Ok(g),
            Lookup::Hit(..) => Ok(Gens::default()),
        }
    }

    /// Stores an entry if none of its scopes' hard generations (nor the epoch, when
    /// `check_epoch`) changed since `gens` was captured. Returns whether it was stored.
    pub async fn store(
        &self,
        key: &str,
        scopes: &[String],
        gens: &Gens,
        check_epoch: bool,
        payload: &[u8],
        ttl: Duration,
    ) -> Result<bool, TierError> {
        let mut value = Vec::with_capacity(payload.len() + 32 * scopes.len());
        for (i, (s, g)) in scopes.iter().zip(&gens.scopes).enumerate() {
            if i > 0 {
                value.push(b' ');
            }
            value.extend_from_slice(format!("{s} {} {}", g.hard, g.soft).as_bytes());
        }
        value.push(b'\n');
        value.extend_from_slice(payload);
        let ttl_ms = px(ttl, MAX_ENTRY_TTL);
        let stored: i64 = self
            .run(Op::Store, async |mut c| {
                let mut inv = self.store.key(key);
                inv.arg(&value[..]).arg(ttl_ms);
                for (s, g) in scopes.iter().zip(&gens.scopes) {
                    inv.key(self.counter_key("_g", s)).arg(g.hard);
                }
                if check_epoch {
                    inv.key(format!("{}_epoch", self.prefix)).arg(gens.epoch);
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(stored == 1)
    }

    /// The sorted set of live instances (member = id, score = registration expiry).
    fn instances_key(&self) -> String {
        format!("{}_instances", self.prefix)
    }

    /// Bumps the counters of `scopes` (soft or hard) and the epoch, then publishes `message` on
    /// `channel`, atomically. Returns how many subscribers received it and how many *other*
    /// instances are registered (each of them must acknowledge it or let its lease lapse).
    pub async fn purge(
        &self,
        scopes: &[String],
        soft: bool,
        channel: &str,
        message: &str,
        me: u64,
    ) -> Result<(usize, usize), TierError> {
        if !self.is_up() && self.reach_directly().await {
            // Redis answered a fresh connection: the tier is back before the probe noticed.
            self.mark_up();
        }
        let kind = if soft { "_s" } else { "_g" };
        let result: Result<(i64, i64), TierError> = self
            .run(Op::Purge, async |mut c| {
                let mut inv = self.purge.key(self.instances_key());
                for s in scopes {
                    inv.key(self.counter_key(kind, s));
                }
                inv.key(format!("{}_epoch", self.prefix));
                inv.arg(channel).arg(message).arg(px(COUNTER_TTL, COUNTER_TTL)).arg(me);
                inv.invoke_async(&mut c).await
            })
            .await;
        match result {
            Ok((receivers, others)) => Ok((
                usize::try_from(receivers).unwrap_or(0),
                usize::try_from(others).unwrap_or(0),
            )),
            Err(e) => {
                self.remember_purge(PendingPurge {
                    scopes: scopes.to_vec(),
                    soft,
                    channel: channel.to_string(),
                    message: message.to_string(),
                    me,
                });
                Err(e)
            }
        }
    }

    /// Registers this instance as live for `ttl` and publishes its heartbeat, atomically.
    pub async fn heartbeat(&self, me: u64, ttl: Duration, channel: &str, message: &str) -> Result<(), TierError> {
        self.run(Op::Heartbeat, async |mut c| {
            self.heartbeat
                .key(self.instances_key())
                .arg(px(ttl, MAX_EXPIRY))
                .arg(me)
                .arg(channel)
                .arg(message)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Removes this instance from the live set (clean shutdown).
    pub async fn deregister(&self, me: u64) {
        let key = self.instances_key();
        let _ = self
            .run(Op::Deregister, async |mut c| {
                redis::cmd("ZREM").arg(&key).arg(me).query_async::<i64>(&mut c).await
            })
            .await;
    }

    /// Publishes a small message (heartbeats, acks).
    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), TierError> {
        self.run(Op::Publish, async |mut c| {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(message)
                .query_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Takes the cross-instance fill lease for `key` (`SET NX PX`); true when this caller holds it.
    pub async fn try_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, TierError> {
        let lease = format!("{}_lease:{key}", self.prefix);
        let r: Option<String> = self
            .run(Op::Lease, async |mut c| {
                redis::cmd("SET")
                    .arg(&lease)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(px(ttl, MAX_EXPIRY))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(r.is_some())
    }

    /// Releases a fill lease if this caller still holds it.
    pub async fn release_lease(&self, key: &str, token: u64) {
        let lease = format!("{}_lease:{key}", self.prefix);
        let script =
            Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0");
        let _ = self
            .run(Op::Lease, async |mut c| {
                script.key(&lease).arg(token).invoke_async::<i64>(&mut c).await
            })
            .await;
    }

    /// `SET key 1 NX PX ttl`: true when the key was new (webhook replay protection).
    pub async fn set_once(&self, key: &str, ttl: Duration) -> Result<bool, TierError> {
        let key = format!("{}{key}", self.prefix);
        let r: Option<String> = self
            .run(Op::SetOnce, async |mut c| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(px(ttl, MAX_EXPIRY))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(r.is_some())
    }

    /// `INFO memory` used_memory and `DBSIZE`, for stats.
    pub async fn usage(&self) -> Result<(u64, u64), TierError> {
        self.run(Op::Info, async |mut c| {
            let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await?;
            let keys: u64 = redis::cmd("DBSIZE").query_async(&mut c).await?;
            let used = info
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            Ok((used, keys))
        })
        .await
    }
}

fn num(v: &Value) -> Option<u64> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::from(b)),
        _ => None,
    }
}

fn parse_lookup(reply: Vec<Value>) -> Option<Lookup> {
    let mut it = reply.into_iter();
    let status = num(&it.next()?)?;
    let value = bytes(it.next()?)?;
    if status == 0 {
        let header = bytes(it.next()?)?;
        let text = std::str::from_utf8(&header).ok()?;
        let scopes = text
            .split(' ')
            .step_by(3)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        return Some(Lookup::Hit(value, scopes));
    }
    let epoch = num(&it.next()?)?;
    let rest: Vec<Value> = it.collect();
    let scopes = rest
        .chunks(2)
        .map(|c| {
            Some(Gen {
                hard: num(&c[0])?,
                soft: num(c.get(1)?)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let gens = Gens { epoch, scopes };
    Some(if status == 1 {
        Lookup::Stale(value, gens)
    } else {
        Lookup::Miss(gens)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_op_once() {
        for op in Op::ALL {
            // Exhaustive on purpose: a new operation stops this compiling until it is listed in `ALL`.
            match op {
                Op::Lookup
                | Op::Store
                | Op::Purge
                | Op::Heartbeat
                | Op::Deregister
                | Op::Publish
                | Op::Lease
                | Op::SetOnce
                | Op::Info => {}
            }
        }
        let labels: std::collections::HashSet<_> = error_ops().collect();
        assert_eq!(
            labels.len(),
            Op::ALL.len() + 1,
            "each label listed once, `down` included"
        );
    }
}
