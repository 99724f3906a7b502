//! `proxy.toml`: the typed, validated configuration.
//!
//! Loading is two steps: `toml-span` parses the text keeping positions, then [`load`] walks it with
//! a `reader::Section` per table, collecting every problem (unknown keys, wrong types, bad
//! durations, bad patterns) as an [`Issue`] with its line and dotted key. The settings sections are
//! declared with [`section!`](section): each field once, with its key, type, default, reader and
//! whether a reload may change it, which is what [`Config::restart_only`] compares. Nothing here opens sockets
//! or reads environment variables: secrets are named by `*_env` keys and read by their owners.

mod load;
mod load_ident;
mod reader;
pub mod section;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;

use crate::route::{PathPattern, TagTemplate};
use reader::{address, boolean, duration, header_name, optional, size, string};
use section::{section, Part, Reload, Restart};

pub use load::from_str;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from, for messages.
    pub file: PathBuf,
    /// `[server]`
    pub server: ServerConfig,
    /// `[origin]`
    pub origin: OriginConfig,
    /// `[cache]`
    pub cache: CacheConfig,
    /// `[identity]`
    pub identity: IdentityConfig,
    /// `[purge]`
    pub purge: PurgeConfig,
    /// `[admin]`
    pub admin: AdminConfig,
    /// `[[route]]`, in file order.
    pub routes: Vec<RouteConfig>,
    /// `[[invalidate]]`, in file order.
    pub invalidations: Vec<InvalidateConfig>,
    /// `[warm]`: scheduled cache warming, when present.
    pub warm: Option<WarmConfig>,
    /// `[metrics]`
    pub metrics: MetricsConfig,
}

impl Config {
    /// The settings only a restart applies (listeners, tiers, trusted headers, purge secrets,
    /// the warmer): a reload whose file changes any of them is refused as a whole.
    pub fn restart_only(&self) -> RestartOnly<'_> {
        // Destructured without `..`: a new top-level field does not compile until it is placed.
        let Config {
            file: _,
            server,
            origin,
            cache,
            identity,
            purge,
            admin,
            routes: _,
            invalidations: _,
            warm,
            metrics,
        } = self;
        RestartOnly {
            server: Part::of(server),
            origin: Part::of(origin),
            cache: Part::of(cache),
            identity: Part::of(identity),
            purge: Part::of(purge),
            admin: Part::of(admin),
            metrics: Part::of(metrics),
            warm,
        }
    }

    /// The settings a reload applies.
    pub fn reloadable(&self) -> Reloadable<'_> {
        let Config {
            // The file is where the config came from, not a setting.
            file: _,
            server,
            origin,
            cache,
            identity,
            purge,
            admin: _,
            routes,
            invalidations,
            warm: _,
            metrics: _,
        } = self;
        Reloadable {
            server: Part::of(server),
            origin: Part::of(origin),
            cache: Part::of(cache),
            identity: Part::of(identity),
            purge: Part::of(purge),
            routes,
            invalidations,
        }
    }
}

/// The restart-only part of a [`Config`], compared by value.
#[derive(Debug, PartialEq)]
pub struct RestartOnly<'a> {
    /// Listeners, TLS and the client timeout.
    pub server: Part<'a, ServerConfig, Restart>,
    /// Nothing yet: every origin setting reloads.
    pub origin: Part<'a, OriginConfig, Restart>,
    /// The tiers and their keys.
    pub cache: Part<'a, CacheConfig, Restart>,
    /// The trusted identity headers and peers.
    pub identity: Part<'a, IdentityConfig, Restart>,
    /// The purge webhook's secrets, read once.
    pub purge: Part<'a, PurgeConfig, Restart>,
    /// Who may read the admin listener's pages, decided once.
    pub admin: Part<'a, AdminConfig, Restart>,
    /// Per-tenant labels, counted from start-up.
    pub metrics: Part<'a, MetricsConfig, Restart>,
    /// The warmer is scheduled once at start-up.
    pub warm: &'a Option<WarmConfig>,
}

