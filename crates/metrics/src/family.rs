//! Labelled families: one metric name, fixed label names, and a series per
//! distinct tuple of label values.
//!
//! Series are kept in a map keyed by a hash of the label values, each
//! bucket holding the (rarely more than one) series with that hash. This
//! lets [`CounterVec::with`] and friends look a series up from borrowed
//! `&[&str]` under a read lock without building an owned key; the owned
//! key is only made when a series is created.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, PoisonError, RwLock};

use crate::metric::{Counter, FloatCounter, Gauge, Histogram};

/// A kind of series a family can hold.
pub(crate) trait Series: Clone + Send + Sync + 'static {
    /// What creating a series needs (a histogram's bounds).
    type Config: PartialEq + Send + Sync;
    /// The `# TYPE` word.
    const TYPE: &'static str;
    fn create(config: &Self::Config) -> Self;
}

impl Series for Counter {
    type Config = ();
    const TYPE: &'static str = "counter";
    fn create(_: &()) -> Self {
        Counter::new()
    }
}

impl Series for FloatCounter {
    type Config = ();
    const TYPE: &'static str = "counter";
    fn create(_: &()) -> Self {
        FloatCounter::new()
    }
}

impl Series for Gauge {
    type Config = ();
    const TYPE: &'static str = "gauge";
    fn create(_: &()) -> Self {
        Gauge::new()
    }
}

impl Series for Histogram {
    type Config = Arc<[f64]>;
    const TYPE: &'static str = "histogram";
    fn create(bounds: &Arc<[f64]>) -> Self {
        Histogram::with_bounds(bounds.clone())
    }
}

type Bucket<M> = Vec<(Box<[String]>, M)>;

/// The shared state of a family.
pub(crate) struct Family<M: Series> {
    pub(crate) name: String,
    pub(crate) help: String,
    pub(crate) label_names: Vec<String>,
    pub(crate) config: M::Config,
    hasher: RandomState,
    series: RwLock<HashMap<u64, Bucket<M>>>,
}

impl<M: Series> Family<M> {
    pub(crate) fn new(name: &str, help: &str, labels: &[&str], config: M::Config) -> Self {
        let family = Self {
            name: name.to_string(),
            help: help.to_string(),
            label_names: labels.iter().map(|l| l.to_string()).collect(),
            config,
            hasher: RandomState::new(),
            series: RwLock::new(HashMap::new()),
        };
        // A family without labels has exactly one series; creating it now
        // makes it render (as zero) before its first update.
        if labels.is_empty() {
            family.get_or_create(&[]);
        }
        family
    }

    fn hash<S: AsRef<str>>(&self, values: &[S]) -> u64 {
        let mut h = self.hasher.build_hasher();
        for v in values {
            // str's Hash ends each string with a marker, so ["ab", ""]
            // and ["a", "b"] hash apart.
            v.as_ref().hash(&mut h);
        }
        h.finish()
    }

    fn arity_ok(&self, values: &[&str]) -> bool {
        let ok = values.len() == self.label_names.len();
        debug_assert!(
            ok,
            "metric {}: {} label values given for labels {:?}",
            self.name,
            values.len(),
            self.label_names
        );
        ok
    }

    /// The series for these label values, created on first use. With the
    /// wrong number of values, a detached series that is never rendered.
    pub(crate) fn get_or_create(&self, values: &[&str]) -> M {
        if !self.arity_ok(values) {
            return M::create(&self.config);
        }
        let h = self.hash(values);
        {
            let map = self.series.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(found) = map.get(&h).and_then(|b| find(b, values)) {
                return found.clone();
            }
        }
        let mut map = self.series.write().unwrap_or_else(PoisonError::into_inner);
        let bucket = map.entry(h).or_default();
        // Another thread may have created it between the two locks.
        if let Some(found) = find(bucket, values) {
            return found.clone();
        }
        let series = M::create(&self.config);
        let key = values.iter().map(|v| v.to_string()).collect();
        bucket.push((key, series.clone()));
        series
    }

    /// Forgets the series for these label values; handles to it keep
    /// working but are no longer rendered.
    pub(crate) fn remove(&self, values: &[&str]) {
        if !self.arity_ok(values) {
            return;
        }
        let h = self.hash(values);
        let mut map = self.series.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = map.get_mut(&h) {
            bucket.retain(|(k, _)| !key_eq(k, values));
            if bucket.is_empty() {
                map.remove(&h);
            }
        }
    }

    /// Forgets every series.
    pub(crate) fn clear(&self) {
        self.series
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Every series, sorted by label values.
    pub(crate) fn snapshot(&self) -> Vec<(Box<[String]>, M)> {
        let mut all: Vec<(Box<[String]>, M)> = {
            let map = self.series.read().unwrap_or_else(PoisonError::into_inner);
            map.values().flatten().cloned().collect()
        };
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

fn key_eq(key: &[String], values: &[&str]) -> bool {
    key.len() == values.len() && key.iter().zip(values).all(|(k, v)| k == v)
}

fn find<'a, M>(bucket: &'a Bucket<M>, values: &[&str]) -> Option<&'a M> {
    bucket
        .iter()
        .find(|(k, _)| key_eq(k, values))
        .map(|(_, m)| m)
}

macro_rules! family_debug {
    ($t:ident) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("name", &self.0.name)
                    .field("labels", &self.0.label_names)
                    .finish()
            }
        }
    };
}

