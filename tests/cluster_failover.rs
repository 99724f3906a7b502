//! Redis Cluster failover under load: two instances share a local 3+3 cluster while readers and
//! a writer go through both, and the master owning the counters' slot is killed (SIGKILL). No
//! request fails, no read after an acknowledged write shows what came before it, and sharing
//! through Redis resumes once a replica is promoted.
//!
//! `degraded_memory_ttl = "0s"`: with the default window an instance that cannot reach Redis
//! keeps serving memory entries younger than it (purges cannot reach it then), which is the
//! documented trade-off of a Redis outage, a failover included; at 0 s it serves only what the
//! purge channel vouches for.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use support::cluster::{key_slot, RedisCluster};
use support::{Proxy, Resp};

const PREFIX: &str = "fo:v1";

const ROUTES: &str = r#"
[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
tags = ["courses"]

[[route]]
name = "lecture_detail"
path = "/lectures/{id}/"
ttl = "10m"

[[invalidate]]
path = "/courses/{*rest}"
tags = ["courses"]
"#;

/// The version a `v<n>` body shows.
fn version(r: &Resp) -> Option<usize> {
    r.text().strip_prefix('v')?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_counters_master_fails_no_request_and_resurrects_nothing() {
    let mut cluster = RedisCluster::start().await;
    let (origin, _) = support::versioned_origin().await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndebug_headers = true\n\
         [cache]\nredis_url = \"{}\"\nkey_prefix = \"{PREFIX}\"\ndegraded_memory_ttl = \"0s\"\n{ROUTES}",
        cluster.cluster_url()
    );
    let a = Arc::new(Proxy::start(&origin, &config).await);
    let b = Arc::new(Proxy::start(&origin, &config).await);
    a.wait_shared().await;
    b.wait_shared().await;

    let stop = Arc::new(AtomicBool::new(false));
    // 0 before the kill, 1 until both instances trust Redis again, 2 after: for the report.
    let phase = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for p in [a.clone(), b.clone(), a.clone(), b.clone()] {
        let (stop, failed, reads) = (stop.clone(), failed.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = p.get("/courses/").send().await;
                reads.fetch_add(1, Ordering::Relaxed);
                if r.status.is_server_error() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // The writer: each acknowledged write must be visible through both instances at once.
    let writer = {
        let (a, b, stop, failed, phase) = (a.clone(), b.clone(), stop.clone(), failed.clone(), phase.clone());
        tokio::spawn(async move {
            let (mut writes, mut stale) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let via = if writes % 2 == 0 { &a } else { &b };
                let w = via.req(Method::POST, "/courses/").send().await;
                if w.status.is_server_error() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let written: usize = w.text().parse().expect("the origin answers a write with its version");
                writes += 1;
                for (name, p) in [("a", &a), ("b", &b)] {
                    let r = p.get("/courses/").send().await;
                    if r.status.is_server_error() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    } else if version(&r).is_none_or(|v| v < written) {
                        let at = phase.load(Ordering::Relaxed);
                        stale.push((
                            written,
                            name,
                            at,
                            r.text(),
                            r.header("x-cache"),
                            r.header("x-cache-tier"),
                        ));
                    }
                }
            }
            (writes, stale)
        })
    };

    // Let traffic settle on the healthy cluster, then kill the master of the counters' slot.
    let settle = reads.load(Ordering::Relaxed) + 200;
    assert!(
        support::eventually(Duration::from_secs(30), || reads.load(Ordering::Relaxed) >= settle).await,
        "readers are running"
    );
    let slot = key_slot(format!("{{{PREFIX}}}:_epoch"));
    phase.store(1, Ordering::Relaxed);
    let failover = cluster.kill_master_of_slot(slot).await;
    eprintln!(
        "killed master {} of slot {slot}; replica {} promoted after {:?}",
        failover.killed, failover.promoted, failover.took
    );
    // Keep going through the recovery: until both instances trust Redis again, and a while on.
    for p in [&a, &b] {
        p.wait_shared().await;
    }
    phase.store(2, Ordering::Relaxed);
    let after = reads.load(Ordering::Relaxed) + 400;
    assert!(
        support::eventually(Duration::from_secs(30), || reads.load(Ordering::Relaxed) >= after).await,
        "readers kept going after the failover"
    );
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    let (writes, stale) = writer.await.unwrap();
    eprintln!("{} reads, {writes} acknowledged writes", reads.load(Ordering::Relaxed));
    assert!(writes > 5, "the writer made progress ({writes} writes)");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests answered with a 5xx");
    assert!(
        stale.is_empty(),
        "reads after an acknowledged write showed older data: {stale:?}"
    );

    // Sharing resumes: a key filled through A is a hit on B within 30 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        let path = format!("/lectures/{n}/");
        assert_eq!(a.get(&path).send().await.x_cache(), "MISS");
        let r = b.get(&path).send().await;
        if r.x_cache() == "HIT" && r.header("x-cache-tier") == "redis" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no key filled through A became a Redis hit on B within 30 s of the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
