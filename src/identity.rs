//! Who is asking: role, tenant and user, and whether the request carries credentials we cannot
//! resolve.
//!
//! Precedence is trusted header → JWT → session lookup → anonymous. Today only trusted headers
//! resolve; any other credential (an `Authorization` header, a credential cookie) is unresolved,
//! and such requests bypass the cache.

use std::net::IpAddr;

use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderMap;

use crate::config::IdentityConfig;

/// The resolved identity of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Role (the anonymous role when nothing identifies the caller).
    pub role: Option<String>,
    /// Tenant, when known.
    pub tenant: Option<String>,
    /// User, when known.
    pub user: Option<String>,
    /// The request carries a credential nothing resolved.
    pub unresolved_credentials: bool,
}

/// Resolves the identity and strips identity headers a client may not set: headers from peers
/// outside `trust_headers_from` are removed before the request goes anywhere.
pub fn resolve(cfg: &IdentityConfig, peer: IpAddr, headers: &mut HeaderMap) -> Identity {
    let trusted = cfg.trust_headers_from.iter().any(|n| n.contains(&peer));
    let (role, tenant) = if trusted {
        (
            header_text(headers, &cfg.role_header),
            header_text(headers, &cfg.tenant_header),
        )
    } else {
        headers.remove(&cfg.role_header);
        headers.remove(&cfg.tenant_header);
        (None, None)
    };
    let unresolved_credentials = headers.contains_key(AUTHORIZATION) || has_credential_cookie(cfg, headers);
    Identity {
        role: Some(role.unwrap_or_else(|| cfg.anonymous_role.clone())),
        tenant,
        user: None,
        unresolved_credentials,
    }
}

fn header_text(headers: &HeaderMap, name: &http::HeaderName) -> Option<String> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Whether any cookie the config counts as a credential is present.
fn has_credential_cookie(cfg: &IdentityConfig, headers: &HeaderMap) -> bool {
    let named = |name: &str| {
        cfg.credential_cookies.is_credential(name)
            || cfg.lookup.as_ref().is_some_and(|l| l.cookie == name)
            || cfg.jwt.as_ref().and_then(|j| j.cookie.as_deref()) == Some(name)
    };
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.split('=').next())
        .map(str::trim)
        .any(|name| !name.is_empty() && named(name))
}
