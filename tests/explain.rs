//! `POST /admin/explain` and `cachegate explain` against a real instance and origin: the
//! route, identity with its source, the key, the tiers, the bypass reason, and no secret in
//! the output.

mod support;

use cachegate::secrets::Secrets;
use http::Method;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{Origin, Proxy};

const TOKEN: &str = "explain-token";
const JWT_SECRET: &str = "explain-jwt-secret-value";
const SESSION: &str = "s3ss10n-v4lue-never-shown";

const ROUTES: &str = r#"
[identity]
jwt = { secret_env = "JWT_SECRET", algorithms = ["HS256"], cookie = "jwt", tenant_claim = "org" }
credential_cookies = ["sessionid"]

[[route]]
name = "home"
path = "/home/"
ttl = "10m"
public = true

[[route]]
name = "course_list"
path = "/courses/{id}/"
ttl = "10m"
tags = ["course:{id}"]

[[route]]
name = "dashboard"
path = "/dashboard/"
ttl = "10m"
vary = ["role", "user"]

[[invalidate]]
path = "/courses/{id}/"
tags = ["course:{id}"]
"#;

async fn start() -> (Origin, Proxy) {
    let origin = Origin::echo().await;
    let secrets = Secrets {
        purge_token: Some(TOKEN.into()),
        jwt_secret: Some(JWT_SECRET.into()),
        ..Default::default()
    };
    let proxy = Proxy::from_text_with(&support::config_text(&origin, ROUTES), secrets).await;
    (origin, proxy)
}

