//! Verified JWTs as identity: HS* with a secret, RS*/PS*/ES*/EdDSA with a PEM key or a JWKS file.
//! A token that fails any check yields no identity at all.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::Claims;
use crate::config::JwtConfig;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// Verifies tokens and reads role, tenant and user from their claims.
pub struct JwtVerifier {
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
    /// A message naming the missing secret or unreadable key file.
    pub fn new(cfg: &JwtConfig, secret: Option<&str>) -> Result<Self, String> {
        let algorithms = cfg
            .algorithms
            .iter()
            .map(|a| {
                a.parse::<Algorithm>()
                    .map_err(|_| format!("unsupported JWT algorithm {a}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let needs_secret = algorithms
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
        let secret = match (needs_secret, secret) {
            (true, Some(s)) => Some(DecodingKey::from_secret(s.as_bytes())),
            (true, None) => {
                let var = cfg.secret_env.as_deref().unwrap_or("(unset)");
                return Err(format!(
                    "[identity] jwt: the variable {var} holding the HMAC secret is not set"
                ));
            }
            (false, _) => None,
        };
        let public = match &cfg.public_key {
            Some(path) => Some(load_pem(path, &algorithms)?),
            None => None,
        };
        let jwks = match &cfg.jwks_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("[identity] jwt jwks_file {}: {e}", path.display()))?;
                Some(
                    serde_json::from_str(&text)
                        .map_err(|e| format!("[identity] jwt jwks_file {}: {e}", path.display()))?,
                )
            }
            None => None,
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = cfg.audience.is_some();
        if let Some(aud) = &cfg.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
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

    /// Verifies `token` and extracts the identity claims.
    ///
    /// # Errors
    /// Why the token was refused (never logged with the token itself).
    pub fn verify(&self, token: &str, anonymous: &str) -> Result<Claims, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        if !self.algorithms.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
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
                    .ok_or("no JWKS key for the token's kid")?;
                    from_jwk = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
                    Some(&from_jwk)
                }
                (None, None) => None,
            },
        }
        .ok_or("no key for the token's algorithm")?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let data = jsonwebtoken::decode::<Value>(token, key, &validation).map_err(|e| e.to_string())?;
        self.claims(&data.claims, anonymous)
    }

    fn claims(&self, claims: &Value, anonymous: &str) -> Result<Claims, String> {
        let role = match lookup(claims, &self.cfg.role_claim) {
            None | Some(Value::Null) => anonymous.to_string(),
            Some(Value::Array(list)) => self.pick_role(list)?,
            Some(v) => scalar(v).ok_or("role claim is not a string")?,
        };
        let tenant = self
            .cfg
            .tenant_claim
            .as_deref()
            .and_then(|c| lookup(claims, c))
            .and_then(scalar);
        let user = self
            .cfg
            .user_claim
            .as_deref()
            .and_then(|c| lookup(claims, c))
            .and_then(scalar);
        Ok(Claims { role, tenant, user })
    }

    /// A list-valued role claim: the first of `role_priority` it contains, or its only element.
    fn pick_role(&self, list: &[Value]) -> Result<String, String> {
        let roles: Vec<String> = list.iter().filter_map(scalar).collect();
        if let Some(r) = self.cfg.role_priority.iter().find(|p| roles.contains(p)) {
            return Ok(r.clone());
        }
        match roles.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err("role claim lists several roles and none is in role_priority".into()),
        }
    }
}

fn load_pem(path: &std::path::Path, algorithms: &[Algorithm]) -> Result<DecodingKey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("[identity] jwt public_key {}: {e}", path.display()))?;
    let bad = |e: jsonwebtoken::errors::Error| format!("[identity] jwt public_key {}: {e}", path.display());
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
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `lookup` for other modules.
pub(super) fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    lookup(v, path)
}
