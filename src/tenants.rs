//! Which tenants get a `tenant` label of their own, keeping the label set bounded.
//!
//! With a list, those tenants; with `{ top = N }`, the N busiest, found with a space-saving
//! counter (Metwally et al.) of 4N slots: memory stays O(N) however many tenants there are, and
//! any tenant with more than 1/(4N) of the traffic is always counted. A tenant takes a free
//! label, or the label of the least busy labelled tenant once it has twice that one's count;
//! the tenant it displaces goes back to `other` and its series are dropped, so at most N
//! tenants have series at any time. Every other tenant is `other`; a request with no tenant is
//! `none`.

use std::sync::{Arc, Mutex};

/// The label of tenants without one of their own.
pub const OTHER: &str = "other";
/// The label of requests with no tenant.
pub const NONE: &str = "none";

/// Assigns `tenant` labels.
pub struct TenantLabeller {
    mode: Mode,
}

enum Mode {
    Named(Vec<String>),
    Top { n: usize, state: Mutex<Top> },
}

#[derive(Default)]
struct Top {
    /// Space-saving slots: tenant, estimated count, and how much of it may be overestimate
    /// (the count it inherited).
    slots: Vec<(Arc<str>, u64, u64)>,
    /// Tenants with a label of their own.
    labelled: Vec<Arc<str>>,
}

/// A tenant's label, and the tenant whose label it took (its series are to be dropped).
pub struct Label {
    /// The label.
    pub label: Arc<str>,
    /// Displaced from its own label by this request's tenant.
    pub displaced: Option<Arc<str>>,
}

impl TenantLabeller {
    /// These tenants only.
    pub fn named(tenants: Vec<String>) -> Self {
        TenantLabeller {
            mode: Mode::Named(tenants),
        }
    }

    /// The `n` busiest.
    pub fn top(n: usize) -> Self {
        TenantLabeller {
            mode: Mode::Top {
                n,
                state: Mutex::new(Top::default()),
            },
        }
    }

    /// Counts one request of `tenant` and says its label.
    pub fn label(&self, tenant: Option<&str>) -> Label {
        let plain = |l: &str| Label {
            label: Arc::from(l),
            displaced: None,
        };
        let Some(t) = tenant else { return plain(NONE) };
        match &self.mode {
            Mode::Named(names) if names.iter().any(|n| n == t) => plain(t),
            Mode::Named(_) => plain(OTHER),
            Mode::Top { n, state } => {
                let mut top = state.lock().unwrap_or_else(|e| e.into_inner());
                top.count(t, *n)
            }
        }
    }

    /// The tenants with a label of their own now.
    pub fn labelled(&self) -> Vec<String> {
        match &self.mode {
            Mode::Named(names) => names.clone(),
            Mode::Top { state, .. } => {
                let top = state.lock().unwrap_or_else(|e| e.into_inner());
                top.labelled.iter().map(|t| t.to_string()).collect()
            }
        }
    }
}

impl Top {
    fn count(&mut self, t: &str, n: usize) -> Label {
        // Only what is certainly its own traffic can win a label: a newcomer inherits a count.
        let certain = self.bump(t, 4 * n);
        if let Some(own) = self.labelled.iter().find(|l| ***l == *t) {
            return Label {
                label: own.clone(),
                displaced: None,
            };
        }
        let name: Arc<str> = Arc::from(t);
        if self.labelled.len() < n {
            self.labelled.push(name.clone());
            return Label {
                label: name,
                displaced: None,
            };
        }
        let least = self
            .labelled
            .iter()
            .enumerate()
            .map(|(i, l)| (i, self.estimate(l)))
            .min_by_key(|(_, c)| *c);
        match least {
            Some((i, c)) if certain > 2 * c.max(1) => {
                let displaced = std::mem::replace(&mut self.labelled[i], name.clone());
                Label {
                    label: name,
                    displaced: Some(displaced),
                }
            }
            _ => Label {
                label: Arc::from(OTHER),
                displaced: None,
            },
        }
    }

    /// One more request of `t`; returns the count it certainly has.
    fn bump(&mut self, t: &str, capacity: usize) -> u64 {
        if let Some(slot) = self.slots.iter_mut().find(|(n, _, _)| **n == *t) {
            slot.1 += 1;
            return slot.1 - slot.2;
        }
        if self.slots.len() < capacity {
            self.slots.push((Arc::from(t), 1, 0));
            return 1;
        }
        // Space-saving: the newcomer inherits the smallest count, an upper bound of its own.
        let min = self
            .slots
            .iter_mut()
            .min_by_key(|(_, c, _)| *c)
            .expect("capacity is at least 4");
        *min = (Arc::from(t), min.1 + 1, min.1);
        1
    }

    /// The most requests `t` may have had (0 once it has lost its slot).
    fn estimate(&self, t: &str) -> u64 {
        self.slots.iter().find(|(n, _, _)| **n == *t).map_or(0, |(_, c, _)| *c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_tenants_get_labels_and_the_rest_are_other() {
        let l = TenantLabeller::top(2);
        for _ in 0..50 {
            l.label(Some("big"));
        }
        for i in 0..1000 {
            l.label(Some(&format!("t{i}")));
            if i % 3 == 0 {
                l.label(Some("mid"));
            }
        }
        let labelled = l.labelled();
        assert!(labelled.len() <= 2, "{labelled:?}");
        assert!(labelled.contains(&"big".to_string()), "{labelled:?}");
        assert!(labelled.contains(&"mid".to_string()), "{labelled:?}");
        assert_eq!(&*l.label(Some("t5")).label, OTHER);
        assert_eq!(&*l.label(None).label, NONE);
    }

    #[test]
    fn named_tenants_only() {
        let l = TenantLabeller::named(vec!["1".into()]);
        assert_eq!(&*l.label(Some("1")).label, "1");
        assert_eq!(&*l.label(Some("2")).label, OTHER);
    }
}
