//! What a warm is: the request and report on the wire, the limits, and the validated job.

use std::net::IpAddr;

use http::HeaderValue;
use serde::{Deserialize, Serialize};

pub use crate::config::warm_limits::{DEFAULT_CONCURRENCY, MAX_CONCURRENCY, MAX_PATHS, MAX_REQUESTS};

/// The body of `POST /admin/warm`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmRequest {
    /// Paths (with query) to warm, each starting with `/`.
    pub paths: Vec<String>,
    /// Roles to warm each path for; empty = anonymous.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Tenants to warm each path for; empty = no tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// Requests in flight at once (1 to 64, default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
}

/// What a warm did, as `POST /admin/warm` answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmReport {
    /// Answers that were fetched and stored (`X-Cache: MISS`).
    pub warmed: usize,
    /// Answers that were already cached (`X-Cache: HIT`).
    pub already_cached: usize,
    /// Everything else.
    pub failed: usize,
    /// One line per failure.
    pub failures: Vec<WarmFailure>,
}

/// One variant that could not be warmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmFailure {
    /// The path as given.
    pub path: String,
    /// The role sent, if any.
    pub role: Option<String>,
    /// The tenant sent, if any.
    pub tenant: Option<String>,
    /// The answer's status; `None` when there was no answer.
    pub status: Option<u16>,
    /// Why it counts as a failure.
    pub error: String,
}

/// A warm request that cannot be carried out.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// Nothing to do, too much, or a malformed entry.
    #[error("{0}")]
    Invalid(String),
    /// Identity headers from our own address would be stripped by the proxy.
    #[error("cannot warm for roles or tenants: requests from {0} to the public listener are not in [identity] trust_headers_from, so their identity headers would be stripped; add \"{0}/32\" to trust_headers_from")]
    Untrusted(IpAddr),
    /// The origin learns identity from JWTs or sessions, which warming cannot present.
    #[error("cannot warm for roles or tenants: [identity] jwt / lookup is configured, so the origin learns who asks from the token or session, which a warm request cannot present; it would answer anonymously and the answer would be stored under the role's key. Warm without roles and tenants (anonymous pages), or let a trusted gateway send identity headers instead")]
    CredentialIdentity,
    /// The public listener wants client certificates (mutual TLS).
    #[error("cannot warm: the public listener requires client certificates ([server] tls.client_ca), which a warm request from this instance cannot present")]
    MutualTls,
}

/// A validated warm: every path for every role × tenant.
#[derive(Debug, Clone)]
pub struct WarmJob {
    paths: Vec<String>,
    roles: Vec<Option<String>>,
    tenants: Vec<Option<String>>,
    pub(super) concurrency: usize,
}

impl WarmJob {
    /// Validates a request: 1 to [`MAX_PATHS`] paths starting with `/`, names usable as header
    /// values, at most [`MAX_REQUESTS`] requests, concurrency from 1 to [`MAX_CONCURRENCY`].
    ///
    /// # Errors
    /// [`WarmError::Invalid`] saying what is wrong.
    pub fn new(req: WarmRequest) -> Result<WarmJob, WarmError> {
        let bad = |m: String| Err(WarmError::Invalid(m));
        if req.paths.is_empty() || req.paths.len() > MAX_PATHS {
            return bad(format!(
                "expected between 1 and {MAX_PATHS} paths, got {}",
                req.paths.len()
            ));
        }
        if let Some(p) = req.paths.iter().find(|p| !is_path(p)) {
            return bad(format!(
                "path {p:?}: expected a path starting with '/', e.g. \"/courses/?page=2\""
            ));
        }
        if let Some(n) = req.roles.iter().chain(&req.tenants).find(|n| !is_name(n)) {
            return bad(format!(
                "role or tenant {n:?}: expected a non-empty name usable as a header value"
            ));
        }
        let total = req.paths.len() * req.roles.len().max(1) * req.tenants.len().max(1);
        if total > MAX_REQUESTS {
            return bad(format!(
                "{total} requests (paths × roles × tenants): at most {MAX_REQUESTS} per warm"
            ));
        }
        let concurrency = req.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
            return bad(format!("concurrency {concurrency}: expected 1 to {MAX_CONCURRENCY}"));
        }
        let or_none = |v: Vec<String>| {
            if v.is_empty() {
                vec![None]
            } else {
                v.into_iter().map(Some).collect()
            }
        };
        Ok(WarmJob {
            paths: req.paths,
            roles: or_none(req.roles),
            tenants: or_none(req.tenants),
            concurrency,
        })
    }

    /// Every (path, role, tenant) to request, paths in order.
    pub(super) fn variants(&self) -> Vec<(String, Option<String>, Option<String>)> {
        let mut out = Vec::with_capacity(self.paths.len() * self.roles.len() * self.tenants.len());
        for p in &self.paths {
            for r in &self.roles {
                out.extend(self.tenants.iter().map(|t| (p.clone(), r.clone(), t.clone())));
            }
        }
        out
    }

    pub(super) fn has_identity(&self) -> bool {
        self.roles.iter().chain(&self.tenants).any(Option::is_some)
    }
}

fn is_path(p: &str) -> bool {
    p.starts_with('/') && p.parse::<http::uri::PathAndQuery>().is_ok()
}

fn is_name(n: &str) -> bool {
    !n.is_empty() && HeaderValue::from_str(n).is_ok()
}
