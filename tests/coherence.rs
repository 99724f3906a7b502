//! Cross-instance freshness with a paused instance: a write through A is answered even while B
//! is stopped (SIGSTOP), and B serves nothing stale when it resumes.

#[macro_use]
mod support;

use http::Method;
use support::shared::{Kind, SharedRedis};
use support::{Binary, Proxy};

on_node_and_cluster!(
    paused_instance_serves_nothing_stale_after_resume,
    instance_with_broken_subscription_serves_nothing_stale,
);

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

async fn paused_instance_serves_nothing_stale_after_resume(kind: Kind) {
    let redis = SharedRedis::start(kind).await;
    let (origin, _) = support::versioned_origin().await;
    let cache = redis.cache_toml("pause:v1");
    let a = Proxy::start(&origin, &format!("{cache}{ROUTES}")).await;
    a.wait_shared().await;
    // Strict memory tier on B: until its Redis tier is up (the cluster client is still
    // connecting, say) B counts Redis as down and would trust its own memory fills for
    // `degraded_memory_ttl`, unregistered, so A's purge waits for nobody: the documented
    // degraded trade-off, not the lease this test is about. With "0s" a memory hit on B can
    // only come from a held lease, which also means B is registered.
    let b = Binary::start(&format!(
        "[server]\nlisten = \"127.0.0.1:{{port}}\"\nadmin_listen = \"127.0.0.1:{{admin_port}}\"\ndebug_headers = true\n[origin]\nurl = \"{}\"\n{cache}degraded_memory_ttl = \"0s\"\n{ROUTES}",
        origin.url()
    ));
    // B warms its memory tier: the first memory hit proves its lease is established.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = b.get("/courses/").await;
        if r.header("x-cache-tier") == "memory" {
            assert_eq!(r.text(), "v0");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "B never served from memory");
    }
    b.signal("STOP");
    let w = a.req(Method::POST, "/courses/").send().await;
    assert_eq!(w.status, 200, "the write is answered although B is paused");
    b.signal("CONT");
    let after = b.get("/courses/").await;
    assert_eq!(after.text(), "v1", "B resumed and must not serve its stale memory copy");
    assert_ne!(after.header("x-cache-tier"), "memory");
}

/// An instance whose subscription silently broke cannot ack; the purger waits out its lease
/// instead of answering at once, so the broken instance cannot serve its memory copy.
async fn instance_with_broken_subscription_serves_nothing_stale(kind: Kind) {
    let redis = SharedRedis::start(kind).await;
    let (origin, _) = support::versioned_origin().await;
    let cache = redis.cache_toml("broken:v1");
    let debug = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndebug_headers = true\n";
    let a = Proxy::start(&origin, &format!("{debug}{cache}{ROUTES}")).await;
    let b = Proxy::start(&origin, &format!("{debug}{cache}{ROUTES}")).await;
    a.wait_shared().await;
    b.wait_shared().await;
    let mut stale = 0;
    for round in 1..=5 {
        b.get("/courses/").send().await;
        assert_eq!(b.get("/courses/").send().await.header("x-cache-tier"), "memory");
        redis.kill_pubsub_clients().await;
        a.req(Method::POST, "/courses/").send().await;
        if b.get("/courses/").send().await.text() != format!("v{round}") {
            stale += 1;
        }
        a.wait_shared().await;
        b.wait_shared().await;
    }
    assert_eq!(stale, 0);
}
