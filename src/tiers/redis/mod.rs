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

use crate::config::RedisTarget;

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
    clients: conn::Clients,
    /// One client per node the purge channel may subscribe through (a cluster delivers every
    /// `PUBLISH` to every node, so any will do).
    subscribers: Vec<redis::Client>,
    conn: OnceLock<conn::Conn>,
    keys: Keys,
    timeout: Duration,
    up: AtomicBool,
    metrics: Arc<crate::metrics::Metrics>,
    /// Purges Redis did not record (it was down): replayed before the tier is used again, so
    /// entries written before them cannot come back.
    pending: Mutex<Vec<counters::Purge>>,
    /// Held while `pending` is replayed.
    replaying: tokio::sync::Mutex<()>,
}

impl RedisTier {
    /// A tier for `target`; connecting happens in the background (see
    /// [`RedisTier::connect`]). `ca_pem` is the CA to trust for `rediss://` instead of the
    /// public roots.
    ///
    /// # Errors
    /// A URL the client cannot use.
    pub fn new(
        target: &RedisTarget,
        prefix: &str,
        timeout: Duration,
        ca_pem: Option<Vec<u8>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<Self>, redis::RedisError> {
        if target.seeds.iter().any(|s| s.starts_with("rediss://")) {
            // The redis crate's rustls comes without a crypto provider; an error only means
            // one is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let node = |url: &str| match &ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(url),
        };
        let subscribers = target.seeds.iter().map(|u| node(u)).collect::<Result<Vec<_>, _>>()?;
        let clients = if target.cluster {
            let mut b = redis::cluster::ClusterClientBuilder::new(target.seeds.clone())
                .connection_timeout(timeout.max(Duration::from_secs(1)))
                .response_timeout(timeout)
                .retries(2);
            if let Some(pem) = &ca_pem {
                b = b.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                });
            }
            conn::Clients::Cluster(b.build()?)
        } else {
            conn::Clients::Single(subscribers[0].clone())
        };
        Ok(Arc::new(RedisTier {
            clients,
            subscribers,
            conn: OnceLock::new(),
            keys: Keys::new(prefix),
            timeout,
            up: AtomicBool::new(false),
            metrics,
            pending: Mutex::new(Vec::new()),
            replaying: tokio::sync::Mutex::new(()),
        }))
    }

    /// The client for the purge channel's `attempt`-th connection: the node itself, or the
    /// cluster's seed nodes in turn, so a failed node is not tried for ever.
    pub fn subscriber(&self, attempt: u64) -> &redis::Client {
        let n = self.subscribers.len() as u64;
        &self.subscribers[usize::try_from(attempt % n.max(1)).unwrap_or(0)]
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
    async fn run<T>(&self, op: Op, f: impl AsyncFnOnce(conn::Conn) -> redis::RedisResult<T>) -> Result<T, TierError> {
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
