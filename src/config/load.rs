//! Turning the spanned TOML document into a [`Config`], one section at a time: the readers of
//! fields that need more than a type (the origin URL, Redis URLs, cookie names), and the
//! `[[route]]`, `[[invalidate]]` and `[warm]` tables, whose checks relate their fields to each
//! other.

use std::path::{Path, PathBuf};

use http::Method;
use ipnet::IpNet;
use toml_span::value::ValueInner;

use super::reader::{parse_duration, Ctx, Field, Section, Spanned};
use super::*;

/// Parses and validates config text; `file` is used in messages.
///
/// # Errors
/// [`ConfigError`] listing every problem with its line and key.
pub fn from_str(src: &str, file: &Path) -> Result<Config, ConfigError> {
    let mut ctx = Ctx::new(src);
    let config = match toml_span::parse(src) {
        Ok(root) => read_root(&mut ctx, root, file),
        Err(e) => {
            let key = match &e.kind {
                toml_span::ErrorKind::DuplicateKey { key, .. } => key.clone(),
                toml_span::ErrorKind::DuplicateTable { name, .. } => name.clone(),
                _ => "(syntax)".to_string(),
            };
            ctx.issue(e.span.start, &key, format!("invalid TOML: {e}"));
            None
        }
    };
    let mut issues = ctx.issues;
    issues.sort_by_key(|i| i.line);
    match config {
        Some(config) if issues.is_empty() => Ok(config),
        _ => Err(ConfigError {
            file: file.to_path_buf(),
            issues,
            io: None,
        }),
    }
}

fn read_root(ctx: &mut Ctx<'_>, root: toml_span::Value<'_>, file: &Path) -> Option<Config> {
    let mut root = Section::open(ctx, String::new(), root)?;
    let server = section(ctx, &mut root, "server").map(|s| ServerConfig::read(ctx, s));
    let origin = match root.table(ctx, "origin") {
        Some(s) => OriginConfig::read(ctx, s),
        None => {
            ctx.issue(
                0,
                "origin",
                "missing [origin] table (expected at least `url = \"http://127.0.0.1:8000\"`)",
            );
            None
        }
    };
    let cache = section(ctx, &mut root, "cache").map(|s| CacheConfig::read(ctx, s));
    let identity = section(ctx, &mut root, "identity").map(|s| IdentityConfig::read(ctx, s));
    let purge = section(ctx, &mut root, "purge").map(|s| PurgeConfig::read(ctx, s));
    let admin = section(ctx, &mut root, "admin").map(|s| AdminConfig::read(ctx, s));
    let metrics = section(ctx, &mut root, "metrics").map(|s| MetricsConfig::read(ctx, s));
    let routes: Vec<_> = root
        .tables(ctx, "route")
        .into_iter()
        .filter_map(|s| route(ctx, s))
        .collect();
    let invalidations: Vec<_> = root
        .tables(ctx, "invalidate")
        .into_iter()
        .filter_map(|s| invalidate(ctx, s))
        .collect();
    let warm = root.table(ctx, "warm").and_then(|s| warm(ctx, s));
    root.finish(ctx);
    check_unique_routes(ctx, &routes);
    if let Some(Some(id)) = &identity {
        check_identity_mappings(ctx, id, &routes);
    }
    Some(Config {
        file: file.to_path_buf(),
        server: server??,
        origin: origin?,
        cache: cache??,
        identity: identity??,
        purge: purge??,
        admin: admin??,
        routes: routes.into_iter().map(|(r, _, _)| r).collect(),
        invalidations,
        warm,
        metrics: metrics??,
    })
}

/// An optional top-level table; absent tables read as empty so defaults apply.
fn section<'de>(ctx: &mut Ctx<'_>, root: &mut Section<'de>, key: &'static str) -> Option<Section<'de>> {
    let present = root.take(key);
    match present {
        Some(f) => Section::open(ctx, f.key, f.value),
        None => Some(Section::empty(key)),
    }
}

/// Most tenants `tenant_labels` may name or track: each adds a handful of series.
const MAX_TENANT_LABELS: usize = 1000;

