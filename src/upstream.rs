//! The pooled HTTP/1.1 client to the origin, with its timeout and error mapping. It counts its
//! own latency (answered or not) and errors, so every origin request is measured once, whoever
//! sends it: a read, a write, a background refresh, a session lookup. Below the proxy and
//! identity, which both talk to the origin.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::ServerName;

use std::sync::Arc;

use crate::config::OriginConfig;
use crate::error::UpstreamError;
use crate::message::body::ProxyBody;
use crate::metrics::Metrics;
use crate::tls::TlsError;

/// Sends requests to the origin over a keep-alive pool (TLS for an `https://` origin, with
/// HTTP/2 when the origin offers it).
#[derive(Clone)]
pub(crate) struct Origin {
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    cfg: OriginConfig,
    metrics: Arc<Metrics>,
}

impl Origin {
    /// A client for the configured origin.
    ///
    /// # Errors
    /// `[origin] ca_file` cannot be used, or `sni` is not a valid name.
    pub(crate) fn new(cfg: &OriginConfig, metrics: Arc<Metrics>) -> Result<Self, TlsError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.timeout));
        // Plain connections go through as they are: the scheme decides.
        http.enforce_http(false);
        let tls = crate::tls::origin_client_config(cfg.ca_file.as_deref())?;
        let mut builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        if let Some(name) = &cfg.sni {
            let name = ServerName::try_from(name.clone()).map_err(|e| TlsError::Sni {
                name: name.clone(),
                reason: e.to_string(),
            })?;
            builder = builder.with_server_name_resolver(FixedServerNameResolver::new(name));
        }
        let connector = if cfg.http2 {
            builder.enable_all_versions().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(Origin {
            client,
            cfg: cfg.clone(),
            metrics,
        })
    }

    /// The configured origin.
    pub(crate) fn config(&self) -> &OriginConfig {
        &self.cfg
    }

    /// Sends a request for `route` (its metrics label); the timeout covers connecting and the
    /// response headers.
    ///
    /// # Errors
    /// [`UpstreamError`] naming the cause.
    pub(crate) async fn send(&self, req: Request<ProxyBody>, route: &str) -> Result<Response<Incoming>, UpstreamError> {
        let start = std::time::Instant::now();
        let result = match tokio::time::timeout(self.cfg.timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.cfg.timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                let cause = root_cause(&e);
                if e.is_connect() {
                    Err(UpstreamError::Connect(cause))
                } else {
                    Err(UpstreamError::Request(cause))
                }
            }
        };
        self.metrics
            .origin_latency(route)
            .observe(start.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.count(e);
        }
        result
    }

    /// Counts a failure met after the answer's head (a body cut short or too slow).
    pub(crate) fn count(&self, e: &UpstreamError) {
        self.metrics.origin_error_counter(e.kind()).inc();
    }
}

/// The innermost error message: "Connection refused (os error 111)" rather than "client error".
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
