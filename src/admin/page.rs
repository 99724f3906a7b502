//! The status page (`GET /` on the admin listener): one self-contained HTML document, no
//! script, no external assets, refreshed by the browser every few seconds.
//!
//! Rendering is a pure function of a [`StatusView`] gathered by the admin handler, so what the
//! page shows is what `/admin/stats` shows, read at the same moment. Every string that comes from
//! the config, a request or another instance goes through [`escape`]. Figures carry `id`s and
//! `data-` attributes with the raw numbers, so a script (or a test) reads them exactly.

use std::fmt::Write;
use std::time::Duration;

use crate::coherence::Peer;
use crate::invalidation::PurgeRecord;
use crate::recent::{Second, Summary};

/// Seconds between the browser's reloads of the page.
pub(crate) const REFRESH_SECONDS: u32 = 5;

/// Everything the page shows.
pub(crate) struct StatusView {
    pub(crate) version: &'static str,
    pub(crate) uptime_seconds: u64,
    pub(crate) routes: Vec<RouteRow>,
    /// `(route, reason, count)`, largest first.
    pub(crate) bypass_reasons: Vec<(String, String, u64)>,
    /// The last minute, for the figures.
    pub(crate) minute: Summary,
    /// The last minutes, for the sparklines.
    pub(crate) history: Summary,
    pub(crate) memory: MemoryView,
    pub(crate) redis: RedisView,
    pub(crate) instances: InstancesView,
    /// Newest first.
    pub(crate) purges: Vec<PurgeRecord>,
    pub(crate) reload: ReloadView,
    /// Per-tenant hit figures; empty without `[metrics] tenant_labels`.
    pub(crate) tenants: Vec<TenantRow>,
}

/// One route's lookups since start.
pub(crate) struct RouteRow {
    pub(crate) name: String,
    pub(crate) memory_hits: u64,
    pub(crate) redis_hits: u64,
    pub(crate) stale: u64,
    pub(crate) misses: u64,
    pub(crate) bypasses: u64,
}

impl RouteRow {
    /// Fresh hits from either tier.
    pub(crate) fn hits(&self) -> u64 {
        self.memory_hits + self.redis_hits
    }

    /// Hits over hits and misses, as `/admin/stats` computes it; `None` without either.
    pub(crate) fn hit_ratio(&self) -> Option<f64> {
        let looked = self.hits() + self.misses;
        (looked > 0).then(|| self.hits() as f64 / looked as f64)
    }
}

/// One tenant's lookups, for the per-tenant table.
pub(crate) struct TenantRow {
    pub(crate) tenant: String,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
}

/// The memory tier against its bound.
pub(crate) struct MemoryView {
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
    pub(crate) capacity_bytes: u64,
}

/// The Redis tier as last asked.
pub(crate) enum RedisView {
    NotConfigured,
    Up {
        /// How long `INFO`/`DBSIZE` took to answer this page.
        latency: Duration,
        used_memory_bytes: u64,
        keys: u64,
        /// Seed nodes, when it is a cluster.
        cluster_nodes: Option<usize>,
    },
    Down {
        error: String,
        cluster_nodes: Option<usize>,
    },
}

/// This instance and the others heard on the purge channel.
pub(crate) struct InstancesView {
    /// `None` without Redis.
    pub(crate) own_id: Option<u64>,
    pub(crate) peers: Vec<(u64, Peer)>,
    pub(crate) now_unix: u64,
}

/// The config in force and the last reload.
pub(crate) struct ReloadView {
    pub(crate) file: String,
    pub(crate) loaded_at_unix: u64,
    /// `(when, accepted, message)` of the last reload, when there was one.
    pub(crate) last: Option<(u64, bool, String)>,
}

/// `s` made safe for HTML text and quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ratio_attr(r: Option<f64>) -> String {
    r.map_or_else(String::new, |r| format!("{r:.4}"))
}

fn percent(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{ms:.1} ms")
    }
}

fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

