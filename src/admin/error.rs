//! The admin listener's one error: a status and a message, answered as `{"error": "…"}`.

use http::{Response, StatusCode};

use crate::message::body::ProxyBody;

/// A refused or failed admin request.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct AdminError {
    /// The answer's status.
    pub status: StatusCode,
    /// What the caller reads: the cause, never a secret.
    pub message: String,
}

impl AdminError {
    /// An error answered with `status`.
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        AdminError {
            status,
            message: message.into(),
        }
    }

    /// `400`: the request is malformed.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// The JSON answer, the only place admin errors become HTTP.
    pub(crate) fn into_response(self) -> Response<ProxyBody> {
        super::json(self.status, &serde_json::json!({ "error": self.message }))
    }
}
