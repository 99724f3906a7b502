//! What the CLI verbs print: the stats table, the purge summary and warm failures. Every field is
//! read leniently so an older or newer server still gives a readable answer.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use cachegate::warm::WarmFailure;

fn num(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_u64()
}

fn size(n: Option<u64>) -> String {
    n.map_or_else(|| "?".into(), |n| bytesize::ByteSize(n).to_string())
}

/// `/admin/stats` as aligned lines and a per-route table.
pub(super) fn stats_table(v: &Value) -> String {
    let mut out = String::new();
    let uptime = num(v, &["uptime_seconds"]).map_or_else(
        || "?".into(),
        |s| humantime::format_duration(Duration::from_secs(s)).to_string(),
    );
    let file = v.pointer("/config/file").and_then(Value::as_str).unwrap_or("?");
    let memory = format!(
        "{} entries, {} of {}",
        num(v, &["memory", "entries"]).map_or_else(|| "?".into(), |n| n.to_string()),
        size(num(v, &["memory", "bytes"])),
        size(num(v, &["memory", "capacity_bytes"])),
    );
    let redis = match v.get("redis") {
        Some(r) if r.get("configured") == Some(&Value::Bool(false)) => "not configured (memory tier only)".into(),
        Some(r) if r.get("up") == Some(&Value::Bool(true)) => format!(
            "up, {} used, {} keys",
            size(num(r, &["used_memory_bytes"])),
            num(r, &["keys"]).map_or_else(|| "?".into(), |n| n.to_string()),
        ),
        Some(r) => format!(
            "down: {}",
            r.get("error").and_then(Value::as_str).unwrap_or("unknown error")
        ),
        None => "?".into(),
    };
    for (k, val) in [
        ("uptime", uptime),
        ("config", file.into()),
        ("memory", memory),
        ("redis", redis),
    ] {
        let _ = writeln!(out, "{k:<8} {val}");
    }
    let routes = v.get("routes").and_then(Value::as_array).cloned().unwrap_or_default();
    let width = routes
        .iter()
        .filter_map(|r| r.get("route").and_then(Value::as_str))
        .map(str::len)
        .chain([5])
        .max()
        .unwrap_or(5);
    let _ = writeln!(
        out,
        "\n{:<width$}  {:>10}  {:>10}  {:>10}  {:>9}",
        "route", "hits", "misses", "bypasses", "hit ratio"
    );
    for r in &routes {
        let name = r.get("route").and_then(Value::as_str).unwrap_or("?");
        let count = |k: &str| num(r, &[k]).unwrap_or(0);
        let (hits, misses) = (count("hits"), count("misses"));
        let ratio = match r.get("hit_ratio").and_then(Value::as_f64) {
            _ if hits + misses == 0 => "-".to_string(),
            Some(x) => format!("{:.1}%", x * 100.0),
            None => format!("{:.1}%", hits as f64 * 100.0 / (hits + misses) as f64),
        };
        let _ = writeln!(
            out,
            "{name:<width$}  {hits:>10}  {misses:>10}  {:>10}  {ratio:>9}",
            count("bypasses")
        );
    }
    out
}

/// The `POST /purge` answer in one line.
pub(super) fn purge_summary(v: &Value) -> String {
    let n = num(v, &["purged"]).unwrap_or(0);
    let scopes: Vec<&str> = v
        .get("scopes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut line = format!("purged {n} scope{}", if n == 1 { "" } else { "s" });
    if !scopes.is_empty() {
        let _ = write!(line, ": {}", scopes.join(", "));
    }
    if v.get("soft") == Some(&Value::Bool(true)) {
        line.push_str(" (soft: marked stale)");
    }
    let receipt = num(v, &["acked"]).zip(num(v, &["instances"]));
    match (
        v.get("shared").and_then(Value::as_bool),
        receipt,
        num(v, &["instances_acked"]),
    ) {
        (Some(true), Some((acked, instances)), _) => {
            let _ = write!(
                line,
                "; shared through Redis, applied by {acked} of {instances} instances"
            );
            if let Some(s) = v.get("propagation_seconds").and_then(Value::as_f64) {
                let _ = write!(line, " in {:.1} ms", s * 1000.0);
            }
        }
        // An instance from before purge receipts.
        (Some(true), None, Some(acks)) => {
            let _ = write!(line, "; shared through Redis, {acks} instance(s) acknowledged");
        }
        (Some(false), _, _) => line.push_str("; this instance only (no Redis)"),
        _ => {}
    }
    line
}

/// One line per warm failure, at most 20, then a count of the rest.
pub(super) fn failures(list: &[WarmFailure]) -> String {
    let mut out = String::new();
    for f in list.iter().take(20) {
        let who = match (&f.role, &f.tenant) {
            (None, None) => "anonymous".to_string(),
            (r, t) => format!(
                "role {}, tenant {}",
                r.as_deref().unwrap_or("-"),
                t.as_deref().unwrap_or("-")
            ),
        };
        let _ = writeln!(out, "failed: {} ({who}): {}", f.path, f.error);
    }
    if list.len() > 20 {
        let _ = writeln!(out, "... and {} more failures", list.len() - 20);
    }
    out
}
