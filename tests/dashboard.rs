//! The Grafana dashboard (grafana/dashboards/cachegate.json): well-formed, has the panels the
//! spec lists, queries only metrics cachegate exports (checked against a real scrape after a
//! workload that counts in the labelled ones), and the scrape passes `promtool check metrics`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::Value;
use support::{eventually, redis_cache, respond, Origin, Proxy, RedisServer};

const DASHBOARD: &str = include_str!("../grafana/dashboards/cachegate.json");

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("grafana/dashboards/cachegate.json is valid JSON")
}

/// Every panel, including those nested in collapsed rows.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("the dashboard has a panels array") {
        out.push(p);
        if let Some(nested) = p.get("panels").and_then(Value::as_array) {
            out.extend(nested);
        }
    }
    out
}

fn is_row(p: &Value) -> bool {
    p["type"] == "row"
}

fn title(p: &Value) -> &str {
    p["title"].as_str().unwrap_or("<untitled>")
}

/// `(panel title, expr)` for every target of every panel.
fn exprs(d: &Value) -> Vec<(String, String)> {
    panels(d)
        .into_iter()
        .filter(|p| !is_row(p))
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title(p).to_string(), t["expr"].as_str().unwrap_or_default().to_string()))
        })
        .collect()
}

/// Tokens matching `cachegate_[a-z_]+` in a PromQL expression, as written.
fn metric_tokens(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("cachegate_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let len = tail
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_lowercase() || c == '_'))
            .map_or(tail.len(), |(j, _)| j);
        // Part of a longer identifier (`xcachegate_`) is not a metric name.
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            out.push(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    out
}

/// Series suffixes of a histogram's exposition.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// A token's metric family name: `_bucket`, `_sum` and `_count` are a histogram's series.
fn family(token: &str) -> &str {
    HISTOGRAM_SUFFIXES
        .iter()
        .find_map(|s| token.strip_suffix(s))
        .unwrap_or(token)
}

/// Every metric family the dashboard queries, with the panels querying it and whether it is
/// queried through histogram series.
fn dashboard_metrics(d: &Value) -> BTreeMap<String, (BTreeSet<String>, bool)> {
    let mut out: BTreeMap<String, (BTreeSet<String>, bool)> = BTreeMap::new();
    for (panel, expr) in exprs(d) {
        for token in metric_tokens(&expr) {
            let name = family(&token);
            let entry = out.entry(name.to_string()).or_default();
            entry.0.insert(panel.clone());
            entry.1 |= name != token;
        }
    }
    out
}

/// `# TYPE <name> <type>` lines of a text exposition.
fn types(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_string(), kind.trim().to_string()))
        })
        .collect()
}

/// Checks that every dashboard metric is a family of `exposition` of the right type; returns
/// the problems, one a line.
fn missing_from(exposition: &str) -> Vec<String> {
    let types = types(exposition);
    let mut problems = Vec::new();
    for (name, (panels, as_histogram)) in dashboard_metrics(&dashboard()) {
        match types.get(&name) {
            None => problems.push(format!("{name} (used by {panels:?}) is not in the exposition")),
            Some(kind) if as_histogram && kind != "histogram" => problems.push(format!(
                "{name} is queried through _bucket/_sum/_count series (by {panels:?}) but is a {kind}"
            )),
            Some(_) => {}
        }
    }
    problems
}

#[test]
fn metric_names_are_extracted_and_normalised() {
    let expr = "histogram_quantile(0.99, sum by (le) (rate(cachegate_request_duration_seconds_bucket{route=~\"$route\"}[5m]))) / sum(cachegate_cache_lookups_total) + xcachegate_nope";
    assert_eq!(
        metric_tokens(expr),
        [
            "cachegate_request_duration_seconds_bucket",
            "cachegate_cache_lookups_total"
        ]
    );
    assert_eq!(
        family("cachegate_request_duration_seconds_bucket"),
        "cachegate_request_duration_seconds"
    );
    assert_eq!(
        family("cachegate_identity_lookup_duration_seconds_count"),
        "cachegate_identity_lookup_duration_seconds"
    );
    assert_eq!(family("cachegate_purges_total"), "cachegate_purges_total");
}

