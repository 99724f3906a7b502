//! The cache facade: the only API the proxy sees. Looks entries up, stores them, and remembers
//! which request headers each URL's origin answer varies on.
//!
//! The proxy reaches storage only through here: it asks [`Cache::lookup`] and fills through
//! the [`FillPermit`] a miss hands it. Generations, coalescing and the Redis tier stay inside.
//!
//! # Layout
//! * `lookup`: a request's way through the tiers, and the permit to fill
//! * `peek`: what the tiers hold for a key, looked at without acting (for `explain`)
//! * `coalesce`: one origin fetch per key
//! * [`key`]: path/query normalisation and the key string
//! * [`policy`]: what may be stored and for how long (pure)
//! * [`entry`]: the stored response

mod coalesce;
pub mod entry;
pub mod key;
mod lookup;
mod peek;
pub mod policy;

pub use lookup::{EntryScopes, FillPermit, Filled, Hit, Lookup, RequestKey, Stored, Waits};
pub use peek::{Peek, Seen, SharedPeek};

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, COOKIE, VARY};
use http::{HeaderMap, HeaderName};

use crate::clock::Clock;
use crate::coherence::Coherence;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::scope::{CounterMirror, Generations, MirrorToken, SharedGen, Stamps};
use crate::tiers::memory::MemoryTier;
use crate::tiers::redis::TierError;
use crate::tiers::redis::{Gen, Gens, RedisTier};
use coalesce::{Coalescer, Done};
use entry::{CachedResponse, Staleness, WireEntry};
use key::{BaseKey, VaryInput};

/// Where a hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// This process.
    Memory,
    /// The shared Redis tier.
    Redis,
}

impl Tier {
    /// Header and label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Redis => "redis",
        }
    }
}

/// What the shared tier said about a key the memory tier could not answer.
enum Shared {
    /// A valid entry, already promoted to memory, and where it is in its life.
    Hit(Arc<CachedResponse>, Staleness),
    /// A soft-purged entry: serve it stale while it is refreshed.
    SoftStale(Arc<CachedResponse>),
    /// Nothing usable: fill from the origin, recording these generations.
    Miss(Fill),
}

/// Everything a fill must record, captured before the origin fetch.
struct Fill {
    /// Local counters, guarding the memory copy.
    stamps: Stamps,
    /// Local purge count at capture (for scopes learnt from the response).
    local_epoch: u64,
    /// Redis generations of `scopes`, when the shared tier answered.
    gens: Option<Gens>,
    /// The entry's scopes.
    scopes: Vec<String>,
}

/// How a Redis entry's recorded generations compare with the current ones.
enum Verdict {
    Valid,
    /// A soft purge since: serve stale while refreshing.
    SoftPurged,
    /// A purge since (or the counters could not be read).
    Purged,
}

/// Cache tiers plus the generation table.
pub struct Cache {
    memory: MemoryTier<CachedResponse>,
    /// `Vary` header names learned per base key.
    vary_index: moka::future::Cache<Arc<str>, Arc<[HeaderName]>, foldhash::fast::RandomState>,
    /// Has any origin answer carried `Vary`? Until then no hit pays for an index lookup. One
    /// flag rather than one per route, so a config reload that reorders routes keeps it right.
    seen_vary: AtomicBool,
    generations: Arc<Generations>,
    /// Redis' counters as this instance knows them.
    mirror: Arc<CounterMirror>,
    clock: Arc<Clock>,
    metrics: Arc<Metrics>,
    redis: Option<Arc<RedisTier>>,
    coherence: Option<Arc<Coherence>>,
    degraded_ttl: Duration,
    /// Origin fetches in progress, for request coalescing.
    coalescer: Arc<Coalescer>,
}

