//! Test harness: a real counting origin, cachegate started in-process, and a client, all on
//! 127.0.0.1 ephemeral ports.
#![allow(dead_code)]

pub mod cluster;
pub mod pki;
pub mod scripted;
pub mod shared;
pub mod tls_redis;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the origin saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Response<BoxBody>> + Send>>;
type Handler = Arc<dyn Fn(Seen) -> BoxFuture + Send + Sync>;

/// An in-process hyper origin on port 0 that counts its hits.
pub struct Origin {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    per_path: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    /// Starts an origin answering with `handler`.
    pub async fn start(handler: impl Fn(&Seen) -> Response<BoxBody> + Send + Sync + 'static) -> Origin {
        Origin::start_async(move |seen| {
            let resp = handler(&seen);
            async move { resp }
        })
        .await
    }

    /// Starts an origin whose handler may wait (for a gate, a delay) before answering.
    pub async fn start_async<F>(handler: impl Fn(Seen) -> F + Send + Sync + 'static) -> Origin
    where
        F: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |seen| Box::pin(handler(seen)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let per_path = Arc::new(Mutex::new(HashMap::new()));
        let (h, s, p) = (hits.clone(), seen.clone(), per_path.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (handler, h, s, p) = (handler.clone(), h.clone(), s.clone(), p.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (handler, h, s, p) = (handler.clone(), h.clone(), s.clone(), p.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let seen = Seen {
                                method: parts.method,
                                path: parts.uri.path().to_string(),
                                query: parts.uri.query().map(str::to_owned),
                                headers: parts.headers,
                                body,
                            };
                            h.fetch_add(1, Ordering::SeqCst);
                            *p.lock().unwrap().entry(seen.path.clone()).or_insert(0) += 1;
                            s.lock().unwrap().push(seen.clone());
                            Ok::<_, Infallible>(handler(seen).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin {
            addr,
            hits,
            seen,
            per_path,
            task,
        }
    }

    /// An origin whose every answer is `200` with a body naming the path, query, role, tenant
    /// and the hit number, so two answers are equal only when one was cached.
    pub async fn echo() -> Origin {
        let n = Arc::new(AtomicUsize::new(0));
        Origin::start(move |r| {
            let i = n.fetch_add(1, Ordering::SeqCst);
            let role = header(&r.headers, "x-user-role");
            let tenant = header(&r.headers, "x-org-id");
            let body = format!("path={} query={:?} role={role} tenant={tenant} n={i}", r.path, r.query);
            respond(200, &[], body)
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Total requests served.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Requests served for one path.
    pub fn hits_for(&self, path: &str) -> usize {
        self.per_path.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Every request seen, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the origin saw no request")
    }
}

/// An origin whose GETs answer `v{version}` and whose POSTs bump the version (answering the new
/// number): reads are fresh exactly when they show the last acknowledged write.
pub async fn versioned_origin() -> (Origin, Arc<AtomicUsize>) {
    let version = Arc::new(AtomicUsize::new(0));
    let v = version.clone();
    let origin = Origin::start(move |r| {
        if r.method == Method::POST {
            let n = v.fetch_add(1, Ordering::SeqCst) + 1;
            return respond(200, &[], n.to_string());
        }
        respond(200, &[], format!("v{}", v.load(Ordering::SeqCst)))
    })
    .await;
    (origin, version)
}

pub fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string()
}

/// A complete response.
pub fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<BoxBody> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        resp.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    resp
}

/// A streamed response produced chunk by chunk from a channel; it ends when the sender drops.
pub fn stream_response(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response<BoxBody> {
    Response::new(ChannelBody(rx).boxed())
}

struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A cachegate started in-process.
pub struct Proxy {
    pub running: Option<cachegate::app::Running>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            // Best effort: stop accepting; connections die with the runtime.
            tokio::spawn(r.shutdown());
        }
    }
}

/// Identity lines every test config gets unless it says otherwise: the test client on
/// loopback plays a trusted auth gateway that sends role, tenant and user headers. Tests of
/// untrusted callers set `trust_headers_from` themselves.
const TEST_GATEWAY: &str = "trust_headers_from = [\"127.0.0.1/32\"]\nuser_header = \"X-User-Id\"\n";

/// A config for `origin` with test listeners, followed by `rest` (routes, rules, sections).
pub fn config_text(origin: &Origin, rest: &str) -> String {
    let rest = if rest.contains("trust_headers_from") {
        rest.to_string()
    } else if rest.contains("[identity]\n") {
        rest.replacen("[identity]\n", &format!("[identity]\n{TEST_GATEWAY}"), 1)
    } else {
        format!("[identity]\n{TEST_GATEWAY}{rest}")
    };
    let rest = rest.as_str();
    let server = if rest.contains("[server]") {
        String::new()
    } else {
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n".to_string()
    };
    let origin_section = if rest.contains("[origin]") {
        String::new()
    } else {
        format!("[origin]\nurl = \"{}\"\ntimeout = \"5s\"\n", origin.url())
    };
    format!("{server}{origin_section}{rest}")
}

impl Proxy {
    /// Starts cachegate in front of `origin` with `rest` appended to a test config.
    pub async fn start(origin: &Origin, rest: &str) -> Proxy {
        Proxy::from_text(&config_text(origin, rest)).await
    }

    /// Starts cachegate from a complete config text.
    pub async fn from_text(text: &str) -> Proxy {
        Proxy::from_text_with(text, Default::default()).await
    }

    /// Starts cachegate with purge secrets.
    pub async fn from_text_with(text: &str, secrets: cachegate::secrets::Secrets) -> Proxy {
        let config = match cachegate::config::from_str(text, Path::new("test.toml")) {
            Ok(c) => c,
            Err(e) => panic!("test config is invalid:\n{e}\n---\n{text}"),
        };
        let running = cachegate::app::start_with(config, secrets)
            .await
            .expect("cachegate starts");
        let client = Client::builder(TokioExecutor::new()).build_http();
        Proxy {
            addr: running.proxy_addr,
            admin: running.admin_addr,
            running: Some(running),
            client,
        }
    }

    /// Wraps an instance started elsewhere.
    pub fn from_running(running: cachegate::app::Running) -> Proxy {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Proxy {
            addr: running.proxy_addr,
            admin: running.admin_addr,
            running: Some(running),
            client,
        }
    }

    pub fn running(&self) -> &cachegate::app::Running {
        self.running.as_ref().unwrap()
    }

    /// Moves the freshness clock forward.
    pub fn advance(&self, by: Duration) {
        self.running().clock.advance(by);
    }

    pub fn get(&self, path: &str) -> Req<'_> {
        self.req(Method::GET, path)
    }

    pub fn req(&self, method: Method, path: &str) -> Req<'_> {
        Req {
            proxy: self,
            method,
            path: path.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
            admin: false,
        }
    }

    pub fn admin_get(&self, path: &str) -> Req<'_> {
        self.admin_req(Method::GET, path)
    }

    pub fn admin_req(&self, method: Method, path: &str) -> Req<'_> {
        let mut r = self.req(method, path);
        r.admin = true;
        r
    }
}

/// A request being built.
pub struct Req<'a> {
    proxy: &'a Proxy,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    admin: bool,
}

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> String {
        header(&self.headers, name)
    }
    pub fn x_cache(&self) -> String {
        self.header("x-cache")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl<'a> Req<'a> {
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
    pub fn role(self, r: &str) -> Self {
        self.header("x-user-role", r)
    }
    pub fn tenant(self, t: &str) -> Self {
        self.header("x-org-id", t)
    }
    pub fn body(mut self, b: impl Into<Bytes>) -> Self {
        self.body = b.into();
        self
    }
    pub async fn send(self) -> Resp {
        let addr = if self.admin { self.proxy.admin } else { self.proxy.addr };
        let mut req = Request::builder()
            .method(self.method)
            .uri(format!("http://{addr}{}", self.path));
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(self.body)).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.proxy.client.request(req))
            .await
            .expect("answer within 30s")
            .expect("request succeeds");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body reads").to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// A client whose connections leave from `local`: another loopback address (127.0.0.2) lets a
/// test act as a peer with different trust, such as an auth gateway.
pub fn client_from(local: std::net::IpAddr) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(local));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Polls `f` until it returns true or `deadline` passes.
pub async fn eventually(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    while tokio::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}

