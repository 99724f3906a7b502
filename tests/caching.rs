//! Reads through the cache: hits, misses, keys, isolation, HEAD, freshness, conditionals.

mod support;

use std::time::Duration;

use http::Method;
use support::{respond, Origin, Proxy};

const COURSES: &str = r#"
[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
vary = ["role", "tenant"]
query = { include = ["page", "department"] }
tags = ["courses"]

[[route]]
name = "lecture_detail"
path = "/lectures/{id}/"
ttl = "20m"
vary = ["role"]
tags = ["lectures", "lecture:{id}"]
"#;

#[tokio::test]
async fn miss_then_hit_returns_identical_body() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, COURSES).await;
    let first = proxy.get("/courses/").role("teacher").tenant("1").send().await;
    let second = proxy.get("/courses/").role("teacher").tenant("1").send().await;
    assert_eq!(first.status, 200);
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(first.header("cache-status"), "cachegate; fwd=miss; stored");
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(second.header("cache-status"), "cachegate; hit");
    assert_eq!(second.header("age"), "0");
    assert_eq!(first.body, second.body);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn roles_and_tenants_never_share_entries_under_interleaving() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, COURSES).await;
    let who = [
        ("admin", "1"),
        ("teacher", "1"),
        ("student", "1"),
        ("teacher", "2"),
        ("student", "2"),
    ];
    let mut tasks = Vec::new();
    for round in 0..8 {
        for (role, tenant) in who {
            let proxy = &proxy;
            tasks.push(async move {
                let r = proxy.get("/courses/").role(role).tenant(tenant).send().await;
                (round, role, tenant, r)
            });
        }
    }
    let results = futures::future::join_all(tasks).await;
    for (_, role, tenant, r) in &results {
        assert_eq!(r.status, 200);
        let body = r.text();
        assert!(
            body.contains(&format!("role={role} tenant={tenant}")),
            "{role}/{tenant} got {body}"
        );
    }
    // Once warmed, every identity reads back its own entry.
    for (role, tenant) in who {
        let r = proxy.get("/courses/").role(role).tenant(tenant).send().await;
        assert_eq!(r.x_cache(), "HIT");
        assert!(r.text().contains(&format!("role={role} tenant={tenant}")));
    }
}

#[tokio::test]
async fn route_that_ignores_tenant_shares_across_tenants() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, COURSES).await;
    proxy.get("/lectures/7/").role("student").tenant("1").send().await;
    let other = proxy.get("/lectures/7/").role("student").tenant("2").send().await;
    assert_eq!(other.x_cache(), "HIT");
    let teacher = proxy.get("/lectures/7/").role("teacher").tenant("1").send().await;
    assert_eq!(teacher.x_cache(), "MISS");
}

#[tokio::test]
async fn query_order_and_encoding_share_one_key() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, COURSES).await;
    let first = proxy.get("/courses/?page=2&department=math").send().await;
    assert_eq!(first.x_cache(), "MISS");
    for variant in [
        "/courses/?department=math&page=2",
        "/courses/?page=%32&department=m%61th",
        "/courses/?department=math&utm_source=x&page=2",
    ] {
        let r = proxy.get(variant).send().await;
        assert_eq!(r.x_cache(), "HIT", "{variant}");
        assert_eq!(r.body, first.body);
    }
    let other = proxy.get("/courses/?page=3&department=math").send().await;
    assert_eq!(other.x_cache(), "MISS");
    // The query is forwarded as the client sent it.
    assert_eq!(origin.last().query.as_deref(), Some("page=3&department=math"));
}

#[tokio::test]
async fn path_is_normalised_before_keying_and_forwarding() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, COURSES).await;
    proxy.get("/lectures/7/").send().await;
    let r = proxy.get("/lectures/%37/").send().await;
    assert_eq!(r.x_cache(), "HIT");
    let r = proxy.get("/lectures/./8/").send().await;
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(origin.last().path, "/lectures/8/");
}

