//! Freshness values the origin controls (`Cache-Control`, `Age`, `Expires`) that overflow or make
//! no sense must never take a request down: huge numbers are clamped, invalid ones ignored.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{redis_cache, respond, Origin, Proxy, RedisServer};

/// Path, the origin's headers for it, and whether the answer is stored (a second GET hits).
type Case = (&'static str, &'static [(&'static str, &'static str)], bool);

const CASES: &[Case] = &[
    ("/max-age-u64-max", &[("cache-control", "max-age=18446744073709551615")], true),
    ("/max-age-over-u64", &[("cache-control", "max-age=99999999999999999999")], true),
    ("/max-age-negative", &[("cache-control", "max-age=-1")], false),
    (
        "/age-u64-max",
        &[("cache-control", "max-age=60"), ("age", "18446744073709551615")],
        false,
    ),
    (
        "/age-over-u64",
        &[("cache-control", "max-age=60"), ("age", "99999999999999999999")],
        false,
    ),
    ("/expires-9999", &[("expires", "Fri, 31 Dec 9999 23:59:59 GMT")], true),
    ("/expires-1900", &[("expires", "Mon, 01 Jan 1900 00:00:00 GMT")], false),
    (
        "/date-9999-expires-1900",
        &[
            ("date", "Fri, 31 Dec 9999 23:59:59 GMT"),
            ("expires", "Mon, 01 Jan 1900 00:00:00 GMT"),
        ],
        false,
    ),
    (
        "/s-maxage-and-windows-u64-max",
        &[(
            "cache-control",
            "s-maxage=18446744073709551615, stale-while-revalidate=18446744073709551615, stale-if-error=18446744073709551615",
        )],
        true,
    ),
    (
        "/windows-over-u64",
        &[(
            "cache-control",
            "max-age=60, stale-while-revalidate=99999999999999999999, stale-if-error=-5",
        )],
        true,
    ),
];

const ROUTES: &str = r#"
[cache]
stale_while_revalidate = "30s"
stale_if_error = "5m"

[[route]]
name = "origin"
path = "/{*any}"
ttl = "origin"
"#;

async fn origin() -> Origin {
    Origin::start(|r| {
        let headers = CASES
            .iter()
            .find(|(path, _, _)| *path == r.path)
            .map_or(&[][..], |(_, h, _)| *h);
        respond(200, headers, format!("body of {}", r.path))
    })
    .await
}

/// One GET; a reset or a hang is reported with the case that caused it instead of panicking
/// inside the harness.
async fn get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| format!("{path}: no answer within 30s"))?
        .map_err(|e| format!("{path}: connection failed: {e:?}"))?;
    let x_cache = support::header(resp.headers(), "x-cache");
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("{path}: body failed: {e:?}"))?;
    Ok((status, x_cache))
}

/// Every case answers twice (the second time from the cache when it was stored), and once
/// more after the clock has moved past any lifetime the cache could have accepted.
async fn check_every_case(p: &Proxy) {
    for (path, _, stored) in CASES {
        let first = get(p.addr, path).await.unwrap();
        assert_eq!(first.0, 200, "{path}: first answer");
        let second = get(p.addr, path).await.unwrap();
        let expect = if *stored { "HIT" } else { "BYPASS" };
        assert_eq!(second, (200, expect.to_string()), "{path}: second answer");
    }
    // Past 2^31 s, the longest freshness RFC 9111 asks a cache to represent.
    p.advance(Duration::from_secs((1 << 31) + 60));
    for (path, _, _) in CASES {
        let later = get(p.addr, path).await.unwrap();
        assert_eq!(later.0, 200, "{path}: answer after the clock moved");
    }
}

#[tokio::test]
async fn origin_max_age_overflow_does_not_panic() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    check_every_case(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_max_age_overflow_does_not_panic_with_redis() {
    let redis = RedisServer::start().await;
    let o = origin().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{}{}",
        redis_cache(&redis, "ov:v1"),
        ROUTES.replace("[cache]\n", "")
    );
    let p = Proxy::start(&o, &text).await;
    p.wait_shared().await;
    check_every_case(&p).await;
    // The stored TTLs were clamped to something Redis accepts, not refused or overflowed.
    let mut c = redis.conn().await.unwrap();
    for (path, _, _) in CASES.iter().filter(|c| c.2) {
        let key = format!("ov:v1:origin:{path}:");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{key}*"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(!keys.is_empty(), "{path}: stored in Redis (keys like {key}*)");
        let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query_async(&mut c).await.unwrap();
        assert!(ttl > 0, "{path}: the Redis entry has a TTL ({ttl})");
    }
    // A second instance reads those entries back from Redis.
    let q = Proxy::start(&o, &text).await;
    q.wait_shared().await;
    for (path, _, _) in CASES {
        assert_eq!(get(q.addr, path).await.unwrap().0, 200, "{path}: second instance");
    }
}
