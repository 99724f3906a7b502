//! Config loading: the shipped file, and every kind of mistake reported with file, line and key.

use std::path::Path;
use std::process::Command;

use cachegate::config::{self, CredentialCookies, QueryRule, Ttl};

fn errors(text: &str) -> String {
    match config::from_str(text, Path::new("bad.toml")) {
        Ok(_) => panic!("config should be rejected:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const ORIGIN: &str = "[origin]\nurl = \"http://127.0.0.1:8000\"\n";

#[test]
fn shipped_proxy_toml_is_valid_and_as_documented() {
    let c = config::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml"))).unwrap();
    assert!(
        c.cache.redis_urls.is_empty(),
        "the shipped config must run without Redis"
    );
    let names: Vec<_> = c.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "course_list",
            "student_list",
            "lecture_detail",
            "blockchain_stats",
            "default"
        ]
    );
    let courses = &c.routes[0];
    assert_eq!(courses.ttl, Ttl::Fixed(std::time::Duration::from_secs(600)));
    assert_eq!(
        courses.query,
        QueryRule::Include(vec!["page".into(), "department".into()])
    );
    assert_eq!(c.routes[4].ttl, Ttl::Origin);
    assert_eq!(c.identity.credential_cookies, CredentialCookies::All);
    assert_eq!(c.invalidations.len(), 3);
}

#[test]
fn defaults_apply_to_a_minimal_config() {
    let c = config::from_str(
        &format!("{ORIGIN}[[route]]\nname = \"r\"\npath = \"/r/\"\n"),
        Path::new("m.toml"),
    )
    .unwrap();
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9091");
    assert_eq!(c.server.max_body, 10 * 1024 * 1024);
    let r = &c.routes[0];
    assert!(
        r.vary.role && r.vary.tenant && !r.vary.user,
        "default vary is role + tenant"
    );
    assert_eq!(r.query, QueryRule::All);
    assert_eq!(r.ttl, Ttl::Origin);
    assert_eq!(c.cache.cacheable_statuses, vec![200, 203, 204, 301, 404, 410]);
}

/// Each bad config, the line and key its message must name, and a word of what was expected.
#[test]
fn bad_configs_name_file_line_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[server]\nlisten = 8080\n",
            "bad.toml:2: server.listen",
            "expected a string",
        ),
        (
            "[server]\nlisten = \"nowhere\"\n",
            "bad.toml:2: server.listen",
            "expected an address",
        ),
        (
            "[server]\nmax_body = \"ten\"\n",
            "bad.toml:2: server.max_body",
            "expected a size",
        ),
        (
            "[server]\ncolour = \"blue\"\n",
            "bad.toml:2: server.colour",
            "unknown key",
        ),
        (
            "[server]\ndebug_headers = \"yes\"\n",
            "bad.toml:2: server.debug_headers",
            "true or false",
        ),
        (
            "[cache]\nmemory_ttl = \"soon\"\n",
            "bad.toml:2: cache.memory_ttl",
            "expected a duration",
        ),
        (
            "[cache]\nredis_url = \"http://x\"\n",
            "bad.toml:2: cache.redis_url",
            "redis://",
        ),
        (
            "[cache]\ncacheable_statuses = [200, 999]\n",
            "bad.toml:2: cache.cacheable_statuses",
            "status code",
        ),
        (
            "[identity]\ntrust_headers_from = [\"10.0.0.0/99\"]\n",
            "bad.toml:2: identity.trust_headers_from[0]",
            "CIDR",
        ),
        (
            "[identity]\nrole_header = \"bad header\"\n",
            "bad.toml:2: identity.role_header",
            "header name",
        ),
        (
            "[identity]\njwt = { algorithms = [\"HS256\"] }\n",
            "bad.toml:2: identity.jwt.algorithms[0]",
            "secret_env",
        ),
        (
            "[identity]\njwt = { algorithms = [\"RS256\"] }\n",
            "bad.toml:2: identity.jwt.algorithms[0]",
            "public_key",
        ),
        (
            "[identity]\njwt = { secret_env = \"S\", algorithms = [\"none\"] }\n",
            "bad.toml:2: identity.jwt.algorithms[0]",
            "expected one of",
        ),
        (
            "[identity]\nlookup = { path = \"/whoami/\" }\n",
            "bad.toml:2: identity.lookup.cookie",
            "session cookie",
        ),
        ("[purge]\ntoken = \"x\"\n", "bad.toml:2: purge.token", "unknown key"),
        (
            "[[route]]\npath = \"/a/\"\n",
            "bad.toml:1: route[0].name",
            "missing key",
        ),
        (
            "[[route]]\nname = \"a\"\npath = \"a/\"\n",
            "bad.toml:3: route \"a\" (route[0]).path",
            "must start with '/'",
        ),
        (
            "[[route]]\nname = \"a\"\npath = \"/a/{*rest}/b\"\n",
            "bad.toml:3: route \"a\" (route[0]).path",
            "invalid path pattern",
        ),
        (
            "[[route]]\nname = \"a\"\npath = \"/a/\"\nttl = \"forever\"\n",
            "bad.toml:4: route \"a\" (route[0]).ttl",
            "expected a duration",
        ),
        (
            "[[route]]\nname = \"a\"\npath = \"/a/\"\nvary = [\"planet\"]\n",
            "bad.toml:4: route \"a\" (route[0]).vary[0]",
            "\"role\", \"tenant\" or \"user\"",
        ),
        (
            "[[route]]\nname = \"a\"\npath = \"/a/\"\nquery = \"some\"\n",
            "bad.toml:4: route \"a\" (route[0]).query",
            "include",
        ),
        (
            "[[route]]\nname = \"a\"\npath = \"/a/{id}/\"\ntags = [\"x:{nope}\"]\n",
            "bad.toml:4: route \"a\" (route[0]).tags[0]",
            "no such parameter",
        ),
        (
            "[[route]]\nname = \"a b\"\npath = \"/a/\"\n",
            "bad.toml:2: route[0].name",
            "letters, digits",
        ),
        (
            "[[route]]\nname = \"a\"\npath = \"/a/\"\n[[route]]\nname = \"a\"\npath = \"/b/\"\n",
            "bad.toml:5: route[1].name",
            "used twice",
        ),
        (
            "[[invalidate]]\npath = \"/a/\"\n",
            "bad.toml:1: invalidate[0].tags",
            "missing key",
        ),
        (
            "[[invalidate]]\npath = \"/a/\"\ntags = [\"a\"]\nmethods = [\"GET\"]\n",
            "bad.toml:4: invalidate[0].methods[0]",
            "safe method",
        ),
        (
            "[[invalidate]]\npath = \"/a/\"\ntags = [\"a\"]\nscope = \"galaxy\"\n",
            "bad.toml:4: invalidate[0].scope",
            "\"tenant\" or \"all\"",
        ),
    ];
    for (body, located, expected) in cases {
        let text = format!("{ORIGIN}{body}");
        // The cases are written as if [origin] were absent; shift the expected line by its 2 lines.
        let (file_line, key) = located.split_once(": ").unwrap();
        let (file, line) = file_line.split_once(':').unwrap();
        let line: usize = line.parse::<usize>().unwrap() + 2;
        let want = format!("{file}:{line}: {key}");
        let msg = errors(&text);
        assert!(msg.contains(&want), "expected {want:?} in:\n{msg}\n--- config:\n{text}");
        assert!(msg.contains(expected), "expected {expected:?} in:\n{msg}");
    }
}

