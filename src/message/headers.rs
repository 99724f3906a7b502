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
    strip_hop_by_hop_and(headers, |_| false);
}

/// [`strip_hop_by_hop`], and every header `also` picks, in the same pass. A message carries a
/// handful of headers and almost never one of these, so one pass over what is there beats
/// hashing every name for a `remove`.
pub fn strip_hop_by_hop_and(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_hop_by_hop(k) || also(k))
        .cloned()
        .collect();
    if doomed.contains(&header::CONNECTION) {
        // Read before `Connection` itself goes; removing a name that is not there is harmless.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        doomed.extend(named);
    }
    for n in &doomed {
        headers.remove(n);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    // `http2-settings` only means something with an h2c upgrade, which is never forwarded.
    HOP_BY_HOP.contains(name) || name == header::UPGRADE || name == "http2-settings"
}

/// Removes `names` from `headers` in one pass over what is there (see
/// [`strip_hop_by_hop_and`]).
fn remove_present(headers: &mut HeaderMap, names: &[HeaderName]) {
    while let Some(n) = headers.keys().find(|k| names.contains(k)).cloned() {
        headers.remove(&n);
    }
}

/// Whether `headers` holds `name`. A request carries a handful of fields: comparing names
/// (an integer for the standard ones) beats hashing one, and this runs several times a hit.
pub fn has(headers: &HeaderMap, name: &HeaderName) -> bool {
    if headers.keys_len() <= 12 {
        headers.keys().any(|k| k == name)
    } else {
        headers.contains_key(name)
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

/// `Cache-Groups` (RFC 9875): the groups a response belongs to.
pub const CACHE_GROUPS: HeaderName = HeaderName::from_static("cache-groups");
/// `Cache-Group-Invalidation` (RFC 9875): groups a response to an unsafe request invalidates.
pub const CACHE_GROUP_INVALIDATION: HeaderName = HeaderName::from_static("cache-group-invalidation");

/// The strings of a Structured Fields List of Strings (RFC 8941), as `Cache-Groups` and
/// `Cache-Group-Invalidation` carry; a list that does not parse is ignored as a whole, and
/// members that are not strings are skipped (RFC 9875 §2).
pub fn group_list(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    let mut joined = Vec::new();
    for (i, v) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if joined.is_empty() {
        return Vec::new();
    }
    let Ok(list) = sfv::Parser::new(&joined).parse::<sfv::List>() else {
        return Vec::new();
    };
    let mut groups: Vec<String> = list
        .into_iter()
        .filter_map(|entry| match entry {
            sfv::ListEntry::Item(sfv::Item {
                bare_item: sfv::BareItem::String(s),
                ..
            }) => Some(s.as_str().to_owned()),
            _ => None,
        })
        .collect();
    groups.sort();
    groups.dedup();
    groups
}

/// The fields a `304` may not change in a stored answer (RFC 9111 §3.2): those describing the
/// stored bytes (their length, coding and range), the ones never stored, `Age` (the `304`'s own
/// age freshens the entry), `Vary` (the key was made from it), and the surrogate keys and
/// cache groups (the entry's scopes were recorded when it was stored).
const NOT_FRESHENED: [HeaderName; 10] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::TRANSFER_ENCODING,
    header::SET_COOKIE,
    header::AGE,
    header::VARY,
    SURROGATE_KEY,
    CACHE_TAG,
    CACHE_GROUPS,
];

/// A stored answer's headers updated with a `304`'s (RFC 9111 §4.3.4): each field the `304`
/// carries replaces the stored one, except [`NOT_FRESHENED`].
pub fn freshen(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut out = stored.clone();
    for name in not_modified.keys() {
        if NOT_FRESHENED.contains(name) {
            continue;
        }
        out.remove(name);
        for v in not_modified.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// The validators a revalidation sends for a stored answer: `If-None-Match` with its entity
/// tag, `If-Modified-Since` with its `Last-Modified`.
pub fn add_validators(req: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        req.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stored.get(header::LAST_MODIFIED) {
        req.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

/// Whether a `304` answering our revalidation selects the stored answer (RFC 9111 §4.3.4):
/// an entity tag it carries must match the stored one (strongly when it is strong), a
/// `Last-Modified` without one must equal the stored date. A `304` with no validator answers
/// the one conditional request we sent for exactly this answer.
pub fn selects(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    let text =
        |m: &HeaderMap, n: header::HeaderName| m.get(n).and_then(|v| v.to_str().ok()).map(str::trim).map(str::to_owned);
    if let Some(new) = text(not_modified, header::ETAG) {
        let Some(old) = text(stored, header::ETAG) else {
            return false;
        };
        let weak = |t: &str| t.trim_start_matches("W/").to_owned();
        return if new.starts_with("W/") || old.starts_with("W/") {
            weak(&new) == weak(&old)
        } else {
            new == old
        };
    }
    match text(not_modified, header::LAST_MODIFIED) {
        Some(new) => {
            let date = |t: &str| httpdate::parse_http_date(t).ok();
            text(stored, header::LAST_MODIFIED).is_some_and(|old| date(&old).is_some() && date(&old) == date(&new))
        }
        None => true,
    }
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
    if !has(req, &header::IF_NONE_MATCH) && !has(req, &header::IF_MODIFIED_SINCE) {
        return false;
    }
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
        let etag = bare(etag);
        return inm.split(',').any(|t| t.trim() == "*" || bare(t) == etag);
    }
    // The stored date is parsed only when the client sent one: this runs on every hit.
    let Some(ims) = req
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    let lm = stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    lm.is_some_and(|lm| lm <= ims)
}

/// Whether an `If-Range` value names the stored representation (RFC 9110 §13.1.5): an entity
/// tag by strong comparison, or a date equal to a strong `Last-Modified`.
pub fn if_range_matches(if_range: &HeaderValue, stored: &HeaderMap) -> bool {
    let Ok(v) = if_range.to_str() else { return false };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        let etag = stored.get(header::ETAG).and_then(|e| e.to_str().ok()).map(str::trim);
        return !v.starts_with("W/") && etag.is_some_and(|e| !e.starts_with("W/") && e == v);
    }
    let date = |t: &str| httpdate::parse_http_date(t).ok();
    let lm = stored
        .get(header::LAST_MODIFIED)
        .and_then(|l| l.to_str().ok())
        .and_then(date);
    let stored_date = stored.get(header::DATE).and_then(|d| d.to_str().ok()).and_then(date);
    // A Last-Modified is strong only if at least a second older than the response's Date.
    let strong = match (lm, stored_date) {
        (Some(lm), Some(d)) => d.duration_since(lm).is_ok_and(|gap| gap.as_secs() >= 1),
        _ => false,
    };
    strong && date(v).is_some() && date(v) == lm
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

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn freshen_replaces_fields_but_not_those_describing_the_stored_bytes() {
        let stored = map(&[
            ("etag", "\"a\""),
            ("x-multi", "1"),
            ("x-multi", "2"),
            ("content-length", "10"),
            ("content-encoding", "gzip"),
            ("vary", "accept"),
            ("x-old", "kept"),
        ]);
        let not_modified = map(&[
            ("x-multi", "3"),
            ("content-length", "0"),
            ("content-encoding", "br"),
            ("vary", "cookie"),
            ("set-cookie", "a=b"),
            ("cache-groups", "\"new\""),
        ]);
        let out = freshen(&stored, &not_modified);
        let all = |n: &str| {
            out.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-multi"), ["3"]);
        assert_eq!(all("content-length"), ["10"]);
        assert_eq!(all("content-encoding"), ["gzip"]);
        assert_eq!(all("vary"), ["accept"]);
        assert_eq!(all("x-old"), ["kept"]);
        assert!(all("set-cookie").is_empty() && all("cache-groups").is_empty());
    }

    #[test]
    fn a_304_selects_the_stored_answer_by_its_validators() {
        let strong = map(&[("etag", "\"a\""), ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT")]);
        assert!(selects(&strong, &map(&[("etag", "\"a\"")])));
        assert!(!selects(&strong, &map(&[("etag", "\"b\"")])));
        assert!(
            selects(&strong, &map(&[("etag", "W/\"a\"")])),
            "weak comparison when either is weak"
        );
        assert!(
            selects(&strong, &map(&[])),
            "no validator: the answer to our one request"
        );
        assert!(selects(
            &strong,
            &map(&[("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT")])
        ));
        assert!(!selects(
            &strong,
            &map(&[("last-modified", "Mon, 02 Nov 2026 11:00:00 GMT")])
        ));
        assert!(!selects(
            &map(&[("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT")]),
            &map(&[("etag", "\"a\"")])
        ));
    }

    #[test]
    fn group_lists_are_structured_field_strings() {
        let g = |v: &'static str| group_list(&map(&[("cache-groups", v)]), &CACHE_GROUPS);
        assert_eq!(g("\"b\", \"a\", \"b\""), ["a", "b"]);
        assert_eq!(g("\"a\", token, 5"), ["a"], "members that are not strings are skipped");
        assert!(g("\"unterminated").is_empty(), "an invalid list is ignored whole");
        assert!(group_list(&HeaderMap::new(), &CACHE_GROUPS).is_empty());
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let stored = map(&[
            ("etag", "\"a\""),
            ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT"),
            ("date", "Mon, 02 Nov 2026 12:00:00 GMT"),
        ]);
        let v = HeaderValue::from_static;
        assert!(if_range_matches(&v("\"a\""), &stored));
        assert!(!if_range_matches(&v("W/\"a\""), &stored));
        assert!(!if_range_matches(&v("\"b\""), &stored));
        assert!(if_range_matches(&v("Mon, 02 Nov 2026 10:00:00 GMT"), &stored));
        assert!(!if_range_matches(&v("Mon, 02 Nov 2026 09:00:00 GMT"), &stored));
        let weak_date = map(&[
            ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT"),
            ("date", "Mon, 02 Nov 2026 10:00:00 GMT"),
        ]);
        assert!(!if_range_matches(&v("Mon, 02 Nov 2026 10:00:00 GMT"), &weak_date));
    }

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
