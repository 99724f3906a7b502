//! Write-triggered purges: tags, tenant scope, related tags, RFC 9111 §4.4, surrogate keys, and
//! the fill/purge race.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use support::{respond, Origin, Proxy};

const CONFIG: &str = r#"
[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
tags = ["courses"]

[[route]]
name = "student_list"
path = "/students/"
ttl = "10m"
tags = ["students"]

[[route]]
name = "catalogue"
path = "/catalogue/"
ttl = "10m"
vary = ["role"]
tags = ["courses"]

[[route]]
name = "lecture_detail"
path = "/lectures/{id}/"
ttl = "20m"
vary = ["role"]
tags = ["lectures", "lecture:{id}"]

[[route]]
name = "articles"
path = "/articles/{*rest}"
ttl = "origin"

[[route]]
name = "default"
path = "/{*any}"
ttl = "10m"

[[invalidate]]
path = "/courses/{*rest}"
tags = ["courses", "students"]

[[invalidate]]
methods = ["DELETE"]
path = "/courses/{*rest}"
tags = ["lectures"]

[[invalidate]]
path = "/global/courses/"
tags = ["courses"]
scope = "all"

[[invalidate]]
path = "/lectures/{id}/"
tags = ["lecture:{id}"]
"#;

async fn setup() -> (Origin, Proxy) {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, CONFIG).await;
    (origin, proxy)
}

async fn warm(proxy: &Proxy, path: &str, role: &str, tenant: &str) {
    proxy.get(path).role(role).tenant(tenant).send().await;
    let r = proxy.get(path).role(role).tenant(tenant).send().await;
    assert_eq!(r.x_cache(), "HIT", "{path} {role} {tenant} warmed");
}

async fn state(proxy: &Proxy, path: &str, role: &str, tenant: &str) -> String {
    proxy.get(path).role(role).tenant(tenant).send().await.x_cache()
}

#[tokio::test]
async fn write_purges_its_tags_before_answering() {
    let (_o, p) = setup().await;
    warm(&p, "/courses/", "teacher", "1").await;
    let w = p
        .req(Method::POST, "/courses/")
        .role("teacher")
        .tenant("1")
        .body("{}")
        .send()
        .await;
    assert_eq!(w.status, 200);
    // The very next read, sent only after the write was answered, is fresh.
    assert_eq!(state(&p, "/courses/", "teacher", "1").await, "MISS");
}

#[tokio::test]
async fn related_tags_go_too() {
    let (_o, p) = setup().await;
    warm(&p, "/students/", "teacher", "1").await;
    p.req(Method::PUT, "/courses/5/")
        .role("teacher")
        .tenant("1")
        .send()
        .await;
    assert_eq!(state(&p, "/students/", "teacher", "1").await, "MISS");
}

#[tokio::test]
async fn every_matching_rule_applies() {
    let (_o, p) = setup().await;
    warm(&p, "/lectures/3/", "student", "1").await;
    p.req(Method::PATCH, "/courses/5/")
        .role("teacher")
        .tenant("1")
        .send()
        .await;
    assert_eq!(
        state(&p, "/lectures/3/", "student", "1").await,
        "HIT",
        "PATCH does not match the DELETE rule"
    );
    p.req(Method::DELETE, "/courses/5/")
        .role("teacher")
        .tenant("1")
        .send()
        .await;
    assert_eq!(
        state(&p, "/lectures/3/", "student", "1").await,
        "MISS",
        "DELETE adds the lectures tag"
    );
}

#[tokio::test]
async fn tenant_scope_spares_other_tenants_but_not_tenantless_entries() {
    let (_o, p) = setup().await;
    warm(&p, "/courses/", "teacher", "1").await;
    warm(&p, "/courses/", "teacher", "2").await;
    warm(&p, "/catalogue/", "teacher", "1").await; // keyed without tenant
    p.req(Method::POST, "/courses/")
        .role("teacher")
        .tenant("1")
        .send()
        .await;
    assert_eq!(state(&p, "/courses/", "teacher", "1").await, "MISS");
    assert_eq!(state(&p, "/courses/", "teacher", "2").await, "HIT");
    assert_eq!(state(&p, "/catalogue/", "teacher", "1").await, "MISS");
}

#[tokio::test]
async fn writer_without_tenant_purges_every_tenant() {
    let (_o, p) = setup().await;
    warm(&p, "/courses/", "teacher", "1").await;
    warm(&p, "/courses/", "teacher", "2").await;
    p.req(Method::POST, "/courses/").role("admin").send().await;
    assert_eq!(state(&p, "/courses/", "teacher", "1").await, "MISS");
    assert_eq!(state(&p, "/courses/", "teacher", "2").await, "MISS");
}

#[tokio::test]
async fn scope_all_purges_every_tenant() {
    let (_o, p) = setup().await;
    warm(&p, "/courses/", "teacher", "1").await;
    warm(&p, "/courses/", "teacher", "2").await;
    p.req(Method::POST, "/global/courses/")
        .role("admin")
        .tenant("1")
        .send()
        .await;
    assert_eq!(state(&p, "/courses/", "teacher", "2").await, "MISS");
}

#[tokio::test]
async fn path_parameters_select_the_tag() {
    let (_o, p) = setup().await;
    warm(&p, "/lectures/1/", "student", "1").await;
    warm(&p, "/lectures/2/", "student", "1").await;
    p.req(Method::PUT, "/lectures/1/")
        .role("teacher")
        .tenant("1")
        .send()
        .await;
    assert_eq!(state(&p, "/lectures/1/", "student", "1").await, "MISS");
    assert_eq!(state(&p, "/lectures/2/", "student", "1").await, "HIT");
}

