//! What may be stored, and for how long: pure functions over response headers and config.
//!
//! Nothing here does I/O or reads the clock; callers pass `now` in, so freshness can be tested
//! without waiting.

use std::time::{Duration, SystemTime};

use http::header::{AGE, CACHE_CONTROL, DATE, EXPIRES, SET_COOKIE, VARY};
use http::{HeaderMap, StatusCode};

use super::entry::StaleWindows;
use crate::config::{CacheConfig, RouteConfig, Ttl};

/// Why a request or response did not go through the cache. The names are metric label values
/// and `Cache-Status` details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BypassReason {
    /// The method is not cacheable.
    Method,
    /// The request carries credentials cachegate cannot resolve.
    Credentials,
    /// The route varies on user and the request has no resolved user.
    NoUser,
    /// A `Range` request; ranges are not served from cache.
    Range,
    /// No `[[route]]` matches the path.
    NoRoute,
    /// `Cache-Control: no-store`.
    NoStore,
    /// `Cache-Control: private`.
    Private,
    /// `Cache-Control: no-cache` on a `ttl = "origin"` route.
    NoCache,
    /// The response sets a cookie.
    SetCookie,
    /// A status that is not configured as cacheable.
    Status,
    /// Body larger than `max_body`.
    TooLarge,
    /// `Vary: *`.
    VaryStar,
    /// A `ttl = "origin"` route and the origin gave no freshness.
    NoFreshness,
    /// A purge landed while the response was being fetched.
    Purged,
}

impl BypassReason {
    /// Every reason, so each `cachegate_bypass_total` series can exist before its first bypass.
    pub const ALL: [BypassReason; 14] = [
        BypassReason::Method,
        BypassReason::Credentials,
        BypassReason::NoUser,
        BypassReason::Range,
        BypassReason::NoRoute,
        BypassReason::NoStore,
        BypassReason::Private,
        BypassReason::NoCache,
        BypassReason::SetCookie,
        BypassReason::Status,
        BypassReason::TooLarge,
        BypassReason::VaryStar,
        BypassReason::NoFreshness,
        BypassReason::Purged,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BypassReason::Method => "method",
            BypassReason::Credentials => "credentials",
            BypassReason::NoUser => "no-user",
            BypassReason::Range => "range",
            BypassReason::NoRoute => "no-route",
            BypassReason::NoStore => "no-store",
            BypassReason::Private => "private",
            BypassReason::NoCache => "no-cache",
            BypassReason::SetCookie => "set-cookie",
            BypassReason::Status => "status",
            BypassReason::TooLarge => "too-large",
            BypassReason::VaryStar => "vary-star",
            BypassReason::NoFreshness => "no-freshness",
            BypassReason::Purged => "purged",
        }
    }
}

