//! Answers from a stored entry, for hits, stale serving and fills alike: `304` when the
//! client's validators match, `206`/`416` for a byte range of a stored `200`, no body for
//! HEAD, the cache headers.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_range_header::RangeUnsatisfiableError;

use super::{CacheResult, Outcome, Proxy};
use crate::cache::entry::CachedResponse;
use crate::cache::Tier;
use crate::message::body::ProxyBody;
use crate::message::headers;

/// How a stored entry is being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Serve {
    /// Fresh.
    Hit,
    /// Stale while a refresh runs (or soft-purged).
    Stale,
    /// Stale because the origin failed.
    StaleIfError,
}

/// What a fresh hit adds to the stored headers (`Age` is replaced per answer).
static HIT_EXTRA: [(http::HeaderName, HeaderValue); 3] = [
    (header::AGE, HeaderValue::from_static("0")),
    (headers::X_CACHE, HeaderValue::from_static("HIT")),
    (headers::CACHE_STATUS, HeaderValue::from_static("cachegate; hit")),
];

/// What the client asked for, as far as answering from an entry goes.
pub(super) struct Asked<'a> {
    pub(super) headers: &'a HeaderMap,
    pub(super) head: bool,
}

impl Proxy {
    /// Answers from a stored entry: `304` when the client's validators match, no body for HEAD.
    pub(super) fn serve(
        &self,
        asked: &Asked<'_>,
        entry: &CachedResponse,
        tier: Tier,
        key: &str,
        how: Serve,
        out: &mut Outcome,
    ) -> Response<ProxyBody> {
        out.cache = if how == Serve::Hit {
            CacheResult::Hit
        } else {
            CacheResult::Stale
        };
        out.tier = Some(tier);
        let now = self.cache.now();
        let age = headers::age_value(entry.age_secs(now));
        let plain =
            !headers::has(asked.headers, &header::RANGE) && !headers::not_modified(asked.headers, &entry.headers);
        if how == Serve::Hit && plain && !self.config.server.debug_headers {
            // The common case: a clone of the prepared map, with its `Age` slot filled in.
            let private = self.config.cache.targeted_cache_control.as_ref();
            let mut headers = entry.hit_headers(&HIT_EXTRA, private).clone();
            headers.insert(header::AGE, age);
            let body = if asked.head {
                ProxyBody::Empty
            } else {
                ProxyBody::Full(Some(entry.body.clone()))
            };
            let mut resp = Response::new(body);
            *resp.status_mut() = entry.status;
            *resp.headers_mut() = headers;
            return resp;
        }
        let (status, mut headers, body) = shape(asked, entry.status, entry.headers.clone(), &entry.body);
        self.strip_targeted(&mut headers);
        headers.insert(header::AGE, age);
        let (x_cache, status_text) = match how {
            Serve::Hit => ("HIT", "cachegate; hit"),
            Serve::Stale => ("STALE", "cachegate; hit; detail=stale"),
            Serve::StaleIfError => ("STALE", "cachegate; hit; detail=stale-if-error"),
        };
        headers.insert(headers::X_CACHE, HeaderValue::from_static(x_cache));
        headers.insert(headers::CACHE_STATUS, HeaderValue::from_static(status_text));
        if self.config.server.debug_headers {
            add_debug(&mut headers, key, Some(tier));
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }
}

/// `X-Cache-Key` and, on hits, `X-Cache-Tier`.
pub(super) fn add_debug(headers: &mut http::HeaderMap, key: &str, tier: Option<Tier>) {
    if let Ok(v) = HeaderValue::from_str(key) {
        headers.insert(headers::X_CACHE_KEY, v);
    }
    if let Some(t) = tier {
        headers.insert(headers::X_CACHE_TIER, HeaderValue::from_static(t.as_str()));
    }
}

/// The answer a complete response makes for what the client asked: `304` when its validators
/// match (RFC 9110 §13.2.2), one byte range of a `200` as `206` or an unsatisfiable one as
/// `416` (§14), no body for HEAD, otherwise the response itself.
pub(super) fn shape(
    asked: &Asked<'_>,
    status: StatusCode,
    headers: HeaderMap,
    body: &Bytes,
) -> (StatusCode, HeaderMap, ProxyBody) {
    if headers::not_modified(asked.headers, &headers) {
        return (
            StatusCode::NOT_MODIFIED,
            headers::not_modified_headers(&headers),
            ProxyBody::Empty,
        );
    }
    if asked.head {
        return (status, headers, ProxyBody::Empty);
    }
    match byte_range(asked.headers, status, &headers, body.len() as u64) {
        Some(Ok(range)) => {
            let mut headers = headers;
            let len = body.len();
            let (start, end) = (*range.start(), *range.end());
            set(
                &mut headers,
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{len}"),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            // The range is within the body: `validate` clamps it to the length.
            let part = body.slice(start as usize..=end as usize);
            (StatusCode::PARTIAL_CONTENT, headers, ProxyBody::Full(Some(part)))
        }
        Some(Err(())) => {
            let mut out = headers::not_modified_headers(&headers);
            set(&mut out, header::CONTENT_RANGE, format!("bytes */{}", body.len()));
            out.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            (StatusCode::RANGE_NOT_SATISFIABLE, out, ProxyBody::Empty)
        }
        None => (status, headers, ProxyBody::Full(Some(body.clone()))),
    }
}

fn set(headers: &mut HeaderMap, name: header::HeaderName, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(name, v);
    }
}

/// The one byte range to answer with (`Ok`), an unsatisfiable request (`Err`), or `None` to
/// answer whole: no `Range`, not a `200`, an `If-Range` that does not match (§13.1.5), or a
/// range header we do not serve from a stored answer (invalid, several ranges: a server may
/// ignore `Range`, §14.2).
fn byte_range(
    req: &HeaderMap,
    status: StatusCode,
    stored: &HeaderMap,
    len: u64,
) -> Option<Result<std::ops::RangeInclusive<u64>, ()>> {
    let range = req.get(header::RANGE)?.to_str().ok()?;
    if status != StatusCode::OK {
        return None;
    }
    if let Some(if_range) = req.get(header::IF_RANGE) {
        if !headers::if_range_matches(if_range, stored) {
            return None;
        }
    }
    let parsed = http_range_header::parse_range_header(range).ok()?;
    if parsed.len() != 1 {
        return None;
    }
    match parsed.validate(len) {
        Ok(ranges) => ranges.into_iter().next().map(Ok),
        Err(RangeUnsatisfiableError::Unsatisfiable) => Some(Err(())),
        Err(_) => None,
    }
}
