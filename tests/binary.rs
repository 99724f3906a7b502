//! The real `cachegate` binary: starts with the shipped proxy.toml without Redis, serves MISS then
//! HIT, stops cleanly on SIGTERM, and relays a 100 MiB uncached body without holding it in memory.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::{stream_response, Origin};

/// Kills the child on drop so a failing test leaves nothing running.
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

/// The shipped proxy.toml, pointed at `origin` and at free loopback ports.
fn shipped_config(origin: &Origin) -> (tempfile::TempDir, std::path::PathBuf, u16) {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")).unwrap();
    let port = free_port();
    let text = shipped
        .replace("listen = \"0.0.0.0:8080\"", &format!("listen = \"127.0.0.1:{port}\""))
        .replace(
            "admin_listen = \"127.0.0.1:9091\"",
            &format!("admin_listen = \"127.0.0.1:{}\"", free_port()),
        )
        .replace(
            "url = \"http://127.0.0.1:8000\"",
            &format!("url = \"{}\"", origin.url()),
        );
    assert_ne!(text, shipped);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path, port)
}

/// Starts the binary and waits (with a deadline) for its "started" log line; returns the guard
/// and every log line seen so far plus a receiver for later ones.
fn spawn(config: &std::path::Path) -> (Guard, Vec<String>, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cachegate"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let guard = Guard(child);
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("cachegate logs its start within 20s");
        let started = line.contains("cachegate started");
        lines.push(line);
        if started {
            return (guard, lines, rx);
        }
    }
}

fn client() -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

#[tokio::test(flavor = "multi_thread")]
async fn shipped_config_runs_memory_only_and_stops_on_sigterm() {
    let origin = Origin::echo().await;
    let (_dir, path, port) = shipped_config(&origin);
    let (mut guard, lines, rx) = spawn(&path);
    let log = lines.join("\n");
    assert!(log.contains("memory tier only"), "{log}");
    assert!(log.contains(&format!("listen=127.0.0.1:{port}")), "{log}");
    assert!(log.contains(&format!("origin={}", origin.url())), "{log}");
    let c = client();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let req = http::Request::get(format!("http://127.0.0.1:{port}/courses/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = c.request(req).await.unwrap();
        seen.push(support::header(resp.headers(), "x-cache"));
    }
    assert_eq!(seen, ["MISS", "HIT"]);
    assert_eq!(origin.hits(), 1);
    let pid = guard.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || {
        let s = guard.0.wait().unwrap();
        (s, guard)
    })
    .await
    .unwrap()
    .0;
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}");
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_mib_uncached_body_streams_with_bounded_memory() {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 100 * 1024 * 1024;
    let origin = Origin::start_async(|_| async {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'z'; CHUNK]);
            for _ in 0..TOTAL / CHUNK {
                if tx.send(chunk.clone()).await.is_err() {
                    return;
                }
            }
        });
        stream_response(rx)
    })
    .await;
    let (_dir, path, port) = shipped_config(&origin);
    let (guard, _lines, _rx) = spawn(&path);
    let before = peak_rss_kib(guard.0.id());
    // /download/ matches only the catch-all ttl="origin" route and carries no freshness: streamed.
    let req = http::Request::get(format!("http://127.0.0.1:{port}/download/big.bin"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(support::header(resp.headers(), "x-cache"), "BYPASS");
    let mut body = resp.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            assert!(data.iter().all(|b| *b == b'z'));
            received += data.len();
        }
    }
    assert_eq!(received, TOTAL);
    let peak = peak_rss_kib(guard.0.id());
    assert!(
        peak < before + 48 * 1024,
        "peak RSS grew from {before} KiB to {peak} KiB while relaying 100 MiB"
    );
}
