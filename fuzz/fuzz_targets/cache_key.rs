//! Cache key building: path and query normalisation, base and full keys.
//!
//! Never panics, and:
//! - `normalize_path` is idempotent and never returns a `..` segment;
//! - `normalize_query` is idempotent and never returns a `:`;
//! - a full key starts with `{prefix}:{route}:` and is at most `MAX_KEY_LEN` bytes, or is the
//!   hashed form `{prefix}:{route}:#<64 hex digits>`.
//!
//! `FUZZ_ASCII_PATHS=1` checks path idempotence on ASCII paths only, which masks the known
//! non-ASCII finding recorded in FUZZING.md so the other properties keep being explored.

#![no_main]

use std::sync::OnceLock;

use cachegate::cache::key::{self, KeyIdentity, MAX_KEY_LEN};
use cachegate::config::QueryRule;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

fn ascii_paths_only() -> bool {
    static FLAG: OnceLock<bool> = OnceLock::new();
    *FLAG.get_or_init(|| std::env::var("FUZZ_ASCII_PATHS").is_ok_and(|v| v == "1"))
}

#[derive(Debug, Arbitrary)]
enum Rule {
    All,
    Include(Vec<String>),
    Ignore(Vec<String>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    path: String,
    query: Option<String>,
    rule: Rule,
    prefix: String,
    route: String,
    role: Option<String>,
    tenant: Option<String>,
    user: Option<String>,
    vary: Vec<String>,
    headers: Vec<(String, Vec<u8>)>,
}

fuzz_target!(|input: Input| {
    // Paths: Ok results are fixed points and never hold a `..` segment.
    if let Ok(path) = key::normalize_path(&input.path) {
        assert!(path.starts_with('/'), "normalised path {path:?} is not absolute");
        assert!(
            !path.split('/').any(|seg| seg == ".."),
            "normalised path {path:?} (from {:?}) has a '..' segment",
            input.path
        );
        if !ascii_paths_only() || input.path.is_ascii() {
            let again = key::normalize_path(&path);
            assert_eq!(
                again.as_deref(),
                Ok(&*path),
                "normalize_path is not idempotent on {:?}",
                input.path
            );
        }
    }

    // Queries: every rule, idempotent and free of ':'.
    let rule = match input.rule {
        Rule::All => QueryRule::All,
        Rule::Include(names) => QueryRule::Include(names),
        Rule::Ignore(names) => QueryRule::Ignore(names),
    };
    let mut query = String::new();
    for r in [&QueryRule::All, &rule] {
        let q = key::normalize_query(input.query.as_deref(), r);
        assert!(!q.contains(':'), "normalised query {q:?} contains ':'");
        let again = key::normalize_query(Some(&q), r);
        assert_eq!(again, q, "normalize_query({:?}, {r:?}) is not idempotent", input.query);
        query = q;
    }

    // Keys.
    let path = key::normalize_path(&input.path)
        .map(|p| p.into_owned())
        .unwrap_or_else(|_| input.path.clone());
    let id = KeyIdentity {
        role: input.role.as_deref(),
        tenant: input.tenant.as_deref(),
        user: input.user.as_deref(),
    };
    let base = key::base_key(&input.prefix, &input.route, "", &path, &query, id);
    let head = format!("{}:{}:", input.prefix, input.route);
    assert!(base.text.starts_with(&head));

    let vary: Vec<HeaderName> = input
        .vary
        .iter()
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    // Let some of the request's headers line up with the vary list.
    if let Some(first) = vary.first() {
        if let Some((_, v)) = input.headers.first() {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                headers.append(first.clone(), v);
            }
        }
    }
    let full = key::full_key(
        &base,
        &vary,
        key::VaryInput {
            headers: &headers,
            cookies: "",
        credentials_unresolved: false,
        },
    );
    assert!(full.starts_with(&head), "full key {full:?} lost its head {head:?}");
    if full.len() > MAX_KEY_LEN {
        let digest = &full[head.len()..];
        assert!(
            digest.len() == 65 && digest.starts_with('#') && digest[1..].bytes().all(|b| b.is_ascii_hexdigit()),
            "long key {full:?} is not {head}#<sha256>"
        );
    }
});
