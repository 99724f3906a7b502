//! Errors that become the public listener's HTTP answers, and the single place they do (the
//! admin listener has its own, `admin::AdminError`).
//!
//! Each variant says where it came from ([`ErrorSource`]); its status follows from that: the
//! client's fault is a 4xx, the origin's a 502/504. Bodies are short and name the cause, never
//! internal detail.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::message::body::ProxyBody;
use crate::message::path::PathError;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorSource {
    /// The client sent something we refuse.
    Downstream,
    /// The origin failed.
    Upstream,
}

/// Failures talking to the origin.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No response headers within `[origin] timeout`.
    #[error("origin timed out after {0:?}")]
    Timeout(Duration),
    /// TCP connect failed.
    #[error("origin connect failed: {0}")]
    Connect(String),
    /// The origin broke the exchange.
    #[error("origin request failed: {0}")]
    Request(String),
}

impl UpstreamError {
    /// Every [`kind`](Self::kind), so each `cachegate_origin_errors_total` series exists before
    /// the first failure.
    pub(crate) const KINDS: [&'static str; 3] = ["timeout", "connect", "request"];

    /// The `cachegate_origin_errors_total` label.
    pub(crate) fn kind(&self) -> &'static str {
        // Taken apart rather than spelled again, so the labels live in one list: a kind added
        // there stops this compiling until a variant returns it.
        let [timeout, connect, request] = Self::KINDS;
        match self {
            UpstreamError::Timeout(_) => timeout,
            UpstreamError::Connect(_) => connect,
            UpstreamError::Request(_) => request,
        }
    }
}

/// Anything that ends a request with a synthetic answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// A malformed or refused request.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A refused path.
    #[error("bad request: {0}")]
    BadPath(#[from] PathError),
    /// The origin failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl ProxyError {
    /// Who caused it.
    pub(crate) fn source_kind(&self) -> ErrorSource {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadPath(_) => ErrorSource::Downstream,
            ProxyError::Upstream(_) => ErrorSource::Upstream,
        }
    }

    /// The status it is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::Upstream(UpstreamError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::BadRequest(_) | ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// What the client is told: the cause, without the origin's OS error text (an address, an
    /// errno), which stays in the log.
    fn client_text(&self) -> String {
        match self {
            ProxyError::Upstream(UpstreamError::Timeout(d)) => format!("origin timed out after {d:?}"),
            ProxyError::Upstream(UpstreamError::Connect(_)) => "origin connect failed".to_string(),
            ProxyError::Upstream(UpstreamError::Request(_)) => "origin request failed".to_string(),
            e => e.to_string(),
        }
    }

    /// The synthetic answer.
    pub(crate) fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        match self.source_kind() {
            ErrorSource::Upstream => tracing::warn!(error = %self, "origin failure"),
            ErrorSource::Downstream => tracing::debug!(error = %self, "refused request"),
        }
        let body = Bytes::from(format!("{}\n", self.client_text()));
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}
