//! cachegate: a caching reverse proxy for read-heavy web apps.
//!
//! # Layout
//! Modules form layers; each imports only from the layers above it in this list (no cycles).
//!
//! Leaves, importing nothing from the crate:
//! * [`clock`]: the clock freshness is judged by
//! * [`route`]: path patterns and tag templates
//! * [`recent`]: the last minutes of traffic per second (counts, hit and miss latency), for the
//!   status page
//! * [`metrics`]: every exported metric, registered on one registry, and the [`recent`] window
//!   (so above `recent`)
//! * `scope`: scope names, generation counters and stamps: O(1) purges, no resurrection
//! * [`message`]: HTTP message pieces: the body type, header hygiene, path normalisation
//! * `watchdog`: closes client connections that send no request head, idle, or stop reading
//! * [`tenants`]: which tenants get a metrics label of their own (bounded)
//!
//! Above them:
//! * [`config`]: `proxy.toml` → a validated [`config::Config`], every problem with file:line:key;
//!   each field declared once (name, type, default, restart-only or reloadable)
//! * [`secrets`]: secrets named by the config, read once
//! * [`tls`]: rustls server configuration from PEM files, swapped on reload
//! * `error`: the public listener's errors, which become HTTP answers in one place
//! * `upstream`: the pooled client to the origin, with its timeout and error mapping
//! * [`tiers`]: storage tiers (memory, Redis split by job, every key named by `Keys`); storage
//!   only, nothing of requests or purges
//! * [`coherence`]: purge fan-out over Redis pub/sub, heartbeat lease, acknowledgements
//! * [`cache`]: the facade the proxy reaches storage through: `Cache::lookup` answers with a
//!   fresh or stale hit or a `FillPermit`, whose `store` is the only way an entry is made; keys,
//!   storage policy and entries
//! * [`invalidation`]: the purger: bumps scopes here and everywhere, waits for acknowledgements
//! * `identity`: role, tenant and user of a request; credentials we cannot resolve
//! * [`warm`]: cache warming through the public listener, on request and on a `[warm]` schedule
//! * `proxy`: the request flow: normalise once, identify, serve from cache, fill, write, purge
//! * [`reload`]: config hot reload (SIGHUP, `POST /admin/reload`)
//! * `admin`: the admin listener (`/healthz`, `/readyz`, `/metrics`, `/admin/stats`, `POST /purge`,
//!   `POST /admin/warm`, `POST /admin/explain`)
//! * [`app`]: wiring, listeners and graceful shutdown
//!
//! Modules the binary, tests and benches do not name are private (`admin`, `error`,
//! `identity`, `proxy`, `scope`, `upstream`, `watchdog`); their items are `pub(crate)`.
//!
//! The binary (`main.rs`) adds the command line and its `cli` module (the `stats`, `purge`,
//! `warm` and `explain` verbs, talking to a running instance's admin listener), so `clap` and `indicatif` stay
//! out of the library.

#![forbid(unsafe_code)]
// Items are crate-private unless the binary, the tests or the benches need them: dead code then
// shows up as dead instead of hiding behind `pub`. (Set here, not in Cargo.toml's `[lints]`,
// so the test crates' shared helpers stay plain `pub`.)
#![warn(unreachable_pub, missing_docs)]

mod admin;
pub mod app;
pub mod cache;
pub mod clock;
pub mod coherence;
pub mod config;
mod error;
mod identity;
pub mod invalidation;
pub mod message;
pub mod metrics;
mod proxy;
pub mod recent;
pub mod reload;
pub mod route;
mod scope;
pub mod secrets;
pub mod tenants;
pub mod tiers;
pub mod tls;
mod upstream;
pub mod warm;
mod watchdog;
