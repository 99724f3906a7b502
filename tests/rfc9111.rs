//! HTTP caching conformance, rule by rule, against a scripted origin whose every answer the
//! test sets (status, headers, body, interim answers, a closed or reset connection). Tests are
//! named after the section they check: RFC 9111 (caching), RFC 9110 (semantics: ranges,
//! conditionals), RFC 5861 (stale directives), RFC 9213 (targeted fields) and RFC 9875 (cache
//! groups).
//!
//! The config mirrors the shipped one: a global `stale_while_revalidate` and `stale_if_error`,
//! which on `ttl = "origin"` routes must not let cachegate serve answers the origin forbade.

mod support;

use std::time::Duration;

use http::Method;
use support::scripted::{answer, Scripted, Step};
use support::shared::{Kind, SharedRedis};
use support::Proxy;

on_node_and_cluster!(sec_4_3_4_revalidation_and_group_purges_cross_instances);

fn config(origin: &Scripted, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[origin]
url = "{}"
timeout = "5s"

[cache]
stale_while_revalidate = "30s"
stale_if_error = "5m"
{extra}

[[route]]
name = "fixed"
path = "/fixed/{{*rest}}"
ttl = "60s"

[[route]]
name = "cookie"
path = "/cookie/{{*rest}}"
ttl = "60s"
strip_set_cookie = true

[[route]]
name = "origin"
path = "/{{*any}}"
ttl = "origin"
"#,
        origin.url()
    )
}

async fn start(steps: Vec<Step>) -> (Scripted, Proxy) {
    start_with(steps, "").await
}

async fn start_with(steps: Vec<Step>, extra: &str) -> (Scripted, Proxy) {
    let origin = Scripted::start(steps).await;
    let proxy = Proxy::from_text(&config(&origin, extra)).await;
    (origin, proxy)
}

// === §4.3: validation ===

#[tokio::test]
async fn sec_4_3_1_expired_entry_is_revalidated_with_its_validators() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[
            ("cache-control", "max-age=10"),
            ("etag", "\"v1\""),
            ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT"),
        ],
        "first",
    )])
    .await;
    assert_eq!(proxy.get("/page").send().await.x_cache(), "MISS");
    assert_eq!(proxy.get("/page").send().await.x_cache(), "HIT");
    proxy.advance(Duration::from_secs(11));
    origin.then(vec![answer(
        304,
        &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
        "",
    )]);
    let r = proxy.get("/page").send().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "first", "the stored body answers a 304");
    assert_eq!(r.x_cache(), "REVALIDATED");
    assert!(
        r.header("cache-status").contains("fwd-status=304"),
        "{}",
        r.header("cache-status")
    );
    let asked = origin.last();
    assert_eq!(asked.header("if-none-match"), "\"v1\"");
    assert_eq!(asked.header("if-modified-since"), "Mon, 02 Nov 2026 10:00:00 GMT");
    // Refreshed: fresh again for the 304's max-age.
    assert_eq!(proxy.get("/page").send().await.x_cache(), "HIT");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn sec_4_3_1_client_validators_never_reach_a_fill() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
        "x",
    )])
    .await;
    let r = proxy
        .get("/page")
        .header("if-none-match", "\"other\"")
        .header("if-modified-since", "Mon, 02 Nov 2026 10:00:00 GMT")
        .send()
        .await;
    assert_eq!(r.status, 200);
    let asked = origin.last();
    assert_eq!(asked.header("if-none-match"), "", "the fill wants the whole answer");
    assert_eq!(asked.header("if-modified-since"), "");
}

#[tokio::test]
async fn sec_4_3_2_conditional_client_gets_304_from_a_fill_and_a_hit() {
    let (_origin, proxy) = start(vec![answer(
        200,
        &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
        "x",
    )])
    .await;
    let r = proxy.get("/page").header("if-none-match", "\"v1\"").send().await;
    assert_eq!((r.status.as_u16(), r.x_cache().as_str()), (304, "MISS"));
    assert!(r.body.is_empty());
    let r = proxy.get("/page").header("if-none-match", "W/\"v1\"").send().await;
    assert_eq!((r.status.as_u16(), r.x_cache().as_str()), (304, "HIT"));
    let r = proxy.get("/page").header("if-none-match", "\"v2\"").send().await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "x"));
}

