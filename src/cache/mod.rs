//! The cache facade: the only API the proxy sees. Looks entries up, stores them, and remembers
//! which request headers each URL's origin answer varies on.
//!
//! # Layout
//! * [`key`]: path/query normalisation and the key string
//! * [`policy`]: what may be stored and for how long (pure)
//! * [`entry`]: the stored response

pub mod entry;
pub mod key;
pub mod policy;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE, VARY};
use http::{HeaderMap, HeaderName};

use crate::clock::Clock;
use crate::config::Config;
use crate::invalidation::Generations;
use crate::tiers::memory::MemoryTier;
use entry::CachedResponse;
use key::BaseKey;

/// Where a hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// This process.
    Memory,
}

impl Tier {
    /// Header and label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
        }
    }
}

/// Cache tiers plus the generation table.
pub struct Cache {
    memory: MemoryTier,
    /// `Vary` header names learned per base key.
    vary_index: moka::future::Cache<Arc<str>, Arc<[HeaderName]>>,
    /// Per route: has its origin ever answered with `Vary`? Saves an index lookup per hit.
    seen_vary: Vec<AtomicBool>,
    /// Scope generations.
    pub generations: Arc<Generations>,
    /// Freshness clock.
    pub clock: Arc<Clock>,
}

impl Cache {
    /// Builds the tiers from config.
    pub fn new(config: &Config, clock: Arc<Clock>) -> Self {
        let ttl = config.cache.memory_ttl;
        Cache {
            memory: MemoryTier::new(config.cache.memory_capacity, ttl),
            vary_index: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(ttl)
                .build(),
            seen_vary: config.routes.iter().map(|_| AtomicBool::new(false)).collect(),
            generations: Arc::new(Generations::default()),
            clock,
        }
    }

    /// The full key for a request: the base key plus the values of the headers the origin's
    /// answer for this URL varies on.
    pub async fn key_for(&self, route: usize, base: &BaseKey, headers: &HeaderMap) -> String {
        if self.seen_vary[route].load(Ordering::Relaxed) {
            if let Some(names) = self.vary_index.get(base.text.as_str()).await {
                return key::full_key(base, &names, headers);
            }
        }
        key::full_key(base, &[], headers)
    }

    /// A usable (fresh, unpurged) entry, from the fastest tier that has one.
    pub async fn get(&self, key: &str) -> Option<(Arc<CachedResponse>, Tier)> {
        let entry = self.memory.get(key).await?;
        if entry.is_usable(self.clock.now()) {
            return Some((entry, Tier::Memory));
        }
        self.memory.remove(key).await;
        None
    }

    /// Stores an entry unless a purge landed since its fetch began; returns whether it was stored.
    /// `vary` is the origin's `Vary` list, already reduced by [`vary_names`].
    pub async fn put(
        &self,
        route: usize,
        base: BaseKey,
        vary: Vec<HeaderName>,
        headers: &HeaderMap,
        entry: CachedResponse,
    ) -> bool {
        if !entry.stamps.valid() {
            return false;
        }
        let base_text: Arc<str> = Arc::from(base.text.as_str());
        let key = if vary.is_empty() {
            if self.seen_vary[route].load(Ordering::Relaxed) {
                self.vary_index.invalidate(&base_text).await;
            }
            key::full_key(&base, &[], headers)
        } else {
            let key = key::full_key(&base, &vary, headers);
            self.seen_vary[route].store(true, Ordering::Relaxed);
            self.vary_index.insert(base_text, vary.into()).await;
            key
        };
        self.memory.put(Arc::from(key), Arc::new(entry)).await;
        true
    }

    /// Memory tier entry count and bytes (after applying pending maintenance).
    pub async fn memory_usage(&self) -> (u64, u64) {
        self.memory.sync().await;
        (self.memory.entry_count(), self.memory.weighted_size())
    }
}

/// The origin's `Vary` names that go into the key: lower-cased, sorted, deduplicated, without
/// `Cookie` and `Authorization`, which identity keying already answers (a request reaching the
/// cache has no unresolved credentials).
pub fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| *n != COOKIE && *n != AUTHORIZATION)
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}
