//! `explain`: what the proxy would do with a request, and why, without doing it.
//!
//! The request goes through the same [`Proxy::decide`] and [`Proxy::read_key`] the request flow
//! uses (normalisation, route match, identity, key, bypass decisions); only the last step
//! differs: the tiers are looked at ([`Cache::peek`](crate::cache::Cache::peek)) instead of
//! asked, and nothing is sent to the origin. In particular a session the proxy does not know yet
//! is not looked up (the lookup is a request to the application, which may refresh or log the
//! session); the answer says the proxy would ask.
//!
//! Nothing secret is echoed: cookies and credential headers by name only, a session by a prefix
//! of its SHA-256, and non-credential cookie values keyed by the origin's `Vary: Cookie` are
//! replaced in the key shown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use serde::Deserialize;
use serde_json::{json, Value};

use super::read::{entry_scopes, ReadKey};
use super::{Ctx, Decision, Flow, Proxy};
use crate::cache::entry::Staleness;
use crate::cache::policy::BypassReason;
use crate::cache::{Peek, Seen, SharedPeek, Tier};
use crate::identity::{Identity, Part, Trace};

/// The body of `POST /admin/explain`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExplainRequest {
    /// The method; GET when absent.
    #[serde(default)]
    method: Option<String>,
    /// Path and query, or an absolute URL (its scheme and host are the request's).
    url: String,
    /// Request headers, as `[name, value]` pairs.
    #[serde(default)]
    headers: Vec<(String, String)>,
    /// Cookies, each `name=value`.
    #[serde(default)]
    cookies: Vec<String>,
    /// The client address. Default: a peer inside `trust_headers_from` when it lists any (the
    /// request arrives through the trusted gateway), else 127.0.0.1.
    #[serde(default)]
    peer: Option<IpAddr>,
}