#[tokio::test]
async fn sec_4_3_4_freshening_updates_stored_headers() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[
            ("cache-control", "max-age=10"),
            ("etag", "\"v1\""),
            ("x-version", "1"),
            ("content-type", "text/plain"),
        ],
        "body-v1",
    )])
    .await;
    proxy.get("/page").send().await;
    proxy.advance(Duration::from_secs(11));
    origin.then(vec![answer(
        304,
        &[
            ("cache-control", "max-age=100"),
            ("etag", "\"v1\""),
            ("x-version", "2"),
            // Describes the 304 itself, never the stored bytes (§3.2).
            ("content-length", "0"),
        ],
        "",
    )]);
    let r = proxy.get("/page").send().await;
    assert_eq!(r.header("x-version"), "2");
    assert_eq!(r.text(), "body-v1");
    assert_eq!(r.header("content-length"), "7");
    // The new max-age applies: fresh 50 s later, from the stored copy, updated headers kept.
    proxy.advance(Duration::from_secs(50));
    let r = proxy.get("/page").send().await;
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(r.header("x-version"), "2");
    assert_eq!(r.header("content-type"), "text/plain");
    assert_eq!(r.text(), "body-v1");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn sec_4_3_4_a_304_for_another_representation_is_not_applied() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
        "one",
    )])
    .await;
    proxy.get("/page").send().await;
    proxy.advance(Duration::from_secs(11));
    origin.then(vec![
        answer(304, &[("cache-control", "max-age=10"), ("etag", "\"v2\"")], ""),
        answer(200, &[("cache-control", "max-age=10"), ("etag", "\"v2\"")], "two"),
    ]);
    let r = proxy.get("/page").send().await;
    assert_eq!(
        r.text(),
        "two",
        "a 304 naming another entity tag does not refresh the stored one"
    );
    let asked = origin.asked();
    assert_eq!(asked.len(), 3);
    assert_eq!(asked[2].header("if-none-match"), "", "asked again, unconditionally");
}

#[tokio::test]
async fn sec_4_3_4_a_304_that_forbids_storing_serves_but_does_not_store() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[("cache-control", "max-age=10, stale-if-error=600"), ("etag", "\"v1\"")],
        "one",
    )])
    .await;
    proxy.get("/page").send().await;
    proxy.advance(Duration::from_secs(11));
    origin.then(vec![
        answer(304, &[("cache-control", "no-store"), ("etag", "\"v1\"")], ""),
        answer(503, &[], "down"),
    ]);
    let r = proxy.get("/page").send().await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "one"));
    assert!(r.header("cache-status").contains("not-stored"));
    // The origin's last word was no-store: the old copy is no answer for a failure either.
    let r = proxy.get("/page").send().await;
    assert_eq!(r.status, 503);
    assert_eq!(origin.hits(), 3, "nothing fresh was stored");
}

#[tokio::test]
async fn sec_4_3_4_a_304_without_the_targeted_field_is_judged_with_the_stored_one() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[
            ("cache-control", "max-age=3600, stale-if-error=3600"),
            ("cachegate-cache-control", "max-age=10, must-revalidate"),
            ("etag", "\"t1\""),
        ],
        "t",
    )])
    .await;
    proxy.get("/t").send().await;
    proxy.advance(Duration::from_secs(11));
    // Like many frameworks' 304s: Cache-Control and ETag, nothing else.
    origin.then(vec![
        answer(
            304,
            &[
                ("cache-control", "max-age=3600, stale-if-error=3600"),
                ("etag", "\"t1\""),
            ],
            "",
        ),
        answer(503, &[], "down"),
    ]);
    let r = proxy.get("/t").send().await;
    assert_eq!(r.x_cache(), "REVALIDATED");
    assert_eq!(r.header("cachegate-cache-control"), "-", "still never sent");
    proxy.advance(Duration::from_secs(20));
    let r = proxy.get("/t").send().await;
    assert_eq!(
        r.status, 503,
        "max-age=10, must-revalidate still rules: no stale answer"
    );
}

