//! Unsafe methods: forward, and on a 2xx/3xx purge what the write made stale before answering.
//!
//! The forward and its purge run in a task of their own: a client that disconnects after
//! sending its write (or a connection that dies) must not leave the pre-write page cached when
//! the origin committed it. A write whose outcome is unknown (the origin timed out or the
//! connection broke after the request was sent) purges too: it may have been committed.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;

use super::{Ctx, Outcome, Proxy};
use crate::cache::key;
use crate::config::Ttl;
use crate::error::{ProxyError, UpstreamError};
use crate::identity::Identity;
use crate::invalidation::{purge_tag_scopes, Trigger};
use crate::message::body::ProxyBody;
use crate::message::headers;
use crate::scope;

/// The write's target, owned so the purge can outlive the client's request.
struct Written {
    path: String,
    query: Option<String>,
    host: Option<HeaderValue>,
    sessions: Vec<String>,
    method: http::Method,
    route: Option<usize>,
}

impl Proxy {
    pub(super) async fn write(
        self: &Arc<Self>,
        req: Request<Incoming>,
        ctx: Ctx<'_>,
        id: Identity,
        out: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let written = Written {
            path: ctx.path.to_string(),
            query: ctx.query.map(str::to_owned),
            host: ctx.inbound.client_host.clone(),
            sessions: self.identity.sessions_of(req.headers()),
            method: req.method().clone(),
            route: out.route,
        };
        // A writer whose tenant is not known purges every tenant's entries.
        let rule_scopes = self.rule_scopes(&written.method, ctx.path, id.tenant.known().map(String::as_str));
        let (parts, body) = req.into_parts();
        let up = self.upstream_request(parts, ProxyBody::Stream(body), &ctx, false);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.forward_write(up, written, rule_scopes).await;
            // The client may be gone; the purge has happened either way.
            let _ = tx.send(result);
        });
        let resp = rx
            .await
            .map_err(|_| ProxyError::Upstream(UpstreamError::Request("write task ended".into())))??;
        Ok(resp)
    }

    /// Sends the write and purges for it; runs detached from the client's connection.
    async fn forward_write(
        &self,
        up: Request<ProxyBody>,
        w: Written,
        mut scopes: Vec<String>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let result = self.send_for(up, w.route).await;
        match &result {
            Ok(resp) => {
                self.session_changes(&w.sessions, &w.path, resp.headers()).await;
                let status = resp.status();
                if !(status.is_success() || status.is_redirection()) {
                    scopes.clear();
                } else {
                    scopes.extend(self.uri_scopes(&w.path, w.query.as_deref(), resp.headers(), w.host.as_ref()));
                    // RFC 9875: the groups the write changed, for every tenant (a group names
                    // no tenant), through the same acknowledged purge as the rest.
                    let groups = headers::group_list(resp.headers(), &headers::CACHE_GROUP_INVALIDATION);
                    scopes.extend(groups.iter().map(|g| scope::tag_scope(g)));
                }
            }
            // Nothing reached the origin.
            Err(UpstreamError::Connect(_)) => scopes.clear(),
            Err(_) => {
                tracing::debug!(path = %w.path, "write outcome unknown: purging as if it succeeded");
                scopes.extend(self.uri_scopes(&w.path, w.query.as_deref(), &HeaderMap::new(), None));
            }
        }
        if !scopes.is_empty() {
            let outcome = self.purger.purge(&scopes, false, Trigger::Write).await;
            tracing::debug!(path = %w.path, method = %w.method, scopes = outcome.scopes, shared = outcome.shared, acks = outcome.acks, "write purge");
        }
        let (mut parts, body) = result?.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::take_surrogate_tags(&mut parts.headers);
        self.strip_targeted(&mut parts.headers);
        headers::add_via(&mut parts.headers);
        Ok(Response::from_parts(parts, ProxyBody::Stream(body)))
    }

    /// Scopes of every `[[invalidate]]` rule matching the write (the union of their tags).
    pub(super) fn rule_scopes(&self, method: &http::Method, path: &str, tenant: Option<&str>) -> Vec<String> {
        let mut scopes = Vec::new();
        // Rails and Express route `POST /courses` like `/courses/`: a rule for the one purges
        // for the other.
        let slashed = (!path.ends_with('/')).then(|| format!("{path}/"));
        for rule in self.config.invalidations.iter().filter(|r| r.methods.contains(method)) {
            let params = rule
                .path
                .params(path)
                .or_else(|| slashed.as_deref().and_then(|p| rule.path.params(p)));
            let Some(params) = params else { continue };
            for tag in &rule.tags {
                scopes.extend(purge_tag_scopes(&tag.render(&params), rule.scope, tenant));
            }
        }
        scopes
    }

    /// RFC 9111 §4.4 on `ttl = "origin"` routes: the request URI, `Location` and
    /// `Content-Location` (same host only). Fixed-TTL routes are purged by their rules alone, so
    /// a tenant-scoped rule is not widened to every tenant by the URI.
    fn uri_scopes(&self, path: &str, query: Option<&str>, resp: &HeaderMap, host: Option<&HeaderValue>) -> Vec<String> {
        let host = host.and_then(|h| h.to_str().ok());
        let mut targets: Vec<(String, Option<String>)> = vec![(path.to_string(), query.map(str::to_owned))];
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
                scopes.push(scope::url_scope(&route.name, &path, &q));
            }
        }
        scopes
    }
}

/// The path and query of a `Location`-style value, when it points at this host.
fn same_origin_target(value: &str, host: Option<&str>) -> Option<(String, Option<String>)> {
    let uri: http::Uri = value.parse().ok()?;
    if let Some(a) = uri.authority() {
        if !host.is_some_and(|h| a.as_str().eq_ignore_ascii_case(h)) {
            return None;
        }
    }
    let path = uri.path();
    if !path.starts_with('/') {
        return None;
    }
    Some((path.to_string(), uri.query().map(str::to_owned)))
}
