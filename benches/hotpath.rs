//! Micro-benchmarks of the pure pieces of the hit path: key building, route matching, the
//! prepared hit headers and the Redis entry encoding.
//!
//! ```text
//! cargo bench --bench hotpath            # all
//! cargo bench --bench hotpath -- key     # one group
//! ```
//!
//! Figures and where a whole hit's time goes (callgrind) are in BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use cachegate::cache::entry::{StaleWindows, WireEntry};
use cachegate::cache::key::{self, KeyIdentity};
use cachegate::config::QueryRule;
use cachegate::message::headers::age_value;
use cachegate::route::PathPattern;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, StatusCode};

fn keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("key");
    let all = QueryRule::All;
    let page = QueryRule::Include(vec!["page".into()]);
    g.bench_function("normalize_path/clean", |b| {
        b.iter(|| key::normalize_path(black_box("/courses/42/lectures/7/")))
    });
    g.bench_function("normalize_path/escaped", |b| {
        b.iter(|| key::normalize_path(black_box("/courses/%34%32/./lectures/caf%C3%A9/")))
    });
    g.bench_function("normalize_query/none", |b| {
        b.iter(|| key::normalize_query(black_box(None), &all))
    });
    g.bench_function("normalize_query/three_params", |b| {
        b.iter(|| key::normalize_query(black_box(Some("utm_source=x&page=2&sort=-date")), &all))
    });
    g.bench_function("normalize_query/include_one", |b| {
        b.iter(|| key::normalize_query(black_box(Some("utm_source=x&page=2&sort=-date")), &page))
    });
    let who = KeyIdentity {
        role: Some("staff"),
        tenant: Some("acme"),
        user: None,
    };
    g.bench_function("base_key", |b| {
        b.iter(|| key::base_key("cachegate:v1", "course_list", "", black_box("/courses/"), "page=2", who))
    });
    let base = key::base_key("cachegate:v1", "course_list", "", "/courses/", "page=2", who);
    let mut headers = HeaderMap::new();
    headers.insert("accept-language", HeaderValue::from_static("de-CH"));
    let vary = [http::header::ACCEPT_LANGUAGE];
    g.bench_function("full_key/vary_one", |b| {
        let input = key::VaryInput {
            headers: &headers,
            cookies: "",
            credentials_unresolved: false,
        };
        b.iter(|| key::full_key(black_box(&base), &vary, input))
    });
    g.finish();
}

fn routes(c: &mut Criterion) {
    // Six typical patterns, in file order; the proxy takes the first that matches.
    let patterns: Vec<PathPattern> = [
        "/courses/",
        "/courses/{id}/",
        "/students/",
        "/lectures/{id}/",
        "/blockchain/statistics/",
        "/static/{*rest}",
    ]
    .iter()
    .map(|p| PathPattern::new(p).unwrap())
    .collect();
    let mut g = c.benchmark_group("route");
    for path in ["/courses/", "/lectures/17/", "/static/css/site.css", "/admin/"] {
        g.bench_with_input(BenchmarkId::new("first_match", path), path, |b, path| {
            b.iter(|| patterns.iter().position(|p| p.matches(black_box(path))))
        });
    }
    g.bench_function("params/lectures", |b| {
        b.iter(|| patterns[3].params(black_box("/lectures/17/")))
    });
    g.finish();
}

fn entry(size: usize) -> WireEntry {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("cache-control", HeaderValue::from_static("public, max-age=600"));
    headers.insert("date", HeaderValue::from_static("Tue, 24 Nov 2026 05:00:00 GMT"));
    headers.insert("via", HeaderValue::from_static("1.1 cachegate"));
    // JSON-like and only partly repetitive, so lz4 has work to do.
    let pattern = b"{\"id\":0123456789,\"name\":\"abcdefghij\"}";
    let body: Vec<u8> = (0..size).map(|i| pattern[(i * 7 + i / 13) % pattern.len()]).collect();
    WireEntry {
        status: StatusCode::OK,
        headers,
        body: Bytes::from(body),
        stored_at_ms: 1_795_000_000_000,
        initial_age: Duration::ZERO,
        fresh_for: Duration::from_secs(600),
        stale: StaleWindows {
            revalidate: Duration::from_secs(30),
            if_error: Duration::from_secs(300),
            keep: Duration::from_secs(600),
        },
        surrogate: Vec::new(),
    }
}

fn encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("entry");
    for size in [2 * 1024, 32 * 1024] {
        let e = entry(size);
        let mut buf = Vec::new();
        e.encode(&mut buf);
        let encoded = Bytes::from(buf);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("encode", size), &e, |b, e| {
            b.iter(|| {
                let mut out = Vec::with_capacity(e.body.len() + 256);
                e.encode(&mut out);
                out
            })
        });
        g.bench_with_input(BenchmarkId::new("decode", size), &encoded, |b, enc| {
            b.iter(|| WireEntry::decode(black_box(enc)).unwrap())
        });
    }
    g.finish();
}

fn hit_headers(c: &mut Criterion) {
    let e = entry(2 * 1024);
    let mut prepared = e.headers.clone();
    prepared.insert(http::header::AGE, HeaderValue::from_static("0"));
    prepared.insert("x-cache", HeaderValue::from_static("HIT"));
    prepared.insert("cache-status", HeaderValue::from_static("cachegate; hit"));
    let mut g = c.benchmark_group("hit_headers");
    g.bench_function("clone_prepared_and_set_age", |b| {
        b.iter(|| {
            let mut h = black_box(&prepared).clone();
            h.insert(http::header::AGE, age_value(black_box(42)));
            h
        })
    });
    g.bench_function("clone_then_insert_three", |b| {
        b.iter(|| {
            let mut h = black_box(&e.headers).clone();
            h.insert(http::header::AGE, HeaderValue::from(black_box(42u64)));
            h.insert("x-cache", HeaderValue::from_static("HIT"));
            h.insert("cache-status", HeaderValue::from_static("cachegate; hit"));
            h
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = keys, routes, encoding, hit_headers
}
criterion_main!(benches);
