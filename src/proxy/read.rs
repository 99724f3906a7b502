//! GET/HEAD on a cached route: key, lookup, and on a miss one origin fetch that may fill the cache.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::{headers, mark_bypass, CacheResult, Ctx, Outcome, Proxy};
use crate::cache::coalesce::{Done, Join, Leader};
use crate::cache::entry::CachedResponse;
use crate::cache::key::{self, BaseKey, KeyIdentity};
use crate::cache::policy::{self, BypassReason};
use crate::cache::{vary_names, Fill, Shared, Target, Tier};
use crate::config::RouteConfig;
use crate::error::{ProxyError, UpstreamError};
use crate::identity::Identity;
use crate::invalidation::{self, Stamps};

impl Proxy {
    pub(super) async fn read(
        &self,
        req: Request<Incoming>,
        idx: usize,
        ctx: Ctx<'_>,
        id: Identity,
        out: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let route = &self.config.routes[idx];
        if let Some(reason) = bypass_reason(route, &id, &req) {
            return self.pass(req, ctx, Some(reason), out).await;
        }
        let query = key::normalize_query(ctx.query, &route.query);
        let who = KeyIdentity::select(route.vary, id.role.as_deref(), id.tenant.as_deref(), id.user.as_deref());
        let base = key::base_key(&self.config.cache.key_prefix, &route.name, ctx.path, &query, who);
        let full = self.cache.key_for(idx, &base, req.headers()).await;
        if let Some(entry) = self.cache.memory_hit(&full).await {
            return Ok(self.hit(&req, &entry, Tier::Memory, &full, out));
        }
        let params = route.path.params(ctx.path).unwrap_or_default();
        let tags: Vec<String> = route.tags.iter().map(|t| t.render(&params)).collect();
        let url = invalidation::url_scope(&route.name, ctx.path, &query);
        let scopes = invalidation::entry_scopes(&route.name, url, &tags, who.tenant);
        // Captured before anything is read or fetched: a purge from here on invalidates it all.
        let stamps = self.cache.generations.stamp(&scopes);
        let leader = match self.cache.coalescer.join(&full, stamps.clone()) {
            Join::Leader(l) => Some(l),
            Join::Follower(flight) => {
                self.metrics.coalesced.with_label_values(&[&route.name]).inc();
                let waited = tokio::time::timeout(self.config.origin.timeout, flight.wait()).await;
                if let Ok(Some(done)) = waited {
                    // The origin's Vary may have put the answer under another key than ours.
                    let now = self.cache.clock.now();
                    if done.entry.is_usable(now) && self.cache.key_for(idx, &base, req.headers()).await == done.key {
                        return Ok(self.hit(&req, &done.entry, Tier::Memory, &done.key, out));
                    }
                }
                None
            }
        };
        match self.cache.shared(&full, scopes, stamps).await {
            Shared::Hit(entry) => {
                if let Some(l) = leader {
                    l.finish(Some(Done {
                        key: full.clone(),
                        entry: entry.clone(),
                    }));
                }
                Ok(self.hit(&req, &entry, Tier::Redis, &full, out))
            }
            Shared::Miss(fill) => {
                let miss = Miss {
                    idx,
                    base: &base,
                    tenant: who.tenant,
                    leader,
                };
                self.fill(req, ctx, miss, fill, out).await
            }
        }
    }

