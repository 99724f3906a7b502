//! Wiring and lifecycle: builds every component from a [`Config`], binds the listeners, serves
//! until told to stop, then drains open connections.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{Access, Admin};
use crate::cache::Cache;
use crate::clock::Clock;
use crate::coherence::Coherence;
use crate::config::{Config, TenantLabels};
use crate::identity::SessionGuard;
use crate::invalidation::Purger;
use crate::message::body::ProxyBody;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::{ProxyParts, Reloader};
use crate::scope::Generations;
use crate::secrets::Secrets;
use crate::tenants::TenantLabeller;
use crate::tiers::redis::RedisTier;
use crate::tls::ServerTls;
use crate::warm::{WarmError, Warmer};
use crate::watchdog::Watchdog;
use arc_swap::ArcSwap;

/// How long open connections get to finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(30);

/// A started cachegate.
pub struct Running {
    /// Where the public listener is bound.
    pub proxy_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    /// Where `listen_http` is bound, when set.
    pub http_addr: Option<SocketAddr>,
    /// The cache, for stats and tests.
    pub cache: Arc<Cache>,
    /// The freshness clock (tests advance it).
    pub clock: Arc<Clock>,
    /// The cross-instance protocol, with Redis (tests watch its subscriptions).
    pub coherence: Option<Arc<Coherence>>,
    /// Config hot reload.
    pub reloader: Arc<Reloader>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Why cachegate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot bind [server] {key} = {addr}: {source}")]
    Bind {
        /// `listen` or `admin_listen`.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// `[cache] redis_url` cannot be used.
    #[error("invalid [cache] redis_url: {0}")]
    RedisUrl(#[source] redis::RedisError),
    /// `[server] listen_http` is set without `tls`: it would be a second plain listener.
    #[error("[server] listen_http is the plain-HTTP listener next to a TLS one: set [server] tls too, or use listen")]
    PlainWithoutTls,
    /// A plain listener serving next to a mutual-TLS one would let anyone in without a
    /// certificate.
    #[error("[server] listen_http with redirect_http = false serves without the client certificate tls.client_ca requires: use redirect_http = true, or drop listen_http")]
    PlainBesideMutualTls,
    /// `[server] tls` names files that cannot be used.
    #[error("[server] tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// `[cache] redis_ca_file` cannot be read.
    #[error("cannot read [cache] redis_ca_file {path}: {source}", path = .0.display(), source = .1)]
    RedisCa(std::path::PathBuf, #[source] std::io::Error),
    /// An identity source cannot be set up (a missing secret, a bad key file), or the
    /// origin's TLS settings cannot be used.
    #[error(transparent)]
    Proxy(#[from] crate::proxy::BuildError),
    /// A `[warm]` that cannot work.
    #[error("[warm]: {0}")]
    Warm(#[from] WarmError),
    /// The admin listener would serve traffic figures to anyone (see `[admin]`).
    #[error("{0}")]
    AdminAccess(String),
}

impl StartError {
    /// The process exit code: 64 (`EX_USAGE`, as for a config that does not load) for a
    /// setting that cannot work, 1 for the environment (an address in use).
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Bind { .. } => 1,
            StartError::RedisUrl(_)
            | StartError::RedisCa(..)
            | StartError::Tls(_)
            | StartError::PlainWithoutTls
            | StartError::PlainBesideMutualTls
            | StartError::Proxy(_)
            | StartError::Warm(_)
            | StartError::AdminAccess(_) => 64,
        }
    }
}

/// Binds both listeners from `config` and starts serving; purge secrets come from the
/// environment variables the config names.
///
/// # Errors
/// [`StartError`]: binding failures, naming the address, and unusable settings.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let secrets = Secrets::from_env(&config);
    start_with(config, secrets).await
}

/// Everything `run` sets up before it binds a listener, so `check` can do all of it: it reads
/// every secret, every TLS, CA and key file, and builds the identity sources, the origin client
/// and the tiers (nothing connects yet).
///
/// # Errors
/// As [`start`], short of binding.
pub async fn check(config: Config) -> Result<(), StartError> {
    let secrets = Secrets::from_env(&config);
    build(config, secrets).map(drop)
}

/// What [`start_with`] builds before binding.
struct Built {
    config: Arc<Config>,
    tls: Option<Arc<ServerTls>>,
    admin_tls: Option<Arc<ServerTls>>,
    clock: Arc<Clock>,
    metrics: Arc<Metrics>,
    shared: Option<(Arc<RedisTier>, Arc<Coherence>)>,
    cache: Arc<Cache>,
    generations: Arc<Generations>,
    guard: SessionGuard,
    purger: Arc<Purger>,
    proxy: Arc<ArcSwap<Proxy>>,
    scheduled: Option<crate::warm::WarmJob>,
    stop: watch::Sender<bool>,
    tenants: Option<Arc<TenantLabeller>>,
    access: Access,
}

fn build(config: Config, secrets: Secrets) -> Result<Built, StartError> {
    let tls = match &config.server.tls {
        Some(files) => Some(Arc::new(ServerTls::load(files)?)),
        None => None,
    };
    let admin_tls = match &config.server.admin_tls {
        Some(files) => Some(Arc::new(ServerTls::load(files)?)),
        None => None,
    };
    if config.server.listen_http.is_some() && tls.is_none() {
        return Err(StartError::PlainWithoutTls);
    }
    let access = Access::decide(&config, &secrets).map_err(|e| StartError::AdminAccess(e.to_string()))?;
    let mutual = config.server.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    if config.server.listen_http.is_some() && mutual && !config.server.redirect_http {
        return Err(StartError::PlainBesideMutualTls);
    }
    let config = Arc::new(config);
    let clock = Arc::new(Clock::default());
    let generations = Arc::new(Generations::default());
    let metrics = Arc::new(Metrics::register(&prometheus::Registry::new()));
    // Every series whose labels are known exists from the first scrape, at 0.
    crate::proxy::prime_metrics(&metrics, config.routes.iter().map(|r| r.name.as_str()));
    crate::invalidation::prime_metrics(&metrics);
    crate::tiers::redis::prime_metrics(&metrics);
    crate::reload::prime_metrics(&metrics);
    crate::identity::lookup::prime_metrics(&metrics);
    let shared = match config.cache.redis_target() {
        Some(target) => {
            let ca = match &config.cache.redis_ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| StartError::RedisCa(path.clone(), e))?),
                None => None,
            };
            let redis = RedisTier::new(
                &target,
                &config.cache.key_prefix,
                config.cache.redis_timeout,
                ca,
                metrics.clone(),
            )
            .map_err(StartError::RedisUrl)?;
            let coherence = Coherence::new(redis.clone(), generations.clone());
            Some((redis, coherence))
        }
        None => None,
    };
    let cache = Arc::new(Cache::new(
        &config,
        clock.clone(),
        generations.clone(),
        shared.clone(),
        metrics.clone(),
    ));
    let coherence = shared.as_ref().map(|(_, c)| c.clone());
    let guard = SessionGuard::new(generations.clone(), coherence.clone());
    let purger = Arc::new(Purger::new(generations.clone(), coherence, metrics.clone()));
    let (stop, stop_rx) = watch::channel(false);
    let tenants = match &config.metrics.tenant_labels {
        TenantLabels::Off => None,
        TenantLabels::Named(names) => Some(Arc::new(TenantLabeller::named(names.clone()))),
        TenantLabels::Top(n) => Some(Arc::new(TenantLabeller::top(*n))),
    };
    let proxy = Proxy::new(
        config.clone(),
        cache.clone(),
        purger.clone(),
        &guard,
        &secrets,
        metrics.clone(),
        stop_rx,
        tenants.clone(),
    )?;
    // A [warm] that cannot work (identity headers we would strip) is a config error, found now;
    // the warmer only needs the listener's address, which binding does not change.
    let warmer = Warmer::new(&config, config.server.listen, tls.as_ref());
    let scheduled = config.warm.as_ref().map(|w| warmer.scheduled_job(w)).transpose()?;
    Ok(Built {
        proxy: Arc::new(ArcSwap::from_pointee(proxy)),
        config,
        tls,
        admin_tls,
        clock,
        metrics,
        shared,
        cache,
        generations,
        guard,
        purger,
        scheduled,
        stop,
        tenants,
        access,
    })
}

