//! One series: a counter, a gauge or a histogram. Each is a cheap handle
//! (an `Arc`) over atomics; clones update the same series.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A monotonically increasing count.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// A counter of its own, registered nowhere.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A monotonically increasing total that need not be whole, such as
/// seconds of CPU time; an `f64` kept as bits in an atomic.
#[derive(Clone, Debug)]
pub struct FloatCounter(Arc<AtomicU64>);

impl Default for FloatCounter {
    fn default() -> Self {
        Self(Arc::new(AtomicU64::new(0f64.to_bits())))
    }
}

impl FloatCounter {
    /// A counter of its own, registered nowhere.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `v`; a negative or NaN amount is ignored, so the total never
    /// goes down.
    pub fn inc_by(&self, v: f64) {
        if v > 0.0 {
            add_f64(&self.0, v);
        }
    }

    /// Raises the total to `total` if that is higher: for a total kept
    /// elsewhere (the kernel's count of CPU time), copied in when scraped.
    pub fn advance_to(&self, total: f64) {
        // Returning None leaves the value as it is; the error is that.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                (total > f64::from_bits(bits)).then_some(total.to_bits())
            });
    }

    /// The current total.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A value that goes up and down; an `f64` kept as bits in an atomic.
#[derive(Clone, Debug)]
pub struct Gauge(Arc<AtomicU64>);

impl Default for Gauge {
    fn default() -> Self {
        Self(Arc::new(AtomicU64::new(0f64.to_bits())))
    }
}

impl Gauge {
    /// A gauge of its own, registered nowhere.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1.0);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.add(-1.0);
    }

    /// Adds `v` (which may be negative).
    pub fn add(&self, v: f64) {
        add_f64(&self.0, v);
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Adds to an `f64` kept as bits: a compare-and-swap loop, as there is no
/// atomic float add.
fn add_f64(cell: &AtomicU64, v: f64) {
    // The closure always returns Some, so fetch_update cannot fail.
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
        Some((f64::from_bits(bits) + v).to_bits())
    });
}

/// A distribution of observations over fixed buckets.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramCore>);