/// A polyline of `values` scaled to `max` (at least 1), `w`×`h` pixels.
fn sparkline(id: &str, label: &str, values: &[f64], max: f64) -> String {
    let (w, h) = (300.0, 40.0);
    let max = max.max(1e-9);
    let step = if values.len() > 1 {
        w / (values.len() - 1) as f64
    } else {
        w
    };
    let mut points = String::new();
    for (i, v) in values.iter().enumerate() {
        let y = h - (v / max).clamp(0.0, 1.0) * (h - 2.0) - 1.0;
        let _ = write!(points, "{:.1},{:.1} ", i as f64 * step, y);
    }
    format!(
        r#"<svg id="{id}" class="spark" viewBox="0 0 {w} {h}" preserveAspectRatio="none" role="img" aria-label="{label}"><polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{}"/></svg>"#,
        points.trim_end()
    )
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0;padding:12px;background:#f6f7f9;color:#1d2330}
h1{font-size:18px;margin:0 0 8px}h2{font-size:15px;margin:0 0 6px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:12px}
.wide{grid-column:1/-1}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px;overflow-x:auto}
table{border-collapse:collapse;width:100%}th,td{text-align:right;padding:3px 6px;border-bottom:1px solid #eef0f3;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
.spark{width:100%;height:40px;color:#2d6cdf}.muted{color:#6b7280}.bad{color:#b42318}.ok{color:#067647}
.big{font-size:20px;font-weight:600}
";

/// The whole page.
pub(crate) fn render(v: &StatusView) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta http-equiv="refresh" content="{REFRESH_SECONDS}"><title>cachegate status</title><style>{STYLE}</style></head><body><h1>cachegate {} <span class="muted">up {}s, refreshes every {REFRESH_SECONDS}s</span></h1><div class="grid">"#,
        escape(v.version),
        v.uptime_seconds,
    );
    traffic(&mut h, v);
    routes(&mut h, v);
    bypasses(&mut h, v);
    tiers(&mut h, v);
    instances(&mut h, v);
    purges(&mut h, v);
    reload(&mut h, v);
    tenants(&mut h, v);
    h.push_str("</div></body></html>\n");
    h
}

fn traffic(h: &mut String, v: &StatusView) {
    let m = &v.minute;
    let rate = m.counts.total() as f64 / m.seconds.max(1) as f64;
    let lat = |p: Option<(Duration, Duration)>| match p {
        Some((p50, p99)) => (millis(p50), millis(p99)),
        None => ("-".into(), "-".into()),
    };
    let ((hit50, hit99), (miss50, miss99)) = (lat(m.hit_p50_p99), lat(m.miss_p50_p99));
    let rates: Vec<f64> = v.history.per_second.iter().map(|s| s.total() as f64).collect();
    let max_rate = rates.iter().copied().fold(0.0, f64::max);
    let ratios: Vec<f64> = v
        .history
        .per_second
        .iter()
        .map(|s: &Second| s.hit_ratio().unwrap_or(0.0))
        .collect();
    let _ = write!(
        h,
        r#"<section id="traffic"><h2>Traffic, last {secs}s</h2>
<div class="big"><span id="rate" data-value="{rate:.3}">{rate:.1}</span> req/s · hit ratio <span id="minute-ratio" data-value="{ratio_attr}">{ratio}</span></div>
<table><tr><th></th><th>p50</th><th>p99</th></tr>
<tr><td>hit latency</td><td id="hit-p50">{hit50}</td><td id="hit-p99">{hit99}</td></tr>
<tr><td>miss latency</td><td id="miss-p50">{miss50}</td><td id="miss-p99">{miss99}</td></tr></table>
<div class="muted">requests per second, last {hist}s (peak {max_rate:.0})</div>{rate_svg}
<div class="muted">hit ratio per second, last {hist}s</div>{ratio_svg}</section>"#,
        secs = m.seconds,
        ratio_attr = ratio_attr(m.counts.hit_ratio()),
        ratio = percent(m.counts.hit_ratio()),
        hist = v.history.seconds,
        rate_svg = sparkline("spark-rate", "requests per second", &rates, max_rate),
        ratio_svg = sparkline("spark-ratio", "hit ratio per second", &ratios, 1.0),
    );
}