impl RestartOnly<'_> {
    /// Dotted keys that differ from `other`'s, e.g. `server.listen`, for the refusal message.
    pub fn changed(&self, other: &Self) -> Vec<String> {
        let sections = [
            ("server", self.server.changed(&other.server)),
            ("origin", self.origin.changed(&other.origin)),
            ("cache", self.cache.changed(&other.cache)),
            ("identity", self.identity.changed(&other.identity)),
            ("purge", self.purge.changed(&other.purge)),
            ("admin", self.admin.changed(&other.admin)),
            ("metrics", self.metrics.changed(&other.metrics)),
        ];
        let mut out: Vec<String> = sections
            .into_iter()
            .flat_map(|(name, keys)| keys.into_iter().map(move |k| format!("{name}.{k}")))
            .collect();
        if self.warm != other.warm {
            out.push("warm".to_string());
        }
        out
    }
}

/// The reloadable part of a [`Config`], compared by value.
#[derive(Debug, PartialEq)]
pub struct Reloadable<'a> {
    /// Answer shaping.
    pub server: Part<'a, ServerConfig, Reload>,
    /// The origin and how it is asked.
    pub origin: Part<'a, OriginConfig, Reload>,
    /// Storage rules.
    pub cache: Part<'a, CacheConfig, Reload>,
    /// Identity sources and cookie rules.
    pub identity: Part<'a, IdentityConfig, Reload>,
    /// Nothing yet: the purge secrets are read once.
    pub purge: Part<'a, PurgeConfig, Reload>,
    /// `[[route]]`.
    pub routes: &'a [RouteConfig],
    /// `[[invalidate]]`.
    pub invalidations: &'a [InvalidateConfig],
}

section! {
    /// `[server]`: listeners and answer shaping.
    pub struct ServerConfig {
        /// Public listener.
        restart listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8080)), read address;
        /// Admin listener (`/healthz`, `/readyz`, `/metrics`, `/admin/*`, `/purge`).
        restart admin_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9091)), read address;
        /// Optional TLS certificate and key (PEM).
        restart tls: Option<TlsConfig> = None, read optional(load::tls);
        /// With `tls`: a plain-HTTP listener next to the TLS one, which redirects to https
        /// (`redirect_http = true`) or serves like the TLS listener.
        restart listen_http: Option<SocketAddr> = None, read optional(address);
        /// What `listen_http` does: `true` answers `308` to the same URL over https.
        restart redirect_http: bool = true, read boolean;
        /// Optional TLS on the admin listener, same shape as `tls` (`client_ca` for mutual TLS).
        restart admin_tls: Option<TlsConfig> = None, read optional(load::tls);
        /// Largest response body that is cached, in bytes.
        reload max_body: u64 = 10 * 1024 * 1024, read size;
        /// Add `X-Cache-Key` and `X-Cache-Tier` to answers.
        reload debug_headers: bool = false, read boolean;
        /// Log one line per request at info (target `cachegate::access`).
        reload access_log: bool = false, read boolean;
        /// How long a client connection may go without progress: for its request head to arrive,
        /// idle between requests, or not reading an answer. Then it is closed.
        restart client_timeout: Duration = Duration::from_secs(30), read duration;
        /// An upgraded connection (WebSocket) on which neither side sent a byte for this long
        /// is closed, as nginx's `proxy_read_timeout` does: a client that vanished without
        /// closing would otherwise hold both connections for ever. Keep it above the
        /// application's ping interval.
        reload tunnel_idle_timeout: Duration = Duration::from_secs(600), read duration;
    }
}

/// `tls = { cert, key, client_ca }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate signed by one of them
    /// (mutual TLS, e.g. when the caller is a gateway).
    pub client_ca: Option<PathBuf>,
}

section! {
    /// `[origin]`: the application behind us.
    pub struct OriginConfig {
        /// Base URL, `http://host:port` or `https://host:port` (a path prefix is not supported).
        reload url: http::Uri,
            read load::origin_url, required "missing key (expected a URL like \"http://127.0.0.1:8000\")";
        /// `host:port` of the origin, used as `Host` unless `preserve_host`.
        reload authority: http::uri::Authority, derived |_| url.as_ref().and_then(|u| u.authority().cloned());
        /// Time allowed for the origin's response headers.
        reload timeout: Duration = Duration::from_secs(30), read duration;
        /// PEM CA certificates an `https://` origin's certificate is checked against, instead
        /// of the public web roots (a private CA).
        reload ca_file: Option<PathBuf> = None, read optional(load::readable_file);
        /// The name an `https://` origin's certificate must carry and the TLS SNI sent, when it
        /// is not the URL's host (e.g. the origin is addressed by IP).
        reload sni: Option<String> = None, read optional(string);
        /// Offer HTTP/2 to an `https://` origin (ALPN); HTTP/1.1 when it does not take it.
        reload http2: bool = true, read boolean;
        /// Forward the client's `Host` instead of the origin's.
        reload preserve_host: bool = false, read boolean;
    }
}

