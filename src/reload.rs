//! Config hot reload (SIGHUP, `POST /admin/reload`): re-read, validate, swap atomically.
//!
//! In-flight requests keep the proxy they started with; new ones get the new config. A file
//! with errors, or one that changes a setting only a restart can apply (each config field says
//! which it is, see [`Config::restart_only`]), leaves the running config untouched. Either way the outcome is logged and counted in
//! `cachegate_config_reloads_total{result}`.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::cache::Cache;
use crate::config::{self, Config, ConfigError};
use crate::identity::SessionGuard;
use crate::invalidation::Purger;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::secrets::Secrets;
use crate::tls::ServerTls;

/// Everything a reload rebuilds or keeps.
pub struct Reloader {
    path: PathBuf,
    /// The config in force.
    pub config: Arc<ArcSwap<Config>>,
    /// The proxy built from it.
    pub proxy: Arc<ArcSwap<Proxy>>,
    parts: ProxyParts,
    /// The listeners' TLS: their files are read again on every reload.
    tls: Vec<Arc<ServerTls>>,
    metrics: Arc<Metrics>,
    lock: tokio::sync::Mutex<()>,
    loaded_at: std::sync::atomic::AtomicU64,
    /// The last reload: when (Unix seconds), whether it was applied, and its message.
    last: std::sync::Mutex<Option<(u64, bool, String)>>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a new [`Proxy`] is built from besides its config: kept across reloads.
pub(crate) struct ProxyParts {
    pub(crate) cache: Arc<Cache>,
    pub(crate) purger: Arc<Purger>,
    pub(crate) guard: SessionGuard,
    pub(crate) secrets: Secrets,
    /// Shutdown, which upgraded connections end with.
    pub(crate) stop: tokio::sync::watch::Receiver<bool>,
    /// Per-tenant labels (restart-only: counted from start-up).
    pub(crate) tenants: Option<Arc<crate::tenants::TenantLabeller>>,
}

impl Reloader {
    /// A reloader for the running parts.
    pub(crate) fn new(
        config: Arc<ArcSwap<Config>>,
        proxy: Arc<ArcSwap<Proxy>>,
        parts: ProxyParts,
        tls: Vec<Arc<ServerTls>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let path = config.load().file.clone();
        Reloader {
            path,
            config,
            proxy,
            parts,
            tls,
            metrics,
            lock: tokio::sync::Mutex::new(()),
            loaded_at: std::sync::atomic::AtomicU64::new(unix_now()),
            last: std::sync::Mutex::new(None),
        }
    }

    /// When the config in force was loaded (Unix seconds).
    pub fn loaded_at(&self) -> u64 {
        self.loaded_at.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The last reload since start: when (Unix seconds), whether it was applied, and its
    /// message or why it was refused.
    pub fn last_reload(&self) -> Option<(u64, bool, String)> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the config file and swaps it in.
    ///
    /// # Errors
    /// Every problem found; the running config stays in force.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        let _one_at_a_time = self.lock.lock().await;
        let result = self.try_reload().await;
        self.metrics.config_reload_counter(result.is_ok()).inc();
        let said = match &result {
            Ok(msg) => msg.clone(),
            Err(e) => e.to_string(),
        };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((unix_now(), result.is_ok(), said));
        match &result {
            Ok(msg) => tracing::info!("{msg}"),
            Err(e) => tracing::error!("config reload refused, still running the previous config:\n{e}"),
        }
        result
    }

    async fn try_reload(&self) -> Result<String, ReloadError> {
        let path = self.path.clone();
        let (new, src) = tokio::task::spawn_blocking(move || {
            let src = std::fs::read_to_string(&path).unwrap_or_default();
            (config::load(&path), src)
        })
        .await
        .map_err(|_| ReloadError::Interrupted)?;
        let new = new?;
        let old = self.config.load();
        let (before, after) = (old.restart_only(), new.restart_only());
        if before != after {
            let file = self.path.display().to_string();
            let changed = before
                .changed(&after)
                .into_iter()
                .map(|key| match config::line_of(&src, &key) {
                    Some(line) => format!("{file}:{line}: {key}"),
                    // Removed from the file: its default now differs from the running value.
                    None => format!("{file}: {key} (no longer set: its default differs)"),
                })
                .collect();
            return Err(ReloadError::RestartOnly { changed });
        }
        // Certificates are read first and put in force last: if anything fails, nothing of
        // the new config, the certificates included, is applied.
        let certificates = self.tls.iter().map(|t| t.prepare()).collect::<Result<Vec<_>, _>>()?;
        let config = Arc::new(new);
        let proxy = Proxy::new(
            config.clone(),
            self.parts.cache.clone(),
            self.parts.purger.clone(),
            &self.parts.guard,
            &self.parts.secrets,
            self.metrics.clone(),
            self.parts.stop.clone(),
            self.parts.tenants.clone(),
        )?;
        for (tls, prepared) in self.tls.iter().zip(certificates) {
            tls.install(prepared);
        }
        let routes = config.routes.len();
        crate::proxy::prime_metrics(&self.metrics, config.routes.iter().map(|r| r.name.as_str()));
        self.proxy.store(Arc::new(proxy));
        self.config.store(config);
        self.loaded_at.store(unix_now(), std::sync::atomic::Ordering::Relaxed);
        Ok(format!(
            "config reloaded from {} ({routes} routes)",
            self.path.display()
        ))
    }
}

/// Why a reload was refused; the running config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load (every problem with file:line:key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A setting that only changes with a restart changed (see [`Config::restart_only`]).
    #[error("settings that only change with a restart changed (nothing was applied; restart to apply them, or undo them):\n{}", changed.join("\n"))]
    RestartOnly {
        /// Each restart-only setting that differs, located: `proxy.toml:3: server.listen`.
        changed: Vec<String>,
    },
    /// The listener's certificate or key no longer loads; the old ones stay in use.
    #[error("[server] tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// An identity source of the new config cannot be set up.
    #[error(transparent)]
    Setup(#[from] crate::proxy::BuildError),
    /// The loading task did not finish (shutdown).
    #[error("the reload was interrupted")]
    Interrupted,
}

/// Creates both `cachegate_config_reloads_total` series at 0.
pub fn prime_metrics(m: &Metrics) {
    for ok in [true, false] {
        m.config_reload_counter(ok);
    }
}
