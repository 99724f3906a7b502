//! The `[identity] jwt` and `lookup` tables: parsed and checked now so a config that names an
//! algorithm without a key, or a lookup without a cookie, fails at load time.

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use super::reader::{Ctx, Field, Section};
use super::{JwtConfig, LookupConfig};

const HMAC_ALGS: [&str; 3] = ["HS256", "HS384", "HS512"];
const KEY_ALGS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

pub(super) fn jwt(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<JwtConfig> {
    let mut t = Section::open(ctx, f.key, f.value)?;
    let offset = t.offset();
    let path = t.path.clone();
    let header = t.parsed::<HeaderName>(ctx, "header", "a header name");
    let cookie = t.string(ctx, "cookie").map(|c| c.value);
    let secret_env = t.string(ctx, "secret_env").map(|c| c.value);
    let public_key = t.string(ctx, "public_key").map(|c| PathBuf::from(c.value));
    let jwks_file = t.string(ctx, "jwks_file").map(|c| PathBuf::from(c.value));
    let algorithms = t.strings(ctx, "algorithms").unwrap_or_default();
    let role_claim = t.string(ctx, "role_claim").map(|c| c.value);
    let tenant_claim = t.string(ctx, "tenant_claim").map(|c| c.value);
    let user_claim = t.string(ctx, "user_claim").map(|c| c.value);
    let issuer = t.string(ctx, "issuer").map(|c| c.value);
    let audience = t.string(ctx, "audience").map(|c| c.value);
    let role_priority = t.strings(ctx, "role_priority").unwrap_or_default();
    t.finish(ctx);
    if header.is_some() && cookie.is_some() {
        ctx.issue(offset, &path, "expected either `header` or `cookie`, not both");
    }
    if algorithms.is_empty() {
        ctx.issue(
            offset,
            &format!("{path}.algorithms"),
            "missing key (expected e.g. [\"HS256\"])",
        );
    }
    for a in &algorithms {
        let hmac = HMAC_ALGS.contains(&a.value.as_str());
        if hmac && secret_env.is_none() {
            ctx.issue(
                a.offset,
                &a.key,
                format!("{} needs `secret_env` (the variable holding the secret)", a.value),
            );
        } else if KEY_ALGS.contains(&a.value.as_str()) {
            if public_key.is_none() && jwks_file.is_none() {
                ctx.issue(
                    a.offset,
                    &a.key,
                    format!("{} needs `public_key` (PEM file) or `jwks_file`", a.value),
                );
            }
        } else if !hmac {
            ctx.issue(
                a.offset,
                &a.key,
                format!(
                    "expected one of {}, {}, found {:?}",
                    HMAC_ALGS.join(", "),
                    KEY_ALGS.join(", "),
                    a.value
                ),
            );
        }
    }
    Some(JwtConfig {
        header,
        cookie,
        secret_env,
        public_key,
        jwks_file,
        algorithms: algorithms.into_iter().map(|a| a.value).collect(),
        role_claim: role_claim.unwrap_or_else(|| "role".to_string()),
        tenant_claim,
        user_claim: user_claim.unwrap_or_else(|| "sub".to_string()),
        issuer,
        audience,
        role_priority: role_priority.into_iter().map(|r| r.value).collect(),
    })
}

pub(super) fn lookup(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<LookupConfig> {
    let mut t = Section::open(ctx, f.key, f.value)?;
    let offset = t.offset();
    let key = t.path.clone();
    let path = t.string(ctx, "path");
    let cookie = t.string(ctx, "cookie");
    let ttl = t.duration(ctx, "ttl").unwrap_or(Duration::from_secs(60));
    let role_field = t.string(ctx, "role_field").map(|c| c.value);
    let tenant_field = t.string(ctx, "tenant_field").map(|c| c.value);
    let user_field = t.string(ctx, "user_field").map(|c| c.value);
    let reset_paths = t.strings(ctx, "reset_paths").unwrap_or_default();
    let reset_paths = reset_paths
        .iter()
        .filter_map(|p| match crate::route::PathPattern::new(&p.value) {
            Ok(pat) => Some(pat),
            Err(e) => {
                ctx.issue(p.offset, &p.key, format!("invalid path pattern {:?}: {e}", p.value));
                None
            }
        })
        .collect();
    t.finish(ctx);
    if let Some(p) = &path {
        if !p.value.starts_with('/') {
            ctx.issue(
                p.offset,
                &p.key,
                format!("expected an origin path starting with '/', found {:?}", p.value),
            );
        }
    } else {
        ctx.issue(
            offset,
            &format!("{key}.path"),
            "missing key (expected the origin's whoami path, e.g. \"/api/whoami/\")",
        );
    }
    if cookie.is_none() {
        ctx.issue(
            offset,
            &format!("{key}.cookie"),
            "missing key (expected the session cookie name, e.g. \"sessionid\")",
        );
    }
    Some(LookupConfig {
        path: path?.value,
        cookie: cookie?.value,
        ttl,
        role_field: role_field.unwrap_or_else(|| "role".to_string()),
        tenant_field: tenant_field.unwrap_or_else(|| "tenant".to_string()),
        user_field: user_field.unwrap_or_else(|| "user".to_string()),
        reset_paths,
    })
}
