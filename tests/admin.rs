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