#[test]
fn dashboard_is_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "cachegate");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion is a number");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(
        d["id"].is_null(),
        "a dashboard meant for provisioning and import has no database id"
    );

    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` template variable"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    assert_eq!(
        ds["current"]["value"], "prometheus",
        "defaults to the provisioned data source's uid"
    );
    let route = var("route");
    assert_eq!(route["type"], "query");
    assert_eq!(
        route["definition"],
        "label_values(cachegate_cache_lookups_total, route)"
    );
    assert_eq!(
        route["query"]["query"],
        "label_values(cachegate_cache_lookups_total, route)"
    );
    assert_eq!(route["datasource"]["uid"], "${datasource}");
    assert_eq!(route["includeAll"], true);

    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let all = panels(&d);
    assert!(all.iter().filter(|p| !is_row(p)).count() >= 15);
    for p in all {
        let t = title(p);
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {t:?} has no numeric id"));
        assert!(ids.insert(id), "panel id {id} is used twice ({t:?})");
        let g = &p["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("panel {t:?}: gridPos.{k} is missing or not a number"))
        });
        assert!(
            h > 0 && w > 0 && x + w <= 24,
            "panel {t:?}: gridPos {g} is outside the 24-column grid"
        );
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), t.to_string()) {
                    panic!("panels {other:?} and {t:?} overlap at ({cx}, {cy})");
                }
            }
        }
        if is_row(p) {
            continue;
        }
        assert!(
            ["timeseries", "stat", "gauge", "bargauge", "table"].contains(&p["type"].as_str().unwrap_or_default()),
            "panel {t:?} has an unexpected type {}",
            p["type"]
        );
        assert_eq!(p["datasource"]["type"], "prometheus", "panel {t:?}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {t:?}");
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {t:?} has no targets"));
        assert!(!targets.is_empty(), "panel {t:?} has no targets");
        let mut refs = BTreeSet::new();
        for target in targets {
            let r = target["refId"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {t:?}: a target has no refId"));
            assert!(refs.insert(r), "panel {t:?}: refId {r} is used twice");
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "panel {t:?}: target {r} has no expr");
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "panel {t:?}: unbalanced parentheses in {expr}"
            );
            assert_eq!(target["datasource"]["uid"], "${datasource}", "panel {t:?} target {r}");
            assert!(
                !metric_tokens(expr).is_empty(),
                "panel {t:?}: target {r} queries no cachegate metric"
            );
        }
    }
}

#[test]
fn dashboard_has_the_panels_the_spec_lists() {
    let d = dashboard();
    let by_title: BTreeMap<&str, Vec<String>> = panels(&d)
        .into_iter()
        .filter(|p| !is_row(p))
        .map(|p| {
            let exprs = p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| t["expr"].as_str().unwrap_or_default().to_string())
                .collect();
            (title(p), exprs)
        })
        .collect();
    // Title, and text every one of its queries contains.
    let wanted: &[(&str, &[&str])] = &[
        ("Overall hit ratio", &["cachegate_cache_lookups_total{result=\"hit\""]),
        (
            "Hit ratio per route",
            &[
                "sum by (route) (rate(cachegate_cache_lookups_total{result=\"hit\"",
                "/ sum by (route) (rate(cachegate_cache_lookups_total{",
            ],
        ),
        (
            "Request rate by X-Cache result",
            &["sum by (result) (rate(cachegate_cache_lookups_total"],
        ),
        (
            "Latency hit vs miss (p50/p95/p99)",
            &[
                "histogram_quantile(",
                "cachegate_request_duration_seconds_bucket",
                "by (cache, le)",
            ],
        ),
        (
            "Origin latency (p50/p95/p99)",
            &[
                "histogram_quantile(",
                "cachegate_origin_request_duration_seconds_bucket",
            ],
        ),
        ("Origin errors by kind", &["by (kind)", "cachegate_origin_errors_total"]),
        ("Bypass reasons", &["by (reason)", "cachegate_bypass_total"]),
        (
            "Purges by trigger and kind",
            &["by (trigger, kind)", "cachegate_purges_total"],
        ),
        ("Purged entries", &["cachegate_purged_entries_total"]),
        ("Redis up", &["cachegate_redis_up"]),
        ("Redis errors by op", &["by (op)", "cachegate_redis_errors_total"]),
        ("Memory tier entries", &["cachegate_memory_entries"]),
        ("Memory tier bytes", &["cachegate_memory_bytes"]),
        ("Memory tier evictions", &["cachegate_memory_evictions_total"]),
        ("Session lookups by result", &["cachegate_identity_lookups_total"]),
        (
            "Session lookup latency (p50/p95/p99)",
            &[
                "histogram_quantile(",
                "cachegate_identity_lookup_duration_seconds_bucket",
            ],
        ),
        ("Config reloads", &["cachegate_config_reloads_total"]),
        ("Coalesced requests", &["cachegate_coalesced_requests_total"]),
    ];
    for (t, needles) in wanted {
        let exprs = by_title
            .get(t)
            .unwrap_or_else(|| panic!("no panel titled {t:?}; panels: {:?}", by_title.keys()));
        for expr in exprs {
            for n in *needles {
                assert!(expr.contains(n), "panel {t:?}: {expr} does not contain {n}");
            }
        }
    }
    for t in [
        "Latency hit vs miss (p50/p95/p99)",
        "Origin latency (p50/p95/p99)",
        "Session lookup latency (p50/p95/p99)",
    ] {
        let qs: BTreeSet<&str> = by_title[t]
            .iter()
            .filter_map(|e| e.strip_prefix("histogram_quantile(")?.split(',').next())
            .collect();
        assert_eq!(qs, BTreeSet::from(["0.5", "0.95", "0.99"]), "panel {t:?}");
    }
}

#[test]
fn dashboard_metrics_are_defined_by_the_metrics_module() {
    // Every family, with one child each, rendered from a fresh registry.
    let m = cachegate::metrics::Metrics::new();
    m.requests.with_label_values(&["r", "GET", "200"]).inc();
    m.lookups.with_label_values(&["r", "hit", "memory"]).inc();
    m.bypass.with_label_values(&["r", "no-store"]).inc();
    m.request_duration.with_label_values(&["r", "hit"]).observe(0.001);
    m.origin_duration.with_label_values(&["r"]).observe(0.01);
    m.origin_errors.with_label_values(&["timeout"]).inc();
    m.purges.with_label_values(&["write", "tag"]).inc();
    m.coalesced.with_label_values(&["r"]).inc();
    m.redis_errors.with_label_values(&["lookup"]).inc();
    m.config_reloads.with_label_values(&["ok"]).inc();
    m.identity_lookups.with_label_values(&["ok"]).inc();
    let problems = missing_from(&m.render());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What [`exercised`] started; everything stops when it is dropped.
struct Exercised {
    _proxy: Proxy,
    _origin: Origin,
    _redis: RedisServer,
}

/// The sum of the samples whose line starts with `prefix` (0 when there are none).
fn counted(exposition: &str, prefix: &str) -> f64 {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(p: &Proxy) -> String {
    let r = p.admin_get("/metrics").send().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type").starts_with("text/plain; version=0.0.4"),
        "{}",
        r.header("content-type")
    );
    r.text()
}

/// A cachegate with Redis, a session lookup, a tag purge rule and a 2 s origin timeout, after a
/// workload that counts in every labelled family it can: a miss, a hit, a bypass
/// (no-store), a session lookup, a write that purges, two coalesced requests, an origin timeout
/// and, with Redis killed, a Redis error. Returns the processes and the last scrape.
async fn exercised() -> (Exercised, String) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let origin = Origin::start_async(move |seen| {
        let g = g.clone();
        async move {
            match seen.path.as_str() {
                "/api/whoami/" if support::header(&seen.headers, "cookie") == "sessionid=teacher" => {
                    respond(200, &[], r#"{"role": "teacher", "tenant": 1, "user": "ann"}"#)
                }
                "/api/whoami/" => respond(401, &[], r#"{"detail": "no session"}"#),
                "/slow/" => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    respond(200, &[], "too late")
                }
                _ if seen.query.as_deref() == Some("nostore=1") => {
                    respond(200, &[("cache-control", "no-store")], "private")
                }
                "/gate/" => {
                    g.acquire().await.unwrap().forget();
                    respond(200, &[], "gated")
                }
                _ => respond(200, &[], format!("{} {:?}", seen.path, seen.query)),
            }
        }
    })
    .await;
    let redis = RedisServer::start().await;
    let rest = format!(
        r#"[origin]
url = "{origin}"
timeout = "2s"

{cache}
[identity]
credential_cookies = ["sessionid"]
lookup = {{ path = "/api/whoami/", cookie = "sessionid", ttl = "60s", role_field = "role", tenant_field = "tenant", user_field = "user" }}

[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
tags = ["courses"]

[[route]]
name = "slow"
path = "/slow/"
ttl = "10m"

[[route]]
name = "gated"
path = "/gate/"
ttl = "10m"

[[invalidate]]
path = "/courses/{{*rest}}"
tags = ["courses"]
"#,
        origin = origin.url(),
        cache = redis_cache(&redis, "dashboard-test"),
    );
    let p = Proxy::start(&origin, &rest).await;
    let cache = Arc::clone(&p.running().cache);
    assert!(
        eventually(Duration::from_secs(10), || cache.shared_up() == Some(true)).await,
        "the Redis tier came up"
    );

    assert_eq!(p.get("/courses/").send().await.x_cache(), "MISS");
    assert_eq!(p.get("/courses/").send().await.x_cache(), "HIT");
    assert_eq!(p.get("/courses/?nostore=1").send().await.x_cache(), "BYPASS");
    let session = p.get("/courses/").header("cookie", "sessionid=teacher").send().await;
    assert_eq!(
        session.x_cache(),
        "MISS",
        "a teacher's first request (session looked up)"
    );
    let write = p.req(Method::POST, "/courses/").body("{}").send().await;
    assert_eq!(write.status, 200);
    assert_eq!(p.get("/courses/").send().await.x_cache(), "MISS", "purged by the write");
    assert_eq!(p.get("/slow/").send().await.status, 504, "origin timeout");

    // Coalescing: a second request for /gate/ while the first one's fetch waits at the origin.
    let follower_then_release = async {
        assert!(
            eventually(Duration::from_secs(10), || origin.hits_for("/gate/") == 1).await,
            "the first /gate/ request reached the origin"
        );
        let release = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while counted(
                &scrape(&p).await,
                r#"cachegate_coalesced_requests_total{route="gated"}"#,
            ) == 0.0
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the second /gate/ request never coalesced"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            gate.add_permits(100);
        };
        tokio::join!(p.get("/gate/").send(), release).0
    };
    let (leader, follower) = tokio::join!(p.get("/gate/").send(), follower_then_release);
    assert_eq!((leader.text(), follower.text()), ("gated".into(), "gated".into()));
    assert_eq!(origin.hits_for("/gate/"), 1, "one origin fetch for both");

    let mut redis = redis;
    redis.kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    let text = loop {
        n += 1;
        p.get(&format!("/courses/?after-redis-down={n}")).send().await;
        let text = scrape(&p).await;
        if counted(&text, "cachegate_redis_errors_total{") > 0.0 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no cachegate_redis_errors_total within 20s of killing Redis:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (
        Exercised {
            _proxy: p,
            _origin: origin,
            _redis: redis,
        },
        text,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_is_in_a_real_scrape() {
    let (running, text) = exercised().await;
    let problems = missing_from(&text);
    assert!(
        problems.is_empty(),
        "the dashboard queries metrics cachegate does not export:\n{}\n--- exposition:\n{text}",
        problems.join("\n")
    );
    // The workload really exercised what the dashboard shows (every series exists from the
    // start at 0, so it is the counts that tell).
    for series in [
        r#"cachegate_cache_lookups_total{result="hit",route="course_list","#,
        r#"cachegate_bypass_total{reason="no-store",route="course_list"}"#,
        r#"cachegate_origin_errors_total{kind="timeout"}"#,
        r#"cachegate_purges_total{kind="tag",trigger="write"}"#,
        r#"cachegate_identity_lookups_total{result="ok"}"#,
        "cachegate_redis_errors_total{",
    ] {
        assert!(counted(&text, series) > 0.0, "nothing counted in {series}:\n{text}");
    }
    assert_eq!(
        counted(&text, r#"cachegate_coalesced_requests_total{route="gated"}"#),
        1.0,
        "{text}"
    );
    for gauge in ["cachegate_redis_up ", "cachegate_memory_entries "] {
        assert!(text.lines().any(|l| l.starts_with(gauge)), "no {gauge}in:\n{text}");
    }
    drop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_a_real_scrape() {
    let (_running, text) = exercised().await;
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("promtool is not installed: install it with `apt-get install -y prometheus` (scripts/test.sh does)")
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("promtool reads the scrape");
    let out = child.wait_with_output().expect("promtool finishes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{stdout}{stderr}\n--- exposition:\n{text}",
        out.status
    );
    let problems: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        problems.is_empty(),
        "promtool check metrics reported:\n{}",
        problems.join("\n")
    );
}
