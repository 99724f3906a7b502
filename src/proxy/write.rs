//! Unsafe methods: forward, and on a 2xx/3xx purge what the write made stale before answering.

use http::header::{self, HeaderMap};
use http::{Request, Response};
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::{headers, Ctx, Outcome, Proxy};
use crate::cache::key;
use crate::config::Ttl;
use crate::error::ProxyError;
use crate::identity::Identity;
use crate::invalidation::{self, purge_tag_scopes, Trigger};

impl Proxy {
    pub(super) async fn write(
        &self,
        req: Request<Incoming>,
        ctx: Ctx<'_>,
        id: Identity,
        out: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let method = req.method().clone();
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        let session = self.identity.session_of(req.headers()).map(str::to_owned);
        let (parts, body) = req.into_parts();
        let up = self.upstream_request(parts, ProxyBody::Stream(body), &ctx, false);
        let resp = self.send(up, out).await?;
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::take_surrogate_tags(&mut parts.headers);
        headers::add_via(&mut parts.headers);
        if let (Some(s), Some(l)) = (&session, &self.identity.lookup) {
            // Logins and logouts change who a session is: forget the mapping.
            if l.resets(ctx.path) || sets_cookie(&parts.headers, l.cookie()) {
                l.forget(s).await;
            }
        }
        if parts.status.is_success() || parts.status.is_redirection() {
            let mut scopes = self.rule_scopes(&method, ctx.path, id.tenant.as_deref());
            scopes.extend(self.uri_scopes(ctx, &parts.headers, host.as_deref()));
            let outcome = self.purger.purge(&scopes, false, Trigger::Write).await;
            tracing::debug!(path = ctx.path, %method, scopes = outcome.scopes, shared = outcome.shared, acks = outcome.acks, "write purge");
        }
        Ok(Response::from_parts(parts, ProxyBody::Stream(body)))
    }

    /// Scopes of every `[[invalidate]]` rule matching the write (the union of their tags).
    fn rule_scopes(&self, method: &http::Method, path: &str, tenant: Option<&str>) -> Vec<String> {
        let mut scopes = Vec::new();
        for rule in self.config.invalidations.iter().filter(|r| r.methods.contains(method)) {
            let Some(params) = rule.path.params(path) else { continue };
            for tag in &rule.tags {
                scopes.extend(purge_tag_scopes(&tag.render(&params), rule.scope, tenant));
            }
        }
        scopes
    }

    /// RFC 9111 §4.4 on `ttl = "origin"` routes: the request URI, `Location` and
    /// `Content-Location` (same host only). Fixed-TTL routes are purged by their rules alone, so
    /// a tenant-scoped rule is not widened to every tenant by the URI.
    fn uri_scopes(&self, ctx: Ctx<'_>, resp: &HeaderMap, host: Option<&str>) -> Vec<String> {
        let mut targets: Vec<(String, Option<String>)> = vec![(ctx.path.to_string(), ctx.query.map(str::to_owned))];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(t) = resp
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| same_origin_target(v, host))
            {
                targets.push(t);
            }
        }
        let mut scopes = Vec::new();
        for (path, query) in targets {
            let Ok(path) = key::normalize_path(&path) else { continue };
            let route = self.config.routes.iter().find(|r| r.path.matches(&path));
            if let Some(route) = route.filter(|r| r.ttl == Ttl::Origin) {
                let q = key::normalize_query(query.as_deref(), &route.query);
                scopes.push(invalidation::url_scope(&route.name, &path, &q));
            }
        }
        scopes
    }
}

/// Whether the answer sets (or clears) the cookie `name`.
fn sets_cookie(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split_once('=').is_some_and(|(n, _)| n.trim() == name))
}

/// The path and query of a `Location`-style value, when it points at this host.
fn same_origin_target(value: &str, host: Option<&str>) -> Option<(String, Option<String>)> {
    let uri: http::Uri = value.parse().ok()?;
    if let Some(a) = uri.authority() {
        if Some(a.as_str()) != host {
            return None;
        }
    }
    let path = uri.path();
    if !path.starts_with('/') {
        return None;
    }
    Some((path.to_string(), uri.query().map(str::to_owned)))
}
