//! Who is asking: role, tenant and user, and whether the request carries credentials that
//! cannot be resolved.
//!
//! Precedence: trusted header → JWT → session lookup → anonymous. The first source present
//! decides. A request is cacheable only if *every* credential it carries resolves: a bad token,
//! a failed lookup, or a credential cookie no source reads makes it bypass, never anonymous.
//!
//! # Layout
//! * [`jwt`]: token verification and claims
//! * [`lookup`]: session → identity via the origin, cached per session hash

pub mod jwt;
pub mod lookup;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName};

use crate::config::IdentityConfig;
use crate::metrics::Metrics;
use crate::proxy::forward::Origin;
use crate::secrets::Secrets;
use jwt::JwtVerifier;
use lookup::SessionLookup;

/// Identity parts read from a token or a lookup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Role.
    pub role: String,
    /// Tenant.
    pub tenant: Option<String>,
    /// User.
    pub user: Option<String>,
}

/// The resolved identity of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Role (the anonymous role when nothing identifies the caller). Shared: most requests
    /// carry the same few roles, the anonymous one above all.
    pub role: Option<Arc<str>>,
    /// Tenant, when known.
    pub tenant: Option<String>,
    /// User, when known.
    pub user: Option<String>,
    /// The request carries a credential nothing resolved.
    pub unresolved_credentials: bool,
}

/// How much resolving a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// A cacheable read: resolve everything, asking the origin about sessions if needed.
    Read,
    /// A write: the writer's tenant scopes its purge; sessions only from the known mappings.
    Write,
    /// Pass-through: only strip untrusted identity headers.
    Strip,
}

/// Resolves identities with the configured sources.
pub struct Resolver {
    cfg: IdentityConfig,
    anonymous: Arc<str>,
    jwt: Option<JwtVerifier>,
    /// Session lookups (public so the write path can forget sessions).
    pub lookup: Option<SessionLookup>,
}

/// Credentials found on a request, before verification.
#[derive(Default)]
struct Found {
    token: Option<String>,
    session: Option<String>,
    unresolvable: bool,
}

impl Resolver {
    /// Builds the sources.
    ///
    /// # Errors
    /// A missing JWT secret or unreadable key file.
    pub fn new(cfg: &IdentityConfig, secrets: &Secrets, origin: Origin, metrics: Arc<Metrics>) -> Result<Self, String> {
        let jwt = match &cfg.jwt {
            Some(j) => Some(JwtVerifier::new(j, secrets.jwt_secret.as_deref())?),
            None => None,
        };
        let lookup = cfg
            .lookup
            .as_ref()
            .map(|l| SessionLookup::new(l, origin, &cfg.anonymous_role, metrics));
        Ok(Resolver {
            anonymous: Arc::from(cfg.anonymous_role.as_str()),
            cfg: cfg.clone(),
            jwt,
            lookup,
        })
    }

    /// Resolves the identity of a request. Identity headers from peers outside
    /// `trust_headers_from` are removed before the request goes anywhere.
    pub async fn resolve(&self, peer: IpAddr, headers: &mut HeaderMap, depth: Depth) -> Identity {
        let trusted = self.cfg.trust_headers_from.iter().any(|n| n.contains(&peer));
        if !trusted {
            headers.remove(&self.cfg.role_header);
            headers.remove(&self.cfg.tenant_header);
        }
        let role = header_text(headers, &self.cfg.role_header);
        let tenant = header_text(headers, &self.cfg.tenant_header);
        let from_header = role.is_some() || tenant.is_some();
        let mut id = Identity {
            role: Some(role.map_or_else(|| self.anonymous.clone(), Arc::from)),
            tenant,
            user: None,
            unresolved_credentials: false,
        };
        if depth == Depth::Strip {
            return id;
        }
        let found = self.credentials(headers);
        if found.unresolvable {
            id.unresolved_credentials = true;
            return id;
        }
        let mut claims = None;
        if let (Some(token), Some(v)) = (&found.token, &self.jwt) {
            match v.verify(token, &self.cfg.anonymous_role) {
                Ok(c) => claims = Some(c),
                Err(e) => {
                    tracing::debug!(reason = %e, "JWT refused");
                    id.unresolved_credentials = true;
                }
            }
        }
        if let (Some(session), Some(l)) = (&found.session, &self.lookup) {
            let resolved = match depth {
                // Boxed: the lookup (an origin request) would otherwise size every request's future.
                Depth::Read => Box::pin(l.resolve(session)).await.map_err(|e| e.to_string()),
                _ => Box::pin(l.known(session))
                    .await
                    .ok_or_else(|| "session not known yet".to_string()),
            };
            match resolved {
                Ok(c) => claims = claims.or_else(|| Some((*c).clone())),
                Err(e) => {
                    tracing::debug!(reason = %e, "session lookup failed");
                    id.unresolved_credentials |= depth == Depth::Read;
                }
            }
        }
        if let (false, Some(c)) = (from_header, claims) {
            id.role = Some(Arc::from(c.role));
            id.tenant = c.tenant;
            id.user = c.user;
        }
        id
    }

    /// Sorts the request's credentials: the JWT, the session cookie, and anything else (which
    /// nothing can resolve).
    fn credentials(&self, headers: &HeaderMap) -> Found {
        let mut found = Found::default();
        let jwt_header = self.jwt_header();
        if let Some(auth) = headers.get(AUTHORIZATION) {
            match (&jwt_header, auth.to_str().ok().and_then(bearer)) {
                (Some(h), Some(t)) if *h == AUTHORIZATION => found.token = Some(t.to_string()),
                _ => found.unresolvable = true,
            }
        }
        if let Some(h) = jwt_header.filter(|h| *h != AUTHORIZATION) {
            if let Some(v) = headers.get(&h).and_then(|v| v.to_str().ok()) {
                found.token = Some(bearer(v).unwrap_or(v).to_string());
            }
        }
        let jwt_cookie = self.cfg.jwt.as_ref().and_then(|j| j.cookie.as_deref());
        let session_cookie = self.lookup.as_ref().map(|l| l.cookie());
        for (name, value) in cookies(headers) {
            if Some(name) == jwt_cookie {
                found.token = Some(value.to_string());
            } else if Some(name) == session_cookie {
                found.session = Some(value.to_string());
            } else if self.cfg.credential_cookies.is_credential(name) {
                found.unresolvable = true;
            }
        }
        found
    }

    fn jwt_header(&self) -> Option<HeaderName> {
        let j = self.cfg.jwt.as_ref()?;
        match (&j.header, &j.cookie) {
            (Some(h), _) => Some(h.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(AUTHORIZATION),
        }
    }

    /// The value of the session cookie on a request, if any.
    pub fn session_of<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        let name = self.lookup.as_ref()?.cookie();
        cookies(headers).find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

fn bearer(v: &str) -> Option<&str> {
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn header_text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// `(name, value)` of every cookie on the request.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| {
            let (n, v) = c.split_once('=').unwrap_or((c, ""));
            let n = n.trim();
            (!n.is_empty()).then(|| (n, v.trim()))
        })
}
