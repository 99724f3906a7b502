//! Header hygiene between client, cachegate and origin.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;

use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Response headers that carry surrogate tags for us; stripped before the client sees them.
pub const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// Cloudflare-style alias of `Surrogate-Key`.
pub const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");
/// `X-Cache: HIT | MISS | STALE | BYPASS`.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// RFC 9211 `Cache-Status`.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// Debug: the key.
pub const X_CACHE_KEY: HeaderName = HeaderName::from_static("x-cache-key");
/// Debug: the tier that answered.
pub const X_CACHE_TIER: HeaderName = HeaderName::from_static("x-cache-tier");
/// The client address chain.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The scheme the client used.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The host the client addressed.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const VIA_VALUE: &str = "1.1 cachegate";

/// Removes hop-by-hop headers, including those named in `Connection`, and `Upgrade`
/// (protocol upgrades are not proxied).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in &named {
        headers.remove(n);
    }
    remove_present(headers, &HOP_BY_HOP);
    headers.remove(header::UPGRADE);
    // Only meaningful with an h2c upgrade, which is never forwarded.
    headers.remove(HeaderName::from_static("http2-settings"));
}

/// Removes `names` from `headers`. A message carries a handful of headers and almost never
/// one of these, so one pass over what is there beats hashing every name for a `remove`.
fn remove_present(headers: &mut HeaderMap, names: &[HeaderName]) {
    while let Some(n) = headers.keys().find(|k| names.contains(k)).cloned() {
        headers.remove(&n);
    }
}

/// Appends our `Via` entry.
pub fn add_via(headers: &mut HeaderMap) {
    headers.append(header::VIA, HeaderValue::from_static(VIA_VALUE));
}

/// Sets `X-Forwarded-For` (appending the peer to what a trusted peer sent; normalisation
/// removed anyone else's), `X-Forwarded-Proto`, and `X-Forwarded-Host` when the client's host
/// is forwarded (and therefore keyed).
pub fn add_forwarded(headers: &mut HeaderMap, peer: IpAddr, proto: &HeaderValue, host: Option<&HeaderValue>) {
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {peer}"),
        None => peer.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, proto.clone());
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h.clone());
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// Removes and returns the surrogate tags (`Surrogate-Key: a b`, `Cache-Tag: a,b`).
pub fn take_surrogate_tags(headers: &mut HeaderMap) -> Vec<String> {
    let mut tags = Vec::new();
    for name in [SURROGATE_KEY, CACHE_TAG] {
        for v in headers.get_all(&name).iter().filter_map(|v| v.to_str().ok()) {
            tags.extend(
                v.split([' ', ','])
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(String::from),
            );
        }
        headers.remove(&name);
    }
    tags.sort();
    tags.dedup();
    tags
}

/// Request headers some frameworks let override the URL, method, host or scheme. They are not
/// part of the key, so a fill that forwarded them would let one client poison the entry for
/// everyone (cache poisoning): cache fills never carry them.
const OVERRIDES: [HeaderName; 9] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-host"),
];

/// Removes the `OVERRIDES` headers.
pub fn strip_overrides(headers: &mut HeaderMap) {
    remove_present(headers, &OVERRIDES);
}

/// Headers a cache fill must not forward: the fill wants the full, unconditional answer.
pub fn strip_conditionals(headers: &mut HeaderMap) {
    const CONDITIONALS: [HeaderName; 6] = [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
    ];
    remove_present(headers, &CONDITIONALS);
}

/// Whether a conditional request is satisfied by the stored validators (RFC 9110 §13.2.2):
/// `If-None-Match` (weak comparison) takes precedence over `If-Modified-Since`.
pub fn not_modified(req: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
        let etag = bare(etag);
        return inm.split(',').any(|t| t.trim() == "*" || bare(t) == etag);
    }
    let ims = req
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let lm = stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((ims, lm), (Some(ims), Some(lm)) if lm <= ims)
}

/// Headers a 304 keeps (RFC 9110 §15.4.5).
pub fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for n in [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
        header::LAST_MODIFIED,
    ] {
        for v in stored.get_all(&n) {
            out.append(n.clone(), v.clone());
        }
    }
    out
}

/// Ages below this have a prepared `Age` value.
const PREPARED_AGES: u64 = 3_600;

/// The `Age` header value for `secs`: prepared once for the first hour, so a hit formats and
/// allocates nothing.
pub fn age_value(secs: u64) -> HeaderValue {
    static AGES: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    if secs >= PREPARED_AGES {
        return HeaderValue::from(secs);
    }
    let ages = AGES.get_or_init(|| {
        // One leaked string holding every number: static values, so cloning one is a copy.
        let mut text = String::new();
        let mut ends = Vec::with_capacity(PREPARED_AGES as usize);
        for n in 0..PREPARED_AGES {
            let _ = write!(text, "{n}");
            ends.push(text.len());
        }
        let text: &'static str = Box::leak(text.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let v = HeaderValue::from_static(&text[start..end]);
                start = end;
                v
            })
            .collect()
    });
    ages[secs as usize].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert!(h.get("x-kept").is_some());
    }

    #[test]
    fn surrogate_tags_are_taken() {
        let mut h = HeaderMap::new();
        h.insert(SURROGATE_KEY, HeaderValue::from_static("a b"));
        h.insert(CACHE_TAG, HeaderValue::from_static("c,a"));
        assert_eq!(take_surrogate_tags(&mut h), vec!["a", "b", "c"]);
        assert!(h.is_empty());
    }

    #[test]
    fn etag_comparison_is_weak() {
        let mut stored = HeaderMap::new();
        stored.insert(header::ETAG, HeaderValue::from_static("W/\"v1\""));
        let mut req = HeaderMap::new();
        req.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"v0\", \"v1\""));
        assert!(not_modified(&req, &stored));
        req.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"v2\""));
        assert!(!not_modified(&req, &stored));
    }
}
