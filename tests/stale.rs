//! Stale serving: stale-while-revalidate with exactly one background refresh that really
//! replaces the entry, and stale-if-error on origin failures.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{eventually, respond, Origin, Proxy};

const ROUTES: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[route]]
name = "swr"
path = "/swr/"
ttl = "10s"
stale_while_revalidate = "60s"

[[route]]
name = "sie"
path = "/sie/"
ttl = "10s"
stale_if_error = "5m"

[[route]]
name = "strict"
path = "/strict/"
ttl = "10s"

[[route]]
name = "default"
path = "/{*any}"
ttl = "origin"
"#;

struct Switches {
    fail: AtomicBool,
    slow: AtomicBool,
}

/// Every GET answers a new version; the switches make it fail (503) or hang.
async fn origin() -> (Origin, Arc<Switches>) {
    let sw = Arc::new(Switches {
        fail: AtomicBool::new(false),
        slow: AtomicBool::new(false),
    });
    let n = Arc::new(AtomicUsize::new(0));
    let s = sw.clone();
    let o = Origin::start_async(move |r| {
        let (s, n) = (s.clone(), n.clone());
        async move {
            if s.slow.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            if s.fail.load(Ordering::SeqCst) {
                return respond(503, &[], "down");
            }
            let v = n.fetch_add(1, Ordering::SeqCst) + 1;
            let cc = if r.path == "/origin-swr" {
                "max-age=10, stale-while-revalidate=60"
            } else {
                "max-age=10"
            };
            respond(200, &[("cache-control", cc)], format!("v{v}"))
        }
    })
    .await;
    (o, sw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_one_refresh_replaces_it() {
    let (o, _) = origin().await;
    let p = Arc::new(Proxy::start(&o, ROUTES).await);
    assert_eq!(p.get("/swr/").send().await.text(), "v1");
    p.advance(Duration::from_secs(11));
    let stale: Vec<_> = (0..20)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { p.get("/swr/").send().await })
        })
        .collect();
    for t in stale {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        // Either the stale copy, or (once the refresh landed) the new one.
        match r.x_cache().as_str() {
            "STALE" => {
                assert_eq!(r.text(), "v1");
                assert_eq!(r.header("cache-status"), "cachegate; hit; detail=stale");
            }
            "HIT" => assert_eq!(r.text(), "v2"),
            other => panic!("unexpected X-Cache {other}"),
        }
    }
    let p2 = p.clone();
    let refreshed = async move {
        loop {
            let r = p2.get("/swr/").send().await;
            if r.x_cache() == "HIT" {
                return r.text();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let text = tokio::time::timeout(Duration::from_secs(10), refreshed)
        .await
        .expect("the refresh lands");
    assert_eq!(text, "v2", "the background refresh replaced the entry");
    assert_eq!(o.hits(), 2, "exactly one background refresh for twenty stale reads");
}

#[tokio::test]
async fn without_a_window_an_expired_entry_is_refetched() {
    let (o, _) = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    p.get("/strict/").send().await;
    p.advance(Duration::from_secs(11));
    let r = p.get("/strict/").send().await;
    assert_eq!((r.x_cache().as_str(), r.text().as_str()), ("MISS", "v2"));
}

#[tokio::test]
async fn stale_if_error_covers_5xx_and_timeouts_but_not_forever() {
    let (o, sw) = origin().await;
    let text = ROUTES.replace(
        "[[route]]\nname = \"swr\"",
        "[origin]\nurl = \"ORIGIN\"\ntimeout = \"300ms\"\n\n[[route]]\nname = \"swr\"",
    );
    let p = Proxy::from_text(&text.replace("ORIGIN", &o.url())).await;
    assert_eq!(p.get("/sie/").send().await.text(), "v1");
    p.advance(Duration::from_secs(11));
    sw.fail.store(true, Ordering::SeqCst);
    let r = p.get("/sie/").send().await;
    assert_eq!(
        (r.status.as_u16(), r.x_cache().as_str(), r.text().as_str()),
        (200, "STALE", "v1")
    );
    assert_eq!(r.header("cache-status"), "cachegate; hit; detail=stale-if-error");
    sw.fail.store(false, Ordering::SeqCst);
    sw.slow.store(true, Ordering::SeqCst);
    let r = p.get("/sie/").send().await;
    assert_eq!(
        (r.x_cache().as_str(), r.text().as_str()),
        ("STALE", "v1"),
        "a timeout is an error too"
    );
    sw.slow.store(false, Ordering::SeqCst);
    sw.fail.store(true, Ordering::SeqCst);
    p.advance(Duration::from_secs(301));
    let r = p.get("/sie/").send().await;
    assert_eq!(r.status, 503, "past the window the origin's answer is passed through");
    // A route without the window passes the failure through at once.
    sw.fail.store(false, Ordering::SeqCst);
    p.get("/strict/").send().await;
    p.advance(Duration::from_secs(11));
    sw.fail.store(true, Ordering::SeqCst);
    assert_eq!(p.get("/strict/").send().await.status, 503);
}

#[tokio::test]
async fn origin_stale_while_revalidate_directive_is_honoured() {
    let (o, _) = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    p.get("/origin-swr").send().await;
    p.advance(Duration::from_secs(11));
    assert_eq!(p.get("/origin-swr").send().await.x_cache(), "STALE");
    let o2 = &o;
    assert!(eventually(Duration::from_secs(10), || o2.hits() == 2).await);
    // Without the directive an origin-ttl entry is simply refetched.
    p.get("/plain-origin").send().await;
    p.advance(Duration::from_secs(11));
    assert_eq!(p.get("/plain-origin").send().await.x_cache(), "MISS");
}
