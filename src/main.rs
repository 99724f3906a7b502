//! The `cachegate` binary: CLI, logging, exit codes. Everything else lives in the library.

#![warn(unreachable_pub)]

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit code for a configuration that cannot be used (sysexits EX_USAGE... EX_CONFIG would be 78;
/// 64 is what linkerd and most proxies use for "bad usage/config").
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "cachegate",
    version,
    about = "A caching reverse proxy for read-heavy web apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file [default: proxy.toml]; `stats`, `purge`, `warm` and `explain` read its admin_listen and token_env.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config file and everything it names (secrets, TLS, key and CA files) as `run` would, short of binding; exit 0 when valid, 64 with the problems otherwise.
    Check,
    /// Show a running instance's uptime, tiers and per-route hit ratios (GET /admin/stats).
    Stats(cli::Remote),
    /// Purge a running instance's entries by tag, route, path or all (POST /purge).
    Purge(cli::PurgeArgs),
    /// Warm the paths listed in a file for given roles and tenants (POST /admin/warm).
    Warm(cli::WarmArgs),
    /// Explain what a running instance would do with a request: route, identity, key, tiers, bypass reason (POST /admin/explain).
    Explain(cli::ExplainArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// mimalloc: its per-thread free lists make the hit path's few allocations (the response's
/// header map above all) cheaper than glibc's malloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = match Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors exit 64 like config errors.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_CONFIG } else { 0 });
        }
    };
    init_tracing(args.log_format);
    let explicit = args.config.as_deref();
    let command = args.command.unwrap_or(Command::Run);
    let code = match command {
        Command::Stats(remote) => cli::exit_code(cli::stats(remote, explicit)),
        Command::Purge(what) => cli::exit_code(cli::purge(what, explicit)),
        Command::Warm(list) => cli::exit_code(cli::warm(list, explicit)),
        Command::Explain(what) => cli::exit_code(cli::explain(what, explicit)),
        Command::Run | Command::Check => return run_or_check(command, explicit),
    };
    ExitCode::from(code)
}

fn run_or_check(command: Command, explicit: Option<&Path>) -> ExitCode {
    let file = explicit.unwrap_or(Path::new(cli::DEFAULT_CONFIG));
    let config = match cachegate::config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match command {
        Command::Check => {
            if let Err(e) = check(config.clone()) {
                eprintln!("{}: {e}", file.display());
                return ExitCode::from(EXIT_CONFIG);
            }
            println!(
                "{}: ok ({} routes, {} invalidation rules)",
                file.display(),
                config.routes.len(),
                config.invalidations.len()
            );
            ExitCode::SUCCESS
        }
        _ => run(config),
    }
}

/// What `run` does before binding, on a runtime of its own (nothing is spawned or connected).
fn check(config: cachegate::config::Config) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(cachegate::app::check(config)).map_err(|e| e.to_string())
}

fn run(config: cachegate::config::Config) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let id = &config.identity;
        if id.trust_headers_from.is_empty() {
            if id.named_headers {
                tracing::warn!("[identity] names identity headers but trust_headers_from is empty: no peer is believed, and those headers are removed from every request; list your auth gateway's address in trust_headers_from");
            }
        } else {
            let peers: Vec<String> = id.trust_headers_from.iter().map(ToString::to_string).collect();
            tracing::info!(peers = %peers.join(", "), "identity and forwarding headers are believed from these peers only");
        }
        if config.cache.redis_urls.is_empty() {
            tracing::info!("no [cache] redis_url: memory tier only (entries are not shared between instances)");
            warn_memory_ttl(&config);
        }
        let origin = format!("http://{}", config.origin.authority);
        let file = config.file.clone();
        let running = match cachegate::app::start(config).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(e.exit_code());
            }
        };
        // Installed before the start-up line: a SIGHUP sent as soon as we say we are up must
        // reload, not take the default action (terminate).
        reload_on_sighup(running.reloader.clone());
        let shutdown = shutdown_signal();
        tracing::info!(
            config = %file.display(),
            listen = %running.proxy_addr,
            admin = %running.admin_addr,
            origin = %origin,
            "cachegate started"
        );
        shutdown.await;
        tracing::info!("shutting down: draining open connections");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Without Redis the memory tier is the only tier, and `memory_ttl` caps every route's TTL.
fn warn_memory_ttl(config: &cachegate::config::Config) {
    let cap = config.cache.memory_ttl;
    for r in &config.routes {
        if let cachegate::config::Ttl::Fixed(ttl) = r.ttl {
            if ttl > cap {
                tracing::warn!(
                    route = %r.name,
                    "ttl {} exceeds [cache] memory_ttl {} and there is no Redis tier: entries are refetched after {}",
                    humantime::format_duration(ttl),
                    humantime::format_duration(cap),
                    humantime::format_duration(cap),
                );
            }
        }
    }
}

/// SIGHUP re-reads the config; a bad file is logged and the old config keeps running.
fn reload_on_sighup(reloader: std::sync::Arc<cachegate::reload::Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // `signal` registers the handler now, synchronously; the task only waits on it.
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reload with POST /admin/reload instead");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let _ = reloader.reload().await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

/// Registers for SIGTERM now (so one sent right after start-up is not fatal) and returns a
/// future that completes on SIGTERM or Ctrl-C.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = ctrl_c.await;
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
