//! A miss: one GET to the origin; the answer is stored when policy allows and no purge landed
//! since the fill was captured, then served. An expired entry with a validator makes the GET
//! conditional, and a `304` refreshes that entry instead (RFC 9111 §4.3). When the origin fails
//! and a stale entry inside `stale_if_error` exists, that entry is the answer instead.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use std::sync::Arc;

use super::answer::{add_debug, shape, Asked, Serve};
use super::{mark_bypass, CacheResult, Ctx, Outcome, Proxy};
use crate::cache::entry::CachedResponse;
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
            Some(stale) if failed && stale.servable_stale(self.cache.now()) => {
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
        // An expired entry with a validator is asked for conditionally: a `304` refreshes it.
        let expired = permit.fallback().filter(|e| policy::has_validator(&e.headers));
        let mut up = self.upstream_request(parts, ProxyBody::Empty, &ctx, true);
        // The fill as sent, without validators, when it may be needed again: when a `304` does
        // not fit, or with the client's range when the whole answer turns out not storable.
        let plain = (expired.is_some() || req_headers.contains_key(header::RANGE)).then(|| plain_get(&up));
        if let Some(e) = &expired {
            headers::add_validators(up.headers_mut(), &e.headers);
        }
        let mut resp = self.send(up, out).await?;
        if resp.status() == StatusCode::NOT_MODIFIED {
            if let (Some(entry), Some(plain)) = (expired, &plain) {
                // Purged since it was found: the origin's `304` must not bring it back.
                if headers::selects(&entry.headers, resp.headers()) && entry.stamps.valid() {
                    let asked = Asked {
                        headers: &req_headers,
                        head,
                    };
                    return Ok(self.freshen(entry, resp, &asked, ctx, idx, permit, out).await);
                }
                // The `304` is about another representation than the one held (or the held one
                // was purged meanwhile): ask again, unconditionally.
                resp = self.send(plain_get(plain), out).await?;
            }
        }
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let mut tags = headers::take_surrogate_tags(&mut parts.headers);
        tags.extend(headers::group_list(&parts.headers, &headers::CACHE_GROUPS));
        headers::add_via(&mut parts.headers);
        // A GET logout (or login) on a cached route changes who the session is, too.
        self.session_changes(&self.identity.sessions_of(&req_headers), ctx.path, &parts.headers)
            .await;
        let now = self.cache.wall_now();
        let decided = policy::storage(parts.status, &parts.headers, route, &self.config.cache, now);
        let max = self.config.server.max_body;
        let decided = decided.and_then(|s| {
            if content_length(&parts.headers).is_some_and(|n| n > max) {
                Err(BypassReason::TooLarge)
            } else {
                Ok(s)
            }
        });
        let storage = match decided {
            Ok(s) => s,
            Err(reason) => {
                if let Some(ranged) = self.ranged_again(plain.as_ref(), &req_headers, head, out).await {
                    let (mut rparts, rbody) = ranged?.into_parts();
                    headers::strip_hop_by_hop(&mut rparts.headers);
                    headers::take_surrogate_tags(&mut rparts.headers);
                    headers::add_via(&mut rparts.headers);
                    self.strip_targeted(&mut rparts.headers);
                    return Ok(bypass_response(rparts, ProxyBody::Stream(rbody), head, reason, out));
                }
                self.strip_targeted(&mut parts.headers);
                return Ok(bypass_response(parts, ProxyBody::Stream(body), head, reason, out));
            }
        };
        let timeout = self.config.origin.timeout;
        let body = match tokio::time::timeout(timeout, read_limited(body, max, content_length(&parts.headers))).await {
            Err(_) => return Err(self.body_failed(UpstreamError::Timeout(timeout))),
            Ok(Err(e)) => return Err(self.body_failed(UpstreamError::Request(crate::upstream::root_cause(&e)))),
            Ok(Ok(Limited::TooLarge(prefix, rest))) => {
                let body = ProxyBody::Prefixed {
                    prefix: Some(prefix),
                    rest,
                };
                self.strip_targeted(&mut parts.headers);
                return Ok(bypass_response(parts, body, head, BypassReason::TooLarge, out));
            }
            Ok(Ok(Limited::Complete(b))) => b,
        };
        tags.sort();
        tags.dedup();
        let surrogate_scopes: Vec<String> = tags
            .iter()
            .flat_map(|t| [scope::tag_scope(t), scope::tenant_tag_scope(t, tenant)])
            .collect();
        let set_cookies: Vec<HeaderValue> = parts.headers.get_all(header::SET_COOKIE).iter().cloned().collect();
        // Sent once, after the answer is shaped; never stored.
        parts.headers.remove(header::SET_COOKIE);
        // Stored with the targeted field: a `304` that does not repeat it is judged with it.
        let mut stored_headers = parts.headers.clone();
        stored_headers.remove(header::AGE);
        self.strip_targeted(&mut parts.headers);
        let filled = Filled {
            status: parts.status,
            headers: stored_headers,
            body: body.clone(),
            initial_age: storage.freshness.initial_age,
            fresh_for: storage.freshness.remaining(),
            stale: storage.stale,
            vary: self.vary_of(&parts.headers, route),
            surrogate: surrogate_scopes,
        };
        let Stored { key, stored } = permit.store(filled, ctx.vary_input(&req_headers, route)).await;
        let asked = Asked {
            headers: &req_headers,
            head,
        };
        let (status, mut h, body) = shape(&asked, parts.status, parts.headers, &body);
        h.insert(header::AGE, HeaderValue::from(storage.freshness.initial_age.as_secs()));
        h.insert(headers::X_CACHE, HeaderValue::from_static("MISS"));
        let cache_status = if stored {
            "cachegate; fwd=miss; stored"
        } else {
            "cachegate; fwd=miss; detail=purged"
        };
        h.insert(headers::CACHE_STATUS, HeaderValue::from_static(cache_status));
        if self.config.server.debug_headers {
            add_debug(&mut h, &key, None);
        }
        if status != StatusCode::NOT_MODIFIED {
            for c in set_cookies {
                h.append(header::SET_COOKIE, c);
            }
        }
        parts.status = status;
        parts.headers = h;
        Ok(Response::from_parts(parts, body))
    }

    /// A `304` for an expired entry (RFC 9111 §4.3.4): its headers update the stored ones, the
    /// result is judged afresh and stored again with the stored body, and it is the answer.
    #[allow(clippy::too_many_arguments)]
    async fn freshen(
        &self,
        entry: Arc<CachedResponse>,
        resp: Response<Incoming>,
        asked: &Asked<'_>,
        ctx: Ctx<'_>,
        idx: usize,
        permit: FillPermit,
        out: &mut Outcome,
    ) -> Response<ProxyBody> {
        let route = &self.config.routes[idx];
        let (mut parts, _empty) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        self.session_changes(&self.identity.sessions_of(asked.headers), ctx.path, &parts.headers)
            .await;
        let mut merged = headers::freshen(&entry.headers, &parts.headers);
        let set_cookies: Vec<HeaderValue> = parts.headers.get_all(header::SET_COOKIE).iter().cloned().collect();
        // Judged as the origin's full answer would be: with the 304's age and cookies.
        let mut judged = merged.clone();
        if let Some(age) = parts.headers.get(header::AGE) {
            judged.insert(header::AGE, age.clone());
        }
        for c in &set_cookies {
            judged.append(header::SET_COOKIE, c.clone());
        }
        let now = self.cache.wall_now();
        let decided = policy::storage(entry.status, &judged, route, &self.config.cache, now);
        out.cache = CacheResult::Revalidated;
        let stored_merged = merged.clone();
        self.strip_targeted(&mut merged);
        let filled = |storage: policy::Storage| Filled {
            status: entry.status,
            headers: stored_merged.clone(),
            body: entry.body.clone(),
            initial_age: storage.freshness.initial_age,
            fresh_for: storage.freshness.remaining(),
            stale: storage.stale,
            vary: self.vary_of(&stored_merged, route),
            surrogate: entry.surrogate.clone(),
        };
        let input = ctx.vary_input(asked.headers, route);
        let (age, cache_status, key) = match decided {
            Ok(storage) => {
                let Stored { key, stored } = permit.store(filled(storage), input).await;
                let status = if stored {
                    "cachegate; fwd=stale; fwd-status=304; stored"
                } else {
                    "cachegate; fwd=stale; fwd-status=304; detail=purged"
                };
                (storage.freshness.initial_age.as_secs(), status, Some(key))
            }
            Err(reason) => {
                // The origin's latest word on this answer forbids keeping it: the held copy
                // is replaced by one already past every window, so no stale answer or later
                // revalidation can come from it.
                let gone = policy::Storage {
                    freshness: policy::Freshness {
                        lifetime: std::time::Duration::ZERO,
                        initial_age: std::time::Duration::ZERO,
                    },
                    stale: crate::cache::entry::StaleWindows::default(),
                };
                permit.store(filled(gone), input).await;
                out.reason = Some(reason);
                (0, "cachegate; fwd=stale; fwd-status=304; detail=not-stored", None)
            }
        };
        let (status, mut h, body) = shape(asked, entry.status, merged, &entry.body);
        h.insert(header::AGE, HeaderValue::from(age));
        h.insert(headers::X_CACHE, HeaderValue::from_static("REVALIDATED"));
        h.insert(headers::CACHE_STATUS, HeaderValue::from_static(cache_status));
        if let (true, Some(k)) = (self.config.server.debug_headers, key) {
            add_debug(&mut h, &k, None);
        }
        if status != StatusCode::NOT_MODIFIED {
            for c in set_cookies {
                h.append(header::SET_COOKIE, c);
            }
        }
        parts.status = status;
        parts.headers = h;
        Response::from_parts(parts, body)
    }

    /// A client's single byte range for an answer that will not be stored: asked of the origin
    /// with the range (and `If-Range`), so a large or private resource is not sent whole.
    /// `None` when the client asked for no range (or for a HEAD).
    async fn ranged_again(
        &self,
        plain: Option<&Request<ProxyBody>>,
        asked: &http::HeaderMap,
        head: bool,
        out: &Outcome,
    ) -> Option<Result<Response<Incoming>, ProxyError>> {
        let range = asked.get(header::RANGE).filter(|_| !head)?;
        let plain = plain?;
        let mut again = plain_get(plain);
        again.headers_mut().insert(header::RANGE, range.clone());
        if let Some(v) = asked.get(header::IF_RANGE) {
            again.headers_mut().insert(header::IF_RANGE, v.clone());
        }
        Some(self.send(again, out).await)
    }

    /// The origin's `Vary` names the key takes for `route`.
    fn vary_of(&self, headers: &http::HeaderMap, route: &crate::config::RouteConfig) -> Vec<http::HeaderName> {
        vary_names(
            headers,
            self.config.identity.credential_cookies == CredentialCookies::All && !route.public,
            route.public,
        )
    }
}

