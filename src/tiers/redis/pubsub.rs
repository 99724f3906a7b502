//! Publishing on the pub/sub channels, and the registry of live instances a purge waits for.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{px, Op, RedisTier, TierError, MAX_EXPIRY};

/// KEYS: the instance set. ARGV: registration lifetime (ms), this instance's id, its heartbeat
/// channel and message. Registering and publishing together means an instance counted as live
/// has also sent the heartbeat that proves it.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1] * 10)
return redis.call('PUBLISH', ARGV[3], ARGV[4])
"#,
    )
});

impl RedisTier {
    /// Registers this instance as live for `ttl` and publishes its heartbeat, atomically.
    pub async fn heartbeat(&self, me: u64, ttl: Duration, channel: &str, message: &str) -> Result<(), TierError> {
        self.run(Op::Heartbeat, async |mut c| {
            HEARTBEAT
                .key(self.keys.instances())
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
        let _ = self
            .run(Op::Deregister, async |mut c| {
                redis::cmd("ZREM")
                    .arg(self.keys.instances())
                    .arg(me)
                    .query_async::<i64>(&mut c)
                    .await
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
}
