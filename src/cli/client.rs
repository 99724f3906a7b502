//! Finding the admin listener and the token, a small JSON client for it, and the errors the CLI
//! verbs report.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// Why a CLI verb failed; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Nothing answers at the admin address.
    #[error("cannot reach the admin listener at {addr}: is cachegate running? (set --admin)\n  cause: {cause}")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// The connection error.
        cause: String,
    },
    /// The server answered 401.
    #[error("the purge token was refused: check --token / ${var} (server said: {detail})")]
    TokenRefused {
        /// The variable the token was read from by default.
        var: String,
        /// The server's message.
        detail: String,
    },
    /// No token was given and the variable is unset.
    #[error("no purge token: pass --token or set ${var}")]
    NoToken {
        /// The variable looked at.
        var: String,
    },
    /// The server answered 403: no purge secret is configured there.
    #[error("the endpoint is disabled on {addr}: no purge secret is configured there; set [purge] token_env = \"CACHEGATE_PURGE_TOKEN\" in its config and that variable in its environment, restart it, and pass the same token here")]
    Disabled {
        /// The admin address.
        addr: String,
    },
    /// The server answered 400.
    #[error("the request was refused: {0}")]
    BadRequest(String),
    /// Any other failure of the operation.
    #[error("{0}")]
    Failed(String),
    /// Some warm requests failed (they are listed above the summary).
    #[error("{0} warm request(s) failed")]
    WarmFailures(usize),
    /// Bad flags, file or config.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// 64 for usage and configuration errors, 1 for everything else.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::NoToken { .. } => 64,
            _ => 1,
        }
    }
}

/// Talks JSON to one admin listener.
pub(super) struct AdminClient {
    addr: String,
    token: Option<String>,
    token_var: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    pub(super) fn new(addr: String, token: Option<String>, token_var: String) -> Self {
        AdminClient {
            addr,
            token,
            token_var,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends one request and returns the JSON answer of a 2xx; anything else is a [`CliError`].
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<serde_json::Value, CliError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| CliError::Usage(format!("cannot build a request to {}: {e}", self.addr)))?;
        let failed = |what: String| CliError::Failed(format!("admin listener at {}: {what}", self.addr));
        let resp = match tokio::time::timeout(timeout, self.client.request(req)).await {
            Err(_) => return Err(failed(format!("no answer within {}s", timeout.as_secs()))),
            Ok(Err(e)) if e.is_connect() => {
                let mut cause = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    cause = format!("{cause}: {s}");
                    source = s.source();
                }
                return Err(CliError::Unreachable {
                    addr: self.addr.clone(),
                    cause,
                });
            }
            Ok(Err(e)) => return Err(failed(format!("request failed: {e}"))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let bytes = match tokio::time::timeout(timeout, resp.into_body().collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return Err(failed(format!("answer unreadable: {e}"))),
            Err(_) => return Err(failed(format!("answer incomplete after {}s", timeout.as_secs()))),
        };
        let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        let detail = json
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(|e| e.as_str())
            .map_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string(), str::to_owned);
        match status {
            s if s.is_success() => json.ok_or_else(|| failed(format!("answer is not JSON: {detail}"))),
            StatusCode::UNAUTHORIZED => Err(CliError::TokenRefused {
                var: self.token_var.clone(),
                detail,
            }),
            StatusCode::FORBIDDEN => Err(CliError::Disabled {
                addr: self.addr.clone(),
            }),
            StatusCode::BAD_REQUEST => Err(CliError::BadRequest(detail)),
            StatusCode::NOT_FOUND => Err(failed(format!(
                "{path} not found: is this the admin listener of cachegate, and is cachegate recent enough? ({detail})"
            ))),
            s => Err(failed(format!("answered {s}: {detail}"))),
        }
    }
}

/// Resolves the admin address and token from the flags and, when they are not given, the config.
pub(super) fn connect(
    remote: &super::Remote,
    config: Option<&Path>,
    needs_token: bool,
) -> Result<AdminClient, CliError> {
    let needs_config = remote.admin.is_none() || (needs_token && remote.token.is_none());
    let loaded = if needs_config { load_config(config)? } else { None };
    let admin = match (&remote.admin, &loaded) {
        (Some(a), _) => a.trim_start_matches("http://").trim_end_matches('/').to_string(),
        (None, Some(c)) => loopback_if_unspecified(c.server.admin_listen).to_string(),
        (None, None) => super::DEFAULT_ADMIN.to_string(),
    };
    if admin.parse::<http::uri::Authority>().is_err() || !admin.contains(':') {
        return Err(CliError::Usage(format!(
            "--admin {admin:?}: expected host:port, e.g. 127.0.0.1:9091"
        )));
    }
    let var = loaded
        .and_then(|c| c.purge.token_env)
        .unwrap_or_else(|| super::DEFAULT_TOKEN_ENV.into());
    let token = remote
        .token
        .clone()
        .or_else(|| std::env::var(&var).ok().filter(|t| !t.is_empty()));
    if needs_token && token.is_none() {
        return Err(CliError::NoToken { var });
    }
    Ok(AdminClient::new(admin, token, var))
}

/// The config named by `--config`, or `proxy.toml` when it exists; `None` when the default is absent.
fn load_config(explicit: Option<&Path>) -> Result<Option<cachegate::config::Config>, CliError> {
    let path = explicit.unwrap_or(Path::new(super::DEFAULT_CONFIG));
    if explicit.is_none() && !path.exists() {
        return Ok(None);
    }
    cachegate::config::load(path).map(Some).map_err(|e| {
        CliError::Usage(format!(
            "{e}\n(the config is read for [server] admin_listen and [purge] token_env: fix it, or pass --admin ADDR and --token)"
        ))
    })
}

fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], a.port())),
        SocketAddr::V6(a) if a.ip().is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port())),
        a => a,
    }
}
