//! What may be stored, and for how long: pure functions over response headers and config.
//!
//! Nothing here does I/O or reads the clock; callers pass `now` in, so freshness can be tested
//! without waiting.

use std::time::{Duration, SystemTime};

use http::header::{AGE, CACHE_CONTROL, DATE, ETAG, EXPIRES, LAST_MODIFIED, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, StatusCode};

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
    /// A request for several byte ranges: the origin makes the multipart answer.
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
    /// Read from a targeted field (RFC 9213): `Expires` is then ignored too.
    pub targeted: bool,
}

/// `CDN-Cache-Control` (RFC 9213): targets every CDN, so it is also forwarded downstream.
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

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

    /// The directives cachegate acts on (RFC 9213 §2.1): the first of `targeted` (the field
    /// aimed at cachegate alone) and `CDN-Cache-Control` with a valid, non-empty value replaces
    /// `Cache-Control` and `Expires`; otherwise `Cache-Control` as usual.
    pub fn of_response(headers: &HeaderMap, targeted: Option<&HeaderName>) -> Self {
        targeted
            .into_iter()
            .chain([&CDN_CACHE_CONTROL])
            .find_map(|name| Self::targeted(headers, name))
            .unwrap_or_else(|| Self::parse(headers))
    }

    /// A targeted field: a Structured Fields Dictionary (RFC 8941). Invalid or empty is `None`,
    /// and the field is then ignored as a whole.
    fn targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut lines = headers.get_all(name).iter().peekable();
        lines.peek()?;
        // Several field lines are one list (RFC 9110 §5.3).
        let mut joined = Vec::new();
        for (i, v) in lines.enumerate() {
            if i > 0 {
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(v.as_bytes());
        }
        let dict: sfv::Dictionary = sfv::Parser::new(&joined).parse().ok()?;
        if dict.is_empty() {
            return None;
        }
        let mut cc = CacheControl {
            targeted: true,
            ..CacheControl::default()
        };
        for (key, entry) in &dict {
            let sfv::ListEntry::Item(item) = entry else {
                // `private=("set-cookie")`: a qualified form still makes the answer unfit for a
                // shared cache, as in `Cache-Control`.
                match key.as_str() {
                    "private" => cc.private = true,
                    "no-cache" => cc.no_cache = true,
                    _ => {}
                }
                continue;
            };
            // A directive with a value of the wrong type is ignored (RFC 9213 §2.1).
            let flag = !matches!(item.bare_item, sfv::BareItem::Boolean(false));
            let secs = match &item.bare_item {
                sfv::BareItem::Integer(n) => u64::try_from(i64::from(*n)).ok().map(|n| n.min(MAX_DELTA.as_secs())),
                _ => None,
            };
            match key.as_str() {
                "no-store" => cc.no_store = flag,
                "private" => cc.private = flag,
                "no-cache" => cc.no_cache = flag,
                "max-age" => cc.max_age = secs,
                "s-maxage" => cc.s_maxage = secs,
                "stale-while-revalidate" => cc.stale_while_revalidate = secs,
                "stale-if-error" => cc.stale_if_error = secs,
                "must-revalidate" | "proxy-revalidate" => cc.must_revalidate |= flag,
                _ => {}
            }
        }
        Some(cc)
    }

    /// `s-maxage`, `max-age` or (outside a targeted field) `Expires`: freshness the origin
    /// stated rather than one a cache would guess.
    fn explicit_freshness(&self, headers: &HeaderMap) -> bool {
        self.s_maxage.is_some() || self.max_age.is_some() || (!self.targeted && headers.contains_key(EXPIRES))
    }

    /// Whether the origin forbids serving the answer stale (RFC 9111 §4.2.4): `no-cache`,
    /// `must-revalidate`, `proxy-revalidate`, and `s-maxage`, which implies `proxy-revalidate`
    /// for a shared cache (§5.2.2.10).
    pub fn forbids_stale(&self) -> bool {
        self.no_cache || self.must_revalidate || self.s_maxage.is_some()
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

/// What storing a response means: how long it is fresh, and the windows past that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Storage {
    /// Freshness (its remaining part may be zero for an answer kept only to be revalidated).
    pub freshness: Freshness,
    /// Stale windows and the revalidation keep.
    pub stale: StaleWindows,
}

/// Statuses that never make a stored answer whatever the origin says: interim answers, a
/// partial body, and `304`, which only updates a stored answer.
fn final_complete(status: StatusCode) -> bool {
    !status.is_informational() && status != StatusCode::PARTIAL_CONTENT && status != StatusCode::NOT_MODIFIED
}

/// Whether the answer carries a validator a conditional request can name.
pub fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED)
}

/// The `Age` header: the first member of its first line (RFC 9111 §5.1: `Age: 7200, 0` is a
/// list a cache may reduce to its first value); an invalid value counts as none.
fn initial_age(headers: &HeaderMap) -> Duration {
    headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(delta_seconds)
        .map_or(Duration::ZERO, delta)
}

