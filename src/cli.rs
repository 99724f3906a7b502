//! The verbs that talk to a running instance through its admin listener: `stats`, `purge`,
//! `warm` and `explain`. The address comes from `--admin`, else from `[server] admin_listen` of `--config`
//! (else `127.0.0.1:9091` when the default `proxy.toml` does not exist); the token from `--token`,
//! else from the variable `[purge] token_env` names (`CACHEGATE_PURGE_TOKEN` by default).
//!
//! Every failure is a [`CliError`] whose message says what to fix; [`CliError::exit_code`] maps
//! it to 1 (the operation failed) or 64 (usage or configuration).

mod client;
mod output;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgGroup, Args};
use http::Method;
use indicatif::{ProgressBar, ProgressStyle};

use cachegate::warm::{WarmReport, WarmRequest, DEFAULT_CONCURRENCY};
use client::connect;
pub(crate) use client::CliError;

/// The config file read when `--config` is not given.
pub(crate) const DEFAULT_CONFIG: &str = "proxy.toml";
/// The admin listener used when no config says otherwise.
pub(crate) const DEFAULT_ADMIN: &str = "127.0.0.1:9091";
/// The variable holding the purge token when no config names one.
pub(crate) const DEFAULT_TOKEN_ENV: &str = "CACHEGATE_PURGE_TOKEN";

/// Where the running instance listens and how to authenticate to it.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct Remote {
    /// Admin listener of the running instance [default: [server] admin_listen of --config, else 127.0.0.1:9091].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Purge token, sent as a bearer token [default: $CACHEGATE_PURGE_TOKEN, or the variable [purge] token_env names].
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

/// `cachegate purge`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("what").required(true).multiple(true).args(["tags", "routes", "paths", "all", "tenant"])))]
pub(crate) struct PurgeArgs {
    /// Where the instance is and the token.
    #[command(flatten)]
    pub remote: Remote,
    /// Purge every entry with this tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Purge every entry of this route (repeatable).
    #[arg(long = "route", value_name = "ROUTE")]
    pub routes: Vec<String>,
    /// Purge every identity variant of this path, e.g. "/courses/?page=2" (repeatable).
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
    /// Purge everything.
    #[arg(long)]
    pub all: bool,
    /// Mark entries stale instead of deleting them.
    #[arg(long)]
    pub soft: bool,
    /// Restrict tag purges to this tenant (and tenant-less entries); alone, purge the tenant.
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
}

/// `cachegate warm`.
#[derive(Debug, Clone, Args)]
pub(crate) struct WarmArgs {
    /// Where the instance is and the token.
    #[command(flatten)]
    pub remote: Remote,
    /// File with one path per line (blank lines and `#` comments are skipped).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Warm for this role (repeatable; default: anonymous).
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// Warm for this tenant (repeatable; default: no tenant).
    #[arg(long = "tenant", value_name = "TENANT")]
    pub tenants: Vec<String>,
    /// Requests in flight at once, 1 to 64.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
}

/// `cachegate explain`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ExplainArgs {
    /// Where the instance is and the token.
    #[command(flatten)]
    pub remote: Remote,
    /// The request: a path with its query ("/courses/?page=2") or an absolute URL.
    #[arg(value_name = "URL")]
    pub url: String,
    /// Request method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// A request header, "Name: value" (repeatable).
    #[arg(long = "header", short = 'H', value_name = "HEADER")]
    pub headers: Vec<String>,
    /// A cookie, "name=value" (repeatable); only its name is ever printed.
    #[arg(long = "cookie", value_name = "COOKIE")]
    pub cookies: Vec<String>,
    /// The client address the request comes from [default: inside trust_headers_from when it is set, else 127.0.0.1].
    #[arg(long, value_name = "IP")]
    pub peer: Option<std::net::IpAddr>,
    /// Print the JSON answer instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `cachegate explain`: `POST /admin/explain`, printed as text (or the JSON with `--json`).
///
/// # Errors
/// Any [`CliError`]; a header without `:` is a usage error.
pub(crate) async fn explain(args: ExplainArgs, config: Option<&Path>) -> Result<(), CliError> {
    let mut headers = Vec::new();
    for h in &args.headers {
        let Some((name, value)) = h.split_once(':') else {
            return Err(CliError::Usage(format!("--header {h:?}: expected \"Name: value\"")));
        };
        headers.push(serde_json::json!([name.trim(), value.trim()]));
    }
    let client = connect(&args.remote, config, true)?;
    let mut body = serde_json::json!({
        "method": args.method,
        "url": args.url,
        "headers": headers,
        "cookies": args.cookies,
    });
    if let Some(p) = args.peer {
        body["peer"] = p.to_string().into();
    }
    let v = client
        .call(Method::POST, "/admin/explain", Some(body), Duration::from_secs(30))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", output::explanation(&v));
    }
    Ok(())
}

