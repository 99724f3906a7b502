//! Storage tiers, behind the cache facade. Storage only: nothing here knows of requests,
//! identities or purge policy.
//!
//! * [`memory`]: the in-process tier, opaque entries bounded by bytes
//! * [`redis`]: the shared tier: entries, scope counters, purge channel, leases; every Redis key
//!   and channel name comes from [`redis::Keys`]

pub mod memory;
pub mod redis;