/// A real `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        RedisServer::start_with_password(None).await
    }

    /// A server requiring `AUTH password` when `password` is set.
    pub async fn start_with_password(password: Option<&str>) -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            password: password.map(str::to_owned),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(self.dir.path());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}); install it with: apt-get install -y redis-server (scripts/test.sh does)"));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.conn().await {
                if redis::cmd("PING").query_async::<String>(&mut c).await.is_ok() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not answer within 10s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    pub async fn conn(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`) to the server process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id().to_string();
        assert!(std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid)
            .status()
            .unwrap()
            .success());
    }

    /// Starts it again on the same port (empty: nothing is persisted).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `[cache]` lines for a proxy sharing `redis`.
pub fn redis_cache(redis: &RedisServer, prefix: &str) -> String {
    format!("[cache]\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\n", redis.url())
}

impl Proxy {
    /// Waits until Redis is up and this instance hears purges (deadline 10 s).
    pub async fn wait_shared(&self) {
        let cache = self.running().cache.clone();
        assert!(
            eventually(Duration::from_secs(10), || cache.shared_ready()).await,
            "redis tier never became ready"
        );
    }
}

/// The real `cachegate` binary as a child process, killed on drop.
pub struct Binary {
    pub child: std::process::Child,
    pub port: u16,
    pub admin_port: u16,
    /// Log lines up to "cachegate started".
    pub startup_log: Vec<String>,
    /// Later log lines.
    pub log: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Binary {
    /// Starts `cachegate run` with `config` (which must use `{port}` and `{admin_port}` for its
    /// listeners) and waits, with a deadline, for its start-up line.
    pub fn start(config: &str) -> Binary {
        use std::io::BufRead;
        let (port, admin_port) = (free_port(), free_port());
        let text = config
            .replace("{port}", &port.to_string())
            .replace("{admin_port}", &admin_port.to_string());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, text).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cachegate"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut bin = Binary {
            child,
            port,
            admin_port,
            startup_log: Vec::new(),
            log: rx,
            _dir: dir,
        };
        loop {
            let line = bin
                .log
                .recv_timeout(Duration::from_secs(20))
                .expect("cachegate logs its start within 20s");
            let started = line.contains("cachegate started");
            bin.startup_log.push(line);
            if started {
                return bin;
            }
        }
    }

    /// The config file the binary runs with.
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("proxy.toml")
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// GET through the binary's public listener.
    pub async fn get(&self, path: &str) -> Resp {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let req = Request::get(format!("http://127.0.0.1:{}{path}", self.port))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
            .await
            .expect("answer within 30s")
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}
