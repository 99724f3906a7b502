//! The in-process tier: moka, bounded by bytes, each entry living at most `memory_ttl`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;

/// What the memory tier needs to know of what it stores: nothing about HTTP.
pub trait Stored: Send + Sync + 'static {
    /// Bytes it holds, for the capacity bound.
    fn weight(&self) -> u32;
    /// How long it may be kept at most (its freshness plus any stale window).
    fn keep_for(&self) -> Duration;
}

/// The memory tier. Stores opaque entries; freshness and purges are decided by the caller.
pub struct MemoryTier<V: Stored> {
    /// `memory_capacity = "0B"` turns the tier off: nothing is inserted only to be evicted.
    off: bool,
    cache: Cache<Arc<str>, Arc<V>, foldhash::fast::RandomState>,
}

impl<V: Stored> Clone for MemoryTier<V> {
    fn clone(&self) -> Self {
        MemoryTier {
            off: self.off,
            cache: self.cache.clone(),
        }
    }
}

struct EntryExpiry {
    max_ttl: Duration,
}

impl<V: Stored> Expiry<Arc<str>, Arc<V>> for EntryExpiry {
    fn expire_after_create(&self, _k: &Arc<str>, v: &Arc<V>, _at: Instant) -> Option<Duration> {
        // moka's own clock only bounds memory use; freshness is judged by our clock on read.
        Some(v.keep_for().min(self.max_ttl))
    }
}

impl<V: Stored> MemoryTier<V> {
    /// A tier holding at most `capacity` bytes, each entry at most `max_ttl`.
    pub fn new(capacity: u64, max_ttl: Duration, evictions: prometheus::IntCounter) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.inc();
                }
            })
            .weigher(|k: &Arc<str>, v: &Arc<V>| v.weight().saturating_add(k.len() as u32))
            .expire_after(EntryExpiry { max_ttl })
            // foldhash rather than SipHash: several times cheaper per key, and randomly seeded
            // per process, so keys cannot be chosen to collide.
            .build_with_hasher(foldhash::fast::RandomState::default());
        MemoryTier {
            off: capacity == 0,
            cache,
        }
    }

    /// The entry under `key`, if any (fresh or not).
    pub async fn get(&self, key: &str) -> Option<Arc<V>> {
        self.cache.get(key).await
    }

    /// Stores an entry.
    pub async fn put(&self, key: Arc<str>, entry: Arc<V>) {
        if self.off {
            return;
        }
        self.cache.insert(key, entry).await;
    }

    /// Removes an entry (found stale or purged on read).
    pub async fn remove(&self, key: &str) {
        self.cache.invalidate(key).await;
    }

    /// Entry count (approximate, as moka reports it).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Stored bytes (approximate).
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Applies pending evictions now (tests and stats).
    pub async fn sync(&self) {
        self.cache.run_pending_tasks().await;
    }
}
