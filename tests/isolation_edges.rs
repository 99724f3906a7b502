//! Edges of the isolation rules: gateways without a role, fills racing a login, public routes
//! under `Vary: Cookie`, parameter limits, `Vary` on what cachegate sets, equivalent write paths.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use support::{respond, Origin, Proxy};

const ROLE_TENANT_ROUTE: &str = r#"
[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
vary = ["role", "tenant"]
"#;

/// A trusted gateway that sends tenant and user but no role names somebody: the role is
/// unresolved, never `anonymous_role`, or every user of the tenant would share one entry while
/// the origin answers by the user.
#[tokio::test]
async fn gateway_without_role_header_is_not_anonymous() {
    let n = Arc::new(AtomicUsize::new(0));
    let o = Origin::start(move |r| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        // The app looks the role up by user id when the gateway does not say it.
        let user = support::header(&r.headers, "x-user-id");
        let role = match user.as_str() {
            "boss" => "admin",
            "-" => "anonymous",
            _ => "student",
        };
        respond(200, &[], format!("view for {role} (user {user}) n={i}"))
    })
    .await;
    let p = Proxy::start(&o, ROLE_TENANT_ROUTE).await;
    let admin = p.get("/courses/").tenant("1").header("x-user-id", "boss").send().await;
    assert!(admin.text().starts_with("view for admin"), "{}", admin.text());
    let student = p.get("/courses/").tenant("1").header("x-user-id", "kid").send().await;
    assert!(
        student.text().starts_with("view for student"),
        "a student got {:?} ({})",
        student.text(),
        student.x_cache()
    );
}

/// `public = true` while the origin answers `Vary: Cookie`: nothing resolves the cookies on a
/// public route, yet they are forwarded, so they must be keyed (by digest), with the default
/// `credential_cookies = ["*"]` and with a named list alike.
#[tokio::test]
async fn public_route_honours_vary_cookie() {
    for identity in ["", "[identity]\ncredential_cookies = [\"sessionid\"]\n"] {
        let n = Arc::new(AtomicUsize::new(0));
        let o = Origin::start(move |r| {
            let i = n.fetch_add(1, Ordering::SeqCst);
            let cookie = support::header(&r.headers, "cookie");
            respond(200, &[("vary", "Cookie")], format!("page for cookie {cookie} n={i}"))
        })
        .await;
        let routes = "[[route]]\nname = \"home\"\npath = \"/\"\nttl = \"10m\"\npublic = true\n";
        let p = Proxy::start(&o, &format!("{identity}{routes}")).await;
        let a = p.get("/").header("cookie", "sessionid=alice-secret").send().await;
        assert!(a.text().contains("alice"), "{}", a.text());
        let b = p.get("/").send().await;
        assert!(
            !b.text().contains("alice"),
            "{identity:?}: anonymous visitor got alice's page: {:?} ({})",
            b.text(),
            b.x_cache()
        );
    }
}

/// An origin that reads only the first 1000 query parameters (Express's qs
/// `parameterLimit`, Node's `querystring` `maxKeys`, PHP's `max_input_vars`): parameters
/// the route leaves out of the key push a kept one past the limit.
#[tokio::test]
async fn dropped_parameters_cannot_hide_a_kept_one() {
    let o = Origin::start(|r| {
        let q = r.query.clone().unwrap_or_default();
        let page = q
            .split('&')
            .take(1000)
            .filter_map(|p| p.strip_prefix("page="))
            .next()
            .unwrap_or("1")
            .to_string();
        respond(200, &[], format!("page {page}"))
    })
    .await;
    let p = Proxy::start(
        &o,
        r#"
[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
vary = []
query = { include = ["page"] }
"#,
    )
    .await;
    let junk: Vec<String> = (0..1000).map(|i| format!("utm{i}=x")).collect();
    let poison = format!("/courses/?{}&page=2", junk.join("&"));
    let a = p.get(&poison).send().await;
    assert_eq!(a.text(), "page 1", "the origin ignored page=2");
    let b = p.get("/courses/?page=2").send().await;
    assert_eq!(b.text(), "page 2", "got {:?} ({})", b.text(), b.x_cache());
}

/// The origin says `Vary: X-Forwarded-For`, which cachegate sets per client: the key could not
/// see the value the origin saw, so the answer is not stored.
#[tokio::test]
async fn vary_on_a_header_cachegate_rewrites() {
    let o = Origin::start(|r| {
        let xff = support::header(&r.headers, "x-forwarded-for");
        respond(200, &[("vary", "X-Forwarded-For")], format!("for {xff}"))
    })
    .await;
    let p = Proxy::start(
        &o,
        r#"
[identity]
trust_headers_from = []

[[route]]
name = "geo"
path = "/geo/"
ttl = "10m"
vary = []
"#,
    )
    .await;
    let a = p.get("/geo/").send().await;
    assert_eq!(a.text(), "for 127.0.0.1");
    let other = support::client_from("127.0.0.2".parse().unwrap());
    let req = http::Request::get(format!("http://{}/geo/", p.addr))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = other.request(req).await.unwrap();
    let cache = support::header(resp.headers(), "x-cache");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        "for 127.0.0.2",
        "client 127.0.0.2 got 127.0.0.1's answer ({cache})"
    );
}

