//! Answers from a stored entry, for hits, stale serving and fills alike: `304` when the
//! client's validators match, no body for HEAD, the cache headers.

use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

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
        let not_modified = headers::not_modified(asked.headers, &entry.headers);
        if how == Serve::Hit && !not_modified && !self.config.server.debug_headers {
            // The common case: a clone of the prepared map, with its `Age` slot filled in.
            let mut headers = entry.hit_headers(&HIT_EXTRA).clone();
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
        let (status, mut headers, body) = if not_modified {
            (
                StatusCode::NOT_MODIFIED,
                headers::not_modified_headers(&entry.headers),
                ProxyBody::Empty,
            )
        } else if asked.head {
            (entry.status, entry.headers.clone(), ProxyBody::Empty)
        } else {
            (
                entry.status,
                entry.headers.clone(),
                ProxyBody::Full(Some(entry.body.clone())),
            )
        };
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