impl Proxy {
    /// Explains `asked` as JSON.
    ///
    /// # Errors
    /// What is wrong with the request, in words (the admin listener answers 400).
    pub(crate) async fn explain(&self, asked: ExplainRequest) -> Result<Value, String> {
        let (mut req, secure) = self.explain_request(&asked)?;
        let peer = asked.peer.unwrap_or_else(|| {
            let trusted = self.config.identity.trust_headers_from.first();
            trusted.map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |n| n.network())
        });
        let given: Vec<HeaderName> = req.headers().keys().cloned().collect();
        let mut trace = Trace::default();
        let uri = req.uri().clone();
        let d = self
            .decide(&mut req, &uri, SocketAddr::new(peer, 0), secure, Some(&mut trace))
            .await
            .map_err(|e| format!("the proxy would answer {}: {e}", e.status()))?;
        let dropped: Vec<&str> = given
            .iter()
            .filter(|n| !req.headers().contains_key(*n))
            .map(HeaderName::as_str)
            .collect();
        let kept: Vec<&str> = req
            .headers()
            .keys()
            .filter(|n| **n != header::COOKIE)
            .map(HeaderName::as_str)
            .collect();
        let cookies: Vec<&str> = crate::identity::cookie_pairs(req.headers()).map(|(n, _)| n).collect();
        let mut out = json!({
            "request": {
                "method": req.method().as_str(),
                "path": d.path,
                "query": req.uri().query(),
                "peer": peer.to_string(),
                "trusted_peer": d.inbound.trusted,
                "headers": kept,
                "dropped_headers": dropped,
                "cookies": cookies,
            },
            "route": d.route.map(|i| self.route_json(i)),
            "identity": identity_json(&d.id, &trace),
        });
        let verdict = match &d.flow {
            Flow::Read(idx) => self.explain_read(*idx, &d, &req, &mut out).await,
            Flow::Unrouted => bypass(BypassReason::NoRoute),
            Flow::Write => {
                let tenant = d.id.tenant.known().map(String::as_str);
                let scopes = self.rule_scopes(req.method(), &d.path, tenant);
                out["purges_on_success"] = json!(scopes);
                pass(format!(
                    "{} is a write: forwarded to the origin, never served from cache; a 2xx or 3xx answer purges the scopes listed (and, on ttl = \"origin\" routes, the written URL)",
                    req.method()
                ))
            }
            Flow::Pass => pass(format!("{} is forwarded to the origin and never cached", req.method())),
            Flow::Tunnel(p) => pass(format!(
                "a protocol upgrade ({}): relayed, never cached",
                p.to_str().unwrap_or("?")
            )),
        };
        for (k, v) in verdict {
            out[k] = v;
        }
        Ok(out)
    }

    /// The request `asked` describes, and whether it is an `https` one.
    fn explain_request(&self, asked: &ExplainRequest) -> Result<(Request<()>, bool), String> {
        let method = asked.method.as_deref().unwrap_or("GET");
        let method =
            Method::from_bytes(method.as_bytes()).map_err(|_| format!("method {method:?}: not an HTTP method"))?;
        let uri: Uri = asked
            .url
            .parse()
            .map_err(|e| format!("url {:?}: {e} (expected /path?query or http://host/path)", asked.url))?;
        let secure = uri.scheme_str() == Some("https");
        if !asked.url.starts_with('/') && !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(format!("url {:?}: expected /path?query or http://host/path", asked.url));
        }
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.version_mut() = Version::HTTP_11;
        let h = req.headers_mut();
        for (name, value) in &asked.headers {
            let n = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("header {name:?}: not a header name"))?;
            let v = HeaderValue::from_str(value.trim())
                .map_err(|_| format!("header {name}: value not allowed in a header"))?;
            h.append(n, v);
        }
        if !asked.cookies.is_empty() {
            if let Some(bad) = asked.cookies.iter().find(|c| !c.contains('=')) {
                let name = bad.split('=').next().unwrap_or("");
                return Err(format!("cookie {name:?}: expected name=value"));
            }
            let v = HeaderValue::from_str(&asked.cookies.join("; "))
                .map_err(|_| "cookies: value not allowed in a header".to_string())?;
            h.append(header::COOKIE, v);
        }
        if uri.authority().is_none() && !h.contains_key(header::HOST) {
            // HTTP/1.1 requires a host; the origin's stands in for one that was not given.
            let host = HeaderValue::from_str(self.origin.config().authority.as_str()).map_err(|e| e.to_string())?;
            h.insert(header::HOST, host);
        }
        *req.uri_mut() = uri;
        Ok((req, secure))
    }

    fn route_json(&self, idx: usize) -> Value {
        let r = &self.config.routes[idx];
        let vary: Vec<&str> = [("role", r.vary.role), ("tenant", r.vary.tenant), ("user", r.vary.user)]
            .into_iter()
            .filter_map(|(n, on)| on.then_some(n))
            .collect();
        json!({ "name": r.name, "index": idx, "path": r.path.as_str(), "vary": vary, "public": r.public })
    }

    /// A GET or HEAD on a cached route: its key, what the tiers hold, and what would be served.
    async fn explain_read(
        &self,
        idx: usize,
        d: &Decision<'_>,
        req: &Request<()>,
        out: &mut Value,
    ) -> Vec<(&'static str, Value)> {
        let route = &self.config.routes[idx];
        let ctx = Ctx {
            path: &d.path,
            query: req.uri().query(),
            peer: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            inbound: &d.inbound,
        };
        let ReadKey { who, query, base } = match self.read_key(route, &d.id, req.headers(), &ctx) {
            Ok(k) => k,
            Err(reason) => return bypass(reason),
        };
        let input = ctx.vary_input(req.headers(), route);
        let key = self.cache.request_key(&base, input).await;
        let varies: Vec<HeaderName> = self
            .cache
            .varies_on(&base)
            .await
            .map(|v| v.to_vec())
            .unwrap_or_default();
        let vary_input: serde_json::Map<String, Value> = varies
            .iter()
            .map(|n| {
                let shown = if *n == header::COOKIE || *n == header::AUTHORIZATION {
                    json!("(credentials and cookie values are not shown)")
                } else {
                    let values: Vec<&str> = req
                        .headers()
                        .get_all(n)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect();
                    json!(values.join(", "))
                };
                (n.as_str().to_string(), shown)
            })
            .collect();
        let scopes = entry_scopes(route, &d.path, &query, who, &d.id);
        let params = route.path.params(&d.path).unwrap_or_default();
        let tags: Vec<String> = route.tags.iter().map(|t| t.render(&params)).collect();
        out["key"] = json!({
            "base": base.text,
            "full": shown_key(key.full(), &base.text, !input.cookies.is_empty()),
            "vary_headers": varies.iter().map(HeaderName::as_str).collect::<Vec<_>>(),
            "vary_input": vary_input,
        });
        out["scopes"] = json!(scopes.scopes);
        out["tags"] = json!(tags);
        let peek = self.cache.peek(key.full()).await;
        out["stored"] = stored_json(&peek);
        served(&peek)
    }
}

