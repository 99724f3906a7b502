//! A request's way through the tiers: memory, the fetch another request already runs, the
//! shared tier, the cross-instance fill lease. What comes out is an entry to serve or the
//! permit to fill one.
//!
//! A [`FillPermit`] owns what makes a fill safe: the stamps captured before anything was read
//! (a purge from then on keeps the answer out of every tier), the coalescing slot (requests
//! arriving meanwhile wait for it) and the cross-instance lease. [`FillPermit::store`] is the
//! only way an entry is made.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};

use super::coalesce::{Done, Join, Leader};
use super::entry::{CachedResponse, StaleWindows, Staleness};
use super::key::{BaseKey, VaryInput};
use super::{Cache, Fill, Shared, Target, Tier};
use crate::scope::Stamps;

/// A request's key: the key without the origin's `Vary`, the request's values for it, and the
/// full key they make. Built by [`Cache::request_key`].
pub struct RequestKey<'a> {
    pub(super) base: &'a BaseKey,
    pub(super) input: VaryInput<'a>,
    pub(super) full: Cow<'a, str>,
}

impl RequestKey<'_> {
    /// The key the request's entry is stored under.
    pub fn full(&self) -> &str {
        &self.full
    }
}

/// The scopes of the entry a request would fill. Asked for only past a fresh memory hit, so
/// hits never compute them.
pub struct EntryScopes {
    /// The entry's scopes, derived from the request.
    pub scopes: Vec<String>,
    /// Stamps taken before the request's identity was resolved (a session lookup): a login or
    /// logout landing since keeps the answer from being stored.
    pub resolved_with: Option<Stamps>,
}

/// How long a lookup may wait for others' fetches; both may change with a config reload.
#[derive(Debug, Clone, Copy)]
pub struct Waits<'a> {
    /// The route, for the coalescing counter.
    pub route: &'a str,
    /// For a fetch this instance already runs (the origin timeout).
    pub coalesced: Duration,
    /// For another instance's fill (`[cache] fill_lease`; zero = off).
    pub fill_lease: Duration,
}

/// An entry to answer with.
pub struct Hit {
    /// The entry.
    pub entry: Arc<CachedResponse>,
    /// The tier that had it.
    pub tier: Tier,
    /// The key it is stored under, when another request's fill stored it under a key the
    /// origin's `Vary` extended (otherwise the request's own key).
    pub stored_as: Option<String>,
}

/// What a lookup found.
pub enum Lookup {
    /// A fresh entry.
    Fresh(Hit),
    /// An entry to serve stale (inside `stale_while_revalidate`, or soft-purged) while the
    /// caller starts one background refresh ([`Cache::refresh`]).
    Stale(Hit),
    /// Nothing to serve: fetch, and store through the permit.
    Miss(FillPermit),
}

/// The right, and the obligations, of one fill. Dropped unstored, it releases the requests
/// waiting on it (they fetch for themselves) and the cross-instance lease.
pub struct FillPermit {
    cache: Arc<Cache>,
    key: String,
    base: BaseKey,
    /// Taken by [`FillPermit::store`].
    fill: Option<Fill>,
    leader: Option<Leader>,
    /// The cross-instance lease's token, when this instance holds it.
    lease: Option<u64>,
    fallback: Option<Arc<CachedResponse>>,
}

/// An origin answer to store, its headers already prepared (no `Set-Cookie`, `Age`, hop-by-hop
/// or surrogate fields).
pub struct Filled {
    /// Status.
    pub status: StatusCode,
    /// Headers to answer with.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Age it already had when received.
    pub initial_age: Duration,
    /// Freshness left.
    pub fresh_for: Duration,
    /// How long past freshness it may be served.
    pub stale: StaleWindows,
    /// The origin's `Vary` names, reduced by [`vary_names`](super::vary_names).
    pub vary: Vec<HeaderName>,
    /// Scopes learnt from the response (surrogate keys).
    pub surrogate: Vec<String>,
}

/// What [`FillPermit::store`] did.
pub struct Stored {
    /// The key the entry went to (the origin's `Vary` may extend the request's key).
    pub key: String,
    /// False when a purge landed since the fill began: nothing was stored.
    pub stored: bool,
}

