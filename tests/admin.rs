//! The admin listener: liveness, readiness against the origin, and nothing else exposed.

mod support;

use support::{Origin, Proxy};

#[tokio::test]
async fn healthz_and_readyz_when_origin_is_up() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, "").await;
    let h = proxy.admin_get("/healthz").send().await;
    assert_eq!(h.status, 200);
    let r = proxy.admin_get("/readyz").send().await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("reachable"));
    assert_eq!(proxy.admin_get("/nope").send().await.status, 404);
    assert_eq!(origin.hits(), 0, "readiness probes do not send requests to the app");
}

#[tokio::test]
async fn readyz_is_503_when_origin_is_down() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[origin]\nurl = \"http://127.0.0.1:{port}\"\n"
    );
    let proxy = Proxy::from_text(&text).await;
    assert_eq!(proxy.admin_get("/healthz").send().await.status, 200);
    let r = proxy.admin_get("/readyz").send().await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("not ready"), "{}", r.text());
}