/// The same fill request without validators, for when a `304` does not fit the stored entry.
fn plain_get(req: &Request<ProxyBody>) -> Request<ProxyBody> {
    let mut again = Request::new(ProxyBody::Empty);
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    again
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

/// Reads a body into memory unless it grows past `max` bytes. The buffer starts at the size
/// the origin announced, so the usual body is read without regrowing or a final copy; at most
/// `PREALLOCATE` of it, so that many slow fills announcing large bodies do not each hold
/// their whole size before any byte has arrived.
async fn read_limited(mut body: Incoming, max: u64, announced: Option<u64>) -> Result<Limited, hyper::Error> {
    const PREALLOCATE: u64 = 1 << 20;
    let mut buf = BytesMut::with_capacity(announced.map_or(0, |n| n.min(max).min(PREALLOCATE)) as usize);
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
    // Spare capacity, frozen with the body, stays allocated for the entry's life unseen by
    // the tier's bound: a body shorter than announced without an error (a `204`, which has
    // none; a chunked body beside a `Content-Length`) would keep the whole announced size,
    // one grown by doubling (no length announced) up to as much again. One copy on a miss.
    if buf.len() < buf.capacity() {
        return Ok(Limited::Complete(Bytes::copy_from_slice(&buf)));
    }
    Ok(Limited::Complete(buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The answer to a GET over a real connection to an origin that writes `raw` once it has
    /// read the request.
    async fn answer(raw: &'static [u8]) -> Response<Incoming> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut chunk = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return;
                }
                req.extend_from_slice(&chunk[..n]);
            }
            s.write_all(raw).await.unwrap();
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/")
            .header(header::HOST, "origin")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    }

    /// Found in review: a body shorter than the length announced beside it (a `204`, which
    /// has none, or a chunked body, which hyper reads as chunked despite a `Content-Length`)
    /// kept the whole announced allocation alive in the stored entry, unseen by the tier's
    /// byte bound, which counts the body's length.
    #[tokio::test]
    async fn a_read_body_holds_no_more_memory_than_its_bytes() {
        let answers: [&'static [u8]; 3] = [
            b"HTTP/1.1 204 No Content\r\nContent-Length: 1000000\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1000000\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        ];
        for raw in answers {
            let resp = answer(raw).await;
            let announced = content_length(resp.headers());
            let Ok(Limited::Complete(body)) = read_limited(resp.into_body(), 10 << 20, announced).await else {
                panic!("the body was not read whole");
            };
            let len = body.len();
            // The only handle on its buffer, so this hands the allocation itself back.
            let held = BytesMut::from(body).capacity();
            assert_eq!(held, len, "{}", String::from_utf8_lossy(raw));
        }
    }
}
