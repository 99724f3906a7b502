//! Entries: a lookup validated against its scopes' counters, and a store guarded by them, each
//! in one script so no purge can fall between the check and the read or write.
//!
//! An entry is stored as `{scope} {hard} {soft}` triples (space separated), a newline, then the
//! payload: the generations its scopes had when the fill started.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use redis::{Script, Value};

use super::counters::{Gen, Gens};
use super::{px, Op, RedisTier, TierError};

/// Entries never live longer than this in Redis.
pub const MAX_ENTRY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

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

/// KEYS: the entry. ARGV: the hard and soft counter key prefixes, the epoch key, then the
/// requested scopes. Returns `{0, payload, header}` for a valid entry, else `{1, payload, …}`
/// (stale) or `{2, '', …}` (miss) followed by the epoch and each requested scope's hard and
/// soft generation. An entry whose hard generations moved is deleted.
static LOOKUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local function gens(first)
  local out = {redis.call('GET', ARGV[3]) or '0'}
  local n = #ARGV - first + 1
  if n <= 0 then return out end
  local hk, sk = {}, {}
  for i = first, #ARGV do
    hk[#hk + 1] = ARGV[1] .. ARGV[i]
    sk[#sk + 1] = ARGV[2] .. ARGV[i]
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
  local g = gens(4)
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
  hk[#hk + 1] = ARGV[1] .. key
  sk[#sk + 1] = ARGV[2] .. key
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
"#,
    )
});

/// KEYS: the entry, then the counters it depends on. ARGV: the value, its expiry, then each
/// counter's expected value. Stores only when every counter still has it; returns 1 if stored.
static STORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for i = 2, #KEYS do
  if (redis.call('GET', KEYS[i]) or '0') ~= ARGV[i + 1] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#,
    )
});

impl RedisTier {
    /// Looks an entry up and validates it against the counters of the scopes recorded in it, in
    /// one round trip. On a miss (or a stale entry) it returns the current generations of
    /// `scopes`, which the fill records.
    pub async fn lookup(&self, key: &str, scopes: &[String]) -> Result<Lookup, TierError> {
        let value: Vec<Value> = self
            .run(Op::Lookup, async |mut c| {
                let mut inv = LOOKUP.key(self.keys.entry(key));
                inv.arg(self.keys.counter_prefix(false))
                    .arg(self.keys.counter_prefix(true))
                    .arg(self.keys.epoch());
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
                let mut inv = STORE.key(self.keys.entry(key));
                inv.arg(&value[..]).arg(ttl_ms);
                for (s, g) in scopes.iter().zip(&gens.scopes) {
                    inv.key(self.keys.counter(false, s)).arg(g.hard);
                }
                if check_epoch {
                    inv.key(self.keys.epoch()).arg(gens.epoch);
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(stored == 1)
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
