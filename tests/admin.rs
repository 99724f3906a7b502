//! The admin listener: liveness, readiness against the origin, and nothing else exposed.

mod support;

use support::{Origin, Proxy};

#[tokio::test]
async fn healthz_and_readyz_when_origin_is_up() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, "").await;
    let h = proxy.admin_get("/healthz").send().await;
    assert_eq!(h.status, 200);
    let r = proxy.admin_get("/readyz").send().await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("reachable"));
    assert_eq!(proxy.admin_get("/nope").send().await.status, 404);
    assert_eq!(origin.hits(), 0, "readiness probes do not send requests to the app");
}

#[tokio::test]
async fn readyz_is_503_when_origin_is_down() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[origin]\nurl = \"http://127.0.0.1:{port}\"\n"
    );
    let proxy = Proxy::from_text(&text).await;
    assert_eq!(proxy.admin_get("/healthz").send().await.status, 200);
    let r = proxy.admin_get("/readyz").send().await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("not ready"), "{}", r.text());
}

/// The value of one sample in a Prometheus text exposition (0 when absent).
fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

const METRIC_ROUTES: &str = r#"
[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
tags = ["courses"]

[[invalidate]]
path = "/courses/{*rest}"
tags = ["courses"]
"#;

#[tokio::test]
async fn metrics_count_every_request_once_by_tier_and_reason() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, METRIC_ROUTES).await;
    proxy.get("/courses/").send().await; // miss
    for _ in 0..3 {
        proxy.get("/courses/").send().await; // hits
    }
    proxy
        .get("/courses/")
        .header("authorization", "Basic eDp5")
        .send()
        .await; // bypass
    proxy.req(http::Method::POST, "/courses/").send().await; // write purge
    proxy.get("/courses/").send().await; // miss again
    proxy.get("/elsewhere").send().await; // no route
    let m = proxy.admin_get("/metrics").send().await;
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").starts_with("text/plain; version=0.0.4"));
    let text = m.text();
    let l = |result: &str, tier: &str| {
        sample(
            &text,
            &format!("cachegate_cache_lookups_total{{result=\"{result}\",route=\"course_list\",tier=\"{tier}\"}}"),
        )
    };
    assert_eq!(l("hit", "memory"), 3.0);
    assert_eq!(l("miss", "none"), 2.0);
    assert_eq!(l("bypass", "none"), 1.0);
    assert_eq!(
        l("hit", "memory") + l("miss", "none") + l("bypass", "none"),
        6.0,
        "one lookup per cacheable-route request"
    );
    assert_eq!(
        sample(
            &text,
            "cachegate_bypass_total{reason=\"credentials\",route=\"course_list\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "cachegate_bypass_total{reason=\"no-route\",route=\"none\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "cachegate_requests_total{method=\"GET\",route=\"course_list\",status=\"200\"}"
        ),
        6.0
    );
    assert_eq!(
        sample(
            &text,
            "cachegate_requests_total{method=\"POST\",route=\"course_list\",status=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "cachegate_purges_total{kind=\"tag\",trigger=\"write\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "cachegate_request_duration_seconds_count{cache=\"hit\",route=\"course_list\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "cachegate_origin_request_duration_seconds_count{route=\"course_list\"}"
        ),
        4.0
    );
    assert_eq!(sample(&text, "cachegate_memory_entries"), 1.0);
    assert!(sample(&text, "cachegate_memory_bytes") > 0.0);
    assert_eq!(sample(&text, "cachegate_redis_up"), 0.0);
}

#[tokio::test]
async fn origin_errors_are_counted_by_kind() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[origin]\nurl = \"http://127.0.0.1:{port}\"\n"
    );
    let proxy = Proxy::from_text(&text).await;
    for _ in 0..2 {
        assert_eq!(proxy.get("/x").send().await.status, 502);
    }
    let m = proxy.admin_get("/metrics").send().await.text();
    assert_eq!(sample(&m, "cachegate_origin_errors_total{kind=\"connect\"}"), 2.0);
}

#[tokio::test]
async fn stats_report_tiers_routes_and_uptime() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, METRIC_ROUTES).await;
    proxy.get("/courses/").send().await;
    proxy.get("/courses/").send().await;
    proxy.get("/courses/").send().await;
    let r = proxy.admin_get("/admin/stats").send().await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["memory"]["entries"], 1);
    assert!(v["memory"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["redis"]["configured"], false);
    assert_eq!(v["config"]["file"], "test.toml");
    assert!(v["uptime_seconds"].is_u64());
    let route = &v["routes"][0];
    assert_eq!(route["route"], "course_list");
    assert_eq!(route["hits"], 2);
    assert_eq!(route["misses"], 1);
    assert!((route["hit_ratio"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
}

#[tokio::test]
async fn readyz_reports_redis_state_without_failing_on_it() {
    let origin = Origin::echo().await;
    // A Redis that is not there: degraded, still ready.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let proxy = Proxy::start(
        &origin,
        &format!("[cache]\nredis_url = \"redis://127.0.0.1:{port}/0\"\n"),
    )
    .await;
    let r = proxy.admin_get("/readyz").send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("redis: down"), "{}", r.text());
    assert_eq!(
        proxy.get("/x").send().await.status,
        200,
        "Redis down never causes a 5xx"
    );
}

/// The value of one sample in a Prometheus text exposition, `None` when the series is absent.
fn series(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
}

/// Every family cachegate exports: the SPEC's and the session lookup ones.
const FAMILIES: &[&str] = &[
    "cachegate_requests_total",
    "cachegate_cache_lookups_total",
    "cachegate_bypass_total",
    "cachegate_request_duration_seconds",
    "cachegate_origin_request_duration_seconds",
    "cachegate_origin_errors_total",
    "cachegate_purges_total",
    "cachegate_purged_entries_total",
    "cachegate_coalesced_requests_total",
    "cachegate_redis_up",
    "cachegate_redis_errors_total",
    "cachegate_memory_entries",
    "cachegate_memory_bytes",
    "cachegate_memory_evictions_total",
    "cachegate_config_reloads_total",
    "cachegate_identity_lookups_total",
    "cachegate_identity_lookup_duration_seconds",
];

/// The per-route series a scrape must show at 0 for `route` before it has served anything.
fn route_series(route: &str) -> Vec<String> {
    let mut s = vec![
        format!("cachegate_requests_total{{method=\"GET\",route=\"{route}\",status=\"200\"}}"),
        format!("cachegate_origin_request_duration_seconds_count{{route=\"{route}\"}}"),
        format!("cachegate_coalesced_requests_total{{route=\"{route}\"}}"),
    ];
    for (result, tier) in [
        ("hit", "memory"),
        ("hit", "redis"),
        ("stale", "memory"),
        ("stale", "redis"),
        ("miss", "none"),
        ("bypass", "none"),
    ] {
        s.push(format!(
            "cachegate_cache_lookups_total{{result=\"{result}\",route=\"{route}\",tier=\"{tier}\"}}"
        ));
    }
    for reason in [
        "credentials",
        "no-user",
        "range",
        "no-store",
        "private",
        "set-cookie",
        "too-large",
    ] {
        s.push(format!(
            "cachegate_bypass_total{{reason=\"{reason}\",route=\"{route}\"}}"
        ));
    }
    for cache in ["pass", "hit", "stale", "miss", "bypass"] {
        s.push(format!(
            "cachegate_request_duration_seconds_count{{cache=\"{cache}\",route=\"{route}\"}}"
        ));
    }
    s
}

/// What `expected` lacks in `exposition`, or holds at a value other than 0.
fn not_at_zero(exposition: &str, expected: &[String]) -> Vec<String> {
    expected
        .iter()
        .filter(|s| series(exposition, s) != Some(0.0))
        .cloned()
        .collect()
}

#[tokio::test]
async fn metric_families_present_in_first_scrape() {
    let origin = Origin::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let config = |routes: &[&str]| {
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[origin]\nurl = \"{}\"\n",
            origin.url()
        );
        for r in routes {
            text.push_str(&format!("[[route]]\nname = \"{r}\"\npath = \"/{r}/\"\nttl = \"10m\"\n"));
        }
        text
    };
    std::fs::write(&path, config(&["r1", "r2"])).unwrap();
    let config_file = cachegate::config::load(&path).unwrap();
    let running = cachegate::app::start_with(config_file, Default::default())
        .await
        .unwrap();
    let proxy = Proxy::from_running(running);

    let text = proxy.admin_get("/metrics").send().await.text();
    let missing: Vec<&str> = FAMILIES
        .iter()
        .copied()
        .filter(|f| !text.contains(&format!("# TYPE {f} ")))
        .collect();
    assert!(
        missing.is_empty(),
        "families missing from the first scrape: {missing:?}"
    );
    let mut expected: Vec<String> = ["r1", "r2"].iter().flat_map(|r| route_series(r)).collect();
    expected.extend(
        [
            "cachegate_requests_total{method=\"GET\",route=\"none\",status=\"200\"}",
            "cachegate_bypass_total{reason=\"no-route\",route=\"none\"}",
            "cachegate_request_duration_seconds_count{cache=\"bypass\",route=\"none\"}",
            "cachegate_origin_request_duration_seconds_count{route=\"none\"}",
            "cachegate_origin_errors_total{kind=\"timeout\"}",
            "cachegate_origin_errors_total{kind=\"connect\"}",
            "cachegate_origin_errors_total{kind=\"request\"}",
            "cachegate_redis_errors_total{op=\"lookup\"}",
            "cachegate_redis_errors_total{op=\"store\"}",
            "cachegate_redis_errors_total{op=\"purge\"}",
            "cachegate_redis_errors_total{op=\"down\"}",
            "cachegate_purges_total{kind=\"tag\",trigger=\"write\"}",
            "cachegate_purges_total{kind=\"path\",trigger=\"write\"}",
            "cachegate_purges_total{kind=\"all\",trigger=\"webhook\"}",
            "cachegate_purges_total{kind=\"route\",trigger=\"webhook\"}",
            "cachegate_purges_total{kind=\"tenant\",trigger=\"webhook\"}",
            "cachegate_config_reloads_total{result=\"ok\"}",
            "cachegate_config_reloads_total{result=\"error\"}",
            "cachegate_identity_lookups_total{result=\"ok\"}",
            "cachegate_identity_lookups_total{result=\"error\"}",
        ]
        .map(String::from),
    );
    let absent = not_at_zero(&text, &expected);
    assert!(absent.is_empty(), "series not at 0 in the first scrape: {absent:#?}");
    assert!(
        series(
            &text,
            "cachegate_cache_lookups_total{result=\"hit\",route=\"none\",tier=\"none\"}"
        )
        .is_none()
            && series(
                &text,
                "cachegate_cache_lookups_total{result=\"miss\",route=\"r1\",tier=\"memory\"}"
            )
            .is_none(),
        "only label combinations the proxy can produce are created"
    );
    assert_eq!(origin.hits(), 0);

    std::fs::write(&path, config(&["r1", "r2", "r3"])).unwrap();
    proxy.running().reloader.reload().await.unwrap();
    let text = proxy.admin_get("/metrics").send().await.text();
    let absent = not_at_zero(&text, &route_series("r3"));
    assert!(
        absent.is_empty(),
        "series of the reloaded-in route not at 0: {absent:#?}"
    );
    assert_eq!(
        series(&text, "cachegate_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
}

mod raw {
    //! Admin requests written byte by byte on a TCP stream, so a test can send headers and
    //! then hold the body back.

    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Opens a connection and sends `head` (request line and headers, without the blank line)
    /// followed by the first `body` bytes.
    pub async fn send_head(addr: SocketAddr, head: &str, body: &[u8]) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("{head}\r\n\r\n").as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        s
    }

    /// Reads until the end of the response head and returns its status code. The deadline only
    /// keeps a broken server from hanging the test.
    pub async fn status(s: &mut (impl AsyncRead + Unpin)) -> u16 {
        let mut buf = Vec::new();
        let read = async {
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).await.expect("the connection stays readable");
                assert!(n > 0, "the connection closed before any answer");
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("an answer while the body is still missing");
        let text = String::from_utf8_lossy(&buf);
        text.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line")
    }

    /// Whether the server closes the connection (reads to EOF, discarding the rest of the
    /// answer).
    pub async fn closed(s: &mut (impl AsyncRead + Unpin)) -> bool {
        let drain = async {
            let mut chunk = [0u8; 1024];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), drain).await.is_ok()
    }
}

