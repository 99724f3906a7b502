//! Cache warming: GET a list of paths, for every role × tenant, through the instance's own public
//! listener, so each answer takes exactly the path a client's would (route match, identity, key,
//! storage rules) and lands in every tier.
//!
//! The identity travels in the trusted `[identity] role_header` / `tenant_header`, sent from this
//! process to its own listener. That needs two things, or warming with roles or tenants is
//! refused rather than storing the wrong answer under a role's key:
//! * the listener's address (loopback when it binds `0.0.0.0`) is in `[identity]
//!   trust_headers_from` (not by default); otherwise the proxy strips the headers
//!   ([`WarmError::Untrusted`]);
//! * no JWT or session lookup is configured: such an origin learns who asks from the token or
//!   session, which warming cannot present, so it would answer anonymously
//!   ([`WarmError::CredentialIdentity`]).
//!
//! Used by `POST /admin/warm` and by the scheduled warmer of `[warm]`.

mod job;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderName, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use ipnet::IpNet;
use tokio::sync::watch;

use crate::config::{Config, WarmConfig};
pub use job::{
    WarmError, WarmFailure, WarmJob, WarmReport, WarmRequest, DEFAULT_CONCURRENCY, MAX_CONCURRENCY, MAX_PATHS,
    MAX_REQUESTS,
};

/// The warmer's connector: plain, or TLS trusting exactly the listener's own certificate.
fn connector(tls: Option<&Arc<crate::tls::ServerTls>>) -> hyper_rustls::HttpsConnector<HttpConnector> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match tls {
        Some(t) => builder.with_tls_config(t.own_client()),
        // Never used for https: the scheme is http.
        None => builder.with_tls_config(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    };
    builder.https_or_http().enable_http1().build()
}

