//! The request as it arrives, normalised once, before identity, keying and forwarding read it,
//! so that what is keyed is exactly what reaches the origin.
//!
//! In order:
//! 1. `Host` is checked (one, a valid authority) and remembered.
//! 2. Hop-by-hop headers and every header named in `Connection` go: a client must not be able
//!    to have a credential read by identity and then dropped before the origin sees it.
//! 3. Headers whose name holds `_` go, from everyone (nginx's default): CGI-style origins map
//!    `X_User_Role` and `X-User-Role` to the same variable.
//! 4. From peers outside `trust_headers_from`, identity headers go; from everyone, forwarding
//!    headers go except, from trusted peers, `X-Forwarded-For` and `X-Forwarded-Proto`.
//!    cachegate sets `X-Forwarded-For`, `X-Forwarded-Proto` (and `X-Forwarded-Host` with
//!    `preserve_host`) itself; what the origin learns of the site is keyed ([`Inbound::site`]).
//! 5. Cookies are re-serialised as parsed (`a=1; b=2`, one header), so the origin cannot read
//!    a cookie differently from identity, without `strip_cookies`; the non-credential ones are
//!    kept for `Vary: Cookie`.

use std::net::IpAddr;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Version};

use super::Proxy;
use crate::error::ProxyError;
use crate::identity;
use crate::message::headers;

const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// What normalisation learnt about a request.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    /// Whether the peer may set identity and forwarding headers.
    pub(crate) trusted: bool,
    /// The host the client addressed (lower-cased authority).
    pub(crate) client_host: Option<HeaderValue>,
    /// The scheme forwarded in `X-Forwarded-Proto`: `http`, or what a trusted peer said.
    pub(crate) proto: HeaderValue,
    /// What the origin learns of the site beyond its own address, as a key component: the
    /// client's host with `preserve_host`, a scheme other than `http`; empty otherwise.
    pub(crate) site: String,
    /// The request's non-credential cookies as forwarded, keyed when the origin says
    /// `Vary: Cookie` (credential cookies are answered by identity keying).
    pub(crate) keyed_cookies: String,
}

impl Proxy {
    /// Normalises `req` in place (see the module documentation).
    ///
    /// # Errors
    /// [`ProxyError::BadRequest`] for a missing, repeated or malformed `Host`.
    pub(super) fn normalize<B>(&self, req: &mut Request<B>, peer: IpAddr, secure: bool) -> Result<Inbound, ProxyError> {
        let trusted = self.identity.trusts(peer);
        let client_host = client_host(req)?;
        let h = req.headers_mut();
        headers::strip_hop_by_hop_and(h, |n| {
            n.as_str().contains('_')
                || (!trusted && self.identity.header_names().any(|i| i == n))
                || is_dropped_forwarding(n, trusted)
        });
        // The connection's own scheme, unless a trusted proxy in front says what the client used.
        let proto = trusted.then(|| forwarded_proto(h)).flatten().unwrap_or(if secure {
            HeaderValue::from_static("https")
        } else {
            HeaderValue::from_static("http")
        });
        let keyed_cookies = if headers::has(h, &header::COOKIE) {
            self.reserialise_cookies(h)
        } else {
            String::new()
        };
        let preserve = self.origin.config().preserve_host;
        let site = match (&client_host, preserve) {
            (Some(host), true) => format!("{}://{}", as_text(&proto), as_text(host)),
            _ if proto != "http" => as_text(&proto).to_string(),
            _ => String::new(),
        };
        Ok(Inbound {
            trusted,
            client_host,
            proto,
            site,
            keyed_cookies,
        })
    }

    /// Rewrites the cookies into one header as parsed; returns the non-credential ones.
    fn reserialise_cookies(&self, h: &mut HeaderMap) -> String {
        let mut all = String::new();
        let mut keyed = String::new();
        for (name, value) in identity::cookie_pairs(h) {
            if self.identity.strips_cookie(name) {
                continue;
            }
            for out in [
                Some(&mut all),
                (!self.identity.is_credential_cookie(name)).then_some(&mut keyed),
            ]
            .into_iter()
            .flatten()
            {
                if !out.is_empty() {
                    out.push_str("; ");
                }
                out.push_str(name);
                out.push('=');
                out.push_str(value);
            }
        }
        h.remove(header::COOKIE);
        if let Ok(v) = HeaderValue::from_str(&all) {
            if !all.is_empty() {
                h.insert(header::COOKIE, v);
            }
        }
        keyed
    }
}

/// The authority the client addressed: the request target's (absolute form, HTTP/2), else the
/// one `Host` header. HTTP/1.1 requires it. Checked by hand rather than parsed into an
/// `Authority`: this runs for every request, and the usual `Host` needs no copy.
fn client_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let value = match (req.uri().authority(), host) {
        (Some(a), _) => HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::BadRequest("invalid Host header"))?,
        (None, Some(h)) => h.clone(),
        (None, None) if req.version() == Version::HTTP_11 => {
            return Err(ProxyError::BadRequest("HTTP/1.1 request without Host"))
        }
        (None, None) => return Ok(None),
    };
    let bytes = value.as_bytes();
    // RFC 3986 authority characters, without userinfo (`@`) or path (`/`).
    let valid = !bytes.is_empty()
        && bytes.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'.' | b'-'
                        | b'_'
                        | b'~'
                        | b':'
                        | b'['
                        | b']'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        });
    if !valid {
        return Err(ProxyError::BadRequest("invalid Host header"));
    }
    if bytes.iter().any(u8::is_ascii_uppercase) {
        let lower = HeaderValue::from_bytes(&bytes.to_ascii_lowercase())
            .map_err(|_| ProxyError::BadRequest("invalid Host header"))?;
        return Ok(Some(lower));
    }
    Ok(Some(value))
}

/// A trusted peer's `X-Forwarded-Proto`: its first value, when it is a plain scheme token.
fn forwarded_proto(h: &HeaderMap) -> Option<HeaderValue> {
    let v = h.get(headers::X_FORWARDED_PROTO)?.to_str().ok()?;
    let first = v.split(',').next()?.trim().to_ascii_lowercase();
    let plain = !first.is_empty()
        && first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    plain.then(|| HeaderValue::from_str(&first).ok()).flatten()
}

/// Forwarding headers the origin could build URLs or trust decisions from. Only the two that
/// cachegate keys or deliberately does not key (the client address) survive, and only from
/// trusted peers; cachegate sets its own.
fn is_dropped_forwarding(n: &HeaderName, trusted: bool) -> bool {
    if *n == FORWARDED || *n == X_REAL_IP || *n == headers::X_FORWARDED_HOST {
        return true;
    }
    if !n.as_str().starts_with("x-forwarded-") {
        return false;
    }
    !(trusted && (*n == headers::X_FORWARDED_FOR || *n == headers::X_FORWARDED_PROTO))
}

fn as_text(v: &HeaderValue) -> &str {
    v.to_str().unwrap_or("")
}
