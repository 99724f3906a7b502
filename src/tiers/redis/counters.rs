//! Scope generation counters and the epoch: reading them, and bumping them in a purge.
//!
//! A purge Redis could not record is kept and replayed before the tier is used again, so an
//! outage cannot bring back entries the purge invalidated.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{px, Op, RedisTier, TierError};

/// Counters outlive every entry that captured them, so an expired counter can never make an
/// old entry valid again.
const COUNTER_TTL: Duration = Duration::from_secs(8 * 24 * 3600);

/// Past this many pending purges they collapse into one purge of everything.
const MAX_PENDING: usize = 10_000;

/// Generations of one scope in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gen {
    /// Hard generation: a change invalidates.
    pub hard: u64,
    /// Soft generation: a change makes stale.
    pub soft: u64,
}

/// Generations captured before an origin fetch.
#[derive(Debug, Clone, Default)]
pub struct Gens {
    /// The purge counter.
    pub epoch: u64,
    /// Per requested scope, in order.
    pub scopes: Vec<Gen>,
}

/// A purge as sent to Redis, kept while Redis cannot record it.
#[derive(Debug, Clone)]
pub(super) struct Purge {
    scopes: Vec<String>,
    soft: bool,
    channel: String,
    message: String,
    me: u64,
}

/// KEYS: the instance set, the counters to bump, the epoch. ARGV: channel, message, counter
/// expiry, this instance's id. Returns the subscribers reached and the other live instances.
/// Bumps the purged scopes' counters and the epoch (the last key) and publishes the purge with
/// the new values. Counters take the new epoch as their value rather than counting up on
/// their own: a counter key expires when its scope has not been purged for `COUNTER_TTL`, and
/// a later `INCR` would count from 0 again and could repeat a generation an entry recorded.
/// The epoch never expires and never repeats: it is at least the server's clock in
/// microseconds, so even a failover that loses its last increment does not hand out an old
/// value again.
static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local e = tonumber(redis.call('INCR', KEYS[#KEYS]))
if e < now then
  e = now
  redis.call('SET', KEYS[#KEYS], string.format('%.0f', e))
end
local v = string.format('%.0f', e)
local vals = {}
for i = 2, #KEYS - 1 do
  redis.call('SET', KEYS[i], v, 'PX', ARGV[3])
  vals[#vals + 1] = v
end
vals[#vals + 1] = v
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', math.floor(now / 1000))
local others = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then others = others - 1 end
local receivers = redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' | ' .. table.concat(vals, ' '))
local out = {tostring(receivers), tostring(others)}
for i = 1, #vals do out[#out + 1] = vals[i] end
return out
"#,
    )
});

/// What Redis did with a purge.
#[derive(Debug, Clone, Default)]
pub struct PurgeReceipt {
    /// Subscribers the message reached.
    pub receivers: usize,
    /// Other live instances in the registry.
    pub others: usize,
    /// The purged scopes' counters after the purge, in the order given.
    pub values: Vec<u64>,
    /// The epoch after the purge.
    pub epoch: u64,
}

impl RedisTier {
    /// Current generations of `scopes` (used for scopes learnt from the response).
    pub async fn gens(&self, scopes: &[String]) -> Result<Gens, TierError> {
        let values: Vec<Option<u64>> = self
            .run(Op::Lookup, async |mut c| {
                // One MGET reads the epoch and every counter at the same instant.
                let mut cmd = redis::cmd("MGET");
                cmd.arg(self.keys.epoch());
                for s in scopes {
                    cmd.arg(self.keys.counter(false, s)).arg(self.keys.counter(true, s));
                }
                cmd.query_async(&mut c).await
            })
            .await?;
        if values.len() != 1 + 2 * scopes.len() {
            return Err(TierError::Redis {
                op: Op::Lookup,
                source: redis::RedisError::from((redis::ErrorKind::TypeError, "unexpected MGET reply")),
            });
        }
        let values: Vec<u64> = values.into_iter().map(Option::unwrap_or_default).collect();
        Ok(Gens {
            epoch: values[0],
            scopes: values[1..]
                .chunks_exact(2)
                .map(|c| Gen { hard: c[0], soft: c[1] })
                .collect(),
        })
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
    ) -> Result<PurgeReceipt, TierError> {
        if !self.is_up() && self.reach_directly().await {
            // Redis answered a fresh connection: the tier is back before the probe noticed.
            self.mark_up();
        }
        let purge = Purge {
            scopes: scopes.to_vec(),
            soft,
            channel: channel.to_string(),
            message: message.to_string(),
            me,
        };
        match self
            .run(Op::Purge, async |mut c| self.send_purge(&mut c, &purge).await)
            .await
        {
            Ok(reply) => Ok(receipt(&reply)),
            Err(e) => {
                self.remember_purge(purge);
                Err(e)
            }
        }
    }

    /// The one place the purge script is sent, live or replayed, so both bump the same keys.
    async fn send_purge<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        p: &Purge,
    ) -> redis::RedisResult<Vec<String>> {
        let mut inv = PURGE.key(self.keys.instances());
        for s in &p.scopes {
            inv.key(self.keys.counter(p.soft, s));
        }
        inv.key(self.keys.epoch());
        inv.arg(&p.channel)
            .arg(&p.message)
            .arg(px(COUNTER_TTL, COUNTER_TTL))
            .arg(p.me);
        inv.invoke_async(conn).await
    }

    /// Sends the purges recorded while Redis was down; true when none is left. One replay runs
    /// at a time, and it goes on until the queue is empty, purges queued meanwhile included:
    /// a caller told "none left" must not find the tier used before a purge is in Redis.
    pub(super) async fn replay_pending<C: redis::aio::ConnectionLike + Send>(&self, mut conn: C) -> bool {
        let _one_at_a_time = self.replaying.lock().await;
        let mut count = 0;
        loop {
            let list = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
            if list.is_empty() {
                break;
            }
            for (i, p) in list.iter().enumerate() {
                let sent = tokio::time::timeout(self.timeout, self.send_purge(&mut conn, p)).await;
                if !matches!(sent, Ok(Ok(_))) {
                    let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    let rest: Vec<Purge> = list[i..].to_vec();
                    pending.splice(0..0, rest);
                    return false;
                }
                count += 1;
            }
        }
        if count > 0 {
            tracing::info!(purges = count, "purges made while redis was down were replayed");
        }
        true
    }

    /// Whether purges are waiting to be replayed.
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    fn remember_purge(&self, p: Purge) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= MAX_PENDING {
            // One hard purge of everything, announced as such (`{from} {id} {soft} {scopes}`):
            // the dropped purges' own message would name only their scopes.
            let all = Purge {
                scopes: vec![crate::scope::ALL.to_string()],
                soft: false,
                message: format!("{} 0 0 {}", p.me, crate::scope::ALL),
                ..p
            };
            pending.clear();
            pending.push(all);
        } else {
            pending.push(p);
        }
    }
}

/// The script's reply `{receivers, others, counter…, epoch}` as a receipt.
fn receipt(reply: &[String]) -> PurgeReceipt {
    let n = |i: usize| reply.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut values: Vec<u64> = reply.iter().skip(2).map(|v| v.parse().unwrap_or(0)).collect();
    let epoch = values.pop().unwrap_or(0);
    PurgeReceipt {
        receivers: usize::try_from(n(0)).unwrap_or(0),
        others: usize::try_from(n(1)).unwrap_or(0),
        values,
        epoch,
    }
}
