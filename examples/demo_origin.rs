//! A tiny origin for trying cachegate: a fake "Django" app with slow JSON views.
//!
//! ```text
//! cargo run --example demo_origin                # listens on 127.0.0.1:8000, 100 ms per view
//! cargo run --example demo_origin -- --listen 127.0.0.1:9000 --delay-ms 500
//! ```
//!
//! Then run cachegate with `proxy.toml` and request `/courses/` twice through it: the first
//! answer is a MISS (slow), the second a HIT (same body, same `served_at`). A `POST /courses/`
//! bumps the courses version, so the next read is a MISS with the new version.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

const USAGE: &str = "usage: demo_origin [--listen ADDR] [--delay-ms N]
  --listen ADDR   address to listen on (default: $DEMO_LISTEN or 127.0.0.1:8000)
  --delay-ms N    time each view takes, simulating a slow app (default: 100)";

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const LOGO: &str = "  _  _  _\n ( cachegate )\n  ~~~~~~~~~~\n";

/// Resource families; each has its own version counter, bumped by writes.
const FAMILIES: [&str; 4] = ["courses", "students", "lectures", "blockchain"];

struct State {
    delay: Duration,
    versions: [AtomicU64; 4],
}

impl State {
    /// The simulated view time (skipped entirely at 0, so benchmarks measure only the server).
    async fn view_delay(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }
}

#[tokio::main]
async fn main() {
    let (listen, delay) = parse_args().unwrap_or_else(|msg| {
        eprintln!("{msg}\n{USAGE}");
        std::process::exit(2);
    });
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap_or_else(|e| {
        eprintln!("cannot listen on {listen}: {e}");
        std::process::exit(1);
    });
    eprintln!(
        "demo origin listening on http://{listen} (view delay {} ms)",
        delay.as_millis()
    );
    let state = Arc::new(State {
        delay,
        versions: std::array::from_fn(|_| AtomicU64::new(1)),
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
        });
    }
}

fn parse_args() -> Result<(SocketAddr, Duration), String> {
    let mut listen = std::env::var("DEMO_LISTEN").unwrap_or_else(|_| "127.0.0.1:8000".to_string());
    let mut delay_ms: u64 = 100;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => listen = value()?,
            "--delay-ms" => delay_ms = value()?.parse().map_err(|e| format!("--delay-ms: {e}"))?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let addr = listen.parse().map_err(|e| format!("--listen {listen:?}: {e}"))?;
    Ok((addr, Duration::from_millis(delay_ms)))
}

async fn handle(state: Arc<State>, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let role = header("x-user-role").unwrap_or_else(|| "anonymous".to_string());
    let tenant = header("x-org-id");
    let segments: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let write = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    // Which family a path belongs to (writes bump it), and whether a GET of it is a view.
    let (family, readable) = match segments.as_slice() {
        ["courses"] => (Some(0), true),
        ["courses", ..] => (Some(0), false),
        ["students"] => (Some(1), true),
        ["students", ..] => (Some(1), false),
        ["lectures", id] if !id.is_empty() => (Some(2), true),
        ["blockchain", "statistics"] => (Some(3), true),
        _ => (None, false),
    };
    let page = query_param(req.uri().query(), "page").unwrap_or(1);
    let json = |status, body: String| (status, JSON, None, body);
    let (status, content_type, cache_control, body) = match (family, segments.as_slice()) {
        (Some(f), _) if read && readable => {
            state.view_delay().await;
            let extra = match f {
                0 => format!(r#","page":{page}"#),
                2 => format!(r#","lecture":"{}""#, json_escape(segments[1])),
                _ => String::new(),
            };
            let tenant = tenant
                .as_deref()
                .map_or("null".into(), |t| format!(r#""{}""#, json_escape(t)));
            let body = format!(
                r#"{{"resource":"{}"{extra},"role":"{}","tenant":{tenant},"version":{},"served_at":"{}"}}"#,
                FAMILIES[f],
                json_escape(&role),
                state.versions[f].load(Ordering::SeqCst),
                humantime::format_rfc3339_millis(SystemTime::now()),
            );
            json(StatusCode::OK, body)
        }
        (Some(f), _) if write && f != 3 => {
            state.view_delay().await;
            state.versions[f].fetch_add(1, Ordering::SeqCst);
            json(StatusCode::OK, r#"{"ok":true}"#.into())
        }
        (None, ["static", "logo.txt"]) if read => (StatusCode::OK, TEXT, Some("public, max-age=60"), LOGO.into()),
        (None, ["private"]) if read => {
            state.view_delay().await;
            let body = format!(r#"{{"private":true,"role":"{}"}}"#, json_escape(&role));
            (StatusCode::OK, JSON, Some("private"), body)
        }
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
    };
    eprintln!(
        "{} {} {} -> {} role={role} tenant={} {:.1}ms",
        humantime::format_rfc3339_millis(SystemTime::now()),
        req.method(),
        req.uri(),
        status.as_u16(),
        tenant.as_deref().unwrap_or("-"),
        started.elapsed().as_secs_f64() * 1000.0,
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(cc) = cache_control {
        resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static(cc));
    }
    Ok(resp)
}

/// The first value of `name` in a query string, parsed as a number.
fn query_param(query: Option<&str>, name: &str) -> Option<u64> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
