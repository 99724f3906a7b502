//! A real Prometheus scraping cachegate's admin listener: after a known workload the hit ratio
//! PromQL gives exactly the expected figure, overall and per route, and every query of the
//! Grafana dashboard is valid PromQL. Also checks the example scrape configs under deploy/.

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;
use support::{Origin, Proxy};

const ROUTES: &str = r#"
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
"#;

const DASHBOARD: &str = include_str!("../grafana/dashboards/cachegate.json");

const INSTALL: &str = "install it with `apt-get install -y prometheus` (scripts/test.sh does)";

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

/// A `prometheus` server scraping one target every second, with its data and log in a
/// temporary directory; killed when dropped (also when a test panics).
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of an instant vector: its labels and value.
type Sample = (BTreeMap<String, String>, f64);

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: cachegate\n    metrics_path: /metrics\n    \
                 scrape_interval: 1s\n    scrape_timeout: 1s\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let data = dir.path().join("data");
        let log = File::create(dir.path().join("prometheus.log")).expect("create the log file");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => panic!("the `prometheus` binary is not installed: {INSTALL}"),
                _ => panic!("cannot start prometheus: {e}"),
            });
        Prometheus {
            child,
            port,
            dir,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Panics with the log if the server has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited ({status}):\n{}", self.log());
        }
    }

    /// `GET /api/v1/query`: the JSON answer and its HTTP status, or `None` while the server
    /// does not answer yet.
    async fn get(&self, query: &str) -> Option<(u16, Value)> {
        let uri = format!(
            "http://127.0.0.1:{}/api/v1/query?query={}",
            self.port,
            utf8_percent_encode(query, NON_ALPHANUMERIC)
        );
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.get(uri.parse().unwrap()))
            .await
            .ok()?
            .ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        if status == 503 {
            // Still starting (replaying its write-ahead log): not up yet.
            return None;
        }
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("Prometheus answered {query:?} with non-JSON ({e}): {body:?}"));
        Some((status, json))
    }

    /// The instant vector `query` evaluates to now (`None` while Prometheus is not up).
    async fn query(&self, query: &str) -> Option<Vec<Sample>> {
        let (status, json) = self.get(query).await?;
        assert!(
            status == 200 && json["status"] == "success",
            "query {query:?} failed ({status}): {json}"
        );
        assert_eq!(json["data"]["resultType"], "vector", "{query}: {json}");
        let samples = json["data"]["result"]
            .as_array()
            .expect("a result array")
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .expect("metric labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let value = r["value"][1]
                    .as_str()
                    .expect("a value string")
                    .parse()
                    .expect("a number");
                (labels, value)
            })
            .collect();
        Some(samples)
    }

    /// Polls `query` until it returns at least one sample (deadline 60 s).
    async fn wait_for(&mut self, query: &str) -> Vec<Sample> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            self.assert_running();
            if let Some(samples) = self.query(query).await {
                if !samples.is_empty() {
                    return samples;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no result for {query:?} within 60s; prometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every target expression of the Grafana dashboard, with its panel title.
fn dashboard_exprs() -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is valid JSON");
    let mut panels: Vec<&Value> = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        panels.push(p);
        panels.extend(p.get("panels").and_then(Value::as_array).into_iter().flatten());
    }
    panels
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p.get("targets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_string())))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_computes_the_hit_ratio_of_a_known_workload() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, ROUTES).await;
    // Per route: one miss, then nine hits for the same identity.
    for path in ["/courses/", "/students/"] {
        for i in 0..10 {
            let r = proxy.get(path).role("teacher").tenant("1").send().await;
            assert_eq!(r.status, 200);
            assert_eq!(r.x_cache(), if i == 0 { "MISS" } else { "HIT" }, "{path} request {i}");
        }
        assert_eq!(origin.hits_for(path), 1);
    }

    let mut prom = Prometheus::start(proxy.admin);

    let overall = r#"sum(cachegate_cache_lookups_total{result="hit"}) / sum(cachegate_cache_lookups_total)"#;
    let samples = prom.wait_for(overall).await;
    assert_eq!(samples.len(), 1, "{samples:?}");
    let ratio = samples[0].1;
    println!("prometheus: {overall} = {ratio}");
    assert!((ratio - 0.9).abs() < 1e-9, "overall hit ratio {ratio}, expected 0.9");

    let per_route = r#"sum by (route) (cachegate_cache_lookups_total{result="hit"}) / sum by (route) (cachegate_cache_lookups_total)"#;
    let samples = prom.wait_for(per_route).await;
    let by_route: BTreeMap<&str, f64> = samples.iter().map(|(l, v)| (l["route"].as_str(), *v)).collect();
    println!("prometheus: {per_route} = {by_route:?}");
    assert_eq!(
        by_route.keys().copied().collect::<Vec<_>>(),
        ["course_list", "student_list"],
        "{samples:?}"
    );
    for (route, ratio) in &by_route {
        assert!((ratio - 0.9).abs() < 1e-9, "{route}: hit ratio {ratio}, expected 0.9");
    }

    let up = prom.wait_for(r#"up{job="cachegate"}"#).await;
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].1, 1.0, "the scrape of {} failed: {up:?}", proxy.admin);
    assert_eq!(up[0].0["instance"], proxy.admin.to_string());

    // Every query of the Grafana dashboard parses and evaluates (the template variable as "All").
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{exprs:?}");
    for (panel, expr) in exprs {
        let q = expr.replace("$route", ".*");
        let (status, json) = prom.get(&q).await.expect("prometheus answers");
        assert!(
            status == 200 && json["status"] == "success",
            "panel {panel:?}: Prometheus rejects {q}: {json}"
        );
    }
}

