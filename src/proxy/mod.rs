//! The request flow: validate, identify, then serve from cache, forward a write and purge, or
//! pass through.
//!
//! # Layout
//! * [`read`]: GET/HEAD on a cached route: key, the cache's answer, stale serving
//! * [`answer`]: answers from a stored entry (hits, stale, `304`, HEAD)
//! * [`fill`]: a miss: the origin fetch, storage, stale-if-error
//! * [`write`]: unsafe methods and the purges they trigger
//! * [`inbound`]: the request normalised once, before identity, keying and forwarding
//! * [`tunnel`]: protocol upgrades (WebSocket), relayed and never cached
//! * [`explain`]: what the flow would do with a request, decided by the same code, without doing it

mod answer;
mod explain;
mod fill;
mod inbound;
mod read;
mod tunnel;
mod write;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use prometheus::{Histogram, IntCounter};

use crate::cache::policy::BypassReason;
use crate::cache::{key, Cache, Tier};
use crate::config::Config;
use crate::error::{ProxyError, UpstreamError};
use crate::identity::{self, Depth, Identity, Resolver, SessionGuard, SetupError};
use crate::invalidation::{Purger, Trigger};
use crate::message::body::ProxyBody;
use crate::message::headers;
use crate::metrics::Metrics;
use crate::secrets::Secrets;
use crate::tenants::TenantLabeller;
use crate::upstream::Origin;

pub(crate) use explain::ExplainRequest;

