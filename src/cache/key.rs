//! Cache keys: path and query normalisation, and the key string itself.
//!
//! `{prefix}:{route}:{path}:{query}:{role}:{tenant}:{user}:{vary}`. Every component after the path
//! is percent-encoded so it cannot contain `:`, which keeps the key unambiguous even though paths
//! may contain `:`. Keys longer than [`MAX_KEY_LEN`] are replaced by a SHA-256 digest.

use std::borrow::Cow;
use std::fmt::Write as _;

use http::{HeaderMap, HeaderName};
use percent_encoding::{percent_decode_str, percent_encode, utf8_percent_encode};
use sha2::{Digest, Sha256};

use crate::config::{QueryRule, Vary};
use crate::message::path::is_unreserved;
pub use crate::message::path::{normalize_path, PathError};
pub use crate::scope::encode_component;
use crate::scope::COMPONENT;

/// Keys longer than this are hashed.
pub const MAX_KEY_LEN: usize = 512;

/// Form decoding (`+` is a space) to bytes: two different invalid UTF-8 sequences must not
/// become the same key, as a lossy decode would make them.
fn form_decode(s: &str) -> Cow<'_, [u8]> {
    if !s.contains(['+', '%']) {
        return Cow::Borrowed(s.as_bytes());
    }
    let plus = s.replace('+', " ");
    Cow::Owned(percent_decode_str(&plus).collect())
}

/// Queries with more parameters than this are keyed whole, whatever the route's `query` rule.
pub const MAX_FILTERED_PARAMS: usize = 100;

/// A decoded query parameter; `None` for a name without `=`.
type QueryPair<'a> = (Cow<'a, [u8]>, Option<Cow<'a, [u8]>>);

/// Whether a query rule may leave this parameter out of the key. Only plain names can be left
/// out: a framework may read `page[]`, `pa.ge` or `x;page` as `page` (Rack, PHP), and a value
/// holding `;` is two parameters to parsers that split on it, so those are always keyed.
fn droppable(name: &[u8], value: Option<&[u8]>) -> bool {
    name.iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        && !value.is_some_and(|v| v.contains(&b';'))
}

/// The query part of a key: selected parameters decoded (form semantics), re-encoded canonically
/// and sorted by name, so `?b=2&a=1` and `?a=%31&b=2` give the same string. Repeated names keep
/// their relative order (origins read the last or the first value: `?page=2&page=1` is not
/// `?page=1&page=2`), and `?a` stays distinct from `?a=` (Rack reads nil and "").
pub fn normalize_query(raw: Option<&str>, rule: &QueryRule) -> String {
    let Some(raw) = raw.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    // Origins stop reading after a limit (Express and Node 1000 parameters, PHP
    // max_input_vars): parameters left out of the key could push a kept one past it.
    let rule = if raw.split('&').filter(|p| !p.is_empty()).count() > MAX_FILTERED_PARAMS {
        &QueryRule::All
    } else {
        rule
    };
    let mut pairs: Vec<QueryPair<'_>> = raw
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (name, value) = match p.split_once('=') {
                Some((n, v)) => (form_decode(n), Some(form_decode(v))),
                None => (form_decode(p), None),
            };
            let keep = !droppable(&name, value.as_deref()) || std::str::from_utf8(&name).is_ok_and(|n| rule.keeps(n));
            keep.then_some((name, value))
        })
        .collect();
    // Stable: equal names stay in request order.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::with_capacity(raw.len());
    for (i, (n, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.extend(percent_encode(n, COMPONENT));
        if let Some(v) = v {
            out.push('=');
            out.extend(percent_encode(v, COMPONENT));
        }
    }
    out
}

/// The identity parts that go into a key (already filtered by the route's `vary`).
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyIdentity<'a> {
    /// Role, when the route varies on it.
    pub role: Option<&'a str>,
    /// Tenant, when the route varies on it.
    pub tenant: Option<&'a str>,
    /// User, when the route varies on it.
    pub user: Option<&'a str>,
}

