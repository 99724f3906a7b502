//! The admin listener: health, readiness, metrics, stats, the purge webhook, warming and
//! reload.
//! It binds 127.0.0.1 by default and is separate from the public listener.

mod access;
mod error;
mod page;
pub(crate) mod purge;
mod warm;

pub(crate) use access::Access;
pub(crate) use error::AdminError;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::cache::{Cache, Tier};
use crate::config::Config;
use crate::invalidation::{Purger, Trigger};
use crate::message::body::ProxyBody;
use crate::metrics::Metrics;
use crate::proxy::{CacheResult, NO_TIER};
use crate::reload::Reloader;
use crate::secrets::Secrets;
use arc_swap::ArcSwap;
use purge::PurgeAuth;

/// Longest an admin request body may take to arrive, counted from when the endpoint starts
/// reading it (the shorter `[server] client_timeout` wins). The connection watchdog leaves
/// connections with a request in progress alone, so without this a client that sends headers
/// and then stalls or trickles its body would hold the request open for ever. A body that is
/// late gets 408 and the connection is closed.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest `POST /purge` (and `POST /admin/reload`) body: a purge names a few tags, routes or
/// paths, so 64 KiB is already hundreds of them.
pub(crate) const MAX_PURGE_BODY: usize = 64 * 1024;

/// Most bytes read from a signed request before its signature is verified. A signature covers
/// the body, so it cannot be checked first; this keeps what anyone who can reach the admin
/// listener makes us buffer small. A bearer token is checked before any byte of the body is
/// read, so it is the way to send large warm requests.
pub(crate) const MAX_SIGNED_BODY: usize = 256 * 1024;

/// Admin endpoints.
pub(crate) struct Admin {
    config: Arc<ArcSwap<Config>>,
    reloader: Arc<Reloader>,
    cache: Arc<Cache>,
    purger: Arc<Purger>,
    auth: PurgeAuth,
    metrics: Arc<Metrics>,
    warmer: Arc<crate::warm::Warmer>,
    started: std::time::Instant,
    access: Access,
}

impl Admin {
    /// Builds the admin handler.
    pub(crate) fn new(
        reloader: Arc<Reloader>,
        cache: Arc<Cache>,
        purger: Arc<Purger>,
        secrets: &Secrets,
        metrics: Arc<Metrics>,
        warmer: Arc<crate::warm::Warmer>,
        access: Access,
    ) -> Self {
        let auth = PurgeAuth::new(secrets);
        Admin {
            config: reloader.config.clone(),
            reloader,
            cache,
            purger,
            auth,
            metrics,
            warmer,
            started: std::time::Instant::now(),
            access,
        }
    }