#[tokio::test]
async fn sec_4_2_4_an_answer_arriving_stale_has_used_up_its_windows() {
    for cc in ["max-age=10, stale-while-revalidate=60", "max-age=10, stale-if-error=60"] {
        let (origin, proxy) = start(vec![answer(
            200,
            &[("cache-control", cc), ("age", "1000"), ("etag", "\"a\"")],
            "old",
        )])
        .await;
        proxy.get("/late").send().await;
        origin.then(vec![answer(503, &[], "down")]);
        let r = proxy.get("/late").send().await;
        assert_eq!(r.status, 503, "{cc}: stale for 990 s already, past a 60 s window");
    }
}

#[tokio::test]
async fn sec_5_2_2_4_no_cache_is_stored_and_revalidated_on_every_use() {
    let (origin, proxy) = start(vec![
        answer(200, &[("cache-control", "no-cache"), ("etag", "\"n1\"")], "nc"),
        answer(304, &[("cache-control", "no-cache"), ("etag", "\"n1\"")], ""),
    ])
    .await;
    assert_eq!(proxy.get("/nc").send().await.x_cache(), "MISS");
    for _ in 0..2 {
        let r = proxy.get("/nc").send().await;
        assert_eq!((r.x_cache().as_str(), r.text().as_str()), ("REVALIDATED", "nc"));
        assert_eq!(origin.last().header("if-none-match"), "\"n1\"");
    }
    assert_eq!(origin.hits(), 3, "every use asks the origin");
}

#[tokio::test]
async fn sec_5_2_2_4_no_cache_without_a_validator_is_not_stored() {
    let (origin, proxy) = start(vec![answer(200, &[("cache-control", "no-cache")], "nc")]).await;
    let r = proxy.get("/nc").send().await;
    assert_eq!(r.x_cache(), "BYPASS");
    assert!(r.header("cache-status").contains("no-cache"));
    proxy.get("/nc").send().await;
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn sec_4_3_1_fixed_ttl_routes_revalidate_too() {
    let (origin, proxy) = start(vec![answer(200, &[("etag", "\"f1\"")], "fixed")]).await;
    assert_eq!(proxy.get("/fixed/a").send().await.x_cache(), "MISS");
    // Past the 60 s TTL and both configured windows (30 s, 5 min), inside the keep.
    proxy.advance(Duration::from_secs(60 + 301));
    origin.then(vec![answer(304, &[("etag", "\"f1\"")], "")]);
    let r = proxy.get("/fixed/a").send().await;
    assert_eq!((r.x_cache().as_str(), r.text().as_str()), ("REVALIDATED", "fixed"));
    assert_eq!(proxy.get("/fixed/a").send().await.x_cache(), "HIT");
}

#[tokio::test]
async fn keep_zero_turns_revalidation_off() {
    let (origin, proxy) = start_with(
        vec![answer(
            200,
            &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
            "one",
        )],
        "keep = \"0s\"",
    )
    .await;
    proxy.get("/page").send().await;
    proxy.advance(Duration::from_secs(11));
    let r = proxy.get("/page").send().await;
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(origin.last().header("if-none-match"), "");
}

// === §4.2.4 and RFC 5861: stale answers on origin routes ===

/// An entry made at t=0 with `cc`, then the clock moves `after` and the origin fails.
async fn stale_when_failing(cc: &str, after: u64) -> support::Resp {
    let (origin, proxy) = start(vec![answer(200, &[("cache-control", cc)], "old")]).await;
    assert_eq!(proxy.get("/s").send().await.x_cache(), "MISS");
    proxy.advance(Duration::from_secs(after));
    origin.then(vec![answer(503, &[], "down")]);
    proxy.get("/s").send().await
}

#[tokio::test]
async fn sec_4_2_4_global_stale_windows_do_not_apply_to_origin_routes() {
    // `[cache] stale_while_revalidate = "30s"` is set; the origin granted no stale window.
    let (origin, proxy) = start(vec![answer(200, &[("cache-control", "max-age=10")], "old")]).await;
    proxy.get("/s").send().await;
    proxy.advance(Duration::from_secs(15));
    origin.then(vec![answer(200, &[("cache-control", "max-age=10")], "new")]);
    let r = proxy.get("/s").send().await;
    assert_eq!((r.x_cache().as_str(), r.text().as_str()), ("MISS", "new"));
    // And no stale-if-error either (the global 5 min).
    let r = stale_when_failing("max-age=10", 15).await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn rfc5861_3_origin_stale_while_revalidate_is_honoured() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[("cache-control", "max-age=10, stale-while-revalidate=60")],
        "old",
    )])
    .await;
    proxy.get("/s").send().await;
    proxy.advance(Duration::from_secs(15));
    origin.then(vec![answer(200, &[("cache-control", "max-age=10")], "new")]);
    let r = proxy.get("/s").send().await;
    assert_eq!((r.x_cache().as_str(), r.text().as_str()), ("STALE", "old"));
}

