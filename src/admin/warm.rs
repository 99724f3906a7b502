//! `POST /admin/warm`: authenticated exactly like `POST /purge` (bearer token or signature, 403
//! while no purge secret is set), then warms the listed paths for every role × tenant through the
//! public listener (see [`crate::warm`]) and answers with the counts once every request is done.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{json, Admin, AdminError};
use crate::message::body::ProxyBody;
use crate::warm::{WarmJob, WarmRequest, MAX_PATHS};

/// Bytes budgeted per listed path, JSON quotes and comma included: room for an average path
/// and query of about 250 bytes, far longer than typical, while the total stays a few MiB.
const WARM_BYTES_PER_PATH: usize = 256;
/// Room for the roles, tenants and concurrency next to the paths.
const WARM_NAMES_BUDGET: usize = 64 * 1024;
/// Largest warm body accepted: [`MAX_PATHS`] paths at [`WARM_BYTES_PER_PATH`] each, plus the
/// names, about 2.5 MiB. Only a bearer-token request gets this far before being authenticated
/// (signed ones stop at [`super::MAX_SIGNED_BODY`]).
const MAX_WARM_BODY: usize = MAX_PATHS * WARM_BYTES_PER_PATH + WARM_NAMES_BUDGET;

impl Admin {
    /// Handles `POST /admin/warm`.
    pub(super) async fn warm(&self, req: Request<Incoming>) -> Result<Response<ProxyBody>, AdminError> {
        if !self.auth.enabled() {
            let msg = "warm endpoint disabled: it uses the purge credentials; set [purge] token_env or \
                       hmac_secret_env to a variable holding a secret";
            return Err(AdminError::new(StatusCode::FORBIDDEN, msg));
        }
        let body = self.read_authenticated(req, MAX_WARM_BODY).await?;
        let job = serde_json::from_slice::<WarmRequest>(&body)
            .map_err(|e| format!("invalid warm body: {e}"))
            .and_then(|r| WarmJob::new(r).map_err(|e| e.to_string()))
            .and_then(|j| self.warmer.check(&j).map(|()| j).map_err(|e| e.to_string()));
        let job = job.map_err(AdminError::bad_request)?;
        let report = self.warmer.warm(&job).await;
        tracing::info!(
            warmed = report.warmed,
            already_cached = report.already_cached,
            failed = report.failed,
            "warm request done"
        );
        match serde_json::to_value(&report) {
            Ok(v) => Ok(json(StatusCode::OK, &v)),
            Err(e) => Err(AdminError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the report: {e}"),
            )),
        }
    }
}