    /// Routes one admin request; every [`AdminError`] becomes its answer here.
    pub(crate) async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let answered = match (req.method(), req.uri().path()) {
            (&Method::POST, "/purge") => self.purge(req).await,
            (&Method::POST, "/admin/warm") => self.warm(req).await,
            (&Method::POST, "/admin/reload") => self.reload(req).await,
            (&Method::POST, "/admin/explain") => self.explain(req).await,
            _ => Ok(self.read_only(req).await),
        };
        answered.unwrap_or_else(AdminError::into_response)
    }

    /// The endpoints that change nothing, and the answers for unknown paths.
    async fn read_only(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if matches!(req.uri().path(), "/" | "/metrics" | "/admin/stats") {
            if let Err(e) = self.access.check(req.headers()) {
                return e.into_response();
            }
        }
        match (req.method(), req.uri().path()) {
            (_, "/healthz") => text(StatusCode::OK, "ok\n".into()),
            (_, "/readyz") => self.ready().await,
            (_, "/metrics") => self.metrics().await,
            (_, "/admin/stats") => self.stats().await,
            (&Method::GET | &Method::HEAD, "/") => self.status_page().await,
            (_, "/purge") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST /purge with a JSON body\n".into(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: the admin listener serves / (status page), /healthz, /readyz, /metrics, /admin/stats, POST /purge, POST /admin/warm, POST /admin/reload and POST /admin/explain\n"
                    .into(),
            ),
        }
    }

    /// What the proxy would do with a request (see `proxy::explain`); authenticated like
    /// `/purge`: the answer shows keys, identities and what is cached.
    async fn explain(&self, req: Request<Incoming>) -> Result<Response<ProxyBody>, AdminError> {
        if !self.auth.enabled() {
            let msg = "explain endpoint disabled: set [purge] token_env or hmac_secret_env";
            return Err(AdminError::new(StatusCode::FORBIDDEN, msg));
        }
        let body = self.read_authenticated(req, MAX_PURGE_BODY).await?;
        let asked: crate::proxy::ExplainRequest = serde_json::from_slice(&body)
            .map_err(|e| AdminError::new(StatusCode::BAD_REQUEST, format!("invalid explain body: {e}")))?;
        let proxy = self.reloader.proxy.load_full();
        match proxy.explain(asked).await {
            Ok(v) => Ok(json(StatusCode::OK, &v)),
            Err(e) => Err(AdminError::new(StatusCode::BAD_REQUEST, e)),
        }
    }

    /// Re-reads the config file; authenticated like `/purge`.
    async fn reload(&self, req: Request<Incoming>) -> Result<Response<ProxyBody>, AdminError> {
        if !self.auth.enabled() {
            let msg = "reload endpoint disabled: set [purge] token_env or hmac_secret_env (or send SIGHUP)";
            return Err(AdminError::new(StatusCode::FORBIDDEN, msg));
        }
        self.read_authenticated(req, MAX_PURGE_BODY).await?;
        Ok(match self.reloader.reload().await {
            Ok(msg) => json(StatusCode::OK, &serde_json::json!({ "reloaded": true, "message": msg })),
            // A refused reload is an answer, not an admin error: the body says which.
            Err(e) => {
                let mut body = serde_json::json!({ "reloaded": false, "error": e.to_string() });
                if let crate::reload::ReloadError::RestartOnly { changed } = &e {
                    body["restart_only"] = serde_json::json!(changed);
                }
                json(StatusCode::UNPROCESSABLE_ENTITY, &body)
            }
        })
    }

    /// Gauges are sampled at scrape time; counters are live.
    async fn metrics(&self) -> Response<ProxyBody> {
        let (entries, bytes) = self.cache.memory_usage().await;
        let m = &self.metrics;
        m.memory_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
        m.memory_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        m.redis_up.set(i64::from(self.cache.shared_up() == Some(true)));
        let mut resp = Response::new(ProxyBody::full(Bytes::from(m.render())));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }

    async fn stats(&self) -> Response<ProxyBody> {
        let (entries, bytes) = self.cache.memory_usage().await;
        let lookups = |route: &str, result: &str, tier: &str| self.metrics.lookups_counted(route, result, tier);
        let config = self.config.load();
        let routes: Vec<serde_json::Value> = config
            .routes
            .iter()
            .map(|r| {
                let n = r.name.as_str();
                let hit = CacheResult::Hit.as_str();
                let hits = lookups(n, hit, Tier::Memory.as_str()) + lookups(n, hit, Tier::Redis.as_str());
                let misses = lookups(n, CacheResult::Miss.as_str(), NO_TIER);
                let bypasses = lookups(n, CacheResult::Bypass.as_str(), NO_TIER);
                // Answered from a stored body, but only after the origin's 304: not in the ratio.
                let revalidated = lookups(n, CacheResult::Revalidated.as_str(), NO_TIER);
                // No traffic has no ratio: 0 would read as "never hits".
                let ratio = (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64);
                serde_json::json!({ "route": n, "hits": hits, "misses": misses, "revalidated": revalidated, "bypasses": bypasses, "hit_ratio": ratio })
            })
            .collect();
        let redis = match self.cache.shared_usage().await {
            None => serde_json::json!({ "configured": false }),
            Some(usage) => match usage {
                Ok((used, keys)) => {
                    serde_json::json!({ "configured": true, "up": true, "used_memory_bytes": used, "keys": keys })
                }
                Err(e) => serde_json::json!({ "configured": true, "up": false, "error": e.to_string() }),
            },
        };
        let tenants = self.tenant_stats();
        let mut memory = serde_json::json!({ "entries": entries, "bytes": bytes, "capacity_bytes": self.config.load().cache.memory_capacity });
        if let Some((quota, held)) = self.cache.memory_by_tenant().await {
            memory["tenant_quota_bytes"] = quota.into();
            memory["by_tenant"] = held.into_iter().map(|(t, n)| (t, serde_json::Value::from(n))).collect();
        }
        let loaded = self.reloader.loaded_at();
        json(
            StatusCode::OK,
            &serde_json::json!({
                "uptime_seconds": self.started.elapsed().as_secs(),
                "config": { "file": self.config.load().file.display().to_string(), "loaded_at_unix": loaded },
                "memory": memory,
                "redis": redis,
                "routes": routes,
                "tenants": tenants,
            }),
        )
    }

    /// Per route: memory hits, Redis hits, stale answers, misses and bypasses since start.
    fn route_rows(&self, config: &Config) -> Vec<page::RouteRow> {
        let lookups =
            |route: &str, result: CacheResult, tier: &str| self.metrics.lookups_counted(route, result.as_str(), tier);
        let (mem, redis) = (Tier::Memory.as_str(), Tier::Redis.as_str());
        config
            .routes
            .iter()
            .map(|r| {
                let n = r.name.as_str();
                page::RouteRow {
                    name: r.name.clone(),
                    memory_hits: lookups(n, CacheResult::Hit, mem),
                    redis_hits: lookups(n, CacheResult::Hit, redis),
                    stale: lookups(n, CacheResult::Stale, mem) + lookups(n, CacheResult::Stale, redis),
                    misses: lookups(n, CacheResult::Miss, NO_TIER),
                    bypasses: lookups(n, CacheResult::Bypass, NO_TIER),
                }
            })
            .collect()
    }

    /// Bypass counts by route and reason, the largest first (at most ten).
    fn top_bypasses(&self) -> Vec<(String, String, u64)> {
        use prometheus::core::Collector;
        let mut out = Vec::new();
        for family in self.metrics.bypass.collect() {
            for m in family.get_metric() {
                let n = m.get_counter().get_value() as u64;
                if n == 0 {
                    continue;
                }
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map_or_else(String::new, |l| l.value().to_string())
                };
                out.push((label("route"), label("reason"), n));
            }
        }
        out.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
        out.truncate(10);
        out
    }

    /// `GET /`: the status page.
    async fn status_page(&self) -> Response<ProxyBody> {
        let config = self.config.load_full();
        let (entries, bytes) = self.cache.memory_usage().await;
        let cluster_nodes = config.cache.redis_target().filter(|t| t.cluster).map(|t| t.seeds.len());
        let asked = std::time::Instant::now();
        let redis = match self.cache.shared_usage().await {
            None => page::RedisView::NotConfigured,
            Some(Ok((used, keys))) => page::RedisView::Up {
                latency: asked.elapsed(),
                used_memory_bytes: used,
                keys,
                cluster_nodes,
            },
            Some(Err(e)) => page::RedisView::Down {
                error: e.to_string(),
                cluster_nodes,
            },
        };
        let (own_id, peers) = self.purger.instances().unzip();
        let recent = &self.metrics.recent;
        let view = page::StatusView {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.started.elapsed().as_secs(),
            routes: self.route_rows(&config),
            bypass_reasons: self.top_bypasses(),
            minute: recent.summary(60),
            history: recent.summary(crate::recent::SECONDS as u64),
            memory: page::MemoryView {
                entries,
                bytes,
                capacity_bytes: config.cache.memory_capacity,
            },
            redis,
            instances: page::InstancesView {
                own_id,
                peers: peers.unwrap_or_default(),
                now_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            },
            purges: self.purger.recent(),
            reload: page::ReloadView {
                file: config.file.display().to_string(),
                loaded_at_unix: self.reloader.loaded_at(),
                last: self.reloader.last_reload(),
            },
            tenants: self.tenant_rows(),
        };
        let mut resp = Response::new(ProxyBody::full(Bytes::from(page::render(&view))));
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Nothing but the inline style runs or loads; the page cannot be framed elsewhere.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
        );
        resp
    }

    /// The status page's per-tenant table (empty without `[metrics] tenant_labels`).
    fn tenant_rows(&self) -> Vec<page::TenantRow> {
        let Some(mut labels) = self.reloader.proxy.load().tenant_labels() else {
            return Vec::new();
        };
        labels.extend([crate::tenants::OTHER.to_string(), crate::tenants::NONE.to_string()]);
        labels
            .into_iter()
            .map(|t| {
                let count = |r: CacheResult| self.metrics.tenant_lookups_counted(&t, r.as_str());
                let (hits, misses) = (count(CacheResult::Hit), count(CacheResult::Miss));
                page::TenantRow {
                    tenant: t,
                    hits,
                    misses,
                }
            })
            .collect()
    }

    /// Per tenant label (the labelled tenants, `other`, `none`): lookups by result and the hit
    /// ratio (`null` without traffic); `null` without `[metrics] tenant_labels`.
    fn tenant_stats(&self) -> serde_json::Value {
        let Some(mut labels) = self.reloader.proxy.load().tenant_labels() else {
            return serde_json::Value::Null;
        };
        labels.extend([crate::tenants::OTHER.to_string(), crate::tenants::NONE.to_string()]);
        let m = &self.metrics;
        let mut out = serde_json::Map::new();
        for t in labels {
            let count = |r: CacheResult| m.tenant_lookups_counted(&t, r.as_str());
            let (hits, stale, misses, bypasses) = (
                count(CacheResult::Hit),
                count(CacheResult::Stale),
                count(CacheResult::Miss),
                count(CacheResult::Bypass),
            );
            let ratio = (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64);
            let v = serde_json::json!({ "hits": hits, "stale": stale, "misses": misses, "bypasses": bypasses, "hit_ratio": ratio });
            out.insert(t, v);
        }
        serde_json::Value::Object(out)
    }

    async fn purge(&self, req: Request<Incoming>) -> Result<Response<ProxyBody>, AdminError> {
        if !self.auth.enabled() {
            let msg =
                "purge endpoint disabled: set [purge] token_env or hmac_secret_env to a variable holding a secret";
            return Err(AdminError::new(StatusCode::FORBIDDEN, msg));
        }
        let body = self.read_authenticated(req, MAX_PURGE_BODY).await?;
        let (scopes, soft) = purge::scopes_for(&self.config.load(), &body)?;
        let outcome = self.purger.purge(&scopes, soft, Trigger::Webhook).await;
        tracing::info!(scopes = ?scopes, soft, shared = outcome.shared, acks = outcome.acks, "purge webhook");
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({
                "purged": outcome.scopes,
                "scopes": scopes,
                "soft": soft,
                "shared": outcome.shared,
                "instances_acked": outcome.acks,
                "acked": outcome.acked(),
                "instances": outcome.instances(),
                "propagation_seconds": outcome.propagation.map(|d| d.as_secs_f64()),
            }),
        ))
    }

    /// Authenticates an admin POST and reads its body, at most `limit` bytes, within
    /// [`BODY_READ_TIMEOUT`]. Credentials in the headers are checked before any of the body is
    /// read, so an unauthenticated client is answered at once. A signed request's body has to
    /// be read to verify it, so it is held to [`MAX_SIGNED_BODY`] until it is verified.
    async fn read_authenticated(&self, req: Request<Incoming>, limit: usize) -> Result<Bytes, AdminError> {
        let refuse = AdminError::new;
        let (parts, body) = req.into_parts();
        let how = self.auth.check_headers(&parts.headers)?;
        let limit = match how {
            purge::HeaderAuth::Token => limit,
            purge::HeaderAuth::Signature => limit.min(MAX_SIGNED_BODY),
        };
        let too_large = || {
            let signed = if how == purge::HeaderAuth::Signature {
                " (signed requests; a bearer token allows more)"
            } else {
                ""
            };
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over {limit} bytes{signed}"),
            )
        };
        // A declared length over the limit is refused without waiting for the bytes.
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let timeout = BODY_READ_TIMEOUT.min(self.config.load().server.client_timeout);
        let body = match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
            Err(_) => {
                return Err(refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the body did not arrive within {timeout:?}"),
                ))
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Ok(Err(e)) => return Err(refuse(StatusCode::BAD_REQUEST, format!("unreadable body: {e}"))),
            Ok(Ok(b)) => b.to_bytes(),
        };
        if how == purge::HeaderAuth::Signature {
            self.auth.check(&parts.headers, &body, &self.purger).await?;
        }
        Ok(body)
    }

    /// Ready when the origin accepts a TCP connection.
    async fn ready(&self) -> Response<ProxyBody> {
        let config = self.config.load();
        let authority = config.origin.authority.as_str();
        let addr = if config.origin.authority.port().is_some() {
            authority.to_string()
        } else {
            let port = if config.origin.url.scheme_str() == Some("https") {
                443
            } else {
                80
            };
            format!("{authority}:{port}")
        };
        let probe = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&addr)).await;
        // Redis is reported, but a Redis outage is degraded service, not unreadiness.
        let redis = match self.cache.shared_up() {
            None => "redis: not configured (memory tier only)",
            Some(true) => "redis: up",
            Some(false) => "redis: down (degraded: serving from memory tier and origin)",
        };
        match probe {
            Ok(Ok(_)) => text(StatusCode::OK, format!("ready: origin {addr} reachable\n{redis}\n")),
            Ok(Err(e)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: origin {addr}: {e}\n{redis}\n"),
            ),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: origin {addr}: connect timed out\n{redis}\n"),
            ),
        }
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(Bytes::from(format!("{v}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