impl Cache {
    /// Builds the tiers from config; `redis` and `coherence` come together or not at all.
    pub fn new(
        config: &Config,
        clock: Arc<Clock>,
        generations: Arc<Generations>,
        redis: Option<(Arc<RedisTier>, Arc<Coherence>)>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ttl = config.cache.memory_ttl;
        let (redis, coherence) = redis.map_or((None, None), |(r, c)| (Some(r), Some(c)));
        let mirror = coherence.as_ref().map(|c| c.mirror().clone()).unwrap_or_default();
        Cache {
            mirror,
            memory: MemoryTier::new(
                config.cache.memory_capacity,
                ttl,
                metrics.memory_evictions.clone(),
                config.cache.memory_tenant_quota,
            ),
            vary_index: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(ttl)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            seen_vary: AtomicBool::new(false),
            generations,
            clock,
            redis,
            coherence,
            degraded_ttl: config.cache.degraded_memory_ttl,
            coalescer: Arc::new(Coalescer::default()),
            metrics,
        }
    }

    /// The clock entries age by, for answers' `Age`.
    pub fn now(&self) -> std::time::Instant {
        self.clock.now()
    }

    /// Wall-clock time, for `Date` and `Expires` arithmetic.
    pub fn wall_now(&self) -> std::time::SystemTime {
        self.clock.system_now()
    }

    /// Whether Redis answers; `None` without Redis.
    pub fn shared_up(&self) -> Option<bool> {
        self.redis.as_ref().map(|r| r.is_up())
    }

    /// Redis memory used and its key count; `None` without Redis.
    pub async fn shared_usage(&self) -> Option<Result<(u64, u64), TierError>> {
        match &self.redis {
            Some(r) => Some(r.usage().await),
            None => None,
        }
    }

    /// Whether the shared tier is fully working: Redis answering and purges being heard.
    /// Always true without Redis.
    pub fn shared_ready(&self) -> bool {
        match (&self.redis, &self.coherence) {
            (Some(r), Some(c)) => r.is_up() && c.lease_valid(),
            _ => true,
        }
    }

    /// The full key for a request: the base key plus the values of the headers the origin's
    /// answer for this URL varies on.
    async fn key_for<'a>(&self, base: &'a BaseKey, input: VaryInput<'_>) -> Cow<'a, str> {
        if self.seen_vary.load(Ordering::Relaxed) {
            // Boxed: only origins that send `Vary` pay for this lookup's future.
            if let Some(names) = Box::pin(self.vary_index.get(base.text.as_str())).await {
                return Cow::Owned(key::full_key(base, &names, input));
            }
        }
        match base.as_full_key() {
            Some(k) => Cow::Borrowed(k),
            None => Cow::Owned(key::full_key(base, &[], input)),
        }
    }

    /// A memory entry that is unpurged, trusted (see [`Cache::memory_trusted`]) and not past
    /// every stale window, with where it is in its life.
    async fn memory_lookup(&self, key: &str) -> Option<(Arc<CachedResponse>, Staleness)> {
        let entry = self.memory.get(key).await?;
        let now = self.clock.now();
        let state = entry.staleness(now);
        // Trust before stamps: a lease is stored only after every purge it vouches for has
        // bumped its counters, so stamps read after it see them. Read the other way round, a
        // purge and a fresh lease heard between the two reads would pass a purged copy.
        let trusted = self.memory_trusted(&entry, now);
        if state == Staleness::Dead || !entry.stamps.valid() {
            Box::pin(self.memory.remove(key)).await;
            return None;
        }
        trusted.then_some((entry, state))
    }

    /// Memory-only: always. With Redis: while this instance's lease says it has heard every
    /// purge; when Redis is unreachable, only entries younger than `degraded_memory_ttl`.
    fn memory_trusted(&self, entry: &CachedResponse, now: std::time::Instant) -> bool {
        let (Some(c), Some(r)) = (&self.coherence, &self.redis) else {
            return true;
        };
        if c.lease_valid() {
            return true;
        }
        !r.is_up() && now.saturating_duration_since(entry.stored_at) < self.degraded_ttl
    }

