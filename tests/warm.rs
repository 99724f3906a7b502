//! Cache warming on real running instances: `POST /admin/warm` per role × tenant, re-warming,
//! failures, authentication and validation, and the scheduled `[warm]` task.

mod support;

use std::path::Path;
use std::time::Duration;

use cachegate::secrets::Secrets;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::{eventually, respond, Origin, Proxy};

const TOKEN: &str = "warm-token";

const ROUTES: &str = r#"
[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
tags = ["courses"]

[[route]]
name = "broken"
path = "/broken/"
ttl = "10m"
"#;

/// An origin answering 500 on `/broken/` and echoing everything else.
async fn origin() -> Origin {
    Origin::start(|r| {
        if r.path == "/broken/" {
            return respond(500, &[], "boom");
        }
        let role = support::header(&r.headers, "x-user-role");
        let tenant = support::header(&r.headers, "x-org-id");
        respond(
            200,
            &[],
            format!("{} {:?} role={role} tenant={tenant}", r.path, r.query),
        )
    })
    .await
}

fn secrets() -> Secrets {
    Secrets {
        purge_token: Some(TOKEN.into()),
        ..Default::default()
    }
}

async fn instance(origin: &Origin, extra: &str) -> Proxy {
    Proxy::from_text_with(&support::config_text(origin, &format!("{extra}{ROUTES}")), secrets()).await
}

async fn warm(p: &Proxy, body: Value, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = p.admin_req(Method::POST, "/admin/warm").body(body.to_string());
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    let resp = req.send().await;
    let v = serde_json::from_slice(&resp.body).unwrap_or_else(|_| panic!("JSON answer: {}", resp.text()));
    (resp.status, v)
}

#[tokio::test]
async fn admin_warm_fills_every_role_and_tenant() {
    let origin = origin().await;
    let p = instance(&origin, "").await;
    let body =
        json!({"paths": ["/courses/", "/courses/?page=2"], "roles": ["teacher", "student"], "tenants": ["1", "2"]});
    let (status, v) = warm(&p, body, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"warmed": 8, "already_cached": 0, "failed": 0, "failures": []})
    );
    assert_eq!(origin.hits(), 8);
    let seen: Vec<_> = origin
        .seen()
        .iter()
        .map(|s| support::header(&s.headers, "x-user-role"))
        .collect();
    assert_eq!(seen.iter().filter(|r| *r == "teacher").count(), 4, "{seen:?}");
    for path in ["/courses/", "/courses/?page=2"] {
        for role in ["teacher", "student"] {
            for tenant in ["1", "2"] {
                let r = p.get(path).role(role).tenant(tenant).send().await;
                assert_eq!(r.x_cache(), "HIT", "{path} {role} {tenant}");
                assert!(
                    r.text().contains(&format!("role={role} tenant={tenant}")),
                    "{}",
                    r.text()
                );
            }
        }
    }
    assert_eq!(origin.hits(), 8, "every warmed variant is served from the cache");
    assert_eq!(
        p.get("/courses/").role("admin").tenant("1").send().await.x_cache(),
        "MISS"
    );
}

#[tokio::test]
async fn anonymous_warm_and_rewarming_reports_already_cached() {
    let origin = origin().await;
    let p = instance(&origin, "").await;
    let (_, first) = warm(&p, json!({"paths": ["/courses/"]}), Some(TOKEN)).await;
    assert_eq!(first["warmed"], 1, "{first}");
    let (status, again) = warm(&p, json!({"paths": ["/courses/"], "concurrency": 1}), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again,
        json!({"warmed": 0, "already_cached": 1, "failed": 0, "failures": []})
    );
    assert_eq!(origin.hits(), 1);
    let anon = p.get("/courses/").send().await;
    assert_eq!(anon.x_cache(), "HIT");
    assert!(anon.text().contains("role=- tenant=-"), "{}", anon.text());
}

