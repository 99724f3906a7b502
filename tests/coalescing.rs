//! Request coalescing: concurrent misses for one key make one origin fetch, and a request that
//! arrives after a purge never joins a fetch that started before it.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use support::{eventually, respond, Origin, Proxy};

const ROUTES: &str = r#"
[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
tags = ["courses"]

[[invalidate]]
path = "/courses/{*rest}"
tags = ["courses"]
"#;

/// An origin whose GETs wait at a gate (so fetches overlap deterministically) and answer with
/// the current version; POSTs bump the version.
async fn gated() -> (Origin, Arc<tokio::sync::Semaphore>, Arc<AtomicUsize>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let version = Arc::new(AtomicUsize::new(1));
    let (g, v) = (gate.clone(), version.clone());
    let origin = Origin::start_async(move |r| {
        let (g, v) = (g.clone(), v.clone());
        async move {
            if r.method == Method::POST {
                v.fetch_add(1, Ordering::SeqCst);
                return respond(200, &[], "");
            }
            let seen = v.load(Ordering::SeqCst);
            g.acquire().await.unwrap().forget();
            respond(200, &[], format!("v{seen}"))
        }
    })
    .await;
    (origin, gate, version)
}

async fn coalesced(proxy: &Proxy) -> f64 {
    let text = proxy.admin_get("/metrics").send().await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("cachegate_coalesced_requests_total{route=\"course_list\"} "))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_misses_make_one_origin_fetch() {
    let (origin, gate, _) = gated().await;
    let proxy = Arc::new(Proxy::start(&origin, ROUTES).await);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let p = proxy.clone();
            tokio::spawn(async move { p.get("/courses/").send().await })
        })
        .collect();
    // Release the origin only once every other request is waiting on the first fetch.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while coalesced(&proxy).await < 199.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests never coalesced: {}",
            coalesced(&proxy).await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gate.add_permits(1000);
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        bodies.insert(r.text());
    }
    assert_eq!(origin.hits(), 1, "one origin fetch for 200 concurrent misses");
    assert_eq!(bodies.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_after_a_purge_does_not_join_an_older_fetch() {
    let (origin, gate, _) = gated().await;
    let proxy = Arc::new(Proxy::start(&origin, ROUTES).await);
    let early = {
        let p = proxy.clone();
        tokio::spawn(async move { p.get("/courses/").send().await })
    };
    assert!(
        eventually(Duration::from_secs(10), || origin.hits() == 1).await,
        "first fetch started"
    );
    let w = proxy.req(Method::POST, "/courses/").send().await;
    assert_eq!(w.status, 200);
    let late = {
        let p = proxy.clone();
        tokio::spawn(async move { p.get("/courses/").send().await })
    };
    assert!(
        eventually(Duration::from_secs(10), || origin.hits() == 3).await,
        "the late request fetched on its own"
    );
    gate.add_permits(10);
    let (early, late) = (early.await.unwrap(), late.await.unwrap());
    assert_eq!(early.text(), "v1");
    assert_eq!(late.text(), "v2", "a request after the write never sees the old fetch");
    assert_eq!(coalesced(&proxy).await, 0.0);
    // Only the post-write answer was stored.
    let again = proxy.get("/courses/").send().await;
    assert_eq!((again.x_cache().as_str(), again.text().as_str()), ("HIT", "v2"));
}

/// Two instances sharing Redis with `fill_lease`: 200 concurrent misses spread over both make
/// at most two origin fetches (the spec allows ≤ 2; the lease gives one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_a_fill_lease_fetch_once() {
    let redis = support::RedisServer::start().await;
    let (origin, gate, _) = gated().await;
    let cache = format!("{}fill_lease = \"10s\"\n", support::redis_cache(&redis, "lease:v1"));
    let a = Arc::new(Proxy::start(&origin, &format!("{cache}{ROUTES}")).await);
    let b = Arc::new(Proxy::start(&origin, &format!("{cache}{ROUTES}")).await);
    a.wait_shared().await;
    b.wait_shared().await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let p = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { p.get("/courses/").send().await })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while coalesced(&a).await + coalesced(&b).await < 199.0 {
        assert!(tokio::time::Instant::now() < deadline, "requests never all waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gate.add_permits(1000);
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert!(
        origin.hits() <= 2,
        "{} origin fetches for 200 misses on two instances",
        origin.hits()
    );
    assert_eq!(origin.hits(), 1);
}