section! {
    /// `[cache]`: tiers and storage rules.
    pub struct CacheConfig {
        /// Shared Redis tier: one `redis://`/`rediss://` URL (a single node), a list of node URLs
        /// or one `redis+cluster://h1:p1,h2:p2/` URL (a Redis Cluster, discovered from any of
        /// them); empty = memory tier only. See [`CacheConfig::redis_target`].
        restart redis_urls: Vec<String> as "redis_url" = Vec::new(), read load::redis_urls;
        /// PEM file of the CA that signed Redis' TLS certificate (`rediss://`), instead of the
        /// public web roots.
        restart redis_ca_file: Option<PathBuf> = None, read optional(load::readable_file);
        /// Namespace of every key; bump the version to orphan old keys.
        restart key_prefix: String = "cachegate".to_string(), read load::key_prefix;
        /// Time allowed for one Redis command before it counts as a failure.
        restart redis_timeout: Duration = Duration::from_millis(250), read duration;
        /// While Redis is unreachable, memory entries younger than this are still served (other
        /// instances' purges cannot reach us then); `0s` = origin only.
        restart degraded_memory_ttl: Duration = Duration::from_secs(5), read duration;
        /// With Redis: one instance fetches a missing key while the others wait this long for it
        /// to appear in Redis (`0s` = off: each instance fetches on its own).
        reload fill_lease: Duration = Duration::ZERO, read duration;
        /// Memory tier bound, in bytes of stored responses.
        restart memory_capacity: u64 = 256 * 1024 * 1024, read size;
        /// The memory tier never keeps an entry longer than this.
        restart memory_ttl: Duration = Duration::from_secs(60), read duration;
        /// Default window for serving stale while one refresh runs.
        reload stale_while_revalidate: Duration = Duration::ZERO, read duration;
        /// Default window for serving stale when the origin fails.
        reload stale_if_error: Duration = Duration::ZERO, read duration;
        /// Honour `no-store`, `private` and `Set-Cookie` from the origin.
        reload respect_origin_cache_control: bool = true, read boolean;
        /// Statuses that may be stored. On `ttl = "origin"` routes any other status (but
        /// `206`, `304` and `1xx`) is stored too when the origin gives it explicit freshness
        /// (`s-maxage`, `max-age`, `Expires`), as RFC 9111 §3 allows.
        reload cacheable_statuses: Vec<u16> = vec![200, 203, 204, 301, 404, 410], read load::statuses;
        /// How long past its stale windows an entry with a validator (`ETag`, `Last-Modified`)
        /// is kept, never to be served as it is, only to be revalidated with a conditional
        /// request whose `304` refreshes it (Varnish's `keep`); `0s` = off.
        reload keep: Duration = Duration::from_secs(600), read duration;
        /// The response field that targets cachegate (RFC 9213): when present and valid it
        /// replaces `CDN-Cache-Control` and `Cache-Control` for cachegate's decisions, and is
        /// not forwarded to clients; `""` = none.
        reload targeted_cache_control: Option<HeaderName> = Some(HeaderName::from_static("cachegate-cache-control")), read load::targeted_field;
        /// Most of the memory tier one tenant's entries may hold, as a share ("10%"); a tenant
        /// at its share gets no new memory entries (they still go to Redis) until some of its
        /// own expire or are evicted. Entries of routes that do not vary on tenant count for
        /// nobody.
        restart memory_tenant_quota: Option<f64> = None, read optional(load::share);
    }
}

/// Which tenants get their own `tenant` label.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TenantLabels {
    /// No per-tenant series.
    #[default]
    Off,
    /// These tenants; every other one is `other`.
    Named(Vec<String>),
    /// The busiest this many, tracked with a bounded counter; every other one is `other`.
    Top(usize),
}