/// `tenant_labels = ["1", "2"]` or `{ top = 20 }`.
pub(super) fn tenant_labels(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<TenantLabels> {
    const WANT: &str = "expected a list of tenants like [\"1\", \"2\"] or { top = 20 }";
    if matches!(f.value.as_ref(), ValueInner::Array(_)) {
        let names: Vec<String> = f.into_strings(ctx)?.into_iter().map(|s| s.value).collect();
        return Some(TenantLabels::Named(names));
    }
    let (offset, key) = (f.offset, f.key.clone());
    let mut t = Section::open(ctx, f.key, f.value)?;
    let top = t.take("top");
    t.finish(ctx);
    let n = match top.as_ref().map(|f| f.value.as_ref()) {
        Some(ValueInner::Integer(n)) => *n,
        _ => {
            ctx.issue(offset, &key, WANT);
            return None;
        }
    };
    if !(1..=MAX_TENANT_LABELS as i64).contains(&n) {
        ctx.issue(
            offset,
            &key,
            format!("top must be between 1 and {MAX_TENANT_LABELS}, found {n}"),
        );
        return None;
    }
    Some(TenantLabels::Top(n as usize))
}

/// A share such as "10%": above 0, at most 100.
pub(super) fn share(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<f64> {
    let s = f.into_string(ctx)?;
    let pct = s
        .value
        .trim()
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok());
    match pct {
        Some(p) if p > 0.0 && p <= 100.0 => Some(p / 100.0),
        _ => {
            ctx.issue(
                s.offset,
                &s.key,
                format!(
                    "expected a share like \"10%\" (above 0%, at most 100%), found {:?}",
                    s.value
                ),
            );
            None
        }
    }
}

/// `tls = { cert, key, client_ca }`: `cert` and `key` both or neither.
pub(super) fn tls(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<TlsConfig> {
    let mut t = Section::open(ctx, f.key, f.value)?;
    let cert = t.string(ctx, "cert");
    let key = t.string(ctx, "key");
    let client_ca = t.string(ctx, "client_ca").map(|c| PathBuf::from(c.value));
    let path = t.path.clone();
    let offset = t.offset();
    t.finish(ctx);
    match (cert, key) {
        (Some(c), Some(k)) => Some(TlsConfig {
            cert: PathBuf::from(c.value),
            key: PathBuf::from(k.value),
            client_ca,
        }),
        _ => {
            ctx.issue(offset, &path, "expected both `cert` and `key` (PEM file paths)");
            None
        }
    }
}

/// An `http://host:port` URL; its authority is checked here so the section can take it as given.
pub(super) fn origin_url(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<http::Uri> {
    let u = f.into_string(ctx)?;
    let parsed: http::Uri = match u.value.parse() {
        Ok(p) => p,
        Err(e) => {
            ctx.issue(
                u.offset,
                &u.key,
                format!(
                    "expected a URL like \"http://127.0.0.1:8000\", found {:?} ({e})",
                    u.value
                ),
            );
            return None;
        }
    };
    if !matches!(parsed.scheme_str(), Some("http" | "https")) {
        ctx.issue(
            u.offset,
            &u.key,
            format!("expected an http:// or https:// URL, found {:?}", u.value),
        );
        return None;
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
        ctx.issue(
            u.offset,
            &u.key,
            "expected scheme, host and port only (a path prefix is not supported)",
        );
        return None;
    }
    if parsed.authority().is_none() {
        ctx.issue(u.offset, &u.key, "expected a host in the URL");
        return None;
    }
    Some(parsed)
}

/// A response field name, or `""` for none.
pub(super) fn targeted_field(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<Option<http::HeaderName>> {
    let s = f.into_string(ctx)?;
    if s.value.is_empty() {
        return Some(None);
    }
    match http::HeaderName::from_bytes(s.value.as_bytes()) {
        // Named like the targeted fields of RFC 9213 ("CDN-Cache-Control"), and not one of
        // them: it is removed from every answer, so it must not be a field clients need.
        Ok(name) if name.as_str().ends_with("-cache-control") && name.as_str() != "cdn-cache-control" => {
            Some(Some(name))
        }
        Ok(_) => {
            ctx.issue(
                s.offset,
                &s.key,
                "expected a field of its own named like \"Cachegate-Cache-Control\" (ending in -Cache-Control, not CDN-Cache-Control), or \"\"",
            );
            None
        }
        Err(_) => {
            ctx.issue(
                s.offset,
                &s.key,
                "expected a header field name, e.g. \"Cachegate-Cache-Control\", or \"\"",
            );
            None
        }
    }
}

pub(super) fn key_prefix(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<String> {
    let p = f.into_string(ctx)?;
    // Braces would change the Redis Cluster hash tag the prefix is used as.
    if p.value.is_empty()
        || p.value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
    {
        ctx.issue(
            p.offset,
            &p.key,
            "expected a non-empty prefix without spaces or braces, e.g. \"myapp:v1\"",
        );
    }
    Some(p.value)
}

pub(super) fn redis_urls(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<Vec<String>> {
    let (offset, key) = (f.offset, f.key.clone());
    let list = if f.value.as_str().is_some() {
        f.into_string(ctx).map(|s| vec![s])
    } else {
        f.into_strings(ctx)
    };
    let urls: Vec<String> = list.unwrap_or_default().into_iter().map(|s| s.value).collect();
    if let Err(e) = super::redis_target(&urls) {
        ctx.issue(offset, &key, e);
        return Some(Vec::new());
    }
    Some(urls)
}

/// A path to a file that can be read now.
pub(super) fn readable_file(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<std::path::PathBuf> {
    let s = f.into_string(ctx)?;
    if let Err(e) = std::fs::metadata(&s.value).and_then(|m| {
        if m.is_file() {
            Ok(())
        } else {
            Err(std::io::Error::other("not a file"))
        }
    }) {
        ctx.issue(s.offset, &s.key, format!("cannot read {:?}: {e}", s.value));
        return None;
    }
    Some(s.value.into())
}

pub(super) fn statuses(ctx: &mut Ctx<'_>, mut f: Field<'_>) -> Option<Vec<u16>> {
    let ValueInner::Array(items) = f.value.take() else {
        ctx.issue(f.offset, &f.key, "expected a list of status codes, e.g. [200, 404]");
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    for mut item in items {
        let offset = item.span.start;
        match item.take() {
            ValueInner::Integer(n) if (100..=599).contains(&n) => out.push(n as u16),
            _ => ctx.issue(offset, &f.key, "expected an HTTP status code between 100 and 599"),
        }
    }
    Some(out)
}

pub(super) fn nets(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<Vec<IpNet>> {
    let list = f.into_strings(ctx)?;
    Some(list.iter().filter_map(|n| parse_net(ctx, n)).collect())
}

pub(super) fn anonymous_role(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<String> {
    let a = f.into_string(ctx)?;
    if a.value.is_empty() {
        ctx.issue(a.offset, &a.key, "expected a non-empty role name");
    }
    Some(a.value)
}

pub(super) fn credential_cookies(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<CredentialCookies> {
    let list = f.into_strings(ctx)?;
    Some(if list.iter().any(|c| c.value == "*") {
        CredentialCookies::All
    } else {
        CredentialCookies::Named(list.into_iter().map(|c| c.value).collect())
    })
}

pub(super) fn strip_cookies(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<Vec<String>> {
    let list = f.into_strings(ctx)?;
    for c in &list {
        let name = c.value.strip_suffix('*').unwrap_or(&c.value);
        if name.is_empty() || name.contains(['*', ';', '=', ' ']) {
            ctx.issue(
                c.offset,
                &c.key,
                format!(
                    "expected a cookie name or a prefix ending in '*' (e.g. \"_ga*\"), found {:?}",
                    c.value
                ),
            );
        }
    }
    Some(list.into_iter().map(|c| c.value).collect())
}

fn parse_net(ctx: &mut Ctx<'_>, n: &Spanned<String>) -> Option<IpNet> {
    if let Ok(net) = n.value.parse::<IpNet>() {
        return Some(net);
    }
    if let Ok(ip) = n.value.parse::<std::net::IpAddr>() {
        return Some(IpNet::from(ip));
    }
    ctx.issue(
        n.offset,
        &n.key,
        format!(
            "expected a CIDR like \"10.0.0.0/8\" or an IP address, found {:?}",
            n.value
        ),
    );
    None
}

/// `[warm]`: every key checked here, so a bad entry is a start-up error rather than a warm failure.
fn warm(ctx: &mut Ctx<'_>, mut s: Section<'_>) -> Option<WarmConfig> {
    let (offset, interval_key) = (s.offset(), s.key_path("interval"));
    let interval = match s.string(ctx, "interval") {
        Some(i) => parse_duration(ctx, &i).filter(|d| {
            if d.is_zero() {
                ctx.issue(i.offset, &i.key, "expected a duration above zero, e.g. \"5m\"");
            }
            !d.is_zero()
        }),
        None => {
            if !ctx.issues.iter().any(|i| i.key == interval_key) {
                ctx.issue(
                    offset,
                    &interval_key,
                    "missing key (expected how often to warm, e.g. \"5m\")",
                );
            }
            None
        }
    };
    let paths = match s.take("paths") {
        Some(f) => {
            let (at, key) = (f.offset, f.key.clone());
            let list = f.into_strings(ctx);
            if list
                .as_ref()
                .is_some_and(|l| l.is_empty() || l.len() > super::warm_limits::MAX_PATHS)
            {
                let max = super::warm_limits::MAX_PATHS;
                ctx.issue(
                    at,
                    &key,
                    format!("expected between 1 and {max} paths, e.g. [\"/courses/\"]"),
                );
            }
            list
        }
        None => {
            let key = s.key_path("paths");
            ctx.issue(
                offset,
                &key,
                "missing key (expected the paths to warm, e.g. [\"/courses/\"])",
            );
            None
        }
    };
    for p in paths.iter().flatten() {
        if !p.value.starts_with('/') || p.value.parse::<http::uri::PathAndQuery>().is_err() {
            let msg = format!(
                "expected a path starting with '/', e.g. \"/courses/?page=1\", found {:?}",
                p.value
            );
            ctx.issue(p.offset, &p.key, msg);
        }
    }
    let mut names = |key: &'static str| {
        let list = s.strings(ctx, key).unwrap_or_default();
        for n in &list {
            if n.value.is_empty() || http::HeaderValue::from_str(&n.value).is_err() {
                ctx.issue(n.offset, &n.key, "expected a non-empty name usable as a header value");
            }
        }
        list.into_iter().map(|n| n.value).collect::<Vec<_>>()
    };
    let (roles, tenants) = (names("roles"), names("tenants"));
    let concurrency = s.take("concurrency").and_then(|mut f| match f.value.take() {
        ValueInner::Integer(n) if (1..=super::warm_limits::MAX_CONCURRENCY as i64).contains(&n) => Some(n as usize),
        _ => {
            let max = super::warm_limits::MAX_CONCURRENCY;
            ctx.issue(f.offset, &f.key, format!("expected a whole number from 1 to {max}"));
            None
        }
    });
    s.finish(ctx);
    Some(WarmConfig {
        interval: interval?,
        paths: paths?.into_iter().map(|p| p.value).collect(),
        roles,
        tenants,
        concurrency: concurrency.unwrap_or(super::warm_limits::DEFAULT_CONCURRENCY),
    })
}

fn pattern(ctx: &mut Ctx<'_>, s: &mut Section<'_>) -> Option<PathPattern> {
    let Some(p) = s.string(ctx, "path") else {
        ctx.issue(
            s.offset(),
            &s.key_path("path"),
            "missing key (expected a path pattern like \"/lectures/{id}/\")",
        );
        return None;
    };
    match PathPattern::new(&p.value) {
        Ok(pat) => Some(pat),
        Err(e) => {
            ctx.issue(p.offset, &p.key, format!("invalid path pattern {:?}: {e}", p.value));
            None
        }
    }
}

fn tags(ctx: &mut Ctx<'_>, s: &mut Section<'_>, path: Option<&PathPattern>) -> Vec<TagTemplate> {
    let list = s.strings(ctx, "tags").unwrap_or_default();
    let params = path.map(|p| p.param_names().to_vec()).unwrap_or_default();
    list.iter()
        .filter_map(|t| match TagTemplate::new(&t.value, &params) {
            Ok(tpl) => Some(tpl),
            Err(e) => {
                if path.is_some() {
                    ctx.issue(t.offset, &t.key, e.to_string());
                }
                None
            }
        })
        .collect()
}

/// Where a route's `vary` is (or would be) written, for messages about it.
struct VaryAt {
    offset: usize,
    key: String,
}

fn route(ctx: &mut Ctx<'_>, mut s: Section<'_>) -> Option<(RouteConfig, Spanned<String>, VaryAt)> {
    let offset = s.offset();
    let name = s.string(ctx, "name");
    if name.is_none() {
        ctx.issue(
            offset,
            &s.key_path("name"),
            "missing key (expected a unique route name like \"course_list\")",
        );
    }
    if let Some(n) = &name {
        let valid = !n.value.is_empty()
            && n.value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            ctx.issue(
                n.offset,
                &n.key,
                format!(
                    "expected letters, digits, '_', '-' or '.' (starting with a letter or digit), found {:?}",
                    n.value
                ),
            );
        }
    }
    // Messages about the other keys name the route as well as its index: the name is what a
    // user can search the file for.
    if let Some(n) = name.as_ref().filter(|n| !n.value.is_empty()) {
        s.path = format!("route {:?} ({})", n.value, s.path);
    }
    let path = pattern(ctx, &mut s);
    let ttl = s.string(ctx, "ttl").and_then(|t| {
        if t.value == "origin" {
            Some(Ttl::Origin)
        } else {
            parse_duration(ctx, &t).map(Ttl::Fixed)
        }
    });
    let vary_list = s.strings(ctx, "vary");
    let vary_at = VaryAt {
        offset: vary_list.as_ref().and_then(|l| l.first()).map_or(offset, |v| v.offset),
        key: s.key_path("vary"),
    };
    let vary = vary_list.as_ref().map(|v| vary(ctx, v));
    let query = s.take("query").and_then(|f| query(ctx, f));
    let tags = tags(ctx, &mut s, path.as_ref());
    let public = s.bool(ctx, "public").unwrap_or(false);
    if public && vary.is_some_and(|v| !v.is_empty()) {
        ctx.issue(
            vary_at.offset,
            &vary_at.key,
            "a `public = true` route's answer depends on nobody, so it cannot vary on role, tenant or user; remove `public` or set `vary = []`",
        );
    }
    let swr = s.duration(ctx, "stale_while_revalidate");
    let sie = s.duration(ctx, "stale_if_error");
    let strip_set_cookie = s.bool(ctx, "strip_set_cookie").unwrap_or(false);
    s.finish(ctx);
    let name = name?;
    Some((
        RouteConfig {
            name: name.value.clone(),
            path: path?,
            ttl: ttl.unwrap_or(Ttl::Origin),
            // A public route varies on nobody; any other route on role and tenant by default.
            vary: vary.unwrap_or(Vary {
                role: !public,
                tenant: !public,
                user: false,
            }),
            query: query.unwrap_or(QueryRule::All),
            tags,
            public,
            stale_while_revalidate: swr,
            stale_if_error: sie,
            strip_set_cookie,
        },
        name,
        vary_at,
    ))
}

fn vary(ctx: &mut Ctx<'_>, list: &[Spanned<String>]) -> Vary {
    let mut v = Vary::default();
    for item in list {
        let slot = match item.value.as_str() {
            "role" => &mut v.role,
            "tenant" => &mut v.tenant,
            "user" => &mut v.user,
            other => {
                ctx.issue(
                    item.offset,
                    &item.key,
                    format!("expected \"role\", \"tenant\" or \"user\", found {other:?}"),
                );
                continue;
            }
        };
        if *slot {
            ctx.issue(item.offset, &item.key, format!("{:?} is listed twice", item.value));
        }
        *slot = true;
    }
    v
}

fn query(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<QueryRule> {
    const WANT: &str = "expected \"all\", { include = [...] } or { ignore = [...] }";
    if let Some(s) = f.value.as_str() {
        if s == "all" {
            return Some(QueryRule::All);
        }
        ctx.issue(f.offset, &f.key, format!("{WANT}, found {s:?}"));
        return None;
    }
    let mut t = Section::open(ctx, f.key.clone(), f.value)?;
    let include = t.strings(ctx, "include");
    let ignore = t.strings(ctx, "ignore");
    t.finish(ctx);
    let names = |l: Vec<Spanned<String>>| l.into_iter().map(|s| s.value).collect();
    match (include, ignore) {
        (Some(i), None) => Some(QueryRule::Include(names(i))),
        (None, Some(i)) => Some(QueryRule::Ignore(names(i))),
        _ => {
            ctx.issue(f.offset, &f.key, format!("{WANT} (exactly one of include or ignore)"));
            None
        }
    }
}

fn invalidate(ctx: &mut Ctx<'_>, mut s: Section<'_>) -> Option<InvalidateConfig> {
    let methods = s.strings(ctx, "methods").map(|list| {
        list.iter()
            .filter_map(|m| match Method::from_bytes(m.value.as_bytes()) {
                Ok(method) if method.is_safe() => {
                    ctx.issue(m.offset, &m.key, format!("{} is a safe method and never invalidates; expected POST, PUT, PATCH, DELETE or another unsafe method", m.value));
                    None
                }
                Ok(method) => Some(method),
                Err(_) => {
                    ctx.issue(m.offset, &m.key, format!("expected an HTTP method, found {:?}", m.value));
                    None
                }
            })
            .collect::<Vec<_>>()
    });
    let path = pattern(ctx, &mut s);
    let has_tags = s.contains_key("tags");
    let tags = tags(ctx, &mut s, path.as_ref());
    if !has_tags {
        ctx.issue(
            s.offset(),
            &s.key_path("tags"),
            "missing key (expected the tags to purge, e.g. [\"courses\"])",
        );
    }
    let scope = s.string(ctx, "scope").and_then(|sc| match sc.value.as_str() {
        "tenant" => Some(PurgeScope::Tenant),
        "all" => Some(PurgeScope::All),
        other => {
            ctx.issue(
                sc.offset,
                &sc.key,
                format!("expected \"tenant\" or \"all\", found {other:?}"),
            );
            None
        }
    });
    s.finish(ctx);
    Some(InvalidateConfig {
        methods: methods.unwrap_or_else(|| vec![Method::POST, Method::PUT, Method::PATCH, Method::DELETE]),
        path: path?,
        tags,
        scope: scope.unwrap_or(PurgeScope::Tenant),
    })
}

fn check_unique_routes(ctx: &mut Ctx<'_>, routes: &[(RouteConfig, Spanned<String>, VaryAt)]) {
    for (i, (r, name, _)) in routes.iter().enumerate() {
        if routes[..i].iter().any(|(o, _, _)| o.name == r.name) {
            ctx.issue(
                name.offset,
                &name.key,
                format!("route name {:?} is used twice; names must be unique", r.name),
            );
        }
    }
}

/// Resolved or bypass, checked before start: a route that varies on `tenant` or `user` while an
/// enabled identity source cannot provide that part would bypass for every caller of that
/// source, which is almost always a forgotten claim or header name.
fn check_identity_mappings(ctx: &mut Ctx<'_>, id: &IdentityConfig, routes: &[(RouteConfig, Spanned<String>, VaryAt)]) {
    for (r, _, at) in routes {
        let mut missing: Vec<(&str, &str)> = Vec::new();
        if r.vary.tenant && id.jwt.as_ref().is_some_and(|j| j.tenant_claim.is_none()) {
            missing.push((
                "tenant",
                "[identity] jwt has no `tenant_claim` (e.g. tenant_claim = \"org_id\")",
            ));
        }
        if r.vary.user && !id.trust_headers_from.is_empty() && id.user_header.is_none() {
            missing.push((
                "user",
                "trusted identity headers carry no user: set [identity] `user_header` (e.g. \"X-User-Id\")",
            ));
        }
        for (part, why) in missing {
            ctx.issue(
                at.offset,
                &at.key,
                format!(
                    "route {:?} varies on {part}, but {why}; say where the {part} comes from, or drop {part:?} from this route's `vary`",
                    r.name
                ),
            );
        }
    }
}
