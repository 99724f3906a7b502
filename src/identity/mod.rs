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

pub(crate) mod jwt;
pub(crate) mod lookup;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName};

use crate::coherence::Coherence;
use crate::config::IdentityConfig;
use crate::metrics::Metrics;
use crate::scope::{Generations, Stamps};
use crate::secrets::Secrets;
use crate::upstream::Origin;
use jwt::JwtVerifier;
use lookup::SessionLookup;

/// Why an identity source could not be set up at start-up (or reload): a config error.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// An algorithm name `jsonwebtoken` does not know.
    #[error("[identity] jwt: unsupported algorithm {0}")]
    Algorithm(String),
    /// The variable holding the HMAC secret is not set.
    #[error("[identity] jwt: the variable {var} holding the HMAC secret is not set")]
    MissingSecret {
        /// The variable `secret_env` names.
        var: String,
    },
    /// A key file that cannot be read or parsed.
    #[error("[identity] jwt {key} {}: {reason}", path.display())]
    KeyFile {
        /// `public_key` or `jwks_file`.
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// One identity part (role, tenant or user) of a caller.
///
/// `Absent` and `Unresolved` differ on purpose: a caller without credentials has no tenant,
/// and may share a tenant-less entry; a caller whose tenant exists but could not be read (no
/// claim name configured, a missing claim, a list where a string was expected) must never be
/// keyed as if it had none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Part<T = String> {
    /// The caller has none: anonymous, or a trusted gateway left it out on purpose.
    #[default]
    Absent,
    /// Resolved to a non-empty scalar.
    Known(T),
    /// The caller has one, but it could not be resolved.
    Unresolved,
}

impl<T> Part<T> {
    /// The value, when resolved.
    pub(crate) fn known(&self) -> Option<&T> {
        match self {
            Part::Known(v) => Some(v),
            _ => None,
        }
    }

    fn or(self, other: Part<T>) -> Part<T> {
        match self {
            Part::Absent => other,
            p => p,
        }
    }
}

impl<T: PartialEq> Part<T> {
    /// Two sources about one caller: where they disagree, the origin may follow either.
    fn agree(self, other: Part<T>) -> Part<T> {
        if self == other {
            self
        } else {
            Part::Unresolved
        }
    }
}

/// Identity parts read from a token or a lookup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claims {
    /// Role.
    pub role: Part,
    /// Tenant.
    pub tenant: Part,
    /// User.
    pub user: Part,
}

impl Claims {
    /// A credential that says "nobody in particular" (a logged-out session).
    pub(crate) fn anonymous(role: &str) -> Self {
        Claims {
            role: Part::Known(role.to_string()),
            tenant: Part::Absent,
            user: Part::Absent,
        }
    }

    fn unresolved() -> Self {
        Claims {
            role: Part::Unresolved,
            tenant: Part::Unresolved,
            user: Part::Unresolved,
        }
    }

    fn agree(self, other: Claims) -> Claims {
        Claims {
            role: self.role.agree(other.role),
            tenant: self.tenant.agree(other.tenant),
            user: self.user.agree(other.user),
        }
    }
}

/// The resolved identity of a request.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// Role; the anonymous role when nothing identifies the caller. Shared: most requests
    /// carry the same few roles, the anonymous one above all.
    pub role: Part<Arc<str>>,
    /// Tenant.
    pub tenant: Part,
    /// User.
    pub user: Part,
    /// The request carries credentials or trusted identity headers: the caller is somebody,
    /// so an answer shared with everybody must not be filled or served from it.
    pub credentialed: bool,
    /// The request carries a credential nothing resolved.
    pub unresolved_credentials: bool,
    /// When a session lookup resolved the caller: the session's purge scope and its stamps from
    /// before the lookup asked. An answer filled for this identity is only valid while they hold.
    pub session: Option<(String, Stamps)>,
}

impl Identity {
    fn anonymous(role: &Arc<str>) -> Self {
        Identity {
            role: Part::Known(role.clone()),
            tenant: Part::Absent,
            user: Part::Absent,
            credentialed: false,
            unresolved_credentials: false,
            session: None,
        }
    }
}

/// Where each part of a resolved identity came from, for `explain`: source names only, never a
/// credential's value.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trace {
    /// Whether an unknown session may be asked of the origin's lookup endpoint. `explain` says
    /// no: the lookup is a request to the application (it may refresh or log the session), so
    /// explaining never makes it and reports that the proxy would.
    pub(crate) may_ask_origin: bool,
    /// The credentials found on the request, described by kind and name.
    pub(crate) credentials: Vec<String>,
    /// Where the role, tenant and user came from.
    pub(crate) role: &'static str,
    /// See `role`.
    pub(crate) tenant: &'static str,
    /// See `role`.
    pub(crate) user: &'static str,
    /// The JWT's verification: `verified` or why it was refused.
    pub(crate) jwt: Option<String>,
    /// The session lookup: a hash prefix of the session and what the lookup did.
    pub(crate) session: Option<String>,
}