section! {
    /// `[metrics]`: per-tenant figures.
    pub struct MetricsConfig {
        /// `["1", "2"]` or `{ top = 20 }`: the tenants counted under their own label in
        /// `cachegate_tenant_lookups_total` and `/admin/stats`.
        restart tenant_labels: TenantLabels = TenantLabels::Off, read load::tenant_labels;
    }
}

/// Which cookies count as credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialCookies {
    /// Every cookie (`["*"]`, as Varnish does).
    All,
    /// Only these names.
    Named(Vec<String>),
}

impl CredentialCookies {
    /// Whether a cookie with this name is a credential.
    pub fn is_credential(&self, name: &str) -> bool {
        match self {
            CredentialCookies::All => true,
            CredentialCookies::Named(names) => names.iter().any(|n| n == name),
        }
    }
}

section! {
    /// `[identity]`: who is asking.
    pub struct IdentityConfig {
        /// Trusted header carrying the role.
        restart role_header: HeaderName = HeaderName::from_static("x-user-role"), read header_name;
        /// Trusted header carrying the tenant.
        restart tenant_header: HeaderName = HeaderName::from_static("x-org-id"), read header_name;
        /// Trusted header carrying the user, when the gateway sends one. Without it, requests
        /// identified by trusted headers have no user and bypass per-user routes.
        restart user_header: Option<HeaderName> = None, read optional(header_name);
        /// The config names identity headers itself (start-up warns when no peer is trusted).
        reload named_headers: bool = false,
            derived |s| Some(["role_header", "tenant_header", "user_header"].iter().any(|k| s.given(k)));
        /// Peers whose identity and forwarding headers are believed (default: none, because a
        /// TLS terminator or sidecar on loopback would otherwise make them forgeable by every
        /// client behind it). From every other peer they are removed, in every spelling, before
        /// anything reads the request.
        restart trust_headers_from: Vec<IpNet> = Vec::new(), read load::nets;
        /// JWT verification.
        reload jwt: Option<JwtConfig> = None, read optional(load_ident::jwt);
        /// Session lookup against the origin.
        reload lookup: Option<LookupConfig> = None, read optional(load_ident::lookup);
        /// Role of requests without any credentials.
        reload anonymous_role: String = "anonymous".to_string(), read load::anonymous_role;
        /// Which cookies are credentials.
        reload credential_cookies: CredentialCookies = CredentialCookies::All, read load::credential_cookies;
        /// Cookies removed from every request before anything reads it (names, or prefixes ending
        /// in `*`): analytics cookies the origin never reads, which would otherwise split entries
        /// keyed by the origin's `Vary: Cookie`. Neither keyed nor forwarded.
        reload strip_cookies: Vec<String> = Vec::new(), read load::strip_cookies;
    }
}

impl IdentityConfig {
    /// Whether the cookie `name` is removed from requests.
    pub fn strips_cookie(&self, name: &str) -> bool {
        self.strip_cookies.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
    }
}

/// `jwt = { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtConfig {
    /// Header carrying `Bearer <token>` (default `Authorization`), unless `cookie` is set.
    pub header: Option<HeaderName>,
    /// Cookie carrying the token.
    pub cookie: Option<String>,
    /// Environment variable holding the HMAC secret.
    pub secret_env: Option<String>,
    /// PEM public key file for RS*/ES*.
    pub public_key: Option<PathBuf>,
    /// JWKS file for RS*/ES*.
    pub jwks_file: Option<PathBuf>,
    /// Accepted algorithms.
    pub algorithms: Vec<String>,
    /// Claim paths (dotted) for role (default `role`), tenant and user (default `sub`).
    pub role_claim: String,
    /// Tenant claim path; no default, so tokens resolve no tenant unless it is named.
    pub tenant_claim: Option<String>,
    /// User claim path.
    pub user_claim: String,
    /// Issuer every token must carry.
    pub issuer: Option<String>,
    /// Audience every token must carry.
    pub audience: Option<String>,
    /// When the role claim is a list, the first of these it contains is the role.
    pub role_priority: Vec<String>,
}

/// `lookup = { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct LookupConfig {
    /// Origin path answering who a session is.
    pub path: String,
    /// Session cookie name.
    pub cookie: String,
    /// How long an answer is reused.
    pub ttl: Duration,
    /// JSON field (dotted path) of the role; default `role`.
    pub role_field: String,
    /// JSON field of the tenant; default `tenant`.
    pub tenant_field: String,
    /// JSON field of the user; default `user`.
    pub user_field: String,
    /// Writes to these paths (login, logout) drop the writer's session mapping.
    pub reset_paths: Vec<PathPattern>,
}

