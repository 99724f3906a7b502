//! The status page in a real headless Chromium, its access rule, and purge receipts across two
//! instances sharing a real Redis.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use support::{Origin, Proxy, RedisServer};

const ROUTES: &str = r#"
[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
tags = ["courses"]

[[route]]
name = "lecture"
path = "/lectures/{id}/"
ttl = "10m"
tags = ["lecture:{id}"]

[[invalidate]]
path = "/courses/{*rest}"
tags = ["courses"]
"#;

const TOKEN: &str = "purge-s3cret";

fn secrets() -> cachegate::secrets::Secrets {
    cachegate::secrets::Secrets {
        purge_token: Some(TOKEN.into()),
        ..Default::default()
    }
}

fn config(origin: &Origin, redis: &RedisServer) -> String {
    support::config_text(origin, &format!("{}{ROUTES}", support::redis_cache(redis, "status:v1")))
}

async fn purge(p: &Proxy, body: &str) -> serde_json::Value {
    let r = p
        .admin_req(Method::POST, "/purge")
        .header("authorization", &format!("Bearer {TOKEN}"))
        .body(body.to_string())
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// Runs Chromium headless on `url` with `args`, killing it by pid if it has not finished
/// within a minute; returns its stdout.
async fn chromium(dir: &Path, url: &str, args: &[&str]) -> String {
    let bin = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect(
            "chromium is needed for the status page test and is not installed: apt-get install -y --no-install-recommends chromium (scripts/test.sh does it)",
        );
    let profile = tempfile::tempdir_in(dir).unwrap();
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium failed: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60s on {url}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.join().unwrap()
}

/// The start tag of the first element carrying `marker` (e.g. `data-route="lecture"`).
fn tag<'a>(dom: &'a str, marker: &str) -> &'a str {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in the page:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    &dom[start..=end]
}