/// Runs a verb on a current-thread runtime and turns its outcome into an exit code, printing
/// errors to stderr.
pub(crate) fn exit_code(verb: impl std::future::Future<Output = Result<(), CliError>>) -> u8 {
    let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(verb),
        Err(e) => Err(CliError::Failed(format!("cannot start the runtime: {e}"))),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// `cachegate stats`: `GET /admin/stats`, printed as a table.
///
/// # Errors
/// Any [`CliError`].
pub(crate) async fn stats(remote: Remote, config: Option<&Path>) -> Result<(), CliError> {
    let client = connect(&remote, config, false)?;
    let v = client
        .call(Method::GET, "/admin/stats", None, Duration::from_secs(30))
        .await?;
    print!("{}", output::stats_table(&v));
    Ok(())
}

/// `cachegate purge`: `POST /purge`, then a one-line summary of the answer.
///
/// # Errors
/// Any [`CliError`].
pub(crate) async fn purge(args: PurgeArgs, config: Option<&Path>) -> Result<(), CliError> {
    let client = connect(&args.remote, config, true)?;
    let mut body = serde_json::json!({ "tags": args.tags, "routes": args.routes, "paths": args.paths });
    if args.all {
        body["all"] = true.into();
    }
    if args.soft {
        body["soft"] = true.into();
    }
    if let Some(t) = args.tenant {
        body["tenant"] = t.into();
    }
    let v = client
        .call(Method::POST, "/purge", Some(body), Duration::from_secs(30))
        .await?;
    println!("{}", output::purge_summary(&v));
    Ok(())
}

/// `cachegate warm`: sends the file's paths to `POST /admin/warm` in batches of `--concurrency`
/// paths, with a progress bar on a terminal, then prints `warmed N, already cached N, failed N`.
///
/// # Errors
/// Any [`CliError`]; [`CliError::WarmFailures`] when some variant could not be warmed.
pub(crate) async fn warm(args: WarmArgs, config: Option<&Path>) -> Result<(), CliError> {
    let paths = read_paths(&args.file)?;
    let client = connect(&args.remote, config, true)?;
    let bar = if std::io::stderr().is_terminal() {
        let style = ProgressStyle::with_template("{bar:40} {pos}/{len} paths {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        ProgressBar::new(paths.len() as u64).with_style(style)
    } else {
        ProgressBar::hidden()
    };
    let mut total = WarmReport::default();
    for batch in paths.chunks(usize::from(args.concurrency)) {
        let req = WarmRequest {
            paths: batch.to_vec(),
            roles: args.roles.clone(),
            tenants: args.tenants.clone(),
            concurrency: Some(usize::from(args.concurrency)),
        };
        let body = serde_json::to_value(&req).map_err(|e| CliError::Failed(e.to_string()))?;
        let answer = client
            .call(Method::POST, "/admin/warm", Some(body), Duration::from_secs(600))
            .await;
        let report: WarmReport = match answer.map(serde_json::from_value) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(CliError::Failed(format!("unexpected warm answer: {e}"))),
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
        total.warmed += report.warmed;
        total.already_cached += report.already_cached;
        total.failed += report.failed;
        total.failures.extend(report.failures);
        bar.inc(batch.len() as u64);
        bar.set_message(format!("({} failed)", total.failed));
    }
    bar.finish_and_clear();
    eprint!("{}", output::failures(&total.failures));
    println!(
        "warmed {}, already cached {}, failed {}",
        total.warmed, total.already_cached, total.failed
    );
    match total.failed {
        0 => Ok(()),
        n => Err(CliError::WarmFailures(n)),
    }
}

/// One path per line; blank lines and `#` comments skipped; full URLs keep their path and query.
fn read_paths(file: &Path) -> Result<Vec<String>, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("cannot read --file {}: {e}", file.display())))?;
    let mut paths = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let path = match line.parse::<http::Uri>() {
            Ok(u) if u.scheme().is_some() => u.path_and_query().map_or("/".into(), |p| p.to_string()),
            _ => line.to_string(),
        };
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            let at = format!("{}:{}", file.display(), i + 1);
            return Err(CliError::Usage(format!(
                "{at}: expected a path like /courses/?page=2, found {line:?}"
            )));
        }
        paths.push(path);
    }
    if paths.is_empty() {
        let msg = format!(
            "{}: no paths in the file (one path per line, e.g. /courses/)",
            file.display()
        );
        return Err(CliError::Usage(msg));
    }
    Ok(paths)
}
