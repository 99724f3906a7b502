//! Looking at what the tiers hold for a key without acting on it, for `explain`: no coalescing
//! slot, no fill lease, no promotion to memory, nothing removed.

use std::sync::Arc;

use http::HeaderName;

use super::entry::{Staleness, WireEntry};
use super::key::BaseKey;
use super::Cache;
use crate::scope::Stamps;

/// What one tier holds under a key.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Its age in seconds, as an answer's `Age` would say.
    pub age_secs: u64,
    /// Where it is in its life.
    pub staleness: Staleness,
    /// A purge since it was stored: it is never served (a soft purge only makes it stale).
    pub purged: bool,
    /// A soft purge since it was stored: served stale while it is refreshed.
    pub soft_purged: bool,
    /// Memory only: this instance may answer from its memory copy now (see
    /// `Cache::memory_trusted`); false while it may have missed purges.
    pub trusted: bool,
}

/// What the shared tier said.
#[derive(Debug, Clone)]
pub enum SharedPeek {
    /// No Redis is configured.
    Off,
    /// Redis did not answer.
    Down(String),
    /// Nothing, or what it holds.
    Found(Option<Seen>),
}

/// What every tier holds under a key.
#[derive(Debug, Clone)]
pub struct Peek {
    /// The memory tier's entry.
    pub memory: Option<Seen>,
    /// The Redis tier's.
    pub shared: SharedPeek,
}

impl Cache {
    /// What the tiers hold under `key`, changing nothing.
    pub async fn peek(&self, key: &str) -> Peek {
        let now = self.clock.now();
        let memory = self.memory.get(key).await.map(|e| Seen {
            age_secs: e.age_secs(now),
            staleness: e.staleness(now),
            purged: !e.stamps.valid(),
            soft_purged: false,
            trusted: self.memory_trusted(&e, now),
        });
        let shared = match &self.redis {
            None => SharedPeek::Off,
            Some(redis) => match redis.get(key).await {
                Err(e) => SharedPeek::Down(e.to_string()),
                Ok(None) => SharedPeek::Found(None),
                Ok(Some(stored)) => {
                    let names: Vec<String> = stored.recorded.iter().map(|(s, _)| s.clone()).collect();
                    let (purged, soft) = match redis.gens(&names).await {
                        Ok(current) => stored.recorded.iter().zip(&current.scopes).fold(
                            (false, false),
                            |(hard, soft), ((_, was), now)| {
                                (hard || was.hard != now.hard, soft || was.soft != now.soft)
                            },
                        ),
                        Err(_) => (true, false),
                    };
                    SharedPeek::Found(WireEntry::decode(&stored.payload).ok().map(|wire| {
                        let entry = self.entry_from_wire(wire, Stamps::default());
                        Seen {
                            age_secs: entry.age_secs(now),
                            staleness: entry.staleness(now),
                            purged,
                            soft_purged: soft,
                            trusted: true,
                        }
                    }))
                }
            },
        };
        Peek { memory, shared }
    }

    /// The request headers the origin's answers for `base` vary on, as learnt from them.
    pub async fn varies_on(&self, base: &BaseKey) -> Option<Arc<[HeaderName]>> {
        self.vary_index.get(base.text.as_str()).await
    }
}