/// How much resolving a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Depth {
    /// A cacheable read: resolve everything, asking the origin about sessions if needed.
    Read,
    /// A write: the writer's tenant scopes its purge; sessions only from the known mappings.
    Write,
    /// Pass-through, or a route whose answer depends on nobody: nothing to resolve.
    Strip,
}

/// Resolves identities with the configured sources.
pub(crate) struct Resolver {
    cfg: IdentityConfig,
    anonymous: Arc<str>,
    jwt: Option<JwtVerifier>,
    /// Session lookups (public so the proxy can forget sessions on login and logout).
    pub lookup: Option<SessionLookup>,
}

/// Credentials found on a request, before verification.
#[derive(Default)]
struct Found {
    token: Option<String>,
    session: Option<String>,
    /// A credential nothing can resolve, or an ambiguous one (sent twice).
    unresolvable: bool,
}

impl Found {
    fn any(&self) -> bool {
        self.token.is_some() || self.session.is_some() || self.unresolvable
    }
}

/// What keeps remembered session answers honest: the generation table (a login or logout is a
/// purge of the session's scope) and, with Redis, the lease that says every purge is heard.
/// Built once at start-up and handed to every [`Resolver`] a reload builds.
#[derive(Clone)]
pub struct SessionGuard {
    generations: Arc<Generations>,
    coherence: Option<Arc<Coherence>>,
}

impl SessionGuard {
    /// A guard over this instance's generations and, with Redis, its coherence lease.
    pub fn new(generations: Arc<Generations>, coherence: Option<Arc<Coherence>>) -> Self {
        SessionGuard { generations, coherence }
    }
}

