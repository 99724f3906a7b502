//! Protocol upgrades (WebSocket and any other `Upgrade` over HTTP/1.1): forwarded like any
//! request after normalisation (identity headers included), never cached, and once the origin
//! answers `101`, bytes are relayed both ways until either side closes or cachegate shuts
//! down.

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
    if req.version() != Version::HTTP_11 || req.method() != Method::GET {
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
        tokio::spawn(async move {
            match tokio::try_join!(client_side, origin_side) {
                Ok((client, origin)) => {
                    let (mut client, mut origin) = (TokioIo::new(client), TokioIo::new(origin));
                    // Both connections close when either side does, or at shutdown.
                    tokio::select! {
                        relayed = tokio::io::copy_bidirectional(&mut client, &mut origin) => {
                            if let Err(e) = relayed {
                                tracing::debug!(error = %e, "upgraded connection ended with an error");
                            }
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