/// Why a proxy could not be built from a config (at start-up or on reload).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An identity source cannot be set up.
    #[error(transparent)]
    Identity(#[from] SetupError),
    /// The origin's TLS settings cannot be used.
    #[error("[origin] {0}")]
    OriginTls(#[from] crate::tls::TlsError),
}

/// Shared state of the public listener.
pub struct Proxy {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    cache: Arc<Cache>,
    purger: Arc<Purger>,
    identity: Resolver,
    origin: Origin,
    /// Per route, the series a `200` memory hit on a GET counts in, resolved on first use:
    /// looking labelled series up by value costs more than the rest of the metrics work.
    hit_series: Vec<OnceLock<HitSeries>>,
    /// Shutdown: upgraded connections, which the listener no longer tracks, end with it.
    stop: tokio::sync::watch::Receiver<bool>,
    /// Per-tenant labels, with `[metrics] tenant_labels`.
    tenants: Option<Arc<TenantLabeller>>,
}

/// The metric series of one route's memory hits.
struct HitSeries {
    requests: IntCounter,
    duration: Histogram,
    lookups: IntCounter,
}

impl Proxy {
    /// Builds the proxy from its parts.
    ///
    /// # Errors
    /// An identity source that cannot be set up (missing JWT secret, unreadable key file).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        cache: Arc<Cache>,
        purger: Arc<Purger>,
        guard: &SessionGuard,
        secrets: &Secrets,
        metrics: Arc<Metrics>,
        stop: tokio::sync::watch::Receiver<bool>,
        tenants: Option<Arc<TenantLabeller>>,
    ) -> Result<Self, BuildError> {
        let origin = Origin::new(&config.origin, metrics.clone())?;
        let identity = Resolver::new(&config.identity, secrets, origin.clone(), guard, metrics.clone())?;
        let hit_series = config.routes.iter().map(|_| OnceLock::new()).collect();
        Ok(Proxy {
            tenants,
            stop,
            hit_series,
            config,
            metrics,
            cache,
            purger,
            identity,
            origin,
        })
    }

    /// Handles one request; every error becomes its answer here, and every answer is counted.
    /// `secure`: the request came over TLS.
    ///
    /// One async layer from the listener to the flows: every layer of `async fn` holds its own
    /// copy of the request and is moved, whole, into its caller's future before it runs, which
    /// on a memory hit cost more than the lookup. So the Arc is owned here (the listener needs
    /// no wrapping future) and the dispatch is written out in this body. It is an `async`
    /// block rather than an `async fn`, whose arguments would be copied into it once more.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        secure: bool,
    ) -> impl std::future::Future<Output = Response<ProxyBody>> + Send {
        async move {
            let start = std::time::Instant::now();
            let method = req.method().clone();
            let mut out = Outcome::default();
            if self.config.server.access_log {
                out.access = Some(Box::new(Access {
                    client: peer.ip(),
                    ..Access::default()
                }));
            }
            let uri = req.uri().clone();
            // A `let`: the awaited `Result` is a temporary of this statement only. Matched in
            // place instead, it would stay in the future next to `d` for the whole request.
            let d = match self.decide(&mut req, &uri, peer, secure, None).await {
                Ok(d) => d,
                Err(e) => {
                    let resp = e.into_response();
                    self.record(&method, &resp, &out, start, start.elapsed());
                    return resp;
                }
            };
            let resp = {
                out.route = d.route;
                if self.tenants.is_some() {
                    out.tenant = Some(d.id.tenant.known().cloned());
                }
                if let Some(a) = out.access.as_deref_mut() {
                    a.path = d.path.to_string();
                    a.query = logged_query(uri.query(), d.route.map(|i| &self.config.routes[i]));
                }
                let ctx = Ctx {
                    path: &d.path,
                    query: uri.query(),
                    peer,
                    inbound: &d.inbound,
                };
                let answered = match d.flow {
                    Flow::Tunnel(protocol) => Box::pin(self.tunnel(req, ctx, protocol, &mut out)).await,
                    Flow::Read(idx) => {
                        out.cached_route = true;
                        self.read(req, idx, ctx, d.id, &mut out).await
                    }
                    Flow::Unrouted => Box::pin(self.pass(req, ctx, Some(BypassReason::NoRoute), &mut out)).await,
                    Flow::Write => Box::pin(self.write(req, ctx, d.id, &mut out)).await,
                    Flow::Pass => Box::pin(self.pass(req, ctx, None, &mut out)).await,
                };
                answered.unwrap_or_else(ProxyError::into_response)
            };
            self.record(&method, &resp, &out, start, start.elapsed());
            resp
        }
    }

    /// Metrics and the decision log line for one answered request.
    fn record(
        &self,
        method: &Method,
        resp: &Response<ProxyBody>,
        out: &Outcome,
        start: std::time::Instant,
        took: std::time::Duration,
    ) {
        // The request's end, from the clock read `took` came from: no second read.
        let ended = start + took;
        let route = out.route.map_or(NO_ROUTE, |i| self.config.routes[i].name.as_str());
        let m = &self.metrics;
        let status = resp.status();
        if let (Some(labels), Some(tenant), true) = (&self.tenants, &out.tenant, out.cached_route) {
            let l = labels.label(tenant.as_deref());
            if let Some(gone) = l.displaced {
                // Its series go: at most `top` tenants have series at any time.
                for (result, _) in CacheResult::LOOKUPS {
                    let _ = m.tenant_lookups.remove_label_values(&[&gone, result.as_str()]);
                }
            }
            m.tenant_lookup_counter(&l.label, out.cache.as_str()).inc();
        }
        if let (Some(idx), CacheResult::Hit, Some(Tier::Memory), &Method::GET, StatusCode::OK, false) = (
            out.route,
            out.cache,
            out.tier,
            method,
            status,
            self.config.server.access_log,
        ) {
            let series = self.hit_series[idx].get_or_init(|| HitSeries {
                requests: m.request_counter(route, method_label(&Method::GET), StatusCode::OK.as_str()),
                duration: m.duration_histogram(route, CacheResult::Hit.as_str()),
                lookups: m.lookup_counter(route, CacheResult::Hit.as_str(), Tier::Memory.as_str()),
            });
            series.requests.inc();
            series.duration.observe(took.as_secs_f64());
            series.lookups.inc();
            m.recent.record_ended(ended, crate::recent::Kind::Hit, took);
            tracing::debug!(
                route,
                result = CacheResult::Hit.as_str(),
                tier = Tier::Memory.as_str(),
                duration_us = took.as_micros() as u64,
                "cache decision"
            );
            return;
        }
        m.request_counter(route, method_label(method), status.as_str()).inc();
        let cache = out.cache.as_str();
        m.duration_histogram(route, cache).observe(took.as_secs_f64());
        if out.cached_route {
            let tier = out.tier.map_or(NO_TIER, |t| t.as_str());
            m.lookup_counter(route, cache, tier).inc();
        }
        if let Some(r) = out.reason {
            m.bypass_counter(route, r.as_str()).inc();
        }
        m.recent.record_ended(ended, out.recent_kind(), took);
        tracing::debug!(
            route,
            result = cache,
            tier = out.tier.map_or(NO_TIER, |t| t.as_str()),
            reason = out.reason.map_or("", |r| r.as_str()),
            duration_us = took.as_micros() as u64,
            "cache decision"
        );
        if let Some(a) = out.access.as_deref() {
            tracing::info!(
                target: "cachegate::access",
                client = %a.client,
                method = %method,
                path = if a.path.is_empty() { "-" } else { a.path.as_str() },
                query = a.query.as_str(),
                status = status.as_u16(),
                route,
                cache,
                duration_us = took.as_micros() as u64,
                "request"
            );
        }
    }

    /// The tenants labelled now, when `[metrics] tenant_labels` is set.
    pub(crate) fn tenant_labels(&self) -> Option<Vec<String>> {
        self.tenants.as_ref().map(|t| t.labelled())
    }

    /// Sends to the origin, timing it.
    async fn send(&self, req: Request<ProxyBody>, out: &Outcome) -> Result<Response<Incoming>, ProxyError> {
        Ok(self.send_for(req, out.route).await?)
    }

    /// Sends to the origin for the route at `route` (the upstream client times and counts it).
    async fn send_for(
        &self,
        req: Request<ProxyBody>,
        route: Option<usize>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let route = route.map_or(NO_ROUTE, |i| self.config.routes[i].name.as_str());
        self.origin.send(req, route).await
    }

    /// Everything decided about a request before the cache or the origin is asked: the request
    /// normalised in place, its route, the flow it takes and the identity it is served as. The
    /// request flow and `explain` both call this, so an explanation cannot drift from what the
    /// proxy does. `trace`, given by `explain`, records where the identity came from.
    ///
    /// # Errors
    /// A request that cannot be served (a bad `Host`, a path that does not normalise).
    async fn decide<'u, B>(
        &self,
        req: &mut Request<B>,
        uri: &'u Uri,
        peer: SocketAddr,
        secure: bool,
        trace: Option<&mut identity::Trace>,
    ) -> Result<Decision<'u>, ProxyError> {
        let upgrade = tunnel::requested(req);
        let inbound = self.normalize(req, peer.ip(), secure)?;
        let path = key::normalize_path(uri.path())?;
        let method = req.method();
        let route = self.config.routes.iter().position(|r| r.path.matches(&path));
        let read = method == Method::GET || method == Method::HEAD;
        let depth = match route {
            // A tunnel is never cached: identity headers are only normalised.
            _ if upgrade.is_some() => Depth::Strip,
            // A public route's answer depends on nobody: no identity needed.
            Some(idx) if read && self.config.routes[idx].public => Depth::Strip,
            Some(_) if read => Depth::Read,
            _ if is_unsafe(method) => Depth::Write,
            _ => Depth::Strip,
        };
        // One call site: each `.await` of it would otherwise add its state to the caller's future.
        let id = self
            .identity
            .resolve(inbound.trusted, req.headers(), depth, trace)
            .await;
        let flow = match (upgrade, route) {
            (Some(protocol), _) => Flow::Tunnel(protocol),
            (None, Some(idx)) if read => Flow::Read(idx),
            (None, None) if read => Flow::Unrouted,
            _ if depth == Depth::Write => Flow::Write,
            _ => Flow::Pass,
        };
        Ok(Decision {
            inbound,
            path,
            route,
            flow,
            id,
        })
    }

    /// Forwards a request and streams the answer back, marking it `BYPASS` when `reason` is set.
    async fn pass(
        &self,
        req: Request<Incoming>,
        ctx: Ctx<'_>,
        reason: Option<BypassReason>,
        out: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let sessions = self.identity.sessions_of(req.headers());
        if let Some(r) = reason {
            // Counted as a bypass even when the origin then fails.
            out.cache = CacheResult::Bypass;
            out.reason = Some(r);
        }
        let (parts, body) = req.into_parts();
        let up = self.upstream_request(parts, ProxyBody::Stream(body), &ctx, false);
        let resp = self.send(up, out).await?;
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::take_surrogate_tags(&mut parts.headers);
        self.strip_targeted(&mut parts.headers);
        headers::add_via(&mut parts.headers);
        self.session_changes(&sessions, ctx.path, &parts.headers).await;
        if let Some(r) = reason {
            mark_bypass(&mut parts.headers, r, out);
        }
        Ok(Response::from_parts(parts, ProxyBody::Stream(body)))
    }

    /// Removes the response field aimed at cachegate alone (`[cache] targeted_cache_control`,
    /// RFC 9213): it is for this cache's decisions, not for anyone downstream.
    fn strip_targeted(&self, headers: &mut http::HeaderMap) {
        if let Some(name) = &self.config.cache.targeted_cache_control {
            headers.remove(name);
        }
    }

    /// Logins and logouts change who a session is, whatever the method (a GET logout too):
    /// when the request went to a reset path or the answer sets the cookie, every instance
    /// forgets the mapping (a purge of the session's scope, acknowledged by all) before the
    /// answer is sent.
    async fn session_changes(&self, sessions: &[String], path: &str, answer: &http::HeaderMap) {
        let Some(l) = &self.identity.lookup else { return };
        if sessions.is_empty() || !(l.resets(path) || sets_cookie(answer, l.cookie())) {
            return;
        }
        let scopes: Vec<String> = sessions.iter().map(|s| l.scope_of(s)).collect();
        self.purger.purge(&scopes, false, Trigger::Write).await;
    }

    /// The request sent to the origin: the normalised path and headers, forwarding headers
    /// set. A cache fill (`fill`) is always an unconditional GET.
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
            .scheme(origin.url.scheme_str().unwrap_or("http"))
            .authority(origin.authority.clone())
            .path_and_query(pq)
            .build()
            .unwrap_or_else(|_| Uri::from_static("/"));
        let mut headers = parts.headers;
        // The client's host reaches the origin only with `preserve_host`, and is keyed then.
        let client_host = ctx.inbound.client_host.as_ref().filter(|_| origin.preserve_host);
        headers::add_forwarded(&mut headers, ctx.peer.ip(), &ctx.inbound.proto, client_host);
        headers::add_via(&mut headers);
        let host = match client_host {
            Some(h) => h.clone(),
            None => HeaderValue::from_str(origin.authority.as_str()).unwrap_or(HeaderValue::from_static("localhost")),
        };
        headers.insert(header::HOST, host);
        let method = if fill {
            headers::strip_conditionals(&mut headers);
            headers::strip_overrides(&mut headers);
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

/// Whether the answer sets (or clears) the cookie `name`.
fn sets_cookie(headers: &http::HeaderMap, name: &str) -> bool {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split_once('=').is_some_and(|(n, _)| n.trim() == name))
}

