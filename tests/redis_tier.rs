//! The shared Redis tier with real redis-server processes: cross-instance hits, coherence,
//! O(1) purges, no resurrection, and Redis outages that never reach clients.

#[macro_use]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cachegate::secrets::Secrets;
use http::Method;
use support::shared::{Kind, SharedRedis};
use support::{eventually, redis_cache, respond, Origin, Proxy, RedisServer};

on_node_and_cluster!(
    second_instance_hits_redis_then_its_memory,
    compressed_large_bodies_round_trip_through_redis,
    write_via_one_instance_is_seen_via_another_immediately,
    reads_and_writes_on_two_instances_end_fresh_everywhere,
    webhook_purges_reach_every_instance,
    webhook_tenant_purge_spares_other_tenants,
    soft_purge_serves_stale_while_refreshing,
    redis_hit_is_one_get_while_the_lease_holds,
);

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
vary = ["role"]
tags = ["lectures", "lecture:{id}"]

[[invalidate]]
path = "/courses/{*rest}"
tags = ["courses"]
"#;

async fn versioned() -> (Origin, Arc<AtomicUsize>) {
    support::versioned_origin().await
}

fn secrets() -> Secrets {
    Secrets {
        purge_token: Some("s3cret".into()),
        purge_hmac: Some("hmac-key".into()),
        ..Default::default()
    }
}

async fn instance(origin: &Origin, redis: &RedisServer, extra: &str) -> Proxy {
    started(origin, &redis_cache(redis, "t:v1"), extra).await
}

async fn instance_on(origin: &Origin, redis: &SharedRedis, extra: &str) -> Proxy {
    started(origin, &redis.cache_toml("t:v1"), extra).await
}

async fn started(origin: &Origin, cache: &str, extra: &str) -> Proxy {
    let text = support::config_text(
        origin,
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndebug_headers = true\n{cache}{extra}{ROUTES}"
        ),
    );
    let p = Proxy::from_text_with(&text, secrets()).await;
    p.wait_shared().await;
    p
}

async fn second_instance_hits_redis_then_its_memory(kind: Kind) {
    let redis = SharedRedis::start(kind).await;
    let (origin, _) = versioned().await;
    let a = instance_on(&origin, &redis, "").await;
    let b = instance_on(&origin, &redis, "").await;
    assert_eq!(a.get("/courses/").send().await.x_cache(), "MISS");
    let from_redis = b.get("/courses/").send().await;
    assert_eq!(from_redis.x_cache(), "HIT");
    assert_eq!(from_redis.header("x-cache-tier"), "redis");
    let from_memory = b.get("/courses/").send().await;
    assert_eq!(from_memory.header("x-cache-tier"), "memory");
    assert_eq!(from_memory.body, from_redis.body);
    assert_eq!(origin.hits(), 1);
}

async fn compressed_large_bodies_round_trip_through_redis(kind: Kind) {
    let redis = SharedRedis::start(kind).await;
    let body: String = (0..20_000).map(|i| format!("row {i};")).collect();
    let b2 = body.clone();
    let origin = Origin::start(move |_| respond(200, &[("content-type", "text/plain")], b2.clone())).await;
    let a = instance_on(&origin, &redis, "").await;
    let b = instance_on(&origin, &redis, "").await;
    a.get("/courses/").send().await;
    let r = b.get("/courses/").send().await;
    assert_eq!(r.header("x-cache-tier"), "redis");
    assert_eq!(r.text(), body);
    assert_eq!(r.header("content-type"), "text/plain");
    let stored: usize = redis.query(redis::cmd("STRLEN").arg(r.header("x-cache-key"))).await;
    assert!(
        stored < body.len() / 2,
        "stored {stored} bytes for a {} byte body",
        body.len()
    );
}

/// Write through A, read through B immediately, many rounds: never the old version.
async fn write_via_one_instance_is_seen_via_another_immediately(kind: Kind) {
    let redis = SharedRedis::start(kind).await;
    let (origin, _) = versioned().await;
    let a = instance_on(&origin, &redis, "").await;
    let b = instance_on(&origin, &redis, "").await;
    let mut stale = 0;
    for round in 1..=60 {
        b.get("/courses/").send().await; // B's memory holds the current version
        let before = b.get("/courses/").send().await;
        assert_eq!(before.x_cache(), "HIT");
        let w = a.req(Method::POST, "/courses/").send().await;
        assert_eq!(w.text(), round.to_string());
        let after = b.get("/courses/").send().await;
        if after.text() != format!("v{round}") {
            stale += 1;
        }
    }
    assert_eq!(stale, 0, "stale reads through the other instance");
}