#[test]
fn missing_origin_and_syntax_errors_are_reported() {
    assert!(errors("").contains("origin: missing [origin] table"));
    let msg = errors(&format!("{ORIGIN}[server\nlisten = 1\n"));
    assert!(msg.starts_with("bad.toml:3:"), "{msg}");
    assert!(msg.contains("invalid TOML"), "{msg}");
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = format!(
        "{ORIGIN}[server]\nlisten = \"x\"\nmax_body = \"y\"\n[[route]]\nname = \"a\"\npath = \"b\"\nttl = \"z\"\n"
    );
    let msg = errors(&text);
    assert_eq!(msg.lines().count(), 4, "{msg}");
    let lines: Vec<usize> = msg
        .lines()
        .map(|l| l.split(':').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(lines, vec![4, 5, 8, 9]);
}

#[test]
fn check_verb_accepts_the_shipped_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_cachegate"))
        .args(["check", "--config", concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (5 routes, 3 invalidation rules)"));
}

#[test]
fn check_verb_rejects_a_broken_config_with_located_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, format!("{ORIGIN}[server]\nlisten = \"x\"\ncolour = 1\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cachegate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4: server.listen", path.display())), "{err}");
    assert!(
        err.contains(&format!("{}:5: server.colour: unknown key", path.display())),
        "{err}"
    );
}