/// Counters sharing a name, one per tuple of label values.
#[derive(Clone)]
pub struct CounterVec(pub(crate) Arc<Family<Counter>>);
family_debug!(CounterVec);

impl CounterVec {
    /// The counter for these label values (in the order the labels were
    /// declared), created at zero on first use.
    pub fn with(&self, values: &[&str]) -> Counter {
        self.0.get_or_create(values)
    }

    /// Stops rendering the counter for these label values.
    pub fn remove(&self, values: &[&str]) {
        self.0.remove(values)
    }
}

/// Float counters sharing a name, one per tuple of label values.
#[derive(Clone)]
pub struct FloatCounterVec(pub(crate) Arc<Family<FloatCounter>>);
family_debug!(FloatCounterVec);

impl FloatCounterVec {
    /// The counter for these label values, created at zero on first use.
    pub fn with(&self, values: &[&str]) -> FloatCounter {
        self.0.get_or_create(values)
    }

    /// Stops rendering the counter for these label values.
    pub fn remove(&self, values: &[&str]) {
        self.0.remove(values)
    }
}

/// Gauges sharing a name, one per tuple of label values.
#[derive(Clone)]
pub struct GaugeVec(pub(crate) Arc<Family<Gauge>>);
family_debug!(GaugeVec);

impl GaugeVec {
    /// The gauge for these label values, created at zero on first use.
    pub fn with(&self, values: &[&str]) -> Gauge {
        self.0.get_or_create(values)
    }

    /// Stops rendering the gauge for these label values.
    pub fn remove(&self, values: &[&str]) {
        self.0.remove(values)
    }

    /// Stops rendering every gauge of the family, e.g. before setting
    /// the current set of shards' health afresh.
    pub fn clear(&self) {
        self.0.clear()
    }
}

/// Histograms sharing a name and buckets, one per tuple of label values.
#[derive(Clone)]
pub struct HistogramVec(pub(crate) Arc<Family<Histogram>>);
family_debug!(HistogramVec);

impl HistogramVec {
    /// The histogram for these label values, created empty on first use.
    pub fn with(&self, values: &[&str]) -> Histogram {
        self.0.get_or_create(values)
    }

    /// Stops rendering the histogram for these label values.
    pub fn remove(&self, values: &[&str]) {
        self.0.remove(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_values_same_series() {
        let f = CounterVec(Arc::new(Family::new("c_total", "h", &["a", "b"], ())));
        f.with(&["x", "y"]).inc();
        f.with(&["x", "y"]).inc();
        f.with(&["xy", ""]).inc();
        assert_eq!(f.with(&["x", "y"]).get(), 2);
        assert_eq!(f.with(&["xy", ""]).get(), 1);
        assert_eq!(f.0.snapshot().len(), 2);
    }

    #[test]
    fn remove_and_clear() {
        let f = GaugeVec(Arc::new(Family::new("g", "h", &["a"], ())));
        let kept = f.with(&["1"]);
        kept.set(5.0);
        f.with(&["2"]).set(6.0);
        f.remove(&["1"]);
        // The handle still works; the registry no longer shows it.
        kept.inc();
        assert_eq!(kept.get(), 6.0);
        let keys: Vec<_> = f.0.snapshot().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![vec!["2".to_string()].into_boxed_slice()]);
        assert_eq!(f.with(&["1"]).get(), 0.0);
        f.clear();
        assert!(f.0.snapshot().is_empty());
    }

    #[test]
    fn snapshot_is_sorted() {
        let f = CounterVec(Arc::new(Family::new("c_total", "h", &["a"], ())));
        for v in ["b", "c", "a"] {
            f.with(&[v]).inc();
        }
        let keys: Vec<String> =
            f.0.snapshot()
                .into_iter()
                .map(|(k, _)| k[0].clone())
                .collect();
        assert_eq!(keys, ["a", "b", "c"]);
    }

    #[test]
    fn unlabelled_family_has_its_series() {
        let f = CounterVec(Arc::new(Family::new("c_total", "h", &[], ())));
        assert_eq!(f.0.snapshot().len(), 1);
        f.with(&[]).inc();
        assert_eq!(f.with(&[]).get(), 1);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "label values given")]
    fn wrong_arity_fails_debug_assert() {
        let f = CounterVec(Arc::new(Family::new("c_total", "h", &["a"], ())));
        f.with(&["x", "y"]);
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn wrong_arity_is_detached_in_release() {
        let f = CounterVec(Arc::new(Family::new("c_total", "h", &["a"], ())));
        f.with(&["x", "y"]).inc();
        assert!(f.0.snapshot().is_empty());
    }
}