/// A read whose identity was resolved before a login (same session id, as express-session
/// without `regenerate()` keeps it) is not stored after the login: the fill carries the
/// session's scope and the lookup's stamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_started_before_login_is_not_stored_after_it() {
    let logged_in = Arc::new(AtomicBool::new(false));
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let li = logged_in.clone();
    let o = Origin::start_async(move |r| {
        let li = li.clone();
        let mut gate = gate_rx.clone();
        async move {
            match (r.method.clone(), r.path.as_str()) {
                (Method::GET, "/api/whoami/") => {
                    if li.load(Ordering::SeqCst) {
                        respond(200, &[], r#"{"role": "teacher", "tenant": 1, "user": "ann"}"#)
                    } else {
                        respond(200, &[], r#"{"role": null}"#)
                    }
                }
                (Method::POST, "/login/") => {
                    li.store(true, Ordering::SeqCst);
                    // express-session without regenerate(): same id, no Set-Cookie.
                    respond(302, &[("location", "/courses/")], "")
                }
                _ => {
                    let cookie = support::header(&r.headers, "cookie");
                    if cookie.contains("sessionid") {
                        // Hold the read until the test lets it go.
                        while !*gate.borrow() {
                            if gate.changed().await.is_err() {
                                break;
                            }
                        }
                    }
                    let who = if cookie.contains("sessionid=s1") && li.load(Ordering::SeqCst) {
                        "ann (teacher, tenant 1)"
                    } else {
                        "nobody"
                    };
                    respond(200, &[], format!("courses for {who}"))
                }
            }
        }
    })
    .await;
    let text = format!(
        "[identity]\ncredential_cookies = [\"sessionid\"]\nlookup = {{ path = \"/api/whoami/\", cookie = \"sessionid\", ttl = \"60s\", reset_paths = [\"/login/\"] }}\n{ROLE_TENANT_ROUTE}"
    );
    let p = Arc::new(Proxy::start(&o, &text).await);
    let p2 = p.clone();
    let read = tokio::spawn(async move { p2.get("/courses/").header("cookie", "sessionid=s1").send().await });
    // The read's fill is at the origin (held) before the login is sent.
    assert!(support::eventually(Duration::from_secs(10), || o.hits_for("/courses/") >= 1).await);
    let login = p
        .req(Method::POST, "/login/")
        .header("cookie", "sessionid=s1")
        .send()
        .await;
    assert_eq!(login.status, 302);
    gate_tx.send(true).unwrap();
    let r = read.await.unwrap();
    assert!(r.text().contains("ann"), "{}", r.text());
    let anon = p.get("/courses/").send().await;
    assert!(
        !anon.text().contains("ann"),
        "an anonymous visitor got ann's page: {:?} ({})",
        anon.text(),
        anon.x_cache()
    );
}

/// An origin that routes `/courses` like `/courses/` (Rails, Express: trailing slash
/// optional): a write there is matched by `[[invalidate]] path = "/courses/{*rest}"`.
#[tokio::test]
async fn write_on_an_equivalent_path_purges() {
    let (o, _v) = support::versioned_origin().await;
    let p = Proxy::start(
        &o,
        r#"
[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
vary = []
tags = ["courses"]

[[invalidate]]
path = "/courses/{*rest}"
tags = ["courses"]
"#,
    )
    .await;
    for write_path in ["/courses"] {
        let before = p.get("/courses/").send().await.text();
        let w = p.req(Method::POST, write_path).send().await;
        assert_eq!(w.status, 200);
        let after = p.get("/courses/").send().await;
        assert_ne!(
            after.text(),
            before,
            "after POST {write_path} (answered {}) the list is still {before} ({})",
            w.text(),
            after.x_cache()
        );
    }
}

/// A logout that carries the session cookie twice: the origin logs out the value it reads
/// (Django: the last one), so cachegate must forget every value sent, not only the first.
#[tokio::test]
async fn logout_with_a_duplicated_session_cookie_forgets_both() {
    let out = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let o_out = out.clone();
    let o = Origin::start(move |r| {
        let cookie = support::header(&r.headers, "cookie");
        // Django's parser: the last duplicate wins.
        let sid = cookie
            .split(';')
            .filter_map(|c| c.trim().strip_prefix("sessionid="))
            .next_back()
            .unwrap_or("")
            .to_string();
        match r.path.as_str() {
            "/api/whoami/" if o_out.lock().unwrap().contains(&sid) => respond(200, &[], "{}"),
            "/api/whoami/" => respond(200, &[], r#"{"role": "teacher", "tenant": 1, "user": "ann"}"#),
            "/logout/" => {
                o_out.lock().unwrap().push(sid);
                respond(200, &[("set-cookie", "sessionid=; Max-Age=0")], "bye")
            }
            _ => {
                let who = if sid.is_empty() || o_out.lock().unwrap().contains(&sid) {
                    "nobody"
                } else {
                    "ann"
                };
                respond(200, &[], format!("courses for {who}"))
            }
        }
    })
    .await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndebug_headers = true\n[identity]\ncredential_cookies = [\"sessionid\"]\nlookup = {{ path = \"/api/whoami/\", cookie = \"sessionid\", ttl = \"60s\", reset_paths = [\"/logout/\"] }}\n{ROLE_TENANT_ROUTE}"
    );
    let p = Proxy::start(&o, &text).await;
    for sid in ["a", "b"] {
        let r = p
            .get("/courses/")
            .header("cookie", &format!("sessionid={sid}"))
            .send()
            .await;
        assert!(
            r.header("x-cache-key").contains(":teacher:1:"),
            "{}",
            r.header("x-cache-key")
        );
    }
    let bye = p
        .get("/logout/")
        .header("cookie", "sessionid=a; sessionid=b")
        .send()
        .await;
    assert_eq!(bye.status, 200);
    let b = p.get("/courses/").header("cookie", "sessionid=b").send().await;
    assert_eq!(b.text(), "courses for nobody", "key {}", b.header("x-cache-key"));
    assert!(
        !b.header("x-cache-key").contains(":teacher:"),
        "{}",
        b.header("x-cache-key")
    );
}