/// The key as shown: non-credential cookie values keyed for `Vary: Cookie` are replaced.
fn shown_key(full: &str, base: &str, has_cookies: bool) -> String {
    let Some(rest) = full.strip_prefix(base).filter(|_| has_cookies) else {
        return full.to_string();
    };
    let parts: Vec<&str> = rest
        .split('&')
        .map(|p| {
            if p.starts_with("cookie=") {
                "cookie=(values not shown)"
            } else {
                p
            }
        })
        .collect();
    format!("{base}{}", parts.join("&"))
}

fn part_json<T: AsRef<str>>(p: &Part<T>, source: &str) -> Value {
    match p {
        Part::Known(v) => json!({ "value": v.as_ref(), "source": source }),
        Part::Absent => json!({ "value": null, "source": source }),
        Part::Unresolved => json!({ "value": null, "unresolved": true, "source": source }),
    }
}

fn identity_json(id: &Identity, trace: &Trace) -> Value {
    json!({
        "role": part_json(&id.role, trace.role),
        "tenant": part_json(&id.tenant, trace.tenant),
        "user": part_json(&id.user, trace.user),
        "credentialed": id.credentialed,
        "unresolved_credentials": id.unresolved_credentials,
        "credentials": trace.credentials,
        "jwt": trace.jwt,
        "session": trace.session,
    })
}

fn freshness(s: Staleness) -> &'static str {
    match s {
        Staleness::Fresh => "fresh",
        Staleness::Revalidate => "stale-servable (inside stale_while_revalidate)",
        Staleness::IfError => "stale-servable only if the origin fails (inside stale_if_error)",
        Staleness::Expired => "expired, kept to be revalidated (a conditional request; a 304 refreshes it)",
        Staleness::Dead => "expired",
    }
}

fn seen_json(s: &Seen) -> Value {
    json!({
        "present": true,
        "age_seconds": s.age_secs,
        "freshness": freshness(s.staleness),
        "purged": s.purged,
        "soft_purged": s.soft_purged,
        "trusted": s.trusted,
    })
}

fn stored_json(p: &Peek) -> Value {
    let memory = p.memory.as_ref().map_or(json!({ "present": false }), seen_json);
    let redis = match &p.shared {
        SharedPeek::Off => json!({ "configured": false }),
        SharedPeek::Down(e) => json!({ "configured": true, "up": false, "error": e }),
        SharedPeek::Found(None) => json!({ "configured": true, "present": false }),
        SharedPeek::Found(Some(s)) => seen_json(s),
    };
    json!({ "memory": memory, "redis": redis })
}

/// What a lookup would answer from what the tiers hold, in the order `Cache::lookup` asks them.
fn served(p: &Peek) -> Vec<(&'static str, Value)> {
    let usable = |s: &&Seen| !s.purged && s.trusted;
    if let Some(m) = p.memory.as_ref().filter(usable) {
        match m.staleness {
            Staleness::Fresh => return hit(Tier::Memory, "hit", "a fresh entry in memory"),
            Staleness::Revalidate => {
                return hit(
                    Tier::Memory,
                    "stale",
                    "served stale from memory while one background refresh runs",
                )
            }
            _ => {}
        }
    }
    if let SharedPeek::Found(Some(r)) = &p.shared {
        if !r.purged {
            match r.staleness {
                Staleness::Fresh if !r.soft_purged => return hit(Tier::Redis, "hit", "a fresh entry in Redis"),
                Staleness::Fresh | Staleness::Revalidate => {
                    return hit(
                        Tier::Redis,
                        "stale",
                        "served stale from Redis while one background refresh runs",
                    )
                }
                _ => {}
            }
        }
    }
    vec![
        ("result", json!("miss")),
        ("served_from_cache", json!(false)),
        (
            "why",
            json!("no fresh or stale-servable entry: the proxy would fetch from the origin and store the answer if its status and Cache-Control allow"),
        ),
    ]
}

fn hit(tier: Tier, result: &str, why: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("result", json!(result)),
        ("tier", json!(tier.as_str())),
        ("served_from_cache", json!(true)),
        ("why", json!(why)),
    ]
}

fn bypass(reason: BypassReason) -> Vec<(&'static str, Value)> {
    vec![
        ("result", json!("bypass")),
        ("served_from_cache", json!(false)),
        ("bypass_reason", json!(reason.as_str())),
        ("why", json!(reason.describe())),
    ]
}

fn pass(why: String) -> Vec<(&'static str, Value)> {
    vec![
        ("result", json!("pass")),
        ("served_from_cache", json!(false)),
        ("why", json!(why)),
    ]
}
