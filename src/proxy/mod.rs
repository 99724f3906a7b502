//! The request flow: validate, identify, then serve from cache, forward a write and purge, or
//! pass through.
//!
//! # Layout
//! * [`read`]: GET/HEAD on a cached route: hit, miss and fill
//! * [`write`]: unsafe methods and the purges they trigger
//! * [`forward`]: the origin client
//! * [`headers`]: header hygiene
//! * [`body`]: the body type

pub mod body;
pub mod forward;
pub mod headers;
mod read;
mod write;

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::cache::policy::BypassReason;
use crate::cache::{key, Cache};
use crate::config::Config;
use crate::error::ProxyError;
use crate::identity::{Depth, Resolver};
use crate::invalidation::Purger;
use crate::secrets::Secrets;
use body::ProxyBody;
use forward::Origin;

/// Shared state of the public listener.
pub struct Proxy {
    config: Arc<Config>,
    cache: Arc<Cache>,
    purger: Arc<Purger>,
    identity: Resolver,
    origin: Origin,
}

impl Proxy {
    /// Builds the proxy from its parts.
    ///
    /// # Errors
    /// An identity source that cannot be set up (missing JWT secret, unreadable key file).
    pub fn new(config: Arc<Config>, cache: Arc<Cache>, purger: Arc<Purger>, secrets: &Secrets) -> Result<Self, String> {
        let origin = Origin::new(&config.origin);
        let identity = Resolver::new(&config.identity, secrets, origin.clone())?;
        Ok(Proxy {
            config,
            cache,
            purger,
            identity,
            origin,
        })
    }

    /// Handles one request; every error becomes its answer here.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        match self.dispatch(req, peer).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        }
    }

    async fn dispatch(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Result<Response<ProxyBody>, ProxyError> {
        if req.version() == Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
            return Err(ProxyError::BadRequest("HTTP/1.1 request without Host"));
        }
        let uri = req.uri().clone();
        let path = key::normalize_path(uri.path())?;
        let method = req.method().clone();
        let ctx = Ctx {
            path: &path,
            query: uri.query(),
            peer,
        };
        let ip = peer.ip();
        if method == Method::GET || method == Method::HEAD {
            let Some(idx) = self.config.routes.iter().position(|r| r.path.matches(&path)) else {
                self.identity.resolve(ip, req.headers_mut(), Depth::Strip).await;
                return self.pass(req, ctx, Some(BypassReason::NoRoute)).await;
            };
            let route = &self.config.routes[idx];
            // A public route keyed on nobody needs no identity at all.
            let depth = if route.public && route.vary.is_empty() {
                Depth::Strip
            } else {
                Depth::Read
            };
            let id = self.identity.resolve(ip, req.headers_mut(), depth).await;
            return self.read(req, idx, ctx, id).await;
        }
        if is_unsafe(&method) {
            let id = self.identity.resolve(ip, req.headers_mut(), Depth::Write).await;
            return self.write(req, ctx, id).await;
        }
        self.identity.resolve(ip, req.headers_mut(), Depth::Strip).await;
        self.pass(req, ctx, None).await
    }

    /// Forwards a request and streams the answer back, marking it `BYPASS` when `reason` is set.
    async fn pass(
        &self,
        req: Request<Incoming>,
        ctx: Ctx<'_>,
        reason: Option<BypassReason>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (parts, body) = req.into_parts();
        let up = self.upstream_request(parts, ProxyBody::Stream(body), &ctx, false);
        let resp = self.origin.send(up).await?;
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::take_surrogate_tags(&mut parts.headers);
        headers::add_via(&mut parts.headers);
        if let Some(r) = reason {
            mark_bypass(&mut parts.headers, r);
        }
        Ok(Response::from_parts(parts, ProxyBody::Stream(body)))
    }

    /// The request sent to the origin: the normalised path, hop-by-hop headers removed,
    /// forwarding headers added. A cache fill (`fill`) is always an unconditional GET.
    fn upstream_request(
        &self,
        parts: http::request::Parts,
        body: ProxyBody,
        ctx: &Ctx<'_>,
        fill: bool,
    ) -> Request<ProxyBody> {
        let origin = self.origin.config();
        let pq = match ctx.query {
            Some(q) => format!("{}?{q}", ctx.path),
            None => ctx.path.to_string(),
        };
        let uri = Uri::builder()
            .scheme("http")
            .authority(origin.authority.clone())
            .path_and_query(pq)
            .build()
            .unwrap_or_else(|_| Uri::from_static("/"));
        let mut headers = parts.headers;
        let client_host = headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::strip_hop_by_hop(&mut headers);
        headers::add_forwarded(&mut headers, ctx.peer.ip(), client_host.as_ref());
        headers::add_via(&mut headers);
        let host = match (origin.preserve_host, client_host) {
            (true, Some(h)) => h,
            _ => HeaderValue::from_str(origin.authority.as_str()).unwrap_or(HeaderValue::from_static("localhost")),
        };
        headers.insert(header::HOST, host);
        let method = if fill {
            headers::strip_conditionals(&mut headers);
            headers.remove(header::CONTENT_LENGTH);
            Method::GET
        } else {
            parts.method
        };
        let mut req = Request::new(if fill { ProxyBody::Empty } else { body });
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        req
    }
}

/// Per-request facts shared by the flows.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    /// The normalised path: keyed and forwarded.
    path: &'a str,
    /// The raw query, forwarded as sent.
    query: Option<&'a str>,
    peer: SocketAddr,
}

fn is_unsafe(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

fn mark_bypass(headers: &mut http::HeaderMap, reason: BypassReason) {
    headers.insert(headers::X_CACHE, HeaderValue::from_static("BYPASS"));
    let status = format!("cachegate; fwd=bypass; detail={}", reason.as_str());
    if let Ok(v) = HeaderValue::from_str(&status) {
        headers.insert(headers::CACHE_STATUS, v);
    }
}
