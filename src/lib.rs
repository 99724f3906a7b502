//! cachegate: a caching reverse proxy for read-heavy web apps.
//!
//! # Layout
//! * [`config`]: `proxy.toml` → a validated [`config::Config`], every problem with file:line:key
//! * [`route`]: path patterns and tag templates
//! * [`identity`]: role, tenant and user of a request; credentials we cannot resolve
//! * [`cache`]: the cache facade, keys, storage policy and entries
//! * [`tiers`]: storage tiers (memory, Redis)
//! * [`invalidation`]: scopes, generation counters and the purger: O(1) purges, no resurrection
//! * [`coherence`]: purge fan-out over Redis pub/sub, heartbeat lease, acknowledgements
//! * [`proxy`]: the request flow, origin client, header hygiene
//! * [`admin`]: the admin listener (`/healthz`, `/readyz`, `/metrics`, `/admin/stats`, `POST /purge`,
//!   `POST /admin/warm`)
//! * [`warm`]: cache warming through the public listener, on request and on a `[warm]` schedule
//! * [`cli`]: the `stats`, `purge` and `warm` verbs, talking to a running instance's admin listener
//! * [`metrics`]: every exported metric, registered on a registry passed in
//! * [`error`]: errors that become HTTP answers, in one place
//! * [`secrets`]: secrets named by the config, read once
//! * [`clock`]: the clock freshness is judged by
//! * [`reload`]: config hot reload (SIGHUP, `POST /admin/reload`)
//! * [`watchdog`]: closes client connections that send no request head, idle, or stop reading
//! * [`app`]: wiring, listeners and graceful shutdown

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod coherence;
pub mod config;
pub mod error;
pub mod identity;
pub mod invalidation;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod secrets;
pub mod tiers;
pub mod warm;
pub mod watchdog;
