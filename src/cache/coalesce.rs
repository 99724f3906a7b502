//! One origin fetch per key: concurrent misses wait for the first one's answer.
//!
//! Ordering is kept: a request may join a fetch only while no purge has touched the fetch's
//! scopes since it started (its stamps are still valid). A request that arrives after a purge
//! starts its own fetch, and the purged fetch's result is not stored, so nobody is answered
//! from it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::entry::CachedResponse;
use crate::scope::Stamps;

/// What a finished fetch left: the stored entry and the key it was stored under.
#[derive(Debug, Clone)]
pub(super) struct Done {
    /// The key the entry went to (the origin's `Vary` may have extended the request's key).
    pub key: String,
    /// The entry.
    pub entry: Arc<CachedResponse>,
}

/// A fetch in progress.
pub(super) struct Flight {
    stamps: Stamps,
    /// `None` while running; `Some(None)` when it ended without a storable entry.
    done: watch::Sender<Option<Option<Done>>>,
}

impl Flight {
    /// Waits for the fetch to finish; `None` when it stored nothing.
    pub(super) async fn wait(&self) -> Option<Done> {
        let mut rx = self.done.subscribe();
        let result = rx.wait_for(|v| v.is_some()).await.ok()?.clone();
        result.flatten()
    }
}

/// The table of fetches in progress.
#[derive(Default)]
pub(super) struct Coalescer {
    flights: Mutex<HashMap<String, Arc<Flight>, foldhash::fast::RandomState>>,
}

/// The role a request takes for its key.
pub(super) enum Join {
    /// It fetches; others may wait for it. Finish with [`Leader::finish`].
    Leader(Leader),
    /// Another request is fetching this key and no purge has touched it since.
    Follower(Arc<Flight>),
}

/// The fetching request's handle; dropping it unfinished releases the waiters empty-handed.
pub(super) struct Leader {
    key: String,
    flight: Arc<Flight>,
    table: Arc<Coalescer>,
}

impl Coalescer {
    /// Joins the fetch for `key`, or becomes its leader with `stamps` as its validity.
    pub(super) fn join(self: &Arc<Self>, key: &str, stamps: Stamps) -> Join {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = flights.get(key) {
            if f.stamps.valid() {
                return Join::Follower(f.clone());
            }
        }
        let (done, _) = watch::channel(None);
        let flight = Arc::new(Flight { stamps, done });
        flights.insert(key.to_string(), flight.clone());
        Join::Leader(Leader {
            key: key.to_string(),
            flight,
            table: self.clone(),
        })
    }
}

impl Leader {
    /// Publishes the fetch's result to its waiters.
    pub(super) fn finish(self, result: Option<Done>) {
        self.flight.done.send_replace(Some(result));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        // Unfinished (an error): release the waiters, who then fetch for themselves.
        if self.flight.done.borrow().is_none() {
            self.flight.done.send_replace(Some(None));
        }
        let mut flights = self.table.flights.lock().unwrap_or_else(|e| e.into_inner());
        if flights.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
            flights.remove(&self.key);
        }
    }
}
