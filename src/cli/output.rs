//! What the CLI verbs print: the stats table, the purge summary, warm failures and
//! explanations. Every field is
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

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn list(v: &Value, pointer: &str) -> String {
    let items: Vec<&str> = v
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

fn part(v: &Value, name: &str) -> String {
    let p = v.pointer(&format!("/identity/{name}")).cloned().unwrap_or(Value::Null);
    let value = match (p.get("value").and_then(Value::as_str), p.get("unresolved")) {
        (Some(x), _) => x.to_string(),
        (None, Some(Value::Bool(true))) => "unresolved".into(),
        (None, _) => "-".into(),
    };
    let source = p.get("source").and_then(Value::as_str).unwrap_or("?");
    format!("{name} {value} ({source})")
}

fn tier_line(t: &Value) -> String {
    match (t.get("present"), t.get("configured"), t.get("up")) {
        (_, Some(Value::Bool(false)), _) => "not configured".into(),
        (_, _, Some(Value::Bool(false))) => format!("down: {}", t.get("error").and_then(Value::as_str).unwrap_or("?")),
        (Some(Value::Bool(true)), _, _) => {
            let mut line = format!(
                "{}, age {}s",
                t.get("freshness").and_then(Value::as_str).unwrap_or("?"),
                t.get("age_seconds").and_then(Value::as_u64).unwrap_or(0)
            );
            if t.get("purged") == Some(&Value::Bool(true)) {
                line.push_str(", purged");
            } else if t.get("soft_purged") == Some(&Value::Bool(true)) {
                line.push_str(", soft-purged");
            }
            if t.get("trusted") == Some(&Value::Bool(false)) {
                line.push_str(", not trusted now (purges may have been missed)");
            }
            line
        }
        _ => "not there".into(),
    }
}

/// A `POST /admin/explain` answer as aligned lines.
pub(super) fn explanation(v: &Value) -> String {
    let mut out = String::new();
    let result = text(v, "/result").unwrap_or("?").to_uppercase();
    let verdict = match (text(v, "/tier"), text(v, "/bypass_reason")) {
        (Some(t), _) => format!("{result} from {t}"),
        (None, Some(r)) => format!("{result} ({r})"),
        _ => result,
    };
    let query = text(v, "/request/query").map_or(String::new(), |q| format!("?{q}"));
    let _ = writeln!(
        out,
        "{} {}{query}: {verdict}\n  {}",
        text(v, "/request/method").unwrap_or("?"),
        text(v, "/request/path").unwrap_or("?"),
        text(v, "/why").unwrap_or("")
    );
    let mut lines: Vec<(&str, String)> = Vec::new();
    let route = match v.get("route") {
        Some(r) if r.is_object() => format!(
            "{} (route[{}], {}), varies on {}{}",
            r.get("name").and_then(Value::as_str).unwrap_or("?"),
            r.get("index").and_then(Value::as_u64).unwrap_or(0),
            r.get("path").and_then(Value::as_str).unwrap_or("?"),
            list(r, "/vary").replace('-', "nobody"),
            if r.get("public") == Some(&Value::Bool(true)) {
                ", public"
            } else {
                ""
            },
        ),
        _ => "none matches".into(),
    };
    lines.push(("route", route));
    let trusted = if v.pointer("/request/trusted_peer") == Some(&Value::Bool(true)) {
        "trusted"
    } else {
        "not trusted"
    };
    lines.push((
        "peer",
        format!("{} ({trusted})", text(v, "/request/peer").unwrap_or("?")),
    ));
    lines.push(("headers", list(v, "/request/headers")));
    let dropped = list(v, "/request/dropped_headers");
    if dropped != "-" {
        lines.push((
            "dropped",
            format!("{dropped} (removed before anything reads the request)"),
        ));
    }
    lines.push(("cookies", list(v, "/request/cookies")));
    lines.push(("identity", ["role", "tenant", "user"].map(|p| part(v, p)).join("; ")));
    lines.push(("creds", list(v, "/identity/credentials")));
    if let Some(j) = text(v, "/identity/jwt") {
        lines.push(("jwt", j.into()));
    }
    if let Some(s) = text(v, "/identity/session") {
        lines.push(("session", s.into()));
    }
    if let Some(k) = text(v, "/key/full") {
        lines.push(("key", k.into()));
        let vary = match v.pointer("/key/vary_input").and_then(Value::as_object) {
            Some(m) if !m.is_empty() => m
                .iter()
                .map(|(n, x)| format!("{n} = {}", x.as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join("; "),
            _ => "-".into(),
        };
        lines.push(("vary", vary));
        lines.push(("scopes", list(v, "/scopes")));
        lines.push(("tags", list(v, "/tags")));
    }
    if v.get("purges_on_success").is_some() {
        lines.push(("purges", list(v, "/purges_on_success")));
    }
    if let Some(s) = v.get("stored") {
        lines.push(("memory", tier_line(s.get("memory").unwrap_or(&Value::Null))));
        lines.push(("redis", tier_line(s.get("redis").unwrap_or(&Value::Null))));
    }
    for (k, val) in lines {
        let _ = writeln!(out, "{k:<9} {val}");
    }
    out
}