#[tokio::test]
async fn rfc5861_4_origin_stale_if_error_is_honoured() {
    let r = stale_when_failing("max-age=10, stale-if-error=600", 15).await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache().as_str(), r.text().as_str()),
        (200, "STALE", "old")
    );
    // Past the origin's window: the error.
    let r = stale_when_failing("max-age=10, stale-if-error=600", 700).await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn sec_5_2_2_2_must_revalidate_is_never_served_stale() {
    let r = stale_when_failing("max-age=10, must-revalidate, stale-if-error=600", 15).await;
    assert_eq!(r.status, 503);
    let r = stale_when_failing("max-age=10, proxy-revalidate, stale-if-error=600", 15).await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn sec_5_2_2_10_s_maxage_is_never_served_stale() {
    let r = stale_when_failing("s-maxage=10, stale-if-error=600, stale-while-revalidate=600", 15).await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn route_opt_in_allows_stale_on_an_origin_route() {
    let origin = Scripted::start(vec![answer(200, &[("cache-control", "max-age=10")], "old")]).await;
    let text = config(&origin, "").replace(
        "name = \"origin\"\npath = \"/{*any}\"\nttl = \"origin\"",
        "name = \"origin\"\npath = \"/{*any}\"\nttl = \"origin\"\nstale_if_error = \"10m\"",
    );
    assert!(text.contains("stale_if_error = \"10m\""));
    let proxy = Proxy::from_text(&text).await;
    proxy.get("/s").send().await;
    proxy.advance(Duration::from_secs(15));
    origin.then(vec![answer(503, &[], "down")]);
    let r = proxy.get("/s").send().await;
    assert_eq!((r.x_cache().as_str(), r.text().as_str()), ("STALE", "old"));
}

// === gap 3: a broken connection is an error for stale-if-error ===

#[tokio::test]
async fn rfc5861_4_connection_closed_or_reset_serves_stale_if_error() {
    for broken in [Step::Close, Step::Reset] {
        let (origin, proxy) = start(vec![answer(
            200,
            &[("cache-control", "max-age=10, stale-if-error=600")],
            "old",
        )])
        .await;
        proxy.get("/s").send().await;
        proxy.advance(Duration::from_secs(15));
        origin.then(vec![broken.clone()]);
        let r = proxy.get("/s").send().await;
        assert_eq!(
            (r.status.as_u16(), r.x_cache().as_str(), r.text().as_str()),
            (200, "STALE", "old"),
            "{broken:?}"
        );
        assert!(r.header("cache-status").contains("stale-if-error"));
    }
}

// === §5.1: Age ===

#[tokio::test]
async fn sec_5_1_age_list_uses_its_first_member() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[("cache-control", "max-age=7300"), ("age", "7200, 0")],
        "aged",
    )])
    .await;
    proxy.get("/a").send().await;
    let r = proxy.get("/a").send().await;
    assert_eq!(r.x_cache(), "HIT");
    let age: u64 = r.header("age").parse().unwrap();
    assert!((7200..7300).contains(&age), "age {age}");
    // 100 s of freshness were left at receipt.
    proxy.advance(Duration::from_secs(101));
    assert_eq!(proxy.get("/a").send().await.x_cache(), "MISS");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn sec_5_1_invalid_age_values_are_ignored() {
    for age in ["7200.0", "-5"] {
        let (_origin, proxy) = start(vec![answer(200, &[("cache-control", "max-age=60"), ("age", age)], "x")]).await;
        proxy.get("/a").send().await;
        let r = proxy.get("/a").send().await;
        assert_eq!(r.x_cache(), "HIT", "Age {age}");
        assert!(r.header("age").parse::<u64>().unwrap() < 60, "Age {age} counts as none");
    }
}

// === §4.1: Vary ===