/// What waiting on another instance's fill gave.
enum LeaseWait {
    /// Its answer, from Redis.
    Served(Arc<CachedResponse>),
    /// This instance fetches and holds the lease with this token.
    Held(u64),
    /// Fetch without a lease (off, Redis down, or the wait ran out).
    Proceed,
}

impl Cache {
    /// The request's key: the base key plus the values of the headers the origin's answer for
    /// this URL varies on.
    pub async fn request_key<'a>(&self, base: &'a BaseKey, input: VaryInput<'a>) -> RequestKey<'a> {
        let full = self.key_for(base, input).await;
        RequestKey { base, input, full }
    }

    /// Looks a request up in every tier. `scopes` is called only when the memory tier has no
    /// fresh answer.
    pub async fn lookup(
        self: &Arc<Self>,
        key: &RequestKey<'_>,
        waits: Waits<'_>,
        scopes: impl FnOnce() -> EntryScopes,
    ) -> Lookup {
        let fallback = match self.memory_lookup(&key.full).await {
            Some((entry, Staleness::Fresh)) => return Lookup::Fresh(Hit::memory(entry)),
            Some((entry, Staleness::Revalidate)) => return Lookup::Stale(Hit::memory(entry)),
            Some((entry, _)) => Some(entry),
            None => None,
        };
        // Boxed: a memory hit's future, moved into place for every request, stays small.
        Box::pin(self.lookup_beyond_memory(key, waits, scopes(), fallback)).await
    }

    async fn lookup_beyond_memory(
        self: &Arc<Self>,
        key: &RequestKey<'_>,
        waits: Waits<'_>,
        scopes: EntryScopes,
        mut fallback: Option<Arc<CachedResponse>>,
    ) -> Lookup {
        // Captured before anything is read or fetched: a purge from here on invalidates it all.
        let stamps = self.stamps_of(&scopes);
        let leader = match self.coalescer.join(&key.full, stamps.clone()) {
            Join::Leader(l) => Some(l),
            Join::Follower(flight) => {
                self.metrics.coalesced_counter(waits.route).inc();
                if let Ok(Some(done)) = tokio::time::timeout(waits.coalesced, flight.wait()).await {
                    // Usable, unpurged since it was made (a Redis hit's recorded scopes are
                    // stamped too), and under our key: the origin's Vary may have put it under
                    // another.
                    if done.entry.is_usable(self.clock.now())
                        && done.entry.stamps.valid()
                        && self.key_for(key.base, key.input).await == done.key
                    {
                        let mut hit = Hit::memory(done.entry);
                        hit.stored_as = Some(done.key);
                        return Lookup::Fresh(hit);
                    }
                }
                None
            }
        };
        let full = key.full.as_ref();
        let owner = key.base.tenant();
        let fill = match self.shared(full, owner, scopes.scopes.clone(), stamps.clone()).await {
            Shared::Hit(entry, Staleness::Fresh) => {
                if let Some(l) = leader {
                    l.finish(Some(Done {
                        key: full.to_owned(),
                        entry: entry.clone(),
                    }));
                }
                return Lookup::Fresh(Hit::redis(entry));
            }
            // The leader slot is dropped: the refresh coalesces on its own.
            Shared::Hit(entry, Staleness::Revalidate) | Shared::SoftStale(entry) => {
                return Lookup::Stale(Hit::redis(entry))
            }
            Shared::Hit(entry, _) => {
                // Past revalidation but inside stale-if-error: refetch, keep it for failures.
                fallback = Some(entry);
                self.capture(scopes.scopes, stamps).await
            }
            Shared::Miss(fill) => fill,
        };
        let lease = match self.fill_lease(full, owner, waits).await {
            LeaseWait::Served(entry) => return Lookup::Fresh(Hit::redis(entry)),
            LeaseWait::Held(token) => Some(token),
            LeaseWait::Proceed => None,
        };
        Lookup::Miss(FillPermit {
            cache: self.clone(),
            key: full.to_owned(),
            base: key.base.clone(),
            fill: Some(fill),
            leader,
            lease,
            fallback,
        })
    }