impl<'a> KeyIdentity<'a> {
    /// Keeps only the parts `vary` lists.
    pub fn select(vary: Vary, role: Option<&'a str>, tenant: Option<&'a str>, user: Option<&'a str>) -> Self {
        KeyIdentity {
            role: role.filter(|_| vary.role),
            tenant: tenant.filter(|_| vary.tenant),
            user: user.filter(|_| vary.user),
        }
    }
}

/// A key without the origin's `Vary` headers; `head` is the length of `{prefix}:{route}:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseKey {
    /// The key text.
    pub text: String,
    head: usize,
    /// Where the tenant component is in `text`, when the key has one.
    tenant: Option<(usize, usize)>,
}

/// Builds the base key (without the origin's `Vary` headers). `site` is what the origin learns
/// of the addressed site (see `Inbound::site`): usually empty, and then absent from the key;
/// otherwise encoded before the path, which starts with `/` and so cannot be confused with it.
pub fn base_key(prefix: &str, route: &str, site: &str, path: &str, query: &str, id: KeyIdentity<'_>) -> BaseKey {
    let mut k = String::with_capacity(prefix.len() + route.len() + site.len() + path.len() + query.len() + 48);
    for part in [prefix, ":", route, ":"] {
        k.push_str(part);
    }
    let head = k.len();
    if !site.is_empty() {
        push_component(&mut k, site);
        k.push(':');
    }
    for part in [path, ":", query, ":"] {
        k.push_str(part);
    }
    let mut tenant = None;
    for (i, part) in [id.role, id.tenant, id.user].into_iter().enumerate() {
        if let Some(v) = part {
            let start = k.len();
            push_component(&mut k, v);
            if i == 1 {
                tenant = Some((start, k.len()));
            }
        }
        k.push(':');
    }
    BaseKey { text: k, head, tenant }
}

/// Appends `v` percent-encoded; values that need no encoding (the usual case) are copied as is.
fn push_component(out: &mut String, v: &str) {
    if v.bytes().all(is_unreserved) {
        out.push_str(v);
    } else {
        out.extend(utf8_percent_encode(v, COMPONENT));
    }
}

impl BaseKey {
    /// The tenant the key is made with (percent-encoded), when the route varies on tenant.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.map(|(a, b)| &self.text[a..b])
    }

    /// The key when the origin's answer varies on no request header: the base key itself,
    /// unless it is too long and must be hashed.
    pub fn as_full_key(&self) -> Option<&str> {
        (self.text.len() <= MAX_KEY_LEN).then_some(self.text.as_str())
    }
}

/// What a request offers to the origin's `Vary`: its headers, and its cookies other than the
/// credentials that identity keying already answers.
#[derive(Debug, Clone, Copy)]
pub struct VaryInput<'a> {
    /// The normalised request headers.
    pub headers: &'a HeaderMap,
    /// Non-credential cookies, as forwarded.
    pub cookies: &'a str,
    /// Identity did not resolve the credentials (a `public` route ignores them), so an origin
    /// that varies on `Cookie` or `Authorization` is keyed on their whole value, as a digest:
    /// raw credentials never appear in keys.
    pub credentials_unresolved: bool,
}

/// Appends the request's values of the origin's `Vary` headers and hashes long keys.
/// `Cookie` is keyed by the non-credential cookies only.
pub fn full_key(base: &BaseKey, vary: &[HeaderName], input: VaryInput<'_>) -> String {
    let head = base.head;
    let mut base = if vary.is_empty() {
        base.text.clone()
    } else {
        let mut s = String::with_capacity(base.text.len() + 32 * vary.len());
        s.push_str(&base.text);
        s
    };
    for (i, name) in vary.iter().enumerate() {
        if i > 0 {
            base.push('&');
        }
        base.push_str(name.as_str());
        base.push('=');
        let credential = *name == http::header::COOKIE || *name == http::header::AUTHORIZATION;
        if credential && input.credentials_unresolved {
            push_digest(&mut base, input.headers.get_all(name).iter().map(|v| v.as_bytes()));
            continue;
        }
        if *name == http::header::COOKIE {
            base.extend(utf8_percent_encode(input.cookies, COMPONENT));
            continue;
        }
        for (j, v) in input.headers.get_all(name).iter().enumerate() {
            if j > 0 {
                base.push(',');
            }
            base.extend(percent_encode(trim_bytes(v.as_bytes()), COMPONENT));
        }
    }
    hash_if_long(base, head)
}

