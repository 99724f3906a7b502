//! The shared Redis tier: entries, scope generation counters, the purge channel, fill leases
//! and the webhook replay store.
//!
//! Every operation has a per-command timeout. A failure marks the tier down (logged once), and
//! while it is down no command is sent at all: lookups are misses, fills are not stored, and a
//! health probe brings it back. Nothing here ever turns into a client-facing error.
//!
//! This file holds the tier itself: its connection state, up/down and error accounting. The
//! rest is split by job:
//! * `keys`: the name of every key and channel ([`Keys`])
//! * `conn`: connecting, probing while down, reaching Redis directly for a purge
//! * `entries`: entry lookup and store
//! * `counters`: scope generations, the epoch, purges and their replay after an outage
//! * `pubsub`: publishing, heartbeats and the instance registry
//! * `lease`: fill leases and the webhook replay store
//! * `info`: memory use and key count, for stats

mod conn;
mod counters;
mod entries;
mod info;
mod keys;
mod lease;
mod pubsub;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::aio::ConnectionManager;

pub use counters::{Gen, Gens, PurgeReceipt};
pub use entries::{Stored, MAX_ENTRY_TTL};
pub use keys::Keys;

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
    /// Entry lookup with its scope counters, or the counters alone.
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

/// The Redis tier.
pub struct RedisTier {
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    keys: Keys,
    timeout: Duration,
    up: AtomicBool,
    metrics: Arc<crate::metrics::Metrics>,
    /// Purges Redis did not record (it was down): replayed before the tier is used again, so
    /// entries written before them cannot come back.
    pending: Mutex<Vec<counters::Purge>>,
}

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
            keys: Keys::new(prefix),
            timeout,
            up: AtomicBool::new(false),
            metrics,
            pending: Mutex::new(Vec::new()),
        }))
    }

    /// The client, for the pub/sub connection.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// `{prefix}:` — every key starts with it.
    pub fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    /// The names of this tier's keys and channels.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether commands are being sent.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!("redis tier up");
        }
    }

    fn mark_down(&self, err: &TierError) {
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
