//! Scopes and their generation counters: what a purge names, and how an entry knows it was
//! purged.
//!
//! Every cached entry belongs to a few *scopes* (`all`, its route, its URL, each tag per tenant).
//! Each scope has a generation counter. An entry records the generations of its scopes when its
//! origin fetch *started*; it is valid while all of them are unchanged. A purge bumps one counter
//! per scope, whatever the number of entries it covers, and an origin fetch that started before a
//! purge can never be served or stored after it, because its recorded generation is old.
//!
//! Entries hold the counters themselves (`Arc<AtomicU64>`), so checking validity on a hit is a
//! handful of atomic loads and no map lookups. This module is a leaf: it imports nothing from
//! the crate, so storage, identity and the cache can all build on it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::sync::Notify;

/// Everything but RFC 3986 unreserved characters is encoded in key and scope components.
pub(crate) const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes a free-form value (tenant, tag) for use inside a scope name or key.
pub fn encode_component(v: &str) -> Cow<'_, str> {
    utf8_percent_encode(v, COMPONENT).into()
}

const PRUNE_SLACK: usize = 10_000;

/// The counter of one scope.
type Cell = Arc<AtomicU64>;

/// The generation table of this instance.
#[derive(Debug, Default)]
pub struct Generations {
    /// foldhash: a purge or fill hashes several scope names, SipHash made that a visible cost.
    cells: RwLock<HashMap<Box<str>, Cell, foldhash::fast::RandomState>>,
    /// Counts every purge; lets a fill whose scopes are only known after the response (the
    /// origin's surrogate keys) detect that some purge happened while it was fetching.
    epoch: AtomicU64,
    /// Table size after the last prune. Under a stream of new URLs the table grows by one
    /// counter per miss; once it doubles, the pruner is woken early instead of waiting for its
    /// next tick, so memory stays proportional to what is cached.
    pruned_len: AtomicUsize,
    /// Wakes the pruner.
    pub prune_wanted: Notify,
}

/// The generations of an entry's scopes, captured before its fetch.
#[derive(Debug, Clone, Default)]
pub struct Stamps(Vec<(Cell, u64)>);

impl Stamps {
    /// Whether no scope has been purged since the capture.
    pub fn valid(&self) -> bool {
        self.0.iter().all(|(c, g)| c.load(Ordering::Acquire) == *g)
    }

    /// A stamp that is never valid: forces a fill not to be stored.
    pub fn expired() -> Stamps {
        Stamps(vec![(Arc::new(AtomicU64::new(1)), 0)])
    }

    /// Adds stamps captured later (for scopes learnt from the response).
    pub fn extend(&mut self, other: Stamps) {
        self.0.extend(other.0);
    }
}

impl Generations {
    /// Captures the current generation of every scope, creating counters as needed.
    pub fn stamp<S: AsRef<str>>(&self, scopes: &[S]) -> Stamps {
        let mut out = Vec::with_capacity(scopes.len());
        let mut missing = Vec::new();
        {
            let cells = self.cells.read().unwrap_or_else(|e| e.into_inner());
            for s in scopes {
                match cells.get(s.as_ref()) {
                    Some(c) => out.push((c.clone(), c.load(Ordering::Acquire))),
                    None => missing.push(s.as_ref()),
                }
            }
        }
        if !missing.is_empty() {
            let mut cells = self.cells.write().unwrap_or_else(|e| e.into_inner());
            for s in missing {
                let c = cells.entry(s.into()).or_default().clone();
                let g = c.load(Ordering::Acquire);
                out.push((c, g));
            }
            if cells.len() > 2 * self.pruned_len.load(Ordering::Relaxed) + PRUNE_SLACK {
                self.prune_wanted.notify_one();
            }
        }
        Stamps(out)
    }

    /// Bumps a scope's generation; returns whether anything could have been holding it.
    pub fn bump(&self, scope: &str) -> bool {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let cells = self.cells.read().unwrap_or_else(|e| e.into_inner());
        match cells.get(scope) {
            Some(c) => {
                c.fetch_add(1, Ordering::AcqRel);
                true
            }
            None => false,
        }
    }

    /// The purge counter; see [`Generations::bump`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Drops counters no entry or fetch refers to any more, so the table does not grow without
    /// bound. Safe because a counter only the table holds guards nothing.
    pub fn prune(&self) -> usize {
        let mut cells = self.cells.write().unwrap_or_else(|e| e.into_inner());
        let before = cells.len();
        cells.retain(|_, c| Arc::strong_count(c) > 1);
        self.pruned_len.store(cells.len(), Ordering::Relaxed);
        before - cells.len()
    }

