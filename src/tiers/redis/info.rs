//! What the tier reports about Redis itself, for stats.

use super::{Op, RedisTier, TierError};

impl RedisTier {
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