#[derive(Debug)]
struct HistogramCore {
    /// Upper bounds, strictly increasing and finite; `+Inf` is implicit.
    bounds: Arc<[f64]>,
    /// Per-bucket (not cumulative) counts; one more than `bounds`, the
    /// last for observations above every bound (and NaN). The total count
    /// is their sum, so `_count` always equals the `+Inf` bucket.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// What [`Histogram::snapshot`] read: cumulative bucket counts (one per
/// bound, then `+Inf`), the sum and the count.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: Arc<[f64]>,
    /// Cumulative; `cumulative.len() == bounds.len() + 1`, the last being
    /// the `+Inf` bucket.
    pub cumulative: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// A histogram of its own, registered nowhere. `bounds` must be
    /// strictly increasing and finite (see [`normalize_buckets`]).
    pub(crate) fn with_bounds(bounds: Arc<[f64]>) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(HistogramCore {
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// A histogram of its own, registered nowhere.
    pub fn new(buckets: &[f64]) -> Self {
        Self::with_bounds(normalize_buckets(buckets))
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let core = &self.0;
        // `le` is inclusive: v goes to the first bound >= v. NaN compares
        // false with everything, so it is sent to the overflow bucket.
        let idx = if v.is_nan() {
            core.bounds.len()
        } else {
            core.bounds.partition_point(|b| *b < v)
        };
        core.counts[idx].fetch_add(1, Ordering::Relaxed);
        add_f64(&core.sum, v);
    }

    /// Reads the buckets, sum and count.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let core = &self.0;
        let mut cumulative = Vec::with_capacity(core.counts.len());
        let mut total = 0u64;
        for c in core.counts.iter() {
            total = total.wrapping_add(c.load(Ordering::Relaxed));
            cumulative.push(total);
        }
        HistogramSnapshot {
            bounds: core.bounds.clone(),
            cumulative,
            sum: f64::from_bits(core.sum.load(Ordering::Relaxed)),
            count: total,
        }
    }
}

/// Makes bucket bounds usable: drops non-finite values (`+Inf` is always
/// implied), sorts and removes duplicates. Bounds that needed fixing are a
/// programming error, reported by a `debug_assert!`.
pub fn normalize_buckets(buckets: &[f64]) -> Arc<[f64]> {
    // A trailing +Inf is a common, harmless habit from other clients.
    let body = match buckets.split_last() {
        Some((last, rest)) if *last == f64::INFINITY => rest,
        _ => buckets,
    };
    debug_assert!(
        body.windows(2).all(|w| w[0] < w[1]) && body.iter().all(|b| b.is_finite()),
        "histogram buckets must be finite and strictly increasing: {buckets:?}"
    );
    let mut v: Vec<f64> = buckets.iter().copied().filter(|b| b.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_counts() {
        let c = Counter::new();
        let c2 = c.clone();
        c.inc();
        c2.inc_by(41);
        assert_eq!(c.get(), 42);
    }

    #[test]
    fn float_counter_only_goes_up() {
        let c = FloatCounter::new();
        c.inc_by(0.25);
        c.inc_by(-1.0);
        c.inc_by(f64::NAN);
        assert_eq!(c.get(), 0.25);
        c.advance_to(1.5);
        c.advance_to(1.0);
        assert_eq!(c.get(), 1.5);
    }

    #[test]
    fn gauge_moves() {
        let g = Gauge::new();
        assert_eq!(g.get(), 0.0);
        g.set(2.5);
        g.inc();
        g.dec();
        g.dec();
        g.add(-0.25);
        assert_eq!(g.get(), 1.25);
    }

    #[test]
    fn histogram_buckets_are_inclusive_and_cumulative() {
        let h = Histogram::new(&[0.1, 1.0, 10.0]);
        for v in [0.05, 0.1, 0.5, 1.0, 5.0, 50.0, f64::INFINITY] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(&*s.bounds, &[0.1, 1.0, 10.0]);
        // <=0.1: 0.05, 0.1; <=1: +0.5, 1.0; <=10: +5; +Inf: +50, +inf.
        assert_eq!(s.cumulative, vec![2, 4, 5, 7]);
        assert_eq!(s.count, 7);
        assert_eq!(s.sum, f64::INFINITY);

        let h = Histogram::new(&[1.0]);
        h.observe(0.5);
        h.observe(0.25);
        let s = h.snapshot();
        assert_eq!(s.cumulative, vec![2, 2]);
        assert_eq!(s.sum, 0.75);
    }

    #[test]
    fn histogram_nan_goes_to_inf_bucket() {
        let h = Histogram::new(&[1.0]);
        h.observe(f64::NAN);
        let s = h.snapshot();
        assert_eq!(s.cumulative, vec![0, 1]);
        assert!(s.sum.is_nan());
    }

    #[test]
    fn histogram_concurrent_observations_all_counted() {
        let h = Histogram::new(&[0.5]);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let h = h.clone();
                scope.spawn(move || {
                    for i in 0..10_000 {
                        h.observe(if i % 2 == 0 { 0.25 } else { 1.0 });
                    }
                });
            }
        });
        let s = h.snapshot();
        assert_eq!(s.count, 40_000);
        assert_eq!(s.cumulative, vec![20_000, 40_000]);
        // 20_000 * 0.25 + 20_000 * 1.0, exact in binary floating point.
        assert_eq!(s.sum, 25_000.0);
    }

    #[test]
    fn trailing_inf_bucket_is_accepted() {
        assert_eq!(&*normalize_buckets(&[1.0, 2.0, f64::INFINITY]), &[1.0, 2.0]);
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn unsorted_buckets_are_fixed_in_release() {
        assert_eq!(&*normalize_buckets(&[2.0, 1.0, 1.0, f64::NAN]), &[1.0, 2.0]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "strictly increasing")]
    fn unsorted_buckets_fail_debug_assert() {
        normalize_buckets(&[2.0, 1.0]);
    }
}