#[test]
fn check_verb_reports_an_unreadable_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_cachegate"))
        .args(["check", "--config", "/nonexistent/proxy.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/proxy.toml: cannot read"));
}

#[test]
fn absent_sections_read_as_their_defaults() {
    let c = config::from_str(ORIGIN, Path::new("min.toml")).unwrap();
    assert_eq!(c.server, config::ServerConfig::default());
    assert_eq!(c.cache, config::CacheConfig::default());
    assert_eq!(c.identity, config::IdentityConfig::default());
    assert_eq!(c.purge, config::PurgeConfig::default());
}

/// Each field is in exactly one part: changing it changes that part only, and the restart-only
/// part names it.
#[test]
fn restart_only_and_reloadable_parts_split_the_fields() {
    let base = format!("{ORIGIN}[[route]]\nname = \"a\"\npath = \"/a/\"\n");
    let load = |extra: &str| config::from_str(&format!("{base}{extra}"), Path::new("p.toml")).unwrap();
    let before = load("");
    let cases: &[(&str, Option<&str>)] = &[
        ("[server]\nlisten = \"127.0.0.1:1\"\n", Some("server.listen")),
        ("[server]\nclient_timeout = \"5s\"\n", Some("server.client_timeout")),
        ("[server]\nmax_body = \"1MiB\"\n", None),
        ("[cache]\nredis_url = \"redis://x\"\n", Some("cache.redis_url")),
        ("[cache]\nmemory_capacity = \"1MiB\"\n", Some("cache.memory_capacity")),
        ("[cache]\nstale_if_error = \"1m\"\n", None),
        (
            "[identity]\ntrust_headers_from = [\"10.0.0.1\"]\n",
            Some("identity.trust_headers_from"),
        ),
        ("[identity]\nanonymous_role = \"guest\"\n", None),
        ("[purge]\ntoken_env = \"T\"\n", Some("purge.token_env")),
        ("[warm]\ninterval = \"5m\"\npaths = [\"/a/\"]\n", Some("warm")),
        ("[[route]]\nname = \"b\"\npath = \"/b/\"\n", None),
    ];
    for (extra, restart_key) in cases {
        let after = load(extra);
        assert_ne!(before, after, "{extra}");
        let (b, a) = (before.restart_only(), after.restart_only());
        match restart_key {
            Some(key) => {
                assert_ne!(b, a, "{extra}");
                assert_eq!(b.changed(&a), vec![key.to_string()], "{extra}");
                assert_eq!(before.reloadable(), after.reloadable(), "{extra}");
            }
            None => {
                assert_eq!(b, a, "{extra}");
                assert_ne!(before.reloadable(), after.reloadable(), "{extra}");
            }
        }
    }
    let preserve = config::from_str(
        &base.replace("[origin]\n", "[origin]\npreserve_host = true\n"),
        Path::new("p.toml"),
    )
    .unwrap();
    assert_eq!(before.restart_only(), preserve.restart_only());
    assert_ne!(before.reloadable(), preserve.reloadable());
}