/// What [`Proxy::decide`] made of a request (whose URI is `'u`).
pub(crate) struct Decision<'u> {
    /// What normalisation learnt.
    inbound: inbound::Inbound,
    /// The normalised path.
    path: std::borrow::Cow<'u, str>,
    /// The first route matching the path.
    route: Option<usize>,
    /// The way the request takes.
    flow: Flow,
    /// Who is asking, resolved as deep as the flow needs.
    id: Identity,
}

/// The way a request takes through the proxy.
#[derive(Debug, Clone)]
enum Flow {
    /// A protocol upgrade, relayed and never cached.
    Tunnel(HeaderValue),
    /// A GET or HEAD on the cached route at this index.
    Read(usize),
    /// A GET or HEAD no route matches: bypassed.
    Unrouted,
    /// An unsafe method: forwarded, then purges.
    Write,
    /// Anything else (OPTIONS, TRACE on any path; other methods without a route): forwarded.
    Pass,
}

/// Per-request facts shared by the flows.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    /// The normalised path: keyed and forwarded.
    path: &'a str,
    /// The raw query, forwarded as sent.
    query: Option<&'a str>,
    peer: SocketAddr,
    /// What normalisation learnt.
    inbound: &'a inbound::Inbound,
}

impl<'a> Ctx<'a> {
    /// The request's values for the origin's `Vary` on `route`.
    fn vary_input(&self, headers: &'a http::HeaderMap, route: &crate::config::RouteConfig) -> key::VaryInput<'a> {
        key::VaryInput {
            headers,
            cookies: &self.inbound.keyed_cookies,
            credentials_unresolved: route.public,
        }
    }
}

fn is_unsafe(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// The access log's view of a request, gathered only when `access_log` is on.
#[derive(Debug)]
struct Access {
    /// The connection's peer.
    client: std::net::IpAddr,
    /// The normalised path; empty when the request was refused before it was normalised.
    path: String,
    /// See [`logged_query`].
    query: String,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            client: std::net::IpAddr::from([0, 0, 0, 0]),
            path: String::new(),
            query: String::new(),
        }
    }
}

