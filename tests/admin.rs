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