#[tokio::test]
async fn sec_4_1_vary_star_inside_a_list_is_never_stored() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[("cache-control", "max-age=60"), ("vary", "accept, *")],
        "v",
    )])
    .await;
    let r = proxy.get("/v").send().await;
    assert_eq!(r.x_cache(), "BYPASS");
    proxy.get("/v").send().await;
    assert_eq!(origin.hits(), 2);
}

// === §3: what may be stored ===

#[tokio::test]
async fn sec_3_statuses_with_explicit_freshness_are_stored_on_origin_routes() {
    for (status, fields) in [
        (302, vec![("cache-control", "max-age=60"), ("location", "/elsewhere")]),
        (
            307,
            vec![("expires", "Fri, 31 Dec 2100 23:59:59 GMT"), ("location", "/x")],
        ),
        (308, vec![("cache-control", "s-maxage=60"), ("location", "/x")]),
        (400, vec![("cache-control", "max-age=60")]),
        (500, vec![("cache-control", "max-age=60")]),
    ] {
        let (origin, proxy) = start(vec![answer(status, &fields, "s")]).await;
        proxy.get("/st").send().await;
        let r = proxy.get("/st").send().await;
        assert_eq!(
            (r.status.as_u16(), r.x_cache().as_str()),
            (status, "HIT"),
            "status {status}"
        );
        assert_eq!(origin.hits(), 1);
    }
}

#[tokio::test]
async fn sec_3_statuses_without_explicit_freshness_or_partial_are_not_stored() {
    for (status, fields) in [
        (302, vec![("location", "/elsewhere")]),
        (
            206,
            vec![("cache-control", "max-age=60"), ("content-range", "bytes 0-0/10")],
        ),
        (500, vec![]),
    ] {
        let (origin, proxy) = start(vec![answer(status, &fields, "s")]).await;
        proxy.get("/st").send().await;
        proxy.get("/st").send().await;
        assert_eq!(origin.hits(), 2, "status {status}");
    }
    // A fixed-TTL route keeps to the operator's `cacheable_statuses`.
    let (origin, proxy) = start(vec![answer(
        302,
        &[("cache-control", "max-age=60"), ("location", "/x")],
        "s",
    )])
    .await;
    proxy.get("/fixed/r").send().await;
    proxy.get("/fixed/r").send().await;
    assert_eq!(origin.hits(), 2);
}

// === RFC 8297 / RFC 9110 §15.2: interim answers ===

#[tokio::test]
async fn sec_15_2_interim_103_is_never_stored() {
    let (origin, proxy) = start(vec![Step::Answer {
        status: 200,
        headers: vec![("cache-control".into(), "max-age=60".into())],
        body: b"final".to_vec(),
        interim: vec![(103, vec![("link".into(), "</style.css>; rel=preload".into())])],
    }])
    .await;
    let r = proxy.get("/hints").send().await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "final"));
    let r = proxy.get("/hints").send().await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache().as_str(), r.text().as_str()),
        (200, "HIT", "final")
    );
    assert_eq!(r.header("link"), "-", "the 103's fields are not the final answer's");
    assert_eq!(origin.hits(), 1);
}

// === RFC 9110 §14: ranges from a stored whole answer ===

#[tokio::test]
async fn sec_14_2_one_range_is_answered_from_the_stored_200() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[("cache-control", "max-age=60"), ("etag", "\"r\"")],
        "0123456789",
    )])
    .await;
    // A miss with a range: the origin is asked for the whole answer, which is stored.
    let r = proxy.get("/r").header("range", "bytes=0-1").send().await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (206, "01"));
    assert_eq!(r.header("content-range"), "bytes 0-1/10");
    assert_eq!(origin.last().header("range"), "");
    let r = proxy.get("/r").header("range", "bytes=2-4").send().await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str(), r.x_cache().as_str()),
        (206, "234", "HIT")
    );
    assert_eq!(r.header("content-range"), "bytes 2-4/10");
    assert_eq!(r.header("content-length"), "3");
    let r = proxy.get("/r").header("range", "bytes=-3").send().await;
    assert_eq!(r.text(), "789");
    let r = proxy.get("/r").header("range", "bytes=7-").send().await;
    assert_eq!(r.text(), "789");
    let r = proxy.get("/r").send().await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "0123456789"));
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn sec_15_5_17_unsatisfiable_range_is_416() {
    let (_origin, proxy) = start(vec![answer(200, &[("cache-control", "max-age=60")], "0123456789")]).await;
    proxy.get("/r").send().await;
    let r = proxy.get("/r").header("range", "bytes=20-30").send().await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), "bytes */10");
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn sec_14_2_invalid_range_and_stale_if_range_answer_whole() {
    let (_origin, proxy) = start(vec![answer(
        200,
        &[("cache-control", "max-age=60"), ("etag", "\"r\"")],
        "0123456789",
    )])
    .await;
    proxy.get("/r").send().await;
    let r = proxy.get("/r").header("range", "lines=1-2").send().await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "0123456789"));
    let r = proxy
        .get("/r")
        .header("range", "bytes=0-1")
        .header("if-range", "\"old\"")
        .send()
        .await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "0123456789"));
    let r = proxy
        .get("/r")
        .header("range", "bytes=0-1")
        .header("if-range", "\"r\"")
        .send()
        .await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (206, "01"));
}

