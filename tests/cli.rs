//! The real binary's `stats`, `purge` and `warm` verbs against an in-process instance: exit
//! codes, output, effect on the cache, and error messages that say what to fix.

mod support;

use std::path::Path;

use cachegate::secrets::Secrets;
use support::{free_port, respond, Origin, Proxy};

const TOKEN: &str = "cli-token";

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

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary in an empty directory (so no `proxy.toml` is picked up) without the token
/// variable, plus `env`.
async fn cachegate(args: &[&str], env: &[(&str, &str)]) -> Out {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cachegate"));
    cmd.args(args)
        .current_dir(dir.path())
        .env_remove("CACHEGATE_PURGE_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("the CLI finishes within 60s")
        .unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn setup(secrets: Secrets) -> (Origin, Proxy, String) {
    let origin = Origin::start(|r| {
        let status = if r.path == "/broken/" { 500 } else { 200 };
        respond(status, &[], format!("{} {:?}", r.path, r.query))
    })
    .await;
    let p = Proxy::from_text_with(&support::config_text(&origin, ROUTES), secrets).await;
    let admin = p.admin.to_string();
    (origin, p, admin)
}

fn with_token() -> Secrets {
    Secrets {
        purge_token: Some(TOKEN.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_prints_uptime_tiers_and_route_ratios() {
    let (_origin, p, admin) = setup(with_token()).await;
    assert_eq!(p.get("/courses/").send().await.x_cache(), "MISS");
    assert_eq!(p.get("/courses/").send().await.x_cache(), "HIT");
    let out = cachegate(&["stats", "--admin", &admin], &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for expected in [
        "uptime",
        "config   test.toml",
        "memory   1 entries",
        "redis    not configured",
        "hit ratio",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?} in:\n{}",
            out.stdout
        );
    }
    let row: Vec<&str> = out
        .stdout
        .lines()
        .find(|l| l.starts_with("course_list"))
        .expect("a course_list row")
        .split_whitespace()
        .collect();
    assert_eq!(row, ["course_list", "1", "1", "0", "50.0%"], "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_tag_and_all_make_entries_miss() {
    let (origin, p, admin) = setup(with_token()).await;
    p.get("/courses/").send().await;
    assert_eq!(p.get("/courses/").send().await.x_cache(), "HIT");
    let out = cachegate(&["purge", "--tag", "courses", "--admin", &admin, "--token", TOKEN], &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.starts_with("purged 1 scope: tag:courses"), "{}", out.stdout);
    assert_eq!(p.get("/courses/").send().await.x_cache(), "MISS");
    assert_eq!(p.get("/courses/").send().await.x_cache(), "HIT");
    let out = cachegate(&["purge", "--all", "--soft", "--admin", &admin, "--token", TOKEN], &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("purged 1 scope: all") && out.stdout.contains("soft"),
        "{}",
        out.stdout
    );
    assert_eq!(p.get("/courses/").send().await.x_cache(), "MISS");
    assert_eq!(origin.hits_for("/courses/"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_file_warms_then_reports_already_cached() {
    let (origin, p, admin) = setup(with_token()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("urls.txt");
    std::fs::write(
        &file,
        "# after deploy\n\n/courses/\n  /courses/?page=2\nhttp://example.com/courses/?page=3\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let args = [
        "warm",
        "--file",
        file,
        "--role",
        "teacher",
        "--tenant",
        "1",
        "--tenant",
        "2",
        "--concurrency",
        "2",
    ];
    let remote = ["--admin", admin.as_str(), "--token", TOKEN];
    let out = cachegate(&[&args[..], &remote[..]].concat(), &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "warmed 6, already cached 0, failed 0");
    assert_eq!(origin.hits(), 6);
    for tenant in ["1", "2"] {
        let r = p.get("/courses/?page=3").role("teacher").tenant(tenant).send().await;
        assert_eq!(r.x_cache(), "HIT");
    }
    let out = cachegate(&[&args[..], &remote[..]].concat(), &[]).await;
    assert_eq!(out.stdout.trim(), "warmed 0, already cached 6, failed 0");
    assert_eq!(origin.hits(), 6);
    std::fs::write(dir.path().join("bad.txt"), "/broken/\n").unwrap();
    let bad = dir.path().join("bad.txt");
    let out = cachegate(
        &[&["warm", "--file", bad.to_str().unwrap()][..], &remote[..]].concat(),
        &[],
    )
    .await;
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stdout.trim(), "warmed 0, already cached 0, failed 1");
    assert!(
        out.stderr.contains("failed: /broken/ (anonymous): answered 500"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_token_default_to_the_config() {
    let (_origin, p, admin) = setup(with_token()).await;
    p.get("/courses/").send().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    let text = format!(
        "[server]\nadmin_listen = \"{admin}\"\n[origin]\nurl = \"http://127.0.0.1:8000\"\n[purge]\ntoken_env = \"MY_TOKEN\"\n"
    );
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();
    let out = cachegate(
        &["purge", "--config", config, "--route", "course_list"],
        &[("MY_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(p.get("/courses/").send().await.x_cache(), "MISS");
    let out = cachegate(&["purge", "--config", config, "--all"], &[]).await;
    assert_eq!(out.code, Some(64));
    assert!(
        out.stderr.contains("no purge token: pass --token or set $MY_TOKEN"),
        "{}",
        out.stderr
    );
    let out = cachegate(&["purge", "--config", config, "--all"], &[("MY_TOKEN", "nope")]).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("the purge token was refused: check --token / $MY_TOKEN"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_to_fix() {
    let (_origin, _p, admin) = setup(with_token()).await;
    let closed = format!("127.0.0.1:{}", free_port());
    let out = cachegate(&["stats", "--admin", &closed], &[]).await;
    assert_eq!(out.code, Some(1));
    let expected = format!("cannot reach the admin listener at {closed}: is cachegate running? (set --admin)");
    assert!(out.stderr.contains(&expected), "{}", out.stderr);

    let out = cachegate(
        &["purge", "--tag", "courses", "--admin", &admin, "--token", "wrong"],
        &[],
    )
    .await;
    assert_eq!(out.code, Some(1));
    let expected = "the purge token was refused: check --token / $CACHEGATE_PURGE_TOKEN";
    assert!(out.stderr.contains(expected), "{}", out.stderr);

    let out = cachegate(&["purge", "--route", "nope", "--admin", &admin, "--token", TOKEN], &[]).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("the request was refused: unknown route \"nope\""),
        "{}",
        out.stderr
    );

    let out = cachegate(&["stats", "--config", "/nonexistent/proxy.toml"], &[]).await;
    assert_eq!(out.code, Some(64));
    assert!(
        out.stderr.contains("/nonexistent/proxy.toml: cannot read"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("pass --admin ADDR"), "{}", out.stderr);

    let out = cachegate(&["purge", "--admin", &admin, "--token", TOKEN], &[]).await;
    assert_eq!(out.code, Some(64), "a purge needs something to purge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_endpoint_says_how_to_enable_it() {
    let (_origin, _p, admin) = setup(Secrets::default()).await;
    let out = cachegate(&["purge", "--all", "--admin", &admin, "--token", TOKEN], &[]).await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("the endpoint is disabled"), "{}", out.stderr);
    assert!(out.stderr.contains("token_env"), "{}", out.stderr);
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "# nothing yet\n").unwrap();
    let out = cachegate(
        &[
            "warm",
            "--file",
            empty.to_str().unwrap(),
            "--admin",
            &admin,
            "--token",
            TOKEN,
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, Some(64));
    assert!(out.stderr.contains("no paths in the file"), "{}", out.stderr);
    assert!(Path::new(&empty).exists());
}
