//! GET/HEAD on a cached route: the key, the cache's answer (see `Cache::lookup`), stale
//! serving with one background refresh, and the fill on a miss.
//!
//! A fresh entry is a `HIT`. An entry inside `stale_while_revalidate` (or soft-purged) is served
//! as `STALE` while one background refresh runs. An entry inside `stale_if_error` only is kept
//! as the answer for when the origin fails. Everything else goes to [`fill`](super::fill).

use std::net::SocketAddr;
use std::sync::Arc;

use http::header;
use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::answer::{Asked, Serve};
use super::fill::Miss;
use super::inbound::Inbound;
use super::{Ctx, Outcome, Proxy};
use crate::cache::entry::CachedResponse;
use crate::cache::key::{self, BaseKey, KeyIdentity};
use crate::cache::policy::BypassReason;
use crate::cache::{EntryScopes, Lookup, Waits};
use crate::config::RouteConfig;
use crate::error::ProxyError;
use crate::identity::{Identity, Part};
use crate::message::body::ProxyBody;
use crate::scope;

impl Proxy {
    /// A read on the cached route at `idx`. An `async` block rather than an `async fn`: the
    /// arguments (the request, the identity) are then held once in the future, not twice,
    /// and the future is moved into the caller's on every hit.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub(super) fn read<'a>(
        self: &'a Arc<Self>,
        req: Request<Incoming>,
        idx: usize,
        ctx: Ctx<'a>,
        id: Identity,
        out: &'a mut Outcome,
    ) -> impl std::future::Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + 'a {
        async move {
            let route = &self.config.routes[idx];
            let ReadKey { who, query, base } = match self.read_key(route, &id, req.headers(), &ctx) {
                Ok(k) => k,
                Err(reason) => return Box::pin(self.pass(req, ctx, Some(reason), out)).await,
            };
            let key = self
                .cache
                .request_key(&base, ctx.vary_input(req.headers(), route))
                .await;
            let asked = Asked {
                headers: req.headers(),
                head: req.method() == Method::HEAD,
            };
            let found = self
                .cache
                .lookup(&key, self.waits(route), || {
                    entry_scopes(route, ctx.path, &query, who, &id)
                })
                .await;
            let permit = match found {
                Lookup::Fresh(hit) => {
                    let stored_as = hit.stored_as.as_deref().unwrap_or(key.full());
                    return Ok(self.serve(&asked, &hit.entry, hit.tier, stored_as, Serve::Hit, out));
                }
                Lookup::Stale(hit) => {
                    self.refresh_in_background(&req, idx, ctx, &id, hit.entry.clone());
                    return Ok(self.serve(&asked, &hit.entry, hit.tier, key.full(), Serve::Stale, out));
                }
                Lookup::Miss(permit) => permit,
            };
            let head = asked.head;
            drop(key);
            let (parts, _body) = req.into_parts();
            let miss = Miss {
                idx,
                tenant: who.tenant,
                head,
            };
            Box::pin(self.fill(parts, ctx, miss, permit, out)).await
        }
    }

    /// The key a read on `route` is looked up under (before the origin's `Vary`), or why the
    /// read must not use the cache.
    pub(super) fn read_key<'a>(
        &self,
        route: &RouteConfig,
        id: &'a Identity,
        headers: &http::HeaderMap,
        ctx: &Ctx<'_>,
    ) -> Result<ReadKey<'a>, BypassReason> {
        let who = key_identity(route, id, headers)?;
        let query = key::normalize_query(ctx.query, &route.query);
        let base = key::base_key(
            &self.config.cache.key_prefix,
            &route.name,
            &ctx.inbound.site,
            ctx.path,
            &query,
            who,
        );
        Ok(ReadKey { who, query, base })
    }

    /// How long lookups on `route` wait for fetches already running.
    fn waits<'a>(&self, route: &'a RouteConfig) -> Waits<'a> {
        Waits {
            route: &route.name,
            coalesced: self.config.origin.timeout,
            fill_lease: self.config.cache.fill_lease,
        }
    }

    /// Starts one background refresh for the request's key (none if one is already running).
    fn refresh_in_background(
        self: &Arc<Self>,
        req: &Request<Incoming>,
        idx: usize,
        ctx: Ctx<'_>,
        id: &Identity,
        stale: Arc<CachedResponse>,
    ) {
        let mut parts = Request::new(()).into_parts().0;
        parts.method = Method::GET;
        parts.uri = req.uri().clone();
        parts.headers = req.headers().clone();
        let (this, path, query, peer, id, inbound) = (
            self.clone(),
            ctx.path.to_string(),
            ctx.query.map(str::to_owned),
            ctx.peer,
            id.clone(),
            ctx.inbound.clone(),
        );
        tokio::spawn(async move { this.refresh(parts, idx, path, query, peer, id, inbound, stale).await });
    }

    #[allow(clippy::too_many_arguments)]
    async fn refresh(
        self: Arc<Self>,
        parts: http::request::Parts,
        idx: usize,
        path: String,
        query: Option<String>,
        peer: SocketAddr,
        id: Identity,
        inbound: Inbound,
        stale: Arc<CachedResponse>,
    ) {
        let route = &self.config.routes[idx];
        let ctx = Ctx {
            path: &path,
            query: query.as_deref(),
            peer,
            inbound: &inbound,
        };
        let Ok(ReadKey { who, query: q, base }) = self.read_key(route, &id, &parts.headers, &ctx) else {
            return;
        };
        let key = self
            .cache
            .request_key(&base, ctx.vary_input(&parts.headers, route))
            .await;
        let scopes = entry_scopes(route, &path, &q, who, &id);
        let Some(permit) = self.cache.refresh(&key, scopes, stale).await else {
            return;
        };
        drop(key);
        let mut out = Outcome {
            route: Some(idx),
            ..Outcome::default()
        };
        let miss = Miss {
            idx,
            tenant: who.tenant,
            head: false,
        };
        match self.fill(parts, ctx, miss, permit, &mut out).await {
            Ok(resp) => tracing::debug!(route = %route.name, status = resp.status().as_u16(), "background refresh"),
            Err(e) => tracing::debug!(route = %route.name, error = %e, "background refresh failed"),
        }
    }
}

