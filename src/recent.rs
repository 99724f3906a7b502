//! The last few minutes of traffic, one slot per second, for the status page: request counts by
//! cache result and a compact latency histogram of hits and of misses.
//!
//! Recording is a load and two relaxed atomic adds (the caller's clock reading is reused); no lock, no allocation. A slot is
//! reused when its second comes round again: the first writer of the new second claims it
//! (compare-and-swap on its stamp) and zeroes it. A count landing in the instant between the
//! claim and the zeroing can be lost, which a status page can afford and a hot path that never
//! waits is worth.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Seconds of history kept.
pub const SECONDS: usize = 300;

/// Latency buckets: bucket `i` holds durations below `2^i` µs (the last one everything
/// longer), so 1 µs to about 16 s in 25 counters.
const BUCKETS: usize = 25;

/// What a request was, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Served from the memory or Redis tier, fresh.
    Hit,
    /// Served stale (while revalidating, or on an origin error).
    Stale,
    /// Fetched from the origin and stored.
    Miss,
    /// A cached route's request that was not served from or stored in the cache.
    Bypass,
    /// Anything else (writes, routes without caching, no route).
    Other,
}

const KINDS: usize = 5;

impl Kind {
    fn index(self) -> usize {
        match self {
            Kind::Hit => 0,
            Kind::Stale => 1,
            Kind::Miss => 2,
            Kind::Bypass => 3,
            Kind::Other => 4,
        }
    }
}

struct Slot {
    /// The second (since the window's start) the counts belong to, plus one: 0 is "never used".
    stamp: AtomicU64,
    counts: [AtomicU64; KINDS],
    hit_latency: [AtomicU64; BUCKETS],
    miss_latency: [AtomicU64; BUCKETS],
}

impl Slot {
    fn new() -> Self {
        Slot {
            stamp: AtomicU64::new(0),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            hit_latency: std::array::from_fn(|_| AtomicU64::new(0)),
            miss_latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn clear(&self) {
        for c in self.counts.iter().chain(&self.hit_latency).chain(&self.miss_latency) {
            c.store(0, Relaxed);
        }
    }
}

/// The ring of per-second slots.
pub struct Recent {
    start: Instant,
    slots: Box<[Slot]>,
}

/// One second's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Second {
    /// Fresh hits.
    pub hits: u64,
    /// Stale answers.
    pub stale: u64,
    /// Misses.
    pub misses: u64,
    /// Bypasses.
    pub bypasses: u64,
    /// Everything else.
    pub other: u64,
}

impl Second {
    /// Every request counted.
    pub fn total(&self) -> u64 {
        self.hits + self.stale + self.misses + self.bypasses + self.other
    }

    /// Hits over hits and misses, `None` without either.
    pub fn hit_ratio(&self) -> Option<f64> {
        let looked = self.hits + self.misses;
        (looked > 0).then(|| self.hits as f64 / looked as f64)
    }
}

/// The last `seconds` seconds summed, with latency percentiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Seconds covered (the window asked for, or the uptime when shorter).
    pub seconds: u64,
    /// Counts over those seconds.
    pub counts: Second,
    /// Hit latency at the 50th and 99th percentile (a bucket's upper bound), when any hit.
    pub hit_p50_p99: Option<(Duration, Duration)>,
    /// Miss latency likewise.
    pub miss_p50_p99: Option<(Duration, Duration)>,
    /// Each second's counts, oldest first, for sparklines.
    pub per_second: Vec<Second>,
}

impl Default for Recent {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket(took: Duration) -> usize {
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    // Durations below 2^i µs land in bucket i: 0 µs in 0, 1 µs in 1, 2..3 µs in 2, ...
    let i = (u64::BITS - micros.leading_zeros()) as usize;
    i.min(BUCKETS - 1)
}

/// The upper bound of bucket `i`.
fn bucket_bound(i: usize) -> Duration {
    Duration::from_micros(1u64 << i)
}

/// The bucket bound at quantile `q` of `hist`, `None` when it is empty.
fn quantile(hist: &[u64; BUCKETS], q: f64) -> Option<Duration> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the q-quantile, counted from 1: the 99th percentile of 100 samples is the 99th.
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_bound(i));
        }
    }
    Some(bucket_bound(BUCKETS - 1))
}