/// The value of attribute `name` in start tag `tag`.
fn attr(tag: &str, name: &str) -> String {
    let key = format!(" {name}=\"");
    let at = tag.find(&key).unwrap_or_else(|| panic!("no {name} in {tag}")) + key.len();
    tag[at..at + tag[at..].find('"').unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_chromium_shows_what_admin_stats_says() {
    let redis = RedisServer::start().await;
    let (origin, _) = support::versioned_origin().await;
    let text = config(&origin, &redis);
    let a = Proxy::from_text_with(&text, secrets()).await;
    let b = Proxy::from_text_with(&text, secrets()).await;
    a.wait_shared().await;
    b.wait_shared().await;
    // Misses, hits, a bypass (a request for several ranges), a write's purge and a webhook purge.
    a.get("/courses/").send().await;
    for _ in 0..4 {
        a.get("/courses/").send().await;
    }
    a.get("/lectures/1/").send().await;
    a.get("/lectures/1/").send().await;
    let ranged = a.get("/lectures/1/").header("range", "bytes=0-1, 3-4").send().await;
    assert_eq!(ranged.header("x-cache"), "BYPASS");
    a.req(Method::POST, "/courses/").send().await;
    a.get("/courses/").send().await;
    let receipt = purge(&a, r#"{"tags": ["lecture:1"]}"#).await;
    assert_eq!(
        (receipt["acked"].as_u64(), receipt["instances"].as_u64()),
        (Some(2), Some(2))
    );

    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", a.admin);
    let dom = chromium(dir.path(), &url, &["--dump-dom"]).await;
    let shot = dir.path().join("status.png");
    let shot_arg = format!("--screenshot={}", shot.display());
    chromium(dir.path(), &url, &[&shot_arg, "--window-size=1200,1000"]).await;
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "the screenshot is a PNG");
    assert!(png.len() > 10_000, "the screenshot has content ({} bytes)", png.len());
    if let Ok(path) = std::env::var("CACHEGATE_STATUS_SCREENSHOT") {
        std::fs::copy(&shot, path).unwrap();
    }

    let stats = a.admin_get("/admin/stats").send().await;
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    let routes = stats["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2);
    for r in routes {
        let name = r["route"].as_str().unwrap();
        let row = tag(&dom, &format!("data-route=\"{name}\" data-hits"));
        for (page, json) in [
            ("data-hits", "hits"),
            ("data-misses", "misses"),
            ("data-bypasses", "bypasses"),
        ] {
            assert_eq!(attr(row, page), r[json].to_string(), "{name}: {page} vs {json}");
        }
        let ratio = r["hit_ratio"]
            .as_f64()
            .filter(|_| r["hits"].as_u64().unwrap() + r["misses"].as_u64().unwrap() > 0);
        assert_eq!(
            attr(row, "data-ratio"),
            ratio.map_or_else(String::new, |v| format!("{v:.4}")),
            "{name}: ratio"
        );
    }
    // The figures themselves, not only their agreement.
    let courses = tag(&dom, "data-route=\"course_list\" data-hits");
    assert_eq!(
        (attr(courses, "data-memory"), attr(courses, "data-misses")),
        ("4".into(), "2".into()),
        "four memory hits; a miss before and after the write"
    );
    let lecture = tag(&dom, "data-route=\"lecture\" data-hits");
    assert_eq!(attr(lecture, "data-bypasses"), "1");
    let bypass = tag(&dom, "class=\"bypass\" data-route=\"lecture\"");
    assert_eq!(
        (attr(bypass, "data-reason"), attr(bypass, "data-count")),
        ("range".into(), "1".into())
    );
    // Both purges, newest first, each applied by both instances.
    let list = tag(&dom, "id=\"purge-list\"");
    assert_eq!(attr(list, "data-count"), "2");
    let newest = tag(&dom, "class=\"purge\"");
    assert_eq!(attr(newest, "data-trigger"), "webhook");
    assert_eq!(
        (attr(newest, "data-acked"), attr(newest, "data-instances")),
        ("2".into(), "2".into())
    );
    assert!(dom.contains("data-trigger=\"write\""), "the write's purge is listed");
    // B acknowledged A's purges, so A lists it with its last ack.
    let peer = tag(&dom, "class=\"peer\"");
    assert!(!attr(peer, "data-last-ack").is_empty(), "{peer}");
    assert_eq!(attr(tag(&dom, "id=\"redis\""), "data-state"), "up");
    assert_eq!(
        attr(tag(&dom, "id=\"memory\""), "data-entries"),
        stats["memory"]["entries"].to_string()
    );
    assert!(
        dom.contains("<svg id=\"spark-rate\""),
        "the request-rate sparkline is drawn"
    );
    assert!(!dom.contains("<script"), "the page runs no script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_receipts_count_both_instances_and_time_the_propagation() {
    let redis = RedisServer::start().await;
    let (origin, _) = support::versioned_origin().await;
    let text = config(&origin, &redis);
    let a = Proxy::from_text_with(&text, secrets()).await;
    let b = Proxy::from_text_with(&text, secrets()).await;
    a.wait_shared().await;
    b.wait_shared().await;
    let v = purge(&a, r#"{"tags": ["courses"]}"#).await;
    assert_eq!(v["purged"], 1);
    assert_eq!(v["shared"], true);
    assert_eq!(v["instances_acked"], 1, "the existing field keeps counting the others");
    assert_eq!((v["acked"].as_u64(), v["instances"].as_u64()), (Some(2), Some(2)));
    let took = v["propagation_seconds"].as_f64().unwrap();
    assert!(took > 0.0, "{v}");
    let metrics = a.admin_get("/metrics").send().await.text();
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cachegate_purge_propagation_seconds_count "))
        .expect("the histogram is exported");
    assert_eq!(count.trim(), "1");
    // B never published a purge: nothing observed there.
    let b_metrics = b.admin_get("/metrics").send().await.text();
    assert!(b_metrics.contains("cachegate_purge_propagation_seconds_count 0"));
}

#[tokio::test]
async fn an_admin_token_guards_the_page_stats_and_metrics_but_not_the_probes() {
    let origin = Origin::echo().await;
    let text = support::config_text(&origin, &format!("[admin]\ntoken_env = \"UNUSED_IN_TESTS\"\n{ROUTES}"));
    let secrets = cachegate::secrets::Secrets {
        purge_token: Some(TOKEN.into()),
        admin_token: Some("admin-s3cret".into()),
        ..Default::default()
    };
    let p = Proxy::from_text_with(&text, secrets).await;
    for path in ["/", "/admin/stats", "/metrics"] {
        let none = p.admin_get(path).send().await;
        assert_eq!(none.status, 401, "{path} without a token");
        assert!(none.text().contains("Authorization: Bearer"), "{}", none.text());
        let wrong = p.admin_get(path).header("authorization", "Bearer nope").send().await;
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
        for token in ["admin-s3cret", TOKEN] {
            let ok = p
                .admin_get(path)
                .header("authorization", &format!("Bearer {token}"))
                .send()
                .await;
            assert_eq!(ok.status, 200, "{path} with {token}");
        }
    }
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(p.admin_get(probe).send().await.status, 200, "{probe} stays open");
    }
    let page = p
        .admin_get("/")
        .header("authorization", "Bearer admin-s3cret")
        .send()
        .await;
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert!(page.text().contains("data-route=\"course_list\""));
}

#[tokio::test]
async fn a_loopback_admin_listener_without_a_token_is_open() {
    let origin = Origin::echo().await;
    let p = Proxy::start(&origin, ROUTES).await;
    let page = p.admin_get("/").send().await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<meta name=\"viewport\""));
    assert_eq!(p.admin_get("/admin/stats").send().await.status, 200);
}

#[tokio::test]
async fn a_non_loopback_admin_listener_without_credentials_does_not_start() {
    let origin = Origin::echo().await;
    // Refused before anything is bound, so no port other than loopback is ever opened.
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"0.0.0.0:0\"\n[origin]\nurl = \"{}\"\n",
        origin.url()
    );
    let config = cachegate::config::from_str(&text, Path::new("proxy.toml")).unwrap();
    let err = match cachegate::app::start_with(config, Default::default()).await {
        Ok(_) => panic!("started with an open non-loopback admin listener"),
        Err(e) => e,
    };
    assert_eq!(err.exit_code(), 64);
    let msg = err.to_string();
    assert!(
        msg.contains("proxy.toml: [server] admin_listen = 0.0.0.0:0 is not a loopback address"),
        "{msg}"
    );
    assert!(msg.contains("[admin] open = true"), "{msg}");
}

#[test]
fn the_binary_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"0.0.0.0:0\"\n[origin]\nurl = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cachegate"))
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("CACHEGATE_PURGE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a loopback address"), "{stderr}");
}

#[test]
fn start_up_says_which_access_rule_applies() {
    let bin = support::Binary::start(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n[origin]\nurl = \"http://127.0.0.1:1\"\n",
    );
    assert!(
        bin.startup_log
            .iter()
            .any(|l| l.contains("/admin/stats and /metrics open (loopback admin_listen)")),
        "{:#?}",
        bin.startup_log
    );
}