/// The query as the access log shows it. On a route, as keyed: the route's `query` rule says
/// which parameters identify the answer, and those (normalised) are logged; parameters it
/// leaves out (tracking ids, one-time tokens) are not. Without a route nothing is keyed, so only
/// the parameter names are logged: a token in a query never reaches the log.
fn logged_query(query: Option<&str>, route: Option<&crate::config::RouteConfig>) -> String {
    match (query, route) {
        (None, _) => String::new(),
        (Some(q), Some(r)) => key::normalize_query(Some(q), &r.query),
        (Some(q), None) => q
            .split('&')
            .filter_map(|p| p.split('=').next().filter(|n| !n.is_empty()))
            .map(|n| key::encode_component(n).into_owned())
            .collect::<Vec<_>>()
            .join("&"),
    }
}

/// What happened to a request, for metrics and the decision log.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Set when `access_log` is on.
    access: Option<Box<Access>>,
    /// The request's tenant, when tenants are labelled.
    tenant: Option<Option<String>>,
    /// The first route matching the path.
    pub(crate) route: Option<usize>,
    /// A GET/HEAD on a cached route (counted in `cachegate_cache_lookups_total`).
    cached_route: bool,
    cache: CacheResult,
    tier: Option<Tier>,
    reason: Option<BypassReason>,
}