/// Sends warm requests to one instance's public listener.
pub struct Warmer {
    target: SocketAddr,
    trusted: bool,
    /// The origin learns identity from credentials (JWT, session), not from the headers.
    credential_identity: bool,
    role_header: HeaderName,
    tenant_header: HeaderName,
    timeout: Duration,
    /// `https` when the public listener speaks TLS (requests are then keyed as https, as a
    /// client's are).
    scheme: &'static str,
    /// The listener asks for client certificates, which warming cannot present.
    mutual_tls: bool,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Warmer {
    /// A warmer for the instance whose public listener is bound to `proxy_addr`, speaking TLS
    /// with `tls` when it does.
    pub fn new(config: &Config, proxy_addr: SocketAddr, tls: Option<&Arc<crate::tls::ServerTls>>) -> Self {
        let ip = match proxy_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        // Identity headers from `ip` are believed only when it is in trust_headers_from; `check`
        // refuses identities otherwise rather than warm them as anonymous.
        let trust: &[IpNet] = &config.identity.trust_headers_from;
        Warmer {
            target: SocketAddr::new(ip, proxy_addr.port()),
            trusted: trust.iter().any(|n| n.contains(&ip)),
            credential_identity: config.identity.jwt.is_some() || config.identity.lookup.is_some(),
            role_header: config.identity.role_header.clone(),
            tenant_header: config.identity.tenant_header.clone(),
            // The proxy answers within the origin timeout; leave room for reading the body.
            timeout: config.origin.timeout + Duration::from_secs(30),
            scheme: if tls.is_some() { "https" } else { "http" },
            mutual_tls: tls.is_some_and(|t| t.mutual()),
            client: Client::builder(TokioExecutor::new()).build(connector(tls)),
        }
    }

    /// Refuses a job whose identities would not reach the origin as they are keyed.
    ///
    /// # Errors
    /// [`WarmError::Untrusted`], [`WarmError::CredentialIdentity`].
    pub fn check(&self, job: &WarmJob) -> Result<(), WarmError> {
        if self.mutual_tls {
            return Err(WarmError::MutualTls);
        }
        if job.has_identity() && self.credential_identity {
            return Err(WarmError::CredentialIdentity);
        }
        if job.has_identity() && !self.trusted {
            return Err(WarmError::Untrusted(self.target.ip()));
        }
        Ok(())
    }

    /// The job `[warm]` describes, refused as [`Warmer::check`] would.
    ///
    /// # Errors
    /// As [`WarmJob::new`] and [`Warmer::check`].
    pub fn scheduled_job(&self, w: &WarmConfig) -> Result<WarmJob, WarmError> {
        let job = WarmJob::new(WarmRequest {
            paths: w.paths.clone(),
            roles: w.roles.clone(),
            tenants: w.tenants.clone(),
            concurrency: Some(w.concurrency),
        })?;
        self.check(&job)?;
        Ok(job)
    }

    /// Warms every path for every role × tenant, `concurrency` requests at a time.
    pub async fn warm(&self, job: &WarmJob) -> WarmReport {
        let results: Vec<_> = futures_util::stream::iter(job.variants())
            .map(|(p, r, t)| async move {
                let result = self.one(&p, r.as_deref(), t.as_deref()).await;
                (p, r, t, result)
            })
            .buffer_unordered(job.concurrency)
            .collect()
            .await;
        let mut report = WarmReport::default();
        for (path, role, tenant, result) in results {
            match result {
                Ok(true) => report.warmed += 1,
                Ok(false) => report.already_cached += 1,
                Err((status, error)) => {
                    report.failed += 1;
                    report.failures.push(WarmFailure {
                        path,
                        role,
                        tenant,
                        status,
                        error,
                    });
                }
            }
        }
        report
    }

    /// One GET: `Ok(true)` warmed, `Ok(false)` already cached, `Err` with status and reason.
    async fn one(&self, path: &str, role: Option<&str>, tenant: Option<&str>) -> Result<bool, (Option<u16>, String)> {
        let mut req =
            Request::get(format!("{}://{}{path}", self.scheme, self.target)).header("user-agent", "cachegate-warm");
        if let Some(r) = role {
            req = req.header(&self.role_header, r);
        }
        if let Some(t) = tenant {
            req = req.header(&self.tenant_header, t);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| (None, format!("invalid request: {e}")))?;
        let fetch = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| (None, format!("no answer: {e}")))?;
            let (parts, mut body) = resp.into_parts();
            // Drain without buffering (the entry is stored before the answer starts), keeping the
            // start of the body to explain an error status.
            let mut start = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| (Some(parts.status.as_u16()), format!("body failed: {e}")))?;
                if let Some(data) = frame.data_ref() {
                    let room = 200usize.saturating_sub(start.len()).min(data.len());
                    start.extend_from_slice(&data[..room]);
                }
            }
            Ok((parts, start))
        };
        let (parts, start) = tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| (None, format!("no complete answer within {}s", self.timeout.as_secs())))??;
        let status = parts.status;
        let x_cache = parts
            .headers
            .get(crate::message::headers::X_CACHE)
            .and_then(|v| v.to_str().ok());
        match x_cache {
            _ if !(status.is_success() || status.is_redirection()) => {
                let text = String::from_utf8_lossy(&start);
                let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                Err((Some(status.as_u16()), format!("answered {status}: {text}")))
            }
            Some("MISS") => Ok(true),
            Some("HIT") => Ok(false),
            // An expired entry inside stale-while-revalidate: the answer started a background
            // refresh, which is what warming is for.
            Some("STALE")
                if parts
                    .headers
                    .get(crate::message::headers::CACHE_STATUS)
                    .is_some_and(|v| v.as_bytes().ends_with(b"detail=stale")) =>
            {
                Ok(true)
            }
            Some(other) => {
                let detail = parts
                    .headers
                    .get(crate::message::headers::CACHE_STATUS)
                    .and_then(|v| v.to_str().ok());
                let why = detail
                    .and_then(|d| d.split("detail=").nth(1))
                    .unwrap_or("see Cache-Status");
                let what = if other == "STALE" {
                    "the origin failed and an expired entry was served"
                } else {
                    "the answer was not stored"
                };
                Err((Some(status.as_u16()), format!("X-Cache: {other} ({why}): {what}")))
            }
            None => Err((Some(status.as_u16()), "no X-Cache header in the answer".into())),
        }
    }
}

/// Runs `[warm]`: every `interval` (the first run one interval after start) until `stop`.
pub async fn scheduled(warmer: Arc<Warmer>, job: WarmJob, interval: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let report = tokio::select! {
            r = warmer.warm(&job) => r,
            _ = stop.changed() => return,
        };
        let WarmReport {
            warmed,
            already_cached,
            failed,
            ..
        } = report;
        tracing::info!(warmed, already_cached, failed, "scheduled warm done");
        for f in report.failures.iter().take(5) {
            tracing::warn!(path = %f.path, role = ?f.role, tenant = ?f.tenant, status = ?f.status, "warm failed: {}", f.error);
        }
    }
}
