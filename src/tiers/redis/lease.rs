//! Keys that exist only to be taken once: the cross-instance fill lease of an entry, and the
//! replay guard of webhook signatures.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{px, Op, RedisTier, TierError, MAX_EXPIRY};

/// Deletes the lease only while it still holds our token: after it expired another instance
/// may hold it.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
});

impl RedisTier {
    /// Takes the cross-instance fill lease for `key` (`SET NX PX`); true when this caller holds it.
    pub async fn try_lease(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, TierError> {
        self.set_nx(Op::Lease, &self.keys.lease(key), token, ttl).await
    }

    /// Releases a fill lease if this caller still holds it.
    pub async fn release_lease(&self, key: &str, token: u64) {
        let lease = self.keys.lease(key);
        let _ = self
            .run(Op::Lease, async |mut c| {
                RELEASE.key(&lease).arg(token).invoke_async::<i64>(&mut c).await
            })
            .await;
    }

    /// Records `key`, a webhook signature, for `ttl` (`SET NX PX` on its replay guard): true when
    /// it was not recorded yet.
    pub async fn set_once(&self, key: &str, ttl: Duration) -> Result<bool, TierError> {
        self.set_nx(Op::SetOnce, &self.keys.replay(key), 1, ttl).await
    }

    /// `SET name value NX PX ttl`: true when this call set it.
    async fn set_nx(&self, op: Op, name: &str, value: u64, ttl: Duration) -> Result<bool, TierError> {
        let set: Option<String> = self
            .run(op, async |mut c| {
                redis::cmd("SET")
                    .arg(name)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(px(ttl, MAX_EXPIRY))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }
}
