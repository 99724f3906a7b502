//! The pooled HTTP/1.1 client to the origin, with its timeout and error mapping. It counts its
//! own latency (answered or not) and errors, so every origin request is measured once, whoever
//! sends it: a read, a write, a background refresh, a session lookup. Below the proxy and
//! identity, which both talk to the origin.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use std::sync::Arc;

use crate::config::OriginConfig;
use crate::error::UpstreamError;
use crate::message::body::ProxyBody;
use crate::metrics::Metrics;

/// Sends requests to the origin over a keep-alive pool.
#[derive(Clone)]
pub(crate) struct Origin {
    client: Client<HttpConnector, ProxyBody>,
    cfg: OriginConfig,
    metrics: Arc<Metrics>,
}

impl Origin {
    /// A client for the configured origin.
    pub(crate) fn new(cfg: &OriginConfig, metrics: Arc<Metrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        Origin {
            client,
            cfg: cfg.clone(),
            metrics,
        }
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
