//! Purge cost: how long `POST /purge {"tags": [...]}` takes when the tag covers 1, 1,000, 10,000
//! and 100,000 cached entries.
//!
//! cachegate purges by bumping per-scope generation counters (a constant number of Redis
//! commands, never `KEYS`/`SCAN`), so the time should not grow with the number of entries.
//!
//! Everything is real and on 127.0.0.1: a `redis-server` on a free port (killed on exit, also on
//! panic), a small hyper origin, and cachegate itself, started in-process. Each size class has
//! its own route and tag (`one`, `c1k`, `c10k`, `c100k`; all entries also carry `items`), is
//! filled through the proxy, and is then purged several times; a purge is timed as one HTTP
//! round trip to the admin listener.
//!
//! ```text
//! cargo bench --bench purge
//! ```
//!
//! Env: `PURGE_BENCH_RUNS` (timed purges per tag, default 30), `PURGE_BENCH_CONCURRENCY`
//! (requests in flight while filling, default 64), `PURGE_BENCH_SCALE` (divides the entry counts,
//! default 1, for a quick check).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The variable `[purge] token_env` names; set by this process before cachegate starts.
const TOKEN_ENV: &str = "CACHEGATE_PURGE_BENCH_TOKEN";
const TOKEN: &str = "purge-bench-token";
/// Entries of each class checked before and after its purge.
const SAMPLES: usize = 5;
/// Deadline for one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One size class: its tag (also its route name and first path segment) and entry count.
struct Class {
    tag: &'static str,
    entries: usize,
}

const CLASSES: [Class; 4] = [
    Class { tag: "one", entries: 1 },
    Class {
        tag: "c1k",
        entries: 1_000,
    },
    Class {
        tag: "c10k",
        entries: 10_000,
    },
    Class {
        tag: "c100k",
        entries: 100_000,
    },
];

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{name} must be a positive integer, found {v:?}")),
        Err(_) => default,
    }
}

