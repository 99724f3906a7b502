//! Secrets named by the config (`*_env` keys), read once at start-up so nothing else touches the
//! environment. Tests pass them directly.

use crate::config::Config;

/// Every secret cachegate uses.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// Bearer token for `POST /purge`.
    pub purge_token: Option<String>,
    /// HMAC key for signed purge webhooks.
    pub purge_hmac: Option<String>,
    /// HMAC key for HS256/384/512 JWTs.
    pub jwt_secret: Option<String>,
    /// Bearer token for the status page, `/admin/stats` and `/metrics`.
    pub admin_token: Option<String>,
}

fn var(name: Option<&String>) -> Option<String> {
    let v = std::env::var(name?).ok()?;
    (!v.is_empty()).then_some(v)
}

impl Secrets {
    /// Reads the variables the config names; unset or empty variables give `None`.
    pub fn from_env(config: &Config) -> Self {
        Secrets {
            purge_token: var(config.purge.token_env.as_ref()),
            purge_hmac: var(config.purge.hmac_secret_env.as_ref()),
            jwt_secret: var(config.identity.jwt.as_ref().and_then(|j| j.secret_env.as_ref())),
            admin_token: var(config.admin.token_env.as_ref()),
        }
    }
}
