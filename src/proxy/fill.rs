//! A miss: one unconditional GET to the origin; the answer is stored when policy allows and no
//! purge landed since the fill was captured, then served. When the origin fails and a stale
//! entry inside `stale_if_error` exists, that entry is the answer instead.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::answer::{add_debug, Asked, Serve};
use super::{mark_bypass, CacheResult, Ctx, Outcome, Proxy};
use crate::cache::entry::Staleness;
use crate::cache::policy::{self, BypassReason};
use crate::cache::{vary_names, FillPermit, Filled, Stored, Tier};
use crate::config::CredentialCookies;
use crate::error::{ProxyError, UpstreamError};
use crate::message::body::ProxyBody;
use crate::message::headers;
use crate::scope;

/// What a fill needs besides its permit.
pub(super) struct Miss<'a> {
    pub(super) idx: usize,
    /// The tenant the entry is keyed with.
    pub(super) tenant: Option<&'a str>,
    /// The client asked with HEAD (the fill is a GET either way).
    pub(super) head: bool,
}

impl Proxy {
    /// An origin failure while reading a fill's body: counted like a failed request.
    fn body_failed(&self, e: UpstreamError) -> ProxyError {
        self.origin.count(&e);
        e.into()
    }

    pub(super) async fn fill(
        &self,
        parts: http::request::Parts,
        ctx: Ctx<'_>,
        miss: Miss<'_>,
        permit: FillPermit,
        out: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let req_headers = parts.headers.clone();
        let fallback = permit.fallback();
        let head = miss.head;
        let result = self.fetch_and_store(parts, ctx, miss, permit, out).await;
        let failed = match &result {
            Err(ProxyError::Upstream(_)) => true,
            Ok(r) => r.status().is_server_error(),
            Err(_) => false,
        };
        match fallback {
            Some(stale) if failed && stale.staleness(self.cache.now()) != Staleness::Dead => {
                let asked = Asked {
                    headers: &req_headers,
                    head,
                };
                out.reason = None;
                Ok(self.serve(&asked, &stale, Tier::Memory, "", Serve::StaleIfError, out))
            }
            _ => result,
        }
    }

    async fn fetch_and_store(
        &self,
        parts: http::request::Parts,
        ctx: Ctx<'_>,
        miss: Miss<'_>,
        permit: FillPermit,
        out: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Miss { idx, tenant, head } = miss;
        out.cache = CacheResult::Miss;
        let route = &self.config.routes[idx];
        let req_headers = parts.headers.clone();
        let up = self.upstream_request(parts, ProxyBody::Empty, &ctx, true);
        let (mut parts, body) = self.send(up, out).await?.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let surrogate = headers::take_surrogate_tags(&mut parts.headers);
        headers::add_via(&mut parts.headers);
        // A GET logout (or login) on a cached route changes who the session is, too.
        self.session_changes(&self.identity.sessions_of(&req_headers), ctx.path, &parts.headers)
            .await;
        let now = self.cache.wall_now();
        let fresh = match policy::storable(parts.status, &parts.headers, route, &self.config.cache, now) {
            Ok(f) => f,
            Err(reason) => return Ok(bypass_response(parts, ProxyBody::Stream(body), head, reason, out)),
        };
        let max = self.config.server.max_body;
        if content_length(&parts.headers).is_some_and(|n| n > max) {
            return Ok(bypass_response(
                parts,
                ProxyBody::Stream(body),
                head,
                BypassReason::TooLarge,
                out,
            ));
        }
        let timeout = self.config.origin.timeout;
        let body = match tokio::time::timeout(timeout, read_limited(body, max)).await {
            Err(_) => return Err(self.body_failed(UpstreamError::Timeout(timeout))),
            Ok(Err(e)) => return Err(self.body_failed(UpstreamError::Request(crate::upstream::root_cause(&e)))),
            Ok(Ok(Limited::TooLarge(prefix, rest))) => {
                let body = ProxyBody::Prefixed {
                    prefix: Some(prefix),
                    rest,
                };
                return Ok(bypass_response(parts, body, head, BypassReason::TooLarge, out));
            }
            Ok(Ok(Limited::Complete(b))) => b,
        };
        let surrogate_scopes: Vec<String> = surrogate
            .iter()
            .flat_map(|t| [scope::tag_scope(t), scope::tenant_tag_scope(t, tenant)])
            .collect();
        let set_cookies: Vec<HeaderValue> = parts.headers.get_all(header::SET_COOKIE).iter().cloned().collect();
        let mut stored_headers = parts.headers.clone();
        stored_headers.remove(header::SET_COOKIE);
        stored_headers.remove(header::AGE);
        let filled = Filled {
            status: parts.status,
            headers: stored_headers,
            body: body.clone(),
            initial_age: fresh.initial_age,
            fresh_for: fresh.remaining(),
            stale: policy::stale_windows(&parts.headers, route, &self.config.cache),
            vary: vary_names(
                &parts.headers,
                self.config.identity.credential_cookies == CredentialCookies::All && !route.public,
                route.public,
            ),
            surrogate: surrogate_scopes,
        };
        let Stored { key, stored } = permit.store(filled, ctx.vary_input(&req_headers, route)).await;
        let key_text = self.config.server.debug_headers.then_some(key);
        let h = &mut parts.headers;
        h.insert(header::AGE, HeaderValue::from(fresh.initial_age.as_secs()));
        h.insert(headers::X_CACHE, HeaderValue::from_static("MISS"));
        let status = if stored {
            "cachegate; fwd=miss; stored"
        } else {
            "cachegate; fwd=miss; detail=purged"
        };
        h.insert(headers::CACHE_STATUS, HeaderValue::from_static(status));
        if let Some(k) = key_text {
            add_debug(h, &k, None);
        }
        for c in set_cookies {
            h.append(header::SET_COOKIE, c);
        }
        let body = if head { ProxyBody::Empty } else { ProxyBody::full(body) };
        Ok(Response::from_parts(parts, body))
    }
}

fn bypass_response(
    mut parts: http::response::Parts,
    body: ProxyBody,
    head: bool,
    reason: BypassReason,
    out: &mut Outcome,
) -> Response<ProxyBody> {
    mark_bypass(&mut parts.headers, reason, out);
    // A HEAD was fetched as GET: drop the body, keep the headers.
    let body = if head { ProxyBody::Empty } else { body };
    Response::from_parts(parts, body)
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

enum Limited {
    Complete(Bytes),
    /// Over the limit: what was read so far, and the rest of the stream.
    TooLarge(Bytes, Incoming),
}

/// Reads a body into memory unless it grows past `max` bytes.
async fn read_limited(mut body: Incoming, max: u64) -> Result<Limited, hyper::Error> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        if (buf.len() + data.len()) as u64 > max {
            buf.extend_from_slice(&data);
            return Ok(Limited::TooLarge(buf.freeze(), body));
        }
        if buf.is_empty() {
            buf.reserve(data.len());
        }
        buf.extend_from_slice(&data);
    }
    Ok(Limited::Complete(buf.freeze()))
}