/// [`start`] with the purge secrets given directly.
///
/// # Errors
/// As [`start`].
pub async fn start_with(config: Config, secrets: Secrets) -> Result<Running, StartError> {
    let Built {
        config,
        tls,
        admin_tls,
        clock,
        metrics,
        shared,
        cache,
        generations,
        guard,
        purger,
        proxy,
        scheduled,
        stop,
        tenants,
        access,
    } = build(config, secrets.clone())?;
    let (proxy_listener, proxy_addr) = bind(config.server.listen, "listen").await?;
    let plain = match config.server.listen_http {
        Some(addr) => Some(bind(addr, "listen_http").await?),
        None => None,
    };
    let http_addr = plain.as_ref().map(|(_, a)| *a);
    let (admin_listener, admin_addr) = bind(config.server.admin_listen, "admin_listen").await?;
    let stop_rx = stop.subscribe();
    let coherence = shared.as_ref().map(|(_, c)| c.clone());
    let purger_generations = generations;
    if secrets.purge_token.is_none() && secrets.purge_hmac.is_none() {
        tracing::info!("purge webhook disabled: no secret in the variables [purge] token_env / hmac_secret_env name");
    }
    let warmer = Arc::new(Warmer::new(&config, proxy_addr, tls.as_ref()));
    let reloader = Arc::new(Reloader::new(
        Arc::new(ArcSwap::new(config.clone())),
        proxy.clone(),
        ProxyParts {
            cache: cache.clone(),
            purger: purger.clone(),
            guard,
            secrets: secrets.clone(),
            stop: stop_rx.clone(),
            tenants,
        },
        tls.iter().chain(&admin_tls).cloned().collect(),
        metrics.clone(),
    ));
    let admin = Arc::new(Admin::new(
        reloader.clone(),
        cache.clone(),
        purger,
        &secrets,
        metrics.clone(),
        warmer.clone(),
        access.clone(),
    ));
    tracing::info!("admin listener {admin_addr}: {}", access.describe());
    let client_timeout = config.server.client_timeout;
    let mut tasks = vec![
        tokio::spawn(serve(
            proxy_listener,
            tls,
            client_timeout,
            stop_rx.clone(),
            move |req, peer, secure| {
                // Loaded per request: a reload swaps it, in-flight requests keep the one they have.
                proxy.load_full().handle(req, peer, secure)
            },
        )),
        tokio::spawn(serve(
            admin_listener,
            admin_tls.clone(),
            client_timeout,
            stop_rx.clone(),
            move |req, _peer, _secure| {
                let admin = admin.clone();
                async move { admin.handle(req).await }
            },
        )),
        tokio::spawn(prune_generations(purger_generations, stop_rx.clone())),
    ];
    if let Some((listener, _)) = plain {
        let proxy = reloader.proxy.clone();
        let (redirect, https_port) = (config.server.redirect_http, proxy_addr.port());
        tasks.push(tokio::spawn(serve(
            listener,
            None,
            client_timeout,
            stop_rx.clone(),
            move |req, peer, _secure| {
                let proxy = proxy.load_full();
                async move {
                    if redirect {
                        to_https(&req, https_port)
                    } else {
                        proxy.handle(req, peer, false).await
                    }
                }
            },
        )));
    }
    if let (Some(job), Some(w)) = (scheduled, &config.warm) {
        tasks.push(tokio::spawn(crate::warm::scheduled(
            warmer,
            job,
            w.interval,
            stop_rx.clone(),
        )));
    }
    if let Some((redis, coherence)) = shared {
        tasks.push(tokio::spawn(redis.connect(stop_rx.clone())));
        tasks.push(tokio::spawn(coherence.run(stop_rx)));
    }
    Ok(Running {
        proxy_addr,
        admin_addr,
        http_addr,
        cache,
        clock,
        coherence,
        reloader,
        stop,
        tasks,
    })
}

