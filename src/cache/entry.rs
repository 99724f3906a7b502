//! A stored response, ready to be answered from without copying its body.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::invalidation::Stamps;

/// One cached answer. Headers are prepared at store time (hop-by-hop, `Set-Cookie`, surrogate
/// keys and `Age` removed), so a hit only adds `Age`, `X-Cache` and `Cache-Status`.
#[derive(Debug)]
pub struct CachedResponse {
    /// Status to answer with.
    pub status: StatusCode,
    /// Headers to answer with.
    pub headers: HeaderMap,
    /// Shared body.
    pub body: Bytes,
    /// When it was stored (cachegate clock).
    pub stored_at: Instant,
    /// Age it already had when received.
    pub initial_age: Duration,
    /// Freshness left when stored.
    pub fresh_for: Duration,
    /// Scope generations captured before the fetch.
    pub stamps: Stamps,
}

impl CachedResponse {
    /// Whether it is still fresh at `now`.
    pub fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored_at) < self.fresh_for
    }

    /// Whether it may be served: fresh and not purged.
    pub fn is_usable(&self, now: Instant) -> bool {
        self.is_fresh(now) && self.stamps.valid()
    }

    /// Current age in whole seconds, for the `Age` header.
    pub fn age_secs(&self, now: Instant) -> u64 {
        (self.initial_age + now.saturating_duration_since(self.stored_at)).as_secs()
    }

    /// Approximate memory cost, for the tier's byte bound.
    pub fn weight(&self) -> u32 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum();
        u32::try_from(self.body.len() + headers + 128).unwrap_or(u32::MAX)
    }
}
