//! An origin answer's headers on their way to a stored entry, as the fill path handles them:
//! hop-by-hop and surrogate-key stripping, `policy::storable`, `policy::stale_windows`, the
//! `Vary` names, a `CachedResponse` and what hits ask of it, and the `WireEntry` sent to Redis.
//!
//! Never panics, and when the answer is storable:
//! - lifetime, initial age and both stale windows are at most `policy::MAX_DELTA`, and some
//!   freshness is left;
//! - `keep_for` (what the tiers expire on) is freshness plus the longer window;
//! - `staleness` says `Fresh` exactly when `is_fresh` does, at any later instant;
//! - the wire encoding decodes to the same entry.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cachegate::cache::entry::{CachedResponse, Staleness, WireEntry};
use cachegate::cache::policy::{self, MAX_DELTA};
use cachegate::config::Config;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

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
name = "windows"
path = "/windows/"
ttl = "origin"
stale_while_revalidate = "1h"
stale_if_error = "1d"

[[route]]
name = "origin"
path = "/{*any}"
ttl = "origin"
"#;

fn config() -> &'static Config {
    static CONFIG_ONCE: OnceLock<Config> = OnceLock::new();
    CONFIG_ONCE.get_or_init(|| {
        cachegate::config::from_str(CONFIG, Path::new("fuzz.toml")).expect("the fixed fuzz config is valid")
    })
}

/// An HTTP date either written from a time (so the parser accepts it) or as raw bytes.
#[derive(Debug, Arbitrary)]
enum Date {
    Unix(u64),
    Raw(Vec<u8>),
}

impl Date {
    fn bytes(&self) -> Vec<u8> {
        match self {
            // httpdate writes years 1970 to 9999.
            Date::Unix(s) => UNIX_EPOCH
                .checked_add(Duration::from_secs(s % 253_402_300_800))
                .map(|t| httpdate::fmt_http_date(t).into_bytes())
                .unwrap_or_default(),
            Date::Raw(b) => b.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    status: u16,
    route: u8,
    cache_control: Vec<Vec<u8>>,
    expires: Option<Date>,
    date: Option<Date>,
    age: Option<Vec<u8>>,
    vary: Vec<Vec<u8>>,
    surrogate_key: Option<Vec<u8>>,
    cache_tag: Option<Vec<u8>>,
    connection: Option<Vec<u8>>,
    set_cookie: bool,
    body: Vec<u8>,
    now_secs: u64,
    later_ms: Vec<u64>,
}

fn add(headers: &mut HeaderMap, name: &'static str, value: &[u8]) {
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.append(HeaderName::from_static(name), v);
    }
}

fuzz_target!(|input: Input| {
    let config = config();
    let route = &config.routes[usize::from(input.route) % config.routes.len()];
    let Ok(status) = StatusCode::from_u16(input.status) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for cc in &input.cache_control {
        add(&mut headers, "cache-control", cc);
    }
    if let Some(d) = &input.expires {
        add(&mut headers, "expires", &d.bytes());
    }
    if let Some(d) = &input.date {
        add(&mut headers, "date", &d.bytes());
    }
    if let Some(a) = &input.age {
        add(&mut headers, "age", a);
    }
    for v in &input.vary {
        add(&mut headers, "vary", v);
    }
    if let Some(k) = &input.surrogate_key {
        add(&mut headers, "surrogate-key", k);
    }
    if let Some(t) = &input.cache_tag {
        add(&mut headers, "cache-tag", t);
    }
    if let Some(c) = &input.connection {
        add(&mut headers, "connection", c);
    }
    if input.set_cookie {
        add(&mut headers, "set-cookie", b"sid=1");
    }

    // The fill path's order: strip, take surrogate keys, add Via, then decide.
    cachegate::proxy::headers::strip_hop_by_hop(&mut headers);
    let tags = cachegate::proxy::headers::take_surrogate_tags(&mut headers);
    for t in &tags {
        let _ = cachegate::scope::tag_scope(t);
        let _ = cachegate::scope::tenant_tag_scope(t, Some("42"));
    }
    cachegate::proxy::headers::add_via(&mut headers);
    let _ = policy::CacheControl::parse(&headers);
    let now = UNIX_EPOCH
        .checked_add(Duration::from_secs(input.now_secs % 253_402_300_800))
        .unwrap_or(UNIX_EPOCH);
    let Ok(fresh) = policy::storable(status, &headers, route, &config.cache, now) else {
        return;
    };
    assert!(
        fresh.lifetime <= MAX_DELTA,
        "lifetime {:?} over the bound",
        fresh.lifetime
    );
    assert!(
        fresh.initial_age <= MAX_DELTA,
        "age {:?} over the bound",
        fresh.initial_age
    );
    assert!(!fresh.remaining().is_zero(), "a stored answer has freshness left");
    let stale = policy::stale_windows(&headers, route, &config.cache);
    assert!(
        stale.revalidate <= MAX_DELTA && stale.if_error <= MAX_DELTA,
        "{stale:?}"
    );
    let _ = cachegate::cache::vary_names(&headers);

    let mut stored = headers.clone();
    stored.remove(http::header::SET_COOKIE);
    stored.remove(http::header::AGE);
    let stored_at = Instant::now();
    let entry = CachedResponse {
        status,
        headers: stored,
        body: Bytes::from(input.body),
        stored_at,
        initial_age: fresh.initial_age,
        fresh_for: fresh.remaining(),
        stamps: Default::default(),
        stale,
        hit_headers: Default::default(),
    };
    assert_eq!(entry.keep_for(), fresh.remaining() + stale.longest());
    let _ = entry.weight();
    let _ = entry.hit_headers(&[]);
    for ms in &input.later_ms {
        let Some(at) = stored_at.checked_add(Duration::from_millis(*ms)) else {
            continue;
        };
        assert_eq!(entry.staleness(at) == Staleness::Fresh, entry.is_fresh(at));
        let _ = entry.age_secs(at);
    }

    let wire = WireEntry {
        status: entry.status,
        headers: entry.headers.clone(),
        body: entry.body.clone(),
        stored_at_ms: now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        initial_age: entry.initial_age,
        fresh_for: entry.fresh_for,
        stale: entry.stale,
    };
    let mut buf = Vec::new();
    wire.encode(&mut buf);
    let back = WireEntry::decode(&Bytes::from(buf)).expect("an encoded entry decodes");
    assert_eq!(back, wire, "the wire encoding round-trips");
});
