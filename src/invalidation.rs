//! Purging: bumps scope generations here and, with Redis, on every instance (through
//! [`coherence`](crate::coherence)), waiting for their acknowledgements.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::PurgeScope;
use crate::scope::{tag_scope, tenant_tag_scope, Generations, ScopeKind};

/// The scopes a tag purge bumps, per the spec's tenant rules: a tenant-scoped purge by tenant T
/// reaches T's entries and tenant-less ones; without a tenant (or with `scope = "all"`) it reaches
/// every tenant.
pub fn purge_tag_scopes(tag: &str, scope: PurgeScope, tenant: Option<&str>) -> Vec<String> {
    match (scope, tenant) {
        (PurgeScope::Tenant, Some(t)) => vec![tenant_tag_scope(tag, Some(t)), tenant_tag_scope(tag, None)],
        _ => vec![tag_scope(tag)],
    }
}

// === purging ===

/// What a purge reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeOutcome {
    /// Scopes invalidated.
    pub scopes: usize,
    /// Whether Redis recorded it (so every instance sharing it is covered).
    pub shared: bool,
    /// Other instances that acknowledged it.
    pub acks: usize,
    /// Other instances it had to reach: those registered as live when it was published (0
    /// without Redis, or when Redis did not record it).
    pub others: usize,
    /// From publishing to the last acknowledgement or the lease running out, when shared.
    pub propagation: Option<Duration>,
}

impl PurgeOutcome {
    /// Instances that have applied it, this one included.
    pub fn acked(&self) -> usize {
        self.acks + 1
    }

    /// Instances it had to reach, this one included.
    pub fn instances(&self) -> usize {
        self.others + 1
    }
}

/// How many purges [`Purger::recent`] remembers.
pub const RECENT_PURGES: usize = 20;

/// Most scopes a remembered purge keeps (a write can purge many; the page shows a few).
const SCOPES_KEPT: usize = 8;

/// One purge, as the status page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRecord {
    /// When it finished (Unix seconds).
    pub at_unix: u64,
    /// What asked for it.
    pub trigger: Trigger,
    /// Its first scopes (at most a few).
    pub scopes: Vec<String>,
    /// How many scopes it had in all.
    pub scope_count: usize,
    /// Whether it marked entries stale instead of removing them.
    pub soft: bool,
    /// What it reached.
    pub outcome: PurgeOutcome,
}

/// What asked for a purge (the `trigger` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A successful write through the proxy.
    Write,
    /// `POST /purge`.
    Webhook,
    /// `cachegate purge`.
    Cli,
}

impl Trigger {
    /// Every trigger, so each `cachegate_purges_total` series can exist before the first purge.
    pub const ALL: [Trigger; 3] = [Trigger::Write, Trigger::Webhook, Trigger::Cli];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Write => "write",
            Trigger::Webhook => "webhook",
            Trigger::Cli => "cli",
        }
    }
}

/// Creates every `cachegate_purges_total` series at 0 (see `proxy::prime_metrics`).
pub fn prime_metrics(m: &crate::metrics::Metrics) {
    for trigger in Trigger::ALL {
        for kind in ScopeKind::ALL {
            m.purge_counter(trigger.as_str(), kind.as_str());
        }
    }
}

/// Applies purges locally and, with Redis, everywhere.
pub struct Purger {
    generations: Arc<Generations>,
    coherence: Option<Arc<crate::coherence::Coherence>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// The last [`RECENT_PURGES`] purges, newest last.
    recent: Mutex<VecDeque<PurgeRecord>>,
}

