//! Soak run: mixed reads and writes through two cachegate processes sharing one Redis, while
//! Redis is restarted twice. Reports requests, errors by status, stale reads after writes, and
//! each instance's RSS at start and end. Bounded: `SOAK_SECONDS` (default 300).
//!
//! Run with `scripts/soak.sh` (it builds the binary first).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Kills a child process on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn redis(port: u16) -> Guard {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install -y redis-server)");
    // Ready when it accepts connections; a fixed pause would be too long or too short.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not listen within 10s"
        );
        std::thread::yield_now();
    }
    Guard(child)
}

/// The origin: per-tenant versions; a POST to /courses/ bumps the writer's tenant version.
async fn origin(versions: Arc<Mutex<BTreeMap<String, u64>>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let versions = versions.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let versions = versions.clone();
                    async move {
                        let tenant = req
                            .headers()
                            .get("x-org-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string();
                        let mut v = versions.lock().unwrap();
                        let n = v.entry(tenant).or_insert(0);
                        if req.method() == Method::POST {
                            *n += 1;
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(format!("v{n}")))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn instance(origin: SocketAddr, redis_port: u16, dir: &std::path::Path, name: &str) -> (Guard, u16) {
    let port = free_port();
    // "0s" = strict: while Redis is down, memory copies are not served (purges cannot arrive).
    let degraded = std::env::var("SOAK_DEGRADED_MEMORY_TTL").unwrap_or_else(|_| "5s".into());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{}\"\n[origin]\nurl = \"http://{origin}\"\n\
         [cache]\nredis_url = \"redis://127.0.0.1:{redis_port}/0\"\nkey_prefix = \"soak\"\nmemory_ttl = \"10m\"\ndegraded_memory_ttl = \"{degraded}\"\n\
         [[route]]\nname = \"courses\"\npath = \"/courses/\"\nttl = \"10m\"\ntags = [\"courses\"]\n\
         [[invalidate]]\npath = \"/courses/{{*rest}}\"\ntags = [\"courses\"]\n",
        free_port()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let bin = std::env::var("SOAK_BIN").unwrap_or_else(|_| "target/release/cachegate".into());
    let child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Guard(child), port)
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    writes: AtomicU64,
    stale_after_write: AtomicU64,
    stale_seconds: Mutex<BTreeMap<u64, u64>>,
    started: Mutex<Option<Instant>>,
    by_status: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn count(&self, status: String) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self.by_status.lock().unwrap().entry(status).or_insert(0) += 1;
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn call(client: &HttpClient, method: Method, port: u16, tenant: &str) -> Result<(u16, String), String> {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}/courses/"))
        .header("x-org-id", tenant)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| format!("connection: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One worker: its own tenant; writes through one instance, then reads through the other and
/// checks it sees its write.
async fn worker(id: usize, ports: [u16; 2], deadline: Instant, tally: Arc<Tally>) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let tenant = format!("t{id}");
    let mut i = 0usize;
    while Instant::now() < deadline {
        i += 1;
        let (w, r) = (ports[i % 2], ports[(i + 1) % 2]);
        if i % 10 == 0 {
            match call(&client, Method::POST, w, &tenant).await {
                Ok((status, body)) => {
                    tally.count(status.to_string());
                    tally.writes.fetch_add(1, Ordering::Relaxed);
                    if status == 200 {
                        let written = body;
                        match call(&client, Method::GET, r, &tenant).await {
                            Ok((s, b)) => {
                                tally.count(s.to_string());
                                if s == 200 && b != written {
                                    tally.stale_after_write.fetch_add(1, Ordering::Relaxed);
                                    let t0 = tally.started.lock().unwrap().unwrap_or_else(Instant::now);
                                    *tally
                                        .stale_seconds
                                        .lock()
                                        .unwrap()
                                        .entry(t0.elapsed().as_secs())
                                        .or_insert(0) += 1;
                                }
                            }
                            Err(e) => tally.count(e),
                        }
                    }
                }
                Err(e) => tally.count(e),
            }
        } else {
            match call(&client, Method::GET, r, &tenant).await {
                Ok((s, _)) => tally.count(s.to_string()),
                Err(e) => tally.count(e),
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let mut redis_guard = Some(redis(redis_port));
    let versions = Arc::new(Mutex::new(BTreeMap::new()));
    let origin = origin(versions).await;
    let (a, pa) = instance(origin, redis_port, dir.path(), "a");
    let (b, pb) = instance(origin, redis_port, dir.path(), "b");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_start = [rss_kib(a.0.id()), rss_kib(b.0.id())];
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let tally = Arc::new(Tally::default());
    *tally.started.lock().unwrap() = Some(start);
    let workers: Vec<_> = (0..16)
        .map(|id| tokio::spawn(worker(id, [pa, pb], deadline, tally.clone())))
        .collect();
    let restarts: u32 = std::env::var("SOAK_RESTARTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    for k in 1..=restarts {
        tokio::time::sleep_until((start + Duration::from_secs(seconds) * k / 3).into()).await;
        eprintln!("[{:>4}s] restarting redis ({k}/{restarts})", start.elapsed().as_secs());
        drop(redis_guard.take());
        redis_guard = Some(redis(redis_port));
    }
    for w in workers {
        let _ = w.await;
    }
    let rss_end = [rss_kib(a.0.id()), rss_kib(b.0.id())];
    let elapsed = start.elapsed().as_secs_f64();
    let requests = tally.requests.load(Ordering::Relaxed);
    let degraded = std::env::var("SOAK_DEGRADED_MEMORY_TTL").unwrap_or_else(|_| "5s".into());
    println!(
        "soak: {seconds}s, 2 instances, 16 workers, redis restarted {restarts} times, degraded_memory_ttl = {degraded}"
    );
    println!("requests            {requests} ({:.0}/s)", requests as f64 / elapsed);
    println!("writes              {}", tally.writes.load(Ordering::Relaxed));
    println!(
        "stale after write   {}",
        tally.stale_after_write.load(Ordering::Relaxed)
    );
    for (status, n) in tally.by_status.lock().unwrap().iter() {
        println!("status {status:<12} {n}");
    }
    let seconds_with_stale: Vec<String> = tally
        .stale_seconds
        .lock()
        .unwrap()
        .iter()
        .map(|(s, n)| format!("{s}s:{n}"))
        .collect();
    if !seconds_with_stale.is_empty() {
        println!("stale reads by second {}", seconds_with_stale.join(" "));
    }
    println!("rss instance a      {} KiB -> {} KiB", rss_start[0], rss_end[0]);
    println!("rss instance b      {} KiB -> {} KiB", rss_start[1], rss_end[1]);
    drop((a, b, redis_guard));
}