/// `308` to the same URL over https on `port`; `400` when the request names no single, plain
/// host (several `Host` headers, userinfo, a request-line authority that differs from `Host`,
/// `*` or CONNECT). The redirect is `no-store`: a shared cache in front must not keep an answer
/// whose target came from the client.
fn to_https(req: &Request<Incoming>, port: u16) -> Response<ProxyBody> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let (header, extra) = (hosts.next(), hosts.next());
    let named = match (req.uri().authority(), header.and_then(|h| h.to_str().ok())) {
        _ if extra.is_some() || req.method() == http::Method::CONNECT => None,
        (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h) => None,
        (Some(a), _) => Some(a.as_str().to_owned()),
        (None, Some(h)) => Some(h.to_owned()),
        (None, None) => None,
    };
    let host = named
        .filter(|h| !h.contains('@'))
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .map(|a| a.host().to_owned());
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'));
    let target = host.zip(pq).and_then(|(h, pq)| {
        let port = if port == 443 { String::new() } else { format!(":{port}") };
        http::HeaderValue::from_str(&format!("https://{h}{port}{pq}")).ok()
    });
    let mut resp = Response::new(ProxyBody::Empty);
    match target {
        Some(location) => {
            *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
            resp.headers_mut().insert(http::header::LOCATION, location);
            resp.headers_mut()
                .insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        }
        None => *resp.status_mut() = http::StatusCode::BAD_REQUEST,
    }
    resp
}

