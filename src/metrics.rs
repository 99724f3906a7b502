//! Every metric cachegate exports: names, help, labels and buckets, in one place. Above only
//! [`recent`](crate::recent): the modules that count events own their label values and create
//! their series at 0 (`prime_metrics` next to each).
//!
//! Metrics live on a [`prometheus::Registry`] built at start-up and passed in, so tests get a
//! fresh registry each. Labels are bounded: route names (never paths), fixed reason and result
//! sets. Histogram buckets resolve both a 50 µs memory hit and a multi-second origin miss.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// The `route` label of requests no route matches (and of session lookups).
pub const NO_ROUTE: &str = "none";

/// Latency buckets from 25 µs to 30 s.
const BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// The `result` label of an operation that either works or not (config reloads, session
/// lookups).
pub fn result_label(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "error"
    }
}

/// All metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `cachegate_requests_total{route, method, status}`
    pub requests: IntCounterVec,
    /// `cachegate_cache_lookups_total{route, result, tier}`
    pub lookups: IntCounterVec,
    /// `cachegate_bypass_total{route, reason}`
    pub bypass: IntCounterVec,
    /// `cachegate_request_duration_seconds{route, cache}`
    pub request_duration: HistogramVec,
    /// `cachegate_origin_request_duration_seconds{route}`
    pub origin_duration: HistogramVec,
    /// `cachegate_origin_errors_total{kind}`
    pub origin_errors: IntCounterVec,
    /// `cachegate_purges_total{trigger, kind}`
    pub purges: IntCounterVec,
    /// `cachegate_purged_entries_total` (scopes invalidated; entries are never enumerated)
    pub purged: IntCounter,
    /// `cachegate_coalesced_requests_total{route}`
    pub coalesced: IntCounterVec,
    /// `cachegate_redis_up`
    pub redis_up: IntGauge,
    /// `cachegate_redis_errors_total{op}`
    pub redis_errors: IntCounterVec,
    /// `cachegate_memory_entries`
    pub memory_entries: IntGauge,
    /// `cachegate_memory_bytes`
    pub memory_bytes: IntGauge,
    /// `cachegate_memory_evictions_total`
    pub memory_evictions: IntCounter,
    /// `cachegate_config_reloads_total{result}`
    pub config_reloads: IntCounterVec,
    /// `cachegate_identity_lookups_total{result}`
    pub identity_lookups: IntCounterVec,
    /// `cachegate_identity_lookup_duration_seconds`
    pub identity_lookup_duration: Histogram,
    /// `cachegate_purge_propagation_seconds`
    pub purge_propagation: Histogram,
    /// The last minutes, per second, for the status page.
    pub recent: std::sync::Arc<crate::recent::Recent>,
    /// `cachegate_tenant_lookups_total{tenant, result}` (tenants from `[metrics] tenant_labels`)
    pub tenant_lookups: IntCounterVec,
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    reg.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn histogram(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()), labels)
        .expect("valid metric definition");
    reg.register(Box::new(h.clone())).expect("metric registered once");
    h
}

impl Metrics {
    /// Registers every metric on a new registry.
    pub fn new() -> Self {
        Self::register(&Registry::new())
    }