async fn explain(p: &Proxy, body: Value) -> Value {
    let r = p
        .admin_req(Method::POST, "/admin/explain")
        .header("authorization", &format!("Bearer {TOKEN}"))
        .body(body.to_string())
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

fn jwt(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_cached_public_route_is_a_fresh_memory_hit() {
    let (_origin, p) = start().await;
    let before = explain(&p, json!({ "url": "/home/" })).await;
    assert_eq!(before["result"], "miss", "{before}");
    assert_eq!(before["stored"]["memory"]["present"], false);
    assert_eq!(p.get("/home/").send().await.x_cache(), "MISS");
    let v = explain(&p, json!({ "url": "/home/?b=2&a=1" })).await;
    // The query is part of the key, sorted: this is another entry.
    assert_eq!(v["result"], "miss", "{v}");
    let v = explain(&p, json!({ "url": "http://example.test/home/" })).await;
    assert_eq!(v["route"]["name"], "home", "{v}");
    assert_eq!(v["route"]["public"], true);
    assert_eq!(v["result"], "hit", "{v}");
    assert_eq!(v["tier"], "memory");
    assert_eq!(v["served_from_cache"], true);
    assert_eq!(v["stored"]["memory"]["freshness"], "fresh");
    assert!(v["stored"]["memory"]["age_seconds"].is_u64());
    assert_eq!(v["stored"]["redis"]["configured"], false);
    assert_eq!(v["key"]["full"], "cachegate:home:/home/:::::", "{v}");
    assert!(v["scopes"].as_array().unwrap().iter().any(|s| s == "route:home"), "{v}");
    // Explaining changed nothing: the proxy still answers from memory, the origin saw one fill.
    assert_eq!(p.get("/home/").send().await.x_cache(), "HIT");
    p.advance(std::time::Duration::from_secs(11 * 60));
    let v = explain(&p, json!({ "url": "/home/" })).await;
    assert_eq!(v["result"], "miss", "{v}");
    assert_eq!(v["stored"]["memory"]["freshness"], "expired", "{v}");
}

#[tokio::test]
async fn a_route_varying_on_role_and_user_keys_the_headers_and_bypasses_without_a_user() {
    let (_origin, p) = start().await;
    let given = json!({
        "url": "/dashboard/",
        "headers": [["X-User-Role", "teacher"], ["X-User-Id", "42"]],
    });
    let v = explain(&p, given.clone()).await;
    assert_eq!(v["route"]["name"], "dashboard", "{v}");
    assert_eq!(v["route"]["vary"], json!(["role", "user"]));
    assert_eq!(v["identity"]["role"]["value"], "teacher", "{v}");
    assert_eq!(v["identity"]["role"]["source"], "trusted header");
    assert_eq!(v["identity"]["user"]["value"], "42");
    assert_eq!(v["key"]["full"], "cachegate:dashboard:/dashboard/::teacher::42:", "{v}");
    assert_eq!(v["result"], "miss");

    let without = json!({ "url": "/dashboard/", "headers": [["X-User-Role", "teacher"]] });
    let v = explain(&p, without).await;
    assert_eq!(v["result"], "bypass", "{v}");
    assert_eq!(v["bypass_reason"], "no-user");
    assert!(v["why"].as_str().unwrap().contains("varies on user"), "{v}");
    assert!(v["key"].is_null(), "a bypass has no key: {v}");

    // From a peer outside trust_headers_from the headers are dropped before identity reads them.
    let mut untrusted = given;
    untrusted["peer"] = json!("10.9.8.7");
    let v = explain(&p, untrusted).await;
    assert_eq!(v["request"]["trusted_peer"], false, "{v}");
    let dropped = v["request"]["dropped_headers"].as_array().unwrap();
    assert!(dropped.iter().any(|h| h == "x-user-role"), "{v}");
    assert_eq!(v["identity"]["role"]["value"], "anonymous");
    assert_eq!(v["bypass_reason"], "no-user");
}

#[tokio::test]
async fn a_write_is_forwarded_and_names_the_scopes_it_purges() {
    let (origin, p) = start().await;
    let v = explain(
        &p,
        json!({ "method": "POST", "url": "/courses/7/", "headers": [["X-Org-Id", "acme"]] }),
    )
    .await;
    assert_eq!(v["result"], "pass", "{v}");
    assert_eq!(v["served_from_cache"], false);
    assert!(v["why"].as_str().unwrap().contains("POST is a write"), "{v}");
    // The writer's tenant's entries with the tag, and tenant-less ones.
    assert_eq!(
        v["purges_on_success"],
        json!(["tag:course%3A7@acme", "tag:course%3A7@"]),
        "{v}"
    );
    assert_eq!(v["identity"]["tenant"]["source"], "trusted header");
    assert_eq!(origin.hits(), 0, "explain sends nothing to the origin");
}

#[tokio::test]
async fn a_missing_tenant_in_a_token_bypasses_and_says_why() {
    let (_origin, p) = start().await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let with = jwt(json!({ "role": "student", "org": "acme", "sub": "u1", "exp": exp }));
    let v = explain(&p, json!({ "url": "/courses/3/", "cookies": [format!("jwt={with}")] })).await;
    assert_eq!(v["identity"]["tenant"]["value"], "acme", "{v}");
    assert_eq!(v["identity"]["tenant"]["source"], "JWT claims");
    assert_eq!(v["identity"]["jwt"], "verified");
    assert_eq!(
        v["key"]["full"], "cachegate:course_list:/courses/3/::student:acme::",
        "{v}"
    );
    assert!(
        v["scopes"].as_array().unwrap().iter().any(|s| s == "tenant:acme"),
        "{v}"
    );
    assert_eq!(v["tags"], json!(["course:3"]));

    let without = jwt(json!({ "role": "student", "sub": "u1", "exp": exp }));
    let v = explain(
        &p,
        json!({ "url": "/courses/3/", "cookies": [format!("jwt={without}")] }),
    )
    .await;
    assert_eq!(v["result"], "bypass", "{v}");
    assert_eq!(v["bypass_reason"], "credentials");
    assert_eq!(v["identity"]["tenant"]["unresolved"], true, "{v}");
}

#[tokio::test]
async fn secrets_never_appear_in_the_output() {
    let (_origin, p) = start().await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jwt(json!({ "role": "student", "org": "acme", "sub": "u1", "exp": exp }));
    let bad = format!("{token}x");
    for body in [
        json!({ "url": "/courses/3/", "cookies": [format!("jwt={token}"), format!("sessionid={SESSION}")] }),
        json!({ "url": "/courses/3/", "headers": [["Authorization", format!("Bearer {bad}")]] }),
        json!({ "url": "/home/", "cookies": [format!("jwt={bad}")] }),
    ] {
        let v = explain(&p, body).await;
        let text = v.to_string();
        for secret in [token.as_str(), bad.as_str(), SESSION, JWT_SECRET, TOKEN] {
            assert!(!text.contains(secret), "a secret leaked into:\n{text}");
        }
        // Parts of a token would do as well: its signature is its last segment.
        let signature = token.rsplit('.').next().unwrap();
        assert!(!text.contains(signature), "{text}");
    }
    let v = explain(
        &p,
        json!({ "url": "/courses/3/", "cookies": [format!("jwt={token}"), format!("sessionid={SESSION}")] }),
    )
    .await;
    assert_eq!(v["request"]["cookies"], json!(["jwt", "sessionid"]), "{v}");
    assert_eq!(
        v["bypass_reason"], "credentials",
        "sessionid is a credential nothing resolves: {v}"
    );

    // The CLI prints the same, as text and as JSON.
    for json_flag in [false, true] {
        let admin = p.admin.to_string();
        let mut args = vec![
            "explain".to_string(),
            "/courses/3/".into(),
            "--admin".into(),
            admin,
            "--token".into(),
            TOKEN.into(),
            "--cookie".into(),
            format!("jwt={token}"),
            "--cookie".into(),
            format!("sessionid={SESSION}"),
            "-H".into(),
            "X-User-Role: teacher".into(),
        ];
        if json_flag {
            args.push("--json".into());
        }
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cachegate"))
            .args(&args)
            .env_remove("CACHEGATE_PURGE_TOKEN")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            stdout.contains("course_list") && stdout.contains("credentials"),
            "{stdout}"
        );
        assert!(!stdout.contains(&token) && !stdout.contains(SESSION), "{stdout}");
        if json_flag {
            let v: Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(v["bypass_reason"], "credentials");
        } else {
            assert!(stdout.starts_with("GET /courses/3/: BYPASS (credentials)"), "{stdout}");
        }
    }
}

#[tokio::test]
async fn explain_is_authenticated_and_refuses_bad_input_with_400() {
    let (_origin, p) = start().await;
    let r = p
        .admin_req(Method::POST, "/admin/explain")
        .body(json!({ "url": "/home/" }).to_string())
        .send()
        .await;
    assert_eq!(r.status, 401);
    for (body, words) in [
        (json!({ "url": "courses" }), "expected /path"),
        (json!({ "url": "/home/", "method": "G E T" }), "not an HTTP method"),
        (
            json!({ "url": "/home/", "headers": [["bad name", "x"]] }),
            "not a header name",
        ),
        (json!({ "url": "/home/", "cookies": ["novalue"] }), "name=value"),
        (json!({ "url": "/home/", "colour": 1 }), "unknown field"),
    ] {
        let r = p
            .admin_req(Method::POST, "/admin/explain")
            .header("authorization", &format!("Bearer {TOKEN}"))
            .body(body.to_string())
            .send()
            .await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(words), "{body}: {}", r.text());
    }
}