#[tokio::test]
async fn path_traversal_is_refused() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, COURSES).await;
    for bad in ["/lectures/%2e%2e/admin/", "/courses/../admin/", "/courses/%zz"] {
        let r = proxy.get(bad).send().await;
        assert_eq!(r.status, 400, "{bad}");
    }
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, COURSES).await;
    let get = proxy.get("/courses/").send().await;
    let head = proxy.req(Method::HEAD, "/courses/").send().await;
    assert_eq!(head.x_cache(), "HIT");
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), get.body.len().to_string());
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn head_miss_fills_the_cache_with_a_get() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, COURSES).await;
    let head = proxy.req(Method::HEAD, "/courses/").send().await;
    assert_eq!(head.x_cache(), "MISS");
    assert!(head.body.is_empty());
    assert_eq!(origin.last().method, Method::GET);
    let get = proxy.get("/courses/").send().await;
    assert_eq!(get.x_cache(), "HIT");
    assert!(!get.body.is_empty());
}

#[tokio::test]
async fn fixed_ttl_expires() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, COURSES).await;
    proxy.get("/courses/").send().await;
    proxy.advance(Duration::from_secs(9 * 60));
    assert_eq!(proxy.get("/courses/").send().await.x_cache(), "HIT");
    proxy.advance(Duration::from_secs(61));
    assert_eq!(proxy.get("/courses/").send().await.x_cache(), "MISS");
    assert_eq!(origin.hits(), 2);
}

const ORIGIN_TTL: &str = r#"
[[route]]
name = "default"
path = "/{*any}"
ttl = "origin"
"#;

#[tokio::test]
async fn origin_ttl_uses_s_maxage_then_max_age_and_age() {
    let origin = Origin::start(|r| match r.path.as_str() {
        "/smax" => respond(200, &[("cache-control", "max-age=5, s-maxage=100")], "s"),
        "/max" => respond(200, &[("cache-control", "max-age=30")], "m"),
        "/aged" => respond(200, &[("cache-control", "max-age=30"), ("age", "20")], "a"),
        _ => respond(200, &[], "none"),
    })
    .await;
    let proxy = Proxy::start(&origin, ORIGIN_TTL).await;
    for p in ["/smax", "/max", "/aged"] {
        assert_eq!(proxy.get(p).send().await.x_cache(), "MISS");
        assert_eq!(proxy.get(p).send().await.x_cache(), "HIT", "{p}");
    }
    let aged = proxy.get("/aged").send().await;
    assert_eq!(aged.header("age"), "20");
    proxy.advance(Duration::from_secs(11));
    assert_eq!(
        proxy.get("/aged").send().await.x_cache(),
        "MISS",
        "20s old + 11s > max-age=30"
    );
    assert_eq!(proxy.get("/max").send().await.x_cache(), "HIT");
    proxy.advance(Duration::from_secs(20));
    assert_eq!(proxy.get("/max").send().await.x_cache(), "MISS");
    assert_eq!(
        proxy.get("/smax").send().await.x_cache(),
        "HIT",
        "s-maxage wins over max-age"
    );
}

#[tokio::test]
async fn origin_ttl_uses_expires_minus_date() {
    let origin = Origin::start(|_| {
        let now = std::time::SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let expires = httpdate::fmt_http_date(now + Duration::from_secs(60));
        respond(200, &[("date", &date), ("expires", &expires)], "e")
    })
    .await;
    let proxy = Proxy::start(&origin, ORIGIN_TTL).await;
    proxy.get("/e").send().await;
    assert_eq!(proxy.get("/e").send().await.x_cache(), "HIT");
    proxy.advance(Duration::from_secs(61));
    assert_eq!(proxy.get("/e").send().await.x_cache(), "MISS");
}