    /// Asks the shared tier (if any). `scopes` are the entry's scopes known from the request;
    /// local counters are captured before Redis is read, so a purge heard meanwhile still
    /// invalidates a promoted copy.
    ///
    /// While the lease holds this is one `GET`: the entry is validated against the counters
    /// this instance already knows (see [`CounterMirror`]). Counters it does not know yet are
    /// read alongside, once.
    async fn shared(&self, key: &str, owner: Option<&str>, scopes: Vec<String>, stamps: Stamps) -> Shared {
        let local_epoch = self.generations.epoch();
        let mut fill = Fill {
            stamps,
            local_epoch,
            gens: None,
            scopes,
        };
        let Some(redis) = &self.redis else {
            return Shared::Miss(fill);
        };
        let trusted = self.lease_valid();
        let token = self.mirror.token();
        let known = if trusted { self.known_gens(&fill.scopes) } else { None };
        let (found, read) = match known {
            Some(k) => (redis.get(key).await, Ok(k)),
            None => tokio::join!(redis.get(key), redis.gens(&fill.scopes)),
        };
        if let (true, Ok(g)) = (trusted, &read) {
            self.learn(token, &fill.scopes, g);
        }
        fill.gens = read.ok();
        let stored = match found {
            Ok(Some(s)) => s,
            Ok(None) => return Shared::Miss(fill),
            Err(e) => {
                tracing::debug!(error = %e, "redis lookup skipped");
                return Shared::Miss(fill);
            }
        };
        // The scopes the entry recorded (surrogate keys among them) are stamped before it is
        // validated: a purge of one heard from here on invalidates the copy and is seen by
        // requests waiting on this lookup.
        let recorded: Vec<String> = stored.recorded.iter().map(|(s, _)| s.clone()).collect();
        let mut stamps = fill.stamps.clone();
        stamps.extend(self.generations.stamp(&recorded));
        let verdict = self.validate(redis, &stored.recorded, trusted, token).await;
        match verdict {
            Verdict::Valid => {
                if let Some((entry, state)) = self.promote(key, owner, &stored.payload, stamps, local_epoch).await {
                    return Shared::Hit(entry, state);
                }
            }
            // Soft-purged: servable while it is refreshed; never promoted to memory.
            Verdict::SoftPurged => {
                if let Ok(wire) = WireEntry::decode(&stored.payload) {
                    let entry = self.entry_from_wire(wire, Stamps::default());
                    // Fresh or inside a stale window: a soft purge makes it stale, nothing more.
                    if matches!(
                        entry.staleness(self.clock.now()),
                        Staleness::Fresh | Staleness::Revalidate | Staleness::IfError
                    ) {
                        return Shared::SoftStale(Arc::new(entry));
                    }
                }
            }
            Verdict::Purged => {}
        }
        Shared::Miss(fill)
    }

    /// Whether this instance hears every purge (the coherence lease).
    fn lease_valid(&self) -> bool {
        self.coherence.as_ref().is_some_and(|c| c.lease_valid())
    }

