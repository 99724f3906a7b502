//! Config hot reload (SIGHUP and `POST /admin/reload`) and graceful shutdown with requests in
//! flight.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cachegate::secrets::Secrets;
use http::Method;
use support::{respond, Binary, Origin, Proxy};

fn config(origin: &Origin, listen: &str, routes: &str) -> String {
    format!(
        "[server]\n{listen}\n[origin]\nurl = \"{}\"\n[purge]\ntoken_env = \"T\"\n{routes}",
        origin.url()
    )
}

const LOCAL: &str = "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"";
const A: &str = "[[route]]\nname = \"a\"\npath = \"/a/\"\nttl = \"10m\"\n";
const B: &str = "[[route]]\nname = \"b\"\npath = \"/b/\"\nttl = \"10m\"\n";

async fn start_from_file(path: &std::path::Path) -> Proxy {
    let config = cachegate::config::load(path).unwrap();
    let secrets = Secrets {
        purge_token: Some("tok".into()),
        ..Default::default()
    };
    Proxy::from_running(cachegate::app::start_with(config, secrets).await.unwrap())
}

async fn reloads(p: &Proxy, result: &str) -> String {
    let metrics = p.admin_get("/metrics").send().await.text();
    let prefix = format!("cachegate_config_reloads_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .unwrap_or_else(|| "0".into())
}

#[tokio::test]
async fn reload_swaps_routes_and_a_bad_file_keeps_the_old_config() {
    let origin = Origin::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(&origin, LOCAL, A)).unwrap();
    let p = start_from_file(&path).await;
    p.get("/a/").send().await;
    assert_eq!(p.get("/a/").send().await.x_cache(), "HIT");
    assert_eq!(
        p.get("/b/").send().await.header("cache-status"),
        "cachegate; fwd=bypass; detail=no-route"
    );

    std::fs::write(&path, config(&origin, LOCAL, &format!("{A}{B}"))).unwrap();
    let msg = p.running().reloader.reload().await.unwrap();
    assert!(msg.contains("2 routes"), "{msg}");
    p.get("/b/").send().await;
    assert_eq!(p.get("/b/").send().await.x_cache(), "HIT", "the new route is live");
    assert_eq!(
        p.get("/a/").send().await.x_cache(),
        "HIT",
        "the cache survives a reload"
    );
    assert_eq!(reloads(&p, "ok").await, "1");

    std::fs::write(
        &path,
        config(
            &origin,
            LOCAL,
            &format!("{A}{B}[[route]]\nname = \"c\"\npath = \"c/\"\n"),
        ),
    )
    .unwrap();
    let err = p.running().reloader.reload().await.unwrap_err().to_string();
    assert!(
        err.contains("proxy.toml:") && err.contains("route \"c\" (route[2]).path"),
        "{err}"
    );
    assert_eq!(
        p.get("/b/").send().await.x_cache(),
        "HIT",
        "still running the previous config"
    );
    assert_eq!(reloads(&p, "error").await, "1");

    let restart = config(&origin, "listen = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:0\"", A);
    std::fs::write(&path, restart).unwrap();
    let err = p.running().reloader.reload().await.unwrap_err().to_string();
    assert!(err.contains("only change with a restart"), "{err}");
    assert_eq!(p.get("/b/").send().await.x_cache(), "HIT");
}

#[tokio::test]
async fn admin_reload_needs_the_token() {
    let origin = Origin::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(&origin, LOCAL, A)).unwrap();
    let p = start_from_file(&path).await;
    let r = p.admin_req(Method::POST, "/admin/reload").send().await;
    assert_eq!(r.status, 401);
    std::fs::write(&path, config(&origin, LOCAL, &format!("{A}{B}"))).unwrap();
    let r = p
        .admin_req(Method::POST, "/admin/reload")
        .header("authorization", "Bearer tok")
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["reloaded"], true);
    std::fs::write(&path, "[server\n").unwrap();
    let r = p
        .admin_req(Method::POST, "/admin/reload")
        .header("authorization", "Bearer tok")
        .send()
        .await;
    assert_eq!(r.status, 422);
    assert!(r.text().contains("invalid TOML"), "{}", r.text());
}

/// A refused reload (422) names the restart-only keys that changed, each with file:line, and nothing else.
#[tokio::test]
async fn refused_reload_names_only_the_changed_restart_only_keys_with_their_lines() {
    let origin = Origin::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(&origin, LOCAL, A)).unwrap();
    let p = start_from_file(&path).await;
    let changed = config(
        &origin,
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nclient_timeout = \"7s\"",
        &format!("[cache]\nmemory_ttl = \"2m\"\n{A}"),
    );
    std::fs::write(&path, &changed).unwrap();
    let r = p
        .admin_req(Method::POST, "/admin/reload")
        .header("authorization", "Bearer tok")
        .send()
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let file = path.display().to_string();
    let line = |key: &str| changed.lines().position(|l| l.starts_with(key)).unwrap() + 1;
    assert_eq!(line("client_timeout"), 4);
    assert_eq!(
        v["restart_only"],
        serde_json::json!([
            format!("{file}:4: server.client_timeout"),
            format!("{file}:{}: cache.memory_ttl", line("memory_ttl")),
        ]),
        "{v}"
    );
    let error = v["error"].as_str().unwrap();
    assert!(
        !error.contains("server.listen") && !error.contains("redis_url"),
        "{error}"
    );
}

/// The real binary: SIGHUP reloads; a bad file on SIGHUP is logged and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary() {
    let origin = Origin::echo().await;
    let listen = "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"";
    let bin = Binary::start(&config(&origin, listen, A));
    let path = bin.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}{B}")).unwrap();
    bin.signal("HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        bin.get("/b/").await;
        if bin.get("/b/").await.x_cache() == "HIT" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not load the new route"
        );
    }
    std::fs::write(&path, format!("{text}{B}[[route]]\nname = 7\n")).unwrap();
    bin.signal("HUP");
    let line = bin
        .log
        .recv_timeout(Duration::from_secs(20))
        .expect("a log line about the refused reload");
    let mut seen = line;
    while !seen.contains("config reload refused") {
        seen = bin
            .log
            .recv_timeout(Duration::from_secs(20))
            .expect("a log line about the refused reload");
    }
    assert_eq!(
        bin.get("/b/").await.x_cache(),
        "HIT",
        "the previous config keeps running"
    );
}

/// SIGTERM: stop accepting, let the request in flight finish, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let origin = Origin::start_async(move |_| {
        let g = g.clone();
        async move {
            g.acquire().await.unwrap().forget();
            respond(200, &[], "finished")
        }
    })
    .await;
    let listen = "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"";
    let mut bin = Binary::start(&config(&origin, listen, A));
    let port = bin.port;
    let in_flight = tokio::spawn(async move {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<bytes::Bytes>>();
        let req = http::Request::get(format!("http://127.0.0.1:{port}/slow"))
            .body(Default::default())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, body)
    });
    assert!(
        support::eventually(Duration::from_secs(10), || origin.hits() == 1).await,
        "request in flight"
    );
    bin.signal("TERM");
    let seen = loop {
        let line = bin
            .log
            .recv_timeout(Duration::from_secs(20))
            .expect("shutdown is logged");
        if line.contains("shutting down") {
            break line;
        }
    };
    assert!(seen.contains("draining"));
    gate.add_permits(1);
    let (status, body) = in_flight.await.unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"finished"[..]));
    let exit = tokio::task::spawn_blocking(move || bin.child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
