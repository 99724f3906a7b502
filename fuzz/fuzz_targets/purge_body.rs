//! `POST /purge` body parsing and translation to scopes must never panic, whatever the bytes.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use cachegate::config::Config;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[origin]
url = "http://127.0.0.1:8000"

[[route]]
name = "courses"
path = "/courses/{id}/"
ttl = "10m"
vary = ["role", "tenant"]
query = { include = ["page", "q"] }
tags = ["courses", "course:{id}"]

[[route]]
name = "default"
path = "/{*any}"
ttl = "origin"
query = { ignore = ["utm_source"] }
"#;

fn config() -> &'static Config {
    static CONFIG_ONCE: OnceLock<Config> = OnceLock::new();
    CONFIG_ONCE.get_or_init(|| {
        cachegate::config::from_str(CONFIG, Path::new("fuzz.toml")).expect("the fixed fuzz config is valid")
    })
}

fuzz_target!(|body: &[u8]| {
    let config = config();
    match cachegate::admin::purge::scopes_for(config, body) {
        Ok((scopes, _soft)) => assert!(!scopes.is_empty(), "an accepted purge has at least one scope"),
        Err(refusal) => assert_eq!(refusal.0, http::StatusCode::BAD_REQUEST),
    }
});
