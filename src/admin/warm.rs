//! `POST /admin/warm`: authenticated exactly like `POST /purge` (bearer token or signature, 403
//! while no purge secret is set), then warms the listed paths for every role × tenant through the
//! public listener (see [`crate::warm`]) and answers with the counts once every request is done.

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{json, purge, Admin};
use crate::proxy::body::ProxyBody;
use crate::warm::{WarmJob, WarmRequest};

/// Largest warm body accepted (10,000 long paths fit).
const MAX_WARM_BODY: usize = 4 * 1024 * 1024;

fn error(status: StatusCode, msg: impl Into<String>) -> Response<ProxyBody> {
    json(status, &serde_json::json!({ "error": msg.into() }))
}

impl Admin {
    /// Handles `POST /admin/warm`.
    pub(super) async fn warm(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if !self.auth.enabled() {
            let msg = "warm endpoint disabled: it uses the purge credentials; set [purge] token_env or \
                       hmac_secret_env to a variable holding a secret";
            return error(StatusCode::FORBIDDEN, msg);
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_WARM_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "warm body over 4 MiB or unreadable"),
        };
        let redis = self.cache.redis().map(|r| r.as_ref());
        if let Err(purge::Refusal(status, msg)) = self.auth.check(&parts.headers, &body, redis).await {
            return error(status, msg);
        }
        let job = serde_json::from_slice::<WarmRequest>(&body)
            .map_err(|e| format!("invalid warm body: {e}"))
            .and_then(|r| WarmJob::new(r).map_err(|e| e.to_string()))
            .and_then(|j| self.warmer.check(&j).map(|()| j).map_err(|e| e.to_string()));
        let job = match job {
            Ok(j) => j,
            Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
        };
        let report = self.warmer.warm(&job).await;
        tracing::info!(
            warmed = report.warmed,
            already_cached = report.already_cached,
            failed = report.failed,
            "warm request done"
        );
        match serde_json::to_value(&report) {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the report: {e}"),
            ),
        }
    }
}
