//! Verified JWTs as identity: HS* with a secret, RS*/PS*/ES*/EdDSA with a PEM key or a JWKS file.
//! A token that fails any check yields no identity at all.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{Claims, Part, SetupError};
use crate::config::JwtConfig;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// Why a token was refused (said in debug logs, never with the token).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// Malformed, badly signed, expired, or missing a required claim.
    #[error("{0}")]
    Invalid(jsonwebtoken::errors::Error),
    /// An algorithm the config does not accept.
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(Algorithm),
    /// No key for the token's algorithm or `kid`.
    #[error("no key for the token's algorithm or kid")]
    NoKey,
}

/// Verifies tokens and reads role, tenant and user from their claims.
pub(crate) struct JwtVerifier {
    algorithms: Vec<Algorithm>,
    secret: Option<DecodingKey>,
    public: Option<DecodingKey>,
    jwks: Option<JwkSet>,
    validation: Validation,
    cfg: JwtConfig,
}

impl JwtVerifier {
    /// Loads keys named by the config.
    ///
    /// # Errors
    /// [`SetupError`] naming the missing secret or unreadable key file.
    pub(crate) fn new(cfg: &JwtConfig, secret: Option<&str>) -> Result<Self, SetupError> {
        let algorithms = cfg
            .algorithms
            .iter()
            .map(|a| a.parse::<Algorithm>().map_err(|_| SetupError::Algorithm(a.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let needs_secret = algorithms
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
        let secret = match (needs_secret, secret) {
            (true, Some(s)) => Some(DecodingKey::from_secret(s.as_bytes())),
            (true, None) => {
                let var = cfg.secret_env.as_deref().unwrap_or("(unset)").to_string();
                return Err(SetupError::MissingSecret { var });
            }
            (false, _) => None,
        };
        let public = match &cfg.public_key {
            Some(path) => Some(load_pem(path, &algorithms)?),
            None => None,
        };
        let jwks = match &cfg.jwks_file {
            Some(path) => {
                let bad = |reason: String| SetupError::KeyFile {
                    key: "jwks_file",
                    path: path.clone(),
                    reason,
                };
                let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
                Some(serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?)
            }
            None => None,
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = cfg.audience.is_some();
        // A configured issuer or audience is a required claim: a token that simply leaves it
        // out must not pass as one that carries the right value.
        if let Some(aud) = &cfg.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".to_string());
        }
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_string());
        }
        Ok(JwtVerifier {
            algorithms,
            secret,
            public,
            jwks,
            validation,
            cfg: cfg.clone(),
        })
    }

    /// Verifies `token` and extracts the identity claims; a part the token does not carry as
    /// a non-empty scalar is unresolved.
    ///
    /// # Errors
    /// Why the token was refused (never logged with the token itself).
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(TokenError::Invalid)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm(header.alg));
        }
        let from_jwk;
        let key = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.secret.as_ref(),
            _ => match (&self.public, &self.jwks) {
                (Some(k), _) => Some(k),
                (None, Some(set)) => {
                    let jwk = match &header.kid {
                        Some(kid) => set.find(kid),
                        None => set.keys.first(),
                    }
                    .ok_or(TokenError::NoKey)?;
                    from_jwk = DecodingKey::from_jwk(jwk).map_err(TokenError::Invalid)?;
                    Some(&from_jwk)
                }
                (None, None) => None,
            },
        }
        .ok_or(TokenError::NoKey)?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let data = jsonwebtoken::decode::<Value>(token, key, &validation).map_err(TokenError::Invalid)?;
        Ok(self.claims(&data.claims))
    }

    /// A verified token always names somebody: a missing role is unresolved, never the
    /// anonymous role, or a logged-in user's answer would be shared with visitors.
    fn claims(&self, claims: &Value) -> Claims {
        let role = match lookup(claims, &self.cfg.role_claim) {
            Some(Value::Array(list)) => self.pick_role(list),
            Some(v) => part(v),
            None => Part::Unresolved,
        };
        let tenant = match &self.cfg.tenant_claim {
            Some(c) => lookup(claims, c).map_or(Part::Unresolved, part),
            None => Part::Unresolved,
        };
        let user = lookup(claims, &self.cfg.user_claim).map_or(Part::Unresolved, part);
        Claims { role, tenant, user }
    }

    /// A list-valued role claim: the first of `role_priority` it contains, or its only element.
    fn pick_role(&self, list: &[Value]) -> Part {
        let roles: Vec<String> = list.iter().filter_map(scalar).collect();
        if let Some(r) = self.cfg.role_priority.iter().find(|p| roles.contains(p)) {
            return Part::Known(r.clone());
        }
        match roles.as_slice() {
            [only] if list.len() == 1 => Part::Known(only.clone()),
            _ => Part::Unresolved,
        }
    }
}

fn load_pem(path: &std::path::Path, algorithms: &[Algorithm]) -> Result<DecodingKey, SetupError> {
    let file_error = |reason: String| SetupError::KeyFile {
        key: "public_key",
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    let bad = |e: jsonwebtoken::errors::Error| file_error(e.to_string());
    if algorithms
        .iter()
        .any(|a| matches!(a, Algorithm::ES256 | Algorithm::ES384))
    {
        DecodingKey::from_ec_pem(&pem).map_err(bad)
    } else if algorithms.contains(&Algorithm::EdDSA) {
        DecodingKey::from_ed_pem(&pem).map_err(bad)
    } else {
        DecodingKey::from_rsa_pem(&pem).map_err(bad)
    }
}

/// A dotted claim path (`realm.role`).
fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, part| cur.get(part))
}

/// Strings as they are, numbers and booleans as text: user values compare as plain strings.
pub(super) fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A claim or field as an identity part: resolved only when it is a non-empty scalar.
pub(super) fn part(v: &Value) -> Part {
    scalar(v).map_or(Part::Unresolved, Part::Known)
}

/// `lookup` for other modules.
pub(super) fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    lookup(v, path)
}