/// `redis_url`: one URL is a node, a list or a `+cluster` URL a cluster whose seeds carry the
/// credentials; everything else is refused with file, line and key.
#[test]
fn redis_url_names_a_node_or_a_cluster() {
    let target = |value: &str| {
        config::from_str(&format!("{ORIGIN}[cache]\nredis_url = {value}\n"), Path::new("p.toml"))
            .unwrap()
            .cache
            .redis_target()
            .unwrap()
    };
    let node = target("\"redis://10.0.0.1:6379/0\"");
    assert_eq!(
        (node.seeds, node.cluster),
        (vec!["redis://10.0.0.1:6379/0".to_string()], false)
    );
    let list = target("[\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"]");
    assert!(list.cluster);
    assert_eq!(list.seeds.len(), 2);
    let cluster = target("\"rediss+cluster://app:pw@h1:7000,h2:7001/\"");
    assert!(cluster.cluster);
    assert_eq!(cluster.seeds, ["rediss://app:pw@h1:7000", "rediss://app:pw@h2:7001"]);

    for (value, says) in [
        ("\"redis+cluster:///\"", "names no node"),
        ("\"redis+cluster://h1:1,h2:2/3\"", "no database"),
        ("[\"redis://h1:1\", \"rediss://h2:2\"]", "mixes redis:// and rediss://"),
        (
            "[\"redis://h1:1\", \"http://h2:2\"]",
            "expected a redis:// or rediss:// URL",
        ),
        ("\"redis://h1:notaport\"", "redis://h1:notaport"),
    ] {
        let e = errors(&format!("{ORIGIN}[cache]\nredis_url = {value}\n"));
        assert!(
            e.contains("bad.toml:4") && e.contains("cache.redis_url") && e.contains(says),
            "{value}: {e}"
        );
    }
    let e = errors(&format!("{ORIGIN}[cache]\nkey_prefix = \"{{app}}\"\n"));
    assert!(e.contains("cache.key_prefix") && e.contains("braces"), "{e}");
    let e = errors(&format!("{ORIGIN}[cache]\nredis_ca_file = \"/nonexistent/ca.pem\"\n"));
    assert!(e.contains("bad.toml:4") && e.contains("cache.redis_ca_file"), "{e}");
}

/// A bad size or duration says what is expected, not a parsing library's message ("cannot
/// parse float from empty string", "expected number at 0").
#[test]
fn size_and_duration_errors_say_what_is_expected_not_the_library_message() {
    let msg = errors(&format!("{ORIGIN}[cache]\nmemory_capacity = \"lots\"\n"));
    assert!(msg.contains("bad.toml:4: cache.memory_capacity"), "{msg}");
    assert!(msg.contains("a size like \"64MiB\""), "{msg}");
    assert!(!msg.contains("parse float") && !msg.contains("empty string"), "{msg}");
    let msg = errors(&format!("{ORIGIN}[cache]\nmemory_ttl = \"soon\"\n"));
    assert!(msg.contains("a duration like \"90s\""), "{msg}");
    assert!(!msg.contains("expected number") && !msg.contains("at 0"), "{msg}");
    // A unit alone, or a number the size parser takes but is not a size, is refused too.
    assert!(errors(&format!("{ORIGIN}[cache]\nmemory_capacity = \"MiB\"\n")).contains("64MiB"));
}

/// Route errors name the route as a user wrote it, not only its position.
#[test]
fn route_errors_name_the_route_and_its_index() {
    let routes = "[[route]]\nname = \"a\"\npath = \"/a/\"\n".to_string()
        + "[[route]]\nname = \"b\"\npath = \"/b/\"\n"
        + "[[route]]\nname = \"c\"\npath = \"/c/\"\n"
        + "[[route]]\nname = \"course_list\"\npath = \"/courses/\"\ntagz = [\"x\"]\n";
    let msg = errors(&format!("{ORIGIN}{routes}"));
    assert!(
        msg.contains("bad.toml:15: route \"course_list\" (route[3]).tagz: unknown key"),
        "{msg}"
    );
}

fn check(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_cachegate"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("CHECK_TEST_UNSET_SECRET")
        .output()
        .unwrap()
}

/// `check` refuses what `run` refuses: it builds everything `run` builds short of binding: secrets, identity sources, TLS files, the origin client.
#[test]
fn check_verb_refuses_what_run_refuses() {
    let jwt =
        format!("{ORIGIN}[identity]\njwt = {{ secret_env = \"CHECK_TEST_UNSET_SECRET\", algorithms = [\"HS256\"] }}\n");
    let out = check(&jwt);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("CHECK_TEST_UNSET_SECRET"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let tls = format!(
        "{ORIGIN}[server]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
        cert.display(),
        key.display()
    );
    let out = check(&tls);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("tls"), "{err}");

    let ok = check(&format!("{ORIGIN}[[route]]\nname = \"a\"\npath = \"/a/\"\n"));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}