#[tokio::test]
async fn sec_14_2_a_range_of_an_answer_that_is_not_stored_is_asked_of_the_origin() {
    let (origin, proxy) = start(vec![
        answer(200, &[("cache-control", "no-store")], "0123456789"),
        answer(206, &[("content-range", "bytes 2-3/10")], "23"),
    ])
    .await;
    let r = proxy
        .get("/big")
        .header("range", "bytes=2-3")
        .header("if-range", "\"e\"")
        .send()
        .await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (206, "23"));
    assert_eq!(r.x_cache(), "BYPASS");
    let asked = origin.asked();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0].header("range"), "", "the fill asks for the whole answer");
    assert_eq!(asked[1].header("range"), "bytes=2-3");
    assert_eq!(asked[1].header("if-range"), "\"e\"");
}

#[tokio::test]
async fn sec_14_2_several_ranges_go_to_the_origin() {
    let (origin, proxy) = start(vec![answer(200, &[("cache-control", "max-age=60")], "0123456789")]).await;
    proxy.get("/r").send().await;
    origin.then(vec![answer(
        206,
        &[("content-type", "multipart/byteranges; boundary=B")],
        "--B--",
    )]);
    let r = proxy.get("/r").header("range", "bytes=0-1, 4-5").send().await;
    assert_eq!(r.status, 206);
    assert_eq!(r.x_cache(), "BYPASS");
    assert_eq!(origin.last().header("range"), "bytes=0-1, 4-5");
}

// === RFC 9213: targeted cache control ===

#[tokio::test]
async fn rfc9213_cdn_cache_control_replaces_cache_control_and_is_forwarded() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[("cache-control", "no-store"), ("cdn-cache-control", "max-age=60")],
        "cdn",
    )])
    .await;
    let r = proxy.get("/c").send().await;
    assert_eq!(
        r.header("cdn-cache-control"),
        "max-age=60",
        "it targets every CDN downstream too"
    );
    assert_eq!(
        r.header("cache-control"),
        "no-store",
        "browsers still get their own field"
    );
    assert_eq!(proxy.get("/c").send().await.x_cache(), "HIT");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn rfc9213_no_store_in_cdn_cache_control_wins_over_a_fresh_cache_control() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[("cache-control", "max-age=600"), ("cdn-cache-control", "no-store")],
        "x",
    )])
    .await;
    assert_eq!(proxy.get("/c").send().await.x_cache(), "BYPASS");
    proxy.get("/c").send().await;
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn rfc9213_targeted_field_wins_and_is_not_forwarded() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[
            ("cache-control", "no-cache"),
            ("cdn-cache-control", "no-store"),
            ("cachegate-cache-control", "max-age=60"),
        ],
        "t",
    )])
    .await;
    let r = proxy.get("/t").send().await;
    assert_eq!(r.header("cachegate-cache-control"), "-", "aimed at cachegate alone");
    assert_eq!(r.header("cdn-cache-control"), "no-store");
    let r = proxy.get("/t").send().await;
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(r.header("cachegate-cache-control"), "-");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn rfc9213_targeted_field_name_is_configurable_and_ignores_expires() {
    let (origin, proxy) = start_with(
        vec![answer(
            200,
            &[
                ("expires", "Fri, 31 Dec 2100 23:59:59 GMT"),
                ("edge-cache-control", "stale-if-error=60"),
            ],
            "e",
        )],
        "targeted_cache_control = \"Edge-Cache-Control\"",
    )
    .await;
    let r = proxy.get("/e").send().await;
    assert_eq!(r.header("edge-cache-control"), "-");
    // The targeted field gives no freshness, and Expires no longer counts.
    assert_eq!(r.x_cache(), "BYPASS");
    proxy.get("/e").send().await;
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn rfc9213_invalid_targeted_field_is_ignored() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "max-age=\"60\", ,no-store"),
        ],
        "i",
    )])
    .await;
    proxy.get("/i").send().await;
    assert_eq!(
        proxy.get("/i").send().await.x_cache(),
        "HIT",
        "an invalid field falls back to Cache-Control"
    );
    assert_eq!(origin.hits(), 1);
}