fn routes(h: &mut String, v: &StatusView) {
    h.push_str(r#"<section id="routes" class="wide"><h2>Routes since start</h2><table><tr><th>route</th><th>memory</th><th>redis</th><th>miss</th><th>stale</th><th>bypass</th><th>hit ratio</th></tr>"#);
    for r in &v.routes {
        let name = escape(&r.name);
        let _ = write!(
            h,
            r#"<tr class="route" data-route="{name}" data-hits="{hits}" data-memory="{mem}" data-redis="{redis}" data-misses="{miss}" data-stale="{stale}" data-bypasses="{bypass}" data-ratio="{ratio_attr}"><td>{name}</td><td>{mem}</td><td>{redis}</td><td>{miss}</td><td>{stale}</td><td>{bypass}</td><td>{ratio}</td></tr>"#,
            hits = r.hits(),
            mem = r.memory_hits,
            redis = r.redis_hits,
            miss = r.misses,
            stale = r.stale,
            bypass = r.bypasses,
            ratio_attr = ratio_attr(r.hit_ratio()),
            ratio = percent(r.hit_ratio()),
        );
    }
    h.push_str("</table></section>");
}

fn bypasses(h: &mut String, v: &StatusView) {
    h.push_str(r#"<section id="bypass"><h2>Top bypass reasons</h2>"#);
    if v.bypass_reasons.is_empty() {
        h.push_str(r#"<p class="muted">none yet</p></section>"#);
        return;
    }
    h.push_str("<table><tr><th>route</th><th>reason</th><th>count</th></tr>");
    for (route, reason, n) in &v.bypass_reasons {
        let (route, reason) = (escape(route), escape(reason));
        let _ = write!(
            h,
            r#"<tr class="bypass" data-route="{route}" data-reason="{reason}" data-count="{n}"><td>{route}</td><td>{reason}</td><td>{n}</td></tr>"#
        );
    }
    h.push_str("</table></section>");
}

fn tiers(h: &mut String, v: &StatusView) {
    let m = &v.memory;
    let used = if m.capacity_bytes == 0 {
        0.0
    } else {
        m.bytes as f64 / m.capacity_bytes as f64 * 100.0
    };
    let _ = write!(
        h,
        r#"<section id="tiers"><h2>Tiers</h2><table><tr><td>memory</td><td id="memory" data-entries="{}" data-bytes="{}" data-capacity="{}">{} entries, {} of {} ({used:.1}%)</td></tr>"#,
        m.entries,
        m.bytes,
        m.capacity_bytes,
        m.entries,
        bytes(m.bytes),
        bytes(m.capacity_bytes),
    );
    let cluster = |n: &Option<usize>| n.map_or_else(String::new, |n| format!(", cluster of {n} seed nodes"));
    match &v.redis {
        RedisView::NotConfigured => {
            h.push_str(r#"<tr><td>redis</td><td id="redis" data-state="off" class="muted">not configured</td></tr>"#)
        }
        RedisView::Up {
            latency,
            used_memory_bytes,
            keys,
            cluster_nodes,
        } => {
            let _ = write!(
                h,
                r#"<tr><td>redis</td><td id="redis" data-state="up" data-keys="{keys}" class="ok">up, {} to answer, {keys} keys, {}{}</td></tr>"#,
                millis(*latency),
                bytes(*used_memory_bytes),
                cluster(cluster_nodes),
            );
        }
        RedisView::Down { error, cluster_nodes } => {
            let _ = write!(
                h,
                r#"<tr><td>redis</td><td id="redis" data-state="down" class="bad">down: {}{}</td></tr>"#,
                escape(error),
                cluster(cluster_nodes),
            );
        }
    }
    h.push_str("</table></section>");
}

fn instances(h: &mut String, v: &StatusView) {
    let i = &v.instances;
    h.push_str(r#"<section id="instances"><h2>Instances on the purge channel</h2>"#);
    let Some(own) = i.own_id else {
        h.push_str(r#"<p class="muted">no Redis: purges reach this instance only</p></section>"#);
        return;
    };
    let _ = write!(
        h,
        r#"<table><tr><th>instance</th><th>last ack</th><th>last purge</th></tr><tr><td>{own:016x} (this one)</td><td>-</td><td>-</td></tr>"#
    );
    let when = |t: Option<u64>| t.map_or_else(|| "-".to_string(), |t| ago(i.now_unix, t));
    for (id, p) in &i.peers {
        let _ = write!(
            h,
            r#"<tr class="peer" data-id="{id:016x}" data-last-ack="{}"><td>{id:016x}</td><td>{}</td><td>{}</td></tr>"#,
            p.last_ack_unix.map_or_else(String::new, |t| t.to_string()),
            when(p.last_ack_unix),
            when(p.last_purge_unix),
        );
    }
    h.push_str("</table></section>");
}

fn purges(h: &mut String, v: &StatusView) {
    let _ = write!(
        h,
        r#"<section id="purges" class="wide"><h2>Last purges</h2><table id="purge-list" data-count="{}"><tr><th>when</th><th>trigger</th><th>scopes</th><th>acked</th><th>took</th></tr>"#,
        v.purges.len()
    );
    for p in &v.purges {
        let o = &p.outcome;
        let mut scopes = p.scopes.iter().map(|s| escape(s)).collect::<Vec<_>>().join(" ");
        if p.scope_count > p.scopes.len() {
            let _ = write!(scopes, " … ({} in all)", p.scope_count);
        }
        if p.soft {
            scopes.push_str(" (soft)");
        }
        let took = o.propagation.map_or_else(|| "-".to_string(), millis);
        let _ = write!(
            h,
            r#"<tr class="purge" data-trigger="{trigger}" data-acked="{acked}" data-instances="{inst}" data-scopes="{n}"><td>{when}</td><td>{trigger}</td><td>{scopes}</td><td>{acked} of {inst}</td><td>{took}</td></tr>"#,
            trigger = p.trigger.as_str(),
            acked = o.acked(),
            inst = o.instances(),
            n = p.scope_count,
            when = ago(v.instances.now_unix, p.at_unix),
        );
    }
    h.push_str("</table></section>");
}

fn reload(h: &mut String, v: &StatusView) {
    let r = &v.reload;
    let _ = write!(
        h,
        r#"<section id="reload"><h2>Config</h2><table><tr><td>file</td><td>{}</td></tr><tr><td>in force since</td><td data-unix="{}">{}</td></tr>"#,
        escape(&r.file),
        r.loaded_at_unix,
        ago(v.instances.now_unix, r.loaded_at_unix),
    );
    match &r.last {
        None => h.push_str(r#"<tr><td>last reload</td><td id="last-reload" data-result="none" class="muted">none since start</td></tr>"#),
        Some((at, ok, msg)) => {
            let (result, class) = if *ok { ("ok", "ok") } else { ("refused", "bad") };
            let _ = write!(
                h,
                r#"<tr><td>last reload</td><td id="last-reload" data-result="{result}" class="{class}">{result} {}: {}</td></tr>"#,
                ago(v.instances.now_unix, *at),
                escape(msg),
            );
        }
    }
    h.push_str("</table></section>");
}

// Per-tenant figures from `cachegate_tenant_lookups_total`; without `[metrics] tenant_labels`
// the list is empty and nothing is shown.
fn tenants(h: &mut String, v: &StatusView) {
    if v.tenants.is_empty() {
        return;
    }
    h.push_str(r#"<section id="tenants"><h2>Tenants</h2><table><tr><th>tenant</th><th>hits</th><th>misses</th><th>hit ratio</th></tr>"#);
    for t in &v.tenants {
        let looked = t.hits + t.misses;
        let ratio = (looked > 0).then(|| t.hits as f64 / looked as f64);
        let name = escape(&t.tenant);
        let _ = write!(
            h,
            r#"<tr class="tenant" data-tenant="{name}" data-hits="{}" data-misses="{}"><td>{name}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            t.hits,
            t.misses,
            t.hits,
            t.misses,
            percent(ratio),
        );
    }
    h.push_str("</table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recent::Recent;

    #[test]
    fn escape_covers_markup_and_both_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape("plain_route-1 é"), "plain_route-1 é");
        assert_eq!(escape("&amp;"), "&amp;amp;", "escaping twice is visible, not undone");
    }

    fn view() -> StatusView {
        let summary = Recent::new().summary_at(0, 60);
        StatusView {
            version: "0.0.0",
            uptime_seconds: 1,
            routes: vec![RouteRow {
                name: r#"a"><img src=x onerror=alert(1)>"#.into(),
                memory_hits: 3,
                redis_hits: 1,
                stale: 0,
                misses: 4,
                bypasses: 2,
            }],
            bypass_reasons: vec![("r".into(), "<reason>".into(), 2)],
            minute: summary.clone(),
            history: summary,
            memory: MemoryView {
                entries: 1,
                bytes: 10,
                capacity_bytes: 100,
            },
            redis: RedisView::Down {
                error: "<down & out>".into(),
                cluster_nodes: None,
            },
            instances: InstancesView {
                own_id: None,
                peers: Vec::new(),
                now_unix: 0,
            },
            purges: Vec::new(),
            reload: ReloadView {
                file: "/etc/<x>.toml".into(),
                loaded_at_unix: 0,
                last: Some((0, false, "bad 'key'".into())),
            },
            tenants: vec![TenantRow {
                tenant: "<t>".into(),
                hits: 1,
                misses: 0,
            }],
        }
    }

    #[test]
    fn every_outside_string_is_escaped_in_the_page() {
        let page = render(&view());
        for raw in ["<img", "<reason>", "<down", "<x>", "'key'", "<t>"] {
            assert!(!page.contains(raw), "{raw:?} reached the page unescaped");
        }
        assert!(page.contains("a&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!page.contains("<script"), "the page has no script");
    }

    #[test]
    fn route_figures_are_in_data_attributes() {
        let page = render(&view());
        assert!(page.contains(r#"data-hits="4" data-memory="3" data-redis="1" data-misses="4" data-stale="0" data-bypasses="2" data-ratio="0.5000""#));
        assert!(page.contains(">50.0%<"));
        assert!(page.contains(r#"<section id="tenants">"#));
    }

    #[test]
    fn a_quiet_route_shows_no_ratio() {
        let row = RouteRow {
            name: "r".into(),
            memory_hits: 0,
            redis_hits: 0,
            stale: 0,
            misses: 0,
            bypasses: 3,
        };
        assert_eq!(row.hit_ratio(), None);
        assert_eq!(percent(row.hit_ratio()), "-");
    }
}
