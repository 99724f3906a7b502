//! Benchmark helper (not part of cachegate): a bare hyper 1 server answering fixed bodies from
//! memory. `scripts/bench.sh` uses it twice:
//!
//! * as the 0 ms origin behind every proxy (cachegate, nginx, Varnish);
//! * with `--limit`, as "the limit": what answering the same bytes from memory costs without any
//!   cache logic. It then also sends the headers a cachegate memory hit adds (`age`, `x-cache`,
//!   `cache-status`, `via`), so that its answers are byte-for-byte comparable to a hit.
//!
//! ```text
//! cargo run --release --example bench_server -- --listen 127.0.0.1:9000 [--limit]
//! ```
//!
//! `GET /2k/...` answers 2048 bytes, `GET /32k/...` 32768 bytes (any query string), both
//! `text/plain` with `Cache-Control: public, max-age=600`; anything else is a 404. The bodies are
//! built once at start and shared (`Bytes` clones are reference counts). No per-request logging.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONTENT_TYPE, VIA};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

const USAGE: &str = "usage: bench_server --listen ADDR [--limit]
  --listen ADDR   address to listen on (e.g. 127.0.0.1:9000)
  --limit         also send the headers a cachegate memory hit adds (age, x-cache, cache-status, via)";

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

struct Bodies {
    small: Bytes,
    large: Bytes,
    not_found: Bytes,
    limit: bool,
}

/// A body of `len` printable bytes: lines of 64 characters, so it is easy to eyeball with curl.
fn body(len: usize) -> Bytes {
    const LINE: &[u8; 64] = b"cachegate benchmark body, the same bytes on every answer.......\n";
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let n = (len - v.len()).min(LINE.len());
        v.extend_from_slice(&LINE[..n]);
    }
    Bytes::from(v)
}

fn main() {
    let (listen, limit) = parse_args().unwrap_or_else(|msg| {
        eprintln!("{msg}\n{USAGE}");
        std::process::exit(2);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("cannot start the tokio runtime: {e}");
            std::process::exit(1);
        });
    runtime.block_on(serve(listen, limit));
}

async fn serve(listen: SocketAddr, limit: bool) {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap_or_else(|e| {
        eprintln!("cannot listen on {listen}: {e}");
        std::process::exit(1);
    });
    eprintln!(
        "bench server listening on http://{listen}{}",
        if limit {
            " (limit: with cachegate hit headers)"
        } else {
            ""
        }
    );
    let bodies = Arc::new(Bodies {
        small: body(2048),
        large: body(32768),
        not_found: Bytes::from_static(b"not found\n"),
        limit,
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // Out of file descriptors or similar: back off briefly instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let bodies = bodies.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let bodies = bodies.clone();
                async move { Ok::<_, Infallible>(answer(&bodies, &req)) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn answer(bodies: &Bodies, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let body = if path.starts_with("/2k/") {
        &bodies.small
    } else if path.starts_with("/32k/") {
        &bodies.large
    } else {
        let mut resp = Response::new(Full::new(bodies.not_found.clone()));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return resp;
    };
    let mut resp = Response::new(Full::new(body.clone()));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=600"));
    if bodies.limit {
        h.insert(AGE, HeaderValue::from_static("0"));
        h.insert(X_CACHE, HeaderValue::from_static("HIT"));
        h.insert(CACHE_STATUS, HeaderValue::from_static("cachegate; hit"));
        h.insert(VIA, HeaderValue::from_static("1.1 cachegate"));
    }
    resp
}

fn parse_args() -> Result<(SocketAddr, bool), String> {
    let mut listen = None;
    let mut limit = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = Some(args.next().ok_or("--listen needs a value")?),
            "--limit" => limit = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => match other.strip_prefix("--listen=") {
                Some(v) => listen = Some(v.to_string()),
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    let addr = listen.parse().map_err(|e| format!("--listen {listen:?}: {e}"))?;
    Ok((addr, limit))
}
