//! Session lookup: ask the origin who a session is, once per session per `ttl`.
//!
//! The mapping is keyed by a SHA-256 of the cookie value (the raw value is never stored or
//! logged), and concurrent first requests with one cookie share one lookup. Failed lookups are
//! not remembered: the next request asks again.
//!
//! Forgetting a session (login, logout) must reach every instance and win over a lookup that
//! was already asking: each answer records the generation of the session's purge scope
//! ([`scope::session_scope`](crate::scope::session_scope)) taken before the question was asked, and is valid only
//! while that generation holds. The proxy forgets a session by purging its scope, which every
//! instance acknowledges before the login or logout is answered.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Uri, Version};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::jwt::{field, part};
use super::{Claims, Part};
use crate::coherence::Coherence;
use crate::config::{LookupConfig, OriginConfig};
use crate::error::UpstreamError;
use crate::message::body::ProxyBody;
use crate::metrics::Metrics;
use crate::scope::{self, Generations, Stamps, ALL};
use crate::upstream::Origin;

/// Largest whoami answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// Session → identity, asked of the origin.
pub(crate) struct SessionLookup {
    cfg: LookupConfig,
    origin: Origin,
    origin_cfg: OriginConfig,
    cache: moka::future::Cache<[u8; 32], Arc<Answer>>,
    generations: Arc<Generations>,
    coherence: Option<Arc<Coherence>>,
    anonymous: String,
    metrics: Arc<Metrics>,
}

/// Why a session could not be looked up: the request bypasses the cache.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    /// The cookie value cannot be sent in a header.
    #[error("the session cookie cannot be sent to the origin")]
    Unsendable,
    /// The origin did not answer.
    #[error(transparent)]
    Origin(#[from] UpstreamError),
    /// The origin answered, but not 2xx.
    #[error("lookup answered {0}")]
    Status(http::StatusCode),
    /// The body did not arrive in time.
    #[error("lookup body timed out")]
    BodyTimeout,
    /// The body broke off or was too large.
    #[error("lookup body unreadable: {0}")]
    Body(String),
    /// Not a JSON object.
    #[error("lookup answer is not a JSON object")]
    NotJsonObject,
    /// The session was forgotten twice while being looked up.
    #[error("session was forgotten while it was being looked up")]
    Forgotten,
}

/// A lookup's answer, valid while the session's scope is unpurged since it was asked.
struct Answer {
    claims: Arc<Claims>,
    stamps: Stamps,
}

impl SessionLookup {
    /// A lookup against `origin`.
    pub(crate) fn new(
        cfg: &LookupConfig,
        origin: Origin,
        anonymous: &str,
        generations: Arc<Generations>,
        coherence: Option<Arc<Coherence>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let origin_cfg = origin.config().clone();
        SessionLookup {
            cfg: cfg.clone(),
            origin,
            origin_cfg,
            cache: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(cfg.ttl)
                .build(),
            generations,
            coherence,
            anonymous: anonymous.to_string(),
            metrics,
        }
    }

    /// The session cookie's name.
    pub(crate) fn cookie(&self) -> &str {
        &self.cfg.cookie
    }

    /// Whether a write to `path` changes sessions (login, logout).
    pub(crate) fn resets(&self, path: &str) -> bool {
        self.cfg.reset_paths.iter().any(|p| p.matches(path))
    }

    fn hash(value: &str) -> [u8; 32] {
        Sha256::digest(value.as_bytes()).into()
    }

    /// The identity of a session, asking the origin when it is not known (one request for all
    /// concurrent callers), with the stamps of the session's scope taken before the question:
    /// a fill made for this identity carries them, so a login or logout that lands during the
    /// fill keeps it from being stored.
    ///
    /// # Errors
    /// Why the session could not be resolved.
    pub(crate) async fn resolve(&self, value: &str) -> Result<(Arc<Claims>, Stamps), Arc<LookupError>> {
        let hash = Self::hash(value);
        // Twice at most: an answer found stale (asked before a forget) is asked again once.
        for _ in 0..2 {
            let asked_now = std::sync::atomic::AtomicBool::new(false);
            let answer = self
                .cache
                .try_get_with(hash, async {
                    asked_now.store(true, Ordering::Relaxed);
                    // `all` too: a resubscription after missed purges drops every answer.
                    let stamps = self.generations.stamp(&[Self::scope(&hash), ALL.to_string()]);
                    let start = std::time::Instant::now();
                    let answer = self.ask(value).await;
                    self.metrics.identity_lookup_counter(answer.is_ok()).inc();
                    self.metrics
                        .identity_lookup_duration
                        .observe(start.elapsed().as_secs_f64());
                    answer.map(|claims| {
                        Arc::new(Answer {
                            claims: Arc::new(claims),
                            stamps,
                        })
                    })
                })
                .await?;
            // The lease first, then the stamps: a lease is only stored after every purge it
            // covers has bumped its counters, so stamps read after it cannot be older.
            if (asked_now.load(Ordering::Relaxed) || self.heard_every_purge()) && answer.stamps.valid() {
                return Ok((answer.claims.clone(), answer.stamps.clone()));
            }
            self.cache.invalidate(&hash).await;
        }
        Err(Arc::new(LookupError::Forgotten))
    }

