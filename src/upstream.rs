//! The pooled HTTP/1.1 client to the origin, with its timeout and error mapping. Below the
//! proxy and identity, which both talk to the origin (a session lookup is an origin request).

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::OriginConfig;
use crate::error::UpstreamError;
use crate::message::body::ProxyBody;

/// Sends requests to the origin over a keep-alive pool.
#[derive(Clone)]
pub struct Origin {
    client: Client<HttpConnector, ProxyBody>,
    cfg: OriginConfig,
}

impl Origin {
    /// A client for the configured origin.
    pub fn new(cfg: &OriginConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        Origin {
            client,
            cfg: cfg.clone(),
        }
    }

    /// The configured origin.
    pub fn config(&self) -> &OriginConfig {
        &self.cfg
    }

    /// Sends a request; the timeout covers connecting and the response headers.
    ///
    /// # Errors
    /// [`UpstreamError`] naming the cause.
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.cfg.timeout, self.client.request(req)).await {
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
        }
    }
}

/// The innermost error message: "Connection refused (os error 111)" rather than "client error".
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