/// A SHA-256 of the values (nothing when there are none, so callers without them share).
fn push_digest<'v>(out: &mut String, values: impl Iterator<Item = &'v [u8]>) {
    let mut hasher = Sha256::new();
    let mut any = false;
    for v in values {
        hasher.update(v);
        hasher.update(b"\n");
        any = true;
    }
    if any {
        for b in hasher.finalize() {
            let _ = write!(out, "{b:02x}");
        }
    }
}

fn trim_bytes(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn hash_if_long(key: String, head: usize) -> String {
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let digest = Sha256::digest(key.as_bytes());
    // Keep prefix and route readable so operators can still tell keys apart.
    let mut out = format!("{}#", &key[..head]);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_normalisation() {
        let all = QueryRule::All;
        assert_eq!(normalize_query(Some("b=2&a=1"), &all), "a=1&b=2");
        assert_eq!(normalize_query(Some("a=%31&b=2"), &all), "a=1&b=2");
        assert_eq!(normalize_query(Some("q=a+b"), &all), "q=a%20b");
        assert_eq!(normalize_query(Some("x=a:b"), &all), "x=a%3Ab");
        let inc = QueryRule::Include(vec!["page".into()]);
        assert_eq!(normalize_query(Some("utm=1&page=2"), &inc), "page=2");
    }

    #[test]
    fn repeated_query_parameters_keep_their_order() {
        let all = QueryRule::All;
        assert_eq!(normalize_query(Some("page=2&b=1&page=1"), &all), "b=1&page=2&page=1");
        assert_ne!(
            normalize_query(Some("page=2&page=1"), &all),
            normalize_query(Some("page=1&page=2"), &all)
        );
    }

    #[test]
    fn query_names_a_framework_may_read_differently_are_always_keyed() {
        let inc = QueryRule::Include(vec!["page".into()]);
        assert_eq!(normalize_query(Some("page%5B%5D=2"), &inc), "page%5B%5D=2");
        assert_eq!(normalize_query(Some("x=1;page=2"), &inc), "x=1%3Bpage%3D2");
        assert_eq!(normalize_query(Some("a=1"), &inc), "");
        assert_ne!(
            normalize_query(Some("a"), &QueryRule::All),
            normalize_query(Some("a="), &QueryRule::All)
        );
        assert_ne!(
            normalize_query(Some("q=%FF"), &QueryRule::All),
            normalize_query(Some("q=%FE"), &QueryRule::All)
        );
    }

    #[test]
    fn long_queries_are_keyed_whole() {
        let inc = QueryRule::Include(vec!["page".into()]);
        let mut q: Vec<String> = (0..MAX_FILTERED_PARAMS).map(|i| format!("u{i}=x")).collect();
        q.push("page=2".into());
        let key = normalize_query(Some(&q.join("&")), &inc);
        assert!(key.contains("u0=x") && key.contains("page=2"), "{key}");
        assert_eq!(normalize_query(Some("u0=x&page=2"), &inc), "page=2");
    }

    #[test]
    fn long_keys_are_hashed() {
        let long = "x".repeat(2 * MAX_KEY_LEN);
        let headers = HeaderMap::new();
        let input = VaryInput {
            headers: &headers,
            cookies: "",
            credentials_unresolved: false,
        };
        let k = full_key(
            &base_key("p:v1", "r", "", &format!("/{long}"), "", KeyIdentity::default()),
            &[],
            input,
        );
        assert!(k.starts_with("p:v1:r:#"), "{k}");
        assert_eq!(k.len(), "p:v1:r:#".len() + 64);
    }
}