    /// The identity of a session if already known; never asks the origin.
    pub(crate) async fn known(&self, value: &str) -> Option<(Arc<Claims>, Stamps)> {
        let answer = self.cache.get(&Self::hash(value)).await?;
        (self.heard_every_purge() && answer.stamps.valid()).then(|| (answer.claims.clone(), answer.stamps.clone()))
    }

    /// Whether every login or logout purge published so far has been heard, as for memory hits:
    /// without the coherence lease a remembered answer may have missed its forget, so it is
    /// asked again (a fresh answer is always good).
    fn heard_every_purge(&self) -> bool {
        self.coherence.as_ref().is_none_or(|c| c.lease_valid())
    }

    /// The purge scope that forgets this session on every instance.
    pub(crate) fn scope_of(&self, value: &str) -> String {
        Self::scope(&Self::hash(value))
    }

    fn scope(hash: &[u8; 32]) -> String {
        scope::session_scope(&hex::encode(hash))
    }

    async fn ask(&self, value: &str) -> Result<Claims, LookupError> {
        let uri = Uri::builder()
            .scheme(self.origin_cfg.url.scheme_str().unwrap_or("http"))
            .authority(self.origin_cfg.authority.clone())
            .path_and_query(self.cfg.path.as_str())
            .build()
            .map_err(|_| LookupError::Unsendable)?;
        let cookie =
            HeaderValue::from_str(&format!("{}={value}", self.cfg.cookie)).map_err(|_| LookupError::Unsendable)?;
        let host = HeaderValue::from_str(self.origin_cfg.authority.as_str()).map_err(|_| LookupError::Unsendable)?;
        let mut req = Request::new(ProxyBody::Empty);
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let h = req.headers_mut();
        h.insert(header::HOST, host);
        h.insert(header::COOKIE, cookie);
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        h.insert(header::VIA, HeaderValue::from_static("1.1 cachegate"));
        let resp = self.origin.send(req, crate::metrics::NO_ROUTE).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(LookupError::Status(status));
        }
        let body: Bytes = tokio::time::timeout(
            self.origin_cfg.timeout,
            Limited::new(resp.into_body(), MAX_ANSWER).collect(),
        )
        .await
        .map_err(|_| LookupError::BodyTimeout)?
        .map_err(|e| LookupError::Body(e.to_string()))?
        .to_bytes();
        let json: Value = serde_json::from_slice(&body).map_err(|_| LookupError::NotJsonObject)?;
        if !json.is_object() {
            return Err(LookupError::NotJsonObject);
        }
        Ok(self.claims(&json))
    }

    /// A 2xx answer without role, tenant or user is a logged-out session: anonymous. Any part
    /// present must be a non-empty scalar; a missing part of a logged-in session is unresolved.
    fn claims(&self, json: &Value) -> Claims {
        let get = |f: &str| field(json, f).filter(|v| !v.is_null());
        let (role, tenant, user) = (
            get(&self.cfg.role_field),
            get(&self.cfg.tenant_field),
            get(&self.cfg.user_field),
        );
        if role.is_none() && tenant.is_none() && user.is_none() {
            return Claims::anonymous(&self.anonymous);
        }
        let resolved = |v: Option<&Value>| v.map_or(Part::Unresolved, part);
        Claims {
            role: resolved(role),
            tenant: resolved(tenant),
            user: resolved(user),
        }
    }
}

/// Creates both `cachegate_identity_lookups_total` series at 0.
pub(crate) fn prime_metrics(m: &Metrics) {
    for ok in [true, false] {
        m.identity_lookup_counter(ok);
    }
}
