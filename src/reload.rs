//! Config hot reload (SIGHUP, `POST /admin/reload`): re-read, validate, swap atomically.
//!
//! In-flight requests keep the proxy they started with; new ones get the new config. A file
//! with errors, or one that changes a setting only a restart can apply, leaves the running
//! config untouched. Either way the outcome is logged and counted in
//! `cachegate_config_reloads_total{result}`.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::cache::Cache;
use crate::config::{self, Config, ConfigError};
use crate::identity::SetupError;
use crate::invalidation::Purger;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::secrets::Secrets;

/// Everything a reload rebuilds or keeps.
pub struct Reloader {
    path: PathBuf,
    /// The config in force.
    pub config: Arc<ArcSwap<Config>>,
    /// The proxy built from it.
    pub proxy: Arc<ArcSwap<Proxy>>,
    cache: Arc<Cache>,
    purger: Arc<Purger>,
    secrets: Secrets,
    metrics: Arc<Metrics>,
    lock: tokio::sync::Mutex<()>,
    loaded_at: std::sync::atomic::AtomicU64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Settings read once at start-up (listeners, tiers, the warmer); changing them needs a restart.
/// Compared by value: a reload that changes any of them is refused as a whole.
#[derive(Debug, PartialEq)]
struct RestartOnly<'a> {
    listen: std::net::SocketAddr,
    admin_listen: std::net::SocketAddr,
    tls: &'a Option<config::TlsConfig>,
    client_timeout: std::time::Duration,
    redis_urls: &'a [String],
    key_prefix: &'a str,
    memory_capacity: u64,
    memory_ttl: std::time::Duration,
    redis_timeout: std::time::Duration,
    degraded_memory_ttl: std::time::Duration,
    role_header: &'a http::HeaderName,
    tenant_header: &'a http::HeaderName,
    user_header: &'a Option<http::HeaderName>,
    trust_headers_from: &'a [ipnet::IpNet],
    token_env: &'a Option<String>,
    hmac_secret_env: &'a Option<String>,
    warm: &'a Option<config::WarmConfig>,
}

impl<'a> RestartOnly<'a> {
    fn of(c: &'a Config) -> Self {
        RestartOnly {
            listen: c.server.listen,
            admin_listen: c.server.admin_listen,
            tls: &c.server.tls,
            client_timeout: c.server.client_timeout,
            redis_urls: &c.cache.redis_urls,
            key_prefix: &c.cache.key_prefix,
            memory_capacity: c.cache.memory_capacity,
            memory_ttl: c.cache.memory_ttl,
            redis_timeout: c.cache.redis_timeout,
            degraded_memory_ttl: c.cache.degraded_memory_ttl,
            role_header: &c.identity.role_header,
            tenant_header: &c.identity.tenant_header,
            user_header: &c.identity.user_header,
            trust_headers_from: &c.identity.trust_headers_from,
            token_env: &c.purge.token_env,
            hmac_secret_env: &c.purge.hmac_secret_env,
            warm: &c.warm,
        }
    }
}

impl Reloader {
    /// A reloader for the running parts.
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        proxy: Arc<ArcSwap<Proxy>>,
        cache: Arc<Cache>,
        purger: Arc<Purger>,
        secrets: Secrets,
        metrics: Arc<Metrics>,
    ) -> Self {
        let path = config.load().file.clone();
        Reloader {
            path,
            config,
            proxy,
            cache,
            purger,
            secrets,
            metrics,
            lock: tokio::sync::Mutex::new(()),
            loaded_at: std::sync::atomic::AtomicU64::new(unix_now()),
        }
    }

    /// When the config in force was loaded (Unix seconds).
    pub fn loaded_at(&self) -> u64 {
        self.loaded_at.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Re-reads the config file and swaps it in.
    ///
    /// # Errors
    /// Every problem found; the running config stays in force.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        let _one_at_a_time = self.lock.lock().await;
        let result = self.try_reload().await;
        self.metrics.config_reload_counter(result.is_ok()).inc();
        match &result {
            Ok(msg) => tracing::info!("{msg}"),
            Err(e) => tracing::error!("config reload refused, still running the previous config:\n{e}"),
        }
        result
    }

    async fn try_reload(&self) -> Result<String, ReloadError> {
        let path = self.path.clone();
        let new = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(|_| ReloadError::Interrupted)??;
        let old = self.config.load();
        if RestartOnly::of(&old) != RestartOnly::of(&new) {
            return Err(ReloadError::RestartOnly(self.path.clone()));
        }
        let config = Arc::new(new);
        let proxy = Proxy::new(
            config.clone(),
            self.cache.clone(),
            self.purger.clone(),
            &self.secrets,
            self.metrics.clone(),
        )?;
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
    /// A setting that only changes with a restart changed.
    #[error("{}: listeners, TLS, client_timeout, [cache] redis_url/key_prefix/memory_capacity/memory_ttl/redis_timeout/degraded_memory_ttl, identity headers, [purge] and [warm] only change with a restart", .0.display())]
    RestartOnly(PathBuf),
    /// An identity source of the new config cannot be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
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