    /// The permit for one background refresh of the `stale` entry, unless a fetch for its key
    /// is already running or a refresh landed meanwhile.
    pub async fn refresh(
        self: &Arc<Self>,
        key: &RequestKey<'_>,
        scopes: EntryScopes,
        stale: Arc<CachedResponse>,
    ) -> Option<FillPermit> {
        let stamps = self.stamps_of(&scopes);
        let Join::Leader(leader) = self.coalescer.join(&key.full, stamps.clone()) else {
            return None;
        };
        if matches!(self.memory_lookup(&key.full).await, Some((_, Staleness::Fresh))) {
            return None;
        }
        let fill = self.capture(scopes.scopes, stamps).await;
        Some(FillPermit {
            cache: self.clone(),
            key: key.full.clone().into_owned(),
            base: key.base.clone(),
            fill: Some(fill),
            leader: Some(leader),
            lease: None,
            fallback: Some(stale),
        })
    }

    /// The generations of an entry's scopes now, plus those its identity was resolved with.
    fn stamps_of(&self, scopes: &EntryScopes) -> Stamps {
        let mut stamps = self.generations.stamp(&scopes.scopes);
        if let Some(asked) = &scopes.resolved_with {
            stamps.extend(asked.clone());
        }
        stamps
    }

    /// The cross-instance fill lease (`[cache] fill_lease`): one instance fetches a missing key
    /// while the others wait for it to appear in Redis, then fetch themselves if it does not.
    async fn fill_lease(&self, full: &str, owner: Option<&str>, waits: Waits<'_>) -> LeaseWait {
        let wait = waits.fill_lease;
        let Some(redis) = self.redis.as_ref().filter(|r| !wait.is_zero() && r.is_up()) else {
            return LeaseWait::Proceed;
        };
        let token: u64 = rand::random();
        match redis.try_lease(full, token, wait).await {
            Ok(true) => return LeaseWait::Held(token),
            Ok(false) => {}
            Err(_) => return LeaseWait::Proceed,
        }
        self.metrics.coalesced_counter(waits.route).inc();
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let stamps = self.generations.stamp::<String>(&[]);
            if let Shared::Hit(entry, Staleness::Fresh) = self.shared(full, owner, Vec::new(), stamps).await {
                return LeaseWait::Served(entry);
            }
        }
        LeaseWait::Proceed
    }
}

impl Hit {
    fn memory(entry: Arc<CachedResponse>) -> Self {
        Hit {
            entry,
            tier: Tier::Memory,
            stored_as: None,
        }
    }

    fn redis(entry: Arc<CachedResponse>) -> Self {
        Hit {
            entry,
            tier: Tier::Redis,
            stored_as: None,
        }
    }
}

impl FillPermit {
    /// The request's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The expired entry the lookup found, if any: the answer if the origin fails while it is
    /// inside `stale_if_error`, and what a conditional request may revalidate (see
    /// [`policy::has_validator`](super::policy::has_validator)).
    pub fn fallback(&self) -> Option<Arc<CachedResponse>> {
        self.fallback.clone()
    }

    /// Stores the answer in every tier, unless a purge landed since the fill began, and hands
    /// it to the requests waiting on this fill.
    pub async fn store(mut self, filled: Filled, input: VaryInput<'_>) -> Stored {
        let cache = self.cache.clone();
        let now = cache.clock.now();
        let entry = CachedResponse {
            status: filled.status,
            headers: super::entry::compact_headers(filled.headers),
            body: filled.body,
            stored_at: now,
            initial_age: filled.initial_age,
            fresh_for: filled.fresh_for,
            stamps: Stamps::default(),
            stale: filled.stale,
            surrogate: filled.surrogate.clone(),
            hit_headers: Default::default(),
        };
        let target = Target {
            base: &self.base,
            vary: filled.vary,
            input,
        };
        let key = cache.full_key(&target);
        let done = match self.fill.take() {
            Some(fill) => cache.put(fill, target, key.clone(), filled.surrogate, entry).await,
            None => None,
        };
        let stored = done.is_some();
        if let Some(l) = self.leader.take() {
            l.finish(done);
        }
        Stored { key, stored }
    }
}

impl Drop for FillPermit {
    fn drop(&mut self) {
        let (Some(token), Some(redis)) = (self.lease.take(), self.cache.redis.clone()) else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        // Dropping cannot wait: the release runs on its own. A lost release only delays other
        // instances until the lease expires.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { redis.release_lease(&key, token).await });
        }
    }
}
