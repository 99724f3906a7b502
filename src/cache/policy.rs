//! What may be stored, and for how long: pure functions over response headers and config.
//!
//! Nothing here does I/O or reads the clock; callers pass `now` in, so freshness can be tested
//! without waiting.

use std::time::{Duration, SystemTime};

use http::header::{AGE, CACHE_CONTROL, DATE, EXPIRES, SET_COOKIE, VARY};
use http::{HeaderMap, StatusCode};

use super::entry::StaleWindows;
use crate::config::{CacheConfig, RouteConfig, Ttl};

/// The longest lifetime, age or stale window cachegate represents: RFC 9111 §1.2.2 asks a cache
/// to treat any larger delta-seconds (or one that overflows) as 2^31 seconds. Every duration this
/// module returns is at most this, so callers may add a few of them to an `Instant` or to each
/// other without overflowing, whatever the origin sent.
pub const MAX_DELTA: Duration = Duration::from_secs(1 << 31);

/// Reads RFC 9111 delta-seconds: one or more ASCII digits. A value too large for `u64` is still
/// a valid (huge) number, so it saturates rather than counting as invalid; anything else
/// (a sign, a fraction, nothing) is invalid.
fn delta_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().unwrap_or(u64::MAX).min(MAX_DELTA.as_secs()))
}

fn delta(secs: u64) -> Duration {
    Duration::from_secs(secs).min(MAX_DELTA)
}

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

    /// The reason in words, for `explain`.
    pub fn describe(self) -> &'static str {
        match self {
            BypassReason::Method => "the method is not cacheable",
            BypassReason::Credentials => {
                "the request carries a credential cachegate cannot resolve, or a part of the identity this route varies on did not resolve, or a caller with credentials asked for a route that varies on nobody (answers shared with everybody are not served to somebody)"
            }
            BypassReason::NoUser => "the route varies on user and the request has no resolved user",
            BypassReason::Range => "a Range request: ranges are not served from cache",
            BypassReason::NoRoute => "no [[route]] matches the path",
            BypassReason::NoStore => "the origin answered Cache-Control: no-store",
            BypassReason::Private => "the origin answered Cache-Control: private",
            BypassReason::NoCache => "the origin answered Cache-Control: no-cache on a ttl = \"origin\" route",
            BypassReason::SetCookie => "the origin's answer sets a cookie",
            BypassReason::Status => "the status is not in [cache] cacheable_statuses",
            BypassReason::TooLarge => "the body is larger than [server] max_body",
            BypassReason::VaryStar => "the origin answered Vary: *",
            BypassReason::NoFreshness => "a ttl = \"origin\" route and the origin gave no freshness",
            BypassReason::Purged => "a purge landed while the answer was being fetched",
        }
    }

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
    /// `max-age` (every number here is at most [`MAX_DELTA`] seconds)
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
                let secs = || arg.and_then(delta_seconds);
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
        .and_then(delta_seconds)
        .map_or(Duration::ZERO, delta);
    let lifetime = match route.ttl {
        Ttl::Fixed(d) => {
            return Ok(Freshness {
                lifetime: d.min(MAX_DELTA),
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
        revalidate: route
            .stale_while_revalidate
            .unwrap_or(cache.stale_while_revalidate)
            .min(MAX_DELTA),
        if_error: route.stale_if_error.unwrap_or(cache.stale_if_error).min(MAX_DELTA),
    };
    if route.ttl == Ttl::Origin {
        let cc = CacheControl::parse(headers);
        if cc.must_revalidate {
            return StaleWindows::default();
        }
        if let Some(s) = cc.stale_while_revalidate {
            w.revalidate = delta(s);
        }
        if let Some(s) = cc.stale_if_error {
            w.if_error = delta(s);
        }
    }
    w
}

/// RFC 9111 §4.2.1: `s-maxage`, then `max-age`, then `Expires - Date`.
fn origin_lifetime(cc: &CacheControl, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return Some(delta(s));
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
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO).min(MAX_DELTA))
}