/// The repository's deploy/ directory.
fn deploy_file(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

#[test]
fn example_scrape_configs_are_valid() {
    for name in ["prometheus.yml", "prometheus-compose.yml"] {
        let path = deploy_file(name);
        let out = Command::new("promtool")
            .args(["check", "config"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => panic!("promtool is not installed: {INSTALL}"),
                _ => panic!("cannot run promtool: {e}"),
            });
        assert!(
            out.status.success(),
            "promtool check config {}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let example = std::fs::read_to_string(deploy_file("prometheus.yml")).unwrap();
    for line in [
        "job_name: cachegate",
        "metrics_path: /metrics",
        "scrape_interval: 15s",
        "targets: [\"127.0.0.1:9091\"]",
    ] {
        assert!(example.contains(line), "deploy/prometheus.yml lacks `{line}`");
    }
    let compose_scrape = std::fs::read_to_string(deploy_file("prometheus-compose.yml")).unwrap();
    assert!(compose_scrape.contains("targets: [\"cachegate:9091\"]"));
}

#[test]
fn compose_mounts_exist() {
    let compose = std::fs::read_to_string(deploy_file("docker-compose.yml")).unwrap();
    let deploy = deploy_file("");
    let mut mounts = 0;
    for line in compose.lines().map(str::trim) {
        let Some(volume) = line.strip_prefix("- ") else {
            continue;
        };
        let host = volume.split(':').next().unwrap_or_default();
        if host.starts_with("./") || host.starts_with("../") {
            assert!(
                deploy.join(host).exists(),
                "docker-compose.yml mounts {host}, which does not exist"
            );
            mounts += 1;
        }
    }
    assert_eq!(
        mounts, 4,
        "proxy.toml, the scrape config, Grafana provisioning and dashboards"
    );
    assert!(deploy.join("Dockerfile").exists());
    let provider = std::fs::read_to_string(deploy.join("../grafana/provisioning/dashboards/cachegate.yml")).unwrap();
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    assert!(compose.contains("../grafana/dashboards:/var/lib/grafana/dashboards"));
    let datasource =
        std::fs::read_to_string(deploy.join("../grafana/provisioning/datasources/prometheus.yml")).unwrap();
    assert!(datasource.contains("uid: prometheus") && datasource.contains("url: http://prometheus:9090"));
}