impl Outcome {
    /// What the status page's per-second window counts this request as.
    fn recent_kind(&self) -> crate::recent::Kind {
        use crate::recent::Kind;
        match (self.cached_route, self.cache) {
            (false, _) | (true, CacheResult::Pass) => Kind::Other,
            (true, CacheResult::Hit) => Kind::Hit,
            (true, CacheResult::Stale) => Kind::Stale,
            // The origin answered (with a 304): a miss for latency and ratio.
            (true, CacheResult::Miss | CacheResult::Revalidated) => Kind::Miss,
            (true, CacheResult::Bypass) => Kind::Bypass,
        }
    }
}

use crate::metrics::NO_ROUTE;

/// The `tier` label of lookups no tier answered (misses and bypasses).
pub(crate) const NO_TIER: &str = "none";

/// The `cache` / `result` label.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheResult {
    /// Not a cache request (writes, other methods).
    #[default]
    Pass,
    Hit,
    Stale,
    Miss,
    /// An expired entry the origin confirmed with a `304`, served refreshed.
    Revalidated,
    Bypass,
}

impl CacheResult {
    /// Every value, for the `cache` label of `cachegate_request_duration_seconds`.
    const ALL: [CacheResult; 6] = [
        CacheResult::Pass,
        CacheResult::Hit,
        CacheResult::Stale,
        CacheResult::Miss,
        CacheResult::Revalidated,
        CacheResult::Bypass,
    ];

