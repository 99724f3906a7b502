//! Answers that must never be stored, and requests that must never be answered from the cache,
//! each with its recorded reason.

mod support;

use support::{respond, Origin, Proxy};

const ROUTES: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_body = "1KiB"

[[route]]
name = "strip"
path = "/strip/"
ttl = "10m"
strip_set_cookie = true

[[route]]
name = "shared"
path = "/shared/"
ttl = "10m"
vary = []
public = true

[[route]]
name = "anyone"
path = "/anyone/"
ttl = "10m"
vary = []

[[route]]
name = "mine"
path = "/mine/"
ttl = "10m"
vary = ["user"]

[[route]]
name = "all"
path = "/{*any}"
ttl = "10m"
"#;

async fn origin() -> Origin {
    Origin::start(|r| match r.path.as_str() {
        "/no-store" => respond(200, &[("cache-control", "no-store")], "x"),
        "/private" => respond(200, &[("cache-control", "private, max-age=60")], "x"),
        "/cookie" | "/strip/" => respond(200, &[("set-cookie", "sid=abc; HttpOnly")], "x"),
        "/teapot" => respond(418, &[], "x"),
        "/server-error" => respond(500, &[], "boom"),
        "/missing" => respond(404, &[], "nope"),
        "/big" => respond(200, &[], vec![b'a'; 4096]),
        "/vary-star" => respond(200, &[("vary", "*")], "x"),
        _ => respond(
            200,
            &[],
            format!("{} {}", r.path, support::header(&r.headers, "cookie")),
        ),
    })
    .await
}

/// Sends the same request twice; both must bypass with `reason`, and the origin sees both.
async fn assert_never_stored(proxy: &Proxy, origin: &Origin, path: &str, reason: &str, headers: &[(&str, &str)]) {
    let before = origin.hits_for(path.split('?').next().unwrap());
    for _ in 0..2 {
        let mut req = proxy.get(path);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let r = req.send().await;
        assert_eq!(r.x_cache(), "BYPASS", "{path}");
        assert_eq!(
            r.header("cache-status"),
            format!("cachegate; fwd=bypass; detail={reason}"),
            "{path}"
        );
    }
    assert_eq!(
        origin.hits_for(path.split('?').next().unwrap()) - before,
        2,
        "{path} reached the origin twice"
    );
}

#[tokio::test]
async fn no_store_is_not_stored() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    assert_never_stored(&p, &o, "/no-store", "no-store", &[]).await;
}

#[tokio::test]
async fn private_is_not_stored() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    assert_never_stored(&p, &o, "/private", "private", &[]).await;
}

#[tokio::test]
async fn set_cookie_is_not_stored() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    assert_never_stored(&p, &o, "/cookie", "set-cookie", &[]).await;
}

#[tokio::test]
async fn strip_set_cookie_route_stores_without_the_cookie() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    let first = p.get("/strip/").send().await;
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(
        first.header("set-cookie"),
        "sid=abc; HttpOnly",
        "the requester still gets its cookie"
    );
    let second = p.get("/strip/").send().await;
    assert_eq!(second.x_cache(), "HIT");
    assert!(
        second.headers.get("set-cookie").is_none(),
        "a stored cookie must never reach another client"
    );
}

#[tokio::test]
async fn uncacheable_status_is_not_stored_and_passed_through() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    assert_never_stored(&p, &o, "/teapot", "status", &[]).await;
    let r = p.get("/server-error").send().await;
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "boom", "an origin 5xx is passed through as sent");
}

#[tokio::test]
async fn not_found_is_cacheable_by_default() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    p.get("/missing").send().await;
    let r = p.get("/missing").send().await;
    assert_eq!(r.status, 404);
    assert_eq!(r.x_cache(), "HIT");
}

#[tokio::test]
async fn body_over_max_body_is_streamed_but_not_stored() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    assert_never_stored(&p, &o, "/big", "too-large", &[]).await;
    assert_eq!(p.get("/big").send().await.body.len(), 4096);
}

#[tokio::test]
async fn vary_star_is_not_stored() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    assert_never_stored(&p, &o, "/vary-star", "vary-star", &[]).await;
}

#[tokio::test]
async fn authorization_header_bypasses() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    p.get("/page").send().await; // an anonymous entry exists
    assert_never_stored(&p, &o, "/page", "credentials", &[("authorization", "Bearer abc")]).await;
}

#[tokio::test]
async fn any_cookie_bypasses_by_default() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    p.get("/page").send().await;
    assert_never_stored(&p, &o, "/page", "credentials", &[("cookie", "_ga=1")]).await;
}

#[tokio::test]
async fn trusted_role_header_plus_unresolved_authorization_bypasses() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    assert_never_stored(
        &p,
        &o,
        "/page",
        "credentials",
        &[("x-user-role", "teacher"), ("authorization", "Basic eDp5")],
    )
    .await;
}

#[tokio::test]
async fn named_credential_cookies_let_other_cookies_through() {
    let o = origin().await;
    let rest = format!("[identity]\ncredential_cookies = [\"sessionid\"]\n{ROUTES}");
    let p = Proxy::start(&o, &rest).await;
    let a = p.get("/page").header("cookie", "_ga=1").send().await;
    assert_eq!(a.x_cache(), "MISS");
    let b = p.get("/page").header("cookie", "_ga=2; theme=dark").send().await;
    assert_eq!(b.x_cache(), "HIT");
    assert_never_stored(&p, &o, "/page", "credentials", &[("cookie", "_ga=1; sessionid=s3cr3t")]).await;
}

#[tokio::test]
async fn public_route_ignores_credentials() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    p.get("/shared/").send().await;
    let r = p
        .get("/shared/")
        .header("cookie", "sessionid=x")
        .header("authorization", "Bearer t")
        .send()
        .await;
    assert_eq!(r.x_cache(), "HIT");
}

#[tokio::test]
async fn empty_vary_without_public_still_bypasses_credentials() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    p.get("/anyone/").send().await;
    assert_eq!(
        p.get("/anyone/").send().await.x_cache(),
        "HIT",
        "one entry for everyone"
    );
    // A caller identified by a trusted gateway is somebody: the origin may answer them
    // differently, so the shared entry neither serves nor stores their answer.
    assert_never_stored(&p, &o, "/anyone/", "credentials", &[("x-user-role", "admin")]).await;
    assert_never_stored(&p, &o, "/anyone/", "credentials", &[("cookie", "sessionid=x")]).await;
}

#[tokio::test]
async fn user_vary_without_resolved_user_bypasses() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    assert_never_stored(&p, &o, "/mine/", "no-user", &[("x-user-role", "student")]).await;
}

#[tokio::test]
async fn requests_for_several_ranges_bypass() {
    let o = origin().await;
    let p = Proxy::start(&o, ROUTES).await;
    // One range is answered from the stored whole answer (tests/rfc9111.rs); several are the
    // origin's to assemble.
    assert_never_stored(&p, &o, "/page", "range", &[("range", "bytes=0-1, 3-4")]).await;
}
