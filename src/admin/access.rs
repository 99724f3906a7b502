//! Who may read the admin listener's pages (the status page, `/admin/stats`, `/metrics`).
//!
//! On a loopback `admin_listen` they are open, as they always were: only this host reaches
//! them. Anywhere else they carry traffic figures, route names and tags, so they need a bearer
//! token (the purge token, or `[admin] token_env`'s) unless the operator says `[admin] open =
//! true`. A non-loopback listener with neither is refused at start-up rather than served open.
//! `/healthz` and `/readyz` stay open for probes.

use std::net::SocketAddr;

use http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use super::AdminError;
use crate::config::Config;
use crate::secrets::Secrets;

/// How the read-only pages are guarded.
#[derive(Clone)]
pub(crate) enum Access {
    /// Served to anyone who reaches the listener; the reason, for the start-up line.
    Open(&'static str),
    /// Served to a request with `Authorization: Bearer` and one of these tokens.
    Token(Vec<Vec<u8>>),
}

impl std::fmt::Debug for Access {
    // Never the tokens themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Open(why) => write!(f, "Open({why})"),
            Access::Token(t) => write!(f, "Token({} accepted)", t.len()),
        }
    }
}

/// Why the admin listener cannot be started as configured.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessError {
    /// Not loopback, no token, no opt-out.
    #[error("{file}: [server] admin_listen = {addr} is not a loopback address, so the status page, /admin/stats and /metrics need a credential: set [admin] token_env (or [purge] token_env) to a variable holding a token and export it, or set [admin] open = true to serve them to anyone who reaches {addr}")]
    Unprotected {
        /// The config file.
        file: String,
        /// `admin_listen`.
        addr: SocketAddr,
    },
    /// `open = true` next to a token of its own: one of them is a mistake.
    #[error("{file}: [admin] open = true and [admin] token_env both set: drop token_env to serve the pages openly, or open to require the token")]
    OpenWithToken {
        /// The config file.
        file: String,
    },
}

impl Access {
    /// The rule for `config` with `secrets`.
    ///
    /// # Errors
    /// A non-loopback listener with no credential and no opt-out; `open` next to `token_env`.
    pub(crate) fn decide(config: &Config, secrets: &Secrets) -> Result<Access, AccessError> {
        let file = config.file.display().to_string();
        let addr = config.server.admin_listen;
        if config.admin.open && config.admin.token_env.is_some() {
            return Err(AccessError::OpenWithToken { file });
        }
        let loopback = addr.ip().to_canonical().is_loopback();
        let tokens: Vec<Vec<u8>> = [&secrets.admin_token, &secrets.purge_token]
            .into_iter()
            .flatten()
            .map(|t| t.as_bytes().to_vec())
            .collect();
        if config.admin.open {
            return Ok(Access::Open("[admin] open = true"));
        }
        // An admin token of its own is asked for even on loopback: the operator set one.
        if loopback && secrets.admin_token.is_none() {
            return Ok(Access::Open("loopback admin_listen"));
        }
        if tokens.is_empty() {
            return Err(AccessError::Unprotected { file, addr });
        }
        Ok(Access::Token(tokens))
    }

    /// The start-up line saying which rule applies.
    pub(crate) fn describe(&self) -> String {
        match self {
            Access::Open(why) => format!("status page, /admin/stats and /metrics open ({why})"),
            Access::Token(_) => {
                "status page, /admin/stats and /metrics need Authorization: Bearer <token> ([admin] or [purge] token)"
                    .into()
            }
        }
    }

    /// Lets a request through, or says why not.
    ///
    /// # Errors
    /// 401 without a bearer token or with a wrong one.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), AdminError> {
        let Access::Token(tokens) = self else {
            return Ok(());
        };
        let unauthorized = |m: &str| AdminError::new(StatusCode::UNAUTHORIZED, m);
        let Some(given) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return Err(unauthorized(
                "this admin listener is not on loopback: send Authorization: Bearer <token> ([admin] token_env or [purge] token_env)",
            ));
        };
        // Every token is compared, so the time taken does not say which one came close.
        let matched = tokens
            .iter()
            .fold(0u8, |any, t| any | u8::from(bool::from(given.ct_eq(t))));
        if matched == 1 {
            Ok(())
        } else {
            Err(unauthorized("wrong bearer token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, admin: &str) -> Config {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"{listen}\"\n[origin]\nurl = \"http://127.0.0.1:1\"\n{admin}"
        );
        crate::config::from_str(&text, std::path::Path::new("proxy.toml")).expect("valid config")
    }

    fn secrets(purge: Option<&str>, admin: Option<&str>) -> Secrets {
        Secrets {
            purge_token: purge.map(Into::into),
            admin_token: admin.map(Into::into),
            ..Default::default()
        }
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
        h
    }

    #[test]
    fn loopback_is_open_unless_an_admin_token_is_set() {
        for addr in ["127.0.0.1:9091", "[::1]:9091", "127.0.0.2:9091"] {
            let a = Access::decide(&config(addr, ""), &secrets(Some("p"), None)).unwrap();
            assert!(matches!(a, Access::Open(_)), "{addr}: {a:?}");
        }
        let a = Access::decide(&config("127.0.0.1:9091", ""), &secrets(Some("p"), Some("a"))).unwrap();
        assert!(a.check(&HeaderMap::new()).is_err());
        assert!(a.check(&bearer("a")).is_ok());
        assert!(a.check(&bearer("p")).is_ok(), "the purge token is a credential too");
    }

    #[test]
    fn elsewhere_a_token_is_required_or_the_start_refused() {
        let a = Access::decide(&config("10.0.0.5:9091", ""), &secrets(Some("p"), None)).unwrap();
        assert_eq!(a.check(&HeaderMap::new()).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.check(&bearer("q")).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert!(a.check(&bearer("p")).is_ok());
        let e = Access::decide(&config("0.0.0.0:9091", ""), &secrets(None, None)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("proxy.toml: [server] admin_listen = 0.0.0.0:9091"),
            "{msg}"
        );
        assert!(
            msg.contains("[admin] token_env") && msg.contains("[admin] open = true"),
            "{msg}"
        );
    }

    #[test]
    fn the_opt_out_opens_a_non_loopback_listener() {
        let a = Access::decide(&config("0.0.0.0:9091", "[admin]\nopen = true\n"), &secrets(None, None)).unwrap();
        assert!(a.check(&HeaderMap::new()).is_ok());
        assert!(a.describe().contains("open = true"));
        let both = config("0.0.0.0:9091", "[admin]\nopen = true\ntoken_env = \"X\"\n");
        assert!(matches!(
            Access::decide(&both, &secrets(None, Some("a"))),
            Err(AccessError::OpenWithToken { .. })
        ));
    }
}