    /// Registers every metric on `registry`, which `/metrics` then renders (with anything else
    /// registered on it).
    ///
    /// # Panics
    /// When `registry` already holds a metric of the same name; never on a fresh registry.
    pub fn register(registry: &Registry) -> Self {
        let reg = registry.clone();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric definition");
            reg.register(Box::new(g.clone())).expect("metric registered once");
            g
        };
        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric definition");
            reg.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let lookup_duration = Histogram::with_opts(
            HistogramOpts::new(
                "cachegate_identity_lookup_duration_seconds",
                "Session lookups sent to the origin, by latency",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .expect("valid metric definition");
        reg.register(Box::new(lookup_duration.clone()))
            .expect("metric registered once");
        let purge_propagation = Histogram::with_opts(
            HistogramOpts::new(
                "cachegate_purge_propagation_seconds",
                "Shared purges, from publishing to the last instance's acknowledgement (or the lease running out)",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .expect("valid metric definition");
        reg.register(Box::new(purge_propagation.clone()))
            .expect("metric registered once");
        Metrics {
            requests: counter(
                &reg,
                "cachegate_requests_total",
                "Requests answered",
                &["route", "method", "status"],
            ),
            lookups: counter(
                &reg,
                "cachegate_cache_lookups_total",
                "Requests on cached routes, by result and the tier that answered (none for misses and bypasses)",
                &["route", "result", "tier"],
            ),
            bypass: counter(
                &reg,
                "cachegate_bypass_total",
                "Answers not served from or stored in the cache, by reason",
                &["route", "reason"],
            ),
            request_duration: histogram(
                &reg,
                "cachegate_request_duration_seconds",
                "Time to answer a request, by route and cache result",
                &["route", "cache"],
            ),
            origin_duration: histogram(
                &reg,
                "cachegate_origin_request_duration_seconds",
                "Time for the origin's response headers",
                &["route"],
            ),
            origin_errors: counter(&reg, "cachegate_origin_errors_total", "Origin failures", &["kind"]),
            purges: counter(
                &reg,
                "cachegate_purges_total",
                "Purges, by trigger and kind",
                &["trigger", "kind"],
            ),
            purged: plain_counter(
                "cachegate_purged_entries_total",
                "Purge scopes invalidated (each may cover any number of entries)",
            ),
            coalesced: counter(
                &reg,
                "cachegate_coalesced_requests_total",
                "Requests that waited for another request's origin fetch",
                &["route"],
            ),
            redis_up: gauge(
                "cachegate_redis_up",
                "1 when the Redis tier answers, 0 when it is down or not configured",
            ),
            redis_errors: counter(&reg, "cachegate_redis_errors_total", "Failed Redis commands", &["op"]),
            memory_entries: gauge("cachegate_memory_entries", "Entries in the memory tier"),
            memory_bytes: gauge("cachegate_memory_bytes", "Bytes held by the memory tier"),
            memory_evictions: plain_counter(
                "cachegate_memory_evictions_total",
                "Memory tier entries evicted for size",
            ),
            config_reloads: counter(
                &reg,
                "cachegate_config_reloads_total",
                "Config reloads, by result",
                &["result"],
            ),
            identity_lookups: counter(
                &reg,
                "cachegate_identity_lookups_total",
                "Session lookups sent to the origin, by result",
                &["result"],
            ),
            identity_lookup_duration: lookup_duration,
            purge_propagation,
            recent: std::sync::Arc::default(),
            tenant_lookups: counter(
                &reg,
                "cachegate_tenant_lookups_total",
                "Requests on cached routes by tenant (labelled ones, other, none) and result",
                &["tenant", "result"],
            ),
            registry: reg,
        }
    }

    // === one accessor per labelled series: label order lives here only ===

    /// `cachegate_requests_total{route, method, status}`.
    pub fn request_counter(&self, route: &str, method: &str, status: &str) -> IntCounter {
        self.requests.with_label_values(&[route, method, status])
    }

    /// `cachegate_request_duration_seconds{route, cache}`.
    pub fn duration_histogram(&self, route: &str, cache: &str) -> Histogram {
        self.request_duration.with_label_values(&[route, cache])
    }

    /// `cachegate_cache_lookups_total{route, result, tier}`.
    pub fn lookup_counter(&self, route: &str, result: &str, tier: &str) -> IntCounter {
        self.lookups.with_label_values(&[route, result, tier])
    }

    /// How many lookups `cachegate_cache_lookups_total{route, result, tier}` has counted (0
    /// for a series that does not exist; reading does not create it).
    pub fn lookups_counted(&self, route: &str, result: &str, tier: &str) -> u64 {
        self.lookups
            .get_metric_with_label_values(&[route, result, tier])
            .map_or(0, |c| c.get())
    }

    /// `cachegate_tenant_lookups_total{tenant, result}`.
    pub fn tenant_lookup_counter(&self, tenant: &str, result: &str) -> IntCounter {
        self.tenant_lookups.with_label_values(&[tenant, result])
    }

    /// How many lookups `cachegate_tenant_lookups_total{tenant, result}` has counted.
    pub fn tenant_lookups_counted(&self, tenant: &str, result: &str) -> u64 {
        self.tenant_lookups
            .get_metric_with_label_values(&[tenant, result])
            .map_or(0, |c| c.get())
    }

    /// `cachegate_bypass_total{route, reason}`.
    pub fn bypass_counter(&self, route: &str, reason: &str) -> IntCounter {
        self.bypass.with_label_values(&[route, reason])
    }

    /// `cachegate_origin_request_duration_seconds{route}`.
    pub fn origin_latency(&self, route: &str) -> Histogram {
        self.origin_duration.with_label_values(&[route])
    }

    /// `cachegate_origin_errors_total{kind}`.
    pub fn origin_error_counter(&self, kind: &str) -> IntCounter {
        self.origin_errors.with_label_values(&[kind])
    }

    /// `cachegate_coalesced_requests_total{route}`.
    pub fn coalesced_counter(&self, route: &str) -> IntCounter {
        self.coalesced.with_label_values(&[route])
    }

    /// `cachegate_purges_total{trigger, kind}`.
    pub fn purge_counter(&self, trigger: &str, kind: &str) -> IntCounter {
        self.purges.with_label_values(&[trigger, kind])
    }

    /// `cachegate_redis_errors_total{op}`.
    pub fn redis_error_counter(&self, op: &str) -> IntCounter {
        self.redis_errors.with_label_values(&[op])
    }

    /// `cachegate_config_reloads_total{result}`.
    pub fn config_reload_counter(&self, ok: bool) -> IntCounter {
        self.config_reloads.with_label_values(&[result_label(ok)])
    }

    /// `cachegate_identity_lookups_total{result}`.
    pub fn identity_lookup_counter(&self, ok: bool) -> IntCounter {
        self.identity_lookups.with_label_values(&[result_label(ok)])
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