    /// Number of live scopes.
    pub fn len(&self) -> usize {
        self.cells.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === the shared tier's counters, as this instance knows them ===

/// The hard and soft generation of one scope in the shared tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SharedGen {
    /// A change invalidates.
    pub(crate) hard: u64,
    /// A change makes stale.
    pub(crate) soft: u64,
}

/// The shared tier's counters as this instance last learnt them: read once per scope, then
/// kept up to date by the values every purge message carries. It lets a shared-tier entry be
/// validated without reading counters, like a memory entry.
///
/// What it says is only as good as the purge channel: it is trusted within one *period* of
/// unbroken lease, and forgotten when a period ends (subscription lost, lease lapsed), since
/// purges may have been missed. Counters only grow, so learning takes the larger value and the
/// order in which a read and a purge message arrive does not matter.
#[derive(Debug, Default)]
pub(crate) struct CounterMirror {
    known: RwLock<HashMap<Box<str>, SharedGen, foldhash::fast::RandomState>>,
    /// The purge counter, learnt like the scopes' (`None` until read).
    epoch: RwLock<Option<u64>>,
    /// Bumped when what was learnt can no longer be trusted.
    period: AtomicU64,
    /// Bumped by every purge message applied: a read that started before one may predate its
    /// counter increment, and must not be learnt.
    heard: AtomicU64,
}

/// When a read of the shared tier's counters started, for [`CounterMirror::learn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MirrorToken {
    period: u64,
    heard: u64,
}

/// Scopes remembered before the mirror forgets everything and starts again.
const MIRROR_MAX: usize = 1_000_000;

impl CounterMirror {
    /// The current period: what [`CounterMirror::heard`] is told of.
    pub(crate) fn period(&self) -> u64 {
        self.period.load(Ordering::Acquire)
    }

    /// Take before reading counters from the shared tier; pass it to [`CounterMirror::learn`].
    pub(crate) fn token(&self) -> MirrorToken {
        MirrorToken {
            period: self.period(),
            heard: self.heard.load(Ordering::Acquire),
        }
    }

    /// Forgets everything: purges may have been missed.
    pub(crate) fn forget(&self) {
        self.period.fetch_add(1, Ordering::AcqRel);
        self.known.write().unwrap_or_else(|e| e.into_inner()).clear();
        *self.epoch.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// What is known of `scope`.
    pub(crate) fn get(&self, scope: &str) -> Option<SharedGen> {
        self.known.read().unwrap_or_else(|e| e.into_inner()).get(scope).copied()
    }

    /// The purge counter, when known.
    pub(crate) fn epoch(&self) -> Option<u64> {
        *self.epoch.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Records values read from the shared tier since `token` was taken (both counters of
    /// each scope, read together). Ignored when the period has ended since, or when a purge
    /// message was applied meanwhile: the read may predate that purge, and a scope the message
    /// skipped as unknown would be learnt with its old value.
    pub(crate) fn learn<'a>(
        &self,
        token: MirrorToken,
        epoch: Option<u64>,
        scopes: impl IntoIterator<Item = (&'a str, SharedGen)>,
    ) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock `forget` and `heard` take, so nothing read before either lands
        // after it.
        if self.token() != token {
            return;
        }
        if known.len() >= MIRROR_MAX {
            known.clear();
        }
        for (scope, g) in scopes {
            let e = known.entry(scope.into()).or_default();
            e.hard = e.hard.max(g.hard);
            e.soft = e.soft.max(g.soft);
        }
        if let Some(v) = epoch {
            let mut cur = self.epoch.write().unwrap_or_else(|e| e.into_inner());
            *cur = Some(cur.map_or(v, |c| c.max(v)));
        }
    }
}

impl CounterMirror {
    /// Records what a purge message says: the new value of the hard (or, for a soft purge,
    /// soft) counter of each purged scope. Only scopes already known are updated: the other
    /// counter of an unknown scope is not in the message, and guessing it could pass an entry
    /// a soft purge made stale.
    pub(crate) fn heard<'a>(
        &self,
        period: u64,
        epoch: Option<u64>,
        soft: bool,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        if self.period() != period {
            return;
        }
        self.heard.fetch_add(1, Ordering::AcqRel);
        for (scope, v) in values {
            if let Some(g) = known.get_mut(scope) {
                let c = if soft { &mut g.soft } else { &mut g.hard };
                *c = (*c).max(v);
            }
        }
        if let Some(v) = epoch {
            let mut cur = self.epoch.write().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cur.as_mut() {
                *c = (*c).max(v);
            }
        }
    }
}

// === scope names ===

/// The scope every entry belongs to.
pub(crate) const ALL: &str = "all";

/// Scope of every entry of a route.
pub(crate) fn route_scope(route: &str) -> String {
    format!("route:{route}")
}

/// Scope of one URL of a route (every identity variant of it).
pub(crate) fn url_scope(route: &str, path: &str, query: &str) -> String {
    format!("url:{route}:{path}?{query}")
}

/// Scope of a tag across every tenant.
pub(crate) fn tag_scope(tag: &str) -> String {
    format!("tag:{}", encode_component(tag))
}

/// Scope of a tag for one tenant, or for tenant-less entries when `tenant` is `None`.
pub(crate) fn tenant_tag_scope(tag: &str, tenant: Option<&str>) -> String {
    let t = tenant.map(encode_component).unwrap_or_default();
    format!("tag:{}@{t}", encode_component(tag))
}

/// Scope of one session's identity mapping (by the hash of its cookie): a login or logout
/// purges it, so every instance forgets the mapping before the answer is sent.
pub(crate) fn session_scope(hash_hex: &str) -> String {
    format!("session:{hash_hex}")
}

/// Scope of every entry keyed with one tenant.
pub(crate) fn tenant_scope(tenant: &str) -> String {
    format!("tenant:{}", encode_component(tenant))
}

/// The scopes of an entry of `route` with `tags`, keyed with `tenant`.
pub(crate) fn entry_scopes(route: &str, url: String, tags: &[String], tenant: Option<&str>) -> Vec<String> {
    let mut scopes = Vec::with_capacity(4 + 2 * tags.len());
    scopes.push(ALL.to_string());
    scopes.push(route_scope(route));
    scopes.push(url);
    if let Some(t) = tenant {
        scopes.push(tenant_scope(t));
    }
    for t in tags {
        scopes.push(tag_scope(t));
        scopes.push(tenant_tag_scope(t, tenant));
    }
    scopes
}

/// What sort of thing a scope names (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ScopeKind {
    /// A tag, across tenants or for one.
    Tag,
    /// Every entry of a route.
    Route,
    /// One URL of a route.
    Path,
    /// Every entry keyed with one tenant.
    Tenant,
    /// Every entry.
    All,
    /// One session's identity mapping.
    Session,
}

