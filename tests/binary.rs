//! The real `cachegate` binary: starts with the shipped proxy.toml without Redis, serves MISS then
//! HIT, stops cleanly on SIGTERM, relays a 100 MiB uncached body without holding it in memory,
//! and answers `curl --http2` over TLS and by prior knowledge.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::{stream_response, Binary, Origin};

/// The shipped proxy.toml, pointed at `origin` and at free loopback ports.
fn shipped_config(origin: &Origin) -> String {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")).unwrap();
    let text = shipped
        .replace("listen = \"0.0.0.0:8080\"", "listen = \"127.0.0.1:{port}\"")
        .replace(
            "admin_listen = \"127.0.0.1:9091\"",
            "admin_listen = \"127.0.0.1:{admin_port}\"",
        )
        .replace(
            "url = \"http://127.0.0.1:8000\"",
            &format!("url = \"{}\"", origin.url()),
        );
    assert_ne!(text, shipped);
    text
}

fn client() -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

#[tokio::test(flavor = "multi_thread")]
async fn shipped_config_runs_memory_only_and_stops_on_sigterm() {
    let origin = Origin::echo().await;
    let mut bin = Binary::start(&shipped_config(&origin));
    let log = bin.startup_log.join("\n");
    assert!(log.contains("memory tier only"), "{log}");
    // The shipped config names identity headers but trusts no peer: start-up says so.
    assert!(log.contains("trust_headers_from is empty"), "{log}");
    assert!(log.contains(&format!("listen=127.0.0.1:{}", bin.port)), "{log}");
    assert!(log.contains(&format!("origin={}", origin.url())), "{log}");
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(bin.get("/courses/").await.x_cache());
    }
    assert_eq!(seen, ["MISS", "HIT"]);
    assert_eq!(origin.hits(), 1);
    bin.signal("TERM");
    let (status, rest) = tokio::task::spawn_blocking(move || {
        let s = bin.child.wait().unwrap();
        let rest: Vec<String> = bin.log.try_iter().collect();
        (s, rest)
    })
    .await
    .unwrap();
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}");
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
    let bin = Binary::start(&shipped_config(&origin));
    let before = peak_rss_kib(bin.child.id());
    // /download/ matches only the catch-all ttl="origin" route and carries no freshness: streamed.
    let url = format!("http://127.0.0.1:{}/download/big.bin", bin.port);
    let req = http::Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), client().request(req))
        .await
        .unwrap()
        .unwrap();
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
    let peak = peak_rss_kib(bin.child.id());
    assert!(
        peak < before + 48 * 1024,
        "peak RSS grew from {before} KiB to {peak} KiB while relaying 100 MiB"
    );
}

/// `curl --http2` against the binary: h2 over TLS (ALPN) and h2c by prior knowledge, MISS then
/// HIT on each.
#[tokio::test(flavor = "multi_thread")]
async fn curl_http2_over_tls_and_h2c_sees_miss_then_hit() {
    let origin = Origin::echo().await;
    let ca = support::pki::TestCa::new("binary test CA");
    let (cert, key) = ca.issue("server", "cachegate", false);
    let config = shipped_config(&origin).replace(
        "# tls = { cert = \"/etc/cachegate/cert.pem\", key = \"/etc/cachegate/key.pem\" }",
        &format!("tls = {{ cert = \"{}\", key = \"{}\" }}", cert.display(), key.display()),
    );
    assert!(
        config.contains("\ntls = {"),
        "the shipped config's tls example line moved"
    );
    let bin = Binary::start(&config);
    let curl = |args: Vec<String>| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_version} %header{x-cache}"])
            .args(args)
            .output()
            .expect("curl runs (scripts/test.sh installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let https = format!("https://127.0.0.1:{}/courses/", bin.port);
    let ca_file = ca.ca_file().display().to_string();
    for expected in ["2 MISS", "2 HIT"] {
        let args = vec!["--http2".into(), "--cacert".into(), ca_file.clone(), https.clone()];
        assert_eq!(tokio::task::spawn_blocking(move || curl(args)).await.unwrap(), expected);
    }
    drop(bin);
    // Without TLS, HTTP/2 by prior knowledge.
    let bin = Binary::start(&shipped_config(&origin));
    let h2c = format!("http://127.0.0.1:{}/courses/", bin.port);
    for expected in ["2 MISS", "2 HIT"] {
        let args = vec!["--http2-prior-knowledge".into(), h2c.clone()];
        assert_eq!(tokio::task::spawn_blocking(move || curl(args)).await.unwrap(), expected);
    }
}

/// The access log line has the path, the query and the client address; the query is logged as keyed on a route (parameters the route does not key, such as a token,
/// are not logged) and by parameter names only without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_path_query_and_client_but_no_unkeyed_query_values() {
    let origin = Origin::echo().await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{{port}}\"\nadmin_listen = \"127.0.0.1:{{admin_port}}\"\naccess_log = true\n[origin]\nurl = \"{}\"\n[[route]]\nname = \"courses\"\npath = \"/courses/\"\nttl = \"10m\"\nquery = {{ include = [\"page\"] }}\n",
        origin.url()
    );
    let bin = Binary::start(&config);
    assert_eq!(bin.get("/courses/?token=s3cret-a&page=2").await.status, 200);
    assert_eq!(bin.get("/elsewhere?token=s3cret-b").await.status, 200);
    let mut access = Vec::new();
    while access.len() < 2 {
        let line = bin
            .log
            .recv_timeout(Duration::from_secs(20))
            .expect("two access log lines");
        if line.contains("cachegate::access") {
            access.push(line);
        }
    }
    let (keyed, unrouted) = (&access[0], &access[1]);
    for line in [keyed, unrouted] {
        assert!(line.contains("client=127.0.0.1"), "{line}");
        assert!(
            !line.contains("s3cret"),
            "a query value the route does not key leaked: {line}"
        );
    }
    assert!(keyed.contains("/courses/") && keyed.contains("page=2"), "{keyed}");
    assert!(
        keyed.contains("method=GET") && keyed.contains("route=\"courses\""),
        "{keyed}"
    );
    assert!(
        unrouted.contains("/elsewhere") && unrouted.contains("token"),
        "{unrouted}"
    );
}