/// The parts of `Cache-Control` a shared cache acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-store`
    pub no_store: bool,
    /// `private`
    pub private: bool,
    /// `no-cache`
    pub no_cache: bool,
    /// `max-age`
    pub max_age: Option<u64>,
    /// `s-maxage`
    pub s_maxage: Option<u64>,
    /// `stale-while-revalidate`
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error`
    pub stale_if_error: Option<u64>,
    /// `must-revalidate` / `proxy-revalidate`: never serve stale.
    pub must_revalidate: bool,
}

impl CacheControl {
    /// Parses every `Cache-Control` header; unknown directives are ignored, as RFC 9111 says.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for directive in text.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let secs = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    // `private="Set-Cookie"` still makes the whole answer unfit for a shared cache
                    // in our model: we cannot strip arbitrary named fields safely.
                    "private" => cc.private = true,
                    "no-cache" => cc.no_cache = true,
                    "max-age" => cc.max_age = secs().or(Some(0)),
                    "s-maxage" => cc.s_maxage = secs().or(Some(0)),
                    "stale-while-revalidate" => cc.stale_while_revalidate = secs(),
                    "stale-if-error" => cc.stale_if_error = secs(),
                    "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                    _ => {}
                }
            }
        }
        cc
    }
}

/// How long a storable response stays fresh, and how old it already was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Total freshness lifetime.
    pub lifetime: Duration,
    /// Age when received (the origin's `Age` header).
    pub initial_age: Duration,
}

impl Freshness {
    /// Remaining freshness at receipt.
    pub fn remaining(&self) -> Duration {
        self.lifetime.saturating_sub(self.initial_age)
    }
}

/// Decides whether a response may be stored and for how long.
///
/// # Errors
/// The [`BypassReason`] that keeps it out of the cache.
pub fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    route: &RouteConfig,
    cache: &CacheConfig,
    now: SystemTime,
) -> Result<Freshness, BypassReason> {
    if !cache.cacheable_statuses.contains(&status.as_u16()) {
        return Err(BypassReason::Status);
    }
    if vary_star(headers) {
        return Err(BypassReason::VaryStar);
    }
    let cc = CacheControl::parse(headers);
    if cache.respect_origin_cache_control {
        if cc.no_store {
            return Err(BypassReason::NoStore);
        }
        if cc.private {
            return Err(BypassReason::Private);
        }
        if headers.contains_key(SET_COOKIE) && !route.strip_set_cookie {
            return Err(BypassReason::SetCookie);
        }
    }
    let initial_age = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let lifetime = match route.ttl {
        Ttl::Fixed(d) => {
            return Ok(Freshness {
                lifetime: d,
                initial_age: Duration::ZERO,
            })
        }
        Ttl::Origin => {
            if cc.no_cache {
                return Err(BypassReason::NoCache);
            }
            origin_lifetime(&cc, headers, now).ok_or(BypassReason::NoFreshness)?
        }
    };
    let f = Freshness { lifetime, initial_age };
    if f.remaining().is_zero() {
        return Err(BypassReason::NoFreshness);
    }
    Ok(f)
}

/// Stale windows of a stored answer: the route's (or the cache's) settings; on `ttl = "origin"`
/// routes the origin's `stale-while-revalidate` / `stale-if-error` win, and `must-revalidate`
/// forbids stale serving (RFC 9111 §4.2.4, RFC 5861).
pub fn stale_windows(headers: &HeaderMap, route: &RouteConfig, cache: &CacheConfig) -> StaleWindows {
    let mut w = StaleWindows {
        revalidate: route.stale_while_revalidate.unwrap_or(cache.stale_while_revalidate),
        if_error: route.stale_if_error.unwrap_or(cache.stale_if_error),
    };
    if route.ttl == Ttl::Origin {
        let cc = CacheControl::parse(headers);
        if cc.must_revalidate {
            return StaleWindows::default();
        }
        if let Some(s) = cc.stale_while_revalidate {
            w.revalidate = Duration::from_secs(s);
        }
        if let Some(s) = cc.stale_if_error {
            w.if_error = Duration::from_secs(s);
        }
    }
    w
}

/// RFC 9111 §4.2.1: `s-maxage`, then `max-age`, then `Expires - Date`.
fn origin_lifetime(cc: &CacheControl, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return Some(Duration::from_secs(s));
    }
    let expires = headers.get(EXPIRES)?.to_str().ok();
    // An invalid Expires (often "0" or "-1") means already expired.
    let Some(expires) = expires.and_then(|e| httpdate::parse_http_date(e).ok()) else {
        return Some(Duration::ZERO);
    };
    let date = headers
        .get(DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .unwrap_or(now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

fn vary_star(headers: &HeaderMap) -> bool {
    headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == "*"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn all_lists_every_bypass_reason_once() {
        for r in BypassReason::ALL {
            // Exhaustive on purpose: a new reason stops this compiling until it is listed in `ALL`.
            match r {
                BypassReason::Method
                | BypassReason::Credentials
                | BypassReason::NoUser
                | BypassReason::Range
                | BypassReason::NoRoute
                | BypassReason::NoStore
                | BypassReason::Private
                | BypassReason::NoCache
                | BypassReason::SetCookie
                | BypassReason::Status
                | BypassReason::TooLarge
                | BypassReason::VaryStar
                | BypassReason::NoFreshness
                | BypassReason::Purged => {}
            }
        }
        let labels: std::collections::HashSet<_> = BypassReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), BypassReason::ALL.len(), "each reason listed once");
    }

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn parses_cache_control() {
        let cc = CacheControl::parse(&h(&[
            ("cache-control", "public, Max-Age=60, s-maxage=\"120\""),
            ("cache-control", "no-store"),
        ]));
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.s_maxage, Some(120));
        assert!(cc.no_store);
    }

    #[test]
    fn origin_lifetime_precedence() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let date = httpdate::fmt_http_date(now);
        let expires = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let headers = h(&[("date", &date), ("expires", &expires)]);
        let cc = CacheControl::parse(&headers);
        assert_eq!(origin_lifetime(&cc, &headers, now), Some(Duration::from_secs(30)));
        let headers = h(&[("cache-control", "max-age=5, s-maxage=9"), ("expires", &expires)]);
        let cc = CacheControl::parse(&headers);
        assert_eq!(origin_lifetime(&cc, &headers, now), Some(Duration::from_secs(9)));
        assert_eq!(origin_lifetime(&CacheControl::default(), &HeaderMap::new(), now), None);
    }
}