    /// The Redis generations of `scopes` as this instance knows them, when it knows them all.
    fn known_gens(&self, scopes: &[String]) -> Option<Gens> {
        let epoch = self.mirror.epoch()?;
        let scopes = scopes
            .iter()
            .map(|s| {
                self.mirror.get(s).map(|g| Gen {
                    hard: g.hard,
                    soft: g.soft,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Gens { epoch, scopes })
    }

    /// Remembers generations read from Redis since `token` was taken.
    fn learn(&self, token: MirrorToken, scopes: &[String], gens: &Gens) {
        let pairs = scopes.iter().zip(&gens.scopes).map(|(s, g)| {
            (
                s.as_str(),
                SharedGen {
                    hard: g.hard,
                    soft: g.soft,
                },
            )
        });
        self.mirror.learn(token, Some(gens.epoch), pairs);
    }

    /// Checks the generations an entry recorded against the current ones: known ones from the
    /// mirror (while `trusted`), the rest read in one `MGET`.
    async fn validate(
        &self,
        redis: &RedisTier,
        recorded: &[(String, Gen)],
        trusted: bool,
        token: MirrorToken,
    ) -> Verdict {
        let mut soft = false;
        let mut unknown: Vec<(String, Gen)> = Vec::new();
        for (scope, g) in recorded {
            match self.mirror.get(scope).filter(|_| trusted) {
                Some(m) if g.hard < m.hard => return Verdict::Purged,
                Some(m) if g.hard == m.hard && g.soft <= m.soft => soft |= g.soft < m.soft,
                // Unknown, or newer than we know (a purge message still on its way): ask.
                _ => unknown.push((scope.clone(), *g)),
            }
        }
        if !unknown.is_empty() {
            let names: Vec<String> = unknown.iter().map(|(s, _)| s.clone()).collect();
            let Ok(current) = redis.gens(&names).await else {
                return Verdict::Purged;
            };
            if trusted {
                self.learn(token, &names, &current);
            }
            for ((_, g), c) in unknown.iter().zip(&current.scopes) {
                if g.hard != c.hard {
                    return Verdict::Purged;
                }
                soft |= g.soft != c.soft;
            }
        }
        if soft {
            Verdict::SoftPurged
        } else {
            Verdict::Valid
        }
    }

    /// A fill for `scopes` without a lookup (stale-if-error candidates, background refreshes).
    async fn capture(&self, scopes: Vec<String>, stamps: Stamps) -> Fill {
        let local_epoch = self.generations.epoch();
        let gens = match &self.redis {
            Some(r) => {
                let trusted = self.lease_valid();
                let token = self.mirror.token();
                match self.known_gens(&scopes).filter(|_| trusted) {
                    Some(g) => Some(g),
                    None => {
                        let read = r.gens(&scopes).await.ok();
                        if let (true, Some(g)) = (trusted, &read) {
                            self.learn(token, &scopes, g);
                        }
                        read
                    }
                }
            }
            None => None,
        };
        Fill {
            stamps,
            local_epoch,
            gens,
            scopes,
        }
    }

    /// A memory entry from a Redis one, aged by the time it spent there.
    fn entry_from_wire(&self, wire: WireEntry, stamps: Stamps) -> CachedResponse {
        let now_ms = unix_ms(self.clock.system_now());
        let age = Duration::from_millis(now_ms.saturating_sub(wire.stored_at_ms));
        let now = self.clock.now();
        CachedResponse {
            status: wire.status,
            headers: wire.headers,
            body: wire.body,
            stored_at: now.checked_sub(age).unwrap_or(now),
            initial_age: wire.initial_age,
            fresh_for: wire.fresh_for,
            stamps,
            stale: wire.stale,
            surrogate: wire.surrogate,
            hit_headers: Default::default(),
        }
    }

    async fn promote(
        &self,
        key: &str,
        owner: Option<&str>,
        payload: &bytes::Bytes,
        stamps: Stamps,
        local_epoch: u64,
    ) -> Option<(Arc<CachedResponse>, Staleness)> {
        let wire = WireEntry::decode(payload).ok()?;
        let trusted_stamps = self.generations.epoch() == local_epoch;
        let entry = Arc::new(self.entry_from_wire(wire, stamps));
        let state = entry.staleness(self.clock.now());
        if state == Staleness::Dead {
            return None;
        }
        if trusted_stamps {
            self.memory.put(Arc::from(key), entry.clone(), owner).await;
        }
        Some((entry, state))
    }

    /// Stores a filled entry in every tier, unless a purge landed since its fetch began.
    /// Returns the stored entry and its key. `vary` is the origin's `Vary` list, reduced by
    /// [`vary_names`]; `surrogate` the scopes learnt from the response.
    async fn put(
        &self,
        fill: Fill,
        target: Target<'_>,
        key: String,
        surrogate: Vec<String>,
        entry: CachedResponse,
    ) -> Option<Done> {
        let Fill {
            mut stamps,
            local_epoch,
            gens,
            mut scopes,
        } = fill;
        if !surrogate.is_empty() {
            stamps.extend(self.generations.stamp(&surrogate));
            if self.generations.epoch() != local_epoch {
                // Some purge ran during the fetch and we cannot tell whether it named these tags.
                return None;
            }
        }
        if !stamps.valid() {
            return None;
        }
        if let (Some(redis), Some(mut gens)) = (&self.redis, gens) {
            if !surrogate.is_empty() {
                // Their generations are read now, after the fetch: valid only if no purge at
                // all happened anywhere since the capture (the epoch did not move).
                match redis.gens(&surrogate).await {
                    Ok(g) if g.epoch == gens.epoch => gens.scopes.extend(g.scopes),
                    Ok(_) => return None,
                    Err(_) => return self.put_memory(key, &target, stamps, entry).await,
                }
                scopes.extend(surrogate);
            }
            let wire = WireEntry {
                status: entry.status,
                headers: entry.headers.clone(),
                body: entry.body.clone(),
                stored_at_ms: unix_ms(self.clock.system_now()),
                initial_age: entry.initial_age,
                fresh_for: entry.fresh_for,
                stale: entry.stale,
                surrogate: entry.surrogate.clone(),
            };
            let mut payload = Vec::with_capacity(entry.body.len() + 256);
            wire.encode(&mut payload);
            let recorded: Vec<(&str, Gen)> = scopes
                .iter()
                .map(String::as_str)
                .zip(gens.scopes.iter().copied())
                .collect();
            // A failed write leaves the memory copy, which local purges still guard.
            let _ = redis.put(&key, &recorded, &payload, entry.keep_for()).await;
        }
        self.put_memory(key, &target, stamps, entry).await
    }

    async fn put_memory(
        &self,
        key: String,
        target: &Target<'_>,
        stamps: Stamps,
        mut entry: CachedResponse,
    ) -> Option<Done> {
        entry.stamps = stamps;
        if !entry.stamps.valid() {
            return None;
        }
        let base_text: Arc<str> = Arc::from(target.base.text.as_str());
        if target.vary.is_empty() {
            if self.seen_vary.load(Ordering::Relaxed) {
                self.vary_index.invalidate(&base_text).await;
            }
        } else {
            self.seen_vary.store(true, Ordering::Relaxed);
            self.vary_index.insert(base_text, target.vary.clone().into()).await;
        }
        let entry = Arc::new(entry);
        self.memory
            .put(Arc::from(key.as_str()), entry.clone(), target.base.tenant())
            .await;
        Some(Done { key, entry })
    }

    /// The key an entry is stored under.
    fn full_key(&self, target: &Target<'_>) -> String {
        key::full_key(target.base, &target.vary, target.input)
    }

    /// With `memory_tenant_quota`: the most one tenant may hold, and what each holds (tenants
    /// as keyed, percent-encoded).
    pub async fn memory_by_tenant(&self) -> Option<(u64, Vec<(String, u64)>)> {
        self.memory.by_owner().await
    }

    /// Memory tier entry count and bytes (after applying pending maintenance).
    pub async fn memory_usage(&self) -> (u64, u64) {
        self.memory.sync().await;
        (self.memory.entry_count(), self.memory.weighted_size())
    }
}

/// Where a filled entry goes.
struct Target<'a> {
    /// Key without `Vary` headers.
    base: &'a BaseKey,
    /// The origin's `Vary` names.
    vary: Vec<HeaderName>,
    /// The request's `Vary` values.
    input: VaryInput<'a>,
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The origin's `Vary` names that go into the key: lower-cased, sorted, deduplicated, without
/// `Authorization`, which identity keying already answers (a request reaching the cache has no
/// unresolved credentials), unless `keep_authorization` (a `public` route, where nothing
/// resolves it). `Cookie` is keyed by the non-credential cookies only, so it is left out when
/// `every_cookie_is_credential` (`credential_cookies = ["*"]`): then it adds nothing.
pub fn vary_names(headers: &HeaderMap, every_cookie_is_credential: bool, keep_authorization: bool) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| (keep_authorization || *n != AUTHORIZATION) && !(every_cookie_is_credential && *n == COOKIE))
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}