/// Decides whether a response may be stored, for how long, and how long past that it may be
/// served stale or kept for revalidation.
///
/// # Errors
/// The [`BypassReason`] that keeps it out of the cache.
pub fn storage(
    status: StatusCode,
    headers: &HeaderMap,
    route: &RouteConfig,
    cache: &CacheConfig,
    now: SystemTime,
) -> Result<Storage, BypassReason> {
    let cc = CacheControl::of_response(headers, cache.targeted_cache_control.as_ref());
    let listed = cache.cacheable_statuses.contains(&status.as_u16());
    let status_ok = match route.ttl {
        Ttl::Fixed(_) => listed,
        Ttl::Origin => final_complete(status) && (listed || cc.explicit_freshness(headers)),
    };
    if !status_ok {
        return Err(BypassReason::Status);
    }
    if vary_star(headers) {
        return Err(BypassReason::VaryStar);
    }
    if cache.respect_origin_cache_control || route.ttl == Ttl::Origin {
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
    let keep = if has_validator(headers) {
        cache.keep.min(MAX_DELTA)
    } else {
        Duration::ZERO
    };
    let freshness = match route.ttl {
        Ttl::Fixed(d) => Freshness {
            lifetime: d.min(MAX_DELTA),
            initial_age: Duration::ZERO,
        },
        Ttl::Origin => {
            // `no-cache`: stored only to be revalidated on every use, so only with a validator.
            let lifetime = if cc.no_cache {
                Duration::ZERO
            } else {
                origin_lifetime(&cc, headers, now).ok_or(BypassReason::NoFreshness)?
            };
            Freshness {
                lifetime,
                initial_age: initial_age(headers),
            }
        }
    };
    let mut stale = stale_windows(&cc, route, cache, keep);
    // An answer that arrives already stale has used up that much of its windows too: they
    // count from when it became stale, not from when cachegate received it.
    let overshoot = freshness.initial_age.saturating_sub(freshness.lifetime);
    stale.revalidate = stale.revalidate.saturating_sub(overshoot);
    stale.if_error = stale.if_error.saturating_sub(overshoot);
    if freshness.remaining().is_zero() && stale.keep.is_zero() {
        return Err(if cc.no_cache {
            BypassReason::NoCache
        } else {
            BypassReason::NoFreshness
        });
    }
    Ok(Storage { freshness, stale })
}

/// Stale windows of a stored answer. Fixed-TTL routes: the route's (or the cache's) settings,
/// the operator's permission. `ttl = "origin"` routes: the origin's `stale-while-revalidate` /
/// `stale-if-error` (RFC 5861), else the route's own explicit setting, else none; and nothing
/// at all when the origin forbids stale answers (RFC 9111 §4.2.4).
fn stale_windows(cc: &CacheControl, route: &RouteConfig, cache: &CacheConfig, keep: Duration) -> StaleWindows {
    match route.ttl {
        Ttl::Fixed(_) => StaleWindows {
            revalidate: route
                .stale_while_revalidate
                .unwrap_or(cache.stale_while_revalidate)
                .min(MAX_DELTA),
            if_error: route.stale_if_error.unwrap_or(cache.stale_if_error).min(MAX_DELTA),
            keep,
        },
        Ttl::Origin if cc.forbids_stale() => StaleWindows {
            keep,
            ..StaleWindows::default()
        },
        Ttl::Origin => StaleWindows {
            revalidate: cc
                .stale_while_revalidate
                .map(delta)
                .or(route.stale_while_revalidate)
                .unwrap_or_default()
                .min(MAX_DELTA),
            if_error: cc
                .stale_if_error
                .map(delta)
                .or(route.stale_if_error)
                .unwrap_or_default()
                .min(MAX_DELTA),
            keep,
        },
    }
}

/// RFC 9111 §4.2.1: `s-maxage`, then `max-age`, then `Expires - Date` (not with a targeted
/// field, which replaces `Expires` too).
fn origin_lifetime(cc: &CacheControl, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return Some(delta(s));
    }
    if cc.targeted {
        return None;
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
    fn targeted_fields_replace_cache_control() {
        let name = HeaderName::from_static("cachegate-cache-control");
        let of = |pairs: &[(&'static str, &str)]| CacheControl::of_response(&h(pairs), Some(&name));
        let cc = of(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60, stale-if-error=30"),
        ]);
        assert!(cc.targeted && !cc.no_store);
        assert_eq!((cc.max_age, cc.stale_if_error), (Some(60), Some(30)));
        let cc = of(&[
            ("cdn-cache-control", "max-age=60"),
            ("cachegate-cache-control", "no-store"),
        ]);
        assert!(
            cc.no_store && cc.max_age.is_none(),
            "the field aimed at cachegate comes first"
        );
        // Invalid (a string where an integer belongs is only ignored; bad syntax voids the field).
        let cc = of(&[("cache-control", "max-age=5"), ("cdn-cache-control", "max-age=\"60\"")]);
        assert!(cc.targeted && cc.max_age.is_none());
        let cc = of(&[("cache-control", "max-age=5"), ("cdn-cache-control", "max-age=60,,")]);
        assert!(!cc.targeted && cc.max_age == Some(5));
        let cc = of(&[
            ("cache-control", "max-age=5"),
            ("cdn-cache-control", "no-store=?0, max-age=-1"),
        ]);
        assert!(cc.targeted && !cc.no_store && cc.max_age.is_none());
        let cc = of(&[
            ("cdn-cache-control", "must-revalidate"),
            ("cdn-cache-control", "s-maxage=9"),
        ]);
        assert!(
            cc.must_revalidate && cc.s_maxage == Some(9),
            "several lines are one dictionary"
        );
    }

    #[test]
    fn origin_routes_take_stale_windows_from_the_origin_only() {
        let config = config();
        let (fixed, origin) = (&config.routes[0], &config.routes[1]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        let stale = |route, cc: &str| {
            storage(StatusCode::OK, &h(&[("cache-control", cc)]), route, &config.cache, now).map(|s| s.stale)
        };
        let w = stale(origin, "max-age=60").unwrap();
        assert_eq!(
            (w.revalidate, w.if_error),
            (Duration::ZERO, Duration::ZERO),
            "the global windows do not apply"
        );
        let w = stale(origin, "max-age=60, stale-while-revalidate=7, stale-if-error=8").unwrap();
        assert_eq!(
            (w.revalidate, w.if_error),
            (Duration::from_secs(7), Duration::from_secs(8))
        );
        for forbids in [
            "max-age=60, must-revalidate",
            "max-age=60, proxy-revalidate",
            "s-maxage=60",
        ] {
            let w = stale(origin, &format!("{forbids}, stale-if-error=8")).unwrap();
            assert_eq!(w.if_error, Duration::ZERO, "{forbids}");
        }
        let w = stale(fixed, "must-revalidate").unwrap();
        assert_eq!(
            (w.revalidate, w.if_error),
            (Duration::from_secs(30), Duration::from_secs(300)),
            "the operator's permission"
        );
    }

    #[test]
    fn validators_make_unfresh_answers_worth_keeping() {
        let config = config();
        let origin = &config.routes[1];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        let store = |pairs: &[(&'static str, &str)]| storage(StatusCode::OK, &h(pairs), origin, &config.cache, now);
        assert_eq!(store(&[("cache-control", "no-cache")]), Err(BypassReason::NoCache));
        let s = store(&[("cache-control", "no-cache"), ("etag", "\"x\"")]).unwrap();
        assert!(s.freshness.remaining().is_zero() && !s.stale.keep.is_zero());
        let s = store(&[
            ("cache-control", "max-age=0"),
            ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT"),
        ])
        .unwrap();
        assert!(s.freshness.remaining().is_zero());
        assert_eq!(store(&[("cache-control", "max-age=0")]), Err(BypassReason::NoFreshness));
    }

    #[test]
    fn explicit_freshness_lets_other_statuses_be_stored_on_origin_routes() {
        let config = config();
        let (fixed, origin) = (&config.routes[0], &config.routes[1]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        let ok = |route, status: u16, cc: &str| {
            storage(
                StatusCode::from_u16(status).unwrap(),
                &h(&[("cache-control", cc)]),
                route,
                &config.cache,
                now,
            )
            .is_ok()
        };
        assert!(ok(origin, 302, "max-age=60") && ok(origin, 503, "s-maxage=60"));
        assert!(
            !ok(origin, 302, "public"),
            "no explicit freshness: the configured statuses only"
        );
        assert!(!ok(origin, 206, "max-age=60") && !ok(origin, 304, "max-age=60") && !ok(origin, 103, "max-age=60"));
        assert!(
            !ok(fixed, 302, "max-age=60"),
            "fixed-TTL routes keep to cacheable_statuses"
        );
        assert!(ok(origin, 404, "max-age=60"));
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
        let store = |pairs: &[(&'static str, &str)]| {
            storage(StatusCode::OK, &h(pairs), route, &config.cache, now).map(|s| s.freshness)
        };
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
        let w = storage(
            StatusCode::OK,
            &h(&[(
                "cache-control",
                "max-age=1, stale-while-revalidate=18446744073709551615, stale-if-error=99999999999999999999",
            )]),
            route,
            &config.cache,
            now,
        )
        .unwrap()
        .stale;
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
                let Ok(Storage { freshness: fresh, stale }) = storage(status, &headers, route, &config.cache, now) else {
                    return Ok(());
                };
                prop_assert!(fresh.lifetime <= MAX_DELTA && fresh.initial_age <= MAX_DELTA);
                // Nothing is stored that is neither fresh nor kept for revalidation.
                prop_assert!(!fresh.remaining().is_zero() || !stale.keep.is_zero());
                prop_assert!(stale.revalidate <= MAX_DELTA && stale.if_error <= MAX_DELTA && stale.keep <= MAX_DELTA);
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
                    surrogate: vec!["t:x".to_string()],
                    hit_headers: Default::default(),
                };
                prop_assert_eq!(entry.keep_for(), fresh.remaining() + stale.longest() + stale.keep);
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
                    surrogate: entry.surrogate.clone(),
                };
                let mut buf = Vec::new();
                wire.encode(&mut buf);
                let back = WireEntry::decode(&bytes::Bytes::from(buf));
                prop_assert_eq!(back.ok(), Some(wire));
            }
        }
    }
}
