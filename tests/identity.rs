//! Identity for unchanged apps: verified JWTs and session lookups key logged-in users by role,
//! tenant and user; anything that cannot be resolved bypasses the cache.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cachegate::secrets::Secrets;
use http::Method;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use support::{respond, Origin, Proxy};

const SECRET: &str = "jwt-test-secret";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn claims(role: &str, org: u32, sub: &str) -> serde_json::Value {
    json!({ "role": role, "org_id": org, "sub": sub, "exp": now() + 600 })
}

/// An origin that answers with what it can tell of the caller, and a numbered body.
async fn origin() -> Origin {
    let n = Arc::new(AtomicUsize::new(0));
    Origin::start(move |r| {
        if r.path == "/api/whoami/" {
            let cookie = support::header(&r.headers, "cookie");
            return match cookie.as_str() {
                "sessionid=teacher-1a" => respond(200, &[], r#"{"role": "teacher", "tenant": 1, "user": "ann"}"#),
                "sessionid=teacher-1b" => respond(200, &[], r#"{"role": "teacher", "tenant": 1, "user": "bob"}"#),
                "sessionid=student-1" => respond(200, &[], r#"{"role": "student", "tenant": 1, "user": "cid"}"#),
                "sessionid=teacher-2" => respond(200, &[], r#"{"role": "teacher", "tenant": 2, "user": "dan"}"#),
                "sessionid=loggedout" => respond(200, &[], r#"{"role": null}"#),
                "sessionid=garbage" => respond(200, &[], "<html>not json</html>"),
                _ => respond(401, &[], r#"{"detail": "no session"}"#),
            };
        }
        let i = n.fetch_add(1, Ordering::SeqCst);
        respond(
            200,
            &[("vary", "Cookie")],
            format!("{} for {} n={i}", r.path, support::header(&r.headers, "cookie")),
        )
    })
    .await
}

const ROUTES: &str = r#"
[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
vary = ["role", "tenant"]

[[route]]
name = "my_courses"
path = "/me/"
ttl = "10m"
vary = ["user"]
"#;

fn jwt_config(extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndebug_headers = true\n[identity]\njwt = {{ secret_env = \"JWT_SECRET\", algorithms = [\"HS256\"], role_claim = \"role\", tenant_claim = \"org_id\", user_claim = \"sub\"{extra} }}\n{ROUTES}"
    )
}

async fn jwt_proxy(origin: &Origin, extra: &str) -> Proxy {
    let text = support::config_text(origin, &jwt_config(extra));
    Proxy::from_text_with(
        &text,
        Secrets {
            jwt_secret: Some(SECRET.into()),
            ..Default::default()
        },
    )
    .await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn teachers_of_one_tenant_share_the_role_entry() {
    let o = origin().await;
    let p = jwt_proxy(&o, "").await;
    let ann = p
        .get("/courses/")
        .header("authorization", &bearer(&hs(claims("teacher", 1, "ann"))))
        .send()
        .await;
    assert_eq!(ann.x_cache(), "MISS");
    let bob = p
        .get("/courses/")
        .header("authorization", &bearer(&hs(claims("teacher", 1, "bob"))))
        .send()
        .await;
    assert_eq!(bob.x_cache(), "HIT", "same role and tenant: shared");
    assert_eq!(bob.body, ann.body);
    assert!(
        bob.header("x-cache-key").contains(":teacher:1::"),
        "{}",
        bob.header("x-cache-key")
    );
    let other_tenant = p
        .get("/courses/")
        .header("authorization", &bearer(&hs(claims("teacher", 2, "cat"))))
        .send()
        .await;
    assert_eq!(other_tenant.x_cache(), "MISS");
    let student = p
        .get("/courses/")
        .header("authorization", &bearer(&hs(claims("student", 1, "dan"))))
        .send()
        .await;
    assert_eq!(student.x_cache(), "MISS");
}

#[tokio::test]
async fn user_routes_are_per_user() {
    let o = origin().await;
    let p = jwt_proxy(&o, "").await;
    let ann = bearer(&hs(claims("teacher", 1, "ann")));
    p.get("/me/").header("authorization", &ann).send().await;
    assert_eq!(
        p.get("/me/").header("authorization", &ann).send().await.x_cache(),
        "HIT"
    );
    let bob = p
        .get("/me/")
        .header("authorization", &bearer(&hs(claims("teacher", 1, "bob"))))
        .send()
        .await;
    assert_eq!(bob.x_cache(), "MISS");
    let anon = p.get("/me/").send().await;
    assert_eq!(anon.header("cache-status"), "cachegate; fwd=bypass; detail=no-user");
}

#[tokio::test]
async fn invalid_tokens_are_never_cached_nor_anonymous() {
    let o = origin().await;
    let p = jwt_proxy(&o, "").await;
    p.get("/courses/").send().await; // an anonymous entry exists
    let expired = hs(json!({ "role": "teacher", "org_id": 1, "sub": "ann", "exp": now() - 3600 }));
    let wrong_key = encode(
        &Header::new(Algorithm::HS256),
        &claims("admin", 1, "x"),
        &EncodingKey::from_secret(b"other"),
    )
    .unwrap();
    let wrong_alg = encode(
        &Header::new(Algorithm::HS384),
        &claims("admin", 1, "x"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let b64 = |v: &serde_json::Value| base64url(v.to_string().as_bytes());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims("admin", 1, "x"))
    );
    let no_exp = hs(json!({ "role": "teacher", "org_id": 1, "sub": "ann" }));
    for (name, token) in [
        ("expired", expired),
        ("wrong key", wrong_key),
        ("wrong algorithm", wrong_alg),
        ("alg none", none),
        ("no exp", no_exp),
        ("garbage", "abc.def".into()),
    ] {
        for _ in 0..2 {
            let r = p.get("/courses/").header("authorization", &bearer(&token)).send().await;
            assert_eq!(
                r.header("cache-status"),
                "cachegate; fwd=bypass; detail=credentials",
                "{name}"
            );
        }
    }
    // Basic auth is not a JWT: nobody resolves it.
    let r = p
        .get("/courses/")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await;
    assert_eq!(r.x_cache(), "BYPASS");
}

fn base64url(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, x)| acc | (u32::from(*x) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn list_valued_role_claim_uses_the_priority() {
    let o = origin().await;
    let p = jwt_proxy(&o, ", role_priority = [\"admin\", \"teacher\"]").await;
    let t = hs(json!({ "role": ["student", "teacher"], "org_id": 1, "sub": "a", "exp": now() + 60 }));
    let r = p.get("/courses/").header("authorization", &bearer(&t)).send().await;
    assert!(
        r.header("x-cache-key").contains(":teacher:1::"),
        "{}",
        r.header("x-cache-key")
    );
    let ambiguous = hs(json!({ "role": ["student", "guest"], "org_id": 1, "sub": "a", "exp": now() + 60 }));
    let r = p
        .get("/courses/")
        .header("authorization", &bearer(&ambiguous))
        .send()
        .await;
    assert_eq!(r.x_cache(), "BYPASS");
}

#[tokio::test]
async fn jwt_from_a_cookie_and_nested_claims() {
    let o = origin().await;
    let text = support::config_text(
        &o,
        &format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndebug_headers = true\n[identity]\ncredential_cookies = [\"access_token\"]\njwt = {{ cookie = \"access_token\", secret_env = \"S\", algorithms = [\"HS256\"], role_claim = \"realm.role\", tenant_claim = \"realm.org\" }}\n{ROUTES}"),
    );
    let p = Proxy::from_text_with(
        &text,
        Secrets {
            jwt_secret: Some(SECRET.into()),
            ..Default::default()
        },
    )
    .await;
    let t = hs(json!({ "realm": { "role": "teacher", "org": "7" }, "exp": now() + 60 }));
    let r = p
        .get("/courses/")
        .header("cookie", &format!("access_token={t}; _ga=1"))
        .send()
        .await;
    assert!(
        r.header("x-cache-key").contains(":teacher:7::"),
        "{}",
        r.header("x-cache-key")
    );
    assert!(
        !r.header("x-cache-key").contains(&t),
        "raw credentials never appear in keys"
    );
}

async fn keyed_with_public_key(o: &Origin, alg: Algorithm, jwt: &str, private: &str, kid: Option<&str>) -> String {
    let text = support::config_text(
        o,
        &format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndebug_headers = true\n[identity]\njwt = {jwt}\n{ROUTES}"),
    );
    let p = Proxy::from_text(&text).await;
    let pem = std::fs::read(fixture(private)).unwrap();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let t = encode(
        &header,
        &json!({ "role": "teacher", "tenant": "3", "exp": now() + 60 }),
        &key,
    )
    .unwrap();
    p.get("/courses/")
        .header("authorization", &bearer(&t))
        .send()
        .await
        .header("x-cache-key")
}

#[tokio::test]
async fn rs256_es256_and_jwks_tokens_verify() {
    let o = origin().await;
    let rs = format!(
        "{{ algorithms = [\"RS256\"], public_key = \"{}\", tenant_claim = \"tenant\" }}",
        fixture("rsa_public.pem")
    );
    assert!(
        keyed_with_public_key(&o, Algorithm::RS256, &rs, "rsa_private.pem", None)
            .await
            .contains(":teacher:3::")
    );
    let es = format!(
        "{{ algorithms = [\"ES256\"], public_key = \"{}\", tenant_claim = \"tenant\" }}",
        fixture("ec_public.pem")
    );
    assert!(keyed_with_public_key(&o, Algorithm::ES256, &es, "ec_private.pem", None)
        .await
        .contains(":teacher:3::"));
    let jwks = format!(
        "{{ algorithms = [\"RS256\"], jwks_file = \"{}\", tenant_claim = \"tenant\" }}",
        fixture("jwks.json")
    );
    assert!(
        keyed_with_public_key(&o, Algorithm::RS256, &jwks, "rsa_private.pem", Some("k1"))
            .await
            .contains(":teacher:3::")
    );
    // An ES256 token against an RS256-only config is refused.
    let key = keyed_with_public_key(&o, Algorithm::ES256, &rs, "ec_private.pem", None).await;
    assert_eq!(key, "-");
}

fn lookup_config(extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndebug_headers = true\n[identity]\ncredential_cookies = [\"sessionid\", \"csrftoken\"]\nstrip_cookies = [\"_ga*\"]\nlookup = {{ path = \"/api/whoami/\", cookie = \"sessionid\", ttl = \"60s\", role_field = \"role\", tenant_field = \"tenant\", user_field = \"user\"{extra} }}\n{ROUTES}\n[[invalidate]]\npath = \"/courses/{{*rest}}\"\ntags = [\"x\"]\n"
    )
}

#[tokio::test]
async fn sessions_are_resolved_by_lookup_and_shared_per_role() {
    let o = origin().await;
    let p = Proxy::start(&o, &lookup_config("")).await;
    let a = p
        .get("/courses/")
        .header("cookie", "sessionid=teacher-1a; _ga=GA1")
        .send()
        .await;
    assert_eq!(a.x_cache(), "MISS");
    assert!(
        a.header("x-cache-key").contains(":teacher:1::"),
        "{}",
        a.header("x-cache-key")
    );
    let b = p.get("/courses/").header("cookie", "sessionid=teacher-1b").send().await;
    assert_eq!(b.x_cache(), "HIT", "Vary: Cookie is answered by identity keying");
    let lookups = o.hits_for("/api/whoami/");
    p.get("/courses/").header("cookie", "sessionid=teacher-1a").send().await;
    assert_eq!(o.hits_for("/api/whoami/"), lookups, "the mapping is cached");
    let s = p.get("/courses/").header("cookie", "sessionid=student-1").send().await;
    assert_eq!(s.x_cache(), "MISS");
    let seen = o.seen().into_iter().find(|s| s.path == "/api/whoami/").unwrap();
    assert_eq!(
        support::header(&seen.headers, "cookie"),
        "sessionid=teacher-1a",
        "only the session cookie is sent"
    );
    assert!(seen.headers.get("x-user-role").is_none());
}

#[tokio::test]
async fn failed_lookups_bypass_and_logged_out_sessions_are_anonymous() {
    let o = origin().await;
    let p = Proxy::start(&o, &lookup_config("")).await;
    p.get("/courses/").send().await;
    for bad in ["sessionid=unknown", "sessionid=garbage"] {
        let r = p.get("/courses/").header("cookie", bad).send().await;
        assert_eq!(
            r.header("cache-status"),
            "cachegate; fwd=bypass; detail=credentials",
            "{bad}"
        );
    }
    let out = p.get("/courses/").header("cookie", "sessionid=loggedout").send().await;
    assert_eq!(
        out.x_cache(),
        "HIT",
        "a 2xx lookup without a role is the anonymous role"
    );
    let csrf = p
        .get("/courses/")
        .header("cookie", "sessionid=teacher-1a; csrftoken=zzz")
        .send()
        .await;
    assert_eq!(csrf.x_cache(), "BYPASS", "a credential cookie no source reads bypasses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_one_lookup() {
    let o = origin().await;
    let p = Arc::new(Proxy::start(&o, &lookup_config("")).await);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move {
                p.get("/courses/")
                    .header("cookie", "sessionid=teacher-2")
                    .send()
                    .await
                    .status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(o.hits_for("/api/whoami/"), 1);
}

#[tokio::test]
async fn login_and_logout_writes_drop_the_mapping() {
    let o = origin().await;
    let p = Proxy::start(&o, &lookup_config(", reset_paths = [\"/accounts/logout/\"]")).await;
    p.get("/courses/").header("cookie", "sessionid=teacher-1a").send().await;
    let before = o.hits_for("/api/whoami/");
    p.req(Method::POST, "/accounts/logout/")
        .header("cookie", "sessionid=teacher-1a")
        .send()
        .await;
    p.get("/courses/").header("cookie", "sessionid=teacher-1a").send().await;
    assert_eq!(o.hits_for("/api/whoami/"), before + 1, "asked again after logout");
}

#[tokio::test]
async fn writer_tenant_from_session_scopes_the_purge() {
    let o = origin().await;
    let text = lookup_config("")
        .replace("tags = [\"x\"]", "tags = [\"courses\"]")
        .replace(
            "vary = [\"role\", \"tenant\"]",
            "vary = [\"role\", \"tenant\"]\ntags = [\"courses\"]",
        );
    let p = Proxy::start(&o, &text).await;
    for s in ["teacher-1a", "teacher-2"] {
        p.get("/courses/")
            .header("cookie", &format!("sessionid={s}"))
            .send()
            .await;
    }
    // The writer's session is known from its earlier read: its tenant scopes the purge.
    p.get("/courses/").header("cookie", "sessionid=teacher-1b").send().await;
    p.req(Method::POST, "/courses/")
        .header("cookie", "sessionid=teacher-1b")
        .send()
        .await;
    let t1 = p.get("/courses/").header("cookie", "sessionid=teacher-1a").send().await;
    let t2 = p.get("/courses/").header("cookie", "sessionid=teacher-2").send().await;
    assert_eq!((t1.x_cache().as_str(), t2.x_cache().as_str()), ("MISS", "HIT"));
    // A writer whose session was never looked up has no known tenant: every tenant is purged
    // (writes never wait for a lookup).
    p.req(Method::POST, "/courses/")
        .header("cookie", "sessionid=student-1")
        .send()
        .await;
    let t2 = p.get("/courses/").header("cookie", "sessionid=teacher-2").send().await;
    assert_eq!(t2.x_cache(), "MISS");
}

#[tokio::test]
async fn trusted_header_takes_precedence_over_a_valid_token() {
    let o = origin().await;
    let p = jwt_proxy(&o, "").await;
    let r = p
        .get("/courses/")
        .role("admin")
        .tenant("9")
        .header("authorization", &bearer(&hs(claims("student", 1, "x"))))
        .send()
        .await;
    assert!(
        r.header("x-cache-key").contains(":admin:9::"),
        "{}",
        r.header("x-cache-key")
    );
}

/// Interleaved traffic from many identities: nobody ever receives a body produced for an
/// identity the route varies on differently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_identities_never_cross() {
    let n = Arc::new(AtomicUsize::new(0));
    let o = Origin::start(move |r| {
        if r.path == "/api/whoami/" {
            let c = support::header(&r.headers, "cookie");
            let v = c.trim_start_matches("sessionid=");
            let (role, tenant, user) = {
                let mut it = v.split('-');
                (
                    it.next().unwrap().to_string(),
                    it.next().unwrap().to_string(),
                    it.next().unwrap().to_string(),
                )
            };
            return respond(
                200,
                &[],
                json!({ "role": role, "tenant": tenant, "user": user }).to_string(),
            );
        }
        let i = n.fetch_add(1, Ordering::SeqCst);
        respond(200, &[], format!("{} n={i}", r.path))
    })
    .await;
    let text = lookup_config("");
    let p = Arc::new(Proxy::start(&o, &text).await);
    let jwt = Arc::new(jwt_proxy(&o, "").await);
    // Record which identity each distinct body was produced for, per route.
    let owners = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<String, String>::new()));
    let mut tasks = Vec::new();
    for w in 0..12 {
        let (p, jwt, owners) = (p.clone(), jwt.clone(), owners.clone());
        tasks.push(tokio::spawn(async move {
            let mut crossed = 0;
            for i in 0..40 {
                let role = ["teacher", "student", "admin"][(w + i) % 3];
                let tenant = ["1", "2"][(w / 3 + i) % 2];
                let user = format!("u{}", (w + i) % 4);
                let (route, who) = if i % 2 == 0 {
                    ("/courses/", format!("{role}/{tenant}"))
                } else {
                    ("/me/", user.clone())
                };
                let r = if w % 2 == 0 {
                    p.get(route)
                        .header("cookie", &format!("sessionid={role}-{tenant}-{user}"))
                        .send()
                        .await
                } else {
                    let t = hs(json!({ "role": role, "org_id": tenant, "sub": user, "exp": now() + 600 }));
                    jwt.get(route).header("authorization", &bearer(&t)).send().await
                };
                let mut o = owners.lock().unwrap();
                let owner = o
                    .entry(format!("{}|{}", if w % 2 == 0 { "s" } else { "j" }, r.text()))
                    .or_insert_with(|| who.clone());
                if *owner != who {
                    crossed += 1;
                }
            }
            crossed
        }));
    }
    let mut crossed = 0;
    for t in tasks {
        crossed += t.await.unwrap();
    }
    let hits = owners.lock().unwrap().len();
    eprintln!(
        "interleaving: {} requests, {hits} distinct bodies, {crossed} served across identities",
        12 * 40
    );
    assert_eq!(crossed, 0, "responses served across identities");
    assert!(
        hits < 12 * 40,
        "entries were shared within an identity ({hits} distinct bodies)"
    );
}