impl Recent {
    /// An empty window starting now.
    pub fn new() -> Self {
        Recent {
            start: Instant::now(),
            slots: (0..SECONDS).map(|_| Slot::new()).collect(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// Counts one answered request that took `took`.
    pub fn record(&self, kind: Kind, took: Duration) {
        self.record_at(self.now(), kind, took);
    }

    /// [`record`](Self::record) for a request that ended at `ended`, which the caller has
    /// read from the clock already: the hot path then reads it once, not twice.
    pub fn record_ended(&self, ended: Instant, kind: Kind, took: Duration) {
        self.record_at(ended.saturating_duration_since(self.start).as_secs(), kind, took);
    }

    /// [`record`](Self::record) as if it were `second` seconds after the start.
    pub fn record_at(&self, second: u64, kind: Kind, took: Duration) {
        let slot = &self.slots[(second % SECONDS as u64) as usize];
        let stamp = second + 1;
        let held = slot.stamp.load(Relaxed);
        if held != stamp {
            if held > stamp {
                // A writer delayed past a whole lap: its second is gone.
                return;
            }
            if slot.stamp.compare_exchange(held, stamp, Relaxed, Relaxed).is_ok() {
                slot.clear();
            }
        }
        slot.counts[kind.index()].fetch_add(1, Relaxed);
        match kind {
            Kind::Hit => slot.hit_latency[bucket(took)].fetch_add(1, Relaxed),
            Kind::Miss => slot.miss_latency[bucket(took)].fetch_add(1, Relaxed),
            _ => 0,
        };
    }

    /// The last `seconds` complete seconds and the current one.
    pub fn summary(&self, seconds: u64) -> Summary {
        self.summary_at(self.now(), seconds)
    }

    /// [`summary`](Self::summary) as if it were `now` seconds after the start.
    pub fn summary_at(&self, now: u64, seconds: u64) -> Summary {
        let seconds = seconds.clamp(1, SECONDS as u64 - 1);
        let first = now.saturating_sub(seconds - 1);
        let mut counts = Second::default();
        let mut hit = [0u64; BUCKETS];
        let mut miss = [0u64; BUCKETS];
        let mut per_second = Vec::with_capacity(seconds as usize);
        for s in first..=now {
            let slot = &self.slots[(s % SECONDS as u64) as usize];
            let mut one = Second::default();
            if slot.stamp.load(Relaxed) == s + 1 {
                let c = |i: usize| slot.counts[i].load(Relaxed);
                one = Second {
                    hits: c(Kind::Hit.index()),
                    stale: c(Kind::Stale.index()),
                    misses: c(Kind::Miss.index()),
                    bypasses: c(Kind::Bypass.index()),
                    other: c(Kind::Other.index()),
                };
                for i in 0..BUCKETS {
                    hit[i] += slot.hit_latency[i].load(Relaxed);
                    miss[i] += slot.miss_latency[i].load(Relaxed);
                }
            }
            counts.hits += one.hits;
            counts.stale += one.stale;
            counts.misses += one.misses;
            counts.bypasses += one.bypasses;
            counts.other += one.other;
            per_second.push(one);
        }
        let pair = |h: &[u64; BUCKETS]| quantile(h, 0.5).zip(quantile(h, 0.99));
        Summary {
            seconds: now + 1 - first,
            counts,
            hit_p50_p99: pair(&hit),
            miss_p50_p99: pair(&miss),
            per_second,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: fn(u64) -> Duration = Duration::from_micros;

    #[test]
    fn counts_land_in_their_second_and_sum_over_the_window() {
        let r = Recent::new();
        r.record_at(10, Kind::Hit, US(100));
        r.record_at(10, Kind::Hit, US(100));
        r.record_at(11, Kind::Miss, US(5_000));
        r.record_at(12, Kind::Bypass, US(1));
        let s = r.summary_at(12, 60);
        assert_eq!(s.seconds, 13, "only the seconds since the start");
        assert_eq!(s.counts.hits, 2);
        assert_eq!(s.counts.misses, 1);
        assert_eq!(s.counts.bypasses, 1);
        assert_eq!(s.counts.total(), 4);
        assert_eq!(s.per_second.len(), 13);
        assert_eq!(s.per_second[10].hits, 2);
        assert_eq!(s.per_second[11].misses, 1);
        let last_two = r.summary_at(12, 2);
        assert_eq!(last_two.counts.hits, 0, "second 10 is outside the last two");
        assert_eq!(last_two.counts.misses, 1);
    }

    #[test]
    fn a_slot_reused_a_lap_later_starts_from_zero() {
        let r = Recent::new();
        r.record_at(5, Kind::Hit, US(10));
        r.record_at(5, Kind::Miss, US(10));
        let lap = 5 + SECONDS as u64;
        r.record_at(lap, Kind::Miss, US(10));
        let s = r.summary_at(lap, 1);
        assert_eq!(
            (s.counts.hits, s.counts.misses),
            (0, 1),
            "the old second's counts are gone"
        );
        // A writer from the old lap arriving late does not touch the new second.
        r.record_at(5, Kind::Hit, US(10));
        assert_eq!(r.summary_at(lap, 1).counts.hits, 0);
        // Reading a second whose slot holds another lap's counts reads zero.
        let stale_read = r.summary_at(lap + SECONDS as u64, 1);
        assert_eq!(stale_read.counts.total(), 0);
    }

    #[test]
    fn a_quiet_window_has_no_percentiles_or_ratio() {
        let r = Recent::new();
        let s = r.summary_at(100, 60);
        assert_eq!(s.counts.total(), 0);
        assert_eq!(s.hit_p50_p99, None);
        assert_eq!(s.miss_p50_p99, None);
        assert_eq!(s.counts.hit_ratio(), None);
        assert_eq!(s.per_second.len(), 60);
    }

    #[test]
    fn percentiles_are_bucket_upper_bounds() {
        let r = Recent::new();
        // 98 hits of 100 µs (bucket < 128 µs) and 2 of 40 ms (bucket < 65.536 ms).
        for _ in 0..98 {
            r.record_at(0, Kind::Hit, US(100));
        }
        for _ in 0..2 {
            r.record_at(0, Kind::Hit, US(40_000));
        }
        // Misses: one of each size, so the median is the smaller one's bucket.
        r.record_at(0, Kind::Miss, US(3));
        r.record_at(0, Kind::Miss, US(2_000_000));
        let s = r.summary_at(0, 10);
        assert_eq!(s.hit_p50_p99, Some((US(128), US(65_536))));
        assert_eq!(s.miss_p50_p99, Some((US(4), US(2_097_152))));
        assert_eq!(s.counts.hit_ratio(), Some(100.0 / 102.0));
    }

    #[test]
    fn buckets_cover_zero_and_very_long_durations() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(US(1)), 1);
        assert_eq!(bucket(US(127)), 7);
        assert_eq!(bucket(US(128)), 8);
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
        assert!(bucket_bound(7) > US(127));
    }
}