impl Resolver {
    /// Builds the sources.
    ///
    /// # Errors
    /// A missing JWT secret or unreadable key file.
    pub(crate) fn new(
        cfg: &IdentityConfig,
        secrets: &Secrets,
        origin: Origin,
        guard: &SessionGuard,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SetupError> {
        let (generations, coherence) = (guard.generations.clone(), guard.coherence.clone());
        let jwt = match &cfg.jwt {
            Some(j) => Some(JwtVerifier::new(j, secrets.jwt_secret.as_deref())?),
            None => None,
        };
        let lookup = cfg
            .lookup
            .as_ref()
            .map(|l| SessionLookup::new(l, origin, &cfg.anonymous_role, generations, coherence, metrics));
        Ok(Resolver {
            anonymous: Arc::from(cfg.anonymous_role.as_str()),
            cfg: cfg.clone(),
            jwt,
            lookup,
        })
    }

    /// Whether identity and forwarding headers from `peer` are believed.
    pub(crate) fn trusts(&self, peer: IpAddr) -> bool {
        self.cfg.trust_headers_from.iter().any(|n| n.contains(&peer))
    }

    /// The identity header names (role, tenant and, when configured, user).
    pub(crate) fn header_names(&self) -> impl Iterator<Item = &HeaderName> {
        [&self.cfg.role_header, &self.cfg.tenant_header]
            .into_iter()
            .chain(self.cfg.user_header.as_ref())
    }

    /// Resolves the identity of a normalised request (identity headers from untrusted peers
    /// are already gone). Every part is resolved from the first source that has it: trusted
    /// headers, then the JWT and session credentials; a caller without any is anonymous.
    /// `trace`, when given, records where each part came from.
    pub(crate) async fn resolve(
        &self,
        trusted: bool,
        headers: &HeaderMap,
        depth: Depth,
        mut trace: Option<&mut Trace>,
    ) -> Identity {
        let mut id = Identity::anonymous(&self.anonymous);
        if depth == Depth::Strip {
            if let Some(t) = trace {
                let why = "not resolved: this request's answer depends on nobody";
                (t.role, t.tenant, t.user) = (why, why, why);
            }
            return id;
        }
        let (role, tenant, user) = if trusted {
            (
                header_part(headers, &self.cfg.role_header),
                header_part(headers, &self.cfg.tenant_header),
                self.cfg
                    .user_header
                    .as_ref()
                    .map_or(Part::Absent, |h| header_part(headers, h)),
            )
        } else {
            (Part::Absent, Part::Absent, Part::Absent)
        };
        let from_header = role != Part::Absent || tenant != Part::Absent || user != Part::Absent;
        let found = self.credentials(headers);
        id.credentialed = from_header || found.any();
        id.unresolved_credentials = found.unresolvable;
        if let Some(t) = trace.as_deref_mut() {
            t.credentials = self.describe_credentials(headers);
        }
        let claims = if found.any() {
            Box::pin(self.claims(&found, depth, &mut id, trace.as_deref_mut())).await
        } else if from_header {
            // A gateway that names somebody without saying their role: not anonymous. A tenant
            // or user it leaves out is left out on purpose.
            Claims {
                role: Part::Unresolved,
                tenant: Part::Absent,
                user: Part::Absent,
            }
        } else {
            Claims::anonymous(&self.anonymous)
        };
        if let Some(t) = trace {
            let from_claims = if found.any() {
                match (&found.token, &id.session) {
                    _ if id.unresolved_credentials => "unresolved: a credential on the request could not be resolved",
                    (Some(_), Some(_)) => "JWT and session lookup (agreeing)",
                    (Some(_), None) => "JWT claims",
                    (None, Some(_)) => "session lookup",
                    (None, None) => "unresolved",
                }
            } else if from_header {
                "not sent by the trusted gateway"
            } else {
                "anonymous: no credentials"
            };
            let source = |p: &Part| {
                if *p == Part::Absent {
                    from_claims
                } else {
                    "trusted header"
                }
            };
            (t.role, t.tenant, t.user) = (source(&role), source(&tenant), source(&user));
        }
        id.role = match role {
            Part::Known(r) => Part::Known(Arc::from(r)),
            Part::Unresolved => Part::Unresolved,
            Part::Absent => match claims.role {
                Part::Known(r) if *r == *self.anonymous => Part::Known(self.anonymous.clone()),
                Part::Known(r) => Part::Known(Arc::from(r)),
                Part::Absent => Part::Known(self.anonymous.clone()),
                Part::Unresolved => Part::Unresolved,
            },
        };
        id.tenant = tenant.or(claims.tenant);
        id.user = user.or(claims.user);
        id
    }

    /// The request's credentials by kind and name (header or cookie name), never their values.
    fn describe_credentials(&self, headers: &HeaderMap) -> Vec<String> {
        let mut out = Vec::new();
        let jwt_header = self.jwt_header();
        if headers.contains_key(AUTHORIZATION) {
            let what = if jwt_header.as_ref() == Some(&AUTHORIZATION) {
                "header authorization (JWT)"
            } else {
                "header authorization (no source reads it: unresolvable)"
            };
            out.push(what.to_string());
        }
        if let Some(h) = jwt_header.filter(|h| *h != AUTHORIZATION && headers.contains_key(h)) {
            out.push(format!("header {h} (JWT)"));
        }
        let jwt_cookie = self.cfg.jwt.as_ref().and_then(|j| j.cookie.as_deref());
        let session_cookie = self.lookup.as_ref().map(|l| l.cookie());
        for (name, _) in cookie_pairs(headers) {
            let what = if Some(name) == jwt_cookie {
                "JWT"
            } else if Some(name) == session_cookie {
                "session"
            } else if self.cfg.credential_cookies.is_credential(name) {
                "credential cookie no source reads: unresolvable"
            } else {
                continue;
            };
            out.push(format!("cookie {name} ({what})"));
        }
        out
    }

    /// What the request's JWT and session say; parts they cannot tell are unresolved.
    async fn claims(&self, found: &Found, depth: Depth, id: &mut Identity, mut trace: Option<&mut Trace>) -> Claims {
        let unresolved = &mut id.unresolved_credentials;
        let mut claims: Option<Claims> = None;
        if let (Some(token), Some(v)) = (&found.token, &self.jwt) {
            match v.verify(token) {
                Ok(c) => {
                    claims = Some(c);
                    if let Some(t) = trace.as_deref_mut() {
                        t.jwt = Some("verified".into());
                    }
                }
                Err(e) => {
                    tracing::debug!(reason = %e, "JWT refused");
                    if let Some(t) = trace.as_deref_mut() {
                        t.jwt = Some(format!("refused: {e}"));
                    }
                    *unresolved = true;
                }
            }
        } else if found.token.is_some() {
            if let Some(t) = trace.as_deref_mut() {
                t.jwt = Some("sent, but no [identity] jwt is configured: unresolvable".into());
            }
            *unresolved = true;
        }
        if let (Some(session), Some(l)) = (&found.session, &self.lookup) {
            let may_ask = trace.as_deref().is_none_or(|t| t.may_ask_origin);
            let resolved = match depth {
                Depth::Read if may_ask => l.resolve(session).await.map_err(|e| e.to_string()),
                Depth::Read => l.known(session).await.ok_or_else(|| {
                    "not known yet: the proxy would ask the origin's lookup endpoint; explain does not".to_string()
                }),
                _ => l
                    .known(session)
                    .await
                    .ok_or_else(|| "session not known yet".to_string()),
            };
            if let Some(t) = trace {
                let hash = l.scope_of(session);
                let short = hash.rsplit(':').next().unwrap_or("").get(..12).unwrap_or("");
                t.session = Some(match &resolved {
                    Ok(_) => format!("session sha256 {short}…: remembered answer"),
                    Err(e) => format!("session sha256 {short}…: {e}"),
                });
            }
            match resolved {
                Ok((c, stamps)) => {
                    id.session = Some((l.scope_of(session), stamps));
                    let c = (*c).clone();
                    claims = Some(match claims {
                        Some(prev) => prev.agree(c),
                        None => c,
                    });
                }
                Err(e) => {
                    tracing::debug!(reason = %e, "session lookup failed");
                    *unresolved = true;
                    claims = None;
                }
            }
        }
        if *unresolved {
            // Some credential the origin may read is not understood: none of its parts is known.
            return Claims::unresolved();
        }
        claims.unwrap_or_else(Claims::unresolved)
    }

    /// Sorts the request's credentials: the JWT, the session cookie, and anything else (which
    /// nothing can resolve). A credential sent twice is ambiguous: the origin may read either.
    fn credentials(&self, headers: &HeaderMap) -> Found {
        let mut found = Found::default();
        let jwt_header = self.jwt_header();
        let mut auth = headers.get_all(AUTHORIZATION).iter();
        if let Some(v) = auth.next() {
            match (&jwt_header, v.to_str().ok().and_then(bearer)) {
                (Some(h), Some(t)) if *h == AUTHORIZATION => found.token = Some(t.to_string()),
                _ => found.unresolvable = true,
            }
            found.unresolvable |= auth.next().is_some();
        }
        if let Some(h) = jwt_header.filter(|h| *h != AUTHORIZATION) {
            let mut values = headers.get_all(&h).iter();
            if let Some(v) = values.next() {
                match v.to_str() {
                    Ok(v) => found.token = Some(bearer(v).unwrap_or(v).to_string()),
                    Err(_) => found.unresolvable = true,
                }
                found.unresolvable |= values.next().is_some();
            }
        }
        let jwt_cookie = self.cfg.jwt.as_ref().and_then(|j| j.cookie.as_deref());
        let session_cookie = self.lookup.as_ref().map(|l| l.cookie());
        for (name, value) in cookie_pairs(headers) {
            if Some(name) == jwt_cookie {
                found.unresolvable |= found.token.is_some();
                found.token = Some(value.to_string());
            } else if Some(name) == session_cookie {
                found.unresolvable |= found.session.is_some();
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

    /// Whether a cookie is a credential: identity keying answers it, so the origin's
    /// `Vary: Cookie` need not key it.
    pub(crate) fn is_credential_cookie(&self, name: &str) -> bool {
        self.cfg.jwt.as_ref().and_then(|j| j.cookie.as_deref()) == Some(name)
            || self.lookup.as_ref().map(|l| l.cookie()) == Some(name)
            || self.cfg.credential_cookies.is_credential(name)
    }

    /// Whether the cookie `name` is removed from requests (`strip_cookies`).
    pub(crate) fn strips_cookie(&self, name: &str) -> bool {
        self.cfg.strips_cookie(name)
    }

    /// Every value of the session cookie on a request. Usually one; a request that sends it
    /// twice bypasses the cache, but a login or logout it makes must forget both, since the
    /// origin may have read either.
    pub(crate) fn sessions_of(&self, headers: &HeaderMap) -> Vec<String> {
        let Some(name) = self.lookup.as_ref().map(|l| l.cookie()) else {
            return Vec::new();
        };
        cookie_pairs(headers)
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
            .collect()
    }
}

/// A trusted identity header: absent, one visible-ASCII non-empty value, or unresolved (empty,
/// non-ASCII, or sent twice, so the origin might read another value than we would).
fn header_part(headers: &HeaderMap, name: &HeaderName) -> Part {
    let mut values = headers.get_all(name).iter();
    let Some(v) = values.next() else {
        return Part::Absent;
    };
    if values.next().is_some() {
        return Part::Unresolved;
    }
    match v.to_str().map(str::trim) {
        Ok(t) if !t.is_empty() => Part::Known(t.to_string()),
        _ => Part::Unresolved,
    }
}

fn bearer(v: &str) -> Option<&str> {
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `(name, value)` of every cookie on the request, in order, split the way common frameworks
/// split them (on `;`, whitespace trimmed); pieces without a name are skipped.
pub(crate) fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| {
            let (n, v) = c.split_once('=')?;
            let n = n.trim();
            (!n.is_empty()).then(|| (n, v.trim()))
        })
}