section! {
    /// `[purge]`: how the purge webhook authenticates.
    pub struct PurgeConfig {
        /// Environment variable holding the bearer token.
        restart token_env: Option<String> = None, read optional(string);
        /// Environment variable holding the HMAC secret for signed webhooks.
        restart hmac_secret_env: Option<String> = None, read optional(string);
    }
}

section! {
    /// `[admin]`: who may read the status page, `/admin/stats` and `/metrics`.
    pub struct AdminConfig {
        /// Environment variable holding a bearer token for them (the purge token works too).
        /// When set, it is required even on a loopback `admin_listen`.
        restart token_env: Option<String> = None, read optional(string);
        /// Serve them without credentials on a non-loopback `admin_listen` (a private network).
        restart open: bool = false, read boolean;
    }
}

/// Limits of one warm (`POST /admin/warm` or `[warm]`): the loader checks `[warm]` against them,
/// so they live with the config rather than with the warmer above it.
pub mod warm_limits {
    /// Most paths one warm request (or `[warm]`) may list.
    pub const MAX_PATHS: usize = 10_000;
    /// Most requests (paths × roles × tenants) one warm may send.
    pub const MAX_REQUESTS: usize = 100_000;
    /// Most warm requests in flight at once.
    pub const MAX_CONCURRENCY: usize = 64;
    /// Requests in flight when nothing says otherwise.
    pub const DEFAULT_CONCURRENCY: usize = 8;
}

/// `[warm]`: paths warmed through the public listener every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmConfig {
    /// Time between two runs; the first run comes one interval after start.
    pub interval: Duration,
    /// Paths (with query) to warm; each starts with `/`.
    pub paths: Vec<String>,
    /// Roles to warm each path for; empty = anonymous.
    pub roles: Vec<String>,
    /// Tenants to warm each path for; empty = no tenant.
    pub tenants: Vec<String>,
    /// Requests in flight at once (1 to 64).
    pub concurrency: usize,
}

/// How long a route's entries are fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// Freshness from the origin's headers (RFC 9111); nothing stored without them.
    Origin,
    /// A fixed lifetime overriding the origin's headers.
    Fixed(Duration),
}

/// Identity parts a route's key varies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vary {
    /// Role.
    pub role: bool,
    /// Tenant.
    pub tenant: bool,
    /// User.
    pub user: bool,
}

impl Vary {
    /// Whether the key varies on nobody.
    pub fn is_empty(&self) -> bool {
        !(self.role || self.tenant || self.user)
    }
}

/// Which query parameters are part of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryRule {
    /// Every parameter, sorted.
    All,
    /// Only these.
    Include(Vec<String>),
    /// All but these.
    Ignore(Vec<String>),
}

impl QueryRule {
    /// Whether a parameter (already decoded) is part of the key.
    pub fn keeps(&self, name: &str) -> bool {
        match self {
            QueryRule::All => true,
            QueryRule::Include(names) => names.iter().any(|n| n == name),
            QueryRule::Ignore(names) => !names.iter().any(|n| n == name),
        }
    }
}

/// One `[[route]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Unique name, used in keys, metrics and purges.
    pub name: String,
    /// Compiled path pattern.
    pub path: PathPattern,
    /// Freshness.
    pub ttl: Ttl,
    /// Identity parts in the key.
    pub vary: Vary,
    /// Query parameters in the key.
    pub query: QueryRule,
    /// Tags of every entry, with path parameters.
    pub tags: Vec<TagTemplate>,
    /// The answer never depends on who asks: credentials are ignored.
    pub public: bool,
    /// Route override of `[cache] stale_while_revalidate`.
    pub stale_while_revalidate: Option<Duration>,
    /// Route override of `[cache] stale_if_error`.
    pub stale_if_error: Option<Duration>,
    /// Store answers carrying `Set-Cookie`, without the cookie.
    pub strip_set_cookie: bool,
}

/// Whose entries a write-triggered purge reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeScope {
    /// The writer's tenant and tenant-less entries (the default).
    Tenant,
    /// Every tenant.
    All,
}

