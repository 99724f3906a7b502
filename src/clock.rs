//! The clock freshness is measured with.
//!
//! moka and tokio keep their own time; our freshness decisions read this clock instead, so tests
//! can move it forward (`advance`) to expire entries without waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Monotonic and wall time, plus a test-controlled offset.
#[derive(Debug, Default)]
pub struct Clock {
    offset_nanos: AtomicU64,
}

impl Clock {
    /// Monotonic now.
    pub fn now(&self) -> Instant {
        Instant::now() + self.offset()
    }

    /// Wall-clock now (for `Date`/`Expires` arithmetic).
    pub fn system_now(&self) -> SystemTime {
        SystemTime::now() + self.offset()
    }

    /// Moves this clock forward; used by tests to expire entries.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset_nanos.load(Ordering::Relaxed))
    }
}

/// Whole milliseconds, saturating: a `Duration` can hold more than `u64` milliseconds, and a
/// plain `as u64` would wrap such a value round to a short one.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