/// A read's key before the origin's `Vary`: the identity parts and query it is made of.
pub(super) struct ReadKey<'a> {
    /// The identity parts keyed.
    pub(super) who: KeyIdentity<'a>,
    /// The query as keyed.
    pub(super) query: String,
    /// The key.
    pub(super) base: BaseKey,
}

/// The scopes of the entry a request would fill. An identity from a session lookup adds the
/// session's scope, and the stamps taken before the lookup asked: a login or logout landing
/// meanwhile keeps the answer from being stored, here and (through the scope's Redis counter)
/// on every instance.
pub(super) fn entry_scopes(
    route: &RouteConfig,
    path: &str,
    query: &str,
    who: KeyIdentity<'_>,
    id: &Identity,
) -> EntryScopes {
    let params = route.path.params(path).unwrap_or_default();
    let tags: Vec<String> = route.tags.iter().map(|t| t.render(&params)).collect();
    let url = scope::url_scope(&route.name, path, query);
    let mut scopes = scope::entry_scopes(&route.name, url, &tags, who.tenant);
    let resolved_with = id.session.as_ref().map(|(scope, asked)| {
        scopes.push(scope.clone());
        asked.clone()
    });
    EntryScopes { scopes, resolved_with }
}

/// The identity parts a route's key takes, or why the request must not use the cache.
///
/// Resolved or bypass: every part the route varies on must be resolved. A tenant is absent
/// only for anonymous callers and trusted gateways that leave it out; a user must be resolved.
/// A route varying on nobody shares one answer with everyone, so only callers who are nobody
/// in particular use it, unless it is `public`.
fn key_identity<'a>(
    route: &RouteConfig,
    id: &'a Identity,
    headers: &http::HeaderMap,
) -> Result<KeyIdentity<'a>, BypassReason> {
    if several_ranges(headers) {
        return Err(BypassReason::Range);
    }
    if route.public {
        return Ok(KeyIdentity::default());
    }
    if id.unresolved_credentials || (route.vary.is_empty() && id.credentialed) {
        return Err(BypassReason::Credentials);
    }
    let role = match (&id.role, route.vary.role) {
        (_, false) => None,
        (Part::Known(r), true) => Some(&**r),
        _ => return Err(BypassReason::Credentials),
    };
    let tenant = match (&id.tenant, route.vary.tenant) {
        (_, false) | (Part::Absent, true) => None,
        (Part::Known(t), true) => Some(t.as_str()),
        (Part::Unresolved, true) => return Err(BypassReason::Credentials),
    };
    let user = match (&id.user, route.vary.user) {
        (_, false) => None,
        (Part::Known(u), true) => Some(u.as_str()),
        (Part::Absent, true) => return Err(BypassReason::NoUser),
        (Part::Unresolved, true) => return Err(BypassReason::Credentials),
    };
    Ok(KeyIdentity { role, tenant, user })
}

/// Whether a request asks for several byte ranges. One range is answered from the stored whole
/// answer (fetched whole on a miss); several go to the origin, which knows how to make a
/// `multipart/byteranges` answer.
fn several_ranges(headers: &http::HeaderMap) -> bool {
    crate::message::headers::has(headers, &header::RANGE)
        && headers
            .get_all(header::RANGE)
            .iter()
            .enumerate()
            .any(|(i, v)| i > 0 || v.as_bytes().contains(&b','))
}
