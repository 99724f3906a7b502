//! GET/HEAD on a cached route: key, lookup in the tiers, coalescing, stale serving.
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
use crate::cache::coalesce::{Done, Join};
use crate::cache::entry::{CachedResponse, Staleness};
use crate::cache::key::{self, KeyIdentity};
use crate::cache::policy::BypassReason;
use crate::cache::{Shared, Tier};
use crate::config::RouteConfig;
use crate::error::ProxyError;
use crate::identity::{Identity, Part};
use crate::message::body::ProxyBody;
use crate::scope::{self, Stamps};

/// What waiting on another instance's fill gave.
enum LeaseWait {
    /// Its answer, from Redis.
    Served(Response<ProxyBody>),
    /// This instance fetches (and holds the lease with this token).
    Held(u64),
    /// Fetch without a lease (off, Redis down, or the wait ran out).
    Proceed,
}

/// The keys of a request the memory tier could not answer.
struct MissKey<'a> {
    base: &'a key::BaseKey,
    full: &'a str,
    query: &'a str,
    who: KeyIdentity<'a>,
}

impl Proxy {
    pub(super) async fn read(
        self: &Arc<Self>,
        req: Request<Incoming>,
        idx: usize,
        ctx: Ctx<'_>,
        id: Identity,
        out: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let route = &self.config.routes[idx];
        let who = match key_identity(route, &id, &req) {
            Ok(who) => who,
            Err(reason) => return Box::pin(self.pass(req, ctx, Some(reason), out)).await,
        };
        let query = key::normalize_query(ctx.query, &route.query);
        let base = key::base_key(
            &self.config.cache.key_prefix,
            &route.name,
            &ctx.inbound.site,
            ctx.path,
            &query,
            who,
        );
        let full = self.cache.key_for(&base, ctx.vary_input(req.headers(), route)).await;
        let head = req.method() == Method::HEAD;
        let asked = Asked {
            headers: req.headers(),
            head,
        };
        let fallback = match self.cache.memory_lookup(&full).await {
            Some((e, Staleness::Fresh)) => return Ok(self.serve(&asked, &e, Tier::Memory, &full, Serve::Hit, out)),
            Some((e, Staleness::Revalidate)) => {
                self.refresh_in_background(&req, idx, ctx, &id);
                return Ok(self.serve(&asked, &e, Tier::Memory, &full, Serve::Stale, out));
            }
            Some((e, _)) => Some(e),
            None => None,
        };
        // Everything past a fresh memory hit lives in its own boxed future, so the hit path's
        // future (moved into place for every request) stays small.
        let key = MissKey {
            base: &base,
            full: &full,
            query: &query,
            who,
        };
        Box::pin(self.read_beyond_memory(req, idx, ctx, &id, key, fallback, out)).await
    }

    /// A GET/HEAD the memory tier could not answer fresh: coalescing, the shared tier, the fill.
    #[allow(clippy::too_many_arguments)]
    async fn read_beyond_memory(
        self: &Arc<Self>,
        req: Request<Incoming>,
        idx: usize,
        ctx: Ctx<'_>,
        id: &Identity,
        key: MissKey<'_>,
        mut fallback: Option<Arc<CachedResponse>>,
        out: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let route = &self.config.routes[idx];
        let MissKey { base, full, query, who } = key;
        let full = full.to_owned();
        let head = req.method() == Method::HEAD;
        let asked = Asked {
            headers: req.headers(),
            head,
        };
        // Captured before anything is read or fetched: a purge from here on invalidates it all.
        let (scopes, stamps) = self.scopes_and_stamps(route, ctx.path, query, who, id);
        let leader = match self.cache.coalescer.join(&full, stamps.clone()) {
            Join::Leader(l) => Some(l),
            Join::Follower(flight) => {
                self.metrics.coalesced_counter(&route.name).inc();
                let waited = tokio::time::timeout(self.config.origin.timeout, flight.wait()).await;
                if let Ok(Some(done)) = waited {
                    // The origin's Vary may have put the answer under another key than ours.
                    let now = self.cache.clock.now();
                    if done.entry.is_usable(now)
                        && self.cache.key_for(base, ctx.vary_input(req.headers(), route)).await == done.key
                    {
                        return Ok(self.serve(&asked, &done.entry, Tier::Memory, &done.key, Serve::Hit, out));
                    }
                }
                None
            }
        };
        let fill = match self.cache.shared(&full, scopes.clone(), stamps.clone()).await {
            Shared::Hit(entry, Staleness::Fresh) => {
                if let Some(l) = leader {
                    l.finish(Some(Done {
                        key: full.clone(),
                        entry: entry.clone(),
                    }));
                }
                return Ok(self.serve(&asked, &entry, Tier::Redis, &full, Serve::Hit, out));
            }
            Shared::Hit(entry, Staleness::Revalidate) | Shared::SoftStale(entry, _) => {
                drop(leader);
                self.refresh_in_background(&req, idx, ctx, id);
                return Ok(self.serve(&asked, &entry, Tier::Redis, &full, Serve::Stale, out));
            }
            Shared::Hit(entry, _) => {
                // Past revalidation but inside stale-if-error: refetch, keep it for failures.
                fallback = Some(entry);
                self.cache.capture(scopes, stamps).await
            }
            Shared::Miss(fill) => fill,
        };
        let lease = self.fill_lease(&full, idx, &asked, out).await;
        let lease = match lease {
            LeaseWait::Served(resp) => return Ok(resp),
            LeaseWait::Held(token) => Some(token),
            LeaseWait::Proceed => None,
        };
        let (parts, _body) = req.into_parts();
        let miss = Miss {
            idx,
            base,
            tenant: who.tenant,
            leader,
            fallback,
            head,
        };
        let result = self.fill(parts, ctx, miss, fill, out).await;
        if let (Some(token), Some(redis)) = (lease, self.cache.redis()) {
            redis.release_lease(&full, token).await;
        }
        result
    }