// === RFC 9875: cache groups ===

#[tokio::test]
async fn rfc9875_cache_group_invalidation_on_a_write_purges_the_group() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[
            ("cache-control", "max-age=600"),
            ("cache-groups", "\"courses\", \"all\""),
        ],
        "grouped",
    )])
    .await;
    proxy.get("/courses/1").send().await;
    proxy.get("/fixed/list").send().await;
    assert_eq!(proxy.get("/courses/1").send().await.x_cache(), "HIT");
    assert_eq!(proxy.get("/fixed/list").send().await.x_cache(), "HIT");
    // Groups on a GET answer invalidate nothing.
    origin.then(vec![answer(
        200,
        &[
            ("cache-control", "max-age=600"),
            ("cache-group-invalidation", "\"courses\""),
        ],
        "other",
    )]);
    proxy.get("/unrelated").send().await;
    assert_eq!(proxy.get("/courses/1").send().await.x_cache(), "HIT");
    // A write whose answer names the group.
    origin.then(vec![
        answer(204, &[("cache-group-invalidation", "\"courses\"")], ""),
        answer(200, &[("cache-control", "max-age=600")], "fresh"),
    ]);
    let r = proxy.req(Method::POST, "/api/enrol").send().await;
    assert_eq!(r.status, 204);
    assert_eq!(proxy.get("/courses/1").send().await.x_cache(), "MISS");
    assert_eq!(
        proxy.get("/fixed/list").send().await.x_cache(),
        "MISS",
        "every member of the group"
    );
}

#[tokio::test]
async fn rfc9875_failed_write_or_unknown_group_purges_nothing() {
    let (origin, proxy) = start(vec![answer(
        200,
        &[("cache-control", "max-age=600"), ("cache-groups", "\"g\"")],
        "x",
    )])
    .await;
    proxy.get("/a").send().await;
    origin.then(vec![
        answer(500, &[("cache-group-invalidation", "\"g\"")], ""),
        answer(204, &[("cache-group-invalidation", "\"other\"")], ""),
    ]);
    proxy.req(Method::POST, "/w").send().await;
    proxy.req(Method::POST, "/w2").send().await;
    assert_eq!(proxy.get("/a").send().await.x_cache(), "HIT");
}

// === HEAD ===

#[tokio::test]
async fn sec_9_3_2_head_miss_is_fetched_as_get_and_stored() {
    let (origin, proxy) = start(vec![answer(200, &[("cache-control", "max-age=60")], "whole")]).await;
    let r = proxy.req(Method::HEAD, "/h").send().await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(origin.last().method, "GET");
    let r = proxy.get("/h").send().await;
    assert_eq!((r.x_cache().as_str(), r.text().as_str()), ("HIT", "whole"));
}

// === across instances: the shared tier ===