async fn bind(addr: SocketAddr, key: &'static str) -> Result<(TcpListener, SocketAddr), StartError> {
    let bound = async {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((listener, local))
    };
    bound.await.map_err(|source| StartError::Bind { key, addr, source })
}

impl Running {
    /// Stops accepting, lets open connections finish (up to 30 s), and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Accept loop for one listener: HTTP/1.1 and HTTP/2 on each connection (by ALPN over TLS,
/// by prior knowledge without). `handler` learns the peer and whether the connection is TLS.
async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    client_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr, bool) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Request heads are timed by the watchdog, not by hyper (see `watchdog`).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(64 * 1024);
    let dog = Watchdog::new(client_timeout);
    let sweeper = tokio::spawn(dog.clone().run(stop.clone()));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let secure = tls.is_some();
        let watched = dog.open();
        let tracker = watched.tracker();
        let svc = service_fn(move |req| {
            let in_flight = tracker.request();
            // Boxed once here: hyper moves the future it is given more than once per request,
            // and moving a box is moving a pointer.
            let fut = Box::pin(handler(req, peer, secure));
            async move {
                let resp = fut.await;
                drop(in_flight);
                Ok::<_, Infallible>(resp)
            }
        });
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            let ended = match acceptor {
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(watched.io(TokioIo::new(stream)), svc)
                        .into_owned();
                    watched.run(watcher.watch(conn)).await
                }
                Some(acceptor) => {
                    // The handshake is held to `client_timeout` like a request head: a client
                    // that starts one and stalls is closed.
                    let stream = match tokio::time::timeout(client_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake not done within [server] client_timeout");
                            return;
                        }
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(watched.io(TokioIo::new(stream)), svc)
                        .into_owned();
                    watched.run(watcher.watch(conn)).await
                }
            };
            match ended {
                Some(Err(e)) => tracing::debug!(error = %e, %peer, "connection ended with an error"),
                Some(Ok(())) => {}
                None => {
                    tracing::debug!(%peer, "connection closed: no request head, idle, or not reading for [server] client_timeout")
                }
            }
        });
    }
    drop(listener);
    sweeper.abort();
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN:?}; closing them");
    }
}

/// Forgets scope counters nothing refers to any more: every minute, and sooner when the table
/// has doubled since the last time (a stream of new URLs adds one counter per miss).
async fn prune_generations(generations: Arc<Generations>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = generations.prune_wanted.notified() => {}
            _ = stop.changed() => return,
        }
        let n = generations.prune();
        tracing::trace!(pruned = n, "generation table pruned");
    }
}
