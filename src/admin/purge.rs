//! `POST /purge`: authenticate, parse, translate to scopes, purge everywhere, answer.
//!
//! Authentication is a bearer token (constant-time compare) or an HMAC-SHA256 signature over
//! `"{t}.{body}"` in `X-Cachegate-Signature: t=<unix>,v1=<hex>`, refused when older than five
//! minutes or seen before. Every check runs before anything is purged, and everything the headers
//! alone can show (a bearer token, a signature's form and age) is checked before the body is
//! read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::error::AdminError;
use crate::cache::key;
use crate::config::{Config, PurgeScope};
use crate::invalidation;
use crate::invalidation::Purger;
use crate::scope::{self, ALL};
use crate::secrets::Secrets;

/// Signatures older than this are refused, and seen ones remembered this long.
const MAX_SKEW: Duration = Duration::from_secs(300);

/// Header carrying a signed webhook's signature.
pub(crate) const SIGNATURE_HEADER: &str = "x-cachegate-signature";

/// A purge request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PurgeRequest {
    /// Tags to purge.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Route names to purge entirely.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Paths (with query) whose every identity variant goes.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Restrict tag purges to this tenant (and tenant-less entries); alone, purge the tenant.
    pub tenant: Option<String>,
    /// Purge everything.
    #[serde(default)]
    pub all: bool,
    /// Mark stale instead of deleting.
    #[serde(default)]
    pub soft: bool,
}

fn refuse(status: StatusCode, msg: impl Into<String>) -> AdminError {
    AdminError::new(status, msg)
}

/// Secrets read once at start-up from the variables `[purge]` names.
pub(crate) struct PurgeAuth {
    token: Option<Vec<u8>>,
    hmac: Option<Vec<u8>>,
    seen: Mutex<HashMap<String, Instant>>,
}

impl PurgeAuth {
    /// Authentication with these secrets.
    pub(crate) fn new(secrets: &Secrets) -> Self {
        PurgeAuth {
            token: secrets.purge_token.clone().map(String::into_bytes),
            hmac: secrets.purge_hmac.clone().map(String::into_bytes),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any secret is configured (without one the endpoint is disabled).
    pub(crate) fn enabled(&self) -> bool {
        self.token.is_some() || self.hmac.is_some()
    }

    /// Everything that can be checked before the body is read: the bearer token completely, and
    /// a signature's presence, form and age (verifying it needs the body). Refusing here means
    /// an unauthenticated client never gets us to read, buffer or wait for its body.
    ///
    /// # Errors
    /// 401 with what was wrong.
    pub(crate) fn check_headers(&self, headers: &HeaderMap) -> Result<HeaderAuth, AdminError> {
        let unauthorized = |m: &str| refuse(StatusCode::UNAUTHORIZED, m);
        if headers.contains_key(http::header::AUTHORIZATION) {
            return self.check_token(headers).map(|()| HeaderAuth::Token);
        }
        if let Some(sig) = headers.get(SIGNATURE_HEADER) {
            if self.hmac.is_none() {
                return Err(unauthorized(
                    "signatures are not accepted: no [purge] hmac_secret_env secret is set",
                ));
            }
            let sig = sig.to_str().map_err(|_| unauthorized("unreadable signature header"))?;
            parse_signature(sig)?;
            return Ok(HeaderAuth::Signature);
        }
        Err(unauthorized(
            "missing credentials: send Authorization: Bearer <token> or X-Cachegate-Signature: t=<unix>,v1=<hex>",
        ))
    }

    fn check_token(&self, headers: &HeaderMap) -> Result<(), AdminError> {
        let unauthorized = |m: &str| refuse(StatusCode::UNAUTHORIZED, m);
        let Some(auth) = headers.get(http::header::AUTHORIZATION) else {
            return Err(unauthorized("missing bearer token"));
        };
        let Some(token) = &self.token else {
            return Err(unauthorized(
                "bearer tokens are not accepted: no [purge] token_env secret is set",
            ));
        };
        let given = auth.as_bytes().strip_prefix(b"Bearer ").unwrap_or_default();
        if bool::from(given.ct_eq(token)) {
            Ok(())
        } else {
            Err(unauthorized("wrong bearer token"))
        }
    }

    /// Checks the bearer token or the signature.
    ///
    /// # Errors
    /// 401 with what was wrong.
    pub(crate) async fn check(&self, headers: &HeaderMap, body: &[u8], purger: &Purger) -> Result<(), AdminError> {
        let unauthorized = |m: &str| refuse(StatusCode::UNAUTHORIZED, m);
        if headers.contains_key(http::header::AUTHORIZATION) {
            return self.check_token(headers);
        }
        if let Some(sig) = headers.get(SIGNATURE_HEADER) {
            let Some(secret) = &self.hmac else {
                return Err(unauthorized(
                    "signatures are not accepted: no [purge] hmac_secret_env secret is set",
                ));
            };
            let sig = sig.to_str().map_err(|_| unauthorized("unreadable signature header"))?;
            return self.check_signature(secret, sig, body, purger).await;
        }
        Err(unauthorized(
            "missing credentials: send Authorization: Bearer <token> or X-Cachegate-Signature: t=<unix>,v1=<hex>",
        ))
    }

    async fn check_signature(&self, secret: &[u8], sig: &str, body: &[u8], purger: &Purger) -> Result<(), AdminError> {
        let unauthorized = |m: &str| refuse(StatusCode::UNAUTHORIZED, m);
        let (t, v1) = parse_signature(sig)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| unauthorized("unusable hmac secret"))?;
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&v1).is_err() {
            return Err(unauthorized("signature does not match the body"));
        }
        self.remember(&hex::encode(&v1), purger).await
    }