/// One `[[invalidate]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidateConfig {
    /// Methods that trigger it.
    pub methods: Vec<Method>,
    /// Compiled path pattern.
    pub path: PathPattern,
    /// Tags purged, with path parameters.
    pub tags: Vec<TagTemplate>,
    /// Tenant reach.
    pub scope: PurgeScope,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// 1-based line.
    pub line: usize,
    /// Dotted key, e.g. `route[1].ttl`.
    pub key: String,
    /// What was expected.
    pub message: String,
}

/// A config file that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file, as given.
    pub file: PathBuf,
    /// Problems, in file order; empty when the file could not be read.
    pub issues: Vec<Issue>,
    /// Set when the file could not be read at all.
    pub io: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        if let Some(io) = &self.io {
            return write!(f, "{file}: cannot read: {io}");
        }
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{file}:{}: {}: {}", issue.line, issue.key, issue.message)?;
        }
        Ok(())
    }
}

/// Reads and validates a config file.
///
/// # Errors
/// [`ConfigError`] with every problem found, or the I/O error.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        issues: Vec::new(),
        io: Some(e.to_string()),
    })?;
    from_str(&src, path)
}

/// The 1-based line where the dotted key `key` (`server.listen`, `warm`) is written in the TOML
/// text `src`; `None` when it is not set there (or the text does not parse).
pub fn line_of(src: &str, key: &str) -> Option<usize> {
    let root = toml_span::parse(src).ok()?;
    let mut table = root.as_table()?;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let (k, v) = table.iter().find(|(k, _)| k.name == part)?;
        if parts.peek().is_none() {
            return Some(reader::Ctx::new(src).line(k.span.start));
        }
        table = v.as_table()?;
    }
    None
}

/// What `[cache] redis_url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// Plain node URLs (`redis://` or `rediss://`, credentials included): the node, or the
    /// cluster's seed nodes.
    pub seeds: Vec<String>,
    /// A Redis Cluster (a list of URLs, or a `+cluster` scheme).
    pub cluster: bool,
}

impl CacheConfig {
    /// The Redis the shared tier talks to; `None` without `redis_url`. The loader has already
    /// refused what this cannot read, so a loaded config always gives `Some` or `None` here.
    pub fn redis_target(&self) -> Option<RedisTarget> {
        redis_target(&self.redis_urls).ok().flatten()
    }
}

/// Reads `redis_url`'s values: one plain URL is a single node; several, or one
/// `redis+cluster://[user:pass@]h1:p1,h2:p2/` (also `rediss+cluster://`), a cluster.
pub(crate) fn redis_target(urls: &[String]) -> Result<Option<RedisTarget>, String> {
    let (seeds, cluster) = match urls {
        [] => return Ok(None),
        [one] if one.contains("+cluster://") => (cluster_seeds(one)?, true),
        [one] => (vec![one.clone()], false),
        many => (many.to_vec(), true),
    };
    let tls = seeds.first().is_some_and(|s| s.starts_with("rediss://"));
    for seed in &seeds {
        if !(seed.starts_with("redis://") || seed.starts_with("rediss://")) {
            return Err(format!("{seed:?}: expected a redis:// or rediss:// URL (a cluster is one redis+cluster:// URL or a list of node URLs)"));
        }
        if seed.starts_with("rediss://") != tls {
            return Err("mixes redis:// and rediss:// nodes: a cluster speaks TLS on every node or on none".into());
        }
        redis::IntoConnectionInfo::into_connection_info(seed.as_str()).map_err(|e| format!("{seed:?}: {e}"))?;
    }
    Ok(Some(RedisTarget { seeds, cluster }))
}

/// `redis+cluster://[user:pass@]h1:p1,h2:p2[/]` → `redis://[user:pass@]h1:p1`, ….
fn cluster_seeds(url: &str) -> Result<Vec<String>, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?}: not a URL"))?;
    let base = match scheme {
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        _ => return Err(format!("{url:?}: expected redis+cluster:// or rediss+cluster://")),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') {
        return Err(format!(
            "{url:?}: a cluster URL has no database or options (a cluster has one database)"
        ));
    }
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{base}://{userinfo}{h}"))
        .collect();
    if seeds.is_empty() {
        return Err(format!("{url:?}: names no node (expected host:port,host:port)"));
    }
    Ok(seeds)
}
