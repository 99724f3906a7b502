//! Purging: bumps scope generations here and, with Redis, on every instance (through
//! [`coherence`](crate::coherence)), waiting for their acknowledgements.

use std::sync::Arc;

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
        }
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
        let (shared, acks) = match &self.coherence {
            None => {
                bump();
                (false, 0)
            }
            // Redis first, then here: see `Coherence::publish_purge`.
            Some(c) => match c.publish_purge(scopes, soft, bump).await {
                Ok(acks) => (true, acks),
                Err(e) => {
                    tracing::warn!(error = %e, "purge applied to this instance only: redis did not record it");
                    (false, 0)
                }
            },
        };
        PurgeOutcome {
            scopes: scopes.len(),
            shared,
            acks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