impl ScopeKind {
    /// Every kind, so each `cachegate_purges_total` series can exist before the first purge.
    pub(crate) const ALL: [ScopeKind; 6] = [
        ScopeKind::Tag,
        ScopeKind::Route,
        ScopeKind::Path,
        ScopeKind::Tenant,
        ScopeKind::All,
        ScopeKind::Session,
    ];

    /// The kind of `scope`, from the prefix its constructor gave it.
    pub(crate) fn of(scope: &str) -> ScopeKind {
        match scope.split(':').next() {
            Some("tag") => ScopeKind::Tag,
            Some("route") => ScopeKind::Route,
            Some("url") => ScopeKind::Path,
            Some("tenant") => ScopeKind::Tenant,
            Some("session") => ScopeKind::Session,
            _ => ScopeKind::All,
        }
    }

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Tag => "tag",
            ScopeKind::Route => "route",
            ScopeKind::Path => "path",
            ScopeKind::Tenant => "tenant",
            ScopeKind::All => "all",
            ScopeKind::Session => "session",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_kinds_name_every_variant_once() {
        for k in ScopeKind::ALL {
            // Exhaustive on purpose: a new scope kind stops this compiling until it is in `ALL`.
            match k {
                ScopeKind::Tag
                | ScopeKind::Route
                | ScopeKind::Path
                | ScopeKind::Tenant
                | ScopeKind::All
                | ScopeKind::Session => {}
            }
        }
        let kinds: std::collections::HashSet<_> = ScopeKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(kinds.len(), ScopeKind::ALL.len());
    }

    #[test]
    fn scope_kinds_follow_the_scope_constructors() {
        assert_eq!(ScopeKind::of(&tag_scope("t")), ScopeKind::Tag);
        assert_eq!(ScopeKind::of(&tenant_tag_scope("t", Some("x"))), ScopeKind::Tag);
        assert_eq!(ScopeKind::of(&route_scope("r")), ScopeKind::Route);
        assert_eq!(ScopeKind::of(&url_scope("r", "/p", "")), ScopeKind::Path);
        assert_eq!(ScopeKind::of(&tenant_scope("x")), ScopeKind::Tenant);
        assert_eq!(ScopeKind::of(ALL), ScopeKind::All);
        assert_eq!(ScopeKind::of(&session_scope("ab")), ScopeKind::Session);
    }

    #[test]
    fn bump_invalidates_earlier_stamps_only() {
        let g = Generations::default();
        let s1 = g.stamp(&["a", "b"]);
        assert!(s1.valid());
        assert!(g.bump("b"));
        assert!(!s1.valid());
        let s2 = g.stamp(&["a", "b"]);
        assert!(s2.valid());
        assert!(!g.bump("never-stamped"));
    }

    #[test]
    fn prune_keeps_held_scopes() {
        let g = Generations::default();
        let held = g.stamp(&["kept"]);
        drop(g.stamp(&["dropped"]));
        assert_eq!(g.prune(), 1);
        assert_eq!(g.len(), 1);
        assert!(held.valid());
    }

    #[test]
    fn tenant_scopes_do_not_collide() {
        assert_ne!(tenant_tag_scope("x@y", None), tenant_tag_scope("x", Some("y@")));
    }
}