async fn reads_and_writes_on_two_instances_end_fresh_everywhere(kind: Kind) {
    let redis = SharedRedis::start(kind).await;
    let (origin, version) = versioned().await;
    let a = Arc::new(instance_on(&origin, &redis, "").await);
    let b = Arc::new(instance_on(&origin, &redis, "").await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let p = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < deadline {
                if i < 2 {
                    p.req(Method::POST, "/courses/").send().await;
                } else {
                    p.get("/courses/").send().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let last = version.load(Ordering::SeqCst);
    assert!(last > 10, "the writers made progress ({last} writes)");
    let mut resurrected = 0;
    for p in [&a, &b, &a, &b] {
        if p.get("/courses/").send().await.text() != format!("v{last}") {
            resurrected += 1;
        }
    }
    assert_eq!(resurrected, 0, "reads after the last acknowledged write must see it");
}

async fn purge(p: &Proxy, body: &str) -> support::Resp {
    p.admin_req(Method::POST, "/purge")
        .header("authorization", "Bearer s3cret")
        .body(body.to_string())
        .send()
        .await
}

async fn webhook_purges_reach_every_instance(kind: Kind) {
    let redis = SharedRedis::start(kind).await;
    let (origin, _) = versioned().await;
    let a = instance_on(&origin, &redis, "").await;
    let b = instance_on(&origin, &redis, "").await;
    for p in [&a, &b] {
        p.get("/courses/").send().await;
        p.get("/lectures/1/").send().await;
        p.get("/lectures/2/").send().await;
    }
    let r = purge(&a, r#"{"tags": ["lecture:1"]}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["purged"], 1);
    assert_eq!(v["shared"], true);
    assert_eq!(v["instances_acked"], 1);
    assert_eq!(b.get("/lectures/1/").send().await.x_cache(), "MISS");
    assert_eq!(b.get("/lectures/2/").send().await.x_cache(), "HIT");
    assert_eq!(b.get("/courses/").send().await.x_cache(), "HIT");
    purge(&b, r#"{"routes": ["course_list"]}"#).await;
    assert_eq!(a.get("/courses/").send().await.x_cache(), "MISS");
    purge(&a, r#"{"paths": ["/lectures/2/"]}"#).await;
    assert_eq!(b.get("/lectures/2/").send().await.x_cache(), "MISS");
    purge(&a, r#"{"all": true}"#).await;
    assert_eq!(b.get("/lectures/1/").send().await.x_cache(), "MISS");
}

async fn webhook_tenant_purge_spares_other_tenants(kind: Kind) {
    let redis = SharedRedis::start(kind).await;
    let (origin, _) = versioned().await;
    let a = instance_on(&origin, &redis, "").await;
    for t in ["1", "2"] {
        a.get("/courses/").role("teacher").tenant(t).send().await;
    }
    purge(&a, r#"{"tenant": "1", "tags": ["courses"]}"#).await;
    assert_eq!(
        a.get("/courses/").role("teacher").tenant("1").send().await.x_cache(),
        "MISS"
    );
    assert_eq!(
        a.get("/courses/").role("teacher").tenant("2").send().await.x_cache(),
        "HIT"
    );
    purge(&a, r#"{"tenant": "2"}"#).await;
    assert_eq!(
        a.get("/courses/").role("teacher").tenant("2").send().await.x_cache(),
        "MISS"
    );
}

async fn soft_purge_serves_stale_while_refreshing(kind: Kind) {
    let redis = SharedRedis::start(kind).await;
    let (origin, _) = versioned().await;
    let a = instance_on(&origin, &redis, "").await;
    let b = instance_on(&origin, &redis, "").await;
    a.get("/courses/").send().await;
    let r = purge(&a, r#"{"tags": ["courses"], "soft": true}"#).await;
    assert_eq!(r.status, 200);
    let stale = b.get("/courses/").send().await;
    assert_eq!((stale.x_cache().as_str(), stale.text().as_str()), ("STALE", "v0"));
    // The background refresh stores a fresh copy; reads then hit it.
    assert!(
        eventually(Duration::from_secs(10), || origin.hits() == 2).await,
        "one refresh"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = b.get("/courses/").send().await;
        if r.x_cache() == "HIT" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refreshed entry never landed"
        );
    }
    assert_eq!(origin.hits(), 2);
}

fn post(p: &Proxy) -> support::Req<'_> {
    p.admin_req(Method::POST, "/purge")
}

fn sign(secret: &str, t: u64, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_refuses_bad_credentials_and_bodies_and_purges_nothing() {
    let redis = RedisServer::start().await;
    let (origin, _) = versioned().await;
    let a = instance(&origin, &redis, "").await;
    let b = instance(&origin, &redis, "").await;
    a.get("/courses/").send().await;
    let body = r#"{"tags": ["courses"]}"#;
    let cases = vec![
        (
            "no credentials",
            post(&a).body(body).send().await,
            401,
            "missing credentials",
        ),
        (
            "wrong token",
            post(&a).header("authorization", "Bearer nope").body(body).send().await,
            401,
            "wrong bearer token",
        ),
        (
            "old signature",
            post(&a)
                .header("x-cachegate-signature", &sign("hmac-key", now() - 600, body))
                .body(body)
                .send()
                .await,
            401,
            "5 minutes",
        ),
        (
            "wrong key",
            post(&a)
                .header("x-cachegate-signature", &sign("other", now(), body))
                .body(body)
                .send()
                .await,
            401,
            "does not match",
        ),
        (
            "mistyped field",
            post(&a)
                .header("authorization", "Bearer s3cret")
                .body(r#"{"tags": "courses"}"#)
                .send()
                .await,
            400,
            "invalid type",
        ),
        (
            "unknown field",
            post(&a)
                .header("authorization", "Bearer s3cret")
                .body(r#"{"tag": ["courses"]}"#)
                .send()
                .await,
            400,
            "unknown field",
        ),
        (
            "not json",
            post(&a)
                .header("authorization", "Bearer s3cret")
                .body("courses")
                .send()
                .await,
            400,
            "invalid purge body",
        ),
        (
            "empty",
            post(&a)
                .header("authorization", "Bearer s3cret")
                .body("{}")
                .send()
                .await,
            400,
            "nothing to purge",
        ),
        (
            "unknown route",
            post(&a)
                .header("authorization", "Bearer s3cret")
                .body(r#"{"routes": ["nope"]}"#)
                .send()
                .await,
            400,
            "unknown route",
        ),
        (
            "bad path",
            post(&a)
                .header("authorization", "Bearer s3cret")
                .body(r#"{"paths": ["/a/../b"]}"#)
                .send()
                .await,
            400,
            "..",
        ),
    ];
    for (name, r, status, msg) in cases {
        assert_eq!(r.status, status, "{name}: {}", r.text());
        let v: serde_json::Value =
            serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("{name}: json error body"));
        assert!(v["error"].as_str().unwrap().contains(msg), "{name}: {}", r.text());
    }
    assert_eq!(a.get("/courses/").send().await.x_cache(), "HIT", "nothing was purged");
    // A valid signature works once, and is refused as a replay on any instance.
    let sig = sign("hmac-key", now(), body);
    let ok = post(&a).header("x-cachegate-signature", &sig).body(body).send().await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    for p in [&a, &b] {
        let replay = post(p).header("x-cachegate-signature", &sig).body(body).send().await;
        assert_eq!(replay.status, 401);
        assert!(replay.text().contains("replayed"), "{}", replay.text());
    }
}

#[tokio::test]
async fn webhook_is_disabled_without_secrets() {
    let origin = Origin::echo().await;
    let p = Proxy::start(&origin, ROUTES).await;
    let r = p
        .admin_req(Method::POST, "/purge")
        .body(r#"{"all": true}"#)
        .send()
        .await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("purge endpoint disabled"));
}

/// Kill redis-server under traffic: no 5xx; restart it: Redis hits resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_never_reaches_clients() {
    let mut redis = RedisServer::start().await;
    let (origin, _) = versioned().await;
    let a = Arc::new(instance(&origin, &redis, "").await);
    let errors = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (a, errors, served, stop) = (a.clone(), errors.clone(), served.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let stopped = stop.notified();
            tokio::pin!(stopped);
            loop {
                let path = format!("/lectures/{}/", i % 2);
                let r = tokio::select! {
                    r = a.get(&path).send() => r,
                    _ = &mut stopped => return,
                };
                served.fetch_add(1, Ordering::SeqCst);
                if r.status.is_server_error() {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
                if i == 0 {
                    a.req(Method::POST, "/courses/").send().await;
                }
            }
        }));
    }
    let before = served.load(Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(10), || served.load(Ordering::SeqCst) > before + 50).await);
    redis.kill();
    let cache = a.running().cache.clone();
    assert!(
        eventually(Duration::from_secs(10), || cache.shared_up() == Some(false)).await,
        "the outage is noticed"
    );
    let during = served.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || served.load(Ordering::SeqCst) > during + 200).await,
        "traffic continues"
    );
    redis.restart().await;
    a.wait_shared().await;
    stop.notify_waiters();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(errors.load(Ordering::SeqCst), 0, "5xx answers during the outage");
    // Back to normal: a fill through A is a Redis hit for a new instance.
    a.get("/lectures/9/").send().await;
    let b = instance(&origin, &redis, "").await;
    assert_eq!(b.get("/lectures/9/").send().await.header("x-cache-tier"), "redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_subscription_drops_the_memory_tier() {
    let redis = RedisServer::start().await;
    let (origin, _) = versioned().await;
    let a = instance(&origin, &redis, "").await;
    a.get("/courses/").send().await;
    assert_eq!(a.get("/courses/").send().await.header("x-cache-tier"), "memory");
    let coherence = a.running().coherence.clone().unwrap();
    let subs = coherence.subscriptions();
    let mut c = redis.conn().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(killed >= 1);
    assert!(
        eventually(Duration::from_secs(10), || coherence.subscriptions() > subs).await,
        "resubscribed"
    );
    a.wait_shared().await;
    let r = a.get("/courses/").send().await;
    assert_eq!(r.x_cache(), "HIT");
    assert_eq!(
        r.header("x-cache-tier"),
        "redis",
        "the memory copy was dropped on resubscribe"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefix_namespaces_everything() {
    let redis = RedisServer::start().await;
    let (origin, _) = versioned().await;
    let a = instance(&origin, &redis, "").await;
    a.get("/courses/").send().await;
    purge(&a, r#"{"tags": ["lectures"]}"#).await;
    let mut c = redis.conn().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut c).await.unwrap();
    assert!(!keys.is_empty());
    for k in &keys {
        // Counters, epoch and registry carry the prefix as their hash tag.
        assert!(
            k.starts_with("t:v1:") || k.starts_with("{t:v1}:"),
            "{k} is outside the prefix"
        );
    }
    // A v2 prefix sees none of it.
    let text = support::config_text(&origin, &format!("{}{ROUTES}", redis_cache(&redis, "t:v2")));
    let v2 = Proxy::from_text(&text).await;
    v2.wait_shared().await;
    assert_eq!(v2.get("/courses/").send().await.x_cache(), "MISS");
}

/// With Redis unreachable, memory entries are served only while younger than
/// `degraded_memory_ttl` (other instances' purges cannot reach us); older ones go to the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_serves_memory_only_within_the_degraded_window() {
    let mut redis = RedisServer::start().await;
    let (origin, _) = versioned().await;
    let a = instance(&origin, &redis, "").await;
    a.get("/courses/").send().await;
    assert_eq!(a.get("/courses/").send().await.header("x-cache-tier"), "memory");
    redis.kill();
    let cache = a.running().cache.clone();
    // Any Redis command now fails; a lookup of another key notices it.
    let noticed = async {
        for i in 0..200 {
            a.get(&format!("/lectures/{i}/")).send().await;
            if cache.shared_up() == Some(false) {
                return true;
            }
        }
        false
    };
    assert!(noticed.await, "the outage is noticed");
    let hits_before = origin.hits_for("/courses/");
    let r = a.get("/courses/").send().await;
    assert_eq!(
        (r.x_cache().as_str(), r.header("x-cache-tier").as_str()),
        ("HIT", "memory"),
        "young entry served"
    );
    a.advance(Duration::from_secs(6));
    let r = a.get("/courses/").send().await;
    assert_eq!(r.x_cache(), "MISS", "older than degraded_memory_ttl: refetched");
    assert_eq!(r.status, 200);
    assert_eq!(origin.hits_for("/courses/"), hits_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_in_the_url_is_used() {
    let redis = RedisServer::start_with_password(Some("pa55")).await;
    let (origin, _) = versioned().await;
    let a = instance(&origin, &redis, "").await;
    let b = instance(&origin, &redis, "").await;
    a.get("/courses/").send().await;
    assert_eq!(b.get("/courses/").send().await.header("x-cache-tier"), "redis");
}

/// A paused (SIGSTOP) redis-server answers nothing; requests must neither hang nor fail, and
/// Redis hits resume once it continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_never_hangs_or_fails_requests() {
    let redis = RedisServer::start().await;
    let (origin, _) = versioned().await;
    let a = Arc::new(instance(&origin, &redis, "").await);
    a.get("/courses/").send().await;
    redis.signal("STOP");
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move {
                let r = if i % 4 == 0 {
                    a.req(Method::POST, "/courses/").send().await
                } else {
                    a.get(&format!("/lectures/{}/", i % 5)).send().await
                };
                r.status
            })
        })
        .collect();
    let mut errors = 0;
    for t in tasks {
        // `send` itself fails the test past 30 s: a hang would show up here.
        if t.await.unwrap().is_server_error() {
            errors += 1;
        }
    }
    assert_eq!(errors, 0, "5xx answers while Redis was paused");
    let cache = a.running().cache.clone();
    assert!(cache.shared_up() == Some(false), "the pause was noticed");
    redis.signal("CONT");
    a.wait_shared().await;
    a.get("/lectures/42/").send().await;
    let b = instance(&origin, &redis, "").await;
    assert_eq!(
        b.get("/lectures/42/").send().await.header("x-cache-tier"),
        "redis",
        "Redis hits resume"
    );
}

/// A write acknowledged while Redis was unreachable must still invalidate the Redis copy once
/// Redis is back: the purge is replayed before the tier is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_made_while_redis_is_down_are_replayed() {
    let redis = RedisServer::start().await;
    let (origin, _) = versioned().await;
    let a = instance(&origin, &redis, "").await;
    assert_eq!(a.get("/courses/").send().await.text(), "v0");
    redis.signal("STOP");
    let w = a.req(Method::POST, "/courses/").send().await;
    assert_eq!(w.status, 200);
    redis.signal("CONT");
    a.wait_shared().await;
    let b = instance(&origin, &redis, "").await;
    let r = b.get("/courses/").send().await;
    assert_eq!(
        r.text(),
        "v1",
        "the Redis copy from before the write must not come back"
    );
}

/// The tier on its own: a purge reports the counters it left (and publishes them), `gens`
/// reads the same values, an entry reads back with the generations it was written with, and
/// every key keeps its documented name (counters, epoch and registry under one hash tag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_counters_and_key_names() {
    use cachegate::tiers::redis::{Gen, RedisTier};

    let redis = RedisServer::start().await;
    let metrics = Arc::new(cachegate::metrics::Metrics::new());
    let target = cachegate::config::RedisTarget {
        seeds: vec![redis.url()],
        cluster: false,
    };
    let tier = RedisTier::new(&target, "k:v1", Duration::from_secs(2), None, metrics).unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(tier.clone().connect(stop_rx));
    assert!(eventually(Duration::from_secs(5), || tier.is_up()).await);

    let scopes: Vec<String> = ["tag:a", "tag:b", "tag:c"].map(String::from).to_vec();
    // Generations are epoch values: never repeated, even after a counter key expired.
    let first = tier.purge(&scopes[..1], false, "k:v1:_purge", "m", 1).await.unwrap();
    assert!(first.epoch > 0);
    assert_eq!(first.values, vec![first.epoch]);
    let second = tier.purge(&scopes[1..2], true, "k:v1:_purge", "m", 1).await.unwrap();
    assert!(second.epoch > first.epoch);
    assert_eq!(second.values, vec![second.epoch]);
    let gens = tier.gens(&scopes).await.unwrap();
    assert_eq!(gens.epoch, second.epoch);
    assert_eq!(
        gens.scopes,
        [
            Gen {
                hard: first.epoch,
                soft: 0
            },
            Gen {
                hard: 0,
                soft: second.epoch
            },
            Gen { hard: 0, soft: 0 }
        ]
    );
    assert!(tier.get("k:v1:r:/x").await.unwrap().is_none());
    assert!(tier.gens(&[]).await.unwrap().scopes.is_empty());

    let recorded: Vec<(&str, Gen)> = scopes
        .iter()
        .map(String::as_str)
        .zip(gens.scopes.iter().copied())
        .collect();
    tier.put("k:v1:r:/x", &recorded, b"body", Duration::from_secs(60))
        .await
        .unwrap();
    let stored = tier.get("k:v1:r:/x").await.unwrap().expect("the entry reads back");
    assert_eq!(&stored.payload[..], b"body");
    let back: Vec<(&str, Gen)> = stored.recorded.iter().map(|(s, g)| (s.as_str(), *g)).collect();
    assert_eq!(back, recorded);
    assert!(tier.try_lease("k:v1:r:/x", 7, Duration::from_secs(60)).await.unwrap());
    assert!(tier.set_once("ab12", Duration::from_secs(60)).await.unwrap());
    assert!(!tier.set_once("ab12", Duration::from_secs(60)).await.unwrap());
    tier.heartbeat(1, Duration::from_secs(60), "k:v1:_hb:1", "0")
        .await
        .unwrap();

    let mut c = redis.conn().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut c).await.unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "k:v1:_lease:k:v1:r:/x",
            "k:v1:_replay:ab12",
            "k:v1:r:/x",
            "{k:v1}:_epoch",
            "{k:v1}:_g:tag:a",
            "{k:v1}:_instances",
            "{k:v1}:_s:tag:b",
        ]
    );
    tier.release_lease("k:v1:r:/x", 7).await;
    let lease: Option<String> = redis::cmd("GET")
        .arg("k:v1:_lease:k:v1:r:/x")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(lease, None);
    let _ = stop.send(true);
}

/// While the lease holds, a Redis-tier hit is one plain `GET`: no script, no counter read.
/// The first lookup of a scope reads its counters once (`MGET`); later hits do not.
async fn redis_hit_is_one_get_while_the_lease_holds(kind: Kind) {
    let redis = SharedRedis::start(kind).await;
    let (origin, _) = versioned().await;
    let a = instance_on(&origin, &redis, "").await;
    // B keeps nothing in memory: every hit is a Redis hit.
    let b = instance_on(&origin, &redis, "memory_capacity = \"0B\"\nmemory_ttl = \"0s\"\n").await;
    a.get("/courses/").send().await;
    let first = b.get("/courses/").send().await;
    assert_eq!(
        (first.x_cache().as_str(), first.header("x-cache-tier").as_str()),
        ("HIT", "redis")
    );
    let (gets, mgets, scripts) = (
        redis.calls("get").await,
        redis.calls("mget").await,
        redis.calls("evalsha").await,
    );
    for _ in 0..20 {
        let r = b.get("/courses/").send().await;
        assert_eq!(
            (r.x_cache().as_str(), r.header("x-cache-tier").as_str()),
            ("HIT", "redis")
        );
    }
    assert_eq!(redis.calls("get").await - gets, 20, "one GET per hit");
    assert_eq!(
        redis.calls("mget").await - mgets,
        0,
        "no counter reads once they are known"
    );
    // Heartbeats run a script every 100 ms per instance; a script per hit would be 20 more.
    assert!(redis.calls("evalsha").await - scripts < 20, "no script on a hit");
    // A purge through A reaches B's knowledge of the counters: the next hit is refused.
    purge(&a, r#"{"tags": ["courses"]}"#).await;
    assert_eq!(b.get("/courses/").send().await.x_cache(), "MISS");
}

/// `rediss://` for real: a server with TLS only, a CA made in the test (given as
/// `redis_ca_file`) and an ACL user in the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_an_acl_user() {
    let tls = support::tls_redis::TlsRedis::start().await;
    let (origin, _) = versioned().await;
    let cache = format!(
        "[cache]\nredis_url = \"{}\"\nredis_ca_file = \"{}\"\nkey_prefix = \"tls:v1\"\n",
        tls.url(),
        tls.ca_file().display()
    );
    let a = started(&origin, &cache, "").await;
    let b = started(&origin, &cache, "").await;
    assert_eq!(a.get("/courses/").send().await.x_cache(), "MISS");
    let r = b.get("/courses/").send().await;
    assert_eq!(
        (r.x_cache().as_str(), r.header("x-cache-tier").as_str()),
        ("HIT", "redis")
    );
    let p = purge(&a, r#"{"tags": ["courses"]}"#).await;
    let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
    assert_eq!(
        (v["shared"].as_bool(), v["instances_acked"].as_u64()),
        (Some(true), Some(1))
    );
    assert_eq!(b.get("/courses/").send().await.x_cache(), "MISS");
}