    fn hit(
        &self,
        req: &Request<Incoming>,
        entry: &CachedResponse,
        tier: Tier,
        key: &str,
        out: &mut Outcome,
    ) -> Response<ProxyBody> {
        out.cache = CacheResult::Hit;
        out.tier = Some(tier);
        let now = self.cache.clock.now();
        let (status, mut headers, body) = if headers::not_modified(req.headers(), &entry.headers) {
            (
                StatusCode::NOT_MODIFIED,
                headers::not_modified_headers(&entry.headers),
                ProxyBody::Empty,
            )
        } else if req.method() == Method::HEAD {
            (entry.status, entry.headers.clone(), ProxyBody::Empty)
        } else {
            (
                entry.status,
                entry.headers.clone(),
                ProxyBody::Full(Some(entry.body.clone())),
            )
        };
        headers.insert(header::AGE, HeaderValue::from(entry.age_secs(now)));
        headers.insert(headers::X_CACHE, HeaderValue::from_static("HIT"));
        headers.insert(headers::CACHE_STATUS, HeaderValue::from_static("cachegate; hit"));
        if self.config.server.debug_headers {
            add_debug(&mut headers, key, Some(tier));
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }

    /// A miss: one unconditional GET to the origin; the answer is stored when policy allows and no
    /// purge landed since `fill` was captured, then served.
    async fn fill(
        &self,
        req: Request<Incoming>,
        ctx: Ctx<'_>,
        miss: Miss<'_>,
        fill: Fill,
        out: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Miss {
            idx,
            base,
            tenant,
            leader,
        } = miss;
        out.cache = CacheResult::Miss;
        let route = &self.config.routes[idx];
        let head = req.method() == Method::HEAD;
        let (parts, _body) = req.into_parts();
        let req_headers = parts.headers.clone();
        let up = self.upstream_request(parts, ProxyBody::Empty, &ctx, true);
        let (mut parts, body) = self.send(up, out).await?.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let surrogate = headers::take_surrogate_tags(&mut parts.headers);
        headers::add_via(&mut parts.headers);
        let now = self.cache.clock.system_now();
        let fresh = match policy::storable(parts.status, &parts.headers, route, &self.config.cache, now) {
            Ok(f) => f,
            Err(reason) => return Ok(bypass_response(parts, body, head, reason, out)),
        };
        let max = self.config.server.max_body;
        if content_length(&parts.headers).is_some_and(|n| n > max) {
            return Ok(bypass_response(parts, body, head, BypassReason::TooLarge, out));
        }
        let timeout = self.config.origin.timeout;
        let body = match tokio::time::timeout(timeout, read_limited(body, max)).await {
            Err(_) => return Err(UpstreamError::Timeout(timeout).into()),
            Ok(Err(e)) => return Err(UpstreamError::Request(super::forward::root_cause(&e)).into()),
            Ok(Ok(Limited::TooLarge(prefix, rest))) => {
                let body = ProxyBody::Prefixed {
                    prefix: Some(prefix),
                    rest,
                };
                return Ok(bypass_response_body(parts, body, head, BypassReason::TooLarge, out));
            }
            Ok(Ok(Limited::Complete(b))) => b,
        };
        let surrogate_scopes: Vec<String> = surrogate
            .iter()
            .flat_map(|t| [invalidation::tag_scope(t), invalidation::tenant_tag_scope(t, tenant)])
            .collect();
        let set_cookies: Vec<HeaderValue> = parts.headers.get_all(header::SET_COOKIE).iter().cloned().collect();
        let mut stored_headers = parts.headers.clone();
        stored_headers.remove(header::SET_COOKIE);
        stored_headers.remove(header::AGE);
        let entry = CachedResponse {
            status: parts.status,
            headers: stored_headers,
            body: body.clone(),
            stored_at: self.cache.clock.now(),
            initial_age: fresh.initial_age,
            fresh_for: fresh.remaining(),
            stamps: Stamps::default(),
        };
        let target = Target {
            route: idx,
            base,
            vary: vary_names(&parts.headers),
            headers: &req_headers,
        };
        let key_text = self.config.server.debug_headers.then(|| self.cache.full_key(&target));
        let done = self.cache.put(fill, target, surrogate_scopes, entry).await;
        let stored = done.is_some();
        if let Some(l) = leader {
            l.finish(done);
        }
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

/// Where a miss will be stored: route index, base key, and the tenant it was keyed with.
struct Miss<'a> {
    idx: usize,
    base: &'a BaseKey,
    tenant: Option<&'a str>,
    /// Set when this request leads a coalesced fetch.
    leader: Option<Leader>,
}

/// Why a request on a cached route must not use the cache.
fn bypass_reason(route: &RouteConfig, id: &Identity, req: &Request<Incoming>) -> Option<BypassReason> {
    if id.unresolved_credentials && !route.public {
        return Some(BypassReason::Credentials);
    }
    if route.vary.user && id.user.is_none() {
        return Some(BypassReason::NoUser);
    }
    if req.headers().contains_key(header::RANGE) {
        return Some(BypassReason::Range);
    }
    None
}

fn bypass_response(
    parts: http::response::Parts,
    body: Incoming,
    head: bool,
    reason: BypassReason,
    out: &mut Outcome,
) -> Response<ProxyBody> {
    bypass_response_body(parts, ProxyBody::Stream(body), head, reason, out)
}

fn bypass_response_body(
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

fn add_debug(headers: &mut http::HeaderMap, key: &str, tier: Option<Tier>) {
    if let Ok(v) = HeaderValue::from_str(key) {
        headers.insert(headers::X_CACHE_KEY, v);
    }
    if let Some(t) = tier {
        headers.insert(headers::X_CACHE_TIER, HeaderValue::from_static(t.as_str()));
    }
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
