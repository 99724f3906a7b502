//! The in-process tier: moka, bounded by bytes, each entry living at most `memory_ttl`.
//!
//! With a per-owner quota (`memory_tenant_quota`), each entry may name an owner (a tenant);
//! an owner's bytes are added on insert and taken off by moka's removal listener (eviction,
//! expiry, replacement, invalidation). An insert that would take its owner past the quota is
//! refused: the tier keeps the entries it has, so one owner's flood of new keys cannot push
//! out more than its share of everyone else's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;
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
    cache: Cache<Arc<str>, Slot<V>, foldhash::fast::RandomState>,
    quota: Option<Arc<Quota>>,
}

/// An entry and the owner it counts for.
struct Slot<V> {
    value: Arc<V>,
    owner: Option<Arc<str>>,
}

impl<V> Clone for Slot<V> {
    fn clone(&self) -> Self {
        Slot {
            value: self.value.clone(),
            owner: self.owner.clone(),
        }
    }
}

/// Bytes held per owner, and the most one may hold. The map has one item per owner with
/// entries in the tier, so it is bounded by the tier's entry count.
struct Quota {
    max: u64,
    used: Mutex<HashMap<Arc<str>, u64>>,
}

impl Quota {
    fn release(&self, owner: &str, bytes: u64) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = used.get_mut(owner) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                used.remove(owner);
            }
        }
    }
}

impl<V: Stored> Clone for MemoryTier<V> {
    fn clone(&self) -> Self {
        MemoryTier {
            off: self.off,
            cache: self.cache.clone(),
            quota: self.quota.clone(),
        }
    }
}

fn weight<V: Stored>(k: &str, v: &V) -> u32 {
    v.weight().saturating_add(k.len() as u32)
}

struct EntryExpiry {
    max_ttl: Duration,
}

impl<V: Stored> Expiry<Arc<str>, Slot<V>> for EntryExpiry {
    fn expire_after_create(&self, _k: &Arc<str>, v: &Slot<V>, _at: Instant) -> Option<Duration> {
        // moka's own clock only bounds memory use; freshness is judged by our clock on read.
        Some(v.value.keep_for().min(self.max_ttl))
    }
}

impl<V: Stored> MemoryTier<V> {
    /// A tier holding at most `capacity` bytes, each entry at most `max_ttl`; with
    /// `owner_share`, one owner's entries at most that share of `capacity`.
    pub fn new(capacity: u64, max_ttl: Duration, evictions: prometheus::IntCounter, owner_share: Option<f64>) -> Self {
        let quota = owner_share.map(|share| {
            Arc::new(Quota {
                max: (capacity as f64 * share) as u64,
                used: Mutex::new(HashMap::new()),
            })
        });
        let released = quota.clone();
        let cache = Cache::builder()
            .max_capacity(capacity)
            .eviction_listener(move |k: Arc<Arc<str>>, v: Slot<V>, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.inc();
                }
                if let (Some(q), Some(owner)) = (&released, &v.owner) {
                    q.release(owner, u64::from(weight(&k, &*v.value)));
                }
            })
            .weigher(|k: &Arc<str>, v: &Slot<V>| weight(k, &*v.value))
            .expire_after(EntryExpiry { max_ttl })
            // foldhash rather than SipHash: several times cheaper per key, and randomly seeded
            // per process, so keys cannot be chosen to collide.
            .build_with_hasher(foldhash::fast::RandomState::default());
        MemoryTier {
            off: capacity == 0,
            cache,
            quota,
        }
    }

    /// The entry under `key`, if any (fresh or not).
    ///
    /// The tier is moka's synchronous cache: its reads never wait (maintenance on a read
    /// only ever `try_lock`s), and the async one put an 800-byte future, moved several times,
    /// into every request's. Writes may wait microseconds when moka's write log is full (a
    /// burst of misses), as the async cache's would. The methods stay `async` so that callers
    /// do not depend on which it is.
    pub async fn get(&self, key: &str) -> Option<Arc<V>> {
        self.cache.get(key).map(|s| s.value)
    }

    /// Stores an entry counted for `owner`; false when the owner is at its quota (nothing is
    /// stored then).
    pub async fn put(&self, key: Arc<str>, entry: Arc<V>, owner: Option<&str>) -> bool {
        if self.off {
            return false;
        }
        let owner = match (&self.quota, owner) {
            (Some(q), Some(o)) => {
                let bytes = u64::from(weight(&key, &*entry));
                let mut used = q.used.lock().unwrap_or_else(|e| e.into_inner());
                let now = used.get(o).copied().unwrap_or(0);
                if now + bytes > q.max {
                    return false;
                }
                let name: Arc<str> = Arc::from(o);
                used.insert(name.clone(), now + bytes);
                Some(name)
            }
            _ => None,
        };
        self.cache.insert(key, Slot { value: entry, owner });
        true
    }

    /// Bytes held per owner, with a quota (after applying pending maintenance).
    pub async fn by_owner(&self) -> Option<(u64, Vec<(String, u64)>)> {
        let q = self.quota.as_ref()?;
        self.cache.run_pending_tasks();
        let used = q.used.lock().unwrap_or_else(|e| e.into_inner());
        Some((q.max, used.iter().map(|(o, n)| (o.to_string(), *n)).collect()))
    }

    /// Removes an entry (found stale or purged on read).
    pub async fn remove(&self, key: &str) {
        self.cache.invalidate(key);
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
        self.cache.run_pending_tasks();
    }
}