#[tokio::test]
async fn failed_write_purges_nothing() {
    let origin = Origin::start(|r| {
        if r.method == Method::POST {
            respond(403, &[], "forbidden")
        } else {
            respond(200, &[], "list")
        }
    })
    .await;
    let p = Proxy::start(&origin, CONFIG).await;
    warm(&p, "/courses/", "student", "1").await;
    let w = p
        .req(Method::POST, "/courses/")
        .role("student")
        .tenant("1")
        .send()
        .await;
    assert_eq!(w.status, 403);
    assert_eq!(state(&p, "/courses/", "student", "1").await, "HIT");
}

#[tokio::test]
async fn unsafe_method_invalidates_request_uri_and_location_on_origin_ttl_routes() {
    let origin = Origin::start(|r| {
        if r.method == Method::POST {
            respond(
                201,
                &[
                    ("location", "/articles/9"),
                    ("content-location", "http://elsewhere.example/articles/8"),
                ],
                "",
            )
        } else {
            respond(200, &[("cache-control", "max-age=600")], r.path.clone())
        }
    })
    .await;
    let p = Proxy::start(&origin, CONFIG).await;
    for path in ["/articles/", "/articles/9", "/articles/8"] {
        warm(&p, path, "anonymous", "1").await;
    }
    p.req(Method::POST, "/articles/").tenant("1").send().await;
    assert_eq!(state(&p, "/articles/", "anonymous", "1").await, "MISS", "request URI");
    assert_eq!(state(&p, "/articles/9", "anonymous", "1").await, "MISS", "Location");
    assert_eq!(
        state(&p, "/articles/8", "anonymous", "1").await,
        "HIT",
        "another host's Content-Location"
    );
}

#[tokio::test]
async fn surrogate_keys_tag_entries_and_are_stripped() {
    let origin = Origin::start(|r| {
        if r.method == Method::GET {
            respond(
                200,
                &[("surrogate-key", "course:7 extra"), ("cache-tag", "other")],
                "with tags",
            )
        } else {
            respond(200, &[], "")
        }
    })
    .await;
    let rest = format!("{CONFIG}\n[[invalidate]]\npath = \"/touch/{{id}}/\"\ntags = [\"course:{{id}}\"]\n");
    let p = Proxy::start(&origin, &rest).await;
    let r = p.get("/page").send().await;
    assert!(r.headers.get("surrogate-key").is_none());
    assert!(r.headers.get("cache-tag").is_none());
    warm(&p, "/page", "anonymous", "-").await;
    p.req(Method::POST, "/touch/8/").send().await;
    assert_eq!(state(&p, "/page", "anonymous", "-").await, "HIT");
    p.req(Method::POST, "/touch/7/").send().await;
    assert_eq!(state(&p, "/page", "anonymous", "-").await, "MISS");
}

/// The classic fill/purge race: a fetch that started before a write must not be stored (or
/// served to later readers) after the write was answered.
#[tokio::test]
async fn fill_started_before_a_purge_is_not_stored() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(tokio::sync::Notify::new());
    let version = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let (g, e, v) = (gate.clone(), entered.clone(), version.clone());
    let origin = Origin::start_async(move |r| {
        let (g, e, v) = (g.clone(), e.clone(), v.clone());
        async move {
            if r.method == Method::POST {
                v.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return respond(200, &[], "");
            }
            let seen = v.load(std::sync::atomic::Ordering::SeqCst);
            if r.query.as_deref() == Some("slow=1") {
                // The slow read has read the old version; hold it until the write is answered.
                e.notify_one();
                g.notified().await;
            }
            respond(200, &[], format!("v{seen}"))
        }
    })
    .await;
    let config = r#"
[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
query = { ignore = ["slow"] }
tags = ["courses"]

[[invalidate]]
path = "/courses/{*rest}"
tags = ["courses"]
"#;
    let p = Arc::new(Proxy::start(&origin, config).await);
    let reader = {
        let p = p.clone();
        tokio::spawn(async move { p.get("/courses/?slow=1").send().await })
    };
    entered.notified().await;
    let w = p.req(Method::POST, "/courses/").send().await;
    assert_eq!(w.status, 200);
    gate.notify_one();
    let slow = reader.await.unwrap();
    assert_eq!(slow.text(), "v1");
    assert_eq!(slow.header("cache-status"), "cachegate; fwd=miss; detail=purged");
    let after = p.get("/courses/").send().await;
    assert_eq!(after.text(), "v2", "a read after the acknowledged write never sees v1");
    assert_eq!(after.x_cache(), "MISS");
}

#[tokio::test]
async fn concurrent_readers_and_writers_end_fresh() {
    let version = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let v = version.clone();
    let origin = Origin::start(move |r| {
        if r.method == Method::POST {
            let n = v.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            return respond(200, &[], format!("{n}"));
        }
        respond(200, &[], format!("v{}", v.load(std::sync::atomic::Ordering::SeqCst)))
    })
    .await;
    let p = Arc::new(Proxy::start(&origin, CONFIG).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < deadline {
                if i < 2 {
                    p.req(Method::POST, "/courses/").tenant("1").send().await;
                } else {
                    p.get("/courses/").tenant("1").send().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let last = version.load(std::sync::atomic::Ordering::SeqCst);
    assert!(last > 0);
    for _ in 0..3 {
        let r = p.get("/courses/").tenant("1").send().await;
        assert_eq!(r.text(), format!("v{last}"), "after the last write every read is fresh");
    }
}