/// Instance A stores an answer with a validator and a cache group; B, sharing Redis, finds it
/// expired there and revalidates it (the group survives the round trip through Redis); then a
/// write through A whose answer invalidates the group purges B's copy, acknowledged.
async fn sec_4_3_4_revalidation_and_group_purges_cross_instances(kind: Kind) {
    let redis = SharedRedis::start(kind).await;
    let origin = Scripted::start(vec![answer(
        200,
        &[
            ("cache-control", "max-age=10"),
            ("etag", "\"s1\""),
            ("cache-groups", "\"g\""),
        ],
        "shared",
    )])
    .await;
    let cache = redis.cache_toml("rfc9111:v1").replace("[cache]\n", "");
    let a = Proxy::from_text(&config(&origin, &cache)).await;
    let b = Proxy::from_text(&config(&origin, &cache)).await;
    a.wait_shared().await;
    b.wait_shared().await;
    assert_eq!(a.get("/g").send().await.x_cache(), "MISS");
    // B's clock: past freshness; the Redis entry is expired but kept for revalidation.
    b.advance(Duration::from_secs(11));
    origin.then(vec![answer(
        304,
        &[("cache-control", "max-age=600"), ("etag", "\"s1\"")],
        "",
    )]);
    let r = b.get("/g").send().await;
    assert_eq!((r.x_cache().as_str(), r.text().as_str()), ("REVALIDATED", "shared"));
    assert_eq!(origin.last().header("if-none-match"), "\"s1\"");
    assert_eq!(b.get("/g").send().await.x_cache(), "HIT");
    // The group, recorded when A stored the entry, still names B's refreshed copy.
    origin.then(vec![
        answer(204, &[("cache-group-invalidation", "\"g\"")], ""),
        answer(200, &[("cache-control", "max-age=600")], "after"),
    ]);
    assert_eq!(a.req(Method::POST, "/write").send().await.status, 204);
    let r = b.get("/g").send().await;
    assert_eq!((r.x_cache().as_str(), r.text().as_str()), ("MISS", "after"));
}

// === the shipped config ===

/// The shipped `proxy.toml` sets global stale windows; its catch-all `ttl = "origin"` route
/// must still never serve an answer stale that the origin did not allow.
#[tokio::test]
async fn shipped_config_catch_all_serves_nothing_stale_the_origin_forbade() {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")).unwrap();
    assert!(
        shipped.contains("stale_if_error = \"5m\""),
        "the shipped windows this test is about"
    );
    for (cc, stale_allowed) in [
        ("max-age=10", false),
        ("max-age=10, must-revalidate, stale-if-error=600", false),
        ("s-maxage=10, stale-if-error=600", false),
        ("max-age=10, stale-if-error=600", true),
    ] {
        let origin = Scripted::start(vec![answer(200, &[("cache-control", cc)], "old")]).await;
        let text = shipped
            .replace("listen = \"0.0.0.0:8080\"", "listen = \"127.0.0.1:0\"")
            .replace("admin_listen = \"127.0.0.1:9091\"", "admin_listen = \"127.0.0.1:0\"")
            .replace(
                "url = \"http://127.0.0.1:8000\"",
                &format!("url = \"{}\"", origin.url()),
            );
        let proxy = Proxy::from_text(&text).await;
        assert_eq!(proxy.get("/some/page").send().await.x_cache(), "MISS");
        proxy.advance(Duration::from_secs(15));
        origin.then(vec![answer(503, &[], "down")]);
        let r = proxy.get("/some/page").send().await;
        let got = (r.status.as_u16(), r.x_cache());
        if stale_allowed {
            assert_eq!(got, (200, "STALE".to_string()), "{cc}");
        } else {
            assert_eq!(got.0, 503, "{cc}");
        }
    }
}

// === small rules found in review ===

#[tokio::test]
async fn a_stored_set_cookie_route_sends_the_cookie_once() {
    let (_origin, proxy) = start(vec![answer(200, &[("set-cookie", "a=1")], "c")]).await;
    let r = proxy.get("/cookie/x").send().await;
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.headers.get_all("set-cookie").iter().count(), 1);
    let r = proxy.get("/cookie/x").send().await;
    assert_eq!((r.x_cache().as_str(), r.header("set-cookie").as_str()), ("HIT", "-"));
}

#[test]
fn the_targeted_field_cannot_be_a_field_clients_need() {
    for name in ["Cache-Control", "CDN-Cache-Control", "Set-Cookie", "Vary"] {
        let text = format!("[origin]\nurl = \"http://127.0.0.1:1\"\n[cache]\ntargeted_cache_control = \"{name}\"\n");
        let e = cachegate::config::from_str(&text, std::path::Path::new("p.toml")).expect_err(name);
        assert!(e.to_string().contains("targeted_cache_control"), "{e}");
    }
}
