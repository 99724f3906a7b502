//! cachegate: a caching reverse proxy for read-heavy web apps.
//!
//! # Layout
//! Modules form layers; each imports only from the layers above it in this list (no cycles).
//!
//! Leaves, importing nothing from the crate:
//! * [`clock`]: the clock freshness is judged by
//! * [`route`]: path patterns and tag templates
//! * [`metrics`]: every exported metric, registered on one registry
//! * [`scope`]: scope names, generation counters and stamps: O(1) purges, no resurrection
//! * [`message`]: HTTP message pieces: the body type, header hygiene, path normalisation
//! * [`watchdog`]: closes client connections that send no request head, idle, or stop reading
//!
//! Above them:
//! * [`config`]: `proxy.toml` → a validated [`config::Config`], every problem with file:line:key
//! * [`secrets`]: secrets named by the config, read once
//! * [`error`]: errors that become HTTP answers, in one place
//! * [`upstream`]: the pooled client to the origin, with its timeout and error mapping
//! * [`tiers`]: storage tiers (memory, Redis); storage only, nothing of requests or purges
//! * [`coherence`]: purge fan-out over Redis pub/sub, heartbeat lease, acknowledgements
//! * [`cache`]: the cache facade, keys, storage policy and entries
//! * [`invalidation`]: the purger: bumps scopes here and everywhere, waits for acknowledgements
//! * [`identity`]: role, tenant and user of a request; credentials we cannot resolve
//! * [`warm`]: cache warming through the public listener, on request and on a `[warm]` schedule
//! * [`proxy`]: the request flow: normalise once, identify, serve from cache, fill, write, purge
//! * [`reload`]: config hot reload (SIGHUP, `POST /admin/reload`)
//! * [`admin`]: the admin listener (`/healthz`, `/readyz`, `/metrics`, `/admin/stats`, `POST /purge`,
//!   `POST /admin/warm`)
//! * [`app`]: wiring, listeners and graceful shutdown
//!
//! The binary (`main.rs`) adds the command line and its `cli` module (the `stats`, `purge` and
//! `warm` verbs, talking to a running instance's admin listener), so `clap` and `indicatif` stay
//! out of the library.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cache;
pub mod clock;
pub mod coherence;
pub mod config;
pub mod error;
pub mod identity;
pub mod invalidation;
pub mod message;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod scope;
pub mod secrets;
pub mod tiers;
pub mod upstream;
pub mod warm;
pub mod watchdog;