fn purge_secrets() -> cachegate::secrets::Secrets {
    cachegate::secrets::Secrets {
        purge_token: Some("s3cret".into()),
        purge_hmac: Some("hmac-key".into()),
        ..Default::default()
    }
}

/// A request that claims a 1 MiB body and sends a few bytes of it: with no credential, a wrong
/// one, or a stale signature, the answer is 401 at once. Were the server reading the body
/// first, it would wait for bytes that never come and no answer would arrive.
#[tokio::test]
async fn admin_refuses_unauthenticated_body_before_reading() {
    let origin = Origin::echo().await;
    let text = support::config_text(&origin, "");
    let proxy = Proxy::from_text_with(&text, purge_secrets()).await;
    let stale = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let credentials = [
        ("none", String::new()),
        ("wrong token", "\r\nAuthorization: Bearer wrong".to_string()),
        ("no scheme", "\r\nAuthorization: s3cret".to_string()),
        ("stale signature", format!("\r\nX-Cachegate-Signature: t={stale},v1=00")),
        ("malformed signature", "\r\nX-Cachegate-Signature: nonsense".to_string()),
    ];
    for path in ["/purge", "/admin/warm", "/admin/reload"] {
        for (what, cred) in &credentials {
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: 1048576{cred}"
            );
            let mut s = raw::send_head(proxy.admin, &head, br#"{"tags": ["#).await;
            assert_eq!(raw::status(&mut s).await, 401, "{path}, {what}");
            assert!(
                raw::closed(&mut s).await,
                "{path}, {what}: the half-sent request's connection is closed"
            );
        }
    }
    // Authenticated, but declaring more than the endpoint takes: refused without reading.
    let head = "POST /purge HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer s3cret\r\nContent-Length: 10485760";
    let mut s = raw::send_head(proxy.admin, head, b"{").await;
    assert_eq!(raw::status(&mut s).await, 413);
    // And the endpoint still works for a complete, authenticated body.
    let ok = proxy
        .admin_req(http::Method::POST, "/purge")
        .header("authorization", "Bearer s3cret")
        .body(r#"{"all": true}"#)
        .send()
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
}

/// An authenticated request whose body stalls, or trickles in too slowly, gets 408 and its
/// connection closed once the body read times out (`client_timeout = "1s"` here, shorter than
/// the 10 s default, to keep the test quick).
#[tokio::test]
async fn admin_body_read_times_out() {
    let origin = Origin::echo().await;
    let text = support::config_text(
        &origin,
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nclient_timeout = \"1s\"\n",
    );
    let proxy = Proxy::from_text_with(&text, purge_secrets()).await;
    let head = "POST /purge HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer s3cret\r\nContent-Length: 100";

    let mut stalled = raw::send_head(proxy.admin, head, br#"{"tags": ["#).await;
    assert_eq!(raw::status(&mut stalled).await, 408, "a stalled body");
    assert!(raw::closed(&mut stalled).await, "the stalled connection is closed");

    // One byte every 100 ms would take 10 s for the whole body: the deadline covers the read,
    // not each byte.
    let trickled = raw::send_head(proxy.admin, head, b"{").await;
    let (mut rx, mut tx) = trickled.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        for _ in 0..99 {
            tick.tick().await;
            if tx.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    assert_eq!(raw::status(&mut rx).await, 408, "a trickled body");
    assert!(raw::closed(&mut rx).await, "the trickling connection is closed");
    writer.abort();
}

/// A route without traffic has no hit ratio (`null`): 0.0 would read as "never hits".
#[tokio::test]
async fn stats_hit_ratio_is_null_for_a_route_without_traffic() {
    let origin = Origin::echo().await;
    let routes = format!("{METRIC_ROUTES}\n[[route]]\nname = \"idle\"\npath = \"/idle/\"\nttl = \"10m\"\n");
    let proxy = Proxy::start(&origin, &routes).await;
    proxy.get("/courses/").send().await;
    let v: serde_json::Value = serde_json::from_slice(&proxy.admin_get("/admin/stats").send().await.body).unwrap();
    assert_eq!(v["routes"][0]["hit_ratio"], 0.0, "a miss is traffic: ratio 0");
    assert_eq!(v["routes"][1]["route"], "idle");
    assert!(v["routes"][1]["hit_ratio"].is_null(), "{}", v["routes"][1]);
}