#[tokio::test]
async fn failures_are_reported_with_their_status() {
    let origin = origin().await;
    let p = instance(&origin, "").await;
    let body = json!({"paths": ["/broken/", "/courses/", "/nowhere/"], "roles": ["teacher"]});
    let (status, v) = warm(&p, body, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!((v["warmed"].as_u64(), v["failed"].as_u64()), (Some(1), Some(2)), "{v}");
    let failures = v["failures"].as_array().unwrap();
    let broken = failures
        .iter()
        .find(|f| f["path"] == "/broken/")
        .expect("/broken/ listed");
    assert_eq!(broken["status"], 500);
    assert_eq!(broken["role"], "teacher");
    assert_eq!(broken["tenant"], Value::Null);
    let nowhere = failures
        .iter()
        .find(|f| f["path"] == "/nowhere/")
        .expect("/nowhere/ listed");
    assert!(
        nowhere["error"].as_str().unwrap().contains("BYPASS (no-route)"),
        "{nowhere}"
    );
}

#[tokio::test]
async fn warming_needs_the_purge_token() {
    let origin = origin().await;
    let p = instance(&origin, "").await;
    let (status, v) = warm(&p, json!({"paths": ["/courses/"]}), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    let (status, _) = warm(&p, json!({"paths": ["/courses/"]}), Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(origin.hits(), 0, "nothing warmed without credentials");
    let disabled = Proxy::start(&origin, ROUTES).await;
    let (status, v) = warm(&disabled, json!({"paths": ["/courses/"]}), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(v["error"].as_str().unwrap().contains("token_env"), "{v}");
}

#[tokio::test]
async fn malformed_bodies_are_refused_with_a_message() {
    let origin = origin().await;
    let p = instance(&origin, "").await;
    let cases = [
        (json!({"paths": "/courses/"}), "invalid warm body"),
        (json!({"paths": []}), "between 1 and 10000 paths"),
        (json!({"paths": ["courses/"]}), "starting with '/'"),
        (json!({"paths": ["/courses/"], "colour": 1}), "unknown field"),
        (json!({"paths": ["/courses/"], "concurrency": 65}), "concurrency 65"),
        (json!({"paths": ["/courses/"], "roles": [""]}), "non-empty name"),
    ];
    for (body, expected) in cases {
        let (status, v) = warm(&p, body.clone(), Some(TOKEN)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(expected), "{body}: {v}");
    }
    let many: Vec<String> = (0..10_001).map(|i| format!("/courses/?page={i}")).collect();
    let (status, _) = warm(&p, json!({ "paths": many }), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn identities_are_refused_when_loopback_is_not_trusted() {
    let origin = origin().await;
    let p = instance(&origin, "[identity]\ntrust_headers_from = [\"10.0.0.0/8\"]\n").await;
    let (status, v) = warm(&p, json!({"paths": ["/courses/"], "roles": ["teacher"]}), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("trust_headers_from"), "{v}");
    let (status, v) = warm(&p, json!({"paths": ["/courses/"]}), Some(TOKEN)).await;
    assert_eq!(
        (status, v["warmed"].as_u64()),
        (StatusCode::OK, Some(1)),
        "anonymous warming works"
    );
    let text = support::config_text(
        &origin,
        &format!("[identity]\ntrust_headers_from = [\"10.0.0.0/8\"]\n[warm]\ninterval = \"1h\"\npaths = [\"/courses/\"]\ntenants = [\"1\"]\n{ROUTES}"),
    );
    let config = cachegate::config::from_str(&text, Path::new("t.toml")).unwrap();
    let err = cachegate::app::start_with(config, secrets())
        .await
        .err()
        .expect("refused at start");
    assert_eq!(err.exit_code(), 64, "a config error");
    assert!(err.to_string().contains("[warm]"), "{err}");
}

#[tokio::test]
async fn scheduled_warming_fires_and_stops_on_shutdown() {
    let origin = origin().await;
    let warm = "[warm]\ninterval = \"200ms\"\npaths = [\"/courses/\"]\nroles = [\"teacher\"]\ntenants = [\"7\"]\nconcurrency = 2\n";
    let mut p = instance(&origin, warm).await;
    assert!(
        eventually(Duration::from_secs(10), || origin.hits_for("/courses/") >= 1).await,
        "the scheduled warm never reached the origin"
    );
    let seen = origin.last();
    assert_eq!(support::header(&seen.headers, "x-user-role"), "teacher");
    assert_eq!(support::header(&seen.headers, "x-org-id"), "7");
    assert_eq!(
        p.get("/courses/").role("teacher").tenant("7").send().await.x_cache(),
        "HIT"
    );
    let running = p.running.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), running.shutdown())
        .await
        .expect("shutdown is not held up by the warm task");
}

#[test]
fn warm_section_errors_name_line_and_key() {
    let text = "[origin]\nurl = \"http://127.0.0.1:8000\"\n[warm]\ninterval = \"0s\"\npaths = [\"courses/\"]\nconcurrency = 100\ncolour = 1\n";
    let err = cachegate::config::from_str(text, Path::new("w.toml"))
        .unwrap_err()
        .to_string();
    for expected in [
        "w.toml:4: warm.interval: expected a duration above zero",
        "w.toml:5: warm.paths[0]: expected a path starting with '/'",
        "w.toml:6: warm.concurrency: expected a whole number from 1 to 64",
        "w.toml:7: warm.colour: unknown key",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let missing = cachegate::config::from_str(
        "[origin]\nurl = \"http://127.0.0.1:8000\"\n[warm]\n",
        Path::new("w.toml"),
    );
    let err = missing.unwrap_err().to_string();
    assert!(
        err.contains("warm.interval: missing key") && err.contains("warm.paths: missing key"),
        "{err}"
    );
    let ok = "[origin]\nurl = \"http://127.0.0.1:8000\"\n[warm]\ninterval = \"5m\"\npaths = [\"/courses/\"]\n";
    let w = cachegate::config::from_str(ok, Path::new("w.toml"))
        .unwrap()
        .warm
        .unwrap();
    assert_eq!(
        (w.interval, w.concurrency, w.roles.len()),
        (Duration::from_secs(300), 8, 0)
    );
}
