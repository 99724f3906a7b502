//! Protocol upgrades (WebSocket and any other `Upgrade` over HTTP/1.1): forwarded like any
//! request after normalisation (identity headers included), never cached, and once the origin
//! answers `101`, bytes are relayed both ways until either side closes, neither sends anything
//! for `[server] tunnel_idle_timeout`, or cachegate shuts down.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{Ctx, Outcome, Proxy};
use crate::error::ProxyError;
use crate::message::body::ProxyBody;
use crate::message::headers;

/// The WebSocket upgrade an HTTP/1.1 GET asks for (`Connection: upgrade`, `Upgrade: websocket`),
/// read before normalisation removes both as hop-by-hop headers. Only a GET: an upgrade offer on
/// a write must not turn it into a tunnel that skips the purge its success triggers. Only
/// WebSocket: an `h2c` (or any other) upgrade the origin accepted would hand the client a raw
/// connection to the origin on which every later request skips normalisation, identity and
/// purges. Other offers are dropped with the hop-by-hop headers and the request goes the usual
/// way.
pub(super) fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11
        || req.method() != Method::GET
        || !crate::message::headers::has(req.headers(), &header::UPGRADE)
    {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    (asks && websocket).then(|| HeaderValue::from_static("websocket"))
}

impl Proxy {
    /// Forwards an upgrade request; on `101` relays the two connections.
    pub(super) async fn tunnel(
        &self,
        mut req: Request<Incoming>,
        ctx: Ctx<'_>,
        protocol: HeaderValue,
        out: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let client_side = hyper::upgrade::on(&mut req);
        let sessions = self.identity.sessions_of(req.headers());
        let (parts, body) = req.into_parts();
        let mut up = self.upstream_request(parts, ProxyBody::Stream(body), &ctx, false);
        up.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        up.headers_mut().insert(header::UPGRADE, protocol);
        let mut resp = self.send(up, out).await?;
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let origin_side = switching.then(|| hyper::upgrade::on(&mut resp));
        let accepted = resp.headers().get(header::UPGRADE).cloned();
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::take_surrogate_tags(&mut parts.headers);
        headers::add_via(&mut parts.headers);
        // A login or logout answered here changes who the session is, as for any request.
        self.session_changes(&sessions, ctx.path, &parts.headers).await;
        let Some(origin_side) = origin_side else {
            // The origin declined: its answer, as for any request passed through.
            return Ok(Response::from_parts(parts, ProxyBody::Stream(body)));
        };
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(p) = accepted {
            parts.headers.insert(header::UPGRADE, p);
        }
        let mut stop = self.stop.clone();
        let idle = self.config.server.tunnel_idle_timeout;
        tokio::spawn(async move {
            match tokio::try_join!(client_side, origin_side) {
                Ok((client, origin)) => {
                    let activity = Activity::default();
                    let mut client = Watched::new(TokioIo::new(client), &activity);
                    let mut origin = Watched::new(TokioIo::new(origin), &activity);
                    // Both connections close when either side does, when neither sent anything
                    // for `idle`, or at shutdown.
                    tokio::select! {
                        relayed = tokio::io::copy_bidirectional(&mut client, &mut origin) => {
                            if let Err(e) = relayed {
                                tracing::debug!(error = %e, "upgraded connection ended with an error");
                            }
                        }
                        () = activity.idle_for(idle) => {
                            tracing::debug!(idle = ?idle, "upgraded connection closed: idle");
                        }
                        _ = stop.wait_for(|s| *s) => {}
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade not completed"),
            }
        });
        Ok(Response::from_parts(parts, ProxyBody::Empty))
    }
}

/// When a tunnel last carried a byte, either way.
#[derive(Clone)]
struct Activity {
    since: std::time::Instant,
    /// Milliseconds after `since`.
    last: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            since: std::time::Instant::now(),
            last: std::sync::Arc::default(),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Returns once nothing moved for `idle`: wakes at the earliest moment that can be true,
    /// and sleeps again for the rest when something moved meanwhile.
    async fn idle_for(&self, idle: std::time::Duration) {
        loop {
            let last = std::time::Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed));
            let quiet = self.since.elapsed().saturating_sub(last);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}

/// One side of a tunnel: every successful read of at least one byte marks the tunnel active.
struct Watched<T> {
    inner: T,
    activity: Activity,
}

impl<T> Watched<T> {
    fn new(inner: T, activity: &Activity) -> Self {
        Watched {
            inner,
            activity: activity.clone(),
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