/// A `redis-server` on a free loopback port, killed when dropped (also while unwinding a panic).
struct RedisServer {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn spawn() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it, e.g. apt-get install -y redis-server")
            });
        RedisServer { port, child, _dir: dir }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A connection, once the server answers PING (deadline 10 s).
    async fn connect(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("a valid redis URL");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING").query_async::<String>(&mut c).await.is_ok() {
                    return c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {} within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal origin: `200` with a small JSON body naming the path, counting its requests.
async fn start_origin(hits: Arc<AtomicUsize>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("origin binds");
    let addr = listener.local_addr().expect("origin address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::Relaxed);
                    let body = format!("{{\"path\":\"{}\",\"title\":\"an item\"}}", req.uri().path());
                    async move {
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        resp.headers_mut().insert(
                            header::CONTENT_TYPE,
                            header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

fn config_text(origin: SocketAddr, redis_url: &str) -> String {
    // redis_timeout is raised from its 250 ms default so that a scheduling hiccup on a busy
    // machine cannot mark the tier down during the fill (that would leave entries out of Redis).
    let mut text = format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
debug_headers = true

[origin]
url = "http://{origin}"
timeout = "10s"

[cache]
redis_url = "{redis_url}"
redis_timeout = "2s"
key_prefix = "bench:purge"
memory_capacity = "512MiB"
memory_ttl = "10m"

[purge]
token_env = "{TOKEN_ENV}"
"#
    );
    for c in &CLASSES {
        text.push_str(&format!(
            "\n[[route]]\nname = \"{tag}\"\npath = \"/{tag}/{{id}}/\"\nttl = \"10m\"\nvary = []\ntags = [\"items\", \"{tag}\"]\n",
            tag = c.tag
        ));
    }
    text
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Status, headers and body of one request.
async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
    let uri = req.uri().clone();
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req))
        .await
        .unwrap_or_else(|_| panic!("no answer from {uri} within {REQUEST_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("request to {uri} failed: {e}"));
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("body of {uri}: {e}"))
        .to_bytes();
    (parts.status, parts.headers, body)
}

async fn get(client: &HttpClient, url: &str) -> (StatusCode, HeaderMap) {
    let req = Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("a valid request");
    let (status, headers, _) = send(client, req).await;
    (status, headers)
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-")
}

fn item_url(proxy: SocketAddr, tag: &str, id: usize) -> String {
    format!("http://{proxy}/{tag}/{id}/")
}

/// Fills `n` entries of a class through the proxy; returns how many answers said "stored".
async fn fill(client: &HttpClient, proxy: SocketAddr, tag: &str, n: usize, concurrency: usize) -> usize {
    let started = Instant::now();
    let step = (n / 10).max(1);
    let mut done = 0;
    let mut stored = 0;
    let mut answers = stream::iter(0..n)
        .map(|id| {
            let url = item_url(proxy, tag, id);
            async move {
                let (status, headers) = get(client, &url).await;
                assert_eq!(status, StatusCode::OK, "GET {url}");
                header_str(&headers, "cache-status").contains("stored")
            }
        })
        .buffer_unordered(concurrency);
    while let Some(was_stored) = answers.next().await {
        done += 1;
        stored += usize::from(was_stored);
        if done % step == 0 || done == n {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "purge bench: fill {tag}: {done}/{n} ({:.0}/s, {secs:.1} s)",
                done as f64 / secs.max(1e-9)
            );
        }
    }
    stored
}

/// Ids checked for a class: evenly spread, first and last included.
fn sample_ids(n: usize) -> Vec<usize> {
    let k = SAMPLES.min(n);
    let mut ids: Vec<usize> = (0..k).map(|i| if k == 1 { 0 } else { i * (n - 1) / (k - 1) }).collect();
    ids.dedup();
    ids
}

/// Asserts every sampled entry of a class is a hit stored in Redis.
async fn assert_cached(
    client: &HttpClient,
    redis: &mut redis::aio::MultiplexedConnection,
    proxy: SocketAddr,
    class: &Class,
) {
    for id in sample_ids(class.entries) {
        let url = item_url(proxy, class.tag, id);
        let (status, headers) = get(client, &url).await;
        assert_eq!(status, StatusCode::OK, "GET {url}");
        assert_eq!(header_str(&headers, "x-cache"), "HIT", "{url} should be cached");
        let key = header_str(&headers, "x-cache-key");
        let exists: i64 = redis::cmd("EXISTS").arg(key).query_async(redis).await.expect("EXISTS");
        assert_eq!(exists, 1, "{url}: key {key} should be in Redis");
    }
}

/// Asserts every sampled entry of a class was purged (and refills it, which does not matter).
async fn assert_purged(client: &HttpClient, proxy: SocketAddr, class: &Class) {
    for id in sample_ids(class.entries) {
        let url = item_url(proxy, class.tag, id);
        let (status, headers) = get(client, &url).await;
        assert_eq!(status, StatusCode::OK, "GET {url}");
        assert_eq!(header_str(&headers, "x-cache"), "MISS", "{url} should be purged");
    }
}

/// One timed `POST /purge` of `tag`, in milliseconds.
async fn purge_ms(client: &HttpClient, admin: SocketAddr, tag: &str) -> f64 {
    let body = format!(r#"{{"tags": ["{tag}"]}}"#);
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{admin}/purge"))
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    let started = Instant::now();
    let (status, _, body) = send(client, req).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::OK, "purge of {tag}: {text}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("purge answer {text:?}: {e}"));
    assert_eq!(v["shared"], true, "the purge of {tag} must go through Redis: {text}");
    ms
}

async fn dbsize(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("DBSIZE").query_async(redis).await.expect("DBSIZE")
}

/// `calls` of the commands that would mean a scan or a per-key delete, from INFO commandstats.
async fn scan_like_calls(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            if !matches!(name, "keys" | "scan" | "del" | "unlink") {
                return None;
            }
            rest.split(',')
                .find_map(|f| f.strip_prefix("calls=")?.parse::<u64>().ok())
        })
        .sum()
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

struct Row {
    tag: &'static str,
    entries: usize,
    stored: usize,
    redis_keys_added: u64,
    first_ms: f64,
    median_ms: f64,
    max_ms: f64,
    min_ms: f64,
}

async fn run(redis_server: &RedisServer) {
    let runs = env_usize("PURGE_BENCH_RUNS", 30);
    let concurrency = env_usize("PURGE_BENCH_CONCURRENCY", 64);
    let scale = env_usize("PURGE_BENCH_SCALE", 1);
    let classes: Vec<Class> = CLASSES
        .iter()
        .map(|c| Class {
            tag: c.tag,
            entries: (c.entries / scale).max(1),
        })
        .collect();

    let mut redis = redis_server.connect().await;
    let origin_hits = Arc::new(AtomicUsize::new(0));
    let (origin, origin_task) = start_origin(origin_hits.clone()).await;
    let text = config_text(origin, &redis_server.url());
    let config = cachegate::config::from_str(&text, Path::new("purge-bench.toml"))
        .unwrap_or_else(|e| panic!("the bench config is invalid:\n{e}\n---\n{text}"));
    let running = cachegate::app::start(config).await.expect("cachegate starts");
    let (proxy, admin) = (running.proxy_addr, running.admin_addr);
    let cache = running.cache.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cache.shared_ready() {
        assert!(
            Instant::now() < deadline,
            "the Redis tier did not become ready within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "purge bench: redis-server on port {}, cachegate on {proxy} (admin {admin})",
        redis_server.port
    );

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    // Connections warm, and the purge script loaded into Redis, before anything is timed.
    purge_ms(&client, admin, "warm-up").await;

    let mut stored = Vec::new();
    let mut added = Vec::new();
    for c in &classes {
        let before = dbsize(&mut redis).await;
        let s = fill(&client, proxy, c.tag, c.entries, concurrency).await;
        let after = dbsize(&mut redis).await;
        assert_eq!(s, c.entries, "every fill of {} should be stored", c.tag);
        assert_cached(&client, &mut redis, proxy, c).await;
        stored.push(s);
        added.push(after.saturating_sub(before));
    }
    let total_keys = dbsize(&mut redis).await;
    let total_entries: usize = classes.iter().map(|c| c.entries).sum();
    eprintln!(
        "purge bench: {total_entries} entries filled ({} origin requests), DBSIZE {total_keys}",
        origin_hits.load(Ordering::Relaxed)
    );

    let mut rows = Vec::new();
    for (i, c) in classes.iter().enumerate() {
        let scans_before = scan_like_calls(&mut redis).await;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            times.push(purge_ms(&client, admin, c.tag).await);
        }
        let scans = scan_like_calls(&mut redis).await - scans_before;
        assert_eq!(scans, 0, "purging {} ran KEYS/SCAN/DEL/UNLINK commands", c.tag);
        let first_ms = times[0];
        times.sort_by(f64::total_cmp);
        rows.push(Row {
            tag: c.tag,
            entries: c.entries,
            stored: stored[i],
            redis_keys_added: added[i],
            first_ms,
            median_ms: median(&times),
            max_ms: times[times.len() - 1],
            min_ms: times[0],
        });
        // The purged class is gone, the classes not purged yet are untouched.
        assert_purged(&client, proxy, c).await;
        for later in &classes[i + 1..] {
            assert_cached(&client, &mut redis, proxy, later).await;
        }
        eprintln!("purge bench: purged {} ({} entries) {runs} times", c.tag, c.entries);
    }

    println!();
    println!(
        "Tag purge cost: POST /purge {{\"tags\": [TAG]}} on the admin listener, {runs} timed runs per tag \
         (the first one while the entries are live), one cachegate with a real redis-server."
    );
    println!("DBSIZE before the purges: {total_keys} keys ({total_entries} entries filled). KEYS/SCAN/DEL/UNLINK calls during the purges: 0.");
    println!();
    println!(
        "| {:<6} | {:>8} | {:>8} | {:>10} | {:>9} | {:>9} | {:>9} | {:>9} |",
        "tag", "entries", "stored", "redis keys", "first ms", "median ms", "min ms", "max ms"
    );
    println!("|--------|---------:|---------:|-----------:|----------:|----------:|----------:|----------:|");
    for r in &rows {
        println!(
            "| {:<6} | {:>8} | {:>8} | {:>10} | {:>9.3} | {:>9.3} | {:>9.3} | {:>9.3} |",
            r.tag, r.entries, r.stored, r.redis_keys_added, r.first_ms, r.median_ms, r.min_ms, r.max_ms
        );
    }
    let base = rows[0].median_ms;
    println!();
    for r in &rows[1..] {
        println!(
            "median {} / median {}: {:.2}x for {}x the entries",
            r.tag,
            rows[0].tag,
            r.median_ms / base,
            r.entries / rows[0].entries.max(1)
        );
    }
    println!("('redis keys' = DBSIZE growth while filling the class; 'stored' = answers marked stored.)");

    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), running.shutdown()).await;
    origin_task.abort();
}

fn main() {
    // `cargo bench` passes `--bench`; this harness has no options of its own.
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("cargo bench --bench purge   (env: PURGE_BENCH_RUNS, PURGE_BENCH_CONCURRENCY, PURGE_BENCH_SCALE)");
        return;
    }
    // Set before any thread exists; cachegate reads it once at start-up ([purge] token_env).
    std::env::set_var(TOKEN_ENV, TOKEN);
    let redis_server = RedisServer::spawn();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(&redis_server));
    drop(runtime);
    drop(redis_server);
}