    /// The `(result, tier)` pairs [`Proxy::record`] counts lookups under: entries are served
    /// (fresh or stale) by a tier; misses, revalidations and bypasses by none.
    const LOOKUPS: [(CacheResult, Option<Tier>); 7] = [
        (CacheResult::Hit, Some(Tier::Memory)),
        (CacheResult::Hit, Some(Tier::Redis)),
        (CacheResult::Stale, Some(Tier::Memory)),
        (CacheResult::Stale, Some(Tier::Redis)),
        (CacheResult::Miss, None),
        (CacheResult::Revalidated, None),
        (CacheResult::Bypass, None),
    ];

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CacheResult::Pass => "pass",
            CacheResult::Hit => "hit",
            CacheResult::Stale => "stale",
            CacheResult::Miss => "miss",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Bypass => "bypass",
        }
    }
}

/// Creates at 0 the series [`Proxy::record`] and [`Proxy::send`] write for `routes` and for
/// requests no route matches, so a route's families are scraped before its first request.
/// Creates at 0 every series the proxy counts whose labels are known before anything happens:
/// those of each route in `routes` (call again after a reload for new routes) and the origin
/// error kinds. Otherwise a labelled family is absent until its first event: dashboards show
/// "No data" instead of 0, and `rate()` and absence alerts misread it.
pub(crate) fn prime_metrics<'a>(m: &Metrics, routes: impl IntoIterator<Item = &'a str>) {
    for kind in UpstreamError::KINDS {
        m.origin_error_counter(kind);
    }
    // Statuses are open-ended: only the commonest answer is created, which is enough for the
    // family and each route to show.
    let get = method_label(&Method::GET);
    let ok = StatusCode::OK.as_str();
    for route in routes {
        m.request_counter(route, get, ok);
        for cache in CacheResult::ALL {
            m.duration_histogram(route, cache.as_str());
        }
        for (result, tier) in CacheResult::LOOKUPS {
            m.lookup_counter(route, result.as_str(), tier.map_or(NO_TIER, |t| t.as_str()));
        }
        // `no-route` is only ever counted under `route="none"`.
        for reason in BypassReason::ALL.into_iter().filter(|r| *r != BypassReason::NoRoute) {
            m.bypass_counter(route, reason.as_str());
        }
        m.origin_latency(route);
        m.coalesced_counter(route);
    }
    // Unmatched requests are never looked up or coalesced: reads are bypassed, the rest passed.
    m.request_counter(NO_ROUTE, get, ok);
    for cache in [CacheResult::Bypass, CacheResult::Pass] {
        m.duration_histogram(NO_ROUTE, cache.as_str());
    }
    m.bypass_counter(NO_ROUTE, BypassReason::NoRoute.as_str());
    m.origin_latency(NO_ROUTE);
}

/// Method label: the standard ones, everything else as `other` (labels stay bounded).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn mark_bypass(headers: &mut http::HeaderMap, reason: BypassReason, out: &mut Outcome) {
    out.cache = CacheResult::Bypass;
    out.reason = Some(reason);
    headers.insert(headers::X_CACHE, HeaderValue::from_static("BYPASS"));
    let status = format!("cachegate; fwd=bypass; detail={}", reason.as_str());
    if let Ok(v) = HeaderValue::from_str(&status) {
        headers.insert(headers::CACHE_STATUS, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_result_lists_every_value_once() {
        for c in CacheResult::ALL {
            // Exhaustive on purpose: a new value stops this compiling until it is listed in `ALL`.
            match c {
                CacheResult::Pass
                | CacheResult::Hit
                | CacheResult::Stale
                | CacheResult::Miss
                | CacheResult::Revalidated
                | CacheResult::Bypass => {}
            }
        }
        let labels: std::collections::HashSet<_> = CacheResult::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(labels.len(), CacheResult::ALL.len());
    }
}