/// `Vary: *`, or a `Vary` on the client address: cachegate sets `X-Forwarded-For` per client,
/// so no other client's request can match it, and the key (built from the request as it
/// arrived) could not see the value the origin saw.
fn vary_star(headers: &HeaderMap) -> bool {
    headers.get_all(VARY).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|p| {
            let p = p.trim();
            p == "*" || p.eq_ignore_ascii_case("x-forwarded-for")
        })
    })
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

    const CONFIG: &str = r#"
[origin]
url = "http://127.0.0.1:8000"

[cache]
stale_while_revalidate = "30s"
stale_if_error = "5m"

[[route]]
name = "fixed"
path = "/fixed/"
ttl = "10m"
strip_set_cookie = true

[[route]]
name = "origin"
path = "/{*any}"
ttl = "origin"
"#;

    fn config() -> crate::config::Config {
        crate::config::from_str(CONFIG, std::path::Path::new("policy.toml")).unwrap()
    }

    #[test]
    fn huge_delta_seconds_are_clamped_and_invalid_ones_ignored() {
        let cc = |v: &str| CacheControl::parse(&h(&[("cache-control", v)]));
        let max = MAX_DELTA.as_secs();
        assert_eq!(cc("max-age=18446744073709551615").max_age, Some(max));
        assert_eq!(cc("max-age=99999999999999999999").max_age, Some(max));
        assert_eq!(cc("s-maxage=2147483649").s_maxage, Some(max));
        assert_eq!(cc("max-age=2147483647").max_age, Some(2_147_483_647));
        // Invalid max-age means stale (as before); an invalid window is ignored.
        assert_eq!(cc("max-age=-1").max_age, Some(0));
        assert_eq!(cc("max-age=1.5").max_age, Some(0));
        assert_eq!(cc("stale-while-revalidate=-1").stale_while_revalidate, None);
        assert_eq!(cc("stale-if-error=+5").stale_if_error, None);

        let config = config();
        let route = &config.routes[1];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        let store = |pairs: &[(&'static str, &str)]| storable(StatusCode::OK, &h(pairs), route, &config.cache, now);
        let f = store(&[("cache-control", "s-maxage=18446744073709551615")]).unwrap();
        assert_eq!(f.lifetime, MAX_DELTA);
        let f = store(&[("expires", "Fri, 31 Dec 9999 23:59:59 GMT")]).unwrap();
        assert_eq!(f.lifetime, MAX_DELTA);
        assert_eq!(
            store(&[("expires", "Mon, 01 Jan 1900 00:00:00 GMT")]),
            Err(BypassReason::NoFreshness)
        );
        assert_eq!(
            store(&[("cache-control", "max-age=60"), ("age", "18446744073709551615")]),
            Err(BypassReason::NoFreshness)
        );
        let w = stale_windows(
            &h(&[(
                "cache-control",
                "stale-while-revalidate=18446744073709551615, stale-if-error=99999999999999999999",
            )]),
            route,
            &config.cache,
        );
        assert_eq!((w.revalidate, w.if_error), (MAX_DELTA, MAX_DELTA));
    }

    mod props {
        use super::*;
        use crate::cache::entry::{CachedResponse, Staleness, WireEntry};
        use proptest::prelude::*;
        use std::time::Instant;

        /// Numbers around every boundary that matters: small, 2^31, u64::MAX, past u64, signed.
        fn number() -> impl Strategy<Value = String> {
            prop_oneof![
                (0u64..100_000).prop_map(|n| n.to_string()),
                any::<u64>().prop_map(|n| n.to_string()),
                Just("2147483648".to_string()),
                Just("18446744073709551615".to_string()),
                Just("99999999999999999999".to_string()),
                "-?[0-9]{0,25}(\\.[0-9])?",
            ]
        }

        fn directive() -> impl Strategy<Value = String> {
            let name = prop_oneof![
                Just("max-age"),
                Just("s-maxage"),
                Just("stale-while-revalidate"),
                Just("stale-if-error"),
                Just("no-cache"),
                Just("must-revalidate"),
                Just("private"),
                Just("no-store"),
                Just("public"),
            ];
            (name, proptest::option::of(number())).prop_map(|(n, v)| match v {
                Some(v) => format!("{n}={v}"),
                None => n.to_string(),
            })
        }

        /// An HTTP date anywhere httpdate can write one (1970 to 9999), or text that is not one.
        fn date() -> impl Strategy<Value = String> {
            prop_oneof![
                (0u64..253_402_300_799)
                    .prop_map(|s| { httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s)) }),
                Just("Mon, 01 Jan 1900 00:00:00 GMT".to_string()),
                Just("Fri, 31 Dec 9999 23:59:59 GMT".to_string()),
                "[ -~]{0,30}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// What the fill path does with an origin answer, and what a hit and the Redis
            /// tier then do with the entry: no panic, every duration bounded, and the wire
            /// encoding reads back to the same entry.
            #[test]
            fn any_origin_freshness_headers_build_a_bounded_entry(
                status in prop_oneof![Just(200u16), Just(404), 100u16..600],
                fixed in any::<bool>(),
                cc in proptest::collection::vec(directive(), 0..6),
                expires in proptest::option::of(date()),
                date_header in proptest::option::of(date()),
                age in proptest::option::of(number()),
                now_secs in 0u64..253_402_300_799,
                later_ms in proptest::collection::vec(any::<u64>(), 0..4),
            ) {
                let config = config();
                let route = &config.routes[usize::from(!fixed)];
                let mut headers = HeaderMap::new();
                let mut add = |k: &'static str, v: &str| {
                    if let Ok(v) = http::HeaderValue::from_str(v) {
                        headers.append(k, v);
                    }
                };
                add("cache-control", &cc.join(", "));
                if let Some(e) = &expires { add("expires", e); }
                if let Some(d) = &date_header { add("date", d); }
                if let Some(a) = &age { add("age", a); }
                let status = StatusCode::from_u16(status).unwrap();
                let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs);
                let Ok(fresh) = storable(status, &headers, route, &config.cache, now) else {
                    return Ok(());
                };
                prop_assert!(fresh.lifetime <= MAX_DELTA && fresh.initial_age <= MAX_DELTA);
                prop_assert!(!fresh.remaining().is_zero());
                let stale = stale_windows(&headers, route, &config.cache);
                prop_assert!(stale.revalidate <= MAX_DELTA && stale.if_error <= MAX_DELTA);
                let stored_at = Instant::now();
                let entry = CachedResponse {
                    status,
                    headers: headers.clone(),
                    body: bytes::Bytes::from_static(b"body"),
                    stored_at,
                    initial_age: fresh.initial_age,
                    fresh_for: fresh.remaining(),
                    stamps: crate::scope::Stamps::default(),
                    stale,
                    hit_headers: Default::default(),
                };
                prop_assert_eq!(entry.keep_for(), fresh.remaining() + stale.longest());
                for ms in later_ms {
                    let Some(at) = stored_at.checked_add(Duration::from_millis(ms)) else { continue };
                    let state = entry.staleness(at);
                    prop_assert_eq!(state == Staleness::Fresh, entry.is_fresh(at));
                    let _ = entry.age_secs(at);
                }
                let wire = WireEntry {
                    status,
                    headers,
                    body: entry.body.clone(),
                    stored_at_ms: now_secs.saturating_mul(1000),
                    initial_age: entry.initial_age,
                    fresh_for: entry.fresh_for,
                    stale: entry.stale,
                };
                let mut buf = Vec::new();
                wire.encode(&mut buf);
                let back = WireEntry::decode(&bytes::Bytes::from(buf));
                prop_assert_eq!(back.ok(), Some(wire));
            }
        }
    }
}