    /// Refuses a signature seen before, here or (through Redis) on any instance.
    async fn remember(&self, sig: &str, purger: &Purger) -> Result<(), AdminError> {
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|_, at| at.elapsed() < MAX_SKEW * 2);
            if seen.insert(sig.to_string(), Instant::now()).is_some() {
                return Err(refuse(StatusCode::UNAUTHORIZED, "signature replayed"));
            }
        }
        if !purger.first_sighting(sig, MAX_SKEW * 2).await {
            return Err(refuse(StatusCode::UNAUTHORIZED, "signature replayed"));
        }
        Ok(())
    }
}

/// What [`PurgeAuth::check_headers`] established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderAuth {
    /// A valid bearer token: the request is authenticated.
    Token,
    /// A well-formed signature within the allowed skew: [`PurgeAuth::check`] verifies it once
    /// the body is read.
    Signature,
}

/// The timestamp and MAC of `t=<unix>,v1=<hex>`, refused when malformed or outside the skew.
fn parse_signature(sig: &str) -> Result<(u64, Vec<u8>), AdminError> {
    let unauthorized = |m: &str| refuse(StatusCode::UNAUTHORIZED, m);
    let mut t = None;
    let mut v1 = None;
    for part in sig.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(unauthorized(
            "malformed signature: expected t=<unix seconds>,v1=<hex hmac-sha256>",
        ));
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if now.abs_diff(t) > MAX_SKEW.as_secs() {
        return Err(unauthorized("signature timestamp is more than 5 minutes away from now"));
    }
    Ok((t, v1))
}

/// Parses a body and turns it into scopes, validating everything first.
///
/// # Errors
/// 400 with what is wrong; nothing has been purged.
pub(crate) fn scopes_for(config: &Config, body: &[u8]) -> Result<(Vec<String>, bool), AdminError> {
    let req: PurgeRequest = serde_json::from_slice(body)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("invalid purge body: {e}")))?;
    let bad = |m: String| refuse(StatusCode::BAD_REQUEST, m);
    let mut scopes = Vec::new();
    if req.all {
        scopes.push(ALL.to_string());
    }
    let tenant = req.tenant.as_deref();
    for tag in &req.tags {
        if tag.is_empty() {
            return Err(bad("tags must not be empty strings".into()));
        }
        scopes.extend(invalidation::purge_tag_scopes(tag, PurgeScope::Tenant, tenant));
    }
    if let (Some(t), true) = (tenant, req.tags.is_empty()) {
        scopes.push(scope::tenant_scope(t));
    }
    for name in &req.routes {
        if !config.routes.iter().any(|r| &r.name == name) {
            return Err(bad(format!("unknown route {name:?}")));
        }
        scopes.push(scope::route_scope(name));
    }
    for p in &req.paths {
        let (path, query) = p.split_once('?').map_or((p.as_str(), None), |(a, b)| (a, Some(b)));
        let path = key::normalize_path(path).map_err(|e| bad(format!("path {p:?}: {e}")))?;
        let route = config.routes.iter().find(|r| r.path.matches(&path)).ok_or_else(|| {
            bad(format!(
                "path {p:?}: no [[route]] matches it, so nothing of it is cached"
            ))
        })?;
        let q = key::normalize_query(query, &route.query);
        scopes.push(scope::url_scope(&route.name, &path, &q));
    }
    if scopes.is_empty() {
        return Err(bad("nothing to purge: give tags, routes, paths, tenant or all".into()));
    }
    Ok((scopes, req.soft))
}
