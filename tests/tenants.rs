//! Per-tenant figures: `cachegate_tenant_lookups_total{tenant,result}` with a bounded label
//! set, the `tenants` object of `/admin/stats`, and `memory_tenant_quota` keeping one tenant's
//! flood from taking more than its share of the memory tier.

mod support;

use serde_json::Value;
use support::{respond, Origin, Proxy};

async fn stats(p: &Proxy) -> Value {
    serde_json::from_slice(&p.admin_get("/admin/stats").send().await.body).unwrap()
}

#[tokio::test]
async fn tenants_are_labelled_up_to_top_n_and_the_rest_are_other() {
    let origin = Origin::echo().await;
    let p = Proxy::start(
        &origin,
        "[metrics]\ntenant_labels = { top = 2 }\n[[route]]\nname = \"c\"\npath = \"/c/{id}/\"\nttl = \"10m\"\n[[route]]\nname = \"pub\"\npath = \"/pub/\"\nttl = \"10m\"\npublic = true\n",
    )
    .await;
    for i in 0..3 {
        for _ in 0..2 {
            p.get(&format!("/c/{i}/")).role("r").tenant("big").send().await;
        }
    }
    p.get("/c/1/").role("r").tenant("small").send().await;
    for i in 0..30 {
        p.get(&format!("/c/{i}/"))
            .role("r")
            .tenant(&format!("t{i}"))
            .send()
            .await;
    }
    p.get("/pub/").send().await;
    let v = stats(&p).await;
    let t = &v["tenants"];
    assert_eq!(t["big"]["misses"], 3, "{t}");
    assert_eq!(t["big"]["hits"], 3, "{t}");
    assert_eq!(t["big"]["hit_ratio"], 0.5);
    assert_eq!(t["none"]["misses"], 1, "the public route has no tenant: {t}");
    let labelled = t.as_object().unwrap().len();
    assert!(labelled <= 4, "top 2 plus other and none: {t}");
    let m = p.admin_get("/metrics").send().await.text();
    let series = m
        .lines()
        .filter(|l| l.starts_with("cachegate_tenant_lookups_total{"))
        .count();
    assert!(series <= 4 * 4, "label set stays bounded: {series} series\n{m}");
    assert!(
        m.contains("cachegate_tenant_lookups_total{result=\"miss\",tenant=\"other\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn a_tenant_flood_cannot_take_more_than_its_quota_of_memory() {
    let body = "x".repeat(2000);
    let origin = Origin::start(move |_| respond(200, &[], body.clone())).await;
    let p = Proxy::start(
        &origin,
        "[cache]\nmemory_capacity = \"200KiB\"\nmemory_tenant_quota = \"10%\"\n[[route]]\nname = \"c\"\npath = \"/c/{id}/\"\nttl = \"10m\"\n",
    )
    .await;
    for i in 0..5 {
        assert_eq!(
            p.get(&format!("/c/{i}/"))
                .role("r")
                .tenant("quiet")
                .send()
                .await
                .x_cache(),
            "MISS"
        );
    }
    for i in 0..300 {
        p.get(&format!("/c/flood{i}/")).role("r").tenant("loud").send().await;
    }
    let v = stats(&p).await;
    let quota = v["memory"]["tenant_quota_bytes"].as_u64().unwrap();
    assert_eq!(quota, 200 * 1024 / 10);
    let loud = v["memory"]["by_tenant"]["loud"].as_u64().unwrap();
    assert!(loud > 0 && loud <= quota, "loud holds {loud} of a {quota} quota: {v}");
    for i in 0..5 {
        let r = p.get(&format!("/c/{i}/")).role("r").tenant("quiet").send().await;
        assert_eq!(r.x_cache(), "HIT", "quiet's entry {i} survived the flood");
    }
}
