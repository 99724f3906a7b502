//! The admin listener: health and readiness today; metrics and purge endpoints join it later.
//! It binds 127.0.0.1 by default and is separate from the public listener.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::config::Config;
use crate::proxy::body::ProxyBody;

/// Admin endpoints.
pub struct Admin {
    config: Arc<Config>,
}

impl Admin {
    /// Builds the admin handler.
    pub fn new(config: Arc<Config>) -> Self {
        Admin { config }
    }

    /// Routes one admin request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => self.ready().await,
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: the admin listener serves /healthz and /readyz\n".into(),
            ),
        }
    }

    /// Ready when the origin accepts a TCP connection.
    async fn ready(&self) -> Response<ProxyBody> {
        let authority = self.config.origin.authority.as_str();
        let addr = if self.config.origin.authority.port().is_some() {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let probe = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&addr)).await;
        match probe {
            Ok(Ok(_)) => text(StatusCode::OK, format!("ready: origin {addr} reachable\n")),
            Ok(Err(e)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: origin {addr}: {e}\n"),
            ),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: origin {addr}: connect timed out\n"),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