    /// The scopes of the entry a request would fill, and their generations now. An identity
    /// from a session lookup adds the session's scope, and the stamps taken before the lookup
    /// asked: a login or logout landing meanwhile keeps the answer from being stored, here and
    /// (through the scope's Redis counter) on every instance.
    fn scopes_and_stamps(
        &self,
        route: &RouteConfig,
        path: &str,
        query: &str,
        who: KeyIdentity<'_>,
        id: &Identity,
    ) -> (Vec<String>, Stamps) {
        let params = route.path.params(path).unwrap_or_default();
        let tags: Vec<String> = route.tags.iter().map(|t| t.render(&params)).collect();
        let url = scope::url_scope(&route.name, path, query);
        let mut scopes = scope::entry_scopes(&route.name, url, &tags, who.tenant);
        if let Some((scope, _)) = &id.session {
            scopes.push(scope.clone());
        }
        let mut stamps = self.cache.generations.stamp(&scopes);
        if let Some((_, asked)) = &id.session {
            stamps.extend(asked.clone());
        }
        (scopes, stamps)
    }

    /// The cross-instance fill lease (`[cache] fill_lease`): one instance fetches a missing key
    /// while the others wait for it to appear in Redis, then fetch themselves if it does not.
    async fn fill_lease(&self, full: &str, idx: usize, asked: &Asked<'_>, out: &mut Outcome) -> LeaseWait {
        let wait = self.config.cache.fill_lease;
        let Some(redis) = self.cache.redis().filter(|r| !wait.is_zero() && r.is_up()) else {
            return LeaseWait::Proceed;
        };
        let token: u64 = rand::random();
        match redis.try_lease(full, token, wait).await {
            Ok(true) => return LeaseWait::Held(token),
            Ok(false) => {}
            Err(_) => return LeaseWait::Proceed,
        }
        let route = &self.config.routes[idx];
        self.metrics.coalesced_counter(&route.name).inc();
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let stamps = self.cache.generations.stamp::<String>(&[]);
            if let Shared::Hit(e, Staleness::Fresh) = self.cache.shared(full, Vec::new(), stamps).await {
                return LeaseWait::Served(self.serve(asked, &e, Tier::Redis, full, Serve::Hit, out));
            }
        }
        LeaseWait::Proceed
    }

    /// Starts one background refresh for the request's key (none if one is already running).
    fn refresh_in_background(self: &Arc<Self>, req: &Request<Incoming>, idx: usize, ctx: Ctx<'_>, id: &Identity) {
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
        tokio::spawn(async move { this.refresh(parts, idx, path, query, peer, id, inbound).await });
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
    ) {
        let route = &self.config.routes[idx];
        let q = key::normalize_query(query.as_deref(), &route.query);
        let Ok(who) = key_identity(route, &id, &parts) else {
            return;
        };
        let base = key::base_key(
            &self.config.cache.key_prefix,
            &route.name,
            &inbound.site,
            &path,
            &q,
            who,
        );
        let ctx = Ctx {
            path: &path,
            query: query.as_deref(),
            peer,
            inbound: &inbound,
        };
        let full = self.cache.key_for(&base, ctx.vary_input(&parts.headers, route)).await;
        let (scopes, stamps) = self.scopes_and_stamps(route, &path, &q, who, &id);
        let Join::Leader(leader) = self.cache.coalescer.join(&full, stamps.clone()) else {
            return;
        };
        // A refresh started by an earlier stale read may have landed meanwhile.
        if matches!(self.cache.memory_lookup(&full).await, Some((_, Staleness::Fresh))) {
            return;
        }
        let fill = self.cache.capture(scopes, stamps).await;
        let mut out = Outcome {
            route: Some(idx),
            ..Outcome::default()
        };
        let miss = Miss {
            idx,
            base: &base,
            tenant: who.tenant,
            leader: Some(leader),
            fallback: None,
            head: false,
        };
        match self.fill(parts, ctx, miss, fill, &mut out).await {
            Ok(resp) => tracing::debug!(route = %route.name, status = resp.status().as_u16(), "background refresh"),
            Err(e) => tracing::debug!(route = %route.name, error = %e, "background refresh failed"),
        }
    }
}

/// The identity parts a route's key takes, or why the request must not use the cache.
///
/// Resolved or bypass: every part the route varies on must be resolved. A tenant is absent
/// only for anonymous callers and trusted gateways that leave it out; a user must be resolved.
/// A route varying on nobody shares one answer with everyone, so only callers who are nobody
/// in particular use it, unless it is `public`.
fn key_identity<'a, R: Ranged>(
    route: &RouteConfig,
    id: &'a Identity,
    req: &R,
) -> Result<KeyIdentity<'a>, BypassReason> {
    if req.has_range() {
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

/// A request (or its parts) that may ask for a byte range.
trait Ranged {
    fn has_range(&self) -> bool;
}

impl<B> Ranged for Request<B> {
    fn has_range(&self) -> bool {
        self.headers().contains_key(header::RANGE)
    }
}

impl Ranged for http::request::Parts {
    fn has_range(&self) -> bool {
        self.headers.contains_key(header::RANGE)
    }
}