impl Purger {
    /// A purger over the local table, publishing through `coherence` when Redis is configured.
    pub fn new(
        generations: Arc<Generations>,
        coherence: Option<Arc<crate::coherence::Coherence>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Purger {
            generations,
            coherence,
            metrics,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_PURGES)),
        }
    }

    /// This instance's id on the purge channel and the other instances heard there; `None`
    /// without Redis.
    pub fn instances(&self) -> Option<(u64, Vec<(u64, crate::coherence::Peer)>)> {
        self.coherence.as_ref().map(|c| (c.id(), c.peers()))
    }

    /// The last purges, newest first.
    pub fn recent(&self) -> Vec<PurgeRecord> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().rev().cloned().collect()
    }

    fn remember(&self, record: PurgeRecord) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_PURGES {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    /// Records `signature` among every instance's signed purges; false when one of them saw
    /// it within `ttl`. True without Redis, or when Redis does not answer (the local check
    /// still stands).
    pub async fn first_sighting(&self, signature: &str, ttl: std::time::Duration) -> bool {
        match &self.coherence {
            Some(c) => c.remember_once(signature, ttl).await,
            None => true,
        }
    }

    /// Invalidates `scopes` in Redis, then here, then on every other instance; returns once
    /// they have all been told (or the lease time has passed). Without Redis, here at once. A soft purge marks Redis
    /// entries stale instead of invalid; memory copies are always dropped.
    pub async fn purge(&self, scopes: &[String], soft: bool, trigger: Trigger) -> PurgeOutcome {
        let mut kinds: Vec<ScopeKind> = scopes.iter().map(|s| ScopeKind::of(s)).collect();
        kinds.sort_unstable();
        kinds.dedup();
        for k in kinds {
            self.metrics.purge_counter(trigger.as_str(), k.as_str()).inc();
        }
        self.metrics.purged.inc_by(scopes.len() as u64);
        let bump = || {
            for s in scopes {
                self.generations.bump(s);
            }
        };
        let local = PurgeOutcome {
            scopes: scopes.len(),
            shared: false,
            acks: 0,
            others: 0,
            propagation: None,
        };
        let outcome = match &self.coherence {
            None => {
                bump();
                local
            }
            // Redis first, then here: see `Coherence::publish_purge`.
            Some(c) => match c.publish_purge(scopes, soft, bump).await {
                Ok(p) => {
                    self.metrics.purge_propagation.observe(p.took.as_secs_f64());
                    PurgeOutcome {
                        shared: true,
                        acks: p.acks,
                        others: p.others,
                        propagation: Some(p.took),
                        ..local
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purge applied to this instance only: redis did not record it");
                    local
                }
            },
        };
        self.remember(PurgeRecord {
            at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            trigger,
            scopes: scopes.iter().take(SCOPES_KEPT).cloned().collect(),
            scope_count: scopes.len(),
            soft,
            outcome,
        });
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_purges_are_kept_newest_first_and_bounded() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let purger = Purger::new(Arc::default(), None, metrics.clone());
        for i in 0..RECENT_PURGES + 5 {
            let scopes: Vec<String> = (0..=i).map(|n| format!("tag:t{n}")).collect();
            purger.purge(&scopes, false, Trigger::Cli).await;
        }
        let recent = purger.recent();
        assert_eq!(recent.len(), RECENT_PURGES);
        let newest = &recent[0];
        assert_eq!(newest.scope_count, RECENT_PURGES + 5);
        assert_eq!(newest.scopes.len(), SCOPES_KEPT, "long scope lists are cut");
        assert_eq!(recent[RECENT_PURGES - 1].scope_count, 6, "the five oldest are gone");
        // Without Redis a purge reaches this instance only, and nothing propagates.
        assert_eq!((newest.outcome.acked(), newest.outcome.instances()), (1, 1));
        assert_eq!(newest.outcome.propagation, None);
        assert_eq!(metrics.purge_propagation.get_sample_count(), 0);
    }

    #[test]
    fn label_lists_name_every_variant_once() {
        for t in Trigger::ALL {
            // Exhaustive on purpose: a new trigger stops this compiling until it is listed in `ALL`.
            match t {
                Trigger::Write | Trigger::Webhook | Trigger::Cli => {}
            }
        }
        let triggers: std::collections::HashSet<_> = Trigger::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(triggers.len(), Trigger::ALL.len());
    }
}