#[tokio::test]
async fn origin_ttl_without_freshness_stores_nothing() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, ORIGIN_TTL).await;
    let r = proxy.get("/plain").send().await;
    assert_eq!(r.x_cache(), "BYPASS");
    assert_eq!(r.header("cache-status"), "cachegate; fwd=bypass; detail=no-freshness");
    assert_eq!(proxy.get("/plain").send().await.x_cache(), "BYPASS");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn conditional_requests_get_304_from_cache() {
    let origin = Origin::start(|_| {
        respond(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"v1\""),
                ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT"),
            ],
            "body",
        )
    })
    .await;
    let proxy = Proxy::start(&origin, ORIGIN_TTL).await;
    proxy.get("/doc").send().await;
    let r = proxy.get("/doc").header("if-none-match", "\"v1\"").send().await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), "\"v1\"");
    let r = proxy.get("/doc").header("if-none-match", "\"v0\"").send().await;
    assert_eq!(r.status, 200);
    let r = proxy
        .get("/doc")
        .header("if-modified-since", "Tue, 03 Nov 2026 10:00:00 GMT")
        .send()
        .await;
    assert_eq!(r.status, 304);
    assert_eq!(origin.hits(), 1);
    assert!(
        origin.seen().iter().all(|s| !s.headers.contains_key("if-none-match")),
        "fills are unconditional"
    );
}

#[tokio::test]
async fn origin_vary_headers_are_part_of_the_key() {
    let origin = Origin::start(|r| {
        let lang = support::header(&r.headers, "accept-language");
        respond(200, &[("vary", "Accept-Language, Cookie")], format!("lang={lang}"))
    })
    .await;
    let proxy = Proxy::start(&origin, COURSES).await;
    let en = proxy.get("/courses/").header("accept-language", "en").send().await;
    let fr = proxy.get("/courses/").header("accept-language", "fr").send().await;
    assert_eq!(fr.x_cache(), "MISS");
    assert_eq!(fr.text(), "lang=fr");
    let en2 = proxy.get("/courses/").header("accept-language", "en").send().await;
    assert_eq!(en2.x_cache(), "HIT");
    assert_eq!(en2.body, en.body);
}

#[tokio::test]
async fn debug_headers_show_key_and_tier() {
    let origin = Origin::echo().await;
    let rest = format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndebug_headers = true\n[cache]\nkey_prefix = \"t:v1\"\n{COURSES}");
    let proxy = Proxy::start(&origin, &rest).await;
    let miss = proxy.get("/courses/?page=1").role("teacher").tenant("9").send().await;
    assert_eq!(
        miss.header("x-cache-key"),
        "t:v1:course_list:/courses/:page=1:teacher:9::"
    );
    let hit = proxy.get("/courses/?page=1").role("teacher").tenant("9").send().await;
    assert_eq!(hit.header("x-cache-tier"), "memory");
    assert_eq!(hit.header("x-cache-key"), miss.header("x-cache-key"));
}

#[tokio::test]
async fn identity_headers_from_untrusted_peers_are_stripped() {
    let origin = Origin::echo().await;
    let rest = format!("[identity]\ntrust_headers_from = [\"10.0.0.0/8\"]\n{COURSES}");
    let proxy = Proxy::start(&origin, &rest).await;
    let r = proxy.get("/courses/").role("admin").tenant("1").send().await;
    assert!(
        r.text().contains("role=- tenant=-"),
        "origin must not see forged headers: {}",
        r.text()
    );
    assert_eq!(origin.last().headers.get("x-user-role"), None);
    // Keyed as anonymous, so a forged admin header cannot read or poison the admin entry.
    let anon = proxy.get("/courses/").send().await;
    assert_eq!(anon.x_cache(), "HIT");
}

#[tokio::test]
async fn unknown_routes_pass_through_uncached() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, COURSES).await;
    let r = proxy.get("/elsewhere/").send().await;
    assert_eq!(r.x_cache(), "BYPASS");
    assert_eq!(r.header("cache-status"), "cachegate; fwd=bypass; detail=no-route");
    proxy.get("/elsewhere/").send().await;
    assert_eq!(origin.hits(), 2);
}
